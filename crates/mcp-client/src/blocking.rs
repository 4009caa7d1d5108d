//! A blocking front end (feature `blocking`) for programs without async.
//!
//! [`blocking::Client`](Client) owns a small tokio runtime (one worker thread, which also
//! runs the heartbeats and reconnects between calls) and blocks the calling thread on each
//! call. It has the same policies, options and errors as the async client; clone it freely.
//!
//! ```no_run
//! use mcp_client::blocking::Client;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Echo { msg: String }
//!
//! let client = Client::connect("127.0.0.1:7000")?;
//! let back: Echo = client.call("echo", &Echo { msg: "hi".into() })?;
//! # let _ = back;
//! client.close();
//! # Ok::<(), mcp_client::Error>(())
//! ```
//!
//! Calling it from inside an async runtime is refused with an error (blocking there would
//! stall the runtime); use [`crate::Client`] in async code.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mcp_format::{Decode, Encode, Format};
use tokio::runtime::Runtime;

use crate::client::{
    CallOptions, ClientBuilder, DefaultFormat, RawRequest, RawResponse,
    Subscription as AsyncSubscription,
};
use crate::error::{Error, Phase, Processed};
use crate::metrics::MetricsSnapshot;

/// Owns the runtime; shuts it down without blocking when the last handle goes.
struct Rt(Option<Runtime>);

impl Rt {
    fn get(&self) -> &Runtime {
        // Only `Drop` takes the runtime out.
        self.0.as_ref().expect("runtime present until drop")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Dropping a runtime blocks until its tasks end, and panics inside another
            // runtime; shutting it down in the background does neither.
            rt.shutdown_background();
        }
    }
}

/// A blocking client. See the [module docs](self).
pub struct Client<F: Format = DefaultFormat> {
    // Declared before `rt`, so the connections are dropped while the runtime still runs.
    inner: crate::Client<F>,
    rt: Arc<Rt>,
}

impl<F: Format> Clone for Client<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            rt: Arc::clone(&self.rt),
        }
    }
}

impl<F: Format> fmt::Debug for Client<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Client")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn not_in_async() -> Result<(), Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::invalid(
            "the blocking client was used inside an async runtime; use mcp_client::Client there",
        ));
    }
    Ok(())
}

impl Client {
    /// Connects to the server at `addr` (`"host:port"` or a `SocketAddr`) with the default
    /// settings, in JSON.
    pub fn connect(addr: impl fmt::Display) -> Result<Self, Error> {
        Self::from_builder(crate::Client::builder(addr))
    }
}

impl<F: Format> Client<F> {
    /// Connects with the settings of `builder` (from [`crate::Client::builder`]).
    pub fn from_builder(builder: ClientBuilder<F>) -> Result<Self, Error> {
        not_in_async()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mcp-client")
            .enable_all()
            .build()
            .map_err(|e| Error::invalid("cannot start the client's runtime").with_source(e))?;
        let inner = rt.block_on(builder.connect())?;
        Ok(Self {
            inner,
            rt: Arc::new(Rt(Some(rt))),
        })
    }

    fn block_on<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        not_in_async()?;
        self.rt.get().block_on(fut)
    }

    /// The same client speaking another format.
    pub fn with_format<G: Format>(&self, format: G) -> Client<G> {
        Client {
            inner: self.inner.with_format(format),
            rt: Arc::clone(&self.rt),
        }
    }

    /// See [`crate::Client::call`].
    pub fn call<Req, Resp>(&self, method: &str, req: &Req) -> Result<Resp, Error>
    where
        Req: ?Sized,
        F: Encode<Req> + Decode<Resp>,
    {
        self.block_on(self.inner.call(method, req))
    }

    /// See [`crate::Client::call_with`].
    pub fn call_with<Req, Resp>(
        &self,
        method: &str,
        req: &Req,
        options: CallOptions,
    ) -> Result<Resp, Error>
    where
        Req: ?Sized,
        F: Encode<Req> + Decode<Resp>,
    {
        self.block_on(self.inner.call_with(method, req, options))
    }

    /// See [`crate::Client::call_raw`].
    pub fn call_raw(&self, request: RawRequest) -> Result<RawResponse, Error> {
        self.block_on(self.inner.call_raw(request))
    }

    /// See [`crate::Client::notify`].
    pub fn notify<M>(&self, topic: &str, msg: &M) -> Result<(), Error>
    where
        M: ?Sized,
        F: Encode<M>,
    {
        self.block_on(self.inner.notify(topic, msg))
    }

    /// See [`crate::Client::subscribe`]; the pushes are read with
    /// [`Subscription::recv`] or as an iterator.
    pub fn subscribe<T>(&self, topic: &str) -> Result<Subscription<T, F>, Error>
    where
        F: Decode<T>,
    {
        let inner = self.block_on(self.inner.subscribe(topic))?;
        Ok(Subscription {
            inner,
            rt: Arc::clone(&self.rt),
        })
    }

    /// See [`crate::Client::close`]; returns how many calls were abandoned. Inside an
    /// async runtime, where it cannot block, it closes at once
    /// ([`crate::Client::close_now`]) and returns 0.
    pub fn close(&self) -> usize {
        if not_in_async().is_err() {
            self.inner.close_now();
            return 0;
        }
        self.rt.get().block_on(self.inner.close())
    }

    /// See [`crate::Client::metrics`].
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    /// The async client inside, for code that has a runtime of its own at hand.
    pub fn as_async(&self) -> &crate::Client<F> {
        &self.inner
    }
}

/// A blocking subscription: [`Subscription::recv`], [`Subscription::recv_timeout`], or
/// iterate.
pub struct Subscription<T, F: Format> {
    inner: AsyncSubscription<T, F>,
    rt: Arc<Rt>,
}

impl<T, F: Format + Decode<T>> Subscription<T, F> {
    /// Blocks until the next push; `None` once the client is closed (or when called inside
    /// an async runtime, where blocking is not allowed).
    pub fn recv(&mut self) -> Option<Result<T, Error>> {
        not_in_async().ok()?;
        self.rt.get().block_on(self.inner.next())
    }

    /// Blocks until the next push for at most `timeout`. A timeout is an [`Error`] with
    /// [`Error::is_timeout`]; the end of the stream one with [`Error::is_closed`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, Error> {
        not_in_async()?;
        let next = self
            .rt
            .get()
            .block_on(async { tokio::time::timeout(timeout, self.inner.next()).await });
        match next {
            Ok(Some(item)) => item,
            Ok(None) => Err(Error::closed()),
            Err(_) => Err(Error::timeout(Phase::Response, Processed::No)),
        }
    }
}

impl<T, F: Format + Decode<T>> Iterator for Subscription<T, F> {
    type Item = Result<T, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.recv()
    }
}

impl<T, F: Format> fmt::Debug for Subscription<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Subscription")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
