//! The failover rows of `mesh_vs_raw`: a three-node cluster whose stream leader is lost to
//! SIGKILL or SIGTERM while prism-mesh registers and a raw async-nats KV writer puts, both
//! every 100 ms on the same leader, and twenty owners heartbeat under a short TTL. Printed:
//! stop -> first acknowledged write started after the stop, mesh beside raw (medians per
//! kind of stop), and the `Expired`/`Deregistered` a watching peer reported for instances
//! that were alive throughout (false verdicts).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use prism_mesh::protocol::{DEFAULT_BUCKET, DEFAULT_EVENT_STREAM};
use prism_mesh::{EventFilter, EventKind, Mesh, NatsOptions, ServiceInstance};
use prism_tests::{first_ack_after as resumed, Attempts, NatsCluster};

use super::{ms, Row};

const RAW_BUCKET: &str = "raw-failover";
/// A stream for raw's second write, as a registration's event.
const RAW_EVENTS: &str = "RAW_FAILOVER_EVENTS";
const OWNERS: u16 = 20;
const CADENCE: Duration = Duration::from_millis(100);

/// Starts one write every `CADENCE`, each on its own task, so a stalled write does not hold
/// back the next: both sides measure with the same resolution.
fn every_cadence<F, Fut>(write: F) -> (Arc<Attempts>, tokio::task::JoinHandle<()>)
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let attempts: Arc<Attempts> = Arc::default();
    let record = attempts.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CADENCE);
        for n in 0u64.. {
            tick.tick().await;
            let write = write(n);
            let record = record.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(20), write)
                    .await
                    .unwrap_or(false);
                record.lock().unwrap().push((started, Instant::now(), ok));
            });
        }
    });
    (attempts, task)
}

/// The leader of `stream` and whether every replica is current.
async fn leader(js: &jetstream::Context, stream: &str) -> Option<(String, bool)> {
    let mut handle = js.get_stream(stream).await.ok()?;
    let info = handle.info().await.ok()?;
    let cluster = info.cluster.as_ref()?;
    let all_current = cluster.replicas.iter().all(|r| r.current);
    Some((cluster.leader.clone()?, all_current))
}

