//! The HTTP side: routes, the token check, JSON errors.
//!
//! `native` serves the mesh's own API, `events` its Server-Sent Events, `consul` the
//! Consul-compatible catalog, health and agent endpoints, `ui` the web page.

mod consul;
mod events;
mod native;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use prism_mesh::{ErrorKind, Mesh};
use serde_json::json;

use crate::agent::{Agent, AgentError};
use crate::changes::Changes;
use crate::options::ServeOptions;

/// What every handler reads.
pub(crate) struct Shared {
    pub(crate) mesh: Mesh,
    pub(crate) options: ServeOptions,
    pub(crate) changes: Arc<Changes>,
    pub(crate) agent: Arc<Agent>,
    pub(crate) rendered: consul::Rendered,
}

pub(crate) type AppState = Arc<Shared>;

/// An error answered as JSON: `{"error": "<message>"}` with its status code.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<prism_mesh::Error> for ApiError {
    fn from(e: prism_mesh::Error) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidInput | ErrorKind::InvalidConfig => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound | ErrorKind::NotRegistered => StatusCode::NOT_FOUND,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable | ErrorKind::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Invalid(message) => ApiError::bad_request(message),
            AgentError::NotFound(message) => ApiError::new(StatusCode::NOT_FOUND, message),
            AgentError::Mesh(e) => e.into(),
        }
    }
}

/// The routes, with the token check on every API route.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/services", get(native::services))
        .route("/v1/services/{service}", get(native::service))
        .route("/v1/services/{service}/pick", get(native::pick))
        .route("/v1/events", get(events::events))
        .route("/v1/at", get(native::at))
        .route("/v1/diff", get(native::diff))
        .route("/metrics", get(native::metrics))
        .route("/v1/prometheus/targets", get(native::prometheus_targets))
        .route("/v1/catalog/services", get(consul::catalog_services))
        .route(
            "/v1/catalog/service/{service}",
            get(consul::catalog_service),
        )
        .route("/v1/health/service/{service}", get(consul::health_service))
        .route("/v1/agent/self", get(consul::agent_self))
        .route("/v1/status/leader", get(consul::status_leader))
        .route("/v1/agent/services", get(consul::agent_services))
        .route("/v1/agent/checks", get(consul::agent_checks))
        .route("/v1/agent/service/register", put(consul::register))
        .route("/v1/agent/service/deregister/{id}", put(consul::deregister))
        .route("/v1/agent/check/{verdict}/{check}", put(consul::check))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(consul::maintenance),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(api)
        .route("/healthz", get(native::healthz))
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(ui::page))
        .route("/ui/{file}", get(ui::asset))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// Compares in time independent of where the strings differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The token a request carries: `Authorization: Bearer`, `X-Consul-Token` or `?token=`.
fn token_of<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    if let Some(token) = headers.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return Some(token.trim());
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.options.token {
        let given = token_of(request.headers(), request.uri().query());
        // A token in the query is percent-decoded before it is compared.
        let decoded = given.map(|t| {
            percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned()
        });
        match decoded {
            Some(given) if same_secret(given.as_bytes(), expected.as_bytes()) => {}
            Some(_) => {
                return ApiError::new(StatusCode::FORBIDDEN, "the token is not valid")
                    .into_response()
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "a token is required: Authorization: Bearer <token>, X-Consul-Token or ?token=",
                )
                .into_response()
            }
        }
    }
    next.run(request).await
}

/// A `wait` of a blocking query: Consul's default 5 minutes, at most 10.
pub(crate) fn blocking_wait(text: Option<&str>) -> Result<Duration, ApiError> {
    const DEFAULT: Duration = Duration::from_secs(300);
    const MOST: Duration = Duration::from_secs(600);
    match text {
        None => Ok(DEFAULT),
        Some(text) => humantime::parse_duration(text)
            .map(|wait| wait.min(MOST))
            .map_err(|e| ApiError::bad_request(format!("wait {text:?} is not a duration ({e})"))),
    }
}
