//! The demo service behind `mcp serve` and `mcp demo`, which is also the interop test
//! service of docs/protocol.md section 10.
//!
//! Demo methods:
//! - `user.update` / `user.get`: the rpcs of `UserService` in
//!   `proto/mcp/examples/v1/user.proto`, served through its generated trait
//!   ([`UserService`], mounted by `user_service_server::mount`): the seed's `UserUpdate`, in
//!   JSON or Protobuf (the request's format decides), kept in memory by `user_id`.
//!   `user.get` of an unknown user is application error 1404.
//! - `ticker`: a topic pushed every `tick` with `{"seq": n, "unix_ms": t}` in JSON.
//!
//! Interop methods (docs/protocol.md section 10), each answering a bad argument with
//! ERROR 1 and the request's id:
//! - `echo`: answers the request's body as it is, in the request's format.
//! - `sleep`: ASCII decimal milliseconds, 0..=60000; answers the same body after that long.
//!   A CANCEL (or the deadline passing, or the connection closing) stops the wait and
//!   nothing is sent; [`Service::stats`] counts waits finished and stopped.
//! - `fail`: ASCII decimal code, 1..=65535; answers ERROR with that code.
//! - `big`: ASCII decimal byte count in format 0 (raw; another format is ERROR 3); answers
//!   that many bytes, byte i being i % 251, which the server splits into CONTINUATION
//!   frames. A count past the server's maximum message size is ERROR 7.
//! - `publish`: JSON `{"topic": str, "body": str or any JSON, "format"?: int}`; pushes one
//!   NOTIFY to every connection subscribed to the topic and answers `{"delivered": n}`.
//! - NOTIFY `echo` from a client: pushed back to that connection alone, same body and
//!   format (`NotifyContext::push`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use mcp_codec::ErrorCode;
use mcp_format::{FormatId, Json};
use mcp_proto::examples::v1::user_service_server::{self, UserService};
use mcp_proto::examples::v1::{GetUser, UserUpdate};
use mcp_server::{Reply, RequestContext, Router, Server, ServerConfig, ServerHandle, Status};

/// The topic the demo service pushes to.
pub const TICKER: &str = "ticker";

/// Application error code: no such user.
pub const NOT_FOUND: u16 = 1404;

/// The longest `sleep` asked for, in milliseconds.
pub const MAX_SLEEP_MS: u64 = 60_000;

/// The methods the service answers, for banners and docs.
pub const METHODS: &[&str] = &[
    "echo",
    "sleep",
    "fail",
    "big",
    "publish",
    "user.get",
    "user.update",
];

/// The demo's user store: `UserService` of `user.proto`, kept in memory by `user_id`.
#[derive(Debug, Default)]
struct Users(Mutex<HashMap<String, UserUpdate>>);

impl UserService for Users {
    async fn update(&self, _ctx: RequestContext, user: UserUpdate) -> Result<UserUpdate, Status> {
        if user.user_id.is_empty() {
            return Err(Status::application(1400, "user_id must not be empty"));
        }
        let mut users = self
            .0
            .lock()
            .map_err(|_| Status::internal("user store poisoned"))?;
        users.insert(user.user_id.clone(), user.clone());
        Ok(user)
    }

    async fn get(&self, _ctx: RequestContext, query: GetUser) -> Result<UserUpdate, Status> {
        let found = self
            .0
            .lock()
            .map_err(|_| Status::internal("user store poisoned"))?
            .get(&query.user_id)
            .cloned();
        found.ok_or_else(|| Status::application(NOT_FOUND, format!("no user {:?}", query.user_id)))
    }
}

/// A running service: the server, and what its handlers counted.
#[derive(Debug, Clone)]
pub struct Service {
    server: ServerHandle,
    counters: Arc<Counters>,
    reloader: Option<crate::tls::Reloader>,
}

/// What the service's handlers counted (the server's own counters are in
/// [`ServerHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// `sleep` calls whose wait began.
    pub sleeps_started: u64,
    /// `sleep` calls that waited their whole time and answered.
    pub sleeps_finished: u64,
    /// `sleep` calls stopped before their time was up (CANCEL, deadline, connection
    /// closed, shutdown grace over): nothing was answered by the handler.
    pub sleeps_stopped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sleeps_started: AtomicU64,
    sleeps_finished: AtomicU64,
    sleeps_stopped: AtomicU64,
}

impl Service {
    /// The server, for its address, publishing and its own counters.
    pub fn server(&self) -> &ServerHandle {
        &self.server
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// What replaces the certificate of a service served over TLS.
    pub fn tls_reloader(&self) -> Option<&crate::tls::Reloader> {
        self.reloader.as_ref()
    }

    /// What the handlers counted.
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            sleeps_started: self.counters.sleeps_started.load(Ordering::Relaxed),
            sleeps_finished: self.counters.sleeps_finished.load(Ordering::Relaxed),
            sleeps_stopped: self.counters.sleeps_stopped.load(Ordering::Relaxed),
        }
    }

    /// Graceful shutdown; see [`ServerHandle::shutdown`].
    pub async fn shutdown(&self, grace: Duration) -> Result<(), mcp_server::Error> {
        self.server.shutdown(grace).await
    }
}

