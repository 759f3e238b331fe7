//! An etcd 3.4 server process of the bench's own and a small client for its JSON gRPC
//! gateway (`/v3/...`, keys and values base64) over hand-written HTTP/1.1 keep-alive
//! connections; the watch is one long-lived chunked response of newline-delimited JSON.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A single-member etcd on free loopback ports with a temp data dir, killed on drop.
pub struct EtcdServer {
    child: Child,
    pub port: u16,
    /// The exact command line, for the report.
    pub command: String,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = prism_tests::free_port();
        let peer = prism_tests::free_port();
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = [
            "--name".to_string(),
            "side-by-side".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("side-by-side={peer_url}"),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "error".into(),
        ];
        let command = format!("etcd {}", args.join(" "));
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let child = Command::new("etcd")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let server = EtcdServer {
            child,
            port,
            command,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    /// Until the member has a leader and serves a range over the gateway.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n");
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                if text.contains("\"health\":\"true\"") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd not healthy on {} within 20 s", self.port);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(value: &Value) -> Vec<u8> {
    value
        .as_str()
        .map(|s| B64.decode(s).expect("base64 from etcd"))
        .unwrap_or_default()
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

/// Reads a response head: (status, content length or None for chunked).
async fn read_head(reader: &mut BufReader<OwnedReadHalf>) -> (u16, Option<usize>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
    (status, length)
}

/// Reads one chunk of a chunked body into `out`; false at the last (empty) chunk.
async fn read_chunk(reader: &mut BufReader<OwnedReadHalf>, out: &mut Vec<u8>) -> bool {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("chunk size");
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
        .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
    if size == 0 {
        // Trailers, then the empty line.
        loop {
            line.clear();
            reader.read_line(&mut line).await.expect("trailer");
            if line.trim().is_empty() {
                return false;
            }
        }
    }
    let start = out.len();
    out.resize(start + size + 2, 0);
    reader.read_exact(&mut out[start..]).await.expect("chunk");
    out.truncate(start + size);
    true
}

/// One HTTP/1.1 keep-alive connection to the gateway (one request at a time).
pub struct Etcd {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    head: Vec<u8>,
}

impl Etcd {
    pub async fn connect(port: u16) -> Etcd {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("etcd connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, writer) = stream.into_split();
        Etcd {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer,
            head: Vec::with_capacity(512),
        }
    }

    /// POSTs a JSON body; returns the JSON response (panics on a non-200 status).
    pub async fn post(&mut self, path: &str, body: &Value) -> Value {
        let body = serde_json::to_vec(body).expect("json");
        self.head.clear();
        self.head.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.head.extend_from_slice(&body);
        self.writer.write_all(&self.head).await.expect("etcd write");
        let (status, length) = read_head(&mut self.reader).await;
        let mut response = Vec::new();
        match length {
            Some(length) => {
                response.resize(length, 0);
                self.reader
                    .read_exact(&mut response)
                    .await
                    .expect("etcd body");
            }
            None => while read_chunk(&mut self.reader, &mut response).await {},
        }
        assert_eq!(
            status,
            200,
            "etcd {path}: {}",
            String::from_utf8_lossy(&response)
        );
        serde_json::from_slice(&response).expect("etcd json")
    }

    /// Grants a lease; returns (id, granted TTL in seconds).
    pub async fn grant(&mut self, ttl_secs: i64) -> (String, i64) {
        let reply = self
            .post("/v3/lease/grant", &json!({ "TTL": ttl_secs }))
            .await;
        let id = reply["ID"].as_str().expect("lease id").to_string();
        let ttl = reply["TTL"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .or_else(|| reply["TTL"].as_i64())
            .unwrap_or(-1);
        (id, ttl)
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8], lease: &str) {
        self.post(
            "/v3/kv/put",
            &json!({ "key": b64(key), "value": b64(value), "lease": lease }),
        )
        .await;
    }

    /// Puts many keys in one transaction (at most etcd's --max-txn-ops, 128 by default).
    pub async fn put_many(&mut self, items: &[(Vec<u8>, Vec<u8>)], lease: &str) {
        let success: Vec<Value> = items
            .iter()
            .map(|(k, v)| json!({ "request_put": { "key": b64(k), "value": b64(v), "lease": lease } }))
            .collect();
        self.post("/v3/kv/txn", &json!({ "success": success }))
            .await;
    }

    /// One page of a prefix range from `start` (inclusive): (key/value pairs, more).
    pub async fn range_page(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> (Vec<(Vec<u8>, Vec<u8>)>, bool) {
        let reply = self
            .post(
                "/v3/kv/range",
                &json!({ "key": b64(start), "range_end": b64(end), "limit": limit }),
            )
            .await;
        let kvs = reply["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (unb64(&kv["key"]), unb64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default();
        (kvs, reply["more"].as_bool().unwrap_or(false))
    }
}

/// A watch event: (PUT or DELETE, key, value).
#[derive(Debug)]
pub struct Event {
    pub delete: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A watch on a key prefix over its own connection.
pub struct Watch {
    reader: BufReader<OwnedReadHalf>,
    _writer: OwnedWriteHalf,
    buffer: Vec<u8>,
    events: std::collections::VecDeque<Event>,
}

impl Watch {
    pub async fn prefix(port: u16, prefix: &[u8]) -> Watch {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("etcd connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, mut writer) = stream.into_split();
        let body = serde_json::to_vec(&json!({
            "create_request": { "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) }
        }))
        .expect("json");
        let mut request = format!(
            "POST /v3/watch HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        writer.write_all(&request).await.expect("etcd write");
        let mut reader = BufReader::with_capacity(64 * 1024, read);
        let (status, _) = read_head(&mut reader).await;
        assert_eq!(status, 200, "etcd watch status");
        let mut watch = Watch {
            reader,
            _writer: writer,
            buffer: Vec::new(),
            events: Default::default(),
        };
        // The first message confirms the watch is created.
        let created = watch.message().await;
        assert_eq!(
            created["result"]["created"], true,
            "watch created: {created}"
        );
        watch
    }

    /// The next newline-delimited JSON message of the stream.
    async fn message(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return serde_json::from_slice(&line).expect("watch json");
            }
            assert!(
                read_chunk(&mut self.reader, &mut self.buffer).await,
                "etcd watch stream ended"
            );
        }
    }

    /// The next event.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.events.pop_front() {
                return event;
            }
            let message = self.message().await;
            for event in message["result"]["events"].as_array().into_iter().flatten() {
                self.events.push_back(Event {
                    delete: event["type"] == "DELETE",
                    key: unb64(&event["kv"]["key"]),
                    value: unb64(&event["kv"]["value"]),
                });
            }
        }
    }
}
