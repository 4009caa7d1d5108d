//! The fleet transport: the tokio shell around the balancer core. It owns one
//! [`Pool`] per endpoint, a task per endpoint that reports the pool's connects to the core,
//! and the task that applies a discovery stream; each attempt asks the core for an
//! endpoint, goes through that endpoint's pool, and tells the core how it went.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use mcp_codec::ErrorCode;
use mcp_format::FormatId;
use mcp_transport::{CallDeadline, EndpointState as PoolState, Meta, Pool, PoolConfig};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::follow;
use super::state::{Balancer, Connectivity, EndpointId, Outcome};
use super::{BalanceConfig, Change, Instance};
use crate::client::RawResponse;
use crate::error::{Error, ErrorKind, Phase, Processed};
use crate::metrics::ConnectionCounts;
use crate::transport::{Attempt, Dialer, RawPushStream, Stats, Transport, Tried, response_of};

/// How long `close` waits for each pool's tasks to end once told to.
const JOIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times one attempt may move to another endpoint after a refusal that left the
/// request unprocessed (a refused connect, GOAWAY, ERROR 6) before the refusal is the
/// attempt's result.
const MAX_MOVES: usize = 3;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent, so a poisoned lock is used as is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A discovery source as the builder holds it: shared so that the builder stays `Clone`;
/// the first client built takes it.
pub(crate) type ChangeStream = Pin<Box<dyn Stream<Item = Change> + Send>>;

/// Where a fleet's endpoints come from. `pub` in a private module, as the `Transport`
/// seam: it is the builder's `Target::Source` for a fleet, and cannot be named outside the
/// crate.
#[derive(Clone)]
#[allow(unreachable_pub)]
pub enum FleetSource {
    /// A fixed list.
    List(Vec<Instance>),
    /// A discovery stream, taken by the first client built from the builder.
    Stream(Arc<Mutex<Option<ChangeStream>>>),
    /// A DNS name to follow.
    #[cfg(feature = "dns")]
    Dns(super::dns::DnsSource),
}

impl std::fmt::Debug for FleetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::List(list) => f.debug_tuple("List").field(list).finish(),
            Self::Stream(_) => f.write_str("Stream(..)"),
            #[cfg(feature = "dns")]
            Self::Dns(dns) => f.debug_tuple("Dns").field(dns).finish(),
        }
    }
}

impl FleetSource {
    /// The source's name, for `Debug` and logs.
    fn name(&self) -> String {
        match self {
            Self::List(list) => list
                .iter()
                .map(Instance::addr)
                .collect::<Vec<_>>()
                .join(","),
            Self::Stream(_) => "discovery".to_owned(),
            #[cfg(feature = "dns")]
            Self::Dns(dns) => format!("dns:{}", dns.target),
        }
    }
}

/// A client's transport over a fleet of endpoints: one connection pool per endpoint and a
/// balancer choosing among them (see [the module docs](crate::balance) for how). Built by
/// [`Client::fleet`](crate::Client::fleet) and
/// [`Client::discover`](crate::Client::discover); a client over it is a
/// `Client<F, Fleet>`.
pub struct Fleet {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.shared.name)
            .field("members", &lock(&self.shared.core).members())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(super) core: Mutex<Balancer<Pool>>,
    pub(super) pool_config: PoolConfig,
    dialer: Dialer,
    name: String,
    pub(super) closed: AtomicBool,
    /// Woken at each membership change (for `ready` waiting for a first endpoint).
    pub(super) changed: Arc<Notify>,
    /// Whether a first membership change was applied: until then a call waits for one
    /// (within its deadline) rather than fail for want of endpoints.
    listed: AtomicBool,
    discovery: Mutex<Option<JoinHandle<()>>>,
    /// Told when an endpoint's connects fail or a connection is lost, so that a source
    /// that can look again (DNS) does so at once.
    refresh: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A discovery stream that never yields would keep its task forever.
        if let Some(task) = lock(&self.discovery).take() {
            task.abort();
        }
    }
}

