//! The Consul-compatible subset: catalog and health reads (with blocking queries) and the
//! agent's registration calls. `docs/serve.md` lists what is supported and how mesh
//! instances map onto Consul's shapes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Bytes;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_mesh::{InstanceStatus, ServiceInstance};
use serde_json::{json, Map, Value};

use super::native::{param, params, Params};
use super::{blocking_wait, ApiError, AppState};
use crate::agent::Verdict;
use crate::consul::{catalog_entry, has_tags, health_entry};

/// Waits as a blocking query asks (`?index=N&wait=D`), for `service` or for anything,
/// and returns the index to report.
async fn block(
    state: &AppState,
    service: Option<&str>,
    query: &[(String, String)],
) -> Result<u64, ApiError> {
    let current = match service {
        Some(service) => state.changes.service_index(service),
        None => state.changes.index(),
    };
    let Some(index) = param(query, "index") else {
        return Ok(current);
    };
    let after: u64 = index
        .parse()
        .map_err(|_| ApiError::bad_request(format!("index {index:?} is not a number")))?;
    let wait = blocking_wait(param(query, "wait"))?;
    Ok(state.changes.wait(service, after, wait).await)
}

/// A JSON answer with Consul's index headers.
fn indexed(body: Value, index: u64) -> Response {
    indexed_bytes(Bytes::from(body.to_string()), index)
}

fn indexed_bytes(body: Bytes, index: u64) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-consul-index", HeaderValue::from(index));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    (headers, body).into_response()
}

/// Rendered answers of the per-service reads, by request, with the service's index when
/// they were rendered: until the service changes, the same question gets the same bytes
/// (heartbeats change nothing here). Cleared when it grows past a bound.
#[derive(Default)]
pub(crate) struct Rendered {
    answers: Mutex<HashMap<String, (u64, Bytes)>>,
}

const RENDERED_MOST: usize = 4096;

impl Rendered {
    /// The answer to `key` at `index`, rendered now unless it was at that index. The
    /// index must be read before the view, so an answer is never older than its index.
    fn get_or_render(&self, key: String, index: u64, render: impl FnOnce() -> Value) -> Bytes {
        let lock = || self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, body)) = lock().get(&key) {
            if *at == index {
                return body.clone();
            }
        }
        let body = Bytes::from(render().to_string());
        let mut answers = lock();
        if answers.len() >= RENDERED_MOST {
            answers.clear();
        }
        answers.insert(key, (index, body.clone()));
        body
    }
}

