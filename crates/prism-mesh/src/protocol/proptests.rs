//! Property tests of every decoder of bytes from the wire (issue "Hostile input").
//!
//! Anyone who can publish on the bucket's or the event stream's subjects controls these
//! bytes, so none of the decoders may panic, whatever they are fed:
//!
//! - [`InstanceRecord::decode`] and [`EventRecord::decode`] (MessagePack bodies);
//! - `validate_received`, run by the view on every decoded record;
//! - [`parse_instance_key`] (the KV key, i.e. the subject after `$KV.<bucket>.`);
//! - `bucket::removal_cause` (what the `Nats-Marker-Reason` / `KV-Operation` / `Prism-Reason`
//!   headers of a bucket message make of it), plus the two header writers `header_safe` and
//!   [`ttl_header_value`] (TTL headers are only written by us and parsed by the server).
//!
//! The same decoders are fuzzed, coverage-guided, by the `cargo fuzz` targets in `fuzz/`
//! (entry points in [`crate::fuzzing`]); these properties start from valid records instead.
//!
//! Runs are reproducible: a fixed RNG seed unless `PROPTEST_RNG_SEED` is set, and a modest
//! number of cases unless `PROPTEST_CASES` is set (e.g. `PROPTEST_CASES=100000` for a long
//! soak). Failures are persisted under `crates/prism-mesh/proptest-regressions/` (check them
//! in). The hand-made hostile corpus in `crates/prism-mesh/tests/corpus/` (see its
//! `make_corpus.py` and `expect.txt`) is fed to every decoder by
//! `hostile_corpus_is_decoded_as_expected_by_every_decoder`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;
use uuid::Uuid;

use super::bucket::{header_safe, removal_cause, RemovalCause};
use super::*;
use crate::error::ErrorKind;
use crate::instance::{InstanceStatus, Metadata, ServiceInstance, SharedStr};

/// The fixed seed of the default runs (any value; changing it explores other cases).
const SEED: u64 = 0x5052_4953_4d5f_4d45; // "PRISM_ME"

/// `cases` cases from the fixed seed, unless the environment asks for others.
fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

// ---------------------------------------------------------------------------------------
// Generators of valid records.

fn service_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_-]{0,15}",
        "[A-Za-z0-9_-]{1,128}", // up to the limit, any case
    ]
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Any millisecond timestamp: they travel as u64 milliseconds since the epoch.
fn timestamp() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        (0u64..4_102_444_800_000).prop_map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        any::<u64>().prop_map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    ]
}

/// JSON values MessagePack carries unchanged (finite floats; NaN would decode as null).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map("\\PC{0,16}", json_value(), 0..6).prop_map(Metadata::from)
}

fn status() -> impl Strategy<Value = InstanceStatus> {
    prop::sample::select(InstanceStatus::ALL.to_vec())
}

prop_compose! {
    /// An instance within every limit of the protocol (§3.3).
    fn valid_instance()(
        service in service_name(),
        id in uuid(),
        host in prop_oneof!["[a-z0-9.-]{1,40}", "[0-9a-f:]{2,39}", "\\PC{1,60}"],
        port in any::<u16>(),
        scheme in "[a-z][a-z0-9+.-]{0,9}",
        metadata in metadata(),
        tags in prop::collection::vec("\\PC{1,24}", 0..8),
        status in status(),
        weight in any::<u32>(),
        zone in prop::option::of("\\PC{1,24}"),
        registered_at in timestamp(),
        updated_at in timestamp(),
    ) -> ServiceInstance {
        ServiceInstance {
            service: service.into(),
            id,
            host: host.into(),
            port,
            scheme: scheme.into(),
            metadata,
            tags: tags.into_iter().map(SharedStr::from).collect(),
            status,
            weight,
            zone: zone.map(SharedStr::from),
            registered_at: registered_at.into(),
            updated_at: updated_at.into(),
        }
    }
}

