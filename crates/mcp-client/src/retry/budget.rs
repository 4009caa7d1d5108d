//! The retry budget, after Finagle's `RetryBudget`: retries may be at most a percentage of
//! the requests seen over a time window, plus a floor of retries per second so that a client
//! with little traffic can still retry.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::window::Window;

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

/// The budget's state: requests (`a`) and retries (`b`) counted in a sliding window.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    config: RetryBudgetConfig,
    window: Mutex<Window>,
}

/// Buckets of the sliding window: a retry made 10 s ago stops counting within a second.
const BUCKETS: usize = 10;

impl RetryBudget {
    pub(crate) fn new(config: RetryBudgetConfig, now: Instant) -> Self {
        let window = Window::new(config.window, BUCKETS, now);
        Self {
            config,
            window: Mutex::new(window),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding this lock cannot leave the counters inconsistent (each
        // update is one call), so a poisoned lock is used as it is.
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request (a call, not an attempt).
    pub(crate) fn deposit(&self, now: Instant) {
        self.lock().add(now, 1, 0);
    }

    /// Takes one retry from the budget if there is one left.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.lock();
        let counts = window.sum(now);
        let floor = f64::from(self.config.min_per_second) * self.config.window.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
        let allowed = self.config.percent * counts.a as f64 + floor;
        #[allow(clippy::cast_precision_loss)]
        let used = counts.b as f64;
        if used + 1.0 <= allowed {
            window.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}
