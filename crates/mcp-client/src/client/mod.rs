//! The client: the typed facade over the [stack](crate::stack) of policies.
//!
//! `Client<F>` encodes a request in its format `F`, hands the bytes to the stack (trace,
//! limit, retry, breaker, metrics over the transport; see there for the path of a call),
//! and decodes the answer. Everything a clone shares is in that one stack.

mod builder;
mod options;
mod subscription;
#[cfg(all(test, feature = "json"))]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mcp_format::{Decode, Encode, Format};
use mcp_transport::Pool;

pub use builder::ClientBuilder;
pub use options::{CallOptions, RawPush, RawRequest, RawResponse};
pub use subscription::{RawSubscription, Subscription};

use crate::balance::{Change, Fleet, FleetSource, Instance, fleet::ChangeStream};
use crate::error::Error;
use crate::metrics::MetricsSnapshot;
use crate::stack::Stack;
use crate::transport::Transport;
use futures_core::Stream;

/// A client of one MCP server: typed calls, pushes, one-way messages.
///
/// `Client<F>` serializes bodies with the format `F` (JSON by default); a call compiles only
/// for types `F` can carry. It is `Clone + Send + Sync` and cheap to clone (an `Arc`
/// inside): clone it into every task that needs it; the clones share connections, limits,
/// the breaker, the retry budget and the metrics.
///
/// `T` is where calls go: the transport's connection pool, the only transport there is
/// outside this crate's own tests (the parameter lets those drive the call path with a
/// scripted transport without costing the real one a box or a vtable).
///
/// ```no_run
/// # async fn demo() -> Result<(), mcp_client::Error> {
/// use mcp_client::Client;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Echo { msg: String }
///
/// let client = Client::builder("127.0.0.1:7000").connect().await?;
/// let back: Echo = client.call("echo", &Echo { msg: "hi".into() }).await?;
/// # let _ = back;
/// client.close().await;
/// # Ok(()) }
/// ```
pub struct Client<F: Format = DefaultFormat, T = Pool> {
    pub(crate) stack: Arc<Stack<T>>,
    format: F,
    /// A slot reserved by `tower_service::Service::poll_ready`, per handle (nothing without
    /// the `tower` feature).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) ready: ReadyState,
}

#[cfg(feature = "tower")]
pub(crate) type ReadyState = Option<Box<crate::tower::Ready>>;
#[cfg(not(feature = "tower"))]
pub(crate) type ReadyState = ();

/// The format a [`Client`] uses unless told otherwise: JSON with the `json` feature, raw
/// bytes without it.
#[cfg(feature = "json")]
pub type DefaultFormat = mcp_format::Json;
/// The format a [`Client`] uses unless told otherwise: JSON with the `json` feature, raw
/// bytes without it.
#[cfg(not(feature = "json"))]
pub type DefaultFormat = mcp_format::Raw;

impl<F: Format, T> Clone for Client<F, T> {
    fn clone(&self) -> Self {
        Self {
            stack: Arc::clone(&self.stack),
            format: self.format.clone(),
            // A reserved slot belongs to the handle that reserved it.
            ready: ReadyState::default(),
        }
    }
}

