//! Throughput of one `Connection` against a minimal multiplexed echo, over loopback.
//!
//! ```text
//! cargo run --release -p mcp-transport --example throughput -- [in_flight] [body_bytes] [seconds]
//! ```
//!
//! Both sides are measured with the same load: `in_flight` tasks, each sending a
//! `body_bytes` body and awaiting the echo in a loop. The baseline speaks `id u32 | len u32
//! | body` records with the least any multiplexed client must do (a oneshot per call, a
//! pending map, one writer task coalescing writes, one reader task); the MCP side runs the
//! full transport (framing, CRC, id allocation, the pending table, heartbeat) against a lean
//! MCP echo server. The ratio is what the performance issue holds this layer to (>= 0.8 at
//! 64 in flight and 64-byte bodies). This is a quick local gauge; the criterion benches in
//! `benches/` are the reference.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mcp_codec::{Decoded, Envelope, Flags, FrameDecoder, Metadata, Pong, Response};
use mcp_transport::{CallDeadline, Connection, ConnectionConfig, Meta};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let in_flight = args.first().copied().unwrap_or(64) as usize;
    let body_len = args.get(1).copied().unwrap_or(64) as usize;
    let secs = args.get(2).copied().unwrap_or(3);
    let body = Bytes::from(vec![0xab; body_len]);
    let duration = Duration::from_secs(secs);

    // A fourth argument `raw` or `mcp` runs one side only (for profiling).
    let only = std::env::args().nth(4);
    let run_raw = only.as_deref() != Some("mcp");
    let run_mcp = only.as_deref() != Some("raw");

    let raw_addr = serve_raw().await?;
    let raw = RawClient::connect(raw_addr).await?;
    let raw_rate = if !run_raw {
        f64::NAN
    } else {
        run(in_flight, duration, {
            let body = body.clone();
            move || {
                let raw = raw.clone();
                let body = body.clone();
                async move { raw.call(body).await.len() }
            }
        })
        .await
    };

    let mcp_addr = serve_mcp().await?;
    let conn = Connection::connect(mcp_addr, ConnectionConfig::default())
        .await
        .map_err(std::io::Error::other)?;
    let mcp_rate = if !run_mcp {
        f64::NAN
    } else {
        run(in_flight, duration, {
            let body = body.clone();
            let conn = conn.clone();
            move || {
                let conn = conn.clone();
                let body = body.clone();
                async move {
                    match conn
                        .call("echo", 0, &Meta::new(), &body, CallDeadline::default())
                        .await
                    {
                        Ok(mcp_transport::Answer::Response(r)) => r.body().len(),
                        other => panic!("echo failed: {other:?}"),
                    }
                }
            }
        })
        .await
    };

    let writes = conn.stats().writer.batches;
    println!("in flight {in_flight}, body {body_len} B, {secs} s each");
    println!(
        "mcp client writes per call: {:.3}",
        writes as f64 / (mcp_rate * (secs as f64 + 0.3))
    );
    println!("raw multiplexed echo: {raw_rate:>10.0} calls/s");
    println!("mcp Connection:       {mcp_rate:>10.0} calls/s");
    println!("ratio:                {:>10.2}", mcp_rate / raw_rate);
    Ok(())
}

/// Runs `in_flight` loops of `call` for `duration`; returns calls per second.
async fn run<F, Fut>(in_flight: usize, duration: Duration, call: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    // Warm up, then measure.
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + duration;
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let call = call.clone();
            let done = done.clone();
            tokio::spawn(async move {
                loop {
                    let now = Instant::now();
                    if now >= end {
                        return;
                    }
                    call().await;
                    if now >= start {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}

/// A lean MCP echo server: decodes every frame of each read and answers all of them in
/// one write.
async fn serve_mcp() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(mcp_echo(stream));
        }
    });
    Ok(addr)
}

async fn mcp_echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        while let Decoded::Frame { frame, len } =
            decoder.decode(&buf).map_err(std::io::Error::other)?
        {
            match Envelope::parse(frame).map_err(std::io::Error::other)? {
                Envelope::Request(r) => {
                    Envelope::Response(Response {
                        id: r.id,
                        flags: Flags::NONE,
                        format: r.format,
                        meta: Metadata::EMPTY,
                        body: r.body,
                    })
                    .encode_to_buf(&mut out)
                    .map_err(std::io::Error::other)?;
                }
                Envelope::Ping(p) => {
                    Envelope::Pong(Pong { nonce: p.nonce })
                        .encode_to_buf(&mut out)
                        .map_err(std::io::Error::other)?;
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

/// The baseline server: echoes every whole `id | len | body` record of a read at once.
async fn serve_raw() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.set_nodelay(true)?;
                let mut buf = BytesMut::with_capacity(64 * 1024);
                loop {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    let mut whole = 0;
                    while buf.len() - whole >= 8 {
                        let len = u32::from_be_bytes([
                            buf[whole + 4],
                            buf[whole + 5],
                            buf[whole + 6],
                            buf[whole + 7],
                        ]) as usize;
                        if buf.len() < whole + 8 + len {
                            break;
                        }
                        whole += 8 + len;
                    }
                    if whole > 0 {
                        let out = buf.split_to(whole);
                        stream.write_all(&out).await?;
                    }
                }
            });
        }
    });
    Ok(addr)
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Bytes>>>>;

/// The baseline client: a oneshot per call, a pending map, a writer task coalescing
/// everything queued, a reader task completing calls.
#[derive(Clone)]
struct RawClient {
    next: Arc<AtomicU32>,
    pending: Pending,
    tx: mpsc::UnboundedSender<(u32, Bytes)>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Bytes)>();
        tokio::spawn(async move {
            let mut out = BytesMut::with_capacity(64 * 1024);
            while let Some((id, body)) = rx.recv().await {
                let mut next = Some((id, body));
                while let Some((id, body)) = next {
                    out.put_u32(id);
                    out.put_u32(body.len() as u32);
                    out.put_slice(&body);
                    next = rx.try_recv().ok();
                }
                if write.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });
        let completions = pending.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while buf.len() >= 8 {
                    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                    if buf.len() < 8 + len {
                        break;
                    }
                    let id = buf.get_u32();
                    buf.advance(4);
                    let body = buf.split_to(len).freeze();
                    let waiter = completions.lock().unwrap().remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(body);
                    }
                }
            }
        });
        Ok(RawClient {
            next: Arc::new(AtomicU32::new(1)),
            pending,
            tx,
        })
    }

    async fn call(&self, body: Bytes) -> Bytes {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let _ = self.tx.send((id, body));
        rx.await.unwrap_or_default()
    }
}
