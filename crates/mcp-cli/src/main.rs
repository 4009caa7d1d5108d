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
use mcp_client::{
    BackoffConfig, CallOptions, Client, DefaultFormat, EndpointSnapshot, Error as CallError, Fleet,
    LimitConfig, MetricsSnapshot, PoolConfig, RawRequest, RawResponse,
};
use mcp_format::{FormatId, Json, Protobuf};
use mcp_proto::examples::v1::UserUpdate;
use serde::{Deserialize, Serialize};

use mcp_cli::loadgen::{self, LoadConfig, LoadReport, Progress};
use mcp_cli::text;
use mcp_cli::{decode, ping, service};
use mcp_server::ServerConfig;

mod args;

use args::Target;

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
    },
    /// Call METHOD on the server at ADDR and print the answer.
    Call {
        /// The server, host:port; several replicas comma-separated (a:1,b:2), or dns:host:port
        /// for every address of a name. A call goes to one of them.
        #[arg(value_parser = args::target)]
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
    },
    /// Send PINGs to ADDR and print round-trip times.
    /// Ask a server's health (`$health`, docs/protocol.md section 7): prints SERVING,
    /// NOT_SERVING or SERVICE_UNKNOWN. Exit code 0 when serving, 3 when not (or unknown),
    /// 1 when the server could not be asked.
    Health {
        /// The server, host:port.
        addr: String,
        /// The service (the server as a whole when left out).
        #[arg(default_value = "")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = args::positive_duration)]
        timeout: Duration,
    },
    Ping {
        /// The server, host:port; several comma-separated, or dns:host:port for every
        /// address of a name: each is pinged in turn.
        #[arg(value_parser = args::target)]
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
    },
    /// Load-test the `echo` method of ADDR (or of an embedded server with --embedded).
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
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The server, host:port; several replicas comma-separated, or dns:host:port (omit
    /// with --embedded). With more than one, the report shows each one's share.
    #[arg(required_unless_present = "embedded", value_parser = args::target)]
    addr: Option<Target>,
    /// Start the server in this process on a free loopback port.
    #[arg(long)]
    embedded: bool,
    /// With --embedded: this many servers, on 127.0.0.1, 127.0.0.2, ..., called as one
    /// fleet (with 1, the plain one-endpoint client).
    #[arg(long, default_value = "1", value_parser = args::replicas, requires = "embedded")]
    replicas: u8,
    /// With --embedded: call through the fleet transport (the balancer) even with one
    /// replica, to measure what the balancer itself costs.
    #[arg(long, requires = "embedded")]
    fleet: bool,
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
    /// Connections the client may open.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    CurrentThread,
    MultiThread,
}

