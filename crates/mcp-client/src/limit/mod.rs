//! Bounded concurrency: at most `max_in_flight` calls of one client are outstanding at once.
//!
//! Past the limit a call either fails at once with
//! [`Error::is_overloaded`](crate::Error::is_overloaded) ([`LimitMode::FailFast`]) or waits
//! for a slot within its own budget ([`LimitMode::Wait`], the default), failing with a
//! timeout in [`Phase::Queue`](crate::Phase::Queue) if none
//! frees up in time. Waiting calls are counted (`queued` in the metrics), so a saturated
//! client is visible before it starts refusing work.
//!
//! The limit also tracks what is in flight for [`Client::close`](crate::Client::close), which
//! waits for it to drain.
//!
//! Shape, as every policy folder: `mod.rs` (these docs and the public types: the config a
//! builder takes, what the client reports), `state.rs` (`Limiter` and `Slot`, bounded by
//! the deadlines passed in, with their counters), `tests.rs` (the policy run alone). The
//! stack (`stack.rs`) composes it with the others.

mod state;
#[cfg(test)]
mod tests;

/// The largest limit: far past any real one, and small enough that counting never
/// overflows.
const MAX_IN_FLIGHT: usize = usize::MAX >> 3;

/// What a call does when the client already has its maximum of calls outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitMode {
    /// Fail at once with an [`Error`](crate::Error) whose
    /// [`is_overloaded`](crate::Error::is_overloaded) is true.
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

pub(crate) use state::{Limiter, Slot};
