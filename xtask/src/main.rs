//! `cargo xtask`: the project's workflows, in Rust so they run wherever cargo does.
//!
//! Commands:
//! - `ci`: everything `.ci/run` checks (tests, clippy, fmt, docs, no-std, generated code,
//!   a 60 s soak, fuzz smoke).
//! - `no-std`: builds `mcp-codec` without default features, for the host and, when the
//!   target is installed, for `thumbv7em-none-eabihf`.
//! - `fuzz [--seconds N | --minutes N] [TARGET...]`: runs every fuzz target (or the named
//!   ones) for N seconds (or minutes) each with cargo-fuzz on the nightly toolchain.
//! - `soak [--calls N] [--in-flight N] [--seconds S] [--reset-every S]`: the soak run
//!   (`crates/mcp-soak`, built in release): the real client against the real server in a
//!   child process through faults, every outcome checked against the server's log.
//! - `chaos`: needs root, iproute2 and nftables (not run by CI): the soak server and a
//!   chaos client in two network namespaces joined by a veth pair; the client drops its
//!   own packets (loss, then a true half-open connection) and checks its deadlines and its
//!   dead-peer detection (`crates/mcp-soak/src/chaos.rs`).
//! - `codegen [--check]`: regenerates the committed Protobuf code (or checks it is current).
//! - `bench`: runs the criterion benchmarks.
//! - `flood [--connections N] [--rounds R] [--hold SECS] [--trim]`: the connection flood
//!   bench (`benches/benches/flood.rs`): heap per idle connection and resident memory after
//!   each flood, as BENCHMARKS.md section 7 reports them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const EMBEDDED_TARGET: &str = "thumbv7em-none-eabihf";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("no-std") => no_std(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("codegen") => codegen(args.iter().any(|a| a == "--check")),
        Some("soak") => soak(&args[1..]),
        Some("chaos") => chaos(),
        Some("bench") => run("cargo", &["bench", "-p", "mcp-benches"], &root()),
        Some("flood") => {
            let mut cargo = vec!["bench", "-p", "mcp-benches", "--bench", "flood", "--"];
            cargo.extend(args[1..].iter().map(String::as_str));
            run("cargo", &cargo, &root())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | no-std | fuzz [--seconds N | --minutes N] [TARGET...] | soak [--calls N] [--in-flight N] [--seconds S] [--reset-every S] | chaos | codegen [--check] | bench | flood [ARGS]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    // xtask/ sits directly below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(program: &str, args: &[&str], dir: &Path) -> Result {
    run_env(program, args, dir, &[])
}

fn run_env(program: &str, args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> Result {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("could not start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed: {status}", args.join(" ")))
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ci() -> Result {
    let root = root();
    // The README's test command, word for word.
    run("cargo", &["test", "--workspace"], &root)?;
    // The metrics and opentelemetry features are off by default; their tests (Prometheus,
    // OpenTelemetry) are their own binaries.
    run(
        "cargo",
        &[
            "test",
            "-p",
            "mcp-client",
            "--features",
            "metrics,opentelemetry",
            "--test",
            "prometheus",
            "--test",
            "tracing_spans",
            "--test",
            "opentelemetry",
        ],
        &root,
    )?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &root,
    )?;
    run("cargo", &["fmt", "--all", "--", "--check"], &root)?;
    run_env(
        "cargo",
        &["doc", "--workspace", "--no-deps"],
        &root,
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    no_std()?;
    codegen(true)?;
    soak(&["--seconds".into(), "60".into()])?;
    fuzz(&["--seconds".into(), "10".into()])
}

fn no_std() -> Result {
    let root = root();
    let base = ["build", "-p", "mcp-codec", "--no-default-features"];
    run("cargo", &base, &root)?;
    let installed = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed.lines().any(|t| t.trim() == EMBEDDED_TARGET) {
        let mut args = base.to_vec();
        args.extend(["--target", EMBEDDED_TARGET]);
        run("cargo", &args, &root)?;
    } else {
        eprintln!(
            "xtask no-std: target {EMBEDDED_TARGET} is not installed; built for the host only \
             (install it with `rustup target add {EMBEDDED_TARGET}`)"
        );
    }
    Ok(())
}

/// Why fuzzing cannot run here, or `None` when it can.
fn fuzz_missing() -> Option<String> {
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|t| t.starts_with("nightly")) {
        return Some(
            "no nightly toolchain (cargo-fuzz needs one: `rustup toolchain install nightly`)"
                .into(),
        );
    }
    if output("cargo", &["+nightly", "fuzz", "--version"]).is_none() {
        return Some("cargo-fuzz is not installed (`cargo install cargo-fuzz`)".into());
    }
    None
}

