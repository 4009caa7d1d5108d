//! The balancer core: the endpoint map and every decision about it (which endpoint an attempt
//! goes to, what an outcome means for the endpoint, ejections and probes, membership), with
//! the time passed in and no I/O. `E` is what the shell keeps per endpoint (its pool); the
//! core only hands it back.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::hash::{mix, stable_hash};
use super::{BalanceConfig, Change, EndpointSnapshot, EndpointState, Instance, MAX_WEIGHT, Picker};

/// An endpoint's identity in the core: never reused, so a late outcome for an endpoint that
/// was removed (or removed and added again) is recognised and dropped.
pub(crate) type EndpointId = u64;

/// The most endpoints a fleet holds; a discovery source sending more is cut off here, so
/// what a source can make the client hold is bounded.
pub(crate) const MAX_ENDPOINTS: usize = 4096;

/// Ring points per unit of weight (after dividing the weights by their common divisor).
const RING_POINTS: u32 = 64;

/// The load of an endpoint with calls out and no latency yet (Finagle's penalty): larger
/// than any real load, so a new endpoint takes one call at a time until it has answered.
const PENALTY: f64 = 1e18;

/// What an attempt's result says about the endpoint it went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It answered (an application error is an answer).
    Success,
    /// It failed in a way that counts against it: a lost or refused connection, a timeout, an
    /// ERROR 6 or 9.
    Failure,
    /// Nothing to say about it (the caller gave up, the client's own limits).
    Neutral,
}

/// An endpoint's connects, as its pool reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Connectivity {
    /// Connected, connecting for the first time, or idle: it may take calls.
    Up,
    /// A connect try failed; the pool waits out a backoff before the next.
    Backoff,
    /// The pool's tries are used up; the next call starts a new series, so the endpoint may
    /// take calls (which fail fast until it is back, and eject it).
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ejection {
    None,
    Ejected {
        until: Instant,
    },
    /// The ejection ended; the next call to it is a probe.
    Probe,
    ProbeInFlight,
}

/// Peak-EWMA latency (Finagle's `PeakEwma`, linkerd's `PeakEwma`): a slower observation
/// replaces the estimate at once, a faster one is blended in with a weight that grows with
/// the time since the last; read between observations, it decays towards zero, so an
/// endpoint that was slow and left alone is tried again.
#[derive(Clone, Copy, Debug)]
struct PeakEwma {
    /// Nanoseconds; meaningful once `known`.
    cost: f64,
    stamp: Instant,
    known: bool,
}

/// `e^(-elapsed / decay)`, the weight the past keeps. Calls come microseconds apart against
/// a decay of seconds, so the exponent is nearly always tiny: there a second-order series
/// (error under 2e-7) stands in for `exp`, which costs more than the rest of a pick.
pub(crate) fn kept(elapsed: f64, decay: Duration) -> f64 {
    let x = elapsed / decay.as_secs_f64();
    if x < 0.01 {
        1.0 - x + 0.5 * x * x
    } else {
        (-x).exp()
    }
}

impl PeakEwma {
    fn decayed(&self, now: Instant, decay: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.cost * kept(elapsed, decay)
    }

    fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let rtt = rtt.as_secs_f64() * 1e9;
        if !self.known || rtt > self.cost {
            // The peak: no blend, so no exponential to compute.
            self.cost = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = kept(elapsed, decay);
            self.cost = self.cost * w + rtt * (1.0 - w);
        }
        self.known = true;
        self.stamp = now;
    }
}

#[derive(Debug)]
struct Endpoint<E> {
    id: EndpointId,
    instance: Instance,
    payload: E,
    outstanding: u32,
    ewma: PeakEwma,
    connectivity: Connectivity,
    draining: bool,
    ejection: Ejection,
    /// Ejections in a row: the next lasts this many `base_time`s (plus one).
    ejected_in_row: u32,
    /// When its last ejection ended; a long healthy stretch after it resets the row.
    back_since: Option<Instant>,
    consecutive_failures: u32,
    window_start: Instant,
    window_ok: u32,
    window_failed: u32,
    attempts: u64,
    failures: u64,
    ejections: u64,
    /// Its place in the ready list, while it is in it.
    ready_pos: Option<usize>,
}

