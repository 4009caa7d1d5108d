//! Borrowed, validated views of every payload, and their writers.
//!
//! Each view has public fields: a receiver gets one from [`Envelope::parse`] (which checks
//! every rule of docs/protocol.md section 4 once, so no accessor can fail or panic later), and a
//! sender fills one in and calls `encode` (which checks the same rules before writing a
//! byte).

use core::fmt;

use crate::Error;
use crate::frame::{
    FRAME_OVERHEAD, Frame, FrameType, MAX_PAYLOAD_LEN, PayloadWriter, Sink, SliceSink, write_frame,
};
use crate::meta::Metadata;
use crate::read::Reader;

/// The flags byte of REQUEST, RESPONSE, NOTIFY and CONTINUATION.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// Bit 0: a CONTINUATION frame follows.
    pub const MORE: Flags = Flags(0x01);
    /// No flag set.
    pub const NONE: Flags = Flags(0);

    /// Reads a flags byte, refusing reserved bits.
    pub const fn from_wire(byte: u8) -> Result<Self, Error> {
        if byte & !Self::MORE.0 != 0 {
            return Err(Error::ReservedFlags(byte));
        }
        Ok(Flags(byte))
    }

    /// Whether MORE is set.
    pub const fn more(self) -> bool {
        self.0 & Self::MORE.0 != 0
    }

    /// These flags with MORE set or cleared.
    pub const fn with_more(self, more: bool) -> Self {
        if more {
            Flags(self.0 | Self::MORE.0)
        } else {
            Flags(self.0 & !Self::MORE.0)
        }
    }

    /// The byte on the wire.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.more() {
            f.write_str("Flags(MORE)")
        } else {
            f.write_str("Flags(0)")
        }
    }
}

/// Well-known values of the `format` byte (docs/protocol.md section 4).
pub mod format {
    /// Raw bytes.
    pub const RAW: u8 = 0;
    /// JSON, UTF-8.
    pub const JSON: u8 = 1;
    /// Protocol Buffers.
    pub const PROTOBUF: u8 = 2;
    /// The first application-defined format id; 3..=127 are reserved.
    pub const FIRST_USER_DEFINED: u8 = 128;
}

/// An ERROR code (docs/protocol.md section 6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The payload broke the protocol's rules.
    pub const MALFORMED: Self = Self(1);
    /// No handler for the method.
    pub const UNKNOWN_METHOD: Self = Self(2);
    /// The body's format is not supported.
    pub const UNSUPPORTED_FORMAT: Self = Self(3);
    /// The caller's deadline passed before work started.
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    /// Not processed: too busy.
    pub const OVERLOADED: Self = Self(5);
    /// Not processed: shutting down.
    pub const UNAVAILABLE: Self = Self(6);
    /// A size limit was exceeded.
    pub const TOO_LARGE: Self = Self(7);
    /// Ended on the server's side.
    pub const CANCELLED: Self = Self(8);
    /// The handler failed.
    pub const INTERNAL: Self = Self(9);
    /// Not processed: no credentials, or invalid ones. Not retried.
    pub const UNAUTHENTICATED: Self = Self(10);
    /// Not processed: valid credentials, but this call is not allowed. Not retried.
    pub const PERMISSION_DENIED: Self = Self(11);
    /// The first application-defined code.
    pub const FIRST_APPLICATION: Self = Self(1000);

    /// The protocol's name for the code, or `None` for unassigned and application codes.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "MALFORMED",
            2 => "UNKNOWN_METHOD",
            3 => "UNSUPPORTED_FORMAT",
            4 => "DEADLINE_EXCEEDED",
            5 => "OVERLOADED",
            6 => "UNAVAILABLE",
            7 => "TOO_LARGE",
            8 => "CANCELLED",
            9 => "INTERNAL",
            10 => "UNAUTHENTICATED",
            11 => "PERMISSION_DENIED",
            _ => return None,
        })
    }

    /// Whether the code is application-defined (1000..=65535).
    pub const fn is_application(self) -> bool {
        self.0 >= 1000
    }

    /// Whether the server says the request was not processed and another attempt is safe
    /// whatever the method (OVERLOADED, UNAVAILABLE).
    pub const fn is_not_processed(self) -> bool {
        matches!(self.0, 5 | 6)
    }

    /// Whether the server refused the caller itself (UNAUTHENTICATED, PERMISSION_DENIED): the
    /// request was not processed, but the same credentials will be refused again, so no
    /// attempt follows (docs/protocol.md section 6).
    pub const fn is_refused_caller(self) -> bool {
        matches!(self.0, 10 | 11)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{}({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// `2 (UNKNOWN_METHOD)`, or the bare number for a code without a name.
impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A GOAWAY code (docs/protocol.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayCode(pub u16);

impl GoAwayCode {
    /// The sender is shutting down.
    pub const SHUTTING_DOWN: Self = Self(0);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// The sender is overloaded.
    pub const OVERLOADED: Self = Self(2);
    /// The connection was idle.
    pub const IDLE: Self = Self(3);
}

/// REQUEST: `id u32 | flags u8 | format u8 | method_len u8 | method | meta | body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request id, never 0.
    pub id: u32,
    /// MORE when CONTINUATION frames follow.
    pub flags: Flags,
    /// How the body is serialized.
    pub format: u8,
    /// The method, 1..=255 bytes of UTF-8.
    pub method: &'a str,
    /// Metadata entries.
    pub meta: Metadata<'a>,
    /// The body, or its first part when MORE is set.
    pub body: &'a [u8],
}

/// RESPONSE: `id u32 | flags u8 | format u8 | meta | body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The id of the request answered.
    pub id: u32,
    /// MORE when CONTINUATION frames follow.
    pub flags: Flags,
    /// How the body is serialized.
    pub format: u8,
    /// Metadata entries.
    pub meta: Metadata<'a>,
    /// The body, or its first part when MORE is set.
    pub body: &'a [u8],
}

/// NOTIFY: `flags u8 | format u8 | topic_len u8 | topic | meta | body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify<'a> {
    /// MORE when CONTINUATION frames follow.
    pub flags: Flags,
    /// How the body is serialized.
    pub format: u8,
    /// The topic, 1..=255 bytes of UTF-8.
    pub topic: &'a str,
    /// Metadata entries.
    pub meta: Metadata<'a>,
    /// The body, or its first part when MORE is set.
    pub body: &'a [u8],
}

/// ERROR: `id u32 | code u16 | message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// The failed request's id; 0 for the connection as a whole.
    pub id: u32,
    /// What went wrong.
    pub code: ErrorCode,
    /// A human-readable message, possibly empty.
    pub message: &'a str,
}

