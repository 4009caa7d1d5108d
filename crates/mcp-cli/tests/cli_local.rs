//! The `mcp` commands that need no separate server: `decode`, `demo`, `bench --embedded`,
//! failures against an unreachable address, and usage errors.

mod support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::{free_port, run, run_with_stdin};

/// The test vectors of docs/protocol.md section 9, as printed there.
const VECTORS: &str = "\
PING nonce 1
4d 43 01 05 00 08 00 00 00 00 00 00 00 01 37 5c
";
const REQUEST_ECHO: &str = "\
4d 43 01 01 00 18 00 00 00 01 00 01 04 65 63 68 6f 00 7b 22 6d 73 67 22 3a 22 68 69 22 7d 9a f9
";
const REQUEST_USER_GET: &str = "\
4d 43 01 01 00 5a 00 00 00 07 00 02 08 75 73 65 72 2e 67 65 74 01 0b 74 72 61 63 65 70 61
72 65 6e 74 00 37 30 30 2d 34 62 66 39 32 66 33 35 37 37 62 33 34 64 61 36 61 33 63 65 39
32 39 64 30 65 30 65 34 37 33 36 2d 30 30 66 30 36 37 61 61 30 62 61 39 30 32 62 37 2d 30
31 0a 03 75 31 32 c0 c4
";
const RESPONSE_ECHO: &str = "\
4d 43 01 02 00 13 00 00 00 01 00 01 00 7b 22 6d 73 67 22 3a 22 68 69 22 7d fc 8a
";
const ERROR_NO_METHOD: &str = "\
4d 43 01 04 00 14 00 00 00 01 00 02 6e 6f 20 73 75 63 68 20 6d 65 74 68 6f 64 36 3b
";

/// The five vectors as one hex capture (the PING line without its caption).
fn capture_hex() -> String {
    let ping = VECTORS.lines().nth(1).expect("the PING vector");
    [
        ping,
        REQUEST_ECHO,
        REQUEST_USER_GET,
        RESPONSE_ECHO,
        ERROR_NO_METHOD,
    ]
    .join("\n")
}

fn capture_bytes() -> Vec<u8> {
    let digits: String = capture_hex().split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A file under Cargo's scratch directory for integration tests.
fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mcp-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("cannot write a scratch file");
    path
}

/// What `mcp decode` must print for the five vectors.
#[track_caller]
fn assert_decodes_the_vectors(out: &support::Run) {
    out.assert_code(0);
    assert_eq!(out.stdout.matches("CRC ok").count(), 5, "{out}");
    for needle in [
        "@0: PING (type 0x05), payload 8 bytes, CRC ok",
        "nonce 00 00 00 00 00 00 00 01",
        "@16: REQUEST (type 0x01)",
        r#"id 1 method "echo" format json"#,
        r#"body 12 bytes: {"msg":"hi"}"#,
        r#"id 7 method "user.get" format protobuf"#,
        r#"meta traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01""#,
        "body 5 bytes: 0a 03 75 31 32",
        "RESPONSE (type 0x02), payload 19 bytes",
        "ERROR (type 0x04), payload 20 bytes",
        r#"id 1 code 2 (UNKNOWN_METHOD) message "no such method""#,
    ] {
        out.assert_stdout_has(needle);
    }
    assert!(out.stderr.is_empty(), "{out}");
}

