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
//! - is recorded in the client's [`metrics`](Client::metrics).
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
