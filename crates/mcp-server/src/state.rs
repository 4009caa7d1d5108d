//! The per-connection bookkeeping and every admission decision, without I/O or clock (the
//! caller passes `now`), so that each rule of PROTOCOL.md can be tested alone.

use std::collections::HashMap;
use std::time::Duration;

use mcp_codec::ErrorCode;
use mcp_format::FormatId;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::handler::CancelCell;
use crate::router::{SUBSCRIBE, UNSUBSCRIBE};

/// Per-connection limits on requests (PROTOCOL.md section 6).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    /// Requests whose handler is running, at most.
    pub(crate) max_in_flight: usize,
    /// Request body bytes held by running handlers, at most (a single request is always
    /// admitted when nothing else runs, so that any body up to the message limit works).
    pub(crate) max_in_flight_bytes: usize,
}

/// The head of a REQUEST as the admission needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub(crate) id: u32,
    pub(crate) format: u8,
    pub(crate) method: &'a str,
    /// Whether the router has a handler for `method` (the caller looked it up once, for
    /// this and to start the handler).
    pub(crate) routed: bool,
    pub(crate) deadline_ms: Option<u32>,
    pub(crate) body_len: usize,
    /// When the head frame arrived: the deadline counts from here.
    pub(crate) arrived: Instant,
}

/// What to do with a REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Start the handler; it must finish by `deadline`.
    Run { deadline: Option<Instant> },
    /// The built-in `$subscribe`.
    Subscribe,
    /// The built-in `$unsubscribe`.
    Unsubscribe,
    /// Answer ERROR with the request's id; the connection stays.
    Answer(ErrorCode, &'static str),
    /// Send ERROR id 0 and close the connection.
    Close(ErrorCode, &'static str),
}

/// A request whose handler runs.
#[derive(Debug)]
pub(crate) struct InFlight {
    generation: u64,
    body_len: usize,
    abort: AbortHandle,
    cancel: CancelCell,
}

impl InFlight {
    /// Stops the handler: its future is dropped at its next poll, its token cancelled.
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
        self.abort.abort();
    }
}

#[derive(Debug)]
pub(crate) struct ConnState {
    limits: RequestLimits,
    in_flight: HashMap<u32, InFlight>,
    in_flight_bytes: usize,
    next_generation: u64,
    /// The last REQUEST id that arrived while requests were accepted.
    last_id: u32,
    goaway_sent: bool,
    peer_goaway: bool,
}

impl ConnState {
    pub(crate) fn new(limits: RequestLimits) -> Self {
        ConnState {
            limits,
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            next_generation: 0,
            last_id: 0,
            goaway_sent: false,
            peer_goaway: false,
        }
    }

    fn draining(&self) -> bool {
        self.goaway_sent || self.peer_goaway
    }

