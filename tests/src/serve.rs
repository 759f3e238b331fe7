//! A `prism serve` gateway in the test process, on free loopback ports.

use prism_mesh::Mesh;
use prism_serve::{Gateway, ServeOptions};

/// A gateway over its own peer of the mesh at `url` (HTTP and DNS on free ports, agent
/// registrations allowed).
pub async fn gateway(url: &str) -> (Mesh, Gateway) {
    gateway_with(url, |options| options).await
}

/// [`gateway`] with options adjusted by `adjust`.
pub async fn gateway_with(
    url: &str,
    adjust: impl FnOnce(ServeOptions) -> ServeOptions,
) -> (Mesh, Gateway) {
    let mesh = crate::fast_mesh(url)
        .connect()
        .await
        .expect("gateway's mesh");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let options = adjust(ServeOptions::new().http(any).dns(any).allow_register(true));
    let gateway = Gateway::start(mesh.clone(), options)
        .await
        .expect("gateway starts");
    (mesh, gateway)
}

/// A nats-server, an owner peer for the test's instances and a gateway over its own peer:
/// the stage of most `prism serve` tests.
pub struct Served {
    pub server: crate::NatsServer,
    /// A peer the test registers instances with.
    pub owner: Mesh,
    /// The gateway's own peer.
    pub mesh: Mesh,
    pub gateway: Gateway,
}

impl Served {
    pub async fn start() -> Served {
        Served::start_with(|options| options).await
    }

    pub async fn start_with(adjust: impl FnOnce(ServeOptions) -> ServeOptions) -> Served {
        let server = crate::NatsServer::start();
        let owner = crate::fast_mesh(&server.url())
            .connect()
            .await
            .expect("owner's mesh");
        let (mesh, gateway) = gateway_with(&server.url(), adjust).await;
        Served {
            server,
            owner,
            mesh,
            gateway,
        }
    }

    /// `http://<gateway>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.http_addr().expect("http"))
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
        self.mesh.shutdown().await;
        self.owner.shutdown().await;
    }
}

/// A healthy instance of `service` at `host:port` with one tag.
pub fn healthy(service: &str, host: &str, port: u16, tag: &str) -> prism_mesh::ServiceInstance {
    prism_mesh::ServiceInstance::builder(service, host, port)
        .tag(tag)
        .status(prism_mesh::InstanceStatus::Healthy)
        .build()
        .expect("a valid instance")
}
