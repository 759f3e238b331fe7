//! The NATS JetStream backend: instance records in a KV bucket with per-key TTLs, read back
//! as raw stream messages (the KV API hides the headers that tell expiry from deletion);
//! lifecycle events in their own stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use async_nats::header::HeaderName;
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use super::{KvChange, RemovalCause, WatchItem, WriteCondition};
use crate::config::{NatsOptions, StorageKind, UrlCredentials};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{
    event_subject, headers as h, instance_events_filter, ttl_header_value, EventName, EventRecord,
    InstanceRecord,
};

/// A connected NATS backend. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct NatsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    kv_stream: String,
    /// `$KV.<bucket>.`
    kv_prefix: String,
    subject_prefix: String,
    reconnects: watch::Receiver<u64>,
    closed: watch::Sender<bool>,
    urls: String,
    lag: WatchLag,
    /// Permission violations the server reported on this connection.
    violations: broadcast::Sender<String>,
    /// The highest revision this mesh wrote and waited in vain to see (see `watch_stalled`).
    awaited: watch::Sender<u64>,
    /// To make the bucket and the event stream again if they vanish.
    options: NatsOptions,
}

/// How far behind the server the live watch is, as of its last message.
#[derive(Debug, Default)]
struct WatchLag {
    pending: AtomicU64,
    delay_micros: AtomicU64,
    /// The last revision the live watch delivered, and when (unix microseconds).
    delivered: AtomicU64,
    delivered_at_micros: AtomicU64,
}

impl WatchLag {
    fn record(&self, position: &Position) {
        let now = unix_micros();
        let stored = u64::try_from(position.stored_at_nanos / 1000).unwrap_or(0);
        self.pending.store(position.pending, Ordering::Relaxed);
        self.delay_micros
            .store(now.saturating_sub(stored), Ordering::Relaxed);
        self.delivered
            .fetch_max(position.sequence, Ordering::Relaxed);
        self.delivered_at_micros.store(now, Ordering::Relaxed);
    }

