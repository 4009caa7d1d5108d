//! The Prometheus example's setup, checked: calls through an embedded server, then the
//! endpoint scraped over loopback with a plain HTTP GET, and the series held against the
//! calls made (names, labels, counts).
//!
//! The `metrics` recorder is process-wide: this file is its own test binary with this one
//! test, so nothing else records into it.

#[path = "../examples/prometheus.rs"]
#[allow(clippy::duplicate_mod)]
mod example;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mcp_client::{BreakerConfig, Client, ErrorCode};
use mcp_server::{Reply, Status};

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a scrape (comments skipped; label values here hold no quotes or commas).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of the one sample named `name` whose labels are exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} twice");
    found.first().map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_match_the_calls_made() {
    let handle = example::install_recorder();
    // The example's routes, and two that make a retry and open a breaker.
    let busy = Arc::new(AtomicU32::new(0));
    let server = example::server_builder()
        .route_raw("busy", move |_ctx, body| {
            // Every other call is refused unprocessed (ERROR 5): the client retries it.
            let refuse = busy.fetch_add(1, Ordering::Relaxed) % 2 == 0;
            async move {
                if refuse {
                    return Err(Status::new(ErrorCode::OVERLOADED, "busy, try again"));
                }
                Ok(Reply::new(body))
            }
        })
        .route_raw("internal", |_ctx, _body| async {
            Err(Status::new(ErrorCode::INTERNAL, "broken"))
        })
        .bind("127.0.0.1:0")
        .await
        .expect("server");
    let port = server.local_addr().port().to_string();
    let client = Client::builder(server.local_addr().to_string())
        .connect()
        .await
        .expect("connect");

    const ECHOES: usize = 20;
    let body = serde_json::json!({ "msg": "hello" });
    let body_len = serde_json::to_vec(&body).expect("json").len();
    for _ in 0..ECHOES {
        let back: serde_json::Value = client.call("echo", &body).await.expect("echo");
        assert_eq!(back, body);
    }
    for _ in 0..3 {
        let err = client
            .call::<_, serde_json::Value>("fail", &())
            .await
            .expect_err("fails");
        assert_eq!(err.code(), Some(ErrorCode(1001)));
    }
    let err = client
        .call::<_, serde_json::Value>("nope", &())
        .await
        .expect_err("no such method");
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_METHOD));
    let _: serde_json::Value = client.call("busy", &body).await.expect("busy, then done");

    // A second client to the same server, whose breaker opens after two failures: its
    // series add to the first one's (same labels), and its connection leaves the gauges
    // when it closes.
    let fragile = Client::builder(server.local_addr().to_string())
        .breaker(BreakerConfig::default().min_calls(2).failure_rate(0.5))
        .connect()
        .await
        .expect("connect");
    for _ in 0..2 {
        let err = fragile
            .call::<_, serde_json::Value>("internal", &())
            .await
            .expect_err("internal");
        assert_eq!(err.code(), Some(ErrorCode::INTERNAL));
    }
    let err = fragile
        .call::<_, serde_json::Value>("internal", &())
        .await
        .expect_err("the breaker is open");
    assert!(err.is_circuit_open(), "{err}");
    fragile.close().await;

    let addr = example::serve_metrics(handle)
        .await
        .expect("metrics endpoint");
    let client_labels = |method: &'static str| {
        vec![
            ("rpc_system", "mcp"),
            ("rpc_method", method),
            ("server_address", "127.0.0.1"),
            ("server_port", port.as_str()),
        ]
    };
    let endpoint = [
        ("rpc_system", "mcp"),
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
    ];

    // The connection gauges follow the pools and the accept loop in tasks of their own:
    // scrape until they are in, for at most 5 s; the call series are complete at once.
    let mut samples = Vec::new();
    for _ in 0..50 {
        samples = parse(&example::scrape(addr).await.expect("scrape"));
        let client_conns = value(&samples, "mcp_client_connections", &endpoint);
        let server_conns = value(&samples, "mcp_server_connections", &endpoint);
        if client_conns == Some(1.0) && server_conns == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let echo = client_labels("echo");
    let fail = client_labels("fail");
    let nope = client_labels("nope");
    fn failed<'a>(labels: &[(&'a str, &'a str)], error: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut labels = labels.to_vec();
        labels.push(("error_type", error));
        labels
    }

    // Client: calls and attempts by method and outcome, in flight, bytes, retries.
    let n = ECHOES as f64;
    assert_eq!(get("rpc_client_call_duration_count", &echo), n);
    assert_eq!(get("mcp_client_attempt_duration_count", &echo), n);
    assert_eq!(
        get(
            "rpc_client_call_duration_count",
            &failed(&fail, "APPLICATION")
        ),
        3.0
    );
    assert_eq!(
        get(
            "mcp_client_attempt_duration_count",
            &failed(&fail, "APPLICATION")
        ),
        3.0
    );
    assert_eq!(
        get(
            "rpc_client_call_duration_count",
            &failed(&nope, "UNKNOWN_METHOD")
        ),
        1.0
    );
    assert_eq!(get("mcp_client_active_calls", &echo), 0.0);
    assert_eq!(
        get("mcp_client_sent_bytes", &echo),
        (ECHOES * body_len) as f64
    );
    assert_eq!(
        get("mcp_client_received_bytes", &echo),
        (ECHOES * body_len) as f64
    );
    assert_eq!(get("mcp_client_retries", &echo), 0.0);
    let bucket_le_5s = {
        let mut labels = echo.clone();
        labels.push(("le", "5"));
        labels
    };
    assert_eq!(
        get("rpc_client_call_duration_bucket", &bucket_le_5s),
        n,
        "a histogram in seconds: every loopback call is under 5"
    );
    // Per endpoint: the one connection, no reconnect, the breaker never moved.
    assert_eq!(get("mcp_client_connections", &endpoint), 1.0);
    assert_eq!(get("mcp_client_reconnects", &endpoint), 0.0);
    let opened = {
        let mut labels = endpoint.to_vec();
        labels.push(("mcp_breaker_state", "open"));
        labels
    };
    assert_eq!(get("mcp_client_breaker_transitions", &opened), 1.0);
    let internal = client_labels("internal");
    assert_eq!(
        get(
            "rpc_client_call_duration_count",
            &failed(&internal, "INTERNAL")
        ),
        2.0
    );
    assert_eq!(
        get(
            "rpc_client_call_duration_count",
            &failed(&internal, "circuit_open")
        ),
        1.0,
        "refused by the open breaker: a call without an attempt"
    );
    assert_eq!(
        get(
            "mcp_client_attempt_duration_count",
            &failed(&internal, "INTERNAL")
        ),
        2.0
    );
    // A retry: the first attempt refused (ERROR 5), the second answered.
    let busy = client_labels("busy");
    assert_eq!(get("mcp_client_retries", &busy), 1.0);
    assert_eq!(
        get(
            "mcp_client_attempt_duration_count",
            &failed(&busy, "OVERLOADED")
        ),
        1.0
    );
    assert_eq!(get("mcp_client_attempt_duration_count", &busy), 1.0);
    assert_eq!(get("rpc_client_call_duration_count", &busy), 1.0);
    assert_eq!(
        get(
            "rpc_server_call_duration_count",
            &failed(&busy, "OVERLOADED")
        ),
        1.0
    );
    assert_eq!(get("rpc_server_call_duration_count", &busy), 1.0);

    // Server: handler durations by route and outcome, nothing in flight, the refusal of
    // the unknown method (no handler ran for it), the connection.
    assert_eq!(get("rpc_server_call_duration_count", &echo), n);
    assert_eq!(
        get(
            "rpc_server_call_duration_count",
            &failed(&fail, "APPLICATION")
        ),
        3.0
    );
    assert_eq!(get("mcp_server_active_calls", &echo), 0.0);
    assert_eq!(
        get("mcp_server_refused", &failed(&endpoint, "UNKNOWN_METHOD")),
        1.0
    );
    assert_eq!(get("mcp_server_connections", &endpoint), 1.0);
    assert!(
        value(&samples, "rpc_server_call_duration_count", &nope).is_none(),
        "an unknown method has no server series of its own"
    );

    client.close().await;
    server
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}
