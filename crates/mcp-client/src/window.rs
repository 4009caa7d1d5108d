//! A sliding window of counters in time buckets, shared by the retry budget and the breaker.
//!
//! Time is passed in (`now`), never read here, so the policies that use the window are
//! deterministic and their tests run in virtual time. The window is split into `buckets`
//! equal slots; a slot older than the window is cleared lazily when time moves past it, so
//! a window costs a fixed amount of memory however many calls it counts.

use std::time::Duration;

use tokio::time::Instant;

/// `now + span`, or a point so far away that it never comes when the sum overflows (a
/// timeout of `Duration::MAX` means "no timeout", not a panic).
pub(crate) fn later(now: Instant, span: Duration) -> Instant {
    now.checked_add(span)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Two counters per bucket: what they count is up to the user (requests and retries for the
/// budget, calls and failures for the breaker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) a: u64,
    pub(crate) b: u64,
}

#[derive(Debug)]
pub(crate) struct Window {
    origin: Instant,
    slot: Duration,
    /// `(epoch, counts)`: the bucket's counts belong to slot number `epoch` since `origin`.
    buckets: Box<[(u64, Counts)]>,
    /// The slot `add` last counted in: its epoch and the instants it spans. Most adds fall
    /// in the same slot as the one before, and two comparisons are cheaper than the
    /// subtraction and division that find an epoch.
    last: (u64, Instant, Instant),
}

impl Window {
    /// A window of `span` split into `buckets` slots (at least one; a zero span counts as one
    /// millisecond so that the arithmetic below never divides by zero).
    pub(crate) fn new(span: Duration, buckets: usize, now: Instant) -> Self {
        let buckets = buckets.max(1);
        let span = span.max(Duration::from_millis(1));
        let slot =
            (span / u32::try_from(buckets).unwrap_or(u32::MAX)).max(Duration::from_micros(1));
        Self {
            origin: now,
            slot,
            buckets: vec![(0, Counts::default()); buckets].into_boxed_slice(),
            // An empty span: the first add finds its epoch the long way.
            last: (0, now, now),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        // In u64 nanoseconds (584 years) when they fit: a u128 division is a library call,
        // and this runs on every call (breaker, retry budget).
        match (
            u64::try_from(since.as_nanos()),
            u64::try_from(self.slot.as_nanos()),
        ) {
            (Ok(since), Ok(slot)) => since / slot,
            _ => u64::try_from(since.as_nanos() / self.slot.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Adds to the counters of the current slot.
    pub(crate) fn add(&mut self, now: Instant, a: u64, b: u64) {
        let (last, from, until) = self.last;
        let epoch = if from <= now && now < until {
            last
        } else {
            let epoch = self.epoch(now);
            // The slot's span, for the adds that follow; when it cannot be computed (a
            // window running for ages), every add takes the long way.
            let from = u32::try_from(epoch)
                .ok()
                .and_then(|e| self.slot.checked_mul(e))
                .and_then(|d| self.origin.checked_add(d));
            if let Some(from) = from {
                self.last = (epoch, from, from.checked_add(self.slot).unwrap_or(from));
            }
            epoch
        };
        let len = self.buckets.len() as u64;
        let index = usize::try_from(epoch % len).unwrap_or(0);
        let bucket = &mut self.buckets[index];
        if bucket.0 != epoch {
            *bucket = (epoch, Counts::default());
        }
        bucket.1.a = bucket.1.a.saturating_add(a);
        bucket.1.b = bucket.1.b.saturating_add(b);
    }

    /// The sums over the slots still inside the window at `now`.
    pub(crate) fn sum(&self, now: Instant) -> Counts {
        let epoch = self.epoch(now);
        let len = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|(e, _)| *e <= epoch && epoch - *e < len)
            .fold(Counts::default(), |acc, (_, c)| Counts {
                a: acc.a.saturating_add(c.a),
                b: acc.b.saturating_add(c.b),
            })
    }

    /// Forgets everything counted so far.
    pub(crate) fn clear(&mut self) {
        for bucket in self.buckets.iter_mut() {
            bucket.1 = Counts::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_slots_fall_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), 10, t0);
        w.add(t0, 5, 1);
        w.add(t0 + Duration::from_secs(3), 2, 2);
        assert_eq!(w.sum(t0 + Duration::from_secs(3)), Counts { a: 7, b: 3 });
        // Slot 0 leaves the window once ten slots have passed.
        assert_eq!(w.sum(t0 + Duration::from_secs(10)), Counts { a: 2, b: 2 });
        assert_eq!(w.sum(t0 + Duration::from_secs(13)), Counts { a: 0, b: 0 });
        // A slot reused after wrapping starts from zero.
        w.add(t0 + Duration::from_secs(20), 1, 0);
        assert_eq!(w.sum(t0 + Duration::from_secs(20)), Counts { a: 1, b: 0 });
    }

    #[test]
    fn clear_forgets() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(1), 4, t0);
        w.add(t0, 3, 3);
        w.clear();
        assert_eq!(w.sum(t0), Counts::default());
    }

    #[test]
    fn remembering_the_last_slot_counts_as_finding_it_each_time() {
        // Times that go forward in small and large steps and, as with callers whose clock
        // reads race for the lock, a little backwards: the shortcut must put every add in
        // the bucket the long way would.
        let t0 = Instant::now();
        let mut fast = Window::new(Duration::from_millis(100), 10, t0);
        let mut slow = Window::new(Duration::from_millis(100), 10, t0);
        let mut at = Duration::ZERO;
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let step = Duration::from_micros(seed % 3_000);
            at = if seed % 7 == 0 {
                at.saturating_sub(step / 2)
            } else {
                at + step
            };
            let now = t0 + at;
            fast.add(now, 1, i % 3);
            slow.last = (0, t0, t0);
            slow.add(now, 1, i % 3);
            assert_eq!(fast.sum(now), slow.sum(now), "after {i} adds, at {at:?}");
        }
    }
}
