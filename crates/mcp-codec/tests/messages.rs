//! Large messages (docs/protocol.md section 5): `MessageFrames` splits, `Assembler` reassembles
//! under the maximum message size, and only PING and PONG may come between the frames.

mod common;

use common::{decode_one, raw_frame};
use mcp_codec::{
    Assembled, Assembler, Continuation, DEFAULT_MAX_MESSAGE_LEN, Envelope, Error, ErrorCode,
    ErrorFrame, FRAME_OVERHEAD, Flags, FrameType, MAX_CHUNK_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
    MessageFrames, Metadata, Notify, OwnedEnvelope, Ping, Pong, Request, Response, format,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// What the assembler said about one frame, owned so it outlives the borrow.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Envelope(OwnedEnvelope),
    Message { head: OwnedEnvelope, body: Vec<u8> },
    RequestTooLarge(u32),
    Malformed(u32, Error),
    Absorbed,
}

fn push(assembler: &mut Assembler, wire: &[u8]) -> Result<Got, Error> {
    Ok(match assembler.push(decode_one(wire))? {
        Assembled::Envelope(e) => Got::Envelope(OwnedEnvelope::from_envelope(&e)),
        Assembled::Message { head, body } => Got::Message {
            head: OwnedEnvelope::from_envelope(&head),
            body,
        },
        Assembled::RequestTooLarge { id } => Got::RequestTooLarge(id),
        Assembled::MalformedRequest { id, error } => Got::Malformed(id, error),
        Assembled::Absorbed => Got::Absorbed,
        other => panic!("unexpected {other:?}"),
    })
}

/// Splits a message with `write_next` into a buffer of the largest frame size, checking
/// the announced lengths and that `write_all_to_vec` writes the same bytes.
fn split(envelope: Envelope<'_>) -> Vec<Vec<u8>> {
    let mut frames = MessageFrames::new(envelope).expect("valid message");
    let count = frames.frame_count();
    let total = frames.total_len();
    let mut all = Vec::new();
    frames.clone().write_all_to_vec(&mut all).unwrap();
    assert_eq!(all.len(), total, "total_len");

    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    while let Some(len) = frames.next_len() {
        let written = frames.write_next(&mut buf).unwrap().unwrap();
        assert_eq!(written, len, "next_len");
        out.push(buf[..written].to_vec());
    }
    assert!(frames.write_next(&mut buf).is_none());
    assert_eq!(out.len(), count, "frame_count");
    assert_eq!(out.concat(), all, "write_next and write_all_to_vec agree");
    out
}

/// The layout rules of docs/protocol.md section 5 for a split message.
fn check_layout(frames: &[Vec<u8>], head_type: FrameType) {
    let last = frames.len() - 1;
    for (i, wire) in frames.iter().enumerate() {
        let envelope = Envelope::parse(decode_one(wire)).unwrap();
        let more = envelope.flags().unwrap().more();
        assert_eq!(
            more,
            i < last,
            "MORE on every frame but the last (frame {i})"
        );
        if i == 0 {
            assert_eq!(envelope.frame_type(), head_type);
            if last > 0 {
                assert_eq!(
                    wire.len(),
                    MAX_FRAME_LEN,
                    "a continued head fills its frame"
                );
                assert!(!envelope.body().unwrap().is_empty(), "head carries body");
            }
        } else {
            let Envelope::Continuation(c) = envelope else {
                panic!("frame {i} is not a CONTINUATION")
            };
            if i < last {
                assert_eq!(c.chunk.len(), MAX_CHUNK_LEN, "full chunk (frame {i})");
            } else {
                assert!((1..=MAX_CHUNK_LEN).contains(&c.chunk.len()));
            }
        }
    }
}

/// Feeds every frame; every one but the last is absorbed, the last yields the message.
fn reassemble(assembler: &mut Assembler, frames: &[Vec<u8>]) -> Got {
    let (last, rest) = frames.split_last().unwrap();
    for wire in rest {
        assert_eq!(push(assembler, wire), Ok(Got::Absorbed));
        assert!(assembler.in_message());
    }
    let got = push(assembler, last).unwrap();
    assert!(!assembler.in_message());
    got
}

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

const META: &[(&str, &[u8])] = &[("traceparent", b"00-ab-cd-01"), ("k", b"v")];

