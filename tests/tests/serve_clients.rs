//! `prism serve` through clients no one here wrote: `dig`, Prometheus' Consul service
//! discovery, the Python `py-consul` library and headless Chromium, each against a real
//! nats-server. `tests/run.sh` installs them; a missing one fails loudly.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prism_mesh::{EventKind, InstanceStatus, ServiceInstance};
use prism_tests::{
    dig_short, dig_status, free_port, healthy, http_get, require_tool, wait_event, wait_view,
    Browser, PeerProcess, Served,
};

const WAIT: Duration = Duration::from_secs(15);
const PEER: &str = env!("CARGO_BIN_EXE_mesh-peer");

fn instance(service: &str, host: &str, port: u16, tag: &str, weight: u32) -> ServiceInstance {
    let mut instance = healthy(service, host, port, tag);
    instance.weight = weight;
    instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_srv_and_address_answers_of_healthy_instances_only() {
    let stage = Served::start().await;
    let (owner, mesh, gw) = (&stage.owner, &stage.mesh, &stage.gateway);
    owner
        .register(instance("orders", "10.0.0.1", 8081, "blue", 30))
        .await
        .unwrap();
    owner
        .register(instance("orders", "10.0.0.2", 8082, "green", 70))
        .await
        .unwrap();
    owner
        .register(instance("orders", "fd00::3", 8083, "blue", 10))
        .await
        .unwrap();
    let sick = owner
        .register(instance("orders", "10.0.0.4", 8084, "blue", 10))
        .await
        .unwrap();
    sick.set_status(InstanceStatus::Unhealthy, None)
        .await
        .unwrap();
    wait_view(mesh, "orders", WAIT, "four, one sick", |v| {
        v.len() == 4 && v.iter().any(|i| i.status == InstanceStatus::Unhealthy)
    })
    .await;
    let dns = gw.dns_addr().unwrap();
    let run =
        move |args: Vec<&'static str>| tokio::task::spawn_blocking(move || dig_short(dns, &args));

    let mut srv = run(vec!["orders.service.prism", "SRV"]).await.unwrap();
    srv.sort();
    assert_eq!(
        srv,
        [
            "1 10 8083 fd000000000000000000000000000003.addr.prism.",
            "1 30 8081 0a000001.addr.prism.",
            "1 70 8082 0a000002.addr.prism.",
        ]
    );
    let mut a = run(vec!["orders.service.prism", "A"]).await.unwrap();
    a.sort();
    assert_eq!(a, ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(
        run(vec!["orders.service.prism", "AAAA"]).await.unwrap(),
        ["fd00::3"]
    );
    let mut blue = run(vec!["blue.orders.service.prism", "A"]).await.unwrap();
    blue.sort();
    assert_eq!(blue, ["10.0.0.1"]);
    let rfc2782 = run(vec!["_orders._green.service.prism", "SRV"])
        .await
        .unwrap();
    assert_eq!(rfc2782, ["1 70 8082 0a000002.addr.prism."]);
    assert_eq!(
        run(vec!["0a000002.addr.prism", "A"]).await.unwrap(),
        ["10.0.0.2"]
    );
    let status =
        move |args: Vec<&'static str>| tokio::task::spawn_blocking(move || dig_status(dns, &args));
    assert_eq!(
        status(vec!["nobody.service.prism", "A"]).await.unwrap(),
        "NXDOMAIN"
    );
    assert_eq!(
        status(vec!["what.is.this.prism", "A"]).await.unwrap(),
        "NXDOMAIN"
    );
    assert_eq!(status(vec!["example.com", "A"]).await.unwrap(), "REFUSED");
    // TCP answers too (`dig +tcp`).
    let tcp = run(vec!["+tcp", "orders.service.prism", "A"])
        .await
        .unwrap();
    assert_eq!(tcp.len(), 2);
    stage.stop().await;
}

// Debian's `prometheus` package is built without Consul service discovery (its changelog:
// "Disable Consul SD until its Debian package is back in shape"; a `consul_sd_configs`
// section is refused as an unknown field), so Prometheus finds the mesh through its HTTP
// service discovery here. Consul clients are exercised by py-consul below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_mesh_instances_and_drops_a_deregistered_one() {
    let prometheus = require_tool(
        "prometheus",
        Some("PRISM_PROMETHEUS"),
        "apt-get install prometheus",
    );
    let stage = Served::start().await;
    let (owner, gw) = (&stage.owner, &stage.gateway);
    let kept = owner
        .register(instance("api", "127.0.0.1", 9101, "v1", 100))
        .await
        .unwrap();
    let leaving = owner
        .register(instance("api", "127.0.0.1", 9102, "v1", 100))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: mesh\n    http_sd_configs:\n      - url: 'http://{}/v1/prometheus/targets'\n        refresh_interval: 1s\n",
            gw.http_addr().unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus starts");
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let targets = || async move {
        let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
            return Vec::new();
        };
        drop(stream);
        let (_, _, body) = http_get(address, "/api/v1/targets").await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        body["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .filter(|t| t["discoveredLabels"]["__meta_prism_service"] == "api")
                    .map(|t| {
                        t["discoveredLabels"]["__address__"]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let until = |want: Vec<&'static str>, what: &'static str| {
        let log = dir.path().join("prometheus.log");
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut seen = targets().await;
                seen.sort();
                if seen == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus never showed {what}: {seen:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    until(vec!["127.0.0.1:9101", "127.0.0.1:9102"], "both instances").await;
    leaving.deregister(Some("scaled in")).await.unwrap();
    until(vec!["127.0.0.1:9101"], "the deregistration").await;
    let _ = child.kill();
    let _ = child.wait();
    drop(kept);
    stage.stop().await;
}

/// A Python with the `consul` module: `$PRISM_PYTHON`, else `python3`.
fn python_with_consul() -> PathBuf {
    let python = require_tool("python3", Some("PRISM_PYTHON"), "install Python 3");
    let check = Command::new(&python)
        .args(["-c", "import consul"])
        .output()
        .expect("python runs");
    assert!(
        check.status.success(),
        "{} has no `consul` module: python3 -m venv target/py-consul && target/py-consul/bin/pip install py-consul, then PRISM_PYTHON=target/py-consul/bin/python (tests/run.sh does this)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consul_client_registers_another_discovers_and_a_rust_peer_sees_it_expire() {
    let python = python_with_consul();
    let stage = Served::start().await;
    let rust_peer = &stage.owner;
    let mut events = rust_peer.subscribe_filtered(prism_mesh::EventFilter::service("pyweb"));
    let addr = stage.gateway.http_addr().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/consul/ttl_client.py");
    let mut client = Command::new(python)
        .args([script, &addr.ip().to_string(), &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the python client starts");
    let mut stdin = client.stdin.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line)));
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the python client never printed {what}"))
    };
    assert_eq!(next("registered")["step"], "registered");
    let catalog = next("the catalog");
    assert_eq!(catalog["nodes"][0]["id"], "pyweb-1", "{catalog}");
    assert_eq!(catalog["nodes"][0]["port"], 9090);
    assert_eq!(catalog["nodes"][0]["tags"], serde_json::json!(["py"]));
    assert_eq!(catalog["nodes"][0]["meta"]["lang"], "python");
    let health = next("health");
    assert_eq!(
        health["passing"],
        serde_json::json!(["pyweb-1"]),
        "{health}"
    );

    // The Rust peer sees the same instance, healthy once the first pass arrived.
    wait_view(rust_peer, "pyweb", WAIT, "healthy", |v| {
        v.len() == 1 && v[0].status == InstanceStatus::Healthy
    })
    .await;
    let seen = rust_peer.discover("pyweb")[0].clone();
    assert_eq!((seen.host.as_str(), seen.port), ("127.0.0.1", 9090));
    // Passes keep it alive well past its 3 s TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rust_peer.discover("pyweb").len(), 1);

    writeln!(stdin, "stop").unwrap();
    assert_eq!(next("stopped")["step"], "stopped");
    let stopped = Instant::now();
    // Critical as soon as the check's TTL passes, then gone one mesh TTL later.
    wait_event(&mut events, WAIT, "unhealthy", |e| {
        e.kind() == EventKind::StatusChanged && e.instance().status == InstanceStatus::Unhealthy
    })
    .await;
    let expired = wait_event(&mut events, WAIT, "expired", |e| {
        e.kind() == EventKind::Expired
    })
    .await;
    assert_eq!(expired.instance().id, seen.id);
    // The check's 3 s TTL, then the mesh instance's TTL (2 s here), then some slack.
    assert!(
        stopped.elapsed() < Duration::from_secs(9),
        "expired after {:?}",
        stopped.elapsed()
    );
    let _ = client.wait();
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_services_and_an_instance_leaving_within_two_seconds_of_sigterm() {
    let stage = Served::start().await;
    let (mesh, gw) = (&stage.mesh, &stage.gateway);
    let owner = PeerProcess::spawn(
        PEER,
        &[
            "--url",
            &stage.server.url(),
            "--service",
            "checkout",
            "--port",
            "7001",
            "--graceful-drain",
            "0s",
        ],
    );
    let stays = &stage.owner;
    stays
        .register(instance("checkout", "127.0.0.2", 7002, "v1", 100))
        .await
        .unwrap();
    wait_view(mesh, "checkout", WAIT, "both", |v| v.len() == 2).await;
    let leaving = mesh
        .discover("checkout")
        .iter()
        .find(|i| i.port == 7001)
        .map(|i| i.id.to_string())
        .unwrap();

    let mut browser = Browser::open(&format!("http://{}/ui/", gw.http_addr().unwrap())).await;
    let rows = "document.querySelectorAll('#instances tbody tr[data-instance-id]').length";
    let shows =
        |id: &str| format!("!!document.querySelector('#instances tr[data-instance-id=\"{id}\"]')");
    let deadline = Instant::now() + WAIT;
    loop {
        let service = browser.eval("document.querySelector('#services tr[data-service=\"checkout\"]')?.innerText ?? ''").await;
        let live = browser
            .eval("document.querySelector('#connection').textContent")
            .await;
        if service.as_str().is_some_and(|s| s.contains('2'))
            && browser.eval(rows).await == 2
            && live == "live"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed checkout's two instances: {service}, {live}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(browser.eval(&shows(&leaving)).await, true);
    // A moment with both instances, for the time slider below.
    tokio::time::sleep(Duration::from_secs(2)).await;

    owner.signal("TERM");
    let signalled = Instant::now();
    while browser.eval(&shows(&leaving)).await == true {
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "the page still shows the instance 2 s after its owner's SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let removed_after = signalled.elapsed();
    assert_eq!(browser.eval(rows).await, 1);

    // The time slider shows the registry of a past moment: both instances, a second
    // before the SIGTERM.
    let back = signalled.elapsed().as_secs() + 1;
    browser
        .eval(&format!("const s = document.querySelector('#slider'); s.value = -{back}; s.dispatchEvent(new Event('change')); true"))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let shown = browser
            .eval("document.querySelector('#travel-result').innerText")
            .await;
        let text = shown.as_str().unwrap_or_default().to_string();
        if text.contains("2 instances then") && text.contains("1 removed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the time slider never showed the past: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prism-serve-ui.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    eprintln!(
        "removed from the page {removed_after:?} after SIGTERM; screenshot at {}",
        shot.display()
    );
    drop(browser);
    stage.stop().await;
}
