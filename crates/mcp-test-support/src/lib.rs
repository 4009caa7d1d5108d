//! Unpublished test helpers for mcp-rs: scriptable MCP peers over loopback TCP.
//!
//! - [`TestListener`] binds `127.0.0.1:0` and hands out raw [`Peer`]s: a test reads the
//!   client's frames and writes whatever it likes (answers out of order, late or never,
//!   garbage, half a frame then close, RST, GOAWAY, silence).
//! - [`EchoServer`] serves many connections with a fixed behaviour per method (see
//!   [`EchoServer::start`]) and counters, for load and reconnect tests.
//! - [`fault_proxy::FaultProxy`] sits between a real client and a real server and injects
//!   network faults (latency, bandwidth, blackhole, stall, cut, RST, tiny writes, refused
//!   or killed connections) per direction, switchable while calls run.
//!
//! - [`alloc::Counting`], a global allocator counting the bytes live, for measuring what a
//!   connection holds.
//!
//! Every wait here is bounded ([`STEP`]); a helper that times out panics, which fails the
//! test instead of hanging it. Panicking is fine in a test crate and nowhere else.
#![warn(missing_docs)]
// Denied everywhere but in `alloc`, whose global allocator cannot be written without it.
#![deny(unsafe_code)]

pub mod alloc;
pub mod fault_proxy;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use mcp_codec::{
    Assembled, Assembler, Decoded, Envelope, ErrorCode, ErrorFrame, Flags, FrameDecoder, GoAway,
    GoAwayCode, MessageFrames, Metadata, Notify, OwnedEnvelope, OwnedRequest, Pong, Response,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long any single helper step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// Encodes an envelope as the frames a conforming sender writes (a head frame and
/// CONTINUATION frames for a large body).
pub fn encode(envelope: Envelope<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let result = if envelope.body().is_some() {
        MessageFrames::new(envelope).and_then(|mut f| f.write_all_to_vec(&mut out))
    } else {
        envelope.encode_to_vec(&mut out)
    };
    result.expect("test envelope encodes");
    out
}

/// A RESPONSE frame (raw format, no metadata).
pub fn response(id: u32, body: &[u8]) -> Vec<u8> {
    encode(Envelope::Response(Response {
        id,
        flags: Flags::NONE,
        format: 0,
        meta: Metadata::EMPTY,
        body,
    }))
}

/// An ERROR frame.
pub fn error(id: u32, code: u16, message: &str) -> Vec<u8> {
    encode(Envelope::Error(ErrorFrame {
        id,
        code: ErrorCode(code),
        message,
    }))
}

/// A NOTIFY frame (raw format, no metadata).
pub fn notify(topic: &str, body: &[u8]) -> Vec<u8> {
    encode(Envelope::Notify(Notify {
        flags: Flags::NONE,
        format: 0,
        topic,
        meta: Metadata::EMPTY,
        body,
    }))
}

/// A GOAWAY frame.
pub fn goaway(last_id: u32, code: u16, reason: &str) -> Vec<u8> {
    encode(Envelope::GoAway(GoAway {
        last_id,
        code: GoAwayCode(code),
        reason,
    }))
}

/// A listener on `127.0.0.1:0` handing out raw peers.
#[derive(Debug)]
pub struct TestListener {
    listener: TcpListener,
}

impl TestListener {
    /// Binds a fresh loopback port.
    pub async fn bind() -> TestListener {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        TestListener { listener }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("local addr")
    }

    /// The next client connection (fails the test after [`STEP`]).
    pub async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("a client connects in time")
            .expect("accept");
        Peer::new(stream)
    }

    /// The next client connection, if one comes within `within`.
    pub async fn try_accept(&self, within: Duration) -> Option<Peer> {
        match tokio::time::timeout(within, self.listener.accept()).await {
            Ok(Ok((stream, _))) => Some(Peer::new(stream)),
            _ => None,
        }
    }
}

/// The server side of one connection, driven by the test: over TCP from
/// [`TestListener::accept`], or over any byte stream (an in-memory `tokio::io::duplex`, say)
/// from [`Peer::over`].
#[derive(Debug)]
pub struct Peer<S = TcpStream> {
    stream: S,
    buf: BytesMut,
    decoder: FrameDecoder,
    assembler: Assembler,
    /// PINGs are answered with PONG while reading (unless switched off).
    pub answer_pings: bool,
    /// CANCEL ids seen while reading.
    pub cancels: Vec<u32>,
    /// PINGs seen while reading.
    pub pings: usize,
}

