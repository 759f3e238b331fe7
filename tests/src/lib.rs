//! The one place for test helpers: real `nats-server` processes (single node or a
//! three-node cluster) on free loopback ports with temporary stores, killed on drop, and
//! child peer processes.
//!
//! A missing or too old `nats-server` is a loud failure that says how to install one.

mod chromium;
mod http;
mod serve;
mod tools;
pub use chromium::Browser;
pub use http::{http_get, http_request, HttpMode, TestHttpServer};
pub use serve::{gateway, gateway_with, healthy, Served};
pub use tools::{curl, curl_async, dig_short, dig_status, require_tool, Curled};

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prism_mesh::{Mesh, MeshBuilder, MeshEvent, NatsOptions};

/// Lowest nats-server with per-message TTL and subject delete markers.
pub const MIN_NATS_SERVER: (u32, u32, u32) = prism_nats_server::MIN_VERSION;

/// How to get a suitable server, printed whenever one is missing.
pub const INSTALL_HINT: &str = prism_nats_server::INSTALL_HINT;

/// Path of a checked `nats-server` binary (`$NATS_SERVER_BIN`, else the one on PATH).
/// Panics with installation instructions when none is usable: a missing tool is a loud
/// failure, never a skip.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        prism_nats_server::binary()
            .unwrap_or_else(|why| panic!("nats-server is required for these tests: {why}"))
    })
}

/// A free TCP port on 127.0.0.1 (the listener is closed before returning).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free TCP ports on 127.0.0.1: all are held open until all are found, so the
/// kernel cannot hand the same one out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("no free port on loopback"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound listener").port())
        .collect()
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("nats-server exited with {status} before listening on {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nats-server did not listen on {port} within 15 s");
}

