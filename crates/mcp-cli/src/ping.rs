//! `mcp ping`: PING/PONG round trips straight over the codec.
//!
//! It speaks the wire protocol directly (no client, no pool) so that the round trip it
//! measures is the network and the peer's PONG path, nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use mcp_codec::{Decoded, Envelope, ErrorCode, FrameDecoder, Ping};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Round-trip statistics of a ping run.
#[derive(Debug, Clone, Default)]
pub struct PingStats {
    /// PINGs sent.
    pub sent: u32,
    /// Round trips in microseconds, in order, for the PINGs answered.
    pub rtts_us: Vec<f64>,
}

impl PingStats {
    /// PINGs not answered in time.
    pub fn lost(&self) -> u32 {
        self.sent - self.rtts_us.len() as u32
    }

    /// min, mean, max and mean deviation of the round trips, in microseconds.
    pub fn summary(&self) -> Option<(f64, f64, f64, f64)> {
        if self.rtts_us.is_empty() {
            return None;
        }
        let n = self.rtts_us.len() as f64;
        let min = self.rtts_us.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rtts_us.iter().copied().fold(0.0, f64::max);
        let mean = self.rtts_us.iter().sum::<f64>() / n;
        let mdev = self.rtts_us.iter().map(|r| (r - mean).abs()).sum::<f64>() / n;
        Some((min, mean, max, mdev))
    }
}

/// Sends `count` PINGs to `addr`, `interval` apart, each waiting up to `wait` for its PONG;
/// `on_reply(seq, rtt_us)` is called for each answer (`None` for a lost one).
pub async fn run(
    addr: SocketAddr,
    count: u32,
    interval: Duration,
    wait: Duration,
    on_reply: impl FnMut(u32, Option<f64>),
) -> Result<PingStats, String> {
    let stream = timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("cannot connect to {addr}: timed out after 1 s"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    run_on(stream, count, interval, wait, on_reply).await
}

/// [`run`] over a stream already connected (TLS, say).
pub async fn run_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    count: u32,
    interval: Duration,
    wait: Duration,
    mut on_reply: impl FnMut(u32, Option<f64>),
) -> Result<PingStats, String> {
    let mut stats = PingStats::default();
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut decoder = FrameDecoder::new();
    // The GOAWAY the server sent, if any: why it will close the connection. Its reason is
    // the server's text, quoted in the error as it is (the CLI escapes what it prints).
    let mut goaway: Option<String> = None;
    for seq in 1..=count {
        if seq > 1 {
            tokio::time::sleep(interval).await;
        }
        let nonce = (u64::from(seq) | 0x6d63_7000_0000_0000).to_be_bytes();
        let mut frame = [0u8; 16];
        let len = Ping { nonce }
            .encode(&mut frame)
            .map_err(|e| format!("cannot encode PING: {e}"))?;
        let sent = Instant::now();
        stream
            .write_all(&frame[..len])
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        stats.sent += 1;
        let answer = timeout(wait, async {
            loop {
                // Take every whole frame; only our PONG ends the wait, and an ERROR for the
                // whole connection ends the run. Anything else (a heartbeat PING of the
                // server, a stale PONG) is skipped; a GOAWAY is kept to say why the server
                // closes.
                loop {
                    match decoder.decode(&rbuf) {
                        Ok(Decoded::Frame { frame, len }) => {
                            let outcome = match Envelope::parse(frame) {
                                Ok(Envelope::Pong(p)) if p.nonce == nonce => Some(Ok(())),
                                Ok(Envelope::Error(e)) if e.id == 0 => Some(Err(format!(
                                    "the server ended the connection with ERROR {}: {}",
                                    code_name(e.code),
                                    e.message
                                ))),
                                Ok(Envelope::GoAway(g)) => {
                                    goaway = Some(format!("GOAWAY {}: {}", g.code.0, g.reason));
                                    None
                                }
                                _ => None,
                            };
                            let _ = rbuf.split_to(len);
                            if let Some(outcome) = outcome {
                                return outcome;
                            }
                        }
                        Ok(Decoded::NeedMore { .. }) => break,
                        Ok(Decoded::Skip { len }) => {
                            let _ = rbuf.split_to(len);
                        }
                        Err(e) => return Err(format!("the server sent a damaged frame: {e}")),
                    }
                }
                match stream.read_buf(&mut rbuf).await {
                    Ok(0) => {
                        return Err(match &goaway {
                            Some(goaway) => {
                                format!("the server closed the connection after {goaway}")
                            }
                            None => "the server closed the connection".to_string(),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("connection lost: {e}")),
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(())) => {
                let rtt = sent.elapsed().as_secs_f64() * 1e6;
                stats.rtts_us.push(rtt);
                on_reply(seq, Some(rtt));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => on_reply(seq, None),
        }
    }
    Ok(stats)
}

/// `1 (MALFORMED)`, `1404 (application)`.
fn code_name(code: ErrorCode) -> String {
    match code.name() {
        Some(name) => format!("{} ({name})", code.0),
        None if code.is_application() => format!("{} (application)", code.0),
        None => code.0.to_string(),
    }
}
