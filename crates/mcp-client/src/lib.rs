//! `mcp-client`: the client of MCP 1.2, the binary Microservice/Message Communication
//! Protocol (not the Model Context Protocol). The one crate an application depends on.
//!
//! # Who should use this crate
//! Applications calling MCP services. It re-exports what they need from the layers below
//! (the formats of `mcp-format`, the metadata and transport settings of `mcp-transport`,
//! error codes of `mcp-codec`), so `mcp-client` is the only dependency. Servers use
//! `mcp-server`; firmware uses `mcp-codec` alone.
//!
//! # Quick start
//! ```no_run
//! use mcp_client::Client;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct Echo {
//!     msg: String,
//! }
//!
//! # async fn run() -> Result<(), mcp_client::Error> {
//! let client = Client::builder("127.0.0.1:7000").connect().await?;
//! let back: Echo = client.call("echo", &Echo { msg: "hi".into() }).await?;
//! println!("{back:?}");
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # What a call goes through
//! Every call has one budget (5 s by default) covering every phase: waiting for a slot under
//! the concurrency limit, getting a connection, each attempt (2 s by default) and the
//! backoff between them. On the way it
//! - carries a W3C `traceparent` (continuing the caller's trace, or a fresh one) and the
//!   `deadline` the server should respect, inside a `tracing` span `mcp.call`;
//! - waits for (or is refused) a slot under the limit of outstanding calls ([`LimitConfig`]);
//! - is retried on transient failures after 100, 300, 700 ms, within a retry budget, and never
//!   sent twice once it may have been processed unless marked idempotent ([`RetryConfig`]);
//! - fails fast while the circuit breaker is open ([`BreakerConfig`]);
//! - is recorded in the client's [`metrics`](Client::metrics) (and, with the `metrics`
//!   feature, through the `metrics` facade: see below).
//!
//! Failures are one [`Error`] type that answers: timeout, and in which [`Phase`]? possibly
//! processed? retryable? the server's [`RemoteError`]? circuit open? overloaded? a body that
//! did not decode?
//!
//! # Features
//! - `json` (default): JSON bodies through serde ([`Json`]); the default format.
//! - `protobuf` (default): Protobuf bodies through prost ([`Protobuf`]).
//! - `blocking` (default): [`blocking::Client`], for programs without async.
//! - `dns` (default): [`Client::dns`], a fleet that follows a DNS name (hickory-resolver).
//! - `tower` (default): `tower_service::Service<RawRequest>` for [`Client`], with `poll_ready`
//!   driven by the concurrency limit.
//! - `tls` (default): TLS over rustls with ring ([`ClientBuilder::tls`] with a
//!   `TlsClientConfig`: CA roots, a client identity for mutual TLS, the server name, or a
//!   rustls configuration of your own). `tls-aws-lc-rs` uses aws-lc-rs instead of ring;
//!   `tls-webpki-roots` and `tls-native-roots` add `TlsClientConfig::with_webpki_roots` and
//!   `with_native_roots`. A failed handshake is a connect error whose
//!   [`Error::tls_failure`] names the reason.
//! - `metrics` (off): records through the [`metrics`](https://docs.rs/metrics) facade, see
//!   below. Off by default: a dependency and a few atomic operations per call, for programs
//!   that export nothing.
//! - `opentelemetry` (off): a call made inside a `tracing` span that a
//!   [tracing-opentelemetry](https://docs.rs/tracing-opentelemetry) layer records continues
//!   that span's OpenTelemetry trace: its `traceparent` carries the span's trace id, flags
//!   and `tracestate`, with the call's own `mcp.call` span id as parent id. An explicit
//!   [`CallOptions::trace`] or `traceparent` in the call's metadata still wins; without a
//!   valid OpenTelemetry context nothing changes. No exporter is shipped.
//!
//! # Metrics through the `metrics` facade (feature `metrics`)
//! [`Client::metrics`] is an in-process snapshot, always there. With the `metrics` feature
//! the client also records into whatever recorder the application installed
//! (`metrics-exporter-prometheus`, an OpenTelemetry bridge, ...; the crate ships none),
//! named after the OpenTelemetry RPC conventions. Install the recorder before building the
//! client: handles are taken when the client is built and on each method's first call.
//! `crates/mcp-client/examples/prometheus.rs` exposes a client's and a server's series on
//! a Prometheus endpoint.
//!
//! | name | kind, unit | labels | what |
//! |---|---|---|---|
//! | `rpc.client.call.duration` | histogram, s | `rpc.method` (+ `error.type`) | a whole call: queue, every attempt, backoff |
//! | `mcp.client.attempt.duration` | histogram, s | `rpc.method` (+ `error.type`) | one attempt sent |
//! | `mcp.client.active_calls` | gauge, {call} | `rpc.method` | calls started, not yet ended |
//! | `mcp.client.retries` | counter, {attempt} | `rpc.method` | attempts after the first |
//! | `mcp.client.sent_bytes` | counter, By | `rpc.method` | request bodies, per attempt |
//! | `mcp.client.received_bytes` | counter, By | `rpc.method` | response bodies |
//! | `mcp.client.breaker.transitions` | counter | `mcp.breaker.state` (`open`, `half_open`, `closed`) | the circuit breaker entering a state |
//! | `mcp.client.connections` | gauge, {connection} | | open connections, per endpoint |
//! | `mcp.client.reconnects` | counter | | connections opened after an endpoint's first |
//! | `mcp.client.ejections` | counter | | a fleet's endpoint ejected as an outlier |
//!
//! Every series also has `rpc.system = "mcp"`, `server.address` and `server.port` (the
//! client's endpoint. For a fleet, the call series have the DNS name and port it follows,
//! or its list of addresses, or `discovery`, as `server.address`; the connection,
//! reconnect and ejection series are per endpoint).
//! `error.type` is on failures only: the local [`ErrorKind`]'s name in lower case
//! (`timeout`, `connect`, ...), or the server's ERROR code by its protocol name in upper case
//! (`OVERLOADED`, `UNKNOWN_METHOD`, ...; `APPLICATION` for codes of 1000 and up,
//! `UNKNOWN_CODE` for unassigned ones). More than 256 method names in one client are
//! labelled `rpc.method = "_OTHER"`, so that arbitrary names cannot grow the series without
//! bound.
//!
//! # Credentials
//! [`ClientBuilder::authorization`] (a fixed value) or [`ClientBuilder::authorization_fn`]
//! (asked on every attempt, for a token that is refreshed) send the `authorization` metadata
//! entry with every request and NOTIFY. A server refusing it answers ERROR 10
//! (UNAUTHENTICATED) or 11 (PERMISSION_DENIED): [`Error::code`], not retried.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
pub mod balance;
mod breaker;
mod client;
mod error;
mod limit;
mod metrics;
mod retry;
mod stack;
mod trace;
mod transport;
mod window;

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(feature = "tower")]
mod tower;

