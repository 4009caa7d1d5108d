//! The server over real loopback sockets, driven by a raw client that speaks the bytes of
//! docs/protocol.md (tests/common/mod.rs).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, WAIT, error, eventually, hex, response};
use mcp_codec::{
    Cancel, Envelope, ErrorCode, Flags, GoAway, GoAwayCode, Metadata, Notify, OwnedEnvelope,
    Response, format,
};
use mcp_format::{FormatId, Json};
use mcp_server::{Reply, ServerBuilder, ServerHandle, Status};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// What the test handlers let a test observe and control.
#[derive(Clone)]
struct Probe {
    /// Calls of any handler that started.
    ran: Arc<AtomicUsize>,
    /// Permits the `slow` handler waits for.
    gate: Arc<Semaphore>,
    /// `slow` handlers whose future was dropped before finishing.
    dropped: Arc<AtomicUsize>,
    /// Client NOTIFY messages handled by the `events.*` route.
    notifies: Arc<AtomicUsize>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            ran: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            dropped: Arc::default(),
            notifies: Arc::default(),
        }
    }
}

/// Sets a flag when dropped before `done` is set: proves the handler was stopped.
struct DropGuard {
    done: bool,
    dropped: Arc<AtomicUsize>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

fn routes(builder: ServerBuilder, probe: &Probe) -> ServerBuilder {
    let ran = probe.ran.clone();
    let slow = probe.clone();
    let notified = probe.notifies.clone();
    builder
        .route_raw("echo", move |_ctx, body| {
            ran.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Reply::new(body)) }
        })
        .route_raw("slow", move |_ctx, body| {
            let probe = slow.clone();
            async move {
                probe.ran.fetch_add(1, Ordering::SeqCst);
                let mut guard = DropGuard {
                    done: false,
                    dropped: probe.dropped.clone(),
                };
                let permit = probe.gate.acquire().await;
                permit.expect("gate closed").forget();
                guard.done = true;
                Ok(Reply::new(body))
            }
        })
        .route_raw("fail", |_ctx, _body| async {
            Err(Status::application(1234, "the application said no"))
        })
        .route_raw("internal", |_ctx, _body| async {
            Err(Status::internal("it broke"))
        })
        .route_raw("panic", |_ctx, _body| async {
            panic!("handler panic (expected by the test)")
        })
        // The same as `echo` and `panic`, after a first poll that returns Pending.
        .route_raw("later", |_ctx, body| async move {
            tokio::task::yield_now().await;
            Ok(Reply::new(body))
        })
        .route_raw("panic_later", |_ctx, _body| async {
            tokio::task::yield_now().await;
            panic!("handler panic after a yield (expected by the test)")
        })
        .route_raw("allmeta", |ctx, _body| async move {
            // Every entry of the metadata view, in order, as `key=value;`.
            let mut out = Vec::new();
            for (key, value) in ctx.metadata().iter() {
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value);
                out.push(b';');
            }
            assert_eq!(ctx.clone().metadata().len(), ctx.metadata().len());
            Ok(Reply::new(out))
        })
        .route_typed(
            "add",
            Json,
            |_ctx, add: Add| async move { Ok(add.a + add.b) },
        )
        .route_raw("meta", |ctx, _body| async move {
            // Echoes the trace context back as response metadata.
            let trace = ctx.traceparent().unwrap_or("none").to_owned();
            Ok(Reply::new(Bytes::from(ctx.method().to_owned())).with_meta("traceparent", trace))
        })
        .route_raw("badmeta", |_ctx, _body| async {
            Ok(Reply::empty().with_meta("Not A Key", "x"))
        })
        .route_notify_fn("events.*", move |ctx, body| {
            let notified = notified.clone();
            async move {
                assert_eq!(ctx.topic(), "events.created");
                assert_eq!(&body[..], b"payload");
                notified.fetch_add(1, Ordering::SeqCst);
            }
        })
}

async fn server_with(
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (ServerHandle, Probe) {
    let probe = Probe::default();
    let builder = configure(routes(mcp_server::Server::builder(), &probe));
    let handle = builder.bind("127.0.0.1:0").await.expect("bind");
    (handle, probe)
}

async fn server() -> (ServerHandle, Probe) {
    server_with(|b| b).await
}

async fn stop(handle: ServerHandle) {
    timeout(WAIT, handle.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown timed out")
        .expect("shutdown");
}

#[tokio::test]
async fn echo_matches_the_protocol_test_vectors() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    // docs/protocol.md section 9: REQUEST id 1, JSON, "echo", {"msg":"hi"} ...
    c.send_raw(&hex(
        "4d 43 01 01 00 18 00 00 00 01 00 01 04 65 63 68 6f 00 7b 22 6d 73 67 22 3a 22 68 69 22 7d 9a f9",
    ))
    .await;
    // ... is answered with exactly the RESPONSE vector's bytes.
    let expected =
        hex("4d 43 01 02 00 13 00 00 00 01 00 01 00 7b 22 6d 73 67 22 3a 22 68 69 22 7d fc 8a");
    let mut got = vec![0u8; expected.len()];
    timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(c.stream_mut(), &mut got),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got, expected);
    stop(handle).await;
}

#[tokio::test]
async fn unknown_method_is_error_2_with_the_vector_bytes() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::JSON, "nope", b"{}").await;
    let expected =
        hex("4d 43 01 04 00 14 00 00 00 01 00 02 6e 6f 20 73 75 63 68 20 6d 65 74 68 6f 64 36 3b");
    let mut got = vec![0u8; expected.len()];
    timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(c.stream_mut(), &mut got),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got, expected);
    stop(handle).await;
}

#[tokio::test]
async fn reserved_format_is_error_3_and_answers_use_the_request_format() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, 3, "echo", b"x").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (1, ErrorCode::UNSUPPORTED_FORMAT));
    c.request(2, 127, "echo", b"x").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (2, ErrorCode::UNSUPPORTED_FORMAT));
    assert_eq!(probe.ran.load(Ordering::SeqCst), 0);
    // Application-defined and standard formats are echoed in the request's format.
    for (id, fmt) in [(3, 200u8), (4, format::RAW), (5, format::PROTOBUF)] {
        c.request(id, fmt, "echo", b"abc").await;
        assert_eq!(response(c.recv().await), (id, fmt, b"abc".to_vec()));
    }
    stop(handle).await;
}

