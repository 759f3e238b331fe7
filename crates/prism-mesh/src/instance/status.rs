use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Lifecycle status of an instance. On the wire: the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Registered, not yet ready for traffic.
    Starting,
    /// Ready for traffic.
    Healthy,
    /// Failing its health checks.
    Unhealthy,
    /// Status not known (for example never checked).
    Unknown,
    /// Shutting down; never picked for new traffic.
    Stopping,
    /// Deliberately out of rotation; never picked for new traffic.
    Maintenance,
}

impl InstanceStatus {
    /// Every status, in declaration order.
    pub const ALL: [InstanceStatus; 6] = [
        InstanceStatus::Starting,
        InstanceStatus::Healthy,
        InstanceStatus::Unhealthy,
        InstanceStatus::Unknown,
        InstanceStatus::Stopping,
        InstanceStatus::Maintenance,
    ];

    /// The wire name: `starting`, `healthy`, ...
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceStatus::Starting => "starting",
            InstanceStatus::Healthy => "healthy",
            InstanceStatus::Unhealthy => "unhealthy",
            InstanceStatus::Unknown => "unknown",
            InstanceStatus::Stopping => "stopping",
            InstanceStatus::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown status {s:?}; expected one of starting, healthy, unhealthy, unknown, stopping, maintenance"
                ))
            })
    }
}

/// How many of `instances` are in each status, sorted by status name (statuses with none
/// are left out).
pub fn count_by_status<'a>(
    instances: impl IntoIterator<Item = &'a std::sync::Arc<super::ServiceInstance>>,
) -> Vec<(InstanceStatus, usize)> {
    let mut counts: Vec<(InstanceStatus, usize)> = Vec::new();
    for instance in instances {
        match counts.iter_mut().find(|(s, _)| *s == instance.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((instance.status, 1)),
        }
    }
    counts.sort_by_key(|(s, _)| s.as_str());
    counts
}
