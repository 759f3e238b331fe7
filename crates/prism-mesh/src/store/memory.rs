//! The in-process backend: the same log, TTL and event semantics as NATS, inside one
//! process. Every [`Mesh`](crate::Mesh) built on the same `MemoryStore` is a peer of the
//! others.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{History, HistoryQuery, Start, StoredEvent};
use super::{Interest, KvChange, RemovalCause, WatchItem, WriteCondition};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{EventRecord, InstanceRecord};

/// How often expired keys are swept (NATS runs a 1 s timing wheel; we are finer).
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);
/// Lifecycle events kept for [`MemoryStore::events`].
const EVENT_LOG_CAPACITY: usize = 10_000;

/// An in-process key-value log with per-key TTLs and an event log.
///
/// ```
/// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
/// use prism_mesh::{Mesh, MemoryStore, ServiceInstance};
///
/// let store = MemoryStore::new();
/// let owner = Mesh::builder().memory_store(store.clone()).connect().await?;
/// let peer = Mesh::builder().memory_store(store).connect().await?;
///
/// owner.register(ServiceInstance::builder("orders", "127.0.0.1", 8080).build()?).await?;
/// peer.wait_for_service("orders", std::time::Duration::from_secs(1)).await?;
/// assert_eq!(peer.discover("orders").len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    reconnects: watch::Sender<u64>,
    sweeper: Mutex<Option<JoinHandle<()>>>,
    /// The last event sequence, for histories that follow the log.
    appended: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, Slot>,
    revision: u64,
    deadlines: BinaryHeap<Reverse<(Instant, u64, String)>>,
    watchers: Vec<Watcher>,
    events: VecDeque<LoggedEvent>,
    event_ids: HashSet<String>,
    /// The sequence of the last event appended (the first is 1).
    event_sequence: u64,
}

/// A watch: where its items go and the interest it was last given a snapshot of.
#[derive(Debug)]
struct Watcher {
    tx: mpsc::UnboundedSender<WatchItem>,
    interest: Interest,
}

/// An event as the memory log keeps it: like a stream message, with a sequence and time.
#[derive(Debug, Clone)]
struct LoggedEvent {
    msg_id: String,
    sequence: u64,
    stored_at: std::time::SystemTime,
    record: EventRecord,
}

