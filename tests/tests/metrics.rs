//! Prometheus metrics: names from the Python module, figures that follow what the mesh
//! does, and the HTTP endpoint, against a real nats-server.

use std::time::Duration;

use prism_mesh::ServiceInstance;
use prism_tests::{fast_mesh, http_get, wait_view, NatsServer};

const WAIT: Duration = Duration::from_secs(10);

/// The value of the sample named exactly `sample` (name plus labels) in `text`.
fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_registrations_lookups_malformed_input_and_reconnects() {
    let mut server = NatsServer::start();
    let owner = fast_mesh(&server.url()).connect().await.unwrap();
    let peer = fast_mesh(&server.url()).connect().await.unwrap();
    let mut registrations = Vec::new();
    for port in [7001, 7002] {
        let instance = ServiceInstance::builder("metered", "127.0.0.1", port)
            .build()
            .unwrap();
        registrations.push(owner.register(instance).await.unwrap());
    }
    wait_view(&peer, "metered", WAIT, "2 instances", |v| v.len() == 2).await;
    registrations[1].deregister(Some("test")).await.unwrap();
    wait_view(&peer, "metered", WAIT, "1 instance", |v| v.len() == 1).await;
    for _ in 0..3 {
        peer.discover("metered");
    }

    let text = owner.render_metrics();
    assert_eq!(
        sample(&text, "service_discovery_registrations_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "service_discovery_deregistrations_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "service_discovery_owned_instances"),
        Some(1.0)
    );

    let endpoint = peer.serve_metrics("127.0.0.1:0").await.unwrap();
    let (status, headers, body) = http_get(endpoint.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    assert_eq!(
        sample(&body, "service_discovery_instances_active"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "service_discovery_instances{service=\"metered\",status=\"starting\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(sample(&body, "service_discovery_discoveries_total").unwrap() >= 3.0);
    assert_eq!(
        sample(&body, "service_discovery_registrations_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            "service_discovery_health_checks_total{result=\"passing\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&body, "service_discovery_changes_applied_total").unwrap() >= 3.0);
    assert!(sample(&body, "service_discovery_events_emitted_total").unwrap() >= 2.0);
    let lag = sample(&body, "service_discovery_view_lag_seconds").unwrap();
    assert!((0.0..5.0).contains(&lag), "view lag {lag}");
    assert!(sample(&body, "service_discovery_view_pending_messages").is_some());
    for name in [
        "malformed_messages",
        "expiries",
        "resyncs",
        "reconnects",
        "reasserts",
        "heartbeats_late",
    ] {
        assert!(
            body.contains(&format!("# TYPE service_discovery_{name} counter")),
            "{name}"
        );
    }

    // Garbage on the bucket is counted.
    let client = async_nats::connect(server.url()).await.unwrap();
    let key = format!("$KV.prism-instances.metered.{}", uuid::Uuid::new_v4());
    // With a TTL, as an owner's put: the body itself is what the peer must refuse.
    client
        .publish_with_headers(key, prism_tests::put_headers("60s"), "not msgpack".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sample(
        &peer.render_metrics(),
        "service_discovery_malformed_messages_total",
    ) != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "malformed message never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A server restart is a reconnect.
    server.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sample(&peer.render_metrics(), "service_discovery_reconnects_total") < Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reconnect never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, _, _) = http_get(endpoint.local_addr(), "/other").await;
    assert_eq!(status, 404);
    owner.shutdown().await;
    peer.shutdown().await;
}
