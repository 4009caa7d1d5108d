//! Helpers shared by the end-to-end tests: an in-process server on loopback and bounded
//! waits.
#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::time::Duration;

use mcp_client::{BackoffConfig, Client, ClientBuilder, Json, PoolConfig};
use mcp_server::{ServerBuilder, ServerHandle};

/// Every await that could hang in these tests is bounded by this.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// Awaits `fut` for at most [`BOUND`], failing the test with `what` otherwise.
pub(crate) async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

/// Starts `server` on a free loopback port.
pub(crate) async fn serve(server: ServerBuilder) -> ServerHandle {
    server.bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

/// A client builder for `server`, with a reconnect backoff short enough for tests.
pub(crate) fn client_for(server: &ServerHandle) -> ClientBuilder<Json> {
    let pool = PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    };
    Client::builder(server.local_addr()).pool_config(pool)
}
