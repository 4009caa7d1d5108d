//! Retries: which failures get another attempt, when, and how many the client may afford.
//!
//! Three rules, applied in this order after a failed attempt:
//! 1. The failure must be retryable (`state::retryable`, which callers see as
//!    [`Error::is_retryable`](crate::Error::is_retryable)): transient (connection refused or
//!    lost, a per-attempt timeout, ERROR 5, 6, or 9) and either certainly not processed or
//!    the call marked idempotent. A call not marked idempotent is never sent twice once it
//!    may have been processed.
//! 2. A delay must be left in the backoff schedule (docs/protocol.md section 8: 100, 300, 700 ms)
//!    and must fit in what is left of the call's total budget.
//! 3. The [retry budget](RetryBudgetConfig) must allow it, so that retries cannot multiply an
//!    outage: at most a fraction of recent requests (20%) plus a small floor per second.
//!
//! Shape, as every policy folder: `mod.rs` (these docs and the public types: the config a
//! builder takes, what the client reports), `state.rs` (`Retry`: the decision with the time
//! passed in, the loop of attempts in `tokio` time, and the counters; `budget.rs` the
//! budget's window), `tests.rs` (the policy run alone). The stack (`stack.rs`) composes it
//! with the others.

mod budget;
mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

/// How a client retries failed attempts. The default follows docs/protocol.md section 8.
///
/// docs/protocol.md lists three delays (100, 300, 700 ms) and at most 3 retries: by default
/// a call makes its first attempt and up to three retries, every listed delay being used
/// once; the total call budget (5 s) bounds the whole. For exactly three attempts in all, pass the first two delays to
/// [`RetryConfig::backoff`].
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub(crate) backoff: Vec<Duration>,
    pub(crate) budget: RetryBudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            backoff: vec![
                Duration::from_millis(100),
                Duration::from_millis(300),
                Duration::from_millis(700),
            ],
            budget: RetryBudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    /// No retries at all: every failure reaches the caller after one attempt.
    pub fn disabled() -> Self {
        Self {
            backoff: Vec::new(),
            budget: RetryBudgetConfig::default(),
        }
    }

    /// The waits before the first, second, ... retry; their number is the maximum number of
    /// retries.
    #[must_use]
    pub fn backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.backoff = delays.into_iter().collect();
        self
    }

    /// The retry budget shared by every call of the client.
    #[must_use]
    pub fn budget(mut self, budget: RetryBudgetConfig) -> Self {
        self.budget = budget;
        self
    }

    /// The most attempts one call can make.
    pub fn max_attempts(&self) -> usize {
        self.backoff.len() + 1
    }
}

pub(crate) use state::{Retry, retryable};

/// How many retries a client may make. The default is Finagle's: 20% of the requests of the
/// last 10 seconds, plus 10 retries per second.
///
/// During an outage every request fails; without a budget each would be tried up to four
/// times, quadrupling the load on a server that is already failing. With it, once the
/// floor is spent, retries add at most 20% to the load.
#[derive(Clone, Debug)]
pub struct RetryBudgetConfig {
    pub(crate) window: Duration,
    pub(crate) percent: f64,
    pub(crate) min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            percent: 0.2,
            min_per_second: 10,
        }
    }
}

impl RetryBudgetConfig {
    /// The window over which requests and retries are counted (default 10 s).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The fraction of requests that may be retried, 0.0..=1.0 (default 0.2). Values outside
    /// the range are clamped.
    #[must_use]
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 1.0)
        };
        self
    }

    /// Retries allowed per second of the window whatever the traffic (default 10).
    #[must_use]
    pub fn min_per_second(mut self, min: u32) -> Self {
        self.min_per_second = min;
        self
    }
}
