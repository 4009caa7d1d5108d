//! The named tests of issue 4, section 6 (`tNN_...` = test NN), as tests of the tokio
//! shell: over real loopback sockets where the test is about a real I/O fault (a reset, a
//! half frame then close, one-byte reads, a peer that stops reading, a refused or
//! blackholed connect, a restart) or the sockets themselves; over `tokio::io::duplex`, in
//! virtual time where it waits, for the rest. The protocol's own rules (stale and late
//! answers, CANCEL, deadlines, GOAWAY, ERROR 6, the heartbeat, id wrap) are the two-peer
//! harness's, `src/proto/tests.rs`. No test here waits a fixed time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::{Envelope, ErrorCode, FrameType, OwnedEnvelope, format};
use mcp_test_support::{
    Blackhole, EchoServer, Received, STEP, TestListener, delay_body, encode, error, goaway, notify,
    response,
};
use mcp_transport::{
    Answer, BackoffConfig, Backpressure, CallDeadline, Connection, ConnectionConfig, EndpointState,
    ErrorKind, HeartbeatConfig, Meta, Phase, Pool, PoolConfig, PoolExhausted, Processed,
    PushOverflow, TransportError,
};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

mod common;

use common::{
    DuplexListener, DuplexPeer, conn_config, duplex_connection, pool_config_with, rebind, until,
    within,
};

/// Connects a bare connection, bounded (on top of the connect timeout of `config`).
async fn connect(addr: SocketAddr, config: ConnectionConfig) -> Connection {
    within(Connection::connect(addr, config))
        .await
        .expect("connects")
}

fn pool_config() -> PoolConfig {
    pool_config_with(conn_config())
}

fn body(reply: Result<Answer, TransportError>) -> Bytes {
    match reply.expect("call succeeds") {
        Answer::Response(r) => r.into_body(),
        Answer::Error(e) => panic!("unexpected remote error {e}"),
    }
}

async fn call(conn: &Connection, method: &str, body: &[u8]) -> Result<Answer, TransportError> {
    conn.call(
        method,
        format::RAW,
        &Meta::new(),
        body,
        CallDeadline::default(),
    )
    .await
}

async fn pcall(pool: &Pool, method: &str, body: &[u8]) -> Result<Answer, TransportError> {
    pool.call(
        method,
        format::RAW,
        &Meta::new(),
        body,
        CallDeadline::default(),
    )
    .await
}

/// 1. Half a frame, then close: the pending call fails "connection closed", no hang, and
/// the pool reconnects.
#[tokio::test]
async fn t01_half_frame_then_close_fails_pending_and_reconnects() {
    let listener = TestListener::bind().await;
    let pool = Pool::new(listener.addr().to_string(), pool_config());
    let call1 = tokio::spawn({
        let pool = pool.clone();
        async move { pcall(&pool, "echo", b"one").await }
    });
    let mut peer = listener.accept().await;
    let req = peer.recv_request().await;
    let frame = response(req.id, b"one");
    peer.send_raw(&frame[..frame.len() / 2]).await;
    drop(peer);
    let err = within(call1).await.unwrap().expect_err("the call fails");
    assert_eq!(err.kind(), &ErrorKind::ConnectionClosed, "{err}");
    assert!(err.to_string().contains("closed"), "{err}");
    assert_eq!(err.processed(), Processed::Maybe);

    // A new call gets a new connection.
    let call2 = tokio::spawn({
        let pool = pool.clone();
        async move { pcall(&pool, "echo", b"two").await }
    });
    let mut peer = listener.accept().await;
    let req = peer.recv_request().await;
    peer.respond(req.id, b"two").await;
    assert_eq!(body(within(call2).await.unwrap()), &b"two"[..]);
    assert!(pool.stats().reconnects >= 1);
}

/// 2. A peer that stalls mid-frame: bytes of a frame that never completes are no sign of
/// life, so the heartbeat declares the connection dead at interval + timeout although bytes
/// keep coming, the pending call fails and the stream is closed. (That no later call ever
/// gets the stale answer, even one handed the same id on a new connection, is the
/// harness's `a_stale_answer_for_an_id_not_yet_handed_out_never_completes_the_call_that_gets_it`.)
#[tokio::test(start_paused = true)]
async fn t02_a_peer_stalling_mid_frame_is_declared_dead() {
    let mut config = conn_config();
    config.heartbeat = HeartbeatConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
    };
    let (conn, mut peer) = duplex_connection(64 * 1024, config);
    peer.answer_pings = false;
    let start = Instant::now();
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"stale").await }
    });
    let req = peer.recv_request().await;
    let stale = response(req.id, &[7u8; 64]);
    let trickle = tokio::spawn(async move {
        for (sent, byte) in stale.iter().enumerate() {
            if peer.try_send_raw(&[*byte]).await.is_err() {
                return (peer, sent);
            }
            // The fault: a peer that stalls mid-frame, one byte every 20 ms (virtual time).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (peer, stale.len())
    });
    let reason = within(conn.closed()).await;
    let elapsed = start.elapsed();
    assert!(reason.to_string().contains("heartbeat"), "{reason}");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed <= Duration::from_millis(405),
        "dead after {elapsed:?}"
    );
    let err = within(pending)
        .await
        .unwrap()
        .expect_err("dropped mid-frame");
    assert_eq!(err.kind(), &ErrorKind::ConnectionClosed, "{err}");
    assert!(err.to_string().contains("heartbeat"), "{err}");
    assert_eq!(err.processed(), Processed::Maybe);
    // The connection is really dropped while the frame was still arriving.
    let (mut peer, sent) = within(trickle).await.unwrap();
    assert!(
        sent < response(req.id, &[7u8; 64]).len(),
        "{sent} bytes sent"
    );
    assert!(
        peer.expect_closed(STEP).await,
        "the dead connection is closed"
    );
    assert_eq!(conn.stats().unknown_answers, 0);
}

/// 3. A silent peer on an idle connection: the driver's timer runs the core's heartbeat, which
/// declares it dead within interval + timeout (virtual time), and fails its pending calls at
/// once. (The core's rule itself: the harness's
/// `the_heartbeat_pings_a_silent_server_and_declares_it_dead`.)
#[tokio::test(start_paused = true)]
async fn t03_silent_peer_heartbeat_declares_dead() {
    let heartbeat = HeartbeatConfig::default();
    let (conn, _peer) = duplex_connection(64 * 1024, conn_config());
    let start = Instant::now();
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "never", b"").await }
    });
    // Bounded in virtual time: the bound's timer comes after the heartbeat's, so only a
    // connection that is never declared dead reaches it (at once, in real time).
    let bound = heartbeat.interval + heartbeat.timeout + Duration::from_secs(5);
    let reason = tokio::time::timeout(bound, conn.closed())
        .await
        .expect("the heartbeat declares the silent peer dead");
    let elapsed = start.elapsed();
    // tokio's timers have a 1 ms resolution and round up.
    let slack = Duration::from_millis(5);
    assert!(
        elapsed >= heartbeat.interval + heartbeat.timeout
            && elapsed <= heartbeat.interval + heartbeat.timeout + slack,
        "dead after {elapsed:?}"
    );
    assert!(reason.to_string().contains("heartbeat"), "{reason}");
    assert_eq!(conn.stats().pings_sent, 1);
    let err = within(pending)
        .await
        .unwrap()
        .expect_err("pending call fails");
    assert_eq!(err.kind(), &ErrorKind::ConnectionClosed);
    assert_eq!(err.processed(), Processed::Maybe);
}

