//! The server and a client connection over in-memory streams (`tokio::io::duplex`): the
//! drivers are generic over the byte stream, so nothing here touches a socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::format;
use mcp_server::{Reply, Server};
use mcp_transport::{Accept, Answer, CallDeadline, Connection, ConnectionConfig, Meta};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Accepts the duplex streams a test hands it.
struct DuplexAccept(mpsc::Receiver<DuplexStream>);

impl Accept for DuplexAccept {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        match self.0.recv().await {
            Some(stream) => Ok((stream, SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))),
            // Every sender gone: no more clients will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

#[tokio::test]
async fn calls_over_an_in_memory_stream() {
    let (tx, rx) = mpsc::channel(4);
    let server = Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .serve_with(DuplexAccept(rx))
        .unwrap();
    // A small buffer, so that large bodies move in many partial reads and writes.
    let (client_end, server_end) = tokio::io::duplex(1024);
    tx.send(server_end).await.unwrap();
    let conn = Connection::over(client_end, ConnectionConfig::default()).unwrap();
    let opts = || CallDeadline::timeout(Duration::from_secs(5));
    for body in [b"hi".to_vec(), vec![7u8; 200_000]] {
        match conn
            .call("echo", format::RAW, &Meta::new(), &body, opts())
            .await
            .unwrap()
        {
            Answer::Response(r) => assert_eq!(r.body().as_ref(), &body[..]),
            Answer::Error(e) => panic!("{e}"),
        }
    }
    match conn
        .call("nope", format::RAW, &Meta::new(), b"", opts())
        .await
        .unwrap()
    {
        Answer::Error(e) => assert_eq!(e.code(), mcp_codec::ErrorCode::UNKNOWN_METHOD),
        Answer::Response(_) => panic!("an unknown method was answered"),
    }
    assert_eq!(server.stats().accepted_connections, 1);
    conn.close();
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// docs/protocol.md section 4.2: a deadline counts from the head frame's arrival, and the
/// time the rest of the body takes to arrive counts against it. A 70,000-byte REQUEST whose
/// head carries a deadline of 150 ms and whose last CONTINUATION comes 400 ms later is
/// answered ERROR 4, and its handler never runs. Virtual time: no real sleep.
#[tokio::test(start_paused = true)]
async fn a_deadline_counts_from_the_head_frame_not_the_last_continuation() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use mcp_codec::{Envelope, ErrorCode, Flags, MessageFrames, Metadata, Request};
    use mcp_transport::{FrameReader, Inbound, Role, WireConfig};
    use tokio::io::AsyncWriteExt;

    let ran = Arc::new(AtomicUsize::new(0));
    let counted = ran.clone();
    let (tx, rx) = mpsc::channel(4);
    let server = Server::builder()
        .route_raw("count", move |_ctx, body: Bytes| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Reply::new(body)) }
        })
        .serve_with(DuplexAccept(rx))
        .unwrap();
    let (client, server_end) = tokio::io::duplex(256 * 1024);
    let (read, mut client) = tokio::io::split(client);
    tx.send(server_end).await.unwrap();

    let request = |id: u32, deadline: u32, body: &[u8]| {
        let deadline = deadline.to_be_bytes();
        let entries: &[(&str, &[u8])] = &[("deadline", &deadline)];
        let mut bytes = Vec::new();
        MessageFrames::new(Envelope::Request(Request {
            id,
            flags: Flags::NONE,
            format: format::RAW,
            method: "count",
            meta: Metadata::from_pairs(entries),
            body,
        }))
        .unwrap()
        .write_all_to_vec(&mut bytes)
        .unwrap();
        bytes
    };
    let body = vec![1u8; 70_000];
    let bytes = request(1, 150, &body);
    // The head frame (magic, version, type, length, payload, CRC) and then the rest.
    let head_len = 8 + usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
    assert!(head_len < bytes.len(), "the request spans frames");
    client.write_all(&bytes[..head_len]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.write_all(&bytes[head_len..]).await.unwrap();

    // The same request sent whole, with time to spare, is served: the test can tell.
    let whole = request(2, 5_000, &body);
    client.write_all(&whole).await.unwrap();

    let mut reader = FrameReader::new(read, &WireConfig::new(Role::Client));
    match reader.next().await.unwrap() {
        Some(Inbound::Error { id, code, .. }) => {
            assert_eq!((id, code), (1, ErrorCode::DEADLINE_EXCEEDED));
        }
        other => panic!("expected ERROR 4 for id 1, got {other:?}"),
    }
    match reader.next().await.unwrap() {
        Some(Inbound::Response(r)) => assert_eq!((r.id(), r.body().len()), (2, body.len())),
        other => panic!("expected the answer to id 2, got {other:?}"),
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "only the request in time ran"
    );
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A client that connects and never completes a frame (silent, or a byte at a time) is
/// closed at the first-frame limit, long before the heartbeat (15 s + 5 s) would; a client
/// that sends a frame in time stays. Virtual time.
#[tokio::test(start_paused = true)]
async fn a_connection_without_a_first_frame_is_closed_at_its_time_limit() {
    use mcp_codec::{Envelope, Ping};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (tx, rx) = mpsc::channel(4);
    let server = Server::builder()
        .first_frame_timeout(Duration::from_secs(2))
        .serve_with(DuplexAccept(rx))
        .unwrap();
    let start = tokio::time::Instant::now();
    let (mut silent, end) = tokio::io::duplex(1024);
    tx.send(end).await.unwrap();
    let (mut dribbling, end) = tokio::io::duplex(1024);
    tx.send(end).await.unwrap();
    let (mut talking, end) = tokio::io::duplex(1024);
    tx.send(end).await.unwrap();
    let mut ping = Vec::new();
    Envelope::Ping(Ping { nonce: [7; 8] })
        .encode_to_vec(&mut ping)
        .unwrap();
    talking.write_all(&ping).await.unwrap();
    // One byte of a frame every 500 ms: never a whole frame.
    let dribble = tokio::spawn(async move {
        for byte in ping.iter().take(6) {
            if dribbling.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut rest = Vec::new();
        dribbling.read_to_end(&mut rest).await.unwrap();
        tokio::time::Instant::now()
    });
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2), "the silent one");
    assert!(rest.is_empty(), "nothing sent to it");
    let closed = dribble.await.unwrap();
    // Seen at its next byte after the close.
    let dribbled = closed - start;
    assert!(
        (Duration::from_secs(2)..=Duration::from_millis(2500)).contains(&dribbled),
        "the dribbling one: {dribbled:?}"
    );
    // The one that sent a whole frame got its PONG and is still there.
    let mut pong = [0u8; 16];
    talking.read_exact(&mut pong).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(server.stats().open_connections, 1);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// `max_connection_age`: at its age (give or take 10%) a connection is sent GOAWAY code 0
/// and closes once drained, so that a long-lived client moves to a new connection.
#[tokio::test(start_paused = true)]
async fn a_connection_is_sent_away_at_its_maximum_age() {
    let (tx, rx) = mpsc::channel(4);
    let server = Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .max_connection_age(Duration::from_secs(10))
        .serve_with(DuplexAccept(rx))
        .unwrap();
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    tx.send(server_end).await.unwrap();
    let start = tokio::time::Instant::now();
    let conn = Connection::over(client_end, ConnectionConfig::default()).unwrap();
    let answer = conn
        .call(
            "echo",
            format::RAW,
            &Meta::new(),
            b"x",
            CallDeadline::timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!(matches!(answer, Answer::Response(_)));
    let mut status = conn.watch_status();
    let sent_away = status.wait_for(|s| !matches!(s, mcp_transport::ConnectionStatus::Open));
    let draining = tokio::time::timeout(Duration::from_secs(20), sent_away)
        .await
        .expect("sent away within 20 s")
        .unwrap()
        .clone();
    let age = start.elapsed();
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&age),
        "sent away after {age:?}"
    );
    // Nothing was in flight: the GOAWAY drains the connection at once, so the status may
    // already say closed, drained.
    match draining {
        mcp_transport::ConnectionStatus::Draining { reason } => {
            assert!(
                reason.contains("GOAWAY 0") && reason.contains("max connection age"),
                "{reason}"
            );
        }
        mcp_transport::ConnectionStatus::Closed { reason } => {
            assert!(reason.to_string().contains("drained"), "{reason}");
        }
        other => panic!("expected draining, got {other:?}"),
    }
    let reason = conn.closed().await;
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "closed once drained: {reason}"
    );
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// An `Accept` whose calls numbered in `failing` fail with EMFILE (out of file
/// descriptors), noting when each call came; the others hand out the duplex streams a test
/// sends.
struct ExhaustedAccept {
    failing: std::ops::RangeInclusive<usize>,
    calls: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    streams: mpsc::Receiver<DuplexStream>,
}

