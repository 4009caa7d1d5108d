//! Running a request's handler for the connection task: its first poll in the task's own
//! turn ([`poll_first`]), and, for a handler that waits, the completion sent back exactly
//! once ([`CompletionGuard`]), a panic becoming ERROR 9.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Status;
use crate::handler::{Call, Invoke, Reply, RequestContext};

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
