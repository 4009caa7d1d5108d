//! The server: its builder, the accept loop, and the handle that publishes and shuts down.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mcp_codec::{Envelope, Flags, MessageFrames, Metadata, Notify, OwnedMetaPair};
use mcp_format::{Encode, FormatId};
use mcp_transport::proto::SharedBudget;
use mcp_transport::{Accept, Stream, TcpAccept};
use mcp_transport::{Role, WireConfig, WireWriter};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::conn;
use crate::error::{Error, Status};
use crate::handler::{Handler, NotifyContext, NotifyHandler, Reply, RequestContext};
use crate::router::Router;
use crate::subscribe::{Notification, Published, Registry};

/// Counters shared by the connections of one server.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) heartbeat_timeouts: AtomicU64,
    pub(crate) notifies_unrouted: AtomicU64,
    pub(crate) notifies_dropped: AtomicU64,
    pub(crate) published_dropped: AtomicU64,
    pub(crate) auth_refused: AtomicU64,
}

/// What the accept loop and every connection share.
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) config: ServerConfig,
    pub(crate) registry: Registry<WireWriter>,
    pub(crate) stats: Counters,
    /// `Some(end of grace)` once shutdown started.
    pub(crate) shutdown: watch::Sender<Option<Instant>>,
    /// Connections open.
    open: watch::Sender<usize>,
    next_conn: AtomicU64,
    pub(crate) health: crate::health::Health,
    /// Connections open per IP address, when `max_connections_per_ip` is set.
    per_ip: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    /// Asked about every request and client NOTIFY before routing, if set.
    pub(crate) authenticator: Option<Authenticator>,
    /// Requests and request bytes in flight in the whole server
    /// (`max_in_flight_total`, `max_in_flight_bytes_total`).
    pub(crate) budget: SharedBudget,
    /// The handles of the `metrics` facade (nothing without the feature).
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Shared {
    pub(crate) fn wire_config(&self) -> WireConfig {
        let mut wire = WireConfig::new(Role::Server);
        wire.max_message_len = self.config.max_message_len;
        wire.write_stall_timeout = self.config.write_stall_timeout;
        wire.write_queue_limit = self.config.write_queue_limit;
        wire
    }
}

/// Counts a connection as open (in all, and for its IP address) for as long as it lives.
struct OpenGuard(Arc<Shared>, IpAddr);

impl OpenGuard {
    /// Counts `ip`'s new connection, or `None` if the per-IP limit is reached.
    fn new(shared: Arc<Shared>, ip: IpAddr) -> Option<Self> {
        if let Some(limit) = shared.config.max_connections_per_ip {
            let mut per_ip = shared.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= limit {
                return None;
            }
            *count += 1;
        }
        shared.open.send_modify(|n| *n += 1);
        shared.metrics.connection(1);
        Some(OpenGuard(shared, ip))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
        self.0.metrics.connection(-1);
        if self.0.config.max_connections_per_ip.is_some() {
            let mut per_ip = self.0.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&self.1) {
                *count -= 1;
                // The table holds only addresses with a connection open: it cannot grow
                // past the connections open.
                if *count == 0 {
                    per_ip.remove(&self.1);
                }
            }
        }
    }
}

/// Counters of a running server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: usize,
    /// Connections accepted since the start (refused ones included).
    pub accepted_connections: u64,
    /// Connections refused with GOAWAY because `max_connections` were open (or
    /// `max_connections_per_ip` from the same address).
    pub refused_connections: u64,
    /// Requests whose handler was started.
    pub requests: u64,
    /// Connections closed because the client broke the protocol.
    pub protocol_errors: u64,
    /// Connections closed by the heartbeat (no sign of life).
    pub heartbeat_timeouts: u64,
    /// NOTIFY messages from clients to a topic without a route (dropped).
    pub notifies_unrouted: u64,
    /// NOTIFY messages from clients dropped because too many were being handled.
    pub notifies_dropped: u64,
    /// Published NOTIFY frames not delivered to a subscriber whose queue was full.
    pub published_dropped: u64,
    /// Requests and client NOTIFY messages the authentication hook refused.
    pub auth_refused: u64,
    /// Requests whose handler runs now, all connections together (what
    /// `max_in_flight_total` bounds).
    pub requests_in_flight: usize,
    /// Request body bytes their handlers hold now (what `max_in_flight_bytes_total`
    /// bounds).
    pub in_flight_bytes: usize,
}