#[test]
fn decode_a_hex_file_of_the_protocol_vectors() {
    let path = scratch_file("vectors.hex", capture_hex().as_bytes());
    let out = run(&["decode", path.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_decodes_the_vectors(&out);
}

#[test]
fn decode_hex_from_stdin() {
    let out = run_with_stdin(&["decode"], capture_hex().as_bytes());
    assert_decodes_the_vectors(&out);
}

#[test]
fn decode_binary_from_stdin() {
    let out = run_with_stdin(&["decode"], &capture_bytes());
    assert_decodes_the_vectors(&out);
}

#[test]
fn decode_reports_a_damaged_crc_and_carries_on() {
    let mut bytes = capture_bytes();
    // The echo REQUEST occupies bytes 16..48; flip the low byte of its CRC.
    assert_eq!(&bytes[46..48], &[0x9a, 0xf9]);
    bytes[47] ^= 0xff;
    let out = run_with_stdin(&["decode"], &bytes);
    // Damage is a failed operation: exit code 1 (see run_decode in main.rs).
    out.assert_code(1);
    out.assert_stdout_has(
        "@16: damaged frame: CRC mismatch: frame carries 0x9a06, computed 0x9af9",
    );
    // The frames around the damaged one are still shown.
    assert_eq!(out.stdout.matches("CRC ok").count(), 4, "{out}");
    out.assert_stdout_has(r#"id 7 method "user.get""#);
    out.one_error_line(&["1 damaged or malformed frame(s) among 5 frame(s)"]);
}

#[test]
fn decode_reports_a_truncated_frame() {
    let hex = REQUEST_ECHO.trim();
    let cut = &hex[..hex.len() - 6]; // drop the last two bytes
    let out = run_with_stdin(&["decode"], cut.as_bytes());
    out.assert_code(1);
    out.assert_stdout_has("@0: truncated frame");
    out.one_error_line(&["1 damaged or malformed frame(s)"]);
}

#[test]
fn decode_of_a_missing_file_is_one_error_line() {
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-cli-no-such-capture");
    let out = run(&["decode", missing.to_str().expect("a UTF-8 path")]);
    out.assert_code(1);
    out.one_error_line(&["cannot read", "mcp-cli-no-such-capture"]);
}

#[test]
fn decode_of_odd_hex_is_one_error_line() {
    let out = run_with_stdin(&["decode"], b"4d 43 0");
    out.assert_code(1);
    out.one_error_line(&["odd number of digits"]);
}

/// `mcp decode capture | head -1`: the reader goes away; mcp ends quietly with exit code 1
/// instead of panicking in `println!` (exit code 101 and a backtrace).
#[test]
fn decode_into_a_closed_pipe_ends_quietly() {
    let mut child = support::mcp()
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the mcp binary");
    // Close the reading end before mcp has anything to write: it reads stdin first.
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let _ = stdin.write_all(capture_hex().as_bytes());
    drop(stdin);
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let status = support::wait_bounded(&mut child, support::LIMIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("mcp decode did not end")
    });
    let mut errors = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut errors);
    assert_eq!(status.code(), Some(1), "{status}: {errors}");
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn demo_calls_in_json_and_protobuf_and_receives_pushes() {
    let out = run(&["demo", "--duration", "1s"]);
    out.assert_code(0);
    let has_line = |words: &[&str]| {
        out.stdout
            .lines()
            .any(|l| words.iter().all(|w| l.contains(w)))
    };
    assert!(has_line(&["JSON", "echo", "hello, mcp"]), "{out}");
    assert!(has_line(&["JSON", "user.update", "Ada Lovelace"]), "{out}");
    assert!(has_line(&["Protobuf", "user.get", "Grace Hopper"]), "{out}");
    assert!(
        has_line(&["Protobuf", "user.get", "application error", "1404"]),
        "{out}"
    );
    let pushes = out
        .stdout
        .lines()
        .filter(|l| l.contains("push") && l.contains("\"ticker\"") && l.contains("\"seq\""))
        .count();
    assert_eq!(pushes, 3, "{out}");
    out.assert_stdout_has("throughput: ");
    out.assert_stdout_has("errors: none");
    out.assert_stdout_has("server shut down cleanly");
    assert!(!out.stderr.contains("mcp:"), "{out}");
}

#[test]
fn bench_embedded_prints_a_json_report_last() {
    let out = run(&["bench", "--embedded", "--duration", "1s", "--json"]);
    out.assert_bench_report();
    // The embedded server listens on loopback.
    assert!(out.stderr.contains("bench: 127.0.0.1:"), "{out}");
}

#[test]
fn call_to_a_closed_port_fails_at_once() {
    let addr = format!("127.0.0.1:{}", free_port());
    let out = run(&["call", &addr, "echo", "--json", "{}", "--timeout", "20s"]);
    out.assert_code(1);
    out.one_error_line(&[&addr, "Connection refused"]);
    assert!(out.stdout.is_empty(), "{out}");
    // A refused connect is the answer: no waiting out the 20 s budget in backoff.
    assert!(out.elapsed < Duration::from_secs(10), "{out}");
}

#[test]
fn ping_to_a_closed_port_is_one_error_line() {
    let addr = format!("127.0.0.1:{}", free_port());
    let out = run(&["ping", &addr, "-c", "2", "-i", "10ms"]);
    out.assert_code(1);
    out.one_error_line(&[&addr, "Connection refused"]);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["call"][..],
        &["call", "127.0.0.1:1"],
        &["call", "127.0.0.1:1", "echo", "--json", "{}", "--raw", "x"],
        &["call", "127.0.0.1:1", "echo", "--timeout", "soon"],
        &["ping", "127.0.0.1:1", "-c", "many"],
        &["bench"],
        &["serve", "--addr", "not-an-address"],
        &["no-such-command"],
    ] {
        let out = run(args);
        out.assert_code(2);
        assert!(out.stderr.starts_with("error: "), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    let out = run(&["call"]);
    assert!(out.stderr.contains("<ADDR>"), "{out}");
    assert!(out.stderr.contains("Usage: mcp call"), "{out}");
}

#[test]
fn help_lists_every_command() {
    let out = run(&["--help"]);
    out.assert_code(0);
    for command in ["serve", "call", "ping", "bench", "decode", "demo"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(command)),
            "--help lacks {command}\n{out}"
        );
    }
    out.assert_stdout_has("not the Model Context Protocol");
}

/// Each command's help says what that command does (a doc comment in the wrong place
/// once gave `health` the text of `ping`, and `ping` that of the TLS flags), and the
/// commands that take ADDR say it may be a list or a DNS name.
#[test]
fn each_command_help_describes_itself() {
    for (command, says, not) in [
        ("ping", "Send PINGs", "health"),
        ("health", "Ask a server's health", "PINGs"),
        ("call", "Call METHOD", "PINGs"),
        ("bench", "Load-test", "PINGs"),
    ] {
        let out = run(&[command, "--help"]);
        out.assert_code(0);
        let about = out.stdout.lines().next().unwrap_or("");
        assert!(about.starts_with(says), "{command}: {about:?}\n{out}");
        assert!(!about.contains(not), "{command}: {about:?}\n{out}");
        out.assert_stdout_has("comma-separated");
        out.assert_stdout_has("dns:host:port");
    }
}

/// Panics unless `mcp ARGS` was refused as a usage error: exit code 2, one line on stderr
/// holding every one of `needles` (the flag and why), nothing on stdout, no panic.
#[track_caller]
fn assert_refused(args: &[&str], needles: &[&str]) {
    let out = run(args);
    assert_refused_run(&out, needles);
}

#[track_caller]
fn assert_refused_run(out: &support::Run, needles: &[&str]) {
    out.assert_code(2);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr\n{out}");
    for needle in needles {
        assert!(lines[0].contains(needle), "stderr lacks {needle:?}\n{out}");
    }
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    // Refused before any work: no connection attempt, no allocation of the body.
    assert!(out.elapsed < Duration::from_secs(10), "{out}");
}

/// An address nothing listens on: a refused flag must be caught before connecting.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn bench_refuses_zero_concurrency() {
    assert_refused(
        &["bench", "--embedded", "--concurrency", "0"],
        &["--concurrency", "between 1 and"],
    );
    assert_refused(&["bench", &nowhere(), "-c", "0"], &["--concurrency"]);
    assert_refused(
        &["bench", "--embedded", "--concurrency", "1000000000"],
        &["--concurrency", "between 1 and 100000"],
    );
}

