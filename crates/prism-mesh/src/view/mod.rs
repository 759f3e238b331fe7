//! The peer view: the live registry every peer derives by replaying the bucket, and the
//! typed events it emits while doing so.
//!
//! One task per mesh handle owns the [`Index`]: it applies the backend's snapshot and
//! changes in log order, publishes per-service snapshots for readers, then hands the
//! resulting events to subscribers. Readers never wait for it.

mod alerts;
mod events;
mod history;
mod preservation;
mod registry;
mod watermark;

#[cfg(test)]
mod convergence_tests;

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;

// The index hashes every key of every change: foldhash (randomly seeded per map) is several
// times faster than SipHash on these short keys.
use foldhash::{HashMap as FastMap, HashSet as FastSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub(crate) use alerts::{KeyAlerts, KeyOwner};
pub(crate) use events::EventBus;
pub use events::{EventFilter, EventKind, EventStream, MeshEvent};
pub use history::{diff_registries, registry_at, RegistryDiff};
pub use preservation::SelfPreservation;
use preservation::{ExpiryFacts, Preservation, Verdict};
pub(crate) use registry::{InstanceMap, RegistryView};
pub use registry::{ServiceSlot, ServiceSnapshot};
pub(crate) use watermark::Watermark;

use crate::error::ErrorKind;
use crate::instance::ServiceInstance;
use crate::metrics::MeshStats;
use crate::protocol::{EventName, EventRecord, PROTOCOL_VERSION};
use crate::store::{KvChange, RemovalCause, Store, WatchItem};

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

#[derive(Debug)]
struct Entry {
    instance: Arc<ServiceInstance>,
    revision: u64,
    /// When the key was last written (the server's time) and the TTL it was written with:
    /// what self-preservation judges its expiry by.
    written_at: SystemTime,
    ttl: Duration,
    /// The last snapshot (see `Index::snapshot`) that named this key.
    seen_in: u64,
}

/// The writer side of the view.
#[derive(Debug)]
struct Index {
    entries: FastMap<String, Entry>,
    by_service: FastMap<String, InstanceMap>,
    dirty: FastSet<String>,
    /// Counts snapshots. Entries a snapshot names are marked with its number, so what it
    /// did not name is found without a set of 100k key copies.
    snapshot: u64,
}

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
                _ = crate::util::until_true(&mut closing) => break 'items,
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

impl Index {
    fn upsert(
        &mut self,
        key: String,
        instance: Arc<ServiceInstance>,
        revision: u64,
        reason: Option<String>,
        (written_at, ttl): (SystemTime, Duration),
        events: &mut Vec<MeshEvent>,
    ) {
        let snapshot = self.snapshot;
        match self.entries.entry(key) {
            Slot::Occupied(mut slot) => {
                let entry = slot.get_mut();
                entry.seen_in = snapshot;
                if entry.revision >= revision {
                    return; // already applied (resync overlap)
                }
                entry.revision = revision;
                entry.written_at = written_at;
                entry.ttl = ttl;
                if entry.instance.same_content(&instance) {
                    return; // a heartbeat
                }
                let previous = entry.instance.clone();
                entry.instance = instance.clone();
                set_in_service(&mut self.by_service, &mut self.dirty, &instance);
                if previous.status != instance.status {
                    events.push(MeshEvent::StatusChanged {
                        instance: instance.clone(),
                        previous: previous.status,
                        current: instance.status,
                        reason: reason.clone(),
                    });
                }
                let mut without_status = ServiceInstance::clone(&previous);
                without_status.status = instance.status;
                if !without_status.same_content(&instance) {
                    events.push(MeshEvent::Updated {
                        previous,
                        instance,
                        reason,
                    });
                }
            }
            Slot::Vacant(slot) => {
                set_in_service(&mut self.by_service, &mut self.dirty, &instance);
                slot.insert(Entry {
                    instance: instance.clone(),
                    revision,
                    written_at,
                    ttl,
                    seen_in: snapshot,
                });
                events.push(MeshEvent::Registered { instance });
            }
        }
    }

    /// Keeps `key` through the snapshot being read, whatever its new value was.
    fn mark_seen(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.seen_in = self.snapshot;
        }
    }

    /// Revisions of a replaced log: any write to the new one is newer.
    fn forget_revisions(&mut self) {
        for entry in self.entries.values_mut() {
            entry.revision = 0;
        }
    }

    /// The snapshot being read ends with `key` removed, though it named it earlier.
    fn unmark_seen(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            // Snapshot numbers start at 1: 0 is "named by none".
            entry.seen_in = 0;
        }
    }

    /// How many keys other than `key` were unwritten for half their TTL or more at `at`,
    /// counting up to `enough`.
    fn overdue_besides(&self, key: &str, at: SystemTime, enough: usize) -> usize {
        if enough == 0 {
            return 0;
        }
        let mut overdue = 0;
        for (other, entry) in &self.entries {
            let age = at
                .duration_since(entry.written_at)
                .unwrap_or(Duration::ZERO);
            if age >= entry.ttl / 2 && other != key {
                overdue += 1;
                if overdue >= enough {
                    break;
                }
            }
        }
        overdue
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        let service = &entry.instance.service;
        if let Some(instances) = self.by_service.get_mut(service) {
            instances.remove(&entry.instance.id);
        }
        self.dirty.insert(service.clone());
        Some(entry)
    }

    /// Publishes a new snapshot for every service changed since the last flush.
    fn flush(&mut self, registry: &RegistryView) {
        registry.ensure_slots(self.dirty.iter().map(String::as_str));
        for service in self.dirty.drain() {
            // A cheap copy: the snapshot shares the map's nodes with the index.
            let instances = self.by_service.get(&service).cloned().unwrap_or_default();
            registry
                .slot_or_insert(&service)
                .store(ServiceSnapshot::new(instances));
        }
    }
}

