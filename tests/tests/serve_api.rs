//! `prism serve`'s HTTP API, read and written with `curl` against a real nats-server:
//! the native endpoints, Server-Sent Events, time travel, the Consul-compatible catalog,
//! health and agent endpoints, blocking queries, the token.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prism_mesh::{InstanceStatus, ServiceInstance};
use prism_tests::{curl_async, healthy, require_tool, wait_view, Served};

const WAIT: Duration = Duration::from_secs(10);

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn orders(host: &str, zone: &str, tag: &str) -> ServiceInstance {
    let mut instance = healthy("orders", host, 8080, tag);
    instance.zone = Some(zone.into());
    instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_api_lists_services_filters_instances_and_picks() {
    let stage = Served::start().await;
    let (owner, mesh) = (&stage.owner, &stage.mesh);
    let a = owner
        .register(orders("10.0.0.1", "z1", "v1"))
        .await
        .unwrap();
    let b = owner
        .register(orders("10.0.0.2", "z2", "v2"))
        .await
        .unwrap();
    b.set_status(InstanceStatus::Unhealthy, Some("disk"))
        .await
        .unwrap();
    wait_view(mesh, "orders", WAIT, "two, one unhealthy", |v| {
        v.len() == 2 && v.iter().any(|i| i.status == InstanceStatus::Unhealthy)
    })
    .await;

    let services = curl_async(&[&stage.url("/v1/services")]).await;
    assert_eq!(services.status, 200);
    assert_eq!(
        services.json()["services"],
        serde_json::json!([{"name": "orders", "instances": 2, "by_status": {"healthy": 1, "unhealthy": 1}}])
    );
    let healthy = curl_async(&[&stage.url("/v1/services/orders?status=healthy")])
        .await
        .json();
    let list = healthy["instances"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], a.id().to_string());
    assert_eq!(list[0]["url"], "http://10.0.0.1:8080");
    assert!(list[0]["last_heartbeat"].as_u64().unwrap() > 0);
    let by_tag = curl_async(&[&stage.url("/v1/services/orders?tag=v2")])
        .await
        .json();
    assert_eq!(by_tag["instances"][0]["id"], b.id().to_string());
    let by_zone = curl_async(&[&stage.url("/v1/services/orders?zone=z1&tag=v2")])
        .await
        .json();
    assert_eq!(by_zone["instances"], serde_json::json!([]));

    // The balancer picks among healthy instances only, whatever the strategy.
    for strategy in ["round_robin", "random", "weighted_round_robin"] {
        let picked =
            curl_async(&[&stage.url(&format!("/v1/services/orders/pick?strategy={strategy}"))])
                .await;
        assert_eq!(picked.status, 200, "{strategy}: {}", picked.body);
        assert_eq!(picked.json()["id"], a.id().to_string());
    }
    let keyed = curl_async(&[&stage.url("/v1/services/orders/pick?key=user-7")]).await;
    assert_eq!(keyed.json()["id"], a.id().to_string());

    // Bad input: a clear JSON error naming the problem.
    let bad_status = curl_async(&[&stage.url("/v1/services/orders?status=sleepy")]).await;
    assert_eq!(bad_status.status, 400);
    assert!(
        bad_status.json()["error"]
            .as_str()
            .unwrap()
            .contains("sleepy"),
        "{}",
        bad_status.body
    );
    let bad_strategy = curl_async(&[&stage.url("/v1/services/orders/pick?strategy=fastest")]).await;
    assert_eq!(bad_strategy.status, 400);
    assert!(bad_strategy.json()["error"]
        .as_str()
        .unwrap()
        .contains("round_robin"));
    let no_key =
        curl_async(&[&stage.url("/v1/services/orders/pick?strategy=consistent_hash")]).await;
    assert_eq!(no_key.status, 400);
    let bad_name = curl_async(&[&stage.url("/v1/services/a.b")]).await;
    assert_eq!(bad_name.status, 400);
    let nobody = curl_async(&[&stage.url("/v1/services/nobody/pick")]).await;
    assert_eq!(nobody.status, 503, "{}", nobody.body);
    assert!(nobody.json()["error"].is_string());
    let unknown = curl_async(&[&stage.url("/v1/nothing-here")]).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "no such endpoint");

    // Prometheus' HTTP service discovery: one target group per instance.
    let targets = curl_async(&[&stage.url("/v1/prometheus/targets?service=orders")]).await;
    assert_eq!(targets.status, 200);
    let mut groups: Vec<(String, String)> = targets
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["targets"][0].as_str().unwrap().to_string(),
                g["labels"]["__meta_prism_status"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            ("10.0.0.1:8080".to_string(), "healthy".to_string()),
            ("10.0.0.2:8080".to_string(), "unhealthy".to_string())
        ]
    );
    let passing = curl_async(&[&stage.url("/v1/prometheus/targets?passing")])
        .await
        .json();
    assert_eq!(passing.as_array().unwrap().len(), 1);
    assert_eq!(passing[0]["labels"]["__meta_prism_tags"], ",v1,");

    let health = curl_async(&[&stage.url("/healthz")]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let metrics = curl_async(&[&stage.url("/metrics")]).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("service_discovery_instances_active"),
        "{}",
        metrics.body
    );
    stage.stop().await;
}