/// PING: 8 opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// The bytes the PONG echoes.
    pub nonce: [u8; 8],
}

/// PONG: the 8 bytes of the PING it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The echoed PING bytes.
    pub nonce: [u8; 8],
}

/// CANCEL: `id u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    /// The request given up on.
    pub id: u32,
}

/// GOAWAY: `last_id u32 | code u16 | reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway<'a> {
    /// The last request id the sender accepted.
    pub last_id: u32,
    /// Why.
    pub code: GoAwayCode,
    /// A human-readable reason, possibly empty.
    pub reason: &'a str,
}

/// CONTINUATION: `flags u8 | chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation<'a> {
    /// MORE unless this is the message's last frame.
    pub flags: Flags,
    /// Further body bytes, at least one.
    pub chunk: &'a [u8],
}

/// The payload of any known frame type, parsed and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// REQUEST.
    Request(Request<'a>),
    /// RESPONSE.
    Response(Response<'a>),
    /// NOTIFY.
    Notify(Notify<'a>),
    /// ERROR.
    Error(ErrorFrame<'a>),
    /// PING.
    Ping(Ping),
    /// PONG.
    Pong(Pong),
    /// CANCEL.
    Cancel(Cancel),
    /// GOAWAY.
    GoAway(GoAway<'a>),
    /// CONTINUATION.
    Continuation(Continuation<'a>),
}

fn read_id(r: &mut Reader<'_>) -> Result<u32, Error> {
    match r.u32("id")? {
        0 => Err(Error::ZeroId),
        id => Ok(id),
    }
}

fn read_flags(r: &mut Reader<'_>) -> Result<Flags, Error> {
    Flags::from_wire(r.u8("flags")?)
}

/// A request id read from its four bytes: never 0.
#[inline(always)]
fn nonzero_id(bytes: [u8; 4]) -> Result<u32, Error> {
    match u32::from_be_bytes(bytes) {
        0 => Err(Error::ZeroId),
        id => Ok(id),
    }
}

/// The error for a payload shorter than its message's fixed fields: `read` reads them in
/// wire order, as a reader would, and fails at the first field cut short or checked
/// wrong. (A payload this short always fails one of them.)
#[cold]
#[inline(never)]
fn short_head<T>(payload: &[u8], read: impl FnOnce(&mut Reader<'_>) -> Result<T, Error>) -> Error {
    read(&mut Reader::new(payload))
        .err()
        .unwrap_or(Error::Truncated { field: "envelope" })
}

/// A method or topic whose one-byte length `len` was read: 1..=255 bytes of UTF-8 at the
/// front of `rest`, and what follows it. The checks and errors of `Reader::short_str`.
#[inline(always)]
fn short_str<'a>(
    len: u8,
    rest: &'a [u8],
    field: &'static str,
) -> Result<(&'a str, &'a [u8]), Error> {
    if len == 0 {
        return Err(Error::Empty { field });
    }
    let Some((text, rest)) = rest.split_at_checked(usize::from(len)) else {
        return Err(Error::Truncated { field });
    };
    match core::str::from_utf8(text) {
        Ok(text) => Ok((text, rest)),
        Err(_) => Err(Error::InvalidUtf8 { field }),
    }
}

fn read_text<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, Error> {
    core::str::from_utf8(r.rest()).map_err(|_| Error::InvalidUtf8 { field })
}

fn nonce(payload: &[u8]) -> Result<[u8; 8], Error> {
    <[u8; 8]>::try_from(payload).map_err(|_| Error::BadPingLength { len: payload.len() })
}

fn short_len(field: &'static str, s: &str) -> Result<usize, Error> {
    match s.len() {
        0 => Err(Error::Empty { field }),
        n @ 1..=255 => Ok(n),
        len => Err(Error::FieldTooLong {
            field,
            len,
            max: 255,
        }),
    }
}

/// Refuses a payload the length field cannot announce, before any buffer is looked at:
/// such a frame can never be written, whatever room the caller has.
fn checked_payload_len(len: usize) -> Result<usize, Error> {
    if len > MAX_PAYLOAD_LEN {
        return Err(Error::FrameTooLarge {
            len,
            limit: MAX_PAYLOAD_LEN,
        });
    }
    Ok(len)
}

fn nonzero(id: u32) -> Result<(), Error> {
    if id == 0 { Err(Error::ZeroId) } else { Ok(()) }
}

impl<'a> Request<'a> {
    /// Parses a REQUEST payload.
    #[inline]
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        // The fixed fields under one bounds check, each checked in wire order.
        let Some((&[a, b, c, d, flags, format, method_len], rest)) = payload.split_first_chunk()
        else {
            return Err(short_head(payload, |r| {
                read_id(r)?;
                read_flags(r)?;
                r.u8("format")?;
                r.u8("method")
            }));
        };
        let id = nonzero_id([a, b, c, d])?;
        let flags = Flags::from_wire(flags)?;
        let (method, rest) = short_str(method_len, rest, "method")?;
        let (meta, body) = Metadata::split(rest)?;
        Ok(Request {
            id,
            flags,
            format,
            method,
            meta,
            body,
        })
    }

    /// The id of a REQUEST payload too malformed to parse, if it can be read and is not 0:
    /// the receiver then answers ERROR with that id and keeps the connection.
    pub fn peek_id(payload: &[u8]) -> Option<u32> {
        let id = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
        (id != 0).then_some(id)
    }

    /// Payload bytes before the body.
    fn envelope_len(&self) -> Result<usize, Error> {
        nonzero(self.id)?;
        Ok(4 + 1 + 1 + 1 + short_len("method", self.method)? + self.meta.encoded_len()?)
    }

    #[inline]
    fn write_envelope<S: Sink>(&self, w: &mut PayloadWriter<'_, S>, flags: Flags) {
        let [a, b, c, d] = self.id.to_be_bytes();
        // Lossless cast: the method's length was checked by `envelope_len`.
        let method_len = self.method.len() as u8;
        w.put_gathered(&[a, b, c, d, flags.bits(), self.format, method_len]);
        w.put_gathered(self.method.as_bytes());
        self.meta.write(w);
    }
}

impl<'a> Response<'a> {
    /// Parses a RESPONSE payload.
    #[inline]
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        // The fixed fields under one bounds check, each checked in wire order.
        let Some((&[a, b, c, d, flags, format], rest)) = payload.split_first_chunk() else {
            return Err(short_head(payload, |r| {
                read_id(r)?;
                read_flags(r)?;
                r.u8("format")
            }));
        };
        let id = nonzero_id([a, b, c, d])?;
        let flags = Flags::from_wire(flags)?;
        let (meta, body) = Metadata::split(rest)?;
        Ok(Response {
            id,
            flags,
            format,
            meta,
            body,
        })
    }

    fn envelope_len(&self) -> Result<usize, Error> {
        nonzero(self.id)?;
        Ok(4 + 1 + 1 + self.meta.encoded_len()?)
    }

    #[inline]
    fn write_envelope<S: Sink>(&self, w: &mut PayloadWriter<'_, S>, flags: Flags) {
        let [a, b, c, d] = self.id.to_be_bytes();
        w.put_gathered(&[a, b, c, d, flags.bits(), self.format]);
        self.meta.write(w);
    }
}

impl<'a> Notify<'a> {
    /// Parses a NOTIFY payload.
    #[inline]
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        // The fixed fields under one bounds check, each checked in wire order.
        let Some((&[flags, format, topic_len], rest)) = payload.split_first_chunk() else {
            return Err(short_head(payload, |r| {
                read_flags(r)?;
                r.u8("format")?;
                r.u8("topic")
            }));
        };
        let flags = Flags::from_wire(flags)?;
        let (topic, rest) = short_str(topic_len, rest, "topic")?;
        let (meta, body) = Metadata::split(rest)?;
        Ok(Notify {
            flags,
            format,
            topic,
            meta,
            body,
        })
    }

    fn envelope_len(&self) -> Result<usize, Error> {
        Ok(1 + 1 + 1 + short_len("topic", self.topic)? + self.meta.encoded_len()?)
    }

    #[inline]
    fn write_envelope<S: Sink>(&self, w: &mut PayloadWriter<'_, S>, flags: Flags) {
        // Lossless cast: the topic's length was checked by `envelope_len`.
        w.put_gathered(&[flags.bits(), self.format, self.topic.len() as u8]);
        w.put_gathered(self.topic.as_bytes());
        self.meta.write(w);
    }
}

impl<'a> ErrorFrame<'a> {
    /// Parses an ERROR payload. Id 0 is allowed: it means the whole connection.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(payload);
        Ok(ErrorFrame {
            id: r.u32("id")?,
            code: ErrorCode(r.u16("code")?),
            message: read_text(&mut r, "error message")?,
        })
    }
}

impl<'a> GoAway<'a> {
    /// Parses a GOAWAY payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(payload);
        Ok(GoAway {
            last_id: r.u32("last id")?,
            code: GoAwayCode(r.u16("code")?),
            reason: read_text(&mut r, "goaway reason")?,
        })
    }
}

