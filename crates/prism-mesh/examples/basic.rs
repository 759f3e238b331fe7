//! Basic use, mirroring the Python module's first example: register myself, become
//! healthy, find a service and its URL, list services, leave.
//!
//! ```sh
//! cargo run -p prism-mesh --example basic                 # in-process backend
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p prism-mesh --example basic
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use prism_mesh::{DiscoveryClient, InstanceStatus, MemoryStore, Metadata};

#[tokio::main]
async fn main() -> prism_mesh::Result<()> {
    let client = DiscoveryClient::connect(common::mesh_builder(&MemoryStore::new())).await?;

    let mut metadata = Metadata::new();
    metadata.insert("version", "1.4.2");
    metadata.insert("weight", 150);
    let me = client
        .register_myself(
            "market-data",
            "127.0.0.1",
            8080,
            metadata,
            vec!["public".into()],
        )
        .await?;
    println!(
        "registered {} as {} at {}",
        me.service,
        me.id,
        me.base_url()
    );
    client.update_my_status(InstanceStatus::Healthy).await?;

    let found = client
        .wait_for_service("market-data", Duration::from_secs(5))
        .await?;
    println!("market-data has {} instance(s)", found.len());
    // The view catches up with our own status change asynchronously.
    while client.get_service("market-data").is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = client.get_service_url("market-data")?;
    println!("get_service_url(market-data) = {url}");
    assert_eq!(url, "http://127.0.0.1:8080");
    println!("services: {:?}", client.list_all_services());
    assert!(client
        .list_all_services()
        .contains(&"market-data".to_string()));

    client.deregister_myself().await?;
    client.shutdown().await;
    println!("deregistered and shut down");
    Ok(())
}
