//! The audit trail through a mesh handle: events as they were stored, the registry at any
//! moment the event stream covers, what changed between two, and checkpoints on demand.

use std::collections::BTreeMap;
use std::time::SystemTime;

use uuid::Uuid;

use super::Mesh;
use crate::error::Result;
use crate::history::{
    past_registry, registry_diff, write_checkpoint, History, HistoryQuery, PastRegistry,
    RegistryDiff,
};
use crate::instance::ServiceInstance;
use crate::protocol::EventRecord;

impl Mesh {
    /// Lifecycle events as `query` says, oldest first, read as they are consumed (memory
    /// stays flat whatever the history's length). The server filters by service and
    /// instance and starts at the query's time or sequence.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
    /// use prism_mesh::{HistoryQuery, Mesh, MemoryStore, ServiceInstance};
    ///
    /// let mesh = Mesh::builder().memory_store(MemoryStore::new()).connect().await?;
    /// mesh.register(ServiceInstance::builder("orders", "10.0.0.7", 8080).build()?).await?;
    /// let mut events = mesh.history(HistoryQuery::new().service("orders")).await?;
    /// let first = events.next().await.expect("one event")?;
    /// assert_eq!(first.record.instance.service, "orders");
    /// # mesh.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn history(&self, query: HistoryQuery) -> Result<History> {
        query.validate()?;
        self.events_store().history(&query).await
    }

    /// The stream sequence of the last event stored (0 when none is): a reader that shows
    /// the live view first, then events, follows from here with
    /// [`HistoryQuery::after_sequence`].
    pub async fn history_end(&self) -> Result<u64> {
        Ok(self.events_store().event_bounds().await?.1)
    }

    /// Every lifecycle event stored since `since` (or the oldest kept), loaded into memory;
    /// for long histories, stream them with [`history`](Mesh::history).
    pub async fn event_history(&self, since: Option<SystemTime>) -> Result<Vec<EventRecord>> {
        let mut query = HistoryQuery::new();
        if let Some(since) = since {
            query = query.since(since);
        }
        let mut events = self.history(query).await?;
        let mut records = Vec::new();
        while let Some(event) = events.next().await {
            records.push(event?.record);
        }
        Ok(records)
    }

    /// The registry as the event stream had made it at `at` (`None`: now), read from the
    /// last checkpoint stored before it and the events after that checkpoint.
    pub async fn past_registry(&self, at: Option<SystemTime>) -> Result<PastRegistry> {
        past_registry(self.events_store(), at).await
    }

    /// The registry at `at` by instance id (see [`past_registry`](Mesh::past_registry)).
    pub async fn registry_at(&self, at: SystemTime) -> Result<BTreeMap<Uuid, ServiceInstance>> {
        Ok(self.past_registry(Some(at)).await?.into_map())
    }

    /// What changed between `from` and `to`, with the registries at both ends (each read
    /// from its nearest checkpoint).
    pub async fn registry_diff(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<(RegistryDiff, PastRegistry, PastRegistry)> {
        let (before, after) = registry_diff(self.events_store(), from, to).await?;
        Ok((before.diff(&after), before, after))
    }

    /// Writes a checkpoint of the registry now (NATS only), whatever the
    /// [`CheckpointPolicy`](crate::CheckpointPolicy) says; the stream sequence of its first
    /// part, or `None` when another peer's came first.
    pub async fn write_checkpoint(&self) -> Result<Option<u64>> {
        write_checkpoint(self.events_store()).await
    }
}
