//! The tokio-util `Decoder`/`Encoder` adapter over `mcp-codec`, also the decoding core of
//! [`FrameReader`](crate::FrameReader).

use bytes::{Buf, Bytes, BytesMut};
use mcp_codec::{
    Assembled, Assembler, CRC_LEN, Decoded, Envelope, Frame, FrameDecoder, FrameType, HEADER_LEN,
    MessageFrames, Metadata, Notify, Request, Response,
};
use tokio_util::codec::{Decoder, Encoder};

use crate::config::{Role, WireConfig};
use crate::error::WireError;
use crate::message::{Inbound, InboundRequest, InboundResponse, Meta, Names, Push};

/// A `tokio_util::codec` adapter: decodes a byte stream into owned [`Inbound`] messages
/// (reassembling CONTINUATION frames under the maximum message size) and encodes borrowed
/// [`Envelope`]s, splitting a large body into CONTINUATION frames.
///
/// Decoding is zero-copy for single-frame messages: each frame is split off the read
/// buffer as `Bytes` and the body handed out is a slice of it. Multi-frame bodies are the
/// reassembled `Vec`, moved into `Bytes` without a copy.
///
/// Frame types the local [`Role`] never receives are refused (a client getting REQUEST or
/// CANCEL, a server getting RESPONSE). Every decode error is fatal for the stream: send
/// ERROR id 0 with [`WireError::error_code`] (best effort) and close.
///
/// ```
/// use mcp_transport::{McpCodec, Role};
/// use tokio_util::codec::{Decoder, Encoder};
/// use mcp_codec::{Envelope, Ping};
///
/// let mut codec = McpCodec::new(Role::Client);
/// let mut buf = bytes::BytesMut::new();
/// codec.encode(Envelope::Ping(Ping { nonce: [7; 8] }), &mut buf).unwrap();
/// let msg = codec.decode(&mut buf).unwrap();
/// assert!(matches!(msg, Some(mcp_transport::Inbound::Ping(n)) if n == [7; 8]));
/// ```
#[derive(Debug)]
pub struct McpCodec {
    role: Role,
    decoder: FrameDecoder,
    assembler: Assembler,
    max_message_len: usize,
    frames: u64,
    names: Names,
}

impl McpCodec {
    /// A codec for `role` with the default maximum message size (16 MiB).
    pub fn new(role: Role) -> Self {
        Self::with_config(&WireConfig::new(role))
    }

    /// A codec with the role and maximum message size of `config`.
    pub fn with_config(config: &WireConfig) -> Self {
        McpCodec {
            role: config.role,
            decoder: FrameDecoder::new(),
            assembler: Assembler::new(config.max_message_len),
            max_message_len: config.max_message_len,
            frames: 0,
            names: Names::default(),
        }
    }

    /// Complete frames decoded so far (every one counts as life for the heartbeat).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames of unknown types skipped so far.
    pub fn unknown_frames(&self) -> u64 {
        self.assembler.unknown_frames()
    }

    /// Whether a multi-frame message is half received.
    pub fn in_message(&self) -> bool {
        self.assembler.in_message()
    }

    /// Bytes held for the message being reassembled (0 when none is).
    pub fn partial_len(&self) -> usize {
        self.assembler.partial_len()
    }

    /// Drops the message being reassembled and skips its remaining frames; for a REQUEST,
    /// its id, to be answered. `None` if no message was being reassembled, or it was not a
    /// REQUEST.
    pub fn abandon(&mut self) -> Option<u32> {
        self.assembler.abandon().and_then(|(_, id)| id)
    }

    fn refused(&self, frame_type: FrameType) -> bool {
        match self.role {
            Role::Client => matches!(frame_type, FrameType::Request | FrameType::Cancel),
            Role::Server => frame_type == FrameType::Response,
        }
    }

