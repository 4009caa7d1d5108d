//! The client: the facade composing the policies over the transport's pool.
//!
//! The path of one call, outside in (each step is one module):
//! 1. refuse if closing; start the clock of the call's total budget;
//! 2. [`trace`](crate::trace): pick the trace context, open the `mcp.call` span;
//! 3. [`limit`](crate::limit): take a slot under the concurrency limit (queue phase);
//! 4. [`retry`](crate::retry): run attempts until one succeeds or the policy gives up;
//! 5. per attempt, [`breaker`](crate::breaker): fail fast if open, else record the outcome;
//! 6. per attempt, the [`Transport`](crate::transport::Transport) (the pool): a connection, the REQUEST with
//!    `traceparent`/`tracestate`/`deadline`, the answer within the attempt's deadline;
//! 7. decode the body in the caller's format; [`metrics`](crate::metrics) record the call.

mod builder;
mod options;
mod subscription;
#[cfg(all(test, feature = "json"))]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mcp_codec::{DEADLINE, TRACEPARENT, TRACESTATE};
use mcp_format::{Decode, Encode, Format, FormatId};
use mcp_transport::{Meta, Pool};
use tokio::time::Instant;
use tracing::Instrument;

pub use builder::ClientBuilder;
pub use options::{CallOptions, RawPush, RawRequest, RawResponse};
pub use subscription::{RawSubscription, Subscription};

use crate::breaker::{Breaker, Outcome};
use crate::error::{Error, ErrorKind, Phase, Processed};
use crate::limit::{Limiter, Slot};
use crate::metrics::{MetricsSnapshot, Recorder};
use crate::retry::Retry;
use crate::trace::{self, TraceContext};
use crate::transport::{Attempt, Transport};
use crate::window::later;

/// The client's timing settings.
#[derive(Clone, Debug)]
pub(crate) struct Timing {
    /// Total budget of a call (5 s).
    pub(crate) timeout: Duration,
    /// Budget of one attempt (2 s).
    pub(crate) attempt_timeout: Duration,
    /// How long `close` lets calls in flight finish (5 s).
    pub(crate) close_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// What every clone of a client shares.
#[derive(Debug)]
pub(crate) struct Shared<T> {
    pub(crate) transport: T,
    pub(crate) timing: Timing,
    pub(crate) retry: Retry,
    pub(crate) breaker: Breaker,
    pub(crate) limiter: Limiter,
    pub(crate) recorder: Recorder,
    pub(crate) closing: AtomicBool,
}

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
    pub(crate) shared: Arc<Shared<T>>,
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
            shared: Arc::clone(&self.shared),
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
            .field("endpoint", &self.shared.transport.endpoint())
            .field("closing", &self.shared.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `addr`: `"host:port"` (resolved at each
    /// connect) or a `SocketAddr`. JSON unless told otherwise.
    pub fn builder(addr: impl std::fmt::Display) -> ClientBuilder<DefaultFormat> {
        ClientBuilder::new(addr.to_string())
    }
}

impl<F: Format, T: Transport> Client<F, T> {
    pub(crate) fn from_shared(shared: Arc<Shared<T>>, format: F) -> Self {
        Self {
            shared,
            format,
            ready: ReadyState::default(),
        }
    }

    /// The same client (same connections, limits and metrics) speaking another format:
    /// `client.with_format(Protobuf).call(...)` overrides the format for one call.
    pub fn with_format<G: Format>(&self, format: G) -> Client<G, T> {
        Client {
            shared: Arc::clone(&self.shared),
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
            .map_err(|e| self.local_failure(Error::encode(e)))?;
        let response = self
            .execute(method, self.format.id(), body, &options, None)
            .await?;
        let decoded = self
            .format
            .decode_body(response.format, response.body)
            .map_err(Error::decode);
        if let Err(e) = &decoded {
            // The call itself was counted as a success; its body is the failure.
            self.shared.recorder.error(e.kind());
        }
        decoded
    }

    /// Calls with a body already encoded; the answer comes back undecoded.
    pub async fn call_raw(&self, request: RawRequest) -> Result<RawResponse, Error> {
        self.execute(
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
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(self.local_failure(Error::closed()));
        }
        let body = self
            .format
            .encode_to_bytes(msg, &mut BytesMut::new())
            .map_err(|e| self.local_failure(Error::encode(e)))?;
        let deadline = later(
            Instant::now(),
            options.timeout.unwrap_or(self.shared.timing.timeout),
        );
        let context = context_of(&options);
        let meta = outgoing_meta(&options, &context, None);
        let result = self
            .shared
            .transport
            .notify(topic, self.format.id(), meta, body, deadline)
            .instrument(trace::call_span(topic, &context))
            .await;
        result.map_err(|e| self.local_failure(e))
    }

    /// Subscribes to `topic` (exact, or a prefix ending in `*`, e.g. `orders.*`): a stream
    /// of the pushes, decoded in the client's format. The subscription survives reconnects
    /// (the client subscribes again by itself) and is cancelled on the server when the
    /// stream is dropped.
    pub async fn subscribe<M>(&self, topic: &str) -> Result<Subscription<M, F>, Error>
    where
        F: Decode<M>,
    {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(self.local_failure(Error::closed()));
        }
        let deadline = later(Instant::now(), self.shared.timing.timeout);
        let pushes = self
            .shared
            .transport
            .subscribe(topic, deadline)
            .await
            .map_err(|e| self.local_failure(e))?;
        Ok(Subscription::new(pushes, self.format.clone()))
    }

    /// Subscribes to `topic` without decoding: pushes come with their topic, format and
    /// metadata (useful with `prefix*` patterns and mixed formats).
    pub async fn subscribe_raw(&self, topic: &str) -> Result<RawSubscription, Error> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(self.local_failure(Error::closed()));
        }
        let deadline = later(Instant::now(), self.shared.timing.timeout);
        let pushes = self
            .shared
            .transport
            .subscribe(topic, deadline)
            .await
            .map_err(|e| self.local_failure(e))?;
        Ok(RawSubscription::new(pushes))
    }

