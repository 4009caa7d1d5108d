//! Two cores, a client and a server, exchanging bytes in memory in virtual time (quinn's
//! `Pair::drive` is the model). No sockets, no tasks, no sleeps: every scenario runs in
//! microseconds and the same way every time. The harness is the glue a driver would be:
//! it encodes what a core sends into bytes, decodes the peer's bytes with the real codec,
//! and plays the server's handlers (answer at once, or hold until told).
//!
//! Every scenario checks the invariant the cores exist for: every caller gets exactly one
//! outcome.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mcp_codec::{Envelope, ErrorCode, ErrorFrame, Flags, GoAwayCode, Metadata, Response};
use tokio_util::codec::{Decoder, Encoder};

use super::client::ClientSettings;
use super::*;
use crate::codec::McpCodec;
use crate::config::Role;
use crate::error::{ErrorKind, TransportError, WireError};
use crate::message::{Answer, Inbound, Meta};

/// One direction of the wire: encoded bytes in flight.
struct Wire {
    bytes: BytesMut,
    codec: McpCodec,
    /// Past this many bytes queued, `is_full` says so.
    limit: usize,
    /// Bytes ever queued.
    total: u64,
}

impl Wire {
    fn new(role: Role) -> Self {
        Wire {
            bytes: BytesMut::new(),
            codec: McpCodec::new(role),
            limit: usize::MAX,
            total: 0,
        }
    }
}

impl Transmit for Wire {
    fn send(&mut self, envelope: Envelope<'_>) -> Result<u64, WireError> {
        let before = self.bytes.len();
        self.codec.encode(envelope, &mut self.bytes)?;
        self.total += (self.bytes.len() - before) as u64;
        Ok(self.total)
    }

    fn is_full(&self) -> bool {
        self.bytes.len() >= self.limit
    }
}

/// What the server's handlers do with a request that is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handlers {
    /// Answer it at once with its body.
    Echo,
    /// Keep it until the test answers it.
    Hold,
}

type Outcome = Result<Answer, TransportError>;

struct Pair {
    now: Instant,
    client: ClientCore<u64>,
    /// Client to server.
    up: Wire,
    up_decoder: McpCodec,
    server: ServerCore<()>,
    /// Server to client.
    down: Wire,
    down_decoder: McpCodec,
    handlers: Handlers,
    /// Requests the server holds: id, generation, body.
    held: VecDeque<(u32, u64, Vec<u8>)>,
    next_call: u64,
    outcomes: BTreeMap<u64, Outcome>,
    statuses: Vec<ConnectionStatus>,
    client_dead: Option<TransportError>,
    server_closed: bool,
    /// Frames the server decoded, by kind, for assertions.
    server_saw: Vec<&'static str>,
    /// The ids of the CANCEL frames the server decoded, in order.
    server_cancels: Vec<u32>,
}

fn settings() -> ClientSettings {
    ClientSettings {
        max_abandoned_ids: 1000,
        subscribe_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_secs(15),
        heartbeat_timeout: Duration::from_secs(5),
    }
}

impl Pair {
    fn new(handlers: Handlers) -> Pair {
        let now = Instant::now();
        Pair {
            now,
            client: ClientCore::new(settings(), now),
            up: Wire::new(Role::Client),
            up_decoder: McpCodec::new(Role::Server),
            server: ServerCore::new(
                RequestLimits {
                    max_in_flight: 1024,
                    max_in_flight_bytes: 1 << 20,
                },
                (Duration::from_secs(15), Duration::from_secs(5)),
                now,
            ),
            down: Wire::new(Role::Server),
            down_decoder: McpCodec::new(Role::Client),
            handlers,
            held: VecDeque::new(),
            next_call: 0,
            outcomes: BTreeMap::new(),
            statuses: Vec::new(),
            client_dead: None,
            server_closed: false,
            server_saw: Vec::new(),
            server_cancels: Vec::new(),
        }
    }

    /// Starts a call; returns its number. `timeout`: its deadline from now.
    fn call(&mut self, body: &[u8], timeout: Option<Duration>) -> u64 {
        let call = self.next_call;
        self.next_call += 1;
        let deadline = timeout.map(|t| self.now + t);
        match self.client.send_request(
            &mut self.up,
            "echo",
            mcp_codec::format::RAW,
            &Meta::new(),
            body,
            deadline,
            call,
        ) {
            Ok(_) => {}
            Err((waiter, err)) => self.record(waiter, Err(err)),
        }
        self.collect();
        call
    }

