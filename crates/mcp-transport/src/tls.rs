//! TLS over rustls (the `tls` features): a [`Connect`] for clients ([`TlsConnect`]) and an
//! [`Accept`] for servers ([`TlsAccept`]), with the configuration builders that make their
//! rustls configurations ([`TlsClientConfig`], [`TlsServerConfig`]).
//!
//! Both sides require the application protocol `mcp/1` through ALPN ([`ALPN_MCP`]), so that
//! an MCP peer never talks to a TLS service of another protocol by mistake.
//!
//! - The client's handshake happens inside [`Connect::connect`], so it counts in the
//!   connect phase and its timeout. The server's name (SNI and certificate check) defaults
//!   to the host the caller gave, never the address it resolved to.
//! - A handshake failure is a [`TransportError`] of kind [`ErrorKind::Tls`] whose
//!   [`TlsFailure`] names the reason; its `source()` is rustls's error.
//! - The server does each handshake in a task of its own, under a timeout, so a client
//!   that never sends its ClientHello stalls nobody; at most `max_handshakes` run at once.
//!   Its configuration can be replaced while it runs ([`TlsReloader::replace`]): new
//!   connections use the new certificates, open ones keep theirs.
//!
//! With TLS 1.3 a server checks the client's certificate after the client has finished its
//! part of the handshake, so a refusal (no certificate, an unknown issuer) would reach the
//! client only as its first read failing, after a request was written, and the request
//! would look as if it might have been processed. When the server asked for a client
//! certificate, [`TlsConnect`] therefore waits for the server's verdict before it hands the
//! stream out: it sends a PING (docs/protocol.md section 4) and reads the PONG, or the
//! alert that names the refusal. One round trip, only on connections with client
//! certificates asked for.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{ErrorKind, Phase, Processed, TlsConfigError, TlsFailure, TransportError};
use crate::io::{Accept, Connect, PeerIdentity, Stream, TcpAccept, connect_tcp};

#[cfg(not(any(feature = "tls", feature = "tls-aws-lc-rs")))]
compile_error!(
    "mcp-transport's TLS needs a crypto provider: enable `tls` (ring) or `tls-aws-lc-rs`"
);

/// The ALPN name of MCP 1.x.
pub const ALPN_MCP: &[u8] = b"mcp/1";

/// The crypto provider the features chose: aws-lc-rs when `tls-aws-lc-rs` is on, else ring.
fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "tls-aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // rustls 0.23.48 deprecates ring's provider because it has no post-quantum key
    // exchange; ring stays the default because it builds with a C compiler alone (aws-lc-rs
    // needs cmake), and `tls-aws-lc-rs` is there for whoever wants X25519MLKEM768.
    #[cfg(not(feature = "tls-aws-lc-rs"))]
    #[allow(deprecated)]
    let provider = {
        use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
        // ring's provider offers P-384 first, which ring computes with generic big-number
        // code: a full handshake took ~12 ms of CPU on the benchmark machine, against well
        // under 1 ms with X25519 (BENCHMARKS.md section 8). X25519 first, the NIST curves
        // still offered.
        rustls::crypto::CryptoProvider {
            kx_groups: vec![X25519, SECP256R1, SECP384R1],
            ..rustls::crypto::ring::default_provider()
        }
    };
    Arc::new(provider)
}

// ---------------------------------------------------------------------------------------
// PEM

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Empty(what.to_owned()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::Empty(what.to_owned()),
        source => TlsConfigError::Pem {
            what: what.to_owned(),
            source,
        },
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::File {
        path: path.display().to_string(),
        source,
    })
}

fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, what)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

// ---------------------------------------------------------------------------------------
// Client

/// What a client trusts and presents: CA roots, an optional identity for mutual TLS, the
/// server name to verify, or a whole rustls configuration of the caller's own.
///
/// ```no_run
/// # fn f() -> Result<(), mcp_transport::TlsConfigError> {
/// use mcp_transport::{TlsClientConfig, TlsConnect};
/// let config = TlsClientConfig::new()
///     .ca_pem_file("ca.pem")?
///     .identity_pem_files("client.pem", "client.key")?;
/// let connect = TlsConnect::new("db.internal:7070", &config)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsClientConfig {
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
    custom: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TlsClientConfig")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .field("custom", &self.custom.is_some())
            .finish()
    }
}

