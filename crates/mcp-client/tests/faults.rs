//! The real client against the real server through a fault-injecting proxy
//! ([`mcp_test_support::fault_proxy`]): tiny writes, latency, an RST in the middle of a call,
//! a blackholed direction, a server restart under load, a slow link, a cut in the middle of
//! a message, refused connects, a subscription across a reset. Two ignored tests reproduce
//! findings (`cargo test -p mcp-client --test faults -- --ignored`).
//!
//! Only the public APIs of `mcp-client` and `mcp-server` are used, and raw bodies (no
//! format feature needed). Every await that could hang is bounded; timing is asserted
//! only as lower bounds of what a fault imposes, or with wide margins, so that a loaded
//! machine slows the tests down without failing them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mcp_client::{
    BackoffConfig, BreakerConfig, Bytes, CallOptions, Client, ClientBuilder, DefaultFormat,
    ErrorCode, ErrorKind, FormatId, Phase, PoolConfig, RawRequest, RetryConfig,
};
use mcp_server::{Reply, RequestContext, Server, ServerBuilder, ServerHandle, Status};
use mcp_test_support::fault_proxy::{Direction, FaultProxy, Faults};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Every await that could hang in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(20);

/// Awaits `fut` for at most [`BOUND`], failing the test with `what` otherwise.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

/// Some bytes that are not all alike.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn raw(method: &str, body: impl Into<Bytes>) -> RawRequest {
    RawRequest::new(method, FormatId::RAW, body)
}

fn raw_with(method: &str, body: impl Into<Bytes>, options: CallOptions) -> RawRequest {
    raw(method, body).with_options(options)
}

/// A server with `echo` (the body back).
fn echo_routes() -> ServerBuilder {
    Server::builder().route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) })
}

async fn serve(server: ServerBuilder) -> ServerHandle {
    server.bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

/// An echo server that counts the requests its handler ran.
async fn counting_echo() -> (ServerHandle, Arc<AtomicU64>) {
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let server = serve(Server::builder().route_raw("echo", move |_ctx, body| {
        h.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Reply::new(body)) }
    }))
    .await;
    (server, handled)
}

/// A client of `addr` with a reconnect backoff short enough for tests and no circuit
/// breaker (it is not what these tests are about, and an open breaker would turn the
/// faults' errors into fast failures).
fn client_for(addr: std::net::SocketAddr) -> ClientBuilder<DefaultFormat> {
    let pool = PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    };
    Client::builder(addr)
        .pool_config(pool)
        .breaker(BreakerConfig::disabled())
}

async fn stop(client: Client, server: ServerHandle) {
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    bounded("shutdown", server.shutdown(Duration::from_millis(200)))
        .await
        .expect("shutdown");
}

/// (a) Every byte is written in its own piece of 1 to 7 bytes, both ways: frame headers,
/// metadata and CONTINUATION frames arrive torn at every possible place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_writes_both_ways_keep_every_byte() {
    let server = serve(echo_routes()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    proxy.set_both(Faults::none().slice(1, 7));
    let client = client_for(proxy.addr())
        .max_connections(1)
        .timeout(BOUND)
        .attempt_timeout(BOUND)
        .build()
        .expect("build");

    for len in [0, 1, 7, 100, 4096] {
        let body = pattern(len);
        let back = bounded("a small echo", client.call_raw(raw("echo", body.clone())))
            .await
            .expect("small echo");
        assert_eq!(back.body(), &body, "{len} bytes");
    }
    // 200 KB: a head frame and CONTINUATION frames each way, with small calls interleaved
    // on the same connection.
    let big = pattern(200 * 1024);
    let large = {
        let client = client.clone();
        let big = big.clone();
        tokio::spawn(async move { client.call_raw(raw("echo", big)).await })
    };
    let small: Vec<_> = (0..8u8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call_raw(raw("echo", vec![i; 33])).await })
        })
        .collect();
    for (i, call) in small.into_iter().enumerate() {
        let back = bounded("a small call", call)
            .await
            .expect("task")
            .expect("small call");
        assert_eq!(back.body(), &vec![i as u8; 33]);
    }
    let back = bounded("the 200 KB echo", large)
        .await
        .expect("task")
        .expect("200 KB echo");
    assert!(back.body() == &big, "200 KB came back changed");

    let m = client.metrics();
    assert_eq!(m.errors.total(), 0, "{m:?}");
    assert_eq!(m.retries, 0);
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1, "one connection throughout: {stats:?}");
    assert!(
        stats.to_server.writes as usize >= 200 * 1024 / 7,
        "{stats:?}"
    );
    assert!(
        stats.to_client.writes as usize >= 200 * 1024 / 7,
        "{stats:?}"
    );
    stop(client, server).await;
}

