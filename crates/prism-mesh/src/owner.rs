//! Owners: what keeps each registered instance's key alive and writes its changes, so no
//! update is lost and a lost key comes back by itself.
//!
//! One heartbeat scheduler per mesh refreshes every owned key. (A long-lived task, channel
//! and timer per registration cost more client CPU than the registration's two writes.)
//! Writes to one key are serialised by that instance's lock. An update or deregister call
//! runs on a short task of its own, so it completes even if its caller gives up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::config::Timing;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{InstanceStatus, ServiceInstance};
use crate::metrics::MeshStats;
use crate::protocol::{EventName, EventRecord, InstanceRecord, PROTOCOL_VERSION};
use crate::store::{Store, WriteCondition};
use crate::view::{KeyAlerts, KeyOwner, Watermark};

/// Longest wait for this mesh's own view to show a write before the call returns.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write waits to see itself in its own view before it asks the watch whether
/// it is stuck.
const STALL_PROBE: Duration = Duration::from_millis(50);

/// How long a lifecycle event publish keeps being retried on transient failures before the
/// call reports failure (and a registration is rolled back): long enough to ride out the
/// election of a new leader of the event stream.
const EVENT_PUBLISH_PATIENCE: Duration = Duration::from_secs(12);

/// Heartbeats in flight at once per mesh; the rest wait their turn in the schedule. Large
/// enough that a slow server (1 s per write, as during a leader election) still refreshes
/// 10,000 owned keys within a 10 s TTL; bounded so a mesh owning many more does not put
/// them all on the wire at once.
const HEARTBEATS_IN_FLIGHT: usize = 4096;

/// A handle on an instance this process registered. Cheap to clone; the registration lives
/// until [`deregister`](Registration::deregister) or [`Mesh::shutdown`](crate::Mesh::shutdown),
/// not until the handle is dropped.
#[derive(Clone)]
pub struct Registration {
    owned: Arc<OwnedInstance>,
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

    /// Removes the instance; peers get `Deregistered` with `reason`.
    pub async fn deregister(&self, reason: Option<&str>) -> Result<()> {
        let owned = self.owned.clone();
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
                leave(&owned.owned_by, owned.id);
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

/// What every owned instance of one mesh shares, and the mesh's heartbeat schedule.
pub(crate) struct Owners {
    store: Store,
    timing: Timing,
    stats: Arc<MeshStats>,
    peer_id: String,
    closing: watch::Receiver<bool>,
    /// The highest revision the mesh's own view shows.
    applied: Arc<Watermark>,
    /// New registrations, for the heartbeat scheduler.
    schedule: mpsc::UnboundedSender<Arc<OwnedInstance>>,
    /// Where the view tells owners that someone else wrote their keys.
    alerts: Arc<KeyAlerts>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("timing", &self.timing)
            .finish()
    }
}

/// The state behind one [`Registration`].
struct OwnedInstance {
    id: Uuid,
    /// `<service>.<id>`.
    key: String,
    service_len: usize,
    owners: Arc<Owners>,
    /// The mesh's registrations, which this one leaves when it ends.
    owned_by: Weak<OwnedMap>,
    /// The instance as last written.
    current: ArcSwap<ServiceInstance>,
    /// False once deregistered (set under the key's lock), rolled back or never scheduled.
    live: AtomicBool,
    /// Held by whoever writes the key: one write at a time, in order.
    writer: tokio::sync::Mutex<KeyState>,
    /// The last revision this owner wrote, readable without the writer's lock: an alert
    /// about a revision up to it is this owner's own write.
    written: AtomicU64,
    /// Held by whoever publishes an update's events, taken before the writer is released:
    /// events in the order of their writes.
    events: tokio::sync::Mutex<()>,
}

/// An update written: the instance now, its revision, and the events to publish for it.
struct Updated {
    instance: Arc<ServiceInstance>,
    revision: u64,
    events: Vec<(EventName, Option<InstanceStatus>)>,
    reason: Option<String>,
}

/// What the writer of a key knows about it.
struct KeyState {
    /// The key's revision as last written by us.
    revision: u64,
    /// When our last acknowledged write of the key was sent: the server stored it no
    /// earlier, so the key lives at least a TTL from then.
    sent: Instant,
}

impl KeyState {
    /// Notes an acknowledged write at `revision`, sent at `sent`.
    fn written(&mut self, revision: u64, sent: Instant) {
        self.revision = revision;
        self.sent = sent;
    }

