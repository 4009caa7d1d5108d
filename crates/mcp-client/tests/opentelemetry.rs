//! The `opentelemetry` features of both crates: a call made inside an application span that
//! a tracing-opentelemetry layer records continues that span's trace on the wire, and the
//! server's request span is exported as a child of the client's call span.
//! Its own test binary: the subscriber is process-wide, and no other test races with it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::TraceContext;
use mcp_server::{Reply, Server};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The exported span named `name`, once it has ended (the server's may end after the
/// client has its reply).
async fn exported(
    provider: &SdkTracerProvider,
    exporter: &InMemorySpanExporter,
    name: &str,
) -> SpanData {
    bounded(name, async {
        loop {
            provider.force_flush().expect("flush");
            let spans = exporter.get_finished_spans().expect("finished spans");
            if let Some(span) = spans.into_iter().find(|s| s.name == name) {
                return span;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_call_continues_the_opentelemetry_trace_on_both_sides() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("mcp-test")));
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let server = serve(Server::builder().route_raw("user.get", move |ctx, _body| {
        *s.lock().unwrap() = ctx.traceparent().map(str::to_owned);
        async { Ok(Reply::empty()) }
    }))
    .await;
    let client = client_for(&server).build().expect("build");

    let app = tracing::info_span!("app");
    let app_context = app.context().span().span_context().clone();
    assert!(
        app_context.is_valid(),
        "the layer records the application span"
    );
    let _: () = bounded("call", client.call("user.get", &()).instrument(app.clone()))
        .await
        .expect("call");
    drop(app);

    let sent = seen.lock().unwrap().clone().expect("a traceparent");
    let sent = TraceContext::parse(&sent).expect("valid");
    let sent_trace = TraceId::from_bytes(sent.trace_id());
    let sent_parent = SpanId::from_bytes(sent.span_id());
    // The wire continues the application's trace rather than a fresh root.
    assert_eq!(sent_trace, app_context.trace_id(), "traceparent's trace id");
    assert!(
        sent.is_sampled(),
        "the sampled flag of the application span"
    );

    let call = exported(&provider, &exporter, "mcp.call").await;
    let request = exported(&provider, &exporter, "request").await;
    let app = exported(&provider, &exporter, "app").await;
    assert_eq!(app.span_context.span_id(), app_context.span_id());

    // The client's call span: in the application's trace, under the application span, and
    // its id is the parent id the call sent.
    assert_eq!(
        call.span_context.trace_id(),
        app_context.trace_id(),
        "call span's trace"
    );
    assert_eq!(
        call.parent_span_id,
        app_context.span_id(),
        "call span's parent"
    );
    assert_eq!(
        call.span_context.span_id(),
        sent_parent,
        "traceparent's parent id"
    );

    // The server's request span: the same trace, a child of the client's call span.
    assert_eq!(
        request.span_context.trace_id(),
        app_context.trace_id(),
        "request span's trace"
    );
    assert_eq!(request.parent_span_id, sent_parent, "request span's parent");
    assert!(
        request.parent_span_is_remote,
        "the parent came over the wire"
    );

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
    provider.shutdown().expect("provider shutdown");
}
