//! The bottom of the facade: the transport's pool, behind a small enum so that the call path
//! above it can also be driven by a scripted backend in unit tests (virtual time, no
//! sockets). Static dispatch: the real path pays no box or vtable.

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use futures_core::Stream;
use mcp_format::FormatId;
use mcp_transport::{CallOptions as TransportOptions, Meta, Pool, Reply};
use tokio::time::Instant;

use super::options::{RawPush, RawResponse};
use crate::error::Error;
use crate::metrics::ConnectionCounts;

/// How long `close` waits for the transport's tasks to end once told to.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One attempt of a call, as handed to the backend.
pub(crate) struct Attempt<'a> {
    pub(crate) method: &'a str,
    pub(crate) format: FormatId,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
    pub(crate) deadline: Instant,
    /// The previous attempt failed in a way tied to its connection (ERROR 6, GOAWAY). The
    /// pool never hands out a draining connection, so it needs no hint; scripted backends
    /// check that the policy sets it.
    #[cfg_attr(not(all(test, feature = "json")), allow(dead_code))]
    pub(crate) other_connection: bool,
}

/// A stream of pushes for one subscription.
/// Pushes, then at most one `Err` as the last item: why the subscription ended early (the
/// server refused to subscribe again after a reconnect, or did not answer).
pub(crate) type PushStream = Pin<Box<dyn Stream<Item = Result<RawPush, Error>> + Send>>;

/// Where attempts go.
pub(crate) enum Backend {
    /// The transport's pool of connections to one server.
    Pool(Pool),
    /// A scripted backend for the unit tests of the call path.
    #[cfg(all(test, feature = "json"))]
    Fake(std::sync::Arc<dyn super::fake::Fake>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Pool(pool) => f.debug_tuple("Pool").field(&pool.endpoint()).finish(),
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(_) => f.write_str("Fake"),
        }
    }
}

impl Backend {
    pub(crate) async fn call(&self, attempt: Attempt<'_>) -> Result<RawResponse, Error> {
        match self {
            Backend::Pool(pool) => {
                let options = TransportOptions::deadline(attempt.deadline);
                let reply = pool
                    .call(
                        attempt.method,
                        attempt.format.get(),
                        &attempt.meta,
                        &attempt.body,
                        options,
                    )
                    .await
                    .map_err(Error::from_transport)?;
                match reply {
                    Reply::Response(r) => Ok(RawResponse {
                        format: FormatId::new(r.format()),
                        meta: r.meta().clone(),
                        body: r.into_body(),
                    }),
                    Reply::Error(e) => Err(Error::from_remote(crate::RemoteError::new(
                        e.code, e.message,
                    ))),
                }
            }
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(fake) => fake.call(attempt).await,
        }
    }

    pub(crate) async fn notify(
        &self,
        topic: &str,
        format: FormatId,
        meta: Meta,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(), Error> {
        match self {
            Backend::Pool(pool) => {
                let sent = pool.notify(topic, format.get(), &meta, &body);
                match tokio::time::timeout_at(deadline, sent).await {
                    Ok(result) => result.map_err(Error::from_transport),
                    Err(_) => Err(Error::timeout(
                        crate::Phase::Write,
                        crate::error::Processed::No,
                    )),
                }
            }
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(fake) => fake.notify(topic, format, meta, body).await,
        }
    }

    pub(crate) async fn subscribe(
        &self,
        pattern: &str,
        deadline: Instant,
    ) -> Result<PushStream, Error> {
        match self {
            Backend::Pool(pool) => {
                // The pool bounds the `$subscribe` call with its default timeout, which the
                // builder keeps equal to the client's total budget; this bounds it as well.
                let sub = tokio::time::timeout_at(deadline, pool.subscribe(pattern))
                    .await
                    .map_err(|_| {
                        Error::timeout(crate::Phase::Response, crate::error::Processed::Maybe)
                    })?
                    .map_err(Error::from_transport)?;
                Ok(Box::pin(ToRawPush { sub, ended: false }))
            }
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(fake) => fake.subscribe(pattern).await,
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Backend::Pool(pool) => {
                // Connections close (pending calls fail as closed), subscription streams end;
                // then wait a little for the background tasks to be gone.
                pool.close();
                if !pool.join(JOIN_TIMEOUT).await {
                    tracing::warn!("transport tasks still running after close");
                }
            }
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(_) => {}
        }
    }

    pub(crate) fn close_now(&self) {
        match self {
            Backend::Pool(pool) => pool.close(),
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(_) => {}
        }
    }

    pub(crate) fn connections(&self) -> ConnectionCounts {
        match self {
            Backend::Pool(pool) => {
                let stats = pool.stats();
                ConnectionCounts {
                    connecting: stats.connecting,
                    ready: stats.open,
                    draining: stats.draining,
                }
            }
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(_) => ConnectionCounts::default(),
        }
    }

    pub(crate) fn reconnects(&self) -> u64 {
        match self {
            Backend::Pool(pool) => pool.stats().reconnects,
            #[cfg(all(test, feature = "json"))]
            Backend::Fake(_) => 0,
        }
    }
}

/// Maps the transport's pushes to the facade's; when the transport's stream ends with a
/// reason ([`mcp_transport::Subscription::error`]), that reason is the last item.
struct ToRawPush {
    sub: mcp_transport::Subscription,
    ended: bool,
}

impl Stream for ToRawPush {
    type Item = Result<RawPush, Error>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        Pin::new(&mut self.sub)
            .poll_next(cx)
            .map(|push| match push {
                Some(p) => Some(Ok(RawPush {
                    format: FormatId::new(p.format()),
                    topic: p.topic().to_owned(),
                    meta: p.meta().clone(),
                    body: p.into_body(),
                })),
                None => {
                    self.ended = true;
                    self.sub.error().map(|e| Err(Error::from_transport(e)))
                }
            })
    }
}
