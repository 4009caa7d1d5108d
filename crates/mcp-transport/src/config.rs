//! Settings, with the defaults of docs/protocol.md section 8.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mcp_codec::DEFAULT_MAX_MESSAGE_LEN;

use crate::message::Meta;

/// Which side of a connection this process is; decides which frame types are a protocol
/// error when received (docs/protocol.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Receives RESPONSE, NOTIFY (push), ERROR, PING, PONG, GOAWAY; never REQUEST or CANCEL.
    Client,
    /// Receives REQUEST, NOTIFY (one-way), ERROR, PING, PONG, CANCEL, GOAWAY; never
    /// RESPONSE.
    Server,
}

/// Settings of the frame reader and writer of one byte stream, shared by client and server.
#[derive(Debug, Clone)]
pub struct WireConfig {
    /// The local role (which frame types are refused).
    pub role: Role,
    /// The largest reassembled message body accepted (16 MiB by default); checked before
    /// anything past it is buffered.
    pub max_message_len: usize,
    /// A write that makes no progress for this long kills the connection (2 s).
    pub write_stall_timeout: Duration,
    /// Bytes queued for writing past which new messages wait ([`crate::WireWriter::ready`]);
    /// control frames (PONG, CANCEL, ERROR, GOAWAY) are never held back (1 MiB). Against a
    /// peer that floods PINGs and reads little, the client leaves PINGs unanswered while
    /// the queue is at this limit, and the server stops reading: either way the queue stays
    /// bounded.
    pub write_queue_limit: usize,
    /// The read buffer's initial capacity; it grows to hold one frame at most (64 KiB).
    pub read_buffer: usize,
}

impl WireConfig {
    /// The defaults for `role`.
    pub fn new(role: Role) -> Self {
        WireConfig {
            role,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            write_stall_timeout: Duration::from_secs(2),
            write_queue_limit: 1024 * 1024,
            read_buffer: 64 * 1024,
        }
    }
}

/// Heartbeat settings (docs/protocol.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Silence after which a PING is sent (15 s).
    pub interval: Duration,
    /// Silence after the PING after which the connection is dead (5 s).
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a caller does when the connection is at its maximum of requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait for a place, at most until the call's deadline (the default).
    #[default]
    Wait,
    /// Fail at once with [`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded), not
    /// processed.
    Reject,
}

/// What happens to a push when a subscriber's queue is full (by count,
/// [`ConnectionConfig::push_queue`], or by bytes, [`ConnectionConfig::push_queue_bytes`]).
/// Either way the reader never waits for a subscriber, so heartbeats and responses keep
/// flowing, and the drop is counted
/// ([`PoolStats::push_dropped`](crate::PoolStats::push_dropped)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushOverflow {
    /// Drop the push that does not fit (the subscriber keeps the older ones; the default).
    #[default]
    DropNewest,
    /// Drop the oldest queued pushes, as many as it takes, to make room for the new one
    /// (the subscriber sees the latest state).
    DropOldest,
}

/// Settings of one client connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// TCP connect timeout (1 s).
    pub connect_timeout: Duration,
    /// Reader/writer settings; `role` must be [`Role::Client`].
    pub wire: WireConfig,
    /// Heartbeat interval and timeout.
    pub heartbeat: HeartbeatConfig,
    /// Requests in flight at most on this connection (256). `1` gives exclusive-checkout
    /// semantics for servers that cannot multiplex.
    pub max_in_flight: usize,
    /// What a caller does when `max_in_flight` is reached.
    pub backpressure: Backpressure,
    /// Ids given up on (timed out, dropped) whose late answer has not come, past which the
    /// connection stops taking requests and is replaced: an id is never reused while its
    /// answer may still arrive, so this bounds the memory held for them (65 536).
    pub max_abandoned_ids: usize,
    /// Queue length of each subscriber (1024 pushes).
    pub push_queue: usize,
    /// Bytes of pushes (topic, metadata and body) queued at most for each subscriber
    /// (16 MiB). With `push_queue` alone one slow subscriber could hold 1024 messages of
    /// up to `max_message_len` each (16 GiB by default); docs/protocol.md section 7 wants the
    /// memory held for a peer bounded. A push that does not fit is lost like one past
    /// `push_queue`, by `push_overflow`, and counted. A push larger than this still goes
    /// into an empty queue, so the bound is this or one message, whichever is larger.
    pub push_queue_bytes: usize,
    /// What happens when a subscriber's queue is full.
    pub push_overflow: PushOverflow,
    /// How long a `$subscribe` or `$unsubscribe` that the transport sends by itself (a
    /// [`Pool`](crate::Pool) subscribing again after a reconnect, the last subscriber of a
    /// pattern dropped) waits for its answer (5 s). Past it the id is given up like a timed
    /// out call (CANCEL sent), so that the entry does not stay in the pending table nor
    /// keep a draining connection open; a `$subscribe` given up on ends its subscribers
    /// ([`PushStream::error`](crate::PushStream::error)).
    pub subscribe_timeout: Duration,
    /// Metadata for the requests the transport sends by itself (`$subscribe`,
    /// `$unsubscribe`, and `$subscribe` again after a reconnect), asked each time one is
    /// sent: the client's credentials, so that a server authenticating every request takes
    /// subscriptions too. None by default.
    pub control_metadata: Option<MetadataSource>,
}

