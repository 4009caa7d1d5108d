//! Support code for the benchmarks in `benches/` (not published).
//!
//! [`raw_echo`] is the practical ceiling for any multiplexed client over one TCP
//! connection: the same shape as the MCP connection (a writer task batching from a
//! channel, a reader resolving oneshots by id) but no framing, no CRC, no envelope.
#![warn(missing_docs)]

pub mod raw_echo;
