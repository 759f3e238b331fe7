//! Self-preservation. Many keys expiring at once (owners frozen, or a server that was down
//! longer than the TTL sweeping everything when it returns) must not empty the peers'
//! views: instances whose owners come back and re-assert stay; truly dead ones expire
//! after the grace period. A single frozen owner still expires normally.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use prism_mesh::{EventKind, Mesh, SelfPreservation};
use prism_tests::{next_event, test_options, wait_view, NatsServer, PeerProcess};

const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");
const GRACE: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(10);

fn peer_mesh(url: &str, rule: SelfPreservation) -> prism_mesh::MeshBuilder {
    Mesh::builder()
        .nats(test_options(url))
        .instance_ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .self_preservation(rule)
}

/// An owner process with `count` instances of `service` (TTL 2 s, heartbeat 500 ms).
fn owner(url: &str, service: &str, port: &str, count: &str) -> (PeerProcess, HashSet<String>) {
    let mut process = PeerProcess::spawn(
        PEER,
        &[
            "--url",
            url,
            "--service",
            service,
            "--port",
            port,
            "--count",
            count,
        ],
    );
    let ready = process.expect_line(WAIT, "ready line", |v| v["ready"] == true);
    let ids = ready["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (process, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_expiry_keeps_owners_that_come_back_and_drops_the_dead_after_the_grace() {
    let server = NatsServer::start();
    let url = server.url();
    let peer = peer_mesh(
        &url,
        SelfPreservation {
            grace: GRACE,
            ..SelfPreservation::default()
        },
    )
    .connect()
    .await
    .unwrap();
    let mut expiries = peer.subscribe_filtered(EventKind::Expired.into());
    let (frozen, frozen_ids) = owner(&url, "preserved", "9000", "10");
    let (mut dead, dead_ids) = owner(&url, "preserved", "9100", "10");
    wait_view(&peer, "preserved", WAIT, "20 instances", |v| v.len() == 20).await;

    // Both owners stop heartbeating at once; one is only frozen, the other is gone.
    frozen.signal("STOP");
    dead.kill9();
    let stopped = Instant::now();
    // Every key expires (TTL 2 s). The peer keeps all 20 while the grace runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        peer.discover("preserved").len(),
        20,
        "the view emptied on a mass expiry"
    );
    assert!(
        peer.stats().preservation_activations >= 1,
        "{:?}",
        peer.stats()
    );
    assert!(peer.stats().preserved > 0);
    frozen.signal("CONT");

    // The dead owner's ten expire when the grace ends; the frozen owner's come back.
    let mut expired = HashSet::new();
    while expired.len() < dead_ids.len() {
        let event = next_event(&mut expiries, GRACE + WAIT, "a dead instance's expiry").await;
        // Each one as it comes: not one may expire before the grace ended.
        assert!(
            stopped.elapsed() >= GRACE,
            "{} expired {:?} after the owners stopped, before the grace ended",
            event.instance().id,
            stopped.elapsed()
        );
        expired.insert(event.instance().id.to_string());
    }
    assert_eq!(
        expired, dead_ids,
        "exactly the dead owner's instances expired"
    );
    wait_view(&peer, "preserved", WAIT, "the frozen owner's ten", |v| {
        v.len() == 10 && v.iter().all(|i| frozen_ids.contains(&i.id.to_string()))
    })
    .await;
    assert!(
        tokio::time::timeout(
            Duration::from_secs(1),
            futures::StreamExt::next(&mut expiries)
        )
        .await
        .is_err(),
        "an instance whose owner came back expired"
    );
    assert_eq!(peer.stats().preserved, 0);
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_rule_the_same_freeze_expires_everything_at_once() {
    let server = NatsServer::start();
    let url = server.url();
    let peer = peer_mesh(&url, SelfPreservation::disabled())
        .connect()
        .await
        .unwrap();
    let mut expiries = peer.subscribe_filtered(EventKind::Expired.into());
    let (frozen, _) = owner(&url, "unprotected", "9200", "10");
    wait_view(&peer, "unprotected", WAIT, "10 instances", |v| {
        v.len() == 10
    })
    .await;
    frozen.signal("STOP");
    for _ in 0..10 {
        next_event(&mut expiries, WAIT, "an expiry").await;
    }
    assert!(peer.discover("unprotected").is_empty());
    frozen.signal("CONT");
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_frozen_owner_expires_everywhere_and_reregisters_at_its_next_heartbeat_after_sigcont(
) {
    let server = NatsServer::start();
    let url = server.url();
    let peer = peer_mesh(&url, SelfPreservation::default())
        .connect()
        .await
        .unwrap();
    let mut events = peer.subscribe();
    let (frozen, ids) = owner(&url, "frozen", "9300", "1");
    let id = ids.into_iter().next().unwrap();
    prism_tests::wait_event(&mut events, WAIT, "registered", |e| {
        e.kind() == EventKind::Registered
    })
    .await;
    frozen.signal("STOP");
    let expired = prism_tests::wait_event(&mut events, WAIT, "expired", |e| {
        e.kind() == EventKind::Expired
    })
    .await;
    assert_eq!(expired.instance().id.to_string(), id);
    let resumed = Instant::now();
    frozen.signal("CONT");
    let back = prism_tests::wait_event(&mut events, WAIT, "registered again", |e| {
        e.kind() == EventKind::Registered
    })
    .await;
    assert_eq!(back.instance().id.to_string(), id);
    // Its next heartbeat (every 500 ms) conflicts and re-asserts: printed, and bounded well
    // below another TTL plus grace for loaded machines.
    eprintln!("re-registered {:?} after SIGCONT", resumed.elapsed());
    assert!(
        resumed.elapsed() < Duration::from_secs(4),
        "came back after {:?}",
        resumed.elapsed()
    );
    peer.shutdown().await;
}
