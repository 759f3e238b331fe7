//! Counters an operator needs to trust a peer: what it applied, dropped and noticed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one mesh handle.
#[derive(Debug, Default)]
pub(crate) struct MeshStats {
    pub(crate) changes_applied: AtomicU64,
    pub(crate) malformed_dropped: AtomicU64,
    pub(crate) events_emitted: AtomicU64,
    pub(crate) expiries: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) registrations: AtomicU64,
    pub(crate) reasserts: AtomicU64,
    pub(crate) heartbeat_failures: AtomicU64,
    pub(crate) event_publish_failures: AtomicU64,
}

impl MeshStats {
    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, instances_active: usize) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            changes_applied: get(&self.changes_applied),
            malformed_dropped: get(&self.malformed_dropped),
            events_emitted: get(&self.events_emitted),
            expiries: get(&self.expiries),
            resyncs: get(&self.resyncs),
            registrations: get(&self.registrations),
            reasserts: get(&self.reasserts),
            heartbeat_failures: get(&self.heartbeat_failures),
            event_publish_failures: get(&self.event_publish_failures),
            instances_active: instances_active as u64,
        }
    }
}

/// A copy of a mesh handle's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Bucket changes applied to the view (puts, removals, snapshot entries).
    pub changes_applied: u64,
    /// Messages on the bucket that could not be decoded or did not match their key;
    /// logged and ignored.
    pub malformed_dropped: u64,
    /// Typed events delivered to subscribers.
    pub events_emitted: u64,
    /// Instances seen expiring.
    pub expiries: u64,
    /// Full resynchronisations of the view (start, reconnects).
    pub resyncs: u64,
    /// Instances registered by this handle.
    pub registrations: u64,
    /// Owned keys found expired or overwritten and written again.
    pub reasserts: u64,
    /// Heartbeats that failed (retried).
    pub heartbeat_failures: u64,
    /// Lifecycle events that could not be published after retries.
    pub event_publish_failures: u64,
    /// Instances in the view now.
    pub instances_active: u64,
}