impl Default for TlsClientConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsClientConfig {
    /// Trusts nothing yet: add roots with [`ca_pem`](Self::ca_pem) or a `with_*_roots`.
    pub fn new() -> Self {
        TlsClientConfig {
            roots: RootCertStore::empty(),
            identity: None,
            server_name: None,
            custom: None,
        }
    }

    /// Also trusts the CA certificates of `pem` (one or more `CERTIFICATE` blocks).
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsConfigError> {
        for cert in certs_from_pem(pem, "CA certificates")? {
            self.roots.add(cert)?;
        }
        Ok(self)
    }

    /// [`ca_pem`](Self::ca_pem) from a file.
    pub fn ca_pem_file(self, path: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let pem = read_file(path.as_ref())?;
        self.ca_pem(&pem)
    }

    /// Also trusts Mozilla's root certificates (the `tls-webpki-roots` feature).
    #[cfg(feature = "tls-webpki-roots")]
    pub fn with_webpki_roots(mut self) -> Self {
        self.roots
            .extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        self
    }

    /// Also trusts the platform's root certificates (the `tls-native-roots` feature).
    /// Certificates the platform lists but rustls cannot parse are skipped; finding none at
    /// all is an error.
    #[cfg(feature = "tls-native-roots")]
    pub fn with_native_roots(mut self) -> Result<Self, TlsConfigError> {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = self.roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(TlsConfigError::NativeRoots(why));
        }
        Ok(self)
    }

    /// Presents this certificate chain (`CERTIFICATE` blocks, the client's own first) and
    /// its private key (PKCS#8, PKCS#1 or SEC1) to servers that ask for one (mutual TLS).
    pub fn identity_pem(mut self, cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsConfigError> {
        let certs = certs_from_pem(cert_chain, "client certificate")?;
        let key = key_from_pem(key, "client private key")?;
        self.identity = Some((certs, Arc::new(key)));
        Ok(self)
    }

    /// [`identity_pem`](Self::identity_pem) from files.
    pub fn identity_pem_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let certs = read_file(cert_chain.as_ref())?;
        let key = read_file(key.as_ref())?;
        self.identity_pem(&certs, &key)
    }

    /// Verifies the server's certificate for `name` and sends it as SNI, instead of the
    /// host part of the address connected to.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Uses `config` as it is (the escape hatch: custom verifiers, session caches, key
    /// logging, ...), except that `mcp/1` is set as its ALPN protocol if it has none. The
    /// roots and identity of this builder are then not used; a server name still is.
    pub fn rustls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.custom = Some(config);
        self
    }

    /// The rustls configuration: ALPN `mcp/1`, the chosen crypto provider, the safe
    /// default protocol versions (TLS 1.2 and 1.3).
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        let mut config = match &self.custom {
            Some(custom) => (**custom).clone(),
            None => {
                let builder = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(self.roots.clone());
                match &self.identity {
                    Some((certs, key)) => {
                        builder.with_client_auth_cert(certs.clone(), key.clone_key())?
                    }
                    None => builder.with_no_client_auth(),
                }
            }
        };
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![ALPN_MCP.to_vec()];
        }
        // Learn whether a server asked for a client certificate (see the module's docs).
        config.client_auth_cert_resolver = Arc::new(NoteRequest(config.client_auth_cert_resolver));
        Ok(Arc::new(config))
    }
}

thread_local! {
    /// Set by [`NoteRequest`] when rustls asks for a client certificate: inside the poll of
    /// one handshake, which [`NotedHandshake`] brackets.
    static CERT_REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// The client's certificate resolver, noting that the server asked for a certificate.
#[derive(Debug)]
struct NoteRequest(Arc<dyn ResolvesClientCert>);

impl ResolvesClientCert for NoteRequest {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        CERT_REQUESTED.with(|asked| asked.set(true));
        self.0.resolve(root_hint_subjects, sigschemes)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.0.has_certs()
    }
}

/// A client handshake, and whether the server asked for a client certificate during it.
///
/// rustls calls the resolver synchronously inside the handshake's poll, on the polling
/// thread: clearing the thread's flag before each poll and reading it after attributes the
/// request to this handshake and no other.
struct NotedHandshake<F> {
    handshake: F,
    asked: bool,
}

impl<F: Future + Unpin> Future for NotedHandshake<F> {
    type Output = (F::Output, bool);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        CERT_REQUESTED.with(|asked| asked.set(false));
        let polled = Pin::new(&mut self.handshake).poll(cx);
        if CERT_REQUESTED.with(|asked| asked.replace(false)) {
            self.asked = true;
        }
        polled.map(|out| (out, self.asked))
    }
}

