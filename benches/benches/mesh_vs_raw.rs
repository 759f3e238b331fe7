//! prism-mesh against the raw NATS substrate, measured in the same run on the same server.
//!
//! `cargo bench -p prism-benches` (env: PRISM_BENCH_SAMPLES=2000, PRISM_BENCH_COLD=100000,
//! PRISM_BENCH_REGISTRATIONS=20000, PRISM_BENCH_COLD_ROUNDS=5,
//! PRISM_BENCH_ONLY=latency,throughput,expiry,cold,failover,
//! PRISM_BENCH_THROUGHPUT_ROUNDS=3, PRISM_BENCH_SYNC=default|always,
//! PRISM_BENCH_EXPIRY_TTLS=1,2,10,
//! PRISM_BENCH_FAILOVER_CHANGES=4, PRISM_BENCH_FAILOVER_TTL=3s,
//! PRISM_BENCH_FAILOVER_TAIL_SECS=17). Prints a table of figures and ratios (mesh / raw);
//! `docs/benchmarks.md` records results and how to read them.

use prism_benches::{allocations, env_usize, owner_record, percentile, CountingAllocator};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prism_mesh::protocol::{EventName, EventRecord, InstanceRecord, PROTOCOL_VERSION};
use prism_mesh::{EventKind, Mesh, MeshEvent, NatsOptions, ServiceInstance};
use prism_tests::NatsServer;
use tokio::task::JoinHandle;

mod failover;

const RAW_BUCKET: &str = "raw-bench";
/// A fresh bucket for raw writes shaped like prism-mesh's (as fresh as the mesh's own).
const SHAPED_BUCKET: &str = "raw-instances";
/// A bucket of its own, so the cold view holds exactly the populated instances.
const COLD_BUCKET: &str = "prism-cold";
const WINDOW: usize = 512;

/// For the allocations-per-registration figure (added 2026-11-26, seventh session).
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

struct Row {
    figure: String,
    mesh: String,
    raw: String,
    ratio: f64,
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn raw_bucket(js: &jetstream::Context) -> kv::Store {
    bucket_with_ttls(js, RAW_BUCKET).await
}

/// A KV bucket as prism-mesh makes one: history 1, per-key TTLs with limit markers.
async fn bucket_with_ttls(js: &jetstream::Context, name: &str) -> kv::Store {
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 1,
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .await
    .expect("raw bucket")
}

fn options(url: &str) -> NatsOptions {
    NatsOptions::new(url).request_timeout(Duration::from_secs(30))
}

/// Registration at one peer to visible in another peer's view; raw: KV put on one
/// connection to a KV watch on another (the mesh's owner and peer have a connection each).
/// Both sides are warmed up, and samples alternate between them (which goes first too), so
/// neither always runs on a fresher server; each sample ends when the other side sees the
/// write, whatever the writer is still waiting for.
async fn latency(url: &str, js: &jetstream::Context, samples: usize, rows: &mut Vec<Row>) {
    let store = raw_bucket(js).await;
    let watcher = jetstream::new(async_nats::connect(url).await.expect("raw watcher"));
    let mut watch = watcher
        .get_key_value(RAW_BUCKET)
        .await
        .expect("raw bucket")
        .watch(">")
        .await
        .expect("raw watch");
    let payload = Bytes::from(vec![b'x'; 200]);
    // A TTL longer than the run: the figure is registration latency, not heartbeat load
    // from the instances registered by earlier samples (the raw side has none either).
    let owner = Mesh::builder()
        .nats(options(url))
        .instance_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .connect()
        .await
        .expect("owner");
    let peer = Mesh::builder()
        .nats(options(url))
        .connect()
        .await
        .expect("peer");
    let mut events = peer.subscribe_filtered(EventKind::Registered.into());

    let warm_up = (samples / 10).max(5);
    let mut raw = Vec::with_capacity(samples);
    let mut mesh = Vec::with_capacity(samples);
    for n in 0..warm_up + samples {
        let key = format!("k{n}");
        let raw_sample = async {
            let started = Instant::now();
            let put = store.put(&key, payload.clone());
            let seen = async {
                loop {
                    let entry = watch
                        .next()
                        .await
                        .expect("watch open")
                        .expect("watch entry");
                    if entry.key == key {
                        return started.elapsed();
                    }
                }
            };
            let (put, elapsed) = tokio::join!(put, seen);
            put.expect("raw put");
            elapsed
        };
        let instance = ServiceInstance::builder("latency", "10.0.0.1", (n % 60000) as u16)
            .build()
            .expect("instance");
        let id = instance.id;
        let mesh_sample = async {
            let started = Instant::now();
            let register = owner.register(instance);
            let seen = async {
                loop {
                    if let Some(MeshEvent::Registered { instance }) = events.next().await {
                        if instance.id == id {
                            return started.elapsed();
                        }
                    }
                }
            };
            let (registration, elapsed) = tokio::join!(register, seen);
            registration.expect("register");
            elapsed
        };
        let (r, m) = if n % 2 == 0 {
            let r = raw_sample.await;
            (r, mesh_sample.await)
        } else {
            let m = mesh_sample.await;
            (raw_sample.await, m)
        };
        if n >= warm_up {
            raw.push(r);
            mesh.push(m);
        }
    }
    owner.shutdown().await;
    peer.shutdown().await;
    raw.sort();
    mesh.sort();
    for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
        let (m, r) = (percentile(&mesh, p), percentile(&raw, p));
        rows.push(Row {
            figure: format!(
                "register -> visible at another peer, {name} ({samples} samples alternating with raw's, after {warm_up} each to warm up)"
            ),
            mesh: ms(m),
            raw: ms(r),
            ratio: m.as_secs_f64() / r.as_secs_f64(),
        });
    }
}

