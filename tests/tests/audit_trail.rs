//! The audit trail agrees with the live view: the registry rebuilt at any moment equals
//! what a peer held then, across checkpoints, removals from outside the mesh, and the event
//! stream's retention (real nats-server).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use prism_mesh::protocol::EventName;
use prism_mesh::{
    CheckpointPolicy, HistoryQuery, InstanceStatus, Mesh, PastRegistry, Registration,
    ServiceInstance,
};
use prism_tests::{fast_mesh, test_options, wait_view, NatsServer};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// What a comparison looks at: everything of an instance but its timestamps.
type Content = (
    String,
    String,
    u16,
    InstanceStatus,
    Vec<String>,
    u32,
    String,
);

fn content(instance: &ServiceInstance) -> Content {
    (
        instance.service.to_string(),
        instance.host.to_string(),
        instance.port,
        instance.status,
        instance.tags.iter().map(|t| t.to_string()).collect(),
        instance.weight,
        serde_json::to_string(&instance.metadata).unwrap(),
    )
}

/// A peer's whole view, by instance id.
fn view_of(peer: &Mesh) -> BTreeMap<Uuid, Content> {
    peer.services()
        .iter()
        .flat_map(|service| peer.discover(service))
        .map(|instance| (instance.id, content(&instance)))
        .collect()
}

fn past_of(registry: &PastRegistry) -> BTreeMap<Uuid, Content> {
    registry
        .instances()
        .map(|instance| (instance.id, content(instance)))
        .collect()
}

/// Waits until the peer's view and the end of the event stream have both stopped moving:
/// every change made so far is in the view and in the trail.
async fn settled(peer: &Mesh) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = (view_of(peer), peer.history_end().await.unwrap());
    let mut still = 0;
    while still < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mesh never settled"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = (view_of(peer), peer.history_end().await.unwrap());
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

fn instance(service: &str, port: u16) -> ServiceInstance {
    ServiceInstance::builder(service, "127.0.0.1", port)
        .tag(format!("p{port}"))
        .build()
        .unwrap()
}

