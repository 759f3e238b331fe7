//! What a view task does with expiries, refusals and its own end, on a memory store the
//! test can read (the behaviours cargo-mutants found no lib test for).

use super::tests::instance;
use super::*;
use crate::instance::ServiceInstance;
use crate::protocol::{EventName, InstanceRecord};
use std::sync::atomic::AtomicU64;

use crate::store::MemoryStore;
use crate::store::{KvChange, RemovalCause};

const TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(5);

/// A put of `instance` at `revision`, stored `ago` before now with the 10 s TTL.
pub(super) fn put_at(instance: &ServiceInstance, revision: u64, ago: Duration) -> KvChange {
    let record = InstanceRecord {
        v: PROTOCOL_VERSION,
        instance: Arc::new(instance.clone()),
        ttl_ms: 10_000,
        reason: None,
    };
    KvChange::Put {
        key: instance.key(),
        value: record.encode().unwrap().into(),
        revision,
        written_at: SystemTime::now() - ago,
    }
}

fn expired_now(instance: &ServiceInstance, revision: u64) -> KvChange {
    KvChange::Removed {
        key: instance.key(),
        cause: RemovalCause::Expired,
        revision,
        at: SystemTime::now(),
    }
}

/// A running view task fed by the test.
struct Run {
    store: MemoryStore,
    stats: Arc<MeshStats>,
    registry: Arc<RegistryView>,
    items: mpsc::UnboundedSender<WatchItem>,
    _open: watch::Sender<bool>,
}

impl Run {
    fn start(rule: SelfPreservation, publish_expired: bool) -> Run {
        let store = MemoryStore::new();
        let stats = Arc::new(MeshStats::default());
        let registry = Arc::new(RegistryView::default());
        let (open, closing) = watch::channel(false);
        let task = ViewTask {
            store: Store::Memory(store.clone()),
            registry: registry.clone(),
            bus: Arc::new(EventBus::default()),
            stats: stats.clone(),
            ready: watch::channel(false).0,
            loaded: watch::channel(0).0,
            peer_id: "test".into(),
            publish_expired,
            self_preservation: rule,
            applied: Arc::default(),
            alerts: Arc::default(),
            closing,
        };
        let (items, rx) = mpsc::unbounded_channel();
        tokio::spawn(task.run(rx));
        Run {
            store,
            stats,
            registry,
            items,
            _open: open,
        }
    }

    fn send(&self, items: Vec<WatchItem>) {
        for item in items {
            self.items.send(item).unwrap();
        }
    }

    /// Sends a snapshot of `changes`.
    fn snapshot(&self, changes: Vec<KvChange>) {
        self.send(vec![
            WatchItem::SnapshotBegin,
            WatchItem::SnapshotPart(changes),
            WatchItem::SnapshotEnd,
        ]);
    }

    fn held(&self) -> Vec<Arc<ServiceInstance>> {
        self.registry
            .slot("svc")
            .map(|slot| slot.load().instances().to_vec())
            .unwrap_or_default()
    }

