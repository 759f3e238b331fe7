//! Watching the bucket: an ordered consumer over its stream, a snapshot and then changes,
//! resumed or resynchronised after interruptions, each message classified by its headers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use super::connect::{ensure_bucket, ensure_event_stream, recreate_refused, setup_kind, transient};

use super::{is_stream_not_found, name, Inner, NatsStore, Position};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::bucket::bucket_change;
use crate::protocol::headers as h;
use crate::store::{Interest, KvChange, WatchItem};

impl NatsStore {
    pub(crate) fn watch(
        &self,
        interest: watch::Receiver<Interest>,
    ) -> mpsc::UnboundedReceiver<WatchItem> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.inner.clone();
        let span = tracing::info_span!("nats.watch", stream = %inner.kv_stream);
        tokio::spawn(watch_loop(inner, tx, interest).instrument(span));
        rx
    }
}

/// Snapshot (last message per key) then live changes. After an interruption (a reconnect,
/// a consumer lost in a leader election) the watch resumes from the last revision it
/// delivered while the log still holds every removal since (see
/// `WatchedLog::resume_point`), and takes a fresh snapshot otherwise.
///
/// The consumer asks only for the keys of the services of interest. A grown interest
/// needs a snapshot of the new set: the watch starts again with one.
async fn watch_loop(
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<WatchItem>,
    mut interest: watch::Receiver<Interest>,
) {
    let mut reconnects = inner.reconnects.clone();
    let mut awaited = inner.awaited.subscribe();
    let mut closed = inner.closed.subscribe();
    let mut backoff = Duration::from_millis(100);
    let mut log = WatchedLog::default();
    loop {
        reconnects.borrow_and_update();
        let wanted = interest.borrow_and_update().clone();
        let outcome = tokio::select! {
            outcome = watch_once(&inner, &tx, &mut log, &wanted) => outcome,
            _ = reconnects.changed() => Ok(WatchEnd::Reconnected),
            () = grown(&mut interest) => Ok(WatchEnd::InterestGrown),
            revision = stalled(&inner, &mut awaited) => Ok(WatchEnd::Stalled(revision)),
            _ = crate::sync::until_true(&mut closed) => return,
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
            Ok(WatchEnd::InterestGrown) => {
                debug!("the interest grew: watching again with a snapshot of it");
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
                    _ = crate::sync::until_true(&mut closed) => return,
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
    /// The interest of the last complete snapshot: a watch of another one cannot resume.
    loaded: Interest,
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
    /// The peer follows more services than the running consumer asks for.
    InterestGrown,
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

/// Resolves when the interest changes (never once its sender is gone).
async fn grown(interest: &mut watch::Receiver<Interest>) {
    if interest.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The consumer's filter: the whole bucket, or each followed service's keys.
fn filter_subjects(prefix: &str, interest: &Interest) -> Vec<String> {
    match &interest.services {
        None => vec![format!("{prefix}>")],
        Some(services) => services.iter().map(|s| format!("{prefix}{s}.*")).collect(),
    }
}

async fn watch_once(
    inner: &Inner,
    tx: &mpsc::UnboundedSender<WatchItem>,
    log: &mut WatchedLog,
    wanted: &Interest,
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
            ensure_bucket(&inner.js, &inner.options, inner.shard, &inner.violations)
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
    let resume = log
        .resume_point(info)
        .filter(|_| log.loaded.services == wanted.services);
    // With history 1 (the buckets prism-mesh creates) every stored message is its key's
    // last, so delivering all of them is the same snapshot; the server then reads the log in
    // order instead of looking up each key's last message first, which costs it a third
    // more CPU on a 100k-key cold start.
    let deliver_policy = match resume {
        Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        None if info.config.max_messages_per_subject == 1 => consumer::DeliverPolicy::All,
        None => consumer::DeliverPolicy::LastPerSubject,
    };
    let mut filters = filter_subjects(&inner.kv_prefix, wanted);
    if filters.is_empty() {
        // Nothing followed: an empty view, until the interest grows (a consumer without
        // a filter would deliver everything).
        let loaded = [
            WatchItem::Loading {
                generation: wanted.generation,
                added: Vec::new(),
            },
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotEnd,
        ];
        if loaded.into_iter().any(|item| tx.send(item).is_err()) {
            return Ok(WatchEnd::ReceiverGone);
        }
        log.loaded = wanted.clone();
        return std::future::pending().await;
    }
    let (filter_subject, filter_subjects) = if filters.len() == 1 {
        (filters.remove(0), Vec::new())
    } else {
        (String::new(), filters)
    };
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: inner.client.new_inbox(),
            description: Some("prism-mesh peer view".to_string()),
            filter_subject,
            filter_subjects,
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
    let loading = WatchItem::Loading {
        generation: wanted.generation,
        added: wanted.added_since(&log.loaded),
    };
    if tx.send(loading).is_err() || tx.send(WatchItem::SnapshotBegin).is_err() {
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
    log.loaded = wanted.clone();
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

/// Changes per streamed snapshot part.
const SNAPSHOT_PART: usize = 1024;
