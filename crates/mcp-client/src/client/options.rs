//! Per-call options and raw requests.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use mcp_format::FormatId;
use mcp_transport::Meta;

use crate::trace::TraceContext;

/// Options for one call, built fluently and short at the call site:
///
/// ```
/// # use std::time::Duration;
/// # use mcp_client::CallOptions;
/// let options = CallOptions::new()
///     .timeout(Duration::from_millis(800))
///     .idempotent()
///     .meta("tenant", "acme");
/// # let _ = options;
/// ```
///
/// Anything not set takes the client's setting. The format is part of the call's types, so
/// it is chosen on the client rather than here: `client.with_format(Protobuf).call_with(..)`
/// makes one call in Protobuf over the same connections.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) idempotent: bool,
    pub(crate) no_retry: bool,
    pub(crate) metadata: Vec<(Cow<'static, str>, Bytes)>,
    pub(crate) trace: Option<TraceContext>,
    pub(crate) hash_key: Option<u64>,
}

impl CallOptions {
    /// The client's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The call's total budget: waiting for a slot, connecting, every attempt and the
    /// backoff between them (client default 5 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The budget of one attempt: getting a connection, writing, waiting for the answer
    /// (client default 2 s). Never more than what is left of the total.
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Marks the call idempotent: doing it twice has the effect of doing it once, so it
    /// may be retried even when the server may have processed it (a lost connection after
    /// the request was written, a per-attempt timeout, ERROR 9).
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Sets whether the call is idempotent (see [`CallOptions::idempotent`]).
    #[must_use]
    pub fn set_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// No retries for this call, whatever happens.
    #[must_use]
    pub fn no_retry(mut self) -> Self {
        self.no_retry = true;
        self
    }

    /// Adds a metadata entry (keys: 1..=255 bytes of `[a-z0-9._-]`, checked when the call
    /// is made; keys may repeat). The client adds `traceparent`, `tracestate` and
    /// `deadline` itself; a `traceparent` given here is taken as the caller's context, and
    /// a `deadline` given here is replaced by the call's own.
    #[must_use]
    pub fn meta(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Sends the call, in a client of several endpoints ([`Client::fleet`](crate::Client::fleet)),
    /// to the endpoint that `key` hashes to on the balancer's consistent-hash ring (so calls
    /// with one key reach one replica while it is there, and move only if it goes): session
    /// or cache affinity. The hash is the same in every process, so every client of the fleet
    /// agrees. A client of one endpoint ignores it.
    #[must_use]
    pub fn hash_key<K: std::hash::Hash + ?Sized>(mut self, key: &K) -> Self {
        self.hash_key = Some(crate::balance::hash::stable_hash(key));
        self
    }

    /// Continues this trace instead of the one in scope (or a fresh one).
    #[must_use]
    pub fn trace(mut self, parent: TraceContext) -> Self {
        self.trace = Some(parent);
        self
    }
}

/// A request whose body is already encoded: what [`Client::call_raw`](crate::Client::call_raw)
/// and the `tower::Service` implementation take.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The method, 1..=255 bytes of UTF-8.
    pub method: String,
    /// The body's format byte.
    pub format: FormatId,
    /// The body.
    pub body: Bytes,
    /// Per-call options.
    pub options: CallOptions,
}

impl RawRequest {
    /// A request for `method` with `body` in `format` and default options.
    pub fn new(method: impl Into<String>, format: FormatId, body: impl Into<Bytes>) -> Self {
        Self {
            method: method.into(),
            format,
            body: body.into(),
            options: CallOptions::new(),
        }
    }

    /// The same request with these options.
    #[must_use]
    pub fn with_options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }
}

/// An answer whose body is not decoded: what [`Client::call_raw`](crate::Client::call_raw)
/// returns.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub(crate) format: FormatId,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
}

impl RawResponse {
    /// The body's format byte.
    pub fn format(&self) -> FormatId {
        self.format
    }

    /// The answer's metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Takes the body out.
    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// A push whose body is not decoded, with its topic: what
/// [`Client::subscribe_raw`](crate::Client::subscribe_raw) streams.
#[derive(Clone, Debug)]
pub struct RawPush {
    pub(crate) format: FormatId,
    pub(crate) topic: String,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
}

impl RawPush {
    /// The body's format byte.
    pub fn format(&self) -> FormatId {
        self.format
    }

    /// The topic it was published on (for a `prefix*` subscription, the full topic).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The push's metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Takes the body out.
    pub fn into_body(self) -> Bytes {
        self.body
    }
}
