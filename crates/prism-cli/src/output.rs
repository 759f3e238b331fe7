//! How the CLI shows instances and events to people (and to scripts with --json).

use std::io::{BufWriter, IsTerminal, StdoutLock, Write};
use std::time::SystemTime;

use prism_mesh::protocol::EventRecord;
use prism_mesh::{MeshEvent, ServiceInstance, StoredEvent};
use serde_json::json;

/// Standard output for commands that print many lines: buffered (line by line on a
/// terminal or when following), colour only where `anstream` would keep it, and a closed
/// pipe (`| head -1`) reported as [`CliError::OutputClosed`], which ends the command quietly.
pub struct Out {
    writer: BufWriter<StdoutLock<'static>>,
    colour: bool,
    flush_each: bool,
}

impl Out {
    /// `follow`: every line is flushed as it is written (a stream that goes on).
    pub fn new(follow: bool) -> Out {
        let stdout = std::io::stdout();
        let colour = anstream::AutoStream::choice(&stdout) != anstream::ColorChoice::Never;
        let flush_each = follow || stdout.is_terminal();
        Out {
            writer: BufWriter::with_capacity(64 * 1024, stdout.lock()),
            colour,
            flush_each,
        }
    }

    /// Writes one line.
    pub fn line(&mut self, text: &str) -> Result<(), crate::CliError> {
        let written = if self.colour {
            writeln!(self.writer, "{text}")
        } else {
            writeln!(self.writer, "{}", anstream::adapter::strip_str(text))
        };
        written
            .and_then(|()| {
                if self.flush_each {
                    self.writer.flush()
                } else {
                    Ok(())
                }
            })
            .map_err(output_error)
    }

    /// Writes `bytes` as they are (a generated script or page).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), crate::CliError> {
        self.writer.write_all(bytes).map_err(output_error)
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) -> Result<(), crate::CliError> {
        self.writer.flush().map_err(output_error)
    }
}

fn output_error(e: std::io::Error) -> crate::CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        crate::CliError::OutputClosed
    } else {
        crate::CliError::Other(format!("cannot write to standard output: {e}"))
    }
}

/// One line for an instance of the live view, shown as the current state (stamped with
/// its registration).
pub fn current_line(instance: &ServiceInstance, json_output: bool) -> String {
    let registered = instance.registered_at.to_string();
    if json_output {
        return json!({
            "event": "current",
            "at": registered,
            "service": instance.service,
            "id": instance.id.to_string(),
            "status": instance.status.as_str(),
            "url": instance.base_url(),
        })
        .to_string();
    }
    format!(
        "{registered} {} {}/{} [{}] {} (live now)",
        paint("current"),
        instance.service,
        short(&instance.id.to_string()),
        instance.status,
        instance.base_url()
    )
}

