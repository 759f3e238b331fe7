//! `prism serve`: the gateway of `prism-serve` on the command line. It joins the mesh as a
//! peer following every service and serves it over HTTP (native and Consul-compatible
//! APIs, the web page at `/ui/`) and DNS until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use prism_mesh::{Mesh, TerminationSignals};
use prism_serve::{Gateway, ServeOptions};
use tracing::info;

use crate::{CliError, ConnectArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where to serve HTTP: the APIs, /metrics and the web page at /ui/.
    #[arg(long, default_value = "127.0.0.1:8500")]
    http: SocketAddr,
    /// Where to serve DNS (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8600")]
    dns: SocketAddr,
    /// Serve no DNS.
    #[arg(long, conflicts_with = "dns")]
    no_dns: bool,
    /// The DNS domain: <service>.service.<domain>.
    #[arg(long, default_value = "prism")]
    domain: String,
    /// TTL of DNS answers.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    dns_ttl: Duration,
    /// Require this token on API requests (Authorization: Bearer, X-Consul-Token or
    /// ?token=). `--token` is the NATS connection's.
    #[arg(long, env = "PRISM_SERVE_TOKEN", hide_env_values = true)]
    http_token: Option<String>,
    /// Accept registrations through the Consul agent API (PUT /v1/agent/...).
    #[arg(long)]
    allow_register: bool,
    /// The datacenter name Consul clients see.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    let mut options = ServeOptions::new()
        .http(args.http)
        .domain(&args.domain)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .dns_ttl(args.dns_ttl)
        .allow_register(args.allow_register)
        .datacenter(args.datacenter);
    options = if args.no_dns {
        options.no_dns()
    } else {
        options.dns(args.dns)
    };
    if let Some(token) = args.http_token {
        options = options.token(token);
    }
    // A long-lived peer: it records expiries and writes checkpoints like any service.
    let mesh = Mesh::builder()
        .nats(args.connect.options()?)
        .connect()
        .await?;
    let mut signals = TerminationSignals::listen()?;
    let gateway = match Gateway::start(mesh.clone(), options).await {
        Ok(gateway) => gateway,
        Err(e) => {
            mesh.shutdown().await;
            return Err(CliError::Other(e.to_string()));
        }
    };
    // One line on stdout, for people and for scripts that wait for it.
    let http = gateway
        .http_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let dns = gateway
        .dns_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    anstream::println!(
        "serving http={http} ui={http}/ui/ dns={dns} domain={}",
        args.domain
    );
    let signal = signals.recv().await;
    info!(signal, "stopping the gateway");
    gateway.shutdown().await;
    mesh.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
