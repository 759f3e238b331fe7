//! The key writer: what keeps one owned key written, in order, whatever else writes it
//! (heartbeats, re-assertions, restores, updates, deregistration), and what every key
//! writer of a mesh shares (`Owners`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::Timing;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{InstanceStatus, ServiceInstance, Timestamp};
use crate::metrics::MeshStats;
use crate::protocol::{EventName, InstanceRecord, PROTOCOL_VERSION};
use crate::store::{Store, WriteCondition};
use crate::sync::{KeyAlerts, KeyOwner, Watermark};

/// Longest wait for this mesh's own view to show a write before the call returns.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write waits to see itself in its own view before it asks the watch whether
/// it is stuck.
const STALL_PROBE: Duration = Duration::from_millis(50);

/// What every owned instance of one mesh shares, and the mesh's heartbeat schedule.
pub(crate) struct Owners {
    pub(super) store: Store,
    pub(super) timing: Timing,
    pub(super) stats: Arc<MeshStats>,
    pub(super) peer_id: String,
    pub(super) closing: watch::Receiver<bool>,
    /// The highest revision the mesh's own view shows.
    pub(super) applied: Arc<Watermark>,
    /// New registrations, for the heartbeat scheduler.
    pub(super) schedule: mpsc::UnboundedSender<Arc<OwnedInstance>>,
    /// Where the view tells owners that someone else wrote their keys.
    pub(super) alerts: Arc<KeyAlerts>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("timing", &self.timing)
            .finish()
    }
}

/// The state behind one [`Registration`].
pub(super) struct OwnedInstance {
    pub(super) id: Uuid,
    /// `<service>.<id>`.
    pub(super) key: String,
    pub(super) service_len: usize,
    pub(super) owners: Arc<Owners>,
    /// The instance as last written.
    pub(super) current: ArcSwap<ServiceInstance>,
    /// False once deregistered (set under the key's lock), rolled back or never scheduled.
    pub(super) live: AtomicBool,
    /// Held by whoever writes the key: one write at a time, in order.
    pub(super) writer: tokio::sync::Mutex<KeyState>,
    /// The last revision this owner wrote, readable without the writer's lock: an alert
    /// about a revision up to it is this owner's own write.
    pub(super) written: AtomicU64,
    /// When this owner last restored its key (see `restore`).
    pub(super) restored_at: std::sync::Mutex<Option<Instant>>,
    /// Held by whoever publishes an update's events, taken before the writer is released:
    /// events in the order of their writes.
    pub(super) events: Arc<tokio::sync::Mutex<()>>,
}

impl OwnedInstance {
    /// The state of a key just written at `revision` (sent at `sent`), and its owner's
    /// alerts: someone else writing the key is reported to it from now on.
    pub(super) fn new(
        owners: Arc<Owners>,
        instance: Arc<ServiceInstance>,
        revision: u64,
        sent: Instant,
    ) -> Arc<OwnedInstance> {
        let owned = Arc::new(OwnedInstance {
            id: instance.id,
            service_len: instance.service.len(),
            key: instance.key(),
            owners: owners.clone(),
            current: ArcSwap::new(instance),
            live: AtomicBool::new(true),
            writer: tokio::sync::Mutex::new(KeyState { revision, sent }),
            written: AtomicU64::new(revision),
            restored_at: std::sync::Mutex::new(None),
            events: Arc::new(tokio::sync::Mutex::new(())),
        });
        let alerted: Weak<dyn KeyOwner> = Arc::downgrade(&owned) as Weak<dyn KeyOwner>;
        owners.alerts.own(&owned.key, alerted);
        owned
    }
}

/// An update written: the instance now, its revision, and the events to publish for it.
pub(super) struct Updated {
    pub(super) instance: Arc<ServiceInstance>,
    pub(super) revision: u64,
    pub(super) events: Vec<(EventName, Option<InstanceStatus>)>,
    pub(super) reason: Option<String>,
}

/// What the writer of a key knows about it.
pub(super) struct KeyState {
    /// The key's revision as last written by us.
    pub(super) revision: u64,
    /// When our last acknowledged write of the key was sent: the server stored it no
    /// earlier, so the key lives at least a TTL from then.
    pub(super) sent: Instant,
}

impl KeyState {
    /// Notes an acknowledged write at `revision`, sent at `sent`.
    pub(super) fn written(&mut self, revision: u64, sent: Instant) {
        self.revision = revision;
        self.sent = sent;
    }

