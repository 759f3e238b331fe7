//! Discovery settings from a YAML file in the format of MarketPrism's configuration: a
//! top-level `service_discovery:` section, `${VAR}` expansion, environment overrides.
//!
//! ```yaml
//! service_discovery:
//!   backend: nats                        # memory | nats
//!   backend_config:
//!     nats:
//!       urls: [tls://nats-1:4222, tls://nats-2:4222]
//!       creds_file: /etc/nats/app.creds
//!       tls: { ca_file: /etc/nats/ca.pem, required: true }
//!       replicas: 3
//!   instance_ttl: 10s
//!   heartbeat_interval: 3                # seconds, or "3s", "1m 30s"
//!   load_balancing:
//!     strategy: weighted_round_robin
//!     statuses: [healthy, unknown]
//!     services: { orders: least_outstanding }
//! ```
//!
//! Every key is optional; an absent key keeps the library default, and so does a value that
//! is empty after expansion (`token: ${NATS_TOKEN:-}` with `NATS_TOKEN` unset means no
//! token). Unknown keys are errors.
//!
//! **Expansion.** In string values, `${VAR}` is replaced by the environment variable `VAR`
//! (an error when it is not set), `${VAR:-default}` by `VAR` when it is set and not empty,
//! otherwise by `default`, and `$$` by a single `$`. Any other `$` is kept as written.
//! Expansion runs on the parsed YAML values, never on keys, so an expanded value cannot
//! change the structure of the file.
//!
//! **Durations** are seconds as an integer or a float (`30`, `2.5`) or a humantime string
//! (`"30s"`, `"1m 30s"`, `"500ms"`).
//!
//! **Environment overrides**, applied after the file: `PRISM_BACKEND`, `PRISM_NATS_URL`
//! (comma-separated list allowed), `PRISM_NATS_TOKEN`, `PRISM_NATS_USER`,
//! `PRISM_NATS_PASSWORD`, `PRISM_NATS_CREDS`, `PRISM_NATS_NKEY_SEED`, `PRISM_NATS_TLS_CA`,
//! `PRISM_INSTANCE_TTL`, `PRISM_HEARTBEAT_INTERVAL`, `PRISM_HEALTH_CHECK_INTERVAL` and
//! `PRISM_LB_STRATEGY`. An override that sets an authentication method (token, user and
//! password, credentials file, NKey seed) replaces the method of the file; `PRISM_NATS_USER`
//! and `PRISM_NATS_PASSWORD` each replace their half of a user and password pair. When no
//! NATS url is configured anywhere, `NATS_URL` is used, then `nats://127.0.0.1:4222`.
//!
//! **Errors** are [`ErrorKind::InvalidConfig`] and name the file (or the environment
//! variable) and the key path, such as
//! `service_discovery.backend_config.nats.password`. They never contain the value of a
//! token, password or NKey seed, and URLs in them have their credentials removed.
//!
//! `raw` holds the file's shapes as read, `expand` the `${VAR}` expansion, `env` the
//! layering of `PRISM_*` variables over the file and the value parsers, `nats` the
//! `backend_config.nats` section (urls, authentication, TLS), `service` the instance to
//! register at start; this file holds the settings
//! themselves and what they build.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_yaml_ng::Value;

use crate::balance::{Selection, Strategy};
use crate::config::{NatsOptions, Timing};
use crate::error::{Error, ErrorKind, Result};
use crate::instance::InstanceStatus;
use crate::mesh::{Mesh, MeshBuilder};

mod env;
mod expand;
#[cfg(test)]
mod file_tests;
mod load;
mod nats;
mod raw;
mod service;
#[cfg(test)]
mod tests;

use env::Loader;
use expand::expand_tree;
use raw::{structure_error, RawSection};
pub use service::ServiceSettings;

/// The top-level key of the section this module reads.
pub const SECTION: &str = "service_discovery";

