//! The connection's protocol core, without I/O: one state machine per role, quinn-proto's
//! shape. Time is passed in (`now`), frames are pushed in (`handle_*`), frames to send go
//! out through a [`Transmit`] the driver supplies, and what callers must learn comes out as
//! events. No sockets, no tasks, no clock reads, no tokio.
//!
//! - [`ClientCore`]: ids, the pending table with deadlines, CANCEL, late answers, GOAWAY
//!   and its `last_id` rule, ERROR id 0 and ERROR 6, `$subscribe` sent again after a
//!   reconnect, the heartbeat.
//! - [`ServerCore`]: admission of each REQUEST, the in-flight table with generations,
//!   GOAWAY and draining, the heartbeat.
//! - [`Heartbeat`]: the one heartbeat both cores run.
//! - [`SharedBudget`]: requests and request bytes in flight in a whole server, shared by
//!   its connections' cores.
//!
//! The tokio drivers (the client's `Connection`, `mcp-server`'s connection task) read bytes
//! into the decoder, hand what it decodes to the core, write what the core sends, sleep
//! until its `poll_timeout`, and hand its events to callers.

mod budget;
pub(crate) mod client;
mod heartbeat;
mod server;
#[cfg(test)]
mod tests;

use mcp_codec::Envelope;

use crate::error::WireError;

pub use budget::{Exhausted, Held, PartialHold, SharedBudget};
pub use client::{
    ClientCore, ClientCounters, ClientSettings, ConnectionStatus, Event, Resubscribe,
};
pub use heartbeat::{Beat, Heartbeat};
pub use server::{RequestHead, RequestLimits, ServerCore, ServerEvent, Verdict};

/// Where a core's frames go: the driver's write queue, or a buffer in tests.
pub trait Transmit {
    /// Queues one whole message (split into CONTINUATION frames if large), or nothing;
    /// answers the stream offset just past it (bytes ever queued, this one included), so
    /// that a core can tell later whether the message was ever handed to the stream whole.
    fn send(&mut self, envelope: Envelope<'_>) -> Result<u64, WireError>;
    /// Whether the queue is at its limit (a PING is then left unanswered).
    fn is_full(&self) -> bool;
}

impl Transmit for &crate::wire::WireWriter {
    fn send(&mut self, envelope: Envelope<'_>) -> Result<u64, WireError> {
        crate::wire::WireWriter::send_marked(self, envelope)
    }

    fn is_full(&self) -> bool {
        crate::wire::WireWriter::is_full(self)
    }
}

/// Where a connection is in its life, the same three stages for both roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Taking requests.
    Open,
    /// Taking no new requests (GOAWAY either way); closes when what is in flight is
    /// answered.
    Draining,
    /// Closed.
    Closed,
}