impl Cancel {
    /// Parses a CANCEL payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(payload);
        let id = read_id(&mut r)?;
        match r.rest().len() {
            0 => Ok(Cancel { id }),
            extra => Err(Error::TrailingBytes {
                frame: "CANCEL",
                extra,
            }),
        }
    }
}

impl<'a> Continuation<'a> {
    /// Parses a CONTINUATION payload; the chunk must not be empty.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(payload);
        let flags = read_flags(&mut r)?;
        let chunk = r.rest();
        if chunk.is_empty() {
            return Err(Error::Empty {
                field: "continuation chunk",
            });
        }
        Ok(Continuation { flags, chunk })
    }
}

impl<'a> Envelope<'a> {
    /// Parses and validates the payload of a frame of a known type.
    ///
    /// A frame of an unknown type gives [`Error::UnexpectedFrame`]; receivers that skip
    /// unknown frames check [`Frame::frame_type`] first.
    pub fn parse(frame: Frame<'a>) -> Result<Self, Error> {
        let payload = frame.payload();
        let Some(frame_type) = frame.frame_type() else {
            return Err(Error::UnexpectedFrame {
                frame_type: frame.type_byte(),
                context: "unknown frame type",
            });
        };
        Ok(match frame_type {
            FrameType::Request => Envelope::Request(Request::parse(payload)?),
            FrameType::Response => Envelope::Response(Response::parse(payload)?),
            FrameType::Notify => Envelope::Notify(Notify::parse(payload)?),
            FrameType::Error => Envelope::Error(ErrorFrame::parse(payload)?),
            FrameType::Ping => Envelope::Ping(Ping {
                nonce: nonce(payload)?,
            }),
            FrameType::Pong => Envelope::Pong(Pong {
                nonce: nonce(payload)?,
            }),
            FrameType::Cancel => Envelope::Cancel(Cancel::parse(payload)?),
            FrameType::GoAway => Envelope::GoAway(GoAway::parse(payload)?),
            FrameType::Continuation => Envelope::Continuation(Continuation::parse(payload)?),
        })
    }