#[tokio::test]
async fn expired_deadline_is_error_4_and_the_handler_never_runs() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let zero = 0u32.to_be_bytes();
    c.request_with_meta(1, format::RAW, "echo", &[("deadline", &zero)], b"x")
        .await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (1, ErrorCode::DEADLINE_EXCEEDED));
    // The smallest of repeated deadlines counts; a value that is not 4 bytes is ignored.
    let long = 60_000u32.to_be_bytes();
    c.request_with_meta(
        2,
        format::RAW,
        "echo",
        &[
            ("deadline", &long),
            ("deadline", &zero),
            ("deadline", b"xx"),
        ],
        b"x",
    )
    .await;
    assert_eq!(error(c.recv().await).1, ErrorCode::DEADLINE_EXCEEDED);
    assert_eq!(probe.ran.load(Ordering::SeqCst), 0, "the handler ran");
    // A deadline still in the future lets the handler run.
    c.request_with_meta(
        3,
        format::RAW,
        "echo",
        &[("deadline", &long), ("deadline", b"xx")],
        b"y",
    )
    .await;
    assert_eq!(response(c.recv().await), (3, format::RAW, b"y".to_vec()));
    assert_eq!(probe.ran.load(Ordering::SeqCst), 1);
    stop(handle).await;
}

#[tokio::test]
async fn a_deadline_passing_while_the_handler_runs_is_error_4_and_stops_it() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let ms = 50u32.to_be_bytes();
    c.request_with_meta(1, format::RAW, "slow", &[("deadline", &ms)], b"x")
        .await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (1, ErrorCode::DEADLINE_EXCEEDED));
    eventually(|| probe.dropped.load(Ordering::SeqCst) == 1).await;
    stop(handle).await;
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_are_error_5() {
    let (handle, probe) = server_with(|b| b.max_in_flight(2)).await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "slow", b"1").await;
    c.request(2, format::RAW, "slow", b"2").await;
    c.request(3, format::RAW, "slow", b"3").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (3, ErrorCode::OVERLOADED));
    probe.gate.add_permits(2);
    let mut ids = vec![response(c.recv().await).0, response(c.recv().await).0];
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    // Slots are free again.
    c.request(4, format::RAW, "echo", b"4").await;
    assert_eq!(response(c.recv().await).0, 4);
    stop(handle).await;
}

#[tokio::test]
async fn goaway_carries_last_id_and_later_requests_are_error_6() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(5, format::RAW, "slow", b"five").await;
    c.request(9, format::RAW, "nope", b"").await;
    assert_eq!(error(c.recv().await).0, 9);
    let shutdown = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.shutdown(Duration::from_secs(30)).await })
    };
    match c.recv().await {
        Some(OwnedEnvelope::GoAway {
            last_id,
            code,
            reason,
        }) => {
            assert_eq!(last_id, 9, "the last request that arrived");
            assert_eq!(code, GoAwayCode::SHUTTING_DOWN);
            assert!(!reason.is_empty());
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    c.request(10, format::RAW, "echo", b"late").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (10, ErrorCode::UNAVAILABLE));
    assert_eq!(
        probe.ran.load(Ordering::SeqCst),
        1,
        "request 10 was processed"
    );
    // The request in flight before the GOAWAY is still answered, then the server closes.
    probe.gate.add_permits(1);
    assert_eq!(response(c.recv().await), (5, format::RAW, b"five".to_vec()));
    c.expect_closed().await;
    timeout(WAIT, shutdown).await.unwrap().unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(handle.local_addr())
            .await
            .is_err(),
        "the listener still accepts after shutdown"
    );
}

#[tokio::test]
async fn shutdown_grace_running_out_answers_error_8_and_stops_handlers() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "slow", b"x").await;
    eventually(|| probe.ran.load(Ordering::SeqCst) == 1).await;
    let shutdown = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.shutdown(Duration::from_millis(100)).await })
    };
    assert!(matches!(
        c.recv().await,
        Some(OwnedEnvelope::GoAway { last_id: 1, .. })
    ));
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (1, ErrorCode::CANCELLED));
    c.expect_closed().await;
    timeout(WAIT, shutdown).await.unwrap().unwrap().unwrap();
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn too_large_request_is_error_7_and_the_connection_stays_usable() {
    let (handle, probe) = server_with(|b| b.max_message_len(100_000)).await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    // Exactly the maximum is allowed.
    let max = vec![7u8; 100_000];
    c.request(1, format::RAW, "echo", &max).await;
    assert_eq!(response(c.recv().await), (1, format::RAW, max));
    // One byte more, in several frames: ERROR 7 with the id, the rest skipped.
    let over = vec![8u8; 200_001];
    c.request(2, format::RAW, "echo", &over).await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (2, ErrorCode::TOO_LARGE));
    // A single frame over the limit too.
    let (small, _) = server_with(|b| b.max_message_len(10)).await;
    let mut c2 = RawClient::connect(small.local_addr()).await;
    c2.request(3, format::RAW, "echo", &[1u8; 11]).await;
    assert_eq!(error(c2.recv().await).1, ErrorCode::TOO_LARGE);
    c2.ping_pong(1).await;
    // A NOTIFY past the limit cannot be refused by id: ERROR id 0 code 7, then close.
    c2.send(Envelope::Notify(Notify {
        flags: Flags::NONE,
        format: format::RAW,
        topic: "events.created",
        meta: Metadata::EMPTY,
        body: &[0u8; 11],
    }))
    .await;
    let (id, code, _) = error(c2.recv().await);
    assert_eq!((id, code), (0, ErrorCode::TOO_LARGE));
    c2.expect_closed().await;
    stop(small).await;
    c.request(4, format::RAW, "echo", b"still here").await;
    assert_eq!(
        response(c.recv().await),
        (4, format::RAW, b"still here".to_vec())
    );
    assert_eq!(probe.ran.load(Ordering::SeqCst), 2);
    stop(handle).await;
}

#[tokio::test]
async fn cancel_stops_the_handler_and_nothing_is_sent_for_it() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "slow", b"x").await;
    eventually(|| probe.ran.load(Ordering::SeqCst) == 1).await;
    c.send(Envelope::Cancel(Cancel { id: 1 })).await;
    eventually(|| probe.dropped.load(Ordering::SeqCst) == 1).await;
    // Letting a handler finish now cannot produce an answer for id 1.
    probe.gate.add_permits(1);
    // CANCEL of an unknown id is ignored.
    c.send(Envelope::Cancel(Cancel { id: 77 })).await;
    c.ping_pong(1).await;
    assert!(
        c.recv_within(Duration::from_millis(100)).await.is_err(),
        "something was sent for the cancelled request"
    );
    // The id may be used again and is answered normally.
    c.request(1, format::RAW, "echo", b"again").await;
    assert_eq!(
        response(c.recv().await),
        (1, format::RAW, b"again".to_vec())
    );
    stop(handle).await;
}

