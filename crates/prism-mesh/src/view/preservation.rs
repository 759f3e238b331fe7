//! Self-preservation: a peer reports an expiry as soon as the server's marker arrives, unless
//! what it knows says the owner may well be alive; then it holds the instance for a grace
//! period in which the owner can write its key again.
//!
//! A server expires a key one TTL after its last write. Most expiries are exactly that: an
//! owner died, and the peer applies the marker at once. Some are not, and the peer can tell:
//!
//! - **Late:** the marker came well after the key's TTL ran out. The server was not
//!   expiring on time: a new stream leader after an election, or a server that was down
//!   and sweeps everything when it returns. The same stall kept owners from writing.
//! - **Early:** the marker came before the key's TTL could have run out. The server never
//!   does that; someone wrote the marker by hand.
//! - **Cut off:** the peer's own watch was interrupted (a reconnect, a consumer lost in an
//!   election) and the key was not written since it resumed. Whatever cut the peer off may
//!   have cut its owner off too. Keys a resynchronising snapshot no longer names are held
//!   for the same reason.
//! - **Burst:** when the marker arrives, many other keys (at least `min_instances`, and at
//!   least `threshold` of the view) are overdue too: unwritten for half their TTL. A frozen
//!   host or a partition is under way, and their markers are coming.
//!
//! A held instance stays in the view (and keeps being picked); if its owner writes the key
//! within `grace`, it simply stays, with no event; otherwise it expires when the grace ends.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The self-preservation rule (see the module documentation). Tunable on
/// [`MeshBuilder::self_preservation`](crate::MeshBuilder::self_preservation).
///
/// ```
/// use std::time::Duration;
/// use prism_mesh::SelfPreservation;
///
/// let rule = SelfPreservation { grace: Duration::from_secs(30), ..SelfPreservation::default() };
/// assert!(rule.enabled);
/// assert_eq!(rule.settle, Duration::ZERO); // isolated expiries are reported at once
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfPreservation {
    /// Off: every expiry is applied as soon as it is seen.
    pub enabled: bool,
    /// How long an expiry that nothing makes suspect waits before it is applied (default
    /// zero: at once). It adds to failure detection time.
    pub settle: Duration,
    /// Share of the view that must be overdue at once to count as a burst (default 0.5).
    pub threshold: f64,
    /// Smallest burst (default 4).
    pub min_instances: usize,
    /// How long a held instance is kept for its owner to write its key again (default 15 s).
    pub grace: Duration,
    /// How far a marker may miss one TTL after the key's last write (either way) and still
    /// count as on time (default 1 s; the server is seen up to 0.2 s late under load).
    pub tolerance: Duration,
}

impl Default for SelfPreservation {
    fn default() -> Self {
        SelfPreservation {
            enabled: true,
            settle: Duration::ZERO,
            threshold: 0.5,
            min_instances: 4,
            grace: Duration::from_secs(15),
            tolerance: Duration::from_secs(1),
        }
    }
}

impl SelfPreservation {
    /// Expiries applied as soon as they are seen.
    pub fn disabled() -> Self {
        SelfPreservation {
            enabled: false,
            ..SelfPreservation::default()
        }
    }
}

/// What the view knows of an expiring key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpiryFacts {
    /// When the key was last written (the server's time).
    pub(crate) written_at: SystemTime,
    /// The key's TTL.
    pub(crate) ttl: Duration,
    /// When the server stored the expiry marker; `None` when a resynchronising snapshot
    /// simply no longer names the key.
    pub(crate) marker_at: Option<SystemTime>,
}

/// What to do with an expiry now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Apply it: the instance is gone.
    Apply,
    /// Wait `settle`, then apply it.
    Settle,
    /// Hold the instance for the grace period; `first` when no other was held.
    Hold { why: &'static str, first: bool },
}

/// An expiry not yet applied: the marker's revision, and since when it waits.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    since: Instant,
    revision: u64,
    /// Held for `grace`, rather than settling.
    held: bool,
    /// The grace ended and the store is being asked whether the key was written since.
    confirming: bool,
    /// How long the owner's last record still had to live when the marker came: an early
    /// marker (forged, or a server's mistake) is held at least that long.
    owner_left: Duration,
}