/// 4. RST during a request: the error says "may have been processed".
#[tokio::test]
async fn t04_rst_during_request_may_have_been_processed() {
    let listener = TestListener::bind().await;
    let conn = connect(listener.addr(), conn_config()).await;
    let mut peer = listener.accept().await;
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"x").await }
    });
    peer.recv_request().await;
    peer.reset();
    let err = within(pending).await.unwrap().expect_err("reset");
    assert_eq!(err.processed(), Processed::Maybe, "{err}");
    assert!(!err.is_not_processed());
    assert_eq!(err.phase(), Phase::Response);
    assert_eq!(err.kind(), &ErrorKind::ConnectionClosed);
}

/// 5. Server down at start: the backoff is exponential, jittered and capped, and the try
/// limit is honoured (virtual time).
#[tokio::test]
async fn t05_server_down_backoff_exponential_jittered_capped_try_limit() {
    let addr = {
        let listener = TestListener::bind().await;
        listener.addr()
    };
    let config = PoolConfig {
        backoff: BackoffConfig::default(),
        ..pool_config()
    };
    tokio::time::pause();
    let pool = Pool::new(addr.to_string(), config);
    let mut state = pool.watch_state();
    let caller = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.call(
                "echo",
                0,
                &Meta::new(),
                b"",
                CallDeadline::timeout(Duration::from_secs(3600)),
            )
            .await
        }
    });
    let mut delays = Vec::new();
    loop {
        // Virtual time: the delays run up to 30 s each.
        tokio::time::timeout(Duration::from_secs(3600), state.changed())
            .await
            .expect("state changes")
            .unwrap();
        let now = state.borrow_and_update().clone();
        match now {
            EndpointState::Reconnecting {
                attempt,
                next_delay,
                ..
            } => {
                assert_eq!(attempt as usize, delays.len() + 2);
                delays.push(next_delay);
            }
            EndpointState::Down { .. } => break,
            _ => {}
        }
    }
    let err = within(caller).await.unwrap().expect_err("endpoint down");
    assert_eq!(
        err.kind(),
        &ErrorKind::PoolExhausted(PoolExhausted::EndpointDown),
        "{err}"
    );
    assert!(err.is_not_processed());
    // 10 tries: 9 delays, each within its exponential, capped bound.
    assert_eq!(delays.len(), 9, "{delays:?}");
    for (i, delay) in delays.iter().enumerate() {
        let bound = Duration::from_secs((1u64 << i).min(30));
        assert!(*delay <= bound, "delay {i} = {delay:?} > {bound:?}");
    }
    assert!(
        delays
            .iter()
            .enumerate()
            .any(|(i, d)| *d != Duration::from_secs((1u64 << i).min(30))),
        "jittered"
    );
    assert_eq!(pool.stats().connect_failures, 10);
    // The limit holds: no further tries without new demand, for ten virtual minutes.
    for _ in 0..600 {
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(pool.stats().connect_failures, 10);
}

/// A pool closed while its connector waits out a long backoff ends its tasks at once,
/// not at the backoff's end (a fleet closing waits for each of its pools in turn).
#[tokio::test]
async fn a_pool_closed_during_a_backoff_ends_its_tasks_at_once() {
    let addr = {
        let listener = TestListener::bind().await;
        listener.addr()
    };
    let config = PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(30),
            ..BackoffConfig::default()
        },
        min_connections: 1,
        ..pool_config()
    };
    let pool = Pool::new(addr.to_string(), config);
    let mut state = pool.watch_state();
    within(async {
        loop {
            if matches!(
                *state.borrow_and_update(),
                EndpointState::Reconnecting { .. }
            ) {
                break;
            }
            state.changed().await.expect("state changes");
        }
    })
    .await;
    pool.close();
    // Real time: a join bounded well under the 30 s backoff.
    assert!(
        pool.join(Duration::from_secs(2)).await,
        "the connector still waits out its backoff after close"
    );
}

/// 6. The server restarts on the same address: the client reconnects and its
/// subscriptions come back.
#[tokio::test]
async fn t06_server_restart_reconnects_and_resubscribes() {
    let server = EchoServer::start().await;
    let addr = server.addr();
    let pool = Pool::new(addr.to_string(), pool_config());
    let mut sub = within(pool.subscribe("orders.*")).await.unwrap();
    assert_eq!(server.push("orders.created", b"1"), 1);
    let push = within(sub.recv()).await.unwrap();
    assert_eq!(push.topic(), "orders.created");
    assert_eq!(push.body(), &b"1"[..]);

    within(server.shutdown()).await;
    // The old sockets may hold the port a moment: try again until the bind succeeds.
    let mut restarted = None;
    until("the server restarts on its address", || {
        restarted = restarted.take().or_else(|| rebind(addr));
        restarted.is_some()
    })
    .await;
    let server = restarted.expect("restarted");
    until("the pool subscribed again", || {
        !server.subscriptions().is_empty()
    })
    .await;
    assert_eq!(server.subscriptions(), vec!["orders.*".to_owned()]);
    assert_eq!(server.push("orders.shipped", b"2"), 1);
    let push = within(sub.recv()).await.unwrap();
    assert_eq!(push.topic(), "orders.shipped");
    assert_eq!(push.body(), &b"2"[..]);
    assert!(pool.stats().reconnects >= 1);
    assert!(matches!(pool.state(), EndpointState::Connected { .. }));
}

/// 7. A connect to a blackholed address fails at the connect timeout. The address is a
/// loopback listener whose accept queue is full, so the kernel drops further SYNs.
#[tokio::test]
async fn t07_blackholed_address_fails_at_connect_timeout() {
    let hole = Blackhole::new().await;
    let timeout = Duration::from_millis(300);
    let config = ConnectionConfig {
        connect_timeout: timeout,
        ..ConnectionConfig::default()
    };
    let start = Instant::now();
    let err = within(Connection::connect(hole.addr(), config))
        .await
        .expect_err("blackholed");
    let elapsed = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.phase(), Phase::Connect);
    assert!(err.is_not_processed());
    assert!(elapsed >= timeout && elapsed < timeout * 5, "{elapsed:?}");
}