    fn record(&mut self, call: u64, outcome: Outcome) {
        let previous = self.outcomes.insert(call, outcome);
        assert!(previous.is_none(), "call {call} got a second outcome");
    }

    /// Takes the client core's events.
    fn collect(&mut self) {
        let mut events = Vec::new();
        self.client.take_events(&mut events);
        for event in events {
            match event {
                Event::Done(call, outcome) => self.record(call, outcome),
                Event::Status(status) => self.statuses.push(status),
                Event::Push(_) | Event::ResubscribeFailed(..) => {}
            }
        }
    }

    /// Delivers every byte the client sent to the server, which handles each message.
    fn deliver_up(&mut self) {
        if self.server_closed {
            self.up.bytes.clear();
            return;
        }
        loop {
            let message = match self.up_decoder.decode(&mut self.up.bytes) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(err) => panic!("the client sent bytes the server cannot read: {err}"),
            };
            self.server.received(self.now);
            self.serve(message);
        }
    }

    /// The server's connection task, as `mcp-server` drives it, with scripted handlers.
    fn serve(&mut self, message: Inbound) {
        let name = match &message {
            Inbound::Request(_) => "REQUEST",
            Inbound::Cancel(_) => "CANCEL",
            Inbound::Ping(_) => "PING",
            Inbound::GoAway { .. } => "GOAWAY",
            _ => "OTHER",
        };
        self.server_saw.push(name);
        if let Inbound::Cancel(id) = &message {
            self.server_cancels.push(*id);
        }
        let event =
            self.server
                .handle_inbound(&mut self.down, message, self.now, self.now, |method| {
                    (method == "echo").then_some(())
                });
        match event {
            Some(ServerEvent::Run { request, .. }) if self.handlers == Handlers::Echo => {
                self.respond(request.id(), request.body());
            }
            Some(ServerEvent::Run { request, .. }) => {
                let generation = self.server.next_generation();
                let id = request.id();
                self.server.start(id, request.body().len(), generation, ());
                self.held
                    .push_back((id, generation, request.body().to_vec()));
            }
            Some(ServerEvent::Subscribe(request) | ServerEvent::Unsubscribe(request)) => {
                self.respond(request.id(), b"");
            }
            Some(ServerEvent::Health(request)) => self.respond(request.id(), b"SERVING"),
            Some(ServerEvent::Protocol(code, message)) => {
                self.server_error(0, code, &message);
                self.server_closed = true;
            }
            Some(ServerEvent::PeerClosed) => self.server_closed = true,
            _ => {}
        }
    }

    fn respond(&mut self, id: u32, body: &[u8]) {
        let response = Response {
            id,
            flags: Flags::NONE,
            format: mcp_codec::format::RAW,
            meta: Metadata::EMPTY,
            body,
        };
        self.down.send(Envelope::Response(response)).unwrap();
    }

    fn server_error(&mut self, id: u32, code: ErrorCode, message: &str) {
        let error = ErrorFrame { id, code, message };
        self.down.send(Envelope::Error(error)).unwrap();
    }

    /// The server's held handlers finish, in order; only answers still wanted are sent.
    fn finish_held(&mut self) {
        while let Some((id, generation, body)) = self.held.pop_front() {
            if self.server.finish(id, generation) {
                self.respond(id, &body);
            }
        }
    }

    /// Delivers every byte the server sent to the client core.
    fn deliver_down(&mut self) {
        if self.client_dead.is_some() {
            self.down.bytes.clear();
            return;
        }
        let mut read_any = false;
        loop {
            let message = match self.down_decoder.decode(&mut self.down.bytes) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(err) => panic!("the server sent bytes the client cannot read: {err}"),
            };
            read_any = true;
            if let Err(reason) = self.client.handle_inbound(&mut self.up, message, self.now) {
                self.die(reason);
                break;
            }
        }
        if read_any {
            self.client.handle_read_done(self.now);
        }
        self.collect();
        if self.client.take_wake() {
            if let Some((reason, _)) = self.client.poll_close() {
                self.die(reason);
            }
        }
    }

    fn die(&mut self, reason: TransportError) {
        self.client.finish(&reason, self.now, None);
        self.client_dead = Some(reason);
        self.collect();
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn drive(&mut self) {
        for _ in 0..100 {
            if self.up.bytes.is_empty() && self.down.bytes.is_empty() {
                return;
            }
            self.deliver_up();
            self.deliver_down();
        }
        panic!("the peers kept talking for 100 rounds");
    }

    /// Advances virtual time by `by`, firing each core's timers on the way in steps no
    /// longer than their next timeout.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end && self.client_dead.is_none() {
            let next = self.client.poll_timeout().min(end);
            self.now = next.max(self.now);
            if let Err(reason) = self.client.handle_timeout(&mut self.up, self.now) {
                self.die(reason);
            }
            self.collect();
            if self.now >= self.server.poll_timeout() {
                if let Beat::Ping(nonce) = self.server.handle_timeout(self.now) {
                    self.down
                        .send(Envelope::Ping(mcp_codec::Ping { nonce }))
                        .unwrap();
                }
            }
            if self.client.poll_timeout() <= self.now {
                // Nothing moved the timer (the heartbeat was answered): step to the end.
                self.now = end;
            }
        }
        self.now = self.now.max(end);
    }

    fn outcome(&self, call: u64) -> &Outcome {
        self.outcomes
            .get(&call)
            .unwrap_or_else(|| panic!("call {call} has no outcome"))
    }

    fn body(&self, call: u64) -> Vec<u8> {
        match self.outcome(call) {
            Ok(Answer::Response(r)) => r.body().to_vec(),
            other => panic!("call {call}: {other:?}"),
        }
    }

    /// Every call made has exactly one outcome (a second one panics in `record`).
    fn all_answered(&self) {
        assert_eq!(
            self.outcomes.len() as u64,
            self.next_call,
            "calls without an outcome"
        );
    }
}

