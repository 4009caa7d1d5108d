//! The balancer core alone, in virtual time: the instants are made up, nothing sleeps.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{Balancer, Connectivity, EndpointId, Outcome};
use super::{BalanceConfig, Change, EjectionConfig, EndpointState, Instance, Picker};

const MS: Duration = Duration::from_millis(1);

/// A balancer whose payload is the endpoint's address.
fn fleet(config: BalanceConfig, instances: Vec<Instance>, now: Instant) -> Balancer<String> {
    let mut b = Balancer::new(config, 7);
    let applied = b.apply(Change::Reset(instances), now, |i| i.addr().to_owned());
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    b
}

fn addrs(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| Instance::new(format!("10.0.0.{i}:7000")))
        .collect()
}

fn id_of(b: &Balancer<String>, addr: &str) -> EndpointId {
    b.member(addr).expect("member").0
}

fn state_of(b: &Balancer<String>, addr: &str, now: Instant) -> EndpointState {
    b.snapshot(now)
        .into_iter()
        .find(|s| s.addr == addr)
        .expect("in snapshot")
        .state
}

/// Runs `n` calls one after another, each answered after `latency(addr)`; returns the
/// calls per address.
fn sequential(
    b: &mut Balancer<String>,
    n: usize,
    now: &mut Instant,
    latency: impl Fn(&str) -> Duration,
) -> HashMap<String, usize> {
    let mut served = HashMap::new();
    for _ in 0..n {
        let picked = b.pick(None, &[], *now).expect("a pick");
        let rtt = latency(&picked.payload);
        *now += rtt;
        b.finish_at(picked.id, Outcome::Success, Some(rtt), *now);
        *served.entry(picked.payload).or_default() += 1;
    }
    served
}

#[test]
fn p2c_peak_ewma_keeps_calls_off_a_slow_endpoint() {
    let mut now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(3), now);
    let slow = "10.0.0.0:7000";
    let served = sequential(
        &mut b,
        3000,
        &mut now,
        |a| {
            if a == slow { 10 * MS } else { MS }
        },
    );
    let share = served.get(slow).copied().unwrap_or(0) as f64 / 3000.0;
    assert!(share < 0.05, "the slow endpoint served {share}");
    assert!(served.len() == 3, "every endpoint was measured: {served:?}");
}

#[test]
fn round_robin_gives_each_its_turn_whatever_its_latency() {
    let mut now = Instant::now();
    let config = BalanceConfig {
        picker: Picker::RoundRobin,
        ..BalanceConfig::default()
    };
    let mut b = fleet(config, addrs(3), now);
    let served = sequential(&mut b, 3000, &mut now, |a| {
        if a == "10.0.0.0:7000" { 10 * MS } else { MS }
    });
    for count in served.values() {
        assert_eq!(*count, 1000, "{served:?}");
    }
}

#[test]
fn round_robin_honours_weights_interleaved() {
    let now = Instant::now();
    let config = BalanceConfig {
        picker: Picker::RoundRobin,
        ..BalanceConfig::default()
    };
    let instances = vec![
        Instance::new("a:1").with_weight(1),
        Instance::new("b:1").with_weight(3),
    ];
    let mut b = fleet(config, instances, now);
    let mut order = Vec::new();
    for _ in 0..8 {
        let p = b.pick(None, &[], now).unwrap();
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
        order.push(p.payload);
    }
    let a = order.iter().filter(|p| *p == "a:1").count();
    assert_eq!(a, 2, "{order:?}");
    // Interleaved: the light endpoint's two turns are not next to each other.
    let first = order.iter().position(|p| p == "a:1").unwrap();
    assert_ne!(order[(first + 1) % 8], "a:1", "{order:?}");
}

#[test]
fn p2c_weighs_outstanding_calls() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(2), now);
    // Both measured at 1 ms.
    for addr in ["10.0.0.0:7000", "10.0.0.1:7000"] {
        let id = id_of(&b, addr);
        loop {
            let p = b.pick(None, &[], now).unwrap();
            b.finish_at(p.id, Outcome::Success, Some(MS), now);
            if p.id == id {
                break;
            }
        }
    }
    // Calls left outstanding alternate: load = latency x (outstanding + 1).
    let mut held = HashMap::<String, usize>::new();
    for _ in 0..100 {
        let p = b.pick(None, &[], now).unwrap();
        *held.entry(p.payload).or_default() += 1;
    }
    assert_eq!(held.values().copied().collect::<Vec<_>>(), vec![50, 50]);
}

