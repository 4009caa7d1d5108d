//! Recording through the `metrics` facade (feature `metrics`; without it every call here
//! does nothing and the types are empty).
//!
//! - `rpc.server.call.duration` (histogram, s): a request from its handler's start to its
//!   end, by `rpc.method`, and `error.type` for a request answered ERROR (the code's
//!   protocol name, `APPLICATION` for codes of 1000 and up, `CANCELLED` for a handler
//!   stopped by CANCEL or at shutdown);
//! - `mcp.server.active_calls` (gauge): handlers running, by `rpc.method`;
//! - `mcp.server.refused` (counter): ERROR answers sent without running a handler (the
//!   core's admission: `OVERLOADED`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `UNKNOWN_METHOD`,
//!   `MALFORMED`, `TOO_LARGE`, ...; the authentication hook's `UNAUTHENTICATED` and
//!   `PERMISSION_DENIED`), by `error.type`;
//! - `mcp.server.connections` (gauge) and `mcp.server.refused_connections` (counter).
//!
//! Every series has `rpc.system = "mcp"`, `server.address` and `server.port` (the address
//! the server listens on). Handles are taken once per server (per route on its first
//! request), so that a request costs a read lock, a hash of its method name and a few
//! atomic operations in the recorder; install the recorder before starting the server.

#[cfg(feature = "metrics")]
pub(crate) use on::Metrics;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::Metrics;

#[cfg(not(feature = "metrics"))]
mod off {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use mcp_codec::ErrorCode;
    use mcp_transport::WireWriter;

    use crate::error::Status;
    use crate::handler::Reply;

    #[derive(Debug, Default)]
    pub(crate) struct Metrics;

    impl Metrics {
        pub(crate) fn new(_: SocketAddr) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn start(&self, _: &Arc<str>) -> Request {
            Request
        }
        #[inline]
        pub(crate) fn refused(&self, _: ErrorCode) {}
        #[inline]
        pub(crate) fn transmit<'a>(&self, writer: &'a WireWriter) -> &'a WireWriter {
            writer
        }
        #[inline]
        pub(crate) fn connection(&self, _: i8) {}
        #[inline]
        pub(crate) fn connection_refused(&self) {}
    }

    #[derive(Debug)]
    pub(crate) struct Request;

    impl Request {
        #[inline]
        pub(crate) fn finish(self, _: &Result<Reply, Status>) {}
    }
}

