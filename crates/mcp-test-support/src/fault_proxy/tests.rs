//! Each fault against a plain TCP echo server.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{Direction, FaultProxy, Faults};
use crate::STEP;

/// Echoes every connection's bytes until EOF, then closes it.
struct TcpEcho {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpEcho {
    async fn start() -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        TcpEcho { addr, task }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An echo server behind a proxy.
async fn setup() -> (TcpEcho, FaultProxy) {
    let echo = TcpEcho::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    (echo, proxy)
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = tokio::time::timeout(STEP, TcpStream::connect(proxy.addr()))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Some bytes that are not all alike.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Writes `data`, half-closes, and reads until EOF, both at once.
async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(data).await.expect("write");
        write.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let receive = read.read_to_end(&mut back);
    let ((), received) = tokio::time::timeout(STEP, async { tokio::join!(send, receive) })
        .await
        .expect("round trip in time");
    received.expect("read to end");
    back
}

/// Reads exactly `len` bytes.
async fn read_exact(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(STEP, stream.read_exact(&mut buf))
        .await
        .expect("read in time")
        .expect("read");
    buf
}

/// What the next read brings within `within`: `None` if nothing.
async fn read_within(stream: &mut TcpStream, within: Duration) -> Option<io::Result<usize>> {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .ok()
}

#[tokio::test]
async fn forwards_both_ways_passes_half_closes_and_counts() {
    let (_echo, proxy) = setup().await;
    let data = pattern(100_000);
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, &data).await, data);
    drop(stream);
    proxy
        .wait_until("the connection is closed", |s| s.open == 0)
        .await;
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closed, 1);
    assert_eq!(stats.to_server.read, 100_000);
    assert_eq!(stats.to_server.forwarded, 100_000);
    assert_eq!(stats.to_client.forwarded, 100_000);
    assert_eq!(stats.to_client.dropped, 0);
}

#[tokio::test]
async fn latency_is_added_per_direction() {
    let (_echo, proxy) = setup().await;
    proxy.set(
        Direction::ToServer,
        Faults::none().latency(Duration::from_millis(200)),
    );
    proxy.set(
        Direction::ToClient,
        Faults::none().latency(Duration::from_millis(100)),
    );
    let mut stream = connect(&proxy).await;
    let start = Instant::now();
    stream.write_all(b"ping").await.expect("write");
    assert_eq!(read_exact(&mut stream, 4).await, b"ping");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );

    proxy.clear();
    stream.write_all(b"pong").await.expect("write");
    assert_eq!(read_exact(&mut stream, 4).await, b"pong");
}

#[tokio::test]
async fn bandwidth_is_limited() {
    let (_echo, proxy) = setup().await;
    proxy.set(Direction::ToClient, Faults::none().bandwidth(100_000));
    let data = pattern(50_000);
    let mut stream = connect(&proxy).await;
    let start = Instant::now();
    assert_eq!(round_trip(&mut stream, &data).await, data);
    // 50 kB at 100 kB/s; the first 20 ms worth goes at once.
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    assert!(proxy.stats().to_client.writes >= 25);
}

#[tokio::test]
async fn a_blackhole_drops_bytes_keeps_the_socket_open_and_can_be_lifted() {
    let (_echo, proxy) = setup().await;
    proxy.set(Direction::ToServer, Faults::none().blackhole());
    let mut stream = connect(&proxy).await;
    stream.write_all(&pattern(1000)).await.expect("write");
    proxy
        .wait_until("1000 bytes dropped", |s| s.to_server.dropped == 1000)
        .await;
    assert!(
        read_within(&mut stream, Duration::from_millis(200))
            .await
            .is_none(),
        "neither data nor EOF while blackholed"
    );
    assert_eq!(proxy.stats().to_server.forwarded, 0);

    proxy.clear();
    stream.write_all(b"hello").await.expect("write");
    assert_eq!(read_exact(&mut stream, 5).await, b"hello");
    assert_eq!(proxy.stats().open, 1);
}

#[tokio::test]
async fn a_stall_closes_the_connection_after_its_time() {
    let (_echo, proxy) = setup().await;
    proxy.set(
        Direction::ToClient,
        Faults::none().stall_then_close(Duration::from_millis(300)),
    );
    let start = Instant::now();
    let mut stream = connect(&proxy).await;
    stream.write_all(b"ping").await.expect("write");
    let read = read_within(&mut stream, STEP)
        .await
        .expect("closed in time");
    assert_eq!(read.expect("a FIN"), 0, "EOF, and no echo");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        proxy.stats().to_client.read,
        0,
        "the stalled side is not read"
    );
}

#[tokio::test]
async fn a_stall_without_end_holds_data_until_lifted() {
    let (_echo, proxy) = setup().await;
    let mut stream = connect(&proxy).await;
    stream.write_all(b"one").await.expect("write");
    assert_eq!(read_exact(&mut stream, 3).await, b"one");
    // Set on a connection that is open and idle: takes effect at once.
    proxy.set(Direction::ToClient, Faults::none().stall());
    stream.write_all(b"two").await.expect("write");
    assert!(
        read_within(&mut stream, Duration::from_millis(200))
            .await
            .is_none()
    );
    proxy.clear();
    assert_eq!(read_exact(&mut stream, 3).await, b"two");
}

