//! Bounded concurrency: at most `max_in_flight` calls of one client are outstanding at once.
//!
//! Past the limit a call either fails at once with [`Error::is_overloaded`]
//! ([`LimitMode::FailFast`]) or waits for a slot within its own budget
//! ([`LimitMode::Wait`], the default), failing with a timeout in [`Phase::Queue`] if none
//! frees up in time. Waiting calls are counted (`queued` in the metrics), so a saturated
//! client is visible before it starts refusing work.
//!
//! The limit also tracks what is in flight for [`Client::close`](crate::Client::close), which
//! waits for it to drain. Same shape as the other policies: a public config, a crate-private
//! state, its own counters, tests that run it alone.

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Phase, Processed};

/// The largest limit: far past any real one, and small enough that counting never
/// overflows.
const MAX_IN_FLIGHT: usize = usize::MAX >> 3;

/// What a call does when the client already has its maximum of calls outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitMode {
    /// Fail at once with an [`Error`] whose [`is_overloaded`](Error::is_overloaded) is true.
    FailFast,
    /// Wait for a slot, within the call's budget.
    Wait,
}

/// The concurrency limit of a client. Default: 1024 calls, waiting past it (1024 is also the
/// reference server's default limit per connection).
#[derive(Clone, Debug)]
pub struct LimitConfig {
    pub(crate) max_in_flight: usize,
    pub(crate) mode: LimitMode,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            mode: LimitMode::Wait,
        }
    }
}

impl LimitConfig {
    /// A limit of `max` outstanding calls (at least 1), with the default mode.
    pub fn new(max: usize) -> Self {
        Self::default().max_in_flight(max)
    }

    /// The most calls outstanding at once (at least 1).
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.clamp(1, MAX_IN_FLIGHT);
        self
    }

    /// What a call does past the limit.
    #[must_use]
    pub fn mode(mut self, mode: LimitMode) -> Self {
        self.mode = mode;
        self
    }
}

/// What the limiter's handles share.
///
/// The count of slots taken is an atomic counter, taken and given back with one atomic
/// operation each on the call path; only callers that wait register with `freed`. (A tokio
/// `Semaphore` takes a lock on every release; this is the same scheme as the transport's
/// in-flight window.)
#[derive(Debug)]
struct Shared {
    max: usize,
    /// Slots taken: the calls in flight.
    used: AtomicUsize,
    /// Callers waiting for a slot (registered with `freed`).
    waiters: AtomicUsize,
    closed: AtomicBool,
    /// Woken when a slot is given back while someone waits, and at close.
    freed: Notify,
    /// Woken when `used` drops to zero.
    idle: Notify,
    queued: AtomicUsize,
    rejected: AtomicUsize,
}

impl Shared {
    /// A slot if one is free (no waiting, no counting).
    fn try_take(self: &Arc<Self>) -> Result<Option<Slot>, Error> {
        // SeqCst here and in `Slot::drop` and `wait`: a waiter announces itself and then
        // looks at `used`, a releaser gives back and then looks at `waiters`; with a
        // single order of all four, one of them sees the other, so no wake-up is lost.
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::closed());
        }
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used >= self.max {
                return Ok(None);
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Ok(Some(Slot {
                        shared: Arc::clone(self),
                    }));
                }
                Err(now) => used = now,
            }
        }
    }

    /// Waits for a slot, until `deadline` if there is one.
    async fn wait(self: Arc<Self>, deadline: Option<Instant>) -> Result<Slot, Error> {
        struct Waiting<'a>(&'a Shared);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back in between wakes this.
            freed.as_mut().enable();
            if let Some(slot) = self.try_take()? {
                return Ok(slot);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(Error::timeout(Phase::Queue, Processed::No));
                    }
                }
                None => freed.await,
            }
        }
    }
}

/// The limiter of one client.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: LimitConfig,
    shared: Arc<Shared>,
}

/// A slot under the limit, held for the whole call (retries included); dropping it frees
/// the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let shared = &self.shared;
        let before = shared.used.fetch_sub(1, Ordering::SeqCst);
        if shared.waiters.load(Ordering::SeqCst) > 0 {
            shared.freed.notify_one();
        }
        if before == 1 {
            shared.idle.notify_waiters();
        }
    }
}

impl Limiter {
    pub(crate) fn new(config: LimitConfig) -> Self {
        let shared = Arc::new(Shared {
            max: config.max_in_flight,
            used: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            freed: Notify::new(),
            idle: Notify::new(),
            queued: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        });
        Self { config, shared }
    }

    /// A slot if one is free now, without waiting or counting a rejection.
    pub(crate) fn try_acquire(&self) -> Result<Option<Slot>, Error> {
        self.shared.try_take()
    }

    /// Takes a slot, waiting until `deadline` at most in [`LimitMode::Wait`].
    pub(crate) async fn acquire(&self, deadline: Instant) -> Result<Slot, Error> {
        if let Some(slot) = self.try_acquire()? {
            return Ok(slot);
        }
        if self.config.mode == LimitMode::FailFast {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::overloaded());
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let waited = Arc::clone(&self.shared).wait(Some(deadline)).await;
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        waited
    }

    /// Waits for a slot with no deadline (a `poll_ready` caller bounds its own wait); the
    /// future owns what it needs.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn acquire_owned(
        &self,
    ) -> impl Future<Output = Result<Slot, Error>> + Send + Sync + 'static {
        Arc::clone(&self.shared).wait(None)
    }

    /// Refuses new calls from now on, and wakes the calls waiting for a slot with a
    /// "closed" error.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.freed.notify_waiters();
    }

    /// Waits until no call holds a slot.
    pub(crate) async fn drained(&self) {
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.used.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Calls holding a slot.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }

    /// Calls waiting for a slot.
    pub(crate) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Calls refused at once by [`LimitMode::FailFast`] (the metrics count them as
    /// `overloaded` errors).
    #[cfg(test)]
    pub(crate) fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// The configured mode.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn mode(&self) -> LimitMode {
        self.config.mode
    }
}
