//! Recording through the `metrics` facade (feature `metrics`): what the snapshot counts,
//! also handed to whatever recorder the application installed.
//!
//! Handles are taken from the recorder once and kept: per client, its base labels and the
//! breaker's counters; per method, on the method's first call, the handles of its series
//! (successes; failures by `error.type` on the first failure of that type). A call then
//! costs a read lock and a hash of its method name, and a few atomic operations in the
//! recorder: no label is formatted and nothing is allocated. The cost: a recorder installed
//! after a client made its first call of a method is not seen by that client for that
//! method (install it first, as usual with `metrics`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, SharedString, Unit};

use crate::breaker::BreakerState;
use crate::error::{Error, ErrorKind};

/// `rpc.client.call.duration`: a whole call, every attempt and backoff included (s).
pub(crate) const CALL_DURATION: &str = "rpc.client.call.duration";
/// `mcp.client.attempt.duration`: one attempt (s).
pub(crate) const ATTEMPT_DURATION: &str = "mcp.client.attempt.duration";
/// `mcp.client.active_calls`: calls started and not yet ended.
pub(crate) const ACTIVE_CALLS: &str = "mcp.client.active_calls";
/// `mcp.client.retries`: attempts after the first.
pub(crate) const RETRIES: &str = "mcp.client.retries";
/// `mcp.client.sent_bytes`: request bodies, per attempt sent.
pub(crate) const SENT_BYTES: &str = "mcp.client.sent_bytes";
/// `mcp.client.received_bytes`: response bodies.
pub(crate) const RECEIVED_BYTES: &str = "mcp.client.received_bytes";
/// `mcp.client.breaker.transitions`: the breaker changing state, by the state entered.
pub(crate) const BREAKER_TRANSITIONS: &str = "mcp.client.breaker.transitions";
/// `mcp.client.connections`: open connections, per endpoint.
pub(crate) const CONNECTIONS: &str = "mcp.client.connections";
/// `mcp.client.reconnects`: connections opened after the endpoint's first, per endpoint.
pub(crate) const RECONNECTS: &str = "mcp.client.reconnects";
/// `mcp.client.ejections`: an endpoint of a fleet ejected as an outlier.
pub(crate) const EJECTIONS: &str = "mcp.client.ejections";

/// Distinct method names one client labels; calls of any other method are labelled
/// [`OTHER`], so that a caller passing arbitrary names cannot grow the series without bound.
const MAX_METHODS: usize = 256;
/// The `rpc.method` of methods past [`MAX_METHODS`] (the OpenTelemetry convention's word).
const OTHER: &str = "_OTHER";

/// Local kinds, then the eleven protocol codes, application codes, other codes.
const ERROR_TYPES: usize = ErrorKind::ALL.len() + 13;

/// The `error.type` of a failure: the local [`ErrorKind`]'s name in lower case, or the
/// ERROR code's protocol name in upper case (`OVERLOADED`), `APPLICATION` for codes of
/// 1000 and up, `UNKNOWN_CODE` for unassigned ones.
fn error_type(err: &Error) -> (usize, &'static str) {
    let kind = err.kind();
    if kind != ErrorKind::Remote {
        return (kind.index(), kind.name());
    }
    let base = ErrorKind::ALL.len();
    match err.code() {
        Some(code) => match code.name() {
            Some(name) => (base + usize::from(code.0) - 1, name),
            None if code.is_application() => (base + 11, "APPLICATION"),
            None => (base + 12, "UNKNOWN_CODE"),
        },
        None => (kind.index(), kind.name()),
    }
}

/// `server.address` and `server.port` of an endpoint written `host:port` (`[v6]:port`), or
/// of a fleet that follows a DNS name (`dns:host:port`); anything else (a fleet's list of
/// addresses, `discovery`) is the address alone.
pub(crate) fn endpoint_labels(endpoint: &str) -> Vec<Label> {
    let mut labels = vec![Label::from_static_parts("rpc.system", "mcp")];
    let endpoint = endpoint.strip_prefix("dns:").unwrap_or(endpoint);
    match endpoint.rsplit_once(':') {
        Some((host, port))
            if port.parse::<u16>().is_ok() && !host.is_empty() && !host.contains(',') =>
        {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            labels.push(Label::new("server.address", host.to_owned()));
            labels.push(Label::new("server.port", port.to_owned()));
        }
        _ => labels.push(Label::new("server.address", endpoint.to_owned())),
    }
    labels
}