/// Connects over TCP, then TLS: the handshake is part of [`Connect::connect`] and of its
/// timeout. The server's name (SNI and the certificate check) is the host of the address
/// given, never the address it resolved to, unless [`TlsClientConfig::server_name`] sets
/// one; ALPN `mcp/1` is required.
///
/// With TLS 1.3 a server checks the client's certificate after the client has finished its
/// part of the handshake, so a refusal would reach the client only as its first read
/// failing, after a request was written (and that request would look as if it might have
/// been processed). When the server asked for a client certificate, `connect` therefore
/// waits for the server's verdict before it hands the stream out: it sends a PING
/// (docs/protocol.md section 4) and reads the PONG, or the alert that names the refusal.
/// One round trip, only on connections where a client certificate was asked for.
#[derive(Clone)]
pub struct TlsConnect {
    addr: String,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnect")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnect {
    /// Connects to `addr` (`host:port`), verifying the server as `config`'s server name, or
    /// else as `host`.
    pub fn new(addr: impl Into<String>, config: &TlsClientConfig) -> Result<Self, TlsConfigError> {
        Self::named(addr, config, None)
    }

    /// [`TlsConnect::new`] for an address whose name is known apart from it (discovery
    /// found the address under a host name): verified as `config`'s server name, else as
    /// `name`, else as `addr`'s host; never as a resolved IP the user did not give.
    pub fn named(
        addr: impl Into<String>,
        config: &TlsClientConfig,
        name: Option<&str>,
    ) -> Result<Self, TlsConfigError> {
        let addr = addr.into();
        let name = match (&config.server_name, name) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name.to_owned(),
            (None, None) => host_of(&addr).to_owned(),
        };
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsConfigError::ServerName { name })?;
        Ok(TlsConnect {
            addr,
            server_name,
            connector: tokio_rustls::TlsConnector::from(config.build()?),
        })
    }

    /// The name the server's certificate is verified for.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    async fn open(
        &self,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransportError> {
        let deadline = Instant::now() + timeout;
        let tcp = connect_tcp(self.addr.as_str(), timeout).await?;
        let handshake = NotedHandshake {
            handshake: self.connector.connect(self.server_name.clone(), tcp),
            asked: false,
        };
        let timed_out = || {
            TransportError::timeout(
                Phase::Connect,
                Processed::No,
                &format!(
                    "TLS handshake with {} not done within the connect timeout ({timeout:?})",
                    self.addr
                ),
            )
        };
        let (done, asked) = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| timed_out())?;
        let mut stream = done.map_err(|err| handshake_error(&self.addr, err))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(ALPN_MCP) {
            return Err(tls_error(
                &self.addr,
                TlsFailure::NoApplicationProtocol,
                "the server chose no ALPN protocol",
                None,
            ));
        }
        if asked && session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            tokio::time::timeout_at(deadline, confirm(&mut stream, &self.addr))
                .await
                .map_err(|_| timed_out())??;
        }
        Ok(stream)
    }
}

impl Connect for TlsConnect {
    type Io = tokio_rustls::client::TlsStream<TcpStream>;