#[tokio::test]
async fn a_cut_forwards_exactly_n_bytes_then_closes() {
    let (_echo, proxy) = setup().await;
    proxy.set(Direction::ToClient, Faults::none().cut_after(10));
    let data = pattern(100);
    let mut stream = connect(&proxy).await;
    stream.write_all(&data).await.expect("write");
    let mut back = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut back))
        .await
        .expect("closed in time")
        .expect("a FIN");
    assert_eq!(back, data[..10]);
    assert_eq!(proxy.stats().to_client.forwarded, 10);
}

#[tokio::test]
async fn a_cut_counts_from_when_it_is_set() {
    let (_echo, proxy) = setup().await;
    let mut stream = connect(&proxy).await;
    stream.write_all(&pattern(50)).await.expect("write");
    assert_eq!(read_exact(&mut stream, 50).await, pattern(50));
    proxy.set(Direction::ToClient, Faults::none().cut_after(10));
    let data = pattern(100);
    stream.write_all(&data).await.expect("write");
    let mut back = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut back))
        .await
        .expect("closed in time")
        .expect("a FIN");
    assert_eq!(back, data[..10], "ten bytes after the cut was set");
    assert_eq!(proxy.stats().to_client.forwarded, 60);
}

#[tokio::test]
async fn reset_after_n_bytes_sends_an_rst() {
    let (_echo, proxy) = setup().await;
    proxy.set(Direction::ToServer, Faults::none().reset_after(0));
    let mut stream = connect(&proxy).await;
    stream.write_all(b"boom").await.expect("write");
    let read = read_within(&mut stream, STEP).await.expect("reset in time");
    assert_eq!(
        read.expect_err("an RST").kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(proxy.stats().to_server.forwarded, 0);
}

#[tokio::test]
async fn slicing_makes_tiny_writes_and_keeps_every_byte() {
    let (_echo, proxy) = setup().await;
    proxy.set_both(Faults::none().slice(1, 7));
    let data = pattern(20_000);
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, &data).await, data);
    let stats = proxy.stats();
    // Pieces of at most 7 bytes (4 on average).
    assert!(stats.to_server.writes >= 20_000 / 7, "{stats:?}");
    assert!(stats.to_client.writes >= 20_000 / 7, "{stats:?}");
}

#[tokio::test]
async fn reset_all_and_close_all_end_the_open_connections() {
    let (_echo, proxy) = setup().await;
    let mut first = connect(&proxy).await;
    first.write_all(b"a").await.expect("write");
    assert_eq!(read_exact(&mut first, 1).await, b"a");
    proxy.reset_all();
    let read = read_within(&mut first, STEP).await.expect("reset in time");
    assert_eq!(
        read.expect_err("an RST").kind(),
        io::ErrorKind::ConnectionReset
    );

    // A connection made after the reset order is not affected by it.
    let mut second = connect(&proxy).await;
    second.write_all(b"b").await.expect("write");
    assert_eq!(read_exact(&mut second, 1).await, b"b");
    proxy.close_all();
    let read = read_within(&mut second, STEP)
        .await
        .expect("closed in time");
    assert_eq!(read.expect("a FIN"), 0);
    proxy.wait_until("both closed", |s| s.open == 0).await;
    assert_eq!(proxy.stats().closed, 2);
}

#[tokio::test]
async fn new_connections_can_be_refused_and_accepted_again() {
    let (_echo, proxy) = setup().await;
    let mut open = connect(&proxy).await;
    proxy.refuse_new().await;
    let refused = TcpStream::connect(proxy.addr()).await.expect_err("refused");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    // The open connection is left alone.
    open.write_all(b"still").await.expect("write");
    assert_eq!(read_exact(&mut open, 5).await, b"still");

    proxy.accept_new().await;
    let mut again = connect(&proxy).await;
    again.write_all(b"back").await.expect("write");
    assert_eq!(read_exact(&mut again, 4).await, b"back");
}

#[tokio::test]
async fn a_target_that_refuses_gets_the_client_reset() {
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let proxy = FaultProxy::start(addr).await;
    let mut stream = connect(&proxy).await;
    let read = read_within(&mut stream, STEP)
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    proxy
        .wait_until("an upstream failure", |s| s.upstream_failures == 1)
        .await;
}

#[tokio::test]
async fn shutdown_closes_everything() {
    let (_echo, proxy) = setup().await;
    let addr = proxy.addr();
    let mut stream = connect(&proxy).await;
    stream.write_all(b"x").await.expect("write");
    assert_eq!(read_exact(&mut stream, 1).await, b"x");
    proxy.shutdown().await;
    let read = read_within(&mut stream, STEP)
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let refused = TcpStream::connect(addr).await.expect_err("nobody listens");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn shutdown_waits_for_the_connections_and_drop_ends_them_too() {
    let (_echo, proxy) = setup().await;
    let mut stream = connect(&proxy).await;
    stream.write_all(b"x").await.expect("write");
    assert_eq!(read_exact(&mut stream, 1).await, b"x");
    let counters = proxy.counters.clone();
    proxy.shutdown().await;
    assert_eq!(counters.open.load(std::sync::atomic::Ordering::SeqCst), 0);

    let (_echo, proxy) = setup().await;
    let mut stream = connect(&proxy).await;
    stream.write_all(b"y").await.expect("write");
    assert_eq!(read_exact(&mut stream, 1).await, b"y");
    drop(proxy);
    let read = read_within(&mut stream, STEP)
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_second_host_on_127_0_0_2() {
    let echo = TcpEcho::start().await;
    let proxy = FaultProxy::start_on("127.0.0.2:0".parse().expect("addr"), echo.addr)
        .await
        .expect("bind 127.0.0.2");
    assert_eq!(proxy.addr().ip().to_string(), "127.0.0.2");
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"two").await, b"two");
}
