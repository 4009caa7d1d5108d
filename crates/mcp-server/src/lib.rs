//! `mcp-server`: the reference server of MCP 1.2, the binary framed microservice protocol
//! (not the Model Context Protocol), on tokio.
//!
//! # Who should use this crate
//! Services answering MCP requests. It reads and writes through `mcp-transport`'s wire I/O
//! (the same reader and writer as the client) over `mcp-codec`, and decodes typed bodies
//! through `mcp-format`.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use mcp_format::{FormatId, Json};
//! use mcp_server::{Reply, Server, Status};
//!
//! # async fn run() -> Result<(), mcp_server::Error> {
//! let server = Server::builder()
//!     .route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) })
//!     .route_typed("add", Json, |_ctx, (a, b): (i64, i64)| async move { Ok(a + b) })
//!     .route_raw("fail", |_ctx, _body| async { Err(Status::application(1001, "no")) })
//!     .max_in_flight(256)
//!     .bind("127.0.0.1:0")
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! server.publish("orders.created", FormatId::JSON, &br#"{"id":1}"#[..])?;
//! server.shutdown(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What the server does for you (docs/protocol.md sections 4 to 7)
//! - Routing: an unknown method is ERROR 2; a reserved format (3..=127) is ERROR 3; a
//!   typed route also answers ERROR 3 to another format and ERROR 1 to a body it cannot
//!   decode. Answers are sent in the request's format.
//! - Deadlines: a request whose `deadline` already passed is ERROR 4 and its handler never
//!   runs; one that passes while the handler runs is ERROR 4 too, and the handler is
//!   stopped.
//! - Limits: requests in flight per connection (ERROR 5), request bytes in flight per
//!   connection (ERROR 5), both also for the whole server (ERROR 5 at once, never a
//!   queue; the bytes of messages still arriving count too), message size (ERROR 7 with the id, the connection stays), subscriptions per
//!   connection (ERROR 5), client NOTIFY handled at once (dropped and counted), bytes
//!   queued per connection (the server stops reading from a client that does not read,
//!   and answers wait), connections at once (in all and per IP address: GOAWAY 2), the
//!   time to a first frame (10 s). Accepting backs off from 5 ms to 1 s while the process
//!   is out of file descriptors. An idle connection holds no read or write buffer.
//! - CANCEL stops the handler (its future is dropped, its [`RequestContext::cancellation`]
//!   token fires) and nothing is sent for that id.
//! - `$subscribe` / `$unsubscribe` and [`ServerHandle::publish`]: exact and `prefix*`
//!   patterns, at most one copy per connection. A publisher never waits: a subscriber whose
//!   queue is full misses the message (counted); one that stops reading is disconnected by
//!   the write stall timeout.
//! - Client NOTIFY goes to the route of its topic ([`Router::route_notify`]); nothing
//!   answers it.
//! - PING is answered PONG; a silent client gets PING after the heartbeat interval and is
//!   closed if nothing arrives within the timeout.
//! - Malformed input: a REQUEST whose id is readable is ERROR 1 with its id and the
//!   connection stays; anything else (bad magic, version or CRC, a RESPONSE from a client,
//!   a duplicate id in flight, ...) is ERROR id 0 and close.
//! - Graceful shutdown ([`ServerHandle::shutdown`]): GOAWAY with `last_id`, ERROR 6 for
//!   later requests, requests in flight answered (ERROR 8 once the grace runs out), then
//!   close. A client's GOAWAY (or end of stream) closes its connection once its requests
//!   are answered.
//!
//! # Features
//! - `json` (default): typed routes in JSON through `mcp-format`.
//! - `protobuf` (default): typed routes in Protobuf through `mcp-format`.
//! - `tls` (default): TLS over rustls with ring: serve with
//!   `serve_with(TlsAccept::tcp(listener, TlsServerConfig::from_pem(..)?.build()?))`; the
//!   client's certificate, if any, is [`RequestContext::peer_identity`]. Handshakes run off
//!   the accept loop under a timeout, at most 1,024 at once and 32 per client address
//!   (`TlsAccept::max_handshakes`, `max_handshakes_per_ip`). `tls-aws-lc-rs` uses aws-lc-rs
//!   instead of ring.
//! - `metrics` (off): records through the [`metrics`](https://docs.rs/metrics) facade, see
//!   below.
//! - `opentelemetry` (off): a valid incoming `traceparent` (and `tracestate`) becomes the
//!   OpenTelemetry parent of the `request` span, so that a
//!   [tracing-opentelemetry](https://docs.rs/tracing-opentelemetry) layer exports the
//!   server's span as a child of the caller's. No exporter is shipped.
//!
//! # Tracing
//! Each request's handler runs in a `request` span (DEBUG) with `conn`, `id` and `method`;
//! when the request carries a valid W3C `traceparent` (mcp-client sends one on every call),
//! the span also has its `trace_id` and `parent_span_id` (the caller's span), so a handler's
//! logs join the caller's trace with no code. The value is parsed only when a subscriber
//! wants the span.
//!
//! # Metrics through the `metrics` facade (feature `metrics`)
//! [`ServerHandle::stats`] is an in-process snapshot, always there. With the `metrics`
//! feature the server also records into the application's recorder (none is shipped),
//! named after the OpenTelemetry RPC conventions; install it before starting the server.
//!
//! | name | kind, unit | labels | what |
//! |---|---|---|---|
//! | `rpc.server.call.duration` | histogram, s | `rpc.method` (+ `error.type`) | a handler, from its start to its end |
//! | `mcp.server.active_calls` | gauge, {call} | `rpc.method` | handlers running |
//! | `mcp.server.refused` | counter, {request} | `error.type` | requests answered ERROR without a handler: the shed and refusals |
//! | `mcp.server.connections` | gauge, {connection} | | connections open |
//! | `mcp.server.refused_connections` | counter | | connections refused at `max_connections` or the per-IP cap |
//!
//! Every series also has `rpc.system = "mcp"`, `server.address` and `server.port` (where
//! the server listens). `error.type` is the ERROR code's protocol name: on
//! `rpc.server.call.duration`, the handler's [`Status`] (`APPLICATION` for codes of 1000 and
//! up), or `CANCELLED` for a handler stopped by CANCEL or the shutdown; on
//! `mcp.server.refused`, the reason: `OVERLOADED` (ERROR 5, the in-flight limits of a
//! connection or of the server), `UNAVAILABLE` (6, draining), `DEADLINE_EXCEEDED` (4, dead
//! on arrival), `UNKNOWN_METHOD` (2), `UNSUPPORTED_FORMAT` (3), `MALFORMED` (1),
//! `TOO_LARGE` (7), `UNAUTHENTICATED` and `PERMISSION_DENIED` (10, 11, the
//! authentication hook). Unknown methods have no `rpc.method` series of their own.
//!
//! # Authentication
//! [`ServerBuilder::authenticate`] sets a hook asked about every request and client NOTIFY
//! before routing ([`AuthRequest`]: metadata, `authorization`, peer address and
//! certificate); its refusal is the answer (ERROR 10 or 11) and no handler runs.
//!
//! # Panics
//! Nothing a peer sends can panic the server, and a panicking handler is answered ERROR 9.
//! Building a [`Router`] panics on programming errors (a method routed twice, a method
//! starting with `$`), see its docs.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
mod config;
mod conn;
mod error;
mod handler;
mod health;
mod metrics;
mod pattern;
mod router;

mod server;
mod subscribe;
mod trace;

pub use auth::{AUTHORIZATION, AuthRequest};
pub use config::ServerConfig;
pub use error::{Error, Status};
pub use handler::{
    Handler, HandlerFn, NotifyContext, NotifyFn, NotifyHandler, Reply, RequestContext,
    TypedHandler, handler_fn, notify_fn,
};
pub use health::HealthStatus;
pub use router::{Router, SUBSCRIBE, UNSUBSCRIBE};
pub use server::{Server, ServerBuilder, ServerHandle, ServerStats};
pub use subscribe::Published;

pub use mcp_transport::PeerIdentity;
#[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
pub use mcp_transport::{
    TlsAccept, TlsAcceptStats, TlsConfigError, TlsReloader, TlsServerConfig, rustls,
};
