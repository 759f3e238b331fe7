//! How many instances a three-node cluster sustains with no false expiry, with the
//! instances in one bucket against spread over three (shards by service).
//!
//! `cargo bench -p prism-benches --bench shards` (env: PRISM_SHARDS_STEPS=4000,8000,16000,
//! 32000 instances, PRISM_SHARDS_HOLD_SECS=25 per step, PRISM_SHARDS_COUNTS=1,3).
//!
//! Per shard count: a fresh cluster, R3 buckets and event stream, TTL 10 s, heartbeat 3 s.
//! One owner process registers instances (100 services) up to each step, then holds them
//! for the hold time while a watching peer counts expiries: every instance is alive, so
//! each expiry is false. A step passes with none; the figure is the last step passed. The
//! servers' CPU over each hold is read from /proc.

use std::time::{Duration, Instant};

use futures::StreamExt;
use prism_benches::{env_usize, process_cpu};
use prism_mesh::protocol::shard_bucket;
use prism_mesh::{EventKind, Mesh, Registration, ServiceInstance};
use prism_tests::{test_options, NatsCluster};

const TTL: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(3);

fn list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

struct Step {
    instances: usize,
    refused: usize,
    expiries: u64,
    late: u64,
    writes_per_sec: f64,
    server_cores: f64,
}

async fn run(shards: u16, steps: &[usize], hold: Duration) -> (Vec<String>, Vec<Step>) {
    let cluster = NatsCluster::start();
    let url = cluster.urls();
    let mesh = |shards: u16| {
        Mesh::builder()
            .nats(test_options(&url).replicas(3).shards(shards))
            .instance_ttl(TTL)
            .heartbeat_interval(HEARTBEAT)
    };
    let owner = mesh(shards).connect().await.unwrap();
    let watcher = mesh(shards).connect().await.unwrap();
    let mut expiries = watcher.subscribe_filtered(EventKind::Expired.into());
    // Shard i's stream led by node i (mod 3), as an operator spreads them
    // (`nats stream cluster step-down --preferred`): the writes then go through
    // different servers.
    let js = cluster.admin().await;
    let mut leaders = Vec::new();
    for shard in 0..shards {
        let stream = format!("KV_{}", shard_bucket("prism-instances", shard));
        let wanted = usize::from(shard) % cluster.nodes.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut leader = cluster.stream_leader(&stream).await;
        while leader != wanted && Instant::now() < deadline {
            let body = format!(
                r#"{{"placement":{{"preferred":"{}"}}}}"#,
                cluster.nodes[wanted].server_name()
            );
            let _ = js
                .client()
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                    body.into(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            leader = cluster.stream_leader(&stream).await;
        }
        leaders.push(format!("{stream} led by node {leader}"));
    }
    let mut held: Vec<Registration> = Vec::new();
    let mut results = Vec::new();
    for &target in steps {
        let needed = target.saturating_sub(held.len());
        let added: Vec<Registration> = futures::stream::iter(held.len()..held.len() + needed)
            .map(|n| {
                let owner = owner.clone();
                async move {
                    let instance = ServiceInstance::builder(
                        format!("svc-{:02}", n % 100),
                        "10.0.0.1",
                        (1000 + n % 60000) as u16,
                    )
                    .build()
                    .unwrap();
                    owner.register(instance).await
                }
            })
            .buffer_unordered(512)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        // A registration the cluster could not acknowledge in time fails the step.
        let refused = needed - added.len();
        held.extend(added);
        // Expiries before the hold (none expected) count too.
        let late_before = owner.stats().heartbeats_late;
        let cpu_before: Duration = cluster.nodes.iter().map(|n| process_cpu(n.pid())).sum();
        let started = Instant::now();
        let mut seen = 0u64;
        while started.elapsed() < hold {
            let left = hold.saturating_sub(started.elapsed());
            if let Ok(Some(_)) = tokio::time::timeout(left, expiries.next()).await {
                seen += 1;
            }
        }
        let cpu: Duration = cluster
            .nodes
            .iter()
            .map(|n| process_cpu(n.pid()))
            .sum::<Duration>()
            - cpu_before;
        let step = Step {
            instances: held.len(),
            refused,
            expiries: seen,
            late: owner.stats().heartbeats_late - late_before,
            writes_per_sec: held.len() as f64 / HEARTBEAT.as_secs_f64(),
            server_cores: cpu.as_secs_f64() / hold.as_secs_f64(),
        };
        eprintln!(
            "{shards} shard(s), {} instances: {} registrations refused, {} false expiries, {} late heartbeats, {:.2} server cores",
            step.instances, step.refused, step.expiries, step.late, step.server_cores
        );
        let failed = step.expiries > 0 || step.refused > 0;
        results.push(step);
        if failed {
            break;
        }
    }
    watcher.close_without_deregistering().await;
    owner.close_without_deregistering().await;
    (leaders, results)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let steps = list("PRISM_SHARDS_STEPS", "4000,8000,16000,32000");
    let hold = Duration::from_secs(env_usize("PRISM_SHARDS_HOLD_SECS", 25) as u64);
    let counts = list("PRISM_SHARDS_COUNTS", "1,3");
    let mut sustained = Vec::new();
    for &count in &counts {
        let (leaders, results) = run(count as u16, &steps, hold).await;
        println!("\n{count} shard(s): {}", leaders.join(", "));
        println!("| instances | heartbeats/s | registrations refused | false expiries | late heartbeats | server CPU (cores, 3 nodes) |");
        println!("|---|---|---|---|---|---|");
        for step in &results {
            println!(
                "| {} | {:.0} | {} | {} | {} | {:.2} |",
                step.instances,
                step.writes_per_sec,
                step.refused,
                step.expiries,
                step.late,
                step.server_cores
            );
        }
        let best = results
            .iter()
            .take_while(|s| s.expiries == 0 && s.refused == 0)
            .map(|s| s.instances)
            .max()
            .unwrap_or(0);
        sustained.push((
            count,
            best,
            results.iter().all(|s| s.expiries == 0 && s.refused == 0),
        ));
    }
    println!();
    for (count, best, never_failed) in sustained {
        println!(
            "{count} shard(s): sustained {best} instances with no false expiry{}",
            if never_failed {
                " (every step passed: the limit is higher)"
            } else {
                ""
            }
        );
    }
}