#[test]
fn a_new_endpoint_takes_one_call_at_a_time_until_it_answers() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(1), now);
    let p = b.pick(None, &[], now).unwrap();
    b.finish_at(p.id, Outcome::Success, Some(MS), now);
    b.apply(Change::Insert(Instance::new("new:1")), now, |i| {
        i.addr().to_owned()
    });
    let fresh = id_of(&b, "new:1");
    // Unmeasured and idle: load 0, so it takes the next call.
    let first = b.pick(None, &[], now).unwrap();
    assert_eq!(first.id, fresh);
    // Unmeasured with a call out: the penalty keeps further calls off it.
    for _ in 0..20 {
        let p = b.pick(None, &[], now).unwrap();
        assert_ne!(p.id, fresh, "a second call before the first answered");
    }
    b.finish_at(first.id, Outcome::Success, Some(MS), now);
    let taken = (0..20).any(|_| b.pick(None, &[], now).unwrap().id == fresh);
    assert!(taken, "measured, it takes calls like the others");
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let mut now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(1), now);
    let addr = "10.0.0.0:7000";
    let ewma = |b: &Balancer<String>, now| {
        b.snapshot(now)
            .into_iter()
            .find(|s| s.addr == addr)
            .unwrap()
            .ewma
            .unwrap()
    };
    for rtt in [MS, 100 * MS] {
        let p = b.pick(None, &[], now).unwrap();
        b.finish_at(p.id, Outcome::Success, Some(rtt), now);
    }
    assert_eq!(ewma(&b, now), 100 * MS, "a slower answer is taken at once");
    now += Duration::from_secs(10);
    let decayed = ewma(&b, now).as_secs_f64();
    assert!(
        (decayed - 0.1 / std::f64::consts::E).abs() < 1e-3,
        "{decayed}"
    );
    // A fast answer is blended in, not taken as is.
    let p = b.pick(None, &[], now).unwrap();
    b.finish_at(p.id, Outcome::Success, Some(MS), now);
    let now2 = now + MS;
    assert!(ewma(&b, now2) > 30 * MS);
}

#[test]
fn a_hash_key_sticks_to_its_endpoint_and_moves_only_with_it() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(5), now);
    let mut home = HashMap::new();
    for key in 0..500u64 {
        let p = b.pick(Some(key), &[], now).unwrap();
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
        let again = b.pick(Some(key), &[], now).unwrap();
        b.finish_at(again.id, Outcome::Success, Some(MS), now);
        assert_eq!(p.id, again.id);
        home.insert(key, p.payload);
    }
    let gone = "10.0.0.2:7000";
    b.apply(Change::Remove(gone.into()), now, |i| i.addr().to_owned());
    for key in 0..500u64 {
        let p = b.pick(Some(key), &[], now).unwrap();
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
        if home[&key] != gone {
            assert_eq!(
                p.payload, home[&key],
                "key {key} moved though its endpoint stayed"
            );
        } else {
            assert_ne!(p.payload, gone);
        }
    }
}

#[test]
fn hash_keys_spread_by_weight() {
    let now = Instant::now();
    let instances = vec![
        Instance::new("a:1").with_weight(1),
        Instance::new("b:1").with_weight(3),
    ];
    let mut b = fleet(BalanceConfig::default(), instances, now);
    let mut heavy = 0;
    for key in 0..4000u64 {
        let p = b.pick(Some(key), &[], now).unwrap();
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
        heavy += usize::from(p.payload == "b:1");
    }
    let share = heavy as f64 / 4000.0;
    assert!((0.65..0.85).contains(&share), "weight 3 of 4 got {share}");
}

