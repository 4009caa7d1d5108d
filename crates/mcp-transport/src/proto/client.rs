//! The client side of one connection, without I/O and without a clock (docs/protocol.md
//! sections 4 and 7): id allocation, the pending table (each entry with its deadline),
//! CANCEL and the ids kept out of use while a late answer may come, GOAWAY and its
//! `last_id` rule, ERROR id 0 and ERROR 6, `$subscribe` sent again after a reconnect, and
//! the heartbeat.
//!
//! `W` is whoever waits for an answer (a oneshot sender in the driver, a tag in tests).
//! Architecture invariant: every waiter put in is handed out exactly once, as an
//! [`Event::Done`], whatever happens: an answer, its deadline, a GOAWAY, the connection's
//! end; or given back by [`ClientCore::abandon`] when the caller itself gave up.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use mcp_codec::{
    Cancel, Envelope, ErrorCode, ErrorFrame, Flags, GoAway, GoAwayCode, Notify as NotifyFrame,
    Ping, Pong, Request, format,
};

use super::heartbeat::{Beat, Heartbeat};
use super::{Life, Transmit};
use crate::error::{ErrorKind, Phase, Processed, TransportError, WireError};
use crate::message::{Answer, Inbound, Meta, Push, RemoteError};
use crate::text::one_line;

type Outcome = Result<Answer, TransportError>;

/// The life of a connection as its owner sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// Taking requests.
    Open,
    /// Taking no new requests (GOAWAY received, ERROR 6, too many abandoned ids, or
    /// a drain asked by the owner); closes when its answers are in.
    Draining {
        /// Why.
        reason: String,
    },
    /// Closed; every pending call has had its outcome.
    Closed {
        /// Why.
        reason: TransportError,
    },
}

/// What the driver must pass on after a call into the core.
#[derive(Debug)]
pub enum Event<W> {
    /// A waiter's outcome.
    Done(W, Outcome),
    /// A `$subscribe` sent again after a reconnect was refused, or not answered in time:
    /// its subscribers end with this error.
    ResubscribeFailed(Resubscribe, TransportError),
    /// A push for the subscribers.
    Push(Push),
    /// The connection's status changed.
    Status(ConnectionStatus),
}

/// A `$subscribe` sent again for run `epoch` of `pattern` (the subscription registry tells
/// runs apart, so that a refusal ends only the subscribers it concerns).
#[derive(Debug)]
pub struct Resubscribe {
    /// The pattern.
    pub pattern: String,
    /// The registry's run of that pattern.
    pub epoch: u64,
}

/// Counters of the client core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Answers that came after their caller gave up; dropped.
    pub late_answers: u64,
    /// Answers for ids never sent or already answered; dropped.
    pub unknown_answers: u64,
    /// CANCEL frames sent.
    pub cancels_sent: u64,
    /// NOTIFY frames received.
    pub pushes_received: u64,
    /// PING frames sent by the heartbeat.
    pub pings_sent: u64,
    /// PINGs left unanswered because the write queue was at its limit.
    pub pongs_dropped: u64,
    /// Answers handed to the request they were for.
    pub answers: u64,
}

/// A hasher for request ids: one multiplication. The ids are chosen by this side (the
/// peer can only look ids up, never insert them), so a keyed hash buys nothing here and
/// SipHash would cost more than the rest of the table operation.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u32, BuildHasherDefault<IdHasher>>;

/// One entry of the pending table: who waits, and until when.
#[derive(Debug)]
struct Entry<W> {
    waiter: Waiter<W>,
    /// When to give up on the request (CANCEL, a timeout for the caller); `None`: never.
    deadline: Option<Instant>,
    /// The stream offset just past the request: until the stream has taken that much, the
    /// server cannot have the whole request.
    end: u64,
}

#[derive(Debug)]
enum Waiter<W> {
    Caller(W),
    /// Nobody waits: `$unsubscribe` sent from a destructor, or `$subscribe` sent again for
    /// the local subscribers of a pattern (after a reconnect). The answer is discarded,
    /// except that a refused `$subscribe` ends its subscribers. Always has a deadline:
    /// nobody else would give up on it, and an unanswered one would otherwise stay in the
    /// table for good and keep a draining connection open.
    Detached(Option<Resubscribe>),
}