/// Publishes every `(subject, payload)` with `Nats-TTL: ttl`, keeping at most `WINDOW`
/// acks in flight (awaiting thousands of publishes without draining acks hangs).
async fn publish_windowed(
    js: &jetstream::Context,
    ttl: &str,
    messages: impl Iterator<Item = (String, Bytes)>,
) {
    let mut in_flight = FuturesUnordered::new();
    for (subject, payload) in messages {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-TTL", ttl);
        let ack = js
            .publish_with_headers(subject, headers, payload)
            .await
            .expect("publish");
        in_flight.push(std::future::IntoFuture::into_future(ack));
        while in_flight.len() >= WINDOW {
            in_flight.next().await.expect("ack").expect("ack ok");
        }
    }
    while let Some(ack) = in_flight.next().await {
        ack.expect("ack ok");
    }
}

/// Reads one figure of a round.
type Figure = fn(&ThroughputRound) -> f64;

/// One round of the throughput figures: registrations per second (and allocations per
/// registration) of the mesh and of each raw reference, each on a bucket of its own.
struct ThroughputRound {
    mesh: f64,
    mesh_allocations: f64,
    raw: f64,
    same_writes: f64,
    watched: f64,
    watched_allocations: f64,
    shaped: f64,
}

/// Registrations per second with 512 in flight, against raw references doing less, the same
/// writes, the same writes with a watcher, and prism-mesh's own messages with a watcher.
/// `rounds` rounds alternate which side runs first (each on fresh buckets); medians printed.
async fn throughput(
    url: &str,
    js: &jetstream::Context,
    count: usize,
    rounds: usize,
    rows: &mut Vec<Row>,
) {
    js.get_or_create_stream(jetstream::stream::Config {
        name: "RAW_EVENTS".into(),
        subjects: vec!["raw-events.>".into()],
        ..Default::default()
    })
    .await
    .expect("raw event stream");
    let mut results = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (mesh, mesh_allocations, raw) = if round % 2 == 0 {
            let raw = raw_throughput(js, count, round).await;
            let (mesh, allocations) = mesh_throughput(url, count, round).await;
            (mesh, allocations, raw)
        } else {
            let (mesh, allocations) = mesh_throughput(url, count, round).await;
            (mesh, allocations, raw_throughput(js, count, round).await)
        };
        results.push(ThroughputRound {
            mesh,
            mesh_allocations,
            ..raw
        });
    }
    let median = |f: fn(&ThroughputRound) -> f64| {
        let mut values: Vec<f64> = results.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let ours = median(|r| r.mesh);
    let spread = |f: fn(&ThroughputRound) -> f64| {
        let values: Vec<f64> = results.iter().map(f).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        format!("({min:.0}-{max:.0})")
    };
    let references: [(String, Figure); 4] = [
        (
            format!("registrations/s, {WINDOW} in flight ({count}; mesh = KV put + event each; raw = TTL'd KV puts)"),
            |r| r.raw,
        ),
        (
            format!("registrations/s vs raw doing the same writes (KV create + event, {WINDOW} in flight)"),
            |r| r.same_writes,
        ),
        (
            format!("registrations/s vs raw doing the same writes while a KV watcher on its connection follows them ({WINDOW} in flight)"),
            |r| r.watched,
        ),
        (
            format!("registrations/s vs raw sending prism-mesh's own messages (subjects, headers, records) while a KV watcher follows them ({WINDOW} in flight)"),
            |r| r.shaped,
        ),
    ];
    for (figure, reference) in references {
        let theirs = median(reference);
        rows.push(Row {
            figure: format!("{figure}, median of {rounds} alternating rounds (min-max)"),
            mesh: format!("{ours:.0}/s {}", spread(|r| r.mesh)),
            raw: format!("{theirs:.0}/s {}", spread(reference)),
            ratio: ours / theirs,
        });
    }
    let (our_allocations, raw_allocations) = (
        median(|r| r.mesh_allocations),
        median(|r| r.watched_allocations),
    );
    rows.push(Row {
        figure:
            "allocations per registration, whole process (raw: the same writes + watcher), median"
                .into(),
        mesh: format!("{our_allocations:.1}"),
        raw: format!("{raw_allocations:.1}"),
        ratio: our_allocations / raw_allocations,
    });
}

