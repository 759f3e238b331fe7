//! How `prism` reaches the mesh: flags and `NATS_*` variables as the nats CLI has them, a
//! nats CLI context, or a `service_discovery` YAML file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use prism_mesh::{Mesh, NatsAuth, NatsOptions};
use serde::Deserialize;

use crate::CliError;

/// How to reach the mesh: flags, environment, or a `service_discovery` YAML file
/// (flags and environment win over the file).
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, short = 's', alias = "server", env = "NATS_URL")]
    pub url: Option<String>,
    /// A nats CLI context to take the connection from (`~/.config/nats/context/NAME.json`);
    /// flags and environment win over it.
    #[arg(long, env = "NATS_CONTEXT")]
    pub context: Option<String>,
    /// A service_discovery YAML file to take the connection from.
    #[arg(long, env = "PRISM_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File holding an NKey seed.
    #[arg(long, env = "NATS_NKEY")]
    pub nkey: Option<std::path::PathBuf>,
    /// Prefix of reply subjects, when permissions give each user its own
    /// (for example `_INBOX_observer`).
    #[arg(long, env = "NATS_INBOX_PREFIX")]
    pub inbox_prefix: Option<String>,
    /// Credentials file.
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// CA certificate for TLS.
    #[arg(long, env = "NATS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate for mutual TLS (with --tls-key).
    #[arg(long, env = "NATS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Client key for mutual TLS (with --tls-cert).
    #[arg(long, env = "NATS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How long to keep trying while the servers are unreachable, still starting or
    /// electing a leader, before giving up with exit code 3.
    #[arg(long, env = "PRISM_CONNECT_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_deadline: Duration,
    /// Print JSON (one object per line for streams).
    #[arg(long)]
    pub json: bool,
}

impl ConnectArgs {
    pub fn options(&self) -> Result<NatsOptions, CliError> {
        let context = self
            .context
            .as_deref()
            .map(NatsContext::load)
            .transpose()?
            .unwrap_or_default();
        let url = self.url.clone().or_else(|| context.url.clone());
        let mut options = match &self.config {
            Some(path) => {
                let settings = prism_mesh::DiscoverySettings::from_file(path)?;
                if settings.backend != prism_mesh::settings::BackendKind::Nats {
                    return Err(CliError::Usage(format!(
                        "{}: the prism command needs backend: nats (it joins a mesh from outside)",
                        path.display()
                    )));
                }
                settings.nats
            }
            None => NatsOptions::new(url.as_deref().unwrap_or(DEFAULT_URL)),
        };
        if let (Some(_), Some(url)) = (&self.config, &url) {
            options = options.servers(url);
        }
        options = options
            .client_name("prism-cli")
            .connect_deadline(self.connect_deadline);
        let mut chosen: Vec<(&str, NatsAuth)> = Vec::new();
        if let Some(token) = &self.token {
            chosen.push(("--token", NatsAuth::Token(token.clone())));
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => chosen.push((
                "--user/--password",
                NatsAuth::UserPassword {
                    user: user.clone(),
                    password: password.clone(),
                },
            )),
            (Some(_), None) => {
                return Err(CliError::Usage(
                    "--user needs --password (or NATS_PASSWORD)".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(CliError::Usage(
                    "--password needs --user (or NATS_USER)".to_string(),
                ))
            }
            (None, None) => {}
        }
        if let Some(seed_file) = &self.nkey {
            chosen.push(("--nkey", NatsAuth::NkeySeedFile(seed_file.clone())));
        }
        if let Some(creds) = &self.creds {
            chosen.push(("--creds", NatsAuth::CredentialsFile(creds.clone())));
        }
        match chosen.pop() {
            // No flag: the context's method, if it has one.
            None => {
                if let Some(auth) = context.auth()? {
                    options = options.auth(auth);
                }
            }
            // A flag's method replaces whichever a --config file named.
            Some((_, auth)) if chosen.is_empty() => options = options.auth(auth),
            Some((last, _)) => {
                let mut flags: Vec<&str> = chosen.iter().map(|(flag, _)| *flag).collect();
                flags.push(last);
                return Err(CliError::Usage(format!(
                    "{} each choose an authentication method; give one",
                    flags.join(", ")
                )));
            }
        }
        if let Some(prefix) = self.inbox_prefix.as_ref().or(context.inbox_prefix.as_ref()) {
            options = options.inbox_prefix(prefix);
        }
        if let Some(ca) = self.tls_ca.as_ref().or(context.ca.as_ref()) {
            options = options.tls_ca(ca);
        }
        match (
            self.tls_cert.as_ref().or(context.cert.as_ref()),
            self.tls_key.as_ref().or(context.key.as_ref()),
        ) {
            (Some(cert), Some(key)) => options = options.tls_client_cert(cert, key),
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--tls-cert and --tls-key go together".to_string(),
                ))
            }
        }
        Ok(options)
    }

    pub async fn connect(&self) -> Result<Mesh, CliError> {
        self.builder()?.connect().await.map_err(CliError::from)
    }

    /// A peer whose view holds `service` alone: the server sends it nothing of the rest
    /// of the mesh, whatever its size.
    pub async fn connect_following(&self, service: &str) -> Result<Mesh, CliError> {
        self.builder()?
            .follow(service)
            .connect()
            .await
            .map_err(CliError::from)
    }

    /// A mesh for reading the audit trail: the same connection, without loading the live
    /// view of the bucket (the trail is read from the event stream).
    pub async fn connect_reader(&self) -> Result<Mesh, CliError> {
        self.builder()?
            .registry(false)
            .connect()
            .await
            .map_err(CliError::from)
    }

    /// A short-lived peer: it records no expiries, writes no checkpoints and creates
    /// nothing (on a server without the mesh it says so, exit 4).
    pub fn builder(&self) -> Result<prism_mesh::MeshBuilder, CliError> {
        Ok(Mesh::builder()
            .nats(
                self.options()?
                    .connect_timeout(Duration::from_secs(3))
                    .create(false),
            )
            .publish_expired_events(false)
            .checkpoints(prism_mesh::CheckpointPolicy::disabled()))
    }
}

