//! Typed calls over loopback against the reference server, in JSON and Protobuf.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::{
    Bytes, CallOptions, ErrorCode, ErrorKind, FormatId, Json, Protobuf, RawRequest, TraceContext,
};
use mcp_proto::examples::v1::UserUpdate;
use mcp_server::{Reply, RequestContext, Server, Status};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Echo {
    msg: String,
}

fn user_server() -> mcp_server::ServerBuilder {
    let update = |_ctx: RequestContext, mut u: UserUpdate| async move {
        u.name = u.name.to_uppercase();
        Ok::<_, Status>(u)
    };
    Server::builder()
        .route_typed(
            "echo",
            Json,
            |_ctx, e: Echo| async move { Ok::<_, Status>(e) },
        )
        .route_typed("user.update", Json, update)
        .route_typed("user.update.pb", Protobuf, update)
        .route_typed("user.find", Json, |_ctx, id: String| async move {
            Err::<UserUpdate, _>(Status::application(1004, format!("no user {id}")))
        })
        .route_raw("raw.reverse", |_ctx, body: Bytes| async move {
            let mut v = body.to_vec();
            v.reverse();
            Ok(Reply::new(v))
        })
}

#[tokio::test]
async fn typed_calls_in_json_and_protobuf() {
    let server = serve(user_server()).await;
    let client = bounded("connect", client_for(&server).connect())
        .await
        .expect("connect");

    let back: Echo = bounded("echo", client.call("echo", &Echo { msg: "hi".into() }))
        .await
        .expect("echo");
    assert_eq!(back, Echo { msg: "hi".into() });

    let user = UserUpdate {
        user_id: "u12".into(),
        name: "ada".into(),
        age: Some(36),
    };
    // The seed's message in JSON (serde) ...
    let json: UserUpdate = bounded("json", client.call("user.update", &user))
        .await
        .expect("json");
    assert_eq!(json.name, "ADA");
    assert_eq!(json.age, Some(36));
    // ... and in Protobuf, through the same connections.
    let pb: UserUpdate = bounded(
        "protobuf",
        client.with_format(Protobuf).call("user.update.pb", &user),
    )
    .await
    .expect("protobuf");
    assert_eq!(pb, json);

    // A client built for Protobuf from the start.
    let pb_client = bounded("connect", client_for(&server).format(Protobuf).connect())
        .await
        .expect("connect");
    let pb2: UserUpdate = bounded("protobuf", pb_client.call("user.update.pb", &user))
        .await
        .expect("protobuf");
    assert_eq!(pb2, json);

    let raw = bounded(
        "raw",
        client.call_raw(RawRequest::new("raw.reverse", FormatId::RAW, &b"abc"[..])),
    )
    .await
    .expect("raw");
    assert_eq!(&raw.body()[..], b"cba");

    let m = client.metrics();
    assert_eq!(m.calls, 4);
    assert_eq!(m.succeeded, 4);
    assert_eq!(m.latency.count, 4);
    assert!(m.latency.p50 > Duration::ZERO);
    assert!(m.connections.ready >= 1, "{m:?}");
    bounded("close", client.close()).await;
    bounded("close", pb_client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn errors_of_the_server_are_typed() {
    let server = serve(user_server()).await;
    let client = client_for(&server).build().expect("build");

    let err = bounded("find", client.call::<_, UserUpdate>("user.find", "u404"))
        .await
        .expect_err("application error");
    assert_eq!(err.kind(), ErrorKind::Remote);
    let remote = err.remote().expect("remote");
    assert_eq!(remote.code(), ErrorCode(1004));
    assert_eq!(remote.message(), "no user u404");
    assert!(!err.is_retryable());

    let err = bounded(
        "unknown",
        client.call::<_, Echo>("no.such", &Echo { msg: "x".into() }),
    )
    .await
    .expect_err("unknown method");
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_METHOD));

    // A JSON body the handler's type does not accept.
    let err = bounded("bad body", client.call::<_, Echo>("echo", &42))
        .await
        .expect_err("server cannot decode");
    assert!(err.code().is_some(), "{err}");

    // An answer whose body our type does not accept.
    let err = bounded(
        "decode",
        client.call::<_, u64>("echo", &Echo { msg: "x".into() }),
    )
    .await
    .expect_err("we cannot decode");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.decode_error().is_some());

    // A method name the protocol refuses never leaves the process.
    let err = bounded(
        "invalid",
        client.call::<_, Echo>("", &Echo { msg: "x".into() }),
    )
    .await
    .expect_err("empty method");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(!err.maybe_processed());

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn calls_carry_trace_context_and_deadline() {
    #[derive(Default)]
    struct Seen {
        traceparent: Vec<String>,
        tracestate: Vec<Option<String>>,
        budget_ms: Vec<u128>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let server = serve(Server::builder().route_raw("look", move |ctx, _body| {
        let s = s.clone();
        async move {
            let mut s = s.lock().unwrap();
            s.traceparent
                .push(ctx.traceparent().unwrap_or_default().to_owned());
            s.tracestate.push(ctx.tracestate().map(str::to_owned));
            let left = ctx.deadline().map(|d| {
                d.saturating_duration_since(tokio::time::Instant::now())
                    .as_millis()
            });
            s.budget_ms.push(left.unwrap_or(0));
            Ok(Reply::empty())
        }
    }))
    .await;
    let client = client_for(&server)
        .attempt_timeout(Duration::from_millis(1500))
        .build()
        .expect("build");

    let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("valid")
        .with_tracestate("vendor=opaque");
    let _: () = bounded(
        "traced",
        client.call_with("look", &(), CallOptions::new().trace(parent.clone())),
    )
    .await
    .expect("call");
    let _: () = bounded("fresh", client.call("look", &()))
        .await
        .expect("call");

    {
        let seen = seen.lock().unwrap();
        let first = TraceContext::parse(&seen.traceparent[0]).expect("valid traceparent");
        assert_eq!(first.trace_id(), parent.trace_id());
        assert_ne!(first.span_id(), parent.span_id());
        assert_eq!(seen.tracestate[0].as_deref(), Some("vendor=opaque"));
        let second = TraceContext::parse(&seen.traceparent[1]).expect("valid traceparent");
        assert_ne!(second.trace_id(), parent.trace_id());
        assert_eq!(seen.tracestate[1], None);
        // The server sees (about) the attempt's budget: 1.5 s, minus the time on the way.
        for ms in &seen.budget_ms {
            assert!(
                (1000..=1500).contains(ms),
                "budget seen by the server: {ms} ms"
            );
        }
    }
    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error() {
    // Bind then drop a listener: the port is very likely closed now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let result = bounded(
        "connect",
        mcp_client::Client::builder(format!("127.0.0.1:{port}"))
            .timeout(Duration::from_millis(500))
            .connect(),
    )
    .await;
    let err = result.expect_err("nobody listens");
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::Timeout),
        "{err:?}"
    );
    assert!(!err.maybe_processed());
}

