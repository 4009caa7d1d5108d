//! Damage and truncation: every single-bit flip and every burst error of up to 16 bits is
//! detected, and a truncated frame is "need more", never a frame and never an error.
//!
//! Bits are numbered the way the CRC reads them: byte by byte, most significant bit first
//! (CRC-16/IBM-3740 is not reflected). A burst of length L is a set of flipped bits whose
//! first and last are L - 1 bits apart; the bits between may or may not flip.
//!
//! What "detected" means depends on where the damage lands, because the receiver reads the
//! header before it trusts anything:
//! - magic (bytes 0..2) changed: strict decoding fails with `BadMagic`;
//! - else version (byte 2) changed: `UnsupportedVersion`;
//! - else length (bytes 4..6) changed: the receiver reads a frame of another length. A
//!   longer one is `NeedMore` when the buffer ends with the frame; a shorter one ends
//!   inside the payload and is (almost always) `CrcMismatch`. The precise property is that
//!   the original frame is never accepted, and that nothing is accepted whose length is the
//!   original's;
//! - else (type, payload, CRC): the length is intact, the damage lies in the CRC's
//!   codeword and spans at most 16 bits, which a CRC of degree 16 with a non-zero constant
//!   term always detects: `CrcMismatch`, with `received` the damaged CRC bytes.

mod common;

use common::{Spec, decode_one, spec};
use mcp_codec::{
    Decoded, Error, FrameDecoder, HEADER_LEN, StreamDecoder, SyncMode, checksum, decode_frame,
};
use proptest::prelude::*;

/// Flips the bits of `pattern` (bit 0 = the first bit of the burst) starting at bit `start`.
fn flip(wire: &mut [u8], start: usize, pattern: u32, len: usize) {
    for k in 0..len {
        if pattern >> k & 1 == 1 {
            let bit = start + k;
            wire[bit / 8] ^= 0x80 >> (bit % 8);
        }
    }
}

fn length_of(wire: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([wire[4], wire[5]]))
}

/// Checks the property stated in the module comment for one damaged copy of `original`.
fn check_damaged(original: &[u8], damaged: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_ne!(original, damaged, "the damage flips at least one bit");
    let result = decode_frame(damaged);
    if damaged[..2] != original[..2] {
        prop_assert!(
            matches!(result, Err(Error::BadMagic { .. })),
            "{:?}",
            result
        );
    } else if damaged[2] != original[2] {
        prop_assert_eq!(result, Err(Error::UnsupportedVersion(damaged[2])));
    } else if damaged[4..6] != original[4..6] {
        let announced = length_of(damaged);
        let frame = decode_one(original);
        if announced > length_of(original) {
            prop_assert_eq!(
                result,
                Ok(Decoded::NeedMore {
                    needed: announced - length_of(original)
                })
            );
        } else {
            match result {
                Ok(Decoded::Frame { frame: got, len }) => {
                    prop_assert_ne!(got, frame);
                    prop_assert_ne!(len, original.len());
                }
                Ok(Decoded::NeedMore { .. }) => {
                    prop_assert!(false, "a shorter frame is all there: {:?}", result)
                }
                Ok(Decoded::Skip { .. }) => prop_assert!(false, "strict never skips"),
                Err(err) => prop_assert!(matches!(err, Error::CrcMismatch { .. }), "{:?}", err),
            }
        }
    } else {
        let crc_at = damaged.len() - 2;
        prop_assert_eq!(
            result,
            Err(Error::CrcMismatch {
                received: u16::from_be_bytes([damaged[crc_at], damaged[crc_at + 1]]),
                computed: checksum(&damaged[2..crc_at]),
            })
        );
    }
    // Whatever the damage, the resynchronising decoder never yields the original frame
    // either: it skips the damaged one (or, for a shortened length, may find another).
    let mut resync = FrameDecoder::new().mode(SyncMode::Resync);
    if let Ok(Decoded::Frame { frame, .. }) = resync.decode(damaged) {
        prop_assert_ne!(frame, decode_one(original));
    }
    Ok(())
}

