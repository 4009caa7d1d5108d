//! The blocking client, for programs without async: no `#[tokio::main]`, no `.await`.
//!
//! `cargo run -p mcp-client --example blocking`

use std::time::Duration;

use mcp_client::blocking::Client;
use mcp_client::{CallOptions, Json};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Sum {
    values: Vec<i64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The demo server needs a runtime; the client below brings its own.
    let server_rt = tokio::runtime::Runtime::new()?;
    let server = server_rt.block_on(
        mcp_server::Server::builder()
            .route_typed("math.sum", Json, |_ctx, req: Sum| async move {
                Ok::<_, mcp_server::Status>(req.values.iter().sum::<i64>())
            })
            .bind("127.0.0.1:0"),
    )?;

    let client = Client::connect(server.local_addr())?;
    let total: i64 = client.call(
        "math.sum",
        &Sum {
            values: vec![1, 2, 3, 4],
        },
    )?;
    println!("sum = {total}");

    // Options work as in the async client.
    let total: i64 = client.call_with(
        "math.sum",
        &Sum {
            values: vec![40, 2],
        },
        CallOptions::new()
            .timeout(Duration::from_millis(500))
            .idempotent(),
    )?;
    println!("sum = {total}");

    let m = client.metrics();
    println!("{} calls, p50 {:?}", m.calls, m.latency.p50);
    client.close();
    server_rt.block_on(server.shutdown(Duration::from_secs(1)))?;
    Ok(())
}
