//! The process-wide client of the MarketPrism module's convenience functions
//! (`register_service`, `discover_service`, ...): one [`DiscoveryClient`] per process,
//! configured once.

use std::sync::{Arc, OnceLock};

use super::settings::DiscoverySettings;
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{Metadata, ServiceInstance};
use crate::mesh::MeshBuilder;

use super::client::{ClientOptions, DiscoveryClient};

static DEFAULT: OnceLock<DiscoveryClient> = OnceLock::new();

/// Configures the process-wide client used by [`register_service`], [`discover_service`]
/// and [`get_service_url`]. Once per process: a second call is an error.
pub async fn configure_default(
    builder: MeshBuilder,
    options: ClientOptions,
) -> Result<&'static DiscoveryClient> {
    ensure_unconfigured()?;
    install_default(DiscoveryClient::connect_with(builder, options).await?)
}

/// [`configure_default`] from settings (a `service_discovery` YAML file).
pub async fn configure_default_from_settings(
    settings: &DiscoverySettings,
) -> Result<&'static DiscoveryClient> {
    ensure_unconfigured()?;
    install_default(DiscoveryClient::from_settings(settings).await?)
}

fn already_configured() -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        "the default discovery client is already configured",
    )
}

// Checked before connecting, so a second call does not open a connection for nothing.
fn ensure_unconfigured() -> Result<()> {
    match DEFAULT.get() {
        Some(_) => Err(already_configured()),
        None => Ok(()),
    }
}

fn install_default(client: DiscoveryClient) -> Result<&'static DiscoveryClient> {
    DEFAULT.set(client).map_err(|_| already_configured())?;
    default_client()
}

/// The process-wide client; an error until [`configure_default`] ran.
pub fn default_client() -> Result<&'static DiscoveryClient> {
    DEFAULT.get().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidConfig,
            "no default discovery client: call prism_mesh::configure_default first",
        )
    })
}

/// `register_myself` on the process-wide client.
pub async fn register_service(
    service: &str,
    host: &str,
    port: u16,
    metadata: Metadata,
    tags: Vec<String>,
) -> Result<Arc<ServiceInstance>> {
    default_client()?
        .register_myself(service, host, port, metadata, tags)
        .await
}

/// `discover` on the process-wide client.
pub fn discover_service(service: &str) -> Result<Vec<Arc<ServiceInstance>>> {
    Ok(default_client()?.discover(service))
}

/// `get_service_url` on the process-wide client.
pub fn get_service_url(service: &str) -> Result<String> {
    default_client()?.get_service_url(service)
}