    /// The frame type this envelope travels in.
    pub const fn frame_type(&self) -> FrameType {
        match self {
            Envelope::Request(_) => FrameType::Request,
            Envelope::Response(_) => FrameType::Response,
            Envelope::Notify(_) => FrameType::Notify,
            Envelope::Error(_) => FrameType::Error,
            Envelope::Ping(_) => FrameType::Ping,
            Envelope::Pong(_) => FrameType::Pong,
            Envelope::Cancel(_) => FrameType::Cancel,
            Envelope::GoAway(_) => FrameType::GoAway,
            Envelope::Continuation(_) => FrameType::Continuation,
        }
    }

    /// The body of a REQUEST, RESPONSE or NOTIFY (its first part when MORE is set).
    pub const fn body(&self) -> Option<&'a [u8]> {
        match self {
            Envelope::Request(m) => Some(m.body),
            Envelope::Response(m) => Some(m.body),
            Envelope::Notify(m) => Some(m.body),
            _ => None,
        }
    }

    /// The flags of a frame that has them.
    pub const fn flags(&self) -> Option<Flags> {
        match self {
            Envelope::Request(m) => Some(m.flags),
            Envelope::Response(m) => Some(m.flags),
            Envelope::Notify(m) => Some(m.flags),
            Envelope::Continuation(m) => Some(m.flags),
            _ => None,
        }
    }

    /// Bytes of the payload before the body (for messages), or the whole payload; checks
    /// every field as it goes.
    pub(crate) fn head_len(&self) -> Result<usize, Error> {
        Ok(match self {
            Envelope::Request(m) => m.envelope_len()?,
            Envelope::Response(m) => m.envelope_len()?,
            Envelope::Notify(m) => m.envelope_len()?,
            Envelope::Error(m) => 6 + m.message.len(),
            Envelope::Ping(_) | Envelope::Pong(_) => 8,
            Envelope::Cancel(m) => {
                nonzero(m.id)?;
                4
            }
            Envelope::GoAway(m) => 6 + m.reason.len(),
            Envelope::Continuation(m) => {
                if m.chunk.is_empty() {
                    return Err(Error::Empty {
                        field: "continuation chunk",
                    });
                }
                1 + m.chunk.len()
            }
        })
    }

    /// Payload bytes of this envelope in one frame, or an error if a field is invalid.
    pub fn payload_len(&self) -> Result<usize, Error> {
        Ok(self.head_len()? + self.body().map_or(0, <[u8]>::len))
    }

    /// Bytes the whole frame takes on the wire.
    pub fn encoded_len(&self) -> Result<usize, Error> {
        Ok(self.payload_len()? + FRAME_OVERHEAD)
    }

    /// Encodes this envelope as one frame at the front of `out`, returning its length.
    ///
    /// Every field is checked first; on error nothing meaningful is written. A body too
    /// large for one frame gives [`Error::FrameTooLarge`]: use [`MessageFrames`] to split
    /// it into CONTINUATION frames.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        let payload_len = checked_payload_len(self.payload_len()?)?;
        let mut sink = SliceSink::new(out, payload_len + FRAME_OVERHEAD)?;
        self.write_one(&mut sink, payload_len, None)?;
        Ok(sink.pos)
    }

    /// Appends this envelope as one frame to `out`.
    #[cfg(feature = "alloc")]
    pub fn encode_to_vec(&self, out: &mut alloc::vec::Vec<u8>) -> Result<usize, Error> {
        let len = checked_payload_len(self.payload_len()?)?;
        out.reserve(len + FRAME_OVERHEAD);
        self.write_one(out, len, None)?;
        Ok(len + FRAME_OVERHEAD)
    }

    /// Appends this envelope as one frame to a `BytesMut`, growing it as needed.
    ///
    /// Faster than [`Envelope::encode_to_buf`] for small frames: the fields written are
    /// read back and fed to the CRC as one run, where a write-only `BufMut` takes a CRC run
    /// for each field. On error, `out` may hold part of a frame: truncate it to its length
    /// before the call.
    #[cfg(feature = "bytes")]
    pub fn encode_to_bytes(&self, out: &mut bytes::BytesMut) -> Result<usize, Error> {
        let len = checked_payload_len(self.payload_len()?)?;
        out.reserve(len + FRAME_OVERHEAD);
        self.write_one(out, len, None)?;
        Ok(len + FRAME_OVERHEAD)
    }

    /// Appends this envelope as one frame to a `bytes::BufMut`.
    #[cfg(feature = "bytes")]
    pub fn encode_to_buf<B: bytes::BufMut>(&self, out: &mut B) -> Result<usize, Error> {
        let len = checked_payload_len(self.payload_len()?)?;
        let needed = len + FRAME_OVERHEAD;
        if out.remaining_mut() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                available: out.remaining_mut(),
            });
        }
        self.write_one(&mut crate::frame::BufSink(out), len, None)?;
        Ok(needed)
    }

    /// Writes one frame; `body_override` replaces the body (and sets MORE) for the head
    /// frame of a split message.
    fn write_one<S: Sink>(
        &self,
        sink: &mut S,
        payload_len: usize,
        split: Option<(&[u8], bool)>,
    ) -> Result<(), Error> {
        let ty = self.frame_type().as_u8();
        let (body, more) = match split {
            Some((body, more)) => (body, Some(more)),
            None => (self.body().unwrap_or(&[]), None),
        };
        let flags = |f: Flags| more.map_or(f, |m| f.with_more(m));
        write_frame(sink, ty, payload_len, |w| match self {
            Envelope::Request(m) => {
                m.write_envelope(w, flags(m.flags));
                w.put(body);
            }
            Envelope::Response(m) => {
                m.write_envelope(w, flags(m.flags));
                w.put(body);
            }
            Envelope::Notify(m) => {
                m.write_envelope(w, flags(m.flags));
                w.put(body);
            }
            Envelope::Error(m) => {
                w.put_u32(m.id);
                w.put_u16(m.code.0);
                w.put(m.message.as_bytes());
            }
            Envelope::Ping(Ping { nonce }) | Envelope::Pong(Pong { nonce }) => w.put(nonce),
            Envelope::Cancel(m) => w.put_u32(m.id),
            Envelope::GoAway(m) => {
                w.put_u32(m.last_id);
                w.put_u16(m.code.0);
                w.put(m.reason.as_bytes());
            }
            Envelope::Continuation(m) => {
                w.put_u8(m.flags.bits());
                w.put(m.chunk);
            }
        })
    }
}

