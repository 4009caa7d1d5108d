//! Protobuf bytes computed by hand from the encoding rules
//! (<https://protobuf.dev/programming-guides/encoding/>), so that any other implementation
//! reads what we write and we read what it writes.
//!
//! Reminders: a field's tag is the varint `(field_number << 3) | wire_type`, with wire types
//! 0 VARINT, 1 I64 (8 bytes little-endian), 2 LEN (varint length, then the bytes). Varints are
//! little-endian groups of 7 bits, the high bit set on every byte but the last. `int32`/`int64`
//! negatives are sign-extended to 64 bits (so always 10 bytes); `sint64` is zig-zag encoded
//! first. proto3 leaves out fields at their default value, except `optional` fields that are
//! set. Repeated scalars are packed: one LEN field holding the varints back to back.

use bytes::BytesMut;
use mcp_format::{Decode, Encode, Protobuf};
use mcp_proto::bench::v1::{Address, LineItem, Order, OrderStatus};
use mcp_proto::examples::v1::UserUpdate;

fn encode<T>(value: &T) -> Vec<u8>
where
    Protobuf: Encode<T>,
{
    let mut buf = BytesMut::new();
    Protobuf.encode(value, &mut buf).expect("encode");
    buf.to_vec()
}

/// Checks both directions: our encoding is `bytes`, and `bytes` decodes to `value`.
fn assert_vector<T>(value: &T, bytes: &[u8])
where
    T: PartialEq + std::fmt::Debug,
    Protobuf: Encode<T> + Decode<T>,
{
    assert_eq!(encode(value), bytes, "encoding of {value:?}");
    assert_eq!(&Protobuf.decode(bytes).expect("decode"), value);
}

#[test]
fn user_update_sample() {
    #[rustfmt::skip]
    let bytes = [
        0x0a,                               // field 1 (user_id), wire type 2 (LEN): 1 << 3 | 2
        0x06,                               // length 6
        b'u', b'-', b'1', b'0', b'4', b'2', // "u-1042"
        0x12,                               // field 2 (name), LEN: 2 << 3 | 2
        0x0c,                               // length 12
        b'A', b'd', b'a', b' ', b'L', b'o', b'v', b'e', b'l', b'a', b'c', b'e',
        0x18,                               // field 3 (age), VARINT: 3 << 3 | 0
        0x24,                               // 36
    ];
    assert_vector(&UserUpdate::sample(), &bytes);
}

#[test]
fn user_update_of_the_protocol_test_vector() {
    // docs/protocol.md section 9: "REQUEST id 7, Protobuf, method user.get, body 0a 03 75 31 32".
    let value = UserUpdate {
        user_id: "u12".into(),
        ..UserUpdate::default()
    };
    assert_vector(&value, &[0x0a, 0x03, 0x75, 0x31, 0x32]); // field 1, LEN 3, "u12"
}

#[test]
fn user_update_ages() {
    // Unset optional: nothing at all. The empty message is the empty body.
    assert_vector(&UserUpdate::default(), &[]);
    // Set optional at its default: still written, that is what `optional` is for.
    assert_vector(
        &UserUpdate {
            age: Some(0),
            ..UserUpdate::default()
        },
        &[0x18, 0x00], // field 3 VARINT, 0
    );
    // 300 = 0b10_0101100: low group 0101100 with the continuation bit (0xac), then 0b10 (0x02).
    assert_vector(
        &UserUpdate {
            age: Some(300),
            ..UserUpdate::default()
        },
        &[0x18, 0xac, 0x02],
    );
    // -1 as int32: sign-extended to 64 bits of ones, i.e. nine 0xff groups and a final 0x01.
    #[rustfmt::skip]
    let minus_one = [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_vector(
        &UserUpdate {
            age: Some(-1),
            ..UserUpdate::default()
        },
        &minus_one,
    );
}

#[test]
fn order_with_every_kind_of_field() {
    let order = Order {
        order_id: 150,
        customer_id: String::new(), // default: not written
        status: OrderStatus::Shipped.into(),
        shipping_address: Some(Address {
            city: "X".into(),
            ..Address::default()
        }),
        items: vec![LineItem {
            sku: "k".into(),
            quantity: 1,
            unit_price_cents: 0,
        }],
        tags: vec!["a".into()],
        warehouse_stock: vec![3, 270],
        adjustments_cents: vec![-1, 1],
        signature: vec![0xff],
        created_at_unix_ms: -2,
        express: true,
        total_cents: 1,
    };
    #[rustfmt::skip]
    let bytes = [
        0x08, 0x96, 0x01,       // field 1 VARINT: 150 = 0b1_0010110 -> 0x96 0x01
        0x18, 0x02,             // field 3 VARINT: ORDER_STATUS_SHIPPED = 2
        0x22, 0x03,             // field 4 LEN 3: the Address
        0x12, 0x01, b'X',       //   its field 2 (city) LEN 1 "X"
        0x2a, 0x05,             // field 5 LEN 5: one LineItem
        0x0a, 0x01, b'k',       //   its field 1 (sku) LEN 1 "k"
        0x10, 0x01,             //   its field 2 (quantity) VARINT 1; price 0 is left out
        0x32, 0x01, b'a',       // field 6 LEN 1: tag "a"
        0x3a, 0x03,             // field 7 LEN 3: packed uint32s
        0x03,                   //   3
        0x8e, 0x02,             //   270 = 0b10_0001110 -> 0x8e 0x02
        0x42, 0x02,             // field 8 LEN 2: packed sint64s, zig-zag
        0x01,                   //   -1 -> 1
        0x02,                   //   1 -> 2
        0x4a, 0x01, 0xff,       // field 9 LEN 1: signature bytes
        0x50,                   // field 10 VARINT: int64 -2 = 0xffff_ffff_ffff_fffe
        0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        0x58, 0x01,             // field 11 VARINT: true
        0x61,                   // field 12 I64: fixed64 1, little-endian
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    assert_vector(&order, &bytes);
}

#[test]
fn decoding_accepts_what_other_encoders_may_write() {
    // Fields out of order, an unknown field (15, VARINT 1) to skip, a repeated scalar written
    // unpacked (field 7 VARINT twice), and a later value of a scalar field that wins.
    #[rustfmt::skip]
    let bytes = [
        0x58, 0x01,             // field 11: express = true
        0x78, 0x01,             // field 15 (unknown), VARINT 1: skipped
        0x38, 0x05,             // field 7 VARINT 5 (unpacked warehouse_stock)
        0x38, 0x06,             // field 7 VARINT 6
        0x08, 0x01,             // field 1: order_id = 1 ...
        0x08, 0x02,             // ... then 2, which wins
    ];
    let order: Order = Protobuf.decode(&bytes).unwrap();
    assert_eq!(
        order,
        Order {
            order_id: 2,
            warehouse_stock: vec![5, 6],
            express: true,
            ..Order::default()
        }
    );
}
