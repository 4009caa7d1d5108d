//! `mcp-codec`: the sans-I/O frame and envelope codec of MCP 1.2, the binary
//! Microservice/Message Communication Protocol (not the Model Context Protocol).
//!
//! Bytes in, frames out; frames in, bytes out. No sockets, no clock, no tasks: the crate is
//! `#![no_std]` and its core path allocates nothing, so firmware and servers use the same
//! code. The wire format is described in `docs/protocol.md` of the repository.
//!
//! # Who should use this crate
//! - Firmware and anyone driving their own I/O: depend on it with
//!   `default-features = false` and use [`FrameDecoder`], the envelope views and their
//!   `encode` methods over your own buffers.
//! - Applications wanting a client or server should depend on `mcp-client` or `mcp-server`,
//!   which build on this crate.
//!
//! # Levels
//! - Frames: [`decode_frame`] / [`FrameDecoder`] check magic, version, length and CRC and
//!   borrow the payload; a short buffer is [`Decoded::NeedMore`], never an error.
//! - Envelopes: [`Envelope::parse`] validates a payload once and gives borrowed views
//!   ([`Request`], [`Response`], [`Notify`], ...) whose fields cannot fail afterwards; the
//!   same views encode, checking every rule before writing.
//! - Messages: [`MessageFrames`] splits a large body into CONTINUATION frames;
//!   [`Assembler`] (with `alloc`) puts them together under a size limit.
//!
//! # Features
//! - `std` (default): implies `alloc`, and detects at run time whether the CPU can compute
//!   the CRC by carry-less multiplication (PCLMULQDQ or VPCLMULQDQ on x86-64, PMULL on
//!   aarch64). Without `std` that path is compiled in only where the build enables those
//!   target features (`-C target-feature=+pclmulqdq,+ssse3`, or `+aes` on aarch64);
//!   otherwise the CRC uses a slice-by-16 table (8 KiB of read-only data), as it does on
//!   every other target and for runs under 48 bytes. The checksum is the same either way.
//! - `alloc`: [`StreamDecoder`] (a buffering decoder), [`Assembler`], owned envelopes.
//! - `bytes`: encode into any `bytes::BufMut`.
//!
//! # Panics
//! No input can make a decoding or parsing function panic, and encoding checks every length
//! before writing. This is exercised by property tests and fuzzing.
//!
//! # Unsafe code
//! One private module uses `unsafe`: the CRC kernels' SIMD intrinsics. Each kernel is
//! reachable only after its CPU features were detected, reads and writes only through
//! fixed-size arrays, and is tested against the `crc` crate at every length to 1 KiB and
//! every alignment; the rest of the crate denies `unsafe_code`.
//!
//! # Example
//! ```
//! use mcp_codec::{decode_frame, format, Decoded, Envelope, Flags, Metadata, Request};
//!
//! let request = Request {
//!     id: 1,
//!     flags: Flags::NONE,
//!     format: format::JSON,
//!     method: "echo",
//!     meta: Metadata::EMPTY,
//!     body: br#"{"msg":"hi"}"#,
//! };
//! let mut buf = [0u8; 64];
//! let len = request.encode(&mut buf)?;
//!
//! let Decoded::Frame { frame, len: used } = decode_frame(&buf[..len])? else {
//!     unreachable!("a whole frame is in the buffer");
//! };
//! assert_eq!(used, len);
//! assert_eq!(Envelope::parse(frame)?, Envelope::Request(request));
//! # Ok::<(), mcp_codec::Error>(())
//! ```
#![no_std]
#![warn(missing_docs)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod crc16;
mod envelope;
mod error;
mod frame;
mod meta;
mod read;

#[cfg(feature = "alloc")]
mod assemble;
#[cfg(feature = "alloc")]
mod owned;
#[cfg(feature = "alloc")]
mod stream;

pub use crc16::checksum;
pub use envelope::{
    Cancel, Continuation, Envelope, ErrorCode, ErrorFrame, Flags, GoAway, GoAwayCode,
    MAX_CHUNK_LEN, MessageFrames, Notify, Ping, Pong, Request, Response, format,
};
pub use error::Error;
pub use frame::{
    CRC_LEN, Decoded, FRAME_OVERHEAD, Frame, FrameDecoder, FrameType, HEADER_LEN, MAGIC,
    MAX_FRAME_LEN, MAX_PAYLOAD_LEN, SyncMode, VERSION, decode_frame,
};
pub use meta::{
    DEADLINE, MetaIter, MetaPair, Metadata, TRACEPARENT, TRACESTATE, deadline_ms_of, validate_key,
};

#[cfg(feature = "alloc")]
pub use assemble::{Assembled, Assembler, DEFAULT_MAX_MESSAGE_LEN};
#[cfg(feature = "alloc")]
pub use meta::OwnedMetaPair;
#[cfg(feature = "alloc")]
pub use owned::{OwnedEnvelope, OwnedNotify, OwnedRequest, OwnedResponse};
#[cfg(feature = "alloc")]
pub use stream::StreamDecoder;
