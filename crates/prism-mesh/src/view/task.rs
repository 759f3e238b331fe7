//! The view task: applies the backend's snapshots and changes to the index in log order,
//! flushes per-service snapshots to readers, then dispatches the events and records
//! expiries. One per mesh handle; readers never wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

// The index hashes every key of every change: foldhash (randomly seeded per map) is several
// times faster than SipHash on these short keys.
use foldhash::{HashMap as FastMap, HashSet as FastSet};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::events::EventBus;
use super::preservation::{ExpiryFacts, Preservation, SelfPreservation, Verdict};
use super::registry::RegistryView;
use super::MeshEvent;
use crate::error::ErrorKind;
use crate::instance::ServiceInstance;
use crate::metrics::MeshStats;
use crate::protocol::{EventName, EventRecord, PROTOCOL_VERSION};
use crate::store::{KvChange, RemovalCause, Store, WatchItem};
use crate::sync::{KeyAlerts, Watermark};

use super::index::{keep_held, Index};

/// Most watch items applied before readers see a new snapshot.
const MAX_BATCH: usize = 4096;

/// After a flush that took `t`, the next one waits until `t * FLUSH_COST_FACTOR` has passed
/// (collecting changes meanwhile), so publishing snapshots takes at most about a tenth of
/// the task's time. Flushes cost microseconds (a snapshot shares its map with the index)
/// and are not delayed.
const FLUSH_COST_FACTOR: u32 = 10;

/// Flushes cheaper than this are never throttled: one costs this much only when thousands
/// of services changed at once, or when it drops big ordered slices readers asked of the
/// snapshots it replaces. Below it the delay would cost more latency (tokio timers round
/// up to whole milliseconds) than it saves CPU.
const THROTTLED_FLUSH_COST: Duration = Duration::from_millis(1);

/// Removals named so far by a snapshot being streamed in, with their revisions.
#[derive(Debug, Default)]
struct Resync {
    removals: HashMap<String, (RemovalCause, u64)>,
}

/// A removal to apply to a held key: why, at which revision, and when the server stored it
/// (`None` for a key a resynchronising snapshot no longer names).
struct Removal {
    key: String,
    cause: RemovalCause,
    revision: u64,
    at: Option<SystemTime>,
}

/// A held expiry's key, and what the store said of it: its last write's revision and
/// whether it holds a value (`Some(None)`: nothing stored; `None`: could not be asked).
type Confirmation = (String, Option<Option<(u64, bool)>>);

/// What applying a removal should also publish on the event stream.
struct ExpiryToPublish {
    instance: Arc<ServiceInstance>,
    revision: u64,
}

/// Everything the view task needs.
pub(crate) struct ViewTask {
    pub(crate) store: Store,
    pub(crate) registry: Arc<RegistryView>,
    pub(crate) bus: Arc<EventBus>,
    pub(crate) stats: Arc<MeshStats>,
    pub(crate) ready: watch::Sender<bool>,
    pub(crate) peer_id: String,
    pub(crate) publish_expired: bool,
    pub(crate) self_preservation: SelfPreservation,
    /// The highest revision readers can see, so writers can wait for their own writes.
    pub(crate) applied: Arc<Watermark>,
    /// The owners of keys in this process, told of every change of their keys.
    pub(crate) alerts: Arc<KeyAlerts>,
    /// True (or gone) once the mesh closes: the view stops and its event streams end,
    /// whatever the backend (a memory store's watch never closes by itself).
    pub(crate) closing: watch::Receiver<bool>,
}

impl Drop for ViewTask {
    /// However the task ends (closed, failed, cancelled, even before it first ran),
    /// writers stop waiting on it.
    fn drop(&mut self) {
        self.applied.close();
    }
}

