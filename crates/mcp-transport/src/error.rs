//! The transport's errors.
//!
//! Two types:
//! - [`WireError`]: what went wrong reading or writing frames on one byte stream (I/O, a
//!   codec error, a frame the local role never receives). The tokio-util adapter and the
//!   wire reader/writer return it; it always ends the connection.
//! - [`TransportError`]: what a caller of [`Connection`](crate::Connection) or
//!   [`Pool`](crate::Pool) gets. It is opaque (h2-style) with accessors answering the
//!   questions a retry policy asks: was it a timeout ([`TransportError::is_timeout`]), in
//!   which [`Phase`], was the request certainly not processed ([`TransportError::processed`]),
//!   and may it be sent again on another connection
//!   ([`TransportError::is_retryable_elsewhere`]).

use std::fmt;
use std::io;
use std::sync::Arc;

use mcp_codec::{ErrorCode, FrameType, GoAwayCode};

use crate::config::Role;

/// An error on the byte stream of one connection. Every `WireError` is fatal for that
/// connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The bytes received broke the protocol (bad magic, version, CRC, malformed payload,
    /// a message past the maximum size, a bad frame between the frames of a message).
    #[error("protocol error: {0}")]
    Codec(#[from] mcp_codec::Error),
    /// A known frame type that this side's role never receives (a client getting REQUEST
    /// or CANCEL, a server getting RESPONSE).
    #[error("a {role:?} never receives {}", frame_type.name())]
    UnexpectedForRole {
        /// The frame type received.
        frame_type: FrameType,
        /// The local role.
        role: Role,
    },
    /// The peer closed the stream in the middle of a frame or of a multi-frame message.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    ClosedMidFrame {
        /// Bytes of the incomplete frame or message that had arrived.
        buffered: usize,
    },
    /// A write made no progress for the write stall timeout.
    #[error("write stalled for {0:?}")]
    WriteStall(std::time::Duration),
    /// The writer was closed before this frame could be queued.
    #[error("the connection's writer is closed")]
    WriterClosed,
}

impl WireError {
    /// The ERROR code to send (id 0, best effort) before closing, if the peer broke the
    /// protocol; `None` for I/O failures, where nothing can be sent.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            WireError::Codec(e) => Some(e.error_code()),
            WireError::UnexpectedForRole { .. } => Some(ErrorCode::MALFORMED),
            _ => None,
        }
    }

    /// Whether the peer broke the protocol (as opposed to an I/O failure or a local close).
    pub fn is_protocol(&self) -> bool {
        self.error_code().is_some()
    }
}

/// Whether a failed request may have been processed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Processed {
    /// Certainly not processed: it never left this process, or the server said so (GOAWAY
    /// `last_id`, ERROR 6). Safe to send again, whatever the method.
    No,
    /// It may have been processed: it was (or may have been) written and no answer came.
    /// Only an idempotent request may be sent again.
    Maybe,
}

/// Where in its life a call failed (or ran out of time). One type for the whole
/// workspace: `mcp-client` re-exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting in a queue before the request could be sent: for a slot under the client's
    /// concurrency limit, or (in the transport) for a place in a connection's in-flight
    /// window or its write queue.
    Queue,
    /// Waiting for the pool to hand out a connection.
    Pool,
    /// Establishing the connection.
    Connect,
    /// Writing the request (a stalled socket).
    Write,
    /// Waiting for the answer (the per-attempt timeout).
    Response,
    /// The call's total budget, retries and backoff included (set by the client).
    Total,
}

impl Phase {
    /// A short name: `queue`, `pool`, `connect`, `write`, `response`, `total`.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Pool => "pool",
            Phase::Connect => "connect",
            Phase::Write => "write",
            Phase::Response => "response",
            Phase::Total => "total",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the pool could not hand out a connection before the call's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolExhausted {
    /// Every connection is still being established.
    AllConnecting,
    /// Every connection is at its maximum of requests in flight, and the pool is at its
    /// maximum of connections.
    AllFull,
    /// The endpoint cannot be reached: the reconnect backoff is running or its try limit
    /// was reached.
    EndpointDown,
}

impl fmt::Display for PoolExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolExhausted::AllConnecting => "all connections are still connecting",
            PoolExhausted::AllFull => "all connections are at their maximum in flight",
            PoolExhausted::EndpointDown => "the endpoint is down",
        })
    }
}

/// Why a TLS handshake failed (the `tls` features), as a value a caller can match; the
/// [`TransportError`]'s message and [`source`](std::error::Error::source) give rustls's own
/// words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The peer's certificate is not signed by a trusted certificate authority.
    UnknownIssuer,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate is not valid for the server name asked for.
    NameMismatch,
    /// The two sides agreed on no application protocol: the peer does not speak `mcp/1`
    /// through ALPN.
    NoApplicationProtocol,
    /// The server requires a client certificate and none was sent.
    ClientCertificateRequired,
    /// The server refused the client's certificate (an unknown issuer, expired, revoked,
    /// ...: the server's alert says which).
    ClientCertificateRejected,
    /// Anything else: a protocol version or cipher the two sides do not share, a corrupt
    /// record, a TLS alert of another kind.
    Other,
}

