//! One multiplexed client connection: id allocation, the pending table, heartbeats,
//! GOAWAY, CANCEL, backpressure.
//!
//! Tasks: a driver (reads and decodes, completes pending calls, routes pushes, runs the
//! heartbeat) and the writer of [`WireWriter`]. Callers encode their REQUEST straight into
//! the writer's buffer from their own task and wait on a oneshot: no task per request.
//!
//! Architecture invariant: every call gets exactly one outcome. The pending table owns the
//! sender of each call's oneshot; whoever removes the entry (the driver on an answer, a
//! deadline, a GOAWAY or the connection's end; the caller when it drops its future) is the
//! only one who can complete or abandon it, and all removals happen under one lock.
//!
//! Deadlines are kept in the pending table, not in a timer per call: the driver runs one
//! timer, set to the earliest deadline in the table, and when it fires gives up on every
//! entry that is due. Registering and clearing a tokio timer for each call cost about as
//! much as the rest of the transport's per-call work, and almost every call is answered
//! long before its deadline.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mcp_codec::{
    Cancel, Envelope, ErrorCode, ErrorFrame, Flags, GoAway, GoAwayCode, Notify as NotifyFrame,
    Ping, Pong, Request, format,
};
use tokio::net::{TcpSocket, TcpStream, ToSocketAddrs, lookup_host};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::{Backpressure, ConnectionConfig, Role};
use crate::error::{ErrorKind, Phase, Processed, TransportError, WireError};
use crate::message::{CallOptions, Inbound, Meta, RemoteError, Reply};
use crate::subscription::{
    PushRouter, SUBSCRIBE_METHOD, Subscription, SubscriptionOwner, UNSUBSCRIBE_METHOD,
};
use crate::wire::{FrameReader, WireWriter, WriterExit, WriterStats};

type Outcome = Result<Reply, TransportError>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent, so a poisoned lock (a panic
    // elsewhere while holding it) is used as is rather than spreading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The life of a connection as its owner sees it (published through a `watch` channel).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// Taking requests.
    Open,
    /// Taking no new requests (GOAWAY received, ERROR 6, too many abandoned ids, or
    /// [`Connection::drain`]); closes when its answers are in.
    Draining {
        /// Why.
        reason: String,
    },
    /// Closed; every pending call has had its outcome.
    Closed {
        /// Why.
        reason: TransportError,
    },
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Calls waiting for their answer.
    pub in_flight: usize,
    /// Ids given up on whose late answer may still come (never reused meanwhile).
    pub abandoned: usize,
    /// Answers that came after their caller gave up; dropped.
    pub late_answers: u64,
    /// Answers for ids never sent or already answered; dropped.
    pub unknown_answers: u64,
    /// CANCEL frames sent.
    pub cancels_sent: u64,
    /// NOTIFY frames received.
    pub pushes_received: u64,
    /// PING frames sent by the heartbeat.
    pub pings_sent: u64,
    /// PINGs left unanswered because the write queue was at its limit (a peer sending
    /// PINGs faster than it reads).
    pub pongs_dropped: u64,
    /// The writer's counters.
    pub writer: WriterStats,
}

/// Wakes pool waiters when a connection frees capacity or changes state.
#[derive(Debug, Default)]
pub(crate) struct PoolSignal {
    /// Callers waiting for a connection with room.
    pub(crate) notify: tokio::sync::Notify,
    pub(crate) waiters: AtomicUsize,
    /// The pool's connector task.
    pub(crate) connector: tokio::sync::Notify,
}

