//! Hostile input against a real nats-server: what an unauthenticated writer can and cannot
//! do to a mesh by publishing on the bucket's subjects (`$KV.prism-instances.>`) and on the
//! event stream's (`discovery.>`).
//!
//! # What an unauthenticated writer can do (no ACLs, as in these tests)
//!
//! The protocol checks shape, not authority: a peer accepts a bucket message when its key
//! parses, its body decodes, names its own key and respects the limits (protocol.md §7.5).
//! Without NATS permissions on those subjects, anyone connected can therefore:
//!
//! **Succeeds by design (needs ACLs to prevent):**
//! - *Register phantom instances*: a well-formed record on `<service>.<uuid>` is an
//!   instance like any other, and peers send traffic to it until its `Nats-TTL` runs out
//!   (with `Nats-TTL: never`, or no TTL header, it never does).
//! - *Remove live instances*: an empty message with a forged `Nats-Marker-Reason: MaxAge`
//!   (→ Expired, and every peer publishes an `expired` event) or `KV-Operation: DEL`
//!   (→ Deregistered, with a `Prism-Reason` of the attacker's choosing) on a live key takes
//!   it out of every view. Its owner's next heartbeat then conflicts on the revision and
//!   re-asserts the key, so the instance is back within one heartbeat interval: the attack
//!   must be repeated to last, and each round emits Expired/Deregistered + Registered.
//!   Self-preservation (on by default) blunts the forged expiry only: an expiry waits its
//!   settle time (500 ms) and is dropped if the owner writes the key again meanwhile, which a
//!   heartbeating owner often does; a forged tombstone is applied at once.
//! - *Overwrite a live key* with a malformed or spoofed body: views keep the instance they
//!   held (the put is dropped as malformed), but the stored message is gone, so a peer
//!   connecting now does not see the instance until the owner re-asserts (next heartbeat).
//! - *Forge audit history*: any decodable event record on `discovery.>` is returned by
//!   `event_history`, feeds `registry_at`/`diff_registries` and the CLI's replay. A writer
//!   who predicts a `Nats-Msg-Id` (`registered-<id>-<revision>`, `expired-<id>-<revision>`)
//!   can also make the stream drop the real event as a duplicate.
//! - *Exhaust storage*: fill the bucket (with `bucket_max_bytes` set, real registrations
//!   then fail) or the event stream (which discards old events), and wipe every key with
//!   `Nats-Rollup: all` or a purge. Subject permissions do not cover headers.
//!
//! **Fails (what these tests prove):** garbage, truncated, wrongly typed, deeply nested,
//! oversized (up to `max_payload`) and non-UTF-8 bodies; bodies naming another service or
//! id than their key; keys that are not `<service>.<canonical uuid>`; forged removal headers
//! on keys nobody holds. Such messages never panic or stall a peer, are counted in
//! `malformed_dropped` (removals of unknown keys are simply no-ops), and leave the real
//! instances, their status, new registrations and the readable audit trail intact.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use prism_mesh::protocol::{self, EventName, EventRecord, InstanceRecord};
use prism_mesh::{EventKind, InstanceStatus, Mesh, MeshEvent, SelfPreservation, ServiceInstance};
use prism_tests::{fast_mesh, wait_event, wait_view, NatsServer};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Deterministic noise (xorshift64*), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One message to publish and what a peer makes of it.
struct Hostile {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    /// Counted as malformed by a peer that sees it live (a put that fails §7.5).
    malformed: bool,
}

impl Hostile {
    /// A put with the bounded `Nats-TTL` an owner sends, so that peers decode its body
    /// (a put without one is refused before decoding). Long enough to outlive the test,
    /// so a late peer replays every one of them.
    fn put(subject: String, payload: impl Into<Bytes>) -> Hostile {
        Hostile {
            subject,
            headers: prism_tests::put_headers("5m"),
            payload: payload.into(),
            malformed: true,
        }
    }
}

fn record(instance: &ServiceInstance) -> Vec<u8> {
    InstanceRecord {
        v: 1,
        instance: instance.clone().into(),
        ttl_ms: 2000,
        reason: None,
    }
    .encode()
    .unwrap()
}

fn event(instance: &ServiceInstance, event: EventName) -> Vec<u8> {
    EventRecord {
        v: 1,
        event,
        instance: instance.clone().into(),
        previous_status: None,
        reason: Some("forged".into()),
        at: SystemTime::now(),
        origin: "attacker".into(),
    }
    .encode()
    .unwrap()
}

