//! One health check run: HTTP GET (2xx passes), TCP connect, or a check the service
//! supplies; always bounded by a timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::instance::ServiceInstance;

/// Metadata key that overrides an instance's health URL: a path (`/ready`) or a full
/// `http://` URL.
pub const HEALTH_ENDPOINT_KEY: &str = "health_endpoint";
/// Metadata key naming the check peers run on demand: `http` (default) or `tcp`.
pub const HEALTH_CHECK_KEY: &str = "health_check";

/// A check the service supplies: `Ok(output)` passes, `Err(output)` fails.
pub type CustomCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// How an instance's health is checked.
#[derive(Clone)]
#[non_exhaustive]
pub enum HealthCheck {
    /// HTTP GET; any 2xx status passes. `None` uses the instance's health URL
    /// ([`health_url`]).
    Http(Option<String>),
    /// A TCP connection to the instance's host and port.
    Tcp,
    /// A check written by the service itself.
    Custom(CustomCheck),
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthCheck::Http(url) => f.debug_tuple("Http").field(url).finish(),
            HealthCheck::Tcp => f.write_str("Tcp"),
            HealthCheck::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl HealthCheck {
    /// HTTP GET of the instance's health URL.
    pub fn http() -> Self {
        HealthCheck::Http(None)
    }

    /// HTTP GET of an explicit URL.
    pub fn http_url(url: impl Into<String>) -> Self {
        HealthCheck::Http(Some(url.into()))
    }

    /// A TCP connect to the instance.
    pub fn tcp() -> Self {
        HealthCheck::Tcp
    }

    /// A check supplied by the service: `Ok(output)` passes, `Err(output)` fails.
    pub fn custom<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        HealthCheck::Custom(Arc::new(move || Box::pin(check())))
    }

    /// The check `instance` declares in its metadata (`health_check` or
    /// `health_endpoint`), if any: what a tool should run, rather than guess.
    pub fn declared(instance: &ServiceInstance) -> Option<Self> {
        let declares = |key| instance.metadata.contains_key(key);
        (declares(HEALTH_CHECK_KEY) || declares(HEALTH_ENDPOINT_KEY))
            .then(|| HealthCheck::for_instance(instance))
    }

    /// The check a peer can run for `instance` from its metadata alone (an HTTP GET of
    /// its health URL unless it declares `health_check: tcp`).
    pub fn for_instance(instance: &ServiceInstance) -> Self {
        match instance
            .metadata
            .get(HEALTH_CHECK_KEY)
            .and_then(|v| v.as_str())
        {
            Some("tcp") => HealthCheck::Tcp,
            _ => HealthCheck::Http(None),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// True when the check passed.
    pub passing: bool,
    /// How long the check took.
    pub latency: Duration,
    /// What the check said: `HTTP 200`, `connected`, the custom check's text, or the error.
    pub output: String,
}

impl CheckResult {
    /// `passing: HTTP 200 in 3 ms`, for event reasons and logs.
    pub fn describe(&self) -> String {
        let verdict = if self.passing { "passing" } else { "failing" };
        format!(
            "{verdict}: {} in {} ms",
            self.output,
            self.latency.as_millis()
        )
    }
}

/// The URL an HTTP check of `instance` fetches: metadata `health_endpoint` (a path or a
/// full URL) or `<base_url>/health`.
pub fn health_url(instance: &ServiceInstance) -> String {
    match instance
        .metadata
        .get(HEALTH_ENDPOINT_KEY)
        .and_then(|v| v.as_str())
    {
        Some(url) if url.contains("://") => url.to_string(),
        Some(path) => format!("{}/{}", instance.base_url(), path.trim_start_matches('/')),
        None => format!("{}/health", instance.base_url()),
    }
}

/// Runs `check` against `instance`, giving up after `timeout`.
pub async fn run_check(
    check: &HealthCheck,
    instance: &ServiceInstance,
    timeout: Duration,
) -> CheckResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, async {
        match check {
            HealthCheck::Http(url) => {
                let url = url.clone().unwrap_or_else(|| health_url(instance));
                http_status(&url).await
            }
            HealthCheck::Tcp => TcpStream::connect((instance.host.as_str(), instance.port))
                .await
                .map(|_| "connected".to_string())
                .map_err(|e| format!("tcp connect to {}:{}: {e}", instance.host, instance.port)),
            HealthCheck::Custom(check) => check().await,
        }
    })
    .await;
    let latency = started.elapsed();
    let (passing, output) = match outcome {
        Ok(Ok(output)) => (true, output),
        Ok(Err(output)) => (false, output),
        Err(_) => (false, format!("timed out after {} ms", timeout.as_millis())),
    };
    CheckResult {
        passing,
        latency,
        output,
    }
}

/// GET `url`; `Ok("HTTP 200")` for 2xx, `Err` with the status or the error otherwise.
/// The status is all a check reads: the body is not waited for.
async fn http_status(url: &str) -> Result<String, String> {
    let failed = |e: &dyn std::fmt::Display| format!("GET {url}: {e}");
    let uri: hyper::Uri = url.parse().map_err(|e| failed(&e))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// health URLs are checked here; use a custom check for others"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| failed(&"no host in the URL"))?
        .clone();
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = TcpStream::connect(address).await.map_err(|e| failed(&e))?;
    let (mut sender, mut connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
    let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "prism-mesh")
        .body(Empty::new())
        .map_err(|e| failed(&e))?;
    let response = tokio::select! {
        response = sender.send_request(request) => response.map_err(|e| failed(&e))?,
        closed = &mut connection => {
            return Err(match closed {
                Ok(()) => failed(&"connection closed before a response"),
                Err(e) => failed(&e),
            });
        }
    };
    let code = response.status().as_u16();
    if response.status().is_success() {
        Ok(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code}"))
    }
}
