//! The server's protocol core (`mcp_transport::proto::ServerCore`) driven the way
//! `mcp-server`'s connection task drives it, by a sequence of operations the fuzzer
//! chooses: REQUEST heads to admit (started or answered at once when run), requests the
//! codec refused, handlers finishing (with their generation, a stale one or a made-up
//! one), CANCEL, GOAWAY either way, the grace period's end, and virtual time for the
//! heartbeat.
//!
//! A model beside the core, written from docs/protocol.md (sections 6 and 7) rather than
//! from the core, checks after every operation:
//! - each verdict is the one the contract's order of checks gives: a duplicate of a running
//!   id closes; after a GOAWAY either way, 6; past the in-flight limits, 5; a reserved
//!   format, 3 (not for `$subscribe`/`$unsubscribe`/`$health`); a deadline passed when the work would
//!   start, 4; an unknown method, 2;
//! - a handler's answer is sent (`finish` true) at most once per started generation, never
//!   after its request was cancelled or taken, never for another generation;
//! - `in_flight()` is the number of running requests, never past `max_in_flight`; the
//!   body bytes held never past `max_in_flight_bytes` unless one request runs alone;
//! - GOAWAY's `last_id` is the last request taken before it, and is sent once; `drained()`
//!   exactly when draining with nothing running, and `life()` agrees;
//! - the heartbeat: a PING after `interval` of silence, nonces counting up from 1, death
//!   only after a PING left unanswered, no earlier than `interval + timeout` after the last
//!   frame, and `handle_timeout` does something exactly when `poll_timeout` has come.
//!
//! Input: `arbitrary` bytes read as [`Input`].
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_codec::{Envelope, ErrorCode, GoAwayCode, OwnedEnvelope};
use mcp_transport::WireError;
use mcp_transport::proto::{Beat, Life, RequestHead, RequestLimits, ServerCore, Transmit, Verdict};

/// Keeps what the core sends.
#[derive(Default)]
struct Sent(Vec<OwnedEnvelope>);

impl Transmit for Sent {
    fn send(&mut self, envelope: Envelope<'_>) -> Result<u64, WireError> {
        self.0.push(OwnedEnvelope::from_envelope(&envelope));
        Ok(self.0.len() as u64)
    }

    fn is_full(&self) -> bool {
        false
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// `max_in_flight` is 1 + this % 8.
    max_in_flight: u8,
    max_in_flight_bytes: u16,
    /// The heartbeat's interval is 1 + this.
    interval_ms: u16,
    timeout_ms: u16,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// A complete REQUEST. When it may run, the handler is started (`start`) or finished at
    /// once without being recorded, as `mcp-server` does with a handler ready on its first
    /// poll.
    Request {
        id: IdPick,
        format: u8,
        method: Method,
        routed: bool,
        deadline_ms: Option<u32>,
        body_len: u16,
        /// Its head arrived this long before now.
        waited_ms: u16,
        start: bool,
    },
    /// A REQUEST the codec refused, malformed (1) or too large (7).
    Refused {
        id: IdPick,
        too_large: bool,
    },
    /// A handler finishes: the `n`th started, with its generation or another.
    Finish {
        n: u8,
        generation: Generation,
    },
    Cancel {
        id: IdPick,
    },
    SendGoaway,
    PeerGoaway,
    /// The shutdown grace is over (or the connection closes): everything running is taken.
    TakeAll,
    /// A frame arrives after `ms` of silence.
    Received {
        ms: u16,
    },
    /// The heartbeat's timer fires after `ms` (0: when it is due).
    Timeout {
        ms: u16,
    },
}

#[derive(Debug, Arbitrary)]
enum IdPick {
    /// One of the running requests, if any.
    Running(u8),
    /// One of the ids seen.
    Seen(u8),
    Any(u32),
}

#[derive(Debug, Arbitrary)]
enum Method {
    App,
    Subscribe,
    Unsubscribe,
    Unknown,
    Health,
}

#[derive(Debug, Arbitrary)]
enum Generation {
    Its,
    Other(u8),
    Any(u64),
}

/// What the model expects of `admit`/`refuse`, with the codes (messages are free).
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Run(Option<Instant>),
    Subscribe,
    Unsubscribe,
    Health,
    Answer(ErrorCode),
    Close(ErrorCode),
}