/// One JetStream-enabled nats-server on a free port with a temporary store.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl NatsServer {
    /// Starts a server with JetStream (file store in a temp dir).
    pub fn start() -> NatsServer {
        Self::start_with_config("")
    }

    /// Starts a server with extra configuration text (authorization blocks, tls...).
    pub fn start_with_config(extra: &str) -> NatsServer {
        Self::start_with("", extra)
    }

    /// Starts a server with extra text inside the `jetstream {}` block (e.g.
    /// `sync_interval: always`) and extra top-level configuration.
    pub fn start_with(jetstream_extra: &str, extra: &str) -> NatsServer {
        Self::start_at(free_port(), jetstream_extra, extra)
    }

    /// Starts a plain JetStream server on `port` (one a test reserved with [`free_port`]).
    pub fn start_on(port: u16) -> NatsServer {
        Self::start_at(port, "", "")
    }

    fn start_at(port: u16, jetstream_extra: &str, extra: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("server.conf");
        let text = format!(
            "listen: 127.0.0.1:{port}\nserver_name: test-{port}\njetstream {{\n  store_dir: {:?}\n  {jetstream_extra}\n}}\n{extra}\n",
            dir.path().join("js")
        );
        std::fs::write(&config, text).expect("write server config");
        let mut server = NatsServer {
            child: None,
            port,
            dir,
            config,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("server.log");
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}; {INSTALL_HINT}"));
        wait_for_port(self.port, &mut child, &log);
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("server not running")
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...); see [`send_signal`].
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// Kills the server with SIGKILL (store kept).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM (a graceful shutdown: a JetStream server hands off the
    /// leadership of what it leads first) and waits for it to exit (store kept).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not stop within 30 s of SIGTERM");
        }
    }

    /// True unless the server was killed or stopped (and not restarted).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The `server_name` from the server's configuration.
    pub fn server_name(&self) -> String {
        std::fs::read_to_string(&self.config)
            .expect("read server config")
            .lines()
            .find_map(|line| line.trim().strip_prefix("server_name:"))
            .map(|name| name.trim().to_string())
            .expect("server config names the server")
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A temporary directory living as long as the server (for certificates, files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The loopback cluster node configuration shipped in `nats/cluster/`.
const LOOPBACK_CLUSTER_CONFIG: &str = include_str!("../../nats/cluster/loopback.conf");

/// Three JetStream servers on loopback forming one cluster.
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a three-node cluster and waits until it has a meta leader.
    pub fn start() -> NatsCluster {
        let ports = free_ports(6);
        let (cluster_ports, client_ports) = ports.split_at(3);
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = cluster_ports
            .iter()
            .zip(client_ports)
            .map(|(port, &client_port)| {
                let dir = tempfile::tempdir().expect("temp dir");
                let config = dir.path().join("server.conf");
                let text = LOOPBACK_CLUSTER_CONFIG
                    .replace("{{NAME}}", &format!("n{port}"))
                    .replace("{{CLIENT_PORT}}", &client_port.to_string())
                    .replace("{{CLUSTER_PORT}}", &port.to_string())
                    .replace(
                        "{{STORE_DIR}}",
                        &dir.path().join("js").display().to_string(),
                    )
                    .replace("{{ROUTES}}", &routes);
                std::fs::write(&config, text).expect("write cluster config");
                let mut node = NatsServer {
                    child: None,
                    port: client_port,
                    dir,
                    config,
                };
                node.spawn();
                node
            })
            .collect();
        NatsCluster { nodes }
    }

    /// A JetStream context on the nodes that run.
    pub async fn admin(&self) -> async_nats::jetstream::Context {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.url())
            .collect();
        let client = async_nats::connect(running.as_slice())
            .await
            .expect("connect to the running nodes");
        async_nats::jetstream::new(client)
    }

    /// `stream`'s leader and its replicas (name, current), once it has a leader (60 s at most).
    pub async fn stream_cluster(&self, stream: &str) -> (String, Vec<(String, bool)>) {
        let js = self.admin().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut handle) = js.get_stream(stream).await {
                if let Ok(info) = handle.info().await {
                    if let Some(c) = info.cluster.as_ref() {
                        if let Some(leader) = c.leader.clone() {
                            let replicas = c
                                .replicas
                                .iter()
                                .map(|r| (r.name.clone(), r.current))
                                .collect();
                            return (leader, replicas);
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{stream} has no leader after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index in `nodes` of the node leading `stream`.
    pub async fn stream_leader(&self, stream: &str) -> usize {
        let (leader, _) = self.stream_cluster(stream).await;
        self.nodes
            .iter()
            .position(|node| node.is_running() && node.server_name() == leader)
            .expect("the leader is a running node")
    }

    /// Waits (60 s at most) until node `index` leads `stream` or is a current replica of it
    /// again, as after a restart.
    pub async fn until_current(&self, index: usize, stream: &str) {
        let name = self.nodes[index].server_name();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (leader, replicas) = self.stream_cluster(stream).await;
            if leader == name || replicas.iter().any(|(n, current)| *n == name && *current) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {index} did not catch up on {stream} within 60 s: {replicas:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// All client URLs, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The headers of a bucket put as owners send it: a bounded `Nats-TTL`. Peers refuse a put
/// without one before they look at its body, so a test of what peers make of a body must
/// send this.
pub fn put_headers(ttl: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", ttl);
    headers
}

/// Users of the shipped `nats/auth.conf`, each with the test password `<user>-pw`.
pub const AUTH_USERS: [&str; 5] = ["admin", "orders", "billing", "witness", "observer"];

/// A server running the shipped `nats/auth.conf` (the file reads passwords from the
/// environment; here each user's is `<user>-pw`).
pub fn server_with_auth_conf() -> NatsServer {
    NatsServer::start_with_config(&auth_conf())
}

/// The text of the shipped `nats/auth.conf` with each user's password `<user>-pw`.
pub fn auth_conf() -> String {
    let mut conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nats/auth.conf"))
            .expect("read nats/auth.conf");
    for user in AUTH_USERS {
        conf = conf.replace(
            &format!("${}_PASSWORD", user.to_uppercase()),
            &format!("\"{user}-pw\""),
        );
    }
    conf
}

/// Options to connect as `user` of [`server_with_auth_conf`], with the reply prefix the
/// file gives it (the admin keeps the default).
pub fn options_as(url: &str, user: &str) -> NatsOptions {
    let options = test_options(url)
        .user_password(user, format!("{user}-pw"))
        .request_timeout(Duration::from_secs(2));
    if user == "admin" {
        options
    } else {
        options.inbox_prefix(format!("_INBOX_{user}"))
    }
}

/// A raw JetStream client (no prism-mesh code: it follows only the server's rules) as
/// `user` of [`server_with_auth_conf`], and what the server reported to it
/// (permission violations...).
pub async fn raw_as(
    url: &str,
    user: &str,
) -> (
    async_nats::jetstream::Context,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = reported.clone();
    let mut connect =
        async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-pw"))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        sink.lock().unwrap().push(e.to_string());
                    }
                }
            });
    if user != "admin" {
        connect = connect.custom_inbox_prefix(format!("_INBOX_{user}"));
    }
    let client = connect.connect(url).await.expect("raw client connects");
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    (js, reported)
}

/// Options for a test mesh on `url`: short timings so expiry shows within seconds.
pub fn test_options(url: &str) -> NatsOptions {
    NatsOptions::new(url)
        .marker_ttl(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
}

/// A mesh builder on `url` with a 2 s TTL and 500 ms heartbeats.
pub fn fast_mesh(url: &str) -> MeshBuilder {
    Mesh::builder()
        .nats(test_options(url))
        .instance_ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .tombstone_ttl(Duration::from_secs(5))
}

/// Waits until `mesh`'s view of `service` satisfies `done`, or panics naming `what`.
pub async fn wait_view(
    mesh: &Mesh,
    service: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[std::sync::Arc<prism_mesh::ServiceInstance>]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done(&mesh.discover(service)) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "view of {service} never reached {what} within {timeout:?}: {:?}",
                mesh.discover(service)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Next event from `events` within `timeout`, or a panic saying what was awaited.
pub async fn next_event(
    events: &mut prism_mesh::EventStream,
    timeout: Duration,
    what: &str,
) -> MeshEvent {
    use futures::StreamExt;
    match tokio::time::timeout(timeout, events.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!("no event within {timeout:?} while waiting for {what}"),
    }
}

/// Waits for the first event matching `pred`, skipping others.
pub async fn wait_event(
    events: &mut prism_mesh::EventStream,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&MeshEvent) -> bool,
) -> MeshEvent {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next_event(events, left, what).await;
        if pred(&event) {
            return event;
        }
    }
}

/// A child process speaking JSON lines on stdout (the `mesh-peer` fixture), killed on drop.
pub struct PeerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std_mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl PeerProcess {
    /// Spawns `bin` with `args`.
    pub fn spawn(bin: &str, args: &[&str]) -> PeerProcess {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("peer process printed a non-JSON line: {line}"),
                }
            }
        });
        PeerProcess {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line on stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .expect("write to peer stdin");
    }

    /// Waits (blocking, off the async runtime) for a line matching `pred`.
    pub fn expect_line(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        // Blocking is fine off the runtime; on a multi-thread runtime, tell it first.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.expect_line_blocking(timeout, what, pred))
            }
            _ => self.expect_line_blocking(timeout, what, pred),
        }
    }

    fn expect_line_blocking(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(found) = self.seen.iter().find(|v| pred(v)) {
            return found.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => {
                    self.seen.push(value.clone());
                    if pred(&value) {
                        return value;
                    }
                }
                Err(_) => panic!(
                    "peer process {} printed no {what} within {timeout:?}; it printed: {:#?}",
                    self.child.id(),
                    self.seen
                ),
            }
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`); see [`send_signal`].
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every line received so far, in the order printed.
    pub fn lines(&self) -> &[serde_json::Value] {
        &self.seen
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "peer process {} did not exit within {timeout:?}",
            self.child.id()
        );
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends signal `name` (`TERM`, `INT`, `STOP`, `CONT`, ...) to process `pid` with kill(1).
/// After `STOP` it returns only once every thread of the process is stopped: kill(1)
/// returns when the signal is sent, and on a loaded machine a thread may still run for a
/// moment after that, long enough for a server to answer a request the test meant to freeze.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
    if name != "STOP" {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} not stopped 5 s after SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// True when every thread of `pid` is in state `T` (stopped) in /proc.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the parenthesised command name, which may hold spaces.
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// A log sink for tests: what `tracing` emits, as text.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let sink = self.clone();
        // Everything at TRACE, except what async-nats itself prints below INFO (server
        // urls with their passwords), which SECRET_SAFE_LOG_DIRECTIVE caps.
        let filter = tracing_subscriber::EnvFilter::new("trace").add_directive(
            prism_mesh::SECRET_SAFE_LOG_DIRECTIVE
                .parse()
                .expect("directive"),
        );
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish()
    }

    /// Captures what this thread emits until the guard is dropped (a current-thread
    /// runtime's tasks included).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(self.subscriber())
    }

    /// Captures what every thread of the process emits (once per test process).
    pub fn install_global(&self) {
        tracing::subscriber::set_global_default(self.subscriber())
            .expect("no global subscriber installed yet");
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }
}

/// Registers an instance of `service` every `every` on `mesh` until dropped or aborted;
/// keeps the acknowledged registrations and, per attempt, when it started and ended and
/// whether it was acknowledged. For measuring write gaps in fault tests.
pub struct Registrar {
    acknowledged: std::sync::Arc<std::sync::Mutex<Vec<prism_mesh::Registration>>>,
    attempts: std::sync::Arc<Attempts>,
    service: String,
    task: tokio::task::JoinHandle<()>,
}

impl Registrar {
    /// Starts registering (each attempt bounded by 20 s; the next starts `every` after the
    /// last one started, or when it ends if it took longer).
    pub fn start(mesh: Mesh, service: &str, every: Duration) -> Registrar {
        let acknowledged: std::sync::Arc<std::sync::Mutex<Vec<prism_mesh::Registration>>> =
            std::sync::Arc::default();
        let attempts: std::sync::Arc<Attempts> = std::sync::Arc::default();
        let (acks, tries) = (
            std::sync::Arc::clone(&acknowledged),
            std::sync::Arc::clone(&attempts),
        );
        let name = service.to_string();
        let service = name.clone();
        let task = tokio::spawn(async move {
            for n in 0u16.. {
                let instance = prism_mesh::ServiceInstance::builder(&service, "127.0.0.1", n)
                    .build()
                    .expect("instance");
                let started = Instant::now();
                let result =
                    tokio::time::timeout(Duration::from_secs(20), mesh.register(instance)).await;
                let ok = matches!(result, Ok(Ok(_)));
                if let Ok(Ok(registration)) = result {
                    lock(&acks).push(registration);
                }
                lock(&tries).push((started, Instant::now(), ok));
                tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
            }
        });
        Registrar {
            acknowledged,
            attempts,
            service: name,
            task,
        }
    }

    /// The registrations acknowledged so far.
    pub fn acknowledged(&self) -> Vec<prism_mesh::Registration> {
        lock(&self.acknowledged).clone()
    }

    /// Waits until `count` registrations were acknowledged in all (at most 60 s).
    pub async fn until_acknowledged(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock(&self.acknowledged).len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} registrations acknowledged after 60 s",
                lock(&self.acknowledged).len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// From `since` to the acknowledgement of the first registration that started after it
    /// (one in flight at `since` does not count): the gap a fault left in writes.
    pub async fn resumed_after(&self, since: Instant) -> Duration {
        first_ack_after(&self.attempts, since).await
    }

    /// Waits until `mesh`'s view holds every registration acknowledged so far, or panics.
    pub async fn until_visible_at(&self, mesh: &Mesh, timeout: Duration) {
        let acknowledged = self.acknowledged();
        wait_view(
            mesh,
            &self.service,
            timeout,
            "every acknowledged registration",
            |view| {
                acknowledged
                    .iter()
                    .all(|r| view.iter().any(|i| i.id == r.id()))
            },
        )
        .await;
    }

    /// Stops registering.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Write attempts: when each started and ended, and whether it was acknowledged.
pub type Attempts = std::sync::Mutex<Vec<(Instant, Instant, bool)>>;

/// From `since` to the end of the first acknowledged attempt that started after it (one in
/// flight at `since` does not count), polling for at most 60 s.
pub async fn first_ack_after(attempts: &Attempts, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(60);
    loop {
        let first = lock(attempts)
            .iter()
            .filter(|(started, _, ok)| *ok && *started > since)
            .map(|(_, ended, _)| *ended)
            .min();
        if let Some(at) = first {
            return at - since;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