/// A malformed or refused put in a snapshot keeps what we held, exactly as it does live
/// (where a removal before it in the snapshot has already dropped the key).
fn keep_held(index: &mut Index, removals: &HashMap<String, (RemovalCause, u64)>, key: &str) {
    if !removals.contains_key(key) {
        index.mark_seen(key);
    }
}

/// Puts `instance` in its service's map and marks the service for the next flush.
fn set_in_service(
    by_service: &mut FastMap<String, InstanceMap>,
    dirty: &mut FastSet<String>,
    instance: &Arc<ServiceInstance>,
) {
    // Look up before inserting: a cold start does this 100k times, allocations add up.
    match by_service.get_mut(&instance.service) {
        Some(instances) => {
            instances.insert(instance.id, instance.clone());
        }
        None => {
            by_service.insert(
                instance.service.clone(),
                InstanceMap::unit(instance.id, instance.clone()),
            );
        }
    }
    if !dirty.contains(&instance.service) {
        dirty.insert(instance.service.clone());
    }
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
mod tests {
    use super::*;
    use crate::protocol::InstanceRecord;
    use uuid::Uuid;

    /// Instance `n` of service `svc`, on 10.0.0.n port n.
    fn instance(n: u8) -> ServiceInstance {
        ServiceInstance::builder("svc", format!("10.0.0.{n}"), u16::from(n))
            .build()
            .unwrap()
    }

    fn put(instance: &ServiceInstance, revision: u64) -> KvChange {
        let record = InstanceRecord {
            v: PROTOCOL_VERSION,
            instance: Arc::new(instance.clone()),
            ttl_ms: 10_000,
            reason: None,
        };
        KvChange::Put {
            key: instance.key(),
            value: record.encode().unwrap().into(),
            revision,
            written_at: SystemTime::now(),
        }
    }

    /// Runs a view task over `items` and returns the ids it ends up holding.
    async fn view_after(items: Vec<WatchItem>) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = instances_after(items).await.iter().map(|i| i.id).collect();
        ids.sort();
        ids
    }

    /// Runs a view task over `items` and returns the instances of `svc` it ends up holding.
    async fn instances_after(items: Vec<WatchItem>) -> Vec<Arc<ServiceInstance>> {
        ViewTask::run_over(items, Arc::new(EventBus::default())).await
    }

    #[tokio::test]
    async fn after_the_log_is_replaced_writes_at_lower_revisions_apply() {
        let a = instance(1);
        let mut healthy = a.clone();
        healthy.status = crate::InstanceStatus::Healthy;
        let held = instances_after(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 500)]),
            WatchItem::SnapshotEnd,
            // The bucket made anew: its revisions start again.
            WatchItem::LogReplaced,
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1)]),
            WatchItem::SnapshotEnd,
            WatchItem::Change(put(&healthy, 2)),
        ])
        .await;
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].status, crate::InstanceStatus::Healthy);
    }

    #[tokio::test]
    async fn a_snapshot_abandoned_half_way_does_not_keep_what_only_it_named() {
        let a = instance(1);
        let b = instance(2);
        let held = view_after(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1), put(&b, 2)]),
            WatchItem::SnapshotEnd,
            // A resync that fails after naming `a`, then a full one that names only `b`.
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1)]),
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&b, 2)]),
            WatchItem::SnapshotEnd,
        ])
        .await;
        assert_eq!(held, vec![b.id]);
    }

    fn deregistered(instance: &ServiceInstance, revision: u64) -> KvChange {
        KvChange::Removed {
            key: instance.key(),
            cause: RemovalCause::Deregistered { reason: None },
            revision,
            at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn a_key_removed_while_the_snapshot_streams_in_is_gone_when_it_ends() {
        let a = instance(1);
        let b = instance(2);
        // The snapshot names `a`, then `a` is deregistered before it ends.
        let held = view_after(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1), put(&b, 2)]),
            WatchItem::SnapshotPart(vec![deregistered(&a, 3)]),
            WatchItem::SnapshotEnd,
        ])
        .await;
        assert_eq!(held, vec![b.id]);
    }

    #[tokio::test]
    async fn a_refused_write_after_a_removal_in_one_snapshot_does_not_bring_the_key_back() {
        let a = instance(1);
        let refused = KvChange::Refused {
            key: a.key(),
            revision: 3,
            why: "record without Nats-TTL".into(),
        };
        let held = view_after(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1)]),
            WatchItem::SnapshotPart(vec![deregistered(&a, 2), refused]),
            WatchItem::SnapshotEnd,
        ])
        .await;
        assert!(held.is_empty(), "still held {held:?}");
    }

    #[tokio::test]
    async fn a_key_registered_again_after_its_removal_in_one_snapshot_stays() {
        let a = instance(1);
        let held = view_after(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1), deregistered(&a, 2), put(&a, 3)]),
            WatchItem::SnapshotEnd,
        ])
        .await;
        assert_eq!(held, vec![a.id]);
    }

    #[tokio::test]
    async fn a_snapshot_with_no_parts_empties_the_view() {
        let a = instance(1);
        let held = view_after(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(vec![put(&a, 1)]),
            WatchItem::SnapshotEnd,
            WatchItem::SnapshotEnd,
        ])
        .await;
        assert!(held.is_empty(), "still held {held:?}");
    }
}

