//! Unpublished test helpers for mcp-rs: a scriptable MCP peer over loopback TCP.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
