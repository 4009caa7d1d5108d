//! Hostile and misbehaving servers against the client's memory bounds and subscription
//! bookkeeping, over loopback sockets (127.0.0.1 only) or in-memory streams. Every wait is
//! bounded ([`STEP`]).
//!
//! - A server that floods PINGs and reads nothing, or only a trickle (both in memory, in
//!   virtual time, so that the window is the test's and not the kernel's): the client leaves PINGs unanswered while its write queue is at the
//!   limit, so the PONGs it queues stay bounded; one that reads nothing is ended by the
//!   write-stall timeout.
//! - Large pushes to a slow subscriber: the queue is bounded by bytes as well as count.
//! - A `$subscribe` sent again after a reconnect that the server refuses or never answers:
//!   the subscribers end with the error; the unanswered request does not stay pending nor
//!   keep a draining connection open.

use std::time::Duration;

use mcp_codec::{Envelope, OwnedEnvelope, Ping};
use mcp_test_support::{Peer, Received, STEP, TestListener, encode, error, notify};
use mcp_transport::{
    CallDeadline, Connection, ConnectionConfig, ErrorKind, Pool, PushOverflow, PushStream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

mod common;

use common::{conn_config, duplex_connection, pool_config_with as pool_config, within};

/// `count` PING frames back to back.
fn pings(count: u64) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            encode(Envelope::Ping(Ping {
                nonce: i.to_be_bytes(),
            }))
        })
        .collect()
}

const QUEUE_LIMIT: usize = 64 * 1024;
/// What the queue may hold past its limit: the one PONG (16 bytes) queued when it was just
/// under it.
const ONE_PONG: usize = 16;

