//! The writer side of the view: every key the view holds, by key and by service, and
//! which services changed since the last flush to the read side.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

// The index hashes every key of every change: foldhash (randomly seeded per map) is several
// times faster than SipHash on these short keys.
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use super::registry::{InstanceMap, RegistryView, ServiceSnapshot};
use super::MeshEvent;
use crate::instance::{ServiceInstance, SharedStr, Timestamp};
use crate::store::RemovalCause;
use uuid::Uuid;

/// What the view holds of one key. Kept small: a view holds one per instance.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(super) instance: Arc<ServiceInstance>,
    pub(super) revision: u64,
    /// When the key was last written (the server's time): what self-preservation judges
    /// its expiry by, and what tools show as the last heartbeat.
    pub(super) written_at: Timestamp,
    /// The TTL it was written with, in milliseconds.
    ttl_ms: u32,
    /// The digest of the record's bytes (see `ViewState::digest`).
    pub(super) digest: u64,
    /// The last snapshot (see `Index::snapshot`) that named this key.
    pub(super) seen_in: u32,
}

impl Entry {
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }
}

/// A TTL as the entry keeps it (TTLs beyond 49 days are held as 49 days).
fn ttl_ms(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX)
}

/// The entries of one view, by instance id. The view task writes them; tools read the
/// last write of an instance through the registry, under the same lock (uncontended but
/// for those rare reads).
pub(crate) type Entries = Mutex<FastMap<Uuid, Entry>>;

/// The writer side of the view.
///
/// Entries are keyed by instance id, not by the bucket key (`<service>.<id>`): a key's
/// string would cost each entry as much again. A key finds its entry by the id it ends
/// with, and only when the entry's service is the key's (an id is unique in the mesh: a
/// write of a held id under another service is refused).
#[derive(Debug)]
pub(super) struct Index {
    entries: Arc<Entries>,
    pub(super) by_service: FastMap<SharedStr, InstanceMap>,
    pub(super) dirty: FastSet<SharedStr>,
    /// Counts snapshots. Entries a snapshot names are marked with its number, so what it
    /// did not name is found without a set of 100k key copies.
    pub(super) snapshot: u32,
}

/// The service and the instance id a bucket key names (`None`: not an instance key).
pub(super) fn split_key(key: &str) -> Option<(&str, Uuid)> {
    let (service, id) = key.split_once('.')?;
    Some((service, Uuid::try_parse(id).ok()?))
}

impl Index {
    /// An empty index whose entries the registry can read.
    pub(super) fn new(registry: &RegistryView) -> Index {
        Index {
            entries: registry.attach_entries(),
            by_service: FastMap::default(),
            dirty: FastSet::default(),
            snapshot: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FastMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of bucket key `key` in `entries`.
    fn find<'a>(entries: &'a mut FastMap<Uuid, Entry>, key: &str) -> Option<&'a mut Entry> {
        let (service, id) = split_key(key)?;
        entries
            .get_mut(&id)
            .filter(|entry| entry.instance.service == service)
    }

    /// The revision of bucket key `key`, when the view holds it.
    pub(super) fn revision(&self, key: &str) -> Option<u64> {
        Self::find(&mut self.lock(), key).map(|entry| entry.revision)
    }

    /// When bucket key `key` was last written and its TTL, when the view holds it.
    pub(super) fn written(&self, key: &str) -> Option<(SystemTime, Duration)> {
        Self::find(&mut self.lock(), key)
            .map(|entry| (entry.written_at.to_system_time(), entry.ttl()))
    }

    /// Whether the view holds bucket key `key`.
    pub(super) fn holds(&self, key: &str) -> bool {
        Self::find(&mut self.lock(), key).is_some()
    }