macro_rules! into_envelope {
    ($($ty:ident $(<$lt:lifetime>)? => $variant:ident),* $(,)?) => {$(
        impl<'a> From<$ty $(<$lt>)?> for Envelope<'a> {
            fn from(v: $ty $(<$lt>)?) -> Self {
                Envelope::$variant(v)
            }
        }
        impl<'a> $ty $(<$lt>)? {
            /// Encodes this payload as one whole frame at the front of `out`.
            pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
                Envelope::from(*self).encode(out)
            }
            /// Bytes the whole frame takes on the wire.
            pub fn encoded_len(&self) -> Result<usize, Error> {
                Envelope::from(*self).encoded_len()
            }
        }
    )*};
}

into_envelope! {
    Request<'a> => Request,
    Response<'a> => Response,
    Notify<'a> => Notify,
    ErrorFrame<'a> => Error,
    Ping => Ping,
    Pong => Pong,
    Cancel => Cancel,
    GoAway<'a> => GoAway,
    Continuation<'a> => Continuation,
}

/// The largest CONTINUATION chunk: a full payload less the flags byte.
pub const MAX_CHUNK_LEN: usize = MAX_PAYLOAD_LEN - 1;

/// Splits one message (REQUEST, RESPONSE or NOTIFY) of any body size into a head frame and
/// CONTINUATION frames, writing one frame at a time into the caller's buffer.
///
/// The head frame carries the whole envelope and fills the rest of its payload with body;
/// every CONTINUATION but the last carries [`MAX_CHUNK_LEN`] bytes (docs/protocol.md section 5).
/// A body that fits in one frame gives exactly one frame, MORE cleared.
#[derive(Debug, Clone)]
pub struct MessageFrames<'a> {
    envelope: Envelope<'a>,
    body: &'a [u8],
    head_len: usize,
    /// Body bytes already written.
    offset: usize,
    head_done: bool,
}