#[test]
fn calls_are_answered_once_each_in_any_order() {
    let mut pair = Pair::new(Handlers::Hold);
    let calls: Vec<u64> = (0..5u8).map(|i| pair.call(&[i], None)).collect();
    pair.drive();
    assert_eq!(pair.server.in_flight(), 5);
    // The server answers in reverse order.
    pair.held.make_contiguous().reverse();
    pair.finish_held();
    pair.drive();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(pair.body(call), vec![i as u8]);
    }
    pair.all_answered();
    assert_eq!(pair.client.in_flight(), 0);
}

#[test]
fn a_deadline_cancels_the_request_and_its_late_answer_is_dropped_and_counted() {
    let mut pair = Pair::new(Handlers::Hold);
    let call = pair.call(b"slow", Some(Duration::from_millis(100)));
    pair.drive();
    // The server's handler finishes just as the client gives up: the answer and the
    // CANCEL cross on the wire.
    pair.advance(Duration::from_millis(100));
    let err = pair.outcome(call).as_ref().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.phase(), crate::Phase::Response);
    assert_eq!(err.processed(), crate::Processed::Maybe);
    assert_eq!(pair.client.abandoned(), 1);
    let (cancelled, _, _) = pair.held[0];
    // While its late answer may come, the id is not handed out again, even when the id
    // search comes round to it.
    pair.client.set_next_id(cancelled);
    let next = pair.call(b"next", None);
    pair.finish_held();
    pair.drive();
    assert_eq!(pair.server_saw, ["REQUEST", "CANCEL", "REQUEST"]);
    let (next_id, _, _) = pair.held[0];
    assert_ne!(next_id, cancelled, "an abandoned id is skipped");
    pair.finish_held();
    pair.drive();
    let counters = pair.client.counters();
    assert_eq!((counters.cancels_sent, counters.late_answers), (1, 1));
    assert_eq!(counters.unknown_answers, 0);
    // The late answer went nowhere: the next call got its own.
    assert_eq!(pair.body(next), b"next");
    // The id given up on was kept out of use until its late answer came; now it is free.
    assert_eq!(pair.client.abandoned(), 0);
    pair.all_answered();
}

