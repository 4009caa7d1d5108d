//! `tower_service::Service<RawRequest>` for [`Client`] (feature `tower`), so that a client
//! can sit under tower middleware or be driven by code written against `Service`.
//!
//! `poll_ready` is driven by the client's concurrency limit: in [`LimitMode::Wait`] it
//! reserves a slot (pending while none is free) that the next `call` uses; in
//! [`LimitMode::FailFast`] it is always ready and a call past the limit fails with
//! [`Error::is_overloaded`], as tower's load shedding expects.
//!
//! Both halves use the client's one stack of policies (`stack.rs`): `poll_ready` reserves in
//! its limit, and `call` runs the same call path as [`Client::call_raw`] with that slot, so
//! this is a front end, not another composition of the policies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mcp_format::Format;

use crate::client::{Client, RawRequest, RawResponse};
use crate::error::Error;
use crate::limit::{LimitMode, Slot};
use crate::transport::Transport;

/// `Sync` as well: a `Client` handle holds it and is shared by reference across awaits.
type SlotFuture = Pin<Box<dyn Future<Output = Result<Slot, Error>> + Send + Sync>>;

/// The slot reservation of one `Client` handle: the slot, or the wait for one.
pub(crate) struct Ready {
    waiting: Option<SlotFuture>,
    slot: Option<Slot>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("waiting", &self.waiting.is_some())
            .field("slot", &self.slot.is_some())
            .finish()
    }
}

impl<F: Format, T: Transport> tower_service::Service<RawRequest> for Client<F, T> {
    type Response = RawResponse;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<RawResponse, Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.is_closed() {
            return Poll::Ready(Err(Error::closed()));
        }
        let limiter = self.stack.limit();
        if limiter.mode() == LimitMode::FailFast {
            return Poll::Ready(Ok(()));
        }
        let ready = self.ready.get_or_insert_with(|| {
            Box::new(Ready {
                waiting: None,
                slot: None,
            })
        });
        if ready.slot.is_some() {
            return Poll::Ready(Ok(()));
        }
        if ready.waiting.is_none() {
            match limiter.try_acquire() {
                Ok(Some(slot)) => {
                    ready.slot = Some(slot);
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => ready.waiting = Some(Box::pin(limiter.acquire_owned())),
                // The limiter closes when the client does.
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let Some(waiting) = ready.waiting.as_mut() else {
            return Poll::Pending;
        };
        match waiting.as_mut().poll(cx) {
            Poll::Ready(result) => {
                ready.waiting = None;
                ready.slot = Some(result?);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: RawRequest) -> Self::Future {
        let slot = self.ready.as_mut().and_then(|r| r.slot.take());
        let stack = Arc::clone(&self.stack);
        Box::pin(async move {
            stack
                .call(
                    &request.method,
                    request.format,
                    request.body,
                    &request.options,
                    slot,
                )
                .await
        })
    }
}
