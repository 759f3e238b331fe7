//! The NATS JetStream backend: instance records in a KV bucket with per-key TTLs, read back
//! as raw stream messages (the KV API hides the headers that tell expiry from deletion);
//! lifecycle events in their own stream.
//!
//! `connect` opens the connection and finds (or creates) the bucket and the stream;
//! `write` holds every write (puts, tombstones, events, expiries); `watcher` follows the
//! bucket and turns its messages into changes; `history` reads the event stream (events
//! and checkpoints). This file holds the handle and what they
//! share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::jetstream;
use tokio::sync::{broadcast, watch};
use tracing::debug;

use crate::config::NatsOptions;

mod connect;
mod control;
mod history;
mod watcher;
mod write;

/// A connected NATS backend. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct NatsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    kv_stream: String,
    /// `$KV.<bucket>.`
    kv_prefix: String,
    /// Which shard of the mesh this bucket is.
    shard: Shard,
    subject_prefix: String,
    reconnects: watch::Receiver<u64>,
    closed: watch::Sender<bool>,
    urls: String,
    lag: WatchLag,
    /// Permission violations the server reported on this connection.
    violations: broadcast::Sender<String>,
    /// The highest revision this mesh wrote and waited in vain to see (see `watch_stalled`).
    awaited: watch::Sender<u64>,
    /// To make the bucket and the event stream again if they vanish.
    options: NatsOptions,
}

/// A shard of the mesh: its index and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: u16,
    pub(crate) count: u16,
}

/// How far behind the server the live watch is, as of its last message.
#[derive(Debug, Default)]
struct WatchLag {
    pending: AtomicU64,
    delay_micros: AtomicU64,
    /// The last revision the live watch delivered, and when (unix microseconds).
    delivered: AtomicU64,
    delivered_at_micros: AtomicU64,
}

impl WatchLag {
    fn record(&self, position: &Position) {
        let now = unix_micros();
        let stored = u64::try_from(position.stored_at_nanos / 1000).unwrap_or(0);
        self.pending.store(position.pending, Ordering::Relaxed);
        self.delay_micros
            .store(now.saturating_sub(stored), Ordering::Relaxed);
        self.delivered
            .fetch_max(position.sequence, Ordering::Relaxed);
        self.delivered_at_micros.store(now, Ordering::Relaxed);
    }

    /// True when the live watch has not delivered `revision` and has been silent for
    /// `quiet`: its consumer is probably gone (its server lost, or no longer leading).
    fn stalled_before(&self, revision: u64, quiet: Duration) -> bool {
        let silent_for =
            unix_micros().saturating_sub(self.delivered_at_micros.load(Ordering::Relaxed));
        self.delivered.load(Ordering::Relaxed) < revision
            && Duration::from_micros(silent_for) >= quiet
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl NatsStore {
    /// The watch's delay behind the server and the messages the server still holds for it.
    pub(crate) fn watch_lag(&self) -> (Duration, u64) {
        let lag = &self.inner.lag;
        (
            Duration::from_micros(lag.delay_micros.load(Ordering::Relaxed)),
            lag.pending.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.clone()
    }

    /// This mesh wrote `revision` and its own watch has not shown it yet. If the watch has
    /// also been silent meanwhile, its consumer was likely lost with a stream leader: the
    /// watch resumes at once instead of waiting for the consumer's missed heartbeats.
    pub(crate) fn watch_stalled(&self, revision: u64) {
        self.inner.awaited.send_if_modified(|awaited| {
            let raised = revision > *awaited;
            *awaited = (*awaited).max(revision);
            raised
        });
    }

    pub(crate) async fn close(&self) {
        self.inner.closed.send_replace(true);
        // Bounded: with the server unreachable a flush would wait for a reconnect forever.
        match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.inner.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, urls = %self.inner.urls, "flush on close failed"),
            Err(_) => {
                debug!(urls = %self.inner.urls, "flush on close timed out (server unreachable)")
            }
        }
        // Close the connection itself, so nothing of this mesh reconnects or logs on later.
        match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.inner.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, urls = %self.inner.urls, "drain on close failed"),
            Err(_) => debug!(urls = %self.inner.urls, "drain on close timed out"),
        }
    }
}

/// Longest wait for outgoing messages to leave when a mesh closes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a JetStream request, or returns the server's text as soon as it refuses the
/// request's `subject` (a refused request gets no reply and would wait out its timeout).
async fn unless_denied<T>(
    violations: &broadcast::Sender<String>,
    subject: &str,
    request: impl std::future::Future<Output = T>,
) -> std::result::Result<T, String> {
    let mut refused = violations.subscribe();
    let denied = async {
        loop {
            match refused.recv().await {
                Ok(text) if text.contains(subject) => return text,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        result = request => Ok(result),
        text = denied => Err(text),
    }
}

/// A header name as the parser of received messages builds it. async-nats compares names by
/// representation: a `&str` always becomes a custom name, while received standard names
/// (`Nats-Msg-Id`, `Nats-Marker-Reason`, ...) parse to their standard form, and the two
/// never match. Parsing here makes lookups and inserts agree.
fn name(header: &'static str) -> HeaderName {
    HeaderName::from_static(header)
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Where a watch message sits: how many the server still holds for us, and when it was
/// stored (unix nanoseconds).
pub(super) struct Position {
    pub(super) pending: u64,
    pub(super) stored_at_nanos: i128,
    /// The message's stream sequence (its revision).
    pub(super) sequence: u64,
}
