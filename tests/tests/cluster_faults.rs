//! A three-node JetStream cluster (bucket and event stream with three replicas) losing a
//! server to `kill -9`, then another after the first is back, then a third to SIGTERM,
//! while an owner keeps registering: nothing acknowledged is lost and every peer's view
//! converges. Each victim is the event stream's leader at that moment, the worst case.

use std::time::{Duration, Instant};

use prism_mesh::protocol::DEFAULT_EVENT_STREAM;
use prism_mesh::Mesh;
use prism_tests::{test_options, NatsCluster, Registrar};

const CONVERGE: Duration = Duration::from_secs(5);

async fn cluster_mesh(urls: &str) -> Mesh {
    // The first connect waits for the cluster's JetStream meta leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = Mesh::builder()
            .nats(
                test_options(urls)
                    .replicas(3)
                    .request_timeout(Duration::from_secs(2)),
            )
            .instance_ttl(Duration::from_secs(10))
            .heartbeat_interval(Duration::from_secs(1))
            .connect()
            .await;
        match attempt {
            Ok(mesh) => return mesh,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cluster never became ready: {e}"),
        }
    }
}

enum Stop {
    Kill9,
    Term,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_server_then_another_loses_nothing_acknowledged_and_views_converge() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let owner = cluster_mesh(&urls).await;
    // The peer lists the servers in another order, so it is attached elsewhere.
    let reversed: Vec<&str> = urls.split(',').rev().collect();
    let peer = cluster_mesh(&reversed.join(",")).await;
    let registrar = Registrar::start(owner.clone(), "survivor", Duration::from_millis(50));
    registrar.until_acknowledged(20).await;

    let mut gaps = Vec::new();
    for stop in [Stop::Kill9, Stop::Kill9, Stop::Term] {
        let victim = cluster.stream_leader(DEFAULT_EVENT_STREAM).await;
        let stopped = Instant::now();
        let how = match stop {
            Stop::Kill9 => {
                cluster.nodes[victim].kill();
                "kill -9"
            }
            Stop::Term => {
                cluster.nodes[victim].terminate();
                "SIGTERM"
            }
        };
        let gap = registrar.resumed_after(stopped).await;
        eprintln!(
            "{how} of node {victim} (event stream leader): registrations resumed after {gap:?}"
        );
        gaps.push(gap);
        // Keep registering for a while with the node down, then bring it back.
        registrar
            .until_acknowledged(registrar.acknowledged().len() + 10)
            .await;
        cluster.nodes[victim].restart();
        cluster.until_current(victim, DEFAULT_EVENT_STREAM).await;
    }
    registrar.stop();
    let acknowledged = registrar.acknowledged();

    // Every acknowledged registration is in both views, within the convergence bound.
    for (name, mesh) in [("owner", &owner), ("peer", &peer)] {
        let started = Instant::now();
        registrar.until_visible_at(mesh, CONVERGE).await;
        eprintln!(
            "{name} converged {:?} after the last restart settled",
            started.elapsed()
        );
    }
    // Each acknowledged registration wrote its `registered` event: none lost either.
    let history = peer.event_history(None).await.unwrap();
    for registration in &acknowledged {
        assert!(
            history.iter().any(|e| e.instance.id == registration.id()),
            "the registered event of {} was lost",
            registration.id()
        );
    }
    // A follower waits an election timeout (4 to 9 s, fixed in nats-server's raft.go) before
    // replacing a leader lost to SIGKILL; the measured gaps are printed above and recorded
    // in docs/benchmarks.md. Timing targets live there, not here: this bound only catches
    // registrations that never come back.
    for gap in gaps {
        assert!(
            gap < Duration::from_secs(15),
            "registrations took {gap:?} to resume"
        );
    }
    owner.shutdown().await;
    peer.shutdown().await;
}
