use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mcp_codec::ErrorCode;
use tokio::time::Instant;

use super::budget::RetryBudget;
use super::*;
use crate::error::{Error, Phase, Processed, RemoteError};

fn remote(code: u16) -> Error {
    Error::from_remote(RemoteError::new(ErrorCode(code), ""))
}

fn lost_after_write() -> Error {
    Error::new(crate::ErrorKind::ConnectionLost, Processed::Maybe)
}

/// Runs a call whose attempts fail with `fail(attempt)` until `ok_at` (if any), returning the
/// result, the attempt numbers seen and the virtual time each started at.
async fn drive(
    retry: &Retry,
    idempotent: bool,
    budget: Duration,
    ok_at: Option<u32>,
    fail: impl Fn(u32) -> Error,
) -> (Result<u32, Error>, Vec<Duration>) {
    let start = Instant::now();
    let mut starts = Vec::new();
    let result = retry
        .run(idempotent, true, start, start + budget, |n, _| {
            starts.push(start.elapsed());
            let outcome = if ok_at == Some(n) {
                Ok(n)
            } else {
                Err(fail(n))
            };
            async move { outcome }
        })
        .await;
    (result, starts)
}

#[tokio::test(start_paused = true)]
async fn backoff_follows_the_protocol_schedule() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    let (result, starts) = drive(&retry, false, Duration::from_secs(5), None, |_| remote(5)).await;
    let err = result.expect_err("every attempt fails");
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.code(), Some(ErrorCode::OVERLOADED));
    let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
    // Attempts start after 100, then 300, then 700 ms of backoff.
    assert_eq!(ms, [0, 100, 400, 1100]);
    assert_eq!(retry.retries(), 3);
}

