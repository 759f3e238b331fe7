//! [`Mesh`]: the handle a service embeds to register itself, see every other instance and
//! react to changes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::balance::{Balancer, BalancerBuilder, RequestGuard, Selection, Strategy};
use crate::config::{BackendConfig, NatsOptions, Timing};
use crate::error::{Error, ErrorKind, Result};
use crate::health::{CheckResult, HealthCheck, HealthMonitor, HealthPolicy};
use crate::instance::{count_by_status, validate_service_name, InstanceStatus, ServiceInstance};
use crate::metrics::{MeshStats, StatsSnapshot};
use crate::owner::{lock_owned, OwnedMap, Owners, Registration};
use crate::signal::TerminationSignals;
use crate::store::{MemoryStore, NatsStore, Store};
use crate::view::{
    EventBus, EventFilter, EventStream, KeyAlerts, MeshEvent, RegistryView, SelfPreservation,
    ServiceSlot, ViewTask, Watermark,
};

/// Owned instances deregistered (or put in maintenance) at once when a mesh shuts down.
const SHUTDOWN_CONCURRENCY: usize = 256;

/// Runs `step` on every owned registration, [`SHUTDOWN_CONCURRENCY`] at a time: one at a
/// time, a process owning thousands of instances would wait a round trip (and a view
/// flush) per instance to leave. Failures are logged with `failed`; a registration ended
/// through its own handle meanwhile is not a failure.
async fn on_each_owned<'a, F, Fut>(owned: &'a [Registration], failed: &str, step: F)
where
    F: Fn(&'a Registration) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    futures::stream::iter(owned)
        .for_each_concurrent(SHUTDOWN_CONCURRENCY, |registration| {
            let done = step(registration);
            async move {
                match done.await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotRegistered => {}
                    Err(e) => warn!(error = %e, id = %registration.id(), "{failed}"),
                }
            }
        })
        .await;
}

/// How long [`MeshBuilder::connect`] waits for the first full view by default.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds a [`Mesh`]: backend, timing, options. Mirrors async-nats' `ConnectOptions`.
///
/// ```no_run
/// # async fn run() -> prism_mesh::Result<()> {
/// use std::time::Duration;
/// use prism_mesh::{Mesh, NatsOptions};
///
/// let mesh = Mesh::builder()
///     .nats(NatsOptions::new("nats://127.0.0.1:4222"))
///     .instance_ttl(Duration::from_secs(10))
///     .heartbeat_interval(Duration::from_secs(3))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    backend: BackendConfig,
    timing: Timing,
    publish_expired_events: bool,
    ready_timeout: Duration,
    balancing: Balancing,
    self_preservation: SelfPreservation,
}

/// How [`Mesh::pick`] balances each service.
#[derive(Debug, Clone, Default)]
struct Balancing {
    strategy: Strategy,
    per_service: HashMap<String, Strategy>,
    selection: Selection,
}

impl Default for MeshBuilder {
    fn default() -> Self {
        MeshBuilder {
            backend: BackendConfig::default(),
            timing: Timing::default(),
            publish_expired_events: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            balancing: Balancing::default(),
            self_preservation: SelfPreservation::default(),
        }
    }
}

impl MeshBuilder {
    /// Uses the process-wide in-memory backend (the default).
    pub fn memory(mut self) -> Self {
        self.backend = BackendConfig::Memory(MemoryStore::global());
        self
    }

    /// Uses a given in-memory store (isolated peers, tests).
    pub fn memory_store(mut self, store: MemoryStore) -> Self {
        self.backend = BackendConfig::Memory(store);
        self
    }

    /// Uses NATS JetStream.
    pub fn nats(mut self, options: NatsOptions) -> Self {
        self.backend = BackendConfig::Nats(Box::new(options));
        self
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: BackendConfig) -> Self {
        self.backend = backend;
        self
    }

    /// Sets all timings at once.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// How long an instance lives without a heartbeat (default 10 s).
    pub fn instance_ttl(mut self, ttl: Duration) -> Self {
        self.timing.instance_ttl = ttl;
        self
    }

