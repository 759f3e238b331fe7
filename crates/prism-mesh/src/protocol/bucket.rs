//! What a message of the instance bucket says: a put to apply, a removal and its cause, or
//! a write peers must refuse, read from its key, headers and body; and the shapes in which
//! a backend's watch hands them to the view (`docs/protocol.md` §7.3 and §7.5).

use std::time::SystemTime;

use bytes::Bytes;

use super::headers as h;

/// What a write expects of the key's current state (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteCondition {
    /// The key holds no live value (never written, deleted, expired).
    Absent,
    /// The key's last revision is exactly this one.
    Revision(u64),
    /// Unconditional (an owner re-asserting its own key).
    Any,
}

/// Why a key stopped holding a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemovalCause {
    /// The owner deleted it.
    Deregistered { reason: Option<String> },
    /// Its TTL ran out on the server.
    Expired,
    /// Purged from outside the mesh (a KV purge, or a server marker other than an expiry).
    Purged,
    /// Deleted from outside the mesh: a plain KV delete (`nats kv del`), which, unlike an
    /// owner's tombstone, carries no TTL.
    Deleted,
}

/// One change of the key-value log, in log order.
#[derive(Debug, Clone)]
pub(crate) enum KvChange {
    Put {
        key: String,
        value: Bytes,
        revision: u64,
        /// When the backend stored the write.
        written_at: std::time::SystemTime,
    },
    Removed {
        key: String,
        revision: u64,
        cause: RemovalCause,
        /// When the backend stored the removal (for an expiry: when the server expired the
        /// key, which tells an on-time expiry from one a stalled server caught up on).
        at: std::time::SystemTime,
    },
    /// A write peers must not trust (for example a record that could never expire);
    /// handled like a malformed record.
    Refused {
        key: String,
        revision: u64,
        why: String,
    },
}

impl KvChange {
    /// The key changed.
    pub(crate) fn key(&self) -> &str {
        match self {
            KvChange::Put { key, .. }
            | KvChange::Removed { key, .. }
            | KvChange::Refused { key, .. } => key,
        }
    }

    /// The revision (log position) of the change.
    pub(crate) fn revision(&self) -> u64 {
        match self {
            KvChange::Put { revision, .. }
            | KvChange::Removed { revision, .. }
            | KvChange::Refused { revision, .. } => *revision,
        }
    }
}

/// What a watch delivers: a full state first (and again after every resynchronisation),
/// then changes.
#[derive(Debug)]
pub(crate) enum WatchItem {
    /// A snapshot starts: parts of an earlier snapshot that never ended (the watch failed
    /// half-way) are void, and only this snapshot's parts say what is live.
    SnapshotBegin,
    /// Part of the last change of every key, as of now; streamed so peers apply it while
    /// the rest arrives.
    SnapshotPart(Vec<KvChange>),
    /// The snapshot is complete: keys absent from its parts hold nothing.
    SnapshotEnd,
    /// A change after the snapshot.
    Change(KvChange),
    /// The watch was interrupted (a reconnect, a consumer lost in a leader election) and
    /// resumed from the last revision it had delivered: nothing was missed, but owners may
    /// have been cut off from the server meanwhile too, so expiries of keys not written
    /// since are suspect. Changes follow, without a snapshot.
    Resumed,
    /// A write at `revision` (`Nats-Rollup: all`) removed every earlier message of the log,
    /// without markers: peers keep what they hold, and owners must write their keys again.
    /// Its change follows.
    RolledUp { revision: u64 },
    /// A snapshot of the services of interest `generation` follows. `added` names the
    /// services that interest added since the last snapshot: their instances are loaded,
    /// not news, so they raise no events.
    Loading { generation: u64, added: Vec<String> },
    /// The log was replaced (the bucket made again, as after a server restart with memory
    /// storage): its revisions start again from 1 and compare with none the view holds.
    /// A snapshot follows.
    LogReplaced,
}

/// What a message of the bucket says, from its key (the subject after the bucket's prefix),
/// its headers and its body: a removal, a put peers may apply, or a write they must refuse.
/// Anyone allowed to publish on the bucket's subjects controls every input.
pub(crate) fn bucket_change<'h>(
    key: &str,
    header: impl Fn(&'static str) -> Option<&'h str>,
    payload: &Bytes,
    revision: u64,
    written_at: SystemTime,
) -> KvChange {
    let key = key.to_string();
    let cause = removal_cause(
        header(h::NATS_MARKER_REASON),
        header(h::KV_OPERATION),
        header(h::NATS_TTL).is_some(),
        || header(h::REASON).map(str::to_string),
    );
    match cause {
        Some(cause) => KvChange::Removed {
            key,
            revision,
            cause,
            at: written_at,
        },
        None => match crate::protocol::bounded_ttl(header(h::NATS_TTL)) {
            Ok(_) => KvChange::Put {
                key,
                value: payload.clone(),
                revision,
                written_at,
            },
            Err(why) => KvChange::Refused { key, revision, why },
        },
    }
}

/// What a bucket message's headers say it is: `None` for a put, else why the key stopped
/// holding a value. Any `Nats-Marker-Reason` is a server marker (`MaxAge` an expiry, anything
/// else a purge or removal); otherwise `KV-Operation: DEL`/`PURGE` (exact, case-sensitive)
/// are removals (a `DEL` with a `Nats-TTL` is an owner's tombstone, one without a plain
/// delete from outside the mesh) and every other value is a put. Nothing here can fail on
/// hostile values.
pub(crate) fn removal_cause(
    marker_reason: Option<&str>,
    kv_operation: Option<&str>,
    has_ttl: bool,
    reason: impl FnOnce() -> Option<String>,
) -> Option<RemovalCause> {
    if let Some(marker) = marker_reason {
        return Some(if marker == "MaxAge" {
            RemovalCause::Expired
        } else {
            RemovalCause::Purged
        });
    }
    match kv_operation {
        Some("DEL") if has_ttl => Some(RemovalCause::Deregistered { reason: reason() }),
        Some("DEL") => Some(RemovalCause::Deleted),
        Some("PURGE") => Some(RemovalCause::Purged),
        _ => None,
    }
}

/// Header values cannot hold line breaks.
pub(crate) fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}