/// What the `watch` handler reports: which request, and which of its tokens saw the
/// cancellation (`asked_before`: taken while the handler ran, if its body is `ask`;
/// `asked_after`: asked for through a clone of the context once the handler's future had
/// been dropped, first if the body is not `ask`).
type Seen = (u32, &'static str);

/// A server with `watch`, a handler that never finishes on its own, and `keep`, which
/// finishes at once, both handing a clone of their context to other tasks.
async fn token_server() -> (ServerHandle, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let keep_tx = tx.clone();
    let (handle, _) = server_with(move |b| {
        b.route_raw("watch", move |ctx, body| {
            let tx = tx.clone();
            async move {
                let id = ctx.id();
                if &body[..] == b"ask" {
                    let before = ctx.cancellation().clone();
                    let seen = tx.clone();
                    tokio::spawn(async move {
                        before.cancelled().await;
                        let _ = seen.send((id, "asked_before"));
                    });
                }
                // Told when this future is dropped; only then is the token asked for.
                let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
                let later = ctx.clone();
                tokio::spawn(async move {
                    let _ = dropped_rx.await;
                    if timeout(Duration::from_millis(100), later.cancelled())
                        .await
                        .is_ok()
                    {
                        let _ = tx.send((id, "asked_after"));
                    }
                });
                let _told_on_drop = dropped_tx;
                std::future::pending::<Result<Reply, Status>>().await
            }
        })
        .route_raw("keep", move |ctx, body| {
            let tx = keep_tx.clone();
            async move {
                tokio::spawn(async move {
                    if timeout(Duration::from_millis(500), ctx.cancelled())
                        .await
                        .is_ok()
                    {
                        let _ = tx.send((ctx.id(), "cancelled"));
                    }
                });
                Ok(Reply::new(body))
            }
        })
    })
    .await;
    (handle, rx)
}

/// The tokens of request `id` that saw the cancellation, in any order.
async fn cancelled_tokens(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    id: u32,
    expected: &[&'static str],
) {
    let mut seen = Vec::new();
    for _ in expected {
        let (got, which) = timeout(WAIT, rx.recv())
            .await
            .expect("token not cancelled")
            .expect("channel open");
        assert_eq!(got, id);
        seen.push(which);
    }
    seen.sort_unstable();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn cancel_and_deadline_cancel_the_token_whenever_it_is_asked_for() {
    let (handle, mut rx) = token_server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    // Asked for while the handler runs, and (the same token) after it was stopped.
    c.request(1, format::RAW, "watch", b"ask").await;
    c.ping_pong(1).await;
    c.send(Envelope::Cancel(Cancel { id: 1 })).await;
    cancelled_tokens(&mut rx, 1, &["asked_after", "asked_before"]).await;
    // Asked for only after the stop: the token is already cancelled.
    c.request(2, format::RAW, "watch", b"").await;
    c.ping_pong(2).await;
    c.send(Envelope::Cancel(Cancel { id: 2 })).await;
    cancelled_tokens(&mut rx, 2, &["asked_after"]).await;

    let ms = 50u32.to_be_bytes();
    for (id, body, expected) in [
        (3, &b"ask"[..], &["asked_after", "asked_before"][..]),
        (4, &b""[..], &["asked_after"][..]),
    ] {
        c.request_with_meta(id, format::RAW, "watch", &[("deadline", &ms)], body)
            .await;
        let (got, code, _) = error(c.recv().await);
        assert_eq!((got, code), (id, ErrorCode::DEADLINE_EXCEEDED));
        cancelled_tokens(&mut rx, id, expected).await;
    }

    // A request answered at once is over, not abandoned: its token is never cancelled,
    // not by a CANCEL that comes after its answer, nor by the cancellation of the request
    // after it, nor by the connection closing.
    c.request(5, format::RAW, "keep", b"k").await;
    assert_eq!(response(c.recv().await), (5, format::RAW, b"k".to_vec()));
    c.request(6, format::RAW, "watch", b"").await;
    c.ping_pong(6).await;
    c.send(Envelope::Cancel(Cancel { id: 6 })).await;
    cancelled_tokens(&mut rx, 6, &["asked_after"]).await;
    c.send(Envelope::Cancel(Cancel { id: 5 })).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        rx.try_recv().is_err(),
        "a finished request's token was cancelled"
    );
    stop(handle).await;
}

#[tokio::test]
async fn malformed_request_with_readable_id_is_error_1_and_the_connection_stays() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    // REQUEST id 7 with a reserved flag bit (0x02), otherwise well formed.
    let payload = [0, 0, 0, 7, 0x02, 0, 4, b'e', b'c', b'h', b'o', 0];
    c.send_raw(&frame(0x01, &payload)).await;
    let (id, code, message) = error(c.recv().await);
    assert_eq!((id, code), (7, ErrorCode::MALFORMED));
    assert!(message.contains("reserved"), "{message}");
    // REQUEST id 8 whose method is not UTF-8.
    let payload = [0, 0, 0, 8, 0, 0, 1, 0xff, 0];
    c.send_raw(&frame(0x01, &payload)).await;
    assert_eq!(error(c.recv().await).0, 8);
    // A bad metadata key.
    let payload = [0, 0, 0, 9, 0, 0, 1, b'm', 1, 1, b'K', 0, 0];
    c.send_raw(&frame(0x01, &payload)).await;
    assert_eq!(error(c.recv().await).0, 9);
    c.ping_pong(3).await;
    stop(handle).await;
}

/// A malformed REQUEST with MORE set (flags exactly 0x01): ERROR 1 with its id, then its
/// CONTINUATION frames are skipped and the connection stays (docs/protocol.md reading 2).
#[tokio::test]
async fn a_malformed_request_with_more_is_error_1_and_its_continuations_are_skipped() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    // REQUEST id 11, MORE, then two CONTINUATIONs: a bad metadata key, a method that is
    // not UTF-8, an empty method, metadata cut short.
    let cases: [&[u8]; 4] = [
        &[0, 0, 0, 11, 0x01, 0, 1, b'm', 1, 1, b'K', 0, 0, b'x'],
        &[0, 0, 0, 11, 0x01, 0, 1, 0xff, 0, b'x'],
        &[0, 0, 0, 11, 0x01, 0, 0, 0, b'x'],
        &[0, 0, 0, 11, 0x01, 0, 1, b'm', 2, 1, b'k'],
    ];
    for (i, payload) in cases.into_iter().enumerate() {
        c.send_raw(&frame(0x01, payload)).await;
        c.send_raw(&frame(0x09, &[0x01, b'y', b'y'])).await;
        c.send_raw(&frame(0x09, &[0x00, b'z'])).await;
        let (id, code, _) = error(c.recv().await);
        assert_eq!((id, code), (11, ErrorCode::MALFORMED), "case {i}");
        c.ping_pong(4 + i as u64).await;
    }
    c.request(12, format::RAW, "echo", b"still here").await;
    assert_eq!(
        response(c.recv().await),
        (12, format::RAW, b"still here".to_vec())
    );
    stop(handle).await;
}

