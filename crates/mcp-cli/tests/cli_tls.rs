//! `mcp serve --tls-cert` in a child process, and `mcp call|ping|health --tls`, `mcp demo
//! --tls` and `mcp bench --embedded --tls` as a user would run them, with certificates made
//! per test and written to a temporary directory.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_test_support::tls::{TestCa, TestIdentity};
use support::{Server, run};

/// PEM files in a directory of their own, removed when dropped.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mcp-cli-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Pki { dir }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path_str(&path)
    }

    fn identity(&self, name: &str, id: &TestIdentity) -> (String, String) {
        (
            self.write(&format!("{name}.pem"), &id.cert_pem),
            self.write(&format!("{name}.key"), &id.key_pem),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_owned()
}

#[test]
fn serve_over_mutual_tls_and_call_ping_and_health_with_a_client_certificate() {
    let pki = Pki::new("mtls");
    let ca = TestCa::new("cli test CA");
    let ca_file = pki.write("ca.pem", &ca.cert_pem());
    let (server_cert, server_key) = pki.identity("server", &ca.server(&["127.0.0.1"]));
    let (client_cert, client_key) = pki.identity("client", &ca.client("cli"));
    let server = Server::start(&[
        "--tls-cert",
        &server_cert,
        "--tls-key",
        &server_key,
        "--client-ca",
        &ca_file,
    ]);
    assert!(server.banner.contains("over TLS"), "{}", server.banner);
    let tls = [
        "--tls",
        "--ca",
        &ca_file,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
    ];

    let mut args = vec!["call", &server.addr, "echo", "--raw", "over tls"];
    args.extend(tls);
    let out = run(&args);
    out.assert_code(0);
    assert_eq!(out.stdout, "over tls\n", "{out}");

    let mut args = vec!["ping", &server.addr, "-c", "2", "-i", "10ms"];
    args.extend(tls);
    let out = run(&args);
    out.assert_code(0);
    out.assert_stdout_has("over TLS");
    out.assert_stdout_has("2 sent, 2 answered, 0 lost");

    let mut args = vec!["health", &server.addr];
    args.extend(tls);
    let out = run(&args);
    out.assert_code(0);
    assert_eq!(out.stdout, "SERVING\n", "{out}");

    // Without a client certificate the server refuses, and the one line says why.
    let out = run(&[
        "call",
        &server.addr,
        "echo",
        "--raw",
        "x",
        "--tls",
        "--ca",
        &ca_file,
    ]);
    out.assert_code(1);
    out.one_error_line(&["requires a client certificate"]);

    // In the clear, a TLS server is no MCP server.
    let out = run(&[
        "call",
        &server.addr,
        "echo",
        "--raw",
        "x",
        "--timeout",
        "2s",
    ]);
    assert_ne!(out.code(), Some(0), "{out}");
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_in_one_line() {
    let pki = Pki::new("wrong-ca");
    let ca = TestCa::new("cli test CA");
    let (cert, key) = pki.identity("server", &ca.server(&["127.0.0.1"]));
    let other = pki.write("other.pem", &TestCa::new("other CA").cert_pem());
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let out = run(&["call", &server.addr, "echo", "--tls", "--ca", &other]);
    out.assert_code(1);
    out.one_error_line(&["unknown authority", "not processed"]);
}

#[cfg(unix)]
#[test]
fn sighup_makes_serve_read_its_certificate_again() {
    let pki = Pki::new("sighup");
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let old_ca_file = pki.write("old-ca.pem", &old_ca.cert_pem());
    let new_ca_file = pki.write("new-ca.pem", &new_ca.cert_pem());
    let (cert, key) = pki.identity("server", &old_ca.server(&["127.0.0.1"]));
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let call = |ca: &str| {
        run(&[
            "call",
            &server.addr,
            "echo",
            "--raw",
            "x",
            "--tls",
            "--ca",
            ca,
        ])
    };
    call(&old_ca_file).assert_code(0);

    pki.identity("server", &new_ca.server(&["127.0.0.1"]));
    let mut kill = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .spawn()
        .expect("cannot run kill");
    let status = support::wait_bounded(&mut kill, Duration::from_secs(10)).expect("kill ends");
    assert!(status.success(), "kill -HUP failed");
    let line = server.next_line(Duration::from_secs(10));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("certificates reloaded")),
        "{line:?}"
    );
    call(&new_ca_file).assert_code(0);
    call(&old_ca_file).assert_code(1);
}

#[test]
fn demo_runs_over_tls_with_certificates_made_in_memory() {
    let out = run(&["demo", "--tls", "--duration", "300ms"]);
    out.assert_code(0);
    out.assert_stdout_has("over TLS");
    out.assert_stdout_has("server shut down cleanly");
}