    /// True when the live watch has not delivered `revision` and has been silent for
    /// `quiet`: its consumer is probably gone (its server lost, or no longer leading).
    fn stalled_before(&self, revision: u64, quiet: Duration) -> bool {
        let silent_for =
            unix_micros().saturating_sub(self.delivered_at_micros.load(Ordering::Relaxed));
        self.delivered.load(Ordering::Relaxed) < revision
            && Duration::from_micros(silent_for) >= quiet
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl NatsStore {
    /// Connects, then creates (or checks) the bucket and the event stream.
    #[tracing::instrument(name = "nats.connect", skip_all, fields(urls = %options.redacted_urls()))]
    pub(crate) async fn connect(options: &NatsOptions) -> Result<NatsStore> {
        options.validate()?;
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
        if let Some(path) = &options.nkey_seed_file {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig,
                    format!("cannot read the nkey_seed_file {}", path.display()),
                    e,
                )
            })?;
            connect = connect.nkey(seed.trim().to_string());
        }
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let Some((user, password)) = &options.user_password {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(seed) = &options.nkey_seed {
            connect = connect.nkey(seed.clone());
        }
        if let Some(path) = &options.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig,
                    format!("cannot read credentials file {}", path.display()),
                    e,
                )
            })?;
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

        let kv_stream = loop {
            match ensure_bucket(&js, options, &violations).await {
                Ok(name) => break name,
                Err(e) => retry.wait_or_give_up(e, "JetStream (KV bucket)").await?,
            }
        };
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

    #[tracing::instrument(name = "nats.kv_put", skip_all, fields(key = key, condition = ?condition))]
    pub(crate) async fn put(
        &self,
        key: &str,
        record: &InstanceRecord,
        ttl: Duration,
        condition: WriteCondition,
        wait: Option<Duration>,
    ) -> Result<u64> {
        let payload = Bytes::from(record.encode()?);
        let headers = |expected: Option<u64>| {
            let mut headers = HeaderMap::new();
            // Only what the server acts on: the record says the rest, and every header
            // costs the writer, the server and every watching peer per write.
            headers.insert(name(h::NATS_TTL), ttl_header_value(ttl));
            if let Some(expected) = expected {
                headers.insert(
                    name(h::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE),
                    expected.to_string(),
                );
            }
            headers
        };
        let expected = match condition {
            WriteCondition::Any => None,
            WriteCondition::Absent => Some(0),
            WriteCondition::Revision(revision) => Some(revision),
        };
        let subject = || format!("{}{key}", self.inner.kv_prefix);
        match self
            .publish(subject(), headers(expected), payload.clone(), wait)
            .await
        {
            Err(e) if e.kind() == ErrorKind::Conflict && condition == WriteCondition::Absent => {
                // Like KV `create`: a key whose last message is a tombstone or an expiry
                // marker holds nothing, so creating it is allowed at that revision.
                // The revision to create at: that of the key's last message if it is a
                // removal, 0 if the key has no message any more (its tombstone or marker
                // expired since the conflict); none if it holds a value.
                let revision = match self.last_write(key).await? {
                    None => Some(0),
                    Some((revision, false)) => Some(revision),
                    Some((_, true)) => None,
                };
                match revision {
                    Some(revision) => {
                        self.publish(subject(), headers(Some(revision)), payload, wait)
                            .await
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// The revision of `key`'s last message and whether it holds a value (a put), read
    /// from the stream; `None` when the key has no message at all.
    pub(crate) async fn last_write(&self, key: &str) -> Result<Option<(u64, bool)>> {
        let subject = format!("{}{key}", self.inner.kv_prefix);
        let stream = self
            .inner
            .js
            .get_stream(&self.inner.kv_stream)
            .await
            .map_err(|e| {
                Error::with_source(ErrorKind::Transport, "cannot look up the bucket stream", e)
            })?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(last) => {
                let removed = last.headers.get(name(h::NATS_MARKER_REASON)).is_some()
                    || last.headers.get(name(h::KV_OPERATION)).is_some();
                Ok(Some((last.sequence, !removed)))
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(Error::with_source(
                ErrorKind::Transport,
                format!("cannot read the last message of {subject}"),
                e,
            )),
        }
    }

    #[tracing::instrument(name = "nats.kv_delete", skip_all, fields(key = key))]
    pub(crate) async fn delete(
        &self,
        key: &str,
        reason: Option<&str>,
        tombstone_ttl: Duration,
    ) -> Result<u64> {
        let mut headers = HeaderMap::new();
        headers.insert(name(h::KV_OPERATION), "DEL");
        headers.insert(name(h::NATS_TTL), ttl_header_value(tombstone_ttl));
        if let Some(reason) = reason {
            headers.insert(name(h::REASON), header_safe(reason));
        }
        let subject = format!("{}{key}", self.inner.kv_prefix);
        self.publish(subject, headers, Bytes::new(), None).await
    }

    #[tracing::instrument(name = "nats.publish_event", skip_all, fields(event = record.event.as_str(), msg_id = msg_id))]
    pub(crate) async fn publish_event(&self, record: &EventRecord, msg_id: &str) -> Result<()> {
        let mut headers = event_headers(record);
        headers.insert(name(h::NATS_MSG_ID), msg_id);
        self.publish(
            self.event_subject(record),
            headers,
            Bytes::from(record.encode()?),
            None,
        )
        .await
        .map(|_| ())
    }

    fn event_subject(&self, record: &EventRecord) -> String {
        let instance = &record.instance;
        event_subject(
            &self.inner.subject_prefix,
            &instance.service,
            &instance.id,
            record.event,
        )
    }

    /// Records the expiry of the record at bucket `revision` as an `expired` event, once
    /// whoever else records it. The event is appended only if the instance's last event is
    /// the one this peer read (`Nats-Expected-Last-Subject-Sequence` over all the instance's
    /// subjects), so of peers racing, one stores it and the others then read it back; no
    /// `Nats-Msg-Id`, which another client could claim first. Returns whether this call
    /// stored it.
    #[tracing::instrument(name = "nats.record_expiry", skip_all, fields(revision))]
    pub(crate) async fn record_expiry(&self, record: &EventRecord, revision: u64) -> Result<bool> {
        let instance = &record.instance;
        let filter =
            instance_events_filter(&self.inner.subject_prefix, &instance.service, &instance.id);
        let body = Bytes::from(record.encode()?);
        let mut headers = event_headers(record);
        headers.insert(name(h::REVISION), revision.to_string());
        headers.insert(
            name(h::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT),
            filter.as_str(),
        );
        // Each lost race means another event of the instance was stored meanwhile; a few
        // are plenty (its owner is gone).
        for _ in 0..RECORD_EXPIRY_ATTEMPTS {
            let last = self.last_event(&filter).await?;
            let expected = match &last {
                Some(last) if last.recorded(revision) => return Ok(false),
                Some(last) => last.sequence,
                None => 0,
            };
            let mut headers = headers.clone();
            headers.insert(
                name(h::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE),
                expected.to_string(),
            );
            match self
                .publish(self.event_subject(record), headers, body.clone(), None)
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("{filter}: other events kept arriving; expiry not recorded"),
        ))
    }

    /// The last event stored on `filter`, if any.
    async fn last_event(&self, filter: &str) -> Result<Option<LastEvent>> {
        let stream = format!("$JS.API.STREAM.MSG.GET.{}", self.inner.options.event_stream);
        let read = async {
            let stream = self
                .inner
                .js
                .get_stream_no_info(&self.inner.options.event_stream)
                .await
                .map_err(|e| {
                    Error::with_source(ErrorKind::Transport, "cannot look up the event stream", e)
                })?;
            match stream.get_last_raw_message_by_subject(filter).await {
                Ok(last) => Ok(Some(LastEvent {
                    sequence: last.sequence,
                    expired: last.subject.ends_with(".expired"),
                    revision: last
                        .headers
                        .get(name(h::REVISION))
                        .and_then(|v| v.as_str().parse().ok()),
                })),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(Error::with_source(
                    ErrorKind::Transport,
                    format!("cannot read the last event on {filter}"),
                    e,
                )),
            }
        };
        unless_denied(&self.inner.violations, &stream, read)
            .await
            .unwrap_or_else(|text| {
                Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("the server refused to read {filter}: {text}"),
                ))
            })
    }

    /// Publishes and waits for the stream's acknowledgement: at most `wait` if given, else
    /// the connection's request timeout.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<u64> {
        // async-nats takes the subject by value; it is kept as bytes for the error paths.
        let subject = async_nats::Subject::from(subject);
        // Subscribed before the publish: the server may refuse it at once.
        let acknowledged = async {
            let ack = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| publish_error(&subject, e))?;
            let ack = std::future::IntoFuture::into_future(ack);
            match wait {
                Some(wait) => tokio::time::timeout(wait, ack).await.map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "publish to {subject}: no acknowledgement within {}",
                            humantime::format_duration(wait)
                        ),
                    )
                })?,
                None => ack.await,
            }
            .map_err(|e| publish_error(&subject, e))
        };
        match unless_denied(&self.inner.violations, subject.as_str(), acknowledged).await {
            Ok(ack) => Ok(ack?.sequence),
            Err(text) => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("the server refused the write to {subject}: {text}"),
            )),
        }
    }

    pub(crate) fn watch(&self) -> mpsc::UnboundedReceiver<WatchItem> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.inner.clone();
        let span = tracing::info_span!("nats.watch", stream = %inner.kv_stream);
        tokio::spawn(watch_loop(inner, tx).instrument(span));
        rx
    }

    /// The watch's delay behind the server and the messages the server still holds for it.
    pub(crate) fn watch_lag(&self) -> (Duration, u64) {
        let lag = &self.inner.lag;
        (
            Duration::from_micros(lag.delay_micros.load(Ordering::Relaxed)),
            lag.pending.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.clone()
    }

    /// This mesh wrote `revision` and its own watch has not shown it yet. If the watch has
    /// also been silent meanwhile, its consumer was likely lost with a stream leader: the
    /// watch resumes at once instead of waiting for the consumer's missed heartbeats.
    pub(crate) fn watch_stalled(&self, revision: u64) {
        self.inner.awaited.send_if_modified(|awaited| {
            let raised = revision > *awaited;
            *awaited = (*awaited).max(revision);
            raised
        });
    }

    /// Reads the event stream from `since` (or its start) to its current end.
    #[tracing::instrument(name = "nats.event_history", skip_all)]
    pub(crate) async fn event_history(
        &self,
        event_stream: &str,
        since: Option<SystemTime>,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(Vec<EventRecord>, u64)> {
        let stream = self.inner.js.get_stream(event_stream).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Setup,
                format!("cannot open event stream {event_stream}"),
                e,
            )
        })?;
        let deliver_policy = match since {
            Some(time) => consumer::DeliverPolicy::ByStartTime {
                start_time: time.into(),
            },
            None => consumer::DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::with_source(ErrorKind::Transport, "cannot create replay consumer", e)
            })?;
        let mut pending = consumer.cached_info().num_pending;
        let total = pending;
        let mut records = Vec::with_capacity(usize::try_from(pending).unwrap_or(0));
        let mut malformed = 0;
        if pending > 0 {
            let mut messages = consumer.messages().await.map_err(|e| {
                Error::with_source(ErrorKind::Transport, "cannot start replay consumer", e)
            })?;
            while pending > 0 {
                let Some(message) = messages.next().await else {
                    break;
                };
                let message = message.map_err(|e| {
                    Error::with_source(ErrorKind::Transport, "replay consumer failed", e)
                })?;
                pending = message.info().map(|i| i.pending).unwrap_or(0);
                let done = total.saturating_sub(pending);
                if done % PROGRESS_EVERY == 0 || pending == 0 {
                    progress(done, total);
                }
                match EventRecord::decode(&message.payload) {
                    Ok(record) => records.push(record),
                    Err(e) => {
                        malformed += 1;
                        debug!(subject = %message.subject, error = %e, "skipping malformed event");
                    }
                }
            }
        }
        Ok((records, malformed))
    }

    pub(crate) async fn close(&self) {
        self.inner.closed.send_replace(true);
        // Bounded: with the server unreachable a flush would wait for a reconnect forever.
        match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.inner.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, urls = %self.inner.urls, "flush on close failed"),
            Err(_) => {
                debug!(urls = %self.inner.urls, "flush on close timed out (server unreachable)")
            }
        }
        // Close the connection itself, so nothing of this mesh reconnects or logs on later.
        match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.inner.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, urls = %self.inner.urls, "drain on close failed"),
            Err(_) => debug!(urls = %self.inner.urls, "drain on close timed out"),
        }
    }
}

