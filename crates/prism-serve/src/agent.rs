//! Registrations made through the Consul agent API, and their TTL checks.
//!
//! A registration is an ordinary mesh instance this gateway owns: it heartbeats it while
//! the client passes its TTL checks in time. When a check's TTL passes without a word
//! from the client (`pass`, `warn` or `fail` each count), the gateway abandons the
//! instance: its key expires on the server and every peer sees it expire, as if the client
//! had been a mesh process that died. Only TTL checks exist here: the gateway runs no
//! probes on a client's behalf.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prism_mesh::{InstanceStatus, Mesh, Registration, ServiceInstance};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};
use uuid::Uuid;

use crate::consul::CONSUL_ID_KEY;

/// Why an agent call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    /// The request is malformed or asks for something unsupported.
    #[error("{0}")]
    Invalid(String),
    /// No such service or check here.
    #[error("{0}")]
    NotFound(String),
    /// The mesh refused or failed the write.
    #[error(transparent)]
    Mesh(#[from] prism_mesh::Error),
}

/// A TTL check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Passing,
    Warning,
    Critical,
}

impl Verdict {
    /// `pass`, `warn` or `fail` (the agent API's path), or `passing`, `warning`,
    /// `critical` (a check's `Status`).
    pub(crate) fn parse(word: &str) -> Option<Verdict> {
        match word.to_ascii_lowercase().as_str() {
            "pass" | "passing" => Some(Verdict::Passing),
            "warn" | "warning" => Some(Verdict::Warning),
            "fail" | "critical" => Some(Verdict::Critical),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Passing => "passing",
            Verdict::Warning => "warning",
            Verdict::Critical => "critical",
        }
    }
}

#[derive(Debug)]
struct TtlCheck {
    id: String,
    name: String,
    ttl: Duration,
    deadline: Instant,
    verdict: Verdict,
    output: String,
}

struct Held {
    registration: Registration,
    checks: Vec<TtlCheck>,
    maintenance: bool,
}

impl Held {
    fn status(&self) -> InstanceStatus {
        status_of(&self.checks, self.maintenance)
    }
}

/// The status checks and maintenance give: maintenance first, then the worst check (no
/// check: healthy, as in Consul).
fn status_of(checks: &[TtlCheck], maintenance: bool) -> InstanceStatus {
    if maintenance {
        return InstanceStatus::Maintenance;
    }
    let verdicts = || checks.iter().map(|c| c.verdict);
    if verdicts().any(|v| v == Verdict::Critical) {
        InstanceStatus::Unhealthy
    } else if verdicts().any(|v| v == Verdict::Warning) {
        InstanceStatus::Unknown
    } else {
        InstanceStatus::Healthy
    }
}

#[derive(Default)]
struct Holdings {
    /// By the service ID the client gave.
    services: HashMap<String, Held>,
    /// Check ID -> service ID.
    checks: HashMap<String, String>,
}

/// The registrations clients made through this gateway.
pub(crate) struct Agent {
    mesh: Mesh,
    held: Mutex<Holdings>,
}

/// A value of `object` under `key`, whatever the key's case (Consul's decoder ignores it,
/// and clients send `Name`, `name` or `NAME`).
fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn string_field(object: &Map<String, Value>, key: &str) -> Result<Option<String>, AgentError> {
    match field(object, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(AgentError::Invalid(format!(
            "{key} must be a string, got {other}"
        ))),
    }
}

/// A Go-style duration (`10s`, `1m30s`, `500ms`) as Consul takes it.
fn duration(text: &str, what: &str) -> Result<Duration, AgentError> {
    humantime::parse_duration(text.trim())
        .map_err(|e| AgentError::Invalid(format!("{what} {text:?} is not a duration ({e})")))
}

/// What a registration asks for, parsed and checked before any write.
struct Request {
    id: String,
    instance: ServiceInstance,
    checks: Vec<TtlCheck>,
}

