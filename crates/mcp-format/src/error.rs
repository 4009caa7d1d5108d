//! Errors of encoding and decoding bodies.
//!
//! Both errors name the format involved (id and name). They carry the underlying serializer's
//! error as a *reason*: its message is part of `Display`, and [`DecodeError::reason`] /
//! [`EncodeError::reason`] give it back for downcasting. It is deliberately not returned by
//! `Error::source`, so that error reporters that walk the chain do not print it twice.

use core::fmt;
use core::str::Utf8Error;
use std::error::Error as StdError;

use crate::id::{FormatId, FormatInfo};

/// The underlying error of a serializer, boxed so that `serde_json`'s and `prost`'s error types
/// stay out of this crate's public API.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A body could not be decoded. Never a panic: every malformed input ends here.
#[derive(Debug)]
pub struct DecodeError {
    format: FormatInfo,
    kind: DecodeErrorKind,
    reason: Option<BoxError>,
}

// The reason is shown by `Display`, so `source` stays `None` (see the module docs).
impl StdError for DecodeError {}

/// What kind of [`DecodeError`] happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The frame's `format` byte names another format than the one the caller decodes with.
    /// [`DecodeError::format`] is the expected format.
    WrongFormat {
        /// The format the frame says its body is in.
        actual: FormatId,
    },
    /// The format requires UTF-8 (JSON, or a raw body decoded as a `String`) and the body is
    /// not.
    NotUtf8 {
        /// The length of the longest valid UTF-8 prefix: the offset of the first bad byte.
        valid_up_to: usize,
    },
    /// The bytes are not a valid encoding of the requested type in this format: a syntax
    /// error, a truncated body, a type mismatch, a number out of range, nesting too deep, and
    /// so on. [`DecodeError::reason`] has the details.
    Invalid,
}

impl DecodeError {
    /// The body is not a valid encoding in `format`; `reason` says why.
    pub fn invalid(format: FormatInfo, reason: impl Into<BoxError>) -> Self {
        Self {
            format,
            kind: DecodeErrorKind::Invalid,
            reason: Some(reason.into()),
        }
    }

    /// The body should be UTF-8 in `format` and is not.
    pub fn not_utf8(format: FormatInfo, error: Utf8Error) -> Self {
        Self {
            format,
            kind: DecodeErrorKind::NotUtf8 {
                valid_up_to: error.valid_up_to(),
            },
            reason: None,
        }
    }

    /// The body is in format `actual` and the caller expected `expected`.
    pub fn wrong_format(expected: FormatInfo, actual: FormatId) -> Self {
        Self {
            format: expected,
            kind: DecodeErrorKind::WrongFormat { actual },
            reason: None,
        }
    }

    /// The format the body was being decoded with (for [`DecodeErrorKind::WrongFormat`], the
    /// expected one).
    pub fn format(&self) -> FormatInfo {
        self.format
    }

    /// What went wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// The serializer's own error, if there is one (e.g. a `serde_json::Error` or a
    /// `prost::DecodeError`, which can be recovered with `downcast_ref`).
    pub fn reason(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.reason.as_deref()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            format,
            kind,
            reason,
        } = self;
        match kind {
            DecodeErrorKind::WrongFormat { actual } => {
                write!(f, "body is in format {actual}, expected {format}")
            }
            DecodeErrorKind::NotUtf8 { valid_up_to } => write!(
                f,
                "cannot decode {format} body: not valid UTF-8 (first invalid byte at offset {valid_up_to})"
            ),
            DecodeErrorKind::Invalid => match reason {
                Some(reason) => write!(f, "cannot decode {format} body: {reason}"),
                None => write!(f, "cannot decode {format} body"),
            },
        }
    }
}

/// A value could not be encoded, e.g. a map with non-string keys in JSON, or a `Serialize`
/// implementation that failed. The buffer is left as it was before the call.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode value as {format}: {reason}")]
pub struct EncodeError {
    format: FormatInfo,
    reason: BoxError,
}

impl EncodeError {
    /// Encoding in `format` failed; `reason` says why.
    pub fn new(format: FormatInfo, reason: impl Into<BoxError>) -> Self {
        Self {
            format,
            reason: reason.into(),
        }
    }

    /// The format the value was being encoded in.
    pub fn format(&self) -> FormatInfo {
        self.format
    }

    /// The serializer's own error.
    pub fn reason(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: FormatInfo = FormatInfo::new(FormatId::JSON, "json");

    #[test]
    fn wrong_format_names_both() {
        let err = DecodeError::wrong_format(JSON, FormatId::PROTOBUF);
        assert_eq!(
            err.to_string(),
            "body is in format protobuf (2), expected json (1)"
        );
        assert_eq!(
            err.kind(),
            DecodeErrorKind::WrongFormat {
                actual: FormatId::PROTOBUF
            }
        );
        assert!(err.reason().is_none());
        assert!(StdError::source(&err).is_none());
    }

    #[test]
    fn invalid_shows_the_reason_once() {
        let err = DecodeError::invalid(JSON, "expected value at line 1 column 1");
        assert_eq!(
            err.to_string(),
            "cannot decode json (1) body: expected value at line 1 column 1"
        );
        assert!(StdError::source(&err).is_none());
        let err = EncodeError::new(JSON, "key must be a string");
        assert_eq!(
            err.to_string(),
            "cannot encode value as json (1): key must be a string"
        );
        assert_eq!(err.reason().to_string(), "key must be a string");
    }
}
