//! `mcp serve` in a child process, driven by `mcp call`, `mcp ping` and `mcp bench` as a
//! user would run them.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Server, run};

#[test]
fn serve_announces_its_address() {
    let server = Server::start(&[]);
    assert!(
        server
            .banner
            .contains(&format!("serving on {}", server.addr)),
        "banner: {}",
        server.banner
    );
    assert!(server.banner.contains("echo"), "banner: {}", server.banner);
}

#[test]
fn call_echo_prints_the_json_back() {
    let server = Server::start(&[]);
    let out = run(&["call", &server.addr, "echo", "--json", r#"{"msg":"hi"}"#]);
    out.assert_code(0);
    let printed: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{out}"));
    assert_eq!(printed, json!({"msg": "hi"}), "{out}");
    assert!(out.stderr.is_empty(), "{out}");
}

#[test]
fn call_raw_echo_prints_the_text_back() {
    let server = Server::start(&[]);
    let out = run(&["call", &server.addr, "echo", "--raw", "plain text"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "plain text\n", "{out}");
}

#[test]
fn call_user_update_then_get_in_json() {
    let server = Server::start(&[]);
    let ada = json!({"user_id": "u-1815", "name": "Ada Lovelace", "age": 36});
    let out = run(&[
        "call",
        &server.addr,
        "user.update",
        "--json",
        &ada.to_string(),
    ]);
    out.assert_code(0);
    let stored: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(stored, ada, "{out}");

    let out = run(&[
        "call",
        &server.addr,
        "user.get",
        "--json",
        r#"{"user_id":"u-1815"}"#,
    ]);
    out.assert_code(0);
    let got: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(got, ada, "{out}");
}

#[test]
fn call_user_get_in_protobuf() {
    let server = Server::start(&[]);
    // UserUpdate { user_id: "u-1", name: "Ada", age: 36 } in Protobuf.
    let ada = "0a 03 75 2d 31 12 03 41 64 61 18 24";
    let out = run(&[
        "call",
        &server.addr,
        "user.update",
        "--hex",
        ada,
        "--format",
        "protobuf",
    ]);
    out.assert_code(0);
    // The answer is Protobuf too, shown as hex with its size and format.
    out.assert_stdout_has(&format!("(12 bytes, format protobuf (2)) {ada}"));

    // Query { user_id: "u-1" }.
    let out = run(&[
        "call",
        &server.addr,
        "user.get",
        "--hex",
        "0a 03 75 2d 31",
        "--format",
        "protobuf",
    ]);
    out.assert_code(0);
    out.assert_stdout_has(&format!("(12 bytes, format protobuf (2)) {ada}"));

    // The same user read back in JSON: both formats reach the same store.
    let out = run(&[
        "call",
        &server.addr,
        "user.get",
        "--json",
        r#"{"user_id":"u-1"}"#,
    ]);
    out.assert_code(0);
    let got: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(
        got,
        json!({"user_id": "u-1", "name": "Ada", "age": 36}),
        "{out}"
    );
}

#[test]
fn call_user_get_of_an_unknown_user_is_an_application_error() {
    let server = Server::start(&[]);
    let out = run(&[
        "call",
        &server.addr,
        "user.get",
        "--json",
        r#"{"user_id":"u-nobody"}"#,
    ]);
    out.assert_code(1);
    out.one_error_line(&["1404", "u-nobody"]);
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn call_of_an_unknown_method_is_one_error_line() {
    let server = Server::start(&[]);
    let out = run(&["call", &server.addr, "no.such.method", "--json", "{}"]);
    out.assert_code(1);
    out.one_error_line(&["UNKNOWN_METHOD", "no such method"]);
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn call_with_bad_json_is_one_error_line() {
    let server = Server::start(&[]);
    let out = run(&["call", &server.addr, "echo", "--json", r#"{"msg":"#]);
    out.assert_code(1);
    out.one_error_line(&["--json is not valid JSON"]);
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn ping_prints_rtt_statistics() {
    let server = Server::start(&[]);
    let out = run(&["ping", &server.addr, "-c", "3", "-i", "10ms"]);
    out.assert_code(0);
    out.assert_stdout_has(&format!("PING {}", server.addr));
    let pongs = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("PONG from"))
        .count();
    assert_eq!(pongs, 3, "{out}");
    for seq in 1..=3 {
        out.assert_stdout_has(&format!("seq={seq} time="));
    }
    out.assert_stdout_has("3 sent, 3 answered, 0 lost");
    let stats = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .unwrap_or_else(|| panic!("no rtt line\n{out}"));
    let numbers: Vec<f64> = stats
        .trim_end_matches(" us")
        .split('/')
        .map(|n| n.parse().unwrap_or_else(|e| panic!("{n:?}: {e}\n{out}")))
        .collect();
    let [min, avg, max, mdev] = numbers[..] else {
        panic!("expected four figures\n{out}");
    };
    assert!(
        0.0 < min && min <= avg && avg <= max && mdev >= 0.0,
        "{out}"
    );
}

#[test]
fn bench_prints_a_json_report_last() {
    let server = Server::start(&[]);
    let out = run(&[
        "bench",
        &server.addr,
        "--duration",
        "1s",
        "--concurrency",
        "8",
        "--json",
    ]);
    let report = out.assert_bench_report();
    out.assert_stdout_has("throughput: ");
    assert!(
        report["latency_us"]["p50"].as_f64().unwrap_or(0.0) > 0.0,
        "{out}"
    );
    // The progress line and the set-up line go to stderr, not into the report.
    assert!(out.stderr.contains("bench: "), "{out}");
}

/// Ctrl-C (SIGINT), and SIGTERM (what systemd and the kubelet send), stop `mcp serve`
/// cleanly with exit code 0, after its GOAWAY.
#[cfg(unix)]
#[test]
fn serve_stops_cleanly_on_sigint_and_sigterm() {
    for (signal, said) in [("-INT", "interrupted"), ("-TERM", "terminated")] {
        let mut server = Server::start(&[]);
        let kill = run_kill(signal, server.pid());
        assert!(kill.success(), "kill {signal} failed: {kill}");
        let status = server
            .wait(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("mcp serve did not stop within 20 s of {signal}"));
        assert_eq!(status.code(), Some(0), "{signal}: {status}");
        let line = server.next_line(Duration::from_secs(5));
        assert!(
            line.as_deref()
                .is_some_and(|l| l.contains(said) && l.contains("shutting down")),
            "{signal}: {line:?}"
        );
    }
}

#[cfg(unix)]
fn run_kill(signal: &str, pid: u32) -> std::process::ExitStatus {
    let mut child = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .spawn()
        .expect("cannot run kill");
    support::wait_bounded(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("kill did not finish")
    })
}

#[test]
fn serve_offers_the_interop_methods() {
    let server = Server::start(&[]);
    for method in ["echo", "sleep", "fail", "big", "publish"] {
        assert!(server.banner.contains(method), "banner: {}", server.banner);
    }
    let out = run(&["call", &server.addr, "sleep", "--raw", "20"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "20\n", "{out}");

    let out = run(&["call", &server.addr, "fail", "--raw", "1404"]);
    out.assert_code(1);
    out.one_error_line(&["ERROR 1404"]);

    let out = run(&["call", &server.addr, "fail", "--raw", "0"]);
    out.assert_code(1);
    out.one_error_line(&["ERROR 1"]);

    let out = run(&[
        "call",
        &server.addr,
        "publish",
        "--json",
        r#"{"topic": "nobody.listens", "body": "x"}"#,
    ]);
    out.assert_code(0);
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON answer");
    assert_eq!(answer, json!({"delivered": 0}), "{out}");
}

#[test]
fn health_of_the_server_and_of_an_unknown_service() {
    let server = Server::start(&[]);
    let out = run(&["health", &server.addr]);
    out.assert_code(0);
    assert_eq!(out.stdout, "SERVING\n", "{out}");
    let out = run(&["health", &server.addr, "nobody"]);
    out.assert_code(3);
    assert_eq!(out.stdout, "SERVICE_UNKNOWN\n", "{out}");
}

/// `a,b` for `mcp call`: two replicas as one fleet.
fn list(servers: &[&Server]) -> String {
    servers
        .iter()
        .map(|s| s.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Two `mcp serve` on 127.0.0.1 and 127.0.0.2 called as one fleet: every call succeeds
/// while both serve, and still after the first one listed is killed (its calls go to the
/// other, within the same command), and promptly: the dead replica is not waited out.
#[test]
fn a_call_through_two_replicas_succeeds_while_one_is_killed() {
    let mut first = Server::start(&[]);
    let second = Server::start_on("127.0.0.2", &[]);
    let both = list(&[&first, &second]);
    for i in 0..3 {
        let body = format!("both up {i}");
        let out = run(&["call", &both, "echo", "--raw", &body]);
        out.assert_code(0);
        assert_eq!(out.stdout, format!("{body}\n"), "{out}");
    }
    let out = run(&["health", &both]);
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        format!("{} SERVING\n{} SERVING\n", first.addr, second.addr),
        "{out}"
    );

    first.kill();
    // The first replica is dead: on its own, a call fails at once...
    let out = run(&["call", &first.addr, "echo", "--raw", "x"]);
    out.assert_code(1);
    out.one_error_line(&[&first.addr, "refused"]);
    // ...through the fleet, every call is answered by the second.
    for i in 0..5 {
        let body = format!("one down {i}");
        let out = run(&["call", &both, "echo", "--raw", &body, "--timeout", "20s"]);
        out.assert_code(0);
        assert_eq!(out.stdout, format!("{body}\n"), "{out}");
        assert!(out.stderr.is_empty(), "{out}");
        assert!(out.elapsed < Duration::from_secs(10), "{out}");
    }
    // health and ping visit each: the dead one is named on stderr, the other answers, and
    // the exit code says that not all were well.
    let out = run(&["health", &both]);
    out.assert_code(1);
    assert_eq!(out.stdout, format!("{} SERVING\n", second.addr), "{out}");
    out.one_error_line(&[&first.addr, "refused"]);
    let out = run(&["ping", &both, "-c", "1", "-W", "2s"]);
    out.assert_code(1);
    out.assert_stdout_has(&format!("PONG from {}", second.addr));
    out.assert_stdout_has(&format!("--- {} ping statistics ---", second.addr));
    out.one_error_line(&[&first.addr]);
}

/// A replica that was never up is no worse than one that died.
#[test]
fn a_call_through_a_list_with_an_address_nobody_listens_on() {
    let server = Server::start_on("127.0.0.2", &[]);
    let dead = format!("127.0.0.1:{}", support::free_port());
    let both = format!("{dead},{}", server.addr);
    let out = run(&["call", &both, "echo", "--json", r#"{"msg":"hi"}"#]);
    out.assert_code(0);
    let printed: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{out}"));
    assert_eq!(printed, json!({"msg": "hi"}), "{out}");
    // No replica up at all: one line naming the list, exit 1, soon.
    let nobody = format!("{dead},127.0.0.2:{}", support::free_port_on("127.0.0.2"));
    let out = run(&["call", &nobody, "echo", "--timeout", "20s"]);
    out.assert_code(1);
    out.one_error_line(&[&nobody, "refused"]);
    assert!(out.elapsed < Duration::from_secs(10), "{out}");
}

/// `dns:localhost:PORT` is a fleet of every address `localhost` has (the hosts file: no
/// name server is asked); the call reaches the server on 127.0.0.1 even where `localhost`
/// is also `::1`, where nothing listens.
#[test]
fn a_call_through_a_dns_name() {
    let server = Server::start(&[]);
    let port = server.addr.rsplit_once(':').map(|(_, p)| p).unwrap();
    let name = format!("dns:localhost:{port}");
    let out = run(&["call", &name, "echo", "--raw", "by name"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "by name\n", "{out}");
    let out = run(&["ping", &name, "-c", "1"]);
    out.assert_stdout_has(&format!("PONG from 127.0.0.1:{port}"));
}

/// `bench ADDR,ADDR` against two `mcp serve`: one fleet, both endpoints in the report.
#[test]
fn bench_over_two_replicas_reports_each_one() {
    let first = Server::start(&[]);
    let second = Server::start_on("127.0.0.2", &[]);
    let out = run(&[
        "bench",
        &list(&[&first, &second]),
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--concurrency",
        "8",
        "--json",
    ]);
    let report = out.assert_bench_report();
    let endpoints = report["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints\n{out}"));
    let addrs: Vec<&str> = endpoints
        .iter()
        .map(|e| e["addr"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(addrs, [first.addr.as_str(), second.addr.as_str()], "{out}");
    for endpoint in endpoints {
        assert!(endpoint["attempts"].as_u64().unwrap_or(0) > 0, "{out}");
    }
}

/// `serve --max-in-flight-total 1`: while one `sleep` runs, another request is answered
/// ERROR 5 at once; the server's limit is the operator's to set.
#[test]
fn serve_sheds_past_its_server_wide_limit() {
    let server = Server::start(&["--max-in-flight-total", "1"]);
    let addr = server.addr.clone();
    let long = std::thread::spawn(move || {
        run(&["call", &addr, "sleep", "--raw", "1500", "--timeout", "10s"])
    });
    // The long call is running once a second one is refused; until then, try again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let out = run(&["call", &server.addr, "sleep", "--raw", "0"]);
        if out.code() == Some(1) {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "never refused: {out}");
        std::thread::sleep(Duration::from_millis(50));
    };
    refused.one_error_line(&["ERROR 5", "too many requests in flight on this server"]);
    let out = long.join().expect("the long call");
    out.assert_code(0);
    assert_eq!(out.stdout, "1500\n", "{out}");
}
