//! The tokio-util `Decoder`/`Encoder` adapter over `mcp-codec`, also the decoding core of
//! [`FrameReader`](crate::FrameReader).

use bytes::{Buf, Bytes, BytesMut};
use mcp_codec::{
    Assembled, Assembler, CRC_LEN, Decoded, Envelope, Frame, FrameDecoder, FrameType, HEADER_LEN,
    MessageFrames, Metadata,
};
use tokio_util::codec::{Decoder, Encoder};

use crate::config::{Role, WireConfig};
use crate::error::WireError;
use crate::message::{Inbound, InboundRequest, InboundResponse, Meta, Push, Text, slice_or_copy};

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
        let view = Frame::with_type_byte(type_byte, payload);
        if let Some(frame_type) = view.frame_type() {
            if self.refused(frame_type) {
                return Err(WireError::UnexpectedForRole {
                    frame_type,
                    role: self.role,
                });
            }
        }
        Ok(match self.assembler.push(view)? {
            Assembled::Envelope(envelope) => Some(owned(envelope, Some(&frame), None)),
            Assembled::Message { head, body } => Some(owned(head, None, Some(body))),
            Assembled::RequestTooLarge { id } => Some(Inbound::RequestTooLarge { id }),
            Assembled::MalformedRequest { id, error } => {
                Some(Inbound::MalformedRequest { id, error })
            }
            // `Absorbed`, and any outcome a later codec adds: nothing for the caller.
            _ => None,
        })
    }
}

/// The metadata block of a message, sliced from `frame` when the envelope borrows it.
///
/// `head` is the envelope's bytes before the metadata (id, flags, format, method or topic);
/// the block runs from there to the body.
fn meta_of(frame: Option<&Bytes>, meta: &Metadata<'_>, head: usize, body: &[u8]) -> Meta {
    if meta.is_empty() {
        return Meta::new();
    }
    if let Some(frame) = frame {
        let start = HEADER_LEN + head;
        let end = frame.len().saturating_sub(CRC_LEN + body.len());
        if start < end {
            return Meta::from_wire_block(frame.slice(start..end));
        }
    }
    Meta::copy_of(meta)
}

/// An owned message from a borrowed envelope: slices of `frame` when given, the
/// reassembled `body` for a multi-frame message.
fn owned(envelope: Envelope<'_>, frame: Option<&Bytes>, body: Option<Vec<u8>>) -> Inbound {
    let body_of = |part: &[u8]| match &body {
        Some(_) => Bytes::new(),
        None => slice_or_copy(frame, part),
    };
    let mut inbound = match envelope {
        Envelope::Request(r) => Inbound::Request(InboundRequest {
            id: r.id,
            format: r.format,
            method: Text::from_frame(frame, r.method),
            meta: meta_of(frame, &r.meta, 7 + r.method.len(), r.body),
            body: body_of(r.body),
        }),
        Envelope::Response(r) => Inbound::Response(InboundResponse {
            id: r.id,
            format: r.format,
            meta: meta_of(frame, &r.meta, 6, r.body),
            body: body_of(r.body),
        }),
        Envelope::Notify(n) => Inbound::Notify(Push {
            format: n.format,
            topic: Text::from_frame(frame, n.topic),
            meta: meta_of(frame, &n.meta, 3 + n.topic.len(), n.body),
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
            if let Some(message) = self.on_frame(frame)? {
                return Ok(Some(message));
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
            MessageFrames::new(envelope)?
                .write_all_to_bytes(dst)
                .inspect_err(|_| dst.truncate(start))
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
}
