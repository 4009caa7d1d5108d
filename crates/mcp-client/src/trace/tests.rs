use std::time::Duration;

use super::state::{context_for_call, deadline_value};
use super::*;

const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn parses_and_formats_the_spec_example() {
    let ctx = TraceContext::parse(EXAMPLE).expect("valid");
    assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ctx.span_id_hex(), "00f067aa0ba902b7");
    assert!(ctx.is_sampled());
    assert_eq!(ctx.to_traceparent(), EXAMPLE);
    assert_eq!(EXAMPLE.parse::<TraceContext>(), Ok(ctx));
}

#[test]
fn rejects_what_the_spec_rejects() {
    use TraceParseError::*;
    let cases: &[(&str, TraceParseError)] = &[
        ("", Length),
        (&EXAMPLE[..54], Length),
        // Version 00 must be exactly 55 characters.
        (&format!("{EXAMPLE}-"), Length),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            NotHex,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            NotHex,
        ),
        (
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            NotHex,
        ),
        (
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Version,
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ZeroId,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ZeroId,
        ),
        (
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Layout,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            Layout,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            Layout,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            NotHex,
        ),
        // Multi-byte UTF-8 where hex is expected is refused, never a panic.
        (
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            NotHex,
        ),
    ];
    for (value, want) in cases {
        assert_eq!(TraceContext::parse(value), Err(*want), "{value:?}");
    }
}

#[test]
fn later_versions_are_read_as_version_00_when_they_fit() {
    let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
    let ctx = TraceContext::parse(future).expect("forward compatible");
    assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    // It is written back as version 00.
    assert_eq!(ctx.to_traceparent(), EXAMPLE);
    let exact = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert!(TraceContext::parse(exact).is_ok());
    let glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
    assert_eq!(TraceContext::parse(glued), Err(TraceParseError::Layout));
}

#[test]
fn unknown_flags_are_not_passed_on() {
    let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff")
        .expect("valid");
    assert_eq!(ctx.flags(), 0xff);
    assert!(ctx.to_traceparent().ends_with("-03"));
}

#[test]
fn a_child_keeps_the_trace_and_changes_the_span() {
    let parent = TraceContext::parse(EXAMPLE)
        .expect("valid")
        .with_tracestate("congo=t61rcWkgMzE");
    let child = parent.child();
    assert_eq!(child.trace_id(), parent.trace_id());
    assert_ne!(child.span_id(), parent.span_id());
    assert_eq!(child.flags(), parent.flags());
    assert_eq!(child.tracestate(), Some("congo=t61rcWkgMzE"));
    assert_ne!(child.span_id(), child.child().span_id());
}

#[test]
fn roots_are_random_and_valid() {
    let a = TraceContext::new_root();
    let b = TraceContext::new_root();
    assert_ne!(a.trace_id(), b.trace_id());
    assert_ne!(a.trace_id(), [0; 16]);
    assert!(a.is_sampled());
    let text = a.to_traceparent();
    assert_eq!(text.len(), 55);
    assert_eq!(
        TraceContext::parse(&text).map(|c| c.trace_id()),
        Ok(a.trace_id())
    );
    assert!(TraceContext::new([0; 16], [1; 8], 0).is_none());
}

#[tokio::test]
async fn calls_continue_the_callers_context() {
    let parent = TraceContext::parse(EXAMPLE).expect("valid");

    // Explicit option first.
    let ctx = context_for_call(Some(&parent), None, None);
    assert_eq!(ctx.trace_id(), parent.trace_id());
    assert_ne!(ctx.span_id(), parent.span_id());

    // Then a traceparent in the caller's metadata, with its tracestate.
    let ctx = context_for_call(None, Some(EXAMPLE.as_bytes()), Some(b"a=1"));
    assert_eq!(ctx.trace_id(), parent.trace_id());
    assert_eq!(ctx.tracestate(), Some("a=1"));

    // An invalid one starts a fresh trace, and its tracestate is dropped.
    let ctx = context_for_call(None, Some(b"garbage"), Some(b"a=1"));
    assert_ne!(ctx.trace_id(), parent.trace_id());
    assert_eq!(ctx.tracestate(), None);

    // Then the enclosing scope.
    let scoped = parent
        .clone()
        .scope(async { context_for_call(None, None, None) })
        .await;
    assert_eq!(scoped.trace_id(), parent.trace_id());
    assert!(TraceContext::current().is_none(), "the scope ended");

    // Otherwise a fresh root each time.
    let a = context_for_call(None, None, None);
    let b = context_for_call(None, None, None);
    assert_ne!(a.trace_id(), b.trace_id());
}

#[test]
fn deadline_is_big_endian_milliseconds_rounded_down() {
    assert_eq!(
        deadline_value(Duration::from_millis(5000)),
        [0, 0, 0x13, 0x88]
    );
    assert_eq!(deadline_value(Duration::from_micros(1999)), [0, 0, 0, 1]);
    assert_eq!(deadline_value(Duration::ZERO), [0; 4]);
    assert_eq!(deadline_value(Duration::from_secs(u64::MAX)), [0xff; 4]);
}

#[test]
fn every_byte_is_written_as_its_two_lowercase_hex_digits() {
    for b in 0..=255u8 {
        let mut trace_id = [1u8; 16];
        trace_id[7] = b;
        let ctx = TraceContext::new(trace_id, [b, 1, 2, 3, 4, 5, 6, b], 1).expect("valid ids");
        let expected: String = trace_id.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(ctx.trace_id_hex(), expected);
        assert_eq!(ctx.span_id_hex(), format!("{b:02x}010203040506{b:02x}"));
        let text = ctx.to_traceparent();
        assert_eq!(
            TraceContext::parse(&text).expect("parses back").span_id(),
            ctx.span_id()
        );
    }
}
