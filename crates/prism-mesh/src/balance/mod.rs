//! Client-side load balancing over the peer's in-memory view.
//!
//! A [`Balancer`] picks instances of one service. Everything a pick needs (the eligible
//! instances, a weighted round-robin schedule, running weight sums, a Maglev table) is
//! derived once per view change into a table that is swapped atomically; a pick is then an
//! atomic load, a counter or a random number and an array read: no network, no lock and
//! no allocation.

mod load;
mod selection;
mod table;
#[cfg(feature = "tower")]
mod tower_discover;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info};

use arc_swap::{ArcSwap, Guard};
use uuid::Uuid;

pub use load::{InstanceLoad, RequestGuard};
pub use selection::Selection;
pub use table::hash_key;
#[cfg(feature = "tower")]
pub use tower_discover::{DiscoverError, InstanceSource, ServiceDiscover};

use crate::error::{Error, Result};
use crate::instance::ServiceInstance;
use crate::view::{ServiceSlot, ServiceSnapshot};
use table::{random_below, random_u64, PickTable};

/// How a [`Balancer`] picks among eligible instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Smooth weighted round robin (nginx): exact proportions by weight, evenly spread.
    #[default]
    WeightedRoundRobin,
    /// Each eligible instance in turn, weights ignored.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Random with probability proportional to weight.
    WeightedRandom,
    /// Power of two choices: of two random instances, the one with fewer outstanding
    /// requests per unit of weight (requests held through [`RequestGuard`]s).
    LeastOutstanding,
    /// Sticky routing by key (Maglev): use [`Balancer::pick_by_key`]. Adding or removing
    /// one of n instances moves about 1/n of the keys.
    ConsistentHash,
}

impl Strategy {
    /// Every strategy, for iteration in tests and benchmarks.
    pub const ALL: [Strategy; 6] = [
        Strategy::WeightedRoundRobin,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::WeightedRandom,
        Strategy::LeastOutstanding,
        Strategy::ConsistentHash,
    ];