#[test]
fn p2c_honours_weights() {
    let mut now = Instant::now();
    let instances = vec![
        Instance::new("a:1").with_weight(1),
        Instance::new("b:1").with_weight(4),
    ];
    let mut b = fleet(BalanceConfig::default(), instances, now);
    // Equal latency, calls held two at a time so that outstanding counts matter.
    let mut heavy = 0;
    let mut out = Vec::new();
    for _ in 0..2000 {
        let p = b.pick(None, &[], now).unwrap();
        heavy += usize::from(p.payload == "b:1");
        out.push(p.id);
        if out.len() == 4 {
            now += MS;
            for id in out.drain(..) {
                b.finish_at(id, Outcome::Success, Some(MS), now);
            }
        }
    }
    let share = heavy as f64 / 2000.0;
    assert!(share > 0.7, "weight 4 of 5 got {share}");
}

fn fail(b: &mut Balancer<String>, addr: &str, times: usize, now: Instant) {
    let id = id_of(b, addr);
    for _ in 0..times {
        b.finish_failed_at(id, now);
    }
}

impl Balancer<String> {
    /// `finish` without the place hint (the lookup by id is what the hint saves).
    fn finish_at(
        &mut self,
        id: EndpointId,
        outcome: Outcome,
        latency: Option<Duration>,
        now: Instant,
    ) -> Option<String> {
        self.finish(id, usize::MAX, outcome, latency, now)
    }

    /// Picks until `id` comes out, avoiding those that did instead (so that a test can aim
    /// outcomes at one endpoint); the others are given back as neutral.
    fn pick_at(&mut self, id: EndpointId, now: Instant) {
        let mut tried = Vec::new();
        loop {
            let p = self.pick(None, &tried, now).expect("a pick");
            if p.id == id {
                return;
            }
            self.finish_at(p.id, Outcome::Neutral, None, now);
            tried.push(p.id);
            assert!(tried.len() < 100, "endpoint {id} is never picked");
        }
    }

    /// An attempt to `id` that failed.
    fn finish_failed_at(&mut self, id: EndpointId, now: Instant) {
        self.pick_at(id, now);
        self.finish_at(id, Outcome::Failure, None, now);
    }
}

#[test]
fn five_failures_in_a_row_eject_then_one_probe_brings_it_back() {
    let mut now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(3), now);
    let bad = "10.0.0.0:7000";
    let bad_id = id_of(&b, bad);
    fail(&mut b, bad, 4, now);
    assert_eq!(
        state_of(&b, bad, now),
        EndpointState::Ready,
        "4 are not enough"
    );
    fail(&mut b, bad, 1, now);
    assert_eq!(state_of(&b, bad, now), EndpointState::Ejected);
    for _ in 0..100 {
        let p = b.pick(None, &[], now).unwrap();
        assert_ne!(p.id, bad_id, "an ejected endpoint took a call");
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    }
    now += Duration::from_secs(30);
    assert_eq!(
        state_of(&b, bad, now),
        EndpointState::Ejected,
        "snapshot is passive"
    );
    // The ejection is over: one call goes there as a probe, and only one.
    let probe = loop {
        let p = b.pick(None, &[], now).unwrap();
        if p.id == bad_id {
            break p;
        }
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    };
    for _ in 0..50 {
        let p = b.pick(None, &[], now).unwrap();
        assert_ne!(p.id, bad_id, "a second call during the probe");
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    }
    b.finish_at(probe.id, Outcome::Success, Some(MS), now);
    assert_eq!(state_of(&b, bad, now), EndpointState::Ready);
}

