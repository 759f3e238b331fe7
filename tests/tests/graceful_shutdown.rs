//! Graceful shutdown on a real SIGTERM: maintenance first, a drain period, then
//! deregistration, in that order at a peer in another process.

use std::time::{Duration, Instant};

use prism_mesh::{EventKind, InstanceStatus, MeshEvent};
use prism_tests::{fast_mesh, wait_event, NatsServer, PeerProcess};

const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_announces_maintenance_drains_then_deregisters_and_exits_cleanly() {
    let server = NatsServer::start();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let mut events = watcher.subscribe_filtered(prism_mesh::EventFilter::service("graceful"));
    let url = server.url();
    let mut owner = PeerProcess::spawn(
        PEER,
        &[
            "--url",
            &url,
            "--service",
            "graceful",
            "--graceful-drain",
            "1500ms",
        ],
    );
    let ready = owner.expect_line(WAIT, "ready line", |v| v["ready"] == true);
    let id = ready["id"].as_str().unwrap().to_string();
    // At once: a service listens for SIGTERM before it says it is ready, so even this
    // early a SIGTERM is a clean departure, not a crash that peers see as an expiry.
    owner.signal("TERM");
    wait_event(&mut events, WAIT, "registered", |e| {
        e.kind() == EventKind::Registered && e.instance().id.to_string() == id
    })
    .await;
    let maintenance = wait_event(&mut events, WAIT, "maintenance", |e| {
        e.instance().id.to_string() == id
    })
    .await;
    let announced = Instant::now();
    match maintenance {
        MeshEvent::StatusChanged {
            previous,
            current,
            reason,
            ..
        } => {
            assert_eq!(
                (previous, current),
                (InstanceStatus::Starting, InstanceStatus::Maintenance)
            );
            assert_eq!(reason.as_deref(), Some("shutting down"));
        }
        other => panic!("first event after SIGTERM was {other:?}, not maintenance"),
    }
    // Peers stop picking it at once.
    let err = watcher.pick("graceful").unwrap_err();
    assert_eq!(err.kind(), prism_mesh::ErrorKind::Unavailable, "{err}");

    let gone = wait_event(&mut events, WAIT, "deregistered", |e| {
        e.instance().id.to_string() == id
    })
    .await;
    match gone {
        MeshEvent::Deregistered { reason, .. } => assert_eq!(reason.as_deref(), Some("shutdown")),
        other => panic!("after maintenance came {other:?}, not deregistration"),
    }
    let drained = announced.elapsed();
    assert!(
        drained >= Duration::from_millis(1200),
        "deregistered after only {drained:?}"
    );
    owner.expect_line(WAIT, "done line", |v| {
        v["done"] == "signal" && v["signal"] == "SIGTERM"
    });
    assert_eq!(
        owner.wait(WAIT),
        Some(0),
        "the process exits 0 after a graceful shutdown"
    );
    assert!(watcher.discover("graceful").is_empty());
    watcher.shutdown().await;
}
