//! A peer that falls behind (its process frozen while the mesh changes) catches up when it
//! runs again: every registration reaches it, none is lost, in order per instance.

use std::collections::HashSet;
use std::time::Duration;

use prism_mesh::ServiceInstance;
use prism_tests::{fast_mesh, NatsServer, PeerProcess};

const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_catches_up_without_losing_events() {
    let server = NatsServer::start();
    let url = server.url();
    let mut lagging = PeerProcess::spawn(PEER, &["--url", &url]);
    lagging.expect_line(Duration::from_secs(10), "ready line", |v| {
        v["ready"] == true
    });
    let owner = fast_mesh(&server.url())
        .instance_ttl(std::time::Duration::from_secs(30))
        .heartbeat_interval(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();

    lagging.signal("STOP");
    let mut ids = HashSet::new();
    let mut registrations = Vec::new();
    for n in 0..500u16 {
        let instance = ServiceInstance::builder("lag", "127.0.0.1", 10_000 + n)
            .build()
            .unwrap();
        let registration = owner.register(instance).await.unwrap();
        ids.insert(registration.id().to_string());
        registrations.push(registration);
    }
    // Half of them change status while the peer is frozen, too.
    for registration in registrations.iter().step_by(2) {
        registration
            .set_status(prism_mesh::InstanceStatus::Healthy, Some("up"))
            .await
            .unwrap();
    }
    lagging.signal("CONT");

    let mut registered = HashSet::new();
    while registered.len() < ids.len() {
        // Lines already seen match again: ask for one not collected yet.
        let line = lagging.expect_line(Duration::from_secs(20), "a registration", |v| {
            v["event"] == "registered" && !registered.contains(v["id"].as_str().unwrap_or_default())
        });
        registered.insert(line["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        registered, ids,
        "every registration reached the lagging peer"
    );
    // Status changes arrive too, each after its instance's registration.
    let mut healthy = HashSet::new();
    while healthy.len() < 250 {
        let line = lagging.expect_line(Duration::from_secs(20), "a healthy status", |v| {
            v["event"] == "status" && !healthy.contains(v["id"].as_str().unwrap_or_default())
        });
        let id = line["id"].as_str().unwrap().to_string();
        assert!(registered.contains(&id));
        healthy.insert(id);
    }
    // In order per instance: each status line comes after that instance's registration,
    // and says starting -> healthy.
    let lines = lagging.lines();
    for (at, line) in lines.iter().enumerate() {
        if line["event"] != "status" {
            continue;
        }
        let id = &line["id"];
        let registered_at = lines
            .iter()
            .position(|l| l["event"] == "registered" && l["id"] == *id)
            .unwrap_or_else(|| panic!("status of {id} without a registration: {line}"));
        assert!(
            registered_at < at,
            "the status of {id} (line {at}) came before its registration (line {registered_at})"
        );
        assert_eq!(
            (line["previous"].as_str(), line["current"].as_str()),
            (Some("starting"), Some("healthy")),
            "{line}"
        );
    }
    owner.shutdown().await;
}