    /// How often owners refresh their keys (default 3 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.timing.heartbeat_interval = interval;
        self
    }

    /// How long deregistration tombstones are kept (default 60 s).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.timing.tombstone_ttl = ttl;
        self
    }

    /// Whether this peer records `expired` events on the event stream when it sees a key
    /// expire (default true). The stream keeps one per expiry whoever records it; a
    /// service the server does not let this user record for (`nats/auth.conf`: a service
    /// records its own, the `witness` user every service's) is left to peers that may.
    pub fn publish_expired_events(mut self, publish: bool) -> Self {
        self.publish_expired_events = publish;
        self
    }

    /// The load-balancing strategy of [`Mesh::pick`] for services without their own
    /// (default: smooth weighted round robin).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.balancing.strategy = strategy;
        self
    }

    /// The load-balancing strategy of [`Mesh::pick`] for `service`.
    pub fn service_strategy(mut self, service: impl Into<String>, strategy: Strategy) -> Self {
        self.balancing.per_service.insert(service.into(), strategy);
        self
    }

    /// Which instances [`Mesh::pick`] may choose (default: healthy ones).
    pub fn selection(mut self, selection: Selection) -> Self {
        self.balancing.selection = selection;
        self
    }

    /// How this peer treats many instances expiring at once (see [`SelfPreservation`];
    /// on by default).
    pub fn self_preservation(mut self, rule: SelfPreservation) -> Self {
        self.self_preservation = rule;
        self
    }

    /// How long `connect` waits for the first full view (default 60 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Checks the timing and backend options as `connect` does first, without connecting.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = prism_mesh::Mesh::builder()
    ///     .instance_ttl(Duration::from_secs(2))
    ///     .heartbeat_interval(Duration::from_secs(3));
    /// assert_eq!(builder.validate().unwrap_err().kind(), prism_mesh::ErrorKind::InvalidConfig);
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.timing.validate()?;
        if let BackendConfig::Nats(options) = &self.backend {
            options.validate()?;
        }
        Ok(())
    }

    /// Connects, loads the current view and starts watching. When this returns, reads see
    /// every instance that was live at the time.
    pub async fn connect(self) -> Result<Mesh> {
        self.validate()?;
        let store = match &self.backend {
            BackendConfig::Memory(store) => Store::Memory(store.clone()),
            BackendConfig::Nats(options) => {
                let least = self.timing.cluster_min_ttl();
                if options.replicas > 1 && self.timing.instance_ttl < least {
                    warn!(
                        ttl = ?self.timing.instance_ttl,
                        heartbeat_interval = ?self.timing.heartbeat_interval,
                        cluster_min_ttl = ?least,
                        "instance_ttl is below what outlasts a leader election of the replicated \
                         bucket: keys may expire on the server while it elects; peers hold such \
                         expiries while owners re-assert (see Timing::cluster_min_ttl)"
                    );
                }
                Store::Nats(NatsStore::connect(options).await?)
            }
        };
        Mesh::start(store, self).await
    }
}

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
    store: Store,
    timing: Timing,
    peer_id: String,
    registry: Arc<RegistryView>,
    bus: Arc<EventBus>,
    stats: Arc<MeshStats>,
    owned: Arc<OwnedMap>,
    /// Writes and heartbeats of the instances this peer registered.
    owners: Arc<Owners>,
    /// Whether registrations are accepted (false once a shutdown began). Read-held by
    /// each registration under way; a shutdown write-locks it to wait for them and set it
    /// false (the lock is fair: a registration that comes later waits and sees false).
    accepting: tokio::sync::RwLock<bool>,
    event_stream: String,
    closing: watch::Sender<bool>,
    balancing: Balancing,
    /// The balancers behind by-name picks, one per service, created on first pick.
    balancers: ArcSwap<HashMap<String, Balancer>>,
}

impl Drop for Inner {
    // Owners stop with the last handle; their keys then expire like a crashed process's.
    // `shutdown` is the graceful path.
    fn drop(&mut self) {
        self.closing.send_replace(true);
    }
}

impl Mesh {
    /// Starts building a mesh.
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// Connects to NATS at `url` with default options.
    pub async fn connect_nats(url: &str) -> Result<Mesh> {
        Mesh::builder().nats(NatsOptions::new(url)).connect().await
    }

