//! Self-preservation: a peer does not empty its view because many keys expired at once.
//!
//! A single server that was down for longer than the TTL expires every key in one sweep
//! when it comes back, though most owners are alive and about to re-assert. So an expiry
//! is not applied at once: it waits `settle` to see whether it is part of a burst (with
//! every expiry still waiting at that moment). A burst of at least `min_instances` expiries covering at least `threshold` of the view is held
//! for `grace`: those instances stay in the view (and keep being picked); each one whose
//! owner writes its key again in that time simply stays, the others expire when the grace
//! ends. Isolated expiries are applied after `settle`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The self-preservation rule (see the module documentation). Tunable on
/// [`MeshBuilder::self_preservation`](crate::MeshBuilder::self_preservation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfPreservation {
    /// Off: every expiry is applied as soon as it is seen.
    pub enabled: bool,
    /// How long an expiry waits to see whether it is part of a burst (default 500 ms;
    /// it adds to failure detection time). Expiries still arriving when it ends join the
    /// burst.
    pub settle: Duration,
    /// Share of the view expiring in one burst that counts as a mass expiry (default 0.5).
    pub threshold: f64,
    /// Smallest burst that counts as a mass expiry (default 4).
    pub min_instances: usize,
    /// How long instances of a mass expiry are kept for their owners to re-assert
    /// (default 15 s).
    pub grace: Duration,
}

impl Default for SelfPreservation {
    fn default() -> Self {
        SelfPreservation {
            enabled: true,
            settle: Duration::from_millis(500),
            threshold: 0.5,
            min_instances: 4,
            grace: Duration::from_secs(15),
        }
    }
}

impl SelfPreservation {
    /// Expiries applied as soon as they are seen.
    pub fn disabled() -> Self {
        SelfPreservation {
            enabled: false,
            ..SelfPreservation::default()
        }
    }
}

/// An expiry not yet applied: the marker's revision, and since when it waits.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    since: Instant,
    revision: u64,
    /// Held as part of a mass expiry (until `since + grace`), rather than settling.
    held: bool,
}

/// The expiries a view task has seen and not applied.
#[derive(Debug)]
pub(crate) struct Preservation {
    rule: SelfPreservation,
    waiting: HashMap<String, Waiting>,
}

impl Preservation {
    pub(crate) fn new(rule: SelfPreservation) -> Self {
        Preservation {
            rule,
            waiting: HashMap::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.rule.enabled
    }

    /// Notes an expiry of `key` at `revision` (kept if it already waits).
    pub(crate) fn expire_later(&mut self, key: String, revision: u64) {
        self.waiting.entry(key).or_insert(Waiting {
            since: Instant::now(),
            revision,
            held: false,
        });
    }

    /// The key was written again (re-asserted) or removed otherwise: nothing to apply.
    pub(crate) fn forget(&mut self, key: &str) -> bool {
        self.waiting.remove(key).is_some()
    }

    /// Instances kept by a mass expiry right now.
    pub(crate) fn held(&self) -> usize {
        self.waiting.values().filter(|w| w.held).count()
    }

    /// When something must be decided next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|w| self.deadline(w)).min()
    }

    fn deadline(&self, waiting: &Waiting) -> Instant {
        waiting.since
            + if waiting.held {
                self.rule.grace
            } else {
                self.rule.settle
            }
    }

    /// Decides what is due: returns the expiries to apply now (key, revision), and how
    /// many were newly held as a mass expiry. `view_size` counts the view's instances,
    /// waiting ones included.
    pub(crate) fn due(&mut self, view_size: usize) -> (Vec<(String, u64)>, usize) {
        let now = Instant::now();
        let settled: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| !w.held && self.deadline(w) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        // A burst is everything waiting when the oldest settles: expiries still arriving
        // belong to it too, so a burst spread over the server's 1 s expiry ticks is caught.
        let burst: Vec<String> = if settled.is_empty() {
            Vec::new()
        } else {
            self.waiting
                .iter()
                .filter(|(_, w)| !w.held)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mass = burst.len() >= self.rule.min_instances
            && burst.len() as f64 >= self.rule.threshold * view_size.max(1) as f64;
        let mut apply = Vec::new();
        if mass {
            for key in &burst {
                if let Some(w) = self.waiting.get_mut(key) {
                    *w = Waiting {
                        since: now,
                        revision: w.revision,
                        held: true,
                    };
                }
            }
        } else {
            for key in settled {
                if let Some(w) = self.waiting.remove(&key) {
                    apply.push((key, w.revision));
                }
            }
        }
        let ended: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.held && self.deadline(w) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(w) = self.waiting.remove(&key) {
                apply.push((key, w.revision));
            }
        }
        (apply, if mass { burst.len() } else { 0 })
    }
}