    /// The name used in configuration files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::WeightedRandom => "weighted_random",
            Strategy::LeastOutstanding => "least_outstanding",
            Strategy::ConsistentHash => "consistent_hash",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(Strategy::as_str).collect();
                Error::invalid(format!(
                    "unknown load-balancing strategy {s:?} (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// Passive outlier detection: callers report outcomes through [`RequestGuard`]s, and an
/// instance with too many consecutive failures leaves this balancer's picks for a while.
/// It never changes the instance's status for anyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive failed requests that eject an instance (default 5).
    pub consecutive_failures: u32,
    /// First ejection length; each later one doubles (default 30 s).
    pub base_ejection: Duration,
    /// Longest ejection (default 5 min).
    pub max_ejection: Duration,
    /// Most of a service's eligible instances ejected at once, in percent (default 50;
    /// at least one instance may always be ejected when there are two or more).
    pub max_ejected_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Builds a [`Balancer`]; start with [`Mesh::balancer`](crate::Mesh::balancer).
#[derive(Debug)]
pub struct BalancerBuilder {
    service: String,
    slot: Arc<ServiceSlot>,
    strategy: Strategy,
    selection: Selection,
    outliers: Option<OutlierDetection>,
}

impl BalancerBuilder {
    pub(crate) fn new(service: &str, slot: Arc<ServiceSlot>) -> Self {
        BalancerBuilder {
            service: service.to_string(),
            slot,
            strategy: Strategy::default(),
            selection: Selection::default(),
            outliers: None,
        }
    }

    /// Ejects instances whose requests keep failing from this balancer's picks
    /// (off by default).
    pub fn outlier_detection(mut self, policy: OutlierDetection) -> Self {
        self.outliers = Some(policy);
        self
    }

    /// The strategy (default: smooth weighted round robin).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Which instances are eligible (default: healthy ones).
    pub fn selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// The balancer.
    pub fn build(self) -> Balancer {
        let inner = Inner {
            counter: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            loads: Mutex::new(HashMap::new()),
            table: ArcSwap::from_pointee(PickTable::new(
                Arc::new(ServiceSnapshot::default()),
                u64::MAX,
                Vec::new(),
                Vec::new(),
            )),
            service: self.service,
            slot: self.slot,
            strategy: self.strategy,
            selection: self.selection,
            outliers: self.outliers,
        };
        Balancer {
            inner: Arc::new(inner),
        }
    }
}

/// Picks instances of one service from the live view. Cheap to clone; clones share
/// counters and load.
///
/// ```
/// # #[tokio::main] async fn main() -> prism_mesh::Result<()> {
/// use prism_mesh::{InstanceStatus, Mesh, MemoryStore, ServiceInstance, Strategy};
///
/// let mesh = Mesh::builder().memory_store(MemoryStore::new()).connect().await?;
/// for (port, weight) in [(8001, 300), (8002, 100)] {
///     let instance = ServiceInstance::builder("orders", "10.0.0.7", port)
///         .weight(weight)
///         .status(InstanceStatus::Healthy)
///         .build()?;
///     mesh.register(instance).await?;
/// }
/// mesh.wait_for_service("orders", std::time::Duration::from_secs(1)).await?;
///
/// let orders = mesh.balancer("orders")?.strategy(Strategy::WeightedRoundRobin).build();
/// let picks: Vec<u16> = (0..4).map(|_| orders.pick().map(|i| i.port)).collect::<Result<_, _>>()?;
/// assert_eq!(picks.iter().filter(|p| **p == 8001).count(), 3);
/// mesh.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    service: String,
    slot: Arc<ServiceSlot>,
    strategy: Strategy,
    selection: Selection,
    outliers: Option<OutlierDetection>,
    counter: AtomicUsize,
    /// Bumped when this peer's own exclusions change, to rebuild the table.
    epoch: AtomicU64,
    table: ArcSwap<PickTable>,
    /// Load per instance id; kept across view changes so counts survive a status flip.
    loads: Mutex<HashMap<Uuid, Arc<InstanceLoad>>>,
}

impl Balancer {
    /// The service this balancer picks from.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Its strategy.
    pub fn strategy(&self) -> Strategy {
        self.inner.strategy
    }

    /// Its selection rules.
    pub fn selection(&self) -> &Selection {
        &self.inner.selection
    }

    /// Picks an instance with the balancer's strategy.
    pub fn pick(&self) -> Result<Arc<ServiceInstance>> {
        self.pick_with(self.inner.strategy)
    }

    /// Picks an instance with `strategy` for this call only.
    pub fn pick_with(&self, strategy: Strategy) -> Result<Arc<ServiceInstance>> {
        let table = self.table();
        let index = self.index(&table, strategy)?;
        Ok(table.candidates[index].clone())
    }

    /// Picks the instance for `key` by consistent hashing (Maglev): the same key goes to
    /// the same instance at every peer while the eligible set is unchanged.
    pub fn pick_by_key(&self, key: impl AsRef<[u8]>) -> Result<Arc<ServiceInstance>> {
        let table = self.table();
        if table.candidates.is_empty() {
            return Err(self.unavailable(&table));
        }
        let slots = table.maglev();
        let slot = (hash_key(key.as_ref()) % slots.len() as u64) as usize;
        Ok(table.candidates[slots[slot] as usize].clone())
    }

    /// Picks an instance and starts a request on it: the guard counts as outstanding
    /// until dropped and records the outcome and latency then.
    pub fn pick_guarded(&self) -> Result<RequestGuard> {
        let table = self.table();
        let index = self.index(&table, self.inner.strategy)?;
        let outliers = self.inner.outliers.is_some().then(|| self.inner.clone());
        Ok(RequestGuard::start(
            table.candidates[index].clone(),
            table.loads[index].clone(),
            outliers,
        ))
    }

    /// The instances eligible right now, in the view's order.
    pub fn candidates(&self) -> Vec<Arc<ServiceInstance>> {
        self.table().candidates.clone()
    }

    /// This peer's load figures for instance `id`, once it has been picked or listed.
    pub fn load(&self, id: Uuid) -> Option<Arc<InstanceLoad>> {
        lock_loads(&self.inner).get(&id).cloned()
    }

    fn index(&self, table: &PickTable, strategy: Strategy) -> Result<usize> {
        let n = table.candidates.len();
        if n == 0 {
            return Err(self.unavailable(table));
        }
        let index = match strategy {
            Strategy::RoundRobin => self.next_turn() % n,
            Strategy::WeightedRoundRobin => {
                table.schedule[self.next_turn() % table.schedule.len()] as usize
            }
            Strategy::Random => random_below(n),
            Strategy::WeightedRandom => {
                let total = table.cumulative[n - 1];
                let ticket = random_u64() % total;
                table.cumulative.partition_point(|sum| *sum <= ticket)
            }
            Strategy::LeastOutstanding => least_outstanding(table),
            Strategy::ConsistentHash => {
                return Err(Error::invalid(format!(
                    "{}: consistent hashing picks by key; call pick_by_key",
                    self.inner.service
                )))
            }
        };
        Ok(index)
    }

    fn next_turn(&self) -> usize {
        self.inner.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The table for the current snapshot, rebuilt first if the view changed.
    fn table(&self) -> Guard<Arc<PickTable>> {
        let inner = &*self.inner;
        let table = inner.table.load();
        let snapshot = inner.slot.peek();
        let epoch = inner.epoch.load(Ordering::Acquire);
        if Arc::ptr_eq(&table.source, &snapshot) && table.epoch == epoch {
            return table;
        }
        drop(table);
        let snapshot = Guard::into_inner(snapshot);
        inner
            .table
            .store(Arc::new(self.build_table(snapshot, epoch)));
        inner.table.load()
    }

    fn build_table(&self, snapshot: Arc<ServiceSnapshot>, epoch: u64) -> PickTable {
        let eligible = self.inner.selection.candidates(snapshot.instances());
        let (mut candidates, mut loads) = (Vec::new(), Vec::new());
        {
            let mut known = lock_loads(&self.inner);
            // Forget instances that left the service; guards still hold their own Arc.
            // The snapshot is ordered by id: a lookup, not a scan, per known instance.
            let instances = snapshot.instances();
            known.retain(|id, _| instances.binary_search_by(|i| i.id.cmp(id)).is_ok());
            for instance in eligible {
                let load = known.entry(instance.id).or_default().clone();
                if !load.is_ejected() {
                    candidates.push(instance);
                    loads.push(load);
                }
            }
        }
        PickTable::new(snapshot, epoch, candidates, loads)
    }

    fn unavailable(&self, table: &PickTable) -> Error {
        self.inner
            .selection
            .unavailable(&self.inner.service, table.source.instances())
    }
}

fn lock_loads(inner: &Inner) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<InstanceLoad>>> {
    inner.loads.lock().unwrap_or_else(|p| p.into_inner())
}

/// After a failed request: ejects the instance when it failed often enough and the
/// service can spare it, and schedules the table rebuild that brings it back.
fn consider_ejection(inner: &Arc<Inner>, load: &Arc<InstanceLoad>) {
    let Some(policy) = inner.outliers else { return };
    if load.consecutive_failures() < policy.consecutive_failures || load.is_ejected() {
        return;
    }
    let (eligible, ejected) = {
        let table = inner.table.load();
        let known = lock_loads(inner);
        let eligible = inner.selection.candidates(table.source.instances());
        let ejected = eligible
            .iter()
            .filter(|i| known.get(&i.id).is_some_and(|l| l.is_ejected()))
            .count();
        (eligible.len(), ejected)
    };
    let allowed = if eligible < 2 {
        0
    } else {
        (eligible * usize::from(policy.max_ejected_percent) / 100).max(1)
    };
    if ejected >= allowed {
        debug!(service = %inner.service, ejected, allowed, "not ejecting: too many instances already out");
        return;
    }
    let duration = load.eject(policy.base_ejection, policy.max_ejection);
    info!(service = %inner.service, ejection = load.ejections(), for_ms = duration.as_millis() as u64, "outlier ejected from picks");
    inner.epoch.fetch_add(1, Ordering::Release);
    // Bring it back when the ejection ends (the next pick rebuilds the table).
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let inner = Arc::downgrade(inner);
        runtime.spawn(async move {
            tokio::time::sleep(duration).await;
            if let Some(inner) = inner.upgrade() {
                inner.epoch.fetch_add(1, Ordering::Release);
            }
        });
    }
}

/// Power of two choices: two distinct random candidates, the one with fewer outstanding
/// requests per unit of weight wins; ties go to the lower latency average.
fn least_outstanding(table: &PickTable) -> usize {
    let n = table.candidates.len();
    if n == 1 {
        return 0;
    }
    let a = random_below(n);
    let mut b = random_below(n - 1);
    if b >= a {
        b += 1;
    }
    let load_a = u64::from(table.loads[a].outstanding()) * table.weights[b];
    let load_b = u64::from(table.loads[b].outstanding()) * table.weights[a];
    match load_a.cmp(&load_b) {
        std::cmp::Ordering::Less => a,
        std::cmp::Ordering::Greater => b,
        std::cmp::Ordering::Equal if table.loads[b].latency() < table.loads[a].latency() => b,
        std::cmp::Ordering::Equal => a,
    }
}
