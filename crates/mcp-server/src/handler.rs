//! Handler traits and what they are given: [`Handler`] for requests, [`NotifyHandler`] for
//! one-way NOTIFY messages from clients, and adapters from closures and typed functions.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use mcp_codec::{Metadata, OwnedMetaPair, TRACEPARENT, TRACESTATE};
use mcp_format::{Decode, Encode, FormatId};
use mcp_transport::Meta;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Status;

/// Everything about a request but its body, handed to the handler with it.
#[derive(Clone)]
pub struct RequestContext {
    pub(crate) id: u32,
    pub(crate) method: Arc<str>,
    pub(crate) format: FormatId,
    pub(crate) meta: ReceivedMeta,
    pub(crate) deadline: Option<Instant>,
    pub(crate) peer: SocketAddr,
    pub(crate) cancel: CancellationToken,
}

impl RequestContext {
    /// The request id chosen by the client (unique among its requests in flight).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The body's format, in which the answer is sent too.
    pub fn format(&self) -> FormatId {
        self.format
    }

    /// The request's metadata, in wire order (keys may repeat).
    pub fn metadata(&self) -> Metadata<'_> {
        self.meta.metadata()
    }

    /// When the caller's budget runs out, counted from the arrival of the request's head
    /// frame; `None` without a `deadline` entry. The server answers ERROR 4 at this instant
    /// if the handler has not finished (and stops it).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The W3C `traceparent` entry, if present and UTF-8.
    pub fn traceparent(&self) -> Option<&str> {
        self.text_meta(TRACEPARENT)
    }

    /// The W3C `tracestate` entry, if present and UTF-8.
    pub fn tracestate(&self) -> Option<&str> {
        self.text_meta(TRACESTATE)
    }

    fn text_meta(&self, key: &str) -> Option<&str> {
        self.meta
            .wire
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// A token cancelled when the request is abandoned: CANCEL from the client, the
    /// deadline passing, the connection closing, or the shutdown grace running out.
    ///
    /// The handler's future is dropped at that moment anyway; the token is for work it
    /// handed elsewhere (a blocking thread, another task) that should stop too.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Resolves when the request is abandoned (see [`RequestContext::cancellation`]).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("format", &self.format)
            .field("meta", &self.metadata())
            .field("deadline", &self.deadline)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Received metadata as the transport handed it over (the wire block, sliced from the
/// frame), copied into owned pairs only if the handler asks for the [`Metadata`] view.
#[derive(Clone, Default)]
pub(crate) struct ReceivedMeta {
    wire: Meta,
    owned: OnceLock<Arc<[OwnedMetaPair]>>,
}

impl ReceivedMeta {
    pub(crate) fn new(wire: Meta) -> Self {
        ReceivedMeta {
            wire,
            owned: OnceLock::new(),
        }
    }

    fn metadata(&self) -> Metadata<'_> {
        if self.wire.is_empty() {
            return Metadata::EMPTY;
        }
        let owned = self.owned.get_or_init(|| {
            self.wire
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect()
        });
        Metadata::from_owned(owned)
    }
}

/// A successful answer: the RESPONSE body (in the request's format) and its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The body, already encoded in the request's format.
    pub body: Bytes,
    /// Metadata entries of the RESPONSE; keys must be `[a-z0-9._-]`, or the request is
    /// answered ERROR 9 instead.
    pub meta: Vec<OwnedMetaPair>,
}

impl Reply {
    /// A reply with this body and no metadata.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Reply {
            body: body.into(),
            meta: Vec::new(),
        }
    }

    /// An empty body: "no value" in every format.
    pub fn empty() -> Self {
        Reply::default()
    }

    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.meta.push((key.into(), value.into()));
        self
    }
}

impl From<Bytes> for Reply {
    fn from(body: Bytes) -> Self {
        Reply::new(body)
    }
}

