//! Checkpoints: the registry as the event stream had made it at one stream sequence, stored
//! in the event stream itself so that reading the past starts from the nearest one instead
//! of the stream's first event, and so that instances older than the stream's retention
//! stay in it.
//!
//! A checkpoint is one or more parts on the subject `<prefix>.checkpoint`, published one
//! after the other with `Nats-Expected-Last-Subject-Sequence`, so the parts of one
//! checkpoint are consecutive on the subject and two writers cannot interleave. Each part
//! says which complete checkpoint it was built on (`base`), so a reader finds the last
//! complete checkpoint before any moment with two reads (`docs/protocol.md` §9).

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::record::{check_version, decode, encode};
use crate::error::{Error, ErrorKind, Result};
use crate::instance::{unix_millis, ServiceInstance};

/// The subject token after the prefix that carries checkpoints: `<prefix>.checkpoint`.
/// Event subjects have four tokens, so no event subject is a checkpoint's.
pub const CHECKPOINT_TOKEN: &str = "checkpoint";

/// Largest encoded part a writer produces: below nats-server's default payload limit
/// (1 MiB) with room for headers.
pub const CHECKPOINT_PART_BYTES: usize = 256 * 1024;

/// Largest encoded part a reader accepts.
pub const MAX_CHECKPOINT_PART_BYTES: usize = 1024 * 1024;

/// The subject of checkpoints: `<prefix>.checkpoint`.
pub fn checkpoint_subject(prefix: &str) -> String {
    format!("{prefix}.{CHECKPOINT_TOKEN}")
}

/// One part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPart {
    /// Protocol version.
    pub v: u32,
    /// Every event stored at or below this stream sequence is folded in; none above it.
    pub up_to: u64,
    /// When the writer made it (informational; readers go by the stream's timestamps).
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
    /// This part's number, from 1.
    pub part: u32,
    /// How many parts the checkpoint has.
    pub parts: u32,
    /// The stream sequence of part 1 (0 on part 1 itself).
    pub first: u64,
    /// The stream sequence of part 1 of the complete checkpoint this one was built from
    /// (0: built from the stream's first event).
    pub base: u64,
    /// How many instances the whole checkpoint holds.
    pub total: u64,
    /// This part's instances.
    pub instances: Vec<Arc<ServiceInstance>>,
}

impl CheckpointPart {
    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(self)
    }

    /// Decodes a part, checking its size, version, numbering and every instance.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CHECKPOINT_PART_BYTES {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "checkpoint part of {} bytes is over the {MAX_CHECKPOINT_PART_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let part: CheckpointPart = decode(bytes)?;
        check_version(part.v)?;
        if part.part == 0 || part.part > part.parts || (part.part > 1 && part.first == 0) {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "checkpoint part {} of {} (first {}) is not a valid numbering",
                    part.part, part.parts, part.first
                ),
            ));
        }
        for instance in &part.instances {
            instance
                .validate()
                .map_err(|e| Error::new(ErrorKind::Decode, format!("checkpoint instance: {e}")))?;
        }
        Ok(part)
    }

    /// The stream sequence of this checkpoint's part 1, given this part's own.
    pub fn first_sequence(&self, own: u64) -> u64 {
        if self.part == 1 {
            own
        } else {
            self.first
        }
    }

    /// Whether this is the last part.
    pub fn is_last(&self) -> bool {
        self.part == self.parts
    }
}

/// Splits `instances` into parts of at most about [`CHECKPOINT_PART_BYTES`] each (an
/// instance larger than that gets a part of its own), without numbering them yet.
pub fn split_into_parts(
    instances: Vec<Arc<ServiceInstance>>,
) -> Result<Vec<Vec<Arc<ServiceInstance>>>> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for instance in instances {
        let bytes = encode(&*instance)?.len();
        if !current.is_empty() && size + bytes > CHECKPOINT_PART_BYTES {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += bytes;
        current.push(instance);
    }
    parts.push(current);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PROTOCOL_VERSION;

    fn part(part: u32, parts: u32, first: u64) -> CheckpointPart {
        CheckpointPart {
            v: PROTOCOL_VERSION,
            up_to: 41,
            at: SystemTime::now(),
            part,
            parts,
            first,
            base: 0,
            total: 1,
            instances: vec![Arc::new(
                ServiceInstance::builder("svc", "10.0.0.1", 80)
                    .build()
                    .unwrap(),
            )],
        }
    }

    #[test]
    fn a_part_round_trips_and_knows_its_first_sequence() {
        let p = part(2, 3, 40);
        let decoded = CheckpointPart::decode(&p.encode().unwrap()).unwrap();
        assert_eq!(decoded.up_to, 41);
        assert_eq!(decoded.first_sequence(45), 40);
        assert_eq!(part(1, 1, 0).first_sequence(45), 45);
        assert!(decoded.instances[0].same_content(&p.instances[0]));
    }

    #[test]
    fn a_part_numbered_outside_its_checkpoint_is_refused() {
        for bad in [part(0, 1, 0), part(3, 2, 5), part(2, 2, 0)] {
            let err = CheckpointPart::decode(&bad.encode().unwrap()).unwrap_err();
            assert!(err.to_string().contains("not a valid numbering"), "{err}");
        }
    }

    #[test]
    fn many_instances_are_split_into_parts_under_the_size() {
        let instances: Vec<_> = (0..5000)
            .map(|port| {
                Arc::new(
                    ServiceInstance::builder("svc", "10.0.0.1", port)
                        .build()
                        .unwrap(),
                )
            })
            .collect();
        let parts = split_into_parts(instances).unwrap();
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 5000);
        for p in &parts {
            let bytes: usize = p.iter().map(|i| encode(&**i).unwrap().len()).sum();
            assert!(bytes <= CHECKPOINT_PART_BYTES, "{bytes}");
        }
        assert_eq!(split_into_parts(Vec::new()).unwrap(), vec![Vec::new()]);
    }
}