#[tokio::test]
async fn malformed_frame_without_readable_id_closes_with_error_0() {
    for (frame_type, payload) in [
        (0x01u8, vec![0u8, 0, 0]),                  // REQUEST too short for an id
        (0x01, vec![0, 0, 0, 0, 0, 0, 1, b'm', 0]), // REQUEST id 0
        (0x05, vec![1, 2, 3]),                      // PING not 8 bytes
        (0x03, vec![0, 0, 0]),                      // NOTIFY with an empty topic
        (0x09, vec![0, 1]),                         // CONTINUATION without a message
    ] {
        let (handle, _) = server().await;
        let mut c = RawClient::connect(handle.local_addr()).await;
        c.send_raw(&frame(frame_type, &payload)).await;
        let (id, code, _) = error(c.recv().await);
        assert_eq!(
            (id, code),
            (0, ErrorCode::MALFORMED),
            "type {frame_type:#04x}"
        );
        c.expect_closed().await;
        stop(handle).await;
    }
}

#[tokio::test]
async fn bad_crc_is_error_0_code_1_then_close() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let mut bytes = hex("4d 43 01 05 00 08 00 00 00 00 00 00 00 01 37 5c");
    bytes[15] ^= 0xff;
    c.send_raw(&bytes).await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (0, ErrorCode::MALFORMED));
    c.expect_closed().await;
    eventually(|| handle.stats().protocol_errors == 1).await;
    stop(handle).await;
}

#[tokio::test]
async fn bad_magic_and_version_close_too() {
    let (handle, _) = server().await;
    for bytes in [b"XX\x01\x05".to_vec(), b"MC\x02\x05".to_vec()] {
        let mut c = RawClient::connect(handle.local_addr()).await;
        c.send_raw(&bytes).await;
        let (id, code, _) = error(c.recv().await);
        assert_eq!((id, code), (0, ErrorCode::MALFORMED));
        c.expect_closed().await;
    }
    stop(handle).await;
}

#[tokio::test]
async fn duplicate_in_flight_id_closes_the_connection() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "slow", b"x").await;
    eventually(|| probe.ran.load(Ordering::SeqCst) == 1).await;
    c.request(1, format::RAW, "echo", b"y").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (0, ErrorCode::MALFORMED));
    c.expect_closed().await;
    // The abandoned handler was stopped.
    eventually(|| probe.dropped.load(Ordering::SeqCst) == 1).await;
    stop(handle).await;
}

#[tokio::test]
async fn response_from_a_client_is_a_role_error() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.send(Envelope::Response(Response {
        id: 1,
        flags: Flags::NONE,
        format: 0,
        meta: Metadata::EMPTY,
        body: b"",
    }))
    .await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (0, ErrorCode::MALFORMED));
    c.expect_closed().await;
    stop(handle).await;
}

#[tokio::test]
async fn ping_is_answered_with_the_same_bytes() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.send_raw(&hex("4d 43 01 05 00 08 00 00 00 00 00 00 00 01 37 5c"))
        .await;
    match c.recv().await {
        Some(OwnedEnvelope::Pong(p)) => assert_eq!(p.nonce, 1u64.to_be_bytes()),
        other => panic!("expected PONG, got {other:?}"),
    }
    c.ping_pong(0xdead_beef_0000_0001).await;
    // Unknown frame types are skipped.
    c.send_raw(&frame(0x0a, b"future")).await;
    c.ping_pong(2).await;
    stop(handle).await;
}

#[tokio::test]
async fn subscriptions_exact_and_prefix_one_copy_per_connection() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let mut other = RawClient::connect(handle.local_addr()).await;
    // The topic is the body's bytes whatever the format byte.
    c.request(1, format::JSON, "$subscribe", b"orders.created")
        .await;
    assert_eq!(response(c.recv().await), (1, format::JSON, Vec::new()));
    c.request(2, format::RAW, "$subscribe", b"orders.*").await;
    assert_eq!(response(c.recv().await), (2, format::RAW, Vec::new()));
    other
        .request(1, format::RAW, "$subscribe", b"users.*")
        .await;
    assert_eq!(response(other.recv().await).0, 1);

    let published = handle
        .publish(
            "orders.created",
            FormatId::JSON,
            Bytes::from_static(b"{\"n\":1}"),
        )
        .unwrap();
    assert_eq!((published.delivered, published.dropped), (1, 0));
    match c.recv().await {
        Some(OwnedEnvelope::Notify(n)) => {
            assert_eq!(n.topic, "orders.created");
            assert_eq!(n.format, format::JSON);
            assert_eq!(n.body, b"{\"n\":1}");
        }
        other => panic!("expected NOTIFY, got {other:?}"),
    }
    // No second copy: the next message is the PONG.
    c.ping_pong(1).await;

    assert_eq!(
        handle
            .publish("orders.deleted", FormatId::RAW, &b"d"[..])
            .unwrap()
            .delivered,
        1
    );
    assert!(
        matches!(c.recv().await, Some(OwnedEnvelope::Notify(n)) if n.topic == "orders.deleted")
    );
    assert_eq!(
        handle
            .publish("orders", FormatId::RAW, &b""[..])
            .unwrap()
            .delivered,
        0
    );
    assert_eq!(
        handle
            .publish("users.x", FormatId::RAW, &b"u"[..])
            .unwrap()
            .delivered,
        1
    );
    assert!(matches!(other.recv().await, Some(OwnedEnvelope::Notify(n)) if n.topic == "users.x"));

    // Unsubscribing the prefix leaves the exact subscription.
    c.request(3, format::RAW, "$unsubscribe", b"orders.*").await;
    assert_eq!(response(c.recv().await).0, 3);
    assert_eq!(
        handle
            .publish("orders.deleted", FormatId::RAW, &b""[..])
            .unwrap()
            .delivered,
        0
    );
    assert_eq!(
        handle
            .publish("orders.created", FormatId::RAW, &b""[..])
            .unwrap()
            .delivered,
        1
    );
    assert!(matches!(c.recv().await, Some(OwnedEnvelope::Notify(_))));

    // Typed publish.
    c.request(4, format::RAW, "$subscribe", b"*").await;
    assert_eq!(response(c.recv().await).0, 4);
    handle.publish_typed("sum", &Json, &[1, 2]).unwrap();
    assert!(matches!(c.recv().await, Some(OwnedEnvelope::Notify(n)) if n.body == b"[1,2]"));

    // An empty topic is refused with the request's id; the connection stays.
    c.request(5, format::RAW, "$subscribe", b"").await;
    assert_eq!(error(c.recv().await).0, 5);
    assert!(handle.publish("", FormatId::RAW, &b""[..]).is_err());
    // Closing the connection removes its subscriptions.
    drop(c);
    eventually(|| {
        handle
            .publish("orders.created", FormatId::RAW, &b""[..])
            .is_ok_and(|p| p.delivered == 0)
    })
    .await;
    stop(handle).await;
}

