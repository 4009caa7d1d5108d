//! A load generator for request/response systems: closed-loop or open-loop at a fixed
//! rate, with latency corrected for coordinated omission.
//!
//! It is generic over an async "make one call" function, so the same harness drives the
//! MCP client (`mcp bench`) and the raw multiplexed echo that serves as the ceiling in
//! `benches/` — both measured the same way, in the same process.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The resolution of tokio's timer.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// How to generate load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Calls in flight at once (closed loop), or workers available (open loop).
    pub concurrency: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Open loop: calls per second in total. `None`: closed loop.
    pub rate: Option<f64>,
    /// Time spent calling before measuring starts (caches, connections, allocator).
    pub warmup: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            concurrency: 64,
            duration: Duration::from_secs(5),
            rate: None,
            warmup: Duration::from_millis(500),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Calls that succeeded during the measured interval.
    pub ok: u64,
    /// Failed calls during the measured interval, by kind.
    pub errors: BTreeMap<String, u64>,
    /// The measured interval.
    pub elapsed: Duration,
    /// Latencies of successful calls, in nanoseconds. In open loop they are measured from
    /// the time a call was due, not from when it was sent (coordinated omission).
    pub latency_ns: Histogram<u64>,
}

impl LoadReport {
    /// Successful calls per second.
    pub fn requests_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Failed calls in all.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A latency percentile (0..=100) in microseconds.
    pub fn percentile_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q / 100.0) as f64 / 1_000.0
    }

    /// One JSON object with the headline figures; throughput is under
    /// `requests_per_second`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests_per_second": self.requests_per_second(),
            "ok": self.ok,
            "errors": self.error_count(),
            "errors_by_kind": self.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "latency_us": {
                "p50": self.percentile_us(50.0),
                "p90": self.percentile_us(90.0),
                "p99": self.percentile_us(99.0),
                "p99_9": self.percentile_us(99.9),
                "max": self.latency_ns.max() as f64 / 1_000.0,
                "mean": self.latency_ns.mean() / 1_000.0,
            },
        })
    }
}

/// Live counters a progress display can read while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    ok: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    /// Successful calls so far (warm-up included).
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Failed calls so far (warm-up included).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Latencies a worker keeps before adding them to the run's histogram.
///
/// A histogram of the run's range takes about 230 KB, so one per worker would make
/// memory grow with the concurrency (100,000 workers: over 20 GB). Workers share one
/// histogram instead and take its lock once per batch, which costs nothing measurable.
const BATCH: usize = 256;

/// One worker's share of the results.
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// Latencies not yet added to `shared`.
    batch: Vec<u64>,
    shared: Arc<Mutex<Histogram<u64>>>,
}

impl Tally {
    fn record(&mut self, ns: u64) {
        self.batch.push(ns);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut histogram = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ns in self.batch.drain(..) {
            histogram.saturating_record(ns);
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs `call` under `config`'s load and reports what was measured.
///
/// `call` makes one call and returns `Err(kind)` on failure, where `kind` is a short label
/// used to count errors by kind. Workers are spawned on the current runtime.
pub async fn run<F, Fut>(config: &LoadConfig, progress: Arc<Progress>, call: F) -> LoadReport
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let ticket = Arc::new(AtomicU64::new(0));
    let interval = config
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));

    let shared = Arc::new(Mutex::new(histogram()));
    let mut workers = Vec::with_capacity(config.concurrency.max(1));
    for _ in 0..config.concurrency.max(1) {
        let shared = Arc::clone(&shared);
        let call = Arc::clone(&call);
        let progress = Arc::clone(&progress);
        let ticket = Arc::clone(&ticket);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally {
                ok: 0,
                errors: BTreeMap::new(),
                batch: Vec::new(),
                shared,
            };
            // Closed loop: when the last call ended, which is when the next one starts (one
            // clock read per call: the harness's own cost is part of every figure).
            let mut last_done = None;
            loop {
                // Closed loop: the next call starts when the last one ends. Open loop: the
                // next call is due at its slot in a fixed schedule, and its latency counts
                // from that slot, so a stalled system is charged for the calls it delayed.
                let due = match interval {
                    None => last_done.unwrap_or_else(Instant::now),
                    Some(every) => {
                        let n = ticket.fetch_add(1, Ordering::Relaxed);
                        let due = start + every.mul_f64(n as f64);
                        // tokio's timer counts whole milliseconds and rounds up: sleeping
                        // until `due` itself would start most calls up to a millisecond
                        // late and charge that to the system under test. Wake up to a
                        // millisecond early instead; a call that starts before its slot is
                        // timed from when it starts (below).
                        if let Some(early) = due.checked_sub(TIMER_GRANULARITY) {
                            tokio::time::sleep_until(early).await;
                        }
                        due
                    }
                };
                // A call due after the end, or one that could not even start before it, is
                // not made: the run ends on time however far behind the system fell.
                if due >= end || (interval.is_some() && Instant::now() >= end) {
                    break;
                }
                // Timed from the slot, or from the start when that came first (closed loop:
                // the slot is the start).
                let from = match interval {
                    None => due,
                    Some(_) => due.min(Instant::now()),
                };
                let outcome = call().await;
                let done = Instant::now();
                last_done = Some(done);
                let measured = due >= measure_from;
                match outcome {
                    Ok(()) => {
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                        if measured {
                            tally.ok += 1;
                            let ns = done.duration_since(from).as_nanos().max(1) as u64;
                            tally.record(ns);
                        }
                    }
                    Err(kind) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        if measured {
                            *tally.errors.entry(kind).or_default() += 1;
                        }
                    }
                }
            }
            tally.flush();
            tally
        }));
    }

    let mut report = LoadReport {
        ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency_ns: histogram(),
    };
    for worker in workers {
        match worker.await {
            Ok(tally) => {
                report.ok += tally.ok;
                for (kind, n) in tally.errors {
                    *report.errors.entry(kind).or_default() += n;
                }
            }
            Err(err) => {
                *report
                    .errors
                    .entry(format!("worker panicked: {err}"))
                    .or_default() += 1;
            }
        }
    }
    // Every worker has flushed its batch (a panicked one loses its last one, counted above).
    report.latency_ns = std::mem::replace(
        &mut *shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        histogram(),
    );
    // The measured interval ends at `end`, or later if the last calls ran over.
    report.elapsed = Instant::now().max(end).duration_since(measure_from);
    report
}