#[derive(Debug)]
struct Slot {
    /// `None` for a tombstone.
    value: Option<Bytes>,
    revision: u64,
    cause: Option<RemovalCause>,
    written_at: std::time::SystemTime,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                reconnects: watch::channel(0).0,
                sweeper: Mutex::new(None),
                appended: watch::channel(0).0,
            }),
        }
    }

    /// The process-wide store used by the `memory` backend when none is given.
    pub fn global() -> MemoryStore {
        static GLOBAL: OnceLock<MemoryStore> = OnceLock::new();
        GLOBAL.get_or_init(MemoryStore::new).clone()
    }

    /// The lifecycle events published so far (the last 10,000), oldest first.
    pub fn events(&self) -> Vec<EventRecord> {
        self.lock()
            .events
            .iter()
            .map(|e| e.record.clone())
            .collect()
    }

    /// Number of keys held, tombstones included (they expire too).
    pub fn key_count(&self) -> usize {
        self.lock().keys.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written (every
        // mutation is a single insert/remove), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision of `key`'s last write and whether it holds a value; `None` when the
    /// store has nothing for it.
    pub(crate) fn last_write(&self, key: &str) -> Option<(u64, bool)> {
        self.lock()
            .keys
            .get(key)
            .map(|slot| (slot.revision, slot.value.is_some()))
    }

    pub(crate) fn put(
        &self,
        key: &str,
        record: &InstanceRecord,
        ttl: Duration,
        condition: WriteCondition,
    ) -> Result<u64> {
        let value = Bytes::from(record.encode()?);
        self.ensure_sweeper();
        let mut state = self.lock();
        let current = state.keys.get(key);
        let live_revision = current.filter(|s| s.value.is_some()).map(|s| s.revision);
        let ok = match condition {
            WriteCondition::Any => true,
            WriteCondition::Absent => live_revision.is_none(),
            WriteCondition::Revision(expected) => current.map(|s| s.revision) == Some(expected),
        };
        if !ok {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "write to {key} expected {condition:?}, key is at {:?}",
                    current.map(|s| s.revision)
                ),
            ));
        }
        state.revision += 1;
        let revision = state.revision;
        let written_at = std::time::SystemTime::now();
        state.keys.insert(
            key.to_string(),
            Slot {
                value: Some(value.clone()),
                revision,
                cause: None,
                written_at,
            },
        );
        state
            .deadlines
            .push(Reverse((expires_in(ttl), revision, key.to_string())));
        state.broadcast(KvChange::Put {
            key: key.to_string(),
            value,
            revision,
            written_at,
        });
        Ok(revision)
    }

    pub(crate) fn delete(&self, key: &str, reason: Option<&str>, tombstone_ttl: Duration) -> u64 {
        self.ensure_sweeper();
        let mut state = self.lock();
        state.revision += 1;
        let revision = state.revision;
        // As a NATS header carries it (async-nats trims values it reads), so peers read
        // the same reason on both backends.
        let cause = RemovalCause::Deregistered {
            reason: reason.map(|r| crate::protocol::bucket::header_safe(r).trim().to_string()),
        };
        let at = std::time::SystemTime::now();
        state.keys.insert(
            key.to_string(),
            Slot {
                value: None,
                revision,
                cause: Some(cause.clone()),
                written_at: at,
            },
        );
        state.deadlines.push(Reverse((
            expires_in(tombstone_ttl),
            revision,
            key.to_string(),
        )));
        state.broadcast(KvChange::Removed {
            key: key.to_string(),
            revision,
            cause,
            at,
        });
        revision
    }

    pub(crate) fn publish_event(&self, record: &EventRecord, msg_id: &str) -> Result<()> {
        self.append_event(record, msg_id);
        Ok(())
    }

    /// Appends an event unless one with the same id is kept (like `Nats-Msg-Id`); says
    /// whether it was appended.
    fn append_event(&self, record: &EventRecord, msg_id: &str) -> bool {
        let mut state = self.lock();
        if !state.event_ids.insert(msg_id.to_string()) {
            return false;
        }
        state.event_sequence += 1;
        let sequence = state.event_sequence;
        state.events.push_back(LoggedEvent {
            msg_id: msg_id.to_string(),
            sequence,
            stored_at: std::time::SystemTime::now(),
            record: record.clone(),
        });
        while state.events.len() > EVENT_LOG_CAPACITY {
            if let Some(dropped) = state.events.pop_front() {
                state.event_ids.remove(&dropped.msg_id);
            }
        }
        drop(state);
        self.inner.appended.send_replace(sequence);
        true
    }

    /// The kept events after `after` that `query` selects, up to its `until`.
    fn events_after(&self, after: u64, query: &HistoryQuery) -> Vec<StoredEvent> {
        let until = query.until_time();
        self.lock()
            .events
            .iter()
            .filter(|e| e.sequence > after)
            .take_while(|e| until.is_none_or(|until| e.stored_at <= until))
            .filter(|e| {
                let instance = &e.record.instance;
                query.service_name().is_none_or(|s| instance.service == s)
                    && query.instance_id().is_none_or(|id| instance.id == *id)
            })
            .map(|e| StoredEvent {
                sequence: e.sequence,
                stored_at: e.stored_at,
                record: e.record.clone(),
            })
            .collect()
    }

    /// Events as `query` says; with `follow`, then every event appended later.
    pub(crate) fn history(&self, query: &HistoryQuery) -> History {
        let after = match query.start() {
            Start::First => 0,
            Start::After(sequence) => sequence,
            Start::Time(time) => self
                .lock()
                .events
                .iter()
                .find(|e| e.stored_at >= time)
                .map_or(u64::MAX, |e| e.sequence - 1),
        };
        let after = after.min(self.lock().event_sequence);
        let first = self.events_after(after, query);
        let skipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if !query.follows() {
            return History::new(futures::stream::iter(first.into_iter().map(Ok)), skipped);
        }
        let store = self.clone();
        let query = query.clone();
        let appended = self.inner.appended.subscribe();
        let last = first.last().map_or(after, |e| e.sequence);
        let batches = futures::stream::unfold(
            (store, query, appended, last, Some(first)),
            |(store, query, mut appended, mut last, first)| async move {
                if let Some(first) = first {
                    return Some((first, (store, query, appended, last, None)));
                }
                loop {
                    let batch = store.events_after(last, &query);
                    if let Some(newest) = batch.last() {
                        last = newest.sequence;
                        return Some((batch, (store, query, appended, last, None)));
                    }
                    // Filtered out or nothing yet: wait for the next append.
                    last = last.max(*appended.borrow_and_update());
                    appended.changed().await.ok()?;
                }
            },
        );
        History::new(
            futures::StreamExt::flat_map(batches, |batch| {
                futures::stream::iter(batch.into_iter().map(Ok))
            }),
            skipped,
        )
    }

    /// The first and last sequence of the kept events (0, 0 when none is).
    pub(crate) fn event_bounds(&self) -> (u64, u64) {
        let state = self.lock();
        match (state.events.front(), state.events.back()) {
            (Some(first), Some(last)) => (first.sequence, last.sequence),
            _ => (0, 0),
        }
    }

    /// In one process every peer sees the same removal: the id makes it one event.
    pub(crate) fn record_removal(&self, record: &EventRecord, revision: u64) -> bool {
        self.append_event(
            record,
            &format!(
                "{}-{}-{revision}",
                record.event.as_str(),
                record.instance.id
            ),
        )
    }

    pub(crate) fn watch(
        &self,
        mut interest: watch::Receiver<Interest>,
    ) -> mpsc::UnboundedReceiver<WatchItem> {
        self.ensure_sweeper();
        let (tx, rx) = mpsc::unbounded_channel();
        let wanted = interest.borrow_and_update().clone();
        let mut state = self.lock();
        // Snapshot and subscription under one lock: no change falls between them.
        if state.snapshot(&tx, &wanted, &Interest::default()) {
            // Also a sweeper on the watcher's own runtime for as long as it watches: the
            // store's first runtime (say, an earlier test's) may end while this one waits
            // for an expiry with no write to restart the shared sweeper.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep(Arc::downgrade(&self.inner), Some(tx.clone())));
                // A grown interest: a snapshot of it, as a NATS watch takes one.
                let weak = Arc::downgrade(&self.inner);
                let watcher = tx.clone();
                runtime.spawn(async move {
                    while interest.changed().await.is_ok() && !watcher.is_closed() {
                        let wanted = interest.borrow_and_update().clone();
                        let Some(inner) = weak.upgrade() else { return };
                        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.regrow(&watcher, wanted);
                    }
                });
            }
            state.watchers.push(Watcher {
                tx,
                interest: wanted,
            });
        }
        rx
    }

    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    /// Starts (or restarts, if its runtime ended) the task expiring keys.
    fn ensure_sweeper(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut sweeper = self.inner.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        if sweeper.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        *sweeper = Some(runtime.spawn(sweep(weak, None)));
    }
}

