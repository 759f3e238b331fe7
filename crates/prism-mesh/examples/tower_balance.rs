//! Balances real HTTP requests across discovered instances with `tower::balance::p2c`.
//!
//! Starts three small HTTP servers, registers them in a mesh (NATS when `NATS_URL` is set,
//! otherwise the in-memory backend), then sends requests through a tower power-of-two-
//! choices balancer fed by `ServiceDiscover`. One instance is put in maintenance half way:
//! the balancer stops sending it requests as soon as the view changes.
//!
//! ```sh
//! cargo run -p prism-mesh --example tower_balance --features tower
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p prism-mesh --example tower_balance --features tower
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

#[path = "common/mod.rs"]
mod common;

use prism_mesh::balance::ServiceDiscover;
use prism_mesh::{InstanceStatus, MemoryStore, Mesh, NatsOptions, Selection, ServiceInstance};
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{BoxError, Service, ServiceExt};

/// An HTTP GET client for one instance, as a tower service.
#[derive(Clone, Debug)]
struct HttpGet {
    address: String,
}

impl Service<&'static str> for HttpGet {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, path: &'static str) -> Self::Future {
        let base_url = format!("http://{}", self.address);
        Box::pin(async move { common::http_request(&base_url, "GET", path, "").await })
    }
}

/// The tower stack: p2c over pending-request load over the mesh's discovery stream.
type Balanced = Balance<
    PendingRequestsDiscover<ServiceDiscover<fn(&ServiceInstance) -> HttpGet, HttpGet>>,
    &'static str,
>;

async fn send(balancer: &mut Balanced, count: usize) -> Result<BTreeMap<String, usize>, BoxError> {
    let mut answers = BTreeMap::new();
    for _ in 0..count {
        let body = balancer.ready().await?.call("/hello").await?;
        *answers.entry(body).or_insert(0) += 1;
    }
    Ok(answers)
}

fn http_get(instance: &ServiceInstance) -> HttpGet {
    HttpGet {
        address: format!("{}:{}", instance.host, instance.port),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mesh = match std::env::var("NATS_URL") {
        Ok(url) => {
            Mesh::builder()
                .nats(NatsOptions::new(url))
                .connect()
                .await?
        }
        Err(_) => {
            Mesh::builder()
                .memory_store(MemoryStore::new())
                .connect()
                .await?
        }
    };

    let mut registrations = Vec::new();
    for n in 0..3 {
        let port = common::serve_http(move |_, _, _| async move { format!("backend-{n}") }).await?;
        let instance = ServiceInstance::builder("hello-http", "127.0.0.1", port)
            .status(InstanceStatus::Healthy)
            .build()?;
        registrations.push(mesh.register(instance).await?);
    }
    mesh.wait_for_service("hello-http", Duration::from_secs(5))
        .await?;
    while mesh.discover("hello-http").len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let make: fn(&ServiceInstance) -> HttpGet = http_get;
    let discover = ServiceDiscover::new(&mesh, "hello-http", Selection::new(), make);
    let mut balancer = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));

    let answers = send(&mut balancer, 300).await?;
    println!("300 requests over 3 healthy backends: {answers:?}");
    assert_eq!(answers.len(), 3, "every backend served requests");

    registrations[0]
        .set_status(InstanceStatus::Maintenance, Some("example: draining"))
        .await?;
    // The view learns the change asynchronously; the balancer applies it on its next poll.
    while mesh
        .discover("hello-http")
        .iter()
        .any(|i| i.status == InstanceStatus::Maintenance)
        .then_some(())
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answers = send(&mut balancer, 300).await?;
    println!("300 requests with backend-0 in maintenance: {answers:?}");
    assert!(
        !answers.contains_key("backend-0"),
        "maintenance instance got requests"
    );
    assert_eq!(answers.len(), 2);

    mesh.shutdown().await;
    Ok(())
}
