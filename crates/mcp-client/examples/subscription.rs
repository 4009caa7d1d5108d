//! Subscriptions: a typed stream of pushes that survives reconnects and unsubscribes when
//! dropped, plus a one-way message to the server.
//!
//! `cargo run -p mcp-client --example subscription`

use std::time::Duration;

use mcp_client::{Client, Json};
use mcp_server::Server;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Tick {
    n: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Hello {
    from: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder()
        // One-way messages from clients land in a handler; nothing answers them.
        .route_notify_fn("hello", |ctx, body| async move {
            println!(
                "server got a one-way {} message: {}",
                ctx.topic(),
                String::from_utf8_lossy(&body)
            );
        })
        .bind("127.0.0.1:0")
        .await?;

    // The server publishes a tick every 100 ms.
    let publisher = server.clone();
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        for n in 1.. {
            interval.tick().await;
            if publisher
                .publish_typed("ticker", &Json, &Tick { n })
                .is_err()
            {
                break;
            }
        }
    });

    let client = Client::builder(server.local_addr()).connect().await?;
    client
        .notify(
            "hello",
            &Hello {
                from: "subscription example".into(),
            },
        )
        .await?;

    let mut ticks = client.subscribe::<Tick>("ticker").await?;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), ticks.next()).await? {
            Some(tick) => println!("tick {}", tick?.n),
            None => break,
        }
    }
    // Dropping the stream sends `$unsubscribe`.
    drop(ticks);

    client.close().await;
    ticker.abort();
    server.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}