/// The raw references of one round, each on a fresh bucket; the mesh's figures are zero.
async fn raw_throughput(js: &jetstream::Context, count: usize, round: usize) -> ThroughputRound {
    let bucket_name = format!("raw-throughput-{round}");
    let bucket = bucket_with_ttls(js, &bucket_name).await;
    let payload = Bytes::from(vec![b'x'; 200]);
    let started = Instant::now();
    publish_windowed(
        js,
        "60s",
        (0..count).map(|n| (format!("$KV.{bucket_name}.t{n}"), payload.clone())),
    )
    .await;
    let raw = count as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    same_writes(js, &bucket_name, &format!("c{round}-"), count).await;
    let same_writes_rate = count as f64 / started.elapsed().as_secs_f64();

    // The same writes while a KV watcher on the same connection follows a bucket of its
    // own, as every mesh peer (the registering one included) does: the substrate's ceiling
    // for a registration that its own peer sees.
    let watched_bucket = bucket_with_ttls(js, &format!("raw-watched-{round}")).await;
    let watcher = follow(&watched_bucket, "w", count).await;
    let (started, allocated) = (Instant::now(), allocations());
    same_writes(
        js,
        &format!("raw-watched-{round}"),
        &format!("w{round}-"),
        count,
    )
    .await;
    watcher.await.expect("raw watcher");
    let watched = count as f64 / started.elapsed().as_secs_f64();
    let watched_allocations = (allocations() - allocated) as f64 / count as f64;
    drop(bucket);

    // The same again, but the very messages prism-mesh sends: its subjects (uuid keys),
    // headers and encoded records. The substrate's ceiling for this wire format.
    // Streams, bucket, encoded messages and the watcher are made before the clock starts.
    let shaped = prepare_mesh_shaped(js, count, round).await;
    let started = Instant::now();
    send_mesh_shaped(js, shaped).await;
    let shaped = count as f64 / started.elapsed().as_secs_f64();
    ThroughputRound {
        mesh: 0.0,
        mesh_allocations: 0.0,
        raw,
        same_writes: same_writes_rate,
        watched,
        watched_allocations,
        shaped,
    }
}