/// Settings of the client core (the driver takes them from its `ConnectionConfig`).
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Ids given up on without an answer past which the connection is replaced.
    pub max_abandoned_ids: usize,
    /// How long a request nobody waits for (`$subscribe` sent again) may go unanswered.
    pub subscribe_timeout: Duration,
    /// Silence before a PING.
    pub heartbeat_interval: Duration,
    /// Silence after a PING before the connection is dead.
    pub heartbeat_timeout: Duration,
}

/// The client side of one connection.
#[derive(Debug)]
pub struct ClientCore<W> {
    settings: ClientSettings,
    next_id: u32,
    pending: IdMap<Entry<W>>,
    /// Ids given up on (CANCEL sent, or refused by GOAWAY) whose answer may still come;
    /// never reused while here. An id leaves when its late answer arrives.
    abandoned: IdSet,
    /// At or before the earliest deadline in `pending` (`None` when no entry has one). It
    /// may be earlier than every deadline left (their calls were answered); firing then
    /// only finds the next one.
    timer: Option<Instant>,
    life: Life,
    goaway: Option<GoAwayCode>,
    close_requested: bool,
    /// A frame could not be queued because the writer has ended: the connection is dead
    /// even if the driver has not ended it yet, so it takes no more requests (a caller
    /// that picked it then goes elsewhere instead of finding it open again).
    writer_gone: bool,
    close_reason: Option<TransportError>,
    last_active: Instant,
    opened_at: Instant,
    /// When the connection stopped taking requests (draining or closed).
    ended_at: Option<Instant>,
    heartbeat: Heartbeat,
    counters: ClientCounters,
    events: Vec<Event<W>>,
    /// The driver must look at the core again: the timer moved earlier, a close was
    /// asked, or a draining connection ran dry.
    wake: bool,
}

impl<W> ClientCore<W> {
    /// A connection opened at `now`.
    pub fn new(settings: ClientSettings, now: Instant) -> Self {
        ClientCore {
            heartbeat: Heartbeat::new(settings.heartbeat_interval, settings.heartbeat_timeout, now),
            settings,
            next_id: 1,
            pending: IdMap::default(),
            abandoned: IdSet::default(),
            timer: None,
            life: Life::Open,
            goaway: None,
            close_requested: false,
            writer_gone: false,
            close_reason: None,
            last_active: now,
            opened_at: now,
            ended_at: None,
            counters: ClientCounters::default(),
            events: Vec::new(),
            wake: false,
        }
    }