#[test]
fn bench_refuses_zero_connections() {
    assert_refused(
        &["bench", "--embedded", "--connections", "0"],
        &["--connections", "between 1 and"],
    );
}

#[test]
fn bench_refuses_rates_that_are_not_positive_numbers() {
    for rate in ["0", "nan", "NaN", "inf", "-inf", "-5", "1e-300", "fast"] {
        // `--rate=-5`: a separate `-5` would be read as a flag.
        let out = run(&["bench", "--embedded", &format!("--rate={rate}")]);
        assert_refused_run(&out, &["--rate", rate]);
    }
}

#[test]
fn bench_refuses_a_zero_duration() {
    assert_refused(
        &["bench", "--embedded", "--duration", "0s"],
        &["--duration", "longer than zero"],
    );
    assert_refused(
        &["bench", "--embedded", "--duration", "500000000000y"],
        &["--duration"],
    );
    assert_refused(
        &["bench", "--embedded", "--warmup", "400days"],
        &["--warmup", "at most"],
    );
}

#[test]
fn bench_refuses_a_body_past_the_maximum_message_size() {
    // Once an abort on a failed allocation; 17 MB flooded local errors with no reason.
    for size in ["100000000000", "17000000", "16777217"] {
        let out = run(&["bench", "--embedded", "--size", size]);
        assert_refused_run(&out, &["--size", "maximum message size", "16777216"]);
    }
}

