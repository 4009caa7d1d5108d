//! One client connection: the task that reads its messages, runs handlers, answers, and
//! closes it by the rules of docs/protocol.md sections 2, 4, 5 and 7.
//!
//! Reading and writing are `mcp-transport`'s wire I/O ([`FrameReader`], [`WireWriter`]),
//! shared with the client; the decisions are the transport's sans-I/O [`ServerCore`] (with
//! the one heartbeat both roles share). This file is the glue: one `select!` loop per
//! connection, generic over the byte stream, its timers and its close. What each message
//! asks of the server is `dispatch.rs`; the handlers' tasks are `run.rs`.

mod dispatch;
mod run;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mcp_codec::{Envelope, ErrorCode, ErrorFrame, Flags, GoAwayCode, Metadata, Ping, Response};
use mcp_transport::proto::{Beat, RequestLimits, ServerCore};
use mcp_transport::{FrameReader, Inbound, PeerIdentity, Stream, WireError, WireWriter};
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::handler::{CancelCell, Reply};
use crate::server::Shared;
use crate::subscribe::ConnId;
use dispatch::notify_byte_budget;
use run::{Completions, Running, next_completion};

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

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<S: Stream>(shared: Arc<Shared>, stream: S, peer: SocketAddr, id: ConnId) {
    let identity = stream.peer_identity();
    let (read_half, write_half) = stream.into_halves();
    let wire = shared.wire_config();
    let reader = FrameReader::new(read_half, &wire).with_partial_budget(&shared.budget);
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