/// The NATS server used when no url is configured in the file, in `PRISM_NATS_URL` or in
/// `NATS_URL`.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// URL schemes accepted for NATS servers.
const URL_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// Keys whose values are secrets: errors about them never quote what was found.
const SECRET_KEYS: [&str; 3] = ["token", "password", "nkey_seed"];

/// The backend a [`DiscoverySettings`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The process-wide in-memory store ([`MeshBuilder::memory`]): peers in this process
    /// only. The library default.
    #[default]
    Memory,
    /// NATS JetStream, configured by [`DiscoverySettings::nats`].
    Nats,
}

impl BackendKind {
    /// The name used in configuration files: `memory` or `nats`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Nats => "nats",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(BackendKind::Memory),
            "nats" => Ok(BackendKind::Nats),
            _ => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("unknown backend {s:?} (expected memory or nats)"),
            )),
        }
    }
}

/// How [`Mesh::pick`](crate::Mesh::pick) balances: `service_discovery.load_balancing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancingSettings {
    /// Strategy for services without their own (default: weighted round robin).
    pub strategy: Strategy,
    /// Eligible statuses in fallback order (default: `[healthy]`); see [`Selection`].
    pub statuses: Vec<InstanceStatus>,
    /// Strategy per service name.
    pub services: BTreeMap<String, Strategy>,
}

impl Default for LoadBalancingSettings {
    fn default() -> Self {
        LoadBalancingSettings {
            strategy: Strategy::default(),
            statuses: Selection::default().status_order().to_vec(),
            services: BTreeMap::new(),
        }
    }
}

impl LoadBalancingSettings {
    /// The [`Selection`] of these statuses; an error when the order is empty or holds a
    /// status that is never picked (`stopping`, `maintenance`).
    pub fn selection(&self) -> Result<Selection> {
        Selection::new()
            .statuses(self.statuses.iter().copied())
            .map_err(|e| Error::new(ErrorKind::InvalidConfig, bare(&e)))
    }
}

/// The metrics endpoint: `service_discovery.metrics`. Plain data for the embedding
/// service; the library itself serves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSettings {
    /// Address to serve metrics on; `None` (the default): no endpoint.
    pub listen: Option<SocketAddr>,
}

/// The discovery client's configuration: what a `service_discovery:` YAML section holds,
/// after `${VAR}` expansion and environment overrides.
///
/// Load it with [`from_file`](Self::from_file), [`from_yaml_str`](Self::from_yaml_str) or
/// [`from_env`](Self::from_env), then turn it into a [`MeshBuilder`] with
/// [`mesh_builder`](Self::mesh_builder). The fields that the mesh does not use itself
/// (health checks, cleanup, drain, automatic registration, metrics) are plain data for
/// the service that embeds the mesh.
///
/// `Debug` never shows a token, password or NKey seed (see [`NatsOptions`]).
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Where the settings came from (the file's path, or `environment`), for messages.
    pub source: String,
    /// The backend (default: memory).
    pub backend: BackendKind,
    /// NATS connection and JetStream layout: `backend_config.nats`. Only used when
    /// [`backend`](Self::backend) is [`BackendKind::Nats`].
    pub nats: NatsOptions,
    /// How long an instance lives without a heartbeat (default 10 s, 1 s to 1 h).
    pub instance_ttl: Duration,
    /// How often owners refresh their instances (default 3 s, below `instance_ttl`).
    pub heartbeat_interval: Duration,
    /// How often the embedding service checks its own health (default 30 s).
    pub health_check_interval: Duration,
    /// The bound the Python module's cleanup loop put on how long an instance stays
    /// listed after its TTL ran out (default 60 s). The mesh always meets it: the server
    /// removes an expired key within about a second of its TTL, and every peer sees the
    /// removal then, so nothing here polls on this interval; the key is accepted so that
    /// MarketPrism configuration files load unchanged.
    pub cleanup_interval: Duration,
    /// How long a deregistration tombstone is kept (default 60 s, 1 s to 24 h).
    pub tombstone_ttl: Duration,
    /// How long a stopping service keeps serving after it leaves rotation (default 5 s;
    /// zero: no drain).
    pub drain_period: Duration,
    /// Whether [`DiscoveryClient::from_settings`](crate::DiscoveryClient::from_settings)
    /// registers the [`service`](Self::service) section as "myself" (default true;
    /// without that section there is nothing to register).
    pub auto_register: bool,
    /// Whether the embedding service deregisters itself on shutdown (default true).
    pub auto_deregister: bool,
    /// Load balancing of [`Mesh::pick`](crate::Mesh::pick).
    pub load_balancing: LoadBalancingSettings,
    /// The metrics endpoint.
    pub metrics: MetricsSettings,
    /// The instance this service registers as itself: `service:`.
    pub service: Option<ServiceSettings>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        let timing = Timing::default();
        DiscoverySettings {
            source: "defaults".to_string(),
            backend: BackendKind::default(),
            nats: NatsOptions::new(DEFAULT_NATS_URL),
            instance_ttl: timing.instance_ttl,
            heartbeat_interval: timing.heartbeat_interval,
            health_check_interval: Duration::from_secs(30),
            cleanup_interval: Duration::from_secs(60),
            tombstone_ttl: timing.tombstone_ttl,
            drain_period: Duration::from_secs(5),
            auto_register: true,
            auto_deregister: true,
            load_balancing: LoadBalancingSettings::default(),
            metrics: MetricsSettings::default(),
            service: None,
        }
    }
}

