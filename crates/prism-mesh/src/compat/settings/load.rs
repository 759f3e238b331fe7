//! One settings value from the file's section: each key layered over its default and under
//! its `PRISM_*` variable, checked, and named in any error.

use std::net::SocketAddr;
use std::time::Duration;

use super::env::{non_empty, parse_bool, parse_duration, parse_strategy, unknown_status, Loader};
use super::raw::{RawNats, RawSection};
use super::{bare, BackendKind, DiscoverySettings};
use crate::error::Result;
use crate::instance::{validate_service_name, InstanceStatus};

impl Loader<'_> {
    pub(super) fn load(mut self, raw: RawSection) -> Result<DiscoverySettings> {
        let mut settings = DiscoverySettings {
            source: self.origin.to_string(),
            ..DiscoverySettings::default()
        };

        if let Some(backend) = self.layered("backend", raw.backend, Some("PRISM_BACKEND"), |s| {
            non_empty(s)
                .map(|t| t.parse::<BackendKind>().map_err(|e| bare(&e)))
                .transpose()
        })? {
            settings.backend = backend;
        }

        let raw_cleanup_set = raw.cleanup_interval.is_some();
        for (key, raw, var, field, zero_ok) in [
            (
                "instance_ttl",
                raw.instance_ttl,
                Some("PRISM_INSTANCE_TTL"),
                &mut settings.instance_ttl,
                false,
            ),
            (
                "heartbeat_interval",
                raw.heartbeat_interval,
                Some("PRISM_HEARTBEAT_INTERVAL"),
                &mut settings.heartbeat_interval,
                false,
            ),
            (
                "health_check_interval",
                raw.health_check_interval,
                Some("PRISM_HEALTH_CHECK_INTERVAL"),
                &mut settings.health_check_interval,
                false,
            ),
            (
                "cleanup_interval",
                raw.cleanup_interval,
                None,
                &mut settings.cleanup_interval,
                false,
            ),
            (
                "tombstone_ttl",
                raw.tombstone_ttl,
                None,
                &mut settings.tombstone_ttl,
                false,
            ),
            (
                "drain_period",
                raw.drain_period,
                None,
                &mut settings.drain_period,
                true,
            ),
        ] {
            if let Some(duration) = self.layered(key, raw, var, parse_duration)? {
                if duration.is_zero() && !zero_ok {
                    return Err(self.at(key, "must be above zero"));
                }
                *field = duration;
            }
        }
        if raw_cleanup_set {
            // Said once, so that a key the mesh needs no work for is never silently inert.
            tracing::info!(
                source = %self.origin,
                cleanup_interval = %humantime::format_duration(settings.cleanup_interval),
                "cleanup_interval is met by the server: an expired instance leaves every \
                 peer's view within about a second of its TTL"
            );
        }
        for (key, raw, field) in [
            (
                "auto_register",
                raw.auto_register,
                &mut settings.auto_register,
            ),
            (
                "auto_deregister",
                raw.auto_deregister,
                &mut settings.auto_deregister,
            ),
        ] {
            if let Some(flag) = self.layered(key, raw, None, parse_bool)? {
                *field = flag;
            }
        }

        let nats = match raw.backend_config {
            None => RawNats::default(),
            Some(config) => {
                let flat = config.url.is_some()
                    || config.username.is_some()
                    || config.password.is_some()
                    || config.token.is_some();
                match (config.nats, flat) {
                    (Some(_), true) => {
                        return Err(self.at(
                            "backend_config",
                            "give the connection either flat (url, username, password, token, \
                             as MarketPrism's module reads them) or under `nats:`, not both",
                        ))
                    }
                    (Some(nats), false) => nats,
                    // The seed's flat form is the `nats:` section's, `username` its `user`.
                    (None, _) => RawNats {
                        url: config.url,
                        user: config.username,
                        password: config.password,
                        token: config.token,
                        ..RawNats::default()
                    },
                }
            }
        };
        self.load_nats(nats, &mut settings.nats)?;

        let balancing = raw.load_balancing.unwrap_or_default();
        if let Some(strategy) = self.layered(
            "load_balancing.strategy",
            balancing.strategy,
            Some("PRISM_LB_STRATEGY"),
            parse_strategy,
        )? {
            settings.load_balancing.strategy = strategy;
        }
        if let Some(statuses) = balancing.statuses {
            let mut order = Vec::new();
            for (index, status) in statuses.iter().enumerate() {
                let key = format!("load_balancing.statuses[{index}]");
                let text = status.text();
                let status = text
                    .trim()
                    .parse::<InstanceStatus>()
                    .map_err(|_| self.at(&key, unknown_status(&text)))?;
                order.push(status);
            }
            settings.load_balancing.statuses = order;
            settings
                .load_balancing
                .selection()
                .map_err(|e| self.at("load_balancing.statuses", bare(&e)))?;
        }
        for (service, strategy) in balancing.services.unwrap_or_default() {
            let key = format!("load_balancing.services.{service}");
            validate_service_name(&service).map_err(|e| self.at(&key, bare(&e)))?;
            let strategy = parse_strategy(&strategy)
                .map_err(|m| self.at(&key, m))?
                .ok_or_else(|| self.at(&key, "empty strategy"))?;
            settings.load_balancing.services.insert(service, strategy);
        }

        if let Some(listen) = raw.metrics.and_then(|m| m.listen) {
            if let Some(text) = non_empty(&listen) {
                settings.metrics.listen = Some(text.parse::<SocketAddr>().map_err(|_| {
                    self.at(
                        "metrics.listen",
                        format!(
                            "invalid address {text:?} (expected ip:port, such as 127.0.0.1:9464)"
                        ),
                    )
                })?);
            }
        }

        settings.service = raw
            .service
            .map(|service| self.load_service(service))
            .transpose()?;

        let show = |d: Duration| humantime::format_duration(d).to_string();
        for (key, value, most) in [
            (
                "instance_ttl",
                settings.instance_ttl,
                crate::protocol::MAX_INSTANCE_TTL,
            ),
            (
                "tombstone_ttl",
                settings.tombstone_ttl,
                crate::config::MAX_TOMBSTONE_TTL,
            ),
        ] {
            if value < Duration::from_secs(1) || value > most {
                return Err(self.at(
                    key,
                    format!("must be 1s to {}, got {}", show(most), show(value)),
                ));
            }
        }
        if settings.heartbeat_interval >= settings.instance_ttl {
            return Err(self.at(
                "heartbeat_interval",
                format!(
                    "{} must be below instance_ttl ({})",
                    show(settings.heartbeat_interval),
                    show(settings.instance_ttl)
                ),
            ));
        }
        Ok(settings)
    }
}
