//! Owners: the task behind each registration that keeps its key alive and writes its
//! changes, so no update is lost and a lost key comes back by itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};
use uuid::Uuid;

use crate::config::Timing;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{InstanceStatus, ServiceInstance};
use crate::metrics::MeshStats;
use crate::protocol::{EventName, EventRecord, InstanceRecord, PROTOCOL_VERSION};
use crate::store::{Store, WriteCondition};

/// Longest wait for this mesh's own view to show a write before the call returns.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a lifecycle event publish is tried before the call reports failure.
const EVENT_PUBLISH_ATTEMPTS: u32 = 3;

type Edit = Box<dyn FnOnce(&mut ServiceInstance) + Send>;

enum Command {
    Update {
        edit: Edit,
        reason: Option<String>,
        reply: oneshot::Sender<Result<Arc<ServiceInstance>>>,
    },
    Deregister {
        reason: Option<String>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A handle on an instance this process registered. Cheap to clone; the registration lives
/// until [`deregister`](Registration::deregister) or [`Mesh::shutdown`](crate::Mesh::shutdown),
/// not until the handle is dropped.
#[derive(Clone, Debug)]
pub struct Registration {
    id: Uuid,
    service: String,
    commands: mpsc::Sender<Command>,
    current: watch::Receiver<Arc<ServiceInstance>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Update { .. } => f.write_str("Update"),
            Command::Deregister { .. } => f.write_str("Deregister"),
        }
    }
}

impl Registration {
    /// The instance id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// True while the registration lives (not deregistered, mesh not shut down).
    pub fn is_live(&self) -> bool {
        !self.commands.is_closed()
    }

    /// The instance as last written.
    pub fn instance(&self) -> Arc<ServiceInstance> {
        self.current.borrow().clone()
    }

    /// Changes the status; peers get `StatusChanged` with old and new status and `reason`.
    pub async fn set_status(
        &self,
        status: InstanceStatus,
        reason: Option<&str>,
    ) -> Result<Arc<ServiceInstance>> {
        self.update_with_reason(move |i| i.status = status, reason)
            .await
    }

    /// Edits metadata, tags, weight, zone, host, port or scheme; peers get `Updated`.
    /// The service name, id and registration time cannot change.
    pub async fn update(
        &self,
        edit: impl FnOnce(&mut ServiceInstance) + Send + 'static,
    ) -> Result<Arc<ServiceInstance>> {
        self.update_with_reason(edit, None).await
    }

    /// [`update`](Registration::update) with a reason peers can read.
    pub async fn update_with_reason(
        &self,
        edit: impl FnOnce(&mut ServiceInstance) + Send + 'static,
        reason: Option<&str>,
    ) -> Result<Arc<ServiceInstance>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Update {
            edit: Box::new(edit),
            reason: reason.map(str::to_string),
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Removes the instance; peers get `Deregistered` with `reason`.
    pub async fn deregister(&self, reason: Option<&str>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Deregister {
            reason: reason.map(str::to_string),
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.gone())?
    }

    async fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).await.map_err(|_| self.gone())
    }

    fn gone(&self) -> Error {
        Error::new(
            ErrorKind::NotRegistered,
            format!(
                "{}/{} is no longer registered by this mesh",
                self.service, self.id
            ),
        )
    }
}