    async fn start(store: Store, builder: MeshBuilder) -> Result<Mesh> {
        let peer_id = Uuid::new_v4().to_string();
        let registry = Arc::new(RegistryView::default());
        let bus = Arc::new(EventBus::default());
        let stats = Arc::new(MeshStats::default());
        let (ready_tx, mut ready) = watch::channel(false);
        let applied = Arc::new(Watermark::default());
        let closing = watch::channel(false).0;
        let alerts = Arc::new(KeyAlerts::default());
        let task = ViewTask {
            store: store.clone(),
            registry: registry.clone(),
            bus: bus.clone(),
            stats: stats.clone(),
            ready: ready_tx,
            peer_id: peer_id.clone(),
            publish_expired: builder.publish_expired_events,
            self_preservation: builder.self_preservation,
            applied: applied.clone(),
            alerts: alerts.clone(),
            closing: closing.subscribe(),
        };
        let span = tracing::info_span!("view", peer = %peer_id);
        tokio::spawn(task.run(store.watch()).instrument(span));
        match tokio::time::timeout(builder.ready_timeout, crate::util::until_true(&mut ready)).await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    "the view task ended before the first snapshot",
                ))
            }
            Err(_) => {
                store.close().await;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no full view of the bucket within {}",
                        humantime::format_duration(builder.ready_timeout)
                    ),
                ));
            }
        }
        info!(peer = %peer_id, instances = registry.instance_count(), "mesh view ready");
        let owners = Owners::start(
            store.clone(),
            builder.timing,
            stats.clone(),
            peer_id.clone(),
            closing.subscribe(),
            applied,
            alerts,
        );
        Ok(Mesh {
            inner: Arc::new(Inner {
                store,
                timing: builder.timing,
                peer_id,
                registry,
                bus,
                stats,
                owned: Arc::new(Mutex::new(HashMap::new())),
                owners,
                accepting: tokio::sync::RwLock::new(true),
                event_stream: match &builder.backend {
                    BackendConfig::Nats(options) => options.event_stream.clone(),
                    BackendConfig::Memory(_) => String::new(),
                },
                closing,
                balancing: builder.balancing,
                balancers: ArcSwap::default(),
            }),
        })
    }

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
        // Held until the registration is listed: `shutdown` waits for it.
        let accepting = self.inner.accepting.read().await;
        if !*accepting {
            return Err(Error::new(ErrorKind::Closed, "the mesh is shut down"));
        }
        // In the caller's task: a task per registration costs measurable latency. A call
        // cancelled before it returns stops its heartbeats again, and being acknowledged
        // and being listed happen with no await in between, so no instance is ever
        // heartbeated but unlisted.
        let registration = self
            .inner
            .owners
            .register(Arc::downgrade(&self.inner.owned), instance)
            .await?;
        self.lock_owned()
            .insert(registration.id(), registration.clone());
        Ok(registration)
    }

    /// The instances this handle registered and has not deregistered.
    pub fn registrations(&self) -> Vec<Registration> {
        self.lock_owned().values().cloned().collect()
    }

    /// Every instance of `service` in the view, whatever its status, ordered by id.
    pub fn discover(&self, service: &str) -> Vec<Arc<ServiceInstance>> {
        MeshStats::incr(&self.inner.stats.discoveries);
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
        crate::metrics::MetricsEndpoint::serve(self.clone(), addr).await
    }

    fn metrics_source(&self) -> crate::metrics::MetricsSource {
        let inner = &self.inner;
        let (view_lag, server_pending) = inner.store.watch_lag();
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
            reconnects: *inner.store.reconnects().borrow(),
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
        let instance = self
            .discover(service)
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| {
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

    /// The audit trail: lifecycle events from `since` (or the oldest kept), oldest first.
    /// Stored messages that cannot be decoded are skipped and logged.
    pub async fn event_history(
        &self,
        since: Option<std::time::SystemTime>,
    ) -> Result<Vec<crate::protocol::EventRecord>> {
        self.event_history_with_progress(since, |_, _| {}).await
    }

    /// [`event_history`](Mesh::event_history), calling `progress(done, total)` every
    /// 10,000 messages on long replays.
    pub async fn event_history_with_progress(
        &self,
        since: Option<std::time::SystemTime>,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<Vec<crate::protocol::EventRecord>> {
        let (records, malformed) = self
            .inner
            .store
            .event_history(&self.inner.event_stream, since, &progress)
            .await?;
        if malformed > 0 {
            warn!(
                malformed,
                "skipped undecodable messages in the event stream"
            );
        }
        Ok(records)
    }

    /// The registry as it was at `at`, rebuilt from the audit trail (see
    /// [`registry_at`](crate::registry_at)); as complete as the event stream's retention.
    pub async fn registry_at(
        &self,
        at: std::time::SystemTime,
    ) -> Result<std::collections::BTreeMap<Uuid, ServiceInstance>> {
        let records = self.event_history(None).await?;
        Ok(crate::view::registry_at(&records, at))
    }

    /// Counters of this peer.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner
            .stats
            .snapshot(self.inner.registry.instance_count())
    }

    /// Deregisters every instance this handle owns (peers see `Deregistered`), then stops
    /// heartbeats and closes the connection. Errors are logged: shutdown always finishes.
    pub async fn shutdown(&self) {
        self.stop_registering().await;
        let owned: Vec<Registration> = self.lock_owned().drain().map(|(_, r)| r).collect();
        on_each_owned(
            &owned,
            "deregistration at shutdown failed",
            |registration| async move { registration.deregister(Some("shutdown")).await },
        )
        .await;
        self.inner.closing.send_replace(true);
        self.inner.store.close().await;
    }

    /// Leaves the mesh without dropping a request: every instance this handle owns goes to
    /// `Maintenance` first (peers stop picking it at once), then after `drain` (time for
    /// requests in flight to finish) it is deregistered, then the mesh closes.
    pub async fn shutdown_gracefully(&self, drain: Duration) {
        self.stop_registering().await;
        let owned = self.registrations();
        on_each_owned(
            &owned,
            "could not announce maintenance",
            |registration| async move {
                registration
                    .set_status(InstanceStatus::Maintenance, Some("shutting down"))
                    .await
                    .map(|_| ())
            },
        )
        .await;
        if !owned.is_empty() {
            info!(instances = owned.len(), drain = %humantime::format_duration(drain), "draining before deregistration");
            tokio::time::sleep(drain).await;
        }
        self.shutdown().await;
    }

    /// Listens for SIGTERM or Ctrl-C (SIGINT) from now on; the returned future waits for
    /// one, then [`shutdown_gracefully`](Mesh::shutdown_gracefully) with `drain`, and
    /// yields the signal's name once the mesh is closed. Call it before announcing
    /// readiness: a SIGTERM that comes earlier still kills the process outright. Keep
    /// and await the future: dropping it leaves these signals caught and ignored (see
    /// [`TerminationSignals::listen`]).
    ///
    /// ```no_run
    /// # async fn run(mesh: prism_mesh::Mesh) -> prism_mesh::Result<()> {
    /// let leave = mesh.shutdown_on_signal(std::time::Duration::from_secs(5))?;
    /// println!("ready");
    /// let signal = leave.await;
    /// tracing::info!(signal, "left the mesh");
    /// # Ok(()) }
    /// ```
    pub fn shutdown_on_signal(
        &self,
        drain: Duration,
    ) -> Result<impl Future<Output = &'static str> + Send + 'static> {
        let mut signals = TerminationSignals::listen()?;
        let mesh = self.clone();
        Ok(async move {
            let signal = signals.recv().await;
            info!(signal, "termination signal; leaving the mesh");
            mesh.shutdown_gracefully(drain).await;
            signal
        })
    }

    /// Stops heartbeats and closes without deregistering: owned instances expire at the
    /// TTL, exactly as if the process had died.
    pub async fn close_without_deregistering(&self) {
        self.stop_registering().await;
        self.lock_owned().clear();
        self.inner.closing.send_replace(true);
        self.inner.store.close().await;
    }

    /// Refuses new registrations and waits for those under way to be listed.
    async fn stop_registering(&self) {
        *self.inner.accepting.write().await = false;
    }

    pub(crate) fn lock_owned(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Registration>> {
        lock_owned(&self.inner.owned)
    }
}