impl DiscoverySettings {
    /// Reads the `service_discovery` section of the YAML file at `path`, expanding and
    /// overriding from the process environment.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with(path, &process_env)
    }

    /// Like [`from_file`](Self::from_file) with the environment given by `env`, which
    /// returns the value of a variable or `None` when it is not set.
    pub fn from_file_with(
        path: impl AsRef<Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("cannot read configuration file {}", path.display()),
                e,
            )
        })?;
        Self::from_yaml_str(&text, &path.display().to_string(), env)
    }

    /// Parses YAML `text` holding a `service_discovery` section; `origin` names it in
    /// errors (usually a file path) and `env` gives the value of an environment variable,
    /// or `None` when it is not set.
    ///
    /// ```
    /// use std::time::Duration;
    /// use prism_mesh::settings::BackendKind;
    /// use prism_mesh::{DiscoverySettings, InstanceStatus, Strategy};
    ///
    /// let yaml = r#"
    /// service_discovery:
    ///   backend: nats
    ///   backend_config:
    ///     nats:
    ///       url: ${NATS_URL:-nats://127.0.0.1:4222}
    ///       user: app
    ///       password: ${APP_PASSWORD}
    ///   heartbeat_interval: 2.5
    ///   instance_ttl: 10s
    ///   load_balancing:
    ///     strategy: least_outstanding
    ///     statuses: [healthy, unknown]
    /// "#;
    /// let env = |name: &str| (name == "APP_PASSWORD").then(|| "s3cret".to_string());
    /// let settings = DiscoverySettings::from_yaml_str(yaml, "inline.yaml", &env)?;
    ///
    /// assert_eq!(settings.backend, BackendKind::Nats);
    /// assert_eq!(settings.nats.urls(), ["nats://127.0.0.1:4222"]);
    /// assert_eq!(settings.heartbeat_interval, Duration::from_millis(2500));
    /// assert_eq!(settings.load_balancing.strategy, Strategy::LeastOutstanding);
    /// assert_eq!(
    ///     settings.load_balancing.statuses,
    ///     [InstanceStatus::Healthy, InstanceStatus::Unknown]
    /// );
    /// assert!(!format!("{settings:?}").contains("s3cret"));
    ///
    /// // Unset and without a default: the error names the variable, the key and the file.
    /// let err = DiscoverySettings::from_yaml_str(yaml, "inline.yaml", &|_| None).unwrap_err();
    /// let message = err.to_string();
    /// assert!(message.contains("APP_PASSWORD"), "{message}");
    /// assert!(message.contains("service_discovery.backend_config.nats.password"), "{message}");
    /// assert!(message.contains("inline.yaml"), "{message}");
    ///
    /// let builder = settings.mesh_builder()?; // then `builder.connect().await`
    /// # drop(builder);
    /// # Ok::<(), prism_mesh::Error>(())
    /// ```
    pub fn from_yaml_str(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| config_error(format!("{origin}: not valid YAML: {e}")))?;
        doc.apply_merge()
            .map_err(|e| config_error(format!("{origin}: invalid YAML merge key: {e}")))?;
        let mut section = match doc {
            Value::Mapping(mut top) => {
                let section = top.remove(SECTION).ok_or_else(|| {
                    config_error(format!("{origin}: no `{SECTION}` section at the top level"))
                })?;
                if let Some(key) = top.keys().next() {
                    return Err(config_error(format!(
                        "{origin}: unknown top-level key `{}` (only `{SECTION}` is read)",
                        key_name(key)
                    )));
                }
                section
            }
            Value::Null => {
                return Err(config_error(format!(
                    "{origin}: the file is empty; expected a `{SECTION}` section"
                )))
            }
            _ => {
                return Err(config_error(format!(
                    "{origin}: expected a mapping with a `{SECTION}` section at the top level"
                )))
            }
        };
        if section.is_null() {
            section = Value::Mapping(Default::default());
        }
        let mut path = vec![SECTION.to_string()];
        expand_tree(&mut section, &mut path, origin, env)?;
        let raw: RawSection =
            serde_path_to_error::deserialize(section).map_err(|e| structure_error(origin, &e))?;
        Loader::new(origin, env).load(raw)
    }

    /// The library defaults with the environment overrides of the process applied (no
    /// file).
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(&process_env)
    }

    /// Like [`from_env`](Self::from_env) with the environment given by `env`.
    pub fn from_env_with(env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut loader = Loader::new("environment", env);
        loader.from_file = false;
        loader.load(RawSection::default())
    }

    /// The mesh timing of these settings.
    pub fn timing(&self) -> Timing {
        Timing {
            instance_ttl: self.instance_ttl,
            heartbeat_interval: self.heartbeat_interval,
            tombstone_ttl: self.tombstone_ttl,
        }
    }

    /// A [`MeshBuilder`] with the backend, timing, strategies and selection of these
    /// settings. An error when the settings (perhaps changed after loading) are inconsistent.
    pub fn mesh_builder(&self) -> Result<MeshBuilder> {
        let source = &self.source;
        let timing = self.timing();
        timing
            .validate()
            .map_err(|e| config_error(format!("{source}: {SECTION}: {}", bare(&e))))?;
        let selection = self.load_balancing.selection().map_err(|e| {
            config_error(format!("{source}: {SECTION}.load_balancing: {}", bare(&e)))
        })?;
        let mut builder = Mesh::builder().timing(timing);
        builder = match self.backend {
            BackendKind::Memory => builder.memory(),
            BackendKind::Nats => {
                let options = self.nats.clone();
                options.validate().map_err(|e| {
                    config_error(format!(
                        "{source}: {SECTION}.backend_config.nats: {}",
                        bare(&e)
                    ))
                })?;
                builder.nats(options)
            }
        };
        builder = builder
            .strategy(self.load_balancing.strategy)
            .selection(selection);
        for (service, strategy) in &self.load_balancing.services {
            builder = builder.service_strategy(service.clone(), *strategy);
        }
        Ok(builder)
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, message)
}

/// The message of `error` without its kind prefix.
fn bare(error: &Error) -> String {
    let shown = error.to_string();
    let prefix = format!("{}: ", error.kind());
    shown
        .strip_prefix(&prefix)
        .map(str::to_string)
        .unwrap_or(shown)
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".to_string(),
        _ => "?".to_string(),
    }
}

fn show_path(path: &[String]) -> String {
    let mut shown = String::new();
    for segment in path {
        if !shown.is_empty() && !segment.starts_with('[') {
            shown.push('.');
        }
        shown.push_str(segment);
    }
    shown
}
