//! Hand-written sample values, shared by the benchmarks, tests and fuzz seeds so that they all
//! measure and check the same bytes.

use crate::bench::v1::{Address, LineItem, Order, OrderStatus};
use crate::examples::v1::UserUpdate;

impl UserUpdate {
    /// A typical small body: `{ user_id: "u-1042", name: "Ada Lovelace", age: 36 }`.
    pub fn sample() -> Self {
        Self {
            user_id: "u-1042".to_owned(),
            name: "Ada Lovelace".to_owned(),
            age: Some(36),
        }
    }
}

impl Order {
    /// A body of 1 KiB (1,024 bytes) in Protobuf (checked by a test), with every kind
    /// of field the message has: scalars, an enum, a nested message, repeated messages, strings,
    /// packed varints, zig-zag varints, bytes and a fixed64.
    pub fn sample() -> Self {
        let items = (0..20u32)
            .map(|i| LineItem {
                sku: format!("SKU-{:05}-BLUE-M", 10_000 + i * 37),
                quantity: 1 + i % 4,
                unit_price_cents: 1_999 + u64::from(i) * 250,
            })
            .collect();
        Self {
            order_id: 9_007_199_254_740_993,
            customer_id: "cust-7f3a9c2e-41d8-4b6a-9e1f-0c5d2b8a7e64".to_owned(),
            status: OrderStatus::Shipped.into(),
            shipping_address: Some(Address {
                street: "221B Baker Street, Flat 2".to_owned(),
                city: "London".to_owned(),
                country: "GB".to_owned(),
                postal_code: "NW1 6XE".to_owned(),
            }),
            items,
            tags: [
                "gift",
                "priority",
                "fragile",
                "repeat-customer",
                "promo-2026",
            ]
            .map(str::to_owned)
            .to_vec(),
            warehouse_stock: (0..64u32).map(|i| i * i * 97 % 20_000).collect(),
            adjustments_cents: vec![-250, 1_200, -75, 0, 19_999, -1, 42, -100_000],
            signature: (0..192u8).map(|i| i.wrapping_mul(73) ^ 0x5a).collect(),
            created_at_unix_ms: 1_795_000_000_123,
            express: true,
            total_cents: 87_345,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn order_sample_is_one_kib() {
        // The benchmarks' "1 KiB message": keep it exactly that when changing the sample.
        assert_eq!(Order::sample().encoded_len(), 1024);
    }

    #[test]
    fn user_update_sample_is_small() {
        assert_eq!(UserUpdate::sample().encoded_len(), 24);
    }
}