/// The entry point: `Server::builder()`.
#[derive(Debug)]
pub struct Server {
    _private: (),
}

impl Server {
    /// A builder with no routes and the default [`ServerConfig`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            router: Router::new(),
            config: ServerConfig::default(),
            authenticator: None,
        }
    }
}

/// Configures routes and limits, then binds.
#[derive(Debug)]
pub struct ServerBuilder {
    router: Router,
    config: ServerConfig,
    authenticator: Option<Authenticator>,
}

impl ServerBuilder {
    /// Routes `method` to a [`Handler`]; see [`Router::route`].
    pub fn route(mut self, method: &str, handler: impl Handler) -> Self {
        self.router = self.router.route(method, handler);
        self
    }

    /// Routes `method` to an async closure over raw bodies; see [`Router::route_raw`].
    pub fn route_raw<F, Fut>(mut self, method: &str, f: F) -> Self
    where
        F: Fn(RequestContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
    {
        self.router = self.router.route_raw(method, f);
        self
    }

    /// Routes `method` to a typed async function; see [`Router::route_typed`].
    pub fn route_typed<F, Req, Resp, Func, Fut>(mut self, method: &str, format: F, f: Func) -> Self
    where
        F: mcp_format::Decode<Req> + Encode<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        Func: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        self.router = self.router.route_typed(method, format, f);
        self
    }

    /// Routes client NOTIFY messages to a handler; see [`Router::route_notify`].
    pub fn route_notify(mut self, pattern: &str, handler: impl NotifyHandler) -> Self {
        self.router = self.router.route_notify(pattern, handler);
        self
    }

    /// Routes client NOTIFY messages to an async closure; see [`Router::route_notify`].
    pub fn route_notify_fn<F, Fut>(mut self, pattern: &str, f: F) -> Self
    where
        F: Fn(NotifyContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.router = self.router.route_notify_fn(pattern, f);
        self
    }

    /// Asks `hook` about every request and client NOTIFY before routing it, with its
    /// metadata (the `authorization` entry), the peer's address and its TLS certificate; an
    /// `Err` is the answer (use [`Status::unauthenticated`] or [`Status::permission_denied`])
    /// and no handler runs. See [`AuthRequest`](crate::AuthRequest).
    ///
    /// The hook runs on the connection's task for every request: it must not block (check a
    /// signature or look a token up in memory; refresh what it knows elsewhere).
    pub fn authenticate<F>(mut self, hook: F) -> Self
    where
        F: Fn(&crate::AuthRequest<'_>) -> Result<(), Status> + Send + Sync + 'static,
    {
        self.authenticator = Some(Authenticator::new(hook));
        self
    }

    /// Replaces the routing table with `router`.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Replaces every setting with `config`.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The largest request or NOTIFY body (default 16 MiB).
    pub fn max_message_len(mut self, bytes: usize) -> Self {
        self.config.max_message_len = bytes;
        self
    }

    /// Requests in flight per connection (default 1024).
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.config.max_in_flight = requests;
        self
    }

    /// Requests in flight in the whole server (default 65,536); see
    /// [`ServerConfig::max_in_flight_total`].
    pub fn max_in_flight_total(mut self, requests: usize) -> Self {
        self.config.max_in_flight_total = requests;
        self
    }

    /// Request body bytes in flight in the whole server (default 1 GiB); see
    /// [`ServerConfig::max_in_flight_bytes_total`].
    pub fn max_in_flight_bytes_total(mut self, bytes: usize) -> Self {
        self.config.max_in_flight_bytes_total = bytes;
        self
    }

    /// Heartbeat interval and timeout (default 15 s and 5 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Whether handlers get their first poll in the connection's task (default true); see
    /// [`ServerConfig::run_handlers_inline`].
    pub fn run_handlers_inline(mut self, inline: bool) -> Self {
        self.config.run_handlers_inline = inline;
        self
    }

