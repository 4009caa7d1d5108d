//! The glue between the client core and tokio: the state a connection's handles and its
//! driver share (the core under its lock, the writer, the in-flight window, the status), and
//! the driver task, which reads into the core, sleeps until the core's next timeout, hands
//! the core's events out and ends the connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::{Backpressure, ConnectionConfig, MetadataSource, Role};
use crate::error::{ErrorKind, Phase, Processed, TransportError, WireError};
use crate::io::Stream;
use crate::message::{Answer, Meta};
use crate::proto::ClientSettings;
use crate::proto::client::closed;
use crate::proto::{ClientCore, ConnectionStatus, Event, Resubscribe};
use crate::subscription::{PushRouter, SubscriptionOwner, UNSUBSCRIBE_METHOD};
use crate::window::Slots;
use crate::window::{InFlightPermit, PoolSignal};
use crate::wire::{FrameReader, WireWriter, WriterExit};

use super::PendingCall;

pub(super) type Outcome = Result<Answer, TransportError>;
type Core = ClientCore<oneshot::Sender<Outcome>>;
type Events = Vec<Event<oneshot::Sender<Outcome>>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent, so a poisoned lock (a panic
    // elsewhere while holding it) is used as is rather than spreading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(super) serial: u64,
    pub(super) peer: SocketAddr,
    pub(super) config: ConnectionConfig,
    pub(super) writer: WireWriter,
    pub(super) core: Mutex<Core>,
    pub(super) slots: Arc<Slots>,
    /// Wakes the driver: the core's timer moved earlier, a close was asked, or a draining
    /// connection ran dry.
    pub(super) control: tokio::sync::Notify,
    pub(super) status: watch::Sender<ConnectionStatus>,
    pub(super) router: Arc<PushRouter>,
    pub(super) signal: Option<Arc<PoolSignal>>,
}

impl ConnShared {
    /// The connection's shared state over `stream`, its writer and its driver started.
    pub(super) fn spawn<S: Stream>(
        stream: S,
        mut config: ConnectionConfig,
        router: Arc<PushRouter>,
        signal: Option<Arc<PoolSignal>>,
        token: Option<Arc<()>>,
        serial: u64,
    ) -> Arc<ConnShared> {
        let peer = stream
            .peer()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        config.wire.role = Role::Client;
        config.max_in_flight = config.max_in_flight.max(1);
        let (read, write) = stream.into_halves();
        let reader = FrameReader::new(read, &config.wire);
        let writer = WireWriter::spawn(write, &config.wire);
        let (status, _) = watch::channel(ConnectionStatus::Open);
        let settings = ClientSettings {
            max_abandoned_ids: config.max_abandoned_ids,
            subscribe_timeout: config.subscribe_timeout,
            heartbeat_interval: config.heartbeat.interval,
            heartbeat_timeout: config.heartbeat.timeout,
        };
        let shared = Arc::new(ConnShared {
            serial,
            peer,
            slots: Arc::new(Slots {
                used: AtomicUsize::new(0),
                max: config.max_in_flight,
                waiters: AtomicUsize::new(0),
                freed: tokio::sync::Notify::new(),
                closed: AtomicBool::new(false),
                signal: signal.clone(),
            }),
            config,
            writer,
            core: Mutex::new(ClientCore::new(settings, Instant::now().into_std())),
            control: tokio::sync::Notify::new(),
            status,
            router,
            signal,
        });
        tokio::spawn(drive(shared.clone(), reader, token));
        shared
    }
}

impl SubscriptionOwner for ConnShared {
    fn unsubscribed(&self, pattern: &str) {
        self.call_detached(UNSUBSCRIBE_METHOD, pattern.as_bytes(), None);
    }
}

impl ConnShared {
    /// Runs `f` on the core under its lock, with the writer as where frames go; then, with
    /// the lock released, passes on the events it produced and wakes the driver if the core
    /// asks.
    pub(super) fn with_core<R>(&self, f: impl FnOnce(&mut Core, &mut &WireWriter) -> R) -> R {
        let mut out = &self.writer;
        let mut core = lock(&self.core);
        let result = f(&mut core, &mut out);
        let wake = core.take_wake();
        let mut events = Events::new();
        if core.has_events() {
            core.take_events(&mut events);
        }
        drop(core);
        if wake {
            self.control.notify_one();
        }
        if !events.is_empty() {
            self.hand_out(&mut events);
        }
        result
    }

