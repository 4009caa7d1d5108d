//! The retry policy's state: the decision after a failed attempt, the loop of attempts, the
//! budget and the counters. Driven with the time passed in (and `tokio` time for backoff).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::RetryConfig;
use super::budget::RetryBudget;
use mcp_codec::ErrorCode;

use crate::error::{Error, ErrorKind, Phase};

/// The rule for "may this call be sent again?" (public as
/// [`Error::is_retryable`](crate::Error::is_retryable)): the failure is transient and either
/// the request was certainly not processed or the call is idempotent.
///
/// Transient: a refused or lost connection; a timeout, except of the total budget or of the
/// queue for a slot (no time is left); ERROR 5 OVERLOADED, 6 UNAVAILABLE and 9 INTERNAL (9
/// is "maybe processed", so only idempotent calls retry it). Application codes never are:
/// the application decides.
pub(crate) fn retryable(err: &Error) -> bool {
    let transient = match err.kind() {
        ErrorKind::Connect | ErrorKind::ConnectionLost => true,
        // The server's ERROR 4 is a timeout too, but the protocol's table says no retry.
        ErrorKind::Timeout if err.remote().is_some() => false,
        ErrorKind::Timeout => !matches!(err.timeout_phase(), Some(Phase::Total | Phase::Queue)),
        ErrorKind::Remote => matches!(
            err.code(),
            Some(ErrorCode::OVERLOADED | ErrorCode::UNAVAILABLE | ErrorCode::INTERNAL)
        ),
        _ => false,
    };
    transient && (!err.maybe_processed() || err.is_idempotent())
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
    pub(crate) fn new(config: RetryConfig, now: Instant) -> Self {
        let budget = RetryBudget::new(config.budget.clone(), now);
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
        if !retryable(err) {
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
        // Whether an attempt so far may have been processed: the call's error must say so
        // even if the last attempt certainly was not (a retry refused at connect after a
        // first attempt lost with its connection), or a caller would redo done work.
        let mut maybe_processed = false;
        loop {
            let err = match attempt(number, other_connection).await {
                Ok(value) => return Ok(value),
                Err(err) if maybe_processed => err.for_call(idempotent, number).processed_earlier(),
                Err(err) => err.for_call(idempotent, number),
            };
            maybe_processed |= err.maybe_processed();
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
