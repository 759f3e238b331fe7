//! A mesh built from a `service_discovery` configuration behaves as the file says (the
//! file's parsing is tested beside the loader, in `compat/settings`).

use std::time::Duration;

use prism_mesh::{DiscoverySettings, InstanceStatus, ServiceInstance};

fn parse(yaml: &str) -> prism_mesh::Result<DiscoverySettings> {
    DiscoverySettings::from_yaml_str(yaml, "conf/app.yaml", &|_| None)
}

#[tokio::test]
async fn mesh_built_from_settings_uses_the_configured_status_fallback_and_strategy() {
    let settings = parse(
        "service_discovery:\n  backend: memory\n  load_balancing:\n    strategy: round_robin\n    statuses: [healthy, unknown]\n    services: {config-file-sticky: consistent_hash}\n",
    )
    .unwrap();
    let mesh = settings.mesh_builder().unwrap().connect().await.unwrap();
    for port in [9100, 9101] {
        let instance = ServiceInstance::builder("config-file-orders", "127.0.0.1", port)
            .status(InstanceStatus::Unknown)
            .build()
            .unwrap();
        mesh.register(instance).await.unwrap();
    }
    prism_tests::wait_view(
        &mesh,
        "config-file-orders",
        Duration::from_secs(5),
        "two instances",
        |v| v.len() >= 2,
    )
    .await;
    // Only `unknown` instances exist: the configured fallback makes them eligible, and
    // round robin alternates between them.
    let ports: Vec<u16> = (0..4)
        .map(|_| mesh.pick("config-file-orders").unwrap().port)
        .collect();
    assert_eq!(ports[0], ports[2]);
    assert_ne!(ports[0], ports[1]);
    mesh.shutdown().await;
}
