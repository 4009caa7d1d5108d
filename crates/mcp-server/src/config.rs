//! The server's settings.

use std::time::Duration;

use mcp_codec::DEFAULT_MAX_MESSAGE_LEN;

/// Settings of a server; every limit of docs/protocol.md section 7 is one of them.
///
/// Built with [`ServerConfig::default`] and adjusted field by field, or through the
/// [`ServerBuilder`](crate::ServerBuilder) setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The largest request or NOTIFY body accepted (16 MiB; a body of exactly this size is
    /// allowed). A larger REQUEST is answered ERROR 7 with its id; a larger NOTIFY closes
    /// the connection (ERROR id 0 code 7).
    pub max_message_len: usize,
    /// Requests whose handler runs at once on one connection (1024); past it, ERROR 5.
    pub max_in_flight: usize,
    /// Request body bytes held by the running handlers of one connection (64 MiB); past
    /// it, ERROR 5. A request arriving when nothing runs is always admitted, so any body up
    /// to `max_message_len` can be served. The bodies of client NOTIFY messages being
    /// handled have a budget of the same size (past it they are dropped and counted).
    pub max_in_flight_bytes: usize,
    /// Requests whose handler runs at once in the whole server, all connections together
    /// (65,536); past it, ERROR 5 at once (at the place of the in-flight check of
    /// docs/protocol.md section 6), never a queue. With the per-connection limits a client
    /// cannot take everything; with this, many clients together cannot either. The default
    /// is far above what the default connection count normally runs (each running request
    /// costs a task and its body), and low enough to bound that memory. A request takes its
    /// place once its handler is still running after the poll that started it (one answered
    /// in that poll never held one); on a multi-thread runtime the count can pass the limit by
    /// one request per other worker thread, admitted at the same moment.
    pub max_in_flight_total: usize,
    /// Request body bytes held by running handlers in the whole server, and by the
    /// connections for the messages they are still receiving (1 GiB); past it, ERROR 5 at
    /// once: to a complete request at admission, and to one still arriving as soon as its
    /// bytes no longer fit (its remaining frames are then skipped). As per connection, a
    /// request arriving when no body bytes are held is always admitted. On by default so that the server's memory for request bodies is
    /// bounded out of the box (the per-connection limit alone allows 64 MiB times
    /// `max_connections`); lower it to what the machine can spare.
    pub max_in_flight_bytes_total: usize,
    /// One-way NOTIFY messages from one client handled at once (1024); past it they are
    /// dropped and counted (nothing answers a NOTIFY, so there is no one to tell).
    pub max_notify_in_flight: usize,
    /// Bytes queued for one connection past which the server stops reading from it,
    /// handlers wait before answering, and published NOTIFY frames are dropped for it
    /// (1 MiB).
    pub write_queue_limit: usize,
    /// A write to a client that makes no progress for this long closes the connection
    /// (5 s). This is what finally removes a subscriber that stopped reading.
    pub write_stall_timeout: Duration,
    /// Subscriptions one connection may hold (1024); past it, `$subscribe` is answered
    /// ERROR 5.
    pub max_subscriptions: usize,
    /// Connections open at once (10,000). A client connecting past it gets GOAWAY with
    /// code 2 (overloaded) and `last_id` 0, and is closed.
    pub max_connections: usize,
    /// After this long without receiving anything from a client, the server sends PING
    /// (15 s).
    pub heartbeat_interval: Duration,
    /// If nothing at all arrives this long after that PING, the connection is closed (5 s).
    pub heartbeat_timeout: Duration,
    /// A new connection that has not completed one frame within this is closed (10 s): a
    /// client that connects and sends nothing, or a byte at a time, costs little and goes
    /// away long before its heartbeat would.
    pub first_frame_timeout: Duration,
    /// Connections open at once from one IP address; `None` (the default) for no limit. A
    /// client past it gets GOAWAY with code 2 (overloaded), as past `max_connections`.
    pub max_connections_per_ip: Option<usize>,
    /// A connection this old (give or take 10%) is sent GOAWAY code 0 and drains, so that
    /// long-lived clients move to new replicas; `None` (the default) for never.
    pub max_connection_age: Option<Duration>,
    /// How long a connection sent away for its age may take to answer what it had in
    /// flight (30 s); what is left is answered ERROR 8, as at shutdown.
    pub max_connection_age_grace: Duration,
    /// Whether a handler's first poll runs in the connection's own task (true). Most
    /// handlers then finish without a task of their own, which makes a request about a
    /// third cheaper (BENCHMARKS.md); only one that waits is spawned. The cost: whatever a
    /// handler does before its first `.await` that waits holds up the other requests of
    /// that connection. Set false to give every request its own task from the start (for
    /// handlers that compute for long before they first wait, where `spawn_blocking` is not
    /// an option).
    pub run_handlers_inline: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_in_flight: 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_in_flight_total: 64 * 1024,
            max_in_flight_bytes_total: 1024 * 1024 * 1024,
            max_notify_in_flight: 1024,
            write_queue_limit: 1024 * 1024,
            write_stall_timeout: Duration::from_secs(5),
            max_subscriptions: 1024,
            max_connections: 10_000,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(5),
            first_frame_timeout: Duration::from_secs(10),
            max_connections_per_ip: None,
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            run_handlers_inline: true,
        }
    }
}

impl ServerConfig {
    /// Checks for settings that cannot work: a zero size, queue or in-flight limit (every
    /// request refused), a zero connection limit (every client turned away), a zero
    /// timeout (every connection declared dead at once). `max_subscriptions` and
    /// `max_notify_in_flight` may be 0: that turns subscriptions or one-way messages off.
    /// The error names the field.
    pub fn check(&self) -> Result<(), String> {
        let counts = [
            ("max_message_len", self.max_message_len),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
            ("max_in_flight_total", self.max_in_flight_total),
            ("max_in_flight_bytes_total", self.max_in_flight_bytes_total),
            ("write_queue_limit", self.write_queue_limit),
            ("max_connections", self.max_connections),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{field} must be at least 1"));
        }
        if self.max_connection_age.is_some_and(|age| age.is_zero()) {
            return Err("max_connection_age must be longer than zero (None turns it off)".into());
        }
        if self.max_connections_per_ip == Some(0) {
            return Err("max_connections_per_ip must be at least 1 (None turns it off)".into());
        }
        let durations = [
            ("write_stall_timeout", self.write_stall_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("first_frame_timeout", self.first_frame_timeout),
        ];
        if let Some((field, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{field} must be longer than zero"));
        }
        Ok(())
    }
}
