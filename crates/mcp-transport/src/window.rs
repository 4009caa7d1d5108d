//! A connection's in-flight window, and the signal that wakes the pool's waiters: the
//! places a caller takes before its request is sent, counted with atomics on the hot path,
//! with a `Notify` only for those that wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Wakes pool waiters when a connection frees capacity or changes state.
#[derive(Debug, Default)]
pub(crate) struct PoolSignal {
    /// Callers waiting for a connection with room.
    pub(crate) notify: tokio::sync::Notify,
    pub(crate) waiters: AtomicUsize,
    /// The pool's connector task.
    pub(crate) connector: tokio::sync::Notify,
}

impl PoolSignal {
    /// One place freed: wake one waiter (waking all would make a crowd of waiters
    /// quadratic).
    pub(crate) fn capacity_freed(&self) {
        // SeqCst, as in `Slots`: the waiter counts itself then looks for room, this side
        // frees room then looks for waiters; one single order makes one see the other.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// The set of usable connections changed: every waiter looks again.
    pub(crate) fn changed(&self) {
        self.notify.notify_waiters();
        self.connector.notify_one();
    }
}

/// The in-flight window: a counter taken and given back with atomics on the hot path; a
/// `Notify` only for callers that wait.
#[derive(Debug)]
pub(crate) struct Slots {
    pub(crate) used: AtomicUsize,
    pub(crate) max: usize,
    pub(crate) waiters: AtomicUsize,
    pub(crate) freed: tokio::sync::Notify,
    pub(crate) closed: AtomicBool,
    pub(crate) signal: Option<Arc<PoolSignal>>,
}

impl Slots {
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<InFlightPermit> {
        // SeqCst on `used` and `waiters` (here, in `acquire` and in the permit's drop): a
        // waiter counts itself and then looks at `used`, a releaser gives back and then
        // looks at `waiters`; only a single order of all four guarantees one sees the
        // other, so that no wake-up is lost. (On x86 these cost what AcqRel does.)
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used >= self.max {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(InFlightPermit {
                        slots: self.clone(),
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.freed.notify_waiters();
    }
}

/// A place in a connection's in-flight window, given back on drop.
#[derive(Debug)]
pub(crate) struct InFlightPermit {
    slots: Arc<Slots>,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let slots = &self.slots;
        slots.used.fetch_sub(1, Ordering::SeqCst);
        if slots.waiters.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_one();
        }
        if let Some(signal) = &slots.signal {
            signal.capacity_freed();
        }
    }
}