/// (b) Answers come 500 ms late: a call with a shorter budget times out (possibly
/// processed, not retried), and the client goes on working on the same connection; the
/// late answer is not taken for the next call's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_longer_than_the_budget_times_out_and_the_client_stays_usable() {
    let (server, handled) = counting_echo().await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let client = client_for(proxy.addr())
        .max_connections(1)
        .build()
        .expect("build");
    let back = bounded("warm-up", client.call_raw(raw("echo", "warm")))
        .await
        .expect("warm-up");
    assert_eq!(back.body().as_ref(), b"warm");

    proxy.set(
        Direction::ToClient,
        Faults::none().latency(Duration::from_millis(500)),
    );
    let start = Instant::now();
    let short = CallOptions::new().timeout(Duration::from_millis(100));
    let err = bounded("a call shorter than the latency", async {
        client.call_raw(raw_with("echo", "late", short)).await
    })
    .await
    .expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.timeout_phase(), Some(Phase::Total), "{err:?}");
    assert!(err.maybe_processed(), "the request was sent: {err:?}");
    assert_eq!(err.attempts(), 1);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "did not wait for the answer"
    );

    // The per-attempt timeout, without retries: the same answer, in phase "response".
    let attempt = CallOptions::new()
        .attempt_timeout(Duration::from_millis(100))
        .no_retry();
    let err = bounded("an attempt shorter than the latency", async {
        client.call_raw(raw_with("echo", "late too", attempt)).await
    })
    .await
    .expect_err("times out");
    assert_eq!(err.timeout_phase(), Some(Phase::Response), "{err:?}");
    assert!(err.maybe_processed());

    // Still under latency (behind the late answers, each 500 ms late in turn), a call with
    // time to spare gets its own answer, not one of the late ones.
    let patient = CallOptions::new()
        .timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(10));
    let back = bounded(
        "a call within its budget",
        client.call_raw(raw_with("echo", "own", patient)),
    )
    .await
    .expect("answered late but in time");
    assert_eq!(back.body().as_ref(), b"own");

    proxy.clear();
    let back = bounded("after the latency", client.call_raw(raw("echo", "quick")))
        .await
        .expect("answered");
    assert_eq!(back.body().as_ref(), b"quick");
    assert_eq!(handled.load(Ordering::SeqCst), 5, "every call handled once");
    assert_eq!(
        proxy.stats().accepted,
        1,
        "the connection survived the timeouts"
    );
    let m = client.metrics();
    assert_eq!(m.errors.get(ErrorKind::Timeout), 2, "{m:?}");
    assert_eq!(m.errors.total(), 2, "{m:?}");
    stop(client, server).await;
}

/// A route whose handler says it started, then waits for its gate to open.
struct Held {
    entered: mpsc::UnboundedReceiver<()>,
    gate: watch::Sender<bool>,
    calls: Arc<AtomicU64>,
}

fn hold(server: ServerBuilder, method: &str) -> (ServerBuilder, Held) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let server = server.route_raw(method, move |_ctx: RequestContext, body| {
        c.fetch_add(1, Ordering::SeqCst);
        let _ = entered_tx.send(());
        let mut gate = gate_rx.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, Status>(Reply::new(body))
        }
    });
    (
        server,
        Held {
            entered,
            gate,
            calls,
        },
    )
}

