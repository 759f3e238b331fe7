//! Configuring and connecting a [`Mesh`]: the backend, timing, balancing and
//! self-preservation, validated once, then the view, the owners and the first snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::balance::{Selection, Strategy};
use crate::config::{NatsOptions, Timing};
use crate::error::{Error, ErrorKind, Result};
use crate::history::{CheckpointPolicy, CheckpointTask};
use crate::metrics::MeshStats;
use crate::owner::{Owners, ViewLink};
use crate::store::{Interest, MemoryStore, NatsStore, Store};
use crate::sync::{KeyAlerts, Watermark};
use crate::view::{EventBus, RegistryView, SelfPreservation, ViewTask};

use super::shard::Shard;
use super::{Inner, Mesh};

/// Which backend a mesh runs on.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// In-process: every mesh on the same [`MemoryStore`] is a peer of the others.
    Memory(MemoryStore),
    /// NATS JetStream: peers anywhere that reach the same servers.
    Nats(Box<NatsOptions>),
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
    /// Chosen explicitly: a builder without one refuses to connect rather than join a
    /// process-wide mesh by surprise.
    backend: Option<BackendConfig>,
    timing: Timing,
    publish_expired_events: bool,
    ready_timeout: Duration,
    balancing: Balancing,
    self_preservation: SelfPreservation,
    checkpoints: CheckpointPolicy,
    registry: bool,
    /// The services followed (`None`: all).
    follow: Option<std::collections::BTreeSet<String>>,
}

/// How [`Mesh::pick`] balances each service.
#[derive(Debug, Clone, Default)]
pub(super) struct Balancing {
    pub(super) strategy: Strategy,
    pub(super) per_service: HashMap<String, Strategy>,
    pub(super) selection: Selection,
}

impl Default for MeshBuilder {
    fn default() -> Self {
        MeshBuilder {
            backend: None,
            timing: Timing::default(),
            publish_expired_events: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            balancing: Balancing::default(),
            self_preservation: SelfPreservation::default(),
            checkpoints: CheckpointPolicy::default(),
            registry: true,
            follow: None,
        }
    }
}

impl MeshBuilder {
    /// Uses the process-wide in-memory backend: every mesh built with `memory()` in this
    /// process is a peer of the others. For isolated peers, use
    /// [`memory_store`](MeshBuilder::memory_store).
    pub fn memory(mut self) -> Self {
        self.backend = Some(BackendConfig::Memory(MemoryStore::global()));
        self
    }

    /// Uses a given in-memory store (isolated peers, tests).
    pub fn memory_store(mut self, store: MemoryStore) -> Self {
        self.backend = Some(BackendConfig::Memory(store));
        self
    }

    /// Uses NATS JetStream.
    pub fn nats(mut self, options: NatsOptions) -> Self {
        self.backend = Some(BackendConfig::Nats(Box::new(options)));
        self
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: BackendConfig) -> Self {
        self.backend = Some(backend);
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
        for service in self.follow.iter().flatten() {
            crate::instance::validate_service_name(service)?;
        }
        match self.chosen_backend()? {
            BackendConfig::Nats(options) => {
                options.validate()?;
                self.checkpoints.validate(Some(options.event_max_age))
            }
            BackendConfig::Memory(_) => Ok(()),
        }
    }

    /// Whether this mesh follows the bucket into a live registry (default true). Without
    /// it, a mesh reads the audit trail ([`Mesh::history`], [`Mesh::past_registry`]) and
    /// nothing else: it sees no instances and cannot register any, and connecting does not
    /// wait for a snapshot of the bucket.
    pub fn registry(mut self, follow: bool) -> Self {
        self.registry = follow;
        self
    }

