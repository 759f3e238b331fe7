//! Backends: where instance records and lifecycle events live.
//!
//! A backend is a tiny key-value log with per-key TTLs plus an event sink: owners write
//! records through it, peers watch it. Everything above (owners, the peer view, events) is
//! shared, so the in-process [`MemoryStore`] and NATS JetStream behave the same.

mod memory;
mod nats;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use memory::MemoryStore;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use nats::bucket_change;
pub(crate) use nats::NatsStore;
#[cfg(test)]
pub(crate) use nats::{header_safe, removal_cause};

use crate::error::Result;
use crate::protocol::{EventRecord, InstanceRecord};

/// What a write expects of the key's current state (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteCondition {
    /// The key holds no live value (never written, deleted, expired).
    Absent,
    /// The key's last revision is exactly this one.
    Revision(u64),
    /// Unconditional (an owner re-asserting its own key).
    Any,
}

/// Why a key stopped holding a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemovalCause {
    /// The owner deleted it.
    Deregistered { reason: Option<String> },
    /// Its TTL ran out on the server.
    Expired,
    /// Removed administratively (purge).
    Purged,
}

/// One change of the key-value log, in log order.
#[derive(Debug, Clone)]
pub(crate) enum KvChange {
    Put {
        key: String,
        value: Bytes,
        revision: u64,
        /// When the backend stored the write.
        written_at: std::time::SystemTime,
    },
    Removed {
        key: String,
        revision: u64,
        cause: RemovalCause,
        /// When the backend stored the removal (for an expiry: when the server expired the
        /// key, which tells an on-time expiry from one a stalled server caught up on).
        at: std::time::SystemTime,
    },
    /// A write peers must not trust (for example a record that could never expire);
    /// handled like a malformed record.
    Refused {
        key: String,
        revision: u64,
        why: String,
    },
}

impl KvChange {
    /// The key changed.
    pub(crate) fn key(&self) -> &str {
        match self {
            KvChange::Put { key, .. }
            | KvChange::Removed { key, .. }
            | KvChange::Refused { key, .. } => key,
        }
    }

    /// The revision (log position) of the change.
    pub(crate) fn revision(&self) -> u64 {
        match self {
            KvChange::Put { revision, .. }
            | KvChange::Removed { revision, .. }
            | KvChange::Refused { revision, .. } => *revision,
        }
    }
}

/// What a watch delivers: a full state first (and again after every resynchronisation),
/// then changes.
#[derive(Debug)]
pub(crate) enum WatchItem {
    /// A snapshot starts: parts of an earlier snapshot that never ended (the watch failed
    /// half-way) are void, and only this snapshot's parts say what is live.
    SnapshotBegin,
    /// Part of the last change of every key, as of now; streamed so peers apply it while
    /// the rest arrives.
    SnapshotPart(Vec<KvChange>),
    /// The snapshot is complete: keys absent from its parts hold nothing.
    SnapshotEnd,
    /// A change after the snapshot.
    Change(KvChange),
    /// The watch was interrupted (a reconnect, a consumer lost in a leader election) and
    /// resumed from the last revision it had delivered: nothing was missed, but owners may
    /// have been cut off from the server meanwhile too, so expiries of keys not written
    /// since are suspect. Changes follow, without a snapshot.
    Resumed,
    /// A write at `revision` (`Nats-Rollup: all`) removed every earlier message of the log,
    /// without markers: peers keep what they hold, and owners must write their keys again.
    /// Its change follows.
    RolledUp { revision: u64 },
    /// The log was replaced (the bucket made again, as after a server restart with memory
    /// storage): its revisions start again from 1 and compare with none the view holds.
    /// A snapshot follows.
    LogReplaced,
}

/// The backend a mesh runs on.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    Memory(MemoryStore),
    Nats(NatsStore),
}