impl PoolSignal {
    /// One place freed: wake one waiter (waking all would make a crowd of waiters
    /// quadratic).
    fn capacity_freed(&self) {
        // SeqCst, as in `Slots`: the waiter counts itself then looks for room, this side
        // frees room then looks for waiters; one single order makes one see the other.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// The set of usable connections changed: every waiter looks again.
    pub(crate) fn changed(&self) {
        self.notify.notify_waiters();
        self.connector.notify_one();
    }
}

/// A hasher for request ids: one multiplication. The ids are chosen by this side (the
/// peer can only look ids up, never insert them), so a keyed hash buys nothing here and
/// SipHash would cost more than the rest of the table operation.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u32, BuildHasherDefault<IdHasher>>;

/// The in-flight window: a counter taken and given back with atomics on the hot path; a
/// `Notify` only for callers that wait.
#[derive(Debug)]
struct Slots {
    used: AtomicUsize,
    max: usize,
    waiters: AtomicUsize,
    freed: tokio::sync::Notify,
    closed: AtomicBool,
    signal: Option<Arc<PoolSignal>>,
}

impl Slots {
    fn try_take(self: &Arc<Self>) -> Option<InFlightPermit> {
        // SeqCst on `used` and `waiters` (here, in `acquire` and in the permit's drop): a
        // waiter counts itself and then looks at `used`, a releaser gives back and then
        // looks at `waiters`; only a single order of all four guarantees one sees the
        // other, so that no wake-up is lost. (On x86 these cost what AcqRel does.)
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used >= self.max {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(InFlightPermit {
                        slots: self.clone(),
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.freed.notify_waiters();
    }
}

/// Answers of one read waiting to be handed out, and reusable buffers for that.
#[derive(Debug, Default)]
struct Completions {
    answers: Vec<(u32, Outcome)>,
    ready: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// `$subscribe`s sent again that the server refused.
    refused: Vec<(Resubscribe, TransportError)>,
}

/// One entry of the pending table: who waits, and until when.
#[derive(Debug)]
struct Entry {
    waiter: Waiter,
    /// When to give up on the request (CANCEL, a timeout for the caller); `None`: never.
    deadline: Option<Instant>,
}

#[derive(Debug)]
enum Waiter {
    Caller(oneshot::Sender<Outcome>),
    /// Nobody waits: `$unsubscribe` sent from a destructor, or `$subscribe` sent again for
    /// the local subscribers of a pattern (after a reconnect). The answer is discarded,
    /// except that a refused `$subscribe` ends its subscribers. Given up on after the
    /// subscribe timeout: nobody else would, and an unanswered one would otherwise stay in
    /// `pending` for good and keep a draining connection open.
    Detached(Option<Resubscribe>),
}

/// A `$subscribe` sent again for run `epoch` of `pattern` (see `PushRouter::fail`).
#[derive(Debug)]
struct Resubscribe {
    pattern: String,
    epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Life {
    Open,
    Draining { goaway: Option<GoAwayCode> },
    Closed,
}

#[derive(Debug)]
struct ConnState {
    next_id: u32,
    pending: IdMap<Entry>,
    /// Ids given up on (CANCEL sent, or refused by GOAWAY) whose answer may still come;
    /// never reused while here. An id leaves when its late answer arrives.
    abandoned: IdSet,
    /// When the driver's deadline timer fires: at or before the earliest deadline in
    /// `pending` (`None` when no entry has one). It may be earlier than every deadline
    /// left (their calls were answered); firing then only finds the next one.
    timer: Option<Instant>,
    life: Life,
    close_requested: bool,
    close_reason: Option<TransportError>,
    last_active: Instant,
    opened_at: Instant,
    /// When the connection stopped taking requests (draining or closed).
    ended_at: Option<Instant>,
}

impl ConnState {
    /// The next id: never 0, increasing, wrapping, skipping ids in flight or abandoned.
    /// Terminates because `pending` and `abandoned` are bounded far below 2^32.
    fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if id != 0
                && !self.pending.contains_key(&id)
                && (self.abandoned.is_empty() || !self.abandoned.contains(&id))
            {
                return id;
            }
        }
    }

    fn refusal(&self) -> Option<TransportError> {
        match &self.life {
            Life::Open if !self.close_requested => None,
            Life::Open => Some(TransportError::shutdown(Phase::Write)),
            Life::Draining { goaway } => Some(TransportError::new(
                ErrorKind::GoAway { code: *goaway },
                Phase::Write,
                Processed::No,
                "the connection takes no new requests (draining)",
            )),
            Life::Closed => Some(match &self.close_reason {
                Some(reason) => reason.with(Phase::Write, Processed::No),
                None => TransportError::shutdown(Phase::Write),
            }),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    late_answers: AtomicU64,
    unknown_answers: AtomicU64,
    cancels_sent: AtomicU64,
    pushes_received: AtomicU64,
    pings_sent: AtomicU64,
    pongs_dropped: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct ConnShared {
    serial: u64,
    peer: SocketAddr,
    config: ConnectionConfig,
    writer: WireWriter,
    state: Mutex<ConnState>,
    slots: Arc<Slots>,
    /// Wakes the driver: a close was requested, or a draining connection ran dry.
    control: tokio::sync::Notify,
    status: watch::Sender<ConnectionStatus>,
    router: Arc<PushRouter>,
    signal: Option<Arc<PoolSignal>>,
    counters: Counters,
}

/// A handle to one multiplexed client connection. Cheap to clone.
///
/// Dropping the last handle closes the connection (pending calls fail with
/// [`ErrorKind::Shutdown`]); so does [`Connection::close`].
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<ConnShared>,
    _guard: Arc<Guard>,
}

#[derive(Debug)]
struct Guard(Arc<ConnShared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.request_close();
    }
}

/// One call's place in the pending table, held by the caller until its outcome.
#[derive(Debug)]
pub(crate) struct PendingCall {
    shared: Arc<ConnShared>,
    id: u32,
    rx: oneshot::Receiver<Outcome>,
    permit: Option<InFlightPermit>,
    done: bool,
}

/// A place in a connection's in-flight window, given back on drop.
#[derive(Debug)]
pub(crate) struct InFlightPermit {
    slots: Arc<Slots>,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let slots = &self.slots;
        slots.used.fetch_sub(1, Ordering::SeqCst);
        if slots.waiters.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_one();
        }
        if let Some(signal) = &slots.signal {
            signal.capacity_freed();
        }
    }
}

/// Opens a TCP connection with TCP_NODELAY and SO_KEEPALIVE, trying each address of
/// `addr` in turn, all within `timeout`.
pub(crate) async fn connect_tcp<A: ToSocketAddrs>(
    addr: A,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let attempt = async {
        let mut last = None;
        for addr in lookup_host(addr).await? {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_keepalive(true)?;
            socket.set_nodelay(true)?;
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to")
        }))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(TransportError::timeout(
            Phase::Connect,
            Processed::No,
            &format!("connect timed out after {timeout:?}"),
        )),
        Ok(Err(err)) => Err(TransportError::new(
            ErrorKind::Connect,
            Phase::Connect,
            Processed::No,
            format!("connect failed: {err}"),
        )),
        Ok(Ok(stream)) => Ok(stream),
    }
}

impl Connection {
    /// Connects to `addr` (within the connect timeout) and starts the connection's tasks.
    pub async fn connect<A: ToSocketAddrs>(
        addr: A,
        config: ConnectionConfig,
    ) -> Result<Connection, TransportError> {
        let stream = connect_tcp(addr, config.connect_timeout).await?;
        let router = Arc::new(PushRouter::new(
            config.push_queue,
            config.push_queue_bytes,
            config.push_overflow,
        ));
        Connection::start(stream, config, router, None, None, 0)
    }

    /// Runs the protocol over an already connected stream (TCP_NODELAY is set here).
    pub fn from_stream(
        stream: TcpStream,
        config: ConnectionConfig,
    ) -> Result<Connection, TransportError> {
        let router = Arc::new(PushRouter::new(
            config.push_queue,
            config.push_queue_bytes,
            config.push_overflow,
        ));
        Connection::start(stream, config, router, None, None, 0)
    }