    /// Follows `service`: the view holds only the services named this way (and those
    /// this mesh registers instances of, or reads later: see [`Mesh::follow`]), and the
    /// server sends this peer nothing about the others. Without any call the view holds
    /// every service.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
    /// use prism_mesh::{MemoryStore, Mesh, ServiceInstance};
    ///
    /// let store = MemoryStore::new();
    /// let owner = Mesh::builder().memory_store(store.clone()).connect().await?;
    /// owner.register(ServiceInstance::builder("billing", "10.0.0.7", 80).build()?).await?;
    /// let peer = Mesh::builder().memory_store(store).follow("orders").connect().await?;
    /// assert!(peer.services().is_empty(), "billing is not followed");
    /// peer.follow("billing").await?;
    /// assert_eq!(peer.discover("billing").len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn follow(mut self, service: impl Into<String>) -> Self {
        self.follow
            .get_or_insert_with(Default::default)
            .insert(service.into());
        self
    }

    /// Follows each of `services` (see [`follow`](MeshBuilder::follow)); an empty list
    /// follows nothing until the mesh registers or reads a service.
    pub fn follow_services<S: Into<String>>(
        mut self,
        services: impl IntoIterator<Item = S>,
    ) -> Self {
        let followed = self.follow.get_or_insert_with(Default::default);
        followed.extend(services.into_iter().map(Into::into));
        self
    }

    /// When this peer writes checkpoints of the registry into the event stream (NATS only;
    /// see [`CheckpointPolicy`]). Default: a checkpoint every 10,000 events or 24 h.
    pub fn checkpoints(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoints = policy;
        self
    }

    fn chosen_backend(&self) -> Result<&BackendConfig> {
        self.backend.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                "no backend chosen: call nats(options), memory() (the process-wide in-memory \
                 mesh) or memory_store(store) on the builder",
            )
        })
    }

    /// Connects, loads the current view and starts watching. When this returns, reads see
    /// every instance that was live at the time.
    pub async fn connect(self) -> Result<Mesh> {
        self.validate()?;
        let stores = match self.chosen_backend()? {
            BackendConfig::Memory(store) => vec![Store::Memory(store.clone())],
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
                let first = NatsStore::connect(options).await?;
                let shards = match first.open_shards().await {
                    Ok(shards) => shards,
                    Err(e) => {
                        first.close().await;
                        return Err(e);
                    }
                };
                shards.into_iter().map(Store::Nats).collect()
            }
        };
        Mesh::start(stores, self).await
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

    async fn start(stores: Vec<Store>, builder: MeshBuilder) -> Result<Mesh> {
        let peer_id = Uuid::new_v4().to_string();
        let registry = Arc::new(RegistryView::default());
        let bus = Arc::new(EventBus::default());
        let stats = Arc::new(MeshStats::default());
        let closing = watch::channel(false).0;
        let count = u16::try_from(stores.len()).unwrap_or(u16::MAX);
        let events_store = stores[0].clone();
        let mut shards = Vec::with_capacity(stores.len());
        let mut readiness = Vec::with_capacity(stores.len());
        for (index, store) in stores.into_iter().enumerate() {
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            let (ready_tx, ready) = watch::channel(false);
            let interest = watch::channel(match &builder.follow {
                None => Interest::default(),
                Some(services) => Interest::only(
                    services
                        .iter()
                        .filter(|s| crate::protocol::shard_of(s, count) == index)
                        .cloned(),
                ),
            })
            .0;
            let (loaded_tx, loaded) = watch::channel(0);
            let applied = Arc::new(Watermark::default());
            let alerts = Arc::new(KeyAlerts::default());
            let task = ViewTask {
                store: store.clone(),
                registry: registry.clone(),
                bus: bus.clone(),
                stats: stats.clone(),
                ready: ready_tx,
                loaded: loaded_tx,
                peer_id: peer_id.clone(),
                publish_expired: builder.publish_expired_events,
                self_preservation: builder.self_preservation,
                applied: applied.clone(),
                alerts: alerts.clone(),
                closing: closing.subscribe(),
            };
            if builder.registry {
                let span = tracing::info_span!("view", peer = %peer_id, shard = index);
                tokio::spawn(task.run(store.watch(interest.subscribe())).instrument(span));
                readiness.push(ready);
            } else {
                drop(task);
            }
            let owners = Owners::start(
                store.clone(),
                builder.timing,
                stats.clone(),
                peer_id.clone(),
                closing.subscribe(),
                ViewLink { applied, alerts },
                usize::from(count),
            );
            shards.push(Shard {
                store,
                owners,
                interest,
                loaded,
            });
        }
        let all_ready = async {
            for ready in &mut readiness {
                if !crate::sync::until_true(ready).await {
                    return false;
                }
            }
            true
        };
        match tokio::time::timeout(builder.ready_timeout, all_ready).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    "the view task ended before the first snapshot",
                ))
            }
            Err(_) => {
                closing.send_replace(true);
                for shard in &shards {
                    shard.store.close().await;
                }
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no full view of the bucket within {}",
                        humantime::format_duration(builder.ready_timeout)
                    ),
                ));
            }
        }
        info!(peer = %peer_id, instances = registry.instance_count(), shards = count, "mesh view ready");
        if let (Some(BackendConfig::Nats(options)), true) =
            (&builder.backend, builder.checkpoints.is_enabled())
        {
            let policy = builder.checkpoints.with_retention(options.event_max_age);
            let span = tracing::info_span!("checkpoints", peer = %peer_id);
            CheckpointTask::spawn(events_store.clone(), policy, closing.subscribe(), span);
        }
        let control_desk = events_store.nats().cloned().map(|nats| {
            let (desk, owned) = tokio::sync::mpsc::unbounded_channel();
            let span = tracing::info_span!("control", peer = %peer_id);
            tokio::spawn(
                super::control::control_desk(nats, owned, closing.subscribe()).instrument(span),
            );
            desk
        });
        Ok(Mesh {
            inner: Arc::new(Inner {
                shards,
                timing: builder.timing,
                peer_id,
                registry,
                bus,
                stats,
                owned: Arc::new(Mutex::new(HashMap::new())),
                accepting: tokio::sync::RwLock::new(builder.registry),
                closing,
                balancing: builder.balancing,
                balancers: ArcSwap::default(),
                unfollowed_reads: Mutex::new(HashSet::new()),
                control_desk,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_builder_without_a_backend_refuses_to_connect_and_says_how_to_choose_one() {
        let err = Mesh::builder().connect().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("no backend chosen"), "{err}");
        let mesh = Mesh::builder()
            .memory_store(MemoryStore::new())
            .connect()
            .await;
        assert!(mesh.is_ok());
    }
}
