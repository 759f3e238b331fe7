//! Connecting: the connection with its options and credentials, then the bucket and the
//! event stream, looked up before they are created, retried while the servers start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{ConnectOptions, ServerAddr};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{is_stream_not_found, unless_denied, Inner, NatsStore, Shard, WatchLag};
use crate::config::{NatsAuth, NatsOptions, StorageKind, UrlCredentials};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{shard_bucket, shard_description, shards_described};

impl NatsStore {
    /// Connects, then creates (or checks) the bucket and the event stream. `options` were
    /// validated by the mesh builder; the files they name are read now.
    #[tracing::instrument(name = "nats.connect", skip_all, fields(urls = %options.redacted_urls()))]
    pub(crate) async fn connect(options: &NatsOptions) -> Result<NatsStore> {
        options.check_files()?;
        let urls = options.redacted_urls();
        let addrs = options
            .urls
            .iter()
            .map(|url| {
                // Credentials in a url are applied below as options (async-nats ignores
                // them), and kept out of the address async-nats may log.
                without_userinfo(url).parse::<ServerAddr>().map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!("invalid NATS url {:?}", crate::config::redact_url(url)),
                        e,
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let (reconnect_tx, reconnects) = watch::channel(0u64);
        let (violations, _) = broadcast::channel::<String>(64);
        let violation_tx = violations.clone();
        let was_disconnected = Arc::new(AtomicBool::new(false));
        let mut connect = ConnectOptions::new()
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            .event_callback(move |event| {
                let reconnect_tx = reconnect_tx.clone();
                let was_disconnected = was_disconnected.clone();
                let violation_tx = violation_tx.clone();
                async move {
                    match event {
                        // The server reports a denied publish on the connection, not on
                        // the publish: hand it to the publish waiting for its ack.
                        async_nats::Event::ServerError(async_nats::ServerError::Other(text))
                            if text.to_lowercase().contains("permissions violation") =>
                        {
                            warn!(%text, "NATS permission denied");
                            let _ = violation_tx.send(text);
                        }
                        async_nats::Event::Disconnected => {
                            was_disconnected.store(true, Ordering::SeqCst);
                            warn!("disconnected from NATS");
                        }
                        async_nats::Event::Connected => {
                            // The first Connected is the initial connect, not a reconnect.
                            if was_disconnected.swap(false, Ordering::SeqCst) {
                                info!("reconnected to NATS");
                                reconnect_tx.send_modify(|n| *n += 1);
                            }
                        }
                        other => debug!(event = %other, "NATS connection event"),
                    }
                }
            });
        if let Some(name) = &options.client_name {
            connect = connect.name(name);
        }
        if let Some(prefix) = &options.inbox_prefix {
            connect = connect.custom_inbox_prefix(prefix);
        }
        match options.url_credentials()? {
            Some(UrlCredentials::UserPassword(user, password)) => {
                connect = connect.user_and_password(user, password);
            }
            Some(UrlCredentials::Token(token)) => connect = connect.token(token),
            None => {}
        }
        match &options.auth {
            None => {}
            Some(NatsAuth::Token(token)) => connect = connect.token(token.clone()),
            Some(NatsAuth::UserPassword { user, password }) => {
                connect = connect.user_and_password(user.clone(), password.clone());
            }
            Some(NatsAuth::NkeySeed(seed)) => connect = connect.nkey(seed.clone()),
            Some(NatsAuth::NkeySeedFile(path)) => {
                let seed = std::fs::read_to_string(path).map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!("cannot read the nkey_seed_file {}", path.display()),
                        e,
                    )
                })?;
                connect = connect.nkey(seed.trim().to_string());
            }
            Some(NatsAuth::CredentialsFile(path)) => {
                connect = connect.credentials_file(path).await.map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!("cannot read credentials file {}", path.display()),
                        e,
                    )
                })?;
            }
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &options.tls_client_cert {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        if options.tls_required {
            connect = connect.require_tls(true);
        }

        // Servers still starting, a JetStream leader election: wait them out with backoff
        // until the deadline, then say what could not be reached.
        let mut retry = Retry::within(options.connect_deadline);
        let client = loop {
            // The per-attempt bound covers DNS, TLS and auth, not only the TCP connect.
            let bound = options.connect_timeout + Duration::from_secs(1);
            let error = match tokio::time::timeout(bound, connect.clone().connect(addrs.clone()))
                .await
            {
                Ok(Ok(client)) => break client,
                Ok(Err(e)) => {
                    let kind = match e.kind() {
                        async_nats::ConnectErrorKind::AuthorizationViolation => {
                            ErrorKind::PermissionDenied
                        }
                        // Credentials that cannot sign (a malformed NKey seed).
                        async_nats::ConnectErrorKind::Authentication => ErrorKind::InvalidConfig,
                        async_nats::ConnectErrorKind::TimedOut => ErrorKind::Timeout,
                        _ => ErrorKind::Connect,
                    };
                    // Waiting does not fix credentials, certificates or a malformed url.
                    // (A TLS handshake refused by either side comes as an I/O error.)
                    let lasting = matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                            | async_nats::ConnectErrorKind::Tls
                            | async_nats::ConnectErrorKind::ServerParse
                    ) || mentions_any(
                        &e,
                        &[
                            "certificate",
                            "tls",
                            "handshake",
                            "alert",
                            "corrupt message",
                        ],
                    );
                    let error =
                        Error::with_source(kind, format!("cannot connect to NATS at {urls}"), e);
                    if lasting {
                        return Err(error);
                    }
                    error
                }
                Err(_) => Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "cannot connect to NATS at {urls}: no answer within {}",
                        humantime::format_duration(bound)
                    ),
                ),
            };
            retry.wait_or_give_up(error, "NATS servers").await?;
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);

        // A new mesh gets the configured shard count (default 1); an existing one says its
        // own in its first bucket.
        let created_with = Shard {
            index: 0,
            count: options.shards.unwrap_or(1),
        };
        let (kv_stream, described) = loop {
            match ensure_bucket(&js, options, created_with, &violations).await {
                Ok(found) => break found,
                Err(e) => retry.wait_or_give_up(e, "JetStream (KV bucket)").await?,
            }
        };
        let shards = shard_count(options, described)?;
        loop {
            match ensure_event_stream(&js, options, &violations).await {
                Ok(()) => break,
                Err(e) => retry.wait_or_give_up(e, "JetStream (event stream)").await?,
            }
        }

        Ok(NatsStore {
            inner: Arc::new(Inner {
                client,
                js,
                kv_stream,
                kv_prefix: format!("$KV.{}.", options.bucket),
                shard: Shard {
                    index: 0,
                    count: shards,
                },
                subject_prefix: options.subject_prefix.clone(),
                reconnects,
                closed: watch::channel(false).0,
                urls,
                lag: WatchLag::default(),
                violations,
                awaited: watch::channel(0).0,
                options: options.clone(),
            }),
        })
    }
}

