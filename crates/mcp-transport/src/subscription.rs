//! Delivery of pushes (NOTIFY frames from the server) to local subscribers.
//!
//! The connection's reader hands each push to the [`PushRouter`] synchronously; the router
//! copies it (a cheap `Bytes` clone) into the bounded queue of every matching
//! [`PushStream`]. A full queue loses a push by the configured [`PushOverflow`] policy
//! and counts it: the reader never waits for a subscriber, so a slow subscriber cannot
//! stall responses or heartbeats. A queue is bounded both by count and by bytes: a count
//! alone would let one slow subscriber hold queue length x message size (16 GiB with the
//! defaults).
//!
//! A `$subscribe` the pool sends again after a reconnect has nobody waiting for it; when
//! the server refuses it (or does not answer in time) the router ends every subscriber of
//! that pattern with the error ([`PushStream::error`]) instead of leaving them open on a
//! subscription the server does not have.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use crate::config::PushOverflow;
use crate::error::TransportError;
use crate::message::Push;

/// The method a client calls to subscribe; the body is the topic or `prefix*` pattern.
pub const SUBSCRIBE_METHOD: &str = "$subscribe";
/// The method a client calls to unsubscribe.
pub const UNSUBSCRIBE_METHOD: &str = "$unsubscribe";
/// The reserved method that asks a server's health (docs/protocol.md section 7): the body
/// is a service name (empty: the server as a whole), the answer one ASCII word.
pub const HEALTH_METHOD: &str = "$health";

/// Whether `topic` matches a subscription `pattern`: exactly, or by prefix when the
/// pattern ends in `*` (docs/protocol.md section 7).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the state consistent, so a poisoned lock (a panic
    // elsewhere while holding it) is used as is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Told when the last local subscriber of a pattern goes away, to send `$unsubscribe`.
pub(crate) trait SubscriptionOwner: Send + Sync {
    fn unsubscribed(&self, pattern: &str);
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Push>,
    /// The sum of `queued_len` over `items`.
    bytes: usize,
    waker: Option<Waker>,
    closed: bool,
    /// Why the subscription ended early (its `$subscribe` failed after a reconnect).
    error: Option<TransportError>,
}

impl QueueState {
    fn pop(&mut self) -> Option<Push> {
        let push = self.items.pop_front()?;
        self.bytes -= push.queued_len();
        Some(push)
    }
}

#[derive(Debug)]
struct SubQueue {
    state: Mutex<QueueState>,
}