    /// How long the key has left at least before it expires on the server (zero once it
    /// may have).
    fn left(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.sent.elapsed())
    }
}

impl Owners {
    /// Starts the heartbeat scheduler; it ends when `closing` turns true.
    pub(crate) fn start(
        store: Store,
        timing: Timing,
        stats: Arc<MeshStats>,
        peer_id: String,
        closing: watch::Receiver<bool>,
        applied: Arc<Watermark>,
        alerts: Arc<KeyAlerts>,
    ) -> Arc<Owners> {
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
        let owned = Arc::new(OwnedInstance {
            id: instance.id,
            service_len: instance.service.len(),
            key,
            owners: self.clone(),
            owned_by,
            current: ArcSwap::new(instance.clone()),
            live: AtomicBool::new(true),
            writer: tokio::sync::Mutex::new(KeyState { revision, sent }),
            written: AtomicU64::new(revision),
            events: tokio::sync::Mutex::new(()),
        });
        let alerted: Weak<dyn KeyOwner> = Arc::downgrade(&owned) as Weak<dyn KeyOwner>;
        self.alerts.own(&owned.key, alerted);
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
        Ok(Registration { owned })
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

/// One entry of the heartbeat schedule, ordered by due time.
struct Due {
    at: Instant,
    owned: Arc<OwnedInstance>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The mesh's heartbeat scheduler: refreshes each owned key one interval after its last
/// write, at most [`HEARTBEATS_IN_FLIGHT`] at a time, until the mesh closes.
async fn heartbeat_schedule(
    mut incoming: mpsc::UnboundedReceiver<Arc<OwnedInstance>>,
    mut reconnects: watch::Receiver<u64>,
    mut closing: watch::Receiver<bool>,
    timing: Timing,
    stats: Arc<MeshStats>,
) {
    // Past this, a heartbeat is late enough to eat into the TTL's margin (with a floor:
    // timer jitter on a very short interval is not falling behind).
    let late = (timing.heartbeat_interval / 2).max(Duration::from_millis(50));
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut beating = FuturesUnordered::new();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let next = due.peek().map(|Reverse(d)| d.at);
        if let Some(at) = next {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        let may_start = next.is_some() && beating.len() < HEARTBEATS_IN_FLIGHT;
        // Heartbeats first: a burst of new registrations must not hold them back.
        tokio::select! {
            biased;
            _ = crate::util::until_true(&mut closing) => return,
            Some((owned, after)) = beating.next(), if !beating.is_empty() => {
                let owned: Arc<OwnedInstance> = owned;
                if owned.is_live() {
                    due.push(Reverse(Due { at: Instant::now() + after, owned }));
                }
            }
            () = &mut timer, if may_start => {
                let now = Instant::now();
                while beating.len() < HEARTBEATS_IN_FLIGHT {
                    match due.peek() {
                        Some(Reverse(d)) if d.at <= now => {}
                        _ => break,
                    }
                    let Some(Reverse(Due { owned, at })) = due.pop() else { break };
                    if owned.is_live() {
                        if now.saturating_duration_since(at) > late {
                            MeshStats::incr(&stats.heartbeats_late);
                        }
                        beating.push(async move {
                            // One instance's bug must not stop every owner's heartbeats.
                            let after = AssertUnwindSafe(owned.heartbeat())
                                .catch_unwind()
                                .await
                                .unwrap_or_else(|_| {
                                    error!(key = %owned.key, "heartbeat panicked; retrying");
                                    retry_delay(timing.heartbeat_interval, Duration::ZERO)
                                });
                            (owned, after)
                        });
                    }
                }
            }
            Ok(()) = reconnects.changed() => {
                // Every client reconnects at the same instant after an outage; spread the
                // re-assertions.
                let cap = timing.heartbeat_interval.min(Duration::from_secs(2));
                let now = Instant::now();
                let mut rng = rand::rng();
                debug!(owned = due.len(), "reconnected; re-asserting after jitter");
                due = due
                    .into_iter()
                    .map(|Reverse(d)| Reverse(Due {
                        at: now + rng.random_range(Duration::ZERO..=cap),
                        owned: d.owned,
                    }))
                    .collect();
            }
            Some(owned) = incoming.recv() => {
                due.push(Reverse(Due { at: Instant::now() + timing.heartbeat_interval, owned }));
            }
        }
    }
}

impl KeyOwner for OwnedInstance {
    fn seen(self: Arc<Self>, revision: u64) {
        // Almost always this owner's own write, seen after its acknowledgement.
        if revision <= self.written.load(Ordering::Acquire) || !self.is_live() {
            return;
        }
        tokio::spawn(async move { self.restore(revision).await });
    }
}

impl OwnedInstance {
    /// Notes an acknowledged write of the key.
    fn wrote(&self, writer: &mut KeyState, revision: u64, sent: Instant) {
        writer.written(revision, sent);
        self.written.store(revision, Ordering::Release);
    }

    /// Writes the key again if the message at `revision` is not this owner's: someone
    /// else wrote or removed it (or rolled the bucket up), or it expired while this owner
    /// could not reach the server.
    async fn restore(&self, revision: u64) {
        // A write in progress holds the lock until its revision is noted: once it is ours,
        // a revision above the last noted one is someone else's.
        let Ok(mut writer) = self.writer().await else {
            return;
        };
        if revision <= writer.revision {
            return;
        }
        let owners = &*self.owners;
        let instance = self.current.load_full();
        warn!(
            key = %self.key,
            revision,
            "the key was written or removed by someone else; restoring it"
        );
        MeshStats::incr(&owners.stats.restores);
        if let Err(e) = self
            .reassert(
                &mut writer,
                &instance,
                owners.timing.heartbeat_interval,
                RESTORED,
            )
            .await
        {
            warn!(key = %self.key, error = %e, "could not restore the key; the next heartbeat tries again");
        }
    }

    /// Not deregistered, the mesh not closed, and its heartbeat scheduler running.
    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
            && !*self.owners.closing.borrow()
            && !self.owners.schedule.is_closed()
    }

    /// The key's lock, once no other write is in progress; an error if the registration
    /// ended (deregistered under this lock, or the mesh closed) meanwhile.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, KeyState>> {
        if !self.is_live() {
            return Err(self.gone());
        }
        let writer = self.writer.lock().await;
        if !self.is_live() {
            return Err(self.gone());
        }
        Ok(writer)
    }

    fn gone(&self) -> Error {
        Error::new(
            ErrorKind::NotRegistered,
            format!(
                "{} is no longer registered by this mesh",
                self.key.replacen('.', "/", 1)
            ),
        )
    }

    /// One heartbeat; returns when the next one is due. While another write holds the key
    /// it is tried again soon rather than waited for: that write may be failing.
    async fn heartbeat(&self) -> Duration {
        let timing = &self.owners.timing;
        let Ok(mut writer) = self.writer.try_lock() else {
            return retry_delay(timing.heartbeat_interval, Duration::ZERO);
        };
        // Deregistered while this heartbeat waited its turn: the tombstone must stay.
        if !self.live.load(Ordering::Acquire) {
            return timing.heartbeat_interval;
        }
        // Never wait for an acknowledgement past the key's expiry: by then a retry must be
        // on its way. A key that may have expired already is re-asserted at leisure.
        let left = writer.left(timing.instance_ttl);
        let wait = if left.is_zero() {
            timing.heartbeat_interval
        } else {
            left
        };
        match self.refresh(&mut writer, wait).await {
            Ok(()) => timing.heartbeat_interval,
            Err(e) => {
                MeshStats::incr(&self.owners.stats.heartbeat_failures);
                let left = writer.left(timing.instance_ttl);
                let delay = retry_delay(timing.heartbeat_interval, left);
                warn!(
                    key = %self.key,
                    timeout = ?wait,
                    expires_in = ?left,
                    retry_in = ?delay,
                    error = %e,
                    "heartbeat of {} failed (waited at most {}); the key expires in {} unless a retry lands",
                    self.key,
                    humantime::format_duration(round_ms(wait)),
                    humantime::format_duration(round_ms(left)),
                );
                delay
            }
        }
    }

    /// Refreshes the key; if it expired or was overwritten meanwhile, writes it again and
    /// announces it. Waits at most `wait` for each acknowledgement.
    async fn refresh(&self, writer: &mut KeyState, wait: Duration) -> Result<()> {
        let owners = &*self.owners;
        let instance = self.current.load_full();
        let record = record(&instance, &owners.timing, None);
        let sent = Instant::now();
        let written = owners
            .store
            .put(
                &self.key,
                &record,
                owners.timing.instance_ttl,
                WriteCondition::Revision(writer.revision),
                Some(wait),
            )
            .await;
        match written {
            Ok(revision) => {
                self.wrote(writer, revision, sent);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                self.reassert(writer, &instance, wait, REASSERTED).await
            }
            Err(e) => Err(e),
        }
    }

    async fn reassert(
        &self,
        writer: &mut KeyState,
        instance: &Arc<ServiceInstance>,
        wait: Duration,
        reason: &str,
    ) -> Result<()> {
        let owners = &*self.owners;
        let record = record(instance, &owners.timing, Some(reason));
        let sent = Instant::now();
        let revision = owners
            .store
            .put(
                &self.key,
                &record,
                owners.timing.instance_ttl,
                WriteCondition::Any,
                Some(wait),
            )
            .await?;
        self.wrote(writer, revision, sent);
        MeshStats::incr(&owners.stats.reasserts);
        info!(key = %self.key, revision, "re-asserted registration");
        self.publish(
            instance,
            EventName::Registered,
            None,
            Some(reason.to_string()),
            revision,
        )
        .await
    }

    async fn update(
        &self,
        writer: &mut KeyState,
        edit: impl FnOnce(&mut ServiceInstance),
        reason: Option<String>,
    ) -> Result<Updated> {
        let owners = &*self.owners;
        let previous = self.current.load_full();
        let mut next = ServiceInstance::clone(&previous);
        edit(&mut next);
        if next.service != previous.service
            || next.id != previous.id
            || next.registered_at != previous.registered_at
        {
            return Err(Error::invalid(format!(
                "{}: an update cannot change the service name, id or registration time",
                self.key
            )));
        }
        next.validate()?;
        if next.same_content(&previous) {
            return Ok(Updated {
                instance: previous,
                revision: writer.revision,
                events: Vec::new(),
                reason,
            });
        }
        next.updated_at = SystemTime::now();
        let next = Arc::new(next);
        let record = record(&next, &owners.timing, reason.as_deref());
        let sent = Instant::now();
        let revision = match owners
            .store
            .put(
                &self.key,
                &record,
                owners.timing.instance_ttl,
                WriteCondition::Revision(writer.revision),
                None,
            )
            .await
        {
            Ok(revision) => revision,
            // The owner is the only writer of its key: a conflict means it expired or was
            // overwritten, and our state is the one to keep.
            Err(e) if e.kind() == ErrorKind::Conflict => {
                MeshStats::incr(&owners.stats.reasserts);
                owners
                    .store
                    .put(
                        &self.key,
                        &record,
                        owners.timing.instance_ttl,
                        WriteCondition::Any,
                        None,
                    )
                    .await?
            }
            Err(e) => return Err(e),
        };
        self.wrote(writer, revision, sent);
        self.current.store(next.clone());
        let mut events = Vec::with_capacity(2);
        if previous.status != next.status {
            events.push((EventName::Status, Some(previous.status)));
        }
        let mut without_status = ServiceInstance::clone(&previous);
        without_status.status = next.status;
        if !without_status.same_content(&next) {
            events.push((EventName::Updated, None));
        }
        Ok(Updated {
            instance: next,
            revision,
            events,
            reason,
        })
    }

    /// Publishes an update's events, in order.
    async fn announce(&self, update: &Updated) -> Result<()> {
        for (event, previous) in &update.events {
            self.publish(
                &update.instance,
                *event,
                *previous,
                update.reason.clone(),
                update.revision,
            )
            .await?;
        }
        Ok(())
    }

    /// Writes the tombstone, then the event; says whether the tombstone was written.
    async fn deregister(
        &self,
        writer: &mut KeyState,
        reason: Option<String>,
    ) -> (bool, Result<()>) {
        let owners = &*self.owners;
        let revision = match owners
            .store
            .delete(&self.key, reason.as_deref(), owners.timing.tombstone_ttl)
            .await
        {
            Ok(revision) => revision,
            Err(e) => return (false, Err(e)),
        };
        writer.revision = revision;
        self.written.store(revision, Ordering::Release);
        MeshStats::incr(&owners.stats.deregistrations);
        let instance = self.current.load_full();
        (
            true,
            self.publish(&instance, EventName::Deregistered, None, reason, revision)
                .await,
        )
    }

    /// Read-your-writes: waits (bounded) until this mesh's own view shows `revision`, so
    /// `discover` right after `register`, `set_status` or `deregister` sees the change.
    async fn until_visible(&self, revision: u64) {
        let applied = &self.owners.applied;
        if applied.wait_for(revision, STALL_PROBE).await {
            return;
        }
        // Not shown yet: if the watch is stuck on a consumer lost with its stream leader,
        // it resumes now rather than after the consumer's missed heartbeats.
        self.owners.store.watch_stalled(revision);
        if !applied
            .wait_for(revision, READ_YOUR_WRITES_TIMEOUT - STALL_PROBE)
            .await
        {
            debug!(
                key = %self.key,
                revision,
                "own view did not show the write in time; returning anyway"
            );
        }
    }

    /// Appends a lifecycle event, retrying with the same id (the stream stores it once).
    async fn publish(
        &self,
        instance: &Arc<ServiceInstance>,
        event: EventName,
        previous_status: Option<InstanceStatus>,
        reason: Option<String>,
        revision: u64,
    ) -> Result<()> {
        let owners = &*self.owners;
        let record = EventRecord {
            v: PROTOCOL_VERSION,
            event,
            instance: instance.clone(),
            previous_status,
            reason,
            at: SystemTime::now(),
            origin: owners.peer_id.clone(),
        };
        // Unpredictable: de-duplication spans the whole stream, so an id another client
        // could guess, it could claim first on a subject of its own, and this event would
        // be dropped as a duplicate.
        let msg_id = format!(
            "{}-{}-{revision}-{}",
            event.as_str(),
            self.id,
            Uuid::new_v4().simple()
        );
        let give_up = Instant::now() + EVENT_PUBLISH_PATIENCE;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            // The same id every time: the stream stores the event once, however many
            // attempts reached it.
            match owners.store.publish_event(&record, &msg_id).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if Instant::now() + delay < give_up
                        && matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Transport) =>
                {
                    debug!(error = %e, attempt, "event publish failed; retrying");
                    tokio::time::sleep(rand::random_range(delay / 2..=delay)).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                    attempt += 1;
                }
                Err(e) => {
                    MeshStats::incr(&owners.stats.event_publish_failures);
                    return Err(e);
                }
            }
        }
    }
}

/// When a heartbeat that could not write is tried again: soon enough that several tries fit
/// in the `left` its key has (a third of the interval at most), spread at random over the
/// lower half so that the owners of a whole fleet, all failing at once in an outage or a
/// leader election, do not retry in step.
fn retry_delay(interval: Duration, left: Duration) -> Duration {
    let most = if left.is_zero() {
        interval / 3
    } else {
        (left / 4).min(interval / 3)
    }
    .max(MIN_RETRY_DELAY);
    rand::random_range(most / 2..=most)
}

/// The reason a heartbeat that found its key gone or changed writes it again with.
const REASSERTED: &str = "re-asserted by its owner after its key expired or was overwritten";

/// The reason an owner that saw someone else write or remove its key writes it again with.
const RESTORED: &str = "restored by its owner after another client wrote or removed its key";

/// The shortest retry delay: below it, retries only add load to a server that is failing.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(50);

/// `d` to whole milliseconds, for log lines.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
