//! An owner's lifecycle events: each published once, with an id no other client can guess,
//! retried through an election of the event stream's leader, and in the order of the writes
//! they describe.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, warn};
use uuid::Uuid;

use super::writer::{KeyState, OwnedInstance, Updated};
use crate::error::{ErrorKind, Result};
use crate::instance::{InstanceStatus, ServiceInstance};
use crate::metrics::MeshStats;
use crate::protocol::{EventName, EventRecord, PROTOCOL_VERSION};

/// How long a lifecycle event publish keeps being retried on transient failures before the
/// call reports failure (and a registration is rolled back): long enough to ride out the
/// election of a new leader of the event stream.
const EVENT_PUBLISH_PATIENCE: Duration = Duration::from_secs(12);

impl OwnedInstance {
    /// Publishes the `registered` event of a re-assertion at `revision` on a task of its
    /// own, after letting go of the key: heartbeats go on while the event waits out an
    /// election of the event stream's leader (up to `EVENT_PUBLISH_PATIENCE`). Events stay
    /// in the order of their writes: the events lock is taken before the key's is released
    /// when it is free, and queued for at once otherwise.
    pub(super) fn announce_reasserted(
        self: &Arc<Self>,
        writer: tokio::sync::MutexGuard<'_, KeyState>,
        instance: Arc<ServiceInstance>,
        revision: u64,
        reason: &'static str,
    ) {
        let in_order = self.events.clone().try_lock_owned().ok();
        drop(writer);
        let owned = self.clone();
        tokio::spawn(async move {
            let _in_order = match in_order {
                Some(guard) => guard,
                None => owned.events.clone().lock_owned().await,
            };
            if let Err(e) = owned
                .publish(
                    &instance,
                    EventName::Registered,
                    None,
                    Some(reason.to_string()),
                    revision,
                )
                .await
            {
                warn!(key = %owned.key, error = %e, "the re-assertion's event could not be recorded");
            }
        });
    }

    /// Publishes an update's events, in order.
    pub(super) async fn announce(&self, update: &Updated) -> Result<()> {
        for (event, previous) in &update.events {
            self.publish(
                &update.instance,
                *event,
                *previous,
                update.reason.clone(),
                update.revision,
            )
            .await?;
        }
        Ok(())
    }

    /// Appends a lifecycle event, retrying with the same id (the stream stores it once).
    pub(super) async fn publish(
        &self,
        instance: &Arc<ServiceInstance>,
        event: EventName,
        previous_status: Option<InstanceStatus>,
        reason: Option<String>,
        revision: u64,
    ) -> Result<()> {
        let owners = &*self.owners;
        let record = EventRecord {
            v: PROTOCOL_VERSION,
            event,
            instance: instance.clone(),
            previous_status,
            reason,
            at: SystemTime::now(),
            origin: owners.peer_id.clone(),
        };
        // Unpredictable: de-duplication spans the whole stream, so an id another client
        // could guess, it could claim first on a subject of its own, and this event would
        // be dropped as a duplicate.
        let msg_id = format!(
            "{}-{}-{revision}-{}",
            event.as_str(),
            self.id,
            Uuid::new_v4().simple()
        );
        let give_up = Instant::now() + EVENT_PUBLISH_PATIENCE;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            // The same id every time: the stream stores the event once, however many
            // attempts reached it.
            match owners.store.publish_event(&record, &msg_id, revision).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if Instant::now() + delay < give_up
                        && matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Transport) =>
                {
                    debug!(error = %e, attempt, "event publish failed; retrying");
                    tokio::time::sleep(rand::random_range(delay / 2..=delay)).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                    attempt += 1;
                }
                Err(e) => {
                    MeshStats::incr(&owners.stats.event_publish_failures);
                    return Err(e);
                }
            }
        }
    }
}