#[cfg(feature = "metrics")]
mod on {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, OnceLock, RwLock};

    use mcp_codec::{Envelope, ErrorCode};
    use mcp_transport::proto::Transmit;
    use mcp_transport::{WireError, WireWriter};
    use metrics::{Counter, Gauge, Histogram, Label, Unit};
    use tokio::time::Instant;

    use crate::error::Status;
    use crate::handler::Reply;

    const CALL_DURATION: &str = "rpc.server.call.duration";
    const ACTIVE_CALLS: &str = "mcp.server.active_calls";
    const REFUSED: &str = "mcp.server.refused";
    const CONNECTIONS: &str = "mcp.server.connections";
    const REFUSED_CONNECTIONS: &str = "mcp.server.refused_connections";

    /// Routes one server labels; any past them (many `prefix*` names, say) are `_OTHER`.
    const MAX_METHODS: usize = 1024;
    const OTHER: &str = "_OTHER";
    /// The eleven protocol codes, application codes, other codes.
    const CODES: usize = 13;

    /// The index and `error.type` of an ERROR code.
    fn error_type(code: ErrorCode) -> (usize, &'static str) {
        match code.name() {
            Some(name) => (usize::from(code.0) - 1, name),
            None if code.is_application() => (11, "APPLICATION"),
            None => (12, "UNKNOWN_CODE"),
        }
    }

    fn with(
        labels: &[Label],
        key: &'static str,
        value: impl Into<metrics::SharedString>,
    ) -> Vec<Label> {
        let mut labels = labels.to_vec();
        labels.push(Label::new(key, value));
        labels
    }

    fn describe() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            metrics::describe_histogram!(
                CALL_DURATION,
                Unit::Seconds,
                "Duration of MCP requests, from the handler's start to its end"
            );
            metrics::describe_gauge!(ACTIVE_CALLS, "MCP handlers running");
            metrics::describe_counter!(REFUSED, "MCP requests answered ERROR without a handler");
            metrics::describe_gauge!(CONNECTIONS, "Open MCP connections");
            metrics::describe_counter!(
                REFUSED_CONNECTIONS,
                "MCP connections refused at a connection limit"
            );
        });
    }

    /// One route's series.
    #[derive(Debug)]
    struct Method {
        labels: Vec<Label>,
        ok: Histogram,
        active: Gauge,
        failed: [OnceLock<Histogram>; CODES],
    }

    impl Method {
        fn failed(&self, code: ErrorCode) -> &Histogram {
            let (index, name) = error_type(code);
            self.failed[index].get_or_init(|| {
                metrics::histogram!(CALL_DURATION, with(&self.labels, "error.type", name))
            })
        }
    }

    /// A server's handles.
    #[derive(Debug)]
    pub(crate) struct Metrics {
        base: Vec<Label>,
        methods: RwLock<HashMap<Arc<str>, Arc<Method>, foldhash::fast::RandomState>>,
        refused: [OnceLock<Counter>; CODES],
        connections: Gauge,
        refused_connections: Counter,
    }

    impl Metrics {
        /// The handles of a server listening on `local`.
        pub(crate) fn new(local: SocketAddr) -> Self {
            describe();
            let base = vec![
                Label::from_static_parts("rpc.system", "mcp"),
                Label::new("server.address", local.ip().to_string()),
                Label::new("server.port", local.port().to_string()),
            ];
            Self {
                connections: metrics::gauge!(CONNECTIONS, base.clone()),
                refused_connections: metrics::counter!(REFUSED_CONNECTIONS, base.clone()),
                refused: std::array::from_fn(|_| OnceLock::new()),
                methods: RwLock::default(),
                base,
            }
        }

        fn method(&self, method: &Arc<str>) -> Arc<Method> {
            let read = self.methods.read().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = read.get(&**method) {
                return m.clone();
            }
            drop(read);
            let mut write = self.methods.write().unwrap_or_else(|p| p.into_inner());
            let name: Arc<str> = if write.len() < MAX_METHODS || write.contains_key(&**method) {
                method.clone()
            } else {
                OTHER.into()
            };
            write
                .entry(name.clone())
                .or_insert_with(|| {
                    let labels = with(&self.base, "rpc.method", name.to_string());
                    Arc::new(Method {
                        ok: metrics::histogram!(CALL_DURATION, labels.clone()),
                        active: metrics::gauge!(ACTIVE_CALLS, labels.clone()),
                        failed: std::array::from_fn(|_| OnceLock::new()),
                        labels,
                    })
                })
                .clone()
        }

        /// A handler of `method` starts: in flight until the returned value is finished or
        /// dropped (a stopped handler: `CANCELLED`).
        pub(crate) fn start(&self, method: &Arc<str>) -> Request {
            let method = self.method(method);
            method.active.increment(1.0);
            Request {
                method,
                start: Instant::now(),
                done: false,
            }
        }

        /// A request answered ERROR `code` without a handler.
        pub(crate) fn refused(&self, code: ErrorCode) {
            let (index, name) = error_type(code);
            self.refused[index]
                .get_or_init(|| metrics::counter!(REFUSED, with(&self.base, "error.type", name)))
                .increment(1);
        }

        /// The writer, counting the ERROR answers the protocol core sends by itself.
        pub(crate) fn transmit<'a>(&'a self, writer: &'a WireWriter) -> Counted<'a> {
            Counted {
                writer,
                metrics: self,
            }
        }

        /// A connection opened (`+1`) or closed (`-1`).
        pub(crate) fn connection(&self, change: i8) {
            self.connections.increment(f64::from(change));
        }

        /// A connection refused at a limit.
        pub(crate) fn connection_refused(&self) {
            self.refused_connections.increment(1);
        }
    }

    /// The connection's writer as the protocol core's [`Transmit`], counting each ERROR
    /// it sends (the core answers only refusals itself: handlers' answers go around it).
    pub(crate) struct Counted<'a> {
        writer: &'a WireWriter,
        metrics: &'a Metrics,
    }

    impl Transmit for Counted<'_> {
        fn send(&mut self, envelope: Envelope<'_>) -> Result<u64, WireError> {
            if let Envelope::Error(e) = &envelope {
                self.metrics.refused(e.code);
            }
            (&mut &*self.writer).send(envelope)
        }

        fn is_full(&self) -> bool {
            self.writer.is_full()
        }
    }

    /// A handler running.
    #[derive(Debug)]
    pub(crate) struct Request {
        method: Arc<Method>,
        start: Instant,
        done: bool,
    }

    impl Request {
        /// The handler ended with `result`.
        pub(crate) fn finish(mut self, result: &Result<Reply, Status>) {
            let took = self.start.elapsed();
            match result {
                Ok(_) => self.method.ok.record(took),
                Err(status) => self.method.failed(status.code()).record(took),
            }
            self.done = true;
        }
    }

    impl Drop for Request {
        fn drop(&mut self) {
            if !self.done {
                // Stopped before it ended: a CANCEL, the shutdown's grace, a lost client.
                let took = self.start.elapsed();
                self.method.failed(ErrorCode::CANCELLED).record(took);
            }
            self.method.active.decrement(1.0);
        }
    }
}
