//! The server and a client connection over in-memory streams (`tokio::io::duplex`): the
//! drivers are generic over the byte stream, so nothing here touches a socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::format;
use mcp_server::{Reply, Server};
use mcp_transport::{Accept, CallOptions, Connection, ConnectionConfig, Meta, Reply as Answer};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Accepts the duplex streams a test hands it.
struct DuplexAccept(mpsc::Receiver<DuplexStream>);

impl Accept for DuplexAccept {
    type Io = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        match self.0.recv().await {
            Some(stream) => Ok((stream, SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))),
            // Every sender gone: no more clients will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

#[tokio::test]
async fn calls_over_an_in_memory_stream() {
    let (tx, rx) = mpsc::channel(4);
    let server = Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .serve_with(DuplexAccept(rx))
        .unwrap();
    // A small buffer, so that large bodies move in many partial reads and writes.
    let (client_end, server_end) = tokio::io::duplex(1024);
    tx.send(server_end).await.unwrap();
    let conn = Connection::over(client_end, ConnectionConfig::default()).unwrap();
    let opts = || CallOptions::timeout(Duration::from_secs(5));
    for body in [b"hi".to_vec(), vec![7u8; 200_000]] {
        match conn
            .call("echo", format::RAW, &Meta::new(), &body, opts())
            .await
            .unwrap()
        {
            Answer::Response(r) => assert_eq!(r.body().as_ref(), &body[..]),
            Answer::Error(e) => panic!("{e}"),
        }
    }
    match conn
        .call("nope", format::RAW, &Meta::new(), b"", opts())
        .await
        .unwrap()
    {
        Answer::Error(e) => assert_eq!(e.code, mcp_codec::ErrorCode::UNKNOWN_METHOD),
        Answer::Response(_) => panic!("an unknown method was answered"),
    }
    assert_eq!(server.stats().accepted_connections, 1);
    conn.close();
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}
