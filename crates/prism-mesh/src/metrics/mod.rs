//! Counters an operator needs to trust a peer: what it applied, dropped and noticed.

mod endpoint;
pub(crate) mod exposition;

use std::sync::atomic::{AtomicU64, Ordering};

pub use endpoint::MetricsEndpoint;

/// Live counters of one mesh handle.
#[derive(Debug, Default)]
pub(crate) struct MeshStats {
    pub(crate) changes_applied: AtomicU64,
    pub(crate) malformed_dropped: AtomicU64,
    pub(crate) events_emitted: AtomicU64,
    pub(crate) expiries: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) registrations: AtomicU64,
    pub(crate) reasserts: AtomicU64,
    pub(crate) restores: AtomicU64,
    pub(crate) heartbeat_failures: AtomicU64,
    pub(crate) heartbeats_late: AtomicU64,
    pub(crate) event_publish_failures: AtomicU64,
    pub(crate) deregistrations: AtomicU64,
    pub(crate) discoveries: AtomicU64,
    pub(crate) health_checks_passed: AtomicU64,
    pub(crate) health_checks_failed: AtomicU64,
    /// Items waiting between the backend's watch and the view task.
    pub(crate) view_backlog: AtomicU64,
    /// Mass expiries that self-preservation held back.
    pub(crate) preservation_activations: AtomicU64,
    /// Instances held by self-preservation now.
    pub(crate) preserved: AtomicU64,
}

impl MeshStats {
    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one health check run by this peer, by its result.
    pub(crate) fn record_health_check(&self, passing: bool) {
        Self::incr(if passing {
            &self.health_checks_passed
        } else {
            &self.health_checks_failed
        });
    }

    pub(crate) fn snapshot(&self, instances_active: usize) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            changes_applied: get(&self.changes_applied),
            malformed_dropped: get(&self.malformed_dropped),
            events_emitted: get(&self.events_emitted),
            expiries: get(&self.expiries),
            resyncs: get(&self.resyncs),
            resumes: get(&self.resumes),
            registrations: get(&self.registrations),
            reasserts: get(&self.reasserts),
            restores: get(&self.restores),
            heartbeat_failures: get(&self.heartbeat_failures),
            heartbeats_late: get(&self.heartbeats_late),
            event_publish_failures: get(&self.event_publish_failures),
            deregistrations: get(&self.deregistrations),
            discoveries: get(&self.discoveries),
            health_checks_passed: get(&self.health_checks_passed),
            health_checks_failed: get(&self.health_checks_failed),
            view_backlog: get(&self.view_backlog),
            preservation_activations: get(&self.preservation_activations),
            preserved: get(&self.preserved),
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
    /// Full resynchronisations of the view (start, a reconnect after a long outage, a
    /// replaced bucket).
    pub resyncs: u64,
    /// Watch interruptions (reconnects, consumers lost in a leader election) resumed from
    /// the last revision seen, without a snapshot.
    pub resumes: u64,
    /// Instances registered by this handle.
    pub registrations: u64,
    /// Owned keys found expired or overwritten and written again.
    pub reasserts: u64,
    /// Owned keys this handle saw another client write or remove, and wrote again at once
    /// (part of `reasserts`).
    pub restores: u64,
    /// Heartbeats that failed (retried).
    pub heartbeat_failures: u64,
    /// Heartbeats that started more than half an interval (at least 50 ms) after they
    /// were due: a busy runtime, a busy heartbeat scheduler, or so many heartbeats in
    /// flight on a slow server that the rest wait. Each eats into the margin between the
    /// heartbeat interval and the TTL; this rises before `reasserts` does.
    pub heartbeats_late: u64,
    /// Lifecycle events that could not be published after retries.
    pub event_publish_failures: u64,
    /// Instances deregistered by this handle.
    pub deregistrations: u64,
    /// Lookups of a service by name (`discover`, by-name picks, waits).
    pub discoveries: u64,
    /// Health checks run by this peer that passed.
    pub health_checks_passed: u64,
    /// Health checks run by this peer that failed.
    pub health_checks_failed: u64,
    /// Changes received from the backend and not yet applied to the view.
    pub view_backlog: u64,
    /// Mass expiries that self-preservation held back.
    pub preservation_activations: u64,
    /// Instances kept in the view by self-preservation now.
    pub preserved: u64,
    /// Instances in the view now.
    pub instances_active: u64,
}

/// What the Prometheus exposition reads at each scrape.
pub(crate) struct MetricsSource {
    pub(crate) stats: StatsSnapshot,
    pub(crate) reconnects: u64,
    pub(crate) owned: u64,
    /// Instances per (service, status).
    pub(crate) instances: Vec<(String, &'static str, u64)>,
    /// Delay of the last change the backend delivered (server write to receipt).
    pub(crate) view_lag: std::time::Duration,
    /// Messages the server still holds for this peer's watch.
    pub(crate) server_pending: u64,
}
