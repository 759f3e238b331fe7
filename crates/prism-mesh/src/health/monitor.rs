//! The checker task of one registration: runs its check on an interval and turns
//! consecutive results into status changes with rise/fall thresholds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, Instrument};

use super::check::{run_check, CheckResult, HealthCheck};
use crate::error::{Error, ErrorKind, Result};
use crate::instance::InstanceStatus;
use crate::metrics::MeshStats;
use crate::owner::Registration;

/// When and how strictly a registration is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time between the starts of two checks (default 10 s).
    pub interval: Duration,
    /// A check that takes longer fails (default 5 s).
    pub timeout: Duration,
    /// Consecutive passes before the instance becomes `Healthy` (default 2).
    pub rise: u32,
    /// Consecutive failures before it becomes `Unhealthy` (default 3).
    pub fall: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            rise: 2,
            fall: 3,
        }
    }
}

impl HealthPolicy {
    /// Checks every `interval`, other settings default.
    pub fn every(interval: Duration) -> Self {
        HealthPolicy {
            interval,
            ..HealthPolicy::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "health check interval and timeout must be positive",
            ));
        }
        if self.rise == 0 || self.fall == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "health check rise and fall thresholds must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A running health checker; it stops when the registration ends or on [`stop`](Self::stop).
#[derive(Debug)]
pub struct HealthMonitor {
    last: watch::Receiver<Option<CheckResult>>,
    task: JoinHandle<()>,
}

impl HealthMonitor {
    pub(crate) fn start(
        registration: Registration,
        check: HealthCheck,
        policy: HealthPolicy,
        stats: Arc<MeshStats>,
    ) -> Result<HealthMonitor> {
        policy.validate()?;
        let (tx, last) = watch::channel(None);
        let span = tracing::info_span!("health", service = registration.service(), id = %registration.id());
        let task = tokio::spawn(run(registration, check, policy, stats, tx).instrument(span));
        Ok(HealthMonitor { last, task })
    }

    /// The latest check result, if a check has finished.
    pub fn last(&self) -> Option<CheckResult> {
        self.last.borrow().clone()
    }

    /// Waits for the next check result.
    pub async fn next(&mut self) -> Option<CheckResult> {
        self.last.changed().await.ok()?;
        self.last.borrow().clone()
    }

    /// Stops checking; the status stays as it is.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn run(
    registration: Registration,
    check: HealthCheck,
    policy: HealthPolicy,
    stats: Arc<MeshStats>,
    last: watch::Sender<Option<CheckResult>>,
) {
    let mut ticker = tokio::time::interval(policy.interval);
    // A slow check delays the next one, never a burst of catch-up checks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        if !registration.is_live() {
            return;
        }
        let instance = registration.instance();
        // The owner's own decisions stand: checks never lift maintenance or stopping.
        if matches!(
            instance.status,
            InstanceStatus::Maintenance | InstanceStatus::Stopping
        ) {
            (passes, failures) = (0, 0);
            continue;
        }
        // Runs in this task, apart from the owner's heartbeats: a hanging check delays
        // only the next check.
        let result = run_check(&check, &instance, policy.timeout).await;
        stats.record_health_check(result.passing);
        if result.passing {
            (passes, failures) = (passes.saturating_add(1), 0);
        } else {
            (passes, failures) = (0, failures.saturating_add(1));
        }
        debug!(passing = result.passing, output = %result.output, passes, failures, "health check");
        let verdict = if passes >= policy.rise {
            Some(InstanceStatus::Healthy)
        } else if failures >= policy.fall {
            Some(InstanceStatus::Unhealthy)
        } else {
            None
        };
        if let Some(status) = verdict.filter(|s| *s != instance.status) {
            let count = if result.passing { passes } else { failures };
            let reason = format!("health check {} ({count} in a row)", result.describe());
            info!(%status, %reason, "health verdict changed");
            if let Err(e) = registration.set_status(status, Some(&reason)).await {
                if e.kind() == ErrorKind::NotRegistered {
                    return;
                }
                debug!(error = %e, "could not publish the health verdict; retrying next check");
            }
        }
        last.send_replace(Some(result));
    }
}