prop_compose! {
    fn instance_record()(
        v in prop_oneof![Just(PROTOCOL_VERSION), 1..=u32::MAX],
        instance in valid_instance(),
        ttl_ms in any::<u64>(),
        reason in prop::option::of("\\PC{0,40}"),
    ) -> InstanceRecord {
        InstanceRecord { v, instance: instance.into(), ttl_ms, reason }
    }
}

fn event_name() -> impl Strategy<Value = EventName> {
    prop::sample::select(vec![
        EventName::Registered,
        EventName::Updated,
        EventName::Status,
        EventName::Deregistered,
        EventName::Expired,
    ])
}

prop_compose! {
    fn event_record()(
        v in prop_oneof![Just(PROTOCOL_VERSION), 1..=u32::MAX],
        event in event_name(),
        instance in valid_instance(),
        previous_status in prop::option::of(status()),
        reason in prop::option::of("\\PC{0,40}"),
        at in timestamp(),
        origin in "\\PC{0,40}",
    ) -> EventRecord {
        EventRecord { v, event, instance: instance.into(), previous_status, reason, at, origin }
    }
}

// ---------------------------------------------------------------------------------------
// Generators of hostile bytes.

/// One way to damage a valid encoding.
#[derive(Debug, Clone)]
enum Damage {
    /// Keep only this fraction (per mille) of the bytes.
    Truncate(u16),
    /// Flip bit `bit` of the byte at this position (per mille of the length).
    FlipBit(u16, u8),
    /// Overwrite the byte at this position with `byte`.
    SetByte(u16, u8),
    /// Insert bytes at this position.
    Insert(u16, Vec<u8>),
    /// Remove up to `n` bytes at this position.
    Remove(u16, u8),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        (0u16..1000).prop_map(Damage::Truncate),
        (0u16..1000, 0u8..8).prop_map(|(at, bit)| Damage::FlipBit(at, bit)),
        // Bytes that change MessagePack structure are the interesting ones to write.
        (
            0u16..1000,
            prop_oneof![
                any::<u8>(),
                prop::sample::select(vec![
                    0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4,
                    0xc6, 0xca, 0xcb, 0xcf, 0xd3, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
                ]),
            ]
        )
            .prop_map(|(at, byte)| Damage::SetByte(at, byte)),
        (0u16..1000, prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        (0u16..1000, 1u8..16).prop_map(|(at, n)| Damage::Remove(at, n)),
    ];
    prop::collection::vec(one, 1..5)
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    let at = |per_mille: u16, len: usize| len * usize::from(per_mille) / 1000;
    for d in damage {
        let len = bytes.len();
        match d {
            Damage::Truncate(keep) => bytes.truncate(at(*keep, len)),
            Damage::FlipBit(pos, bit) if len > 0 => bytes[at(*pos, len)] ^= 1 << bit,
            Damage::SetByte(pos, byte) if len > 0 => bytes[at(*pos, len)] = *byte,
            Damage::Insert(pos, new) => {
                let pos = at(*pos, len);
                bytes.splice(pos..pos, new.iter().copied());
            }
            Damage::Remove(pos, n) => {
                let pos = at(*pos, len);
                let end = (pos + usize::from(*n)).min(len);
                bytes.drain(pos..end);
            }
            _ => {}
        }
    }
    bytes
}

/// Well-formed MessagePack of the wrong shape: maps whose keys are mostly our field names,
/// with values of any type, so decoding goes deep before it fails (or succeeds).
fn wrong_shape() -> impl Strategy<Value = Vec<u8>> {
    const FIELDS: &[&str] = &[
        "v",
        "instance",
        "ttl_ms",
        "reason",
        "event",
        "previous_status",
        "at",
        "origin",
        "service",
        "id",
        "host",
        "port",
        "scheme",
        "metadata",
        "tags",
        "status",
        "weight",
        "zone",
        "registered_at",
        "updated_at",
    ];
    let key = prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => "\\PC{0,6}",
    ];
    let leaf = prop_oneof![
        json_value(),
        uuid().prop_map(|id| Value::from(id.to_string())),
        prop::sample::select(vec![
            "healthy",
            "starting",
            "registered",
            "expired",
            "bogus",
            "",
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 65_535, 65_536, i64::MAX, i64::MIN])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 12, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..14)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
    .prop_map(|value| rmp_serde::to_vec_named(&value).expect("JSON values encode"))
}

