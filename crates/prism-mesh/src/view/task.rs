//! The view task: applies the backend's snapshots and changes to the index in log order,
//! flushes per-service snapshots to readers, then dispatches the events and records
//! expiries. One per mesh handle; readers never wait for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

// The index hashes every key of every change: foldhash (randomly seeded per map) is several
// times faster than SipHash on these short keys.
use foldhash::HashSet as FastSet;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::events::EventBus;
use super::preservation::SelfPreservation;
use super::registry::RegistryView;
use crate::error::ErrorKind;
use crate::metrics::MeshStats;
use crate::protocol::{EventRecord, PROTOCOL_VERSION};
use crate::store::{Store, WatchItem};
use crate::sync::{KeyAlerts, Watermark};

use super::state::{RemovalToRecord, ViewState};

/// Most watch items applied before readers see a new snapshot.
const MAX_BATCH: usize = 4096;

/// After a flush that took `t`, the next one waits until `t * FLUSH_COST_FACTOR` has passed
/// (collecting changes meanwhile), so publishing snapshots takes at most about a tenth of
/// the task's time. Flushes cost microseconds (a snapshot shares its map with the index)
/// and are not delayed.
const FLUSH_COST_FACTOR: u32 = 10;

/// Flushes cheaper than this are never throttled: one costs this much only when thousands
/// of services changed at once, or when it drops big ordered slices readers asked of the
/// snapshots it replaces. Below it the delay would cost more latency (tokio timers round
/// up to whole milliseconds) than it saves CPU.
const THROTTLED_FLUSH_COST: Duration = Duration::from_millis(1);

/// A held expiry's key, and what the store said of it: its last write's revision and
/// whether it holds a value (`Some(None)`: nothing stored; `None`: could not be asked).
type Confirmation = (String, Option<Option<(u64, bool)>>);

/// Everything the view task needs.
pub(crate) struct ViewTask {
    pub(crate) store: Store,
    pub(crate) registry: Arc<RegistryView>,
    pub(crate) bus: Arc<EventBus>,
    pub(crate) stats: Arc<MeshStats>,
    pub(crate) ready: watch::Sender<bool>,
    /// The interest generation readers can see loaded (see `Mesh::follow`).
    pub(crate) loaded: watch::Sender<u64>,
    pub(crate) peer_id: String,
    pub(crate) publish_expired: bool,
    pub(crate) self_preservation: SelfPreservation,
    /// The highest revision readers can see, so writers can wait for their own writes.
    pub(crate) applied: Arc<Watermark>,
    /// The owners of keys in this process, told of every change of their keys.
    pub(crate) alerts: Arc<KeyAlerts>,
    /// True (or gone) once the mesh closes: the view stops and its event streams end,
    /// whatever the backend (a memory store's watch never closes by itself).
    pub(crate) closing: watch::Receiver<bool>,
}

impl Drop for ViewTask {
    /// However the task ends (closed, failed, cancelled, even before it first ran),
    /// writers stop waiting on it.
    fn drop(&mut self) {
        self.applied.close();
    }
}

impl ViewTask {
    pub(crate) async fn run(self, mut items: mpsc::UnboundedReceiver<WatchItem>) {
        let mut state = ViewState::new(
            self.self_preservation,
            self.registry.clone(),
            self.stats.clone(),
            self.alerts.clone(),
        );
        // When the last flush finished and what it cost: see `FLUSH_COST_FACTOR`.
        let mut last_flush = (Instant::now(), Duration::ZERO);
        let mut closing = self.closing.clone();
        // What the store says of held expiries whose grace ended (see `confirm_held`).
        let (confirm_tx, mut confirmations) = mpsc::unbounded_channel::<Confirmation>();
        // Services whose expiries the server refused to let this peer record.
        let refused_expiries = Arc::new(Mutex::new(FastSet::default()));
        'items: loop {
            // Wake for the next item, or when a waiting expiry must be decided.
            let deadline = state.next_deadline();
            let first = tokio::select! {
                biased;
                _ = crate::sync::until_true(&mut closing) => break 'items,
                item = items.recv() => match item {
                    Some(item) => Some(item),
                    None => break 'items,
                },
                Some((key, last)) = confirmations.recv() => {
                    state.confirmed(&key, last);
                    None
                }
                () = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                } => None,
            };
            let mut batch = 1;
            let mut next = first;
            loop {
                while let Some(item) = next.take() {
                    if state.apply(item) {
                        self.applied.reset();
                    }
                    if batch < MAX_BATCH {
                        next = items.try_recv().ok();
                        batch += 1;
                    }
                }
                // While a snapshot streams in, publish nothing: readers keep the last complete
                // view (a snapshot is published whole, never half-applied).
                if state.in_snapshot() {
                    continue 'items;
                }
                // An expensive flush (see `THROTTLED_FLUSH_COST`) is not repeated per
                // change: keep collecting until its cost is a small share of the time.
                let due = last_flush.0 + last_flush.1 * FLUSH_COST_FACTOR;
                let throttled = last_flush.1 >= THROTTLED_FLUSH_COST;
                if throttled && batch < MAX_BATCH && Instant::now() < due {
                    if let Ok(Some(item)) = tokio::time::timeout_at(due, items.recv()).await {
                        next = Some(item);
                        batch += 1;
                        continue;
                    }
                }
                break;
            }
            for (key, _) in state.settle_expiries() {
                self.confirm_held(key, &confirm_tx);
            }
            self.stats
                .view_backlog
                .store(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // Readers see the new state before anyone hears about it.
            let started = Instant::now();
            let flushed = state.flush();
            last_flush = (Instant::now(), started.elapsed());
            self.applied.raise(state.high());
            self.stats.events_emitted.fetch_add(
                flushed.events.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.bus.dispatch(&flushed.events);
            // Ready only after the first full snapshot was dispatched, so a subscriber
            // created after `connect` returns never gets a random part of it.
            if state.synced() {
                self.ready
                    .send_if_modified(|ready| !std::mem::replace(ready, true));
            }
            let loaded = state.loaded();
            self.loaded
                .send_if_modified(|seen| std::mem::replace(seen, loaded) != loaded);
            for removal in flushed.removals {
                self.record_removal(removal, &refused_expiries);
            }
        }
        debug!("view task ends: the mesh or its watch closed");
        self.bus.close();
    }