    /// Passes on what the core produced: outcomes to callers, pushes to subscribers,
    /// status changes to the owner and the pool.
    pub(super) fn hand_out(&self, events: &mut Events) {
        let mut changed = false;
        for event in events.drain(..) {
            match event {
                // The caller may have dropped its future a moment ago: then nobody wants it.
                Event::Done(tx, outcome) => {
                    let _ = tx.send(outcome);
                }
                Event::Push(push) => self.router.deliver(push),
                Event::ResubscribeFailed(resubscribe, err) => {
                    self.router
                        .fail(&resubscribe.pattern, resubscribe.epoch, &err);
                }
                Event::Status(status) => {
                    if matches!(status, ConnectionStatus::Closed { .. }) {
                        self.slots.close();
                    }
                    self.status.send_replace(status);
                    changed = true;
                }
            }
        }
        if changed {
            if let Some(signal) = &self.signal {
                signal.changed();
            }
        }
    }

    pub(super) fn closed_error(&self, phase: Phase, processed: Processed) -> TransportError {
        lock(&self.core).closed_error(phase, processed)
    }

    pub(super) fn try_acquire(&self) -> Result<Option<InFlightPermit>, TransportError> {
        if self.slots.closed.load(Ordering::Acquire) {
            return Err(self.closed_error(Phase::Queue, Processed::No));
        }
        Ok(self.slots.try_take())
    }
    pub(super) async fn acquire(
        &self,
        deadline: Option<Instant>,
    ) -> Result<InFlightPermit, TransportError> {
        if let Some(permit) = self.try_acquire()? {
            return Ok(permit);
        }
        if self.config.backpressure == Backpressure::Reject {
            return Err(TransportError::new(
                ErrorKind::Overloaded,
                Phase::Queue,
                Processed::No,
                format!(
                    "{} requests in flight, the maximum of this connection",
                    self.config.max_in_flight
                ),
            ));
        }
        struct Waiting<'a>(&'a Slots);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.slots.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.slots);
        loop {
            let freed = self.slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire()? {
                return Ok(permit);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(TransportError::timeout(
                            Phase::Queue,
                            Processed::No,
                            "timed out waiting for a place in the in-flight window",
                        ));
                    }
                }
                None => freed.await,
            }
        }
    }

    pub(super) async fn wait_writable(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        if !self.writer.is_full() {
            return Ok(());
        }
        let ready = self.writer.ready();
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, ready).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(TransportError::timeout(
                        Phase::Queue,
                        Processed::No,
                        "timed out waiting for space in the write queue",
                    ));
                }
            },
            None => ready.await,
        };
        result.map_err(|_| self.closed_error(Phase::Queue, Processed::No))
    }

    /// Allocates an id, records the caller and queues the REQUEST, all under the core's
    /// lock: frames are queued in id order, and a close cannot come between the entry and
    /// its frame.
    pub(super) fn start(
        self: &Arc<Self>,
        permit: Option<InFlightPermit>,
        method: &str,
        format: u8,
        meta: &Meta,
        body: &[u8],
        deadline: Option<Instant>,
    ) -> Result<PendingCall, TransportError> {
        let (tx, rx) = oneshot::channel();
        let deadline = deadline.map(Instant::into_std);
        let id = self
            .with_core(|core, out| core.send_request(out, method, format, meta, body, deadline, tx))
            .map_err(|(_, err)| err)?;
        Ok(PendingCall {
            shared: self.clone(),
            id,
            rx,
            permit,
            done: false,
        })
    }

    pub(super) fn call_detached(
        &self,
        method: &str,
        body: &[u8],
        resubscribe: Option<Resubscribe>,
    ) {
        let now = Instant::now().into_std();
        let meta = self.control_metadata();
        self.with_core(|core, out| {
            core.send_detached_with(out, method, &meta, body, resubscribe, now)
        });
    }

    /// The metadata of a request the transport sends by itself (`$subscribe`, ...).
    pub(super) fn control_metadata(&self) -> Meta {
        self.config
            .control_metadata
            .as_ref()
            .map_or_else(Meta::new, MetadataSource::get)
    }

    /// Ends the connection: every pending call gets `reason`, the status says closed.
    /// `written`: see [`ClientCore::finish`].
    pub(super) fn finish(&self, reason: &TransportError, written: Option<u64>) {
        let now = Instant::now().into_std();
        self.with_core(|core, _| core.finish(reason, now, written));
    }
}

fn wire_failure(err: &WireError) -> TransportError {
    match err {
        WireError::Io(io) => closed(format!("connection lost: {io}")),
        WireError::ClosedMidFrame { .. } => closed(format!("connection closed: {err}")),
        WireError::WriteStall(_) => closed(format!("connection dropped: {err}")),
        WireError::WriterClosed => closed("connection closed"),
        _ => TransportError::new(
            ErrorKind::Protocol,
            Phase::Response,
            Processed::Maybe,
            format!("connection dropped: {err}"),
        ),
    }
}

