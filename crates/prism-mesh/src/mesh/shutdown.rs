//! How a [`Mesh`] ends: deregistering what it owns (at once, after a drain, on a signal),
//! or leaving its keys to expire like a crashed process's.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tracing::{info, warn};

use crate::error::{ErrorKind, Result};
use crate::instance::InstanceStatus;
use crate::owner::Registration;
use crate::signal::TerminationSignals;

use super::Mesh;

/// Owned instances deregistered (or put in maintenance) at once when a mesh shuts down.
const SHUTDOWN_CONCURRENCY: usize = 256;

/// Runs `step` on every owned registration, [`SHUTDOWN_CONCURRENCY`] at a time: one at a
/// time, a process owning thousands of instances would wait a round trip (and a view
/// flush) per instance to leave. Failures are logged with `failed`; a registration ended
/// through its own handle meanwhile is not a failure.
async fn on_each_owned<'a, F, Fut>(owned: &'a [Registration], failed: &str, step: F)
where
    F: Fn(&'a Registration) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    futures::stream::iter(owned)
        .for_each_concurrent(SHUTDOWN_CONCURRENCY, |registration| {
            let done = step(registration);
            async move {
                match done.await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotRegistered => {}
                    Err(e) => warn!(error = %e, id = %registration.id(), "{failed}"),
                }
            }
        })
        .await;
}

impl Mesh {
    /// Deregisters every instance this handle owns (peers see `Deregistered`), then stops
    /// heartbeats and closes the connection. Errors are logged: shutdown always finishes.
    pub async fn shutdown(&self) {
        self.stop_registering().await;
        let owned: Vec<Registration> = self.lock_owned().drain().map(|(_, r)| r).collect();
        on_each_owned(
            &owned,
            "deregistration at shutdown failed",
            |registration| async move { registration.deregister(Some("shutdown")).await },
        )
        .await;
        self.inner.closing.send_replace(true);
        self.close_stores().await;
    }

    /// Leaves the mesh without dropping a request: every instance this handle owns goes to
    /// `Maintenance` first (peers stop picking it at once), then after `drain` (time for
    /// requests in flight to finish) it is deregistered, then the mesh closes.
    pub async fn shutdown_gracefully(&self, drain: Duration) {
        self.stop_registering().await;
        let owned = self.registrations();
        on_each_owned(
            &owned,
            "could not announce maintenance",
            |registration| async move {
                registration
                    .set_status(InstanceStatus::Maintenance, Some("shutting down"))
                    .await
                    .map(|_| ())
            },
        )
        .await;
        if !owned.is_empty() {
            info!(instances = owned.len(), drain = %humantime::format_duration(drain), "draining before deregistration");
            tokio::time::sleep(drain).await;
        }
        self.shutdown().await;
    }

    /// Listens for SIGTERM or Ctrl-C (SIGINT) from now on; the returned future waits for
    /// one, then [`shutdown_gracefully`](Mesh::shutdown_gracefully) with `drain`, and
    /// yields the signal's name once the mesh is closed. Call it before announcing
    /// readiness: a SIGTERM that comes earlier still kills the process outright. Keep
    /// and await the future: dropping it leaves these signals caught and ignored (see
    /// [`TerminationSignals::listen`]).
    ///
    /// ```no_run
    /// # async fn run(mesh: prism_mesh::Mesh) -> prism_mesh::Result<()> {
    /// let leave = mesh.shutdown_on_signal(std::time::Duration::from_secs(5))?;
    /// println!("ready");
    /// let signal = leave.await;
    /// tracing::info!(signal, "left the mesh");
    /// # Ok(()) }
    /// ```
    pub fn shutdown_on_signal(
        &self,
        drain: Duration,
    ) -> Result<impl Future<Output = &'static str> + Send + 'static> {
        let mut signals = TerminationSignals::listen()?;
        let mesh = self.clone();
        Ok(async move {
            let signal = signals.recv().await;
            info!(signal, "termination signal; leaving the mesh");
            mesh.shutdown_gracefully(drain).await;
            signal
        })
    }

    /// Stops heartbeats and closes without deregistering: owned instances expire at the
    /// TTL, exactly as if the process had died.
    pub async fn close_without_deregistering(&self) {
        self.stop_registering().await;
        self.lock_owned().clear();
        self.inner.closing.send_replace(true);
        self.close_stores().await;
    }

    /// Refuses new registrations and waits for those under way to be listed.
    async fn stop_registering(&self) {
        *self.inner.accepting.write().await = false;
    }
}
