//! What a peer follows: every service, or a set of them that only grows. A watch asks the
//! backend for these services' keys alone (a NATS consumer's filter subjects), so the
//! rest of the mesh never reaches the peer.

use std::collections::BTreeSet;
use std::sync::Arc;

/// The services a peer's view follows, numbered so a peer can wait until a set it asked
/// for is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Raised by every change of `services`.
    pub(crate) generation: u64,
    /// `None`: every service.
    pub(crate) services: Option<Arc<BTreeSet<String>>>,
}

impl Interest {
    /// Only `services` (none at all when empty).
    pub(crate) fn only(services: impl IntoIterator<Item = String>) -> Self {
        Interest {
            generation: 0,
            services: Some(Arc::new(services.into_iter().collect())),
        }
    }

    /// Whether `service` is followed.
    pub(crate) fn covers(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(service))
    }

    /// Whether the bucket key `key` (`<service>.<id>`) is of a followed service.
    pub(crate) fn covers_key(&self, key: &str) -> bool {
        match &self.services {
            None => true,
            Some(services) => key
                .split_once('.')
                .is_some_and(|(service, _)| services.contains(service)),
        }
    }

    /// Adds `service`; says whether it was new (and the generation raised).
    pub(crate) fn add(&mut self, service: &str) -> bool {
        let Some(services) = &mut self.services else {
            return false;
        };
        if services.contains(service) {
            return false;
        }
        Arc::make_mut(services).insert(service.to_string());
        self.generation += 1;
        true
    }

    /// The services followed here and not in `before` (none when everything is followed).
    pub(crate) fn added_since(&self, before: &Interest) -> Vec<String> {
        match (&self.services, &before.services) {
            (Some(now), Some(then)) => now.difference(then).cloned().collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interest_covers_the_keys_of_its_services_only_and_grows_by_generation() {
        let mut interest = Interest::only(["orders".to_string()]);
        assert!(interest.covers_key("orders.6a1c"));
        assert!(!interest.covers_key("orders-v2.6a1c"));
        assert!(!interest.covers_key("orders"));
        let before = interest.clone();
        assert!(interest.add("billing") && !interest.add("billing"));
        assert_eq!(interest.generation, 1);
        assert_eq!(interest.added_since(&before), ["billing"]);
        let mut all = Interest::default();
        assert!(all.covers("anything") && all.covers_key("x.y") && !all.add("x"));
    }
}
