//! The compatibility layer: what is shaped like MarketPrism's Python discovery module, on
//! top of [`Mesh`](crate::Mesh), the one front door. `DiscoveryClient` is the module's
//! client object, `global` its process-wide functions, `settings` its YAML file format.
//! New code uses [`Mesh`](crate::Mesh) and [`MeshBuilder`](crate::MeshBuilder) directly.

pub(crate) mod client;
pub(crate) mod global;
pub mod settings;
