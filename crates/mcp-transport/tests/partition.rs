//! A network partition of a 20-connection pool, through the fault proxy: every connection
//! is blackholed, found dead by the heartbeat, and the pool reconnects through the partition
//! and after it. The connects are made one at a time (the connector task is the only place
//! connects happen), spread by the backoff's jitter rather than in a storm, and the pool is
//! whole again once the network is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcp_codec::format;
use mcp_test_support::EchoServer;
use mcp_test_support::fault_proxy::{FaultProxy, Faults};
use mcp_transport::{
    Answer, BackoffConfig, CallDeadline, Connect, ConnectionConfig, HeartbeatConfig, Meta, Pool,
    PoolConfig, TcpConnect, TransportError,
};
use tokio::time::Instant;

/// Every wait here is bounded by this.
const BOUND: Duration = Duration::from_secs(20);

mod common;

/// Waits for `done`, failing the test after [`BOUND`].
async fn until(what: &str, done: impl FnMut() -> bool) {
    common::until_within(BOUND, what, done).await;
}

/// A TCP connect that counts the connects in flight at once, and notes when each started.
struct CountingConnect {
    tcp: TcpConnect,
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    starts: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl Connect for CountingConnect {
    type Io = <TcpConnect as Connect>::Io;

    async fn connect(&self, timeout: Duration) -> Result<Self::Io, TransportError> {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        // The fault: a slow connect, long enough that two connects made at once would
        // overlap.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let result = self.tcp.connect(timeout).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn endpoint(&self) -> &str {
        self.tcp.endpoint()
    }
}

async fn echo(pool: &Pool, body: &[u8], within: Duration) -> Result<(), TransportError> {
    match pool
        .call(
            "echo",
            format::RAW,
            &Meta::new(),
            body,
            CallDeadline::timeout(within),
        )
        .await?
    {
        Answer::Response(r) => {
            assert_eq!(r.body().as_ref(), body, "its own answer");
            Ok(())
        }
        Answer::Error(e) => panic!("the echo server answered {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_pool_of_twenty_reconnects_one_at_a_time_spread_by_jitter() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr()).await;
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let most = Arc::new(AtomicUsize::new(0));
    let connect = CountingConnect {
        tcp: TcpConnect::new(proxy.addr().to_string()),
        in_flight: Arc::new(AtomicUsize::new(0)),
        most: most.clone(),
        starts: starts.clone(),
    };
    let config = PoolConfig {
        connection: ConnectionConfig {
            connect_timeout: Duration::from_secs(1),
            heartbeat: HeartbeatConfig {
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(200),
            },
            ..ConnectionConfig::default()
        },
        max_connections: 20,
        min_connections: 20,
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            // Few enough that the partition outlasts a series: the endpoint is reported
            // down, yet the warm minimum keeps the connector trying.
            max_tries: 3,
            ..BackoffConfig::default()
        },
        maintenance_interval: Duration::from_millis(20),
        ..PoolConfig::default()
    };
    let pool = Pool::with_connector(connect, config);
    until("20 connections warm", || pool.stats().open == 20).await;
    echo(&pool, b"before", BOUND).await.expect("a call before");

    // The partition: nothing crosses either way, and new connections are refused.
    proxy.refuse_new().await;
    proxy.set_both(Faults::none().blackhole());
    let cut = Instant::now();
    let during = echo(&pool, b"during", Duration::from_millis(600)).await;
    assert!(during.is_err(), "nothing is answered through a partition");
    until("every connection found dead", || pool.stats().open == 0).await;
    let found_dead = cut.elapsed();
    assert!(
        found_dead < Duration::from_secs(3),
        "the heartbeat (200 + 200 ms) finds the partition: {found_dead:?}"
    );
    // Let the pool try through the partition past one backoff series (3 tries).
    until("the connector keeps trying through the partition", || {
        pool.stats().connect_failures > 3
    })
    .await;
    let tries_during = {
        let starts = starts.lock().unwrap_or_else(|p| p.into_inner());
        starts.iter().filter(|t| **t > cut).count()
    };
    assert!(
        pool.stats().connect_failures > 3,
        "the connector kept trying past a series: {:?}",
        pool.stats()
    );

    // The network heals.
    proxy.clear();
    proxy.accept_new().await;
    let healed = Instant::now();
    let whole = tokio::time::timeout(
        BOUND,
        common::until_within(BOUND, "the pool whole again", || pool.stats().open >= 20),
    )
    .await;
    let after_heal = starts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|t| **t > healed)
        .count();
    assert!(
        whole.is_ok(),
        "the pool whole again within {BOUND:?}: {:?}, {after_heal} connects tried since, proxy {:?}",
        pool.stats(),
        proxy.stats()
    );
    let rewarmed = healed.elapsed();
    echo(&pool, b"after", BOUND).await.expect("a call after");

    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "one connect in flight at a time for the endpoint"
    );
    // A storm would be 20 connections each retrying on its own schedule: from one
    // connector, a series and a little more is a handful of tries, not dozens.
    assert!(
        (1..=20).contains(&tries_during),
        "{tries_during} connect attempts during the partition"
    );
    // Full jitter: the waits between failed tries are drawn, not fixed.
    let gaps: Vec<Duration> = {
        let starts = starts.lock().unwrap_or_else(|p| p.into_inner());
        let during: Vec<Instant> = starts
            .iter()
            .copied()
            .filter(|t| *t > cut && *t < healed)
            .collect();
        during.windows(2).map(|w| w[1] - w[0]).collect()
    };
    if gaps.len() >= 3 {
        let first = gaps[0];
        assert!(
            gaps.iter()
                .any(|g| g.abs_diff(first) > Duration::from_millis(5)),
            "jittered gaps: {gaps:?}"
        );
    }
    assert!(
        rewarmed < Duration::from_secs(5),
        "20 connections back within {rewarmed:?}"
    );
    pool.close();
    proxy.shutdown().await;
}

