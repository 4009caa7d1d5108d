//! Credentials end to end over loopback: the client's `authorization` entry (fixed, or from
//! a provider asked on every attempt) and the server's hook, whose refusals reach the
//! caller as ERROR 10 or 11, not processed and not retried.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::{Bytes, CallOptions, ErrorCode, ErrorKind, FormatId, RawRequest};
use mcp_server::{AuthRequest, Reply, Server, ServerBuilder, Status};

/// Lets `Bearer user` call anything but `admin.*`, and `Bearer admin` everything; records
/// every `authorization` value the handlers saw.
fn guarded(seen: Arc<Mutex<Vec<String>>>) -> ServerBuilder {
    let record = move |ctx: mcp_server::RequestContext| {
        let value = ctx
            .metadata()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        seen.lock().unwrap().push(value);
    };
    let record2 = record.clone();
    Server::builder()
        .authenticate(|request: &AuthRequest<'_>| match request.authorization() {
            Some(b"Bearer admin") => Ok(()),
            Some(b"Bearer user") if !request.method().starts_with("admin.") => Ok(()),
            Some(b"Bearer user") => Err(Status::permission_denied("users may not do that")),
            Some(_) => Err(Status::unauthenticated("unknown token")),
            None => Err(Status::unauthenticated("no credentials")),
        })
        .route_raw("echo", move |ctx, body: Bytes| {
            record(ctx);
            async move { Ok(Reply::new(body)) }
        })
        .route_raw("admin.reset", move |ctx, _body| {
            record2(ctx);
            async move { Ok(Reply::new(Bytes::new())) }
        })
}

fn raw(method: &str) -> RawRequest {
    RawRequest::new(method, FormatId::RAW, &b"x"[..])
}

#[tokio::test]
async fn a_call_without_credentials_is_refused_with_code_10_and_no_handler_runs() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = serve(guarded(seen.clone())).await;
    let client = client_for(&server).build().expect("client");

    let err = bounded("echo", client.call_raw(raw("echo")))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
    assert_eq!(err.code(), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(err.remote().map(|r| r.message()), Some("no credentials"));
    assert!(!err.maybe_processed(), "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.attempts(), 1, "not retried: {err}");

    // An unknown method is refused the same way: nothing is routed before the hook.
    let err = bounded("nope", client.call_raw(raw("no.such.method")))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::UNAUTHENTICATED), "{err}");

    assert!(seen.lock().unwrap().is_empty(), "no handler ran");
    let stats = server.stats();
    assert_eq!((stats.requests, stats.auth_refused), (0, 2), "{stats:?}");
}

#[tokio::test]
async fn a_static_authorization_is_sent_with_every_call_and_checked_per_method() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = serve(guarded(seen.clone())).await;
    let client = client_for(&server)
        .authorization("Bearer user")
        .build()
        .expect("client");

    for _ in 0..2 {
        let answer = bounded("echo", client.call_raw(raw("echo")))
            .await
            .expect("allowed");
        assert_eq!(&answer.body()[..], b"x");
    }
    let err = bounded("admin", client.call_raw(raw("admin.reset")))
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some(ErrorCode::PERMISSION_DENIED), "{err}");
    assert!(!err.maybe_processed() && !err.is_retryable(), "{err}");
    assert_eq!(err.attempts(), 1, "{err}");

    // A call's own entry wins over the client's.
    let options = CallOptions::new().meta("authorization", &b"Bearer admin"[..]);
    bounded(
        "admin as admin",
        client.call_raw(raw("admin.reset").with_options(options)),
    )
    .await
    .expect("allowed with the call's own credentials");
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer user", "Bearer user", "Bearer admin"]
    );

    let err = bounded(
        "bad token",
        client_for(&server)
            .authorization("Bearer forged")
            .build()
            .expect("client")
            .call_raw(raw("echo")),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::UNAUTHENTICATED), "{err}");
    assert_eq!(err.remote().map(|r| r.message()), Some("unknown token"));
}

