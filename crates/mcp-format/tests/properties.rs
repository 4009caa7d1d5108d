//! Property tests: arbitrary messages round-trip in every format, and arbitrary bytes never
//! panic any decoder.

use bytes::{Bytes, BytesMut};
use mcp_format::{Decode, DecodeErrorKind, Encode, Format, FormatId, Json, Protobuf, Raw};
use mcp_proto::bench::v1::{Address, LineItem, Order};
use mcp_proto::examples::v1::UserUpdate;
use proptest::collection::vec;
use proptest::prelude::*;

fn user_update() -> impl Strategy<Value = UserUpdate> {
    (any::<String>(), any::<String>(), any::<Option<i32>>())
        .prop_map(|(user_id, name, age)| UserUpdate { user_id, name, age })
}

fn address() -> impl Strategy<Value = Address> {
    (".{0,20}", ".{0,20}", "[A-Z]{2}", "[0-9A-Z ]{0,8}").prop_map(
        |(street, city, country, postal_code)| Address {
            street,
            city,
            country,
            postal_code,
        },
    )
}

fn line_item() -> impl Strategy<Value = LineItem> {
    (".{0,16}", any::<u32>(), any::<u64>()).prop_map(|(sku, quantity, unit_price_cents)| LineItem {
        sku,
        quantity,
        unit_price_cents,
    })
}

fn order() -> impl Strategy<Value = Order> {
    (
        (
            any::<u64>(),
            ".{0,40}",
            any::<i32>(),
            proptest::option::of(address()),
        ),
        vec(line_item(), 0..8),
        vec(".{0,12}", 0..6),
        vec(any::<u32>(), 0..32),
        vec(any::<i64>(), 0..16),
        vec(any::<u8>(), 0..128),
        (any::<i64>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(
                (order_id, customer_id, status, shipping_address),
                items,
                tags,
                warehouse_stock,
                adjustments_cents,
                signature,
                (created_at_unix_ms, express, total_cents),
            )| Order {
                order_id,
                customer_id,
                // Any i32, including values the enum does not name: Protobuf keeps them.
                status,
                shipping_address,
                items,
                tags,
                warehouse_stock,
                adjustments_cents,
                signature,
                created_at_unix_ms,
                express,
                total_cents,
            },
        )
}

fn round_trip<F, T>(format: &F, value: &T) -> Result<T, TestCaseError>
where
    F: Encode<T> + Decode<T>,
{
    let mut buf = BytesMut::new();
    let body = format
        .encode_to_bytes(value, &mut buf)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    format
        .decode_body(format.id(), body)
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Decodes `bytes` as `T` in `format`; every failure must be a clean error naming `format`.
fn decode_any<F, T>(format: &F, bytes: &[u8]) -> Result<Option<T>, TestCaseError>
where
    F: Decode<T>,
{
    match format.decode_bytes(Bytes::copy_from_slice(bytes)) {
        Ok(value) => Ok(Some(value)),
        Err(err) => {
            prop_assert_eq!(err.format(), format.info());
            let wrong_format = matches!(err.kind(), DecodeErrorKind::WrongFormat { .. });
            prop_assert!(!wrong_format, "{}", err);
            prop_assert!(!err.to_string().is_empty());
            Ok(None)
        }
    }
}

proptest! {
    #[test]
    fn user_update_round_trips(value in user_update()) {
        prop_assert_eq!(&round_trip(&Json, &value)?, &value);
        prop_assert_eq!(&round_trip(&Protobuf, &value)?, &value);
    }

    #[test]
    fn order_round_trips(value in order()) {
        prop_assert_eq!(&round_trip(&Json, &value)?, &value);
        prop_assert_eq!(&round_trip(&Protobuf, &value)?, &value);
    }

    #[test]
    fn raw_round_trips(bytes in vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(&round_trip::<_, Vec<u8>>(&Raw, &bytes)?, &bytes);
        prop_assert_eq!(round_trip(&Raw, &Bytes::from(bytes.clone()))?, Bytes::from(bytes));
    }

    #[test]
    fn protobuf_encoded_len_is_exact(value in order()) {
        let mut buf = BytesMut::new();
        Protobuf.encode(&value, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), prost::Message::encoded_len(&value));
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in vec(any::<u8>(), 0..256)) {
        decode_any::<_, UserUpdate>(&Json, &bytes)?;
        decode_any::<_, Order>(&Json, &bytes)?;
        decode_any::<_, serde_json::Value>(&Json, &bytes)?;
        decode_any::<_, String>(&Raw, &bytes)?;
        // Whatever Protobuf accepts, it encodes again to something it decodes to the same.
        if let Some(user) = decode_any::<_, UserUpdate>(&Protobuf, &bytes)? {
            prop_assert_eq!(&round_trip(&Protobuf, &user)?, &user);
        }
        if let Some(order) = decode_any::<_, Order>(&Protobuf, &bytes)? {
            prop_assert_eq!(&round_trip(&Protobuf, &order)?, &order);
        }
    }

    #[test]
    fn any_json_value_round_trips(value in json_value()) {
        prop_assert_eq!(&round_trip(&Json, &value)?, &value);
    }

    #[test]
    fn only_the_own_id_passes_the_format_check(byte in any::<u8>()) {
        let id = FormatId::new(byte);
        for (format_id, result) in [
            (Raw.id(), mcp_format::check_format(&Raw, id)),
            (Json.id(), mcp_format::check_format(&Json, id)),
            (Protobuf.id(), mcp_format::check_format(&Protobuf, id)),
        ] {
            prop_assert_eq!(result.is_ok(), format_id == id);
        }
    }
}

/// Arbitrary JSON documents without floats (whose text form need not round-trip exactly).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}
