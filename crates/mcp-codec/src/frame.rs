//! The frame layer: header, CRC, incremental decoding, and the frame writer.
//!
//! ```text
//! offset  size  field
//! 0       2     magic    "MC"
//! 2       1     version  0x01
//! 3       1     type
//! 4       2     length   N, payload bytes
//! 6       N     payload
//! 6+N     2     crc      CRC-16/IBM-3740 over bytes [2, 6+N)
//! ```
//!
//! The CRC itself is `crate::crc16`: a table everywhere, carry-less multiplication where the
//! CPU has it. Decoding computes it over the frame in place; encoding computes it while
//! copying the payload (`Sink::put_with_crc`), so a frame's bytes are read once either way.

use crate::Error;
use crate::crc16::{CRC_INIT, checksum, copy_with_crc, crc_update};

/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"MC";
/// The protocol version this codec reads and writes.
pub const VERSION: u8 = 0x01;
/// Bytes before the payload: magic, version, type, length.
pub const HEADER_LEN: usize = 6;
/// Bytes of the trailing CRC.
pub const CRC_LEN: usize = 2;
/// Bytes a frame adds around its payload.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + CRC_LEN;
/// The largest payload the 16-bit length field can announce.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;
/// The largest frame on the wire.
pub const MAX_FRAME_LEN: usize = MAX_PAYLOAD_LEN + FRAME_OVERHEAD;

/// The frame types of MCP 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// A call, client to server.
    Request = 0x01,
    /// The answer to a call, server to client.
    Response = 0x02,
    /// A push (server to client) or one-way message (client to server).
    Notify = 0x03,
    /// An error about one request, or about the connection (id 0).
    Error = 0x04,
    /// A heartbeat probe.
    Ping = 0x05,
    /// The answer to a PING.
    Pong = 0x06,
    /// The client gives up on a request.
    Cancel = 0x07,
    /// The sender takes no new requests on this connection.
    GoAway = 0x08,
    /// A further chunk of a large message's body.
    Continuation = 0x09,
}

impl FrameType {
    /// The type for a known type byte, `None` for an unknown one.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => FrameType::Request,
            0x02 => FrameType::Response,
            0x03 => FrameType::Notify,
            0x04 => FrameType::Error,
            0x05 => FrameType::Ping,
            0x06 => FrameType::Pong,
            0x07 => FrameType::Cancel,
            0x08 => FrameType::GoAway,
            0x09 => FrameType::Continuation,
            _ => return None,
        })
    }

    /// The type byte on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The upper-case name used in docs/protocol.md.
    pub const fn name(self) -> &'static str {
        match self {
            FrameType::Request => "REQUEST",
            FrameType::Response => "RESPONSE",
            FrameType::Notify => "NOTIFY",
            FrameType::Error => "ERROR",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::Cancel => "CANCEL",
            FrameType::GoAway => "GOAWAY",
            FrameType::Continuation => "CONTINUATION",
        }
    }
}

/// A frame whose header and CRC have been checked, borrowing its payload.
///
/// The type byte is kept raw so that frames of unknown types can be skipped and counted
/// (forward compatibility); [`Frame::frame_type`] maps it to a [`FrameType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    type_byte: u8,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A frame of the given type around `payload`, for encoding.
    ///
    /// The length is checked when the frame is encoded.
    pub const fn new(frame_type: FrameType, payload: &'a [u8]) -> Self {
        Frame {
            type_byte: frame_type as u8,
            payload,
        }
    }

    /// A frame with a raw type byte, known or not (tests of forward compatibility).
    pub const fn with_type_byte(type_byte: u8, payload: &'a [u8]) -> Self {
        Frame { type_byte, payload }
    }

    /// The frame's type, or `None` when the type byte is unknown.
    pub const fn frame_type(&self) -> Option<FrameType> {
        FrameType::from_u8(self.type_byte)
    }

    /// The raw type byte.
    pub const fn type_byte(&self) -> u8 {
        self.type_byte
    }

    /// The payload bytes.
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Bytes this frame takes on the wire.
    pub const fn encoded_len(&self) -> usize {
        self.payload.len() + FRAME_OVERHEAD
    }

    /// Writes the whole frame (header, payload, CRC) to the front of `out` and returns the
    /// number of bytes written.
    #[inline]
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        encode_frame(self.type_byte, self.payload, out)
    }
}

/// The outcome of an incremental decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, verified frame; `len` bytes of the input were used, including any bytes
    /// skipped before it.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes of input consumed.
        len: usize,
    },
    /// The input holds the start of a frame; at least `needed` more bytes are required.
    NeedMore {
        /// Additional bytes needed before decoding can make progress (at least 1).
        needed: usize,
    },
    /// Resynchronising mode only: the first `len` bytes are not the start of a valid frame
    /// and must be dropped.
    Skip {
        /// Bytes to drop from the front of the input.
        len: usize,
    },
}

