//! [`NatsOptions`]: where the NATS servers are, how to authenticate, and the JetStream
//! layout of the bucket and the event stream. Fields are private: setters build the options,
//! the mesh builder checks them once when it connects.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{StorageKind, DEFAULT_CONNECT_DEADLINE};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{DEFAULT_BUCKET, DEFAULT_EVENT_STREAM, DEFAULT_SUBJECT_PREFIX};

/// The most buckets a mesh's instances can be spread over.
pub const MAX_SHARDS: u16 = 64;

/// Connection and JetStream layout for the NATS backend.
///
/// ```
/// use prism_mesh::NatsOptions;
///
/// let options = NatsOptions::new("nats://127.0.0.1:4222")
///     .replicas(3)
///     .token("s3cret");
/// assert_eq!(options.urls(), ["nats://127.0.0.1:4222"]);
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct NatsOptions {
    /// Server URLs (`nats://`, `tls://`); more than one for a cluster.
    pub(crate) urls: Vec<String>,
    /// KV bucket holding one key per live instance.
    pub(crate) bucket: String,
    /// Stream holding lifecycle events.
    pub(crate) event_stream: String,
    /// First subject token of lifecycle events.
    pub(crate) subject_prefix: String,
    /// Replicas for the bucket and the stream (1, or 3 on a cluster).
    pub(crate) replicas: usize,
    /// Storage of the bucket and the stream.
    pub(crate) storage: StorageKind,
    /// Bound on one attempt to connect to a server.
    pub(crate) connect_timeout: Duration,
    /// How long connecting keeps trying (with backoff) while the servers are unreachable,
    /// still starting, or electing a JetStream leader (4 to 9 s after a leader is lost)
    /// before it reports what it could not reach. Default 30 s.
    pub(crate) connect_deadline: Duration,
    /// Bound on each JetStream request (publish ack, stream info...).
    pub(crate) request_timeout: Duration,
    /// How long the server keeps the marker it writes when a key expires (min 1 s).
    /// A peer that is disconnected longer still converges: it resynchronises on reconnect.
    pub(crate) marker_ttl: Duration,
    /// Oldest lifecycle event kept in the event stream.
    pub(crate) event_max_age: Duration,
    /// Largest size of the event stream, bytes (-1: unlimited).
    pub(crate) event_max_bytes: i64,
    /// Most events kept in the event stream (-1: unlimited).
    pub(crate) event_max_messages: i64,
    /// Largest size of the bucket, bytes (-1: unlimited).
    pub(crate) bucket_max_bytes: i64,
    /// How the connection authenticates, besides credentials in the urls.
    pub(crate) auth: Option<NatsAuth>,
    /// CA certificate (PEM) to trust for TLS.
    pub(crate) tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub(crate) tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Require TLS even for `nats://` URLs.
    pub(crate) tls_required: bool,
    /// Connection name shown by the server's monitoring.
    pub(crate) client_name: Option<String>,
    /// Prefix of this connection's reply subjects (default `_INBOX`). With one prefix per
    /// user, and permissions that let each user subscribe only to its own, no user can read
    /// another's replies (see `nats/auth.conf`).
    pub(crate) inbox_prefix: Option<String>,
    /// Whether connecting creates the bucket and the event stream when they are missing.
    pub(crate) create: bool,
    /// How many buckets the instances are spread over; `None`: as many as the mesh has
    /// (read from its first bucket, or 1 for a new mesh).
    pub(crate) shards: Option<u16>,
}