/// 8. Every frame sliced into 1-byte reads decodes identically (over a socket; the codec
/// level is covered in `codec_slicing` below): a push, an ERROR answer, a PING (answered
/// with PONG), a multi-frame RESPONSE (with a PING between its frames, which section 4
/// allows) and a plain RESPONSE.
#[tokio::test]
async fn t08_one_byte_reads_decode_identically() {
    let listener = TestListener::bind().await;
    let conn = connect(listener.addr(), conn_config()).await;
    let mut peer = listener.accept().await;
    let mut sub = within(async {
        let sub = tokio::spawn({
            let conn = conn.clone();
            async move { conn.subscribe("t", CallDeadline::default()).await }
        });
        let req = peer.recv_request().await;
        peer.respond(req.id, b"").await;
        sub.await.unwrap().unwrap()
    })
    .await;
    let spawn_call = |body: &'static [u8]| {
        let conn = conn.clone();
        tokio::spawn(async move { call(&conn, "echo", body).await })
    };
    let errored = spawn_call(b"error me");
    let req_error = peer.recv_request().await;
    let large = spawn_call(b"large");
    let req_large = peer.recv_request().await;
    let pending = spawn_call(b"");
    let req = peer.recv_request().await;

    let meta_body: Vec<u8> = (0..=255).collect();
    // Just past one frame: a head frame and one CONTINUATION frame.
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let big_frames = response(req_large.id, &big);
    let head_len = 8 + usize::from(u16::from_be_bytes([big_frames[4], big_frames[5]]));
    assert!(head_len < big_frames.len(), "the body spans several frames");
    assert_eq!(
        big_frames[head_len + 3],
        0x09,
        "a CONTINUATION frame follows"
    );
    let ping = |n: u8| encode(Envelope::Ping(mcp_codec::Ping { nonce: [n; 8] }));

    let mut bytes = notify("t", &meta_body);
    bytes.extend(error(req_error.id, 1000, "sliced error"));
    bytes.extend(ping(1));
    bytes.extend(&big_frames[..head_len]);
    bytes.extend(ping(2));
    bytes.extend(&big_frames[head_len..]);
    bytes.extend(response(req.id, b"sliced answer"));
    within(async {
        for byte in bytes {
            peer.send_raw(&[byte]).await;
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(body(within(pending).await.unwrap()), &b"sliced answer"[..]);
    match within(errored).await.unwrap() {
        Ok(Answer::Error(e)) => {
            assert_eq!((e.code(), e.message()), (ErrorCode(1000), "sliced error"));
        }
        other => panic!("expected the remote error, got {other:?}"),
    }
    let large_body = body(within(large).await.unwrap());
    assert!(
        large_body == big[..],
        "the multi-frame body is reassembled intact"
    );
    let push = within(sub.recv()).await.unwrap();
    assert_eq!(push.body(), &meta_body[..]);
    // Both PINGs answered, in order, and nothing else sent meanwhile.
    for n in [1u8, 2] {
        match peer.recv().await {
            Received::Envelope(OwnedEnvelope::Pong(p)) => assert_eq!(p.nonce, [n; 8]),
            other => panic!("expected PONG {n}, got {other:?}"),
        }
    }
    let stats = conn.stats();
    assert_eq!((stats.unknown_answers, stats.in_flight), (0, 0));
    assert!(conn.is_open());
}

/// 9. Several frames and a push in one read are all delivered, in order.
#[tokio::test]
async fn t09_several_frames_and_push_in_one_read() {
    let (conn, mut peer) = duplex_connection(1024 * 1024, conn_config());
    let sub = tokio::spawn({
        let conn = conn.clone();
        async move { conn.subscribe("news.*", CallDeadline::default()).await }
    });
    let req = peer.recv_request().await;
    peer.respond(req.id, b"").await;
    let mut sub = within(sub).await.unwrap().unwrap();

    let calls: Vec<_> = (0..3)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { call(&conn, "echo", format!("c{i}").as_bytes()).await })
        })
        .collect();
    let mut reqs = Vec::new();
    for _ in 0..3 {
        reqs.push(peer.recv_request().await);
    }
    // One write: three answers (out of order) with two pushes between them.
    let mut batch = Vec::new();
    batch.extend(response(reqs[2].id, &reqs[2].body));
    batch.extend(notify("news.a", b"p1"));
    batch.extend(response(reqs[0].id, &reqs[0].body));
    batch.extend(notify("news.b", b"p2"));
    batch.extend(response(reqs[1].id, &reqs[1].body));
    peer.send_raw(&batch).await;
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(body(within(c).await.unwrap()), format!("c{i}").as_bytes());
    }
    assert_eq!(within(sub.recv()).await.unwrap().body(), &b"p1"[..]);
    assert_eq!(within(sub.recv()).await.unwrap().body(), &b"p2"[..]);
}

/// 10. A length past the maximum message size is refused before allocating, and the
/// connection closes (with ERROR id 0 code 7 to the peer).
#[tokio::test]
async fn t10_length_past_max_message_size_refused() {
    let mut config = conn_config();
    config.wire.max_message_len = 100_000;
    let (conn, mut peer) = duplex_connection(1024 * 1024, config);
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"").await }
    });
    let req = peer.recv_request().await;
    // 64 KiB + 64 KiB: the second frame takes the body past 100,000 bytes.
    let big = vec![7u8; 130_000];
    peer.send_raw(&response(req.id, &big)).await;
    let err = within(pending).await.unwrap().expect_err("too large");
    assert_eq!(err.kind(), &ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("exceeds"), "{err}");
    match peer.recv().await {
        Received::Envelope(OwnedEnvelope::Error { id, code, .. }) => {
            assert_eq!((id, code), (0, ErrorCode::TOO_LARGE));
        }
        other => panic!("expected ERROR 0/7, got {other:?}"),
    }
    assert!(peer.expect_closed(STEP).await);
    assert!(conn.is_closed());

    // The boundary (section 4: "a body of exactly the maximum is allowed"), for a body in
    // one frame and one spanning CONTINUATION frames: exactly the maximum is delivered and
    // the connection stays open; one byte more is refused and the connection closes.
    for max in [1_000usize, 100_000] {
        let mut config = conn_config();
        config.wire.max_message_len = max;
        let (conn, mut peer) = duplex_connection(1024 * 1024, config);
        let exact = tokio::spawn({
            let conn = conn.clone();
            async move { call(&conn, "echo", b"exact").await }
        });
        let req = peer.recv_request().await;
        let body_max = vec![1u8; max];
        peer.send_raw(&response(req.id, &body_max)).await;
        let got = body(within(exact).await.unwrap());
        assert!(
            got.len() == max && got == body_max[..],
            "max {max}: exactly the maximum"
        );
        assert!(conn.is_open(), "max {max}");

        let over = tokio::spawn({
            let conn = conn.clone();
            async move { call(&conn, "echo", b"over").await }
        });
        let req = peer.recv_request().await;
        peer.send_raw(&response(req.id, &vec![2u8; max + 1])).await;
        let err = within(over).await.unwrap().expect_err("one byte too large");
        assert_eq!(err.kind(), &ErrorKind::Protocol, "max {max}: {err}");
        assert!(err.to_string().contains("exceeds"), "max {max}: {err}");
        match peer.recv().await {
            Received::Envelope(OwnedEnvelope::Error { id, code, .. }) => {
                assert_eq!((id, code), (0, ErrorCode::TOO_LARGE), "max {max}");
            }
            other => panic!("max {max}: expected ERROR 0/7, got {other:?}"),
        }
        assert!(peer.expect_closed(STEP).await, "max {max}");
        assert!(conn.is_closed(), "max {max}");
    }
}

