//! [`tower::discover::Discover`] over the live view, for `tower::balance` and friends.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tower::discover::Change;
use uuid::Uuid;

use super::Selection;
use crate::instance::ServiceInstance;
use crate::view::{EventFilter, EventStream, MeshEvent};

/// The error type of [`ServiceDiscover`]; the stream never yields one today (it ends when
/// the mesh shuts down), but `Discover` needs a type that is a real error.
#[derive(Debug, thiserror::Error)]
#[error("service discovery failed: {0}")]
pub struct DiscoverError(String);

/// A [`tower::discover::Discover`] of one service's eligible instances: `Insert` when an
/// instance becomes eligible (or its address changes), `Remove` when it stops being
/// eligible, deregisters or expires. Keys are instance ids; services are made by a
/// closure from the instance.
///
/// Eligible means: passes the selection's filters and has one of its statuses (fallback
/// tiers are a pick-time notion; here every listed status is eligible).
///
/// ```
/// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
/// use futures::StreamExt;
/// use prism_mesh::balance::ServiceDiscover;
/// use prism_mesh::{InstanceStatus, Mesh, MemoryStore, Selection, ServiceInstance};
/// use tower::discover::Change;
///
/// let mesh = Mesh::builder().memory_store(MemoryStore::new()).connect().await?;
/// let instance = ServiceInstance::builder("api", "127.0.0.1", 8080)
///     .status(InstanceStatus::Healthy)
///     .build()?;
/// mesh.register(instance).await?;
/// mesh.wait_for_service("api", std::time::Duration::from_secs(1)).await?;
///
/// let mut discover = ServiceDiscover::new(&mesh, "api", Selection::new(), |i| i.base_url());
/// match discover.next().await {
///     Some(Ok(Change::Insert(_, url))) => assert_eq!(url, "http://127.0.0.1:8080"),
///     other => panic!("unexpected {other:?}"),
/// }
/// mesh.shutdown().await;
/// # Ok(()) }
/// ```
pub struct ServiceDiscover<F, S> {
    selection: Selection,
    make_service: F,
    events: EventStream,
    /// What was last inserted per id, to tell address changes from heartbeats.
    inserted: HashMap<Uuid, Arc<ServiceInstance>>,
    pending: VecDeque<Change<Uuid, S>>,
}

/// Where a [`ServiceDiscover`] reads instances and hears of changes; implemented by
/// [`Mesh`](crate::Mesh).
pub trait InstanceSource {
    /// The instances of `service` now.
    fn discover(&self, service: &str) -> Vec<Arc<ServiceInstance>>;
    /// The events that pass `filter` from now on.
    fn subscribe_filtered(&self, filter: EventFilter) -> EventStream;
}

impl<F, S> std::fmt::Debug for ServiceDiscover<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDiscover")
            .field("selection", &self.selection)
            .field("inserted", &self.inserted.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<F, S> ServiceDiscover<F, S>
where
    F: FnMut(&ServiceInstance) -> S,
{
    /// Discovers `service` in `mesh` (a [`Mesh`](crate::Mesh)), making a service per
    /// eligible instance.
    pub fn new(
        mesh: &impl InstanceSource,
        service: &str,
        selection: Selection,
        make_service: F,
    ) -> Self {
        // Subscribe before reading the snapshot so no change falls between the two.
        let events = mesh.subscribe_filtered(EventFilter::service(service));
        let mut discover = ServiceDiscover {
            selection,
            make_service,
            events,
            inserted: HashMap::new(),
            pending: VecDeque::new(),
        };
        for instance in mesh.discover(service) {
            discover.observe(instance);
        }
        discover
    }

    fn eligible(&self, instance: &ServiceInstance) -> bool {
        self.selection.status_order().contains(&instance.status) && self.selection.matches(instance)
    }

    /// Applies the instance's current state.
    fn observe(&mut self, instance: Arc<ServiceInstance>) {
        if !self.eligible(&instance) {
            self.forget(instance.id);
            return;
        }
        let moved = match self.inserted.get(&instance.id) {
            Some(known) => {
                known.host != instance.host
                    || known.port != instance.port
                    || known.scheme != instance.scheme
            }
            None => true,
        };
        if moved {
            let service = (self.make_service)(&instance);
            self.pending.push_back(Change::Insert(instance.id, service));
        }
        self.inserted.insert(instance.id, instance);
    }

    fn forget(&mut self, id: Uuid) {
        if self.inserted.remove(&id).is_some() {
            self.pending.push_back(Change::Remove(id));
        }
    }
}

impl<F, S> Stream for ServiceDiscover<F, S>
where
    F: FnMut(&ServiceInstance) -> S + Unpin,
    S: Unpin,
{
    type Item = Result<Change<Uuid, S>, DiscoverError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(event)) => match event {
                    MeshEvent::Registered { instance }
                    | MeshEvent::Updated { instance, .. }
                    | MeshEvent::StatusChanged { instance, .. } => this.observe(instance),
                    MeshEvent::Deregistered { instance, .. } | MeshEvent::Expired { instance } => {
                        this.forget(instance.id)
                    }
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
