//! What the trace policy does to each call: choose its context, open its span, write its
//! `traceparent`, `tracestate` and `deadline`.

use std::time::Duration;

use mcp_codec::{DEADLINE, TRACEPARENT, TRACESTATE};
use mcp_transport::Meta;

use super::TraceContext;
use crate::client::CallOptions;

/// Chooses the context of a call: the first valid one of the explicit option, a
/// `traceparent` (with its `tracestate`) in the caller's metadata, the enclosing scope; a
/// fresh root otherwise. Returns the context the call sends (a child with a new span id).
pub(crate) fn context_for_call(
    explicit: Option<&TraceContext>,
    traceparent: Option<&[u8]>,
    tracestate: Option<&[u8]>,
) -> TraceContext {
    let parent = explicit.cloned().or_else(|| {
        let value = std::str::from_utf8(traceparent?).ok()?;
        let mut parent = TraceContext::parse(value).ok()?;
        // The W3C spec passes `tracestate` on only with a `traceparent` that parsed.
        if let Some(state) = tracestate.and_then(|s| std::str::from_utf8(s).ok()) {
            parent = parent.with_tracestate(state);
        }
        Some(parent)
    });
    // The current span's OpenTelemetry context, sent as it is: `call_span` then puts the
    // call span's own id in it when the layer records that span.
    #[cfg(feature = "opentelemetry")]
    if parent.is_none() {
        if let Some(current) = super::otel::current() {
            return current;
        }
    }
    match parent.or_else(TraceContext::current) {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    }
}

/// The `deadline` metadata value for `remaining` time: whole milliseconds, big-endian,
/// saturating at `u32::MAX` (49 days). Rounded down, so a server never believes it has more
/// time than the caller will wait.
pub(crate) fn deadline_value(remaining: Duration) -> [u8; 4] {
    let ms = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
    ms.to_be_bytes()
}

/// The span every call runs in.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn call_span(method: &str, context: &mut TraceContext) -> tracing::Span {
    tracing::info_span!(
        "mcp.call",
        method = %method,
        trace_id = %context.trace_id_hex(),
        span_id = %context.span_id_hex(),
    )
}

/// The span every call runs in; `context` may take the span's OpenTelemetry id.
#[cfg(feature = "opentelemetry")]
pub(crate) fn call_span(method: &str, context: &mut TraceContext) -> tracing::Span {
    super::otel::call_span(method, context)
}

/// The trace context a call sends (see [`context_for_call`]).
pub(crate) fn context_of(options: &CallOptions) -> TraceContext {
    let find = |key: &str| {
        options
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    };
    context_for_call(options.trace.as_ref(), find(TRACEPARENT), find(TRACESTATE))
}

/// The metadata of an outgoing frame: the caller's entries (minus the well-known keys the
/// client sets itself), then `traceparent`, `tracestate` and, for calls, `deadline`.
pub(crate) fn outgoing_meta(
    options: &CallOptions,
    context: &TraceContext,
    remaining: Option<Duration>,
    authorization: Option<&[u8]>,
) -> Meta {
    let traceparent = context.traceparent_bytes();
    let deadline = remaining.map(deadline_value);
    // The caller's own `authorization` entry, set on the call, wins over the client's.
    let authorization = authorization.filter(|_| {
        !options
            .metadata
            .iter()
            .any(|(key, _)| key.as_ref() == crate::auth::AUTHORIZATION)
    });
    // One buffer for every entry (built on every attempt: one allocation, not one per
    // value). Most calls send exactly a `traceparent` and a `deadline`: that block is laid
    // out from a plain array, without the filter and chain the general case needs.
    if let (true, None, None, Some(deadline)) = (
        options.metadata.is_empty(),
        authorization,
        context.tracestate(),
        deadline.as_ref(),
    ) {
        return Meta::from_entries([(TRACEPARENT, &traceparent[..]), (DEADLINE, &deadline[..])]);
    }
    let callers = options
        .metadata
        .iter()
        .filter(|(key, _)| !matches!(key.as_ref(), TRACEPARENT | TRACESTATE | DEADLINE))
        .map(|(key, value)| (key.as_ref(), value.as_ref()));
    let own = [
        Some((TRACEPARENT, &traceparent[..])),
        context
            .tracestate()
            .map(|state| (TRACESTATE, state.as_bytes())),
        deadline.as_ref().map(|d| (DEADLINE, &d[..])),
        authorization.map(|value| (crate::auth::AUTHORIZATION, value)),
    ];
    Meta::from_entries(callers.chain(own.into_iter().flatten()))
}