/// (c) An RST while a call is in flight (its request reached the handler): the call gets
/// one outcome, "connection lost, may have been processed", and is not retried unless
/// idempotent; the next calls go over a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_a_call() {
    let (server, mut once) = hold(echo_routes(), "charge");
    let (server, mut idem) = hold(server, "read");
    let server = serve(server).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let client = client_for(proxy.addr())
        .max_connections(1)
        .retry(RetryConfig::default().backoff([Duration::from_millis(20); 3]))
        .build()
        .expect("build");
    bounded("warm-up", client.call_raw(raw("echo", "warm")))
        .await
        .expect("warm-up");

    // Not idempotent: one outcome, an error that says it may have been processed.
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call_raw(raw("charge", "1")).await })
    };
    bounded("the handler starts", once.entered.recv())
        .await
        .expect("entered");
    proxy.reset_all();
    let err = bounded("the call ends", call)
        .await
        .expect("task")
        .expect_err("the connection was reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err:?}");
    assert!(err.maybe_processed(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(err.attempts(), 1, "not retried: {err:?}");
    once.gate.send_replace(true);
    assert_eq!(once.calls.load(Ordering::SeqCst), 1);

    // The next call reconnects and succeeds.
    let back = bounded("after the reset", client.call_raw(raw("echo", "again")))
        .await
        .expect("a new connection");
    assert_eq!(back.body().as_ref(), b"again");
    assert_eq!(proxy.stats().accepted, 2, "{:?}", proxy.stats());

    // Idempotent: retried on a new connection after the reset, and answered.
    let call = {
        let client = client.clone();
        let options = CallOptions::new().idempotent();
        tokio::spawn(async move { client.call_raw(raw_with("read", "2", options)).await })
    };
    bounded("the first attempt starts", idem.entered.recv())
        .await
        .expect("entered");
    proxy.reset_all();
    bounded("the retry starts", idem.entered.recv())
        .await
        .expect("entered again");
    idem.gate.send_replace(true);
    let back = bounded("the retried call ends", call)
        .await
        .expect("task")
        .expect("the retry is answered");
    assert_eq!(back.body().as_ref(), b"2");
    assert_eq!(idem.calls.load(Ordering::SeqCst), 2, "processed twice");

    let m = client.metrics();
    assert_eq!(m.errors.get(ErrorKind::ConnectionLost), 1, "{m:?}");
    assert_eq!(m.errors.total(), 1, "{m:?}");
    assert_eq!(m.retries, 1, "{m:?}");
    stop(client, server).await;
}

/// (d) Nothing comes back from the server (the socket stays open): calls time out, the
/// heartbeat declares the connection dead, and once the blackhole is lifted the client
/// recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_server_is_declared_dead_by_the_heartbeat_and_recovered_from() {
    let server = serve(echo_routes()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let (interval, timeout) = (Duration::from_millis(300), Duration::from_millis(600));
    let client = client_for(proxy.addr())
        .max_connections(1)
        .heartbeat(interval, timeout)
        .build()
        .expect("build");
    bounded("warm-up", client.call_raw(raw("echo", "warm")))
        .await
        .expect("warm-up");

    proxy.set(Direction::ToClient, Faults::none().blackhole());
    let start = Instant::now();
    let short = CallOptions::new().timeout(Duration::from_millis(100));
    let err = bounded("a short call", async {
        client.call_raw(raw_with("echo", "lost", short)).await
    })
    .await
    .expect_err("no answer comes");
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.maybe_processed(), "{err:?}");

    // A call with time to spare outlives the connection: the heartbeat ends it first.
    let long = CallOptions::new().timeout(Duration::from_secs(10));
    let err = bounded("a long call", async {
        client.call_raw(raw_with("echo", "cut off", long)).await
    })
    .await
    .expect_err("the connection dies under it");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err:?}");
    assert!(err.maybe_processed(), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "declared dead after interval + timeout, not the call's 10 s: {:?}",
        start.elapsed()
    );
    // The client closed the dead connection.
    proxy
        .wait_until("the dead connection is closed", |s| s.closed >= 1)
        .await;
    assert!(proxy.stats().to_client.dropped > 0);

    proxy.clear();
    // Recovery: a connection opened during the blackhole may still die of it (or of a
    // frame torn by it), so allow a few failed tries, each bounded.
    let mut tries = 0;
    let recovered = bounded("recovery", async {
        loop {
            tries += 1;
            let options = CallOptions::new().timeout(Duration::from_secs(2));
            match client.call_raw(raw_with("echo", "back", options)).await {
                Ok(back) => return back,
                Err(err) if tries < 10 => {
                    assert!(
                        err.is_timeout() || err.kind() == ErrorKind::ConnectionLost,
                        "{err:?}"
                    );
                }
                Err(err) => panic!("no recovery after {tries} tries: {err:?}"),
            }
        }
    })
    .await;
    assert_eq!(recovered.body().as_ref(), b"back");
    for i in 0..5u8 {
        let back = bounded("after recovery", client.call_raw(raw("echo", vec![i])))
            .await
            .expect("recovered");
        assert_eq!(back.body().as_ref(), &[i]);
    }
    stop(client, server).await;
}

