//! `prism register [-- <command>]`: a sidecar that puts any process in the mesh. It
//! registers the instance, runs the command, reports its health, passes SIGTERM and
//! SIGINT on to it, and deregisters when it exits, exiting with the child's code. Without a
//! command it holds a placeholder instance (healthy) until SIGTERM or Ctrl-C deregisters
//! it; SIGKILL lets it expire.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use prism_mesh::{
    HealthCheck, HealthPolicy, InstanceStatus, Mesh, ServiceInstance, TerminationSignals,
};
use tracing::warn;

use crate::{CliError, ConnectArgs};

#[derive(Args)]
pub struct RegisterArgs {
    /// Service name [default: the --config file's service.name].
    #[arg(long)]
    pub service: Option<String>,
    /// Port the process listens on [default: the --config file's service.port].
    #[arg(long)]
    pub port: Option<u16>,
    /// Host peers should use [default: the --config file's service.host, else 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// HTTP path to check (e.g. /health): the instance is Healthy while it answers 2xx.
    /// Without it the instance is Healthy as soon as the process runs.
    #[arg(long)]
    pub check_http: Option<String>,
    /// Time between health checks [default: the --config file's health_check_interval,
    /// else 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub check_interval: Option<Duration>,
    /// Tags (repeatable) [default: the --config file's service.tags].
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Zone [default: the --config file's service.zone].
    #[arg(long)]
    pub zone: Option<String>,
    /// Serve this process's mesh metrics for Prometheus at ADDR (`/metrics`) [default:
    /// the --config file's metrics.listen, else none].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Load-balancing weight [default: the --config file's service.weight or metadata
    /// weight, else 100].
    #[arg(long)]
    pub weight: Option<u32>,
    /// Instance TTL [default: the --config file's instance_ttl, else 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Heartbeat interval [default: the --config file's heartbeat_interval, else 3s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The command to run, after `--`; without one, a placeholder instance is held until
    /// SIGTERM or Ctrl-C.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Where the flags are silent, the `--config` file speaks; where both are, the library's
/// defaults.
struct Settled {
    instance: ServiceInstance,
    ttl: Duration,
    heartbeat: Duration,
    tombstone_ttl: Duration,
    check_interval: Duration,
    metrics: Option<std::net::SocketAddr>,
}

fn settle(args: &RegisterArgs) -> Result<Settled, CliError> {
    let file = args
        .connect
        .config
        .as_ref()
        .map(prism_mesh::DiscoverySettings::from_file)
        .transpose()?;
    let timing = file
        .as_ref()
        .map_or_else(prism_mesh::Timing::default, |f| f.timing());
    Ok(Settled {
        instance: instance(args, file.as_ref().and_then(|f| f.service.as_ref()))?,
        ttl: args.ttl.unwrap_or(timing.instance_ttl),
        heartbeat: args.heartbeat.unwrap_or(timing.heartbeat_interval),
        tombstone_ttl: timing.tombstone_ttl,
        check_interval: args
            .check_interval
            .or(file.as_ref().map(|f| f.health_check_interval))
            .unwrap_or(Duration::from_secs(5)),
        metrics: args
            .metrics
            .or(file.as_ref().and_then(|f| f.metrics.listen)),
    })
}

/// The instance from the flags, over the file's `service:` section, over the defaults.
fn instance(
    args: &RegisterArgs,
    file: Option<&prism_mesh::ServiceSettings>,
) -> Result<ServiceInstance, CliError> {
    let missing = |flag: &str, key: &str| {
        CliError::Usage(format!(
            "{flag} is required (or service.{key} in the --config file)"
        ))
    };
    let service = args
        .service
        .clone()
        .or_else(|| file.map(|f| f.name.clone()))
        .ok_or_else(|| missing("--service", "name"))?;
    let port = args
        .port
        .or(file.map(|f| f.port))
        .ok_or_else(|| missing("--port", "port"))?;
    let host = args
        .host
        .clone()
        .or_else(|| file.map(|f| f.host.clone()))
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let mut builder = ServiceInstance::builder(service, host, port);
    if let Some(file) = file {
        builder = builder.metadata_map(file.metadata.clone());
        if let Some(weight) = file.weight {
            builder = builder.weight(weight);
        }
        if args.tags.is_empty() {
            for tag in &file.tags {
                builder = builder.tag(tag);
            }
        }
        if let (None, Some(zone)) = (&args.zone, &file.zone) {
            builder = builder.zone(zone);
        }
    }
    if let Some(weight) = args.weight {
        builder = builder.weight(weight);
    }
    for tag in &args.tags {
        builder = builder.tag(tag);
    }
    if let Some(zone) = &args.zone {
        builder = builder.zone(zone);
    }
    if let Some(path) = &args.check_http {
        builder = builder.metadata(prism_mesh::health::HEALTH_ENDPOINT_KEY, path.as_str());
    }
    Ok(builder.build()?)
}

pub async fn run(args: RegisterArgs) -> Result<ExitCode, CliError> {
    let settled = settle(&args)?;
    let instance = settled.instance;
    // Everything that can be wrong with the arguments is found before the child starts.
    let options = args.connect.options()?;
    let mesh_builder = Mesh::builder()
        .nats(options)
        .instance_ttl(settled.ttl)
        .heartbeat_interval(settled.heartbeat)
        .tombstone_ttl(settled.tombstone_ttl);
    mesh_builder.validate()?;

    let Some((program, rest)) = args.command.split_first() else {
        return placeholder(mesh_builder, instance, &args, settled.metrics).await;
    };
    // From before the child starts: a SIGTERM while registering is passed on once we wait
    // for the child, instead of killing us and orphaning it.
    let mut signals = TerminationSignals::listen()?;
    // The service starts whether or not the mesh is reachable: a sidecar must never keep
    // it from running. It joins the mesh as soon as it can.
    let mut child = tokio::process::Command::new(program)
        .kill_on_drop(true)
        .args(rest)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::CommandNotRun {
            code: if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            },
            message: format!("cannot start {program:?}: {e}"),
        })?;
    let service = instance.service.to_string();
    let joining = tokio::spawn(join(
        mesh_builder,
        instance,
        args.check_http.is_some(),
        settled.check_interval,
        program.clone(),
        service,
        settled.metrics,
    ));