#[test]
fn ping_refuses_a_zero_count() {
    assert_refused(
        &["ping", &nowhere(), "-c", "0"],
        &["--count", "between 1 and"],
    );
    assert_refused(
        &["ping", &nowhere(), "-W", "0s"],
        &["--wait", "longer than zero"],
    );
}

#[test]
fn serve_refuses_limits_that_would_turn_everyone_away() {
    for (flag, value) in [
        ("--max-connections", "0"),
        ("--max-connections-per-ip", "0"),
        ("--max-in-flight-total", "0"),
        ("--max-in-flight-bytes-total", "0"),
        ("--max-in-flight-bytes-total", "5XB"),
    ] {
        assert_refused(&["serve", flag, value], &[flag.trim_start_matches('-')]);
    }
}

#[test]
fn serve_refuses_a_zero_tick() {
    // Once a panic in tokio's interval.
    assert_refused(
        &["serve", "--addr", "127.0.0.1:0", "--tick", "0s"],
        &["--tick", "longer than zero"],
    );
}

#[test]
fn call_refuses_bad_hex_instead_of_sending_the_text() {
    assert_refused(
        &["call", &nowhere(), "echo", "--hex", "zz"],
        &["--hex", "not a hex digit"],
    );
    assert_refused(
        &["call", &nowhere(), "echo", "--hex", "4d 4"],
        &["--hex", "odd number of hex digits"],
    );
    assert_refused(
        &["call", &nowhere(), "echo", "--timeout", "0s"],
        &["--timeout", "longer than zero"],
    );
}

#[test]
fn demo_refuses_a_zero_duration() {
    assert_refused(&["demo", "--duration", "0ms"], &["--duration"]);
}

