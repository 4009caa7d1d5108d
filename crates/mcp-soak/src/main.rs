//! `mcp-soak`: the real client against the real server, for long, through faults.
//!
//! `mcp-soak run` starts the server as a child process (`mcp-soak serve`, so that each
//! side's memory is its own), puts a fault proxy between them, and makes calls with a fixed
//! number in flight until `--calls` are made or `--seconds` pass. Faults: 1% of calls ask the
//! server to take longer than their timeout, every connection is reset every
//! `--reset-every`, and the server is restarted once, halfway. Every call's outcome is then
//! held against the server's log of the calls it ran (see `mcp_soak::Ledger`), the
//! client's tables must be empty, and the memory of both processes is reported. The exit
//! status is 0 only if every guarantee held. `cargo xtask soak` builds and runs it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use mcp_client::{CallOptions, Client, ErrorKind, FormatId, RawRequest};
use mcp_server::{Reply, Server, ServerBuilder, Status};
use mcp_soak::{CallRecord, Ledger, Outcome, outcome_table, rss_kib};
use mcp_test_support::fault_proxy::FaultProxy;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Semaphore;

/// A call's whole budget; a slowed call asks the server for longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a slowed call's handler takes.
const SLOW: Duration = Duration::from_secs(3);
/// How long a failed call keeps its place before the next call takes it, so that a
/// server that is down is not met with a tight loop of failing calls.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(20);
/// How long the end of the run waits for the calls still out (their budget is 2 s).
const DRAIN: Duration = Duration::from_secs(30);
/// How long a server gets to start, or to stop.
const CHILD_STEP: Duration = Duration::from_secs(15);

/// How far above its start a process's resident memory may end, once every connection is
/// gone and the allocator has given its free pages back (the client's own outcome ledger
/// aside): more says memory held for a peer did not come back.
const RSS_SLACK_KIB: u64 = 16 * 1024;

