//! The facade's error: one opaque type a caller can question.
//!
//! Lower layers name exactly what went wrong in small enums; the facade folds them into one
//! [`Error`] whose accessors answer the questions a caller actually has: is this a timeout,
//! and in which phase? was the request possibly processed? may I retry it? is it the
//! remote application's error? is the circuit open, or is the client overloaded locally?
//! did the answer's body fail to decode?

use std::error::Error as StdError;
use std::fmt;

use mcp_codec::ErrorCode;
use mcp_format::{DecodeError, EncodeError};

/// A boxed error from a lower layer, kept as the [`std::error::Error::source`].
pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is. Used as the label of the "errors by kind" metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The call's budget (or one phase of it) ran out; see [`Error::timeout_phase`].
    Timeout,
    /// The server answered with an ERROR frame; see [`Error::remote`].
    Remote,
    /// The circuit breaker is open: the call failed fast without touching the network.
    CircuitOpen,
    /// The client already had its maximum of calls outstanding.
    Overloaded,
    /// The client was closed, or is closing and takes no new calls.
    Closed,
    /// No connection could be made to the server.
    Connect,
    /// The connection broke (reset, closed, heartbeat timeout, GOAWAY) while the call was on it.
    ConnectionLost,
    /// The peer broke the protocol.
    Protocol,
    /// The request could not be encoded in the chosen format.
    Encode,
    /// The answer's body could not be decoded; see [`Error::decode_error`].
    Decode,
    /// The call was refused locally before it was sent: a bad method name or metadata key, or
    /// a message over the size limit.
    Invalid,
}

impl ErrorKind {
    /// Every kind, in a fixed order (the order of the metrics' table).
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Timeout,
        ErrorKind::Remote,
        ErrorKind::CircuitOpen,
        ErrorKind::Overloaded,
        ErrorKind::Closed,
        ErrorKind::Connect,
        ErrorKind::ConnectionLost,
        ErrorKind::Protocol,
        ErrorKind::Encode,
        ErrorKind::Decode,
        ErrorKind::Invalid,
    ];

    /// A short snake_case name, as metrics label it.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Remote => "remote",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Closed => "closed",
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Encode => "encode",
            ErrorKind::Decode => "decode",
            ErrorKind::Invalid => "invalid",
        }
    }

    /// The position of the kind in [`ErrorKind::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where in a call time ran out: the transport's definition, one type for the workspace.
pub use mcp_transport::Phase;

/// What the server may have done with a request when the call failed: the transport's
/// definition, used as it is (crate-private here; callers ask
/// [`Error::maybe_processed`]).
pub(crate) use mcp_transport::Processed;

/// An application's (or the protocol's) ERROR answer: the transport's type, one for the
/// workspace.
pub use mcp_transport::RemoteError;

