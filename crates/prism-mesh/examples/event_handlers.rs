//! Event handlers for every lifecycle event: registered, status changed, updated,
//! deregistered and expired (an owner that stops heartbeating).
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p prism-mesh --example event_handlers
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use prism_mesh::{DiscoveryClient, InstanceStatus, MemoryStore, ServiceInstance};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryStore::new();
    let observer = DiscoveryClient::connect(common::mesh_builder(&store)).await?;
    let (tx, mut seen) = mpsc::unbounded_channel::<String>();

    let t = tx.clone();
    observer.on_service_registered(move |i| {
        let t = t.clone();
        async move {
            let _ = t.send(format!("registered {}:{}", i.service, i.port));
        }
    });
    let t = tx.clone();
    observer.on_service_status_changed(move |service, old, new| {
        let t = t.clone();
        async move {
            let _ = t.send(format!("status_changed {service} {old} -> {new}"));
        }
    });
    let t = tx.clone();
    observer.on_service_updated(move |before, after| {
        let t = t.clone();
        async move {
            let _ = t.send(format!(
                "updated {} metadata {:?} -> {:?}",
                after.service, before.metadata, after.metadata
            ));
        }
    });
    let t = tx.clone();
    observer.on_service_deregistered(move |i, reason| {
        let t = t.clone();
        async move {
            let _ = t.send(format!(
                "deregistered {} ({})",
                i.service,
                reason.unwrap_or_default()
            ));
        }
    });
    let t = tx.clone();
    observer.on_service_expired(move |i| {
        let t = t.clone();
        async move {
            let _ = t.send(format!("expired {}", i.service));
        }
    });

    // A well-behaved service.
    let service = DiscoveryClient::connect(common::mesh_builder(&store)).await?;
    let reg = service
        .register_instance(ServiceInstance::builder("pricing", "127.0.0.1", 7000).build()?)
        .await?;
    reg.set_status(InstanceStatus::Healthy, Some("warmed up"))
        .await?;
    reg.update(|i| {
        i.metadata.insert("version", "2.0");
    })
    .await?;
    reg.deregister(Some("scaled in")).await?;

    // A service that dies: short TTL, then it stops heartbeating without a word.
    let doomed = DiscoveryClient::connect_with(
        common::mesh_builder(&store)
            .instance_ttl(Duration::from_secs(1))
            .heartbeat_interval(Duration::from_millis(300)),
        prism_mesh::ClientOptions {
            auto_deregister: false,
            ..Default::default()
        },
    )
    .await?;
    doomed
        .register_instance(ServiceInstance::builder("flaky", "127.0.0.1", 7001).build()?)
        .await?;
    doomed.shutdown().await;

    let mut kinds = std::collections::BTreeSet::new();
    while kinds.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await?
            .ok_or("handlers stopped")?;
        println!("{line}");
        kinds.insert(line.split(' ').next().unwrap_or_default().to_string());
    }
    println!("every handler kind fired: {kinds:?}");
    observer.shutdown().await;
    service.shutdown().await;
    Ok(())
}