/// Waits until every replica of the three streams is current, then moves the leadership
/// of all three to the node leading the bucket's stream; returns that node's index.
async fn align(cluster: &NatsCluster) -> usize {
    let js = cluster.admin().await;
    let streams = [
        format!("KV_{DEFAULT_BUCKET}"),
        format!("KV_{RAW_BUCKET}"),
        DEFAULT_EVENT_STREAM.to_string(),
        RAW_EVENTS.to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "could not align the stream leaders"
        );
        let mut leaders = Vec::new();
        for stream in &streams {
            leaders.push(leader(&js, stream).await);
        }
        let Some((target, _)) = leaders[0].clone() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let settled = leaders.iter().all(|l| {
            l.as_ref()
                .is_some_and(|(name, current)| *name == target && *current)
        });
        if settled {
            return cluster
                .nodes
                .iter()
                .position(|n| n.is_running() && n.server_name() == target)
                .expect("leader is a running node");
        }
        for (stream, l) in streams.iter().zip(&leaders) {
            if l.as_ref()
                .is_some_and(|(name, current)| *name != target && *current)
            {
                let body = format!(r#"{{"placement":{{"preferred":"{target}"}}}}"#);
                let _ = js
                    .client()
                    .request(
                        format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                        Bytes::from(body),
                    )
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

pub(crate) async fn failover(rows: &mut Vec<Row>, changes: usize, ttl: Duration, tail: Duration) {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let options = |n: usize| {
        let mut list: Vec<&str> = urls.split(',').collect();
        list.rotate_left(n % 3);
        NatsOptions::new(list.join(",")).replicas(3)
    };
    let mesh = |n: usize| {
        Mesh::builder()
            .nats(options(n))
            .instance_ttl(ttl)
            .heartbeat_interval(Duration::from_secs(1))
            .connect()
    };
    let peer = mesh(1).await.expect("peer");
    let removed = Arc::new(Mutex::new(Vec::new()));
    let mut removals = peer
        .subscribe_filtered(EventFilter::from(EventKind::Expired).kind(EventKind::Deregistered));
    let record = removed.clone();
    tokio::spawn(async move {
        while let Some(event) = removals.next().await {
            record.lock().unwrap().push(event);
        }
    });
    // Registrations the writer saw acknowledged: those instances live to the end.
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut owners = Vec::new();
    for n in 0..OWNERS {
        let owner = mesh(usize::from(n)).await.expect("owner");
        let instance = ServiceInstance::builder("owned", "10.3.0.1", 9000 + n)
            .build()
            .expect("instance");
        owner.register(instance).await.expect("owner registers");
        owners.push(owner);
    }
    let writer = mesh(0).await.expect("writer");
    let acks = acknowledged.clone();
    let (mesh_attempts, mesh_task) = every_cadence(move |n| {
        let writer = writer.clone();
        let acks = acks.clone();
        async move {
            let instance = ServiceInstance::builder("written", "10.3.0.2", (n % 60_000) as u16)
                .build()
                .expect("instance");
            let id = instance.id;
            let ok = writer.register(instance).await.is_ok();
            if ok {
                acks.lock().unwrap().insert(id);
            }
            ok
        }
    });

    let raw_client = async_nats::connect(options(2).urls()).await.expect("raw");
    let raw_js = jetstream::new(raw_client);
    let store = raw_js
        .create_key_value(kv::Config {
            bucket: RAW_BUCKET.into(),
            history: 1,
            num_replicas: 3,
            limit_markers: Some(Duration::from_secs(60)),
            ..Default::default()
        })
        .await
        .expect("raw bucket");
    raw_js
        .create_stream(jetstream::stream::Config {
            name: RAW_EVENTS.into(),
            subjects: vec!["raw-failover-events.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("raw event stream");
    let kv_only = store.clone();
    let (raw_attempts, raw_task) = every_cadence(move |n| {
        let store = kv_only.clone();
        async move {
            store
                .put(format!("k{n}"), Bytes::from_static(b"x"))
                .await
                .is_ok()
        }
    });
    // What a registration writes: the key, then an event on a second stream.
    let (both_attempts, both_task) = every_cadence(move |n| {
        let store = store.clone();
        let js = raw_js.clone();
        async move {
            store
                .put(format!("b{n}"), Bytes::from_static(b"x"))
                .await
                .is_ok()
                && match js
                    .publish(format!("raw-failover-events.{n}"), Bytes::from_static(b"e"))
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
        }
    });

    let mut gaps: [(Vec<Duration>, Vec<Duration>, Vec<Duration>); 2] = Default::default();
    for change in 0..changes {
        let victim = align(&cluster).await;
        // Both writers running on the aligned leader before the stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stopped = Instant::now();
        let kind = change % 2;
        if kind == 0 {
            cluster.nodes[victim].kill();
        } else {
            cluster.nodes[victim].terminate();
        }
        let (ours, raw, both) = tokio::join!(
            resumed(&mesh_attempts, stopped),
            resumed(&raw_attempts, stopped),
            resumed(&both_attempts, stopped)
        );
        eprintln!(
            "  {} of the leader: mesh resumed after {ours:?}, raw KV put after {raw:?}, raw put + event after {both:?}",
            ["SIGKILL", "SIGTERM"][kind]
        );
        gaps[kind].0.push(ours);
        gaps[kind].1.push(raw);
        gaps[kind].2.push(both);
        cluster.nodes[victim].restart();
    }
    align(&cluster).await;
    // Held expiries run out after the grace: count them too.
    tokio::time::sleep(tail).await;
    mesh_task.abort();
    raw_task.abort();
    both_task.abort();
    for (kind, (ours, raw, both)) in ["SIGKILL", "SIGTERM"].iter().zip(gaps) {
        if ours.is_empty() {
            continue;
        }
        let n = ours.len();
        let (m, r, b) = (median(ours), median(raw), median(both));
        rows.push(Row {
            figure: format!(
                "leader {kind} -> first acknowledged registration started after it, median of {n} (raw: KV put on the same leader)"
            ),
            mesh: ms(m),
            raw: ms(r),
            ratio: m.as_secs_f64() / r.as_secs_f64(),
        });
        rows.push(Row {
            figure: format!(
                "leader {kind} -> the same, raw doing a registration's two writes (KV put, then a publish to a second stream on the same leader)"
            ),
            mesh: ms(m),
            raw: ms(b),
            ratio: m.as_secs_f64() / b.as_secs_f64(),
        });
    }
    let stats = peer.stats();
    // A registration whose event could not be stored is rolled back (and its caller told):
    // its removal is no verdict on a live instance.
    let live = acknowledged.lock().unwrap().clone();
    let verdicts = removed
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.service() == "owned" || live.contains(&e.instance().id))
        .inspect(|e| {
            eprintln!(
                "  false verdict at the peer: {:?} {}/{}",
                e.kind(),
                e.service(),
                e.instance().id
            )
        })
        .count();
    rows.push(Row {
        figure: format!(
            "false Expired/Deregistered at a peer through {changes} leader changes (TTL {}, heartbeat 1 s, {OWNERS} owners; expiries held: {})",
            humantime::format_duration(ttl),
            stats.preservation_activations
        ),
        mesh: verdicts.to_string(),
        raw: "-".into(),
        ratio: f64::NAN,
    });
    for owner in owners {
        owner.shutdown().await;
    }
    peer.shutdown().await;
}
