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