impl Fleet {
    /// The fleet over `source`, its pools configured by `pool`. Inside a tokio runtime.
    pub(crate) fn new(
        source: FleetSource,
        pool: PoolConfig,
        balance: BalanceConfig,
        dialer: Dialer,
    ) -> Result<Fleet, Error> {
        balance
            .check()
            .map_err(|e| Error::invalid(format!("invalid configuration: {e}")))?;
        // Every member keeps a connection open: its pool's connector then keeps trying
        // through its backoff while the endpoint is out (a pool only connects for callers,
        // and the balancer sends none to an endpoint in backoff, which would leave it out
        // for good), its health is known before a call needs it, and a new member is warm
        // when its first call comes.
        let mut pool = pool;
        pool.min_connections = pool.min_connections.max(1);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let shared = Arc::new(Shared {
            core: Mutex::new(Balancer::new(balance, seed)),
            pool_config: pool,
            dialer,
            name: source.name(),
            closed: AtomicBool::new(false),
            changed: Arc::new(Notify::new()),
            listed: AtomicBool::new(false),
            discovery: Mutex::new(None),
            refresh: Arc::new(Notify::new()),
        });
        match source {
            FleetSource::List(list) => {
                if list.is_empty() {
                    return Err(Error::invalid("a fleet needs at least one address"));
                }
                for instance in &list {
                    instance
                        .check()
                        .map_err(|e| Error::invalid(format!("invalid endpoint: {e}")))?;
                }
                apply(&shared, Change::Reset(list));
            }
            FleetSource::Stream(slot) => {
                let Some(stream) = lock(&slot).take() else {
                    return Err(Error::invalid(
                        "this discovery stream was already taken by another client",
                    ));
                };
                let task = tokio::spawn(discover(Arc::downgrade(&shared), stream));
                *lock(&shared.discovery) = Some(task);
            }
            #[cfg(feature = "dns")]
            FleetSource::Dns(dns) => {
                let follower = dns.follower()?;
                let task = tokio::spawn(super::dns::follow(
                    Arc::downgrade(&shared),
                    follower,
                    shared.refresh.clone(),
                ));
                *lock(&shared.discovery) = Some(task);
            }
        }
        Ok(Fleet { shared })
    }

    /// Picks an endpoint for an attempt, avoiding `tried`.
    pub(super) fn pick(
        &self,
        key: Option<u64>,
        tried: &Tried,
        now: Instant,
    ) -> Result<(Outstanding<'_>, Pool), Error> {
        let mut ids = [0u64; Tried::CAPACITY];
        let n = tried.read_into(&mut ids);
        let picked = lock(&self.shared.core).pick(key, &ids[..n], now);
        let Some(picked) = picked else {
            return Err(no_endpoints());
        };
        tried.push(picked.id);
        let guard = Outstanding {
            shared: &self.shared,
            id: picked.id,
            hint: picked.hint,
            start: now,
            done: false,
        };
        Ok((guard, picked.payload))
    }
}

impl Fleet {
    /// Waits until the first membership change is applied, at most until `deadline`.
    async fn first_list(&self, deadline: Instant) -> Result<(), ()> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.listed.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(());
            }
        }
    }
}

fn no_endpoints() -> Error {
    Error::new(ErrorKind::Connect, Processed::No)
        .with_phase(Phase::Connect)
        .with_context("the fleet has no endpoints")
}

