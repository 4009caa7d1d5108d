//! Format 1: JSON through `serde_json`.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, EncodeError};
use crate::format::{Decode, Encode, Format};
use crate::id::FormatId;

/// JSON in UTF-8 (format 1), for every `serde::Serialize` / `serde::de::DeserializeOwned` type.
///
/// Encoding writes compact JSON straight into the caller's buffer, with no intermediate
/// `Vec` or `String`. Decoding first checks that the body is UTF-8 (so a non-UTF-8 body is a
/// [`NotUtf8`](crate::DecodeErrorKind::NotUtf8) error that says where, not a confusing syntax
/// error), then parses it, with `serde_json`'s recursion limit guarding the stack against
/// deeply nested input. An empty body decodes as JSON `null`: `None`, `()` or a unit struct,
/// and an error for types that need a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Json;

impl Format for Json {
    fn id(&self) -> FormatId {
        FormatId::JSON
    }

    fn name(&self) -> &'static str {
        "json"
    }
}

impl<T: Serialize + ?Sized> Encode<T> for Json {
    fn encode(&self, value: &T, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        match serde_json::to_writer((&mut *buf).writer(), value) {
            Ok(()) => Ok(()),
            Err(err) => {
                // A `Serialize` impl can fail half-way; do not leave half a value behind.
                buf.truncate(start);
                Err(EncodeError::new(self.info(), err))
            }
        }
    }
}

impl<T: DeserializeOwned> Decode<T> for Json {
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError> {
        let text = if body.is_empty() {
            "null"
        } else {
            core::str::from_utf8(body).map_err(|err| DecodeError::not_utf8(self.info(), err))?
        };
        serde_json::from_str(text).map_err(|err| DecodeError::invalid(self.info(), err))
    }
}
