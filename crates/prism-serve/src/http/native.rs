//! The mesh's own API: services, instances, picks, time travel, metrics, liveness.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use prism_mesh::{
    count_by_status, validate_service_name, InstanceStatus, ServiceInstance, Strategy,
};
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// Query parameters, repeats kept (`?tag=a&tag=b`).
pub(crate) type Params = Query<Vec<(String, String)>>;

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn params<'a>(params: &'a [(String, String)], name: &'a str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An instance as the native API shows it: its fields, its URL, and when its key was last
/// written (milliseconds since the epoch, like its other times).
pub(crate) fn instance_json(
    instance: &ServiceInstance,
    last_heartbeat: Option<SystemTime>,
) -> Value {
    let mut value = serde_json::to_value(instance).unwrap_or(Value::Null);
    value["url"] = json!(instance.base_url());
    value["last_heartbeat"] = json!(last_heartbeat.map(millis));
    value
}

fn checked_service(service: &str) -> Result<(), ApiError> {
    validate_service_name(service).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /v1/services`: every service with instance counts by status.
pub(crate) async fn services(State(state): State<AppState>) -> Json<Value> {
    let services: Vec<Value> = state
        .mesh
        .services()
        .into_iter()
        .map(|name| {
            let instances = state.mesh.discover(&name);
            let by_status: serde_json::Map<String, Value> = count_by_status(&instances)
                .into_iter()
                .map(|(status, n)| (status.as_str().to_string(), json!(n)))
                .collect();
            json!({ "name": name, "instances": instances.len(), "by_status": by_status })
        })
        .collect();
    Json(json!({ "services": services }))
}

/// `GET /v1/services/{service}?status=&tag=&zone=`: its instances, filtered.
pub(crate) async fn service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    checked_service(&service)?;
    let status = match param(&query, "status") {
        None => None,
        Some(s) => Some(
            s.parse::<InstanceStatus>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
    };
    let tags = params(&query, "tag");
    let zone = param(&query, "zone");
    let instances: Vec<Value> = state
        .mesh
        .discover(&service)
        .iter()
        .filter(|i| status.is_none_or(|s| i.status == s))
        .filter(|i| crate::consul::has_tags(i, &tags))
        .filter(|i| zone.is_none_or(|z| i.zone.as_deref() == Some(z)))
        .map(|i| instance_json(i, state.mesh.last_heartbeat(i.id)))
        .collect();
    Ok(Json(json!({ "service": service, "instances": instances })))
}

/// `GET /v1/services/{service}/pick?strategy=&key=`: the balancer's choice.
pub(crate) async fn pick(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    checked_service(&service)?;
    let balancer = state.mesh.balanced(&service)?;
    let picked = match (param(&query, "strategy"), param(&query, "key")) {
        (_, Some(key)) => balancer.pick_by_key(key)?,
        (Some(strategy), None) => {
            let strategy: Strategy = strategy.parse()?;
            if strategy == Strategy::ConsistentHash {
                return Err(ApiError::bad_request(
                    "consistent_hash picks by a key: add ?key=<routing key>",
                ));
            }
            balancer.pick_with(strategy)?
        }
        (None, None) => balancer.pick()?,
    };
    Ok(Json(instance_json(
        &picked,
        state.mesh.last_heartbeat(picked.id),
    )))
}

/// A moment: RFC 3339 (`2026-01-02T03:04:05Z`), or milliseconds since the epoch.
fn moment(text: &str, name: &str) -> Result<SystemTime, ApiError> {
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(millis));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        ApiError::bad_request(format!(
            "{name}={text:?} is not a moment: give RFC 3339 (2026-01-02T03:04:05Z) or milliseconds since the epoch"
        ))
    })
}

fn required<'a>(query: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    param(query, name).ok_or_else(|| ApiError::bad_request(format!("{name} is required")))
}

fn by_service<'a>(instances: impl Iterator<Item = &'a ServiceInstance>) -> Value {
    let mut services: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for instance in instances {
        services
            .entry(instance.service.as_str())
            .or_default()
            .push(instance_json(instance, None));
    }
    json!(services)
}

/// `GET /v1/at?t=`: the registry at a past moment, from the audit trail.
pub(crate) async fn at(
    State(state): State<AppState>,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    let t = moment(required(&query, "t")?, "t")?;
    let registry = state.mesh.registry_at(t).await?;
    Ok(Json(json!({
        "at": millis(t),
        "instances": registry.len(),
        "services": by_service(registry.values()),
    })))
}

/// `GET /v1/diff?from=&to=`: what changed between two moments.
pub(crate) async fn diff(
    State(state): State<AppState>,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    let from = moment(required(&query, "from")?, "from")?;
    let to = match param(&query, "to") {
        Some(to) => moment(to, "to")?,
        None => SystemTime::now(),
    };
    if to < from {
        return Err(ApiError::bad_request("to is before from"));
    }
    let (diff, _, _) = state.mesh.registry_diff(from, to).await?;
    let list = |instances: &[ServiceInstance]| -> Vec<Value> {
        instances.iter().map(|i| instance_json(i, None)).collect()
    };
    let changed: Vec<Value> = diff
        .changed
        .iter()
        .map(|(before, after)| json!({ "before": instance_json(before, None), "after": instance_json(after, None) }))
        .collect();
    Ok(Json(json!({
        "from": millis(from),
        "to": millis(to),
        "added": list(&diff.added),
        "removed": list(&diff.removed),
        "changed": changed,
    })))
}

/// `GET /metrics`: the mesh's counters in Prometheus' text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.mesh.render_metrics(),
    )
}

/// `GET /healthz`: 200 while the gateway's mesh is open.
pub(crate) async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.mesh.stats();
    let body = json!({
        "status": "ok",
        "peer": state.mesh.peer_id(),
        "instances": state.mesh.instance_count(),
        "resyncs": stats.resyncs,
    });
    (StatusCode::OK, Json(body))
}

/// A Prometheus label name from a metadata key: letters, digits and `_` only.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `GET /v1/prometheus/targets?service=&passing`: every instance as a target group of
/// Prometheus' HTTP service discovery (`http_sd_configs`), labelled `__meta_prism_*`.
pub(crate) async fn prometheus_targets(
    State(state): State<AppState>,
    Query(query): Params,
) -> Result<Json<Value>, ApiError> {
    let only = param(&query, "service");
    if let Some(service) = only {
        checked_service(service)?;
    }
    let passing = param(&query, "passing").is_some();
    let services = match only {
        Some(service) => vec![service.to_string()],
        None => state.mesh.services(),
    };
    let mut groups = Vec::new();
    for service in services {
        for instance in state.mesh.discover(&service) {
            if passing && instance.status != InstanceStatus::Healthy {
                continue;
            }
            let host = if instance.host.contains(':') {
                format!("[{}]", instance.host)
            } else {
                instance.host.to_string()
            };
            let mut labels = serde_json::Map::new();
            labels.insert(
                "__meta_prism_service".into(),
                json!(instance.service.as_str()),
            );
            labels.insert(
                "__meta_prism_instance_id".into(),
                json!(instance.id.to_string()),
            );
            labels.insert(
                "__meta_prism_status".into(),
                json!(instance.status.as_str()),
            );
            labels.insert(
                "__meta_prism_scheme".into(),
                json!(instance.scheme.as_str()),
            );
            labels.insert(
                "__meta_prism_zone".into(),
                json!(instance.zone.as_deref().unwrap_or("")),
            );
            let tags: Vec<&str> = instance.tags.iter().map(|t| t.as_str()).collect();
            // Like Consul SD's: separators around, so `,tag,` matches in relabelling.
            labels.insert(
                "__meta_prism_tags".into(),
                json!(format!(",{},", tags.join(","))),
            );
            for (key, value) in instance.metadata.iter() {
                let text = value
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string());
                labels.insert(
                    format!("__meta_prism_metadata_{}", label_name(key)),
                    json!(text),
                );
            }
            groups.push(json!({
                "targets": [format!("{host}:{}", instance.port)],
                "labels": labels,
            }));
        }
    }
    Ok(Json(Value::Array(groups)))
}
