//! The in-process backend has the same semantics as NATS: events, statuses, TTL expiry,
//! late peers. No server needed.

use std::time::Duration;

use prism_mesh::{
    ErrorKind, EventKind, InstanceStatus, MemoryStore, Mesh, MeshEvent, ServiceInstance,
};
use prism_tests::{next_event, wait_event};

const WAIT: Duration = Duration::from_secs(5);

async fn peer(store: &MemoryStore) -> Mesh {
    Mesh::builder()
        .memory_store(store.clone())
        .instance_ttl(Duration::from_secs(1))
        .heartbeat_interval(Duration::from_millis(200))
        .tombstone_ttl(Duration::from_secs(1))
        .connect()
        .await
        .expect("memory mesh")
}

fn instance(service: &str) -> ServiceInstance {
    ServiceInstance::builder(service, "127.0.0.1", 9000)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_one_store_see_registration_status_change_and_deregistration_in_order() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    let watcher = peer(&store).await;
    let mut events = watcher.subscribe();

    let me = owner.register(instance("orders")).await.unwrap();
    me.set_status(InstanceStatus::Healthy, Some("warmed up"))
        .await
        .unwrap();
    me.update(|i| {
        i.metadata.insert("version", "1.2.3");
    })
    .await
    .unwrap();
    me.deregister(Some("scale down")).await.unwrap();

    assert!(matches!(
        next_event(&mut events, WAIT, "registered").await,
        MeshEvent::Registered { .. }
    ));
    match next_event(&mut events, WAIT, "status").await {
        MeshEvent::StatusChanged {
            previous,
            current,
            reason,
            ..
        } => {
            assert_eq!(previous, InstanceStatus::Starting);
            assert_eq!(current, InstanceStatus::Healthy);
            assert_eq!(reason.as_deref(), Some("warmed up"));
        }
        other => panic!("expected StatusChanged, got {other:?}"),
    }
    match next_event(&mut events, WAIT, "updated").await {
        MeshEvent::Updated {
            previous, instance, ..
        } => {
            assert!(previous.metadata.is_empty());
            assert_eq!(instance.metadata["version"], "1.2.3");
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    match next_event(&mut events, WAIT, "deregistered").await {
        MeshEvent::Deregistered { reason, .. } => assert_eq!(reason.as_deref(), Some("scale down")),
        other => panic!("expected Deregistered, got {other:?}"),
    }
    assert!(watcher.discover("orders").is_empty());
    let audit: Vec<_> = store.events().iter().map(|e| e.event.as_str()).collect();
    assert_eq!(audit, ["registered", "status", "updated", "deregistered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_stops_heartbeating_expires_at_its_peers() {
    let store = MemoryStore::new();
    let watcher = peer(&store).await;
    let mut expired = watcher.subscribe_filtered(EventKind::Expired.into());
    {
        let owner = peer(&store).await;
        owner.register(instance("billing")).await.unwrap();
        // Dropping the last handle without shutdown stops the heartbeats, like a crash.
    }
    let started = tokio::time::Instant::now();
    let event = next_event(&mut expired, WAIT, "expired").await;
    assert_eq!(event.service(), "billing");
    // TTL 1 s, plus the 500 ms self-preservation settle, plus a generous margin.
    assert!(
        started.elapsed() <= Duration::from_millis(2500),
        "expired after {:?}",
        started.elapsed()
    );
    assert!(watcher.discover("billing").is_empty());
    assert_eq!(watcher.stats().expiries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_registration_expires_at_its_peers_while_its_owner_lives_on() {
    let store = MemoryStore::new();
    let watcher = peer(&store).await;
    let mut expired = watcher.subscribe_filtered(EventKind::Expired.into());
    let owner = peer(&store).await;
    let kept = owner.register(instance("kept")).await.unwrap();
    let dropped = owner.register(instance("dropped")).await.unwrap();
    dropped.abandon().await;
    assert!(!dropped.is_live());
    assert_eq!(
        owner.registrations().len(),
        1,
        "an abandoned one is no longer listed"
    );
    let event = next_event(&mut expired, WAIT, "expired").await;
    assert_eq!(event.service(), "dropped");
    assert!(watcher.discover("dropped").is_empty());
    // The owner's other registration is still heartbeated, past several TTLs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(watcher.discover("kept").len(), 1);
    assert!(kept.is_live());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_instance_alive_beyond_its_ttl_without_events() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    let watcher = peer(&store).await;
    let mut events = watcher.subscribe();
    owner.register(instance("cache")).await.unwrap();
    next_event(&mut events, WAIT, "registered").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(watcher.discover("cache").len(), 1);
    assert!(
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut events)).is_none(),
        "heartbeats must not produce events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scheduler_keeps_thousands_of_instances_alive_and_stops_at_deregistration() {
    // More owners than heartbeats in flight at once, heartbeating five times per TTL.
    const OWNED: usize = 2_000;
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    // Without self-preservation, which would hold a mass expiry back from the view.
    let watcher = Mesh::builder()
        .memory_store(store.clone())
        .self_preservation(prism_mesh::SelfPreservation::disabled())
        .connect()
        .await
        .unwrap();
    let registrations =
        futures::future::try_join_all((0..OWNED).map(|_| owner.register(instance("fleet"))))
            .await
            .unwrap();
    let gone = registrations[0].clone();
    gone.deregister(Some("done")).await.unwrap();
    assert!(!gone.is_live());
    // The watcher's own view may still be applying the registrations.
    let started = std::time::Instant::now();
    while watcher.discover("fleet").len() != OWNED - 1 {
        assert!(started.elapsed() < WAIT, "the watcher never saw the fleet");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = watcher.subscribe();

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(watcher.discover("fleet").len(), OWNED - 1);
    assert_eq!(watcher.stats().expiries, 0, "no live instance may expire");
    if let Some(event) = futures::FutureExt::now_or_never(futures::StreamExt::next(&mut events)) {
        panic!("heartbeats must not produce events, nor resurrect the deregistered instance: {event:?}");
    }
    assert_eq!(
        gone.set_status(InstanceStatus::Healthy, None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotRegistered
    );
}

/// One thread: while the test blocks it, the heartbeat scheduler cannot run.
#[tokio::test(flavor = "current_thread")]
async fn heartbeats_held_up_by_a_blocked_runtime_are_counted_as_late() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    owner.register(instance("stalled")).await.unwrap();
    // Due every 200 ms; late means started more than 100 ms after that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = owner.stats().heartbeats_late;
    // A blocking call on the runtime's only thread: the next heartbeat starts ~500 ms late.
    std::thread::sleep(Duration::from_millis(600));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        owner.stats().heartbeats_late > before,
        "{:?}",
        owner.stats()
    );
    // Still within the 1 s TTL: the late heartbeat kept the instance.
    assert_eq!(owner.discover("stalled").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_peer_sees_the_current_view_and_no_stale_instances() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    let keep = owner.register(instance("search")).await.unwrap();
    let gone = owner.register(instance("search")).await.unwrap();
    gone.deregister(None).await.unwrap();
    keep.set_status(InstanceStatus::Healthy, None)
        .await
        .unwrap();

    let late = peer(&store).await;
    let view = late.discover("search");
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].id, keep.id());
    assert_eq!(view[0].status, InstanceStatus::Healthy);
    assert_eq!(late.services(), ["search"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_the_same_instance_id_twice_is_a_conflict() {
    let store = MemoryStore::new();
    let mesh = peer(&store).await;
    let first = instance("dup");
    mesh.register(first.clone()).await.unwrap();
    let err = mesh.register(first).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_get_typed_events_by_kind() {
    let store = MemoryStore::new();
    let mesh = peer(&store).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    mesh.on(EventKind::StatusChanged, move |event| {
        let tx = tx.clone();
        async move {
            if let MeshEvent::StatusChanged {
                previous, current, ..
            } = event
            {
                let _ = tx.send((previous, current));
            }
        }
    });
    let me = mesh.register(instance("gw")).await.unwrap();
    me.set_status(InstanceStatus::Healthy, None).await.unwrap();
    me.set_status(InstanceStatus::Maintenance, None)
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, (InstanceStatus::Starting, InstanceStatus::Healthy));
    assert_eq!(
        second,
        (InstanceStatus::Healthy, InstanceStatus::Maintenance)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_one_registration_are_all_kept() {
    let store = MemoryStore::new();
    let mesh = peer(&store).await;
    let me = mesh.register(instance("kv")).await.unwrap();
    let updates = (0..50).map(|n| {
        let me = me.clone();
        async move {
            me.update(move |i| {
                i.metadata.insert(format!("k{n}"), n);
            })
            .await
        }
    });
    for result in futures::future::join_all(updates).await {
        result.unwrap();
    }
    assert_eq!(me.instance().metadata.len(), 50);
    let mut events = mesh.subscribe();
    me.set_status(InstanceStatus::Healthy, None).await.unwrap();
    wait_event(&mut events, WAIT, "status", |e| {
        e.kind() == EventKind::StatusChanged
    })
    .await;
    assert_eq!(mesh.discover("kv")[0].metadata.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deregisters_owned_instances() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    let watcher = peer(&store).await;
    owner.register(instance("a")).await.unwrap();
    owner.register(instance("b")).await.unwrap();
    let mut events = watcher.subscribe_filtered(EventKind::Deregistered.into());
    owner.shutdown().await;
    for _ in 0..2 {
        match next_event(&mut events, WAIT, "deregistered").await {
            MeshEvent::Deregistered { reason, .. } => {
                assert_eq!(reason.as_deref(), Some("shutdown"))
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(watcher.services().is_empty());
    let err = owner.register(instance("c")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

/// Two runtimes, as in a test suite: the one that first used the store ends while the
/// other waits for an expiry with nothing written meanwhile.
#[test]
fn keys_expire_after_the_runtime_that_first_used_the_store_has_ended() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let store = MemoryStore::new();
    let first = runtime();
    let early = first.block_on(peer(&store));
    let second = runtime();
    let (owner, watcher) = second.block_on(async {
        let owner = peer(&store).await;
        let watcher = peer(&store).await;
        owner.register(instance("orphan")).await.unwrap();
        (owner, watcher)
    });
    drop(early);
    drop(first);
    second.block_on(async {
        let mut events = watcher.subscribe_filtered(EventKind::Expired.into());
        owner.close_without_deregistering().await;
        next_event(&mut events, WAIT, "expired").await;
    });
}

#[tokio::test]
async fn a_deregistration_reason_reaches_peers_cleaned_as_over_nats() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    let watcher = peer(&store).await;
    let mut events = watcher.subscribe_filtered(EventKind::Deregistered.into());
    let me = owner.register(instance("reasons")).await.unwrap();
    me.deregister(Some("line one\nline two")).await.unwrap();
    match next_event(&mut events, WAIT, "deregistered").await {
        MeshEvent::Deregistered { reason, .. } => {
            assert_eq!(reason.as_deref(), Some("line one line two"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_closed_mesh_ends_its_event_streams_and_stops_following_the_store() {
    let store = MemoryStore::new();
    let owner = peer(&store).await;
    let watcher = peer(&store).await;
    let mut events = watcher.subscribe();
    watcher.shutdown().await;
    let ended = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut events)).await;
    assert!(
        matches!(ended, Ok(None)),
        "the event stream of a closed mesh must end, got {ended:?}"
    );
    let late = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut watcher.subscribe())).await;
    assert!(
        matches!(late, Ok(None)),
        "a stream subscribed after close ends at once, got {late:?}"
    );
    owner.register(instance("after")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        watcher.discover("after").is_empty(),
        "a closed mesh's view no longer follows the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_racing_registrations_deregisters_every_instance_it_accepted() {
    let store = MemoryStore::new();
    // A TTL far beyond the test: only deregistration can empty the view.
    let owner = Mesh::builder()
        .memory_store(store.clone())
        .instance_ttl(Duration::from_secs(600))
        .heartbeat_interval(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let watcher = peer(&store).await;
    let registering = tokio::spawn({
        let owner = owner.clone();
        async move {
            futures::future::join_all((0..500).map(|_| owner.register(instance("racing")))).await
        }
    });
    // Let some registrations land, then shut down while the rest are in flight.
    while owner.registrations().len() < 50 {
        tokio::task::yield_now().await;
    }
    owner.shutdown().await;
    let results = registering.await.unwrap();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.kind(), ErrorKind::Closed, "{refused}");
    }
    assert!(
        accepted >= 50,
        "only {accepted} registrations were accepted"
    );

    let started = std::time::Instant::now();
    while !watcher.discover("racing").is_empty() {
        assert!(
            started.elapsed() < WAIT,
            "{} instances outlived the shutdown ({accepted} accepted)",
            watcher.discover("racing").len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_memory_history_filters_by_service_and_follows_new_events() {
    let store = MemoryStore::new();
    let mesh = peer(&store).await;
    mesh.register(instance("orders")).await.unwrap();
    mesh.register(instance("billing")).await.unwrap();
    let query = prism_mesh::HistoryQuery::new()
        .service("orders")
        .follow(true);
    let mut events = mesh.history(query).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.record.instance.service, "orders");
    let later = mesh.register(instance("billing")).await.unwrap();
    let later = mesh
        .register(instance("orders"))
        .await
        .map(|_| later)
        .unwrap();
    let next = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the followed history goes on")
        .unwrap()
        .unwrap();
    assert_eq!(
        next.record.instance.service, "orders",
        "billing is filtered out"
    );
    assert_ne!(next.record.instance.id, later.id());
    assert!(next.sequence > first.sequence);
    assert_eq!(mesh.event_history(None).await.unwrap().len(), 4);
    mesh.shutdown().await;
}