fn seen(verdict: &Verdict) -> Expect {
    match *verdict {
        Verdict::Run { deadline } => Expect::Run(deadline),
        Verdict::Subscribe => Expect::Subscribe,
        Verdict::Unsubscribe => Expect::Unsubscribe,
        Verdict::Health => Expect::Health,
        Verdict::Answer(code, _) => Expect::Answer(code),
        Verdict::Close(code, _) => Expect::Close(code),
    }
}

struct Harness {
    now: Instant,
    core: ServerCore<u64>,
    limits: RequestLimits,
    interval: Duration,
    timeout: Duration,
    /// Running requests: id -> (generation, body length, handle).
    running: BTreeMap<u32, (u64, usize, u64)>,
    /// Every start: (id, generation).
    started: Vec<(u32, u64)>,
    /// Generations whose answer was sent.
    answered: BTreeSet<u64>,
    /// Generations cancelled or taken: their answer must never be sent.
    stopped: BTreeSet<u64>,
    seen_ids: Vec<u32>,
    last_id: u32,
    goaway_sent: bool,
    peer_goaway: bool,
    last_generation: u64,
    next_handle: u64,
    /// The heartbeat, as section 7 words it.
    last_received: Instant,
    ping_due: Option<Instant>,
    pings: u64,
    dead: bool,
}

impl Harness {
    fn new(input: &Input) -> Harness {
        // Far enough from the clock's origin that heads may have arrived "before" it.
        let now = Instant::now() + Duration::from_secs(3600);
        let limits = RequestLimits {
            max_in_flight: 1 + usize::from(input.max_in_flight % 8),
            max_in_flight_bytes: input.max_in_flight_bytes.into(),
        };
        let interval = Duration::from_millis(1 + u64::from(input.interval_ms));
        let timeout = Duration::from_millis(input.timeout_ms.into());
        Harness {
            now,
            core: ServerCore::new(limits, (interval, timeout), now),
            limits,
            interval,
            timeout,
            running: BTreeMap::new(),
            started: Vec::new(),
            answered: BTreeSet::new(),
            stopped: BTreeSet::new(),
            seen_ids: Vec::new(),
            last_id: 0,
            goaway_sent: false,
            peer_goaway: false,
            last_generation: 0,
            next_handle: 0,
            last_received: now,
            ping_due: None,
            pings: 0,
            dead: false,
        }
    }

    fn draining(&self) -> bool {
        self.goaway_sent || self.peer_goaway
    }

    fn bytes(&self) -> usize {
        self.running.values().map(|&(_, len, _)| len).sum()
    }

    fn pick(&self, pick: &IdPick) -> u32 {
        match *pick {
            IdPick::Running(n) if !self.running.is_empty() => *self
                .running
                .keys()
                .nth(usize::from(n) % self.running.len())
                .unwrap(),
            IdPick::Running(n) | IdPick::Seen(n) if !self.seen_ids.is_empty() => {
                self.seen_ids[usize::from(n) % self.seen_ids.len()]
            }
            IdPick::Running(n) | IdPick::Seen(n) => u32::from(n),
            IdPick::Any(id) => id,
        }
    }

