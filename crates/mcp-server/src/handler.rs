//! Handler traits and what they are given: [`Handler`] for requests, [`NotifyHandler`] for
//! one-way NOTIFY messages from clients, and adapters from closures and typed functions.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use mcp_codec::{Metadata, OwnedMetaPair, TRACEPARENT, TRACESTATE};
use mcp_format::{Decode, Encode, FormatId};
use mcp_transport::{Meta, PeerIdentity};
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
    pub(crate) identity: Option<PeerIdentity>,
    pub(crate) cancel: CancelCell,
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

    /// The client's verified TLS certificate chain, when it connected with TLS and
    /// presented a client certificate.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    /// A token cancelled when the request is abandoned: CANCEL from the client, the
    /// deadline passing, the connection closing, or the shutdown grace running out.
    ///
    /// The handler's future is dropped at that moment anyway; the token is for work it
    /// handed elsewhere (a blocking thread, another task) that should stop too.
    pub fn cancellation(&self) -> &CancellationToken {
        self.cancel.token()
    }

    /// Resolves when the request is abandoned (see [`RequestContext::cancellation`]).
    pub async fn cancelled(&self) {
        self.cancel.token().cancelled().await;
    }
}

/// The cancellation token of one request, made when first asked for.
///
/// Most handlers never look at their token, and a `CancellationToken` costs an allocation
/// of its own plus reference counting under a lock on every clone and drop. The cell is
/// shared by the request's contexts (a clone of the context is the same request) and by
/// the connection, which calls [`CancelCell::cancel`] when it stops the request: whichever
/// side comes first makes the token, so a handler that asks after the stop gets a token
/// already cancelled.
#[derive(Clone, Default)]
pub(crate) struct CancelCell(Arc<OnceLock<CancellationToken>>);

impl CancelCell {
    fn token(&self) -> &CancellationToken {
        self.0.get_or_init(CancellationToken::new)
    }

    /// Cancels the token, made now if nobody asked for it yet.
    pub(crate) fn cancel(&self) {
        self.token().cancel();
    }

    /// The cell, if this is its only handle (no context of the request is left anywhere)
    /// and no token was made: it is then as new, and can serve another request.
    pub(crate) fn into_unused(mut self) -> Option<Self> {
        let unused = Arc::get_mut(&mut self.0).is_some_and(|token| token.get().is_none());
        unused.then_some(self)
    }
}

impl fmt::Debug for CancelCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cancelled = self.0.get().is_some_and(CancellationToken::is_cancelled);
        f.debug_struct("CancelCell")
            .field("cancelled", &cancelled)
            .finish()
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("format", &self.format)
            .field("meta", &Redacted(self.metadata()))
            .field("deadline", &self.deadline)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Metadata for `Debug`, with the value of `authorization` left out: credentials stay out
/// of logs.
struct Redacted<'a>(Metadata<'a>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.0 {
            if key.eq_ignore_ascii_case(crate::auth::AUTHORIZATION) {
                map.entry(&key, &"<redacted>");
            } else {
                map.entry(&key, &value);
            }
        }
        map.finish()
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

/// A handler's future as the connection runs it: owning all it needs, so that it can go on
/// in a task of its own.
pub(crate) type Call = Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send>>;

/// How the router keeps a handler: started into one [`Call`].
///
/// [`Handler::call`] (an `async_trait` method) boxes its future, which borrows the handler,
/// so running it in a task takes a second box that owns both. The server's own handlers
/// ([`HandlerFn`], [`TypedHandler`]) skip that: their future owns what it needs, so one box
/// is enough. Any other [`Handler`] goes through [`Dyn`], as before.
pub(crate) trait Invoke: Send + Sync + 'static {
    /// Starts the handler on one request. Runs no more of it than its first poll would
    /// (for a closure, the closure itself), so it is called where that poll is.
    fn invoke(self: Arc<Self>, ctx: RequestContext, body: Bytes) -> Call;
}

/// Any [`Handler`], invoked through [`Handler::call`].
pub(crate) struct Dyn<H>(pub(crate) H);

