//! Counters an operator needs to trust a peer: what it applied, dropped and noticed.

mod endpoint;
pub(crate) mod exposition;

use std::sync::atomic::{AtomicU64, Ordering};

pub use endpoint::MetricsEndpoint;

/// Defines every counter once: the live atomics of [`MeshStats`], the public
/// [`StatsSnapshot`] copy, and (for those given a name) the Prometheus metric each one is
/// exposed as, in the order listed.
macro_rules! mesh_stats {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident $(=> $kind:ident $name:literal $help:literal)?;
    )*) => {
        /// Live counters of one mesh handle.
        #[derive(Debug, Default)]
        pub(crate) struct MeshStats {
            $( $(#[doc = $doc])+ pub(crate) $field: AtomicU64, )*
        }

        impl MeshStats {
            pub(crate) fn snapshot(&self, instances_active: usize) -> StatsSnapshot {
                StatsSnapshot {
                    $( $field: self.$field.load(Ordering::Relaxed), )*
                    instances_active: instances_active as u64,
                }
            }
        }

        /// A copy of a mesh handle's counters at one moment.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])+ pub $field: u64, )*
            /// Instances in the view now.
            pub instances_active: u64,
        }

        impl StatsSnapshot {
            /// The figures exposed one to one, as (name, help, kind, value).
            pub(crate) fn exposed(&self) -> Vec<(&'static str, &'static str, Kind, u64)> {
                vec![ $( $( ($name, $help, Kind::$kind, self.$field), )? )* ]
            }
        }
    };
}

/// How a figure is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only grows (the encoder adds `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

mesh_stats! {
    /// Instances registered by this handle.
    registrations => Counter "service_discovery_registrations" "Instances registered by this peer";
    /// Instances deregistered by this handle.
    deregistrations => Counter "service_discovery_deregistrations" "Instances deregistered by this peer";
    /// Lookups of a service by name (`discover`, by-name picks, waits).
    discoveries => Counter "service_discovery_discoveries" "Service lookups by name (discover, by-name picks, waits)";
    /// Bucket changes applied to the view (puts, removals, snapshot entries).
    changes_applied => Counter "service_discovery_changes_applied" "Bucket changes applied to the view";
    /// Bucket writes that rewrote a held record unchanged (others' heartbeats), known by
    /// the record's digest and not decoded (part of `changes_applied`).
    heartbeats_seen => Counter "service_discovery_heartbeats_seen" "Unchanged rewrites of held records (heartbeats) seen by the view";
    /// Typed events delivered to subscribers.
    events_emitted => Counter "service_discovery_events_emitted" "Typed events delivered to subscribers";
    /// Messages on the bucket that could not be decoded or did not match their key;
    /// logged and ignored.
    malformed_dropped => Counter "service_discovery_malformed_messages" "Malformed or spoofed bucket messages dropped";
    /// Instances seen expiring.
    expiries => Counter "service_discovery_expiries" "Instances seen expiring";
    /// Full resynchronisations of the view (start, a reconnect after a long outage, a
    /// replaced bucket).
    resyncs => Counter "service_discovery_resyncs" "Full view resynchronisations (start, long outages, a replaced bucket)";
    /// Watch interruptions (reconnects, consumers lost in a leader election) resumed from
    /// the last revision seen, without a snapshot.
    resumes => Counter "service_discovery_watch_resumes" "Watch interruptions resumed from the last revision seen";
    /// Owned keys found expired or overwritten and written again.
    reasserts => Counter "service_discovery_reasserts" "Owned keys found gone and written again";
    /// Owned keys this handle saw another client write or remove, and wrote again at once
    /// (part of `reasserts`).
    restores => Counter "service_discovery_restores" "Owned keys another client wrote or removed, written again at once";
    /// Heartbeats that failed (retried).
    heartbeat_failures => Counter "service_discovery_heartbeat_failures" "Heartbeats that failed (retried)";
    /// Heartbeats that started more than half an interval (at least 50 ms) after they
    /// were due: a busy runtime, a busy heartbeat scheduler, or so many heartbeats in
    /// flight on a slow server that the rest wait. Each eats into the margin between the
    /// heartbeat interval and the TTL; this rises before `reasserts` does.
    heartbeats_late => Counter "service_discovery_heartbeats_late" "Heartbeats started more than half an interval after they were due";
    /// Lifecycle events that could not be published after retries.
    event_publish_failures => Counter "service_discovery_event_publish_failures" "Lifecycle events not published after retries";
    /// Mass expiries that self-preservation held back.
    preservation_activations => Counter "service_discovery_self_preservation_activations" "Mass expiries held back by self-preservation";
    /// Instances kept in the view by self-preservation now.
    preserved => Gauge "service_discovery_preserved_instances" "Instances kept in the view by self-preservation while their owners re-assert";
    /// Health checks run by this peer that passed (exposed with the failed ones, by result).
    health_checks_passed;
    /// Health checks run by this peer that failed.
    health_checks_failed;
    /// Changes received from the backend and not yet applied to the view (exposed with
    /// what the server still holds for the watch).
    view_backlog;
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
