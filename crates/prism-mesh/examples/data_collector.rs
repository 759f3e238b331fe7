//! A data collector that registers itself, finds its storage service, ships records to
//! it over HTTP, and notices when storage leaves.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p prism-mesh --example data_collector
//! ```

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prism_mesh::{DiscoveryClient, InstanceStatus, MemoryStore, Metadata};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryStore::new();

    // The storage service: counts the records it receives.
    let stored = Arc::new(AtomicUsize::new(0));
    let counter = stored.clone();
    let storage_port = common::serve_http(move |_, _, body| {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(body.lines().count(), Ordering::SeqCst);
            format!("stored, {n} before")
        }
    })
    .await?;
    let storage = DiscoveryClient::connect(common::mesh_builder(&store)).await?;
    storage
        .register_myself(
            "storage",
            "127.0.0.1",
            storage_port,
            Metadata::new(),
            vec!["timeseries".into()],
        )
        .await?;
    storage.update_my_status(InstanceStatus::Healthy).await?;

    // The collector.
    let collector = DiscoveryClient::connect(common::mesh_builder(&store)).await?;
    collector
        .register_myself("data-collector", "127.0.0.1", 9300, Metadata::new(), vec![])
        .await?;
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel();
    collector.on_service_deregistered(move |instance, reason| {
        let gone_tx = gone_tx.clone();
        async move {
            if instance.service == "storage" {
                let _ = gone_tx.send(reason);
            }
        }
    });
    collector
        .wait_for_service("storage", Duration::from_secs(5))
        .await?;
    while collector.get_service("storage").is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    collector.update_my_status(InstanceStatus::Healthy).await?;

    for batch in 0..5 {
        let records: String = (0..10)
            .map(|n| format!("BTC-USD,{batch},{n},65000.{n}\n"))
            .collect();
        let url = collector.get_service_url("storage")?;
        let reply = common::http_request(&url, "POST", "/write", &records).await?;
        println!("batch {batch} -> {url}: {reply}");
    }
    assert_eq!(stored.load(Ordering::SeqCst), 50);

    storage.shutdown().await;
    let reason = tokio::time::timeout(Duration::from_secs(5), gone.recv()).await?;
    println!("storage left the mesh ({reason:?}); the collector would buffer now");
    assert!(collector.get_service("storage").is_err());

    collector.shutdown().await;
    Ok(())
}