#[test]
fn a_cancel_that_arrives_first_means_nothing_is_sent_for_that_id() {
    let mut pair = Pair::new(Handlers::Hold);
    let call = pair.call(b"slow", Some(Duration::from_millis(100)));
    pair.drive();
    pair.advance(Duration::from_millis(100));
    pair.drive();
    assert_eq!(pair.server.in_flight(), 0, "the CANCEL stopped the request");
    pair.finish_held();
    pair.drive();
    assert!(pair.outcome(call).as_ref().unwrap_err().is_timeout());
    let counters = pair.client.counters();
    assert_eq!((counters.late_answers, counters.unknown_answers), (0, 0));
    // The id stays out of use: no answer has come for it, so one still may.
    assert_eq!(pair.client.abandoned(), 1);
}

#[test]
fn an_earlier_deadline_started_later_fires_first() {
    let mut pair = Pair::new(Handlers::Hold);
    let long = pair.call(b"long", Some(Duration::from_secs(2)));
    let short = pair.call(b"short", Some(Duration::from_millis(50)));
    assert_eq!(
        pair.client.poll_timeout(),
        pair.now + Duration::from_millis(50)
    );
    let forever = pair.call(b"forever", None);
    pair.drive();
    let ids: Vec<u32> = pair.held.iter().map(|(id, _, _)| *id).collect();
    pair.advance(Duration::from_millis(50));
    assert!(pair.outcome(short).as_ref().unwrap_err().is_timeout());
    assert!(!pair.outcomes.contains_key(&long));
    pair.drive();
    assert_eq!(
        pair.server.in_flight(),
        2,
        "only the short one was cancelled"
    );
    pair.advance(Duration::from_millis(1950));
    assert!(pair.outcome(long).as_ref().unwrap_err().is_timeout());
    pair.drive();
    // CANCEL in deadline order; the call without a deadline is still waiting, and is
    // answered normally.
    assert_eq!(pair.client.counters().cancels_sent, 2);
    assert_eq!(pair.server.in_flight(), 1);
    assert!(!pair.outcomes.contains_key(&forever));
    assert_eq!(
        pair.server_cancels,
        [ids[1], ids[0]],
        "the earlier deadline first"
    );
    pair.finish_held();
    pair.drive();
    assert_eq!(pair.body(forever), b"forever");
    assert_eq!(pair.client.counters().late_answers, 0);
    pair.all_answered();
}

#[test]
fn an_answer_for_an_id_never_sent_is_dropped_and_counted() {
    let mut pair = Pair::new(Handlers::Echo);
    pair.respond(77, b"stale");
    let call = pair.call(b"fresh", None);
    pair.drive();
    assert_eq!(pair.body(call), b"fresh");
    assert_eq!(pair.client.counters().unknown_answers, 1);
    pair.all_answered();
}

/// Ids restart on every connection, so an answer left over from an old connection (or
/// sent by a confused server) may name an id this connection has not handed out yet. It
/// is dropped and counted when it comes, and the call that later gets that id waits for
/// its own answer.
#[test]
fn a_stale_answer_for_an_id_not_yet_handed_out_never_completes_the_call_that_gets_it() {
    let mut pair = Pair::new(Handlers::Hold);
    let first = pair.call(b"first", None);
    pair.drive();
    let (first_id, _, _) = pair.held[0];
    let stale_id = first_id + 1;
    // The stale answer comes before any request with its id exists.
    pair.respond(stale_id, b"stale");
    pair.drive();
    assert_eq!(pair.client.counters().unknown_answers, 1);
    assert!(
        pair.outcomes.is_empty(),
        "no call completed by the stale answer"
    );
    // The next call is handed that very id; it must wait for its own answer.
    let later = pair.call(b"later", None);
    pair.drive();
    assert_eq!(pair.held[1].0, stale_id, "the stale id is handed out again");
    assert!(
        !pair.outcomes.contains_key(&later),
        "completed by the stale answer"
    );
    pair.finish_held();
    pair.drive();
    assert_eq!(pair.body(first), b"first");
    assert_eq!(pair.body(later), b"later");
    let counters = pair.client.counters();
    assert_eq!((counters.unknown_answers, counters.late_answers), (1, 0));
    assert_eq!(pair.client.in_flight(), 0);
    pair.all_answered();
}