/// What [`Peer::recv`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A whole message or control frame.
    Envelope(OwnedEnvelope),
    /// The client closed the stream.
    Closed,
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        let _ = stream.set_nodelay(true);
        Peer::over(stream)
    }

    /// Closes the connection with an RST instead of a FIN.
    pub fn reset(self) {
        let sock = socket2::SockRef::from(&self.stream);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(self);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// The server side of `stream`, driven by the test.
    pub fn over(stream: S) -> Peer<S> {
        Peer {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder::new(),
            assembler: Assembler::default(),
            answer_pings: true,
            cancels: Vec::new(),
            pings: 0,
        }
    }

    /// The next message or control frame (reassembled), answering PINGs if
    /// `answer_pings`; fails the test after [`STEP`] or on a protocol error.
    pub async fn recv(&mut self) -> Received {
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

    /// The next REQUEST, answering PINGs and recording CANCELs on the way; fails the test
    /// if the client closes first.
    pub async fn recv_request(&mut self) -> OwnedRequest {
        loop {
            match self.recv().await {
                Received::Envelope(OwnedEnvelope::Request(r)) => return r,
                Received::Envelope(other) => self.note(&other).await,
                Received::Closed => panic!("the client closed before sending a request"),
            }
        }
    }

    /// Reads until the next CANCEL and returns its id.
    pub async fn recv_cancel(&mut self) -> u32 {
        loop {
            match self.recv().await {
                Received::Envelope(OwnedEnvelope::Cancel(c)) => {
                    self.cancels.push(c.id);
                    return c.id;
                }
                Received::Envelope(other) => self.note(&other).await,
                Received::Closed => panic!("the client closed before sending CANCEL"),
            }
        }
    }

    /// Reads until a PING arrives (answering it if `answer_pings`) and returns its nonce.
    pub async fn recv_ping(&mut self) -> [u8; 8] {
        loop {
            match self.recv().await {
                Received::Envelope(OwnedEnvelope::Ping(p)) => {
                    self.pings += 1;
                    if self.answer_pings {
                        self.send_envelope(Envelope::Pong(Pong { nonce: p.nonce }))
                            .await;
                    }
                    return p.nonce;
                }
                Received::Envelope(other) => self.note(&other).await,
                Received::Closed => panic!("the client closed before sending PING"),
            }
        }
    }

    async fn note(&mut self, env: &OwnedEnvelope) {
        match env {
            OwnedEnvelope::Ping(p) => {
                self.pings += 1;
                if self.answer_pings {
                    self.send_envelope(Envelope::Pong(Pong { nonce: p.nonce }))
                        .await;
                }
            }
            OwnedEnvelope::Cancel(c) => self.cancels.push(c.id),
            _ => {}
        }
    }

    /// Reads and discards until the client closes; returns whether it did within
    /// `within` (an error such as a reset counts as closed).
    pub async fn expect_closed(&mut self, within: Duration) -> bool {
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
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Writes raw bytes, ignoring failure (the client may be gone).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(STEP, self.stream.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes an envelope (split into CONTINUATION frames when large).
    pub async fn send_envelope(&mut self, envelope: Envelope<'_>) {
        self.send_raw(&encode(envelope)).await;
    }

    /// Answers `id` with a RESPONSE carrying `body`.
    pub async fn respond(&mut self, id: u32, body: &[u8]) {
        self.send_raw(&response(id, body)).await;
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }
}

/// A listener whose accept queue is full and never drained, so that a further connect
/// to it hangs (its SYN is dropped by the kernel): a loopback-only "blackholed" address.
///
/// Linux drops a SYN for a listener whose accept queue is full (with the default
/// `tcp_abort_on_overflow = 0`); with backlog 0 the queue holds one connection, so the
/// helper opens connections until one of them stops completing.
#[derive(Debug)]
pub struct Blackhole {
    _listener: std::net::TcpListener,
    _fillers: Vec<TcpStream>,
    addr: SocketAddr,
}

impl Blackhole {
    /// Creates the listener and fills its accept queue.
    pub async fn new() -> Blackhole {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(0).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            let attempt = TcpSocket::new_v4().expect("socket").connect(addr);
            match tokio::time::timeout(Duration::from_millis(300), attempt).await {
                Ok(Ok(stream)) => fillers.push(stream),
                // This one hung: the queue is full and further SYNs are dropped.
                _ => {
                    return Blackhole {
                        _listener: listener,
                        _fillers: fillers,
                        addr,
                    };
                }
            }
        }
        panic!("the accept queue never filled; cannot build a blackhole on this host");
    }

    /// The address whose connects hang.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Counters and switches of an [`EchoServer`], shared with its tasks.
#[derive(Debug, Default)]
pub struct EchoState {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections currently open.
    pub open: AtomicUsize,
    /// Requests received.
    pub requests: AtomicU64,
    /// CANCEL frames received.
    pub cancels: AtomicU64,
    /// PING frames received.
    pub pings: AtomicU64,
    /// NOTIFY frames received from clients.
    pub notifies: AtomicU64,
    /// When set, PINGs are not answered.
    pub ignore_ping: AtomicBool,
    /// When set, connections stop reading (the client's writes back up).
    pub stop_reading: AtomicBool,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct ConnEntry {
    tx: mpsc::UnboundedSender<Bytes>,
    subs: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// A server that answers by method:
/// - `echo`: a RESPONSE with the request's format and body;
/// - `delay`: the body starts with a big-endian u64 of milliseconds; the RESPONSE (same
///   body) comes after that long, so answers come out of order;
/// - `never`: no answer;
/// - `error`: ERROR 1000 "requested";
/// - `$subscribe` / `$unsubscribe`: records the pattern, answers an empty RESPONSE;
/// - anything else: ERROR 2.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    state: Arc<EchoState>,
    accept: JoinHandle<()>,
}

impl EchoServer {
    /// Starts on a fresh loopback port.
    pub async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener)
    }

    /// Starts on `addr` (a restart on the address of a server that was shut down).
    pub async fn start_on(addr: SocketAddr) -> io::Result<EchoServer> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Self::serve(socket.listen(1024)?))
    }

    fn serve(listener: TcpListener) -> EchoServer {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(EchoState::default());
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        EchoServer {
            addr,
            state,
            accept,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters and switches.
    pub fn state(&self) -> &EchoState {
        &self.state
    }

    /// Sends a NOTIFY to every connection with a matching subscription, once per
    /// connection; returns how many connections it went to.
    pub fn push(&self, topic: &str, body: &[u8]) -> usize {
        let frame = Bytes::from(notify(topic, body));
        let conns = self.state.conns.lock().expect("lock");
        let mut sent = 0;
        for conn in conns.values() {
            let subs = conn.subs.lock().expect("lock");
            if subs.iter().any(|p| matches(p, topic)) && conn.tx.send(frame.clone()).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// Patterns subscribed, over all connections.
    pub fn subscriptions(&self) -> Vec<String> {
        let conns = self.state.conns.lock().expect("lock");
        conns
            .values()
            .flat_map(|c| c.subs.lock().expect("lock").clone())
            .collect()
    }

    /// Sends raw bytes on every open connection.
    pub fn broadcast(&self, bytes: &[u8]) {
        let conns = self.state.conns.lock().expect("lock");
        for conn in conns.values() {
            let _ = conn.tx.send(Bytes::copy_from_slice(bytes));
        }
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let entries: Vec<ConnEntry> = self
            .state
            .conns
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, c)| c)
            .collect();
        for entry in entries {
            for task in entry.tasks {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<EchoState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        state.accepted.fetch_add(1, Ordering::SeqCst);
        state.open.fetch_add(1, Ordering::SeqCst);
        let id = state.next.fetch_add(1, Ordering::SeqCst);
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let subs = Arc::new(Mutex::new(Vec::new()));
        let writer = tokio::spawn(write_loop(write, rx));
        let reader = tokio::spawn(read_loop(read, tx.clone(), subs.clone(), state.clone(), id));
        state.conns.lock().expect("lock").insert(
            id,
            ConnEntry {
                tx,
                subs,
                tasks: vec![reader, writer],
            },
        );
    }
}

async fn write_loop(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        if write.write_all(&batch).await.is_err() {
            return;
        }
    }
}

struct OpenGuard(Arc<EchoState>, u64);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut conns) = self.0.conns.lock() {
            if let Some(entry) = conns.remove(&self.1) {
                // Ends the writer once it has sent what is queued.
                drop(entry.tx);
            }
        }
    }
}

