//! Round trips through every built-in format, the "no value" empty body, and the clean errors
//! for bodies that are not what the caller expects.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use mcp_format::{
    Decode, DecodeErrorKind, Encode, Format, FormatId, Json, Protobuf, Raw, check_format,
};
use mcp_proto::bench::v1::Order;
use mcp_proto::examples::v1::UserUpdate;

/// Encodes with `format`, checks the body's format byte, decodes, and returns the value.
fn round_trip<F, T>(format: &F, value: &T) -> T
where
    F: Encode<T> + Decode<T>,
    T: PartialEq + std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let body = format.encode_to_bytes(value, &mut buf).expect("encode");
    assert!(buf.is_empty(), "encode_to_bytes leaves the buffer empty");
    // Both decode paths must agree.
    let from_slice = format.decode(&body).expect("decode from a slice");
    let from_bytes = format
        .decode_body(format.id(), body)
        .expect("decode from Bytes");
    assert_eq!(from_slice, from_bytes);
    from_bytes
}

#[test]
fn user_update_round_trips_in_json_and_protobuf() {
    for value in [
        UserUpdate::sample(),
        UserUpdate::default(),
        UserUpdate {
            user_id: "ü-∞-😀".into(),
            name: "\"quoted\"\n\\".into(),
            age: Some(i32::MIN),
        },
    ] {
        assert_eq!(round_trip(&Json, &value), value);
        assert_eq!(round_trip(&Protobuf, &value), value);
    }
}

#[test]
fn order_round_trips_in_json_and_protobuf() {
    let order = Order::sample();
    assert_eq!(round_trip(&Json, &order), order);
    assert_eq!(round_trip(&Protobuf, &order), order);
    assert_eq!(round_trip(&Protobuf, &Order::default()), Order::default());
}

#[test]
fn raw_round_trips_every_byte_string_type() {
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(round_trip(&Raw, &bytes), bytes);
    assert_eq!(round_trip(&Raw, &Bytes::from(bytes.clone())), bytes);
    assert_eq!(round_trip(&Raw, &"héllo".to_owned()), "héllo");

    let mut buf = BytesMut::new();
    Raw.encode(&b"ab"[..], &mut buf).unwrap();
    Raw.encode("cd", &mut buf).unwrap();
    Raw.encode(&[b'e'; 2], &mut buf).unwrap();
    Raw.encode(&&b"gh"[..], &mut buf).unwrap();
    assert_eq!(&buf[..], b"abcdeegh");
}

#[test]
fn raw_bytes_are_neither_copied_on_encode_nor_on_decode() {
    let value = Bytes::from(vec![7u8; 4096]);
    let body = Raw.encode_to_bytes(&value, &mut BytesMut::new()).unwrap();
    assert_eq!(
        body.as_ptr(),
        value.as_ptr(),
        "the body shares the value's buffer"
    );
    let decoded: Bytes = Raw.decode_body(FormatId::RAW, body.clone()).unwrap();
    assert_eq!(
        decoded.as_ptr(),
        body.as_ptr(),
        "the value shares the body's buffer"
    );
}

#[test]
fn encoding_appends_and_reuses_the_buffer() {
    let mut buf = BytesMut::with_capacity(4096);
    let first = Json
        .encode_to_bytes(&UserUpdate::sample(), &mut buf)
        .unwrap();
    assert_eq!(
        &first[..],
        br#"{"user_id":"u-1042","name":"Ada Lovelace","age":36}"#
    );
    // The spare capacity stays with the buffer for the next call.
    assert!(buf.capacity() >= 4096 - first.len());
    let second = Protobuf
        .encode_to_bytes(&UserUpdate::sample(), &mut buf)
        .unwrap();
    assert_eq!(second.len(), 24);
    // Appending: what was in the buffer stays in front.
    let mut buf = BytesMut::from(&b"prefix"[..]);
    Json.encode(&1u8, &mut buf).unwrap();
    assert_eq!(&buf[..], b"prefix1");
}

#[test]
fn a_failed_encode_leaves_the_buffer_as_it_was() {
    // JSON object keys must be strings: serde_json fails on the key only after it has written
    // the object's opening brace.
    let mut map = BTreeMap::new();
    map.insert(vec![1u8], 1u8);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = Json.encode(&map, &mut buf).unwrap_err();
    assert_eq!(&buf[..], b"keep");
    assert_eq!(err.format().id(), FormatId::JSON);
    assert!(
        err.to_string()
            .starts_with("cannot encode value as json (1): "),
        "{err}"
    );
}