/// Decodes one frame from the front of `buf` in strict mode with the largest payload limit.
///
/// A short buffer gives [`Decoded::NeedMore`], never an error; a wrong magic, an unknown
/// version or a CRC mismatch is an error. Nothing is copied: the frame borrows `buf`.
#[inline]
pub fn decode_frame(buf: &[u8]) -> Result<Decoded<'_>, Error> {
    FrameDecoder::new().decode(buf)
}

/// How a [`FrameDecoder`] treats bytes that do not form a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A wrong magic, version or CRC is an error (the default, and the only mode for TCP).
    #[default]
    Strict,
    /// For lossy serial links: drop bytes until the next `"MC"` whose frame passes the CRC.
    Resync,
}

/// A sans-I/O, buffer-agnostic incremental frame decoder.
///
/// It never owns bytes: the caller keeps its own buffer (a ring buffer in firmware, a
/// `BytesMut` in a server), hands its readable part to [`FrameDecoder::decode`], and drops
/// from the front as many bytes as the result says. It keeps only its settings and the
/// count of bytes skipped while resynchronising.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
    mode: SyncMode,
    skipped_bytes: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A strict decoder accepting payloads up to 65,535 bytes.
    pub const fn new() -> Self {
        FrameDecoder {
            max_payload: MAX_PAYLOAD_LEN,
            mode: SyncMode::Strict,
            skipped_bytes: 0,
        }
    }

    /// Sets the largest payload accepted; a larger announced length is refused before any
    /// of its bytes are waited for (strict) or skipped over (resync).
    pub const fn max_payload(mut self, limit: u16) -> Self {
        self.max_payload = limit as usize;
        self
    }

    /// Sets the synchronisation mode.
    pub const fn mode(mut self, mode: SyncMode) -> Self {
        self.mode = mode;
        self
    }

    /// The configured synchronisation mode.
    pub const fn sync_mode(&self) -> SyncMode {
        self.mode
    }

    /// The configured payload limit.
    pub const fn payload_limit(&self) -> usize {
        self.max_payload
    }

    /// Bytes dropped so far while resynchronising.
    pub const fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Decodes the frame at the front of `buf`.
    #[inline]
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Decoded<'a>, Error> {
        match self.mode {
            SyncMode::Strict => self.decode_strict(buf),
            SyncMode::Resync => Ok(self.decode_resync(buf)),
        }
    }

    #[inline]
    fn decode_strict<'a>(&self, buf: &'a [u8]) -> Result<Decoded<'a>, Error> {
        // Check each header byte as soon as it is there, so garbage is refused early
        // instead of after waiting for a length's worth of bytes.
        if let Some(&b0) = buf.first() {
            let b1 = buf.get(1).copied().unwrap_or(MAGIC[1]);
            if b0 != MAGIC[0] || b1 != MAGIC[1] {
                return Err(Error::BadMagic { found: [b0, b1] });
            }
        }
        if let Some(&version) = buf.get(2) {
            if version != VERSION {
                return Err(Error::UnsupportedVersion(version));
            }
        }
        if buf.len() < HEADER_LEN {
            return Ok(Decoded::NeedMore {
                needed: HEADER_LEN - buf.len(),
            });
        }
        let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        if len > self.max_payload {
            return Err(Error::FrameTooLarge {
                len,
                limit: self.max_payload,
            });
        }
        let total = len + FRAME_OVERHEAD;
        if buf.len() < total {
            return Ok(Decoded::NeedMore {
                needed: total - buf.len(),
            });
        }
        let frame = verify(&buf[..total])?;
        Ok(Decoded::Frame { frame, len: total })
    }

    fn decode_resync<'a>(&mut self, buf: &'a [u8]) -> Decoded<'a> {
        // Drop everything before the first candidate magic.
        let start = match find_magic(buf) {
            Some(start) => start,
            None => {
                // Keep a trailing 'M': it may be the first half of a magic.
                let keep = usize::from(buf.last() == Some(&MAGIC[0]));
                return self.skip_or_wait(buf.len() - keep, HEADER_LEN - keep);
            }
        };
        if start > 0 {
            return self.skip_or_wait(start, 0);
        }
        if buf.len() < HEADER_LEN {
            return Decoded::NeedMore {
                needed: HEADER_LEN - buf.len(),
            };
        }
        let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        if buf[2] != VERSION || len > self.max_payload {
            // Not a frame we could accept: this "MC" was noise.
            return self.skip_or_wait(1, 0);
        }
        let total = len + FRAME_OVERHEAD;
        if buf.len() < total {
            return Decoded::NeedMore {
                needed: total - buf.len(),
            };
        }
        match verify(&buf[..total]) {
            Ok(frame) => Decoded::Frame { frame, len: total },
            Err(_) => self.skip_or_wait(1, 0),
        }
    }

    fn skip_or_wait(&mut self, skip: usize, needed: usize) -> Decoded<'static> {
        if skip == 0 {
            return Decoded::NeedMore {
                needed: needed.max(1),
            };
        }
        self.skipped_bytes += skip as u64;
        Decoded::Skip { len: skip }
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == MAGIC)
}