#[test]
fn decode_of_empty_input_is_a_usage_error() {
    let out = run_with_stdin(&["decode"], b"");
    assert_refused_run(&out, &["mcp: decode: stdin is empty"]);
    let out = run_with_stdin(&["decode"], b" \n\t");
    assert_refused_run(&out, &["stdin is empty"]);
    let path = scratch_file("empty.hex", b"");
    let out = run(&["decode", path.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_refused_run(&out, &["empty.hex is empty"]);
}

#[test]
fn bench_embedded_over_two_replicas_prints_both_shares() {
    let out = run(&[
        "bench",
        "--embedded",
        "--replicas",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--json",
    ]);
    let report = out.assert_bench_report();
    // One line per replica, on 127.0.0.1 and 127.0.0.2, each with a share above zero and
    // a latency estimate.
    for (i, ip) in ["127.0.0.1:", "127.0.0.2:"].into_iter().enumerate() {
        let prefix = format!("endpoint {ip}");
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line for {ip}\n{out}"));
        let share: f64 = line
            .split_once(": ")
            .and_then(|(_, rest)| rest.split_once('%'))
            .and_then(|(share, _)| share.parse().ok())
            .unwrap_or_else(|| panic!("no share in {line:?}\n{out}"));
        assert!(share > 0.0 && share < 100.0, "{line}\n{out}");
        assert!(
            line.contains("peak-ewma latency ") && line.contains(" us"),
            "{line}"
        );
        let endpoint = &report["endpoints"][i];
        assert!(
            endpoint["addr"].as_str().unwrap_or("").starts_with(ip),
            "{out}"
        );
        assert!(endpoint["attempts"].as_u64().unwrap_or(0) > 0, "{out}");
        assert!(endpoint["ewma_us"].as_f64().unwrap_or(0.0) > 0.0, "{out}");
    }
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("endpoint "))
            .count(),
        2,
        "{out}"
    );
    out.assert_stdout_has("server: 2 connections accepted");
}

#[test]
fn bench_embedded_with_one_replica_prints_no_endpoint_lines() {
    let out = run(&["bench", "--embedded", "--duration", "200ms", "--json"]);
    out.assert_bench_report();
    assert!(!out.stdout.contains("endpoint "), "{out}");
    assert!(out.last_line_json().get("endpoints").is_none(), "{out}");
    // The one-endpoint client: no fleet on its path.
    assert!(!out.stderr.contains("fleet"), "{out}");
}

#[test]
fn bench_refuses_replicas_that_cannot_work() {
    for n in ["0", "65", "-1", "two"] {
        let out = run(&["bench", "--embedded", &format!("--replicas={n}")]);
        assert_refused_run(&out, &["--replicas"]);
    }
    // Replicas are embedded servers: with an address of one's own, they mean nothing.
    let out = run(&["bench", &nowhere(), "--replicas", "2"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--embedded"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

/// A bad address list is refused before anything connects, by every command that takes
/// one, with the item at fault named.
#[test]
fn bad_address_lists_are_refused_naming_the_item() {
    let ok = nowhere();
    let cases: [(String, &[&str]); 8] = [
        (format!("{ok},,{ok}"), &["address 2 of the list is empty"]),
        (format!("{ok},"), &["address 2 of the list is empty"]),
        ("dns:svc.local".into(), &["\"dns:svc.local\"", "host:port"]),
        ("dns:".into(), &["\"dns:\"", "host:port"]),
        (format!("{ok},nohost"), &["\"nohost\" is not host:port"]),
        (
            format!("{ok},127.0.0.2:70000"),
            &["\"127.0.0.2:70000\"", "port"],
        ),
        (format!("{ok},bad host:1"), &["\"bad host:1\"", "host"]),
        (
            format!("{ok},{ok}"),
            &[&format!("\"{ok}\" is listed twice")],
        ),
    ];
    for (list, needles) in &cases {
        for command in [
            &["call", list, "echo"][..],
            &["ping", list],
            &["health", list],
            &["bench", list],
        ] {
            let out = run(command);
            assert_refused_run(&out, needles);
            assert!(
                out.stderr.contains("ADDR]") || out.stderr.contains("<ADDR>"),
                "{out}"
            );
        }
    }
    assert_refused(
        &["call", &format!("{ok},dns:localhost:1"), "echo"],
        &["\"dns:localhost:1\"", "stands alone"],
    );
    assert_refused(&["call", "::1:7000", "echo"], &["brackets"]);
}