#[test]
fn bench_embedded_tls_compares_with_plaintext_in_one_run() {
    let out = run(&[
        "bench",
        "--embedded",
        "--tls",
        "-d",
        "300ms",
        "--warmup",
        "50ms",
        "--json",
    ]);
    out.assert_code(0);
    out.assert_stdout_has("tls/plaintext: throughput x");
    let report = out.last_line_json();
    for side in ["plaintext", "tls"] {
        assert!(report[side]["ok"].as_u64().unwrap_or(0) > 0, "{out}");
        assert_eq!(report[side]["errors"], 0, "{out}");
    }
    assert!(
        report["tls"]["handshakes_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{out}"
    );
    assert!(
        report["plaintext"]["connects_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{out}"
    );
}

#[test]
fn tls_details_without_tls_are_a_usage_error() {
    let out = run(&["call", "127.0.0.1:1", "echo", "--ca", "ca.pem"]);
    out.assert_code(2);
    let out = run(&["serve", "--tls-cert", "cert.pem"]);
    out.assert_code(2);
}

/// Two TLS replicas, each with a certificate for its own address only: a fleet over TLS
/// verifies each endpoint by its own host (one name for both would fail one of them), and
/// `--server-name` replaces that name for every endpoint.
#[test]
fn a_fleet_over_tls_verifies_each_endpoint_by_its_own_host() {
    let pki = Pki::new("fleet");
    let ca = TestCa::new("cli fleet CA");
    let ca_file = pki.write("ca.pem", &ca.cert_pem());
    let (cert1, key1) = pki.identity("one", &ca.server(&["127.0.0.1"]));
    let (cert2, key2) = pki.identity("two", &ca.server(&["127.0.0.2"]));
    let first = Server::start(&["--tls-cert", &cert1, "--tls-key", &key1]);
    let second = Server::start_on("127.0.0.2", &["--tls-cert", &cert2, "--tls-key", &key2]);
    let both = format!("{},{}", first.addr, second.addr);
    let tls = ["--tls", "--ca", ca_file.as_str()];

    let mut args = vec!["health", both.as_str()];
    args.extend(tls);
    let out = run(&args);
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        format!("{} SERVING\n{} SERVING\n", first.addr, second.addr),
        "{out}"
    );

    let mut args = vec!["ping", both.as_str(), "-c", "1"];
    args.extend(tls);
    let out = run(&args);
    out.assert_code(0);
    out.assert_stdout_has(&format!("PING {} (", first.addr));
    out.assert_stdout_has(&format!("PING {} (", second.addr));
    assert_eq!(out.stdout.matches("over TLS").count(), 2, "{out}");

    for i in 0..3 {
        let body = format!("fleet over tls {i}");
        let mut args = vec!["call", both.as_str(), "echo", "--raw", body.as_str()];
        args.extend(tls);
        let out = run(&args);
        out.assert_code(0);
        assert_eq!(out.stdout, format!("{body}\n"), "{out}");
    }

    // Through the fleet's balancer, both endpoints are reached over TLS (an endpoint that
    // failed verification would be in backoff with failures, its calls moved elsewhere).
    let mut args = vec![
        "bench",
        both.as_str(),
        "-d",
        "300ms",
        "--warmup",
        "50ms",
        "-c",
        "8",
        "--json",
    ];
    args.extend(tls);
    let out = run(&args);
    let report = out.assert_bench_report();
    let endpoints = report["endpoints"].as_array().unwrap_or_else(|| {
        panic!(
            "no endpoints
{out}"
        )
    });
    assert_eq!(endpoints.len(), 2, "{out}");
    for endpoint in endpoints {
        assert!(endpoint["attempts"].as_u64().unwrap_or(0) > 0, "{out}");
        assert_eq!(endpoint["failures"], 0, "{out}");
        assert_eq!(endpoint["state"], "ready", "{out}");
    }

    // Verified as 127.0.0.1 by --server-name, the second replica's certificate does not
    // match: health names it, and says why.
    let mut args = vec!["health", both.as_str(), "--server-name", "127.0.0.1"];
    args.extend(tls);
    let out = run(&args);
    out.assert_code(1);
    assert_eq!(out.stdout, format!("{} SERVING\n", first.addr), "{out}");
    out.one_error_line(&[&second.addr, "not valid for name"]);
}

#[test]
fn bench_embedded_tls_over_two_replicas_reports_both_in_each_run() {
    let out = run(&[
        "bench",
        "--embedded",
        "--tls",
        "--replicas",
        "2",
        "-d",
        "300ms",
        "--warmup",
        "50ms",
        "--json",
    ]);
    out.assert_code(0);
    let report = out.last_line_json();
    for side in ["plaintext", "tls"] {
        assert_eq!(report[side]["errors"], 0, "{out}");
        let endpoints = report[side]["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("no endpoints in {side}\n{out}"));
        assert_eq!(endpoints.len(), 2, "{out}");
        for (endpoint, ip) in endpoints.iter().zip(["127.0.0.1:", "127.0.0.2:"]) {
            assert!(
                endpoint["addr"].as_str().unwrap_or("").starts_with(ip),
                "{out}"
            );
            assert!(endpoint["attempts"].as_u64().unwrap_or(0) > 0, "{out}");
            assert_eq!(endpoint["failures"], 0, "{out}");
        }
    }
}
