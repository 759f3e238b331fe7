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
        match self.send_control(service, id, &request).await {
            Ok(Some(answer)) => answered(answer),
            // No process listens for the service, or the one that does is not the owner:
            // the owner is gone.
            Ok(None) => self.deregister_ownerless(service, id, &request).await,
            Err(e) if e.kind() == ErrorKind::Timeout => {
                debug!(error = %e, "no owner answered; deregistering for it");
                self.deregister_ownerless(service, id, &request).await
            }
            Err(e) => Err(e),
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
        // The requester's view must hold the service: the gone owner's part is done from it.
        self.follow(service).await?;
        if self.find_instance(service, id).is_none() {
            return Err(Error::new(
                ErrorKind::NotRegistered,
                format!("no live instance {service}/{id}"),
            ));
        }
        let store = self.events_store().nats().ok_or_else(|| {
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
        let store = &self.shard(service).store;
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

/// The owner's side: one task per mesh answers for every owned instance, on one
/// subscription per service it has instances of. A task, a timer or a subscription per
/// registration would cost every registration.
pub(super) async fn control_desk(
    store: NatsStore,
    mut owned: mpsc::UnboundedReceiver<Registration>,
    mut closing: watch::Receiver<bool>,
) {
    // One subscription per service with an instance here, not one per instance: a
    // subscription costs a registration more than its two writes.
    let mut requests: StreamMap<String, async_nats::Subscriber> = StreamMap::new();
    let mut answering: HashMap<Uuid, Answering> = HashMap::new();
    // Deregistered instances stop answering within a sweep.
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            registration = owned.recv() => {
                let Some(registration) = registration else { return };
                let id = registration.id();
                let service = registration.instance().service.to_string();
                if !requests.contains_key(&service) {
                    match store.control_requests(&service).await {
                        Ok(subscription) => {
                            requests.insert(service, subscription);
                        }
                        Err(e) => {
                            debug!(error = %e, %id, "not listening for control requests");
                            continue;
                        }
                    }
                }
                answering.insert(id, Answering {
                    registration,
                    before_maintenance: Arc::default(),
                });
            }
            Some((_, message)) = requests.next(), if !requests.is_empty() => {
                // The last token of the subject is the instance's id. A request for an
                // instance of this service owned elsewhere is its owner's to answer.
                let id = message.subject.rsplit('.').next().and_then(|id| id.parse::<Uuid>().ok());
                if let Some(answering) = id.and_then(|id| answering.get(&id)).cloned() {
                    // A change waits for its write: never hold up the other instances.
                    tokio::spawn(answer(store.clone(), answering, message));
                }
            }
            _ = sweep.tick() => {
                answering.retain(|_, answering| answering.registration.is_live());
                // A service with no instance left here stops listening: a request for it
                // then finds no responders, and the requester acts for the gone owner.
                let listened: Vec<String> = requests.keys().cloned().collect();
                for service in listened {
                    if !answering.values().any(|a| a.registration.instance().service == service) {
                        requests.remove(&service);
                    }
                }
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