pub use auth::AUTHORIZATION;
#[cfg(feature = "dns")]
pub use balance::DnsConfig;
pub use balance::{
    BalanceConfig, Change, EjectionConfig, EndpointSnapshot, EndpointState, Fleet, Instance,
    Picker, SuccessRateConfig,
};
pub use breaker::{BreakerConfig, BreakerState};
pub use client::{
    CallOptions, Client, ClientBuilder, DefaultFormat, RawPush, RawRequest, RawResponse,
    RawSubscription, Subscription,
};
pub use error::{Error, ErrorKind, Phase, RemoteError};
pub use limit::{LimitConfig, LimitMode};
pub use metrics::{ConnectionCounts, ErrorCounts, LatencySnapshot, MetricsSnapshot};
pub use retry::{RetryBudgetConfig, RetryConfig};
pub use trace::{TraceContext, TraceParseError};

// What applications need from the layers below, so that this crate is their only
// dependency.
pub use bytes::{Bytes, BytesMut};
pub use futures_core::Stream;
pub use mcp_codec::ErrorCode;
#[cfg(feature = "json")]
pub use mcp_format::Json;
#[cfg(feature = "protobuf")]
pub use mcp_format::Protobuf;
pub use mcp_format::{Decode, DecodeError, Encode, EncodeError, Format, FormatId, Raw};
pub use mcp_transport::{BackoffConfig, HeartbeatConfig, Meta, PoolConfig, TlsFailure};
#[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
pub use mcp_transport::{TlsClientConfig, TlsConfigError, rustls};
