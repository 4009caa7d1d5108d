//! The seam between the call path and the network: the [`Transport`] trait, and its one
//! production implementation, the transport's [`Pool`].
//!
//! The call path above it (policies, metadata, decoding) is written against the trait, so
//! its unit tests drive it with a scripted transport in virtual time, without sockets; that
//! fake lives with those tests (`client/tests/`), not here. `Client` is generic over the
//! transport with the pool as the default, so production code is statically dispatched:
//! no box, no vtable, no allocation per call.
//!
//! The trait is `pub` inside this private module so that it can bound `Client`'s public
//! methods; it cannot be named, hence not implemented, outside the crate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use futures_core::Stream;
use mcp_format::FormatId;
use mcp_transport::{Answer, CallDeadline as TransportOptions, Meta, Pool, PoolConfig};
use tokio::time::Instant;

use crate::balance::{BalanceConfig, EndpointSnapshot, Fleet, FleetSource};
use crate::client::{RawPush, RawResponse};
use crate::error::{Error, Phase, Processed};
use crate::metrics::ConnectionCounts;

/// How long `close` waits for the transport's tasks to end once told to.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One attempt of a call, as handed to the transport.
pub struct Attempt<'a> {
    pub(crate) method: &'a str,
    pub(crate) format: FormatId,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
    pub(crate) deadline: Instant,
    /// When the attempt started (the stack's own clock read, which a fleet's pick and its
    /// latency measure use rather than reading the clock again).
    pub(crate) started: Instant,
    /// The previous attempt failed in a way tied to its connection (ERROR 6, GOAWAY). The
    /// pool never hands out a draining connection, so it needs no hint; scripted transports
    /// check that the policy sets it.
    #[cfg_attr(not(all(test, feature = "json")), allow(dead_code))]
    pub(crate) other_connection: bool,
    /// The endpoints this call's earlier attempts went to, so that a fleet sends a retry
    /// elsewhere (one endpoint ignores it).
    pub(crate) tried: &'a Tried,
    /// The call's affinity key ([`CallOptions::hash_key`](crate::CallOptions::hash_key)).
    pub(crate) hash_key: Option<u64>,
}

/// The endpoints one call has tried: the last [`Tried::CAPACITY`], as fleet endpoint ids
/// (never 0). Atomics rather than a `Vec` behind a lock: it lives in every call's future,
/// also for a single endpoint, so it must cost nothing to make and stay small; attempts are
/// sequential, so relaxed ordering is enough.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    ids: [AtomicU64; Tried::CAPACITY],
    next: AtomicUsize,
}

impl Tried {
    /// Enough for the default retry schedule (4 attempts) and a refusal or two.
    pub(crate) const CAPACITY: usize = 6;

    /// Records an endpoint as tried (the oldest is forgotten past the capacity).
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn push(&self, id: u64) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.ids[n % Self::CAPACITY].store(id, Ordering::Relaxed);
    }

    /// The endpoints tried, into `out`; returns how many.
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn read_into(&self, out: &mut [u64; Tried::CAPACITY]) -> usize {
        let mut n = 0;
        for id in &self.ids {
            let id = id.load(Ordering::Relaxed);
            if id != 0 {
                out[n] = id;
                n += 1;
            }
        }
        n
    }
}

impl fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("method", &self.method)
            .field("format", &self.format)
            .field("deadline", &self.deadline)
            .field("other_connection", &self.other_connection)
            .field("hash_key", &self.hash_key)
            .finish_non_exhaustive()
    }
}

/// A stream of pushes for one subscription.
/// Pushes, then at most one `Err` as the last item: why the subscription ended early (the
/// server refused to subscribe again after a reconnect, or did not answer).
pub(crate) type RawPushStream = Pin<Box<dyn Stream<Item = Result<RawPush, Error>> + Send>>;

/// The transport's counters the client's metrics report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub(crate) connections: ConnectionCounts,
    pub(crate) reconnects: u64,
    /// Per endpoint, for a fleet (empty for one endpoint).
    pub(crate) endpoints: Vec<EndpointSnapshot>,
}

