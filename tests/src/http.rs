//! HTTP for tests: a server whose health answers a test controls, and a GET that returns
//! the status, the headers and the body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What a [`TestHttpServer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HttpMode {
    /// `200 OK`.
    Healthy = 0,
    /// `503 Service Unavailable`.
    Unhealthy = 1,
    /// Accepts the connection and never answers.
    Hang = 2,
}

/// A real HTTP server on 127.0.0.1 whose health answers a test controls.
pub struct TestHttpServer {
    port: u16,
    mode: Arc<AtomicU8>,
    fail_next: Arc<AtomicU32>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestHttpServer {
    /// Starts answering `200 OK` to every request.
    pub async fn start() -> TestHttpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(HttpMode::Healthy as u8));
        let fail_next = Arc::new(AtomicU32::new(0));
        let hits = Arc::new(AtomicU64::new(0));
        let (m, f, h) = (mode.clone(), fail_next.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (m, f, h) = (m.clone(), f.clone(), h.clone());
                let service = hyper::service::service_fn(move |_request| {
                    let (m, f, h) = (m.clone(), f.clone(), h.clone());
                    async move {
                        h.fetch_add(1, SeqCst);
                        let mode = m.load(SeqCst);
                        if mode == HttpMode::Hang as u8 {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let blip = f.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
                        let mut response = Response::new(Empty::<Bytes>::new());
                        if mode == HttpMode::Unhealthy as u8 || blip {
                            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestHttpServer {
            port,
            mode,
            fail_next,
            hits,
            task,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes what it answers from now on.
    pub fn set(&self, mode: HttpMode) {
        self.mode.store(mode as u8, SeqCst);
    }

    /// Answers `503` to the next `n` requests, then goes back to its mode.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, SeqCst);
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(SeqCst)
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET path` on `addr`: the status, the headers and the body (as text).
pub async fn http_get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
    http_request(addr, "GET", path, "").await
}

/// `method path` on `addr` with `body`: the status, the headers and the body (as text).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}
