//! Helpers shared by the transport's loopback tests.
#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mcp_codec::{
    Assembled, Assembler, Decoded, Envelope, FrameDecoder, OwnedEnvelope, OwnedRequest, Pong,
};
use mcp_test_support::{EchoServer, Received, STEP, encode, response};
use mcp_transport::{
    BackoffConfig, Connect, Connection, ConnectionConfig, PoolConfig, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
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

/// The server end of an in-memory stream, driven by the test: the duplex twin of
/// `mcp_test_support::Peer`, for shell tests that need no real socket fault. Every read is
/// bounded by [`STEP`] (virtual time, when the test pauses the clock).
pub(crate) struct DuplexPeer {
    stream: DuplexStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    assembler: Assembler,
    /// PINGs are answered with PONG while reading (unless switched off).
    pub(crate) answer_pings: bool,
}

impl DuplexPeer {
    pub(crate) fn new(stream: DuplexStream) -> DuplexPeer {
        DuplexPeer {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
            assembler: Assembler::default(),
            answer_pings: true,
        }
    }

    /// The next message or control frame (reassembled), as [`Received`].
    pub(crate) async fn recv(&mut self) -> Received {
        tokio::time::timeout(STEP, self.recv_inner())
            .await
            .expect("the client sends something in time")
    }

    async fn recv_inner(&mut self) -> Received {
        loop {
            match self
                .decoder
                .decode(&self.buf)
                .expect("client sends valid frames")
            {
                Decoded::Frame { frame, len } => {
                    let owned = match self.assembler.push(frame).expect("valid message") {
                        Assembled::Envelope(env) => Some(OwnedEnvelope::from_envelope(&env)),
                        Assembled::Message { head, body } => {
                            let mut env = OwnedEnvelope::from_envelope(&head);
                            match &mut env {
                                OwnedEnvelope::Request(r) => r.body = body,
                                OwnedEnvelope::Response(r) => r.body = body,
                                OwnedEnvelope::Notify(n) => n.body = body,
                                _ => {}
                            }
                            Some(env)
                        }
                        _ => None,
                    };
                    self.buf.advance(len);
                    if let Some(env) = owned {
                        return Received::Envelope(env);
                    }
                }
                Decoded::NeedMore { .. } | Decoded::Skip { .. } => {
                    self.buf.reserve(64 * 1024);
                    let n = self.stream.read_buf(&mut self.buf).await.unwrap_or(0);
                    if n == 0 {
                        return Received::Closed;
                    }
                }
            }
        }
    }

    /// The next REQUEST, answering PINGs on the way (if `answer_pings`).
    pub(crate) async fn recv_request(&mut self) -> OwnedRequest {
        loop {
            match self.recv().await {
                Received::Envelope(OwnedEnvelope::Request(r)) => return r,
                Received::Envelope(other) => self.note(&other).await,
                Received::Closed => panic!("the client closed before sending a request"),
            }
        }
    }

    /// Reads until the next CANCEL and returns its id.
    pub(crate) async fn recv_cancel(&mut self) -> u32 {
        loop {
            match self.recv().await {
                Received::Envelope(OwnedEnvelope::Cancel(c)) => return c.id,
                Received::Envelope(other) => self.note(&other).await,
                Received::Closed => panic!("the client closed before sending CANCEL"),
            }
        }
    }

    /// Reads until a PING arrives (answering it if `answer_pings`) and returns its nonce.
    pub(crate) async fn recv_ping(&mut self) -> [u8; 8] {
        loop {
            match self.recv().await {
                Received::Envelope(OwnedEnvelope::Ping(p)) => {
                    self.note(&OwnedEnvelope::Ping(p)).await;
                    return p.nonce;
                }
                Received::Envelope(_) => {}
                Received::Closed => panic!("the client closed before sending PING"),
            }
        }
    }

    async fn note(&mut self, env: &OwnedEnvelope) {
        if let OwnedEnvelope::Ping(p) = env {
            if self.answer_pings {
                self.send_envelope(Envelope::Pong(Pong { nonce: p.nonce }))
                    .await;
            }
        }
    }

    /// Reads and discards until the client closes; whether it did within `within`.
    pub(crate) async fn expect_closed(&mut self, within: Duration) -> bool {
        let drain = async {
            let mut scratch = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, drain).await.is_ok()
    }

    /// Writes raw bytes.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Writes raw bytes, ignoring failure (the client may be gone).
    pub(crate) async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(STEP, self.stream.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes an envelope (split into CONTINUATION frames when large).
    pub(crate) async fn send_envelope(&mut self, envelope: Envelope<'_>) {
        self.send_raw(&encode(envelope)).await;
    }

    /// Answers `id` with a RESPONSE carrying `body`.
    pub(crate) async fn respond(&mut self, id: u32, body: &[u8]) {
        self.send_raw(&response(id, body)).await;
    }

    /// The underlying stream.
    pub(crate) fn stream(&mut self) -> &mut DuplexStream {
        &mut self.stream
    }
}

/// A client connection over an in-memory stream of `capacity` bytes each way, and its
/// server end.
pub(crate) fn duplex_connection(
    capacity: usize,
    config: ConnectionConfig,
) -> (Connection, DuplexPeer) {
    let (client, server) = tokio::io::duplex(capacity);
    let conn = Connection::over(client, config).expect("starts");
    (conn, DuplexPeer::new(server))
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
        DuplexPeer::new(stream)
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