/// Where a client's attempts, notifications and subscriptions go: what the facade uses of
/// the network. Errors come already folded into the facade's [`Error`].
pub trait Transport: Send + Sync + 'static {
    /// Sends one attempt of a call and waits for its answer, until `attempt.deadline`.
    fn call<'a>(
        &'a self,
        attempt: Attempt<'a>,
    ) -> impl Future<Output = Result<RawResponse, Error>> + Send + 'a;

    /// Sends a one-way message, giving up at `deadline`.
    fn notify<'a>(
        &'a self,
        topic: &'a str,
        format: FormatId,
        meta: Meta,
        body: Bytes,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;

    /// Subscribes to `pattern`, giving up at `deadline`.
    fn subscribe<'a>(
        &'a self,
        pattern: &'a str,
        deadline: Instant,
    ) -> impl Future<Output = Result<RawPushStream, Error>> + Send + 'a;

    /// Subscribes to `pattern` on every endpoint, their pushes merged, giving up at
    /// `deadline` (a transport of one endpoint: [`Transport::subscribe`]).
    fn subscribe_all<'a>(
        &'a self,
        pattern: &'a str,
        deadline: Instant,
    ) -> impl Future<Output = Result<RawPushStream, Error>> + Send + 'a {
        self.subscribe(pattern, deadline)
    }

    /// Waits until a call could be sent (a connection is open), at most until `deadline`;
    /// with `fail_fast`, fails at the first failed connect try instead.
    fn ready(
        &self,
        deadline: Instant,
        fail_fast: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_;

    /// Closes, and waits a little for background work to end.
    fn close(&self) -> impl Future<Output = ()> + Send + '_;

    /// Closes without waiting.
    fn close_now(&self);

    /// The counters for the metrics.
    fn stats(&self) -> Stats;

    /// Where the transport goes, for `Debug`.
    fn endpoint(&self) -> &str;
}

/// A transport a [`ClientBuilder`](crate::ClientBuilder) makes: what the builder keeps of
/// where calls go, and how the transport is built from it and the builder's settings.
pub trait Target: Transport + Sized {
    /// Where calls go, as the builder keeps it.
    type Source: Clone + fmt::Debug + Send + Sync + 'static;

    /// The transport (inside a tokio runtime), or why the settings cannot work.
    fn make(
        source: Self::Source,
        pool: &PoolConfig,
        balance: &BalanceConfig,
        dialer: &Dialer,
    ) -> Result<Self, Error>;
}

/// How a transport's pools reach an address: TCP, or TLS when the builder was given it.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
    pub(crate) tls: Option<mcp_transport::TlsClientConfig>,
}

impl Dialer {
    /// A pool of `addr`. Over TLS the server is verified as the TLS settings' server name,
    /// else as `name` (the host name discovery found the address under), else as `addr`'s
    /// host: never plaintext when TLS was asked for.
    pub(crate) fn pool(
        &self,
        addr: String,
        name: Option<&str>,
        config: PoolConfig,
    ) -> Result<Pool, Error> {
        #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
        if let Some(tls) = &self.tls {
            let connect = mcp_transport::TlsConnect::named(addr, tls, name).map_err(|e| {
                Error::invalid(format!("invalid TLS configuration: {e}")).with_source(e)
            })?;
            let pool = Pool::with_connector(connect, config);
            crate::metrics::watch_pool(&pool);
            return Ok(pool);
        }
        let _ = name;
        let pool = Pool::new(addr, config);
        // Every pool, of one endpoint or of a fleet's, is made here: its connections and
        // reconnects go to the `metrics` facade (nothing without the feature).
        crate::metrics::watch_pool(&pool);
        Ok(pool)
    }
}

impl Target for Pool {
    type Source = String;

    fn make(
        addr: String,
        pool: &PoolConfig,
        _: &BalanceConfig,
        dialer: &Dialer,
    ) -> Result<Self, Error> {
        dialer.pool(addr, None, pool.clone())
    }
}

impl Target for Fleet {
    type Source = FleetSource;