// ---------------------------------------------------------------------------------------
// What every decoded record must satisfy.

/// Runs everything a peer runs on a received instance record body, as the view does.
/// `Ok(None)` when the body is a decode error, as it must be when it is not a record.
fn receive_instance(bytes: &[u8]) -> Result<Option<InstanceRecord>, TestCaseError> {
    match InstanceRecord::decode(bytes) {
        Ok(record) => {
            prop_assert!(record.v >= 1, "version 0 accepted");
            // Validation terminates with a verdict; either is fine, a panic is not.
            let _ = record.instance.validate_received(bytes.len());
            let _ = record.instance.validate();
            let _ = parse_instance_key(&record.instance.key());
            Ok(Some(record))
        }
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::Decode, "{}", e);
            Ok(None)
        }
    }
}

fn receive_event(bytes: &[u8]) -> Result<Option<EventRecord>, TestCaseError> {
    match EventRecord::decode(bytes) {
        Ok(record) => {
            prop_assert!(record.v >= 1, "version 0 accepted");
            let _ = record.instance.validate_received(bytes.len());
            Ok(Some(record))
        }
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::Decode, "{}", e);
            Ok(None)
        }
    }
}

/// A record that decodes and validates must survive re-encoding unchanged: the view
/// stores what it decoded, and peers must agree on what a body means.
fn check_stable_instance(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(record) = receive_instance(bytes)? {
        if record.instance.validate_received(bytes.len()).is_ok() {
            let again = InstanceRecord::decode(&record.encode().unwrap()).unwrap();
            prop_assert_eq!(again, record);
        }
    }
    Ok(())
}