/// MessagePack nested `depth` arrays deep: 100,000 levels overflowed readers' stacks
/// before decoding was depth-limited.
fn deep(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth];
    bytes.push(0xc0);
    bytes
}

/// Well-formed MessagePack of the wrong shape.
fn wrong_shape(noise: &mut Noise, real: &ServiceInstance) -> Vec<u8> {
    match noise.below(6) {
        0 => rmp_serde::to_vec_named(&("orders", 1, [1, 2, 3])).unwrap(),
        1 => rmp_serde::to_vec_named(&serde_json::json!({"v": "1", "instance": []})).unwrap(),
        2 => rmp_serde::to_vec_named(&serde_json::json!({"v": 1, "instance": {"service": 7}}))
            .unwrap(),
        // An event record is not an instance record (it lacks nothing but has the wrong key).
        3 => rmp_serde::to_vec_named(&serde_json::json!({"v": 0, "instance": null})).unwrap(),
        4 => rmp_serde::to_vec_named(real).unwrap(), // a bare instance, no envelope
        _ => rmp_serde::to_vec_named(&vec!["x"; 100]).unwrap(),
    }
}

/// Publishes every message pipelined; returns how many the server stored.
async fn publish_all(js: &jetstream::Context, messages: &[Hostile]) -> Vec<bool> {
    let mut stored = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for m in chunk {
            acks.push(
                js.publish_with_headers(m.subject.clone(), m.headers.clone(), m.payload.clone())
                    .await,
            );
        }
        for ack in acks {
            stored.push(match ack {
                Ok(future) => future.await.is_ok(),
                Err(_) => false,
            });
        }
    }
    stored
}

