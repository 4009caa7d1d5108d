//! `mcp-transport`: the tokio layer of MCP (the binary Microservice/Message Communication
//! Protocol, not the Model Context Protocol). It turns the sans-I/O `mcp-codec` into living
//! connections: multiplexed calls, heartbeats, reconnect with backoff, timeouts,
//! backpressure and a connection pool. Only this crate and those above it know tokio.
//!
//! # Who should use this crate
//! - `mcp-client` builds its facade (retries, circuit breaking, tracing, metrics) on
//!   [`Pool`]; applications should depend on `mcp-client`.
//! - `mcp-server` uses the shared wire pieces ([`FrameReader`], [`WireWriter`],
//!   [`WireConfig`] with [`Role::Server`]) to serve connections.
//! - Anyone wanting `tokio_util::codec::Framed` uses [`McpCodec`].
//!
//! # API overview
//! Wire level, shared by client and server:
//! - [`FrameReader::new`]`(read_half, &WireConfig)`, then `reader.next().await ->
//!   Result<Option<`[`Inbound`]`>, `[`WireError`]`>`: decodes every frame of each read
//!   from one reused buffer; single-frame bodies are zero-copy `Bytes` slices of it;
//!   CONTINUATION frames are reassembled under `max_message_len`; frame types the
//!   [`Role`] never receives are a [`WireError`]. Cancel-safe (use it in `select!`).
//! - [`WireWriter::spawn`]`(write_half, &WireConfig) -> WireWriter` (cloneable):
//!   `writer.send(Envelope)` encodes the whole message (split into CONTINUATION frames
//!   when large) into the queue synchronously; the writer task writes everything queued
//!   since its last write in one write; `writer.ready().await` waits for queue space
//!   (flow control); a write making no progress for `write_stall_timeout` ends the task
//!   ([`WriterExit::Failed`]); `close()` flushes and shuts down; `abort()` drops.
//! - [`McpCodec`]: `tokio_util::codec::{Decoder<Item = Inbound>, Encoder<Envelope>}`.
//!
//! Client level:
//! - [`Pool::new`]`(endpoint, `[`PoolConfig`]`)` (lazy; spawns one connector task);
//!   [`Pool::ready`] waits for a connection.
//! - [`Pool::call`]`(method, format, &`[`Meta`]`, body: &[u8], `[`CallDeadline`]`) ->
//!   Result<`[`Answer`]`, `[`TransportError`]`>`; [`Answer`] is a RESPONSE
//!   ([`InboundResponse`]: format, meta, body `Bytes`) or a remote ERROR
//!   ([`RemoteError`]: code, message). ERROR 6 and GOAWAY-refused requests are
//!   `Err`, not processed and retryable elsewhere.
//! - [`Pool::notify`]`(topic, format, &Meta, body)`; [`Pool::subscribe`]`(pattern) ->
//!   `[`PushStream`] (a `Stream<Item = `[`Push`]`>`, survives reconnects, sends
//!   `$unsubscribe` when the last one for its pattern is dropped; if the server refuses
//!   the pattern when it is subscribed again after a reconnect, the stream ends and
//!   [`PushStream::error`] says why). Its queue is bounded by count and by bytes.
//! - [`Pool::state`] / [`Pool::watch_state`] ([`EndpointState`]: connected, reconnecting
//!   with attempt and next delay, down, closed with a reason); [`Pool::stats`]
//!   ([`PoolStats`]: in flight, connections by state, reconnects, late answers dropped,
//!   push overflow drops, live tasks); [`Pool::close`] / drop; [`Pool::join`].
//! - [`Connection`]: one connection without the pool ([`Connection::connect`],
//!   [`Connection::call`], [`Connection::notify`], [`Connection::subscribe`],
//!   [`Connection::drain`], [`Connection::close`], [`Connection::watch_status`]).
//! - [`TransportError`]: [`TransportError::is_timeout`] (also true for a pool still
//!   exhausted at the deadline, whose kind is [`ErrorKind::PoolExhausted`] with the reason),
//!   [`TransportError::phase`]
//!   ([`Phase`]: queue, pool, connect, write, response), [`TransportError::processed`]
//!   ([`Processed::No`] = certainly not processed, [`Processed::Maybe`]),
//!   [`TransportError::is_retryable_elsewhere`], [`TransportError::kind`].
//!
//! Byte streams ([`Stream`], [`Connect`], [`Accept`]): TCP ([`TcpConnect`], [`TcpAccept`]),
//! and TLS with the `tls` features: `TlsConnect::new(addr, &TlsClientConfig)` for
//! [`Pool::with_connector`], `TlsAccept::tcp(listener, TlsServerConfig::..build()?)` for a
//! server, `TlsAccept::reloader()` to replace its configuration at run time. A failed
//! handshake is [`ErrorKind::Tls`] naming a [`TlsFailure`]; [`TransportError::tls_failure`]
//! finds it also behind a pool whose endpoint is down.
//!
//! # Features
//! - `tls`: TLS over rustls with the ring provider.
//! - `tls-aws-lc-rs`: the aws-lc-rs provider instead (it wins if both are on).
//! - `tls-webpki-roots`, `tls-native-roots`: `TlsClientConfig::with_webpki_roots` and
//!   `with_native_roots` (with one of the two above).
//!
//! # The path of one call
//! `Pool::call` picks the least-loaded open connection with a free place in its in-flight
//! window (an atomic counter), or waits for one until the deadline while the pool's single
//! connector task connects. On the connection, under one lock, it allocates the id, encodes
//! the REQUEST straight into the writer's buffer (split into CONTINUATION frames if large)
//! and records a oneshot sender in the pending table; then it waits on the receiver. The
//! writer task writes everything queued since its last write in one write. The connection's
//! driver task decodes every frame of each read, collects the answers and hands them out
//! under one lock; a timeout or a dropped future removes the entry itself and queues CANCEL.
//! No task is spawned per call.
//!
//! # Guarantees
//! - Every call gets exactly one outcome: a reply, an error, a timeout, connection lost
//!   or shut down. An answer for an id nobody waits for any more is dropped and counted.
//! - Ids are never 0, increase, wrap, skip ids in flight, and an id given up on is not
//!   reused while its late answer may still come.
//! - A message is queued whole or not at all: a dropped call never leaves half a frame.
//! - No input from the network can panic this crate.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod backoff;
mod codec;
mod config;
mod connection;
mod error;
mod io;
mod message;
mod pool;
pub mod proto;
mod subscription;
pub mod text;
#[cfg(feature = "tls-core")]
mod tls;
mod window;
mod wire;