fn request(body: &[u8]) -> Request<'_> {
    Request {
        id: 77,
        flags: Flags::NONE,
        format: format::PROTOBUF,
        method: "bulk.put",
        meta: Metadata::from_pairs(META),
        body,
    }
}

/// Bytes of the REQUEST envelope above, without body.
const REQUEST_ENVELOPE: usize = 4 + 1 + 1 + 1 + 8 + 1 + (1 + 11 + 2 + 11) + (1 + 1 + 2 + 1);

#[test]
fn bodies_of_every_size_class_split_and_reassemble_exactly() {
    let fills_one = MAX_PAYLOAD_LEN - REQUEST_ENVELOPE;
    for (len, frames_expected) in [
        (0, 1),
        (1, 1),
        (fills_one, 1),
        (fills_one + 1, 2),
        (65_536, 2),
        (200_000, 4),
        (4 * 1024 * 1024, 65),
    ] {
        let body = body_of(len);
        let frames = split(request(&body).into());
        assert_eq!(frames.len(), frames_expected, "body {len}");
        check_layout(&frames, FrameType::Request);
        let mut assembler = Assembler::default();
        let got = reassemble(&mut assembler, &frames);
        if frames.len() == 1 {
            let Got::Envelope(OwnedEnvelope::Request(r)) = got else {
                panic!("body {len}: {got:?}")
            };
            assert_eq!(r.body, body);
            assert_eq!(r.method, "bulk.put");
        } else {
            let Got::Message {
                head: OwnedEnvelope::Request(head),
                body: got,
            } = got
            else {
                panic!("body {len}: {got:?}")
            };
            assert!(got == body, "body {len}: reassembled body differs");
            assert_eq!(head.id, 77);
            assert_eq!(head.format, format::PROTOBUF);
            assert_eq!(head.method, "bulk.put");
            assert_eq!(head.meta.len(), 2);
            assert_eq!(head.body.len(), fills_one, "the head's part of the body");
        }
    }
}

#[test]
fn responses_and_notifies_split_and_reassemble_too() {
    let body = body_of(150_000);
    let response = Response {
        id: 3,
        flags: Flags::MORE, // ignored: MessageFrames decides MORE
        format: format::JSON,
        meta: Metadata::EMPTY,
        body: &body,
    };
    let frames = split(response.into());
    check_layout(&frames, FrameType::Response);
    let got = reassemble(&mut Assembler::default(), &frames);
    assert!(
        matches!(&got, Got::Message { body: b, head: OwnedEnvelope::Response(_) } if *b == body)
    );

    let notify = Notify {
        flags: Flags::NONE,
        format: format::RAW,
        topic: "orders.created",
        meta: Metadata::from_pairs(META),
        body: &body,
    };
    let frames = split(notify.into());
    check_layout(&frames, FrameType::Notify);
    let got = reassemble(&mut Assembler::default(), &frames);
    assert!(
        matches!(&got, Got::Message { body: b, head: OwnedEnvelope::Notify(n) }
        if *b == body && n.topic == "orders.created")
    );

    // A small body with MORE set by the caller still goes out as one frame without MORE.
    let frames = split(
        Response {
            body: b"x",
            ..response
        }
        .into(),
    );
    assert_eq!(frames.len(), 1);
    check_layout(&frames, FrameType::Response);
}

#[test]
fn owned_envelopes_split_large_bodies() {
    let body = body_of(100_000);
    let owned = OwnedEnvelope::from_envelope(&request(&body).into());
    let mut out = Vec::new();
    let n = owned.encode_to_vec(&mut out).unwrap();
    assert_eq!(n, out.len());
    assert_eq!(out, split(request(&body).into()).concat());
}

