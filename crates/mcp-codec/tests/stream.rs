//! The stream decoders: any chunking of any frame sequence gives the same frames (strict),
//! and the resynchronising mode recovers every valid frame from surrounding garbage.

mod common;

use common::{Spec, chunks, raw_frame, stream_frame};
use mcp_codec::{
    Decoded, Error, FRAME_OVERHEAD, FrameDecoder, MAX_FRAME_LEN, StreamDecoder, SyncMode,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// A frame as the tests compare it: raw type byte and payload.
type Seen = (u8, Vec<u8>);

fn seen_in(wire: &[u8]) -> Seen {
    let frame = common::decode_one(wire);
    (frame.type_byte(), frame.payload().to_vec())
}

/// Feeds `pieces` one at a time to a stream decoder, taking every frame after each.
fn run_stream(decoder: &mut StreamDecoder, pieces: &[&[u8]]) -> Result<Vec<Seen>, Error> {
    let mut out = Vec::new();
    for piece in pieces {
        decoder.feed(piece);
        while let Some(frame) = decoder.next_frame()? {
            out.push((frame.type_byte(), frame.payload().to_vec()));
        }
    }
    Ok(out)
}

/// The allocation-free way: the caller's own buffer, handed to a `FrameDecoder` after each
/// read, dropping from its front what the decoder used.
fn run_frame_decoder(decoder: &mut FrameDecoder, pieces: &[&[u8]]) -> Result<Vec<Seen>, Error> {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&buf)? {
                Decoded::Frame { frame, len } => {
                    out.push((frame.type_byte(), frame.payload().to_vec()));
                    buf.drain(..len);
                }
                Decoded::Skip { len } => {
                    assert!(len >= 1 && len <= buf.len(), "skip within the buffer");
                    buf.drain(..len);
                }
                Decoded::NeedMore { needed } => {
                    assert!(needed >= 1, "NeedMore asks for at least one byte");
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Garbage for the resync tests: any bytes without the magic "MC" in them.
fn garbage(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max).prop_map(|mut g| {
        // Break every "MC" by changing its 'C'; this can create no new "MC", since the
        // replacement is not 'C' and the byte before it is 'M', not a potential 'C'.
        for i in 1..g.len() {
            if g[i - 1] == b'M' && g[i] == b'C' {
                g[i] = b'c';
            }
        }
        g
    })
}

fn has_magic(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"MC")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Strict: any chunking of any sequence of frames yields exactly those frames, in order,
    /// from both the buffering `StreamDecoder` and a bare `FrameDecoder`, and nothing is left.
    #[test]
    fn strict_any_chunking_yields_the_same_frames(
        frames in vec(stream_frame(), 0..8),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let expected: Vec<Seen> = frames.iter().map(|w| seen_in(w)).collect();
        let stream: Vec<u8> = frames.concat();
        let pieces = chunks(&stream, &cuts);

        let mut decoder = StreamDecoder::new(FrameDecoder::new());
        prop_assert_eq!(&run_stream(&mut decoder, &pieces).unwrap(), &expected);
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert_eq!(decoder.skipped_bytes(), 0);

        let mut bare = FrameDecoder::new();
        prop_assert_eq!(&run_frame_decoder(&mut bare, &pieces).unwrap(), &expected);
    }

    /// One byte at a time is the worst chunking; it must still work.
    #[test]
    fn strict_byte_at_a_time(frames in vec(stream_frame(), 1..4)) {
        let expected: Vec<Seen> = frames.iter().map(|w| seen_in(w)).collect();
        let stream: Vec<u8> = frames.concat();
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        let mut decoder = StreamDecoder::new(FrameDecoder::new());
        prop_assert_eq!(run_stream(&mut decoder, &pieces).unwrap(), expected);
    }

    /// A frame is only yielded once all of it has arrived: a stream cut anywhere yields the
    /// frames wholly before the cut and holds the rest.
    #[test]
    fn strict_cut_stream_holds_the_partial_frame(
        frames in vec(stream_frame(), 1..5),
        cut in any::<usize>(),
    ) {
        let stream: Vec<u8> = frames.concat();
        let cut = cut % (stream.len() + 1);
        let mut whole = 0;
        let mut expected = Vec::new();
        for w in &frames {
            if whole + w.len() <= cut {
                whole += w.len();
                expected.push(seen_in(w));
            } else {
                break;
            }
        }
        let mut decoder = StreamDecoder::new(FrameDecoder::new());
        prop_assert_eq!(run_stream(&mut decoder, &[&stream[..cut]]).unwrap(), expected);
        prop_assert_eq!(decoder.buffered(), cut - whole);
    }

    /// Strict: garbage in front of a stream is a fatal error, and the decoder stays failed.
    #[test]
    fn strict_garbage_is_an_error_and_poisons(
        junk in vec(any::<u8>(), 1..20).prop_filter("not a frame start", |j| !j.starts_with(b"M")),
        frames in vec(stream_frame(), 1..3),
    ) {
        let mut decoder = StreamDecoder::new(FrameDecoder::new());
        decoder.feed(&junk);
        let err = decoder.next_frame().unwrap_err();
        prop_assert!(matches!(err, Error::BadMagic { .. }), "{:?}", err);
        decoder.feed(&frames.concat());
        prop_assert_eq!(decoder.next_frame().unwrap_err(), err);
    }

    /// Resync: every valid frame surrounded by garbage without "MC" is recovered, in order,
    /// whatever the chunking; every garbage byte is either counted as skipped or (a trailing
    /// 'M' that might start a magic) still buffered.
    #[test]
    fn resync_recovers_every_frame_from_garbage(
        parts in vec((garbage(40), stream_frame()), 0..6),
        tail in garbage(40),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut junk = 0;
        for (g, frame) in &parts {
            stream.extend_from_slice(g);
            stream.extend_from_slice(frame);
            expected.push(seen_in(frame));
            junk += g.len();
        }
        stream.extend_from_slice(&tail);
        junk += tail.len();
        let pieces = chunks(&stream, &cuts);

        let mut decoder = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
        prop_assert_eq!(&run_stream(&mut decoder, &pieces).unwrap(), &expected);
        let skipped = usize::try_from(decoder.skipped_bytes()).unwrap();
        prop_assert_eq!(skipped + decoder.buffered(), junk);
        prop_assert!(decoder.buffered() <= 1, "at most a trailing 'M' is kept");

        let mut bare = FrameDecoder::new().mode(SyncMode::Resync);
        prop_assert_eq!(&run_frame_decoder(&mut bare, &pieces).unwrap(), &expected);
        prop_assert_eq!(bare.skipped_bytes(), decoder.skipped_bytes());
    }

    /// Resync with a lone corrupted frame among good ones: the good ones all come through
    /// (the corrupted one is dropped unless its damage happens to leave it valid, which a
    /// single flipped payload byte cannot).
    #[test]
    fn resync_drops_a_corrupted_frame_and_keeps_the_rest(
        before in vec(stream_frame(), 0..3),
        victim in stream_frame(),
        after in vec(stream_frame(), 1..3),
        at in any::<usize>(),
        xor in 1u8..=255,
    ) {
        let mut bad = victim.clone();
        // Damage a byte past the header, so the frame still parses as a header but fails
        // the CRC, and the damage cannot create a magic (the check below skips that case).
        let i = 6 + at % (bad.len() - 6);
        bad[i] ^= xor;
        prop_assume!(!has_magic(&bad[1..]));
        let stream = [before.concat(), bad, after.concat()].concat();
        let expected: Vec<Seen> = before.iter().chain(&after).map(|w| seen_in(w)).collect();
        let mut decoder = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
        prop_assert_eq!(run_stream(&mut decoder, &[&stream]).unwrap(), expected);
        prop_assert_eq!(usize::try_from(decoder.skipped_bytes()).unwrap(), victim.len());
    }
}

/// What resync does with a false "MC" in garbage, written down as behaviour:
///
/// 1. A false magic whose version byte is wrong, or whose length exceeds the payload
///    limit, is dropped at once (one byte), and the search goes on.
/// 2. A false magic with a plausible header makes the decoder wait for the whole frame it
///    announces (up to 65,543 bytes); the frames behind it are held, not lost: once the
///    announced length has arrived the CRC fails, one byte is dropped, and the held frames
///    are found again by the search.
/// 3. If the stream ends before then, the held frames stay buffered: resync trades latency
///    after noise for never losing a frame to a false magic.
/// 4. A false magic whose announced frame passes the CRC by chance (one in 65,536 for
///    random bytes) is yielded as a frame and the bytes it covered are consumed: the CRC is
///    the only guard a serial link has, and the layers above see a frame that fails to
///    parse or is unexpected.
#[test]
fn resync_false_magic_behaviour() {
    let ping = Spec::Ping(*b"12345678").wire();
    let pong = Spec::Pong(*b"abcdefgh").wire();
    let good: Vec<Seen> = vec![seen_in(&ping), seen_in(&pong)];

    // 1. Wrong version after "MC": dropped at once.
    let stream = [b"xxMC\x02\x05\x00\x08".as_slice(), &ping, &pong].concat();
    let mut d = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
    assert_eq!(run_stream(&mut d, &[&stream]).unwrap(), good);
    assert_eq!(d.skipped_bytes(), 8);

    // 1b. Length above the configured limit: dropped at once.
    let stream = [b"MC\x01\x05\x10\x00".as_slice(), &ping, &pong].concat();
    let mut d = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync).max_payload(1024));
    assert_eq!(run_stream(&mut d, &[&stream]).unwrap(), good);
    assert_eq!(d.skipped_bytes(), 6);

    // 2 and 3. A plausible header announcing 1,000 payload bytes holds the frames behind it
    // until 1,008 bytes from the false magic have arrived.
    let false_header = b"MC\x01\x05\x03\xe8";
    let stream = [false_header.as_slice(), &ping, &pong].concat();
    let mut d = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
    assert_eq!(run_stream(&mut d, &[&stream]).unwrap(), Vec::<Seen>::new());
    assert_eq!(d.buffered(), stream.len(), "held, not lost");
    // Padding without "MC" up to the announced length releases them.
    let padding = vec![0u8; 1000 + FRAME_OVERHEAD - stream.len()];
    let mut out = run_stream(&mut d, &[&padding]).unwrap();
    assert_eq!(out, good);
    // The false header and the padding were skipped; the frames were not.
    assert_eq!(d.skipped_bytes(), (6 + padding.len()) as u64);
    out.clear();

    // The false frame may even run past a real frame's magic: still recovered.
    let false_short = b"MC\x01\x05\x00\x04";
    let stream = [false_short.as_slice(), &ping, &pong].concat();
    let mut d = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
    assert_eq!(run_stream(&mut d, &[&stream]).unwrap(), good);

    // 4. Noise that happens to form a whole frame with a matching CRC is yielded as a
    // frame: nothing at the frame layer can tell it from a real one.
    let mimic = raw_frame(0x42, b"noise");
    let stream = [mimic.as_slice(), &ping].concat();
    let mut d = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
    assert_eq!(
        run_stream(&mut d, &[&stream]).unwrap(),
        vec![(0x42, b"noise".to_vec()), seen_in(&ping)]
    );
}