fn parse_checks(body: &Map<String, Value>, service_id: &str) -> Result<Vec<TtlCheck>, AgentError> {
    let mut specs: Vec<&Map<String, Value>> = Vec::new();
    if let Some(check) = field(body, "Check") {
        specs.push(
            check
                .as_object()
                .ok_or_else(|| AgentError::Invalid("Check must be an object".into()))?,
        );
    }
    if let Some(checks) = field(body, "Checks") {
        let list = checks
            .as_array()
            .ok_or_else(|| AgentError::Invalid("Checks must be a list".into()))?;
        for check in list {
            specs.push(
                check.as_object().ok_or_else(|| {
                    AgentError::Invalid("each of Checks must be an object".into())
                })?,
            );
        }
    }
    let count = specs.len();
    let now = Instant::now();
    specs
        .into_iter()
        .enumerate()
        .map(|(n, spec)| {
            let Some(ttl) = string_field(spec, "TTL")? else {
                let kind = ["HTTP", "TCP", "Args", "Script", "GRPC", "H2PING", "UDP", "OSService"]
                    .into_iter()
                    .find(|kind| field(spec, kind).is_some())
                    .unwrap_or("without a TTL");
                return Err(AgentError::Invalid(format!(
                    "check {} is a {kind} check: only TTL checks are supported through prism serve (the mesh's own owners run probes)",
                    n + 1
                )));
            };
            let ttl = duration(&ttl, "TTL")?;
            if ttl < Duration::from_secs(1) {
                return Err(AgentError::Invalid(format!(
                    "TTL {ttl:?} is below 1s: a client could not keep up"
                )));
            }
            let id = match string_field(spec, "CheckID")?.or(string_field(spec, "ID")?) {
                Some(id) => id,
                None if count == 1 => format!("service:{service_id}"),
                None => format!("service:{service_id}:{}", n + 1),
            };
            let verdict = match string_field(spec, "Status")? {
                Some(status) => Verdict::parse(&status).ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "check status {status:?} is not passing, warning or critical"
                    ))
                })?,
                // Consul starts a TTL check critical: nothing vouched for it yet.
                None => Verdict::Critical,
            };
            Ok(TtlCheck {
                name: string_field(spec, "Name")?
                    .unwrap_or_else(|| format!("Service '{service_id}' check")),
                id,
                ttl,
                deadline: now + ttl,
                verdict,
                output: String::new(),
            })
        })
        .collect()
}

fn parse_registration(body: &Value, client: IpAddr) -> Result<Request, AgentError> {
    let body = body
        .as_object()
        .ok_or_else(|| AgentError::Invalid("the body must be a JSON object".into()))?;
    let name = string_field(body, "Name")?
        .ok_or_else(|| AgentError::Invalid("Name is required".into()))?;
    let id = string_field(body, "ID")?.unwrap_or_else(|| name.clone());
    // Like a local Consul agent, a service without an address is at its client's.
    let address = string_field(body, "Address")?
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| client.to_string());
    let port = match field(body, "Port") {
        None => 0,
        Some(port) => port
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| AgentError::Invalid(format!("Port must be 0 to 65535, got {port}")))?,
    };
    let mut builder = ServiceInstance::builder(name, address, port)
        .id(Uuid::try_parse(&id).unwrap_or_else(|_| Uuid::new_v4()))
        .metadata(CONSUL_ID_KEY, id.as_str());
    if let Some(tags) = field(body, "Tags") {
        let tags = tags
            .as_array()
            .ok_or_else(|| AgentError::Invalid("Tags must be a list of strings".into()))?;
        for tag in tags {
            let tag = tag
                .as_str()
                .ok_or_else(|| AgentError::Invalid(format!("tag {tag} is not a string")))?;
            builder = builder.tag(tag);
        }
    }
    if let Some(meta) = field(body, "Meta") {
        let meta = meta
            .as_object()
            .ok_or_else(|| AgentError::Invalid("Meta must be an object of strings".into()))?;
        for (key, value) in meta {
            if key == CONSUL_ID_KEY {
                return Err(AgentError::Invalid(format!(
                    "Meta key {CONSUL_ID_KEY:?} is reserved: it holds the service ID"
                )));
            }
            let value = value.as_str().ok_or_else(|| {
                AgentError::Invalid(format!("Meta value of {key:?} must be a string"))
            })?;
            builder = builder.metadata(key.as_str(), value);
        }
    }
    if let Some(weights) = field(body, "Weights") {
        let passing = weights
            .as_object()
            .and_then(|w| field(w, "Passing"))
            .and_then(Value::as_u64)
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| {
                AgentError::Invalid("Weights must be an object with a numeric Passing".into())
            })?;
        builder = builder.weight(passing);
    }
    let checks = parse_checks(body, &id)?;
    let instance = builder
        .build()
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    Ok(Request {
        id,
        instance,
        checks,
    })
}

