//! A stateless gateway onto a prism-mesh, for everything that is not a Rust process.
//!
//! A [`Gateway`] joins the mesh as an ordinary peer (its view follows every service) and
//! serves what it sees: a native JSON API with Server-Sent Events and time travel, a
//! Consul-compatible subset of the catalog, health and agent APIs, DNS in Consul's naming,
//! and a live web page. It holds no state of its own beyond the registrations clients make
//! through its agent API, which are ordinary mesh instances it owns. Any number may run;
//! the mesh needs none.
//!
//! ```no_run
//! use prism_mesh::Mesh;
//! use prism_serve::{Gateway, ServeOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::connect_nats("nats://127.0.0.1:4222").await?;
//! let options = ServeOptions::new()
//!     .http("127.0.0.1:8500".parse()?)
//!     .dns("127.0.0.1:8600".parse()?)
//!     .domain("prism")?;
//! let gateway = Gateway::start(mesh.clone(), options).await?;
//! println!("HTTP on {:?}, DNS on {:?}", gateway.http_addr(), gateway.dns_addr());
//! gateway.shutdown().await;
//! mesh.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! `changes` keeps the change index blocking queries wait on; `agent` the registrations
//! made through the Consul agent API and their TTL checks; `consul` the mapping of mesh
//! instances to Consul's shapes; `http` the routes; `dns` the DNS server; `gateway` starts
//! and stops them.

#![warn(missing_docs)]

mod agent;
mod changes;
mod consul;
mod dns;
mod error;
mod gateway;
mod http;
mod options;

pub use error::{ServeError, ServeErrorKind};
pub use gateway::Gateway;
pub use options::ServeOptions;
