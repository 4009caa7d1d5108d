//! Helpers shared by the transport's loopback tests.
#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::time::Duration;

use mcp_test_support::{EchoServer, STEP};
use mcp_transport::{
    BackoffConfig, Connect, Connection, ConnectionConfig, PoolConfig, TransportError,
};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Awaits `f` for at most [`STEP`], failing the test otherwise.
pub(crate) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .expect("finished in time")
}

/// Connection settings for tests: the defaults with a connect timeout of 2 s.
pub(crate) fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout: Duration::from_secs(2),
        ..ConnectionConfig::default()
    }
}

/// Pool settings for tests over `connection`: reconnects and sweeps fast enough for tests.
pub(crate) fn pool_config_with(connection: ConnectionConfig) -> PoolConfig {
    PoolConfig {
        connection,
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        maintenance_interval: Duration::from_millis(50),
        ..PoolConfig::default()
    }
}

/// Polls `done` until it holds, failing the test with `what` after [`STEP`]. The wait is on
/// a condition, not on a length of time: the tick is only how often it is looked at (in
/// virtual time, when the test pauses the clock).
pub(crate) async fn until(what: &str, done: impl FnMut() -> bool) {
    until_within(STEP, what, done).await;
}

/// [`until`] with its own bound.
pub(crate) async fn until_within(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let poll = async {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !done() {
            tick.tick().await;
        }
    };
    if tokio::time::timeout(bound, poll).await.is_err() {
        panic!("{what}: not within {bound:?}");
    }
}

/// The server end of an in-memory stream, driven by the test (every read bounded by
/// `mcp_test_support::STEP`, in virtual time when the test pauses the clock), for shell
/// tests that need no real socket fault.
pub(crate) type DuplexPeer = mcp_test_support::Peer<DuplexStream>;

/// A client connection over an in-memory stream of `capacity` bytes each way, and its
/// server end.
pub(crate) fn duplex_connection(
    capacity: usize,
    config: ConnectionConfig,
) -> (Connection, DuplexPeer) {
    let (client, server) = tokio::io::duplex(capacity);
    let conn = Connection::over(client, config).expect("starts");
    (conn, DuplexPeer::over(server))
}

/// A [`Connect`] that opens in-memory streams and hands their server ends to a
/// [`DuplexListener`]: a pool over it runs without sockets.
pub(crate) struct DuplexConnect {
    capacity: usize,
    tx: mpsc::UnboundedSender<DuplexStream>,
}

impl Connect for DuplexConnect {
    type Io = DuplexStream;

    async fn connect(&self, _timeout: Duration) -> Result<DuplexStream, TransportError> {
        let (client, server) = tokio::io::duplex(self.capacity);
        self.tx
            .send(server)
            .map_err(|_| TransportError::connect_refused("the test's listener is gone"))?;
        Ok(client)
    }

    fn endpoint(&self) -> &str {
        "duplex"
    }
}

/// The server side of a [`DuplexConnect`].
pub(crate) struct DuplexListener {
    rx: mpsc::UnboundedReceiver<DuplexStream>,
}

impl DuplexListener {
    /// A connector opening streams of `capacity` bytes each way, and its listener.
    pub(crate) fn new(capacity: usize) -> (DuplexConnect, DuplexListener) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DuplexConnect { capacity, tx }, DuplexListener { rx })
    }

    /// The next connection's server end (fails the test after [`STEP`]).
    pub(crate) async fn accept(&mut self) -> DuplexPeer {
        let stream = tokio::time::timeout(STEP, self.rx.recv())
            .await
            .expect("a client connects in time")
            .expect("the connector is alive");
        DuplexPeer::over(stream)
    }
}

/// Starts an echo server on `addr` if the port can be bound now.
pub(crate) fn rebind(addr: std::net::SocketAddr) -> Option<EchoServer> {
    // `start_on` binds at once, so one poll is all it needs.
    let mut start = std::pin::pin!(EchoServer::start_on(addr));
    let waker = std::task::Waker::noop();
    match start
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(Ok(server)) => Some(server),
        _ => None,
    }
}