    /// Bytes queued per connection before the server holds back (default 1 MiB).
    pub fn write_queue_limit(mut self, bytes: usize) -> Self {
        self.config.write_queue_limit = bytes;
        self
    }

    /// Connections open at once from one IP address (default: no limit); see
    /// [`ServerConfig::max_connections_per_ip`].
    pub fn max_connections_per_ip(mut self, connections: usize) -> Self {
        self.config.max_connections_per_ip = Some(connections);
        self
    }

    /// Sends a connection away (GOAWAY code 0) when it is `age` old, give or take 10%
    /// (default: never); see [`ServerConfig::max_connection_age`].
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.config.max_connection_age = Some(age);
        self
    }

    /// How long a new connection may take to complete its first frame (default 10 s); see
    /// [`ServerConfig::first_frame_timeout`].
    pub fn first_frame_timeout(mut self, timeout: Duration) -> Self {
        self.config.first_frame_timeout = timeout;
        self
    }

    /// Connections open at once (default 10,000); see [`ServerConfig::max_connections`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// Write stall timeout (default 5 s).
    pub fn write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_stall_timeout = timeout;
        self
    }

    /// Binds a TCP listener on `addr` (e.g. `"127.0.0.1:0"`) and starts serving on the
    /// current tokio runtime.
    pub async fn bind(
        self,
        addr: impl ToSocketAddrs + fmt::Display,
    ) -> Result<ServerHandle, Error> {
        self.config.check().map_err(Error::Config)?;
        let shown = addr.to_string();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                addr: shown,
                source,
            })?;
        self.serve_with_listener(listener)
    }

    /// Starts serving connections accepted from `listener` on the current tokio runtime.
    pub fn serve_with_listener(self, listener: TcpListener) -> Result<ServerHandle, Error> {
        self.serve_with(TcpAccept::new(listener))
    }

    /// Starts serving the streams `acceptor` takes (TCP, TLS, in-memory) on the current
    /// tokio runtime.
    pub fn serve_with<A: Accept>(self, acceptor: A) -> Result<ServerHandle, Error> {
        self.config.check().map_err(Error::Config)?;
        let local_addr = acceptor.local_addr().map_err(Error::Listener)?;
        let (shutdown, _) = watch::channel(None);
        let (open, _) = watch::channel(0);
        let budget = SharedBudget::new(
            self.config.max_in_flight_total,
            self.config.max_in_flight_bytes_total,
        );
        let shared = Arc::new(Shared {
            budget,
            router: self.router,
            config: self.config,
            registry: Registry::default(),
            stats: Counters::default(),
            shutdown,
            open,
            next_conn: AtomicU64::new(1),
            health: crate::health::Health::default(),
            per_ip: std::sync::Mutex::default(),
            authenticator: self.authenticator,
            metrics: crate::metrics::Metrics::new(local_addr),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), acceptor));
        Ok(ServerHandle {
            inner: Arc::new(HandleInner {
                shared,
                local_addr,
                accept: std::sync::Mutex::new(Some(accept)),
            }),
        })
    }
}

/// Tells a client past the connection limit to go away (GOAWAY code 2, `last_id` 0: no
/// request was taken), then closes. Best effort, bounded by the write stall timeout.
async fn refuse<S: Stream>(mut stream: S, stall: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut frame = Vec::new();
    let goaway = Envelope::GoAway(mcp_codec::GoAway {
        last_id: 0,
        code: mcp_codec::GoAwayCode::OVERLOADED,
        reason: "too many connections",
    });
    if goaway.encode_to_vec(&mut frame).is_ok() {
        let _ = tokio::time::timeout(stall, async {
            stream.write_all(&frame).await?;
            stream.shutdown().await
        })
        .await;
    }
}

/// The accept loop's wait after a failed accept: 5 ms, doubling to 1 s, back to the start
/// after an accept that succeeds. An accept fails for long when the process or the system
/// is out of something (EMFILE, ENFILE, ENOBUFS, ENOMEM): retrying at once would spin on a
/// core until a connection closes; a fixed wait would either spin slowly or leave clients
/// waiting long after the shortage ended.
#[derive(Debug)]
struct AcceptBackoff {
    /// Accepts failed in a row.
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The wait after one more failure.
    fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        (Self::FIRST * (1 << doublings)).min(Self::MAX)
    }
}

