//! [`Mesh`]: the handle a service embeds to register itself, see every other instance and
//! react to changes.
//!
//! `builder` configures and connects one (the only way to make a `Mesh`); `shutdown`
//! holds the ways it ends; `audit` reads the trail; `control` carries operators' requests
//! to owners; this file holds what a running mesh does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use crate::balance::{Balancer, BalancerBuilder, RequestGuard, Strategy};
use crate::config::Timing;
use crate::error::{Error, ErrorKind, Result};
use crate::health::{CheckResult, HealthCheck, HealthMonitor, HealthPolicy};
use crate::instance::{count_by_status, validate_service_name, ServiceInstance};
use crate::metrics::{MeshStats, StatsSnapshot};
use crate::owner::{lock_owned, OwnedMap, Registration};
use crate::view::{EventBus, EventFilter, EventStream, MeshEvent, RegistryView, ServiceSlot};

mod audit;
mod builder;
mod control;
mod interest;
mod shard;
mod shutdown;

use builder::Balancing;
pub use builder::{BackendConfig, MeshBuilder};

/// A peer of the mesh: registers instances, reads the live view, streams events.
///
/// Clones share one peer. Reads ([`discover`](Mesh::discover), [`services`](Mesh::services))
/// come from memory and never touch the network.
///
/// ```
/// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
/// use futures::StreamExt;
/// use prism_mesh::{InstanceStatus, Mesh, MemoryStore, MeshEvent, ServiceInstance};
///
/// let mesh = Mesh::builder().memory_store(MemoryStore::new()).connect().await?;
/// let mut events = mesh.subscribe();
///
/// let me = mesh.register(ServiceInstance::builder("api", "127.0.0.1", 8080).build()?).await?;
/// me.set_status(InstanceStatus::Healthy, Some("ready")).await?;
///
/// assert!(matches!(events.next().await, Some(MeshEvent::Registered { .. })));
/// match events.next().await {
///     Some(MeshEvent::StatusChanged { previous, current, .. }) => {
///         assert_eq!((previous, current), (InstanceStatus::Starting, InstanceStatus::Healthy));
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// assert_eq!(mesh.discover("api")[0].status, InstanceStatus::Healthy);
/// mesh.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Mesh {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// At least one; a mesh on NATS has as many as its buckets.
    shards: Vec<shard::Shard>,
    timing: Timing,
    peer_id: String,
    registry: Arc<RegistryView>,
    bus: Arc<EventBus>,
    stats: Arc<MeshStats>,
    owned: Arc<OwnedMap>,
    /// Whether registrations are accepted (false once a shutdown began). Read-held by
    /// each registration under way; a shutdown write-locks it to wait for them and set it
    /// false (the lock is fair: a registration that comes later waits and sees false).
    accepting: tokio::sync::RwLock<bool>,
    closing: watch::Sender<bool>,
    balancing: Balancing,
    /// The balancers behind by-name picks, one per service, created on first pick.
    balancers: ArcSwap<HashMap<String, Balancer>>,
    /// Hands new registrations to the task answering control requests (NATS only).
    control_desk: Option<tokio::sync::mpsc::UnboundedSender<Registration>>,
    /// Services read before they were followed (warned of once each).
    unfollowed_reads: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Drop for Inner {
    // Owners stop with the last handle; their keys then expire like a crashed process's.
    // `shutdown` is the graceful path.
    fn drop(&mut self) {
        self.closing.send_replace(true);
    }
}

impl Mesh {
    /// This peer's id (the `origin` of the events it publishes).
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The timing owners of this mesh use.
    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// Registers `instance`: validates it (no network call if invalid), writes its key and
    /// the `registered` event, then keeps it alive until deregistered or shut down.
    /// Fails with [`ErrorKind::Closed`] once a shutdown began; a shutdown waits for the
    /// registrations already under way and deregisters them too. A caller that stops
    /// waiting before this returns may leave the key written: with no owner, it expires at
    /// its TTL, as after a crash.
    pub async fn register(&self, instance: ServiceInstance) -> Result<Registration> {
        instance.validate()?;
        // Views key instances by id: an id names one instance across the mesh, and a
        // peer refuses a held id written under another service.
        if let Some(held) = self
            .lock_owned()
            .get(&instance.id)
            .filter(|held| held.instance().service != instance.service)
        {
            return Err(Error::invalid(format!(
                "instance id {} is already registered here as an instance of {}: an id \
                 names one instance across the mesh",
                instance.id,
                held.instance().service
            )));
        }
        // Held until the registration is listed: `shutdown` waits for it.
        let accepting = self.inner.accepting.read().await;
        if !*accepting {
            return Err(Error::new(
                ErrorKind::Closed,
                "the mesh is shut down (or was built with registry(false), to read the trail)",
            ));
        }
        // An owner must see its own writes: its service is followed.
        self.follow(&instance.service).await?;
        // In the caller's task: a task per registration costs measurable latency. A call
        // cancelled before it returns stops its heartbeats again, and being acknowledged
        // and being listed happen with no await in between, so no instance is ever
        // heartbeated but unlisted.
        let registration = self
            .shard(&instance.service)
            .owners
            .register(Arc::downgrade(&self.inner.owned), instance)
            .await?;
        self.lock_owned()
            .insert(registration.id(), registration.clone());
        self.listen_for_control(&registration);
        Ok(registration)
    }

