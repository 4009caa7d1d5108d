//! Frame decoding of arbitrary bytes: `decode_frame` and `FrameDecoder` (strict and
//! resynchronising, with a fuzzer-chosen payload limit) never panic, every frame they yield
//! re-encodes to exactly the bytes it was decoded from, and the modes agree where they must.
//!
//! Input: the whole input is the byte stream; its first two bytes, read as a big-endian
//! u16, are also the payload limit (so the seeds, which start with "MC" = 19779, decode
//! their frames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_codec::{
    Decoded, Envelope, Error, FRAME_OVERHEAD, Frame, FrameDecoder, HEADER_LEN, MAX_FRAME_LEN,
    SyncMode, decode_frame,
};

/// Re-encodes a decoded frame and checks it gives back the bytes it came from.
fn check_reencodes(frame: Frame<'_>, bytes: &[u8]) {
    assert_eq!(frame.encoded_len(), bytes.len());
    let mut out = vec![0u8; bytes.len()];
    assert_eq!(frame.encode(&mut out), Ok(bytes.len()));
    assert_eq!(out, bytes, "a decoded frame re-encodes to its own bytes");
    // A valid envelope re-encodes too (the payload-level property).
    if let Ok(envelope) = Envelope::parse(frame) {
        let mut again = vec![0u8; bytes.len()];
        assert_eq!(envelope.encode(&mut again), Ok(bytes.len()));
        assert_eq!(
            again, bytes,
            "a parsed envelope re-encodes to its own bytes"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let limit = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => u16::MAX,
    };

    // Strict, largest limit.
    let full = decode_frame(data);
    match full {
        Ok(Decoded::Frame { frame, len }) => {
            assert!(len <= data.len() && len >= FRAME_OVERHEAD);
            assert_eq!(len, frame.payload().len() + FRAME_OVERHEAD);
            check_reencodes(frame, &data[..len]);
        }
        Ok(Decoded::NeedMore { needed }) => {
            assert!(needed >= 1);
            assert!(data.len() + needed <= MAX_FRAME_LEN);
            if data.len() >= HEADER_LEN {
                let announced = usize::from(u16::from_be_bytes([data[4], data[5]]));
                assert_eq!(data.len() + needed, announced + FRAME_OVERHEAD);
            }
        }
        Ok(Decoded::Skip { .. }) => panic!("strict decoding never skips"),
        Err(_) => {}
    }

    // Strict with the fuzzer's limit: the same answer, except that a payload over the
    // limit is refused from its header.
    let mut limited = FrameDecoder::new().max_payload(limit);
    let got = limited.decode(data);
    let over_limit = data.len() >= HEADER_LEN
        && usize::from(u16::from_be_bytes([data[4], data[5]])) > usize::from(limit)
        && data[..3] == *b"MC\x01";
    if over_limit {
        assert!(matches!(got, Err(Error::FrameTooLarge { .. })), "{got:?}");
    } else {
        assert_eq!(got, full);
    }

    // Resynchronising: walk the whole input; every frame is a valid strict frame, every
    // skip drops at least one byte, and the skip counter adds up.
    let mut resync = FrameDecoder::new()
        .mode(SyncMode::Resync)
        .max_payload(limit);
    let mut at = 0;
    let mut skipped = 0u64;
    loop {
        match resync.decode(&data[at..]) {
            Ok(Decoded::Frame { frame, len }) => {
                let bytes = &data[at..at + len];
                assert!(frame.payload().len() <= usize::from(limit));
                assert_eq!(decode_frame(bytes), Ok(Decoded::Frame { frame, len }));
                check_reencodes(frame, bytes);
                at += len;
            }
            Ok(Decoded::Skip { len }) => {
                assert!(len >= 1 && at + len <= data.len());
                skipped += len as u64;
                at += len;
            }
            Ok(Decoded::NeedMore { needed }) => {
                assert!(needed >= 1);
                break;
            }
            Err(err) => panic!("resync never fails: {err:?}"),
        }
    }
    assert_eq!(resync.skipped_bytes(), skipped);
    // What is left is a possible frame start: at most one 'M', or "MC" and more.
    let rest = &data[at..];
    assert!(
        rest.is_empty() || rest == b"M" || rest.starts_with(b"MC"),
        "{rest:?}"
    );
});