impl<'a> MessageFrames<'a> {
    /// Prepares to encode `envelope`, whose `body` is the whole message body.
    ///
    /// Fails if a field is invalid, if the envelope is not a message, or if the envelope
    /// without its body does not fit in one frame ([`Error::EnvelopeTooLarge`]).
    pub fn new(envelope: Envelope<'a>) -> Result<Self, Error> {
        let Some(body) = envelope.body() else {
            return Err(Error::UnexpectedFrame {
                frame_type: envelope.frame_type().as_u8(),
                context: "only REQUEST, RESPONSE and NOTIFY can span frames",
            });
        };
        let head_len = envelope.head_len()?;
        // The head must hold the envelope and, when the body continues, at least one body
        // byte, so that no frame is spent on the envelope alone. An empty body needs no
        // room: the limit reported is then the whole payload.
        let room = usize::from(!body.is_empty() && head_len + body.len() > MAX_PAYLOAD_LEN);
        if head_len + room > MAX_PAYLOAD_LEN {
            return Err(Error::EnvelopeTooLarge {
                len: head_len,
                max: MAX_PAYLOAD_LEN - room,
            });
        }
        Ok(MessageFrames {
            envelope,
            body,
            head_len,
            offset: 0,
            head_done: false,
        })
    }

    /// Body bytes carried by the head frame.
    fn head_body_len(&self) -> usize {
        self.body.len().min(MAX_PAYLOAD_LEN - self.head_len)
    }

    /// The number of frames the message takes.
    pub fn frame_count(&self) -> usize {
        let rest = self.body.len() - self.head_body_len();
        1 + rest.div_ceil(MAX_CHUNK_LEN)
    }

    /// Total bytes of all frames.
    pub fn total_len(&self) -> usize {
        self.head_len
            + self.body.len()
            + self.frame_count() * FRAME_OVERHEAD
            + (self.frame_count() - 1)
    }

