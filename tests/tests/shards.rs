//! A mesh whose instances are spread over several buckets (shards by service), against a
//! real nats-server: each service's keys live in the bucket its hash names, every peer
//! sees every shard, lifecycle and control work in any shard, and a peer configured for
//! another shard count is refused instead of seeing part of the mesh.

use std::time::Duration;

use futures::StreamExt;
use prism_mesh::protocol::{shard_bucket, shard_of};
use prism_mesh::{ErrorKind, EventKind, Mesh, ServiceInstance};
use prism_tests::{fast_mesh, next_event, test_options, wait_view, NatsServer};

const WAIT: Duration = Duration::from_secs(10);
const BUCKET: &str = "prism-instances";

fn instance(service: &str, port: u16) -> ServiceInstance {
    ServiceInstance::builder(service, "127.0.0.1", port)
        .build()
        .unwrap()
}

async fn sharded(url: &str, shards: u16) -> prism_mesh::Result<Mesh> {
    Mesh::builder()
        .nats(test_options(url).shards(shards))
        .instance_ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .connect()
        .await
}

/// The keys held by `bucket`, read with a raw consumer.
async fn keys_of(url: &str, bucket: &str) -> Vec<String> {
    let client = async_nats::connect(url).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(bucket)
        .await
        .unwrap();
    let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_live_in_their_services_shard_and_every_peer_sees_every_shard() {
    let server = NatsServer::start();
    let url = server.url();
    let owner = sharded(&url, 3).await.unwrap();
    let services: Vec<String> = (0..12).map(|n| format!("sharded-{n}")).collect();
    let mut keys = vec![Vec::new(); 3];
    for (n, service) in services.iter().enumerate() {
        let me = owner
            .register(instance(service, 9000 + n as u16))
            .await
            .unwrap();
        keys[usize::from(shard_of(service, 3))].push(me.instance().key());
    }
    assert!(
        keys.iter().all(|k| !k.is_empty()),
        "12 services cover 3 shards"
    );
    for (shard, expected) in keys.iter_mut().enumerate() {
        expected.sort();
        let bucket = shard_bucket(BUCKET, shard as u16);
        assert_eq!(&keys_of(&url, &bucket).await, expected, "bucket {bucket}");
    }

    // A peer with no count configured takes the mesh's, and sees all of it.
    let peer = fast_mesh(&url).connect().await.unwrap();
    assert_eq!(peer.services().len(), 12);
    // A scoped peer follows one service in whichever shard it is.
    let far = services
        .iter()
        .find(|s| shard_of(s, 3) == 2)
        .unwrap()
        .clone();
    let scoped = fast_mesh(&url).follow(far.clone()).connect().await.unwrap();
    assert_eq!(scoped.services(), std::slice::from_ref(&far));

    // Lifecycle in a shard other than the first: registration, expiry, control.
    let mut events = peer.subscribe();
    let crashing = fast_mesh(&url).connect().await.unwrap();
    let doomed = crashing.register(instance(&far, 9100)).await.unwrap();
    let event = next_event(&mut events, WAIT, "registration in shard 2").await;
    assert_eq!(
        (event.kind(), event.instance().id),
        (EventKind::Registered, doomed.id())
    );
    drop(doomed);
    drop(crashing);
    let event = next_event(&mut events, WAIT, "expiry in shard 2").await;
    assert_eq!(event.kind(), EventKind::Expired, "{event:?}");
    // The owner's own instance of that service (the crashed one may still be in its view).
    let victim = owner
        .registrations()
        .into_iter()
        .find(|r| r.instance().service == far)
        .unwrap();
    peer.request_deregister(&far, victim.id(), Some("moved"), Some("ops"))
        .await
        .unwrap();
    wait_view(&peer, &far, WAIT, "deregistered through its owner", |v| {
        v.is_empty()
    })
    .await;
    wait_view(&scoped, &far, WAIT, "the scoped peer too", |v| v.is_empty()).await;

    for mesh in [scoped, peer, owner] {
        mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_configured_for_another_shard_count_is_refused_naming_both() {
    let server = NatsServer::start();
    let url = server.url();
    let mesh = sharded(&url, 3).await.unwrap();
    let err = sharded(&url, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("over 3 shard(s)") && text.contains("configured for 1"),
        "{text}"
    );
    assert!(sharded(&url, 3).await.is_ok(), "the same count joins");
    mesh.shutdown().await;

    // A mesh made before shards (one bucket, no count stated) is a mesh of one.
    let other = NatsServer::start();
    let single = fast_mesh(&other.url()).connect().await.unwrap();
    let err = sharded(&other.url(), 2).await.unwrap_err();
    assert!(err.to_string().contains("over 1 shard(s)"), "{err}");
    single.shutdown().await;
}
