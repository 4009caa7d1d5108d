//! The seams between the protocol and the byte streams it runs over: [`Stream`] (anything
//! that reads and writes bytes and can be split in two halves), [`Connect`] (how a client
//! opens one) and [`Accept`] (how a server takes them). TCP is the first implementation of
//! each ([`TcpConnect`], [`TcpAccept`]); an in-memory `tokio::io::DuplexStream` is a
//! [`Stream`] too, for tests. TLS plugs in here (`tls.rs`, the `tls` features).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, lookup_host};

use crate::error::{ErrorKind, Phase, Processed, TransportError};

/// A connected byte stream the connection drivers run the protocol over.
///
/// The drivers read and write from two tasks, so a stream splits into halves: TCP without a
/// lock (`into_split`), anything else through `tokio::io::split`.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The half that reads.
    type Read: AsyncRead + Send + Unpin + 'static;
    /// The half that writes.
    type Write: AsyncWrite + Send + Unpin + 'static;

    /// Splits the stream.
    fn into_halves(self) -> (Self::Read, Self::Write);

    /// The peer's address, when the stream has one.
    fn peer(&self) -> Option<SocketAddr> {
        None
    }

    /// Who the peer proved to be, when the stream authenticates it (TLS with a client
    /// certificate).
    fn peer_identity(&self) -> Option<PeerIdentity> {
        None
    }
}

/// What a TLS peer proved about itself: the certificate chain it presented and verified
/// (DER, its own certificate first) and, on a server, the name the client asked for (SNI).
///
/// The bytes are the certificates as sent; parse them with an X.509 crate to read a
/// subject or an extension. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    inner: Arc<IdentityInner>,
}

#[derive(Debug, PartialEq, Eq)]
struct IdentityInner {
    chain: Vec<Vec<u8>>,
    server_name: Option<String>,
}

impl PeerIdentity {
    /// An identity from a verified chain (DER, the peer's own certificate first) and the
    /// server name the client asked for.
    pub fn new(chain: Vec<Vec<u8>>, server_name: Option<String>) -> Self {
        PeerIdentity {
            inner: Arc::new(IdentityInner { chain, server_name }),
        }
    }

    /// The certificate chain, DER, the peer's own certificate first.
    pub fn certificate_chain(&self) -> &[Vec<u8>] {
        &self.inner.chain
    }

    /// The peer's own certificate (DER).
    pub fn certificate(&self) -> Option<&[u8]> {
        self.inner.chain.first().map(Vec::as_slice)
    }

    /// The server name the client asked for (TLS SNI), as a server saw it.
    pub fn server_name(&self) -> Option<&str> {
        self.inner.server_name.as_deref()
    }
}

impl Stream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

impl Stream for DuplexStream {
    type Read = ReadHalf<DuplexStream>;
    type Write = WriteHalf<DuplexStream>;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// How a client opens a stream to its server.
pub trait Connect: Send + Sync + 'static {
    /// The stream it opens.
    type Io: Stream;

    /// Opens one stream within `timeout` (a TLS handshake, say, counts in it).
    fn connect(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Io, TransportError>> + Send;

    /// What it connects to, for messages and logs.
    fn endpoint(&self) -> &str;
}

/// Connects over TCP to `host:port`, resolved at each connect, trying each address in
/// turn, with TCP_NODELAY and SO_KEEPALIVE on (docs/protocol.md section 7).
#[derive(Debug, Clone)]
pub struct TcpConnect {
    addr: String,
}

impl TcpConnect {
    /// Connects to `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        TcpConnect { addr: addr.into() }
    }
}

impl Connect for TcpConnect {
    type Io = TcpStream;

    fn connect(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<TcpStream, TransportError>> + Send {
        connect_tcp(self.addr.as_str(), timeout)
    }

    fn endpoint(&self) -> &str {
        &self.addr
    }
}

/// Opens a TCP connection with TCP_NODELAY and SO_KEEPALIVE, trying each address of
/// `addr` in turn, all within `timeout`.
pub(crate) async fn connect_tcp<A: tokio::net::ToSocketAddrs>(
    addr: A,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let attempt = async {
        let mut last = None;
        for addr in lookup_host(addr).await? {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_keepalive(true)?;
            socket.set_nodelay(true)?;
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to")))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(TransportError::timeout(
            Phase::Connect,
            Processed::No,
            &format!("connect timed out after {timeout:?}"),
        )),
        Ok(Err(err)) => Err(TransportError::new(
            ErrorKind::Connect,
            Phase::Connect,
            Processed::No,
            format!("connect failed: {err}"),
        )),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// How a server takes streams from its clients.
pub trait Accept: Send + 'static {
    /// The stream it takes.
    type Io: Stream;

    /// The next client's stream and address. An error is the listener's (too many open
    /// files, say): the server backs off and tries again.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;

    /// Where it listens.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Accepts TCP connections, with TCP_NODELAY and SO_KEEPALIVE set on each.
#[derive(Debug)]
pub struct TcpAccept {
    listener: TcpListener,
}

impl TcpAccept {
    /// Accepts from `listener`.
    pub fn new(listener: TcpListener) -> Self {
        TcpAccept { listener }
    }
}

impl Accept for TcpAccept {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        // Failing to set these is not a reason to refuse the client.
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