#[derive(Parser)]
#[command(name = "mcp-soak", about = "The soak run of mcp-rs")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the soak (starts its own server).
    Run {
        /// Calls to make (the run ends at this many, or at --seconds).
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 1000)]
        in_flight: usize,
        /// End the run after this many seconds even if fewer calls were made.
        #[arg(long)]
        seconds: Option<u64>,
        /// Reset every connection this often (seconds).
        #[arg(long, default_value_t = 10)]
        reset_every: u64,
    },
    /// The client side of `cargo xtask chaos` (run as root inside its own network
    /// namespace, whose packets it drops with nftables): packet loss, then a true half-open
    /// connection.
    Chaos {
        /// The server's address (in the other namespace).
        #[arg(long)]
        server: String,
        /// Heartbeat interval and timeout, in milliseconds each.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Share of packets dropped each way in the loss phase, in percent.
        #[arg(long, default_value_t = 5)]
        loss: u32,
        /// Length of the loss phase, in seconds.
        #[arg(long, default_value_t = 10)]
        loss_seconds: u64,
    },
    /// The server side (started by `run`; reads `stop` on stdin).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: String,
        /// File the ids of the calls run are appended to (8 bytes each, little-endian).
        #[arg(long)]
        log: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mcp-soak: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Cmd::Run {
            calls,
            in_flight,
            seconds,
            reset_every,
        } => {
            if in_flight == 0 || calls == 0 || seconds == Some(0) || reset_every == 0 {
                eprintln!(
                    "mcp-soak: --calls, --in-flight, --seconds and --reset-every must be > 0"
                );
                return ExitCode::from(2);
            }
            let plan = Plan {
                calls,
                in_flight,
                seconds: seconds.map(Duration::from_secs),
                reset_every: Duration::from_secs(reset_every),
            };
            runtime.block_on(run(plan))
        }
        Cmd::Serve { addr, log } => runtime.block_on(serve(&addr, &log)),
        Cmd::Chaos {
            server,
            heartbeat_ms,
            loss,
            loss_seconds,
        } => {
            if heartbeat_ms == 0 || loss > 100 || loss_seconds == 0 {
                eprintln!(
                    "mcp-soak: --heartbeat-ms and --loss-seconds must be > 0, --loss at most 100"
                );
                return ExitCode::from(2);
            }
            let chaos = chaos::Chaos {
                server,
                heartbeat: Duration::from_millis(heartbeat_ms),
                loss,
                loss_for: Duration::from_secs(loss_seconds),
            };
            runtime.block_on(chaos.run())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mcp-soak: {err}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

mod chaos;

/// The server: `work` logs the call's id (its body's first 8 bytes) when it starts, sleeps
/// past the call's timeout if the ninth byte asks, and echoes the body.
async fn serve(addr: &str, log_path: &Path) -> Result {
    let file = std::fs::File::create(log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log: Log = Arc::new(Mutex::new(std::io::BufWriter::new(file)));
    // The port of a server that just stopped may take a moment to be free again.
    let mut tries = 0;
    let handle = loop {
        match routes(log.clone()).bind(addr).await {
            Ok(handle) => break handle,
            Err(err) if tries < 50 => {
                tries += 1;
                let _ = err;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(format!("cannot listen on {addr}: {err}")),
        }
    };
    let (rss, _) = rss_kib().unwrap_or_default();
    // The reader may be gone (the run ended): nothing to say then, and no reason to panic.
    let _ = writeln!(
        std::io::stdout(),
        "listening {} rss_kib={rss}",
        handle.local_addr()
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // `stop`, or the end of stdin (the run went away), ends the server.
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "stop" {
            break;
        }
    }
    let shutdown = handle
        .shutdown(Duration::from_secs(SLOW.as_secs() + 1))
        .await;
    let stats = handle.stats();
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush()
        .map_err(|e| format!("log: {e}"))?;
    let (rss, hwm) = rss_kib().unwrap_or_default();
    // What is left once the allocator gives back the pages the connections freed.
    mcp_cli::memory::release_free_memory();
    let (trimmed, _) = rss_kib().unwrap_or_default();
    let _ = writeln!(
        std::io::stdout(),
        "done requests={} connections={} open={} rss_kib={rss} hwm_kib={hwm} trimmed_kib={trimmed} shutdown={}",
        stats.requests,
        stats.accepted_connections,
        stats.open_connections,
        if shutdown.is_ok() { "clean" } else { "forced" },
    );
    Ok(())
}

type Log = Arc<Mutex<std::io::BufWriter<std::fs::File>>>;

/// The server's one method, `work`.
fn routes(log: Log) -> ServerBuilder {
    Server::builder().route_raw("work", move |_ctx, body: Bytes| {
        let logged = match body.get(..9) {
            Some(head) => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&head[..8]);
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.write_all(&id).map(|()| head[8] == 1)
            }
            None => Ok(false),
        };
        async move {
            match logged {
                Ok(true) => tokio::time::sleep(SLOW).await,
                Ok(false) if body.len() < 9 => return Err(Status::malformed("short body")),
                Ok(false) => {}
                Err(err) => return Err(Status::internal(format!("log: {err}"))),
            }
            Ok(Reply::new(body))
        }
    })
}

struct Plan {
    calls: u64,
    in_flight: usize,
    seconds: Option<Duration>,
    reset_every: Duration,
}

/// A server child: its stdin (to stop it), its stdout lines, its log.
struct ServerChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    log: PathBuf,
    addr: std::net::SocketAddr,
    start_rss: String,
}

