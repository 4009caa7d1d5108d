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
//! big-endian) when the request is written (docs/protocol.md section 4.2): computed when
//! the attempt starts, and rewritten by the pool to what is left if the attempt then waited
//! for a connection or queue space, so the server can refuse work the caller will no
//! longer wait for.
//!
//! Shape, as every policy folder: `mod.rs` (these docs and the public types: the config a
//! builder takes, what the client reports), `state.rs` (choosing a call's context, its span
//! and its metadata; `context.rs` holds the public `TraceContext` value), `tests.rs` (the
//! policy run alone). The stack (`stack.rs`) composes it with the others.
//!
//! With the `opentelemetry` feature, a call made without an explicit context or a
//! `traceparent` of its own, inside a `tracing` span that a tracing-opentelemetry layer
//! records, continues that span's OpenTelemetry trace instead (`otel.rs`), and sends its
//! own `mcp.call` span's OpenTelemetry id as the parent id.
//!
//! [`CallOptions::trace`]: crate::CallOptions::trace

mod context;
#[cfg(feature = "opentelemetry")]
mod otel;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;

pub use context::{TraceContext, TraceParseError};
pub(crate) use state::{call_span, context_of, outgoing_meta};

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
