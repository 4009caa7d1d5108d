//! TLS end to end over loopback: the client's `TlsConnect` against the server's `TlsAccept`,
//! with certificates made per test (rcgen). Each way a handshake can be refused reaches the
//! caller as a connect error whose `tls_failure()` names the reason.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{BOUND, bounded};
use mcp_client::{
    BackoffConfig, Bytes, Client, ClientBuilder, ErrorKind, Json, PoolConfig, RawRequest,
    TlsClientConfig, TlsFailure,
};
use mcp_server::{
    Reply, Server, ServerBuilder, ServerHandle, TlsAccept, TlsReloader, TlsServerConfig,
};
use mcp_test_support::tls::{TestCa, TestIdentity};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// `echo`, and `whoami`, which answers the client certificate the server saw (DER, empty
/// without one) so that a test can compare it with the one it gave.
fn service() -> ServerBuilder {
    Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .route_raw("whoami", |ctx, _body| async move {
            let der = ctx
                .peer_identity()
                .and_then(|id| id.certificate())
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            Ok(Reply::new(der))
        })
}

struct TlsServer {
    handle: ServerHandle,
    reloader: TlsReloader,
    addr: SocketAddr,
}

async fn serve_tls(config: Arc<mcp_server::rustls::ServerConfig>, timeout: Duration) -> TlsServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let accept = TlsAccept::tcp(listener, config).handshake_timeout(timeout);
    let reloader = accept.reloader();
    let handle = service().serve_with(accept).expect("serve");
    let addr = handle.local_addr();
    TlsServer {
        handle,
        reloader,
        addr,
    }
}

fn server_config(identity: &TestIdentity) -> TlsServerConfig {
    TlsServerConfig::from_pem(identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())
        .expect("server identity")
}

fn trusting(ca: &TestCa) -> TlsClientConfig {
    TlsClientConfig::new()
        .ca_pem(ca.cert_pem().as_bytes())
        .expect("CA")
}

/// A client of `addr` over TLS that gives up after the first failed connect.
fn client(addr: impl std::fmt::Display, tls: TlsClientConfig) -> ClientBuilder<Json> {
    let pool = PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_tries: 1,
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    };
    Client::builder(addr)
        .pool_config(pool)
        .connect_timeout(Duration::from_secs(5))
        .tls(tls)
}

async fn echo(client: &Client<Json>) -> Result<Bytes, mcp_client::Error> {
    let request = RawRequest::new("echo", mcp_client::FormatId::RAW, &b"ping"[..]);
    bounded("echo", client.call_raw(request))
        .await
        .map(|r| r.into_body())
}

/// Connecting with `tls` must fail with `expected`, said in the error's words too.
async fn refused(addr: impl std::fmt::Display, tls: TlsClientConfig, expected: TlsFailure) {
    let err = bounded("connect", client(addr, tls).connect())
        .await
        .expect_err("the handshake must fail");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(err.tls_failure(), Some(expected), "{err}");
    assert!(!err.maybe_processed(), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains(expected.describe()),
        "the message names the reason: {shown}"
    );
}

#[tokio::test]
async fn calls_over_mutual_tls_and_the_handler_sees_the_client_certificate() {
    let ca = TestCa::new("mcp test CA");
    let server_id = ca.server(&["127.0.0.1"]);
    let client_id = ca.client("client-1");
    let config = server_config(&server_id)
        .client_ca_pem(ca.cert_pem().as_bytes(), true)
        .expect("client CA")
        .build()
        .expect("server config");
    let server = serve_tls(config, BOUND).await;
    let tls = trusting(&ca)
        .identity_pem(client_id.cert_pem.as_bytes(), client_id.key_pem.as_bytes())
        .expect("identity");
    let client = bounded("connect", client(server.addr, tls).connect())
        .await
        .expect("connect over mutual TLS");
    assert_eq!(&echo(&client).await.expect("echo")[..], b"ping");
    let request = RawRequest::new("whoami", mcp_client::FormatId::RAW, Bytes::new());
    let seen = bounded("whoami", client.call_raw(request))
        .await
        .expect("whoami");
    assert_eq!(seen.body()[..], client_id.cert_der[..]);
    assert_eq!(server.reloader.stats().completed, 1);
    client.close().await;
    server
        .handle
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_left_out() {
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.server(&["127.0.0.1"]))
        .client_ca_pem(ca.cert_pem().as_bytes(), false)
        .expect("client CA")
        .build()
        .expect("server config");
    let server = serve_tls(config, BOUND).await;
    let client = bounded("connect", client(server.addr, trusting(&ca)).connect())
        .await
        .expect("connect without a client certificate");
    let request = RawRequest::new("whoami", mcp_client::FormatId::RAW, Bytes::new());
    let seen = bounded("whoami", client.call_raw(request))
        .await
        .expect("whoami");
    assert!(seen.body().is_empty(), "no identity without a certificate");
}