/// Opens the bucket, or creates it when it does not exist; checks that it supports per-key
/// TTLs. Looked up first: a user who may not create streams (least privilege) must not wait
/// out a refused create on every connect.
pub(super) async fn ensure_bucket(
    js: &jetstream::Context,
    options: &NatsOptions,
    shard: Shard,
    violations: &broadcast::Sender<String>,
) -> Result<(String, Option<u16>)> {
    let bucket = &shard_bucket(&options.bucket, shard.index);
    let stream_name = format!("KV_{bucket}");
    let read_error = |e: &dyn std::error::Error| setup_kind(transient(e));
    let stream = match js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        Err(e) if is_stream_not_found(&e) && !options.create => {
            return Err(absent("KV bucket", bucket));
        }
        Err(e) if is_stream_not_found(&e) => {
            let config = kv::Config {
                bucket: bucket.clone(),
                description: shard_description(shard.index, shard.count),
                history: 1,
                max_bytes: options.bucket_max_bytes,
                storage: storage_type(options.storage),
                num_replicas: options.replicas,
                limit_markers: Some(options.marker_ttl),
                ..Default::default()
            };
            let create = format!("$JS.API.STREAM.CREATE.{stream_name}");
            let created = unless_denied(violations, &create, js.create_key_value(config))
                .await
                .map_err(|text| missing_and_denied("KV bucket", bucket, &text))?;
            // Created, or by another peer meanwhile: either way it is there now, unless
            // the create failed for a reason of its own (which is then the one to report).
            match (js.get_stream(&stream_name).await, created) {
                (Ok(stream), _) => stream,
                (Err(get_error), created) => {
                    let kind = match &created {
                        Err(create_error) => {
                            setup_kind(transient(create_error) || transient(&get_error))
                        }
                        Ok(_) => read_error(&get_error),
                    };
                    let message = format!(
                        "cannot create KV bucket {:?} (needs JetStream and nats-server >= 2.11)",
                        bucket
                    );
                    return Err(match created {
                        Err(create_error) => Error::with_source(kind, message, create_error),
                        Ok(_) => Error::with_source(kind, message, get_error),
                    });
                }
            }
        }
        Err(e) => {
            return Err(Error::with_source(
                read_error(&e),
                format!(
                    "cannot look up KV bucket {:?} (needs JetStream and nats-server >= 2.11)",
                    bucket
                ),
                e,
            ))
        }
    };
    // The lookup (or the create) already brought the stream's configuration.
    let info = stream.cached_info();
    if !info.config.allow_message_ttl || info.config.subject_delete_marker_ttl.is_none() {
        return Err(Error::new(
            ErrorKind::Setup,
            format!(
                "KV bucket {:?} exists without per-message TTL (limit markers); \
                 recreate it or choose another bucket name",
                bucket
            ),
        ));
    }
    Ok((
        stream_name,
        shards_described(info.config.description.as_deref()),
    ))
}