/// 11. Bad magic, version or CRC: protocol error, connection dropped (ERROR id 0 code 1
/// first), no panic.
#[tokio::test]
async fn t11_bad_magic_version_crc_protocol_error() {
    let good = response(1, b"x");
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_version = good.clone();
    bad_version[2] = 9;
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    for (name, bytes) in [
        ("magic", bad_magic),
        ("version", bad_version),
        ("crc", bad_crc),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        let (conn, mut peer) = duplex_connection(64 * 1024, conn_config());
        let pending = tokio::spawn({
            let conn = conn.clone();
            async move { call(&conn, "echo", b"x").await }
        });
        peer.recv_request().await;
        peer.send_raw(&bytes).await;
        let err = within(pending).await.unwrap().expect_err(name);
        assert_eq!(err.kind(), &ErrorKind::Protocol, "{name}: {err}");
        match peer.recv().await {
            Received::Envelope(OwnedEnvelope::Error { id, code, .. }) => {
                assert_eq!((id, code), (0, ErrorCode::MALFORMED), "{name}");
            }
            other => panic!("{name}: expected ERROR 0/1, got {other:?}"),
        }
        assert!(peer.expect_closed(STEP).await, "{name}");
    }
}

/// 13. A push flood with a slow subscriber keeps memory bounded and heartbeats (and
/// responses) flowing.
#[tokio::test]
async fn t13_push_flood_slow_subscriber_bounded() {
    for policy in [PushOverflow::DropNewest, PushOverflow::DropOldest] {
        let mut config = conn_config();
        config.push_queue = 8;
        config.push_overflow = policy;
        let (conn, mut peer) = duplex_connection(1024 * 1024, config);
        let sub = tokio::spawn({
            let conn = conn.clone();
            async move { conn.subscribe("flood", CallDeadline::default()).await }
        });
        let req = peer.recv_request().await;
        peer.respond(req.id, b"").await;
        let mut sub = within(sub).await.unwrap().unwrap();

        const N: u32 = 5000;
        let mut flood = Vec::new();
        for i in 0..N {
            flood.extend(notify("flood", &i.to_be_bytes()));
        }
        // A PING after the flood: the client must answer it although nobody reads pushes.
        flood.extend(encode(Envelope::Ping(mcp_codec::Ping { nonce: [9; 8] })));
        peer.send_raw(&flood).await;
        within(async {
            loop {
                match peer.recv().await {
                    Received::Envelope(OwnedEnvelope::Pong(p)) => {
                        assert_eq!(p.nonce, [9; 8]);
                        break;
                    }
                    Received::Envelope(_) => {}
                    Received::Closed => panic!("closed"),
                }
            }
        })
        .await;
        // Responses flow too.
        let pending = tokio::spawn({
            let conn = conn.clone();
            async move { call(&conn, "echo", b"still here").await }
        });
        let req = peer.recv_request().await;
        peer.respond(req.id, &req.body).await;
        assert_eq!(body(within(pending).await.unwrap()), &b"still here"[..]);

        assert_eq!(sub.queued(), 8, "bounded by the queue length");
        let stats = conn.stats();
        assert_eq!(stats.pushes_received, u64::from(N));
        let mut got = Vec::new();
        while let Some(push) = sub.try_recv() {
            got.push(u32::from_be_bytes(push.body()[..4].try_into().unwrap()));
        }
        let expected: Vec<u32> = match policy {
            PushOverflow::DropNewest => (0..8).collect(),
            PushOverflow::DropOldest => (N - 8..N).collect(),
        };
        assert_eq!(got, expected, "{policy:?}");
        assert!(conn.is_open());
    }
}

/// Deadlines live in the pending table under one driver timer: a call with an earlier
/// deadline that starts after one with a later deadline brings the timer forward (it
/// times out first, CANCEL first), and a call without a deadline is left alone. The core's
/// rule is the harness's `an_earlier_deadline_started_later_fires_first`; this is the
/// driver re-arming its one timer when the core says so (virtual time, in memory).
#[tokio::test(start_paused = true)]
async fn t14_deadlines_an_earlier_one_started_later_fires_first() {
    let (conn, mut peer) = duplex_connection(1024 * 1024, conn_config());
    let started = Instant::now();
    let timed = |ms: u64, tag: &'static [u8]| {
        let conn = conn.clone();
        tokio::spawn(async move {
            let reply = conn
                .call(
                    "echo",
                    0,
                    &Meta::new(),
                    tag,
                    CallDeadline::timeout(Duration::from_millis(ms)),
                )
                .await;
            (reply, Instant::now())
        })
    };
    let late = timed(1500, b"late");
    let late_req = peer.recv_request().await;
    let early = timed(100, b"early");
    let early_req = peer.recv_request().await;
    let forever = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"forever").await }
    });
    let forever_req = peer.recv_request().await;

    assert_eq!(peer.recv_cancel().await, early_req.id);
    assert_eq!(peer.recv_cancel().await, late_req.id);
    let (early, early_at) = within(early).await.unwrap();
    let (late, late_at) = within(late).await.unwrap();
    let early = early.expect_err("early times out");
    assert!(early.is_timeout(), "{early}");
    assert!(late.expect_err("late times out").is_timeout());
    assert!(
        early_at - started >= Duration::from_millis(100)
            && early_at - started <= Duration::from_millis(105),
        "at its deadline (virtual time): {:?}",
        early_at - started
    );
    // Had the timer stayed at the first call's deadline, this would fire only then.
    assert!(
        early_at - started < Duration::from_millis(1500),
        "the earlier deadline fired before the later one"
    );
    assert!(
        late_at - started >= Duration::from_millis(1500)
            && late_at - started <= Duration::from_millis(1505),
        "at its deadline (virtual time): {:?}",
        late_at - started
    );

    // No deadline: still pending, and answered normally.
    assert!(!forever.is_finished());
    peer.respond(forever_req.id, b"forever").await;
    assert_eq!(body(within(forever).await.unwrap()), &b"forever"[..]);
    assert_eq!(conn.stats().cancels_sent, 2);
}

/// Deadlines are the connection driver's to enforce, so when the runtime running it shuts
/// down, calls made from another runtime fail at once instead of waiting for good.
#[tokio::test]
async fn t14_driver_runtime_shut_down_fails_pending_calls() {
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut peer = DuplexPeer::over(server);
    // The connection's tasks run on the other runtime.
    let conn = within(async {
        other
            .spawn(async move { Connection::over(client, conn_config()) })
            .await
            .unwrap()
    })
    .await
    .expect("starts");
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"x").await }
    });
    peer.recv_request().await;
    other.shutdown_background();
    let err = within(pending).await.unwrap().expect_err("driver gone");
    assert_eq!(err.kind(), &ErrorKind::ConnectionClosed, "{err}");
    assert_eq!(err.processed(), Processed::Maybe);
    assert!(conn.is_closed());
}

