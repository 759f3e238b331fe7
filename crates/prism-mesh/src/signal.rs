//! Termination signals (SIGTERM, Ctrl-C) for leaving the mesh cleanly.
//!
//! Listening starts when [`TerminationSignals::listen`] returns, not when it is first
//! awaited: until a process listens, SIGTERM's default action kills it outright, and a
//! supervisor that sends SIGTERM right after the service said it is ready would get a
//! crash (an expiry at every peer) instead of a clean departure.

use crate::error::{Error, ErrorKind, Result};

/// Listens for SIGTERM and SIGINT (Ctrl-C) on Unix, Ctrl-C on Windows. Create it before
/// announcing readiness.
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
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl TerminationSignals {
    /// Starts listening. Fails (as [`ErrorKind::Transport`]) only if the OS refuses a
    /// signal handler. Needs a Tokio runtime.
    ///
    /// From then on these signals no longer end the process by themselves, even after
    /// this value is dropped (Tokio never restores the default action): keep it, and
    /// leave when [`recv`](TerminationSignals::recv) returns.
    pub fn listen() -> Result<Self> {
        let refused = |e| {
            Error::with_source(
                ErrorKind::Transport,
                "cannot listen for termination signals",
                e,
            )
        };
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(TerminationSignals {
                term: signal(SignalKind::terminate()).map_err(refused)?,
                int: signal(SignalKind::interrupt()).map_err(refused)?,
            })
        }
        #[cfg(windows)]
        {
            Ok(TerminationSignals {
                ctrl_c: tokio::signal::windows::ctrl_c().map_err(refused)?,
            })
        }
    }

    /// Waits for the next termination signal and returns its name (`"SIGTERM"`,
    /// `"SIGINT"`, or `"Ctrl-C"` on Windows).
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(windows)]
        {
            // `None` would mean the listener closed; then there is nothing to wait for.
            match self.ctrl_c.recv().await {
                Some(()) => "Ctrl-C",
                None => std::future::pending().await,
            }
        }
    }
}
