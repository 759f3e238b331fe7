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

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::balance::{Selection, Strategy};
use crate::config::{redact_url, NatsOptions, StorageKind, Timing};
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{validate_service_name, InstanceStatus};
use crate::mesh::{Mesh, MeshBuilder};

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
    /// How often the embedding service cleans up stale state (default 60 s).
    pub cleanup_interval: Duration,
    /// How long a deregistration tombstone is kept (default 60 s, 1 s to 24 h).
    pub tombstone_ttl: Duration,
    /// How long a stopping service keeps serving after it leaves rotation (default 5 s;
    /// zero: no drain).
    pub drain_period: Duration,
    /// Whether the embedding service registers itself on start (default true).
    pub auto_register: bool,
    /// Whether the embedding service deregisters itself on shutdown (default true).
    pub auto_deregister: bool,
    /// Load balancing of [`Mesh::pick`](crate::Mesh::pick).
    pub load_balancing: LoadBalancingSettings,
    /// The metrics endpoint.
    pub metrics: MetricsSettings,
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
    /// assert_eq!(settings.nats.urls, ["nats://127.0.0.1:4222"]);
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

// ---------------------------------------------------------------------------------------
// ${VAR} expansion on the value tree.

fn expand_tree(
    value: &mut Value,
    path: &mut Vec<String>,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                *s = expand_str(s, env).map_err(|message| {
                    config_error(format!("{origin}: {}: {message}", show_path(path)))
                })?;
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_tree(item, path, origin, env)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key_name(key));
                expand_tree(item, path, origin, env)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, origin, env)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in `text`. The error never quotes `text`
