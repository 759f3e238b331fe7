//! Reading the event stream: lifecycle events through an ordered consumer that the server
//! filters and starts where the query says, and checkpoint parts by direct message reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream::RawMessage};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tracing::warn;

use super::{name, NatsStore};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::headers as h;
use crate::protocol::{
    checkpoint_subject, event_subject, events_filter, CheckpointPart, EventRecord,
};
use crate::store::Locate;
use crate::store::{History, HistoryQuery, Start, StoredEvent};

/// JetStream's error code for "no message found".
const NO_MESSAGE_FOUND: u64 = 10037;

impl NatsStore {
    /// Events as `query` says, read as they are consumed.
    #[tracing::instrument(name = "nats.history", skip_all)]
    pub(crate) async fn history(&self, query: &HistoryQuery) -> Result<History> {
        let options = &self.inner.options;
        // Everything: no filter, which the server starts at once (a wildcard filter over
        // a long stream costs it a count of the matching messages); the checkpoints among
        // them are passed over here.
        let filter = if query.service_name().is_none() && query.instance_id().is_none() {
            String::new()
        } else {
            events_filter(
                &options.subject_prefix,
                query.service_name(),
                query.instance_id(),
            )
        };
        let checkpoints = checkpoint_subject(&options.subject_prefix);
        let deliver_policy = match query.start() {
            Start::First => consumer::DeliverPolicy::All,
            Start::Time(time) => consumer::DeliverPolicy::ByStartTime {
                start_time: time.into(),
            },
            Start::After(sequence) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
        };
        // A consumer needs no stream info: no lookup round trip before it.
        let stream = self
            .inner
            .js
            .get_stream_no_info(&options.event_stream)
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Setup,
                    format!("cannot open event stream {}", options.event_stream),
                    e,
                )
            })?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject: filter,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::with_source(ErrorKind::Transport, "cannot create a history consumer", e)
            })?;
        let skipped = Arc::new(AtomicU64::new(0));
        let follow = query.follows();
        let pending = consumer.cached_info().num_pending;
        if pending == 0 && !follow {
            return Ok(History::new(futures::stream::empty(), skipped));
        }
        let messages = consumer.messages().await.map_err(|e| {
            Error::with_source(ErrorKind::Transport, "cannot start the history consumer", e)
        })?;
        let until = query.until_time();
        let counted = skipped.clone();
        let prefix = options.subject_prefix.clone();
        let checkpoints = Arc::new(checkpoints);
        let events = futures::stream::unfold((messages, false), move |(mut messages, mut done)| {
            let counted = counted.clone();
            let prefix = prefix.clone();
            let checkpoints = checkpoints.clone();
            async move {
                loop {
                    if done {
                        return None;
                    }
                    let message = match messages.next().await? {
                        Ok(message) => message,
                        Err(e) => {
                            let error = Error::with_source(
                                ErrorKind::Transport,
                                "the history consumer failed",
                                e,
                            );
                            return Some((Err(error), (messages, true)));
                        }
                    };
                    let Ok(info) = message.info() else {
                        continue;
                    };
                    let stored_at = to_system_time(info.published.unix_timestamp_nanos());
                    if until.is_some_and(|until| stored_at > until) {
                        return None;
                    }
                    let sequence = info.stream_sequence;
                    done = !follow && info.pending == 0;
                    if message.subject.as_str() == checkpoints.as_str() {
                        continue;
                    }
                    // An event is what its subject says it is: a payload naming another
                    // instance, service or event is not history.
                    let decoded = EventRecord::decode(&message.payload).and_then(|record| {
                        let instance = &record.instance;
                        let subject =
                            event_subject(&prefix, &instance.service, &instance.id, record.event);
                        if subject == message.subject.as_str() {
                            Ok(record)
                        } else {
                            Err(Error::new(
                                ErrorKind::Decode,
                                format!("its payload is an event of {subject}"),
                            ))
                        }
                    });
                    match decoded {
                        Ok(record) => {
                            let event = StoredEvent {
                                sequence,
                                stored_at,
                                record,
                            };
                            return Some((Ok(event), (messages, done)));
                        }
                        Err(e) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            warn!(subject = %message.subject, sequence, error = %e, "skipping an undecodable event");
                        }
                    }
                }
            }
        });
        Ok(History::new(events, skipped))
    }

    /// The first and last sequence of the event stream (0, 0 when it is empty).
    pub(crate) async fn event_bounds(&self) -> Result<(u64, u64)> {
        // The lookup brings the stream's state: no second request for it.
        let stream = self.event_stream().await?;
        let state = &stream.cached_info().state;
        Ok((state.first_sequence, state.last_sequence))
    }

    /// A checkpoint part, located as `locate` says.
    pub(crate) async fn checkpoint_part(
        &self,
        locate: Locate,
    ) -> Result<Option<(u64, SystemTime, CheckpointPart)>> {
        let subject = checkpoint_subject(&self.inner.options.subject_prefix);
        let request = match locate {
            Locate::Last => serde_json::json!({ "last_by_subj": subject }),
            Locate::Sequence(sequence) => serde_json::json!({ "seq": sequence }),
            Locate::NextAfter(sequence) => {
                serde_json::json!({ "seq": sequence + 1, "next_by_subj": subject })
            }
            Locate::FirstAtOrAfter(time) => serde_json::json!({
                "start_time": humantime::format_rfc3339_nanos(time).to_string(),
                "next_by_subj": subject,
            }),
        };
        let api = format!("STREAM.MSG.GET.{}", self.inner.options.event_stream);
        let response: jetstream::response::Response<Got> =
            self.inner.js.request(api, &request).await.map_err(|e| {
                Error::with_source(ErrorKind::Transport, "cannot read a checkpoint", e)
            })?;
        let raw = match response {
            jetstream::response::Response::Ok(got) => got.message,
            jetstream::response::Response::Err { error }
                if error.error_code().0 == NO_MESSAGE_FOUND =>
            {
                return Ok(None)
            }
            jetstream::response::Response::Err { error } => {
                return Err(Error::new(
                    ErrorKind::Transport,
                    format!("cannot read a checkpoint: {error}"),
                ))
            }
        };
        if raw.subject != subject {
            return Ok(None);
        }
        let sequence = raw.sequence;
        let stored_at = to_system_time(raw.time.unix_timestamp_nanos());
        let message = jetstream::message::StreamMessage::try_from(raw).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!("checkpoint message {sequence}: {e}"),
            )
        })?;
        let part = CheckpointPart::decode(&message.payload)?;
        Ok(Some((sequence, stored_at, part)))
    }

    /// Appends a checkpoint part right after stream sequence `expected` on the checkpoint
    /// subject (0: the subject has none); a conflict when another writer got there first.
    pub(crate) async fn publish_checkpoint_part(
        &self,
        part: &CheckpointPart,
        expected: u64,
    ) -> Result<u64> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            name(h::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE),
            expected.to_string(),
        );
        headers.insert(name(h::CHECKPOINT_UP_TO), part.up_to.to_string());
        headers.insert(
            name(h::CHECKPOINT_PART),
            format!("{}/{}", part.part, part.parts),
        );
        let subject = checkpoint_subject(&self.inner.options.subject_prefix);
        self.publish(subject, headers, Bytes::from(part.encode()?), None)
            .await
    }

    async fn event_stream(&self) -> Result<jetstream::stream::Stream<jetstream::stream::Info>> {
        let name = &self.inner.options.event_stream;
        self.inner.js.get_stream(name).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Setup,
                format!("cannot open event stream {name}"),
                e,
            )
        })
    }
}

/// The answer of `STREAM.MSG.GET`.
#[derive(Deserialize)]
struct Got {
    message: RawMessage,
}

fn to_system_time(nanos: i128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}