    /// Handles one verified frame, split off the read buffer.
    fn on_frame(&mut self, frame: Bytes) -> Result<Option<Inbound>, WireError> {
        // The decoder verified a whole frame of at least HEADER_LEN + CRC_LEN bytes, so both
        // lookups succeed; they are checked anyway so that no input can panic here.
        let payload_end = frame.len().saturating_sub(CRC_LEN);
        let (Some(&type_byte), Some(payload)) = (frame.get(3), frame.get(HEADER_LEN..payload_end))
        else {
            return Err(WireError::Codec(mcp_codec::Error::Truncated {
                field: "frame",
            }));
        };
        let frame_type = FrameType::from_u8(type_byte);
        if let Some(frame_type) = frame_type {
            if self.refused(frame_type) {
                return Err(WireError::UnexpectedForRole {
                    frame_type,
                    role: self.role,
                });
            }
        }
        // The common case: a message complete in this one frame goes straight from its
        // parse to the owned message, its fields slices of `frame`. Anything else (a frame
        // that fails to parse, the head of a large message, a frame inside one, control
        // frames) goes through the assembler, which parses it again and applies every rule.
        match frame_type {
            Some(FrameType::Request) => match Request::parse(payload) {
                Ok(r) if self.assembler.is_whole(r.flags, r.body.len()) => {
                    let method = self.names.text(r.method);
                    let parts = Parts::of(7 + r.method.len(), &r.meta, r.body, payload_end);
                    let (id, format) = (r.id, r.format);
                    let (meta, body) = parts.take(frame);
                    return Ok(Some(Inbound::Request(InboundRequest {
                        id,
                        format,
                        method,
                        meta,
                        body,
                    })));
                }
                _ => {}
            },
            Some(FrameType::Response) => match Response::parse(payload) {
                Ok(r) if self.assembler.is_whole(r.flags, r.body.len()) => {
                    let parts = Parts::of(6, &r.meta, r.body, payload_end);
                    let (id, format) = (r.id, r.format);
                    let (meta, body) = parts.take(frame);
                    return Ok(Some(Inbound::Response(InboundResponse {
                        id,
                        format,
                        meta,
                        body,
                    })));
                }
                _ => {}
            },
            Some(FrameType::Notify) => match Notify::parse(payload) {
                Ok(n) if self.assembler.is_whole(n.flags, n.body.len()) => {
                    let topic = self.names.text(n.topic);
                    let parts = Parts::of(3 + n.topic.len(), &n.meta, n.body, payload_end);
                    let format = n.format;
                    let (meta, body) = parts.take(frame);
                    return Ok(Some(Inbound::Notify(Push {
                        format,
                        topic,
                        meta,
                        body,
                    })));
                }
                _ => {}
            },
            _ => {}
        }
        let view = Frame::with_type_byte(type_byte, payload);
        Ok(match self.assembler.push(view)? {
            Assembled::Envelope(envelope) => Some(owned(&mut self.names, envelope, None)),
            Assembled::Message { head, body } => Some(owned(&mut self.names, head, Some(body))),
            Assembled::RequestTooLarge { id } => Some(Inbound::RequestTooLarge { id }),
            Assembled::MalformedRequest { id, error } => {
                Some(Inbound::MalformedRequest { id, error })
            }
            // `Absorbed`, and any outcome a later codec adds: nothing for the caller.
            _ => None,
        })
    }
}

/// Where the metadata entries and the body of a message lie in its frame, worked out from
/// the lengths of its parsed envelope, so that the frame itself can then be consumed.
struct Parts {
    /// Metadata entries (the count byte left out).
    count: u8,
    entries_start: usize,
    /// The end of the metadata block and the start of the body.
    body_start: usize,
    body_end: usize,
}

impl Parts {
    /// `head` is the payload's bytes before the metadata block (id, flags, format, method or
    /// topic); the block runs from there to the body, and the body to `payload_end`.
    #[inline(always)]
    fn of(head: usize, meta: &Metadata<'_>, body: &[u8], payload_end: usize) -> Parts {
        Parts {
            // A block read off the wire has at most 255 entries.
            count: u8::try_from(meta.len()).unwrap_or(u8::MAX),
            entries_start: HEADER_LEN + head + 1,
            body_start: payload_end.saturating_sub(body.len()),
            body_end: payload_end,
        }
    }

    /// The metadata (a slice of `frame`) and the body (`frame` itself, narrowed to it, so
    /// that no reference count is taken for it).
    ///
    /// The ranges come from the parse of this frame's payload, so they lie inside it: the
    /// checks below only keep any input from panicking here. An empty body holds nothing,
    /// and the frame's bytes are released with it.
    #[inline(always)]
    fn take(self, frame: Bytes) -> (Meta, Bytes) {
        let meta = if self.count > 0
            && self.entries_start <= self.body_start
            && self.body_start <= frame.len()
        {
            Meta::from_wire_entries(self.count, frame.slice(self.entries_start..self.body_start))
        } else {
            Meta::new()
        };
        let body = if self.body_start < self.body_end && self.body_end <= frame.len() {
            let mut body = frame;
            body.truncate(self.body_end);
            body.advance(self.body_start);
            body
        } else {
            Bytes::new()
        };
        (meta, body)
    }
}

