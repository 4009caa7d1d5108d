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

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Listens on `127.0.0.1:0` and runs `connection` in a task for every client, until the
/// runtime ends; returns the address.
async fn serve_on_loopback<F, Fut>(connection: F) -> io::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream));
        }
    });
    Ok(addr)
}