#[tokio::test]
async fn a_slow_subscriber_loses_notifications_and_is_finally_disconnected() {
    let (handle, _) = server_with(|b| {
        b.write_queue_limit(1024)
            .write_stall_timeout(Duration::from_millis(300))
    })
    .await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "$subscribe", b"firehose").await;
    assert_eq!(response(c.recv().await).0, 1);
    // The client reads nothing more. The publisher never waits: once the socket buffers
    // and the queue are full, NOTIFY frames are dropped for this subscriber.
    let body = Bytes::from(vec![0u8; 60_000]);
    let mut dropped = 0;
    for _ in 0..20_000 {
        dropped += handle
            .publish("firehose", FormatId::RAW, body.clone())
            .unwrap()
            .dropped;
        if dropped > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        dropped > 0,
        "publishing never dropped for a client that does not read"
    );
    assert!(handle.stats().published_dropped > 0);
    // The stalled writer closes the connection, which removes the subscription.
    eventually(|| handle.stats().open_connections == 0).await;
    assert_eq!(
        handle
            .publish("firehose", FormatId::RAW, body)
            .unwrap()
            .delivered,
        0
    );
    stop(handle).await;
}

#[tokio::test]
async fn four_mib_request_and_response_through_continuation() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let body: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    c.request(1, format::RAW, "echo", &body).await;
    let before = c.frames;
    let (id, fmt, got) = response(c.recv().await);
    assert_eq!((id, fmt), (1, format::RAW));
    assert!(got == body, "the 4 MiB body came back different");
    assert!(
        c.frames - before >= 64,
        "the response was not split into CONTINUATION frames"
    );
    stop(handle).await;
}

#[tokio::test]
async fn heartbeat_pings_a_silent_client_then_closes() {
    let (handle, _) =
        server_with(|b| b.heartbeat(Duration::from_millis(200), Duration::from_millis(200))).await;
    // A client that answers PINGs stays.
    let mut alive = RawClient::connect(handle.local_addr()).await;
    let alive = tokio::spawn(async move {
        for _ in 0..3 {
            match alive.recv().await {
                Some(OwnedEnvelope::Ping(p)) => {
                    alive
                        .send(Envelope::Pong(mcp_codec::Pong { nonce: p.nonce }))
                        .await;
                }
                other => panic!("expected PING, got {other:?}"),
            }
        }
        alive
    });
    // A silent one gets PING, then is closed.
    let mut silent = RawClient::connect(handle.local_addr()).await;
    let start = tokio::time::Instant::now();
    match silent.recv().await {
        Some(OwnedEnvelope::Ping(_)) => {}
        other => panic!("expected PING, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(150));
    silent.expect_closed().await;
    let mut alive = timeout(WAIT, alive).await.unwrap().unwrap();
    alive.ping_pong(9).await;
    eventually(|| handle.stats().heartbeat_timeouts == 1).await;
    stop(handle).await;
}

#[tokio::test]
async fn handler_failures_are_error_9_or_the_application_code() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "fail", b"").await;
    assert_eq!(
        error(c.recv().await),
        (1, ErrorCode(1234), "the application said no".to_owned())
    );
    c.request(2, format::RAW, "internal", b"").await;
    assert_eq!(error(c.recv().await).1, ErrorCode::INTERNAL);
    c.request(3, format::RAW, "panic", b"").await;
    assert_eq!(error(c.recv().await).1, ErrorCode::INTERNAL);
    c.ping_pong(1).await;
    stop(handle).await;
}

#[tokio::test]
async fn typed_routes_decode_and_check_the_format() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::JSON, "add", br#"{"a":2,"b":40}"#)
        .await;
    assert_eq!(response(c.recv().await), (1, format::JSON, b"42".to_vec()));
    c.request(2, format::PROTOBUF, "add", b"\x08\x01").await;
    assert_eq!(error(c.recv().await).1, ErrorCode::UNSUPPORTED_FORMAT);
    c.request(3, format::JSON, "add", b"{not json").await;
    assert_eq!(error(c.recv().await).1, ErrorCode::MALFORMED);
    stop(handle).await;
}

#[tokio::test]
async fn client_notify_goes_to_the_topic_handler_and_is_not_answered() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let notify = |topic| {
        Envelope::Notify(Notify {
            flags: Flags::NONE,
            format: format::RAW,
            topic,
            meta: Metadata::EMPTY,
            body: b"payload",
        })
    };
    c.send(notify("events.created")).await;
    c.send(notify("nobody.listens")).await;
    eventually(|| probe.notifies.load(Ordering::SeqCst) == 1).await;
    c.ping_pong(1).await;
    eventually(|| handle.stats().notifies_unrouted == 1).await;
    stop(handle).await;
}

#[tokio::test]
async fn client_goaway_closes_after_in_flight_answers() {
    let (handle, probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "slow", b"x").await;
    c.send(Envelope::GoAway(GoAway {
        last_id: 0,
        code: GoAwayCode::SHUTTING_DOWN,
        reason: "",
    }))
    .await;
    c.request(2, format::RAW, "echo", b"y").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (2, ErrorCode::UNAVAILABLE));
    probe.gate.add_permits(1);
    assert_eq!(response(c.recv().await).0, 1);
    c.expect_closed().await;
    stop(handle).await;
}