fn checked(service: &str) -> Result<(), ApiError> {
    prism_mesh::validate_service_name(service).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /v1/catalog/services`: every service name with the union of its tags.
pub(crate) async fn catalog_services(
    State(state): State<AppState>,
    Query(query): Params,
) -> Result<Response, ApiError> {
    let index = block(&state, None, &query).await?;
    let mut services = Map::new();
    for name in state.mesh.services() {
        let mut tags: Vec<String> = state
            .mesh
            .discover(&name)
            .iter()
            .flat_map(|i| i.tags.iter().map(|t| t.to_string()))
            .collect();
        tags.sort();
        tags.dedup();
        services.insert(name, json!(tags));
    }
    Ok(indexed(Value::Object(services), index))
}

/// What the two per-service reads share: the name checked, the blocking query waited
/// out, and the `tag` filters in a stable order (they are part of the cache key).
async fn service_read(
    state: &AppState,
    service: &str,
    query: &[(String, String)],
) -> Result<(u64, Vec<String>), ApiError> {
    checked(service)?;
    let index = block(state, Some(service), query).await?;
    let mut tags = params(query, "tag");
    tags.sort();
    Ok((index, tags))
}

/// The answer `key` for `service` at `index`: its instances that `keep` takes, each in
/// the shape `entry` gives, rendered once per change of the service.
fn service_answer(
    state: &AppState,
    service: &str,
    index: u64,
    key: String,
    keep: impl Fn(&ServiceInstance) -> bool,
    entry: fn(&ServiceInstance, &str, u64) -> Value,
) -> Response {
    let body = state.rendered.get_or_render(key, index, || {
        let dc = &state.options.datacenter;
        let entries: Vec<Value> = state
            .mesh
            .discover(service)
            .iter()
            .filter(|i| keep(i))
            .map(|i| entry(i, dc, index))
            .collect();
        Value::Array(entries)
    });
    indexed_bytes(body, index)
}

/// `GET /v1/catalog/service/{service}?tag=`: every instance, whatever its status.
pub(crate) async fn catalog_service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Params,
) -> Result<Response, ApiError> {
    let (index, tags) = service_read(&state, &service, &query).await?;
    let key = format!("catalog {service} {tags:?}");
    let keep = |i: &ServiceInstance| has_tags(i, &tags);
    Ok(service_answer(
        &state,
        &service,
        index,
        key,
        keep,
        catalog_entry,
    ))
}

/// `GET /v1/health/service/{service}?passing&tag=`: instances with their checks;
/// `passing` keeps the healthy ones.
pub(crate) async fn health_service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Params,
) -> Result<Response, ApiError> {
    let (index, tags) = service_read(&state, &service, &query).await?;
    let passing = match param(&query, "passing") {
        None | Some("false") | Some("0") => false,
        Some("" | "true" | "1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "passing={other:?}: give passing, passing=true or passing=false"
            )))
        }
    };
    let key = format!("health {service} {passing} {tags:?}");
    let keep = |i: &ServiceInstance| {
        (!passing || i.status == InstanceStatus::Healthy) && has_tags(i, &tags)
    };
    Ok(service_answer(
        &state,
        &service,
        index,
        key,
        keep,
        health_entry,
    ))
}

/// `GET /v1/agent/self`: what clients read to learn the datacenter.
pub(crate) async fn agent_self(State(state): State<AppState>) -> Json<Value> {
    let options = &state.options;
    Json(json!({
        "Config": {
            "Datacenter": options.datacenter,
            "NodeName": options.node_name,
            "Server": false,
            "Version": concat!("prism-serve ", env!("CARGO_PKG_VERSION")),
        },
        "Member": { "Name": options.node_name, "Addr": "127.0.0.1", "Status": 1 },
        "Meta": { "prism_peer": state.mesh.peer_id() },
    }))
}

/// `GET /v1/status/leader`: a mesh has no leader of its own; any gateway answers.
pub(crate) async fn status_leader(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state
        .options
        .http
        .map(|a| a.to_string())
        .unwrap_or_default()))
}

/// `GET /v1/agent/services`: the registrations made through this gateway.
pub(crate) async fn agent_services(State(state): State<AppState>) -> Json<Value> {
    Json(state.agent.services(&state.options.datacenter).await)
}

/// `GET /v1/agent/checks`: the TTL checks of those registrations.
pub(crate) async fn agent_checks(State(state): State<AppState>) -> Json<Value> {
    Json(state.agent.checks().await)
}

fn writes_allowed(state: &AppState) -> Result<(), ApiError> {
    if state.options.allow_register {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration through this gateway is off (start it with --allow-register)",
        ))
    }
}

/// `PUT /v1/agent/service/register`.
pub(crate) async fn register(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: String,
) -> Result<Response, ApiError> {
    writes_allowed(&state)?;
    let body: Value = serde_json::from_str(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    state.agent.register(&body, client.ip()).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/deregister/{id}`.
pub(crate) async fn deregister(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    writes_allowed(&state)?;
    state.agent.deregister(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/{pass|warn|fail}/{check}?note=`.
pub(crate) async fn check(
    State(state): State<AppState>,
    Path((verdict, check)): Path<(String, String)>,
    Query(query): Params,
) -> Result<Response, ApiError> {
    writes_allowed(&state)?;
    let verdict = match verdict.as_str() {
        "pass" | "warn" | "fail" => Verdict::parse(&verdict),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no check verdict {verdict:?}: pass, warn or fail"),
        )
    })?;
    let note = param(&query, "note").map(str::to_string);
    state.agent.update_check(&check, verdict, note).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=`.
pub(crate) async fn maintenance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Params,
) -> Result<Response, ApiError> {
    writes_allowed(&state)?;
    let enable = match param(&query, "enable") {
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "enable={other:?}: give true or false"
            )))
        }
        None => return Err(ApiError::bad_request("enable is required (true or false)")),
    };
    let reason = param(&query, "reason").map(str::to_string);
    state.agent.maintenance(&id, enable, reason).await?;
    Ok(StatusCode::OK.into_response())
}
