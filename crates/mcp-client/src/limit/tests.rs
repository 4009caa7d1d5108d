use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::ErrorKind;

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(1)
}

#[tokio::test(start_paused = true)]
async fn fail_fast_refuses_past_the_limit() {
    let limiter = Limiter::new(LimitConfig::new(2).mode(LimitMode::FailFast));
    let a = limiter.acquire(soon()).await.expect("slot 1");
    let _b = limiter.acquire(soon()).await.expect("slot 2");
    let err = limiter.acquire(soon()).await.expect_err("full");
    assert!(err.is_overloaded());
    assert!(!err.maybe_processed());
    assert_eq!(limiter.in_flight(), 2);
    assert_eq!(limiter.rejected(), 1);
    drop(a);
    assert_eq!(limiter.in_flight(), 1);
    limiter.acquire(soon()).await.expect("a slot freed up");
}

#[tokio::test(start_paused = true)]
async fn wait_mode_queues_then_times_out_in_the_queue_phase() {
    let limiter = Arc::new(Limiter::new(LimitConfig::new(1)));
    let held = limiter.acquire(soon()).await.expect("slot");
    let start = Instant::now();
    let err = limiter
        .acquire(start + Duration::from_millis(250))
        .await
        .expect_err("no slot in time");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.timeout_phase(), Some(crate::Phase::Queue));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(limiter.queued(), 0);

    // A waiter gets the slot as soon as it is released, and is counted while it waits.
    let waiter = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move { limiter.acquire(soon()).await.map(|_| Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(limiter.queued(), 1);
    let released = Instant::now();
    drop(held);
    let got = waiter.await.expect("task").expect("slot after release");
    assert_eq!(got, released);
}

#[tokio::test(start_paused = true)]
async fn close_refuses_new_calls_and_drained_waits_for_the_rest() {
    let limiter = Arc::new(Limiter::new(LimitConfig::new(1)));
    let held = limiter.acquire(soon()).await.expect("slot");
    let waiter = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move { limiter.acquire(soon()).await.map(drop) })
    };
    tokio::task::yield_now().await;
    limiter.close();
    assert!(waiter.await.expect("task").expect_err("closed").is_closed());
    assert!(
        limiter
            .acquire(soon())
            .await
            .expect_err("closed")
            .is_closed()
    );

    let drained = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move { limiter.drained().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!drained.is_finished(), "a call is still in flight");
    drop(held);
    tokio::time::timeout(Duration::from_secs(1), drained)
        .await
        .expect("drained once the last slot is freed")
        .expect("task");
}

#[test]
fn config_is_clamped() {
    assert_eq!(LimitConfig::new(0).max_in_flight, 1);
    assert_eq!(LimitConfig::default().max_in_flight, 1024);
    assert_eq!(LimitConfig::default().mode, LimitMode::Wait);
}
