//! Envelope validation (docs/protocol.md section 4): every malformed payload gives the error
//! variant that names its fault, and the encoders refuse the same things before writing.

mod common;

use common::{decode_one, raw_frame};
use mcp_codec::{
    Cancel, Continuation, Envelope, Error, ErrorCode, ErrorFrame, Flags, Frame, FrameType, GoAway,
    GoAwayCode, MAX_PAYLOAD_LEN, MessageFrames, Metadata, Notify, Ping, Pong, Request, Response,
    format, validate_key,
};

/// Parses `payload` as a frame of type `type_byte`, through the frame layer.
fn parse(type_byte: u8, payload: &[u8]) -> Result<(), Error> {
    let wire = raw_frame(type_byte, payload);
    Envelope::parse(decode_one(&wire)).map(|_| ())
}

const REQ: u8 = 0x01;
const RESP: u8 = 0x02;
const NOTIFY: u8 = 0x03;
const ERR: u8 = 0x04;
const PING: u8 = 0x05;
const PONG: u8 = 0x06;
const CANCEL: u8 = 0x07;
const GOAWAY: u8 = 0x08;
const CONT: u8 = 0x09;

/// REQUEST id 5, the given flags, JSON, method "m", no meta, body "x".
fn request_with_flags(flags: u8) -> Vec<u8> {
    vec![0, 0, 0, 5, flags, 1, 1, b'm', 0, b'x']
}

#[test]
fn reserved_flag_bits_are_refused_in_every_frame_with_flags() {
    for bad in [0x02u8, 0x03, 0x04, 0x80, 0xff, 0x81] {
        assert_eq!(
            parse(REQ, &request_with_flags(bad)),
            Err(Error::ReservedFlags(bad))
        );
        assert_eq!(
            parse(RESP, &[0, 0, 0, 5, bad, 0, 0]),
            Err(Error::ReservedFlags(bad))
        );
        assert_eq!(
            parse(NOTIFY, &[bad, 0, 1, b't', 0]),
            Err(Error::ReservedFlags(bad))
        );
        assert_eq!(parse(CONT, &[bad, 1]), Err(Error::ReservedFlags(bad)));
        assert_eq!(Flags::from_wire(bad), Err(Error::ReservedFlags(bad)));
    }
    // MORE alone is fine everywhere.
    assert_eq!(parse(REQ, &request_with_flags(0x01)), Ok(()));
    assert_eq!(parse(CONT, &[0x01, 1]), Ok(()));
    assert!(Flags::from_wire(0x01).unwrap().more());
}

#[test]
fn empty_method_and_topic_are_refused() {
    assert_eq!(
        parse(REQ, &[0, 0, 0, 5, 0, 1, 0, 0]),
        Err(Error::Empty { field: "method" })
    );
    assert_eq!(
        parse(NOTIFY, &[0, 1, 0, 0]),
        Err(Error::Empty { field: "topic" })
    );
}

#[test]
fn invalid_utf8_is_refused_where_text_is_required() {
    // A lone continuation byte, an overlong encoding, and a surrogate.
    for bad in [
        &[0x80u8][..],
        &[0xc0, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[b'a', 0xff],
    ] {
        let mut req = vec![0, 0, 0, 5, 0, 1, bad.len() as u8];
        req.extend_from_slice(bad);
        req.push(0);
        assert_eq!(
            parse(REQ, &req),
            Err(Error::InvalidUtf8 { field: "method" })
        );

        let mut notify = vec![0, 1, bad.len() as u8];
        notify.extend_from_slice(bad);
        notify.push(0);
        assert_eq!(
            parse(NOTIFY, &notify),
            Err(Error::InvalidUtf8 { field: "topic" })
        );

        let mut error = vec![0, 0, 0, 1, 0, 9];
        error.extend_from_slice(bad);
        assert_eq!(
            parse(ERR, &error),
            Err(Error::InvalidUtf8 {
                field: "error message"
            })
        );

        let mut goaway = vec![0, 0, 0, 1, 0, 0];
        goaway.extend_from_slice(bad);
        assert_eq!(
            parse(GOAWAY, &goaway),
            Err(Error::InvalidUtf8 {
                field: "goaway reason"
            })
        );
    }
}

#[test]
fn text_fields_accept_any_utf8_and_the_255_byte_limit() {
    let method = "é".repeat(127) + "x"; // 255 bytes
    let mut req = vec![0, 0, 0, 5, 0, 1, 255];
    req.extend_from_slice(method.as_bytes());
    req.push(0);
    let wire = raw_frame(REQ, &req);
    let Envelope::Request(r) = Envelope::parse(decode_one(&wire)).unwrap() else {
        panic!("a request")
    };
    assert_eq!(r.method, method);
    assert_eq!(r.body, b"");
    // Empty ERROR message and GOAWAY reason are allowed.
    assert_eq!(parse(ERR, &[0, 0, 0, 0, 0, 1]), Ok(()));
    assert_eq!(parse(GOAWAY, &[0, 0, 0, 0, 0, 0]), Ok(()));
}

/// A REQUEST with one metadata entry whose key is `key`.
fn request_with_key(key: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 5, 0, 0, 1, b'm', 1, key.len() as u8];
    p.extend_from_slice(key);
    p.extend_from_slice(&[0, 1, b'v']);
    p
}

