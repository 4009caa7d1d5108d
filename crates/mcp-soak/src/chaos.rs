//! The client side of `cargo xtask chaos`: run as root in a network namespace of its own
//! (the server is in another, across a veth pair), it drops its own packets with nftables,
//! which loopback proxies cannot do: packet loss under TCP, and a true half-open connection
//! (nothing comes back, not even a reset).
//!
//! Two phases, each with its check:
//! - loss: a share of the packets dropped both ways while calls run with a 1 s budget;
//!   every call must end by its deadline (a small scheduling margin aside), answered or not;
//! - half-open: every packet dropped while calls wait for slow answers; the client must
//!   declare the connection dead within the heartbeat's interval + timeout (docs/protocol.md
//!   section 7), and be back once the network is.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_client::{BreakerConfig, CallOptions, Client, ErrorKind, FormatId, RawRequest};
use tokio::sync::Mutex;

use crate::Result;

/// How late past its deadline a call may end: the timer and the scheduler, not the network.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);
/// How late past interval + timeout a dead peer may be declared.
const DETECTION_MARGIN: Duration = Duration::from_millis(500);
/// The budget of each call in the loss phase.
const LOSS_CALL_BUDGET: Duration = Duration::from_secs(1);
/// How long the client may take to be back once the network is.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

pub(crate) struct Chaos {
    pub(crate) server: String,
    pub(crate) heartbeat: Duration,
    pub(crate) loss: u32,
    pub(crate) loss_for: Duration,
}

/// The rules of this namespace's `inet mcp_chaos` table; the table is deleted on drop.
struct Firewall {
    server_ip: String,
}

impl Firewall {
    fn new(server_ip: &str) -> Result<Firewall> {
        nft(&["add", "table", "inet", "mcp_chaos"])?;
        let firewall = Firewall {
            server_ip: server_ip.to_string(),
        };
        for (chain, hook) in [("input", "input"), ("output", "output")] {
            nft(&[
                "add",
                "chain",
                "inet",
                "mcp_chaos",
                chain,
                &format!("{{ type filter hook {hook} priority 0 ; }}"),
            ])?;
        }
        Ok(firewall)
    }

    /// Drops `percent` (below 100) of the packets each way between this host and the
    /// server.
    fn lose(&self, percent: u32) -> Result {
        self.clear()?;
        let n = percent.to_string();
        let ip = self.server_ip.as_str();
        let rules: [&[&str]; 2] = [
            &[
                "ip", "saddr", ip, "numgen", "random", "mod", "100", "<", &n, "drop",
            ],
            &[
                "ip", "daddr", ip, "numgen", "random", "mod", "100", "<", &n, "drop",
            ],
        ];
        for (chain, rule) in ["input", "output"].iter().zip(rules) {
            let mut args = vec!["add", "rule", "inet", "mcp_chaos", chain];
            args.extend_from_slice(rule);
            nft(&args)?;
        }
        Ok(())
    }

    /// Drops every packet each way: a half-open connection, with no reset to tell.
    fn cut(&self) -> Result {
        self.clear()?;
        let ip = self.server_ip.as_str();
        nft(&[
            "add",
            "rule",
            "inet",
            "mcp_chaos",
            "input",
            "ip",
            "saddr",
            ip,
            "drop",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            "mcp_chaos",
            "output",
            "ip",
            "daddr",
            ip,
            "drop",
        ])
    }

    fn clear(&self) -> Result {
        nft(&["flush", "chain", "inet", "mcp_chaos", "input"])?;
        nft(&["flush", "chain", "inet", "mcp_chaos", "output"])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", "mcp_chaos"]);
    }
}