/// The mesh's shard count, as its first bucket states it; an error when this peer was
/// configured for another.
fn shard_count(options: &NatsOptions, described: Option<u16>) -> Result<u16> {
    let bucket = &options.bucket;
    let count = described.ok_or_else(|| {
        Error::new(
            ErrorKind::Setup,
            format!("KV bucket {bucket:?} states a shard count that is not a number from 1"),
        )
    })?;
    match options.shards {
        Some(wanted) if wanted != count => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the mesh in KV bucket {bucket:?} spreads its instances over {count} shard(s), \
                 this peer is configured for {wanted}: every peer of a mesh uses the same count \
                 (leave `shards` unset to use the mesh's; to change it, start the new count \
                 under a new bucket name, see docs/scaling.md)"
            ),
        )),
        _ => Ok(count),
    }
}

impl NatsStore {
    /// Every shard of the mesh, this one (shard 0) first, on this connection: the others'
    /// buckets are found or made, and each must state the same count.
    pub(crate) async fn open_shards(&self) -> Result<Vec<NatsStore>> {
        let inner = &self.inner;
        let count = inner.shard.count;
        let mut shards = vec![self.clone()];
        for index in 1..count {
            let shard = Shard { index, count };
            let (kv_stream, described) =
                ensure_bucket(&inner.js, &inner.options, shard, &inner.violations).await?;
            let bucket = shard_bucket(&inner.options.bucket, index);
            if described != Some(count) {
                return Err(Error::new(
                    ErrorKind::Setup,
                    format!(
                        "KV bucket {bucket:?} is not shard {index} of {count}: its description \
                         states another shard count (a bucket left from another layout)"
                    ),
                ));
            }
            shards.push(NatsStore {
                inner: Arc::new(Inner {
                    client: inner.client.clone(),
                    js: inner.js.clone(),
                    kv_stream,
                    kv_prefix: format!("$KV.{bucket}."),
                    shard,
                    subject_prefix: inner.subject_prefix.clone(),
                    reconnects: inner.reconnects.clone(),
                    closed: watch::channel(false).0,
                    urls: inner.urls.clone(),
                    lag: WatchLag::default(),
                    violations: inner.violations.clone(),
                    awaited: watch::channel(0).0,
                    options: inner.options.clone(),
                }),
            });
        }
        Ok(shards)
    }
}

/// The error of a connect told not to create what it found missing.
fn absent(what: &str, name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "no prism-mesh here: {what} {name:?} does not exist (the first peer that registers \
             creates it; check the url, the bucket and the stream names)"
        ),
    )
}

/// The error of a connect that found the bucket or stream missing and may not create it.
fn missing_and_denied(what: &str, name: &str, text: &str) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "{what} {name:?} does not exist and this user may not create it ({text}); \
             create it once as a user who may (any prism-mesh client or `prism ls` run as that \
             user creates it)"
        ),
    )
}

/// True when the text of `error` or of any of its causes contains one of `words`
/// (lowercase).
pub(super) fn mentions_any(error: &dyn std::error::Error, words: &[&str]) -> bool {
    let mut text = error.to_string().to_lowercase();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push(' ');
        text.push_str(&cause.to_string().to_lowercase());
        source = cause.source();
    }
    words.iter().any(|w| text.contains(w))
}

/// The kind of a failed JetStream setup request: `Timeout` while JetStream cannot answer yet
/// (retried until the connect deadline), `Setup` for what waiting does not fix.
pub(super) fn setup_kind(transient: bool) -> ErrorKind {
    if transient {
        ErrorKind::Timeout
    } else {
        ErrorKind::Setup
    }
}

