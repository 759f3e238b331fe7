//! Every `prism` command against a real nats-server: output, --json, exit codes, errors,
//! the audit trail and the sidecar.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use prism_mesh::{EventKind, InstanceStatus, Mesh, MeshEvent, ServiceInstance};
use prism_tests::{
    fast_mesh, free_port, send_signal, wait_event, wait_view, NatsServer, PeerProcess,
    TestHttpServer,
};
use serde_json::Value;

const PRISM: &str = env!("CARGO_BIN_EXE_prism");
const WAIT: Duration = Duration::from_secs(10);

fn prism(args: &[&str]) -> Output {
    Command::new(PRISM)
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run prism")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_clean_error(output: &Output, code: i32, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

async fn owner_with(
    server: &NatsServer,
    service: &str,
    ports: &[u16],
) -> (Mesh, Vec<prism_mesh::Registration>) {
    let mesh = fast_mesh(&server.url()).connect().await.unwrap();
    let mut registrations = Vec::new();
    for port in ports {
        let instance = ServiceInstance::builder(service, "127.0.0.1", *port)
            .tag("cli")
            .build()
            .unwrap();
        registrations.push(mesh.register(instance).await.unwrap());
    }
    wait_view(&mesh, service, WAIT, "registered", |v| {
        v.len() == ports.len()
    })
    .await;
    (mesh, registrations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_get_show_the_view_as_tables_and_json_with_meaningful_exit_codes() {
    let server = NatsServer::start();
    let url = server.url();
    let (mesh, registrations) = owner_with(&server, "catalog", &[8101, 8102]).await;
    registrations[0]
        .set_status(InstanceStatus::Healthy, None)
        .await
        .unwrap();
    wait_view(&mesh, "catalog", WAIT, "healthy", |v| {
        v.iter().any(|i| i.status == InstanceStatus::Healthy)
    })
    .await;

    let ls = prism(&["ls", "--url", &url]);
    assert!(ls.status.success());
    let out = text(&ls.stdout);
    assert!(
        out.contains("catalog") && out.contains("healthy=1") && out.contains("starting=1"),
        "{out}"
    );
    let ls = prism(&["ls", "--url", &url, "--json"]);
    let value: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(value[0]["service"], "catalog");
    assert_eq!(value[0]["instances"], 2);

    let get = prism(&["get", "catalog", "--url", &url]);
    let out = text(&get.stdout);
    assert!(
        out.contains("http://127.0.0.1:8101") && out.contains("cli") && out.contains("STATUS"),
        "{out}"
    );
    assert!(
        out.contains("LAST HEARTBEAT") && out.contains(" ago"),
        "{out}"
    );
    // Columns fit what they hold: a long service name and a long url stay whole, and the
    // columns after them still line up under their headers.
    let long = "a-service-name-of-forty-eight-characters-exactly";
    assert_eq!(long.len(), 48);
    let wide = mesh
        .register(
            ServiceInstance::builder(long, "very-long-host-name.internal.example.org", 65000)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    wait_view(&mesh, long, WAIT, "the long one", |v| v.len() == 1).await;
    let ls = text(&prism(&["ls", "--url", &url]).stdout);
    let row = ls
        .lines()
        .find(|l| l.contains(long))
        .expect("the long service is listed");
    let header = ls.lines().next().unwrap();
    assert_eq!(
        row.find(" 1 ").map(|at| at + 1),
        header.find("INSTANCES"),
        "the count is not under its header:\n{ls}"
    );
    let get = text(&prism(&["get", long, "--url", &url]).stdout);
    assert!(
        get.contains("http://very-long-host-name.internal.example.org:65000"),
        "{get}"
    );
    wide.deregister(None).await.unwrap();

    let get = prism(&["get", "catalog", "--url", &url, "--json"]);
    let value: Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(value.as_array().unwrap().len(), 2);
    // One time format in JSON: RFC 3339.
    for field in ["registered_at", "updated_at", "last_heartbeat"] {
        let time = value[0][field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {value}"));
        humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{field} {time}: {e}"));
    }
    // Filters, a summary, and the other outputs.
    let healthy = text(&prism(&["get", "catalog", "--status", "healthy", "--url", &url]).stdout);
    assert!(healthy.contains("http://127.0.0.1:8101"), "{healthy}");
    assert!(!healthy.contains("http://127.0.0.1:8102"), "{healthy}");
    assert!(
        healthy.contains("1 of 2 instances (healthy=1)"),
        "{healthy}"
    );
    let tagged = text(
        &prism(&[
            "get", "catalog", "--tag", "cli", "-o", "wide", "--url", &url,
        ])
        .stdout,
    );
    assert!(
        tagged.contains("METADATA") && tagged.contains("2 of 2 instances"),
        "{tagged}"
    );
    let none = text(&prism(&["get", "catalog", "--zone", "mars", "--url", &url]).stdout);
    assert!(none.contains("0 of 2 instances"), "{none}");
    let yaml = text(&prism(&["get", "catalog", "-o", "yaml", "--url", &url]).stdout);
    let parsed: Vec<Value> = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_clean_error(
        &prism(&["get", "catalog", "--status", "sleepy", "--url", &url]),
        2,
        "unknown status",
    );
    // The server's time of the last write: within a heartbeat (500 ms) of now.
    let last: SystemTime =
        humantime::parse_rfc3339(value[0]["last_heartbeat"].as_str().unwrap()).unwrap();
    // Same machine, same clock: a time in the future is wrong, not "fresh".
    let age = SystemTime::now()
        .duration_since(last)
        .unwrap_or_else(|e| panic!("last heartbeat {:?} in the future", e.duration()));
    assert!(age < Duration::from_secs(2), "last heartbeat {age:?} ago");

    assert_clean_error(
        &prism(&["get", "nobody", "--url", &url]),
        4,
        "no live instance of service \"nobody\"",
    );
    assert_clean_error(&prism(&["get", "bad.name", "--url", &url]), 2, "'.'");
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    assert_clean_error(
        &prism(&["ls", "--url", &dead, "--connect-deadline", "2s"]),
        3,
        &dead,
    );
    // It kept trying for the deadline (a server still starting would have been waited for).
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_clean_error(
        &prism(&["replay", "--since", "the day before", "--url", &url]),
        2,
        "cannot read time",
    );
    // Every time form reaches the command, a leading minus included; the future is refused.
    for since in [
        "-1h",
        "1h ago",
        "now",
        "2026-01-02",
        "2026-01-02T04:04:05+01:00",
        "1767323045",
    ] {
        let out = prism(&["replay", "--since", since, "--url", &url]);
        assert!(
            out.status.success(),
            "--since {since}: {}",
            text(&out.stderr)
        );
    }
    assert_clean_error(
        &prism(&["at", "2999-01-01T00:00:00Z", "--url", &url]),
        2,
        "is in the future",
    );
    let help = prism(&["--help"]);
    assert!(help.status.success() && text(&help.stdout).contains("Examples:"));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_the_current_state_then_live_events_with_their_own_times() {
    let server = NatsServer::start();
    let url = server.url();
    let (mesh, registrations) = owner_with(&server, "watched", &[8201]).await;
    let registered_at = mesh.discover("watched")[0].registered_at.to_string();
    assert_eq!(mesh.discover("watched")[0].id, registrations[0].id());
    let mut watch = PeerProcess::spawn(PRISM, &["watch", "watched", "--url", &url, "--json"]);
    // The instance live before the watch is the current state, stamped with its
    // registration, not the watch's start.
    let current = watch.expect_line(WAIT, "current instance", |v| {
        v["event"] == "current" && v["url"] == "http://127.0.0.1:8201"
    });
    assert_eq!(current["at"], registered_at.as_str());
    let late = mesh
        .register(
            ServiceInstance::builder("watched", "127.0.0.1", 8202)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    late.set_status(InstanceStatus::Healthy, Some("ready"))
        .await
        .unwrap();
    let registered = watch.expect_line(WAIT, "new instance", |v| {
        v["event"] == "registered" && v["url"] == "http://127.0.0.1:8202"
    });
    let status = watch.expect_line(WAIT, "status change", |v| v["event"] == "status");
    assert_eq!(status["previous_status"], "starting");
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["reason"], "ready");
    // Each live event carries the time it happened (RFC 3339), the status change later.
    let time = |v: &serde_json::Value| {
        humantime::parse_rfc3339(v["at"].as_str().expect("a time")).expect("RFC 3339")
    };
    let gap = time(&status).duration_since(time(&registered)).unwrap();
    assert!(
        gap >= Duration::from_millis(250),
        "{gap:?} between the two events"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_at_and_diff_rebuild_the_past_from_the_event_stream() {
    let server = NatsServer::start();
    let url = server.url();
    let live = fast_mesh(&server.url()).connect().await.unwrap();
    let (owner, registrations) = owner_with(&server, "audited", &[8301, 8302, 8303]).await;
    registrations[0]
        .set_status(InstanceStatus::Healthy, Some("warm"))
        .await
        .unwrap();
    registrations[1]
        .deregister(Some("scaled in"))
        .await
        .unwrap();
    wait_view(&live, "audited", WAIT, "settled", |v| {
        v.len() == 2 && v.iter().any(|i| i.status == InstanceStatus::Healthy)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moment = SystemTime::now();
    let seen_then: Vec<(String, String)> = {
        let mut v: Vec<_> = live
            .discover("audited")
            .iter()
            .map(|i| (i.id.to_string(), i.status.to_string()))
            .collect();
        v.sort();
        v
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Later changes must not show at `moment`.
    registrations[2]
        .set_status(InstanceStatus::Unhealthy, Some("disk full"))
        .await
        .unwrap();
    let added = owner
        .register(
            ServiceInstance::builder("audited", "127.0.0.1", 8304)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    registrations[0].deregister(Some("rolled")).await.unwrap();
    wait_view(&live, "audited", WAIT, "later state", |v| {
        v.len() == 2 && v.iter().any(|i| i.id == added.id())
    })
    .await;

    let stamp = humantime::format_rfc3339_micros(moment).to_string();
    let at = prism(&["at", &stamp, "--url", &url, "--json"]);
    assert!(at.status.success(), "{}", text(&at.stderr));
    let value: Value = serde_json::from_slice(&at.stdout).unwrap();
    let mut rebuilt: Vec<(String, String)> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rebuilt.sort();
    assert_eq!(
        rebuilt, seen_then,
        "prism at differs from what a live peer held at that moment"
    );

    let diff = prism(&["diff", &stamp, "0s ago", "--url", &url]);
    let out = text(&diff.stdout);
    assert!(out.contains(&format!("+ audited/{}", added.id())), "{out}");
    assert!(
        out.contains(&format!("- audited/{}", registrations[0].id())),
        "{out}"
    );
    assert!(
        out.contains(&format!("~ audited/{}", registrations[2].id()))
            && out.contains("starting -> unhealthy"),
        "{out}"
    );

    let replay = prism(&["replay", "audited", "--until", &stamp, "--url", &url]);
    assert!(
        !text(&replay.stdout).contains('\u{1b}'),
        "colour codes in piped output"
    );
    let out = text(&replay.stdout);
    assert!(
        out.contains("deregistered") && out.contains("(scaled in)"),
        "{out}"
    );
    assert!(
        !out.contains("disk full"),
        "--until cut the later events: {out}"
    );
    // A checkpoint written now changes nothing `at` says, before or after it.
    let checkpoint = prism(&["checkpoint", "--url", &url]);
    assert!(checkpoint.status.success(), "{}", text(&checkpoint.stderr));
    assert!(
        text(&checkpoint.stdout).contains("checkpoint written at stream sequence"),
        "{}",
        text(&checkpoint.stdout)
    );
    let again: Value =
        serde_json::from_slice(&prism(&["at", &stamp, "--url", &url, "--json"]).stdout).unwrap();
    assert_eq!(again, value, "a checkpoint changed the past");
    let now: Value =
        serde_json::from_slice(&prism(&["at", "0s ago", "--url", &url, "--json"]).stdout).unwrap();
    let mut ids: Vec<&str> = now
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut live_ids: Vec<String> = live
        .discover("audited")
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    live_ids.sort();
    assert_eq!(
        ids, live_ids,
        "at now after a checkpoint differs from the live view"
    );
    let replay = prism(&["replay", "--since", &stamp, "--url", &url, "--json"]);
    let events: Vec<Value> = text(&replay.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "status" && e["reason"] == "disk full"));
    assert!(
        events.iter().all(|e| e["reason"] != "scaled in"),
        "--since cut the earlier events"
    );
    owner.shutdown().await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_starts_its_command_while_the_mesh_is_unreachable_and_registers_once_it_is_up()
{
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let mut sidecar = Command::new(PRISM)
        .args([
            "register",
            "--service",
            "patient",
            "--port",
            "8402",
            "--url",
            &url,
            "--connect-deadline",
            "1s",
            "--ttl",
            "2s",
            "--heartbeat",
            "500ms",
            "--",
            "sh",
            "-c",
            &format!("touch {}; sleep 60", started.display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The command runs although no server listens yet.
    let deadline = std::time::Instant::now() + WAIT;
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command did not start while the mesh was unreachable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sidecar.try_wait().unwrap().is_none(), "the sidecar gave up");
    let server = NatsServer::start_on(port);
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    // It retries with backoff (1 s, 2 s, 4 s ... after each 1 s connect deadline).
    wait_view(
        &watcher,
        "patient",
        Duration::from_secs(20),
        "the sidecar's instance",
        |v| v.len() == 1,
    )
    .await;
    send_signal(sidecar.id(), "TERM");
    let status = sidecar.wait().unwrap();
    // sh ends on SIGTERM: 128 + 15, passed through.
    assert_eq!(status.code(), Some(143));
    wait_view(&watcher, "patient", WAIT, "deregistered", |v| v.is_empty()).await;
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_registers_a_process_reports_health_and_passes_on_exit_codes_and_sigterm() {
    let server = NatsServer::start();
    let url = server.url();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let mut events = watcher.subscribe_filtered(prism_mesh::EventFilter::service("sidecar"));

    // Exit code passes through; peers see the registration, then the deregistration.
    let run = Command::new(PRISM)
        .args([
            "register",
            "--service",
            "sidecar",
            "--port",
            "8401",
            "--url",
            &url,
            "--ttl",
            "2s",
            "--heartbeat",
            "500ms",
            "--",
            "sh",
            "-c",
            // Long enough to be registered: the sidecar joins the mesh while it runs.
            "sleep 2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(7), "{}", text(&run.stderr));
    wait_event(&mut events, WAIT, "registered", |e| {
        e.kind() == EventKind::Registered
    })
    .await;
    match wait_event(&mut events, WAIT, "deregistered", |e| {
        e.kind() == EventKind::Deregistered
    })
    .await
    {
        MeshEvent::Deregistered { reason, .. } => {
            assert_eq!(reason.as_deref(), Some("process exited with code 7"))
        }
        _ => unreachable!(),
    }

    // With an HTTP check; SIGTERM goes to the child, and its death by signal is our code.
    let http = TestHttpServer::start().await;
    let port = http.port().to_string();
    let sidecar = std::process::Command::new(PRISM)
        .args([
            "register",
            "--service",
            "sidecar",
            "--port",
            &port,
            "--check-http",
            "/health",
            "--check-interval",
            "200ms",
            "--url",
            &url,
            "--ttl",
            "2s",
            "--heartbeat",
            "500ms",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    match wait_event(&mut events, WAIT, "healthy", |e| {
        e.kind() == EventKind::StatusChanged
    })
    .await
    {
        MeshEvent::StatusChanged {
            current, reason, ..
        } => {
            assert_eq!(current, InstanceStatus::Healthy);
            assert!(reason.unwrap().contains("HTTP 200"));
        }
        _ => unreachable!(),
    }
    send_signal(sidecar.id(), "TERM");
    let output = sidecar.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(128 + 15),
        "SIGTERM reached the child and its end is our exit code"
    );
    match wait_event(&mut events, WAIT, "deregistered", |e| {
        e.kind() == EventKind::Deregistered
    })
    .await
    {
        MeshEvent::Deregistered { reason, .. } => {
            assert_eq!(reason.as_deref(), Some("process killed by signal 15"))
        }
        _ => unreachable!(),
    }
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_runs_the_checks_instances_declare_and_exits_5_when_one_fails() {
    let server = NatsServer::start();
    let url = server.url();
    let http = TestHttpServer::start().await;
    let mesh = fast_mesh(&url).connect().await.unwrap();
    let checked = |port: u16| {
        ServiceInstance::builder("probed", "127.0.0.1", port)
            .metadata(prism_mesh::health::HEALTH_ENDPOINT_KEY, "/health")
            .build()
            .unwrap()
    };
    let _up = mesh.register(checked(http.port())).await.unwrap();
    // Declares no check: reported as the registry has it, never probed at a guessed URL.
    let unchecked = mesh
        .register(
            ServiceInstance::builder("probed", "127.0.0.1", free_port())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    wait_view(&mesh, "probed", WAIT, "two", |v| v.len() == 2).await;
    let ok = prism(&["health", "probed", "--url", &url]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let out = text(&ok.stdout);
    assert!(out.contains("passing") && out.contains("HTTP 200"), "{out}");
    assert!(
        out.contains(&format!("{} no check configured", unchecked.id())),
        "{out}"
    );
    let only = prism(&[
        "health",
        "probed",
        &unchecked.id().to_string(),
        "--url",
        &url,
    ]);
    assert_eq!(only.status.code(), Some(0), "{}", text(&only.stdout));

    let down = mesh.register(checked(free_port())).await.unwrap();
    wait_view(&mesh, "probed", WAIT, "three", |v| v.len() == 3).await;
    let bad = prism(&[
        "health",
        "probed",
        "--url",
        &url,
        "--json",
        "--timeout",
        "2s",
    ]);
    assert_eq!(bad.status.code(), Some(5));
    let lines: Vec<Value> = text(&bad.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .any(|l| l["passing"] == false && l["id"] == down.id().to_string()));
    let one = prism(&["health", "probed", &down.id().to_string(), "--url", &url]);
    assert_eq!(one.status.code(), Some(5));
    assert_clean_error(
        &prism(&["health", "probed", "not-a-uuid", "--url", &url]),
        2,
        "not an instance id",
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_can_come_from_a_service_discovery_yaml_file() {
    let server = NatsServer::start();
    let (mesh, _r) = owner_with(&server, "configured", &[8501]).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      url: ${TEST_NATS_URL}\n",
    )
    .unwrap();
    let ls = Command::new(PRISM)
        .args(["ls", "--config", good.to_str().unwrap()])
        .env_remove("NATS_URL")
        .env("TEST_NATS_URL", server.url())
        .output()
        .unwrap();
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert!(text(&ls.stdout).contains("configured"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "service_discovery:\n  backend: nats\n  instance_tll: 10s\n",
    )
    .unwrap();
    let out = prism(&["ls", "--config", bad.to_str().unwrap()]);
    assert_clean_error(&out, 2, "instance_tll");
    assert!(text(&out.stderr).contains("bad.yaml"));
    mesh.shutdown().await;
}

#[test]
fn the_demo_runs_end_to_end_with_its_own_server() {
    // Starts its own nats-server (NATS_SERVER_BIN or PATH), as the README's command does.
    let output = Command::new(PRISM)
        .args(["demo", "--ttl", "1s"])
        .env_remove("NATS_URL")
        .env("NATS_SERVER_BIN", prism_tests::nats_server_bin())
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    for part in [
        "started a local nats-server",
        "the live view",
        "expiry seen",
        "the audit trail",
        "expired",
        "deregistered",
    ] {
        assert!(
            stdout.contains(part),
            "demo output lacks {part:?}:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_giving_credentials_works_for_a_least_privilege_user() {
    // The shipped auth.conf, plus an observer-like user who signs in with an NKey.
    let nkey = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("observer.nk");
    std::fs::write(&seed_file, nkey.seed().unwrap()).unwrap();
    let conf = prism_tests::auth_conf().replacen(
        "users: [",
        &format!(
            "users: [\n    {{ nkey: {}, permissions: {{ publish: {{ allow: [\"$JS.API.>\", \"$JS.FC.>\"] }}, subscribe: {{ allow: [\"_INBOX_nkey.>\"] }} }} }}",
            nkey.public_key()
        ),
        1,
    );
    let server = NatsServer::start_with_config(&conf);
    let admin = Mesh::builder()
        .nats(prism_tests::options_as(&server.url(), "admin"))
        .connect()
        .await
        .unwrap();
    let _r = admin
        .register(
            ServiceInstance::builder("orders", "127.0.0.1", 8080)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let url = format!("nats://127.0.0.1:{port}");
    let config = dir.path().join("observer.yaml");
    std::fs::write(
        &config,
        format!(
            "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      url: {url}\n      user: observer\n      password: observer-pw\n      inbox_prefix: _INBOX_observer\n"
        ),
    )
    .unwrap();
    let seed_config = dir.path().join("nkey.yaml");
    std::fs::write(
        &seed_config,
        format!(
            "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      url: {url}\n      nkey_seed_file: {}\n      inbox_prefix: _INBOX_nkey\n",
            seed_file.display()
        ),
    )
    .unwrap();
    let in_url = format!("nats://observer:observer-pw@127.0.0.1:{port}");
    let seed = seed_file.to_str().unwrap();
    // A nats CLI context, as `nats context save` writes it (unset fields empty).
    let contexts = dir.path().join("nats/context");
    std::fs::create_dir_all(&contexts).unwrap();
    std::fs::write(
        contexts.join("obs.json"),
        format!(
            r#"{{"description":"","url":"{url}","token":"","user":"observer","password":"observer-pw","creds":"","nkey":"","cert":"","key":"","ca":"","nsc":"","jetstream_domain":"","inbox_prefix":"_INBOX_observer"}}"#
        ),
    )
    .unwrap();
    let config_home = dir.path().to_str().unwrap();
    // (how, arguments, environment)
    type Way<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let ways: [Way; 8] = [
        (
            "--context",
            vec!["--context", "obs"],
            vec![("XDG_CONFIG_HOME", config_home)],
        ),
        (
            "-s with NATS_CONTEXT",
            vec!["-s", &url],
            vec![("XDG_CONFIG_HOME", config_home), ("NATS_CONTEXT", "obs")],
        ),
        (
            "--user/--password",
            vec![
                "--url",
                &url,
                "--user",
                "observer",
                "--password",
                "observer-pw",
            ],
            vec![("NATS_INBOX_PREFIX", "_INBOX_observer")],
        ),
        (
            "NATS_USER/NATS_PASSWORD",
            vec!["--url", &url, "--inbox-prefix", "_INBOX_observer"],
            vec![("NATS_USER", "observer"), ("NATS_PASSWORD", "observer-pw")],
        ),
        (
            "credentials in the url",
            vec!["--url", &in_url, "--inbox-prefix", "_INBOX_observer"],
            vec![],
        ),
        (
            "--config with user and password",
            vec!["--config", config.to_str().unwrap()],
            vec![],
        ),
        (
            "--nkey",
            vec![
                "--url",
                &url,
                "--nkey",
                seed,
                "--inbox-prefix",
                "_INBOX_nkey",
            ],
            vec![],
        ),
        (
            "--config with nkey_seed_file",
            vec!["--config", seed_config.to_str().unwrap()],
            vec![],
        ),
    ];
    for (way, args, env) in ways {
        let mut command = Command::new(PRISM);
        command.arg("ls").args(&args).env_remove("NATS_URL");
        for (name, value) in env {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success() && text(&out.stdout).contains("orders"),
            "{way}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    // A refused password is its own exit code, and says so in one line.
    let out = prism(&[
        "ls",
        "--url",
        &url,
        "--user",
        "observer",
        "--password",
        "wrong",
    ]);
    assert_clean_error(&out, 6, "uthorization");
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );

    // Options that cannot apply, or contradict each other, are usage errors naming them.
    let out = prism(&["ls", "--url", &url, "--tls-ca", seed]);
    assert_clean_error(&out, 2, "tls_ca");
    let out = prism(&["ls", "--url", &url, "--user", "observer"]);
    assert_clean_error(&out, 2, "--user needs --password");
    let out = prism(&["ls", "--url", &url, "--token", "t", "--nkey", seed]);
    assert_clean_error(
        &out,
        2,
        "--token, --nkey each choose an authentication method",
    );
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_records_the_expiry_no_peer_of_the_service_is_left_to_record() {
    let server = prism_tests::server_with_auth_conf();
    let admin = Mesh::builder()
        .nats(prism_tests::options_as(&server.url(), "admin"))
        .publish_expired_events(false)
        .connect()
        .await
        .unwrap();
    let mut witness = PeerProcess::spawn(
        PRISM,
        &[
            "witness",
            "--url",
            &server.url(),
            "--user",
            "witness",
            "--password",
            "witness-pw",
            "--inbox-prefix",
            "_INBOX_witness",
            "--json",
        ],
    );
    // The last instance of its service, owned by a process that then crashes (no other
    // peer may record the expiry: the admin mesh here does not record any).
    let owner = Mesh::builder()
        .nats(prism_tests::options_as(&server.url(), "admin"))
        .instance_ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .publish_expired_events(false)
        .connect()
        .await
        .unwrap();
    let gone = owner
        .register(
            ServiceInstance::builder("payments", "127.0.0.1", 8080)
                .build()
                .unwrap(),
        )
        .await
        .unwrap()
        .id();
    owner.close_without_deregistering().await;
    let line = witness.expect_line(WAIT, "the expiry", |v| {
        v["event"] == "expired" && v["id"] == gone.to_string()
    });
    assert_eq!(line["service"], "payments");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let recorded = admin
            .event_history(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.instance.id == gone && e.event == prism_mesh::protocol::EventName::Expired
            })
            .count();
        if recorded == 1 {
            break;
        }
        assert!(
            recorded == 0 && std::time::Instant::now() < deadline,
            "{recorded} recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_signal(witness.pid(), "TERM");
    assert_eq!(witness.wait(WAIT), Some(0));
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follow_prints_the_stored_events_then_live_ones() {
    let server = NatsServer::start();
    let url = server.url();
    let (owner, registrations) = owner_with(&server, "followed", &[8401]).await;
    let mut replay = PeerProcess::spawn(
        PRISM,
        &["replay", "followed", "--follow", "--url", &url, "--json"],
    );
    let stored = replay.expect_line(WAIT, "the stored registration", |v| {
        v["event"] == "registered" && v["id"] == registrations[0].id().to_string()
    });
    let first_sequence = stored["sequence"].as_u64().expect("a sequence");
    // Another service's events are filtered out by the server; this one's come live.
    let (other, _) = owner_with(&server, "unrelated", &[8402]).await;
    registrations[0]
        .set_status(InstanceStatus::Healthy, Some("live now"))
        .await
        .unwrap();
    let live = replay.expect_line(WAIT, "the live status change", |v| {
        v["event"] == "status" && v["reason"] == "live now"
    });
    assert!(live["sequence"].as_u64().unwrap() > first_sequence);
    assert_eq!(live["service"], "followed");
    other.shutdown().await;
    owner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_a_pipe_closed_after_one_line_ends_quietly_with_exit_0() {
    use std::io::BufRead;
    let server = NatsServer::start();
    let url = server.url();
    // More output than a pipe and the command's buffer hold, so writing goes on after the
    // reader is gone.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mesh = fast_mesh(&url).connect().await.unwrap();
    let mut acks = Vec::new();
    for port in 0..3000u16 {
        let instance = ServiceInstance::builder("chatty", "127.0.0.1", 10_000 + port)
            .build()
            .unwrap();
        let record = prism_mesh::protocol::EventRecord {
            v: prism_mesh::protocol::PROTOCOL_VERSION,
            event: prism_mesh::protocol::EventName::Registered,
            previous_status: None,
            reason: Some("a long enough reason to make every line of the replay longer".into()),
            at: SystemTime::now(),
            origin: "test".into(),
            instance: instance.into(),
        };
        let subject = format!("discovery.chatty.{}.registered", record.instance.id);
        acks.push(
            js.publish(subject, record.encode().unwrap().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let mut child = Command::new(PRISM)
        .args(["replay", "--json", "--url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"chatty\""), "{first}");
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        !stderr.contains("prism:") && !stderr.contains("panicked"),
        "a closed pipe is not an error: {stderr}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_quiet_on_stderr_unless_asked_and_verbose_shows_library_lines() {
    let server = NatsServer::start();
    let url = server.url();
    let (mesh, _) = owner_with(&server, "quiet", &[8501]).await;
    let out = prism(&["ls", "--url", &url]);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "", "library lines on stderr by default");
    let mut command = Command::new(PRISM);
    command.args(["ls", "--url", &url]).env("PRISM_LOG", "off");
    assert_eq!(text(&command.output().unwrap().stderr), "");
    let loud = prism(&["ls", "--url", &url, "-vv"]);
    let stderr = text(&loud.stderr);
    assert!(stderr.contains("INFO"), "-vv shows info lines: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes on a pipe: {stderr}"
    );
    mesh.shutdown().await;
}

#[test]
fn the_sidecar_exits_127_for_a_missing_command_and_126_for_one_it_cannot_run() {
    let missing = prism(&[
        "register",
        "--service",
        "ghost",
        "--port",
        "8600",
        "--url",
        "nats://127.0.0.1:1",
        "--",
        "/nonexistent/command",
    ]);
    assert_clean_error(&missing, 127, "/nonexistent/command");
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    let refused = prism(&[
        "register",
        "--service",
        "ghost",
        "--port",
        "8600",
        "--url",
        "nats://127.0.0.1:1",
        "--",
        not_executable.to_str().unwrap(),
    ]);
    assert_clean_error(&refused, 126, "script.sh");
}

#[test]
fn completions_and_a_manual_page_are_generated_for_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = prism(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for command in ["replay", "checkpoint", "witness"] {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
    }
    let man = prism(&["man"]);
    assert!(man.status.success());
    let page = text(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH prism"),
        "{page}"
    );
    assert!(
        page.contains("replay") && page.contains("Exit codes"),
        "{page}"
    );
    assert_clean_error(&prism(&["completion", "tcsh"]), 2, "tcsh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_on_a_server_without_the_mesh_say_so_and_create_nothing() {
    use futures::StreamExt;
    let server = NatsServer::start();
    let url = server.url();
    for args in [
        vec!["ls"],
        vec!["get", "orders"],
        vec!["replay"],
        vec!["at", "now"],
    ] {
        let mut full = args.clone();
        full.extend(["--url", &url]);
        assert_clean_error(&prism(&full), 4, "no prism-mesh here");
    }
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let streams: Vec<String> = js.stream_names().map(|name| name.unwrap()).collect().await;
    assert!(
        streams.is_empty(),
        "a read-only command created {streams:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_without_a_command_says_what_it_registered_serves_metrics_and_leaves_on_sigterm(
) {
    let server = NatsServer::start();
    let url = server.url();
    let watcher = fast_mesh(&url).connect().await.unwrap();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut placeholder = PeerProcess::spawn(
        PRISM,
        &[
            "announce",
            "--service",
            "placeholder",
            "--port",
            "8700",
            "--zone",
            "eu-1",
            "--json",
            "--metrics",
            &metrics,
            "--url",
            &url,
        ],
    );
    let shown = placeholder.expect_line(WAIT, "the registered instance", |v| {
        v["service"] == "placeholder"
    });
    assert_eq!(shown["zone"], "eu-1");
    humantime::parse_rfc3339(shown["registered_at"].as_str().unwrap()).unwrap();
    wait_view(&watcher, "placeholder", WAIT, "registered", |v| {
        v.len() == 1 && v[0].status == InstanceStatus::Healthy
    })
    .await;
    let (status, _, body) = prism_tests::http_get(metrics.parse().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("service_discovery_registrations_total 1"),
        "{body}"
    );
    send_signal(placeholder.pid(), "TERM");
    assert_eq!(placeholder.wait(WAIT), Some(0));
    wait_view(&watcher, "placeholder", WAIT, "deregistered", |v| {
        v.is_empty()
    })
    .await;
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_a_config_file_takes_its_service_timing_and_metrics_address() {
    let server = NatsServer::start();
    let url = server.url();
    let watcher = fast_mesh(&url).connect().await.unwrap();
    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      url: {url}\n  instance_ttl: 4s\n  heartbeat_interval: 1s\n  metrics:\n    listen: 127.0.0.1:{metrics_port}\n  service:\n    name: configured\n    host: 127.0.0.2\n    port: 8800\n    tags: [from-file]\n"
        ),
    )
    .unwrap();
    // The service comes from the file's `service:` section, the port from the flag.
    let mut placeholder = PeerProcess::spawn(
        PRISM,
        &[
            "register",
            "--port",
            "8801",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    wait_view(&watcher, "configured", WAIT, "registered", |v| v.len() == 1).await;
    let seen = watcher.discover("configured");
    assert_eq!(
        (seen[0].host.as_str(), seen[0].port, seen[0].tags.to_vec()),
        ("127.0.0.2", 8801, vec!["from-file".into()])
    );
    let key = watcher.discover("configured")[0].key();
    let client = async_nats::connect(&url).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value("prism-instances")
        .await
        .unwrap();
    let value = bucket.get(&key).await.unwrap().expect("the key");
    let record = prism_mesh::protocol::InstanceRecord::decode(&value).unwrap();
    assert_eq!(record.ttl_ms, 4000, "the file's instance_ttl");
    let address = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let (status, _, _) = prism_tests::http_get(address, "/metrics").await;
    assert_eq!(status, 200, "the file's metrics.listen");
    send_signal(placeholder.pid(), "TERM");
    assert_eq!(placeholder.wait(WAIT), Some(0));

    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "service_discovery:\n  backend: nats\n").unwrap();
    assert_clean_error(
        &prism(&[
            "register",
            "--port",
            "1",
            "--config",
            bare.to_str().unwrap(),
        ]),
        2,
        "--service is required (or service.name in the --config file)",
    );
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_and_deregister_go_through_the_owner_and_say_who_asked_and_why() {
    let server = NatsServer::start();
    let url = server.url();
    let watcher = fast_mesh(&url).connect().await.unwrap();
    let mut events = watcher.subscribe();
    let (owner, registrations) = owner_with(&server, "operated", &[8901]).await;
    let me = &registrations[0];
    me.set_status(InstanceStatus::Healthy, None).await.unwrap();
    let id = me.id().to_string();

    let on = prism(&[
        "maint",
        "operated",
        &id,
        "on",
        "--reason",
        "disk swap",
        "--url",
        &url,
    ]);
    assert!(on.status.success(), "{}", text(&on.stderr));
    let changed = wait_event(&mut events, WAIT, "maintenance", |e| {
        matches!(
            e,
            MeshEvent::StatusChanged {
                current: InstanceStatus::Maintenance,
                ..
            }
        )
    })
    .await;
    let MeshEvent::StatusChanged { reason, .. } = changed else {
        unreachable!()
    };
    let reason = reason.unwrap_or_default();
    assert!(
        reason.starts_with("maintenance on by ") && reason.ends_with("(prism): disk swap"),
        "{reason}"
    );
    let off = prism(&["maint", "operated", &id, "off", "--url", &url]);
    assert!(off.status.success(), "{}", text(&off.stderr));
    wait_event(&mut events, WAIT, "back to healthy", |e| {
        matches!(
            e,
            MeshEvent::StatusChanged {
                previous: InstanceStatus::Maintenance,
                current: InstanceStatus::Healthy,
                ..
            }
        )
    })
    .await;

    let gone = prism(&[
        "deregister",
        "operated",
        &id,
        "--reason",
        "retired",
        "--url",
        &url,
    ]);
    assert!(gone.status.success(), "{}", text(&gone.stderr));
    let removed = wait_event(&mut events, WAIT, "deregistered", |e| {
        e.kind() == EventKind::Deregistered
    })
    .await;
    let MeshEvent::Deregistered { reason, .. } = removed else {
        unreachable!()
    };
    assert!(reason.unwrap_or_default().ends_with(": retired"));
    assert!(!me.is_live(), "the owner itself deregistered it");

    // An instance whose owner is gone (its key still live) is deregistered directly, and
    // the trail says so.
    let orphaned = Mesh::builder()
        .nats(prism_tests::test_options(&url))
        .instance_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let orphan = orphaned
        .register(
            ServiceInstance::builder("operated", "127.0.0.1", 8902)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let orphan_id = orphan.id();
    orphaned.close_without_deregistering().await;
    wait_view(&watcher, "operated", WAIT, "the orphan", |v| v.len() == 1).await;
    let out = prism(&[
        "deregister",
        "operated",
        &orphan_id.to_string(),
        "--url",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_view(&watcher, "operated", WAIT, "no instance", |v| v.is_empty()).await;
    let mut trail = watcher
        .history(prism_mesh::HistoryQuery::new().instance(orphan_id))
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = trail.next().await {
        last = Some(event.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(
        last.record.event,
        prism_mesh::protocol::EventName::Deregistered
    );
    assert!(last
        .record
        .reason
        .unwrap_or_default()
        .starts_with("deregistered by "));

    assert_clean_error(
        &prism(&[
            "maint",
            "operated",
            &orphan_id.to_string(),
            "on",
            "--url",
            &url,
        ]),
        4,
        "no live instance",
    );
    owner.shutdown().await;
    watcher.shutdown().await;
}