impl<F: Format, T: Transport> std::fmt::Debug for Client<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("format", &self.format)
            .field("endpoint", &self.stack.transport().endpoint())
            .field("closing", &self.stack.is_closing())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `addr`: `"host:port"` (resolved at each
    /// connect) or a `SocketAddr`. JSON unless told otherwise.
    pub fn builder(addr: impl std::fmt::Display) -> ClientBuilder<DefaultFormat> {
        ClientBuilder::new(addr.to_string())
    }

    /// A builder for a client of a fleet of replicas: `host:port` addresses (or
    /// [`Instance`]s with weights), one connection pool each, calls spread by the balancer
    /// ([`BalanceConfig`](crate::BalanceConfig); see [`crate::balance`] for how).
    /// Addresses are checked when the client is built.
    pub fn fleet<I>(endpoints: I) -> ClientBuilder<DefaultFormat, Fleet>
    where
        I: IntoIterator,
        I::Item: Into<Instance>,
    {
        ClientBuilder::new(FleetSource::List(
            endpoints.into_iter().map(Into::into).collect(),
        ))
    }

    /// A builder for a client of the fleet a DNS name resolves to: `"host:port"`, every
    /// address of `host` an endpoint on `port`, followed as the name changes (resolved again
    /// every 30 s, and at once after a failure; a failed or empty answer keeps the last set).
    /// See [`DnsConfig`](crate::DnsConfig) and [`Client::dns_with`].
    #[cfg(feature = "dns")]
    pub fn dns(target: impl Into<String>) -> ClientBuilder<DefaultFormat, Fleet> {
        Self::dns_with(target, crate::DnsConfig::default())
    }

    /// [`Client::dns`] with its settings (interval, name servers, ...).
    #[cfg(feature = "dns")]
    pub fn dns_with(
        target: impl Into<String>,
        config: crate::DnsConfig,
    ) -> ClientBuilder<DefaultFormat, Fleet> {
        ClientBuilder::new(FleetSource::Dns(crate::balance::DnsSource {
            target: target.into(),
            config,
        }))
    }

    /// A builder for a client of a fleet whose members come from a discovery source (Consul,
    /// etcd, a file watcher, a Kubernetes watcher...): a stream of [`Change`]s, applied as
    /// they come. Calls made before the first change wait for it within their budget; when
    /// the stream ends the fleet keeps its last set. One client takes the stream (a second
    /// built from a clone of this builder is refused).
    pub fn discover<S>(changes: S) -> ClientBuilder<DefaultFormat, Fleet>
    where
        S: Stream<Item = Change> + Send + 'static,
    {
        let stream: ChangeStream = Box::pin(changes);
        ClientBuilder::new(FleetSource::Stream(Arc::new(std::sync::Mutex::new(Some(
            stream,
        )))))
    }
}

impl<F: Format, T: Transport> Client<F, T> {
    pub(crate) fn from_stack(stack: Arc<Stack<T>>, format: F) -> Self {
        Self {
            stack,
            format,
            ready: ReadyState::default(),
        }
    }

    /// The same client (same connections, limits and metrics) speaking another format:
    /// `client.with_format(Protobuf).call(...)` overrides the format for one call.
    pub fn with_format<G: Format>(&self, format: G) -> Client<G, T> {
        Client {
            stack: Arc::clone(&self.stack),
            format,
            ready: ReadyState::default(),
        }
    }

    /// The client's format.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// Calls `method` with `req`, both ways in the client's format.
    pub async fn call<Req, Resp>(&self, method: &str, req: &Req) -> Result<Resp, Error>
    where
        Req: ?Sized,
        F: Encode<Req> + Decode<Resp>,
    {
        self.call_with(method, req, CallOptions::new()).await
    }

    /// Calls `method` with `req` and per-call options.
    pub async fn call_with<Req, Resp>(
        &self,
        method: &str,
        req: &Req,
        options: CallOptions,
    ) -> Result<Resp, Error>
    where
        Req: ?Sized,
        F: Encode<Req> + Decode<Resp>,
    {
        let body = self
            .format
            .encode_to_bytes(req, &mut BytesMut::new())
            .map_err(|e| self.stack.local_failure(Error::encode(e)))?;
        let response = self
            .stack
            .call(method, self.format.id(), body, &options, None)
            .await?;
        // The call itself was counted as a success; its body is the failure.
        self.format
            .decode_body(response.format, response.body)
            .map_err(|e| self.stack.local_failure(Error::decode(e)))
    }

    /// Calls with a body already encoded; the answer comes back undecoded.
    pub async fn call_raw(&self, request: RawRequest) -> Result<RawResponse, Error> {
        self.stack
            .call(
                &request.method,
                request.format,
                request.body,
                &request.options,
                None,
            )
            .await
    }

