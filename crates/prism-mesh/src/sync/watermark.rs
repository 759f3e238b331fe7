//! The highest bucket revision this peer's readers can see, and the writers waiting to see
//! their own write (read-your-writes).
//!
//! A raise wakes only the waiters it satisfies. A `tokio::sync::watch` wakes every waiter
//! on every change: with hundreds of registrations in flight and a view that publishes
//! many times a second, that herd of wake-ups cost more CPU than the registrations did.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    applied: u64,
    /// Waiters by the revision they wait for, then by arrival (so each entry is one waiter,
    /// and one that gives up removes exactly itself).
    waiting: BTreeMap<(u64, u64), oneshot::Sender<()>>,
    arrivals: u64,
    /// The view ended: nothing will be applied any more, so nobody waits.
    closed: bool,
}

impl Watermark {
    /// Raises the mark to `revision` (never lowers it) and wakes whoever waited for it.
    pub(crate) fn raise(&self, revision: u64) {
        let mut ready = Vec::new();
        {
            let mut state = self.lock();
            if revision <= state.applied {
                return;
            }
            state.applied = revision;
            while let Some(entry) = state.waiting.first_entry() {
                if entry.key().0 > revision {
                    break;
                }
                ready.push(entry.remove());
            }
        }
        // Outside the lock: a woken waiter may run on another thread at once.
        for waiter in ready {
            // A waiter that gave up has dropped its receiver; nothing to do for it.
            let _ = waiter.send(());
        }
    }

    /// The bucket's log was replaced: its revisions start again, so the mark does too.
    /// Waiters keep waiting for their revision (in the new log) or their timeout.
    pub(crate) fn reset(&self) {
        self.lock().applied = 0;
    }

    /// The view ended (closed, or its task failed): releases every waiter, and later waits
    /// return at once.
    pub(crate) fn close(&self) {
        let waiting = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        // Outside the lock, as in `raise`: dropping the senders wakes their receivers with
        // an error, "not seen".
        drop(waiting);
    }

    /// Waits until readers see `revision`, at most `timeout`. True when they do; false at
    /// the timeout or when the view ended first.
    pub(crate) async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let (seen, slot) = {
            let mut state = self.lock();
            if state.applied >= revision {
                return true;
            }
            if state.closed {
                return false;
            }
            let (tx, rx) = oneshot::channel();
            state.arrivals += 1;
            let slot = (revision, state.arrivals);
            state.waiting.insert(slot, tx);
            (rx, slot)
        };
        // However this wait ends (seen, timed out, or its future dropped by a caller that
        // gave up), it leaves no sender behind: after a reset the new log may never reach
        // this revision.
        let _leave = Leave { mark: self, slot };
        match tokio::time::timeout(timeout, seen).await {
            Ok(result) => result.is_ok(),
            // A raise may have taken this waiter out just before the timeout fired.
            Err(_) => self.lock().applied >= revision,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change to the state is a single step: a panic elsewhere while it was held
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn applied(&self) -> u64 {
        self.lock().applied
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// Takes one waiter out of the watermark when its wait ends.
struct Leave<'a> {
    mark: &'a Watermark,
    slot: (u64, u64),
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.mark.lock().waiting.remove(&self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LONG: Duration = Duration::from_secs(30);

    /// A task waiting (at most `LONG`) for `revision` to be applied.
    fn spawn_waiter(mark: &Arc<Watermark>, revision: u64) -> tokio::task::JoinHandle<bool> {
        let mark = mark.clone();
        tokio::spawn(async move { mark.wait_for(revision, LONG).await })
    }

    async fn until_waiting(mark: &Watermark, count: usize) {
        while mark.waiting() < count {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_revision_already_applied_is_seen_at_once() {
        let mark = Watermark::default();
        mark.raise(7);
        assert!(mark.wait_for(7, Duration::ZERO).await);
        assert!(mark.wait_for(3, Duration::ZERO).await);
        assert_eq!(mark.waiting(), 0);
    }

    #[tokio::test]
    async fn a_raise_wakes_exactly_the_waiters_it_satisfies() {
        let mark = Arc::new(Watermark::default());
        let waiters: Vec<_> = [2u64, 5, 5, 9]
            .into_iter()
            .map(|revision| spawn_waiter(&mark, revision))
            .collect();
        until_waiting(&mark, 4).await;
        mark.raise(5);
        let mut waiters = waiters.into_iter();
        for _ in 0..3 {
            assert!(waiters.next().unwrap().await.unwrap());
        }
        let last = waiters.next().unwrap();
        assert_eq!(mark.waiting(), 1, "the waiter for 9 still waits");
        assert!(!last.is_finished());
        mark.raise(u64::MAX);
        assert!(last.await.unwrap());
    }

    #[tokio::test]
    async fn the_mark_never_goes_down_except_by_a_reset() {
        let mark = Watermark::default();
        mark.raise(10);
        mark.raise(4);
        assert_eq!(mark.applied(), 10);
        mark.reset();
        assert_eq!(mark.applied(), 0);
        assert!(!mark.wait_for(1, Duration::from_millis(10)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_nothing_behind() {
        let mark = Watermark::default();
        assert!(!mark.wait_for(3, Duration::from_secs(2)).await);
        assert_eq!(mark.waiting(), 0);
    }

    #[tokio::test]
    async fn a_wait_dropped_by_its_caller_leaves_nothing_behind() {
        let mark = Arc::new(Watermark::default());
        let waiter = spawn_waiter(&mark, 4);
        until_waiting(&mark, 1).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(mark.waiting(), 0);
    }

    #[tokio::test]
    async fn closing_releases_every_waiter_and_later_waits_return_at_once() {
        let mark = Arc::new(Watermark::default());
        let waiter = spawn_waiter(&mark, 4);
        until_waiting(&mark, 1).await;
        mark.close();
        assert!(!waiter.await.unwrap(), "released as not seen");
        assert!(!mark.wait_for(5, LONG).await);
        assert_eq!(mark.waiting(), 0);
    }
}
