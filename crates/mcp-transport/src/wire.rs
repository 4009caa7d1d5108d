//! Reading and writing frames on one byte stream, for clients and servers alike (the
//! seed's split reader/writer, 4.2, with reused buffers, 3.3).
//!
//! - [`FrameReader`] reads into one `BytesMut` and decodes every complete frame of each
//!   read before reading again; single-frame bodies are zero-copy slices of it. A reader
//!   with nothing buffered holds no buffer while it waits: it waits in a read into the
//!   stack and allocates only for the bytes that come, so that an idle connection costs
//!   (almost) no memory (issue 11: 5,000 idle connections held 64 KiB of read buffer each).
//! - [`WireWriter`] is a cloneable handle to a write queue drained by one task. Senders
//!   encode their whole message into the queue's `BytesMut` synchronously (so a message is
//!   either wholly queued or not at all, and a dropped future never leaves half a frame);
//!   the task swaps the buffer out and writes everything queued since its last write in one
//!   go. A write that makes no progress for the stall timeout ends the stream. Its buffers
//!   are allocated when there is something to write and freed when everything was written.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use mcp_codec::Envelope;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio_util::codec::Decoder;

use crate::codec::{McpCodec, encode_envelope};
use crate::config::WireConfig;
use crate::error::WireError;
use crate::message::Inbound;
use crate::proto::{PartialHold, SharedBudget};

/// Free space below which the reader grows its buffer before reading, so that reads are
/// never tiny; also the size of the stack buffer an idle reader waits in, and of the heap
/// buffer the bytes it gets are moved to when fewer came.
const MIN_READ_SPACE: usize = 4096;
/// The least a writer's queue allocates when a message is queued into an empty one.
const WRITE_BUF_MIN: usize = 4096;
/// The most a writer's queue allocates up front, from the size of the last batch: a
/// larger batch grows its buffer as it comes, so that one large message does not make
/// every later queue large.
const WRITE_BUF_HINT_MAX: usize = 256 * 1024;