/// `connect()` keeps its word: with the default budget (5 s), nobody listening is reported
/// at the first failed try, within the connect timeout, not after the whole budget spent
/// in reconnect backoff. `wait_for_ready(true)` waits for the server instead, and finds it
/// when it comes up.
#[tokio::test]
async fn connect_fails_fast_unless_asked_to_wait_for_ready() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let started = std::time::Instant::now();
    let err = bounded(
        "connect",
        mcp_client::Client::builder(addr.to_string()).connect(),
    )
    .await
    .expect_err("nobody listens");
    assert!(matches!(err.kind(), ErrorKind::Connect), "{err:?}");
    assert!(!err.maybe_processed());
    // The default connect timeout is 1 s; the old behaviour took the 5 s budget.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Waiting for ready: the server comes up 300 ms later, on the same address.
    let waiting = tokio::spawn(
        mcp_client::Client::builder(addr.to_string())
            .wait_for_ready(true)
            .connect(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = mcp_server::Server::builder()
        .route_raw("echo", |_ctx, body| async move {
            Ok(mcp_server::Reply::new(body))
        })
        .bind(addr)
        .await
        .expect("bind again");
    let client = bounded("wait for ready", waiting)
        .await
        .expect("task")
        .expect("connected once the server came up");
    bounded("close", client.close()).await;
    server
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}

#[cfg(feature = "tower")]
#[tokio::test]
async fn the_client_is_a_tower_service() {
    use tower_service::Service;

    let server = serve(user_server()).await;
    let mut client = client_for(&server)
        .limit(mcp_client::LimitConfig::new(2))
        .build()
        .expect("build");
    bounded(
        "poll_ready",
        std::future::poll_fn(|cx| client.poll_ready(cx)),
    )
    .await
    .expect("ready");
    let answer = bounded(
        "service call",
        Service::call(
            &mut client,
            RawRequest::new("raw.reverse", FormatId::RAW, &b"xyz"[..]),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(&answer.body()[..], b"zyx");
    assert_eq!(
        client.metrics().in_flight,
        0,
        "the reserved slot was released"
    );
    bounded("close", client.close()).await;
    let closed = bounded(
        "poll_ready after close",
        std::future::poll_fn(|cx| client.poll_ready(cx)),
    )
    .await;
    assert!(closed.expect_err("closed").is_closed());
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

/// `poll_ready` past the limit waits, and is woken when the slot another handle reserved
/// is used and given back; a handle dropped with a reserved slot gives it back too.
#[cfg(feature = "tower")]
#[tokio::test]
async fn poll_ready_past_the_limit_waits_for_a_slot() {
    use std::task::Poll;
    use tower_service::Service;

    let server = serve(user_server()).await;
    let mut first = client_for(&server)
        .limit(mcp_client::LimitConfig::new(1))
        .build()
        .expect("build");
    let mut second = first.clone();
    bounded(
        "first ready",
        std::future::poll_fn(|cx| first.poll_ready(cx)),
    )
    .await
    .expect("ready");
    // The only slot is reserved by `first`: `second` is not ready.
    let pending = std::future::poll_fn(|cx| Poll::Ready(second.poll_ready(cx))).await;
    assert!(pending.is_pending());
    assert_eq!(first.metrics().queued, 0, "poll_ready waits are not calls");
    let waiter = tokio::spawn(async move {
        std::future::poll_fn(|cx| second.poll_ready(cx)).await?;
        Service::call(
            &mut second,
            RawRequest::new("raw.reverse", FormatId::RAW, &b"ab"[..]),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "still waiting for the slot");
    let answer = bounded(
        "first call",
        Service::call(
            &mut first,
            RawRequest::new("raw.reverse", FormatId::RAW, &b"xyz"[..]),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(&answer.body()[..], b"zyx");
    let answer = bounded("second call", waiter)
        .await
        .expect("task")
        .expect("answer once the slot was free");
    assert_eq!(&answer.body()[..], b"ba");

    // A reserved slot goes back when its handle is dropped.
    let mut third = first.clone();
    bounded(
        "third ready",
        std::future::poll_fn(|cx| third.poll_ready(cx)),
    )
    .await
    .expect("ready");
    assert_eq!(first.metrics().in_flight, 1);
    drop(third);
    assert_eq!(first.metrics().in_flight, 0);
    bounded("close", first.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[test]
fn the_blocking_client_calls_without_async() {
    // The server needs a runtime of its own, on another thread.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(serve(user_server()));
    let addr = server.local_addr();

    let client = mcp_client::blocking::Client::connect(addr).expect("connect");
    let back: Echo = client
        .call(
            "echo",
            &Echo {
                msg: "blocking".into(),
            },
        )
        .expect("echo");
    assert_eq!(back.msg, "blocking");
    let user = UserUpdate {
        user_id: "u1".into(),
        name: "bob".into(),
        age: None,
    };
    let pb: UserUpdate = client
        .with_format(Protobuf)
        .call("user.update.pb", &user)
        .expect("protobuf");
    assert_eq!(pb.name, "BOB");

    // Pushes, read without async.
    let mut pushes = client.subscribe::<Echo>("news").expect("subscribe");
    server
        .publish_typed(
            "news",
            &Json,
            &Echo {
                msg: "extra".into(),
            },
        )
        .expect("publish");
    let news = pushes
        .recv_timeout(Duration::from_secs(5))
        .expect("a push within the bound");
    assert_eq!(news.msg, "extra");
    let quiet = pushes
        .recv_timeout(Duration::from_millis(50))
        .expect_err("nothing more");
    assert!(quiet.is_timeout());

    assert_eq!(client.close(), 0);
    // Bounded: the end of the stream is an error that says closed, a hang a timeout.
    let ended = pushes
        .recv_timeout(Duration::from_secs(5))
        .expect_err("the stream ends with the client");
    assert!(
        ended.is_closed(),
        "the stream ends with the client: {ended}"
    );
    assert!(
        client
            .call::<_, Echo>("echo", &Echo { msg: "x".into() })
            .expect_err("closed")
            .is_closed()
    );

    // Inside an async runtime the blocking client refuses instead of stalling it.
    let inside = rt.block_on(async {
        mcp_client::blocking::Client::connect("127.0.0.1:1").expect_err("refused")
    });
    assert_eq!(inside.kind(), ErrorKind::Invalid);

    rt.block_on(server.shutdown(Duration::from_secs(1)))
        .expect("shutdown");
}

/// A setting that cannot work is refused when the client is built, naming the setting,
/// instead of surfacing as calls that all time out or connections that all die.
#[tokio::test]
async fn settings_that_cannot_work_are_refused_by_name() {
    use mcp_client::{BackoffConfig, Client, ErrorKind, PoolConfig};
    let addr = "127.0.0.1:9";
    let zero_connections = PoolConfig {
        max_connections: 0,
        ..PoolConfig::default()
    };
    let mut zero_heartbeat = PoolConfig::default();
    zero_heartbeat.connection.heartbeat.timeout = Duration::ZERO;
    let shrinking_backoff = PoolConfig {
        backoff: BackoffConfig {
            multiplier: 0.5,
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    };
    let cases = [
        (
            Client::builder(addr).pool_config(zero_connections),
            "max_connections",
        ),
        (
            Client::builder(addr).pool_config(zero_heartbeat),
            "heartbeat.timeout",
        ),
        (
            Client::builder(addr).pool_config(shrinking_backoff),
            "backoff.multiplier",
        ),
        (Client::builder(addr).timeout(Duration::ZERO), "timeout"),
        (
            Client::builder(addr).attempt_timeout(Duration::ZERO),
            "attempt_timeout",
        ),
    ];
    for (builder, field) in cases {
        let err = builder.build().expect_err(field);
        assert_eq!(err.kind(), ErrorKind::Invalid, "{field}: {err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    // The defaults pass.
    assert!(Client::builder(addr).build().is_ok());
}
