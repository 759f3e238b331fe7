//! Shared by the examples: pick the backend from the environment, and a tiny HTTP/1.1
//! server and client so the examples move real requests without an HTTP stack.
#![allow(dead_code)] // each example uses a different part

use std::future::Future;

use prism_mesh::{MemoryStore, Mesh, MeshBuilder, NatsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// NATS at `$NATS_URL` when set (what CI does), otherwise one in-process store.
pub fn mesh_builder(store: &MemoryStore) -> MeshBuilder {
    match std::env::var("NATS_URL") {
        Ok(url) => Mesh::builder().nats(NatsOptions::new(url)),
        Err(_) => Mesh::builder().memory_store(store.clone()),
    }
}

/// Serves HTTP on 127.0.0.1 (any port): `answer(method, path, body)` gives the body of a
/// 200 response. Returns the port.
pub async fn serve_http<F, Fut>(answer: F) -> std::io::Result<u16>
where
    F: Fn(String, String, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let Some((method, path, body)) = read_request(&mut stream).await else {
                    return;
                };
                let reply = answer(method, path, body).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

async fn read_request(stream: &mut TcpStream) -> Option<(String, String, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while data.len() < end + 4 + length {
                let n = stream.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                data.extend_from_slice(&buf[..n]);
            }
            let mut first = head.lines().next()?.split(' ');
            let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
            let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
            return Some((method, path, body));
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Sends one request to `base_url` (`http://host:port`) and returns the body of a 200.
pub async fn http_request(
    base_url: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<String> {
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("{base_url}{path}: {head}")));
    }
    Ok(body.to_string())
}
