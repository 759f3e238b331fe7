//! The wire protocol: subjects, keys, headers and payloads. `docs/protocol.md` is the
//! language-neutral specification of what this module implements.

pub(crate) mod bucket;
mod checkpoint;
mod control;
#[cfg(test)]
mod proptests;
mod record;
mod shape;

pub use checkpoint::{
    checkpoint_subject, split_into_parts, CheckpointPart, CHECKPOINT_PART_BYTES, CHECKPOINT_TOKEN,
    MAX_CHECKPOINT_PART_BYTES,
};
pub use control::{control_filter, control_subject, ControlAction, ControlReply, ControlRequest};
pub use record::{EventName, EventRecord, InstanceRecord, MAX_PAYLOAD_DEPTH, PROTOCOL_VERSION};

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::instance::ServiceInstance;

/// Default first token of lifecycle event subjects: `discovery.<service>.<instance>.<event>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "discovery";
/// Default KV bucket holding one key per live instance.
pub const DEFAULT_BUCKET: &str = "prism-instances";
/// Default JetStream stream storing lifecycle events (the audit trail).
pub const DEFAULT_EVENT_STREAM: &str = "PRISM_DISCOVERY";

/// Header names used on lifecycle events and KV records.
pub mod headers {
    /// Service name, readable without decoding the body.
    pub const SERVICE: &str = "Prism-Service";
    /// Instance id.
    pub const INSTANCE: &str = "Prism-Instance";
    /// Current status of the instance.
    pub const STATUS: &str = "Prism-Status";
    /// Status before a status change.
    pub const PREVIOUS_STATUS: &str = "Prism-Previous-Status";
    /// Human-readable reason of the change.
    pub const REASON: &str = "Prism-Reason";
    /// Id of the peer that published the message.
    pub const ORIGIN: &str = "Prism-Origin";
    /// On an `expired` event: the bucket revision of the record that expired, which makes
    /// one expiry one event whoever records it.
    pub const REVISION: &str = "Prism-Revision";
    /// On a checkpoint part: the last event stream sequence folded into it.
    pub const CHECKPOINT_UP_TO: &str = "Prism-Checkpoint-Up-To";
    /// On a checkpoint part: `<part>/<parts>`.
    pub const CHECKPOINT_PART: &str = "Prism-Checkpoint-Part";
    /// JetStream de-duplication id.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
    /// Per-message TTL (nats-server 2.11+).
    pub const NATS_TTL: &str = "Nats-TTL";
    /// Optimistic concurrency on the key's last revision.
    pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    /// The subject (wildcards allowed) whose last sequence
    /// [`NATS_EXPECTED_LAST_SUBJECT_SEQUENCE`] checks, instead of the message's own.
    pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
        "Nats-Expected-Last-Subject-Sequence-Subject";
    /// Reason of a server-written marker (`MaxAge`, `Purge`, `Remove`).
    pub const NATS_MARKER_REASON: &str = "Nats-Marker-Reason";
    /// Removes earlier messages: of the subject (`sub`) or of the whole stream (`all`).
    pub const NATS_ROLLUP: &str = "Nats-Rollup";
    /// KV operation (`DEL`, `PURGE`); absent on puts.
    pub const KV_OPERATION: &str = "KV-Operation";
}

pub use crate::instance::instance_key;

/// Splits a KV key into service name and instance id; `None` if it is not one of ours.
pub fn parse_instance_key(key: &str) -> Option<(&str, Uuid)> {
    let (service, id) = key.split_once('.')?;
    crate::instance::validate_service_name(service).ok()?;
    // Only the canonical lowercase hyphenated form (36 characters; the braced, URN and
    // simple forms have other lengths), so two keys never name the same instance.
    if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let parsed = Uuid::parse_str(id).ok()?;
    Some((service, parsed))
}

/// Subject of a lifecycle event: `<prefix>.<service>.<instance id>.<event>`.
pub fn event_subject(prefix: &str, service: &str, id: &Uuid, event: EventName) -> String {
    format!("{prefix}.{service}.{}.{}", id.hyphenated(), event.as_str())
}

