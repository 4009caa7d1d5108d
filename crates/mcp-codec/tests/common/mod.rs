//! Helpers shared by the integration tests: owned descriptions of envelopes that proptest
//! can generate, and the strategies that generate them.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use mcp_codec::{
    Cancel, Continuation, Decoded, Envelope, ErrorCode, ErrorFrame, Flags, Frame, GoAway,
    GoAwayCode, Metadata, Notify, OwnedMetaPair, Ping, Pong, Request, Response, decode_frame,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// An owned description of one envelope of any of the nine types, from which a borrowed
/// [`Envelope`] is built.
#[derive(Debug, Clone)]
pub(crate) enum Spec {
    Request {
        id: u32,
        more: bool,
        format: u8,
        method: String,
        meta: Vec<OwnedMetaPair>,
        body: Vec<u8>,
    },
    Response {
        id: u32,
        more: bool,
        format: u8,
        meta: Vec<OwnedMetaPair>,
        body: Vec<u8>,
    },
    Notify {
        more: bool,
        format: u8,
        topic: String,
        meta: Vec<OwnedMetaPair>,
        body: Vec<u8>,
    },
    Error {
        id: u32,
        code: u16,
        message: String,
    },
    Ping([u8; 8]),
    Pong([u8; 8]),
    Cancel(u32),
    GoAway {
        last_id: u32,
        code: u16,
        reason: String,
    },
    Continuation {
        more: bool,
        chunk: Vec<u8>,
    },
}

impl Spec {
    /// The borrowed envelope this spec describes.
    pub(crate) fn envelope(&self) -> Envelope<'_> {
        let flags = |more: bool| Flags::NONE.with_more(more);
        match self {
            Spec::Request {
                id,
                more,
                format,
                method,
                meta,
                body,
            } => Envelope::Request(Request {
                id: *id,
                flags: flags(*more),
                format: *format,
                method,
                meta: Metadata::from_owned(meta),
                body,
            }),
            Spec::Response {
                id,
                more,
                format,
                meta,
                body,
            } => Envelope::Response(Response {
                id: *id,
                flags: flags(*more),
                format: *format,
                meta: Metadata::from_owned(meta),
                body,
            }),
            Spec::Notify {
                more,
                format,
                topic,
                meta,
                body,
            } => Envelope::Notify(Notify {
                flags: flags(*more),
                format: *format,
                topic,
                meta: Metadata::from_owned(meta),
                body,
            }),
            Spec::Error { id, code, message } => Envelope::Error(ErrorFrame {
                id: *id,
                code: ErrorCode(*code),
                message,
            }),
            Spec::Ping(nonce) => Envelope::Ping(Ping { nonce: *nonce }),
            Spec::Pong(nonce) => Envelope::Pong(Pong { nonce: *nonce }),
            Spec::Cancel(id) => Envelope::Cancel(Cancel { id: *id }),
            Spec::GoAway {
                last_id,
                code,
                reason,
            } => Envelope::GoAway(GoAway {
                last_id: *last_id,
                code: GoAwayCode(*code),
                reason,
            }),
            Spec::Continuation { more, chunk } => Envelope::Continuation(Continuation {
                flags: flags(*more),
                chunk,
            }),
        }
    }

    /// The whole frame on the wire.
    pub(crate) fn wire(&self) -> Vec<u8> {
        encode(&self.envelope())
    }
}

/// Encodes one envelope as one frame into an exactly sized buffer.
pub(crate) fn encode(envelope: &Envelope<'_>) -> Vec<u8> {
    let len = envelope.encoded_len().expect("valid envelope");
    let mut out = vec![0u8; len];
    let written = envelope.encode(&mut out).expect("valid envelope");
    assert_eq!(
        written, len,
        "encode wrote the length encoded_len announced"
    );
    out
}

/// Decodes a buffer that must hold exactly one valid frame.
pub(crate) fn decode_one(wire: &[u8]) -> Frame<'_> {
    match decode_frame(wire) {
        Ok(Decoded::Frame { frame, len }) => {
            assert_eq!(len, wire.len(), "the whole buffer is one frame");
            frame
        }
        other => panic!("expected one frame, got {other:?}"),
    }
}