/// Whether an accept error is about the one connection being accepted (it went away before
/// it was taken), so that the next can be taken at once.
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

async fn accept_loop<A: Accept>(shared: Arc<Shared>, mut acceptor: A) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = AcceptBackoff { failures: 0 };
    loop {
        if shutdown.borrow_and_update().is_some() {
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            accepted = acceptor.accept() => match accepted {
                Ok((stream, peer)) => {
                    if backoff.failures > 0 {
                        tracing::info!(failures = backoff.failures, "accepting again");
                        backoff.failures = 0;
                    }
                    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if *shared.open.borrow() >= shared.config.max_connections {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        shared.metrics.connection_refused();
                        tokio::spawn(refuse(stream, shared.config.write_stall_timeout));
                        continue;
                    }
                    let Some(guard) = OpenGuard::new(shared.clone(), peer.ip()) else {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        shared.metrics.connection_refused();
                        tokio::spawn(refuse(stream, shared.config.write_stall_timeout));
                        continue;
                    };
                    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        conn::serve(shared, stream, peer, id).await;
                    });
                }
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(error = %err, "a connection went away before it was accepted");
                }
                Err(err) => {
                    // Out of file descriptors and the like: the listener itself is fine,
                    // so wait, longer each time, instead of spinning or giving up. The
                    // connections open are served meanwhile (their tasks do not wait for
                    // this one). Logged at the 1st, 2nd, 4th, 8th... failure in a row.
                    let wait = backoff.fail();
                    if backoff.failures.is_power_of_two() {
                        tracing::warn!(error = %err, failures = backoff.failures, ?wait, "accept failed; waiting before the next");
                    }
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            },
        }
    }
    // The acceptor is dropped here: new connections are refused from now on.
}

/// Checks that a NOTIFY can be sent (a valid topic and metadata, a body within `limit`), so
/// that a writer it is offered to can only fail by closing.
pub(crate) fn check_notification(notification: &Notification, limit: usize) -> Result<(), Error> {
    if notification.body.len() > limit {
        return Err(Error::Publish(mcp_codec::Error::MessageTooLarge {
            len: notification.body.len(),
            limit,
        }));
    }
    MessageFrames::new(Envelope::Notify(Notify {
        flags: Flags::NONE,
        format: notification.format,
        topic: &notification.topic,
        meta: Metadata::from_owned(&notification.meta),
        body: &notification.body,
    }))
    .map_err(Error::Publish)?;
    Ok(())
}

