//! The call path driven by a scripted transport, in virtual time.

mod scripted;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::{ErrorCode, TRACEPARENT};
use mcp_format::{FormatId, Json, Raw};
use serde_json::{Value, json};
use tokio::time::Instant;

use self::scripted::{Scripted, Step};
use super::*;
use crate::error::{ErrorKind, Phase, Processed, RemoteError};
use crate::trace::TraceContext;
use crate::{BreakerConfig, BreakerState, LimitConfig, LimitMode, RetryConfig};

fn client(
    fake: Arc<Scripted>,
    tune: impl FnOnce(ClientBuilder<Json>) -> ClientBuilder<Json>,
) -> Client<Json, Arc<Scripted>> {
    tune(Client::builder("fake:0")).build_with(fake)
}

fn remote(code: u16) -> Error {
    Error::from_remote(RemoteError::new(ErrorCode(code), "scripted"))
}

#[tokio::test(start_paused = true)]
async fn a_typed_call_carries_trace_and_deadline() {
    let fake = Scripted::new(|_, _| Step::Echo);
    let client = client(fake.clone(), |b| b);
    let back: Value = client
        .call_with(
            "echo",
            &json!({"msg": "hi"}),
            CallOptions::new().meta("tenant", "acme"),
        )
        .await
        .expect("echo");
    assert_eq!(back, json!({"msg": "hi"}));

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "echo");
    assert_eq!(seen[0].format, FormatId::JSON);
    assert_eq!(&seen[0].body[..], br#"{"msg":"hi"}"#);
    TraceContext::parse(&seen[0].traceparent).expect("a valid traceparent");
    // The attempt's budget (2 s), written when the attempt starts.
    assert_eq!(seen[0].deadline_ms, Some(2000));
    assert!(
        seen[0]
            .meta
            .iter()
            .any(|(k, v)| k == "tenant" && v == b"acme")
    );

    let m = client.metrics();
    assert_eq!((m.calls, m.succeeded, m.errors.total()), (1, 1, 0));
    assert_eq!(m.latency.count, 1);
    assert_eq!(m.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn calls_continue_a_given_trace_with_new_span_ids() {
    let fake = Scripted::new(|_, _| Step::Echo);
    let client = client(fake.clone(), |b| b);
    let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("valid");
    for _ in 0..2 {
        let _: Value = client
            .call_with("echo", &json!(1), CallOptions::new().trace(parent.clone()))
            .await
            .expect("echo");
    }
    // A caller-supplied traceparent in the metadata is continued too, not sent twice.
    let _: Value = client
        .call_with(
            "echo",
            &json!(1),
            CallOptions::new().meta(TRACEPARENT, parent.to_traceparent()),
        )
        .await
        .expect("echo");
    let _: Value = client.call("echo", &json!(1)).await.expect("echo");

    let seen = fake.seen();
    let ctx: Vec<TraceContext> = seen
        .iter()
        .map(|s| TraceContext::parse(&s.traceparent).expect("valid"))
        .collect();
    for c in &ctx[..3] {
        assert_eq!(c.trace_id(), parent.trace_id());
        assert_ne!(c.span_id(), parent.span_id());
    }
    assert_ne!(ctx[0].span_id(), ctx[1].span_id(), "a new span per call");
    assert_eq!(
        seen[2]
            .meta
            .iter()
            .filter(|(k, _)| k == TRACEPARENT)
            .count(),
        1
    );
    assert_ne!(
        ctx[3].trace_id(),
        parent.trace_id(),
        "no context: a fresh trace"
    );
}

#[tokio::test(start_paused = true)]
async fn overloaded_answers_are_retried_with_backoff() {
    let fake = Scripted::new(|n, _| {
        if n < 3 {
            Step::Fail(remote(5))
        } else {
            Step::Echo
        }
    });
    let client = client(fake.clone(), |b| b);
    let _: Value = client.call("echo", &json!(1)).await.expect("third attempt");
    let at: Vec<u128> = fake.seen().iter().map(|s| s.at.as_millis()).collect();
    // 1 ms per answer, then 100 and 300 ms of backoff.
    assert_eq!(at, [0, 101, 402]);
    // Each attempt carries what is left of its own budget.
    assert!(fake.seen().iter().all(|s| s.deadline_ms == Some(2000)));
    assert_eq!(client.metrics().retries, 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_may_have_been_processed_is_not_retried_unless_idempotent() {
    let lost = || Error::new(ErrorKind::ConnectionLost, Processed::Maybe);
    let fake = Scripted::new(move |_, _| Step::Fail(lost()));
    let client = client(fake.clone(), |b| b);
    let err = client
        .call::<_, Value>("charge", &json!({"cents": 100}))
        .await
        .expect_err("lost");
    assert!(err.maybe_processed());
    assert!(!err.is_retryable());
    assert_eq!(err.attempts(), 1);
    assert_eq!(fake.seen().len(), 1, "sent once");

    let fake = Scripted::new(move |n, _| {
        if n == 1 {
            Step::Fail(lost())
        } else {
            Step::Echo
        }
    });
    let client = super::tests::client(fake.clone(), |b| b);
    let _: Value = client
        .call_with("get", &json!(1), CallOptions::new().idempotent())
        .await
        .expect("retried");
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_and_the_total_budget_name_their_phase() {
    let fake = Scripted::new(|_, _| Step::Hang);
    let client = client(fake.clone(), |b| b);
    let start = Instant::now();
    let err = client
        .call::<_, Value>("slow", &json!(1))
        .await
        .expect_err("times out");
    // Not idempotent: one attempt, its own 2 s timeout.
    assert_eq!(err.timeout_phase(), Some(Phase::Response));
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let fake = Scripted::new(|_, _| Step::Hang);
    let client = super::tests::client(fake.clone(), |b| b);
    let start = Instant::now();
    let err = client
        .call_with::<_, Value>("slow", &json!(1), CallOptions::new().idempotent())
        .await
        .expect_err("times out");
    // Idempotent: attempts at 0 s, 2.1 s and 4.4 s; the third is cut by the total budget.
    assert_eq!(err.timeout_phase(), Some(Phase::Total));
    assert!(err.to_string().contains("while in phase response"), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[2].deadline_ms,
        Some(600),
        "only 0.6 s left for the last"
    );
    assert_eq!(client.metrics().errors.get(ErrorKind::Timeout), 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_fails_fast_and_recovers() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let fake = Scripted::new(move |_, _| {
        if h.load(Ordering::SeqCst) {
            Step::Echo
        } else {
            Step::Fail(remote(9))
        }
    });
    let client = client(fake.clone(), |b| {
        b.retry(RetryConfig::disabled()).breaker(
            BreakerConfig::default()
                .min_calls(5)
                .cool_down(Duration::from_secs(1)),
        )
    });
    for _ in 0..5 {
        let err = client
            .call::<_, Value>("x", &json!(1))
            .await
            .expect_err("failing");
        assert_eq!(err.code(), Some(ErrorCode::INTERNAL));
    }
    let err = client
        .call::<_, Value>("x", &json!(1))
        .await
        .expect_err("open");
    assert!(err.is_circuit_open());
    assert_eq!(fake.seen().len(), 5, "not sent while open");
    assert_eq!(client.metrics().breaker, BreakerState::Open);

    healthy.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    let _: Value = client.call("x", &json!(1)).await.expect("probe succeeds");
    assert_eq!(client.metrics().breaker, BreakerState::Closed);
    assert_eq!(client.metrics().breaker_opened, 1);
}

/// A call that waited for a slot gets a whole attempt budget from when its attempt starts,
/// not from when the call started (and the `deadline` it sends says so).
#[tokio::test(start_paused = true)]
async fn a_call_queued_for_a_slot_gets_its_whole_attempt_budget() {
    // The first call holds the only slot for 2 s; the second (1.5 s per attempt) waits
    // for it meanwhile.
    let fake = Scripted::new(|n, _| if n == 1 { Step::Hang } else { Step::Echo });
    let client = client(fake.clone(), |b| {
        b.limit(LimitConfig::new(1))
            .attempt_timeout(Duration::from_millis(1500))
            .timeout(Duration::from_secs(5))
            .retry(RetryConfig::disabled())
    });
    let first = {
        let client = client.clone();
        let options = CallOptions::new().attempt_timeout(Duration::from_secs(2));
        tokio::spawn(async move {
            client
                .call_with::<_, Value>("slow", &json!(1), options)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second: Value = client
        .call("echo", &json!(2))
        .await
        .expect("its attempt starts when the slot frees");
    assert_eq!(second, json!(2));
    assert!(first.await.expect("task").expect_err("hung").is_timeout());
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at >= Duration::from_secs(2), "{:?}", seen[1].at);
    assert_eq!(seen[1].until, seen[1].at + Duration::from_millis(1500));
    assert_eq!(seen[1].deadline_ms, Some(1500));
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_calls_fail_fast_or_wait() {
    let fake = Scripted::new(|_, _| Step::Hang);
    let client = client(fake, |b| {
        b.limit(LimitConfig::new(1).mode(LimitMode::FailFast))
            .attempt_timeout(Duration::from_secs(1))
            .retry(RetryConfig::disabled())
    });
    let busy = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, Value>("slow", &json!(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(client.metrics().in_flight, 1);
    let err = client
        .call::<_, Value>("x", &json!(1))
        .await
        .expect_err("full");
    assert!(err.is_overloaded());
    let _ = busy.await;

    let fake = Scripted::new(|_, _| Step::Echo);
    let client = super::tests::client(fake, |b| b.limit(LimitConfig::new(1)));
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call::<_, Value>("echo", &json!(i)).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.expect("task").expect("waited"), json!(i));
    }
}

#[tokio::test(start_paused = true)]
async fn close_refuses_new_calls_and_lets_in_flight_ones_finish() {
    let fake = Scripted::new(|_, _| Step::Echo);
    let client = client(fake, |b| b);
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, Value>("echo", &json!("last")).await })
    };
    tokio::task::yield_now().await;
    let abandoned = client.close().await;
    assert_eq!(abandoned, 0);
    assert_eq!(
        in_flight.await.expect("task").expect("finished"),
        json!("last")
    );
    let err = client
        .call::<_, Value>("echo", &json!(1))
        .await
        .expect_err("closed");
    assert!(err.is_closed());
    assert!(client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn close_gives_up_on_calls_past_the_grace_period() {
    let fake = Scripted::new(|_, _| Step::Hang);
    let client = client(fake, |b| b);
    let hung = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, Value>("slow", &json!(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let start = Instant::now();
    assert_eq!(client.close_within(Duration::from_millis(500)).await, 1);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn bodies_that_do_not_decode_are_decode_errors() {
    let fake = Scripted::new(|_, _| Step::Answer(FormatId::JSON, b"{not json"));
    let client = client(fake, |b| b);
    let err = client
        .call::<_, Value>("x", &json!(1))
        .await
        .expect_err("bad body");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.decode_error().is_some());
    assert!(err.maybe_processed());
    assert_eq!(client.metrics().errors.get(ErrorKind::Decode), 1);

    let fake = Scripted::new(|_, _| Step::Answer(FormatId::RAW, b"x"));
    let client = super::tests::client(fake, |b| b);
    let err = client
        .call::<_, Value>("x", &json!(1))
        .await
        .expect_err("wrong format");
    assert!(err.to_string().contains("expected json"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_format_can_be_overridden_for_one_call() {
    let fake = Scripted::new(|_, _| Step::Echo);
    let client = client(fake.clone(), |b| b);
    let back: Bytes = client
        .with_format(Raw)
        .call("echo", &Bytes::from_static(b"\x00\x01"))
        .await
        .expect("raw echo");
    assert_eq!(&back[..], b"\x00\x01");
    assert_eq!(fake.seen()[0].format, FormatId::RAW);
    // Same shared state.
    assert_eq!(client.metrics().calls, 1);

    let raw = client
        .call_raw(RawRequest::new("echo", FormatId::new(200), &b"abc"[..]))
        .await
        .expect("raw");
    assert_eq!(raw.format(), FormatId::new(200));
    assert_eq!(&raw.body()[..], b"abc");
}

#[tokio::test(start_paused = true)]
async fn application_errors_reach_the_caller_unretried() {
    let fake = Scripted::new(|_, _| Step::Fail(remote(1002)));
    let client = client(fake.clone(), |b| b);
    let err = client
        .call_with::<_, Value>("x", &json!(1), CallOptions::new().idempotent())
        .await
        .expect_err("app error");
    let remote = err.remote().expect("remote");
    assert_eq!(remote.code(), ErrorCode(1002));
    assert_eq!(remote.message(), "scripted");
    assert!(remote.is_application());
    assert_eq!(fake.seen().len(), 1);
    // Answered: its latency counts.
    assert_eq!(client.metrics().latency.count, 1);
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_on_another_connection() {
    let fake = Scripted::new(|n, _| {
        if n == 1 {
            Step::Fail(remote(6))
        } else {
            Step::Echo
        }
    });
    let client = client(fake.clone(), |b| b);
    // Not idempotent, yet retried: ERROR 6 says the request was not processed.
    let _: Value = client.call("x", &json!(1)).await.expect("second attempt");
    let other: Vec<bool> = fake.seen().iter().map(|s| s.other_connection).collect();
    assert_eq!(other, [false, true]);
}

#[tokio::test(start_paused = true)]
async fn an_early_timeout_keeps_its_phase_when_the_budget_is_the_attempts_bound() {
    // The total budget (1 s) is shorter than an attempt's (2 s), so the attempt's deadline
    // is the call's; a connect timeout well before it is still a connect timeout.
    let fake = Scripted::new(|_, _| Step::Fail(Error::timeout(Phase::Connect, Processed::No)));
    let client = client(fake, |b| {
        b.timeout(Duration::from_secs(1))
            .retry(RetryConfig::disabled())
    });
    let err = client
        .call::<_, Value>("x", &json!(1))
        .await
        .expect_err("connect timeout");
    assert_eq!(err.timeout_phase(), Some(Phase::Connect));
}

#[tokio::test(start_paused = true)]
async fn close_now_refuses_at_once() {
    let fake = Scripted::new(|_, _| Step::Echo);
    let client = client(fake, |b| b);
    client.close_now();
    assert!(client.is_closed());
    let err = client
        .call::<_, Value>("x", &json!(1))
        .await
        .expect_err("closed");
    assert!(err.is_closed());
    assert_eq!(client.metrics().errors.get(ErrorKind::Closed), 1);
}

#[tokio::test(start_paused = true)]
async fn huge_timeouts_mean_no_timeout_not_a_panic() {
    let fake = Scripted::new(|_, _| Step::Echo);
    let client = client(fake, |b| {
        b.timeout(Duration::MAX)
            .attempt_timeout(Duration::MAX)
            .breaker(BreakerConfig::default().cool_down(Duration::MAX))
            .retry(RetryConfig::default().backoff([Duration::MAX]))
    });
    let v: Value = client
        .call_with("x", &json!(1), CallOptions::new().timeout(Duration::MAX))
        .await
        .expect("echo");
    assert_eq!(v, json!(1));
}

#[test]
fn the_public_types_can_cross_threads() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + 'static>() {}
    shared::<Client>();
    shared::<Client<Raw>>();
    sendable::<Subscription<Value, Json>>();
    sendable::<RawSubscription>();
    sendable::<Error>();
    shared::<CallOptions>();
    #[cfg(feature = "blocking")]
    shared::<crate::blocking::Client>();
    // The future of a call can be spawned.
    fn spawnable<F: std::future::Future + Send>(_: F) {}
    let client = client(Scripted::new(|_, _| Step::Echo), |b| b);
    spawnable(client.call::<_, Value>("x", &json!(1)));
}
