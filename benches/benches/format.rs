//! Body encode and decode: JSON against Protobuf, for the seed's small `UserUpdate` and for the
//! ~1 KiB `Order` (see `proto/`).
//!
//! Encoding reuses one buffer, so the figures are serialization alone (the client encodes
//! each call into a buffer of its own, which adds one allocation per call);
//! decoding reads a body already in memory, as the transport hands it over. Throughput is the
//! body's size in the format measured, so bytes/s differ between formats for the same value:
//! compare the times per operation.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mcp_format::{Decode, Encode, Json, Protobuf};
use mcp_proto::bench::v1::Order;
use mcp_proto::examples::v1::UserUpdate;

/// Benchmarks encode and decode of `value` in `format` inside `group`.
fn bench_format<F, T>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    format: &F,
    value: &T,
) where
    F: Encode<T> + Decode<T>,
    T: PartialEq + std::fmt::Debug,
{
    let body: Bytes = format
        .encode_to_bytes(value, &mut BytesMut::new())
        .expect("encode");
    let decoded: T = format.decode(&body).expect("decode");
    assert_eq!(&decoded, value, "round trip");
    group.throughput(Throughput::Bytes(body.len() as u64));

    group.bench_with_input(
        BenchmarkId::new("encode", format.name()),
        value,
        |b, value| {
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                format.encode(black_box(value), &mut buf).expect("encode");
                buf.len()
            })
        },
    );
    group.bench_with_input(
        BenchmarkId::new("decode", format.name()),
        &body,
        |b, body| b.iter(|| -> T { format.decode(black_box(body)).expect("decode") }),
    );
}

fn user_update(c: &mut Criterion) {
    let value = UserUpdate::sample();
    let mut group = c.benchmark_group("format/user_update");
    bench_format(&mut group, &Json, &value);
    bench_format(&mut group, &Protobuf, &value);
    group.finish();
}

fn order(c: &mut Criterion) {
    let value = Order::sample();
    let mut group = c.benchmark_group("format/order_1k");
    bench_format(&mut group, &Json, &value);
    bench_format(&mut group, &Protobuf, &value);
    group.finish();
}

criterion_group!(benches, user_update, order);
criterion_main!(benches);
