//! Running a request's handler for the connection task: its first poll in the task's own
//! turn ([`poll_first`]), and, for a handler that waits, its own task, recorded in the core
//! as in flight ([`Running`]), its completion sent back exactly once ([`CompletionGuard`],
//! a panic becoming ERROR 9) and answered if still wanted.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use mcp_codec::ErrorCode;
use mcp_format::FormatId;
use mcp_transport::InboundRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::Conn;
use crate::error::Status;
use crate::handler::{Call, CancelCell, Invoke, ReceivedMeta, Reply, RequestContext};

/// A handler's outcome, sent back to the connection task, which alone decides whether it
/// is still wanted (it was not cancelled) and writes it.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) id: u32,
    pub(crate) generation: u64,
    pub(crate) format: u8,
    pub(crate) result: Result<Reply, Status>,
}

/// Sends the handler's completion exactly once: with its result, or, if the handler's
/// future is dropped first, from `Drop` (a panic becomes ERROR 9; an abort is ignored by
/// the connection, which forgot the request before aborting it).
pub(crate) struct CompletionGuard {
    pub(crate) tx: mpsc::UnboundedSender<Completion>,
    pub(crate) id: u32,
    pub(crate) generation: u64,
    pub(crate) format: u8,
    pub(crate) sent: bool,
}

impl CompletionGuard {
    pub(crate) fn send(&mut self, result: Result<Reply, Status>) {
        self.sent = true;
        // The connection may be gone; then nobody wants the answer.
        let _ = self.tx.send(Completion {
            id: self.id,
            generation: self.generation,
            format: self.format,
            result,
        });
    }
}

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        if !self.sent {
            let status = if std::thread::panicking() {
                Status::internal("the handler panicked")
            } else {
                Status::cancelled("the handler was stopped")
            };
            self.send(Err(status));
        }
    }
}

/// What the first poll of a handler gave.
pub(crate) enum First {
    /// It finished (or panicked, which is answered ERROR 9 as in its task).
    Ready(Result<Reply, Status>),
    /// It waits: it goes on in its own task.
    Pending(Call),
}

/// Calls the handler and polls its future once, catching a panic.
///
/// The poll uses a waker that does nothing: a future that is not ready is spawned, and a
/// new task always polls its future, which then registers the task's own waker (anything
/// that happened in between is seen by that poll).
pub(crate) fn poll_first(handler: Arc<dyn Invoke>, ctx: RequestContext, body: Bytes) -> First {
    let polled = panic::catch_unwind(AssertUnwindSafe(|| {
        // The task outlives this function, so the future owns what it needs.
        let mut call = handler.invoke(ctx, body);
        let mut cx = Context::from_waker(Waker::noop());
        match call.as_mut().poll(&mut cx) {
            Poll::Ready(result) => First::Ready(result),
            Poll::Pending => First::Pending(call),
        }
    }));
    // The future was dropped while unwinding, as in a task.
    polled.unwrap_or_else(|_| First::Ready(Err(Status::internal("the handler panicked"))))
}

/// The completion channel of the handlers in flight.
pub(super) struct Completions {
    tx: mpsc::UnboundedSender<Completion>,
    pub(super) rx: mpsc::UnboundedReceiver<Completion>,
}

/// The next completion, or never when no channel exists (no handler waits).
pub(super) async fn next_completion(done: &mut Option<Completions>) -> Option<Completion> {
    match done {
        Some(done) => done.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What stops a running handler: its task's abort handle and its cancellation token.
#[derive(Debug)]
pub(crate) struct Running {
    abort: tokio::task::AbortHandle,
    cancel: CancelCell,
}

impl Running {
    /// Stops the handler: its future is dropped at its next poll, its token cancelled.
    pub(super) fn stop(&self) {
        self.cancel.cancel();
        self.abort.abort();
    }
}

impl Conn {
    pub(super) fn start(
        &mut self,
        request: InboundRequest,
        (method, handler): (Arc<str>, Arc<dyn Invoke>),
        deadline: Option<Instant>,
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
        };
        self.state.start(id, body_len, generation, running);
    }

    pub(super) fn complete(&mut self, done: Completion) {
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

    pub(super) fn answer(&self, id: u32, format: u8, result: Result<Reply, Status>) {
        match result {
            Ok(reply) => self.send_reply(id, format, &reply),
            Err(status) => self.send_error(id, status.code(), status.message()),
        }
    }
}