/// A message split by hand into chunks of the given sizes, as a receiver may get it from a
/// sender that does not fill its frames.
fn hand_split(body: &[u8], head_part: usize, chunk_sizes: &[usize]) -> Vec<Vec<u8>> {
    let head_part = head_part.min(body.len());
    let mut rest = &body[head_part..];
    let mut frames = vec![common::encode(
        &Request {
            flags: Flags::NONE.with_more(!rest.is_empty()),
            ..request(&body[..head_part])
        }
        .into(),
    )];
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let chunk = Continuation {
            flags: Flags::NONE.with_more(n < rest.len()),
            chunk: &rest[..n],
        };
        frames.push(common::encode(&chunk.into()));
        rest = &rest[n..];
    }
    frames
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any chunk sizes, with PINGs and PONGs anywhere between the frames: the body comes
    /// back exactly and every heartbeat passes through at once.
    #[test]
    fn any_chunking_with_heartbeats_reassembles(
        body in vec(any::<u8>(), 1..5_000),
        head_part in 0usize..100,
        sizes in vec(1usize..700, 1..8),
        beats in vec((any::<bool>(), any::<[u8; 8]>()), 0..10),
        beat_at in vec(any::<usize>(), 0..10),
    ) {
        let frames = hand_split(&body, head_part, &sizes);
        let mut assembler = Assembler::default();
        let mut beat_at: Vec<usize> = beat_at.iter().map(|i| i % frames.len()).collect();
        beat_at.sort_unstable();
        let mut beats = beats.into_iter();
        let mut result = None;
        for (i, wire) in frames.iter().enumerate() {
            for _ in beat_at.iter().filter(|&&at| at == i && i > 0) {
                let Some((pong, nonce)) = beats.next() else { break };
                let beat = if pong {
                    Envelope::Pong(Pong { nonce })
                } else {
                    Envelope::Ping(Ping { nonce })
                };
                let got = push(&mut assembler, &common::encode(&beat)).unwrap();
                prop_assert_eq!(got, Got::Envelope(OwnedEnvelope::from_envelope(&beat)));
                prop_assert!(assembler.in_message());
            }
            let got = push(&mut assembler, wire).unwrap();
            if i + 1 < frames.len() {
                prop_assert_eq!(got, Got::Absorbed);
            } else {
                result = Some(got);
            }
        }
        match result.unwrap() {
            Got::Message { body: got, .. } => prop_assert_eq!(got, body),
            Got::Envelope(OwnedEnvelope::Request(r)) => {
                prop_assert_eq!(frames.len(), 1);
                prop_assert_eq!(r.body, body);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// A split of any body length obeys the layout rules and reassembles.
    #[test]
    fn any_body_length_splits_by_the_rules(len in 0usize..300_000) {
        let body = body_of(len);
        let frames = split(request(&body).into());
        check_layout(&frames, FrameType::Request);
        let expected_count = 1 + len
            .saturating_sub(MAX_PAYLOAD_LEN - REQUEST_ENVELOPE)
            .div_ceil(MAX_CHUNK_LEN);
        prop_assert_eq!(frames.len(), expected_count);
        let total: usize = frames.iter().map(Vec::len).sum();
        prop_assert_eq!(
            total,
            REQUEST_ENVELOPE + len + expected_count * FRAME_OVERHEAD + (expected_count - 1)
        );
        match reassemble(&mut Assembler::default(), &frames) {
            Got::Message { body: got, .. } => prop_assert!(got == body),
            Got::Envelope(OwnedEnvelope::Request(r)) => prop_assert!(r.body == body),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn only_ping_and_pong_may_come_between_frames() {
    let body = body_of(100);
    let frames = hand_split(&body, 10, &[30]);
    assert_eq!(frames.len(), 4);
    let intruders: Vec<(u8, Vec<u8>)> = vec![
        (0x01, common::encode(&request(b"x").into())),
        (
            0x02,
            common::encode(
                &Response {
                    id: 1,
                    flags: Flags::NONE,
                    format: 0,
                    meta: Metadata::EMPTY,
                    body: b"",
                }
                .into(),
            ),
        ),
        (
            0x04,
            common::encode(
                &ErrorFrame {
                    id: 0,
                    code: ErrorCode::INTERNAL,
                    message: "",
                }
                .into(),
            ),
        ),
        (0x07, raw_frame(0x07, &[0, 0, 0, 1])),
        (0x08, raw_frame(0x08, &[0, 0, 0, 1, 0, 0])),
        (0x00, raw_frame(0x00, b"unknown")),
        (0x0a, raw_frame(0x0a, b"")),
        (0xff, raw_frame(0xff, b"future")),
    ];
    for (ty, intruder) in &intruders {
        let mut assembler = Assembler::default();
        assert_eq!(push(&mut assembler, &frames[0]), Ok(Got::Absorbed));
        assert_eq!(push(&mut assembler, &frames[1]), Ok(Got::Absorbed));
        let err = push(&mut assembler, intruder).unwrap_err();
        assert_eq!(
            err,
            Error::UnexpectedFrame {
                frame_type: *ty,
                context: "only PING and PONG may come between the frames of one message"
            }
        );
        assert!(err.is_fatal());
        assert_eq!(err.error_code(), ErrorCode::MALFORMED);
        assert_eq!(
            assembler.unknown_frames(),
            0,
            "not counted inside a message"
        );
    }
}

#[test]
fn continuation_without_a_head_is_an_error() {
    let chunk = common::encode(
        &Continuation {
            flags: Flags::NONE,
            chunk: b"orphan",
        }
        .into(),
    );
    let expected = Err(Error::UnexpectedFrame {
        frame_type: 0x09,
        context: "CONTINUATION without a message in progress",
    });
    assert_eq!(push(&mut Assembler::default(), &chunk), expected);

    // Nor after a message has completed.
    let body = body_of(100);
    let frames = hand_split(&body, 10, &[45]);
    let mut assembler = Assembler::default();
    assert!(matches!(
        reassemble(&mut assembler, &frames),
        Got::Message { .. }
    ));
    assert_eq!(push(&mut assembler, &chunk), expected);
}

#[test]
fn unknown_frames_outside_a_message_are_counted_and_absorbed() {
    let mut assembler = Assembler::default();
    for (i, ty) in [0x00u8, 0x0a, 0x80, 0xff].into_iter().enumerate() {
        assert_eq!(
            push(&mut assembler, &raw_frame(ty, b"x")),
            Ok(Got::Absorbed)
        );
        assert_eq!(assembler.unknown_frames(), i as u64 + 1);
    }
    // And the stream goes on.
    assert!(matches!(
        push(&mut assembler, &common::encode(&request(b"ok").into())),
        Ok(Got::Envelope(OwnedEnvelope::Request(_)))
    ));
}

#[test]
fn single_frame_envelopes_pass_through() {
    let mut assembler = Assembler::default();
    let cases: Vec<Envelope<'_>> = vec![
        request(b"one").into(),
        Ping { nonce: [1; 8] }.into(),
        ErrorFrame {
            id: 0,
            code: ErrorCode::MALFORMED,
            message: "bye",
        }
        .into(),
        mcp_codec::Cancel { id: 9 }.into(),
        mcp_codec::GoAway {
            last_id: 9,
            code: mcp_codec::GoAwayCode::IDLE,
            reason: "",
        }
        .into(),
    ];
    for envelope in cases {
        assert_eq!(
            push(&mut assembler, &common::encode(&envelope)),
            Ok(Got::Envelope(OwnedEnvelope::from_envelope(&envelope)))
        );
    }
}

/// A request body split over frames so that it totals `len` bytes.
fn split_request_of(len: usize, id: u32) -> Vec<Vec<u8>> {
    let body = body_of(len);
    let frames = hand_split(&body, 100, &[400]);
    // Re-number: `hand_split` uses `request`, id 77.
    frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                let mut f = f;
                f[6..10].copy_from_slice(&id.to_be_bytes());
                // Fix the CRC after changing the id.
                let crc_at = f.len() - 2;
                let crc = mcp_codec::checksum(&f[2..crc_at]);
                f[crc_at..].copy_from_slice(&crc.to_be_bytes());
                f
            } else {
                f
            }
        })
        .collect()
}

#[test]
fn a_message_of_exactly_the_limit_is_accepted() {
    let limit = 1_000;
    let frames = split_request_of(limit, 5);
    assert!(frames.len() > 2);
    let mut assembler = Assembler::new(limit);
    assert_eq!(assembler.max_message_len(), limit);
    assert!(
        matches!(reassemble(&mut assembler, &frames), Got::Message { body, .. } if body.len() == limit)
    );
    // A single frame at the limit too.
    let body = body_of(limit);
    assert!(matches!(
        push(&mut assembler, &common::encode(&request(&body).into())),
        Ok(Got::Envelope(_))
    ));
}

#[test]
fn a_request_over_the_limit_is_refused_by_id_and_its_frames_skipped() {
    let limit = 1_000;
    let frames = split_request_of(limit + 1, 5);
    let mut assembler = Assembler::new(limit);
    let mut got = Vec::new();
    for wire in &frames {
        got.push(push(&mut assembler, wire).unwrap());
    }
    // Head 100 + chunks of 400, 400 and 101: the last frame crosses the limit by one.
    assert_eq!(
        got,
        vec![
            Got::Absorbed,
            Got::Absorbed,
            Got::Absorbed,
            Got::RequestTooLarge(5),
        ]
    );
    assert!(!assembler.in_message());
    // 1,500 bytes: the third chunk crosses; the fourth is skipped.
    let frames = split_request_of(1_500, 5);
    let got: Vec<Got> = frames
        .iter()
        .map(|wire| push(&mut assembler, wire).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            Got::Absorbed,
            Got::Absorbed,
            Got::Absorbed,
            Got::RequestTooLarge(5),
            Got::Absorbed
        ]
    );
    assert!(!assembler.in_message());
    // The next message works.
    let next = split_request_of(500, 6);
    assert!(
        matches!(reassemble(&mut assembler, &next), Got::Message { body, .. } if body.len() == 500)
    );

    // PING while skipping still passes through; other frames are still refused.
    let frames = split_request_of(3_000, 8);
    let mut assembler = Assembler::new(limit);
    for wire in &frames[..3] {
        push(&mut assembler, wire).unwrap();
    }
    assert_eq!(
        push(&mut assembler, &frames[3]),
        Ok(Got::RequestTooLarge(8))
    );
    assert!(assembler.in_message(), "skipping the rest");
    let ping = Envelope::Ping(Ping { nonce: [2; 8] });
    assert_eq!(
        push(&mut assembler, &common::encode(&ping)),
        Ok(Got::Envelope(OwnedEnvelope::from_envelope(&ping)))
    );
    assert!(push(&mut assembler, &raw_frame(0x42, b"")).is_err());
}