impl ServerChild {
    async fn start(addr: &str, log: PathBuf) -> Result<ServerChild> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let mut child = Command::new(exe)
            .args(["serve", "--addr", addr, "--log"])
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(CHILD_STEP, lines.next_line())
            .await
            .map_err(|_| "the server did not start in time".to_string())?
            .map_err(|e| format!("the server's stdout: {e}"))?
            .ok_or("the server exited before listening")?;
        let mut words = first.split_whitespace();
        let (Some("listening"), Some(bound), Some(rss)) =
            (words.next(), words.next(), words.next())
        else {
            return Err(format!("the server said {first:?}"));
        };
        let addr = bound.parse().map_err(|e| format!("{bound:?}: {e}"))?;
        Ok(ServerChild {
            child,
            stdin,
            lines,
            log,
            addr,
            start_rss: rss.to_string(),
        })
    }

    /// Stops the server gracefully and answers its last report line.
    async fn stop(mut self) -> Result<(PathBuf, String)> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
        }
        let report = tokio::time::timeout(CHILD_STEP, self.lines.next_line())
            .await
            .map_err(|_| "the server did not stop in time".to_string())?
            .map_err(|e| format!("the server's stdout: {e}"))?
            .unwrap_or_else(|| "exited without a report".into());
        let status = tokio::time::timeout(CHILD_STEP, self.child.wait())
            .await
            .map_err(|_| "the server did not exit in time".to_string())?
            .map_err(|e| format!("waiting for the server: {e}"))?;
        if !status.success() {
            return Err(format!("the server exited with {status}"));
        }
        Ok((self.log, format!("{} at start, {report}", self.start_rss)))
    }
}

