//! `mcp`: the command-line tool of mcp-rs.
//!
//! Every failure is one clear line on stderr and a non-zero exit code: 1 for a failed
//! operation, 2 for a usage error (a flag's value that cannot work is refused by name).
//! Text from the peer (ERROR messages, GOAWAY reasons, bodies) is printed with its control
//! characters escaped (`mcp_cli::text`), so that it can neither add lines nor act on the
//! terminal. When stdout is a pipe whose reader has gone
//! (`mcp decode capture | head`), the program ends quietly with exit code 1.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use mcp_client::{CallOptions, Client, EndpointSnapshot, LimitConfig, RawRequest};
use mcp_format::{FormatId, Json, Protobuf};
use mcp_proto::examples::v1::user_service_client::UserServiceClient;
use mcp_proto::examples::v1::{GetUser, UserUpdate};
use serde::{Deserialize, Serialize};

use mcp_cli::loadgen::{self, LoadConfig, LoadReport, Progress};
use mcp_cli::target::{self, AnyClient, Settings, Target};
use mcp_cli::text;
use mcp_cli::tls::{ClientTls, ClientTlsArgs, ServerTls};
use mcp_cli::{decode, ping, service};
use mcp_server::ServerConfig;

mod args;

/// `println!` for results. `println!` panics when stdout is a closed pipe (`mcp ping ADDR |
/// head -2`); this ends the program quietly instead, as Unix tools do.
macro_rules! outln {
    () => {
        write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for results, with [`outln!`]'s handling of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))
    };
}

/// Writes to stdout; a reader that has gone away ends the program quietly (exit code 1),
/// any other write error with one line on stderr.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("mcp: cannot write to stdout: {e}");
        }
        std::process::exit(1);
    }
}

/// Client, server and tools for MCP, the binary microservice protocol (not the Model
/// Context Protocol).
#[derive(Debug, Parser)]
#[command(name = "mcp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo and interop test service: echo, sleep, fail, big, publish, user.get,
    /// user.update, and a `ticker` topic (docs/protocol.md section 10).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7000")]
        addr: SocketAddr,
        /// How often `ticker` pushes.
        #[arg(long, default_value = "1s", value_parser = args::positive_duration)]
        tick: Duration,
        /// Send each connection away (GOAWAY code 0) at this age, give or take 10%, so
        /// that clients rebalance onto new replicas.
        #[arg(long, value_parser = args::positive_duration)]
        max_connection_age: Option<Duration>,
        /// Serve over TLS with this certificate chain (PEM, the server's own first);
        /// SIGHUP reads it and the key again for new connections.
        #[arg(long, requires = "tls_key", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by these CAs (PEM): mutual TLS.
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        client_ca: Option<PathBuf>,
        /// Connections open at once, at most (further ones are sent GOAWAY 2).
        #[arg(long, value_parser = args::limit, default_value_t = ServerConfig::default().max_connections)]
        max_connections: usize,
        /// Connections open at once from one IP address, at most (off unless given).
        #[arg(long, value_parser = args::limit)]
        max_connections_per_ip: Option<usize>,
        /// Requests whose handlers run at once in the whole server, at most (past it,
        /// ERROR 5 at once).
        #[arg(long, value_parser = args::limit, default_value_t = ServerConfig::default().max_in_flight_total)]
        max_in_flight_total: usize,
        /// Request bytes held in the whole server, at most: the bodies of running requests
        /// and of messages still arriving (e.g. 512MiB; past it, ERROR 5 at once).
        #[arg(long, value_parser = args::byte_limit, default_value = "1GiB")]
        max_in_flight_bytes_total: usize,
    },
    /// Call METHOD on the server at ADDR and print the answer.
    Call {
        /// The server, host:port; or several replicas, comma-separated
        /// (127.0.0.1:7001,127.0.0.2:7001), or dns:host:port for every address of a name:
        /// the call goes to one of them (p2c over peak EWMA), and to another if that one
        /// cannot be reached.
        #[arg(value_parser = Target::parse)]
        addr: Target,
        /// The method, e.g. `echo` or `user.get`.
        method: String,
        /// A JSON body (sent in format 1, JSON).
        #[arg(long, conflicts_with_all = ["raw", "hex"])]
        json: Option<String>,
        /// A body sent as these bytes (format 0, raw, unless --format says otherwise).
        #[arg(long, conflicts_with = "hex")]
        raw: Option<String>,
        /// A body given in hex, e.g. "4d 43 01" (format 0, raw, unless --format says
        /// otherwise).
        #[arg(long, value_parser = args::hex)]
        hex: Option<Bytes>,
        /// The format byte: raw, json, protobuf, or a number 0..=255.
        #[arg(long, value_parser = parse_format)]
        format: Option<FormatId>,
        /// Metadata entries, key=value (repeatable).
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// The call's total budget.
        #[arg(long, default_value = "5s", value_parser = args::positive_duration)]
        timeout: Duration,
        #[command(flatten)]
        tls: TlsFlags,
    },
    /// Ask a server's health (`$health`, docs/protocol.md section 7): prints SERVING,
    /// NOT_SERVING or SERVICE_UNKNOWN. Exit code 0 when serving, 3 when not (or unknown),
    /// 1 when the server could not be asked; for several, 0 only when all serve.
    Health {
        /// The server, host:port; or several, comma-separated, or dns:host:port for every
        /// address of a name: each is asked, and each answer printed after its address.
        #[arg(value_parser = Target::parse)]
        addr: Target,
        /// The service (the server as a whole when left out).
        #[arg(default_value = "")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = args::positive_duration)]
        timeout: Duration,
        #[command(flatten)]
        tls: TlsFlags,
    },
    /// Send PINGs to ADDR and print round-trip times.
    Ping {
        /// The server, host:port; or several, comma-separated, or dns:host:port for every
        /// address of a name: each is pinged in turn. Exit code 0 when no PING was lost.
        #[arg(value_parser = Target::parse)]
        addr: Target,
        /// How many PINGs.
        #[arg(short = 'c', long, default_value = "4", value_parser = args::ping_count)]
        count: u32,
        /// Time between PINGs.
        #[arg(short = 'i', long, default_value = "1s", value_parser = args::duration)]
        interval: Duration,
        /// How long to wait for each PONG.
        #[arg(short = 'W', long, default_value = "2s", value_parser = args::positive_duration)]
        wait: Duration,
        #[command(flatten)]
        tls: TlsFlags,
    },
    /// Load-test the `echo` method of ADDR (or of embedded servers with --embedded). With
    /// several addresses, the report shows each endpoint's share of the attempts and its
    /// latency estimate; with --embedded --tls, the run is made in the clear then over TLS.
    Bench(BenchArgs),
    /// Print the frames of a capture (binary or hex; a file, or stdin when omitted).
    Decode {
        /// The capture; stdin when omitted.
        file: Option<PathBuf>,
    },
    /// Start a server in this process, call it in JSON and Protobuf, receive pushes, and
    /// run a short benchmark.
    Demo {
        /// How long the benchmark part runs.
        #[arg(long, default_value = "5s", value_parser = args::positive_duration)]
        duration: Duration,
        /// Run it all over TLS, with certificates made in memory for this run.
        #[arg(long)]
        tls: bool,
    },
}

