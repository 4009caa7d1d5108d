//! Pushes: delivery, prefix patterns, unsubscribing on drop, resubscription after the server
//! restarts on the same port, and one-way messages to the server.

mod common;

use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::{Bytes, Json};
use mcp_server::{Server, ServerHandle};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Tick {
    n: u32,
}

/// Publishes `value` on `topic` every 20 ms until a subscriber has it queued, at most
/// [`common::BOUND`]: subscriptions are set up asynchronously, on the server's side too.
async fn publish_until_delivered(server: &ServerHandle, topic: &str, value: &Tick) {
    bounded("a subscriber to appear", async {
        loop {
            let published = server.publish_typed(topic, &Json, value).expect("publish");
            if published.delivered > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn pushes_arrive_typed_and_in_order() {
    let server = serve(Server::builder()).await;
    let client = client_for(&server).build().expect("build");
    let mut ticks = bounded("subscribe", client.subscribe::<Tick>("ticker"))
        .await
        .expect("subscribe");
    for n in 1..=3 {
        let published = server
            .publish_typed("ticker", &Json, &Tick { n })
            .expect("publish");
        assert_eq!(
            published.delivered, 1,
            "the subscription is in place once subscribe returns"
        );
    }
    for n in 1..=3 {
        let tick = bounded("tick", ticks.next())
            .await
            .expect("open")
            .expect("decodes");
        assert_eq!(tick, Tick { n });
    }
    // A push that does not decode is an error item; the stream goes on.
    server
        .publish(
            "ticker",
            mcp_client::FormatId::JSON,
            Bytes::from_static(b"{oops"),
        )
        .expect("publish");
    server
        .publish_typed("ticker", &Json, &Tick { n: 4 })
        .expect("publish");
    let bad = bounded("bad", ticks.next()).await.expect("open");
    assert!(bad.expect_err("undecodable").decode_error().is_some());
    let good = bounded("good", ticks.next())
        .await
        .expect("open")
        .expect("decodes");
    assert_eq!(good, Tick { n: 4 });

    // Dropping the stream unsubscribes on the server.
    drop(ticks);
    bounded("unsubscribed", async {
        while server
            .publish_typed("ticker", &Json, &Tick { n: 0 })
            .expect("publish")
            .delivered
            > 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn prefix_patterns_deliver_with_the_topic() {
    let server = serve(Server::builder()).await;
    let client = client_for(&server).build().expect("build");
    let mut orders = bounded("subscribe", client.subscribe_raw("orders.*"))
        .await
        .expect("subscribe");
    server
        .publish_typed("orders.created", &Json, &Tick { n: 7 })
        .expect("publish");
    server
        .publish_typed("users.created", &Json, &Tick { n: 8 })
        .expect("publish");
    server
        .publish_typed("orders.paid", &Json, &Tick { n: 9 })
        .expect("publish");
    let first = bounded("push", orders.next()).await.expect("open");
    assert_eq!(first.topic(), "orders.created");
    assert_eq!(first.format(), mcp_client::FormatId::JSON);
    let second = bounded("push", orders.next()).await.expect("open");
    assert_eq!(
        second.topic(),
        "orders.paid",
        "users.created does not match"
    );
    bounded("close", client.close()).await;
    assert!(
        bounded("end", orders.next()).await.is_none(),
        "the stream ends when the client closes"
    );
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn subscriptions_survive_a_server_restart_on_the_same_port() {
    let first = serve(Server::builder()).await;
    let addr = first.local_addr();
    let client = client_for(&first).build().expect("build");
    let mut ticks = bounded("subscribe", client.subscribe::<Tick>("ticker"))
        .await
        .expect("subscribe");
    first
        .publish_typed("ticker", &Json, &Tick { n: 1 })
        .expect("publish");
    let tick = bounded("before restart", ticks.next())
        .await
        .expect("open")
        .expect("tick");
    assert_eq!(tick, Tick { n: 1 });

    bounded("shutdown", first.shutdown(Duration::from_millis(200)))
        .await
        .expect("shutdown");
    // The same port again (the listener sets SO_REUSEADDR, so TIME_WAIT does not block it).
    let second = bounded("rebind", async {
        loop {
            match Server::builder().bind(addr).await {
                Ok(server) => return server,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;

    // The client reconnects and subscribes again by itself; nothing is called meanwhile.
    publish_until_delivered(&second, "ticker", &Tick { n: 2 }).await;
    let tick = bounded("after restart", ticks.next())
        .await
        .expect("open")
        .expect("tick");
    assert_eq!(tick, Tick { n: 2 });
    assert!(client.metrics().reconnects >= 1, "{:?}", client.metrics());

    bounded("close", client.close()).await;
    bounded("shutdown", second.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn one_way_messages_reach_the_servers_handler() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = serve(
        Server::builder().route_notify_fn("audit.*", move |ctx, body| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((
                    ctx.topic().to_owned(),
                    body,
                    ctx.metadata().get("traceparent").is_some(),
                ));
            }
        }),
    )
    .await;
    let client = client_for(&server).build().expect("build");
    bounded("notify", client.notify("audit.login", &Tick { n: 5 }))
        .await
        .expect("notify");
    let (topic, body, traced) = bounded("delivery", rx.recv()).await.expect("delivered");
    assert_eq!(topic, "audit.login");
    assert_eq!(&body[..], br#"{"n":5}"#);
    assert!(traced, "one-way messages carry a traceparent too");
    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

fn at_most_one_subscription() -> mcp_server::ServerConfig {
    let mut config = mcp_server::ServerConfig::default();
    config.max_subscriptions = 1;
    config
}

/// A subscription the server refuses is the server's answer, with its code, not a lost
/// connection.
#[tokio::test]
async fn a_refused_subscription_is_the_servers_answer() {
    let server = serve(Server::builder().config(at_most_one_subscription())).await;
    let client = client_for(&server).build().expect("build");
    let _first = bounded("subscribe", client.subscribe::<Tick>("a"))
        .await
        .expect("the first subscription fits");
    let err = bounded("subscribe", client.subscribe::<Tick>("b"))
        .await
        .expect_err("the second is refused");
    assert_eq!(
        err.code(),
        Some(mcp_client::ErrorCode::OVERLOADED),
        "{err:?}"
    );
    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

/// After a restart the new server takes only one of the two subscriptions back: the
/// refused stream ends with the server's answer as its last item instead of staying open on
/// nothing, and the other goes on receiving.
#[tokio::test]
async fn a_subscription_refused_after_a_restart_ends_with_the_reason() {
    let first = serve(Server::builder()).await;
    let addr = first.local_addr();
    let client = client_for(&first).build().expect("build");
    let mut a = bounded("subscribe", client.subscribe::<Tick>("a"))
        .await
        .expect("subscribe a");
    let mut b = bounded("subscribe", client.subscribe::<Tick>("b"))
        .await
        .expect("subscribe b");
    bounded("shutdown", first.shutdown(Duration::from_millis(200)))
        .await
        .expect("shutdown");
    let second = bounded("rebind", async {
        loop {
            match Server::builder()
                .config(at_most_one_subscription())
                .bind(addr)
                .await
            {
                Ok(server) => return server,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;

    // Whichever of the two the client sent first is taken back; the other is refused.
    let (a_ended, last) = bounded("one refusal", async {
        tokio::select! {
            last = a.next() => (true, last),
            last = b.next() => (false, last),
        }
    })
    .await;
    let (mut kept, kept_topic) = if a_ended { (b, "b") } else { (a, "a") };
    let err = last
        .expect("an item, not a silent end")
        .expect_err("the refusal");
    assert_eq!(
        err.code(),
        Some(mcp_client::ErrorCode::OVERLOADED),
        "{err:?}"
    );
    publish_until_delivered(&second, kept_topic, &Tick { n: 7 }).await;
    let tick = bounded("the kept subscription", kept.next())
        .await
        .expect("open")
        .expect("tick");
    assert_eq!(tick, Tick { n: 7 });

    bounded("close", client.close()).await;
    bounded("shutdown", second.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}
