//! Health checking by each owner of its own instances, like a Consul agent: verdicts go
//! out as status changes, so every peer learns them through the mesh.

mod check;
mod monitor;

pub use check::{
    health_url, run_check, CheckResult, CustomCheck, HealthCheck, HEALTH_CHECK_KEY,
    HEALTH_ENDPOINT_KEY,
};
pub use monitor::{HealthMonitor, HealthPolicy};
