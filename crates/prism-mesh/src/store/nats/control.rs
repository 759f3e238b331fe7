//! Control requests over core NATS request/reply (not JetStream: nothing is stored).

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::{unless_denied, NatsStore};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{control_filter, control_subject, ControlReply, ControlRequest};

impl NatsStore {
    /// The requests for every instance of `service`, until the subscription is dropped.
    pub(crate) async fn control_requests(&self, service: &str) -> Result<async_nats::Subscriber> {
        let subject = control_filter(&self.inner.subject_prefix, service);
        self.inner.client.subscribe(subject).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Transport,
                "cannot listen for control requests",
                e,
            )
        })
    }

    /// Answers a request on its reply subject.
    pub(crate) async fn reply_control(&self, reply: async_nats::Subject, answer: &ControlReply) {
        let body = serde_json::to_vec(answer).unwrap_or_default();
        if let Err(e) = self.inner.client.publish(reply, Bytes::from(body)).await {
            tracing::debug!(error = %e, "could not answer a control request");
        }
    }

    /// Sends a request to the owner of `service`/`id`; `None` when no owner listens.
    pub(crate) async fn request_control(
        &self,
        service: &str,
        id: &Uuid,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<Option<ControlReply>> {
        let subject = control_subject(&self.inner.subject_prefix, service, id);
        let body = serde_json::to_vec(request).map_err(|e| {
            Error::with_source(ErrorKind::InvalidInput, "cannot encode a request", e)
        })?;
        let sent = self
            .inner
            .client
            .request(subject.clone(), Bytes::from(body));
        // A request the server refuses (permissions) gets no answer: say so at once.
        let sent = unless_denied(&self.inner.violations, &subject, sent);
        let answer = match tokio::time::timeout(timeout, sent).await {
            Ok(Err(text)) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("the server refused the control request to {subject}: {text}"),
                ))
            }
            Ok(Ok(sent)) => Ok(sent),
            Err(elapsed) => Err(elapsed),
        };
        let answer = match answer {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the owner of {service}/{id} did not answer within {timeout:?}"),
                ))
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Ok(None)
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(Error::with_source(
                    ErrorKind::Timeout,
                    format!("the owner of {service}/{id} did not answer"),
                    e,
                ))
            }
            Ok(Err(e)) => {
                return Err(Error::with_source(
                    ErrorKind::Transport,
                    format!("control request to {subject} failed"),
                    e,
                ))
            }
            Ok(Ok(answer)) => answer,
        };
        serde_json::from_slice(&answer.payload)
            .map(Some)
            .map_err(|e| Error::with_source(ErrorKind::Decode, "the owner's answer is not JSON", e))
    }
}
