//! The `service:` section: the instance a service registers as itself when the client
//! starts (`auto_register`), so a deployment can describe it beside the connection.

use super::bare;
use super::env::{non_empty, Loader};
use super::raw::{RawService, Scalar};
use crate::error::Result;
use crate::instance::{Metadata, ServiceInstance};

/// The instance a service registers as itself: `service_discovery.service`.
///
/// [`DiscoveryClient::from_settings`](crate::DiscoveryClient::from_settings) registers it
/// when `auto_register` is true (the default); without this section there is nothing to
/// register automatically and the service calls `register_myself` itself. `prism register
/// --config` takes it where its flags are silent.
///
/// ```yaml
/// service_discovery:
///   service:
///     name: market-data
///     host: ${POD_IP}
///     port: 8080
///     tags: [v2]
///     zone: eu-west-1a
///     metadata: { version: "2.1", weight: 50 }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    /// The service's name.
    pub name: String,
    /// The host peers connect to.
    pub host: String,
    /// The port peers connect to.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// The availability zone.
    pub zone: Option<String>,
    /// The load-balancing weight; `None`: metadata `weight`, else the default.
    pub weight: Option<u32>,
    /// Metadata (strings, numbers and booleans).
    pub metadata: Metadata,
}

impl ServiceSettings {
    /// A new instance (fresh id, status `Starting`) as the section describes it.
    pub fn instance(&self) -> Result<ServiceInstance> {
        let mut builder = ServiceInstance::builder(&self.name, &self.host, self.port)
            .metadata_map(self.metadata.clone());
        for tag in &self.tags {
            builder = builder.tag(tag.clone());
        }
        if let Some(zone) = &self.zone {
            builder = builder.zone(zone.clone());
        }
        if let Some(weight) = self.weight {
            builder = builder.weight(weight);
        }
        builder.build()
    }
}

impl Loader<'_> {
    pub(super) fn load_service(&self, raw: RawService) -> Result<ServiceSettings> {
        let required = |key: &str, value: Option<Scalar>| {
            value
                .as_ref()
                .and_then(non_empty)
                .ok_or_else(|| self.at(&format!("service.{key}"), "missing (required)"))
        };
        let name = required("name", raw.name)?;
        let host = required("host", raw.host)?;
        let port_text = required("port", raw.port)?;
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                self.at(
                    "service.port",
                    format!("expected a port from 1 to 65535, got {port_text:?}"),
                )
            })?;
        let weight = match raw.weight.as_ref().and_then(non_empty) {
            None => None,
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                self.at(
                    "service.weight",
                    format!("expected a whole number, got {text:?}"),
                )
            })?),
        };
        let tags = raw
            .tags
            .unwrap_or_default()
            .iter()
            .filter_map(non_empty)
            .collect();
        let zone = raw.zone.as_ref().and_then(non_empty);
        let metadata = raw
            .metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, json(value)))
            .collect::<Metadata>();
        let service = ServiceSettings {
            name,
            host,
            port,
            tags,
            zone,
            weight,
            metadata,
        };
        // The instance's own checks (name, host, tags, metadata size) at load, not at start.
        service
            .instance()
            .map_err(|e| self.at("service", bare(&e)))?;
        Ok(service)
    }
}

fn json(value: Scalar) -> serde_json::Value {
    match value {
        Scalar::Text(s) => s.into(),
        Scalar::Unsigned(n) => n.into(),
        Scalar::Signed(n) => n.into(),
        Scalar::Float(x) => x.into(),
        Scalar::Bool(b) => b.into(),
    }
}
