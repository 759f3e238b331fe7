//! An optional HTTP endpoint for Prometheus: `GET /metrics` answers the exposition
//! (HTTP/1.1 by hyper).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::error::{Error, ErrorKind, Result};

/// A client that has not sent a whole request head for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
        let render = Arc::new(render);
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
                    let service = hyper::service::service_fn(move |request| {
                        let response = answer(&request, &*render);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
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

fn answer(
    request: &Request<Incoming>,
    render: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, render()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
    }
    response
}