    /// The length of the next frame, or `None` when all frames are written.
    pub fn next_len(&self) -> Option<usize> {
        if !self.head_done {
            return Some(self.head_len + self.head_body_len() + FRAME_OVERHEAD);
        }
        let rest = self.body.len() - self.offset;
        (rest > 0).then(|| 1 + rest.min(MAX_CHUNK_LEN) + FRAME_OVERHEAD)
    }

    /// Writes the next frame into `out`; `None` when the message is complete.
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<Result<usize, Error>> {
        let len = self.next_len()?;
        Some(SliceSink::new(out, len).and_then(|mut sink| {
            self.write_next_to(&mut sink)?;
            Ok(sink.pos)
        }))
    }

    /// Appends every remaining frame to `out`.
    #[cfg(feature = "alloc")]
    pub fn write_all_to_vec(&mut self, out: &mut alloc::vec::Vec<u8>) -> Result<usize, Error> {
        let start = out.len();
        out.reserve(self.total_len());
        while self.next_len().is_some() {
            self.write_next_to(out)?;
        }
        Ok(out.len() - start)
    }

    /// Appends every remaining frame to a `BytesMut`, growing it as needed (see
    /// [`Envelope::encode_to_bytes`]). On error, `out` may hold part of a frame: truncate
    /// it to its length before the call.
    #[cfg(feature = "bytes")]
    pub fn write_all_to_bytes(&mut self, out: &mut bytes::BytesMut) -> Result<usize, Error> {
        let start = out.len();
        out.reserve(self.total_len());
        while self.next_len().is_some() {
            self.write_next_to(out)?;
        }
        Ok(out.len() - start)
    }

    /// Appends every remaining frame to a `bytes::BufMut`.
    #[cfg(feature = "bytes")]
    pub fn write_all_to_buf<B: bytes::BufMut>(&mut self, out: &mut B) -> Result<usize, Error> {
        let mut written = 0;
        while let Some(len) = self.next_len() {
            if out.remaining_mut() < len {
                return Err(Error::BufferTooSmall {
                    needed: len,
                    available: out.remaining_mut(),
                });
            }
            self.write_next_to(&mut crate::frame::BufSink(out))?;
            written += len;
        }
        Ok(written)
    }

    fn write_next_to<S: Sink>(&mut self, sink: &mut S) -> Result<(), Error> {
        if !self.head_done {
            let n = self.head_body_len();
            let more = n < self.body.len();
            self.envelope
                .write_one(sink, self.head_len + n, Some((&self.body[..n], more)))?;
            self.head_done = true;
            self.offset = n;
            return Ok(());
        }
        let rest = &self.body[self.offset..];
        let n = rest.len().min(MAX_CHUNK_LEN);
        let chunk = Continuation {
            flags: Flags::NONE.with_more(n < rest.len()),
            chunk: &rest[..n],
        };
        Envelope::Continuation(chunk).write_one(sink, 1 + n, None)?;
        self.offset += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parses of REQUEST, RESPONSE and NOTIFY as they were written with the reader,
    /// field by field: a reference for the sliced ones.
    mod reference {
        use super::*;

        fn short_str<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, Error> {
            let len = r.u8(field)?;
            if len == 0 {
                return Err(Error::Empty { field });
            }
            let bytes = r.bytes(usize::from(len), field)?;
            core::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { field })
        }

        fn meta<'a>(r: &mut Reader<'a>) -> Result<(Metadata<'a>, &'a [u8]), Error> {
            let count = r.u8("metadata count")?;
            let rest = r.rest();
            let used = if count == 0 {
                0
            } else {
                crate::meta::scan_entries(count, rest)?
            };
            let (entries, body) = rest.split_at(used);
            Ok((Metadata::from_wire(count, entries)?, body))
        }

