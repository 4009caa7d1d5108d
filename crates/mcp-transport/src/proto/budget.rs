//! Budgets shared by every connection of a server: requests whose handler runs, and the
//! request body bytes they hold, process-wide (issue 11, section 3). The per-connection
//! limits bound what one client can make the server hold; these bound what all of them
//! together can, so that many connections each within their limits cannot exhaust the
//! server. A request past either is answered ERROR 5 at once (docs/protocol.md section 6:
//! at the place of the in-flight check), never queued.
//!
//! Counted with atomics, so that connections on different threads share them without a
//! lock. What a running request holds is a [`Held`], which gives it back when dropped:
//! exactly once, whichever way the request ends (answered, cancelled, its connection
//! closed, its handler panicked).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared budgets of one server; clones share the same counts.
#[derive(Debug, Clone)]
pub struct SharedBudget {
    inner: Arc<Counts>,
}

#[derive(Debug)]
struct Counts {
    max_requests: usize,
    max_bytes: usize,
    requests: AtomicUsize,
    bytes: AtomicUsize,
}

/// Which budget a request did not fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Requests in flight in the whole server.
    Requests,
    /// Request body bytes in flight in the whole server.
    Bytes,
}

impl Exhausted {
    /// The ERROR 5 message that says so.
    pub fn message(self) -> &'static str {
        match self {
            Exhausted::Requests => "too many requests in flight on this server",
            Exhausted::Bytes => "too many request bytes in flight on this server",
        }
    }
}

