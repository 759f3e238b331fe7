//! `prism health`: run instances' health checks now, from here.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use crate::{CliError, ConnectArgs};

/// Exit code when a check ran and failed.
pub const CHECK_FAILED: u8 = 5;

pub async fn run(
    service: &str,
    instance: Option<&str>,
    timeout: Duration,
    connect: &ConnectArgs,
) -> Result<ExitCode, CliError> {
    prism_mesh::validate_service_name(service)?;
    let wanted = instance
        .map(|id| {
            id.parse::<uuid::Uuid>()
                .map_err(|_| CliError::Usage(format!("{id:?} is not an instance id (a UUID)")))
        })
        .transpose()?;
    let mesh = connect.connect_following(service).await?;
    let targets: Vec<_> = mesh
        .discover(service)
        .into_iter()
        .filter(|i| wanted.is_none_or(|id| i.id == id))
        .collect();
    if targets.is_empty() {
        mesh.shutdown().await;
        eprintln!(
            "prism: no live instance of service {service:?}{}",
            instance
                .map(|i| format!(" with id {i}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(4));
    }
    let mut failing = 0;
    for target in targets {
        // An instance that declares no check is reported as the registry has it, not
        // probed at a guessed URL.
        if prism_mesh::HealthCheck::declared(&target).is_none() {
            if connect.json {
                println!(
                    "{}",
                    json!({
                        "service": service,
                        "id": target.id.to_string(),
                        "check": null,
                        "status": target.status.as_str(),
                        "output": "no check configured",
                    })
                );
            } else {
                println!(
                    "{} no check configured (the registry says {})",
                    target.id, target.status
                );
            }
            continue;
        }
        let result = mesh
            .health_check_service(service, target.id, timeout)
            .await?;
        failing += usize::from(!result.passing);
        if connect.json {
            println!(
                "{}",
                json!({
                    "service": service,
                    "id": target.id.to_string(),
                    "url": prism_mesh::health::health_url(&target),
                    "passing": result.passing,
                    "latency_ms": result.latency.as_secs_f64() * 1000.0,
                    "output": result.output,
                })
            );
        } else {
            println!(
                "{} {} {:<7} {:>6.1} ms  {}",
                target.id,
                prism_mesh::health::health_url(&target),
                if result.passing { "passing" } else { "FAILING" },
                result.latency.as_secs_f64() * 1000.0,
                result.output
            );
        }
    }
    mesh.shutdown().await;
    Ok(if failing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHECK_FAILED)
    })
}
