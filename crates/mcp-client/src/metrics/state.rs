//! The recorder: call counters, errors by kind and the sharded latency histograms.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{ErrorCounts, LatencySnapshot};
use crate::error::ErrorKind;

/// Histograms per client; a thread uses always the same one.
const SHARDS: usize = 4;
/// Latencies are recorded in microseconds, from 1 us to 1 hour (longer ones count as one
/// hour), to 2 significant digits: percentiles within 1%, in 26 KiB per histogram (3 digits
/// would take 184 KiB, times the shards, for every client).
const MAX_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

thread_local! {
    /// The histogram shard of this thread, assigned round robin on first use.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn shard() -> usize {
    SHARD.with(|cell| match cell.get() {
        Some(shard) => shard,
        None => {
            let shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            cell.set(Some(shard));
            shard
        }
    })
}

fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, at most 5
    // significant digits): this cannot fail at run time.
    Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// The call counters and latency histogram of one client.
#[derive(Debug)]
pub(crate) struct Recorder {
    calls: AtomicU64,
    succeeded: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Allocated on first use, so that a client used from one thread holds one.
    latency: [Mutex<Option<Histogram<u64>>>; SHARDS],
    /// The handles of the `metrics` facade.
    #[cfg(feature = "metrics")]
    facade: super::facade::Facade,
}

impl Recorder {
    /// The recorder of a client of `endpoint` (the `server.address` of its series).
    pub(crate) fn new(endpoint: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = endpoint;
        Self {
            calls: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| Mutex::new(None)),
            #[cfg(feature = "metrics")]
            facade: super::facade::Facade::new(endpoint),
        }
    }

    /// A call of `method` started: the returned [`Call`](super::Call) records its attempts
    /// and its end through the `metrics` facade (nothing without the feature).
    pub(crate) fn started(&self, method: &str) -> super::Call {
        self.calls.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        return self.facade.started(method);
        #[cfg(not(feature = "metrics"))]
        {
            let _ = method;
            super::Call
        }
    }

    /// The breaker's transition counters for the `metrics` facade.
    pub(crate) fn transitions(&self) -> super::Transitions {
        #[cfg(feature = "metrics")]
        return self.facade.transitions();
        #[cfg(not(feature = "metrics"))]
        super::Transitions::default()
    }

    /// A call ended: `Ok`, or failed with an error of `kind`; `answered` says whether the
    /// server answered it (only those latencies are recorded).
    pub(crate) fn finished(&self, outcome: Result<(), ErrorKind>, answered: bool, took: Duration) {
        match outcome {
            Ok(()) => self.succeeded.fetch_add(1, Ordering::Relaxed),
            Err(kind) => self.errors[kind.index()].fetch_add(1, Ordering::Relaxed),
        };
        if answered {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
            let mut h = self.latency[shard()]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            h.get_or_insert_with(new_histogram)
                .saturating_record(micros);
        }
    }

    /// Counts a failure that happened outside a call (a subscription's, a notification's).
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub(crate) fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    pub(crate) fn errors(&self) -> ErrorCounts {
        ErrorCounts(std::array::from_fn(|i| {
            self.errors[i].load(Ordering::Relaxed)
        }))
    }

    pub(crate) fn latency(&self) -> LatencySnapshot {
        let mut merged = new_histogram();
        for shard in &self.latency {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides, so adding cannot fail; a failure would only lose
            // one shard from the snapshot.
            if let Some(h) = &*h {
                let _ = merged.add(h);
            }
        }
        if merged.is_empty() {
            return LatencySnapshot::default();
        }
        let us = Duration::from_micros;
        LatencySnapshot {
            count: merged.len(),
            min: us(merged.min()),
            p50: us(merged.value_at_quantile(0.5)),
            p90: us(merged.value_at_quantile(0.9)),
            p99: us(merged.value_at_quantile(0.99)),
            p999: us(merged.value_at_quantile(0.999)),
            max: us(merged.max()),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            mean: us(merged.mean() as u64),
        }
    }
}