/// An endpoint ejected after slow failures (timeouts show seconds of latency) is probed as
/// soon as its ejection ends, not once that peak has decayed: it comes back unmeasured, and
/// takes calls again once its probe answered.
#[test]
fn an_endpoint_back_from_ejection_is_probed_whatever_latency_it_showed() {
    let mut now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(3), now);
    // The others are busy and fast: 4 calls outstanding each, answered in 2 ms.
    sequential(&mut b, 50, &mut now, |_| 2 * MS);
    let bad = "10.0.0.0:7000";
    let bad_id = id_of(&b, bad);
    for _ in 0..5 {
        b.pick_at(bad_id, now);
        b.finish_at(bad_id, Outcome::Failure, Some(Duration::from_secs(2)), now);
    }
    assert_eq!(state_of(&b, bad, now), EndpointState::Ejected);
    let busy: Vec<_> = (0..8).map(|_| b.pick(None, &[], now).unwrap()).collect();
    assert!(busy.iter().all(|p| p.id != bad_id));
    now += Duration::from_secs(30);
    // The ejection is over: its probe comes within a few picks, under the same load.
    let mut picks = 0;
    let probe = loop {
        let p = b.pick(None, &[], now).unwrap();
        picks += 1;
        if p.id == bad_id {
            break p;
        }
        assert!(
            picks < 20,
            "no probe in 20 picks: the old peak still holds it out"
        );
        b.finish_at(p.id, Outcome::Success, Some(2 * MS), now);
    };
    now += 2 * MS;
    b.finish_at(probe.id, Outcome::Success, Some(2 * MS), now);
    assert_eq!(state_of(&b, bad, now), EndpointState::Ready);
    let served = sequential(&mut b, 300, &mut now, |_| 2 * MS);
    assert!(served.get(bad).copied().unwrap_or(0) > 30, "{served:?}");
    for p in busy {
        b.finish_at(p.id, Outcome::Success, Some(2 * MS), now);
    }
}

#[test]
fn ejections_in_a_row_last_longer_up_to_the_cap() {
    let mut now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(2), now);
    let bad = "10.0.0.0:7000";
    let bad_id = id_of(&b, bad);
    fail(&mut b, bad, 5, now);
    let mut lengths = Vec::new();
    for _ in 0..12 {
        // Find when the ejection ends, to the second.
        let mut waited = 0;
        loop {
            now += Duration::from_secs(1);
            waited += 1;
            let p = b.pick(None, &[], now).unwrap();
            if p.id == bad_id {
                // The probe fails: ejected again.
                b.finish_at(p.id, Outcome::Failure, None, now);
                break;
            }
            b.finish_at(p.id, Outcome::Success, Some(MS), now);
            assert!(waited <= 400, "never probed");
        }
        lengths.push(waited);
    }
    assert_eq!(
        lengths,
        vec![30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    );
}

#[test]
fn never_more_than_half_ejected() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(4), now);
    for i in 0..4 {
        fail(&mut b, &format!("10.0.0.{i}:7000"), 5, now);
    }
    let ejected = b
        .snapshot(now)
        .iter()
        .filter(|s| s.state == EndpointState::Ejected)
        .count();
    assert_eq!(ejected, 2);
}

#[test]
fn panic_mode_spreads_over_all_when_none_is_ready() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(2), now);
    for (id, _) in b.all_members() {
        b.connectivity(id, Connectivity::Backoff, 1, now);
    }
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..200 {
        let p = b.pick(None, &[], now).expect("panic mode still picks");
        b.finish_at(p.id, Outcome::Neutral, None, now);
        *seen.entry(p.payload).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn backoff_takes_an_endpoint_out_without_removing_it() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(2), now);
    let (down, _) = b.member("10.0.0.0:7000").unwrap();
    b.connectivity(down, Connectivity::Backoff, 1, now);
    assert_eq!(state_of(&b, "10.0.0.0:7000", now), EndpointState::Backoff);
    for _ in 0..50 {
        let p = b.pick(None, &[], now).unwrap();
        assert_ne!(p.id, down);
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    }
    b.connectivity(down, Connectivity::Up, 0, now);
    let back = (0..50).any(|_| {
        let p = b.pick(None, &[], now).unwrap();
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
        p.id == down
    });
    assert!(back);
    assert_eq!(b.members(), 2);
}

#[test]
fn failed_connects_count_towards_ejection() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(3), now);
    let (id, _) = b.member("10.0.0.0:7000").unwrap();
    for _ in 0..5 {
        b.connectivity(id, Connectivity::Backoff, 1, now);
    }
    assert_eq!(state_of(&b, "10.0.0.0:7000", now), EndpointState::Ejected);
}

