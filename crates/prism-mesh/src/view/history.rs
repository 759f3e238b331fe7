//! The registry as it was at a past moment, rebuilt from the audit trail.

use std::collections::BTreeMap;
use std::time::SystemTime;

use uuid::Uuid;

use crate::instance::ServiceInstance;
use crate::protocol::{EventName, EventRecord};

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
