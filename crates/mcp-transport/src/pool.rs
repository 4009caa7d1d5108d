//! A pool of multiplexed connections to one endpoint, with reconnect and resubscription.
//!
//! One connector task per pool makes every connect attempt, so there is never more than
//! one attempt in flight per endpoint; it also runs the backoff, reclaims idle
//! connections, keeps the minimum warm, and subscribes again after a reconnect. Callers
//! never connect themselves: they register as waiters and are woken when a connection
//! with room appears, when one frees a place, or when the endpoint is declared down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{Backpressure, PoolConfig};
use crate::connection::{Connection, ConnectionStats, InFlightPermit, PoolSignal, subscribe_call};
use crate::error::{ErrorKind, Phase, PoolExhausted, Processed, TransportError};
use crate::io::{Connect, TcpConnect};
use crate::message::{Answer, CallDeadline, Meta};
use crate::proto::ConnectionStatus;
use crate::subscription::{PushRouter, PushStream, SubscriptionOwner, UNSUBSCRIBE_METHOD};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent, so a poisoned lock is used as is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state of the pool's endpoint, observable through [`Pool::watch_state`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EndpointState {
    /// No connection yet and none wanted (the pool is lazy).
    Idle,
    /// A connect attempt is in flight.
    Connecting {
        /// The try number in the current series (1-based).
        attempt: u32,
    },
    /// At least one connection is open.
    Connected {
        /// Open connections.
        connections: usize,
    },
    /// A connect attempt failed; the next one waits for the backoff delay.
    Reconnecting {
        /// The number of the next try (2-based: the first retry is attempt 2).
        attempt: u32,
        /// The delay before it.
        next_delay: Duration,
        /// Why the last try failed.
        last_error: TransportError,
    },
    /// The try limit was reached; the error went to the waiting callers. The next call
    /// starts a new series.
    Down {
        /// Why the last try failed.
        reason: TransportError,
    },
    /// The pool was closed.
    Closed {
        /// Why.
        reason: String,
    },
}

/// A snapshot of the pool's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections taking requests.
    pub open: usize,
    /// Connections draining (GOAWAY received; closing when their answers are in).
    pub draining: usize,
    /// 1 while a connect attempt is in flight.
    pub connecting: usize,
    /// Calls waiting for their answer, over all connections.
    pub in_flight: usize,
    /// Callers waiting for a connection with room.
    pub waiting: usize,
    /// Connections established.
    pub connects: u64,
    /// Connections established after an earlier one was lost or closed.
    pub reconnects: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Answers that came after their caller gave up (dropped).
    pub late_answers: u64,
    /// Answers for unknown ids (dropped).
    pub unknown_answers: u64,
    /// CANCEL frames sent.
    pub cancels_sent: u64,
    /// Pushes queued to subscribers.
    pub push_delivered: u64,
    /// Pushes lost to a full subscriber queue.
    pub push_dropped: u64,
    /// Pushes no local subscriber matched.
    pub push_unmatched: u64,
    /// Background tasks still running (connector, connection drivers).
    pub tasks: usize,
}

/// Reads a pool's counters without keeping the pool alive (see [`Pool::stats_probe`]).
#[derive(Debug, Clone)]
pub struct StatsProbe {
    shared: std::sync::Weak<PoolShared>,
}

impl StatsProbe {
    /// The pool's counters, or `None` once the pool is gone.
    pub fn stats(&self) -> Option<PoolStats> {
        self.shared.upgrade().map(|shared| shared.stats())
    }
}

/// Counts a pool's live background tasks (see [`Pool::task_probe`]).
#[derive(Debug, Clone)]
pub struct TaskProbe {
    token: std::sync::Weak<()>,
}

impl TaskProbe {
    /// Live background tasks, plus 1 while the pool's shared state is still allocated.
    pub fn alive(&self) -> usize {
        self.token.strong_count()
    }
}

#[derive(Debug, Default)]
struct Retired {
    late_answers: u64,
    unknown_answers: u64,
    cancels_sent: u64,
}

#[derive(Debug)]
struct PoolState {
    conns: Vec<Connection>,
    connecting: bool,
    waiters: usize,
    /// Set when a series of tries ended at the limit; callers waiting then fail.
    down: Option<TransportError>,
    /// Bumped each time `down` is set, so a waiter knows the series it waited on ended.
    down_gen: u64,
    /// Failed tries in the current series, and the last failure.
    failures: u32,
    last_error: Option<TransportError>,
    closed: bool,
    /// Set by a caller after a series ended at the limit: the connector starts afresh.
    new_series: bool,
    /// The connection carrying the subscriptions (pushes come on one connection only).
    sub_conn: Option<u64>,
    next_serial: u64,
    retired: Retired,
}

