//! The instance model: one running copy of a service, as every peer sees it.

mod metadata;
mod shared;
mod status;
mod time;
mod validate;

use serde::{Deserialize, Serialize};
pub use thin_vec::ThinVec;
use uuid::Uuid;

pub use metadata::Metadata;
pub(crate) use shared::Interner;
pub use shared::SharedStr;
pub use status::{count_by_status, InstanceStatus};
pub use time::Timestamp;
pub use validate::{
    validate_service_name, MAX_HOST_LEN, MAX_METADATA_BYTES, MAX_METADATA_DEPTH,
    MAX_SERVICE_NAME_LEN, MAX_TAGS, MAX_TAG_LEN,
};

use crate::error::Result;

/// The default load-balancing weight of an instance.
pub const DEFAULT_WEIGHT: u32 = 100;

/// One running copy of a service.
///
/// Build one with [`ServiceInstance::builder`]; the builder validates the name and the
/// sizes, and [`Mesh::register`](crate::Mesh::register) validates again before any network
/// call, so a hand-edited instance cannot slip through.
///
/// ```
/// use prism_mesh::{InstanceStatus, ServiceInstance};
///
/// let instance = ServiceInstance::builder("orders", "10.0.0.7", 8080)
///     .tag("v2")
///     .metadata("region", "eu-west")
///     .weight(50)
///     .build()?;
/// assert_eq!(instance.base_url(), "http://10.0.0.7:8080");
/// assert_eq!(instance.status, InstanceStatus::Starting);
/// # Ok::<(), prism_mesh::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Service name: a single NATS subject token (letters, digits, `-`, `_`).
    pub service: SharedStr,
    /// Unique id of this instance.
    pub id: Uuid,
    /// Host name or address peers use to reach the instance.
    pub host: SharedStr,
    /// Port peers use to reach the instance.
    pub port: u16,
    /// URL scheme, `http` by default.
    pub scheme: SharedStr,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub metadata: Metadata,
    /// Tags for filtering.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub tags: ThinVec<SharedStr>,
    /// Lifecycle status.
    pub status: InstanceStatus,
    /// Load-balancing weight (default 100).
    pub weight: u32,
    /// Availability zone, if known.
    #[serde(default)]
    pub zone: Option<SharedStr>,
    /// When the instance was first registered.
    pub registered_at: Timestamp,
    /// When the owner last changed the instance (status, metadata...). Heartbeats do not
    /// change it.
    pub updated_at: Timestamp,
}

/// The KV key of an instance: `<service>.<instance id>` (the id lowercase hyphenated).
pub fn instance_key(service: &str, id: &Uuid) -> String {
    format!("{service}.{}", id.hyphenated())
}

/// An optional field sent as nil reads as its default, like an omitted one
/// (`docs/protocol.md` §4).
pub(crate) fn nil_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl ServiceInstance {
    /// Starts building an instance of `service` reachable at `host:port`.
    pub fn builder(
        service: impl Into<SharedStr>,
        host: impl Into<SharedStr>,
        port: u16,
    ) -> ServiceInstanceBuilder {
        let now = Timestamp::now();
        ServiceInstanceBuilder {
            instance: ServiceInstance {
                service: service.into(),
                id: Uuid::new_v4(),
                host: host.into(),
                port,
                scheme: SharedStr::from("http"),
                metadata: Metadata::new(),
                tags: ThinVec::new(),
                status: InstanceStatus::Starting,
                weight: DEFAULT_WEIGHT,
                zone: None,
                registered_at: now,
                updated_at: now,
            },
        }
    }

    /// `scheme://host:port`, with IPv6 hosts bracketed.
    pub fn base_url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }

    /// The KV key of this instance: `<service>.<id>`.
    pub fn key(&self) -> String {
        instance_key(&self.service, &self.id)
    }

    /// Checks every limit the wire protocol sets; the error names the field and the problem.
    pub fn validate(&self) -> Result<()> {
        validate::validate_instance(self, true)
    }

    /// [`validate`](Self::validate) for an instance decoded from `encoded_len` bytes: when
    /// the whole record is within the metadata limit, the metadata is too, and re-encoding
    /// it to measure would only slow down a cold start.
    pub(crate) fn validate_received(&self, encoded_len: usize) -> Result<()> {
        validate::validate_instance(self, encoded_len > MAX_METADATA_BYTES)
    }

    /// True when every field except the timestamps matches `other`: a heartbeat, not a change.
    pub(crate) fn same_content(&self, other: &ServiceInstance) -> bool {
        self.service == other.service
            && self.id == other.id
            && self.host == other.host
            && self.port == other.port
            && self.scheme == other.scheme
            && self.metadata == other.metadata
            && self.tags == other.tags
            && self.status == other.status
            && self.weight == other.weight
            && self.zone == other.zone
    }
}

