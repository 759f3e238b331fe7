//! Entry points for coverage-guided fuzzing of every decoder of bytes from the wire.
//!
//! The targets in `fuzz/` (run with `cargo fuzz`, see `fuzz/README.md`) are one call each
//! into this module, compiled with the `fuzzing` feature. Each entry point takes arbitrary
//! bytes, must never panic, and asserts what must hold of whatever its decoder accepts, so a
//! wrong answer is found as well as a crash. The seed corpus in `fuzz/corpus/<target>/` is
//! replayed through the same functions by this module's tests, on stable Rust, in every
//! test run.
//!
//! ```
//! // Garbage is refused without a panic (what decodes must survive a round trip).
//! prism_mesh::fuzzing::instance_record(b"\xc1 not msgpack");
//! prism_mesh::fuzzing::bucket_message(b"orders.not-a-uuid\n\n\n\n30s\n\x80");
//! ```

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use crate::protocol::bucket::{bucket_change, KvChange, RemovalCause};
use crate::protocol::{
    headers as h, instance_key as key_of, parse_instance_key, parse_ttl_header, ttl_header_value,
    whole_seconds, EventRecord, InstanceRecord, MAX_INSTANCE_TTL,
};

/// Whole seconds in Go's longest duration (2^63 - 1 ns).
const GO_DURATION_SECONDS: u64 = i64::MAX as u64 / 1_000_000_000;

/// The body of a KV value: decode, validate, then encode and decode again. A record a peer
/// reads must survive being written back unchanged (expired events re-publish records).
pub fn instance_record(data: &[u8]) {
    let Ok(record) = InstanceRecord::decode(data) else {
        return;
    };
    let valid = record.instance.validate_received(data.len()).is_ok();
    let encoded = record
        .encode()
        .expect("a decoded instance record encodes again");
    let again = InstanceRecord::decode(&encoded).expect("an encoded instance record decodes");
    assert_eq!(again, record, "instance record changed by a round trip");
    // What a peer accepted, it can write back (as an `expired` event) and others accept.
    if valid {
        assert!(
            again.instance.validate_received(encoded.len()).is_ok(),
            "a valid instance record is refused once written back"
        );
    }
}

/// The body of a lifecycle event (read by history replays): as [`instance_record`].
pub fn event_record(data: &[u8]) {
    let Ok(record) = EventRecord::decode(data) else {
        return;
    };
    let valid = record.instance.validate_received(data.len()).is_ok();
    let encoded = record
        .encode()
        .expect("a decoded event record encodes again");
    let again = EventRecord::decode(&encoded).expect("an encoded event record decodes");
    assert_eq!(again, record, "event record changed by a round trip");
    if valid {
        assert!(
            again.instance.validate_received(encoded.len()).is_ok(),
            "a valid event record is refused once written back"
        );
    }
}

/// A KV key (`<service>.<instance id>`): what parses is exactly the key we would write,
/// so two keys never name one instance.
pub fn instance_key(data: &[u8]) {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((service, id)) = parse_instance_key(key) {
        assert_eq!(
            key_of(service, &id),
            key,
            "a key parsed that is not canonical"
        );
    }
}

/// A `Nats-TTL` header value: what parses is non-zero, and what we write for it reads back
/// as the whole seconds the server applies (within Go's durations, up to 2^63 ns: beyond,
/// only bare seconds read, and we never write TTLs above a day).
pub fn ttl_header(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(ttl) = parse_ttl_header(value) {
        assert!(!ttl.is_zero(), "a zero TTL parsed from {value:?}");
        if whole_seconds(ttl) > GO_DURATION_SECONDS {
            return;
        }
        let written = ttl_header_value(ttl);
        assert_eq!(
            parse_ttl_header(&written),
            Some(Duration::from_secs(whole_seconds(ttl))),
            "TTL {ttl:?} written as {written:?} reads back otherwise"
        );
    }
}

