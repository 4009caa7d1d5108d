//! The buffering `StreamDecoder` fed the fuzzer's bytes in the fuzzer's chunks gives the
//! same frames, the same skips and the same outcome as one decoder walking the whole input
//! at once, in both modes.
//!
//! Input layout:
//! - byte 0: bit 0 selects the mode (0 strict, 1 resync);
//! - bytes 1..3: the payload limit, big-endian;
//! - byte 3: the number of chunk sizes that follow (taken modulo 32);
//! - that many bytes: chunk sizes (0 is allowed: an empty read), used in turn;
//! - the rest: the byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_codec::{Decoded, Error, FrameDecoder, StreamDecoder, SyncMode};

/// A frame as compared: type byte and payload.
type Seen = (u8, Vec<u8>);

/// How a walk over the input ended.
#[derive(Debug)]
enum End {
    NeedMore,
    Failed(Error),
}

/// One decoder over the whole input.
fn at_once(decoder: &mut FrameDecoder, data: &[u8]) -> (Vec<Seen>, End, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match decoder.decode(&data[at..]) {
            Ok(Decoded::Frame { frame, len }) => {
                frames.push((frame.type_byte(), frame.payload().to_vec()));
                at += len;
            }
            Ok(Decoded::Skip { len }) => at += len,
            Ok(Decoded::NeedMore { .. }) => return (frames, End::NeedMore, data.len() - at),
            Err(err) => return (frames, End::Failed(err), data.len() - at),
        }
    }
}

/// The stream decoder, fed in chunks.
fn chunked(decoder: FrameDecoder, data: &[u8], sizes: &[u8]) -> (Vec<Seen>, End, StreamDecoder) {
    let mut stream = StreamDecoder::new(decoder);
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    loop {
        let size = sizes.next().map_or(data.len(), |&s| usize::from(s));
        let end = (at + size).min(data.len());
        stream.feed(&data[at..end]);
        at = end;
        loop {
            match stream.next_frame() {
                Ok(Some(frame)) => frames.push((frame.type_byte(), frame.payload().to_vec())),
                Ok(None) => break,
                Err(err) => {
                    // Poisoned: the same error again, whatever is fed.
                    stream.feed(b"MC\x01");
                    assert_eq!(stream.next_frame().err(), Some(err));
                    return (frames, End::Failed(err), stream);
                }
            }
        }
        if at == data.len() {
            return (frames, End::NeedMore, stream);
        }
        // Zero-sized chunks only: make progress anyway.
        if sizes.clone().take(32).all(|&s| s == 0) {
            stream.feed(&data[at..]);
            loop {
                match stream.next_frame() {
                    Ok(Some(frame)) => frames.push((frame.type_byte(), frame.payload().to_vec())),
                    Ok(None) => return (frames, End::NeedMore, stream),
                    Err(err) => return (frames, End::Failed(err), stream),
                }
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let [flags, l0, l1, n, rest @ ..] = input else {
        return;
    };
    let n = usize::from(*n % 32).min(rest.len());
    let (sizes, data) = rest.split_at(n);
    let mode = if flags & 1 == 0 {
        SyncMode::Strict
    } else {
        SyncMode::Resync
    };
    let decoder = FrameDecoder::new()
        .mode(mode)
        .max_payload(u16::from_be_bytes([*l0, *l1]));

    let mut whole = decoder.clone();
    let (expected, end, left) = at_once(&mut whole, data);
    let (frames, chunk_end, stream) = chunked(decoder, data, sizes);
    assert_eq!(frames, expected, "chunking changed the frames");
    match (&end, &chunk_end) {
        (End::NeedMore, End::NeedMore) => {
            assert_eq!(stream.buffered(), left, "the same bytes are left over");
        }
        (End::Failed(a), End::Failed(b)) => {
            // A chunk boundary inside the magic can only change the second byte reported
            // (the decoder refuses a wrong first byte before the second has arrived).
            match (a, b) {
                (Error::BadMagic { found: fa }, Error::BadMagic { found: fb }) => {
                    assert_eq!(fa[0], fb[0])
                }
                _ => assert_eq!(a, b),
            }
        }
        _ => panic!("outcomes differ: at once {end:?}, chunked {chunk_end:?}"),
    }
    assert_eq!(stream.skipped_bytes(), whole.skipped_bytes());
    if mode == SyncMode::Resync {
        assert!(matches!(end, End::NeedMore), "resync never fails");
    }
});