async fn register(mesh: &Mesh, service: &str) -> prism_mesh::Registration {
    let registration = mesh
        .register(
            ServiceInstance::builder(service, "10.0.0.1", 8080)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    registration
        .set_status(InstanceStatus::Healthy, Some("ready"))
        .await
        .unwrap();
    registration
}

/// Both peers hold exactly `real` (by id), all healthy, and no other instance of their
/// services.
async fn views_hold_exactly(peers: &[&Mesh], real: &[&prism_mesh::Registration]) {
    for peer in peers {
        for service in ["orders", "billing"] {
            let want: HashSet<Uuid> = real
                .iter()
                .filter(|r| r.instance().service == service)
                .map(|r| r.id())
                .collect();
            wait_view(peer, service, WAIT, "the real instances, healthy", |view| {
                view.iter().map(|i| i.id).collect::<HashSet<_>>() == want
                    && view.iter().all(|i| i.status == InstanceStatus::Healthy)
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_messages_is_counted_and_never_harms_real_instances_or_history() {
    let server = NatsServer::start();
    let a = fast_mesh(&server.url()).connect().await.unwrap();
    let b = fast_mesh(&server.url()).connect().await.unwrap();
    let orders1 = register(&a, "orders").await;
    let orders2 = register(&a, "orders").await;
    let billing = register(&b, "billing").await;
    let real = [&orders1, &orders2, &billing];
    views_hold_exactly(&[&a, &b], &real).await;
    let history_before = a.event_history(None).await.unwrap();
    assert!(history_before.len() >= 6, "{history_before:?}");

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let max_payload = client.server_info().max_payload;
    let kv = format!("$KV.{}", protocol::DEFAULT_BUCKET);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let real_instance = orders1.instance();
    let real_record = record(&real_instance);
    let fresh_key = |service: &str| format!("{kv}.{service}.{}", Uuid::new_v4());

    // --- The bucket: 2,400 messages, each on a key of its own unless said otherwise. ---
    let mut bucket: Vec<Hostile> = Vec::new();
    for i in 0..2_400 {
        let m = match i % 12 {
            0 => Hostile::put(fresh_key("ledger"), noise.bytes(i % 700)),
            1 => Hostile::put(fresh_key("ledger"), wrong_shape(&mut noise, &real_instance)),
            2 => {
                let cut = noise.below(real_record.len());
                Hostile::put(fresh_key("orders"), real_record[..cut].to_vec())
            }
            3 => {
                // Bit flips of a real record, on a key of its own.
                let mut bytes = real_record.clone();
                for _ in 0..1 + noise.below(4) {
                    let at = noise.below(bytes.len());
                    bytes[at] ^= 1 << noise.below(8);
                }
                // A flip that leaves a valid record naming the real instance is still
                // spoofed here: the key names another id.
                Hostile::put(fresh_key("orders"), bytes)
            }
            4 => {
                // Spoofed: a valid record of another service/id than its key.
                let mut spoof = ServiceInstance::clone(&real_instance);
                if noise.below(2) == 0 {
                    spoof.service = "billing".into();
                }
                Hostile::put(fresh_key("orders"), record(&spoof))
            }
            5 => {
                // Foreign keys under the bucket: not <service>.<canonical uuid>.
                let id = Uuid::new_v4();
                let key = match noise.below(6) {
                    0 => format!("orders.{}", id.hyphenated().to_string().to_uppercase()),
                    1 => format!("orders.{}", id.simple()),
                    2 => format!("orders.{id}.extra{i}"),
                    3 => format!("not-a-uuid-{i}"),
                    4 => format!("or%ders.{id}"),
                    _ => format!("a.b.c.{i}"),
                };
                let mut body = ServiceInstance::clone(&real_instance);
                body.id = id;
                Hostile::put(format!("{kv}.{key}"), record(&body))
            }
            6 => Hostile::put(fresh_key("ledger"), deep(100_000)),
            7 => {
                // Valid MessagePack in every field but a 1 MB-ish host: decodes, fails §3.3.
                let mut big = ServiceInstance::clone(&real_instance);
                big.id = Uuid::new_v4();
                big.host = "h"
                    .repeat(if i < 100 { max_payload - 4096 } else { 300 })
                    .into();
                let key = format!("{kv}.orders.{}", big.id);
                Hostile::put(key, record(&big))
            }
            8 if i < 50 => {
                // Oversized noise, up to the server's max_payload.
                Hostile::put(fresh_key("ledger"), noise.bytes(max_payload - 1024))
            }
            8 => Hostile::put(fresh_key("ledger"), Bytes::new()),
            9 => {
                // Non-UTF-8 where strings are expected.
                let mut bytes = real_record.clone();
                let at = bytes
                    .windows(6)
                    .position(|w| w == b"orders")
                    .expect("service name in the record");
                bytes[at] = 0xff;
                Hostile::put(fresh_key("orders"), bytes)
            }
            10 => {
                // Forged removal headers on keys nobody holds: no-ops, not counted.
                let mut headers = HeaderMap::new();
                if noise.below(2) == 0 {
                    headers.insert("Nats-Marker-Reason", "MaxAge");
                } else {
                    headers.insert("KV-Operation", "DEL");
                    headers.insert("Prism-Reason", "forged");
                }
                Hostile {
                    subject: fresh_key("orders"),
                    headers,
                    payload: Bytes::new(),
                    malformed: false,
                }
            }
            _ => {
                // Spoofed over the real instance's own key: dropped, the view keeps the
                // instance; the owner's next heartbeat conflicts and re-asserts the key.
                // Keys hit repeatedly are not counted exactly (a consumer may skip a
                // message already replaced), so these are not in `unique_malformed`.
                let mut spoof = ServiceInstance::clone(&real_instance);
                spoof.id = Uuid::new_v4();
                spoof.status = InstanceStatus::Unhealthy;
                let mut m = Hostile::put(format!("{kv}.{}", real_instance.key()), record(&spoof));
                m.malformed = false;
                m
            }
        };
        bucket.push(m);
    }
    // The control: a well-formed record on its own key, sent the same way, must be applied
    // (the path the hostile messages take is live).
    let control = ServiceInstance::builder("control", "10.7.7.7", 7777)
        .build()
        .unwrap();
    let mut control_put = Hostile::put(format!("{kv}.{}", control.key()), record(&control));
    control_put.malformed = false;
    bucket.push(control_put);
    // --- The event stream: 600 messages on discovery.>. ---
    let mut events: Vec<Hostile> = Vec::new();
    let ghost = ServiceInstance::builder("ghost", "10.6.6.6", 666)
        .build()
        .unwrap();
    for i in 0..600 {
        let subject = match i % 4 {
            // The decodable forgeries (payload 6 below) on the ghost's own event subject.
            2 if i % 8 == 6 => format!("discovery.ghost.{}.registered", ghost.id),
            0 => format!("discovery.orders.{}.registered", real_instance.id),
            1 => format!("discovery.ghost.{}.expired", Uuid::new_v4()),
            2 => format!("discovery.x{i}"),
            _ => format!("discovery.a.b.c.d.e.{i}"),
        };
        let payload: Vec<u8> = match i % 8 {
            0 => noise.bytes(i % 300),
            1 => real_record.clone(), // an instance record is not an event record
            2 => deep(100_000),
            3 => Vec::new(),
            4 if i < 40 => noise.bytes(max_payload - 1024),
            4 => wrong_shape(&mut noise, &real_instance),
            5 => {
                let e = event(&ghost, EventName::Registered);
                e[..e.len() - 1 - noise.below(e.len() - 1)].to_vec()
            }
            6 => {
                // Decodable forged events are history as far as any reader can tell.
                event(&ghost, EventName::Registered)
            }
            _ => b"{\"v\":1,\"event\":\"registered\"}".to_vec(),
        };
        events.push(Hostile {
            subject,
            headers: HeaderMap::new(),
            payload: payload.into(),
            malformed: false,
        });
    }

    let started = std::time::Instant::now();
    let stored_bucket = publish_all(&js, &bucket).await;
    let stored_events = publish_all(&js, &events).await;
    let flood_took = started.elapsed();
    let unique_malformed = bucket
        .iter()
        .zip(&stored_bucket)
        .filter(|(m, stored)| m.malformed && **stored)
        .count() as u64;
    let stored_bucket_count = stored_bucket.iter().filter(|s| **s).count();
    let stored_event_count = stored_events.iter().filter(|s| **s).count();
    // The oversized ones fit max_payload, so the server stores them all.
    assert_eq!(
        stored_bucket_count,
        bucket.len(),
        "bucket refused some messages"
    );
    assert_eq!(
        stored_event_count,
        events.len(),
        "event stream refused some messages"
    );
    // What a reader takes for history: decodable, on the subject its payload names.
    let forged_decodable = stored_events
        .iter()
        .zip(&events)
        .filter(|(stored, m)| {
            **stored
                && EventRecord::decode(&m.payload).is_ok_and(|e| {
                    m.subject
                        == format!(
                            "discovery.{}.{}.{}",
                            e.instance.service,
                            e.instance.id,
                            e.event.as_str()
                        )
                })
        })
        .count();
    assert!(forged_decodable > 0);

    // Every peer sees every stored malformed put and counts it (a peer that resynced in the
    // meantime counts some twice), and keeps going: no panic, no stall.
    for peer in [&a, &b] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while peer.stats().malformed_dropped < unique_malformed {
            assert!(
                tokio::time::Instant::now() < deadline,
                "malformed_dropped {} < {unique_malformed}",
                peer.stats().malformed_dropped
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for peer in [&a, &b] {
        wait_view(peer, "control", WAIT, "the control record", |v| {
            v.len() == 1 && v[0].id == control.id
        })
        .await;
    }
    // Real instances: still there, still healthy (re-asserted where spoofs overwrote them).
    views_hold_exactly(&[&a, &b], &real).await;
    for peer in [&a, &b] {
        assert!(peer.discover("ledger").is_empty());
        assert!(peer.discover("ghost").is_empty());
    }

    // A registration after the flood propagates, and a late peer replays the flooded
    // bucket unharmed.
    let mut b_events = b.subscribe();
    let late_instance = register(&a, "billing").await;
    wait_event(
        &mut b_events,
        WAIT,
        "registration after the flood",
        |e| matches!(e, MeshEvent::Registered { instance } if instance.id == late_instance.id()),
    )
    .await;
    let late_peer = fast_mesh(&server.url()).connect().await.unwrap();
    views_hold_exactly(
        &[&a, &b, &late_peer],
        &[&orders1, &orders2, &billing, &late_instance],
    )
    .await;
    // Every malformed put is still stored (a key of its own, a TTL longer than the test).
    assert!(
        late_peer.stats().malformed_dropped >= unique_malformed,
        "a late peer counted {} of {unique_malformed} stored malformed puts",
        late_peer.stats().malformed_dropped
    );

    // The audit trail: every real event before the flood, in order, then the forged but
    // decodable ones and the new registration; nothing undecodable.
    let history = b.event_history(None).await.unwrap();
    let key = |e: &EventRecord| (e.event, e.instance.id, e.at);
    let mut before = history_before.iter().map(key).peekable();
    for record in &history {
        if before.peek() == Some(&key(record)) {
            before.next();
        }
    }
    assert!(
        before.peek().is_none(),
        "real events lost: {:?}",
        before.collect::<Vec<_>>()
    );
    let ghosts = history
        .iter()
        .filter(|e| e.instance.service == "ghost")
        .count();
    assert_eq!(ghosts, forged_decodable);
    assert!(history
        .iter()
        .any(|e| e.event == EventName::Registered && e.instance.id == late_instance.id()));

    eprintln!(
        "flood: {} bucket + {} event messages in {flood_took:?}; malformed_dropped a={} b={} \
         late={} (>= {unique_malformed}); history {} records ({} forged, decodable)",
        bucket.len(),
        events.len(),
        a.stats().malformed_dropped,
        b.stats().malformed_dropped,
        late_peer.stats().malformed_dropped,
        history.len(),
        forged_decodable,
    );
    late_peer.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The attacks that succeed without ACLs, pinned down so the ACL work knows what it closes:
/// a forged expiry marker or tombstone removes a live instance from every view until its
/// owner re-asserts it, and a well-formed record from anyone is a registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_removal_headers_remove_a_live_instance_until_its_owner_reasserts_it() {
    let server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    // Without self-preservation, so the forged expiry is applied as soon as it is seen
    // (with it, the owner's re-assertion may win the 500 ms settle time and hide it).
    let watcher = fast_mesh(&server.url())
        .self_preservation(SelfPreservation::disabled())
        .connect()
        .await
        .unwrap();
    let guarded = fast_mesh(&server.url()).connect().await.unwrap();
    let victim = register(&owner, "orders").await;
    wait_view(&watcher, "orders", WAIT, "the victim, healthy", |v| {
        v.len() == 1 && v[0].status == InstanceStatus::Healthy
    })
    .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let subject = format!(
        "$KV.{}.{}",
        protocol::DEFAULT_BUCKET,
        victim.instance().key()
    );
    let mut events = watcher.subscribe();

    // A forged `MaxAge` marker: every view reports the instance expired...
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Marker-Reason", "MaxAge");
    js.publish_with_headers(subject.clone(), headers, Bytes::new())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_event(
        &mut events,
        WAIT,
        "forged expiry",
        |e| matches!(e, MeshEvent::Expired { instance } if instance.id == victim.id()),
    )
    .await;
    // ...until the owner's next heartbeat conflicts and re-asserts it, status intact.
    wait_event(
        &mut events,
        WAIT,
        "re-assertion after the forged expiry",
        |e| {
            matches!(e, MeshEvent::Registered { instance }
            if instance.id == victim.id() && instance.status == InstanceStatus::Healthy)
        },
    )
    .await;

    // A forged delete, with a reason of the attacker's choosing: without the TTL an owner's
    // tombstone carries, it is a delete from outside the mesh, and says so.
    let mut headers = HeaderMap::new();
    headers.insert("KV-Operation", "DEL");
    headers.insert("Prism-Reason", "forged");
    js.publish_with_headers(subject.clone(), headers, Bytes::new())
        .await
        .unwrap()
        .await
        .unwrap();
    let removed = wait_event(&mut events, WAIT, "forged deregistration", |e| {
        e.kind() == EventKind::Deregistered
    })
    .await;
    assert!(
        matches!(&removed, MeshEvent::Deregistered { instance, reason }
            if instance.id == victim.id()
                && reason.as_deref().is_some_and(|r| r.contains("outside the mesh"))),
        "{removed:?}"
    );
    wait_event(
        &mut events,
        WAIT,
        "re-assertion after the forged tombstone",
        |e| matches!(e, MeshEvent::Registered { instance } if instance.id == victim.id()),
    )
    .await;
    wait_view(&watcher, "orders", WAIT, "the victim back, healthy", |v| {
        v.len() == 1 && v[0].id == victim.id() && v[0].status == InstanceStatus::Healthy
    })
    .await;
    // The peer can see the re-asserted key before the owner has its ack and counts it.
    let deadline = std::time::Instant::now() + WAIT;
    while owner.stats().reasserts < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", owner.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A peer with self-preservation ends up in the same place.
    wait_view(&guarded, "orders", WAIT, "the victim back, healthy", |v| {
        v.len() == 1 && v[0].id == victim.id() && v[0].status == InstanceStatus::Healthy
    })
    .await;

    // A well-formed record from anyone is an instance: a phantom that lives as long as the
    // TTL the writer chose.
    let phantom = ServiceInstance::builder("orders", "10.6.6.6", 666)
        .status(InstanceStatus::Healthy)
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-TTL", "2s");
    js.publish_with_headers(
        format!("$KV.{}.{}", protocol::DEFAULT_BUCKET, phantom.key()),
        headers,
        Bytes::from(record(&phantom)),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_view(&watcher, "orders", WAIT, "the phantom", |v| {
        v.iter().any(|i| i.id == phantom.id)
    })
    .await;
    wait_event(
        &mut events,
        WAIT,
        "the phantom's expiry",
        |e| matches!(e, MeshEvent::Expired { instance } if instance.id == phantom.id),
    )
    .await;
    assert_eq!(watcher.stats().malformed_dropped, 0);
    owner.shutdown().await;
    watcher.shutdown().await;
    guarded.shutdown().await;
}
