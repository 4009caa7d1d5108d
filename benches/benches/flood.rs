//! Connection floods against an embedded server: what an idle connection costs, and
//! whether the memory comes back once the flood is gone (issue 11, section 3).
//!
//! Each round opens `--connections` TCP connections to a server in this process, sends a
//! PING on each and reads its PONG (so every connection has read and written once), holds
//! them idle for `--hold` seconds, closes them all and waits until the server counts none
//! open. It prints, per round: the process's resident memory with the flood open, the heap
//! bytes live per idle connection (a counting global allocator: what the server holds for
//! it, the client's side is a plain socket), and the resident memory once the flood is gone.
//!
//! ```text
//! cargo bench -p mcp-benches --bench flood -- [--connections 5000] [--rounds 3]
//!     [--hold 2] [--trim]
//! ```
//!
//! `--trim` runs the server as `mcp serve` does: with `mcp_cli::memory::Trimmer`, which
//! gives the allocator's free memory back to the system once connections went away.
//! Without it, the figures show the server alone.
//!
//! Needs about two file descriptors per connection (`ulimit -n`; it raises nothing, and
//! opens fewer connections if the limit is lower, saying so).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_codec::{Envelope, Ping};
use mcp_server::{Reply, Server, ServerHandle};
use mcp_test_support::alloc::{self, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Args {
    connections: usize,
    rounds: usize,
    hold: Duration,
    trim: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connections: 5000,
        rounds: 3,
        hold: Duration::from_secs(2),
        trim: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--connections" => args.connections = value("--connections")? as usize,
            "--rounds" => args.rounds = value("--rounds")? as usize,
            "--hold" => args.hold = Duration::from_secs(value("--hold")?),
            "--trim" => args.trim = true,
            // `cargo bench` passes `--bench`; other harness flags mean nothing here.
            _ => {}
        }
    }
    if args.connections == 0 || args.rounds == 0 {
        return Err("--connections and --rounds must be at least 1".into());
    }
    Ok(args)
}

/// A line of /proc/self/status or /proc/self/limits, by its label.
fn proc_field(file: &str, label: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find(|line| line.starts_with(label))
        .map(|line| line[label.len()..].trim().to_owned())
}

/// Resident memory, in KiB.
fn rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmRSS:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ping_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    Envelope::Ping(Ping { nonce: [1; 8] })
        .encode_to_vec(&mut frame)
        .expect("a PING encodes");
    frame
}

/// Opens `n` connections, each with one PING answered: blocking sockets, one after the
/// other, so that the server's accept queue never overflows.
fn open(addr: SocketAddr, n: usize) -> std::io::Result<Vec<TcpStream>> {
    let ping = ping_frame();
    let mut pong = vec![0u8; ping.len()];
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&ping)?;
        stream.read_exact(&mut pong)?;
        streams.push(stream);
    }
    Ok(streams)
}

async fn wait_open(server: &ServerHandle, n: usize) -> Result<(), String> {
    let start = Instant::now();
    while server.stats().open_connections != n {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the server still counts {} connections open, not {n}",
                server.stats().open_connections
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    let server = Server::builder()
        .route_raw(
            "echo",
            |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
        )
        .max_connections(args.connections + 16)
        .bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    let _trimmer = args
        .trim
        .then(|| mcp_cli::memory::Trimmer::spawn(server.clone()));
    // One connection first, so that the baseline includes what the first one allocates
    // for good (the runtime's and the server's lazily made parts).
    let warm = tokio::task::spawn_blocking(move || open(addr, 1))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    drop(warm);
    wait_open(&server, 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_rss = rss_kib();
    let base_live = alloc::live();
    println!(
        "flood: {} connections x {} rounds, held {:?}, trimming {}",
        args.connections,
        args.rounds,
        args.hold,
        if args.trim { "on" } else { "off" }
    );
    println!(
        "baseline: RSS {}, heap live {} KiB",
        mib(base_rss),
        base_live / 1024
    );
    println!("round | RSS open   | heap per idle conn | RSS after close");
    for round in 1..=args.rounds {
        let n = args.connections;
        let opened = Instant::now();
        let streams = tokio::task::spawn_blocking(move || open(addr, n))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect: {e} (raise `ulimit -n`?)"))?;
        wait_open(&server, n).await?;
        let took = opened.elapsed();
        tokio::time::sleep(args.hold).await;
        let open_rss = rss_kib();
        let per_conn = (alloc::live() - base_live) / n as isize;
        drop(streams);
        wait_open(&server, 0).await?;
        // The connections' tasks end as the server counts them closed; the trimmer looks
        // once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        println!(
            "{round:5} | {:10} | {per_conn:12} bytes | {} (opened in {took:.2?})",
            mib(open_rss),
            mib(rss_kib())
        );
    }
    server
        .shutdown(Duration::from_secs(1))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("flood: {err}");
            std::process::exit(2);
        }
    };
    let mut args = args;
    if let Some(limit) = proc_field("/proc/self/limits", "Max open files") {
        println!("max open files (soft hard): {limit}");
        // Two descriptors per connection (both ends are in this process), and some spare.
        let soft: Option<usize> = limit.split_whitespace().next().and_then(|n| n.parse().ok());
        let fit = soft.map_or(usize::MAX, |soft| soft.saturating_sub(64) / 2);
        if fit < args.connections {
            println!(
                "only {fit} connections fit in `ulimit -n`; raise it for {}",
                args.connections
            );
            args.connections = fit.max(1);
        }
    }
    // Two workers, as `mcp serve` gets on the 2-core machine of BENCHMARKS.md.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(err) = runtime.block_on(run(args)) {
        eprintln!("flood: {err}");
        std::process::exit(1);
    }
}
