//! A fault-injecting TCP proxy for tests: [`FaultProxy`].
//!
//! A test starts it on `127.0.0.1:0` in front of a server, points the client at
//! [`FaultProxy::addr`], and switches [`Faults`] on and off per [`Direction`] while calls are
//! running: latency, a bandwidth limit, a blackhole, a stall that ends in a close, a cut or
//! an RST after N bytes, slicing into tiny writes; besides, new connections can be refused
//! and every current one closed or reset. It counts connections and bytes per direction
//! ([`ProxyStats`]) and stops, with every task it started, when dropped.
//!
//! # Why not `noxious`
//! `noxious` (a Rust port of Toxiproxy) was checked first. It does not fit: its last
//! release (1.0.4) is from April 2021 (edition 2018, `tokio-util` 0.6, `rand` 0.8,
//! `thiserror` 1, `mockall_double`, `bmrng`: a second copy of several crates the workspace
//! already has, in older versions); it is built to be driven as a server through
//! Toxiproxy's HTTP API (in process one drives its `Runner` trait with request channels and
//! stop/close signals meant for that server); and it has no RST, no "refuse new
//! connections" or "kill every connection", no per-direction byte counters. What is needed
//! here is a few hundred lines on tokio, so they live here, where a test can read
//! them.
//!
//! # Semantics
//! Each accepted connection gets a fresh connection to the target and two pumps, one per
//! direction. A pump reads a chunk (at most 16 KiB, less under a bandwidth limit), then
//! applies the faults of its direction as they are at that moment, in this order: a
//! blackhole drops the chunk; a cut keeps what fits under its byte limit; latency sleeps;
//! slicing and the bandwidth limit shape the writes. Changing a fault takes effect at the
//! next chunk (a stall at once, even while the pump waits for data). An EOF is passed on
//! as a half-close; a read or write error as an RST on the other side.
//!
//! Latency is added per chunk by the pump that forwards it, so it also lowers throughput
//! (one chunk per latency period): plenty for "the answer comes late", and no model of a
//! long fat pipe.
//!
//! Every wait that the proxy's own methods make is bounded by [`STEP`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::STEP;

/// The largest chunk a pump reads at once.
const CHUNK: usize = 16 * 1024;
/// How long the proxy waits for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One direction of the proxied connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (the proxy's peer) to the server (the target).
    ToServer,
    /// From the server back to the client.
    ToClient,
}

/// How the proxy closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// An orderly close: FIN to both peers.
    Fin,
    /// An abortive close: RST to both peers (`SO_LINGER` 0).
    Reset,
}

/// The faults of one direction. `Faults::default()` forwards untouched; the builder
/// methods add one fault each and may be combined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before each chunk is written.
    pub latency: Duration,
    /// At most this many bytes per second (`None`: unlimited; 0 counts as 1).
    pub bandwidth: Option<u64>,
    /// Read and drop everything; the sockets stay open.
    pub blackhole: bool,
    /// Stop forwarding (and reading, so the sender backs up), and close both sides (FIN)
    /// this long after the stall began; `Duration::MAX` stalls until the fault is lifted.
    pub stall: Option<Duration>,
    /// Once this many bytes went this way on a connection, close it this way. Bytes are
    /// counted from when the connection opened or these faults were set, whichever is
    /// later: "cut after N more bytes".
    pub cut: Option<(u64, Close)>,
    /// Write every chunk in pieces of `min..=max` bytes (pseudo-random, seeded per
    /// connection, so a run repeats itself).
    pub slice: Option<(usize, usize)>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Adds `latency` before each chunk.
    pub fn latency(mut self, latency: Duration) -> Faults {
        self.latency = latency;
        self
    }

    /// Limits the rate to `bytes_per_second`.
    pub fn bandwidth(mut self, bytes_per_second: u64) -> Faults {
        self.bandwidth = Some(bytes_per_second);
        self
    }

    /// Drops everything (keeping the sockets open).
    pub fn blackhole(mut self) -> Faults {
        self.blackhole = true;
        self
    }

    /// Stops forwarding, then closes the connection `after` this long.
    pub fn stall_then_close(mut self, after: Duration) -> Faults {
        self.stall = Some(after);
        self
    }

    /// Stops forwarding until the fault is lifted.
    pub fn stall(mut self) -> Faults {
        self.stall = Some(Duration::MAX);
        self
    }

    /// Closes the connection (FIN) once `bytes` went this way.
    pub fn cut_after(mut self, bytes: u64) -> Faults {
        self.cut = Some((bytes, Close::Fin));
        self
    }

    /// Resets the connection (RST) once `bytes` went this way.
    pub fn reset_after(mut self, bytes: u64) -> Faults {
        self.cut = Some((bytes, Close::Reset));
        self
    }

    /// Writes in pieces of `min..=max` bytes (both at least 1).
    pub fn slice(mut self, min: usize, max: usize) -> Faults {
        let min = min.max(1);
        self.slice = Some((min, max.max(min)));
        self
    }
}