/// A receiver that cannot hold a message any longer abandons it: the REQUEST's id comes
/// back to be answered, its remaining frames are skipped, and the next message is whole.
#[test]
fn an_abandoned_request_gives_its_id_and_its_remaining_frames_are_skipped() {
    let frames = split_request_of(1_000, 5);
    assert!(frames.len() > 3);
    let mut assembler = Assembler::new(10_000);
    assert_eq!(assembler.abandon(), None, "nothing to abandon");
    assert_eq!(assembler.partial_len(), 0);
    assert_eq!(push(&mut assembler, &frames[0]), Ok(Got::Absorbed));
    assert_eq!(push(&mut assembler, &frames[1]), Ok(Got::Absorbed));
    let held = assembler.partial_len();
    assert!(held > 100, "head and body so far are held: {held}");
    assert_eq!(
        assembler.abandon(),
        Some((mcp_codec::FrameType::Request, Some(5)))
    );
    assert_eq!(assembler.partial_len(), 0);
    assert!(assembler.in_message(), "skipping the rest");
    assert_eq!(assembler.abandon(), None, "already skipping");
    for wire in &frames[2..] {
        assert_eq!(push(&mut assembler, wire), Ok(Got::Absorbed));
    }
    assert!(!assembler.in_message());
    let again = split_request_of(1_000, 6);
    assert!(matches!(
        reassemble(&mut assembler, &again),
        Got::Message { body, .. } if body == body_of(1_000)
    ));
}

