//! The server side of one connection, without I/O and without a clock (the caller passes
//! `now`): every admission decision of docs/protocol.md sections 4, 6 and 7, the table of
//! requests in flight with generations, byte accounting, GOAWAY and `last_id`, draining,
//! and the heartbeat. The server's connection task (in `mcp-server`) is the glue around it:
//! it runs handlers, whose handles (`H`) this table keeps so it can stop them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mcp_codec::{Envelope, ErrorCode, ErrorFrame, GoAway, GoAwayCode, Pong};

use super::budget::{Exhausted, Held, SharedBudget};
use super::heartbeat::{Beat, Heartbeat};
use super::{Life, Transmit};
use crate::message::{Inbound, InboundRequest, Push};
use crate::subscription::{HEALTH_METHOD, SUBSCRIBE_METHOD, UNSUBSCRIBE_METHOD};

/// Per-connection limits on requests (docs/protocol.md section 7).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests whose handler is running, at most.
    pub max_in_flight: usize,
    /// Request body bytes held by running handlers, at most (a single request is always
    /// admitted when nothing else runs, so that any body up to the message limit works).
    pub max_in_flight_bytes: usize,
}

/// The head of a REQUEST as the admission needs it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request's id.
    pub id: u32,
    /// Its format byte.
    pub format: u8,
    /// Its method.
    pub method: &'a str,
    /// Whether the router has a handler for `method` (the caller looked it up once, for
    /// this and to start the handler).
    pub routed: bool,
    /// The `deadline` metadata, if any (the smallest if repeated).
    pub deadline_ms: Option<u32>,
    /// The body's length.
    pub body_len: usize,
    /// When the head frame arrived: the deadline counts from here.
    pub arrived: Instant,
}