    /// The next id: never 0, increasing, wrapping, skipping ids in flight or abandoned.
    /// Terminates because `pending` and `abandoned` are bounded far below 2^32.
    fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if id != 0
                && !self.pending.contains_key(&id)
                && (self.abandoned.is_empty() || !self.abandoned.contains(&id))
            {
                return id;
            }
        }
    }

    /// Where the next id search starts (tests of id wrapping).
    #[cfg(test)]
    pub(crate) fn set_next_id(&mut self, id: u32) {
        self.next_id = id;
    }

    /// Why a new request would be refused now, if it would.
    pub fn refusal(&self) -> Option<TransportError> {
        match self.life {
            Life::Open if self.close_requested => Some(TransportError::shutdown(Phase::Write)),
            Life::Open if self.writer_gone => Some(writer_closed()),
            Life::Open => None,
            Life::Draining => Some(TransportError::new(
                ErrorKind::GoAway { code: self.goaway },
                Phase::Write,
                Processed::No,
                "the connection takes no new requests (draining)",
            )),
            Life::Closed => Some(self.closed_error(Phase::Write, Processed::No)),
        }
    }

    /// The reason the connection closed, seen from a call in `phase`.
    pub fn closed_error(&self, phase: Phase, processed: Processed) -> TransportError {
        match &self.close_reason {
            Some(reason) => reason.with(phase, processed),
            None => TransportError::shutdown(phase),
        }
    }

    /// Whether new requests are taken.
    pub fn is_open(&self) -> bool {
        self.life == Life::Open && !self.close_requested && !self.writer_gone
    }

    /// Where the connection is in its life.
    pub fn life(&self) -> Life {
        self.life
    }

    /// Requests waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Ids given up on whose late answer may still come.
    pub fn abandoned(&self) -> usize {
        self.abandoned.len()
    }

    /// The counters.
    pub fn counters(&self) -> ClientCounters {
        ClientCounters {
            pings_sent: self.heartbeat.pings(),
            ..self.counters
        }
    }

    /// When something last happened on the connection (an answer, a request given up).
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// How long the connection took requests: from its start until it started draining or
    /// closed (or until `now`).
    pub fn useful_life(&self, now: Instant) -> Duration {
        self.ended_at
            .unwrap_or(now)
            .saturating_duration_since(self.opened_at)
    }

    /// Sends a REQUEST for `waiter`, to be given up on at `deadline`. On refusal the
    /// waiter is given back with the reason.
    #[allow(clippy::too_many_arguments)]
    pub fn send_request(
        &mut self,
        out: &mut impl Transmit,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
        deadline: Option<Instant>,
        waiter: W,
    ) -> Result<u32, (W, TransportError)> {
        if let Some(refusal) = self.refusal() {
            return Err((waiter, refusal));
        }
        let id = self.alloc_id();
        let end = match send_request(out, id, method, format, meta, body) {
            Ok(end) => end,
            Err(err) => return Err((waiter, self.send_failed(err))),
        };
        // No clock read for `last_active`: a call in flight keeps the connection from
        // being idle, and its answer (or its end) updates it.
        self.track(
            id,
            Entry {
                waiter: Waiter::Caller(waiter),
                deadline,
                end,
            },
        );
        Ok(id)
    }

    /// Sends a request whose answer nobody waits for (`$unsubscribe`, or `$subscribe` sent
    /// again with `resubscribe`); it is given up on after the subscribe timeout.
    pub fn send_detached(
        &mut self,
        out: &mut impl Transmit,
        method: &str,
        body: &[u8],
        resubscribe: Option<Resubscribe>,
        now: Instant,
    ) {
        self.send_detached_with(out, method, &Meta::new(), body, resubscribe, now);
    }

    /// [`send_detached`](Self::send_detached) with metadata (the client's credentials).
    pub fn send_detached_with(
        &mut self,
        out: &mut impl Transmit,
        method: &str,
        meta: &Meta,
        body: &[u8],
        resubscribe: Option<Resubscribe>,
        now: Instant,
    ) {
        if self.refusal().is_some() {
            return;
        }
        let id = self.alloc_id();
        match send_request(out, id, method, format::RAW, meta, body) {
            Ok(end) => {
                let entry = Entry {
                    waiter: Waiter::Detached(resubscribe),
                    deadline: Some(now + self.settings.subscribe_timeout),
                    end,
                };
                self.track(id, entry);
            }
            Err(err) => {
                self.send_failed(err);
            }
        }
    }

    /// A request could not be queued: a message too large for the codec fails alone; any
    /// other failure means the writer has ended, and the connection takes nothing more.
    fn send_failed(&mut self, err: WireError) -> TransportError {
        match err {
            WireError::Codec(err) => TransportError::invalid(err),
            _ => {
                self.writer_gone = true;
                self.wake = true;
                writer_closed()
            }
        }
    }

    /// Sends a one-way NOTIFY. A draining connection still carries it (it is no request).
    pub fn send_notify(
        &mut self,
        out: &mut impl Transmit,
        topic: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), TransportError> {
        if let Some(refusal) = self.refusal() {
            if self.life != Life::Draining {
                return Err(refusal);
            }
        }
        let sent = meta.with_metadata(|meta| {
            out.send(Envelope::Notify(NotifyFrame {
                flags: Flags::NONE,
                format,
                topic,
                meta,
                body,
            }))
        });
        sent.map(drop).map_err(|err| self.send_failed(err))
    }

    /// Records a request in the pending table; if its deadline is earlier than the timer,
    /// brings the timer forward (the driver re-arms when woken).
    fn track(&mut self, id: u32, entry: Entry<W>) {
        if let Some(deadline) = entry.deadline {
            if self.timer.is_none_or(|timer| deadline < timer) {
                self.timer = Some(deadline);
                self.wake = true;
            }
        }
        self.pending.insert(id, entry);
    }

    /// The caller gave up on `id` (dropped its future): CANCEL it, and keep the id out of
    /// use while its answer may still come. Its waiter is dropped.
    pub fn abandon(&mut self, out: &mut impl Transmit, id: u32, now: Instant) {
        if self.pending.remove(&id).is_some() {
            self.gave_up(out, id, now);
            self.after_removal();
        }
    }

    /// After `id` was taken out of the pending table unanswered: CANCEL it, keep the id out
    /// of use, and replace the connection if too many ids are given up on.
    fn gave_up(&mut self, out: &mut impl Transmit, id: u32, now: Instant) {
        self.abandoned.insert(id);
        self.last_active = now;
        if self.life != Life::Closed && out.send(Envelope::Cancel(Cancel { id })).is_ok() {
            self.counters.cancels_sent += 1;
        }
        if self.abandoned.len() >= self.settings.max_abandoned_ids && self.life == Life::Open {
            let reason = format!(
                "{} ids given up on without an answer; replacing the connection",
                self.abandoned.len()
            );
            self.enter_draining(None, reason, now);
        }
    }

    fn after_removal(&mut self) {
        if self.pending.is_empty() && self.life == Life::Draining {
            self.wake = true;
        }
    }

    fn enter_draining(&mut self, goaway: Option<GoAwayCode>, reason: String, now: Instant) {
        self.life = Life::Draining;
        self.goaway = goaway;
        self.ended_at.get_or_insert(now);
        self.events
            .push(Event::Status(ConnectionStatus::Draining { reason }));
        self.after_removal();
    }

    /// The owner asks to close now (the driver then ends the connection).
    pub fn request_close(&mut self) {
        self.close_requested = true;
        self.wake = true;
    }

    /// The owner closes: GOAWAY (last id 0, "this side sends no more requests",
    /// docs/protocol.md section 7) after what is queued, then the driver closes.
    pub fn close(&mut self, out: &mut impl Transmit) {
        // Best effort: a connection already failing has nobody to tell.
        let _ = out.send(goaway_from_client());
        self.request_close();
    }

    /// The owner drains: GOAWAY (last id 0), no new requests, close once every pending
    /// call has its answer.
    pub fn drain(&mut self, out: &mut impl Transmit, reason: &str, now: Instant) {
        if self.life != Life::Open {
            return;
        }
        self.enter_draining(None, reason.to_owned(), now);
        let _ = out.send(goaway_from_client());
    }

    /// Whether the driver should stop now, and if so why and whether to flush first.
    pub fn poll_close(&self) -> Option<(TransportError, bool)> {
        if self.close_requested {
            return Some((TransportError::shutdown(Phase::Response), true));
        }
        if self.life == Life::Draining && self.pending.is_empty() {
            return Some((
                TransportError::new(
                    ErrorKind::ConnectionClosed,
                    Phase::Response,
                    Processed::No,
                    "the connection was drained and closed",
                ),
                true,
            ));
        }
        None
    }

    /// Takes the "look at the core again" flag.
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// Whether events wait to be taken.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Swaps the events out into `into` (which should be empty; its capacity is reused
    /// next time).
    pub fn take_events(&mut self, into: &mut Vec<Event<W>>) {
        std::mem::swap(&mut self.events, into);
    }

    /// When [`ClientCore::handle_timeout`] has something to do: the earliest of the
    /// deadline timer and the heartbeat.
    pub fn poll_timeout(&self) -> Instant {
        let beat = self.heartbeat.deadline();
        match self.timer {
            Some(timer) if timer < beat => timer,
            _ => beat,
        }
    }

    /// Something arrived at `now` (any complete frame, including those of a large message
    /// still arriving): the peer is alive.
    pub fn handle_received(&mut self, now: Instant) {
        self.heard(now);
    }

    /// The heartbeat hears from the peer. A frame after our PING moves its next step to
    /// `now + interval`, earlier than the PING's timeout when the interval is the shorter:
    /// then the driver is woken to bring its timer forward.
    fn heard(&mut self, now: Instant) {
        let before = self.poll_timeout();
        self.heartbeat.received(now);
        if self.poll_timeout() < before {
            self.wake = true;
        }
    }

    /// Advances to `now`: gives up on every request whose deadline passed (CANCEL, the id
    /// kept out of use; a caller gets a timeout, a `$subscribe` sent again ends its
    /// subscribers), and runs the heartbeat. An `Err` is the connection's death.
    ///
    /// One pass over the pending table, which the in-flight window bounds; it runs when
    /// the earliest deadline comes, which for calls answered in time is rarely.
    pub fn handle_timeout(
        &mut self,
        out: &mut impl Transmit,
        now: Instant,
    ) -> Result<(), TransportError> {
        if self.timer.is_some_and(|timer| timer <= now) {
            self.expire(out, now);
        }
        match self.heartbeat.poll(now) {
            Beat::Wait => Ok(()),
            Beat::Ping(nonce) => {
                let _ = out.send(Envelope::Ping(Ping { nonce }));
                Ok(())
            }
            Beat::Dead => Err(closed(format!(
                "heartbeat: nothing received for {:?} after a PING",
                self.settings.heartbeat_timeout
            ))),
        }
    }

    fn expire(&mut self, out: &mut impl Transmit, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for (&id, entry) in &self.pending {
            match entry.deadline {
                Some(deadline) if deadline <= now => due.push(id),
                Some(deadline) => next = Some(next.map_or(deadline, |n| n.min(deadline))),
                None => {}
            }
        }
        let timeout = self.settings.subscribe_timeout;
        for id in due {
            let Some(entry) = self.pending.remove(&id) else {
                continue;
            };
            self.gave_up(out, id, now);
            match entry.waiter {
                Waiter::Caller(waiter) => self.events.push(Event::Done(
                    waiter,
                    Err(TransportError::timeout(
                        Phase::Response,
                        Processed::Maybe,
                        "no answer before the deadline; the request was cancelled",
                    )),
                )),
                Waiter::Detached(Some(resubscribe)) => {
                    let err = TransportError::timeout(
                        Phase::Response,
                        Processed::Maybe,
                        &format!(
                            "subscribing again to {:?} after a reconnect: no answer within \
                             {timeout:?}; the request was cancelled",
                            resubscribe.pattern
                        ),
                    );
                    self.events.push(Event::ResubscribeFailed(resubscribe, err));
                }
                Waiter::Detached(None) => {}
            }
        }
        self.timer = next;
        self.after_removal();
    }

    /// Handles one message read at `now`; an `Err` ends the connection (the driver then
    /// calls [`ClientCore::finish`]).
    pub fn handle_inbound(
        &mut self,
        out: &mut impl Transmit,
        message: Inbound,
        now: Instant,
    ) -> Result<(), TransportError> {
        match message {
            Inbound::Response(response) => {
                self.answer(response.id(), Ok(Answer::Response(response)));
            }
            Inbound::Error {
                id: 0,
                code,
                message,
            } => {
                return Err(TransportError::new(
                    ErrorKind::ConnectionError { code },
                    Phase::Response,
                    Processed::Maybe,
                    format!(
                        "the server closed the connection with ERROR {code}: {}",
                        one_line(&message)
                    ),
                ));
            }
            Inbound::Error { id, code, message } if code == ErrorCode::UNAVAILABLE => {
                self.answer(
                    id,
                    Err(TransportError::new(
                        ErrorKind::GoAway { code: None },
                        Phase::Response,
                        Processed::No,
                        format!(
                            "the server is unavailable (ERROR 6): {}",
                            one_line(&message)
                        ),
                    )),
                );
                if self.life == Life::Open {
                    let reason = "the server answered ERROR 6 (UNAVAILABLE)".to_owned();
                    self.enter_draining(None, reason, now);
                }
            }
            Inbound::Error { id, code, message } => {
                self.answer(id, Ok(Answer::Error(RemoteError::new(code, message))));
            }
            Inbound::Notify(push) => {
                self.counters.pushes_received += 1;
                self.events.push(Event::Push(push));
            }
            Inbound::Ping(nonce) => {
                // A PONG is not held back by the write queue's limit (it answers what was
                // read), so a peer that floods PINGs and reads little could grow the queue
                // without bound. Reading must not pause instead: the server pauses its
                // reading while its own queue is full, and if both sides did, large
                // bodies both ways would leave each waiting for the other to read. So a
                // PING that finds the queue at its limit goes unanswered (counted): the
                // peer hears from us anyway, since the queue is full of frames for it, and
                // if those cannot move either, the write-stall timeout ends the connection.
                if out.is_full() {
                    self.counters.pongs_dropped += 1;
                } else {
                    // Best effort: if the writer is gone the driver learns it separately.
                    let _ = out.send(Envelope::Pong(Pong { nonce }));
                }
            }
            Inbound::GoAway {
                last_id,
                code,
                reason,
            } => self.on_goaway(last_id, code, &reason, now),
            // PONG is life, counted by `handle_received`; REQUEST, CANCEL and their errors
            // are refused by the client-role decoder before they get here.
            _ => {}
        }
        Ok(())
    }

    /// A read failed in a way that breaks the protocol: ERROR id 0 with the code it names
    /// (best effort, then close; docs/protocol.md section 2.2).
    pub fn protocol_error(&mut self, out: &mut impl Transmit, code: ErrorCode) {
        let _ = out.send(Envelope::Error(ErrorFrame {
            id: 0,
            code,
            message: "protocol error",
        }));
    }

    /// An answer for `id`: to its waiter, or counted and dropped.
    fn answer(&mut self, id: u32, outcome: Outcome) {
        match self.pending.remove(&id).map(|entry| entry.waiter) {
            Some(Waiter::Caller(waiter)) => {
                self.counters.answers += 1;
                self.events.push(Event::Done(waiter, outcome));
            }
            Some(Waiter::Detached(Some(resubscribe))) => {
                // Only a refusal ends the subscribers: an ERROR 6 or a lost connection
                // moves the subscriptions to another connection.
                if let Ok(Answer::Error(err)) = outcome {
                    let err = TransportError::new(
                        ErrorKind::Remote { code: err.code() },
                        Phase::Response,
                        Processed::Maybe,
                        format!(
                            "subscribing again to {:?} after a reconnect failed: {err}",
                            resubscribe.pattern
                        ),
                    );
                    self.events.push(Event::ResubscribeFailed(resubscribe, err));
                }
            }
            Some(Waiter::Detached(None)) => {}
            None => {
                if self.abandoned.remove(&id) {
                    self.counters.late_answers += 1;
                } else {
                    self.counters.unknown_answers += 1;
                }
            }
        }
        self.after_removal();
    }

    /// Answers of one read are in: `now` is when the read was handled.
    pub fn handle_read_done(&mut self, now: Instant) {
        self.last_active = now;
        self.heard(now);
    }

    fn on_goaway(&mut self, last_id: u32, code: GoAwayCode, reason: &str, now: Instant) {
        let status = format!("GOAWAY {} from the server: {}", code.0, one_line(reason));
        if self.life == Life::Open {
            self.enter_draining(Some(code), status, now);
        } else {
            self.ended_at.get_or_insert(now);
            self.events
                .push(Event::Status(ConnectionStatus::Draining { reason: status }));
        }
        // Requests after `last_id` in the order we sent them (ids increase, wrapping) were
        // not accepted: fail them as not processed. The server may still answer them
        // ERROR 6, so their ids stay out of use.
        let refused: Vec<u32> = self
            .pending
            .keys()
            .copied()
            .filter(|&id| last_id == 0 || (id.wrapping_sub(last_id) as i32) > 0)
            .collect();
        let err = TransportError::new(
            ErrorKind::GoAway { code: Some(code) },
            Phase::Response,
            Processed::No,
            format!("the server sent GOAWAY (last id {last_id}) before accepting this request"),
        );
        for id in refused {
            if let Some(entry) = self.pending.remove(&id) {
                self.abandoned.insert(id);
                if let Waiter::Caller(waiter) = entry.waiter {
                    self.events.push(Event::Done(waiter, Err(err.clone())));
                }
            }
        }
        self.after_removal();
    }

    /// Ends the connection: every pending call gets `reason`, the status says closed.
    ///
    /// `written`: how far the stream was written when nothing more can be written (the
    /// writer stopped). A request that ends past it never left this side whole, so the
    /// server cannot have processed it: its caller learns so, and may send it elsewhere.
    /// `None` when bytes queued may still be written (a flush): every request may then
    /// have been processed.
    pub fn finish(&mut self, reason: &TransportError, now: Instant, written: Option<u64>) {
        self.life = Life::Closed;
        self.ended_at.get_or_insert(now);
        self.close_reason = Some(reason.clone());
        let maybe = reason.with(Phase::Response, Processed::Maybe);
        let unsent = reason.with(Phase::Write, Processed::No);
        for (_, entry) in self.pending.drain() {
            if let Waiter::Caller(waiter) = entry.waiter {
                let err = match written {
                    Some(written) if entry.end > written => unsent.clone(),
                    _ => maybe.clone(),
                };
                self.events.push(Event::Done(waiter, Err(err)));
            }
        }
        self.timer = None;
        self.events.push(Event::Status(ConnectionStatus::Closed {
            reason: reason.clone(),
        }));
    }
}

