//! One multiplexed client connection: the tokio driver around the protocol core
//! ([`ClientCore`](crate::proto::ClientCore)), generic over the byte stream.
//!
//! Tasks: a driver (reads and decodes, hands what it reads to the core, sleeps until the
//! core's next timeout, hands the core's events to callers) and the writer of
//! [`WireWriter`]. Callers go through the core from their own task, under one lock: it
//! allocates the id, records the caller's oneshot sender and encodes the REQUEST straight
//! into the writer's buffer. No task per request, no timer per request: the core keeps
//! each call's deadline in its pending table and the driver runs one timer, set to the
//! core's `poll_timeout` (registering and clearing a tokio timer per call cost about as much
//! as the rest of the transport's per-call work).
//!
//! Architecture invariant: every call gets exactly one outcome. The core owns the sender of
//! each call's oneshot and hands it out once, as an event, whatever happens; the caller who
//! drops its future takes its entry out itself (and CANCELs it).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use mcp_codec::format;

use crate::config::{Backpressure, ConnectionConfig, MetadataSource, Role};
use crate::error::{ErrorKind, Phase, Processed, TransportError, WireError};
use crate::io::{Stream, connect_tcp};
use crate::message::{Answer, CallDeadline, Meta};
use crate::proto::ClientSettings;
use crate::proto::client::closed;
use crate::proto::{ClientCore, ConnectionStatus, Event, Life, Resubscribe};
use crate::subscription::{
    PushRouter, PushStream, SUBSCRIBE_METHOD, SubscriptionOwner, UNSUBSCRIBE_METHOD,
};
use crate::window::Slots;
pub(crate) use crate::window::{InFlightPermit, PoolSignal};
use crate::wire::{FrameReader, WireWriter, WriterExit, WriterStats};

