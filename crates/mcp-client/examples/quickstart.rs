//! Quick start: one typed call in JSON.
//!
//! Starts a small server in this process on a free loopback port, calls it, and exits:
//! `cargo run -p mcp-client --example quickstart`.

use mcp_client::Client;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
}

#[derive(Serialize, Deserialize, Debug)]
struct Greeting {
    message: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = demo_server().await?;

    let client = Client::builder(addr).connect().await?;
    let greeting: Greeting = client.call("greet", &Greet { name: "Ada".into() }).await?;
    println!("{}", greeting.message);

    client.close().await;
    Ok(())
}

/// The other side: an MCP server with one typed route, on 127.0.0.1 and a free port.
async fn demo_server() -> Result<std::net::SocketAddr, mcp_server::Error> {
    let server = mcp_server::Server::builder()
        .route_typed("greet", mcp_client::Json, |_ctx, req: Greet| async move {
            let message = format!("Hello, {}!", req.name);
            Ok::<_, mcp_server::Status>(Greeting { message })
        })
        .bind("127.0.0.1:0")
        .await?;
    Ok(server.local_addr())
}
