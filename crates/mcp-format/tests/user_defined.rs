//! A user-defined format (CBOR, id 200), written entirely here, outside the library, through
//! the public traits only. This is what an application does to add a format.

use bytes::{BufMut, BytesMut};
use mcp_format::{
    Decode, DecodeError, DecodeErrorKind, Encode, EncodeError, Format, FormatId, Json, check_format,
};
use mcp_proto::bench::v1::Order;
use mcp_proto::examples::v1::UserUpdate;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// CBOR (RFC 8949) through `ciborium`, as application-defined format 200.
#[derive(Clone, Copy, Debug, Default)]
struct Cbor;

impl Format for Cbor {
    fn id(&self) -> FormatId {
        FormatId::new(200)
    }

    fn name(&self) -> &'static str {
        "cbor"
    }
}

impl<T: Serialize + ?Sized> Encode<T> for Cbor {
    fn encode(&self, value: &T, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        ciborium::into_writer(value, (&mut *buf).writer()).map_err(|err| {
            buf.truncate(start);
            EncodeError::new(self.info(), err.to_string())
        })
    }
}

impl<T: DeserializeOwned> Decode<T> for Cbor {
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError> {
        let mut rest = body;
        let value = ciborium::from_reader(&mut rest)
            .map_err(|err| DecodeError::invalid(self.info(), err.to_string()))?;
        // One data item per body: anything after it is an error, not silently dropped.
        if !rest.is_empty() {
            return Err(DecodeError::invalid(
                self.info(),
                format!("{} trailing bytes after the value", rest.len()),
            ));
        }
        Ok(value)
    }
}

/// Some generic code, as `mcp-client` has it: works with any format that carries the types.
fn call<F, Req, Resp>(format: &F, req: &Req) -> Result<Resp, DecodeError>
where
    F: Encode<Req> + Decode<Resp>,
{
    let body = format
        .encode_to_bytes(req, &mut BytesMut::new())
        .expect("encode");
    format.decode_body(format.id(), body)
}

#[test]
fn cbor_is_a_user_defined_format() {
    assert!(Cbor.id().is_user_defined());
    assert_eq!(Cbor.info().to_string(), "cbor (200)");
}

#[test]
fn cbor_round_trips_the_same_types_as_json() {
    let user = UserUpdate::sample();
    let back: UserUpdate = call(&Cbor, &user).unwrap();
    assert_eq!(back, user);
    let order = Order::sample();
    let back: Order = call(&Cbor, &order).unwrap();
    assert_eq!(back, order);
}

#[test]
fn cbor_bytes_are_cbor() {
    let mut buf = BytesMut::new();
    Cbor.encode(&UserUpdate::sample(), &mut buf).unwrap();
    // A map of 3 pairs (major type 5, 0xa3), first key the 7-byte text "user_id" (0x67).
    assert_eq!(&buf[..9], b"\xa3\x67user_id");
}

#[test]
fn cbor_errors_name_the_format() {
    let err = Decode::<UserUpdate>::decode(&Cbor, b"\xa3\x67us").unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::Invalid);
    assert!(
        err.to_string()
            .starts_with("cannot decode cbor (200) body: "),
        "{err}"
    );

    let err = Decode::<u8>::decode(&Cbor, b"\x01\x02").unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot decode cbor (200) body: 1 trailing bytes after the value"
    );

    // A CBOR body where JSON was expected, and the other way round.
    let err = check_format(&Json, Cbor.id()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "body is in format user-defined (200), expected json (1)"
    );
    let err = check_format(&Cbor, FormatId::PROTOBUF).unwrap_err();
    assert_eq!(
        err.to_string(),
        "body is in format protobuf (2), expected cbor (200)"
    );
}
