//! The request span, continuing the caller's trace.
//!
//! Every request runs in a `request` span (level DEBUG) with its connection, id and method.
//! When the request carries a valid W3C `traceparent` (the client sends one on every
//! call), the span also carries its `trace_id` and `parent_span_id` (lowercase hex, as on
//! the wire), so that what a handler logs joins the caller's trace with no code of its own.
//! A missing or invalid `traceparent` leaves both fields empty; nothing is refused for it.
//! The value is read only when a subscriber wants the span, and never copied: the fields
//! are slices of the metadata.
//!
//! With the `opentelemetry` feature, the same valid `traceparent` (and its `tracestate`)
//! also becomes the span's OpenTelemetry parent, as a remote span context, so that a
//! tracing-opentelemetry layer exports the server's span as a child of the caller's.

use mcp_transport::Meta;
use tracing::field::Empty;

use crate::subscribe::ConnId;

/// The metadata key of the W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// The span of request `id` of connection `conn`, for `method`.
pub(crate) fn request_span(conn: ConnId, id: u32, method: &str, meta: &Meta) -> tracing::Span {
    let span = tracing::debug_span!(
        "request",
        conn,
        id,
        method,
        trace_id = Empty,
        parent_span_id = Empty
    );
    if !span.is_disabled() {
        if let Some((trace_id, parent)) = meta.get(TRACEPARENT).and_then(traceparent) {
            // Displayed, as the client's `mcp.call` span shows its ids: no quotes.
            span.record("trace_id", tracing::field::display(trace_id));
            span.record("parent_span_id", tracing::field::display(parent));
            #[cfg(feature = "opentelemetry")]
            otel::set_parent(&span, meta);
        }
    }
    span
}

/// The trace id and parent span id of a `traceparent` value, as the hex they are written
/// in; `None` unless the value is valid per the W3C Trace Context spec: `vv-` + 32 + `-` +
/// 16 + `-` + 2 lowercase hex digits, version `ff` forbidden, version `00` exactly 55
/// bytes, a later version at least 55 with `-` after them, ids not all zeros.
pub(crate) fn traceparent(value: &[u8]) -> Option<(&str, &str)> {
    const LEN: usize = 55;
    if value.len() < LEN {
        return None;
    }
    let hex = |range: std::ops::Range<usize>| {
        value[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    if !dashes || !hex(0..2) || !hex(3..35) || !hex(36..52) || !hex(53..55) {
        return None;
    }
    match &value[..2] {
        b"ff" => return None,
        b"00" if value.len() != LEN => return None,
        _ if value.len() > LEN && value[LEN] != b'-' => return None,
        _ => {}
    }
    let (trace_id, parent) = (&value[3..35], &value[36..52]);
    if trace_id.iter().all(|&b| b == b'0') || parent.iter().all(|&b| b == b'0') {
        return None;
    }
    // Checked above: ASCII hex digits only.
    Some((
        std::str::from_utf8(trace_id).ok()?,
        std::str::from_utf8(parent).ok()?,
    ))
}

/// The bridge to OpenTelemetry (the `opentelemetry` feature).
#[cfg(feature = "opentelemetry")]
mod otel {
    use mcp_transport::Meta;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The metadata key of the W3C trace state.
    const TRACESTATE: &str = "tracestate";

    /// Sets the OpenTelemetry parent of `span` (not yet entered) to the remote context of
    /// `meta`'s `traceparent`, when valid. Without a tracing-opentelemetry layer this does
    /// nothing.
    pub(super) fn set_parent(span: &tracing::Span, meta: &Meta) {
        if let Some(remote) = remote_context(meta) {
            // Fails only without the layer, or for a span already started: nothing to do.
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
    }

    /// The remote span context of `meta`'s `traceparent` and `tracestate`, if the former is
    /// valid.
    fn remote_context(meta: &Meta) -> Option<SpanContext> {
        let value = meta.get(super::TRACEPARENT)?;
        let (trace_id, parent) = super::traceparent(value)?;
        let flags = std::str::from_utf8(&value[53..55]).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        // An invalid `tracestate` is dropped, as the W3C spec asks; the parent stays.
        let state = meta
            .get(TRACESTATE)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            TraceId::from_hex(trace_id).ok()?,
            SpanId::from_hex(parent).ok()?,
            // Only the flags this version of the spec defines (sampled, random).
            TraceFlags::new(flags & 0x03),
            true,
            state,
        ))
    }

    #[cfg(test)]
    mod tests {
        use mcp_transport::Meta;
        use opentelemetry::trace::{SpanId, TraceId};

        use super::remote_context;

        #[test]
        fn reads_a_remote_context_from_traceparent_and_tracestate() {
            let meta = Meta::default()
                .with(
                    "traceparent",
                    &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
                )
                .with("tracestate", &b"vendor=value"[..]);
            let cx = remote_context(&meta).expect("a valid traceparent");
            assert_eq!(
                cx.trace_id(),
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
            );
            assert_eq!(cx.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
            assert!(cx.is_sampled() && cx.is_remote());
            assert_eq!(cx.trace_state().get("vendor"), Some("value"));
            let invalid = Meta::default().with(
                "traceparent",
                &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            );
            assert!(remote_context(&invalid).is_none());
            assert!(remote_context(&Meta::default()).is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::traceparent;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_ids_of_a_valid_value() {
        assert_eq!(
            traceparent(VALID),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        // A later version may carry more after a dash.
        let mut later = b"01".to_vec();
        later.extend_from_slice(&VALID[2..]);
        later.extend_from_slice(b"-what-comes-next");
        assert_eq!(
            traceparent(&later).map(|(t, _)| t),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        let with = |i: usize, b: u8| {
            let mut v = VALID.to_vec();
            v[i] = b;
            v
        };
        assert_eq!(traceparent(&VALID[..54]), None, "short");
        assert_eq!(traceparent(&[VALID, b"-x"].concat()), None, "00 too long");
        let mut ff = VALID.to_vec();
        ff[..2].copy_from_slice(b"ff");
        assert_eq!(traceparent(&ff), None, "version ff");
        assert_eq!(traceparent(&with(10, b'A')), None, "upper case");
        assert_eq!(traceparent(&with(35, b'_')), None, "layout");
        let zeros = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(traceparent(zeros), None, "zero trace id");
        let zeros = b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert_eq!(traceparent(zeros), None, "zero parent id");
        let mut later = b"01".to_vec();
        later.extend_from_slice(&VALID[2..]);
        later.push(b'x');
        assert_eq!(traceparent(&later), None, "no dash after a later version");
    }
}