/// Decodes messages from the read half of a stream.
///
/// [`FrameReader::next`] is cancel-safe: bytes read are kept in the buffer, so it can sit
/// in a `tokio::select!` next to timers.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: McpCodec,
    read_size: usize,
    eof: bool,
    /// When the head frame of the message being reassembled was seen (only for a message
    /// that spans reads: one clock read per such message).
    started: Option<tokio::time::Instant>,
    /// `started` of the message last returned.
    last_started: Option<tokio::time::Instant>,
    /// The bytes of a message still arriving, held in a budget shared with other readers.
    partial: Option<PartialHold>,
    /// Messages dropped because `partial` could not hold them.
    shed: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `io` with the role, size limit and buffer size of `config`. The
    /// buffer is allocated when the first bytes arrive.
    pub fn new(io: R, config: &WireConfig) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            codec: McpCodec::with_config(config),
            read_size: config.read_buffer.max(MIN_READ_SPACE),
            eof: false,
            started: None,
            last_started: None,
            partial: None,
            shed: 0,
        }
    }

    /// Holds the bytes of a message still arriving in `budget`'s byte count (a server's
    /// budget shared by every connection). A message that no longer fits is dropped and its
    /// remaining frames skipped: a REQUEST comes out as [`Inbound::RequestShed`] with its id,
    /// to be answered ERROR 5; a NOTIFY is dropped and counted in [`FrameReader::shed`].
    /// Checked after each read, so a message may pass the budget by one read's bytes.
    pub fn with_partial_budget(mut self, budget: &SharedBudget) -> Self {
        self.partial = Some(PartialHold::new(budget));
        self
    }

    /// Messages dropped because the partial budget could not hold them.
    pub fn shed(&self) -> u64 {
        self.shed
    }

    /// Decodes what is buffered, noting when a message that continues past it began.
    #[inline]
    fn decode(&mut self) -> Result<Option<Inbound>, WireError> {
        match self.codec.decode(&mut self.buf)? {
            Some(message) => {
                if let Some(hold) = &mut self.partial {
                    if hold.held() != 0 && !self.codec.in_message() {
                        hold.resize(0);
                    }
                }
                self.last_started = self.started.take();
                Ok(Some(message))
            }
            None => {
                if !self.codec.in_message() {
                    // No message under way (one being skipped may just have ended): the
                    // next one's start is its own head frame's arrival.
                    self.started = None;
                    return Ok(None);
                }
                if self.started.is_none() {
                    self.started = Some(tokio::time::Instant::now());
                }
                let len = self.codec.partial_len();
                match self.partial.as_mut().map(|hold| hold.resize(len)) {
                    Some(false) => self.shed_partial(),
                    _ => Ok(None),
                }
            }
        }
    }

    /// Drops the message arriving, which its hold could not keep; its next frames are
    /// skipped.
    #[cold]
    fn shed_partial(&mut self) -> Result<Option<Inbound>, WireError> {
        if let Some(hold) = &mut self.partial {
            hold.resize(0);
        }
        self.started = None;
        self.shed += 1;
        Ok(self.codec.abandon().map(|id| Inbound::RequestShed { id }))
    }

    /// For the message last returned, when its head frame was seen, if its frames spanned
    /// more than one read (`None`: it came whole with the read that returned it). A
    /// request's deadline counts from there (docs/protocol.md section 4.2).
    pub fn message_started(&self) -> Option<tokio::time::Instant> {
        self.last_started
    }

    /// The next message, decoding what is buffered before reading again. `Ok(None)` when
    /// the peer closed the stream at a message boundary.
    pub async fn next(&mut self) -> Result<Option<Inbound>, WireError> {
        loop {
            if let Some(message) = self.decode()? {
                return Ok(Some(message));
            }
            if self.eof {
                return self.codec.decode_eof(&mut self.buf);
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// Reads once, into the buffer; 0 at end of stream.
    ///
    /// A reader with nothing buffered keeps no buffer while it waits: it polls the read
    /// into a stack buffer that lives for that one poll, and allocates only once bytes
    /// came (what an idle connection holds is then its task and its socket). A read that
    /// filled the stack buffer is followed by reads straight into a `read_buffer`-sized
    /// heap buffer, kept for as long as the bytes keep coming.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() && self.buf.capacity() < MIN_READ_SPACE {
            // Not worth reading into (or nothing at all): give it back.
            self.buf = BytesMut::new();
        }
        if self.buf.capacity() == 0 {
            let mut scratch = [MaybeUninit::<u8>::uninit(); MIN_READ_SPACE];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let got = read.filled();
            if !got.is_empty() {
                // A full stack buffer says more is coming: make room for it at once.
                let want = if got.len() == MIN_READ_SPACE {
                    self.read_size
                } else {
                    MIN_READ_SPACE
                };
                self.buf.reserve(want);
                self.buf.extend_from_slice(got);
            }
            return Poll::Ready(Ok(got.len()));
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ_SPACE {
            // Reclaims the front of the buffer when every frame split off it is gone.
            self.buf.reserve(self.read_size);
        }
        let read = {
            let read = self.io.read_buf(&mut self.buf);
            tokio::pin!(read);
            read.poll(cx)
        };
        if read.is_pending() && self.buf.is_empty() {
            // Everything read was decoded and the peer is quiet: wait without a buffer
            // (the bodies split off it keep their part of it for as long as they live).
            self.buf = BytesMut::new();
        }
        read
    }

    /// The next message already buffered, without reading.
    pub fn try_next(&mut self) -> Result<Option<Inbound>, WireError> {
        self.decode()
    }

    /// Complete frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.codec.frames()
    }

    /// Frames of unknown types skipped so far.
    pub fn unknown_frames(&self) -> u64 {
        self.codec.unknown_frames()
    }

    /// Bytes received but not yet decoded (part of a frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The underlying read half.
    pub fn get_ref(&self) -> &R {
        &self.io
    }
}

/// Why a [`WireWriter`]'s task ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WriterExit {
    /// [`WireWriter::close`]: everything queued was written and the stream shut down.
    Closed,
    /// [`WireWriter::abort`] (or every handle dropped): queued bytes were discarded.
    Aborted,
    /// Writing failed or stalled.
    Failed(Arc<WireError>),
}