/// 15. Pool exhausted: the wait is bounded, the error says why, and no connection or
/// place leaks after cancellations.
#[tokio::test]
async fn t15_pool_exhausted_wait_bounded_no_leak() {
    let server = EchoServer::start().await;
    let mut config = pool_config();
    config.max_connections = 1;
    config.connection.max_in_flight = 2;
    let pool = Pool::new(server.addr().to_string(), config.clone());
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pcall(&pool, "never", b"").await })
        })
        .collect();
    until("the hogs are in flight", || pool.stats().in_flight >= 2).await;
    let start = Instant::now();
    let err = within(pool.call(
        "echo",
        0,
        &Meta::new(),
        b"",
        CallDeadline::timeout(Duration::from_millis(200)),
    ))
    .await
    .expect_err("exhausted");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(
        err.kind(),
        &ErrorKind::PoolExhausted(PoolExhausted::AllFull)
    );
    assert_eq!(err.phase(), Phase::Pool);
    assert!(err.is_not_processed());
    assert!(err.to_string().contains("maximum in flight"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // Many waiters give up; the hogs are cancelled.
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.call(
                    "echo",
                    0,
                    &Meta::new(),
                    b"",
                    CallDeadline::timeout(Duration::from_millis(50)),
                )
                .await
            })
        })
        .collect();
    for w in waiters {
        assert!(within(w).await.unwrap().unwrap_err().is_timeout());
    }
    for hog in hogs {
        hog.abort();
        let _ = within(hog).await;
    }
    until("the server saw both CANCELs", || {
        server
            .state()
            .cancels
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    })
    .await;
    let stats = pool.stats();
    assert_eq!((stats.in_flight, stats.waiting, stats.open), (0, 0, 1));
    assert_eq!(body(within(pcall(&pool, "echo", b"ok")).await), &b"ok"[..]);
    assert_eq!(
        server
            .state()
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // With the reject policy the caller is told at once.
    config.connection.backpressure = Backpressure::Reject;
    let pool = Pool::new(server.addr().to_string(), config);
    within(pool.ready(CallDeadline::default())).await.unwrap();
    let _hogs: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pcall(&pool, "never", b"").await })
        })
        .collect();
    until("the hogs are in flight", || pool.stats().in_flight >= 2).await;
    let err = within(pcall(&pool, "echo", b""))
        .await
        .expect_err("rejected");
    assert_eq!(err.kind(), &ErrorKind::Overloaded);
    assert!(err.is_not_processed());
}

/// 16. A call future dropped mid-write leaves no half frame on the wire: messages are
/// queued whole, so the peer decodes everything that follows. In memory, over a stream that
/// holds 64 KiB each way, so that how much is in flight is the test's choice, not the
/// kernel's.
#[tokio::test(start_paused = true)]
async fn t16_dropped_call_mid_write_no_half_frame() {
    const WINDOW: usize = 64 * 1024;
    let (conn, mut peer) = duplex_connection(WINDOW, conn_config());
    let big = vec![0x5a; 4 * 1024 * 1024];
    // The peer is not reading: the 4 MiB cannot all be written before the timeout.
    let dropped = within(conn.call(
        "echo",
        0,
        &Meta::new(),
        &big,
        CallDeadline::timeout(Duration::from_millis(1)),
    ))
    .await;
    assert!(dropped.unwrap_err().is_timeout());
    let small = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"after").await }
    });
    let first = peer.recv_request().await;
    assert_eq!(first.body.len(), big.len());
    assert!(first.body.iter().all(|b| *b == 0x5a));
    let cancel = peer.recv_cancel().await;
    assert_eq!(cancel, first.id);
    let second = peer.recv_request().await;
    assert_eq!(second.body, b"after");
    peer.respond(second.id, b"after").await;
    assert_eq!(body(within(small).await.unwrap()), &b"after"[..]);

    // Now the future itself is dropped while its message is being written: a body far
    // larger than the stream holds, and a peer that has read only the first bytes when the
    // future goes. Every byte on the wire is recorded and must split into whole, valid
    // frames: the whole REQUEST (the design queues a message whole, so it is finished),
    // then CANCEL for its id, then the next request.
    let (conn, mut peer) = duplex_connection(WINDOW, conn_config());
    let huge = vec![0xa5; 4 * 1024 * 1024];
    let mut wire = WireLog::default();
    let mut chunk = vec![0u8; 64 * 1024];
    {
        let read_first = peer.stream().read(&mut chunk[..1024]);
        tokio::select! {
            result = call(&conn, "echo", &huge) => panic!("the call cannot finish: {result:?}"),
            n = within(read_first) => {
                let n = n.expect("read");
                assert!(n > 0, "the client closed");
                wire.feed(&chunk[..n]);
            }
        }
    }
    // The call future is gone; the request's first bytes are all the peer has read.
    assert!(wire.bytes.len() <= 1024 && wire.envelopes.is_empty());
    // And its message was still being written: the writer task cannot run while this
    // (single-threaded) test takes what the stream holds without yielding, and that is at
    // most its 64 KiB.
    while let Some(n) = read_now(peer.stream(), &mut chunk) {
        assert!(n > 0, "the client closed");
        wire.feed(&chunk[..n]);
    }
    assert!(
        wire.bytes.len() <= 1024 + WINDOW,
        "the request was still being written when its future was dropped ({} bytes out)",
        wire.bytes.len()
    );
    assert!(wire.envelopes.is_empty());
    let after = tokio::spawn({
        let conn = conn.clone();
        async move { call(&conn, "echo", b"after").await }
    });
    within(async {
        while wire.envelopes.len() < 3 {
            let n = peer.stream().read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "the client closed after {} envelopes",
                wire.envelopes.len()
            );
            wire.feed(&chunk[..n]);
        }
    })
    .await;
    assert_eq!(wire.pending(), 0, "nothing but whole frames");
    let [
        OwnedEnvelope::Request(dropped),
        OwnedEnvelope::Cancel(cancel),
        OwnedEnvelope::Request(next),
    ] = &wire.envelopes[..]
    else {
        panic!("expected REQUEST, CANCEL, REQUEST, got {:?}", wire.types);
    };
    assert_eq!(dropped.body.len(), huge.len());
    assert!(dropped.body.iter().all(|b| *b == 0xa5));
    assert_eq!(cancel.id, dropped.id);
    assert_eq!(next.body, b"after");
    // Frame by frame: the head frame, only CONTINUATION frames up to the end of that
    // message, then CANCEL and the next REQUEST.
    let continuations = wire.types.len() - 3;
    assert!(
        continuations >= huge.len() / (64 * 1024),
        "{continuations} CONTINUATION frames"
    );
    assert_eq!(wire.types[0], FrameType::Request);
    assert!(
        wire.types[1..=continuations]
            .iter()
            .all(|t| *t == FrameType::Continuation),
        "{:?}",
        wire.types
    );
    assert_eq!(
        wire.types[continuations + 1..],
        [FrameType::Cancel, FrameType::Request]
    );
    peer.respond(next.id, b"after").await;
    assert_eq!(body(within(after).await.unwrap()), &b"after"[..]);
    let stats = conn.stats();
    assert_eq!((stats.cancels_sent, stats.in_flight), (1, 0));
    assert!(conn.is_open());
}

/// What a read of `stream` gives at once, without waiting (`None`: nothing buffered).
fn read_now(stream: &mut tokio::io::DuplexStream, buf: &mut [u8]) -> Option<usize> {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncRead, ReadBuf};

    let mut cx = Context::from_waker(Waker::noop());
    let mut read = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => Some(read.filled().len()),
        Poll::Ready(Err(err)) => panic!("read: {err}"),
        Poll::Pending => None,
    }
}

/// Every byte a peer received, split into frames (any invalid byte fails the test) and
/// reassembled into messages as they complete.
#[derive(Default)]
struct WireLog {
    bytes: Vec<u8>,
    /// Bytes of `bytes` that form whole frames.
    decoded: usize,
    types: Vec<FrameType>,
    envelopes: Vec<OwnedEnvelope>,
    assembler: mcp_codec::Assembler,
}