/// Checkpoints due after a handful of events, looked for often.
fn frequent_checkpoints() -> CheckpointPolicy {
    CheckpointPolicy::default()
        .every_events(12)
        .check_every(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_at_any_moment_equals_what_a_peer_held_then_across_checkpoints() {
    let server = NatsServer::start();
    let url = server.url();
    let peer = fast_mesh(&url)
        .checkpoints(frequent_checkpoints())
        .connect()
        .await
        .unwrap();
    let owner = fast_mesh(&url)
        .checkpoints(CheckpointPolicy::disabled())
        .connect()
        .await
        .unwrap();
    let doomed = fast_mesh(&url)
        .checkpoints(CheckpointPolicy::disabled())
        .connect()
        .await
        .unwrap();
    let mut live: Vec<Registration> = Vec::new();
    let mut recorded = Vec::new();
    let mut port = 9000;
    for round in 0..8 {
        for service in ["alpha", "beta"] {
            port += 1;
            live.push(owner.register(instance(service, port)).await.unwrap());
        }
        let changing = &live[live.len() / 2];
        changing
            .set_status(InstanceStatus::Healthy, Some("warm"))
            .await
            .unwrap();
        if round % 2 == 1 {
            live.remove(0).deregister(Some("scaled in")).await.unwrap();
        }
        if round == 2 {
            for n in 0..3 {
                doomed.register(instance("gamma", 9500 + n)).await.unwrap();
            }
        }
        if round == 4 {
            // Its owner stops heartbeating: the peer sees the keys expire and records it.
            doomed.close_without_deregistering().await;
            wait_view(&peer, "gamma", WAIT, "gamma expired", |v| v.is_empty()).await;
        }
        settled(&peer).await;
        recorded.push((SystemTime::now(), view_of(&peer)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut checkpoints = std::collections::BTreeSet::new();
    for (at, held) in &recorded {
        let past = peer.past_registry(Some(*at)).await.unwrap();
        assert!(past.is_complete());
        assert_eq!(
            &past_of(&past),
            held,
            "the registry at {} is not what the peer held then",
            humantime::format_rfc3339_millis(*at)
        );
        checkpoints.insert(past.checkpoint());
    }
    let now = peer.past_registry(None).await.unwrap();
    assert_eq!(
        past_of(&now),
        view_of(&peer),
        "at now differs from the live view"
    );
    assert!(
        checkpoints.iter().flatten().count() >= 2,
        "the run should span several checkpoints, read from: {checkpoints:?}"
    );
    owner.shutdown().await;
    peer.shutdown().await;
}

/// A raw client's view of the bucket, as `nats kv` uses it.
async fn raw_bucket(url: &str) -> jetstream::kv::Store {
    let client = async_nats::connect(url).await.unwrap();
    jetstream::new(client)
        .get_key_value("prism-instances")
        .await
        .unwrap()
}

async fn last_event_of(peer: &Mesh, id: Uuid) -> prism_mesh::StoredEvent {
    let mut events = peer
        .history(HistoryQuery::new().instance(id))
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event.unwrap());
    }
    last.expect("the instance has events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_kv_delete_is_recorded_as_a_removal_from_outside_and_at_agrees() {
    let server = NatsServer::start();
    let url = server.url();
    let peer = fast_mesh(&url).connect().await.unwrap();
    // An instance whose owner is gone but whose key lives on (long TTL): the delete is
    // all that removes it.
    let owner = fast_mesh(&url)
        .instance_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let orphan = owner.register(instance("orphans", 9100)).await.unwrap();
    let (orphan_id, orphan_key) = (orphan.id(), orphan.instance().key());
    owner.close_without_deregistering().await;
    wait_view(&peer, "orphans", WAIT, "the orphan", |v| v.len() == 1).await;
    let bucket = raw_bucket(&url).await;
    bucket.delete(&orphan_key).await.unwrap();
    wait_view(&peer, "orphans", WAIT, "the orphan gone", |v| v.is_empty()).await;
    settled(&peer).await;
    let last = last_event_of(&peer, orphan_id).await;
    assert_eq!(last.record.event, EventName::Deregistered);
    let reason = last.record.reason.clone().unwrap_or_default();
    assert!(reason.contains("outside the mesh"), "{reason}");
    let now = peer.past_registry(None).await.unwrap();
    assert!(
        now.get(&orphan_id).is_none(),
        "at now still lists the deleted key"
    );
    assert_eq!(past_of(&now), view_of(&peer));

    // With its owner alive, a deleted key comes back at once, and the trail ends with it
    // live, whichever of the removal and the restore was recorded first.
    let keeper = fast_mesh(&url).connect().await.unwrap();
    let kept = keeper.register(instance("kept", 9200)).await.unwrap();
    wait_view(&peer, "kept", WAIT, "the kept instance", |v| v.len() == 1).await;
    bucket.delete(kept.instance().key()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_view(&peer, "kept", WAIT, "the restored instance", |v| {
        v.len() == 1
    })
    .await;
    settled(&peer).await;
    assert_eq!(
        last_event_of(&peer, kept.id()).await.record.event,
        EventName::Registered
    );
    let now = peer.past_registry(None).await.unwrap();
    assert_eq!(
        past_of(&now),
        view_of(&peer),
        "at now differs from the live view"
    );
    keeper.shutdown().await;
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_before_the_retention_window_is_still_in_at_now() {
    let server = NatsServer::start();
    let url = server.url();
    let retention = Duration::from_secs(3);
    let peer = Mesh::builder()
        .nats(test_options(&url).event_limits(retention, -1, -1))
        .instance_ttl(Duration::from_secs(4))
        .heartbeat_interval(Duration::from_secs(1))
        .checkpoints(
            CheckpointPolicy::default()
                .max_age(Duration::from_secs(1))
                .check_every(Duration::from_millis(200)),
        )
        .connect()
        .await
        .unwrap();
    let old = peer.register(instance("elders", 9300)).await.unwrap();
    tokio::time::sleep(retention + Duration::from_secs(2)).await;
    let mut events = peer
        .history(HistoryQuery::new().instance(old.id()))
        .await
        .unwrap();
    assert!(
        events.next().await.is_none(),
        "the registration should have left the event stream by now"
    );
    let now = peer.past_registry(None).await.unwrap();
    assert!(now.checkpoint().is_some(), "no checkpoint was written");
    assert!(
        now.get(&old.id()).is_some(),
        "a live instance older than the retention vanished from the trail"
    );
    assert_eq!(past_of(&now), view_of(&peer));
    peer.shutdown().await;
}