#[tokio::test]
async fn a_provider_is_asked_on_every_attempt_so_a_refreshed_token_serves_the_retry() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let handler_seen = seen.clone();
    let handler_calls = calls.clone();
    let server = serve(
        Server::builder()
            .authenticate(|request: &AuthRequest<'_>| {
                match request.authorization().map(|v| v.starts_with(b"token-")) {
                    Some(true) => Ok(()),
                    _ => Err(Status::unauthenticated("no token")),
                }
            })
            .route_raw("flaky", move |ctx, _body| {
                let value = ctx
                    .metadata()
                    .get("authorization")
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                handler_seen.lock().unwrap().push(value.unwrap_or_default());
                // The first attempt is refused as OVERLOADED (not processed): the client
                // retries it.
                let first = handler_calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        Err(Status::new(ErrorCode::OVERLOADED, "try again"))
                    } else {
                        Ok(Reply::new(Bytes::new()))
                    }
                }
            }),
    )
    .await;
    let issued = Arc::new(AtomicU32::new(0));
    let provider_issued = issued.clone();
    let client = client_for(&server)
        .authorization_fn(move || {
            let n = provider_issued.fetch_add(1, Ordering::SeqCst) + 1;
            Some(Bytes::from(format!("token-{n}")))
        })
        .build()
        .expect("client");

    bounded("flaky", client.call_raw(raw("flaky")))
        .await
        .expect("the retry succeeds");
    assert_eq!(*seen.lock().unwrap(), ["token-1", "token-2"]);
    assert_eq!(issued.load(Ordering::SeqCst), 2);

    // A provider with nothing to give sends no entry: the server says so.
    let without = client_for(&server)
        .authorization_fn(|| None)
        .build()
        .expect("client");
    let err = bounded("no token", without.call_raw(raw("flaky")))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::UNAUTHENTICATED), "{err}");
}

#[tokio::test]
async fn a_notify_without_credentials_is_dropped_and_counted() {
    let delivered = Arc::new(AtomicU32::new(0));
    let counter = delivered.clone();
    let server = serve(
        Server::builder()
            .authenticate(|request: &AuthRequest<'_>| {
                if request.is_notify() && request.authorization() == Some(b"Bearer user") {
                    Ok(())
                } else {
                    Err(Status::unauthenticated("no credentials"))
                }
            })
            .route_notify_fn("events.*", move |_ctx, _body| {
                counter.fetch_add(1, Ordering::SeqCst);
                async {}
            }),
    )
    .await;
    let anonymous = client_for(&server).build().expect("client");
    bounded("notify", anonymous.notify("events.a", &"hi"))
        .await
        .expect("sent");
    let user = client_for(&server)
        .authorization("Bearer user")
        .build()
        .expect("client");
    bounded("notify", user.notify("events.a", &"hi"))
        .await
        .expect("sent");
    bounded("the notify handled", async {
        while delivered.load(Ordering::SeqCst) == 0 || server.stats().auth_refused == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats().auth_refused, 1);
}

#[tokio::test]
async fn the_built_in_methods_are_asked_about_too() {
    let server = serve(
        Server::builder()
            .authenticate(|request: &AuthRequest<'_>| {
                // A load balancer's health check gets through without credentials.
                if request.method() == "$health" || request.authorization().is_some() {
                    Ok(())
                } else {
                    Err(Status::unauthenticated("no credentials"))
                }
            })
            .route_raw(
                "echo",
                |_ctx, body: Bytes| async move { Ok(Reply::new(body)) },
            ),
    )
    .await;
    let anonymous = client_for(&server).build().expect("client");
    let health = bounded(
        "$health",
        anonymous.call_raw(RawRequest::new("$health", FormatId::RAW, Bytes::new())),
    )
    .await
    .expect("health is let through");
    assert_eq!(&health.body()[..], b"SERVING");
    let err = bounded("subscribe", anonymous.subscribe_raw("events"))
        .await
        .expect_err("a subscription needs credentials");
    assert_eq!(err.code(), Some(ErrorCode::UNAUTHENTICATED), "{err}");
}

#[tokio::test]
async fn subscriptions_carry_the_credentials_too() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = asked.clone();
    let server = serve(
        Server::builder().authenticate(move |request: &AuthRequest<'_>| {
            let token = request.authorization().map(<[u8]>::to_vec);
            record
                .lock()
                .unwrap()
                .push((request.method().to_owned(), token.clone()));
            match token.as_deref() {
                Some(b"Bearer user") => Ok(()),
                _ => Err(Status::unauthenticated("no credentials")),
            }
        }),
    )
    .await;
    let client = client_for(&server)
        .authorization("Bearer user")
        .build()
        .expect("client");
    let mut events = bounded("subscribe", client.subscribe_raw("events"))
        .await
        .expect("subscribed with the client's credentials");
    server
        .publish("events", FormatId::RAW, &b"e1"[..])
        .expect("publish");
    let push = bounded("push", events.next()).await.expect("a push");
    assert_eq!(&push.body()[..], b"e1");
    drop(events);
    // The `$unsubscribe` the transport sends when the last subscriber leaves carries them
    // as well.
    bounded("$unsubscribe", async {
        while !asked
            .lock()
            .unwrap()
            .iter()
            .any(|(m, _)| m == "$unsubscribe")
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let asked = asked.lock().unwrap();
    assert!(!asked.is_empty());
    for (method, token) in asked.iter() {
        assert_eq!(token.as_deref(), Some(&b"Bearer user"[..]), "{method}");
    }
}
