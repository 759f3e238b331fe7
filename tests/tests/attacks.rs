//! The attacks of `docs/security.md`, one test each, against a real nats-server: under the
//! shipped `nats/auth.conf` the attacker is a raw client with a service's credentials (it
//! follows the server's rules, not ours); without permissions, any client. Each test
//! asserts what the views and the audit trail hold afterwards, and prints how fast the
//! owners recovered (the figures in `docs/security.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use prism_mesh::protocol::{EventName, InstanceRecord, PROTOCOL_VERSION};
use prism_mesh::{ErrorKind, InstanceStatus, Mesh, MeshEvent, NatsOptions, ServiceInstance};
use prism_tests::{
    options_as, put_headers, raw_as, server_with_auth_conf, test_options, wait_view, NatsServer,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);
const KV: &str = "$KV.prism-instances";
const EVENTS: &str = "PRISM_DISCOVERY";

/// A mesh whose owners heartbeat every 3 s: a key back well before that was restored on
/// sight, not by a heartbeat.
fn slow_heartbeats(options: NatsOptions) -> prism_mesh::MeshBuilder {
    Mesh::builder()
        .nats(options)
        .instance_ttl(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_secs(3))
}

async fn mesh_as(server: &NatsServer, user: &str) -> Mesh {
    slow_heartbeats(options_as(&server.url(), user))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"))
}

/// The admin's mesh (which creates the bucket and the stream), and billing's with one
/// registered instance: the victim.
async fn billing_with_a_victim(server: &NatsServer) -> (Mesh, Mesh, prism_mesh::Registration) {
    let admin = mesh_as(server, "admin").await;
    let billing = mesh_as(server, "billing").await;
    let victim = billing
        .register(instance("billing", "10.0.0.2"))
        .await
        .unwrap();
    (admin, billing, victim)
}

/// A mesh with a 2 s TTL, so expiries come within the test.
async fn expiring_mesh_as(server: &NatsServer, user: &str) -> Mesh {
    Mesh::builder()
        .nats(options_as(&server.url(), user))
        .instance_ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"))
}

fn instance(service: &str, host: &str) -> ServiceInstance {
    ServiceInstance::builder(service, host, 8080)
        .status(InstanceStatus::Healthy)
        .build()
        .unwrap()
}

/// A valid record of `instance` as an owner would write it.
fn record_of(instance: ServiceInstance) -> Bytes {
    Bytes::from(
        InstanceRecord {
            v: PROTOCOL_VERSION,
            instance: Arc::new(instance),
            ttl_ms: 10_000,
            reason: None,
        }
        .encode()
        .unwrap(),
    )
}

