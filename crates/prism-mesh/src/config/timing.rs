//! How long instances live and how often owners refresh them: one [`Timing`] shared by
//! owners and peers of both backends.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Timing of owners and peers, shared by both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a key lives without a heartbeat (whole seconds on NATS, at least 1 s).
    pub instance_ttl: Duration,
    /// How often an owner refreshes its keys; must be shorter than the TTL.
    pub heartbeat_interval: Duration,
    /// How long a deregistration tombstone is kept before it expires too (1 s to
    /// [`MAX_TOMBSTONE_TTL`]).
    pub tombstone_ttl: Duration,
}

/// nats-server's longest raft election timeout: after the leader of a replicated stream is
/// lost (SIGKILL, a crashed host), writes to it fail for 4 to 9 s until a follower takes
/// over. A graceful stop hands leadership over in about a second.
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_secs(9);

/// The `>` operator's one-second slack in [`Timing::cluster_min_ttl`]: the new leader's first
/// writes and the owner's acknowledgement.
const ELECTION_SLACK: Duration = Duration::from_secs(1);

/// The longest [`Timing::tombstone_ttl`]: tombstones are what churn leaves in the bucket,
/// so they must go within a bounded time.
pub const MAX_TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

impl Default for Timing {
    fn default() -> Self {
        Timing {
            instance_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// The shortest instance TTL with which no key can expire on a replicated bucket while
    /// its stream elects a new leader: the last heartbeat before the leader is lost is at most
    /// one interval old, writes fail for up to [`MAX_ELECTION_TIMEOUT`], and a failed heartbeat
    /// is retried within a third of the interval (plus a second of slack), in whole seconds.
    ///
    /// Shorter TTLs still work on a cluster: keys may then expire on the server in an
    /// election, and peers hold those expiries (late, cut-off or burst, see
    /// [`SelfPreservation`](crate::SelfPreservation)) while owners write their keys again.
    /// That protection does not cover a mesh of fewer than `min_instances` instances whose
    /// expiries come on time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use prism_mesh::Timing;
    ///
    /// let timing = Timing { heartbeat_interval: Duration::from_secs(1), ..Timing::default() };
    /// assert_eq!(timing.cluster_min_ttl(), Duration::from_secs(12));
    /// ```
    pub fn cluster_min_ttl(&self) -> Duration {
        let least = self.heartbeat_interval
            + self.heartbeat_interval / 3
            + MAX_ELECTION_TIMEOUT
            + ELECTION_SLACK;
        let whole = least.as_secs() + u64::from(least.subsec_nanos() > 0);
        Duration::from_secs(whole)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.instance_ttl < Duration::from_secs(1) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "instance_ttl must be at least 1s, got {}",
                    show(self.instance_ttl)
                ),
            ));
        }
        if self.instance_ttl > crate::protocol::MAX_INSTANCE_TTL {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "instance_ttl must be at most {} (peers refuse longer-lived records), got {}",
                    show(crate::protocol::MAX_INSTANCE_TTL),
                    show(self.instance_ttl)
                ),
            ));
        }
        if self.tombstone_ttl < Duration::from_secs(1) || self.tombstone_ttl > MAX_TOMBSTONE_TTL {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "tombstone_ttl must be 1s to {}, got {}",
                    show(MAX_TOMBSTONE_TTL),
                    show(self.tombstone_ttl)
                ),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.instance_ttl {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "heartbeat_interval ({}) must be above zero and below instance_ttl ({})",
                    show(self.heartbeat_interval),
                    show(self.instance_ttl)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_ttl_beyond_a_day_is_refused_naming_the_limit() {
        let timing = Timing {
            tombstone_ttl: Duration::MAX,
            ..Timing::default()
        };
        let err = timing.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(
            err.to_string().contains("tombstone_ttl must be 1s to 1day"),
            "{err}"
        );
    }

    #[test]
    fn heartbeat_must_be_shorter_than_ttl() {
        let timing = Timing {
            heartbeat_interval: Duration::from_secs(10),
            ..Timing::default()
        };
        let err = timing.validate().unwrap_err();
        assert!(
            err.to_string().contains("heartbeat_interval (10s)"),
            "{err}"
        );
    }
}