impl<H: Handler> Invoke for Dyn<H> {
    fn invoke(self: Arc<Self>, ctx: RequestContext, body: Bytes) -> Call {
        Box::pin(async move { self.0.call(ctx, body).await })
    }
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

impl<F, Fut> Invoke for HandlerFn<F>
where
    F: Fn(RequestContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    fn invoke(self: Arc<Self>, ctx: RequestContext, body: Bytes) -> Call {
        // The closure's future owns its inputs: the only box is its own.
        Box::pin((self.f)(ctx, body))
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
        self.handle(ctx, body).await
    }
}

impl<F, Req, Resp, Func, Fut> TypedHandler<F, Req, Resp, Func>
where
    F: Decode<Req> + Encode<Resp>,
    Func: Fn(RequestContext, Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    /// Decodes, calls, encodes: what [`Handler::call`] and [`Invoke::invoke`] both run.
    async fn handle(&self, ctx: RequestContext, body: Bytes) -> Result<Reply, Status> {
        let request = self.format.decode_body(ctx.format(), body)?;
        let response = (self.f)(ctx, request).await?;
        let body = self
            .format
            .encode_to_bytes(&response, &mut BytesMut::new())?;
        Ok(Reply::new(body))
    }
}

impl<F, Req, Resp, Func, Fut> Invoke for TypedHandler<F, Req, Resp, Func>
where
    F: Decode<Req> + Encode<Resp>,
    Req: Send + 'static,
    Resp: Send + 'static,
    Func: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    fn invoke(self: Arc<Self>, ctx: RequestContext, body: Bytes) -> Call {
        // One box owning the handler, where `Handler::call` would box a future borrowing it.
        Box::pin(async move { self.handle(ctx, body).await })
    }
}

/// What a [`NotifyHandler`] is given with a client's NOTIFY body.
#[derive(Clone)]
pub struct NotifyContext {
    pub(crate) topic: Arc<str>,
    pub(crate) format: FormatId,
    pub(crate) meta: ReceivedMeta,
    pub(crate) peer: SocketAddr,
    pub(crate) identity: Option<PeerIdentity>,
    /// The sending connection's writer, for [`NotifyContext::push`].
    pub(crate) conn: mcp_transport::WireWriter,
    pub(crate) max_message_len: usize,
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

    /// The client's verified TLS certificate chain, when it presented one.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    /// Pushes a NOTIFY to the connection that sent this one, and to it alone (the interop
    /// test service's `echo` loop-back, docs/protocol.md section 10).
    ///
    /// Never waits, as `publish` does not: `Ok(false)` when that connection's outbound
    /// queue is full or it is closing (the NOTIFY is dropped). An invalid topic or a body
    /// past the maximum message size is an `Err`, and nothing is sent.
    pub fn push(
        &self,
        topic: &str,
        format: FormatId,
        body: impl Into<bytes::Bytes>,
    ) -> Result<bool, crate::Error> {
        let notification = crate::subscribe::Notification {
            topic: topic.into(),
            format: format.get(),
            meta: Vec::new(),
            body: body.into(),
        };
        crate::server::check_notification(&notification, self.max_message_len)?;
        Ok(matches!(
            crate::subscribe::Subscriber::offer(&self.conn, &notification),
            crate::subscribe::Offer::Queued
        ))
    }
}

impl fmt::Debug for NotifyContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyContext")
            .field("topic", &self.topic)
            .field("format", &self.format)
            .field("meta", &Redacted(self.metadata()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_leaves_the_credentials_out() {
        let pairs: [mcp_codec::MetaPair<'_>; 2] =
            [("authorization", b"Bearer s3cret"), ("tenant", b"acme")];
        let shown = format!("{:?}", Redacted(Metadata::from_pairs(&pairs)));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("tenant"),
            "{shown}"
        );
    }

    #[test]
    fn a_cancel_cell_is_reused_only_when_nobody_can_see_it() {
        let cell = CancelCell::default();
        let cell = cell.into_unused().expect("a new cell is unused");
        // A context of the request still holds it: the request is not over for them.
        let kept = cell.clone();
        assert!(cell.into_unused().is_none());
        // A token was made: whoever took it may still wait on it.
        let _ = kept.token();
        assert!(kept.clone().into_unused().is_none());
        assert!(kept.into_unused().is_none());
        // Cancelling before anyone asked makes the token, already cancelled.
        let cell = CancelCell::default();
        cell.cancel();
        assert!(cell.token().is_cancelled());
        assert!(cell.into_unused().is_none());
    }
}
