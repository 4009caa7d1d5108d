//! The circuit breaker: stop sending to a server that keeps failing, and fail fast instead.
//!
//! - **Closed**: calls go through; their outcomes are counted over a sliding window. When at
//!   least `min_calls` were counted and the share of failures reaches `failure_rate`, the
//!   breaker opens.
//! - **Open**: every attempt fails at once with [`Error::is_circuit_open`](crate::Error::is_circuit_open), without touching
//!   the network, until the cool-down has passed.
//! - **Half-open**: up to `probes` attempts go through as probes; if they all succeed the
//!   breaker closes (with a fresh window), and the first failure opens it again for another
//!   cool-down.
//!
//! Failures are what says the server or the path to it is unwell: connection failures,
//! connect, write and per-attempt timeouts, protocol violations, and ERROR 5, 6 and 9.
//! Waiting too long for the client's own capacity (its concurrency limit, or a pool whose
//! connections are all full) is not counted at all. An application's ERROR,
//! an unknown method or a body that does not decode are answers, so they count as successes.
//!
//! Shape, as every policy folder: `mod.rs` (these docs and the public types: the config a
//! builder takes, what the client reports), `state.rs` (`Breaker`, `Permit`, `Outcome`: the
//! state machine with the time passed in, and its counters), `tests.rs` (the policy run
//! alone). The stack (`stack.rs`) composes it with the others.

mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

/// Circuit breaker settings.
///
/// Defaults: open when at least half of the calls of the last 10 s failed, once at least 20
/// calls were counted; probe again after 5 s with one call.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    pub(crate) enabled: bool,
    pub(crate) failure_rate: f64,
    pub(crate) window: Duration,
    pub(crate) min_calls: u32,
    pub(crate) cool_down: Duration,
    pub(crate) probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            cool_down: Duration::from_secs(5),
            probes: 1,
        }
    }
}

impl BreakerConfig {
    /// A breaker that never opens.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The share of failed calls (0.0..=1.0) at which the breaker opens (default 0.5).
    #[must_use]
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }

    /// The sliding window over which outcomes are counted (default 10 s).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The fewest calls in the window before the rate is trusted (default 20).
    #[must_use]
    pub fn min_calls(mut self, min: u32) -> Self {
        self.min_calls = min.max(1);
        self
    }

    /// How long the breaker stays open before it lets a probe through (default 5 s).
    #[must_use]
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// How many probe calls half-open lets through, all of which must succeed (default 1).
    #[must_use]
    pub fn probes(mut self, probes: u32) -> Self {
        self.probes = probes.max(1);
        self
    }
}

/// The breaker's state, as metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls go through.
    HalfOpen,
}

pub(crate) use state::{Breaker, Outcome};