    fn make(
        source: FleetSource,
        pool: &PoolConfig,
        balance: &BalanceConfig,
        dialer: &Dialer,
    ) -> Result<Self, Error> {
        Fleet::new(source, pool.clone(), balance.clone(), dialer.clone())
    }
}

impl Transport for Pool {
    async fn call(&self, attempt: Attempt<'_>) -> Result<RawResponse, Error> {
        let options = TransportOptions::deadline(attempt.deadline);
        let reply = Pool::call(
            self,
            attempt.method,
            attempt.format.get(),
            &attempt.meta,
            &attempt.body,
            options,
        )
        .await;
        response_of(reply)
    }

    async fn notify(
        &self,
        topic: &str,
        format: FormatId,
        meta: Meta,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(), Error> {
        let sent = Pool::notify(self, topic, format.get(), &meta, &body);
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(result) => result.map_err(Error::from_transport),
            Err(_) => Err(Error::timeout(Phase::Write, Processed::No)),
        }
    }

    async fn subscribe(&self, pattern: &str, deadline: Instant) -> Result<RawPushStream, Error> {
        // The pool bounds the `$subscribe` call with its default timeout, which the builder
        // keeps equal to the client's total budget; this bounds it as well.
        let sub = tokio::time::timeout_at(deadline, Pool::subscribe(self, pattern))
            .await
            .map_err(|_| Error::timeout(Phase::Response, Processed::Maybe))?
            .map_err(Error::from_transport)?;
        Ok(Box::pin(ToRawPush::new(sub)))
    }

    async fn ready(&self, deadline: Instant, fail_fast: bool) -> Result<(), Error> {
        let options = TransportOptions::deadline(deadline);
        let ready = if fail_fast {
            Pool::ready_or_fail(self, options).await
        } else {
            Pool::ready(self, options).await
        };
        ready.map_err(Error::from_transport)
    }

    async fn close(&self) {
        // Connections close (pending calls fail as closed), subscription streams end; then
        // wait a little for the background tasks to be gone.
        Pool::close(self);
        if !self.join(JOIN_TIMEOUT).await {
            tracing::warn!("transport tasks still running after close");
        }
    }

    fn close_now(&self) {
        Pool::close(self);
    }

    fn stats(&self) -> Stats {
        let stats = Pool::stats(self);
        Stats {
            connections: ConnectionCounts {
                connecting: stats.connecting,
                ready: stats.open,
                draining: stats.draining,
            },
            reconnects: stats.reconnects,
            endpoints: Vec::new(),
        }
    }

    fn endpoint(&self) -> &str {
        Pool::endpoint(self)
    }
}

/// The facade's view of a transport's answer.
pub(crate) fn response_of(
    reply: Result<Answer, mcp_transport::TransportError>,
) -> Result<RawResponse, Error> {
    match reply.map_err(Error::from_transport)? {
        Answer::Response(r) => Ok(RawResponse {
            format: FormatId::new(r.format()),
            meta: r.meta().clone(),
            body: r.into_body(),
        }),
        Answer::Error(e) => Err(Error::from_remote(e)),
    }
}

/// Maps the transport's pushes to the facade's; when the transport's stream ends with a
/// reason ([`mcp_transport::PushStream::error`]), that reason is the last item.
pub(crate) struct ToRawPush {
    sub: mcp_transport::PushStream,
    ended: bool,
}

impl ToRawPush {
    pub(crate) fn new(sub: mcp_transport::PushStream) -> Self {
        Self { sub, ended: false }
    }
}

impl Stream for ToRawPush {
    type Item = Result<RawPush, Error>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        Pin::new(&mut self.sub)
            .poll_next(cx)
            .map(|push| match push {
                Some(p) => Some(Ok(RawPush {
                    format: FormatId::new(p.format()),
                    topic: p.topic().to_owned(),
                    meta: p.meta().clone(),
                    body: p.into_body(),
                })),
                None => {
                    self.ended = true;
                    self.sub.error().map(|e| Err(Error::from_transport(e)))
                }
            })
    }
}
