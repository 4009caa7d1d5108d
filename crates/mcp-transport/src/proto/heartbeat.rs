//! The heartbeat, one state machine for both roles (docs/protocol.md section 7): after
//! `interval` without receiving anything, send PING; if nothing at all arrives within
//! `timeout` after that, the connection is dead. No clock: the caller passes `now`.

use std::time::{Duration, Instant};

/// What the connection must do when the heartbeat's deadline is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing yet (the deadline moved because something arrived).
    Wait,
    /// Send a PING with these bytes.
    Ping([u8; 8]),
    /// Nothing arrived within the timeout after the PING: close the connection.
    Dead,
}

/// The heartbeat of one connection.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_received: Instant,
    ping_sent: Option<Instant>,
    pings: u64,
}

impl Heartbeat {
    /// A heartbeat whose silence counts from `now`.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Heartbeat {
            interval,
            timeout,
            last_received: now,
            ping_sent: None,
            pings: 0,
        }
    }

    /// Something arrived from the peer (any complete frame): it is alive.
    pub fn received(&mut self, now: Instant) {
        self.last_received = now;
        self.ping_sent = None;
    }

    /// When [`Heartbeat::poll`] has something to do.
    pub fn deadline(&self) -> Instant {
        match self.ping_sent {
            None => self.last_received + self.interval,
            Some(sent) => sent + self.timeout,
        }
    }

    /// PINGs sent so far.
    pub fn pings(&self) -> u64 {
        self.pings
    }

    /// Advances to `now`.
    ///
    /// The PING's timeout counts from when the PING was due, not from `now`, so that a
    /// driver that got to run late still declares the peer dead within interval + timeout
    /// of its last frame.
    pub fn poll(&mut self, now: Instant) -> Beat {
        if now < self.deadline() {
            return Beat::Wait;
        }
        if self.ping_sent.is_some() {
            return Beat::Dead;
        }
        self.ping_sent = Some(self.last_received + self.interval);
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
        assert_eq!(hb.pings(), 2);
    }

    #[test]
    fn a_late_poll_still_counts_the_timeout_from_when_the_ping_was_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(s(15), s(5), t0);
        // The driver ran 3 s late: the PING goes now, but death still comes at 20 s.
        assert_eq!(hb.poll(t0 + s(18)), Beat::Ping(1u64.to_be_bytes()));
        assert_eq!(hb.deadline(), t0 + s(20));
        assert_eq!(hb.poll(t0 + s(20)), Beat::Dead);
    }
}
