//! Starting a throwaway local nats-server for `prism demo`.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::CliError;

/// A nats-server child with JetStream in a temporary directory; killed on drop.
pub struct LocalServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl LocalServer {
    pub fn start() -> Result<LocalServer, CliError> {
        // A demo can also run against a server of the user's: say so with the hint.
        let bin = prism_nats_server::binary().map_err(|why| {
            CliError::Other(format!("{why}; or pass --url to use a running server"))
        })?;
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

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