#[test]
fn metadata_keys_are_checked() {
    for (key, byte) in [
        (&b"Traceparent"[..], b'T'),
        (b"trace parent", b' '),
        (b"a/b", b'/'),
        (b"key:", b':'),
        (b"caf\xc3\xa9", 0xc3),
        (b"x\x00", 0),
        (b"UPPER", b'U'),
        (b"dead\xffline", 0xff),
    ] {
        assert_eq!(
            parse(REQ, &request_with_key(key)),
            Err(Error::InvalidMetaKey { byte }),
            "{key:?}"
        );
        assert_eq!(validate_key(key), Err(Error::InvalidMetaKey { byte }));
    }
    assert_eq!(
        parse(REQ, &request_with_key(b"")),
        Err(Error::Empty {
            field: "metadata key"
        })
    );
    for good in [
        &b"a"[..],
        b"x-b3.trace_id",
        b"0123456789",
        b"-._",
        &[b'k'; 255],
    ] {
        assert_eq!(parse(REQ, &request_with_key(good)), Ok(()), "{good:?}");
    }
}

#[test]
fn metadata_keys_are_checked_in_response_and_notify_too() {
    assert_eq!(
        parse(RESP, &[0, 0, 0, 5, 0, 0, 1, 1, b'K', 0, 0]),
        Err(Error::InvalidMetaKey { byte: b'K' })
    );
    assert_eq!(
        parse(NOTIFY, &[0, 0, 1, b't', 1, 1, b'K', 0, 0]),
        Err(Error::InvalidMetaKey { byte: b'K' })
    );
}

#[test]
fn ping_and_pong_must_be_8_bytes() {
    for len in [0usize, 1, 7, 9, 16] {
        let payload = vec![7u8; len];
        assert_eq!(parse(PING, &payload), Err(Error::BadPingLength { len }));
        assert_eq!(parse(PONG, &payload), Err(Error::BadPingLength { len }));
    }
    assert_eq!(parse(PING, &[0; 8]), Ok(()));
    assert_eq!(parse(PONG, &[0; 8]), Ok(()));
}

#[test]
fn cancel_is_exactly_a_nonzero_id() {
    assert_eq!(
        parse(CANCEL, &[0, 0, 0, 1, 0]),
        Err(Error::TrailingBytes {
            frame: "CANCEL",
            extra: 1
        })
    );
    assert_eq!(
        parse(CANCEL, &[0, 0, 0, 1, 0, 0, 0]),
        Err(Error::TrailingBytes {
            frame: "CANCEL",
            extra: 3
        })
    );
    assert_eq!(
        parse(CANCEL, &[0, 0, 1]),
        Err(Error::Truncated { field: "id" })
    );
    assert_eq!(parse(CANCEL, &[0, 0, 0, 0]), Err(Error::ZeroId));
    assert_eq!(parse(CANCEL, &[0, 0, 0, 1]), Ok(()));
}