    /// How long the key has left at least before it expires on the server (zero once it
    /// may have).
    pub(super) fn left(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.sent.elapsed())
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
    pub(super) fn wrote(&self, writer: &mut KeyState, revision: u64, sent: Instant) {
        writer.written(revision, sent);
        self.written.store(revision, Ordering::Release);
    }

    /// Writes the key again if the message at `revision` is not this owner's: someone
    /// else wrote or removed it (or rolled the bucket up), or it expired while this owner
    /// could not reach the server.
    pub(super) async fn restore(self: &Arc<Self>, revision: u64) {
        // Two live owners of one key (an id registered twice) would restore against each
        // other without pause: at most one restore per `RESTORE_SPACING`.
        let since = lock_instant(&self.restored_at).map(|at| at.elapsed());
        if let Some(since) = since.filter(|since| *since < RESTORE_SPACING) {
            tokio::time::sleep(RESTORE_SPACING - since).await;
        }
        // A write in progress holds the lock until its revision is noted: once it is ours,
        // a revision above the last noted one is someone else's.
        let Ok(mut writer) = self.writer().await else {
            return;
        };
        if revision <= writer.revision {
            return;
        }
        *self.restored_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let owners = &*self.owners;
        let instance = self.current.load_full();
        warn!(
            key = %self.key,
            revision,
            "the key was written or removed by someone else; restoring it"
        );
        MeshStats::incr(&owners.stats.restores);
        match self
            .reassert(
                &mut writer,
                &instance,
                owners.timing.heartbeat_interval,
                RESTORED,
            )
            .await
        {
            Ok(revision) => self.announce_reasserted(writer, instance, revision, RESTORED),
            Err(e) => {
                warn!(key = %self.key, error = %e, "could not restore the key; the next heartbeat tries again");
            }
        }
    }

    /// Not deregistered, the mesh not closed, and its heartbeat scheduler running.
    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
            && !*self.owners.closing.borrow()
            && !self.owners.schedule.is_closed()
    }

    /// The key's lock, once no other write is in progress; an error if the registration
    /// ended (deregistered under this lock, or the mesh closed) meanwhile.
    pub(super) async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, KeyState>> {
        if !self.is_live() {
            return Err(self.gone());
        }
        let writer = self.writer.lock().await;
        if !self.is_live() {
            return Err(self.gone());
        }
        Ok(writer)
    }

    pub(super) fn gone(&self) -> Error {
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
    pub(super) async fn heartbeat(self: &Arc<Self>) -> Duration {
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
            Ok(None) => timing.heartbeat_interval,
            Ok(Some((instance, revision))) => {
                self.announce_reasserted(writer, instance, revision, REASSERTED);
                timing.heartbeat_interval
            }
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
    /// returns what to announce (the instance and the revision written). Waits at most
    /// `wait` for each acknowledgement.
    pub(super) async fn refresh(
        &self,
        writer: &mut KeyState,
        wait: Duration,
    ) -> Result<Option<(Arc<ServiceInstance>, u64)>> {
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
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                let revision = self.reassert(writer, &instance, wait, REASSERTED).await?;
                Ok(Some((instance, revision)))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn reassert(
        &self,
        writer: &mut KeyState,
        instance: &Arc<ServiceInstance>,
        wait: Duration,
        reason: &str,
    ) -> Result<u64> {
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
        Ok(revision)
    }

    pub(super) async fn update(
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
        next.updated_at = Timestamp::now();
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

    /// Writes the tombstone, then the event; says whether the tombstone was written.
    pub(super) async fn deregister(
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
    pub(super) async fn until_visible(&self, revision: u64) {
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
}

/// When a heartbeat that could not write is tried again: soon enough that several tries fit
/// in the `left` its key has (a third of the interval at most), spread at random over the
/// lower half so that the owners of a whole fleet, all failing at once in an outage or a
/// leader election, do not retry in step.
pub(super) fn retry_delay(interval: Duration, left: Duration) -> Duration {
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

/// The shortest time between two restores of one key.
const RESTORE_SPACING: Duration = Duration::from_millis(100);

/// The last restore's time (a panic elsewhere cannot leave it half-written).
fn lock_instant(at: &std::sync::Mutex<Option<Instant>>) -> Option<Instant> {
    *at.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shortest retry delay: below it, retries only add load to a server that is failing.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(50);

/// `d` to whole milliseconds, for log lines.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn record(
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