fn check_stable_event(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(record) = receive_event(bytes)? {
        let again = EventRecord::decode(&record.encode().unwrap()).unwrap();
        prop_assert_eq!(again, record);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Records.

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_any_record_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        check_stable_instance(&bytes)?;
        check_stable_event(&bytes)?;
    }

    #[test]
    fn wrong_shaped_msgpack_is_a_decode_error_or_a_stable_record(bytes in wrong_shape()) {
        check_stable_instance(&bytes)?;
        check_stable_event(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn instance_records_round_trip_and_pass_validation(record in instance_record()) {
        let bytes = record.encode().unwrap();
        let decoded = InstanceRecord::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &record);
        decoded.instance.validate_received(bytes.len()).unwrap();
        decoded.instance.validate().unwrap();
        let key = decoded.instance.key();
        prop_assert_eq!(
            parse_instance_key(&key),
            Some((record.instance.service.as_str(), record.instance.id))
        );
    }

    #[test]
    fn event_records_round_trip(record in event_record()) {
        let bytes = record.encode().unwrap();
        prop_assert_eq!(EventRecord::decode(&bytes).unwrap(), record);
    }

    /// Every field of a record is required by the map header, so any strict prefix fails.
    #[test]
    fn truncated_records_are_decode_errors(record in instance_record(), event in event_record(), keep in 0.0f64..1.0) {
        let bytes = record.encode().unwrap();
        let cut = ((bytes.len() as f64) * keep) as usize;
        prop_assert_eq!(InstanceRecord::decode(&bytes[..cut]).unwrap_err().kind(), ErrorKind::Decode);
        let bytes = event.encode().unwrap();
        let cut = ((bytes.len() as f64) * keep) as usize;
        prop_assert_eq!(EventRecord::decode(&bytes[..cut]).unwrap_err().kind(), ErrorKind::Decode);
    }

    #[test]
    fn damaged_instance_records_error_or_decode_to_a_cleanly_validated_record(
        record in instance_record(),
        damage in damage(),
    ) {
        let bytes = apply(record.encode().unwrap(), &damage);
        check_stable_instance(&bytes)?;
        check_stable_event(&bytes)?;
    }

    #[test]
    fn damaged_event_records_error_or_decode_to_a_stable_record(
        record in event_record(),
        damage in damage(),
    ) {
        let bytes = apply(record.encode().unwrap(), &damage);
        check_stable_event(&bytes)?;
        check_stable_instance(&bytes)?;
    }

    /// A record with a field beyond a limit decodes, then fails validation (never panics),
    /// whether or not the encoded size triggers the metadata measurement.
    #[test]
    fn records_beyond_the_limits_decode_but_fail_validation(
        record in instance_record(),
        which in 0u8..7,
        extra in 1usize..64,
    ) {
        let mut record = record;
        let i = std::sync::Arc::make_mut(&mut record.instance);
        match which {
            0 => i.service = format!("{}.x", i.service).into(),
            1 => i.host = "h".repeat(crate::instance::MAX_HOST_LEN + extra).into(),
            2 => i.host = SharedStr::default(),
            3 => i.tags = vec![SharedStr::from("t"); crate::instance::MAX_TAGS + extra].into(),
            4 => {
                let mut tags = i.tags.to_vec();
                tags.push("x".repeat(crate::instance::MAX_TAG_LEN + extra).into());
                i.tags = tags.into();
            }
            5 => i.zone = Some(SharedStr::default()),
            _ => {
                i.metadata.insert(
                    "blob",
                    Value::from("x".repeat(crate::instance::MAX_METADATA_BYTES + extra)),
                );
            }
        }
        let bytes = record.encode().unwrap();
        let decoded = InstanceRecord::decode(&bytes).unwrap();
        prop_assert!(decoded.instance.validate_received(bytes.len()).is_err());
    }
}

/// MessagePack nested `depth` containers deep, at the top, in an unknown field or inside a
/// metadata value of an otherwise valid record.
fn nested(depth: usize, map: bool, position: u8, record: &InstanceRecord) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        inner.extend_from_slice(if map { b"\x81\xa1k" } else { b"\x91" });
    }
    inner.push(0xc0);
    let mut record = record.clone();
    match position {
        0 => return inner,
        1 => {
            std::sync::Arc::make_mut(&mut record.instance)
                .metadata
                .insert("deep", Value::Null);
        }
        _ => record.reason = Some("DEEP".into()),
    }
    let bytes = record.encode().unwrap();
    // Splice the nesting in where the placeholder value was encoded: `0xc0` (nil) never
    // occurs inside UTF-8 text, and `reason` is the last field.
    let (needle, value_at): (&[u8], usize) = if position == 1 {
        (b"\xa4deep\xc0", 5)
    } else {
        (b"\xa4DEEP", 0)
    };
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("placeholder encoded");
    [
        &bytes[..at + value_at],
        &inner[..],
        &bytes[at + needle.len()..],
    ]
    .concat()
}

