//! Per-instance load as seen by this peer's callers, fed by [`RequestGuard`]s.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::instance::ServiceInstance;

/// What this peer knows about an instance's load: requests in flight, outcomes and an
/// exponentially weighted moving average of latency.
#[derive(Debug, Default)]
pub struct InstanceLoad {
    outstanding: AtomicU32,
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// EWMA of latency in microseconds (0 until the first request ends).
    ewma_micros: AtomicU64,
    /// Ejected from picks until this instant (see [`clock`]); 0 when not ejected.
    ejected_until: AtomicU64,
    /// How many times outlier detection ejected it (the backoff grows with it).
    ejections: AtomicU32,
}

/// Nanoseconds on a process-wide monotonic clock.
fn clock() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl InstanceLoad {
    /// Requests picked and not yet finished.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Requests finished as successes.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Requests finished as failures.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Moving average of request latency (zero before the first request ends).
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.ewma_micros.load(Ordering::Relaxed))
    }

    /// True while outlier detection keeps the instance out of this balancer's picks.
    pub fn is_ejected(&self) -> bool {
        clock() < self.ejected_until.load(Ordering::Relaxed)
    }

    /// How many times outlier detection ejected the instance.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejects for `base * 2^(previous ejections)`, capped at `max`; returns the duration.
    pub(crate) fn eject(&self, base: Duration, max: Duration) -> Duration {
        let previous = self.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let duration = base.saturating_mul(1 << previous).min(max);
        let until = clock().saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        duration
    }

    fn finish(&self, success: bool, latency: Duration) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        if success {
            self.successes.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        }
        // EWMA with alpha = 1/8; a lost race between two finishes only skips one sample.
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let old = self.ewma_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.ewma_micros.store(new, Ordering::Relaxed);
    }
}

/// A picked instance held for the duration of one request.
///
/// While it lives the instance counts one more outstanding request (what
/// [`Strategy::LeastOutstanding`](super::Strategy::LeastOutstanding) compares). Dropping it
/// ends the request and records its latency: as a success, unless [`failed`](Self::failed)
/// was called.
#[derive(Debug)]
#[must_use = "the request ends when the guard is dropped"]
pub struct RequestGuard {
    instance: Arc<ServiceInstance>,
    load: Arc<InstanceLoad>,
    started: Instant,
    success: bool,
    /// The balancer, when it does outlier detection.
    balancer: Option<Arc<super::Inner>>,
}

impl RequestGuard {
    pub(super) fn start(
        instance: Arc<ServiceInstance>,
        load: Arc<InstanceLoad>,
        balancer: Option<Arc<super::Inner>>,
    ) -> Self {
        load.outstanding.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            instance,
            load,
            started: Instant::now(),
            success: true,
            balancer,
        }
    }

    /// The picked instance.
    pub fn instance(&self) -> &Arc<ServiceInstance> {
        &self.instance
    }

    /// Records the request as failed when the guard ends.
    pub fn failed(&mut self) {
        self.success = false;
    }

    /// Ends the request now with the given outcome.
    pub fn finish(mut self, success: bool) {
        self.success = success;
    }
}

impl std::ops::Deref for RequestGuard {
    type Target = ServiceInstance;

    fn deref(&self) -> &ServiceInstance {
        &self.instance
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.load.finish(self.success, self.started.elapsed());
        if let (false, Some(balancer)) = (self.success, &self.balancer) {
            super::consider_ejection(balancer, &self.load);
        }
    }
}