impl SharedBudget {
    /// At most `max_requests` requests and `max_bytes` body bytes in flight. A request that
    /// arrives when no body bytes are held is admitted whatever its size (as a connection's
    /// own byte limit does), so that any body up to the message size limit can be served.
    pub fn new(max_requests: usize, max_bytes: usize) -> Self {
        SharedBudget {
            inner: Arc::new(Counts {
                max_requests,
                max_bytes,
                requests: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// Whether a request of `bytes` fits now: the admission's check, in its order.
    pub fn check(&self, bytes: usize) -> Result<(), Exhausted> {
        let counts = &self.inner;
        if counts.requests.load(Ordering::Relaxed) >= counts.max_requests {
            return Err(Exhausted::Requests);
        }
        if !fits(
            counts.bytes.load(Ordering::Relaxed),
            bytes,
            counts.max_bytes,
        ) {
            return Err(Exhausted::Bytes);
        }
        Ok(())
    }

    /// Takes a place for a request of `bytes` that [`SharedBudget::check`] admitted,
    /// given back when the [`Held`] is dropped.
    ///
    /// Not refused: the request's handler has started by now (a place is taken only for a
    /// request that is still running after the poll that started it), so it can no longer
    /// be answered ERROR 5. The check and this run with no await between them, so on a
    /// current-thread runtime the budget is exact; on a multi-thread one, connections
    /// checking at the same moment on other threads may each take one of the same last
    /// places: at most one request (and its body) past the budget per other worker thread.
    pub fn hold(&self, bytes: usize) -> Held {
        let counts = &self.inner;
        counts.requests.fetch_add(1, Ordering::AcqRel);
        counts.bytes.fetch_add(bytes, Ordering::AcqRel);
        Held {
            counts: Some(self.inner.clone()),
            bytes,
        }
    }

    /// Requests in flight now.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::Acquire)
    }

    /// Request body bytes in flight now.
    pub fn bytes(&self) -> usize {
        self.inner.bytes.load(Ordering::Acquire)
    }
}

/// The bytes a connection's reader holds for a message still arriving, in a
/// [`SharedBudget`]'s byte count (requests whose handlers run hold the rest of it), so that
/// many connections each sending a large message slowly cannot make the server buffer
/// more than the budget. Given back when the message is complete, dropped, or this is.
#[derive(Debug)]
pub struct PartialHold {
    counts: Arc<Counts>,
    held: usize,
}

impl PartialHold {
    /// Holds nothing yet, in `budget`.
    pub fn new(budget: &SharedBudget) -> Self {
        PartialHold {
            counts: budget.inner.clone(),
            held: 0,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holds `to` bytes: more is taken if it fits (as a request's body is admitted: within
    /// the budget, or anything when nothing at all is held, so that one message can always
    /// arrive), less gives the difference back at once. False if more did not fit; then
    /// the hold is as it was.
    pub fn resize(&mut self, to: usize) -> bool {
        if to <= self.held {
            self.counts
                .bytes
                .fetch_sub(self.held - to, Ordering::AcqRel);
            self.held = to;
            return true;
        }
        let more = to - self.held;
        let max = self.counts.max_bytes;
        let taken = self
            .counts
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                // What this hold has is part of the total: the others hold the rest, and a
                // message alone fits whatever its size.
                fits(total.saturating_sub(self.held), to, max).then_some(total + more)
            });
        if taken.is_err() {
            return false;
        }
        self.held = to;
        true
    }
}

impl Drop for PartialHold {
    fn drop(&mut self) {
        self.resize(0);
    }
}

/// `bytes` more fit next to `held`: within `max`, or nothing is held at all.
fn fits(held: usize, bytes: usize, max: usize) -> bool {
    held == 0 || held.saturating_add(bytes) <= max
}

/// A running request's place in a [`SharedBudget`], given back when dropped.
#[derive(Debug)]
#[must_use = "the place is given back when this is dropped"]
pub struct Held {
    counts: Option<Arc<Counts>>,
    bytes: usize,
}

impl Held {
    /// A place in no budget (a server without one).
    pub fn none() -> Held {
        Held {
            counts: None,
            bytes: 0,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(counts) = self.counts.take() {
            counts.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
            counts.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_checked_up_to_each_limit_and_given_back_once() {
        let budget = SharedBudget::new(2, 100);
        let a = budget.hold(60);
        assert_eq!(budget.check(50), Err(Exhausted::Bytes));
        assert_eq!((budget.requests(), budget.bytes()), (1, 60));
        assert_eq!(budget.check(40), Ok(()));
        let b = budget.hold(40);
        assert_eq!(budget.check(0), Err(Exhausted::Requests));
        drop(a);
        assert_eq!((budget.requests(), budget.bytes()), (1, 40));
        assert_eq!(budget.check(60), Ok(()));
        drop(b);
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
        // Alone, a body larger than the whole budget is admitted.
        assert_eq!(budget.check(1000), Ok(()));
        let big = budget.hold(1000);
        assert_eq!(budget.check(1), Err(Exhausted::Bytes));
        drop(big);
        drop(Held::none());
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
    }

    /// A message arriving holds its bytes in the same count as running requests: it grows
    /// while it fits, is refused past the budget (keeping what it had), always fits alone,
    /// and gives everything back when done or dropped.
    #[test]
    fn a_partial_message_holds_its_bytes_in_the_shared_count() {
        let budget = SharedBudget::new(10, 100);
        let mut a = PartialHold::new(&budget);
        assert!(a.resize(5_000), "alone, any size fits");
        assert_eq!(budget.bytes(), 5_000);
        assert!(a.resize(0));
        assert!(a.resize(40));
        let running = budget.hold(50);
        assert!(a.resize(50), "40 + 50 + 10 more within 100");
        assert!(!a.resize(51), "past the budget");
        assert_eq!((a.held(), budget.bytes()), (50, 100));
        assert_eq!(
            budget.check(1),
            Err(Exhausted::Bytes),
            "requests are refused too"
        );
        let mut b = PartialHold::new(&budget);
        assert!(!b.resize(1));
        assert_eq!(b.held(), 0);
        drop(running);
        assert!(b.resize(50));
        assert!(a.resize(10), "shrinking always works");
        assert_eq!(budget.bytes(), 60);
        drop(a);
        drop(b);
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
    }

    /// Threads checking and holding at once pass the limit by at most one place per
    /// other thread, and every place comes back.
    #[test]
    fn threads_holding_at_once_pass_the_limit_by_at_most_one_each() {
        const THREADS: usize = 4;
        let budget = SharedBudget::new(10, usize::MAX);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                let (budget, peak) = (budget.clone(), peak.clone());
                s.spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..10_000 {
                        if budget.check(1).is_ok() {
                            kept.push(budget.hold(1));
                            peak.fetch_max(budget.requests(), Ordering::Relaxed);
                        }
                        if i % 3 == 0 {
                            kept.clear();
                        }
                    }
                });
            }
        });
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak < 10 + THREADS, "peak {peak}");
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
    }
}