/// `Mesh::register` of `count` instances, 512 in flight, on a bucket of its own; returns
/// registrations per second and allocations per registration.
async fn mesh_throughput(url: &str, count: usize, round: usize) -> (f64, f64) {
    let mesh = Mesh::builder()
        .nats(options(url).bucket(format!("prism-throughput-{round}")))
        .instance_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .connect()
        .await
        .expect("mesh");
    let (started, allocated) = (Instant::now(), allocations());
    futures::stream::iter(0..count)
        .map(|n| {
            let mesh = mesh.clone();
            async move {
                let instance =
                    ServiceInstance::builder("throughput", "10.0.0.2", (n % 60000) as u16)
                        .build()
                        .expect("instance");
                mesh.register(instance).await.expect("register");
            }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<()>>()
        .await;
    let ours = count as f64 / started.elapsed().as_secs_f64();
    let our_allocations = (allocations() - allocated) as f64 / count as f64;
    // Without deregistering 20,000 instances: the next round has a bucket of its own.
    mesh.close_without_deregistering().await;
    (ours, our_allocations)
}

/// Per registration the same two acknowledged writes as prism-mesh's: a KV create, then an
/// event with a message id; 512 registrations in flight.
async fn same_writes(js: &jetstream::Context, bucket: &str, prefix: &str, count: usize) {
    let payload = Bytes::from(vec![b'x'; 200]);
    futures::stream::iter(0..count)
        .map(|n| {
            let payload = payload.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-TTL", "60s");
                headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                let subject = format!("$KV.{bucket}.{prefix}{n}");
                let ack = js.publish_with_headers(subject, headers, payload.clone());
                ack.await.expect("publish").await.expect("create ack");
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("registered-{prefix}{n}"));
                let subject = format!("raw-events.{prefix}{n}.registered");
                let ack = js.publish_with_headers(subject, headers, payload);
                ack.await.expect("publish").await.expect("event ack");
            }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<()>>()
        .await;
}

/// [`same_writes`] with the messages a registration sends, encoded up front: a KV create
/// of `$KV.<fresh bucket>.throughput.<uuid>` carrying the instance record, then the
/// `registered` event with its headers, while a KV watcher on the same connection follows
/// the bucket. Only the library's own work is left out.
/// prism-mesh's own messages for `count` registrations, encoded, with the stream, bucket
/// and watcher they go to: everything but the sending.
struct Shaped {
    messages: Vec<(std::sync::Arc<ServiceInstance>, Bytes, Bytes)>,
    origin: String,
    watcher: JoinHandle<()>,
    /// The bucket's name.
    bucket: String,
}

async fn prepare_mesh_shaped(js: &jetstream::Context, count: usize, round: usize) -> Shaped {
    js.get_or_create_stream(jetstream::stream::Config {
        name: "RAW_SHAPED_EVENTS".into(),
        subjects: vec!["shaped-events.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("shaped event stream");
    let bucket_name = format!("{SHAPED_BUCKET}-{round}");
    let bucket = bucket_with_ttls(js, &bucket_name).await;
    let origin = uuid::Uuid::new_v4().to_string();
    let messages: Vec<_> = (0..count)
        .map(|n| {
            let instance = ServiceInstance::builder("throughput", "10.0.0.2", (n % 60000) as u16)
                .build()
                .expect("instance");
            let instance = std::sync::Arc::new(instance);
            let record = InstanceRecord {
                v: PROTOCOL_VERSION,
                instance: instance.clone(),
                ttl_ms: 60_000,
                reason: None,
            };
            let event = EventRecord {
                v: PROTOCOL_VERSION,
                event: EventName::Registered,
                instance: instance.clone(),
                previous_status: None,
                reason: None,
                at: SystemTime::now(),
                origin: origin.clone(),
            };
            (
                instance,
                Bytes::from(record.encode().expect("record")),
                Bytes::from(event.encode().expect("event")),
            )
        })
        .collect();
    let watcher = follow(&bucket, "", count).await;
    Shaped {
        messages,
        origin,
        watcher,
        bucket: bucket_name,
    }
}

/// Sends what `prepare_mesh_shaped` made, 512 registrations in flight, until the watcher
/// has seen every key.
async fn send_mesh_shaped(js: &jetstream::Context, shaped: Shaped) {
    let Shaped {
        messages,
        origin,
        watcher,
        bucket,
    } = shaped;
    let (origin, bucket) = (&origin, &bucket);
    futures::stream::iter(messages)
        .map(|(instance, record, event)| async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-TTL", "60s");
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            let subject = format!("$KV.{bucket}.{}", instance.key());
            let ack = js.publish_with_headers(subject, headers, record);
            let revision = ack
                .await
                .expect("publish")
                .await
                .expect("create ack")
                .sequence;
            let mut headers = async_nats::HeaderMap::new();
            let id = instance.id.to_string();
            headers.insert("Nats-Msg-Id", format!("registered-{id}-{revision}"));
            headers.insert("Prism-Service", instance.service.as_str());
            headers.insert("Prism-Instance", id.as_str());
            headers.insert("Prism-Status", instance.status.as_str());
            headers.insert("Prism-Origin", origin.as_str());
            let subject = format!("shaped-events.{}.{id}.registered", instance.service);
            let ack = js.publish_with_headers(subject, headers, event);
            ack.await.expect("publish").await.expect("event ack");
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<()>>()
        .await;
    watcher.await.expect("raw watcher");
}

/// A KV watcher following `bucket` until it has seen `count` keys starting with `prefix`,
/// as every mesh peer follows its bucket.
async fn follow(bucket: &kv::Store, prefix: &'static str, count: usize) -> JoinHandle<()> {
    let mut watch = bucket.watch(">").await.expect("raw watch");
    tokio::spawn(async move {
        let mut seen = 0;
        while seen < count {
            match watch.next().await {
                Some(Ok(entry)) if entry.key.starts_with(prefix) => seen += 1,
                Some(Ok(_)) => {}
                other => panic!("raw watch ended: {other:?}"),
            }
        }
    })
}

/// A new peer's view of `count` instances; raw: KV watch replay of `count` keys.
async fn cold_start(url: &str, js: &jetstream::Context, count: usize, rows: &mut Vec<Row>) {
    // Populate the mesh bucket with real records (long TTL, written straight to the bucket).
    let setup = Mesh::builder()
        .nats(options(url).bucket(COLD_BUCKET))
        .connect()
        .await
        .expect("setup mesh");
    setup.shutdown().await;
    let records = (0..count).map(|n| {
        let instance =
            ServiceInstance::builder(format!("svc-{}", n % 1000), "10.1.0.1", (n % 60000) as u16)
                .build()
                .expect("instance");
        owner_record(COLD_BUCKET, instance, Duration::from_secs(600))
    });
    publish_windowed(js, "600s", records).await;

    // Alternating rounds, medians compared: one cold start on this shared machine moves by
    // a factor of two from run to run, raw and ours alike.
    let rounds = env_usize("PRISM_BENCH_COLD_ROUNDS", 5).max(1);
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    let mut rss_growth = None;
    for _ in 0..rounds {
        raw.push(raw_cold_start(url, count).await);
        let (elapsed, growth) = mesh_cold_start(url, count).await;
        ours.push(elapsed);
        // The first round's: later ones reuse the memory the first one freed.
        rss_growth.get_or_insert(growth);
    }
    raw.sort();
    ours.sort();
    let spread = |sorted: &[Duration]| {
        format!(
            "{} ({:.0}-{:.0})",
            ms(percentile(sorted, 0.5)),
            sorted[0].as_secs_f64() * 1000.0,
            sorted[sorted.len() - 1].as_secs_f64() * 1000.0
        )
    };
    rows.push(Row {
        figure: format!(
            "cold start of a view of {count} instances (connect to ready), median of {rounds} alternating rounds (min-max ms)"
        ),
        mesh: spread(&ours),
        raw: spread(&raw),
        ratio: percentile(&ours, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
    });
    rows.push(Row {
        figure: format!("process RSS growth for that view ({count} instances, first round)"),
        mesh: format!("{:.1} MiB", rss_growth.unwrap_or(f64::NAN)),
        raw: "-".into(),
        ratio: f64::NAN,
    });
}

/// Raw cold start: a fresh connection replays the cold bucket with a KV watch.
async fn raw_cold_start(url: &str, count: usize) -> Duration {
    let started = Instant::now();
    let client = async_nats::connect(url).await.expect("raw connect");
    let store = jetstream::new(client)
        .get_key_value(COLD_BUCKET)
        .await
        .expect("bucket");
    let mut watch = store.watch_with_history(">").await.expect("watch");
    let mut seen = 0;
    while let Some(entry) = watch.next().await {
        let entry = entry.expect("entry");
        seen += 1;
        if entry.delta == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(seen, count, "raw replay saw {seen} keys");
    elapsed
}

/// A new peer's view of the cold bucket: time from connect to ready, and RSS growth (MiB).
async fn mesh_cold_start(url: &str, count: usize) -> (Duration, f64) {
    let rss_before = rss_mib();
    let started = Instant::now();
    let peer = Mesh::builder()
        .nats(options(url).bucket(COLD_BUCKET))
        .connect()
        .await
        .expect("cold peer");
    let elapsed = started.elapsed();
    let growth = rss_mib() - rss_before;
    assert_eq!(
        peer.instance_count(),
        count,
        "cold view holds every instance"
    );
    peer.shutdown().await;
    (elapsed, growth)
}

/// Last write to Expired at a peer with a 2 s TTL; raw: put with Nats-TTL 2s to the marker.
/// Last write to Expired at a peer with TTL `ttl_secs` (1 s is the shortest NATS accepts,
/// 10 s the default); raw: put with that Nats-TTL until the watch sees the marker.
async fn expiry(url: &str, js: &jetstream::Context, ttl_secs: u64, rows: &mut Vec<Row>) {
    let store = raw_bucket(js).await;
    let mut watch = store
        .watch(format!("exp{ttl_secs}.>"))
        .await
        .expect("watch");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", format!("{ttl_secs}s"));
    let started = Instant::now();
    js.publish_with_headers(
        format!("$KV.{RAW_BUCKET}.exp{ttl_secs}.one"),
        headers,
        Bytes::from_static(b"x"),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    // The put itself, then the server's MaxAge marker.
    watch.next().await.expect("put").expect("put entry");
    watch.next().await.expect("marker").expect("marker entry");
    let raw = started.elapsed();

    let peer = Mesh::builder()
        .nats(options(url))
        .connect()
        .await
        .expect("peer");
    let mut expired = peer.subscribe_filtered(EventKind::Expired.into());
    let owner = Mesh::builder()
        .nats(options(url))
        .instance_ttl(Duration::from_secs(ttl_secs))
        .heartbeat_interval(Duration::from_millis(ttl_secs * 1000 / 2))
        .connect()
        .await
        .expect("owner");
    let instance = ServiceInstance::builder(format!("expiry{ttl_secs}"), "10.2.0.1", 1)
        .build()
        .expect("instance");
    let started = Instant::now();
    owner.register(instance).await.expect("register");
    drop(owner); // stops heartbeats at once, like a crash right after registering
    expired.next().await.expect("expired");
    let ours = started.elapsed();
    peer.shutdown().await;
    rows.push(Row {
        figure: format!("last write -> Expired seen, TTL {ttl_secs} s"),
        mesh: ms(ours),
        raw: ms(raw),
        ratio: ours.as_secs_f64() / raw.as_secs_f64(),
    });
}

#[tokio::main]
async fn main() {
    // PRISM_BENCH_LOG=<filter> prints the library's logs (warnings of held expiries...).
    if let Ok(filter) = std::env::var("PRISM_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // `cargo bench` passes --bench; a filter argument is ignored.
    let samples = env_usize("PRISM_BENCH_SAMPLES", 2000);
    let cold = env_usize("PRISM_BENCH_COLD", 100_000);
    let sync = std::env::var("PRISM_BENCH_SYNC").unwrap_or_else(|_| "default".into());
    let jetstream_extra = if sync == "always" {
        "sync_interval: always"
    } else {
        ""
    };
    let server = NatsServer::start_with(jetstream_extra, "max_payload: 8MB");
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client);
    println!(
        "prism-mesh vs raw async-nats on nats-server (sync: {sync}), {} at {}",
        std::env::consts::ARCH,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );

    // PRISM_BENCH_ONLY=latency,throughput,expiry,cold,failover runs a subset (default: all).
    let only = std::env::var("PRISM_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let mut rows = Vec::new();
    if run("latency") {
        eprintln!("latency ({samples} samples)...");
        latency(&url, &js, samples, &mut rows).await;
    }
    if run("throughput") {
        eprintln!("throughput...");
        let count = env_usize("PRISM_BENCH_REGISTRATIONS", 20_000);
        let rounds = env_usize("PRISM_BENCH_THROUGHPUT_ROUNDS", 3).max(1);
        throughput(&url, &js, count, rounds, &mut rows).await;
    }
    if run("expiry") {
        eprintln!("expiry...");
        let ttls = std::env::var("PRISM_BENCH_EXPIRY_TTLS").unwrap_or_else(|_| "1,2,10".into());
        for ttl_secs in ttls.split(',').filter_map(|t| t.trim().parse().ok()) {
            expiry(&url, &js, ttl_secs, &mut rows).await;
        }
    }
    if run("cold") {
        eprintln!("cold start ({cold} instances)...");
        cold_start(&url, &js, cold, &mut rows).await;
    }
    if run("failover") {
        let changes = env_usize("PRISM_BENCH_FAILOVER_CHANGES", 4);
        let ttl = std::env::var("PRISM_BENCH_FAILOVER_TTL")
            .ok()
            .and_then(|t| humantime::parse_duration(&t).ok())
            .unwrap_or(Duration::from_secs(3));
        eprintln!("failover ({changes} leader changes on a three-node cluster, TTL {ttl:?})...");
        // Held expiries are applied after the default grace (15 s): wait them out.
        let tail = Duration::from_secs(env_usize("PRISM_BENCH_FAILOVER_TAIL_SECS", 17) as u64);
        failover::failover(&mut rows, changes, ttl, tail).await;
    }

    println!("\n| figure | prism-mesh | raw async-nats | ratio |\n|---|---|---|---|");
    for row in rows {
        let ratio = if row.ratio.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}x", row.ratio)
        };
        println!("| {} | {} | {} | {ratio} |", row.figure, row.mesh, row.raw);
    }
}
