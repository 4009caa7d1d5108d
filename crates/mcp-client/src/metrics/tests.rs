use std::time::Duration;

use super::*;

#[test]
fn counts_calls_errors_and_latency() {
    let r = Recorder::new("127.0.0.1:7000");
    for i in 1..=1000u64 {
        let _call = r.started("echo");
        r.finished(Ok(()), true, Duration::from_micros(i * 10));
    }
    let _call = r.started("echo");
    r.finished(Err(ErrorKind::Timeout), false, Duration::from_secs(5));
    let _call = r.started("echo");
    r.finished(Err(ErrorKind::Remote), true, Duration::from_micros(10_000));
    r.error(ErrorKind::Connect);

    assert_eq!(r.calls(), 1002);
    assert_eq!(r.succeeded(), 1000);
    let errors = r.errors();
    assert_eq!(errors.get(ErrorKind::Timeout), 1);
    assert_eq!(errors.get(ErrorKind::Remote), 1);
    assert_eq!(errors.get(ErrorKind::Connect), 1);
    assert_eq!(errors.total(), 3);
    assert_eq!(errors.iter().count(), 3);

    let l = r.latency();
    // The timeout that never got an answer is not in the histogram.
    assert_eq!(l.count, 1001);
    let near = |d: Duration, us: u64| {
        let got = u64::try_from(d.as_micros()).expect("small");
        got.abs_diff(us) <= us / 100 + 1
    };
    assert!(near(l.p50, 5_000), "{l:?}");
    assert!(near(l.p90, 9_000), "{l:?}");
    assert!(near(l.p99, 9_910), "{l:?}");
    assert!(near(l.max, 10_000), "{l:?}");
    assert!(near(l.min, 10), "{l:?}");
    assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
}

#[test]
fn empty_latency_is_zero() {
    assert_eq!(
        Recorder::new("127.0.0.1:7000").latency(),
        LatencySnapshot::default()
    );
}

#[test]
fn threads_record_into_shards_that_merge() {
    let r = std::sync::Arc::new(Recorder::new("127.0.0.1:7000"));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let r = std::sync::Arc::clone(&r);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    r.finished(Ok(()), true, Duration::from_millis(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(r.latency().count, 800);
    assert_eq!(r.succeeded(), 800);
}

#[cfg(feature = "metrics")]
#[test]
fn endpoint_labels_split_host_and_port() {
    let labels = |endpoint: &str| -> Vec<(String, String)> {
        super::facade::endpoint_labels(endpoint)
            .iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        labels("127.0.0.1:7000"),
        pairs(&[
            ("rpc.system", "mcp"),
            ("server.address", "127.0.0.1"),
            ("server.port", "7000")
        ])
    );
    assert_eq!(
        labels("[::1]:7000"),
        pairs(&[
            ("rpc.system", "mcp"),
            ("server.address", "::1"),
            ("server.port", "7000")
        ])
    );
    assert_eq!(
        labels("dns:users.internal:7000"),
        pairs(&[
            ("rpc.system", "mcp"),
            ("server.address", "users.internal"),
            ("server.port", "7000")
        ])
    );
    assert_eq!(
        labels("10.0.0.1:7000,10.0.0.2:7000"),
        pairs(&[
            ("rpc.system", "mcp"),
            ("server.address", "10.0.0.1:7000,10.0.0.2:7000")
        ])
    );
    assert_eq!(
        labels("discovery"),
        pairs(&[("rpc.system", "mcp"), ("server.address", "discovery")])
    );
}