/// Starts the service on `addr` with the server's default settings, and its ticker task;
/// both end with the runtime or when the server shuts down.
pub async fn start(addr: SocketAddr, tick: Duration) -> Result<Service, mcp_server::Error> {
    start_with_config(addr, tick, ServerConfig::default()).await
}

/// [`start`] with server settings of its own (a smaller maximum message size, say).
pub async fn start_with_config(
    addr: SocketAddr,
    tick: Duration,
    config: ServerConfig,
) -> Result<Service, mcp_server::Error> {
    start_with_tls(addr, tick, config, None).await
}

/// [`start_with_config`], over TLS when `tls` is given.
pub async fn start_with_tls(
    addr: SocketAddr,
    tick: Duration,
    config: ServerConfig,
    tls: Option<&crate::tls::ServerTls>,
) -> Result<Service, mcp_server::Error> {
    let counters = Arc::new(Counters::default());
    let sleep_counters = Arc::clone(&counters);
    let max_message_len = config.max_message_len;
    // `publish` needs the server's handle, which exists only once the server is bound;
    // the handlers are made before. (The handle kept here is never dropped before the
    // server's routes are: the server is not stopped by dropping handles anyway.)
    let handle: Arc<OnceLock<ServerHandle>> = Arc::default();
    let publish_handle = Arc::clone(&handle);
    let router = Router::new()
        .route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) })
        .route_notify_fn("echo", |ctx, body| async move {
            // Dropped when that connection's queue is full, as a publish would be.
            let _ = ctx.push("echo", ctx.format(), body);
        })
        .route_raw("sleep", move |ctx, body| {
            sleep(ctx, body, Arc::clone(&sleep_counters))
        })
        .route_raw("fail", |_ctx, body| async move { fail(&body) })
        .route_raw("big", move |ctx, body| async move {
            big(&ctx, &body, max_message_len)
        })
        .route_raw("publish", move |ctx, body| {
            let handle = Arc::clone(&publish_handle);
            async move { publish(&ctx, &body, handle.get()) }
        });
    let router = user_service_server::mount(router, Users::default());
    let server = Server::builder().config(config).router(router);
    let (server, reloader) = match tls {
        None => (server.bind(addr).await?, None),
        Some(tls) => {
            let (server, reloader) = tls.serve(server, addr).await?;
            (server, Some(reloader))
        }
    };
    let _ = handle.set(server.clone());
    tokio::spawn(ticker(server.clone(), tick));
    Ok(Service {
        server,
        counters,
        reloader,
    })
}

async fn ticker(server: ServerHandle, every: Duration) {
    // tokio's interval panics on a zero period; `mcp serve` refuses one, and a library
    // caller gets a ticker that never ticks rather than a panic.
    if every.is_zero() {
        return;
    }
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for seq in 0u64.. {
        interval.tick().await;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let tick = serde_json::json!({ "seq": seq, "unix_ms": unix_ms });
        // Publishing fails only once the server is shut down: then the ticker ends too.
        if server.publish_typed(TICKER, &Json, &tick).is_err() {
            return;
        }
    }
}

/// Reads a body of ASCII decimal digits (surrounding ASCII whitespace allowed): `Ok(None)`
/// for a number too large for `u64`, an `Err` naming `what` for anything else.
fn decimal(body: &[u8], what: &str) -> Result<Option<u64>, Status> {
    let digits = body.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Status::malformed(format!(
            "{what} must be ASCII decimal digits, got {:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        )));
    }
    // All digits, so the only way to fail is overflow.
    Ok(std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok()))
}

