//! `prism serve` under load: with 10,000 instances in the mesh, the latency of
//! `GET /v1/health/service/{name}` at 1,000 requests/s and of DNS SRV queries at 1,000
//! queries/s (each beside the gateway's cheapest answer, `/healthz`, at the same rate), and
//! how much later an event arrives over SSE than through a library subscription, measured
//! on the same changes.
//!
//! `cargo bench -p prism-benches --bench serve` (env: PRISM_SERVE_INSTANCES=10000 in
//! services of PRISM_SERVE_PER_SERVICE=100, PRISM_SERVE_REQUESTS=5000 per figure,
//! PRISM_SERVE_EVENTS=300).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};
use http_body_util::BodyExt;
use prism_benches::{env_usize, owner_record, percentile, put_records, server_with_mesh_layout};
use prism_mesh::{EventKind, InstanceStatus, Mesh, ServiceInstance};
use prism_serve::{Gateway, ServeOptions};
use prism_tests::test_options;

/// Sends `count` requests for `path` at `rate` per second, open loop, over `connections`
/// keep-alive connections; the latency of each.
async fn http_at_rate(addr: SocketAddr, path: &str, count: usize, rate: usize) -> Vec<Duration> {
    const CONNECTIONS: usize = 8;
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        senders.push(Arc::new(tokio::sync::Mutex::new(sender)));
    }
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let sender = senders[n % CONNECTIONS].clone();
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let mut sender = sender.lock().await;
            let request = hyper::Request::get(path)
                .header("host", "bench")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            assert!(response.status().is_success(), "{}", response.status());
            response.into_body().collect().await.expect("body");
            began.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.push(task.await.expect("request task"));
    }
    latencies.sort();
    latencies
}

/// Sends `count` SRV queries for `name` at `rate` per second, open loop; the latency of
/// each (every answer checked to hold `answers` records).
async fn dns_at_rate(
    addr: SocketAddr,
    name: &str,
    count: usize,
    rate: usize,
    answers: usize,
) -> Vec<Duration> {
    let socket = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp"),
    );
    socket.connect(addr).await.expect("connect");
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; count]));
    let receiver = {
        let socket = socket.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut buffer = vec![0u8; 65535];
            while latencies.len() < count {
                let n = socket.recv(&mut buffer).await.expect("recv");
                let arrived = Instant::now();
                let reply = Message::from_vec(&buffer[..n]).expect("a DNS message");
                assert_eq!(reply.answers().len(), answers, "SRV answers");
                let id = usize::from(reply.id());
                let began = sent.lock().unwrap()[id].expect("sent");
                latencies.push(arrived - began);
            }
            latencies
        })
    };
    let name = Name::from_ascii(name).expect("name");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for n in 0..count {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let mut query = Message::new();
        query
            .set_id(u16::try_from(n).expect("ids fit"))
            .add_query(Query::query(name.clone(), RecordType::SRV));
        let bytes = query.to_vec().expect("encode");
        sent.lock().unwrap()[n] = Some(Instant::now());
        socket.send(&bytes).await.expect("send");
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .expect("every answer within a minute")
        .expect("receiver");
    latencies.sort();
    latencies
}

