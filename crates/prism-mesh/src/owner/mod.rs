//! Owners: what keeps each registered instance's key alive and writes its changes, so no
//! update is lost and a lost key comes back by itself.
//!
//! One heartbeat scheduler per mesh refreshes every owned key. (A long-lived task, channel
//! and timer per registration cost more client CPU than the registration's two writes.)
//! Writes to one key are serialised by that instance's lock. An update or deregister call
//! runs on a short task of its own, so it completes even if its caller gives up.
//!
//! `writer` holds one key's writes and what every writer of a mesh shares; `schedule`
//! drives the heartbeats; this file holds the public handle and registration.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

use crate::config::Timing;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{InstanceStatus, ServiceInstance};
use crate::metrics::MeshStats;
use crate::protocol::EventName;
use crate::store::{Store, WriteCondition};
use crate::sync::{KeyAlerts, Watermark};

mod events;
mod schedule;
mod writer;

use schedule::heartbeat_schedule;
pub(crate) use writer::Owners;
use writer::{record, OwnedInstance};

/// A handle on an instance this process registered. Cheap to clone; the registration lives
/// until [`deregister`](Registration::deregister) or [`Mesh::shutdown`](crate::Mesh::shutdown),
/// not until the handle is dropped.
#[derive(Clone)]
pub struct Registration {
    owned: Arc<OwnedInstance>,
    /// The mesh's registrations, which this one leaves when it ends.
    owned_by: Weak<OwnedMap>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.owned.key)
            .field("live", &self.is_live())
            .finish()
    }
}

impl Registration {
    /// The instance id.
    pub fn id(&self) -> Uuid {
        self.owned.id
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.owned.key[..self.owned.service_len]
    }

    /// True while the registration lives (not deregistered, mesh not shut down).
    pub fn is_live(&self) -> bool {
        self.owned.is_live()
    }

    /// The instance as last written.
    pub fn instance(&self) -> Arc<ServiceInstance> {
        self.owned.current.load_full()
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
        let owned = self.owned.clone();
        let reason = reason.map(str::to_string);
        to_completion(async move {
            let mut writer = owned.writer().await?;
            let updated = owned.update(&mut writer, edit, reason).await?;
            // Events go out in the order of their writes, but without the key's lock: its
            // heartbeats must go on while an event waits out an election.
            let in_order = owned.events.lock().await;
            drop(writer);
            owned.announce(&updated).await?;
            drop(in_order);
            owned.until_visible(updated.revision).await;
            Ok(updated.instance)
        })
        .await
    }

    /// Stops refreshing the instance's key without deregistering it: the key expires on
    /// the server at its TTL and every peer sees `Expired`, as when an owner dies. For a
    /// process holding registrations on another's behalf (a gateway whose client stopped
    /// passing its TTL check); a process leaving on purpose calls
    /// [`deregister`](Registration::deregister).
    pub async fn abandon(&self) {
        // Under the key's lock: a write under way finishes first and none follows it.
        let writer = self.owned.writer().await;
        self.owned.live.store(false, Ordering::Release);
        drop(writer);
        self.owned.owners.alerts.release(&self.owned.key);
        leave(&self.owned_by, self.owned.id);
    }

    /// Removes the instance; peers get `Deregistered` with `reason`.
    pub async fn deregister(&self, reason: Option<&str>) -> Result<()> {
        let owned = self.owned.clone();
        let owned_by = self.owned_by.clone();
        let reason = reason.map(str::to_string);
        to_completion(async move {
            let mut writer = owned.writer().await?;
            let (deleted, result) = owned.deregister(&mut writer, reason).await;
            if deleted {
                // Once the tombstone is written the registration is over, even if the event
                // could not be recorded: heartbeating would resurrect the key.
                owned.live.store(false, Ordering::Release);
                owned.owners.alerts.release(&owned.key);
                owned.until_visible(writer.revision).await;
                // Before returning: once deregister returns, `registrations()` no longer
                // lists it.
                leave(&owned_by, owned.id);
            }
            result
        })
        .await
    }
}

/// Runs a write on a task of its own and waits for it. A caller that gives up (a timeout,
/// a dropped future) must not stop a write half-way: the key written but its revision or
/// instance not recorded would make the next heartbeat conflict and re-assert the old
/// instance over the new one.
async fn to_completion<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    match tokio::spawn(write).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::new(
            ErrorKind::Closed,
            "the runtime shut down during the write",
        )),
    }
}

