//! What an idle connection costs the server, counted by a counting global allocator: the
//! short, deterministic version of the flood bench (`benches/benches/flood.rs`). Alone in
//! its test binary, so that no other test allocates while it counts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::{Envelope, Ping};
use mcp_server::{Reply, Server, ServerHandle};
use mcp_test_support::alloc::{self, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Opens `n` connections (plain blocking sockets: nothing of the client side is counted but
/// the vector, allocated up front), each with one PING answered.
fn open(addr: SocketAddr, n: usize, streams: &mut Vec<TcpStream>) {
    let mut ping = Vec::new();
    Envelope::Ping(Ping { nonce: [1; 8] })
        .encode_to_vec(&mut ping)
        .unwrap();
    let mut pong = vec![0u8; ping.len()];
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&ping).unwrap();
        stream.read_exact(&mut pong).unwrap();
        streams.push(stream);
    }
}

async fn settle(server: &ServerHandle, open: usize) {
    for _ in 0..1000 {
        if server.stats().open_connections == open {
            // The connections' tasks (and their writers) finish their turn.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never counted {open} connections open");
}

/// Heap per idle connection, measured on x86-64 Linux: 4,680 bytes (debug build), 4,636
/// (release, BENCHMARKS.md section 7); 105,820 before the read and write buffers were made
/// lazy. What is left is the connection's two tasks and their shared state. The bound
/// leaves room for other platforms and tokio versions, and fails if a buffer is kept again.
const BOUND: isize = 12 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_holds_no_buffers() {
    const N: usize = 200;
    let server = Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    // One connection first: what the first one makes for good is not a connection's.
    let warm = tokio::task::spawn_blocking(move || {
        let mut streams = Vec::with_capacity(1);
        open(addr, 1, &mut streams);
    });
    warm.await.unwrap();
    settle(&server, 0).await;
    let mut streams = Vec::with_capacity(N);
    let base = alloc::live();
    let streams = tokio::task::spawn_blocking(move || {
        open(addr, N, &mut streams);
        streams
    })
    .await
    .unwrap();
    settle(&server, N).await;
    let per_conn = (alloc::live() - base) / N as isize;
    println!("heap per idle connection: {per_conn} bytes");
    assert!(
        per_conn < BOUND,
        "{per_conn} bytes per idle connection (bound {BOUND})"
    );
    drop(streams);
    settle(&server, 0).await;
    let left = alloc::live() - base;
    println!("heap left after they closed: {left} bytes");
    assert!(
        left < (N * 256) as isize,
        "{left} bytes still held after every connection closed"
    );
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}
