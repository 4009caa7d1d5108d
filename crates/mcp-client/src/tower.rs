//! `tower_service::Service<RawRequest>` for [`Client`] (feature `tower`), so that a client
//! can sit under tower middleware or be driven by code written against `Service`.
//!
//! `poll_ready` is driven by the client's concurrency limit: in [`LimitMode::Wait`] it
//! reserves a slot (pending while none is free) that the next `call` uses; in
//! [`LimitMode::FailFast`] it is always ready and a call past the limit fails with
//! [`Error::is_overloaded`], as tower's load shedding expects.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mcp_format::Format;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;

use crate::client::{Client, RawRequest, RawResponse};
use crate::error::Error;
use crate::limit::LimitMode;

/// The slot reservation of one `Client` handle.
#[derive(Debug)]
pub(crate) struct Ready {
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<F: Format> tower_service::Service<RawRequest> for Client<F> {
    type Response = RawResponse;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<RawResponse, Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.is_closed() {
            return Poll::Ready(Err(Error::closed()));
        }
        if self.shared.limiter.mode() == LimitMode::FailFast {
            return Poll::Ready(Ok(()));
        }
        let limiter = &self.shared.limiter;
        let ready = self.ready.get_or_insert_with(|| {
            Box::new(Ready {
                semaphore: PollSemaphore::new(limiter.semaphore()),
                permit: None,
            })
        });
        if ready.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready.semaphore.poll_acquire(cx) {
            Poll::Ready(Some(permit)) => {
                ready.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            // The semaphore closes when the client does.
            Poll::Ready(None) => Poll::Ready(Err(Error::closed())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: RawRequest) -> Self::Future {
        let slot = self
            .ready
            .as_mut()
            .and_then(|r| r.permit.take())
            .map(|permit| self.shared.limiter.slot_from(permit));
        let client = self.clone();
        Box::pin(async move {
            client
                .execute(
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