/// Counters of a [`WireWriter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Messages and control frames queued.
    pub queued: u64,
    /// Batches written (each is one coalesced write of everything queued since the last).
    pub batches: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The most bytes the queue held at once (not counting the batch being written): how
    /// well the limit held against what the peer made this side queue.
    pub peak_queued: usize,
}

#[derive(Debug)]
struct WriterState {
    /// What is queued; no allocation while nothing is (the task takes the buffer to write
    /// it and frees it after).
    buf: BytesMut,
    /// How much an empty queue allocates for its first message: the size of the last
    /// batch (so that a busy connection does not grow its buffer anew each time), within
    /// `WRITE_BUF_MIN..=WRITE_BUF_HINT_MAX`.
    hint: usize,
    /// Bytes ever queued: the stream offset just past the last message queued.
    enqueued: u64,
    closing: bool,
    aborted: bool,
    exited: bool,
    stats: WriterStats,
}

#[derive(Debug)]
struct WriterShared {
    state: Mutex<WriterState>,
    /// Wakes the task: bytes queued, close or abort.
    wake: Notify,
    /// Wakes the task out of a write in progress on abort.
    abort: Notify,
    /// Wakes senders waiting in [`WireWriter::ready`].
    space: Notify,
    exit: watch::Sender<Option<WriterExit>>,
    /// Bytes queued, readable without the lock (callers check it before every request).
    queued: AtomicUsize,
    /// Bytes handed to the stream so far (the stream offset written up to).
    written: std::sync::atomic::AtomicU64,
    max_message_len: usize,
    limit: usize,
}

/// A cloneable handle to the write queue of one stream; its task is spawned by
/// [`WireWriter::spawn`].
///
/// Dropping every handle aborts the task (queued bytes are discarded); call
/// [`WireWriter::close`] first to flush them.
#[derive(Debug)]
pub struct WireWriter {
    shared: Arc<WriterShared>,
    /// Counts the handles, so that the last one's drop aborts the task.
    _handle: Arc<HandleGuard>,
}

impl Clone for WireWriter {
    fn clone(&self) -> Self {
        WireWriter {
            shared: self.shared.clone(),
            _handle: self._handle.clone(),
        }
    }
}

#[derive(Debug)]
struct HandleGuard(Arc<WriterShared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        abort(&self.0);
    }
}

fn lock(shared: &WriterShared) -> MutexGuard<'_, WriterState> {
    // A panic while holding this lock cannot leave the state inconsistent (every update is
    // a single assignment), so a poisoned lock is used as is.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn abort(shared: &WriterShared) {
    let mut state = lock(shared);
    state.aborted = true;
    state.buf = BytesMut::new();
    shared.queued.store(0, Ordering::Release);
    drop(state);
    shared.wake.notify_one();
    shared.abort.notify_one();
}

