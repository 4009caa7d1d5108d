//! Body serialization formats for MCP, the binary framed microservice protocol.
//!
//! Every REQUEST, RESPONSE and NOTIFY frame carries a `format` byte that says how its body is
//! serialized (docs/protocol.md section 4): 0 raw bytes, 1 JSON, 2 Protobuf, 3..=127 reserved,
//! 128..=255 application-defined. This crate turns Rust values into bodies and back, one
//! pluggable format at a time.
//!
//! **Who uses it.** `mcp-client` and `mcp-server` use it generically, and re-export what
//! applications need; depend on it directly only to write your own format. It knows nothing of
//! frames, sockets or tokio, and it is the only crate of the workspace that knows serde and
//! prost.
//!
//! # The shape
//!
//! - [`Format`]: a format value (`Raw`, `Json`, `Protobuf`, or yours) with its wire
//!   [`FormatId`] and a name for errors.
//! - [`Encode<T>`] and [`Decode<T>`]: *which types* a format carries, one impl per type or
//!   blanket impl (`Json` for every `Serialize` type, `Protobuf` for every `prost::Message`).
//!   Encoding appends into a caller-owned reusable [`bytes::BytesMut`]; decoding reads a
//!   `&[u8]`, or a [`bytes::Bytes`] when the format can keep parts of it without copying.
//! - [`check_format`] / [`Decode::decode_body`]: reject a body whose `format` byte is not the
//!   expected one, with an error that names both formats.
//! - [`DecodeError`] / [`EncodeError`]: typed errors naming the format and the reason.
//!
//! Because the capability is a bound on the format, a client generic over its format can make
//! a typed call short and checked at compile time. This is the pattern `mcp-client` follows:
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use mcp_format::{Decode, DecodeError, Encode, EncodeError, Format, Json, Protobuf};
//!
//! /// A toy client whose "server" echoes every request body.
//! struct Client<F: Format = Json> {
//!     format: F,
//!     scratch: BytesMut,
//! }
//!
//! #[derive(Debug)]
//! enum CallError {
//!     Encode(EncodeError),
//!     Decode(DecodeError),
//! }
//!
//! impl<F: Format> Client<F> {
//!     /// A call in the client's own format.
//!     fn call<Req: ?Sized, Resp>(&mut self, method: &str, req: &Req) -> Result<Resp, CallError>
//!     where
//!         F: Encode<Req> + Decode<Resp>,
//!     {
//!         let format = self.format.clone();
//!         self.call_with(&format, method, req)
//!     }
//!
//!     /// A call that overrides the format.
//!     fn call_with<G, Req: ?Sized, Resp>(
//!         &mut self,
//!         format: &G,
//!         _method: &str,
//!         req: &Req,
//!     ) -> Result<Resp, CallError>
//!     where
//!         G: Encode<Req> + Decode<Resp>,
//!     {
//!         let body: Bytes = format.encode_to_bytes(req, &mut self.scratch).map_err(CallError::Encode)?;
//!         // ... a REQUEST frame with `format.id()` and `body` goes out; the RESPONSE comes back
//!         // with its own format byte (here, the same) and body.
//!         let (answer_format, answer_body) = (format.id(), body);
//!         format.decode_body(answer_format, answer_body).map_err(CallError::Decode)
//!     }
//! }
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Greeting {
//!     text: String,
//! }
//!
//! let mut client = Client { format: Json, scratch: BytesMut::new() };
//! let hi = Greeting { text: "hi".into() };
//! let back: Greeting = client.call("echo", &hi)?;
//! assert_eq!(back, hi);
//!
//! // Override the format for one call: a prost message as Protobuf.
//! let n: u64 = client.call_with(&Protobuf, "echo", &42u64)?;
//! assert_eq!(n, 42);
//! # Ok::<(), CallError>(())
//! ```
//!
//! A type the format cannot carry does not compile:
//!
//! ```compile_fail
//! use bytes::BytesMut;
//! use mcp_format::{Encode, Protobuf};
//!
//! #[derive(serde::Serialize)]
//! struct NotAMessage {
//!     text: String,
//! }
//!
//! // error: `NotAMessage` is not a `prost::Message`, so `Protobuf: Encode<NotAMessage>` fails.
//! Protobuf.encode(&NotAMessage { text: "hi".into() }, &mut BytesMut::new());
//! ```
//!
//! # Writing your own format
//!
//! Implement [`Format`] (with an id in 128..=255), then [`Encode<T>`] and [`Decode<T>`] for the
//! types it carries, in your own crate. The tests of this crate add CBOR that way
//! (`tests/user_defined.rs`).
//!
//! # Features
//!
//! - `json` (default): [`Json`], format 1, through `serde` and `serde_json`.
//! - `protobuf` (default): [`Protobuf`], format 2, through `prost`.
//!
//! [`Raw`], format 0, is always available.
//!
//! # Guarantees
//!
//! Decoding never panics on any input, and this crate has no `unsafe` code. The format layer
//! copies a body's bytes only as part of serialization itself: encoders write into the
//! caller's buffer, [`Encode::encode_to_bytes`] splits it without copying, and decoders read
//! the transport's buffer in place.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod format;
mod id;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "protobuf")]
mod protobuf;
mod raw;

pub use crate::error::{BoxError, DecodeError, DecodeErrorKind, EncodeError};
pub use crate::format::{Decode, Encode, Format, check_format};
pub use crate::id::{FormatId, FormatInfo};
#[cfg(feature = "json")]
pub use crate::json::Json;
#[cfg(feature = "protobuf")]
pub use crate::protobuf::Protobuf;
pub use crate::raw::Raw;