impl Accept for ExhaustedAccept {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(tokio::time::Instant::now());
            calls.len()
        };
        if self.failing.contains(&call) {
            // EMFILE: what accept(2) says when the process has no descriptor left.
            return Err(io::Error::from_raw_os_error(24));
        }
        match self.streams.recv().await {
            Some(stream) => Ok((stream, SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

/// Out of file descriptors, the accept loop waits 5 ms, then twice as long after each
/// failure up to 1 s, instead of spinning (a spin would never yield here: this runtime
/// has one thread and virtual time); a connection already open is answered throughout;
/// the first accept that succeeds serves its client. Virtual time.
#[tokio::test(start_paused = true)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_serves_the_open_connections() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel(4);
    // The 1st accept takes the early client; the 2nd to 13th fail.
    let server = Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .serve_with(ExhaustedAccept {
            failing: 2..=13,
            calls: calls.clone(),
            streams: rx,
        })
        .unwrap();
    let (early_client, early_server) = tokio::io::duplex(1024);
    tx.send(early_server).await.unwrap();
    let early = Connection::over(early_client, ConnectionConfig::default()).unwrap();
    let opts = || CallDeadline::timeout(Duration::from_secs(5));
    // During the shortage (12 failures: 5 + 10 + ... + 640 + 1000 x 4 = 5.3 s), the open
    // connection is answered at every step, without waiting for the accept loop.
    for _ in 0..10 {
        let asked = tokio::time::Instant::now();
        match early
            .call("echo", format::RAW, &Meta::new(), b"hi", opts())
            .await
            .unwrap()
        {
            Answer::Response(r) => assert_eq!(r.body().as_ref(), b"hi"),
            Answer::Error(e) => panic!("{e}"),
        }
        assert_eq!(asked.elapsed(), Duration::ZERO, "answered at once");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The new client comes while descriptors are short: the first accept that succeeds
    // takes it.
    let (late_client, late_server) = tokio::io::duplex(1024);
    tx.send(late_server).await.unwrap();
    let late = Connection::over(late_client, ConnectionConfig::default()).unwrap();
    match late
        .call("echo", format::RAW, &Meta::new(), b"late", opts())
        .await
        .unwrap()
    {
        Answer::Response(r) => assert_eq!(r.body().as_ref(), b"late"),
        Answer::Error(e) => panic!("{e}"),
    }
    let calls = calls.lock().unwrap().clone();
    // The early accept, 12 failures, the accept that took the late client, the next.
    assert_eq!(calls.len(), 15, "accept calls");
    let gaps: Vec<u64> = calls[1..14]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert_eq!(
        gaps,
        [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000],
        "the waits after each failed accept"
    );
    early.close();
    late.close();
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}
