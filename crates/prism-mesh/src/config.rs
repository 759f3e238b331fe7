//! Configuration: which backend, how long instances live, how often owners heartbeat.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{DEFAULT_BUCKET, DEFAULT_EVENT_STREAM, DEFAULT_SUBJECT_PREFIX};

/// A `tracing` filter directive to add to every subscriber of a process that uses NATS
/// credentials. async-nats prints server urls, with any password in them, at DEBUG (its
/// `CONNECT` line is redacted since 0.51). prism-mesh itself
/// never logs a secret; the `prism` CLI adds this directive to whatever `PRISM_LOG` says.
///
/// ```
/// let filter = tracing_subscriber::EnvFilter::new("trace")
///     .add_directive(prism_mesh::SECRET_SAFE_LOG_DIRECTIVE.parse().unwrap());
/// # drop(filter);
/// ```
pub const SECRET_SAFE_LOG_DIRECTIVE: &str = "async_nats=info";

/// How long [`NatsOptions::connect_deadline`] is unless set: longer than nats-server's
/// longest election timeout (9 s) plus a server's start-up.
pub const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// JetStream storage for the bucket and the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    /// On disk (default): survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost on restart.
    Memory,
}

/// Connection and JetStream layout for the NATS backend.
///
/// ```
/// use prism_mesh::NatsOptions;
///
/// let options = NatsOptions::new("nats://127.0.0.1:4222")
///     .replicas(3)
///     .token("s3cret");
/// assert_eq!(options.urls, vec!["nats://127.0.0.1:4222".to_string()]);
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct NatsOptions {
    /// Server URLs (`nats://`, `tls://`); more than one for a cluster.
    pub urls: Vec<String>,
    /// KV bucket holding one key per live instance.
    pub bucket: String,
    /// Stream holding lifecycle events.
    pub event_stream: String,
    /// First subject token of lifecycle events.
    pub subject_prefix: String,
    /// Replicas for the bucket and the stream (1, or 3 on a cluster).
    pub replicas: usize,
    /// Storage of the bucket and the stream.
    pub storage: StorageKind,
    /// Bound on one attempt to connect to a server.
    pub connect_timeout: Duration,
    /// How long connecting keeps trying (with backoff) while the servers are unreachable,
    /// still starting, or electing a JetStream leader (4 to 9 s after a leader is lost)
    /// before it reports what it could not reach. Default 30 s.
    pub connect_deadline: Duration,
    /// Bound on each JetStream request (publish ack, stream info...).
    pub request_timeout: Duration,
    /// How long the server keeps the marker it writes when a key expires (min 1 s).
    /// A peer that is disconnected longer still converges: it resynchronises on reconnect.
    pub marker_ttl: Duration,
    /// Oldest lifecycle event kept in the event stream.
    pub event_max_age: Duration,
    /// Largest size of the event stream, bytes (-1: unlimited).
    pub event_max_bytes: i64,
    /// Most events kept in the event stream (-1: unlimited).
    pub event_max_messages: i64,
    /// Largest size of the bucket, bytes (-1: unlimited).
    pub bucket_max_bytes: i64,
    /// Token authentication.
    pub token: Option<String>,
    /// User and password authentication.
    pub user_password: Option<(String, String)>,
    /// Credentials file (JWT + NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// NKey seed authentication.
    pub nkey_seed: Option<String>,
    /// A file holding the NKey seed, read when connecting.
    pub nkey_seed_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Require TLS even for `nats://` URLs.
    pub tls_required: bool,
    /// Connection name shown by the server's monitoring.
    pub client_name: Option<String>,
    /// Prefix of this connection's reply subjects (default `_INBOX`). With one prefix per
    /// user, and permissions that let each user subscribe only to its own, no user can read
    /// another's replies (see `nats/auth.conf`).
    pub inbox_prefix: Option<String>,
}