/// Checks version and CRC of a buffer that holds exactly one frame, magic included.
#[inline]
fn verify(frame: &[u8]) -> Result<Frame<'_>, Error> {
    let crc_at = frame.len() - CRC_LEN;
    let received = u16::from_be_bytes([frame[crc_at], frame[crc_at + 1]]);
    let computed = checksum(&frame[2..crc_at]);
    if received != computed {
        return Err(Error::CrcMismatch { received, computed });
    }
    Ok(Frame {
        type_byte: frame[3],
        payload: &frame[HEADER_LEN..crc_at],
    })
}

/// Writes one frame with the given raw type byte around `payload` into `out`.
#[inline]
pub(crate) fn encode_frame(type_byte: u8, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    // The length first: a frame that can never be written is not the buffer's fault.
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(Error::FrameTooLarge {
            len: payload.len(),
            limit: MAX_PAYLOAD_LEN,
        });
    }
    let mut sink = SliceSink::new(out, payload.len() + FRAME_OVERHEAD)?;
    write_frame(&mut sink, type_byte, payload.len(), |w| w.put(payload))?;
    Ok(sink.pos)
}

/// Where encoded bytes go: a checked slice, a `Vec`, or a `bytes::BufMut`.
///
/// How the CRC is fed depends on the sink. Both CRC paths (`crate::crc16`: the slice-by-16
/// table, and folding by carry-less multiplication for runs of 48 bytes and more) cost a
/// fixed step per run on top of its bytes (the table step of the tail; for folding also the
/// reduction of 128 bits to 16), so each run fed separately costs more than its bytes. A
/// sink that can show back what it holds (a slice or a `Vec`, `READBACK = true`) therefore
/// lets the envelope's fields pile up (numbers, method or topic, metadata keys and values up
/// to 256 bytes: `PayloadWriter::put_gathered`) and feeds them to the CRC as one run read
/// back from the output, while a long piece (a body, a chunk, a long metadata value) is fed
/// straight from the caller's bytes, which are not waiting in the store buffer. A
/// write-only sink (`BufMut`) feeds every piece on its way out.
pub(crate) trait Sink {
    /// Whether [`Sink::written_since`] gives the bytes back.
    const READBACK: bool;
    fn put(&mut self, bytes: &[u8]);
    /// A position to pass to [`Sink::written_since`] later.
    fn position(&self) -> usize;
    /// The bytes written since `from`; empty for a write-only sink.
    fn written_since(&self, from: usize) -> &[u8];
    /// Writes `bytes` and returns the CRC register advanced over them.
    #[inline]
    fn put_with_crc(&mut self, bytes: &[u8], crc: u16) -> u16 {
        self.put(bytes);
        crc_update(crc, bytes)
    }
}

/// A slice whose capacity was checked against the whole encoding up front, so `put`
/// cannot run past its end.
pub(crate) struct SliceSink<'o> {
    out: &'o mut [u8],
    pub(crate) pos: usize,
}

impl<'o> SliceSink<'o> {
    pub(crate) fn new(out: &'o mut [u8], needed: usize) -> Result<Self, Error> {
        if out.len() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        Ok(SliceSink { out, pos: 0 })
    }
}

impl Sink for SliceSink<'_> {
    const READBACK: bool = true;

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        // In bounds: every encoder sizes the sink for its whole output in `new`, and the
        // encoders write exactly the length they computed (checked by the round-trip tests).
        let next = self.pos + bytes.len();
        self.out[self.pos..next].copy_from_slice(bytes);
        self.pos = next;
    }

    #[inline]
    fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    fn written_since(&self, from: usize) -> &[u8] {
        self.out.get(from..self.pos).unwrap_or(&[])
    }

    #[inline]
    fn put_with_crc(&mut self, bytes: &[u8], crc: u16) -> u16 {
        // In bounds for the same reason as `put`.
        let next = self.pos + bytes.len();
        let crc = copy_with_crc(crc, bytes, &mut self.out[self.pos..next]);
        self.pos = next;
        crc
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    const READBACK: bool = true;

    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn position(&self) -> usize {
        self.len()
    }

    fn written_since(&self, from: usize) -> &[u8] {
        self.get(from..).unwrap_or(&[])
    }
}

/// A `BytesMut` shows back what it holds, like a `Vec`: the envelope's fields are fed to
/// the CRC as one run (a write-only `BufMut` feeds every field as a run of its own).
#[cfg(feature = "bytes")]
impl Sink for bytes::BytesMut {
    const READBACK: bool = true;

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn position(&self) -> usize {
        self.len()
    }