    fn connect(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Io, TransportError>> + Send {
        self.open(timeout)
    }

    fn endpoint(&self) -> &str {
        &self.addr
    }
}

/// The host part of `host:port` (`[v6]:port` too): what a certificate is checked against.
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Waits for the server's verdict on the client's certificate (TLS 1.3): a PING answered
/// PONG says it accepted it; an alert says why not.
async fn confirm<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    addr: &str,
) -> Result<(), TransportError> {
    let nonce = *b"mcp-tls1";
    let mut ping = Vec::with_capacity(32);
    let lost = |err: io::Error| handshake_error(addr, err);
    mcp_codec::Envelope::Ping(mcp_codec::Ping { nonce })
        .encode_to_vec(&mut ping)
        .map_err(TransportError::invalid)?;
    stream.write_all(&ping).await.map_err(lost)?;
    stream.flush().await.map_err(lost)?;
    // A PONG frame is small; anything else first (a GOAWAY refusing the connection) ends
    // the connect with what it was.
    let mut buf = Vec::with_capacity(64);
    loop {
        match mcp_codec::decode_frame(&buf) {
            Ok(mcp_codec::Decoded::Frame { frame, .. }) => {
                return match mcp_codec::Envelope::parse(frame) {
                    Ok(mcp_codec::Envelope::Pong(pong)) if pong.nonce == nonce => Ok(()),
                    Ok(other) => Err(TransportError::new(
                        ErrorKind::ConnectionClosed,
                        Phase::Connect,
                        Processed::No,
                        format!(
                            "{addr} answered {} to the first PING",
                            other.frame_type().name()
                        ),
                    )),
                    Err(err) => Err(TransportError::new(
                        ErrorKind::Protocol,
                        Phase::Connect,
                        Processed::No,
                        format!("{addr} answered a malformed frame to the first PING: {err}"),
                    )),
                };
            }
            Ok(_) if buf.len() < 4096 => {}
            Ok(_) | Err(_) => {
                return Err(TransportError::new(
                    ErrorKind::Protocol,
                    Phase::Connect,
                    Processed::No,
                    format!("{addr} answered the first PING with something that is no MCP frame"),
                ));
            }
        }
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await.map_err(lost)?;
        if n == 0 {
            return Err(TransportError::new(
                ErrorKind::ConnectionClosed,
                Phase::Connect,
                Processed::No,
                format!("{addr} closed the connection after the TLS handshake"),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What rustls's error says about the reason, as a [`TlsFailure`].
pub(crate) fn classify(err: &rustls::Error) -> TlsFailure {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => TlsFailure::UnknownIssuer,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsFailure::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsFailure::NotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::NameMismatch
            }
            _ => TlsFailure::Other,
        },
        E::NoApplicationProtocol | E::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            TlsFailure::NoApplicationProtocol
        }
        E::NoCertificatesPresented | E::AlertReceived(AlertDescription::CertificateRequired) => {
            TlsFailure::ClientCertificateRequired
        }
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied,
        ) => TlsFailure::ClientCertificateRejected,
        _ => TlsFailure::Other,
    }
}

/// The rustls error inside an I/O error of tokio-rustls, if it is one.
fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

fn tls_error(
    addr: &str,
    failure: TlsFailure,
    detail: &str,
    cause: Option<rustls::Error>,
) -> TransportError {
    let err = TransportError::new(
        ErrorKind::Tls(failure),
        Phase::Connect,
        Processed::No,
        format!("TLS handshake with {addr} failed: {failure} ({detail})"),
    );
    match cause {
        Some(cause) => err.with_cause(cause),
        None => err,
    }
}

/// A failed client handshake: the reason when rustls gave one, else the I/O failure.
fn handshake_error(addr: &str, err: io::Error) -> TransportError {
    match rustls_error(&err) {
        Some(tls) => tls_error(addr, classify(tls), &tls.to_string(), Some(tls.clone())),
        None => TransportError::new(
            ErrorKind::Connect,
            Phase::Connect,
            Processed::No,
            format!("TLS handshake with {addr} failed: {err}"),
        )
        .with_cause(err),
    }
}

impl<S: Stream> Stream for tokio_rustls::client::TlsStream<S> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.get_ref().0.peer()
    }

    fn peer_identity(&self) -> Option<PeerIdentity> {
        let session = self.get_ref().1;
        identity(session.peer_certificates(), None)
    }
}

