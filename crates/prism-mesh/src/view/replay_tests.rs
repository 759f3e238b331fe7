//! The view task over replayed watch items: snapshots, replaced logs, removals.

use super::*;
use crate::instance::ServiceInstance;
use crate::store::{KvChange, RemovalCause};
use uuid::Uuid;

/// Instance `n` of service `svc`, on 10.0.0.n port n.
pub(super) fn instance(n: u8) -> ServiceInstance {
    ServiceInstance::builder("svc", format!("10.0.0.{n}"), u16::from(n))
        .build()
        .unwrap()
}

fn put(instance: &ServiceInstance, revision: u64) -> KvChange {
    super::task_tests::put_at(instance, revision, Duration::ZERO)
}

/// Runs a view task over `items` and returns the ids it ends up holding.
async fn view_after(items: Vec<WatchItem>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = instances_after(items).await.iter().map(|i| i.id).collect();
    ids.sort();
    ids
}

/// Runs a view task over `items` and returns the instances of `svc` it ends up holding.
async fn instances_after(items: Vec<WatchItem>) -> Vec<Arc<ServiceInstance>> {
    ViewTask::run_over(items, Arc::new(EventBus::default())).await
}

#[tokio::test]
async fn after_the_log_is_replaced_writes_at_lower_revisions_apply() {
    let a = instance(1);
    let mut healthy = a.clone();
    healthy.status = crate::InstanceStatus::Healthy;
    let held = instances_after(vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 500)]),
        WatchItem::SnapshotEnd,
        // The bucket made anew: its revisions start again.
        WatchItem::LogReplaced,
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1)]),
        WatchItem::SnapshotEnd,
        WatchItem::Change(put(&healthy, 2)),
    ])
    .await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].status, crate::InstanceStatus::Healthy);
}

#[tokio::test]
async fn a_snapshot_abandoned_half_way_does_not_keep_what_only_it_named() {
    let a = instance(1);
    let b = instance(2);
    let held = view_after(vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1), put(&b, 2)]),
        WatchItem::SnapshotEnd,
        // A resync that fails after naming `a`, then a full one that names only `b`.
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1)]),
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&b, 2)]),
        WatchItem::SnapshotEnd,
    ])
    .await;
    assert_eq!(held, vec![b.id]);
}

fn deregistered(instance: &ServiceInstance, revision: u64) -> KvChange {
    KvChange::Removed {
        key: instance.key(),
        cause: RemovalCause::Deregistered { reason: None },
        revision,
        at: SystemTime::now(),
    }
}

#[tokio::test]
async fn a_key_removed_while_the_snapshot_streams_in_is_gone_when_it_ends() {
    let a = instance(1);
    let b = instance(2);
    // The snapshot names `a`, then `a` is deregistered before it ends.
    let held = view_after(vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1), put(&b, 2)]),
        WatchItem::SnapshotPart(vec![deregistered(&a, 3)]),
        WatchItem::SnapshotEnd,
    ])
    .await;
    assert_eq!(held, vec![b.id]);
}

#[tokio::test]
async fn a_refused_write_after_a_removal_in_one_snapshot_does_not_bring_the_key_back() {
    let a = instance(1);
    let refused = KvChange::Refused {
        key: a.key(),
        revision: 3,
        why: "record without Nats-TTL".into(),
    };
    let held = view_after(vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1)]),
        WatchItem::SnapshotPart(vec![deregistered(&a, 2), refused]),
        WatchItem::SnapshotEnd,
    ])
    .await;
    assert!(held.is_empty(), "still held {held:?}");
}

#[tokio::test]
async fn a_key_registered_again_after_its_removal_in_one_snapshot_stays() {
    let a = instance(1);
    let held = view_after(vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1), deregistered(&a, 2), put(&a, 3)]),
        WatchItem::SnapshotEnd,
    ])
    .await;
    assert_eq!(held, vec![a.id]);
}

#[tokio::test]
async fn a_snapshot_with_no_parts_empties_the_view() {
    let a = instance(1);
    let held = view_after(vec![
        WatchItem::SnapshotBegin,
        WatchItem::SnapshotPart(vec![put(&a, 1)]),
        WatchItem::SnapshotEnd,
        WatchItem::SnapshotEnd,
    ])
    .await;
    assert!(held.is_empty(), "still held {held:?}");
}