    pub(crate) fn start(
        stream: TcpStream,
        mut config: ConnectionConfig,
        router: Arc<PushRouter>,
        signal: Option<Arc<PoolSignal>>,
        token: Option<Arc<()>>,
        serial: u64,
    ) -> Result<Connection, TransportError> {
        let io_err = |err: std::io::Error| {
            TransportError::new(
                ErrorKind::Connect,
                Phase::Connect,
                Processed::No,
                format!("socket setup failed: {err}"),
            )
        };
        stream.set_nodelay(true).map_err(io_err)?;
        let peer = stream.peer_addr().map_err(io_err)?;
        config.wire.role = Role::Client;
        config.max_in_flight = config.max_in_flight.max(1);
        let (read, write) = stream.into_split();
        let reader = FrameReader::new(read, &config.wire);
        let writer = WireWriter::spawn(write, &config.wire);
        let (status, _) = watch::channel(ConnectionStatus::Open);
        let shared = Arc::new(ConnShared {
            serial,
            peer,
            slots: Arc::new(Slots {
                used: AtomicUsize::new(0),
                max: config.max_in_flight,
                waiters: AtomicUsize::new(0),
                freed: tokio::sync::Notify::new(),
                closed: AtomicBool::new(false),
                signal: signal.clone(),
            }),
            config,
            writer,
            state: Mutex::new(ConnState {
                next_id: 1,
                pending: IdMap::default(),
                abandoned: IdSet::default(),
                timer: None,
                life: Life::Open,
                close_requested: false,
                close_reason: None,
                last_active: Instant::now(),
                opened_at: Instant::now(),
                ended_at: None,
            }),
            control: tokio::sync::Notify::new(),
            status,
            router,
            signal,
            counters: Counters::default(),
        });
        tokio::spawn(drive(shared.clone(), reader, token));
        Ok(Connection {
            _guard: Arc::new(Guard(shared.clone())),
            shared,
        })
    }

    /// Sends a REQUEST and waits for its answer.
    ///
    /// `opts` bounds the whole call (waiting for a place in the in-flight window, queueing
    /// and the answer); without a deadline or timeout a bare connection waits until the
    /// answer or the connection's end. On timeout the request is cancelled (CANCEL sent)
    /// and its id is not reused while a late answer may come.
    pub async fn call(
        &self,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<Reply, TransportError> {
        let deadline = opts.resolve(None);
        // The waits are boxed (see `Pool::call`): only a call that waits pays for them.
        let permit = match self.shared.try_acquire()? {
            Some(permit) => permit,
            None => Box::pin(self.shared.acquire(deadline)).await?,
        };
        if self.shared.writer.is_full() {
            Box::pin(self.shared.wait_writable(deadline)).await?;
        }
        let pending = self
            .shared
            .start(Some(permit), method, format, meta, body, deadline)?;
        pending.wait().await
    }

    /// Sends a one-way NOTIFY to the server, waiting for queue space if the write queue is
    /// over its limit.
    pub async fn notify(
        &self,
        topic: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), TransportError> {
        self.shared.wait_writable(None).await?;
        self.shared.notify(topic, format, meta, body)
    }

    /// Subscribes to a topic or `prefix*` pattern on this connection (`$subscribe`); the
    /// subscription ends with the connection. Use [`Pool::subscribe`](crate::Pool::subscribe)
    /// for one that survives reconnects.
    pub async fn subscribe(
        &self,
        pattern: &str,
        opts: CallOptions,
    ) -> Result<Subscription, TransportError> {
        let owner: Arc<dyn SubscriptionOwner> = self.shared.clone();
        let Some((sub, first)) =
            Subscription::register(&self.shared.router, Arc::downgrade(&owner), pattern)
        else {
            return Err(TransportError::shutdown(Phase::Queue));
        };
        if first {
            if let Err(err) = subscribe_call(self, pattern, opts).await {
                sub.forget();
                return Err(err);
            }
        }
        Ok(sub)
    }

    /// The current status.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.status.subscribe()
    }

