//! No false verdicts through leader changes. A three-node cluster (R3 bucket and event
//! stream, instance TTL at `Timing::cluster_min_ttl`), twenty owners heartbeating every
//! second, a writer registering an instance every second and two watching peers, while the
//! leader of the bucket's stream is lost again and again, alternately to SIGKILL and SIGTERM
//! (and restarted after each). Every instance stays alive throughout, so any `Expired` or
//! `Deregistered` a peer reports, and any `expired` event stored, is a false verdict.
//!
//! `PRISM_FAILOVER_CHANGES` sets the number of leader changes (default 2, as in CI; the
//! full run documented in `docs/benchmarks.md` uses 6).
//!
//! Also: a peer started while the cluster has no leader at all connects once it has one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prism_mesh::protocol::DEFAULT_BUCKET;
use prism_mesh::{
    EventFilter, EventKind, Mesh, MeshEvent, NatsOptions, SelfPreservation, ServiceInstance, Timing,
};
use prism_tests::{wait_view, NatsCluster, PeerProcess, Registrar};

const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");
const HEARTBEAT: Duration = Duration::from_secs(1);
const OWNERS: u16 = 20;
/// Held expiries are applied after this: the test waits it out before it counts.
const GRACE: Duration = Duration::from_secs(5);

fn ttl() -> Duration {
    Timing {
        heartbeat_interval: HEARTBEAT,
        ..Timing::default()
    }
    .cluster_min_ttl()
}

fn options(urls: &str) -> NatsOptions {
    // The default marker TTL (60 s), so a watch interrupted by an election can resume.
    NatsOptions::new(urls)
        .replicas(3)
        .connect_timeout(Duration::from_secs(3))
}

/// A mesh on the cluster; `connect` itself waits for the cluster's JetStream to be ready.
async fn cluster_mesh(urls: &str) -> Mesh {
    Mesh::builder()
        .nats(options(urls))
        .instance_ttl(ttl())
        .heartbeat_interval(HEARTBEAT)
        .self_preservation(SelfPreservation {
            grace: GRACE,
            ..SelfPreservation::default()
        })
        .connect()
        .await
        .expect("connect to the cluster")
}

/// `urls` rotated by `n`, so that meshes attach to different nodes.
fn rotated(urls: &str, n: usize) -> String {
    let mut list: Vec<&str> = urls.split(',').collect();
    let len = list.len();
    list.rotate_left(n % len);
    list.join(",")
}

/// Every `Expired` and `Deregistered` a peer reports.
fn removals(peer: &Mesh) -> Arc<Mutex<Vec<MeshEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let filter = EventFilter::from(EventKind::Expired).kind(EventKind::Deregistered);
    let mut events = peer.subscribe_filtered(filter);
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            record.lock().unwrap().push(event);
        }
    });
    seen
}

