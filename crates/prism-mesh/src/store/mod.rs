//! Backends: where instance records and lifecycle events live.
//!
//! A backend is a tiny key-value log with per-key TTLs plus an event sink: owners write
//! records through it, peers watch it. Everything above (owners, the peer view, events) is
//! shared, so the in-process [`MemoryStore`] and NATS JetStream behave the same.

mod history;
mod interest;
mod memory;
mod nats;

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

pub(crate) use crate::protocol::bucket::{KvChange, RemovalCause, WatchItem, WriteCondition};
pub(crate) use history::Start;
pub use history::{History, HistoryQuery, StoredEvent};
pub(crate) use interest::Interest;
pub use memory::MemoryStore;
pub(crate) use nats::NatsStore;

use crate::error::Result;
use crate::protocol::{CheckpointPart, EventRecord, InstanceRecord};

/// Where a checkpoint part is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locate {
    /// The last part stored.
    Last,
    /// The part at this stream sequence.
    Sequence(u64),
    /// The first part after this stream sequence.
    NextAfter(u64),
    /// The first part stored at or after this time.
    FirstAtOrAfter(SystemTime),
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

    /// Appends an owner's lifecycle event about its write at bucket `revision`; `msg_id`
    /// makes it idempotent.
    pub(crate) async fn publish_event(
        &self,
        record: &EventRecord,
        msg_id: &str,
        revision: u64,
    ) -> Result<()> {
        match self {
            Store::Memory(store) => store.publish_event(record, msg_id),
            Store::Nats(store) => store.publish_event(record, msg_id, revision).await,
        }
    }

    /// Records a removal no owner announces (the record's event: an expiry, or a delete
    /// from outside the mesh) at bucket `revision`, once whoever else records it, and never
    /// after an event about a later write; says whether this call stored it.
    pub(crate) async fn record_removal(&self, record: &EventRecord, revision: u64) -> Result<bool> {
        match self {
            Store::Memory(store) => Ok(store.record_removal(record, revision)),
            Store::Nats(store) => store.record_removal(record, revision).await,
        }
    }

    /// Starts watching the keys of the services of `interest`: a snapshot, then changes;
    /// when the interest grows, a snapshot of the new one (after a `Loading` item).
    pub(crate) fn watch(
        &self,
        interest: watch::Receiver<Interest>,
    ) -> mpsc::UnboundedReceiver<WatchItem> {
        match self {
            Store::Memory(store) => store.watch(interest),
            Store::Nats(store) => store.watch(interest),
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

    /// Lifecycle events as `query` says, read as they are consumed.
    pub(crate) async fn history(&self, query: &HistoryQuery) -> Result<History> {
        match self {
            Store::Memory(store) => Ok(store.history(query)),
            Store::Nats(store) => store.history(query).await,
        }
    }

    /// The first and last sequence of the event log (0, 0 when it is empty).
    pub(crate) async fn event_bounds(&self) -> Result<(u64, u64)> {
        match self {
            Store::Memory(store) => Ok(store.event_bounds()),
            Store::Nats(store) => store.event_bounds().await,
        }
    }

    /// A checkpoint part with its stream sequence and time, located as `locate` says (the
    /// memory store keeps none: its log is read whole).
    pub(crate) async fn checkpoint_part(
        &self,
        locate: Locate,
    ) -> Result<Option<(u64, SystemTime, CheckpointPart)>> {
        match self {
            Store::Memory(_) => Ok(None),
            Store::Nats(store) => store.checkpoint_part(locate).await,
        }
    }

    /// Appends a checkpoint part right after sequence `expected` of the checkpoint subject;
    /// a conflict when another writer got there first.
    pub(crate) async fn publish_checkpoint_part(
        &self,
        part: &CheckpointPart,
        expected: u64,
    ) -> Result<u64> {
        match self {
            Store::Memory(_) => Err(crate::error::Error::new(
                crate::error::ErrorKind::InvalidInput,
                "the memory backend keeps no checkpoints",
            )),
            Store::Nats(store) => store.publish_checkpoint_part(part, expected).await,
        }
    }

    /// The NATS backend, for what only it can do (control requests between processes).
    pub(crate) fn nats(&self) -> Option<&NatsStore> {
        match self {
            Store::Nats(store) => Some(store),
            Store::Memory(_) => None,
        }
    }

    /// Stops background work tied to this handle.
    pub(crate) async fn close(&self) {
        if let Store::Nats(store) = self {
            store.close().await;
        }
    }
}
