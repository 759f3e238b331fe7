//! A three-node JetStream cluster (bucket and event stream with three replicas) losing a
//! server to `kill -9`, then another after the first is back, then a third to SIGTERM,
//! while an owner keeps registering: nothing acknowledged is lost and every peer's view
//! converges. Each victim is the event stream's leader at that moment, the worst case.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_mesh::protocol::DEFAULT_EVENT_STREAM;
use prism_mesh::{Mesh, Registration, ServiceInstance};
use prism_tests::{test_options, wait_view, NatsCluster};

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

/// Registers an instance every 50 ms until told to stop; keeps what was acknowledged and
/// when each attempt ended.
struct Registrar {
    acknowledged: Arc<Mutex<Vec<Registration>>>,
    attempts: Arc<Mutex<Vec<(Instant, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Registrar {
    fn start(mesh: Mesh) -> Registrar {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (acks, tries) = (acknowledged.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            for n in 0u16.. {
                let instance = ServiceInstance::builder("survivor", "127.0.0.1", 20_000 + n)
                    .build()
                    .unwrap();
                let result =
                    tokio::time::timeout(Duration::from_secs(3), mesh.register(instance)).await;
                let ok = matches!(result, Ok(Ok(_)));
                if let Ok(Ok(registration)) = result {
                    acks.lock().unwrap().push(registration);
                }
                tries.lock().unwrap().push((Instant::now(), ok));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Registrar {
            acknowledged,
            attempts,
            task,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until `count` registrations were acknowledged in all (at most 30 s).
    async fn until_acknowledged(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acknowledged() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} registrations acknowledged after 30 s",
                self.acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Time from `since` to the first acknowledged registration after it.
    async fn resumed_after(&self, since: Instant) -> Duration {
        let deadline = since + Duration::from_secs(30);
        loop {
            let first = self
                .attempts
                .lock()
                .unwrap()
                .iter()
                .find(|(at, ok)| *ok && *at > since)
                .map(|(at, _)| *at);
            if let Some(at) = first {
                return at - since;
            }
            assert!(
                Instant::now() < deadline,
                "registrations never resumed after the kill"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Index in `cluster.nodes` of the server leading the event stream.
async fn event_stream_leader(cluster: &NatsCluster) -> usize {
    let running: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .map(|node| node.url())
        .collect();
    let client = async_nats::connect(running.as_slice()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = match js.get_stream(DEFAULT_EVENT_STREAM).await {
            Ok(mut stream) => stream
                .info()
                .await
                .ok()
                .and_then(|info| info.cluster.as_ref().and_then(|c| c.leader.clone())),
            Err(_) => None,
        };
        let node = leader.and_then(|name| {
            cluster
                .nodes
                .iter()
                .position(|node| node.is_running() && node.server_name() == name)
        });
        if let Some(node) = node {
            return node;
        }
        assert!(Instant::now() < deadline, "the event stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    let registrar = Registrar::start(owner.clone());
    registrar.until_acknowledged(20).await;

    let mut gaps = Vec::new();
    for stop in [Stop::Kill9, Stop::Kill9, Stop::Term] {
        let victim = event_stream_leader(&cluster).await;
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
            .until_acknowledged(registrar.acknowledged() + 10)
            .await;
        cluster.nodes[victim].restart();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    registrar.task.abort();
    let acknowledged: Vec<Registration> = registrar.acknowledged.lock().unwrap().clone();

    // Every acknowledged registration is in both views, within the convergence bound.
    for (name, mesh) in [("owner", &owner), ("peer", &peer)] {
        let started = Instant::now();
        wait_view(
            mesh,
            "survivor",
            CONVERGE,
            "every acknowledged registration",
            |view| {
                acknowledged
                    .iter()
                    .all(|r| view.iter().any(|i| i.id == r.id()))
            },
        )
        .await;
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