    /// Sends a one-way message (NOTIFY) on `topic` to the server's handler for it; nothing
    /// answers. The client's total timeout bounds getting a connection and writing.
    pub async fn notify<M>(&self, topic: &str, msg: &M) -> Result<(), Error>
    where
        M: ?Sized,
        F: Encode<M>,
    {
        self.notify_with(topic, msg, CallOptions::new()).await
    }

    /// Sends a one-way message with per-call options (timeout, metadata, trace).
    pub async fn notify_with<M>(
        &self,
        topic: &str,
        msg: &M,
        options: CallOptions,
    ) -> Result<(), Error>
    where
        M: ?Sized,
        F: Encode<M>,
    {
        self.stack.refuse_if_closing()?;
        let body = self
            .format
            .encode_to_bytes(msg, &mut BytesMut::new())
            .map_err(|e| self.stack.local_failure(Error::encode(e)))?;
        self.stack
            .notify(topic, self.format.id(), body, &options)
            .await
    }

    /// Subscribes to `topic` (exact, or a prefix ending in `*`, e.g. `orders.*`): a stream
    /// of the pushes, decoded in the client's format. The subscription survives reconnects
    /// (the client subscribes again by itself) and is cancelled on the server when the
    /// stream is dropped.
    pub async fn subscribe<M>(&self, topic: &str) -> Result<Subscription<M, F>, Error>
    where
        F: Decode<M>,
    {
        let pushes = self.stack.subscribe(topic).await?;
        Ok(Subscription::new(pushes, self.format.clone()))
    }

    /// Subscribes to `topic` without decoding: pushes come with their topic, format and
    /// metadata (useful with `prefix*` patterns and mixed formats).
    pub async fn subscribe_raw(&self, topic: &str) -> Result<RawSubscription, Error> {
        let pushes = self.stack.subscribe(topic).await?;
        Ok(RawSubscription::new(pushes))
    }

    /// Subscribes to `topic` on every endpoint of a fleet and merges what they publish:
    /// for events each replica publishes about itself (its own cache invalidations, say),
    /// where [`Client::subscribe`] would hear only the one replica it is on. Follows the
    /// fleet: a replica that joins is subscribed to, one that leaves is dropped. Succeeds
    /// once one endpoint is subscribed. With one endpoint it is [`Client::subscribe`].
    pub async fn subscribe_all<M>(&self, topic: &str) -> Result<Subscription<M, F>, Error>
    where
        F: Decode<M>,
    {
        let pushes = self.stack.subscribe_all(topic).await?;
        Ok(Subscription::new(pushes, self.format.clone()))
    }

    /// [`Client::subscribe_all`] without decoding.
    pub async fn subscribe_all_raw(&self, topic: &str) -> Result<RawSubscription, Error> {
        let pushes = self.stack.subscribe_all(topic).await?;
        Ok(RawSubscription::new(pushes))
    }

    /// Closes the client: new calls fail with [`Error::is_closed`] at once, calls in flight
    /// get up to the close timeout (builder, default 5 s) to finish, then the connections
    /// are closed (a GOAWAY with last id 0 tells the server no more requests come, then
    /// the sockets are shut, subscription streams ended and background tasks joined).
    /// Every clone is closed. Returns how many calls were still in flight when the grace period
    /// ran out (they fail as closed).
    pub async fn close(&self) -> usize {
        self.close_within(self.stack.timing().close_timeout).await
    }

    /// [`Client::close`] with an explicit grace period.
    pub async fn close_within(&self, grace: Duration) -> usize {
        self.stack.close_within(grace).await
    }

    /// Closes without waiting: new calls are refused, calls in flight fail, connections
    /// close; the background tasks end on their own shortly after. For `Drop`-like paths
    /// that cannot await.
    pub fn close_now(&self) {
        self.stack.close_now();
    }

    /// Whether [`Client::close`] was called on this client or a clone.
    pub fn is_closed(&self) -> bool {
        self.stack.is_closing()
    }

    /// A snapshot of the client's metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.stack.metrics()
    }
}
