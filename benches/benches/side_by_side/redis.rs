//! A Redis 7 server process of the bench's own and a small RESP2 client: pipelined
//! commands over one TCP connection (a writer task batches whatever is queued into one
//! write, a reader task answers the callers in order), and a pub/sub subscriber.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A redis-server on a free loopback port with a temp dir, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// The exact command line, for the report.
    pub command: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// `durable`: `--appendonly yes --appendfsync always`; else no persistence at all.
    pub fn start(durable: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = prism_tests::free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--save".into(),
            "".into(),
            // Keyevent notifications for string commands (set) and expiries.
            "--notify-keyspace-events".into(),
            "E$x".into(),
        ];
        if durable {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        let command = format!(
            "redis-server {}",
            args.iter()
                .map(|a| if a.is_empty() {
                    "''".to_string()
                } else {
                    a.clone()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let log = std::fs::File::create(dir.path().join("redis.log")).expect("log");
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        wait_for_port(port, dir.path());
        RedisServer {
            child,
            port,
            command,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn wait_for_port(port: u16, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    panic!("redis-server did not listen on {port}:\n{log}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone)]
pub enum Reply {
    Simple,
    Error(String),
    Int,
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    pub fn array(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(items)) => items,
            _ => &[],
        }
    }

    /// Panics on an error reply.
    pub fn ok(self) -> Reply {
        if let Reply::Error(e) = &self {
            panic!("redis error: {e}");
        }
        self
    }
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

fn read_reply(r: &mut Reader) -> Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await?;
        if line.len() < 3 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let body = std::str::from_utf8(&line[1..line.len() - 2]).unwrap_or_default();
        let number = || body.parse::<i64>().unwrap_or(-1);
        Ok(match line[0] {
            b'+' => Reply::Simple,
            b'-' => Reply::Error(body.to_string()),
            b':' => Reply::Int,
            b'$' => {
                let len = number();
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; len as usize + 2];
                    r.read_exact(&mut data).await?;
                    data.truncate(len as usize);
                    Reply::Bulk(Some(data))
                }
            }
            b'*' => {
                let len = number();
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(read_reply(r).await?);
                    }
                    Reply::Array(Some(items))
                }
            }
            other => panic!("unexpected RESP type byte {other}"),
        })
    })
}

/// Appends one command as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

async fn write_all(w: &mut (impl AsyncWrite + Unpin), buf: &[u8]) {
    w.write_all(buf).await.expect("redis write");
}

type Pending = Arc<Mutex<VecDeque<oneshot::Sender<Reply>>>>;

/// One pipelined connection: any number of callers may have commands in flight.
#[derive(Clone)]
pub struct Redis {
    tx: mpsc::UnboundedSender<(Vec<u8>, oneshot::Sender<Reply>)>,
}

impl Redis {
    pub async fn connect(port: u16) -> Redis {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("redis connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, oneshot::Sender<Reply>)>();
        let pending: Pending = Arc::default();
        let writer_pending = pending.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some((command, reply)) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&command);
                {
                    let mut queue = writer_pending.lock().unwrap();
                    queue.push_back(reply);
                    while let Ok((command, reply)) = rx.try_recv() {
                        batch.extend_from_slice(&command);
                        queue.push_back(reply);
                    }
                }
                write_all(&mut write, &batch).await;
            }
        });
        tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(64 * 1024, read);
            while let Ok(reply) = read_reply(&mut reader).await {
                let waiter = pending.lock().unwrap().pop_front();
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
        });
        Redis { tx }
    }

    /// Sends one command and waits for its reply (other commands may be in flight).
    pub async fn call(&self, args: &[&[u8]]) -> Reply {
        let mut command = Vec::with_capacity(64);
        encode(&mut command, args);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((command, reply_tx))
            .expect("redis connection open");
        reply_rx.await.expect("redis reply")
    }
}

/// A connection in subscribe mode.
pub struct Subscriber {
    reader: Reader,
    _write: tokio::net::tcp::OwnedWriteHalf,
}

impl Subscriber {
    /// SUBSCRIBE to `channels` and waits for every confirmation.
    pub async fn subscribe(port: u16, channels: &[&str]) -> Subscriber {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("redis connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, mut write) = stream.into_split();
        let mut command = Vec::new();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        encode(&mut command, &args);
        write_all(&mut write, &command).await;
        let mut reader = BufReader::new(read);
        for _ in channels {
            read_reply(&mut reader)
                .await
                .expect("subscribe confirmation");
        }
        Subscriber {
            reader,
            _write: write,
        }
    }

    /// The next published message: (channel, payload).
    pub async fn next(&mut self) -> (Vec<u8>, Vec<u8>) {
        loop {
            let reply = read_reply(&mut self.reader).await.expect("subscriber open");
            let items = reply.array();
            if items.len() == 3 && items[0].bulk() == Some(b"message") {
                return (
                    items[1].bulk().unwrap_or_default().to_vec(),
                    items[2].bulk().unwrap_or_default().to_vec(),
                );
            }
        }
    }
}