#[test]
fn a_retry_goes_to_an_endpoint_not_yet_tried() {
    let now = Instant::now();
    for picker in [Picker::PeakEwma, Picker::RoundRobin] {
        let config = BalanceConfig {
            picker,
            ..BalanceConfig::default()
        };
        let mut b = fleet(config, addrs(3), now);
        for _ in 0..50 {
            let first = b.pick(None, &[], now).unwrap();
            let second = b.pick(None, &[first.id], now).unwrap();
            let third = b.pick(None, &[first.id, second.id], now).unwrap();
            let fourth = b.pick(None, &[first.id, second.id, third.id], now).unwrap();
            assert_ne!(first.id, second.id);
            assert!(third.id != first.id && third.id != second.id);
            // All tried: any endpoint will do.
            let _ = fourth;
            for id in [first.id, second.id, third.id, fourth.id] {
                b.finish_at(id, Outcome::Success, Some(MS), now);
            }
        }
        // With a key too.
        let first = b.pick(Some(42), &[], now).unwrap();
        let second = b.pick(Some(42), &[first.id], now).unwrap();
        assert_ne!(first.id, second.id);
    }
}

#[test]
fn a_removed_endpoint_drains_then_closes() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(2), now);
    let (gone, _) = b.member("10.0.0.0:7000").unwrap();
    let out = loop {
        let p = b.pick(None, &[], now).unwrap();
        if p.id == gone {
            break p;
        }
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    };
    let applied = b.apply(Change::Remove("10.0.0.0:7000".into()), now, |i| {
        i.addr().to_owned()
    });
    assert!(applied.closed.is_empty(), "closed with a call in flight");
    assert_eq!(state_of(&b, "10.0.0.0:7000", now), EndpointState::Draining);
    for _ in 0..50 {
        let p = b.pick(None, &[], now).unwrap();
        assert_ne!(p.id, gone);
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    }
    let closed = b.finish_at(out.id, Outcome::Success, Some(MS), now);
    assert_eq!(closed.as_deref(), Some("10.0.0.0:7000"));
    assert_eq!(b.snapshot(now).len(), 1);
    // A late outcome for it is dropped.
    assert!(b.finish_at(out.id, Outcome::Success, None, now).is_none());
    // An idle endpoint closes at once.
    let applied = b.apply(Change::Reset(vec![]), now, |i| i.addr().to_owned());
    assert_eq!(applied.closed.len(), 1);
    assert!(b.pick(None, &[], now).is_none(), "no members, no pick");
}

#[test]
fn reset_adds_updates_and_removes() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(2), now);
    let applied = b.apply(
        Change::Reset(vec![
            Instance::new("10.0.0.1:7000").with_weight(5),
            Instance::new("10.0.0.9:7000"),
        ]),
        now,
        |i| i.addr().to_owned(),
    );
    assert_eq!(applied.added.len(), 1);
    assert_eq!(applied.closed, vec!["10.0.0.0:7000".to_owned()]);
    let snap = b.snapshot(now);
    let weights: Vec<(String, u32)> = snap.iter().map(|s| (s.addr.clone(), s.weight)).collect();
    assert_eq!(
        weights,
        vec![("10.0.0.1:7000".into(), 5), ("10.0.0.9:7000".into(), 1)]
    );
}

#[test]
fn bad_instances_are_refused_with_a_reason() {
    let now = Instant::now();
    let mut b: Balancer<String> = Balancer::new(BalanceConfig::default(), 1);
    let applied = b.apply(
        Change::Reset(vec![
            Instance::new("ok:1"),
            Instance::new("zero:1").with_weight(0),
            Instance::new("heavy:1").with_weight(101),
            Instance::new(""),
        ]),
        now,
        |i| i.addr().to_owned(),
    );
    assert_eq!(applied.added.len(), 1);
    assert_eq!(applied.refused.len(), 3, "{:?}", applied.refused);
    assert!(applied.refused[0].contains("weight 0"));
}

#[test]
fn a_low_success_rate_ejects() {
    let mut now = Instant::now();
    let config = BalanceConfig {
        ejection: EjectionConfig {
            consecutive_failures: 0,
            success_rate: Some(super::SuccessRateConfig {
                min_rate: 0.8,
                min_calls: 10,
                window: Duration::from_secs(10),
            }),
            ..EjectionConfig::default()
        },
        ..BalanceConfig::default()
    };
    let mut b = fleet(config, addrs(2), now);
    let bad = id_of(&b, "10.0.0.0:7000");
    // Alternate success and failure on the bad one: 50% over the window.
    for i in 0..20 {
        if i % 2 == 0 {
            b.finish_failed_at(bad, now);
        } else {
            b.pick_at(bad, now);
            b.finish_at(bad, Outcome::Success, Some(MS), now);
        }
        now += Duration::from_millis(100);
    }
    assert_eq!(state_of(&b, "10.0.0.0:7000", now), EndpointState::Ready);
    now += Duration::from_secs(10);
    b.finish_failed_at(bad, now);
    assert_eq!(state_of(&b, "10.0.0.0:7000", now), EndpointState::Ejected);
}

