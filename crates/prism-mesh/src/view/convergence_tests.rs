//! Property tests of the view task: every peer converges on the log's state, whatever the
//! order in which its watch delivers the log, and its events tell the same story.
//!
//! A generated log of honest writes (puts of a few instances in a few versions, deletions,
//! purges, expiry markers, and replacements of the whole log) is delivered to a view the way
//! the NATS watch can deliver it: changes live; resynchronisations whose snapshot is the last
//! message per key as of some point, followed by writes made while it streams, split into
//! parts; snapshots abandoned half-way; a replaced log. Then:
//!
//! - the view holds exactly the instances the log's last writes say (its state);
//! - folding the peer's events from an empty view gives the same instances, and every event
//!   fits (no `Registered` for a held instance, no change or removal of one not held);
//! - a peer that saw the whole log live got exactly one event per change, of the right kind.
//!
//! Reproducible like `protocol::proptests`: a fixed seed unless `PROPTEST_RNG_SEED` is set,
//! `PROPTEST_CASES` for more cases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use uuid::Uuid;

use super::{EventBus, EventFilter, MeshEvent, ViewTask};
use crate::instance::{InstanceStatus, ServiceInstance};
use crate::protocol::{InstanceRecord, PROTOCOL_VERSION};
use crate::store::{KvChange, RemovalCause, WatchItem};

/// Instances the generated logs write.
const INSTANCES: usize = 4;

fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5649_4557); // "VIEW"
    }
    config
}

/// One write of the log.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Write {
    /// Instance `.0` in version `.1` (bit 0: status, bit 1: weight).
    Put(usize, u8),
    Delete(usize),
    Purge(usize),
    /// The server's expiry marker.
    Expire(usize),
    /// A put whose body is not a record (a hostile or broken writer): changes nothing.
    /// Only in live deliveries: as the last message of a key in a snapshot it keeps what
    /// the peer held, which depends on the peer (the bucket keeps one message per key).
    Garbage(usize),
    /// A put peers must not trust (no bounded `Nats-TTL`): like `Garbage`.
    Refused(usize),
}

impl Write {
    fn instance(self) -> usize {
        match self {
            Write::Put(i, _)
            | Write::Delete(i)
            | Write::Purge(i)
            | Write::Expire(i)
            | Write::Garbage(i)
            | Write::Refused(i) => i,
        }
    }
}

/// A log: segments, each a bucket made anew (revisions restart at 1).
type Log = Vec<Vec<Write>>;

fn instance(i: usize, version: u8) -> ServiceInstance {
    let mut instance = ServiceInstance::builder("svc", "10.0.0.1", 8000 + i as u16)
        .build()
        .unwrap();
    instance.id = Uuid::from_u128(i as u128 + 1);
    instance.status = if version & 1 == 0 {
        InstanceStatus::Healthy
    } else {
        InstanceStatus::Unhealthy
    };
    instance.weight = if version & 2 == 0 { 100 } else { 50 };
    instance
}

/// The message of write number `index` (0-based) of its segment.
fn change(write: Write, index: usize) -> KvChange {
    let revision = index as u64 + 1;
    let key = instance(write.instance(), 0).key();
    let removed = |cause| KvChange::Removed {
        key: key.clone(),
        revision,
        cause,
        at: SystemTime::now(),
    };
    match write {
        Write::Put(i, version) => KvChange::Put {
            key: key.clone(),
            value: InstanceRecord {
                v: PROTOCOL_VERSION,
                instance: Arc::new(instance(i, version)),
                ttl_ms: 10_000,
                reason: None,
            }
            .encode()
            .unwrap()
            .into(),
            revision,
            written_at: SystemTime::now(),
        },
        Write::Garbage(_) => KvChange::Put {
            key: key.clone(),
            value: bytes::Bytes::from_static(b"\xc1 not a record"),
            revision,
            written_at: SystemTime::now(),
        },
        Write::Refused(_) => KvChange::Refused {
            key: key.clone(),
            revision,
            why: "record without Nats-TTL".into(),
        },
        Write::Delete(_) => removed(RemovalCause::Deregistered { reason: None }),
        Write::Purge(_) => removed(RemovalCause::Purged),
        Write::Expire(_) => removed(RemovalCause::Expired),
    }
}

/// (id, status, weight) of every live instance after `writes`, from empty.
fn state_after(writes: &[Write]) -> BTreeMap<Uuid, (InstanceStatus, u32)> {
    let mut state = BTreeMap::new();
    for write in writes {
        let id = instance(write.instance(), 0).id;
        match *write {
            Write::Put(i, version) => {
                let instance = instance(i, version);
                state.insert(id, (instance.status, instance.weight));
            }
            Write::Garbage(_) | Write::Refused(_) => {}
            _ => {
                state.remove(&id);
            }
        }
    }
    state
}

fn log() -> impl Strategy<Value = Log> {
    let write = prop_oneof![
        6 => (0..INSTANCES, 0u8..4).prop_map(|(i, v)| Write::Put(i, v)),
        2 => (0..INSTANCES).prop_map(Write::Delete),
        1 => (0..INSTANCES).prop_map(Write::Purge),
        2 => (0..INSTANCES).prop_map(Write::Expire),
    ];
    prop::collection::vec(prop::collection::vec(write, 0..24), 1..4)
}

