//! Stand-in replicas for the smoke run (`smoke/run.sh`): an mcp-rs server on each address
//! given, answering `who` with its own address (and `$health`, built in, with SERVING).
//! Stops on Ctrl-C.

use mcp_client::Bytes;
use mcp_server::{Reply, Server};

#[tokio::main]
async fn main() {
    let mut servers = Vec::new();
    for addr in std::env::args().skip(1) {
        let reply = Bytes::from(addr.clone());
        let server = Server::builder()
            .route_raw("who", move |_ctx, _body| {
                let reply = reply.clone();
                async move { Ok(Reply::new(reply)) }
            })
            .bind(addr.as_str())
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        eprintln!("replica: serving on {}", server.local_addr());
        servers.push(server);
    }
    let _ = tokio::signal::ctrl_c().await;
}
