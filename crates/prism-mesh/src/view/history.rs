//! The registry as it was at a past moment, rebuilt from the audit trail.

use std::collections::BTreeMap;
use std::time::SystemTime;

use uuid::Uuid;

use crate::instance::ServiceInstance;
use crate::protocol::{EventName, EventRecord};

/// Folds `records` (oldest first) up to and including `at` into the instances live at
/// that moment, by id. Registered, updated and status events set an instance's state;
/// deregistered and expired events remove it. Only as complete as the stream's retention.
pub fn registry_at(records: &[EventRecord], at: SystemTime) -> BTreeMap<Uuid, ServiceInstance> {
    let mut live = BTreeMap::new();
    for record in records.iter().take_while(|r| r.at <= at) {
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