impl Store {
    /// Writes `record` under `key` with a TTL, if `condition` holds; returns the new revision.
    /// `wait` bounds the wait for the acknowledgement below the connection's request timeout
    /// (a heartbeat waits no longer than its key has left).
    pub(crate) async fn put(
        &self,
        key: &str,
        record: &InstanceRecord,
        ttl: Duration,
        condition: WriteCondition,
        wait: Option<Duration>,
    ) -> Result<u64> {
        match self {
            Store::Memory(store) => store.put(key, record, ttl, condition),
            Store::Nats(store) => store.put(key, record, ttl, condition, wait).await,
        }
    }

    /// The revision of `key`'s last write in the backend and whether it holds a value
    /// (`None`: nothing stored for it). A read from the source of truth, for decisions a
    /// view must not take on what its watch has shown alone.
    pub(crate) async fn last_write(&self, key: &str) -> Result<Option<(u64, bool)>> {
        match self {
            Store::Memory(store) => Ok(store.last_write(key)),
            Store::Nats(store) => store.last_write(key).await,
        }
    }

    /// Deletes `key`, leaving a tombstone that itself expires after `tombstone_ttl`.
    pub(crate) async fn delete(
        &self,
        key: &str,
        reason: Option<&str>,
        tombstone_ttl: Duration,
    ) -> Result<u64> {
        match self {
            Store::Memory(store) => Ok(store.delete(key, reason, tombstone_ttl)),
            Store::Nats(store) => store.delete(key, reason, tombstone_ttl).await,
        }
    }

    /// Appends a lifecycle event; `msg_id` makes it idempotent.
    pub(crate) async fn publish_event(&self, record: &EventRecord, msg_id: &str) -> Result<()> {
        match self {
            Store::Memory(store) => store.publish_event(record, msg_id),
            Store::Nats(store) => store.publish_event(record, msg_id).await,
        }
    }

    /// Records the expiry of the record at bucket `revision` as an `expired` event, once
    /// whoever else records it; says whether this call stored it.
    pub(crate) async fn record_expiry(&self, record: &EventRecord, revision: u64) -> Result<bool> {
        match self {
            Store::Memory(store) => Ok(store.record_expiry(record, revision)),
            Store::Nats(store) => store.record_expiry(record, revision).await,
        }
    }

    /// Starts watching every key: a snapshot, then changes.
    pub(crate) fn watch(&self) -> mpsc::UnboundedReceiver<WatchItem> {
        match self {
            Store::Memory(store) => store.watch(),
            Store::Nats(store) => store.watch(),
        }
    }

    /// This mesh wrote `revision` and its own view has not shown it yet: a watch that has
    /// gone silent meanwhile resumes at once (the memory store's never stalls).
    pub(crate) fn watch_stalled(&self, revision: u64) {
        if let Store::Nats(store) = self {
            store.watch_stalled(revision);
        }
    }

    /// Counts reconnections of the underlying connection (never changes in memory).
    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        match self {
            Store::Memory(store) => store.reconnects(),
            Store::Nats(store) => store.reconnects(),
        }
    }

    /// The watch's delay behind the backend and what the backend still holds for it
    /// (always zero in memory: changes are handed over directly).
    pub(crate) fn watch_lag(&self) -> (std::time::Duration, u64) {
        match self {
            Store::Memory(_) => (std::time::Duration::ZERO, 0),
            Store::Nats(store) => store.watch_lag(),
        }
    }

    /// Lifecycle events from `since` (or the oldest kept) to now, and how many stored
    /// messages could not be decoded.
    pub(crate) async fn event_history(
        &self,
        event_stream: &str,
        since: Option<std::time::SystemTime>,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(Vec<EventRecord>, u64)> {
        match self {
            Store::Memory(store) => {
                let events: Vec<EventRecord> = store
                    .events()
                    .into_iter()
                    .filter(|e| since.is_none_or(|since| e.at >= since))
                    .collect();
                // One step, reported like a NATS replay's last one (which, like here, makes
                // no call for an empty history).
                let count = events.len() as u64;
                if count > 0 {
                    progress(count, count);
                }
                Ok((events, 0))
            }
            Store::Nats(store) => store.event_history(event_stream, since, progress).await,
        }
    }

    /// Stops background work tied to this handle.
    pub(crate) async fn close(&self) {
        if let Store::Nats(store) = self {
            store.close().await;
        }
    }
}
