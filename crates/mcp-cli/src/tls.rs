//! TLS for the `mcp` commands (the `tls` feature, on by default): the client side of
//! `call`, `ping`, `health` and `bench` (`--tls [--ca F] [--cert F --key F]
//! [--server-name N]`), the server side of `serve` (`--tls-cert F --tls-key F
//! [--client-ca F]`), certificates made in memory for `demo --tls` and `bench --embedded
//! --tls`, and the handshake rate `bench` reports.
//!
//! Built without the feature, every constructor here says so instead of connecting in the
//! clear.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mcp_client::{ClientBuilder, Fleet};
use mcp_format::Format;
use mcp_server::{ServerBuilder, ServerHandle};

/// What a client was told about TLS on the command line.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// `--ca`: trust these CA certificates instead of the platform's.
    pub ca: Option<PathBuf>,
    /// `--cert`: present this certificate chain (mutual TLS).
    pub cert: Option<PathBuf>,
    /// `--key`: its private key.
    pub key: Option<PathBuf>,
    /// `--server-name`: verify the server as this name (default: the host given).
    pub server_name: Option<String>,
}

/// A client's TLS settings, ready to connect with.
#[derive(Debug, Clone)]
pub struct ClientTls {
    #[cfg(feature = "tls")]
    config: mcp_client::TlsClientConfig,
    /// `--server-name` was given: it wins over any name an endpoint is found under.
    #[cfg(feature = "tls")]
    named: bool,
}

/// A server's TLS settings, ready to serve with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    #[cfg(feature = "tls")]
    config: std::sync::Arc<mcp_server::rustls::ServerConfig>,
    #[cfg(feature = "tls")]
    files: Option<ServerFiles>,
}

/// The files a server's certificate came from, to read again on a reload.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// Replaces a running server's certificate (`mcp serve` on SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader {
    #[cfg(feature = "tls")]
    reloader: mcp_server::TlsReloader,
    #[cfg(feature = "tls")]
    files: Option<ServerFiles>,
}

#[cfg(not(feature = "tls"))]
const NO_TLS: &str = "this mcp was built without the `tls` feature";

#[cfg(feature = "tls")]
mod imp {
    use std::sync::Arc;

