//! Termination signals (SIGTERM, Ctrl-C) for leaving the mesh cleanly.
//!
//! Listening starts when [`TerminationSignals::listen`] returns, not when it is first
//! awaited: until a process listens, SIGTERM's default action kills it outright, and a
//! supervisor that sends SIGTERM right after the service said it is ready would get a
//! crash (an expiry at every peer) instead of a clean departure.

use crate::error::{Error, ErrorKind, Result};

/// Listens for the first of SIGTERM and SIGINT (Ctrl-C; Ctrl-C only where there are no
/// Unix signals). Create it before announcing readiness.
///
/// ```no_run
/// # async fn run() -> prism_mesh::Result<()> {
/// let mut signals = prism_mesh::TerminationSignals::listen()?;
/// println!("ready"); // a SIGTERM from now on is caught, never fatal
/// let name = signals.recv().await;
/// tracing::info!(signal = name, "stopping");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TerminationSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    /// Starts listening. Fails (as [`ErrorKind::Transport`]) only if the OS refuses a
    /// signal handler. Needs a Tokio runtime.
    pub fn listen() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind| {
                signal(kind).map_err(|e| {
                    Error::with_source(
                        ErrorKind::Transport,
                        "cannot listen for termination signals",
                        e,
                    )
                })
            };
            Ok(TerminationSignals {
                term: listen(SignalKind::terminate())?,
                int: listen(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(TerminationSignals {})
        }
    }

    /// Waits for the next termination signal and returns its name (`"SIGTERM"`,
    /// `"SIGINT"`, or `"Ctrl-C"` where there are no Unix signals).
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            // Registered on first poll there: Windows has no SIGTERM to die of meanwhile.
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for Ctrl-C; waiting forever");
                    std::future::pending().await
                }
            }
        }
    }
}