/// An owned message from an envelope the assembler returned: a message reassembled from
/// several frames (its whole `body` given), or a control frame. Nothing here borrows the
/// frame any more: the fields of a message are copied (only the head frame's metadata and
/// names; the body is the reassembled `Vec`, moved).
fn owned(names: &mut Names, envelope: Envelope<'_>, body: Option<Vec<u8>>) -> Inbound {
    let body_of = |part: &[u8]| match &body {
        Some(_) => Bytes::new(),
        None => Bytes::copy_from_slice(part),
    };
    let mut inbound = match envelope {
        Envelope::Request(r) => Inbound::Request(InboundRequest {
            id: r.id,
            format: r.format,
            method: names.text(r.method),
            meta: Meta::copy_of(&r.meta),
            body: body_of(r.body),
        }),
        Envelope::Response(r) => Inbound::Response(InboundResponse {
            id: r.id,
            format: r.format,
            meta: Meta::copy_of(&r.meta),
            body: body_of(r.body),
        }),
        Envelope::Notify(n) => Inbound::Notify(Push {
            format: n.format,
            topic: names.text(n.topic),
            meta: Meta::copy_of(&n.meta),
            body: body_of(n.body),
        }),
        Envelope::Error(e) => Inbound::Error {
            id: e.id,
            code: e.code,
            message: e.message.to_owned(),
        },
        Envelope::Ping(p) => Inbound::Ping(p.nonce),
        Envelope::Pong(p) => Inbound::Pong(p.nonce),
        Envelope::Cancel(c) => Inbound::Cancel(c.id),
        Envelope::GoAway(g) => Inbound::GoAway {
            last_id: g.last_id,
            code: g.code,
            reason: g.reason.to_owned(),
        },
        // The assembler absorbs CONTINUATION frames; this arm is never taken.
        Envelope::Continuation(_) => Inbound::Error {
            id: 0,
            code: mcp_codec::ErrorCode::MALFORMED,
            message: String::from("stray CONTINUATION"),
        },
    };
    if let Some(body) = body {
        let body = Bytes::from(body);
        match &mut inbound {
            Inbound::Request(r) => r.body = body,
            Inbound::Response(r) => r.body = body,
            Inbound::Notify(n) => n.body = body,
            _ => {}
        }
    }
    inbound
}

impl Decoder for McpCodec {
    type Item = Inbound;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        loop {
            let len = match self.decoder.decode(src)? {
                Decoded::Frame { len, .. } => len,
                Decoded::NeedMore { needed } => {
                    // At most one frame (65,543 bytes): the header was checked already.
                    src.reserve(needed);
                    return Ok(None);
                }
                Decoded::Skip { len } => {
                    src.advance(len);
                    continue;
                }
            };
            self.frames += 1;
            let frame = src.split_to(len).freeze();
            // Handed back whole: cheaper than unwrapping and rewrapping the message.
            match self.on_frame(frame) {
                Ok(None) => {}
                done => return done,
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        if let Some(message) = self.decode(src)? {
            return Ok(Some(message));
        }
        if src.is_empty() && !self.assembler.in_message() {
            Ok(None)
        } else {
            Err(WireError::ClosedMidFrame {
                buffered: src.len(),
            })
        }
    }
}

/// Appends `envelope` to `dst`: one frame, or a head frame and CONTINUATION frames for a
/// message whose body does not fit in one. Nothing is written unless the whole message
/// can be, so a half frame never reaches the wire.
pub(crate) fn encode_envelope(
    envelope: Envelope<'_>,
    dst: &mut BytesMut,
    max_message_len: usize,
) -> Result<usize, mcp_codec::Error> {
    match envelope.body() {
        Some(body) => {
            if body.len() > max_message_len {
                return Err(mcp_codec::Error::MessageTooLarge {
                    len: body.len(),
                    limit: max_message_len,
                });
            }
            let start = dst.len();
            // Most messages fit one frame: encoded as one, without preparing a split.
            // `encode_to_bytes` refuses a payload too large for one frame before writing.
            match envelope.encode_to_bytes(dst) {
                Err(mcp_codec::Error::FrameTooLarge { .. }) => MessageFrames::new(envelope)?
                    .write_all_to_bytes(dst)
                    .inspect_err(|_| dst.truncate(start)),
                other => other.inspect_err(|_| dst.truncate(start)),
            }
        }
        None => {
            let start = dst.len();
            envelope
                .encode_to_bytes(dst)
                .inspect_err(|_| dst.truncate(start))
        }
    }
}

impl<'a> Encoder<Envelope<'a>> for McpCodec {
    type Error = WireError;