/// A REQUEST in the same write as the client's GOAWAY, with nothing in flight: it is
/// answered ERROR 6 (docs/protocol.md section 7), then the connection closes; before, the
/// server closed at once and the request got no answer at all.
#[tokio::test]
async fn a_request_behind_the_clients_goaway_in_the_same_write_is_answered_error_6() {
    let (handle, _probe) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let mut bytes = Vec::new();
    Envelope::GoAway(GoAway {
        last_id: 0,
        code: GoAwayCode::SHUTTING_DOWN,
        reason: "",
    })
    .encode_to_vec(&mut bytes)
    .unwrap();
    for id in [7u32, 8] {
        Envelope::Request(mcp_codec::Request {
            id,
            flags: Flags::NONE,
            format: format::RAW,
            method: "echo",
            meta: Metadata::EMPTY,
            body: b"late",
        })
        .encode_to_vec(&mut bytes)
        .unwrap();
    }
    c.send_raw(&bytes).await;
    for id in [7u32, 8] {
        let (got, code, _) = error(c.recv().await);
        assert_eq!((got, code), (id, ErrorCode::UNAVAILABLE));
    }
    c.expect_closed().await;
    stop(handle).await;
}

#[tokio::test]
async fn graceful_shutdown_answers_in_flight_requests_then_closes() {
    let (handle, probe) = server().await;
    let mut clients = Vec::new();
    for i in 0..3u32 {
        let mut c = RawClient::connect(handle.local_addr()).await;
        c.request(i + 1, format::RAW, "slow", &i.to_be_bytes())
            .await;
        clients.push(c);
    }
    eventually(|| probe.ran.load(Ordering::SeqCst) == 3).await;
    let shutdown = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.shutdown(Duration::from_secs(30)).await })
    };
    for c in &mut clients {
        assert!(matches!(c.recv().await, Some(OwnedEnvelope::GoAway { .. })));
    }
    assert!(!shutdown.is_finished());
    probe.gate.add_permits(3);
    for (i, c) in clients.iter_mut().enumerate() {
        let i = i as u32;
        assert_eq!(
            response(c.recv().await),
            (i + 1, format::RAW, i.to_be_bytes().to_vec())
        );
        c.expect_closed().await;
    }
    timeout(WAIT, shutdown).await.unwrap().unwrap().unwrap();
    assert_eq!(handle.stats().open_connections, 0);
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 0);
}

/// A frame with any type byte and payload, with a correct CRC.
fn frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; payload.len() + mcp_codec::FRAME_OVERHEAD];
    let n = mcp_codec::Frame::with_type_byte(frame_type, payload)
        .encode(&mut out)
        .unwrap();
    out.truncate(n);
    out
}

#[tokio::test]
async fn clients_past_the_connection_limit_get_goaway_overloaded() {
    let (handle, _) = server_with(|b| b.max_connections(1)).await;
    let mut first = RawClient::connect(handle.local_addr()).await;
    first.ping_pong(1).await;
    let mut second = RawClient::connect(handle.local_addr()).await;
    match second.recv().await {
        Some(OwnedEnvelope::GoAway { last_id, code, .. }) => {
            assert_eq!((last_id, code), (0, GoAwayCode::OVERLOADED));
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    second.expect_closed().await;
    first.ping_pong(2).await;
    assert_eq!(handle.stats().refused_connections, 1);
    // Once the first leaves, a new client is served.
    drop(first);
    eventually(|| handle.stats().open_connections == 0).await;
    let mut third = RawClient::connect(handle.local_addr()).await;
    third.ping_pong(3).await;
    stop(handle).await;
}

#[tokio::test]
async fn metadata_reaches_the_handler_and_the_answer() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.request_with_meta(1, format::RAW, "meta", &[("traceparent", trace)], b"")
        .await;
    match c.recv().await {
        Some(OwnedEnvelope::Response(r)) => {
            assert_eq!(r.body, b"meta");
            assert_eq!(r.meta, vec![("traceparent".to_owned(), trace.to_vec())]);
        }
        other => panic!("expected RESPONSE, got {other:?}"),
    }
    // An answer whose metadata cannot be encoded is the server's failure: ERROR 9.
    c.request(2, format::RAW, "badmeta", b"").await;
    let (id, code, _) = error(c.recv().await);
    assert_eq!((id, code), (2, ErrorCode::INTERNAL));
    c.ping_pong(1).await;
    stop(handle).await;
}

#[tokio::test]
async fn handlers_finishing_at_once_or_after_waiting_are_answered_alike() {
    let (handle, _) = server().await;
    let before = handle.stats().requests;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let deadline = 5000u32.to_be_bytes();
    let meta: &[(&str, &[u8])] = &[("deadline", &deadline)];
    // `echo` and `panic` finish in their first poll; `later` and `panic_later` wait first.
    for (id, method) in [(1, "echo"), (2, "later"), (3, "panic"), (4, "panic_later")] {
        c.request_with_meta(id, format::RAW, method, meta, method.as_bytes())
            .await;
    }
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..4 {
        match c.recv().await {
            Some(OwnedEnvelope::Response(r)) => answers.insert(r.id, Ok(r.body)),
            Some(OwnedEnvelope::Error { id, code, .. }) => answers.insert(id, Err(code)),
            other => panic!("expected an answer, got {other:?}"),
        };
    }
    assert_eq!(answers[&1], Ok(b"echo".to_vec()));
    assert_eq!(answers[&2], Ok(b"later".to_vec()));
    assert_eq!(answers[&3], Err(ErrorCode::INTERNAL));
    assert_eq!(answers[&4], Err(ErrorCode::INTERNAL));
    assert_eq!(handle.stats().requests - before, 4);
    // CANCEL of requests already answered (at once, or from their task) is ignored, and
    // their ids can be used again.
    c.send(Envelope::Cancel(Cancel { id: 1 })).await;
    c.send(Envelope::Cancel(Cancel { id: 2 })).await;
    c.ping_pong(1).await;
    c.request(1, format::RAW, "later", b"again").await;
    assert_eq!(
        response(c.recv().await),
        (1, format::RAW, b"again".to_vec())
    );
    c.request(2, format::RAW, "echo", b"again").await;
    assert_eq!(
        response(c.recv().await),
        (2, format::RAW, b"again".to_vec())
    );
    // Nothing stays in flight: a client GOAWAY closes the connection at once.
    c.send(Envelope::GoAway(GoAway {
        last_id: 0,
        code: GoAwayCode::SHUTTING_DOWN,
        reason: "",
    }))
    .await;
    c.expect_closed().await;
    stop(handle).await;
}

/// A handler written against the trait, as an application would, rather than a closure.
struct Upper {
    /// Wait once before answering (the handler then goes on in a task of its own).
    wait: bool,
}

#[async_trait::async_trait]
impl mcp_server::Handler for Upper {
    async fn call(&self, ctx: mcp_server::RequestContext, body: Bytes) -> Result<Reply, Status> {
        if self.wait {
            tokio::task::yield_now().await;
        }
        if &body[..] == b"panic" {
            panic!("handler panic (expected by the test)");
        }
        let mut out = body.to_ascii_uppercase();
        out.extend_from_slice(ctx.method().as_bytes());
        Ok(Reply::new(out))
    }
}

#[tokio::test]
async fn trait_handlers_are_answered_like_closures() {
    let (handle, _) = server_with(|b| {
        b.route("upper", Upper { wait: false })
            .route("upper_later", Upper { wait: true })
    })
    .await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "upper", b"a.").await;
    assert_eq!(
        response(c.recv().await),
        (1, format::RAW, b"A.upper".to_vec())
    );
    c.request(2, format::RAW, "upper_later", b"b.").await;
    assert_eq!(
        response(c.recv().await),
        (2, format::RAW, b"B.upper_later".to_vec())
    );
    for (id, method) in [(3, "upper"), (4, "upper_later")] {
        c.request(id, format::RAW, method, b"panic").await;
        let (got, code, _) = error(c.recv().await);
        assert_eq!((got, code), (id, ErrorCode::INTERNAL));
    }
    stop(handle).await;
}

