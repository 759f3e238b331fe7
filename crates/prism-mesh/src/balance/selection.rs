//! Which instances of a service may be picked: statuses in fallback order, tag and
//! metadata filters, and a preferred zone.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::instance::{count_by_status, InstanceStatus, ServiceInstance};

/// The rules that decide which instances a [`Balancer`](super::Balancer) may pick.
///
/// By default only `Healthy` instances are eligible. With a fallback order such as
/// `[Healthy, Unknown]`, `Unknown` instances are picked only while no `Healthy` one matches.
/// `Maintenance` and `Stopping` instances are never picked.
///
/// ```
/// use prism_mesh::{InstanceStatus, Selection};
///
/// let selection = Selection::new()
///     .statuses([InstanceStatus::Healthy, InstanceStatus::Unknown])?
///     .with_all_tags(["secure"])
///     .with_metadata("region", "eu-west")
///     .prefer_zone("eu-west-1a");
/// # Ok::<(), prism_mesh::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    statuses: Vec<InstanceStatus>,
    all_tags: Vec<String>,
    any_tags: Vec<String>,
    metadata: Vec<(String, serde_json::Value)>,
    zone: Option<String>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            statuses: vec![InstanceStatus::Healthy],
            all_tags: Vec::new(),
            any_tags: Vec::new(),
            metadata: Vec::new(),
            zone: None,
        }
    }
}

impl Selection {
    /// Healthy instances only, no filter, no zone preference.
    pub fn new() -> Self {
        Selection::default()
    }

    /// Eligible statuses in fallback order: the first status with a matching instance wins.
    /// `Maintenance` and `Stopping` are refused: those instances are never picked.
    pub fn statuses(mut self, order: impl IntoIterator<Item = InstanceStatus>) -> Result<Self> {
        let mut statuses = Vec::new();
        for status in order {
            if matches!(
                status,
                InstanceStatus::Maintenance | InstanceStatus::Stopping
            ) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("status {status} cannot be eligible for picking: such instances are never picked"),
                ));
            }
            if !statuses.contains(&status) {
                statuses.push(status);
            }
        }
        if statuses.is_empty() {
            return Err(Error::invalid("the status fallback order is empty"));
        }
        self.statuses = statuses;
        Ok(self)
    }

    /// Only instances carrying every one of `tags`.
    pub fn with_all_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.all_tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Only instances carrying at least one of `tags`.
    pub fn with_any_tag<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.any_tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Only instances whose metadata `key` equals `value`.
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Only instances whose metadata `version` equals `version`.
    pub fn with_version(self, version: impl Into<String>) -> Self {
        self.with_metadata("version", version.into())
    }

    /// Prefer instances in `zone`; others are picked only when no eligible instance of the
    /// winning status is there.
    pub fn prefer_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The status fallback order.
    pub fn status_order(&self) -> &[InstanceStatus] {
        &self.statuses
    }

    /// True when `instance` passes the tag and metadata filters (status aside).
    pub fn matches(&self, instance: &ServiceInstance) -> bool {
        let has = |tag: &String| instance.tags.iter().any(|t| t == tag);
        self.all_tags.iter().all(has)
            && (self.any_tags.is_empty() || self.any_tags.iter().any(has))
            && self
                .metadata
                .iter()
                .all(|(k, v)| instance.metadata.get(k) == Some(v))
    }

    /// The eligible instances of `instances`: the first status tier with a match, narrowed
    /// to the preferred zone when that zone has any.
    pub(crate) fn candidates(
        &self,
        instances: &[Arc<ServiceInstance>],
    ) -> Vec<Arc<ServiceInstance>> {
        for status in &self.statuses {
            let tier: Vec<Arc<ServiceInstance>> = instances
                .iter()
                .filter(|i| i.status == *status && self.matches(i))
                .cloned()
                .collect();
            if tier.is_empty() {
                continue;
            }
            if let Some(zone) = &self.zone {
                let local: Vec<Arc<ServiceInstance>> = tier
                    .iter()
                    .filter(|i| i.zone.as_deref() == Some(zone.as_str()))
                    .cloned()
                    .collect();
                if !local.is_empty() {
                    return local;
                }
            }
            return tier;
        }
        Vec::new()
    }

    /// The error for "nothing eligible": how many instances exist, in which statuses, and
    /// how many the filters let through.
    pub(crate) fn unavailable(&self, service: &str, instances: &[Arc<ServiceInstance>]) -> Error {
        let mut message = format!("no instance of {service} available: ");
        if instances.is_empty() {
            message.push_str("the service has no instance in the view");
        } else {
            let counts = count_by_status(instances);
            let by_status: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let _ = write!(
                message,
                "{} instances ({}), {} pass the filters",
                instances.len(),
                by_status.join(", "),
                instances.iter().filter(|i| self.matches(i)).count()
            );
        }
        let order: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
        let _ = write!(message, "; eligible statuses: {}", order.join(" then "));
        Error::new(ErrorKind::Unavailable, message)
    }
}
