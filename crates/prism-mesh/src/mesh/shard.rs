//! The shards of a mesh: a bucket each (one for the memory backend), with the view task
//! that follows it and the owners that write it. A service's instances all live in one
//! shard (`protocol::shard_of`), so each shard is a mesh of its own services; the views
//! share one registry, one event bus and one set of counters.

use std::sync::Arc;

use tokio::sync::watch;

use super::Mesh;
use crate::owner::Owners;
use crate::store::{Interest, Store};

/// One shard's parts.
#[derive(Debug)]
pub(super) struct Shard {
    pub(super) store: Store,
    /// Writes and heartbeats of the instances this peer registered in this shard.
    pub(super) owners: Arc<Owners>,
    /// The services of this shard the view follows; its view task watches it.
    pub(super) interest: watch::Sender<Interest>,
    /// The interest generation this shard's view has loaded.
    pub(super) loaded: watch::Receiver<u64>,
}

impl Mesh {
    /// The shard holding `service`'s instances.
    pub(super) fn shard(&self, service: &str) -> &Shard {
        let shards = &self.inner.shards;
        // Every read goes through here: no hash for the common single bucket.
        if shards.len() == 1 {
            return &shards[0];
        }
        let count = u16::try_from(shards.len()).unwrap_or(u16::MAX);
        &shards[usize::from(crate::protocol::shard_of(service, count))]
    }

    /// The store of the event stream and of everything that is not a bucket (requests,
    /// the audit trail): shard 0's, whose connection every shard shares.
    pub(super) fn events_store(&self) -> &Store {
        &self.inner.shards[0].store
    }

    /// Closes every shard's store.
    pub(super) async fn close_stores(&self) {
        for shard in &self.inner.shards {
            shard.store.close().await;
        }
    }
}
