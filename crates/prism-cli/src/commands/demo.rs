//! `prism demo`: the main job of the README. A local nats-server, a few services in their
//! own processes, a peer streaming their events, a `kill -9` and its expiry, a graceful
//! stop, then the audit trail.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use prism_mesh::{EventKind, Mesh, MeshEvent, NatsOptions, SelfPreservation};

use crate::output::{event_line, instance_table, record_line};
use crate::server::LocalServer;
use crate::CliError;

#[derive(Args)]
pub struct DemoArgs {
    /// Use this NATS server instead of starting one.
    #[arg(long, env = "NATS_URL")]
    pub url: Option<String>,
    /// TTL of the demo's instances.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Children killed on drop, so an early error leaves nothing running.
struct Services(Vec<(String, Child)>);

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<ExitCode, CliError> {
    let (_server, url) = match &args.url {
        Some(url) => (None, url.clone()),
        None => {
            let server = LocalServer::start()?;
            println!(
                "== started a local nats-server with JetStream at {}",
                server.url
            );
            let url = server.url.clone();
            (Some(server), url)
        }
    };
    let heartbeat = args.ttl / 3;
    let peer = Mesh::builder()
        .nats(NatsOptions::new(&url).client_name("prism-demo"))
        .instance_ttl(args.ttl)
        .heartbeat_interval(heartbeat)
        .connect()
        .await?;
    let mut events = peer.subscribe();
    println!(
        "== this peer watches every lifecycle event (TTL {})",
        humantime::format_duration(args.ttl)
    );

    let exe = std::env::current_exe().map_err(|e| CliError::Other(format!("own path: {e}")))?;
    let plan = [
        ("orders", 8081, "eu-1"),
        ("orders", 8082, "eu-2"),
        ("payments", 9091, "eu-1"),
        ("search", 7071, "eu-2"),
    ];
    let mut services = Services(Vec::new());
    for (service, port, zone) in plan {
        let child = Command::new(&exe)
            .args([
                "announce",
                "--service",
                service,
                "--port",
                &port.to_string(),
                "--zone",
                zone,
            ])
            .args(["--ttl", &humantime::format_duration(args.ttl).to_string()])
            .args([
                "--heartbeat",
                &humantime::format_duration(heartbeat).to_string(),
            ])
            .args(["--url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError::Other(format!("cannot start a demo service: {e}")))?;
        println!(
            "== started {service} on port {port} as process {}",
            child.id()
        );
        services.0.push((service.to_string(), child));
    }

    // Each service registers, then turns healthy: two events each.
    let expected = plan.len() * 2;
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen < expected {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => {
                anstream::println!("{}", event_line(&event, false));
                seen += 1;
            }
            _ => {
                return Err(CliError::Other(
                    "the demo services did not all register within 20 s".into(),
                ))
            }
        }
    }

    println!("\n== the live view, read from this peer's memory (no network):");
    let instances: Vec<_> = peer
        .services()
        .iter()
        .flat_map(|service| peer.discover(service))
        .collect();
    let rows = instances
        .iter()
        .map(|instance| (instance.as_ref(), peer.last_heartbeat(instance.id)));
    println!("{}", instance_table(true, rows));

    let (victim_service, victim) = &mut services.0[0];
    println!(
        "\n== kill -9 of {victim_service} process {}: no goodbye, its key must expire",
        victim.id()
    );
    let killed_at = Instant::now();
    victim
        .kill()
        .map_err(|e| CliError::Other(format!("kill: {e}")))?;
    let _ = victim.wait();
    // On a loaded machine the server may expire the key late; peers then hold the expiry
    // for self-preservation's grace before they report it.
    wait_for(
        &mut events,
        EventKind::Expired,
        args.ttl * 3 + SelfPreservation::default().grace + Duration::from_secs(5),
    )
    .await?;
    println!(
        "== expiry seen {:.2?} after the kill (TTL {})",
        killed_at.elapsed(),
        humantime::format_duration(args.ttl)
    );

    let (stopped_service, stopped) = &services.0[2];
    println!(
        "\n== SIGTERM to {stopped_service} process {}: it says goodbye",
        stopped.id()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &stopped.id().to_string()])
        .status();
    wait_for(
        &mut events,
        EventKind::Deregistered,
        Duration::from_secs(10),
    )
    .await?;

    // Let peers' `expired` publications land before reading the trail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("\n== the audit trail, replayed from the event stream:");
    for record in peer.event_history(None).await? {
        anstream::println!("{}", record_line(&record, false));
    }
    println!(
        "\n== {} services still live: {}",
        peer.services().len(),
        peer.services().join(", ")
    );
    drop(services);
    peer.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for(
    events: &mut prism_mesh::EventStream,
    kind: EventKind,
    timeout: Duration,
) -> Result<MeshEvent, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => {
                anstream::println!("{}", event_line(&event, false));
                if event.kind() == kind {
                    return Ok(event);
                }
            }
            _ => {
                return Err(CliError::Other(format!(
                    "no {} event within {}",
                    kind.as_str(),
                    humantime::format_duration(timeout)
                )))
            }
        }
    }
}
