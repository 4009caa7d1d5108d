//! The heartbeat towards a silent client, as a clock-free state machine (PROTOCOL.md
//! section 6): after `interval` without receiving anything, send PING; if nothing at all
//! arrives within `timeout` after that, the connection is dead.

use std::time::Duration;

use tokio::time::Instant;

/// What the connection must do when the heartbeat's deadline is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Nothing yet (the deadline moved because something arrived).
    Wait,
    /// Send a PING with these bytes.
    Ping([u8; 8]),
    /// Nothing arrived within the timeout after the PING: close the connection.
    Dead,
}

#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_received: Instant,
    ping_sent: Option<Instant>,
    pings: u64,
}

impl Heartbeat {
    pub(crate) fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Heartbeat {
            interval,
            timeout,
            last_received: now,
            ping_sent: None,
            pings: 0,
        }
    }

    /// Something arrived from the peer: it is alive.
    pub(crate) fn received(&mut self, now: Instant) {
        self.last_received = now;
        self.ping_sent = None;
    }

    /// When [`Heartbeat::poll`] has something to do.
    pub(crate) fn deadline(&self) -> Instant {
        match self.ping_sent {
            None => self.last_received + self.interval,
            Some(sent) => sent + self.timeout,
        }
    }

    /// Advances to `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Beat {
        if now < self.deadline() {
            return Beat::Wait;
        }
        if self.ping_sent.is_some() {
            return Beat::Dead;
        }
        self.ping_sent = Some(now);
        self.pings += 1;
        // The nonce only needs to differ between PINGs of one connection; the counter
        // also tells a packet capture how many heartbeats were sent.
        Beat::Ping(self.pings.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_then_dead_unless_something_arrives() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(s(15), s(5), t0);
        assert_eq!(hb.deadline(), t0 + s(15));
        assert_eq!(hb.poll(t0 + s(14)), Beat::Wait);
        hb.received(t0 + s(10));
        assert_eq!(hb.poll(t0 + s(15)), Beat::Wait);
        assert_eq!(hb.deadline(), t0 + s(25));
        assert_eq!(hb.poll(t0 + s(25)), Beat::Ping(1u64.to_be_bytes()));
        assert_eq!(hb.deadline(), t0 + s(30));
        assert_eq!(hb.poll(t0 + s(29)), Beat::Wait);
        // An answer (or anything) resets the cycle.
        hb.received(t0 + s(26));
        assert_eq!(hb.deadline(), t0 + s(41));
        assert_eq!(hb.poll(t0 + s(41)), Beat::Ping(2u64.to_be_bytes()));
        assert_eq!(hb.poll(t0 + s(46)), Beat::Dead);
    }
}
