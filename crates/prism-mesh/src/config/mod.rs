//! Configuration: how to reach NATS ([`NatsOptions`], `nats`) and how long instances live
//! ([`Timing`], `timing`). Both are checked once, when a mesh is built.

use std::time::Duration;

mod nats;
mod timing;

pub(crate) use nats::{redact_url, UrlCredentials};
pub use nats::{NatsAuth, NatsOptions, MAX_SHARDS};
pub use timing::{Timing, MAX_ELECTION_TIMEOUT, MAX_TOMBSTONE_TTL};

/// A `tracing` filter directive to add to every subscriber of a process that uses NATS
/// credentials. async-nats prints server urls, with any password in them, at DEBUG (its
/// `CONNECT` line is redacted since 0.51). prism-mesh itself
/// never logs a secret; the `prism` CLI adds this directive to whatever `PRISM_LOG` says.
///
/// ```
/// let filter = tracing_subscriber::EnvFilter::new("trace")
///     .add_directive(prism_mesh::SECRET_SAFE_LOG_DIRECTIVE.parse().unwrap());
/// # drop(filter);
/// ```
pub const SECRET_SAFE_LOG_DIRECTIVE: &str = "async_nats=info";

/// How long [`NatsOptions::connect_deadline`] is unless set: longer than nats-server's
/// longest election timeout (9 s) plus a server's start-up.
pub const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// JetStream storage for the bucket and the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    /// On disk (default): survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost on restart.
    Memory,
}
