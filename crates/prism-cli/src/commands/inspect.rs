//! Read-only commands: `ls`, `get`, `watch`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use prism_mesh::HistoryQuery;
use serde_json::json;

use crate::output::{current_line, instance_table, plain_table, stored_event_line, Out};
use crate::{CliError, ConnectArgs};

pub async fn ls(connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let mesh = connect.connect().await?;
    let mut rows = Vec::new();
    for service in mesh.services() {
        let instances = mesh.discover(&service);
        let counts: BTreeMap<&'static str, usize> = prism_mesh::count_by_status(&instances)
            .into_iter()
            .map(|(status, n)| (status.as_str(), n))
            .collect();
        rows.push((service, instances.len(), counts));
    }
    if connect.json {
        let value: Vec<_> = rows
            .iter()
            .map(|(service, total, counts)| json!({"service": service, "instances": total, "by_status": counts}))
            .collect();
        println!("{}", serde_json::Value::Array(value));
    } else {
        let mut table = plain_table(vec!["SERVICE", "INSTANCES", "BY STATUS"]);
        for (service, total, counts) in rows {
            let by_status: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
            table.add_row(vec![service, total.to_string(), by_status.join(" ")]);
        }
        println!("{table}");
    }
    mesh.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn get(service: &str, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    prism_mesh::validate_service_name(service)?;
    let mesh = connect.connect().await?;
    let instances = mesh.discover(service);
    mesh.shutdown().await;
    if instances.is_empty() {
        eprintln!("prism: no live instance of service {service:?}");
        return Ok(ExitCode::from(4));
    }
    if connect.json {
        let mut rows = Vec::with_capacity(instances.len());
        for instance in &instances {
            let mut row = serde_json::to_value(instance.as_ref())
                .map_err(|e| CliError::Other(e.to_string()))?;
            row["last_heartbeat"] = json!(mesh
                .last_heartbeat(instance.id)
                .map(|t| humantime::format_rfc3339_millis(t).to_string()));
            rows.push(row);
        }
        println!("{}", serde_json::Value::Array(rows));
    } else {
        let rows = instances
            .iter()
            .map(|instance| (instance.as_ref(), mesh.last_heartbeat(instance.id)));
        println!("{}", instance_table(false, rows));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(service: Option<&str>, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    if let Some(service) = service {
        prism_mesh::validate_service_name(service)?;
    }
    // This peer records the expiries it sees (where permissions let it), so that a service
    // with no other peer left still shows its end.
    let mesh = connect
        .builder()?
        .publish_expired_events(true)
        .connect()
        .await?;
    let shown = show_then_follow(&mesh, service, connect.json).await;
    mesh.shutdown().await;
    shown.map(|()| ExitCode::SUCCESS)
}

/// The live view as the current state, then the events stored after it as they come.
async fn show_then_follow(
    mesh: &prism_mesh::Mesh,
    service: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let end = mesh.history_end().await?;
    let mut out = Out::new(true);
    let services = match service {
        Some(s) => vec![s.to_string()],
        None => mesh.services(),
    };
    for name in services {
        for instance in mesh.discover(&name) {
            out.line(&current_line(&instance, json))?;
        }
    }
    let mut query = HistoryQuery::new().after_sequence(end).follow(true);
    if let Some(service) = service {
        query = query.service(service);
    }
    let mut events = mesh.history(query).await?;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => out.line(&stored_event_line(&event?, json))?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

pub use crate::time::parse_time;