#[tokio::test]
async fn the_metadata_view_has_every_entry_in_wire_order() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let meta: &[(&str, &[u8])] = &[("b", b"1"), ("a", b"2"), ("b", b"3"), ("empty", b"")];
    c.request_with_meta(1, format::RAW, "allmeta", meta, b"")
        .await;
    assert_eq!(
        response(c.recv().await),
        (1, format::RAW, b"b=1;a=2;b=3;empty=;".to_vec())
    );
    c.request(2, format::RAW, "allmeta", b"").await;
    assert_eq!(response(c.recv().await), (2, format::RAW, Vec::new()));
    stop(handle).await;
}

#[tokio::test]
async fn a_client_that_reads_late_still_gets_every_answer() {
    let (handle, _) = server_with(|b| b.write_queue_limit(64 * 1024)).await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    // More answers than the socket buffers hold: the server's queue fills, it stops
    // reading, and goes on once the client reads.
    const N: u32 = 512;
    let body = vec![7u8; 32 * 1024];
    let mut requests = Vec::new();
    for id in 1..=N {
        let method = if id % 2 == 0 { "echo" } else { "later" };
        Envelope::Request(mcp_codec::Request {
            id,
            flags: Flags::NONE,
            format: format::RAW,
            method,
            meta: Metadata::EMPTY,
            body: &body,
        })
        .encode_to_vec(&mut requests)
        .unwrap();
    }
    let (mut rd, mut wr) = c.stream_mut().split();
    let write = async {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&requests).await.unwrap();
    };
    let read = async {
        use tokio::io::AsyncReadExt;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut decoder = mcp_codec::StreamDecoder::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(frame) = decoder.next_frame().unwrap() {
                match OwnedEnvelope::from_envelope(&Envelope::parse(frame).unwrap()) {
                    OwnedEnvelope::Response(r) => {
                        assert_eq!(r.body.len(), body.len());
                        assert!(seen.insert(r.id), "id {} answered twice", r.id);
                    }
                    other => panic!("expected RESPONSE, got {other:?}"),
                }
            }
            if seen.len() == N as usize {
                break;
            }
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            decoder.feed(&buf[..n]);
        }
    };
    timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("the answers did not all come");
    c.ping_pong(1).await;
    stop(handle).await;
}

/// Where a handler's first poll runs: by default in the connection's task (the same task
/// for every request of a connection), with `run_handlers_inline(false)` in a task of the
/// request's own, so that a handler that computes before it first waits does not hold up
/// the connection's other requests. Told apart by the tokio task id the handler sees.
#[tokio::test]
async fn handlers_run_in_their_own_task_when_not_inline() {
    for inline in [true, false] {
        let (handle, _) = server_with(move |b| {
            b.run_handlers_inline(inline)
                .route_raw("whoami", |_ctx, _body| async move {
                    let id = tokio::task::try_id().map(|id| id.to_string());
                    Ok(Reply::new(id.unwrap_or_default().into_bytes()))
                })
        })
        .await;
        let mut c = RawClient::connect(handle.local_addr()).await;
        let mut tasks = Vec::new();
        for id in 1..=3 {
            c.request(id, format::RAW, "whoami", b"").await;
            let (answered, _, task) = response(c.recv().await);
            assert_eq!(answered, id);
            assert!(!task.is_empty(), "handlers run inside a tokio task");
            tasks.push(task);
        }
        let same = tasks.windows(2).all(|w| w[0] == w[1]);
        assert_eq!(same, inline, "inline {inline}: tasks {tasks:?}");
        stop(handle).await;
    }
}

