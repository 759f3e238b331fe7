//! Starting and stopping a gateway: its listeners, its servers, what they share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::ServerFuture;
use prism_mesh::Mesh;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::changes::Changes;
use crate::dns::DnsHandler;
use crate::error::ServeError;
use crate::http::{router, Shared};
use crate::options::ServeOptions;

/// A running gateway; see the [crate docs](crate).
pub struct Gateway {
    http_addr: Option<SocketAddr>,
    dns_addr: Option<SocketAddr>,
    closing: watch::Sender<bool>,
    http: Option<JoinHandle<()>>,
    dns: Option<ServerFuture<DnsHandler>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("http", &self.http_addr)
            .field("dns", &self.dns_addr)
            .finish()
    }
}

async fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

impl Gateway {
    /// Opens the listeners `options` asks for and serves `mesh` on them until
    /// [`shutdown`](Gateway::shutdown). The mesh's view should follow every service (the
    /// default); its registrations through the agent API end with the mesh.
    pub async fn start(mesh: Mesh, options: ServeOptions) -> Result<Gateway, ServeError> {
        if options.token.as_deref().is_some_and(str::is_empty) {
            return Err(ServeError::InvalidOption(
                "the token is empty: give a secret, or no token".into(),
            ));
        }
        if options.http.is_none() && options.dns.is_none() {
            return Err(ServeError::InvalidOption(
                "nothing to serve: neither HTTP nor DNS is on".into(),
            ));
        }
        let changes = Changes::start(&mesh);
        let (closing, _) = watch::channel(false);
        let mut gateway = Gateway {
            http_addr: None,
            dns_addr: None,
            closing,
            http: None,
            dns: None,
        };
        if let Some(addr) = options.dns {
            let ttl = u32::try_from(options.dns_ttl.as_secs()).unwrap_or(u32::MAX);
            let handler = DnsHandler::new(mesh.clone(), changes.clone(), &options.domain, ttl)
                .ok_or_else(|| {
                    ServeError::InvalidOption(format!(
                        "domain {:?} is not a DNS name",
                        options.domain
                    ))
                })?;
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "DNS over UDP",
                    addr,
                    source,
                })?;
            let bound = udp.local_addr().map_err(|source| ServeError::Bind {
                what: "DNS over UDP",
                addr,
                source,
            })?;
            // TCP on the same port as UDP, so port 0 still gives one address.
            let tcp = bind_tcp(bound, "DNS over TCP").await?;
            let mut server = ServerFuture::new(handler);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5));
            info!(addr = %bound, domain = %options.domain, "serving DNS");
            gateway.dns_addr = Some(bound);
            gateway.dns = Some(server);
        }
        if let Some(addr) = options.http {
            let listener = bind_tcp(addr, "HTTP").await?;
            let bound = listener.local_addr().map_err(|source| ServeError::Bind {
                what: "HTTP",
                addr,
                source,
            })?;
            let mut options = options.clone();
            options.http = Some(bound);
            let shared = Arc::new(Shared {
                agent: Agent::start(mesh.clone()),
                mesh: mesh.clone(),
                options,
                changes: changes.clone(),
                rendered: Default::default(),
            });
            let app = router(shared).into_make_service_with_connect_info::<SocketAddr>();
            let mut closing = gateway.closing.subscribe();
            gateway.http = Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = closing.wait_for(|closed| *closed).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    warn!(error = %e, "the HTTP server stopped");
                }
            }));
            info!(addr = %bound, "serving HTTP");
            gateway.http_addr = Some(bound);
        }
        Ok(gateway)
    }

    /// Where HTTP is served (with the port chosen when 0 was asked).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where DNS is served, over UDP and TCP.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// Stops serving: open event streams end, listeners close. The mesh stays open (its
    /// owner shuts it down, which deregisters what clients registered through here).
    pub async fn shutdown(mut self) {
        self.closing.send_replace(true);
        if let Some(mut dns) = self.dns.take() {
            if let Err(e) = dns.shutdown_gracefully().await {
                warn!(error = %e, "the DNS server did not stop cleanly");
            }
        }
        if let Some(mut http) = self.http.take() {
            // Event streams hold connections open; they are cut after a moment.
            if tokio::time::timeout(Duration::from_secs(2), &mut http)
                .await
                .is_err()
            {
                http.abort();
                warn!("HTTP connections still open at shutdown were cut");
            }
        }
    }
}
