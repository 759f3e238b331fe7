//! An API gateway that routes `/orders/...` and `/users/...` to instances it discovers,
//! balanced by weight, and stops routing to an instance the moment it goes into
//! maintenance. Backends are real HTTP servers started here.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p prism-mesh --example api_gateway
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prism_mesh::{DiscoveryClient, InstanceStatus, MemoryStore, ServiceInstance};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryStore::new();
    // The backends: two orders instances (weights 200 and 100) and one users instance.
    let backends = DiscoveryClient::connect(common::mesh_builder(&store)).await?;
    let mut registrations = Vec::new();
    for (service, name, weight) in [
        ("orders", "orders-a", 200),
        ("orders", "orders-b", 100),
        ("users", "users-a", 100),
    ] {
        let port =
            common::serve_http(move |_, path, _| async move { format!("{name} served {path}") })
                .await?;
        let instance = ServiceInstance::builder(service, "127.0.0.1", port)
            .weight(weight)
            .status(InstanceStatus::Healthy)
            .build()?;
        registrations.push(backends.register_instance(instance).await?);
    }

    // The gateway: its own client, routing by the first path segment.
    let gateway = Arc::new(DiscoveryClient::connect(common::mesh_builder(&store)).await?);
    for service in ["orders", "users"] {
        gateway
            .wait_for_service(service, Duration::from_secs(5))
            .await?;
    }
    while gateway.discover("orders").len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let router = gateway.clone();
    let gateway_port = common::serve_http(move |method, path, body| {
        let router = router.clone();
        async move {
            let service = path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            match router.get_service_url(&service) {
                Ok(url) => common::http_request(&url, &method, &path, &body)
                    .await
                    .unwrap_or_else(|e| format!("upstream error: {e}")),
                Err(e) => format!("no route: {e}"),
            }
        }
    })
    .await?;
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");

    let mut served = BTreeMap::new();
    for n in 0..30 {
        let body = common::http_request(&gateway_url, "GET", &format!("/orders/{n}"), "").await?;
        *served
            .entry(body.split(' ').next().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    println!("30 order requests through the gateway: {served:?}");
    assert_eq!(served.get("orders-a"), Some(&20), "weight 200 of 300");
    assert_eq!(served.get("orders-b"), Some(&10));
    let user = common::http_request(&gateway_url, "GET", "/users/42", "").await?;
    println!("GET /users/42 -> {user}");
    assert_eq!(user, "users-a served /users/42");

    registrations[0]
        .set_status(InstanceStatus::Maintenance, Some("deploying"))
        .await?;
    while gateway
        .discover("orders")
        .iter()
        .all(|i| i.status != InstanceStatus::Maintenance)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 0..10 {
        let body = common::http_request(&gateway_url, "GET", &format!("/orders/{n}"), "").await?;
        assert!(
            body.starts_with("orders-b"),
            "maintenance instance got a request: {body}"
        );
    }
    println!("orders-a in maintenance: 10 of 10 requests went to orders-b");
    let missing = common::http_request(&gateway_url, "GET", "/payments/1", "").await?;
    println!("GET /payments/1 -> {missing}");
    assert!(missing.starts_with("no route"));

    backends.shutdown().await;
    gateway.shutdown().await;
    Ok(())
}
