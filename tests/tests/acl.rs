//! Per-service permissions (`nats/auth.conf`) against a real nats-server: a service cannot
//! touch another service's instances, an observer reads but cannot write, an immortal key
//! never enters a view, and a rollup (which no permission or stream setting can refuse on
//! a TTL stream) is undone by the owners as soon as they see it. `attacks.rs` tries every
//! attack of `docs/security.md` and times the recovery.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use prism_mesh::protocol::{InstanceRecord, PROTOCOL_VERSION};
use prism_mesh::{ErrorKind, InstanceStatus, Mesh, ServiceInstance};
use prism_tests::{options_as, server_with_auth_conf, wait_view, NatsServer};

const WAIT: Duration = Duration::from_secs(10);

fn server_with_acl() -> NatsServer {
    server_with_auth_conf()
}

async fn mesh_as(server: &NatsServer, user: &str) -> Mesh {
    Mesh::builder()
        .nats(options_as(&server.url(), user))
        .instance_ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .publish_expired_events(user != "observer")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"))
}

async fn raw_as(server: &NatsServer, user: &str) -> jetstream::Context {
    prism_tests::raw_as(&server.url(), user).await.0
}

fn record(service: &str) -> (String, Bytes) {
    let instance = ServiceInstance::builder(service, "10.9.9.9", 6666)
        .status(InstanceStatus::Healthy)
        .build()
        .unwrap();
    let key = format!("$KV.prism-instances.{}", instance.key());
    let record = InstanceRecord {
        v: PROTOCOL_VERSION,
        instance: instance.into(),
        ttl_ms: 2000,
        reason: None,
    };
    (key, Bytes::from(record.encode().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cannot_register_update_or_deregister_another_services_instances() {
    let server = server_with_acl();
    let admin = mesh_as(&server, "admin").await; // creates the bucket and the stream
    let orders = mesh_as(&server, "orders").await;
    let billing = mesh_as(&server, "billing").await;

    let mine = orders
        .register(
            ServiceInstance::builder("orders", "10.0.0.1", 8080)
                .build()
                .unwrap(),
        )
        .await
        .expect("orders registers its own instance");
    let theirs = billing
        .register(
            ServiceInstance::builder("billing", "10.0.0.2", 8080)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    wait_view(&billing, "orders", WAIT, "orders' instance", |v| {
        v.len() == 1
    })
    .await;

    // Register as billing: refused by the server, reported as a permission error at once.
    let started = Instant::now();
    let err = orders
        .register(
            ServiceInstance::builder("billing", "10.0.0.1", 9090)
                .build()
                .unwrap(),
        )
        .await
        .expect_err("orders must not register a billing instance");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("$KV.prism-instances.billing."),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // Update or deregister billing's instance with orders' credentials: refused.
    let js = raw_as(&server, "orders").await;
    let key = format!("$KV.prism-instances.billing.{}", theirs.id());
    let mut tombstone = async_nats::HeaderMap::new();
    tombstone.insert("KV-Operation", "DEL");
    tombstone.insert("Nats-TTL", "5s");
    let delete = js
        .publish_with_headers(key.clone(), tombstone, Bytes::new())
        .await
        .unwrap()
        .await;
    assert!(
        delete.is_err(),
        "the server stored orders' deregistration of a billing instance"
    );
    let (_, value) = record("billing");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", "5s");
    let overwrite = js
        .publish_with_headers(key, headers, value)
        .await
        .unwrap()
        .await;
    assert!(
        overwrite.is_err(),
        "the server stored orders' overwrite of a billing instance"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = orders.discover("billing");
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].host, "10.0.0.2");
    assert!(theirs.is_live() && mine.is_live());

    orders.shutdown().await;
    billing.shutdown().await;
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_watches_and_replays_but_cannot_write() {
    let server = server_with_acl();
    let admin = mesh_as(&server, "admin").await;
    let orders = mesh_as(&server, "orders").await;
    let observer = mesh_as(&server, "observer").await;
    let mine = orders
        .register(
            ServiceInstance::builder("orders", "10.0.0.1", 8080)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    mine.set_status(InstanceStatus::Healthy, Some("ready"))
        .await
        .unwrap();
    wait_view(&observer, "orders", WAIT, "orders healthy", |v| {
        v.len() == 1 && v[0].status == InstanceStatus::Healthy
    })
    .await;
    let history = observer
        .event_history(None)
        .await
        .expect("the observer replays");
    assert!(history.iter().any(|e| e.instance.id == mine.id()));

    let err = observer
        .register(
            ServiceInstance::builder("orders", "10.0.0.3", 8080)
                .build()
                .unwrap(),
        )
        .await
        .expect_err("the observer must not write");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    orders.shutdown().await;
    observer.shutdown().await;
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immortal_key_never_enters_a_view_and_owners_undo_a_rollup() {
    let server = server_with_acl();
    let admin = mesh_as(&server, "admin").await;
    let billing = mesh_as(&server, "billing").await;
    let observer = mesh_as(&server, "observer").await;
    let theirs = billing
        .register(
            ServiceInstance::builder("billing", "10.0.0.2", 8080)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    wait_view(&observer, "billing", WAIT, "billing", |v| v.len() == 1).await;
    let js = raw_as(&server, "orders").await;

    // Attack 1: an immortal key on orders' own subject. Stored, but refused by every peer.
    let dropped = observer.stats().malformed_dropped;
    let (key, value) = record("orders");
    let mut never = async_nats::HeaderMap::new();
    never.insert("Nats-TTL", "never");
    js.publish_with_headers(key, never, value)
        .await
        .unwrap()
        .await
        .expect("own subject: stored");
    let deadline = Instant::now() + WAIT;
    while observer.stats().malformed_dropped == dropped {
        assert!(
            Instant::now() < deadline,
            "the immortal record was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        observer.discover("orders").is_empty(),
        "an immortal record entered the view"
    );

    // Attack 2: a rollup on orders' own subject wipes the whole bucket stream.
    let (key, value) = record("orders");
    let mut rollup = async_nats::HeaderMap::new();
    rollup.insert("Nats-Rollup", "all");
    rollup.insert("Nats-TTL", "2s");
    let wiped = Instant::now();
    let rollup = js
        .publish_with_headers(key, rollup, value)
        .await
        .unwrap()
        .await
        .expect("nats-server accepts the rollup");
    let admin_js = raw_as(&server, "admin").await;
    let stream = admin_js.get_stream("KV_prism-instances").await.unwrap();
    let billing_key = format!("$KV.prism-instances.billing.{}", theirs.id());
    // The rollup removed billing's message (the stream starts at the rollup), views keep
    // billing's instance (a rollup leaves no markers), and its owner writes the key again
    // as soon as its own view shows the rollup.
    loop {
        assert_eq!(
            observer.discover("billing").len(),
            1,
            "a view lost billing's instance"
        );
        match stream.get_last_raw_message_by_subject(&billing_key).await {
            Ok(last) if last.sequence > rollup.sequence => break,
            Ok(last) => panic!(
                "the rollup at {} left billing's message {}",
                rollup.sequence, last.sequence
            ),
            Err(_) => {}
        }
        assert!(
            wiped.elapsed() < Duration::from_secs(10),
            "billing's key did not come back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("billing's key back {:?} after the rollup", wiped.elapsed());
    billing.shutdown().await;
    observer.shutdown().await;
    admin.shutdown().await;
}
