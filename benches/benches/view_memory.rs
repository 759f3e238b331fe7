//! Memory a peer's view holds per instance: 100,000 instances with typical metadata, a
//! full-view peer and a peer following 5 services, live bytes counted by the allocator.
//!
//! `cargo bench -p prism-benches --bench view_memory` (env: PRISM_VIEW_SERVICES=100,
//! PRISM_VIEW_PER_SERVICE=1000; PRISM_VIEW_BARE=1 for instances without tags, zone or
//! metadata).
//!
//! The records are written raw into the bucket (as owners write them), so the process
//! holds nothing of them but the view; the figure is the growth of live bytes (sizes asked
//! of the allocator) from before the peer connects to after, with the peer held.

use std::time::Duration;

use prism_benches::{
    env_usize, live_bytes, owner_record, put_records, server_with_mesh_layout, CountingAllocator,
};
use prism_mesh::{Mesh, ServiceInstance};
use prism_tests::test_options;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let services = env_usize("PRISM_VIEW_SERVICES", 100);
    let per_service = env_usize("PRISM_VIEW_PER_SERVICE", 1000);
    let (server, js) = server_with_mesh_layout().await;
    let url = server.url();
    let mut record_bytes = 0usize;
    let mut metadata_bytes = 0usize;
    let mut writes = Vec::new();
    let bare = std::env::var_os("PRISM_VIEW_BARE").is_some();
    for s in 0..services {
        for n in 0..per_service {
            // Typical: two tags, a zone, four metadata entries (PRISM_VIEW_BARE=1: none).
            let builder = ServiceInstance::builder(
                format!("svc-{s:03}"),
                format!("10.1.{}.{}", n / 250, n % 250),
                8080,
            );
            let instance = if bare {
                builder
            } else {
                builder
                    .tag("v2")
                    .tag("primary")
                    .zone(format!("eu-west-1{}", ["a", "b", "c"][n % 3]))
                    .metadata("version", "2.1.0")
                    .metadata("region", "eu-west-1")
                    .metadata("build", "4f9c2e1")
                    .metadata("weight", 100)
            }
            .build()
            .unwrap();
            metadata_bytes += instance
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.to_string().len())
                .sum::<usize>();
            let write = owner_record("prism-instances", instance, Duration::from_secs(600));
            record_bytes += write.1.len();
            writes.push(write);
        }
    }
    let count = writes.len();
    put_records(&js, writes, std::time::Duration::from_secs(600), 256).await;
    drop(js);

    let mut figures = Vec::new();
    for (name, follow) in [("following 5 services", Some(5)), ("full view", None)] {
        // What an earlier peer's tasks still held is gone by now.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let before = live_bytes();
        let mut builder = Mesh::builder()
            .nats(test_options(&url))
            .publish_expired_events(false)
            .checkpoints(prism_mesh::CheckpointPolicy::disabled());
        if let Some(n) = follow {
            builder = builder.follow_services((0..n).map(|s| format!("svc-{s:03}")));
        }
        let peer = builder.connect().await.unwrap();
        // Settle: the watch's buffers drain into the view.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let held = peer.instance_count();
        let grown = live_bytes() - before;
        figures.push((name, held, grown));
        peer.shutdown().await;
    }
    println!(
        "\n{count} instances ({services} services x {per_service}); records {:.0} bytes each on the wire, metadata {:.0} bytes of keys and values each\n",
        record_bytes as f64 / count as f64,
        metadata_bytes as f64 / count as f64
    );
    println!("| peer | instances held | live bytes | per instance |");
    println!("|---|---|---|---|");
    for (name, held, grown) in figures {
        println!(
            "| {name} | {held} | {:.1} MiB | {:.0} bytes |",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / held.max(1) as f64
        );
    }
}
