//! What a heartbeat costs the server and the peers, with full-view peers against peers
//! that follow a few services, beside a raw NATS consumer of the whole bucket.
//!
//! `cargo bench -p prism-benches --bench scale` (env: PRISM_SCALE_SERVICES=100,
//! PRISM_SCALE_PER_SERVICE=100, PRISM_SCALE_RATE=3000 heartbeats/s, PRISM_SCALE_SECS=10 per
//! phase, PRISM_SCALE_PEERS=4, PRISM_SCALE_FOLLOWED=5 services per scoped peer).
//!
//! A writer rewrites every instance's record unchanged (what a heartbeat is) at the rate,
//! with the record bytes and `Nats-TTL` the library writes. Each peer runs on its own
//! thread (a current-thread runtime holding its NATS connection), so its CPU is that
//! thread's (`/proc/thread-self/schedstat`); the server's is the sum of its threads'.
//! Phases: no peer, full-view peers, scoped peers, raw consumers of the whole bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prism_benches::{
    env_usize, owner_record, process_cpu, put_records, server_with_mesh_layout, thread_cpu,
};
use prism_mesh::{Mesh, ServiceInstance};
use prism_tests::test_options;

const BUCKET: &str = "prism-instances";
const TTL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum PeerKind {
    Full,
    Scoped,
    Raw,
}

/// One peer on its own thread: connects, waits at `start`, measures its thread's CPU and
/// messages until `stop`, then reports (CPU, changes seen).
fn spawn_peer(
    url: String,
    kind: PeerKind,
    services: Vec<String>,
    start: Arc<Barrier>,
    stop: Arc<Barrier>,
    report: mpsc::Sender<(Duration, u64)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let seen = Arc::new(AtomicU64::new(0));
            let mesh = match kind {
                PeerKind::Raw => {
                    let client = async_nats::connect(&url).await.unwrap();
                    let js = async_nats::jetstream::new(client.clone());
                    let stream = js.get_stream(format!("KV_{BUCKET}")).await.unwrap();
                    let consumer = stream
                        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
                            deliver_subject: client.new_inbox(),
                            filter_subject: format!("$KV.{BUCKET}.>"),
                            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let mut messages = consumer.messages().await.unwrap();
                    let counter = seen.clone();
                    tokio::spawn(async move {
                        while let Some(Ok(_)) = messages.next().await {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    None
                }
                PeerKind::Full | PeerKind::Scoped => {
                    let mut builder = Mesh::builder()
                        .nats(test_options(&url))
                        .publish_expired_events(false)
                        .checkpoints(prism_mesh::CheckpointPolicy::disabled());
                    if let PeerKind::Scoped = kind {
                        builder = builder.follow_services(services);
                    }
                    Some(builder.connect().await.unwrap())
                }
            };
            tokio::task::spawn_blocking(move || start.wait())
                .await
                .unwrap();
            let cpu = thread_cpu();
            let changes = mesh.as_ref().map_or(0, |m| m.stats().changes_applied);
            let counted = seen.load(Ordering::Relaxed);
            tokio::task::spawn_blocking(move || stop.wait())
                .await
                .unwrap();
            let cpu = thread_cpu() - cpu;
            let received = match &mesh {
                Some(mesh) => mesh.stats().changes_applied - changes,
                None => seen.load(Ordering::Relaxed) - counted,
            };
            report.send((cpu, received)).unwrap();
            if let Some(mesh) = mesh {
                mesh.shutdown().await;
            }
        });
    })
}

struct Phase {
    name: String,
    writes: u64,
    server: Duration,
    peers: Vec<(Duration, u64)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let services = env_usize("PRISM_SCALE_SERVICES", 100);
    let per_service = env_usize("PRISM_SCALE_PER_SERVICE", 100);
    let rate = env_usize("PRISM_SCALE_RATE", 3000) as u64;
    let secs = env_usize("PRISM_SCALE_SECS", 10) as u64;
    let peers = env_usize("PRISM_SCALE_PEERS", 4);
    let followed = env_usize("PRISM_SCALE_FOLLOWED", 5).min(services);

