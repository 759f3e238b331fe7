//! The registry as it was at a past moment, rebuilt by folding the audit trail's events:
//! registered, updated and status events set an instance's state; deregistered and expired
//! events remove it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use super::StoredEvent;
use crate::instance::ServiceInstance;
use crate::protocol::{EventName, EventRecord};

/// The registry as the event stream had made it up to one stream sequence.
///
/// ```
/// use prism_mesh::PastRegistry;
///
/// let empty = PastRegistry::default();
/// assert!(empty.is_empty() && empty.is_complete());
/// assert_eq!(empty.diff(&PastRegistry::default()).added.len(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct PastRegistry {
    instances: BTreeMap<Uuid, Arc<ServiceInstance>>,
    up_to: u64,
    checkpoint: Option<u64>,
    events_read: u64,
    complete: bool,
}

impl Default for PastRegistry {
    fn default() -> Self {
        PastRegistry {
            instances: BTreeMap::new(),
            up_to: 0,
            checkpoint: None,
            events_read: 0,
            complete: true,
        }
    }
}

impl PastRegistry {
    /// Starts from a checkpoint: its instances, folded up to `up_to`; `first` is the stream
    /// sequence of its part 1.
    pub(crate) fn from_checkpoint(
        first: u64,
        up_to: u64,
        instances: impl IntoIterator<Item = Arc<ServiceInstance>>,
    ) -> PastRegistry {
        PastRegistry {
            instances: instances.into_iter().map(|i| (i.id, i)).collect(),
            up_to,
            checkpoint: Some(first),
            ..PastRegistry::default()
        }
    }

    /// Folds one event in (events at or below [`up_to`](Self::up_to) are already in).
    pub(crate) fn apply(&mut self, event: &StoredEvent) {
        if event.sequence <= self.up_to {
            return;
        }
        self.up_to = event.sequence;
        self.events_read += 1;
        let instance = &event.record.instance;
        match event.record.event {
            EventName::Registered | EventName::Updated | EventName::Status => {
                self.instances.insert(instance.id, instance.clone());
            }
            EventName::Deregistered | EventName::Expired => {
                self.instances.remove(&instance.id);
            }
        }
    }

    /// Marks that events the fold needed were gone (removed by the stream's retention).
    pub(crate) fn mark_incomplete(&mut self) {
        self.complete = false;
    }

    /// The instances, by id.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<ServiceInstance>> {
        self.instances.values()
    }

    /// One instance, if it was live.
    pub fn get(&self, id: &Uuid) -> Option<&Arc<ServiceInstance>> {
        self.instances.get(id)
    }

    /// How many instances were live.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The last stream sequence folded in.
    pub fn up_to(&self) -> u64 {
        self.up_to
    }

    /// The stream sequence of the checkpoint the fold started from, if any.
    pub fn checkpoint(&self) -> Option<u64> {
        self.checkpoint
    }

    /// How many events were folded onto the checkpoint (or from the stream's start).
    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// False when the stream's retention had removed events the fold needed (no
    /// checkpoint covers them): instances registered before them may be missing.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The instances by id, as plain values.
    pub fn into_map(self) -> BTreeMap<Uuid, ServiceInstance> {
        self.instances
            .into_iter()
            .map(|(id, instance)| (id, ServiceInstance::clone(&instance)))
            .collect()
    }

    /// What changed from this registry to `later`.
    pub fn diff(&self, later: &PastRegistry) -> RegistryDiff {
        let mut diff = RegistryDiff::default();
        for (id, instance) in &later.instances {
            match self.instances.get(id) {
                None => diff.added.push(ServiceInstance::clone(instance)),
                Some(old) if !old.same_content(instance) => diff.changed.push((
                    ServiceInstance::clone(old),
                    ServiceInstance::clone(instance),
                )),
                Some(_) => {}
            }
        }
        for (id, instance) in &self.instances {
            if !later.instances.contains_key(id) {
                diff.removed.push(ServiceInstance::clone(instance));
            }
        }
        diff
    }
}

/// Folds `records` (in stream order) stamped up to and including `at` into the instances
/// live at that moment, by id. Registered, updated and status events set an instance's
/// state; deregistered and expired events remove it. Only as complete as the stream's
/// retention. Stamps are the publishers' clocks, so stream order is not quite time order:
/// a record stamped after `at` is skipped, not taken as the end of the fold.
pub fn registry_at(records: &[EventRecord], at: SystemTime) -> BTreeMap<Uuid, ServiceInstance> {
    let mut live = BTreeMap::new();
    for record in records.iter().filter(|r| r.at <= at) {
        match record.event {
            EventName::Registered | EventName::Updated | EventName::Status => {
                live.insert(record.instance.id, ServiceInstance::clone(&record.instance));
            }
            EventName::Deregistered | EventName::Expired => {
                live.remove(&record.instance.id);
            }
        }
    }
    live
}

/// What changed between two registries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RegistryDiff {
    /// Live at the end only.
    pub added: Vec<ServiceInstance>,
    /// Live at the start only.
    pub removed: Vec<ServiceInstance>,
    /// Live at both, with different content: (before, after).
    pub changed: Vec<(ServiceInstance, ServiceInstance)>,
}

/// The difference from `before` to `after`.
pub fn diff_registries(
    before: &BTreeMap<Uuid, ServiceInstance>,
    after: &BTreeMap<Uuid, ServiceInstance>,
) -> RegistryDiff {
    let mut diff = RegistryDiff::default();
    for (id, instance) in after {
        match before.get(id) {
            None => diff.added.push(instance.clone()),
            Some(old) if !old.same_content(instance) => {
                diff.changed.push((old.clone(), instance.clone()))
            }
            Some(_) => {}
        }
    }
    for (id, instance) in before {
        if !after.contains_key(id) {
            diff.removed.push(instance.clone());
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::protocol::PROTOCOL_VERSION;

    fn registered(port: u16, at: SystemTime) -> EventRecord {
        EventRecord {
            v: PROTOCOL_VERSION,
            event: EventName::Registered,
            instance: Arc::new(
                ServiceInstance::builder("svc", "10.0.0.1", port)
                    .build()
                    .unwrap(),
            ),
            previous_status: None,
            reason: None,
            at,
            origin: "test".into(),
        }
    }

    #[test]
    fn a_record_from_a_fast_clock_does_not_hide_the_records_after_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let second = Duration::from_secs(1);
        // In stream order: a publisher whose clock runs a second fast comes second.
        let records = [
            registered(1, t0),
            registered(2, t0 + 3 * second),
            registered(3, t0 + second),
        ];
        let ports: Vec<u16> = registry_at(&records, t0 + 2 * second)
            .values()
            .map(|i| i.port)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(ports, vec![1, 3]);
    }
}
