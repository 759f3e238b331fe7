//! Control requests: an operator asks an instance's owner to deregister it or to put it in
//! (or take it out of) maintenance. The owner applies its own change, so the key is never
//! written by two clients, and its event says who asked and why.
//!
//! A request is a NATS request (JSON, so `nats req` can send one) to
//! `<prefix>-control.<service>.<instance id>`: outside the event stream's `<prefix>.>`, so
//! requests are not stored.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The subject an instance's owner answers control requests on.
pub fn control_subject(prefix: &str, service: &str, id: &Uuid) -> String {
    format!("{prefix}-control.{service}.{}", id.hyphenated())
}

/// The subjects an owner of `service`'s instances listens on.
pub fn control_filter(prefix: &str, service: &str) -> String {
    format!("{prefix}-control.{service}.*")
}

/// What an operator asks of an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Deregister the instance.
    Deregister,
    /// Set its status to maintenance (checks stop changing it).
    MaintenanceOn,
    /// Restore the status it had before maintenance (healthy if none is known).
    MaintenanceOff,
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// What to do.
    pub action: ControlAction,
    /// Why, for the event.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who asks (as the requester names itself; the server's permissions decide who may).
    #[serde(default)]
    pub by: Option<String>,
}

impl ControlRequest {
    /// The reason the owner's event carries: who asked, and why.
    pub fn event_reason(&self) -> String {
        let what = match self.action {
            ControlAction::Deregister => "deregistered",
            ControlAction::MaintenanceOn => "maintenance on",
            ControlAction::MaintenanceOff => "maintenance off",
        };
        let by = self.by.as_deref().unwrap_or("an operator");
        match self.reason.as_deref() {
            Some(reason) => format!("{what} by {by}: {reason}"),
            None => format!("{what} by {by}"),
        }
    }
}

/// An owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the change was made.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_as_json_and_its_event_names_who_and_why() {
        let request: ControlRequest = serde_json::from_str(
            r#"{"action":"maintenance_on","reason":"disk swap","by":"ops@host"}"#,
        )
        .unwrap();
        assert_eq!(request.action, ControlAction::MaintenanceOn);
        assert_eq!(
            request.event_reason(),
            "maintenance on by ops@host: disk swap"
        );
        let bare: ControlRequest = serde_json::from_str(r#"{"action":"deregister"}"#).unwrap();
        assert_eq!(bare.event_reason(), "deregistered by an operator");
        assert!(serde_json::from_str::<ControlRequest>(r#"{"action":"reboot"}"#).is_err());
        let id = Uuid::nil();
        assert_eq!(
            control_subject("discovery", "orders", &id),
            format!("discovery-control.orders.{id}")
        );
    }
}