/// Publishes and waits for the stream's acknowledgement.
async fn stored(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
) -> std::result::Result<jetstream::publish::PublishAck, String> {
    match js.publish_with_headers(subject, headers, body).await {
        Ok(ack) => ack.await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// How long until the last message of `key` is a value its owner wrote after `after`
/// (a stream sequence), polling the stream as the admin.
async fn restored(admin: &jetstream::Context, key: &str, after: u64, since: Instant) -> Duration {
    let stream = admin.get_stream("KV_prism-instances").await.unwrap();
    loop {
        if let Ok(last) = stream
            .get_last_raw_message_by_subject(&format!("{KV}.{key}"))
            .await
        {
            let removal = last.headers.get("KV-Operation").is_some()
                || last.headers.get("Nats-Marker-Reason").is_some();
            if last.sequence > after && !removal {
                return since.elapsed();
            }
        }
        assert!(since.elapsed() < WAIT, "{key} was never restored");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every stored event of `instance`, oldest first: (subject's event, headers).
async fn trail(admin: &jetstream::Context, id: Uuid) -> Vec<(String, async_nats::HeaderMap)> {
    let mut stream = admin.get_stream(EVENTS).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut events = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let subject = message.subject.to_string();
        if subject.contains(&id.to_string()) {
            let event = subject.rsplit('.').next().unwrap().to_string();
            events.push((event, message.headers));
        }
    }
    events
}

fn names(trail: &[(String, async_nats::HeaderMap)]) -> Vec<&str> {
    trail.iter().map(|(event, _)| event.as_str()).collect()
}

/// Removals and expiries `events` reported for `id` so far.
fn losses(events: &mut prism_mesh::EventStream, id: Uuid) -> Vec<String> {
    let mut lost = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        match &event {
            MeshEvent::Expired { instance } | MeshEvent::Deregistered { instance, .. }
                if instance.id == id =>
            {
                lost.push(format!("{event:?}"))
            }
            _ => {}
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_id_preemption_by_a_service_that_watched_the_victims_ids_drops_none_of_its_events() {
    let server = server_with_auth_conf();
    let (admin, billing, victim) = billing_with_a_victim(&server).await;
    victim
        .set_status(InstanceStatus::Unhealthy, Some("warming"))
        .await
        .unwrap();

    // The attacker reads the victim's ids so far (it may read the whole trail) and claims
    // every id the next events could carry if ids followed a pattern: the same shapes with
    // the next revisions, with and without the suffixes it saw.
    let (orders, _) = raw_as(&server.url(), "orders").await;
    let (admin_js, _) = raw_as(&server.url(), "admin").await;
    let seen: Vec<String> = trail(&admin_js, victim.id())
        .await
        .iter()
        .filter_map(|(_, headers)| headers.get("Nats-Msg-Id").map(|v| v.to_string()))
        .collect();
    assert_eq!(seen.len(), 2, "registered and status events: {seen:?}");
    eprintln!("ids seen: {seen:?}");
    let info = orders
        .get_stream("KV_prism-instances")
        .await
        .unwrap()
        .cached_info()
        .clone();
    let next = info.state.last_sequence + 1;
    let suffixes: Vec<String> = seen
        .iter()
        // `<event>-<uuid: 5 parts>-<revision>[-<suffix>]`
        .filter_map(|id| id.split('-').nth(7).map(str::to_string))
        .collect();
    let mut claimed = 0;
    for revision in next..next + 20 {
        for event in ["status", "updated", "deregistered", "registered"] {
            let base = format!("{event}-{}-{revision}", victim.id());
            let mut ids = vec![base.clone()];
            ids.extend(suffixes.iter().map(|s| format!("{base}-{s}")));
            for id in ids {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                let subject = format!("discovery.orders.{}.registered", Uuid::new_v4());
                stored(&orders, subject, headers, Bytes::from_static(b"x"))
                    .await
                    .expect("orders may publish on its own subjects");
                claimed += 1;
            }
        }
    }

    victim
        .set_status(InstanceStatus::Maintenance, Some("leaving"))
        .await
        .unwrap();
    victim.update(|i| i.weight = 7).await.unwrap();
    victim.deregister(Some("done")).await.unwrap();
    let trail = trail(&admin_js, victim.id()).await;
    eprintln!(
        "{claimed} ids claimed; the victim's trail: {:?}",
        names(&trail)
    );
    assert_eq!(
        names(&trail),
        ["registered", "status", "status", "updated", "deregistered"],
        "an event of the victim was dropped or forged"
    );
    billing.shutdown().await;
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cannot_forge_the_expiry_of_another_services_instance() {
    let server = server_with_auth_conf();
    let (admin, billing, victim) = billing_with_a_victim(&server).await;
    let (orders, reported) = raw_as(&server.url(), "orders").await;

    let forged = prism_mesh::protocol::EventRecord {
        v: PROTOCOL_VERSION,
        event: EventName::Expired,
        instance: victim.instance(),
        previous_status: None,
        reason: Some("ttl".to_string()),
        at: std::time::SystemTime::now(),
        origin: "orders".to_string(),
    };
    let subject = format!("discovery.billing.{}.expired", victim.id());
    let result = stored(
        &orders,
        subject.clone(),
        async_nats::HeaderMap::new(),
        Bytes::from(forged.encode().unwrap()),
    )
    .await;
    assert!(result.is_err(), "the server stored orders' forged expiry");
    assert!(
        reported
            .lock()
            .unwrap()
            .iter()
            .any(|text| text.contains(&subject)),
        "no permission violation reported: {:?}",
        reported.lock().unwrap()
    );
    let (admin_js, _) = raw_as(&server.url(), "admin").await;
    assert_eq!(names(&trail(&admin_js, victim.id()).await), ["registered"]);
    let now = admin
        .registry_at(std::time::SystemTime::now())
        .await
        .unwrap();
    assert!(now.contains_key(&victim.id()), "the trail lost billing");
    billing.shutdown().await;
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cannot_ask_another_services_owner_to_deregister_but_the_admin_can() {
    let server = server_with_auth_conf();
    let (admin, billing, victim) = billing_with_a_victim(&server).await;
    let orders = mesh_as(&server, "orders").await;
    let err = orders
        .request_deregister("billing", victim.id(), Some("hostile"), Some("orders"))
        .await
        .expect_err("orders asked billing's owner to deregister");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(victim.is_live());
    admin
        .request_maintenance(
            "billing",
            victim.id(),
            true,
            Some("patching"),
            Some("admin"),
        )
        .await
        .expect("the admin's request reaches billing's owner");
    assert_eq!(
        victim.instance().status,
        prism_mesh::InstanceStatus::Maintenance
    );
    for mesh in [orders, billing, admin] {
        mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_witness_may_write_a_checkpoint_so_no_service_can_restate_the_registry() {
    let server = server_with_auth_conf();
    let (admin, billing, victim) = billing_with_a_victim(&server).await;
    let orders = mesh_as(&server, "orders").await;
    let err = orders
        .write_checkpoint()
        .await
        .expect_err("a service wrote a checkpoint stating every service's instances");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let witness = mesh_as(&server, "witness").await;
    let first = witness.write_checkpoint().await.unwrap();
    assert!(first.is_some(), "the witness's checkpoint was not stored");
    let now = orders.past_registry(None).await.unwrap();
    assert_eq!(
        now.checkpoint(),
        first,
        "readers start from the witness's checkpoint"
    );
    assert!(now.get(&victim.id()).is_some());
    for mesh in [orders, witness, billing, admin] {
        mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expiry_is_recorded_once_by_a_peer_allowed_to_record_it() {
    let server = server_with_auth_conf();
    // The admin creates the bucket and the stream, and leaves: it may record any expiry.
    mesh_as(&server, "admin").await.shutdown().await;
    // Peers that see both expiries: another billing instance's mesh (may record billing's),
    // orders (may record neither of the two below) and the witness (may record all).
    let billing_peer = expiring_mesh_as(&server, "billing").await;
    let orders_peer = expiring_mesh_as(&server, "orders").await;
    let witness = expiring_mesh_as(&server, "witness").await;

    let billing_owner = expiring_mesh_as(&server, "billing").await;
    let billing_gone = billing_owner
        .register(instance("billing", "10.0.0.2"))
        .await
        .unwrap();
    // The last instance of a service no other billing peer runs: only the witness may
    // record its expiry (orders is not that service either).
    let payments = expiring_mesh_as(&server, "admin").await;
    let payments_gone = payments
        .register(instance("payments", "10.0.0.3"))
        .await
        .unwrap();
    for peer in [&billing_peer, &orders_peer, &witness] {
        wait_view(peer, "billing", WAIT, "billing", |v| v.len() == 1).await;
        wait_view(peer, "payments", WAIT, "payments", |v| v.len() == 1).await;
    }
    billing_owner.close_without_deregistering().await;
    payments.close_without_deregistering().await;
    for peer in [&billing_peer, &orders_peer, &witness] {
        wait_view(peer, "billing", WAIT, "billing expired", |v| v.is_empty()).await;
        wait_view(peer, "payments", WAIT, "payments expired", |v| v.is_empty()).await;
    }

    let (admin_js, _) = raw_as(&server.url(), "admin").await;
    let deadline = Instant::now() + WAIT;
    for (gone, recorders) in [
        (
            billing_gone.id(),
            vec![billing_peer.peer_id(), witness.peer_id()],
        ),
        (payments_gone.id(), vec![witness.peer_id()]),
    ] {
        let expired = loop {
            let expired: Vec<_> = trail(&admin_js, gone)
                .await
                .into_iter()
                .filter(|(event, _)| event == "expired")
                .collect();
            if !expired.is_empty() || Instant::now() > deadline {
                break expired;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Late recorders had time to try too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = trail(&admin_js, gone)
            .await
            .into_iter()
            .filter(|(event, _)| event == "expired")
            .count();
        assert_eq!(
            (expired.len(), again),
            (1, 1),
            "expiry of {gone} recorded other than once"
        );
        let origin = expired[0].1.get("Prism-Origin").unwrap().to_string();
        assert!(
            recorders.contains(&origin.as_str()),
            "recorded by {origin}, not one of {recorders:?}"
        );
    }
    assert_eq!(
        orders_peer.stats().event_publish_failures,
        0,
        "a refused expiry is not a failure: orders leaves it to others"
    );
    for peer in [billing_peer, orders_peer, witness] {
        peer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollup_with_a_one_second_ttl_on_its_own_key_takes_no_live_instance_away() {
    let server = server_with_auth_conf();
    let (admin, billing, victim) = billing_with_a_victim(&server).await;
    let observer = mesh_as(&server, "observer").await;
    wait_view(&observer, "billing", WAIT, "billing", |v| v.len() == 1).await;
    let mut events = observer.subscribe();

    let (orders, _) = raw_as(&server.url(), "orders").await;
    let own = instance("orders", "10.0.0.9");
    let key = format!("{KV}.{}", own.key());
    let mut headers = put_headers("1s");
    headers.insert("Nats-Rollup", "all");
    let started = Instant::now();
    let ack = stored(&orders, key, headers, record_of(own))
        .await
        .expect("nats-server accepts a rollup on one's own key");
    let (admin_js, _) = raw_as(&server.url(), "admin").await;
    let back = restored(&admin_js, &victim.instance().key(), ack.sequence, started).await;
    eprintln!("billing's key restored {back:?} after the rollup");
    assert!(
        back < Duration::from_secs(1),
        "restored after {back:?}: by a heartbeat (3 s), not on sight"
    );
    // A peer that joins now sees the instance.
    let fresh = mesh_as(&server, "observer").await;
    assert_eq!(
        fresh.discover("billing").len(),
        1,
        "a fresh peer misses billing"
    );

    // The rollup's own record expires 1 s later: nothing else may go with it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        losses(&mut events, victim.id()).is_empty(),
        "a view reported billing gone"
    );
    assert_eq!(observer.discover("billing").len(), 1);
    assert!(victim.is_live());
    for mesh in [fresh, observer, billing, admin] {
        mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permissions_forged_removals_and_hijacks_are_undone_at_once() {
    let server = NatsServer::start();
    let owner = slow_heartbeats(test_options(&server.url()))
        .connect()
        .await
        .unwrap();
    let peer = slow_heartbeats(test_options(&server.url()))
        .connect()
        .await
        .unwrap();
    let victim = owner
        .register(instance("billing", "10.0.0.2"))
        .await
        .unwrap();
    wait_view(&peer, "billing", WAIT, "billing", |v| v.len() == 1).await;
    let mut events = peer.subscribe();
    let attacker = async_nats::connect(server.url()).await.unwrap();
    let attacker = jetstream::new(attacker);
    let admin = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let key = format!("{KV}.{}", victim.instance().key());

    // A forged expiry marker, long before the owner's record could expire: held as
    // suspect by peers, and written over by the owner.
    let mut marker = async_nats::HeaderMap::new();
    marker.insert("Nats-Marker-Reason", "MaxAge");
    marker.insert("Nats-TTL", "5s");
    let started = Instant::now();
    let ack = stored(&attacker, key.clone(), marker, Bytes::new())
        .await
        .unwrap();
    let back = restored(&admin, &victim.instance().key(), ack.sequence, started).await;
    eprintln!("forged MaxAge marker: restored after {back:?}");
    assert!(back < Duration::from_secs(1), "restored after {back:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        losses(&mut events, victim.id()).is_empty(),
        "a forged expiry marker made a peer report the instance gone"
    );

    // Forged deregistrations: without permissions any client may write them, and peers
    // cannot tell them from the owner's; the owner restores the key at once.
    for (operation, headers) in [
        ("DEL", "KV-Operation: DEL"),
        ("PURGE", "KV-Operation: PURGE"),
    ] {
        let mut forged = async_nats::HeaderMap::new();
        forged.insert("KV-Operation", operation);
        let started = Instant::now();
        let ack = stored(&attacker, key.clone(), forged, Bytes::new())
            .await
            .unwrap();
        let back = restored(&admin, &victim.instance().key(), ack.sequence, started).await;
        eprintln!("forged {headers}: restored after {back:?}");
        assert!(
            back < Duration::from_secs(1),
            "{operation}: restored after {back:?}"
        );
        wait_view(&peer, "billing", WAIT, "billing back", |v| v.len() == 1).await;
    }

    // A hijack: the key rewritten to point at the attacker's host. Peers report it as an
    // address change, and the owner writes its own record back.
    let mut stolen = (*victim.instance()).clone();
    stolen.host = "6.6.6.6".into();
    let started = Instant::now();
    let ack = stored(
        &attacker,
        key.clone(),
        put_headers("10s"),
        record_of(stolen),
    )
    .await
    .unwrap();
    let back = restored(&admin, &victim.instance().key(), ack.sequence, started).await;
    eprintln!("hijack: restored after {back:?}");
    assert!(back < Duration::from_secs(1), "restored after {back:?}");
    wait_view(&peer, "billing", WAIT, "the owner's address back", |v| {
        v.len() == 1 && v[0].host == "10.0.0.2"
    })
    .await;
    // Peers reported the hijack as an address change, and the restore as another.
    let mut moves = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        if let MeshEvent::Updated {
            previous, instance, ..
        } = &event
        {
            if previous.host != instance.host {
                moves.push((previous.host.to_string(), instance.host.to_string()));
            }
        }
    }
    assert_eq!(
        moves,
        [
            ("10.0.0.2".to_string(), "6.6.6.6".to_string()),
            ("6.6.6.6".to_string(), "10.0.0.2".to_string())
        ]
    );
    assert!(victim.is_live());
    assert!(owner.stats().restores >= 4, "{:?}", owner.stats());
    owner.shutdown().await;
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_can_read_another_users_replies() {
    let server = server_with_auth_conf();
    let admin = mesh_as(&server, "admin").await;
    let (billing, reported) = raw_as(&server.url(), "billing").await;
    let client = billing.client();
    let mut sniffers = Vec::new();
    for subject in ["_INBOX.>", "_INBOX_orders.>", ">"] {
        sniffers.push((subject, client.subscribe(subject).await.unwrap()));
    }
    client.flush().await.unwrap();
    // orders works: every JetStream reply it gets goes to its own inbox.
    let orders = mesh_as(&server, "orders").await;
    orders
        .register(instance("orders", "10.0.0.1"))
        .await
        .unwrap();
    orders.event_history(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (subject, mut sniffer) in sniffers {
        assert!(
            sniffer.next().now_or_never().flatten().is_none(),
            "billing read a message on {subject}"
        );
        assert!(
            reported
                .lock()
                .unwrap()
                .iter()
                .any(|text| text.contains("Subscription") && text.contains(subject)),
            "no refusal of {subject}: {:?}",
            reported.lock().unwrap()
        );
    }
    orders.shutdown().await;
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_user_connects_at_once_and_hears_when_the_bucket_is_missing() {
    let server = server_with_auth_conf();
    let started = Instant::now();
    let err = Mesh::builder()
        .nats(options_as(&server.url(), "observer"))
        .connect()
        .await
        .expect_err("nothing to watch yet, and the observer may not create it");
    let took = started.elapsed();
    eprintln!("observer on a fresh server: {took:?}: {err}");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string()
            .contains("does not exist and this user may not create it"),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let admin = mesh_as(&server, "admin").await;
    for user in ["observer", "orders", "witness"] {
        let started = Instant::now();
        let mesh = mesh_as(&server, user).await;
        let took = started.elapsed();
        eprintln!("{user} connects in {took:?}");
        assert!(took < Duration::from_secs(1), "{user} took {took:?}");
        mesh.shutdown().await;
    }
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_url_work_and_an_option_that_cannot_apply_is_an_error() {
    let server = server_with_auth_conf();
    let admin = mesh_as(&server, "admin").await;
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let url = format!("nats://orders:orders-pw@127.0.0.1:{port}");
    let orders = slow_heartbeats(test_options(&url).inbox_prefix("_INBOX_orders"))
        .connect()
        .await
        .expect("user and password from the url");
    orders
        .register(instance("orders", "10.0.0.1"))
        .await
        .unwrap();

    let err = Mesh::builder()
        .nats(test_options(&server.url()).tls_ca("/etc/ssl/certs/ca.pem"))
        .connect()
        .await
        .expect_err("a CA file for a plain nats:// url cannot apply");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("tls_ca /etc/ssl/certs/ca.pem"),
        "{err}"
    );

    let err = Mesh::builder()
        .nats(test_options(&url).user_password("orders", "orders-pw"))
        .connect()
        .await
        .expect_err("credentials twice");
    assert!(err.to_string().contains("credentials given twice"), "{err}");
    orders.shutdown().await;
    admin.shutdown().await;
}
