//! Operators' requests to owners: each owned instance listens on its control subject (NATS
//! only), and the owner makes the change itself; `request_*` sends them. An instance whose
//! owner is gone can still be deregistered: the requester writes the tombstone and records
//! the event, as the owner would have.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::watch;
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
        let Some(store) = self.inner.store.nats().cloned() else {
            return;
        };
        let registration = registration.clone();
        let closing = self.inner.closing.subscribe();
        tokio::spawn(answer_control(store, registration, closing));
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

/// The owner's side: one subscription per owned instance.
async fn answer_control(
    store: NatsStore,
    registration: Registration,
    mut closing: watch::Receiver<bool>,
) {
    let id = registration.id();
    let service = registration.instance().service.clone();
    let mut requests = match store.control_requests(&service, &id).await {
        Ok(requests) => requests,
        Err(e) => {
            debug!(error = %e, %id, "not listening for control requests");
            return;
        }
    };
    let mut before_maintenance: Option<InstanceStatus> = None;
    let mut liveness = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            message = requests.next() => match message {
                Some(message) => message,
                None => return,
            },
            _ = liveness.tick() => {
                if !registration.is_live() {
                    return;
                }
                continue;
            }
            _ = closing.wait_for(|closed| *closed) => return,
        };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let outcome = match serde_json::from_slice::<ControlRequest>(&message.payload) {
            Err(e) => Err(format!("not a control request: {e}")),
            Ok(request) => {
                let reason = request.event_reason();
                match request.action {
                    ControlAction::Deregister => registration.deregister(Some(&reason)).await,
                    ControlAction::MaintenanceOn => {
                        let now = registration.instance().status;
                        if now != InstanceStatus::Maintenance {
                            before_maintenance = Some(now);
                        }
                        registration
                            .set_status(InstanceStatus::Maintenance, Some(&reason))
                            .await
                            .map(|_| ())
                    }
                    ControlAction::MaintenanceOff => {
                        let back = before_maintenance.take().unwrap_or(InstanceStatus::Healthy);
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
}
