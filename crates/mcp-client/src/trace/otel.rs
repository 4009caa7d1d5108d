//! The bridge to OpenTelemetry (the `opentelemetry` feature): a call made inside a
//! `tracing` span that a tracing-opentelemetry layer records continues that span's trace.
//!
//! The call sends the current span's trace id, flags and `tracestate`, and as parent id the
//! id the layer gives the call's own `mcp.call` span (a child of the current span), or the
//! current span's id when the layer does not record the call span. Without a valid
//! OpenTelemetry context nothing changes.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;

/// The OpenTelemetry context of the current `tracing` span, if it has a valid one.
pub(super) fn current() -> Option<TraceContext> {
    context_of_span(&tracing::Span::current())
}

/// The valid OpenTelemetry span context of `span`, as a [`TraceContext`].
fn context_of_span(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let otel = cx.span();
    let otel = otel.span_context();
    if !otel.is_valid() {
        return None;
    }
    let context = TraceContext::new(
        otel.trace_id().to_bytes(),
        otel.span_id().to_bytes(),
        otel.trace_flags().to_u8(),
    )?;
    Some(context.with_tracestate(otel.trace_state().header()))
}

/// The span of a call sending `context`: when the layer records it in the same trace,
/// `context` takes the span's OpenTelemetry id, so that the server's span hangs under it.
pub(super) fn call_span(method: &str, context: &mut TraceContext) -> tracing::Span {
    let span = tracing::info_span!(
        "mcp.call",
        method = %method,
        trace_id = %context.trace_id_hex(),
        span_id = tracing::field::Empty,
    );
    if let Some(own) = context_of_span(&span) {
        if own.trace_id() == context.trace_id() {
            if let Some(adopted) = TraceContext::new(own.trace_id(), own.span_id(), context.flags())
            {
                let state = context.tracestate().unwrap_or_default().to_owned();
                *context = adopted.with_tracestate(state);
            }
        }
    }
    span.record("span_id", tracing::field::display(context.span_id_hex()));
    span
}