    fn encode(&mut self, item: Envelope<'a>, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_envelope(item, dst, self.max_message_len)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mcp_codec::{Flags, GoAway, GoAwayCode, Metadata, Notify, Ping, Pong, Response, format};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::message::NAMES_KEPT;

    /// One frame when the message fits, CONTINUATION frames when it does not: the bytes are
    /// those of `MessageFrames` either way, around the boundary included.
    #[test]
    fn encoding_matches_message_frames_around_one_frames_limit() {
        let meta = [(
            "traceparent",
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
        )];
        let head = Envelope::Request(mcp_codec::Request {
            id: 3,
            flags: Flags::NONE,
            format: format::RAW,
            method: "put",
            meta: Metadata::from_pairs(&meta),
            body: b"",
        })
        .payload_len()
        .unwrap();
        for body_len in [0, 1, mcp_codec::MAX_PAYLOAD_LEN - head - 1]
            .into_iter()
            .chain([0, 1, 2, 100_000].map(|d| mcp_codec::MAX_PAYLOAD_LEN - head + d))
        {
            let body = vec![0x5a; body_len];
            let envelope = Envelope::Request(mcp_codec::Request {
                id: 3,
                flags: Flags::NONE,
                format: format::RAW,
                method: "put",
                meta: Metadata::from_pairs(&meta),
                body: &body,
            });
            let mut expected = Vec::new();
            MessageFrames::new(envelope)
                .unwrap()
                .write_all_to_vec(&mut expected)
                .unwrap();
            let mut got = BytesMut::from(&b"queued"[..]);
            let n = encode_envelope(envelope, &mut got, 16 << 20).unwrap();
            assert_eq!(n, expected.len(), "body of {body_len}");
            assert_eq!(&got[..6], b"queued");
            assert_eq!(&got[6..], &expected[..], "body of {body_len}");
        }
        // A bad field is refused whichever way, and nothing stays queued.
        let bad = Envelope::Request(mcp_codec::Request {
            id: 0,
            flags: Flags::NONE,
            format: format::RAW,
            method: "put",
            meta: Metadata::EMPTY,
            body: b"x",
        });
        let mut got = BytesMut::from(&b"queued"[..]);
        assert!(encode_envelope(bad, &mut got, 16 << 20).is_err());
        assert_eq!(&got[..], b"queued");
    }

    fn stream() -> Vec<u8> {
        let meta = [("traceparent", &b"00-abc"[..]), ("k", &b"v"[..])];
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let mut codec = McpCodec::new(Role::Client);
        let mut out = BytesMut::new();
        let envelopes = [
            Envelope::Response(Response {
                id: 1,
                flags: Flags::NONE,
                format: format::JSON,
                meta: Metadata::from_pairs(&meta),
                body: b"{}",
            }),
            Envelope::Ping(Ping { nonce: [1; 8] }),
            Envelope::Notify(Notify {
                flags: Flags::NONE,
                format: format::RAW,
                topic: "orders.created",
                meta: Metadata::EMPTY,
                body: b"push",
            }),
            Envelope::Response(Response {
                id: 2,
                flags: Flags::NONE,
                format: format::RAW,
                meta: Metadata::from_pairs(&meta),
                body: &big,
            }),
            Envelope::Error(mcp_codec::ErrorFrame {
                id: 3,
                code: mcp_codec::ErrorCode(1000),
                message: "nope",
            }),
            Envelope::Pong(Pong { nonce: [2; 8] }),
            Envelope::GoAway(GoAway {
                last_id: 3,
                code: GoAwayCode::SHUTTING_DOWN,
                reason: "bye",
            }),
        ];
        for envelope in envelopes {
            codec.encode(envelope, &mut out).unwrap();
        }
        out.to_vec()
    }

    fn decode_in_chunks(bytes: &[u8], chunk: usize) -> Vec<String> {
        let mut codec = McpCodec::new(Role::Client);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(message) = codec.decode(&mut buf).unwrap() {
                out.push(format!("{message:?}"));
            }
        }
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        out
    }