impl<E> Endpoint<E> {
    fn eligible(&self) -> bool {
        self.connectivity != Connectivity::Backoff
            && !self.draining
            && matches!(self.ejection, Ejection::None | Ejection::Probe)
    }

    fn load(&self, now: Instant, decay: Duration) -> f64 {
        let outstanding = f64::from(self.outstanding);
        let load = if self.ewma.known {
            self.ewma.decayed(now, decay) * (outstanding + 1.0)
        } else if self.outstanding == 0 {
            0.0
        } else {
            PENALTY + outstanding
        };
        load / f64::from(self.instance.weight())
    }

    fn state(&self) -> EndpointState {
        if self.draining {
            EndpointState::Draining
        } else {
            match self.ejection {
                Ejection::Ejected { .. } => EndpointState::Ejected,
                Ejection::Probe | Ejection::ProbeInFlight => EndpointState::Probing,
                Ejection::None if self.connectivity == Connectivity::Backoff => {
                    EndpointState::Backoff
                }
                Ejection::None => EndpointState::Ready,
            }
        }
    }
}

/// An attempt's endpoint, as [`Balancer::pick`] hands it out.
#[derive(Debug)]
pub(crate) struct Picked<E> {
    pub(crate) id: EndpointId,
    /// Where the endpoint was when picked: `finish` looks there first, which saves a hash
    /// lookup per call (it moves only when another endpoint is dropped).
    pub(crate) hint: usize,
    pub(crate) payload: E,
}

/// What a membership change did: endpoints the shell must start watching, and the payloads
/// of endpoints that are gone (drained), for the shell to close.
#[derive(Debug)]
pub(crate) struct Applied<E> {
    pub(crate) added: Vec<(EndpointId, E)>,
    pub(crate) closed: Vec<E>,
    /// Instances refused (bad weight, empty address, too many endpoints), with why.
    pub(crate) refused: Vec<String>,
}

impl<E> Default for Applied<E> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            closed: Vec::new(),
            refused: Vec::new(),
        }
    }
}

/// The endpoint map and the decisions about it. One per fleet, behind the shell's lock.
#[derive(Debug)]
pub(crate) struct Balancer<E> {
    config: BalanceConfig,
    endpoints: Vec<Endpoint<E>>,
    by_id: HashMap<EndpointId, usize>,
    by_addr: HashMap<String, EndpointId>,
    /// Indices of the eligible endpoints: p2c draws from here in O(1).
    ready: Vec<usize>,
    /// Endpoints not draining (the base of the ejection cap).
    members: usize,
    ejected: usize,
    next_expiry: Option<Instant>,
    next_id: EndpointId,
    rng: u64,
    /// Round-robin's schedule (ids, interleaved by weight) and cursor; rebuilt when
    /// membership or weights change.
    schedule: Vec<EndpointId>,
    cursor: usize,
    /// The consistent-hash ring (point, id), sorted; rebuilt lazily at the first keyed pick
    /// after a change.
    ring: Vec<(u64, EndpointId)>,
    dirty: bool,
}

impl<E: Clone> Balancer<E> {
    /// An empty map. `seed` drives the random draws (fixed in tests).
    pub(crate) fn new(config: BalanceConfig, seed: u64) -> Self {
        Self {
            config,
            endpoints: Vec::new(),
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            ready: Vec::new(),
            members: 0,
            ejected: 0,
            next_expiry: None,
            next_id: 1,
            rng: mix(seed) | 1,
            schedule: Vec::new(),
            cursor: 0,
            ring: Vec::new(),
            dirty: true,
        }
    }

    /// Endpoints not draining.
    pub(crate) fn members(&self) -> usize {
        self.members
    }