/// The connection's driver: reads into the core, sleeps until the core's next timeout,
/// hands out the core's events, and ends the connection.
async fn drive<R: tokio::io::AsyncRead + Unpin>(
    shared: Arc<ConnShared>,
    mut reader: FrameReader<R>,
    token: Option<Arc<()>>,
) {
    // Deadlines are the driver's to enforce: if this task is dropped before it ends the
    // connection (its runtime shut down), the guard ends it, so no caller waits for good.
    let mut unfinished = Unfinished(Some(shared.clone()));
    let mut frames_at_rx = 0;
    let writer_exit = shared.writer.closed();
    tokio::pin!(writer_exit);
    let mut writer_done = false;
    let mut events = Events::new();
    // One timer for the core's deadlines and heartbeat. It is re-armed when it fires and
    // when the core's earliest deadline comes forward (a call with an earlier one), not at
    // every read: the heartbeat's deadline only moves later as frames arrive, and firing
    // early only finds the next one.
    let timer = tokio::time::sleep_until(Instant::from_std(lock(&shared.core).poll_timeout()));
    tokio::pin!(timer);

    let (reason, flush) = loop {
        tokio::select! {
            biased;
            _ = shared.control.notified() => {
                let core = lock(&shared.core);
                if let Some(stop) = core.poll_close() {
                    break stop;
                }
                let at = Instant::from_std(core.poll_timeout());
                drop(core);
                if at < timer.deadline() {
                    timer.as_mut().reset(at);
                }
            }
            exit = &mut writer_exit => {
                writer_done = true;
                let reason = match exit {
                    WriterExit::Failed(err) => wire_failure(&err),
                    _ => closed("the connection's writer ended"),
                };
                break (reason, false);
            }
            // Before the reader: a peer that keeps it busy must not hold deadlines back.
            () = &mut timer => {
                let now = Instant::now();
                let mut out = &shared.writer;
                let mut core = lock(&shared.core);
                if reader.frames() != frames_at_rx {
                    // Frames of a message still arriving are life too.
                    frames_at_rx = reader.frames();
                    core.handle_received(now.into_std());
                }
                let dead = core.handle_timeout(&mut out, now.into_std());
                timer.as_mut().reset(Instant::from_std(core.poll_timeout()));
                let wake = core.take_wake();
                core.take_events(&mut events);
                drop(core);
                shared.hand_out(&mut events);
                if wake {
                    shared.control.notify_one();
                }
                if let Err(reason) = dead {
                    break (reason, false);
                }
            }
            first = reader.next() => {
                // Everything this read brought is handled before waiting again: one pass
                // through `select!`, one lock of the core, one clock read.
                let now = Instant::now().into_std();
                let mut out = &shared.writer;
                let mut core = lock(&shared.core);
                let mut next = first;
                let stop = loop {
                    match next {
                        Ok(Some(message)) => {
                            if let Err(reason) = core.handle_inbound(&mut out, message, now) {
                                break Some((reason, false));
                            }
                        }
                        Ok(None) => {
                            break Some((closed("the server closed the connection"), false));
                        }
                        Err(err) => {
                            if let Some(code) = err.error_code() {
                                core.protocol_error(&mut out, code);
                            }
                            let flush = err.is_protocol();
                            break Some((wire_failure(&err), flush));
                        }
                    }
                    next = match reader.try_next() {
                        Ok(None) => break None,
                        other => other,
                    };
                };
                core.handle_read_done(now);
                frames_at_rx = reader.frames();
                let wake = core.take_wake();
                core.take_events(&mut events);
                drop(core);
                shared.hand_out(&mut events);
                if let Some(stop) = stop {
                    break stop;
                }
                if wake {
                    // Seen by the control branch at the next turn.
                    shared.control.notify_one();
                }
            }
        }
    };

    tracing::debug!(peer = %shared.peer, %reason, "connection closing");
    unfinished.0 = None;
    // The writer ends at once when aborted, or within the stall timeout when flushing.
    let grace = shared.config.wire.write_stall_timeout + Duration::from_millis(100);
    if flush {
        // What is queued may still be written: every pending call may be processed.
        shared.finish(&reason, None);
        shared.writer.close();
    } else {
        // Once the writer has stopped, a request it never wrote whole was certainly not
        // processed; its caller is told so (and may send it elsewhere).
        shared.writer.abort();
        if !writer_done && tokio::time::timeout(grace, &mut writer_exit).await.is_ok() {
            writer_done = true;
        }
        let written = writer_done.then(|| shared.writer.written_bytes());
        shared.finish(&reason, written);
    }
    if !writer_done && tokio::time::timeout(grace, writer_exit).await.is_err() {
        shared.writer.abort();
    }
    drop(reader);
    drop(token);
}

/// Ends the connection if the driver is dropped before it could (see `drive`).
struct Unfinished(Option<Arc<ConnShared>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.finish(
                &closed("the connection's task was stopped (its runtime shut down)"),
                None,
            );
            shared.writer.abort();
        }
    }
}
