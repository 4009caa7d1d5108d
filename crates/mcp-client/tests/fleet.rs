//! One client over a fleet of in-process replicas on distinct loopback addresses
//! (127.0.0.2, 127.0.0.3, ...): a replica killed under load, a slow replica under p2c and
//! under round-robin, a replica added and one removed through discovery, weights and hash
//! keys. Raw bodies: each replica answers `who` with its own name, so a test can count who
//! served what.
//!
//! A replica is a real server on 127.0.0.1 behind a [`FaultProxy`] listening on its own
//! address: killing it is the proxy refusing new connections and resetting open ones (what a
//! crashed process looks like from the client), restarting it is the proxy accepting again.
//! Every await that could hang is bounded; shares are asserted with wide margins.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use mcp_client::{
    BackoffConfig, BalanceConfig, BreakerConfig, Bytes, CallOptions, Change, Client, ClientBuilder,
    DefaultFormat, EjectionConfig, EndpointState, Fleet, FormatId, Instance, Picker, PoolConfig,
    RawRequest, Stream,
};
use mcp_server::{Reply, Server, ServerHandle};
use mcp_test_support::fault_proxy::FaultProxy;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Every await that could hang in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

/// A replica: a server answering `who` with `name` after `delay`, reached through a proxy
/// on `127.0.0.{host}`.
struct Replica {
    server: ServerHandle,
    proxy: FaultProxy,
}

impl Replica {
    async fn start(host: u8, delay: Duration) -> Replica {
        let name = format!("r{host}");
        let reply = Bytes::from(name.clone());
        let server = Server::builder()
            .route_raw("who", move |_ctx, _body| {
                let reply = reply.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(Reply::new(reply))
                }
            })
            .bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let listen: SocketAddr = format!("127.0.0.{host}:0").parse().unwrap();
        let proxy = FaultProxy::start_on(listen, server.local_addr())
            .await
            .expect("a proxy on its own loopback address");
        Replica { server, proxy }
    }

    fn addr(&self) -> String {
        self.proxy.addr().to_string()
    }

    /// As a crash looks from outside: connects refused, open connections reset.
    async fn kill(&self) {
        self.proxy.refuse_new().await;
        self.proxy.reset_all();
    }

    async fn restart(&self) {
        self.proxy.accept_new().await;
    }

    async fn stop(self) {
        self.proxy.shutdown().await;
        let _ = bounded("shutdown", self.server.shutdown(Duration::from_millis(100))).await;
    }
}

async fn replicas(n: u8, delay: impl Fn(u8) -> Duration) -> Vec<Replica> {
    let mut all = Vec::new();
    for host in 2..2 + n {
        all.push(Replica::start(host, delay(host)).await);
    }
    all
}

/// Pool settings for tests: reconnects within tens of milliseconds.
fn pool() -> PoolConfig {
    PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    }
}

/// Ejections short enough for a test.
fn balance(picker: Picker) -> BalanceConfig {
    BalanceConfig {
        picker,
        ejection: EjectionConfig {
            base_time: Duration::from_millis(500),
            ..EjectionConfig::default()
        },
        ..BalanceConfig::default()
    }
}

fn fleet_of(all: &[Replica], picker: Picker) -> ClientBuilder<DefaultFormat, Fleet> {
    Client::fleet(all.iter().map(Replica::addr))
        .pool_config(pool())
        .balance(balance(picker))
        .breaker(BreakerConfig::disabled())
}

fn who(options: CallOptions) -> RawRequest {
    RawRequest::new("who", FormatId::RAW, Bytes::new()).with_options(options)
}