/// A client's TLS flags (`call`, `ping`, `health`, `bench`).
#[derive(Debug, Clone, clap::Args)]
struct TlsFlags {
    /// Connect over TLS (ALPN mcp/1), trusting the platform's root certificates or --ca.
    #[arg(long)]
    tls: bool,
    /// Trust these CA certificates (PEM) instead of the platform's.
    #[arg(long, requires = "tls", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Present this certificate chain (PEM) to a server that asks (mutual TLS).
    #[arg(long, requires_all = ["tls", "key"], value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, requires_all = ["tls", "cert"], value_name = "FILE")]
    key: Option<PathBuf>,
    /// Verify every server's certificate for this name (default: each address's own host;
    /// for dns:host:port, host).
    #[arg(long, requires = "tls", value_name = "NAME")]
    server_name: Option<String>,
}

impl TlsFlags {
    /// The client's TLS settings, if --tls was given.
    fn client(&self) -> Result<Option<ClientTls>, Failure> {
        if !self.tls {
            return Ok(None);
        }
        let args = ClientTlsArgs {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: self.server_name.clone(),
        };
        ClientTls::from_args(&args).map(Some).map_err(Failure::from)
    }

    /// Whether anything but --tls itself was given.
    fn has_details(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.server_name.is_some()
    }
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The server, host:port; or several replicas, comma-separated, or dns:host:port, called
    /// as one fleet: the report then shows each one's share (omit with --embedded).
    #[arg(required_unless_present = "embedded", value_parser = Target::parse)]
    addr: Option<Target>,
    /// Start the server in this process on a free loopback port (several with --replicas).
    #[arg(long)]
    embedded: bool,
    /// With --embedded: this many servers, on 127.0.0.1, 127.0.0.2, ... (1 to 64), called
    /// as one fleet; the report shows each one's share of the attempts and the balancer's
    /// latency estimate (with 1, the one-endpoint client).
    #[arg(long, default_value = "1", value_parser = args::replicas, requires = "embedded")]
    replicas: u8,
    /// Calls in flight at once (closed loop) or workers (open loop).
    #[arg(short, long, default_value = "64", value_parser = args::concurrency)]
    concurrency: usize,
    /// How long to measure.
    #[arg(short, long, default_value = "5s", value_parser = args::positive_duration)]
    duration: Duration,
    /// Open loop: calls per second in total; latency counts from each call's due time.
    #[arg(long, value_parser = args::rate)]
    rate: Option<f64>,
    /// Body size in bytes (at most the maximum message size, 16 MiB).
    #[arg(short, long, default_value = "64", value_parser = args::body_size)]
    size: usize,
    /// Connections the client may open (to each endpoint, for several).
    #[arg(long, default_value = "1", value_parser = args::connections)]
    connections: usize,
    /// Warm-up before measuring.
    #[arg(long, default_value = "500ms", value_parser = args::duration)]
    warmup: Duration,
    /// The tokio runtime; current-thread is the default with --embedded (repeatable
    /// timings on small machines), multi-thread otherwise.
    #[arg(long, value_enum)]
    runtime: Option<RuntimeKind>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// With --embedded: the server sends each connection away (GOAWAY) at this age, so
    /// that the run measures what connection rotation costs callers.
    #[arg(long, value_parser = args::positive_duration, requires = "embedded")]
    max_connection_age: Option<Duration>,
    /// With --embedded and --tls: the run is made twice, in the clear then over TLS (with
    /// certificates made in memory), and also measures connects per second of each.
    #[command(flatten)]
    tls: TlsFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    CurrentThread,
    MultiThread,
}