impl WireLog {
    fn feed(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        let mut decoder = mcp_codec::FrameDecoder::new();
        loop {
            let (frame, len) = match decoder.decode(&self.bytes[self.decoded..]) {
                Ok(mcp_codec::Decoded::Frame { frame, len }) => (frame, len),
                Ok(mcp_codec::Decoded::NeedMore { .. }) => return,
                other => panic!(
                    "not a whole, valid frame at byte {}: {other:?}",
                    self.decoded
                ),
            };
            self.types
                .push(frame.frame_type().expect("a known frame type"));
            let envelope = match self.assembler.push(frame).expect("a valid message") {
                mcp_codec::Assembled::Envelope(env) => Some(OwnedEnvelope::from_envelope(&env)),
                mcp_codec::Assembled::Message { head, body } => {
                    let mut env = OwnedEnvelope::from_envelope(&head);
                    if let OwnedEnvelope::Request(r) = &mut env {
                        r.body = body;
                    }
                    Some(env)
                }
                _ => None,
            };
            self.envelopes.extend(envelope);
            self.decoded += len;
        }
    }

    /// Bytes received that are not (yet) a whole frame.
    fn pending(&self) -> usize {
        self.bytes.len() - self.decoded
    }
}

/// 17. Dropping or closing the client closes every socket and ends every background task.
#[tokio::test]
async fn t17_drop_or_close_ends_sockets_and_tasks() {
    let server = EchoServer::start().await;
    let open = |s: &EchoServer| s.state().open.load(std::sync::atomic::Ordering::SeqCst);
    for close in [true, false] {
        let mut config = pool_config();
        config.min_connections = 2;
        config.max_connections = 2;
        let pool = Pool::new(server.addr().to_string(), config);
        let probe = pool.task_probe();
        let mut sub = within(pool.subscribe("x")).await.unwrap();
        until("two connections open", || pool.stats().open >= 2).await;
        assert_eq!(body(within(pcall(&pool, "echo", b"hi")).await), &b"hi"[..]);
        assert_eq!(pool.stats().tasks, 3, "connector and two drivers");
        assert_eq!(open(&server), 2);
        if close {
            let pending = tokio::spawn({
                let pool = pool.clone();
                async move { pcall(&pool, "never", b"").await }
            });
            until("the call is in flight", || pool.stats().in_flight >= 1).await;
            pool.close();
            assert!(pool.join(STEP).await, "tasks end after close");
            let err = within(pending).await.unwrap().unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::Shutdown);
        }
        drop(pool);
        assert_eq!(within(sub.recv()).await, None, "subscription stream ends");
        until("every task ended and every socket closed", || {
            probe.alive() == 0 && open(&server) == 0
        })
        .await;
    }
}

/// 18. GOAWAY mid-load, through the pool (in memory): requests up to `last_id` are answered
/// on the old connection, the connection closes when its answers are in, and the requests
/// the GOAWAY refused (not processed) go to a new connection by themselves: no caller sees
/// the GOAWAY. (The core's `last_id` rule: the harness's
/// `goaway_mid_load_fails_only_what_the_server_did_not_accept`.)
#[tokio::test]
async fn t18_goaway_mid_load() {
    let (connect, mut listener) = DuplexListener::new(1024 * 1024);
    let mut config = pool_config();
    config.max_connections = 1;
    let pool = Pool::with_connector(connect, config);
    let calls: Vec<_> = (0..10u8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { (i, pcall(&pool, "echo", &[i]).await) })
        })
        .collect();
    let mut peer = listener.accept().await;
    let mut reqs = Vec::new();
    for _ in 0..10 {
        reqs.push(peer.recv_request().await);
    }
    let ids: Vec<u32> = reqs.iter().map(|r| r.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase in send order"
    );
    let last_id = reqs[4].id;
    peer.send_raw(&goaway(last_id, 0, "restarting")).await;
    for r in &reqs[..5] {
        peer.respond(r.id, &r.body).await;
    }
    // The drained connection closes by itself.
    assert!(peer.expect_closed(STEP).await);
    // The five refused requests come again, on a new connection, and only they.
    let mut peer2 = listener.accept().await;
    let mut again = Vec::new();
    for _ in 0..5 {
        let req = peer2.recv_request().await;
        peer2.respond(req.id, &req.body).await;
        again.push(req.body);
    }
    again.sort();
    let refused: Vec<Vec<u8>> = reqs[5..].iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(again.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), {
        let mut r = refused;
        r.sort();
        r
    });
    for c in calls {
        let (i, result) = within(c).await.unwrap();
        assert_eq!(body(result), &[i][..]);
    }
    // New work goes to the new connection.
    let next = tokio::spawn({
        let pool = pool.clone();
        async move { pcall(&pool, "echo", b"new").await }
    });
    let req = peer2.recv_request().await;
    peer2.respond(req.id, b"new").await;
    assert_eq!(body(within(next).await.unwrap()), &b"new"[..]);
}

