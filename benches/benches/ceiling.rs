//! The MCP client against the practical ceiling of any multiplexed client.
//!
//! Both sides run in one process on one current-thread runtime (repeatable timings on a
//! small machine), over real loopback TCP, driven by the same closed-loop load generator
//! as `mcp bench`: first a minimal multiplexed echo (`mcp_benches::raw_echo`: no framing,
//! no CRC, no envelope), then the full `mcp-client` stack against the `mcp-server` echo.
//! It prints both and their ratio.
//!
//! `cargo bench -p mcp-benches --bench ceiling` (settings from the environment:
//! `MCP_BENCH_SECS` (default 5), `MCP_BENCH_CONCURRENCY` (64), `MCP_BENCH_SIZE` (64),
//! `MCP_BENCH_ROUNDS` (3, alternating, best of each reported)).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_benches::raw_echo::{self, RawEchoClient};
use mcp_cli::loadgen::{self, LoadConfig, LoadReport};
use mcp_client::{Client, LimitConfig, RawRequest};
use mcp_format::FormatId;
use mcp_server::{Reply, Server};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn ceiling(config: &LoadConfig, size: usize) -> LoadReport {
    let addr = raw_echo::serve().await.expect("bind raw echo");
    let client = RawEchoClient::connect(addr)
        .await
        .expect("connect raw echo");
    let body = Bytes::from(vec![0x5a; size]);
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

async fn mcp(config: &LoadConfig, size: usize) -> LoadReport {
    let server = Server::builder()
        .route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) })
        .bind("127.0.0.1:0")
        .await
        .expect("bind mcp server");
    let client = Client::builder(server.local_addr().to_string())
        .max_connections(1)
        .limit(LimitConfig::new(config.concurrency))
        .connect()
        .await
        .expect("connect mcp client");
    let body = Bytes::from(vec![0x5a; size]);
    let caller = client.clone();
    let report = loadgen::run(config, Arc::default(), move || {
        let client = caller.clone();
        let request = RawRequest::new("echo", FormatId::RAW, body.clone());
        async move {
            match client.call_raw(request).await {
                Ok(back) if back.body().len() == size => Ok(()),
                Ok(_) => Err("wrong echo".to_string()),
                Err(e) => Err(e.kind().to_string()),
            }
        }
    })
    .await;
    client.close().await;
    let _ = server.shutdown(Duration::from_secs(1)).await;
    report
}

fn line(name: &str, r: &LoadReport) -> String {
    format!(
        "{name:<12} {:>10.0} req/s   p50 {:>7.1} us   p99 {:>7.1} us   p99.9 {:>7.1} us   errors {}",
        r.requests_per_second(),
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
    let secs = if quick { 1 } else { env("MCP_BENCH_SECS", 5) };
    let config = LoadConfig {
        concurrency: env("MCP_BENCH_CONCURRENCY", 64) as usize,
        duration: Duration::from_secs(secs),
        rate: None,
        warmup: Duration::from_millis(if quick { 100 } else { 500 }),
    };
    let size = env("MCP_BENCH_SIZE", 64) as usize;
    let rounds = if quick { 1 } else { env("MCP_BENCH_ROUNDS", 3) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "ceiling: {} in flight, {size} B bodies, one connection, current-thread runtime, {secs} s x {rounds} rounds",
        config.concurrency
    );
    let mut best_raw: Option<LoadReport> = None;
    let mut best_mcp: Option<LoadReport> = None;
    for round in 1..=rounds {
        let raw = rt.block_on(ceiling(&config, size));
        let mcp = rt.block_on(mcp(&config, size));
        println!("round {round}: {}", line("raw echo", &raw));
        println!("round {round}: {}", line("mcp client", &mcp));
        if best_raw
            .as_ref()
            .is_none_or(|b| raw.requests_per_second() > b.requests_per_second())
        {
            best_raw = Some(raw);
        }
        if best_mcp
            .as_ref()
            .is_none_or(|b| mcp.requests_per_second() > b.requests_per_second())
        {
            best_mcp = Some(mcp);
        }
    }
    let (raw, mcp) = (best_raw.expect("one round"), best_mcp.expect("one round"));
    println!("best:    {}", line("raw echo", &raw));
    println!("best:    {}", line("mcp client", &mcp));
    println!(
        "ratio mcp / raw echo: {:.3} (target >= 0.8)",
        mcp.requests_per_second() / raw.requests_per_second()
    );
}