#[test]
fn a_request_head_over_the_limit_is_refused_at_once() {
    let limit = 50;
    // One frame, body over the limit: refused, nothing to skip.
    let body = body_of(51);
    let mut assembler = Assembler::new(limit);
    assert_eq!(
        push(&mut assembler, &common::encode(&request(&body).into())),
        Ok(Got::RequestTooLarge(77))
    );
    assert!(!assembler.in_message());
    // A head with MORE whose own part is already over: refused, continuations skipped.
    let frames = hand_split(&body_of(200), 60, &[70]);
    assert_eq!(
        push(&mut assembler, &frames[0]),
        Ok(Got::RequestTooLarge(77))
    );
    for wire in &frames[1..] {
        assert_eq!(push(&mut assembler, wire), Ok(Got::Absorbed));
    }
    assert!(!assembler.in_message());
    assert!(matches!(
        push(&mut assembler, &common::encode(&request(b"small").into())),
        Ok(Got::Envelope(_))
    ));
}

#[test]
fn other_messages_over_the_limit_are_fatal() {
    let limit = 1_000;
    let body = body_of(limit + 1);
    let response = Response {
        id: 1,
        flags: Flags::NONE,
        format: 0,
        meta: Metadata::EMPTY,
        body: &body,
    };
    // In one frame.
    let err = push(
        &mut Assembler::new(limit),
        &common::encode(&response.into()),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::MessageTooLarge {
            len: limit + 1,
            limit
        }
    );
    assert_eq!(err.error_code(), ErrorCode::TOO_LARGE);
    assert!(err.is_fatal());

    // Over several frames: the frame that crosses the limit is refused.
    let big = body_of(70_000);
    let frames = split(
        Response {
            body: &big,
            ..response
        }
        .into(),
    );
    let mut assembler = Assembler::new(69_999);
    assert_eq!(push(&mut assembler, &frames[0]), Ok(Got::Absorbed));
    assert_eq!(
        push(&mut assembler, &frames[1]),
        Err(Error::MessageTooLarge {
            len: 70_000,
            limit: 69_999
        })
    );
    // A head whose own part is over the limit is refused at once.
    assert_eq!(
        push(&mut Assembler::new(65_000), &frames[0]),
        Err(Error::MessageTooLarge {
            len: MAX_PAYLOAD_LEN - 7,
            limit: 65_000
        })
    );

    let notify = Notify {
        flags: Flags::NONE,
        format: 0,
        topic: "t",
        meta: Metadata::EMPTY,
        body: &body,
    };
    assert!(matches!(
        push(&mut Assembler::new(limit), &common::encode(&notify.into())),
        Err(Error::MessageTooLarge { .. })
    ));
}