proptest! {
    #![proptest_config(config(96))]

    /// Decoding recurses per level: past `MAX_PAYLOAD_DEPTH` it must stop with an error
    /// instead of overflowing the stack (which aborts the whole process).
    #[test]
    fn nesting_of_any_depth_is_refused_before_it_overflows_the_stack(
        depth in prop_oneof![0usize..64, 64usize..200_000],
        map in any::<bool>(),
        position in 0u8..3,
        record in instance_record(),
    ) {
        let bytes = nested(depth, map, position, &record);
        let decoded = receive_instance(&bytes)?;
        let _ = receive_event(&bytes)?;
        if depth > MAX_PAYLOAD_DEPTH {
            prop_assert!(decoded.is_none());
        }
        if position == 1 && depth <= MAX_PAYLOAD_DEPTH - 3 {
            let record = decoded.expect("nesting within the payload limit decodes");
            prop_assert_eq!(
                record.instance.validate_received(bytes.len()).is_ok(),
                depth <= crate::instance::MAX_METADATA_DEPTH
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keys.

/// A string that looks like a key more often than pure noise does.
fn key_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_.*> -]{0,10}\\.[0-9a-fA-F-]{30,40}",
        (service_name(), "[0-9a-f-]{36}").prop_map(|(s, id)| format!("{s}.{id}")),
        (service_name(), uuid(), "\\PC{0,3}", "\\PC{0,3}")
            .prop_map(|(s, id, pre, post)| format!("{pre}{s}.{id}{post}")),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    /// Whatever parses is canonical: formatting it again gives the very same key, so two
    /// different keys never name the same instance.
    #[test]
    fn any_key_that_parses_is_the_canonical_key_of_what_it_names(key in key_like()) {
        if let Some((service, id)) = parse_instance_key(&key) {
            prop_assert!(crate::instance::validate_service_name(service).is_ok());
            prop_assert_eq!(instance_key(service, &id), key);
        }
    }

    #[test]
    fn instance_keys_always_parse_back(service in service_name(), id in uuid()) {
        let key = instance_key(&service, &id);
        prop_assert_eq!(parse_instance_key(&key), Some((service.as_str(), id)));
    }

    #[test]
    fn non_canonical_keys_are_rejected(service in service_name(), id in uuid(), how in 0u8..14, pos in any::<prop::sample::Index>()) {
        let canonical = id.hyphenated().to_string();
        let key = match how {
            0 => {
                // Uppercase uuid (at least one hex letter made uppercase).
                let upper = canonical.to_uppercase();
                prop_assume!(upper != canonical);
                format!("{service}.{upper}")
            }
            1 => {
                // One letter uppercased.
                let letters: Vec<usize> = canonical
                    .char_indices()
                    .filter(|(_, c)| c.is_ascii_alphabetic())
                    .map(|(i, _)| i)
                    .collect();
                prop_assume!(!letters.is_empty());
                let at = letters[pos.index(letters.len())];
                let mut s = canonical.clone();
                s.replace_range(at..=at, &canonical[at..=at].to_uppercase());
                format!("{service}.{s}")
            }
            2 => format!("{service}.{canonical}."),
            3 => format!("{service}..{canonical}"),
            4 => format!(".{service}.{canonical}"),
            5 => format!("{service}.{canonical}.extra"),
            6 => format!("x.{service}.{canonical}"),
            7 => format!(".{canonical}"),
            8 => format!("{service}."),
            9 => format!("{service}.{}", id.simple()),
            10 => format!("{service}.{}", id.braced()),
            11 => format!("{service}.{}", id.urn()),
            12 => format!("{service}.{canonical} "),
            _ => {
                // A dot somewhere inside the uuid.
                let at = pos.index(canonical.len());
                let mut s = canonical.clone();
                s.insert(at, '.');
                format!("{service}.{s}")
            }
        };
        prop_assert_eq!(parse_instance_key(&key), None, "{}", key);
    }
}

// ---------------------------------------------------------------------------------------
// Headers.

/// Header values as a hostile writer could send them (any text, and the real ones).
fn header_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        any::<String>(),
        prop::sample::select(vec![
            "MaxAge", "maxage", "MaxAge ", "Purge", "Remove", "DEL", "del", "PURGE", "DEL ", "",
            "PUT",
        ])
        .prop_map(str::to_string),
    ])
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn bucket_message_headers_always_classify_as_the_protocol_says(
        marker in header_value(),
        operation in header_value(),
        reason in header_value(),
        has_ttl in any::<bool>(),
    ) {
        let mut asked_reason = false;
        let cause = removal_cause(marker.as_deref(), operation.as_deref(), has_ttl, || {
            asked_reason = true;
            reason.clone()
        });
        let expected = match (marker.as_deref(), operation.as_deref()) {
            (Some("MaxAge"), _) => Some(RemovalCause::Expired),
            (Some(_), _) => Some(RemovalCause::Purged),
            (None, Some("DEL")) if has_ttl => {
                Some(RemovalCause::Deregistered { reason: reason.clone() })
            }
            (None, Some("DEL")) => Some(RemovalCause::Deleted),
            (None, Some("PURGE")) => Some(RemovalCause::Purged),
            (None, _) => None,
        };
        prop_assert_eq!(cause, expected);
        // The reason header is read only for a tombstone.
        prop_assert_eq!(
            asked_reason,
            marker.is_none() && operation.as_deref() == Some("DEL") && has_ttl
        );
    }

    #[test]
    fn header_safe_text_is_always_a_valid_header_value(text in any::<String>()) {
        let safe = header_safe(&text);
        prop_assert!(safe.chars().count() <= 1024);
        prop_assert!(!safe.chars().any(char::is_control));
        prop_assert!(safe.parse::<async_nats::HeaderValue>().is_ok());
    }

    #[test]
    fn ttl_header_is_whole_seconds_rounded_up_and_never_panics(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let ttl = Duration::new(secs, nanos);
        let value = ttl_header_value(ttl);
        let n: u64 = value.strip_suffix('s').unwrap().parse().unwrap();
        prop_assert!(n >= 1);
        prop_assert!(u128::from(n) * 1_000_000_000 >= ttl.as_nanos().min(u128::from(u64::MAX) * 1_000_000_000));
        prop_assert!(n == secs.max(1) || n == secs.saturating_add(1));
    }
}

