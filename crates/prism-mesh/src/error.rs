//! The one error type of the library, in the style of async-nats: an [`Error`] that
//! carries a machine-readable [`ErrorKind`] and a human sentence with context.

use std::fmt;

/// What went wrong, for callers that branch on the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A service name, instance field, metadata map or option was rejected before any
    /// network call.
    InvalidInput,
    /// The configuration is inconsistent (for example a heartbeat not shorter than the TTL).
    InvalidConfig,
    /// The NATS server could not be reached or refused the connection.
    Connect,
    /// The server's JetStream setup (bucket, stream) is missing, too old or incompatible.
    Setup,
    /// A write was rejected because the key changed since it was read
    /// (compare-and-swap on the key's revision failed).
    Conflict,
    /// The server rejected an operation for lack of permission.
    PermissionDenied,
    /// A request to the server timed out.
    Timeout,
    /// The instance is not (or no longer) registered by this mesh handle.
    NotRegistered,
    /// Bytes from the wire could not be decoded.
    Decode,
    /// The mesh was shut down.
    Closed,
    /// No instance of the service is eligible for a pick (none, or none healthy or
    /// matching the filters); the message says how many exist and in which statuses.
    Unavailable,
    /// Any other server or transport failure.
    Transport,
    /// The bucket or the event stream does not exist, and this mesh was told not to create
    /// them ([`NatsOptions::create`](crate::NatsOptions::create)): there is no mesh here.
    NotFound,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Connect => "connection failed",
            ErrorKind::Setup => "jetstream setup failed",
            ErrorKind::Conflict => "revision conflict",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Timeout => "timed out",
            ErrorKind::NotRegistered => "not registered",
            ErrorKind::Decode => "malformed message",
            ErrorKind::Closed => "mesh closed",
            ErrorKind::Unavailable => "no instance available",
            ErrorKind::Transport => "transport error",
            ErrorKind::NotFound => "not found",
        };
        f.write_str(name)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from prism-mesh: a [`kind`](Error::kind), a message with context and,
/// where there is one, the underlying cause.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}{}", caused_by(.source))]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind` with a message saying what was being done.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A new error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// The cause is part of the sentence so a plain `{}` print names it (url, server reply).
fn caused_by(source: &Option<Source>) -> String {
    match source {
        Some(source) => format!(" ({source})"),
        None => String::new(),
    }
}