/// A subscription outlives an outage longer than a backoff series: the pool keeps trying
/// for its subscribers, resubscribes when the server is back, and pushes flow again, with
/// no call made in between to wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_comes_back_after_an_outage_longer_than_a_backoff_series() {
    let server = EchoServer::start().await;
    let addr = server.addr();
    let config = PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            max_tries: 2,
            ..BackoffConfig::default()
        },
        maintenance_interval: Duration::from_millis(20),
        ..PoolConfig::default()
    };
    let pool = Pool::new(addr.to_string(), config);
    let mut sub = tokio::time::timeout(BOUND, pool.subscribe("orders.*"))
        .await
        .expect("subscribed in time")
        .expect("subscribed");
    assert_eq!(server.push("orders.created", b"1"), 1);
    let first = tokio::time::timeout(BOUND, sub.recv())
        .await
        .expect("a push");
    assert_eq!(first.expect("open").body(), &b"1"[..]);

    tokio::time::timeout(BOUND, server.shutdown())
        .await
        .expect("shut down");
    until("the series ran out", || pool.stats().connect_failures >= 4).await;
    // The old sockets may hold the port a moment: try again until the bind succeeds.
    let mut restarted = None;
    until("the server restarts on its address", || {
        restarted = restarted.take().or_else(|| common::rebind(addr));
        restarted.is_some()
    })
    .await;
    let server = restarted.expect("restarted");
    // No call is made: only the pool's own connector can bring the subscription back. A
    // push goes out once a connection has subscribed again.
    until("the subscription came back", || {
        server.push("orders.shipped", b"2") == 1
    })
    .await;
    let push = tokio::time::timeout(BOUND, sub.recv())
        .await
        .expect("a push");
    assert_eq!(push.expect("still open").body(), &b"2"[..]);
    pool.close();
}
