//! A peer that follows only the services it uses: it holds their instances and hears
//! their events, and the server sends it nothing about the rest of the mesh. Following
//! another service later loads its instances before `follow` returns.
//!
//! ```sh
//! cargo run -p prism-mesh --example scoped_peer                 # in-process backend
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p prism-mesh --example scoped_peer
//! ```

#[path = "common/mod.rs"]
mod common;

use prism_mesh::{InstanceStatus, MemoryStore, ServiceInstance};

#[tokio::main]
async fn main() -> prism_mesh::Result<()> {
    let store = MemoryStore::new();
    // Names of this run's own, so a shared server's other meshes do not count.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (orders, billing) = (
        format!("orders-{}", &run[..8]),
        format!("billing-{}", &run[..8]),
    );

    let owner = common::mesh_builder(&store).connect().await?;
    for (service, port) in [(&orders, 8080), (&orders, 8081), (&billing, 9090)] {
        let me = owner
            .register(ServiceInstance::builder(service.as_str(), "127.0.0.1", port).build()?)
            .await?;
        me.set_status(InstanceStatus::Healthy, None).await?;
    }

    // A gateway that only calls `orders`.
    let gateway = common::mesh_builder(&store)
        .follow(orders.as_str())
        .connect()
        .await?;
    println!("following {:?}", gateway.interest().unwrap_or_default());
    assert_eq!(gateway.discover(&orders).len(), 2);
    assert_eq!(
        gateway.services(),
        std::slice::from_ref(&orders),
        "billing is not followed"
    );
    println!("{orders}: {}", gateway.pick_url(&orders)?);

    // Later it needs `billing` too: loaded before `follow` returns.
    gateway.follow(&billing).await?;
    assert_eq!(gateway.discover(&billing).len(), 1);
    println!("{billing}: {}", gateway.pick_url(&billing)?);

    gateway.shutdown().await;
    owner.shutdown().await;
    println!("done");
    Ok(())
}