impl SubQueue {
    fn close(&self, error: Option<TransportError>) {
        let mut state = lock(&self.state);
        state.closed = true;
        if state.error.is_none() {
            state.error = error;
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

#[derive(Debug)]
struct PatternEntry {
    /// Local subscribers: `$subscribe` goes out for the first, `$unsubscribe` after the
    /// last.
    count: usize,
    /// Tells this run of the pattern from a later one after every subscriber left and a
    /// new one came: a failed `$subscribe` sent for the old run must not end the new one.
    epoch: u64,
}

#[derive(Debug, Default)]
struct RouterState {
    subs: HashMap<u64, (String, Arc<SubQueue>)>,
    patterns: HashMap<String, PatternEntry>,
    next: u64,
    closed: bool,
}

/// Routes pushes to local subscribers; shared by every connection of a pool.
#[derive(Debug)]
pub(crate) struct PushRouter {
    state: Mutex<RouterState>,
    capacity: usize,
    max_bytes: usize,
    policy: PushOverflow,
    delivered: AtomicU64,
    dropped: AtomicU64,
    unmatched: AtomicU64,
}

impl PushRouter {
    pub(crate) fn new(capacity: usize, max_bytes: usize, policy: PushOverflow) -> Self {
        PushRouter {
            state: Mutex::new(RouterState::default()),
            capacity: capacity.max(1),
            max_bytes,
            policy,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
        }
    }

    /// Hands `push` to every matching subscriber without waiting.
    pub(crate) fn deliver(&self, push: Push) {
        let state = lock(&self.state);
        let mut matched = false;
        let size = push.queued_len();
        // An empty queue always takes the push, so that one larger than `max_bytes` is not
        // lost for good: a queue holds at most `max_bytes` or one message.
        let full = |q: &QueueState| {
            !q.items.is_empty()
                && (q.items.len() >= self.capacity || q.bytes.saturating_add(size) > self.max_bytes)
        };
        for (pattern, queue) in state.subs.values() {
            if !topic_matches(pattern, push.topic()) {
                continue;
            }
            matched = true;
            let mut q = lock(&queue.state);
            match self.policy {
                PushOverflow::DropNewest => {
                    if full(&q) {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                PushOverflow::DropOldest => {
                    // Bounded by the queue length; each push dropped is counted.
                    while full(&q) {
                        q.pop();
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            q.bytes += size;
            q.items.push_back(push.clone());
            self.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(waker) = q.waker.take() {
                waker.wake();
            }
        }
        if !matched {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Registers a subscriber; returns whether it is the first for `pattern` (so that
    /// `$subscribe` must be sent), or `None` once the router is closed.
    fn register(&self, pattern: &str) -> Option<(u64, Arc<SubQueue>, bool)> {
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        state.next += 1;
        let id = state.next;
        let queue = Arc::new(SubQueue {
            state: Mutex::new(QueueState::default()),
        });
        state.subs.insert(id, (pattern.to_owned(), queue.clone()));
        let entry = state
            .patterns
            .entry(pattern.to_owned())
            .or_insert(PatternEntry {
                count: 0,
                epoch: id,
            });
        entry.count += 1;
        Some((id, queue, entry.count == 1))
    }

    /// Removes a subscriber; returns whether it was the last for its pattern.
    fn unregister(&self, id: u64) -> Option<String> {
        let mut state = lock(&self.state);
        let (pattern, queue) = state.subs.remove(&id)?;
        queue.close(None);
        let entry = state.patterns.get_mut(&pattern)?;
        entry.count -= 1;
        if entry.count == 0 {
            state.patterns.remove(&pattern);
            Some(pattern)
        } else {
            None
        }
    }

    /// The patterns with at least one local subscriber (to subscribe again after a
    /// reconnect).
    pub(crate) fn patterns(&self) -> Vec<String> {
        lock(&self.state).patterns.keys().cloned().collect()
    }

    /// The current run of `pattern`, if it has local subscribers (see
    /// [`PushRouter::fail`]).
    pub(crate) fn epoch(&self, pattern: &str) -> Option<u64> {
        lock(&self.state).patterns.get(pattern).map(|e| e.epoch)
    }

    pub(crate) fn has_subscribers(&self) -> bool {
        !lock(&self.state).patterns.is_empty()
    }

    /// The server refused (or did not answer) a `$subscribe` sent again for run `epoch` of
    /// `pattern`: every local subscriber of that run ends with `error`, and the pattern is
    /// forgotten (not subscribed again after the next reconnect; a new
    /// [`Pool::subscribe`](crate::Pool::subscribe) sends `$subscribe` afresh).
    pub(crate) fn fail(&self, pattern: &str, epoch: u64, error: &TransportError) {
        let mut state = lock(&self.state);
        if state.patterns.get(pattern).is_none_or(|e| e.epoch != epoch) {
            return;
        }
        state.patterns.remove(pattern);
        state.subs.retain(|_, (p, queue)| {
            if p == pattern {
                queue.close(Some(error.clone()));
                false
            } else {
                true
            }
        });
    }

    /// Ends every subscription stream (the pool or connection is closed).
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        for (_, queue) in state.subs.values() {
            queue.close(None);
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn unmatched(&self) -> u64 {
        self.unmatched.load(Ordering::Relaxed)
    }
}

/// A stream of the pushes matching one topic or `prefix*` pattern.
///
/// Created by [`Pool::subscribe`](crate::Pool::subscribe) (which survives reconnects) or
/// [`Connection::subscribe`](crate::Connection::subscribe). Dropping it sends
/// `$unsubscribe` once no other local subscription uses the same pattern. The stream ends
/// when the pool or connection is closed, or early when the server refuses the pattern
/// when the pool subscribes again after a reconnect (an ERROR answer to `$subscribe`, or
/// none within [`ConnectionConfig::subscribe_timeout`](crate::ConnectionConfig)): then
/// [`PushStream::error`] says why. Pushes queued before the end are still handed out.
///
/// Its queue holds at most [`ConnectionConfig::push_queue`](crate::ConnectionConfig)
/// pushes and [`ConnectionConfig::push_queue_bytes`](crate::ConnectionConfig) bytes; past
/// either, pushes are lost by the configured [`PushOverflow`] and counted.
pub struct PushStream {
    id: u64,
    pattern: String,
    queue: Arc<SubQueue>,
    router: Arc<PushRouter>,
    owner: Weak<dyn SubscriptionOwner>,
}

impl std::fmt::Debug for PushStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushStream")
            .field("pattern", &self.pattern)
            .field("queued", &self.queued())
            .field("error", &self.error())
            .finish()
    }
}

impl PushStream {
    /// Registers a local subscriber; the bool says whether `$subscribe` must be sent.
    pub(crate) fn register(
        router: &Arc<PushRouter>,
        owner: Weak<dyn SubscriptionOwner>,
        pattern: &str,
    ) -> Option<(PushStream, bool)> {
        let (id, queue, first) = router.register(pattern)?;
        Some((
            PushStream {
                id,
                pattern: pattern.to_owned(),
                queue,
                router: router.clone(),
                owner,
            },
            first,
        ))
    }

    /// Unregisters without telling the server (the `$subscribe` failed).
    pub(crate) fn forget(mut self) {
        self.router.unregister(self.id);
        self.owner = Weak::<NoOwner>::new();
    }

    /// The topic or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Pushes waiting to be read.
    pub fn queued(&self) -> usize {
        lock(&self.queue.state).items.len()
    }

    /// Bytes of the pushes waiting to be read (topic, metadata and body of each).
    pub fn queued_bytes(&self) -> usize {
        lock(&self.queue.state).bytes
    }

    /// Why the stream ended early: subscribing again after a reconnect failed (the server
    /// answered `$subscribe` with an ERROR, kind [`ErrorKind::Remote`], or not at all
    /// within the subscribe timeout, a timeout). `None` while the subscription runs, and
    /// after an end because the pool or connection was closed.
    ///
    /// [`ErrorKind::Remote`]: crate::ErrorKind::Remote
    pub fn error(&self) -> Option<TransportError> {
        lock(&self.queue.state).error.clone()
    }

    /// The next push, or `None` once the pool or connection is closed.
    pub async fn recv(&mut self) -> Option<Push> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// A push if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Push> {
        lock(&self.queue.state).pop()
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        let mut state = lock(&self.queue.state);
        if let Some(push) = state.pop() {
            return Poll::Ready(Some(push));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Stream for PushStream {
    type Item = Push;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        self.poll_recv(cx)
    }
}

impl Drop for PushStream {
    fn drop(&mut self) {
        if let Some(pattern) = self.router.unregister(self.id) {
            if let Some(owner) = self.owner.upgrade() {
                owner.unsubscribed(&pattern);
            }
        }
    }
}

struct NoOwner;

impl SubscriptionOwner for NoOwner {
    fn unsubscribed(&self, _: &str) {}
}