#[test]
fn a_malformed_request_with_a_readable_id_is_answered_not_fatal() {
    let mut assembler = Assembler::default();
    // Empty method.
    let bad = raw_frame(0x01, &[0, 0, 0, 42, 0, 1, 0, 0]);
    assert_eq!(
        push(&mut assembler, &bad),
        Ok(Got::Malformed(42, Error::Empty { field: "method" }))
    );
    // Reserved flag bit.
    let bad = raw_frame(0x01, &[0, 0, 0, 43, 0x40, 1, 1, b'm', 0]);
    assert_eq!(
        push(&mut assembler, &bad),
        Ok(Got::Malformed(43, Error::ReservedFlags(0x40)))
    );
    // Truncated after the id.
    let bad = raw_frame(0x01, &[0, 0, 0, 44]);
    assert_eq!(
        push(&mut assembler, &bad),
        Ok(Got::Malformed(44, Error::Truncated { field: "flags" }))
    );
    assert!(!assembler.in_message());
}

#[test]
fn a_malformed_request_with_more_set_has_its_continuations_skipped() {
    let mut assembler = Assembler::default();
    // Uppercase metadata key, MORE set.
    let bad = raw_frame(
        0x01,
        &[0, 0, 0, 45, 0x01, 1, 1, b'm', 1, 1, b'K', 0, 0, b'b'],
    );
    assert_eq!(
        push(&mut assembler, &bad),
        Ok(Got::Malformed(45, Error::InvalidMetaKey { byte: b'K' }))
    );
    assert!(assembler.in_message());
    let more = common::encode(
        &Continuation {
            flags: Flags::MORE,
            chunk: b"c1",
        }
        .into(),
    );
    let last = common::encode(
        &Continuation {
            flags: Flags::NONE,
            chunk: b"c2",
        }
        .into(),
    );
    assert_eq!(push(&mut assembler, &more), Ok(Got::Absorbed));
    assert_eq!(push(&mut assembler, &last), Ok(Got::Absorbed));
    assert!(!assembler.in_message());
    assert!(matches!(
        push(&mut assembler, &common::encode(&request(b"next").into())),
        Ok(Got::Envelope(_))
    ));

    // A malformed REQUEST whose flags byte has reserved bits: MORE cannot be trusted, so
    // nothing is skipped and a following CONTINUATION is an orphan.
    let bad = raw_frame(0x01, &[0, 0, 0, 46, 0x03, 1, 1, b'm', 0]);
    assert_eq!(
        push(&mut assembler, &bad),
        Ok(Got::Malformed(46, Error::ReservedFlags(0x03)))
    );
    assert!(!assembler.in_message());
}