impl NatsOptions {
    /// Defaults for one server URL (or a comma-separated list).
    pub fn new(urls: impl AsRef<str>) -> Self {
        NatsOptions {
            urls: urls
                .as_ref()
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            bucket: DEFAULT_BUCKET.to_string(),
            event_stream: DEFAULT_EVENT_STREAM.to_string(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_string(),
            replicas: 1,
            storage: StorageKind::File,
            connect_timeout: Duration::from_secs(5),
            connect_deadline: DEFAULT_CONNECT_DEADLINE,
            request_timeout: Duration::from_secs(5),
            marker_ttl: Duration::from_secs(60),
            event_max_age: Duration::from_secs(7 * 24 * 3600),
            event_max_bytes: 1 << 30,
            event_max_messages: -1,
            bucket_max_bytes: -1,
            token: None,
            user_password: None,
            credentials_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_required: false,
            client_name: None,
            inbox_prefix: None,
        }
    }

    /// Sets the KV bucket name.
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Sets the event stream name.
    pub fn event_stream(mut self, stream: impl Into<String>) -> Self {
        self.event_stream = stream.into();
        self
    }

    /// Sets the first token of event subjects.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Sets the replica count of the bucket and the stream.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the storage kind.
    pub fn storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long connecting keeps trying before it gives up (see
    /// [`connect_deadline`](NatsOptions::connect_deadline)).
    pub fn connect_deadline(mut self, deadline: Duration) -> Self {
        self.connect_deadline = deadline;
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how long expiry markers are kept.
    pub fn marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    /// Sets the event stream limits: age, bytes, messages (-1: unlimited).
    pub fn event_limits(mut self, max_age: Duration, max_bytes: i64, max_messages: i64) -> Self {
        self.event_max_age = max_age;
        self.event_max_bytes = max_bytes;
        self.event_max_messages = max_messages;
        self
    }

    /// Sets the bucket's size limit in bytes (-1: unlimited).
    pub fn bucket_max_bytes(mut self, max_bytes: i64) -> Self {
        self.bucket_max_bytes = max_bytes;
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with user and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// Authenticates with a credentials file.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticates with an NKey seed.
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Authenticates with the NKey seed in this file (read when connecting).
    pub fn nkey_seed_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.nkey_seed_file = Some(path.into());
        self
    }

    /// Sets the prefix of this connection's reply subjects (default `_INBOX`).
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// Trusts this CA for TLS.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// Presents a client certificate for mutual TLS.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Requires TLS.
    pub fn tls_required(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// Names the connection.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// The URLs with any `user:password@` removed, for logs and errors.
    pub fn redacted_urls(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Checks that the files the options name can be read, naming the one that cannot:
    /// async-nats reports an unreadable file as a bare I/O or TLS error, without its path.
    /// Done when connecting, not when a configuration is loaded (which may happen elsewhere).
    pub(crate) fn check_files(&self) -> Result<()> {
        let files = [
            ("tls_ca", self.tls_ca.as_ref()),
            (
                "tls client certificate",
                self.tls_client_cert.as_ref().map(|(c, _)| c),
            ),
            (
                "tls client key",
                self.tls_client_cert.as_ref().map(|(_, k)| k),
            ),
            ("credentials file", self.credentials_file.as_ref()),
            ("nkey_seed_file", self.nkey_seed_file.as_ref()),
        ];
        for (what, path) in files {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!("cannot read the {what} {}", path.display()),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "no NATS server url given",
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("replicas must be 1 to 5, got {}", self.replicas),
            ));
        }
        if self.marker_ttl < Duration::from_secs(1) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "marker_ttl must be at least 1s (nats-server minimum), got {}",
                    humantime::format_duration(self.marker_ttl)
                ),
            ));
        }
        for (what, name) in [
            ("bucket", &self.bucket),
            ("event_stream", &self.event_stream),
        ] {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{what} {name:?} must be ASCII letters, digits, '-' or '_'"),
                ));
            }
        }
        crate::instance::validate_service_name(&self.subject_prefix)
            .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("subject_prefix: {e}")))?;
        if let Some(prefix) = &self.inbox_prefix {
            let valid = !prefix.is_empty()
                && prefix.split('.').all(|token| {
                    !token.is_empty()
                        && token
                            .chars()
                            .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
                });
            if !valid {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "inbox_prefix {prefix:?} must be subject tokens without wildcards or spaces"
                    ),
                ));
            }
        }
        if self.nkey_seed.is_some() && self.nkey_seed_file.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "give either nkey_seed or nkey_seed_file, not both",
            ));
        }
        self.url_credentials()?;
        if let Some(ca) = &self.tls_ca {
            let uses_tls = self.tls_required
                || self.tls_client_cert.is_some()
                || self.urls.iter().any(|u| {
                    let scheme = u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                    matches!(scheme.as_deref(), Some("tls" | "wss"))
                });
            if !uses_tls {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "tls_ca {} cannot apply: no url uses TLS ({}); use tls:// urls or set tls_required",
                        ca.display(),
                        self.redacted_urls()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `user:password@` (or `token@`) the urls carry, the same in every url that has
    /// any; an error when urls disagree or the options give credentials too. async-nats
    /// does not apply them by itself.
    pub(crate) fn url_credentials(&self) -> Result<Option<UrlCredentials>> {
        let mut found: Option<UrlCredentials> = None;
        for url in &self.urls {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
            let Some((userinfo, _)) = rest.rsplit_once('@') else {
                continue;
            };
            let credentials = match userinfo.split_once(':') {
                Some((user, password)) => {
                    UrlCredentials::UserPassword(percent_decode(user), percent_decode(password))
                }
                None => UrlCredentials::Token(percent_decode(userinfo)),
            };
            match &found {
                Some(other) if *other != credentials => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "the urls carry different credentials ({}); give them once",
                            self.redacted_urls()
                        ),
                    ));
                }
                _ => found = Some(credentials),
            }
        }
        let given = self.token.is_some()
            || self.user_password.is_some()
            || self.nkey_seed.is_some()
            || self.nkey_seed_file.is_some()
            || self.credentials_file.is_some();
        if found.is_some() && given {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "credentials given twice: in the url ({}) and as options; give them once",
                    self.redacted_urls()
                ),
            ));
        }
        Ok(found)
    }
}

