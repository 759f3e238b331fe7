//! `prism deregister` and `prism maint`: an operator's requests to an instance's owner,
//! which makes the change itself (an instance whose owner is gone can still be
//! deregistered). The server's permissions decide who may.

use std::future::Future;
use std::process::ExitCode;

use prism_mesh::Mesh;
use uuid::Uuid;

use crate::{CliError, ConnectArgs};

/// Who asks, for the events: the NATS user when one is given, else the login name.
fn requester(connect: &ConnectArgs) -> String {
    let who = connect
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_string());
    format!("{who} (prism)")
}

fn instance_id(text: &str) -> Result<Uuid, CliError> {
    text.parse()
        .map_err(|_| CliError::Usage(format!("{text:?} is not an instance id (a UUID)")))
}

/// Sends one request about `service`/`id` through a short-lived peer that follows that
/// service: `ask` gets the peer, the id and who asks.
async fn request<F, Fut>(
    service: &str,
    id: &str,
    connect: &ConnectArgs,
    ask: F,
) -> Result<Uuid, CliError>
where
    F: FnOnce(Mesh, Uuid, String) -> Fut,
    Fut: Future<Output = prism_mesh::Result<()>>,
{
    let id = instance_id(id)?;
    prism_mesh::validate_service_name(service)?;
    let mesh = connect.connect_following(service).await?;
    let done = ask(mesh.clone(), id, requester(connect)).await;
    mesh.shutdown().await;
    done?;
    Ok(id)
}

pub async fn deregister(
    service: &str,
    id: &str,
    reason: Option<&str>,
    connect: &ConnectArgs,
) -> Result<ExitCode, CliError> {
    let id = request(service, id, connect, |mesh, id, by| async move {
        mesh.request_deregister(service, id, reason, Some(&by))
            .await
    })
    .await?;
    println!("{service}/{id} deregistered");
    Ok(ExitCode::SUCCESS)
}

pub async fn maintenance(
    service: &str,
    id: &str,
    on: bool,
    reason: Option<&str>,
    connect: &ConnectArgs,
) -> Result<ExitCode, CliError> {
    let id = request(service, id, connect, |mesh, id, by| async move {
        mesh.request_maintenance(service, id, on, reason, Some(&by))
            .await
    })
    .await?;
    println!(
        "{service}/{id} {}",
        if on {
            "in maintenance"
        } else {
            "out of maintenance"
        }
    );
    Ok(ExitCode::SUCCESS)
}