/// Where the metadata of the transport's own requests comes from: a function asked each
/// time one is sent (so that a refreshed token is used). Cheap to clone.
#[derive(Clone)]
pub struct MetadataSource(Arc<dyn Fn() -> Meta + Send + Sync>);

impl MetadataSource {
    /// Asks `source` for the metadata of each request the transport sends by itself.
    pub fn new(source: impl Fn() -> Meta + Send + Sync + 'static) -> Self {
        MetadataSource(Arc::new(source))
    }

    /// The metadata for the request about to be sent.
    pub(crate) fn get(&self) -> Meta {
        (self.0)()
    }
}

impl fmt::Debug for MetadataSource {
    // The metadata may be credentials: they stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetadataSource(..)")
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            connect_timeout: Duration::from_secs(1),
            wire: WireConfig::new(Role::Client),
            heartbeat: HeartbeatConfig::default(),
            max_in_flight: 256,
            backpressure: Backpressure::Wait,
            max_abandoned_ids: 65_536,
            push_queue: 1024,
            push_queue_bytes: 16 * 1024 * 1024,
            push_overflow: PushOverflow::DropNewest,
            subscribe_timeout: Duration::from_secs(5),
            control_metadata: None,
        }
    }
}

/// Reconnect backoff: exponential with full jitter (docs/protocol.md section 8).
///
/// The delay before try `n` (1-based) of a series is uniform in
/// `[0, min(max, initial * multiplier^(n-1))]`; after `max_tries` failed tries in a row the
/// error reaches the callers; a success resets the series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// The first delay's upper bound (1 s).
    pub initial: Duration,
    /// Growth factor (2).
    pub multiplier: f64,
    /// The largest delay (30 s).
    pub max: Duration,
    /// Failed tries in a row after which the endpoint is reported down (10).
    pub max_tries: u32,
    /// Full jitter (true); without it the delay is the upper bound itself.
    pub jitter: bool,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            max_tries: 10,
            jitter: true,
        }
    }
}

/// Settings of a [`Pool`](crate::Pool) of connections to one endpoint.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Settings of each connection.
    pub connection: ConnectionConfig,
    /// Connections at most (4). Connections are multiplexed, so a few suffice.
    pub max_connections: usize,
    /// Connections kept open even when idle (0: fully lazy).
    pub min_connections: usize,
    /// An idle connection above `min_connections` is closed after this long (90 s).
    pub idle_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// The call timeout used when [`CallDeadline`](crate::CallDeadline) gives none (5 s).
    pub default_timeout: Duration,
    /// Idle-reclaim and health sweep period (1 s).
    pub maintenance_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connection: ConnectionConfig::default(),
            max_connections: 4,
            min_connections: 0,
            idle_timeout: Duration::from_secs(90),
            backoff: BackoffConfig::default(),
            default_timeout: Duration::from_secs(5),
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

impl ConnectionConfig {
    /// Checks for settings that cannot work (a zero limit or timeout, which would refuse
    /// every call or declare every connection dead at once); the error names the field.
    pub fn check(&self) -> Result<(), String> {
        nonzero_duration("connect_timeout", self.connect_timeout)?;
        nonzero_duration("heartbeat.interval", self.heartbeat.interval)?;
        nonzero_duration("heartbeat.timeout", self.heartbeat.timeout)?;
        nonzero_duration("wire.write_stall_timeout", self.wire.write_stall_timeout)?;
        nonzero_duration("subscribe_timeout", self.subscribe_timeout)?;
        nonzero("wire.max_message_len", self.wire.max_message_len)?;
        nonzero("wire.write_queue_limit", self.wire.write_queue_limit)?;
        nonzero("max_in_flight", self.max_in_flight)?;
        nonzero("max_abandoned_ids", self.max_abandoned_ids)?;
        nonzero("push_queue", self.push_queue)?;
        nonzero("push_queue_bytes", self.push_queue_bytes)
    }
}

impl PoolConfig {
    /// [`ConnectionConfig::check`], and the pool's own settings: at least one connection,
    /// a warm minimum no larger than the maximum, a backoff that grows (a finite factor of
    /// at least 1, at least one try, a first delay no longer than the cap), non-zero
    /// periods.
    pub fn check(&self) -> Result<(), String> {
        self.connection.check()?;
        nonzero("max_connections", self.max_connections)?;
        if self.min_connections > self.max_connections {
            return Err(format!(
                "min_connections ({}) is above max_connections ({})",
                self.min_connections, self.max_connections
            ));
        }
        nonzero_duration("default_timeout", self.default_timeout)?;
        nonzero_duration("maintenance_interval", self.maintenance_interval)?;
        let b = &self.backoff;
        if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
            return Err(format!(
                "backoff.multiplier must be a finite number of at least 1, not {}",
                b.multiplier
            ));
        }
        if b.max_tries == 0 {
            return Err("backoff.max_tries must be at least 1".into());
        }
        if b.initial > b.max {
            return Err(format!(
                "backoff.initial ({:?}) is above backoff.max ({:?})",
                b.initial, b.max
            ));
        }
        Ok(())
    }
}

fn nonzero(field: &str, value: usize) -> Result<(), String> {
    if value == 0 {
        return Err(format!("{field} must be at least 1"));
    }
    Ok(())
}

fn nonzero_duration(field: &str, value: Duration) -> Result<(), String> {
    if value.is_zero() {
        return Err(format!("{field} must be longer than zero"));
    }
    Ok(())
}
