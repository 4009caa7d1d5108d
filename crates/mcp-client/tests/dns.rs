//! DNS discovery against a real DNS server in the test (hickory-server on 127.0.0.1, a free
//! port, UDP and TCP) whose answer the test changes: a growing set is followed within one
//! interval with every connection kept; a shrinking set drains the removed endpoint without
//! a failed call; a failing and an empty answer keep the last good set. The replicas are
//! in-process servers on 127.0.0.2, 127.0.0.3, ... sharing one port, as replicas behind one
//! name do.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Header, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use mcp_client::{
    BackoffConfig, BreakerConfig, Bytes, CallOptions, Client, DefaultFormat, DnsConfig,
    EndpointState, Fleet, FormatId, PoolConfig, RawRequest,
};
use mcp_server::{Reply, Server, ServerHandle};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(20);
const HOST: &str = "svc.mcp.test";
const INTERVAL: Duration = Duration::from_millis(300);

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

/// What the test's DNS server answers for [`HOST`]: these A records, or SERVFAIL.
#[derive(Default)]
struct Zone {
    ips: Vec<Ipv4Addr>,
    fail: bool,
    queries: u64,
}

#[derive(Clone)]
struct Answers(Arc<Mutex<Zone>>);

#[async_trait::async_trait]
impl RequestHandler for Answers {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let (fail, ips) = {
            let mut zone = self.0.lock().unwrap();
            zone.queries += 1;
            (zone.fail, zone.ips.clone())
        };
        let asked = request
            .queries()
            .first()
            .map(|q| (q.name().clone(), q.query_type()));
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let name = Name::from_ascii(format!("{HOST}.")).unwrap();
        let sent = match asked {
            _ if fail => {
                response
                    .send_response(builder.error_msg(request.header(), ResponseCode::ServFail))
                    .await
            }
            Some((asked, RecordType::A)) if Name::from(asked.clone()) == name => {
                let records: Vec<Record> = ips
                    .iter()
                    .map(|&ip| Record::from_rdata(name.clone(), 0, RData::A(A(ip))))
                    .collect();
                response
                    .send_response(builder.build(header, records.iter(), [], [], []))
                    .await
            }
            // AAAA, or another name: no records.
            _ => {
                response
                    .send_response(builder.build_no_records(header))
                    .await
            }
        };
        sent.unwrap_or_else(|_| {
            let mut h = Header::new();
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        })
    }
}

/// A DNS server on 127.0.0.1 (UDP and TCP on one free port).
async fn dns_server(zone: Arc<Mutex<Zone>>) -> (SocketAddr, ServerFuture<Answers>) {
    // A free UDP port may be taken for TCP by another test running at the same time: try
    // other ports (bounded) until both bind.
    let mut tries = 0;
    let (udp, tcp, addr) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(err) => {
                tries += 1;
                assert!(tries < 50, "no port free for both UDP and TCP: {err}");
            }
        }
    };
    let mut server = ServerFuture::new(Answers(zone));
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(2));
    (addr, server)
}

/// A replica answering `who` with its host number, on `127.0.0.{host}:{port}`.
async fn replica(host: u8, port: u16) -> ServerHandle {
    let name = Bytes::from(format!("r{host}"));
    Server::builder()
        .route_raw("who", move |_ctx, _body| {
            let name = name.clone();
            async move { Ok(Reply::new(name)) }
        })
        .bind(format!("127.0.0.{host}:{port}"))
        .await
        .expect("bind a replica")
}

fn who() -> RawRequest {
    RawRequest::new("who", FormatId::RAW, Bytes::new()).with_options(CallOptions::new())
}

fn set(zone: &Arc<Mutex<Zone>>, hosts: &[u8], fail: bool) {
    let mut zone = zone.lock().unwrap();
    zone.ips = hosts.iter().map(|&h| Ipv4Addr::new(127, 0, 0, h)).collect();
    zone.fail = fail;
}

fn members(client: &Client<DefaultFormat, Fleet>) -> Vec<(String, EndpointState)> {
    client
        .metrics()
        .endpoints
        .into_iter()
        .map(|e| (e.addr, e.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_its_dns_name() {
    // Replicas first: the second and third take the first's port on their own addresses.
    let r2 = replica(2, 0).await;
    let port = r2.local_addr().port();
    let r3 = replica(3, port).await;

    let zone = Arc::new(Mutex::new(Zone::default()));
    set(&zone, &[2], false);
    let (dns_addr, mut dns) = dns_server(zone.clone()).await;
    let dns_task = tokio::spawn(async move { dns.block_until_done().await });

    let config = DnsConfig {
        interval: INTERVAL,
        min_refresh: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        name_servers: vec![dns_addr],
    };
    let pool = PoolConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    };
    let client = Client::dns_with(format!("{HOST}:{port}"), config)
        .pool_config(pool)
        .breaker(BreakerConfig::disabled())
        .wait_for_ready(true)
        .connect()
        .await
        .expect("connect through the name");

    // Calls run all along; none may fail, whatever the name does.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = client.call_raw(who()).await.expect("no call fails");
                seen.push((Instant::now(), answer.into_body()));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let snapshot = client.metrics().endpoints;
    assert_eq!(snapshot.len(), 1);
    assert_eq!(
        snapshot[0].server_name.as_deref(),
        Some(HOST),
        "the host name, not the IP, is the server name"
    );

    // Grows: followed within one interval (plus its jitter), the first connection kept.
    let grown = Instant::now();
    set(&zone, &[2, 3], false);
    bounded("the grown set is followed", async {
        while members(&client).len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let followed = grown.elapsed();
    assert!(
        followed <= INTERVAL.mul_f64(1.1) + Duration::from_millis(100),
        "followed after {followed:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.metrics().reconnects, 0, "a connection was replaced");

    // Shrinks: r2 drains and closes.
    let shrunk = Instant::now();
    set(&zone, &[3], false);
    let r2_addr = format!("127.0.0.2:{port}");
    bounded("the removed endpoint closes", async {
        while members(&client).iter().any(|(addr, _)| *addr == r2_addr) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // Fails, then answers nothing: the last good set stays.
    set(&zone, &[3], true);
    let queries = zone.lock().unwrap().queries;
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(
        zone.lock().unwrap().queries > queries,
        "the name was asked again"
    );
    set(&zone, &[], false);
    tokio::time::sleep(INTERVAL * 3).await;
    let now = members(&client);
    assert_eq!(
        now,
        vec![(format!("127.0.0.3:{port}"), EndpointState::Ready)],
        "the last good set stays"
    );

    stop.store(true, Ordering::Relaxed);
    let seen = bounded("the caller", caller).await.unwrap();
    let served: HashSet<&[u8]> = seen.iter().map(|(_, body)| &body[..]).collect();
    assert!(
        served.contains(&b"r3"[..]),
        "the added replica served calls"
    );
    let late_r2 = seen
        .iter()
        .filter(|(at, body)| &body[..] == b"r2" && *at > shrunk + INTERVAL * 2)
        .count();
    assert_eq!(late_r2, 0, "the removed replica took calls after it left");

    bounded("close", client.close_within(Duration::from_millis(200))).await;
    dns_task.abort();
    for r in [r2, r3] {
        let _ = bounded("shutdown", r.shutdown(Duration::from_millis(100))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dns_targets_are_refused_by_name() {
    for target in ["no-port", "host:http", ":7000"] {
        let err = Client::dns(target).build().unwrap_err();
        assert!(
            err.to_string().contains("invalid DNS target"),
            "{target}: {err}"
        );
    }
}