impl ViewTask {
    pub(crate) async fn run(self, mut items: mpsc::UnboundedReceiver<WatchItem>) {
        let mut index = Index {
            entries: FastMap::default(),
            by_service: FastMap::default(),
            dirty: FastSet::default(),
            snapshot: 0,
        };
        let mut events = Vec::new();
        let mut expiries = Vec::new();
        let mut resync: Option<Resync> = None;
        let mut synced = false;
        // When the last flush finished and what it cost: see `FLUSH_COST_FACTOR`.
        let mut last_flush = (Instant::now(), Duration::ZERO);
        let mut preservation = Preservation::new(self.self_preservation);
        // The highest revision applied so far (published after each flush).
        let mut high = 0u64;
        let mut closing = self.closing.clone();
        // What the store says of held expiries whose grace ended (see `settle_expiries`).
        let (confirm_tx, mut confirmations) = mpsc::unbounded_channel::<Confirmation>();
        // Services whose expiries the server refused to let this peer record.
        let refused_expiries = Arc::new(Mutex::new(FastSet::default()));
        'items: loop {
            // Wake for the next item, or when a waiting expiry must be decided.
            // Not while a snapshot streams in: expiries are decided after it, and waking
            // for a passed deadline would spin until it ends.
            let deadline = preservation.next_deadline().filter(|_| resync.is_none());
            let first = tokio::select! {
                biased;
                _ = crate::sync::until_true(&mut closing) => break 'items,
                item = items.recv() => match item {
                    Some(item) => Some(item),
                    None => break 'items,
                },
                Some((key, last)) = confirmations.recv() => {
                    if let Some(revision) = preservation.confirm(&key, last) {
                        self.expire_now(&mut index, key, revision, &mut events, &mut expiries);
                    }
                    None
                }
                () = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                } => None,
            };
            let mut batch = 1;
            let mut next = first;
            loop {
                while let Some(item) = next.take() {
                    match item {
                        WatchItem::SnapshotBegin => {
                            if synced {
                                preservation.interrupted(SystemTime::now());
                            }
                            resync = Some(self.begin_snapshot(&mut index));
                        }
                        WatchItem::Resumed => {
                            MeshStats::incr(&self.stats.resumes);
                            preservation.interrupted(SystemTime::now());
                        }
                        WatchItem::SnapshotPart(changes) => {
                            let top = changes.iter().map(KvChange::revision).max();
                            high = high.max(top.unwrap_or(0));
                            let state =
                                resync.get_or_insert_with(|| self.begin_snapshot(&mut index));
                            self.apply_snapshot_part(
                                &mut index,
                                state,
                                &mut preservation,
                                changes,
                                &mut events,
                            );
                            if !synced {
                                // Nobody can subscribe before the first view is ready.
                                events.clear();
                            }
                        }
                        WatchItem::SnapshotEnd => {
                            // Without parts, a snapshot named nothing.
                            let state = resync
                                .take()
                                .unwrap_or_else(|| self.begin_snapshot(&mut index));
                            self.finish_snapshot(
                                &mut index,
                                state,
                                &mut preservation,
                                &mut events,
                                &mut expiries,
                            );
                            synced = true;
                        }
                        WatchItem::LogReplaced => {
                            // No revision held may hide a write to the new log, and the
                            // watermark writers wait on starts again too.
                            index.forget_revisions();
                            high = 0;
                            self.applied.reset();
                        }
                        WatchItem::RolledUp { revision } => self.alerts.rolled_up(revision),
                        WatchItem::Change(change) => {
                            high = high.max(change.revision());
                            MeshStats::incr(&self.stats.changes_applied);
                            self.apply_change(
                                &mut index,
                                change,
                                &mut preservation,
                                &mut events,
                                &mut expiries,
                            );
                        }
                    }
                    if batch < MAX_BATCH {
                        next = items.try_recv().ok();
                        batch += 1;
                    }
                }
                // While a snapshot streams in, publish nothing: readers keep the last complete
                // view (a snapshot is published whole, never half-applied).
                if resync.is_some() {
                    continue 'items;
                }
                // An expensive flush (see `THROTTLED_FLUSH_COST`) is not repeated per
                // change: keep collecting until its cost is a small share of the time.
                let due = last_flush.0 + last_flush.1 * FLUSH_COST_FACTOR;
                let throttled = last_flush.1 >= THROTTLED_FLUSH_COST;
                if throttled && batch < MAX_BATCH && Instant::now() < due {
                    if let Ok(Some(item)) = tokio::time::timeout_at(due, items.recv()).await {
                        next = Some(item);
                        batch += 1;
                        continue;
                    }
                }
                break;
            }
            self.settle_expiries(
                &mut index,
                &mut preservation,
                &mut events,
                &mut expiries,
                &confirm_tx,
            );
            self.stats
                .view_backlog
                .store(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // Readers see the new state before anyone hears about it.
            let started = Instant::now();
            index.flush(&self.registry);
            last_flush = (Instant::now(), started.elapsed());
            self.applied.raise(high);
            self.stats
                .events_emitted
                .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.bus.dispatch(&events);
            events.clear();
            // Ready only after the first full snapshot was dispatched, so a subscriber
            // created after `connect` returns never gets a random part of it.
            if synced {
                self.ready
                    .send_if_modified(|ready| !std::mem::replace(ready, true));
            }
            for expiry in expiries.drain(..) {
                self.publish_expired(expiry, &refused_expiries);
            }
        }
        debug!("view task ends: the mesh or its watch closed");
        self.bus.close();
    }

    /// Applies the expiries self-preservation let through, and counts what it holds. A held
    /// expiry whose grace ended is first checked against the store: this peer's watch may
    /// itself be stalled (its consumer lost with a stream leader) and not have shown the
    /// owner writing the key again.
    fn settle_expiries(
        &self,
        index: &mut Index,
        preservation: &mut Preservation,
        events: &mut Vec<MeshEvent>,
        expiries: &mut Vec<ExpiryToPublish>,
        confirm: &mpsc::UnboundedSender<Confirmation>,
    ) {
        if !preservation.enabled() {
            return;
        }
        for (key, revision, held) in preservation.due() {
            if held {
                let store = self.store.clone();
                let confirm = confirm.clone();
                tokio::spawn(async move {
                    let last = match store.last_write(&key).await {
                        Ok(last) => Some(last),
                        Err(e) => {
                            debug!(key, error = %e, "cannot confirm a held expiry; holding on");
                            None
                        }
                    };
                    let _ = confirm.send((key, last));
                });
            } else {
                self.expire_now(index, key, revision, events, expiries);
            }
        }
        self.stats.preserved.store(
            preservation.held() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Applies an expiry that waited, unless the key was written again since.
    fn expire_now(
        &self,
        index: &mut Index,
        key: String,
        revision: u64,
        events: &mut Vec<MeshEvent>,
        expiries: &mut Vec<ExpiryToPublish>,
    ) {
        // Written again since (its revision moved past the expiry's): it lives.
        if index
            .entries
            .get(&key)
            .is_some_and(|e| e.revision > revision)
        {
            return;
        }
        if let Some(entry) = index.remove(&key) {
            self.registry.forget_write(entry.instance.id);
            events.push(self.removal_event(
                entry.instance,
                RemovalCause::Expired,
                revision,
                expiries,
            ));
        }
    }

    fn apply_change(
        &self,
        index: &mut Index,
        change: KvChange,
        preservation: &mut Preservation,
        events: &mut Vec<MeshEvent>,
        expiries: &mut Vec<ExpiryToPublish>,
    ) {
        self.alerts.changed(change.key(), change.revision());
        match change {
            KvChange::Put {
                key,
                value,
                revision,
                written_at,
            } => {
                if let Some((instance, reason, ttl)) = self.decode(&key, &value, revision) {
                    // Written again: an expiry waiting on it is void.
                    preservation.forget(&key);
                    self.registry.record_write(instance.id, written_at);
                    index.upsert(key, instance, revision, reason, (written_at, ttl), events);
                }
            }
            KvChange::Refused { key, revision, why } => self.refuse(&key, revision, &why),
            KvChange::Removed {
                key,
                cause,
                revision,
                at,
            } => {
                // A removal of a key we do not hold (a tombstone or marker expiring, a
                // duplicate) changes nothing.
                if index.entries.contains_key(&key) {
                    // The marker's revision is the same at every peer: one stored event.
                    let removal = Removal {
                        key,
                        cause,
                        revision,
                        at: Some(at),
                    };
                    self.remove(index, preservation, removal, events, expiries);
                } else {
                    preservation.forget(&key);
                }
            }
        }
    }

    /// Applies part of a snapshot; what it does not name is settled by `finish_snapshot`.
    /// Within a snapshot a key can come more than once (a write made while it streams):
    /// its last message decides.
    fn apply_snapshot_part(
        &self,
        index: &mut Index,
        state: &mut Resync,
        preservation: &mut Preservation,
        changes: Vec<KvChange>,
        events: &mut Vec<MeshEvent>,
    ) {
        let Resync { removals } = state;
        // One lock for the whole part: a cold start applies 100k of these.
        let mut writes = Vec::with_capacity(changes.len());
        for change in changes {
            MeshStats::incr(&self.stats.changes_applied);
            self.alerts.changed(change.key(), change.revision());
            match change {
                KvChange::Put {
                    key,
                    value,
                    revision,
                    written_at,
                } => {
                    match self.decode(&key, &value, revision) {
                        Some((instance, reason, ttl)) => {
                            writes.push((instance.id, written_at));
                            // Written again: an earlier removal and a waiting expiry are void.
                            removals.remove(&key);
                            preservation.forget(&key);
                            index.upsert(
                                key,
                                instance,
                                revision,
                                reason,
                                (written_at, ttl),
                                events,
                            );
                        }
                        None => keep_held(index, removals, &key),
                    }
                }
                KvChange::Removed {
                    key,
                    cause,
                    revision,
                    at: _,
                } => {
                    // Removed after this snapshot named it: `finish_snapshot` removes it.
                    index.unmark_seen(&key);
                    removals.insert(key, (cause, revision));
                }
                KvChange::Refused { key, revision, why } => {
                    keep_held(index, removals, &key);
                    self.refuse(&key, revision, &why);
                }
            }
        }
        self.registry.record_writes(&writes);
    }

    /// Counts and logs a write the view will not trust; what it held stays.
    fn refuse(&self, key: &str, revision: u64, why: &str) {
        MeshStats::incr(&self.stats.malformed_dropped);
        warn!(key, revision, "ignoring untrusted instance record: {why}");
    }

    /// A snapshot starts: a fresh number, so marks left by an unfinished one count for
    /// nothing.
    fn begin_snapshot(&self, index: &mut Index) -> Resync {
        MeshStats::incr(&self.stats.resyncs);
        index.snapshot += 1;
        Resync::default()
    }

    /// Ends a snapshot: what we held and it did not name went away while we were not
    /// looking. The view now equals the snapshot; the difference went out as events.
    fn finish_snapshot(
        &self,
        index: &mut Index,
        state: Resync,
        preservation: &mut Preservation,
        events: &mut Vec<MeshEvent>,
        expiries: &mut Vec<ExpiryToPublish>,
    ) {
        let Resync { mut removals } = state;
        let gone: Vec<String> = index
            .entries
            .iter()
            .filter(|(_, entry)| entry.seen_in != index.snapshot)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            // Absent without a trace: its marker expired too while we were away, and the
            // entry's own revision names the expiry. A marker names it by its revision,
            // as live, so every peer records one `expired` event.
            let (cause, revision) = removals.remove(&key).unwrap_or_else(|| {
                let revision = index.entries.get(&key).map_or(0, |e| e.revision);
                (RemovalCause::Expired, revision)
            });
            // Expiries that happened while we were away belong in the audit trail too.
            let removal = Removal {
                key,
                cause,
                revision,
                at: None,
            };
            self.remove(index, preservation, removal, events, expiries);
        }
    }

    /// Takes a held key out of the view with its event, unless self-preservation holds an
    /// expiry back (`settle_expiries` decides it later).
    fn remove(
        &self,
        index: &mut Index,
        preservation: &mut Preservation,
        removal: Removal,
        events: &mut Vec<MeshEvent>,
        expiries: &mut Vec<ExpiryToPublish>,
    ) {
        let Removal {
            key,
            cause,
            revision,
            at,
        } = removal;
        if cause == RemovalCause::Expired && preservation.enabled() {
            if let Some(entry) = index.entries.get(&key) {
                let facts = ExpiryFacts {
                    written_at: entry.written_at,
                    ttl: entry.ttl,
                    marker_at: at,
                };
                let view_size = index.entries.len();
                let verdict =
                    preservation.expire(key.clone(), revision, facts, view_size, |at, enough| {
                        index.overdue_besides(&key, at, enough)
                    });
                match verdict {
                    Verdict::Apply => {}
                    Verdict::Settle => return,
                    Verdict::Hold { why, first } => {
                        if first {
                            MeshStats::incr(&self.stats.preservation_activations);
                        }
                        warn!(
                            key,
                            revision,
                            grace = ?self.self_preservation.grace,
                            "holding an expiry ({why}); the instance stays while its owner may write it again"
                        );
                        self.stats.preserved.store(
                            preservation.held() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        return;
                    }
                }
            }
        }
        preservation.forget(&key);
        if let Some(entry) = index.remove(&key) {
            self.registry.forget_write(entry.instance.id);
            events.push(self.removal_event(entry.instance, cause, revision, expiries));
        }
    }

    /// The event for an instance leaving the view; expiries are also queued for the
    /// event stream under `revision`.
    fn removal_event(
        &self,
        instance: Arc<ServiceInstance>,
        cause: RemovalCause,
        revision: u64,
        expiries: &mut Vec<ExpiryToPublish>,
    ) -> MeshEvent {
        match cause {
            RemovalCause::Expired => {
                MeshStats::incr(&self.stats.expiries);
                expiries.push(ExpiryToPublish {
                    instance: instance.clone(),
                    revision,
                });
                MeshEvent::Expired { instance }
            }
            RemovalCause::Deregistered { reason } => MeshEvent::Deregistered { instance, reason },
            RemovalCause::Purged => MeshEvent::Deregistered {
                instance,
                reason: Some("purged".to_string()),
            },
        }
    }

    /// Decodes a record and checks it belongs to its key; `None` (counted) when not.
    fn decode(
        &self,
        key: &str,
        value: &[u8],
        revision: u64,
    ) -> Option<(Arc<ServiceInstance>, Option<String>, Duration)> {
        match crate::protocol::decode_put(key, value) {
            Ok(put) => Some((put.instance, put.reason, put.ttl)),
            Err(why) => {
                MeshStats::incr(&self.stats.malformed_dropped);
                warn!(key, revision, "ignoring malformed instance record: {why}");
                None
            }
        }
    }

    /// Records an expiry on the event stream, unless this peer may not record that
    /// service's expiries (the server refused it once: under least privilege a service
    /// records its own service's, and a witness user every service's).
    fn publish_expired(&self, expiry: ExpiryToPublish, refused: &Arc<Mutex<FastSet<String>>>) {
        if !self.publish_expired {
            return;
        }
        let service = expiry.instance.service.clone();
        if lock_set(refused).contains(&service) {
            return;
        }
        let record = EventRecord {
            v: PROTOCOL_VERSION,
            event: EventName::Expired,
            instance: expiry.instance.clone(),
            previous_status: None,
            reason: Some("ttl".to_string()),
            at: SystemTime::now(),
            origin: self.peer_id.clone(),
        };
        let store = self.store.clone();
        let stats = self.stats.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            match store.record_expiry(&record, expiry.revision).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    info!(
                        service,
                        "this user may not record expiries of {service}; leaving them to a peer that may"
                    );
                    lock_set(&refused).insert(service);
                }
                Err(e) => {
                    MeshStats::incr(&stats.event_publish_failures);
                    warn!(error = %e, "could not record an expiry");
                }
            }
        });
    }
}

