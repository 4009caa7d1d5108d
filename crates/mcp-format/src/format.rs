//! The traits every body format implements.

use core::fmt;

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::id::{FormatId, FormatInfo};

/// A body format: what the `format` byte of a frame names.
///
/// A format is a small value (usually a unit struct such as [`Json`](crate::Json)) that the
/// client stores once and the server keeps per handler. Which Rust types it can carry is said
/// separately, per type, by [`Encode<T>`] and [`Decode<T>`]; that split is what lets a call such
/// as `client.call::<Req, Resp>(method, &req)` require `F: Encode<Req> + Decode<Resp>` and so
/// compile only for types the chosen format handles.
///
/// An application adds its own format by implementing these three traits for its own type,
/// with an id in 128..=255 (see [`FormatId::user_defined`]); nothing in this crate needs to
/// change.
pub trait Format: Clone + fmt::Debug + Send + Sync + 'static {
    /// The id written in the frame's `format` byte.
    fn id(&self) -> FormatId;

    /// A short lowercase name for messages and metrics, e.g. `json`.
    fn name(&self) -> &'static str;

    /// The id and name together, as errors carry them.
    fn info(&self) -> FormatInfo {
        FormatInfo::new(self.id(), self.name())
    }
}

/// A [`Format`] that can write values of type `T`.
pub trait Encode<T: ?Sized>: Format {
    /// Appends the encoding of `value` to `buf`.
    ///
    /// `buf` is owned by the caller and may be reused from one value to the next (its spare
    /// capacity then saves an allocation). The format writes straight into it: serialization
    /// is the only pass over the bytes. On error, `buf` is left as it was before the call.
    fn encode(&self, value: &T, buf: &mut BytesMut) -> Result<(), EncodeError>;

    /// Encodes `value` into `buf` and splits off everything `buf` then holds as a [`Bytes`]
    /// body for a frame (pass an empty buffer to get exactly the encoding of `value`). The
    /// spare capacity stays in `buf` for the next call, and splitting copies nothing.
    ///
    /// A format may override this to avoid even the encoding copy; [`Raw`](crate::Raw) does
    /// for a [`Bytes`] value, which it returns as is.
    fn encode_to_bytes(&self, value: &T, buf: &mut BytesMut) -> Result<Bytes, EncodeError> {
        self.encode(value, buf)?;
        Ok(buf.split().freeze())
    }
}

/// A [`Format`] that can read values of type `T`.
///
/// Decoding never panics, whatever the bytes: anything that is not a valid encoding of `T` is
/// a [`DecodeError`]. An empty body is valid in every format (docs/protocol.md section 4) and means
/// "no value": it decodes to whatever "no value" is for the format and type (`None` or `()` in
/// JSON, the default message in Protobuf, empty bytes in raw), or is an error if `T` has no
/// such value.
pub trait Decode<T>: Format {
    /// Decodes a whole body.
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError>;

    /// Decodes a whole body held in a [`Bytes`], as the transport hands it over. Formats that
    /// can keep parts of the body without copying (raw bytes, Protobuf `bytes` fields mapped to
    /// `Bytes`) override this; the default borrows the slice and calls [`Decode::decode`].
    fn decode_bytes(&self, body: Bytes) -> Result<T, DecodeError> {
        self.decode(&body)
    }

    /// Checks that the frame's `format` byte is this format's id, then decodes the body: what
    /// a client does with a RESPONSE and a server with a REQUEST.
    fn decode_body(&self, format: FormatId, body: Bytes) -> Result<T, DecodeError> {
        check_format(self, format)?;
        self.decode_bytes(body)
    }
}

/// Checks that a frame whose `format` byte is `actual` can be read with `expected`.
///
/// The error names both formats: "body is in format protobuf (2), expected json (1)".
pub fn check_format<F: Format>(expected: &F, actual: FormatId) -> Result<(), DecodeError> {
    if expected.id() == actual {
        Ok(())
    } else {
        Err(DecodeError::wrong_format(expected.info(), actual))
    }
}