/// What a view task does with expiries, refusals and its own end, on a memory store the
/// test can read (the behaviours cargo-mutants found no lib test for).
#[cfg(test)]
mod task_tests {
    use super::*;
    use crate::protocol::InstanceRecord;
    use crate::store::MemoryStore;

    const TTL: Duration = Duration::from_secs(10);
    const WAIT: Duration = Duration::from_secs(5);

    fn instance(n: u8) -> ServiceInstance {
        ServiceInstance::builder("svc", format!("10.0.0.{n}"), u16::from(n))
            .build()
            .unwrap()
    }

    /// A put of `instance` at `revision`, stored `ago` before now with the 10 s TTL.
    fn put_at(instance: &ServiceInstance, revision: u64, ago: Duration) -> KvChange {
        let record = InstanceRecord {
            v: PROTOCOL_VERSION,
            instance: Arc::new(instance.clone()),
            ttl_ms: 10_000,
            reason: None,
        };
        KvChange::Put {
            key: instance.key(),
            value: record.encode().unwrap().into(),
            revision,
            written_at: SystemTime::now() - ago,
        }
    }

    fn expired_now(instance: &ServiceInstance, revision: u64) -> KvChange {
        KvChange::Removed {
            key: instance.key(),
            cause: RemovalCause::Expired,
            revision,
            at: SystemTime::now(),
        }
    }

    /// A running view task fed by the test.
    struct Run {
        store: MemoryStore,
        stats: Arc<MeshStats>,
        registry: Arc<RegistryView>,
        items: mpsc::UnboundedSender<WatchItem>,
        _open: watch::Sender<bool>,
    }

    impl Run {
        fn start(rule: SelfPreservation, publish_expired: bool) -> Run {
            let store = MemoryStore::new();
            let stats = Arc::new(MeshStats::default());
            let registry = Arc::new(RegistryView::default());
            let (open, closing) = watch::channel(false);
            let task = ViewTask {
                store: Store::Memory(store.clone()),
                registry: registry.clone(),
                bus: Arc::new(EventBus::default()),
                stats: stats.clone(),
                ready: watch::channel(false).0,
                peer_id: "test".into(),
                publish_expired,
                self_preservation: rule,
                applied: Arc::default(),
                alerts: Arc::default(),
                closing,
            };
            let (items, rx) = mpsc::unbounded_channel();
            tokio::spawn(task.run(rx));
            Run {
                store,
                stats,
                registry,
                items,
                _open: open,
            }
        }

        fn send(&self, items: Vec<WatchItem>) {
            for item in items {
                self.items.send(item).unwrap();
            }
        }

        /// Sends a snapshot of `changes`.
        fn snapshot(&self, changes: Vec<KvChange>) {
            self.send(vec![
                WatchItem::SnapshotBegin,
                WatchItem::SnapshotPart(changes),
                WatchItem::SnapshotEnd,
            ]);
        }

        fn held(&self) -> Vec<Arc<ServiceInstance>> {
            self.registry
                .slot("svc")
                .map(|slot| slot.load().instances().to_vec())
                .unwrap_or_default()
        }