fn identity(chain: Option<&[CertificateDer<'_>]>, sni: Option<&str>) -> Option<PeerIdentity> {
    let chain = chain.filter(|chain| !chain.is_empty())?;
    Some(PeerIdentity::new(
        chain.iter().map(|cert| cert.as_ref().to_vec()).collect(),
        sni.map(str::to_owned),
    ))
}

// ---------------------------------------------------------------------------------------
// Server

/// A server's certificate, key and client authentication, made into a rustls configuration
/// by [`build`](Self::build).
#[derive(Clone)]
pub struct TlsServerConfig {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_ca: Option<(RootCertStore, bool)>,
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("certs", &self.certs.len())
            .field(
                "client_ca",
                &self
                    .client_ca
                    .as_ref()
                    .map(|(roots, required)| (roots.len(), required)),
            )
            .finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// The server's certificate chain (`CERTIFICATE` blocks, its own first) and private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsConfigError> {
        Ok(TlsServerConfig {
            certs: certs_from_pem(cert_chain, "server certificate")?,
            key: Arc::new(key_from_pem(key, "server private key")?),
            client_ca: None,
        })
    }

    /// [`from_pem`](Self::from_pem) from files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let certs = read_file(cert_chain.as_ref())?;
        let key = read_file(key.as_ref())?;
        Self::from_pem(&certs, &key)
    }

    /// Asks clients for a certificate signed by one of the CAs of `pem` (mutual TLS); if
    /// `required`, a client without one is refused, else it is let in without an identity.
    /// A client certificate that is presented must verify either way.
    pub fn client_ca_pem(mut self, pem: &[u8], required: bool) -> Result<Self, TlsConfigError> {
        self.client_ca = Some((roots_from_pem(pem, "client CA certificates")?, required));
        Ok(self)
    }

    /// [`client_ca_pem`](Self::client_ca_pem) from a file.
    pub fn client_ca_pem_file(
        self,
        path: impl AsRef<Path>,
        required: bool,
    ) -> Result<Self, TlsConfigError> {
        let pem = read_file(path.as_ref())?;
        self.client_ca_pem(&pem, required)
    }

    /// The rustls configuration: ALPN `mcp/1`, the chosen crypto provider, TLS 1.2 and 1.3.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((roots, required)) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider);
                let verifier = if *required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|err| TlsConfigError::Verifier(err.to_string()))?,
                )
            }
        };
        let mut config = builder.with_single_cert(self.certs.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN_MCP.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Handshakes counted by a [`TlsAccept`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsAcceptStats {
    /// Handshakes completed (the stream was handed to the server).
    pub completed: u64,
    /// Handshakes that failed (a certificate refused, no ALPN `mcp/1`, a broken peer).
    pub failed: u64,
    /// Handshakes not done within the handshake timeout.
    pub timed_out: u64,
    /// Connections closed at once because their host already had `max_handshakes_per_ip`
    /// handshakes running.
    pub refused_per_ip: u64,
}

#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    refused_per_ip: AtomicU64,
}

/// Handshakes running per host, shared with the handshake tasks.
type PerHost = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A running handshake's place in its host's count, given back when its task ends, however
/// it ends (done, failed, timed out, or aborted with the acceptor).
struct HostPlace {
    per_host: PerHost,
    ip: IpAddr,
}

impl HostPlace {
    /// A place for `ip` if it has fewer than `max` handshakes running.
    fn take(per_host: &PerHost, ip: IpAddr, max: usize) -> Option<HostPlace> {
        let mut hosts = per_host.lock().unwrap_or_else(PoisonError::into_inner);
        let running = hosts.entry(ip).or_insert(0);
        if *running >= max {
            return None;
        }
        *running += 1;
        Some(HostPlace {
            per_host: per_host.clone(),
            ip,
        })
    }
}

impl Drop for HostPlace {
    fn drop(&mut self) {
        let mut hosts = self.per_host.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = hosts.get_mut(&self.ip) {
            *running -= 1;
            if *running == 0 {
                // The map holds only hosts with handshakes running: bounded by them.
                hosts.remove(&self.ip);
            }
        }
    }
}

#[derive(Debug)]
struct Current {
    config: RwLock<Arc<rustls::ServerConfig>>,
    counters: Counters,
}

/// Replaces the configuration of a running [`TlsAccept`] (rotating certificates without a
/// restart) and reads its counters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    current: Arc<Current>,
}

impl TlsReloader {
    /// Handshakes from now on use `config`; connections already open keep the session they
    /// have. A configuration without ALPN protocols gets `mcp/1`.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        let config = with_alpn(config);
        *self
            .current
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// The handshakes counted so far.
    pub fn stats(&self) -> TlsAcceptStats {
        let counters = &self.current.counters;
        TlsAcceptStats {
            completed: counters.completed.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            timed_out: counters.timed_out.load(Ordering::Relaxed),
            refused_per_ip: counters.refused_per_ip.load(Ordering::Relaxed),
        }
    }
}

fn with_alpn(config: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if config.alpn_protocols.is_empty() {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![ALPN_MCP.to_vec()];
        Arc::new(config)
    } else {
        config
    }
}

type Handshaken<S> = (tokio_rustls::server::TlsStream<S>, SocketAddr);

