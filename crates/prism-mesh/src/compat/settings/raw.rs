//! The `service_discovery` section as the file spells it, before any value is checked;
//! unknown keys are refused here, with the nearest known key.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{config_error, SECRET_KEYS, SECTION};
use crate::error::{Error, Result};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSection {
    pub(super) backend: Option<Scalar>,
    pub(super) backend_config: Option<RawBackendConfig>,
    pub(super) instance_ttl: Option<Scalar>,
    pub(super) heartbeat_interval: Option<Scalar>,
    pub(super) health_check_interval: Option<Scalar>,
    pub(super) cleanup_interval: Option<Scalar>,
    pub(super) tombstone_ttl: Option<Scalar>,
    pub(super) drain_period: Option<Scalar>,
    pub(super) auto_register: Option<Scalar>,
    pub(super) auto_deregister: Option<Scalar>,
    pub(super) load_balancing: Option<RawLoadBalancing>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) service: Option<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<Scalar>,
    pub(super) host: Option<Scalar>,
    pub(super) port: Option<Scalar>,
    pub(super) tags: Option<Vec<Scalar>>,
    pub(super) zone: Option<Scalar>,
    pub(super) weight: Option<Scalar>,
    pub(super) metadata: Option<BTreeMap<String, Scalar>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendConfig {
    pub(super) nats: Option<RawNats>,
    /// The seed's flat form, beside `nats:`: `url`, `username`, `password`, `token`.
    pub(super) url: Option<Scalar>,
    pub(super) username: Option<Scalar>,
    pub(super) password: Option<Scalar>,
    pub(super) token: Option<Scalar>,
    #[allow(dead_code)] // no options: only checked for unknown keys
    pub(super) memory: Option<RawMemory>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemory {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    pub(super) url: Option<Scalar>,
    pub(super) urls: Option<UrlList>,
    pub(super) token: Option<Scalar>,
    pub(super) user: Option<Scalar>,
    pub(super) password: Option<Scalar>,
    pub(super) nkey_seed: Option<Scalar>,
    pub(super) nkey_seed_file: Option<Scalar>,
    pub(super) creds_file: Option<Scalar>,
    pub(super) tls: Option<RawTls>,
    pub(super) bucket: Option<Scalar>,
    pub(super) event_stream: Option<Scalar>,
    pub(super) subject_prefix: Option<Scalar>,
    pub(super) replicas: Option<Scalar>,
    pub(super) shards: Option<Scalar>,
    pub(super) storage: Option<Scalar>,
    pub(super) connect_timeout: Option<Scalar>,
    pub(super) connect_deadline: Option<Scalar>,
    pub(super) request_timeout: Option<Scalar>,
    pub(super) event_max_age: Option<Scalar>,
    pub(super) event_max_bytes: Option<Scalar>,
    pub(super) client_name: Option<Scalar>,
    pub(super) inbox_prefix: Option<Scalar>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<Scalar>,
    pub(super) cert_file: Option<Scalar>,
    pub(super) key_file: Option<Scalar>,
    pub(super) required: Option<Scalar>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoadBalancing {
    pub(super) strategy: Option<Scalar>,
    pub(super) statuses: Option<Vec<Scalar>>,
    pub(super) services: Option<BTreeMap<String, Scalar>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Scalar>,
}

/// One scalar value as written (after expansion). No `Debug`: it may be a secret.
pub(super) enum Scalar {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(super) fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Unsigned(n) => n.to_string(),
            Scalar::Signed(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Signed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// `urls:` as a list, or as one string holding a comma-separated list.
pub(super) struct UrlList(pub(super) Vec<Scalar>);

impl<'de> Deserialize<'de> for UrlList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlsVisitor;
        impl<'de> Visitor<'de> for UrlsVisitor {
            type Value = UrlList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of urls or a comma-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UrlList, E> {
                Ok(UrlList(vec![Scalar::Text(v.to_string())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UrlList, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<Scalar>()? {
                    urls.push(url);
                }
                Ok(UrlList(urls))
            }
        }
        deserializer.deserialize_any(UrlsVisitor)
    }
}

pub(super) fn structure_error(
    origin: &str,
    error: &serde_path_to_error::Error<serde_yaml_ng::Error>,
) -> Error {
    let mut path = error.path().to_string();
    let mut message = error.inner().to_string();
    // Name the unknown field in the path (when the path does not end with it already).
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            if path == "." {
                path = field.to_string();
            } else if path.rsplit('.').next() != Some(field) {
                path = format!("{path}.{field}");
            }
            // serde says "unknown field `x`, expected one of `a`, `b`" (or "expected `a`",
            // or "there are no fields").
            message = match rest[end + 1..].strip_prefix(", ") {
                Some(hint) => format!("unknown key `{field}` ({hint})"),
                None => format!("unknown key `{field}`"),
            };
        }
    }
    let full = if path == "." {
        SECTION.to_string()
    } else {
        format!("{SECTION}.{path}")
    };
    let last = full.rsplit('.').next().unwrap_or_default();
    if SECRET_KEYS.contains(&last) {
        message = "expected a string".to_string();
    }
    config_error(format!("{origin}: {full}: {message}"))
}

// ---------------------------------------------------------------------------------------
// Values: checks, defaults and environment overrides.