/// Opens the bucket, or creates it when it does not exist; checks that it supports per-key
/// TTLs. Looked up first: a user who may not create streams (least privilege) must not wait
/// out a refused create on every connect.
async fn ensure_bucket(
    js: &jetstream::Context,
    options: &NatsOptions,
    violations: &broadcast::Sender<String>,
) -> Result<String> {
    let stream_name = format!("KV_{}", options.bucket);
    let read_error = |e: &dyn std::error::Error| setup_kind(transient(e));
    let mut stream = match js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        Err(e) if is_stream_not_found(&e) => {
            let config = kv::Config {
                bucket: options.bucket.clone(),
                description: "prism-mesh: one key per live service instance".to_string(),
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
                .map_err(|text| missing_and_denied("KV bucket", &options.bucket, &text))?;
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
                        options.bucket
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
                    options.bucket
                ),
                e,
            ))
        }
    };
    let info = stream.info().await.map_err(|e| {
        let kind = setup_kind(transient(&e));
        Error::with_source(kind, format!("cannot read stream {stream_name}"), e)
    })?;
    if !info.config.allow_message_ttl || info.config.subject_delete_marker_ttl.is_none() {
        return Err(Error::new(
            ErrorKind::Setup,
            format!(
                "KV bucket {:?} exists without per-message TTL (limit markers); \
                 recreate it or choose another bucket name",
                options.bucket
            ),
        ));
    }
    Ok(stream_name)
}

