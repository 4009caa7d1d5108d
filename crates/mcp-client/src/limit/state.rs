//! The limiter: slots under the limit, counted with atomics, and the queue of calls waiting
//! for one. Driven by the deadlines passed in.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{LimitConfig, LimitMode};
use crate::error::{Error, Phase, Processed};

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