    /// Waits until `done` holds of the instances held, or panics naming `what`.
    async fn until(&self, what: &str, done: impl Fn(&[Arc<ServiceInstance>]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.held()) {
            assert!(Instant::now() < deadline, "never {what}: {:?}", self.held());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `counter` of the task's stats is above zero, or panics naming `what`.
    async fn until_counted(&self, what: &str, counter: impl Fn(&MeshStats) -> &AtomicU64) {
        let deadline = Instant::now() + WAIT;
        while counter(&self.stats).load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "{what} was not counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn expired_events(&self) -> usize {
        self.store
            .events()
            .iter()
            .filter(|e| e.event == EventName::Expired)
            .count()
    }
}

#[tokio::test]
async fn an_expiry_is_recorded_once_and_not_at_all_by_a_peer_that_records_none() {
    for publish in [true, false] {
        let run = Run::start(SelfPreservation::disabled(), publish);
        let a = instance(1);
        run.snapshot(vec![put_at(&a, 1, TTL)]);
        run.until("held", |v| v.len() == 1).await;
        run.send(vec![WatchItem::Change(expired_now(&a, 2))]);
        run.until("expired", |v| v.is_empty()).await;
        let deadline = Instant::now() + WAIT;
        while publish && run.expired_events() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            run.expired_events(),
            usize::from(publish),
            "publish {publish}"
        );
    }
}

#[tokio::test]
async fn an_unchanged_rewrite_is_a_heartbeat_and_a_changed_one_is_applied() {
    let run = Run::start(SelfPreservation::disabled(), false);
    let mut a = instance(1);
    run.snapshot(vec![put_at(&a, 1, TTL)]);
    run.until("held", |v| v.len() == 1).await;
    let heartbeats = |run: &Run| {
        run.stats
            .heartbeats_seen
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The same bytes again: the key's time moves, nothing is decoded or announced.
    run.send(vec![WatchItem::Change(put_at(&a, 2, Duration::ZERO))]);
    run.until_counted("the heartbeat", |s| &s.heartbeats_seen)
        .await;
    let written = run.registry.last_write(a.id).expect("a last write");
    assert!(SystemTime::now().duration_since(written).unwrap() < TTL / 2);
    // Other bytes under the same key: decoded and applied, not taken for a heartbeat.
    a.status = crate::instance::InstanceStatus::Healthy;
    run.send(vec![WatchItem::Change(put_at(&a, 3, Duration::ZERO))]);
    run.until("the new status", |v| {
        v[0].status == crate::instance::InstanceStatus::Healthy
    })
    .await;
    assert_eq!(heartbeats(&run), 1);
}

#[tokio::test]
async fn instances_decoded_from_separate_records_share_their_repeated_strings() {
    let run = Run::start(SelfPreservation::disabled(), false);
    let with_extras = |n| {
        let mut i = instance(n);
        i.zone = Some("eu-west-1a".into());
        i.tags = vec!["v2".into()].into();
        i.metadata.insert("region", "eu-west-1");
        i
    };
    let (a, b) = (with_extras(1), with_extras(2));
    run.snapshot(vec![put_at(&a, 1, TTL), put_at(&b, 2, TTL)]);
    run.until("both held", |v| v.len() == 2).await;
    let held = run.held();
    let (a, b) = (&held[0], &held[1]);
    let same = |x: &crate::instance::SharedStr, y: &crate::instance::SharedStr| {
        std::ptr::eq(x.as_str().as_ptr(), y.as_str().as_ptr())
    };
    assert!(same(&a.service, &b.service), "service names are one copy");
    assert!(
        same(a.zone.as_ref().unwrap(), b.zone.as_ref().unwrap()),
        "zones are one copy"
    );
    assert!(same(&a.tags[0], &b.tags[0]), "tags are one copy");
    assert!(same(&a.scheme, &b.scheme), "schemes are one copy");
    let key = |i: &ServiceInstance| i.metadata.keys().next().unwrap().as_ptr();
    assert_eq!(key(a), key(b), "metadata keys are one copy");
    // Hosts are the instance's own: a mesh's hosts are mostly distinct.
    assert!(!same(&a.host, &b.host));
}

#[tokio::test]
async fn a_held_instance_id_written_under_another_service_is_refused() {
    let run = Run::start(SelfPreservation::disabled(), false);
    let a = instance(1);
    run.snapshot(vec![put_at(&a, 1, Duration::ZERO)]);
    run.until("held", |v| v.len() == 1).await;
    let mut twin = ServiceInstance::builder("other", "10.9.9.9", 9)
        .build()
        .unwrap();
    twin.id = a.id;
    run.send(vec![WatchItem::Change(put_at(&twin, 2, Duration::ZERO))]);
    run.until_counted("the refused twin", |s| &s.malformed_dropped)
        .await;
    assert_eq!(run.held()[0].host, a.host, "the first holder stays");
    assert!(run
        .registry
        .slot("other")
        .is_none_or(|s| s.load().instances().is_empty()));
    // A removal of the twin's key removes nothing.
    run.send(vec![WatchItem::Change(expired_now(&twin, 3))]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(run.held().len(), 1);
}

#[tokio::test]
async fn a_refused_write_is_counted_and_leaves_the_instance() {
    let run = Run::start(SelfPreservation::disabled(), false);
    let a = instance(1);
    run.snapshot(vec![put_at(&a, 1, Duration::ZERO)]);
    run.send(vec![WatchItem::Change(KvChange::Refused {
        key: a.key(),
        revision: 2,
        why: "record without Nats-TTL".into(),
    })]);
    run.until_counted("the refused write", |s| &s.malformed_dropped)
        .await;
    assert_eq!(run.held().len(), 1);
}

#[tokio::test]
async fn one_expiry_among_many_overdue_keys_is_held_and_an_isolated_one_is_not() {
    for others_overdue in [true, false] {
        let run = Run::start(SelfPreservation::default(), false);
        let a = instance(1);
        // Four others, unwritten for 6 s of their 10 s TTL (overdue), or just written.
        let age = if others_overdue {
            Duration::from_secs(6)
        } else {
            Duration::ZERO
        };
        let mut changes = vec![put_at(&a, 1, TTL)];
        changes.extend((2..6).map(|n| put_at(&instance(n), u64::from(n), age)));
        run.snapshot(changes);
        run.until("all five", |v| v.len() == 5).await;
        // `a`'s marker comes on time, one TTL after its last write.
        run.send(vec![WatchItem::Change(expired_now(&a, 10))]);
        if others_overdue {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(run.held().len(), 5, "a burst's expiry was applied");
            assert_eq!(
                run.stats
                    .preserved
                    .load(std::sync::atomic::Ordering::Relaxed),
                1
            );
        } else {
            run.until("a expired", |v| v.len() == 4).await;
        }
    }
}

#[tokio::test]
async fn a_held_expiry_is_applied_after_its_grace_unless_the_store_shows_a_newer_write() {
    for written_since in [false, true] {
        let run = Run::start(
            SelfPreservation {
                grace: Duration::ZERO,
                ..SelfPreservation::default()
            },
            false,
        );
        let a = instance(1);
        if written_since {
            // The owner wrote the key again (revisions 1 to 3 in the store), which this
            // peer's watch has not shown.
            let record = InstanceRecord {
                v: PROTOCOL_VERSION,
                instance: Arc::new(a.clone()),
                ttl_ms: 10_000,
                reason: None,
            };
            for _ in 0..3 {
                run.store
                    .put(&a.key(), &record, TTL, crate::store::WriteCondition::Any)
                    .unwrap();
            }
        }
        // Written 30 s ago with a 10 s TTL: a late marker, held.
        run.snapshot(vec![put_at(&a, 1, Duration::from_secs(30))]);
        run.until("held", |v| v.len() == 1).await;
        run.send(vec![WatchItem::Change(expired_now(&a, 2))]);
        if written_since {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(run.held().len(), 1, "expired though written since");
        } else {
            run.until("expired after the grace", |v| v.is_empty()).await;
        }
    }
}

#[tokio::test]
async fn a_task_dropped_before_it_runs_releases_writers_waiting_on_it() {
    let applied: Arc<Watermark> = Arc::default();
    let task = ViewTask {
        store: Store::Memory(MemoryStore::new()),
        registry: Arc::default(),
        bus: Arc::new(EventBus::default()),
        stats: Arc::default(),
        ready: watch::channel(false).0,
        loaded: watch::channel(0).0,
        peer_id: "test".into(),
        publish_expired: false,
        self_preservation: SelfPreservation::disabled(),
        applied: applied.clone(),
        alerts: Arc::default(),
        closing: watch::channel(false).1,
    };
    drop(task);
    let started = Instant::now();
    assert!(!applied.wait_for(1, WAIT).await);
    assert!(
        started.elapsed() < WAIT / 2,
        "waited {:?}",
        started.elapsed()
    );
}