fn nft(args: &[&str]) -> Result {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nft (nftables, as root): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A `work` body for the soak server: an id, and whether to take 3 s.
fn body(id: u64, slow: bool) -> Bytes {
    let mut body = id.to_le_bytes().to_vec();
    body.push(u8::from(slow));
    Bytes::from(body)
}

fn request(id: u64, slow: bool, budget: Duration) -> RawRequest {
    RawRequest::new("work", FormatId::RAW, body(id, slow))
        .with_options(CallOptions::new().timeout(budget).attempt_timeout(budget))
}

impl Chaos {
    pub(crate) async fn run(self) -> Result {
        let server_ip = self
            .server
            .rsplit_once(':')
            .map(|(ip, _)| ip.to_string())
            .ok_or_else(|| format!("--server {:?} is not ip:port", self.server))?;
        let firewall = Firewall::new(&server_ip)?;
        let client = Client::builder(&self.server)
            .heartbeat(self.heartbeat, self.heartbeat)
            .breaker(BreakerConfig::disabled())
            .build()
            .map_err(|e| format!("client: {e}"))?;
        let mut problems = Vec::new();

        for id in 0..10 {
            client
                .call_raw(request(id, false, Duration::from_secs(5)))
                .await
                .map_err(|e| format!("a call before any fault failed: {e}"))?;
        }

        // Loss: every call ends by its deadline.
        firewall.lose(self.loss)?;
        let (loss_report, late) = self.loss_phase(&client).await;
        firewall.clear()?;
        println!("{loss_report}");
        if let Some(late) = late {
            problems.push(late);
        }

        // Half-open: found dead within interval + timeout.
        match self.half_open_phase(&client, &firewall).await {
            Ok(report) => println!("{report}"),
            Err(problem) => problems.push(problem),
        }
        drop(firewall);
        client.close_now();
        if problems.is_empty() {
            println!("chaos: every check held");
            Ok(())
        } else {
            for problem in &problems {
                println!("VIOLATION: {problem}");
            }
            Err(format!("{} checks failed", problems.len()))
        }
    }

    /// Calls with a 1 s budget from 32 callers while packets are lost; answers the report
    /// and, if a call ended late, what went wrong.
    async fn loss_phase(&self, client: &Client) -> (String, Option<String>) {
        let end = Instant::now() + self.loss_for;
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut callers = Vec::new();
        for caller in 0..32u64 {
            let (client, results) = (client.clone(), results.clone());
            callers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let id = 1_000_000 + caller * 1_000_000 + n;
                    n += 1;
                    let start = Instant::now();
                    let outcome = client
                        .call_raw(request(id, false, LOSS_CALL_BUDGET))
                        .await
                        .map(drop)
                        .map_err(|e| e.kind());
                    results.lock().await.push((start.elapsed(), outcome));
                }
            }));
        }
        for caller in callers {
            let _ = caller.await;
        }
        let results = results.lock().await;
        let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
        latencies.sort_unstable();
        let ok = results.iter().filter(|(_, o)| o.is_ok()).count();
        let timeouts = results
            .iter()
            .filter(|(_, o)| matches!(o, Err(ErrorKind::Timeout)))
            .count();
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let max = latencies.last().copied().unwrap_or_default();
        let report = format!(
            "loss {}% each way for {:?}: {} calls, {ok} answered, {timeouts} timed out, {} other \
             failures; latency p50 {:?}, p99 {:?}, max {:?} (budget {LOSS_CALL_BUDGET:?})",
            self.loss,
            self.loss_for,
            results.len(),
            results.len() - ok - timeouts,
            pick(0.5),
            pick(0.99),
            max,
        );
        let late = (max > LOSS_CALL_BUDGET + DEADLINE_MARGIN).then(|| {
            format!("a call ended {max:?} after it started, past its {LOSS_CALL_BUDGET:?} budget")
        });
        (report, late)
    }

    /// Slow calls in flight, then every packet dropped: the calls must fail as the
    /// connection is declared dead, within interval + timeout of the cut.
    async fn half_open_phase(&self, client: &Client, firewall: &Firewall) -> Result<String> {
        let long = Duration::from_secs(60);
        // A fresh answer just before the cut, so that the heartbeat's silence starts there.
        client
            .call_raw(request(1, false, Duration::from_secs(10)))
            .await
            .map_err(|e| format!("no answer after the loss phase: {e}"))?;
        let mut slow = Vec::new();
        for id in 0..8u64 {
            let client = client.clone();
            slow.push(tokio::spawn(async move {
                let outcome = client.call_raw(request(900 + id, true, long)).await;
                (Instant::now(), outcome.map(drop).map_err(|e| e.kind()))
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        firewall.cut()?;
        let cut = Instant::now();
        let limit = self.heartbeat * 2 + DETECTION_MARGIN;
        let mut detected = Vec::new();
        for call in slow {
            let (at, outcome) = tokio::time::timeout(long, call)
                .await
                .map_err(|_| "a call across the cut never ended".to_string())?
                .map_err(|e| format!("a call task failed: {e}"))?;
            match outcome {
                Err(ErrorKind::ConnectionLost) => detected.push(at.saturating_duration_since(cut)),
                other => return Err(format!("a call across the cut ended {other:?}, not lost")),
            }
        }
        let first = detected.iter().min().copied().unwrap_or_default();
        let last = detected.iter().max().copied().unwrap_or_default();
        if last > limit {
            return Err(format!(
                "the half-open connection was declared dead {last:?} after the cut, past \
                 interval + timeout ({:?}) + {DETECTION_MARGIN:?}",
                self.heartbeat * 2
            ));
        }
        firewall.clear()?;
        let healed = Instant::now();
        let mut n = 0u64;
        loop {
            n += 1;
            match client
                .call_raw(request(2_000_000_000 + n, false, Duration::from_secs(2)))
                .await
            {
                Ok(_) => break,
                Err(_) if healed.elapsed() < RECOVERY_BOUND => {}
                Err(e) => {
                    return Err(format!(
                        "not back {RECOVERY_BOUND:?} after the network: {e}"
                    ));
                }
            }
        }
        Ok(format!(
            "half-open (every packet dropped, heartbeat {:?} + {:?}): 8 calls in flight failed as \
             lost {first:?} to {last:?} after the cut (limit {limit:?}); back {:?} after the \
             network",
            self.heartbeat,
            self.heartbeat,
            healed.elapsed()
        ))
    }
}
