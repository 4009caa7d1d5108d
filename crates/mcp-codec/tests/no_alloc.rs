//! The core path allocates nothing: encoding, frame decoding (both modes), envelope parsing
//! and metadata iteration are run under a counting global allocator.
//!
//! This is its own test binary because `#[global_allocator]` applies to the whole binary.
//! Counting is per thread, so the test harness's own threads (and other tests, if any were
//! added here) cannot disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mcp_codec::{
    Cancel, Continuation, Decoded, Envelope, ErrorCode, ErrorFrame, Flags, FrameDecoder, GoAway,
    GoAwayCode, MAX_FRAME_LEN, MessageFrames, Metadata, Notify, Ping, Pong, Request, Response,
    SyncMode, decode_frame, format,
};

thread_local! {
    // `const` initialisation: reading or writing it never allocates and never registers a
    // destructor, so it is safe to touch from inside the allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts allocations made by the current thread and forwards everything to `System`.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `std::alloc::System`, which
// upholds the `GlobalAlloc` contract; the only addition is a thread-local counter update,
// which neither allocates nor unwinds (`Cell::set` on a `const`-initialised thread local
// without a destructor), so no allocator re-entrancy or panic can occur.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same layout the caller gave us, which meets `alloc`'s requirements.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count() {
    // `try_with`: during thread teardown the slot may be gone; then we simply do not count.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

/// Allocations made by this thread while running `f`.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = f();
    let after = ALLOCATIONS.with(Cell::get);
    (after - before, result)
}

/// Decodes and parses `wire` as one frame, touching every field and metadata entry, and
/// returns a checksum of what it saw so the work cannot be optimised away.
fn decode_and_read(wire: &[u8], decoder: &mut FrameDecoder) -> usize {
    let Ok(Decoded::Frame { frame, len }) = decoder.decode(wire) else {
        panic!("one frame expected")
    };
    let mut seen = len;
    match Envelope::parse(frame).expect("valid") {
        Envelope::Request(r) => {
            seen += r.method.len() + r.body.len();
            seen += r.meta.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            seen += r.meta.get("traceparent").map_or(0, <[u8]>::len);
            seen += r.meta.deadline_ms().unwrap_or(0) as usize;
        }
        Envelope::Response(r) => {
            seen += r.body.len() + r.meta.len();
            seen += r.meta.iter().count();
        }
        Envelope::Notify(n) => {
            seen += n.topic.len() + n.body.len();
            seen += n.meta.iter().map(|(k, _)| k.len()).sum::<usize>();
        }
        Envelope::Error(e) => seen += e.message.len() + usize::from(e.code.0),
        Envelope::GoAway(g) => seen += g.reason.len(),
        Envelope::Continuation(c) => seen += c.chunk.len(),
        Envelope::Ping(p) => seen += usize::from(p.nonce[7]),
        Envelope::Pong(p) => seen += usize::from(p.nonce[7]),
        Envelope::Cancel(c) => seen += c.id as usize,
    }
    seen
}

#[test]
fn encode_decode_and_parse_allocate_nothing() {
    // Inputs are built before counting starts.
    let deadline = 1_500u32.to_be_bytes();
    let pairs: &[(&str, &[u8])] = &[
        (
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("deadline", &deadline),
        ("deadline", b"\x00\x00\x00\x10"),
    ];
    let big_body = vec![0xa5u8; 150_000];
    let envelopes: Vec<Envelope<'_>> = vec![
        Request {
            id: 1,
            flags: Flags::NONE,
            format: format::JSON,
            method: "user.get",
            meta: Metadata::from_pairs(pairs),
            body: br#"{"id":1}"#,
        }
        .into(),
        Response {
            id: 1,
            flags: Flags::NONE,
            format: format::JSON,
            meta: Metadata::from_pairs(pairs),
            body: b"{}",
        }
        .into(),
        Notify {
            flags: Flags::NONE,
            format: format::RAW,
            topic: "orders.created",
            meta: Metadata::EMPTY,
            body: &big_body[..1000],
        }
        .into(),
        ErrorFrame {
            id: 1,
            code: ErrorCode::UNKNOWN_METHOD,
            message: "no such method",
        }
        .into(),
        Ping { nonce: [1; 8] }.into(),
        Pong { nonce: [2; 8] }.into(),
        Cancel { id: 9 }.into(),
        GoAway {
            last_id: 9,
            code: GoAwayCode::SHUTTING_DOWN,
            reason: "bye",
        }
        .into(),
        Continuation {
            flags: Flags::MORE,
            chunk: b"chunk",
        }
        .into(),
    ];
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut strict = FrameDecoder::new();
    let mut resync = FrameDecoder::new().mode(SyncMode::Resync);
    let mut noisy = vec![0u8; 64];
    noisy.extend_from_slice(b"xxMC\x02");

    // Warm-up outside the count: anything lazily initialised on first use (there should be
    // nothing, the CRC table is a `static`) would otherwise be charged to the codec.
    let _ = envelopes[0].encode(&mut buf);

    let (allocations, seen) = allocations_in(|| {
        let mut seen = 0;
        for envelope in &envelopes {
            let len = envelope.encode(&mut buf).expect("fits");
            seen += envelope.encoded_len().expect("valid");
            seen += decode_and_read(&buf[..len], &mut strict);
            seen += decode_and_read(&buf[..len], &mut resync);
            seen += match decode_frame(&buf[..len - 1]) {
                Ok(Decoded::NeedMore { needed }) => needed,
                other => panic!("{other:?}"),
            };
            // Errors are `Copy` values: building and formatting-free matching is free.
            seen += match decode_frame(&buf[1..len]) {
                Err(e) => usize::from(e.is_fatal()),
                other => panic!("{other:?}"),
            };
        }
        // Resynchronising over noise.
        let mut at = 0;
        while at < noisy.len() {
            match resync.decode(&noisy[at..]) {
                Ok(Decoded::Skip { len }) => at += len,
                Ok(Decoded::NeedMore { .. }) => break,
                other => panic!("{other:?}"),
            }
        }
        seen += at;
        // A large message written frame by frame into the caller's buffer.
        let mut frames = MessageFrames::new(
            Request {
                id: 2,
                flags: Flags::NONE,
                format: format::RAW,
                method: "bulk.put",
                meta: Metadata::from_pairs(pairs),
                body: &big_body,
            }
            .into(),
        )
        .expect("valid");
        while let Some(written) = frames.write_next(&mut buf) {
            let len = written.expect("fits");
            seen += decode_and_read(&buf[..len], &mut strict);
        }
        seen
    });
    assert!(seen > 150_000, "the work was done ({seen})");
    assert_eq!(allocations, 0, "the core path allocated");

    // The counter works: an allocation is seen.
    let (allocations, v) = allocations_in(|| Vec::<u8>::with_capacity(16));
    drop(v);
    assert_eq!(allocations, 1, "the counting allocator counts");
}