    /// Closes the client: new calls fail with [`Error::is_closed`] at once, calls in flight
    /// get up to the close timeout (builder, default 5 s) to finish, then the connections
    /// are closed (a GOAWAY with last id 0 tells the server no more requests come, then
    /// the sockets are shut, subscription streams ended and background tasks joined).
    /// Every clone is closed. Returns how many calls were still in flight when the grace period
    /// ran out (they fail as closed).
    pub async fn close(&self) -> usize {
        self.close_within(self.shared.timing.close_timeout).await
    }

    /// [`Client::close`] with an explicit grace period.
    pub async fn close_within(&self, grace: Duration) -> usize {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        shared.limiter.close();
        let drained = tokio::time::timeout(grace, shared.limiter.drained()).await;
        let abandoned = if drained.is_ok() {
            0
        } else {
            shared.limiter.in_flight()
        };
        shared.transport.close().await;
        abandoned
    }

    /// Closes without waiting: new calls are refused, calls in flight fail, connections
    /// close; the background tasks end on their own shortly after. For `Drop`-like paths
    /// that cannot await.
    pub fn close_now(&self) {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        shared.limiter.close();
        shared.transport.close_now();
    }

    /// Whether [`Client::close`] was called on this client or a clone.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// A snapshot of the client's metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        let shared = &self.shared;
        let now = Instant::now();
        let transport = shared.transport.stats();
        MetricsSnapshot {
            calls: shared.recorder.calls(),
            succeeded: shared.recorder.succeeded(),
            in_flight: shared.limiter.in_flight(),
            queued: shared.limiter.queued(),
            connections: transport.connections,
            reconnects: transport.reconnects,
            retries: shared.retry.retries(),
            retries_denied: shared.retry.denied_by_budget(),
            breaker: shared.breaker.state(now),
            breaker_opened: shared.breaker.opened(),
            errors: shared.recorder.errors(),
            latency: shared.recorder.latency(),
        }
    }

    /// Counts a failure that happened before the call path started.
    fn local_failure(&self, err: Error) -> Error {
        self.shared.recorder.error(err.kind());
        err
    }

    /// The call path (see the module docs). `slot` is a slot reserved beforehand
    /// (`poll_ready`), else one is taken here.
    pub(crate) async fn execute(
        &self,
        method: &str,
        format: FormatId,
        body: Bytes,
        options: &CallOptions,
        slot: Option<Slot>,
    ) -> Result<RawResponse, Error> {
        let shared = &*self.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(self.local_failure(Error::closed()));
        }
        let start = Instant::now();
        let deadline = later(start, options.timeout.unwrap_or(shared.timing.timeout));
        shared.recorder.started();
        let context = context_of(options);
        let span = trace::call_span(method, &context);
        // No timer of its own for the total budget: every wait below is bounded by
        // `deadline` already (the limiter's queue, each attempt's deadline that the
        // transport enforces, a backoff started only if it ends in time), and a timer per
        // call is measurable on the hot path.
        let calls = self.attempts(
            method, format, body, options, &context, start, deadline, slot,
        );
        // A disabled span (no subscriber interested) is skipped rather than entered and
        // exited on every poll.
        let result = if span.is_disabled() {
            calls.await
        } else {
            calls.instrument(span).await
        };
        // A successful call brings the time its answer came (read once for the breaker
        // and the latency); a failure reads the clock here.
        let (result, end) = match result {
            Ok((response, end)) => (Ok(response), end),
            Err(e) => (Err(e), Instant::now()),
        };

        let answered = match &result {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::Remote,
        };
        shared.recorder.finished(
            result.as_ref().map(drop).map_err(Error::kind),
            answered,
            end.saturating_duration_since(start),
        );
        if let Err(e) = &result {
            tracing::debug!(error = %e, "call failed");
        }
        result
    }

    /// Steps 3 to 6 of the call path: a slot, then attempts under the retry policy. A
    /// success comes with the time its answer came.
    ///
    /// The clock is read as little as the policies allow (a read costs about as much as
    /// the breaker and the retry budget together): `start` stands for "now" until
    /// something waits, and the end of the attempt that succeeded is the call's end.
    #[allow(clippy::too_many_arguments)] // the pieces of one call, kept apart on purpose
    async fn attempts(
        &self,
        method: &str,
        format: FormatId,
        body: Bytes,
        options: &CallOptions,
        context: &TraceContext,
        start: Instant,
        deadline: Instant,
        slot: Option<Slot>,
    ) -> Result<(RawResponse, Instant), Error> {
        let shared = &*self.shared;
        let (_slot, ready_at) = match slot {
            Some(slot) => (slot, start),
            None => match shared.limiter.try_acquire() {
                Ok(Some(slot)) => (slot, start),
                Ok(None) => {
                    let slot = shared
                        .limiter
                        .acquire(deadline)
                        .await
                        .map_err(|e| e.for_call(options.idempotent, 0))?;
                    (slot, Instant::now())
                }
                Err(e) => return Err(e.for_call(options.idempotent, 0)),
            },
        };
        let attempt_timeout = options
            .attempt_timeout
            .unwrap_or(shared.timing.attempt_timeout);
        shared
            .retry
            .run(
                options.idempotent,
                !options.no_retry,
                ready_at,
                deadline,
                |number, other_connection| {
                    let body = body.clone();
                    async move {
                        // A retry starts after a backoff sleep: only then is `ready_at` old.
                        let now = if number == 1 {
                            ready_at
                        } else {
                            Instant::now()
                        };
                        // The attempt's own timeout, unless the call's budget ends first
                        // (then the time left of it, which takes a subtraction).
                        let own = later(now, attempt_timeout);
                        let (attempt_deadline, remaining) = if own <= deadline {
                            (own, attempt_timeout)
                        } else {
                            (deadline, deadline.saturating_duration_since(now))
                        };
                        let permit = shared.breaker.acquire(now)?;
                        let meta = outgoing_meta(options, context, Some(remaining));
                        tracing::trace!(attempt = number, "sending");
                        let result = shared
                            .transport
                            .call(Attempt {
                                method,
                                format,
                                meta,
                                body,
                                deadline: attempt_deadline,
                                other_connection,
                            })
                            .await;
                        let result = result.map_err(|e| {
                            // Time ran out because the total budget did, not the attempt's
                            // own: say so, keeping where it happened.
                            match e.timeout_phase() {
                                Some(phase)
                                    if attempt_deadline == deadline
                                        && Instant::now() >= deadline =>
                                {
                                    let processed = if e.maybe_processed() {
                                        Processed::Maybe
                                    } else {
                                        Processed::No
                                    };
                                    Error::timeout(Phase::Total, processed)
                                        .with_context(format!("while in phase {phase}"))
                                }
                                _ => e,
                            }
                        });
                        let end = Instant::now();
                        permit.record(Outcome::of(&result), end);
                        result.map(|response| (response, end))
                    }
                },
            )
            .await
    }
}