/// Removes registration `id` from the mesh's list of what it owns.
fn leave(owned: &Weak<Mutex<HashMap<Uuid, Registration>>>, id: Uuid) {
    if let Some(owned) = owned.upgrade() {
        owned.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// Everything an owner task needs.
pub(crate) struct Owner {
    store: Store,
    timing: Timing,
    stats: Arc<MeshStats>,
    peer_id: String,
    instance: Arc<ServiceInstance>,
    key: String,
    revision: u64,
    current: watch::Sender<Arc<ServiceInstance>>,
    /// The highest revision this mesh's own view shows.
    applied: watch::Receiver<u64>,
    /// The mesh's registrations, which this owner leaves when it ends.
    owned: Weak<Mutex<HashMap<Uuid, Registration>>>,
}

/// What every owner of one mesh shares.
pub(crate) struct OwnerContext {
    pub(crate) store: Store,
    pub(crate) timing: Timing,
    pub(crate) stats: Arc<MeshStats>,
    pub(crate) peer_id: String,
    pub(crate) closing: watch::Receiver<bool>,
    /// The mesh's registrations, which an owner leaves when it ends.
    pub(crate) owned: Weak<Mutex<HashMap<Uuid, Registration>>>,
    /// The highest revision the mesh's own view shows.
    pub(crate) applied: watch::Receiver<u64>,
}

impl Owner {
    /// Writes the key and the `registered` event, then starts the owner task.
    pub(crate) async fn register(
        context: OwnerContext,
        instance: ServiceInstance,
    ) -> Result<Registration> {
        let OwnerContext {
            store,
            timing,
            stats,
            peer_id,
            closing,
            owned,
            applied,
        } = context;
        instance.validate()?;
        let key = instance.key();
        let instance = Arc::new(instance);
        let record = record(&instance, &timing, None);
        let revision = store
            .put(&key, &record, timing.instance_ttl, WriteCondition::Absent)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::Conflict {
                    Error::new(
                        ErrorKind::Conflict,
                        format!("{key} is already registered (instance ids must be unique)"),
                    )
                } else {
                    e
                }
            })?;
        let (current, current_rx) = watch::channel(instance.clone());
        let mut owner = Owner {
            store,
            timing,
            stats,
            peer_id,
            instance,
            key,
            revision,
            current,
            applied,
            owned: owned.clone(),
        };
        if let Err(e) = owner
            .publish(EventName::Registered, None, None, revision)
            .await
        {
            // Nothing half-done: without its event the registration is rolled back.
            if let Err(undo) = owner
                .store
                .delete(
                    &owner.key,
                    Some("registration event failed"),
                    owner.timing.tombstone_ttl,
                )
                .await
            {
                warn!(error = %undo, "could not roll back the key; it will expire");
            }
            return Err(e);
        }
        MeshStats::incr(&owner.stats.registrations);
        owner.until_visible(revision).await;
        let (commands, inbox) = mpsc::channel(64);
        let registration = Registration {
            id: owner.instance.id,
            service: owner.instance.service.clone(),
            commands,
            current: current_rx,
        };
        let span = tracing::info_span!("owner", key = %owner.key);
        let id = owner.instance.id;
        tokio::spawn(
            async move {
                owner.run(inbox, closing).await;
                // Forget the handle so churn does not accumulate dead registrations.
                leave(&owned, id);
            }
            .instrument(span),
        );
        Ok(registration)
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, mut closing: watch::Receiver<bool>) {
        let mut reconnects = self.store.reconnects();
        let heartbeat = tokio::time::sleep(self.timing.heartbeat_interval);
        tokio::pin!(heartbeat);
        loop {
            tokio::select! {
                () = &mut heartbeat => {
                    let next = match self.heartbeat().await {
                        Ok(()) => self.timing.heartbeat_interval,
                        // Retry soon: the key has TTL - elapsed left, not a full interval.
                        Err(_) => (self.timing.heartbeat_interval / 3).max(Duration::from_millis(200)),
                    };
                    heartbeat.as_mut().reset(Instant::now() + next);
                }
                Ok(()) = reconnects.changed() => {
                    // Every client reconnects at the same instant after an outage;
                    // spread the re-assertions.
                    let cap = self.timing.heartbeat_interval.min(Duration::from_secs(2));
                    let jitter = rand::rng().random_range(Duration::ZERO..=cap);
                    debug!(?jitter, "reconnected; re-asserting after jitter");
                    heartbeat.as_mut().reset(Instant::now() + jitter);
                }
                command = inbox.recv() => match command {
                    Some(Command::Update { edit, reason, reply }) => {
                        let result = self.update(edit, reason).await;
                        if result.is_ok() {
                            self.until_visible(self.revision).await;
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::Deregister { reason, reply }) => {
                        let (deleted, result) = self.deregister(reason).await;
                        if deleted {
                            self.until_visible(self.revision).await;
                            // Before the reply: once deregister returns, `registrations()`
                            // no longer lists it.
                            leave(&self.owned, self.instance.id);
                        }
                        let _ = reply.send(result);
                        // Once the tombstone is written the owner is done, even if the
                        // event could not be recorded: heartbeating would resurrect the key.
                        if deleted {
                            return;
                        }
                    }
                    None => return,
                },
                _ = crate::util::until_true(&mut closing) => return,
            }
        }
    }

    /// Refreshes the key; if it expired or was overwritten meanwhile, writes it again and
    /// announces it.
    async fn heartbeat(&mut self) -> Result<()> {
        let record = record(&self.instance, &self.timing, None);
        let written = self
            .store
            .put(
                &self.key,
                &record,
                self.timing.instance_ttl,
                WriteCondition::Revision(self.revision),
            )
            .await;
        match written {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Conflict => self.reassert().await,
            Err(e) => {
                MeshStats::incr(&self.stats.heartbeat_failures);
                warn!(error = %e, "heartbeat failed; retrying");
                Err(e)
            }
        }
    }

    async fn reassert(&mut self) -> Result<()> {
        let reason = "re-asserted by its owner after its key expired or was overwritten";
        let record = record(&self.instance, &self.timing, Some(reason));
        let revision = self
            .store
            .put(
                &self.key,
                &record,
                self.timing.instance_ttl,
                WriteCondition::Any,
            )
            .await?;
        self.revision = revision;
        MeshStats::incr(&self.stats.reasserts);
        info!(revision, "re-asserted registration");
        self.publish(
            EventName::Registered,
            None,
            Some(reason.to_string()),
            revision,
        )
        .await
    }

    async fn update(&mut self, edit: Edit, reason: Option<String>) -> Result<Arc<ServiceInstance>> {
        let mut next = ServiceInstance::clone(&self.instance);
        edit(&mut next);
        if next.service != self.instance.service
            || next.id != self.instance.id
            || next.registered_at != self.instance.registered_at
        {
            return Err(Error::invalid(format!(
                "{}: an update cannot change the service name, id or registration time",
                self.key
            )));
        }
        next.validate()?;
        if next.same_content(&self.instance) {
            return Ok(self.instance.clone());
        }
        next.updated_at = SystemTime::now();
        let next = Arc::new(next);
        let record = record(&next, &self.timing, reason.as_deref());
        let revision = match self
            .store
            .put(
                &self.key,
                &record,
                self.timing.instance_ttl,
                WriteCondition::Revision(self.revision),
            )
            .await
        {
            Ok(revision) => revision,
            // The owner is the only writer of its key: a conflict means it expired or was
            // overwritten, and our state is the one to keep.
            Err(e) if e.kind() == ErrorKind::Conflict => {
                MeshStats::incr(&self.stats.reasserts);
                self.store
                    .put(
                        &self.key,
                        &record,
                        self.timing.instance_ttl,
                        WriteCondition::Any,
                    )
                    .await?
            }
            Err(e) => return Err(e),
        };
        let previous = std::mem::replace(&mut self.instance, next.clone());
        self.revision = revision;
        self.current.send_replace(next.clone());
        if previous.status != next.status {
            self.publish(
                EventName::Status,
                Some(previous.status),
                reason.clone(),
                revision,
            )
            .await?;
        }
        let mut without_status = ServiceInstance::clone(&previous);
        without_status.status = next.status;
        if !without_status.same_content(&next) {
            self.publish(EventName::Updated, None, reason, revision)
                .await?;
        }
        Ok(next)
    }

    /// Writes the tombstone, then the event; says whether the tombstone was written.
    async fn deregister(&mut self, reason: Option<String>) -> (bool, Result<()>) {
        let revision = match self
            .store
            .delete(&self.key, reason.as_deref(), self.timing.tombstone_ttl)
            .await
        {
            Ok(revision) => revision,
            Err(e) => return (false, Err(e)),
        };
        self.revision = revision;
        MeshStats::incr(&self.stats.deregistrations);
        (
            true,
            self.publish(EventName::Deregistered, None, reason, revision)
                .await,
        )
    }

    /// Appends a lifecycle event, retrying with the same id (the stream stores it once).
    /// Read-your-writes: waits (bounded) until this mesh's own view shows `revision`, so
    /// `discover` right after `register`, `set_status` or `deregister` sees the change.
    async fn until_visible(&mut self, revision: u64) {
        let shown = self.applied.wait_for(|applied| *applied >= revision);
        if tokio::time::timeout(READ_YOUR_WRITES_TIMEOUT, shown)
            .await
            .is_err()
        {
            debug!(
                revision,
                "own view did not show the write in time; returning anyway"
            );
        }
    }

    async fn publish(
        &mut self,
        event: EventName,
        previous_status: Option<InstanceStatus>,
        reason: Option<String>,
        revision: u64,
    ) -> Result<()> {
        let record = EventRecord {
            v: PROTOCOL_VERSION,
            event,
            instance: self.instance.clone(),
            previous_status,
            reason,
            at: SystemTime::now(),
            origin: self.peer_id.clone(),
        };
        let msg_id = format!("{}-{}-{revision}", event.as_str(), self.instance.id);
        let mut attempt = 1;
        loop {
            match self.store.publish_event(&record, &msg_id).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if attempt < EVENT_PUBLISH_ATTEMPTS
                        && e.kind() != ErrorKind::PermissionDenied =>
                {
                    debug!(error = %e, attempt, "event publish failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    MeshStats::incr(&self.stats.event_publish_failures);
                    return Err(e);
                }
            }
        }
    }
}

fn record(
    instance: &Arc<ServiceInstance>,
    timing: &Timing,
    reason: Option<&str>,
) -> InstanceRecord {
    InstanceRecord {
        v: PROTOCOL_VERSION,
        instance: instance.clone(),
        ttl_ms: u64::try_from(timing.instance_ttl.as_millis()).unwrap_or(u64::MAX),
        reason: reason.map(str::to_string),
    }
}