#[test]
fn malformed_frames_without_a_usable_id_are_fatal() {
    let mut assembler = Assembler::default();
    // REQUEST id 0.
    assert_eq!(
        push(
            &mut assembler,
            &raw_frame(0x01, &[0, 0, 0, 0, 0, 1, 1, b'm', 0])
        ),
        Err(Error::ZeroId)
    );
    // REQUEST too short for an id.
    assert_eq!(
        push(&mut assembler, &raw_frame(0x01, &[0, 0, 1])),
        Err(Error::Truncated { field: "id" })
    );
    // Any other malformed frame.
    assert_eq!(
        push(&mut assembler, &raw_frame(0x02, &[0, 0, 0, 1, 0x02, 0, 0])),
        Err(Error::ReservedFlags(0x02))
    );
    assert_eq!(
        push(&mut assembler, &raw_frame(0x05, &[0; 7])),
        Err(Error::BadPingLength { len: 7 })
    );
    // A malformed CONTINUATION inside a message.
    let frames = hand_split(&body_of(100), 10, &[30]);
    let mut assembler = Assembler::default();
    push(&mut assembler, &frames[0]).unwrap();
    assert_eq!(
        push(&mut assembler, &raw_frame(0x09, &[0x01])),
        Err(Error::Empty {
            field: "continuation chunk"
        })
    );
}

#[test]
fn deadline_metadata() {
    let d = |ms: u32| ms.to_be_bytes();
    let (a, b, c) = (d(500), d(200), d(900));
    let pairs: &[(&str, &[u8])] = &[
        ("deadline", &a),
        ("deadline", b"\x00\x00\x01"),         // 3 bytes: ignored
        ("deadline", &b),                      // the smallest
        ("deadline", b"\x00\x00\x00\x00\x01"), // 5 bytes: ignored
        ("deadlines", &d(1)),                  // another key
        ("deadline", &c),
    ];
    let meta = Metadata::from_pairs(pairs);
    assert_eq!(meta.deadline_ms(), Some(200));
    // The same off the wire.
    let wire = common::encode(
        &Request {
            meta,
            ..request(b"")
        }
        .into(),
    );
    let Envelope::Request(r) = Envelope::parse(decode_one(&wire)).unwrap() else {
        panic!("request")
    };
    assert_eq!(r.meta.deadline_ms(), Some(200));
    assert_eq!(r.meta.len(), 6);
    assert_eq!(r.meta.get("deadline"), Some(&a[..]), "get gives the first");
    let keys: Vec<&str> = r.meta.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "deadline",
            "deadline",
            "deadline",
            "deadline",
            "deadlines",
            "deadline"
        ]
    );

    let none: &[(&str, &[u8])] = &[("deadline", b"\x01\x02"), ("deadline", b"")];
    assert_eq!(Metadata::from_pairs(none).deadline_ms(), None);
    assert_eq!(Metadata::EMPTY.deadline_ms(), None);
    let zero: &[(&str, &[u8])] = &[("deadline", &[0, 0, 0, 0])];
    assert_eq!(Metadata::from_pairs(zero).deadline_ms(), Some(0));
}

#[test]
fn default_assembler_limit_is_16_mib() {
    assert_eq!(DEFAULT_MAX_MESSAGE_LEN, 16 * 1024 * 1024);
    assert_eq!(
        Assembler::default().max_message_len(),
        DEFAULT_MAX_MESSAGE_LEN
    );
    assert_eq!(Assembler::default().unknown_frames(), 0);
}

/// docs/protocol.md, reading 3: the codec never sends a head frame with MORE and an empty
/// body, but accepts one.
#[test]
fn a_head_frame_with_more_and_an_empty_body_is_accepted() {
    let body = body_of(10);
    let frames = hand_split(&body, 0, &[4]);
    let Envelope::Request(head) = Envelope::parse(decode_one(&frames[0])).unwrap() else {
        panic!("a request")
    };
    assert!(head.flags.more());
    assert!(head.body.is_empty());
    let got = reassemble(&mut Assembler::default(), &frames);
    assert!(matches!(got, Got::Message { body: b, .. } if b == body));

    // The sender side: an envelope leaving no room for a body byte is refused rather than
    // sent with an empty head body (see `validation.rs`), and a split head always carries
    // body bytes (see `check_layout`).
}