async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::UnboundedSender<Bytes>,
    subs: Arc<Mutex<Vec<String>>>,
    state: Arc<EchoState>,
    id: u64,
) {
    let _guard = OpenGuard(state.clone(), id);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let decoder = FrameDecoder::new();
    let mut assembler = Assembler::default();
    let mut out = Vec::new();
    loop {
        while state.stop_reading.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        buf.reserve(64 * 1024);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let len = match decoder.clone().decode(&buf) {
                Ok(Decoded::Frame { len, .. }) => len,
                Ok(_) => break,
                Err(_) => return,
            };
            let frame = buf.split_to(len).freeze();
            let Ok(Decoded::Frame { frame, .. }) = decoder.clone().decode(&frame) else {
                return;
            };
            let message = match assembler.push(frame) {
                Ok(Assembled::Envelope(env)) => OwnedEnvelope::from_envelope(&env),
                Ok(Assembled::Message { head, body }) => {
                    let mut env = OwnedEnvelope::from_envelope(&head);
                    if let OwnedEnvelope::Request(r) = &mut env {
                        r.body = body;
                    }
                    env
                }
                Ok(_) => continue,
                Err(_) => return,
            };
            handle(message, &mut out, &tx, &subs, &state);
        }
        if !out.is_empty() && tx.send(Bytes::from(std::mem::take(&mut out))).is_err() {
            return;
        }
    }
}

