//! One client connection: the task that reads its messages, runs handlers, answers, and
//! closes it by the rules of docs/protocol.md sections 2, 4, 5 and 7.
//!
//! Reading and writing are `mcp-transport`'s wire I/O ([`FrameReader`], [`WireWriter`]),
//! shared with the client; the decisions are the transport's sans-I/O [`ServerCore`] (with
//! the one heartbeat both roles share). This file is the glue: one `select!` loop per
//! connection, generic over the byte stream, and the handlers' tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use mcp_codec::{
    Envelope, ErrorCode, ErrorFrame, Flags, GoAwayCode, Metadata, Notify, Ping, Response,
};
use mcp_format::FormatId;
use mcp_transport::proto::{Beat, Held, RequestLimits, ServerCore, ServerEvent};
use mcp_transport::{
    FrameReader, Inbound, InboundRequest, PeerIdentity, Push, Stream, WireError, WireWriter,
};
use tokio::io::AsyncRead;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::AuthRequest;
use crate::error::Status;
use crate::handler::{CancelCell, Invoke, NotifyContext, ReceivedMeta, Reply, RequestContext};
use crate::pattern::Pattern;
use crate::run::{Completion, CompletionGuard, First, poll_first};
use crate::server::Shared;
use crate::subscribe::{ConnId, Notification, Offer, SubscribeError, Subscriber};

/// The connection's writer takes a published NOTIFY unless its queue is full: a publisher
/// never waits for one slow subscriber (the NOTIFY is dropped for it and counted).
impl Subscriber for WireWriter {
    fn offer(&self, n: &Notification) -> Offer {
        if self.is_full() {
            return Offer::Full;
        }
        let notify = Notify {
            flags: Flags::NONE,
            format: n.format,
            topic: &n.topic,
            meta: Metadata::from_owned(&n.meta),
            body: &n.body,
        };
        match self.send(Envelope::Notify(notify)) {
            Ok(()) => Offer::Queued,
            // The publisher validated the message, so the only failure is a closing writer.
            Err(_) => Offer::Closed,
        }
    }
}

/// Messages already read that are handled in a row, before the loop looks at completions
/// and timers again.
const BATCH: usize = 32;

/// Why the loop ended.
#[derive(Debug)]
enum End {
    /// Draining (GOAWAY either way, or the client's end of stream) and nothing left.
    Drained,
    /// The shutdown grace ran out; the remaining requests were answered ERROR 8.
    GraceOver,
    /// The client closed, or sent ERROR id 0.
    PeerClosed,
    /// The client broke the protocol: ERROR id 0 with this code, then close.
    Protocol(ErrorCode, String),
    /// The heartbeat got no sign of life.
    Dead,
    /// The writer ended (write failed or stalled).
    WriterGone,
}

pub(crate) struct Conn {
    shared: Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    /// The client's verified TLS certificate chain, when it presented one.
    identity: Option<PeerIdentity>,
    writer: WireWriter,
    state: ServerCore<Running>,
    /// Where the handlers that waited send their completions: made when the first one is
    /// spawned and dropped when none is in flight, so that an idle connection does not
    /// hold the channel's block of slots (about 2.5 KiB).
    done: Option<Completions>,
    /// One permit per client NOTIFY being handled.
    notify_permits: Arc<Semaphore>,
    /// One permit per body byte of the client NOTIFY messages being handled, so that their
    /// memory is bounded like that of requests (`max_in_flight_bytes`).
    notify_bytes: Arc<Semaphore>,
    /// Frames seen by the reader at the last sign of life.
    frames_seen: u64,
    /// The cancellation cell of a request answered in its first poll that nothing kept:
    /// the next request takes it rather than allocating one.
    spare_cancel: Option<CancelCell>,
    /// When the shutdown grace ends, once shutdown started.
    grace: Option<Instant>,
    /// False once the client's end of stream was read.
    reading: bool,
}

/// What the router gave for a request, or the authentication hook's refusal in its place.
enum Route {
    Handler(Arc<str>, Arc<dyn Invoke>),
    Refused(Status),
}

/// The completion channel of the handlers in flight.
struct Completions {
    tx: mpsc::UnboundedSender<Completion>,
    rx: mpsc::UnboundedReceiver<Completion>,
}

