//! prism-mesh beside etcd 3.4 and Redis 7: the same discovery workload against each, in
//! one run on one machine. Run by hand, not in CI:
//!
//! ```sh
//! cargo bench -p prism-benches --bench side_by_side
//! ```
//!
//! The harness starts every server itself, each on free loopback ports with a temp dir,
//! one system at a time, and kills it afterwards (`nats-server` on PATH or
//! `NATS_SERVER_BIN`; `etcd` and `redis-server` from the Debian packages). Systems:
//!
//! - prism-mesh on nats-server, default `sync_interval` (acks before fsync);
//! - prism-mesh on nats-server, `sync_interval: always` (fsync before every ack);
//! - etcd 3.4, leases + watch, over its JSON gRPC gateway (fsyncs every write);
//! - Redis 7, `SET key value PX ttl` + keyevent notifications, `appendfsync always`;
//! - Redis 7 without persistence (`--save '' --appendonly no`).
//!
//! Figures: registration -> visible at a watcher on another connection (p50/p99,
//! sequential), registrations/s with 512 in flight, cold start of a new client's view of
//! 100,000 instances, failure detection after the owner stops refreshing (TTL 2 s), and
//! the server's RSS after the 100k load. Knobs: PRISM_SIDE_SAMPLES (1000),
//! PRISM_SIDE_REGISTRATIONS (10000), PRISM_SIDE_COLD (100000), PRISM_SIDE_ETCD_CONNS
//! (512: HTTP/1.1 carries one request per connection, so 512 in flight needs 512),
//! PRISM_SIDE_SYSTEMS=mesh,mesh-always,etcd,redis-aof,redis (default: all).
//! `docs/benchmarks.md` ("Side by side") records results and what each row means.

#[path = "side_by_side/etcd.rs"]
mod etcd;
#[path = "side_by_side/redis.rs"]
mod redis;

use prism_benches::{env_usize, percentile};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prism_mesh::protocol::{InstanceRecord, PROTOCOL_VERSION};
use prism_mesh::{EventKind, Mesh, MeshEvent, NatsOptions, ServiceInstance};
use prism_tests::NatsServer;

const WINDOW: usize = 512;
const COLD_BUCKET: &str = "prism-cold";
/// A TTL longer than any run, for registrations whose expiry is not measured.
const LONG_TTL: Duration = Duration::from_secs(600);
const EXPIRY_TTL: Duration = Duration::from_secs(2);
/// A wait longer than this is a failure of the system under test, reported as such.
const PATIENCE: Duration = Duration::from_secs(30);

/// VmRSS of a process, in MiB.
fn vm_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The same payload everywhere: a prism-mesh instance record (MessagePack, about 190 B).
fn record(service: &str, port: u16, ttl: Duration) -> (ServiceInstance, Vec<u8>) {
    let instance = ServiceInstance::builder(service, "10.0.0.1", port)
        .build()
        .expect("instance");
    let bytes = InstanceRecord {
        v: PROTOCOL_VERSION,
        ttl_ms: ttl.as_millis() as u64,
        reason: None,
        instance: instance.clone().into(),
    }
    .encode()
    .expect("encode");
    (instance, bytes)
}

/// A client-side view built from raw values, as a discovery client on etcd or Redis
/// would keep one: records decoded and indexed by service and id.
#[derive(Default)]
struct View {
    services: HashMap<String, HashMap<uuid_key::Id, ServiceInstance>>,
}

mod uuid_key {
    /// The instance id as text (the bench does not depend on the uuid crate).
    pub type Id = String;
}

impl View {
    fn insert(&mut self, value: &[u8]) {
        let record = InstanceRecord::decode(value).expect("decode record");
        let instance = record.instance;
        self.services
            .entry(instance.service.to_string())
            .or_default()
            .insert(instance.id.to_string(), ServiceInstance::clone(&instance));
    }

    fn len(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }
}

/// What one system measured; `None` where a figure could not be taken the same way.
#[derive(Default)]
struct Figures {
    p50: Option<Duration>,
    p99: Option<Duration>,
    rate: Option<f64>,
    cold: Option<Duration>,
    expiry: Option<Duration>,
    rss_mib: Option<f64>,
    notes: Vec<String>,
}

