//! `prism`: a thin command line over the prism-mesh library.

mod commands;
mod connect;
mod output;
mod server;
mod time;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
pub use connect::ConnectArgs;

/// See and use a prism-mesh: services registering, finding each other and expiring.
#[derive(Parser)]
#[command(name = "prism", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Show the library's log lines on stderr: -v warnings, -vv info, -vvv debug
    /// (`PRISM_LOG` takes a full filter instead). Quiet by default.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

const EXAMPLES: &str = "Examples:
  prism demo                        start a local nats-server and show a mesh at work
  prism ls --url nats://127.0.0.1:4222
  prism get orders --json
  prism watch orders
  prism replay --since 1h --until 10m orders
  prism at 2026-11-25T10:00:00Z
  prism diff \"2h ago\" \"1h ago\"
  prism register --service api --port 8080 --check-http /health -- ./api-server
  prism health orders

Exit codes: 0 ok, 1 error, 2 usage, configuration or invalid input, 3 cannot reach the
server, 4 not found (a service, or no mesh on the server), 5 a health check failed, 6 authentication or permission refused;
`register` exits with its command's code (128 + signal), 126 when the command cannot be
run, 127 when it does not exist.";

#[derive(Subcommand)]
enum Command {
    /// Start a local nats-server (unless --url is given), run a few services, show their
    /// events, kill one and show its expiry, then replay the audit trail.
    Demo(commands::demo::DemoArgs),
    /// List services with instance counts by status.
    Ls(ConnectArgs),
    /// Show the instances of one service.
    Get {
        #[command(flatten)]
        args: commands::inspect::GetArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Stream lifecycle events as they happen, one line each.
    Watch {
        /// Only this service.
        service: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print the audit trail from the event stream: who registered, changed status,
    /// deregistered or expired, when and why.
    #[command(alias = "history")]
    Replay {
        #[command(flatten)]
        args: commands::audit::ReplayArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// The registry as it was at a past moment, rebuilt from the event stream.
    At {
        /// RFC 3339 (with Z or an offset), a date, epoch seconds, `now`, or an age such as
        /// `10m`, `-10m` or `"1h ago"`.
        #[arg(allow_hyphen_values = true)]
        time: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Write a checkpoint of the registry into the event stream now (peers and `prism
    /// witness` write them when due; under nats/auth.conf only the witness user may).
    Checkpoint(ConnectArgs),
    /// What changed in the registry between two moments.
    Diff {
        /// From (the forms of `prism at`).
        #[arg(allow_hyphen_values = true)]
        from: String,
        /// To (the forms of `prism at`).
        #[arg(allow_hyphen_values = true)]
        to: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Run a command as an instance of a service: register, heartbeat, report its health,
    /// pass SIGTERM/SIGINT on, deregister when it exits, exit with its code. Without a
    /// command (`announce`), hold a placeholder instance until SIGTERM or Ctrl-C.
    #[command(visible_alias = "announce")]
    Register(commands::sidecar::RegisterArgs),
    /// Run the health checks of a service's instances now, from here.
    Health {
        /// Service name.
        service: String,
        /// Only this instance id.
        instance: Option<String>,
        /// Timeout per check.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Ask an instance's owner to deregister it (an instance whose owner is gone is
    /// deregistered directly); the event says who asked and why.
    Deregister {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
        /// Why, for the event.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Put an instance in maintenance (`on`: picks and health checks leave it alone) or take
    /// it out (`off`: back to its status before), through its owner.
    Maint {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Why, for the event.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print a shell completion script: `prism completion bash > /etc/bash_completion.d/prism`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `prism man | man -l -`.
    Man,
    /// Record every expiry this user may record (run it as the `witness` user of
    /// nats/auth.conf), printing each, until SIGTERM or Ctrl-C.
    Witness(ConnectArgs),
    /// Serve the mesh to everything that is not a Rust process: a JSON API with live
    /// events and time travel, a Consul-compatible HTTP API and DNS, and a web page.
    Serve(commands::serve::ServeArgs),
}

/// The log filter: `PRISM_LOG` if set, else one from `-v`s (none: nothing). async-nats is
/// capped at info whenever the filter would let it log below that, because at debug it
/// prints server urls with any password in them.
fn log_filter(verbose: u8) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::filter::LevelFilter;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRISM_LOG").unwrap_or_else(|_| {
        let level = match verbose {
            0 => LevelFilter::OFF,
            1 => LevelFilter::WARN,
            2 => LevelFilter::INFO,
            _ => LevelFilter::DEBUG,
        };
        tracing_subscriber::EnvFilter::default().add_directive(level.into())
    });
    if filter
        .max_level_hint()
        .is_some_and(|hint| hint > LevelFilter::INFO)
    {
        match prism_mesh::SECRET_SAFE_LOG_DIRECTIVE.parse() {
            Ok(cap) => filter.add_directive(cap),
            Err(_) => filter,
        }
    } else {
        filter
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&stderr) && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_env_filter(log_filter(cli.verbose))
        .init();
    let result = match cli.command {
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Ls(connect) => commands::inspect::ls(&connect).await,
        Command::Get { args, connect } => commands::inspect::get(&args, &connect).await,
        Command::Watch { service, connect } => {
            commands::inspect::watch(service.as_deref(), &connect).await
        }
        Command::Replay { args, connect } => commands::audit::replay(&args, &connect).await,
        Command::At { time, connect } => commands::audit::at(&time, &connect).await,
        Command::Checkpoint(connect) => commands::audit::checkpoint(&connect).await,
        Command::Diff { from, to, connect } => commands::audit::diff(&from, &to, &connect).await,
        Command::Register(args) => commands::sidecar::run(args).await,
        Command::Health {
            service,
            instance,
            timeout,
            connect,
        } => commands::health::run(&service, instance.as_deref(), timeout, &connect).await,
        Command::Witness(connect) => commands::witness::run(&connect).await,
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Deregister {
            service,
            instance,
            reason,
            connect,
        } => commands::admin::deregister(&service, &instance, reason.as_deref(), &connect).await,
        Command::Maint {
            service,
            instance,
            state,
            reason,
            connect,
        } => {
            commands::admin::maintenance(
                &service,
                &instance,
                state == "on",
                reason.as_deref(),
                &connect,
            )
            .await
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "prism", &mut script);
            print_generated(&script)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|e| CliError::Other(format!("cannot render the manual page: {e}")))
                .and_then(|()| print_generated(&page))
        }
    };
    match result {
        Ok(code) => code,
        Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes a generated script or page to stdout (a closed pipe ends quietly).
fn print_generated(bytes: &[u8]) -> Result<ExitCode, CliError> {
    let mut out = output::Out::new(false);
    out.raw(bytes)?;
    out.flush().map(|()| ExitCode::SUCCESS)
}

/// A CLI failure: what to tell the user, and the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the library (connection, setup, input...).
    #[error("{0}")]
    Mesh(#[from] prism_mesh::Error),
    /// Bad usage.
    #[error("{0}")]
    Usage(String),
    /// Anything else (spawning processes, I/O).
    #[error("{0}")]
    Other(String),
    /// The sidecar's command could not be run: 127 when it does not exist, 126 when it is
    /// not executable (as a shell says).
    #[error("{message}")]
    CommandNotRun { code: u8, message: String },
    /// Standard output was closed by its reader (`| head`): the command ends quietly.
    #[error("standard output closed")]
    OutputClosed,
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::CommandNotRun { code, .. } => *code,
            CliError::Mesh(e)
                if matches!(
                    e.kind(),
                    prism_mesh::ErrorKind::InvalidConfig | prism_mesh::ErrorKind::InvalidInput
                ) =>
            {
                2
            }
            CliError::Mesh(e) if e.kind() == prism_mesh::ErrorKind::PermissionDenied => 6,
            CliError::Mesh(e)
                if matches!(
                    e.kind(),
                    prism_mesh::ErrorKind::Connect | prism_mesh::ErrorKind::Timeout
                ) =>
            {
                3
            }
            CliError::Mesh(e)
                if matches!(
                    e.kind(),
                    prism_mesh::ErrorKind::NotRegistered | prism_mesh::ErrorKind::NotFound
                ) =>
            {
                4
            }
            _ => 1,
        }
    }
}
