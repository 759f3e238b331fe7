//! What a gateway serves and where: options with private fields and setters, checked when
//! they are set.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ServeError;

/// Where a [`Gateway`](crate::Gateway) listens and what it allows.
///
/// Defaults: HTTP on `127.0.0.1:8500`, DNS on `127.0.0.1:8600` (loopback: exposing the
/// mesh is a decision), domain `prism`, DNS TTL 5 s, datacenter `dc1`, no token, no
/// registrations.
///
/// ```
/// use prism_serve::ServeOptions;
///
/// let options = ServeOptions::new().domain("mesh.internal")?.token("s3cret").allow_register(true);
/// assert_eq!(options.domain_name(), "mesh.internal");
/// assert!(ServeOptions::new().domain("bad..name").is_err());
/// # Ok::<(), prism_serve::ServeError>(())
/// ```
#[derive(Clone)]
pub struct ServeOptions {
    pub(crate) http: Option<SocketAddr>,
    pub(crate) dns: Option<SocketAddr>,
    pub(crate) domain: String,
    pub(crate) dns_ttl: Duration,
    pub(crate) token: Option<String>,
    pub(crate) allow_register: bool,
    pub(crate) datacenter: String,
    pub(crate) node_name: String,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("http", &self.http)
            .field("dns", &self.dns)
            .field("domain", &self.domain)
            .field("dns_ttl", &self.dns_ttl)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow_register", &self.allow_register)
            .field("datacenter", &self.datacenter)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8500))),
            dns: Some(SocketAddr::from(([127, 0, 0, 1], 8600))),
            domain: "prism".to_string(),
            dns_ttl: Duration::from_secs(5),
            token: None,
            allow_register: false,
            datacenter: "dc1".to_string(),
            node_name: "prism-serve".to_string(),
        }
    }
}

impl ServeOptions {
    /// The defaults.
    pub fn new() -> Self {
        ServeOptions::default()
    }

    /// Serves HTTP (APIs and the web page) on `addr` (port 0: any free port).
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// Serves no HTTP.
    pub fn no_http(mut self) -> Self {
        self.http = None;
        self
    }

    /// Serves DNS over UDP and TCP on `addr` (port 0: any free port, the same for both).
    pub fn dns(mut self, addr: SocketAddr) -> Self {
        self.dns = Some(addr);
        self
    }

    /// Serves no DNS.
    pub fn no_dns(mut self) -> Self {
        self.dns = None;
        self
    }

    /// The DNS domain: `<service>.service.<domain>`. One or more labels of letters,
    /// digits and `-`.
    pub fn domain(mut self, domain: &str) -> Result<Self, ServeError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if domain.is_empty() || domain.len() > 200 || !domain.split('.').all(valid_label) {
            return Err(ServeError::InvalidOption(format!(
                "domain {domain:?} is not a DNS name (labels of letters, digits and '-', separated by '.')"
            )));
        }
        self.domain = domain;
        Ok(self)
    }

    /// The domain, without a trailing dot.
    pub fn domain_name(&self) -> &str {
        &self.domain
    }

    /// The TTL of DNS answers (whole seconds; short, since instances come and go).
    pub fn dns_ttl(mut self, ttl: Duration) -> Self {
        self.dns_ttl = ttl;
        self
    }

    /// Requires this bearer token on every API request: `Authorization: Bearer <token>`,
    /// `X-Consul-Token: <token>` or `?token=<token>` (for browsers' event streams).
    /// `/healthz` and the web page's static files stay open; the data they show does not.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Accepts registrations through the Consul agent API (off by default: a gateway
    /// serves reads only).
    pub fn allow_register(mut self, allow: bool) -> Self {
        self.allow_register = allow;
        self
    }

    /// The datacenter name reported in Consul shapes (`dc1` by default).
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = datacenter.into();
        self
    }
}