/// Applies one membership change: new endpoints get their pool and watcher, drained ones
/// are closed.
pub(crate) fn apply(shared: &Arc<Shared>, change: Change) {
    let now = Instant::now();
    let applied = lock(&shared.core).apply(change, now, |instance| {
        let config = shared.pool_config.clone();
        match shared.dialer.pool(
            instance.addr().to_owned(),
            instance.server_name(),
            config.clone(),
        ) {
            Ok(pool) => pool,
            // A name TLS cannot verify (the settings themselves were checked when the
            // client was built): the endpoint's connects fail with the reason, so the
            // balancer ejects it; it is never reached in the clear.
            Err(err) => {
                Pool::with_connector(Unusable::new(instance.addr(), err.to_string()), config)
            }
        }
    });
    for why in applied.refused {
        tracing::warn!(%why, "endpoint change skipped");
    }
    for (id, pool) in applied.added {
        tokio::spawn(watch_pool(Arc::downgrade(shared), id, pool.watch_state()));
    }
    for pool in applied.closed {
        pool.close();
    }
    shared.listed.store(true, Ordering::Release);
    shared.changed.notify_waiters();
}

/// Applies a discovery stream's changes until it ends (the last set stays) or the fleet
/// is gone.
async fn discover(shared: Weak<Shared>, mut stream: ChangeStream) {
    loop {
        let next = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await;
        let Some(change) = next else {
            tracing::debug!("discovery stream ended; the fleet keeps its last set");
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        apply(&shared, change);
    }
}

/// Reports an endpoint pool's connects to the core: up, or each failed try (a backoff), or
/// down. Holds only the pool's state receiver, so that it never keeps the pool alive.
async fn watch_pool(shared: Weak<Shared>, id: EndpointId, mut states: watch::Receiver<PoolState>) {
    // Failed tries of the current series already counted; the watch may skip states, so
    // the count comes from the try numbers rather than from the changes seen.
    let mut counted = 0u32;
    let mut up = true;
    let mut connections = 0usize;
    loop {
        let mut lost = false;
        let report = match &*states.borrow_and_update() {
            PoolState::Closed { .. } => return,
            PoolState::Connected { connections: now } => {
                lost = *now < connections;
                connections = *now;
                counted = 0;
                (!up).then_some((Connectivity::Up, 0))
            }
            PoolState::Idle => {
                lost = connections > 0;
                connections = 0;
                counted = 0;
                (!up).then_some((Connectivity::Up, 0))
            }
            PoolState::Connecting { attempt } if *attempt <= 1 => {
                counted = 0;
                (!up).then_some((Connectivity::Up, 0))
            }
            PoolState::Connecting { .. } => None,
            PoolState::Reconnecting { attempt, .. } => {
                let failed = attempt.saturating_sub(1);
                let new = failed.saturating_sub(counted);
                counted = counted.max(failed);
                (new > 0 || up).then_some((Connectivity::Backoff, new.max(1)))
            }
            PoolState::Down { .. } => {
                let new = u32::from(up || counted == 0).max(1);
                counted = 0;
                Some((Connectivity::Down, new))
            }
            _ => None,
        };
        if !matches!(
            &*states.borrow(),
            PoolState::Connected { .. } | PoolState::Idle
        ) {
            lost |= connections > 0;
            connections = 0;
        }
        if report.is_some() || lost {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if let Some((state, failures)) = report {
                up = state == Connectivity::Up;
                lock(&shared.core).connectivity(id, state, failures, Instant::now());
                if !up {
                    shared.refresh.notify_one();
                }
            }
            if lost {
                shared.refresh.notify_one();
            }
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// An attempt outstanding at an endpoint: its outcome reaches the core exactly once, as
/// neutral if the call future is dropped before it ends.
pub(super) struct Outstanding<'a> {
    shared: &'a Shared,
    pub(super) id: EndpointId,
    hint: usize,
    start: Instant,
    done: bool,
}

impl Outstanding<'_> {
    pub(super) fn finish(&mut self, outcome: Outcome, latency: Option<Duration>, now: Instant) {
        self.done = true;
        let drained = lock(&self.shared.core).finish(self.id, self.hint, outcome, latency, now);
        if let Some(pool) = drained {
            pool.close();
        }
    }

    /// What an attempt's result says of the endpoint, and the latency it shows.
    fn judge(&mut self, result: &Result<RawResponse, Error>) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let (outcome, latency) = match result {
            Ok(_) => (Outcome::Success, Some(elapsed)),
            Err(e) => match e.kind() {
                ErrorKind::Remote => match e.code() {
                    Some(ErrorCode::UNAVAILABLE | ErrorCode::INTERNAL) => {
                        (Outcome::Failure, Some(elapsed))
                    }
                    // Busy, not broken: its latency speaks for it.
                    Some(ErrorCode::OVERLOADED) => (Outcome::Neutral, Some(elapsed)),
                    // The application's answer: the endpoint works.
                    _ => (Outcome::Success, Some(elapsed)),
                },
                // The server's ERROR 4 is an answer too.
                ErrorKind::Timeout if e.remote().is_some() => (Outcome::Success, Some(elapsed)),
                ErrorKind::Timeout => match e.timeout_phase() {
                    // The client's own queues: nothing to do with the endpoint.
                    Some(Phase::Queue | Phase::Pool | Phase::Total) => (Outcome::Neutral, None),
                    Some(Phase::Connect) => (Outcome::Failure, None),
                    // No answer in time: slow at least this much (the peak takes it).
                    _ => (Outcome::Failure, Some(elapsed)),
                },
                ErrorKind::Connect | ErrorKind::ConnectionLost | ErrorKind::Protocol => {
                    (Outcome::Failure, None)
                }
                _ => (Outcome::Neutral, None),
            },
        };
        self.finish(outcome, latency, now);
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::Neutral, None, Instant::now());
        }
    }
}