/// The expiries a view task has seen and not applied.
#[derive(Debug)]
pub(crate) struct Preservation {
    rule: SelfPreservation,
    waiting: HashMap<String, Waiting>,
    /// When the watch last resumed after an interruption (local clock).
    resumed_at: Option<SystemTime>,
}

impl Preservation {
    pub(crate) fn new(rule: SelfPreservation) -> Self {
        Preservation {
            rule,
            waiting: HashMap::new(),
            resumed_at: None,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.rule.enabled
    }

    /// The watch was interrupted and resumes `now`.
    pub(crate) fn interrupted(&mut self, now: SystemTime) {
        self.resumed_at = Some(now);
    }

    /// Decides an expiry of `key` at `revision`. `overdue(at, enough)` counts the other
    /// keys of the view unwritten for half their TTL at `at`, stopping at `enough`.
    pub(crate) fn expire(
        &mut self,
        key: String,
        revision: u64,
        facts: ExpiryFacts,
        view_size: usize,
        overdue: impl FnOnce(SystemTime, usize) -> usize,
    ) -> Verdict {
        let verdict = self.judge(facts, view_size, overdue);
        let held = matches!(verdict, Verdict::Hold { .. });
        if verdict != Verdict::Apply {
            let owner_left = facts
                .marker_at
                .and_then(|marker| (facts.written_at + facts.ttl).duration_since(marker).ok())
                .unwrap_or(Duration::ZERO);
            self.waiting.entry(key).or_insert(Waiting {
                since: Instant::now(),
                revision,
                held,
                confirming: false,
                owner_left,
            });
        }
        verdict
    }

    fn judge(
        &self,
        facts: ExpiryFacts,
        view_size: usize,
        overdue: impl FnOnce(SystemTime, usize) -> usize,
    ) -> Verdict {
        let rule = &self.rule;
        if !rule.enabled {
            return Verdict::Apply;
        }
        let first = !self.waiting.values().any(|w| w.held);
        let hold = |why| Verdict::Hold { why, first };
        let Some(marker_at) = facts.marker_at else {
            return hold("absent from the snapshot after a resync");
        };
        // A clock that moved backwards between the write and the marker counts as no age.
        let age = marker_at
            .duration_since(facts.written_at)
            .unwrap_or(Duration::ZERO);
        if age > facts.ttl + rule.tolerance {
            return hold("expired late: the server was not expiring on time");
        }
        if age + rule.tolerance < facts.ttl {
            return hold("expired before its TTL could have run out");
        }
        if self.resumed_at.is_some_and(|at| facts.written_at < at) {
            return hold("not written since this peer's watch resumed");
        }
        let enough = rule
            .min_instances
            .max((rule.threshold * view_size as f64).ceil() as usize)
            .max(1);
        if 1 + overdue(marker_at, enough.saturating_sub(1)) >= enough {
            return hold("one of many keys overdue at once");
        }
        if rule.settle.is_zero() {
            Verdict::Apply
        } else {
            Verdict::Settle
        }
    }

    /// The key was written again (re-asserted) or removed otherwise: nothing to apply.
    pub(crate) fn forget(&mut self, key: &str) -> bool {
        self.waiting.remove(key).is_some()
    }

    /// Instances held right now.
    pub(crate) fn held(&self) -> usize {
        self.waiting.values().filter(|w| w.held).count()
    }

    /// When something must be decided next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .values()
            .filter(|w| !w.confirming)
            .map(|w| self.deadline(w))
            .min()
    }

    fn deadline(&self, waiting: &Waiting) -> Instant {
        waiting.since
            + if waiting.held {
                self.rule.grace.max(waiting.owner_left)
            } else {
                self.rule.settle
            }
    }

    /// The expiries whose wait is over: (key, revision, held). A held one is applied only
    /// once the store confirms the key was not written since (see `confirm`); until then
    /// it stays waiting, without a deadline.
    pub(crate) fn due(&mut self) -> Vec<(String, u64, bool)> {
        let now = Instant::now();
        let ended: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| !w.confirming && self.deadline(w) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut due = Vec::with_capacity(ended.len());
        for key in ended {
            let Some(waiting) = self.waiting.get_mut(&key) else {
                continue;
            };
            if waiting.held {
                waiting.confirming = true;
                due.push((key, waiting.revision, true));
            } else if let Some(w) = self.waiting.remove(&key) {
                due.push((key, w.revision, false));
            }
        }
        due
    }