    use mcp_client::TlsClientConfig;
    use mcp_server::{TlsAccept, TlsServerConfig};
    use mcp_transport::{Connect, TlsConnect};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    impl ClientTls {
        /// From the command line's flags: without `--ca`, the platform's roots.
        pub fn from_args(args: &ClientTlsArgs) -> Result<Self, String> {
            let config = match &args.ca {
                Some(ca) => TlsClientConfig::new()
                    .ca_pem_file(ca)
                    .map_err(|e| format!("--ca: {e}"))?,
                None => TlsClientConfig::new()
                    .with_native_roots()
                    .map_err(|e| format!("{e}; give the CA with --ca"))?,
            };
            let config = match (&args.cert, &args.key) {
                (Some(cert), Some(key)) => config
                    .identity_pem_files(cert, key)
                    .map_err(|e| format!("--cert/--key: {e}"))?,
                (None, None) => config,
                _ => return Err("--cert and --key go together".into()),
            };
            let config = match &args.server_name {
                Some(name) => config.server_name(name.clone()),
                None => config,
            };
            Ok(ClientTls {
                config,
                named: args.server_name.is_some(),
            })
        }

        /// `builder`, connecting over TLS.
        pub fn apply<F: Format>(&self, builder: ClientBuilder<F>) -> ClientBuilder<F> {
            builder.tls(self.config.clone())
        }

        /// A fleet's `builder`, connecting to every endpoint over TLS, each verified by
        /// `--server-name`, else the DNS name it was found under, else its own host.
        pub fn apply_fleet<F: Format>(
            &self,
            builder: ClientBuilder<F, Fleet>,
        ) -> ClientBuilder<F, Fleet> {
            builder.tls(self.config.clone())
        }

        /// The same settings verifying the server as `name` (the DNS name an address was
        /// found under), unless `--server-name` was given.
        pub fn for_name(&self, name: Option<&str>) -> Self {
            match name {
                Some(name) if !self.named => ClientTls {
                    config: self.config.clone().server_name(name),
                    named: true,
                },
                _ => self.clone(),
            }
        }

        /// The same settings with TLS session resumption off, so that every connect is a
        /// full handshake (what `bench` measures).
        pub fn without_resumption(&self) -> Result<Self, String> {
            let mut config = (*self.config.build().map_err(|e| e.to_string())?).clone();
            config.resumption = mcp_client::rustls::client::Resumption::disabled();
            Ok(ClientTls {
                config: self.config.clone().rustls(Arc::new(config)),
                named: self.named,
            })
        }

        /// A byte stream to `addr` over TLS, handshake done (for `mcp ping`); the server
        /// is verified as `--server-name`, else `name`, else `addr`'s host.
        pub async fn connect(
            &self,
            addr: &str,
            name: Option<&str>,
            timeout: Duration,
        ) -> Result<Box<dyn super::ByteStream>, String> {
            let connect = TlsConnect::named(addr, &self.config, name).map_err(|e| e.to_string())?;
            let stream = connect.connect(timeout).await.map_err(|e| e.to_string())?;
            Ok(Box::new(stream))
        }

        /// Handshakes to `addr` one after the other for `duration` (at most `max`): how
        /// many completed, and the time they took.
        pub async fn handshakes(
            &self,
            addr: &str,
            duration: Duration,
            max: u64,
        ) -> Result<(u64, Duration), String> {
            let connect = TlsConnect::new(addr, &self.config).map_err(|e| e.to_string())?;
            let start = tokio::time::Instant::now();
            let mut done = 0;
            while start.elapsed() < duration && done < max {
                let stream = connect
                    .connect(Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                drop(stream);
                done += 1;
            }
            Ok((done, start.elapsed()))
        }
    }

    impl ServerTls {
        /// From `--tls-cert`, `--tls-key` and `--client-ca` (a client certificate is then
        /// required).
        pub fn from_files(
            cert: PathBuf,
            key: PathBuf,
            client_ca: Option<PathBuf>,
        ) -> Result<Self, String> {
            let files = ServerFiles {
                cert,
                key,
                client_ca,
            };
            Ok(ServerTls {
                config: files.load()?,
                files: Some(files),
            })
        }

        /// Serves `builder` on `addr` over TLS.
        pub async fn serve(
            &self,
            builder: ServerBuilder,
            addr: SocketAddr,
        ) -> Result<(ServerHandle, Reloader), mcp_server::Error> {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| mcp_server::Error::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let accept = TlsAccept::tcp(listener, self.config.clone());
            let reloader = Reloader {
                reloader: accept.reloader(),
                files: self.files.clone(),
            };
            Ok((builder.serve_with(accept)?, reloader))
        }
    }

    impl ServerFiles {
        fn load(&self) -> Result<Arc<mcp_server::rustls::ServerConfig>, String> {
            let config = TlsServerConfig::from_pem_files(&self.cert, &self.key)
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
            let config = match &self.client_ca {
                Some(ca) => config
                    .client_ca_pem_file(ca, true)
                    .map_err(|e| format!("--client-ca: {e}"))?,
                None => config,
            };
            config.build().map_err(|e| e.to_string())
        }
    }

    impl Reloader {
        /// Reads the certificate files again and uses them for new connections; open
        /// ones keep theirs. Nothing changes if they cannot be read.
        pub fn reload(&self) -> Result<(), String> {
            let files = self
                .files
                .as_ref()
                .ok_or("these certificates were made in memory")?;
            self.reloader.replace(files.load()?);
            Ok(())
        }
    }

    /// Certificates made in memory: a CA, a server certificate for `localhost` and
    /// `127.0.0.1`, and the client settings that trust it.
    pub fn generate() -> Result<(ServerTls, ClientTls), String> {
        generate_for(&["localhost".into(), "127.0.0.1".into()])
    }

    /// [`generate`] with a server certificate for `names` (host names or IP addresses):
    /// one certificate that every replica of `bench --embedded --replicas N` serves.
    pub fn generate_for(names: &[String]) -> Result<(ServerTls, ClientTls), String> {
        let fail = |e: rcgen::Error| format!("cannot make the demo certificates: {e}");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mcp demo CA (in memory)");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
            .map_err(fail)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(fail)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mcp demo server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &ca).map_err(fail)?;
        let server =
            TlsServerConfig::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .and_then(|config| config.build())
                .map_err(|e| e.to_string())?;
        let client = TlsClientConfig::new()
            .ca_pem(ca.pem().as_bytes())
            .map_err(|e| e.to_string())?;
        Ok((
            ServerTls {
                config: server,
                files: None,
            },
            ClientTls {
                config: client,
                named: false,
            },
        ))
    }
}

