//! The routing table: methods to request handlers, topic patterns to NOTIFY handlers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use mcp_format::{Decode, Encode};

use crate::error::Status;
use crate::handler::{
    Dyn, Handler, Invoke, NotifyContext, NotifyHandler, Reply, RequestContext, TypedHandler,
    handler_fn, notify_fn,
};
use crate::pattern::{Pattern, PatternMap};

/// The method that subscribes the connection to a topic pattern (built in).
pub const SUBSCRIBE: &str = "$subscribe";
/// The method that removes a subscription (built in).
pub const UNSUBSCRIBE: &str = "$unsubscribe";

/// Which handler runs for each method, and for each topic a client sends NOTIFY to.
///
/// Methods starting with `$` are the server's own (`$subscribe`, `$unsubscribe`) and cannot
/// be routed. Lookups are by exact method name; a method without a route is answered
/// ERROR 2 (UNKNOWN_METHOD).
///
/// # Panics
/// The `route*` methods panic on a programming error found while the table is built: a
/// method that is empty, longer than 255 bytes or starts with `$`, a method or topic pattern
/// routed twice. Nothing a peer sends can panic the router.
#[derive(Default, Clone)]
pub struct Router {
    /// Keyed by the name the handlers' contexts share, so that a request's method is not
    /// copied.
    ///
    /// Hashed with foldhash, a few instructions for a short name where the default SipHash
    /// takes a hundred or more, once per request. SipHash's strength is against keys
    /// chosen to collide being inserted; here only the operator inserts (the routes, when
    /// the server is built), and a peer's name only looks one up.
    methods: HashMap<Arc<str>, Arc<dyn Invoke>, foldhash::fast::RandomState>,
    topics: PatternMap<Arc<dyn NotifyHandler>>,
    topic_patterns: Vec<Pattern>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<&str> = self.methods.keys().map(|m| &**m).collect();
        methods.sort_unstable();
        f.debug_struct("Router")
            .field("methods", &methods)
            .field("topics", &self.topic_patterns)
            .finish()
    }
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Router::default()
    }

    /// Routes `method` to a [`Handler`].
    pub fn route(self, method: &str, handler: impl Handler) -> Self {
        self.insert(method, Arc::new(Dyn(handler)))
    }

    /// Routes `method`, checking the rules of [`Router::route`].
    fn insert(mut self, method: &str, handler: Arc<dyn Invoke>) -> Self {
        assert!(
            (1..=255).contains(&method.len()),
            "method {method:?} must be 1..=255 bytes"
        );
        assert!(
            !method.starts_with('$'),
            "methods starting with `$` are reserved for the server ({method:?})"
        );
        let previous = self.methods.insert(method.into(), handler);
        assert!(previous.is_none(), "method {method:?} is routed twice");
        self
    }

    /// Routes `method` to an async closure taking the body as it is (any format but the
    /// reserved ones; `ctx.format()` says which) and returning the answer's body in the same
    /// format.
    ///
    /// ```
    /// use mcp_server::{Reply, Router};
    ///
    /// let router = Router::new().route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) });
    /// # drop(router);
    /// ```
    pub fn route_raw<F, Fut>(self, method: &str, f: F) -> Self
    where
        F: Fn(RequestContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
    {
        self.insert(method, Arc::new(handler_fn(f)))
    }

    /// Routes `method` to a typed async function in one body format: the request body is
    /// decoded as `Req` with `format`, the answer encoded from `Resp`.
    ///
    /// A request in another format is answered ERROR 3; a body that is not a `Req`,
    /// ERROR 1.
    ///
    /// ```
    /// use mcp_format::Json;
    /// use mcp_server::Router;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Add { a: i64, b: i64 }
    ///
    /// let router = Router::new().route_typed("add", Json, |_ctx, add: Add| async move {
    ///     Ok(add.a + add.b)
    /// });
    /// # drop(router);
    /// ```
    pub fn route_typed<F, Req, Resp, Func, Fut>(self, method: &str, format: F, f: Func) -> Self
    where
        F: Decode<Req> + Encode<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        Func: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        self.insert(method, Arc::new(TypedHandler::new(format, f)))
    }

    /// Routes NOTIFY messages sent by clients to topics matching `pattern` (an exact topic,
    /// or a prefix ending in `*`). A topic matching several patterns goes to the exact one,
    /// else to the longest prefix. NOTIFY to a topic without a route is dropped and
    /// counted.
    pub fn route_notify(mut self, pattern: &str, handler: impl NotifyHandler) -> Self {
        let parsed = match Pattern::parse(pattern.as_bytes()) {
            Ok(parsed) => parsed,
            Err(err) => panic!("topic pattern {pattern:?}: {}", err.as_str()),
        };
        match self.topics.entry(&parsed) {
            std::collections::hash_map::Entry::Occupied(_) => {
                panic!("topic pattern {pattern:?} is routed twice")
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Arc::new(handler));
            }
        }
        self.topic_patterns.push(parsed);
        self
    }

    /// Routes NOTIFY messages to an async closure; see [`Router::route_notify`].
    pub fn route_notify_fn<F, Fut>(self, pattern: &str, f: F) -> Self
    where
        F: Fn(NotifyContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.route_notify(pattern, notify_fn(f))
    }

    /// The handler of `method`, with the method's name.
    pub(crate) fn handler(&self, method: &str) -> Option<(&Arc<str>, &Arc<dyn Invoke>)> {
        self.methods.get_key_value(method)
    }

    /// The handler for NOTIFY to `topic`.
    pub(crate) fn notify_handler(&self, topic: &str) -> Option<&Arc<dyn NotifyHandler>> {
        self.topics.best(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_handler() -> impl Handler {
        handler_fn(|_ctx, body| async move { Ok(Reply::new(body)) })
    }

    #[test]
    fn lookups() {
        let router = Router::new()
            .route("a", ok_handler())
            .route_notify_fn("t.*", |_, _| async {});
        assert!(router.handler("a").is_some());
        assert!(router.handler("b").is_none());
        // The built-in methods are not routes: the connection handles them.
        assert!(router.handler(SUBSCRIBE).is_none() && router.handler(UNSUBSCRIBE).is_none());
        assert_eq!(router.handler("a").map(|(m, _)| &**m), Some("a"));
        assert!(router.notify_handler("t.x").is_some());
        assert!(router.notify_handler("u").is_none());
        assert!(format!("{router:?}").contains("\"a\""));
    }

    #[test]
    fn many_methods_each_find_their_own_handler() {
        // Many routes (the table grows and rehashes under its non-default hasher), with names
        // that differ only in their last byte or in length: each is found, and only it.
        let names: Vec<String> = (0..300)
            .map(|i| format!("svc.method.{i}"))
            .chain(["a", "ab", "abcdefgh", "abcdefghi", "abcdefgh."].map(String::from))
            .collect();
        let router = names.iter().fold(Router::new(), |router, name| {
            router.route(name, ok_handler())
        });
        for name in &names {
            // The key is stored with its handler: finding the key is finding the handler.
            let (method, _) = router.handler(name).expect("routed");
            assert_eq!(&**method, name.as_str());
        }
        assert!(router.handler("svc.method.300").is_none());
        assert!(router.handler("abcdefg").is_none());
        assert!(router.handler("").is_none());
    }

    #[test]
    #[should_panic(expected = "routed twice")]
    fn duplicate_method_panics() {
        let _ = Router::new()
            .route("a", ok_handler())
            .route("a", ok_handler());
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn dollar_methods_are_reserved() {
        let _ = Router::new().route("$subscribe", ok_handler());
    }
}