pub use backoff::Backoff;
pub use codec::McpCodec;
pub use config::{
    BackoffConfig, Backpressure, ConnectionConfig, HeartbeatConfig, MetadataSource, PoolConfig,
    PushOverflow, Role, WireConfig,
};
pub use connection::{Connection, ConnectionStats};
pub use error::{
    ErrorKind, Phase, PoolExhausted, Processed, TlsFailure, TransportError, WireError,
};
pub use io::{Accept, Connect, PeerIdentity, Stream, TcpAccept, TcpConnect};
pub use message::{
    Answer, CallDeadline, Inbound, InboundRequest, InboundResponse, Meta, MetaIter, Push,
    RemoteError,
};
pub use pool::{EndpointState, Pool, PoolStats, StatsProbe, TaskProbe};
pub use proto::ConnectionStatus;
pub use subscription::{
    HEALTH_METHOD, PushStream, SUBSCRIBE_METHOD, UNSUBSCRIBE_METHOD, topic_matches,
};
pub use wire::{FrameReader, WireWriter, WriterExit, WriterStats};

#[cfg(feature = "tls-core")]
pub use error::TlsConfigError;
/// The rustls crate this transport's TLS is built on, for [`TlsClientConfig::rustls`] and
/// [`TlsReloader::replace`].
#[cfg(feature = "tls-core")]
pub use rustls;
#[cfg(feature = "tls-core")]
pub use tls::{
    ALPN_MCP, TlsAccept, TlsAcceptStats, TlsClientConfig, TlsConnect, TlsReloader, TlsServerConfig,
};

/// Re-exported so users of the transport need not depend on `mcp-codec` for the basics.
pub use mcp_codec;
