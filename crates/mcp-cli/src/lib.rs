//! The library half of the `mcp` command-line tool: the pieces its commands are made of,
//! kept here so that they can be tested alone and reused by the benchmarks in `benches/`.
//!
//! - [`loadgen`]: the closed/open-loop load generator behind `mcp bench`.
//! - [`decode`]: the frame printer behind `mcp decode`.
//! - [`memory`]: giving the allocator's free memory back after a connection flood.
//! - [`ping`]: PING/PONG round trips behind `mcp ping`.
//! - [`service`]: the demo and interop test service behind `mcp serve` and `mcp demo`.
//! - [`target`]: where `call`, `ping`, `health` and `bench` go: one address, a list of
//!   replicas or `dns:host:port`, and a client of either one endpoint or a fleet.
//! - [`text`]: escaping the peer's text before it reaches a terminal.
//! - [`tls`]: the TLS flags, and certificates made in memory.
#![warn(missing_docs)]

pub mod decode;
pub mod loadgen;
pub mod memory;
pub mod ping;
pub mod service;
pub mod target;
pub mod text;
pub mod tls;