        pub(super) fn request(payload: &[u8]) -> Result<Request<'_>, Error> {
            let mut r = Reader::new(payload);
            let id = read_id(&mut r)?;
            let flags = read_flags(&mut r)?;
            let format = r.u8("format")?;
            let method = short_str(&mut r, "method")?;
            let (meta, body) = meta(&mut r)?;
            Ok(Request {
                id,
                flags,
                format,
                method,
                meta,
                body,
            })
        }

        pub(super) fn response(payload: &[u8]) -> Result<Response<'_>, Error> {
            let mut r = Reader::new(payload);
            let id = read_id(&mut r)?;
            let flags = read_flags(&mut r)?;
            let format = r.u8("format")?;
            let (meta, body) = meta(&mut r)?;
            Ok(Response {
                id,
                flags,
                format,
                meta,
                body,
            })
        }

        pub(super) fn notify(payload: &[u8]) -> Result<Notify<'_>, Error> {
            let mut r = Reader::new(payload);
            let flags = read_flags(&mut r)?;
            let format = r.u8("format")?;
            let topic = short_str(&mut r, "topic")?;
            let (meta, body) = meta(&mut r)?;
            Ok(Notify {
                flags,
                format,
                topic,
                meta,
                body,
            })
        }
    }

    /// Calls `check` on every prefix of `good`, and on every prefix with one byte replaced
    /// by each of a few values that break a field (zero, MORE, reserved flags, a byte that
    /// is not UTF-8, a key byte out of range, lengths past the end), or two of its first
    /// twelve bytes (so that two faults meet and the order of the checks shows).
    fn mutations(good: &[u8], mut check: impl FnMut(&[u8])) {
        const VALUES: [u8; 10] = [0, 1, 2, 3, 0x80, 0xC3, 0xFF, b'A', b'/', b'z'];
        let mut buf = [0u8; 128];
        for len in 0..=good.len() {
            buf[..len].copy_from_slice(&good[..len]);
            check(&buf[..len]);
            for pos in 0..len {
                for value in VALUES {
                    buf[..len].copy_from_slice(&good[..len]);
                    buf[pos] = value;
                    check(&buf[..len]);
                    for second in pos + 1..len.min(12) {
                        for other in VALUES {
                            let kept = buf[second];
                            buf[second] = other;
                            check(&buf[..len]);
                            buf[second] = kept;
                        }
                    }
                }
            }
        }
    }

    /// A payload of `head` followed by a block of two entries and a 3-byte body.
    fn with_meta(head: &[u8]) -> ([u8; 64], usize) {
        let tail: &[u8] = &[
            2, 2, b'k', b'1', 0, 1, b'v', 8, b'd', b'e', b'a', b'd', b'l', b'i', b'n', b'e', 0, 4,
            0, 0, 0, 9, b'b', b'o', b'd',
        ];
        let mut out = [0u8; 64];
        out[..head.len()].copy_from_slice(head);
        out[head.len()..head.len() + tail.len()].copy_from_slice(tail);
        (out, head.len() + tail.len())
    }

    #[test]
    fn error_codes_carry_the_names_and_classes_of_the_table() {
        // docs/protocol.md section 6: 1..=11 are named, 12..=999 reserved, 1000.. application.
        let named = [
            (1, "MALFORMED"),
            (5, "OVERLOADED"),
            (6, "UNAVAILABLE"),
            (9, "INTERNAL"),
            (10, "UNAUTHENTICATED"),
            (11, "PERMISSION_DENIED"),
        ];
        for (code, name) in named {
            assert_eq!(ErrorCode(code).name(), Some(name));
        }
        assert_eq!(ErrorCode(12).name(), None);
        assert_eq!(ErrorCode(999).name(), None);
        let retry_safe: alloc::vec::Vec<u16> = (0..=1000)
            .filter(|c| ErrorCode(*c).is_not_processed())
            .collect();
        assert_eq!(retry_safe, [5, 6]);
        let refused: alloc::vec::Vec<u16> = (0..=1000)
            .filter(|c| ErrorCode(*c).is_refused_caller())
            .collect();
        assert_eq!(refused, [10, 11]);
        assert_eq!(
            alloc::format!("{}", ErrorCode::PERMISSION_DENIED),
            "11 (PERMISSION_DENIED)"
        );
    }

    #[test]
    fn sliced_parses_agree_with_the_reader() {
        let mut checked = 0;
        let (request, len) = with_meta(&[0, 0, 0, 7, 0, 1, 4, b'e', b'c', b'h', b'o']);
        mutations(&request[..len], |p| {
            assert_eq!(Request::parse(p), reference::request(p), "{p:?}");
            checked += 1;
        });
        let (response, len) = with_meta(&[0, 0, 1, 0, 0, 2]);
        mutations(&response[..len], |p| {
            assert_eq!(Response::parse(p), reference::response(p), "{p:?}");
            checked += 1;
        });
        let (notify, len) = with_meta(&[0, 1, 3, b'a', b'.', b'b']);
        mutations(&notify[..len], |p| {
            assert_eq!(Notify::parse(p), reference::notify(p), "{p:?}");
            checked += 1;
        });
        assert!(checked > 10_000, "{checked}");
        // The reference accepts the unmutated payloads, so both paths were compared on
        // success as well as on every kind of failure.
        assert!(reference::request(&request[..36]).is_ok());
        assert_eq!(
            Request::parse(&request[..36]).map(|r| (r.method, r.meta.len(), r.body)),
            Ok(("echo", 2, &b"bod"[..]))
        );
    }
}