fn handle(
    message: OwnedEnvelope,
    out: &mut Vec<u8>,
    tx: &mpsc::UnboundedSender<Bytes>,
    subs: &Mutex<Vec<String>>,
    state: &EchoState,
) {
    match message {
        OwnedEnvelope::Request(r) => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            answer(r, out, tx, subs);
        }
        OwnedEnvelope::Ping(p) => {
            state.pings.fetch_add(1, Ordering::SeqCst);
            if !state.ignore_ping.load(Ordering::SeqCst) {
                out.extend_from_slice(&encode(Envelope::Pong(Pong { nonce: p.nonce })));
            }
        }
        OwnedEnvelope::Cancel(_) => {
            state.cancels.fetch_add(1, Ordering::SeqCst);
        }
        OwnedEnvelope::Notify(_) => {
            state.notifies.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
}

fn answer(
    r: OwnedRequest,
    out: &mut Vec<u8>,
    tx: &mpsc::UnboundedSender<Bytes>,
    subs: &Mutex<Vec<String>>,
) {
    let respond = |body: &[u8]| {
        encode(Envelope::Response(Response {
            id: r.id,
            flags: Flags::NONE,
            format: r.format,
            meta: Metadata::EMPTY,
            body,
        }))
    };
    match r.method.as_str() {
        "echo" => out.extend_from_slice(&respond(&r.body)),
        "delay" => {
            let ms = r
                .body
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            let frame = Bytes::from(respond(&r.body));
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(frame);
            });
        }
        "never" => {}
        "error" => out.extend_from_slice(&error(r.id, 1000, "requested")),
        "$subscribe" | "$unsubscribe" => {
            let pattern = String::from_utf8_lossy(&r.body).into_owned();
            let mut subs = subs.lock().expect("lock");
            if r.method == "$subscribe" {
                if !subs.contains(&pattern) {
                    subs.push(pattern);
                }
            } else {
                subs.retain(|p| *p != pattern);
            }
            out.extend_from_slice(&respond(&[]));
        }
        _ => out.extend_from_slice(&error(r.id, 2, "unknown method")),
    }
}

/// A body for the `delay` method: `ms` milliseconds, then `tag`.
pub fn delay_body(ms: u64, tag: &[u8]) -> Vec<u8> {
    let mut body = ms.to_be_bytes().to_vec();
    body.extend_from_slice(tag);
    body
}
