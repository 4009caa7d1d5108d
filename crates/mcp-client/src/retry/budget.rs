//! The retry budget, after Finagle's `RetryBudget`: retries may be at most a percentage of
//! the requests seen over a time window, plus a floor of retries per second so that a client
//! with little traffic can still retry.

use std::sync::Mutex;

use tokio::time::Instant;

use super::RetryBudgetConfig;
use crate::window::Window;

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
