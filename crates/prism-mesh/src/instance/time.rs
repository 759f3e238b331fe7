//! Instance timestamps: milliseconds since the Unix epoch, as the wire carries them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A moment, to the millisecond, as milliseconds since the Unix epoch (half the size of a
/// `SystemTime`; a view holds two per instance).
///
/// ```
/// use std::time::SystemTime;
/// use prism_mesh::Timestamp;
///
/// let at = Timestamp::from_millis(1_700_000_000_123);
/// assert_eq!(at.as_millis(), 1_700_000_000_123);
/// assert_eq!(at.to_string(), "2023-11-14T22:13:20.123Z");
/// let back: SystemTime = at.into();
/// assert_eq!(Timestamp::from(back), at);
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// Now, to the millisecond.
    pub fn now() -> Self {
        Timestamp::from(SystemTime::now())
    }

    /// The moment `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The same moment as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// How long ago this was (zero for a moment in the future).
    pub fn elapsed(self) -> Duration {
        SystemTime::now()
            .duration_since(self.to_system_time())
            .unwrap_or(Duration::ZERO)
    }
}

impl From<SystemTime> for Timestamp {
    /// Truncated to the millisecond; moments before the epoch read as the epoch.
    fn from(time: SystemTime) -> Self {
        Timestamp(
            time.duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        )
    }
}

impl From<Timestamp> for SystemTime {
    fn from(at: Timestamp) -> Self {
        at.to_system_time()
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339, in UTC, to the millisecond.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}
