//! Operators' requests to owners: each owned instance listens on its control subject (NATS
//! only; one task per mesh answers for all of them), and the owner makes the change itself; `request_*` sends them. An instance whose
//! owner is gone can still be deregistered: the requester writes the tombstone and records
//! the event, as the owner would have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt, StreamMap};
use tracing::debug;
use uuid::Uuid;

use super::Mesh;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::InstanceStatus;
use crate::owner::Registration;
use crate::protocol::{
    ControlAction, ControlReply, ControlRequest, EventName, EventRecord, PROTOCOL_VERSION,
};
use crate::store::NatsStore;

/// How long a requester waits for the owner's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

impl Mesh {
    /// Starts answering control requests for `registration` (NATS only), until it is
    /// deregistered or the mesh closes.
    pub(super) fn listen_for_control(&self, registration: &Registration) {
        if let Some(desk) = &self.inner.control_desk {
            // Gone only once the mesh closes, when nothing answers any more.
            let _ = desk.send(registration.clone());
        }
    }

    /// Asks the owner of `service`/`id` to deregister it, with `reason` and `by` (who
    /// asks) in its event. With no owner left to answer, writes the tombstone and records
    /// the `deregistered` event itself (the server's permissions decide whether it may).
    pub async fn request_deregister(
        &self,
        service: &str,
        id: Uuid,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<()> {
        let request = ControlRequest {
            action: ControlAction::Deregister,
            reason: reason.map(str::to_string),
            by: by.map(str::to_string),
        };
        match self.send_control(service, id, &request).await? {
            Some(answer) => answered(answer),
            None => self.deregister_ownerless(service, id, &request).await,
        }
    }

    /// Asks the owner of `service`/`id` to put it in maintenance (`on`) or take it out
    /// (back to the status it had), with `reason` and `by` in its event.
    pub async fn request_maintenance(
        &self,
        service: &str,
        id: Uuid,
        on: bool,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<()> {
        let request = ControlRequest {
            action: if on {
                ControlAction::MaintenanceOn
            } else {
                ControlAction::MaintenanceOff
            },
            reason: reason.map(str::to_string),
            by: by.map(str::to_string),
        };
        match self.send_control(service, id, &request).await? {
            Some(answer) => answered(answer),
            None => Err(Error::new(
                ErrorKind::NotRegistered,
                format!(
                    "no owner answered for {service}/{id}: it is gone (its key expires at its TTL)"
                ),
            )),
        }
    }

    async fn send_control(
        &self,
        service: &str,
        id: Uuid,
        request: &ControlRequest,
    ) -> Result<Option<ControlReply>> {
        crate::instance::validate_service_name(service)?;
        let store = self.inner.store.nats().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "control requests go between processes: they need the NATS backend",
            )
        })?;
        store
            .request_control(service, &id, request, ANSWER_WITHIN)
            .await
    }

    /// Deregisters an instance no owner answers for: its tombstone, then its event.
    async fn deregister_ownerless(
        &self,
        service: &str,
        id: Uuid,
        request: &ControlRequest,
    ) -> Result<()> {
        let instance = self.find_instance(service, id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotRegistered,
                format!("no live instance {service}/{id}"),
            )
        })?;
        let reason = request.event_reason();
        let store = &self.inner.store;
        let revision = store
            .delete(
                &instance.key(),
                Some(&reason),
                self.inner.timing.tombstone_ttl,
            )
            .await?;
        let record = EventRecord {
            v: PROTOCOL_VERSION,
            event: EventName::Deregistered,
            instance,
            previous_status: None,
            reason: Some(reason),
            at: SystemTime::now(),
            origin: self.inner.peer_id.clone(),
        };
        store.record_removal(&record, revision).await.map(|_| ())
    }
}

fn answered(answer: ControlReply) -> Result<()> {
    if answer.ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the owner refused: {}",
                answer
                    .error
                    .unwrap_or_else(|| "no reason given".to_string())
            ),
        ))
    }
}

/// What the desk holds for an owned instance.
#[derive(Clone)]
struct Answering {
    registration: Registration,
    /// The status to go back to when maintenance ends.
    before_maintenance: Arc<Mutex<Option<InstanceStatus>>>,
}

/// The owner's side: one task per mesh answers for every owned instance, each on its own
/// subscription (so a request for an instance no longer here gets "no responders"). A
/// task and a timer per registration would cost every registration; this costs it one
/// subscription.
pub(super) async fn control_desk(
    store: NatsStore,
    mut owned: mpsc::UnboundedReceiver<Registration>,
    mut closing: watch::Receiver<bool>,
) {
    let mut requests: StreamMap<Uuid, async_nats::Subscriber> = StreamMap::new();
    let mut answering: HashMap<Uuid, Answering> = HashMap::new();
    // Deregistered instances stop answering within a sweep.
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            registration = owned.recv() => {
                let Some(registration) = registration else { return };
                let id = registration.id();
                let service = registration.instance().service.clone();
                match store.control_requests(&service, &id).await {
                    Ok(subscription) => {
                        requests.insert(id, subscription);
                        answering.insert(id, Answering {
                            registration,
                            before_maintenance: Arc::default(),
                        });
                    }
                    Err(e) => debug!(error = %e, %id, "not listening for control requests"),
                }
            }
            Some((id, message)) = requests.next(), if !requests.is_empty() => {
                if let Some(answering) = answering.get(&id).cloned() {
                    // A change waits for its write: never hold up the other instances.
                    tokio::spawn(answer(store.clone(), answering, message));
                }
            }
            _ = sweep.tick() => {
                answering.retain(|id, answering| {
                    let live = answering.registration.is_live();
                    if !live {
                        requests.remove(id);
                    }
                    live
                });
            }
            _ = crate::sync::until_true(&mut closing) => return,
        }
    }
}

/// Makes the change a request asks for and answers it.
async fn answer(store: NatsStore, answering: Answering, message: async_nats::Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let registration = &answering.registration;
    let outcome = match serde_json::from_slice::<ControlRequest>(&message.payload) {
        Err(e) => Err(format!("not a control request: {e}")),
        Ok(request) => {
            let reason = request.event_reason();
            match request.action {
                ControlAction::Deregister => registration.deregister(Some(&reason)).await,
                ControlAction::MaintenanceOn => {
                    let now = registration.instance().status;
                    if now != InstanceStatus::Maintenance {
                        *lock(&answering.before_maintenance) = Some(now);
                    }
                    registration
                        .set_status(InstanceStatus::Maintenance, Some(&reason))
                        .await
                        .map(|_| ())
                }
                ControlAction::MaintenanceOff => {
                    let back = lock(&answering.before_maintenance)
                        .take()
                        .unwrap_or(InstanceStatus::Healthy);
                    registration
                        .set_status(back, Some(&reason))
                        .await
                        .map(|_| ())
                }
            }
            .map_err(|e| e.to_string())
        }
    };
    let answer = match outcome {
        Ok(()) => ControlReply {
            ok: true,
            error: None,
        },
        Err(error) => ControlReply {
            ok: false,
            error: Some(error),
        },
    };
    store.reply_control(reply, &answer).await;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