/// Answers for an id never sent, a second RESPONSE for an id already answered, and a late
/// ERROR for it: each is dropped and counted, and none completes another caller.
#[test]
fn unknown_and_duplicate_answers_never_complete_another_caller() {
    let mut pair = Pair::new(Handlers::Hold);
    let a = pair.call(b"a", None);
    let b = pair.call(b"b", None);
    pair.drive();
    let (ra, _, _) = pair.held[0];
    let (rb, _, _) = pair.held[1];
    pair.respond(rb.wrapping_add(1000), b"unknown");
    pair.respond(ra, b"a");
    pair.respond(ra, b"duplicate");
    pair.server_error(ra, ErrorCode(9), "late duplicate");
    pair.drive();
    assert_eq!(pair.body(a), b"a");
    assert!(
        !pair.outcomes.contains_key(&b),
        "b must not be completed by another id's answer"
    );
    pair.respond(rb, b"b");
    pair.drive();
    assert_eq!(pair.body(b), b"b");
    let counters = pair.client.counters();
    assert_eq!((counters.unknown_answers, counters.late_answers), (3, 0));
    assert_eq!(pair.client.in_flight(), 0);
    pair.all_answered();
}

#[test]
fn goaway_mid_load_fails_only_what_the_server_did_not_accept() {
    let mut pair = Pair::new(Handlers::Hold);
    let accepted: Vec<u64> = (0..3u8).map(|i| pair.call(&[i], None)).collect();
    pair.drive();
    let ids: Vec<u32> = pair.held.iter().map(|(id, _, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase in send order"
    );
    // The server starts shutting down; its GOAWAY crosses a request on the wire.
    assert!(
        pair.server
            .go_away(&mut pair.down, GoAwayCode::SHUTTING_DOWN, "shutting down")
    );
    let crossed = pair.call(b"late", None);
    pair.deliver_down();
    // The crossed request fails at once, not processed; the others wait for their answers.
    let err = pair.outcome(crossed).as_ref().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::GoAway { .. }), "{err}");
    assert_eq!(err.processed(), crate::Processed::No);
    assert!(matches!(
        pair.statuses.last(),
        Some(ConnectionStatus::Draining { .. })
    ));
    // New calls are refused while draining.
    let refused = pair.call(b"new", None);
    assert!(pair.outcome(refused).is_err());
    // The server answers the crossed request ERROR 6, and the others normally.
    pair.drive();
    pair.finish_held();
    pair.drive();
    for (i, call) in accepted.into_iter().enumerate() {
        assert_eq!(pair.body(call), vec![i as u8]);
    }
    // The ERROR 6 for the crossed id was a late answer; the drained connection closes.
    assert_eq!(pair.client.counters().late_answers, 1);
    assert!(pair.client_dead.is_some(), "drained and closed");
    assert!(matches!(
        pair.statuses.last(),
        Some(ConnectionStatus::Closed { .. })
    ));
    pair.all_answered();
}

#[test]
fn error_6_fails_the_call_as_not_processed_and_drains() {
    let mut pair = Pair::new(Handlers::Hold);
    let first = pair.call(b"a", None);
    let second = pair.call(b"b", None);
    pair.drive();
    let (id, _, _) = pair.held[0];
    pair.server_error(id, ErrorCode::UNAVAILABLE, "going away");
    pair.drive();
    let err = pair.outcome(first).as_ref().unwrap_err();
    assert_eq!(err.processed(), crate::Processed::No);
    assert!(err.is_retryable_elsewhere(), "{err}");
    assert!(matches!(
        pair.statuses.last(),
        Some(ConnectionStatus::Draining { .. })
    ));
    assert!(!pair.client.is_open());
    // The other call still gets its answer; then the connection closes.
    pair.held.pop_front();
    pair.finish_held();
    pair.drive();
    assert_eq!(pair.body(second), b"b");
    assert!(pair.client_dead.is_some());
    pair.all_answered();
}

#[test]
fn error_id_0_ends_the_connection_and_every_call_gets_an_error() {
    let mut pair = Pair::new(Handlers::Hold);
    let calls: Vec<u64> = (0..4u8).map(|i| pair.call(&[i], None)).collect();
    pair.drive();
    pair.server_error(0, ErrorCode::MALFORMED, "bye");
    pair.drive();
    let dead = pair.client_dead.as_ref().expect("dead");
    assert!(matches!(dead.kind(), ErrorKind::ConnectionError { .. }));
    for call in calls {
        let err = pair.outcome(call).as_ref().unwrap_err();
        assert_eq!(err.processed(), crate::Processed::Maybe);
    }
    let refused = pair.call(b"after", None);
    assert!(pair.outcome(refused).is_err());
    pair.all_answered();
}