fn row(name: &str, latencies: &[Duration]) -> String {
    format!(
        "| {name} | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
        latencies.len(),
        percentile(latencies, 0.5).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let instances = env_usize("PRISM_SERVE_INSTANCES", 10_000);
    let per_service = env_usize("PRISM_SERVE_PER_SERVICE", 100).min(instances);
    let requests = env_usize("PRISM_SERVE_REQUESTS", 5_000).min(65_000);
    let events = env_usize("PRISM_SERVE_EVENTS", 300);
    let services = instances.div_ceil(per_service);
    let (server, js) = server_with_mesh_layout().await;
    let url = server.url();
    let mut writes = Vec::with_capacity(instances);
    for n in 0..instances {
        let instance = ServiceInstance::builder(
            format!("svc-{:04}", n / per_service),
            format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256),
            8080,
        )
        .tag("v2")
        .zone("eu-west-1a")
        .metadata("version", "2.1.0")
        .status(InstanceStatus::Healthy)
        .build()
        .expect("instance");
        writes.push(owner_record(
            "prism-instances",
            instance,
            Duration::from_secs(600),
        ));
    }
    put_records(&js, writes, Duration::from_secs(600), 256).await;

    let mesh = Mesh::builder()
        .nats(test_options(&url))
        .connect()
        .await
        .expect("gateway mesh");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gateway = Gateway::start(mesh.clone(), ServeOptions::new().http(any).dns(any))
        .await
        .expect("gateway");
    let http = gateway.http_addr().expect("http");
    let dns = gateway.dns_addr().expect("dns");
    assert_eq!(
        mesh.instance_count(),
        instances,
        "the gateway's view holds the mesh"
    );
    let target = "svc-0000";
    let size = mesh.discover(target).len();

    // Warm up both paths, then measure.
    http_at_rate(http, &format!("/v1/health/service/{target}"), 200, 1000).await;
    let health = http_at_rate(
        http,
        &format!("/v1/health/service/{target}"),
        requests,
        1000,
    )
    .await;
    let passing = http_at_rate(
        http,
        &format!("/v1/health/service/{target}?passing"),
        requests,
        1000,
    )
    .await;
    let floor = http_at_rate(http, "/healthz", requests, 1000).await;
    dns_at_rate(dns, &format!("{target}.service.prism."), 200, 1000, size).await;
    let srv = dns_at_rate(
        dns,
        &format!("{target}.service.prism."),
        requests,
        1000,
        size,
    )
    .await;

    // Events: one owner changes an instance's status; a library subscriber and an SSE
    // client of the gateway time the arrival of each change from the same start.
    let owner = Mesh::builder()
        .nats(test_options(&url))
        .connect()
        .await
        .expect("owner");
    let watcher = Mesh::builder()
        .nats(test_options(&url))
        .follow("bench-events")
        .connect()
        .await
        .expect("watcher");
    let registration = owner
        .register(
            ServiceInstance::builder("bench-events", "10.9.9.9", 1)
                .status(InstanceStatus::Healthy)
                .build()
                .expect("instance"),
        )
        .await
        .expect("register");
    let mut library = watcher.subscribe_filtered(
        prism_mesh::EventFilter::service("bench-events").kind(EventKind::StatusChanged),
    );
    let stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let response = sender
        .send_request(
            hyper::Request::get("/v1/events?service=bench-events")
                .header("host", "bench")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("SSE response");
    let mut sse = response.into_body().into_data_stream();
    let (sse_tx, mut sse_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut pending = String::new();
        while let Some(Ok(chunk)) = sse.next().await {
            let arrived = Instant::now();
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let message: String = pending.drain(..end + 2).collect();
                if message.contains("event: status") {
                    let _ = sse_tx.send(arrived);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut via_library = Vec::with_capacity(events);
    let mut via_sse = Vec::with_capacity(events);
    for n in 0..events + 20 {
        let status = if n % 2 == 0 {
            InstanceStatus::Unhealthy
        } else {
            InstanceStatus::Healthy
        };
        let began = Instant::now();
        registration.set_status(status, None).await.expect("status");
        tokio::time::timeout(Duration::from_secs(5), library.next())
            .await
            .expect("library event")
            .expect("open");
        let library_at = Instant::now();
        let sse_at = tokio::time::timeout(Duration::from_secs(5), sse_rx.recv())
            .await
            .expect("SSE event")
            .expect("open");
        if n >= 20 {
            via_library.push(library_at - began);
            via_sse.push(sse_at - began);
        }
    }
    via_library.sort();
    via_sse.sort();

    println!("\n{instances} instances in {services} services; the queried service has {size}; {requests} requests per row at 1,000/s\n");
    println!("| request | count | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "{}",
        row(
            &format!("GET /v1/health/service/{{name}} ({size} instances)"),
            &health
        )
    );
    println!("{}", row("GET /v1/health/service/{name}?passing", &passing));
    println!("{}", row("GET /healthz (the HTTP floor)", &floor));
    println!(
        "{}",
        row(&format!("DNS SRV over UDP ({size} answers)"), &srv)
    );
    println!(
        "\n| event arrival after the owner's write ({events} status changes) | p50 | p99 |\n|---|---|---|\n| library subscription | {:.3} ms | {:.3} ms |\n| SSE through the gateway | {:.3} ms | {:.3} ms |\n| ratio SSE / library | {:.2}x | {:.2}x |",
        percentile(&via_library, 0.5).as_secs_f64() * 1e3,
        percentile(&via_library, 0.99).as_secs_f64() * 1e3,
        percentile(&via_sse, 0.5).as_secs_f64() * 1e3,
        percentile(&via_sse, 0.99).as_secs_f64() * 1e3,
        percentile(&via_sse, 0.5).as_secs_f64() / percentile(&via_library, 0.5).as_secs_f64(),
        percentile(&via_sse, 0.99).as_secs_f64() / percentile(&via_library, 0.99).as_secs_f64(),
    );
    registration.deregister(None).await.expect("deregister");
    gateway.shutdown().await;
    for mesh in [mesh, owner, watcher] {
        mesh.shutdown().await;
    }
}
