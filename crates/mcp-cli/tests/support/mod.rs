//! Running the real `mcp` binary as a user would: every child process is bounded by a
//! deadline, and a `mcp serve` child is killed when its guard drops, even when a test fails.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest any single `mcp` command may run before the test kills it and fails.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// The `mcp` binary built by Cargo for these tests.
pub(crate) fn mcp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcp"))
}

/// What one run of `mcp` did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) args: Vec<String>,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Run {
    /// The exit code (`None` when a signal ended the process).
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing everything, unless the run exited with `code`.
    #[track_caller]
    pub(crate) fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit code\n{self}");
        self
    }

    /// Panics unless stderr is exactly one line starting with `mcp: ` and containing every
    /// one of `needles`; returns that line.
    #[track_caller]
    pub(crate) fn one_error_line(&self, needles: &[&str]) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr\n{self}");
        let line = lines[0];
        assert!(
            line.starts_with("mcp: "),
            "error line lacks `mcp: `\n{self}"
        );
        for needle in needles {
            assert!(line.contains(needle), "error line lacks {needle:?}\n{self}");
        }
        assert!(!self.stderr.contains("panicked"), "{self}");
        line
    }

    /// Panics unless stdout contains `needle`.
    #[track_caller]
    pub(crate) fn assert_stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    /// The last non-empty line of stdout parsed as JSON.
    #[track_caller]
    pub(crate) fn last_line_json(&self) -> serde_json::Value {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("stdout is empty\n{self}"));
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last}\n{self}"))
    }

    /// Panics unless this is a successful `mcp bench --json` run: exit 0, no errors, and a
    /// last line whose report shows calls made and a throughput; returns that report.
    #[track_caller]
    pub(crate) fn assert_bench_report(&self) -> serde_json::Value {
        self.assert_code(0);
        self.assert_stdout_has("errors: none");
        let report = self.last_line_json();
        let rps = report["requests_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("no requests_per_second\n{self}"));
        assert!(rps > 0.0, "{self}");
        assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{self}");
        assert_eq!(report["errors"], 0, "{self}");
        report
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ mcp {}\n{} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `mcp ARGS` with no stdin, bounded by [`LIMIT`].
#[track_caller]
pub(crate) fn run(args: &[&str]) -> Run {
    run_with(args, None)
}

/// Runs `mcp ARGS` with `input` on stdin, bounded by [`LIMIT`].
#[track_caller]
pub(crate) fn run_with_stdin(args: &[&str], input: &[u8]) -> Run {
    run_with(args, Some(input))
}

#[track_caller]
fn run_with(args: &[&str], input: Option<&[u8]>) -> Run {
    let mut command = mcp();
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().expect("cannot start the mcp binary");
    // Feed stdin and drain both pipes on threads, so that no pipe can fill up and stall.
    let feeder = input.map(|input| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        thread::spawn(move || {
            // The child may exit without reading everything; that is its business.
            let _ = stdin.write_all(&input);
        })
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_bounded(&mut child, LIMIT);
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let run = Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        status: status.unwrap_or_else(|| {
            let _ = child.kill();
            child.wait().expect("cannot reap the killed mcp process")
        }),
        stdout: stdout.join().expect("stdout reader panicked"),
        stderr: stderr.join().expect("stderr reader panicked"),
        elapsed: start.elapsed(),
    };
    if status.is_none() {
        panic!("mcp ran longer than {LIMIT:?} and was killed\n{run}");
    }
    run
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` until `limit`; `None` when it is still running then.
pub(crate) fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("cannot poll the mcp process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port that nothing listens on (bound, read and released).
pub(crate) fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port of `ip` (a loopback address) that nothing listens on.
pub(crate) fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// A `mcp serve` child process, killed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// `IP:PORT` (`127.0.0.1` unless started elsewhere), as given to `--addr`.
    pub(crate) addr: String,
    /// The line `mcp serve` printed when it started.
    pub(crate) banner: String,
    /// Later stdout lines (read on a thread until the process ends).
    stdout: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `mcp serve --addr 127.0.0.1:PORT EXTRA` on a free port (a few ports are tried
    /// in case another process takes one in between) and waits until it accepts connections.
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1", extra)
    }

    /// [`Server::start`] on another loopback address (`127.0.0.2`: a second host to a
    /// fleet, on Linux, which routes all of 127/8 to the loopback interface).
    pub(crate) fn start_on(ip: &str, extra: &[&str]) -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(ip, free_port_on(ip), extra) {
                Ok(server) => return server,
                Err(why) => failures.push(why),
            }
        }
        panic!("mcp serve did not start:\n{}", failures.join("\n"));
    }

    fn try_start(ip: &str, port: u16, extra: &[&str]) -> Result<Self, String> {
        let addr = format!("{ip}:{port}");
        let mut child = mcp()
            .args(["serve", "--addr", &addr])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the mcp binary: {e}"))?;
        let stdout = lines(child.stdout.take().expect("stdout is piped"));
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        let mut server = Server {
            child,
            addr,
            banner: String::new(),
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let target: SocketAddr = server.addr.parse().expect("a socket address");
        loop {
            if let Some(status) = server.child.try_wait().expect("cannot poll mcp serve") {
                let stderr = stderr.join().unwrap_or_default();
                return Err(format!("{}: exited with {status}: {stderr}", server.addr));
            }
            if server.banner.is_empty() {
                if let Ok(line) = server.stdout.try_recv() {
                    server.banner = line;
                }
            }
            if !server.banner.is_empty()
                && TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
            {
                // Dropping `stderr`'s handle detaches the reader thread; it ends with the child.
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: not accepting after 20 s", server.addr));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next stdout line, if one comes within `limit`.
    pub(crate) fn next_line(&self, limit: Duration) -> Option<String> {
        self.stdout.recv_timeout(limit).ok()
    }

    /// The process id, for sending signals.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and waits for it: the address refuses connections from now on.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, LIMIT);
    }

    /// Waits (bounded) for the process to end by itself.
    pub(crate) fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_bounded(&mut self.child, limit)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
