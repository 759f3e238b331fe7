//! What a read of the audit trail asks for ([`HistoryQuery`]) and what it yields
//! ([`History`], a stream of [`StoredEvent`]s); each backend reads it its own way.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::Stream;
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::instance::validate_service_name;
use crate::protocol::EventRecord;

/// What to read of the audit trail. Built with setters; every part is optional.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use prism_mesh::HistoryQuery;
///
/// let query = HistoryQuery::new()
///     .service("orders")
///     .since(SystemTime::now() - Duration::from_secs(3600))
///     .follow(true);
/// assert_eq!(query.service_name(), Some("orders"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    service: Option<String>,
    instance: Option<Uuid>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    after: Option<u64>,
    follow: bool,
}

impl HistoryQuery {
    /// Every event kept, oldest first, up to the stream's end when the read starts.
    pub fn new() -> Self {
        HistoryQuery::default()
    }

    /// Only the events of this service (filtered by the server).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Only the events of this instance (filtered by the server).
    pub fn instance(mut self, id: Uuid) -> Self {
        self.instance = Some(id);
        self
    }

    /// Starts at the first event stored at or after `time` (the server finds it).
    pub fn since(mut self, time: SystemTime) -> Self {
        self.since = Some(time);
        self
    }

    /// Ends before the first event stored after `time`.
    pub fn until(mut self, time: SystemTime) -> Self {
        self.until = Some(time);
        self
    }

    /// Starts after this stream sequence (to resume where an earlier read stopped);
    /// wins over [`since`](Self::since).
    pub fn after_sequence(mut self, sequence: u64) -> Self {
        self.after = Some(sequence);
        self
    }

    /// Goes on with live events once the stored ones are read, until dropped (`until`
    /// still ends it).
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// The service asked for, if any.
    pub fn service_name(&self) -> Option<&str> {
        self.service.as_deref()
    }

    pub(crate) fn instance_id(&self) -> Option<&Uuid> {
        self.instance.as_ref()
    }

    pub(crate) fn start(&self) -> Start {
        match (self.after, self.since) {
            (Some(sequence), _) => Start::After(sequence),
            (None, Some(time)) => Start::Time(time),
            (None, None) => Start::First,
        }
    }

    pub(crate) fn until_time(&self) -> Option<SystemTime> {
        self.until
    }

    pub(crate) fn follows(&self) -> bool {
        self.follow
    }

    /// Refuses a query that names an invalid service or ends before it starts.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(service) = &self.service {
            validate_service_name(service)?;
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if until < since {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the history query ends ({}) before it starts ({})",
                        humantime::format_rfc3339_millis(until),
                        humantime::format_rfc3339_millis(since)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Where a read of the trail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    First,
    Time(SystemTime),
    After(u64),
}

/// One lifecycle event as the event stream stored it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its sequence in the event stream (increasing; resume after it with
    /// [`HistoryQuery::after_sequence`]).
    pub sequence: u64,
    /// When the stream stored it (the server's clock: the time axis of `at` and `diff`).
    pub stored_at: SystemTime,
    /// The event.
    pub record: EventRecord,
}

/// Events of a [`HistoryQuery`], oldest first, read as they are consumed: memory stays
/// flat however long the history. Stored messages that cannot be decoded are skipped,
/// logged and counted ([`skipped`](History::skipped)).
pub struct History {
    events: Pin<Box<dyn Stream<Item = Result<StoredEvent>> + Send>>,
    skipped: Arc<AtomicU64>,
}

impl History {
    pub(crate) fn new(
        events: impl Stream<Item = Result<StoredEvent>> + Send + 'static,
        skipped: Arc<AtomicU64>,
    ) -> History {
        History {
            events: Box::pin(events),
            skipped,
        }
    }

    /// The next event; `None` at the end of the read.
    pub async fn next(&mut self) -> Option<Result<StoredEvent>> {
        futures::StreamExt::next(self).await
    }

    /// Stored messages skipped so far because they could not be decoded.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Stream for History {
    type Item = Result<StoredEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("skipped", &self.skipped())
            .finish_non_exhaustive()
    }
}