/// What to do with a REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start the handler; it must finish by `deadline`.
    Run {
        /// When the caller's budget ends, if it sent one.
        deadline: Option<Instant>,
    },
    /// The built-in `$subscribe`.
    Subscribe,
    /// The built-in `$unsubscribe`.
    Unsubscribe,
    /// The built-in `$health`.
    Health,
    /// Answer ERROR with the request's id; the connection stays.
    Answer(ErrorCode, &'static str),
    /// Send ERROR id 0 and close the connection.
    Close(ErrorCode, &'static str),
}

/// What the server's driver must do after a message, beyond what the core did itself
/// (answer PING, refuse with ERROR, note a GOAWAY).
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerEvent<H, R> {
    /// Start the handler `route` for `request`; it must finish by `deadline`.
    Run {
        /// The request.
        request: InboundRequest,
        /// What the driver's router gave for its method.
        route: R,
        /// When the caller's budget ends, if it sent one.
        deadline: Option<Instant>,
    },
    /// The built-in `$subscribe`.
    Subscribe(InboundRequest),
    /// The built-in `$unsubscribe`.
    Unsubscribe(InboundRequest),
    /// The built-in `$health`.
    Health(InboundRequest),
    /// A client's one-way NOTIFY, for the handler of its topic.
    Notify(Push),
    /// CANCEL of a running request: stop its handler (nothing will be sent for it).
    Stop(H),
    /// The peer broke the protocol: send ERROR id 0 with this code, then close.
    Protocol(ErrorCode, String),
    /// The peer closed the connection (ERROR id 0).
    PeerClosed,
}

/// A request whose handler runs: its handle (to stop it), generation and size.
#[derive(Debug)]
struct InFlight<H> {
    generation: u64,
    body_len: usize,
    handle: H,
    /// Its place in the server's shared budget, given back as the entry is dropped.
    _held: Held,
}

/// The server side of one connection; `H` is whatever the driver needs to stop a running
/// handler.
#[derive(Debug)]
pub struct ServerCore<H> {
    limits: RequestLimits,
    /// Keyed by ids the client chose: a keyed hash, so that no choice of ids makes the
    /// table slow.
    in_flight: HashMap<u32, InFlight<H>>,
    in_flight_bytes: usize,
    next_generation: u64,
    /// The last REQUEST id that arrived while requests were accepted.
    last_id: u32,
    goaway_sent: bool,
    peer_goaway: bool,
    heartbeat: Heartbeat,
    /// Until the first complete frame: when a connection that sent none is closed.
    first_frame_by: Option<Instant>,
    /// The server's budgets shared by every connection, if it has them.
    budget: Option<SharedBudget>,
}

impl<H> ServerCore<H> {
    /// A fresh connection, opened at `now`.
    pub fn new(limits: RequestLimits, heartbeat: (Duration, Duration), now: Instant) -> Self {
        ServerCore {
            limits,
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            next_generation: 0,
            last_id: 0,
            goaway_sent: false,
            peer_goaway: false,
            heartbeat: Heartbeat::new(heartbeat.0, heartbeat.1, now),
            first_frame_by: None,
            budget: None,
        }
    }

    /// Admits requests only within `budget` too, which the server's other connections
    /// share: past it they are answered ERROR 5 (after the connection's own in-flight
    /// limits). A request holds its place while it is in flight ([`ServerCore::start`]
    /// to the core forgetting it); one the driver answers at once never takes one.
    pub fn with_budget(mut self, budget: SharedBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Closes the connection (as [`Beat::Dead`]) if no complete frame arrives within
    /// `timeout` of `now`, whatever the heartbeat says: a client that connects and sends
    /// nothing, or a byte at a time, goes away long before its heartbeat would end it.
    pub fn with_first_frame_timeout(mut self, timeout: Duration, now: Instant) -> Self {
        self.first_frame_by = Some(now + timeout);
        self
    }

    /// Where the connection is in its life.
    pub fn life(&self) -> Life {
        if self.drained() {
            Life::Closed
        } else if self.draining() {
            Life::Draining
        } else {
            Life::Open
        }
    }

    fn draining(&self) -> bool {
        self.goaway_sent || self.peer_goaway
    }

    /// Decides what to do with a well-formed, complete REQUEST, in the order of
    /// docs/protocol.md section 6: a duplicate id in flight (fatal), after a GOAWAY either
    /// way (6), past the in-flight limits of the connection, then of the server's shared
    /// budget (5), a reserved format (3; not for the built-in
    /// methods, whose body means what it means whatever the format byte), the deadline passed
    /// when the work would start (4), an unknown method (2).
    pub fn admit(&mut self, head: &RequestHead<'_>, now: Instant) -> Verdict {
        if let Some(verdict) = self.check_id(head.id) {
            return verdict;
        }
        if self.in_flight.len() >= self.limits.max_in_flight {
            return Verdict::Answer(
                ErrorCode::OVERLOADED,
                "too many requests in flight on this connection",
            );
        }
        if head.routed
            && !self.in_flight.is_empty()
            && self.in_flight_bytes.saturating_add(head.body_len) > self.limits.max_in_flight_bytes
        {
            return Verdict::Answer(
                ErrorCode::OVERLOADED,
                "too many request bytes in flight on this connection",
            );
        }
        // The built-in methods hold nothing once answered: the server's health can be
        // asked however loaded it is.
        if let (true, Some(budget)) = (head.routed, &self.budget) {
            if let Err(exhausted) = budget.check(head.body_len) {
                return Verdict::Answer(ErrorCode::OVERLOADED, exhausted.message());
            }
        }
        let builtin = match head.method {
            _ if head.routed => None,
            SUBSCRIBE_METHOD => Some(Verdict::Subscribe),
            UNSUBSCRIBE_METHOD => Some(Verdict::Unsubscribe),
            HEALTH_METHOD => Some(Verdict::Health),
            _ => None,
        };
        if builtin.is_none() && is_reserved_format(head.format) {
            return Verdict::Answer(ErrorCode::UNSUPPORTED_FORMAT, "reserved body format");
        }
        let deadline = head
            .deadline_ms
            .map(|ms| head.arrived + Duration::from_millis(u64::from(ms)));
        if deadline.is_some_and(|d| d <= now) {
            return Verdict::Answer(
                ErrorCode::DEADLINE_EXCEEDED,
                "deadline passed before the work started",
            );
        }
        if let Some(builtin) = builtin {
            return builtin;
        }
        if !head.routed {
            return Verdict::Answer(ErrorCode::UNKNOWN_METHOD, "no such method");
        }
        Verdict::Run { deadline }
    }

    /// Handles one message read (whose head frame arrived at `arrived`, handled at `now`):
    /// answers what the protocol answers by itself (PONG, an ERROR the admission decides),
    /// notes a GOAWAY, and says what is left to the driver. `route` looks a method up in
    /// the driver's router, once: it decides the admission and is the handler that runs.
    pub fn handle_inbound<R>(
        &mut self,
        out: &mut impl Transmit,
        message: Inbound,
        arrived: Instant,
        now: Instant,
        route: impl FnOnce(&str) -> Option<R>,
    ) -> Option<ServerEvent<H, R>> {
        match message {
            Inbound::Request(request) => {
                let route = route(request.method());
                let head = RequestHead {
                    id: request.id(),
                    format: request.format(),
                    method: request.method(),
                    routed: route.is_some(),
                    deadline_ms: request.meta().deadline_ms(),
                    body_len: request.body().len(),
                    arrived,
                };
                match (self.admit(&head, now), route) {
                    (Verdict::Run { deadline }, Some(route)) => {
                        return Some(ServerEvent::Run {
                            request,
                            route,
                            deadline,
                        });
                    }
                    (Verdict::Subscribe, _) => return Some(ServerEvent::Subscribe(request)),
                    (Verdict::Unsubscribe, _) => return Some(ServerEvent::Unsubscribe(request)),
                    (Verdict::Health, _) => return Some(ServerEvent::Health(request)),
                    // `admit` runs only routed requests; answer rather than panic if that
                    // ever changes.
                    (Verdict::Run { .. }, None) => {
                        let id = request.id();
                        answer(out, id, ErrorCode::UNKNOWN_METHOD, "no such method");
                    }
                    (verdict, _) => return apply(out, request.id(), verdict, None),
                }
            }
            Inbound::Notify(push) => return Some(ServerEvent::Notify(push)),
            Inbound::Ping(nonce) => {
                // A closed writer ends the connection by itself; nothing to do here.
                let _ = out.send(Envelope::Pong(Pong { nonce }));
            }
            Inbound::Cancel(id) => return self.cancel(id).map(ServerEvent::Stop),
            Inbound::GoAway { .. } => self.peer_goaway(),
            Inbound::Error { id: 0, .. } => return Some(ServerEvent::PeerClosed),
            // The server sends no requests, so an ERROR with an id answers nothing.
            Inbound::Error { .. } => {}
            Inbound::RequestTooLarge { id } => {
                let message = "request body exceeds the maximum message size";
                let verdict = self.refuse(id, ErrorCode::TOO_LARGE, message);
                return apply(out, id, verdict, None);
            }
            // Dropped while arriving: the server's bytes budget could not hold it.
            Inbound::RequestShed { id } => {
                let message = Exhausted::Bytes.message();
                let verdict = self.refuse(id, ErrorCode::OVERLOADED, message);
                return apply(out, id, verdict, None);
            }
            Inbound::MalformedRequest { id, error } => {
                let verdict = self.refuse(id, ErrorCode::MALFORMED, "malformed request");
                return apply(out, id, verdict, Some(&error.to_string()));
            }
            // The reader refuses RESPONSE for the server role; this is the same rule.
            Inbound::Response(_) => {
                let message = "a server never receives RESPONSE".to_owned();
                return Some(ServerEvent::Protocol(ErrorCode::MALFORMED, message));
            }
            // PONG is life, counted by `received`; a kind a later transport adds: nothing.
            _ => {}
        }
        None
    }

    /// The checks on the id alone, shared with requests that are too large or malformed:
    /// a duplicate of a running id closes the connection (the client could not tell the
    /// answers apart), and after a GOAWAY nothing is taken.
    fn check_id(&mut self, id: u32) -> Option<Verdict> {
        if self.in_flight.contains_key(&id) {
            return Some(Verdict::Close(
                ErrorCode::MALFORMED,
                "request id already in flight",
            ));
        }
        if self.draining() {
            return Some(Verdict::Answer(
                ErrorCode::UNAVAILABLE,
                "the connection is going away; not processed",
            ));
        }
        self.last_id = id;
        None
    }

    /// A REQUEST refused by the codec with `code` (1 malformed, 7 too large) whose id is
    /// readable.
    pub fn refuse(&mut self, id: u32, code: ErrorCode, message: &'static str) -> Verdict {
        self.check_id(id).unwrap_or(Verdict::Answer(code, message))
    }

    /// A fresh generation for a request about to start: its completion presents it, so
    /// that the late answer of a cancelled request can never pass for another one's.
    pub fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Records the handler started for an admitted request.
    pub fn start(&mut self, id: u32, body_len: usize, generation: u64, handle: H) {
        self.in_flight_bytes += body_len;
        // The place is taken only now, not at admission: most handlers finish in the
        // poll that starts them and are answered without ever being in flight, and then
        // cost the budget two loads instead of four atomic writes. Admission checked
        // that the request fits; between that check and this, no other request of this
        // connection is admitted, so only connections running at the same moment on
        // other threads can take the same last places: the budget is passed by at most
        // one request per other runtime thread (see `SharedBudget::hold`).
        let held = match &self.budget {
            Some(budget) => budget.hold(body_len),
            None => Held::none(),
        };
        self.in_flight.insert(
            id,
            InFlight {
                generation,
                body_len,
                handle,
                _held: held,
            },
        );
    }

    fn remove(&mut self, id: u32) -> Option<InFlight<H>> {
        let entry = self.in_flight.remove(&id)?;
        self.in_flight_bytes -= entry.body_len;
        Some(entry)
    }

    /// A handler finished. True if its answer is to be sent: the request is still the one
    /// that started it (not cancelled, not replaced).
    pub fn finish(&mut self, id: u32, generation: u64) -> bool {
        match self.in_flight.get(&id) {
            Some(entry) if entry.generation == generation => {
                self.remove(id);
                true
            }
            _ => false,
        }
    }

    /// CANCEL from the client: the request, if it runs, is forgotten (nothing will be sent
    /// for it) and its handle returned so that the caller stops it.
    pub fn cancel(&mut self, id: u32) -> Option<H> {
        self.remove(id).map(|entry| entry.handle)
    }

    /// The server sends GOAWAY through `out`, once (shutdown, connection age): its
    /// `last_id` is the highest id taken, so the client knows every later request was
    /// refused unprocessed (docs/protocol.md section 7). Answers `false` if it was already
    /// sent.
    pub fn go_away(&mut self, out: &mut impl Transmit, code: GoAwayCode, reason: &str) -> bool {
        if self.goaway_sent {
            return false;
        }
        self.goaway_sent = true;
        // A closed writer ends the connection by itself; nothing to do here.
        let _ = out.send(Envelope::GoAway(GoAway {
            last_id: self.last_id,
            code,
            reason,
        }));
        true
    }

    /// The client sent GOAWAY (or ended its stream): it sends no more requests.
    pub fn peer_goaway(&mut self) {
        self.peer_goaway = true;
    }

    /// Whether the connection can close: draining and nothing left to answer.
    pub fn drained(&self) -> bool {
        self.draining() && self.in_flight.is_empty()
    }

    /// Requests whose handler runs.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Ends every running request with an ERROR `code` through `out` (the shutdown grace
    /// is over) and hands back their handles to stop: each gets exactly this one answer,
    /// since a request leaves the table before its handler's answer could be written.
    pub fn abort_all(&mut self, out: &mut impl Transmit, code: ErrorCode, message: &str) -> Vec<H> {
        let aborted = self.take_all();
        aborted
            .into_iter()
            .map(|(id, handle)| {
                answer(out, id, code, message);
                handle
            })
            .collect()
    }

    /// Takes every running request without answering (the connection is closing: there is
    /// no one left to answer).
    pub fn take_all(&mut self) -> Vec<(u32, H)> {
        self.in_flight_bytes = 0;
        self.in_flight
            .drain()
            .map(|(id, entry)| (id, entry.handle))
            .collect()
    }

    /// Something arrived from the client at `now` (any complete frame is life).
    pub fn received(&mut self, now: Instant) {
        self.first_frame_by = None;
        self.heartbeat.received(now);
    }

    /// When [`ServerCore::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Instant {
        let beat = self.heartbeat.deadline();
        match self.first_frame_by {
            Some(by) if by < beat => by,
            _ => beat,
        }
    }

    /// Advances to `now`: the first frame's time limit, then the heartbeat.
    pub fn handle_timeout(&mut self, now: Instant) -> Beat {
        if self.first_frame_by.is_some_and(|by| by <= now) {
            return Beat::Dead;
        }
        self.heartbeat.poll(now)
    }
}

/// Carries out a verdict that needs no handler: an ERROR with the request's id, or the
/// connection's end.
fn apply<H, R>(
    out: &mut impl Transmit,
    id: u32,
    verdict: Verdict,
    detail: Option<&str>,
) -> Option<ServerEvent<H, R>> {
    match verdict {
        Verdict::Answer(code, message) => {
            match detail {
                Some(detail) if code == ErrorCode::MALFORMED => {
                    answer(out, id, code, &format!("{message}: {detail}"));
                }
                _ => answer(out, id, code, message),
            }
            None
        }
        Verdict::Close(code, message) => Some(ServerEvent::Protocol(code, message.into())),
        // `refuse` gives only answers and closes.
        Verdict::Run { .. } | Verdict::Subscribe | Verdict::Unsubscribe | Verdict::Health => None,
    }
}

fn answer(out: &mut impl Transmit, id: u32, code: ErrorCode, message: &str) {
    // A closed writer ends the connection by itself; nothing to do here.
    let _ = out.send(Envelope::Error(ErrorFrame { id, code, message }));
}

/// Formats 3..=127 are reserved (docs/protocol.md section 4.1).
fn is_reserved_format(format: u8) -> bool {
    (3..=127).contains(&format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_codec::OwnedEnvelope;

    fn head(id: u32, method: &str, arrived: Instant) -> RequestHead<'_> {
        RequestHead {
            id,
            format: 1,
            method,
            routed: method == "echo",
            deadline_ms: None,
            body_len: 10,
            arrived,
        }
    }

    fn state(max_in_flight: usize, max_in_flight_bytes: usize) -> ServerCore<()> {
        ServerCore::new(
            RequestLimits {
                max_in_flight,
                max_in_flight_bytes,
            },
            (Duration::from_secs(15), Duration::from_secs(5)),
            Instant::now(),
        )
    }

    fn run(state: &mut ServerCore<()>, id: u32, body_len: usize) -> u64 {
        let generation = state.next_generation();
        state.start(id, body_len, generation, ());
        generation
    }

    #[test]
    fn a_connection_without_a_first_frame_is_dead_at_its_time_limit() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut quiet = state(10, 100).with_first_frame_timeout(s(10), t0);
        assert_eq!(quiet.poll_timeout(), t0 + s(10));
        assert_eq!(quiet.handle_timeout(t0 + s(9)), Beat::Wait);
        assert_eq!(quiet.handle_timeout(t0 + s(10)), Beat::Dead);
        // One frame lifts the limit: the heartbeat alone decides from then on.
        let mut talking = state(10, 100).with_first_frame_timeout(s(10), t0);
        talking.received(t0 + s(1));
        assert_eq!(talking.poll_timeout(), t0 + s(16));
        assert_eq!(talking.handle_timeout(t0 + s(10)), Beat::Wait);
    }

    #[test]
    fn admission_order() {
        let now = Instant::now();
        let mut s = state(1, 100);
        assert_eq!(
            s.admit(&head(1, "nope", now), now),
            Verdict::Answer(ErrorCode::UNKNOWN_METHOD, "no such method")
        );
        let mut reserved = head(1, "echo", now);
        reserved.format = 3;
        assert!(matches!(
            s.admit(&reserved, now),
            Verdict::Answer(ErrorCode::UNSUPPORTED_FORMAT, _)
        ));
        // An unknown method in a reserved format: the format is checked first.
        reserved.method = "nope";
        reserved.routed = false;
        assert!(matches!(
            s.admit(&reserved, now),
            Verdict::Answer(ErrorCode::UNSUPPORTED_FORMAT, _)
        ));
        let mut app = head(1, "echo", now);
        app.format = 200;
        assert_eq!(s.admit(&app, now), Verdict::Run { deadline: None });
        let mut sub = head(1, SUBSCRIBE_METHOD, now);
        sub.format = 77;
        assert_eq!(s.admit(&sub, now), Verdict::Subscribe);
        sub.method = UNSUBSCRIBE_METHOD;
        assert_eq!(s.admit(&sub, now), Verdict::Unsubscribe);
        sub.method = HEALTH_METHOD;
        assert_eq!(s.admit(&sub, now), Verdict::Health);
    }

    #[test]
    fn overload_comes_before_format_deadline_and_method() {
        let now = Instant::now();
        let mut s = state(1, 100);
        run(&mut s, 1, 10);
        for mut h in [head(2, "echo", now), head(2, "nope", now)] {
            h.format = 3;
            h.deadline_ms = Some(0);
            assert!(matches!(
                s.admit(&h, now),
                Verdict::Answer(ErrorCode::OVERLOADED, _)
            ));
        }
    }

    /// The server's shared budget refuses at the place of the in-flight check (after the
    /// connection's own limits, before the format, the deadline and the method), for every
    /// connection sharing it, and never the built-in methods.
    #[test]
    fn the_shared_budget_is_checked_where_the_in_flight_limit_is() {
        let now = Instant::now();
        let budget = SharedBudget::new(1, 1000);
        let mut a = state(10, 100).with_budget(budget.clone());
        let mut b = state(10, 100).with_budget(budget.clone());
        assert_eq!(
            a.admit(&head(1, "echo", now), now),
            Verdict::Run { deadline: None }
        );
        let held = budget.hold(10);
        for core in [&mut a, &mut b] {
            let mut h = head(2, "echo", now);
            h.format = 3;
            h.deadline_ms = Some(0);
            assert_eq!(
                core.admit(&h, now),
                Verdict::Answer(ErrorCode::OVERLOADED, Exhausted::Requests.message())
            );
            let mut health = head(3, HEALTH_METHOD, now);
            health.routed = false;
            assert_eq!(core.admit(&health, now), Verdict::Health);
        }
        // The connection's own limit comes first.
        let mut full = state(1, 100).with_budget(budget.clone());
        drop(held);
        let g = run(&mut full, 7, 1);
        assert_eq!(
            full.admit(&head(8, "echo", now), now),
            Verdict::Answer(
                ErrorCode::OVERLOADED,
                "too many requests in flight on this connection"
            )
        );
        // A request in flight holds its place in the shared budget, until the core
        // forgets it.
        assert_eq!((budget.requests(), budget.bytes()), (1, 1));
        assert!(matches!(
            b.admit(&head(4, "echo", now), now),
            Verdict::Answer(ErrorCode::OVERLOADED, _)
        ));
        assert!(full.finish(7, g));
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
        assert_eq!(
            b.admit(&head(4, "echo", now), now),
            Verdict::Run { deadline: None }
        );
        // A core that goes away gives back the places of what it still had in flight.
        run(&mut b, 5, 3);
        assert_eq!(budget.requests(), 1);
        drop(b);
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
    }

    #[test]
    fn deadline_comes_before_an_unknown_method() {
        let now = Instant::now();
        let mut s = state(10, 100);
        let mut h = head(1, "nope", now);
        h.deadline_ms = Some(0);
        assert!(matches!(
            s.admit(&h, now),
            Verdict::Answer(ErrorCode::DEADLINE_EXCEEDED, _)
        ));
    }

    #[test]
    fn deadline_counts_from_arrival() {
        let t0 = Instant::now();
        let mut s = state(10, 100);
        let mut h = head(1, "echo", t0);
        h.deadline_ms = Some(0);
        assert!(matches!(
            s.admit(&h, t0),
            Verdict::Answer(ErrorCode::DEADLINE_EXCEEDED, _)
        ));
        h.deadline_ms = Some(50);
        assert!(matches!(
            s.admit(&h, t0 + Duration::from_millis(50)),
            Verdict::Answer(ErrorCode::DEADLINE_EXCEEDED, _)
        ));
        assert_eq!(
            s.admit(&h, t0 + Duration::from_millis(49)),
            Verdict::Run {
                deadline: Some(t0 + Duration::from_millis(50))
            }
        );
    }

    #[test]
    fn limits_and_duplicates() {
        let now = Instant::now();
        let mut s = state(2, 15);
        assert_eq!(
            s.admit(&head(1, "echo", now), now),
            Verdict::Run { deadline: None }
        );
        let g1 = run(&mut s, 1, 10);
        // Duplicate of a running id: close.
        assert!(matches!(
            s.admit(&head(1, "echo", now), now),
            Verdict::Close(ErrorCode::MALFORMED, _)
        ));
        assert!(matches!(
            s.refuse(1, ErrorCode::TOO_LARGE, "x"),
            Verdict::Close(ErrorCode::MALFORMED, _)
        ));
        // 10 + 10 bytes > 15: overloaded.
        assert!(matches!(
            s.admit(&head(2, "echo", now), now),
            Verdict::Answer(ErrorCode::OVERLOADED, _)
        ));
        let mut small = head(2, "echo", now);
        small.body_len = 5;
        assert_eq!(s.admit(&small, now), Verdict::Run { deadline: None });
        run(&mut s, 2, 5);
        let mut tiny = head(3, "echo", now);
        tiny.body_len = 0;
        assert!(matches!(
            s.admit(&tiny, now),
            Verdict::Answer(ErrorCode::OVERLOADED, _)
        ));
        assert!(s.finish(1, g1));
        assert!(!s.finish(1, g1), "finished twice");
        assert_eq!(s.admit(&tiny, now), Verdict::Run { deadline: None });
        // One request larger than the byte budget is admitted when alone.
        let mut s = state(2, 15);
        let mut big = head(9, "echo", now);
        big.body_len = 1000;
        assert_eq!(s.admit(&big, now), Verdict::Run { deadline: None });
    }

    #[test]
    fn cancelled_answers_are_not_sent_even_if_the_id_returns() {
        let mut s = state(10, 100);
        let g1 = run(&mut s, 1, 1);
        assert!(s.cancel(1).is_some());
        assert!(s.cancel(1).is_none());
        let g2 = run(&mut s, 1, 1);
        assert!(
            !s.finish(1, g1),
            "the first run's late answer must be dropped"
        );
        assert!(s.finish(1, g2));
    }

    /// A `Transmit` that keeps what the core sends.
    #[derive(Default)]
    struct Frames(Vec<OwnedEnvelope>);

    impl Transmit for Frames {
        fn send(&mut self, envelope: Envelope<'_>) -> Result<u64, crate::error::WireError> {
            self.0.push(OwnedEnvelope::from_envelope(&envelope));
            Ok(self.0.len() as u64)
        }

        fn is_full(&self) -> bool {
            false
        }
    }

    #[test]
    fn at_the_end_of_the_grace_every_running_request_gets_one_error() {
        let mut s = state(10, 100);
        run(&mut s, 3, 1);
        run(&mut s, 4, 1);
        let mut out = Frames::default();
        let stopped = s.abort_all(&mut out, ErrorCode::CANCELLED, "shut down");
        assert_eq!(stopped.len(), 2);
        let mut ids: Vec<u32> = out
            .0
            .iter()
            .map(|frame| match frame {
                OwnedEnvelope::Error { id, code, .. } => {
                    assert_eq!(*code, ErrorCode::CANCELLED);
                    *id
                }
                other => panic!("expected ERROR, got {other:?}"),
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, [3, 4]);
        assert_eq!(s.in_flight(), 0);
        assert!(
            s.abort_all(&mut out, ErrorCode::CANCELLED, "again")
                .is_empty()
        );
        assert_eq!(out.0.len(), 2, "nothing is answered twice");
    }

    #[test]
    fn goaway_last_id_and_draining() {
        let now = Instant::now();
        let mut s = state(10, 100);
        s.admit(&head(5, "echo", now), now);
        let g5 = run(&mut s, 5, 1);
        s.admit(&head(6, "nope", now), now);
        assert_eq!(s.life(), Life::Open);
        let mut out = Frames::default();
        assert!(s.go_away(&mut out, GoAwayCode::SHUTTING_DOWN, "bye"));
        assert!(!s.go_away(&mut out, GoAwayCode::SHUTTING_DOWN, "bye"));
        assert_eq!(
            out.0,
            [OwnedEnvelope::GoAway {
                last_id: 6,
                code: GoAwayCode::SHUTTING_DOWN,
                reason: "bye".into()
            }],
            "one GOAWAY, naming the highest id taken"
        );
        assert_eq!(s.life(), Life::Draining);
        assert!(matches!(
            s.admit(&head(7, "echo", now), now),
            Verdict::Answer(ErrorCode::UNAVAILABLE, _)
        ));
        assert!(matches!(
            s.refuse(8, ErrorCode::TOO_LARGE, "x"),
            Verdict::Answer(ErrorCode::UNAVAILABLE, _)
        ));
        assert!(!s.drained());
        assert!(s.finish(5, g5));
        assert!(s.drained());
        assert_eq!(s.life(), Life::Closed);

        let mut s = state(10, 100);
        assert!(!s.drained());
        s.peer_goaway();
        assert!(s.drained());
        assert!(matches!(
            s.admit(&head(1, "echo", now), now),
            Verdict::Answer(ErrorCode::UNAVAILABLE, _)
        ));
    }
}