    #[inline]
    fn written_since(&self, from: usize) -> &[u8] {
        self.get(from..).unwrap_or(&[])
    }
}

/// Adapts any `bytes::BufMut` (a `BytesMut`, a `Vec<u8>`, ...) as a sink.
#[cfg(feature = "bytes")]
pub(crate) struct BufSink<'b, B: bytes::BufMut>(pub(crate) &'b mut B);

#[cfg(feature = "bytes")]
impl<B: bytes::BufMut> Sink for BufSink<'_, B> {
    const READBACK: bool = false;

    fn put(&mut self, bytes: &[u8]) {
        self.0.put_slice(bytes);
    }

    fn position(&self) -> usize {
        0
    }

    fn written_since(&self, _from: usize) -> &[u8] {
        &[]
    }
}

/// A piece at least this long is fed to the CRC from the caller's bytes; shorter ones are
/// gathered and fed as one run (see [`Sink`]).
const LONG_PIECE: usize = 32;

/// Writes payload fields to the sink and keeps the CRC up to date.
pub(crate) struct PayloadWriter<'s, S: Sink> {
    sink: &'s mut S,
    /// The CRC register over everything fed so far.
    crc: u16,
    /// Sink position from which written bytes are not yet in the CRC (`READBACK` only).
    pending: usize,
    written: usize,
}

impl<S: Sink> PayloadWriter<'_, S> {
    #[inline]
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        if !S::READBACK {
            self.crc = self.sink.put_with_crc(bytes, self.crc);
        } else if bytes.len() >= LONG_PIECE {
            self.flush();
            self.crc = self.sink.put_with_crc(bytes, self.crc);
            self.pending = self.sink.position();
        } else {
            self.sink.put(bytes);
        }
        self.written += bytes.len();
    }

    /// Feeds the gathered short pieces to the CRC.
    #[inline]
    fn flush(&mut self) {
        if S::READBACK {
            self.crc = crc_update(self.crc, self.sink.written_since(self.pending));
            self.pending = self.sink.position();
        }
    }

    /// Writes a piece of the envelope (a number, a method or topic, a metadata key or short
    /// value: at most a few hundred bytes) to be fed to the CRC with the pieces around it
    /// as one run, whatever its length.
    ///
    /// Feeding the envelope in several runs costs a CRC tail step and a call for each run;
    /// with [`PayloadWriter::put`]'s rule, a `traceparent` value (55 bytes) split the
    /// envelope of every traced REQUEST into three runs.
    #[inline(always)]
    pub(crate) fn put_gathered(&mut self, bytes: &[u8]) {
        if S::READBACK {
            self.sink.put(bytes);
        } else {
            self.crc = self.sink.put_with_crc(bytes, self.crc);
        }
        self.written += bytes.len();
    }

    #[inline(always)]
    pub(crate) fn put_u8(&mut self, v: u8) {
        self.put_gathered(&[v]);
    }

    #[inline(always)]
    pub(crate) fn put_u16(&mut self, v: u16) {
        self.put_gathered(&v.to_be_bytes());
    }

    #[inline(always)]
    pub(crate) fn put_u32(&mut self, v: u32) {
        self.put_gathered(&v.to_be_bytes());
    }
}

/// Writes header, the payload produced by `body`, and the CRC.
///
/// `payload_len` must be exactly what `body` writes; a mismatch is a bug in this crate
/// (caught by a debug assertion and the round-trip tests).
#[inline]
pub(crate) fn write_frame<S: Sink>(
    sink: &mut S,
    type_byte: u8,
    payload_len: usize,
    body: impl FnOnce(&mut PayloadWriter<'_, S>),
) -> Result<(), Error> {
    let len = u16::try_from(payload_len).map_err(|_| Error::FrameTooLarge {
        len: payload_len,
        limit: MAX_PAYLOAD_LEN,
    })?;
    let len = len.to_be_bytes();
    let header = [MAGIC[0], MAGIC[1], VERSION, type_byte, len[0], len[1]];
    sink.put(&header);
    let mut crc = CRC_INIT;
    if !S::READBACK {
        crc = crc_update(crc, &header[MAGIC.len()..]);
    }
    // The magic is not covered: the gathered run starts after it (the header was just
    // written, so the subtraction cannot underflow; write-only sinks do not use it).
    let pending = sink.position().saturating_sub(HEADER_LEN - MAGIC.len());
    let mut w = PayloadWriter {
        sink,
        crc,
        pending,
        written: 0,
    };
    body(&mut w);
    debug_assert_eq!(w.written, payload_len, "payload length mismatch");
    w.flush();
    let crc = w.crc.to_be_bytes();
    w.sink.put(&crc);
    Ok(())
}
