//! `prism announce`: register a placeholder instance and keep it alive; SIGTERM or Ctrl-C
//! deregisters it, SIGKILL lets it expire.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use prism_mesh::{InstanceStatus, Mesh, ServiceInstance, TerminationSignals};

use crate::{CliError, ConnectArgs};

#[derive(Args)]
pub struct AnnounceArgs {
    /// Service name.
    #[arg(long)]
    pub service: String,
    /// Port to announce.
    #[arg(long)]
    pub port: u16,
    /// Host to announce.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Tags (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Instance TTL.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Heartbeat interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(args: AnnounceArgs) -> Result<ExitCode, CliError> {
    let mut builder = ServiceInstance::builder(&args.service, &args.host, args.port);
    if let Some(zone) = &args.zone {
        builder = builder.zone(zone);
    }
    for tag in &args.tags {
        builder = builder.tag(tag);
    }
    let instance = builder.build()?;
    let mesh = Mesh::builder()
        .nats(args.connect.options()?)
        .instance_ttl(args.ttl)
        .heartbeat_interval(args.heartbeat)
        .connect()
        .await?;
    // Before the id is printed: a SIGTERM right after it must deregister, not kill.
    let mut signals = TerminationSignals::listen()?;
    let me = mesh.register(instance).await?;
    me.set_status(InstanceStatus::Healthy, Some("started"))
        .await?;
    println!("{}", me.id());
    let signal = signals.recv().await;
    me.set_status(InstanceStatus::Stopping, Some(signal))
        .await?;
    me.deregister(Some("stopped by signal")).await?;
    mesh.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
