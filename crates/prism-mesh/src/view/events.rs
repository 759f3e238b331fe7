//! Typed lifecycle events as a peer sees them, and their delivery to streams and handlers.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::instance::{InstanceStatus, ServiceInstance};

/// One change of the live view, delivered once per change per peer, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshEvent {
    /// An instance appeared (registered, or re-asserted after it expired).
    Registered {
        /// The instance.
        instance: Arc<ServiceInstance>,
    },
    /// Metadata, tags, weight, zone or address changed.
    Updated {
        /// The instance before.
        previous: Arc<ServiceInstance>,
        /// The instance now.
        instance: Arc<ServiceInstance>,
        /// Why, when the owner said.
        reason: Option<String>,
    },
    /// The status changed.
    StatusChanged {
        /// The instance now.
        instance: Arc<ServiceInstance>,
        /// Status before.
        previous: InstanceStatus,
        /// Status now.
        current: InstanceStatus,
        /// Why, when the owner said.
        reason: Option<String>,
    },
    /// The owner removed the instance.
    Deregistered {
        /// The instance as last seen.
        instance: Arc<ServiceInstance>,
        /// Why, when the owner said.
        reason: Option<String>,
    },
    /// The instance's key expired: its owner stopped heartbeating.
    Expired {
        /// The instance as last seen.
        instance: Arc<ServiceInstance>,
    },
}

/// The kind of a [`MeshEvent`], for filtering handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// [`MeshEvent::Registered`]
    Registered,
    /// [`MeshEvent::Updated`]
    Updated,
    /// [`MeshEvent::StatusChanged`]
    StatusChanged,
    /// [`MeshEvent::Deregistered`]
    Deregistered,
    /// [`MeshEvent::Expired`]
    Expired,
}

impl EventKind {
    /// Lowercase name, as used on the wire and in logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::Updated => "updated",
            EventKind::StatusChanged => "status",
            EventKind::Deregistered => "deregistered",
            EventKind::Expired => "expired",
        }
    }
}

impl MeshEvent {
    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        match self {
            MeshEvent::Registered { .. } => EventKind::Registered,
            MeshEvent::Updated { .. } => EventKind::Updated,
            MeshEvent::StatusChanged { .. } => EventKind::StatusChanged,
            MeshEvent::Deregistered { .. } => EventKind::Deregistered,
            MeshEvent::Expired { .. } => EventKind::Expired,
        }
    }

    /// The instance concerned (after the change, or as last seen).
    pub fn instance(&self) -> &Arc<ServiceInstance> {
        match self {
            MeshEvent::Registered { instance }
            | MeshEvent::Updated { instance, .. }
            | MeshEvent::StatusChanged { instance, .. }
            | MeshEvent::Deregistered { instance, .. }
            | MeshEvent::Expired { instance } => instance,
        }
    }

    /// The service concerned.
    pub fn service(&self) -> &str {
        &self.instance().service
    }
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these kinds (all when empty).
    pub kinds: Vec<EventKind>,
    /// Only this service (all when `None`).
    pub service: Option<String>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        EventFilter::default()
    }

    /// Events of one service.
    pub fn service(service: impl Into<String>) -> Self {
        EventFilter {
            kinds: Vec::new(),
            service: Some(service.into()),
        }
    }

    /// Restricts to one more kind.
    pub fn kind(mut self, kind: EventKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// True when `event` passes.
    pub fn matches(&self, event: &MeshEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind()))
            && self.service.as_deref().is_none_or(|s| s == event.service())
    }
}

impl From<EventKind> for EventFilter {
    fn from(kind: EventKind) -> Self {
        EventFilter::all().kind(kind)
    }
}

/// A `futures::Stream` of [`MeshEvent`]s; ends when the mesh shuts down.
///
/// Each subscriber has its own unbounded queue, so a slow subscriber never makes another
/// miss an event, and never slows the view. Poll it, or drop it.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<MeshEvent>,
}

impl futures::Stream for EventStream {
    type Item = MeshEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MeshEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A subscriber: what it wants, and where to send it.
type Subscriber = (EventFilter, mpsc::UnboundedSender<MeshEvent>);

/// Fans events out to subscribers, in order.
#[derive(Debug)]
pub(crate) struct EventBus {
    /// `None` once the view ended: streams subscribed later end at once.
    subscribers: Mutex<Option<Vec<Subscriber>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            subscribers: Mutex::new(Some(Vec::new())),
        }
    }
}

impl EventBus {
    pub(crate) fn subscribe(&self, filter: EventFilter) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        // After close nothing will ever be sent: dropping `tx` ends the stream.
        if let Some(subscribers) = self.lock().as_mut() {
            subscribers.push((filter, tx));
        }
        EventStream { rx }
    }

    pub(crate) fn dispatch(&self, events: &[MeshEvent]) {
        if events.is_empty() {
            return;
        }
        if let Some(subscribers) = self.lock().as_mut() {
            subscribers.retain(|(filter, tx)| {
                events
                    .iter()
                    .filter(|event| filter.matches(event))
                    .all(|event| tx.send(event.clone()).is_ok())
            });
        }
    }

    /// Ends every stream, and those subscribed later.
    pub(crate) fn close(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Subscriber>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