/// What one call of the restart test ended with.
#[derive(Debug)]
enum Outcome {
    Ok,
    Err {
        kind: ErrorKind,
        maybe_processed: bool,
        code: Option<ErrorCode>,
    },
}

/// (e) The server is stopped and a new one started on the same address while callers keep
/// calling: no call hangs, each gets exactly one outcome (a success carries its own body),
/// nothing is processed more often than the outcomes allow, and calls succeed again once
/// the new server is up.
///
/// The client talks to the server directly: a stopped server is then what it really is
/// (connects refused), not a proxy that accepts and resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load() {
    const CALLERS: usize = 16;
    /// Calls each caller makes after the new server is up.
    const AFTER: usize = 5;
    /// At most this many calls per caller.
    const MAX_CALLS: usize = 500;
    const CALL_TIMEOUT: Duration = Duration::from_secs(3);

    let handled = Arc::new(AtomicU64::new(0));
    let work = {
        let handled = handled.clone();
        move || {
            let handled = handled.clone();
            Server::builder().route_raw("work", move |_ctx, body: Bytes| {
                handled.fetch_add(1, Ordering::SeqCst);
                // Every fifth call outlasts the shutdown's grace period and is cut off.
                let slow = body.ends_with(b"4") || body.ends_with(b"9");
                let pause = Duration::from_millis(if slow { 400 } else { 5 });
                async move {
                    tokio::time::sleep(pause).await;
                    Ok(Reply::new(body))
                }
            })
        }
    };
    let first = serve(work()).await;
    let addr = first.local_addr();
    let client = client_for(addr)
        .timeout(CALL_TIMEOUT)
        .attempt_timeout(Duration::from_secs(1))
        .retry(RetryConfig::default().backoff([Duration::from_millis(20); 3]))
        .build()
        .expect("build");
    let restarted = Arc::new(AtomicBool::new(false));

    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let client = client.clone();
            let restarted = restarted.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut after = 0;
                while after < AFTER && outcomes.len() < MAX_CALLS {
                    let started_after_restart = restarted.load(Ordering::SeqCst);
                    let body = format!("{c}:{}", outcomes.len());
                    let call = client.call_raw(raw("work", body.clone()));
                    // A call never outlives its budget by much.
                    let result = tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), call)
                        .await
                        .unwrap_or_else(|_| panic!("caller {c}: call {body} hung"));
                    let outcome = match result {
                        Ok(back) => {
                            assert_eq!(back.body().as_ref(), body.as_bytes(), "its own answer");
                            Outcome::Ok
                        }
                        Err(err) => Outcome::Err {
                            kind: err.kind(),
                            maybe_processed: err.maybe_processed(),
                            code: err.code(),
                        },
                    };
                    if started_after_restart {
                        after += 1;
                    }
                    outcomes.push((started_after_restart, outcome));
                }
                outcomes
            })
        })
        .collect();

    // Let the load build up, then restart.
    bounded("load before the restart", async {
        while handled.load(Ordering::SeqCst) < (CALLERS * 5) as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bounded("shutdown", first.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown");
    let handled_by_first = handled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = bounded("rebind", async {
        loop {
            match work().bind(addr).await {
                Ok(server) => return server,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    restarted.store(true, Ordering::SeqCst);

    let (mut ok, mut maybe_processed_errors, mut total) = (0u64, 0u64, 0usize);
    let mut cut_off = 0;
    for (c, caller) in callers.into_iter().enumerate() {
        let outcomes = bounded("a caller", caller).await.expect("caller task");
        assert!(
            outcomes.len() < MAX_CALLS,
            "caller {c} made {} calls without {AFTER} after the restart",
            outcomes.len()
        );
        total += outcomes.len();
        for (after, outcome) in &outcomes {
            match outcome {
                Outcome::Ok => ok += 1,
                Outcome::Err {
                    kind,
                    maybe_processed,
                    code,
                } => {
                    assert!(
                        !after,
                        "caller {c}: a call after the restart failed: {outcome:?}"
                    );
                    // What a restart may legitimately cost a call: its connection lost
                    // under it, a refusal (ERROR 6), or the budget spent waiting.
                    assert!(
                        matches!(
                            kind,
                            ErrorKind::ConnectionLost
                                | ErrorKind::Connect
                                | ErrorKind::Timeout
                                | ErrorKind::Remote
                        ),
                        "caller {c}: {outcome:?}"
                    );
                    match code {
                        // Refused by the stopping server: certainly not processed.
                        Some(ErrorCode::UNAVAILABLE) => assert!(!maybe_processed),
                        // In flight past the grace period: stopped half-way, maybe.
                        Some(ErrorCode::CANCELLED) => {
                            assert!(maybe_processed);
                            cut_off += 1;
                        }
                        Some(other) => panic!("caller {c}: ERROR {other}: {outcome:?}"),
                        None => {}
                    }
                    if *maybe_processed {
                        maybe_processed_errors += 1;
                    }
                }
            }
        }
        // The last calls were made after the restart and all succeeded.
        assert!(
            outcomes
                .iter()
                .rev()
                .take(AFTER)
                .all(|(after, o)| *after && matches!(o, Outcome::Ok)),
            "caller {c}: {:?}",
            &outcomes[outcomes.len().saturating_sub(AFTER)..]
        );
    }
    // Most callers are in a slow call when the server stops (those take 95% of the time).
    assert!(cut_off >= 1, "no call was in flight at the shutdown");
    // Each success was processed once; a failure at most once, and only if it says so.
    let processed = handled.load(Ordering::SeqCst);
    assert!(
        ok <= processed && processed <= ok + maybe_processed_errors,
        "{ok} answered, {maybe_processed_errors} possibly processed, {processed} handled"
    );
    assert!(processed - handled_by_first >= (CALLERS * AFTER) as u64);
    let m = client.metrics();
    assert_eq!(m.calls, total as u64, "one outcome per call: {m:?}");
    assert_eq!(m.succeeded, ok, "{m:?}");
    assert_eq!(m.in_flight, 0);
    stop(client, second).await;
}

/// (f) A 64 KiB/s link both ways and a 256 KiB message each way at once (4 s each): the
/// heartbeat interval is much shorter than the transfer, and the timeout shorter too, yet
/// the connection lives, because frames arriving count as life on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_with_large_messages_is_kept_alive() {
    const SIZE: usize = 256 * 1024;
    const RATE: u64 = 64 * 1024;
    let (interval, timeout) = (Duration::from_millis(500), Duration::from_secs(2));
    let downloads = Arc::new(AtomicU64::new(0));
    let d = downloads.clone();
    let server = serve(
        Server::builder()
            .heartbeat(interval, timeout)
            .route_raw("upload", |_ctx, body: Bytes| async move {
                Ok(Reply::new((body.len() as u64).to_be_bytes().to_vec()))
            })
            .route_raw("download", move |_ctx, _body| {
                d.fetch_add(1, Ordering::SeqCst);
                async move { Ok(Reply::new(pattern(SIZE))) }
            }),
    )
    .await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    proxy.set_both(Faults::none().bandwidth(RATE));
    let client = client_for(proxy.addr())
        .max_connections(1)
        .heartbeat(interval, timeout)
        .timeout(BOUND)
        .attempt_timeout(BOUND)
        .build()
        .expect("build");

    let start = Instant::now();
    let download = {
        let client = client.clone();
        tokio::spawn(async move { client.call_raw(raw("download", "")).await })
    };
    // The small request first, so that it does not wait behind the upload.
    bounded("the download starts", async {
        while downloads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let upload = {
        let client = client.clone();
        tokio::spawn(async move { client.call_raw(raw("upload", pattern(SIZE))).await })
    };
    let down = bounded("the download", download)
        .await
        .expect("task")
        .expect("downloaded");
    let up = bounded("the upload", upload)
        .await
        .expect("task")
        .expect("uploaded");
    let elapsed = start.elapsed();
    assert!(
        down.body() == &pattern(SIZE),
        "the download came back changed"
    );
    assert_eq!(up.body().as_ref(), (SIZE as u64).to_be_bytes());
    // The link was slow: most of 4 s per direction (the first 20 ms worth goes at once).
    assert!(elapsed >= Duration::from_millis(3500), "{elapsed:?}");
    assert!(
        elapsed > interval + timeout,
        "longer than a heartbeat's patience"
    );

    let stats = proxy.stats();
    assert_eq!(
        stats.accepted, 1,
        "the connection lived throughout: {stats:?}"
    );
    assert_eq!(stats.closed, 0, "{stats:?}");
    let m = client.metrics();
    assert_eq!(m.errors.total(), 0, "{m:?}");
    assert_eq!(m.retries, 0, "{m:?}");
    assert_eq!(server.stats().heartbeat_timeouts, 0);
    stop(client, server).await;
}

/// A connection closed in the middle of a message, either way: the call in flight fails
/// as a lost connection, and the next call reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_in_the_middle_of_a_message_either_way() {
    let (server, handled) = counting_echo().await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let client = client_for(proxy.addr())
        .max_connections(1)
        .build()
        .expect("build");
    bounded("warm-up", client.call_raw(raw("echo", "warm")))
        .await
        .expect("warm-up");

    // Half of a 200 KB answer, then FIN.
    proxy.set(Direction::ToClient, Faults::none().cut_after(100_000));
    let err = bounded("answer cut", client.call_raw(raw("echo", pattern(200_000))))
        .await
        .expect_err("cut");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err:?}");
    assert!(err.maybe_processed(), "the server answered it: {err:?}");
    assert!(!err.is_retryable());
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    proxy.clear();
    let back = bounded("after", client.call_raw(raw("echo", "again")))
        .await
        .expect("reconnected");
    assert_eq!(back.body().as_ref(), b"again");

    // Half of a 200 KB request, then the connection goes (an RST, as the proxy closes a
    // socket with the rest of the request unread). The server never saw a whole request;
    // whether the client can know that depends on how much the kernel took, so only the
    // kind is asserted here.
    proxy.set(Direction::ToServer, Faults::none().cut_after(100_000));
    let err = bounded(
        "request cut",
        client.call_raw(raw("echo", pattern(200_000))),
    )
    .await
    .expect_err("cut");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err:?}");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        3,
        "the cut request was not handled"
    );
    proxy.clear();
    let back = bounded("after", client.call_raw(raw("echo", "again")))
        .await
        .expect("reconnected");
    assert_eq!(back.body().as_ref(), b"again");
    assert_eq!(proxy.stats().accepted, 3);
    stop(client, server).await;
}

/// Connects refused (the proxy stops listening and drops its connections): calls fail as
/// "could not connect", certainly not processed, hence retryable; once connects are
/// accepted again the client is back without being told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_fail_as_not_processed_and_are_recovered_from() {
    let server = serve(echo_routes()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let client = client_for(proxy.addr()).build().expect("build");
    bounded("warm-up", client.call_raw(raw("echo", "warm")))
        .await
        .expect("warm-up");

    proxy.refuse_new().await;
    proxy.close_all();
    proxy
        .wait_until("the connection is closed", |s| s.open == 0)
        .await;
    for _ in 0..2 {
        let start = Instant::now();
        let options = CallOptions::new().timeout(Duration::from_millis(500));
        let err = bounded("refused", async {
            client.call_raw(raw_with("echo", "x", options)).await
        })
        .await
        .expect_err("nobody listens");
        assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
        assert!(!err.maybe_processed(), "{err:?}");
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    proxy.accept_new().await;
    let back = bounded("accepted again", client.call_raw(raw("echo", "back")))
        .await
        .expect("reconnected");
    assert_eq!(back.body().as_ref(), b"back");
    stop(client, server).await;
}

/// Pushes through tiny writes: 70 KB NOTIFY messages (CONTINUATION frames) arrive whole;
/// after an RST the client subscribes again on a new connection by itself, and pushes
/// flow again (those published in between are lost: pushes are at most once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_through_tiny_writes_survives_a_reset() {
    let server = serve(echo_routes()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    proxy.set_both(Faults::none().slice(1, 7));
    let client = client_for(proxy.addr())
        .max_connections(1)
        .build()
        .expect("build");
    let mut sub = bounded("subscribe", client.subscribe_raw("news.*"))
        .await
        .expect("subscribed");
    for i in 0..3 {
        let body = pattern(70_000 + i);
        let published = server
            .publish("news.a", FormatId::RAW, body.clone())
            .expect("publish");
        assert_eq!(published.delivered, 1);
        let push = bounded("a push", sub.next()).await.expect("a push");
        assert_eq!(push.topic(), "news.a");
        assert!(push.body() == &body, "push {i} came changed");
    }

    proxy.reset_all();
    // Until the new connection has subscribed, a publish reaches nobody (or the old
    // connection, not yet found dead by the server): publish until one arrives.
    let push = bounded("a push after the reset", async {
        loop {
            let _ = server.publish("news.b", FormatId::RAW, Bytes::from_static(b"after"));
            if let Ok(push) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                return push;
            }
        }
    })
    .await
    .expect("the subscription goes on");
    assert_eq!(push.topic(), "news.b");
    assert_eq!(push.body().as_ref(), b"after");
    assert!(sub.error().is_none());
    assert_eq!(proxy.stats().accepted, 2, "{:?}", proxy.stats());
    assert!(client.metrics().reconnects >= 1);
    drop(sub);
    stop(client, server).await;
}

/// A request whose bytes never fully left the client is certainly not processed when its
/// connection dies, and says so (it was reported "may have been processed" before).
///
/// A (8 MiB) is being written over a 64 KiB/s link; B (a few bytes) waits behind it in the
/// connection's write queue (only PING and PONG may come between a message's frames). An
/// RST ends the connection: the server received no whole request. Neither call may report
/// `maybe_processed()`; both, though not idempotent, may then be sent again, and each is
/// handled at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_queued_when_the_connection_dies_is_not_processed() {
    let (server, handled) = counting_echo().await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let client = client_for(proxy.addr())
        .max_connections(1)
        .timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(10))
        .retry(RetryConfig::default().backoff([Duration::from_millis(20); 3]))
        .build()
        .expect("build");
    bounded("warm-up", client.call_raw(raw("echo", "warm")))
        .await
        .expect("warm-up");
    proxy.set(Direction::ToServer, Faults::none().bandwidth(64 * 1024));
    let before = proxy.stats().to_server.forwarded;
    let big = {
        let client = client.clone();
        tokio::spawn(async move { client.call_raw(raw("echo", pattern(8 << 20))).await })
    };
    proxy
        .wait_until("the big request is on its way", |s| {
            s.to_server.forwarded > before + 1000
        })
        .await;
    let small = {
        let client = client.clone();
        tokio::spawn(async move { client.call_raw(raw("echo", "small")).await })
    };
    bounded("both in flight", async {
        while client.metrics().in_flight < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.clear();
    proxy.reset_all();
    let big = bounded("big", big).await.expect("task");
    let small = bounded("small", small).await.expect("task");
    assert_eq!(
        handled.load(Ordering::SeqCst) as usize,
        1 + usize::from(small.is_ok()) + usize::from(big.is_ok()),
        "each request handled at most once, and only when its call succeeded"
    );
    match small {
        Ok(back) => assert_eq!(back.body().as_ref(), b"small", "retried"),
        Err(err) => assert!(!err.maybe_processed(), "never written: {err:?}"),
    }
    match big {
        Ok(back) => assert_eq!(back.body().len(), 8 << 20, "retried"),
        Err(err) => assert!(!err.maybe_processed(), "half written: {err:?}"),
    }
    stop(client, server).await;
}

/// FINDING (fails today; run with `--ignored`): an upload that takes longer than the
/// heartbeat's interval + timeout kills its own connection when nothing else comes back.
///
/// The client receives nothing while it uploads 256 KiB at 64 KiB/s, so it sends a PING
/// after the interval; that PING sits behind the rest of the upload (in the kernel's
/// buffers and on the slow link), so its PONG cannot come back within the timeout, and the
/// client declares the connection dead ("nothing received for 2s after a PING") about
/// 2.5 s into a 4 s upload; the call fails as a lost connection, possibly processed. This
/// is what docs/protocol.md section 8 says to the letter; the consequence is that the heartbeat
/// timeout must exceed the longest transfer on the slowest link (with the defaults, 20 s:
/// a 16 MiB message below about 800 KiB/s fails every time). Counting the socket's write
/// progress as a sign of life, or starting the PONG's timeout only once the PING has left
/// the client's queue, would avoid it. [`a_slow_link_with_large_messages_is_kept_alive`]
/// passes because frames keep arriving the other way.
///
/// Tried and left alone (issue 12's note): write progress as life defeats the detection
/// of a one-way blackhole (the proxy keeps taking what the client writes), and progress
/// with a backlog in the writer helps only uploads larger than the kernel's socket
/// buffers, which absorb this 256 KiB at once while the PING still waits behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finding: a long upload with nothing coming back outlives the heartbeat"]
async fn finding_a_slow_upload_alone_is_killed_by_the_clients_own_heartbeat() {
    const SIZE: usize = 256 * 1024;
    let (interval, timeout) = (Duration::from_millis(500), Duration::from_secs(2));
    let server =
        serve(Server::builder().heartbeat(interval, timeout).route_raw(
            "upload",
            |_ctx, body: Bytes| async move {
                Ok(Reply::new((body.len() as u64).to_be_bytes().to_vec()))
            },
        ))
        .await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    proxy.set_both(Faults::none().bandwidth(64 * 1024));
    let client = client_for(proxy.addr())
        .max_connections(1)
        .heartbeat(interval, timeout)
        .timeout(BOUND)
        .attempt_timeout(BOUND)
        .build()
        .expect("build");
    let result = bounded("upload", client.call_raw(raw("upload", pattern(SIZE)))).await;
    let back = result.expect("the upload outlives the heartbeat");
    assert_eq!(back.body().as_ref(), (SIZE as u64).to_be_bytes());
    stop(client, server).await;
}