#[test]
fn id_zero_is_refused_where_a_request_id_is_required() {
    assert_eq!(
        parse(REQ, &[0, 0, 0, 0, 0, 1, 1, b'm', 0]),
        Err(Error::ZeroId)
    );
    assert_eq!(parse(RESP, &[0, 0, 0, 0, 0, 1, 0]), Err(Error::ZeroId));
    assert_eq!(parse(CANCEL, &[0; 4]), Err(Error::ZeroId));
    // ERROR id 0 is the whole connection; GOAWAY last_id 0 means "none accepted".
    assert_eq!(parse(ERR, &[0, 0, 0, 0, 0, 1]), Ok(()));
    assert_eq!(parse(GOAWAY, &[0, 0, 0, 0, 0, 1]), Ok(()));

    // The encoders refuse it too.
    let mut out = [0u8; 64];
    let req = Request {
        id: 0,
        flags: Flags::NONE,
        format: format::RAW,
        method: "m",
        meta: Metadata::EMPTY,
        body: b"",
    };
    assert_eq!(req.encode(&mut out), Err(Error::ZeroId));
    assert_eq!(req.encoded_len(), Err(Error::ZeroId));
    let resp = Response {
        id: 0,
        flags: Flags::NONE,
        format: format::RAW,
        meta: Metadata::EMPTY,
        body: b"",
    };
    assert_eq!(resp.encode(&mut out), Err(Error::ZeroId));
    assert_eq!(Cancel { id: 0 }.encode(&mut out), Err(Error::ZeroId));
    assert_eq!(
        MessageFrames::new(req.into()).map(|_| ()),
        Err(Error::ZeroId)
    );
}

#[test]
fn empty_continuation_chunk_is_refused() {
    assert_eq!(
        parse(CONT, &[0]),
        Err(Error::Empty {
            field: "continuation chunk"
        })
    );
    assert_eq!(
        parse(CONT, &[1]),
        Err(Error::Empty {
            field: "continuation chunk"
        })
    );
    assert_eq!(parse(CONT, &[]), Err(Error::Truncated { field: "flags" }));
    let empty = Continuation {
        flags: Flags::NONE,
        chunk: b"",
    };
    assert_eq!(
        empty.encode(&mut [0u8; 16]),
        Err(Error::Empty {
            field: "continuation chunk"
        })
    );
}

#[test]
fn unknown_frame_types_do_not_parse_as_envelopes() {
    for t in [0x00u8, 0x0a, 0x42, 0xff] {
        assert_eq!(
            parse(t, b"anything"),
            Err(Error::UnexpectedFrame {
                frame_type: t,
                context: "unknown frame type"
            })
        );
    }
}

/// Each field of a REQUEST with metadata, as (end offset in the payload, the field name
/// a truncation inside it reports).
#[test]
fn every_truncation_of_a_request_names_its_field() {
    // id | flags | format | method_len "get" | count=2 | "ab" "xyz" | "c" "" | body
    let mut p = vec![0, 0, 0, 9, 0, 1, 3];
    p.extend_from_slice(b"get");
    p.push(2);
    p.extend_from_slice(&[2, b'a', b'b', 0, 3, b'x', b'y', b'z']);
    p.extend_from_slice(&[1, b'c', 0, 0]);
    let envelope_len = p.len();
    p.extend_from_slice(b"body");
    assert_eq!(parse(REQ, &p), Ok(()));

    let fields: &[(usize, &str)] = &[
        (4, "id"),
        (5, "flags"),
        (6, "format"),
        (10, "method"), // length byte and bytes both report "method"
        (11, "metadata count"),
        (12, "metadata key length"),
        (14, "metadata key"),
        (16, "metadata value length"),
        (19, "metadata value"),
        (20, "metadata key length"),
        (21, "metadata key"),
        (23, "metadata value length"),
    ];
    assert_eq!(fields.last().unwrap().0, envelope_len);
    for cut in 0..envelope_len {
        let field = fields.iter().find(|(end, _)| cut < *end).unwrap().1;
        assert_eq!(
            parse(REQ, &p[..cut]),
            Err(Error::Truncated { field }),
            "cut at {cut}"
        );
    }
    // From the end of the envelope on, the rest is body: every cut parses.
    for cut in envelope_len..=p.len() {
        assert_eq!(parse(REQ, &p[..cut]), Ok(()), "cut at {cut}");
    }
}