/// An error JetStream gives while it cannot answer yet (starting, electing a leader,
/// placing replicas on a forming cluster), as opposed to one that waiting does not fix.
pub(super) fn transient(error: &dyn std::error::Error) -> bool {
    mentions_any(
        error,
        &[
            "timed out",
            "temporarily unavailable",
            "no responders",
            "does not exist",
            "insufficient resources",
            "no suitable peers",
            "not current",
            "broken pipe",
        ],
    )
}

/// Opens the event stream, or creates it when it does not exist (looked up first, as the
/// bucket is).
pub(super) async fn ensure_event_stream(
    js: &jetstream::Context,
    options: &NatsOptions,
    violations: &broadcast::Sender<String>,
) -> Result<()> {
    let config = stream::Config {
        name: options.event_stream.clone(),
        description: Some("prism-mesh lifecycle events (audit trail)".to_string()),
        subjects: vec![format!("{}.>", options.subject_prefix)],
        max_age: options.event_max_age,
        max_bytes: options.event_max_bytes,
        max_messages: options.event_max_messages,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120).min(options.event_max_age),
        storage: storage_type(options.storage),
        num_replicas: options.replicas,
        ..Default::default()
    };
    if !options.create {
        return match js.get_stream(&options.event_stream).await {
            Ok(_) => Ok(()),
            Err(e) if is_stream_not_found(&e) => Err(absent("event stream", &options.event_stream)),
            Err(e) => Err(Error::with_source(
                setup_kind(transient(&e)),
                format!("cannot look up event stream {:?}", options.event_stream),
                e,
            )),
        };
    }
    let create = format!("$JS.API.STREAM.CREATE.{}", options.event_stream);
    // `get_or_create_stream` looks the stream up before it asks to create it.
    match unless_denied(violations, &create, js.get_or_create_stream(config)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(create_error)) => {
            let kind = setup_kind(transient(&create_error));
            Err(Error::with_source(
                kind,
                format!(
                    "cannot create or open event stream {:?} on {}.>",
                    options.event_stream, options.subject_prefix
                ),
                create_error,
            ))
        }
        Err(text) => Err(missing_and_denied(
            "event stream",
            &options.event_stream,
            &text,
        )),
    }
}

/// Backoff for start-up: retries what may be transient (a server still starting, a leader
/// election) until a deadline; errors that waiting cannot fix end it at once.
struct Retry {
    deadline: Instant,
    total: Duration,
    delay: Duration,
    attempts: u32,
}

impl Retry {
    fn within(total: Duration) -> Retry {
        Retry {
            deadline: Instant::now() + total,
            total,
            delay: Duration::from_millis(100),
            attempts: 0,
        }
    }

    /// Sleeps before the next attempt after `error`, or returns the error when it is lasting
    /// or the deadline has come, saying what could not be reached and for how long it was tried.
    async fn wait_or_give_up(&mut self, error: Error, what: &str) -> Result<()> {
        self.attempts += 1;
        let lasting = matches!(
            error.kind(),
            ErrorKind::PermissionDenied
                | ErrorKind::InvalidConfig
                | ErrorKind::Setup
                | ErrorKind::NotFound
        );
        let now = Instant::now();
        if lasting {
            return Err(error);
        }
        if now >= self.deadline {
            let kind = error.kind();
            return Err(Error::with_source(
                kind,
                format!(
                    "{what} not reachable within the connect deadline of {} ({} attempts)",
                    humantime::format_duration(self.total),
                    self.attempts
                ),
                error,
            ));
        }
        // Jitter: every process of a restarted fleet must not retry in step.
        let delay = rand::random_range(self.delay / 2..=self.delay);
        let delay = delay.min(self.deadline - now);
        info!(error = %error, retry_in = ?delay, attempt = self.attempts, "{what} not reachable yet; retrying");
        tokio::time::sleep(delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        Ok(())
    }
}

fn storage_type(kind: StorageKind) -> stream::StorageType {
    match kind {
        StorageKind::File => stream::StorageType::File,
        StorageKind::Memory => stream::StorageType::Memory,
    }
}

/// `url` without any `userinfo@` before its host.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_string(),
    }
}

/// The bucket or event stream could not be made again: most often a user without the
/// right to create streams (only someone allowed to, or `connect`, can bring them back).
pub(super) fn recreate_refused(e: Error) -> Error {
    let kind = if e.kind() == ErrorKind::PermissionDenied {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Setup
    };
    Error::with_source(
        kind,
        "the bucket's stream is gone and could not be made again \
         (a user allowed to create JetStream streams must connect, or an operator recreate it)",
        e,
    )
}