/// The error of a call, a subscription or a connection made through [`Client`](crate::Client).
///
/// An opaque value: ask it questions with the accessors rather than matching on its insides,
/// which may grow. `Display` gives one line for a human; [`Error::source`] the lower layer's
/// error when there is one.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    phase: Option<Phase>,
    processed: Processed,
    remote: Option<RemoteError>,
    /// Whether the call was marked idempotent: part of "may I retry?".
    idempotent: bool,
    /// Set by the connection layer: the failure is tied to one connection (ERROR 6, GOAWAY),
    /// so another attempt should use another connection.
    other_connection: bool,
    attempts: u32,
    context: Option<String>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, processed: Processed) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                phase: None,
                processed,
                remote: None,
                idempotent: false,
                other_connection: false,
                attempts: 0,
                context: None,
                source: None,
            }),
        }
    }

    /// A timeout in `phase`.
    pub(crate) fn timeout(phase: Phase, processed: Processed) -> Self {
        let mut e = Self::new(ErrorKind::Timeout, processed);
        e.inner.phase = Some(phase);
        e
    }

    /// The server's ERROR answer. ERROR 5, 6, 10 and 11 say the request was not processed
    /// (10 and 11 are not retried: the retry policy only retries 5, 6 and 9).
    ///
    /// ERROR 4 (DEADLINE_EXCEEDED) is the call's deadline passing, seen by the server: a
    /// timeout in the response phase, as if the client's own timer had fired first (the
    /// `deadline` sent is what was left when the request was written, so the two fire
    /// together, in either order); `remote()` still carries the server's answer.
    pub(crate) fn from_remote(remote: RemoteError) -> Self {
        let code = remote.code();
        let processed = if code.is_not_processed() || code.is_refused_caller() {
            Processed::No
        } else {
            Processed::Maybe
        };
        if remote.code() == ErrorCode::DEADLINE_EXCEEDED {
            let mut e = Self::timeout(Phase::Response, processed);
            e.inner.remote = Some(remote);
            return e;
        }
        let mut e = Self::new(ErrorKind::Remote, processed);
        e.inner.other_connection = remote.code() == ErrorCode::UNAVAILABLE;
        e.inner.remote = Some(remote);
        e
    }

    pub(crate) fn circuit_open() -> Self {
        Self::new(ErrorKind::CircuitOpen, Processed::No)
    }

    pub(crate) fn overloaded() -> Self {
        Self::new(ErrorKind::Overloaded, Processed::No)
    }

    pub(crate) fn closed() -> Self {
        Self::new(ErrorKind::Closed, Processed::No)
    }

    pub(crate) fn encode(err: EncodeError) -> Self {
        Self::new(ErrorKind::Encode, Processed::No).with_source(err)
    }

    /// The answer arrived, so the request was processed, but its body did not decode.
    pub(crate) fn decode(err: DecodeError) -> Self {
        Self::new(ErrorKind::Decode, Processed::Maybe).with_source(err)
    }

    pub(crate) fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, Processed::No).with_context(context)
    }

    /// Folds a transport failure into the facade's error, keeping it as the source.
    pub(crate) fn from_transport(err: mcp_transport::TransportError) -> Self {
        use mcp_transport::{ErrorKind as T, Phase as P, PoolExhausted};
        let processed = err.processed();
        let phase = match err.phase() {
            // The transport's queue is a place on a connection: part of getting one.
            // The transport's queues are a connection's window and write queue: the
            // caller sees them as waiting for the pool, as before.
            P::Queue | P::Pool => Phase::Pool,
            other => other,
        };
        let e = match err.kind() {
            T::Timeout => Self::timeout(phase, processed),
            T::Connect | T::Tls(_) => Self::new(ErrorKind::Connect, processed),
            T::PoolExhausted(PoolExhausted::EndpointDown) => {
                Self::new(ErrorKind::Connect, processed)
            }
            // Waiting on connections that never finish connecting says the endpoint is slow:
            // a connect-phase timeout. Waiting on full connections is the client's own limit.
            T::PoolExhausted(PoolExhausted::AllConnecting) => {
                Self::timeout(Phase::Connect, processed)
            }
            T::PoolExhausted(_) => Self::timeout(Phase::Pool, processed),
            T::ConnectionClosed | T::ConnectionError { .. } => {
                Self::new(ErrorKind::ConnectionLost, processed)
            }
            // ERROR 6 reaches us as a GOAWAY without code: show it as the server's answer.
            T::GoAway { code: None } => {
                return Self::from_remote(RemoteError::new(
                    ErrorCode::UNAVAILABLE,
                    "server unavailable",
                ))
                .with_source(err);
            }
            T::GoAway { .. } => {
                Self::new(ErrorKind::ConnectionLost, processed).with_other_connection(true)
            }
            // The server refused a `$subscribe`: its answer, as for any call (the message
            // carries the server's words; no source, which would repeat them).
            T::Remote { code } => {
                return Self::from_remote(RemoteError::new(*code, err.message()));
            }
            T::Protocol => Self::new(ErrorKind::Protocol, processed),
            T::Overloaded => Self::overloaded(),
            T::InvalidRequest => Self::new(ErrorKind::Invalid, Processed::No),
            T::Shutdown => Self::new(ErrorKind::Closed, processed),
            // A kind added to the transport later: keep its facts, call it a lost connection.
            _ => Self::new(ErrorKind::ConnectionLost, processed),
        };
        let e = if e.inner.kind != ErrorKind::Timeout {
            e.with_phase(phase)
        } else {
            e
        };
        e.with_source(err)
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn with_context(mut self, context: impl Into<String>) -> Self {
        self.inner.context = Some(context.into());
        self
    }

    /// An earlier attempt of the same call may have been processed: whatever this last
    /// attempt met, the call as a whole may have been.
    pub(crate) fn processed_earlier(mut self) -> Self {
        if self.inner.processed == Processed::No {
            self.inner.processed = Processed::Maybe;
            if self.inner.context.is_none() {
                self.inner.context = Some("an earlier attempt may have been processed".into());
            }
        }
        self
    }

    pub(crate) fn with_phase(mut self, phase: Phase) -> Self {
        self.inner.phase = Some(phase);
        self
    }

    pub(crate) fn with_other_connection(mut self, other: bool) -> Self {
        self.inner.other_connection = other;
        self
    }

    /// Records the call's facts: whether it was idempotent and how many attempts it made.
    pub(crate) fn for_call(mut self, idempotent: bool, attempts: u32) -> Self {
        self.inner.idempotent = idempotent;
        self.inner.attempts = attempts;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the call (or a phase of it) ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::Timeout
    }

    /// For a timeout, the phase in which time ran out.
    pub fn timeout_phase(&self) -> Option<Phase> {
        if self.is_timeout() {
            self.inner.phase
        } else {
            None
        }
    }

    /// Whether the server may have processed the request. `false` means certainly not:
    /// the request was never sent, or the server said it did no work (ERROR 5 OVERLOADED,
    /// ERROR 6 UNAVAILABLE, a request refused after GOAWAY).
    pub fn maybe_processed(&self) -> bool {
        self.inner.processed == Processed::Maybe
    }

    /// Whether another attempt of the same call may be made: the failure is transient (a
    /// lost or refused connection, a per-attempt timeout, ERROR 5, 6 or 9) and either the
    /// request was certainly not processed or the call is idempotent. ERROR 9 INTERNAL is
    /// retryable only for idempotent calls; application codes never are (the application
    /// decides). A timeout of the total budget or of the queue is not: there is no time
    /// left. The rule is the retry policy's, which the client follows.
    pub fn is_retryable(&self) -> bool {
        crate::retry::retryable(self)
    }

    /// Whether the call that failed was marked idempotent.
    pub(crate) fn is_idempotent(&self) -> bool {
        self.inner.idempotent
    }

    /// Whether a retry should go to another connection (ERROR 6, GOAWAY).
    pub fn wants_other_connection(&self) -> bool {
        self.inner.other_connection
    }

    /// The server's ERROR answer, if this is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        self.inner.remote.as_ref()
    }

    /// The ERROR code the server answered, if it did.
    pub fn code(&self) -> Option<ErrorCode> {
        self.inner.remote.as_ref().map(RemoteError::code)
    }

    /// Whether the circuit breaker refused the call without sending it.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == ErrorKind::CircuitOpen
    }

    /// Whether the client refused the call because it already had its maximum of calls
    /// outstanding (a local condition; the server's ERROR 5 is [`Error::remote`]).
    pub fn is_overloaded(&self) -> bool {
        self.inner.kind == ErrorKind::Overloaded
    }

    /// Whether the client is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.kind == ErrorKind::Closed
    }

    /// If the answer's body failed to decode, the format's error.
    pub fn decode_error(&self) -> Option<&DecodeError> {
        if self.inner.kind != ErrorKind::Decode {
            return None;
        }
        self.inner.source.as_deref()?.downcast_ref::<DecodeError>()
    }

    /// Why the TLS handshake failed, if the server could not be reached because of one
    /// (an unknown certificate authority, an expired certificate, a name mismatch, no ALPN
    /// `mcp/1`, a client certificate required or refused).
    pub fn tls_failure(&self) -> Option<mcp_transport::TlsFailure> {
        let source = self.inner.source.as_deref()?;
        source
            .downcast_ref::<mcp_transport::TransportError>()?
            .tls_failure()
    }

    /// How many attempts the call made (0 if it failed before the first one was sent).
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        match inner.kind {
            ErrorKind::Timeout => match inner.phase {
                Some(Phase::Total) => f.write_str("call timed out: total budget exhausted")?,
                Some(phase) => write!(f, "call timed out in phase {phase}")?,
                None => f.write_str("call timed out")?,
            },
            ErrorKind::Remote => match &inner.remote {
                Some(remote) => write!(f, "{remote}")?,
                None => f.write_str("server answered ERROR")?,
            },
            ErrorKind::CircuitOpen => f.write_str("circuit breaker open: call not sent")?,
            ErrorKind::Overloaded => {
                f.write_str("client overloaded: too many calls outstanding")?
            }
            ErrorKind::Closed => f.write_str("client closed")?,
            ErrorKind::Connect => f.write_str("cannot connect to server")?,
            ErrorKind::ConnectionLost => f.write_str("connection lost")?,
            ErrorKind::Protocol => f.write_str("protocol error")?,
            ErrorKind::Encode => f.write_str("cannot encode request")?,
            ErrorKind::Decode => f.write_str("cannot decode answer")?,
            ErrorKind::Invalid => f.write_str("invalid call")?,
        }
        if let Some(context) = &inner.context {
            write!(f, " ({context})")?;
        }
        // Lower layers' messages are part of the one line a CLI prints.
        if let Some(source) = &inner.source {
            write!(f, ": {source}")?;
        }
        if inner.attempts > 1 {
            write!(f, " after {} attempts", inner.attempts)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.kind);
        if let Some(phase) = inner.phase {
            d.field("phase", &phase);
        }
        d.field("maybe_processed", &(inner.processed == Processed::Maybe));
        if let Some(remote) = &inner.remote {
            d.field("remote", remote);
        }
        if let Some(context) = &inner.context {
            d.field("context", context);
        }
        if let Some(source) = &inner.source {
            d.field("source", source);
        }
        d.field("attempts", &inner.attempts);
        d.finish()
    }
}