#[derive(Debug, Clone, Default)]
struct Config {
    to_server: Faults,
    to_client: Faults,
}

impl Config {
    fn get(&self, direction: Direction) -> &Faults {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    fn get_mut(&mut self, direction: Direction) -> &mut Faults {
        match direction {
            Direction::ToServer => &mut self.to_server,
            Direction::ToClient => &mut self.to_client,
        }
    }
}

/// Byte counts of one direction, over every connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Bytes read from the sender.
    pub read: u64,
    /// Bytes written to the receiver.
    pub forwarded: u64,
    /// Bytes read and dropped (blackhole, or past a cut).
    pub dropped: u64,
    /// Write calls made to the receiver (slicing makes many).
    pub writes: u64,
}

/// Counters of a [`FaultProxy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections open now (accepted, not yet closed).
    pub open: u64,
    /// Connections closed, for whatever reason.
    pub closed: u64,
    /// Connections closed at once because the target did not accept.
    pub upstream_failures: u64,
    /// Client to server.
    pub to_server: FlowStats,
    /// Server to client.
    pub to_client: FlowStats,
}

#[derive(Debug, Default)]
struct FlowCounters {
    read: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    writes: AtomicU64,
}

impl FlowCounters {
    fn snapshot(&self) -> FlowStats {
        FlowStats {
            read: self.read.load(Ordering::SeqCst),
            forwarded: self.forwarded.load(Ordering::SeqCst),
            dropped: self.dropped.load(Ordering::SeqCst),
            writes: self.writes.load(Ordering::SeqCst),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    closed: AtomicU64,
    upstream_failures: AtomicU64,
    to_server: FlowCounters,
    to_client: FlowCounters,
}

impl Counters {
    fn flow(&self, direction: Direction) -> &FlowCounters {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }
}

/// A kill order for the connections open when it is given: a generation and how to close.
type Kill = (u64, Close);

/// A fault-injecting TCP proxy; see the [module documentation](self).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    config: watch::Sender<Config>,
    kill: watch::Sender<Kill>,
    accepting: watch::Sender<bool>,
    listening: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a fresh `127.0.0.1` port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        FaultProxy::start_on(listen, target)
            .await
            .expect("bind the proxy on 127.0.0.1:0")
    }

