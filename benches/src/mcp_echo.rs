//! A lean MCP echo server: the least an MCP server must do to answer requests.
//!
//! Each connection reads into one buffer, decodes every whole frame of the read with
//! `mcp_codec` (header, CRC, envelope), answers each REQUEST with a RESPONSE of the same id,
//! format and body (and each PING with a PONG), writes all the answers of the read in one
//! write, and reads again. No task per request, no routing, no metadata, no flow control.
//!
//! Only single-frame requests are echoed: a request split into CONTINUATION frames (a body
//! larger than one frame) ends the connection with an error, so misuse shows as failed
//! calls rather than hangs. CANCEL and GOAWAY are ignored (every request is answered in the
//! same read it arrived in), as are frames a client does not send.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use mcp_codec::{Decoded, Envelope, Flags, FrameDecoder, Metadata, Pong, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts the echo server on `127.0.0.1:0`; it runs until the runtime ends.
pub async fn serve() -> io::Result<SocketAddr> {
    crate::serve_on_loopback(echo_connection).await
}

async fn echo_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        // Reply to every whole frame of this read; keep a partial one for the next read.
        while let Decoded::Frame { frame, len } = decoder.decode(&buf).map_err(invalid)? {
            match Envelope::parse(frame).map_err(invalid)? {
                Envelope::Request(request) => {
                    if request.flags.more() {
                        return Err(invalid("multi-frame requests are not echoed"));
                    }
                    Envelope::Response(Response {
                        id: request.id,
                        flags: Flags::NONE,
                        format: request.format,
                        meta: Metadata::EMPTY,
                        body: request.body,
                    })
                    .encode_to_buf(&mut out)
                    .map_err(invalid)?;
                }
                Envelope::Ping(ping) => {
                    Envelope::Pong(Pong { nonce: ping.nonce })
                        .encode_to_buf(&mut out)
                        .map_err(invalid)?;
                }
                Envelope::Continuation(_) => {
                    return Err(invalid("multi-frame requests are not echoed"));
                }
                _ => {}
            }
            buf.advance(len);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

fn invalid<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_transport::{Answer, CallDeadline, Connection, ConnectionConfig, Meta};
    use std::time::Duration;

    #[tokio::test]
    async fn many_calls_in_flight_each_get_their_own_body() {
        let addr = serve().await.unwrap();
        let conn = Connection::connect(addr, ConnectionConfig::default())
            .await
            .unwrap();
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let body = i.to_be_bytes();
                    let reply = conn
                        .call("echo", 7, &Meta::new(), &body, CallDeadline::default())
                        .await;
                    (i, reply)
                })
            })
            .collect();
        let all = tokio::time::timeout(Duration::from_secs(10), async {
            let mut out = Vec::with_capacity(calls.len());
            for call in calls {
                out.push(call.await.expect("task"));
            }
            out
        })
        .await
        .expect("echo answered in time");
        for (i, reply) in all {
            match reply.expect("call") {
                Answer::Response(r) => {
                    assert_eq!(r.body().as_ref(), &i.to_be_bytes());
                    assert_eq!(r.format(), 7);
                }
                Answer::Error(e) => panic!("remote error {e:?}"),
            }
        }
        conn.close();
    }
}
