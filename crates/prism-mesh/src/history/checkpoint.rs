//! When peers write checkpoints: any peer may, none has to. Each peer looks now and then
//! whether the last checkpoint is due for a successor (enough events since it, or old
//! enough that the stream's retention would soon drop it) and, if so, writes one; of peers
//! that try at once, the first part stored wins and the others stop (`past`).

use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::past::write_checkpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Locate, Store};

/// The longest a checkpoint stands before the next is due, unless configured.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// When this peer writes checkpoints of the registry into the event stream.
///
/// A checkpoint is due when the events stored since the last one outnumber both
/// [`every_events`](Self::every_events) and the instances in it (so checkpoints take no
/// more room than the events they spare readers), or when it is older than
/// [`max_age`](Self::max_age), which must stay below the event stream's retention so that a
/// live instance registered long ago is always in a kept checkpoint.
///
/// ```
/// use std::time::Duration;
/// use prism_mesh::CheckpointPolicy;
///
/// let policy = CheckpointPolicy::default().every_events(50_000).max_age(Duration::from_secs(6 * 3600));
/// assert!(policy.is_enabled());
/// assert!(!CheckpointPolicy::disabled().is_enabled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    enabled: bool,
    every_events: u64,
    /// `None`: a quarter of the event stream's max age, at most a day.
    max_age: Option<Duration>,
    check_every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            enabled: true,
            every_events: 10_000,
            max_age: None,
            check_every: Duration::from_secs(60),
        }
    }
}

impl CheckpointPolicy {
    /// This peer writes none (others still may; readers still use theirs).
    pub fn disabled() -> Self {
        CheckpointPolicy {
            enabled: false,
            ..CheckpointPolicy::default()
        }
    }

    /// Whether this peer writes checkpoints.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Least events since the last checkpoint that make the next one due (default 10,000).
    pub fn every_events(mut self, events: u64) -> Self {
        self.every_events = events.max(1);
        self
    }

    /// Age at which a checkpoint is due whatever happened since (default: a quarter of
    /// the event stream's max age, at most 24 h).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The max age in force for an event stream kept `retention` long.
    pub(crate) fn with_retention(mut self, retention: Duration) -> Self {
        let quarter = if retention.is_zero() {
            DEFAULT_MAX_AGE
        } else {
            (retention / 4).min(DEFAULT_MAX_AGE)
        };
        self.max_age = Some(self.max_age.unwrap_or(quarter));
        self
    }

    /// How often this peer looks whether a checkpoint is due (default 60 s, spread at
    /// random so that peers do not look together).
    pub fn check_every(mut self, every: Duration) -> Self {
        self.check_every = every;
        self
    }

    /// Refuses a policy whose checkpoints could outlive nothing: `max_age` must be above
    /// zero and below the event stream's `retention`.
    pub(crate) fn validate(&self, retention: Option<Duration>) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.max_age.is_some_and(|age| age.is_zero()) || self.check_every.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "checkpoint max_age and check_every must be above zero",
            ));
        }
        if let (Some(retention), Some(max_age)) = (retention.filter(|r| !r.is_zero()), self.max_age)
        {
            if max_age >= retention {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "checkpoint max_age ({}) must be below the event stream's max age ({}): \
                         an instance registered earlier would drop out of the trail",
                        humantime::format_duration(max_age),
                        humantime::format_duration(retention)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether the next checkpoint is due.
async fn due(store: &Store, policy: &CheckpointPolicy) -> Result<bool> {
    let (_, last) = store.event_bounds().await?;
    Ok(match store.checkpoint_part(Locate::Last).await? {
        // The first one as soon as there is anything to keep.
        None => last > 0,
        Some((_, stored_at, part)) => {
            let age = SystemTime::now()
                .duration_since(stored_at)
                .unwrap_or_default();
            let since = last.saturating_sub(part.up_to);
            age >= policy.max_age.unwrap_or(DEFAULT_MAX_AGE)
                || since >= policy.every_events.max(part.total)
        }
    })
}

/// A peer's checkpoint duty, running until the mesh closes.
pub(crate) struct CheckpointTask;

impl CheckpointTask {
    pub(crate) fn spawn(
        store: Store,
        policy: CheckpointPolicy,
        mut closing: watch::Receiver<bool>,
        span: tracing::Span,
    ) -> JoinHandle<()> {
        let duty = async move {
            loop {
                let pause = rand::random_range(policy.check_every / 2..=policy.check_every * 3 / 2);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = closing.wait_for(|closed| *closed) => return,
                }
                if !matches!(due(&store, &policy).await, Ok(true)) {
                    continue;
                }
                // Spread the peers that found it due together, then look again.
                tokio::time::sleep(rand::random_range(Duration::ZERO..=policy.check_every / 4))
                    .await;
                if !matches!(due(&store, &policy).await, Ok(true)) {
                    continue;
                }
                match write_checkpoint(&store).await {
                    Ok(Some(first)) => info!(first, "wrote a checkpoint of the registry"),
                    Ok(None) => debug!("another peer wrote the checkpoint first"),
                    Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                        info!(error = %e, "this peer may not write checkpoints; others (the witness) do");
                        return;
                    }
                    Err(e) => warn!(error = %e, "writing a checkpoint failed; trying again later"),
                }
            }
        };
        tokio::spawn(duty.instrument(span))
    }
}