    /// The number of keys held.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The keys the current snapshot has not named.
    pub(super) fn unseen(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|entry| entry.seen_in != self.snapshot)
            .map(|entry| entry.instance.key())
            .collect()
    }

    /// A live write of `key` whose record has `digest`: when it is the record held (a
    /// heartbeat), takes its revision and time and returns true; false when the write
    /// must be decoded and applied (a change, an unknown key, an old revision).
    pub(super) fn heartbeat(
        &mut self,
        key: &str,
        digest: u64,
        revision: u64,
        written_at: SystemTime,
    ) -> bool {
        let mut entries = self.lock();
        let Some(entry) = Self::find(&mut entries, key) else {
            return false;
        };
        if entry.digest != digest || entry.revision >= revision {
            return false;
        }
        entry.revision = revision;
        entry.written_at = written_at.into();
        true
    }

    /// Applies a decoded put (its key checked against the instance); false when the
    /// instance's id is held under another service, and nothing changed.
    pub(super) fn upsert(
        &mut self,
        instance: Arc<ServiceInstance>,
        revision: u64,
        reason: Option<String>,
        (written_at, ttl, digest): (SystemTime, Duration, u64),
        events: &mut Vec<MeshEvent>,
    ) -> bool {
        let snapshot = self.snapshot;
        let (written_at, ttl_ms) = (Timestamp::from(written_at), ttl_ms(ttl));
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.entry(instance.id) {
            Slot::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if entry.instance.service != instance.service {
                    return false;
                }
                entry.seen_in = snapshot;
                if entry.revision >= revision {
                    return true; // already applied (resync overlap)
                }
                entry.revision = revision;
                entry.written_at = written_at;
                entry.ttl_ms = ttl_ms;
                entry.digest = digest;
                if entry.instance.same_content(&instance) {
                    return true; // a heartbeat
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
                    ttl_ms,
                    digest,
                    seen_in: snapshot,
                });
                events.push(MeshEvent::Registered { instance });
            }
        }
        true
    }

    /// Keeps `key` through the snapshot being read, whatever its new value was.
    pub(super) fn mark_seen(&mut self, key: &str) {
        let snapshot = self.snapshot;
        if let Some(entry) = Self::find(&mut self.lock(), key) {
            entry.seen_in = snapshot;
        }
    }

    /// Revisions of a replaced log: any write to the new one is newer.
    pub(super) fn forget_revisions(&mut self) {
        for entry in self.lock().values_mut() {
            entry.revision = 0;
        }
    }

    /// The snapshot being read ends with `key` removed, though it named it earlier.
    pub(super) fn unmark_seen(&mut self, key: &str) {
        if let Some(entry) = Self::find(&mut self.lock(), key) {
            // Snapshot numbers start at 1: 0 is "named by none".
            entry.seen_in = 0;
        }
    }

    /// How many keys other than `key` were unwritten for half their TTL or more at `at`,
    /// counting up to `enough`.
    pub(super) fn overdue_besides(&self, key: &str, at: SystemTime, enough: usize) -> usize {
        if enough == 0 {
            return 0;
        }
        let mine = split_key(key).map(|(_, id)| id);
        let mut overdue = 0;
        for (other, entry) in self.lock().iter() {
            let age = at
                .duration_since(entry.written_at.to_system_time())
                .unwrap_or(Duration::ZERO);
            if age >= entry.ttl() / 2 && Some(*other) != mine {
                overdue += 1;
                if overdue >= enough {
                    break;
                }
            }
        }
        overdue
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = {
            let mut entries = self.lock();
            let id = Self::find(&mut entries, key)?.instance.id;
            entries.remove(&id)?
        };
        let service = &entry.instance.service;
        if let Some(instances) = self.by_service.get_mut(service) {
            instances.remove(&entry.instance.id);
        }
        self.dirty.insert(service.clone());
        Some(entry)
    }

    /// Publishes a new snapshot for every service changed since the last flush.
    pub(super) fn flush(&mut self, registry: &RegistryView) {
        registry.ensure_slots(self.dirty.iter().map(SharedStr::as_str));
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
pub(super) fn keep_held(
    index: &mut Index,
    removals: &HashMap<String, (RemovalCause, u64)>,
    key: &str,
) {
    if !removals.contains_key(key) {
        index.mark_seen(key);
    }
}

/// Puts `instance` in its service's map and marks the service for the next flush.
fn set_in_service(
    by_service: &mut FastMap<SharedStr, InstanceMap>,
    dirty: &mut FastSet<SharedStr>,
    instance: &Arc<ServiceInstance>,
) {
    // Look up before inserting: a cold start does this 100k times, allocations add up.
    match by_service.get_mut(instance.service.as_str()) {
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
    if !dirty.contains(instance.service.as_str()) {
        dirty.insert(instance.service.clone());
    }
}