/// A server that floods PINGs and reads nothing: the client answers no more PINGs once its
/// queue of PONGs is at the limit, and the write-stall timeout ends the connection. Before
/// the fix the client queued a PONG for every PING (megabytes in this test, without bound
/// in general) until the stall timeout fired. In memory and in virtual time: the stream
/// holds 16 KiB each way, the test's choice, where a socket would leave it to the kernel
/// (whose buffers may take tens of megabytes of PONGs before the writer stalls). The
/// write-stall timeout over a real socket is `write_stall_kills_connection` in
/// transport.rs.
#[tokio::test(start_paused = true)]
async fn ping_flood_never_read_stays_bounded_and_stall_closes() {
    let mut config = conn_config();
    config.wire.write_queue_limit = QUEUE_LIMIT;
    config.wire.write_stall_timeout = Duration::from_millis(500);
    let (client, mut server) = tokio::io::duplex(16 * 1024);
    let conn = Connection::over(client, config).unwrap();
    let chunk = pings(4 * 1024); // 64 KiB
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        // Bounded: 256 MiB at most; it ends sooner, when the client closes.
        while sent < 256 * 1024 * 1024 {
            match tokio::time::timeout(STEP, server.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
            sent += chunk.len();
            // The fault's pace: 64 KiB of PINGs every 10 ms (virtual time). The peer never
            // reads.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });

    let start = Instant::now();
    let reason = within(conn.closed()).await;
    assert_eq!(reason.kind(), &ErrorKind::ConnectionClosed, "{reason}");
    assert!(reason.to_string().contains("stalled"), "{reason}");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "stalled after {:?}",
        start.elapsed()
    );
    let writer = conn.stats().writer;
    assert!(
        writer.peak_queued <= QUEUE_LIMIT + ONE_PONG,
        "the write queue grew to {} bytes (limit {QUEUE_LIMIT})",
        writer.peak_queued
    );
    let sent = within(flood).await.unwrap();
    // The client did answer the flood for a while, then left the rest unanswered: the
    // bound came from dropping PONGs, not from never reading.
    assert!(writer.queued > 1000, "{writer:?} after {sent} bytes sent");
    assert!(conn.stats().pongs_dropped > 0, "{:?}", conn.stats());
}

/// A server that floods PINGs and reads a trickle: every write makes some progress, so the
/// write-stall timeout never fires; the client's queue must stay bounded all the same
/// (before the fix it grew with everything the server sent). In memory and in virtual time:
/// the stream holds 32 KiB each way, so the client's writes make progress in small steps as
/// the peer reads, whatever the kernel would do with a socket.
#[tokio::test(start_paused = true)]
async fn ping_flood_read_in_a_trickle_stays_bounded() {
    let mut config = conn_config();
    config.wire.write_queue_limit = QUEUE_LIMIT;
    config.wire.write_stall_timeout = Duration::from_secs(1);
    let (client, server) = tokio::io::duplex(32 * 1024);
    let conn = Connection::over(client, config).unwrap();
    let (mut read, mut write) = tokio::io::split(server);
    // 2 MiB/s of PINGs asks for 2 MiB/s of PONGs, over twice what the peer reads: without
    // a bound the client's queue would grow by over a megabyte a second.
    let chunk = pings(4 * 1024); // 64 KiB
    let flood = tokio::spawn(async move {
        for _ in 0..200 {
            match tokio::time::timeout(STEP, write.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
            // The fault's pace: 64 KiB of PINGs every 32 ms (virtual time).
            tokio::time::sleep(Duration::from_millis(32)).await;
        }
    });
    let trickle = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        // The fault: a peer that reads 4 KiB every 5 ms (virtual time), under 1 MB/s, far
        // below what the flood asks for.
        for _ in 0..2000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match tokio::time::timeout(STEP, read.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    });

    // Two write-stall timeouts long (virtual time): the connection stays up (the peer
    // reads), and the queue stays bounded throughout.
    let start = Instant::now();
    let mut look = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < Duration::from_secs(2) {
        look.tick().await;
        let writer = conn.stats().writer;
        assert!(
            writer.peak_queued <= QUEUE_LIMIT + ONE_PONG,
            "the write queue grew to {} bytes (limit {QUEUE_LIMIT})",
            writer.peak_queued
        );
    }
    assert!(conn.is_open(), "{:?}", conn.status());
    assert!(conn.stats().writer.queued > 1000, "{:?}", conn.stats());
    assert!(conn.stats().pongs_dropped > 0, "{:?}", conn.stats());
    conn.close();
    within(conn.closed()).await;
    flood.abort();
    trickle.abort();
    let _ = within(flood).await;
    let _ = within(trickle).await;
}

/// A pool with one connection, and the server side of it.
async fn connected_pool(config: ConnectionConfig) -> (Pool, Peer, TestListener) {
    let listener = TestListener::bind().await;
    let pool = Pool::new(listener.addr().to_string(), pool_config(config));
    let (peer, ready) = tokio::join!(
        listener.accept(),
        within(pool.ready(CallDeadline::default()))
    );
    ready.unwrap();
    (pool, peer, listener)
}

/// Subscribes `pattern` through `pool`, answering the `$subscribe` on `peer`.
async fn subscribe(pool: &Pool, peer: &mut Peer, pattern: &str) -> PushStream {
    let sub = tokio::spawn({
        let pool = pool.clone();
        let pattern = pattern.to_owned();
        async move { pool.subscribe(&pattern).await }
    });
    let req = peer.recv_request().await;
    assert_eq!(req.method, "$subscribe");
    assert_eq!(req.body, pattern.as_bytes());
    peer.respond(req.id, b"").await;
    within(sub).await.unwrap().unwrap()
}

/// Waits until the client has read everything sent before: it answers a PING sent last.
async fn sync(peer: &mut Peer) {
    peer.send_raw(&encode(Envelope::Ping(Ping { nonce: [7; 8] })))
        .await;
    loop {
        match peer.recv().await {
            Received::Envelope(OwnedEnvelope::Pong(p)) if p.nonce == [7; 8] => return,
            Received::Envelope(_) => {}
            Received::Closed => panic!("the client closed"),
        }
    }
}

/// Large pushes to a subscriber that does not read: the queue holds at most
/// `push_queue_bytes`, well under `push_queue` pushes, and the rest is lost by the policy
/// and counted. Before the fix all 64 pushes (4 MiB) were queued: only the count bounded.
#[tokio::test]
async fn large_pushes_slow_subscriber_bounded_by_bytes() {
    const BYTES: usize = 1024 * 1024;
    const N: usize = 64;
    let body_len = 64 * 1024;
    // "big" + the body: 15 fit in 1 MiB, the 16th does not.
    let push_len = 3 + body_len;
    let fit = BYTES / push_len;
    assert_eq!(fit, 15);
    for policy in [PushOverflow::DropNewest, PushOverflow::DropOldest] {
        let mut config = conn_config();
        config.push_queue_bytes = BYTES;
        config.push_overflow = policy;
        assert_eq!(config.push_queue, 1024);
        let (pool, mut peer, _listener) = connected_pool(config).await;
        let mut sub = subscribe(&pool, &mut peer, "big").await;

        let mut flood = Vec::new();
        for i in 0..N {
            let mut body = vec![0u8; body_len];
            body[..8].copy_from_slice(&(i as u64).to_be_bytes());
            flood.extend(notify("big", &body));
        }
        peer.send_raw(&flood).await;
        sync(&mut peer).await;

        assert_eq!(sub.queued(), fit, "{policy:?}");
        assert_eq!(sub.queued_bytes(), fit * push_len, "{policy:?}");
        let stats = pool.stats();
        assert_eq!(stats.push_dropped, (N - fit) as u64, "{policy:?}");
        // DropOldest queues every push, dropping older ones to make room.
        let delivered = match policy {
            PushOverflow::DropNewest => fit,
            PushOverflow::DropOldest => N,
        };
        assert_eq!(stats.push_delivered, delivered as u64, "{policy:?}");
        let mut got = Vec::new();
        while let Some(push) = sub.try_recv() {
            got.push(u64::from_be_bytes(push.body()[..8].try_into().unwrap()) as usize);
        }
        let expected: Vec<usize> = match policy {
            PushOverflow::DropNewest => (0..fit).collect(),
            PushOverflow::DropOldest => (N - fit..N).collect(),
        };
        assert_eq!(got, expected, "{policy:?}");
        assert_eq!(sub.queued_bytes(), 0);
        assert!(sub.error().is_none());

        // A push larger than the whole bound still reaches an empty queue.
        let huge = vec![1u8; BYTES + 1];
        peer.send_raw(&notify("big", &huge)).await;
        sync(&mut peer).await;
        assert_eq!(sub.queued(), 1);
        assert_eq!(within(sub.recv()).await.unwrap().body().len(), huge.len());
        pool.close();
    }
}

/// Subscribes, then kills the first connection; returns the subscription, the second
/// connection's peer and the id of the `$subscribe` the pool sent on it by itself.
async fn reconnected(config: ConnectionConfig) -> (Pool, PushStream, Peer, u32, TestListener) {
    let (pool, mut first, listener) = connected_pool(config).await;
    let sub = subscribe(&pool, &mut first, "orders.*").await;
    drop(first);
    let mut second = listener.accept().await;
    let req = second.recv_request().await;
    assert_eq!(req.method, "$subscribe");
    assert_eq!(req.body, b"orders.*");
    (pool, sub, second, req.id, listener)
}

/// The server refuses the `$subscribe` the pool sends again after a reconnect: the
/// subscription ends and says why, instead of staying open and receiving nothing. The
/// pattern is forgotten, so subscribing again asks the server afresh.
#[tokio::test]
async fn refused_resubscribe_ends_the_subscription() {
    let (pool, mut sub, mut peer, id, _listener) = reconnected(conn_config()).await;
    peer.send_raw(&error(id, 1000, "no more orders")).await;
    assert!(within(sub.recv()).await.is_none(), "the stream ends");
    let err = sub.error().expect("the subscription says why it ended");
    assert!(
        matches!(err.kind(), ErrorKind::Remote { code } if code.0 == 1000),
        "{err}"
    );
    assert!(err.to_string().contains("orders.*"), "{err}");
    assert_eq!(pool.stats().in_flight, 0);
    drop(sub);

    // Subscribing again sends `$subscribe` (the failed one left no local subscriber).
    let mut again = subscribe(&pool, &mut peer, "orders.*").await;
    peer.send_raw(&notify("orders.new", b"1")).await;
    let push = within(again.recv()).await.unwrap();
    assert_eq!(push.body(), &b"1"[..]);
    assert!(again.error().is_none());
    pool.close();
}

/// The server never answers the `$subscribe` the pool sends again: after the subscribe
/// timeout it is cancelled, leaves the pending table, and the subscription ends with a
/// timeout.
#[tokio::test]
async fn unanswered_resubscribe_times_out() {
    let mut config = conn_config();
    config.subscribe_timeout = Duration::from_millis(300);
    let (pool, mut sub, mut peer, id, _listener) = reconnected(config).await;
    assert!(within(sub.recv()).await.is_none(), "the stream ends");
    let err = sub.error().expect("the subscription says why it ended");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(within(peer.recv_cancel()).await, id);
    assert_eq!(pool.stats().in_flight, 0);
    assert_eq!(pool.stats().cancels_sent, 1);
    // A late answer is dropped and counted, and hurts nobody.
    peer.respond(id, b"").await;
    sync(&mut peer).await;
    assert_eq!(pool.stats().late_answers, 1);
    pool.close();
}

/// A detached `$unsubscribe` the server never answers does not keep a draining connection
/// open: it is given up after the subscribe timeout and the connection closes (in memory,
/// virtual time).
#[tokio::test(start_paused = true)]
async fn unanswered_unsubscribe_does_not_keep_draining_connection_open() {
    let mut config = conn_config();
    config.subscribe_timeout = Duration::from_secs(1);
    let (conn, mut peer) = duplex_connection(64 * 1024, config);
    let sub = tokio::spawn({
        let conn = conn.clone();
        async move { conn.subscribe("t", CallDeadline::default()).await }
    });
    let req = peer.recv_request().await;
    peer.respond(req.id, b"").await;
    let sub = within(sub).await.unwrap().unwrap();
    let start = Instant::now();
    drop(sub);
    let unsub = peer.recv_request().await;
    assert_eq!(unsub.method, "$unsubscribe");
    assert_eq!(conn.in_flight(), 1);

    conn.drain();
    let reason = within(conn.closed()).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed <= Duration::from_millis(1005),
        "closed after {elapsed:?}: {reason}"
    );
    assert!(reason.to_string().contains("drained"), "{reason}");
    assert_eq!(within(peer.recv_cancel()).await, unsub.id);
    assert!(peer.expect_closed(STEP).await);
}
