//! The audit trail, read: lifecycle events as the event stream stored them, streamed in
//! bounded memory, and the registry as it was at any moment the stream still covers.
//!
//! A [`HistoryQuery`] says what to read (a service, an instance, a time window, or the
//! events after a stream sequence, and whether to go on with live events); the backend
//! reads it (`store::history`: the server filters by subject and starts at the time or
//! sequence, so a reader pays for what it asked for). Here: `fold` rebuilds a registry from
//! events; `past` reads the registry at a moment from the nearest checkpoint before it;
//! `checkpoint` says when peers write those checkpoints.

mod checkpoint;
mod fold;
mod past;

pub use crate::store::{History, HistoryQuery, StoredEvent};
pub use checkpoint::CheckpointPolicy;
pub(crate) use checkpoint::CheckpointTask;
pub use fold::{diff_registries, registry_at, PastRegistry, RegistryDiff};
pub(crate) use past::{past_registry, registry_diff, write_checkpoint};
