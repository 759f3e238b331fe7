//! The heartbeat schedule: one per mesh, refreshing each owned key one interval after its
//! last write, a bounded number at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error};

use crate::config::Timing;
use crate::metrics::MeshStats;

use super::writer::{retry_delay, OwnedInstance};

/// Heartbeats in flight at once per mesh; the rest wait their turn in the schedule. Large
/// enough that a slow server (1 s per write, as during a leader election) still refreshes
/// 10,000 owned keys within a 10 s TTL; bounded so a mesh owning many more does not put
/// them all on the wire at once.
pub(crate) const HEARTBEATS_IN_FLIGHT: usize = 4096;

/// One entry of the heartbeat schedule, ordered by due time.
struct Due {
    at: Instant,
    owned: Arc<OwnedInstance>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The mesh's heartbeat scheduler: refreshes each owned key one interval after its last
/// write, at most [`HEARTBEATS_IN_FLIGHT`] at a time, until the mesh closes.
pub(super) async fn heartbeat_schedule(
    mut incoming: mpsc::UnboundedReceiver<Arc<OwnedInstance>>,
    mut reconnects: watch::Receiver<u64>,
    mut closing: watch::Receiver<bool>,
    timing: Timing,
    stats: Arc<MeshStats>,
    shards: usize,
) {
    // A mesh with several shards splits its budget between their schedulers.
    let in_flight = (HEARTBEATS_IN_FLIGHT / shards.max(1)).max(256);
    // Past this, a heartbeat is late enough to eat into the TTL's margin (with a floor:
    // timer jitter on a very short interval is not falling behind).
    let late = (timing.heartbeat_interval / 2).max(Duration::from_millis(50));
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut beating = FuturesUnordered::new();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let next = due.peek().map(|Reverse(d)| d.at);
        if let Some(at) = next {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        let may_start = next.is_some() && beating.len() < in_flight;
        // Heartbeats first: a burst of new registrations must not hold them back.
        tokio::select! {
            biased;
            _ = crate::sync::until_true(&mut closing) => return,
            Some((owned, after)) = beating.next(), if !beating.is_empty() => {
                let owned: Arc<OwnedInstance> = owned;
                if owned.is_live() {
                    due.push(Reverse(Due { at: Instant::now() + after, owned }));
                }
            }
            () = &mut timer, if may_start => {
                let now = Instant::now();
                while beating.len() < in_flight {
                    match due.peek() {
                        Some(Reverse(d)) if d.at <= now => {}
                        _ => break,
                    }
                    let Some(Reverse(Due { owned, at })) = due.pop() else { break };
                    if owned.is_live() {
                        if now.saturating_duration_since(at) > late {
                            MeshStats::incr(&stats.heartbeats_late);
                        }
                        beating.push(async move {
                            // One instance's bug must not stop every owner's heartbeats.
                            let after = AssertUnwindSafe(owned.heartbeat())
                                .catch_unwind()
                                .await
                                .unwrap_or_else(|_| {
                                    error!(key = %owned.key, "heartbeat panicked; retrying");
                                    retry_delay(timing.heartbeat_interval, Duration::ZERO)
                                });
                            (owned, after)
                        });
                    }
                }
            }
            Ok(()) = reconnects.changed() => {
                // Every client reconnects at the same instant after an outage; spread the
                // re-assertions.
                let cap = timing.heartbeat_interval.min(Duration::from_secs(2));
                let now = Instant::now();
                let mut rng = rand::rng();
                debug!(owned = due.len(), "reconnected; re-asserting after jitter");
                due = due
                    .into_iter()
                    .map(|Reverse(d)| Reverse(Due {
                        at: now + rng.random_range(Duration::ZERO..=cap),
                        owned: d.owned,
                    }))
                    .collect();
            }
            Some(owned) = incoming.recv() => {
                due.push(Reverse(Due { at: Instant::now() + timing.heartbeat_interval, owned }));
            }
        }
    }
}