    let status = wait_passing_signals(&mut child, &mut signals).await?;
    let reason = match (status.code(), signal_of(&status)) {
        (Some(code), _) => format!("process exited with code {code}"),
        (None, Some(signal)) => format!("process killed by signal {signal}"),
        _ => "process exited".to_string(),
    };
    // Registered by now, or still trying: then there is nothing to take back.
    let joined = if joining.is_finished() {
        joining.await.ok()
    } else {
        joining.abort();
        eprintln!("prism: {program} exited before it could join the mesh ({reason})");
        None
    };
    if let Some(Joined { mesh, me, .. }) = joined {
        if let Err(e) = me.set_status(InstanceStatus::Stopping, Some(&reason)).await {
            warn!(error = %e, "could not announce stopping");
        }
        me.deregister(Some(&reason)).await?;
        mesh.shutdown().await;
    }
    // Like a shell: the child's code, or 128 + the signal that ended it.
    let code = status
        .code()
        .or_else(|| signal_of(&status).map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// A placeholder instance: registered healthy, its id (or, with --json, the instance) on
/// stdout, deregistered on SIGTERM or Ctrl-C.
async fn placeholder(
    builder: prism_mesh::MeshBuilder,
    instance: ServiceInstance,
    args: &RegisterArgs,
    metrics: Option<std::net::SocketAddr>,
) -> Result<ExitCode, CliError> {
    let mesh = builder.connect().await?;
    let _metrics = match metrics {
        Some(addr) => Some(mesh.serve_metrics(addr).await?),
        None => None,
    };
    // Before the id is printed: a SIGTERM right after it must deregister, not kill.
    let mut signals = TerminationSignals::listen()?;
    let me = mesh.register(instance).await?;
    me.set_status(InstanceStatus::Healthy, Some("started"))
        .await?;
    if args.connect.json {
        let shown = crate::commands::inspect::instance_json(&me.instance(), None)?;
        println!("{shown}");
    } else {
        println!("{}", me.id());
    }
    let signal = signals.recv().await;
    me.set_status(InstanceStatus::Stopping, Some(signal))
        .await?;
    me.deregister(Some("stopped by signal")).await?;
    mesh.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The sidecar's place in the mesh once it joined.
struct Joined {
    mesh: Mesh,
    me: prism_mesh::Registration,
    _monitor: Option<prism_mesh::HealthMonitor>,
    _metrics: Option<prism_mesh::MetricsEndpoint>,
}

/// Connects and registers, trying again (each try waits out the connect deadline) until it
/// works: the child runs meanwhile.
async fn join(
    builder: prism_mesh::MeshBuilder,
    instance: ServiceInstance,
    check_http: bool,
    check_interval: Duration,
    program: String,
    service: String,
    metrics: Option<std::net::SocketAddr>,
) -> Joined {
    let mut delay = Duration::from_secs(1);
    loop {
        match register(
            builder.clone(),
            instance.clone(),
            check_http,
            check_interval,
            metrics,
        )
        .await
        {
            Ok(joined) => {
                eprintln!(
                    "prism: {program} registered as {service}/{}",
                    joined.me.id()
                );
                return joined;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot join the mesh yet; the process runs meanwhile");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn register(
    builder: prism_mesh::MeshBuilder,
    instance: ServiceInstance,
    check_http: bool,
    check_interval: Duration,
    metrics: Option<std::net::SocketAddr>,
) -> Result<Joined, prism_mesh::Error> {
    let mesh = builder.connect().await?;
    let metrics = match metrics {
        Some(addr) => match mesh.serve_metrics(addr).await {
            Ok(endpoint) => Some(endpoint),
            Err(e) => {
                mesh.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    let me = match mesh.register(instance).await {
        Ok(me) => me,
        Err(e) => {
            mesh.shutdown().await;
            return Err(e);
        }
    };
    let monitor = if check_http {
        Some(mesh.monitor_health(
            &me,
            HealthCheck::http(),
            HealthPolicy {
                interval: check_interval,
                rise: 1,
                fall: 2,
                ..HealthPolicy::default()
            },
        )?)
    } else {
        me.set_status(InstanceStatus::Healthy, Some("process started"))
            .await?;
        None
    };
    Ok(Joined {
        mesh,
        me,
        _monitor: monitor,
        _metrics: metrics,
    })
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// Waits for the child, passing SIGTERM and SIGINT on to it.
#[cfg(unix)]
async fn wait_passing_signals(
    child: &mut tokio::process::Child,
    signals: &mut TerminationSignals,
) -> Result<std::process::ExitStatus, CliError> {
    let pid = child.id();
    loop {
        tokio::select! {
            status = child.wait() => return status.map_err(|e| CliError::Other(format!("waiting for the process: {e}"))),
            signal = signals.recv() => forward(pid, signal.trim_start_matches("SIG")),
        }
    }
}

#[cfg(not(unix))]
async fn wait_passing_signals(
    child: &mut tokio::process::Child,
    _signals: &mut TerminationSignals,
) -> Result<std::process::ExitStatus, CliError> {
    // The console delivers Ctrl-C to the child too.
    child
        .wait()
        .await
        .map_err(|e| CliError::Other(format!("waiting for the process: {e}")))
}

/// Sends a signal to the child with kill(1): no unsafe code, no extra dependency.
#[cfg(unix)]
fn forward(pid: Option<u32>, signal: &str) {
    if let Some(pid) = pid {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            warn!(pid, signal, "could not pass the signal on");
        }
    }
}
