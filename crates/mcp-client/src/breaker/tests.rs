use std::time::Duration;

use mcp_codec::ErrorCode;
use tokio::time::{Instant, advance};

use super::*;
use crate::error::{Error, ErrorKind, Phase, Processed, RemoteError};

fn config() -> BreakerConfig {
    BreakerConfig::default()
        .min_calls(10)
        .failure_rate(0.5)
        .cool_down(Duration::from_secs(5))
}

fn run(breaker: &Breaker, outcome: Outcome) -> Result<(), Error> {
    let permit = breaker.acquire(Instant::now())?;
    permit.record(outcome, Instant::now());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_enough_calls_were_seen() {
    let breaker = Breaker::new(config(), Instant::now());
    // Nine failures are below the minimum number of calls.
    for _ in 0..9 {
        run(&breaker, Outcome::Failure).expect("closed");
    }
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
    run(&breaker, Outcome::Failure).expect("closed");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Open);
    let err = run(&breaker, Outcome::Success).expect_err("open fails fast");
    assert!(err.is_circuit_open());
    assert!(!err.maybe_processed());
    assert_eq!(breaker.opened(), 1);
    assert_eq!(breaker.rejected(), 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_rate() {
    let breaker = Breaker::new(config(), Instant::now());
    for i in 0..100 {
        let outcome = if i % 3 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        run(&breaker, outcome).expect("a third of failures keeps it closed");
    }
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn old_failures_leave_the_window() {
    let breaker = Breaker::new(config().window(Duration::from_secs(10)), Instant::now());
    for _ in 0..9 {
        run(&breaker, Outcome::Failure).expect("closed");
    }
    advance(Duration::from_secs(11)).await;
    // The nine old failures no longer count: one more is not enough.
    run(&breaker, Outcome::Failure).expect("closed");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_closes_on_success() {
    let breaker = Breaker::new(config(), Instant::now());
    for _ in 0..10 {
        run(&breaker, Outcome::Failure).expect("closed");
    }
    advance(Duration::from_millis(4999)).await;
    assert!(
        run(&breaker, Outcome::Success).is_err(),
        "still cooling down"
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);

    let probe = breaker.acquire(Instant::now()).expect("one probe");
    // While the probe is out, others still fail fast.
    assert!(breaker.acquire(Instant::now()).is_err());
    probe.record(Outcome::Success, Instant::now());
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
    // A fresh window: one failure after closing does not reopen.
    run(&breaker, Outcome::Failure).expect("closed");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_failure_reopens_for_another_cool_down() {
    let breaker = Breaker::new(config(), Instant::now());
    for _ in 0..10 {
        run(&breaker, Outcome::Failure).expect("closed");
    }
    advance(Duration::from_secs(5)).await;
    run(&breaker, Outcome::Failure).expect("the probe is let through");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Open);
    assert_eq!(breaker.opened(), 2);
    advance(Duration::from_secs(5)).await;
    run(&breaker, Outcome::Success).expect("probe");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_frees_its_place() {
    let breaker = Breaker::new(config(), Instant::now());
    for _ in 0..10 {
        run(&breaker, Outcome::Failure).expect("closed");
    }
    advance(Duration::from_secs(5)).await;
    drop(breaker.acquire(Instant::now()).expect("probe"));
    assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
    run(&breaker, Outcome::Success).expect("a new probe is allowed");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn several_probes_must_all_succeed() {
    let breaker = Breaker::new(config().probes(2), Instant::now());
    for _ in 0..10 {
        run(&breaker, Outcome::Failure).expect("closed");
    }
    advance(Duration::from_secs(5)).await;
    run(&breaker, Outcome::Success).expect("probe 1");
    assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
    run(&breaker, Outcome::Success).expect("probe 2");
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn disabled_never_opens() {
    let breaker = Breaker::new(BreakerConfig::disabled(), Instant::now());
    for _ in 0..1000 {
        run(&breaker, Outcome::Failure).expect("disabled");
    }
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
}

#[test]
fn outcomes_classify_errors() {
    let ok: Result<(), Error> = Ok(());
    assert_eq!(Outcome::of(&ok), Outcome::Success);
    let app: Result<(), Error> = Err(Error::from_remote(RemoteError::new(ErrorCode(1001), "no")));
    assert_eq!(
        Outcome::of(&app),
        Outcome::Success,
        "an answer is a sign of health"
    );
    for code in [5, 6, 9] {
        let e: Result<(), Error> = Err(Error::from_remote(RemoteError::new(ErrorCode(code), "")));
        assert_eq!(Outcome::of(&e), Outcome::Failure);
    }
    let lost: Result<(), Error> = Err(Error::new(ErrorKind::ConnectionLost, Processed::Maybe));
    assert_eq!(Outcome::of(&lost), Outcome::Failure);
    let slow: Result<(), Error> = Err(Error::timeout(Phase::Response, Processed::Maybe));
    assert_eq!(Outcome::of(&slow), Outcome::Failure);
    let queued: Result<(), Error> = Err(Error::timeout(Phase::Queue, Processed::No));
    assert_eq!(Outcome::of(&queued), Outcome::Ignored);
    // A pool whose connections are all full is the client's own limit.
    let pool_full: Result<(), Error> = Err(Error::timeout(Phase::Pool, Processed::No));
    assert_eq!(Outcome::of(&pool_full), Outcome::Ignored);
    let connecting: Result<(), Error> = Err(Error::timeout(Phase::Connect, Processed::No));
    assert_eq!(Outcome::of(&connecting), Outcome::Failure);
    let open: Result<(), Error> = Err(Error::circuit_open());
    assert_eq!(Outcome::of(&open), Outcome::Ignored);
}