    /// Decides what to do with a well-formed REQUEST. The checks run from the ones that
    /// concern the connection to the ones that concern this request, and from permanent
    /// answers (2, 3, 4) to the retryable one (5), so that a request a retry cannot fix is
    /// never answered "overloaded".
    pub(crate) fn admit(&mut self, head: &RequestHead<'_>, now: Instant) -> Verdict {
        if let Some(verdict) = self.check_id(head.id) {
            return verdict;
        }
        if !head.routed {
            // `$subscribe` takes the topic's bytes whatever the format byte says.
            return match head.method {
                SUBSCRIBE => Verdict::Subscribe,
                UNSUBSCRIBE => Verdict::Unsubscribe,
                _ => Verdict::Answer(ErrorCode::UNKNOWN_METHOD, "no such method"),
            };
        }
        if FormatId::new(head.format).is_reserved() {
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
        if self.in_flight.len() >= self.limits.max_in_flight {
            return Verdict::Answer(
                ErrorCode::OVERLOADED,
                "too many requests in flight on this connection",
            );
        }
        if !self.in_flight.is_empty()
            && self.in_flight_bytes.saturating_add(head.body_len) > self.limits.max_in_flight_bytes
        {
            return Verdict::Answer(
                ErrorCode::OVERLOADED,
                "too many request bytes in flight on this connection",
            );
        }
        Verdict::Run { deadline }
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
    pub(crate) fn refuse(&mut self, id: u32, code: ErrorCode, message: &'static str) -> Verdict {
        self.check_id(id).unwrap_or(Verdict::Answer(code, message))
    }

    /// A fresh generation for a request about to start: its completion presents it, so
    /// that the late answer of a cancelled request can never pass for another one's.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Records the handler started for an admitted request.
    pub(crate) fn start(
        &mut self,
        id: u32,
        body_len: usize,
        generation: u64,
        abort: AbortHandle,
        cancel: CancelCell,
    ) {
        self.in_flight_bytes += body_len;
        self.in_flight.insert(
            id,
            InFlight {
                generation,
                body_len,
                abort,
                cancel,
            },
        );
    }

    fn remove(&mut self, id: u32) -> Option<InFlight> {
        let entry = self.in_flight.remove(&id)?;
        self.in_flight_bytes -= entry.body_len;
        Some(entry)
    }

    /// A handler finished. True if its answer is to be sent: the request is still the one
    /// that started it (not cancelled, not replaced).
    pub(crate) fn finish(&mut self, id: u32, generation: u64) -> bool {
        match self.in_flight.get(&id) {
            Some(entry) if entry.generation == generation => {
                self.remove(id);
                true
            }
            _ => false,
        }
    }

    /// CANCEL from the client: the request, if it runs, is forgotten (nothing will be sent
    /// for it) and returned so that the caller stops it.
    pub(crate) fn cancel(&mut self, id: u32) -> Option<InFlight> {
        self.remove(id)
    }

    /// The server sends GOAWAY: returns its `last_id`, or `None` if it was already sent.
    pub(crate) fn send_goaway(&mut self) -> Option<u32> {
        if self.goaway_sent {
            return None;
        }
        self.goaway_sent = true;
        Some(self.last_id)
    }

    /// The client sent GOAWAY: it sends no more requests.
    pub(crate) fn peer_goaway(&mut self) {
        self.peer_goaway = true;
    }

    /// Whether the connection can close: draining and nothing left to answer.
    pub(crate) fn drained(&self) -> bool {
        self.draining() && self.in_flight.is_empty()
    }

    /// Takes every running request (shutdown grace over, or the connection closing).
    pub(crate) fn take_all(&mut self) -> Vec<(u32, InFlight)> {
        self.in_flight_bytes = 0;
        self.in_flight.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::handler::Reply;
    use crate::router::Router;

    fn router() -> Router {
        Router::new().route_raw("echo", |_, body: Bytes| async move { Ok(Reply::new(body)) })
    }

    fn head(id: u32, method: &str, arrived: Instant) -> RequestHead<'_> {
        RequestHead {
            id,
            format: 1,
            method,
            routed: router().handler(method).is_some(),
            deadline_ms: None,
            body_len: 10,
            arrived,
        }
    }

    fn state(max_in_flight: usize, max_in_flight_bytes: usize) -> ConnState {
        ConnState::new(RequestLimits {
            max_in_flight,
            max_in_flight_bytes,
        })
    }

    /// Starts a dummy task standing for a handler, for its abort handle.
    fn run(state: &mut ConnState, id: u32, body_len: usize) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let task = rt.spawn(async {});
        let generation = state.next_generation();
        state.start(
            id,
            body_len,
            generation,
            task.abort_handle(),
            CancelCell::default(),
        );
        generation
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
        reserved.format = 200;
        assert_eq!(s.admit(&reserved, now), Verdict::Run { deadline: None });
        let mut sub = head(1, SUBSCRIBE, now);
        sub.format = 77;
        assert_eq!(s.admit(&sub, now), Verdict::Subscribe);
        sub.method = UNSUBSCRIBE;
        assert_eq!(s.admit(&sub, now), Verdict::Unsubscribe);
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

    #[test]
    fn goaway_last_id_and_draining() {
        let now = Instant::now();
        let mut s = state(10, 100);
        s.admit(&head(5, "echo", now), now);
        let g5 = run(&mut s, 5, 1);
        s.admit(&head(6, "nope", now), now);
        assert_eq!(s.send_goaway(), Some(6));
        assert_eq!(s.send_goaway(), None);
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
