//! Subscriptions over a fleet: [`follow`] keeps one subscription on one live endpoint and
//! moves it when that endpoint goes; [`follow_all`] subscribes on every member and merges
//! their pushes, following the members as they come and go.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use mcp_codec::ErrorCode;
use mcp_transport::{EndpointState as PoolState, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fleet::{Fleet, Shared, lock};
use super::state::{EndpointId, Outcome};
use crate::client::RawPush;
use crate::error::{Error, ErrorKind, Phase, Processed};
use crate::transport::{RawPushStream, ToRawPush, Tried};

/// How long a subscription waits before it tries again to find an endpoint to move to.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between two tries of one endpoint's subscription in
/// [`follow_all`] (doubling from [`RESUBSCRIBE_PAUSE`]).
const RESUBSCRIBE_PAUSE_MAX: Duration = Duration::from_secs(5);

/// The bound of a resubscription, which has no caller's deadline (the pool bounds
/// `$subscribe` with its own default timeout as well).
const RESUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller's answer: the stream once the follower says it subscribed, its error, or a
/// timeout at `deadline`.
pub(super) async fn first_outcome(
    deadline: Instant,
    first: oneshot::Receiver<Result<(), Error>>,
    rx: mpsc::Receiver<Result<RawPush, Error>>,
) -> Result<RawPushStream, Error> {
    match tokio::time::timeout_at(deadline, first).await {
        Ok(Ok(Ok(()))) => Ok(Box::pin(Received(rx))),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(Error::closed()),
        Err(_) => Err(Error::timeout(Phase::Response, Processed::Maybe)),
    }
}

/// A refusal by the server itself (not "unavailable"): the same on every replica, so it
/// ends the subscription rather than moving it.
fn refused(e: &Error) -> bool {
    e.kind() == ErrorKind::Remote && e.code() != Some(ErrorCode::UNAVAILABLE)
}

/// A subscription that follows the fleet: subscribed on one live endpoint, and moved
/// (subscribed again elsewhere) when that endpoint's connects fail, when it leaves the
/// fleet, or when its stream ends without a refusal. Pushes published while it moves are
/// missed, as across any reconnect. Ends when the receiver is dropped or the fleet closes.
pub(super) async fn follow(
    shared: Weak<Shared>,
    pattern: String,
    deadline: Instant,
    first: oneshot::Sender<Result<(), Error>>,
    tx: mpsc::Sender<Result<RawPush, Error>>,
) {
    let mut first = Some(first);
    let mut avoid: Option<EndpointId> = None;
    loop {
        // Find an endpoint: a pick that is given back at once (a subscription is not an
        // outstanding call).
        let found = match shared.upgrade() {
            Some(shared) if !shared.closed.load(Ordering::Acquire) => {
                let tried = Tried::default();
                if let Some(id) = avoid {
                    tried.push(id);
                }
                let fleet = Fleet { shared };
                fleet
                    .pick(None, &tried, Instant::now())
                    .map(|(mut outstanding, pool)| {
                        outstanding.finish(Outcome::Neutral, None, Instant::now());
                        (outstanding.id, pool)
                    })
            }
            _ => Err(Error::closed()),
        };
        let subscribed = match found {
            Ok((id, pool)) => match tokio::time::timeout_at(
                if first.is_some() {
                    deadline
                } else {
                    Instant::now() + RESUBSCRIBE_TIMEOUT
                },
                pool.subscribe(&pattern),
            )
            .await
            {
                Ok(Ok(sub)) => Ok((id, pool.watch_state(), ToRawPush::new(sub))),
                Ok(Err(e)) => Err(Error::from_transport(e)),
                Err(_) => Err(Error::timeout(Phase::Response, Processed::Maybe)),
            },
            Err(e) => Err(e),
        };
        let (id, mut states, mut sub) = match subscribed {
            Ok(found) => found,
            Err(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    return;
                }
                if e.is_closed() || tx.is_closed() {
                    let _ = tx.try_send(Err(e));
                    return;
                }
                // Refused by the server: the same on every replica, so say so and end.
                if refused(&e) {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                continue;
            }
        };
        if let Some(first) = first.take() {
            if first.send(Ok(())).is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                push = std::future::poll_fn(|cx| Pin::new(&mut sub).poll_next(cx)) => match push {
                    Some(Ok(push)) => {
                        if tx.send(Ok(push)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        // The endpoint refused to subscribe again after a reconnect: the
                        // server's own answer ends it; anything else moves it.
                        if refused(&e) {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        break;
                    }
                    None => break,
                },
                changed = states.changed() => {
                    let gone = changed.is_err() || matches!(
                        &*states.borrow(),
                        PoolState::Reconnecting { .. } | PoolState::Down { .. } | PoolState::Closed { .. }
                    );
                    if gone {
                        break;
                    }
                }
                () = tx.closed() => return,
            }
        }
        tracing::debug!(pattern, "subscription moves to another endpoint");
        avoid = Some(id);
    }
}

/// The pushes a [`follow`] task forwards.
pub(super) struct Received(mpsc::Receiver<Result<RawPush, Error>>);

impl Stream for Received {
    type Item = Result<RawPush, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What one endpoint's forwarder in [`follow_all`] reports.
enum Report {
    /// Subscribed (again).
    Subscribed,
    /// A try failed; it tries again.
    Failed(Error),
    /// The server refused the subscription: it ends.
    Refused(Error),
}

/// A subscription on every member of the fleet, their pushes merged into `tx`: a member
/// that joins is subscribed to, one that leaves (or drains) is dropped, and each member's
/// subscription is kept through its pool's reconnects and tried again (pausing 100 ms
/// doubling to 5 s) when it ends. The caller hears `Ok` once one member is subscribed, or
/// the refusal or error of the members there were if none could be. Ends when the receiver
/// is dropped, the fleet closes, or a server refuses the pattern.
pub(super) async fn follow_all(
    shared: Weak<Shared>,
    pattern: String,
    first: oneshot::Sender<Result<(), Error>>,
    tx: mpsc::Sender<Result<RawPush, Error>>,
) {
    let mut first = Some(first);
    let (report_tx, mut reports) = mpsc::unbounded_channel::<(EndpointId, Report)>();
    let mut running: HashMap<EndpointId, JoinHandle<()>> = HashMap::new();
    // Members whose first try has not reported yet, and the first error among those that
    // failed, while the caller waits.
    let mut waiting: Vec<EndpointId> = Vec::new();
    let mut first_error: Option<Error> = None;
    let end = loop {
        let Some(fleet) = shared.upgrade() else {
            break Err(Error::closed());
        };
        if fleet.closed.load(Ordering::Acquire) {
            break Err(Error::closed());
        }
        let changes = fleet.changed.clone();
        let changed = changes.notified();
        tokio::pin!(changed);
        // Registered before the members are read, so that no change is missed between.
        changed.as_mut().enable();
        let members = lock(&fleet.core).member_payloads();
        drop(fleet);
        running.retain(|id, task| {
            let member = members.iter().any(|(m, _)| m == id);
            if !member {
                task.abort();
            }
            member
        });
        waiting.retain(|id| running.contains_key(id));
        for (id, pool) in members {
            running.entry(id).or_insert_with(|| {
                if first.is_some() {
                    waiting.push(id);
                }
                let forward = forward(id, pool, pattern.clone(), tx.clone(), report_tx.clone());
                tokio::spawn(forward)
            });
        }
        if first.is_some() && waiting.is_empty() {
            if let Some(e) = first_error.take() {
                // Every member there was failed its first try.
                break Err(e);
            }
        }
        tokio::select! {
            () = &mut changed => {}
            () = tx.closed() => break Ok(()),
            Some((id, report)) = reports.recv() => match report {
                Report::Subscribed => {
                    if let Some(first) = first.take() {
                        if first.send(Ok(())).is_err() {
                            break Ok(());
                        }
                    }
                }
                Report::Failed(e) => {
                    if first.is_some() {
                        waiting.retain(|w| *w != id);
                        first_error.get_or_insert(e);
                    }
                }
                Report::Refused(e) => break Err(e),
            },
        }
    };
    for task in running.values() {
        task.abort();
    }
    if let Err(e) = end {
        match first.take() {
            Some(first) => {
                let _ = first.send(Err(e));
            }
            None => {
                let _ = tx.try_send(Err(e));
            }
        }
    }
}

/// One member's part of [`follow_all`]: subscribes through its pool and forwards its pushes
/// until aborted, the receiver goes, or the server refuses.
async fn forward(
    id: EndpointId,
    pool: Pool,
    pattern: String,
    tx: mpsc::Sender<Result<RawPush, Error>>,
    reports: mpsc::UnboundedSender<(EndpointId, Report)>,
) {
    let mut pause = RESUBSCRIBE_PAUSE;
    loop {
        let subscribed =
            match tokio::time::timeout(RESUBSCRIBE_TIMEOUT, pool.subscribe(&pattern)).await {
                Ok(Ok(sub)) => Ok(ToRawPush::new(sub)),
                Ok(Err(e)) => Err(Error::from_transport(e)),
                Err(_) => Err(Error::timeout(Phase::Response, Processed::Maybe)),
            };
        let mut sub = match subscribed {
            Ok(sub) => sub,
            Err(e) if refused(&e) => {
                let _ = reports.send((id, Report::Refused(e)));
                return;
            }
            Err(e) => {
                let _ = reports.send((id, Report::Failed(e)));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RESUBSCRIBE_PAUSE_MAX);
                continue;
            }
        };
        let _ = reports.send((id, Report::Subscribed));
        pause = RESUBSCRIBE_PAUSE;
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut sub).poll_next(cx)).await {
                Some(Ok(push)) => {
                    if tx.send(Ok(push)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if refused(&e) => {
                    let _ = reports.send((id, Report::Refused(e)));
                    return;
                }
                Some(Err(_)) | None => break,
            }
        }
        tokio::time::sleep(pause).await;
    }
}