/// One line for a live event.
pub fn event_line(event: &MeshEvent, json_output: bool) -> String {
    let instance = event.instance();
    let (detail, reason) = match event {
        MeshEvent::StatusChanged {
            previous,
            current,
            reason,
            ..
        } => (format!("{previous} -> {current}"), reason.clone()),
        MeshEvent::Updated {
            previous,
            instance,
            reason,
        } => (what_changed(previous, instance), reason.clone()),
        MeshEvent::Deregistered { reason, .. } => (String::new(), reason.clone()),
        MeshEvent::Expired { .. } => ("TTL ran out: owner stopped heartbeating".to_string(), None),
        MeshEvent::Registered { .. } => (instance.base_url(), None),
    };
    if json_output {
        return json!({
            "event": event.kind().as_str(),
            "service": instance.service,
            "id": instance.id.to_string(),
            "status": instance.status.as_str(),
            "url": instance.base_url(),
            "detail": detail,
            "reason": reason,
            "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        })
        .to_string();
    }
    let kind = event.kind().as_str();
    let reason = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    format!(
        "{} {} {}/{} [{}] {detail}{reason}",
        humantime::format_rfc3339_millis(SystemTime::now()),
        paint(kind),
        instance.service,
        short(&instance.id.to_string()),
        instance.status
    )
}

/// What an update changed, the address first: a changed address is what a hijacked key
/// shows, and what a reader must not miss.
pub fn what_changed(previous: &ServiceInstance, current: &ServiceInstance) -> String {
    let mut changes = Vec::new();
    if previous.base_url() != current.base_url() {
        changes.push(format!(
            "address changed: {} -> {}",
            previous.base_url(),
            current.base_url()
        ));
    }
    for (field, changed) in [
        ("weight", previous.weight != current.weight),
        ("zone", previous.zone != current.zone),
        ("tags", previous.tags != current.tags),
        ("metadata", previous.metadata != current.metadata),
    ] {
        if changed {
            changes.push(format!("{field} changed"));
        }
    }
    if changes.is_empty() {
        "rewritten unchanged".to_string()
    } else {
        changes.join(", ")
    }
}

/// One line for a recorded event (audit trail).
pub fn record_line(record: &EventRecord, json_output: bool) -> String {
    let instance = &record.instance;
    if json_output {
        return record_json(record).to_string();
    }
    let change = match record.previous_status {
        Some(previous) => format!("{previous} -> {}", instance.status),
        None => instance.status.to_string(),
    };
    let reason = record
        .reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!(
        "{} {:<12} {}/{} [{change}]{reason}",
        humantime::format_rfc3339_millis(record.at),
        paint(record.event.as_str()),
        instance.service,
        short(&instance.id.to_string()),
    )
}

/// An event of the trail as JSON: the record's fields, times in RFC 3339.
fn record_json(record: &EventRecord) -> serde_json::Value {
    let instance = &record.instance;
    json!({
        "at": humantime::format_rfc3339_millis(record.at).to_string(),
        "event": record.event.as_str(),
        "service": instance.service,
        "id": instance.id.to_string(),
        "status": instance.status.as_str(),
        "url": instance.base_url(),
        "previous_status": record.previous_status.map(|s| s.as_str()),
        "reason": record.reason,
        "origin": record.origin,
    })
}

/// One line for an event read from the trail; in JSON with its stream sequence and the
/// time the stream stored it.
pub fn stored_event_line(event: &StoredEvent, json_output: bool) -> String {
    if json_output {
        let mut value = record_json(&event.record);
        value["sequence"] = event.sequence.into();
        value["stored_at"] = humantime::format_rfc3339_millis(event.stored_at)
            .to_string()
            .into();
        return value.to_string();
    }
    record_line(&event.record, false)
}

/// A table of instances, columns as wide as their widest cell (no borders, like
/// `kubectl get`). Each row: the service when the table shows several, the instance, and
/// when this peer last saw its key written (none for rebuilt, historical views).
pub fn instance_table<'a>(
    with_service: bool,
    rows: impl IntoIterator<Item = (&'a ServiceInstance, Option<SystemTime>)>,
) -> String {
    instance_table_with(with_service, false, rows)
}

/// [`instance_table`], with a METADATA column when `wide`.
pub fn instance_table_with<'a>(
    with_service: bool,
    wide: bool,
    rows: impl IntoIterator<Item = (&'a ServiceInstance, Option<SystemTime>)>,
) -> String {
    let ago = |time: SystemTime| {
        SystemTime::now()
            .duration_since(time)
            .map(|d| {
                humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
            })
            .unwrap_or_else(|_| "0s".to_string())
    };
    let mut header = vec![
        "ID",
        "URL",
        "STATUS",
        "WEIGHT",
        "ZONE",
        "TAGS",
        "AGE",
        "LAST HEARTBEAT",
    ];
    if with_service {
        header.insert(0, "SERVICE");
    }
    if wide {
        header.push("METADATA");
    }
    let mut table = plain_table(header);
    for (instance, last_heartbeat) in rows {
        let mut row = vec![
            instance.id.to_string(),
            instance.base_url(),
            instance.status.as_str().to_string(),
            instance.weight.to_string(),
            instance.zone.as_deref().unwrap_or("-").to_string(),
            if instance.tags.is_empty() {
                "-".to_string()
            } else {
                instance.tags.join(",")
            },
            ago(instance.registered_at.to_system_time()),
            last_heartbeat
                .map(|t| format!("{} ago", ago(t)))
                .unwrap_or_else(|| "-".to_string()),
        ];
        if with_service {
            row.insert(0, instance.service.to_string());
        }
        if wide {
            row.push(if instance.metadata.is_empty() {
                "-".to_string()
            } else {
                serde_json::to_string(&instance.metadata).unwrap_or_default()
            });
        }
        table.add_row(row);
    }
    table.to_string()
}

/// A table without borders whose columns fit their cells, never wrapped to a terminal.
pub fn plain_table(header: Vec<&str>) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header);
    table
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// An event name in its colour, padded; `anstream` drops the colour when the output is
/// not a terminal or `NO_COLOR` is set.
fn paint(kind: &str) -> String {
    use anstyle::{AnsiColor, Style};
    let style = match kind {
        "registered" => Style::new().fg_color(Some(AnsiColor::Green.into())),
        "expired" => Style::new().fg_color(Some(AnsiColor::Red.into())).bold(),
        "deregistered" => Style::new().fg_color(Some(AnsiColor::Yellow.into())),
        "status" => Style::new().fg_color(Some(AnsiColor::Cyan.into())),
        _ => Style::new().fg_color(Some(AnsiColor::Magenta.into())),
    };
    format!("{style}{kind:<12}{style:#}")
}

#[cfg(test)]
mod what_changed_tests {
    use super::*;

    #[test]
    fn an_address_change_is_named_first_with_both_addresses() {
        let before = ServiceInstance::builder("billing", "10.0.0.2", 8080)
            .build()
            .unwrap();
        let mut after = before.clone();
        after.host = "6.6.6.6".into();
        after.weight = 7;
        assert_eq!(
            what_changed(&before, &after),
            "address changed: http://10.0.0.2:8080 -> http://6.6.6.6:8080, weight changed"
        );
        assert_eq!(what_changed(&before, &before), "rewritten unchanged");
    }
}