    /// Applies a membership change; `make` builds the payload of a new endpoint.
    pub(crate) fn apply(
        &mut self,
        change: Change,
        now: Instant,
        mut make: impl FnMut(&Instance) -> E,
    ) -> Applied<E> {
        let mut applied = Applied::default();
        match change {
            Change::Reset(set) => {
                let keep: std::collections::HashSet<&str> =
                    set.iter().map(Instance::addr).collect();
                let gone: Vec<String> = self
                    .endpoints
                    .iter()
                    .filter(|e| !e.draining && !keep.contains(e.instance.addr()))
                    .map(|e| e.instance.addr().to_owned())
                    .collect();
                for addr in gone {
                    self.remove(&addr, &mut applied);
                }
                for instance in set {
                    self.insert(instance, now, &mut make, &mut applied);
                }
            }
            Change::Insert(instance) => self.insert(instance, now, &mut make, &mut applied),
            Change::Remove(addr) => self.remove(&addr, &mut applied),
        }
        applied
    }

    fn insert(
        &mut self,
        instance: Instance,
        now: Instant,
        make: &mut impl FnMut(&Instance) -> E,
        applied: &mut Applied<E>,
    ) {
        if let Err(why) = instance.check() {
            applied.refused.push(why);
            return;
        }
        if let Some(&id) = self.by_addr.get(instance.addr()) {
            let idx = self.by_id[&id];
            let e = &mut self.endpoints[idx];
            if e.instance.weight() != instance.weight() {
                self.dirty = true;
            }
            e.instance = instance;
            if e.draining {
                // Added back before it drained: it takes calls again, connections and all.
                e.draining = false;
                self.members += 1;
                self.dirty = true;
            }
            self.sync(idx);
            return;
        }
        if self.endpoints.len() >= MAX_ENDPOINTS {
            applied.refused.push(format!(
                "instance {}: the fleet already has {MAX_ENDPOINTS} endpoints",
                instance.addr()
            ));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let payload = make(&instance);
        applied.added.push((id, payload.clone()));
        self.by_addr.insert(instance.addr().to_owned(), id);
        self.by_id.insert(id, self.endpoints.len());
        self.endpoints.push(Endpoint {
            id,
            instance,
            payload,
            outstanding: 0,
            ewma: PeakEwma {
                cost: 0.0,
                stamp: now,
                known: false,
            },
            connectivity: Connectivity::Up,
            draining: false,
            ejection: Ejection::None,
            ejected_in_row: 0,
            back_since: None,
            consecutive_failures: 0,
            window_start: now,
            window_ok: 0,
            window_failed: 0,
            attempts: 0,
            failures: 0,
            ejections: 0,
            ready_pos: None,
        });
        self.members += 1;
        self.dirty = true;
        self.sync(self.endpoints.len() - 1);
    }

    fn remove(&mut self, addr: &str, applied: &mut Applied<E>) {
        let Some(&id) = self.by_addr.get(addr) else {
            return;
        };
        let idx = self.by_id[&id];
        let e = &mut self.endpoints[idx];
        if e.draining {
            return;
        }
        e.draining = true;
        if let Ejection::Ejected { .. } = e.ejection {
            self.ejected -= 1;
        }
        e.ejection = Ejection::None;
        self.members -= 1;
        self.dirty = true;
        self.sync(idx);
        if let Some(payload) = self.reap(idx) {
            applied.closed.push(payload);
        }
    }

    /// Drops a draining endpoint with nothing in flight, returning its payload.
    #[inline]
    fn reap(&mut self, idx: usize) -> Option<E> {
        let e = &self.endpoints[idx];
        if !e.draining || e.outstanding > 0 {
            return None;
        }
        debug_assert!(e.ready_pos.is_none());
        let e = self.endpoints.swap_remove(idx);
        self.by_id.remove(&e.id);
        self.by_addr.remove(e.instance.addr());
        if idx < self.endpoints.len() {
            // The last endpoint moved into `idx`: its index changed everywhere it is held.
            let moved = &self.endpoints[idx];
            self.by_id.insert(moved.id, idx);
            if let Some(pos) = moved.ready_pos {
                self.ready[pos] = idx;
            }
        }
        Some(e.payload)
    }

    /// Puts the endpoint in the ready list or takes it out, as its state says.
    fn sync(&mut self, idx: usize) {
        let eligible = self.endpoints[idx].eligible();
        match (eligible, self.endpoints[idx].ready_pos) {
            (true, None) => {
                self.endpoints[idx].ready_pos = Some(self.ready.len());
                self.ready.push(idx);
            }
            (false, Some(pos)) => {
                self.ready.swap_remove(pos);
                if let Some(&moved) = self.ready.get(pos) {
                    self.endpoints[moved].ready_pos = Some(pos);
                }
                self.endpoints[idx].ready_pos = None;
            }
            _ => {}
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: cheap, and good enough to draw two endpoints.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0), by multiply-shift rather than a division.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.random() >> 32) * n as u128) >> 32) as usize
    }

    /// Ends the ejections that are over (their endpoints wait for a probe).
    fn expire(&mut self, now: Instant) {
        match self.next_expiry {
            Some(at) if at <= now => {}
            _ => return,
        }
        self.next_expiry = None;
        for idx in 0..self.endpoints.len() {
            if let Ejection::Ejected { until } = self.endpoints[idx].ejection {
                if until <= now {
                    let e = &mut self.endpoints[idx];
                    e.ejection = Ejection::Probe;
                    e.back_since = Some(now);
                    // It comes back unmeasured, as a new endpoint would: the latency it
                    // showed while failing (a timeout's seconds, say) would otherwise make it
                    // lose every comparison for as long as that peak takes to decay, so its
                    // probe, and its return, would wait on the decay instead of happening.
                    e.ewma.known = false;
                    self.ejected -= 1;
                    self.sync(idx);
                } else {
                    self.next_expiry = Some(self.next_expiry.map_or(until, |at| at.min(until)));
                }
            }
        }
    }

    /// Picks the endpoint for an attempt and counts it as outstanding there: by `key` on the
    /// ring if there is one, else by the picker; never one in `tried` while an untried one
    /// is eligible; over every member when none is eligible (panic mode). `None` only when
    /// the fleet has no members.
    pub(crate) fn pick(
        &mut self,
        key: Option<u64>,
        tried: &[EndpointId],
        now: Instant,
    ) -> Option<Picked<E>> {
        self.expire(now);
        if self.members == 0 {
            return None;
        }
        let idx = match key {
            Some(key) => self.pick_ring(key, tried),
            None => match self.config.picker {
                Picker::PeakEwma => self.pick_p2c(tried, now),
                Picker::RoundRobin => self.pick_round_robin(tried),
            },
        };
        let idx = match idx {
            Some(idx) => idx,
            None => self.pick_panic(tried, now)?,
        };
        let e = &mut self.endpoints[idx];
        e.outstanding += 1;
        e.attempts += 1;
        if e.ejection == Ejection::Probe {
            e.ejection = Ejection::ProbeInFlight;
            self.sync(idx);
        }
        let e = &self.endpoints[idx];
        Some(Picked {
            id: e.id,
            hint: idx,
            payload: e.payload.clone(),
        })
    }

    fn better(&self, a: usize, b: usize, now: Instant) -> usize {
        let decay = self.config.decay;
        if self.endpoints[b].load(now, decay) < self.endpoints[a].load(now, decay) {
            b
        } else {
            a
        }
    }

    /// Power of two choices over the ready list: O(1) on a first attempt. A retry (with
    /// endpoints tried) draws from the untried ready endpoints, found by a scan.
    fn pick_p2c(&mut self, tried: &[EndpointId], now: Instant) -> Option<usize> {
        if tried.is_empty() {
            return match self.ready.len() {
                0 => None,
                1 => Some(self.ready[0]),
                n => {
                    let i = self.below(n);
                    let mut j = self.below(n - 1);
                    if j >= i {
                        j += 1;
                    }
                    Some(self.better(self.ready[i], self.ready[j], now))
                }
            };
        }
        let untried: Vec<usize> = self
            .ready
            .iter()
            .copied()
            .filter(|&idx| !tried.contains(&self.endpoints[idx].id))
            .collect();
        let pool = if untried.is_empty() {
            &self.ready
        } else {
            &untried
        };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => {
                let pool = pool.clone();
                let i = self.below(n);
                let mut j = self.below(n - 1);
                if j >= i {
                    j += 1;
                }
                Some(self.better(pool[i], pool[j], now))
            }
        }
    }

    fn rebuild(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let members: Vec<(EndpointId, &Instance)> = self
            .endpoints
            .iter()
            .filter(|e| !e.draining)
            .map(|e| (e.id, &e.instance))
            .collect();
        let divisor = members.iter().map(|(_, i)| i.weight()).fold(0, gcd).max(1);
        // Round robin: each endpoint's turns placed at (k + 1/2) / weight on [0, 1), then
        // sorted, so that a heavy endpoint's turns are spread out rather than bunched.
        let mut turns: Vec<(f64, EndpointId)> = Vec::new();
        for (id, instance) in &members {
            let w = instance.weight() / divisor;
            for k in 0..w {
                turns.push(((f64::from(k) + 0.5) / f64::from(w), *id));
            }
        }
        turns.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.schedule = turns.into_iter().map(|(_, id)| id).collect();
        // The ring: points from the address (not the id), so that every client of the
        // fleet places an endpoint alike and a key goes to the same endpoint from all.
        let mut ring = Vec::new();
        for (id, instance) in &members {
            let points = RING_POINTS * (instance.weight() / divisor);
            for n in 0..points {
                ring.push((stable_hash(&(instance.addr(), n)), *id));
            }
        }
        ring.sort_unstable();
        self.ring = ring;
    }

    fn usable(&self, id: EndpointId, tried: &[EndpointId]) -> Option<usize> {
        let idx = *self.by_id.get(&id)?;
        (self.endpoints[idx].eligible() && !tried.contains(&id)).then_some(idx)
    }

    /// The next eligible endpoint in the schedule, untried if one is left.
    fn pick_round_robin(&mut self, tried: &[EndpointId]) -> Option<usize> {
        self.rebuild();
        let len = self.schedule.len();
        for avoid in [tried, &[]] {
            for _ in 0..len {
                let id = self.schedule[self.cursor % len];
                self.cursor = (self.cursor + 1) % len;
                if let Some(idx) = self.usable(id, avoid) {
                    return Some(idx);
                }
            }
            if tried.is_empty() {
                break;
            }
        }
        None
    }

    /// The first eligible endpoint clockwise from the key's place on the ring, untried if
    /// one is left.
    fn pick_ring(&mut self, key: u64, tried: &[EndpointId]) -> Option<usize> {
        self.rebuild();
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let key = mix(key);
        let start = self.ring.partition_point(|&(point, _)| point < key);
        for avoid in [tried, &[]] {
            for step in 0..len {
                let (_, id) = self.ring[(start + step) % len];
                if let Some(idx) = self.usable(id, avoid) {
                    return Some(idx);
                }
            }
            if tried.is_empty() {
                break;
            }
        }
        None
    }

    /// Panic mode: nothing is eligible, so spread over every member (backoff and ejection
    /// set aside) rather than refuse: better a call that may fail than one that surely does.
    fn pick_panic(&mut self, tried: &[EndpointId], now: Instant) -> Option<usize> {
        let members: Vec<usize> = (0..self.endpoints.len())
            .filter(|&idx| !self.endpoints[idx].draining)
            .collect();
        let untried: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&idx| !tried.contains(&self.endpoints[idx].id))
            .collect();
        let pool = if untried.is_empty() { members } else { untried };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => {
                let i = self.below(n);
                let mut j = self.below(n - 1);
                if j >= i {
                    j += 1;
                }
                Some(self.better(pool[i], pool[j], now))
            }
        }
    }

    /// Records an attempt's end at endpoint `id`: its outcome, and its latency if it was
    /// answered or timed out. Returns the payload of an endpoint that was draining and is
    /// now done, for the shell to close.
    pub(crate) fn finish(
        &mut self,
        id: EndpointId,
        hint: usize,
        outcome: Outcome,
        latency: Option<Duration>,
        now: Instant,
    ) -> Option<E> {
        let idx = match self.endpoints.get(hint) {
            Some(e) if e.id == id => hint,
            _ => *self.by_id.get(&id)?,
        };
        let decay = self.config.decay;
        let e = &mut self.endpoints[idx];
        e.outstanding = e.outstanding.saturating_sub(1);
        if let Some(latency) = latency {
            e.ewma.observe(latency, now, decay);
        }
        match outcome {
            Outcome::Success => self.succeeded(idx, now),
            Outcome::Failure => self.failed(idx, now),
            Outcome::Neutral => {
                let e = &mut self.endpoints[idx];
                if e.ejection == Ejection::ProbeInFlight {
                    // The probe told nothing: the next call probes instead.
                    e.ejection = Ejection::Probe;
                    self.sync(idx);
                }
            }
        }
        self.reap(idx)
    }

    fn succeeded(&mut self, idx: usize, now: Instant) {
        let e = &mut self.endpoints[idx];
        e.consecutive_failures = 0;
        e.window_ok += 1;
        if e.ejection == Ejection::ProbeInFlight {
            e.ejection = Ejection::None;
            self.sync(idx);
        }
        self.check_window(idx, now);
    }

    fn failed(&mut self, idx: usize, now: Instant) {
        let threshold = self.config.ejection.consecutive_failures;
        let e = &mut self.endpoints[idx];
        e.consecutive_failures += 1;
        e.failures += 1;
        e.window_failed += 1;
        if e.ejection == Ejection::ProbeInFlight {
            // The probe failed: out again, for longer. If the cap forbids it, the endpoint
            // is simply back and earns its next ejection the usual way.
            e.ejection = Ejection::None;
            if !self.eject(idx, now) {
                self.sync(idx);
            }
            return;
        }
        if threshold > 0 && e.consecutive_failures >= threshold && e.ejection == Ejection::None {
            self.eject(idx, now);
            return;
        }
        self.check_window(idx, now);
    }

    /// At the end of a success-rate window, ejects the endpoint if its rate was too low.
    #[inline]
    fn check_window(&mut self, idx: usize, now: Instant) {
        let Some(rule) = self.config.ejection.success_rate else {
            return;
        };
        let e = &mut self.endpoints[idx];
        if now.saturating_duration_since(e.window_start) < rule.window {
            return;
        }
        let (ok, failed) = (e.window_ok, e.window_failed);
        e.window_start = now;
        e.window_ok = 0;
        e.window_failed = 0;
        let total = ok + failed;
        if total >= rule.min_calls.max(1)
            && f64::from(ok) < rule.min_rate * f64::from(total)
            && e.ejection == Ejection::None
        {
            self.eject(idx, now);
        }
    }

    /// Ejects the endpoint unless that would put more than `max_percent` of the members
    /// out; returns whether it did.
    fn eject(&mut self, idx: usize, now: Instant) -> bool {
        let cfg = &self.config.ejection;
        let cap = self.members * usize::from(cfg.max_percent) / 100;
        if self.ejected + 1 > cap {
            tracing::debug!(
                endpoint = self.endpoints[idx].instance.addr(),
                "not ejected: too many endpoints are out already"
            );
            return false;
        }
        let (base, max) = (cfg.base_time, cfg.max_time);
        let e = &mut self.endpoints[idx];
        if e.back_since
            .is_some_and(|back| now.saturating_duration_since(back) >= max)
        {
            // Healthy for a whole longest ejection since the last: start the row afresh.
            e.ejected_in_row = 0;
        }
        e.ejected_in_row = e.ejected_in_row.saturating_add(1);
        let length = base.saturating_mul(e.ejected_in_row).min(max);
        let until = now + length;
        e.ejection = Ejection::Ejected { until };
        e.ejections += 1;
        e.consecutive_failures = 0;
        tracing::info!(endpoint = e.instance.addr(), ?length, "endpoint ejected");
        crate::metrics::ejected(e.instance.addr());
        self.ejected += 1;
        self.next_expiry = Some(self.next_expiry.map_or(until, |at| at.min(until)));
        self.sync(idx);
        true
    }

    /// Records what the endpoint's pool says of its connects, with the tries that failed
    /// since its last report: each counts as a failure of the endpoint, so that one that
    /// cannot be reached is ejected too.
    pub(crate) fn connectivity(
        &mut self,
        id: EndpointId,
        state: Connectivity,
        failed_tries: u32,
        now: Instant,
    ) {
        let Some(&idx) = self.by_id.get(&id) else {
            return;
        };
        self.endpoints[idx].connectivity = state;
        for _ in 0..failed_tries {
            self.failed(idx, now);
        }
        self.sync(idx);
    }

    /// Every endpoint's figures, in address order.
    pub(crate) fn snapshot(&self, now: Instant) -> Vec<EndpointSnapshot> {
        let mut all: Vec<EndpointSnapshot> =
            self.endpoints
                .iter()
                .map(|e| EndpointSnapshot {
                    addr: e.instance.addr().to_owned(),
                    weight: e.instance.weight(),
                    tags: e.instance.tags().to_vec(),
                    server_name: e.instance.server_name().map(str::to_owned),
                    state: e.state(),
                    in_flight: e.outstanding,
                    ewma: e.ewma.known.then(|| {
                        Duration::from_secs_f64(e.ewma.decayed(now, self.config.decay) / 1e9)
                    }),
                    ejections: e.ejections,
                    attempts: e.attempts,
                    failures: e.failures,
                })
                .collect();
        all.sort_by(|a, b| a.addr.cmp(&b.addr));
        all
    }

    /// The id and payload of every member (draining endpoints left out): what a
    /// subscription on every endpoint follows.
    pub(crate) fn member_payloads(&self) -> Vec<(EndpointId, E)> {
        self.endpoints
            .iter()
            .filter(|e| !e.draining)
            .map(|e| (e.id, e.payload.clone()))
            .collect()
    }

    /// Every payload, draining ones included (to close them all).
    pub(crate) fn payloads(&self) -> Vec<E> {
        self.endpoints.iter().map(|e| e.payload.clone()).collect()
    }

    /// The id and payload of the endpoint at `addr`, if it is a member.
    #[cfg(test)]
    pub(crate) fn member(&self, addr: &str) -> Option<(EndpointId, E)> {
        let id = *self.by_addr.get(addr)?;
        let e = &self.endpoints[self.by_id[&id]];
        (!e.draining).then(|| (id, e.payload.clone()))
    }

    /// The members' ids and payloads.
    pub(crate) fn all_members(&self) -> Vec<(EndpointId, E)> {
        self.endpoints
            .iter()
            .filter(|e| !e.draining)
            .map(|e| (e.id, e.payload.clone()))
            .collect()
    }

    /// An estimate of the heap the core holds for its endpoints (the pools' own memory
    /// aside): the endpoint records, the maps, the ready list, the schedule and the ring,
    /// by their capacities.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let strings: usize = self
            .endpoints
            .iter()
            .map(|e| {
                2 * e.instance.addr().len()
                    + e.instance.tags().iter().map(String::len).sum::<usize>()
            })
            .sum();
        self.endpoints.capacity() * size_of::<Endpoint<E>>()
            + self.by_id.capacity() * (size_of::<(EndpointId, usize)>() + 1)
            + self.by_addr.capacity() * (size_of::<(String, EndpointId)>() + 1)
            + self.ready.capacity() * size_of::<usize>()
            + self.schedule.capacity() * size_of::<EndpointId>()
            + self.ring.capacity() * size_of::<(u64, EndpointId)>()
            + strings
    }

    /// Whether the endpoint `id` is a member and eligible.
    #[cfg(test)]
    pub(crate) fn is_eligible(&self, id: EndpointId) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|&idx| self.endpoints[idx].eligible())
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

// Weights are bounded by MAX_WEIGHT, so the schedule and the ring stay bounded.
const _: () = assert!(MAX_WEIGHT * RING_POINTS <= 1 << 16);
