//! Envelope parsing of fuzzer-made frames (valid CRC, any type, any payload): every payload
//! that parses re-encodes to exactly the same bytes, and an `Assembler` fed the frames in
//! order never panics and keeps its promises (limits, MORE, unknown frames).
//!
//! Input layout:
//! - bytes 0..2: the assembler's maximum message size, big-endian (0 means the default);
//! - then records: `type u8 | len u8 | payload (len bytes, cut short at the end)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_codec::{
    Assembled, Assembler, DEFAULT_MAX_MESSAGE_LEN, Envelope, FRAME_OVERHEAD, Frame, MessageFrames,
};

/// Parse, then re-encode through every writer: the bytes must be the original payload's.
fn check_round_trip(frame: Frame<'_>) {
    let Ok(envelope) = Envelope::parse(frame) else {
        return;
    };
    let payload = frame.payload();
    assert_eq!(envelope.frame_type().as_u8(), frame.type_byte());
    assert_eq!(envelope.payload_len(), Ok(payload.len()));
    let mut out = vec![0u8; payload.len() + FRAME_OVERHEAD];
    assert_eq!(envelope.encode(&mut out), Ok(out.len()));
    let mut expected = vec![0u8; out.len()];
    frame.encode(&mut expected).expect("fits");
    assert_eq!(out, expected, "parse then encode changed the frame");
    let mut vec = Vec::new();
    envelope.encode_to_vec(&mut vec).expect("valid");
    assert_eq!(vec, expected);
    // A parsed message fits one frame, so splitting it gives one frame.
    if let Ok(frames) = MessageFrames::new(envelope) {
        assert_eq!(frames.frame_count(), 1);
    }
}

fuzz_target!(|data: &[u8]| {
    let (limit, mut records) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => return,
    };
    let limit = if limit == 0 {
        DEFAULT_MAX_MESSAGE_LEN
    } else {
        limit
    };
    let mut assembler = Assembler::new(limit);
    while let [type_byte, len, rest @ ..] = records {
        let len = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        records = tail;
        let frame = Frame::with_type_byte(*type_byte, payload);
        check_round_trip(frame);

        let was_in_message = assembler.in_message();
        let unknown_before = assembler.unknown_frames();
        match assembler.push(frame) {
            Ok(Assembled::Message { body, .. }) => {
                assert!(was_in_message);
                assert!(body.len() <= limit, "the body stays within the limit");
            }
            Ok(Assembled::Envelope(envelope)) => {
                if let Some(body) = envelope.body() {
                    assert!(body.len() <= limit);
                }
            }
            Ok(Assembled::RequestTooLarge { id } | Assembled::MalformedRequest { id, .. }) => {
                assert_ne!(id, 0);
            }
            Ok(Assembled::Absorbed) => {}
            Ok(_) => {}
            Err(err) => {
                assert!(err.is_fatal());
                // The connection would close: a new one starts from scratch.
                assembler = Assembler::new(limit);
                continue;
            }
        }
        if mcp_codec::FrameType::from_u8(*type_byte).is_none() {
            // Only outside a message is an unknown frame absorbed (inside, it is an error,
            // handled above).
            assert!(!was_in_message);
            assert_eq!(assembler.unknown_frames(), unknown_before + 1);
        }
    }
});