    /// Test 8 at the codec level: 1-byte reads decode exactly like one big read.
    #[test]
    fn t08_codec_one_byte_slices_decode_identically() {
        let bytes = stream();
        let whole = decode_in_chunks(&bytes, bytes.len());
        assert_eq!(whole.len(), 7);
        assert_eq!(decode_in_chunks(&bytes, 1), whole);
        assert_eq!(decode_in_chunks(&bytes, 7), whole);
        assert_eq!(decode_in_chunks(&bytes, 65_543), whole);
    }

    /// Test 9 at the codec level: frames of one read come out in order, the push between
    /// the answers included.
    #[test]
    fn t09_codec_frames_of_one_read_in_order() {
        let whole = decode_in_chunks(&stream(), usize::MAX);
        let kinds: Vec<&str> = whole
            .iter()
            .map(|m| m.split(['(', ' ']).next().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds,
            [
                "Response", "Ping", "Notify", "Response", "Error", "Pong", "GoAway"
            ]
        );
    }

    /// Single-frame bodies and metadata are slices of the read buffer, not copies.
    #[test]
    fn single_frame_body_is_zero_copy() {
        let bytes = stream();
        let mut buf = BytesMut::from(&bytes[..]);
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let mut codec = McpCodec::new(Role::Client);
        let Some(Inbound::Response(r)) = codec.decode(&mut buf).unwrap() else {
            panic!("response first");
        };
        let body = r.body().as_ptr() as usize;
        assert!(
            body >= start && body < end,
            "body points into the read buffer"
        );
        assert_eq!(r.meta().get("traceparent"), Some(&b"00-abc"[..]));
        assert_eq!(r.meta().get("k"), Some(&b"v"[..]));
        assert_eq!(r.meta().len(), 2);
    }

    /// Test 10 at the codec level: a message past the limit is refused at the frame that
    /// crosses it, with at most one frame buffered, and the code is TOO_LARGE.
    #[test]
    fn t10_codec_message_past_limit_refused_at_crossing_frame() {
        let config = WireConfig {
            max_message_len: 100_000,
            ..WireConfig::new(Role::Client)
        };
        let mut codec = McpCodec::with_config(&config);
        let big = vec![1u8; 300_000];
        let mut out = BytesMut::new();
        McpCodec::new(Role::Server)
            .encode(
                Envelope::Response(Response {
                    id: 1,
                    flags: Flags::NONE,
                    format: 0,
                    meta: Metadata::EMPTY,
                    body: &big,
                }),
                &mut out,
            )
            .unwrap();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let err = loop {
            let next = (fed + 4096).min(out.len());
            buf.extend_from_slice(&out[fed..next]);
            fed = next;
            match codec.decode(&mut buf) {
                Ok(None) => assert!(buf.len() <= mcp_codec::MAX_FRAME_LEN),
                Ok(Some(m)) => panic!("unexpected {m:?}"),
                Err(err) => break err,
            }
        };
        assert_eq!(err.error_code(), Some(mcp_codec::ErrorCode::TOO_LARGE));
        // Refused at the second frame: the third was never needed.
        assert!(fed <= 2 * mcp_codec::MAX_FRAME_LEN + 4096, "fed {fed}");
    }