/// The trace context a call sends (see [`trace::context_for_call`]).
fn context_of(options: &CallOptions) -> TraceContext {
    let find = |key: &str| {
        options
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    };
    trace::context_for_call(options.trace.as_ref(), find(TRACEPARENT), find(TRACESTATE))
}

/// The metadata of an outgoing frame: the caller's entries (minus the well-known keys the
/// client sets itself), then `traceparent`, `tracestate` and, for calls, `deadline`.
fn outgoing_meta(
    options: &CallOptions,
    context: &TraceContext,
    remaining: Option<Duration>,
) -> Meta {
    let traceparent = context.traceparent_bytes();
    let deadline = remaining.map(trace::deadline_value);
    // One buffer for every entry (built on every attempt: one allocation, not one per
    // value). Most calls send exactly a `traceparent` and a `deadline`: that block is laid
    // out from a plain array, without the filter and chain the general case needs.
    if let (true, None, Some(deadline)) = (
        options.metadata.is_empty(),
        context.tracestate(),
        deadline.as_ref(),
    ) {
        return Meta::from_entries([(TRACEPARENT, &traceparent[..]), (DEADLINE, &deadline[..])]);
    }
    let callers = options
        .metadata
        .iter()
        .filter(|(key, _)| !matches!(key.as_ref(), TRACEPARENT | TRACESTATE | DEADLINE))
        .map(|(key, value)| (key.as_ref(), value.as_ref()));
    let own = [
        Some((TRACEPARENT, &traceparent[..])),
        context
            .tracestate()
            .map(|state| (TRACESTATE, state.as_bytes())),
        deadline.as_ref().map(|d| (DEADLINE, &d[..])),
    ];
    Meta::from_entries(callers.chain(own.into_iter().flatten()))
}
