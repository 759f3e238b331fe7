//! Why a gateway could not start.

use std::net::SocketAddr;

/// What went wrong, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServeErrorKind {
    /// An option is invalid (the message names it).
    InvalidOption,
    /// A listener could not be opened.
    Bind,
}

/// An error starting a [`Gateway`](crate::Gateway).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// An option is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A listener could not be opened.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// `HTTP`, `DNS over UDP` or `DNS over TCP`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
}

impl ServeError {
    /// What kind of error this is.
    pub fn kind(&self) -> ServeErrorKind {
        match self {
            ServeError::InvalidOption(_) => ServeErrorKind::InvalidOption,
            ServeError::Bind { .. } => ServeErrorKind::Bind,
        }
    }
}
