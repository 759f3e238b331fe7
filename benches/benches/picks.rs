//! Load-balancer picks per second per core, and allocations per pick, over a view of
//! 1,000 services x 100 instances (in-memory backend: picks read the view, not a backend).
//!
//! `cargo bench -p prism-benches --bench picks` (env: PRISM_PICKS=5000000 picks per figure,
//! PRISM_PICK_SERVICES=1000, PRISM_PICK_INSTANCES=100). Single thread: per core.

use prism_benches::{allocations, env_usize, CountingAllocator};
use std::hint::black_box;
use std::time::{Duration, Instant};

use prism_mesh::{InstanceStatus, MemoryStore, Mesh, ServiceInstance, Strategy};

/// Counts every allocation, so the table can show zero per pick.
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

struct Figure {
    name: String,
    nanos_per_pick: f64,
    allocations: f64,
}

/// Runs `pick` `count` times after a warm-up; time and allocations per pick.
fn measure(name: String, count: usize, mut pick: impl FnMut(usize)) -> Figure {
    for n in 0..count / 10 {
        pick(n);
    }
    let allocated = allocations();
    let started = Instant::now();
    for n in 0..count {
        pick(n);
    }
    let elapsed = started.elapsed();
    let allocated = allocations() - allocated;
    Figure {
        name,
        nanos_per_pick: elapsed.as_secs_f64() * 1e9 / count as f64,
        allocations: allocated as f64 / count as f64,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let picks = env_usize("PRISM_PICKS", 5_000_000);
    let services = env_usize("PRISM_PICK_SERVICES", 1000);
    let instances = env_usize("PRISM_PICK_INSTANCES", 100);

    let mesh = Mesh::builder()
        .memory_store(MemoryStore::new())
        .instance_ttl(Duration::from_secs(600))
        .heartbeat_interval(Duration::from_secs(200))
        .connect()
        .await
        .expect("mesh");
    let names: Vec<String> = (0..services).map(|s| format!("svc-{s}")).collect();
    eprintln!("registering {} instances...", services * instances);
    for name in &names {
        for i in 0..instances {
            let instance = ServiceInstance::builder(name, "10.0.0.1", 1000 + i as u16)
                .status(InstanceStatus::Healthy)
                .weight(50 + (i as u32 % 4) * 50)
                .build()
                .expect("instance");
            mesh.register(instance).await.expect("register");
        }
    }
    while mesh.instance_count() < services * instances {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("view ready; picking on one thread");

    let mut figures = Vec::new();
    let keys: Vec<[u8; 8]> = (0..4096u64).map(|k| k.to_le_bytes()).collect();
    for strategy in Strategy::ALL {
        let balancer = mesh
            .balancer(&names[services / 2])
            .expect("balancer")
            .strategy(strategy)
            .build();
        let figure = match strategy {
            Strategy::ConsistentHash => measure(
                format!("{strategy}, cached handle (pick_by_key)"),
                picks,
                |n| {
                    black_box(balancer.pick_by_key(keys[n & 4095]).expect("pick"));
                },
            ),
            _ => measure(format!("{strategy}, cached handle"), picks, |_| {
                black_box(balancer.pick().expect("pick"));
            }),
        };
        figures.push(figure);
        if strategy == Strategy::LeastOutstanding {
            figures.push(measure(
                format!("{strategy}, cached handle, with request guard"),
                picks,
                |_| {
                    drop(black_box(balancer.pick_guarded().expect("pick")));
                },
            ));
        }
    }
    let hot = &names[services / 2];
    figures.push(measure(
        "weighted_round_robin, by service name (one service)".to_string(),
        picks,
        |_| {
            black_box(mesh.pick(hot).expect("pick"));
        },
    ));
    let handles: Vec<_> = names
        .iter()
        .map(|name| mesh.balancer(name).expect("balancer").build())
        .collect();
    figures.push(measure(
        "weighted_round_robin, cached handles (1,000 services in turn)".to_string(),
        picks,
        |n| {
            black_box(handles[n % services].pick().expect("pick"));
        },
    ));
    // By name, across every service in turn (each has its own by-name balancer).
    figures.push(measure(
        "weighted_round_robin, by service name (1,000 services in turn)".to_string(),
        picks,
        |n| {
            black_box(mesh.pick(&names[n % services]).expect("pick"));
        },
    ));

    println!(
        "\nPicks over {services} services x {instances} instances, one thread, {} at {}",
        std::env::consts::ARCH,
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    println!("\n| pick | ns/pick | picks/s per core | allocations/pick |\n|---|---|---|---|");
    for figure in &figures {
        let ns = figure.nanos_per_pick;
        println!(
            "| {} | {ns:.1} | {:.1}M | {:.4} |",
            figure.name,
            1e3 / ns,
            figure.allocations
        );
    }
    // Envoy's figure is a P2C pick whose loads change with every request: the comparable
    // pick here is the guarded one, which counts the request outstanding until it ends
    // (an unguarded P2C pick over loads that never change is cheaper and not comparable).
    if let Some(guarded) = figures
        .iter()
        .find(|f| f.name.contains("with request guard"))
    {
        println!(
            "\nAnchor: Envoy's power-of-two-choices pick, 216 ns (published); the guarded P2C \
             pick here: {:.1} ns ({:.2}x).",
            guarded.nanos_per_pick,
            guarded.nanos_per_pick / 216.0
        );
    }
    mesh.shutdown().await;
}
