//! `GET /v1/events`: lifecycle events as Server-Sent Events, read from the event stream.
//!
//! Each event's SSE id is its stream sequence, so a client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves) resumes after the last event it got,
//! missing none and repeating none. Without one, the stream starts with the next event.

use std::convert::Infallible;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use prism_mesh::{HistoryQuery, StoredEvent};
use serde_json::json;
use tracing::warn;

use super::native::{instance_json, param, Params};
use super::{ApiError, AppState};

/// An event as the stream carries it.
pub(crate) fn event_json(event: &StoredEvent) -> serde_json::Value {
    let record = &event.record;
    let millis = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    json!({
        "sequence": event.sequence,
        "stored_at": millis(event.stored_at),
        "event": record.event.as_str(),
        "service": record.instance.service.as_str(),
        "instance": instance_json(&record.instance, None),
        "previous_status": record.previous_status,
        "reason": record.reason,
        "at": millis(record.at),
        "origin": record.origin,
    })
}

fn sequence(text: &str, from: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("{from} {text:?} is not an event sequence number"))
    })
}

/// `GET /v1/events?service=&after=` (or `Last-Event-ID`).
pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| sequence(v, "Last-Event-ID"))
        .transpose()?;
    let after = match (resume, param(&query, "after")) {
        (Some(after), _) => after,
        (None, Some(after)) => sequence(after, "after")?,
        (None, None) => state.mesh.history_end().await?,
    };
    let mut request = HistoryQuery::new().after_sequence(after).follow(true);
    if let Some(service) = param(&query, "service") {
        prism_mesh::validate_service_name(service)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        request = request.service(service);
    }
    let history = state.mesh.history(request).await?;
    // A read that fails ends the response with an `error` event; the client reconnects
    // with the last id it got and loses nothing.
    let stream = history
        .map(|item| match item {
            Ok(event) => (
                Event::default()
                    .id(event.sequence.to_string())
                    .event(event.record.event.as_str())
                    .data(event_json(&event).to_string()),
                true,
            ),
            Err(e) => {
                warn!(error = %e, "event stream read failed; ending the SSE response");
                (Event::default().event("error").data(e.to_string()), false)
            }
        })
        .scan(true, |open, (event, ok)| {
            let emit = *open;
            *open = ok;
            futures::future::ready(emit.then_some(Ok(event)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
