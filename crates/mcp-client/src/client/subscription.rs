//! Typed subscriptions.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use mcp_format::{Decode, Format};

use super::options::RawPush;
use crate::error::Error;
use crate::transport::RawPushStream;

/// A subscription: a [`Stream`] of the pushes on a topic, decoded as `T` in the format `F`.
///
/// Each item is a `Result`: a push whose body does not decode is an `Err` item
/// ([`Error::decode_error`]) and the stream goes on. It survives reconnects: after a
/// connection is lost the client subscribes again on the next one by itself (pushes
/// published while no connection was up are not delivered: delivery is at most once per
/// connection, docs/protocol.md section 7). The stream ends when the client is closed (or every
/// handle of it dropped: the stream does not keep the connections alive), or when the
/// server refuses to subscribe again after a reconnect, or does not answer in time: then
/// the last item is an `Err` saying so ([`Error::code`] names the refusal). Dropping the
/// stream unsubscribes (`$unsubscribe` is sent once no local subscriber of the topic is
/// left).
pub struct Subscription<T, F: Format> {
    pushes: RawPushStream,
    format: F,
    // `fn() -> T`: the stream produces `T`s but holds none, so it is `Send` and `Unpin`
    // whatever `T` is.
    _item: PhantomData<fn() -> T>,
}

// Nothing of the stream is pinned in place (the pushes are boxed), so it can be moved
// whatever `F` is.
impl<T, F: Format> Unpin for Subscription<T, F> {}

impl<T, F: Format> Subscription<T, F> {
    pub(crate) fn new(pushes: RawPushStream, format: F) -> Self {
        Self {
            pushes,
            format,
            _item: PhantomData,
        }
    }
}

impl<T, F: Format + Decode<T>> Subscription<T, F> {
    /// The next push, decoded; `None` once the client is closed. The same as
    /// `StreamExt::next`, without needing the trait.
    pub async fn next(&mut self) -> Option<Result<T, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<T, F: Format + Decode<T>> Stream for Subscription<T, F> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.pushes.as_mut().poll_next(cx).map(|push| {
            push.map(|p| {
                let p: RawPush = p?;
                this.format
                    .decode_body(p.format, p.body)
                    .map_err(Error::decode)
            })
        })
    }
}

impl<T, F: Format> fmt::Debug for Subscription<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// A subscription whose pushes are not decoded, with their topics.
///
/// It ends as [`Subscription`] does; when it ended because the server refused (or did not
/// answer) the subscription again after a reconnect, [`RawSubscription::error`] says so.
pub struct RawSubscription {
    pushes: RawPushStream,
    error: Option<Error>,
}

impl RawSubscription {
    pub(crate) fn new(pushes: RawPushStream) -> Self {
        Self {
            pushes,
            error: None,
        }
    }

    /// The next push; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<RawPush> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Why the stream ended early, once it has: the server refused to subscribe again
    /// after a reconnect ([`Error::code`] names the refusal), or did not answer in time. `None` while
    /// it runs and after an end because the client was closed.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }
}

impl Stream for RawSubscription {
    type Item = RawPush;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawPush>> {
        let this = &mut *self;
        this.pushes.as_mut().poll_next(cx).map(|push| match push? {
            Ok(p) => Some(p),
            Err(e) => {
                this.error = Some(e);
                None
            }
        })
    }
}

impl fmt::Debug for RawSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSubscription").finish_non_exhaustive()
    }
}