#[test]
fn a_pick_costs_the_same_with_100_endpoints() {
    // O(1): the first attempt's p2c reads two endpoints whatever the fleet's size; what
    // this can check without a clock is that the draw touches only the ready list, which
    // membership changes keep exact.
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(100), now);
    for i in 0..50 {
        let (id, _) = b.member(&format!("10.0.0.{i}:7000")).unwrap();
        b.connectivity(id, Connectivity::Backoff, 1, now);
    }
    for _ in 0..1000 {
        let p = b.pick(None, &[], now).unwrap();
        assert!(b.is_eligible(p.id));
        b.finish_at(p.id, Outcome::Success, Some(MS), now);
    }
}

/// Prints what a pick costs with 3, 100 and 1000 endpoints, per picker, and the core's
/// memory per endpoint (BENCHMARKS.md section 7). A report, not a check: run it in release,
/// `cargo test -p mcp-client --release --lib report_pick_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run by hand in release"]
fn report_pick_cost_and_memory_per_endpoint() {
    const PICKS: u32 = 2_000_000;
    for n in [3usize, 100, 1000] {
        let now = Instant::now();
        let mut line = format!("{n:>5} endpoints:");
        for (name, picker, keyed) in [
            ("p2c", Picker::PeakEwma, false),
            ("round-robin", Picker::RoundRobin, false),
            ("hash key", Picker::PeakEwma, true),
        ] {
            let config = BalanceConfig {
                picker,
                ..BalanceConfig::default()
            };
            let mut b = fleet(config, addrs(n), now);
            // Every endpoint measured once, as in a running fleet.
            for _ in 0..4 * n {
                let p = b.pick(None, &[], now).unwrap();
                b.finish_at(p.id, Outcome::Success, Some(MS), now);
            }
            let start = std::time::Instant::now();
            for i in 0..PICKS {
                let key = keyed.then_some(u64::from(i));
                let p = b.pick(key, &[], now).unwrap();
                b.finish(p.id, p.hint, Outcome::Success, Some(MS), now);
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(PICKS);
            line += &format!("  {name} {ns:.0} ns");
            if keyed {
                line += &format!(
                    "  (core memory {} B/endpoint with the ring)",
                    b.heap_bytes() / n
                );
            }
        }
        println!("{line}  [pick + finish]");
    }
}

#[test]
fn a_stale_place_hint_still_finds_its_endpoint() {
    let now = Instant::now();
    let mut b = fleet(BalanceConfig::default(), addrs(3), now);
    let (first, _) = b.member("10.0.0.0:7000").unwrap();
    let (last, _) = b.member("10.0.0.2:7000").unwrap();
    b.pick_at(last, now);
    let held = b.snapshot(now);
    assert_eq!(held.iter().map(|s| s.in_flight).sum::<u32>(), 1);
    // Removing the first moves the last into its place: the hint the pick gave is stale.
    b.apply(Change::Remove("10.0.0.0:7000".into()), now, |i| {
        i.addr().to_owned()
    });
    let _ = first;
    assert!(b.finish(last, 2, Outcome::Success, Some(MS), now).is_none());
    let after = b.snapshot(now);
    assert!(after.iter().all(|s| s.in_flight == 0), "{after:?}");
}

#[test]
fn the_short_decay_series_matches_exp() {
    let decay = Duration::from_secs(10);
    for elapsed in [0.0, 1e-6, 1e-3, 0.05, 0.0999, 0.1, 0.5, 10.0, 100.0] {
        let exact = (-elapsed / 10.0f64).exp();
        let got = super::state::kept(elapsed, decay);
        assert!((got - exact).abs() < 2e-7, "{elapsed}: {got} vs {exact}");
    }
}
