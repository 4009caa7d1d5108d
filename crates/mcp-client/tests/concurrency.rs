//! Many calls at once over one client: every call answered exactly once, with its own answer.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{bounded, client_for, serve};
use mcp_client::Json;
use mcp_server::{Server, Status};

const TASKS: u64 = 100;
const PER_TASK: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_from_a_hundred_tasks() {
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let server = serve(
        Server::builder().route_typed("double", Json, move |_ctx, n: u64| {
            h.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, Status>(n * 2) }
        }),
    )
    .await;
    let client = client_for(&server).build().expect("build");

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                // Each task keeps all of its calls in flight at once.
                let calls: Vec<_> = (0..PER_TASK)
                    .map(|i| {
                        let client = client.clone();
                        let n = t * PER_TASK + i;
                        tokio::spawn(async move {
                            let doubled: u64 = client.call("double", &n).await?;
                            Ok::<_, mcp_client::Error>((n, doubled))
                        })
                    })
                    .collect();
                let mut answers = Vec::with_capacity(calls.len());
                for call in calls {
                    answers.push(call.await.expect("call task"));
                }
                answers
            })
        })
        .collect();

    let mut seen = HashSet::new();
    for task in tasks {
        for answer in bounded("a task's calls", task).await.expect("task") {
            let (n, doubled) = answer.expect("every call succeeds");
            assert_eq!(doubled, n * 2, "call {n} got another call's answer");
            assert!(seen.insert(n), "call {n} answered twice");
        }
    }
    assert_eq!(seen.len() as u64, TASKS * PER_TASK);
    // Exactly once on the server too: no call was retried or duplicated.
    assert_eq!(handled.load(Ordering::Relaxed), TASKS * PER_TASK);

    let m = client.metrics();
    assert_eq!(m.calls, TASKS * PER_TASK);
    assert_eq!(m.succeeded, TASKS * PER_TASK);
    assert_eq!(m.retries, 0);
    assert_eq!(m.errors.total(), 0);
    assert_eq!(m.in_flight, 0);
    assert_eq!(m.latency.count, TASKS * PER_TASK);
    assert!(m.latency.p50 <= m.latency.p99 && m.latency.p99 <= m.latency.max);

    assert_eq!(bounded("close", client.close()).await, 0);
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}

/// Large bodies both ways, many at once, on one connection: both sides' write queues fill
/// up at the same time. Neither side may then stop reading for good (each would wait for
/// the other to read, until the write-stall timeout killed the connection); every call
/// gets its own body back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_both_ways_on_one_connection_never_deadlock() {
    use bytes::Bytes;
    use mcp_client::{FormatId, RawRequest};
    use mcp_server::Reply;

    const CALLS: usize = 24;
    const SIZE: usize = 2 * 1024 * 1024;
    let server = serve(
        Server::builder().route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) }),
    )
    .await;
    let client = client_for(&server)
        .max_connections(1)
        .timeout(Duration::from_secs(20))
        .attempt_timeout(Duration::from_secs(20))
        .build()
        .expect("build");
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let client = client.clone();
            let body = Bytes::from(vec![i as u8; SIZE]);
            tokio::spawn(async move {
                let back = client
                    .call_raw(RawRequest::new("echo", FormatId::RAW, body.clone()))
                    .await?;
                Ok::<_, mcp_client::Error>(back.body() == &body)
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let same = bounded("a large echo", call)
            .await
            .expect("call task")
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert!(same, "call {i} got another body back");
    }
    assert_eq!(client.metrics().errors.total(), 0);
    bounded("close", client.close()).await;
    bounded("shutdown", server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown");
}
