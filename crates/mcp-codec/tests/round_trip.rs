//! Every frame type round-trips with arbitrary contents, through every encoder.

mod common;

use common::{Spec, decode_one, encode, spec};
use mcp_codec::{
    Decoded, Envelope, FRAME_OVERHEAD, Frame, FrameDecoder, HEADER_LEN, OwnedEnvelope, SyncMode,
    decode_frame,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// encode -> decode_frame -> Envelope::parse gives back the envelope, and the lengths
    /// announced before encoding are the lengths written.
    #[test]
    fn every_envelope_round_trips(spec in spec(300)) {
        let envelope = spec.envelope();
        let wire = encode(&envelope);
        prop_assert_eq!(wire.len(), envelope.payload_len().unwrap() + FRAME_OVERHEAD);
        prop_assert_eq!(&wire[..2], b"MC");
        prop_assert_eq!(wire[2], 1);
        prop_assert_eq!(wire[3], envelope.frame_type().as_u8());

        let frame = decode_one(&wire);
        prop_assert_eq!(frame.frame_type(), Some(envelope.frame_type()));
        prop_assert_eq!(frame.payload(), &wire[HEADER_LEN..wire.len() - 2]);
        let parsed = Envelope::parse(frame).unwrap();
        prop_assert_eq!(parsed, envelope);

        // A parsed envelope (metadata read off the wire) encodes to the same bytes as the
        // one it came from (metadata given as pairs).
        prop_assert_eq!(encode(&parsed), wire.clone());

        // The same frame through the frame-level writer.
        let mut again = vec![0u8; wire.len()];
        let n = Frame::with_type_byte(wire[3], frame.payload()).encode(&mut again).unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(&again, &wire);
    }

    /// `encode_to_vec` appends exactly the bytes `encode` writes, after what is there.
    #[test]
    fn encode_to_vec_matches_encode(spec in spec(300), prefix in proptest::collection::vec(any::<u8>(), 0..8)) {
        let envelope = spec.envelope();
        let wire = encode(&envelope);
        let mut out = prefix.clone();
        let n = envelope.encode_to_vec(&mut out).unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &wire[..]);
    }

    /// Encoding into a larger buffer writes the frame at the front and reports its length;
    /// decoding ignores whatever follows it.
    #[test]
    fn encode_into_larger_buffer(spec in spec(100), extra in 1usize..64, fill in any::<u8>()) {
        let envelope = spec.envelope();
        let wire = encode(&envelope);
        let mut out = vec![fill; wire.len() + extra];
        let n = envelope.encode(&mut out).unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(&out[..n], &wire[..]);
        prop_assert!(out[n..].iter().all(|&b| b == fill), "nothing written past the frame");
        match decode_frame(&out).unwrap() {
            Decoded::Frame { frame, len } => {
                prop_assert_eq!(len, n);
                prop_assert_eq!(Envelope::parse(frame).unwrap(), envelope);
            }
            other => prop_assert!(false, "expected a frame, got {:?}", other),
        }
    }

    /// The resynchronising decoder accepts exactly what the strict one accepts when the
    /// input starts with a valid frame, and a payload limit at the frame's length accepts it.
    #[test]
    fn decoder_modes_and_exact_limit_agree(spec in spec(300)) {
        let wire = spec.wire();
        let payload_len = u16::try_from(wire.len() - FRAME_OVERHEAD).unwrap();
        for mode in [SyncMode::Strict, SyncMode::Resync] {
            let mut decoder = FrameDecoder::new().mode(mode).max_payload(payload_len);
            match decoder.decode(&wire).unwrap() {
                Decoded::Frame { frame, len } => {
                    prop_assert_eq!(len, wire.len());
                    prop_assert_eq!(frame, decode_one(&wire));
                }
                other => prop_assert!(false, "{:?}: expected a frame, got {:?}", mode, other),
            }
            prop_assert_eq!(decoder.skipped_bytes(), 0);
        }
    }

    /// Owned envelopes copy every field and encode like the borrowed ones (MORE aside:
    /// owned messages always hold their whole body).
    #[test]
    fn owned_envelopes_round_trip(spec in spec(300)) {
        let spec = match spec {
            Spec::Request { id, format, method, meta, body, .. } =>
                Spec::Request { id, more: false, format, method, meta, body },
            Spec::Response { id, format, meta, body, .. } =>
                Spec::Response { id, more: false, format, meta, body },
            Spec::Notify { format, topic, meta, body, .. } =>
                Spec::Notify { more: false, format, topic, meta, body },
            other => other,
        };
        let envelope = spec.envelope();
        let owned = OwnedEnvelope::from_envelope(&envelope);
        prop_assert_eq!(owned.as_envelope(), envelope);
        let mut out = Vec::new();
        owned.encode_to_vec(&mut out).unwrap();
        prop_assert_eq!(out, spec.wire());
    }
}

