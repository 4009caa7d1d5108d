//! The subscription registry: which connection listens to which topic patterns, and the
//! fan-out of a published NOTIFY to them.
//!
//! Delivery policy for slow subscribers: a publisher never waits. Each connection has a
//! bounded outbound queue (in bytes); a NOTIFY that does not fit is dropped for that
//! connection and counted ([`Published::dropped`], and in the server's stats). A subscriber
//! that stops reading altogether is disconnected by its connection's write-stall timeout,
//! which also removes its subscriptions.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use mcp_codec::OwnedMetaPair;

use crate::pattern::{Pattern, PatternMap};

/// A NOTIFY to push, validated once by the publisher and offered to every subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Notification {
    pub(crate) topic: Box<str>,
    pub(crate) format: u8,
    pub(crate) meta: Vec<OwnedMetaPair>,
    pub(crate) body: Bytes,
}

/// Identifies a connection within one server.
pub(crate) type ConnId = u64;

/// What a connection's outbound queue did with an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    Full,
    Closed,
}

/// A connection's outbound side as the registry sees it: it takes a frame or refuses it at
/// once, never blocking the publisher.
pub(crate) trait Subscriber: Clone + Send + Sync + 'static {
    fn offer(&self, notification: &Notification) -> Offer;
}

/// The outcome of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Published {
    /// Connections the NOTIFY was queued for.
    pub delivered: usize,
    /// Matching connections whose outbound queue was full (or closing): not delivered.
    pub dropped: usize,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeError {
    /// The connection already has the maximum number of subscriptions.
    TooMany,
}

#[derive(Debug)]
struct Conn<S> {
    sink: S,
    patterns: HashSet<Pattern>,
}

#[derive(Debug)]
struct Inner<S> {
    conns: HashMap<ConnId, Conn<S>>,
    index: PatternMap<HashSet<ConnId>>,
}

/// Subscriptions of every connection of a server.
#[derive(Debug)]
pub(crate) struct Registry<S> {
    inner: RwLock<Inner<S>>,
}

impl<S: Subscriber> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            inner: RwLock::new(Inner {
                conns: HashMap::new(),
                index: PatternMap::default(),
            }),
        }
    }
}

impl<S: Subscriber> Registry<S> {
    /// Adds `pattern` to `conn`'s subscriptions (idempotent: subscribing twice to the same
    /// pattern is one subscription), then runs `confirm` before any publish can see the
    /// subscription, so that the `$subscribe` answer is queued before the first NOTIFY.
    pub(crate) fn subscribe(
        &self,
        conn: ConnId,
        sink: &S,
        pattern: Pattern,
        max_per_conn: usize,
        confirm: impl FnOnce(),
    ) -> Result<(), SubscribeError> {
        // A panic elsewhere while holding the lock cannot leave the maps inconsistent
        // (each update is a few infallible inserts), so a poisoned lock is used as is.
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Inner { conns, index } = &mut *inner;
        let entry = conns.entry(conn).or_insert_with(|| Conn {
            sink: sink.clone(),
            patterns: HashSet::new(),
        });
        if !entry.patterns.contains(&pattern) {
            if entry.patterns.len() >= max_per_conn {
                if entry.patterns.is_empty() {
                    conns.remove(&conn);
                }
                return Err(SubscribeError::TooMany);
            }
            index.entry(&pattern).or_default().insert(conn);
            entry.patterns.insert(pattern);
        }
        confirm();
        Ok(())
    }

