//! Headless Chromium driven over the DevTools protocol: open a page, evaluate JavaScript
//! in it, save a screenshot. Enough to check what a person would see.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

use crate::require_tool;

/// A headless Chromium showing one page, killed on drop.
pub struct Browser {
    child: Child,
    page: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` and attaches to the page.
    pub async fn open(url: &str) -> Browser {
        let chromium = require_tool(
            "chromium",
            Some("PRISM_CHROMIUM"),
            "apt-get install chromium",
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
        let stderr = child.stderr.take().expect("stderr");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                let rest = line.split("DevTools listening on ws://127.0.0.1:").nth(1)?;
                rest.split('/').next()?.parse::<u16>().ok()
            });
            // Keep draining, or Chromium blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            port
        })
        .await
        .expect("stderr reader")
        .expect("chromium printed its DevTools address");
        let (_, _, list) = crate::http_get(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "/json/list",
        )
        .await;
        let targets: Value = serde_json::from_str(&list).expect("target list is JSON");
        let address = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (page, _) = ClientBuilder::from_uri(address.parse().expect("ws uri"))
            .connect()
            .await
            .expect("DevTools websocket");
        Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.page
            .send(Message::text(request))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .expect("DevTools answered in time")
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Some(text) = message.as_text() else {
                continue;
            };
            let reply: Value = serde_json::from_str(text).expect("DevTools sends JSON");
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("{method} failed: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression evaluated in the page.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Saves a PNG of the page as it looks now.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::write(path, png).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
