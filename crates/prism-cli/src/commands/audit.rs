//! The audit trail: `replay`, and the registry rebuilt at a moment (`at`) or between two
//! (`diff`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::SystemTime;

use prism_mesh::{diff_registries, registry_at, ServiceInstance};
use serde_json::json;
use uuid::Uuid;

use crate::commands::inspect::parse_time;
use crate::output::{instance_table, record_line};
use crate::{CliError, ConnectArgs};

/// Prints events between `since` and `until` (default now), of one service or all.
pub async fn replay(
    since: Option<&str>,
    until: Option<&str>,
    service: Option<&str>,
    connect: &ConnectArgs,
) -> Result<ExitCode, CliError> {
    let since = since.map(parse_time).transpose()?;
    let until = until.map(parse_time).transpose()?;
    if let (Some(since), Some(until)) = (since, until) {
        if until < since {
            return Err(CliError::Usage("--until is before --since".to_string()));
        }
    }
    if let Some(service) = service {
        prism_mesh::validate_service_name(service)?;
    }
    let mesh = connect.connect().await?;
    let records = mesh
        .event_history_with_progress(since, progress_printer())
        .await?;
    mesh.shutdown().await;
    for record in records
        .iter()
        .take_while(|r| until.is_none_or(|until| r.at <= until))
        .filter(|r| service.is_none_or(|s| r.instance.service == s))
    {
        anstream::println!("{}", record_line(record, connect.json));
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr for long replays, when a person is watching.
fn progress_printer() -> impl Fn(u64, u64) + Send + Sync {
    let show = std::io::stderr().is_terminal();
    move |done, total| {
        if show && total >= 10_000 {
            eprint!("\rreplaying: {done}/{total} events");
            if done == total {
                eprintln!();
            }
        }
    }
}

async fn registry_at_time(
    time: SystemTime,
    connect: &ConnectArgs,
) -> Result<BTreeMap<Uuid, ServiceInstance>, CliError> {
    let mesh = connect.connect().await?;
    let records = mesh
        .event_history_with_progress(None, progress_printer())
        .await?;
    mesh.shutdown().await;
    Ok(registry_at(&records, time))
}

/// The registry as it was at `time`.
pub async fn at(time: &str, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let time = parse_time(time)?;
    let registry = registry_at_time(time, connect).await?;
    if connect.json {
        let instances: Vec<&ServiceInstance> = registry.values().collect();
        println!(
            "{}",
            serde_json::to_string(&instances).map_err(|e| CliError::Other(e.to_string()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("registry at {}", humantime::format_rfc3339_millis(time));
    let mut rows: Vec<&ServiceInstance> = registry.values().collect();
    rows.sort_by(|a, b| (&a.service, a.id).cmp(&(&b.service, b.id)));
    println!(
        "{}",
        instance_table(true, rows.into_iter().map(|instance| (instance, None)))
    );
    Ok(ExitCode::SUCCESS)
}

/// What changed between two moments.
pub async fn diff(from: &str, to: &str, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let (from, to) = (parse_time(from)?, parse_time(to)?);
    if to < from {
        return Err(CliError::Usage(
            "the second time is before the first".to_string(),
        ));
    }
    let mesh = connect.connect().await?;
    let records = mesh
        .event_history_with_progress(None, progress_printer())
        .await?;
    mesh.shutdown().await;
    let diff = diff_registries(&registry_at(&records, from), &registry_at(&records, to));
    if connect.json {
        let value = json!({
            "added": diff.added,
            "removed": diff.removed,
            "changed": diff.changed.iter().map(|(before, after)| json!({"before": before, "after": after})).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    for instance in &diff.added {
        println!(
            "+ {}/{} {} [{}]",
            instance.service,
            instance.id,
            instance.base_url(),
            instance.status
        );
    }
    for instance in &diff.removed {
        println!(
            "- {}/{} {} [{}]",
            instance.service,
            instance.id,
            instance.base_url(),
            instance.status
        );
    }
    for (before, after) in &diff.changed {
        let status = if before.status == after.status {
            after.status.to_string()
        } else {
            format!("{} -> {}", before.status, after.status)
        };
        println!(
            "~ {}/{} {} [{status}]",
            after.service,
            after.id,
            after.base_url()
        );
    }
    if diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty() {
        println!("no change");
    }
    Ok(ExitCode::SUCCESS)
}