    /// Test 11 at the codec level: random bytes never panic; each error is fatal with a
    /// code to send.
    #[test]
    fn t11_codec_garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let valid = stream();
        for round in 0..2000 {
            let mut bytes = if round % 2 == 0 {
                let len = rng.random_range(0..300);
                (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
            } else {
                let mut v = valid[..rng.random_range(0..valid.len())].to_vec();
                for _ in 0..rng.random_range(1..4) {
                    if !v.is_empty() {
                        let i = rng.random_range(0..v.len());
                        v[i] ^= rng.random_range(1..=255u8);
                    }
                }
                v
            };
            if round % 3 == 0 {
                bytes.splice(0..0, b"MC\x01".iter().copied());
            }
            for role in [Role::Client, Role::Server] {
                let mut codec = McpCodec::new(role);
                let mut buf = BytesMut::from(&bytes[..]);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(err) => {
                            assert!(err.is_protocol(), "{err}");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Role-aware validation: a client never receives REQUEST or CANCEL, a server never
    /// receives RESPONSE.
    #[test]
    fn role_refusals() {
        let mut out = BytesMut::new();
        let mut enc = McpCodec::new(Role::Client);
        enc.encode(Envelope::Cancel(mcp_codec::Cancel { id: 4 }), &mut out)
            .unwrap();
        let err = McpCodec::new(Role::Client)
            .decode(&mut out.clone())
            .unwrap_err();
        assert!(matches!(err, WireError::UnexpectedForRole { .. }), "{err}");
        assert!(matches!(
            McpCodec::new(Role::Server).decode(&mut out),
            Ok(Some(Inbound::Cancel(4)))
        ));
        let mut out = BytesMut::new();
        enc.encode(
            Envelope::Response(Response {
                id: 1,
                flags: Flags::NONE,
                format: 0,
                meta: Metadata::EMPTY,
                body: b"",
            }),
            &mut out,
        )
        .unwrap();
        let err = McpCodec::new(Role::Server).decode(&mut out).unwrap_err();
        assert_eq!(err.error_code(), Some(mcp_codec::ErrorCode::MALFORMED));
    }

    /// A stream that ends inside a frame is an error, not a clean end.
    #[test]
    fn eof_mid_frame() {
        let bytes = stream();
        let mut buf = BytesMut::from(&bytes[..10]);
        let err = McpCodec::new(Role::Client)
            .decode_eof(&mut buf)
            .unwrap_err();
        assert!(matches!(err, WireError::ClosedMidFrame { buffered: 10 }));
    }

    /// Single-frame messages of every shape: metadata or none, a body or none, names of
    /// one and of 255 bytes.
    fn single_frames() -> Vec<(Role, Vec<u8>)> {
        let traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let deadline = 1500u32.to_be_bytes();
        let meta = [
            ("traceparent", &traceparent[..]),
            ("deadline", &deadline[..]),
        ];
        let long = "n".repeat(255);
        let mut out = Vec::new();
        let mut encoder = McpCodec::new(Role::Client);
        for pairs in [&meta[..], &meta[1..], &[]] {
            for body in [&b""[..], b"x", &[7u8; 300]] {
                for name in ["m", "user.get", long.as_str()] {
                    let envelopes = [
                        (
                            Role::Server,
                            Envelope::Request(mcp_codec::Request {
                                id: 9,
                                flags: Flags::NONE,
                                format: format::PROTOBUF,
                                method: name,
                                meta: Metadata::from_pairs(pairs),
                                body,
                            }),
                        ),
                        (
                            Role::Client,
                            Envelope::Response(Response {
                                id: 9,
                                flags: Flags::NONE,
                                format: format::JSON,
                                meta: Metadata::from_pairs(pairs),
                                body,
                            }),
                        ),
                        (
                            Role::Client,
                            Envelope::Notify(Notify {
                                flags: Flags::NONE,
                                format: 200,
                                topic: name,
                                meta: Metadata::from_pairs(pairs),
                                body,
                            }),
                        ),
                    ];
                    for (role, envelope) in envelopes {
                        let mut wire = BytesMut::new();
                        encoder.encode(envelope, &mut wire).unwrap();
                        out.push((role, wire.to_vec()));
                    }
                }
            }
        }
        out
    }

    /// The fast path builds a single-frame message exactly as the general path does from
    /// the assembler's envelope, its metadata and body slices of the read buffer.
    #[test]
    fn single_frame_fast_path_matches_the_assembler_path() {
        for (role, wire) in single_frames() {
            let mut buf = BytesMut::from(&wire[..]);
            let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
            let mut codec = McpCodec::new(role);
            let fast = codec.decode(&mut buf).unwrap().expect("a message");
            assert!(buf.is_empty());
            let Ok(Decoded::Frame { frame, .. }) = mcp_codec::decode_frame(&wire) else {
                panic!("a frame");
            };
            let mut assembler = Assembler::default();
            let Assembled::Envelope(envelope) = assembler.push(frame).unwrap() else {
                panic!("a whole message");
            };
            let general = owned(&mut Names::default(), envelope, None);
            assert_eq!(format!("{fast:?}"), format!("{general:?}"));
            let (meta, body) = match &fast {
                Inbound::Request(r) => (r.meta(), r.body()),
                Inbound::Response(r) => (r.meta(), r.body()),
                Inbound::Notify(n) => (n.meta(), n.body()),
                other => panic!("unexpected {other:?}"),
            };
            if !body.is_empty() {
                assert!(range.contains(&(body.as_ptr() as usize)), "body is a slice");
            }
            if let Some((_, value)) = meta.iter().next() {
                assert!(
                    range.contains(&(value.as_ptr() as usize)),
                    "meta is a slice"
                );
            }
            assert_eq!(meta.len(), meta.iter().count());
        }
    }

    /// What the fast path must leave to the assembler: a single-frame REQUEST over the
    /// limit, a message in the middle of another one, the head of a large message.
    #[test]
    fn fast_path_leaves_the_rest_to_the_assembler() {
        let config = WireConfig {
            max_message_len: 4,
            ..WireConfig::new(Role::Server)
        };
        let request = |id: u32, body: &'static [u8]| {
            Envelope::Request(mcp_codec::Request {
                id,
                flags: Flags::NONE,
                format: 0,
                method: "m",
                meta: Metadata::EMPTY,
                body,
            })
        };
        let mut wire = BytesMut::new();
        let mut encoder = McpCodec::new(Role::Client);
        encoder.encode(request(1, b"12345"), &mut wire).unwrap();
        encoder.encode(request(2, b"1234"), &mut wire).unwrap();
        let mut codec = McpCodec::with_config(&config);
        assert!(matches!(
            codec.decode(&mut wire),
            Ok(Some(Inbound::RequestTooLarge { id: 1 }))
        ));
        assert!(
            matches!(codec.decode(&mut wire), Ok(Some(Inbound::Request(r))) if r.body() == &b"1234"[..])
        );

        // A head frame with MORE, then a whole REQUEST where a CONTINUATION must come.
        let mut head = vec![0u8; 64];
        let len = mcp_codec::Request {
            id: 3,
            flags: Flags::MORE,
            format: 0,
            method: "m",
            meta: Metadata::EMPTY,
            body: b"ab",
        }
        .encode(&mut head)
        .unwrap();
        let mut wire = BytesMut::from(&head[..len]);
        encoder.encode(request(4, b"x"), &mut wire).unwrap();
        let mut codec = McpCodec::new(Role::Server);
        let err = codec.decode(&mut wire).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Codec(mcp_codec::Error::UnexpectedFrame {
                    frame_type: 0x01,
                    ..
                })
            ),
            "{err}"
        );

        // The head and its CONTINUATION make one request.
        let mut wire = BytesMut::from(&head[..len]);
        let mut last = vec![0u8; 16];
        let n = mcp_codec::Continuation {
            flags: Flags::NONE,
            chunk: b"cd",
        }
        .encode(&mut last)
        .unwrap();
        wire.extend_from_slice(&last[..n]);
        let mut codec = McpCodec::new(Role::Server);
        assert!(matches!(
            codec.decode(&mut wire),
            Ok(Some(Inbound::Request(r))) if r.id() == 3 && r.method() == "m" && r.body() == &b"abcd"[..]
        ));
    }

    /// Methods and topics are shared while they repeat, and stay right when more distinct
    /// names come than the decoder keeps.
    #[test]
    fn names_are_shared_and_replaced() {
        let names: Vec<String> = (0..3 * NAMES_KEPT).map(|i| format!("svc.m{i}")).collect();
        let mut wire = BytesMut::new();
        let mut encoder = McpCodec::new(Role::Client);
        let order: Vec<&str> = names
            .iter()
            .chain(names.iter().rev())
            .chain(names[..2].iter())
            .chain(names[..2].iter())
            .map(String::as_str)
            .collect();
        for (i, method) in order.iter().enumerate() {
            encoder
                .encode(
                    Envelope::Request(mcp_codec::Request {
                        id: i as u32 + 1,
                        flags: Flags::NONE,
                        format: 0,
                        method,
                        meta: Metadata::EMPTY,
                        body: b"",
                    }),
                    &mut wire,
                )
                .unwrap();
        }
        let mut codec = McpCodec::new(Role::Server);
        let mut got = Vec::new();
        while let Some(Inbound::Request(r)) = codec.decode(&mut wire).unwrap() {
            got.push(r);
        }
        let methods: Vec<&str> = got.iter().map(InboundRequest::method).collect();
        assert_eq!(methods, order);
        // The last four requests repeat two names: one shared string each.
        let [a, b, c, d] = &got[got.len() - 4..] else {
            panic!("four");
        };
        assert!(std::ptr::eq(a.method(), c.method()));
        assert!(std::ptr::eq(b.method(), d.method()));
        assert!(!std::ptr::eq(a.method(), b.method()));
    }
}