/// Locks a set a panic elsewhere cannot leave half-changed (every change is one insert).
fn lock_set(set: &Mutex<FastSet<String>>) -> std::sync::MutexGuard<'_, FastSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
impl ViewTask {
    /// Runs a view task over `items` to their end and returns the instances of service
    /// `svc` it holds then. The task has a memory store nothing else uses, no
    /// self-preservation, publishes no expired events, and dispatches on `bus`.
    pub(crate) async fn run_over(
        items: Vec<WatchItem>,
        bus: Arc<EventBus>,
    ) -> Vec<Arc<ServiceInstance>> {
        let registry = Arc::new(RegistryView::default());
        // Held until the end: dropping it is the mesh closing.
        let (_open, closing) = watch::channel(false);
        let task = ViewTask {
            store: Store::Memory(crate::store::MemoryStore::new()),
            registry: registry.clone(),
            bus,
            stats: Arc::new(MeshStats::default()),
            ready: watch::channel(false).0,
            peer_id: "test".into(),
            publish_expired: false,
            self_preservation: SelfPreservation::disabled(),
            applied: Arc::default(),
            alerts: Arc::default(),
            closing,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        for item in items {
            tx.send(item).unwrap();
        }
        drop(tx);
        task.run(rx).await;
        registry
            .slot("svc")
            .map(|slot| slot.load().instances().to_vec())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "task_tests.rs"]
mod task_tests;