/// A setting that cannot work is refused before anything is bound, naming the setting.
#[tokio::test]
async fn settings_that_cannot_work_are_refused_by_name() {
    let zero_in_flight = {
        let mut config = mcp_server::ServerConfig::default();
        config.max_in_flight = 0;
        config
    };
    let zero_heartbeat = {
        let mut config = mcp_server::ServerConfig::default();
        config.heartbeat_timeout = Duration::ZERO;
        config
    };
    for (config, field) in [
        (zero_in_flight, "max_in_flight"),
        (zero_heartbeat, "heartbeat_timeout"),
    ] {
        let err = mcp_server::Server::builder()
            .config(config)
            .bind("127.0.0.1:0")
            .await
            .expect_err(field);
        assert!(matches!(err, mcp_server::Error::Config(_)), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    // Subscriptions may be turned off.
    let mut no_subscriptions = mcp_server::ServerConfig::default();
    no_subscriptions.max_subscriptions = 0;
    let handle = mcp_server::Server::builder()
        .config(no_subscriptions)
        .bind("127.0.0.1:0")
        .await
        .expect("a server without subscriptions");
    stop(handle).await;
}

/// The messages of one read are answered together, in the order they came (each exactly
/// once), whatever their kind: answers from the first poll, refusals, a panic, a PONG. A
/// handler that waits is answered from its task, whenever it finishes. After a handler
/// panics in its first poll, the next request of the same handler type works as before.
#[tokio::test]
async fn one_reads_messages_are_answered_in_order_each_once() {
    let (handle, _) = server_with(|b| b.route("upper", Upper { wait: false })).await;
    let before = handle.stats().requests;
    let mut c = RawClient::connect(handle.local_addr()).await;
    let mut bytes = Vec::new();
    let messages = [
        (1, format::RAW, "echo", &b"one"[..]),
        (2, format::RAW, "upper", b"panic"),
        (3, format::RAW, "upper", b"three."),
        (4, format::RAW, "nope", b""),
        (5, format::RAW, "later", b"five"),
        (6, format::RAW, "echo", b"six"),
        (7, format::JSON, "add", br#"{"a":3,"b":4}"#),
        (8, format::RAW, "echo", b"eight"),
        // A PING, nonce 9.
        (9, 0, "", b""),
        (10, format::RAW, "upper", b"ten."),
    ];
    for (id, format, method, body) in messages {
        let envelope = if method.is_empty() {
            Envelope::Ping(mcp_codec::Ping { nonce: [9; 8] })
        } else {
            Envelope::Request(mcp_codec::Request {
                id,
                flags: Flags::NONE,
                format,
                method,
                meta: Metadata::EMPTY,
                body,
            })
        };
        envelope.encode_to_vec(&mut bytes).unwrap();
    }
    c.send_raw(&bytes).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let answer = match c.recv().await {
            Some(OwnedEnvelope::Response(r)) => (r.id, Ok(r.body)),
            Some(OwnedEnvelope::Error { id, code, .. }) => (id, Err(code)),
            Some(OwnedEnvelope::Pong(p)) => (u32::from(p.nonce[0]), Ok(b"pong".to_vec())),
            other => panic!("expected an answer, got {other:?}"),
        };
        seen.push(answer);
    }
    // The handler that waited is answered once, from its task; it may come before the
    // messages behind it if they were read later.
    let later: Vec<_> = seen.iter().filter(|(id, _)| *id == 5).collect();
    assert_eq!(later, [&(5, Ok(b"five".to_vec()))]);
    seen.retain(|(id, _)| *id != 5);
    assert_eq!(
        seen,
        [
            (1, Ok(b"one".to_vec())),
            (2, Err(ErrorCode::INTERNAL)),
            (3, Ok(b"THREE.upper".to_vec())),
            (4, Err(ErrorCode::UNKNOWN_METHOD)),
            (6, Ok(b"six".to_vec())),
            (7, Ok(b"7".to_vec())),
            (8, Ok(b"eight".to_vec())),
            (9, Ok(b"pong".to_vec())),
            (10, Ok(b"TEN.upper".to_vec())),
        ]
    );
    // Every handler started is counted (the unknown method is not), before its answer.
    assert_eq!(handle.stats().requests - before, 8);
    c.ping_pong(1).await;
    stop(handle).await;
}

/// `$health` (docs/protocol.md section 7): a word in format 0 for the server or a service,
/// whatever the request's format byte; changes pushed to `$health.<service>` subscribers.
#[tokio::test]
async fn health_answers_and_pushes_its_changes() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, 77, "$health", b"").await;
    assert_eq!(
        response(c.recv().await),
        (1, format::RAW, b"SERVING".to_vec())
    );
    c.request(2, format::JSON, "$health", b"users").await;
    assert_eq!(
        response(c.recv().await),
        (2, format::RAW, b"SERVICE_UNKNOWN".to_vec())
    );
    c.request(3, format::RAW, "$health", &[0xff]).await;
    assert_eq!(error(c.recv().await).1, ErrorCode::MALFORMED);
    handle.set_health("users", true).unwrap();
    c.request(4, format::RAW, "$health", b"users").await;
    assert_eq!(response(c.recv().await).2, b"SERVING");
    // Watch it: the change is pushed.
    c.request(5, format::RAW, "$subscribe", b"$health.users")
        .await;
    assert_eq!(response(c.recv().await).0, 5);
    handle.set_health("users", false).unwrap();
    match c.recv().await {
        Some(OwnedEnvelope::Notify(n)) => {
            assert_eq!((n.topic.as_str(), n.format), ("$health.users", format::RAW));
            assert_eq!(n.body, b"NOT_SERVING");
        }
        other => panic!("expected the health push, got {other:?}"),
    }
    assert!(
        handle.set_health(&"x".repeat(250), true).is_err(),
        "topic too long"
    );
    stop(handle).await;
}

/// Shutting down, the server says NOT_SERVING from the moment it starts draining: the push
/// reaches a `$health` subscriber before the GOAWAY.
#[tokio::test]
async fn health_turns_not_serving_before_the_goaway() {
    let (handle, _) = server().await;
    let mut c = RawClient::connect(handle.local_addr()).await;
    c.request(1, format::RAW, "$subscribe", b"$health").await;
    assert_eq!(response(c.recv().await).0, 1);
    let shutdown = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.shutdown(Duration::from_secs(5)).await })
    };
    match c.recv().await {
        Some(OwnedEnvelope::Notify(n)) => {
            assert_eq!(
                (n.topic.as_str(), &n.body[..]),
                ("$health", &b"NOT_SERVING"[..])
            );
        }
        other => panic!("expected NOT_SERVING first, got {other:?}"),
    }
    assert!(matches!(c.recv().await, Some(OwnedEnvelope::GoAway { .. })));
    assert_eq!(handle.health(""), mcp_server::HealthStatus::NotServing);
    drop(c);
    shutdown.await.unwrap().unwrap();
}

/// `max_connections_per_ip`: past it, a client from the same address gets GOAWAY code 2
/// and is closed; another address (127.0.0.2, a distinct host on loopback) still gets in,
/// and a place freed is taken again.
#[tokio::test]
async fn connections_past_the_per_ip_limit_get_goaway_overloaded() {
    let handle = mcp_server::Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .max_connections_per_ip(2)
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = handle.local_addr();
    let mut first = RawClient::connect(addr).await;
    first.ping_pong(1).await;
    let mut second = RawClient::connect(addr).await;
    second.ping_pong(2).await;
    let mut third = RawClient::connect(addr).await;
    match third.recv().await {
        Some(OwnedEnvelope::GoAway { last_id, code, .. }) => {
            assert_eq!((last_id, code), (0, GoAwayCode::OVERLOADED));
        }
        other => panic!("expected GOAWAY 2, got {other:?}"),
    }
    third.expect_closed().await;
    // Another host is not counted with the first.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
    let mut other = RawClient::from_stream(stream);
    other.ping_pong(3).await;
    // A place freed is taken again.
    drop(first);
    eventually(|| handle.stats().open_connections == 2).await;
    let mut again = RawClient::connect(addr).await;
    again.ping_pong(4).await;
    assert_eq!(handle.stats().refused_connections, 1);
    drop((second, other, again));
    stop(handle).await;
}