/// Accepts TLS connections from another [`Accept`] (TCP by default).
///
/// Each handshake runs in a task of its own under the handshake timeout (default 10 s),
/// at most `max_handshakes` (default 1,024) at once; while that many are running, no new
/// connection is taken. One host may have at most `max_handshakes_per_ip` (default 32)
/// running: a connection past that is closed at once, so that one host that connects and
/// never sends a ClientHello cannot take every handshake place and keep other clients out.
/// A client that does not agree on ALPN `mcp/1` is refused.
pub struct TlsAccept<A: Accept = TcpAccept> {
    inner: A,
    current: Arc<Current>,
    handshake_timeout: Duration,
    max_handshakes: usize,
    max_handshakes_per_ip: usize,
    per_host: PerHost,
    pending: JoinSet<Option<Handshaken<A::Io>>>,
}

impl<A: Accept> fmt::Debug for TlsAccept<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAccept")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshakes_per_ip", &self.max_handshakes_per_ip)
            .field("handshaking", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl TlsAccept<TcpAccept> {
    /// TLS over the TCP connections of `listener`.
    pub fn tcp(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        TlsAccept::new(TcpAccept::new(listener), config)
    }
}

impl<A: Accept> TlsAccept<A> {
    /// TLS over the streams `inner` accepts.
    pub fn new(inner: A, config: Arc<rustls::ServerConfig>) -> Self {
        TlsAccept {
            inner,
            current: Arc::new(Current {
                config: RwLock::new(with_alpn(config)),
                counters: Counters::default(),
            }),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
            max_handshakes_per_ip: 32,
            per_host: PerHost::default(),
            pending: JoinSet::new(),
        }
    }

    /// How long a client has to complete its handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Handshakes running at once, at most (default 1,024; at least 1).
    pub fn max_handshakes(mut self, handshakes: usize) -> Self {
        self.max_handshakes = handshakes.max(1);
        self
    }

    /// Handshakes running at once from one IP address, at most (default 32; at least 1).
    /// Clients behind one NAT share an address: raise it where many connect through one.
    pub fn max_handshakes_per_ip(mut self, handshakes: usize) -> Self {
        self.max_handshakes_per_ip = handshakes.max(1);
        self
    }

    /// A handle that replaces the configuration and reads the counters.
    pub fn reloader(&self) -> TlsReloader {
        TlsReloader {
            current: self.current.clone(),
        }
    }

    fn start(&mut self, io: A::Io, peer: SocketAddr) {
        let Some(place) = HostPlace::take(&self.per_host, peer.ip(), self.max_handshakes_per_ip)
        else {
            self.current
                .counters
                .refused_per_ip
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshakes from this host at their limit: closed");
            // Dropping `io` closes the connection.
            return;
        };
        let config = self
            .current
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let current = self.current.clone();
        let timeout = self.handshake_timeout;
        self.pending.spawn(async move {
            let _place = place;
            let counters = &current.counters;
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
            let failure = match tokio::time::timeout(timeout, handshake).await {
                Err(_) => {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                    return None;
                }
                Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(ALPN_MCP) => {
                    counters.completed.fetch_add(1, Ordering::Relaxed);
                    return Some((stream, peer));
                }
                Ok(Ok(_)) => String::from("the client offered no ALPN mcp/1"),
                Ok(Err(err)) => match rustls_error(&err) {
                    Some(tls) => format!("{}: {tls}", classify(tls)),
                    None => err.to_string(),
                },
            };
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, %failure, "TLS handshake failed");
            None
        });
    }
}

impl<A: Accept> Accept for TlsAccept<A>
where
    A::Io: Stream,
{
    type Io = tokio_rustls::server::TlsStream<A::Io>;

    /// Takes connections from the inner acceptor while fewer than `max_handshakes` are
    /// handshaking, and returns the next one whose handshake completed. Cancel-safe: a
    /// connection accepted or handshaken when the future is dropped stays in the set.
    async fn accept(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        loop {
            let room = self.pending.len() < self.max_handshakes;
            tokio::select! {
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    if let Ok(Some(handshaken)) = done {
                        return Ok(handshaken);
                    }
                }
                accepted = self.inner.accept(), if room => {
                    let (io, peer) = accepted?;
                    self.start(io, peer);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl<S: Stream> Stream for tokio_rustls::server::TlsStream<S> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.get_ref().0.peer()
    }

    fn peer_identity(&self) -> Option<PeerIdentity> {
        let session = self.get_ref().1;
        identity(session.peer_certificates(), session.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_server_name_is_the_host_given() {
        assert_eq!(host_of("db.internal:7070"), "db.internal");
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("[fe80::1]"), "fe80::1");
    }
}