#[cfg(feature = "bytes")]
mod with_bytes {
    use super::common::{encode, spec};
    use mcp_codec::{Error, MessageFrames};
    use proptest::prelude::*;

    /// A message of several CONTINUATION frames comes out the same through every sink.
    #[test]
    fn a_message_of_several_frames_is_the_same_in_bytes_and_vec() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let meta = [(
            "traceparent",
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
        )];
        let envelope = mcp_codec::Envelope::Request(mcp_codec::Request {
            id: 9,
            flags: mcp_codec::Flags::NONE,
            format: 1,
            method: "upload",
            meta: mcp_codec::Metadata::from_pairs(&meta),
            body: &body,
        });
        let frames = MessageFrames::new(envelope).unwrap();
        let mut vec = Vec::new();
        frames.clone().write_all_to_vec(&mut vec).unwrap();
        let mut buf = bytes::BytesMut::new();
        frames.clone().write_all_to_bytes(&mut buf).unwrap();
        assert!(vec.len() > body.len() + 2 * 16, "several frames");
        assert_eq!(&buf[..], &vec[..]);
        let mut by_buf = bytes::BytesMut::new();
        frames.clone().write_all_to_buf(&mut by_buf).unwrap();
        assert_eq!(&by_buf[..], &vec[..]);
    }

    proptest! {
        /// `encode_to_buf` puts exactly the bytes `encode` writes into a `BufMut`.
        #[test]
        fn encode_to_buf_matches_encode(spec in spec(300)) {
            let envelope = spec.envelope();
            let wire = encode(&envelope);
            let mut buf = bytes::BytesMut::new();
            let n = envelope.encode_to_buf(&mut buf).unwrap();
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(&buf[..], &wire[..]);

            // A `&mut [u8]` is a `BufMut` with a fixed capacity.
            let mut fixed = vec![0u8; wire.len()];
            let mut slice: &mut [u8] = &mut fixed;
            envelope.encode_to_buf(&mut slice).unwrap();
            prop_assert_eq!(&fixed, &wire);
        }

        /// `encode_to_bytes` appends exactly the bytes `encode` writes, after what the
        /// buffer already holds (the CRC is fed from what was written, not from its start).
        #[test]
        fn encode_to_bytes_matches_encode(
            spec in spec(300),
            prefix in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let envelope = spec.envelope();
            let wire = encode(&envelope);
            let mut buf = bytes::BytesMut::from(&prefix[..]);
            let n = envelope.encode_to_bytes(&mut buf).unwrap();
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
            prop_assert_eq!(&buf[prefix.len()..], &wire[..]);
        }

        /// `MessageFrames::write_all_to_bytes` writes what `write_all_to_vec` writes.
        #[test]
        fn message_frames_to_bytes_matches_vec(spec in spec(300), prefix in 0usize..40) {
            let envelope = spec.envelope();
            let Ok(frames) = MessageFrames::new(envelope) else {
                return Ok(()); // not a message
            };
            let mut vec = vec![7u8; prefix];
            frames.clone().write_all_to_vec(&mut vec).unwrap();
            let mut buf = bytes::BytesMut::from(&vec![7u8; prefix][..]);
            let n = frames.clone().write_all_to_bytes(&mut buf).unwrap();
            prop_assert_eq!(n, vec.len() - prefix);
            prop_assert_eq!(&buf[..], &vec[..]);
        }

        /// A `BufMut` without room is refused before anything is written.
        #[test]
        fn encode_to_buf_refuses_a_full_buffer(spec in spec(100), short in 1usize..8) {
            let envelope = spec.envelope();
            let needed = envelope.encoded_len().unwrap();
            let mut fixed = vec![0u8; needed.saturating_sub(short)];
            let available = fixed.len();
            let mut slice: &mut [u8] = &mut fixed;
            prop_assert_eq!(
                envelope.encode_to_buf(&mut slice),
                Err(Error::BufferTooSmall { needed, available })
            );
            prop_assert!(fixed.iter().all(|&b| b == 0));
        }

        /// `MessageFrames::write_all_to_buf` writes what `write_all_to_vec` writes.
        #[test]
        fn message_frames_to_buf_matches_vec(spec in spec(300)) {
            let envelope = spec.envelope();
            let Ok(frames) = MessageFrames::new(envelope) else {
                return Ok(()); // not a message
            };
            let mut vec = Vec::new();
            frames.clone().write_all_to_vec(&mut vec).unwrap();
            let mut buf = bytes::BytesMut::new();
            let n = frames.clone().write_all_to_buf(&mut buf).unwrap();
            prop_assert_eq!(n, vec.len());
            prop_assert_eq!(&buf[..], &vec[..]);
        }
    }
}
