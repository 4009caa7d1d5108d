//! The MCP stack against the practical ceiling of any multiplexed client, layer by layer.
//!
//! Everything runs in one process on one current-thread runtime (repeatable timings on a
//! small machine), over real loopback TCP, one connection, driven by the same closed-loop
//! load generator as `mcp bench` (`mcp_cli::loadgen`). Each round measures five pairs:
//!
//! - (a) `raw client -> raw echo`: a minimal multiplexed echo (`mcp_benches::raw_echo`: no
//!   framing, no CRC, no envelope), the ceiling;
//! - (b) `Connection -> lean echo`: `mcp_transport::Connection` against a lean MCP echo
//!   (`mcp_benches::mcp_echo`: decodes frames, answers every REQUEST of a read in one
//!   write, no task per request) — the transport and codec over (a);
//! - (c) `Client -> lean echo`: `mcp_client::Client` against the same lean echo — the
//!   client facade over (b);
//! - (d) `Client -> Server`: the full stack, `mcp_client::Client` against the
//!   `mcp_server::Server` raw echo route;
//! - (e) `Connection -> Server`: `Connection` against `mcp_server::Server` — the server
//!   over the lean echo, with a lean client;
//! - (f) `Fleet of one -> Server`: (d) with the client made by `Client::fleet` over the one
//!   server, so that (f) over (d) is what the balancer costs a call (issue 10: at most 5%).
//!
//! It prints one line per pair per round, then the best of each with its ratio to (a) and
//! its cost per request (one thread runs both ends, so ns/req are client plus server CPU
//! and differences between pairs attribute the gap to a layer), and last the ratio of the
//! full stack (d) to the raw echo (a).
//!
//! `cargo bench -p mcp-benches --bench ceiling` (settings from the environment:
//! `MCP_BENCH_SECS` (default 5), `MCP_BENCH_CONCURRENCY` (64), `MCP_BENCH_SIZE` (64),
//! `MCP_BENCH_ROUNDS` (3, pairs measured in turn, best of each reported),
//! `MCP_BENCH_PAIRS` (the letters of the pairs to measure, e.g. `ad`; all by default: the
//! summary needs all six)). Under `cargo test --benches` it runs one quick round (300 ms
//! per pair).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_benches::mcp_echo;
use mcp_benches::raw_echo::{self, RawEchoClient};
use mcp_cli::loadgen::{self, LoadConfig, LoadReport};
use mcp_client::{Client, LimitConfig, RawRequest};
use mcp_format::FormatId;
use mcp_server::{Reply, Server, ServerHandle};
use mcp_transport::{self as transport, CallDeadline, Connection, ConnectionConfig, Meta};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pairs measured, in the order they run in each round.
#[derive(Debug, Clone, Copy)]
enum Pair {
    RawEcho,
    ConnectionLean,
    ClientLean,
    ClientServer,
    ConnectionServer,
    FleetServer,
}

impl Pair {
    const ALL: [Pair; 6] = [
        Pair::RawEcho,
        Pair::ConnectionLean,
        Pair::ClientLean,
        Pair::ClientServer,
        Pair::ConnectionServer,
        Pair::FleetServer,
    ];

    fn letter(self) -> char {
        self.label().chars().nth(1).unwrap_or('?')
    }

