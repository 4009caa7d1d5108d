//! The errors of the server: [`Error`] for the operator (binding, accepting), [`Status`] for
//! handlers (what a failed request is answered with).

use std::fmt;
use std::io;

use mcp_codec::{ErrorCode, MAX_PAYLOAD_LEN};
use mcp_format::{DecodeError, EncodeError};

/// Errors of the server itself, as its operator sees them. A peer's misbehaviour is never
/// one of these: it is answered on the wire and logged, and only that connection ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The listener failed (reading its local address, or accepting in a way that is not
    /// a per-connection hiccup).
    #[error("listener error: {0}")]
    Listener(#[source] io::Error),
    /// A message to publish cannot be sent: a topic that is empty or longer than 255 bytes,
    /// a bad metadata key, a body past the maximum message size.
    #[error("cannot publish: {0}")]
    Publish(#[source] mcp_codec::Error),
    /// A value to publish could not be encoded in the chosen format.
    #[error("cannot publish: {0}")]
    Encode(#[source] EncodeError),
    /// A setting that cannot work ([`ServerConfig::check`](crate::ServerConfig::check)).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server task ended abnormally (it panicked or was aborted).
    #[error("the server task ended abnormally: {0}")]
    Task(String),
}

/// What a handler answers a failed request with: an ERROR frame's code and message.
///
/// Handlers return [`Status::internal`] (code 9) for their own failures, or an
/// application-defined code (1000 and above) through [`Status::application`]; the
/// protocol's other codes are available through [`Status::new`] for handlers that need
/// them (e.g. [`ErrorCode::UNSUPPORTED_FORMAT`] for a body format they do not speak).
#[derive(Clone, PartialEq, Eq)]
pub struct Status {
    code: ErrorCode,
    message: String,
}

/// The longest ERROR message the server sends: what fits in one frame after the id and code.
const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD_LEN - 6;

impl Status {
    /// A status with any code. Code 0 is not an error code; it is sent as 9 (INTERNAL).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let code = if code.0 == 0 {
            ErrorCode::INTERNAL
        } else {
            code
        };
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            // An over-long message would make the ERROR frame unencodable; cut it at a
            // character boundary rather than lose the answer.
            let mut end = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Status { code, message }
    }

    /// Code 9, INTERNAL: the handler failed. Retried by clients only for idempotent calls.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }

    /// An application-defined code. Codes below 1000 belong to the protocol, so they are
    /// moved into the application range: `code` is sent as is when it is 1000 or more,
    /// otherwise as 9 (INTERNAL) with the code named in the message.
    pub fn application(code: u16, message: impl Into<String>) -> Self {
        if code >= ErrorCode::FIRST_APPLICATION.0 {
            Self::new(ErrorCode(code), message)
        } else {
            let message = message.into();
            Self::internal(format!("application code {code} is reserved: {message}"))
        }
    }

    /// Code 1, MALFORMED: the body could not be understood.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::MALFORMED, message)
    }

    /// Code 3, UNSUPPORTED_FORMAT: the body's format is not one this handler speaks.
    pub fn unsupported_format(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNSUPPORTED_FORMAT, message)
    }

    /// Code 10, UNAUTHENTICATED: no credentials, or invalid ones. Not processed, and not
    /// retried by clients.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAUTHENTICATED, message)
    }

    /// Code 11, PERMISSION_DENIED: valid credentials, but this call is not allowed. Not
    /// processed, and not retried by clients.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PERMISSION_DENIED, message)
    }

    /// Code 8, CANCELLED: the work was ended on the server's side.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::CANCELLED, message)
    }

    /// The ERROR code sent.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The ERROR message sent.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status")
            .field("code", &self.code)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "error {}", self.code)
        } else {
            write!(f, "error {}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

/// A body that does not decode is the caller's mistake: MALFORMED, or UNSUPPORTED_FORMAT
/// when its `format` byte is not the handler's.
impl From<DecodeError> for Status {
    fn from(err: DecodeError) -> Self {
        match err.kind() {
            mcp_format::DecodeErrorKind::WrongFormat { .. } => {
                Self::unsupported_format(err.to_string())
            }
            _ => Self::malformed(err.to_string()),
        }
    }
}

/// An answer that does not encode is the server's mistake: INTERNAL.
impl From<EncodeError> for Status {
    fn from(err: EncodeError) -> Self {
        Self::internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_codes_stay_in_their_range() {
        assert_eq!(Status::application(1000, "x").code(), ErrorCode(1000));
        assert_eq!(Status::application(65535, "x").code(), ErrorCode(65535));
        let low = Status::application(2, "nope");
        assert_eq!(low.code(), ErrorCode::INTERNAL);
        assert!(low.message().contains("nope"));
        assert_eq!(Status::new(ErrorCode(0), "").code(), ErrorCode::INTERNAL);
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let status = Status::internal("é".repeat(MAX_MESSAGE_LEN));
        assert!(status.message().len() <= MAX_MESSAGE_LEN);
        assert!(status.message().len() >= MAX_MESSAGE_LEN - 1);
    }
}