/// Connections for a one-shot command: a refused connect is the answer, not something to
/// retry with backoff until the budget runs out (a long-lived client waits for the server).
fn one_shot_pool() -> PoolConfig {
    PoolConfig {
        backoff: BackoffConfig {
            max_tries: 1,
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    }
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
            } => serve(addr, tick, max_connection_age).await,
            Command::Call {
                addr,
                method,
                json,
                raw,
                hex,
                format,
                meta,
                timeout,
            } => call(addr, method, json, raw, hex, format, meta, timeout).await,
            Command::Ping {
                addr,
                count,
                interval,
                wait,
            } => run_ping(addr, count, interval, wait).await,
            Command::Health {
                addr,
                service,
                timeout,
            } => health(addr, service, timeout).await,
            Command::Bench(args) => bench(args).await,
            Command::Decode { file } => run_decode(file),
            Command::Demo { duration } => demo(duration).await,
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

/// A client of one endpoint or of a fleet: the two are distinct types (the one-endpoint
/// client keeps its static path), so the commands that take either hold this.
#[derive(Clone)]
enum AnyClient {
    One(Client),
    Fleet(Client<DefaultFormat, Fleet>),
}

impl AnyClient {
    /// A client of `target`, configured by `tune` (the same settings either way).
    async fn connect(
        target: &Target,
        tune: impl Fn(
            mcp_client::ClientBuilder<DefaultFormat, Fleet>,
        ) -> mcp_client::ClientBuilder<DefaultFormat, Fleet>,
        tune_one: impl FnOnce(
            mcp_client::ClientBuilder<DefaultFormat>,
        ) -> mcp_client::ClientBuilder<DefaultFormat>,
    ) -> Result<AnyClient, Failure> {
        let connected = match target {
            Target::One(addr) => tune_one(Client::builder(addr))
                .connect()
                .await
                .map(Self::One),
            Target::Many(addrs) => tune(Client::fleet(addrs.iter()))
                .connect()
                .await
                .map(Self::Fleet),
            Target::Dns(name) => tune(Client::dns(name.clone()))
                .wait_for_ready(true)
                .connect()
                .await
                .map(Self::Fleet),
        };
        connected.map_err(|e| Failure::from(format!("{target}: {e}")))
    }

    async fn call_raw(&self, request: RawRequest) -> Result<RawResponse, CallError> {
        match self {
            Self::One(c) => c.call_raw(request).await,
            Self::Fleet(c) => c.call_raw(request).await,
        }
    }

    async fn close(&self) {
        match self {
            Self::One(c) => drop(c.close().await),
            Self::Fleet(c) => drop(c.close().await),
        }
    }

    fn metrics(&self) -> MetricsSnapshot {
        match self {
            Self::One(c) => c.metrics(),
            Self::Fleet(c) => c.metrics(),
        }
    }
}

/// A client for one command: connected (or the reason why not, at once), one connect try
/// per endpoint.
async fn one_shot_client(target: &Target, timeout: Duration) -> Result<AnyClient, Failure> {
    AnyClient::connect(
        target,
        |b| b.timeout(timeout).pool_config(one_shot_pool()),
        |b| b.timeout(timeout).pool_config(one_shot_pool()),
    )
    .await
}

/// The exit code of `mcp health` for a server or service that does not serve.
const NOT_SERVING: u8 = 3;

async fn health(addr: String, service: String, timeout: Duration) -> CmdResult {
    if service.len() > 255 {
        return Err(Failure::usage(
            "health: a service name is at most 255 bytes",
        ));
    }
    let client = one_shot_client(&Target::One(addr), timeout).await?;
    let request = RawRequest::new("$health", FormatId::RAW, Bytes::from(service.into_bytes()))
        .with_options(CallOptions::new().timeout(timeout));
    let result = client.call_raw(request).await;
    client.close().await;
    let response = result.map_err(|e| e.to_string())?;
    let word = String::from_utf8_lossy(response.body());
    outln!("{}", text::one_line(&word));
    Ok(if word == "SERVING" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_SERVING)
    })
}