/// Whether a failed attempt left its request unprocessed for a reason that is the
/// endpoint's (a refused connect, GOAWAY, ERROR 6), so another endpoint may take it now,
/// within the same attempt.
fn moves_elsewhere(err: &Error) -> bool {
    !err.maybe_processed()
        && (matches!(err.kind(), ErrorKind::Connect)
            || err.timeout_phase() == Some(Phase::Connect)
            || err.code() == Some(ErrorCode::UNAVAILABLE)
            || err.wants_other_connection())
}

impl Transport for Fleet {
    async fn call(&self, attempt: Attempt<'_>) -> Result<RawResponse, Error> {
        let options = CallDeadline::deadline(attempt.deadline);
        let mut moves = 0;
        let mut now = attempt.started;
        loop {
            let picked = self.pick(attempt.hash_key, attempt.tried, now);
            let (mut outstanding, pool) = match picked {
                Ok(picked) => picked,
                Err(e) if !self.shared.listed.load(Ordering::Acquire) => {
                    // The discovery source has not spoken yet: wait for its first list.
                    self.first_list(attempt.deadline).await.map_err(|()| e)?;
                    now = Instant::now();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let reply = pool
                .call(
                    attempt.method,
                    attempt.format.get(),
                    &attempt.meta,
                    &attempt.body,
                    options,
                )
                .await;
            let result = response_of(reply);
            outstanding.judge(&result);
            match result {
                Err(e)
                    if moves_elsewhere(&e)
                        && moves < MAX_MOVES
                        && Instant::now() < attempt.deadline =>
                {
                    tracing::debug!(error = %e, "refused unprocessed; trying another endpoint");
                    moves += 1;
                    now = Instant::now();
                }
                result => return result,
            }
        }
    }

    async fn notify(
        &self,
        topic: &str,
        format: FormatId,
        meta: Meta,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(), Error> {
        let tried = Tried::default();
        let (mut outstanding, pool) = self.pick(None, &tried, Instant::now())?;
        let sent = pool.notify(topic, format.get(), &meta, &body);
        let result = match tokio::time::timeout_at(deadline, sent).await {
            Ok(result) => result.map_err(Error::from_transport),
            Err(_) => Err(Error::timeout(Phase::Write, Processed::No)),
        };
        let outcome = match &result {
            Ok(()) => Outcome::Success,
            Err(e) if matches!(e.kind(), ErrorKind::Connect | ErrorKind::ConnectionLost) => {
                Outcome::Failure
            }
            Err(_) => Outcome::Neutral,
        };
        outstanding.finish(outcome, None, Instant::now());
        result
    }

    async fn subscribe(&self, pattern: &str, deadline: Instant) -> Result<RawPushStream, Error> {
        let (first_tx, first_rx) = oneshot::channel();
        let queue = self.shared.pool_config.connection.push_queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(follow::follow(
            Arc::downgrade(&self.shared),
            pattern.to_owned(),
            deadline,
            first_tx,
            tx,
        ));
        follow::first_outcome(deadline, first_rx, rx).await
    }

    async fn subscribe_all(
        &self,
        pattern: &str,
        deadline: Instant,
    ) -> Result<RawPushStream, Error> {
        let (first_tx, first_rx) = oneshot::channel();
        let queue = self.shared.pool_config.connection.push_queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(follow::follow_all(
            Arc::downgrade(&self.shared),
            pattern.to_owned(),
            first_tx,
            tx,
        ));
        follow::first_outcome(deadline, first_rx, rx).await
    }

    async fn ready(&self, deadline: Instant, fail_fast: bool) -> Result<(), Error> {
        let options = CallDeadline::deadline(deadline);
        loop {
            let changed = self.shared.changed.notified();
            let members = lock(&self.shared.core).all_members();
            if members.is_empty() {
                // A discovery source that has not spoken yet: wait for it, within the
                // deadline.
                if fail_fast && lock(&self.shared.discovery).is_none() {
                    return Err(no_endpoints());
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return Err(no_endpoints()
                        .with_context("the fleet had no endpoints before the deadline"));
                }
                continue;
            }
            // Ready as soon as one endpoint is; failed only when all are.
            let mut tries = JoinSet::new();
            for (_, pool) in members {
                tries.spawn(async move {
                    if fail_fast {
                        pool.ready_or_fail(options).await
                    } else {
                        pool.ready(options).await
                    }
                });
            }
            let mut last = None;
            while let Some(done) = tries.join_next().await {
                match done {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => last = Some(Error::from_transport(e)),
                    Err(_) => {}
                }
            }
            return Err(last.unwrap_or_else(no_endpoints));
        }
    }

    async fn close(&self) {
        self.close_now();
        let pools = lock(&self.shared.core).payloads();
        for pool in pools {
            if !pool.join(JOIN_TIMEOUT).await {
                tracing::warn!(
                    endpoint = pool.endpoint(),
                    "pool tasks still running after close"
                );
            }
        }
    }

    fn close_now(&self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(task) = lock(&self.shared.discovery).take() {
            task.abort();
        }
        for pool in lock(&self.shared.core).payloads() {
            pool.close();
        }
        self.shared.changed.notify_waiters();
    }

    fn stats(&self) -> Stats {
        let (pools, endpoints) = {
            let core = lock(&self.shared.core);
            (core.payloads(), core.snapshot(Instant::now()))
        };
        let mut stats = Stats {
            endpoints,
            ..Stats::default()
        };
        for pool in pools {
            let s = pool.stats();
            stats.connections = ConnectionCounts {
                connecting: stats.connections.connecting + s.connecting,
                ready: stats.connections.ready + s.open,
                draining: stats.connections.draining + s.draining,
            };
            stats.reconnects += s.reconnects;
        }
        stats
    }

    fn endpoint(&self) -> &str {
        &self.shared.name
    }
}

/// A connector for an endpoint that cannot be reached safely: every connect fails, saying why.
#[derive(Debug)]
struct Unusable {
    addr: String,
    why: String,
}

impl Unusable {
    fn new(addr: &str, why: String) -> Self {
        Unusable {
            addr: addr.to_owned(),
            why,
        }
    }
}

impl mcp_transport::Connect for Unusable {
    type Io = tokio::net::TcpStream;

    async fn connect(&self, _: Duration) -> Result<Self::Io, mcp_transport::TransportError> {
        Err(mcp_transport::TransportError::connect_refused(
            self.why.clone(),
        ))
    }

    fn endpoint(&self) -> &str {
        &self.addr
    }
}
