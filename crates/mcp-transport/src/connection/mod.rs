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
//! `mod.rs` is what callers and the pool hold ([`Connection`], a call's place in the
//! pending table); `driver.rs` is the glue between the core and tokio (the shared state, the
//! driver task).
//!
//! Architecture invariant: every call gets exactly one outcome. The core owns the sender of
//! each call's oneshot and hands it out once, as an event, whatever happens; the caller who
//! drops its future takes its entry out itself (and CANCELs it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use mcp_codec::format;

use crate::config::ConnectionConfig;
use crate::error::{ErrorKind, Phase, Processed, TransportError};
use crate::io::{Stream, connect_tcp};
use crate::message::{Answer, CallDeadline, Meta};
use crate::proto::client::closed;
use crate::proto::{ConnectionStatus, Life, Resubscribe};
use crate::subscription::{PushRouter, PushStream, SUBSCRIBE_METHOD, SubscriptionOwner};
pub(crate) use crate::window::{InFlightPermit, PoolSignal};
use crate::wire::WriterStats;

mod driver;

use driver::{ConnShared, Outcome, lock};

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
        config: ConnectionConfig,
        router: Arc<PushRouter>,
        signal: Option<Arc<PoolSignal>>,
        token: Option<Arc<()>>,
        serial: u64,
    ) -> Result<Connection, TransportError> {
        let shared = ConnShared::spawn(stream, config, router, signal, token, serial);
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