fn changes() -> usize {
    std::env::var("PRISM_FAILOVER_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_changes_report_no_live_instance_dead_and_lose_nothing_acknowledged() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let bucket = format!("KV_{DEFAULT_BUCKET}");
    let peers = [
        cluster_mesh(&rotated(&urls, 1)).await,
        cluster_mesh(&rotated(&urls, 2)).await,
    ];
    let seen: Vec<_> = peers.iter().map(removals).collect();

    let mut owners = Vec::new();
    for n in 0..OWNERS {
        let mesh = cluster_mesh(&rotated(&urls, usize::from(n))).await;
        let instance = ServiceInstance::builder("owned", "127.0.0.1", 9000 + n)
            .build()
            .unwrap();
        let registration = mesh.register(instance).await.expect("owner registers");
        owners.push((mesh, registration));
    }
    let writer = Registrar::start(cluster_mesh(&urls).await, "written", Duration::from_secs(1));
    for peer in &peers {
        wait_view(peer, "owned", Duration::from_secs(10), "every owner", |v| {
            v.len() == usize::from(OWNERS)
        })
        .await;
    }

    for change in 0..changes() {
        let victim = cluster.stream_leader(&bucket).await;
        let stopped = Instant::now();
        let how = if change % 2 == 0 {
            cluster.nodes[victim].kill();
            "SIGKILL"
        } else {
            cluster.nodes[victim].terminate();
            "SIGTERM"
        };
        // A process started during the election: it must wait it out, not exit.
        let mut late_peer = PeerProcess::spawn(PEER, &["--url", &urls]);
        let gap = writer.resumed_after(stopped).await;
        let ready = late_peer.expect_line(Duration::from_secs(45), "ready line", |v| {
            v["ready"] == true
        });
        let owned_in_view = ready["view"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["service"] == "owned")
            .count();
        assert_eq!(
            owned_in_view,
            usize::from(OWNERS),
            "a peer started during the election connected with a partial view: {ready}"
        );
        eprintln!(
            "{how} of node {victim} (bucket leader): registrations resumed after {gap:?}, \
             a peer started meanwhile connected after {:?}",
            stopped.elapsed()
        );
        cluster.nodes[victim].restart();
        cluster.until_current(victim, &bucket).await;
    }
    // Held expiries would be applied once the grace ends: let any run out before counting.
    tokio::time::sleep(GRACE + Duration::from_secs(2)).await;
    writer.stop();
    let acknowledged = writer.acknowledged();

    for (n, removed) in seen.iter().enumerate() {
        // A registration whose event could not be stored is rolled back and its caller
        // told so: its removal is no verdict on a live instance.
        let removed: Vec<MeshEvent> = removed
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e.service() == "owned" || acknowledged.iter().any(|r| r.id() == e.instance().id)
            })
            .cloned()
            .collect();
        assert!(
            removed.is_empty(),
            "peer {n} reported live instances gone: {removed:#?}"
        );
        assert_eq!(
            peers[n].discover("owned").len(),
            usize::from(OWNERS),
            "peer {n} lost an owner"
        );
    }
    let history = peers[0].event_history(None).await.unwrap();
    let expired: Vec<_> = history
        .iter()
        .filter(|e| e.event == prism_mesh::protocol::EventName::Expired)
        .collect();
    assert!(
        expired.is_empty(),
        "expired events stored for live instances: {expired:#?}"
    );
    for (n, peer) in peers.iter().enumerate() {
        writer.until_visible_at(peer, Duration::from_secs(10)).await;
        eprintln!("peer {n}: {:?}", peer.stats());
    }
    for registration in &acknowledged {
        assert!(
            history.iter().any(|e| e.instance.id == registration.id()),
            "the registered event of acknowledged {} was lost",
            registration.id()
        );
    }
    for (mesh, _) in owners {
        mesh.shutdown().await;
    }
    for peer in peers {
        peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_started_while_the_cluster_has_no_leader_connects_after_the_election() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let owner = cluster_mesh(&urls).await;
    let registration = owner
        .register(
            ServiceInstance::builder("steady", "127.0.0.1", 7000)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    // Two of three nodes gone: no quorum, so no stream or meta leader at all.
    let owner_node = urls
        .split(',')
        .position(|u| u == cluster.nodes[0].url())
        .unwrap();
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let mut late_peer = PeerProcess::spawn(PEER, &["--url", &urls]);
    // It keeps trying while there is no leader; the quorum comes back well within its
    // 30 s connect deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        late_peer.is_running(),
        "the peer gave up while the cluster had no leader (node {owner_node} kept running)"
    );
    cluster.nodes[1].restart();
    cluster.nodes[2].restart();
    let ready = late_peer.expect_line(Duration::from_secs(40), "ready line", |v| {
        v["ready"] == true
    });
    let id = registration.id().to_string();
    assert!(
        ready["view"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id.as_str()),
        "the view it started with lacks the live instance: {ready}"
    );
    owner.shutdown().await;
}
