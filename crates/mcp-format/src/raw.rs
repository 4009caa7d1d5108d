//! Format 0: the body's bytes as they are.

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::format::{Decode, Encode, Format};
use crate::id::FormatId;

/// Raw bytes (format 0): the body is the value's bytes, untouched.
///
/// Encodes anything that is a byte string: `[u8]`, `[u8; N]`, `Vec<u8>`, `str`, `String`,
/// [`Bytes`], [`BytesMut`], and references to these. Decodes into [`Bytes`] (without copying,
/// through [`Decode::decode_bytes`]), `Vec<u8>`, `String` (which must be UTF-8) and `()`
/// (which must be empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Raw;

impl Format for Raw {
    fn id(&self) -> FormatId {
        FormatId::RAW
    }

    fn name(&self) -> &'static str {
        "raw"
    }
}

macro_rules! raw_encode {
    ($($ty:ty),* $(,)?) => {$(
        impl Encode<$ty> for Raw {
            fn encode(&self, value: &$ty, buf: &mut BytesMut) -> Result<(), EncodeError> {
                let bytes: &[u8] = value.as_ref();
                buf.extend_from_slice(bytes);
                Ok(())
            }
        }
    )*};
}

raw_encode!([u8], str, Vec<u8>, String, BytesMut);

impl<const N: usize> Encode<[u8; N]> for Raw {
    fn encode(&self, value: &[u8; N], buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.extend_from_slice(value);
        Ok(())
    }
}

impl<T: ?Sized> Encode<&T> for Raw
where
    Raw: Encode<T>,
{
    fn encode(&self, value: &&T, buf: &mut BytesMut) -> Result<(), EncodeError> {
        <Raw as Encode<T>>::encode(self, value, buf)
    }

    fn encode_to_bytes(&self, value: &&T, buf: &mut BytesMut) -> Result<Bytes, EncodeError> {
        <Raw as Encode<T>>::encode_to_bytes(self, value, buf)
    }
}

impl Encode<Bytes> for Raw {
    fn encode(&self, value: &Bytes, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.extend_from_slice(value);
        Ok(())
    }

    /// Zero copy: with an empty `buf`, the body *is* `value` (a reference-count increment).
    fn encode_to_bytes(&self, value: &Bytes, buf: &mut BytesMut) -> Result<Bytes, EncodeError> {
        if buf.is_empty() {
            Ok(value.clone())
        } else {
            self.encode(value, buf)?;
            Ok(buf.split().freeze())
        }
    }
}

impl Decode<Bytes> for Raw {
    fn decode(&self, body: &[u8]) -> Result<Bytes, DecodeError> {
        Ok(Bytes::copy_from_slice(body))
    }

    fn decode_bytes(&self, body: Bytes) -> Result<Bytes, DecodeError> {
        Ok(body)
    }
}

impl Decode<Vec<u8>> for Raw {
    fn decode(&self, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(body.to_vec())
    }

    fn decode_bytes(&self, body: Bytes) -> Result<Vec<u8>, DecodeError> {
        // Reuses the allocation when `body` is its only owner.
        Ok(Vec::from(body))
    }
}

impl Decode<String> for Raw {
    fn decode(&self, body: &[u8]) -> Result<String, DecodeError> {
        match core::str::from_utf8(body) {
            Ok(text) => Ok(text.to_owned()),
            Err(err) => Err(DecodeError::not_utf8(self.info(), err)),
        }
    }

    fn decode_bytes(&self, body: Bytes) -> Result<String, DecodeError> {
        String::from_utf8(Vec::from(body))
            .map_err(|err| DecodeError::not_utf8(self.info(), err.utf8_error()))
    }
}

impl Decode<()> for Raw {
    fn decode(&self, body: &[u8]) -> Result<(), DecodeError> {
        if body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::invalid(
                self.info(),
                format!("expected an empty body, got {} bytes", body.len()),
            ))
        }
    }
}