/// The workload, implemented once per system.
trait Discovery {
    /// Registration at one client until a watcher on another connection has it (each
    /// sample's elapsed time when the watcher holds the decoded record).
    async fn latency(&mut self, samples: usize, notes: &mut Vec<String>) -> Vec<Duration>;
    /// Registrations per second, `WINDOW` in flight.
    async fn throughput(&mut self, count: usize) -> f64;
    /// From the write that starts a 2 s TTL (the owner never refreshes) until a watcher
    /// sees the instance gone.
    async fn expiry(&mut self, notes: &mut Vec<String>) -> Duration;
    /// Loads `count` instances (not timed), then times a new client's complete view.
    async fn cold_start(&mut self, count: usize, notes: &mut Vec<String>) -> Duration;
    fn server_pid(&self) -> u32;
}

async fn measure(
    system: &mut impl Discovery,
    samples: usize,
    count: usize,
    cold: usize,
) -> Figures {
    let mut figures = Figures::default();
    eprintln!("  latency ({samples} samples)");
    let mut latencies = system.latency(samples, &mut figures.notes).await;
    latencies.sort();
    figures.p50 = Some(percentile(&latencies, 0.50));
    figures.p99 = Some(percentile(&latencies, 0.99));
    eprintln!("  throughput ({count} registrations)");
    figures.rate = Some(system.throughput(count).await);
    eprintln!("  expiry");
    figures.expiry = Some(system.expiry(&mut figures.notes).await);
    eprintln!("  cold start ({cold} instances)");
    figures.cold = Some(system.cold_start(cold, &mut figures.notes).await);
    figures.rss_mib = Some(vm_rss_mib(system.server_pid()));
    figures
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

// ---------------------------------------------------------------------------------------
// prism-mesh on nats-server

struct MeshSystem {
    server: NatsServer,
    url: String,
}

impl MeshSystem {
    fn start(always: bool) -> MeshSystem {
        let sync = if always { "sync_interval: always" } else { "" };
        let server = NatsServer::start_with(sync, "max_payload: 8MB");
        let url = server.url();
        MeshSystem { server, url }
    }

    fn options(&self) -> NatsOptions {
        NatsOptions::new(&self.url).request_timeout(Duration::from_secs(30))
    }
}

impl Discovery for MeshSystem {
    async fn latency(&mut self, samples: usize, _: &mut Vec<String>) -> Vec<Duration> {
        let owner = Mesh::builder()
            .nats(self.options())
            .instance_ttl(Duration::from_secs(60))
            .heartbeat_interval(Duration::from_secs(20))
            .connect()
            .await
            .expect("owner");
        let peer = Mesh::builder()
            .nats(self.options())
            .connect()
            .await
            .expect("peer");
        let mut events = peer.subscribe_filtered(EventKind::Registered.into());
        let mut out = Vec::with_capacity(samples);
        for n in 0..samples {
            let (instance, _) = record("latency", (n % 60000) as u16, LONG_TTL);
            let id = instance.id;
            let started = Instant::now();
            let seen = async {
                loop {
                    if let Some(MeshEvent::Registered { instance }) = events.next().await {
                        if instance.id == id {
                            return started.elapsed();
                        }
                    }
                }
            };
            let (registration, elapsed) = within("mesh latency", async {
                tokio::join!(owner.register(instance), seen)
            })
            .await;
            registration.expect("register");
            out.push(elapsed);
        }
        owner.shutdown().await;
        peer.shutdown().await;
        out
    }

    async fn throughput(&mut self, count: usize) -> f64 {
        let mesh = Mesh::builder()
            .nats(self.options())
            .instance_ttl(Duration::from_secs(60))
            .heartbeat_interval(Duration::from_secs(20))
            .connect()
            .await
            .expect("mesh");
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|n| {
                let mesh = mesh.clone();
                async move {
                    let (instance, _) = record("throughput", (n % 60000) as u16, LONG_TTL);
                    mesh.register(instance).await.expect("register");
                }
            })
            .buffer_unordered(WINDOW)
            .collect::<Vec<()>>()
            .await;
        let rate = count as f64 / started.elapsed().as_secs_f64();
        mesh.shutdown().await;
        rate
    }

    async fn expiry(&mut self, _: &mut Vec<String>) -> Duration {
        let peer = Mesh::builder()
            .nats(self.options())
            .connect()
            .await
            .expect("peer");
        let mut expired = peer.subscribe_filtered(EventKind::Expired.into());
        let owner = Mesh::builder()
            .nats(self.options())
            .instance_ttl(EXPIRY_TTL)
            .heartbeat_interval(EXPIRY_TTL / 2)
            .connect()
            .await
            .expect("owner");
        let (instance, _) = record("expiry", 1, EXPIRY_TTL);
        let started = Instant::now();
        owner.register(instance).await.expect("register");
        drop(owner); // no more heartbeats, like a crash right after registering
        within("mesh expiry", expired.next())
            .await
            .expect("expired");
        let elapsed = started.elapsed();
        peer.shutdown().await;
        elapsed
    }

    async fn cold_start(&mut self, count: usize, _: &mut Vec<String>) -> Duration {
        let setup = Mesh::builder()
            .nats(self.options().bucket(COLD_BUCKET))
            .connect()
            .await
            .expect("setup mesh");
        setup.shutdown().await;
        // Load: the records straight into the bucket, 512 acks in flight.
        let js = jetstream::new(async_nats::connect(&self.url).await.expect("connect"));
        let mut in_flight = FuturesUnordered::new();
        for n in 0..count {
            let (instance, bytes) =
                record(&format!("svc-{}", n % 1000), (n % 60000) as u16, LONG_TTL);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-TTL", "600s");
            let subject = format!("$KV.{COLD_BUCKET}.{}", instance.key());
            let ack = js
                .publish_with_headers(subject, headers, Bytes::from(bytes))
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
        let started = Instant::now();
        let peer = Mesh::builder()
            .nats(self.options().bucket(COLD_BUCKET))
            .connect()
            .await
            .expect("cold peer");
        let elapsed = started.elapsed();
        assert_eq!(peer.instance_count(), count, "mesh cold view");
        peer.shutdown().await;
        elapsed
    }

    fn server_pid(&self) -> u32 {
        self.server.pid()
    }
}

// ---------------------------------------------------------------------------------------
// etcd 3.4: a lease per owner session (TTL refreshed by keepalive), keys put with it, a
// prefix watch at the observer.

struct EtcdSystem {
    server: etcd::EtcdServer,
    connections: usize,
}

impl Discovery for EtcdSystem {
    async fn latency(&mut self, samples: usize, _: &mut Vec<String>) -> Vec<Duration> {
        let port = self.server.port;
        let mut owner = etcd::Etcd::connect(port).await;
        let (lease, _) = owner.grant(LONG_TTL.as_secs() as i64).await;
        let mut watch = etcd::Watch::prefix(port, b"lat/").await;
        let mut view = View::default();
        let mut out = Vec::with_capacity(samples);
        for n in 0..samples {
            let (instance, bytes) = record("latency", (n % 60000) as u16, LONG_TTL);
            let key = format!("lat/{}", instance.key()).into_bytes();
            let started = Instant::now();
            let seen = async {
                loop {
                    let event = watch.next().await;
                    if event.key == key {
                        view.insert(&event.value);
                        return started.elapsed();
                    }
                }
            };
            let ((), elapsed) = within("etcd latency", async {
                tokio::join!(owner.put(&key, &bytes, &lease), seen)
            })
            .await;
            out.push(elapsed);
        }
        assert_eq!(view.len(), samples);
        out
    }

    async fn throughput(&mut self, count: usize) -> f64 {
        let port = self.server.port;
        let mut setup = etcd::Etcd::connect(port).await;
        let (lease, _) = setup.grant(LONG_TTL.as_secs() as i64).await;
        let connections = self.connections.min(WINDOW);
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(etcd::Etcd::connect(port).await);
        }
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                let lease = lease.clone();
                tokio::spawn(async move {
                    for n in (i..count).step_by(connections) {
                        let (instance, bytes) = record("throughput", (n % 60000) as u16, LONG_TTL);
                        let key = format!("thr/{}", instance.key());
                        client.put(key.as_bytes(), &bytes, &lease).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("etcd writer");
        }
        count as f64 / started.elapsed().as_secs_f64()
    }

    async fn expiry(&mut self, notes: &mut Vec<String>) -> Duration {
        let port = self.server.port;
        let mut owner = etcd::Etcd::connect(port).await;
        let mut watch = etcd::Watch::prefix(port, b"exp/").await;
        let (_, bytes) = record("expiry", 1, EXPIRY_TTL);
        let started = Instant::now();
        let (lease, granted) = owner.grant(EXPIRY_TTL.as_secs() as i64).await;
        owner.put(b"exp/one", &bytes, &lease).await;
        // No keepalive from here on.
        let elapsed = within("etcd expiry", async {
            loop {
                let event = watch.next().await;
                if event.delete && event.key == b"exp/one" {
                    return started.elapsed();
                }
            }
        })
        .await;
        notes.push(format!(
            "etcd: lease asked TTL {} s, granted TTL {granted} s (etcd raises a TTL below its \
             minimum, 1.5 x election timeout rounded up = 2 s at default settings; the \
             lessor looks for expired leases every 500 ms)",
            EXPIRY_TTL.as_secs()
        ));
        elapsed
    }

    async fn cold_start(&mut self, count: usize, notes: &mut Vec<String>) -> Duration {
        let port = self.server.port;
        let mut setup = etcd::Etcd::connect(port).await;
        let (lease, _) = setup.grant(LONG_TTL.as_secs() as i64).await;
        // Load: transactions of 128 puts (etcd's default --max-txn-ops), 16 at a time.
        let batches: Vec<Vec<(Vec<u8>, Vec<u8>)>> = (0..count)
            .map(|n| {
                let (instance, bytes) =
                    record(&format!("svc-{}", n % 1000), (n % 60000) as u16, LONG_TTL);
                (format!("cold/{}", instance.key()).into_bytes(), bytes)
            })
            .collect::<Vec<_>>()
            .chunks(128)
            .map(<[_]>::to_vec)
            .collect();
        let mut clients = Vec::new();
        for _ in 0..16 {
            clients.push(etcd::Etcd::connect(port).await);
        }
        let per = batches.len().div_ceil(16).max(1);
        let mut tasks = Vec::new();
        for (mut client, mine) in clients
            .into_iter()
            .zip(batches.chunks(per).map(<[_]>::to_vec))
        {
            let lease = lease.clone();
            tasks.push(tokio::spawn(async move {
                for batch in mine {
                    client.put_many(&batch, &lease).await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("etcd loader");
        }

        let page = env_usize("PRISM_SIDE_ETCD_PAGE", 10_000);
        let started = Instant::now();
        let mut client = etcd::Etcd::connect(port).await;
        let end = etcd::prefix_end(b"cold/");
        let mut from = b"cold/".to_vec();
        let mut view = View::default();
        loop {
            let (kvs, more) = client.range_page(&from, &end, page).await;
            for (_, value) in &kvs {
                view.insert(value);
            }
            match (more, kvs.last()) {
                (true, Some((key, _))) => {
                    from = key.clone();
                    from.push(0); // the next key after the last one seen
                }
                _ => break,
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(view.len(), count, "etcd cold view");
        notes.push(format!(
            "etcd cold start: range over the prefix in pages of {page} (one revision is not \
             pinned across pages), each value base64-decoded and decoded as a record"
        ));
        elapsed
    }

    fn server_pid(&self) -> u32 {
        self.server.pid()
    }
}

// ---------------------------------------------------------------------------------------
// Redis 7: one key per instance with SET .. PX ttl (the owner would refresh with SET or
// PEXPIRE), keyevent notifications for `set` and `expired`; a notification carries only
// the key, so the watcher GETs the value.

struct RedisSystem {
    server: redis::RedisServer,
}

const SET_CHANNEL: &str = "__keyevent@0__:set";

/// SET with PX 2000 in `db`, until the `expired` keyevent for it.
async fn redis_expiry(port: u16, db: u8) -> Duration {
    let owner = redis::Redis::connect(port).await;
    owner
        .call(&[b"SELECT", db.to_string().as_bytes()])
        .await
        .ok();
    let channel = format!("__keyevent@{db}__:expired");
    let mut subscriber = redis::Subscriber::subscribe(port, &[&channel]).await;
    let (_, bytes) = record("expiry", 1, EXPIRY_TTL);
    let ttl = EXPIRY_TTL.as_millis().to_string();
    let started = Instant::now();
    owner
        .call(&[b"SET", b"exp:one", &bytes, b"PX", ttl.as_bytes()])
        .await
        .ok();
    // Redis may take far longer than the others here: see the note.
    let patience = Duration::from_secs(300);
    tokio::time::timeout(patience, async {
        loop {
            let (_, key) = subscriber.next().await;
            if key == b"exp:one" {
                return started.elapsed();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("redis expiry: no expired event within {patience:?}"))
}

impl Discovery for RedisSystem {
    async fn latency(&mut self, samples: usize, notes: &mut Vec<String>) -> Vec<Duration> {
        let port = self.server.port;
        let owner = redis::Redis::connect(port).await;
        let reader = redis::Redis::connect(port).await;
        let mut subscriber = redis::Subscriber::subscribe(port, &[SET_CHANNEL]).await;
        let mut view = View::default();
        let mut out = Vec::with_capacity(samples);
        let mut notified = Vec::with_capacity(samples);
        let ttl = LONG_TTL.as_millis().to_string();
        for n in 0..samples {
            let (instance, bytes) = record("latency", (n % 60000) as u16, LONG_TTL);
            let key = format!("lat:{}", instance.key()).into_bytes();
            let started = Instant::now();
            let args: [&[u8]; 5] = [b"SET", &key, &bytes, b"PX", ttl.as_bytes()];
            let set = owner.call(&args);
            let seen = async {
                loop {
                    let (_, payload) = subscriber.next().await;
                    if payload == key {
                        break;
                    }
                }
                notified.push(started.elapsed());
                let value = reader.call(&[b"GET", &key]).await;
                view.insert(value.bulk().expect("value"));
                started.elapsed()
            };
            let (reply, elapsed) = within("redis latency", async { tokio::join!(set, seen) }).await;
            reply.ok();
            out.push(elapsed);
        }
        assert_eq!(view.len(), samples);
        notified.sort();
        notes.push(format!(
            "notification alone (key name, no value): p50 {}, p99 {}",
            ms(percentile(&notified, 0.5)),
            ms(percentile(&notified, 0.99))
        ));
        out
    }

    async fn throughput(&mut self, count: usize) -> f64 {
        let port = self.server.port;
        let mut pool = Vec::new();
        for _ in 0..16 {
            pool.push(redis::Redis::connect(port).await);
        }
        let ttl = LONG_TTL.as_millis().to_string();
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|n| {
                let client = pool[n % pool.len()].clone();
                let ttl = ttl.clone();
                async move {
                    let (instance, bytes) = record("throughput", (n % 60000) as u16, LONG_TTL);
                    let key = format!("thr:{}", instance.key());
                    client
                        .call(&[b"SET", key.as_bytes(), &bytes, b"PX", ttl.as_bytes()])
                        .await
                        .ok();
                }
            })
            .buffer_unordered(WINDOW)
            .collect::<Vec<()>>()
            .await;
        count as f64 / started.elapsed().as_secs_f64()
    }

    async fn expiry(&mut self, notes: &mut Vec<String>) -> Duration {
        // The workload figure: db 0, beside every key registered so far (all with a TTL).
        let loaded = redis_expiry(self.server.port, 0).await;
        // For reference: the same in db 1, where this key is the only one with a TTL.
        let alone = redis_expiry(self.server.port, 1).await;
        notes.push(format!(
            "failure detection with this key the only one with a TTL (db 1): {} (the figure \
             in the table is with the run's other live keys in db 0: Redis deletes an expired \
             key, and emits `expired`, only when its active expire cycle reaches it (a few \
             keys per cycle, hz 10) or a client touches it)",
            ms(alone)
        ));
        loaded
    }

    async fn cold_start(&mut self, count: usize, notes: &mut Vec<String>) -> Duration {
        let port = self.server.port;
        let loader = redis::Redis::connect(port).await;
        let ttl = LONG_TTL.as_millis().to_string();
        futures::stream::iter(0..count)
            .map(|n| {
                let loader = loader.clone();
                let ttl = ttl.clone();
                async move {
                    let (instance, bytes) =
                        record(&format!("svc-{}", n % 1000), (n % 60000) as u16, LONG_TTL);
                    let key = format!("cold:{}", instance.key());
                    loader
                        .call(&[b"SET", key.as_bytes(), &bytes, b"PX", ttl.as_bytes()])
                        .await
                        .ok();
                }
            })
            .buffer_unordered(WINDOW)
            .collect::<Vec<()>>()
            .await;

        // SCAN pages, each page's MGET in flight while the next SCAN runs.
        let page = env_usize("PRISM_SIDE_REDIS_SCAN", 10_000).to_string();
        let started = Instant::now();
        let client = redis::Redis::connect(port).await;
        let mut view = View::default();
        let mut cursor = b"0".to_vec();
        let mut mgets = FuturesUnordered::new();
        loop {
            let reply = client
                .call(&[
                    b"SCAN",
                    &cursor,
                    b"MATCH",
                    b"cold:*",
                    b"COUNT",
                    page.as_bytes(),
                ])
                .await
                .ok();
            let parts = reply.array();
            cursor = parts[0].bulk().expect("cursor").to_vec();
            let keys: Vec<Vec<u8>> = parts[1]
                .array()
                .iter()
                .filter_map(|k| k.bulk().map(<[u8]>::to_vec))
                .collect();
            if !keys.is_empty() {
                let client = client.clone();
                mgets.push(async move {
                    let mut args: Vec<&[u8]> = vec![b"MGET"];
                    args.extend(keys.iter().map(Vec::as_slice));
                    client.call(&args).await.ok()
                });
            }
            // Apply whatever MGETs have completed meanwhile.
            while let Some(Some(values)) = futures::FutureExt::now_or_never(mgets.next()) {
                for value in values.array() {
                    view.insert(value.bulk().expect("value"));
                }
            }
            if cursor == b"0" {
                break;
            }
        }
        while let Some(values) = mgets.next().await {
            for value in values.array() {
                view.insert(value.bulk().expect("value"));
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(view.len(), count, "redis cold view");
        if !notes.iter().any(|n| n.starts_with("redis cold")) {
            notes.push(format!(
                "redis cold start: SCAN MATCH cold:* COUNT {page} + MGET per page (not a \
                 snapshot: keys changing during the scan may be missed or seen twice)"
            ));
        }
        elapsed
    }

    fn server_pid(&self) -> u32 {
        self.server.pid()
    }
}

// ---------------------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

struct Column {
    name: &'static str,
    durability: String,
    figures: Figures,
}

/// Which way is better for a figure.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

fn value_of(figures: &Figures, row: usize) -> Option<f64> {
    match row {
        0 => figures.p50.map(|d| d.as_secs_f64() * 1e3),
        1 => figures.p99.map(|d| d.as_secs_f64() * 1e3),
        2 => figures.rate,
        3 => figures.cold.map(|d| d.as_secs_f64() * 1e3),
        4 => figures.expiry.map(|d| d.as_secs_f64() * 1e3),
        5 => figures.rss_mib,
        _ => None,
    }
}

fn format_value(row: usize, v: Option<f64>) -> String {
    match (row, v) {
        (_, None) => "not measured".into(),
        (2, Some(v)) => format!("{v:.0}/s"),
        (5, Some(v)) => format!("{v:.1} MiB"),
        (3 | 4, Some(v)) => format!("{v:.1} ms"),
        (_, Some(v)) => format!("{v:.3} ms"),
    }
}

#[tokio::main]
async fn main() {
    let samples = env_usize("PRISM_SIDE_SAMPLES", 1000);
    let count = env_usize("PRISM_SIDE_REGISTRATIONS", 10_000);
    let cold = env_usize("PRISM_SIDE_COLD", 100_000);
    let etcd_connections = env_usize("PRISM_SIDE_ETCD_CONNS", WINDOW);
    let systems = std::env::var("PRISM_SIDE_SYSTEMS").unwrap_or_default();
    let run = |name: &str| systems.is_empty() || systems.split(',').any(|s| s.trim() == name);
    println!(
        "prism-mesh vs etcd 3.4 vs Redis 7, same workload, {} at {}",
        std::env::consts::ARCH,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );

    let mut columns = Vec::new();
    let mut commands = Vec::new();
    for (always, name) in [(false, "mesh"), (true, "mesh-always")] {
        if !run(name) {
            continue;
        }
        eprintln!("prism-mesh on nats-server ({name})...");
        let mut system = MeshSystem::start(always);
        let figures = measure(&mut system, samples, count, cold).await;
        columns.push(Column {
            name: if always {
                "prism-mesh, NATS sync always"
            } else {
                "prism-mesh, NATS default sync"
            },
            durability: if always {
                "fsync before every ack".into()
            } else {
                "written, fsync every 2 min (ack before fsync)".into()
            },
            figures,
        });
    }
    if run("etcd") {
        eprintln!("etcd...");
        let server = etcd::EtcdServer::start();
        commands.push(server.command.clone());
        let mut system = EtcdSystem {
            server,
            connections: etcd_connections,
        };
        let mut figures = measure(&mut system, samples, count, cold).await;
        figures.notes.push(format!(
            "etcd registrations/s: put with a shared lease, {} HTTP/1.1 connections to the \
             gateway, one request in flight on each",
            etcd_connections.min(WINDOW)
        ));
        columns.push(Column {
            name: "etcd 3.4",
            durability: "fsync before every ack (WAL)".into(),
            figures,
        });
    }
    for (durable, name) in [(true, "redis-aof"), (false, "redis")] {
        if !run(name) {
            continue;
        }
        eprintln!("redis ({name})...");
        let server = redis::RedisServer::start(durable);
        commands.push(server.command.clone());
        let mut system = RedisSystem { server };
        let figures = measure(&mut system, samples, count, cold).await;
        columns.push(Column {
            name: if durable {
                "Redis 7, AOF fsync always"
            } else {
                "Redis 7, no persistence"
            },
            durability: if durable {
                "fsync before every reply (appendfsync always)".into()
            } else {
                "memory only: lost on restart".into()
            },
            figures,
        });
    }

    let names = [
        format!("register -> visible at a watcher, p50 ({samples} sequential)"),
        format!("register -> visible at a watcher, p99 ({samples} sequential)"),
        format!("registrations/s, {WINDOW} in flight ({count})"),
        format!("cold start, new client's view of {cold} instances"),
        format!(
            "failure detection, TTL {} s, last write -> gone at watcher",
            EXPIRY_TTL.as_secs()
        ),
        format!("server RSS after the {cold} load (VmRSS)"),
    ];
    let better = [
        Better::Lower,
        Better::Lower,
        Better::Higher,
        Better::Lower,
        Better::Lower,
        Better::Lower,
    ];

    print!("\n| figure |");
    for c in &columns {
        print!(" {} |", c.name);
    }
    print!("\n|---|");
    for _ in &columns {
        print!("---|");
    }
    print!("\n| durability |");
    for c in &columns {
        print!(" {} |", c.durability);
    }
    println!();
    for (row, name) in names.iter().enumerate() {
        print!("| {name} |");
        for c in &columns {
            print!(" {} |", format_value(row, value_of(&c.figures, row)));
        }
        println!();
    }

    // The goal: prism-mesh ahead of both on every figure at equal durability.
    let find = |name: &str| columns.iter().find(|c| c.name == name);
    let verdicts = [
        (
            "fsync before every ack",
            "prism-mesh, NATS sync always",
            ["etcd 3.4", "Redis 7, AOF fsync always"],
        ),
        (
            "no fsync per write",
            "prism-mesh, NATS default sync",
            ["Redis 7, no persistence", ""],
        ),
    ];
    for (label, ours, others) in verdicts {
        let Some(ours) = find(ours) else { continue };
        let others: Vec<&Column> = others.iter().filter_map(|o| find(o)).collect();
        if others.is_empty() {
            continue;
        }
        println!(
            "\nGoal at equal durability ({label}): {} ahead of {}",
            ours.name,
            others
                .iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
                .join(" and ")
        );
        println!("\n| figure | prism-mesh | best other | met |\n|---|---|---|---|");
        for (row, name) in names.iter().enumerate() {
            let mine = value_of(&ours.figures, row);
            let best = others
                .iter()
                .filter_map(|o| value_of(&o.figures, row).map(|v| (v, o.name)))
                .reduce(|a, b| match better[row] {
                    Better::Lower if b.0 < a.0 => b,
                    Better::Higher if b.0 > a.0 => b,
                    _ => a,
                });
            let met = match (mine, best) {
                (Some(m), Some((b, _))) => match better[row] {
                    Better::Lower => m < b,
                    Better::Higher => m > b,
                },
                _ => false,
            };
            println!(
                "| {name} | {} | {} | {} |",
                format_value(row, mine),
                best.map(|(v, n)| format!("{} ({n})", format_value(row, Some(v))))
                    .unwrap_or_else(|| "-".into()),
                if met { "met" } else { "**not met**" }
            );
        }
    }

    println!("\nNotes:");
    for c in &columns {
        for note in &c.figures.notes {
            println!("- {}: {note}", c.name);
        }
    }
    for command in commands {
        println!("- started: `{command}`");
    }
}
