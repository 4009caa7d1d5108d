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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, Phase, Processed};

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
        self.max_in_flight = max.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// What a call does past the limit.
    #[must_use]
    pub fn mode(mut self, mode: LimitMode) -> Self {
        self.mode = mode;
        self
    }
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    rejected: AtomicUsize,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
}

/// The limiter of one client.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: LimitConfig,
    semaphore: Arc<Semaphore>,
    counters: Arc<Counters>,
}

/// A slot under the limit, held for the whole call (retries included); dropping it frees
/// the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counters.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.counters.idle.notify_waiters();
        }
    }
}

impl Limiter {
    pub(crate) fn new(config: LimitConfig) -> Self {
        let semaphore = Arc::new(Semaphore::new(config.max_in_flight));
        Self {
            config,
            semaphore,
            counters: Arc::default(),
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Slot {
            _permit: permit,
            counters: Arc::clone(&self.counters),
        }
    }

    /// A slot if one is free now, without waiting or counting a rejection.
    pub(crate) fn try_acquire(&self) -> Result<Option<Slot>, Error> {
        match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => Ok(Some(self.slot(permit))),
            Err(tokio::sync::TryAcquireError::Closed) => Err(Error::closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => Ok(None),
        }
    }

    /// Takes a slot, waiting until `deadline` at most in [`LimitMode::Wait`].
    pub(crate) async fn acquire(&self, deadline: Instant) -> Result<Slot, Error> {
        if let Some(slot) = self.try_acquire()? {
            return Ok(slot);
        }
        if self.config.mode == LimitMode::FailFast {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::overloaded());
        }
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let waited =
            tokio::time::timeout_at(deadline, Arc::clone(&self.semaphore).acquire_owned()).await;
        self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(permit)) => Ok(self.slot(permit)),
            Ok(Err(_closed)) => Err(Error::closed()),
            Err(_elapsed) => Err(Error::timeout(Phase::Queue, Processed::No)),
        }
    }

    /// The semaphore behind the limit, for `poll_ready`-style callers that wait on their
    /// own.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn semaphore(&self) -> Arc<Semaphore> {
        Arc::clone(&self.semaphore)
    }

    /// Wraps a permit obtained from [`Limiter::semaphore`] into a slot.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn slot_from(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.slot(permit)
    }

    /// Refuses new calls from now on, and wakes the calls waiting for a slot with a
    /// "closed" error.
    pub(crate) fn close(&self) {
        self.semaphore.close();
    }

    /// Waits until no call holds a slot.
    pub(crate) async fn drained(&self) {
        loop {
            let idle = self.counters.idle.notified();
            if self.counters.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Calls holding a slot.
    pub(crate) fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Calls waiting for a slot.
    pub(crate) fn queued(&self) -> usize {
        self.counters.queued.load(Ordering::Relaxed)
    }

    /// Calls refused at once by [`LimitMode::FailFast`] (the metrics count them as
    /// `overloaded` errors).
    #[cfg(test)]
    pub(crate) fn rejected(&self) -> usize {
        self.counters.rejected.load(Ordering::Relaxed)
    }

    /// The configured mode.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn mode(&self) -> LimitMode {
        self.config.mode
    }
}