type Outcome = Result<Answer, TransportError>;
type Core = ClientCore<oneshot::Sender<Outcome>>;
type Events = Vec<Event<oneshot::Sender<Outcome>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent, so a poisoned lock (a panic
    // elsewhere while holding it) is used as is rather than spreading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
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

#[derive(Debug)]
pub(crate) struct ConnShared {
    serial: u64,
    peer: SocketAddr,
    config: ConnectionConfig,
    writer: WireWriter,
    core: Mutex<Core>,
    slots: Arc<Slots>,
    /// Wakes the driver: the core's timer moved earlier, a close was asked, or a draining
    /// connection ran dry.
    control: tokio::sync::Notify,
    status: watch::Sender<ConnectionStatus>,
    router: Arc<PushRouter>,
    signal: Option<Arc<PoolSignal>>,
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
        self.0.with_core(|core, _| core.request_close());
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

impl Connection {
    /// Connects over TCP to `addr` (within the connect timeout) and starts the
    /// connection's tasks.
    pub async fn connect<A: ToSocketAddrs>(
        addr: A,
        config: ConnectionConfig,
    ) -> Result<Connection, TransportError> {
        let stream = connect_tcp(addr, config.connect_timeout).await?;
        Connection::over(stream, config)
    }

    /// Runs the protocol over an already connected stream: TCP, TLS, an in-memory duplex.
    pub fn over<S: Stream>(
        stream: S,
        config: ConnectionConfig,
    ) -> Result<Connection, TransportError> {
        let router = Arc::new(PushRouter::new(
            config.push_queue,
            config.push_queue_bytes,
            config.push_overflow,
        ));
        Connection::start(stream, config, router, None, None, 0)
    }

    /// Runs the protocol over an already connected TCP stream (TCP_NODELAY is set here).
    pub fn from_stream(
        stream: tokio::net::TcpStream,
        config: ConnectionConfig,
    ) -> Result<Connection, TransportError> {
        stream.set_nodelay(true).map_err(|err| {
            TransportError::new(
                ErrorKind::Connect,
                Phase::Connect,
                Processed::No,
                format!("socket setup failed: {err}"),
            )
        })?;
        Connection::over(stream, config)
    }

    pub(crate) fn start<S: Stream>(
        stream: S,
        mut config: ConnectionConfig,
        router: Arc<PushRouter>,
        signal: Option<Arc<PoolSignal>>,
        token: Option<Arc<()>>,
        serial: u64,
    ) -> Result<Connection, TransportError> {
        let peer = stream
            .peer()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        config.wire.role = Role::Client;
        config.max_in_flight = config.max_in_flight.max(1);
        let (read, write) = stream.into_halves();
        let reader = FrameReader::new(read, &config.wire);
        let writer = WireWriter::spawn(write, &config.wire);
        let (status, _) = watch::channel(ConnectionStatus::Open);
        let settings = ClientSettings {
            max_abandoned_ids: config.max_abandoned_ids,
            subscribe_timeout: config.subscribe_timeout,
            heartbeat_interval: config.heartbeat.interval,
            heartbeat_timeout: config.heartbeat.timeout,
        };
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
            core: Mutex::new(ClientCore::new(settings, Instant::now().into_std())),
            control: tokio::sync::Notify::new(),
            status,
            router,
            signal,
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
        opts: CallDeadline,
    ) -> Result<Answer, TransportError> {
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
        self.notify_now(topic, format, meta, body)
    }

    /// Subscribes to a topic or `prefix*` pattern on this connection (`$subscribe`); the
    /// subscription ends with the connection. Use [`Pool::subscribe`](crate::Pool::subscribe)
    /// for one that survives reconnects.
    pub async fn subscribe(
        &self,
        pattern: &str,
        opts: CallDeadline,
    ) -> Result<PushStream, TransportError> {
        let owner: Arc<dyn SubscriptionOwner> = self.shared.clone();
        let Some((sub, first)) =
            PushStream::register(&self.shared.router, Arc::downgrade(&owner), pattern)
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
        lock(&self.shared.core).is_open()
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.core).life() == Life::Closed
    }

    /// Calls waiting for their answer.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.core).in_flight()
    }

    /// The server's address (unspecified for a stream that has none, such as a duplex).
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Counters.
    pub fn stats(&self) -> ConnectionStats {
        let core = lock(&self.shared.core);
        let c = core.counters();
        ConnectionStats {
            in_flight: core.in_flight(),
            abandoned: core.abandoned(),
            late_answers: c.late_answers,
            unknown_answers: c.unknown_answers,
            cancels_sent: c.cancels_sent,
            pushes_received: c.pushes_received,
            pings_sent: c.pings_sent,
            pongs_dropped: c.pongs_dropped,
            writer: self.shared.writer.stats(),
        }
    }

    /// Closes now: pending calls fail with [`ErrorKind::Shutdown`] ("may have been
    /// processed"), a GOAWAY (last id 0: no more requests from this side, docs/protocol.md
    /// section 7) is written after what is queued, the socket is closed and the tasks end.
    pub fn close(&self) {
        self.shared.with_core(|core, out| core.close(out));
    }

    /// Closes gracefully: sends GOAWAY (last id 0, "the client sends no more requests"),
    /// takes no new requests, and closes once every pending call has its answer.
    pub fn drain(&self) {
        let now = Instant::now().into_std();
        self.shared
            .with_core(|core, out| core.drain(out, "closed by its owner", now));
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

    /// Whether a message queued now would wait for queue space.
    pub(crate) fn is_writer_full(&self) -> bool {
        self.shared.writer.is_full()
    }

    /// Whether any request on this connection was answered.
    pub(crate) fn answered_any(&self) -> bool {
        lock(&self.shared.core).counters().answers > 0
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.shared.config.max_in_flight
    }

    pub(crate) fn last_active(&self) -> Instant {
        Instant::from_std(lock(&self.shared.core).last_active())
    }

    /// How long the connection took requests: from connect until it started draining or
    /// closed (or until now).
    pub(crate) fn useful_life(&self) -> Duration {
        lock(&self.shared.core).useful_life(Instant::now().into_std())
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
        self.shared
            .with_core(|core, out| core.send_notify(out, topic, format, meta, body))
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
    opts: CallDeadline,
) -> Result<(), TransportError> {
    let meta = conn.shared.control_metadata();
    match conn
        .call(
            SUBSCRIBE_METHOD,
            format::RAW,
            &meta,
            pattern.as_bytes(),
            opts,
        )
        .await?
    {
        Answer::Response(_) => Ok(()),
        Answer::Error(err) => Err(TransportError::new(
            ErrorKind::Remote { code: err.code() },
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
    /// Runs `f` on the core under its lock, with the writer as where frames go; then, with
    /// the lock released, passes on the events it produced and wakes the driver if the core
    /// asks.
    fn with_core<R>(&self, f: impl FnOnce(&mut Core, &mut &WireWriter) -> R) -> R {
        let mut out = &self.writer;
        let mut core = lock(&self.core);
        let result = f(&mut core, &mut out);
        let wake = core.take_wake();
        let mut events = Events::new();
        if core.has_events() {
            core.take_events(&mut events);
        }
        drop(core);
        if wake {
            self.control.notify_one();
        }
        if !events.is_empty() {
            self.hand_out(&mut events);
        }
        result
    }

    /// Passes on what the core produced: outcomes to callers, pushes to subscribers,
    /// status changes to the owner and the pool.
    fn hand_out(&self, events: &mut Events) {
        let mut changed = false;
        for event in events.drain(..) {
            match event {
                // The caller may have dropped its future a moment ago: then nobody wants it.
                Event::Done(tx, outcome) => {
                    let _ = tx.send(outcome);
                }
                Event::Push(push) => self.router.deliver(push),
                Event::ResubscribeFailed(resubscribe, err) => {
                    self.router
                        .fail(&resubscribe.pattern, resubscribe.epoch, &err);
                }
                Event::Status(status) => {
                    if matches!(status, ConnectionStatus::Closed { .. }) {
                        self.slots.close();
                    }
                    self.status.send_replace(status);
                    changed = true;
                }
            }
        }
        if changed {
            if let Some(signal) = &self.signal {
                signal.changed();
            }
        }
    }

    fn closed_error(&self, phase: Phase, processed: Processed) -> TransportError {
        lock(&self.core).closed_error(phase, processed)
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

    /// Allocates an id, records the caller and queues the REQUEST, all under the core's
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
        let deadline = deadline.map(Instant::into_std);
        let id = self
            .with_core(|core, out| core.send_request(out, method, format, meta, body, deadline, tx))
            .map_err(|(_, err)| err)?;
        Ok(PendingCall {
            shared: self.clone(),
            id,
            rx,
            permit,
            done: false,
        })
    }

    fn call_detached(&self, method: &str, body: &[u8], resubscribe: Option<Resubscribe>) {
        let now = Instant::now().into_std();
        let meta = self.control_metadata();
        self.with_core(|core, out| {
            core.send_detached_with(out, method, &meta, body, resubscribe, now)
        });
    }

    /// The metadata of a request the transport sends by itself (`$subscribe`, ...).
    fn control_metadata(&self) -> Meta {
        self.config
            .control_metadata
            .as_ref()
            .map_or_else(Meta::new, MetadataSource::get)
    }

    /// Ends the connection: every pending call gets `reason`, the status says closed.
    /// `written`: see [`ClientCore::finish`].
    fn finish(&self, reason: &TransportError, written: Option<u64>) {
        let now = Instant::now().into_std();
        self.with_core(|core, _| core.finish(reason, now, written));
    }
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

/// The connection's driver: reads into the core, sleeps until the core's next timeout,
/// hands out the core's events, and ends the connection.
async fn drive<R: tokio::io::AsyncRead + Unpin>(
    shared: Arc<ConnShared>,
    mut reader: FrameReader<R>,
    token: Option<Arc<()>>,
) {
    // Deadlines are the driver's to enforce: if this task is dropped before it ends the
    // connection (its runtime shut down), the guard ends it, so no caller waits for good.
    let mut unfinished = Unfinished(Some(shared.clone()));
    let mut frames_at_rx = 0;
    let writer_exit = shared.writer.closed();
    tokio::pin!(writer_exit);
    let mut writer_done = false;
    let mut events = Events::new();
    // One timer for the core's deadlines and heartbeat. It is re-armed when it fires and
    // when the core's earliest deadline comes forward (a call with an earlier one), not at
    // every read: the heartbeat's deadline only moves later as frames arrive, and firing
    // early only finds the next one.
    let timer = tokio::time::sleep_until(Instant::from_std(lock(&shared.core).poll_timeout()));
    tokio::pin!(timer);

    let (reason, flush) = loop {
        tokio::select! {
            biased;
            _ = shared.control.notified() => {
                let core = lock(&shared.core);
                if let Some(stop) = core.poll_close() {
                    break stop;
                }
                let at = Instant::from_std(core.poll_timeout());
                drop(core);
                if at < timer.deadline() {
                    timer.as_mut().reset(at);
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
            () = &mut timer => {
                let now = Instant::now();
                let mut out = &shared.writer;
                let mut core = lock(&shared.core);
                if reader.frames() != frames_at_rx {
                    // Frames of a message still arriving are life too.
                    frames_at_rx = reader.frames();
                    core.handle_received(now.into_std());
                }
                let dead = core.handle_timeout(&mut out, now.into_std());
                timer.as_mut().reset(Instant::from_std(core.poll_timeout()));
                let wake = core.take_wake();
                core.take_events(&mut events);
                drop(core);
                shared.hand_out(&mut events);
                if wake {
                    shared.control.notify_one();
                }
                if let Err(reason) = dead {
                    break (reason, false);
                }
            }
            first = reader.next() => {
                // Everything this read brought is handled before waiting again: one pass
                // through `select!`, one lock of the core, one clock read.
                let now = Instant::now().into_std();
                let mut out = &shared.writer;
                let mut core = lock(&shared.core);
                let mut next = first;
                let stop = loop {
                    match next {
                        Ok(Some(message)) => {
                            if let Err(reason) = core.handle_inbound(&mut out, message, now) {
                                break Some((reason, false));
                            }
                        }
                        Ok(None) => {
                            break Some((closed("the server closed the connection"), false));
                        }
                        Err(err) => {
                            if let Some(code) = err.error_code() {
                                core.protocol_error(&mut out, code);
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
                core.handle_read_done(now);
                frames_at_rx = reader.frames();
                let wake = core.take_wake();
                core.take_events(&mut events);
                drop(core);
                shared.hand_out(&mut events);
                if let Some(stop) = stop {
                    break stop;
                }
                if wake {
                    // Seen by the control branch at the next turn.
                    shared.control.notify_one();
                }
            }
        }
    };

    tracing::debug!(peer = %shared.peer, %reason, "connection closing");
    unfinished.0 = None;
    // The writer ends at once when aborted, or within the stall timeout when flushing.
    let grace = shared.config.wire.write_stall_timeout + Duration::from_millis(100);
    if flush {
        // What is queued may still be written: every pending call may be processed.
        shared.finish(&reason, None);
        shared.writer.close();
    } else {
        // Once the writer has stopped, a request it never wrote whole was certainly not
        // processed; its caller is told so (and may send it elsewhere).
        shared.writer.abort();
        if !writer_done && tokio::time::timeout(grace, &mut writer_exit).await.is_ok() {
            writer_done = true;
        }
        let written = writer_done.then(|| shared.writer.written_bytes());
        shared.finish(&reason, written);
    }
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
            shared.finish(
                &closed("the connection's task was stopped (its runtime shut down)"),
                None,
            );
            shared.writer.abort();
        }
    }
}

impl PendingCall {
    /// Waits for the outcome: an answer, a timeout at the deadline given to `start` (the
    /// driver cancels the request then), or the connection's end.
    pub(crate) async fn wait(mut self) -> Result<Answer, TransportError> {
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
            let now = Instant::now().into_std();
            let id = self.id;
            self.shared
                .with_core(|core, out| core.abandon(out, id, now));
        }
    }
}