#[tokio::test(start_paused = true)]
async fn success_stops_retrying() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    let (result, starts) = drive(&retry, false, Duration::from_secs(5), Some(2), |_| {
        remote(6)
    })
    .await;
    assert_eq!(result.expect("second attempt succeeds"), 2);
    assert_eq!(starts.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_maybe_processed_call_is_retried_only_if_idempotent() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    let (result, starts) = drive(&retry, false, Duration::from_secs(5), None, |_| {
        lost_after_write()
    })
    .await;
    assert_eq!(starts.len(), 1, "never sent twice");
    assert!(result.expect_err("fails").maybe_processed());

    let (result, starts) = drive(&retry, true, Duration::from_secs(5), Some(3), |_| {
        lost_after_write()
    })
    .await;
    assert_eq!(result.expect("idempotent call retried"), 3);
    assert_eq!(starts.len(), 3);

    // ERROR 9 INTERNAL: only idempotent calls.
    let (_, starts) = drive(&retry, false, Duration::from_secs(5), None, |_| remote(9)).await;
    assert_eq!(starts.len(), 1);
    let (_, starts) = drive(&retry, true, Duration::from_secs(5), None, |_| remote(9)).await;
    assert_eq!(starts.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_codes_fail_at_once() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    for code in [1, 2, 3, 4, 7, 8, 1000] {
        let (_, starts) = drive(&retry, true, Duration::from_secs(5), None, |_| remote(code)).await;
        assert_eq!(starts.len(), 1, "code {code}");
    }
    assert_eq!(retry.retries(), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_delay_does_not_fit_the_budget() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    // 450 ms: attempts at 0 and 100 ms fit; the next would start at 400 ms, still inside;
    // the one after at 1100 ms would not.
    let (_, starts) = drive(&retry, false, Duration::from_millis(450), None, |_| {
        remote(5)
    })
    .await;
    assert_eq!(starts.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn unavailable_asks_for_another_connection() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    let seen = std::sync::Mutex::new(Vec::new());
    let _ = retry
        .run(
            false,
            true,
            Instant::now(),
            Instant::now() + Duration::from_secs(5),
            |n, other| {
                seen.lock().unwrap().push(other);
                async move { if n < 3 { Err(remote(6)) } else { Ok(()) } }
            },
        )
        .await;
    assert_eq!(*seen.lock().unwrap(), [false, true, true]);
}

#[tokio::test(start_paused = true)]
async fn timeouts_of_the_budget_or_queue_are_final() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    for phase in [Phase::Total, Phase::Queue] {
        let (_, starts) = drive(&retry, true, Duration::from_secs(5), None, |_| {
            Error::timeout(phase, Processed::No)
        })
        .await;
        assert_eq!(starts.len(), 1);
    }
    let (_, starts) = drive(&retry, false, Duration::from_secs(5), None, |_| {
        Error::timeout(Phase::Connect, Processed::No)
    })
    .await;
    assert_eq!(
        starts.len(),
        4,
        "a connect timeout never reached the server"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_during_an_outage() {
    // No floor: only 20% of requests may be retried. The window is long enough that the
    // virtual time spent in backoff does not slide requests out of it.
    let config = RetryConfig::default().budget(
        RetryBudgetConfig::default()
            .window(Duration::from_secs(3600))
            .min_per_second(0),
    );
    let retry = Retry::new(config, Instant::now());
    let attempts = AtomicU32::new(0);
    let calls = 1000;
    for _ in 0..calls {
        let _ = retry
            .run(
                false,
                true,
                Instant::now(),
                Instant::now() + Duration::from_secs(5),
                |_, _| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    async { Err::<(), _>(remote(5)) }
                },
            )
            .await;
    }
    let retries = retry.retries();
    assert_eq!(u64::from(attempts.load(Ordering::Relaxed)), calls + retries);
    // Without the budget there would be 3 retries per call (3000).
    assert!(retries <= calls / 5, "{retries} retries for {calls} calls");
    assert!(retries >= calls / 5 - 5, "the budget is used: {retries}");
    assert!(retry.denied_by_budget() > 0);
}

#[tokio::test(start_paused = true)]
async fn the_floor_allows_retries_at_low_traffic_and_refills() {
    let config = RetryConfig::default().budget(
        RetryBudgetConfig::default()
            .window(Duration::from_secs(1))
            .percent(0.0)
            .min_per_second(2),
    );
    let budget = RetryBudget::new(config.budget.clone(), Instant::now());
    let now = Instant::now();
    assert!(budget.try_withdraw(now));
    assert!(budget.try_withdraw(now));
    assert!(!budget.try_withdraw(now), "floor of 2 per 1 s window spent");
    // Once the window has moved on, the floor is available again.
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert!(budget.try_withdraw(Instant::now()));
}

#[test]
fn config_reports_its_attempts() {
    assert_eq!(RetryConfig::default().max_attempts(), 4);
    assert_eq!(RetryConfig::disabled().max_attempts(), 1);
    let two =
        RetryConfig::default().backoff([Duration::from_millis(100), Duration::from_millis(300)]);
    assert_eq!(two.max_attempts(), 3);
    assert_eq!(RetryBudgetConfig::default().percent(7.0).percent, 1.0);
    assert_eq!(RetryBudgetConfig::default().percent(f64::NAN).percent, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_call_may_opt_out_of_retries() {
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    let mut attempts = 0;
    let result = retry
        .run(
            true,
            false,
            Instant::now(),
            Instant::now() + Duration::from_secs(5),
            |_, _| {
                attempts += 1;
                async { Err::<(), _>(remote(5)) }
            },
        )
        .await;
    assert_eq!(attempts, 1);
    assert_eq!(result.expect_err("fails").attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_may_have_been_processed_once_says_so_at_the_end() {
    // Found by the soak run: an idempotent call lost with its connection after being
    // written (maybe processed), retried, and refused at connect (certainly not processed)
    // was reported as "not processed" though the server had run it.
    let retry = Retry::new(RetryConfig::default(), Instant::now());
    let connect_refused = || Error::new(crate::ErrorKind::Connect, Processed::No);
    let (result, starts) = drive(&retry, true, Duration::from_secs(5), None, |n| {
        if n == 1 {
            lost_after_write()
        } else {
            connect_refused()
        }
    })
    .await;
    let err = result.expect_err("every attempt fails");
    assert_eq!(starts.len(), 4, "idempotent: retried");
    assert_eq!(
        err.kind(),
        crate::ErrorKind::Connect,
        "the last attempt's error"
    );
    assert!(
        err.maybe_processed(),
        "the first attempt may have been processed: {err}"
    );
    assert!(err.to_string().contains("earlier attempt"), "{err}");

    // Refused every time: certainly not processed, and said so.
    let (result, _) = drive(&retry, true, Duration::from_secs(5), None, |_| {
        connect_refused()
    })
    .await;
    assert!(!result.expect_err("fails").maybe_processed());
}