impl WireWriter {
    /// Spawns the writer task for `io` on the current tokio runtime.
    pub fn spawn<W>(io: W, config: &WireConfig) -> WireWriter
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (exit, _) = watch::channel(None);
        let shared = Arc::new(WriterShared {
            state: Mutex::new(WriterState {
                buf: BytesMut::new(),
                hint: WRITE_BUF_MIN,
                enqueued: 0,
                closing: false,
                aborted: false,
                exited: false,
                stats: WriterStats::default(),
            }),
            wake: Notify::new(),
            abort: Notify::new(),
            space: Notify::new(),
            exit,
            queued: AtomicUsize::new(0),
            written: std::sync::atomic::AtomicU64::new(0),
            max_message_len: config.max_message_len,
            limit: config.write_queue_limit,
        });
        tokio::spawn(run(shared.clone(), io, config.write_stall_timeout));
        WireWriter {
            _handle: Arc::new(HandleGuard(shared.clone())),
            shared,
        }
    }

    /// Queues `envelope`: one frame, or a head frame and CONTINUATION frames when its body
    /// does not fit in one. The whole message is queued at once, never part of it.
    ///
    /// This does not wait for queue space; senders of requests and messages that should be
    /// held back by a slow peer await [`WireWriter::ready`] first. Control frames answering
    /// what was read (PONG) are sent without waiting, so a reader must bound them itself to
    /// keep the queue bounded against a peer that sends PINGs and does not read: the
    /// client's driver leaves a PING unanswered while [`WireWriter::is_full`]; `mcp-server`
    /// stops reading while its queue is full.
    pub fn send(&self, envelope: Envelope<'_>) -> Result<(), WireError> {
        self.send_marked(envelope).map(drop)
    }

    /// [`WireWriter::send`], answering the stream offset just past the message: once
    /// [`WireWriter::written_bytes`] reaches it, the whole message was handed to the stream;
    /// if the writer ends before, the peer cannot have received all of it.
    pub fn send_marked(&self, envelope: Envelope<'_>) -> Result<u64, WireError> {
        let mut state = lock(&self.shared);
        if state.closing || state.aborted || state.exited {
            return Err(WireError::WriterClosed);
        }
        let was_empty = state.buf.is_empty();
        if state.buf.capacity() == 0 {
            let hint = state.hint;
            state.buf.reserve(hint);
        }
        let before = state.buf.len();
        encode_envelope(envelope, &mut state.buf, self.shared.max_message_len)?;
        state.enqueued += (state.buf.len() - before) as u64;
        let end = state.enqueued;
        state.stats.queued += 1;
        state.stats.peak_queued = state.stats.peak_queued.max(state.buf.len());
        self.shared.queued.store(state.buf.len(), Ordering::Release);
        drop(state);
        if was_empty {
            // The task drains everything it finds, so it only needs waking when the queue
            // goes from empty to not empty.
            self.shared.wake.notify_one();
        }
        Ok(end)
    }

    /// Bytes handed to the stream so far (see [`WireWriter::send_marked`]).
    pub fn written_bytes(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Waits until the queue holds less than the configured limit (or the writer ended).
    pub async fn ready(&self) -> Result<(), WireError> {
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = lock(&self.shared);
                if state.closing || state.aborted || state.exited {
                    return Err(WireError::WriterClosed);
                }
                if state.buf.len() < self.shared.limit {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Whether a message queued now would wait for queue space.
    pub fn is_full(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) >= self.shared.limit
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Counters.
    pub fn stats(&self) -> WriterStats {
        lock(&self.shared).stats
    }

    /// Writes what is queued, then shuts the stream's write side down and ends the task.
    /// Later sends fail.
    pub fn close(&self) {
        lock(&self.shared).closing = true;
        self.shared.wake.notify_one();
        self.shared.space.notify_waiters();
    }

    /// Discards what is queued and ends the task at once.
    pub fn abort(&self) {
        abort(&self.shared);
        self.shared.space.notify_waiters();
    }

    /// How the task ended, if it has.
    pub fn exit(&self) -> Option<WriterExit> {
        self.shared.exit.borrow().clone()
    }

    /// Waits for the task to end.
    pub async fn closed(&self) -> WriterExit {
        let mut rx = self.shared.exit.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or(WriterExit::Aborted),
            Err(_) => WriterExit::Aborted,
        }
    }

    /// Whether two handles drive the same stream.
    pub fn same_as(&self, other: &WireWriter) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

enum Step {
    Yield,
    Write,
    Wait,
    Exit(WriterExit),
}

async fn run<W: AsyncWrite + Unpin>(shared: Arc<WriterShared>, mut io: W, stall: Duration) {
    // The bytes being written; freed once written, so that a writer with nothing to write
    // holds no buffer.
    let mut batch = BytesMut::new();
    let mut yielded = false;
    let exit = loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let step = {
            let mut state = lock(&shared);
            if state.aborted {
                Step::Exit(WriterExit::Aborted)
            } else if !state.buf.is_empty() && !yielded && state.buf.len() < shared.limit {
                Step::Yield
            } else if !state.buf.is_empty() {
                batch = std::mem::take(&mut state.buf);
                state.hint = batch.len().clamp(WRITE_BUF_MIN, WRITE_BUF_HINT_MAX);
                shared.queued.store(0, Ordering::Release);
                state.stats.batches += 1;
                state.stats.bytes += batch.len() as u64;
                Step::Write
            } else if state.closing {
                Step::Exit(WriterExit::Closed)
            } else {
                Step::Wait
            }
        };
        match step {
            Step::Wait => {
                notified.await;
                continue;
            }
            Step::Yield => {
                // The callers woken together with this task (by one read's answers) are
                // about to queue their next requests: let them, and write them all at
                // once. At low load this costs one trip through the scheduler. A queue
                // at its limit is written at once: it holds enough, and senders wait.
                tokio::task::yield_now().await;
                yielded = true;
                continue;
            }
            Step::Exit(WriterExit::Closed) => {
                // Best effort: the peer may be gone already.
                let _ = tokio::time::timeout(stall, io.shutdown()).await;
                break WriterExit::Closed;
            }
            Step::Exit(exit) => break exit,
            Step::Write => {}
        }
        if batch.len() >= shared.limit {
            // Senders wait in `ready` only while the queue is at its limit.
            shared.space.notify_waiters();
        }
        let aborted = shared.abort.notified();
        let written = tokio::select! {
            biased;
            _ = aborted => break WriterExit::Aborted,
            result = write_all(&mut io, &batch, stall, &shared.written) => result,
        };
        if let Err(err) = written {
            break WriterExit::Failed(Arc::new(err));
        }
        yielded = false;
        batch = BytesMut::new();
    };
    {
        let mut state = lock(&shared);
        state.exited = true;
        state.buf = BytesMut::new();
        shared.queued.store(0, Ordering::Release);
    }
    shared.exit.send_replace(Some(exit));
    shared.space.notify_waiters();
}

/// Writes `buf` whole; each write must make progress within `stall`.
async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &[u8],
    stall: Duration,
    written: &std::sync::atomic::AtomicU64,
) -> Result<(), WireError> {
    let mut pos = 0;
    while pos < buf.len() {
        match tokio::time::timeout(stall, io.write(&buf[pos..])).await {
            Err(_) => return Err(WireError::WriteStall(stall)),
            Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(Ok(n)) => {
                pos += n;
                written.fetch_add(n as u64, Ordering::Release);
            }
            Ok(Err(err)) => return Err(err.into()),
        }
    }
    match tokio::time::timeout(stall, io.flush()).await {
        Err(_) => Err(WireError::WriteStall(stall)),
        Ok(result) => Ok(result?),
    }
}

