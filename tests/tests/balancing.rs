//! Client-side load balancing over the in-memory view: strategies, selection, sticky
//! routing, outstanding-request accounting, and picks while the view changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prism_mesh::{
    Balancer, ErrorKind, InstanceStatus, MemoryStore, Mesh, Registration, Selection,
    ServiceInstance, Strategy,
};
use prism_tests::wait_view;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);

async fn mesh(store: &MemoryStore) -> Mesh {
    Mesh::builder()
        .memory_store(store.clone())
        .connect()
        .await
        .expect("memory mesh")
}

/// Registers healthy instances of `service` on ports 9000.. with `weights`, and waits
/// until the view holds them all.
async fn healthy(mesh: &Mesh, service: &str, weights: &[u32]) -> Vec<Registration> {
    healthy_with_ids(mesh, service, weights, |_| Uuid::new_v4()).await
}

/// [`healthy`], with instance `n`'s id from `id(n)`.
async fn healthy_with_ids(
    mesh: &Mesh,
    service: &str,
    weights: &[u32],
    id: impl Fn(usize) -> Uuid,
) -> Vec<Registration> {
    let mut registrations = Vec::new();
    for (n, weight) in weights.iter().enumerate() {
        let instance = ServiceInstance::builder(service, "127.0.0.1", 9000 + n as u16)
            .id(id(n))
            .weight(*weight)
            .status(InstanceStatus::Healthy)
            .build()
            .unwrap();
        registrations.push(mesh.register(instance).await.unwrap());
    }
    let want = weights.len();
    wait_view(mesh, service, WAIT, "all instances", |v| v.len() >= want).await;
    registrations
}

fn counts_by_port(balancer: &Balancer, picks: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        *counts.entry(balancer.pick().unwrap().port).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_round_robin_gives_exact_proportions() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    healthy(&mesh, "wrr", &[300, 100, 50]).await;
    let balancer = mesh.balancer("wrr").unwrap().build();
    // 300:100:50 is 6:2:1; whole periods give exact counts.
    let counts = counts_by_port(&balancer, 9 * 1000);
    assert_eq!(counts[&9000], 6000);
    assert_eq!(counts[&9001], 2000);
    assert_eq!(counts[&9002], 1000);
    // Smooth: the heavy instance never runs more than its share in a row (a a b a c a a ...).
    let run: Vec<u16> = (0..9).map(|_| balancer.pick().unwrap().port).collect();
    assert!(run.windows(4).all(|w| w.iter().any(|p| *p != 9000)));
}

#[tokio::test]
async fn round_robin_visits_every_instance_equally_whatever_the_weights() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    healthy(&mesh, "rr", &[500, 1, 100, 7]).await;
    let balancer = mesh
        .balancer("rr")
        .unwrap()
        .strategy(Strategy::RoundRobin)
        .build();
    let counts = counts_by_port(&balancer, 4000);
    assert!(counts.values().all(|c| *c == 1000), "{counts:?}");
}

#[tokio::test]
async fn weighted_random_and_random_stay_within_statistical_bounds() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    healthy(&mesh, "rand", &[100, 300]).await;
    let picks = 40_000;

    let weighted = mesh
        .balancer("rand")
        .unwrap()
        .strategy(Strategy::WeightedRandom)
        .build();
    let counts = counts_by_port(&weighted, picks);
    // Binomial(40000, 1/4): mean 10000, sd 86.6; 6 sd = 520.
    let light = counts[&9000] as f64;
    assert!(
        (light - 10_000.0).abs() < 520.0,
        "weighted random gave {counts:?}"
    );

    let uniform = mesh
        .balancer("rand")
        .unwrap()
        .strategy(Strategy::Random)
        .build();
    let counts = counts_by_port(&uniform, picks);
    // Binomial(40000, 1/2): sd 100; 6 sd = 600.
    let first = counts[&9000] as f64;
    assert!((first - 20_000.0).abs() < 600.0, "random gave {counts:?}");
}

fn routes(balancer: &Balancer, keys: &[String]) -> Vec<Uuid> {
    keys.iter()
        .map(|k| balancer.pick_by_key(k).unwrap().id)
        .collect()
}

