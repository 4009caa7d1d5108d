//! `mcp-client`: the client of MCP 1.2, the binary Microservice/Message Communication
//! Protocol (not the Model Context Protocol). The one crate an application depends on.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
// The policies land before the `Client` that composes them (it needs mcp-transport); until
// then their crate-private API is only used by their tests.
#![allow(dead_code)]

mod breaker;
mod error;
mod limit;
mod metrics;
mod retry;
mod trace;
mod window;

pub use breaker::{BreakerConfig, BreakerState};
pub use error::{Error, ErrorKind, Phase, RemoteError};
pub use limit::{LimitConfig, LimitMode};
pub use metrics::{ConnectionCounts, ErrorCounts, LatencySnapshot, MetricsSnapshot};
pub use retry::{RetryBudgetConfig, RetryConfig};
pub use trace::{TraceContext, TraceParseError};