/// Error codes read well in one-line messages: the number, then the name when it has one.
#[test]
fn error_codes_display_their_number_and_name() {
    use mcp_codec::ErrorCode;
    assert_eq!(ErrorCode::UNKNOWN_METHOD.to_string(), "2 (UNKNOWN_METHOD)");
    assert_eq!(ErrorCode(1404).to_string(), "1404");
    assert_eq!(format!("{:?}", ErrorCode::TOO_LARGE), "7(TOO_LARGE)");
}

/// The assembler in each of its states: idle, collecting a message, skipping the rest of a
/// refused request, and idle again after a message of several frames.
fn assemblers(limit: usize) -> Vec<(&'static str, Assembler)> {
    let head = |id: u32| {
        let envelope = Envelope::Request(Request {
            id,
            flags: Flags::MORE,
            ..request(&[9; 4])
        });
        let mut wire = vec![0u8; envelope.encoded_len().unwrap()];
        envelope.encode(&mut wire).unwrap();
        wire
    };
    let last = {
        let envelope = Envelope::Continuation(Continuation {
            flags: Flags::NONE,
            chunk: &[1],
        });
        let mut wire = vec![0u8; envelope.encoded_len().unwrap()];
        envelope.encode(&mut wire).unwrap();
        wire
    };
    let idle = Assembler::new(limit);
    let mut collecting = Assembler::new(limit);
    assert_eq!(push(&mut collecting, &head(1)), Ok(Got::Absorbed));
    let mut skipping = Assembler::new(3);
    assert_eq!(push(&mut skipping, &head(2)), Ok(Got::RequestTooLarge(2)));
    assert!(skipping.in_message());
    let mut done = collecting.clone();
    assert!(matches!(push(&mut done, &last), Ok(Got::Message { .. })));
    assert!(!done.in_message());
    vec![
        ("idle", idle),
        ("collecting", collecting),
        ("skipping", skipping),
        ("done", done),
    ]
}

/// `Assembler::is_whole` (the receivers' fast path) says yes exactly when `push` would hand
/// the frame's message back as it is, and `push` then leaves the assembler as it was.
#[test]
fn is_whole_agrees_with_push() {
    const LIMIT: usize = 16;
    let mut wholes = 0;
    for (state, assembler) in assemblers(LIMIT) {
        for more in [false, true] {
            for len in [0, 1, LIMIT, LIMIT + 1] {
                let body = body_of(len);
                let flags = Flags::NONE.with_more(more);
                let envelopes = [
                    Envelope::Request(Request {
                        flags,
                        ..request(&body)
                    }),
                    Envelope::Response(Response {
                        id: 3,
                        flags,
                        format: format::JSON,
                        meta: Metadata::EMPTY,
                        body: &body,
                    }),
                    Envelope::Notify(Notify {
                        flags,
                        format: format::RAW,
                        topic: "t.x",
                        meta: Metadata::from_pairs(META),
                        body: &body,
                    }),
                ];
                for envelope in envelopes {
                    let mut wire = vec![0u8; envelope.encoded_len().unwrap()];
                    envelope.encode(&mut wire).unwrap();
                    let frame = decode_one(&wire);
                    let parsed = Envelope::parse(frame).unwrap();
                    let whole =
                        assembler.is_whole(parsed.flags().unwrap(), parsed.body().unwrap().len());
                    let mut pushed = assembler.clone();
                    let passed =
                        matches!(pushed.push(frame), Ok(Assembled::Envelope(e)) if e == parsed);
                    let what = format!(
                        "{state}, MORE {more}, body {len}, {:?}",
                        parsed.frame_type()
                    );
                    assert_eq!(whole, passed, "{what}");
                    if whole {
                        wholes += 1;
                        assert_eq!(pushed.in_message(), assembler.in_message(), "{what}");
                        assert_eq!(
                            pushed.unknown_frames(),
                            assembler.unknown_frames(),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
    // Idle and done, MORE clear, the three bodies within the limit, three message types.
    assert_eq!(wholes, 2 * 3 * 3);
}
