use std::time::Duration;

use super::*;

#[test]
fn counts_calls_errors_and_latency() {
    let r = Recorder::default();
    for i in 1..=1000u64 {
        r.started();
        r.finished(Ok(()), true, Duration::from_micros(i * 10));
    }
    r.started();
    r.finished(Err(ErrorKind::Timeout), false, Duration::from_secs(5));
    r.started();
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
    assert_eq!(Recorder::default().latency(), LatencySnapshot::default());
}

#[test]
fn threads_record_into_shards_that_merge() {
    let r = std::sync::Arc::new(Recorder::default());
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