/// Draws numbers from a generated list; zeros once it runs out.
struct Choices(std::vec::IntoIter<u16>);

impl Choices {
    /// A number in `0..=max`.
    fn upto(&mut self, max: usize) -> usize {
        self.0.next().map_or(0, |c| c as usize % (max + 1))
    }
}

/// The items a watch delivers for one snapshot of `segment` as of `at` (the last write of
/// each key before it, in log order), followed by the writes up to `until` that the
/// consumer picks up while the snapshot streams, split into parts (the last one may be
/// empty, as the NATS watch sends it). Without `SnapshotEnd`: the caller ends it or not.
///
/// Some keys are missing, as on the server: a key whose last write is a removal once its
/// tombstone or marker expired, and a key rewritten while the snapshot streams (the bucket
/// keeps one message per key, so the consumer only finds the new one).
fn snapshot(
    segment: &[Write],
    at: usize,
    until: usize,
    choices: &mut Choices,
    items: &mut Vec<WatchItem>,
) {
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    for (index, write) in segment[..at].iter().enumerate() {
        last.insert(write.instance(), index);
    }
    let rewritten: Vec<usize> = segment[at..until].iter().map(|w| w.instance()).collect();
    let mut indices: Vec<usize> = last
        .into_iter()
        .filter(|(instance, index)| {
            let gone = !matches!(segment[*index], Write::Put(..)) || rewritten.contains(instance);
            !(gone && choices.upto(1) == 1)
        })
        .map(|(_, index)| index)
        .collect();
    indices.sort_unstable();
    indices.extend(at..until);
    let mut changes: Vec<KvChange> = indices
        .into_iter()
        .map(|index| change(segment[index], index))
        .collect();
    items.push(WatchItem::SnapshotBegin);
    while !changes.is_empty() {
        let size = 1 + choices.upto(changes.len() - 1);
        let rest = changes.split_off(size);
        items.push(WatchItem::SnapshotPart(std::mem::replace(
            &mut changes,
            rest,
        )));
    }
    if choices.upto(1) == 1 {
        items.push(WatchItem::SnapshotPart(Vec::new()));
    }
}

/// A snapshot of `segment` from `from` on that the watch abandons half-way (it failed and
/// starts again); returns how far into the log it got.
fn abandoned_snapshot(
    segment: &[Write],
    from: usize,
    choices: &mut Choices,
    items: &mut Vec<WatchItem>,
) -> usize {
    let at = from + choices.upto(segment.len() - from);
    let until = at + choices.upto(segment.len() - at);
    let mut partial = Vec::new();
    snapshot(segment, at, until, choices, &mut partial);
    partial.truncate(1 + choices.upto(partial.len() - 1));
    items.extend(partial);
    until
}

/// One way the watch can deliver `log` to a peer that starts on an empty bucket.
fn delivery(log: &Log, choices: &mut Choices) -> Vec<WatchItem> {
    let mut items = vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(Vec::new()),
        WatchItem::SnapshotEnd,
    ];
    for (number, segment) in log.iter().enumerate() {
        let mut delivered = 0;
        if number > 0 {
            // The bucket was made anew (perhaps while a resync of the old one streamed in):
            // the watch says so, then reads the new one from a snapshot.
            if choices.upto(3) == 3 {
                let previous = &log[number - 1];
                abandoned_snapshot(previous, previous.len(), choices, &mut items);
            }
            items.push(WatchItem::LogReplaced);
            let at = choices.upto(segment.len());
            let until = at + choices.upto(segment.len() - at);
            snapshot(segment, at, until, choices, &mut items);
            items.push(WatchItem::SnapshotEnd);
            delivered = until;
        }
        while delivered < segment.len() {
            let left = segment.len() - delivered;
            // Out of choices (all zeros), the rest comes live: every delivery ends.
            match choices.upto(3) {
                // A resync (after a reconnect), sometimes abandoned half-way first; each
                // snapshot is taken after the one before it.
                3 => {
                    let mut from = delivered;
                    if choices.upto(2) == 2 {
                        from = abandoned_snapshot(segment, from, choices, &mut items);
                    }
                    let at = from + choices.upto(segment.len() - from);
                    let until = at + choices.upto(segment.len() - at);
                    snapshot(segment, at, until, choices, &mut items);
                    items.push(WatchItem::SnapshotEnd);
                    delivered = until;
                }
                // Live changes.
                _ => {
                    let count = 1 + choices.upto(left - 1);
                    let live = segment.iter().enumerate().skip(delivered).take(count);
                    items.extend(
                        live.map(|(index, write)| WatchItem::Change(change(*write, index))),
                    );
                    delivered += count;
                }
            }
        }
    }
    items
}

/// Runs a view over `items`: what it holds at the end, and every event it dispatched.
fn run_view(items: Vec<WatchItem>) -> (Vec<Arc<ServiceInstance>>, Vec<MeshEvent>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bus = Arc::new(EventBus::default());
        let events = bus.subscribe(EventFilter::all());
        let held = ViewTask::run_over(items, bus).await;
        (held, events.collect().await)
    })
}

