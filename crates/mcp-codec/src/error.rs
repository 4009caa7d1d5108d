//! The one error type of the codec.

/// Everything that can go wrong while decoding or encoding MCP frames and envelopes.
///
/// The error is `Copy` and allocation-free so that firmware can match on it cheaply. Each
/// variant names exactly what was wrong; [`Error::is_fatal`] says whether a byte-stream
/// receiver must close the connection (docs/protocol.md section 2).
///
/// A short input is never an error: decoders report it as "need more bytes" instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first two bytes of a frame were not `"MC"`.
    #[error("bad magic: expected 4d 43, found {:02x} {:02x}", found[0], found[1])]
    BadMagic {
        /// The two bytes found where the magic belongs.
        found: [u8; 2],
    },
    /// The frame's version byte is not one this codec speaks.
    #[error("unsupported protocol version {0:#04x} (this codec speaks 0x01)")]
    UnsupportedVersion(u8),
    /// The CRC carried by the frame does not match the one computed over its bytes.
    #[error("CRC mismatch: frame carries {received:#06x}, computed {computed:#06x}")]
    CrcMismatch {
        /// The CRC written in the frame.
        received: u16,
        /// The CRC computed over version, type, length and payload.
        computed: u16,
    },
    /// The frame's payload is longer than this receiver's configured maximum.
    #[error("frame payload of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Payload length announced by the frame header.
        len: usize,
        /// The receiver's limit.
        limit: usize,
    },
    /// A reassembled message body would exceed the configured maximum message size.
    #[error("message body of at least {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Body bytes the message has reached (at least).
        len: usize,
        /// The configured maximum message size.
        limit: usize,
    },
    /// A payload ended before the named field was complete.
    #[error("truncated payload: {field} is incomplete")]
    Truncated {
        /// The field that could not be read whole.
        field: &'static str,
    },
    /// A field that must hold 1..=255 bytes was empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The empty field.
        field: &'static str,
    },
    /// A field is longer than its length prefix can express.
    #[error("{field} is {len} bytes, at most {max} allowed")]
    FieldTooLong {
        /// The field that is too long.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A flags byte has a reserved bit set.
    #[error("reserved flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// A method, topic, message or reason is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field holding the invalid bytes.
        field: &'static str,
    },
    /// A metadata key holds a byte outside `[a-z0-9._-]`.
    #[error("metadata key has the invalid byte {byte:#04x} (allowed: a-z 0-9 . _ -)")]
    InvalidMetaKey {
        /// The first offending byte.
        byte: u8,
    },
    /// More metadata entries than the count byte can express.
    #[error("{count} metadata entries, at most 255 allowed")]
    TooManyMeta {
        /// The number of entries given.
        count: usize,
    },
    /// A PING or PONG payload is not exactly 8 bytes.
    #[error("PING/PONG payload is {len} bytes, must be 8")]
    BadPingLength {
        /// The payload length found.
        len: usize,
    },
    /// Bytes remain after a fixed-size payload (CANCEL).
    #[error("{extra} unexpected bytes after the end of a {frame} payload")]
    TrailingBytes {
        /// The frame type.
        frame: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A request id of 0, which is reserved for "the connection as a whole".
    #[error("request id 0 is reserved")]
    ZeroId,
    /// A frame type that cannot appear here: an unknown or non-PING/PONG frame between the
    /// frames of a large message, or a CONTINUATION without a message in progress.
    #[error("unexpected frame type {frame_type:#04x}: {context}")]
    UnexpectedFrame {
        /// The raw frame type byte.
        frame_type: u8,
        /// Why it is unexpected.
        context: &'static str,
    },
    /// The output buffer is too small for the frame being encoded.
    #[error("output buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the caller provided.
        available: usize,
    },
    /// An envelope (everything but the body) does not fit in one frame.
    #[error("envelope of {len} bytes does not fit in one frame (at most {max})")]
    EnvelopeTooLarge {
        /// Bytes of the envelope.
        len: usize,
        /// Bytes available in one frame.
        max: usize,
    },
}

impl Error {
    /// Whether a receiver on a byte stream must treat this error as fatal for the connection
    /// (answer `ERROR` id 0 code 1 or 7 and close), were it to meet this error in what it
    /// received.
    ///
    /// Only the two errors that exist solely on the sending side ([`Error::BufferTooSmall`]
    /// and [`Error::EnvelopeTooLarge`]) are not fatal. The others can be met by a receiver as
    /// well as by a sender (a zero id, an empty method, a bad metadata key, ...), and are
    /// fatal for a receiver; a sender that gets one from an encoder has merely made a local
    /// mistake, and nothing was written.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::BufferTooSmall { .. } | Error::EnvelopeTooLarge { .. }
        )
    }

    /// The protocol error code a receiver answers this error with: 7 (TOO_LARGE) for size
    /// limits, 1 (MALFORMED) for everything else.
    pub fn error_code(&self) -> crate::ErrorCode {
        match self {
            Error::FrameTooLarge { .. } | Error::MessageTooLarge { .. } => {
                crate::ErrorCode::TOO_LARGE
            }
            _ => crate::ErrorCode::MALFORMED,
        }
    }
}
