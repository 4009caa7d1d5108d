//! Frame encode and decode+verify throughput against CRC alone over the same bytes.
//!
//! The baseline (`crc_only`) computes the frame CRC over exactly the bytes a frame's CRC
//! covers; `encode` and `decode` must stay close to it because everything else they do is
//! a few header bytes and one copy (encode) or none (decode). `crc_table` is the `crc`
//! crate's slice-by-16 table over the same bytes (the codec's fallback without carry-less
//! multiplication), so the two CRC paths are compared within one run.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mcp_codec::{
    Decoded, Envelope, FRAME_OVERHEAD, Flags, Frame, FrameType, MAX_PAYLOAD_LEN, Metadata, Request,
    checksum, decode_frame, format,
};

/// Payload sizes: 16 B, 256 B, 4 KiB and the largest single frame (64 KiB - 1).
const SIZES: [usize; 4] = [16, 256, 4096, MAX_PAYLOAD_LEN];

/// The `crc` crate's slice-by-16 table: the codec's CRC without carry-less multiplication.
static TABLE: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_IBM_3740);

/// Run lengths around the switch from the table to folding (`CLMUL_MIN` in the codec).
const SHORT_RUNS: [usize; 9] = [16, 32, 47, 48, 63, 64, 96, 128, 256];

fn crc_short_runs(c: &mut Criterion) {
    // `checksum` (table below the switch, folding from it) against the crc crate's table
    // over the same bytes: where the switch should be.
    let mut group = c.benchmark_group("crc_short");
    for len in SHORT_RUNS {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("checksum", len), &bytes, |b, bytes| {
            b.iter(|| checksum(black_box(bytes)))
        });
        group.bench_with_input(BenchmarkId::new("crc_table", len), &bytes, |b, bytes| {
            b.iter(|| TABLE.checksum(black_box(bytes)))
        });
    }
    group.finish();
}

fn frame_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for size in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut wire = vec![0u8; size + FRAME_OVERHEAD];
        let len = Frame::new(FrameType::Response, &payload)
            .encode(&mut wire)
            .expect("fits");
        // CRC covers version, type, length and payload: payload + 4 bytes.
        group.throughput(Throughput::Bytes(size as u64));

        let covered = wire[2..len - 2].to_vec();
        group.bench_with_input(BenchmarkId::new("crc_only", size), &covered, |b, bytes| {
            b.iter(|| checksum(black_box(bytes)))
        });
        group.bench_with_input(BenchmarkId::new("crc_table", size), &covered, |b, bytes| {
            b.iter(|| TABLE.checksum(black_box(bytes)))
        });
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, payload| {
            let mut out = vec![0u8; size + FRAME_OVERHEAD];
            b.iter(|| {
                Frame::new(FrameType::Response, black_box(payload))
                    .encode(black_box(&mut out))
                    .expect("fits")
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter(|| match decode_frame(black_box(wire)) {
                Ok(Decoded::Frame { frame, .. }) => frame.payload().len(),
                _ => unreachable!("valid frame"),
            })
        });
    }
    group.finish();
}

/// With `MCP_BENCH_FASTEST=1`: the fastest of many short rounds for CRC alone, the table,
/// encode and decode, printed as a table (criterion is not involved).
///
/// On a machine shared with compiles, criterion's median moves by 2x and more from run to
/// run; the fastest round of many is what the code does when it gets a core to itself, and
/// it repeats to within a percent. Run with a filter that matches nothing else:
/// `MCP_BENCH_FASTEST=1 cargo bench -p mcp-benches --bench codec -- fastest`.
fn fastest_of_many(_: &mut Criterion) {
    if std::env::var_os("MCP_BENCH_FASTEST").is_none() {
        return;
    }
    fn fastest(iters: usize, mut f: impl FnMut() -> usize) -> f64 {
        (0..200)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(f());
                }
                start.elapsed().as_nanos() as f64 / iters as f64
            })
            .fold(f64::MAX, f64::min)
    }
    let gib = |bytes: usize, ns: f64| bytes as f64 / ns * 1e9 / f64::from(1u32 << 30);
    println!("fastest of 200 rounds; GiB/s of payload");
    println!("payload | CRC alone | crc crate table | table / CRC | encode | decode");
    for size in [16, 32, 47, 48, 64, 256, 4096, MAX_PAYLOAD_LEN] {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut wire = vec![0u8; size + FRAME_OVERHEAD];
        let len = Frame::new(FrameType::Response, &payload)
            .encode(&mut wire)
            .expect("fits");
        let covered = wire[2..len - 2].to_vec();
        let mut out = vec![0u8; size + FRAME_OVERHEAD];
        let iters = (400_000 / size).max(4);
        let crc = fastest(iters, || usize::from(checksum(black_box(&covered))));
        let table = fastest(iters, || usize::from(TABLE.checksum(black_box(&covered))));
        let encode = fastest(iters, || {
            Frame::new(FrameType::Response, black_box(&payload))
                .encode(black_box(&mut out))
                .expect("fits")
        });
        let decode = fastest(iters, || match decode_frame(black_box(&wire)) {
            Ok(Decoded::Frame { frame, .. }) => frame.payload().len(),
            _ => unreachable!("valid frame"),
        });
        println!(
            "{size} | {crc:.1} ns ({:.2}) | {table:.1} ns ({:.2}) | {:.2} | {encode:.1} ns ({:.2}) | {decode:.1} ns ({:.2})",
            gib(size, crc),
            gib(size, table),
            table / crc,
            gib(size, encode),
            gib(size, decode),
        );
    }
}

