//! The read side of the peer view: per-service snapshots swapped atomically, so reads
//! never touch the network and never wait for the view (only the first readers of a new
//! snapshot's ordered slice wait for one of them to build it).

// Picks by name hash the service name: foldhash is several times faster than SipHash.
use foldhash::HashMap as FastMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use super::index::Entries;

use crate::instance::{InstanceStatus, ServiceInstance};

/// The instances of one service at one moment, ordered by instance id.
///
/// Publishing a snapshot costs the view next to nothing whatever the service's size: it
/// shares its instance map with the view's index (a persistent map, copied only along the
/// paths later changes touch). The ordered slice [`instances`](Self::instances) returns is
/// built on the first call and kept, so a service of 100k instances under churn costs its
/// O(n) copy only to readers of the slice, once per snapshot.
#[derive(Debug, Default)]
pub struct ServiceSnapshot {
    by_id: InstanceMap,
    ordered: OnceLock<Box<[Arc<ServiceInstance>]>>,
}

/// One service's instances by id, shared between the view's index and its snapshots.
pub(crate) type InstanceMap = imbl::OrdMap<uuid::Uuid, Arc<ServiceInstance>>;

impl ServiceSnapshot {
    pub(crate) fn new(by_id: InstanceMap) -> Self {
        ServiceSnapshot {
            by_id,
            ordered: OnceLock::new(),
        }
    }

    /// All instances, whatever their status, ordered by id. The first call on a snapshot
    /// builds the slice (O(n)); later calls, from any thread, return the same one. To
    /// look at each instance once, [`iter`](Self::iter) builds nothing.
    pub fn instances(&self) -> &[Arc<ServiceInstance>] {
        self.ordered
            .get_or_init(|| self.by_id.values().cloned().collect())
    }

    /// All instances, whatever their status, ordered by id, straight from the snapshot's
    /// map.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServiceInstance>> {
        self.by_id.values()
    }

    /// Instances with the given status.
    pub fn with_status(
        &self,
        status: InstanceStatus,
    ) -> impl Iterator<Item = &Arc<ServiceInstance>> {
        self.by_id.values().filter(move |i| i.status == status)
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when the service has no instance.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A live handle on one service's snapshot; cheap to keep and to read.
#[derive(Debug, Default)]
pub struct ServiceSlot {
    snapshot: ArcSwap<ServiceSnapshot>,
}

impl ServiceSlot {
    /// The current snapshot.
    pub fn load(&self) -> Arc<ServiceSnapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot without touching its reference count (hot paths).
    pub(crate) fn peek(&self) -> arc_swap::Guard<Arc<ServiceSnapshot>> {
        self.snapshot.load()
    }

    pub(crate) fn store(&self, snapshot: ServiceSnapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}

/// Every service this peer knows. Slots are never removed, so a cached [`ServiceSlot`]
/// stays live when a service empties and fills again.
#[derive(Debug, Default)]
pub(crate) struct RegistryView {
    slots: ArcSwap<FastMap<String, Arc<ServiceSlot>>>,
    /// The entries of each view task writing here (one per shard), for the last write of
    /// an instance: tools read it, picks do not.
    entries: std::sync::Mutex<Vec<Arc<Entries>>>,
}

impl RegistryView {
    /// A new entry map for a view task writing into this registry.
    pub(super) fn attach_entries(&self) -> Arc<Entries> {
        let entries = Arc::new(Entries::default());
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entries.clone());
        entries
    }

    /// When instance `id`'s key was last written, as the backend stored it.
    pub(crate) fn last_write(&self, id: uuid::Uuid) -> Option<std::time::SystemTime> {
        let views = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        views.iter().find_map(|entries| {
            let entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .get(&id)
                .map(|entry| entry.written_at.to_system_time())
        })
    }

    pub(crate) fn slot(&self, service: &str) -> Option<Arc<ServiceSlot>> {
        self.slots.load().get(service).cloned()
    }

    /// The slot of `service`, created if new. Safe from any thread: the map is replaced
    /// with compare-and-swap, so concurrent inserts never lose a slot.
    pub(crate) fn slot_or_insert(&self, service: &str) -> Arc<ServiceSlot> {
        loop {
            if let Some(slot) = self.slot(service) {
                return slot;
            }
            // Slots are never removed: the second lookup finds it.
            self.ensure_slots(std::iter::once(service));
        }
    }

    /// Creates the slots of every service in `services` that has none, in one swap of the
    /// map: one swap per new service would copy the map once per service (a cold start
    /// over 1,000 services copied it 1,000 times).
    pub(crate) fn ensure_slots<'a>(&self, services: impl Iterator<Item = &'a str> + Clone) {
        let slots = self.slots.load();
        if services.clone().all(|service| slots.contains_key(service)) {
            return;
        }
        drop(slots);
        self.slots.rcu(|slots| {
            let mut slots = FastMap::clone(slots);
            for service in services.clone() {
                if !slots.contains_key(service) {
                    slots.insert(service.to_string(), Arc::new(ServiceSlot::default()));
                }
            }
            Arc::new(slots)
        });
    }

    /// Names of services with at least one instance, sorted.
    pub(crate) fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .slots
            .load()
            .iter()
            .filter(|(_, slot)| !slot.load().is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn instance_count(&self) -> usize {
        self.slots
            .load()
            .values()
            .map(|slot| slot.load().len())
            .sum()
    }
}