impl TlsFailure {
    /// A short description, as the error's message starts.
    pub const fn describe(self) -> &'static str {
        match self {
            TlsFailure::UnknownIssuer => "certificate signed by an unknown authority",
            TlsFailure::Expired => "certificate expired",
            TlsFailure::NotYetValid => "certificate not valid yet",
            TlsFailure::NameMismatch => "certificate not valid for the server name",
            TlsFailure::NoApplicationProtocol => "no application protocol (ALPN mcp/1) agreed",
            TlsFailure::ClientCertificateRequired => "the server requires a client certificate",
            TlsFailure::ClientCertificateRejected => "the server refused the client certificate",
            TlsFailure::Other => "handshake failed",
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// What kind of failure a [`TransportError`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The call's deadline (or the per-attempt timeout) passed.
    Timeout,
    /// The TCP connect failed (refused, unreachable, ...).
    Connect,
    /// The TLS handshake failed (the `tls` features); the value says why.
    Tls(TlsFailure),
    /// The connection was closed or lost (EOF, reset, dead by heartbeat, write stall).
    ConnectionClosed,
    /// The peer broke the protocol; the connection was dropped.
    Protocol,
    /// The server will not take this request: it sent GOAWAY (and the request came after
    /// `last_id`, or was never sent), or answered ERROR 6 (UNAVAILABLE).
    GoAway {
        /// The GOAWAY code, or `None` when the server answered ERROR 6.
        code: Option<GoAwayCode>,
    },
    /// The server closed the connection with ERROR id 0.
    ConnectionError {
        /// The code of the ERROR id 0.
        code: ErrorCode,
    },
    /// The connection is at its maximum of requests in flight and the policy is to
    /// reject rather than wait.
    Overloaded,
    /// The pool could not hand out a connection.
    PoolExhausted(PoolExhausted),
    /// The request could not be encoded (invalid method, topic or metadata key, an
    /// envelope too large for one frame, or a body over the maximum message size).
    InvalidRequest,
    /// The connection or pool was closed by its owner.
    Shutdown,
    /// The server answered a transport-level request (`$subscribe`) with an ERROR.
    Remote {
        /// The ERROR code.
        code: ErrorCode,
    },
}

/// The error of a call, a notify or a subscription on the transport.
///
/// Opaque, with accessors: [`kind`](Self::kind), [`phase`](Self::phase),
/// [`processed`](Self::processed), [`is_timeout`](Self::is_timeout),
/// [`is_retryable_elsewhere`](Self::is_retryable_elsewhere). Cheap to clone, so that one
/// connection failure can be handed to every pending caller.
#[derive(Clone)]
pub struct TransportError {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    phase: Phase,
    processed: Processed,
    /// The call's deadline passed (also for kinds other than `Timeout`, such as a pool
    /// still exhausted at the deadline).
    timed_out: bool,
    message: String,
    /// The lower error this one comes from: the TLS library's for a handshake, the last
    /// connect failure for a pool whose endpoint is down.
    cause: Option<Cause>,
}

/// An error kept as the [`source`](std::error::Error::source) of a [`TransportError`].
type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

impl TransportError {
    /// A connect the connector itself refuses to make, with why (a `Connect` of its own
    /// that finds the endpoint cannot be reached safely): nothing was sent.
    pub fn connect_refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Connect, Phase::Connect, Processed::No, message)
    }

    pub(crate) fn new(
        kind: ErrorKind,
        phase: Phase,
        processed: Processed,
        message: impl Into<String>,
    ) -> Self {
        let kind_is_timeout = kind == ErrorKind::Timeout;
        TransportError {
            inner: Arc::new(Inner {
                kind,
                phase,
                processed,
                timed_out: kind_is_timeout,
                message: message.into(),
                cause: None,
            }),
        }
    }

    /// Keeps `cause` as this error's [`source`](std::error::Error::source).
    pub(crate) fn with_cause(self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.with_cause_arc(Some(Arc::new(cause)))
    }

    fn with_cause_arc(self, cause: Option<Cause>) -> Self {
        let inner = &self.inner;
        TransportError {
            inner: Arc::new(Inner {
                kind: inner.kind.clone(),
                phase: inner.phase,
                processed: inner.processed,
                timed_out: inner.timed_out,
                message: inner.message.clone(),
                cause,
            }),
        }
    }

    /// Marks the error as reached at the call's deadline.
    pub(crate) fn at_deadline(self) -> Self {
        let inner = &self.inner;
        TransportError {
            inner: Arc::new(Inner {
                kind: inner.kind.clone(),
                phase: inner.phase,
                processed: inner.processed,
                timed_out: true,
                message: inner.message.clone(),
                cause: inner.cause.clone(),
            }),
        }
    }

    /// The same error seen from another phase or processed state (a connection failure is
    /// "not processed" for a request still queued and "maybe" for one already written).
    pub(crate) fn with(&self, phase: Phase, processed: Processed) -> Self {
        let err = TransportError::new(
            self.inner.kind.clone(),
            phase,
            processed,
            self.inner.message.clone(),
        );
        let err = err.with_cause_arc(self.inner.cause.clone());
        if self.inner.timed_out {
            err.at_deadline()
        } else {
            err
        }
    }

    pub(crate) fn timeout(phase: Phase, processed: Processed, what: &str) -> Self {
        TransportError::new(ErrorKind::Timeout, phase, processed, what)
    }

    pub(crate) fn shutdown(phase: Phase) -> Self {
        TransportError::new(
            ErrorKind::Shutdown,
            phase,
            Processed::No,
            "the transport was closed",
        )
    }

    pub(crate) fn invalid(err: mcp_codec::Error) -> Self {
        TransportError::new(
            ErrorKind::InvalidRequest,
            Phase::Queue,
            Processed::No,
            format!("request cannot be encoded: {err}"),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// What happened, in words (the text of [`Display`](std::fmt::Display) without the
    /// phase and whether the request was processed).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Where the call was when it failed.
    pub fn phase(&self) -> Phase {
        self.inner.phase
    }

    /// Whether the request may have been processed by the server.
    pub fn processed(&self) -> Processed {
        self.inner.processed
    }

    /// Whether the request was certainly not processed: sending it again is safe whatever
    /// the method.
    pub fn is_not_processed(&self) -> bool {
        self.inner.processed == Processed::No
    }

    /// Whether a deadline or timeout expired (connect timeout included, and a pool still
    /// exhausted when the call's deadline came, whose [`kind`](Self::kind) says why).
    pub fn is_timeout(&self) -> bool {
        self.inner.timed_out
    }

    /// Why a TLS handshake failed, if this error is one or comes from one (a pool whose
    /// endpoint is down because its handshakes fail, say).
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        if let ErrorKind::Tls(failure) = self.inner.kind {
            return Some(failure);
        }
        let cause = self.inner.cause.as_deref()?;
        cause.downcast_ref::<TransportError>()?.tls_failure()
    }

    /// The peer refused the request without processing it (its GOAWAY's `last_id` was
    /// below it, or it answered ERROR 6): another connection may take it.
    pub fn is_refused_by_peer(&self) -> bool {
        self.is_not_processed() && matches!(self.inner.kind, ErrorKind::GoAway { .. })
    }

    /// Whether another attempt on another connection (or after reconnecting) may succeed:
    /// the request was not processed and the failure is about this connection or its
    /// server's state (GOAWAY, ERROR 6, a lost or refused connection, local overload), not
    /// about the request itself or a closed transport.
    pub fn is_retryable_elsewhere(&self) -> bool {
        self.is_not_processed()
            && matches!(
                self.inner.kind,
                ErrorKind::GoAway { .. }
                    | ErrorKind::Connect
                    | ErrorKind::Tls(_)
                    | ErrorKind::ConnectionClosed
                    | ErrorKind::Protocol
                    | ErrorKind::ConnectionError { .. }
                    | ErrorKind::Overloaded
                    | ErrorKind::PoolExhausted(_)
                    | ErrorKind::Timeout
            )
    }
}

impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportError")
            .field("kind", &self.inner.kind)
            .field("phase", &self.inner.phase)
            .field("processed", &self.inner.processed)
            .field("timed_out", &self.inner.timed_out)
            .field("message", &self.inner.message)
            .field("cause", &self.inner.cause)
            .finish()
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let processed = match self.inner.processed {
            Processed::No => "not processed",
            Processed::Maybe => "may have been processed",
        };
        write!(
            f,
            "{} (phase {:?}, {processed})",
            self.inner.message, self.inner.phase
        )
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// A TLS configuration that cannot be used (the `tls` features): a PEM file that cannot be
/// read or holds nothing usable, a server name that is not one, a key rustls refuses.
#[cfg(feature = "tls-core")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// PEM text could not be parsed.
    #[error("cannot parse the {what}: {source}")]
    Pem {
        /// What was being read (`CA certificates`, `client private key`, ...).
        what: String,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The PEM text holds no item of the kind wanted.
    #[error("no {0} found in the PEM text")]
    Empty(String),
    /// Not a DNS name or IP address a certificate can be checked against.
    #[error("{name:?} is not a valid server name")]
    ServerName {
        /// The name given.
        name: String,
    },
    /// The client certificate verifier could not be built (no usable CA, say).
    #[error("cannot verify client certificates: {0}")]
    Verifier(String),
    /// The platform's root certificates could not be loaded.
    #[error("cannot load the platform's root certificates: {0}")]
    NativeRoots(String),
    /// rustls refused the configuration (a key that does not match its certificate, an
    /// unsupported key type, ...).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}
