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
    /// Waiters by the revision they wait for.
    waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

impl Watermark {
    #[cfg(test)]
    fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Raises the mark to `revision` (never lowers it) and wakes whoever waited for it.
    pub(crate) fn raise(&self, revision: u64) {
        let ready = {
            let mut state = self.lock();
            if revision <= state.applied {
                return;
            }
            state.applied = revision;
            let later = state.waiting.split_off(&(revision + 1));
            std::mem::replace(&mut state.waiting, later)
        };
        // Outside the lock: a woken waiter may run on another thread at once.
        for waiter in ready.into_values().flatten() {
            // A waiter that gave up has dropped its receiver; nothing to do for it.
            let _ = waiter.send(());
        }
    }

    /// The bucket's log was replaced: its revisions start again, so the mark does too.
    /// Waiters keep waiting for their revision (in the new log) or their timeout.
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.applied = 0;
        // Drop the waiters that already gave up: the new log may never reach their revision.
        state.waiting.retain(|_, waiters| {
            waiters.retain(|waiter| !waiter.is_closed());
            !waiters.is_empty()
        });
    }

    /// Waits until readers see `revision`, at most `timeout`. True when they do.
    pub(crate) async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let seen = {
            let mut state = self.lock();
            if state.applied >= revision {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.entry(revision).or_default().push(tx);
            rx
        };
        matches!(tokio::time::timeout(timeout, seen).await, Ok(Ok(())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a number and a map updated in single steps: a panic elsewhere
        // while it was held cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LONG: Duration = Duration::from_secs(30);

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
        let waiters: Vec<_> = [2u64, 5, 9]
            .into_iter()
            .map(|revision| {
                let mark = mark.clone();
                tokio::spawn(async move { mark.wait_for(revision, LONG).await })
            })
            .collect();
        while mark.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        mark.raise(5);
        let mut waiters = waiters.into_iter();
        assert!(waiters.next().unwrap().await.unwrap());
        assert!(waiters.next().unwrap().await.unwrap());
        let last = waiters.next().unwrap();
        assert_eq!(mark.waiting(), 1, "the waiter for 9 still waits");
        assert!(!last.is_finished());
        mark.raise(9);
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
    async fn a_waiter_gives_up_at_its_timeout_and_a_reset_forgets_it() {
        let mark = Watermark::default();
        assert!(!mark.wait_for(3, Duration::from_secs(2)).await);
        assert_eq!(mark.waiting(), 1, "kept until a raise or a reset");
        mark.reset();
        assert_eq!(mark.waiting(), 0);
    }
}