#[cfg(feature = "tls")]
pub use imp::{generate, generate_for};

#[cfg(not(feature = "tls"))]
mod imp {
    use super::*;

    impl ClientTls {
        /// Refused: built without TLS.
        pub fn from_args(_args: &ClientTlsArgs) -> Result<Self, String> {
            Err(NO_TLS.into())
        }

        /// Unreachable: no `ClientTls` exists without the feature.
        pub fn apply<F: Format>(&self, builder: ClientBuilder<F>) -> ClientBuilder<F> {
            builder
        }

        /// Unreachable: no `ClientTls` exists without the feature.
        pub fn apply_fleet<F: Format>(
            &self,
            builder: ClientBuilder<F, Fleet>,
        ) -> ClientBuilder<F, Fleet> {
            builder
        }

        /// Unreachable: no `ClientTls` exists without the feature.
        pub fn for_name(&self, _name: Option<&str>) -> Self {
            self.clone()
        }

        /// Refused: built without TLS.
        pub fn without_resumption(&self) -> Result<Self, String> {
            Err(NO_TLS.into())
        }

        /// Refused: built without TLS.
        pub async fn connect(
            &self,
            _addr: &str,
            _name: Option<&str>,
            _timeout: Duration,
        ) -> Result<Box<dyn super::ByteStream>, String> {
            Err(NO_TLS.into())
        }

        /// Refused: built without TLS.
        pub async fn handshakes(
            &self,
            _addr: &str,
            _duration: Duration,
            _max: u64,
        ) -> Result<(u64, Duration), String> {
            Err(NO_TLS.into())
        }
    }

    impl ServerTls {
        /// Refused: built without TLS.
        pub fn from_files(
            _cert: PathBuf,
            _key: PathBuf,
            _client_ca: Option<PathBuf>,
        ) -> Result<Self, String> {
            Err(NO_TLS.into())
        }

        /// Unreachable: no `ServerTls` exists without the feature.
        pub async fn serve(
            &self,
            _builder: ServerBuilder,
            _addr: SocketAddr,
        ) -> Result<(ServerHandle, Reloader), mcp_server::Error> {
            Err(mcp_server::Error::Config(NO_TLS.into()))
        }
    }

    impl Reloader {
        /// Refused: built without TLS.
        pub fn reload(&self) -> Result<(), String> {
            Err(NO_TLS.into())
        }
    }

    /// Refused: built without TLS.
    pub fn generate() -> Result<(ServerTls, ClientTls), String> {
        Err(NO_TLS.into())
    }

    /// Refused: built without TLS.
    pub fn generate_for(_names: &[String]) -> Result<(ServerTls, ClientTls), String> {
        Err(NO_TLS.into())
    }
}

#[cfg(not(feature = "tls"))]
pub use imp::{generate, generate_for};

/// A connected byte stream, TLS or not (`mcp ping`).
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> ByteStream for S {}