/// Where `prism` looks for NATS when nothing says otherwise.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The fields of a nats CLI context file this command uses (the file has more).
#[derive(Debug, Default, Deserialize)]
struct NatsContext {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    creds: Option<PathBuf>,
    #[serde(default)]
    nkey: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    inbox_prefix: Option<String>,
}

impl NatsContext {
    /// Reads `NAME.json` from the nats CLI's context directory
    /// (`$XDG_CONFIG_HOME/nats/context`, else `~/.config/nats/context`).
    fn load(name: &str) -> Result<NatsContext, CliError> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(CliError::Usage(format!("{name:?} is not a context name")));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
            .ok_or_else(|| CliError::Usage("no HOME to find nats contexts in".to_string()))?;
        let path = base.join("nats/context").join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read nats context {name:?} ({}): {e}",
                path.display()
            ))
        })?;
        let mut context: NatsContext = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("nats context {}: {e}", path.display())))?;
        // The nats CLI writes empty strings for unset fields.
        let some = |field: &mut Option<String>| {
            if field.as_deref() == Some("") {
                *field = None;
            }
        };
        for field in [
            &mut context.url,
            &mut context.token,
            &mut context.user,
            &mut context.password,
            &mut context.inbox_prefix,
        ] {
            some(field);
        }
        for field in [
            &mut context.creds,
            &mut context.nkey,
            &mut context.cert,
            &mut context.key,
            &mut context.ca,
        ] {
            if field.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *field = None;
            }
        }
        Ok(context)
    }

    /// The context's authentication method; an error when it names more than one.
    fn auth(&self) -> Result<Option<NatsAuth>, CliError> {
        let mut methods = Vec::new();
        if let Some(token) = &self.token {
            methods.push(NatsAuth::Token(token.clone()));
        }
        if let Some(user) = &self.user {
            methods.push(NatsAuth::UserPassword {
                user: user.clone(),
                password: self.password.clone().unwrap_or_default(),
            });
        }
        if let Some(creds) = &self.creds {
            methods.push(NatsAuth::CredentialsFile(creds.clone()));
        }
        if let Some(nkey) = &self.nkey {
            methods.push(NatsAuth::NkeySeedFile(nkey.clone()));
        }
        match methods.len() {
            0 | 1 => Ok(methods.pop()),
            _ => Err(CliError::Usage(
                "the nats context names more than one authentication method".to_string(),
            )),
        }
    }
}