    /// Whether the connection takes new requests.
    pub fn is_open(&self) -> bool {
        let state = lock(&self.shared.state);
        state.life == Life::Open && !state.close_requested
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).life == Life::Closed
    }

    /// Calls waiting for their answer.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).pending.len()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Counters.
    pub fn stats(&self) -> ConnectionStats {
        let state = lock(&self.shared.state);
        let c = &self.shared.counters;
        ConnectionStats {
            in_flight: state.pending.len(),
            abandoned: state.abandoned.len(),
            late_answers: c.late_answers.load(Ordering::Relaxed),
            unknown_answers: c.unknown_answers.load(Ordering::Relaxed),
            cancels_sent: c.cancels_sent.load(Ordering::Relaxed),
            pushes_received: c.pushes_received.load(Ordering::Relaxed),
            pings_sent: c.pings_sent.load(Ordering::Relaxed),
            pongs_dropped: c.pongs_dropped.load(Ordering::Relaxed),
            writer: self.shared.writer.stats(),
        }
    }

    /// Closes now: pending calls fail with [`ErrorKind::Shutdown`] ("may have been
    /// processed"), a GOAWAY (last id 0: no more requests from this side, PROTOCOL.md
    /// section 6) is written after what is queued, the socket is closed and the tasks end.
    pub fn close(&self) {
        // Best effort: a connection already failing has nobody to tell.
        let _ = self.shared.writer.send(Envelope::GoAway(GoAway {
            last_id: 0,
            code: GoAwayCode::SHUTTING_DOWN,
            reason: "",
        }));
        self.shared.request_close();
    }

    /// Closes gracefully: sends GOAWAY (last id 0, "the client sends no more requests"),
    /// takes no new requests, and closes once every pending call has its answer.
    pub fn drain(&self) {
        self.shared.start_draining(None, "closed by its owner");
        let _ = self.shared.writer.send(Envelope::GoAway(GoAway {
            last_id: 0,
            code: GoAwayCode::SHUTTING_DOWN,
            reason: "",
        }));
    }

    /// Waits until the connection is closed, and returns why.
    pub async fn closed(&self) -> TransportError {
        let mut rx = self.shared.status.subscribe();
        let status = rx
            .wait_for(|s| matches!(s, ConnectionStatus::Closed { .. }))
            .await
            .map(|s| s.clone());
        match status {
            Ok(ConnectionStatus::Closed { reason }) => reason,
            _ => TransportError::shutdown(Phase::Response),
        }
    }

    pub(crate) fn serial(&self) -> u64 {
        self.shared.serial
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.shared.config.max_in_flight
    }

    pub(crate) fn last_active(&self) -> Instant {
        lock(&self.shared.state).last_active
    }

    /// How long the connection took requests: from connect until it started draining or
    /// closed (or until now).
    pub(crate) fn useful_life(&self) -> Duration {
        let state = lock(&self.shared.state);
        let end = state.ended_at.unwrap_or_else(Instant::now);
        end.saturating_duration_since(state.opened_at)
    }

    /// A place in the in-flight window, if one is free now.
    pub(crate) fn try_acquire(&self) -> Option<InFlightPermit> {
        self.shared.try_acquire().ok().flatten()
    }

    /// Waits until the write queue is under its limit, at most until `deadline`; at once
    /// when it is.
    pub(crate) async fn wait_writable(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        if self.shared.writer.is_full() {
            // Boxed: the wait (a notification and a timer) is rare, and a future holding
            // it inline would make every call's future larger, and every call moves it.
            Box::pin(self.shared.wait_writable(deadline)).await?;
        }
        Ok(())
    }

    /// Queues a REQUEST; the call is given up on (CANCEL, a timeout) at `deadline`.
    pub(crate) fn start_call(
        &self,
        permit: InFlightPermit,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
        deadline: Option<Instant>,
    ) -> Result<PendingCall, TransportError> {
        self.shared
            .start(Some(permit), method, format, meta, body, deadline)
    }

    pub(crate) fn notify_now(
        &self,
        topic: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), TransportError> {
        self.shared.notify(topic, format, meta, body)
    }

    /// Sends a request whose answer nobody waits for.
    pub(crate) fn call_detached(&self, method: &str, body: &[u8]) {
        self.shared.call_detached(method, body, None);
    }

    /// Sends `$subscribe` again for the local subscribers of `pattern` (after a reconnect)
    /// without waiting: if the server refuses it or does not answer within the subscribe
    /// timeout, those subscribers end with the error.
    pub(crate) fn resubscribe(&self, pattern: &str) {
        // No epoch: every subscriber of the pattern left meanwhile.
        if let Some(epoch) = self.shared.router.epoch(pattern) {
            let resubscribe = Resubscribe {
                pattern: pattern.to_owned(),
                epoch,
            };
            self.shared
                .call_detached(SUBSCRIBE_METHOD, pattern.as_bytes(), Some(resubscribe));
        }
    }
}

/// `$subscribe` with the pattern as the body; an ERROR answer is a failure.
pub(crate) async fn subscribe_call(
    conn: &Connection,
    pattern: &str,
    opts: CallOptions,
) -> Result<(), TransportError> {
    match conn
        .call(
            SUBSCRIBE_METHOD,
            format::RAW,
            &Meta::new(),
            pattern.as_bytes(),
            opts,
        )
        .await?
    {
        Reply::Response(_) => Ok(()),
        Reply::Error(err) => Err(TransportError::new(
            ErrorKind::Remote { code: err.code },
            Phase::Response,
            Processed::Maybe,
            format!("subscribing to {pattern:?} failed: {err}"),
        )),
    }
}

impl SubscriptionOwner for ConnShared {
    fn unsubscribed(&self, pattern: &str) {
        self.call_detached(UNSUBSCRIBE_METHOD, pattern.as_bytes(), None);
    }
}

impl ConnShared {
    fn closed_error(&self, phase: Phase, processed: Processed) -> TransportError {
        match &lock(&self.state).close_reason {
            Some(reason) => reason.with(phase, processed),
            None => TransportError::shutdown(phase),
        }
    }

    fn try_acquire(&self) -> Result<Option<InFlightPermit>, TransportError> {
        if self.slots.closed.load(Ordering::Acquire) {
            return Err(self.closed_error(Phase::Queue, Processed::No));
        }
        Ok(self.slots.try_take())
    }