/// The lifecycle events of one service, one instance, both, or all (a subject filter of
/// four tokens, so checkpoints never match): `<prefix>.<service|*>.<id|*>.*`.
pub fn events_filter(prefix: &str, service: Option<&str>, id: Option<&Uuid>) -> String {
    let id = id.map_or_else(|| "*".to_string(), |id| id.hyphenated().to_string());
    format!("{prefix}.{}.{id}.*", service.unwrap_or("*"))
}

/// The subjects of every lifecycle event of one instance: `<prefix>.<service>.<id>.>`.
pub fn instance_events_filter(prefix: &str, service: &str, id: &Uuid) -> String {
    format!("{prefix}.{service}.{}.>", id.hyphenated())
}

/// A put peers apply: the instance it holds, the reason it gives and the TTL its owner
/// states (which peers judge its expiry by).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPut {
    /// The instance.
    pub instance: Arc<ServiceInstance>,
    /// Why the instance last changed, if the owner said.
    pub reason: Option<String>,
    /// The record's `ttl_ms`.
    pub ttl: Duration,
}

/// The one definition of a put peers apply (`docs/protocol.md` §7.5), from the message's
/// key (the subject after `$KV.<bucket>.`), its `Nats-TTL` header and its body: what it
/// holds, or a `Decode` error saying why peers refuse it. The conformance corpus under
/// `tests/conformance/` gives the verdict every reader must reach.
///
/// ```
/// use prism_mesh::protocol::{validate_put, InstanceRecord, PROTOCOL_VERSION};
/// use prism_mesh::ServiceInstance;
///
/// let instance = ServiceInstance::builder("orders", "10.0.0.7", 8080).build()?;
/// let key = instance.key();
/// let body = InstanceRecord { v: PROTOCOL_VERSION, instance: instance.into(), ttl_ms: 10_000, reason: None }
///     .encode()?;
/// assert!(validate_put(&key, Some("10s"), &body).is_ok());
/// let refused = validate_put(&key, Some("never"), &body).unwrap_err();
/// assert!(refused.to_string().contains("never"), "{refused}");
/// # Ok::<(), prism_mesh::Error>(())
/// ```
pub fn validate_put(key: &str, nats_ttl: Option<&str>, body: &[u8]) -> Result<ValidPut> {
    bounded_ttl(nats_ttl)
        .and_then(|_| decode_put(key, body))
        .map_err(|why| Error::new(ErrorKind::Decode, why))
}

/// The TTL a `Nats-TTL` header gives, if peers accept it (`docs/protocol.md` §7.5 rule 2).
pub(crate) fn bounded_ttl(header: Option<&str>) -> std::result::Result<Duration, String> {
    match header.map(parse_ttl_header) {
        Some(Some(ttl)) if ttl <= MAX_INSTANCE_TTL => Ok(ttl),
        None => Err("record without Nats-TTL (it would never expire)".to_string()),
        Some(None) => Err("record with Nats-TTL never or unreadable".to_string()),
        Some(Some(ttl)) => Err(format!(
            "record with Nats-TTL {} above the {} peers accept",
            humantime::format_duration(ttl),
            humantime::format_duration(MAX_INSTANCE_TTL)
        )),
    }
}

/// What a put's body holds if it is a valid record of the instance its key names
/// (`docs/protocol.md` §7.5 rules 1 and 3 to 5); else why not.
pub(crate) fn decode_put(key: &str, body: &[u8]) -> std::result::Result<ValidPut, String> {
    let Some((service, id)) = parse_instance_key(key) else {
        return Err("key is not <service>.<uuid>".to_string());
    };
    let record = InstanceRecord::decode(body).map_err(|e| e.to_string())?;
    if record.instance.service != service || record.instance.id != id {
        return Err(format!(
            "body names {}.{}, not its key",
            record.instance.service, record.instance.id
        ));
    }
    record
        .instance
        .validate_received(body.len())
        .map_err(|e| e.to_string())?;
    Ok(ValidPut {
        instance: record.instance,
        reason: record.reason,
        ttl: Duration::from_millis(record.ttl_ms),
    })
}

