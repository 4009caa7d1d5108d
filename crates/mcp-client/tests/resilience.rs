//! Failure handling over loopback: the breaker, the retry budget, idempotence, draining on
//! close.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::{
    BreakerConfig, BreakerState, CallOptions, ErrorCode, ErrorKind, Json, Phase, RetryBudgetConfig,
    RetryConfig,
};
use mcp_server::{RequestContext, Server, Status};

/// A server whose `work` handler counts its calls and fails with `code` while `failing`.
async fn flaky(failing: Arc<AtomicBool>, code: u16) -> (mcp_server::ServerHandle, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let server = serve(
        Server::builder().route_typed("work", Json, move |_ctx, n: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    Err(Status::new(ErrorCode(code), "failing on purpose"))
                } else {
                    Ok(n)
                }
            }
        }),
    )
    .await;
    (server, calls)
}

#[tokio::test]
async fn the_breaker_opens_and_recovers() {
    let failing = Arc::new(AtomicBool::new(true));
    let (server, calls) = flaky(failing.clone(), 9).await;
    let client = client_for(&server)
        .retry(RetryConfig::disabled())
        .breaker(
            BreakerConfig::default()
                .min_calls(10)
                .failure_rate(0.5)
                .cool_down(Duration::from_millis(300)),
        )
        .build()
        .expect("build");

    for _ in 0..10 {
        let err = bounded("call", client.call::<_, u32>("work", &1))
            .await
            .expect_err("failing");
        assert_eq!(err.code(), Some(ErrorCode::INTERNAL));
    }
    assert_eq!(client.metrics().breaker, BreakerState::Open);
    for _ in 0..20 {
        let err = bounded("call", client.call::<_, u32>("work", &1))
            .await
            .expect_err("open");
        assert!(err.is_circuit_open(), "{err}");
        assert!(!err.maybe_processed());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "nothing sent while open");

    // The server heals; after the cool-down one probe goes through and closes the breaker.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.metrics().breaker, BreakerState::HalfOpen);
    let n: u32 = bounded("probe", client.call("work", &7))
        .await
        .expect("probe succeeds");
    assert_eq!(n, 7);
    assert_eq!(client.metrics().breaker, BreakerState::Closed);
    for i in 0..5 {
        let n: u32 = bounded("call", client.call("work", &i))
            .await
            .expect("closed again");
        assert_eq!(n, i);
    }
    let m = client.metrics();
    assert_eq!(m.breaker_opened, 1);
    assert_eq!(m.errors.get(ErrorKind::CircuitOpen), 20);
    assert_eq!(m.errors.get(ErrorKind::Remote), 10);

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_during_an_outage() {
    // Every request is refused with ERROR 5 (not processed, so retryable for any call).
    let (server, calls) = flaky(Arc::new(AtomicBool::new(true)), 5).await;
    let requests = 200u64;
    let client = client_for(&server)
        .retry(
            RetryConfig::default()
                // Short delays keep the test fast; the budget is what is tested.
                .backoff([Duration::from_millis(1); 3])
                .budget(RetryBudgetConfig::default().percent(0.2).min_per_second(1)),
        )
        .breaker(BreakerConfig::disabled())
        .build()
        .expect("build");

    for i in 0..requests {
        let err = bounded("call", client.call::<_, u32>("work", &(i as u32)))
            .await
            .expect_err("outage");
        assert_eq!(err.code(), Some(ErrorCode::OVERLOADED));
    }
    let m = client.metrics();
    let sent = calls.load(Ordering::SeqCst);
    assert_eq!(sent, requests + m.retries, "every retry reached the server");
    // 20% of the requests plus a floor of 1/s over the 10 s window; without the budget each
    // request would have been sent 4 times (800).
    let allowed = requests / 5 + 10;
    assert!(
        m.retries <= allowed,
        "{} retries for {requests} requests",
        m.retries
    );
    assert!(
        m.retries >= requests / 5,
        "the budget is used: {}",
        m.retries
    );
    assert!(m.retries_denied > 0);

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn a_call_that_may_have_been_processed_is_retried_only_if_idempotent() {
    // The handler is slower than the attempt timeout: the request reached the server (and is
    // being processed) when the client gives up on the attempt.
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let server =
        serve(
            Server::builder().route_typed("slow", Json, move |_ctx: RequestContext, n: u32| {
                c.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Status>(n)
                }
            }),
        )
        .await;
    let client = client_for(&server)
        .attempt_timeout(Duration::from_millis(100))
        .timeout(Duration::from_secs(2))
        .retry(RetryConfig::default().backoff([Duration::from_millis(10); 3]))
        .build()
        .expect("build");

    let err = bounded("charge", client.call::<_, u32>("slow", &1))
        .await
        .expect_err("attempt timeout");
    assert_eq!(err.timeout_phase(), Some(Phase::Response), "{err:?}");
    assert!(err.maybe_processed());
    assert!(!err.is_retryable());
    assert_eq!(err.attempts(), 1);
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "sent exactly once");

    calls.store(0, Ordering::SeqCst);
    let err = bounded(
        "get",
        client.call_with::<_, u32>("slow", &1, CallOptions::new().idempotent()),
    )
    .await
    .expect_err("every attempt times out");
    assert_eq!(err.attempts(), 4);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "an idempotent call is retried"
    );

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn close_lets_calls_in_flight_finish() {
    let server = serve(
        Server::builder().route_typed("slow", Json, |_ctx, n: u32| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, Status>(n)
        }),
    )
    .await;
    let client = client_for(&server).build().expect("build");
    let calls: Vec<_> = (0..10u32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call::<_, u32>("slow", &i).await })
        })
        .collect();
    // Let them all be sent.
    bounded("in flight", async {
        while client.metrics().in_flight < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let abandoned = bounded("close", client.close()).await;
    assert_eq!(abandoned, 0, "all ten finished within the grace period");
    for (i, call) in calls.into_iter().enumerate() {
        let n = bounded("call", call)
            .await
            .expect("task")
            .expect("finished during close");
        assert_eq!(n as usize, i);
    }
    let err = bounded("after close", client.call::<_, u32>("slow", &1))
        .await
        .expect_err("closed");
    assert!(err.is_closed());
    assert!(!err.maybe_processed());
    let m = client.metrics();
    assert_eq!(m.in_flight, 0);
    assert_eq!(m.connections.ready, 0, "connections closed: {m:?}");

    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn close_gives_up_on_calls_that_outlast_the_grace_period() {
    let server = serve(
        Server::builder().route_typed("stuck", Json, |_ctx, n: u32| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, Status>(n)
        }),
    )
    .await;
    let client = client_for(&server)
        .close_timeout(Duration::from_millis(100))
        .attempt_timeout(Duration::from_secs(4))
        .build()
        .expect("build");
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, u32>("stuck", &1).await })
    };
    bounded("in flight", async {
        while client.metrics().in_flight < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(bounded("close", client.close()).await, 1);
    let err = bounded("call", call)
        .await
        .expect("task")
        .expect_err("cut off");
    assert!(err.maybe_processed(), "{err:?}");
    bounded("shutdown", server.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn a_call_made_during_a_server_restart_succeeds_within_its_budget() {
    let work = || {
        Server::builder().route_typed(
            "work",
            Json,
            |_ctx, n: u32| async move { Ok::<_, Status>(n) },
        )
    };
    let first = serve(work()).await;
    let addr = first.local_addr();
    let client = client_for(&first).build().expect("build");
    let n: u32 = bounded("before", client.call("work", &1))
        .await
        .expect("up");
    assert_eq!(n, 1);

    bounded("shutdown", first.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown");
    // Not idempotent, and the server is down when it starts: the pool reconnects within the
    // attempt's budget (and a failed attempt would be retried, as it was certainly not
    // processed).
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, u32>("work", &2).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = bounded("rebind", async {
        loop {
            match work().bind(addr).await {
                Ok(server) => return server,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let n = bounded("during restart", call)
        .await
        .expect("task")
        .expect("the call reaches the new server");
    assert_eq!(n, 2);
    let m = client.metrics();
    assert!(m.reconnects >= 1, "{m:?}");
    assert_eq!(m.errors.total(), 0, "{m:?}");

    bounded("close", client.close()).await;
    bounded("shutdown", second.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}