/// Reads SSE lines from `curl -N` on a thread; `id:` and `event:` pairs come out.
fn follow_events(
    address: String,
    last_id: Option<u64>,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<(u64, String)>,
) {
    let curl = require_tool("curl", None, "apt-get install curl");
    let mut command = Command::new(curl);
    command.args(["-s", "-N", &address]);
    if let Some(id) = last_id {
        command.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    let mut child = command.stdout(Stdio::piped()).spawn().expect("curl runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut id = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(value) = line.strip_prefix("id: ") {
                id = value.parse().ok();
            } else if let Some(event) = line.strip_prefix("event: ") {
                if let Some(id) = id.take() {
                    if tx.send((id, event.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    (child, rx)
}

async fn next_sse(rx: &std::sync::mpsc::Receiver<(u64, String)>, what: &str) -> (u64, String) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match rx.try_recv() {
            Ok(event) => return event,
            Err(std::sync::mpsc::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("no SSE event while waiting for {what}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_as_sse_and_resume_after_the_last_event_id() {
    let stage = Served::start().await;
    let owner = &stage.owner;
    let (mut first, rx) = follow_events(stage.url("/v1/events"), None);
    // The stream is open once its first keep-alive or event could arrive: give curl a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registration = owner
        .register(orders("10.0.0.9", "z1", "v1"))
        .await
        .unwrap();
    let (registered, kind) = next_sse(&rx, "registered").await;
    assert_eq!(kind, "registered");
    registration
        .set_status(InstanceStatus::Unhealthy, Some("probe"))
        .await
        .unwrap();
    let (status, kind) = next_sse(&rx, "status").await;
    assert_eq!(kind, "status");
    assert!(status > registered);
    first.kill().unwrap();
    let _ = first.wait();

    // Reconnecting after the first event replays the second, then goes on live.
    let (mut second, rx) = follow_events(stage.url("/v1/events"), Some(registered));
    assert_eq!(
        next_sse(&rx, "the replayed status").await,
        (status, "status".to_string())
    );
    registration.deregister(Some("done")).await.unwrap();
    let (_, kind) = next_sse(&rx, "deregistered").await;
    assert_eq!(kind, "deregistered");
    second.kill().unwrap();
    let _ = second.wait();

    let bad = curl_async(&["-H", "Last-Event-ID: soon", &stage.url("/v1/events")]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("Last-Event-ID"));
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_and_diff_show_the_registry_of_a_past_moment_and_what_changed_since() {
    let stage = Served::start().await;
    let owner = &stage.owner;
    let before = now_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gone = owner
        .register(orders("10.0.0.3", "z1", "v1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = now_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    gone.deregister(Some("retired")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let then = curl_async(&[&stage.url(&format!("/v1/at?t={during}"))]).await;
    assert_eq!(then.status, 200, "{}", then.body);
    let then = then.json();
    assert_eq!(then["instances"], 1);
    assert_eq!(then["services"]["orders"][0]["id"], gone.id().to_string());
    let rfc3339 =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(before)).to_string();
    let empty = curl_async(&[&stage.url(&format!("/v1/at?t={rfc3339}"))])
        .await
        .json();
    assert_eq!(empty["instances"], 0);

    let diff = curl_async(&[&stage.url(&format!("/v1/diff?from={before}&to={during}"))])
        .await
        .json();
    assert_eq!(diff["added"][0]["id"], gone.id().to_string());
    assert_eq!(diff["removed"], serde_json::json!([]));
    let since = curl_async(&[&stage.url(&format!("/v1/diff?from={during}"))])
        .await
        .json();
    assert_eq!(since["removed"][0]["id"], gone.id().to_string());

    let missing = curl_async(&[&stage.url("/v1/at")]).await;
    assert_eq!(missing.status, 400);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("t is required"));
    let garbled = curl_async(&[&stage.url("/v1/diff?from=tuesday")]).await;
    assert_eq!(garbled.status, 400);
    assert!(garbled.json()["error"]
        .as_str()
        .unwrap()
        .contains("RFC 3339"));
    let backwards = curl_async(&[&stage.url(&format!("/v1/diff?from={during}&to={before}"))]).await;
    assert_eq!(backwards.status, 400);
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_catalog_and_health_answer_with_an_index_and_blocking_queries_wait_for_a_change() {
    let stage = Served::start().await;
    let (owner, mesh) = (&stage.owner, &stage.mesh);
    let healthy = owner
        .register(orders("10.0.0.4", "z1", "v1"))
        .await
        .unwrap();
    let sick = owner
        .register(orders("10.0.0.5", "z2", "v2"))
        .await
        .unwrap();
    sick.set_status(InstanceStatus::Unhealthy, None)
        .await
        .unwrap();
    wait_view(mesh, "orders", WAIT, "both", |v| v.len() == 2).await;

    let services = curl_async(&[&stage.url("/v1/catalog/services")]).await;
    assert_eq!(services.json(), serde_json::json!({"orders": ["v1", "v2"]}));
    let catalog = curl_async(&[&stage.url("/v1/catalog/service/orders?tag=v2")]).await;
    let entries = catalog.json();
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["ServiceID"], sick.id().to_string());
    assert_eq!(entries[0]["ServiceAddress"], "10.0.0.5");
    let all = curl_async(&[&stage.url("/v1/health/service/orders")]).await;
    assert_eq!(all.json().as_array().unwrap().len(), 2);
    let passing = curl_async(&[&stage.url("/v1/health/service/orders?passing")]).await;
    let passing_json = passing.json();
    assert_eq!(passing_json.as_array().unwrap().len(), 1);
    assert_eq!(passing_json[0]["Service"]["ID"], healthy.id().to_string());
    assert_eq!(passing_json[0]["Checks"][0]["Status"], "passing");
    let index: u64 = passing.header("x-consul-index").unwrap().parse().unwrap();
    assert!(index >= 1);

    // Nothing changes: the query waits out its `wait` and returns the same index.
    let started = std::time::Instant::now();
    let idle = curl_async(&[&stage.url(&format!(
        "/v1/health/service/orders?passing&index={index}&wait=1s"
    ))])
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "returned after {:?}",
        started.elapsed()
    );
    assert_eq!(idle.header("x-consul-index").unwrap(), index.to_string());

    // A change returns the waiting query at once, with a higher index and the new state.
    let waiting = tokio::spawn({
        let address = stage.url(&format!(
            "/v1/health/service/orders?passing&index={index}&wait=30s"
        ));
        async move { (curl_async(&[&address]).await, std::time::Instant::now()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed_at = std::time::Instant::now();
    sick.set_status(InstanceStatus::Healthy, Some("recovered"))
        .await
        .unwrap();
    let (woken, returned_at) = waiting.await.unwrap();
    assert!(returned_at.duration_since(changed_at) < Duration::from_secs(5));
    assert!(
        woken
            .header("x-consul-index")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > index
    );
    assert_eq!(woken.json().as_array().unwrap().len(), 2);

    // What Consul clients ask before anything else.
    let agent = curl_async(&[&stage.url("/v1/agent/self")]).await.json();
    assert_eq!(agent["Config"]["Datacenter"], "dc1");
    let leader = curl_async(&[&stage.url("/v1/status/leader")]).await.json();
    assert_eq!(leader, stage.gateway.http_addr().unwrap().to_string());

    let bad_wait = curl_async(&[&stage.url("/v1/catalog/services?index=1&wait=soon")]).await;
    assert_eq!(bad_wait.status, 400);
    assert!(bad_wait.json()["error"].as_str().unwrap().contains("wait"));
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_api_registers_checks_maintains_and_deregisters_a_mesh_instance() {
    let stage = Served::start().await;
    let peer = &stage.owner;
    let body = r#"{"name": "web", "id": "web-1", "address": "10.1.1.1", "port": 8080,
        "tags": ["blue"], "meta": {"version": "2"}, "weights": {"passing": 7, "warning": 1},
        "check": {"ttl": "5s"}}"#;
    let registered = curl_async(&[
        "-X",
        "PUT",
        "-d",
        body,
        &stage.url("/v1/agent/service/register"),
    ])
    .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    // A TTL check starts critical, as in Consul: the instance is registered unhealthy.
    wait_view(peer, "web", WAIT, "registered", |v| v.len() == 1).await;
    let seen = peer.discover("web")[0].clone();
    assert_eq!(seen.status, InstanceStatus::Unhealthy);
    assert_eq!(
        (seen.host.as_str(), seen.port, seen.weight),
        ("10.1.1.1", 8080, 7)
    );
    assert_eq!(seen.metadata["version"], "2");
    let pass = curl_async(&[
        "-X",
        "PUT",
        &stage.url("/v1/agent/check/pass/service:web-1?note=ok"),
    ])
    .await;
    assert_eq!(pass.status, 200, "{}", pass.body);
    wait_view(peer, "web", WAIT, "healthy", |v| {
        v[0].status == InstanceStatus::Healthy
    })
    .await;
    let services = curl_async(&[&stage.url("/v1/agent/services")]).await.json();
    assert_eq!(services["web-1"]["Service"], "web");
    let checks = curl_async(&[&stage.url("/v1/agent/checks")]).await.json();
    assert_eq!(checks["service:web-1"]["Status"], "passing");

    let maint = curl_async(&[
        "-X",
        "PUT",
        &stage.url("/v1/agent/service/maintenance/web-1?enable=true&reason=patching"),
    ])
    .await;
    assert_eq!(maint.status, 200);
    wait_view(peer, "web", WAIT, "maintenance", |v| {
        v[0].status == InstanceStatus::Maintenance
    })
    .await;
    let off = curl_async(&[
        "-X",
        "PUT",
        &stage.url("/v1/agent/service/maintenance/web-1?enable=false"),
    ])
    .await;
    assert_eq!(off.status, 200);
    wait_view(peer, "web", WAIT, "back to healthy", |v| {
        v[0].status == InstanceStatus::Healthy
    })
    .await;

    // Bad input is refused with a message naming it.
    for (body, needle) in [
        (r#"{"port": 1}"#, "Name is required"),
        (
            r#"{"name": "web", "check": {"http": "http://x/health", "interval": "5s"}}"#,
            "only TTL checks",
        ),
        (r#"{"name": "web", "port": 70000}"#, "Port"),
        (r#"{"name": "bad.name"}"#, "bad.name"),
        ("{not json", "not JSON"),
    ] {
        let refused = curl_async(&[
            "-X",
            "PUT",
            "-d",
            body,
            &stage.url("/v1/agent/service/register"),
        ])
        .await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        let error = refused.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{body}: {error}");
    }
    let unknown = curl_async(&["-X", "PUT", &stage.url("/v1/agent/check/pass/nope")]).await;
    assert_eq!(unknown.status, 404);
    let no_enable = curl_async(&[
        "-X",
        "PUT",
        &stage.url("/v1/agent/service/maintenance/web-1"),
    ])
    .await;
    assert_eq!(no_enable.status, 400);

    let gone = curl_async(&[
        "-X",
        "PUT",
        &stage.url("/v1/agent/service/deregister/web-1"),
    ])
    .await;
    assert_eq!(gone.status, 200);
    wait_view(peer, "web", WAIT, "deregistered", |v| v.is_empty()).await;
    let again = curl_async(&[
        "-X",
        "PUT",
        &stage.url("/v1/agent/service/deregister/web-1"),
    ])
    .await;
    assert_eq!(again.status, 404);
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_api_and_registration_needs_allow_register() {
    let stage = Served::start_with(|o| o.token("s3cret").allow_register(false)).await;
    let none = curl_async(&[&stage.url("/v1/services")]).await;
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].as_str().unwrap().contains("token"));
    let wrong = curl_async(&[
        "-H",
        "Authorization: Bearer guess",
        &stage.url("/v1/services"),
    ])
    .await;
    assert_eq!(wrong.status, 403);
    for header in ["Authorization: Bearer s3cret", "X-Consul-Token: s3cret"] {
        let ok = curl_async(&["-H", header, &stage.url("/v1/catalog/services")]).await;
        assert_eq!(ok.status, 200, "{header}");
    }
    let query = curl_async(&[&stage.url("/v1/services?token=s3cret")]).await;
    assert_eq!(query.status, 200);
    // Liveness and the page stay open; the page's data does not.
    assert_eq!(curl_async(&[&stage.url("/healthz")]).await.status, 200);
    assert_eq!(curl_async(&[&stage.url("/ui/")]).await.status, 200);
    assert_eq!(curl_async(&[&stage.url("/metrics")]).await.status, 401);
    let refused = curl_async(&[
        "-X",
        "PUT",
        "-H",
        "X-Consul-Token: s3cret",
        "-d",
        r#"{"name": "web"}"#,
        &stage.url("/v1/agent/service/register"),
    ])
    .await;
    assert_eq!(refused.status, 403);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("--allow-register"));
    stage.stop().await;
}
