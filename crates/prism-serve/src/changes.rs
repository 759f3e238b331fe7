//! The change index: a counter that moves with every lifecycle event the gateway's view
//! applies, globally and per service. It is what Consul's blocking queries wait on
//! (`?index=N` returns once the index is past N) and what `X-Consul-Index` reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prism_mesh::Mesh;
use tokio::sync::watch;

/// The index of the last change, globally and per service.
#[derive(Debug)]
pub(crate) struct Changes {
    global: watch::Sender<u64>,
    services: Mutex<HashMap<String, u64>>,
}

impl Changes {
    /// Follows `mesh`'s events until it closes. The index starts at 1 (Consul clients
    /// take 0 for "no index").
    pub(crate) fn start(mesh: &Mesh) -> Arc<Changes> {
        let changes = Arc::new(Changes {
            global: watch::channel(1).0,
            services: Mutex::new(HashMap::new()),
        });
        let mut events = mesh.subscribe();
        let follower = changes.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                follower.changed(event.service());
            }
        });
        changes
    }

    fn changed(&self, service: &str) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let index = *self.global.borrow() + 1;
        services.insert(service.to_string(), index);
        // Under the services lock: a reader never sees the global index ahead of the
        // service's.
        self.global.send_replace(index);
    }

    /// The index of the last change of anything.
    pub(crate) fn index(&self) -> u64 {
        *self.global.borrow()
    }

    /// The index of the last change of `service` (1 when it never changed here).
    pub(crate) fn service_index(&self, service: &str) -> u64 {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.get(service).copied().unwrap_or(1)
    }

    /// Waits until the index of `service` (or of anything, for `None`) is past `after`,
    /// or `wait` has passed; returns the index then.
    pub(crate) async fn wait(&self, service: Option<&str>, after: u64, wait: Duration) -> u64 {
        let current = |changes: &Changes| match service {
            Some(service) => changes.service_index(service),
            None => changes.index(),
        };
        let mut global = self.global.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let index = current(self);
            if index > after {
                return index;
            }
            tokio::select! {
                changed = global.changed() => {
                    if changed.is_err() {
                        return current(self);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return current(self),
            }
        }
    }
}