/// 19. 10,000 concurrent calls over 2 connections: every caller gets exactly one outcome,
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t19_ten_thousand_concurrent_calls_over_two_connections() {
    let server = EchoServer::start().await;
    let mut config = pool_config();
    config.min_connections = 2;
    config.max_connections = 2;
    config.connection.max_in_flight = 1024;
    config.default_timeout = Duration::from_secs(30);
    let pool = Pool::new(server.addr().to_string(), config);
    within(pool.ready(CallDeadline::default())).await.unwrap();
    let tasks: Vec<_> = (0..10_000u32)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let tag = i.to_be_bytes();
                let outcome = match i % 10 {
                    // Never answered: a timeout.
                    0 => {
                        pool.call(
                            "never",
                            0,
                            &Meta::new(),
                            &tag,
                            CallDeadline::timeout(Duration::from_millis(300)),
                        )
                        .await
                    }
                    // Answered late and out of order.
                    1 => pcall(&pool, "delay", &delay_body(u64::from(i % 7) * 5, &tag)).await,
                    2 => pcall(&pool, "error", &tag).await,
                    _ => pcall(&pool, "echo", &tag).await,
                };
                (i, outcome)
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(60), async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await
    .expect("all outcomes arrive");
    assert_eq!(results.len(), 10_000);
    let (mut timeouts, mut errors, mut ok) = (0, 0, 0);
    for (i, outcome) in results {
        let tag = i.to_be_bytes();
        match (i % 10, outcome) {
            (0, Err(err)) if err.is_timeout() => timeouts += 1,
            (1, Ok(Answer::Response(r))) => {
                assert_eq!(&r.body()[8..], &tag[..]);
                ok += 1;
            }
            (2, Ok(Answer::Error(e))) => {
                assert_eq!(e.code(), ErrorCode(1000));
                errors += 1;
            }
            (3.., Ok(Answer::Response(r))) => {
                assert_eq!(r.body(), &tag[..]);
                ok += 1;
            }
            (kind, other) => panic!("call {i} (kind {kind}): unexpected {other:?}"),
        }
    }
    assert_eq!((timeouts, errors, ok), (1000, 1000, 8000));
    let stats = pool.stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.unknown_answers, 0);
    assert_eq!(
        server
            .state()
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

/// 20. A 4 MiB body round-trips through CONTINUATION frames (both directions).
#[tokio::test]
async fn t20_four_mib_round_trip() {
    let server = EchoServer::start().await;
    let pool = Pool::new(server.addr().to_string(), pool_config());
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let reply = within(pcall(&pool, "echo", &big)).await;
    assert_eq!(body(reply), &big[..]);
}

/// A client receiving REQUEST is a protocol error (role-aware validation).
#[tokio::test]
async fn request_to_client_is_protocol_error() {
    let (conn, mut peer) = duplex_connection(1024 * 1024, conn_config());
    peer.send_envelope(Envelope::Request(mcp_codec::Request {
        id: 1,
        flags: mcp_codec::Flags::NONE,
        format: 0,
        method: "oops",
        meta: mcp_codec::Metadata::EMPTY,
        body: b"",
    }))
    .await;
    let reason = within(conn.closed()).await;
    assert_eq!(reason.kind(), &ErrorKind::Protocol, "{reason}");
    assert!(peer.expect_closed(STEP).await);
}

/// Metadata round-trips, zero-copy on the way in.
#[tokio::test]
async fn metadata_round_trip() {
    let server = EchoServer::start().await;
    let conn = connect(server.addr(), conn_config()).await;
    let meta = Meta::new()
        .with(
            "traceparent",
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
        )
        .with("deadline", 5000u32.to_be_bytes().to_vec());
    assert_eq!(meta.deadline_ms(), Some(5000));
    let reply = within(conn.call("echo", format::JSON, &meta, b"{}", CallDeadline::default()))
        .await
        .unwrap();
    let Answer::Response(r) = reply else {
        panic!("response expected")
    };
    assert_eq!(r.format(), format::JSON);
    assert_eq!(r.body(), &b"{}"[..]);
    let bad = Meta::new().with("Bad Key", &b""[..]);
    let err = within(call_meta(&conn, &bad)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidRequest);
    assert!(err.is_not_processed());
    let _ = Arc::new(());
}

async fn call_meta(conn: &Connection, meta: &Meta) -> Result<Answer, TransportError> {
    conn.call("echo", 0, meta, b"", CallDeadline::default())
        .await
}

/// A server that accepts and closes at once is backed off from (the connection counts as
/// a failed try), not reconnected to in a hot loop.
#[tokio::test]
async fn accept_then_close_backs_off() {
    let listener = TestListener::bind().await;
    let mut config = pool_config();
    config.backoff.initial = Duration::from_millis(100);
    config.backoff.max = Duration::from_secs(1);
    let pool = Pool::new(listener.addr().to_string(), config);
    let until = Instant::now() + Duration::from_secs(1);
    let callers = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut calls = 0;
            while Instant::now() < until {
                let _ = pool
                    .call("echo", 0, &Meta::new(), b"", CallDeadline::deadline(until))
                    .await;
                calls += 1;
            }
            calls
        }
    });
    let mut accepted = 0;
    while let Some(peer) = listener
        .try_accept(until.saturating_duration_since(Instant::now()))
        .await
    {
        accepted += 1;
        drop(peer);
    }
    let calls = within(callers).await.unwrap();
    assert!(calls >= 1);
    assert!((2..20).contains(&accepted), "{accepted} connections in 1 s");
}

/// Write stall, over a real socket: a peer that stops reading kills the connection after
/// the stall timeout instead of blocking its callers forever. Requests of 1 MiB are sent
/// one after the other until the writer stalls, however much the kernel's buffers take; a
/// request the socket took whole may have been processed, the one it never took whole was
/// not.
#[tokio::test]
async fn write_stall_kills_connection() {
    let listener = TestListener::bind().await;
    let mut config = conn_config();
    config.wire.write_stall_timeout = Duration::from_millis(200);
    let conn = connect(listener.addr(), config).await;
    let _peer = listener.accept().await; // the fault: it never reads
    let big = Arc::new(vec![1u8; 1024 * 1024]);
    let request_len = encode(Envelope::Request(mcp_codec::Request {
        id: 1,
        flags: mcp_codec::Flags::NONE,
        format: 0,
        method: "echo",
        meta: mcp_codec::Metadata::EMPTY,
        body: &big,
    }))
    .len() as u64;
    let mut calls = Vec::new();
    let mut end = 0;
    while !conn.is_closed() {
        assert!(
            calls.len() < 1024,
            "the writer never stalled: {:?}",
            conn.stats()
        );
        calls.push(tokio::spawn({
            let conn = conn.clone();
            let big = big.clone();
            async move { call(&conn, "echo", &big).await }
        }));
        end += request_len;
        // Until the writer took this request into a write (it then waits for the next one
        // only if that write finished), or the stall ended the connection.
        until("the request is written or the connection ends", || {
            conn.stats().writer.bytes >= end || conn.is_closed()
        })
        .await;
    }
    let last = calls.len() - 1;
    for (i, c) in calls.into_iter().enumerate() {
        let err = within(c).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ConnectionClosed, "{err}");
        assert!(err.to_string().contains("stalled"), "{err}");
        match err.processed() {
            Processed::No => assert!(matches!(err.phase(), Phase::Queue | Phase::Write), "{err}"),
            _ => assert_eq!(err.phase(), Phase::Response, "{err}"),
        }
        if i == last {
            assert_eq!(err.processed(), Processed::No, "never left whole: {err}");
        }
    }
    assert_eq!(conn.stats().in_flight, 0);
}

/// Write stall, in memory (virtual time): the stream holds 64 KiB, so no request of 1 MiB
/// ever leaves whole, and none can have been processed: a call still waiting for queue
/// space was never sent, one being written never left whole.
#[tokio::test(start_paused = true)]
async fn write_stall_fails_requests_never_written_whole_as_not_processed() {
    let mut config = conn_config();
    config.wire.write_stall_timeout = Duration::from_millis(200);
    let (conn, _peer) = duplex_connection(64 * 1024, config); // the peer never reads
    let big = Arc::new(vec![1u8; 1024 * 1024]);
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let conn = conn.clone();
            let big = big.clone();
            tokio::spawn(async move { call(&conn, "echo", &big).await })
        })
        .collect();
    for c in calls {
        let err = within(c).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ConnectionClosed, "{err}");
        assert!(err.to_string().contains("stalled"), "{err}");
        assert_eq!(err.processed(), Processed::No, "{err}");
        assert!(matches!(err.phase(), Phase::Queue | Phase::Write), "{err}");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed <= Duration::from_millis(205),
        "closed {elapsed:?} after the stall began"
    );
    assert!(conn.is_closed());
}