/// A text histogram of latencies: one line per bucket between p0 and p99.9, log-spaced.
pub fn render_histogram(report: &LoadReport, width: usize) -> String {
    let h = &report.latency_ns;
    if h.is_empty() {
        return String::from("(no successful calls)\n");
    }
    let lo = h.min().max(1) as f64;
    let hi = (h.value_at_quantile(0.999).max(h.min() + 1)) as f64;
    let buckets = 12;
    let ratio = (hi / lo).powf(1.0 / buckets as f64);
    let mut edges = Vec::with_capacity(buckets + 1);
    let mut edge = lo;
    for _ in 0..=buckets {
        edges.push(edge as u64);
        edge *= ratio;
    }
    let counts: Vec<u64> = edges
        .windows(2)
        .map(|w| h.count_between(w[0], w[1].saturating_sub(1).max(w[0])))
        .collect();
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut out = String::new();
    for (w, count) in edges.windows(2).zip(counts) {
        let bar = (count as f64 / max as f64 * width as f64).round() as usize;
        out.push_str(&format!(
            "{:>9.1} us .. {:>9.1} us | {:<width$} {count}\n",
            w[0] as f64 / 1_000.0,
            w[1] as f64 / 1_000.0,
            "#".repeat(bar),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closed_loop_counts_calls_and_errors() {
        let config = LoadConfig {
            concurrency: 4,
            duration: Duration::from_secs(1),
            rate: None,
            warmup: Duration::ZERO,
        };
        let n = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&n);
        let report = run(&config, Arc::default(), move || {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if i % 10 == 0 {
                    Err("boom".to_string())
                } else {
                    Ok(())
                }
            }
        })
        .await;
        // 4 workers x 100 calls of 10 ms in 1 s of virtual time; one in ten fails.
        let total = report.ok + report.error_count();
        assert_eq!(total, 400, "{report:?}");
        assert_eq!(report.errors.get("boom"), Some(&40));
        assert!((report.percentile_us(50.0) - 10_000.0).abs() < 100.0);
        assert!((report.requests_per_second() - 360.0).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_charges_stalls_to_the_calls_they_delay() {
        // 100 calls/s with one worker, and every call takes 20 ms: the worker falls behind
        // and later calls wait for it, so latency measured from the due time grows well
        // past the 20 ms service time (coordinated omission corrected).
        let config = LoadConfig {
            concurrency: 1,
            duration: Duration::from_secs(1),
            rate: Some(100.0),
            warmup: Duration::ZERO,
        };
        let report = run(&config, Arc::default(), || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
        .await;
        assert!(report.ok >= 49 && report.ok <= 51, "{}", report.ok);
        assert!(
            report.percentile_us(99.0) > 400_000.0,
            "{}",
            report.percentile_us(99.0)
        );
        assert!(report.percentile_us(0.0) < 21_000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_does_not_charge_the_timers_granularity() {
        // 700 calls/s (slots between whole milliseconds) of 100 us each: nothing queues,
        // so every latency is the service time, not up to a millisecond more from waking
        // late.
        let config = LoadConfig {
            concurrency: 4,
            duration: Duration::from_secs(1),
            rate: Some(700.0),
            warmup: Duration::ZERO,
        };
        let report = run(&config, Arc::default(), || async {
            tokio::time::sleep(Duration::from_micros(100)).await;
            Ok(())
        })
        .await;
        assert!((690..=710).contains(&report.ok), "{}", report.ok);
        // The paused clock moves in whole milliseconds, so a 100 us sleep takes 1 ms.
        assert!(
            report.percentile_us(99.0) <= 1_100.0,
            "{}",
            report.percentile_us(99.0)
        );
    }

    #[test]
    fn json_names_the_throughput_key() {
        let report = LoadReport {
            ok: 10,
            errors: BTreeMap::new(),
            elapsed: Duration::from_secs(2),
            latency_ns: histogram(),
        };
        let json = report.to_json();
        assert_eq!(json["requests_per_second"], 5.0);
    }
}
