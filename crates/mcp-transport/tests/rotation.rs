//! A server that sends GOAWAY after every N requests of a connection (and answers
//! everything it accepted) must cost callers nothing: the pool moves new work to a fresh
//! connection at once, without the backoff meant for failures, and a request refused by
//! the GOAWAY goes to another connection without reaching the caller as an error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcp_codec::{Envelope, Flags, GoAway, GoAwayCode, Metadata, Response, format};
use mcp_transport::{Answer, CallDeadline, Inbound, McpCodec, Meta, Pool, PoolConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Decoder, Encoder};

/// Serves echo; after `every` requests on a connection, sends GOAWAY with the last id it
/// accepted, and refuses later requests with ERROR 6 until the client closes (as
/// docs/protocol.md section 7 has a server do).
async fn rotating_server(every: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut codec = McpCodec::new(Role::Server);
                let mut inbuf = bytes::BytesMut::new();
                let mut served = 0usize;
                let mut gone = false;
                loop {
                    let mut out = bytes::BytesMut::new();
                    while let Ok(Some(message)) = codec.decode(&mut inbuf) {
                        let Inbound::Request(request) = message else {
                            continue;
                        };
                        if gone {
                            let refusal = Envelope::Error(mcp_codec::ErrorFrame {
                                id: request.id(),
                                code: mcp_codec::ErrorCode::UNAVAILABLE,
                                message: "going away",
                            });
                            codec.encode(refusal, &mut out).unwrap();
                            continue;
                        }
                        let response = Envelope::Response(Response {
                            id: request.id(),
                            flags: Flags::NONE,
                            format: request.format(),
                            meta: Metadata::EMPTY,
                            body: request.body(),
                        });
                        codec.encode(response, &mut out).unwrap();
                        served += 1;
                        if served == every {
                            gone = true;
                            let goaway = Envelope::GoAway(GoAway {
                                last_id: request.id(),
                                code: GoAwayCode::SHUTTING_DOWN,
                                reason: "rotating",
                            });
                            codec.encode(goaway, &mut out).unwrap();
                        }
                    }
                    if !out.is_empty() && stream.write_all(&out).await.is_err() {
                        return;
                    }
                    match stream.read_buf(&mut inbuf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn run(every: usize, callers: usize, calls_each: usize) -> usize {
    let (addr, accepted) = rotating_server(every).await;
    let config = PoolConfig {
        default_timeout: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let pool = Pool::new(addr.to_string(), config);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..calls_each {
                let body = format!("{caller}-{i}");
                let reply = pool
                    .call(
                        "echo",
                        format::RAW,
                        &Meta::new(),
                        body.as_bytes(),
                        CallDeadline::timeout(Duration::from_secs(10)),
                    )
                    .await
                    .unwrap_or_else(|err| panic!("call {caller}-{i} failed: {err}"));
                match reply {
                    Answer::Response(r) => assert_eq!(r.body().as_ref(), body.as_bytes()),
                    Answer::Error(e) => panic!("call {caller}-{i}: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("callers finish")
            .expect("no caller panicked");
    }
    pool.close();
    accepted.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_after_every_1000_requests_fails_no_call() {
    let connections = run(1000, 16, 250).await;
    assert!(
        connections >= 4,
        "the server rotated: {connections} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_after_every_50_requests_fails_no_call() {
    let connections = run(50, 16, 100).await;
    assert!(
        connections >= 32,
        "the server rotated: {connections} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_after_every_request_fails_no_call() {
    let connections = run(1, 8, 25).await;
    assert!(
        connections >= 200,
        "the server rotated: {connections} connections"
    );
}
