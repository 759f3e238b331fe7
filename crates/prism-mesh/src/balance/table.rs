//! The pick table: everything a pick needs, derived once per view change so a pick is a
//! few array reads.

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, OnceLock};

use uuid::Uuid;

use super::load::InstanceLoad;
use crate::instance::ServiceInstance;
use crate::view::ServiceSnapshot;

/// Longest smooth weighted round-robin schedule; heavier weight sets are scaled down to it.
const MAX_SCHEDULE: u64 = 16_384;

/// Maglev lookup table sizes (primes); the first at least `MAGLEV_SLOTS_PER_INSTANCE` times
/// the candidate count is used.
const MAGLEV_PRIMES: [usize; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];
const MAGLEV_SLOTS_PER_INSTANCE: usize = 100;

/// Derived from one service snapshot and one selection.
#[derive(Debug)]
pub(crate) struct PickTable {
    /// The snapshot this table was built from; holding it keeps its address unique.
    pub(crate) source: Arc<ServiceSnapshot>,
    /// The ejection epoch this table was built at.
    pub(crate) epoch: u64,
    pub(crate) candidates: Vec<Arc<ServiceInstance>>,
    pub(crate) loads: Vec<Arc<InstanceLoad>>,
    /// Smooth weighted round robin: candidate indexes in pick order, one period long.
    pub(crate) schedule: Vec<u32>,
    /// Running sums of weights for weighted random picks.
    pub(crate) cumulative: Vec<u64>,
    /// Effective weight per candidate (at least 1), kept here so a pick does not touch
    /// the instances themselves.
    pub(crate) weights: Vec<u64>,
    maglev: OnceLock<Vec<u32>>,
}

impl PickTable {
    pub(crate) fn new(
        source: Arc<ServiceSnapshot>,
        epoch: u64,
        candidates: Vec<Arc<ServiceInstance>>,
        loads: Vec<Arc<InstanceLoad>>,
    ) -> Self {
        let weights = effective_weights(&candidates);
        let mut total = 0;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        PickTable {
            source,
            epoch,
            schedule: smooth_weighted_schedule(&weights),
            cumulative,
            weights: weights.iter().map(|w| u64::from(*w).max(1)).collect(),
            candidates,
            loads,
            maglev: OnceLock::new(),
        }
    }

    /// The Maglev lookup table, built on first use.
    pub(crate) fn maglev(&self) -> &[u32] {
        self.maglev.get_or_init(|| {
            let ids: Vec<Uuid> = self.candidates.iter().map(|i| i.id).collect();
            maglev_table(&ids)
        })
    }
}

/// Weights for picking: an instance's weight, or 1 each when every weight is zero (a
/// service of only zero-weight instances still serves).
fn effective_weights(candidates: &[Arc<ServiceInstance>]) -> Vec<u32> {
    if candidates.iter().all(|i| i.weight == 0) {
        return vec![1; candidates.len()];
    }
    candidates.iter().map(|i| i.weight).collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The nginx smooth weighted round-robin order over one period: each step every candidate
/// gains its weight, the richest is picked and pays the total. Weights are divided by their
/// greatest common divisor, and scaled to at most `MAX_SCHEDULE` steps.
pub(crate) fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0, |g, w| gcd(g, u64::from(*w))).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| u64::from(*w) / divisor).collect();
    let sum: u64 = reduced.iter().sum();
    if sum > MAX_SCHEDULE {
        for w in &mut reduced {
            if *w > 0 {
                *w = (*w * MAX_SCHEDULE / sum).max(1);
            }
        }
    }
    let total: i64 = reduced.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016) over instance ids: slot -> index.
/// Removing one of n instances moves about 1/n of the slots.
fn maglev_table(ids: &[Uuid]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let wanted = ids.len().saturating_mul(MAGLEV_SLOTS_PER_INSTANCE);
    let size = MAGLEV_PRIMES
        .iter()
        .copied()
        .find(|p| *p >= wanted)
        .unwrap_or(MAGLEV_PRIMES[MAGLEV_PRIMES.len() - 1]);
    let m = size as u64;
    let permutations: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let bits = id.as_u128();
            let h = mix(bits as u64 ^ mix((bits >> 64) as u64));
            let offset = h % m;
            let skip = mix(h ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; ids.len()];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in permutations.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot as usize] != u32::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

/// The splitmix64 finalizer: a fast, well-mixed 64-bit hash step.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a routing key (FNV-1a, then mixed), the same in every process
/// and release, so every peer routes a key to the same instance.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

thread_local! {
    // Picks need speed, not secrecy: rand's small generator, one per thread, seeded from
    // the thread's secure one.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// A fast per-thread pseudo-random number.
pub(crate) fn random_u64() -> u64 {
    RNG.with_borrow_mut(|rng| rng.next_u64())
}

/// A uniform index below `n` (n > 0), by multiply-shift (no division).
pub(crate) fn random_below(n: usize) -> usize {
    ((u128::from(random_u64()) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_matches_nginx_order() {
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a.
        assert_eq!(
            smooth_weighted_schedule(&[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn smooth_schedule_reduces_by_gcd_and_skips_zero_weights() {
        assert_eq!(smooth_weighted_schedule(&[100, 100]), vec![0, 1]);
        assert_eq!(smooth_weighted_schedule(&[0, 30, 10]), vec![1, 1, 2, 1]);
    }

    #[test]
    fn smooth_schedule_is_bounded_for_huge_weights() {
        let schedule = smooth_weighted_schedule(&[u32::MAX, u32::MAX - 1, 7]);
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(schedule.contains(&2), "a tiny weight still gets a turn");
    }

    #[test]
    fn maglev_table_fills_every_slot_evenly() {
        let ids: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        let table = maglev_table(&ids);
        assert_eq!(table.len(), 1_021);
        let mut counts = [0usize; 10];
        for slot in &table {
            counts[*slot as usize] += 1;
        }
        for count in counts {
            assert!((90..=115).contains(&count), "uneven maglev share {count}");
        }
    }

    #[test]
    fn key_hash_is_stable_across_processes() {
        // Pinned: every peer (and every release) must route a key the same way.
        assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
        assert_eq!(hash_key(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
    }
}
