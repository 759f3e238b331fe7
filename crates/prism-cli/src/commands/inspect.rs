//! Read-only commands: `ls`, `get`, `watch`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use prism_mesh::{HistoryQuery, InstanceStatus, ServiceInstance};
use serde_json::json;

use crate::output::{current_line, instance_table_with, plain_table, Out};
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

/// What `prism get` shows.
#[derive(clap::Args)]
pub struct GetArgs {
    /// Service name.
    pub service: String,
    /// Only instances in these statuses (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    pub status: Vec<InstanceStatus>,
    /// Only instances with every one of these tags (repeat, or separate with commas).
    #[arg(long = "tag", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Only instances in this zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// table (default), wide (with metadata), json or yaml; `--json` is `-o json`.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
}

/// How `prism get` prints.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table sized to its content.
    Table,
    /// The table with each instance's metadata.
    Wide,
    /// A JSON array (times in RFC 3339).
    Json,
    /// YAML (times in RFC 3339).
    Yaml,
}

fn parse_status(text: &str) -> Result<InstanceStatus, String> {
    text.parse().map_err(|e: prism_mesh::Error| e.to_string())
}

pub async fn get(args: &GetArgs, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let service = args.service.as_str();
    prism_mesh::validate_service_name(service)?;
    let mesh = connect.connect_following(service).await?;
    let all = mesh.discover(service);
    mesh.shutdown().await;
    if all.is_empty() {
        eprintln!("prism: no live instance of service {service:?}");
        return Ok(ExitCode::from(4));
    }
    let shown: Vec<_> = all
        .iter()
        .filter(|i| args.status.is_empty() || args.status.contains(&i.status))
        .filter(|i| args.tags.iter().all(|tag| i.tags.iter().any(|t| t == tag)))
        .filter(|i| args.zone.is_none() || i.zone.as_deref() == args.zone.as_deref())
        .collect();
    let format = match (args.output, connect.json) {
        (Some(format), _) => format,
        (None, true) => Format::Json,
        (None, false) => Format::Table,
    };
    let mut out = Out::new(false);
    match format {
        Format::Json | Format::Yaml => {
            let rows: Vec<serde_json::Value> = shown
                .iter()
                .map(|i| instance_json(i, mesh.last_heartbeat(i.id)))
                .collect::<Result<_, _>>()?;
            let text = if format == Format::Json {
                serde_json::Value::Array(rows).to_string()
            } else {
                serde_yaml_ng::to_string(&rows).map_err(|e| CliError::Other(e.to_string()))?
            };
            out.line(text.trim_end())?;
        }
        Format::Table | Format::Wide => {
            let rows = shown
                .iter()
                .map(|instance| (instance.as_ref(), mesh.last_heartbeat(instance.id)));
            out.line(&instance_table_with(false, format == Format::Wide, rows))?;
            let counts: Vec<String> = prism_mesh::count_by_status(shown.iter().copied())
                .into_iter()
                .map(|(status, n)| format!("{status}={n}"))
                .collect();
            out.line(&format!(
                "{} of {} instances ({})",
                shown.len(),
                all.len(),
                counts.join(", ")
            ))?;
        }
    }
    out.flush().map(|()| ExitCode::SUCCESS)
}

/// An instance as JSON with every time in RFC 3339.
pub fn instance_json(
    instance: &ServiceInstance,
    last_heartbeat: Option<std::time::SystemTime>,
) -> Result<serde_json::Value, CliError> {
    let mut row = serde_json::to_value(instance).map_err(|e| CliError::Other(e.to_string()))?;
    row["registered_at"] = json!(instance.registered_at.to_string());
    row["updated_at"] = json!(instance.updated_at.to_string());
    row["last_heartbeat"] =
        json!(last_heartbeat.map(|t| humantime::format_rfc3339_millis(t).to_string()));
    Ok(row)
}

pub async fn watch(service: Option<&str>, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    if let Some(service) = service {
        prism_mesh::validate_service_name(service)?;
    }
    // This peer records the expiries it sees (where permissions let it), so that a service
    // with no other peer left still shows its end.
    let mut builder = connect.builder()?.publish_expired_events(true);
    if let Some(service) = service {
        builder = builder.follow(service);
    }
    let mesh = builder.connect().await?;
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
    crate::commands::audit::print_events(&mut events, &mut out, json).await
}

pub use crate::time::parse_time;
