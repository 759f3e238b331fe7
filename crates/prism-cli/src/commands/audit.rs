//! The audit trail: `replay` streams events as it reads them; `at` and `diff` rebuild the
//! registry at one or two moments from the nearest checkpoint before them.

use std::process::ExitCode;
use std::time::SystemTime;

use prism_mesh::{HistoryQuery, PastRegistry, ServiceInstance};
use uuid::Uuid;

use crate::commands::inspect::parse_time;
use crate::output::{instance_table, stored_event_line, Out};
use crate::{CliError, ConnectArgs};

/// What `prism replay` reads.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Only this service (the server filters).
    pub service: Option<String>,
    /// Only this instance id (the server filters).
    #[arg(long)]
    pub instance: Option<Uuid>,
    /// Start: RFC 3339 (with Z or an offset), a date, epoch seconds, `now`, or an age such
    /// as `10m`, `-10m` or `"1h ago"` (default: the oldest kept).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// End, in the same forms (default: the end of the stream when the read starts).
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    /// After the stored events, go on with live ones until Ctrl-C (like `tail -f`).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Prints the events `args` select, as they are read.
pub async fn replay(args: &ReplayArgs, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let mut query = HistoryQuery::new().follow(args.follow);
    if let Some(service) = &args.service {
        prism_mesh::validate_service_name(service)?;
        query = query.service(service);
    }
    if let Some(id) = args.instance {
        query = query.instance(id);
    }
    let since = args.since.as_deref().map(parse_time).transpose()?;
    let until = args.until.as_deref().map(parse_time).transpose()?;
    if let (Some(since), Some(until)) = (since, until) {
        if until < since {
            return Err(CliError::Usage("--until is before --since".to_string()));
        }
    }
    if let Some(since) = since {
        query = query.since(since);
    }
    if let Some(until) = until {
        query = query.until(until);
    }
    let mesh = connect.connect_reader().await?;
    let printed = print_history(&mesh, query, connect.json, args.follow).await;
    mesh.shutdown().await;
    printed.map(|()| ExitCode::SUCCESS)
}

async fn print_history(
    mesh: &prism_mesh::Mesh,
    query: HistoryQuery,
    json: bool,
    follow: bool,
) -> Result<(), CliError> {
    let mut events = mesh.history(query).await?;
    let mut out = Out::new(follow);
    print_events(&mut events, &mut out, json).await?;
    out.flush()?;
    if events.skipped() > 0 {
        eprintln!(
            "prism: skipped {} stored messages that are not valid events",
            events.skipped()
        );
    }
    Ok(())
}

/// Prints `events` as they come, until they end or Ctrl-C.
pub async fn print_events(
    events: &mut prism_mesh::History,
    out: &mut Out,
    json: bool,
) -> Result<(), CliError> {
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => out.line(&stored_event_line(&event?, json))?,
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Writes a checkpoint of the registry now (as the `witness` user under nats/auth.conf).
pub async fn checkpoint(connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let mesh = connect.connect_reader().await?;
    let written = mesh.write_checkpoint().await;
    mesh.shutdown().await;
    let mut out = Out::new(false);
    match written? {
        Some(first) => out.line(&format!("checkpoint written at stream sequence {first}"))?,
        None => out.line("another peer wrote a checkpoint at the same moment; it stands")?,
    }
    out.flush().map(|()| ExitCode::SUCCESS)
}

/// Says on stderr when the stream's retention removed events a rebuilt registry needed.
fn warn_if_incomplete(registry: &PastRegistry, time: SystemTime) {
    if !registry.is_complete() {
        eprintln!(
            "prism: the event stream no longer holds every event before {} and no checkpoint \
             covers them: instances registered earlier may be missing",
            humantime::format_rfc3339_millis(time)
        );
    }
}

/// The registry as it was at `time`.
pub async fn at(time: &str, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let time = parse_time(time)?;
    let mesh = connect.connect_reader().await?;
    let registry = mesh.past_registry(Some(time)).await;
    mesh.shutdown().await;
    let registry = registry?;
    warn_if_incomplete(&registry, time);
    let mut rows: Vec<&ServiceInstance> = registry.instances().map(|i| &**i).collect();
    rows.sort_by(|a, b| (&a.service, a.id).cmp(&(&b.service, b.id)));
    let mut out = Out::new(false);
    if connect.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|instance| crate::commands::inspect::instance_json(instance, None))
            .collect::<Result<_, _>>()?;
        let text = serde_json::Value::Array(rows).to_string();
        out.line(&text)?;
        return out.flush().map(|()| ExitCode::SUCCESS);
    }
    out.line(&format!(
        "registry at {}",
        humantime::format_rfc3339_millis(time)
    ))?;
    out.line(&instance_table(
        true,
        rows.into_iter().map(|instance| (instance, None)),
    ))?;
    out.flush().map(|()| ExitCode::SUCCESS)
}

/// What changed between two moments.
pub async fn diff(from: &str, to: &str, connect: &ConnectArgs) -> Result<ExitCode, CliError> {
    let (from, to) = (parse_time(from)?, parse_time(to)?);
    if to < from {
        return Err(CliError::Usage(
            "the second time is before the first".to_string(),
        ));
    }
    let mesh = connect.connect_reader().await?;
    let diff = mesh.registry_diff(from, to).await;
    mesh.shutdown().await;
    let (diff, before, _) = diff?;
    warn_if_incomplete(&before, from);
    let mut out = Out::new(false);
    if connect.json {
        // Serialized from references, not through a `serde_json::Value` copy of every
        // instance: a diff across a busy hour holds tens of thousands.
        #[derive(serde::Serialize)]
        struct Changed<'a> {
            before: &'a ServiceInstance,
            after: &'a ServiceInstance,
        }
        #[derive(serde::Serialize)]
        struct Diff<'a> {
            added: &'a [ServiceInstance],
            removed: &'a [ServiceInstance],
            changed: Vec<Changed<'a>>,
        }
        let shown = Diff {
            added: &diff.added,
            removed: &diff.removed,
            changed: diff
                .changed
                .iter()
                .map(|(before, after)| Changed { before, after })
                .collect(),
        };
        let text = serde_json::to_string(&shown).map_err(|e| CliError::Other(e.to_string()))?;
        out.line(&text)?;
        return out.flush().map(|()| ExitCode::SUCCESS);
    }
    let line = |sign: char, instance: &ServiceInstance, status: String| {
        format!(
            "{sign} {}/{} {} [{status}]",
            instance.service,
            instance.id,
            instance.base_url()
        )
    };
    for instance in &diff.added {
        out.line(&line('+', instance, instance.status.to_string()))?;
    }
    for instance in &diff.removed {
        out.line(&line('-', instance, instance.status.to_string()))?;
    }
    for (before, after) in &diff.changed {
        let status = if before.status == after.status {
            after.status.to_string()
        } else {
            format!("{} -> {}", before.status, after.status)
        };
        out.line(&line('~', after, status))?;
    }
    if diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty() {
        out.line("no change")?;
    }
    out.flush().map(|()| ExitCode::SUCCESS)
}
