//! Helpers shared by the transport's loopback tests.
#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::time::Duration;

use mcp_test_support::STEP;
use mcp_transport::{BackoffConfig, ConnectionConfig, PoolConfig};

/// Awaits `f` for at most [`STEP`], failing the test otherwise.
pub(crate) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .expect("finished in time")
}

/// Connection settings for tests: the defaults with a connect timeout of 2 s.
pub(crate) fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout: Duration::from_secs(2),
        ..ConnectionConfig::default()
    }
}

/// Pool settings for tests over `connection`: reconnects and sweeps fast enough for tests.
pub(crate) fn pool_config_with(connection: ConnectionConfig) -> PoolConfig {
    PoolConfig {
        connection,
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        maintenance_interval: Duration::from_millis(50),
        ..PoolConfig::default()
    }
}