/// Runs a JetStream request, or returns the server's text as soon as it refuses the
/// request's `subject` (a refused request gets no reply and would wait out its timeout).
async fn unless_denied<T>(
    violations: &broadcast::Sender<String>,
    subject: &str,
    request: impl std::future::Future<Output = T>,
) -> std::result::Result<T, String> {
    let mut refused = violations.subscribe();
    let denied = async {
        loop {
            match refused.recv().await {
                Ok(text) if text.contains(subject) => return text,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        result = request => Ok(result),
        text = denied => Err(text),
    }
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
fn mentions_any(error: &dyn std::error::Error, words: &[&str]) -> bool {
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
fn setup_kind(transient: bool) -> ErrorKind {
    if transient {
        ErrorKind::Timeout
    } else {
        ErrorKind::Setup
    }
}

/// An error JetStream gives while it cannot answer yet (starting, electing a leader,
/// placing replicas on a forming cluster), as opposed to one that waiting does not fix.
fn transient(error: &dyn std::error::Error) -> bool {
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
async fn ensure_event_stream(
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
            ErrorKind::PermissionDenied | ErrorKind::InvalidConfig | ErrorKind::Setup
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

fn publish_error(subject: &str, e: async_nats::jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let (kind, what) = match e.kind() {
        K::WrongLastSequence => (ErrorKind::Conflict, "failed"),
        K::TimedOut => (ErrorKind::Timeout, "got no acknowledgement in time"),
        // 503 "no responders": nobody stores this subject right now. During a leader
        // election or while JetStream starts that is transient, so it is not a setup error.
        K::StreamNotFound => (
            ErrorKind::Transport,
            "found no JetStream stream answering (a leader election, JetStream still \
             starting, or the stream is gone)",
        ),
        _ if e.to_string().to_lowercase().contains("permission") => {
            (ErrorKind::PermissionDenied, "failed")
        }
        _ => (ErrorKind::Transport, "failed"),
    };
    Error::with_source(kind, format!("publish to {subject} {what}"), e)
}

/// Header values cannot hold line breaks.
pub(crate) fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

/// Snapshot (last message per key) then live changes. After an interruption (a reconnect,
/// a consumer lost in a leader election) the watch resumes from the last revision it
/// delivered while the log still holds every removal since (see
/// `WatchedLog::resume_point`), and takes a fresh snapshot otherwise.
async fn watch_loop(inner: Arc<Inner>, tx: mpsc::UnboundedSender<WatchItem>) {
    let mut reconnects = inner.reconnects.clone();
    let mut awaited = inner.awaited.subscribe();
    let mut closed = inner.closed.subscribe();
    let mut backoff = Duration::from_millis(100);
    let mut log = WatchedLog::default();
    loop {
        reconnects.borrow_and_update();
        let outcome = tokio::select! {
            outcome = watch_once(&inner, &tx, &mut log) => outcome,
            _ = reconnects.changed() => Ok(WatchEnd::Reconnected),
            revision = stalled(&inner, &mut awaited) => Ok(WatchEnd::Stalled(revision)),
            _ = crate::util::until_true(&mut closed) => return,
            // The view is gone (its mesh dropped without `shutdown`): stop now, not at the
            // next bucket message, which may never come; this task holds the connection.
            () = tx.closed() => return,
        };
        match outcome {
            Ok(WatchEnd::ReceiverGone) => return,
            Ok(WatchEnd::Reconnected) => {
                info!("reconnected: resuming the bucket watch");
                backoff = Duration::from_millis(100);
            }
            Ok(WatchEnd::Stalled(revision)) => {
                info!(
                    revision,
                    "the bucket watch fell silent without showing this mesh's write; resuming it"
                );
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "bucket watch interrupted; resuming or resynchronising");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // Back, or this mesh wrote and waits to see it: try now, not after the
                    // rest of the backoff.
                    _ = reconnects.changed() => {}
                    _ = stalled(&inner, &mut awaited) => {}
                    _ = crate::util::until_true(&mut closed) => return,
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What one peer's watch knows about the log it follows, across its restarts.
#[derive(Default)]
struct WatchedLog {
    /// When the bucket's stream was created (unix nanoseconds).
    created: Option<i128>,
    /// The highest stream sequence delivered: a stream whose last one is lower is another
    /// log, even with the same creation time (a clustered memory stream after a full
    /// restart, a restored backup).
    delivered: u64,
    /// When the server stored the message at `delivered` (unix nanoseconds).
    delivered_at: i128,
    /// "Gone" was already logged as a warning in this outage.
    warned_gone: bool,
}

impl WatchedLog {
    /// The sequence to resume from after an interruption, if nothing the view must see can
    /// have left the log since: every removal after `delivered` was stored after
    /// `delivered_at`, and stays in the log at least the bucket's marker TTL (a tombstone
    /// or an expired put is followed by the server's marker, which lives that long). Past
    /// that, or on another log, only a snapshot is safe.
    fn resume_point(&self, stream: &stream::Info) -> Option<u64> {
        if self.delivered == 0 || stream.state.last_sequence < self.delivered {
            return None;
        }
        let marker_ttl = stream.config.subject_delete_marker_ttl?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let since = Duration::from_nanos(u64::try_from(now - self.delivered_at).unwrap_or(0));
        // Margin for clocks and for the time the consumer takes to start.
        (since + RESUME_MARGIN < marker_ttl).then_some(self.delivered + 1)
    }

    fn delivered(&mut self, position: &Position) {
        if position.sequence > self.delivered {
            self.delivered = position.sequence;
            self.delivered_at = position.stored_at_nanos;
        }
    }
}

/// How much sooner than the marker TTL a resumed watch must start (see
/// `WatchedLog::resume_point`).
const RESUME_MARGIN: Duration = Duration::from_secs(5);

enum WatchEnd {
    ReceiverGone,
    Reconnected,
    /// The watch showed nothing, not even a write of this mesh's, for `STALL_QUIET`.
    Stalled(u64),
}

/// How long a watch must have been silent, with a write of its own mesh acknowledged and
/// unseen, before it counts as stalled. A healthy watch shows such a write within a
/// millisecond or so, and a busy one is not silent; a false alarm costs one resume.
const STALL_QUIET: Duration = Duration::from_millis(50);

/// Resolves with the revision awaited once the live watch stalls before showing it.
async fn stalled(inner: &Inner, awaited: &mut watch::Receiver<u64>) -> u64 {
    loop {
        if awaited.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let revision = *awaited.borrow_and_update();
        // Watch the watch until it shows the write, or stays silent long enough.
        while inner.lag.delivered.load(Ordering::Relaxed) < revision {
            if inner.lag.stalled_before(revision, STALL_QUIET) {
                return revision;
            }
            tokio::time::sleep(STALL_QUIET / 5).await;
        }
    }
}

async fn watch_once(
    inner: &Inner,
    tx: &mpsc::UnboundedSender<WatchItem>,
    log: &mut WatchedLog,
) -> Result<WatchEnd> {
    let cannot_open = |e: jetstream::context::GetStreamError| {
        let kind = setup_kind(transient(&e));
        Error::with_source(kind, format!("cannot open stream {}", inner.kv_stream), e)
    };
    let stream = match inner.js.get_stream(&inner.kv_stream).await {
        Ok(stream) => stream,
        Err(e) if is_stream_not_found(&e) => {
            // Gone: a memory-storage bucket after a server restart. Make both again, as
            // `connect` does, so owners can re-assert into them.
            if !std::mem::replace(&mut log.warned_gone, true) {
                warn!(stream = %inner.kv_stream, "the bucket's stream is gone; creating it again");
            }
            // Events first: if they cannot be made, neither is the bucket, so every peer
            // keeps finding it gone and tries both again (without events, every
            // registration is rolled back).
            ensure_event_stream(&inner.js, &inner.options, &inner.violations)
                .await
                .map_err(recreate_refused)?;
            ensure_bucket(&inner.js, &inner.options, &inner.violations)
                .await
                .map_err(recreate_refused)?;
            inner
                .js
                .get_stream(&inner.kv_stream)
                .await
                .map_err(cannot_open)?
        }
        Err(e) => return Err(cannot_open(e)),
    };
    log.warned_gone = false;
    let info = stream.cached_info();
    let created = info.created.unix_timestamp_nanos();
    let replaced = log.created.is_some_and(|previous| previous != created)
        || info.state.last_sequence < log.delivered;
    log.created = Some(created);
    if replaced {
        info!(stream = %inner.kv_stream, "the bucket's stream was created anew; its revisions restart");
        log.delivered = 0;
        // The stall check compares with revisions of this log, which restart too.
        inner.lag.delivered.store(0, Ordering::Relaxed);
        if tx.send(WatchItem::LogReplaced).is_err() {
            return Ok(WatchEnd::ReceiverGone);
        }
    }
    let resume = log.resume_point(info);
    // With history 1 (the buckets prism-mesh creates) every stored message is its key's
    // last, so delivering all of them is the same snapshot; the server then reads the log in
    // order instead of looking up each key's last message first, which costs it a third
    // more CPU on a 100k-key cold start.
    let deliver_policy = match resume {
        Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        None if info.config.max_messages_per_subject == 1 => consumer::DeliverPolicy::All,
        None => consumer::DeliverPolicy::LastPerSubject,
    };
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: inner.client.new_inbox(),
            description: Some("prism-mesh peer view".to_string()),
            filter_subject: format!("{}>", inner.kv_prefix),
            deliver_policy,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Transport, "cannot create watch consumer", e))?;
    let initially_pending = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::with_source(ErrorKind::Transport, "cannot start watch consumer", e))?;
    let mut near_timer = tokio::time::interval(Duration::from_secs(1));
    near_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    if let Some(start) = resume {
        debug!(start, "bucket watch resumed without a snapshot");
        if tx.send(WatchItem::Resumed).is_err() {
            return Ok(WatchEnd::ReceiverGone);
        }
        return follow(inner, tx, log, &mut messages, &mut near_timer).await;
    }
    if tx.send(WatchItem::SnapshotBegin).is_err() {
        return Ok(WatchEnd::ReceiverGone);
    }
    // Stream the snapshot in parts: the view decodes one part while the next arrives.
    let mut part = Vec::with_capacity(SNAPSHOT_PART);
    let mut keys = 0usize;
    if initially_pending > 0 {
        while let Some(message) = next_message(&mut messages, &mut near_timer).await {
            let message = message.map_err(|e| {
                Error::with_source(ErrorKind::Transport, "watch consumer failed", e)
            })?;
            let (change, position) = to_change(&inner.kv_prefix, &message)?;
            log.delivered(&position);
            let pending = position.pending;
            part.extend(change);
            if part.len() >= SNAPSHOT_PART {
                keys += part.len();
                let full = std::mem::replace(&mut part, Vec::with_capacity(SNAPSHOT_PART));
                if tx.send(WatchItem::SnapshotPart(full)).is_err() {
                    return Ok(WatchEnd::ReceiverGone);
                }
            }
            if pending == 0 {
                break;
            }
        }
    }
    keys += part.len();
    debug!(keys, "bucket snapshot read");
    if tx.send(WatchItem::SnapshotPart(part)).is_err() || tx.send(WatchItem::SnapshotEnd).is_err() {
        return Ok(WatchEnd::ReceiverGone);
    }
    follow(inner, tx, log, &mut messages, &mut near_timer).await
}

/// Hands the consumer's changes to the view until it fails or the view is gone.
async fn follow(
    inner: &Inner,
    tx: &mpsc::UnboundedSender<WatchItem>,
    log: &mut WatchedLog,
    messages: &mut consumer::push::Ordered,
    near_timer: &mut tokio::time::Interval,
) -> Result<WatchEnd> {
    while let Some(message) = next_message(messages, near_timer).await {
        let message = message
            .map_err(|e| Error::with_source(ErrorKind::Transport, "watch consumer failed", e))?;
        let (change, position) = to_change(&inner.kv_prefix, &message)?;
        log.delivered(&position);
        inner.lag.record(&position);
        let rolled_up = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name(h::NATS_ROLLUP)))
            .is_some_and(|value| value.as_str().eq_ignore_ascii_case("all"));
        if rolled_up {
            warn!(
                subject = %message.subject,
                revision = position.sequence,
                "a write rolled up the bucket: every other key lost its value"
            );
            if tx
                .send(WatchItem::RolledUp {
                    revision: position.sequence,
                })
                .is_err()
            {
                return Ok(WatchEnd::ReceiverGone);
            }
        }
        if let Some(change) = change {
            if tx.send(WatchItem::Change(change)).is_err() {
                return Ok(WatchEnd::ReceiverGone);
            }
        }
    }
    Err(Error::new(ErrorKind::Transport, "watch consumer ended"))
}

/// The consumer's next message.
///
/// The ordered consumer arms a fresh 10 s heartbeat timer for every message it yields, and
/// tokio wakes its timer driver (an eventfd write) to register a timer unless a nearer one
/// is pending. `near_timer` ticks every second, so one always is: on a 100k-key cold start
/// this took the watch task from about 196 to 114 ms of CPU (perf, 3 rounds). It is polled
/// first so that it is re-armed even while messages never stop coming.
async fn next_message(
    messages: &mut consumer::push::Ordered,
    near_timer: &mut tokio::time::Interval,
) -> Option<std::result::Result<jetstream::Message, consumer::push::OrderedError>> {
    loop {
        tokio::select! {
            biased;
            _ = near_timer.tick() => {}
            message = messages.next() => return message,
        }
    }
}

/// Longest wait for outgoing messages to leave when a mesh closes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Replays report progress every this many messages.
const PROGRESS_EVERY: u64 = 10_000;

/// Where a watch message sits: how many the server still holds for us, and when it was
/// stored (unix nanoseconds).
struct Position {
    pending: u64,
    stored_at_nanos: i128,
    /// The message's stream sequence (its revision).
    sequence: u64,
}

fn to_change(prefix: &str, message: &jetstream::Message) -> Result<(Option<KvChange>, Position)> {
    let info = message.info().map_err(|e| {
        Error::new(
            ErrorKind::Transport,
            format!("message without JetStream info: {e}"),
        )
    })?;
    let position = Position {
        pending: info.pending,
        stored_at_nanos: info.published.unix_timestamp_nanos(),
        sequence: info.stream_sequence,
    };
    let Some(key) = message.subject.strip_prefix(prefix) else {
        return Ok((None, position));
    };
    let header = |wanted: &'static str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name(wanted)))
            .map(|value| value.as_str())
    };
    let written_at =
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(position.stored_at_nanos).unwrap_or(0));
    let change = bucket_change(key, header, &message.payload, position.sequence, written_at);
    Ok((Some(change), position))
}

/// What a message of the bucket says, from its key (the subject after the bucket's prefix),
/// its headers and its body: a removal, a put peers may apply, or a write they must refuse.
/// Anyone allowed to publish on the bucket's subjects controls every input.
pub(crate) fn bucket_change<'h>(
    key: &str,
    header: impl Fn(&'static str) -> Option<&'h str>,
    payload: &Bytes,
    revision: u64,
    written_at: SystemTime,
) -> KvChange {
    let key = key.to_string();
    let cause = removal_cause(
        header(h::NATS_MARKER_REASON),
        header(h::KV_OPERATION),
        || header(h::REASON).map(str::to_string),
    );
    match cause {
        Some(cause) => KvChange::Removed {
            key,
            revision,
            cause,
            at: written_at,
        },
        None => match crate::protocol::bounded_ttl(header(h::NATS_TTL)) {
            Ok(_) => KvChange::Put {
                key,
                value: payload.clone(),
                revision,
                written_at,
            },
            Err(why) => KvChange::Refused { key, revision, why },
        },
    }
}

/// What a bucket message's headers say it is: `None` for a put, else why the key stopped
/// holding a value. Any `Nats-Marker-Reason` is a server marker (`MaxAge` an expiry, anything
/// else a purge or removal); otherwise `KV-Operation: DEL`/`PURGE` (exact, case-sensitive)
/// are removals and every other value is a put. Nothing here can fail on hostile values.
pub(crate) fn removal_cause(
    marker_reason: Option<&str>,
    kv_operation: Option<&str>,
    reason: impl FnOnce() -> Option<String>,
) -> Option<RemovalCause> {
    if let Some(marker) = marker_reason {
        return Some(if marker == "MaxAge" {
            RemovalCause::Expired
        } else {
            RemovalCause::Purged
        });
    }
    match kv_operation {
        Some("DEL") => Some(RemovalCause::Deregistered { reason: reason() }),
        Some("PURGE") => Some(RemovalCause::Purged),
        _ => None,
    }
}

/// Changes per streamed snapshot part.
const SNAPSHOT_PART: usize = 1024;

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

/// The readable headers of an event (the event name is the subject's last token and the
/// version is in the body).
fn event_headers(record: &EventRecord) -> HeaderMap {
    let instance = &record.instance;
    let mut headers = HeaderMap::new();
    headers.insert(name(h::SERVICE), instance.service.as_str());
    headers.insert(name(h::INSTANCE), instance.id.to_string());
    headers.insert(name(h::STATUS), instance.status.as_str());
    headers.insert(name(h::ORIGIN), record.origin.as_str());
    if let Some(previous) = record.previous_status {
        headers.insert(name(h::PREVIOUS_STATUS), previous.as_str());
    }
    if let Some(reason) = &record.reason {
        headers.insert(name(h::REASON), header_safe(reason));
    }
    if record.event == EventName::Expired && record.reason.is_none() {
        headers.insert(name(h::REASON), "ttl");
    }
    headers
}

/// How often [`NatsStore::record_expiry`] reads and tries again after losing a race.
const RECORD_EXPIRY_ATTEMPTS: usize = 8;

/// An instance's last event, as far as recording an expiry needs it.
struct LastEvent {
    sequence: u64,
    expired: bool,
    /// The bucket revision an `expired` event names.
    revision: Option<u64>,
}

impl LastEvent {
    /// Whether this is the `expired` event of the record at bucket `revision`.
    fn recorded(&self, revision: u64) -> bool {
        self.expired && self.revision == Some(revision)
    }
}

/// A header name as the parser of received messages builds it. async-nats compares names by
/// representation: a `&str` always becomes a custom name, while received standard names
/// (`Nats-Msg-Id`, `Nats-Marker-Reason`, ...) parse to their standard form, and the two
/// never match. Parsing here makes lookups and inserts agree.
fn name(header: &'static str) -> HeaderName {
    HeaderName::from_static(header)
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The bucket or event stream could not be made again: most often a user without the
/// right to create streams (only someone allowed to, or `connect`, can bring them back).
fn recreate_refused(e: Error) -> Error {
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