    fn label(self) -> &'static str {
        match self {
            Pair::RawEcho => "(a) raw client -> raw echo",
            Pair::ConnectionLean => "(b) Connection -> lean echo",
            Pair::ClientLean => "(c) Client -> lean echo",
            Pair::ClientServer => "(d) Client -> Server",
            Pair::ConnectionServer => "(e) Connection -> Server",
            Pair::FleetServer => "(f) Fleet of one -> Server",
        }
    }

    async fn measure(self, config: &LoadConfig, size: usize) -> LoadReport {
        let body = Bytes::from(vec![0x5a; size]);
        match self {
            Pair::RawEcho => {
                let addr = raw_echo::serve().await.expect("bind raw echo");
                raw_client(config, addr, body).await
            }
            Pair::ConnectionLean => {
                let addr = mcp_echo::serve().await.expect("bind lean echo");
                connection(config, addr, body).await
            }
            Pair::ClientLean => {
                let addr = mcp_echo::serve().await.expect("bind lean echo");
                client(config, addr, body).await
            }
            Pair::ClientServer => {
                let server = echo_server().await;
                let report = client(config, server.local_addr(), body).await;
                let _ = server.shutdown(Duration::from_secs(1)).await;
                report
            }
            Pair::ConnectionServer => {
                let server = echo_server().await;
                let report = connection(config, server.local_addr(), body).await;
                let _ = server.shutdown(Duration::from_secs(1)).await;
                report
            }
            Pair::FleetServer => {
                let server = echo_server().await;
                let report = fleet_client(config, server.local_addr(), body).await;
                let _ = server.shutdown(Duration::from_secs(1)).await;
                report
            }
        }
    }
}

/// The `mcp-server` side: one raw echo route.
async fn echo_server() -> ServerHandle {
    Server::builder()
        .route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) })
        .bind("127.0.0.1:0")
        .await
        .expect("bind mcp server")
}