fn goaway_from_client() -> Envelope<'static> {
    Envelope::GoAway(GoAway {
        last_id: 0,
        code: GoAwayCode::SHUTTING_DOWN,
        reason: "",
    })
}

fn send_request(
    out: &mut impl Transmit,
    id: u32,
    method: &str,
    format: u8,
    meta: &Meta,
    body: &[u8],
) -> Result<u64, WireError> {
    meta.with_metadata(|meta| {
        out.send(Envelope::Request(Request {
            id,
            flags: Flags::NONE,
            format,
            method,
            meta,
            body,
        }))
    })
}

/// The writer has ended: a request that could not be queued was certainly not sent.
fn writer_closed() -> TransportError {
    TransportError::new(
        ErrorKind::ConnectionClosed,
        Phase::Write,
        Processed::No,
        "the connection's writer is closed",
    )
}

/// The connection ended; a call in flight may have been processed.
pub(crate) fn closed(message: impl Into<String>) -> TransportError {
    TransportError::new(
        ErrorKind::ConnectionClosed,
        Phase::Response,
        Processed::Maybe,
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClientSettings {
        ClientSettings {
            max_abandoned_ids: 100,
            subscribe_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(5),
        }
    }

    /// A writer that has ended: every send fails, counted.
    struct EndedWriter(u32);

    impl Transmit for EndedWriter {
        fn send(&mut self, _: Envelope<'_>) -> Result<u64, WireError> {
            self.0 += 1;
            Err(WireError::WriterClosed)
        }

        fn is_full(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_connection_whose_writer_ended_takes_no_more_requests() {
        // Found by the soak run: the core stayed open after its writer ended, so the pool
        // kept picking it, each request failing at once as "try elsewhere", in a loop that
        // never yielded to the driver that would have closed it.
        let now = Instant::now();
        let mut core: ClientCore<()> = ClientCore::new(settings(), now);
        let mut out = EndedWriter(0);
        let (_, err) = core
            .send_request(&mut out, "echo", 0, &Meta::new(), b"x", None, ())
            .expect_err("the writer has ended");
        assert!(
            err.is_not_processed() && err.is_retryable_elsewhere(),
            "{err}"
        );
        assert!(!core.is_open(), "a pool must not pick it again");
        assert!(core.take_wake(), "the driver is told to look");
        let (_, again) = core
            .send_request(&mut out, "echo", 0, &Meta::new(), b"y", None, ())
            .expect_err("refused");
        assert!(again.is_retryable_elsewhere(), "{again}");
        assert_eq!(out.0, 1, "refused without touching the writer");
        assert_eq!(core.in_flight(), 0, "nothing is left pending");
    }

    #[test]
    fn ids_increase_wrap_and_skip_zero_in_flight_and_abandoned() {
        let mut s: ClientCore<()> = ClientCore::new(settings(), Instant::now());
        s.next_id = u32::MAX - 1;
        s.pending.insert(
            u32::MAX,
            Entry {
                waiter: Waiter::Detached(None),
                deadline: None,
                end: 0,
            },
        );
        s.abandoned.insert(1);
        assert_eq!(s.alloc_id(), u32::MAX - 1);
        // u32::MAX is in flight, 0 is reserved, 1 may still get a late answer.
        assert_eq!(s.alloc_id(), 2);
        assert_eq!(s.alloc_id(), 3);
    }

    #[test]
    fn ids_start_at_one() {
        let mut s: ClientCore<()> = ClientCore::new(settings(), Instant::now());
        assert_eq!((s.alloc_id(), s.alloc_id()), (1, 2));
        s.next_id = 0;
        assert_eq!(s.alloc_id(), 1);
    }
}