impl NatsOptions {
    /// Defaults for one server URL (or a comma-separated list).
    pub fn new(urls: impl AsRef<str>) -> Self {
        NatsOptions {
            urls: split_urls(urls.as_ref()),
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
            auth: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_required: false,
            client_name: None,
            inbox_prefix: None,
            create: true,
            shards: None,
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

    /// Spreads the instances over `shards` buckets (by service: a service's instances all
    /// live in one), so that a cluster's servers share the writes: shard 0 is the bucket
    /// named by [`bucket`](NatsOptions::bucket), shard `i` is `<bucket>-<i>`. Every peer of
    /// a mesh must use the same count; a peer configured for another count than the mesh's
    /// is refused at connect. Unset (the default), a peer uses the mesh's count, and a new
    /// mesh gets 1. Changing the count of a running mesh means a new bucket name (see
    /// `docs/scaling.md`). 1 to 64.
    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The shard count set with [`shards`](NatsOptions::shards), if any.
    pub fn shard_count(&self) -> Option<u16> {
        self.shards
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

    /// Authenticates with a token (replacing any other method).
    pub fn token(self, token: impl Into<String>) -> Self {
        self.auth(NatsAuth::Token(token.into()))
    }

    /// Authenticates with user and password (replacing any other method).
    pub fn user_password(self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth(NatsAuth::UserPassword {
            user: user.into(),
            password: password.into(),
        })
    }

    /// Authenticates with a credentials file (replacing any other method).
    pub fn credentials_file(self, path: impl Into<PathBuf>) -> Self {
        self.auth(NatsAuth::CredentialsFile(path.into()))
    }

    /// Authenticates with an NKey seed (replacing any other method).
    pub fn nkey_seed(self, seed: impl Into<String>) -> Self {
        self.auth(NatsAuth::NkeySeed(seed.into()))
    }

    /// Authenticates with the NKey seed in this file, read when connecting (replacing any
    /// other method).
    pub fn nkey_seed_file(self, path: impl Into<PathBuf>) -> Self {
        self.auth(NatsAuth::NkeySeedFile(path.into()))
    }

    /// Sets how the connection authenticates; a connection has one method, so this replaces
    /// the one set before.
    pub fn auth(mut self, auth: NatsAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Removes the authentication method (credentials in the urls still apply).
    pub fn no_auth(mut self) -> Self {
        self.auth = None;
        self
    }

    /// Whether connecting creates the bucket and the event stream when they are missing
    /// (default true). A tool that only reads sets false, so that pointing it at the wrong
    /// server leaves nothing behind: it gets [`ErrorKind::NotFound`] instead.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Replaces the server urls (one, or a comma-separated list).
    pub fn servers(mut self, urls: impl AsRef<str>) -> Self {
        self.urls = split_urls(urls.as_ref());
        self
    }

    /// The server urls, as given (they may hold credentials: log
    /// [`redacted_urls`](Self::redacted_urls) instead).
    pub fn urls(&self) -> &[String] {
        &self.urls
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
            (
                "credentials file",
                match &self.auth {
                    Some(NatsAuth::CredentialsFile(path)) => Some(path),
                    _ => None,
                },
            ),
            (
                "nkey_seed_file",
                match &self.auth {
                    Some(NatsAuth::NkeySeedFile(path)) => Some(path),
                    _ => None,
                },
            ),
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
        if let Some(shards) = self.shards.filter(|s| !(1..=MAX_SHARDS).contains(s)) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("shards must be 1 to {MAX_SHARDS}, got {shards}"),
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
        if found.is_some() && self.auth.is_some() {
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

/// Decodes `%XX` escapes (a password may hold `@`, `:` or `/` only escaped).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// How a connection authenticates (one method per connection).
///
/// ```
/// use prism_mesh::{NatsAuth, NatsOptions};
///
/// let options = NatsOptions::new("nats://127.0.0.1:4222")
///     .auth(NatsAuth::UserPassword { user: "orders".into(), password: "s3cret".into() });
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsAuth {
    /// A token.
    Token(String),
    /// A user and password.
    UserPassword {
        /// The user name.
        user: String,
        /// Its password.
        password: String,
    },
    /// A credentials file (JWT and NKey seed).
    CredentialsFile(PathBuf),
    /// An NKey seed.
    NkeySeed(String),
    /// A file holding the NKey seed, read when connecting.
    NkeySeedFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    // Hand-written so secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            NatsAuth::CredentialsFile(path) => {
                f.debug_tuple("CredentialsFile").field(path).finish()
            }
            NatsAuth::NkeySeed(_) => f.write_str("NkeySeed(<redacted>)"),
            NatsAuth::NkeySeedFile(path) => f.debug_tuple("NkeySeedFile").field(path).finish(),
        }
    }
}

impl fmt::Debug for NatsOptions {
    // Hand-written so credentials never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("urls", &self.redacted_urls())
            .field("bucket", &self.bucket)
            .field("shards", &self.shards)
            .field("event_stream", &self.event_stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("storage", &self.storage)
            .field("auth", &self.auth)
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
}
