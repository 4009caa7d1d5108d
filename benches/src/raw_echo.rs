//! A minimal multiplexed echo over TCP: `id u32 | len u32 | body` records, nothing else.
//!
//! The client is what any multiplexed RPC client must do at the least: register a oneshot
//! by id, queue the request to a writer task that writes everything queued since its last
//! write in one `write_all`, and let a reader task resolve oneshots by id. The server reads,
//! echoes every whole record of each read in one write, and reads again.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

const HEADER: usize = 8;

/// Starts the echo server on `127.0.0.1:0`; it runs until the runtime ends.
pub async fn serve() -> io::Result<SocketAddr> {
    crate::serve_on_loopback(echo_connection).await
}

async fn echo_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        // Echo every whole record in this read in one write; keep a partial one.
        let mut whole = 0;
        while buf.len() - whole >= HEADER {
            let len = u32::from_be_bytes([
                buf[whole + 4],
                buf[whole + 5],
                buf[whole + 6],
                buf[whole + 7],
            ]);
            let end = whole + HEADER + len as usize;
            if buf.len() < end {
                break;
            }
            whole = end;
        }
        if whole > 0 {
            let out = buf.split_to(whole);
            stream.write_all(&out).await?;
        }
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Bytes>>>>;

/// The client side: cheap to clone, many calls in flight on one connection.
#[derive(Debug, Clone)]
pub struct RawEchoClient {
    queue: mpsc::UnboundedSender<Bytes>,
    pending: Pending,
    next_id: Arc<AtomicU32>,
}

impl RawEchoClient {
    /// Connects and starts the reader and writer tasks.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (queue, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let pending: Pending = Arc::default();

        tokio::spawn(async move {
            let mut out = BytesMut::with_capacity(64 * 1024);
            while let Some(first) = rx.recv().await {
                out.extend_from_slice(&first);
                while let Ok(more) = rx.try_recv() {
                    out.extend_from_slice(&more);
                }
                if write.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });

        let table = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while buf.len() >= HEADER {
                    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                    if buf.len() < HEADER + len {
                        break;
                    }
                    let id = buf.get_u32();
                    buf.advance(4);
                    let body = buf.split_to(len).freeze();
                    let waiter = table.lock().ok().and_then(|mut t| t.remove(&id));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(body);
                    }
                }
            }
        });

        Ok(RawEchoClient {
            queue,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
        })
    }

    /// Sends `body` and waits for it to come back.
    pub async fn call(&self, body: &[u8]) -> io::Result<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| io::Error::other("pending table poisoned"))?
            .insert(id, tx);
        let mut record = BytesMut::with_capacity(HEADER + body.len());
        record.put_u32(id);
        record.put_u32(body.len() as u32);
        record.put_slice(body);
        self.queue
            .send(record.freeze())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "writer ended"))?;
        rx.await
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionAborted, "connection ended"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn many_calls_in_flight_each_get_their_own_body() {
        let addr = serve().await.unwrap();
        let client = RawEchoClient::connect(addr).await.unwrap();
        let calls = (0..200u32).map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.call(&i.to_be_bytes()).await) })
        });
        let all = tokio::time::timeout(Duration::from_secs(10), futures_join(calls.collect()))
            .await
            .expect("echo answered in time");
        for (i, body) in all {
            assert_eq!(body.unwrap().as_ref(), &i.to_be_bytes());
        }
    }

    async fn futures_join(
        handles: Vec<tokio::task::JoinHandle<(u32, io::Result<Bytes>)>>,
    ) -> Vec<(u32, io::Result<Bytes>)> {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
