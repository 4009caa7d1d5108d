//! A raw MCP client for the tests, written on `mcp-codec` and tokio alone, so that the
//! server is checked against the bytes of docs/protocol.md and not against our own client.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use mcp_codec::{
    Assembled, Assembler, Envelope, ErrorCode, Flags, MessageFrames, Metadata, OwnedEnvelope,
    Request, StreamDecoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long any single wait of a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct RawClient {
    stream: TcpStream,
    decoder: StreamDecoder,
    assembler: Assembler,
    /// Frames received so far (CONTINUATION included).
    pub frames: usize,
    eof: bool,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        RawClient::from_stream(stream)
    }

    /// Over a stream the test connected itself (from a chosen local address, say).
    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            decoder: StreamDecoder::default(),
            assembler: Assembler::new(64 * 1024 * 1024),
            frames: 0,
            eof: false,
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Sends any envelope; a message with a large body goes as CONTINUATION frames.
    pub async fn send(&mut self, envelope: Envelope<'_>) {
        let mut out = Vec::new();
        if envelope.body().is_some() {
            MessageFrames::new(envelope)
                .unwrap()
                .write_all_to_vec(&mut out)
                .unwrap();
        } else {
            envelope.encode_to_vec(&mut out).unwrap();
        }
        self.send_raw(&out).await;
    }

    pub async fn request(&mut self, id: u32, format: u8, method: &str, body: &[u8]) {
        self.request_with_meta(id, format, method, &[], body).await;
    }

    pub async fn request_with_meta(
        &mut self,
        id: u32,
        format: u8,
        method: &str,
        meta: &[(&str, &[u8])],
        body: &[u8],
    ) {
        self.send(Envelope::Request(Request {
            id,
            flags: Flags::NONE,
            format,
            method,
            meta: Metadata::from_pairs(meta),
            body,
        }))
        .await;
    }

    /// The next whole message, or `None` at end of stream. Fails the test after `WAIT`.
    pub async fn recv(&mut self) -> Option<OwnedEnvelope> {
        timeout(WAIT, self.recv_inner())
            .await
            .expect("no message from the server in time")
    }

    /// Like `recv`, with a short wait: `Err(())` if nothing arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<OwnedEnvelope>, ()> {
        timeout(wait, self.recv_inner()).await.map_err(|_| ())
    }

    async fn recv_inner(&mut self) -> Option<OwnedEnvelope> {
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("server sent a bad frame") {
                self.frames += 1;
                match self.assembler.push(frame).expect("server broke section 4") {
                    Assembled::Envelope(envelope) => {
                        return Some(OwnedEnvelope::from_envelope(&envelope));
                    }
                    Assembled::Message { head, body } => {
                        let mut owned = OwnedEnvelope::from_envelope(&head);
                        match &mut owned {
                            OwnedEnvelope::Request(m) => m.body = body,
                            OwnedEnvelope::Response(m) => m.body = body,
                            OwnedEnvelope::Notify(m) => m.body = body,
                            _ => {}
                        }
                        return Some(owned);
                    }
                    _ => continue,
                }
            }
            if self.eof {
                assert_eq!(self.decoder.buffered(), 0, "stream ended mid-frame");
                return None;
            }
            let mut buf = vec![0u8; 64 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => self.decoder.feed(&buf[..n]),
            }
        }
    }

    /// Expects the server to close the connection (nothing more arrives).
    pub async fn expect_closed(&mut self) {
        if let Some(m) = self.recv().await {
            panic!("expected the connection to close, got {m:?}");
        }
    }

    /// Sends PING and expects PONG as the very next message: proves that the connection
    /// is open and that nothing else was queued before it.
    pub async fn ping_pong(&mut self, nonce: u64) {
        self.send(Envelope::Ping(mcp_codec::Ping {
            nonce: nonce.to_be_bytes(),
        }))
        .await;
        match self.recv().await {
            Some(OwnedEnvelope::Pong(p)) => assert_eq!(p.nonce, nonce.to_be_bytes()),
            other => panic!("expected PONG, got {other:?}"),
        }
    }
}

/// Unwraps a RESPONSE: `(id, format, body)`.
pub fn response(m: Option<OwnedEnvelope>) -> (u32, u8, Vec<u8>) {
    match m {
        Some(OwnedEnvelope::Response(r)) => (r.id, r.format, r.body),
        other => panic!("expected RESPONSE, got {other:?}"),
    }
}

/// Unwraps an ERROR: `(id, code, message)`.
pub fn error(m: Option<OwnedEnvelope>) -> (u32, ErrorCode, String) {
    match m {
        Some(OwnedEnvelope::Error { id, code, message }) => (id, code, message),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

/// Parses a hex dump such as docs/protocol.md's test vectors.
pub fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// Polls `cond` until it holds, failing the test after `WAIT`.
pub async fn eventually(mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