#[tokio::test]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let ca = TestCa::new("mcp test CA");
    let other = TestCa::new("another CA");
    let config = server_config(&ca.server(&["127.0.0.1"]))
        .build()
        .expect("config");
    let server = serve_tls(config, BOUND).await;
    refused(server.addr, trusting(&other), TlsFailure::UnknownIssuer).await;
    // A call on a client built without connecting learns the same, through the pool.
    let lazy = client(server.addr, trusting(&other))
        .build()
        .expect("client");
    let err = echo(&lazy).await.expect_err("no connection");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(err.tls_failure(), Some(TlsFailure::UnknownIssuer), "{err}");
    assert!(!err.maybe_processed(), "{err}");
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.expired_server(&["127.0.0.1"]))
        .build()
        .expect("config");
    let server = serve_tls(config, BOUND).await;
    refused(server.addr, trusting(&ca), TlsFailure::Expired).await;
}

#[tokio::test]
async fn the_server_name_is_the_host_given_unless_one_is_set() {
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.server(&["mcp.test"]))
        .build()
        .expect("config");
    let server = serve_tls(config, BOUND).await;
    // Connecting to 127.0.0.1 checks the certificate against 127.0.0.1: not its name.
    refused(server.addr, trusting(&ca), TlsFailure::NameMismatch).await;
    // The name set is what the certificate is checked against, whatever address is used.
    let client = bounded(
        "connect",
        client(server.addr, trusting(&ca).server_name("mcp.test")).connect(),
    )
    .await
    .expect("connect with the server name set");
    assert_eq!(&echo(&client).await.expect("echo")[..], b"ping");
}

#[tokio::test]
async fn a_server_that_does_not_speak_mcp_over_alpn_is_refused() {
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.server(&["127.0.0.1"]))
        .build()
        .expect("config");
    let mut h2_only = (*config).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let server = serve_tls(Arc::new(h2_only), BOUND).await;
    refused(
        server.addr,
        trusting(&ca),
        TlsFailure::NoApplicationProtocol,
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_or_with_an_unknown_one() {
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.server(&["127.0.0.1"]))
        .client_ca_pem(ca.cert_pem().as_bytes(), true)
        .expect("client CA")
        .build()
        .expect("config");
    let server = serve_tls(config, BOUND).await;
    refused(
        server.addr,
        trusting(&ca),
        TlsFailure::ClientCertificateRequired,
    )
    .await;
    let stranger = TestCa::new("stranger CA").client("intruder");
    let tls = trusting(&ca)
        .identity_pem(stranger.cert_pem.as_bytes(), stranger.key_pem.as_bytes())
        .expect("identity");
    refused(server.addr, tls, TlsFailure::ClientCertificateRejected).await;
    assert_eq!(server.reloader.stats().failed, 2);
    assert_eq!(server.handle.stats().accepted_connections, 0);
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed_by_the_handshake_timeout() {
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.server(&["127.0.0.1"]))
        .build()
        .expect("config");
    let server = serve_tls(config, Duration::from_secs(3)).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Meanwhile others are served: the silent handshake runs in a task of its own.
    let client = bounded("connect", client(server.addr, trusting(&ca)).connect())
        .await
        .expect("connect while another handshake waits");
    assert_eq!(&echo(&client).await.expect("echo")[..], b"ping");
    // The silent one is closed once its handshake time is over.
    let mut buf = [0u8; 16];
    let read = bounded("the silent connection's end", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    let stats = server.reloader.stats();
    assert_eq!((stats.completed, stats.timed_out), (1, 1), "{stats:?}");
}

/// One host that opens many connections and never says hello takes at most
/// `max_handshakes_per_ip` handshake places: the rest of its connections are closed at once,
/// and a client from another host is served at once, though the silent ones outnumber
/// `max_handshakes` (which, reached, would stop the server taking connections at all).
#[tokio::test]
async fn one_silent_host_cannot_take_every_handshake_place() {
    const SILENT: usize = 24;
    let ca = TestCa::new("mcp test CA");
    let config = server_config(&ca.server(&["127.0.0.1"]))
        .build()
        .expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let accept = TlsAccept::tcp(listener, config)
        .handshake_timeout(Duration::from_secs(30))
        .max_handshakes(16)
        .max_handshakes_per_ip(4);
    let reloader = accept.reloader();
    let handle = service().serve_with(accept).expect("serve");
    let addr = handle.local_addr();
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("bind 127.0.0.2");
        silent.push(
            bounded("connect", socket.connect(addr))
                .await
                .expect("connect"),
        );
    }
    // Every connection past the host's 4 is closed without waiting for the handshake's time
    // (30 s): the server counts them, and each reads its end of stream.
    let deadline = tokio::time::Instant::now() + BOUND;
    while reloader.stats().refused_per_ip < (SILENT - 4) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            reloader.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut reads = tokio::task::JoinSet::new();
    for mut stream in silent {
        reads.spawn(async move {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
            (matches!(read, Ok(Ok(0) | Err(_))), stream)
        });
    }
    let mut closed = 0;
    let mut silent = Vec::new();
    while let Some(done) = reads.join_next().await {
        let (was_closed, stream) = done.expect("read task");
        closed += usize::from(was_closed);
        silent.push(stream);
    }
    assert_eq!(closed, SILENT - 4);
    assert_eq!(reloader.stats().refused_per_ip, (SILENT - 4) as u64);
    // A client from 127.0.0.1 is served while the 4 still wait.
    let client = bounded("connect", client(addr, trusting(&ca)).connect())
        .await
        .expect("connect while one host's handshakes wait");
    assert_eq!(&echo(&client).await.expect("echo")[..], b"ping");
    let stats = reloader.stats();
    assert_eq!((stats.completed, stats.timed_out), (1, 0), "{stats:?}");
    // The host's places come back as its connections go (each handshake ends as failed).
    drop(silent);
    let deadline = tokio::time::Instant::now() + BOUND;
    while reloader.stats().failed < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            reloader.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("bind 127.0.0.2");
        again.push(
            bounded("connect", socket.connect(addr))
                .await
                .expect("connect"),
        );
    }
    let deadline = tokio::time::Instant::now() + BOUND;
    while reloader.stats().refused_per_ip < (SILENT - 3) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            reloader.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        reloader.stats().refused_per_ip,
        (SILENT - 3) as u64,
        "4 of 5 taken"
    );
    handle
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn certificates_rotate_without_dropping_open_connections() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let config = server_config(&old_ca.server(&["127.0.0.1"]))
        .build()
        .expect("config");
    let server = serve_tls(config, BOUND).await;
    let before = bounded("connect", client(server.addr, trusting(&old_ca)).connect())
        .await
        .expect("connect before the rotation");
    assert_eq!(&echo(&before).await.expect("echo")[..], b"ping");

    server.reloader.replace(
        server_config(&new_ca.server(&["127.0.0.1"]))
            .build()
            .expect("new config"),
    );

    // The open connection goes on, on the session it has.
    assert_eq!(&echo(&before).await.expect("echo after")[..], b"ping");
    assert_eq!(server.handle.stats().accepted_connections, 1);
    // New connections get the new certificate.
    refused(server.addr, trusting(&old_ca), TlsFailure::UnknownIssuer).await;
    let after = bounded("connect", client(server.addr, trusting(&new_ca)).connect())
        .await
        .expect("connect after the rotation");
    assert_eq!(&echo(&after).await.expect("echo")[..], b"ping");
    assert_eq!(server.handle.stats().open_connections, 2);
}

