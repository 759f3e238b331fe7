//! The writer side of the view: every key the view holds, by key and by service, and
//! which services changed since the last flush to the read side.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

// The index hashes every key of every change: foldhash (randomly seeded per map) is several
// times faster than SipHash on these short keys.
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use super::registry::{InstanceMap, RegistryView, ServiceSnapshot};
use super::MeshEvent;
use crate::instance::ServiceInstance;
use crate::store::RemovalCause;
use uuid::Uuid;

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) instance: Arc<ServiceInstance>,
    pub(super) revision: u64,
    /// When the key was last written (the server's time) and the TTL it was written with:
    /// what self-preservation judges its expiry by.
    pub(super) written_at: SystemTime,
    pub(super) ttl: Duration,
    /// The digest of the record's bytes (see `ViewState::digest`).
    pub(super) digest: u64,
    /// The last snapshot (see `Index::snapshot`) that named this key.
    pub(super) seen_in: u64,
}

/// The writer side of the view.
///
/// Entries are keyed by instance id, not by the bucket key (`<service>.<id>`): a key's
/// string would cost each entry as much again. A key finds its entry by the id it ends
/// with, and only when the entry's service is the key's (an id is unique in the mesh: a
/// write of a held id under another service is refused).
#[derive(Debug)]
pub(super) struct Index {
    pub(super) entries: FastMap<Uuid, Entry>,
    pub(super) by_service: FastMap<String, InstanceMap>,
    pub(super) dirty: FastSet<String>,
    /// Counts snapshots. Entries a snapshot names are marked with its number, so what it
    /// did not name is found without a set of 100k key copies.
    pub(super) snapshot: u64,
}

/// The service and the instance id a bucket key names (`None`: not an instance key).
pub(super) fn split_key(key: &str) -> Option<(&str, Uuid)> {
    let (service, id) = key.split_once('.')?;
    Some((service, Uuid::try_parse(id).ok()?))
}

impl Index {
    /// The entry of bucket key `key`.
    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        let (service, id) = split_key(key)?;
        self.entries
            .get(&id)
            .filter(|entry| entry.instance.service == service)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let (service, id) = split_key(key)?;
        self.entries
            .get_mut(&id)
            .filter(|entry| entry.instance.service == service)
    }

    /// Whether the view holds bucket key `key`.
    pub(super) fn holds(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A live write of `key` whose record has `digest`: when it is the record held (a
    /// heartbeat), takes its revision and time and returns the instance's id; `None` when
    /// the write must be decoded and applied (a change, an unknown key, an old revision).
    pub(super) fn heartbeat(
        &mut self,
        key: &str,
        digest: u64,
        revision: u64,
        written_at: SystemTime,
    ) -> Option<uuid::Uuid> {
        let entry = self.get_mut(key)?;
        if entry.digest != digest || entry.revision >= revision {
            return None;
        }
        entry.revision = revision;
        entry.written_at = written_at;
        Some(entry.instance.id)
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
        match self.entries.entry(instance.id) {
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
                entry.ttl = ttl;
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
                    ttl,
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
        if let Some(entry) = self.get_mut(key) {
            entry.seen_in = snapshot;
        }
    }

    /// Revisions of a replaced log: any write to the new one is newer.
    pub(super) fn forget_revisions(&mut self) {
        for entry in self.entries.values_mut() {
            entry.revision = 0;
        }
    }

    /// The snapshot being read ends with `key` removed, though it named it earlier.
    pub(super) fn unmark_seen(&mut self, key: &str) {
        if let Some(entry) = self.get_mut(key) {
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
        let mine = self.get(key).map(|entry| entry.instance.id);
        let mut overdue = 0;
        for (other, entry) in &self.entries {
            let age = at
                .duration_since(entry.written_at)
                .unwrap_or(Duration::ZERO);
            if age >= entry.ttl / 2 && Some(*other) != mine {
                overdue += 1;
                if overdue >= enough {
                    break;
                }
            }
        }
        overdue
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let id = self.get(key)?.instance.id;
        let entry = self.entries.remove(&id)?;
        let service = &entry.instance.service;
        if let Some(instances) = self.by_service.get_mut(service) {
            instances.remove(&entry.instance.id);
        }
        self.dirty.insert(service.clone());
        Some(entry)
    }

    /// Publishes a new snapshot for every service changed since the last flush.
    pub(super) fn flush(&mut self, registry: &RegistryView) {
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