/// Expires due keys every [`SWEEP_INTERVAL`] while the store lives and, if `watcher` is
/// given, while that watcher still listens.
async fn sweep(weak: Weak<Inner>, watcher: Option<mpsc::UnboundedSender<WatchItem>>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if watcher.as_ref().is_some_and(|w| w.is_closed()) {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state.expire(Instant::now());
    }
}

impl State {
    fn broadcast(&mut self, change: KvChange) {
        self.watchers.retain(|w| {
            !w.interest.covers_key(change.key())
                || w.tx.send(WatchItem::Change(change.clone())).is_ok()
        });
    }

    /// Sends a snapshot of the keys of `wanted` (announced by `Loading`, `before` being
    /// the interest of the watcher's last one); false when the watcher is gone.
    fn snapshot(
        &self,
        tx: &mpsc::UnboundedSender<WatchItem>,
        wanted: &Interest,
        before: &Interest,
    ) -> bool {
        let part = self
            .keys
            .iter()
            .filter(|(key, _)| wanted.covers_key(key))
            .map(|(key, slot)| slot.as_change(key))
            .collect();
        let loading = WatchItem::Loading {
            generation: wanted.generation,
            added: wanted.added_since(before),
        };
        [
            loading,
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(part),
            WatchItem::SnapshotEnd,
        ]
        .into_iter()
        .all(|item| tx.send(item).is_ok())
    }

    /// The watcher on `tx` follows `wanted` from now on, starting with a snapshot of it.
    fn regrow(&mut self, tx: &mpsc::UnboundedSender<WatchItem>, wanted: Interest) {
        let Some(index) = self.watchers.iter().position(|w| w.tx.same_channel(tx)) else {
            return;
        };
        let before = self.watchers[index].interest.clone();
        if self.snapshot(tx, &wanted, &before) {
            self.watchers[index].interest = wanted;
        } else {
            self.watchers.remove(index);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, revision, _))) = self.deadlines.peek() {
            if *deadline > now {
                break;
            }
            let revision = *revision;
            let Some(Reverse((_, _, key))) = self.deadlines.pop() else {
                break;
            };
            // A later write superseded this deadline.
            if self.keys.get(&key).map(|s| s.revision) != Some(revision) {
                continue;
            }
            let Some(slot) = self.keys.remove(&key) else {
                continue;
            };
            if slot.value.is_some() {
                self.revision += 1;
                let revision = self.revision;
                self.broadcast(KvChange::Removed {
                    key,
                    revision,
                    cause: RemovalCause::Expired,
                    at: std::time::SystemTime::now(),
                });
            }
        }
    }
}

impl Slot {
    fn as_change(&self, key: &str) -> KvChange {
        match (&self.value, &self.cause) {
            (Some(value), _) => KvChange::Put {
                key: key.to_string(),
                value: value.clone(),
                revision: self.revision,
                written_at: self.written_at,
            },
            (None, cause) => KvChange::Removed {
                key: key.to_string(),
                revision: self.revision,
                cause: cause.clone().unwrap_or(RemovalCause::Purged),
                at: self.written_at,
            },
        }
    }
}

/// When a key written now with `ttl` expires: rounded up to whole seconds, as nats-server
/// applies a `Nats-TTL`.
fn expires_in(ttl: Duration) -> Instant {
    let ttl = Duration::from_secs(crate::protocol::whole_seconds(ttl));
    // Beyond what `Timing::validate` allows; saturate instead of panicking anyway.
    Instant::now()
        .checked_add(ttl)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400))
}