/// `max_in_flight = 1`: exclusive checkout, one request per connection at a time, the pool
/// growing to its maximum under concurrency.
#[tokio::test]
async fn max_in_flight_one_is_exclusive_checkout() {
    let server = EchoServer::start().await;
    let mut config = pool_config();
    config.max_connections = 3;
    config.connection.max_in_flight = 1;
    let pool = Pool::new(server.addr().to_string(), config);
    let calls: Vec<_> = (0..6u8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pcall(&pool, "delay", &delay_body(30, &[i])).await })
        })
        .collect();
    let mut peak = 0;
    // Sampled at every tick until every call is done.
    until("every call finishes", || {
        let stats = pool.stats();
        assert!(stats.in_flight <= stats.open.max(1), "{stats:?}");
        peak = peak.max(stats.in_flight);
        calls.iter().all(|c| c.is_finished())
    })
    .await;
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(&body(within(c).await.unwrap())[8..], &[i as u8][..]);
    }
    assert!(peak >= 2, "concurrency spread over connections");
    assert_eq!(
        server
            .state()
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

/// The tokio-util adapter works with `Framed`.
#[tokio::test]
async fn mcp_codec_with_framed() {
    use std::pin::Pin;

    use futures_core::Stream;
    use mcp_transport::{Inbound, McpCodec, Role};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    let (mut a, b) = tokio::io::duplex(1024);
    let mut frames = FramedRead::new(b, McpCodec::new(Role::Client));
    let mut bytes = response(5, &vec![3u8; 100_000]);
    bytes.extend(notify("t", b"n"));
    tokio::spawn(async move {
        a.write_all(&bytes).await.unwrap();
    });
    async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
    match within(next(&mut frames)).await {
        Some(Ok(Inbound::Response(r))) => {
            assert_eq!((r.id(), r.body().len()), (5, 100_000));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(within(next(&mut frames)).await, Some(Ok(Inbound::Notify(p))) if p.topic() == "t")
    );
    assert!(within(next(&mut frames)).await.is_none());
}

/// `Meta::from_entries` (one buffer in the wire layout) holds the same entries as pushed
/// pairs, is sent as they are, and leaves what the wire cannot carry for encoding to refuse.
#[tokio::test]
async fn metadata_from_entries_matches_pairs_and_keeps_the_checks() {
    let traceparent = &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..];
    let deadline = 5000u32.to_be_bytes();
    let entries: [(&str, &[u8]); 3] = [
        ("traceparent", traceparent),
        ("deadline", &deadline),
        ("empty", b""),
    ];
    let block = Meta::from_entries(entries);
    let pairs = Meta::new()
        .with("traceparent", traceparent)
        .with("deadline", deadline.to_vec())
        .with("empty", &b""[..]);
    assert_eq!(block, pairs);
    assert_eq!(block.len(), 3);
    assert_eq!(block.deadline_ms(), Some(5000));
    assert_eq!(block.iter().collect::<Vec<_>>(), entries.to_vec());
    assert!(Meta::from_entries(std::iter::empty::<(&str, &[u8])>()).is_empty());
    // Blocks past what is kept inline, and past what is laid out on the stack (the first
    // entry fits there, the second does not), come out the same.
    let middle = vec![3u8; 100];
    let one: [(&str, &[u8]); 1] = [("m", &middle)];
    assert_eq!(
        Meta::from_entries(one),
        Meta::new().with("m", middle.clone())
    );
    assert_eq!(Meta::from_entries(one).get("m"), Some(&middle[..]));
    let (a, b) = (vec![1u8; 200], vec![2u8; 100]);
    let long: [(&str, &[u8]); 2] = [("a", &a), ("b", &b)];
    let long_pairs = Meta::new().with("a", a.clone()).with("b", b.clone());
    assert_eq!(Meta::from_entries(long), long_pairs);
    assert_eq!(
        Meta::from_entries(long).iter().collect::<Vec<_>>(),
        long.to_vec()
    );
    // Appending to a block turns it into pairs without losing anything.
    let mut grown = block.clone();
    grown.push("extra", &b"1"[..]);
    assert_eq!(grown.len(), 4);
    assert_eq!(grown.get("traceparent"), Some(traceparent));

    let server = EchoServer::start().await;
    let conn = connect(server.addr(), conn_config()).await;
    assert!(within(call_meta(&conn, &block)).await.is_ok());
    // A key outside the charset, and a value too long for its 2-byte length: refused
    // locally, as for pairs.
    let bad_key = Meta::from_entries([("Bad Key", &b""[..])]);
    let err = within(call_meta(&conn, &bad_key)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidRequest);
    let long = vec![0u8; 70_000];
    let too_long = Meta::from_entries([("big", &long[..])]);
    assert_eq!(too_long.get("big").map(<[u8]>::len), Some(70_000));
    let err = within(call_meta(&conn, &too_long)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidRequest);
    // The connection is still usable.
    assert!(within(call_meta(&conn, &block)).await.is_ok());
}

/// Closing a connection tells the server first: GOAWAY with last id 0 ("no more requests
/// from this side", docs/protocol.md section 7), then the end of the stream.
#[tokio::test]
async fn close_sends_goaway_then_ends_the_stream() {
    let (conn, mut peer) = duplex_connection(1024 * 1024, conn_config());
    conn.close();
    match peer.recv().await {
        Received::Envelope(OwnedEnvelope::GoAway { last_id, code, .. }) => {
            assert_eq!(last_id, 0);
            assert_eq!(code, mcp_codec::GoAwayCode::SHUTTING_DOWN);
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    assert_eq!(peer.recv().await, Received::Closed);
}

/// The `deadline` sent is the time left when the frame is written (docs/protocol.md
/// section 4.2): a call that waited 300 ms (virtual time, in memory) for a place in the pool sends what is left of
/// its budget, not the value its caller computed before the wait. A call that did not wait
/// is sent as its caller built it.
#[tokio::test(start_paused = true)]
async fn the_deadline_sent_is_what_is_left_when_the_request_is_written() {
    let (connect, mut listener) = DuplexListener::new(64 * 1024);
    let mut config = pool_config();
    config.max_connections = 1;
    config.connection.max_in_flight = 1;
    let pool = Pool::with_connector(connect, config);
    let budget = Duration::from_millis(2000);
    let call = |pool: Pool| async move {
        let meta = Meta::new().with("deadline", 2000u32.to_be_bytes().to_vec());
        pool.call(
            "echo",
            format::RAW,
            &meta,
            b"x",
            CallDeadline::deadline(Instant::now() + budget),
        )
        .await
    };
    let first = tokio::spawn(call(pool.clone()));
    let mut peer = listener.accept().await;
    let held = peer.recv_request().await;
    let deadline_of = |meta: &[mcp_codec::OwnedMetaPair]| {
        let value = &meta
            .iter()
            .find(|(k, _)| k == "deadline")
            .expect("deadline")
            .1;
        u32::from_be_bytes(value[..].try_into().expect("4 bytes"))
    };
    // The first call waited for the connection to open: what is left, within a little.
    let first_left = deadline_of(&held.meta);
    assert!((1500..=2000).contains(&first_left), "{first_left}");
    // The second call waits for the only place, which the first holds for 300 ms (virtual
    // time).
    let second = tokio::spawn(call(pool.clone()));
    until("the second call waits", || pool.stats().waiting == 1).await;
    tokio::time::advance(Duration::from_millis(300)).await;
    peer.respond(held.id, b"x").await;
    let waited = peer.recv_request().await;
    let left = deadline_of(&waited.meta);
    assert!(
        (1690..=1700).contains(&left),
        "{left} ms sent after waiting 300 ms of 2000: the rest of the budget"
    );
    peer.respond(waited.id, b"x").await;
    body(within(first).await.unwrap());
    body(within(second).await.unwrap());
    // A call that finds room at once is sent as its caller built it.
    let third = tokio::spawn(call(pool.clone()));
    let request = peer.recv_request().await;
    assert_eq!(
        deadline_of(&request.meta),
        2000,
        "sent as built: it did not wait"
    );
    peer.respond(request.id, b"x").await;
    body(within(third).await.unwrap());
}