#[test]
fn every_truncation_of_the_other_payloads_names_its_field() {
    // (frame type, a valid payload, each field's end offset and name)
    type Case = (u8, &'static [u8], &'static [(usize, &'static str)]);
    let cases: &[Case] = &[
        (
            RESP,
            &[0, 0, 0, 9, 0, 2, 0],
            &[
                (4, "id"),
                (5, "flags"),
                (6, "format"),
                (7, "metadata count"),
            ],
        ),
        (
            NOTIFY,
            &[0, 2, 2, b'o', b'k', 0],
            &[
                (1, "flags"),
                (2, "format"),
                (5, "topic"),
                (6, "metadata count"),
            ],
        ),
        (ERR, &[0, 0, 0, 9, 0, 2], &[(4, "id"), (6, "code")]),
        (GOAWAY, &[0, 0, 0, 9, 0, 2], &[(4, "last id"), (6, "code")]),
        (CANCEL, &[0, 0, 0, 9], &[(4, "id")]),
    ];
    for (ty, payload, fields) in cases {
        assert_eq!(parse(*ty, payload), Ok(()), "type {ty}");
        for cut in 0..payload.len() {
            let field = fields.iter().find(|(end, _)| cut < *end).unwrap().1;
            assert_eq!(
                parse(*ty, &payload[..cut]),
                Err(Error::Truncated { field }),
                "type {ty} cut at {cut}"
            );
        }
    }
}

/// A REQUEST id 1 with the given method and metadata, raw format, empty body.
fn req<'a>(method: &'a str, meta: Metadata<'a>) -> Request<'a> {
    Request {
        id: 1,
        flags: Flags::NONE,
        format: format::RAW,
        method,
        meta,
        body: b"",
    }
}

#[test]
fn encoders_refuse_what_parsers_refuse() {
    let mut out = vec![0u8; 70_000];
    let long = "m".repeat(256);
    assert_eq!(
        req(&long, Metadata::EMPTY).encode(&mut out),
        Err(Error::FieldTooLong {
            field: "method",
            len: 256,
            max: 255
        })
    );
    assert_eq!(
        req("", Metadata::EMPTY).encode(&mut out),
        Err(Error::Empty { field: "method" })
    );
    let notify = Notify {
        flags: Flags::NONE,
        format: format::RAW,
        topic: &long,
        meta: Metadata::EMPTY,
        body: b"",
    };
    assert_eq!(
        notify.encode(&mut out),
        Err(Error::FieldTooLong {
            field: "topic",
            len: 256,
            max: 255
        })
    );
    assert_eq!(
        Notify {
            topic: "",
            ..notify
        }
        .encode(&mut out),
        Err(Error::Empty { field: "topic" })
    );

    // Metadata keys and values.
    let check = |pairs: &[(&str, &[u8])], expected: Error| {
        let request = req("m", Metadata::from_pairs(pairs));
        assert_eq!(request.encode(&mut [0u8; 70_000]), Err(expected));
        assert_eq!(request.encoded_len(), Err(expected));
    };
    check(&[("Trace", b"")], Error::InvalidMetaKey { byte: b'T' });
    check(
        &[("ok", b""), ("key space", b"")],
        Error::InvalidMetaKey { byte: b' ' },
    );
    check(
        &[("", b"")],
        Error::Empty {
            field: "metadata key",
        },
    );
    let long_key = "k".repeat(256);
    check(
        &[(&long_key, b"")],
        Error::FieldTooLong {
            field: "metadata key",
            len: 256,
            max: 255,
        },
    );
    let big_value = vec![0u8; 65_536];
    check(
        &[("k", &big_value)],
        Error::FieldTooLong {
            field: "metadata value",
            len: 65_536,
            max: 65_535,
        },
    );
    let many: Vec<(&str, &[u8])> = vec![("k", &b""[..]); 256];
    check(&many, Error::TooManyMeta { count: 256 });
    assert!(
        req("m", Metadata::from_pairs(&many[..255]))
            .encode(&mut out)
            .is_ok()
    );
}

#[test]
fn size_limits_on_encode() {
    let mut out = vec![0u8; 70_000];
    // A body too large for one frame: FrameTooLarge from `encode`, fine for MessageFrames.
    let body = vec![1u8; MAX_PAYLOAD_LEN];
    let resp = Response {
        id: 1,
        flags: Flags::NONE,
        format: format::RAW,
        meta: Metadata::EMPTY,
        body: &body,
    };
    assert_eq!(
        resp.encode(&mut out),
        Err(Error::FrameTooLarge {
            len: MAX_PAYLOAD_LEN + 7,
            limit: MAX_PAYLOAD_LEN
        })
    );
    assert!(MessageFrames::new(resp.into()).is_ok());

    // The same whatever the buffer: the frame can never be written.
    assert_eq!(
        resp.encode(&mut [0u8; 16]),
        Err(Error::FrameTooLarge {
            len: MAX_PAYLOAD_LEN + 7,
            limit: MAX_PAYLOAD_LEN
        })
    );

    // Frame level.
    let payload = vec![0u8; MAX_PAYLOAD_LEN + 1];
    assert_eq!(
        Frame::new(FrameType::Notify, &payload).encode(&mut out),
        Err(Error::FrameTooLarge {
            len: MAX_PAYLOAD_LEN + 1,
            limit: MAX_PAYLOAD_LEN
        })
    );
    let payload = vec![0u8; MAX_PAYLOAD_LEN];
    assert_eq!(
        Frame::new(FrameType::Notify, &payload).encode(&mut out),
        Ok(MAX_PAYLOAD_LEN + 8)
    );

    // ERROR and GOAWAY text too long for a frame.
    let text = "e".repeat(MAX_PAYLOAD_LEN - 5);
    let error = ErrorFrame {
        id: 1,
        code: ErrorCode::INTERNAL,
        message: &text,
    };
    assert_eq!(
        error.encode(&mut out),
        Err(Error::FrameTooLarge {
            len: MAX_PAYLOAD_LEN + 1,
            limit: MAX_PAYLOAD_LEN
        })
    );
    let error = ErrorFrame {
        message: &text[1..],
        ..error
    };
    assert_eq!(error.encode(&mut out), Ok(MAX_PAYLOAD_LEN + 8));
    let goaway = GoAway {
        last_id: 0,
        code: GoAwayCode::SHUTTING_DOWN,
        reason: &text,
    };
    assert!(matches!(
        goaway.encode(&mut out),
        Err(Error::FrameTooLarge { .. })
    ));

    // An envelope (metadata) that cannot fit in one frame: EnvelopeTooLarge for a message,
    // FrameTooLarge for a single frame.
    let value = vec![0u8; MAX_PAYLOAD_LEN - 10];
    let pairs: &[(&str, &[u8])] = &[("big", &value)];
    let req = Request {
        id: 1,
        flags: Flags::NONE,
        format: format::RAW,
        method: "huge",
        meta: Metadata::from_pairs(pairs),
        body: b"",
    };
    // id, flags, format, method length, "huge", count, key length, "big", value length.
    let head_len = 4 + 1 + 1 + 1 + 4 + 1 + 1 + 3 + 2 + value.len();
    assert!(head_len > MAX_PAYLOAD_LEN);
    assert_eq!(
        MessageFrames::new(req.into()).map(|_| ()),
        Err(Error::EnvelopeTooLarge {
            len: head_len,
            max: MAX_PAYLOAD_LEN
        })
    );
    assert!(matches!(
        req.encode(&mut out),
        Err(Error::FrameTooLarge { .. })
    ));
    // With a body, one byte of the head must be left for it.
    assert_eq!(
        MessageFrames::new(Request { body: b"b", ..req }.into()).map(|_| ()),
        Err(Error::EnvelopeTooLarge {
            len: head_len,
            max: MAX_PAYLOAD_LEN - 1
        })
    );
    assert!(!Error::EnvelopeTooLarge { len: 1, max: 0 }.is_fatal());
}

#[test]
fn an_envelope_filling_the_frame_needs_room_for_a_body_byte_to_continue() {
    // An envelope of exactly 65,535 bytes: fine alone, but with any body it cannot
    // continue (the head frame would carry no body byte).
    let value_len = MAX_PAYLOAD_LEN - (4 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 2);
    let value = vec![0u8; value_len];
    let pairs: &[(&str, &[u8])] = &[("k", &value)];
    let req = Request {
        id: 1,
        flags: Flags::NONE,
        format: format::RAW,
        method: "m",
        meta: Metadata::from_pairs(pairs),
        body: b"",
    };
    assert_eq!(req.encoded_len(), Ok(MAX_PAYLOAD_LEN + 8));
    let frames = MessageFrames::new(req.into()).unwrap();
    assert_eq!(frames.frame_count(), 1);
    assert_eq!(
        MessageFrames::new(Request { body: b"x", ..req }.into()).map(|_| ()),
        Err(Error::EnvelopeTooLarge {
            len: MAX_PAYLOAD_LEN,
            max: MAX_PAYLOAD_LEN - 1
        })
    );
    // One byte less of envelope: the head carries one body byte and the rest continues.
    let pairs: &[(&str, &[u8])] = &[("k", &value[1..])];
    let frames = MessageFrames::new(
        Request {
            body: b"xy",
            meta: Metadata::from_pairs(pairs),
            ..req
        }
        .into(),
    )
    .unwrap();
    assert_eq!(frames.frame_count(), 2);
}

#[test]
fn buffer_too_small_is_reported_and_nothing_is_written() {
    let ping = Ping { nonce: [9; 8] };
    for size in 0..16 {
        let mut out = vec![0xeeu8; size];
        assert_eq!(
            ping.encode(&mut out),
            Err(Error::BufferTooSmall {
                needed: 16,
                available: size
            })
        );
        assert!(out.iter().all(|&b| b == 0xee));
        assert!(
            !Error::BufferTooSmall {
                needed: 16,
                available: size
            }
            .is_fatal()
        );
    }
    assert_eq!(ping.encode(&mut [0u8; 16]), Ok(16));
    let pong = Pong { nonce: [9; 8] };
    assert!(matches!(
        pong.encode(&mut [0u8; 15]),
        Err(Error::BufferTooSmall { .. })
    ));

    // MessageFrames: a short buffer for one frame does not advance the message.
    let body = vec![3u8; 100_000];
    let mut frames = MessageFrames::new(
        Response {
            id: 1,
            flags: Flags::NONE,
            format: format::RAW,
            meta: Metadata::EMPTY,
            body: &body,
        }
        .into(),
    )
    .unwrap();
    let needed = frames.next_len().unwrap();
    let mut small = vec![0u8; 100];
    assert_eq!(
        frames.write_next(&mut small),
        Some(Err(Error::BufferTooSmall {
            needed,
            available: 100
        }))
    );
    assert_eq!(frames.next_len(), Some(needed));
    let mut big = vec![0u8; needed];
    assert_eq!(frames.write_next(&mut big), Some(Ok(needed)));
}

#[test]
fn message_frames_takes_only_messages() {
    for envelope in [
        Envelope::Ping(Ping { nonce: [0; 8] }),
        Envelope::Cancel(Cancel { id: 1 }),
        Envelope::Continuation(Continuation {
            flags: Flags::NONE,
            chunk: b"x",
        }),
    ] {
        assert!(matches!(
            MessageFrames::new(envelope).map(|_| ()),
            Err(Error::UnexpectedFrame { .. })
        ));
    }
}

#[test]
fn error_codes_and_fatality() {
    assert_eq!(
        Error::FrameTooLarge { len: 2, limit: 1 }.error_code(),
        ErrorCode::TOO_LARGE
    );
    assert_eq!(
        Error::MessageTooLarge { len: 2, limit: 1 }.error_code(),
        ErrorCode::TOO_LARGE
    );
    assert_eq!(Error::ZeroId.error_code(), ErrorCode::MALFORMED);
    assert!(
        Error::CrcMismatch {
            received: 0,
            computed: 1
        }
        .is_fatal()
    );
    assert_eq!(ErrorCode(7).name(), Some("TOO_LARGE"));
    assert!(ErrorCode(1000).is_application());
    assert!(ErrorCode::OVERLOADED.is_not_processed());
    assert!(ErrorCode::UNAVAILABLE.is_not_processed());
    assert!(!ErrorCode::INTERNAL.is_not_processed());
}