/// The resync decoder never holds more than one maximal frame while waiting: a false
/// header announcing 65,535 bytes is disproved once 65,543 bytes have arrived.
#[test]
fn resync_waits_at_most_one_maximal_frame() {
    let ping = Spec::Ping(*b"12345678").wire();
    let mut stream = b"MC\x01\x05\xff\xff".to_vec();
    stream.extend_from_slice(&ping);
    let mut d = StreamDecoder::new(FrameDecoder::new().mode(SyncMode::Resync));
    assert!(run_stream(&mut d, &[&stream]).unwrap().is_empty());
    let padding = vec![0x55u8; MAX_FRAME_LEN - stream.len()];
    assert_eq!(
        run_stream(&mut d, &[&padding]).unwrap(),
        vec![seen_in(&ping)]
    );
}

/// A frame longer than the strict decoder's limit is refused from its header, before its
/// payload is waited for.
#[test]
fn strict_limit_refuses_from_the_header() {
    let wire = raw_frame(0x03, &[0u8; 300]);
    let mut d = FrameDecoder::new().max_payload(299);
    assert_eq!(
        d.decode(&wire[..6]),
        Err(Error::FrameTooLarge {
            len: 300,
            limit: 299
        })
    );
    let mut s = StreamDecoder::new(FrameDecoder::new().max_payload(299));
    s.feed(&wire[..6]);
    assert_eq!(
        s.next_frame(),
        Err(Error::FrameTooLarge {
            len: 300,
            limit: 299
        })
    );
}

/// Strict mode names the first wrong header byte as soon as it arrives.
#[test]
fn strict_header_errors_are_early_and_precise() {
    let d = FrameDecoder::new;
    assert_eq!(
        d().decode(b"X"),
        Err(Error::BadMagic {
            found: [b'X', b'C']
        })
    );
    assert_eq!(
        d().decode(b"MX"),
        Err(Error::BadMagic {
            found: [b'M', b'X']
        })
    );
    assert_eq!(d().decode(b"M"), Ok(Decoded::NeedMore { needed: 5 }));
    assert_eq!(d().decode(b"MC\x02"), Err(Error::UnsupportedVersion(2)));
    assert_eq!(d().decode(b"MC\x01"), Ok(Decoded::NeedMore { needed: 3 }));
    assert_eq!(d().decode(b""), Ok(Decoded::NeedMore { needed: 6 }));
}
