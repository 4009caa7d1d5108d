//! Trace context: a W3C `traceparent` and the `deadline` on every call, and a `tracing` span
//! around it.
//!
//! Each call continues the caller's trace when it has one (from [`CallOptions::trace`], from
//! a `traceparent` the caller put in the call's metadata, or from [`TraceContext::scope`]
//! around the calling code) and starts a fresh trace with random ids otherwise. Either way
//! the call gets a new span id of its own, which is what it sends as the parent id, so the
//! server's work hangs under the client's call in a trace. A caller's `tracestate` travels
//! along unchanged.
//!
//! The `deadline` entry is the call's remaining budget in whole milliseconds (u32,
//! big-endian) at the moment the attempt is handed to the connection (PROTOCOL.md
//! section 3), so the server can refuse work the caller will no longer wait for.
//!
//! [`CallOptions::trace`]: crate::CallOptions::trace

mod context;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

pub use context::{TraceContext, TraceParseError};

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// Runs `fut` with `self` as the current trace context: calls made inside it continue
    /// this trace unless their options name another. A server handler uses this to make
    /// its own outgoing calls part of the incoming request's trace.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// The context set by an enclosing [`TraceContext::scope`], if any.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

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
pub(crate) fn call_span(method: &str, context: &TraceContext) -> tracing::Span {
    tracing::info_span!(
        "mcp.call",
        method = %method,
        trace_id = %context.trace_id_hex(),
        span_id = %context.span_id_hex(),
    )
}