    /// The instances this handle registered and has not deregistered.
    pub fn registrations(&self) -> Vec<Registration> {
        self.lock_owned().values().cloned().collect()
    }

    /// Every instance of `service` in the view, whatever its status, ordered by id.
    pub fn discover(&self, service: &str) -> Vec<Arc<ServiceInstance>> {
        MeshStats::incr(&self.inner.stats.discoveries);
        self.read_of(service);
        self.inner
            .registry
            .slot(service)
            .map(|slot| slot.load().iter().cloned().collect())
            .unwrap_or_default()
    }

    /// When instance `id`'s key was last written (its registration, last heartbeat or
    /// change), as the backend stored it. `None` when it is not in the view.
    pub fn last_heartbeat(&self, id: Uuid) -> Option<std::time::SystemTime> {
        self.inner.registry.last_write(id)
    }

    /// A live handle on `service`'s snapshot, for callers that read it often. It follows
    /// the view while the mesh is open (a handle of the `Mesh` is kept or it was not shut
    /// down); after that it keeps the last snapshot. So do balancers.
    pub fn service(&self, service: &str) -> Arc<ServiceSlot> {
        self.read_of(service);
        self.inner.registry.slot_or_insert(service)
    }

    /// A balancer for `service` with this mesh's default strategy and selection; change
    /// either on the builder.
    pub fn balancer(&self, service: &str) -> Result<BalancerBuilder> {
        validate_service_name(service)?;
        Ok(BalancerBuilder::new(service, self.service(service))
            .strategy(self.strategy_for(service))
            .selection(self.inner.balancing.selection.clone()))
    }

    /// The balancer [`pick`](Mesh::pick) uses for `service` (created on first use).
    pub fn balanced(&self, service: &str) -> Result<Balancer> {
        if let Some(balancer) = self.inner.balancers.load().get(service) {
            return Ok(balancer.clone());
        }
        let fresh = self.balancer(service)?.build();
        self.inner.balancers.rcu(|balancers| {
            if balancers.contains_key(service) {
                return Arc::clone(balancers);
            }
            let mut balancers = HashMap::clone(balancers);
            balancers.insert(service.to_string(), fresh.clone());
            Arc::new(balancers)
        });
        Ok(self
            .inner
            .balancers
            .load()
            .get(service)
            .cloned()
            .unwrap_or(fresh))
    }

    /// One instance of `service`, chosen by its configured strategy among eligible
    /// (by default healthy) instances. Reads memory only.
    pub fn pick(&self, service: &str) -> Result<Arc<ServiceInstance>> {
        MeshStats::incr(&self.inner.stats.discoveries);
        match self.inner.balancers.load().get(service) {
            Some(balancer) => balancer.pick(),
            None => self.balanced(service)?.pick(),
        }
    }

    /// The base URL of a [`pick`](Mesh::pick) of `service`.
    pub fn pick_url(&self, service: &str) -> Result<String> {
        self.pick(service).map(|instance| instance.base_url())
    }

    /// The instance of `service` for `key` by consistent hashing (sticky routing).
    pub fn pick_by_key(
        &self,
        service: &str,
        key: impl AsRef<[u8]>,
    ) -> Result<Arc<ServiceInstance>> {
        self.balanced(service)?.pick_by_key(key)
    }

    /// A [`pick`](Mesh::pick) held for the duration of a request; see [`RequestGuard`].
    pub fn pick_guarded(&self, service: &str) -> Result<RequestGuard> {
        self.balanced(service)?.pick_guarded()
    }

    fn strategy_for(&self, service: &str) -> Strategy {
        let balancing = &self.inner.balancing;
        balancing
            .per_service
            .get(service)
            .copied()
            .unwrap_or(balancing.strategy)
    }