impl ServiceInstance {
    /// Shares this instance's repeated strings (service, scheme, zone, tags, metadata keys)
    /// with the other instances of a view.
    pub(crate) fn intern(&mut self, interner: &mut Interner) {
        interner.intern(&mut self.service);
        interner.intern(&mut self.scheme);
        if let Some(zone) = &mut self.zone {
            interner.intern(zone);
        }
        for tag in self.tags.iter_mut() {
            interner.intern(tag);
        }
        self.metadata.intern(interner);
    }
}

/// Builder for [`ServiceInstance`]; see [`ServiceInstance::builder`].
#[derive(Debug, Clone)]
pub struct ServiceInstanceBuilder {
    instance: ServiceInstance,
}

impl ServiceInstanceBuilder {
    /// Uses a given instance id instead of a fresh random one.
    pub fn id(mut self, id: Uuid) -> Self {
        self.instance.id = id;
        self
    }

    /// Sets the URL scheme (`http` by default).
    pub fn scheme(mut self, scheme: impl Into<SharedStr>) -> Self {
        self.instance.scheme = scheme.into();
        self
    }

    /// Adds one metadata entry. A `weight` entry holding a number also sets the weight.
    pub fn metadata(
        mut self,
        key: impl Into<SharedStr>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        let key = key.into();
        let value = value.into();
        if key == "weight" {
            self.weight_from(&value);
        }
        self.instance.metadata.insert(key, value);
        self
    }

    /// Replaces the whole metadata map.
    pub fn metadata_map(mut self, metadata: Metadata) -> Self {
        if let Some(value) = metadata.get("weight") {
            self.weight_from(value);
        }
        self.instance.metadata = metadata;
        self
    }

    /// A numeric `weight` metadata value that fits a `u32` sets the weight.
    fn weight_from(&mut self, value: &serde_json::Value) {
        if let Some(weight) = value.as_u64().and_then(|w| u32::try_from(w).ok()) {
            self.instance.weight = weight;
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<SharedStr>) -> Self {
        self.instance.tags.push(tag.into());
        self
    }

    /// Sets the starting status (`Starting` by default).
    pub fn status(mut self, status: InstanceStatus) -> Self {
        self.instance.status = status;
        self
    }

    /// Sets the load-balancing weight (100 by default).
    pub fn weight(mut self, weight: u32) -> Self {
        self.instance.weight = weight;
        self
    }

    /// Sets the availability zone.
    pub fn zone(mut self, zone: impl Into<SharedStr>) -> Self {
        self.instance.zone = Some(zone.into());
        self
    }

    /// Validates and returns the instance.
    pub fn build(self) -> Result<ServiceInstance> {
        self.instance.validate()?;
        Ok(self.instance)
    }
}

/// `SystemTime` as milliseconds since the Unix epoch on the wire.
pub(crate) mod unix_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn to_millis(time: &SystemTime) -> u64 {
        time.duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(to_millis(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let millis = u64::deserialize(deserializer)?;
        Ok(UNIX_EPOCH + Duration::from_millis(millis))
    }
}