#[tokio::test]
async fn consistent_hashing_moves_about_one_nth_of_keys_when_an_instance_comes_or_goes() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    // Fixed ids: how many keys move depends on the ids (removing 1 of 10 moves 12.5% of
    // keys on average, over 20% now and then), and random ones made this test fail about
    // twice in a hundred runs.
    let sticky_id = |n: usize| Uuid::from_u128(0x5EED_u128 << 64 | n as u128);
    let registrations = healthy_with_ids(&mesh, "sticky", &[100; 10], sticky_id).await;
    let other_peer = self::mesh(&store).await;
    wait_view(&other_peer, "sticky", WAIT, "10 instances", |v| {
        v.len() == 10
    })
    .await;
    let balancer = mesh.balancer("sticky").unwrap().build();
    let keys: Vec<String> = (0..20_000).map(|n| format!("user-{n}")).collect();
    let before = routes(&balancer, &keys);

    // Every peer routes every key the same way.
    let elsewhere = other_peer.balancer("sticky").unwrap().build();
    assert_eq!(routes(&elsewhere, &keys), before);

    // Removing one of 10 moves its own keys (about 1/10) and little else.
    let gone = registrations[3].id();
    registrations[3].deregister(None).await.unwrap();
    wait_view(&mesh, "sticky", WAIT, "9 instances", |v| v.len() == 9).await;
    let after = routes(&balancer, &keys);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let owned_by_gone = before.iter().filter(|id| **id == gone).count();
    assert!(after.iter().all(|id| *id != gone));
    assert!(
        moved as f64 <= keys.len() as f64 * 0.15,
        "removing 1 of 10 moved {moved} of {} keys",
        keys.len()
    );
    assert!(moved >= owned_by_gone);

    // Adding one to 9 moves about 1/10 of the keys, onto the newcomer.
    let newcomer = healthy_with_ids(&mesh, "sticky", &[100], |_| sticky_id(10)).await;
    wait_view(&mesh, "sticky", WAIT, "10 instances", |v| v.len() == 10).await;
    let added = routes(&balancer, &keys);
    let moved = after.iter().zip(&added).filter(|(b, a)| b != a).count();
    assert!(
        moved as f64 <= keys.len() as f64 * 0.15,
        "adding 1 to 9 moved {moved} keys"
    );
    let to_newcomer = added.iter().filter(|id| **id == newcomer[0].id()).count();
    assert!(
        to_newcomer * 10 >= moved * 7,
        "most moved keys go to the newcomer"
    );
}

#[tokio::test]
async fn least_outstanding_prefers_the_less_loaded_instance_and_records_outcomes() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    healthy(&mesh, "lor", &[100, 100]).await;
    let balancer = mesh
        .balancer("lor")
        .unwrap()
        .strategy(Strategy::LeastOutstanding)
        .build();

    // With two instances p2c always compares both: held requests stay balanced.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(balancer.pick_guarded().unwrap());
        let per_port = held.iter().filter(|g| g.port == 9000).count() as i64;
        assert!(
            (per_port * 2 - held.len() as i64).abs() <= 1,
            "unbalanced at {}",
            held.len()
        );
    }
    // Release the requests on 9000: the next picks all go there until it catches up.
    let (on_9000, on_9001): (Vec<_>, Vec<_>) = held.into_iter().partition(|g| g.port == 9000);
    let id_9000 = on_9000[0].instance().id;
    drop(on_9000);
    for _ in 0..10 {
        let guard = balancer.pick_guarded().unwrap();
        assert_eq!(guard.port, 9000, "the idle instance is preferred");
        std::mem::forget(guard); // keep it outstanding
    }
    drop(on_9001);

    let load = balancer.load(id_9000).unwrap();
    assert_eq!(load.outstanding(), 10);
    assert_eq!(load.successes(), 10);
    let mut failing = balancer.pick_guarded().unwrap();
    let failing_id = failing.instance().id;
    failing.failed();
    drop(failing);
    let load = balancer.load(failing_id).unwrap();
    assert_eq!(load.failures(), 1);
    assert_eq!(load.consecutive_failures(), 1);
}

