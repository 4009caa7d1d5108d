//! The client's heartbeat over an in-memory stream in virtual time: no socket, no sleep.

use std::time::Duration;

use bytes::BytesMut;
use mcp_codec::{Envelope, Pong};
use mcp_transport::{Connection, ConnectionConfig, HeartbeatConfig, Inbound, McpCodec, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

/// With an interval shorter than the timeout, a PONG moves the next PING to one interval
/// after it, not to the end of the first PING's timeout: the driver's timer must come
/// forward when a frame arrives (found by the `client_core` fuzz target's timer model).
#[tokio::test(start_paused = true)]
async fn after_a_pong_the_next_ping_comes_one_interval_later() {
    let (client_end, mut server_end) = tokio::io::duplex(64 * 1024);
    let config = ConnectionConfig {
        heartbeat: HeartbeatConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        },
        ..ConnectionConfig::default()
    };
    let conn = Connection::over(client_end, config).unwrap();
    let start = Instant::now();
    let mut codec = McpCodec::new(Role::Server);
    let mut buf = BytesMut::new();
    let mut pings = Vec::new();
    while pings.len() < 3 {
        let message = loop {
            if let Some(message) = codec.decode(&mut buf).unwrap() {
                break message;
            }
            let mut chunk = [0u8; 256];
            let n = server_end.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed");
            buf.extend_from_slice(&chunk[..n]);
        };
        if let Inbound::Ping(nonce) = message {
            pings.push(start.elapsed());
            let mut out = BytesMut::new();
            codec
                .encode(Envelope::Pong(Pong { nonce }), &mut out)
                .unwrap();
            server_end.write_all(&out).await.unwrap();
        }
    }
    // PING at 1 s, answered at once; the next ones one interval after each PONG.
    let secs: Vec<u64> = pings.iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [1, 2, 3], "{pings:?}");
    assert!(conn.is_open());
}
