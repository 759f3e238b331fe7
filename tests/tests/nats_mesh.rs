//! The core mesh against a real nats-server: processes see each other, status changes,
//! deregistration, crash expiry, late peers, bad input, malformed messages.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prism_mesh::{
    protocol, ErrorKind, EventKind, InstanceStatus, Mesh, MeshEvent, ServiceInstance,
    MAX_METADATA_BYTES,
};
use prism_tests::{fast_mesh, next_event, test_options, wait_event, NatsServer, PeerProcess};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");
const WAIT: Duration = Duration::from_secs(10);

fn spawn_peer(server: &NatsServer, service: Option<&str>) -> PeerProcess {
    let url = server.url();
    let mut args = vec!["--url", url.as_str(), "--ttl", "2s", "--heartbeat", "500ms"];
    if let Some(service) = service {
        args.extend(["--service", service]);
    }
    let mut peer = PeerProcess::spawn(PEER, &args);
    peer.expect_line(WAIT, "ready line", |v| v["ready"] == true);
    peer
}

fn ready_id(peer: &mut PeerProcess) -> String {
    let ready = peer.expect_line(WAIT, "ready line", |v| v["ready"] == true);
    ready["id"].as_str().expect("registered id").to_string()
}

fn is_event(v: &Value, event: &str, id: &str) -> bool {
    v["event"] == event && v["id"] == id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_in_separate_processes_see_each_others_registrations() {
    let server = NatsServer::start();
    let mut a = spawn_peer(&server, Some("alpha"));
    let a_id = ready_id(&mut a);
    let mut b = spawn_peer(&server, Some("beta"));
    let b_id = ready_id(&mut b);

    // B started after A: A is in B's initial view; B reaches A as an event.
    let b_ready = b.expect_line(WAIT, "ready", |v| v["ready"] == true);
    assert!(b_ready["view"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == a_id.as_str()));
    a.expect_line(WAIT, "beta registered at A", |v| {
        is_event(v, "registered", &b_id)
    });
    // And changes flow both ways.
    a.send("status healthy");
    b.expect_line(WAIT, "alpha's status at B", |v| {
        is_event(v, "status", &a_id) && v["current"] == "healthy"
    });
    b.send("meta version 2.0");
    a.expect_line(WAIT, "beta's update at A", |v| {
        is_event(v, "updated", &b_id) && v["metadata"]["version"] == "2.0"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_in_one_process_reaches_a_handler_in_another_with_old_and_new_status() {
    let server = NatsServer::start();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    watcher.on(EventKind::StatusChanged, move |event| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
        }
    });
    let mut owner = spawn_peer(&server, Some("payments"));
    let id = ready_id(&mut owner);
    owner.send("status healthy passed readiness probe");
    owner.expect_line(WAIT, "status done", |v| v["done"] == "status");

    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handler called")
        .unwrap();
    match event {
        MeshEvent::StatusChanged {
            instance,
            previous,
            current,
            reason,
        } => {
            assert_eq!(instance.id.to_string(), id);
            assert_eq!(previous, InstanceStatus::Starting);
            assert_eq!(current, InstanceStatus::Healthy);
            assert_eq!(reason.as_deref(), Some("passed readiness probe"));
        }
        other => panic!("expected StatusChanged, got {other:?}"),
    }
    assert_eq!(
        watcher.discover("payments")[0].status,
        InstanceStatus::Healthy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistration_reaches_peers_with_its_reason_and_empties_their_view() {
    let server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let mut watcher = spawn_peer(&server, None);
    let me = owner
        .register(
            ServiceInstance::builder("inventory", "10.1.1.1", 80)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let id = me.id().to_string();
    watcher.expect_line(WAIT, "registered", |v| is_event(v, "registered", &id));
    me.deregister(Some("rolling update")).await.unwrap();
    let line = watcher.expect_line(WAIT, "deregistered", |v| is_event(v, "deregistered", &id));
    assert_eq!(line["reason"], "rolling update");
    // Updates after deregistration are refused by the handle.
    let err = me
        .set_status(InstanceStatus::Healthy, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRegistered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_owner_process_gives_expired_at_every_peer_within_the_ttl() {
    let server = NatsServer::start();
    let peer_one = fast_mesh(&server.url()).connect().await.unwrap();
    let peer_two = fast_mesh(&server.url()).connect().await.unwrap();
    let mut expired_one = peer_one.subscribe_filtered(EventKind::Expired.into());
    let mut expired_two = peer_two.subscribe_filtered(EventKind::Expired.into());
    let mut process_peer = spawn_peer(&server, None);

    let mut owner = spawn_peer(&server, Some("worker"));
    let id = ready_id(&mut owner);
    process_peer.expect_line(WAIT, "registered", |v| is_event(v, "registered", &id));
    peer_one.wait_for_service("worker", WAIT).await.unwrap();
    peer_two.wait_for_service("worker", WAIT).await.unwrap();

    let killed_at = tokio::time::Instant::now();
    owner.kill9();
    // TTL 2 s, plus at most one heartbeat interval of age, plus a generous margin.
    let bound = Duration::from_secs(2) + Duration::from_secs(4);
    for events in [&mut expired_one, &mut expired_two] {
        let event = next_event(events, bound, "expired").await;
        assert_eq!(event.instance().id.to_string(), id);
    }
    process_peer.expect_line(bound, "expired in another process", |v| {
        is_event(v, "expired", &id)
    });
    eprintln!(
        "expiry seen {:?} after kill -9 (TTL 2 s)",
        killed_at.elapsed()
    );
    assert!(peer_one.discover("worker").is_empty() && peer_two.discover("worker").is_empty());

    // Several peers published `expired`; the audit stream holds it once.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stream = js.get_stream(protocol::DEFAULT_EVENT_STREAM).await.unwrap();
    let subject = format!("discovery.worker.{id}.expired");
    let info = stream.info().await.unwrap();
    let expired_count = count_subject(&js, &subject).await;
    assert_eq!(expired_count, 1, "stream info: {:?}", info.state);
}

async fn count_subject(js: &async_nats::jetstream::Context, subject: &str) -> usize {
    use async_nats::jetstream::consumer;
    let stream = js.get_stream(protocol::DEFAULT_EVENT_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending;
    usize::try_from(pending).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_peer_sees_the_current_view_and_no_stale_instances() {
    let server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let live = owner
        .register(
            ServiceInstance::builder("catalog", "h1", 1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    live.set_status(InstanceStatus::Healthy, None)
        .await
        .unwrap();
    let left = owner
        .register(
            ServiceInstance::builder("catalog", "h2", 2)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    left.deregister(None).await.unwrap();
    let mut crashed = spawn_peer(&server, Some("catalog"));
    let crashed_id = ready_id(&mut crashed);
    crashed.kill9();
    // Let the crashed owner's key expire (TTL 2 s) before the late peer starts.
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let mut events = watcher.subscribe_filtered(EventKind::Expired.into());
    let gone = next_event(&mut events, WAIT, "expired").await;
    assert_eq!(gone.instance().id.to_string(), crashed_id);

    let late = fast_mesh(&server.url()).connect().await.unwrap();
    let view = late.discover("catalog");
    assert_eq!(view.len(), 1, "{view:?}");
    assert_eq!(view[0].id, live.id());
    assert_eq!(view[0].status, InstanceStatus::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_service_names_and_oversized_metadata_are_rejected_before_any_network_call() {
    let mut server = NatsServer::start();
    let mesh = fast_mesh(&server.url()).connect().await.unwrap();
    // With the server gone, anything reaching the network would time out instead.
    server.kill();
    let mut bad = ServiceInstance::builder("ok", "h", 1).build().unwrap();
    bad.service = "orders.eu".into();
    let started = std::time::Instant::now();
    let err = mesh.register(bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("'.'"), "{err}");

    let mut big = ServiceInstance::builder("ok", "h", 1).build().unwrap();
    big.metadata
        .insert("blob", "x".repeat(MAX_METADATA_BYTES + 1));
    let err = mesh.register(big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("metadata"), "{err}");
    // A write to the dead server would wait out the 5 s request timeout; a loaded CI
    // machine needs nowhere near this bound to reject both without one.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unreachable_server_retries_until_the_deadline_then_names_the_url() {
    let port = prism_tests::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = fast_mesh(&url)
        .nats(test_options(&url).connect_deadline(Duration::from_secs(2)))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::Timeout),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.to_string().contains("connect deadline of 2s"), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10),
        "gave up after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_a_server_that_is_still_starting() {
    let port = prism_tests::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let connecting = tokio::spawn(fast_mesh(&url).connect());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !connecting.is_finished(),
        "connect gave up on a server not yet started"
    );
    let _server = NatsServer::start_on(port);
    let mesh = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .expect("connect returned within 30 s of the server starting")
        .unwrap()
        .expect("connected once the server was up");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_and_ignored_without_damaging_the_view() {
    let server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let good = owner
        .register(ServiceInstance::builder("ledger", "h", 1).build().unwrap())
        .await
        .unwrap();
    watcher.wait_for_service("ledger", WAIT).await.unwrap();

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let bucket = format!("$KV.{}", protocol::DEFAULT_BUCKET);
    let real = ServiceInstance::builder("ledger", "h", 1).build().unwrap();
    let real_record = protocol::InstanceRecord {
        v: 1,
        instance: real.clone().into(),
        ttl_ms: 2000,
        reason: None,
    }
    .encode()
    .unwrap();
    let mut spoofed = real.clone();
    spoofed.id = uuid::Uuid::new_v4();
    let spoofed = protocol::InstanceRecord {
        v: 1,
        instance: spoofed.into(),
        ttl_ms: 0,
        reason: None,
    }
    .encode()
    .unwrap();
    let garbage: Vec<(String, Bytes)> = vec![
        (
            format!("{bucket}.ledger.{}", uuid::Uuid::new_v4()),
            Bytes::from_static(b"\xc1\xff garbage"),
        ),
        (
            format!("{bucket}.ledger.{}", uuid::Uuid::new_v4()),
            Bytes::from(rmp_like_wrong_type()),
        ),
        (
            format!("{bucket}.ledger.{}", real.id),
            Bytes::copy_from_slice(&real_record[..real_record.len() / 2]),
        ),
        (
            format!("{bucket}.ledger.{}", uuid::Uuid::new_v4()),
            Bytes::from(spoofed),
        ),
        (
            format!("{bucket}.not-a-uuid"),
            Bytes::from(real_record.clone()),
        ),
        (
            format!("{bucket}.ledger.{}", uuid::Uuid::new_v4()),
            Bytes::new(),
        ),
    ];
    let count = garbage.len() as u64;
    for (subject, payload) in garbage {
        // With a TTL, as an owner's put: the body itself is what peers must refuse.
        js.publish_with_headers(subject, prism_tests::put_headers("60s"), payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Garbage on the event subjects is stored in the audit stream but never read by views.
    client
        .publish("discovery.ledger.x.registered", Bytes::from_static(b"junk"))
        .await
        .unwrap();

    // A valid change after the garbage proves the view kept going, in order.
    let mut events = watcher.subscribe();
    good.set_status(InstanceStatus::Healthy, None)
        .await
        .unwrap();
    wait_event(&mut events, WAIT, "status change after garbage", |e| {
        e.kind() == EventKind::StatusChanged
    })
    .await;
    assert_eq!(watcher.stats().malformed_dropped, count);
    let view = watcher.discover("ledger");
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].id, good.id());
    // A late peer replaying the same garbage is just as unharmed.
    let late = fast_mesh(&server.url()).connect().await.unwrap();
    assert_eq!(late.discover("ledger").len(), 1);
    assert!(late.stats().malformed_dropped >= count - 1);
}

/// A MessagePack array where a map is expected.
fn rmp_like_wrong_type() -> Vec<u8> {
    vec![0x93, 0x01, 0x02, 0x03]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_newer_protocol_version_with_unknown_fields_are_accepted() {
    #[derive(serde::Serialize)]
    struct Newer {
        v: u32,
        instance: ServiceInstance,
        ttl_ms: u64,
        future_field: Vec<u32>,
    }
    let server = NatsServer::start();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let instance = ServiceInstance::builder("future", "h", 1).build().unwrap();
    let payload = rmp_serde::to_vec_named(&Newer {
        v: 2,
        instance: instance.clone(),
        ttl_ms: 2000,
        future_field: vec![1, 2, 3],
    })
    .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", "2s");
    js.publish_with_headers(
        format!("$KV.{}.{}", protocol::DEFAULT_BUCKET, instance.key()),
        headers,
        payload.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let seen = watcher.wait_for_service("future", WAIT).await.unwrap();
    assert_eq!(seen[0].id, instance.id);
    assert_eq!(watcher.stats().malformed_dropped, 0);
}

/// The next message on `sub`, within [`WAIT`].
async fn next_message(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_carry_readable_headers_on_the_discovery_subjects() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("discovery.>").await.unwrap();
    client.flush().await.unwrap();
    let mesh = fast_mesh(&server.url()).connect().await.unwrap();
    let me = mesh
        .register(ServiceInstance::builder("audit", "h", 1).build().unwrap())
        .await
        .unwrap();
    me.set_status(InstanceStatus::Unhealthy, Some("disk full"))
        .await
        .unwrap();
    me.deregister(Some("bye")).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let msg = next_message(&mut sub).await;
        let headers = msg.headers.clone().unwrap();
        let get = |name: &str| {
            headers
                .get(name.parse::<async_nats::header::HeaderName>().unwrap())
                .map(|v| v.as_str().to_string())
        };
        assert_eq!(get("Prism-Service").as_deref(), Some("audit"));
        assert_eq!(get("Prism-Instance"), Some(me.id().to_string()));
        assert_eq!(get("Prism-Origin").as_deref(), Some(mesh.peer_id()));
        assert!(get("Nats-Msg-Id").is_some());
        let record = protocol::EventRecord::decode(&msg.payload).unwrap();
        assert_eq!(record.instance.id, me.id());
        seen.push((
            msg.subject.to_string(),
            get("Prism-Status"),
            get("Prism-Previous-Status"),
            get("Prism-Reason"),
        ));
    }
    let id = me.id();
    assert_eq!(seen[0].0, format!("discovery.audit.{id}.registered"));
    assert_eq!(
        seen[1],
        (
            format!("discovery.audit.{id}.status"),
            Some("unhealthy".into()),
            Some("starting".into()),
            Some("disk full".into())
        )
    );
    assert_eq!(seen[2].0, format!("discovery.audit.{id}.deregistered"));
    assert_eq!(seen[2].3.as_deref(), Some("bye"));
}

/// The header names of one message, sorted.
fn header_names(msg: &async_nats::Message) -> Vec<String> {
    let mut names: Vec<String> = msg
        .headers
        .iter()
        .flat_map(|headers| headers.iter().map(|(name, _)| name.to_string()))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_carry_only_the_headers_the_server_acts_on_and_events_the_documented_ones() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut puts = client
        .subscribe(format!("$KV.{}.>", protocol::DEFAULT_BUCKET))
        .await
        .unwrap();
    let mut events = client.subscribe("discovery.>").await.unwrap();
    client.flush().await.unwrap();
    let mesh = fast_mesh(&server.url()).connect().await.unwrap();
    let me = mesh
        .register(ServiceInstance::builder("wire", "h", 1).build().unwrap())
        .await
        .unwrap();
    me.set_status(InstanceStatus::Healthy, Some("ready"))
        .await
        .unwrap();

    // The registration is a create (expected revision 0); the status change is a
    // compare-and-swap on the revision it replaces, which the `registered` event's id names.
    let create = next_message(&mut puts).await;
    let swap = next_message(&mut puts).await;
    for put in [&create, &swap] {
        assert_eq!(
            header_names(put),
            ["Nats-Expected-Last-Subject-Sequence", "Nats-TTL"],
            "headers on {}",
            put.subject
        );
        assert_eq!(header(put, "Nats-TTL"), "2s");
    }
    assert_eq!(header(&create, "Nats-Expected-Last-Subject-Sequence"), "0");
    let registered = next_message(&mut events).await;
    assert_eq!(
        header_names(&registered),
        [
            "Nats-Msg-Id",
            "Prism-Instance",
            "Prism-Origin",
            "Prism-Revision",
            "Prism-Service",
            "Prism-Status"
        ]
    );
    let id = me.id().to_string();
    // `registered-<id>-<revision>-<nonce>`: the nonce is 32 random hex digits.
    let (created_at, nonce) = header(&registered, "Nats-Msg-Id")
        .strip_prefix(&format!("registered-{id}-"))
        .and_then(|rest| rest.split_once('-'))
        .map(|(revision, nonce)| (revision.to_string(), nonce.to_string()))
        .expect("the event id names the instance, the revision and a nonce");
    assert!(
        nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "nonce {nonce:?}"
    );
    assert_eq!(
        header(&swap, "Nats-Expected-Last-Subject-Sequence"),
        created_at,
        "the status change must expect the revision the registration wrote"
    );
    assert_eq!(header(&registered, "Prism-Service"), "wire");
    assert_eq!(header(&registered, "Prism-Instance"), id);
    assert_eq!(header(&registered, "Prism-Status"), "starting");
    assert!(!header(&registered, "Prism-Origin").is_empty());
    // The event names the bucket revision of the write it is about: the create's.
    assert_eq!(header(&registered, "Prism-Revision"), created_at);
    let status = next_message(&mut events).await;
    assert_eq!(
        header_names(&status),
        [
            "Nats-Msg-Id",
            "Prism-Instance",
            "Prism-Origin",
            "Prism-Previous-Status",
            "Prism-Reason",
            "Prism-Revision",
            "Prism-Service",
            "Prism-Status"
        ]
    );
    assert!(header(&status, "Nats-Msg-Id").starts_with(&format!("status-{id}-")));
    assert_eq!(header(&status, "Prism-Previous-Status"), "starting");
    assert_eq!(header(&status, "Prism-Status"), "healthy");
    assert_eq!(header(&status, "Prism-Reason"), "ready");
}

/// The value of header `name` of `msg` ("" when absent).
fn header(msg: &async_nats::Message, name: &str) -> String {
    msg.headers
        .as_ref()
        .and_then(|headers| {
            headers
                .iter()
                .find(|(n, _)| n.to_string().eq_ignore_ascii_case(name))
                .and_then(|(_, values)| values.first().map(|v| v.as_str().to_string()))
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reasserts_its_registration_after_the_server_comes_back() {
    let mut server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let me = owner
        .register(
            ServiceInstance::builder("resilient", "h", 1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    // Down for longer than the TTL: the key expires when the server is back.
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    let late = fast_mesh(&server.url()).connect().await.unwrap();
    let seen = late
        .wait_for_service("resilient", Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(seen[0].id, me.id());
    // The owner keeps it alive afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(late.discover("resilient").len(), 1);
    assert_eq!(
        owner.discover("resilient").len(),
        1,
        "the owner's own view resynchronised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bucket_lost_in_a_server_restart_is_made_again_and_followed() {
    let mut server = NatsServer::start();
    let memory = |url: &str| {
        fast_mesh(url).nats(prism_tests::test_options(url).storage(prism_mesh::StorageKind::Memory))
    };
    let owner = memory(&server.url()).connect().await.unwrap();
    let watcher = memory(&server.url()).connect().await.unwrap();
    let me = owner
        .register(
            ServiceInstance::builder("volatile", "h", 1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    // Far along the old log, so the new log's revisions stay below it for minutes.
    for n in 0..300 {
        me.update(move |i| {
            i.metadata.insert("n", n);
        })
        .await
        .unwrap();
    }
    prism_tests::wait_view(&watcher, "volatile", WAIT, "the last update", |v| {
        v.len() == 1 && v[0].metadata.get("n") == Some(&299.into())
    })
    .await;

    // The bucket and the event stream lived in the server's memory: gone.
    server.restart();
    // The peers make them again; the change is written at a revision far below 300.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = me
        .set_status(InstanceStatus::Healthy, Some("after the restart"))
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write succeeded after the restart: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    prism_tests::wait_view(
        &watcher,
        "volatile",
        WAIT,
        "the status after the restart",
        |v| v.len() == 1 && v[0].status == InstanceStatus::Healthy,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_the_bucket_and_the_event_stream_within_their_limits() {
    let server = NatsServer::start();
    let options = prism_tests::test_options(&server.url())
        .marker_ttl(Duration::from_secs(1))
        .event_limits(Duration::from_secs(3600), 4 << 20, 1000);
    let mesh = Mesh::builder()
        .nats(options)
        .instance_ttl(Duration::from_secs(5))
        .heartbeat_interval(Duration::from_secs(2))
        .tombstone_ttl(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let churn: usize = std::env::var("PRISM_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    futures::stream::iter(0..churn)
        .map(|n| {
            let mesh = mesh.clone();
            async move {
                let me = mesh
                    .register(
                        ServiceInstance::builder("churn", "h", (n % 60000) as u16)
                            .build()
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                me.deregister(None).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut events = js.get_stream(protocol::DEFAULT_EVENT_STREAM).await.unwrap();
    let info = events.info().await.unwrap();
    assert!(
        info.state.messages <= 1000,
        "event stream holds {}",
        info.state.messages
    );

    // Tombstones expire after 1 s, then their markers after 1 s: the bucket drains to empty.
    let mut kv = js
        .get_stream(format!("KV_{}", protocol::DEFAULT_BUCKET))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = kv.info().await.unwrap().state.clone();
        if state.messages == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bucket still holds {} messages ({} bytes) after churn of {churn}",
            state.messages,
            state.bytes
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(mesh.discover("churn").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_caller_gives_up_still_completes_and_is_not_undone_by_heartbeats() {
    let server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let me = owner
        .register(
            ServiceInstance::builder("impatient", "127.0.0.1", 7000)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    // The write goes out to a frozen server; the caller stops waiting before its ack.
    server.signal("STOP");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        me.set_status(InstanceStatus::Healthy, Some("ready")),
    )
    .await;
    server.signal("CONT");
    if let Ok(finished) = gave_up {
        panic!("the update finished on a frozen server: {finished:?}");
    }

    // Four heartbeats later the update stands, at the owner and at the peer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(me.instance().status, InstanceStatus::Healthy);
    let seen = watcher.discover("impatient");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].status, InstanceStatus::Healthy);
    assert_eq!(
        owner.stats().reasserts,
        0,
        "a heartbeat re-asserted the key over the update"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_dropped_without_shutdown_leaves_no_task_and_no_connection_behind() {
    let server = NatsServer::start();
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    let mesh = fast_mesh(&server.url()).connect().await.expect("mesh");
    assert!(alive() > before, "a connected mesh runs tasks");
    // No registration and no writes: nothing arrives on the watch to notice the drop.
    drop(mesh);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive() > before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} tasks still alive 10 s after the drop (there were {before} before the mesh)",
            alive()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_can_be_registered_again_after_its_deregistration_but_never_twice_at_once() {
    let server = NatsServer::start();
    let mesh = fast_mesh(&server.url()).connect().await.unwrap();
    let instance = ServiceInstance::builder("again", "h", 1).build().unwrap();
    let first = mesh.register(instance.clone()).await.unwrap();
    // Live: a second registration of the same id conflicts.
    let err = mesh.register(instance.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("already registered"), "{err}");
    // Nor under another service: an id names one instance across the mesh.
    let mut twin = instance.clone();
    twin.service = "again-elsewhere".into();
    let err = mesh.register(twin).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("as an instance of again"), "{err}");
    // Its tombstone holds nothing: the same id registers again over it.
    first.deregister(Some("moving")).await.unwrap();
    let second = mesh.register(instance.clone()).await.unwrap();
    assert_eq!(second.id(), instance.id);
    assert_eq!(mesh.discover("again").len(), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_made_without_per_key_ttls_is_refused_by_name() {
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: prism_mesh::protocol::DEFAULT_BUCKET.to_string(),
        history: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = fast_mesh(&server.url()).connect().await.unwrap_err();
    assert_eq!(err.kind(), prism_mesh::ErrorKind::Setup, "{err}");
    assert!(
        err.to_string().contains("exists without per-message TTL"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_answers_control_requests_until_its_instance_is_deregistered() {
    let server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let admin = fast_mesh(&server.url()).connect().await.unwrap();
    let mut registrations = Vec::new();
    for port in [9201, 9202] {
        let me = owner
            .register(
                ServiceInstance::builder("ctl", "127.0.0.1", port)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        me.set_status(InstanceStatus::Healthy, None).await.unwrap();
        registrations.push(me);
    }
    let (kept, leaving) = (&registrations[0], &registrations[1]);
    for registration in &registrations {
        admin
            .request_maintenance("ctl", registration.id(), true, Some("disk"), Some("ops"))
            .await
            .unwrap();
        assert_eq!(registration.instance().status, InstanceStatus::Maintenance);
    }
    admin
        .request_maintenance("ctl", kept.id(), false, None, Some("ops"))
        .await
        .unwrap();
    assert_eq!(
        kept.instance().status,
        InstanceStatus::Healthy,
        "back to before"
    );

    leaving.deregister(Some("scale down")).await.unwrap();
    // Its owner stops answering for it: a request finds no owner.
    let started = std::time::Instant::now();
    loop {
        match admin
            .request_maintenance("ctl", leaving.id(), true, None, Some("ops"))
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotRegistered => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(5),
                "still answered for a deregistered instance: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other one still answers.
    admin
        .request_maintenance("ctl", kept.id(), true, None, Some("ops"))
        .await
        .unwrap();
    owner.shutdown().await;
    admin.shutdown().await;
}