    /// Asks the store for the last write of a held key whose grace ended, and hands the
    /// answer back to the loop.
    fn confirm_held(&self, key: String, confirm: &mpsc::UnboundedSender<Confirmation>) {
        let store = self.store.clone();
        let confirm = confirm.clone();
        tokio::spawn(async move {
            let last = match store.last_write(&key).await {
                Ok(last) => Some(last),
                Err(e) => {
                    debug!(key, error = %e, "cannot confirm a held expiry; holding on");
                    None
                }
            };
            let _ = confirm.send((key, last));
        });
    }

    /// Records a removal no owner announces (an expiry, a delete from outside the mesh) on
    /// the event stream, unless this peer may not record that service's (the server refused
    /// it once: under least privilege a service records its own service's, and a witness
    /// user every service's).
    fn record_removal(&self, removal: RemovalToRecord, refused: &Arc<Mutex<FastSet<String>>>) {
        if !self.publish_expired {
            return;
        }
        let service = removal.instance.service.clone();
        let refusal = format!("{service}.{}", removal.event.as_str());
        if lock_set(refused).contains(&refusal) {
            return;
        }
        let record = EventRecord {
            v: PROTOCOL_VERSION,
            event: removal.event,
            instance: removal.instance.clone(),
            previous_status: None,
            reason: Some(removal.reason.to_string()),
            at: SystemTime::now(),
            origin: self.peer_id.clone(),
        };
        let store = self.store.clone();
        let stats = self.stats.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            match store.record_removal(&record, removal.revision).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    info!(
                        %service,
                        event = record.event.as_str(),
                        "this user may not record these events of {service}; leaving them to a peer that may"
                    );
                    lock_set(&refused).insert(refusal);
                }
                Err(e) => {
                    MeshStats::incr(&stats.event_publish_failures);
                    warn!(error = %e, event = record.event.as_str(), "could not record a removal");
                }
            }
        });
    }
}

/// Locks a set a panic elsewhere cannot leave half-changed (every change is one insert).
fn lock_set(set: &Mutex<FastSet<String>>) -> std::sync::MutexGuard<'_, FastSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
impl ViewTask {
    /// Runs a view task over `items` to their end and returns the instances of service
    /// `svc` it holds then. The task has a memory store nothing else uses, no
    /// self-preservation, publishes no expired events, and dispatches on `bus`.
    pub(crate) async fn run_over(
        items: Vec<WatchItem>,
        bus: Arc<EventBus>,
    ) -> Vec<Arc<crate::instance::ServiceInstance>> {
        let registry = Arc::new(RegistryView::default());
        // Held until the end: dropping it is the mesh closing.
        let (_open, closing) = watch::channel(false);
        let task = ViewTask {
            store: Store::Memory(crate::store::MemoryStore::new()),
            registry: registry.clone(),
            bus,
            stats: Arc::new(MeshStats::default()),
            ready: watch::channel(false).0,
            loaded: watch::channel(0).0,
            peer_id: "test".into(),
            publish_expired: false,
            self_preservation: SelfPreservation::disabled(),
            applied: Arc::default(),
            alerts: Arc::default(),
            closing,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        for item in items {
            tx.send(item).unwrap();
        }
        drop(tx);
        task.run(rx).await;
        registry
            .slot("svc")
            .map(|slot| slot.load().instances().to_vec())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "task_tests.rs"]
mod task_tests;
