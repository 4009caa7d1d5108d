//! Client and server metrics on one Prometheus endpoint, and a trace printed by
//! `tracing-subscriber`: an embedded server and a client in one process, both built with
//! their `metrics` feature.
//!
//! ```sh
//! cargo run -p mcp-client --features metrics --example prometheus
//! ```
//!
//! The libraries record through the `metrics` facade only; the program chooses the
//! exporter. Here it is `metrics-exporter-prometheus` without its HTTP listener: the
//! program serves the rendered text itself on 127.0.0.1 (an ephemeral port), so it knows
//! the port and needs no HTTP server crate. The logs show the client's `mcp.call` span and
//! the server's `request` span sharing one `trace_id` (the server reads the `traceparent`
//! the client sends). `tests/prometheus.rs` runs this same setup and checks the series.

#![allow(dead_code)] // `tests/prometheus.rs` includes this file and uses only some of it

use std::net::SocketAddr;
use std::time::Duration;

use mcp_client::Client;
use mcp_server::{Reply, Server, ServerBuilder, ServerHandle, Status};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bucket bounds of the duration histograms, in seconds: 50 us to 5 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Installs the Prometheus recorder as the process's `metrics` recorder (once per
/// process: before any client or server is built, so that they take their handles from it).
pub(crate) fn install_recorder() -> PrometheusHandle {
    PrometheusBuilder::new()
        // Histograms with buckets rather than the exporter's default summaries.
        .set_buckets(BUCKETS)
        .expect("constant buckets are valid")
        .install_recorder()
        .expect("no other recorder was installed")
}

/// A server with an `echo` and a `fail` route on a free loopback port.
pub(crate) async fn start_server() -> Result<ServerHandle, mcp_server::Error> {
    server_builder().bind("127.0.0.1:0").await
}

/// The server's routes: `echo`, and `fail`, which answers an application error.
pub(crate) fn server_builder() -> ServerBuilder {
    Server::builder()
        .route_raw("echo", |_ctx, body| async move {
            tracing::info!("echoing");
            Ok(Reply::new(body))
        })
        .route_raw("fail", |_ctx, _body| async {
            Err(Status::application(1001, "refused on purpose"))
        })
}

/// Serves `GET /metrics` (any path, in fact) on a free loopback port: each connection gets
/// the rendered text and is closed. Runs until the runtime stops.
pub(crate) async fn serve_metrics(handle: PrometheusHandle) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                // The request head (a scraper's GET): read what came, answer, close.
                let mut buf = [0u8; 1024];
                let read = stream.read(&mut buf);
                if tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .is_err()
                {
                    return;
                }
                handle.run_upkeep();
                let body = handle.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Scrapes `addr` with a plain HTTP/1.1 GET over TCP; the body, or why not (within 5 s).
pub(crate) async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let get = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => Err(std::io::Error::other(format!(
                "not a 200 answer: {:.80}",
                response
            ))),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| std::io::Error::other("scrape timed out"))?
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans and events at DEBUG: the client's `mcp.call` and the server's `request` span,
    // with their fields (`trace_id` on both).
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_target(false)
        .init();
    let handle = install_recorder();
    let server = start_server().await?;
    let client = Client::builder(server.local_addr().to_string())
        .connect()
        .await?;

    for i in 0..5 {
        let _: serde_json::Value = client.call("echo", &serde_json::json!({ "n": i })).await?;
    }
    let failed = client.call::<_, serde_json::Value>("fail", &()).await;
    println!("fail answered: {}", failed.expect_err("the route fails"));

    let addr = serve_metrics(handle).await?;
    println!("\nmetrics on http://{addr}/metrics; the MCP series:\n");
    for line in scrape(addr).await?.lines() {
        if (line.starts_with("rpc_") || line.starts_with("mcp_")) && !line.contains("_bucket") {
            println!("{line}");
        }
    }
    client.close().await;
    server.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}