    /// The mesh's metrics in the Prometheus / OpenMetrics text format, with the names of
    /// the Python module it replaces (`service_discovery_registrations_total`, ...).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
    /// let mesh = prism_mesh::Mesh::builder().memory_store(Default::default()).connect().await?;
    /// let text = mesh.render_metrics();
    /// assert!(text.contains("service_discovery_instances_active 0"));
    /// # Ok(()) }
    /// ```
    pub fn render_metrics(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        self.register_metrics(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Adds this mesh's metrics to an application's own registry; they are read fresh at
    /// every scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let mesh = self.clone();
        registry.register_collector(Box::new(crate::metrics::exposition::MeshCollector {
            read: move || mesh.metrics_source(),
        }));
    }

    /// Serves [`render_metrics`](Mesh::render_metrics) at `http://<addr>/metrics` until
    /// the returned endpoint is dropped.
    pub async fn serve_metrics(
        &self,
        addr: impl tokio::net::ToSocketAddrs,
    ) -> Result<crate::metrics::MetricsEndpoint> {
        let mesh = self.clone();
        crate::metrics::MetricsEndpoint::serve(move || mesh.render_metrics(), addr).await
    }

    fn metrics_source(&self) -> crate::metrics::MetricsSource {
        let inner = &self.inner;
        let (view_lag, server_pending) = inner
            .shards
            .iter()
            .map(|shard| shard.store.watch_lag())
            .max()
            .unwrap_or_default();
        let mut instances = Vec::new();
        for service in inner.registry.service_names() {
            if let Some(slot) = inner.registry.slot(&service) {
                for (status, count) in count_by_status(slot.load().iter()) {
                    instances.push((service.clone(), status.as_str(), count as u64));
                }
            }
        }
        crate::metrics::MetricsSource {
            stats: self.stats(),
            reconnects: *self.events_store().reconnects().borrow(),
            owned: self.lock_owned().len() as u64,
            instances,
            view_lag,
            server_pending,
        }
    }

    /// Checks `registration` (an instance this mesh owns) with `check` under `policy`,
    /// turning results into `Healthy`/`Unhealthy` status changes that every peer sees,
    /// with the check's output as the reason.
    pub fn monitor_health(
        &self,
        registration: &Registration,
        check: HealthCheck,
        policy: HealthPolicy,
    ) -> Result<HealthMonitor> {
        HealthMonitor::start(
            registration.clone(),
            check,
            policy,
            self.inner.stats.clone(),
        )
    }

    /// Runs the health check of instance `id` of `service` now, from this peer: HTTP GET
    /// of its health URL (or a TCP connect when its metadata says `health_check: tcp`).
    pub async fn health_check_service(
        &self,
        service: &str,
        id: Uuid,
        timeout: Duration,
    ) -> Result<CheckResult> {
        let instance = self.find_instance(service, id).ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                format!("no instance {id} of {service} in the view"),
            )
        })?;
        let result =
            crate::health::run_check(&HealthCheck::for_instance(&instance), &instance, timeout)
                .await;
        self.inner.stats.record_health_check(result.passing);
        Ok(result)
    }

    /// One instance of the view, by service and id.
    pub(crate) fn find_instance(&self, service: &str, id: Uuid) -> Option<Arc<ServiceInstance>> {
        self.discover(service).into_iter().find(|i| i.id == id)
    }

    /// Names of services with at least one instance, sorted.
    pub fn services(&self) -> Vec<String> {
        self.inner.registry.service_names()
    }

    /// Number of instances in the view.
    pub fn instance_count(&self) -> usize {
        self.inner.registry.instance_count()
    }

    /// Waits until `service` has at least one instance; returns them.
    pub async fn wait_for_service(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Result<Vec<Arc<ServiceInstance>>> {
        // Subscribe before looking so an arrival between the two is not missed.
        let mut events = self.subscribe_filtered(EventFilter::service(service));
        self.follow(service).await?;
        let wait = async {
            loop {
                let instances = self.discover(service);
                if !instances.is_empty() {
                    return Ok(instances);
                }
                if events.next().await.is_none() {
                    return Err(Error::new(ErrorKind::Closed, "the mesh is shut down"));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "no instance of {service:?} appeared within {}",
                    humantime::format_duration(timeout)
                ),
            )
        })?
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> EventStream {
        self.inner.bus.subscribe(EventFilter::all())
    }

    /// Events passing `filter` from now on.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> EventStream {
        self.inner.bus.subscribe(filter)
    }

    /// Runs `handler` for each event passing `filter`, one at a time, in order, on its own
    /// task (a slow handler delays only itself).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
    /// use prism_mesh::{EventKind, Mesh, MemoryStore, MeshEvent};
    ///
    /// let mesh = Mesh::builder().memory_store(MemoryStore::new()).connect().await?;
    /// mesh.on(EventKind::Expired, |event: MeshEvent| async move {
    ///     tracing::warn!(service = event.service(), "instance expired");
    /// });
    /// # Ok(()) }
    /// ```
    pub fn on<F, Fut>(
        &self,
        filter: impl Into<EventFilter>,
        handler: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(MeshEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut events = self.subscribe_filtered(filter.into());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                handler(event).await;
            }
        })
    }

    /// Counters of this peer.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner
            .stats
            .snapshot(self.inner.registry.instance_count())
    }

    pub(crate) fn lock_owned(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Registration>> {
        lock_owned(&self.inner.owned)
    }
}

#[cfg(feature = "tower")]
impl crate::balance::InstanceSource for Mesh {
    fn discover(&self, service: &str) -> Vec<Arc<ServiceInstance>> {
        Mesh::discover(self, service)
    }

    fn subscribe_filtered(&self, filter: EventFilter) -> EventStream {
        Mesh::subscribe_filtered(self, filter)
    }
}