#[cfg(test)]
mod tests {
    use mcp_codec::{Flags, Metadata, Ping, Request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::Role;

    fn encoded(envelope: Envelope<'_>) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_envelope(envelope, &mut out, usize::MAX).unwrap();
        out.to_vec()
    }

    /// An idle connection holds no read buffer: once what came was decoded and the peer is
    /// quiet, the reader waits without one; bytes that come later (a frame split across
    /// reads, a message larger than the stack buffer) are read as before.
    #[tokio::test]
    async fn a_reader_waiting_with_nothing_buffered_holds_no_buffer() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut reader = FrameReader::new(ours, &WireConfig::new(Role::Server));
        assert_eq!(
            reader.buf.capacity(),
            0,
            "nothing allocated before bytes come"
        );
        let ping = encoded(Envelope::Ping(Ping { nonce: [3; 8] }));
        peer.write_all(&ping).await.unwrap();
        assert!(matches!(reader.next().await, Ok(Some(Inbound::Ping(n))) if n == [3; 8]));
        let waited = tokio::time::timeout(Duration::from_millis(20), reader.next()).await;
        assert!(waited.is_err(), "nothing more was sent");
        assert_eq!(
            reader.buf.capacity(),
            0,
            "an idle reader gives its buffer back"
        );
        // Half a frame, then the rest: the partial frame is kept between reads.
        peer.write_all(&ping[..5]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(20), reader.next()).await;
        assert!(waited.is_err());
        assert_eq!(reader.buffered(), 5);
        peer.write_all(&ping[5..]).await.unwrap();
        assert!(matches!(reader.next().await, Ok(Some(Inbound::Ping(n))) if n == [3; 8]));
        // A request of several frames, much larger than the stack buffer.
        let body = vec![7u8; 150_000];
        let request = encoded(Envelope::Request(Request {
            id: 9,
            flags: Flags::NONE,
            format: 0,
            method: "echo",
            meta: Metadata::EMPTY,
            body: &body,
        }));
        let writer = tokio::spawn(async move {
            peer.write_all(&request).await.unwrap();
            peer
        });
        match reader.next().await {
            Ok(Some(Inbound::Request(r))) => assert_eq!(r.body(), &body[..]),
            other => panic!("expected the request, got {other:?}"),
        }
        let mut peer = writer.await.unwrap();
        drop(peer.shutdown().await);
        drop(peer);
        assert!(matches!(reader.next().await, Ok(None)));
    }

