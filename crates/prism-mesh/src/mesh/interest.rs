//! Which services this peer follows. A mesh follows every service unless its builder
//! named some ([`MeshBuilder::follow`](super::MeshBuilder::follow)); then the server sends
//! it only those services' keys, and the interest grows as the code registers or reads
//! other services. Growing it takes one snapshot of the services followed.

use tracing::warn;

use super::Mesh;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::validate_service_name;

impl Mesh {
    /// Follows `service` from now on and returns once the view holds its current
    /// instances (at once when it is followed already, or when this mesh follows every
    /// service). Registering an instance and [`wait_for_service`](Mesh::wait_for_service)
    /// follow their service themselves.
    pub async fn follow(&self, service: &str) -> Result<()> {
        validate_service_name(service)?;
        // The common case, and on every registration: followed and loaded already.
        let shard = self.shard(service);
        {
            let interest = shard.interest.borrow();
            if interest.covers(service) && *shard.loaded.borrow() >= interest.generation {
                return Ok(());
            }
        }
        let mut generation = None;
        shard.interest.send_if_modified(|interest| {
            let added = interest.add(service);
            generation = Some(interest.generation);
            added
        });
        let generation = generation.unwrap_or_default();
        let mut loaded = shard.loaded.clone();
        let timeout = self
            .inner
            .timing
            .instance_ttl
            .max(std::time::Duration::from_secs(10));
        let waited = tokio::time::timeout(timeout, async {
            loaded.wait_for(|seen| *seen >= generation).await.is_ok()
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::new(ErrorKind::Closed, "the mesh is shut down")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the view did not load {service:?} within {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }

    /// The services this view follows, sorted; `None` when it follows every service.
    pub fn interest(&self) -> Option<Vec<String>> {
        let mut followed = std::collections::BTreeSet::new();
        for shard in &self.inner.shards {
            let interest = shard.interest.borrow();
            followed.extend(interest.services.as_ref()?.iter().cloned());
        }
        Some(followed.into_iter().collect())
    }

    /// A synchronous read of `service`: one not followed yet is followed from now on, and
    /// this first read (which found the view without it) is warned of once.
    pub(super) fn read_of(&self, service: &str) {
        let shard = self.shard(service);
        if shard.interest.borrow().covers(service) || validate_service_name(service).is_err() {
            return;
        }
        shard
            .interest
            .send_if_modified(|interest| interest.add(service));
        let first = self
            .inner
            .unfollowed_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_string());
        if first {
            warn!(
                service,
                "read before it was followed: this read found no instances; follow it on the \
                 builder or with `Mesh::follow` before reading"
            );
        }
    }
}