    /// Removes `pattern` from `conn`'s subscriptions, if it was there.
    pub(crate) fn unsubscribe(&self, conn: ConnId, pattern: &Pattern) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Inner { conns, index } = &mut *inner;
        let Some(entry) = conns.get_mut(&conn) else {
            return;
        };
        if entry.patterns.remove(pattern) {
            Self::unindex(index, conn, pattern);
        }
        if entry.patterns.is_empty() {
            conns.remove(&conn);
        }
    }

    /// Forgets a connection (it closed).
    pub(crate) fn remove_conn(&self, conn: ConnId) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Inner { conns, index } = &mut *inner;
        if let Some(entry) = conns.remove(&conn) {
            for pattern in &entry.patterns {
                Self::unindex(index, conn, pattern);
            }
        }
    }

    fn unindex(index: &mut PatternMap<HashSet<ConnId>>, conn: ConnId, pattern: &Pattern) {
        if let Some(set) = index.get_mut(pattern) {
            set.remove(&conn);
            if set.is_empty() {
                index.remove(pattern);
            }
        }
    }

    /// Offers `notification` once to every connection with at least one subscription
    /// matching its topic.
    pub(crate) fn publish(&self, notification: &Notification) -> Published {
        let topic = &*notification.topic;
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        // At most once per connection, however many of its patterns match.
        let mut targets: HashSet<ConnId> = HashSet::new();
        for set in inner.index.matches(topic) {
            targets.extend(set.iter().copied());
        }
        let mut published = Published::default();
        for conn in targets {
            let Some(entry) = inner.conns.get(&conn) else {
                continue;
            };
            match entry.sink.offer(notification) {
                Offer::Queued => published.delivered += 1,
                Offer::Full | Offer::Closed => published.dropped += 1,
            }
        }
        published
    }

    /// Number of subscriptions of `conn`.
    #[cfg(test)]
    pub(crate) fn count(&self, conn: ConnId) -> usize {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.conns.get(&conn).map_or(0, |c| c.patterns.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<Bytes>>>,
        full: bool,
    }

    impl Subscriber for Sink {
        fn offer(&self, n: &Notification) -> Offer {
            if self.full {
                return Offer::Full;
            }
            self.got.lock().unwrap().push(n.body.clone());
            Offer::Queued
        }
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s.as_bytes()).unwrap()
    }

    fn note(topic: &str) -> Notification {
        Notification {
            topic: topic.into(),
            format: 0,
            meta: Vec::new(),
            body: Bytes::from_static(b"f"),
        }
    }

    #[test]
    fn one_copy_per_connection_however_many_patterns_match() {
        let reg = Registry::default();
        let a = Sink::default();
        let b = Sink::default();
        reg.subscribe(1, &a, pat("orders.created"), 10, || {})
            .unwrap();
        reg.subscribe(1, &a, pat("orders.*"), 10, || {}).unwrap();
        reg.subscribe(1, &a, pat("*"), 10, || {}).unwrap();
        reg.subscribe(2, &b, pat("orders.*"), 10, || {}).unwrap();
        let out = reg.publish(&note("orders.created"));
        assert_eq!(
            out,
            Published {
                delivered: 2,
                dropped: 0
            }
        );
        assert_eq!(a.got.lock().unwrap().len(), 1);
        assert_eq!(b.got.lock().unwrap().len(), 1);
        assert_eq!(reg.publish(&note("users.x")).delivered, 1);
        assert_eq!(reg.publish(&note("orders")).delivered, 1);
    }

    #[test]
    fn unsubscribe_and_remove() {
        let reg = Registry::default();
        let a = Sink::default();
        reg.subscribe(1, &a, pat("t"), 10, || {}).unwrap();
        reg.subscribe(1, &a, pat("t"), 10, || {}).unwrap();
        assert_eq!(reg.count(1), 1);
        reg.subscribe(1, &a, pat("u*"), 10, || {}).unwrap();
        reg.unsubscribe(1, &pat("t"));
        reg.unsubscribe(1, &pat("never"));
        assert_eq!(reg.publish(&note("t")).delivered, 0);
        assert_eq!(reg.publish(&note("ux")).delivered, 1);
        reg.remove_conn(1);
        assert_eq!(reg.publish(&note("ux")).delivered, 0);
        assert_eq!(reg.count(1), 0);
    }

    #[test]
    fn limit_and_full_queues() {
        let reg = Registry::default();
        let full = Sink {
            full: true,
            ..Sink::default()
        };
        reg.subscribe(1, &full, pat("a"), 2, || {}).unwrap();
        reg.subscribe(1, &full, pat("b"), 2, || {}).unwrap();
        assert_eq!(
            reg.subscribe(1, &full, pat("c"), 2, || {}),
            Err(SubscribeError::TooMany)
        );
        // Re-subscribing to a pattern it has is not a new subscription.
        assert_eq!(reg.subscribe(1, &full, pat("a"), 2, || {}), Ok(()));
        let out = reg.publish(&note("a"));
        assert_eq!(
            out,
            Published {
                delivered: 0,
                dropped: 1
            }
        );
    }
}