/// Credentials carried by a server url.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum UrlCredentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// Decodes `%XX` escapes (a password may hold `@`, `:` or `/` only escaped); anything else
/// is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Debug for NatsOptions {
    // Hand-written so credentials never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("urls", &self.redacted_urls())
            .field("bucket", &self.bucket)
            .field("event_stream", &self.event_stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("storage", &self.storage)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<redacted>"))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("tls_ca", &self.tls_ca)
            .field("tls_required", &self.tls_required)
            .finish_non_exhaustive()
    }
}

/// Removes `user:password@` from a URL.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>@{}", &url[..scheme_end], &url[at + 1..])
        }
        (None, Some(at)) => format!("<redacted>@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Timing of owners and peers, shared by both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a key lives without a heartbeat (whole seconds on NATS, at least 1 s).
    pub instance_ttl: Duration,
    /// How often an owner refreshes its keys; must be shorter than the TTL.
    pub heartbeat_interval: Duration,
    /// How long a deregistration tombstone is kept before it expires too (1 s to
    /// [`MAX_TOMBSTONE_TTL`]).
    pub tombstone_ttl: Duration,
}

/// nats-server's longest raft election timeout: after the leader of a replicated stream is
/// lost (SIGKILL, a crashed host), writes to it fail for 4 to 9 s until a follower takes
/// over. A graceful stop hands leadership over in about a second.
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_secs(9);

/// The `>` operator's one-second slack in [`Timing::cluster_min_ttl`]: the new leader's first
/// writes and the owner's acknowledgement.
const ELECTION_SLACK: Duration = Duration::from_secs(1);

/// The longest [`Timing::tombstone_ttl`]: tombstones are what churn leaves in the bucket,
/// so they must go within a bounded time.
pub const MAX_TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

impl Default for Timing {
    fn default() -> Self {
        Timing {
            instance_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// The shortest instance TTL with which no key can expire on a replicated bucket while
    /// its stream elects a new leader: the last heartbeat before the leader is lost is at most
    /// one interval old, writes fail for up to [`MAX_ELECTION_TIMEOUT`], and a failed heartbeat
    /// is retried within a third of the interval (plus a second of slack), in whole seconds.
    ///
    /// Shorter TTLs still work on a cluster: keys may then expire on the server in an
    /// election, and peers hold those expiries (late, cut-off or burst, see
    /// [`SelfPreservation`](crate::SelfPreservation)) while owners write their keys again.
    /// That protection does not cover a mesh of fewer than `min_instances` instances whose
    /// expiries come on time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use prism_mesh::Timing;
    ///
    /// let timing = Timing { heartbeat_interval: Duration::from_secs(1), ..Timing::default() };
    /// assert_eq!(timing.cluster_min_ttl(), Duration::from_secs(12));
    /// ```
    pub fn cluster_min_ttl(&self) -> Duration {
        let least = self.heartbeat_interval
            + self.heartbeat_interval / 3
            + MAX_ELECTION_TIMEOUT
            + ELECTION_SLACK;
        let whole = least.as_secs() + u64::from(least.subsec_nanos() > 0);
        Duration::from_secs(whole)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.instance_ttl < Duration::from_secs(1) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "instance_ttl must be at least 1s, got {}",
                    show(self.instance_ttl)
                ),
            ));
        }
        if self.instance_ttl > crate::protocol::MAX_INSTANCE_TTL {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "instance_ttl must be at most {} (peers refuse longer-lived records), got {}",
                    show(crate::protocol::MAX_INSTANCE_TTL),
                    show(self.instance_ttl)
                ),
            ));
        }
        if self.tombstone_ttl < Duration::from_secs(1) || self.tombstone_ttl > MAX_TOMBSTONE_TTL {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "tombstone_ttl must be 1s to {}, got {}",
                    show(MAX_TOMBSTONE_TTL),
                    show(self.tombstone_ttl)
                ),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.instance_ttl {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "heartbeat_interval ({}) must be above zero and below instance_ttl ({})",
                    show(self.heartbeat_interval),
                    show(self.instance_ttl)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("nats://bob:pw@host:4222"),
            "nats://<redacted>@host:4222"
        );
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        let options = NatsOptions::new("nats://bob:pw@h:1").user_password("u", "hunter2");
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("pw@") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn a_tombstone_ttl_beyond_a_day_is_refused_naming_the_limit() {
        let timing = Timing {
            tombstone_ttl: Duration::MAX,
            ..Timing::default()
        };
        let err = timing.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(
            err.to_string().contains("tombstone_ttl must be 1s to 1day"),
            "{err}"
        );
    }

    #[test]
    fn heartbeat_must_be_shorter_than_ttl() {
        let timing = Timing {
            heartbeat_interval: Duration::from_secs(10),
            ..Timing::default()
        };
        let err = timing.validate().unwrap_err();
        assert!(
            err.to_string().contains("heartbeat_interval (10s)"),
            "{err}"
        );
    }
}