fn small_frame_round_trip(c: &mut Criterion) {
    // The latency target: a frame with a 64-byte payload encoded into a buffer and decoded
    // (header checks and CRC verification) back out of it.
    let payload = [0x5au8; 64];
    let mut buf = [0u8; 64 + FRAME_OVERHEAD];
    c.bench_function("frame_64B/encode+decode", |b| {
        b.iter(|| {
            let len = Frame::new(FrameType::Response, black_box(&payload))
                .encode(black_box(&mut buf))
                .expect("fits");
            match decode_frame(black_box(&buf[..len])) {
                Ok(Decoded::Frame { frame, .. }) => frame.payload().len(),
                _ => unreachable!("valid frame"),
            }
        })
    });
}

fn small_request_round_trip(c: &mut Criterion) {
    // A whole REQUEST with a 64-byte body (83 payload bytes) encoded, decoded and parsed:
    // the frame round trip plus envelope writing and validation.
    request_round_trip(c, "request_64B/encode+decode+parse", Metadata::EMPTY);
}

fn traced_request_round_trip(c: &mut Criterion) {
    // The same REQUEST carrying what mcp-client puts on every call: a W3C `traceparent`
    // and a `deadline`, so the cost of that metadata on the wire can be read off against
    // `request_64B`.
    let deadline = 2000u32.to_be_bytes();
    let pairs: [(&str, &[u8]); 2] = [
        (
            "traceparent",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("deadline", &deadline),
    ];
    request_round_trip(
        c,
        "request_64B_traced/encode+decode+parse",
        Metadata::from_pairs(&pairs),
    );
}

fn traced_block_request_round_trip(c: &mut Criterion) {
    // The same metadata as `request_64B_traced`, as the transport hands it to the codec:
    // laid out as one block (`Meta::from_entries`), checked by `Metadata::from_wire` on
    // every call and copied whole by the encoder.
    let traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut block = vec![11u8];
    block.extend_from_slice(b"traceparent");
    block.extend_from_slice(&(traceparent.len() as u16).to_be_bytes());
    block.extend_from_slice(traceparent);
    block.push(8);
    block.extend_from_slice(b"deadline");
    block.extend_from_slice(&4u16.to_be_bytes());
    block.extend_from_slice(&2000u32.to_be_bytes());
    let body = [0x5au8; 64];
    let mut buf = [0u8; 256];
    c.bench_function("request_64B_traced_block/check+encode+decode+parse", |b| {
        b.iter(|| {
            let meta = Metadata::from_wire(2, black_box(&block)).expect("valid block");
            let request = Request {
                id: 42,
                flags: Flags::NONE,
                format: format::RAW,
                method: "user.get",
                meta,
                body: &body,
            };
            let len = black_box(&request).encode(&mut buf).expect("fits");
            match decode_frame(black_box(&buf[..len])) {
                Ok(Decoded::Frame { frame, .. }) => match Envelope::parse(frame) {
                    Ok(Envelope::Request(r)) => r.body.len() + r.meta.len(),
                    _ => unreachable!("valid request"),
                },
                _ => unreachable!("valid frame"),
            }
        })
    });
}

/// A REQUEST with a 64-byte body and `meta`, encoded, decoded and parsed.
fn request_round_trip(c: &mut Criterion, name: &str, meta: Metadata<'_>) {
    let body = [0x5au8; 64];
    let request = Request {
        id: 42,
        flags: Flags::NONE,
        format: format::RAW,
        method: "user.get",
        meta,
        body: &body,
    };
    let mut buf = [0u8; 256];
    c.bench_function(name, |b| {
        b.iter(|| {
            let len = black_box(&request).encode(&mut buf).expect("fits");
            match decode_frame(black_box(&buf[..len])) {
                Ok(Decoded::Frame { frame, .. }) => match Envelope::parse(frame) {
                    Ok(Envelope::Request(r)) => r.body.len() + r.meta.len(),
                    _ => unreachable!("valid request"),
                },
                _ => unreachable!("valid frame"),
            }
        })
    });
}

criterion_group!(
    benches,
    frame_throughput,
    crc_short_runs,
    fastest_of_many,
    small_frame_round_trip,
    small_request_round_trip,
    traced_request_round_trip,
    traced_block_request_round_trip
);
criterion_main!(benches);
