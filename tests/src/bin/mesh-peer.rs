//! Test fixture: a mesh peer in its own OS process. It optionally registers one instance,
//! prints every event it sees as a JSON line on stdout, and obeys commands on stdin:
//! `status <status> [reason]`, `meta <key> <value>`, `deregister [reason]`, `shutdown`.

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use prism_mesh::{Mesh, MeshEvent, NatsOptions, ServiceInstance};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// NATS url(s), comma-separated.
    #[arg(long)]
    url: String,
    /// Register an instance of this service.
    #[arg(long)]
    service: Option<String>,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Register this many instances (ports port, port+1, ...); commands act on the first.
    #[arg(long, default_value_t = 1)]
    count: u16,
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    ttl: Duration,
    #[arg(long, default_value = "500ms", value_parser = humantime_duration)]
    heartbeat: Duration,
    /// On SIGTERM or Ctrl-C: maintenance, drain this long, deregister, exit 0.
    #[arg(long, value_parser = humantime_duration)]
    graceful_drain: Option<Duration>,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

fn describe(event: &MeshEvent) -> serde_json::Value {
    let instance = event.instance();
    let mut value = json!({
        "event": event.kind().as_str(),
        "service": instance.service,
        "id": instance.id.to_string(),
        "status": instance.status.as_str(),
        "metadata": instance.metadata,
    });
    match event {
        MeshEvent::StatusChanged {
            previous,
            current,
            reason,
            ..
        } => {
            value["previous"] = json!(previous.as_str());
            value["current"] = json!(current.as_str());
            value["reason"] = json!(reason);
        }
        MeshEvent::Deregistered { reason, .. } | MeshEvent::Updated { reason, .. } => {
            value["reason"] = json!(reason);
        }
        _ => {}
    }
    value
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn".into())
                .add_directive(
                    prism_mesh::SECRET_SAFE_LOG_DIRECTIVE
                        .parse()
                        .expect("directive"),
                ),
        )
        .init();
    let args = Args::parse();
    let mesh = Mesh::builder()
        .nats(NatsOptions::new(&args.url).marker_ttl(Duration::from_secs(5)))
        .instance_ttl(args.ttl)
        .heartbeat_interval(args.heartbeat)
        .tombstone_ttl(Duration::from_secs(5))
        .connect()
        .await?;
    let mut events = mesh.subscribe();
    let mut registrations = Vec::new();
    if let Some(service) = &args.service {
        for n in 0..args.count {
            let instance = ServiceInstance::builder(service, "127.0.0.1", args.port + n).build()?;
            registrations.push(mesh.register(instance).await?);
        }
    }
    let registration = registrations.first().cloned();
    // Listening before the ready line: a SIGTERM sent right after it is caught, not fatal.
    let leave = match args.graceful_drain {
        Some(drain) => Some(mesh.shutdown_on_signal(drain)?),
        None => None,
    };
    let view: Vec<serde_json::Value> = mesh
        .services()
        .iter()
        .flat_map(|s| mesh.discover(s))
        .map(|i| json!({"service": i.service, "id": i.id.to_string()}))
        .collect();
    print(json!({
        "ready": true,
        "pid": std::process::id(),
        "id": registration.as_ref().map(|r| r.id().to_string()),
        "ids": registrations.iter().map(|r| r.id().to_string()).collect::<Vec<_>>(),
        "view": view,
    }));

    let graceful = leave.is_some();
    let leave = async move {
        match leave {
            Some(leave) => leave.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(leave);
    let (mut events_open, mut stdin_open) = (true, true);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            signal = &mut leave => {
                print(json!({"done": "signal", "signal": signal}));
                break;
            }
            event = events.next(), if events_open => match event {
                Some(event) => print(describe(&event)),
                // A graceful shutdown closes the view before it finishes: wait for it.
                None if graceful => events_open = false,
                None => break,
            },
            line = stdin.next_line(), if stdin_open => {
                let Ok(Some(line)) = line else {
                    // With a signal to wait for, the end of stdin ends nothing.
                    if graceful {
                        stdin_open = false;
                        continue;
                    }
                    break;
                };
                let words: Vec<&str> = line.split_whitespace().collect();
                let result = match (words.as_slice(), &registration) {
                    (["status", status, rest @ ..], Some(r)) => {
                        let reason = (!rest.is_empty()).then(|| rest.join(" "));
                        match status.parse() {
                            Ok(status) => r.set_status(status, reason.as_deref()).await.map(|_| ()),
                            Err(e) => Err(e),
                        }
                    }
                    (["meta", key, value], Some(r)) => {
                        let (key, value) = (key.to_string(), value.to_string());
                        r.update(move |i| { i.metadata.insert(key, value); }).await.map(|_| ())
                    }
                    (["deregister", rest @ ..], Some(r)) => {
                        let reason = (!rest.is_empty()).then(|| rest.join(" "));
                        r.deregister(reason.as_deref()).await
                    }
                    (["shutdown"], _) => {
                        mesh.shutdown().await;
                        print(json!({"done": "shutdown"}));
                        break;
                    }
                    _ => {
                        print(json!({"error": format!("unknown command {line:?}")}));
                        continue;
                    }
                };
                match result {
                    Ok(()) => print(json!({"done": words[0]})),
                    Err(e) => print(json!({"error": e.to_string()})),
                }
            }
        }
    }
    // Not a return: the runtime would wait forever for the blocking read of stdin.
    std::process::exit(0)
}
