//! Reconnect backoff: exponential, capped, with full jitter.

use std::time::Duration;

use rand::Rng;

use crate::config::BackoffConfig;

/// The delays of one series of connect tries.
///
/// The first try of a series goes at once; after the `n`-th failure the next try waits a
/// delay drawn uniformly from `[0, min(max, initial * multiplier^(n-1))]` ("full jitter":
/// clients that lost the same server spread out instead of coming back together). After
/// `max_tries` failures in a row the series ends ([`Backoff::exhausted`]); a success
/// resets it ([`Backoff::reset`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A fresh series.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            failures: 0,
        }
    }

    /// Failed tries so far in this series.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failed try.
    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Starts a new series (after a success, or when new demand follows a series that
    /// ended).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Whether the try limit has been reached.
    pub fn exhausted(&self) -> bool {
        self.failures >= self.config.max_tries
    }

    /// The upper bound of the delay after `failures` failed tries (0 for none).
    pub fn upper_bound(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = i32::try_from(failures - 1).unwrap_or(i32::MAX);
        let secs = self.config.initial.as_secs_f64() * self.config.multiplier.powi(exp);
        let max = self.config.max.as_secs_f64();
        // `min` also turns an overflow to infinity into the cap.
        Duration::try_from_secs_f64(secs.min(max)).unwrap_or(self.config.max)
    }

    /// The delay before the next try: zero for the first of a series, else jittered.
    pub fn next_delay(&self) -> Duration {
        self.delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] with a caller's random source (for deterministic tests).
    pub fn delay_with<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let bound = self.upper_bound(self.failures);
        if !self.config.jitter || bound.is_zero() {
            return bound;
        }
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_and_cap() {
        let b = Backoff::new(BackoffConfig::default());
        let bounds: Vec<u64> = (0..=8).map(|n| b.upper_bound(n).as_secs()).collect();
        assert_eq!(bounds, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.upper_bound(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut b = Backoff::new(BackoffConfig::default());
        assert_eq!(b.next_delay(), Duration::ZERO);
        for _ in 0..4 {
            b.failed();
        }
        let bound = b.upper_bound(4);
        let delays: Vec<Duration> = (0..64).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= bound));
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "full jitter varies");
    }

    #[test]
    fn limit_and_reset() {
        let mut b = Backoff::new(BackoffConfig {
            max_tries: 3,
            jitter: false,
            ..BackoffConfig::default()
        });
        b.failed();
        b.failed();
        assert!(!b.exhausted());
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        b.failed();
        assert!(b.exhausted());
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), Duration::ZERO);
    }
}