/// Handles the requests of one method, bytes in and bytes out.
///
/// The server polls the call's future once in the connection's task: a call that finishes
/// there is answered at once, without a task of its own; one that waits goes on in its own
/// task, so that a slow handler delays nobody else. Blocking or long computation before the
/// first `.await` that waits would hold up the connection's other requests: hand it to
/// `tokio::task::spawn_blocking` (or start with `tokio::task::yield_now().await`, or build
/// the server with [`run_handlers_inline(false)`](crate::ServerBuilder::run_handlers_inline)).
/// The future
/// is dropped (stopping the work at its next `.await`) when the request is cancelled, its
/// deadline passes or its connection closes; use [`RequestContext::cancellation`] to stop
/// work running outside the future.
///
/// Returning `Err` answers ERROR with the [`Status`]'s code; a panic in the handler is
/// answered ERROR 9 (INTERNAL) and does not affect other requests.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one request whose body is `body`, in the format `ctx.format()`.
    async fn call(&self, ctx: RequestContext, body: Bytes) -> Result<Reply, Status>;
}

/// A [`Handler`] from an async closure `Fn(RequestContext, Bytes) -> impl Future<Output =
/// Result<Reply, Status>>`; see [`handler_fn`].
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(RequestContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    HandlerFn { f }
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(RequestContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    async fn call(&self, ctx: RequestContext, body: Bytes) -> Result<Reply, Status> {
        (self.f)(ctx, body).await
    }
}

/// A [`Handler`] for typed functions `Fn(RequestContext, Req) -> Result<Resp, Status>` in
/// one body format `F`; built by [`Router::route_typed`](crate::Router::route_typed).
///
/// A request in another format is answered ERROR 3 (UNSUPPORTED_FORMAT); a body that does
/// not decode as `Req`, ERROR 1 (MALFORMED); an answer that does not encode, ERROR 9.
pub struct TypedHandler<F, Req, Resp, Func> {
    format: F,
    f: Func,
    // `fn` so that the handler is Send + Sync whatever Req and Resp are.
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<F: fmt::Debug, Req, Resp, Func> fmt::Debug for TypedHandler<F, Req, Resp, Func> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedHandler")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl<F, Req, Resp, Func> TypedHandler<F, Req, Resp, Func> {
    /// A typed handler speaking `format`.
    pub fn new(format: F, f: Func) -> Self {
        TypedHandler {
            format,
            f,
            _types: PhantomData,
        }
    }
}

#[async_trait]
impl<F, Req, Resp, Func, Fut> Handler for TypedHandler<F, Req, Resp, Func>
where
    F: Decode<Req> + Encode<Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
    Func: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    async fn call(&self, ctx: RequestContext, body: Bytes) -> Result<Reply, Status> {
        let request = self.format.decode_body(ctx.format(), body)?;
        let response = (self.f)(ctx, request).await?;
        let body = self
            .format
            .encode_to_bytes(&response, &mut BytesMut::new())?;
        Ok(Reply::new(body))
    }
}

/// What a [`NotifyHandler`] is given with a client's NOTIFY body.
#[derive(Clone)]
pub struct NotifyContext {
    pub(crate) topic: Arc<str>,
    pub(crate) format: FormatId,
    pub(crate) meta: ReceivedMeta,
    pub(crate) peer: SocketAddr,
}

impl NotifyContext {
    /// The topic the client sent to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The body's format.
    pub fn format(&self) -> FormatId {
        self.format
    }

    /// The NOTIFY's metadata.
    pub fn metadata(&self) -> Metadata<'_> {
        self.meta.metadata()
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for NotifyContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyContext")
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("meta", &self.metadata())
            .field("peer", &self.peer)
            .finish()
    }
}

/// Handles one-way NOTIFY messages sent by clients to a topic. Nothing answers them, so the
/// handler returns nothing; it runs in its own task.
#[async_trait]
pub trait NotifyHandler: Send + Sync + 'static {
    /// Handles one message.
    async fn notify(&self, ctx: NotifyContext, body: Bytes);
}

/// A [`NotifyHandler`] from an async closure; see [`notify_fn`].
pub struct NotifyFn<F> {
    f: F,
}

impl<F> fmt::Debug for NotifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NotifyFn")
    }
}

/// Wraps an async closure as a [`NotifyHandler`].
pub fn notify_fn<F, Fut>(f: F) -> NotifyFn<F>
where
    F: Fn(NotifyContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    NotifyFn { f }
}

#[async_trait]
impl<F, Fut> NotifyHandler for NotifyFn<F>
where
    F: Fn(NotifyContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    async fn notify(&self, ctx: NotifyContext, body: Bytes) {
        (self.f)(ctx, body).await;
    }
}
