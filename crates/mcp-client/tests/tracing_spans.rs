//! Calls run inside a `tracing` span that names the method and the ids the request carries.
//! Its own test binary: the subscriber is process-wide, and no other test races with it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::TraceContext;
use mcp_server::{Reply, Server};

type Spans = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A subscriber that keeps the name and fields of every span opened.
struct SpanLog(Spans);

struct Fields(Vec<(String, String)>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(Vec::new());
        span.record(&mut fields);
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.push((span.metadata().name().to_owned(), fields.0));
        tracing::span::Id::from_u64(log.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut fields = Fields(Vec::new());
        values.record(&mut fields);
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let index = usize::try_from(id.into_u64()).expect("small") - 1;
        if let Some((_, recorded)) = log.get_mut(index) {
            recorded.extend(fields.0);
        }
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn calls_run_in_a_span_naming_method_and_trace() {
    let spans = Spans::default();
    tracing::subscriber::set_global_default(SpanLog(spans.clone())).expect("first subscriber");

    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let server = serve(Server::builder().route_raw("user.get", move |ctx, _body| {
        *s.lock().unwrap() = ctx.traceparent().map(str::to_owned);
        async { Ok(Reply::empty()) }
    }))
    .await;
    let client = client_for(&server).build().expect("build");
    let _: () = bounded("call", client.call("user.get", &()))
        .await
        .expect("call");

    let sent = seen.lock().unwrap().clone().expect("a traceparent");
    let sent = TraceContext::parse(&sent).expect("valid");
    let spans = spans.lock().unwrap().clone();
    let (_, fields) = spans
        .iter()
        .find(|(name, _)| name == "mcp.call")
        .expect("an mcp.call span");
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("method"), "user.get");
    assert_eq!(field("trace_id"), sent.trace_id_hex());
    assert_eq!(field("span_id"), sent.span_id_hex());

    // The server's request span continues the same trace, under the client's call span.
    let (_, fields) = spans
        .iter()
        .find(|(name, fields)| name == "request" && fields.iter().any(|(k, _)| k == "trace_id"))
        .expect("the server's request span, with the trace recorded");
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("method"), "\"user.get\"");
    assert_eq!(field("trace_id"), sent.trace_id_hex());
    assert_eq!(field("parent_span_id"), sent.span_id_hex());

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}