/// `sleep`: the body back after that many milliseconds. The connection drops this future
/// when the request is cancelled or abandoned; the guard counts that as a stopped wait.
async fn sleep(ctx: RequestContext, body: Bytes, counters: Arc<Counters>) -> Result<Reply, Status> {
    let ms = match decimal(&body, "sleep's milliseconds")? {
        Some(ms) if ms <= MAX_SLEEP_MS => ms,
        _ => {
            return Err(Status::malformed(format!(
                "sleep takes 0..={MAX_SLEEP_MS} milliseconds"
            )));
        }
    };
    struct Waiting(Option<Arc<Counters>>);
    impl Drop for Waiting {
        fn drop(&mut self) {
            if let Some(counters) = self.0.take() {
                counters.sleeps_stopped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    counters.sleeps_started.fetch_add(1, Ordering::Relaxed);
    let mut waiting = Waiting(Some(Arc::clone(&counters)));
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
        // The future is dropped at the same moment anyway; this keeps the handler correct
        // if the server ever only signals the token.
        () = ctx.cancelled() => return Err(Status::cancelled("sleep stopped")),
    }
    waiting.0 = None;
    counters.sleeps_finished.fetch_add(1, Ordering::Relaxed);
    Ok(Reply::new(body))
}

/// `fail`: ERROR with the code asked for.
fn fail(body: &[u8]) -> Result<Reply, Status> {
    match decimal(body, "fail's code")? {
        Some(code @ 1..=65535) => Err(Status::new(
            ErrorCode(code as u16),
            format!("failed as asked, with code {code}"),
        )),
        _ => Err(Status::malformed("fail takes a code 1..=65535")),
    }
}

/// `big`: `n` raw bytes, byte i = i % 251 (a prime, so that no power-of-two chunking lines
/// up with the pattern and a misplaced CONTINUATION chunk shows).
fn big(ctx: &RequestContext, body: &[u8], max_message_len: usize) -> Result<Reply, Status> {
    if ctx.format() != FormatId::RAW {
        return Err(Status::unsupported_format(format!(
            "big takes its count in format 0 (raw), not {}",
            ctx.format()
        )));
    }
    let n = match decimal(body, "big's byte count")? {
        Some(n) if n <= max_message_len as u64 => n as usize,
        _ => {
            return Err(Status::new(
                ErrorCode::TOO_LARGE,
                format!("big answers at most {max_message_len} bytes, the maximum message size"),
            ));
        }
    };
    let pattern: Vec<u8> = (0..251u8).collect();
    let mut out = BytesMut::with_capacity(n);
    while out.len() < n {
        let take = (n - out.len()).min(pattern.len());
        out.extend_from_slice(&pattern[..take]);
    }
    Ok(Reply::new(out.freeze()))
}

/// `publish`: one NOTIFY to every subscribed connection, and how many it was queued for.
fn publish(
    ctx: &RequestContext,
    body: &[u8],
    server: Option<&ServerHandle>,
) -> Result<Reply, Status> {
    if !matches!(ctx.format(), FormatId::JSON | FormatId::RAW) {
        return Err(Status::unsupported_format(format!(
            "publish takes JSON (format 1, or the same text in format 0), not {}",
            ctx.format()
        )));
    }
    let shape = "publish takes {\"topic\": str, \"body\": str or any JSON, \"format\"?: 0..=255}";
    let request: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Status::malformed(format!("{shape}: not JSON: {e}")))?;
    let Some(fields) = request.as_object() else {
        return Err(Status::malformed(format!("{shape}: not an object")));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "topic" | "body" | "format"))
    {
        return Err(Status::malformed(format!(
            "{shape}: unknown field {unknown:?}"
        )));
    }
    let Some(topic) = fields.get("topic").and_then(|t| t.as_str()) else {
        return Err(Status::malformed(format!(
            "{shape}: topic must be a string"
        )));
    };
    // `$`-topics are the server's own (`$health`): a client may not forge them.
    if topic.starts_with('$') {
        return Err(Status::malformed(format!(
            "topic {topic:?} is reserved: topics starting with $ are the server's"
        )));
    }
    let Some(value) = fields.get("body") else {
        return Err(Status::malformed(format!("{shape}: body is missing")));
    };
    let (bytes, default_format) = match value {
        serde_json::Value::String(text) => (Bytes::from(text.clone()), FormatId::RAW),
        other => (Bytes::from(other.to_string()), FormatId::JSON),
    };
    let format = match fields.get("format") {
        None => default_format,
        Some(f) => match f.as_u64().and_then(|f| u8::try_from(f).ok()) {
            Some(f) => FormatId::new(f),
            None => return Err(Status::malformed(format!("{shape}: bad format {f}"))),
        },
    };
    let Some(server) = server else {
        return Err(Status::new(
            ErrorCode::UNAVAILABLE,
            "the server is still starting",
        ));
    };
    let published = server
        .publish(topic, format, bytes)
        .map_err(|e| Status::malformed(e.to_string()))?;
    let answer = serde_json::json!({ "delivered": published.delivered });
    Ok(Reply::new(answer.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal(b"1500", "x").unwrap(), Some(1500));
        assert_eq!(decimal(b" 7\n", "x").unwrap(), Some(7));
        assert_eq!(decimal(b"99999999999999999999999", "x").unwrap(), None);
        for bad in [&b""[..], b"-1", b"+1", b"1.5", b"1e3", b"ten", b"1 2"] {
            let err = decimal(bad, "x").unwrap_err();
            assert_eq!(err.code(), ErrorCode::MALFORMED, "{bad:?}");
        }
    }

    #[test]
    fn fail_codes() {
        assert_eq!(fail(b"1404").unwrap_err().code(), ErrorCode(1404));
        assert_eq!(fail(b"7").unwrap_err().code(), ErrorCode::TOO_LARGE);
        assert_eq!(fail(b"65535").unwrap_err().code(), ErrorCode(65535));
        for bad in [&b"0"[..], b"65536", b"x", b""] {
            assert_eq!(
                fail(bad).unwrap_err().code(),
                ErrorCode::MALFORMED,
                "{bad:?}"
            );
        }
    }
}