/// The longest per-key TTL peers accept. A record without a `Nats-TTL`, with `never`, or
/// with a longer one is refused (it could never expire: a rogue writer's immortal key).
pub const MAX_INSTANCE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Reads a `Nats-TTL` header value as nats-server does: a Go duration (`30s`, `1m30s`,
/// `1.5h`) truncated to whole seconds, or whole seconds (`30`); `None` for `never`, for less
/// than a second and for anything else the server would refuse.
pub fn parse_ttl_header(value: &str) -> Option<std::time::Duration> {
    // The server skips leading spaces of a header value; anything else is part of it.
    let value = value.trim_start_matches(' ');
    if value.eq_ignore_ascii_case("never") {
        return None;
    }
    let secs = match go_duration_nanos(value) {
        Some(nanos) => nanos / 1_000_000_000,
        None => value
            .parse::<i64>()
            .ok()
            .and_then(|s| u64::try_from(s).ok())?,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// Go's `time.ParseDuration` (what nats-server reads `Nats-TTL` with), in nanoseconds:
/// `[+]<number>[.<fraction>]<unit>...`, units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, at most
/// 2^63-1 ns. Negative durations are `None` (the server refuses them as TTLs anyway).
fn go_duration_nanos(text: &str) -> Option<u64> {
    const MAX: u128 = i64::MAX as u128;
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(digits(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        // Above 2^63 ns is an error in Go too; checking per digit keeps u128 from overflowing.
        let mut value: u128 = 0;
        for digit in whole.bytes() {
            value = value * 10 + u128::from(digit - b'0');
            if value > MAX {
                return None;
            }
        }
        total += value * scale;
        // As Go's `leadingFraction`: digits are kept while they fit, then scaled in f64,
        // so `0.999999999999999999s` is 1 s there (and here), not 999999999 ns.
        let (mut fraction_digits, mut fraction_scale) = (0u64, 1f64);
        for digit in fraction.bytes() {
            if fraction_digits > (i64::MAX as u64) / 10 {
                break;
            }
            let next = fraction_digits * 10 + u64::from(digit - b'0');
            if next > 1 << 63 {
                break;
            }
            fraction_digits = next;
            fraction_scale *= 10.0;
        }
        if fraction_digits > 0 {
            total += (fraction_digits as f64 * (scale as f64 / fraction_scale)) as u128;
        }
        if total > MAX {
            return None;
        }
        rest = after;
    }
    u64::try_from(total).ok()
}

/// The shard (0 to `shards - 1`) holding `service`'s instances: the 32-bit FNV-1a hash of
/// the service name's UTF-8 bytes, modulo the shard count (`docs/protocol.md` §3.1).
pub fn shard_of(service: &str, shards: u16) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in service.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(shards.max(1))) as u16
}

/// The bucket of shard `shard`: shard 0 is `bucket` itself, shard `i` is `<bucket>-<i>`.
pub fn shard_bucket(bucket: &str, shard: u16) -> String {
    match shard {
        0 => bucket.to_string(),
        i => format!("{bucket}-{i}"),
    }
}

/// What a shard's bucket says of itself in its description: `shards=<n>` (buckets made
/// before shards existed say nothing and count as one).
pub fn shard_description(shard: u16, shards: u16) -> String {
    format!("prism-mesh: one key per live service instance; shard={shard} shards={shards}")
}

/// The shard count a bucket's description states, 1 when it states none.
pub fn shards_described(description: Option<&str>) -> Option<u16> {
    let Some(description) = description else {
        return Some(1);
    };
    match description
        .split_whitespace()
        .find_map(|word| word.strip_prefix("shards="))
    {
        None => Some(1),
        Some(count) => count.parse().ok().filter(|n| *n >= 1),
    }
}

/// Formats a TTL for the `Nats-TTL` header: whole seconds, rounded up, at least 1 s.
pub fn ttl_header_value(ttl: std::time::Duration) -> String {
    format!("{}s", whole_seconds(ttl))
}

/// A TTL as the server applies it: whole seconds, rounded up, at least 1. The memory
/// backend uses the same, so a timing that works on one backend works on the other.
pub(crate) fn whole_seconds(ttl: std::time::Duration) -> u64 {
    let mut secs = ttl.as_secs();
    if ttl.subsec_nanos() > 0 {
        // Saturating: `Duration::MAX` must not wrap around to a 1 s TTL.
        secs = secs.saturating_add(1);
    }
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_fnv1a_of_the_service_name_and_bucket_descriptions_state_their_count() {
        // FNV-1a 32 test vectors: "" -> 0x811c9dc5, "a" -> 0xe40c292c.
        assert_eq!(shard_of("", 1_000), (0x811c_9dc5_u32 % 1_000) as u16);
        assert_eq!(shard_of("a", 1_000), (0xe40c_292c_u32 % 1_000) as u16);
        assert_eq!(shard_of("orders", 1), 0);
        assert_eq!(shard_bucket("prism-instances", 0), "prism-instances");
        assert_eq!(shard_bucket("prism-instances", 2), "prism-instances-2");
        assert_eq!(shards_described(Some(&shard_description(1, 3))), Some(3));
        assert_eq!(shards_described(Some("made by hand")), Some(1));
        assert_eq!(shards_described(None), Some(1));
        assert_eq!(shards_described(Some("shards=zero")), None);
    }
    use std::time::Duration;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_refused() {
        let id = Uuid::new_v4();
        let key = instance_key("orders", &id);
        assert_eq!(parse_instance_key(&key), Some(("orders", id)));
        assert_eq!(parse_instance_key("orders"), None);
        assert_eq!(parse_instance_key("orders.not-a-uuid"), None);
        assert_eq!(parse_instance_key(&format!("a*b.{id}")), None);
        let upper = id.hyphenated().to_string().to_uppercase();
        assert_eq!(parse_instance_key(&format!("orders.{upper}")), None);
        assert_eq!(parse_instance_key(&format!("orders.{}", id.simple())), None);
    }

    #[test]
    fn ttl_header_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_header_value(Duration::from_millis(1500)), "2s");
        assert_eq!(ttl_header_value(Duration::from_secs(10)), "10s");
        assert_eq!(ttl_header_value(Duration::from_millis(10)), "1s");
    }

    #[test]
    fn ttl_headers_read_as_nats_server_reads_them() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        for (value, expected) in [
            ("30s", secs(30)),
            ("30", secs(30)),
            (" 30s", secs(30)),
            ("30s ", None),
            ("0.999999999999999999s", secs(1)), // Go scales fractions in f64
            ("3600.999999999999999999s", secs(3601)),
            ("1.0000000000000000000000001s", secs(1)),
            ("+30s", secs(30)),
            ("1m30s", secs(90)),
            ("1h1h", secs(7200)),
            ("1.5s", secs(1)), // truncated to whole seconds, like the server
            ("1.s", secs(1)),
            (".5h", secs(1800)),
            ("1500ms", secs(1)),
            ("2000000\u{b5}s", secs(2)),
            ("9223372036s", secs(9_223_372_036)),
            ("9223372036854775807", secs(9_223_372_036_854_775_807)),
            // Refused by the server, or no expiry: nothing a peer applies.
            ("never", None),
            ("NEVER", None),
            ("0", None),
            ("0s", None),
            ("500ms", None),
            ("-5s", None),
            ("-5", None),
            ("", None),
            ("s", None),
            (".s", None),
            ("5", secs(5)),
            ("5x", None),
            ("400days", None),
            ("9223372037s", None),                       // above 2^63 ns
            ("18446744073709551615s1000000000ns", None), // once a panic in humantime
            ("99999999999999999999999999999999999999999h", None),
        ] {
            assert_eq!(parse_ttl_header(value), expected, "Nats-TTL {value:?}");
        }
    }

    #[test]
    fn an_event_subject_names_prefix_service_instance_and_event() {
        let id = Uuid::new_v4();
        assert_eq!(
            event_subject("discovery", "orders", &id, EventName::Status),
            format!("discovery.orders.{}.status", id.hyphenated())
        );
    }

    #[test]
    fn go_durations_read_nanoseconds_and_stop_exactly_at_2_pow_63() {
        assert_eq!(
            parse_ttl_header("1500000000ns"),
            Some(Duration::from_secs(1))
        );
        // The longest Go duration is 2^63 - 1 ns; one more is an error there, and here.
        let longest = i64::MAX as u64;
        assert_eq!(
            parse_ttl_header(&format!("{longest}ns")),
            Some(Duration::from_secs(longest / 1_000_000_000))
        );
        assert_eq!(parse_ttl_header(&format!("{}ns", longest + 1)), None);
    }
}