    /// What the store said of a held expiry whose grace ended: applies it (returns its
    /// revision) unless the key was written since, in which case the log will show that.
    /// When the store could not be asked, the instance is held for another grace.
    pub(crate) fn confirm(&mut self, key: &str, last: Option<Option<(u64, bool)>>) -> Option<u64> {
        let waiting = self.waiting.get_mut(key)?;
        if !waiting.confirming {
            return None;
        }
        match last {
            None => {
                waiting.confirming = false;
                waiting.since = Instant::now();
                None
            }
            Some(Some((revision, _))) if revision > waiting.revision => {
                self.waiting.remove(key);
                None
            }
            Some(_) => self.waiting.remove(key).map(|w| w.revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn facts(written_ago: Duration, marker_after_write: Option<Duration>) -> ExpiryFacts {
        let written_at = SystemTime::now() - written_ago;
        ExpiryFacts {
            written_at,
            ttl: TTL,
            marker_at: marker_after_write.map(|d| written_at + d),
        }
    }

    fn judge(preservation: &Preservation, facts: ExpiryFacts, overdue: usize) -> Verdict {
        preservation.judge(facts, 10, |_, _| overdue)
    }

    #[test]
    fn an_on_time_isolated_expiry_is_applied_at_once() {
        let p = Preservation::new(SelfPreservation::default());
        let on_time = facts(TTL, Some(TTL + Duration::from_millis(200)));
        assert_eq!(judge(&p, on_time, 0), Verdict::Apply);
    }

    #[test]
    fn a_late_or_early_marker_is_held() {
        let p = Preservation::new(SelfPreservation::default());
        let late = facts(TTL * 3, Some(TTL + Duration::from_secs(2)));
        assert!(matches!(judge(&p, late, 0), Verdict::Hold { .. }));
        let early = facts(Duration::from_secs(1), Some(Duration::from_secs(1)));
        assert!(matches!(judge(&p, early, 0), Verdict::Hold { .. }));
    }

    #[test]
    fn an_early_marker_is_held_until_the_owners_record_would_have_expired() {
        let mut p = Preservation::new(SelfPreservation {
            grace: Duration::from_secs(1),
            ..SelfPreservation::default()
        });
        let hour = Duration::from_secs(3600);
        let written_at = SystemTime::now() - Duration::from_secs(60);
        let early = ExpiryFacts {
            written_at,
            ttl: hour,
            marker_at: Some(written_at + Duration::from_secs(60)),
        };
        let verdict = p.expire("svc.a".to_string(), 9, early, 10, |_, _| 0);
        assert!(matches!(verdict, Verdict::Hold { .. }), "{verdict:?}");
        let deadline = p.next_deadline().expect("held");
        assert!(
            deadline > Instant::now() + hour - Duration::from_secs(120),
            "held only until {:?} from now",
            deadline.saturating_duration_since(Instant::now())
        );
    }

    #[test]
    fn a_key_not_written_since_the_watch_resumed_is_held_one_written_after_is_not() {
        let mut p = Preservation::new(SelfPreservation::default());
        let before = facts(TTL, Some(TTL));
        p.interrupted(SystemTime::now());
        assert!(matches!(judge(&p, before, 0), Verdict::Hold { .. }));
        let mut after = facts(Duration::ZERO, Some(TTL));
        after.written_at = SystemTime::now() + Duration::from_millis(10);
        after.marker_at = Some(after.written_at + TTL);
        assert_eq!(judge(&p, after, 0), Verdict::Apply);
    }

    #[test]
    fn an_expiry_among_many_overdue_keys_is_held() {
        let p = Preservation::new(SelfPreservation::default());
        let on_time = facts(TTL, Some(TTL));
        // View of 10, threshold 0.5: five overdue in all make a burst, four do not.
        assert!(matches!(judge(&p, on_time, 4), Verdict::Hold { .. }));
        assert_eq!(judge(&p, on_time, 3), Verdict::Apply);
    }

    #[test]
    fn held_expiries_are_due_after_the_grace_and_forgotten_when_written_again() {
        let rule = SelfPreservation {
            grace: Duration::ZERO,
            ..SelfPreservation::default()
        };
        let mut p = Preservation::new(rule);
        let late = facts(TTL * 3, Some(TTL * 2));
        for key in ["a", "b"] {
            let verdict = p.expire(key.into(), 7, late, 10, |_, _| 0);
            assert!(matches!(verdict, Verdict::Hold { .. }));
        }
        assert!(p.forget("a"));
        assert_eq!(p.due(), vec![("b".to_string(), 7, true)]);
        // Applied only once the store confirms nothing newer was written.
        assert_eq!(p.confirm("b", Some(Some((7, false)))), Some(7));
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn a_held_expiry_whose_key_was_written_since_is_never_applied() {
        let rule = SelfPreservation {
            grace: Duration::ZERO,
            ..SelfPreservation::default()
        };
        let mut p = Preservation::new(rule);
        let late = facts(TTL * 3, Some(TTL * 2));
        p.expire("a".into(), 7, late, 10, |_, _| 0);
        p.expire("b".into(), 8, late, 10, |_, _| 0);
        assert_eq!(p.due().len(), 2);
        // Re-asserted on the server, though this peer's watch has not shown it yet.
        assert_eq!(p.confirm("a", Some(Some((9, true)))), None);
        // The store could not be asked: held for another grace.
        assert_eq!(p.confirm("b", None), None);
        assert_eq!(p.held(), 1);
        assert_eq!(p.due(), vec![("b".to_string(), 8, true)]);
    }

    #[test]
    fn only_an_enabled_rule_holds_anything() {
        assert!(Preservation::new(SelfPreservation::default()).enabled());
        let mut off = Preservation::new(SelfPreservation::disabled());
        assert!(!off.enabled());
        let late = facts(TTL * 3, Some(TTL * 2));
        assert_eq!(
            off.expire("a".into(), 1, late, 10, |_, _| 10),
            Verdict::Apply
        );
    }

    #[test]
    fn a_marker_exactly_at_the_tolerance_either_way_is_on_time() {
        let p = Preservation::new(SelfPreservation::default());
        let tolerance = SelfPreservation::default().tolerance;
        let latest = facts(TTL * 2, Some(TTL + tolerance));
        assert_eq!(judge(&p, latest, 0), Verdict::Apply);
        let earliest = facts(TTL * 2, Some(TTL - tolerance));
        assert_eq!(judge(&p, earliest, 0), Verdict::Apply);
    }

    #[test]
    fn a_key_written_at_the_very_moment_the_watch_resumed_is_not_cut_off() {
        let mut p = Preservation::new(SelfPreservation::default());
        let on_time = facts(TTL, Some(TTL));
        p.interrupted(on_time.written_at);
        assert_eq!(judge(&p, on_time, 0), Verdict::Apply);
    }

    #[test]
    fn the_first_hold_of_a_quiet_view_is_an_activation_and_the_next_is_not() {
        let mut p = Preservation::new(SelfPreservation::default());
        let late = facts(TTL * 3, Some(TTL * 2));
        let first = p.expire("a".into(), 1, late, 10, |_, _| 0);
        assert_eq!(
            first,
            Verdict::Hold {
                why: "expired late: the server was not expiring on time",
                first: true
            }
        );
        let second = p.expire("b".into(), 2, late, 10, |_, _| 0);
        assert!(matches!(second, Verdict::Hold { first: false, .. }));
    }

    #[test]
    fn a_held_expiry_is_due_a_grace_later_and_asked_about_once() {
        let grace = Duration::from_secs(60);
        let mut p = Preservation::new(SelfPreservation {
            grace,
            ..SelfPreservation::default()
        });
        assert_eq!(p.next_deadline(), None);
        let late = facts(TTL * 3, Some(TTL * 2));
        p.expire("a".into(), 1, late, 10, |_, _| 0);
        let deadline = p.next_deadline().expect("a deadline for the held expiry");
        assert!(deadline > Instant::now() + grace / 2, "due too soon");
        assert!(p.due().is_empty(), "due before its grace ended");

        let mut p = Preservation::new(SelfPreservation {
            grace: Duration::ZERO,
            ..SelfPreservation::default()
        });
        p.expire("a".into(), 1, late, 10, |_, _| 0);
        assert_eq!(p.due().len(), 1);
        // Being confirmed: no deadline, and not due again while the store is asked.
        assert_eq!(p.next_deadline(), None);
        assert!(p.due().is_empty(), "asked about twice");
    }
}