/// (it may hold a secret).
fn expand_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or("unterminated `${` (expected `${NAME}` or `${NAME:-default}`)")?;
            let inner = &body[..end];
            let (name, default) = match inner.find(":-") {
                Some(at) => (&inner[..at], Some(&inner[at + 2..])),
                None => (inner, None),
            };
            if name.is_empty()
                || name.starts_with(|c: char| c.is_ascii_digit())
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!(
                    "invalid variable reference `${{{}}}`: names are ASCII letters, digits and '_'",
                    if name.chars().all(|c| c.is_ascii_graphic()) && name.len() <= 64 {
                        name
                    } else {
                        "..."
                    }
                ));
            }
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The raw shape of the section (structure only; values are checked by the loader).

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSection {
    backend: Option<Scalar>,
    backend_config: Option<RawBackendConfig>,
    instance_ttl: Option<Scalar>,
    heartbeat_interval: Option<Scalar>,
    health_check_interval: Option<Scalar>,
    cleanup_interval: Option<Scalar>,
    tombstone_ttl: Option<Scalar>,
    drain_period: Option<Scalar>,
    auto_register: Option<Scalar>,
    auto_deregister: Option<Scalar>,
    load_balancing: Option<RawLoadBalancing>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackendConfig {
    nats: Option<RawNats>,
    #[allow(dead_code)] // no options: only checked for unknown keys
    memory: Option<RawMemory>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNats {
    url: Option<Scalar>,
    urls: Option<UrlList>,
    token: Option<Scalar>,
    user: Option<Scalar>,
    password: Option<Scalar>,
    nkey_seed: Option<Scalar>,
    nkey_seed_file: Option<Scalar>,
    creds_file: Option<Scalar>,
    tls: Option<RawTls>,
    bucket: Option<Scalar>,
    event_stream: Option<Scalar>,
    subject_prefix: Option<Scalar>,
    replicas: Option<Scalar>,
    storage: Option<Scalar>,
    connect_timeout: Option<Scalar>,
    connect_deadline: Option<Scalar>,
    request_timeout: Option<Scalar>,
    client_name: Option<Scalar>,
    inbox_prefix: Option<Scalar>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<Scalar>,
    cert_file: Option<Scalar>,
    key_file: Option<Scalar>,
    required: Option<Scalar>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLoadBalancing {
    strategy: Option<Scalar>,
    statuses: Option<Vec<Scalar>>,
    services: Option<BTreeMap<String, Scalar>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Scalar>,
}

/// One scalar value as written (after expansion). No `Debug`: it may be a secret.
enum Scalar {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Unsigned(n) => n.to_string(),
            Scalar::Signed(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Signed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// `urls:` as a list, or as one string holding a comma-separated list.
struct UrlList(Vec<Scalar>);

impl<'de> Deserialize<'de> for UrlList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlsVisitor;
        impl<'de> Visitor<'de> for UrlsVisitor {
            type Value = UrlList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of urls or a comma-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UrlList, E> {
                Ok(UrlList(vec![Scalar::Text(v.to_string())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UrlList, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<Scalar>()? {
                    urls.push(url);
                }
                Ok(UrlList(urls))
            }
        }
        deserializer.deserialize_any(UrlsVisitor)
    }
}

fn structure_error(
    origin: &str,
    error: &serde_path_to_error::Error<serde_yaml_ng::Error>,
) -> Error {
    let mut path = error.path().to_string();
    let mut message = error.inner().to_string();
    // Name the unknown field in the path (when the path does not end with it already).
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            if path == "." {
                path = field.to_string();
            } else if path.rsplit('.').next() != Some(field) {
                path = format!("{path}.{field}");
            }
            // serde says "unknown field `x`, expected one of `a`, `b`" (or "expected `a`",
            // or "there are no fields").
            message = match rest[end + 1..].strip_prefix(", ") {
                Some(hint) => format!("unknown key `{field}` ({hint})"),
                None => format!("unknown key `{field}`"),
            };
        }
    }
    let full = if path == "." {
        SECTION.to_string()
    } else {
        format!("{SECTION}.{path}")
    };
    let last = full.rsplit('.').next().unwrap_or_default();
    if SECRET_KEYS.contains(&last) {
        message = "expected a string".to_string();
    }
    config_error(format!("{origin}: {full}: {message}"))
}

// ---------------------------------------------------------------------------------------
// Values: checks, defaults and environment overrides.

/// Where a value came from, for errors.
enum Place<'a> {
    Key(&'a str),
    Env(&'a str),
}

struct Loader<'a> {
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Keys (below the section) whose value came from an environment variable.
    overridden: BTreeMap<&'static str, &'static str>,
    /// False for [`DiscoverySettings::from_env`]: there is no file to name.
    from_file: bool,
}

impl<'a> Loader<'a> {
    fn new(origin: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Loader {
            origin,
            env,
            overridden: BTreeMap::new(),
            from_file: true,
        }
    }

    /// The value of an environment variable; empty counts as unset.
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// An error about the value at `place`.
    fn fail(&self, place: &Place<'_>, message: impl fmt::Display) -> Error {
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
    fn at(&self, key: &str, message: impl fmt::Display) -> Error {
        self.fail(&Place::Key(key), message)
    }

    /// A file value, then the override of `var` when it is set.
    fn layered<T>(
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

    fn load(mut self, raw: RawSection) -> Result<DiscoverySettings> {
        let mut settings = DiscoverySettings {
            source: self.origin.to_string(),
            ..DiscoverySettings::default()
        };

        if let Some(backend) = self.layered("backend", raw.backend, Some("PRISM_BACKEND"), |s| {
            non_empty(s)
                .map(|t| t.parse::<BackendKind>().map_err(|e| bare(&e)))
                .transpose()
        })? {
            settings.backend = backend;
        }

        for (key, raw, var, field, zero_ok) in [
            (
                "instance_ttl",
                raw.instance_ttl,
                Some("PRISM_INSTANCE_TTL"),
                &mut settings.instance_ttl,
                false,
            ),
            (
                "heartbeat_interval",
                raw.heartbeat_interval,
                Some("PRISM_HEARTBEAT_INTERVAL"),
                &mut settings.heartbeat_interval,
                false,
            ),
            (
                "health_check_interval",
                raw.health_check_interval,
                Some("PRISM_HEALTH_CHECK_INTERVAL"),
                &mut settings.health_check_interval,
                false,
            ),
            (
                "cleanup_interval",
                raw.cleanup_interval,
                None,
                &mut settings.cleanup_interval,
                false,
            ),
            (
                "tombstone_ttl",
                raw.tombstone_ttl,
                None,
                &mut settings.tombstone_ttl,
                false,
            ),
            (
                "drain_period",
                raw.drain_period,
                None,
                &mut settings.drain_period,
                true,
            ),
        ] {
            if let Some(duration) = self.layered(key, raw, var, parse_duration)? {
                if duration.is_zero() && !zero_ok {
                    return Err(self.at(key, "must be above zero"));
                }
                *field = duration;
            }
        }
        for (key, raw, field) in [
            (
                "auto_register",
                raw.auto_register,
                &mut settings.auto_register,
            ),
            (
                "auto_deregister",
                raw.auto_deregister,
                &mut settings.auto_deregister,
            ),
        ] {
            if let Some(flag) = self.layered(key, raw, None, parse_bool)? {
                *field = flag;
            }
        }

        let nats = raw
            .backend_config
            .and_then(|config| config.nats)
            .unwrap_or_default();
        self.load_nats(nats, &mut settings)?;

        let balancing = raw.load_balancing.unwrap_or_default();
        if let Some(strategy) = self.layered(
            "load_balancing.strategy",
            balancing.strategy,
            Some("PRISM_LB_STRATEGY"),
            parse_strategy,
        )? {
            settings.load_balancing.strategy = strategy;
        }
        if let Some(statuses) = balancing.statuses {
            let mut order = Vec::new();
            for (index, status) in statuses.iter().enumerate() {
                let key = format!("load_balancing.statuses[{index}]");
                let text = status.text();
                let status = text
                    .trim()
                    .parse::<InstanceStatus>()
                    .map_err(|_| self.at(&key, unknown_status(&text)))?;
                order.push(status);
            }
            settings.load_balancing.statuses = order;
            settings
                .load_balancing
                .selection()
                .map_err(|e| self.at("load_balancing.statuses", bare(&e)))?;
        }
        for (service, strategy) in balancing.services.unwrap_or_default() {
            let key = format!("load_balancing.services.{service}");
            validate_service_name(&service).map_err(|e| self.at(&key, bare(&e)))?;
            let strategy = parse_strategy(&strategy)
                .map_err(|m| self.at(&key, m))?
                .ok_or_else(|| self.at(&key, "empty strategy"))?;
            settings.load_balancing.services.insert(service, strategy);
        }

        if let Some(listen) = raw.metrics.and_then(|m| m.listen) {
            if let Some(text) = non_empty(&listen) {
                settings.metrics.listen = Some(text.parse::<SocketAddr>().map_err(|_| {
                    self.at(
                        "metrics.listen",
                        format!(
                            "invalid address {text:?} (expected ip:port, such as 127.0.0.1:9464)"
                        ),
                    )
                })?);
            }
        }

        let show = |d: Duration| humantime::format_duration(d).to_string();
        for (key, value, most) in [
            (
                "instance_ttl",
                settings.instance_ttl,
                crate::protocol::MAX_INSTANCE_TTL,
            ),
            (
                "tombstone_ttl",
                settings.tombstone_ttl,
                crate::config::MAX_TOMBSTONE_TTL,
            ),
        ] {
            if value < Duration::from_secs(1) || value > most {
                return Err(self.at(
                    key,
                    format!("must be 1s to {}, got {}", show(most), show(value)),
                ));
            }
        }
        if settings.heartbeat_interval >= settings.instance_ttl {
            return Err(self.at(
                "heartbeat_interval",
                format!(
                    "{} must be below instance_ttl ({})",
                    show(settings.heartbeat_interval),
                    show(settings.instance_ttl)
                ),
            ));
        }
        Ok(settings)
    }

    fn load_nats(&mut self, raw: RawNats, settings: &mut DiscoverySettings) -> Result<()> {
        const N: &str = "backend_config.nats";
        let nats = &mut settings.nats;

        // Servers.
        let mut urls: Option<(&'static str, Vec<String>)> = None;
        if let Some(url) = raw.url {
            urls = Some(("backend_config.nats.url", split_urls(&url.text())));
        }
        if let Some(list) = raw.urls {
            if urls.is_some() {
                return Err(self.at(
                    "backend_config.nats.urls",
                    "give either `url` or `urls`, not both",
                ));
            }
            let listed = list.0.iter().flat_map(|u| split_urls(&u.text())).collect();
            urls = Some(("backend_config.nats.urls", listed));
        }
        let mut urls = urls.filter(|(_, list)| !list.is_empty());
        if let Some(text) = self.var("PRISM_NATS_URL") {
            let key = urls.as_ref().map_or("backend_config.nats.url", |(k, _)| *k);
            self.overridden.insert(key, "PRISM_NATS_URL");
            urls = Some((key, split_urls(&text)));
        }
        if urls.is_none() {
            if let Some(text) = self.var("NATS_URL") {
                self.overridden
                    .insert("backend_config.nats.url", "NATS_URL");
                urls = Some(("backend_config.nats.url", split_urls(&text)));
            }
        }
        nats.urls = match urls {
            Some((key, list)) => {
                for url in &list {
                    check_url(url).map_err(|m| self.at(key, m))?;
                }
                list
            }
            None => vec![DEFAULT_NATS_URL.to_string()],
        };

        // Authentication: the file's, unless the environment chooses a method.
        let mut token = raw.token.as_ref().and_then(non_empty);
        let mut user = raw.user.as_ref().and_then(non_empty);
        let mut password = raw.password.as_ref().and_then(non_empty);
        let mut creds = raw.creds_file.as_ref().and_then(non_empty);
        let mut seed = raw.nkey_seed.as_ref().and_then(non_empty);
        let mut seed_file = raw.nkey_seed_file.as_ref().and_then(non_empty);
        let env_token = self.var("PRISM_NATS_TOKEN");
        let env_user = self.var("PRISM_NATS_USER");
        let env_password = self.var("PRISM_NATS_PASSWORD");
        let env_creds = self.var("PRISM_NATS_CREDS");
        let env_seed = self.var("PRISM_NATS_NKEY_SEED");
        let mut chosen = Vec::new();
        if env_token.is_some() {
            chosen.push("PRISM_NATS_TOKEN");
        }
        if env_user.is_some() || env_password.is_some() {
            chosen.push(if env_user.is_some() {
                "PRISM_NATS_USER"
            } else {
                "PRISM_NATS_PASSWORD"
            });
        }
        if env_creds.is_some() {
            chosen.push("PRISM_NATS_CREDS");
        }
        if env_seed.is_some() {
            chosen.push("PRISM_NATS_NKEY_SEED");
        }
        match chosen.as_slice() {
            [] => {}
            [_] => {
                if env_user.is_some() || env_password.is_some() {
                    user = env_user.or(user);
                    password = env_password.or(password);
                    token = None;
                    creds = None;
                    seed = None;
                    seed_file = None;
                } else {
                    token = env_token;
                    creds = env_creds;
                    seed = env_seed;
                    user = None;
                    password = None;
                    seed_file = None;
                }
                for (key, var) in [
                    ("backend_config.nats.token", "PRISM_NATS_TOKEN"),
                    ("backend_config.nats.user", "PRISM_NATS_USER"),
                    ("backend_config.nats.password", "PRISM_NATS_PASSWORD"),
                    ("backend_config.nats.creds_file", "PRISM_NATS_CREDS"),
                    ("backend_config.nats.nkey_seed", "PRISM_NATS_NKEY_SEED"),
                ] {
                    if self.var(var).is_some() {
                        self.overridden.insert(key, var);
                    }
                }
            }
            several => {
                return Err(config_error(format!(
                    "environment variables {} each choose a NATS authentication method; set one",
                    several.join(", ")
                )))
            }
        }
        match (&user, &password) {
            (Some(_), None) => {
                return Err(self.at(
                    "backend_config.nats.user",
                    "a user needs a password (backend_config.nats.password)",
                ))
            }
            (None, Some(_)) => {
                return Err(self.at(
                    "backend_config.nats.password",
                    "a password needs a user (backend_config.nats.user)",
                ))
            }
            _ => {}
        }
        if seed.is_some() && seed_file.is_some() {
            return Err(self.at(
                "backend_config.nats.nkey_seed_file",
                "give either `nkey_seed` or `nkey_seed_file`, not both",
            ));
        }
        let methods: Vec<&str> = [
            (token.is_some(), "token"),
            (user.is_some(), "user/password"),
            (creds.is_some(), "creds_file"),
            (seed.is_some() || seed_file.is_some(), "nkey_seed"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(self.at(
                N,
                format!(
                    "more than one authentication method ({}); keep one",
                    methods.join(", ")
                ),
            ));
        }
        nats.token = token;
        nats.user_password = user.zip(password);
        nats.credentials_file = creds.map(PathBuf::from);
        nats.nkey_seed = seed;
        nats.nkey_seed_file = seed_file.map(PathBuf::from);

        // TLS.
        let tls = raw.tls.unwrap_or_default();
        let mut ca = tls.ca_file.as_ref().and_then(non_empty);
        if let Some(path) = self.var("PRISM_NATS_TLS_CA") {
            self.overridden
                .insert("backend_config.nats.tls.ca_file", "PRISM_NATS_TLS_CA");
            ca = Some(path);
        }
        nats.tls_ca = ca.map(PathBuf::from);
        match (
            tls.cert_file.as_ref().and_then(non_empty),
            tls.key_file.as_ref().and_then(non_empty),
        ) {
            (Some(cert), Some(key)) => {
                nats.tls_client_cert = Some((PathBuf::from(cert), PathBuf::from(key)))
            }
            (Some(_), None) => {
                return Err(self.at(
                    "backend_config.nats.tls.cert_file",
                    "a client certificate needs its key (tls.key_file)",
                ))
            }
            (None, Some(_)) => {
                return Err(self.at(
                    "backend_config.nats.tls.key_file",
                    "a client key needs its certificate (tls.cert_file)",
                ))
            }
            (None, None) => {}
        }
        if let Some(required) = self.layered(
            "backend_config.nats.tls.required",
            tls.required,
            None,
            parse_bool,
        )? {
            nats.tls_required = required;
        }

        // JetStream layout and timeouts.
        for (key, raw, field) in [
            ("backend_config.nats.bucket", raw.bucket, &mut nats.bucket),
            (
                "backend_config.nats.event_stream",
                raw.event_stream,
                &mut nats.event_stream,
            ),
        ] {
            if let Some(name) = raw.as_ref().and_then(non_empty) {
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(self.at(
                        key,
                        format!("{name:?} must be ASCII letters, digits, '-' or '_'"),
                    ));
                }
                *field = name;
            }
        }
        if let Some(prefix) = raw.subject_prefix.as_ref().and_then(non_empty) {
            validate_service_name(&prefix)
                .map_err(|e| self.at("backend_config.nats.subject_prefix", bare(&e)))?;
            nats.subject_prefix = prefix;
        }
        if let Some(replicas) = self.layered(
            "backend_config.nats.replicas",
            raw.replicas,
            None,
            parse_count,
        )? {
            if !(1..=5).contains(&replicas) {
                return Err(self.at(
                    "backend_config.nats.replicas",
                    format!("must be 1 to 5, got {replicas}"),
                ));
            }
            nats.replicas = replicas as usize;
        }
        if let Some(storage) =
            self.layered("backend_config.nats.storage", raw.storage, None, |s| {
                non_empty(s)
                    .map(|t| match t.to_ascii_lowercase().as_str() {
                        "file" => Ok(StorageKind::File),
                        "memory" => Ok(StorageKind::Memory),
                        _ => Err(format!("unknown storage {t:?} (expected file or memory)")),
                    })
                    .transpose()
            })?
        {
            nats.storage = storage;
        }
        for (key, raw, field) in [
            (
                "backend_config.nats.connect_timeout",
                raw.connect_timeout,
                &mut nats.connect_timeout,
            ),
            (
                "backend_config.nats.connect_deadline",
                raw.connect_deadline,
                &mut nats.connect_deadline,
            ),
            (
                "backend_config.nats.request_timeout",
                raw.request_timeout,
                &mut nats.request_timeout,
            ),
        ] {
            if let Some(timeout) = self.layered(key, raw, None, parse_duration)? {
                if timeout.is_zero() {
                    return Err(self.at(key, "must be above zero"));
                }
                *field = timeout;
            }
        }
        nats.client_name = raw.client_name.as_ref().and_then(non_empty);
        nats.inbox_prefix = raw.inbox_prefix.as_ref().and_then(non_empty);
        Ok(())
    }
}

/// The text of a scalar, `None` when it is empty.
fn non_empty(value: &Scalar) -> Option<String> {
    let text = value.text();
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// Checks a server url; the message shows it without credentials.
fn check_url(url: &str) -> std::result::Result<(), String> {
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

fn parse_duration(value: &Scalar) -> std::result::Result<Option<Duration>, String> {
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

fn duration_help(found: &str) -> String {
    format!(
        "invalid duration {found}: expected seconds (30, 2.5) or a duration such as \"30s\" or \"1m 30s\""
    )
}

fn parse_bool(value: &Scalar) -> std::result::Result<Option<bool>, String> {
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

fn parse_count(value: &Scalar) -> std::result::Result<Option<u64>, String> {
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

fn parse_strategy(value: &Scalar) -> std::result::Result<Option<Strategy>, String> {
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

fn unknown_status(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn load(yaml: &str, vars: &[(&str, &str)]) -> Result<DiscoverySettings> {
        DiscoverySettings::from_yaml_str(yaml, "test.yaml", &env_of(vars))
    }

    fn error(yaml: &str, vars: &[(&str, &str)]) -> String {
        let err = load(yaml, vars).expect_err("should fail");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        err.to_string()
    }

    #[test]
    fn expansion_handles_default_empty_escape_and_literal_dollar() {
        let env = env_of(&[("A", "x"), ("EMPTY", "")]);
        assert_eq!(expand_str("${A}", &env).unwrap(), "x");
        assert_eq!(expand_str("a${A}b${A}", &env).unwrap(), "axbx");
        assert_eq!(expand_str("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand_str("${B:-}", &env).unwrap(), "");
        assert_eq!(expand_str("${B:-a:b/c}", &env).unwrap(), "a:b/c");
        assert_eq!(expand_str("$${A}", &env).unwrap(), "${A}");
        assert_eq!(expand_str("pa$word$", &env).unwrap(), "pa$word$");
        assert!(expand_str("${A", &env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_str("${}", &env).unwrap_err().contains("invalid"));
        assert!(expand_str("${B}", &env)
            .unwrap_err()
            .contains("B is not set"));
    }

    #[test]
    fn empty_section_gives_library_defaults() {
        let settings = load("service_discovery:\n", &[]).unwrap();
        let defaults = DiscoverySettings::default();
        assert_eq!(settings.backend, BackendKind::Memory);
        assert_eq!(settings.timing(), Timing::default());
        assert_eq!(settings.nats.urls, [DEFAULT_NATS_URL]);
        assert_eq!(
            settings.health_check_interval,
            defaults.health_check_interval
        );
        assert_eq!(settings.load_balancing, LoadBalancingSettings::default());
        assert_eq!(settings.metrics.listen, None);
        assert_eq!(settings.source, "test.yaml");
        settings.mesh_builder().unwrap();
    }

    #[test]
    fn missing_section_and_unknown_top_level_key_are_errors() {
        assert!(error("other: 1\n", &[]).contains("no `service_discovery` section"));
        let shown = error("service_discovery: {}\nlogging: {}\n", &[]);
        assert!(
            shown.contains("`logging`") && shown.contains("test.yaml"),
            "{shown}"
        );
        assert!(error("", &[]).contains("empty"));
        assert!(error("service_discovery: [\n", &[]).contains("not valid YAML"));
    }

    #[test]
    fn unknown_nested_key_is_named_by_its_full_path() {
        let shown = error(
            "service_discovery:\n  backend_config:\n    nats:\n      passwrd: x\n",
            &[],
        );
        assert!(
            shown.contains(
                "test.yaml: service_discovery.backend_config.nats.passwrd: unknown key `passwrd`"
            ),
            "{shown}"
        );
        let shown = error(
            "service_discovery:\n  backend_config:\n    memory: {size: 1}\n",
            &[],
        );
        assert!(
            shown.contains("service_discovery.backend_config.memory.size"),
            "{shown}"
        );
        assert!(
            shown.contains("unknown key `size` (there are no fields)"),
            "{shown}"
        );
        let shown = error("service_discovery:\n  metrics:\n    port: 1\n", &[]);
        assert!(
            shown.contains("metrics.port: unknown key `port` (expected `listen`)"),
            "{shown}"
        );
        let shown = error("service_discovery:\n  instance_tll: 5\n", &[]);
        assert!(shown.contains("service_discovery.instance_tll"), "{shown}");
    }

    #[test]
    fn durations_accept_seconds_floats_and_humantime() {
        let settings = load(
            "service_discovery:\n  instance_ttl: 30\n  heartbeat_interval: 2.5\n  cleanup_interval: 1m 30s\n  drain_period: 0\n  tombstone_ttl: \"500ms\"\n",
            &[],
        );
        // 500ms tombstone is below the 1 s minimum.
        assert!(settings.unwrap_err().to_string().contains("tombstone_ttl"));
        let settings = load(
            "service_discovery:\n  instance_ttl: 30\n  heartbeat_interval: 2.5\n  cleanup_interval: 1m 30s\n  drain_period: 0\n  health_check_interval: '45'\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.instance_ttl, Duration::from_secs(30));
        assert_eq!(settings.heartbeat_interval, Duration::from_millis(2500));
        assert_eq!(settings.cleanup_interval, Duration::from_secs(90));
        assert_eq!(settings.drain_period, Duration::ZERO);
        assert_eq!(settings.health_check_interval, Duration::from_secs(45));
    }

    #[test]
    fn zero_negative_and_malformed_durations_name_the_key() {
        for (yaml, key) in [
            (
                "heartbeat_interval: 0",
                "heartbeat_interval: must be above zero",
            ),
            (
                "cleanup_interval: -1",
                "cleanup_interval: must not be negative",
            ),
            (
                "health_check_interval: -0.5",
                "health_check_interval: must not be negative",
            ),
            (
                "instance_ttl: soon",
                "instance_ttl: invalid duration \"soon\"",
            ),
            (
                "instance_ttl: true",
                "instance_ttl: invalid duration a boolean",
            ),
            ("instance_ttl: [1]", "instance_ttl: invalid type: sequence"),
        ] {
            let shown = error(&format!("service_discovery:\n  {yaml}\n"), &[]);
            assert!(shown.contains(key), "{yaml}: {shown}");
        }
    }

    #[test]
    fn heartbeat_not_below_ttl_is_an_error_naming_the_key() {
        let shown = error(
            "service_discovery:\n  instance_ttl: 5\n  heartbeat_interval: 5s\n",
            &[],
        );
        assert!(
            shown.contains("test.yaml: service_discovery.heartbeat_interval: 5s must be below instance_ttl (5s)"),
            "{shown}"
        );
        let shown = error(
            "service_discovery:\n  instance_ttl: 5\n",
            &[("PRISM_HEARTBEAT_INTERVAL", "6")],
        );
        assert!(
            shown.contains("environment variable PRISM_HEARTBEAT_INTERVAL"),
            "{shown}"
        );
    }

    #[test]
    fn nats_values_are_read() {
        let settings = load(
            r#"
service_discovery:
  backend: NATS
  backend_config:
    nats:
      urls: [nats://a:4222, "tls://b:4222"]
      creds_file: /etc/app.creds
      tls: { ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, required: yes }
      bucket: b-1
      event_stream: EV
      subject_prefix: disc
      replicas: 3
      storage: memory
      connect_timeout: 2s
      request_timeout: 1.5
      client_name: orders-api
"#,
            &[],
        )
        .unwrap();
        let nats = &settings.nats;
        assert_eq!(settings.backend, BackendKind::Nats);
        assert_eq!(nats.urls, ["nats://a:4222", "tls://b:4222"]);
        assert_eq!(nats.credentials_file, Some(PathBuf::from("/etc/app.creds")));
        assert_eq!(nats.tls_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            nats.tls_client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert!(nats.tls_required);
        assert_eq!(
            (nats.bucket.as_str(), nats.event_stream.as_str()),
            ("b-1", "EV")
        );
        assert_eq!(nats.subject_prefix, "disc");
        assert_eq!(nats.replicas, 3);
        assert_eq!(nats.storage, StorageKind::Memory);
        assert_eq!(nats.connect_timeout, Duration::from_secs(2));
        assert_eq!(nats.request_timeout, Duration::from_millis(1500));
        assert_eq!(nats.client_name.as_deref(), Some("orders-api"));
        settings.mesh_builder().unwrap();
    }

    #[test]
    fn invalid_nats_values_name_the_key() {
        for (nats, key) in [
            (
                "url: http://x:1",
                "nats.url: unsupported url scheme \"http\"",
            ),
            (
                "url: nats://a:1\n      urls: [nats://b:1]",
                "nats.urls: give either",
            ),
            ("user: app", "nats.user: a user needs a password"),
            (
                "password: hunter2",
                "nats.password: a password needs a user",
            ),
            (
                "token: t\n      creds_file: /c",
                "nats: more than one authentication method",
            ),
            (
                "nkey_seed: S\n      nkey_seed_file: /s",
                "nats.nkey_seed_file: give either",
            ),
            ("tls: {cert_file: /c}", "nats.tls.cert_file"),
            ("replicas: 7", "nats.replicas: must be 1 to 5, got 7"),
            ("replicas: -1", "nats.replicas: expected a whole number"),
            ("storage: disk", "nats.storage: unknown storage \"disk\""),
            ("bucket: a.b", "nats.bucket"),
            ("subject_prefix: a.b", "nats.subject_prefix"),
            (
                "connect_timeout: 0s",
                "nats.connect_timeout: must be above zero",
            ),
        ] {
            let yaml = format!("service_discovery:\n  backend_config:\n    nats:\n      {nats}\n");
            let shown = error(&yaml, &[]);
            assert!(shown.contains(key), "{nats}: {shown}");
            assert!(shown.contains("test.yaml"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn credentials_in_urls_are_redacted_in_errors() {
        let shown = error(
            "service_discovery:\n  backend_config:\n    nats:\n      url: http://bob:hunter2@h:1\n",
            &[],
        );
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn secret_keys_never_quote_their_value_on_type_errors() {
        let shown = error(
            "service_discovery:\n  backend_config:\n    nats:\n      token: [hunter2]\n",
            &[],
        );
        assert!(shown.contains("nats.token: expected a string"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // Numbers are fine as secrets.
        let settings = load(
            "service_discovery:\n  backend_config:\n    nats:\n      token: 12345\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.nats.token.as_deref(), Some("12345"));
    }

    #[test]
    fn empty_expanded_values_count_as_absent() {
        let settings = load(
            "service_discovery:\n  instance_ttl: ${TTL:-}\n  backend_config:\n    nats:\n      token: ${NATS_TOKEN:-}\n      url: ${URL:-}\n",
            &[("NATS_URL", "nats://from-env:4222")],
        )
        .unwrap();
        assert_eq!(settings.nats.token, None);
        assert_eq!(settings.instance_ttl, Timing::default().instance_ttl);
        assert_eq!(settings.nats.urls, ["nats://from-env:4222"]);
    }

    #[test]
    fn environment_auth_replaces_the_file_method() {
        let yaml = "service_discovery:\n  backend_config:\n    nats:\n      creds_file: /c\n";
        let settings = load(yaml, &[("PRISM_NATS_TOKEN", "tok")]).unwrap();
        assert_eq!(settings.nats.token.as_deref(), Some("tok"));
        assert_eq!(settings.nats.credentials_file, None);

        let yaml = "service_discovery:\n  backend_config:\n    nats:\n      user: app\n      password: old\n";
        let settings = load(yaml, &[("PRISM_NATS_PASSWORD", "new")]).unwrap();
        assert_eq!(
            settings.nats.user_password,
            Some(("app".to_string(), "new".to_string()))
        );

        let shown = error(
            yaml,
            &[("PRISM_NATS_TOKEN", "t"), ("PRISM_NATS_CREDS", "/c")],
        );
        assert!(
            shown.contains("PRISM_NATS_TOKEN, PRISM_NATS_CREDS"),
            "{shown}"
        );
    }

    #[test]
    fn statuses_strategies_and_services_are_checked() {
        let settings = load(
            "service_discovery:\n  load_balancing:\n    strategy: round-robin\n    statuses: [Healthy, unknown]\n    services: {orders: consistent_hash}\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.load_balancing.strategy, Strategy::RoundRobin);
        assert_eq!(
            settings.load_balancing.statuses,
            [InstanceStatus::Healthy, InstanceStatus::Unknown]
        );
        assert_eq!(
            settings.load_balancing.services.get("orders"),
            Some(&Strategy::ConsistentHash)
        );
        for (lb, key) in [
            (
                "strategy: fastest",
                "load_balancing.strategy: unknown load-balancing strategy \"fastest\"",
            ),
            (
                "statuses: [healthy, sick]",
                "load_balancing.statuses[1]: unknown status \"sick\"",
            ),
            (
                "statuses: [maintenance]",
                "load_balancing.statuses: status maintenance cannot be eligible",
            ),
            (
                "statuses: []",
                "load_balancing.statuses: the status fallback order is empty",
            ),
            (
                "services: {orders: fastest}",
                "load_balancing.services.orders: unknown load-balancing strategy",
            ),
            (
                "services: {'bad name': random}",
                "load_balancing.services.bad name",
            ),
        ] {
            let shown = error(
                &format!("service_discovery:\n  load_balancing:\n    {lb}\n"),
                &[],
            );
            assert!(shown.contains(key), "{lb}: {shown}");
        }
    }

    #[test]
    fn metrics_listen_is_parsed() {
        let settings = load(
            "service_discovery:\n  metrics:\n    listen: 127.0.0.1:9464\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            settings.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let shown = error("service_discovery:\n  metrics:\n    listen: nowhere\n", &[]);
        assert!(
            shown.contains("service_discovery.metrics.listen"),
            "{shown}"
        );
    }

    #[test]
    fn yaml_merge_keys_are_applied() {
        let settings = load(
            "service_discovery:\n  <<: {instance_ttl: 20}\n  heartbeat_interval: 4\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.instance_ttl, Duration::from_secs(20));
    }

    #[test]
    fn from_env_applies_overrides_to_defaults() {
        let settings = DiscoverySettings::from_env_with(&env_of(&[
            ("PRISM_BACKEND", "nats"),
            ("PRISM_NATS_URL", "nats://a:1, nats://b:2"),
            ("PRISM_LB_STRATEGY", "random"),
        ]))
        .unwrap();
        assert_eq!(settings.backend, BackendKind::Nats);
        assert_eq!(settings.nats.urls, ["nats://a:1", "nats://b:2"]);
        assert_eq!(settings.load_balancing.strategy, Strategy::Random);
        assert_eq!(settings.source, "environment");
        let err = DiscoverySettings::from_env_with(&env_of(&[("PRISM_BACKEND", "consul")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment variable PRISM_BACKEND: unknown backend"),
            "{err}"
        );
        let err = DiscoverySettings::from_env_with(&env_of(&[("PRISM_HEARTBEAT_INTERVAL", "20")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment variable PRISM_HEARTBEAT_INTERVAL (service_discovery.heartbeat_interval): 20s must be below instance_ttl (10s)"),
            "{err}"
        );
    }

    #[test]
    fn the_nkey_seed_file_goes_into_the_nats_options_every_caller_uses() {
        let settings = DiscoverySettings::from_yaml_str(
            "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      nkey_seed_file: /run/seed\n      inbox_prefix: _INBOX_orders\n",
            "inline.yaml",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            settings.nats.nkey_seed_file,
            Some(PathBuf::from("/run/seed"))
        );
        assert_eq!(settings.nats.inbox_prefix.as_deref(), Some("_INBOX_orders"));
    }
}
