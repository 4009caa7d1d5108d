//! Support code for the benchmarks in `benches/` (not published).
//!
//! [`raw_echo`] is the practical ceiling for any multiplexed client over one TCP
//! connection: the same shape as the MCP connection (a writer task batching from a
//! channel, a reader resolving oneshots by id) but no framing, no CRC, no envelope.
//! [`mcp_echo`] is the least an MCP server must do (decode frames, answer each REQUEST,
//! one write per read): the lean server the MCP client layers are measured against.
#![warn(missing_docs)]

pub mod mcp_echo;
pub mod raw_echo;