fn fuzz_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let list = output_in("cargo", &["+nightly", "fuzz", "list"], fuzz_dir)
        .ok_or("`cargo fuzz list` failed")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn output_in(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fuzz(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--seconds" || arg == "--minutes" {
            let value = it.next().ok_or(format!("{arg} needs a number"))?;
            let n: u64 = value
                .parse()
                .map_err(|_| format!("{arg} takes a whole number, not {value:?}"))?;
            seconds = if arg == "--minutes" {
                n.saturating_mul(60)
            } else {
                n
            };
        } else {
            targets.push(arg.clone());
        }
    }
    if let Some(missing) = fuzz_missing() {
        eprintln!("xtask fuzz: SKIPPED, fuzzing cannot run here: {missing}");
        return Ok(());
    }
    let fuzz_dir = root().join("fuzz");
    if targets.is_empty() {
        targets = fuzz_targets(&fuzz_dir)?;
    }
    let max_time = format!("-max_total_time={seconds}");
    for target in &targets {
        // Run on a scratch copy of the committed seeds so the fuzzer's finds do not pile up
        // in the work tree; crashes still land in fuzz/artifacts/.
        let seeds = fuzz_dir.join("corpus").join(target);
        let scratch = env::temp_dir().join(format!("mcp-fuzz-corpus-{target}"));
        let _ = std::fs::create_dir_all(&scratch);
        let seeds_arg = seeds.to_string_lossy().into_owned();
        let scratch_arg = scratch.to_string_lossy().into_owned();
        run(
            "cargo",
            &[
                "+nightly",
                "fuzz",
                "run",
                target,
                &scratch_arg,
                &seeds_arg,
                "--",
                &max_time,
                "-rss_limit_mb=2048",
            ],
            &fuzz_dir,
        )?;
    }
    Ok(())
}

fn codegen(check: bool) -> Result {
    let root = root();
    let mut envs = vec![];
    if !check {
        envs.push(("MCP_CODEGEN_WRITE", "1"));
    }
    run_env(
        "cargo",
        &["test", "-p", "mcp-proto", "--test", "codegen"],
        &root,
        &envs,
    )
}

/// Builds the soak run in release and runs it with `args` (checked by the soak itself).
fn soak(args: &[String]) -> Result {
    let mut cargo_args = vec!["run", "--release", "-q", "-p", "mcp-soak", "--", "run"];
    cargo_args.extend(args.iter().map(String::as_str));
    run("cargo", &cargo_args, &root())
}

/// The namespaces of `cargo xtask chaos`: the client's and the server's, a veth pair between.
const CHAOS_NS: [(&str, &str, &str); 2] = [
    ("mcp-chaos-c", "mcp-chaos-vc", "10.77.0.1/24"),
    ("mcp-chaos-s", "mcp-chaos-vs", "10.77.0.2/24"),
];
const CHAOS_SERVER: &str = "10.77.0.2:7450";

fn chaos() -> Result {
    let root_user = output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0");
    let tools = output("ip", &["-V"]).is_some() && output("nft", &["--version"]).is_some();
    if !root_user || !tools {
        return Err(
            "chaos needs root, `ip` (iproute2) and `nft` (nftables): it makes network \
             namespaces and drops packets in them"
                .into(),
        );
    }
    let root = root();
    run(
        "cargo",
        &["build", "--release", "-q", "-p", "mcp-soak"],
        &root,
    )?;
    let exe = root.join("target/release/mcp-soak");
    let exe = exe.to_str().ok_or("the target path is not UTF-8")?;
    chaos_down();
    let result = chaos_up().and_then(|()| chaos_run(exe));
    chaos_down();
    result
}

fn chaos_up() -> Result {
    let root = root();
    let (client, server) = (CHAOS_NS[0], CHAOS_NS[1]);
    for (ns, _, _) in CHAOS_NS {
        run("ip", &["netns", "add", ns], &root)?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"], &root)?;
    }
    run(
        "ip",
        &[
            "link", "add", client.1, "type", "veth", "peer", "name", server.1,
        ],
        &root,
    )?;
    for (ns, dev, addr) in CHAOS_NS {
        run("ip", &["link", "set", dev, "netns", ns], &root)?;
        run("ip", &["-n", ns, "addr", "add", addr, "dev", dev], &root)?;
        run("ip", &["-n", ns, "link", "set", dev, "up"], &root)?;
    }
    Ok(())
}

fn chaos_down() {
    for (ns, _, _) in CHAOS_NS {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn chaos_run(exe: &str) -> Result {
    use std::io::{BufRead, BufReader, Write};
    let log = env::temp_dir().join("mcp-chaos-server.log");
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            CHAOS_NS[1].0,
            exe,
            "serve",
            "--addr",
            CHAOS_SERVER,
            "--log",
        ])
        .arg(&log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let mut first = String::new();
    let mut lines = server.stdout.take().map(BufReader::new);
    if let Some(lines) = &mut lines {
        let _ = lines.read_line(&mut first);
    }
    let result = if first.starts_with("listening") {
        eprint!("server: {first}");
        run(
            "ip",
            &[
                "netns",
                "exec",
                CHAOS_NS[0].0,
                exe,
                "chaos",
                "--server",
                CHAOS_SERVER,
            ],
            &root(),
        )
    } else {
        Err(format!("the server did not start: {first:?}"))
    };
    if let Some(mut stdin) = server.stdin.take() {
        let _ = stdin.write_all(b"stop\n");
    }
    let mut last = String::new();
    if let Some(lines) = &mut lines {
        let _ = lines.read_line(&mut last);
    }
    eprint!("server: {last}");
    let _ = server.wait();
    let _ = std::fs::remove_file(log);
    result
}
