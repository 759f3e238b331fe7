//! `prism deregister` and `prism maint`: an operator's requests to an instance's owner,
//! which makes the change itself (an instance whose owner is gone can still be
//! deregistered). The server's permissions decide who may.

use std::process::ExitCode;

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

pub async fn deregister(
    service: &str,
    id: &str,
    reason: Option<&str>,
    connect: &ConnectArgs,
) -> Result<ExitCode, CliError> {
    let id = instance_id(id)?;
    prism_mesh::validate_service_name(service)?;
    let mesh = connect.connect_following(service).await?;
    let done = mesh
        .request_deregister(service, id, reason, Some(&requester(connect)))
        .await;
    mesh.shutdown().await;
    done?;
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
    let id = instance_id(id)?;
    prism_mesh::validate_service_name(service)?;
    let mesh = connect.connect_following(service).await?;
    let done = mesh
        .request_maintenance(service, id, on, reason, Some(&requester(connect)))
        .await;
    mesh.shutdown().await;
    done?;
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