/// How many times one call may be refused by a GOAWAY or ERROR 6 and sent again on
/// another connection before the refusal reaches the caller.
const MAX_REFUSALS: u32 = 100;

/// What starts a connection over a stream the connector opened; the stream's type is
/// erased here, so that the pool is one type whatever it connects over.
type Starter = Box<dyn FnOnce(StartArgs) -> Result<Connection, TransportError> + Send>;

/// What a new connection needs from its pool.
struct StartArgs {
    config: crate::config::ConnectionConfig,
    router: Arc<PushRouter>,
    signal: Arc<PoolSignal>,
    token: Arc<()>,
    serial: u64,
}

type Connecting<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Starter, TransportError>> + Send + 'a>,
>;

/// [`Connect`] made object-safe for the pool (a connect is rare: one box per connect is
/// nothing).
trait DynConnect: Send + Sync {
    fn open(&self, timeout: Duration) -> Connecting<'_>;
}

impl<C: Connect> DynConnect for C {
    fn open(&self, timeout: Duration) -> Connecting<'_> {
        Box::pin(async move {
            let io = self.connect(timeout).await?;
            let start: Starter = Box::new(move |args: StartArgs| {
                Connection::start(
                    io,
                    args.config,
                    args.router,
                    Some(args.signal),
                    Some(args.token),
                    args.serial,
                )
            });
            Ok(start)
        })
    }
}

struct PoolShared {
    endpoint: String,
    connector: Box<dyn DynConnect>,
    config: PoolConfig,
    state: Mutex<PoolState>,
    signal: Arc<PoolSignal>,
    router: Arc<PushRouter>,
    status: watch::Sender<EndpointState>,
    /// Cloned into every background task: its count is the number of live tasks.
    token: Arc<()>,
    connects: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
}

impl std::fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolShared")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Connections to one endpoint: lazy, multiplexed, replaced when they die.
///
/// Cheap to clone. Dropping the last handle (or [`Pool::close`]) closes every connection
/// and ends every background task. Must be created inside a tokio runtime.
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<PoolShared>,
    _guard: Arc<Guard>,
}

#[derive(Debug)]
struct Guard(Arc<PoolShared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close("the pool was dropped");
    }
}