impl Agent {
    /// An agent registering into `mesh`, whose sweeper ends with the mesh.
    pub(crate) fn start(mesh: Mesh) -> Arc<Agent> {
        let agent = Arc::new(Agent {
            mesh,
            held: Mutex::new(Holdings::default()),
        });
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(agent) = weak.upgrade() else { return };
                agent.sweep().await;
            }
        });
        agent
    }

    /// Abandons every registration with a check past its TTL.
    async fn sweep(&self) {
        let now = Instant::now();
        let mut held = self.held.lock().await;
        let lapsed: Vec<String> = held
            .services
            .iter()
            .filter(|(_, h)| h.checks.iter().any(|c| c.deadline <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            if let Some(gone) = held.services.remove(&id) {
                held.checks.retain(|_, service| *service != id);
                info!(service_id = %id, "a TTL check lapsed: the instance is left to expire");
                // Critical at once, as in Consul; gone from every view when its key
                // expires, one instance TTL later.
                if let Err(e) = gone
                    .registration
                    .set_status(InstanceStatus::Unhealthy, Some("TTL check lapsed"))
                    .await
                {
                    warn!(service_id = %id, error = %e, "could not mark a lapsed instance unhealthy");
                }
                gone.registration.abandon().await;
            }
        }
    }

    /// `PUT /v1/agent/service/register`: registers, or replaces a registration of the same
    /// service ID.
    pub(crate) async fn register(&self, body: &Value, client: IpAddr) -> Result<(), AgentError> {
        let request = parse_registration(body, client)?;
        let mut held = self.held.lock().await;
        for check in &request.checks {
            if let Some(owner) = held.checks.get(&check.id) {
                if *owner != request.id {
                    return Err(AgentError::Invalid(format!(
                        "check ID {:?} belongs to service {owner:?}",
                        check.id
                    )));
                }
            }
        }
        let Request {
            id,
            mut instance,
            checks,
        } = request;
        instance.status = status_of(&checks, false);
        let registration = match held.services.remove(&id) {
            Some(previous) if previous.registration.service() == instance.service => {
                // Registering an ID again replaces its definition; the mesh instance (and
                // its id) stays, and peers see one update.
                let next = instance;
                let result = previous
                    .registration
                    .update_with_reason(
                        move |i| {
                            i.host = next.host;
                            i.port = next.port;
                            i.tags = next.tags;
                            i.metadata = next.metadata;
                            i.weight = next.weight;
                            i.status = next.status;
                        },
                        Some("registered again through the Consul agent API"),
                    )
                    .await;
                if let Err(e) = result {
                    held.services.insert(id, previous);
                    return Err(e.into());
                }
                previous.registration
            }
            Some(previous) => {
                if let Err(e) = previous
                    .registration
                    .deregister(Some("registered again under another service name"))
                    .await
                {
                    held.services.insert(id, previous);
                    return Err(e.into());
                }
                held.checks.retain(|_, service| *service != id);
                self.mesh.register(instance).await?
            }
            None => self.mesh.register(instance).await?,
        };
        let entry = Held {
            registration,
            checks,
            maintenance: false,
        };
        held.checks.retain(|_, service| *service != id);
        for check in &entry.checks {
            held.checks.insert(check.id.clone(), id.clone());
        }
        held.services.insert(id, entry);
        Ok(())
    }

    /// `PUT /v1/agent/service/deregister/{id}`.
    pub(crate) async fn deregister(&self, id: &str) -> Result<(), AgentError> {
        let mut held = self.held.lock().await;
        let gone = held
            .services
            .remove(id)
            .ok_or_else(|| AgentError::NotFound(format!("Unknown service ID {id:?}")))?;
        held.checks.retain(|_, service| service != id);
        gone.registration
            .deregister(Some("deregistered through the Consul agent API"))
            .await?;
        Ok(())
    }

    /// `PUT /v1/agent/check/{pass|warn|fail}/{check}`: the TTL starts again.
    pub(crate) async fn update_check(
        &self,
        check_id: &str,
        verdict: Verdict,
        note: Option<String>,
    ) -> Result<(), AgentError> {
        let mut held = self.held.lock().await;
        let service = held.checks.get(check_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!(
                "Unknown check ID {check_id:?}: no TTL check here has it"
            ))
        })?;
        let entry = held
            .services
            .get_mut(&service)
            .ok_or_else(|| AgentError::NotFound(format!("Unknown service ID {service:?}")))?;
        let before = entry.status();
        if let Some(check) = entry.checks.iter_mut().find(|c| c.id == check_id) {
            check.verdict = verdict;
            check.deadline = Instant::now() + check.ttl;
            check.output = note.clone().unwrap_or_default();
        }
        let after = entry.status();
        if after != before {
            let reason =
                note.unwrap_or_else(|| format!("TTL check {check_id} {}", verdict.as_str()));
            entry.registration.set_status(after, Some(&reason)).await?;
        }
        Ok(())
    }

    /// `PUT /v1/agent/service/maintenance/{id}?enable=...`.
    pub(crate) async fn maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: Option<String>,
    ) -> Result<(), AgentError> {
        let mut held = self.held.lock().await;
        let entry = held
            .services
            .get_mut(id)
            .ok_or_else(|| AgentError::NotFound(format!("Unknown service ID {id:?}")))?;
        if entry.maintenance == enable {
            return Ok(());
        }
        entry.maintenance = enable;
        let status = entry.status();
        let reason = reason.unwrap_or_else(|| {
            if enable {
                "maintenance on"
            } else {
                "maintenance off"
            }
            .to_string()
        });
        entry.registration.set_status(status, Some(&reason)).await?;
        Ok(())
    }

    /// `GET /v1/agent/services`: what this gateway holds, by service ID.
    pub(crate) async fn services(&self, datacenter: &str) -> Value {
        let held = self.held.lock().await;
        let mut services = Map::new();
        for (id, entry) in &held.services {
            let instance = entry.registration.instance();
            let entry = crate::consul::health_entry(&instance, datacenter, 1);
            let mut service = entry["Service"].clone();
            service["Datacenter"] = json!(datacenter);
            services.insert(id.clone(), service);
        }
        Value::Object(services)
    }

    /// `GET /v1/agent/checks`: the TTL checks this gateway holds, by check ID.
    pub(crate) async fn checks(&self) -> Value {
        let held = self.held.lock().await;
        let mut checks = Map::new();
        for (service_id, entry) in &held.services {
            let instance = entry.registration.instance();
            for check in &entry.checks {
                checks.insert(
                    check.id.clone(),
                    json!({
                        "Node": instance.host.as_str(),
                        "CheckID": check.id,
                        "Name": check.name,
                        "Status": check.verdict.as_str(),
                        "Output": check.output,
                        "ServiceID": service_id,
                        "ServiceName": instance.service.as_str(),
                        "Type": "ttl",
                        "Definition": { "TTL": humantime::format_duration(check.ttl).to_string() },
                    }),
                );
            }
        }
        Value::Object(checks)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(held) = self.held.try_lock() {
            if !held.services.is_empty() {
                warn!(
                    count = held.services.len(),
                    "gateway stopped with registrations made through it; they end with its mesh"
                );
            }
        }
    }
}