#[test]
fn an_empty_body_means_no_value() {
    assert_eq!(Json.decode(b"").ok(), Some(None::<UserUpdate>));
    let (): () = Json.decode(b"").unwrap();
    assert_eq!(
        Json.decode(b"").map(|v: UserUpdate| v).unwrap_err().kind(),
        DecodeErrorKind::Invalid,
        "a struct needs a value"
    );
    assert_eq!(Protobuf.decode(b"").ok(), Some(UserUpdate::default()));
    let (): () = Protobuf.decode(b"").unwrap();
    let (): () = Raw.decode(b"").unwrap();
    assert!(Decode::<()>::decode(&Raw, b"x").is_err());
    assert_eq!(Decode::<Bytes>::decode(&Raw, b"").unwrap(), Bytes::new());
}

#[test]
fn json_that_is_not_utf8_is_a_clean_error() {
    // A valid JSON string whose content has a lone 0xFF byte.
    let body = b"{\"user_id\":\"a\xffb\"}";
    let err = Decode::<UserUpdate>::decode(&Json, body).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::NotUtf8 { valid_up_to: 13 });
    assert_eq!(err.format().id(), FormatId::JSON);
    assert_eq!(
        err.to_string(),
        "cannot decode json (1) body: not valid UTF-8 (first invalid byte at offset 13)"
    );
    // Truncated UTF-8 at the end too (the first byte of a two-byte sequence).
    let err = Decode::<serde_json::Value>::decode(&Json, b"\"\xc3").unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::NotUtf8 { valid_up_to: 1 });
}

#[test]
fn raw_string_requires_utf8() {
    let err = Decode::<String>::decode(&Raw, b"ok\xc0").unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::NotUtf8 { valid_up_to: 2 });
    let err = Raw
        .decode_bytes(Bytes::from_static(b"\xe2\x82"))
        .map(|s: String| s)
        .unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::NotUtf8 { valid_up_to: 0 });
}

#[test]
fn invalid_bodies_are_clean_errors_naming_the_format() {
    let cases: [(&[u8], &str); 4] = [
        (b"{\"user_id\":", "EOF"),
        (b"{\"user_id\":1}", "invalid type"),
        (b"{} trailing", "trailing characters"),
        (b"\"just a string\"", "invalid type"),
    ];
    for (body, needle) in cases {
        let err = Decode::<UserUpdate>::decode(&Json, body).unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::Invalid);
        assert_eq!(err.format().name(), "json");
        let text = err.to_string();
        assert!(text.starts_with("cannot decode json (1) body: "), "{text}");
        assert!(text.contains(needle), "{text}");
        assert!(err.reason().unwrap().is::<serde_json::Error>());
    }

    // Protobuf: a length that runs past the end, a bad wire type, invalid UTF-8 in a string.
    for body in [&[0x0a, 0x05, b'a'][..], &[0x0f], &[0x0a, 0x01, 0xff]] {
        let err = Decode::<UserUpdate>::decode(&Protobuf, body).unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::Invalid);
        assert!(
            err.to_string()
                .starts_with("cannot decode protobuf (2) body: "),
            "{err}"
        );
        assert!(err.reason().unwrap().is::<prost::DecodeError>());
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let err = Decode::<serde_json::Value>::decode(&Json, deep.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
}

#[test]
fn a_body_in_another_format_is_an_error_naming_both() {
    let body = Protobuf
        .encode_to_bytes(&UserUpdate::sample(), &mut BytesMut::new())
        .unwrap();
    let err = Json
        .decode_body(FormatId::PROTOBUF, body)
        .map(|v: UserUpdate| v)
        .unwrap_err();
    assert_eq!(
        err.kind(),
        DecodeErrorKind::WrongFormat {
            actual: FormatId::PROTOBUF
        }
    );
    assert_eq!(err.format(), Json.info());
    assert_eq!(
        err.to_string(),
        "body is in format protobuf (2), expected json (1)"
    );

    let err = check_format(&Protobuf, FormatId::new(200)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "body is in format user-defined (200), expected protobuf (2)"
    );
    let err = check_format(&Raw, FormatId::new(9)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "body is in format reserved (9), expected raw (0)"
    );
    assert!(check_format(&Json, FormatId::JSON).is_ok());
}

#[test]
fn built_in_formats_have_the_protocol_ids() {
    assert_eq!((Raw.id(), Raw.name()), (FormatId::RAW, "raw"));
    assert_eq!((Json.id(), Json.name()), (FormatId::JSON, "json"));
    assert_eq!(
        (Protobuf.id(), Protobuf.name()),
        (FormatId::PROTOBUF, "protobuf")
    );
    assert_eq!(
        [Raw.id().get(), Json.id().get(), Protobuf.id().get()],
        [0, 1, 2]
    );
}
