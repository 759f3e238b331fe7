//! Health checks by owners (HTTP, TCP, custom) against real HTTP servers, verdicts reaching
//! peers, thresholds, hanging checks, on-demand checks, and passive outlier ejection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_mesh::{
    EventKind, HealthCheck, HealthPolicy, InstanceStatus, MemoryStore, Mesh, MeshEvent,
    OutlierDetection, ServiceInstance, Strategy,
};
use prism_tests::{
    fast_mesh, free_port, next_event, wait_event, HttpMode, NatsServer, PeerProcess, TestHttpServer,
};

const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");
const WAIT: Duration = Duration::from_secs(10);

fn fast_policy() -> HealthPolicy {
    HealthPolicy {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 2,
    }
}

async fn status_change(
    events: &mut prism_mesh::EventStream,
) -> (InstanceStatus, InstanceStatus, String) {
    match wait_event(events, WAIT, "status change", |e| {
        e.kind() == EventKind::StatusChanged
    })
    .await
    {
        MeshEvent::StatusChanged {
            previous,
            current,
            reason,
            ..
        } => (previous, current, reason.unwrap_or_default()),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_verdicts_reach_a_peer_in_another_process_with_the_checks_output() {
    let server = NatsServer::start();
    let http = TestHttpServer::start().await;
    let url = server.url();
    let mut observer = PeerProcess::spawn(PEER, &["--url", &url]);
    observer.expect_line(WAIT, "ready line", |v| v["ready"] == true);

    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let me = owner
        .register(
            ServiceInstance::builder("checked", "127.0.0.1", http.port())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let id = me.id().to_string();
    let _monitor = owner
        .monitor_health(&me, HealthCheck::http(), fast_policy())
        .unwrap();

    let healthy =
        observer.expect_line(WAIT, "healthy", |v| v["event"] == "status" && v["id"] == id);
    assert_eq!(
        (healthy["previous"].as_str(), healthy["current"].as_str()),
        (Some("starting"), Some("healthy"))
    );
    let reason = healthy["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 200") && reason.contains("2 in a row"),
        "{reason}"
    );

    http.set(HttpMode::Unhealthy);
    let unhealthy = observer.expect_line(WAIT, "unhealthy", |v| {
        v["event"] == "status" && v["current"] == "unhealthy"
    });
    assert!(
        unhealthy["reason"].as_str().unwrap().contains("HTTP 503"),
        "{unhealthy}"
    );
    assert_eq!(unhealthy["previous"], "healthy");

    let text = owner.render_metrics();
    assert!(
        !text.contains("service_discovery_health_checks_total{result=\"passing\"} 0\n"),
        "{text}"
    );
    assert!(
        !text.contains("service_discovery_health_checks_total{result=\"failing\"} 0\n"),
        "{text}"
    );
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_keep_a_single_blip_from_flapping_the_status() {
    let store = MemoryStore::new();
    let mesh = Mesh::builder().memory_store(store).connect().await.unwrap();
    let http = TestHttpServer::start().await;
    let mut events = mesh.subscribe_filtered(EventKind::StatusChanged.into());
    let me = mesh
        .register(
            ServiceInstance::builder("blippy", "127.0.0.1", http.port())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut monitor = mesh
        .monitor_health(
            &me,
            HealthCheck::http(),
            HealthPolicy {
                fall: 3,
                ..fast_policy()
            },
        )
        .unwrap();
    let (_, current, _) = status_change(&mut events).await;
    assert_eq!(current, InstanceStatus::Healthy);

    // Two failures in a row are below fall = 3: no change.
    http.fail_next(2);
    let hits = http.hits();
    while http.hits() < hits + 6 {
        monitor.next().await;
    }
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            futures::StreamExt::next(&mut events)
        )
        .await
        .is_err(),
        "a blip changed the status"
    );
    assert_eq!(me.instance().status, InstanceStatus::Healthy);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_check_fails_by_timeout_without_stopping_heartbeats() {
    let server = NatsServer::start();
    let http = TestHttpServer::start().await;
    http.set(HttpMode::Hang);
    // TTL 2 s; each check hangs 1.5 s until its timeout, for longer than the TTL overall.
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let mut events = watcher.subscribe_filtered(prism_mesh::EventFilter::service("hanging"));
    let me = owner
        .register(
            ServiceInstance::builder("hanging", "127.0.0.1", http.port())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let policy = HealthPolicy {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1500),
        rise: 1,
        fall: 3,
    };
    let _monitor = owner
        .monitor_health(&me, HealthCheck::http(), policy)
        .unwrap();
    next_event(&mut events, WAIT, "registered").await;
    let event = next_event(&mut events, WAIT, "unhealthy verdict").await;
    match event {
        MeshEvent::StatusChanged {
            current, reason, ..
        } => {
            assert_eq!(current, InstanceStatus::Unhealthy);
            assert!(reason.unwrap().contains("timed out after 1500 ms"));
        }
        other => panic!("expected the unhealthy verdict, got {other:?} (did it expire?)"),
    }
    // 4.5 s of hanging checks: the instance never expired.
    assert_eq!(watcher.discover("hanging").len(), 1);
    owner.shutdown().await;
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_custom_checks_and_a_closed_port() {
    let mesh = Mesh::builder()
        .memory_store(MemoryStore::new())
        .connect()
        .await
        .unwrap();
    let mut events = mesh.subscribe_filtered(EventKind::StatusChanged.into());

    // TCP against a closed port.
    let closed = free_port();
    let tcp = mesh
        .register(
            ServiceInstance::builder("tcp-checked", "127.0.0.1", closed)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let _tcp = mesh
        .monitor_health(&tcp, HealthCheck::tcp(), fast_policy())
        .unwrap();
    let (_, current, reason) = status_change(&mut events).await;
    assert_eq!(current, InstanceStatus::Unhealthy);
    assert!(
        reason.contains("tcp connect") && reason.to_lowercase().contains("refused"),
        "{reason}"
    );

    // A custom check the test flips.
    let ok = Arc::new(AtomicBool::new(true));
    let flag = ok.clone();
    let check = HealthCheck::custom(move || {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if ok {
                Ok("queue depth 3".to_string())
            } else {
                Err("queue depth 9000".to_string())
            }
        }
    });
    let custom = mesh
        .register(
            ServiceInstance::builder("custom-checked", "127.0.0.1", 1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let _custom = mesh.monitor_health(&custom, check, fast_policy()).unwrap();
    let (_, current, reason) = status_change(&mut events).await;
    assert_eq!(current, InstanceStatus::Healthy);
    assert!(reason.contains("queue depth 3"), "{reason}");
    ok.store(false, Ordering::SeqCst);
    let (previous, current, reason) = status_change(&mut events).await;
    assert_eq!(
        (previous, current),
        (InstanceStatus::Healthy, InstanceStatus::Unhealthy)
    );
    assert!(reason.contains("queue depth 9000"), "{reason}");

    // Maintenance set by the owner is never overridden by checks.
    ok.store(true, Ordering::SeqCst);
    custom
        .set_status(InstanceStatus::Maintenance, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(custom.instance().status, InstanceStatus::Maintenance);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_peer_runs_an_instances_check_on_demand() {
    let server = NatsServer::start();
    let http = TestHttpServer::start().await;
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let peer = fast_mesh(&server.url()).connect().await.unwrap();
    let up = owner
        .register(
            ServiceInstance::builder("on-demand", "127.0.0.1", http.port())
                .metadata("health_endpoint", "/ready")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let down = owner
        .register(
            ServiceInstance::builder("on-demand", "127.0.0.1", free_port())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    peer.wait_for_service("on-demand", WAIT).await.unwrap();
    while peer.discover("on-demand").len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = peer
        .health_check_service("on-demand", up.id(), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(result.passing, "{result:?}");
    assert_eq!(result.output, "HTTP 200");
    let result = peer
        .health_check_service("on-demand", down.id(), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(!result.passing);
    assert!(
        result.output.contains("GET http://127.0.0.1:"),
        "{result:?}"
    );
    assert!(result.latency < Duration::from_secs(2));
    let missing = peer
        .health_check_service("on-demand", uuid::Uuid::new_v4(), Duration::from_secs(1))
        .await;
    assert_eq!(
        missing.unwrap_err().kind(),
        prism_mesh::ErrorKind::Unavailable
    );
    owner.shutdown().await;
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outliers_are_ejected_from_picks_with_growing_backoff_and_a_share_limit() {
    let mesh = Mesh::builder()
        .memory_store(MemoryStore::new())
        .connect()
        .await
        .unwrap();
    for port in [9001, 9002] {
        let instance = ServiceInstance::builder("flaky", "127.0.0.1", port)
            .status(InstanceStatus::Healthy)
            .build()
            .unwrap();
        mesh.register(instance).await.unwrap();
    }
    while mesh.discover("flaky").len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let balancer = mesh
        .balancer("flaky")
        .unwrap()
        .strategy(Strategy::RoundRobin)
        .outlier_detection(OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(400),
            max_ejection: Duration::from_secs(5),
            max_ejected_percent: 50,
        })
        .build();
    // Fail every request to 9001; 9002 succeeds.
    let fail = |rounds: usize| {
        for _ in 0..rounds {
            let mut guard = balancer.pick_guarded().unwrap();
            if guard.port == 9001 {
                guard.failed();
            }
        }
    };
    let first_failures = Instant::now();
    fail(6);
    let picks: Vec<u16> = (0..10).map(|_| balancer.pick().unwrap().port).collect();
    assert!(
        picks.iter().all(|p| *p == 9002),
        "ejected instance still picked: {picks:?}"
    );
    let ejected = balancer.candidates();
    assert_eq!(ejected.len(), 1);
    // Back once the ejection ends: never before (a slow machine only makes it later).
    let back = until_candidates(&balancer, 2).await - first_failures;
    assert!(
        back >= Duration::from_millis(400),
        "back after {back:?}, before the 400 ms ejection ended"
    );
    let second_failures = Instant::now();
    fail(6);
    assert_eq!(balancer.candidates().len(), 1, "ejected again");
    let back_again = until_candidates(&balancer, 2).await - second_failures;
    assert!(
        back_again >= Duration::from_millis(800),
        "the second ejection lasted {back_again:?}, not twice the first (800 ms)"
    );
    eprintln!("ejections lasted {back:?}, then {back_again:?}");

    // At most 50% of 2 = 1 instance out at once: failing both ejects only one.
    for _ in 0..10 {
        let mut guard = balancer.pick_guarded().unwrap();
        guard.failed();
    }
    assert_eq!(
        balancer.candidates().len(),
        1,
        "the share limit keeps one instance in"
    );
    assert!(balancer.pick().is_ok());
    // The owner's status is untouched everywhere.
    assert!(mesh
        .discover("flaky")
        .iter()
        .all(|i| i.status == InstanceStatus::Healthy));
    mesh.shutdown().await;
}

/// Polls until `balancer` has `count` candidates (10 s at most); returns when.
async fn until_candidates(balancer: &prism_mesh::Balancer, count: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    while balancer.candidates().len() != count {
        assert!(
            Instant::now() < deadline,
            "never {count} candidates within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Instant::now()
}
