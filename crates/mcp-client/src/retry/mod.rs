//! Retries: which failures get another attempt, when, and how many the client may afford.
//!
//! Three rules, applied in this order after a failed attempt:
//! 1. The failure must be retryable ([`Error::is_retryable`]): transient (connection refused
//!    or lost, a per-attempt timeout, ERROR 5, 6, or 9) and either certainly not processed or
//!    the call marked idempotent. A call not marked idempotent is never sent twice once it
//!    may have been processed.
//! 2. A delay must be left in the backoff schedule (PROTOCOL.md section 7: 100, 300, 700 ms)
//!    and must fit in what is left of the call's total budget.
//! 3. The [retry budget](RetryBudgetConfig) must allow it, so that retries cannot multiply an
//!    outage: at most a fraction of recent requests (20%) plus a small floor per second.
//!
//! The module has the same shape as the others: a public config, a crate-private policy that
//! is driven with the time passed in or in `tokio` virtual time, its own counters, and tests
//! that run the policy alone.

mod budget;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use budget::RetryBudget;
pub use budget::RetryBudgetConfig;

use crate::error::Error;

/// How a client retries failed attempts. The default follows PROTOCOL.md section 7.
///
/// PROTOCOL.md lists three delays (100, 300, 700 ms) and "at most 3 attempts". The delays
/// are read as the waits before each retry, so by default a call makes its first attempt and
/// up to three retries, every listed delay being used once; the total call budget (5 s)
/// bounds the whole. For exactly three attempts in all, pass the first two delays to
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

/// Why a retry was not made; kept for the trace and the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// The failure is not retryable.
    NotRetryable,
    /// The backoff schedule is used up.
    Exhausted,
    /// The next delay does not fit in the call's total budget.
    NoTime,
    /// The retry budget is spent.
    Budget,
}

/// The retry policy of one client: its config, its budget and its counters.
#[derive(Debug)]
pub(crate) struct Retry {
    config: RetryConfig,
    budget: RetryBudget,
    retries: AtomicU64,
    denied_by_budget: AtomicU64,
}

impl Retry {
    pub(crate) fn new(config: RetryConfig) -> Self {
        let budget = RetryBudget::new(config.budget.clone(), Instant::now());
        Self {
            config,
            budget,
            retries: AtomicU64::new(0),
            denied_by_budget: AtomicU64::new(0),
        }
    }

    /// Decides what follows failed attempt number `attempt` (1-based): a retry after the
    /// returned delay, or giving up. A retry withdraws from the budget.
    pub(crate) fn decide(
        &self,
        err: &Error,
        attempt: u32,
        now: Instant,
        deadline: Instant,
    ) -> Result<Duration, GiveUp> {
        if !err.is_retryable() {
            return Err(GiveUp::NotRetryable);
        }
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let Some(&delay) = self.config.backoff.get(index) else {
            return Err(GiveUp::Exhausted);
        };
        // A retry that would start after the deadline could only time out; a retry that
        // starts right at it has no time for an answer either.
        if crate::window::later(now, delay) >= deadline {
            return Err(GiveUp::NoTime);
        }
        if !self.budget.try_withdraw(now) {
            self.denied_by_budget.fetch_add(1, Ordering::Relaxed);
            return Err(GiveUp::Budget);
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        Ok(delay)
    }

    /// Runs `attempt` (given the attempt number and whether the previous failure asked for
    /// another connection) until it succeeds or [`Retry::decide`] gives up; with `allowed`
    /// false, once. Every call
    /// deposits in the budget once, whatever its number of attempts. The caller bounds the
    /// whole with the total deadline; this only avoids starting retries that cannot finish.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        idempotent: bool,
        allowed: bool,
        now: Instant,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(u32, bool) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.budget.deposit(now);
        let mut number = 1u32;
        let mut other_connection = false;
        loop {
            let err = match attempt(number, other_connection).await {
                Ok(value) => return Ok(value),
                Err(err) => err.for_call(idempotent, number),
            };
            if !allowed {
                return Err(err);
            }
            match self.decide(&err, number, Instant::now(), deadline) {
                Ok(delay) => {
                    tracing::debug!(attempt = number, ?delay, error = %err, "retrying");
                    other_connection = err.wants_other_connection();
                    tokio::time::sleep(delay).await;
                    number += 1;
                }
                Err(reason) => {
                    tracing::debug!(attempt = number, ?reason, error = %err, "not retrying");
                    return Err(err);
                }
            }
        }
    }

    /// Retries made so far.
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused by the budget so far.
    pub(crate) fn denied_by_budget(&self) -> u64 {
        self.denied_by_budget.load(Ordering::Relaxed)
    }
}
