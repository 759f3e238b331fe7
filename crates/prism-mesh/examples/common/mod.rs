//! Shared by the examples: pick the backend from the environment, and a small HTTP server
//! and client (hyper) so the examples move real requests.
#![allow(dead_code)] // each example uses a different part

use std::convert::Infallible;
use std::future::Future;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prism_mesh::{MemoryStore, Mesh, MeshBuilder, NatsOptions};
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
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let answer = answer.clone();
                async move {
                    let method = request.method().to_string();
                    let path = request.uri().to_string();
                    let body = match request.into_body().collect().await {
                        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                        Err(_) => String::new(),
                    };
                    let reply = answer(method, path, body).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(reply))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// Sends one request to `base_url` (`http://host:port`) and returns the body of a 200.
pub async fn http_request(
    base_url: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<String> {
    let address = base_url.trim_start_matches("http://");
    let stream = TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, address)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(std::io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if !status.is_success() {
        return Err(std::io::Error::other(format!("{base_url}{path}: {status}")));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