/// Calls `who` `n` times from `tasks` tasks at once; returns the calls each replica served.
async fn spread(
    client: &Client<DefaultFormat, Fleet>,
    tasks: usize,
    n: usize,
    options: impl Fn(usize) -> CallOptions,
) -> HashMap<String, usize> {
    let mut joins = Vec::new();
    for t in 0..tasks {
        let client = client.clone();
        let options: Vec<CallOptions> = (0..n / tasks).map(|i| options(t * n + i)).collect();
        joins.push(tokio::spawn(async move {
            let mut served = HashMap::<String, usize>::new();
            for o in options {
                let answer = client.call_raw(who(o)).await.expect("who");
                let name = String::from_utf8(answer.body().to_vec()).unwrap();
                *served.entry(name).or_default() += 1;
            }
            served
        }));
    }
    let mut served = HashMap::new();
    for join in joins {
        for (name, count) in bounded("the callers", join).await.unwrap() {
            *served.entry(name).or_default() += count;
        }
    }
    served
}

fn share(served: &HashMap<String, usize>, name: &str) -> f64 {
    let total: usize = served.values().sum();
    served.get(name).copied().unwrap_or(0) as f64 / total as f64
}

fn state_of(client: &Client<DefaultFormat, Fleet>, addr: &str) -> EndpointState {
    client
        .metrics()
        .endpoints
        .into_iter()
        .find(|e| e.addr == addr)
        .map(|e| e.state)
        .expect("the endpoint is in the snapshot")
}