/// A burst: where it starts, its length (1..=16) and the bits inside it.
fn burst(frame_bits: usize) -> impl Strategy<Value = (usize, usize, u32)> {
    (1usize..=16, any::<u32>(), any::<usize>()).prop_map(move |(len, inner, at)| {
        let len = len.min(frame_bits);
        // First and last bit of the burst always flip; the bits between are arbitrary.
        let pattern = (inner | 1 | 1 << (len - 1)) & ((1u32 << len) - 1);
        let start = at % (frame_bits - len + 1);
        (start, len, pattern)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every single-bit flip of a frame, at every position, is detected.
    #[test]
    fn every_single_bit_flip_is_detected(spec in spec(64)) {
        let wire = spec.wire();
        for bit in 0..wire.len() * 8 {
            let mut damaged = wire.clone();
            flip(&mut damaged, bit, 1, 1);
            check_damaged(&wire, &damaged)?;
        }
    }

    /// Every burst of up to 16 bits is detected (random frames, bursts and positions).
    #[test]
    fn every_burst_of_up_to_16_bits_is_detected(
        (wire, (start, len, pattern)) in spec(300)
            .prop_map(|s| s.wire())
            .prop_flat_map(|w| {
                let bits = w.len() * 8;
                (Just(w), burst(bits))
            }),
    ) {
        let mut damaged = wire.clone();
        flip(&mut damaged, start, pattern, len);
        check_damaged(&wire, &damaged)?;
    }

    /// Every burst of up to 16 bits that stays inside the payload and CRC of a frame gives
    /// `CrcMismatch`, whatever else the frame holds (the case the CRC alone must catch).
    #[test]
    fn every_burst_after_the_header_is_a_crc_mismatch(
        (wire, (start, len, pattern)) in spec(300)
            .prop_map(|s| s.wire())
            .prop_flat_map(|w| {
                let bits = (w.len() - HEADER_LEN) * 8;
                (Just(w), burst(bits))
            }),
    ) {
        let mut damaged = wire.clone();
        flip(&mut damaged, HEADER_LEN * 8 + start, pattern, len);
        let result = decode_frame(&damaged);
        prop_assert!(matches!(result, Err(Error::CrcMismatch { .. })), "{:?}", result);
    }

    /// Every proper prefix of a valid frame is `NeedMore` (never a frame, never an error),
    /// in both modes and through the stream decoder; the count asked for is exact once the
    /// header is in, and never overshoots the frame.
    #[test]
    fn truncated_frame_needs_more(spec in spec(300)) {
        let wire = spec.wire();
        for cut in 0..wire.len() {
            let prefix = &wire[..cut];
            let needed = if cut < HEADER_LEN { HEADER_LEN - cut } else { wire.len() - cut };
            prop_assert_eq!(decode_frame(prefix), Ok(Decoded::NeedMore { needed }), "cut {}", cut);
            let mut resync = FrameDecoder::new().mode(SyncMode::Resync);
            match resync.decode(prefix) {
                Ok(Decoded::NeedMore { needed: n }) => {
                    prop_assert!(n >= 1 && cut + n <= wire.len(), "cut {}: {}", cut, n);
                }
                other => prop_assert!(false, "cut {}: resync gave {:?}", cut, other),
            }
            prop_assert_eq!(resync.skipped_bytes(), 0);
            let mut stream = StreamDecoder::new(FrameDecoder::new());
            stream.feed(prefix);
            prop_assert_eq!(stream.next_frame(), Ok(None));
            prop_assert_eq!(stream.buffered(), cut);
        }
    }
}

/// Exhaustive on one small frame (a PING, 16 bytes): every error burst of length 1 to 16
/// at every position, every pattern. About 2.1 million damaged frames.
#[test]
fn exhaustive_bursts_on_a_ping() {
    let wire = Spec::Ping(*b"\x00\x01\x02\x03\xfc\xfd\xfe\xff").wire();
    let bits = wire.len() * 8;
    let mut damaged = wire.clone();
    let mut checked = 0u64;
    for len in 1..=16usize {
        // Patterns with the first and last bit set.
        let inner = if len <= 2 { 1 } else { 1u32 << (len - 2) };
        for start in 0..=bits - len {
            for mid in 0..inner {
                let pattern = if len == 1 {
                    1
                } else {
                    1 | mid << 1 | 1 << (len - 1)
                };
                damaged.copy_from_slice(&wire);
                flip(&mut damaged, start, pattern, len);
                // A cheaper form of `check_damaged`, for speed in debug builds: the
                // original frame is never what comes out.
                match decode_frame(&damaged) {
                    Ok(Decoded::Frame { len, .. }) => assert_ne!(
                        len,
                        wire.len(),
                        "undetected burst: start {start} len {len} pattern {pattern:#x}"
                    ),
                    Ok(Decoded::NeedMore { .. }) => {
                        assert!(length_of(&damaged) > 8, "start {start} len {len}")
                    }
                    Ok(Decoded::Skip { .. }) => unreachable!("strict never skips"),
                    Err(_) => {}
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 2_000_000, "{checked}");
}
