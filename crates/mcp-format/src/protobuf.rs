//! Format 2: Protocol Buffers through `prost`.

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::format::{Decode, Encode, Format};
use crate::id::FormatId;

/// Protocol Buffers (format 2), for every `prost::Message` type, such as the code `prost-build`
/// generates from a `.proto` file.
///
/// Encoding reserves the exact encoded length once, then writes straight into the caller's
/// buffer. Decoding rejects truncated input, bad wire types, invalid UTF-8 in `string` fields
/// and nesting deeper than prost's recursion limit, with a [`DecodeError`]; it never panics. An
/// empty body is the default message, as in Protobuf itself. Decoding from [`Bytes`] (what
/// [`Decode::decode_bytes`] gets) lets `bytes` fields generated as `bytes::Bytes` share the
/// body's buffer instead of copying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Protobuf;

impl Format for Protobuf {
    fn id(&self) -> FormatId {
        FormatId::PROTOBUF
    }

    fn name(&self) -> &'static str {
        "protobuf"
    }
}

impl<T: prost::Message> Encode<T> for Protobuf {
    fn encode(&self, value: &T, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.reserve(value.encoded_len());
        // `BytesMut` grows on demand, so prost's "buffer too small" error cannot happen; it is
        // mapped rather than unwrapped all the same.
        value
            .encode(buf)
            .map_err(|err| EncodeError::new(self.info(), err))
    }
}

impl<T: prost::Message + Default> Decode<T> for Protobuf {
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError> {
        T::decode(body).map_err(|err| DecodeError::invalid(self.info(), err))
    }

    fn decode_bytes(&self, body: Bytes) -> Result<T, DecodeError> {
        T::decode(body).map_err(|err| DecodeError::invalid(self.info(), err))
    }
}