fn summary(instances: &[Arc<ServiceInstance>]) -> BTreeMap<Uuid, (InstanceStatus, u32)> {
    instances
        .iter()
        .map(|i| (i.id, (i.status, i.weight)))
        .collect()
}

/// The view `events` build from an empty one; `Err` names the first event that does not fit.
fn fold(events: &[MeshEvent]) -> Result<BTreeMap<Uuid, (InstanceStatus, u32)>, String> {
    let mut held: BTreeMap<Uuid, (InstanceStatus, u32)> = BTreeMap::new();
    for (n, event) in events.iter().enumerate() {
        let instance = event.instance();
        let present = held.contains_key(&instance.id);
        match event {
            MeshEvent::Registered { .. } if present => {
                return Err(format!("event {n}: {event:?} of a held instance"))
            }
            MeshEvent::Registered { .. }
            | MeshEvent::Updated { .. }
            | MeshEvent::StatusChanged { .. } => {
                if !present && !matches!(event, MeshEvent::Registered { .. }) {
                    return Err(format!("event {n}: {event:?} of an instance not held"));
                }
                if let MeshEvent::StatusChanged { previous, .. } = event {
                    if held[&instance.id].0 != *previous {
                        return Err(format!("event {n}: {event:?} from another status"));
                    }
                }
                held.insert(instance.id, (instance.status, instance.weight));
            }
            MeshEvent::Deregistered { .. } | MeshEvent::Expired { .. } => {
                if held.remove(&instance.id).is_none() {
                    return Err(format!("event {n}: {event:?} of an instance not held"));
                }
            }
        }
    }
    Ok(held)
}

/// The events a peer that sees `writes` live, from an empty bucket, must emit, as
/// (kind, instance index) in order.
fn live_events(writes: &[Write]) -> Vec<(&'static str, usize)> {
    let mut held: BTreeMap<usize, u8> = BTreeMap::new();
    let mut events = Vec::new();
    for write in writes {
        let i = write.instance();
        match (*write, held.get(&i).copied()) {
            (Write::Put(_, version), None) => {
                events.push(("registered", i));
                held.insert(i, version);
            }
            (Write::Put(_, version), Some(before)) => {
                if (before ^ version) & 1 != 0 {
                    events.push(("status", i));
                }
                if (before ^ version) & 2 != 0 {
                    events.push(("updated", i));
                }
                held.insert(i, version);
            }
            (Write::Garbage(_) | Write::Refused(_), _) => {}
            (_, None) => {} // removing what is not held changes nothing
            (Write::Expire(_), Some(_)) => {
                events.push(("expired", i));
                held.remove(&i);
            }
            (_, Some(_)) => {
                events.push(("deregistered", i));
                held.remove(&i);
            }
        }
    }
    events
}

fn index_of(id: Uuid) -> usize {
    (id.as_u128() - 1) as usize
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_delivery_of_a_log_converges_on_its_state_and_events_tell_the_same_story(
        log in log(),
        choices in prop::collection::vec(any::<u16>(), 0..64),
    ) {
        let items = delivery(&log, &mut Choices(choices.into_iter()));
        let (held, events) = run_view(items);
        let expected = state_after(log.last().unwrap());
        prop_assert_eq!(&summary(&held), &expected, "view after the log");
        match fold(&events) {
            Ok(folded) => prop_assert_eq!(&folded, &expected, "view built from the events"),
            Err(why) => prop_assert!(false, "{}", why),
        }
    }

    #[test]
    fn a_peer_that_sees_the_whole_log_live_gets_one_event_per_change(
        writes in prop::collection::vec(
            prop_oneof![
                6 => (0..INSTANCES, 0u8..4).prop_map(|(i, v)| Write::Put(i, v)),
                2 => (0..INSTANCES).prop_map(Write::Delete),
                1 => (0..INSTANCES).prop_map(Write::Purge),
                2 => (0..INSTANCES).prop_map(Write::Expire),
                1 => (0..INSTANCES).prop_map(Write::Garbage),
                1 => (0..INSTANCES).prop_map(Write::Refused),
            ],
            0..40,
        ),
    ) {
        let mut items = vec![WatchItem::SnapshotBegin, WatchItem::SnapshotEnd];
        items.extend(
            writes
                .iter()
                .enumerate()
                .map(|(index, write)| WatchItem::Change(change(*write, index))),
        );
        let (held, events) = run_view(items);
        prop_assert_eq!(summary(&held), state_after(&writes), "view after the log");
        let got: Vec<(&'static str, usize)> = events
            .iter()
            .map(|event| {
                let kind = match event {
                    MeshEvent::Registered { .. } => "registered",
                    MeshEvent::Updated { .. } => "updated",
                    MeshEvent::StatusChanged { .. } => "status",
                    MeshEvent::Deregistered { .. } => "deregistered",
                    MeshEvent::Expired { .. } => "expired",
                };
                (kind, index_of(event.instance().id))
            })
            .collect();
        prop_assert_eq!(got, live_events(&writes));
    }
}
