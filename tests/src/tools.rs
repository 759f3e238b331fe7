//! Programs no one here wrote, which tests drive as a user would: `curl`, `dig`,
//! Prometheus, headless Chromium, a Python with a Consul client. A missing one is a loud
//! failure that says how to install it (`tests/run.sh` installs them).

use std::path::PathBuf;
use std::process::Command;

/// The path of `program`, found on `PATH` (or in `$<ENV>` when `env` names a variable
/// that is set), or a panic saying how to install it.
pub fn require_tool(program: &str, env: Option<&str>, install: &str) -> PathBuf {
    if let Some(path) = env.and_then(std::env::var_os) {
        return PathBuf::from(path);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is required by this test and was not found on PATH: {install} (tests/run.sh does this)")
        })
}

/// What `curl` got: the status, the response headers (lowercased names) and the body.
#[derive(Debug)]
pub struct Curled {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Curled {
    /// The body as JSON, or a panic showing it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `curl -s -i <args>` and parses what it printed. Blocking: call it from
/// `spawn_blocking` in async tests, or use [`curl_async`].
pub fn curl(args: &[&str]) -> Curled {
    let curl = require_tool("curl", None, "apt-get install curl");
    let output = Command::new(curl)
        .args(["-s", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "curl {args:?} printed no response: {text:?} (exit {:?})",
            output.status
        )
    });
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curled {
        status,
        headers,
        body: body.to_string(),
    }
}

/// [`curl`] on a blocking thread.
pub async fn curl_async(args: &[&str]) -> Curled {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .expect("curl thread")
}

/// What `dig @<server> -p <port> +tries=1 +time=3 <args>` printed.
fn dig(server: std::net::SocketAddr, args: &[&str]) -> String {
    let dig = require_tool("dig", None, "apt-get install dnsutils");
    let output = Command::new(dig)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `dig ... +short <args>` and returns its lines.
pub fn dig_short(server: std::net::SocketAddr, args: &[&str]) -> Vec<String> {
    let args: Vec<&str> = std::iter::once("+short")
        .chain(args.iter().copied())
        .collect();
    dig(server, &args).lines().map(str::to_string).collect()
}

/// The `status:` dig reports for a query (`NOERROR`, `NXDOMAIN`...).
pub fn dig_status(server: std::net::SocketAddr, args: &[&str]) -> String {
    let text = dig(server, args);
    text.split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output: {text}"))
        .to_string()
}