fn with(labels: &[Label], key: &'static str, value: impl Into<SharedString>) -> Vec<Label> {
    let mut labels = labels.to_vec();
    labels.push(Label::new(key, value));
    labels
}

/// Says once per client what each series is (a recorder may ignore it).
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Described per process, as recorders keep descriptions by name; a recorder installed
    // later misses them, which loses the help text and unit only.
    ONCE.call_once(|| {
        metrics::describe_histogram!(
            CALL_DURATION,
            Unit::Seconds,
            "Duration of MCP calls, every attempt and backoff included"
        );
        metrics::describe_histogram!(
            ATTEMPT_DURATION,
            Unit::Seconds,
            "Duration of one attempt of an MCP call"
        );
        metrics::describe_gauge!(ACTIVE_CALLS, "MCP calls in flight");
        metrics::describe_counter!(RETRIES, "Attempts of MCP calls after the first");
        metrics::describe_counter!(SENT_BYTES, Unit::Bytes, "Request body bytes sent");
        metrics::describe_counter!(RECEIVED_BYTES, Unit::Bytes, "Response body bytes received");
        metrics::describe_counter!(
            BREAKER_TRANSITIONS,
            "Circuit breaker state changes, by the state entered"
        );
        metrics::describe_gauge!(CONNECTIONS, "Open connections to an endpoint");
        metrics::describe_counter!(RECONNECTS, "Connections opened after the first");
        metrics::describe_counter!(EJECTIONS, "Endpoints ejected as outliers");
    });
}

/// One method's series.
#[derive(Debug)]
pub(crate) struct Method {
    labels: Vec<Label>,
    call_ok: Histogram,
    attempt_ok: Histogram,
    active: Gauge,
    retries: Counter,
    sent: Counter,
    received: Counter,
    /// Call and attempt duration of failures, by [`error_type`], made on first use.
    failed: [OnceLock<(Histogram, Histogram)>; ERROR_TYPES],
}

impl Method {
    fn new(base: &[Label], method: &str) -> Self {
        let labels = with(base, "rpc.method", method.to_owned());
        Self {
            call_ok: metrics::histogram!(CALL_DURATION, labels.clone()),
            attempt_ok: metrics::histogram!(ATTEMPT_DURATION, labels.clone()),
            active: metrics::gauge!(ACTIVE_CALLS, labels.clone()),
            retries: metrics::counter!(RETRIES, labels.clone()),
            sent: metrics::counter!(SENT_BYTES, labels.clone()),
            received: metrics::counter!(RECEIVED_BYTES, labels.clone()),
            failed: std::array::from_fn(|_| OnceLock::new()),
            labels,
        }
    }

    fn failed(&self, err: &Error) -> &(Histogram, Histogram) {
        let (index, name) = error_type(err);
        self.failed[index].get_or_init(|| {
            let labels = with(&self.labels, "error.type", name);
            (
                metrics::histogram!(CALL_DURATION, labels.clone()),
                metrics::histogram!(ATTEMPT_DURATION, labels),
            )
        })
    }
}

/// A client's handles: its labels, the breaker's counters, each method's series.
#[derive(Debug)]
pub(crate) struct Facade {
    base: Vec<Label>,
    methods: RwLock<HashMap<Box<str>, Arc<Method>, foldhash::fast::RandomState>>,
}

impl Facade {
    pub(crate) fn new(endpoint: &str) -> Self {
        describe();
        Self {
            base: endpoint_labels(endpoint),
            methods: RwLock::default(),
        }
    }