#[tokio::test]
async fn least_outstanding_weighs_load_by_instance_weight() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    healthy(&mesh, "lorw", &[200, 100]).await;
    let balancer = mesh
        .balancer("lorw")
        .unwrap()
        .strategy(Strategy::LeastOutstanding)
        .build();
    let held: Vec<_> = (0..30).map(|_| balancer.pick_guarded().unwrap()).collect();
    let heavy = held.iter().filter(|g| g.port == 9000).count();
    assert!(
        (19..=21).contains(&heavy),
        "weight 200 of 300 held {heavy} of 30"
    );
}

#[tokio::test]
async fn selection_filters_and_falls_back_by_status_and_zone() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    let specs = [
        (9000, InstanceStatus::Healthy, "eu-1", vec!["secure"], "2.0"),
        (
            9001,
            InstanceStatus::Healthy,
            "us-1",
            vec!["secure", "internal"],
            "1.0",
        ),
        (9002, InstanceStatus::Unknown, "eu-1", vec![], "2.0"),
        (
            9003,
            InstanceStatus::Maintenance,
            "eu-1",
            vec!["secure"],
            "2.0",
        ),
        (
            9004,
            InstanceStatus::Stopping,
            "eu-1",
            vec!["secure"],
            "2.0",
        ),
        (
            9005,
            InstanceStatus::Unhealthy,
            "eu-1",
            vec!["secure"],
            "2.0",
        ),
    ];
    let mut registrations = HashMap::new();
    for (port, status, zone, tags, version) in specs {
        let mut builder = ServiceInstance::builder("filtered", "127.0.0.1", port)
            .status(status)
            .zone(zone)
            .metadata("version", version);
        for tag in tags {
            builder = builder.tag(tag);
        }
        let registration = mesh.register(builder.build().unwrap()).await.unwrap();
        registrations.insert(port, registration);
    }
    wait_view(&mesh, "filtered", WAIT, "6 instances", |v| v.len() == 6).await;
    let ports = |selection: Selection| {
        let balancer = mesh
            .balancer("filtered")
            .unwrap()
            .selection(selection)
            .build();
        let mut ports: Vec<u16> = balancer.candidates().iter().map(|i| i.port).collect();
        ports.sort();
        ports
    };

    assert_eq!(
        ports(Selection::new()),
        vec![9000, 9001],
        "healthy only by default"
    );
    assert_eq!(
        ports(Selection::new().with_all_tags(["secure", "internal"])),
        vec![9001]
    );
    assert_eq!(
        ports(Selection::new().with_any_tag(["internal", "nope"])),
        vec![9001]
    );
    assert_eq!(ports(Selection::new().with_version("2.0")), vec![9000]);
    assert_eq!(ports(Selection::new().prefer_zone("us-1")), vec![9001]);
    assert_eq!(
        ports(Selection::new().prefer_zone("ap-1")),
        vec![9000, 9001],
        "no local one: all"
    );

    // Fallback: Unknown only when no Healthy instance matches.
    let fallback = Selection::new()
        .statuses([InstanceStatus::Healthy, InstanceStatus::Unknown])
        .unwrap();
    assert_eq!(ports(fallback.clone()), vec![9000, 9001]);
    assert_eq!(
        ports(
            fallback
                .clone()
                .with_all_tags(Vec::<String>::new())
                .with_version("2.0")
                .prefer_zone("eu-1")
        ),
        vec![9000]
    );
    registrations[&9000]
        .set_status(InstanceStatus::Unhealthy, None)
        .await
        .unwrap();
    wait_view(&mesh, "filtered", WAIT, "9000 unhealthy", |v| {
        v.iter()
            .any(|i| i.port == 9000 && i.status == InstanceStatus::Unhealthy)
    })
    .await;
    assert_eq!(ports(fallback.clone().with_version("2.0")), vec![9002]);
    assert_eq!(
        ports(Selection::new().with_version("2.0").prefer_zone("eu-1")),
        Vec::<u16>::new()
    );

    // Maintenance and Stopping can never be made eligible.
    for status in [InstanceStatus::Maintenance, InstanceStatus::Stopping] {
        let err = Selection::new().statuses([status]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(status.as_str()), "{err}");
    }

    // Nothing eligible: a clear error with the census.
    let err = mesh
        .balancer("filtered")
        .unwrap()
        .selection(Selection::new().with_version("9.9"))
        .build()
        .pick()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = err.to_string();
    for part in [
        "filtered",
        "6 instances",
        "2 unhealthy",
        "1 maintenance",
        "0 pass",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    let err = mesh.pick("nobody-home").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("no instance in the view"), "{err}");
    let err = mesh.pick("bad.name").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn by_name_picks_use_the_configured_strategy_per_service() {
    let store = MemoryStore::new();
    let mesh = Mesh::builder()
        .memory_store(store.clone())
        .strategy(Strategy::RoundRobin)
        .service_strategy("weighted", Strategy::WeightedRoundRobin)
        .connect()
        .await
        .unwrap();
    healthy(&mesh, "plain", &[300, 100]).await;
    healthy(&mesh, "weighted", &[300, 100]).await;
    let count = |service: &str| {
        (0..400)
            .filter(|_| mesh.pick(service).unwrap().port == 9000)
            .count()
    };
    assert_eq!(count("plain"), 200);
    assert_eq!(count("weighted"), 300);
    assert!(mesh
        .pick_url("plain")
        .unwrap()
        .starts_with("http://127.0.0.1:900"));
    let err = mesh.balanced("plain").unwrap();
    assert_eq!(err.strategy(), Strategy::RoundRobin);
    let err = "fastest".parse::<Strategy>().unwrap_err();
    assert!(err.to_string().contains("\"fastest\""), "{err}");
    assert_eq!(
        "least-outstanding".parse::<Strategy>().unwrap(),
        Strategy::LeastOutstanding
    );
    let err = mesh
        .balancer("plain")
        .unwrap()
        .strategy(Strategy::ConsistentHash)
        .build()
        .pick()
        .unwrap_err();
    assert!(err.to_string().contains("pick_by_key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_stay_correct_while_the_view_changes_under_them() {
    let store = MemoryStore::new();
    let mesh = mesh(&store).await;
    // Two instances stay healthy throughout; others come, go into maintenance and leave.
    healthy(&mesh, "churning", &[100, 100]).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Set by each picker once it picked a churning instance.
    let seen: Arc<Vec<AtomicBool>> = Arc::new(
        Strategy::ALL
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let mut pickers = Vec::new();
    for (n, strategy) in Strategy::ALL.into_iter().enumerate() {
        let seen = seen.clone();
        let balancer = mesh
            .balancer("churning")
            .unwrap()
            .strategy(strategy)
            .build();
        let stop = stop.clone();
        pickers.push(std::thread::spawn(move || {
            let mut picks = 0u64;
            let mut saw_churner = false;
            while !stop.load(Ordering::Relaxed) {
                let instance = match strategy {
                    Strategy::ConsistentHash => balancer.pick_by_key(picks.to_le_bytes()),
                    _ => balancer.pick(),
                }
                .expect("two instances are always healthy");
                assert_eq!(
                    instance.status,
                    InstanceStatus::Healthy,
                    "{strategy} picked {instance:?}"
                );
                if instance.port >= 10_000 && !saw_churner {
                    saw_churner = true;
                    seen[n].store(true, Ordering::Relaxed);
                }
                picks += 1;
            }
            (picks, saw_churner)
        }));
    }
    for round in 0..60u16 {
        let instance = ServiceInstance::builder("churning", "127.0.0.1", 10_000 + round)
            .status(InstanceStatus::Healthy)
            .build()
            .unwrap();
        let registration = mesh.register(instance).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if round == 0 {
            // However the pickers are scheduled on two cores, the first churner stays
            // until each of them has picked it (or a churner after it, by luck).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !seen.iter().all(|s| s.load(Ordering::Relaxed))
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        registration
            .set_status(InstanceStatus::Maintenance, None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        registration.deregister(None).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for picker in pickers {
        let (picks, saw_churner) = picker.join().expect("picker panicked");
        assert!(picks > 1000, "only {picks} picks");
        assert!(saw_churner, "churning instances were never picked");
    }
}