/// The `name=` figure of a report line.
fn figure(report: &str, name: &str) -> Option<u64> {
    report
        .split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// A server's resident memory at start and after its last connection, trimmed, from its
/// report; a problem if it did not come back within [`RSS_SLACK_KIB`].
fn server_memory_back(report: &str) -> std::result::Result<(), String> {
    // The line starts with the figure the server gave when it began listening.
    let start = report
        .split_whitespace()
        .next()
        .and_then(|w| figure(w, "rss_kib"));
    match (start, figure(report, "trimmed_kib")) {
        (Some(start), Some(end)) if end <= start + RSS_SLACK_KIB => Ok(()),
        (Some(start), Some(end)) => Err(format!(
            "the server's memory did not come back: {start} KiB at start, {end} KiB once idle and trimmed"
        )),
        _ => Err(format!(
            "the server's report has no memory figures: {report}"
        )),
    }
}

async fn run(plan: Plan) -> Result {
    let dir = std::env::temp_dir().join(format!("mcp-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (base_rss, _) = rss_kib().unwrap_or_default();

    let first = ServerChild::start("127.0.0.1:0", dir.join("server-1.log")).await?;
    let server_addr = first.addr;
    let proxy = FaultProxy::start_on("127.0.0.1:0".parse().map_err(|_| "addr")?, server_addr)
        .await
        .map_err(|e| format!("fault proxy: {e}"))?;
    let client = Client::builder(proxy.addr())
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let servers = Arc::new(tokio::sync::Mutex::new(vec![first]));
    let mut stopped = Vec::new();

    println!(
        "soak: {} calls (or {:?}), {} in flight, 1% slowed past their {CALL_TIMEOUT:?} timeout, \
         every connection reset every {:?}, one server restart",
        plan.calls, plan.seconds, plan.in_flight, plan.reset_every
    );
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let places = Arc::new(Semaphore::new(plan.in_flight));
    let started = Instant::now();
    let mut next_reset = started + plan.reset_every;
    let mut resets = 0u64;
    let mut restart: Option<tokio::task::JoinHandle<Result<(PathBuf, String)>>> = None;
    let mut issued = 0u64;
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let monitor = {
        let (progress, ledger, client) = (progress.clone(), ledger.clone(), client.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let recorded = ledger.lock().unwrap_or_else(|p| p.into_inner()).calls();
                let m = client.metrics();
                eprintln!(
                    "  {:>5.0} s: {} calls made, {recorded} ended, {} in flight, {} queued, {} connections ready",
                    started.elapsed().as_secs_f64(),
                    progress.load(std::sync::atomic::Ordering::Relaxed),
                    m.in_flight,
                    m.queued,
                    m.connections.ready,
                );
            }
        })
    };
    while issued < plan.calls && plan.seconds.is_none_or(|limit| started.elapsed() < limit) {
        let Ok(place) = places.clone().acquire_owned().await else {
            break;
        };
        let now = Instant::now();
        if now >= next_reset {
            proxy.reset_all();
            resets += 1;
            next_reset = now + plan.reset_every;
        }
        let halfway = issued >= plan.calls / 2
            || plan
                .seconds
                .is_some_and(|limit| started.elapsed() >= limit / 2);
        if restart.is_none() && halfway {
            let servers = servers.clone();
            let log = dir.join("server-2.log");
            restart = Some(tokio::spawn(async move {
                let mut servers = servers.lock().await;
                let old = servers.pop().ok_or("no server to restart")?;
                let addr = old.addr.to_string();
                let report = old.stop().await?;
                servers.push(ServerChild::start(&addr, log).await?);
                Ok(report)
            }));
        }
        let id = issued;
        issued += 1;
        progress.store(issued, std::sync::atomic::Ordering::Relaxed);
        let client = client.clone();
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let record = one_call(&client, id).await;
            let failed = !matches!(record.outcome, Outcome::Ok);
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(record);
            if failed {
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
            drop(place);
        });
    }
    let issuing = started.elapsed();
    monitor.abort();
    // Every call out must end within its budget: waiting for all the places back proves
    // that none hangs.
    let all = u32::try_from(plan.in_flight).map_err(|_| "--in-flight too large")?;
    let drained = tokio::time::timeout(DRAIN, places.acquire_many(all)).await;
    let elapsed = started.elapsed();
    let mut problems = Vec::new();
    if drained.is_err() {
        problems.push(format!("calls still out {DRAIN:?} after the last was made"));
    }
    let metrics = client.metrics();
    if metrics.in_flight != 0 || metrics.queued != 0 {
        problems.push(format!(
            "the client still holds {} calls in flight and {} queued",
            metrics.in_flight, metrics.queued
        ));
    }
    let left = client.close().await;
    if left != 0 {
        problems.push(format!("{left} calls were still open at close"));
    }
    drop(client);
    if let Some(restart) = restart {
        match restart.await {
            Ok(Ok(report)) => stopped.push(report),
            Ok(Err(err)) => problems.push(format!("the restart failed: {err}")),
            Err(err) => problems.push(format!("the restart task failed: {err}")),
        }
    }
    for server in servers.lock().await.drain(..) {
        match server.stop().await {
            Ok(report) => stopped.push(report),
            Err(err) => problems.push(format!("stopping the server: {err}")),
        }
    }
    proxy.shutdown().await;
    let (end_rss, peak_rss) = rss_kib().unwrap_or_default();
    mcp_cli::memory::release_free_memory();
    let (trimmed_rss, _) = rss_kib().unwrap_or_default();

    let mut ledger = Arc::try_unwrap(ledger)
        .map_err(|_| "a call task outlived the run")?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    for (log, _) in &stopped {
        let bytes = std::fs::read(log).map_err(|e| format!("{}: {e}", log.display()))?;
        for id in bytes.chunks_exact(8) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(id);
            ledger.ran(u64::from_le_bytes(raw));
        }
    }
    let verdict = ledger.check(issued);
    let _ = std::fs::remove_dir_all(&dir);

    let ledger_kib = (ledger.calls() * std::mem::size_of::<CallRecord>()) / 1024;
    println!(
        "calls: {issued} in {:.1} s ({:.0} calls/s; issuing took {:.1} s); server runs: {}, \
         calls run twice: {} (idempotent ones may)",
        elapsed.as_secs_f64(),
        issued as f64 / elapsed.as_secs_f64(),
        issuing.as_secs_f64(),
        verdict.runs,
        verdict.ran_twice
    );
    println!("outcomes:\n{}", outcome_table(&verdict));
    println!(
        "faults: {resets} resets of every connection, 1 server restart; client reconnects {}, \
         retries {} (denied {}), breaker opened {}",
        metrics.reconnects, metrics.retries, metrics.retries_denied, metrics.breaker_opened
    );
    println!(
        "client process RSS: {base_rss} KiB at start, {end_rss} KiB at the end, {trimmed_rss} KiB \
         trimmed (of which the ledger ~{ledger_kib} KiB), peak {peak_rss} KiB"
    );
    if trimmed_rss.saturating_sub(ledger_kib as u64) > base_rss + RSS_SLACK_KIB {
        problems.push(format!(
            "the client's memory did not come back: {base_rss} KiB at start, {trimmed_rss} KiB \
             at the end, trimmed, of which the ledger ~{ledger_kib} KiB"
        ));
    }
    for (i, (_, report)) in stopped.iter().enumerate() {
        println!("server {} RSS (KiB): {report}", i + 1);
        if let Err(problem) = server_memory_back(report) {
            problems.push(problem);
        }
    }
    for violation in &verdict.violations {
        problems.push(violation.clone());
    }
    if verdict.more_violations > 0 {
        problems.push(format!("... and {} more", verdict.more_violations));
    }
    if verdict.by_kind.get("ok").copied().unwrap_or(0) == 0 {
        problems.push("no call succeeded".into());
    }
    if problems.is_empty() {
        println!("soak: every guarantee held");
        Ok(())
    } else {
        for problem in &problems {
            println!("VIOLATION: {problem}");
        }
        Err(format!("{} guarantees broken", problems.len()))
    }
}

