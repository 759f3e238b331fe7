//! The discovery client of the MarketPrism Python module, in Rust: one object that
//! registers "myself", discovers and balances, reacts to events and leaves gracefully. It
//! is a thin layer over [`Mesh`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::settings::DiscoverySettings;
use crate::balance::Selection;
use crate::error::{Error, ErrorKind, Result};
use crate::health::{HealthCheck, HealthMonitor, HealthPolicy};
use crate::instance::{InstanceStatus, Metadata, ServiceInstance};
use crate::mesh::{Mesh, MeshBuilder};
use crate::metrics::MetricsEndpoint;
use crate::owner::Registration;
use crate::view::{EventKind, EventStream, MeshEvent};

/// How the client behaves around its own registration.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deregister "myself" on [`shutdown`](DiscoveryClient::shutdown) (default true); when
    /// false the instance is left to expire.
    pub auto_deregister: bool,
    /// Time between announcing `Maintenance` and deregistering at shutdown (default 0).
    pub drain_period: Duration,
    /// When set, "myself" is health-checked over HTTP at its health URL (metadata
    /// `health_endpoint`, default `/health`) with this policy, and its status follows the
    /// verdicts (default: none; the owner sets its status itself).
    pub self_check: Option<HealthPolicy>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            auto_deregister: true,
            drain_period: Duration::ZERO,
            self_check: None,
        }
    }
}

/// A service's handle on the mesh, shaped like the Python `ServiceDiscoveryClient`.
///
/// ```
/// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
/// use prism_mesh::{DiscoveryClient, InstanceStatus, MemoryStore, Mesh, Metadata};
///
/// let client = DiscoveryClient::connect(Mesh::builder().memory_store(MemoryStore::new())).await?;
/// let me = client
///     .register_myself("market-data", "10.0.0.5", 8080, Metadata::new(), vec!["v2".into()])
///     .await?;
/// client.update_my_status(InstanceStatus::Healthy).await?;
/// client.wait_for_service("market-data", std::time::Duration::from_secs(1)).await?;
/// assert_eq!(client.get_service_url("market-data")?, me.base_url());
/// client.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DiscoveryClient {
    mesh: Mesh,
    options: ClientOptions,
    myself: Mutex<Option<Registration>>,
    monitor: Mutex<Option<HealthMonitor>>,
    metrics: Option<MetricsEndpoint>,
}

impl DiscoveryClient {
    /// Connects (Python: `initialize`): an unreachable or misconfigured server is an error
    /// naming the url and the cause, within the connect timeout.
    pub async fn connect(builder: MeshBuilder) -> Result<DiscoveryClient> {
        Self::connect_with(builder, ClientOptions::default()).await
    }

    /// [`connect`](Self::connect) with client options.
    pub async fn connect_with(
        builder: MeshBuilder,
        options: ClientOptions,
    ) -> Result<DiscoveryClient> {
        Ok(DiscoveryClient::from_mesh(
            builder.connect().await?,
            options,
        ))
    }

    /// Wraps an existing mesh.
    pub fn from_mesh(mesh: Mesh, options: ClientOptions) -> DiscoveryClient {
        DiscoveryClient {
            mesh,
            options,
            myself: Mutex::new(None),
            monitor: Mutex::new(None),
            metrics: None,
        }
    }

    /// Connects as `settings` say (a `service_discovery` YAML file, see
    /// [`DiscoverySettings`]): backend, timing, load balancing, `auto_deregister`,
    /// `drain_period`, `health_check_interval` for "myself", and the metrics endpoint
    /// when `metrics.listen` is set. With `auto_register` (the default) and a `service:`
    /// section, registers that instance as "myself" before returning
    /// ([`my_registration`](Self::my_registration)).
    pub async fn from_settings(settings: &DiscoverySettings) -> Result<DiscoveryClient> {
        let options = ClientOptions {
            auto_deregister: settings.auto_deregister,
            drain_period: settings.drain_period,
            self_check: Some(HealthPolicy::every(settings.health_check_interval)),
        };
        let mut client = Self::connect_with(settings.mesh_builder()?, options).await?;
        if let Some(listen) = settings.metrics.listen {
            client.metrics = Some(client.mesh.serve_metrics(listen).await?);
        }
        if let (true, Some(service)) = (settings.auto_register, &settings.service) {
            client.register_myself_as(service.instance()?).await?;
        }
        Ok(client)
    }

    /// Where the metrics endpoint listens, when the settings asked for one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// The mesh underneath, for everything else.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Registers this process as an instance of `service`; the weight comes from
    /// metadata `weight` when given. Returns the instance with its id and `base_url()`.
    /// A client holds one "myself": registering again is an error.
    pub async fn register_myself(
        &self,
        service: &str,
        host: &str,
        port: u16,
        metadata: Metadata,
        tags: Vec<String>,
    ) -> Result<Arc<ServiceInstance>> {
        let mut builder = ServiceInstance::builder(service, host, port).metadata_map(metadata);
        for tag in tags {
            builder = builder.tag(tag);
        }
        self.register_myself_as(builder.build()?).await
    }

    /// [`register_myself`](Self::register_myself) with a fully built instance.
    pub async fn register_myself_as(
        &self,
        instance: ServiceInstance,
    ) -> Result<Arc<ServiceInstance>> {
        if let Some(existing) = self.lock_myself().as_ref() {
            return Err(Error::invalid(format!(
                "this client already registered itself as {}/{}; deregister_myself first",
                existing.service(),
                existing.id()
            )));
        }
        let registration = self.mesh.register(instance).await?;
        let instance = registration.instance();
        if let Some(policy) = self.options.self_check {
            let monitor = self
                .mesh
                .monitor_health(&registration, HealthCheck::http(), policy)?;
            *self.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(monitor);
        }
        *self.lock_myself() = Some(registration);
        Ok(instance)
    }