/// The registrations a mesh owns, by id.
pub(crate) type OwnedMap = Mutex<HashMap<Uuid, Registration>>;

/// Locks a mesh's list of registrations (a panic elsewhere cannot leave it half-changed:
/// every change is one map operation).
pub(crate) fn lock_owned(
    owned: &OwnedMap,
) -> std::sync::MutexGuard<'_, HashMap<Uuid, Registration>> {
    owned.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes registration `id` from the mesh's list of what it owns.
fn leave(owned: &Weak<OwnedMap>, id: Uuid) {
    if let Some(owned) = owned.upgrade() {
        lock_owned(&owned).remove(&id);
    }
}

/// What the owners of a shard share with that shard's view: the revision its readers can
/// see, and the alerts of changes to owned keys.
pub(crate) struct ViewLink {
    pub(crate) applied: Arc<Watermark>,
    pub(crate) alerts: Arc<KeyAlerts>,
}

impl Owners {
    /// Starts the heartbeat scheduler; it ends when `closing` turns true.
    /// The mesh has `shards` schedulers (one per shard): each takes its part of the
    /// heartbeats the mesh may have in flight.
    pub(crate) fn start(
        store: Store,
        timing: Timing,
        stats: Arc<MeshStats>,
        peer_id: String,
        closing: watch::Receiver<bool>,
        view: ViewLink,
        shards: usize,
    ) -> Arc<Owners> {
        let ViewLink { applied, alerts } = view;
        let (schedule, incoming) = mpsc::unbounded_channel();
        let owners = Arc::new(Owners {
            store,
            timing,
            stats,
            peer_id,
            closing,
            applied,
            schedule,
            alerts,
        });
        let span = tracing::info_span!("heartbeats", peer = %owners.peer_id);
        tokio::spawn(tracing::Instrument::instrument(
            heartbeat_schedule(
                incoming,
                owners.store.reconnects(),
                owners.closing.clone(),
                timing,
                owners.stats.clone(),
                shards,
            ),
            span,
        ));
        owners
    }

    /// Writes the key and the `registered` event, then schedules the heartbeats.
    pub(crate) async fn register(
        self: &Arc<Self>,
        owned_by: Weak<OwnedMap>,
        instance: ServiceInstance,
    ) -> Result<Registration> {
        let key = instance.key();
        let instance = Arc::new(instance);
        let record = record(&instance, &self.timing, None);
        let sent = Instant::now();
        let revision = self
            .store
            .put(
                &key,
                &record,
                self.timing.instance_ttl,
                WriteCondition::Absent,
                None,
            )
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
        let owned = OwnedInstance::new(self.clone(), instance.clone(), revision, sent);
        // Heartbeats from now on: the event may take an election to store, and the key must
        // not expire meanwhile. Should the caller give up before this returns, they stop
        // again, and the unowned key expires at its TTL.
        let unlisted = StopUnlessListed(Some(owned.clone()));
        if self.schedule.send(owned.clone()).is_err() {
            // The mesh closed meanwhile: like a crashed owner, the key expires at its TTL.
            owned.live.store(false, Ordering::Release);
        }
        if let Err(e) = owned
            .publish(&instance, EventName::Registered, None, None, revision)
            .await
        {
            // Nothing half-done: without its event the registration is rolled back, under
            // the key's lock so that no heartbeat in flight writes the key again.
            let _writer = owned.writer.lock().await;
            owned.live.store(false, Ordering::Release);
            self.alerts.release(&owned.key);
            if let Err(undo) = self
                .store
                .delete(
                    &owned.key,
                    Some("registration event failed"),
                    self.timing.tombstone_ttl,
                )
                .await
            {
                warn!(key = %owned.key, error = %undo, "could not roll back the key; it will expire");
            }
            return Err(e);
        }
        MeshStats::incr(&self.stats.registrations);
        owned.until_visible(revision).await;
        // No await from here until the caller lists the registration (see `Mesh::register`).
        unlisted.listed();
        Ok(Registration { owned, owned_by })
    }
}

/// Ends the heartbeats of a registration dropped before its caller could list it.
struct StopUnlessListed(Option<Arc<OwnedInstance>>);

impl StopUnlessListed {
    fn listed(mut self) {
        self.0 = None;
    }
}

impl Drop for StopUnlessListed {
    fn drop(&mut self) {
        if let Some(owned) = self.0.take() {
            owned.live.store(false, Ordering::Release);
        }
    }
}