    let (server, js) = server_with_mesh_layout().await;
    let url = server.url();
    let names: Vec<String> = (0..services).map(|s| format!("svc-{s:03}")).collect();
    let mut keys = Vec::new();
    for service in &names {
        for n in 0..per_service {
            let instance = ServiceInstance::builder(service.as_str(), "10.1.2.3", 8000 + n as u16)
                .tag("v2")
                .zone("eu-west-1a")
                .metadata("version", "2.1.0")
                .build()
                .unwrap();
            keys.push(owner_record(BUCKET, instance, TTL));
        }
    }
    put_records(&js, keys.clone(), TTL, 256).await;
    eprintln!("{} instances written", keys.len());

    // The heartbeat writer: every key in turn, at `rate` per second, until the bench ends.
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let writes = writes.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / 100).max(1) as usize;
            let mut next = 0usize;
            loop {
                tick.tick().await;
                let batch: Vec<_> = (0..per_tick)
                    .map(|i| keys[(next + i) % keys.len()].clone())
                    .collect();
                next = (next + per_tick) % keys.len();
                put_records(&js, batch, TTL, 64).await;
                writes.fetch_add(per_tick as u64, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut phases = Vec::new();
    for (name, kind, count) in [
        ("no peer".to_string(), PeerKind::Full, 0),
        (format!("{peers} full-view peers"), PeerKind::Full, peers),
        (
            format!("{peers} peers following {followed} services each"),
            PeerKind::Scoped,
            peers,
        ),
        (
            format!("{peers} raw consumers of the bucket"),
            PeerKind::Raw,
            peers,
        ),
    ] {
        let start = Arc::new(Barrier::new(count + 1));
        let stop = Arc::new(Barrier::new(count + 1));
        let (report, reports) = mpsc::channel();
        let threads: Vec<_> = (0..count)
            .map(|p| {
                let mine = (0..followed)
                    .map(|f| names[(p * followed + f) % names.len()].clone())
                    .collect();
                spawn_peer(
                    url.clone(),
                    kind,
                    mine,
                    start.clone(),
                    stop.clone(),
                    report.clone(),
                )
            })
            .collect();
        tokio::task::spawn_blocking({
            let start = start.clone();
            move || start.wait()
        })
        .await
        .unwrap();
        let (server_cpu, written, began) = (
            process_cpu(server.pid()),
            writes.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let server_cpu = process_cpu(server.pid()) - server_cpu;
        let written = writes.load(Ordering::Relaxed) - written;
        tokio::task::spawn_blocking(move || stop.wait())
            .await
            .unwrap();
        drop(report);
        let peer_figures: Vec<_> = reports.iter().collect();
        for thread in threads {
            thread.join().unwrap();
        }
        eprintln!("{name}: {written} heartbeats in {:?}", began.elapsed());
        phases.push(Phase {
            name,
            writes: written,
            server: server_cpu,
            peers: peer_figures,
        });
    }
    writer.abort();

    let micros = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "\n{} instances ({services} services x {per_service}), {rate} heartbeats/s, {secs} s per phase\n",
        keys.len()
    );
    println!("| phase | server CPU per heartbeat | CPU per peer | per message a peer receives | messages per peer |");
    println!("|---|---|---|---|---|");
    for phase in &phases {
        let n = phase.peers.len().max(1) as u32;
        let cpu: Duration = phase.peers.iter().map(|(c, _)| *c).sum::<Duration>() / n;
        let received = phase.peers.iter().map(|(_, r)| *r).sum::<u64>() / n as u64;
        println!(
            "| {} | {:.1} µs | {:.0} ms | {:.2} µs | {} |",
            phase.name,
            micros(phase.server, phase.writes),
            cpu.as_secs_f64() * 1e3,
            micros(cpu, received),
            received
        );
    }
    let server_per = |p: &Phase| micros(p.server, p.writes);
    let peer_cpu = |p: &Phase| {
        p.peers
            .iter()
            .map(|(c, _)| *c)
            .sum::<Duration>()
            .as_secs_f64()
            / p.peers.len().max(1) as f64
    };
    let (alone, full, scoped, raw) = (&phases[0], &phases[1], &phases[2], &phases[3]);
    println!();
    println!(
        "server CPU per heartbeat, scoped peers / no peer: {:.2}x (target at most 1.3x); full-view peers / no peer: {:.2}x",
        server_per(scoped) / server_per(alone),
        server_per(full) / server_per(alone)
    );
    println!(
        "peer CPU, scoped / full view: {:.3} (target at most 0.10); full-view peer / raw consumer: {:.2}x",
        peer_cpu(scoped) / peer_cpu(full),
        peer_cpu(full) / peer_cpu(raw)
    );
}