#[test]
fn ttl_header_of_the_longest_duration_saturates_instead_of_wrapping() {
    assert_eq!(ttl_header_value(Duration::MAX), format!("{}s", u64::MAX));
}

// ---------------------------------------------------------------------------------------
// The hand-made hostile corpus.

/// What a decoder made of a corpus file (see `tests/corpus/expect.txt`).
fn verdict<T>(decoded: crate::error::Result<T>, validate: impl Fn(&T) -> bool) -> &'static str {
    match decoded {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
            "err"
        }
        Ok(record) if validate(&record) => "valid",
        Ok(_) => "invalid",
    }
}

#[test]
fn hostile_corpus_is_decoded_as_expected_by_every_decoder() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in expect.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "bad expect.txt line {line:?}");
        expected.insert(parts[0].into(), (parts[1].into(), parts[2].into()));
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".bin"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        expected.keys().cloned().collect::<Vec<_>>(),
        "every corpus file has a line in expect.txt and vice versa"
    );
    let mut wrong = Vec::new();
    for name in &files {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let instance = verdict(InstanceRecord::decode(&bytes), |r| {
            r.instance.validate_received(bytes.len()).is_ok()
        });
        let event = verdict(EventRecord::decode(&bytes), |r| {
            r.instance.validate_received(bytes.len()).is_ok()
        });
        // The key decoder sees the same bytes when they arrive as a subject.
        let _ = parse_instance_key(&String::from_utf8_lossy(&bytes));
        let (want_instance, want_event) = &expected[name];
        if (instance, event) != (want_instance.as_str(), want_event.as_str()) {
            wrong.push(format!(
                "{name}: InstanceRecord {instance} (want {want_instance}), EventRecord {event} (want {want_event})"
            ));
        }
        // Every prefix and a sample of bit flips of every corpus file are no threat either.
        for cut in (0..bytes.len()).step_by((bytes.len() / 64).max(1)) {
            let _ =
                InstanceRecord::decode(&bytes[..cut]).map(|r| r.instance.validate_received(cut));
            let _ = EventRecord::decode(&bytes[..cut]);
        }
        for at in (0..bytes.len()).step_by((bytes.len() / 64).max(1)) {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x80;
            let _ = InstanceRecord::decode(&flipped)
                .map(|r| r.instance.validate_received(flipped.len()));
            let _ = EventRecord::decode(&flipped);
        }
    }
    assert!(
        wrong.is_empty(),
        "corpus verdicts differ:\n{}",
        wrong.join("\n")
    );
}
