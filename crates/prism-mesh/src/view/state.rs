//! The view's state between flushes: the index, the snapshot being streamed in, the
//! expiries self-preservation holds, and the events and expiries a flush hands on. The task
//! feeds it watch items in log order and flushes it; it never touches the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use foldhash::HashSet as FastSet;
use tracing::warn;

use super::index::{keep_held, Index};
use super::preservation::{ExpiryFacts, Preservation, SelfPreservation, Verdict};
use super::registry::RegistryView;
use super::MeshEvent;
use crate::instance::{Interner, ServiceInstance};
use crate::metrics::MeshStats;
use crate::protocol::EventName;
use crate::store::{KvChange, RemovalCause, WatchItem};
use crate::sync::KeyAlerts;

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

/// A removal no owner announces (an expiry, or a delete or purge from outside the mesh):
/// what the event stream should record, under the bucket revision of the removal.
pub(super) struct RemovalToRecord {
    pub(super) instance: Arc<ServiceInstance>,
    pub(super) revision: u64,
    pub(super) event: EventName,
    pub(super) reason: &'static str,
}

/// What a flush hands on: the events for subscribers and the removals to record.
pub(super) struct Flushed {
    pub(super) events: Vec<MeshEvent>,
    pub(super) removals: Vec<RemovalToRecord>,
}

/// The reason recorded with an expiry.
const EXPIRED: &str = "ttl";
/// The reason of a plain KV delete of an instance's key.
const DELETED_OUTSIDE: &str = "removed from outside the mesh (a KV delete, not its owner)";
/// The reason of a KV purge of an instance's key.
const PURGED_OUTSIDE: &str = "removed from outside the mesh (a KV purge)";

/// Why a put of an id the view holds under another service is refused.
const ID_ELSEWHERE: &str = "its instance id is held under another service";

/// The view between flushes.
pub(super) struct ViewState {
    index: Index,
    preservation: Preservation,
    /// The snapshot being streamed in, if one is.
    resync: Option<Resync>,
    /// True once a full snapshot was applied.
    synced: bool,
    /// The highest revision applied so far (what writers may wait for after a flush).
    high: u64,
    events: Vec<MeshEvent>,
    removals: Vec<RemovalToRecord>,
    registry: Arc<RegistryView>,
    stats: Arc<MeshStats>,
    alerts: Arc<KeyAlerts>,
    grace: Duration,
    /// The interest generation of the snapshot streaming in, and the services it adds.
    loading: Option<(u64, FastSet<String>)>,
    /// The interest generation of the last complete snapshot.
    loaded: u64,
    /// Digests of records: a heartbeat rewrites its key's record unchanged, and is known
    /// by its digest without decoding it. Seeded per view, so no writer can aim a
    /// collision at it.
    digests: foldhash::fast::RandomState,
    /// One copy of each service name, scheme, zone, tag and metadata key held.
    strings: Interner,
}

impl ViewState {
    pub(super) fn new(
        rule: SelfPreservation,
        registry: Arc<RegistryView>,
        stats: Arc<MeshStats>,
        alerts: Arc<KeyAlerts>,
    ) -> ViewState {
        ViewState {
            index: Index::new(&registry),
            preservation: Preservation::new(rule),
            resync: None,
            synced: false,
            high: 0,
            events: Vec::new(),
            removals: Vec::new(),
            registry,
            stats,
            alerts,
            grace: rule.grace,
            loading: None,
            loaded: 0,
            digests: foldhash::fast::RandomState::default(),
            strings: Interner::default(),
        }
    }

    /// The interest generation of the last complete snapshot.
    pub(super) fn loaded(&self) -> u64 {
        self.loaded
    }

    fn digest(&self, value: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.digests.hash_one(value)
    }

    /// True while a snapshot streams in: nothing may be published before it ends.
    pub(super) fn in_snapshot(&self) -> bool {
        self.resync.is_some()
    }

    /// True once a full snapshot was applied.
    pub(super) fn synced(&self) -> bool {
        self.synced
    }

