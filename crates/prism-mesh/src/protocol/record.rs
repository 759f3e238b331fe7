//! MessagePack payloads (maps with named fields, so other languages and newer versions can
//! add fields; unknown fields are ignored).

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::instance::{unix_millis, InstanceStatus, ServiceInstance, MAX_METADATA_DEPTH};

/// Protocol version written in every payload (`v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Deepest nesting of MessagePack arrays and maps a reader accepts in a payload: the
/// record, the instance and the metadata map, plus [`MAX_METADATA_DEPTH`] levels inside a
/// metadata value, plus slack for fields of newer versions. Decoding recurses once per
/// level, so this bounds the stack a hostile payload can make a reader use (rmp-serde's own
/// default of 1024 levels overflows a 2 MiB thread stack in debug builds).
pub const MAX_PAYLOAD_DEPTH: usize = MAX_METADATA_DEPTH + 8;

/// The value of an instance's KV key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Protocol version.
    pub v: u32,
    /// The full instance (shared: writers serialize the instance they hold, no copy).
    pub instance: Arc<ServiceInstance>,
    /// The TTL the owner refreshes the key with, in milliseconds.
    #[serde(default, deserialize_with = "crate::instance::nil_as_default")]
    pub ttl_ms: u64,
    /// Why the instance last changed (status reason, "re-asserted", ...).
    #[serde(default)]
    pub reason: Option<String>,
}

impl InstanceRecord {
    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(self)
    }

    /// Decodes and checks the version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        super::shape::instance_record(bytes, MAX_PAYLOAD_DEPTH)
            .map_err(|why| shape_error(bytes, why))?;
        let record: InstanceRecord = decode(bytes)?;
        check_version(record.v)?;
        Ok(record)
    }
}

/// Name of a lifecycle event; the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventName {
    /// An instance joined.
    Registered,
    /// Its metadata, tags, weight, zone or address changed.
    Updated,
    /// Its status changed.
    Status,
    /// Its owner removed it.
    Deregistered,
    /// Its key expired on the server (the owner stopped heartbeating).
    Expired,
}

impl EventName {
    /// The subject token: `registered`, `updated`, `status`, `deregistered`, `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventName::Registered => "registered",
            EventName::Updated => "updated",
            EventName::Status => "status",
            EventName::Deregistered => "deregistered",
            EventName::Expired => "expired",
        }
    }
}

/// The body of a lifecycle event on `discovery.<service>.<instance>.<event>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Protocol version.
    pub v: u32,
    /// What happened.
    pub event: EventName,
    /// The instance after the change (for `deregistered`/`expired`: as last seen).
    pub instance: Arc<ServiceInstance>,
    /// For `status`: the status before.
    #[serde(default)]
    pub previous_status: Option<InstanceStatus>,
    /// Human-readable reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the publisher saw the change.
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
    /// Id of the publishing peer.
    pub origin: String,
}

impl EventRecord {
    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(self)
    }

    /// Decodes and checks the version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        super::shape::event_record(bytes, MAX_PAYLOAD_DEPTH)
            .map_err(|why| shape_error(bytes, why))?;
        let record: EventRecord = decode(bytes)?;
        check_version(record.v)?;
        Ok(record)
    }
}

/// A typical record's encoded size: one buffer, not a chain of doublings from empty.
const ENCODE_CAPACITY: usize = 512;

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(ENCODE_CAPACITY);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut bytes).with_struct_map())
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode payload", e))?;
    Ok(bytes)
}

pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    // rmp-serde stops when its counter, decremented per array or map, reaches zero.
    deserializer.set_max_depth(MAX_PAYLOAD_DEPTH + 1);
    T::deserialize(&mut deserializer).map_err(|e| {
        Error::with_source(
            ErrorKind::Decode,
            format!("cannot decode {}-byte MessagePack payload", bytes.len()),
            e,
        )
    })
}

/// A payload refused for its shape, before decoding.
fn shape_error(bytes: &[u8], why: String) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!(
            "cannot decode {}-byte MessagePack payload: {why}",
            bytes.len()
        ),
    )
}

pub(super) fn check_version(v: u32) -> Result<()> {
    if v == 0 {
        return Err(Error::new(
            ErrorKind::Decode,
            "payload has protocol version 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InstanceRecord {
        InstanceRecord {
            v: PROTOCOL_VERSION,
            instance: ServiceInstance::builder("svc", "h", 80)
                .metadata(
                    "k",
                    serde_json::json!({"nested": [1, 2.5, "x", null, true]}),
                )
                .build()
                .unwrap()
                .into(),
            ttl_ms: 10_000,
            reason: None,
        }
    }

    #[test]
    fn instance_record_round_trips() {
        let record = record();
        let decoded = InstanceRecord::decode(&record.encode().unwrap()).unwrap();
        // Timestamps travel as milliseconds.
        assert!(decoded.instance.same_content(&record.instance));
    }

    #[test]
    fn unknown_newer_fields_are_ignored() {
        #[derive(Serialize)]
        struct Newer {
            v: u32,
            instance: Arc<ServiceInstance>,
            ttl_ms: u64,
            shiny_new_field: Vec<String>,
        }
        let newer = Newer {
            v: 7,
            instance: record().instance,
            ttl_ms: 1,
            shiny_new_field: vec!["x".into()],
        };
        let bytes = rmp_serde::to_vec_named(&newer).unwrap();
        assert_eq!(InstanceRecord::decode(&bytes).unwrap().v, 7);
    }

    #[test]
    fn garbage_wrong_types_and_truncation_are_decode_errors() {
        let good = record().encode().unwrap();
        for bad in [
            &b""[..],
            &b"\xff\xfe garbage"[..],
            &good[..good.len() / 2],
            &rmp_serde::to_vec_named(&("a", 1)).unwrap()[..],
        ] {
            assert_eq!(
                InstanceRecord::decode(bad).unwrap_err().kind(),
                ErrorKind::Decode
            );
        }
    }
}
