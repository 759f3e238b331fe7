//! # prism-mesh
//!
//! Service discovery with no central server. Each service embeds a [`Mesh`]: it registers
//! its instances, sees every other live instance in an in-memory view, and gets typed
//! events when instances come, change, leave or die.
//!
//! With the NATS backend, instance records live in a JetStream KV bucket with per-key TTLs
//! (a crashed owner's key expires on the server) and lifecycle events go to
//! `discovery.<service>.<instance>.<event>` as an audit trail. The in-memory backend has the
//! same semantics inside one process. `docs/architecture.md` and `docs/protocol.md` in the
//! repository describe the data flow and the wire format.
//!
//! ```
//! # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
//! use prism_mesh::{InstanceStatus, Mesh, MemoryStore, ServiceInstance};
//!
//! let mesh = Mesh::builder().memory_store(MemoryStore::new()).connect().await?;
//! let me = mesh
//!     .register(ServiceInstance::builder("orders", "10.0.0.7", 8080).tag("v2").build()?)
//!     .await?;
//! me.set_status(InstanceStatus::Healthy, None).await?;
//! assert_eq!(mesh.discover("orders")[0].base_url(), "http://10.0.0.7:8080");
//! mesh.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod balance;
mod compat;
mod config;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod health;
mod history;
mod instance;
mod mesh;
mod metrics;
mod owner;
pub mod protocol;
pub use compat::settings;
mod signal;
mod store;
mod sync;
mod view;

pub use balance::{Balancer, BalancerBuilder, OutlierDetection, RequestGuard, Selection, Strategy};
pub use compat::client::{ClientOptions, DiscoveryClient};
pub use compat::global::{
    configure_default, configure_default_from_settings, default_client, discover_service,
    get_service_url, register_service,
};
pub use config::{
    NatsAuth, NatsOptions, StorageKind, Timing, DEFAULT_CONNECT_DEADLINE, MAX_ELECTION_TIMEOUT,
    MAX_SHARDS, MAX_TOMBSTONE_TTL, SECRET_SAFE_LOG_DIRECTIVE,
};
pub use error::{Error, ErrorKind, Result};
pub use health::{CheckResult, HealthCheck, HealthMonitor, HealthPolicy};
pub use history::{
    diff_registries, registry_at, CheckpointPolicy, History, HistoryQuery, PastRegistry,
    RegistryDiff, StoredEvent,
};
pub use instance::{
    count_by_status, validate_service_name, InstanceStatus, Metadata, ServiceInstance,
    ServiceInstanceBuilder, SharedStr, ThinVec, Timestamp, DEFAULT_WEIGHT, MAX_HOST_LEN,
    MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_SERVICE_NAME_LEN, MAX_TAGS, MAX_TAG_LEN,
};
pub use mesh::{BackendConfig, Mesh, MeshBuilder};
pub use metrics::{MetricsEndpoint, StatsSnapshot};
pub use owner::Registration;
pub use settings::{DiscoverySettings, ServiceSettings};
pub use signal::TerminationSignals;
pub use store::MemoryStore;
pub use view::{
    EventFilter, EventKind, EventStream, MeshEvent, SelfPreservation, ServiceSlot, ServiceSnapshot,
};