        /// Waits until `done` holds of the instances held, or panics naming `what`.
        async fn until(&self, what: &str, done: impl Fn(&[Arc<ServiceInstance>]) -> bool) {
            let deadline = Instant::now() + WAIT;
            while !done(&self.held()) {
                assert!(Instant::now() < deadline, "never {what}: {:?}", self.held());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        fn expired_events(&self) -> usize {
            self.store
                .events()
                .iter()
                .filter(|e| e.event == EventName::Expired)
                .count()
        }
    }

    #[tokio::test]
    async fn an_expiry_is_recorded_once_and_not_at_all_by_a_peer_that_records_none() {
        for publish in [true, false] {
            let run = Run::start(SelfPreservation::disabled(), publish);
            let a = instance(1);
            run.snapshot(vec![put_at(&a, 1, TTL)]);
            run.until("held", |v| v.len() == 1).await;
            run.send(vec![WatchItem::Change(expired_now(&a, 2))]);
            run.until("expired", |v| v.is_empty()).await;
            let deadline = Instant::now() + WAIT;
            while publish && run.expired_events() == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                run.expired_events(),
                usize::from(publish),
                "publish {publish}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_write_is_counted_and_leaves_the_instance() {
        let run = Run::start(SelfPreservation::disabled(), false);
        let a = instance(1);
        run.snapshot(vec![put_at(&a, 1, Duration::ZERO)]);
        run.send(vec![WatchItem::Change(KvChange::Refused {
            key: a.key(),
            revision: 2,
            why: "record without Nats-TTL".into(),
        })]);
        let deadline = Instant::now() + WAIT;
        while run
            .stats
            .malformed_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "the refused write was not counted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(run.held().len(), 1);
    }

    #[tokio::test]
    async fn one_expiry_among_many_overdue_keys_is_held_and_an_isolated_one_is_not() {
        for others_overdue in [true, false] {
            let run = Run::start(SelfPreservation::default(), false);
            let a = instance(1);
            // Four others, unwritten for 6 s of their 10 s TTL (overdue), or just written.
            let age = if others_overdue {
                Duration::from_secs(6)
            } else {
                Duration::ZERO
            };
            let mut changes = vec![put_at(&a, 1, TTL)];
            changes.extend((2..6).map(|n| put_at(&instance(n), u64::from(n), age)));
            run.snapshot(changes);
            run.until("all five", |v| v.len() == 5).await;
            // `a`'s marker comes on time, one TTL after its last write.
            run.send(vec![WatchItem::Change(expired_now(&a, 10))]);
            if others_overdue {
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(run.held().len(), 5, "a burst's expiry was applied");
                assert_eq!(
                    run.stats
                        .preserved
                        .load(std::sync::atomic::Ordering::Relaxed),
                    1
                );
            } else {
                run.until("a expired", |v| v.len() == 4).await;
            }
        }
    }

    #[tokio::test]
    async fn a_held_expiry_is_applied_after_its_grace_unless_the_store_shows_a_newer_write() {
        for written_since in [false, true] {
            let run = Run::start(
                SelfPreservation {
                    grace: Duration::ZERO,
                    ..SelfPreservation::default()
                },
                false,
            );
            let a = instance(1);
            if written_since {
                // The owner wrote the key again (revisions 1 to 3 in the store), which this
                // peer's watch has not shown.
                let record = InstanceRecord {
                    v: PROTOCOL_VERSION,
                    instance: Arc::new(a.clone()),
                    ttl_ms: 10_000,
                    reason: None,
                };
                for _ in 0..3 {
                    run.store
                        .put(&a.key(), &record, TTL, crate::store::WriteCondition::Any)
                        .unwrap();
                }
            }
            // Written 30 s ago with a 10 s TTL: a late marker, held.
            run.snapshot(vec![put_at(&a, 1, Duration::from_secs(30))]);
            run.until("held", |v| v.len() == 1).await;
            run.send(vec![WatchItem::Change(expired_now(&a, 2))]);
            if written_since {
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(run.held().len(), 1, "expired though written since");
            } else {
                run.until("expired after the grace", |v| v.is_empty()).await;
            }
        }
    }

    #[tokio::test]
    async fn a_task_dropped_before_it_runs_releases_writers_waiting_on_it() {
        let applied: Arc<Watermark> = Arc::default();
        let task = ViewTask {
            store: Store::Memory(MemoryStore::new()),
            registry: Arc::default(),
            bus: Arc::new(EventBus::default()),
            stats: Arc::default(),
            ready: watch::channel(false).0,
            peer_id: "test".into(),
            publish_expired: false,
            self_preservation: SelfPreservation::disabled(),
            applied: applied.clone(),
            alerts: Arc::default(),
            closing: watch::channel(false).1,
        };
        drop(task);
        let started = Instant::now();
        assert!(!applied.wait_for(1, WAIT).await);
        assert!(
            started.elapsed() < WAIT / 2,
            "waited {:?}",
            started.elapsed()
        );
    }
}