fn parse_format(s: &str) -> Result<FormatId, String> {
    Ok(match s {
        "raw" => FormatId::RAW,
        "json" => FormatId::JSON,
        "protobuf" | "proto" => FormatId::PROTOBUF,
        n => FormatId::new(
            n.parse()
                .map_err(|_| format!("{n:?} is not raw, json, protobuf or a number 0..=255"))?,
        ),
    })
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    mcp_codec::validate_key(k.as_bytes()).map_err(|e| format!("metadata key {k:?}: {e}"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses the command line. A value a parser refused (`--concurrency 0`, `--rate nan`) is
/// one line naming the flag and why, exit code 2; clap's other errors keep their usage
/// hint, and help and version print as clap does.
fn parse_cli() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) =>
        {
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("error: invalid value");
            eprintln!("{line}");
            Err(ExitCode::from(USAGE))
        }
        Err(e) => e.exit(),
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let runtime = match &cli.command {
        Command::Bench(args) => args.runtime.unwrap_or(if args.embedded {
            RuntimeKind::CurrentThread
        } else {
            RuntimeKind::MultiThread
        }),
        // The demo measures in-process: one thread gives repeatable figures.
        Command::Demo { .. } => RuntimeKind::CurrentThread,
        _ => RuntimeKind::MultiThread,
    };
    let built = match runtime {
        RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        RuntimeKind::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve {
                addr,
                tick,
                max_connection_age,
                tls_cert,
                tls_key,
                client_ca,
                max_connections,
                max_connections_per_ip,
                max_in_flight_total,
                max_in_flight_bytes_total,
            } => {
                let tls = match (tls_cert, tls_key) {
                    (Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key, client_ca)?),
                    _ => None,
                };
                let mut config = ServerConfig::default();
                config.max_connection_age = max_connection_age;
                config.max_connections = max_connections;
                config.max_connections_per_ip = max_connections_per_ip;
                config.max_in_flight_total = max_in_flight_total;
                config.max_in_flight_bytes_total = max_in_flight_bytes_total;
                serve(addr, tick, config, tls).await
            }
            Command::Call {
                addr,
                method,
                json,
                raw,
                hex,
                format,
                meta,
                timeout,
                tls,
            } => {
                let tls = tls.client()?;
                call(addr, method, json, raw, hex, format, meta, timeout, tls).await
            }
            Command::Ping {
                addr,
                count,
                interval,
                wait,
                tls,
            } => run_ping(addr, count, interval, wait, tls.client()?).await,
            Command::Health {
                addr,
                service,
                timeout,
                tls,
            } => health(addr, service, timeout, tls.client()?).await,
            Command::Bench(args) => bench(args).await,
            Command::Decode { file } => run_decode(file),
            Command::Demo { duration, tls } => demo(duration, tls).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(failure) => {
            // Errors quote the peer (an ERROR message, a GOAWAY reason): one line, with
            // nothing that a terminal would act on.
            eprintln!("mcp: {}", text::one_line(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// The exit code of a usage error.
const USAGE: u8 = 2;

/// Why a command failed: one line for stderr and the exit code.
#[derive(Debug)]
struct Failure {
    message: String,
    /// 1 for a failed operation, [`USAGE`] for a usage error.
    code: u8,
}

impl Failure {
    /// A usage error: the command line asked for something that cannot work.
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: USAGE,
        }
    }
}

/// A failed operation.
impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { message, code: 1 }
    }
}

type CmdResult = Result<ExitCode, Failure>;

/// A client for one command: connected (or the reason why not, at once), one connect try
/// per endpoint. One address is the one-endpoint client; several, or a DNS name, a fleet.
async fn one_shot_client(
    target: &Target,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<AnyClient, Failure> {
    let settings = Settings {
        timeout: Some(timeout),
        one_shot: true,
        ..Settings::default()
    };
    Ok(AnyClient::connect(target, &settings, tls).await?)
}

/// The exit code of `mcp health` for a server or service that does not serve.
const NOT_SERVING: u8 = 3;

/// Asks each endpoint of `target` for its health, all at once. One address prints the
/// answer alone (as ever); several print `ADDR ANSWER` lines in the order given. Exit code
/// 0 when every one serves, 1 when one could not be asked, else 3.
async fn health(
    target: Target,
    service: String,
    timeout: Duration,
    tls: Option<ClientTls>,
) -> CmdResult {
    if service.len() > 255 {
        return Err(Failure::usage(
            "health: a service name is at most 255 bytes",
        ));
    }
    if let Target::One(_) = target {
        let word = health_of(&target, &service, timeout, tls.as_ref()).await?;
        outln!("{}", text::one_line(&word));
        return Ok(if word == "SERVING" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(NOT_SERVING)
        });
    }
    let endpoints = target.endpoints().await?;
    let mut asks = tokio::task::JoinSet::new();
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let service = service.clone();
        let tls = tls
            .as_ref()
            .map(|tls| tls.for_name(endpoint.name.as_deref()));
        asks.spawn(async move {
            let one = Target::One(endpoint.addr.clone());
            let answer = health_of(&one, &service, timeout, tls.as_ref()).await;
            (i, endpoint.addr, answer)
        });
    }
    let mut answers = asks.join_all().await;
    answers.sort_by_key(|(i, ..)| *i);
    let (mut serving, mut unasked) = (true, false);
    for (_, addr, answer) in answers {
        match answer {
            Ok(word) => {
                serving &= word == "SERVING";
                outln!("{addr} {}", text::one_line(&word));
            }
            Err(failure) => {
                unasked = true;
                let message = if failure.message.starts_with(&addr) {
                    failure.message
                } else {
                    format!("{addr}: {}", failure.message)
                };
                eprintln!("mcp: {}", text::one_line(&message));
            }
        }
    }
    Ok(match (unasked, serving) {
        (true, _) => ExitCode::FAILURE,
        (false, true) => ExitCode::SUCCESS,
        (false, false) => ExitCode::from(NOT_SERVING),
    })
}

