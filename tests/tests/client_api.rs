//! The Python-shaped client API (`DiscoveryClient` and the process-wide functions)
//! against a real nats-server.

use std::sync::Arc;
use std::time::Duration;

use prism_mesh::{
    ClientOptions, DiscoveryClient, ErrorKind, InstanceStatus, Metadata, Selection, ServiceInstance,
};
use prism_tests::{fast_mesh, test_options, wait_view, NatsServer};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn metadata(pairs: &[(&str, serde_json::Value)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_myself_discover_balance_update_and_deregister_like_the_python_client() {
    let server = NatsServer::start();
    let me = DiscoveryClient::connect(fast_mesh(&server.url()))
        .await
        .unwrap();
    let other = DiscoveryClient::connect(fast_mesh(&server.url()))
        .await
        .unwrap();

    let (tx, mut seen) = mpsc::unbounded_channel::<String>();
    let sink = tx.clone();
    other.on_service_registered(move |i| {
        let sink = sink.clone();
        async move {
            let _ = sink.send(format!("registered {}", i.port));
        }
    });
    let sink = tx.clone();
    other.on_service_status_changed(move |service, old, new| {
        let sink = sink.clone();
        async move {
            let _ = sink.send(format!("status {service} {old}->{new}"));
        }
    });
    let sink = tx.clone();
    other.on_service_deregistered(move |i, reason| {
        let sink = sink.clone();
        async move {
            let _ = sink.send(format!("deregistered {} {reason:?}", i.port));
        }
    });

    let instance = me
        .register_myself(
            "quotes",
            "10.1.2.3",
            8081,
            metadata(&[("weight", 300.into()), ("region", "eu".into())]),
            vec!["internal".into()],
        )
        .await
        .unwrap();
    assert_eq!(instance.weight, 300, "weight taken from metadata");
    assert_eq!(instance.base_url(), "http://10.1.2.3:8081");
    let again = me
        .register_myself("quotes", "10.1.2.3", 8082, Metadata::new(), vec![])
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidInput, "{again}");

    // A second instance through the lower-level call, for balancing.
    let helper = other
        .register_instance(
            ServiceInstance::builder("quotes", "10.1.2.4", 8081)
                .status(InstanceStatus::Healthy)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    me.update_my_status(InstanceStatus::Healthy).await.unwrap();
    other.wait_for_service("quotes", WAIT).await.unwrap();
    wait_view(other.mesh(), "quotes", WAIT, "both healthy", |v| {
        v.len() == 2 && v.iter().all(|i| i.status == InstanceStatus::Healthy)
    })
    .await;
    assert_eq!(other.list_all_services(), vec!["quotes".to_string()]);
    assert_eq!(other.discover("quotes").len(), 2);

    // Weighted round robin by default: 300 vs 100.
    let mine = (0..400)
        .filter(|_| other.get_service("quotes").unwrap().host == "10.1.2.3")
        .count();
    assert_eq!(mine, 300);
    assert!(other
        .get_service_url("quotes")
        .unwrap()
        .starts_with("http://10.1.2."));

    // Tag and metadata filters keep internal instances apart.
    let internal = other.discover_matching("quotes", &Selection::new().with_all_tags(["internal"]));
    assert_eq!(internal.len(), 1);
    assert_eq!(internal[0].host, "10.1.2.3");
    let eu = other.discover_matching("quotes", &Selection::new().with_metadata("region", "eu"));
    assert_eq!(eu.len(), 1);

    me.deregister_myself().await.unwrap();
    wait_view(other.mesh(), "quotes", WAIT, "one left", |v| v.len() == 1).await;
    let err = me
        .update_my_status(InstanceStatus::Healthy)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRegistered);

    let mut lines = Vec::new();
    while lines.len() < 4 {
        match tokio::time::timeout(WAIT, seen.recv()).await {
            Ok(Some(line)) => lines.push(line),
            _ => panic!("handlers saw only {lines:?}"),
        }
    }
    assert!(lines.contains(&"registered 8081".to_string()), "{lines:?}");
    assert!(
        lines.contains(&"status quotes starting->healthy".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"deregistered 8081 Some(\"deregistered by its owner\")".to_string()),
        "{lines:?}"
    );
    helper.deregister(None).await.unwrap();
    me.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_auto_deregister_leaves_the_instance_to_expire() {
    let server = NatsServer::start();
    let watcher = fast_mesh(&server.url()).connect().await.unwrap();
    let mut events = watcher.subscribe();
    let options = ClientOptions {
        auto_deregister: false,
        ..ClientOptions::default()
    };
    let client = DiscoveryClient::connect_with(fast_mesh(&server.url()), options)
        .await
        .unwrap();
    let me = client
        .register_myself("lingering", "127.0.0.1", 9100, Metadata::new(), vec![])
        .await
        .unwrap();
    client.shutdown().await;
    let event = prism_tests::wait_event(&mut events, WAIT, "expiry", |e| {
        e.instance().id == me.id && e.kind() != prism_mesh::EventKind::Registered
    })
    .await;
    assert_eq!(event.kind(), prism_mesh::EventKind::Expired, "{event:?}");
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_wide_functions_use_the_default_client_once_configured() {
    let err = prism_mesh::discover_service("anything").unwrap_err();
    assert!(err.to_string().contains("configure_default"), "{err}");
    let server = NatsServer::start();
    prism_mesh::configure_default(fast_mesh(&server.url()), ClientOptions::default())
        .await
        .unwrap();
    let again =
        prism_mesh::configure_default(fast_mesh(&server.url()), ClientOptions::default()).await;
    assert!(again.is_err(), "configured twice");

    let instance: Arc<ServiceInstance> =
        prism_mesh::register_service("collector", "127.0.0.1", 9200, Metadata::new(), vec![])
            .await
            .unwrap();
    let client = prism_mesh::default_client().unwrap();
    client
        .update_my_status(InstanceStatus::Healthy)
        .await
        .unwrap();
    wait_view(client.mesh(), "collector", WAIT, "healthy", |v| {
        v.iter().any(|i| i.status == InstanceStatus::Healthy)
    })
    .await;
    assert_eq!(
        prism_mesh::discover_service("collector").unwrap()[0].id,
        instance.id
    );
    assert_eq!(
        prism_mesh::get_service_url("collector").unwrap(),
        "http://127.0.0.1:9200"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_the_client_to_an_unreachable_server_names_the_url_within_bounded_time() {
    let url = format!("nats://127.0.0.1:{}", prism_tests::free_port());
    let started = std::time::Instant::now();
    let builder = fast_mesh(&url).nats(test_options(&url).connect_deadline(Duration::from_secs(2)));
    let err = DiscoveryClient::connect(builder).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_a_yaml_file_checks_itself_and_serves_metrics() {
    let server = NatsServer::start();
    let http = prism_tests::TestHttpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service_discovery.yaml");
    std::fs::write(
        &path,
        format!(
            "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      url: {}\n  instance_ttl: 2s\n  heartbeat_interval: 500ms\n  health_check_interval: 100ms\n  drain_period: 0\n  metrics:\n    listen: 127.0.0.1:0\n",
            server.url()
        ),
    )
    .unwrap();
    let settings = prism_mesh::DiscoverySettings::from_file(&path).unwrap();
    let client = DiscoveryClient::from_settings(&settings).await.unwrap();
    let me = client
        .register_myself(
            "self-checked",
            "127.0.0.1",
            http.port(),
            Metadata::new(),
            vec![],
        )
        .await
        .unwrap();
    // The self check (HTTP /health every 100 ms, rise 2) makes it healthy by itself.
    wait_view(client.mesh(), "self-checked", WAIT, "healthy", |v| {
        v.iter()
            .any(|i| i.id == me.id && i.status == InstanceStatus::Healthy)
    })
    .await;
    let addr = client
        .metrics_addr()
        .expect("metrics endpoint from the file");
    let (_, _, body) = prism_tests::http_get(addr, "/metrics").await;
    assert!(
        body.contains("service_discovery_registrations_total 1"),
        "{body}"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_register_registers_the_files_service_at_start_and_a_crash_leaves_within_cleanup_interval(
) {
    let server = NatsServer::start();
    let peer = fast_mesh(&server.url()).connect().await.unwrap();
    let mut expired = peer.subscribe_filtered(prism_mesh::EventKind::Expired.into());
    let dir = tempfile::tempdir().unwrap();
    let file = |auto_register: bool| {
        let path = dir.path().join(format!("auto-{auto_register}.yaml"));
        std::fs::write(
            &path,
            format!(
                "service_discovery:\n  backend: nats\n  backend_config:\n    nats:\n      url: {}\n  instance_ttl: 2s\n  heartbeat_interval: 500ms\n  cleanup_interval: 5s\n  auto_register: {auto_register}\n  service:\n    name: auto-registered\n    host: 127.0.0.1\n    port: 9300\n    tags: [v2]\n    zone: z1\n    metadata: {{ weight: 7 }}\n",
                server.url()
            ),
        )
        .unwrap();
        prism_mesh::DiscoverySettings::from_file(&path).unwrap()
    };

    let off = DiscoveryClient::from_settings(&file(false)).await.unwrap();
    assert!(off.my_registration().is_none(), "auto_register: false");

    let client = DiscoveryClient::from_settings(&file(true)).await.unwrap();
    let me = client
        .my_registration()
        .expect("registered at start")
        .instance();
    wait_view(&peer, "auto-registered", WAIT, "the file's instance", |v| {
        v.iter().any(|i| i.id == me.id)
    })
    .await;
    let seen = peer.discover("auto-registered");
    assert_eq!(seen.len(), 1, "auto_register: false registered nothing");
    let seen = &seen[0];
    assert_eq!((seen.port, seen.weight), (9300, 7));
    assert_eq!(
        (seen.tags.to_vec(), seen.zone.as_deref()),
        (vec!["v2".into()], Some("z1"))
    );

    // A crash: the handle goes without deregistering. The Python module's cleanup loop
    // removed such an instance within instance_ttl + cleanup_interval; so does the mesh.
    drop(client);
    let crashed = std::time::Instant::now();
    let event = prism_tests::next_event(&mut expired, WAIT, "the crashed instance's expiry").await;
    assert_eq!(event.instance().id, me.id);
    assert!(
        crashed.elapsed() <= Duration::from_secs(7),
        "listed {:?} after the crash, beyond instance_ttl + cleanup_interval",
        crashed.elapsed()
    );
    assert!(peer.discover("auto-registered").is_empty());
    off.shutdown().await;
    peer.shutdown().await;
}
