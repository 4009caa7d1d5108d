//! The breaker's state machine (closed, open, half-open) over a sliding window, with the
//! time passed in.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mcp_codec::ErrorCode;
use tokio::time::Instant;

use super::{BreakerConfig, BreakerState};
use crate::error::{Error, ErrorKind, Phase};
use crate::metrics::Transitions;
use crate::window::{Counts, Window};

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: Window,
}

/// The breaker of one client.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Whether the state is anything but closed. Read without the lock on every attempt,
    /// so that a healthy client's attempts take no lock to be admitted; written under the
    /// lock. An attempt admitted just as the breaker opens is harmless: outcomes of
    /// attempts admitted in another state are not counted.
    tripped: AtomicBool,
    opened: AtomicU64,
    rejected: AtomicU64,
    /// Each state entered, for the `metrics` facade (nothing without the feature).
    transitions: Transitions,
}

/// How an attempt ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    /// The attempt was abandoned without an outcome (the caller went away).
    Ignored,
}

impl Outcome {
    /// Classifies an attempt's result (see the module docs).
    pub(crate) fn of<T>(result: &Result<T, Error>) -> Self {
        let Err(err) = result else {
            return Outcome::Success;
        };
        let failure = match err.kind() {
            ErrorKind::Connect | ErrorKind::ConnectionLost | ErrorKind::Protocol => true,
            // The queue, the pool's connections being full and the total budget are the
            // caller's own limits, not signs about the server: counting them would let a
            // purely local overload open the breaker against a healthy server.
            ErrorKind::Timeout
                if matches!(
                    err.timeout_phase(),
                    Some(Phase::Queue | Phase::Pool | Phase::Total)
                ) =>
            {
                return Outcome::Ignored;
            }
            ErrorKind::Timeout => true,
            ErrorKind::Remote => matches!(
                err.code(),
                Some(ErrorCode::OVERLOADED | ErrorCode::UNAVAILABLE | ErrorCode::INTERNAL)
            ),
            ErrorKind::CircuitOpen | ErrorKind::Overloaded | ErrorKind::Closed => {
                return Outcome::Ignored;
            }
            _ => false,
        };
        if failure {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// Leave to make one attempt. Dropping it without [`Permit::record`] counts as
/// [`Outcome::Ignored`], so an abandoned probe frees its place.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    pub(crate) fn record(mut self, outcome: Outcome, now: Instant) {
        self.done = true;
        self.breaker.record(self.probe, outcome, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker
                .record(self.probe, Outcome::Ignored, Instant::now());
        }
    }
}

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, now: Instant) -> Self {
        let window = Window::new(config.window, BUCKETS, now);
        Self {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                window,
            }),
            tripped: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            transitions: Transitions::default(),
        }
    }

    /// The breaker, reporting its transitions to `transitions`.
    pub(crate) fn with_transitions(mut self, transitions: Transitions) -> Self {
        self.transitions = transitions;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to make one attempt at `now`.
    pub(crate) fn acquire(&self, now: Instant) -> Result<Permit<'_>, Error> {
        if !self.config.enabled || !self.tripped.load(Ordering::Acquire) {
            return Ok(self.permit(false));
        }
        let mut inner = self.lock();
        let probe = match &mut inner.state {
            State::Closed => false,
            State::Open { until } if now < *until => {
                drop(inner);
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Error::circuit_open());
            }
            State::Open { .. } => {
                tracing::info!("circuit breaker half-open: probing");
                self.transitions.entered(BreakerState::HalfOpen);
                inner.state = State::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                };
                true
            }
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                if in_flight.saturating_add(*successes) < self.config.probes {
                    *in_flight += 1;
                    true
                } else {
                    drop(inner);
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::circuit_open());
                }
            }
        };
        Ok(self.permit(probe))
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            done: false,
        }
    }

    fn record(&self, probe: bool, outcome: Outcome, now: Instant) {
        if !self.config.enabled || outcome == Outcome::Ignored && !probe {
            return;
        }
        let mut inner = self.lock();
        let Inner { state, window } = &mut *inner;
        match state {
            State::Closed if !probe => {
                let failed = outcome == Outcome::Failure;
                window.add(now, 1, u64::from(failed));
                // A success cannot raise the failure rate: only a failure needs the sums.
                if !failed {
                    return;
                }
                let Counts {
                    a: calls,
                    b: failures,
                } = window.sum(now);
                #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
                let rate = failures as f64 / calls as f64;
                if calls >= u64::from(self.config.min_calls) && rate >= self.config.failure_rate {
                    tracing::warn!(calls, failures, "circuit breaker open");
                    self.open(state, window, now);
                }
            }
            State::HalfOpen {
                in_flight,
                successes,
            } if probe => {
                *in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Failure => {
                        tracing::warn!("circuit breaker probe failed: open again");
                        self.open(state, window, now);
                    }
                    Outcome::Success => {
                        *successes += 1;
                        if *successes >= self.config.probes {
                            tracing::info!("circuit breaker closed");
                            self.transitions.entered(BreakerState::Closed);
                            *state = State::Closed;
                            window.clear();
                            self.tripped.store(false, Ordering::Release);
                        }
                    }
                    Outcome::Ignored => {}
                }
            }
            // An attempt admitted in an earlier state ended after a transition: its outcome
            // describes the server before the change and is not counted.
            _ => {}
        }
    }

    fn open(&self, state: &mut State, window: &mut Window, now: Instant) {
        *state = State::Open {
            until: crate::window::later(now, self.config.cool_down),
        };
        window.clear();
        self.tripped.store(true, Ordering::Release);
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.transitions.entered(BreakerState::Open);
    }

    /// The state at `now` (an open breaker whose cool-down has passed reports half-open).
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker opened.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many attempts it refused (the metrics count them as `circuit_open` errors).
    #[cfg(test)]
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}