/// Counts a caller as waiting for as long as it lives (a dropped call future included).
struct Waiting<'a>(&'a PoolShared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).waiters -= 1;
        self.0.signal.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    /// A pool for `endpoint` (`host:port` over TCP, resolved at each connect). No
    /// connection is made until the first call, unless `min_connections` > 0.
    pub fn new(endpoint: impl Into<String>, config: PoolConfig) -> Pool {
        Pool::with_connector(TcpConnect::new(endpoint), config)
    }

    /// A pool whose connections `connector` opens (TLS, an in-memory stream, ...).
    pub fn with_connector(connect: impl Connect, config: PoolConfig) -> Pool {
        let endpoint = connect.endpoint().to_owned();
        let mut config = config;
        config.max_connections = config.max_connections.max(1);
        config.min_connections = config.min_connections.min(config.max_connections);
        let router = Arc::new(PushRouter::new(
            config.connection.push_queue,
            config.connection.push_queue_bytes,
            config.connection.push_overflow,
        ));
        let (status, _) = watch::channel(EndpointState::Idle);
        let shared = Arc::new(PoolShared {
            endpoint,
            connector: Box::new(connect),
            config,
            state: Mutex::new(PoolState {
                conns: Vec::new(),
                connecting: false,
                waiters: 0,
                down: None,
                down_gen: 0,
                failures: 0,
                last_error: None,
                closed: false,
                new_series: false,
                sub_conn: None,
                next_serial: 1,
                retired: Retired::default(),
            }),
            signal: Arc::new(PoolSignal::default()),
            router,
            status,
            token: Arc::new(()),
            connects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        });
        tokio::spawn(connector(shared.clone(), shared.token.clone()));
        Pool {
            _guard: Arc::new(Guard(shared.clone())),
            shared,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// Sends a REQUEST on the least-loaded open connection and waits for its answer.
    ///
    /// `opts` bounds everything: waiting for a connection (connecting included), for a
    /// place in its in-flight window, and for the answer; without a deadline or timeout the
    /// pool's `default_timeout` applies.
    pub async fn call(
        &self,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
        opts: CallDeadline,
    ) -> Result<Answer, TransportError> {
        let deadline = opts.resolve(Some(self.shared.config.default_timeout));
        // A request refused by a GOAWAY (or ERROR 6) was certainly not processed: it goes
        // to another connection here, so that a server rotating its connections costs
        // callers nothing (docs/protocol.md section 7). Bounded, against a server that
        // refuses everything; the deadline bounds it too.
        let mut refusals = 0;
        loop {
            // Waiting for a connection or for room in its queue is boxed: those waits
            // (notifications, timers) are rare, and held inline they made this future about
            // 500 bytes, which every caller's future embeds and moves at each await.
            let found = PoolShared::take_open(&mut lock(&self.shared.state))?;
            let mut waited = refusals > 0 || found.is_none();
            let (conn, permit) = match found {
                Some(found) => found,
                None => Box::pin(self.shared.acquire(deadline)).await?,
            };
            waited |= conn.is_writer_full();
            conn.wait_writable(deadline).await?;
            // The caller computed `deadline` before this call: if it waited since (for a
            // connection, a connect, queue space), what is left is sent instead
            // (docs/protocol.md section 4.2). A call that found room at once is written
            // within microseconds of that, so it pays no clock read here.
            let rewritten = match (waited, deadline) {
                (true, Some(deadline)) => {
                    meta.with_deadline_left(deadline.saturating_duration_since(Instant::now()))
                }
                _ => None,
            };
            let meta = rewritten.as_ref().unwrap_or(meta);
            match conn.start_call(permit, method, format, meta, body, deadline) {
                Ok(pending) => match pending.wait().await {
                    Err(err) if err.is_refused_by_peer() && refusals < MAX_REFUSALS => {
                        refusals += 1;
                        continue;
                    }
                    outcome => return outcome,
                },
                // The connection started draining or closed after we picked it; the request
                // never left this process, so another connection may take it. Yield first:
                // on a busy runtime, the task that would change what the pool sees (the
                // connection's driver) may be waiting for this very thread.
                Err(err) if err.is_retryable_elsewhere() => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends a one-way NOTIFY on an open connection (connecting if needed, within the
    /// default timeout).
    pub async fn notify(
        &self,
        topic: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let deadline = CallDeadline::default().resolve(Some(self.shared.config.default_timeout));
        let (conn, _permit) = self.shared.acquire(deadline).await?;
        conn.wait_writable(deadline).await?;
        conn.notify_now(topic, format, meta, body)
    }

    /// Subscribes to a topic or `prefix*` pattern. The subscription survives reconnects
    /// (the pool sends `$subscribe` again on the new connection) and sends `$unsubscribe`
    /// when the last local subscriber of the pattern is dropped.
    pub async fn subscribe(&self, pattern: &str) -> Result<PushStream, TransportError> {
        let owner: Arc<dyn SubscriptionOwner> = self.shared.clone();
        let Some((sub, first)) =
            PushStream::register(&self.shared.router, Arc::downgrade(&owner), pattern)
        else {
            return Err(TransportError::shutdown(Phase::Pool));
        };
        if first {
            let deadline =
                CallDeadline::default().resolve(Some(self.shared.config.default_timeout));
            if let Err(err) = self.shared.subscribe_one(pattern, deadline).await {
                sub.forget();
                return Err(err);
            }
        }
        Ok(sub)
    }

    /// Waits until a connection is open (connecting if needed), at most until `deadline`.
    pub async fn ready(&self, opts: CallDeadline) -> Result<(), TransportError> {
        let deadline = opts.resolve(Some(self.shared.config.default_timeout));
        let (_conn, _permit) = self.shared.acquire(deadline).await?;
        Ok(())
    }

    /// Like [`Pool::ready`], but fails at the first failed connect try instead of waiting
    /// through the backoff for a later one (gRPC's fail-fast; `ready` is its
    /// wait-for-ready): at most the connect timeout when nobody listens.
    pub async fn ready_or_fail(&self, opts: CallDeadline) -> Result<(), TransportError> {
        let mut states = self.watch_state();
        let failed = async move {
            loop {
                let failure = match &*states.borrow_and_update() {
                    EndpointState::Reconnecting { last_error, .. } => Some(last_error.clone()),
                    EndpointState::Down { reason } => Some(reason.clone()),
                    _ => None,
                };
                if let Some(err) = failure {
                    return err;
                }
                if states.changed().await.is_err() {
                    return TransportError::shutdown(Phase::Pool);
                }
            }
        };
        tokio::select! {
            ready = self.ready(opts) => ready,
            err = failed => Err(err),
        }
    }

    /// The endpoint's state now.
    pub fn state(&self) -> EndpointState {
        self.shared.status.borrow().clone()
    }

    /// A receiver of the endpoint's state changes.
    pub fn watch_state(&self) -> watch::Receiver<EndpointState> {
        self.shared.status.subscribe()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// A probe that reads the counters without keeping the pool alive: for a task that
    /// reports them elsewhere (a metrics exporter) for as long as the pool lives.
    pub fn stats_probe(&self) -> StatsProbe {
        StatsProbe {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Closes every connection (pending calls fail with [`ErrorKind::Shutdown`]), ends
    /// every subscription stream and the background tasks.
    pub fn close(&self) {
        self.shared.close("closed by its owner");
    }

    /// A probe that counts the pool's live background tasks without keeping the pool
    /// alive: after the last handle is dropped, [`TaskProbe::alive`] reaches 0 once every
    /// task has ended and the pool's memory is freed.
    pub fn task_probe(&self) -> TaskProbe {
        TaskProbe {
            token: Arc::downgrade(&self.shared.token),
        }
    }

    /// Waits until every background task has ended (after [`Pool::close`]), at most
    /// `timeout`; returns whether they all did.
    pub async fn join(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if Arc::strong_count(&self.shared.token) == 1 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl SubscriptionOwner for PoolShared {
    fn unsubscribed(&self, pattern: &str) {
        let state = lock(&self.state);
        let conn = state
            .sub_conn
            .and_then(|serial| state.conns.iter().find(|c| c.serial() == serial));
        if let Some(conn) = conn {
            conn.call_detached(UNSUBSCRIBE_METHOD, pattern.as_bytes());
        }
    }
}

impl PoolShared {
    fn close(&self, reason: &str) {
        let conns = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            state.closed = true;
            std::mem::take(&mut state.conns)
        };
        for conn in &conns {
            conn.close();
        }
        self.router.close();
        self.status.send_replace(EndpointState::Closed {
            reason: reason.to_owned(),
        });
        self.signal.changed();
    }

    fn open_count(state: &PoolState) -> usize {
        state.conns.iter().filter(|c| c.is_open()).count()
    }

    fn stats(&self) -> PoolStats {
        let state = lock(&self.state);
        let mut stats = PoolStats {
            connecting: usize::from(state.connecting),
            waiting: state.waiters,
            connects: self.connects.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            late_answers: state.retired.late_answers,
            unknown_answers: state.retired.unknown_answers,
            cancels_sent: state.retired.cancels_sent,
            push_delivered: self.router.delivered(),
            push_dropped: self.router.dropped(),
            push_unmatched: self.router.unmatched(),
            tasks: Arc::strong_count(&self.token) - 1,
            ..PoolStats::default()
        };
        for conn in &state.conns {
            let c: ConnectionStats = conn.stats();
            if conn.is_open() {
                stats.open += 1;
            } else if !conn.is_closed() {
                stats.draining += 1;
            }
            stats.in_flight += c.in_flight;
            stats.late_answers += c.late_answers;
            stats.unknown_answers += c.unknown_answers;
            stats.cancels_sent += c.cancels_sent;
        }
        stats
    }

    /// Removes closed connections, keeping their counters.
    fn prune(state: &mut PoolState) {
        let mut i = 0;
        while i < state.conns.len() {
            if state.conns[i].is_closed() {
                let conn = state.conns.swap_remove(i);
                let c = conn.stats();
                state.retired.late_answers += c.late_answers;
                state.retired.unknown_answers += c.unknown_answers;
                state.retired.cancels_sent += c.cancels_sent;
                if state.sub_conn == Some(conn.serial()) {
                    state.sub_conn = None;
                }
            } else {
                i += 1;
            }
        }
    }

    /// Whether the connector should make a connect attempt now.
    fn want_connect(&self, state: &PoolState) -> bool {
        if state.closed {
            return false;
        }
        let open = Self::open_count(state);
        if state.down.is_some() {
            // The callers were told (docs/protocol.md section 8: after 10 failed tries the
            // error is returned); what wants a connection without a caller, the warm
            // minimum and the subscriptions, keeps trying at the backoff's longest delay,
            // so that it is back when the server is, not at the next call.
            return open < self.config.min_connections
                || (open == 0 && self.router.has_subscribers());
        }
        // Waiters justify a new connection only when no open one has room: a waiter that
        // is about to take a free place must not cause a spurious connect.
        let room = state
            .conns
            .iter()
            .any(|c| c.is_open() && c.in_flight() < c.max_in_flight());
        open < self.config.max_connections
            && (open < self.config.min_connections
                || (state.waiters > 0 && !room)
                || (open == 0 && self.router.has_subscribers()))
    }

    /// A place on an open connection with room, if one is free now (dead connections are
    /// dropped from the list first); an error once the pool is closed.
    fn take_open(
        state: &mut PoolState,
    ) -> Result<Option<(Connection, InFlightPermit)>, TransportError> {
        if state.closed {
            return Err(TransportError::shutdown(Phase::Pool));
        }
        Self::prune(state);
        Ok(Self::pick(state))
    }

    /// The least-loaded open connection with room, and a place in its window.
    fn pick(state: &PoolState) -> Option<(Connection, InFlightPermit)> {
        // On every call: one pass for the least loaded, no list. Its place is taken with an
        // atomic, which fails only if other callers took its last places meanwhile; then
        // every connection with room is tried, least loaded first.
        let least = state
            .conns
            .iter()
            .filter(|c| c.is_open())
            .map(|c| (c.in_flight(), c))
            .filter(|(load, c)| *load < c.max_in_flight())
            .min_by_key(|(load, _)| *load);
        if let Some((_, c)) = least {
            if let Some(permit) = c.try_acquire() {
                return Some((c.clone(), permit));
            }
        }
        let mut candidates: Vec<(usize, &Connection)> = state
            .conns
            .iter()
            .filter(|c| c.is_open())
            .map(|c| (c.in_flight(), c))
            .filter(|(load, c)| *load < c.max_in_flight())
            .collect();
        candidates.sort_by_key(|(load, _)| *load);
        candidates
            .into_iter()
            .find_map(|(_, c)| c.try_acquire().map(|p| (c.clone(), p)))
    }

    /// Why no connection can be handed out: the kind, the words, and the last connect
    /// failure behind an endpoint that is down (kept as the error's source, so that a
    /// caller can ask it why, a TLS handshake's reason say).
    fn exhausted_reason(
        &self,
        state: &PoolState,
    ) -> (PoolExhausted, String, Option<TransportError>) {
        let open = Self::open_count(state);
        if open == 0 {
            match (&state.down, &state.last_error) {
                (Some(err), _) => (
                    PoolExhausted::EndpointDown,
                    format!("endpoint {} is down: {}", self.endpoint, err.message()),
                    Some(err.clone()),
                ),
                (None, Some(err)) if state.failures > 0 => (
                    PoolExhausted::EndpointDown,
                    format!(
                        "endpoint {} unreachable after {} tries: {}",
                        self.endpoint,
                        state.failures,
                        err.message()
                    ),
                    Some(err.clone()),
                ),
                _ => (
                    PoolExhausted::AllConnecting,
                    format!("still connecting to {}", self.endpoint),
                    None,
                ),
            }
        } else {
            (
                PoolExhausted::AllFull,
                format!(
                    "all {open} connections to {} are at their maximum in flight",
                    self.endpoint
                ),
                None,
            )
        }
    }

    /// Waits for a connection with room, at most until `deadline`.
    async fn acquire(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Connection, InFlightPermit), TransportError> {
        // The common case first: a connection with room, taken without registering as a
        // waiter (registering and leaving the wake-up list costs two locks of its own on
        // every call). Then register, and only then look again (below): a place freed
        // after the look above but before the registration would otherwise wake nobody,
        // since the permit that frees it does not take the pool's lock.
        if let Some(found) = Self::take_open(&mut lock(&self.state))? {
            return Ok(found);
        }
        lock(&self.state).waiters += 1;
        self.signal.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        let mut my_gen = None;
        loop {
            let notified = self.signal.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let reason = {
                let mut state = lock(&self.state);
                if let Some(found) = Self::take_open(&mut state)? {
                    return Ok(found);
                }
                let series = *my_gen.get_or_insert_with(|| {
                    // A call after a series that ended at the limit starts a new series.
                    if state.down.take().is_some() {
                        state.failures = 0;
                        state.new_series = true;
                    }
                    state.down_gen
                });
                if state.down_gen != series {
                    let (reason, message, cause) = self.exhausted_reason(&state);
                    return Err(caused(
                        TransportError::new(
                            ErrorKind::PoolExhausted(reason),
                            Phase::Connect,
                            Processed::No,
                            message,
                        ),
                        cause,
                    ));
                }
                let open = Self::open_count(&state);
                if self.config.connection.backpressure == Backpressure::Reject
                    && open >= self.config.max_connections
                {
                    return Err(TransportError::new(
                        ErrorKind::Overloaded,
                        Phase::Pool,
                        Processed::No,
                        "every connection is at its maximum in flight",
                    ));
                }
                if self.want_connect(&state) {
                    self.signal.connector.notify_one();
                }
                self.exhausted_reason(&state)
            };
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        // The message names the cause once; the kind says it again as a
                        // value, so it is not repeated in words.
                        let (kind, message, cause) = reason;
                        let err = TransportError::new(
                            ErrorKind::PoolExhausted(kind),
                            Phase::Pool,
                            Processed::No,
                            format!("no connection before the deadline: {message}"),
                        );
                        return Err(caused(err, cause).at_deadline());
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Sends `$subscribe` for one new pattern on the subscription connection.
    async fn subscribe_one(
        &self,
        pattern: &str,
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        let (conn, permit) = self.acquire(deadline).await?;
        drop(permit);
        let conn = {
            let mut state = lock(&self.state);
            let current = state
                .sub_conn
                .and_then(|serial| state.conns.iter().find(|c| c.serial() == serial))
                .filter(|c| c.is_open())
                .cloned();
            match current {
                Some(current) => current,
                None => {
                    // This connection becomes the subscription connection: every other
                    // pattern goes there too.
                    state.sub_conn = Some(conn.serial());
                    for other in self.router.patterns() {
                        if other != pattern {
                            conn.resubscribe(&other);
                        }
                    }
                    conn
                }
            }
        };
        subscribe_call(
            &conn,
            pattern,
            CallDeadline {
                deadline,
                timeout: None,
            },
        )
        .await
    }

    /// Housekeeping: drops closed connections, closes idle ones above the minimum, and
    /// moves the subscriptions to a live connection when theirs is gone.
    fn maintain(&self) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        Self::prune(&mut state);
        let now = Instant::now();
        let mut open = Self::open_count(&state);
        let sub_conn = state.sub_conn;
        for conn in &state.conns {
            if open > self.config.min_connections
                && conn.is_open()
                && conn.in_flight() == 0
                && Some(conn.serial()) != sub_conn
                && now.duration_since(conn.last_active()) >= self.config.idle_timeout
            {
                conn.close();
                open -= 1;
            }
        }
        if state.sub_conn.is_none() && self.router.has_subscribers() {
            if let Some(conn) = state.conns.iter().find(|c| c.is_open()).cloned() {
                state.sub_conn = Some(conn.serial());
                // A refusal (or no answer) ends that pattern's subscribers with the error
                // (`PushStream::error`) rather than leaving them open on nothing.
                for pattern in self.router.patterns() {
                    conn.resubscribe(&pattern);
                }
            }
        }
        let open = Self::open_count(&state);
        if open > 0 {
            self.status
                .send_replace(EndpointState::Connected { connections: open });
        } else if state.conns.is_empty() && state.failures == 0 && state.down.is_none() {
            self.status.send_if_modified(|s| {
                if matches!(s, EndpointState::Connected { .. }) {
                    *s = EndpointState::Idle;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// `err` with `cause` as its source, when there is one.
fn caused(err: TransportError, cause: Option<TransportError>) -> TransportError {
    match cause {
        Some(cause) => err.with_cause(cause),
        None => err,
    }
}

/// The pool's connector: the only place connect attempts are made.
async fn connector(shared: Arc<PoolShared>, token: Arc<()>) {
    let mut backoff = Backoff::new(shared.config.backoff);
    let mut ever_connected = false;
    // The last connection made, to tell a real success from a server that accepts and
    // closes at once (a connection limit, GOAWAY on accept), which must back off too
    // instead of reconnecting in a hot loop.
    let mut recent: Option<Connection> = None;
    loop {
        // Wait until a connection is wanted, doing housekeeping meanwhile.
        loop {
            let wake = shared.signal.connector.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            shared.maintain();
            {
                let mut state = lock(&shared.state);
                if state.closed {
                    return;
                }
                if state.new_series {
                    // A caller started a new series after the last one ended.
                    state.new_series = false;
                    backoff.reset();
                    recent = None;
                }
                if shared.want_connect(&state) {
                    break;
                }
            }
            tokio::select! {
                _ = &mut wake => {}
                _ = tokio::time::sleep(shared.config.maintenance_interval) => {}
            }
        }

        if let Some(conn) = recent.take() {
            // A connection that answered anything, then was closed politely (a GOAWAY
            // rotating connections, say), was a success too: its replacement is opened at
            // once, not after the backoff meant for a server that accepts and closes.
            if conn.is_open()
                || conn.answered_any()
                || conn.useful_life() >= shared.config.backoff.initial
            {
                // A real success: the next failure starts a new series.
                backoff.reset();
            } else {
                let reason = match conn.status() {
                    ConnectionStatus::Closed { reason } => reason.to_string(),
                    ConnectionStatus::Draining { reason } => reason,
                    _ => String::from("closed"),
                };
                let err = TransportError::new(
                    ErrorKind::ConnectionClosed,
                    Phase::Connect,
                    Processed::No,
                    format!("the connection ended right after it was made: {reason}"),
                );
                if shared.connect_failed(&mut backoff, err) {
                    continue;
                }
            }
        }

        let delay = backoff.next_delay();
        if !delay.is_zero() {
            let last_error = lock(&shared.state).last_error.clone();
            if let Some(last_error) = last_error {
                shared.status.send_replace(EndpointState::Reconnecting {
                    attempt: backoff.failures() + 1,
                    next_delay: delay,
                    last_error,
                });
            }
            if !shared.sleep_unless_closed(delay).await {
                return;
            }
        }

        lock(&shared.state).connecting = true;
        if !matches!(&*shared.status.borrow(), EndpointState::Connected { .. }) {
            shared.status.send_replace(EndpointState::Connecting {
                attempt: backoff.failures() + 1,
            });
        }
        let connected = shared
            .connector
            .open(shared.config.connection.connect_timeout)
            .await;
        let mut state = lock(&shared.state);
        state.connecting = false;
        if state.closed {
            return;
        }
        match connected.and_then(|start| {
            start(StartArgs {
                config: shared.config.connection.clone(),
                router: shared.router.clone(),
                signal: shared.signal.clone(),
                token: token.clone(),
                serial: state.next_serial,
            })
        }) {
            Ok(conn) => {
                state.next_serial += 1;
                recent = Some(conn.clone());
                state.conns.push(conn);
                state.failures = 0;
                state.last_error = None;
                shared.connects.fetch_add(1, Ordering::Relaxed);
                if ever_connected {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                ever_connected = true;
                drop(state);
                tracing::debug!(endpoint = %shared.endpoint, "connected");
            }
            Err(err) => {
                drop(state);
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                shared.connect_failed(&mut backoff, err);
            }
        }
        shared.signal.changed();
    }
}

impl PoolShared {
    /// Waits out `delay` (a backoff), but not past a close, which then ends the connector
    /// at once rather than leave `close` and `join` waiting up to the longest backoff.
    /// Returns whether the pool is still open.
    async fn sleep_unless_closed(&self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let wake = self.signal.connector.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if lock(&self.state).closed {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return !lock(&self.state).closed,
                // Other news (a caller waiting, a connection gone) does not cut a backoff
                // short: only a close does.
                () = &mut wake => {}
            }
        }
    }

    /// Records a failed try; returns whether the series ended at the try limit (the
    /// endpoint is then down and the waiting callers are told).
    fn connect_failed(&self, backoff: &mut Backoff, err: TransportError) -> bool {
        backoff.failed();
        let mut state = lock(&self.state);
        state.failures = backoff.failures();
        state.last_error = Some(err.clone());
        if !backoff.exhausted() {
            return false;
        }
        tracing::debug!(endpoint = %self.endpoint, %err, "endpoint down");
        state.down = Some(err.clone());
        state.down_gen += 1;
        drop(state);
        self.status
            .send_replace(EndpointState::Down { reason: err });
        self.signal.changed();
        true
    }
}