/// A frame with any raw type byte around any payload.
pub(crate) fn raw_frame(type_byte: u8, payload: &[u8]) -> Vec<u8> {
    let frame = Frame::with_type_byte(type_byte, payload);
    let mut out = vec![0u8; frame.encoded_len()];
    frame.encode(&mut out).expect("payload fits");
    out
}

/// Method and topic names: 1..=255 bytes of UTF-8, from plain dotted names to any
/// printable Unicode, including the 255-byte limit itself.
pub(crate) fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9.]{0,20}",
        2 => "\\PC{1,60}",
        1 => "[a-z]{255}",
        1 => Just("é".repeat(127) + "x"),
    ]
    .prop_filter("1..=255 bytes", |s| (1..=255).contains(&s.len()))
}

/// Metadata keys: the whole allowed charset, a few keys from a tiny set so that keys
/// repeat, the well-known keys, and the 255-byte limit.
pub(crate) fn meta_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9._-]{1,16}",
        3 => "[ab]{1,2}",
        2 => prop_oneof![
            Just("deadline".to_string()),
            Just("traceparent".to_string()),
            Just("tracestate".to_string()),
        ],
        1 => "[a-z0-9._-]{255}",
    ]
}

/// A metadata block, possibly empty, with repeated keys and empty values.
pub(crate) fn meta() -> impl Strategy<Value = Vec<OwnedMetaPair>> {
    vec((meta_key(), vec(any::<u8>(), 0..40)), 0..6)
}

/// Bodies, often empty.
pub(crate) fn body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => Just(Vec::new()), 4 => vec(any::<u8>(), 0..=max)]
}

/// Free UTF-8 text (ERROR messages, GOAWAY reasons), possibly empty.
pub(crate) fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

/// Any valid envelope of any of the nine types, with bodies up to `max_body` bytes.
pub(crate) fn spec(max_body: usize) -> impl Strategy<Value = Spec> {
    let id = 1..=u32::MAX;
    prop_oneof![
        (
            id.clone(),
            any::<bool>(),
            any::<u8>(),
            name(),
            meta(),
            body(max_body)
        )
            .prop_map(|(id, more, format, method, meta, body)| Spec::Request {
                id,
                more,
                format,
                method,
                meta,
                body
            }),
        (
            id.clone(),
            any::<bool>(),
            any::<u8>(),
            meta(),
            body(max_body)
        )
            .prop_map(|(id, more, format, meta, body)| Spec::Response {
                id,
                more,
                format,
                meta,
                body
            }),
        (any::<bool>(), any::<u8>(), name(), meta(), body(max_body)).prop_map(
            |(more, format, topic, meta, body)| Spec::Notify {
                more,
                format,
                topic,
                meta,
                body
            }
        ),
        (any::<u32>(), any::<u16>(), text()).prop_map(|(id, code, message)| Spec::Error {
            id,
            code,
            message
        }),
        any::<[u8; 8]>().prop_map(Spec::Ping),
        any::<[u8; 8]>().prop_map(Spec::Pong),
        id.prop_map(Spec::Cancel),
        (any::<u32>(), any::<u16>(), text()).prop_map(|(last_id, code, reason)| Spec::GoAway {
            last_id,
            code,
            reason
        }),
        (any::<bool>(), vec(any::<u8>(), 1..=max_body.max(1)))
            .prop_map(|(more, chunk)| Spec::Continuation { more, chunk }),
    ]
}

/// One frame of a stream: a valid envelope, or (one time in ten) a frame of an unknown
/// type, which the frame layer must pass through like any other.
pub(crate) fn stream_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        9 => spec(200).prop_map(|s| s.wire()),
        1 => (
            prop_oneof![Just(0u8), 0x0Au8..=0xFF],
            vec(any::<u8>(), 0..100)
        )
            .prop_map(|(t, payload)| raw_frame(t, &payload)),
    ]
}

/// Splits `bytes` at the given cut points (taken modulo its length), giving the chunks in
/// order; empty chunks are kept on purpose, since a read may return nothing new.
pub(crate) fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points {
        out.push(&bytes[start..p]);
        start = p;
    }
    out.push(&bytes[start..]);
    out
}