/// A whole message of the bucket, as a peer's view receives it. The input is split at its
/// first five `\n` bytes into the key (the subject after `$KV.<bucket>.`), the headers
/// `Nats-Marker-Reason`, `KV-Operation`, `Prism-Reason` and `Nats-TTL` (empty: absent), and
/// the body. What protocol.md §7 says of each must hold: a message is a removal exactly when
/// it carries a server marker or a `DEL`/`PURGE` operation, an expiry exactly when the
/// marker says `MaxAge`, a tombstone carries its reason to peers, a put is applied only
/// with a bounded TTL, and one is refused only without one.
pub fn bucket_message(data: &[u8]) {
    let mut fields = data.splitn(6, |&b| b == b'\n');
    let mut next = || fields.next().unwrap_or_default();
    let key = String::from_utf8_lossy(next()).into_owned();
    let mut header_field = || {
        let field = next();
        (!field.is_empty()).then(|| String::from_utf8_lossy(field).into_owned())
    };
    let marker = header_field();
    let operation = header_field();
    let reason = header_field();
    let ttl = header_field();
    let payload = Bytes::copy_from_slice(next());
    let header = |name: &'static str| match name {
        h::NATS_MARKER_REASON => marker.as_deref(),
        h::KV_OPERATION => operation.as_deref(),
        h::REASON => reason.as_deref(),
        h::NATS_TTL => ttl.as_deref(),
        _ => None,
    };
    let removal_operation = matches!(operation.as_deref(), Some("DEL" | "PURGE"));
    let bounded_ttl = ttl
        .as_deref()
        .and_then(parse_ttl_header)
        .is_some_and(|ttl| ttl <= MAX_INSTANCE_TTL);
    match bucket_change(&key, header, &payload, 1, UNIX_EPOCH) {
        KvChange::Removed { cause, .. } => {
            assert!(
                marker.is_some() || removal_operation,
                "{cause:?} without a marker or a removal operation"
            );
            assert_eq!(
                cause == RemovalCause::Expired,
                marker.as_deref() == Some("MaxAge"),
                "marker {marker:?} read as {cause:?}"
            );
            if marker.is_none() && operation.as_deref() == Some("DEL") {
                assert_eq!(
                    cause,
                    RemovalCause::Deregistered {
                        reason: reason.clone()
                    },
                    "a tombstone's reason lost"
                );
            }
        }
        KvChange::Put { .. } => {
            assert!(
                marker.is_none() && !removal_operation,
                "a removal read as a put"
            );
            assert!(bounded_ttl, "a put applied with TTL {ttl:?}");
        }
        KvChange::Refused { why, .. } => {
            assert!(
                marker.is_none() && !removal_operation,
                "a removal refused as a put"
            );
            assert!(
                !bounded_ttl,
                "a put with a bounded TTL {ttl:?} refused: {why}"
            );
            assert!(!why.is_empty(), "a refusal without a reason");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// An entry point: arbitrary bytes in, a panic when something is wrong.
    type Target = fn(&[u8]);

    /// Every target with its entry point, as named in `fuzz/Cargo.toml`.
    const TARGETS: [(&str, Target); 5] = [
        ("instance_record", super::instance_record),
        ("event_record", super::event_record),
        ("instance_key", super::instance_key),
        ("ttl_header", super::ttl_header),
        ("bucket_message", super::bucket_message),
    ];

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target)
    }

    #[test]
    fn every_fuzz_seed_and_regression_passes_its_target() {
        for (target, run) in TARGETS {
            let dir = corpus(target);
            // What is in the repo; inputs a local fuzzing run added (named by hash) are not.
            let files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .filter(|path| {
                    let name = path.file_name().unwrap().to_string_lossy();
                    name.starts_with("seed-") || name.starts_with("regression-")
                })
                .collect();
            assert!(
                files.len() >= 3,
                "corpus of {target} has {} files",
                files.len()
            );
            for file in files {
                let data = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target} fails on {}", file.display());
            }
        }
    }

    #[test]
    fn every_fuzz_target_has_an_entry_point_here() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/Cargo.toml"),
        )
        .unwrap();
        let declared: Vec<&str> = manifest
            .lines()
            .filter_map(|line| line.strip_prefix("name = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .filter(|name| *name != "prism-mesh-fuzz")
            .collect();
        let mut known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        let mut declared_sorted = declared.clone();
        declared_sorted.sort_unstable();
        known.sort_unstable();
        assert_eq!(declared_sorted, known);
    }
}
