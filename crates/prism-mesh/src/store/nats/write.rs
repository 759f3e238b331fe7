//! Writes: puts and tombstones of keys, lifecycle events, and expiries recorded once
//! whoever records them; each waits for the stream's acknowledgement or the server's refusal.

use std::time::Duration;

use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{name, unless_denied, NatsStore};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::bucket::header_safe;
use crate::protocol::{
    event_subject, headers as h, instance_events_filter, ttl_header_value, EventName, EventRecord,
    InstanceRecord,
};
use crate::store::WriteCondition;

impl NatsStore {
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
    pub(crate) async fn publish_event(
        &self,
        record: &EventRecord,
        msg_id: &str,
        revision: u64,
    ) -> Result<()> {
        let mut headers = event_headers(record);
        headers.insert(name(h::NATS_MSG_ID), msg_id);
        headers.insert(name(h::REVISION), revision.to_string());
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

    /// Records a removal no owner announces (an expiry, or a delete from outside the mesh)
    /// at bucket `revision` as the record's event, once whoever else records it. The event
    /// is appended only if the instance's last event is the one this peer read
    /// (`Nats-Expected-Last-Subject-Sequence` over all the instance's subjects) and is not
    /// about a write at or after `revision` (every event names its revision): of peers
    /// racing, one stores it and the others then find it; an owner that wrote its key again
    /// after the removal is not followed by the removal. No `Nats-Msg-Id`, which another
    /// client could claim first. Transient failures (an election of the stream's leader)
    /// are retried as owners' events are. Returns whether this call stored it.
    #[tracing::instrument(name = "nats.record_removal", skip_all, fields(revision))]
    pub(crate) async fn record_removal(&self, record: &EventRecord, revision: u64) -> Result<bool> {
        let instance = &record.instance;
        let filter =
            instance_events_filter(&self.inner.subject_prefix, &instance.service, &instance.id);
        let own_subject = self.event_subject(record);
        let body = Bytes::from(record.encode()?);
        let mut headers = event_headers(record);
        headers.insert(name(h::REVISION), revision.to_string());
        headers.insert(
            name(h::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT),
            filter.as_str(),
        );
        let give_up = tokio::time::Instant::now() + RECORD_REMOVAL_PATIENCE;
        let mut delay = Duration::from_millis(100);
        let mut conflicts = 0;
        loop {
            let attempt = async {
                // Recorded already, by another peer (perhaps before the owner wrote again),
                // or a later expiry of the same id was: nothing to add.
                if let Some(last) = self.last_event(&own_subject).await? {
                    if last.revision.is_some_and(|recorded| recorded >= revision) {
                        return Ok(false);
                    }
                }
                // The instance's last event: if it is that expiry (stored since the check
                // above), stop; else the write must come right after it.
                let last = self.last_event(&filter).await?;
                if last
                    .as_ref()
                    .and_then(|last| last.revision)
                    .is_some_and(|recorded| recorded >= revision)
                {
                    return Ok(false);
                }
                let expected = last.map_or(0, |last| last.sequence);
                let mut headers = headers.clone();
                headers.insert(
                    name(h::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE),
                    expected.to_string(),
                );
                self.publish(self.event_subject(record), headers, body.clone(), None)
                    .await
                    .map(|_| true)
            };
            match attempt.await {
                Ok(stored) => return Ok(stored),
                // Another event of the instance came between the read and the write.
                Err(e)
                    if e.kind() == ErrorKind::Conflict && conflicts < RECORD_REMOVAL_CONFLICTS =>
                {
                    conflicts += 1;
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Transport)
                        && tokio::time::Instant::now() + delay < give_up =>
                {
                    tracing::debug!(error = %e, "recording an expiry failed; retrying");
                    tokio::time::sleep(rand::random_range(delay / 2..=delay)).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
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
    pub(super) async fn publish(
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
}

fn publish_error(subject: &str, e: async_nats::jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let (kind, what) = match e.kind() {
        K::WrongLastSequence => (ErrorKind::Conflict, "failed"),
        // A cluster refuses a conditional write racing another one in flight with its
        // own code (10164), which async-nats does not map: the same conflict.
        _ if e.to_string().to_lowercase().contains("wrong last sequence") => {
            (ErrorKind::Conflict, "failed")
        }
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

/// How often [`NatsStore::record_removal`] reads and tries again after losing a race.
const RECORD_REMOVAL_CONFLICTS: usize = 8;

/// How long [`NatsStore::record_removal`] retries transient failures: long enough to ride
/// out the election of a new leader of the event stream, as owners' events do.
const RECORD_REMOVAL_PATIENCE: Duration = Duration::from_secs(12);

/// An instance's last event, as far as recording an expiry needs it.
struct LastEvent {
    sequence: u64,
    /// The bucket revision an `expired` event names (only `expired` events carry one).
    revision: Option<u64>,
}