    /// Starts a proxy on `listen` (e.g. `127.0.0.2:0`, for a second "host"), forwarding to
    /// `target`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = bind(listen)?;
        let addr = listener.local_addr()?;
        let (config, _) = watch::channel(Config::default());
        let (kill, _) = watch::channel((0, Close::Fin));
        let (accepting, accepting_rx) = watch::channel(true);
        let (listening_tx, listening) = watch::channel(true);
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            addr,
            target,
            Pumps {
                config: config.subscribe(),
                kill: kill.subscribe(),
                counters: counters.clone(),
            },
            accepting_rx,
            listening_tx,
            stop_rx,
        ));
        Ok(FaultProxy {
            addr,
            target,
            config,
            kill,
            accepting,
            listening,
            stop,
            counters,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Replaces the faults of `direction`, for open connections and new ones.
    pub fn set(&self, direction: Direction, faults: Faults) {
        self.config
            .send_modify(|config| *config.get_mut(direction) = faults);
    }

    /// Replaces the faults of both directions.
    pub fn set_both(&self, faults: Faults) {
        self.config.send_modify(|config| {
            config.to_server = faults.clone();
            config.to_client = faults;
        });
    }

    /// Lifts every fault: both directions forward untouched again.
    pub fn clear(&self) {
        self.config
            .send_modify(|config| *config = Config::default());
    }

    /// The faults of `direction` now.
    pub fn faults(&self, direction: Direction) -> Faults {
        self.config.borrow().get(direction).clone()
    }

    /// Stops listening, so that new connections are refused (`ECONNREFUSED`); open ones
    /// (including those the kernel completed that were not accepted yet) are left alone.
    /// Returns once the listener is closed.
    pub async fn refuse_new(&self) {
        self.accepting.send_replace(false);
        self.wait_listening(false).await;
    }

    /// Listens again on the same address after [`FaultProxy::refuse_new`]. Returns once
    /// connections are accepted again.
    pub async fn accept_new(&self) {
        self.accepting.send_replace(true);
        self.wait_listening(true).await;
    }

    async fn wait_listening(&self, want: bool) {
        let mut listening = self.listening.clone();
        tokio::time::timeout(STEP, listening.wait_for(|now| *now == want))
            .await
            .expect("the proxy's listener follows in time")
            .expect("the proxy's accept task is running");
    }

    /// Closes every open connection with a FIN to both peers.
    pub fn close_all(&self) {
        self.kill_all(Close::Fin);
    }

    /// Resets every open connection: an RST to both peers.
    pub fn reset_all(&self) {
        self.kill_all(Close::Reset);
    }

    fn kill_all(&self, how: Close) {
        self.kill.send_modify(|kill| *kill = (kill.0 + 1, how));
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            open: c.open.load(Ordering::SeqCst),
            closed: c.closed.load(Ordering::SeqCst),
            upstream_failures: c.upstream_failures.load(Ordering::SeqCst),
            to_server: c.to_server.snapshot(),
            to_client: c.to_client.snapshot(),
        }
    }

    /// Waits until `condition` holds for the counters (polling every few milliseconds);
    /// fails the test with `what` after [`STEP`].
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&ProxyStats) -> bool) {
        let poll = async {
            while !condition(&self.stats()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(STEP, poll).await.is_err() {
            panic!("proxy: {what}: not within {STEP:?}; {:?}", self.stats());
        }
    }

    /// Stops the proxy and waits until its tasks are gone: the listener is closed and
    /// every connection dropped (a FIN to both peers, or an RST where data was left
    /// unread). Dropping the proxy does the same without waiting.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if tokio::time::timeout(STEP, &mut self.accept).await.is_err() {
            panic!("the proxy's tasks did not end within {STEP:?}");
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: dropping it aborts them all.
        self.accept.abort();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // The address is bound again after `refuse_new`, while connections accepted on it
    // may still be open.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What every connection's pumps share.
#[derive(Debug, Clone)]
struct Pumps {
    config: watch::Receiver<Config>,
    kill: watch::Receiver<Kill>,
    counters: Arc<Counters>,
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    pumps: Pumps,
    mut accepting: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    // Dropped with this task: aborts every connection.
    let mut conns = JoinSet::new();
    let mut listener = Some(listener);
    let mut next_id: u64 = 0;
    loop {
        let want = *accepting.borrow_and_update();
        match (want, listener.is_some()) {
            (false, true) => {
                // Connections the kernel completed but nobody accepted yet would be reset
                // with the listener: they are open for their clients, so serve them.
                if let Some(closing) = listener.take() {
                    while let Some(Ok((client, _))) = accept_now(&closing).await {
                        next_id += 1;
                        let guard = OpenGuard::new(&pumps.counters);
                        conns.spawn(serve(client, target, pumps.clone(), next_id, guard));
                    }
                }
            }
            (true, false) => match bind(addr) {
                Ok(bound) => listener = Some(bound),
                Err(_) => {
                    // The port is briefly busy (or gone): try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ => {}
        }
        listening.send_replace(listener.is_some());
        let accepted = async {
            match &listener {
                Some(listener) => listener.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                // Aborts every connection and waits until their sockets are dropped.
                conns.shutdown().await;
                return;
            }
            changed = accepting.changed() => {
                if changed.is_err() {
                    // The proxy is gone (its Drop aborts this task as well).
                    return;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accepted => {
                let Ok((client, _)) = accepted else { continue };
                next_id += 1;
                let guard = OpenGuard::new(&pumps.counters);
                conns.spawn(serve(client, target, pumps.clone(), next_id, guard));
            }
        }
    }
}

/// A connection already waiting in the accept queue, if there is one.
async fn accept_now(listener: &TcpListener) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    tokio::select! {
        biased;
        accepted = listener.accept() => Some(accepted),
        () = std::future::ready(()) => None,
    }
}

/// Counts a connection as accepted, and as closed however its task ends (aborted,
/// even before it first ran, included).
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> OpenGuard {
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(counters.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// How one pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender closed its side; the receiver was sent a FIN (half-close).
    Eof,
    /// The connection is to be closed, both sides.
    Close(Close),
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mut pumps: Pumps,
    id: u64,
    _open: OpenGuard,
) {
    // Kill orders given before this connection existed are not for it.
    pumps.kill.borrow_and_update();
    let mut server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => server,
        _ => {
            pumps
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::SeqCst);
            linger_zero(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let how = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(
            client_read,
            server_write,
            Direction::ToServer,
            &pumps,
            id.wrapping_mul(2),
        );
        let down = pump(
            server_read,
            client_write,
            Direction::ToClient,
            &pumps,
            id.wrapping_mul(2) + 1,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut kill = pumps.kill.clone();
        loop {
            let end = tokio::select! {
                end = &mut up, if !up_done => { up_done = true; end }
                end = &mut down, if !down_done => { down_done = true; end }
                changed = kill.changed() => match changed {
                    Ok(()) => End::Close(kill.borrow_and_update().1),
                    Err(_) => End::Close(Close::Fin),
                },
            };
            match end {
                End::Close(how) => break how,
                End::Eof if up_done && down_done => break Close::Fin,
                End::Eof => {}
            }
        }
    };
    if how == Close::Reset {
        linger_zero(&client);
        linger_zero(&server);
    }
    // Dropping the streams closes them: a FIN, or an RST after `linger_zero`.
}

fn linger_zero(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Forwards one direction of one connection until EOF, an error or a fault closes it.
async fn pump<R, W>(mut from: R, mut to: W, direction: Direction, pumps: &Pumps, seed: u64) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counters = pumps.counters.flow(direction);
    let mut config = pumps.config.clone();
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; CHUNK];
    // Bytes forwarded since this direction's faults last changed: what a cut counts.
    let mut sent_here: u64 = 0;
    let mut last = Faults::default();
    let mut stall_since: Option<Instant> = None;
    // The bandwidth limit's clock: when the next byte may go.
    let mut next_send = Instant::now();
    loop {
        let faults = config.borrow_and_update().get(direction).clone();
        if faults != last {
            sent_here = 0;
            last = faults.clone();
        }
        if let Some(after) = faults.stall {
            let since = *stall_since.get_or_insert_with(Instant::now);
            let close_at = async {
                match since.checked_add(after) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = close_at => return End::Close(Close::Fin),
                changed = config.changed() => {
                    if changed.is_err() {
                        return End::Close(Close::Fin);
                    }
                    continue;
                }
            }
        }
        stall_since = None;
        let max = match faults.bandwidth {
            // About 20 ms worth per read, so that the rate is smooth.
            Some(rate) => usize::try_from(rate / 50).unwrap_or(CHUNK).clamp(1, CHUNK),
            None => CHUNK,
        };
        let n = tokio::select! {
            read = from.read(&mut buf[..max]) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return End::Eof;
                }
                Ok(n) => n,
                Err(_) => return End::Close(Close::Reset),
            },
            changed = config.changed() => {
                if changed.is_err() {
                    return End::Close(Close::Fin);
                }
                continue;
            }
        };
        counters.read.fetch_add(n as u64, Ordering::SeqCst);
        if faults.blackhole {
            counters.dropped.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        let mut chunk = &buf[..n];
        let mut close = None;
        if let Some((limit, how)) = faults.cut {
            let room = usize::try_from(limit.saturating_sub(sent_here)).unwrap_or(usize::MAX);
            if chunk.len() >= room {
                counters
                    .dropped
                    .fetch_add((chunk.len() - room) as u64, Ordering::SeqCst);
                chunk = &chunk[..room];
                close = Some(how);
            }
        }
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        while !chunk.is_empty() {
            let size = match faults.slice {
                Some((min, max)) => rng.between(min, max).min(chunk.len()),
                None => chunk.len(),
            };
            if let Some(rate) = faults.bandwidth {
                let now = Instant::now();
                if next_send > now {
                    tokio::time::sleep_until(next_send).await;
                }
                let cost = Duration::from_secs_f64(size as f64 / rate.max(1) as f64);
                next_send = next_send.max(now) + cost;
            }
            if to.write_all(&chunk[..size]).await.is_err() {
                return End::Close(Close::Reset);
            }
            if faults.slice.is_some() {
                // Give the receiver a chance to read this piece alone.
                tokio::task::yield_now().await;
            }
            counters.writes.fetch_add(1, Ordering::SeqCst);
            counters.forwarded.fetch_add(size as u64, Ordering::SeqCst);
            sent_here += size as u64;
            chunk = &chunk[size..];
        }
        if let Some(how) = close {
            if how == Close::Fin {
                let _ = to.flush().await;
            }
            return End::Close(how);
        }
    }
}

/// A small deterministic generator for slice sizes (no `rand` in this crate).
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `min..=max`.
    fn between(&mut self, min: usize, max: usize) -> usize {
        let span = (max - min) as u64 + 1;
        min + (self.next() % span) as usize
    }
}

#[cfg(test)]
mod tests;
