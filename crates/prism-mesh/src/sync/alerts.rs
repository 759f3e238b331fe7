//! Key alerts: the view tells the owners of keys in this process when someone else wrote
//! one of them, so an owner restores its key as soon as its own view shows the write,
//! not at its next heartbeat.
//!
//! The view cannot tell whose write it saw; the owner can (it knows the revisions it
//! wrote), so every change of an owned key is handed over and the owner decides.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use foldhash::HashMap as FastMap;

/// What owns a key in this process.
pub(crate) trait KeyOwner: Send + Sync {
    /// The key's log holds a message at `revision` (a put, a removal or a refused write),
    /// or lost every message before it (`Nats-Rollup: all` at `revision`).
    fn seen(self: Arc<Self>, revision: u64);
}

/// The keys this process owns, by key.
#[derive(Default)]
pub(crate) struct KeyAlerts {
    owners: Mutex<FastMap<String, Weak<dyn KeyOwner>>>,
    /// How many keys are owned: a peer that owns none pays nothing per change.
    count: AtomicUsize,
}

impl std::fmt::Debug for KeyAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAlerts")
            .field("owned", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl KeyAlerts {
    /// Alerts `owner` of changes of `key` from now on.
    pub(crate) fn own(&self, key: &str, owner: Weak<dyn KeyOwner>) {
        let mut owners = self.lock();
        owners.insert(key.to_string(), owner);
        self.count.store(owners.len(), Ordering::Release);
    }

    /// Stops alerting about `key`.
    pub(crate) fn release(&self, key: &str) {
        let mut owners = self.lock();
        owners.remove(key);
        self.count.store(owners.len(), Ordering::Release);
    }

    /// The view saw `key` change at `revision`.
    pub(crate) fn changed(&self, key: &str, revision: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let owner = self.lock().get(key).and_then(Weak::upgrade);
        if let Some(owner) = owner {
            owner.seen(revision);
        }
    }

    /// The view saw a write at `revision` that removed every other message of the log.
    pub(crate) fn rolled_up(&self, revision: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let owners: Vec<_> = self.lock().values().filter_map(Weak::upgrade).collect();
        for owner in owners {
            owner.seen(revision);
        }
    }

    fn lock(&self) -> MutexGuard<'_, FastMap<String, Weak<dyn KeyOwner>>> {
        // Every change is one map operation: a panic elsewhere leaves it whole.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seen(Mutex<Vec<u64>>);

    impl KeyOwner for Seen {
        fn seen(self: Arc<Self>, revision: u64) {
            self.0.lock().unwrap().push(revision);
        }
    }

    #[test]
    fn only_owned_keys_alert_and_a_rollup_alerts_every_owner() {
        let alerts = KeyAlerts::default();
        let a = Arc::new(Seen(Mutex::new(Vec::new())));
        let b = Arc::new(Seen(Mutex::new(Vec::new())));
        let weak_a: Weak<dyn KeyOwner> = Arc::downgrade(&a) as Weak<dyn KeyOwner>;
        let weak_b: Weak<dyn KeyOwner> = Arc::downgrade(&b) as Weak<dyn KeyOwner>;
        alerts.own("web.a", weak_a);
        alerts.own("web.b", weak_b);
        alerts.changed("web.a", 7);
        alerts.changed("web.c", 8);
        alerts.rolled_up(9);
        alerts.release("web.a");
        alerts.changed("web.a", 10);
        alerts.rolled_up(11);
        assert_eq!(*a.0.lock().unwrap(), vec![7, 9]);
        assert_eq!(*b.0.lock().unwrap(), vec![9, 11]);
    }
}