    /// Registers any instance (sidecars, tests); it is not "myself".
    pub async fn register_instance(&self, instance: ServiceInstance) -> Result<Registration> {
        self.mesh.register(instance).await
    }

    /// Every instance of `service` in the view, any status.
    pub fn discover(&self, service: &str) -> Vec<Arc<ServiceInstance>> {
        self.mesh.discover(service)
    }

    /// The instances of `service` passing `selection`'s tag and metadata filters and with
    /// one of its statuses (to keep internal or secure services apart).
    pub fn discover_matching(
        &self,
        service: &str,
        selection: &Selection,
    ) -> Vec<Arc<ServiceInstance>> {
        self.mesh
            .discover(service)
            .into_iter()
            .filter(|i| selection.status_order().contains(&i.status) && selection.matches(i))
            .collect()
    }

    /// One instance chosen by the load balancer (weighted round robin by default).
    pub fn get_service(&self, service: &str) -> Result<Arc<ServiceInstance>> {
        self.mesh.pick(service)
    }

    /// The base URL of [`get_service`](Self::get_service).
    pub fn get_service_url(&self, service: &str) -> Result<String> {
        self.mesh.pick_url(service)
    }

    /// Waits until `service` has an instance, up to `timeout`.
    pub async fn wait_for_service(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Result<Vec<Arc<ServiceInstance>>> {
        self.mesh.wait_for_service(service, timeout).await
    }

    /// Names of all services with an instance.
    pub fn list_all_services(&self) -> Vec<String> {
        self.mesh.services()
    }

    /// Changes the status of "myself".
    pub async fn update_my_status(&self, status: InstanceStatus) -> Result<Arc<ServiceInstance>> {
        self.myself()?.set_status(status, None).await
    }

    /// Deregisters "myself".
    pub async fn deregister_myself(&self) -> Result<()> {
        let registration = self.myself()?;
        registration
            .deregister(Some("deregistered by its owner"))
            .await?;
        self.lock_myself().take();
        Ok(())
    }

    /// "Myself", once registered.
    pub fn my_registration(&self) -> Option<Registration> {
        self.lock_myself().clone()
    }

    /// Runs `handler` for every `Registered` event (Python: `service_registered`).
    pub fn on_service_registered<F, Fut>(&self, handler: F) -> JoinHandle<()>
    where
        F: Fn(Arc<ServiceInstance>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.mesh.on(EventKind::Registered, move |e: MeshEvent| {
            handler(e.instance().clone())
        })
    }

    /// Runs `handler` for every `Deregistered` event with its reason.
    pub fn on_service_deregistered<F, Fut>(&self, handler: F) -> JoinHandle<()>
    where
        F: Fn(Arc<ServiceInstance>, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.mesh
            .on(EventKind::Deregistered, move |e: MeshEvent| match e {
                MeshEvent::Deregistered { instance, reason } => handler(instance, reason),
                other => handler(other.instance().clone(), None),
            })
    }

    /// Runs `handler(service, old, new)` for every status change.
    pub fn on_service_status_changed<F, Fut>(&self, handler: F) -> JoinHandle<()>
    where
        F: Fn(String, InstanceStatus, InstanceStatus) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.mesh.on(EventKind::StatusChanged, move |e: MeshEvent| {
            let service = e.service().to_string();
            match e {
                MeshEvent::StatusChanged {
                    previous, current, ..
                } => handler(service, previous, current),
                other => {
                    let status = other.instance().status;
                    handler(service, status, status)
                }
            }
        })
    }

    /// Runs `handler` for every `Expired` event (an owner stopped heartbeating).
    pub fn on_service_expired<F, Fut>(&self, handler: F) -> JoinHandle<()>
    where
        F: Fn(Arc<ServiceInstance>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.mesh.on(EventKind::Expired, move |e: MeshEvent| {
            handler(e.instance().clone())
        })
    }

    /// Runs `handler(previous, current)` for every `Updated` event.
    pub fn on_service_updated<F, Fut>(&self, handler: F) -> JoinHandle<()>
    where
        F: Fn(Arc<ServiceInstance>, Arc<ServiceInstance>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.mesh
            .on(EventKind::Updated, move |e: MeshEvent| match e {
                MeshEvent::Updated {
                    previous, instance, ..
                } => handler(previous, instance),
                other => handler(other.instance().clone(), other.instance().clone()),
            })
    }

    /// Every event, as a stream.
    pub fn events(&self) -> EventStream {
        self.mesh.subscribe()
    }

    /// Leaves the mesh: with `auto_deregister`, "myself" goes to maintenance, waits the
    /// drain period and deregisters (as does every other instance this client registered);
    /// without it, heartbeats stop and the instances expire at the TTL.
    pub async fn shutdown(&self) {
        if self.options.auto_deregister {
            self.mesh
                .shutdown_gracefully(self.options.drain_period)
                .await;
        } else {
            self.mesh.close_without_deregistering().await;
        }
        self.lock_myself().take();
    }

    fn myself(&self) -> Result<Registration> {
        self.lock_myself().clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotRegistered,
                "this client has not registered itself (call register_myself first)",
            )
        })
    }

    fn lock_myself(&self) -> std::sync::MutexGuard<'_, Option<Registration>> {
        self.myself.lock().unwrap_or_else(|p| p.into_inner())
    }
}