    /// The highest revision applied.
    pub(super) fn high(&self) -> u64 {
        self.high
    }

    /// When a waiting expiry must next be decided (none while a snapshot streams in:
    /// expiries are decided after it).
    pub(super) fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.preservation
            .next_deadline()
            .filter(|_| self.resync.is_none())
    }

    /// Applies one watch item. `LogReplaced` returns true: the watermark writers wait on
    /// starts again too.
    pub(super) fn apply(&mut self, item: WatchItem) -> bool {
        match item {
            WatchItem::Loading { generation, added } => {
                self.loading = Some((generation, added.into_iter().collect()));
            }
            WatchItem::SnapshotBegin => {
                // A snapshot taken because the interest grew follows no interruption.
                let grown = self
                    .loading
                    .as_ref()
                    .is_some_and(|(_, added)| !added.is_empty());
                if self.synced && !grown {
                    self.preservation.interrupted(SystemTime::now());
                }
                self.resync = Some(self.begin_snapshot());
            }
            WatchItem::Resumed => {
                MeshStats::incr(&self.stats.resumes);
                self.preservation.interrupted(SystemTime::now());
            }
            WatchItem::SnapshotPart(changes) => {
                let top = changes.iter().map(KvChange::revision).max();
                self.high = self.high.max(top.unwrap_or(0));
                let mut resync = match self.resync.take() {
                    Some(resync) => resync,
                    None => self.begin_snapshot(),
                };
                self.apply_snapshot_part(&mut resync, changes);
                self.resync = Some(resync);
                // A service just followed is loaded, not announced: its instances were
                // registered before this peer looked.
                if let Some((_, added)) = self.loading.as_ref().filter(|(_, a)| !a.is_empty()) {
                    self.events.retain(|event| {
                        !(event.kind() == crate::view::EventKind::Registered
                            && added.contains(event.service()))
                    });
                }
                if !self.synced {
                    // Nobody can subscribe before the first view is ready.
                    self.events.clear();
                }
            }
            WatchItem::SnapshotEnd => {
                // Without parts, a snapshot named nothing.
                let resync = match self.resync.take() {
                    Some(resync) => resync,
                    None => self.begin_snapshot(),
                };
                self.finish_snapshot(resync);
                self.synced = true;
                if let Some((generation, _)) = self.loading.take() {
                    self.loaded = self.loaded.max(generation);
                }
            }
            WatchItem::LogReplaced => {
                // No revision held may hide a write to the new log.
                self.index.forget_revisions();
                self.high = 0;
                return true;
            }
            WatchItem::RolledUp { revision } => self.alerts.rolled_up(revision),
            WatchItem::Change(change) => {
                self.high = self.high.max(change.revision());
                MeshStats::incr(&self.stats.changes_applied);
                self.apply_change(change);
            }
        }
        false
    }

    /// The expiries self-preservation let through are applied; held ones whose grace
    /// ended are returned (key, revision) for the task to check against the store: this
    /// peer's watch may itself be stalled and not have shown the owner writing again.
    pub(super) fn settle_expiries(&mut self) -> Vec<(String, u64)> {
        if !self.preservation.enabled() {
            return Vec::new();
        }
        let mut to_confirm = Vec::new();
        for (key, revision, held) in self.preservation.due() {
            if held {
                to_confirm.push((key, revision));
            } else {
                self.expire_now(key, revision);
            }
        }
        self.stats.preserved.store(
            self.preservation.held() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        to_confirm
    }

    /// What the store said of a held expiry (see `Preservation::confirm`): applied unless
    /// the key was written since.
    pub(super) fn confirmed(&mut self, key: &str, last: Option<Option<(u64, bool)>>) {
        if let Some(revision) = self.preservation.confirm(key, last) {
            self.expire_now(key.to_string(), revision);
        }
    }

    /// Publishes the changed services to readers and hands on what the flush produced.
    pub(super) fn flush(&mut self) -> Flushed {
        self.index.flush(&self.registry);
        Flushed {
            events: std::mem::take(&mut self.events),
            removals: std::mem::take(&mut self.removals),
        }
    }

    /// Applies an expiry that waited, unless the key was written again since.
    fn expire_now(&mut self, key: String, revision: u64) {
        // Written again since (its revision moved past the expiry's): it lives.
        if self
            .index
            .revision(&key)
            .is_some_and(|held| held > revision)
        {
            return;
        }
        if let Some(entry) = self.index.remove(&key) {
            let event = self.removal_event(entry.instance, RemovalCause::Expired, revision);
            self.events.push(event);
        }
    }

    fn apply_change(&mut self, change: KvChange) {
        self.alerts.changed(change.key(), change.revision());
        match change {
            KvChange::Put {
                key,
                value,
                revision,
                written_at,
            } => {
                let digest = self.digest(&value);
                if self.index.heartbeat(&key, digest, revision, written_at) {
                    // Written again unchanged: an expiry waiting on it is void.
                    self.preservation.forget(&key);
                    MeshStats::incr(&self.stats.heartbeats_seen);
                    return;
                }
                if let Some((instance, reason, ttl)) = self.decode(&key, &value, revision) {
                    let applied = self.index.upsert(
                        instance,
                        revision,
                        reason,
                        (written_at, ttl, digest),
                        &mut self.events,
                    );
                    if applied {
                        // Written again: an expiry waiting on it is void.
                        self.preservation.forget(&key);
                    } else {
                        self.refuse(&key, revision, ID_ELSEWHERE);
                    }
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
                if self.index.holds(&key) {
                    // The marker's revision is the same at every peer: one stored event.
                    self.remove(Removal {
                        key,
                        cause,
                        revision,
                        at: Some(at),
                    });
                } else {
                    self.preservation.forget(&key);
                }
            }
        }
    }

    /// Applies part of a snapshot; what it does not name is settled by `finish_snapshot`.
    /// Within a snapshot a key can come more than once (a write made while it streams):
    /// its last message decides.
    fn apply_snapshot_part(&mut self, resync: &mut Resync, changes: Vec<KvChange>) {
        let removals = &mut resync.removals;
        for change in changes {
            MeshStats::incr(&self.stats.changes_applied);
            self.alerts.changed(change.key(), change.revision());
            match change {
                KvChange::Put {
                    key,
                    value,
                    revision,
                    written_at,
                } => match self.decode(&key, &value, revision) {
                    Some((instance, reason, ttl)) => {
                        let digest = self.digest(&value);
                        let applied = self.index.upsert(
                            instance,
                            revision,
                            reason,
                            (written_at, ttl, digest),
                            &mut self.events,
                        );
                        if applied {
                            // Written again: an earlier removal and a waiting expiry are void.
                            removals.remove(&key);
                            self.preservation.forget(&key);
                        } else {
                            self.refuse(&key, revision, ID_ELSEWHERE);
                        }
                    }
                    None => keep_held(&mut self.index, removals, &key),
                },
                KvChange::Removed {
                    key,
                    cause,
                    revision,
                    at: _,
                } => {
                    // Removed after this snapshot named it: `finish_snapshot` removes it.
                    self.index.unmark_seen(&key);
                    removals.insert(key, (cause, revision));
                }
                KvChange::Refused { key, revision, why } => {
                    keep_held(&mut self.index, removals, &key);
                    self.refuse(&key, revision, &why);
                }
            }
        }
    }

    /// Counts and logs a write the view will not trust; what it held stays.
    fn refuse(&self, key: &str, revision: u64, why: &str) {
        MeshStats::incr(&self.stats.malformed_dropped);
        warn!(key, revision, "ignoring untrusted instance record: {why}");
    }

    /// A snapshot starts: a fresh number, so marks left by an unfinished one count for
    /// nothing.
    fn begin_snapshot(&mut self) -> Resync {
        MeshStats::incr(&self.stats.resyncs);
        self.index.snapshot += 1;
        Resync::default()
    }

    /// Ends a snapshot: what we held and it did not name went away while we were not
    /// looking. The view now equals the snapshot; the difference went out as events.
    fn finish_snapshot(&mut self, resync: Resync) {
        let Resync { mut removals } = resync;
        let gone = self.index.unseen();
        for key in gone {
            // Absent without a trace: its marker expired too while we were away, and the
            // entry's own revision names the expiry. A marker names it by its revision,
            // as live, so every peer records one `expired` event.
            let (cause, revision) = removals.remove(&key).unwrap_or_else(|| {
                let revision = self.index.revision(&key).unwrap_or(0);
                (RemovalCause::Expired, revision)
            });
            // Expiries that happened while we were away belong in the audit trail too.
            self.remove(Removal {
                key,
                cause,
                revision,
                at: None,
            });
        }
    }

    /// Takes a held key out of the view with its event, unless self-preservation holds an
    /// expiry back (`settle_expiries` decides it later).
    fn remove(&mut self, removal: Removal) {
        let Removal {
            key,
            cause,
            revision,
            at,
        } = removal;
        if cause == RemovalCause::Expired && self.preservation.enabled() {
            if let Some((written_at, ttl)) = self.index.written(&key) {
                let facts = ExpiryFacts {
                    written_at,
                    ttl,
                    marker_at: at,
                };
                let view_size = self.index.len();
                let index = &self.index;
                let verdict = self.preservation.expire(
                    key.clone(),
                    revision,
                    facts,
                    view_size,
                    |at, enough| index.overdue_besides(&key, at, enough),
                );
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
                            grace = ?self.grace,
                            "holding an expiry ({why}); the instance stays while its owner may write it again"
                        );
                        self.stats.preserved.store(
                            self.preservation.held() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        return;
                    }
                }
            }
        }
        self.preservation.forget(&key);
        if let Some(entry) = self.index.remove(&key) {
            let event = self.removal_event(entry.instance, cause, revision);
            self.events.push(event);
        }
    }

    /// The event for an instance leaving the view; removals no owner announces are also
    /// queued for the event stream under `revision`.
    fn removal_event(
        &mut self,
        instance: Arc<ServiceInstance>,
        cause: RemovalCause,
        revision: u64,
    ) -> MeshEvent {
        match cause {
            RemovalCause::Expired => {
                MeshStats::incr(&self.stats.expiries);
                self.removals.push(RemovalToRecord {
                    instance: instance.clone(),
                    revision,
                    event: EventName::Expired,
                    reason: EXPIRED,
                });
                MeshEvent::Expired { instance }
            }
            RemovalCause::Deregistered { reason } => MeshEvent::Deregistered { instance, reason },
            RemovalCause::Purged | RemovalCause::Deleted => {
                let reason = if cause == RemovalCause::Purged {
                    PURGED_OUTSIDE
                } else {
                    DELETED_OUTSIDE
                };
                self.removals.push(RemovalToRecord {
                    instance: instance.clone(),
                    revision,
                    event: EventName::Deregistered,
                    reason,
                });
                MeshEvent::Deregistered {
                    instance,
                    reason: Some(reason.to_string()),
                }
            }
        }
    }

    /// Decodes a record and checks it belongs to its key; `None` (counted) when not.
    fn decode(
        &mut self,
        key: &str,
        value: &[u8],
        revision: u64,
    ) -> Option<(Arc<ServiceInstance>, Option<String>, Duration)> {
        match crate::protocol::decode_put(key, value) {
            Ok(mut put) => {
                // Freshly decoded, so not shared yet: its strings join the view's copies.
                if let Some(instance) = Arc::get_mut(&mut put.instance) {
                    instance.intern(&mut self.strings);
                }
                Some((put.instance, put.reason, put.ttl))
            }
            Err(why) => {
                MeshStats::incr(&self.stats.malformed_dropped);
                warn!(key, revision, "ignoring malformed instance record: {why}");
                None
            }
        }
    }
}