/// One endpoint's answer to `$health`: SERVING, NOT_SERVING or SERVICE_UNKNOWN.
async fn health_of(
    target: &Target,
    service: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<String, Failure> {
    let client = one_shot_client(target, timeout, tls).await?;
    let request = RawRequest::new(
        "$health",
        FormatId::RAW,
        Bytes::from(service.as_bytes().to_vec()),
    )
    .with_options(CallOptions::new().timeout(timeout));
    let result = client.call_raw(request).await;
    client.close().await;
    let response = result.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(response.body()).into_owned())
}

async fn serve(
    addr: SocketAddr,
    tick: Duration,
    config: ServerConfig,
    tls: Option<ServerTls>,
) -> CmdResult {
    let server = service::start_with_tls(addr, tick, config, tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    // After a flood of connections is gone, the allocator's free memory goes back to the
    // system (src/memory.rs): the server's resident memory comes back near its baseline.
    let _trimmer = mcp_cli::memory::Trimmer::spawn(server.server().clone());
    outln!(
        "mcp: serving on {}{} ({}; topic {} every {}); Ctrl-C or SIGTERM stops",
        server.local_addr(),
        if tls.is_some() { " over TLS" } else { "" },
        service::METHODS.join(", "),
        service::TICKER,
        humantime::format_duration(tick)
    );
    if let Some(reloader) = server.tls_reloader().cloned() {
        reload_on_sighup(reloader);
    }
    let why = stop_requested().await?;
    outln!("mcp: {why}: shutting down (GOAWAY, answering requests in flight)");
    server
        .shutdown(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM, the signal a process manager (systemd, the
/// kubelet) stops a service with; says which came.
async fn stop_requested() -> Result<&'static str, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot wait for SIGTERM: {e}"))?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                interrupted.map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
                Ok("interrupted")
            }
            _ = terminate.recv() => Ok("terminated"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
        Ok("interrupted")
    }
}

/// `mcp serve --tls-cert`: SIGHUP reads the certificate files again; new connections use
/// them, open ones keep theirs. A file that cannot be read keeps the old certificate.
fn reload_on_sighup(reloader: mcp_cli::tls::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            eprintln!("mcp: cannot listen for SIGHUP; certificates will not be reloaded");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match reloader.reload() {
                    Ok(()) => outln!("mcp: certificates reloaded"),
                    Err(e) => eprintln!("mcp: certificates not reloaded (the old ones stay): {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

#[allow(clippy::too_many_arguments)]
async fn call(
    addr: Target,
    method: String,
    json: Option<String>,
    raw: Option<String>,
    hex: Option<Bytes>,
    format: Option<FormatId>,
    meta: Vec<(String, String)>,
    timeout: Duration,
    tls: Option<ClientTls>,
) -> CmdResult {
    let (body, default_format) = match (json, raw, hex) {
        (Some(text), _, _) => {
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("--json is not valid JSON: {e}"))?;
            (Bytes::from(value.to_string()), FormatId::JSON)
        }
        (_, Some(text), _) => (Bytes::from(text), FormatId::RAW),
        (_, _, Some(bytes)) => (bytes, FormatId::RAW),
        _ => (Bytes::new(), FormatId::RAW),
    };
    let client = one_shot_client(&addr, timeout, tls.as_ref()).await?;
    let mut options = CallOptions::new().timeout(timeout);
    for (k, v) in meta {
        options = options.meta(k, v);
    }
    let request =
        RawRequest::new(method, format.unwrap_or(default_format), body).with_options(options);
    let result = client.call_raw(request).await;
    client.close().await;
    let response = result.map_err(|e| e.to_string())?;
    // The body is the peer's: its text is printed with control characters escaped
    // (docs: `mcp_cli::text`), so that it cannot act on the terminal.
    let body = response.body();
    match response.format() {
        FormatId::JSON => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) => outln!(
                "{}",
                text::json(&serde_json::to_string_pretty(&value).unwrap_or_default())
            ),
            Err(_) => outln!("{}", text::block(&String::from_utf8_lossy(body))),
        },
        FormatId::RAW if std::str::from_utf8(body).is_ok() => {
            outln!("{}", text::block(&String::from_utf8_lossy(body)))
        }
        other => outln!(
            "({} bytes, format {other}) {}",
            body.len(),
            body.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// PINGs each endpoint of `target` in turn: one address, each address of a list, or each
/// address a DNS name resolves to. Fails if any PING was lost; an endpoint that cannot be
/// reached is one error line (the only answer for one address) and the others are still
/// pinged.
async fn run_ping(
    target: Target,
    count: u32,
    interval: Duration,
    wait: Duration,
    tls: Option<ClientTls>,
) -> CmdResult {
    let endpoints = target.endpoints().await?;
    if let [endpoint] = &endpoints[..] {
        let lost = ping_one(endpoint, count, interval, wait, tls.as_ref()).await?;
        return Ok(if lost == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut lost = 0;
    for endpoint in &endpoints {
        match ping_one(endpoint, count, interval, wait, tls.as_ref()).await {
            Ok(n) => lost += n,
            Err(e) => {
                eprintln!("mcp: {}", text::one_line(&e.message));
                lost += count;
            }
        }
    }
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// PINGs one endpoint; returns how many PINGs were lost.
async fn ping_one(
    endpoint: &target::Endpoint,
    count: u32,
    interval: Duration,
    wait: Duration,
    tls: Option<&ClientTls>,
) -> Result<u32, Failure> {
    let addr = &endpoint.addr;
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let on_reply = |seq, rtt: Option<f64>| match rtt {
        Some(us) => outln!("PONG from {target}: seq={seq} time={:.1} us", us),
        None => outln!(
            "no PONG for seq={seq} within {}",
            humantime::format_duration(wait)
        ),
    };
    let stats = match tls {
        None => {
            outln!("PING {addr} ({target}): {count} PINGs");
            ping::run(target, count, interval, wait, on_reply).await?
        }
        Some(tls) => {
            let stream = tls
                .connect(addr, endpoint.name.as_deref(), Duration::from_secs(5))
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            outln!("PING {addr} ({target}) over TLS: {count} PINGs");
            ping::run_on(stream, count, interval, wait, on_reply).await?
        }
    };
    outln!(
        "--- {addr} ping statistics ---\n{} sent, {} answered, {} lost",
        stats.sent,
        stats.rtts_us.len(),
        stats.lost()
    );
    if let Some((min, avg, max, mdev)) = stats.summary() {
        outln!("rtt min/avg/max/mdev = {min:.1}/{avg:.1}/{max:.1}/{mdev:.1} us");
    }
    Ok(stats.lost())
}

/// What a load run measured, and the first error in full (the report counts errors by kind
/// only; this says why).
struct Load {
    report: LoadReport,
    first_error: Option<String>,
}

/// Runs the load generator against `echo` through a client.
async fn load(client: AnyClient, config: &LoadConfig, size: usize, live: bool) -> Load {
    let first_error = Arc::new(std::sync::OnceLock::new());
    let first = Arc::clone(&first_error);
    let body = Bytes::from(vec![0x5a; size]);
    let progress = Arc::new(Progress::default());
    let total = config.warmup + config.duration;
    let printer = tokio::spawn(print_progress(Arc::clone(&progress), total, live));
    let report = loadgen::run(config, Arc::clone(&progress), move || {
        let client = client.clone();
        let request = RawRequest::new("echo", FormatId::RAW, body.clone());
        let first = Arc::clone(&first);
        async move {
            match client.call_raw(request).await {
                Ok(response) if response.body().len() == size => Ok(()),
                Ok(response) => {
                    first.get_or_init(|| {
                        format!("echo answered {} bytes for {size}", response.body().len())
                    });
                    Err("wrong echo".to_string())
                }
                Err(e) => {
                    first.get_or_init(|| e.to_string());
                    Err(match e.code() {
                        Some(code) => format!("remote ERROR {code}"),
                        None => e.kind().to_string(),
                    })
                }
            }
        }
    })
    .await;
    printer.abort();
    if live {
        eprintln!();
    }
    Load {
        report,
        first_error: first_error.get().cloned(),
    }
}

/// A progress bar on stderr, redrawn in place on a terminal, a line a second otherwise.
async fn print_progress(progress: Arc<Progress>, total: Duration, tty: bool) {
    let start = tokio::time::Instant::now();
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(total);
        let done = progress.ok();
        let rate = done - last;
        last = done;
        let width = 30;
        let filled = ((elapsed.as_secs_f64() / total.as_secs_f64()) * width as f64) as usize;
        let bar = format!(
            "{}{}",
            "#".repeat(filled.min(width)),
            ".".repeat(width - filled.min(width))
        );
        let line = format!(
            "[{bar}] {:>4.1}/{:.1} s  {done} ok  {} errors  {rate} req/s",
            elapsed.as_secs_f64(),
            total.as_secs_f64(),
            progress.errors()
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
}

fn print_report(load: &Load, with_histogram: bool) {
    let report = &load.report;
    outln!(
        "throughput: {:.0} requests/s ({} ok in {:.2} s)",
        report.requests_per_second(),
        report.ok,
        report.elapsed.as_secs_f64()
    );
    outln!(
        "latency: p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
        report.percentile_us(50.0),
        report.percentile_us(90.0),
        report.percentile_us(99.0),
        report.percentile_us(99.9),
        report.latency_ns.max() as f64 / 1_000.0
    );
    if report.errors.is_empty() {
        outln!("errors: none");
    } else {
        let list: Vec<String> = report
            .errors
            .iter()
            .map(|(k, n)| format!("{}: {n}", text::one_line(k)))
            .collect();
        outln!("errors: {}", list.join(", "));
        if let Some(first) = &load.first_error {
            // It may quote the server (an ERROR message): one line, escaped.
            outln!("first error: {}", text::one_line(first));
        }
    }
    if with_histogram {
        out!("{}", loadgen::render_histogram(report, 40));
    }
}

/// One measured run of `bench`: the load's report, and the server's count of connections.
struct BenchRun {
    load: Load,
    /// For a fleet, each endpoint's figures at the end of the run (empty for one).
    endpoints: Vec<EndpointSnapshot>,
    /// Connections the embedded servers accepted, all together.
    accepted: Option<u64>,
    /// Connects (a TLS handshake included) per second, one after the other, when measured.
    connects_per_second: Option<f64>,
}

async fn bench(args: BenchArgs) -> CmdResult {
    let config = LoadConfig {
        concurrency: args.concurrency,
        duration: args.duration,
        rate: args.rate,
        warmup: args.warmup,
    };
    if !(args.embedded && args.tls.tls) {
        let tls = args.tls.client()?;
        let run = bench_run(&args, &config, None, tls.as_ref(), false).await?;
        return bench_report(&args, &run);
    }
    // --embedded --tls: the same load in the clear then over TLS, in one process and one
    // run, so that the two are compared on the same machine at the same moment.
    if args.tls.has_details() {
        return Err(Failure::usage(
            "bench --embedded --tls makes its own certificates: --ca, --cert and --server-name are for a server of your own",
        ));
    }
    // One certificate for every replica's address.
    let names: Vec<String> = std::iter::once("localhost".to_string())
        .chain(replica_ips(args.replicas).map(|ip| ip.to_string()))
        .collect();
    let (server_tls, client_tls) = mcp_cli::tls::generate_for(&names)?;
    eprintln!("bench: in the clear");
    let plain = bench_run(&args, &config, None, None, true).await?;
    print_report(&plain.load, false);
    print_endpoints(&plain.endpoints);
    eprintln!("bench: over TLS (certificates made in memory)");
    let tls = bench_run(&args, &config, Some(&server_tls), Some(&client_tls), true).await?;
    print_report(&tls.load, false);
    print_endpoints(&tls.endpoints);
    let ratio =
        tls.load.report.requests_per_second() / plain.load.report.requests_per_second().max(1.0);
    outln!(
        "tls/plaintext: throughput x{ratio:.3}; {:.0} TLS handshakes/s (full, one at a time) against {:.0} TCP connects/s",
        tls.connects_per_second.unwrap_or(0.0),
        plain.connects_per_second.unwrap_or(0.0),
    );
    if args.json {
        let mut plain_json = run_json(&plain);
        plain_json["connects_per_second"] = serde_json::json!(plain.connects_per_second);
        let mut tls_json = run_json(&tls);
        tls_json["handshakes_per_second"] = serde_json::json!(tls.connects_per_second);
        outln!(
            "{}",
            serde_json::json!({
                "plaintext": plain_json,
                "tls": tls_json,
                "tls_throughput_ratio": ratio,
            })
        );
    }
    Ok(if plain.load.report.ok > 0 && tls.load.report.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How long `bench` connects one connection after another to count connects per second.
const CONNECT_RATE_TIME: Duration = Duration::from_secs(2);

/// At most this many connects in that time: each closed connection holds a local port in
/// TIME_WAIT for a minute, and the ports must not run out.
const MAX_CONNECTS: u64 = 5_000;

/// The loopback addresses of `--replicas N`: 127.0.0.1, 127.0.0.2, ..., distinct hosts to
/// the balancer (Linux routes all of 127/8 to the loopback interface).
fn replica_ips(replicas: u8) -> impl Iterator<Item = std::net::Ipv4Addr> {
    (0..replicas).map(|n| std::net::Ipv4Addr::new(127, 0, 0, 1 + n))
}

/// One load run: against `args.replicas` embedded servers (over TLS with `server_tls`) or
/// `args.addr`, through a client (over TLS with `client_tls`): the one-endpoint client for
/// one address, a fleet for several; then, if `connects`, connects per second to the
/// first server.
async fn bench_run(
    args: &BenchArgs,
    config: &LoadConfig,
    server_tls: Option<&ServerTls>,
    client_tls: Option<&ClientTls>,
    connects: bool,
) -> Result<BenchRun, Failure> {
    let mut servers: Vec<service::Service> = Vec::new();
    let target = match (&args.addr, args.embedded) {
        (_, true) => {
            let mut addrs = Vec::new();
            for ip in replica_ips(args.replicas) {
                let mut server_config = ServerConfig::default();
                server_config.max_connection_age = args.max_connection_age;
                let started = service::start_with_tls(
                    (ip, 0).into(),
                    Duration::from_secs(1),
                    server_config,
                    server_tls,
                )
                .await
                .map_err(|e| format!("cannot start an embedded server on {ip}: {e}"));
                let handle = match started {
                    Ok(handle) => handle,
                    Err(e) => {
                        for server in &servers {
                            let _ = server.shutdown(Duration::ZERO).await;
                        }
                        return Err(e.into());
                    }
                };
                addrs.push(handle.local_addr().to_string());
                servers.push(handle);
            }
            match addrs.len() {
                1 => Target::One(addrs.remove(0)),
                _ => Target::Many(addrs),
            }
        }
        (Some(target), false) => target.clone(),
        (None, false) => return Err(Failure::usage("give ADDR or --embedded")),
    };
    let settings = Settings {
        max_connections: Some(args.connections),
        limit: Some(LimitConfig::new(args.concurrency)),
        ..Settings::default()
    };
    let client = AnyClient::connect(&target, &settings, client_tls).await?;
    eprintln!(
        "bench: {} echo{}, {} B bodies, {} {}, {} connection(s){}, {}",
        target,
        if client_tls.is_some() {
            " over TLS"
        } else {
            ""
        },
        args.size,
        config.concurrency,
        match config.rate {
            Some(r) => format!("workers at {r} calls/s (open loop)"),
            None => "in flight (closed loop)".to_string(),
        },
        args.connections,
        match &client {
            AnyClient::One(_) => "",
            AnyClient::Fleet(_) => " per endpoint, one fleet (p2c over peak EWMA)",
        },
        humantime::format_duration(args.duration),
    );
    let load = load(
        client.clone(),
        config,
        args.size,
        std::io::stderr().is_terminal(),
    )
    .await;
    let endpoints = client.metrics().endpoints;
    client.close().await;
    let connects_per_second = if connects {
        let first = match &target {
            Target::One(addr) | Target::Dns(addr) => addr.as_str(),
            Target::Many(addrs) => addrs[0].as_str(),
        };
        Some(connect_rate(first, client_tls).await?)
    } else {
        None
    };
    let accepted = (!servers.is_empty()).then(|| {
        servers
            .iter()
            .map(|server| server.server().stats().accepted_connections)
            .sum()
    });
    for server in servers {
        let _ = server.shutdown(Duration::from_secs(1)).await;
    }
    Ok(BenchRun {
        load,
        endpoints,
        accepted,
        connects_per_second,
    })
}

/// A fleet's figures per endpoint, one line each: its share of the attempts (warm-up
/// included) and the balancer's latency estimate (peak EWMA) at the end. Nothing for one
/// endpoint.
fn print_endpoints(endpoints: &[EndpointSnapshot]) {
    let total: u64 = endpoints.iter().map(|e| e.attempts).sum();
    for endpoint in endpoints {
        // The address is the user's or the resolver's; one line, escaped, all the same.
        outln!(
            "{}",
            text::one_line(&target::endpoint_line(endpoint, total))
        );
    }
}

/// A run's JSON report, with each endpoint's figures for a fleet.
fn run_json(run: &BenchRun) -> serde_json::Value {
    let mut json = run.load.report.to_json();
    if !run.endpoints.is_empty() {
        json["endpoints"] = target::endpoints_json(&run.endpoints);
    }
    json
}

/// Connects per second to `addr`, one after the other: TCP, or TCP and a full TLS
/// handshake (session resumption off) with `tls`.
async fn connect_rate(addr: &str, tls: Option<&ClientTls>) -> Result<f64, Failure> {
    let (done, elapsed) = match tls {
        Some(tls) => {
            tls.without_resumption()?
                .handshakes(addr, CONNECT_RATE_TIME, MAX_CONNECTS)
                .await?
        }
        None => {
            let start = tokio::time::Instant::now();
            let mut done = 0u64;
            while start.elapsed() < CONNECT_RATE_TIME && done < MAX_CONNECTS {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("{addr}: {e}"))?;
                drop(stream);
                done += 1;
            }
            (done, start.elapsed())
        }
    };
    Ok(done as f64 / elapsed.as_secs_f64())
}

fn bench_report(args: &BenchArgs, run: &BenchRun) -> CmdResult {
    print_report(&run.load, false);
    print_endpoints(&run.endpoints);
    if let Some(accepted) = run.accepted {
        outln!("server: {accepted} connections accepted");
    }
    let report = &run.load.report;
    if args.json {
        outln!("{}", run_json(run));
    }
    Ok(if report.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_decode(file: Option<PathBuf>) -> CmdResult {
    let input = match &file {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            buf
        }
    };
    if input.iter().all(u8::is_ascii_whitespace) {
        let from = file
            .as_ref()
            .map_or_else(|| "stdin".to_string(), |path| path.display().to_string());
        return Err(Failure::usage(format!(
            "decode: {from} is empty: give a capture (binary or hex) as a file or on stdin"
        )));
    }
    let bytes = decode::parse_input(&input)?;
    let summary = decode::describe(&bytes);
    out!("{}", summary.text);
    if summary.problems > 0 {
        eprintln!(
            "mcp: {} damaged or malformed frame(s) among {} frame(s)",
            summary.problems,
            summary.frames + summary.problems
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    msg: String,
    n: u32,
}

async fn demo(duration: Duration, tls: bool) -> CmdResult {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("demo: {what}: {e}");
    let (server_tls, client_tls) = if tls {
        let (server, client) = mcp_cli::tls::generate()?;
        (Some(server), Some(client))
    } else {
        (None, None)
    };
    let with_tls = |builder: mcp_client::ClientBuilder<Json>| match &client_tls {
        Some(tls) => tls.apply(builder),
        None => builder,
    };
    let server = service::start_with_tls(
        ([127, 0, 0, 1], 0).into(),
        Duration::from_millis(500),
        ServerConfig::default(),
        server_tls.as_ref(),
    )
    .await
    .map_err(|e| fail("cannot start the server", &e))?;
    let addr = server.local_addr();
    if tls {
        outln!(
            "1. server listening on {addr} over TLS (in this process; a CA and a certificate for localhost and 127.0.0.1 made in memory)"
        );
    } else {
        outln!("1. server listening on {addr} (in this process)");
    }

    let client = with_tls(Client::builder(addr.to_string()))
        .connect()
        .await
        .map_err(|e| fail("cannot connect", &e))?;
    outln!(
        "2. client connected{}",
        if tls { " (TLS, ALPN mcp/1)" } else { "" }
    );

    let echo: Echo = client
        .call(
            "echo",
            &Echo {
                msg: "hello, mcp".into(),
                n: 42,
            },
        )
        .await
        .map_err(|e| fail("echo", &e))?;
    outln!("3. JSON     echo        -> {echo:?}");

    // The user rpcs go through the client generated from `UserService` in user.proto: the
    // same connection, one stub per format.
    let users = UserServiceClient::new(client.clone());
    let ada = UserUpdate::sample();
    let stored = users
        .update(&ada)
        .await
        .map_err(|e| fail("user.update (JSON)", &e))?;
    outln!("   JSON     user.update -> {stored:?}");

    let proto = UserServiceClient::new(client.with_format(Protobuf));
    let grace = UserUpdate {
        user_id: "u-1906".into(),
        name: "Grace Hopper".into(),
        age: Some(85),
    };
    proto
        .update(&grace)
        .await
        .map_err(|e| fail("user.update (Protobuf)", &e))?;
    let query = GetUser {
        user_id: "u-1906".into(),
    };
    let got = proto
        .get(&query)
        .await
        .map_err(|e| fail("user.get (Protobuf)", &e))?;
    outln!("4. Protobuf user.get    -> {got:?}");

    let missing = GetUser {
        user_id: "u-0".into(),
    };
    match proto.get(&missing).await {
        Err(e) if e.remote().is_some() => {
            outln!(
                "   Protobuf user.get    -> application error, as expected: {}",
                text::one_line(&e.to_string())
            )
        }
        other => {
            return Err(format!("demo: user.get of an unknown user answered {other:?}").into());
        }
    }

    let mut ticks = client
        .with_format(Json)
        .subscribe::<serde_json::Value>(service::TICKER)
        .await
        .map_err(|e| fail("subscribe", &e))?;
    for i in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), ticks.next()).await {
            Ok(Some(Ok(tick))) => outln!("5. push {} on {:?}: {tick}", i + 1, service::TICKER),
            Ok(Some(Err(e))) => return Err(fail("push", &e).into()),
            Ok(None) => return Err("demo: the subscription ended".to_string().into()),
            Err(_) => return Err("demo: no push within 5 s".to_string().into()),
        }
    }
    drop(ticks);

    outln!(
        "6. benchmark: echo, 64 B bodies, 64 calls in flight on one connection, {}",
        humantime::format_duration(duration)
    );
    let bench_client = with_tls(Client::builder(addr.to_string()))
        .max_connections(1)
        .connect()
        .await
        .map_err(|e| fail("cannot connect", &e))?;
    let config = LoadConfig {
        concurrency: 64,
        duration,
        rate: None,
        warmup: Duration::from_millis(300),
    };
    let load = load(
        AnyClient::One(bench_client.clone()),
        &config,
        64,
        std::io::stderr().is_terminal(),
    )
    .await;
    bench_client.close().await;
    print_report(&load, true);
    let report = &load.report;

    let metrics = client.metrics();
    outln!(
        "7. client metrics: {} calls, {} succeeded, {} retries, breaker {:?}",
        metrics.calls,
        metrics.succeeded,
        metrics.retries,
        metrics.breaker
    );
    client.close().await;
    server
        .shutdown(Duration::from_secs(2))
        .await
        .map_err(|e| fail("shutdown", &e))?;
    outln!("8. server shut down cleanly (GOAWAY)");
    if report.ok == 0 || report.error_count() > 0 {
        return Err(format!("demo: the benchmark had {} errors", report.error_count()).into());
    }
    Ok(ExitCode::SUCCESS)
}