    /// The series of `method`, made on its first call.
    fn method(&self, method: &str) -> Arc<Method> {
        let read = self.methods.read().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = read.get(method) {
            return m.clone();
        }
        drop(read);
        let mut write = self.methods.write().unwrap_or_else(|p| p.into_inner());
        let name = if write.len() < MAX_METHODS || write.contains_key(method) {
            method
        } else {
            OTHER
        };
        write
            .entry(name.into())
            .or_insert_with(|| Arc::new(Method::new(&self.base, name)))
            .clone()
    }

    /// A call of `method` started: counted in flight until the returned value is finished
    /// or dropped.
    pub(crate) fn started(&self, method: &str) -> Call {
        let method = self.method(method);
        method.active.increment(1.0);
        Call(method)
    }

    /// The counters of the breaker's transitions.
    pub(crate) fn transitions(&self) -> Transitions {
        let to = |state: &'static str| {
            metrics::counter!(
                BREAKER_TRANSITIONS,
                with(&self.base, "mcp.breaker.state", state)
            )
        };
        Transitions(Some(Arc::new([to("closed"), to("open"), to("half_open")])))
    }
}

/// A call in flight (the `active_calls` gauge counts it until this is dropped).
#[derive(Debug)]
pub(crate) struct Call(Arc<Method>);

impl Call {
    /// An attempt ended: its duration, a retry if it was not the first, the bytes.
    pub(crate) fn attempt<T: Body>(
        &self,
        number: u32,
        sent: usize,
        result: &Result<T, Error>,
        took: Duration,
    ) {
        let m = &self.0;
        if number > 1 {
            m.retries.increment(1);
        }
        m.sent.increment(sent as u64);
        match result {
            Ok(response) => {
                m.attempt_ok.record(took);
                m.received.increment(response.body_len() as u64);
            }
            Err(e) => m.failed(e).1.record(took),
        }
    }

    /// The call ended.
    pub(crate) fn finished(self, outcome: Result<(), &Error>, took: Duration) {
        match outcome {
            Ok(()) => self.0.call_ok.record(took),
            Err(e) => self.0.failed(e).0.record(took),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.active.decrement(1.0);
    }
}

/// What an attempt's answer says of its size.
pub(crate) trait Body {
    fn body_len(&self) -> usize;
}

impl Body for crate::client::RawResponse {
    fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// The breaker's transition counters (none for a breaker built alone, in tests).
#[derive(Debug, Clone, Default)]
pub(crate) struct Transitions(Option<Arc<[Counter; 3]>>);

impl Transitions {
    /// The breaker entered `state`.
    pub(crate) fn entered(&self, state: BreakerState) {
        if let Some(counters) = &self.0 {
            let i = match state {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            };
            counters[i].increment(1);
        }
    }
}

/// An endpoint of a fleet was ejected (rare: the labels are made here).
pub(crate) fn ejected(endpoint: &str) {
    metrics::counter!(EJECTIONS, endpoint_labels(endpoint)).increment(1);
}

/// Follows a pool's connections and reconnects into the endpoint's gauge and counter, in a
/// task that ends with the pool (it holds only a probe and the state receiver, so it never
/// keeps the pool alive). Counted as changes, so that clients to the same endpoint add up.
pub(crate) fn watch_pool(pool: &mcp_transport::Pool) {
    let labels = endpoint_labels(pool.endpoint());
    let connections = metrics::gauge!(CONNECTIONS, labels.clone());
    let reconnects = metrics::counter!(RECONNECTS, labels);
    let probe = pool.stats_probe();
    let mut states = pool.watch_state();
    tokio::spawn(async move {
        let (mut open, mut reconnected) = (0usize, 0u64);
        loop {
            if let Some(stats) = probe.stats() {
                reconnects.increment(stats.reconnects.saturating_sub(reconnected));
                reconnected = reconnected.max(stats.reconnects);
                #[allow(clippy::cast_precision_loss)] // connections are few
                connections.increment(stats.open as f64 - open as f64);
                open = stats.open;
            }
            if states.changed().await.is_err() {
                break;
            }
        }
        #[allow(clippy::cast_precision_loss)]
        connections.decrement(open as f64);
    });
}