async fn serve(addr: SocketAddr, tick: Duration, max_age: Option<Duration>) -> CmdResult {
    let mut config = ServerConfig::default();
    config.max_connection_age = max_age;
    let server = service::start_with_config(addr, tick, config)
        .await
        .map_err(|e| e.to_string())?;
    outln!(
        "mcp: serving on {} ({}; topic {} every {}); Ctrl-C stops",
        server.local_addr(),
        service::METHODS.join(", "),
        service::TICKER,
        humantime::format_duration(tick)
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    outln!("mcp: shutting down (GOAWAY, answering requests in flight)");
    server
        .shutdown(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
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
    let client = one_shot_client(&addr, timeout).await?;
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

/// PINGs each endpoint of `target` in turn: a list's every address, a DNS name's every
/// address; fails if any PING was lost.
async fn run_ping(target: Target, count: u32, interval: Duration, wait: Duration) -> CmdResult {
    let mut endpoints = Vec::new();
    match &target {
        Target::One(addr) => endpoints.push((addr.clone(), resolve_one(addr).await?)),
        Target::Many(addrs) => {
            for addr in addrs {
                endpoints.push((addr.clone(), resolve_one(addr).await?));
            }
        }
        Target::Dns(name) => {
            let all: Vec<SocketAddr> = tokio::net::lookup_host(name)
                .await
                .map_err(|e| format!("cannot resolve {name}: {e}"))?
                .collect();
            if all.is_empty() {
                return Err(format!("{name} resolves to no address").into());
            }
            endpoints.extend(all.into_iter().map(|a| (a.to_string(), a)));
        }
    }
    let several = endpoints.len() > 1;
    let mut lost = 0;
    for (addr, socket) in endpoints {
        match ping_one(&addr, socket, count, interval, wait).await {
            Ok(n) => lost += n,
            // One endpoint that cannot be reached is that endpoint's answer; the others
            // are still pinged.
            Err(e) if several => {
                eprintln!("mcp: {addr}: {}", e.message);
                lost += count;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn resolve_one(addr: &str) -> Result<SocketAddr, Failure> {
    Ok(tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?)
}

/// PINGs one endpoint; returns how many PINGs were lost.
async fn ping_one(
    addr: &str,
    target: SocketAddr,
    count: u32,
    interval: Duration,
    wait: Duration,
) -> Result<u32, Failure> {
    outln!("PING {addr} ({target}): {count} PINGs");
    let stats = ping::run(target, count, interval, wait, |seq, rtt| match rtt {
        Some(us) => outln!("PONG from {target}: seq={seq} time={:.1} us", us),
        None => outln!(
            "no PONG for seq={seq} within {}",
            humantime::format_duration(wait)
        ),
    })
    .await?;
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
/// Runs the load generator against `echo` through `call` (a client's `call_raw`). Generic
/// rather than over [`AnyClient`], so that each kind of client's call future is measured
/// at its own size, not at the larger of the two.
async fn load<C, Fut>(call: C, config: &LoadConfig, size: usize, live: bool) -> Load
where
    C: Fn(RawRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<RawResponse, CallError>> + Send + 'static,
{
    let first_error = Arc::new(std::sync::OnceLock::new());
    let first = Arc::clone(&first_error);
    let body = Bytes::from(vec![0x5a; size]);
    let progress = Arc::new(Progress::default());
    let total = config.warmup + config.duration;
    let printer = tokio::spawn(print_progress(Arc::clone(&progress), total, live));
    let report = loadgen::run(config, Arc::clone(&progress), move || {
        let request = RawRequest::new("echo", FormatId::RAW, body.clone());
        let first = Arc::clone(&first);
        // The call's future is made inside this one, not moved into it: it is large, and
        // a move is a copy on every call.
        let call = call.clone();
        async move {
            match call(request).await {
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

async fn bench(args: BenchArgs) -> CmdResult {
    let mut servers = Vec::new();
    let target = match (&args.addr, args.embedded) {
        (_, true) => {
            let mut addrs = Vec::new();
            for n in 0..args.replicas {
                let mut config = ServerConfig::default();
                config.max_connection_age = args.max_connection_age;
                // Distinct loopback addresses, as distinct hosts: 127.0.0.1, .2, ...
                let handle = service::start_with_config(
                    ([127, 0, 0, 1 + n], 0).into(),
                    Duration::from_secs(1),
                    config,
                )
                .await
                .map_err(|e| e.to_string())?;
                addrs.push(handle.local_addr().to_string());
                servers.push(handle);
            }
            if addrs.len() == 1 && !args.fleet {
                Target::One(addrs.remove(0))
            } else {
                Target::Many(addrs)
            }
        }
        (Some(target), false) => target.clone(),
        (None, false) => return Err(Failure::usage("give ADDR or --embedded")),
    };
    let limit = LimitConfig::new(args.concurrency);
    let connections = args.connections;
    let client = AnyClient::connect(
        &target,
        |b| b.max_connections(connections).limit(limit.clone()),
        |b| b.max_connections(connections).limit(limit.clone()),
    )
    .await?;
    let addr = target.to_string();
    let config = LoadConfig {
        concurrency: args.concurrency,
        duration: args.duration,
        rate: args.rate,
        warmup: args.warmup,
    };
    eprintln!(
        "bench: {} echo, {} B bodies, {} {}, {} connection(s), {}",
        addr,
        args.size,
        config.concurrency,
        match config.rate {
            Some(r) => format!("workers at {r} calls/s (open loop)"),
            None => "in flight (closed loop)".to_string(),
        },
        args.connections,
        humantime::format_duration(args.duration),
    );
    let live = std::io::stderr().is_terminal();
    let load = match client.clone() {
        AnyClient::One(c) => {
            let call = move |r| {
                let c = c.clone();
                async move { c.call_raw(r).await }
            };
            load(call, &config, args.size, live).await
        }
        AnyClient::Fleet(c) => {
            let call = move |r| {
                let c = c.clone();
                async move { c.call_raw(r).await }
            };
            load(call, &config, args.size, live).await
        }
    };
    let endpoints = client.metrics().endpoints;
    client.close().await;
    let accepted: Option<u64> = (!servers.is_empty()).then(|| {
        servers
            .iter()
            .map(|server| server.server().stats().accepted_connections)
            .sum()
    });
    for server in servers {
        let _ = server.shutdown(Duration::from_secs(1)).await;
    }
    print_report(&load, false);
    print_endpoints(&endpoints);
    if let Some(accepted) = accepted {
        outln!("server: {accepted} connections accepted");
    }
    let report = &load.report;
    if args.json {
        outln!("{}", report.to_json());
    }
    Ok(if report.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A fleet's share per endpoint: attempts sent (warm-up included) and the balancer's
/// latency estimate (peak EWMA) at the end.
fn print_endpoints(endpoints: &[EndpointSnapshot]) {
    let total: u64 = endpoints.iter().map(|e| e.attempts).sum();
    for e in endpoints {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * e.attempts as f64 / total as f64
        };
        let ewma = e.ewma.map_or_else(
            || "-".to_string(),
            |d| format!("{:.1} us", d.as_secs_f64() * 1e6),
        );
        outln!(
            "endpoint {}: {share:.1}% of attempts ({}), ewma {ewma}, {} failed, {}, {} ejection(s)",
            e.addr,
            e.attempts,
            e.failures,
            e.state.name(),
            e.ejections
        );
    }
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

async fn demo(duration: Duration) -> CmdResult {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("demo: {what}: {e}");
    let server = service::start(([127, 0, 0, 1], 0).into(), Duration::from_millis(500))
        .await
        .map_err(|e| fail("cannot start the server", &e))?;
    let addr = server.local_addr();
    outln!("1. server listening on {addr} (in this process)");

    let client = Client::builder(addr.to_string())
        .connect()
        .await
        .map_err(|e| fail("cannot connect", &e))?;
    outln!("2. client connected");

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

    let ada = UserUpdate::sample();
    let stored: UserUpdate = client
        .call("user.update", &ada)
        .await
        .map_err(|e| fail("user.update (JSON)", &e))?;
    outln!("   JSON     user.update -> {stored:?}");

    let proto = client.with_format(Protobuf);
    let grace = UserUpdate {
        user_id: "u-1906".into(),
        name: "Grace Hopper".into(),
        age: Some(85),
    };
    let _: UserUpdate = proto
        .call("user.update", &grace)
        .await
        .map_err(|e| fail("user.update (Protobuf)", &e))?;
    let query = UserUpdate {
        user_id: "u-1906".into(),
        ..Default::default()
    };
    let got: UserUpdate = proto
        .call("user.get", &query)
        .await
        .map_err(|e| fail("user.get (Protobuf)", &e))?;
    outln!("4. Protobuf user.get    -> {got:?}");

    let missing = UserUpdate {
        user_id: "u-0".into(),
        ..Default::default()
    };
    match proto.call::<_, UserUpdate>("user.get", &missing).await {
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
    let bench_client = Client::builder(addr.to_string())
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
    let caller = bench_client.clone();
    let load = load(
        move |r| {
            let c = caller.clone();
            async move { c.call_raw(r).await }
        },
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
