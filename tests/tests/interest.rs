//! Interest-scoped views against a real nats-server: a peer that follows some services
//! gets their registrations, changes and expiries, and the server sends it nothing of the
//! others; following a service later loads its instances before the first answer.

use std::time::Duration;

use prism_mesh::{EventKind, InstanceStatus, Mesh, MeshEvent, ServiceInstance};
use prism_tests::{fast_mesh, next_event, test_options, wait_view, NatsServer};

const WAIT: Duration = Duration::from_secs(10);

fn instance(service: &str, port: u16) -> ServiceInstance {
    ServiceInstance::builder(service, "127.0.0.1", port)
        .build()
        .unwrap()
}

/// An owner whose instances stay silent for the length of a test: no heartbeat within it.
async fn quiet_owner(url: &str) -> Mesh {
    Mesh::builder()
        .nats(test_options(url))
        .instance_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_following_a_service_gets_its_changes_and_nothing_of_the_others() {
    let server = NatsServer::start();
    let url = server.url();
    let quiet = quiet_owner(&url).await;
    let mut followed = Vec::new();
    for port in [9401, 9402, 9403] {
        followed.push(quiet.register(instance("followed", port)).await.unwrap());
    }
    let noisy = fast_mesh(&url).connect().await.unwrap();
    let mut noise = Vec::new();
    for port in 9501..9506 {
        noise.push(noisy.register(instance("noise", port)).await.unwrap());
    }

    let scoped = fast_mesh(&url).follow("followed").connect().await.unwrap();
    let full = fast_mesh(&url).connect().await.unwrap();
    assert_eq!(scoped.discover("followed").len(), 3, "loaded at connect");
    assert_eq!(scoped.services(), ["followed"]);
    assert_eq!(scoped.interest(), Some(vec!["followed".to_string()]));
    assert_eq!(full.interest(), None);
    let mut events = scoped.subscribe();

    // The noisy service heartbeats every 500 ms and changes status; the followed one is
    // silent. Nothing of it may reach the scoped peer's watch.
    let scoped_before = scoped.stats().changes_applied;
    let full_before = full.stats().changes_applied;
    for round in 0..10 {
        let status = if round % 2 == 0 {
            InstanceStatus::Healthy
        } else {
            InstanceStatus::Unhealthy
        };
        noise[round % noise.len()]
            .set_status(status, None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let full_seen = full.stats().changes_applied - full_before;
    assert!(
        full_seen >= 20,
        "the full view saw {full_seen} changes of the noisy service"
    );
    assert_eq!(
        scoped.stats().changes_applied - scoped_before,
        0,
        "the scoped peer received messages of a service it does not follow"
    );
    assert!(scoped.discover("noise").is_empty());

    // Its own service's changes: a status change, a registration, an expiry.
    followed[0]
        .set_status(InstanceStatus::Healthy, Some("warmed up"))
        .await
        .unwrap();
    let event = next_event(&mut events, WAIT, "status change").await;
    assert!(
        matches!(
            &event,
            MeshEvent::StatusChanged {
                current: InstanceStatus::Healthy,
                ..
            }
        ),
        "{event:?}"
    );
    let crashing = fast_mesh(&url).connect().await.unwrap();
    let doomed = crashing.register(instance("followed", 9404)).await.unwrap();
    let event = next_event(&mut events, WAIT, "registration").await;
    assert_eq!(
        (event.kind(), event.instance().id),
        (EventKind::Registered, doomed.id())
    );
    drop(doomed);
    drop(crashing); // no deregistration: its key expires on the server
    let event = next_event(&mut events, WAIT, "expiry").await;
    assert_eq!(event.kind(), EventKind::Expired, "{event:?}");
    assert_eq!(event.service(), "followed");
    assert_eq!(scoped.discover("followed").len(), 3);

    for mesh in [scoped, full, noisy, quiet] {
        mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_service_later_loads_its_instances_before_the_first_answer() {
    let server = NatsServer::start();
    let url = server.url();
    let owner = quiet_owner(&url).await;
    for port in [9601, 9602, 9603] {
        owner.register(instance("late", port)).await.unwrap();
    }
    let scoped = fast_mesh(&url).follow("first").connect().await.unwrap();
    assert!(scoped.services().is_empty());
    let mut events = scoped.subscribe();

    scoped.follow("late").await.unwrap();
    assert_eq!(
        scoped.discover("late").len(),
        3,
        "loaded when follow returns"
    );
    assert_eq!(
        scoped.interest(),
        Some(vec!["first".to_string(), "late".to_string()])
    );
    // What was there before is loaded, not announced; what comes after is.
    let added = owner.register(instance("late", 9604)).await.unwrap();
    let event = next_event(&mut events, WAIT, "the registration after follow").await;
    assert_eq!(
        (event.kind(), event.instance().id),
        (EventKind::Registered, added.id())
    );

    // Registering an instance follows its service: the owner sees its own writes.
    let own = scoped.register(instance("own", 9700)).await.unwrap();
    assert_eq!(scoped.discover("own")[0].id, own.id());

    // A read of a service not followed yet follows it; the view catches up.
    assert!(scoped.discover("first-read").is_empty());
    owner.register(instance("first-read", 9800)).await.unwrap();
    wait_view(&scoped, "first-read", WAIT, "followed on first read", |v| {
        v.len() == 1
    })
    .await;
    // wait_for_service follows too.
    owner.register(instance("awaited", 9900)).await.unwrap();
    let found = scoped
        .wait_for_service("awaited", WAIT)
        .await
        .expect("awaited service");
    assert_eq!(found.len(), 1);

    scoped.shutdown().await;
    owner.shutdown().await;
}