async fn raw_client(config: &LoadConfig, addr: std::net::SocketAddr, body: Bytes) -> LoadReport {
    let client = RawEchoClient::connect(addr)
        .await
        .expect("connect raw echo");
    loadgen::run(config, Arc::default(), move || {
        let client = client.clone();
        let body = body.clone();
        async move {
            match client.call(&body).await {
                Ok(back) if back.len() == body.len() => Ok(()),
                Ok(_) => Err("wrong echo".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

async fn connection(config: &LoadConfig, addr: std::net::SocketAddr, body: Bytes) -> LoadReport {
    let conn = Connection::connect(addr, ConnectionConfig::default())
        .await
        .expect("connect mcp connection");
    let caller = conn.clone();
    let report = loadgen::run(config, Arc::default(), move || {
        let conn = caller.clone();
        let body = body.clone();
        async move {
            let reply = conn
                .call(
                    "echo",
                    FormatId::RAW.get(),
                    &Meta::new(),
                    &body,
                    CallDeadline::default(),
                )
                .await;
            match reply {
                Ok(transport::Answer::Response(back)) if back.body().len() == body.len() => Ok(()),
                Ok(transport::Answer::Response(_)) => Err("wrong echo".to_string()),
                Ok(transport::Answer::Error(e)) => Err(format!("remote error {e:?}")),
                Err(e) => Err(format!("{:?}", e.kind())),
            }
        }
    })
    .await;
    conn.close();
    report
}

async fn client(config: &LoadConfig, addr: std::net::SocketAddr, body: Bytes) -> LoadReport {
    let client = Client::builder(addr.to_string())
        .max_connections(1)
        .limit(LimitConfig::new(config.concurrency))
        .connect()
        .await
        .expect("connect mcp client");
    let caller = client.clone();
    let report = echo_load(config, body, move |r| {
        let c = caller.clone();
        async move { c.call_raw(r).await }
    })
    .await;
    client.close().await;
    report
}

/// (d)'s client, made as a fleet of the one server: the same calls through the balancer.
async fn fleet_client(config: &LoadConfig, addr: std::net::SocketAddr, body: Bytes) -> LoadReport {
    let client = Client::fleet([addr.to_string()])
        .max_connections(1)
        .limit(LimitConfig::new(config.concurrency))
        .connect()
        .await
        .expect("connect mcp fleet client");
    let caller = client.clone();
    let report = echo_load(config, body, move |r| {
        let c = caller.clone();
        async move { c.call_raw(r).await }
    })
    .await;
    client.close().await;
    report
}

/// The load of `echo` calls made by `call`, each checked for its echo.
async fn echo_load<C, F>(config: &LoadConfig, body: Bytes, call: C) -> LoadReport
where
    C: Fn(RawRequest) -> F + Send + Sync + 'static,
    F: Future<Output = Result<mcp_client::RawResponse, mcp_client::Error>> + Send + 'static,
{
    let size = body.len();
    loadgen::run(config, Arc::default(), move || {
        let reply = call(RawRequest::new("echo", FormatId::RAW, body.clone()));
        async move {
            match reply.await {
                Ok(back) if back.body().len() == size => Ok(()),
                Ok(_) => Err("wrong echo".to_string()),
                Err(e) => Err(e.kind().to_string()),
            }
        }
    })
    .await
}

/// Client plus server CPU per request: one thread runs both ends.
fn ns_per_request(r: &LoadReport) -> f64 {
    1e9 / r.requests_per_second()
}

fn line(name: &str, r: &LoadReport) -> String {
    format!(
        "{name:<28} {:>10.0} req/s  {:>6.0} ns/req   p50 {:>7.1} us   p99 {:>7.1} us   p99.9 {:>7.1} us   errors {}",
        r.requests_per_second(),
        ns_per_request(r),
        r.percentile_us(50.0),
        r.percentile_us(99.0),
        r.percentile_us(99.9),
        r.error_count()
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a
    // quick run: measure briefly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let duration = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(env("MCP_BENCH_SECS", 5))
    };
    let config = LoadConfig {
        concurrency: env("MCP_BENCH_CONCURRENCY", 64) as usize,
        duration,
        rate: None,
        warmup: Duration::from_millis(if quick { 50 } else { 500 }),
    };
    let size = env("MCP_BENCH_SIZE", 64) as usize;
    let rounds = if quick { 1 } else { env("MCP_BENCH_ROUNDS", 3) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "ceiling: {} in flight, {size} B bodies, one connection, current-thread runtime, {:.1} s x {rounds} rounds per pair",
        config.concurrency,
        duration.as_secs_f64()
    );
    let only = std::env::var("MCP_BENCH_PAIRS").unwrap_or_default();
    let wanted = |pair: Pair| only.is_empty() || only.contains(pair.letter());
    let mut best: [Option<LoadReport>; 6] = Default::default();
    for round in 1..=rounds {
        for (pair, best) in Pair::ALL.into_iter().zip(best.iter_mut()) {
            if !wanted(pair) {
                continue;
            }
            let report = rt.block_on(pair.measure(&config, size));
            println!("round {round}: {}", line(pair.label(), &report));
            if best
                .as_ref()
                .is_none_or(|b| report.requests_per_second() > b.requests_per_second())
            {
                *best = Some(report);
            }
        }
    }
    if !Pair::ALL.into_iter().all(wanted) {
        return;
    }
    let best = best.map(|b| b.expect("one round"));
    let raw = best[0].requests_per_second();
    let ns = |i: usize| ns_per_request(&best[i]);
    for (pair, report) in Pair::ALL.into_iter().zip(&best) {
        println!(
            "best:    {}   x{:.3} of raw",
            line(pair.label(), report),
            report.requests_per_second() / raw
        );
    }
    println!("cost per request over the layer below (ns, client + server CPU on one thread):");
    println!(
        "  transport + codec, both ends   (b) - (a): {:>7.0}",
        ns(1) - ns(0)
    );
    println!(
        "  client facade over Connection  (c) - (b): {:>7.0}",
        ns(2) - ns(1)
    );
    println!(
        "  server over lean echo          (e) - (b): {:>7.0}",
        ns(4) - ns(1)
    );
    println!(
        "  full stack over raw echo       (d) - (a): {:>7.0}  (the three above sum to {:.0})",
        ns(3) - ns(0),
        (ns(1) - ns(0)) + (ns(2) - ns(1)) + (ns(4) - ns(1))
    );
    println!(
        "ratio mcp / raw echo: {:.3} (target >= 0.8)",
        best[3].requests_per_second() / raw
    );
    println!(
        "the balancer: (f) / (d) ns per request {:.3} (issue 10: at most 1.05)",
        ns(5) / ns(3)
    );
}
