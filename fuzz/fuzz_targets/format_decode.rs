//! Decodes arbitrary bytes in every built-in format, as every type the tests use.
//!
//! Invariants checked: no decoder panics (libFuzzer reports panics as crashes); a failure is a
//! clean `DecodeError` naming the format it was decoding with; whatever decodes, encodes again
//! and decodes to the same value (for the types whose equality is exact). The first byte is
//! also tried as the frame's `format` byte, to exercise `Decode::decode_body`'s check.

#![no_main]

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mcp_format::{Decode, DecodeErrorKind, Encode, FormatId, Json, Protobuf, Raw};
use mcp_proto::bench::v1::Order;
use mcp_proto::examples::v1::UserUpdate;

/// Decodes `data` as `T` in `format`; if that works, re-encodes and checks the value survives.
fn round_trip<F, T>(format: &F, data: &[u8])
where
    F: Encode<T> + Decode<T>,
    T: PartialEq + Debug,
{
    match format.decode(data) {
        Ok(value) => {
            let body = format
                .encode_to_bytes(&value, &mut BytesMut::new())
                .expect("a decoded value encodes again");
            let again: T = format.decode(&body).expect("our own encoding decodes");
            assert_eq!(again, value);
        }
        Err(err) => {
            assert_eq!(err.format(), format.info());
            assert!(!matches!(err.kind(), DecodeErrorKind::WrongFormat { .. }));
        }
    }
}

/// Decodes with the first byte as the frame's format byte and the rest as the body.
fn framed<F, T>(format: &F, data: &[u8])
where
    F: Decode<T>,
{
    let Some((&format_byte, body)) = data.split_first() else {
        return;
    };
    let actual = FormatId::new(format_byte);
    let result = format.decode_body(actual, Bytes::copy_from_slice(body));
    if actual != format.id() {
        let err = result.err().expect("a body in another format is refused");
        assert_eq!(err.kind(), DecodeErrorKind::WrongFormat { actual });
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<_, UserUpdate>(&Protobuf, data);
    round_trip::<_, Order>(&Protobuf, data);
    round_trip::<_, UserUpdate>(&Json, data);
    round_trip::<_, Order>(&Json, data);
    round_trip::<_, String>(&Raw, data);
    round_trip::<_, Vec<u8>>(&Raw, data);

    // Any JSON document: floats need not survive a text round trip exactly, so only decode
    // and re-encode.
    if let Ok(value) = Decode::<serde_json::Value>::decode(&Json, data) {
        Json.encode(&value, &mut BytesMut::new())
            .expect("a decoded JSON value encodes again");
    }

    framed::<_, UserUpdate>(&Protobuf, data);
    framed::<_, Order>(&Json, data);
    framed::<_, Bytes>(&Raw, data);
});