/// Waits (bounded) until `condition` holds, checking every 20 ms.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    bounded(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_under_load() {
    let all = replicas(3, |_| Duration::from_millis(2)).await;
    let client = fleet_of(&all, Picker::PeakEwma)
        .connect()
        .await
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            // Odd tasks make idempotent calls, even ones calls that must not be sent twice.
            let idempotent = t % 2 == 1;
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let options = CallOptions::new().set_idempotent(idempotent);
                match client.call_raw(who(options)).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (idempotent, ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = &all[0];
    dead.kill().await;
    let dead_addr = dead.addr();
    until("the dead replica is ejected", || {
        state_of(&client, &dead_addr) == EndpointState::Ejected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    dead.restart().await;
    let waiting = client.clone();
    let back = tokio::time::timeout(BOUND, async {
        while state_of(&waiting, &dead_addr) != EndpointState::Ready {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "the restarted replica is not back: {:#?}",
        client.metrics().endpoints
    );
    let before = attempts_of(&client, &dead_addr);
    until("the restarted replica takes calls again", || {
        attempts_of(&client, &dead_addr) > before + 10
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for caller in callers {
        let (idempotent, ok, failed) = bounded("a caller", caller).await.unwrap();
        total += ok;
        if idempotent {
            assert!(failed.is_empty(), "idempotent calls failed: {failed:?}");
        }
        for e in failed {
            assert!(
                e.maybe_processed(),
                "a call failed though it was certainly not processed: {e}"
            );
        }
    }
    assert!(total > 100, "the load ran: {total} calls");
    let ejections = client
        .metrics()
        .endpoints
        .iter()
        .find(|e| e.addr == dead_addr)
        .unwrap()
        .ejections;
    assert!(ejections >= 1);
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    for r in all {
        r.stop().await;
    }
}

fn attempts_of(client: &Client<DefaultFormat, Fleet>, addr: &str) -> u64 {
    client
        .metrics()
        .endpoints
        .into_iter()
        .find(|e| e.addr == addr)
        .map_or(0, |e| e.attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_few_calls_under_p2c_and_its_third_under_round_robin() {
    // r2 answers in 20 ms, the others in 2 ms.
    let all = replicas(3, |host| {
        Duration::from_millis(if host == 2 { 20 } else { 2 })
    })
    .await;
    let mut shares = Vec::new();
    for picker in [Picker::PeakEwma, Picker::RoundRobin] {
        let client = fleet_of(&all, picker).connect().await.expect("connect");
        let served = spread(&client, 6, 1200, |_| CallOptions::new()).await;
        shares.push(share(&served, "r2"));
        bounded("close", client.close_within(Duration::from_millis(200))).await;
    }
    let (p2c, round_robin) = (shares[0], shares[1]);
    assert!(
        p2c <= 0.20,
        "p2c + peak EWMA sent {p2c} of the calls to the slow one"
    );
    assert!(
        (0.30..=0.37).contains(&round_robin),
        "round-robin sent {round_robin} of the calls to the slow one"
    );
    for r in all {
        r.stop().await;
    }
}

/// A client over a discovery source the test feeds by hand, which starts with the first two
/// of `all`; the sender feeds it more.
async fn discovered_with_first_two(
    all: &[Replica],
) -> (mpsc::UnboundedSender<Change>, Client<DefaultFormat, Fleet>) {
    let (changes, rx) = mpsc::unbounded_channel();
    changes
        .send(Change::Reset(vec![
            Instance::new(all[0].addr()),
            Instance::new(all[1].addr()),
        ]))
        .unwrap();
    let client = Client::discover(Changes(rx))
        .pool_config(pool())
        .balance(balance(Picker::PeakEwma))
        .breaker(BreakerConfig::disabled())
        .wait_for_ready(true)
        .connect()
        .await
        .expect("connect");
    (changes, client)
}

/// A discovery source the test feeds by hand.
struct Changes(mpsc::UnboundedReceiver<Change>);

impl Stream for Changes {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_adds_a_replica_that_takes_calls_within_a_second_and_drains_a_removed_one() {
    let all = replicas(3, |_| Duration::from_millis(1)).await;
    let (changes, client) = discovered_with_first_two(&all).await;
    let served = spread(&client, 4, 200, |_| CallOptions::new()).await;
    assert!(!served.contains_key("r4"), "not a member yet: {served:?}");

    // Callers keep going while r4 joins; it must serve a call within a second of joining.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Any failure fails the test: neither a join nor a drain may cost a call.
                let answer = client.call_raw(who(CallOptions::new())).await.expect("who");
                seen.push((Instant::now(), answer.into_body()));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let joined = Instant::now();
    changes
        .send(Change::Insert(Instance::new(all[2].addr())))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Now r2 leaves under load: its calls in flight finish, new ones go elsewhere.
    let left = Instant::now();
    changes.send(Change::Remove(all[0].addr())).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut first_r4 = None::<Instant>;
    let mut r2_after = 0;
    for caller in callers {
        for (at, body) in bounded("a caller", caller).await.unwrap() {
            if &body[..] == b"r4" {
                first_r4 = Some(first_r4.map_or(at, |f| f.min(at)));
            }
            // A call answered by r2 well after it left (more than a call's time).
            if &body[..] == b"r2" && at > left + Duration::from_millis(200) {
                r2_after += 1;
            }
        }
    }
    let first_r4 = first_r4.expect("the new replica served calls");
    let delay = first_r4 - joined;
    assert!(delay < Duration::from_secs(1), "r4 took {delay:?} to serve");
    assert_eq!(r2_after, 0, "the removed replica still took calls");
    until("the removed replica is closed", || {
        client
            .metrics()
            .endpoints
            .iter()
            .all(|e| e.addr != all[0].addr())
    })
    .await;
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    for r in all {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_hash_keys_route_as_stated() {
    let all = replicas(3, |_| Duration::ZERO).await;
    // Weights 1, 2, 3 under round-robin: exactly their shares, call after call.
    let weighted = [
        Instance::new(all[0].addr()).with_weight(1),
        Instance::new(all[1].addr()).with_weight(2),
        Instance::new(all[2].addr()).with_weight(3),
    ];
    let client = Client::fleet(weighted.clone())
        .pool_config(pool())
        .balance(balance(Picker::RoundRobin))
        .connect()
        .await
        .expect("connect");
    let served = spread(&client, 1, 600, |_| CallOptions::new()).await;
    assert_eq!(served["r2"], 100, "{served:?}");
    assert_eq!(served["r3"], 200, "{served:?}");
    assert_eq!(served["r4"], 300, "{served:?}");

    // A key goes to one replica, every time; many keys reach every replica.
    let mut homes = HashMap::new();
    for key in 0..60u32 {
        let served = spread(&client, 1, 5, |_| CallOptions::new().hash_key(&key)).await;
        assert_eq!(served.len(), 1, "key {key} went to {served:?}");
        homes.insert(key, served.into_keys().next().unwrap());
    }
    let mut replicas_used: Vec<&String> = homes.values().collect();
    replicas_used.sort();
    replicas_used.dedup();
    assert_eq!(replicas_used.len(), 3, "60 keys reached {replicas_used:?}");
    // Another client of the same fleet (another picker, listed in another order) agrees
    // on every key: the ring comes from the addresses and weights alone.
    let mut reversed = weighted.to_vec();
    reversed.reverse();
    let other = Client::fleet(reversed)
        .pool_config(pool())
        .build()
        .expect("build");
    for (key, home) in &homes {
        let served = spread(&other, 1, 1, |_| CallOptions::new().hash_key(key)).await;
        assert!(served.contains_key(home), "key {key}: {served:?} vs {home}");
    }
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    bounded("close", other.close_within(Duration::from_millis(200))).await;
    for r in all {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fleets_are_refused_by_name() {
    let err = Client::fleet(Vec::<String>::new()).build().unwrap_err();
    assert!(err.to_string().contains("at least one address"), "{err}");
    let err = Client::fleet([Instance::new("127.0.0.2:1").with_weight(0)])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("weight 0"), "{err}");
    let (_tx, rx) = mpsc::unbounded_channel();
    let builder = Client::discover(Changes(rx));
    let first = builder
        .clone()
        .build()
        .expect("the first client takes the stream");
    let err = builder.build().unwrap_err();
    assert!(err.to_string().contains("already taken"), "{err}");
    first.close_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_moves_when_its_replica_dies() {
    let all = replicas(2, |_| Duration::ZERO).await;
    let client = fleet_of(&all, Picker::PeakEwma)
        .connect()
        .await
        .expect("connect");
    let mut sub = bounded("subscribe", client.subscribe_raw("tick"))
        .await
        .expect("subscribe");
    // Each replica publishes its own name; the subscription hears the one it is on.
    let publish_all = |all: &[Replica]| {
        for (i, r) in all.iter().enumerate() {
            let _ = r
                .server
                .publish("tick", FormatId::RAW, Bytes::from(format!("r{}", i + 2)));
        }
    };
    let first = bounded("a first push", async {
        loop {
            publish_all(&all);
            match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                Ok(Some(push)) => break push.into_body(),
                Ok(None) => panic!("the subscription ended: {:?}", sub.error()),
                Err(_) => {}
            }
        }
    })
    .await;
    let on = usize::from(&first[..] == b"r3");
    all[on].kill().await;
    let moved = bounded("a push from the other replica", async {
        loop {
            publish_all(&all);
            match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                Ok(Some(push)) if push.body() != &first => break push.into_body(),
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("the subscription ended: {:?}", sub.error()),
            }
        }
    })
    .await;
    assert_ne!(moved, first);
    drop(sub);
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    for r in all {
        r.stop().await;
    }
}

/// `subscribe_all` hears every replica, a replica that joins through discovery once it is
/// a member, and no longer one that was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_all_merges_every_replica_and_follows_the_members() {
    let all = replicas(3, |_| Duration::ZERO).await;
    let (changes, client) = discovered_with_first_two(&all).await;
    let mut sub = bounded("subscribe_all", client.subscribe_all_raw("tick"))
        .await
        .expect("subscribe_all");
    // Each replica publishes its name until the subscription has heard every one wanted;
    // a name not wanted fails the test.
    async fn hear(
        sub: &mut mcp_client::RawSubscription,
        all: &[Replica],
        wanted: &[&str],
        not: &[&str],
    ) {
        let mut heard = std::collections::HashSet::new();
        bounded("pushes from every member", async {
            while heard.len() < wanted.len() {
                for (i, r) in all.iter().enumerate() {
                    let name = format!("r{}", i + 2);
                    let _ = r.server.publish("tick", FormatId::RAW, Bytes::from(name));
                }
                while let Ok(Some(push)) =
                    tokio::time::timeout(Duration::from_millis(30), sub.next()).await
                {
                    let name = String::from_utf8(push.body().to_vec()).unwrap();
                    assert!(!not.contains(&name.as_str()), "heard {name}, not a member");
                    assert!(wanted.contains(&name.as_str()), "heard {name}");
                    heard.insert(name);
                }
            }
        })
        .await;
    }
    hear(&mut sub, &all, &["r2", "r3"], &["r4"]).await;
    changes
        .send(Change::Insert(Instance::new(all[2].addr())))
        .unwrap();
    hear(&mut sub, &all, &["r2", "r3", "r4"], &[]).await;
    changes.send(Change::Remove(all[0].addr())).unwrap();
    // Pushes of r2 already on their way may still come: wait for a round without it, then
    // it must never be heard again.
    bounded("r2 dropped", async {
        loop {
            let mut round = std::collections::HashSet::new();
            for (i, r) in all.iter().enumerate() {
                let name = format!("r{}", i + 2);
                let _ = r.server.publish("tick", FormatId::RAW, Bytes::from(name));
            }
            while let Ok(Some(push)) =
                tokio::time::timeout(Duration::from_millis(50), sub.next()).await
            {
                round.insert(push.into_body());
            }
            if round.len() == 2 && !round.contains(&Bytes::from_static(b"r2")) {
                break;
            }
        }
    })
    .await;
    hear(&mut sub, &all, &["r3", "r4"], &["r2"]).await;
    // A plain subscription on the same fleet hears one replica only.
    let mut one = bounded("subscribe", client.subscribe_raw("tick"))
        .await
        .expect("subscribe");
    let mut names = std::collections::HashSet::new();
    for _ in 0..20 {
        for (i, r) in all.iter().enumerate() {
            let _ = r
                .server
                .publish("tick", FormatId::RAW, Bytes::from(format!("r{}", i + 2)));
        }
        while let Ok(Some(push)) = tokio::time::timeout(Duration::from_millis(20), one.next()).await
        {
            names.insert(push.into_body());
        }
    }
    assert_eq!(names.len(), 1, "{names:?}");
    drop((sub, one));
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    for r in all {
        r.stop().await;
    }
}

/// A call made before the discovery source's first list waits for it (within its budget)
/// instead of failing for want of endpoints; once a list came, an empty fleet fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_before_the_first_list_waits_for_it() {
    let all = replicas(1, |_| Duration::ZERO).await;
    let (changes, rx) = mpsc::unbounded_channel();
    let client = Client::discover(Changes(rx))
        .pool_config(pool())
        .balance(balance(Picker::PeakEwma))
        .breaker(BreakerConfig::disabled())
        .build()
        .expect("build");
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call_raw(who(CallOptions::new())).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished(), "the call waits for the first list");
    changes
        .send(Change::Reset(vec![Instance::new(all[0].addr())]))
        .unwrap();
    let answer = bounded("the waiting call", call).await.expect("task");
    assert_eq!(&answer.expect("answered").into_body()[..], b"r2");
    changes.send(Change::Reset(Vec::new())).unwrap();
    let empty = bounded("a call on an empty fleet", async {
        loop {
            match client.call_raw(who(CallOptions::new())).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => break e,
            }
        }
    })
    .await;
    assert!(empty.to_string().contains("no endpoints"), "{empty}");
    bounded("close", client.close_within(Duration::from_millis(200))).await;
    for r in all {
        r.stop().await;
    }
}