// `source` is shown by `Display` already (a CLI prints one line); it is still returned here so
// that programs can walk to the lower layer's typed error.
impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_deadline_exceeded_is_a_timeout_in_the_response_phase() {
        let e = Error::from_remote(RemoteError::new(ErrorCode::DEADLINE_EXCEEDED, "late"));
        assert!(e.is_timeout());
        assert_eq!(e.timeout_phase(), Some(Phase::Response));
        assert!(e.maybe_processed());
        assert_eq!(
            e.remote().map(RemoteError::code),
            Some(ErrorCode::DEADLINE_EXCEEDED)
        );
    }

    #[test]
    fn a_remote_message_is_shown_on_one_line_with_nothing_for_the_terminal() {
        let hostile = RemoteError::new(ErrorCode(1000), "no\nmcp: forged line\u{1b}[2J\u{7}");
        let shown = hostile.to_string();
        assert_eq!(
            shown,
            "server answered ERROR 1000: no\\nmcp: forged line\\u{1b}[2J\\u{7}"
        );
        assert!(!shown.chars().any(char::is_control));
        // The message itself is kept as it came, for code that wants it.
        assert_eq!(hostile.message(), "no\nmcp: forged line\u{1b}[2J\u{7}");
    }

    #[test]
    fn remote_codes_follow_the_protocol_table() {
        let overloaded = Error::from_remote(RemoteError::new(ErrorCode::OVERLOADED, "busy"));
        assert!(!overloaded.maybe_processed());
        assert!(overloaded.is_retryable());
        assert!(!overloaded.wants_other_connection());

        let unavailable = Error::from_remote(RemoteError::new(ErrorCode::UNAVAILABLE, ""));
        assert!(unavailable.is_retryable());
        assert!(unavailable.wants_other_connection());

        let internal = Error::from_remote(RemoteError::new(ErrorCode::INTERNAL, "oops"));
        assert!(internal.maybe_processed());
        assert!(!internal.is_retryable());
        assert!(internal.for_call(true, 1).is_retryable());

        for code in [1, 2, 3, 4, 7, 8, 10, 11, 12, 1000, 4242] {
            let e = Error::from_remote(RemoteError::new(ErrorCode(code), "")).for_call(true, 1);
            assert!(!e.is_retryable(), "code {code} must not be retried");
        }
    }

    #[test]
    fn a_refused_caller_was_not_processed_and_is_not_retried() {
        for code in [ErrorCode::UNAUTHENTICATED, ErrorCode::PERMISSION_DENIED] {
            let e = Error::from_remote(RemoteError::new(code, "who are you")).for_call(true, 1);
            assert!(!e.maybe_processed(), "{code}: the table says not processed");
            assert!(!e.is_retryable(), "{code}: the same credentials fail again");
            assert!(!e.wants_other_connection());
            assert_eq!(e.code(), Some(code));
        }
        let shown = Error::from_remote(RemoteError::new(ErrorCode::UNAUTHENTICATED, "no token"));
        assert!(
            shown.to_string().contains("10 (UNAUTHENTICATED)"),
            "{shown}"
        );
    }

    #[test]
    fn timeouts_name_their_phase() {
        let e = Error::timeout(Phase::Response, Processed::Maybe);
        assert!(e.is_timeout());
        assert_eq!(e.timeout_phase(), Some(Phase::Response));
        assert!(!e.is_retryable(), "maybe processed and not idempotent");
        let e = e.for_call(true, 1);
        assert!(e.is_retryable());
        assert_eq!(
            Error::timeout(Phase::Connect, Processed::No).timeout_phase(),
            Some(Phase::Connect)
        );
        assert!(Error::timeout(Phase::Connect, Processed::No).is_retryable());
        let total = Error::timeout(Phase::Total, Processed::No).for_call(true, 3);
        assert!(!total.is_retryable());
        assert_eq!(
            total.to_string(),
            "call timed out: total budget exhausted after 3 attempts"
        );
        assert_eq!(Error::overloaded().timeout_phase(), None);
    }

    #[test]
    fn local_refusals_are_distinct_and_not_processed() {
        for (e, kind) in [
            (Error::circuit_open(), ErrorKind::CircuitOpen),
            (Error::overloaded(), ErrorKind::Overloaded),
            (Error::closed(), ErrorKind::Closed),
        ] {
            assert_eq!(e.kind(), kind);
            assert!(!e.maybe_processed());
            assert!(!e.is_retryable());
            assert!(e.remote().is_none());
        }
        assert!(Error::circuit_open().is_circuit_open());
        assert!(Error::overloaded().is_overloaded());
        assert!(Error::closed().is_closed());
    }

    #[test]
    fn decode_errors_are_reachable() {
        use mcp_format::{FormatId, FormatInfo};
        let inner =
            DecodeError::wrong_format(FormatInfo::new(FormatId::JSON, "json"), FormatId::RAW);
        let e = Error::decode(inner);
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert!(e.decode_error().is_some());
        assert!(e.source().is_some());
        assert!(
            e.to_string()
                .starts_with("cannot decode answer: body is in format raw (0)")
        );
        assert!(Error::closed().decode_error().is_none());
    }

    #[test]
    fn kinds_index_their_table() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
