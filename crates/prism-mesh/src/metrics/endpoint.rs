//! An optional HTTP endpoint for Prometheus: `GET /metrics` answers the exposition.
//!
//! Hand-written on purpose: one read-only route does not justify an HTTP server stack in
//! every service that embeds the library.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::error::{Error, ErrorKind, Result};

/// Longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running metrics endpoint; it stops when dropped.
///
/// ```no_run
/// # async fn run(mesh: prism_mesh::Mesh) -> prism_mesh::Result<()> {
/// let endpoint = mesh.serve_metrics("127.0.0.1:9464").await?;
/// println!("scrape http://{}/metrics", endpoint.local_addr());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Listens on `addr` and answers each scrape of `/metrics` with what `render` returns
    /// (for a mesh, [`Mesh::render_metrics`](crate::Mesh::render_metrics)).
    pub async fn serve(
        render: impl Fn() -> String + Send + Sync + 'static,
        addr: impl ToSocketAddrs,
    ) -> Result<MetricsEndpoint> {
        let render = std::sync::Arc::new(render);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                "cannot listen for metrics scrapes",
                e,
            )
        })?;
        let local_addr = listener.local_addr().map_err(|e| {
            Error::with_source(ErrorKind::Transport, "metrics listener has no address", e)
        })?;
        info!(%local_addr, "serving metrics at /metrics");
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let render = render.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &*render).await {
                        debug!(%peer, error = %e, "metrics request failed");
                    }
                });
            }
        });
        Ok(MetricsEndpoint { local_addr, task })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => respond(&mut stream, "200 OK", CONTENT_TYPE, &render()).await,
        (b"GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "only /metrics is served\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