#[tokio::test]
async fn bad_pem_is_a_typed_configuration_error() {
    let err = TlsClientConfig::new()
        .ca_pem(b"not a certificate")
        .expect_err("no certificate in it");
    assert!(err.to_string().contains("CA certificates"), "{err}");
    let ca = TestCa::new("mcp test CA");
    let id = ca.server(&["127.0.0.1"]);
    let err = TlsServerConfig::from_pem(id.cert_pem.as_bytes(), id.cert_pem.as_bytes())
        .expect_err("a certificate is no key");
    assert!(err.to_string().contains("private key"), "{err}");
    let err = Client::builder("127.0.0.1:1")
        .tls(trusting(&ca).server_name("not a name!"))
        .build()
        .expect_err("an invalid server name");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

/// A fleet over TLS: every endpoint is reached through TLS, verified by the name discovery
/// gave it (`Instance::with_server_name`), not by its address; an endpoint without a name is
/// verified by its address's host, and refused when the certificate does not name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reaches_every_endpoint_over_tls_by_its_server_name() {
    let ca = TestCa::new("mcp test CA");
    let id = ca.server(&["mcp.test"]);
    let config = server_config(&id).build().expect("server config");
    let a = serve_tls(config.clone(), BOUND).await;
    let b = serve_tls(config, BOUND).await;
    let fleet = Client::fleet([
        mcp_client::Instance::new(a.addr.to_string()).with_server_name("mcp.test"),
        mcp_client::Instance::new(b.addr.to_string()).with_server_name("mcp.test"),
    ])
    .tls(trusting(&ca))
    .build()
    .expect("build");
    for _ in 0..20 {
        let request = RawRequest::new("echo", mcp_client::FormatId::RAW, Bytes::from("ping"));
        let answer = bounded("echo", fleet.call_raw(request))
            .await
            .expect("echo");
        assert_eq!(&answer.body()[..], b"ping");
    }
    assert!(
        a.reloader.stats().completed >= 1,
        "a: {:?}",
        a.reloader.stats()
    );
    assert!(
        b.reloader.stats().completed >= 1,
        "b: {:?}",
        b.reloader.stats()
    );
    fleet.close().await;

    // No name: verified as 127.0.0.1, which the certificate does not name.
    let unnamed = Client::fleet([a.addr.to_string()])
        .tls(trusting(&ca))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("build");
    let request = RawRequest::new("echo", mcp_client::FormatId::RAW, Bytes::from("ping"));
    let err = bounded("refused", unnamed.call_raw(request))
        .await
        .expect_err("the name does not match");
    assert!(!err.maybe_processed(), "{err}");
    unnamed.close().await;
    for server in [a, b] {
        server
            .handle
            .shutdown(Duration::from_secs(1))
            .await
            .expect("shutdown");
    }
}