    /// The checks on the id alone (shared by `admit` and `refuse`): `None` to go on.
    fn expect_id(&mut self, id: u32) -> Option<Expect> {
        if self.running.contains_key(&id) {
            return Some(Expect::Close(ErrorCode::MALFORMED));
        }
        if self.draining() {
            return Some(Expect::Answer(ErrorCode::UNAVAILABLE));
        }
        // Taken while requests are accepted: GOAWAY's `last_id` from now on.
        self.last_id = id;
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn expect_admit(
        &mut self,
        id: u32,
        format: u8,
        method: &str,
        routed: bool,
        deadline_ms: Option<u32>,
        body_len: usize,
        arrived: Instant,
    ) -> Expect {
        if let Some(expect) = self.expect_id(id) {
            return expect;
        }
        if self.running.len() >= self.limits.max_in_flight {
            return Expect::Answer(ErrorCode::OVERLOADED);
        }
        // The memory held for the peer: a single request is taken whatever its size.
        if routed
            && !self.running.is_empty()
            && self.bytes() + body_len > self.limits.max_in_flight_bytes
        {
            return Expect::Answer(ErrorCode::OVERLOADED);
        }
        let builtin = !routed && matches!(method, "$subscribe" | "$unsubscribe" | "$health");
        if !builtin && (3..=127).contains(&format) {
            return Expect::Answer(ErrorCode::UNSUPPORTED_FORMAT);
        }
        let deadline = deadline_ms.map(|ms| arrived + Duration::from_millis(ms.into()));
        if deadline.is_some_and(|d| d <= self.now) {
            return Expect::Answer(ErrorCode::DEADLINE_EXCEEDED);
        }
        match method {
            _ if routed => Expect::Run(deadline),
            "$subscribe" => Expect::Subscribe,
            "$unsubscribe" => Expect::Unsubscribe,
            "$health" => Expect::Health,
            _ => Expect::Answer(ErrorCode::UNKNOWN_METHOD),
        }
    }

    fn start(&mut self, id: u32, body_len: usize) {
        let generation = self.core.next_generation();
        assert!(generation > self.last_generation, "a generation used again");
        self.last_generation = generation;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.core.start(id, body_len, generation, handle);
        self.running.insert(id, (generation, body_len, handle));
        self.started.push((id, generation));
    }

    fn op(&mut self, op: &Op) {
        match *op {
            Op::Request {
                ref id,
                format,
                ref method,
                routed,
                deadline_ms,
                body_len,
                waited_ms,
                start,
            } => {
                let id = self.pick(id);
                let method = match method {
                    Method::App => "echo",
                    Method::Subscribe => "$subscribe",
                    Method::Unsubscribe => "$unsubscribe",
                    Method::Unknown => "nope",
                    Method::Health => "$health",
                };
                let body_len = usize::from(body_len);
                let arrived = self.now - Duration::from_millis(waited_ms.into());
                let head = RequestHead {
                    id,
                    format,
                    method,
                    routed,
                    deadline_ms,
                    body_len,
                    arrived,
                };
                let verdict = self.core.admit(&head, self.now);
                let expect =
                    self.expect_admit(id, format, method, routed, deadline_ms, body_len, arrived);
                assert_eq!(seen(&verdict), expect, "the verdict for {head:?}");
                self.seen_ids.push(id);
                if matches!(verdict, Verdict::Run { .. }) && start {
                    self.start(id, body_len);
                }
            }
            Op::Refused { ref id, too_large } => {
                let id = self.pick(id);
                let code = if too_large {
                    ErrorCode::TOO_LARGE
                } else {
                    ErrorCode::MALFORMED
                };
                let verdict = self.core.refuse(id, code, "refused by the codec");
                let expect = self.expect_id(id).unwrap_or(Expect::Answer(code));
                assert_eq!(seen(&verdict), expect, "the verdict for refused {id}");
                self.seen_ids.push(id);
            }
            Op::Finish { n, ref generation } => {
                if self.started.is_empty() {
                    return;
                }
                let (id, its) = self.started[usize::from(n) % self.started.len()];
                let generation = match *generation {
                    Generation::Its => its,
                    Generation::Other(k) => {
                        self.started[(usize::from(n) + usize::from(k)) % self.started.len()].1
                    }
                    Generation::Any(g) => g,
                };
                let sent = self.core.finish(id, generation);
                let expect = self
                    .running
                    .get(&id)
                    .is_some_and(|&(g, _, _)| g == generation);
                assert_eq!(sent, expect, "finish({id}, {generation})");
                if sent {
                    assert!(
                        self.answered.insert(generation),
                        "generation {generation} answered twice"
                    );
                    assert!(
                        !self.stopped.contains(&generation),
                        "a stopped request answered"
                    );
                    self.running.remove(&id);
                }
            }
            Op::Cancel { ref id } => {
                let id = self.pick(id);
                let handle = self.core.cancel(id);
                match self.running.remove(&id) {
                    Some((generation, _, expected)) => {
                        assert_eq!(handle, Some(expected), "the cancelled request's handle");
                        self.stopped.insert(generation);
                    }
                    None => assert_eq!(handle, None, "CANCEL of {id}, not running"),
                }
            }
            Op::SendGoaway => {
                let mut out = Sent::default();
                let sent = self
                    .core
                    .go_away(&mut out, GoAwayCode::SHUTTING_DOWN, "fuzz");
                assert_eq!(sent, !self.goaway_sent, "GOAWAY sent once");
                let expect: Vec<OwnedEnvelope> = if sent {
                    vec![OwnedEnvelope::GoAway {
                        last_id: self.last_id,
                        code: GoAwayCode::SHUTTING_DOWN,
                        reason: "fuzz".into(),
                    }]
                } else {
                    Vec::new()
                };
                assert_eq!(out.0, expect, "GOAWAY's last_id");
                self.goaway_sent = true;
            }
            Op::PeerGoaway => {
                self.core.peer_goaway();
                self.peer_goaway = true;
            }
            Op::TakeAll => {
                let mut taken = self.core.take_all();
                taken.sort_unstable();
                let expected: Vec<(u32, u64)> = self
                    .running
                    .iter()
                    .map(|(&id, &(_, _, handle))| (id, handle))
                    .collect();
                assert_eq!(taken, expected, "take_all");
                for (_, (generation, _, _)) in std::mem::take(&mut self.running) {
                    self.stopped.insert(generation);
                }
            }
            Op::Received { ms } => {
                self.now += Duration::from_millis(ms.into());
                self.core.received(self.now);
                self.last_received = self.now;
                self.ping_due = None;
                assert_eq!(self.core.poll_timeout(), self.now + self.interval);
            }
            Op::Timeout { ms } => {
                if ms == 0 {
                    self.now = self.now.max(self.core.poll_timeout());
                } else {
                    self.now += Duration::from_millis(ms.into());
                }
                self.timeout();
            }
        }
    }

    fn timeout(&mut self) {
        let due = self.core.poll_timeout() <= self.now;
        let beat = self.core.handle_timeout(self.now);
        assert_eq!(beat != Beat::Wait, due, "{beat:?} at poll_timeout {due}");
        let silence = self.now - self.last_received;
        match beat {
            Beat::Wait => {}
            Beat::Ping(nonce) => {
                assert!(self.ping_due.is_none(), "a second PING without an answer");
                assert!(silence >= self.interval, "a PING before the interval");
                self.pings += 1;
                assert_eq!(nonce, self.pings.to_be_bytes(), "PING nonces count up");
                // Its timeout counts from when it was due, not from when it went.
                let ping_due = self.last_received + self.interval;
                self.ping_due = Some(ping_due);
                assert_eq!(self.core.poll_timeout(), ping_due + self.timeout);
            }
            Beat::Dead => {
                assert!(self.ping_due.is_some(), "dead without a PING");
                assert!(silence >= self.interval + self.timeout, "dead too early");
                // The connection closes: what runs is stopped.
                self.dead = true;
                let taken = self.core.take_all();
                assert_eq!(taken.len(), self.running.len());
                for (_, (generation, _, _)) in std::mem::take(&mut self.running) {
                    self.stopped.insert(generation);
                }
            }
        }
    }

    fn check(&self) {
        let in_flight = self.core.in_flight();
        assert_eq!(in_flight, self.running.len(), "in_flight");
        assert!(in_flight <= self.limits.max_in_flight, "past max_in_flight");
        // Only a request running alone may hold more than the byte budget.
        if in_flight > 1 {
            assert!(
                self.bytes() <= self.limits.max_in_flight_bytes,
                "past max_in_flight_bytes"
            );
        }
        let drained = self.draining() && self.running.is_empty();
        assert_eq!(self.core.drained(), drained, "drained");
        let life = match (drained, self.draining()) {
            (true, _) => Life::Closed,
            (false, true) => Life::Draining,
            (false, false) => Life::Open,
        };
        assert_eq!(self.core.life(), life);
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input);
    for op in &input.ops {
        h.op(op);
        h.check();
        if h.dead {
            break;
        }
    }
});