struct HandleInner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// A running server: its address, the publish API, and shutdown. Cheap to clone.
///
/// Dropping every handle leaves the server running until the runtime ends; call
/// [`ServerHandle::shutdown`] to stop it.
#[derive(Clone)]
pub struct ServerHandle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.inner.local_addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Pushes a NOTIFY to `topic` to every connection subscribed to it (exactly, or by a
    /// `prefix*` pattern), once per connection however many of its subscriptions match.
    ///
    /// Never waits: a subscriber whose outbound queue is full misses this message, counted
    /// in [`Published::dropped`] and [`ServerStats::published_dropped`].
    pub fn publish(
        &self,
        topic: &str,
        format: FormatId,
        body: impl Into<Bytes>,
    ) -> Result<Published, Error> {
        self.publish_with_meta(topic, format, Vec::new(), body)
    }

    /// [`ServerHandle::publish`] with metadata entries.
    pub fn publish_with_meta(
        &self,
        topic: &str,
        format: FormatId,
        meta: Vec<OwnedMetaPair>,
        body: impl Into<Bytes>,
    ) -> Result<Published, Error> {
        let notification = Notification {
            topic: topic.into(),
            format: format.get(),
            meta,
            body: body.into(),
        };
        // Validate once here, so that every subscriber's writer can only fail by closing.
        check_notification(&notification, self.inner.shared.config.max_message_len)?;
        let published = self.inner.shared.registry.publish(&notification);
        self.inner
            .shared
            .stats
            .published_dropped
            .fetch_add(published.dropped as u64, Ordering::Relaxed);
        Ok(published)
    }

    /// Encodes `value` with `format` and publishes it; see [`ServerHandle::publish`].
    pub fn publish_typed<T: ?Sized, F: Encode<T>>(
        &self,
        topic: &str,
        format: &F,
        value: &T,
    ) -> Result<Published, Error> {
        let body = format
            .encode_to_bytes(value, &mut BytesMut::new())
            .map_err(Error::Encode)?;
        self.publish(topic, format.id(), body)
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        let shared = &self.inner.shared;
        let stats = &shared.stats;
        ServerStats {
            open_connections: *shared.open.borrow(),
            accepted_connections: stats.accepted.load(Ordering::Relaxed),
            refused_connections: stats.refused.load(Ordering::Relaxed),
            requests: stats.requests.load(Ordering::Relaxed),
            protocol_errors: stats.protocol_errors.load(Ordering::Relaxed),
            heartbeat_timeouts: stats.heartbeat_timeouts.load(Ordering::Relaxed),
            notifies_unrouted: stats.notifies_unrouted.load(Ordering::Relaxed),
            notifies_dropped: stats.notifies_dropped.load(Ordering::Relaxed),
            published_dropped: stats.published_dropped.load(Ordering::Relaxed),
            auth_refused: stats.auth_refused.load(Ordering::Relaxed),
            requests_in_flight: shared.budget.requests(),
            in_flight_bytes: shared.budget.bytes(),
        }
    }

    /// Sets whether `service` serves, as `$health` answers it (docs/protocol.md section 7),
    /// and pushes the change to its subscribers (`$health.<service>`). A service is
    /// `SERVICE_UNKNOWN` until it is set; the server itself (`""`) serves until it shuts
    /// down, and cannot be set otherwise (it answers from its own life).
    ///
    /// A name whose topic (`$health.<service>`) would be past 255 bytes is refused.
    pub fn set_health(&self, service: &str, serving: bool) -> Result<(), Error> {
        let probe = Notification {
            topic: crate::health::topic(service).into(),
            format: 0,
            meta: Vec::new(),
            body: Bytes::new(),
        };
        check_notification(&probe, usize::MAX)?;
        if let Some(status) = self.inner.shared.health.set(service, serving) {
            self.publish_health(service, status);
        }
        Ok(())
    }

    /// The status `$health` answers for `service` now.
    pub fn health(&self, service: &str) -> crate::HealthStatus {
        self.inner.shared.health.status(service)
    }

    fn publish_health(&self, service: &str, status: crate::HealthStatus) {
        // The topic was checked by `set_health` (or is `$health`) and the body is one
        // word; a subscriber whose queue is full misses it, counted, as for any publish.
        let _ = self.publish(
            &crate::health::topic(service),
            mcp_format::FormatId::RAW,
            status.as_str().as_bytes().to_vec(),
        );
    }

    /// Graceful shutdown: stops accepting, sends GOAWAY (code 0, `last_id` = the last
    /// request received) on every connection, answers later requests ERROR 6, lets the
    /// requests in flight finish for up to `grace` (then answers them ERROR 8 and stops
    /// them), and closes each connection once it has nothing left to answer. Resolves when
    /// every connection is closed.
    ///
    /// Calling it again (or from another handle) waits for the same shutdown; the first
    /// grace period stands.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        let shared = &self.inner.shared;
        // Health says NOT_SERVING from the moment draining starts, before any GOAWAY: the
        // pushes are queued on every subscriber's connection ahead of it.
        for service in shared.health.drain() {
            self.publish_health(&service, crate::HealthStatus::NotServing);
        }
        let deadline = Instant::now() + grace;
        shared.shutdown.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(deadline);
                true
            } else {
                false
            }
        });
        let accept = self
            .inner
            .accept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(accept) = accept {
            accept.await.map_err(|err| Error::Task(err.to_string()))?;
        }
        let mut open = shared.open.subscribe();
        // The sender lives in `shared`, which this handle keeps alive: `wait_for` can only
        // end by the count reaching zero.
        let _ = open.wait_for(|n| *n == 0).await;
        Ok(())
    }
}
