//! Metrics: what a client is doing, as a snapshot a program can log or export.
//!
//! The counters live where they are counted (the limiter counts its queue, the retry policy
//! its retries, the breaker its state); this module adds the call counters, errors by kind
//! and the latency histogram. The stack, which holds every policy and the transport, gathers
//! everything into the [`MetricsSnapshot`] that [`Client::metrics`](crate::Client::metrics)
//! returns.
//!
//! Recording is on every call's path, so it is kept cheap: counters are relaxed atomics,
//! and latencies go into one of a few HdrHistograms chosen per thread, so that threads
//! rarely contend for the same lock. A snapshot merges them.
//!
//! Shape, as every policy folder: `mod.rs` (these docs and the public types: the config a
//! builder takes, what the client reports), `state.rs` (`Recorder`: the counters and
//! histograms; the public part here is the snapshot types rather than a config, as metrics
//! have no settings), `tests.rs` (the policy run alone). The stack (`stack.rs`) composes it
//! with the others.

#[cfg(feature = "metrics")]
mod facade;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use crate::breaker::BreakerState;
use crate::error::ErrorKind;

/// Connections of the client's pool, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCounts {
    /// Being opened (or waiting to be reopened).
    pub connecting: usize,
    /// Open and taking requests.
    pub ready: usize,
    /// Closing: no new requests, answers still awaited (after a GOAWAY).
    pub draining: usize,
}

/// Latency percentiles of the calls the server answered (successes and ERROR answers alike;
/// calls refused locally or that never got an answer are counted in `errors` only, so that
/// failing fast does not flatter the percentiles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySnapshot {
    /// How many latencies were recorded.
    pub count: u64,
    /// The fastest.
    pub min: Duration,
    /// The median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// The slowest.
    pub max: Duration,
    /// The mean.
    pub mean: Duration,
}

/// Failed calls, by [`ErrorKind`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub(crate) [u64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    /// Failures of `kind`.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The kinds with at least one failure, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL
            .iter()
            .map(|&kind| (kind, self.get(kind)))
            .filter(|&(_, n)| n > 0)
    }
}

impl fmt::Debug for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, n)| (k.name(), n)))
            .finish()
    }
}

/// A point-in-time view of a client.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Calls started (typed and raw; not notifications).
    pub calls: u64,
    /// Calls that succeeded.
    pub succeeded: u64,
    /// Calls holding a slot under the concurrency limit.
    pub in_flight: usize,
    /// Calls waiting for a slot.
    pub queued: usize,
    /// The pool's connections by state.
    pub connections: ConnectionCounts,
    /// Connections re-established after one was lost.
    pub reconnects: u64,
    /// Retries made.
    pub retries: u64,
    /// Retries refused by the retry budget.
    pub retries_denied: u64,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// How many times the breaker opened.
    pub breaker_opened: u64,
    /// Failed calls by kind.
    pub errors: ErrorCounts,
    /// Latency of answered calls.
    pub latency: LatencySnapshot,
    /// Per endpoint, for a client of several ([`Client::fleet`](crate::Client::fleet)):
    /// state, attempts in flight, latency estimate, ejections. Empty for one endpoint; the
    /// fields above are the totals either way.
    pub endpoints: Vec<crate::EndpointSnapshot>,
}

pub(crate) use state::Recorder;

#[cfg(feature = "metrics")]
pub(crate) use facade::{Call, Transitions, ejected, watch_pool};
#[cfg(not(feature = "metrics"))]
pub(crate) use off::{Call, Transitions, ejected, watch_pool};

/// Without the `metrics` feature: the same calls, doing nothing, so that the call path has
/// one shape either way.
#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use crate::breaker::BreakerState;
    use crate::error::Error;

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Transitions(());

    impl Transitions {
        #[inline]
        pub(crate) fn entered(&self, _: BreakerState) {}
    }

    #[derive(Debug)]
    pub(crate) struct Call;

    impl Call {
        #[inline]
        pub(crate) fn attempt<T>(&self, _: u32, _: usize, _: &Result<T, Error>, _: Duration) {}

        #[inline]
        pub(crate) fn finished(self, _: Result<(), &Error>, _: Duration) {}
    }

    #[inline]
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn ejected(_: &str) {}

    #[inline]
    pub(crate) fn watch_pool(_: &mcp_transport::Pool) {}
}