    async fn acquire(&self, deadline: Option<Instant>) -> Result<InFlightPermit, TransportError> {
        if let Some(permit) = self.try_acquire()? {
            return Ok(permit);
        }
        if self.config.backpressure == Backpressure::Reject {
            return Err(TransportError::new(
                ErrorKind::Overloaded,
                Phase::Queue,
                Processed::No,
                format!(
                    "{} requests in flight, the maximum of this connection",
                    self.config.max_in_flight
                ),
            ));
        }
        struct Waiting<'a>(&'a Slots);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.slots.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.slots);
        loop {
            let freed = self.slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire()? {
                return Ok(permit);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(TransportError::timeout(
                            Phase::Queue,
                            Processed::No,
                            "timed out waiting for a place in the in-flight window",
                        ));
                    }
                }
                None => freed.await,
            }
        }
    }

    async fn wait_writable(&self, deadline: Option<Instant>) -> Result<(), TransportError> {
        if !self.writer.is_full() {
            return Ok(());
        }
        let ready = self.writer.ready();
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, ready).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(TransportError::timeout(
                        Phase::Queue,
                        Processed::No,
                        "timed out waiting for space in the write queue",
                    ));
                }
            },
            None => ready.await,
        };
        result.map_err(|_| self.closed_error(Phase::Queue, Processed::No))
    }

    /// Allocates an id, records the caller and queues the REQUEST, all under the state
    /// lock: frames are queued in id order, and a close cannot come between the entry and
    /// its frame.
    fn start(
        self: &Arc<Self>,
        permit: Option<InFlightPermit>,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
        deadline: Option<Instant>,
    ) -> Result<PendingCall, TransportError> {
        let (tx, rx) = oneshot::channel();
        let mut state = lock(&self.state);
        if let Some(refusal) = state.refusal() {
            return Err(refusal);
        }
        let id = state.alloc_id();
        self.send_request(id, method, format, meta, body)?;
        // No clock read here for `last_active`: a call in flight keeps the connection from
        // being idle, and its answer (or its end) updates `last_active`.
        self.track(
            &mut state,
            id,
            Entry {
                waiter: Waiter::Caller(tx),
                deadline,
            },
        );
        drop(state);
        Ok(PendingCall {
            shared: self.clone(),
            id,
            rx,
            permit,
            done: false,
        })
    }

    fn send_request(
        &self,
        id: u32,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let sent = meta.with_metadata(|meta| {
            self.writer.send(Envelope::Request(Request {
                id,
                flags: Flags::NONE,
                format,
                method,
                meta,
                body,
            }))
        });
        sent.map_err(|err| self.send_error(err))
    }

    fn send_error(&self, err: WireError) -> TransportError {
        match err {
            WireError::Codec(err) => TransportError::invalid(err),
            _ => TransportError::new(
                ErrorKind::ConnectionClosed,
                Phase::Write,
                Processed::No,
                "the connection's writer is closed",
            ),
        }
    }

    fn notify(
        &self,
        topic: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), TransportError> {
        if let Some(refusal) = lock(&self.state).refusal() {
            if !matches!(refusal.kind(), ErrorKind::GoAway { .. }) {
                return Err(refusal);
            }
        }
        let sent = meta.with_metadata(|meta| {
            self.writer.send(Envelope::Notify(NotifyFrame {
                flags: Flags::NONE,
                format,
                topic,
                meta,
                body,
            }))
        });
        sent.map_err(|err| self.send_error(err))
    }

    fn call_detached(&self, method: &str, body: &[u8], resubscribe: Option<Resubscribe>) {
        let mut state = lock(&self.state);
        if state.refusal().is_some() {
            return;
        }
        let id = state.alloc_id();
        if self
            .send_request(id, method, format::RAW, &Meta::new(), body)
            .is_ok()
        {
            let entry = Entry {
                waiter: Waiter::Detached(resubscribe),
                deadline: Some(Instant::now() + self.config.subscribe_timeout),
            };
            self.track(&mut state, id, entry);
        }
    }

    /// Records a request in the pending table; if its deadline is earlier than the driver's
    /// timer, brings the timer forward (the driver re-arms when woken).
    fn track(&self, state: &mut ConnState, id: u32, entry: Entry) {
        if let Some(deadline) = entry.deadline {
            if state.timer.is_none_or(|timer| deadline < timer) {
                state.timer = Some(deadline);
                self.control.notify_one();
            }
        }
        state.pending.insert(id, entry);
    }

    /// Gives up on every request whose deadline passed, as [`ConnShared::abandon`] does
    /// (CANCEL, id kept out of use): a caller gets a timeout, a `$subscribe` sent again
    /// ends its subscribers. Returns when the timer should fire next.
    ///
    /// One pass over the pending table, which the in-flight window bounds; it runs when
    /// the earliest deadline comes, which for calls answered in time is rarely.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut callers = Vec::new();
        let mut resubscribes = Vec::new();
        let next = {
            let mut state = lock(&self.state);
            let mut next: Option<Instant> = None;
            let mut due = Vec::new();
            for (&id, entry) in &state.pending {
                match entry.deadline {
                    Some(deadline) if deadline <= now => due.push(id),
                    Some(deadline) => next = Some(next.map_or(deadline, |n| n.min(deadline))),
                    None => {}
                }
            }
            for id in due {
                let Some(entry) = state.pending.remove(&id) else {
                    continue;
                };
                self.gave_up(&mut state, id, now);
                match entry.waiter {
                    Waiter::Caller(tx) => callers.push(tx),
                    Waiter::Detached(Some(resubscribe)) => resubscribes.push(resubscribe),
                    Waiter::Detached(None) => {}
                }
            }
            state.timer = next;
            self.after_removal(&state);
            next
        };
        for tx in callers {
            // The caller may have dropped its future a moment ago: then nobody wants it.
            let _ = tx.send(Err(TransportError::timeout(
                Phase::Response,
                Processed::Maybe,
                "no answer before the deadline; the request was cancelled",
            )));
        }
        let timeout = self.config.subscribe_timeout;
        for resubscribe in resubscribes {
            let err = TransportError::timeout(
                Phase::Response,
                Processed::Maybe,
                &format!(
                    "subscribing again to {:?} after a reconnect: no answer within \
                     {timeout:?}; the request was cancelled",
                    resubscribe.pattern
                ),
            );
            self.router
                .fail(&resubscribe.pattern, resubscribe.epoch, &err);
        }
        next
    }

    /// When the driver's deadline timer should fire, if any request has a deadline.
    fn timer(&self) -> Option<Instant> {
        lock(&self.state).timer
    }

    /// The caller gave up on `id` (dropped its future): CANCEL it, and keep the id out of
    /// use while its answer may still come.
    fn abandon(&self, id: u32) {
        let mut state = lock(&self.state);
        if state.pending.remove(&id).is_some() {
            self.gave_up(&mut state, id, Instant::now());
            self.after_removal(&state);
        }
    }

    /// After `id` was taken out of the pending table unanswered: CANCEL it, keep the id out
    /// of use, and replace the connection if too many ids are given up on. The caller runs
    /// `after_removal`.
    fn gave_up(&self, state: &mut ConnState, id: u32, now: Instant) {
        state.abandoned.insert(id);
        state.last_active = now;
        if state.life != Life::Closed && self.writer.send(Envelope::Cancel(Cancel { id })).is_ok() {
            self.counters.cancels_sent.fetch_add(1, Ordering::Relaxed);
        }
        if state.abandoned.len() >= self.config.max_abandoned_ids && state.life == Life::Open {
            state.life = Life::Draining { goaway: None };
            state.ended_at.get_or_insert_with(Instant::now);
            self.status.send_replace(ConnectionStatus::Draining {
                reason: format!(
                    "{} ids given up on without an answer; replacing the connection",
                    state.abandoned.len()
                ),
            });
            if let Some(signal) = &self.signal {
                signal.changed();
            }
        }
    }

    fn after_removal(&self, state: &ConnState) {
        if state.pending.is_empty() && matches!(state.life, Life::Draining { .. }) {
            self.control.notify_one();
        }
    }

    fn request_close(&self) {
        lock(&self.state).close_requested = true;
        self.control.notify_one();
    }

    fn start_draining(&self, goaway: Option<GoAwayCode>, reason: &str) {
        let mut state = lock(&self.state);
        if state.life != Life::Open {
            return;
        }
        state.life = Life::Draining { goaway };
        state.ended_at.get_or_insert_with(Instant::now);
        self.status.send_replace(ConnectionStatus::Draining {
            reason: reason.to_owned(),
        });
        self.after_removal(&state);
        drop(state);
        if let Some(signal) = &self.signal {
            signal.changed();
        }
    }

    /// Why the driver should stop now, if it should.
    fn control_reason(&self) -> Option<(TransportError, bool)> {
        let state = lock(&self.state);
        if state.close_requested {
            return Some((TransportError::shutdown(Phase::Response), true));
        }
        if matches!(state.life, Life::Draining { .. }) && state.pending.is_empty() {
            return Some((
                TransportError::new(
                    ErrorKind::ConnectionClosed,
                    Phase::Response,
                    Processed::No,
                    "the connection was drained and closed",
                ),
                true,
            ));
        }
        None
    }

    fn complete(&self, id: u32, outcome: Outcome) {
        let mut batch = Completions::default();
        batch.answers.push((id, outcome));
        self.complete_all(&mut batch, Instant::now());
    }

    /// Hands out every answer of one read under a single lock of the pending table; `now`
    /// is when the read was handled.
    fn complete_all(&self, batch: &mut Completions, now: Instant) {
        if batch.answers.is_empty() {
            return;
        }
        {
            let mut state = lock(&self.state);
            state.last_active = now;
            for (id, outcome) in batch.answers.drain(..) {
                match state.pending.remove(&id).map(|entry| entry.waiter) {
                    Some(Waiter::Caller(tx)) => batch.ready.push((tx, outcome)),
                    Some(Waiter::Detached(Some(resubscribe))) => {
                        // Only a refusal ends the subscribers: an ERROR 6 or a lost
                        // connection moves the subscriptions to another connection.
                        if let Ok(Reply::Error(err)) = outcome {
                            let err = TransportError::new(
                                ErrorKind::Remote { code: err.code },
                                Phase::Response,
                                Processed::Maybe,
                                format!(
                                    "subscribing again to {:?} after a reconnect failed: {err}",
                                    resubscribe.pattern
                                ),
                            );
                            batch.refused.push((resubscribe, err));
                        }
                    }
                    Some(Waiter::Detached(None)) => {}
                    None => {
                        let counter = if state.abandoned.remove(&id) {
                            &self.counters.late_answers
                        } else {
                            &self.counters.unknown_answers
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.after_removal(&state);
        }
        for (tx, outcome) in batch.ready.drain(..) {
            // The caller may have dropped its future a moment ago: then nobody wants it.
            let _ = tx.send(outcome);
        }
        for (resubscribe, err) in batch.refused.drain(..) {
            self.router
                .fail(&resubscribe.pattern, resubscribe.epoch, &err);
        }
    }

    /// Queues answers to hand out together; anything else first hands out what is queued,
    /// so that the order of the stream is kept.
    fn dispatch(&self, message: Inbound, batch: &mut Completions) -> Result<(), TransportError> {
        match message {
            Inbound::Response(response) => {
                batch
                    .answers
                    .push((response.id, Ok(Reply::Response(response))));
                Ok(())
            }
            Inbound::Error { id, code, message } if id != 0 && code != ErrorCode::UNAVAILABLE => {
                batch
                    .answers
                    .push((id, Ok(Reply::Error(RemoteError { code, message }))));
                Ok(())
            }
            other => {
                self.complete_all(batch, Instant::now());
                self.on_inbound(other)
            }
        }
    }

    fn on_goaway(&self, last_id: u32, code: GoAwayCode, reason: &str) {
        let mut state = lock(&self.state);
        if state.life == Life::Open {
            state.life = Life::Draining { goaway: Some(code) };
        }
        state.ended_at.get_or_insert_with(Instant::now);
        self.status.send_replace(ConnectionStatus::Draining {
            reason: format!("GOAWAY {} from the server: {reason}", code.0),
        });
        // Requests after `last_id` in the order we sent them (ids increase, wrapping) were
        // not accepted: fail them as not processed. The server may still answer them
        // ERROR 6, so their ids stay out of use.
        let refused: Vec<u32> = state
            .pending
            .keys()
            .copied()
            .filter(|&id| last_id == 0 || (id.wrapping_sub(last_id) as i32) > 0)
            .collect();
        let mut waiters = Vec::with_capacity(refused.len());
        for id in refused {
            if let Some(entry) = state.pending.remove(&id) {
                state.abandoned.insert(id);
                waiters.push(entry.waiter);
            }
        }
        self.after_removal(&state);
        drop(state);
        let err = TransportError::new(
            ErrorKind::GoAway { code: Some(code) },
            Phase::Response,
            Processed::No,
            format!("the server sent GOAWAY (last id {last_id}) before accepting this request"),
        );
        for waiter in waiters {
            if let Waiter::Caller(tx) = waiter {
                let _ = tx.send(Err(err.clone()));
            }
        }
        if let Some(signal) = &self.signal {
            signal.changed();
        }
    }

    /// Handles one inbound message; an `Err` ends the connection.
    fn on_inbound(&self, message: Inbound) -> Result<(), TransportError> {
        match message {
            Inbound::Response(response) => {
                self.complete(response.id, Ok(Reply::Response(response)));
            }
            Inbound::Error {
                id: 0,
                code,
                message,
            } => {
                return Err(TransportError::new(
                    ErrorKind::ConnectionError { code },
                    Phase::Response,
                    Processed::Maybe,
                    format!("the server closed the connection with ERROR {code}: {message}"),
                ));
            }
            Inbound::Error { id, code, message } if code == ErrorCode::UNAVAILABLE => {
                self.complete(
                    id,
                    Err(TransportError::new(
                        ErrorKind::GoAway { code: None },
                        Phase::Response,
                        Processed::No,
                        format!("the server is unavailable (ERROR 6): {message}"),
                    )),
                );
                self.start_draining(None, "the server answered ERROR 6 (UNAVAILABLE)");
            }
            Inbound::Error { id, code, message } => {
                self.complete(id, Ok(Reply::Error(RemoteError { code, message })));
            }
            Inbound::Notify(push) => {
                self.counters
                    .pushes_received
                    .fetch_add(1, Ordering::Relaxed);
                self.router.deliver(push);
            }
            Inbound::Ping(nonce) => {
                // A PONG is not held back by the write queue's limit (it answers what was
                // read), so a peer that floods PINGs and reads little could grow the queue
                // without bound. Reading must not pause instead: the server pauses its
                // reading while its own queue is full, and if both sides did, large
                // bodies both ways would leave each waiting for the other to read. So a
                // PING that finds the queue at its limit goes unanswered (counted): the
                // peer hears from us anyway, since the queue is full of frames for it, and
                // if those cannot move either, the write-stall timeout ends the connection.
                if self.writer.is_full() {
                    self.counters.pongs_dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Best effort: if the writer is gone the driver learns it separately.
                    let _ = self.writer.send(Envelope::Pong(Pong { nonce }));
                }
            }
            Inbound::GoAway {
                last_id,
                code,
                reason,
            } => self.on_goaway(last_id, code, &reason),
            // PONG is life, counted by the driver; REQUEST, CANCEL and their errors are
            // refused by the client-role codec before they get here.
            _ => {}
        }
        Ok(())
    }

    /// Ends the connection: every pending call gets `reason`, the status says closed.
    fn finish(&self, reason: &TransportError) {
        let waiters: Vec<Waiter> = {
            let mut state = lock(&self.state);
            state.life = Life::Closed;
            state.ended_at.get_or_insert_with(Instant::now);
            state.close_reason = Some(reason.clone());
            state
                .pending
                .drain()
                .map(|(_, entry)| entry.waiter)
                .collect()
        };
        self.slots.close();
        let err = reason.with(Phase::Response, Processed::Maybe);
        for waiter in waiters {
            if let Waiter::Caller(tx) = waiter {
                let _ = tx.send(Err(err.clone()));
            }
        }
        self.status.send_replace(ConnectionStatus::Closed {
            reason: reason.clone(),
        });
        if let Some(signal) = &self.signal {
            signal.changed();
        }
    }
}

fn closed(message: impl Into<String>) -> TransportError {
    TransportError::new(
        ErrorKind::ConnectionClosed,
        Phase::Response,
        Processed::Maybe,
        message,
    )
}

fn wire_failure(err: &WireError) -> TransportError {
    match err {
        WireError::Io(io) => closed(format!("connection lost: {io}")),
        WireError::ClosedMidFrame { .. } => closed(format!("connection closed: {err}")),
        WireError::WriteStall(_) => closed(format!("connection dropped: {err}")),
        WireError::WriterClosed => closed("connection closed"),
        _ => TransportError::new(
            ErrorKind::Protocol,
            Phase::Response,
            Processed::Maybe,
            format!("connection dropped: {err}"),
        ),
    }
}

/// The connection's driver: reads, dispatches, beats the heart, and ends the connection.
async fn drive(
    shared: Arc<ConnShared>,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    token: Option<Arc<()>>,
) {
    // Deadlines are the driver's to enforce: if this task is dropped before it ends the
    // connection (its runtime shut down), the guard ends it, so no caller waits for good.
    let mut unfinished = Unfinished(Some(shared.clone()));
    let heartbeat = shared.config.heartbeat;
    let mut last_rx = Instant::now();
    let mut frames_at_rx = 0;
    let mut ping_at: Option<Instant> = None;
    let mut nonce: u64 = 0;
    let sleep = tokio::time::sleep_until(last_rx + heartbeat.interval);
    tokio::pin!(sleep);
    let writer_exit = shared.writer.closed();
    tokio::pin!(writer_exit);
    let mut writer_done = false;
    let mut batch = Completions::default();
    // The earliest deadline in the pending table, when one has a deadline.
    let expiry = tokio::time::sleep_until(last_rx);
    tokio::pin!(expiry);
    let mut expiry_armed = false;

    let (reason, flush) = loop {
        tokio::select! {
            biased;
            _ = shared.control.notified() => {
                if let Some(stop) = shared.control_reason() {
                    break stop;
                }
                if let Some(at) = shared.timer() {
                    expiry.as_mut().reset(at);
                    expiry_armed = true;
                }
            }
            exit = &mut writer_exit => {
                writer_done = true;
                let reason = match exit {
                    WriterExit::Failed(err) => wire_failure(&err),
                    _ => closed("the connection's writer ended"),
                };
                break (reason, false);
            }
            // Before the reader: a peer that keeps it busy must not hold deadlines back.
            _ = &mut expiry, if expiry_armed => {
                match shared.expire() {
                    Some(at) => expiry.as_mut().reset(at),
                    None => expiry_armed = false,
                }
            }
            first = reader.next() => {
                // Everything this read brought is handled before waiting again: one pass
                // through `select!`, one lock of the pending table, one clock read.
                let mut next = first;
                let stop = loop {
                    match next {
                        Ok(Some(message)) => {
                            if let Err(reason) = shared.dispatch(message, &mut batch) {
                                break Some((reason, false));
                            }
                        }
                        Ok(None) => {
                            break Some((closed("the server closed the connection"), false));
                        }
                        Err(err) => {
                            if let Some(code) = err.error_code() {
                                // Best effort, then close (PROTOCOL.md section 1).
                                let _ = shared.writer.send(Envelope::Error(ErrorFrame {
                                    id: 0,
                                    code,
                                    message: "protocol error",
                                }));
                            }
                            let flush = err.is_protocol();
                            break Some((wire_failure(&err), flush));
                        }
                    }
                    next = match reader.try_next() {
                        Ok(None) => break None,
                        other => other,
                    };
                };
                last_rx = Instant::now();
                shared.complete_all(&mut batch, last_rx);
                frames_at_rx = reader.frames();
                ping_at = None;
                if let Some(stop) = stop {
                    break stop;
                }
            }
            _ = &mut sleep => {
                let now = Instant::now();
                if reader.frames() != frames_at_rx {
                    // Frames of a message still arriving are life too.
                    frames_at_rx = reader.frames();
                    last_rx = now;
                    ping_at = None;
                }
                match ping_at {
                    Some(sent) if now >= sent + heartbeat.timeout => {
                        break (closed(format!(
                            "heartbeat: nothing received for {:?} after a PING",
                            heartbeat.timeout
                        )), false);
                    }
                    Some(sent) => sleep.as_mut().reset(sent + heartbeat.timeout),
                    None if now >= last_rx + heartbeat.interval => {
                        // Count the timeout from when the PING was due, not from when
                        // this task got to run, so that death is declared within
                        // interval + timeout of the last frame.
                        let now = last_rx + heartbeat.interval;
                        nonce = nonce.wrapping_add(1);
                        let _ = shared.writer.send(Envelope::Ping(Ping { nonce: nonce.to_be_bytes() }));
                        shared.counters.pings_sent.fetch_add(1, Ordering::Relaxed);
                        ping_at = Some(now);
                        sleep.as_mut().reset(now + heartbeat.timeout);
                    }
                    None => sleep.as_mut().reset(last_rx + heartbeat.interval),
                }
            }
        }
    };

    tracing::debug!(peer = %shared.peer, %reason, "connection closing");
    unfinished.0 = None;
    shared.finish(&reason);
    if flush {
        shared.writer.close();
    } else {
        shared.writer.abort();
    }
    // The writer ends at once when aborted, or within the stall timeout when flushing.
    let grace = shared.config.wire.write_stall_timeout + Duration::from_millis(100);
    if !writer_done && tokio::time::timeout(grace, writer_exit).await.is_err() {
        shared.writer.abort();
    }
    drop(reader);
    drop(token);
}

/// Ends the connection if the driver is dropped before it could (see `drive`).
struct Unfinished(Option<Arc<ConnShared>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.finish(&closed(
                "the connection's task was stopped (its runtime shut down)",
            ));
            shared.writer.abort();
        }
    }
}

impl PendingCall {
    /// Waits for the outcome: an answer, a timeout at the deadline given to `start` (the
    /// driver cancels the request then), or the connection's end.
    pub(crate) async fn wait(mut self) -> Result<Reply, TransportError> {
        let received = (&mut self.rx).await;
        self.done = true;
        self.permit.take();
        match received {
            Ok(outcome) => outcome,
            // Every removal from the pending table sends; a lost sender means the
            // connection state was torn down without it, which is a lost connection.
            Err(_) => Err(closed("connection lost")),
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            self.shared.abandon(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(next_id: u32) -> ConnState {
        ConnState {
            next_id,
            pending: IdMap::default(),
            abandoned: IdSet::default(),
            timer: None,
            life: Life::Open,
            close_requested: false,
            close_reason: None,
            last_active: Instant::now(),
            opened_at: Instant::now(),
            ended_at: None,
        }
    }

    #[test]
    fn ids_increase_wrap_and_skip_zero_in_flight_and_abandoned() {
        let mut s = state(u32::MAX - 1);
        s.pending.insert(
            u32::MAX,
            Entry {
                waiter: Waiter::Detached(None),
                deadline: None,
            },
        );
        s.abandoned.insert(1);
        assert_eq!(s.alloc_id(), u32::MAX - 1);
        // u32::MAX is in flight, 0 is reserved, 1 may still get a late answer.
        assert_eq!(s.alloc_id(), 2);
        assert_eq!(s.alloc_id(), 3);
    }

    #[test]
    fn ids_start_at_one() {
        let mut s = state(1);
        assert_eq!((s.alloc_id(), s.alloc_id()), (1, 2));
        let mut s = state(0);
        assert_eq!(s.alloc_id(), 1);
    }
}