/// The next completion, or never when no channel exists (no handler waits).
async fn next_completion(done: &mut Option<Completions>) -> Option<Completion> {
    match done {
        Some(done) => done.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What stops a running handler: its task's abort handle and its cancellation token; and
/// its place in the server's budget, given back when the core forgets the request
/// (answered, cancelled, or the connection closing).
#[derive(Debug)]
pub(crate) struct Running {
    abort: tokio::task::AbortHandle,
    cancel: CancelCell,
    _held: Held,
}

impl Running {
    /// Stops the handler: its future is dropped at its next poll, its token cancelled.
    fn stop(&self) {
        self.cancel.cancel();
        self.abort.abort();
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<S: Stream>(shared: Arc<Shared>, stream: S, peer: SocketAddr, id: ConnId) {
    let identity = stream.peer_identity();
    let (read_half, write_half) = stream.into_halves();
    let wire = shared.wire_config();
    let reader = FrameReader::new(read_half, &wire);
    let writer = WireWriter::spawn(write_half, &wire);
    let config = &shared.config;
    let mut conn = Conn {
        id,
        peer,
        identity,
        writer,
        state: ServerCore::new(
            RequestLimits {
                max_in_flight: config.max_in_flight,
                max_in_flight_bytes: config.max_in_flight_bytes,
            },
            (config.heartbeat_interval, config.heartbeat_timeout),
            Instant::now().into_std(),
        )
        .with_first_frame_timeout(config.first_frame_timeout, Instant::now().into_std())
        .with_budget(shared.budget.clone()),
        done: None,
        notify_permits: Arc::new(Semaphore::new(
            config.max_notify_in_flight.min(Semaphore::MAX_PERMITS),
        )),
        notify_bytes: Arc::new(Semaphore::new(notify_byte_budget(
            config.max_in_flight_bytes,
        ))),
        frames_seen: 0,
        spare_cancel: None,
        grace: None,
        reading: true,
        shared,
    };
    tracing::debug!(conn = id, %peer, "connection accepted");
    let end = conn.run(reader).await;
    conn.close(end).await;
}

impl Conn {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: FrameReader<R>) -> End {
        // The futures that outlive one turn of the loop are made once: building, polling
        // and dropping them on every message cost more than the request itself.
        let mut shutdown = self.shared.shutdown.subscribe();
        let server_shutdown = async move {
            loop {
                if let Some(grace) = *shutdown.borrow_and_update() {
                    return (grace, "server shutting down");
                }
                if shutdown.changed().await.is_err() {
                    // The server's state holds the sender: it outlives the connection.
                    std::future::pending::<()>().await;
                }
            }
        };
        // `max_connection_age`: the connection says GOAWAY (code 0) when it is that old, so
        // that long-lived clients move to new replicas; then it drains as at shutdown.
        let config = &self.shared.config;
        let aged_at = config
            .max_connection_age
            .map(|age| Instant::now() + jittered(age, self.id));
        let age_grace = config.max_connection_age_grace;
        let aged = async move {
            match aged_at {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    (at + age_grace, "max connection age")
                }
                None => std::future::pending().await,
            }
        };
        let shutdown = async move {
            tokio::select! {
                ended = server_shutdown => ended,
                ended = aged => ended,
            }
        };
        tokio::pin!(shutdown);
        let writer = self.writer.clone();
        let closed = writer.closed();
        tokio::pin!(closed);
        // The heartbeat's timer is armed at a deadline no later than the heartbeat's, and
        // moved only when it fires or when the heartbeat's deadline comes earlier: the
        // deadline moves with every message, the timer not.
        let mut beat_at = Instant::from_std(self.state.poll_timeout());
        let beat = tokio::time::sleep_until(beat_at);
        tokio::pin!(beat);
        let grace = tokio::time::sleep_until(beat_at);
        tokio::pin!(grace);
        loop {
            if self.state.drained() {
                return End::Drained;
            }
            let deadline = Instant::from_std(self.state.poll_timeout());
            if deadline < beat_at {
                beat_at = deadline;
                beat.as_mut().reset(beat_at);
            }
            // Stop reading while the client does not read its answers: the queue stays
            // bounded and TCP pushes back on the client.
            let full = self.writer.is_full();
            tokio::select! {
                biased;
                Some(done) = next_completion(&mut self.done) => self.complete(done),
                (at, why) = &mut shutdown, if self.grace.is_none() => {
                    self.begin_shutdown(at, why);
                    grace.as_mut().reset(at);
                }
                () = &mut grace, if self.grace.is_some() => {
                    self.grace_over();
                    return End::GraceOver;
                }
                _ = &mut closed => return End::WriterGone,
                () = &mut beat, if self.reading => {
                    if let Some(end) = self.beat(&reader) {
                        return end;
                    }
                    beat_at = Instant::from_std(self.state.poll_timeout());
                    beat.as_mut().reset(beat_at);
                }
                ready = self.writer.ready(), if full && self.reading => {
                    if ready.is_err() {
                        return End::WriterGone;
                    }
                }
                read = reader.next(), if self.reading && !full => {
                    match read {
                        Ok(Some(message)) => {
                            if let Some(end) = self.received(&mut reader, message) {
                                return end;
                            }
                        }
                        Ok(None) => {
                            // End of stream: the client sends nothing more, which is a
                            // GOAWAY in all but name. What is in flight is still answered
                            // (a half-closed client can read), then the connection closes.
                            self.reading = false;
                            self.state.peer_goaway();
                        }
                        Err(err) => return self.read_error(err),
                    }
                }
            }
        }
    }

    fn read_error(&self, err: WireError) -> End {
        match err.error_code() {
            Some(code) => End::Protocol(code, err.to_string()),
            None => {
                tracing::debug!(conn = self.id, error = %err, "read failed");
                End::PeerClosed
            }
        }
    }

    /// Any complete frame received counts as life.
    fn alive<R: AsyncRead + Unpin>(&mut self, reader: &FrameReader<R>, now: Instant) {
        self.frames_seen = reader.frames();
        self.state.received(now.into_std());
    }

    /// Handles a message read, then those already decoded behind it, as the loop would
    /// (stopping where it would not read on), without going around it for each.
    fn received<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        message: Inbound,
    ) -> Option<End> {
        // One clock read for the batch: its messages arrived with the same read, and a
        // request's deadline counts from then (no later than it did from its handling).
        let now = Instant::now();
        let mut message = message;
        let mut left = BATCH;
        loop {
            self.alive(reader, now);
            // A message whose frames came over several reads arrived with its head frame.
            let arrived = reader.message_started().unwrap_or(now);
            if let Some(end) = self.inbound(message, arrived, now) {
                return Some(end);
            }
            left = left.saturating_sub(1);
            // After a batch, completions and timers get their turn. Once the connection is
            // drained it closes at the next turn, so what was already read behind the
            // GOAWAY is handled first: requests there are answered ERROR 6
            // (docs/protocol.md section 7), not dropped unanswered.
            let drained = self.state.drained();
            if (left == 0 && !drained) || !self.reading || self.writer.is_full() {
                return None;
            }
            message = match reader.try_next() {
                Ok(Some(next)) => next,
                Ok(None) => return None,
                Err(err) => return Some(self.read_error(err)),
            };
        }
    }

    fn beat<R: AsyncRead + Unpin>(&mut self, reader: &FrameReader<R>) -> Option<End> {
        // Frames of a long multi-frame message arrive without `next` returning: count them.
        if reader.frames() != self.frames_seen {
            self.alive(reader, Instant::now());
            return None;
        }
        match self.state.handle_timeout(Instant::now().into_std()) {
            Beat::Wait => None,
            Beat::Ping(nonce) => {
                self.send(Envelope::Ping(Ping { nonce }));
                None
            }
            Beat::Dead => Some(End::Dead),
        }
    }

    /// One message read: the core answers what the protocol answers by itself and says
    /// what needs this server (a handler, the subscription registry, the health table).
    fn inbound(&mut self, message: Inbound, arrived: Instant, now: Instant) -> Option<End> {
        // The hook decides before routing: a refused request takes the place of a routed
        // one, so the core still applies every rule before it (a duplicate id, GOAWAY, the
        // in-flight limits, the deadline) and the refusal is answered by its id.
        let refusal = match (&message, &self.shared.authenticator) {
            (Inbound::Request(request), Some(hook)) => hook
                .check(&AuthRequest {
                    name: request.method(),
                    notify: false,
                    meta: request.meta(),
                    peer_addr: self.peer,
                    peer_identity: self.identity.as_ref(),
                })
                .err(),
            _ => None,
        };
        let router = &self.shared.router;
        let mut out = self.shared.metrics.transmit(&self.writer);
        let event = self.state.handle_inbound(
            &mut out,
            message,
            arrived.into_std(),
            now.into_std(),
            |method| match refusal {
                Some(status) => Some(Route::Refused(status)),
                None => router
                    .handler(method)
                    .map(|(m, h)| Route::Handler(m.clone(), h.clone())),
            },
        )?;
        match event {
            ServerEvent::Run {
                request,
                route: Route::Handler(method, handler),
                deadline,
                held,
            } => self.start(
                request,
                (method, handler),
                deadline.map(Instant::from_std),
                held,
            ),
            ServerEvent::Run {
                request,
                route: Route::Refused(status),
                ..
            } => {
                self.shared
                    .stats
                    .auth_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.refused(status.code());
                // Answered now: never recorded as in flight (its place in the server's
                // budget is given back as the event is dropped), like a handler done in
                // its first poll.
                self.answer(request.id(), request.format(), Err(status));
            }
            ServerEvent::Subscribe(request) => self.subscribe(&request, true),
            ServerEvent::Unsubscribe(request) => self.subscribe(&request, false),
            ServerEvent::Health(request) => self.health(&request),
            ServerEvent::Notify(push) => self.notify(push),
            ServerEvent::Stop(request) => request.stop(),
            ServerEvent::Protocol(code, message) => return Some(End::Protocol(code, message)),
            ServerEvent::PeerClosed => return Some(End::PeerClosed),
            // A kind of event a later core adds: nothing this server knows to do.
            _ => {}
        }
        None
    }

    fn start(
        &mut self,
        request: InboundRequest,
        (method, handler): (Arc<str>, Arc<dyn Invoke>),
        deadline: Option<Instant>,
        held: Held,
    ) {
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        let id = request.id();
        let format = request.format();
        let body_len = request.body().len();
        let span = crate::trace::request_span(self.id, id, &method, request.meta());
        let observed = self.shared.metrics.start(&method);
        let cancel = self.spare_cancel.take().unwrap_or_default();
        let ctx = RequestContext {
            id,
            method,
            format: FormatId::new(format),
            meta: ReceivedMeta::new(request.meta().clone()),
            deadline,
            peer: self.peer,
            identity: self.identity.clone(),
            cancel: cancel.clone(),
        };
        let body = request.into_body();
        // The handler's first poll runs here, in the connection's task: most handlers
        // finish without waiting, and are then answered without a task, a timer and a
        // round trip through the completion channel. Only one that waits is spawned.
        let first = if self.shared.config.run_handlers_inline {
            span.in_scope(|| poll_first(handler, ctx, body))
        } else {
            // The handler itself (a closure, say) runs in its task too.
            First::Pending(Box::pin(async move { handler.invoke(ctx, body).await }))
        };
        let call = match first {
            First::Pending(call) => call,
            First::Ready(result) => {
                if !self.writer.is_full() {
                    // Nothing ran it but this poll: the request is done, and was never
                    // recorded as in flight (a CANCEL for it is one of an unknown id).
                    observed.finish(&result);
                    self.answer(id, format, result);
                    self.spare_cancel = cancel.into_unused();
                    return;
                }
                // Answers wait while the client's queue is full: through the task, as for
                // a handler that waited.
                Box::pin(std::future::ready(result))
            }
        };
        let generation = self.state.next_generation();
        let done = self.done.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            Completions { tx, rx }
        });
        let mut guard = CompletionGuard {
            tx: done.tx.clone(),
            id,
            generation,
            format,
            sent: false,
        };
        let writer = self.writer.clone();
        let task_cancel = cancel.clone();
        let task = tokio::spawn(
            async move {
                let result = match deadline {
                    None => call.await,
                    Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
                        Ok(result) => result,
                        Err(_) => {
                            task_cancel.cancel();
                            Err(Status::new(
                                ErrorCode::DEADLINE_EXCEEDED,
                                "the deadline passed while the request was handled",
                            ))
                        }
                    },
                };
                observed.finish(&result);
                // Answers wait while the client's queue is full, so that a client that does
                // not read cannot make the server buffer without bound.
                let _ = writer.ready().await;
                guard.send(result);
            }
            .instrument(span),
        );
        // The completion is only read by this task's loop, after `start` has recorded it.
        let running = Running {
            abort: task.abort_handle(),
            cancel,
            _held: held,
        };
        self.state.start(id, body_len, generation, running);
    }

    /// `$health`: the body is a service name, 0..=255 bytes of UTF-8 whatever the format
    /// byte; the answer one word in format 0 (docs/protocol.md section 7).
    fn health(&mut self, request: &InboundRequest) {
        let id = request.id();
        let service = match std::str::from_utf8(request.body()) {
            Ok(service) if service.len() <= 255 => service,
            _ => {
                let message = "a $health body is a service name: at most 255 bytes of UTF-8";
                self.send_error(id, ErrorCode::MALFORMED, message);
                return;
            }
        };
        let status = self.shared.health.status(service);
        let word = Bytes::from_static(status.as_str().as_bytes());
        self.send_reply(id, mcp_codec::format::RAW, &Reply::new(word));
    }

    fn subscribe(&mut self, request: &InboundRequest, subscribe: bool) {
        let id = request.id();
        let pattern = match Pattern::parse(request.body()) {
            Ok(pattern) => pattern,
            Err(err) => {
                self.send_error(id, ErrorCode::MALFORMED, err.as_str());
                return;
            }
        };
        let format = request.format();
        let registry = &self.shared.registry;
        if !subscribe {
            registry.unsubscribe(self.id, &pattern);
            self.send_reply(id, format, &Reply::empty());
            return;
        }
        let writer = &self.writer;
        let result = registry.subscribe(
            self.id,
            writer,
            pattern,
            self.shared.config.max_subscriptions,
            || send_reply(writer, id, format, &Reply::empty()),
        );
        if let Err(SubscribeError::TooMany) = result {
            self.send_error(
                id,
                ErrorCode::OVERLOADED,
                "too many subscriptions on this connection",
            );
        }
    }

    fn notify(&mut self, push: Push) {
        let stats = &self.shared.stats;
        if let Some(hook) = &self.shared.authenticator {
            let request = AuthRequest {
                name: push.topic(),
                notify: true,
                meta: push.meta(),
                peer_addr: self.peer,
                peer_identity: self.identity.as_ref(),
            };
            if hook.check(&request).is_err() {
                stats.auth_refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let Some(handler) = self.shared.router.notify_handler(push.topic()).cloned() else {
            stats.notifies_unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(permit) = self.notify_permits.clone().try_acquire_owned() else {
            stats.notifies_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A body larger than the whole budget takes all of it, so that it can still be
        // handled when nothing else is.
        let budget = notify_byte_budget(self.shared.config.max_in_flight_bytes);
        let bytes = u32::try_from(push.body().len().min(budget)).unwrap_or(u32::MAX);
        let Ok(bytes) = self.notify_bytes.clone().try_acquire_many_owned(bytes) else {
            stats.notifies_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ctx = NotifyContext {
            topic: push.topic().into(),
            format: FormatId::new(push.format()),
            meta: ReceivedMeta::new(push.meta().clone()),
            peer: self.peer,
            identity: self.identity.clone(),
            conn: self.writer.clone(),
            max_message_len: self.shared.config.max_message_len,
        };
        let body = push.into_body();
        tokio::spawn(async move {
            let _permits = (permit, bytes);
            handler.notify(ctx, body).await;
        });
    }

    fn complete(&mut self, done: Completion) {
        if self.state.finish(done.id, done.generation) {
            self.answer(done.id, done.format, done.result);
        }
        // Otherwise cancelled (or stopped): docs/protocol.md section 7 says nothing is sent
        // for it.
        if self.state.in_flight() == 0 {
            // Nothing recorded is left to complete: what may still come is a stopped
            // handler's, which nobody wants. The next handler that waits makes a new one.
            self.done = None;
        }
    }

    fn answer(&self, id: u32, format: u8, result: Result<Reply, Status>) {
        match result {
            Ok(reply) => self.send_reply(id, format, &reply),
            Err(status) => self.send_error(id, status.code(), status.message()),
        }
    }

    fn begin_shutdown(&mut self, grace: Instant, reason: &str) {
        self.grace = Some(grace);
        self.state
            .go_away(&mut &self.writer, GoAwayCode::SHUTTING_DOWN, reason);
    }

    fn grace_over(&mut self) {
        let stopped = self.state.abort_all(
            &mut &self.writer,
            ErrorCode::CANCELLED,
            "the server shut down before the request completed",
        );
        for request in stopped {
            request.stop();
        }
    }

    fn send_reply(&self, id: u32, format: u8, reply: &Reply) {
        send_reply(&self.writer, id, format, reply);
    }

    fn send_error(&self, id: u32, code: ErrorCode, message: &str) {
        send_error(&self.writer, id, code, message);
    }

    fn send(&self, envelope: Envelope<'_>) {
        // A closed writer ends the loop through `closed()`; nothing to do here.
        let _ = self.writer.send(envelope);
    }

    async fn close(mut self, end: End) {
        let stats = &self.shared.stats;
        match &end {
            End::Protocol(code, message) => {
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = self.id, peer = %self.peer, %code, message, "protocol error, closing");
                send_error(&self.writer, 0, *code, message);
            }
            End::Dead => {
                stats.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = self.id, peer = %self.peer, "no sign of life, closing");
            }
            _ => tracing::debug!(conn = self.id, peer = %self.peer, ?end, "closing"),
        }
        // Nobody is left to answer: stop what still runs.
        for (_, request) in self.state.take_all() {
            request.stop();
        }
        self.shared.registry.remove_conn(self.id);
        if let Some(done) = &mut self.done {
            done.rx.close();
        }
        match end {
            // A dead peer reads nothing; do not wait for its buffers.
            End::Dead | End::WriterGone => self.writer.abort(),
            _ => {
                // Flush what is queued (each write bounded by the stall timeout), then shut
                // the write side down.
                self.writer.close();
                let bound = self.shared.config.write_stall_timeout * 2;
                if tokio::time::timeout(bound, self.writer.closed())
                    .await
                    .is_err()
                {
                    self.writer.abort();
                }
            }
        }
    }
}

/// `age` give or take 10%, spread by the connection's id, so that connections accepted
/// together do not all go away together.
fn jittered(age: std::time::Duration, id: ConnId) -> std::time::Duration {
    // A per-mille offset in -100..=100 from a multiplicative hash of the id.
    let spread = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 201;
    let per_mille = 900 + spread;
    age.mul_f64(per_mille as f64 / 1000.0)
}

/// The byte budget of client NOTIFY bodies: `max_in_flight_bytes`, within what one
/// semaphore acquisition can take.
fn notify_byte_budget(max_in_flight_bytes: usize) -> usize {
    max_in_flight_bytes.clamp(1, u32::MAX as usize)
}

fn send_reply(writer: &WireWriter, id: u32, format: u8, reply: &Reply) {
    let response = Response {
        id,
        flags: Flags::NONE,
        format,
        meta: Metadata::from_owned(&reply.meta),
        body: &reply.body,
    };
    match writer.send(Envelope::Response(response)) {
        Ok(()) | Err(WireError::WriterClosed) => {}
        // The handler's answer cannot be encoded (a bad metadata key, a body past the
        // maximum message size): the request failed on the server's side.
        Err(err) => send_error(
            writer,
            id,
            ErrorCode::INTERNAL,
            &format!("the answer cannot be sent: {err}"),
        ),
    }
}

fn send_error(writer: &WireWriter, id: u32, code: ErrorCode, message: &str) {
    let _ = writer.send(Envelope::Error(ErrorFrame { id, code, message }));
}