#[test]
fn the_heartbeat_pings_a_silent_server_and_declares_it_dead() {
    let mut pair = Pair::new(Handlers::Hold);
    let call = pair.call(b"x", None);
    pair.drive();
    // Nothing comes back: after 15 s a PING, after 5 s more the connection is dead.
    pair.advance(Duration::from_secs(15));
    assert_eq!(pair.client.counters().pings_sent, 1);
    assert!(pair.client_dead.is_none());
    pair.up.bytes.clear(); // the server never reads it
    // Not a moment before interval + timeout.
    pair.advance(Duration::from_secs(5) - Duration::from_millis(1));
    assert!(pair.client_dead.is_none(), "declared dead too early");
    pair.advance(Duration::from_millis(1));
    let dead = pair.client_dead.as_ref().expect("declared dead");
    assert!(dead.to_string().contains("heartbeat"), "{dead}");
    assert_eq!(dead.kind(), &ErrorKind::ConnectionClosed, "{dead}");
    assert_eq!(pair.client.counters().pings_sent, 1);
    // The pending call fails at once, and may have been processed.
    let err = pair.outcome(call).as_ref().unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ConnectionClosed, "{err}");
    assert_eq!(err.processed(), crate::Processed::Maybe);
    pair.all_answered();
}

#[test]
fn an_answered_ping_keeps_the_connection() {
    let mut pair = Pair::new(Handlers::Echo);
    for _ in 0..10 {
        pair.advance(Duration::from_secs(15));
        pair.drive();
    }
    assert!(pair.client_dead.is_none());
    assert_eq!(pair.client.counters().pings_sent, 10);
    assert_eq!(pair.server_saw.iter().filter(|s| **s == "PING").count(), 10);
}

#[test]
fn ids_wrap_and_skip_ids_in_flight_across_the_wire() {
    let mut pair = Pair::new(Handlers::Hold);
    pair.client.set_next_id(u32::MAX - 1);
    let a = pair.call(b"a", None);
    let b = pair.call(b"b", None);
    let c = pair.call(b"c", None);
    pair.drive();
    let ids: Vec<u32> = pair.held.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, [u32::MAX - 1, u32::MAX, 1]);
    pair.finish_held();
    pair.drive();
    assert_eq!(
        (pair.body(a), pair.body(b), pair.body(c)),
        (b"a".to_vec(), b"b".to_vec(), b"c".to_vec())
    );
    pair.all_answered();
}

#[test]
fn a_client_goaway_makes_the_server_refuse_later_requests_with_error_6() {
    let mut pair = Pair::new(Handlers::Hold);
    let before = pair.call(b"before", None);
    pair.client
        .drain(&mut pair.up, "closed by its owner", pair.now);
    pair.drive();
    assert_eq!(pair.server_saw, ["REQUEST", "GOAWAY"]);
    assert!(!pair.server.drained(), "one request still runs");
    pair.finish_held();
    pair.drive();
    assert!(pair.server.drained());
    assert_eq!(pair.body(before), b"before");
    pair.all_answered();
}

#[test]
fn requests_the_stream_never_took_whole_are_not_processed_when_it_dies() {
    let mut pair = Pair::new(Handlers::Hold);
    let first = pair.call(b"first", None);
    let written = pair.up.total;
    let second = pair.call(b"second", None);
    // The writer stopped after the first request: the second never left whole.
    let reason = crate::proto::client::closed("connection lost");
    pair.client.finish(&reason, pair.now, Some(written));
    pair.collect();
    let first = pair.outcome(first).as_ref().unwrap_err();
    let second = pair.outcome(second).as_ref().unwrap_err();
    assert_eq!(first.processed(), crate::Processed::Maybe);
    assert_eq!(second.processed(), crate::Processed::No);
    // Without knowing how far the stream got (a flush), every request may be processed.
    let mut pair = Pair::new(Handlers::Hold);
    let call = pair.call(b"x", None);
    pair.client.finish(&reason, pair.now, None);
    pair.collect();
    assert_eq!(
        pair.outcome(call).as_ref().unwrap_err().processed(),
        crate::Processed::Maybe
    );
    pair.all_answered();
}
