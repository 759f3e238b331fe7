//! The loader: each key's value from the file, unless a `PRISM_*` variable overrides it,
//! with the place it came from kept for messages; and the parsers of values.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::raw::Scalar;
use super::{config_error, SECTION, URL_SCHEMES};
use crate::balance::Strategy;
use crate::config::redact_url;
use crate::error::{Error, Result};
use crate::instance::InstanceStatus;

/// Where a value came from, for errors.
pub(super) enum Place<'a> {
    Key(&'a str),
    Env(&'a str),
}

pub(super) struct Loader<'a> {
    pub(super) origin: &'a str,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    /// Keys (below the section) whose value came from an environment variable.
    pub(super) overridden: BTreeMap<&'static str, &'static str>,
    /// False for [`DiscoverySettings::from_env`]: there is no file to name.
    pub(super) from_file: bool,
}

impl<'a> Loader<'a> {
    pub(super) fn new(origin: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Loader {
            origin,
            env,
            overridden: BTreeMap::new(),
            from_file: true,
        }
    }

    /// The value of an environment variable; empty counts as unset.
    pub(super) fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// An error about the value at `place`.
    pub(super) fn fail(&self, place: &Place<'_>, message: impl fmt::Display) -> Error {
        match place {
            Place::Key(key) => match self.overridden.get(key) {
                Some(var) if self.from_file => config_error(format!(
                    "environment variable {var} (overriding {SECTION}.{key} of {}): {message}",
                    self.origin
                )),
                Some(var) => config_error(format!(
                    "environment variable {var} ({SECTION}.{key}): {message}"
                )),
                None => config_error(format!("{}: {SECTION}.{key}: {message}", self.origin)),
            },
            Place::Env(var) => config_error(format!("environment variable {var}: {message}")),
        }
    }

    /// An error about `key` of the section.
    pub(super) fn at(&self, key: &str, message: impl fmt::Display) -> Error {
        self.fail(&Place::Key(key), message)
    }

    /// A file value, then the override of `var` when it is set.
    pub(super) fn layered<T>(
        &mut self,
        key: &'static str,
        raw: Option<Scalar>,
        var: Option<&'static str>,
        parse: impl Fn(&Scalar) -> std::result::Result<Option<T>, String>,
    ) -> Result<Option<T>> {
        let mut value = match raw {
            Some(raw) => parse(&raw).map_err(|m| self.at(key, m))?,
            None => None,
        };
        if let Some(var) = var {
            if let Some(text) = self.var(var) {
                value = Some(
                    parse(&Scalar::Text(text))
                        .map_err(|m| self.fail(&Place::Env(var), m))?
                        .ok_or_else(|| self.fail(&Place::Env(var), "empty value"))?,
                );
                self.overridden.insert(key, var);
            }
        }
        Ok(value)
    }
}

/// The text of a scalar, `None` when it is empty.
pub(super) fn non_empty(value: &Scalar) -> Option<String> {
    let text = value.text();
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

pub(super) fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// Checks a server url; the message shows it without credentials.
pub(super) fn check_url(url: &str) -> std::result::Result<(), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    if let Some(scheme) = scheme {
        if !URL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unsupported url scheme {scheme:?} in {} (expected nats://, tls://, ws:// or wss://)",
                redact_url(url)
            ));
        }
    }
    let host = rest.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains(char::is_whitespace) {
        return Err(format!("no valid host in url {}", redact_url(url)));
    }
    Ok(())
}

pub(super) fn parse_duration(value: &Scalar) -> std::result::Result<Option<Duration>, String> {
    let seconds = match value {
        Scalar::Unsigned(n) => return Ok(Some(Duration::from_secs(*n))),
        Scalar::Signed(n) => *n as f64,
        Scalar::Float(x) => *x,
        Scalar::Bool(_) => return Err(duration_help("a boolean")),
        Scalar::Text(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            match text.parse::<f64>() {
                Ok(x) if text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') => {
                    x
                }
                _ => {
                    return humantime::parse_duration(text)
                        .map(Some)
                        .map_err(|e| duration_help(&format!("{text:?} ({e})")))
                }
            }
        }
    };
    if seconds.is_sign_negative() && seconds != 0.0 {
        return Err(format!("must not be negative, got {seconds}"));
    }
    Duration::try_from_secs_f64(seconds)
        .map(Some)
        .map_err(|_| duration_help(&seconds.to_string()))
}

pub(super) fn duration_help(found: &str) -> String {
    format!(
        "invalid duration {found}: expected seconds (30, 2.5) or a duration such as \"30s\" or \"1m 30s\""
    )
}

pub(super) fn parse_bool(value: &Scalar) -> std::result::Result<Option<bool>, String> {
    match value {
        Scalar::Bool(b) => Ok(Some(*b)),
        other => {
            let text = other.text();
            match text.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "yes" | "on" | "1" => Ok(Some(true)),
                "false" | "no" | "off" | "0" => Ok(Some(false)),
                _ => Err(format!("expected true or false, got {:?}", text.trim())),
            }
        }
    }
}

pub(super) fn parse_count(value: &Scalar) -> std::result::Result<Option<u64>, String> {
    match value {
        Scalar::Unsigned(n) => Ok(Some(*n)),
        other => {
            let text = other.text();
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse::<u64>()
                .map(Some)
                .map_err(|_| format!("expected a whole number, got {text:?}"))
        }
    }
}

pub(super) fn parse_strategy(value: &Scalar) -> std::result::Result<Option<Strategy>, String> {
    let Some(text) = non_empty(value) else {
        return Ok(None);
    };
    text.parse::<Strategy>().map(Some).map_err(|_| {
        let names: Vec<&str> = Strategy::ALL.iter().map(Strategy::as_str).collect();
        format!(
            "unknown load-balancing strategy {text:?} (expected one of {})",
            names.join(", ")
        )
    })
}

pub(super) fn unknown_status(text: &str) -> String {
    let names: Vec<&str> = InstanceStatus::ALL
        .iter()
        .map(InstanceStatus::as_str)
        .collect();
    format!(
        "unknown status {:?} (expected one of {})",
        text.trim(),
        names.join(", ")
    )
}