/// One call: id in the body's first 8 bytes, 1 in 100 asking to be slowed, every other
/// call idempotent.
async fn one_call(client: &Client, id: u64) -> CallRecord {
    let slow = id % 100 == 50;
    let idempotent = id % 2 == 0;
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&id.to_le_bytes());
    body.push(u8::from(slow));
    body.extend_from_slice(&[0xA5; 7]);
    let body = Bytes::from(body);
    let options = CallOptions::new()
        .timeout(CALL_TIMEOUT)
        .set_idempotent(idempotent);
    let request = RawRequest::new("work", FormatId::RAW, body.clone()).with_options(options);
    let outcome = match client.call_raw(request).await {
        Ok(response) if response.body() == &body => Outcome::Ok,
        Ok(_) => Outcome::WrongAnswer,
        Err(err) => Outcome::Failed {
            kind: kind_name(&err),
            maybe_processed: err.maybe_processed(),
        },
    };
    CallRecord {
        id,
        idempotent,
        outcome,
    }
}

fn kind_name(err: &mcp_client::Error) -> &'static str {
    match err.kind() {
        ErrorKind::Timeout => "Timeout",
        ErrorKind::Remote => match err.code().map(|c| c.0) {
            Some(4) => "ERROR 4",
            Some(5) => "ERROR 5",
            Some(6) => "ERROR 6",
            Some(8) => "ERROR 8",
            Some(9) => "ERROR 9",
            _ => "ERROR (other)",
        },
        ErrorKind::CircuitOpen => "CircuitOpen",
        ErrorKind::Overloaded => "Overloaded",
        ErrorKind::Closed => "Closed",
        ErrorKind::Connect => "Connect",
        ErrorKind::ConnectionLost => "ConnectionLost",
        ErrorKind::Protocol => "Protocol",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_report_is_read_for_its_memory() {
        let back = "rss_kib=4332 at start, done requests=5 connections=4 open=0 rss_kib=18292 \
                    hwm_kib=18292 trimmed_kib=5528 shutdown=clean";
        assert_eq!(server_memory_back(back), Ok(()));
        let kept = back.replace("trimmed_kib=5528", "trimmed_kib=40000");
        assert!(
            server_memory_back(&kept)
                .unwrap_err()
                .contains("did not come back")
        );
        let silent = "exited without a report";
        assert!(
            server_memory_back(silent)
                .unwrap_err()
                .contains("no memory figures")
        );
    }
}
