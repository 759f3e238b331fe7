//! The peer view: the live registry every peer derives by replaying the bucket, and the
//! typed events it emits while doing so.
//!
//! One task per mesh handle owns the [`Index`]: it applies the backend's snapshot and
//! changes in log order, publishes per-service snapshots for readers, then hands the
//! resulting events to subscribers. Readers never wait for it.
//!
//! `task` is that task; `state` what it holds between flushes (`index`, the keys by key
//! and service); `registry` the read side; `events`
//! what subscribers get; `preservation` the rule that holds suspect expiries.

mod events;
mod index;
mod preservation;
mod registry;
mod state;
mod task;

#[cfg(test)]
mod convergence_tests;

pub(crate) use events::EventBus;
pub use events::{EventFilter, EventKind, EventStream, MeshEvent};
pub use preservation::SelfPreservation;
pub(crate) use registry::RegistryView;
pub use registry::{ServiceSlot, ServiceSnapshot};
pub(crate) use task::ViewTask;