    /// One frame with the flags as given (the message encoder sets MORE itself).
    fn frame(envelope: Envelope<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        envelope.encode_to_vec(&mut out).unwrap();
        out
    }

    fn continuation(more: bool, chunk: &[u8]) -> Vec<u8> {
        let flags = if more { Flags::MORE } else { Flags::NONE };
        frame(Envelope::Continuation(mcp_codec::Continuation {
            flags,
            chunk,
        }))
    }

    /// After a request whose remaining frames were skipped (too large here), the next
    /// request's start is its own head frame's arrival, not when the skipping began: its
    /// deadline counts from there (docs/protocol.md section 4.2).
    #[tokio::test(start_paused = true)]
    async fn a_message_after_a_skipped_one_starts_at_its_own_head() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut config = WireConfig::new(Role::Server);
        config.max_message_len = 100;
        let mut reader = FrameReader::new(ours, &config);
        let head = |id: u32, body: &'static [u8]| {
            frame(Envelope::Request(Request {
                id,
                flags: Flags::MORE,
                format: 0,
                method: "echo",
                meta: Metadata::EMPTY,
                body,
            }))
        };
        let step = Duration::from_millis(10);
        peer.write_all(&head(1, &[1; 50])).await.unwrap();
        assert!(tokio::time::timeout(step, reader.next()).await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        peer.write_all(&continuation(true, &[1; 60])).await.unwrap();
        assert!(matches!(
            reader.next().await,
            Ok(Some(Inbound::RequestTooLarge { id: 1 }))
        ));
        assert!(tokio::time::timeout(step, reader.next()).await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        peer.write_all(&continuation(false, &[1; 10]))
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(step, reader.next()).await.is_err(),
            "skipped"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let sent = tokio::time::Instant::now();
        peer.write_all(&head(2, &[2; 10])).await.unwrap();
        assert!(tokio::time::timeout(step, reader.next()).await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        peer.write_all(&continuation(false, &[2; 10]))
            .await
            .unwrap();
        match reader.next().await {
            Ok(Some(Inbound::Request(r))) => assert_eq!(r.id(), 2),
            other => panic!("expected request 2, got {other:?}"),
        }
        let started = reader.message_started().expect("it spanned reads");
        assert!(
            started >= sent && started - sent < Duration::from_millis(100),
            "request 2 started {:?} after it was sent, not at its head",
            started.checked_duration_since(sent)
        );
    }

    /// A writer that wrote everything it was given holds no queue buffer.
    #[tokio::test]
    async fn a_writer_with_nothing_queued_holds_no_buffer() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let writer = WireWriter::spawn(ours, &WireConfig::new(Role::Client));
        assert_eq!(lock(&writer.shared).buf.capacity(), 0);
        let ping = encoded(Envelope::Ping(Ping { nonce: [4; 8] }));
        for _ in 0..3 {
            writer.send(Envelope::Ping(Ping { nonce: [4; 8] })).unwrap();
        }
        let mut got = vec![0u8; ping.len() * 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ping.repeat(3));
        assert_eq!(writer.queued_bytes(), 0);
        assert_eq!(lock(&writer.shared).buf.capacity(), 0, "the queue is freed");
        writer.close();
        assert!(matches!(writer.closed().await, WriterExit::Closed));
    }
}
