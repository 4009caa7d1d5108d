//! What a message read asks of the server, once the core has admitted it: a handler to
//! start (or the authentication hook's refusal in its place), a subscription, a `$health`
//! answer, a client NOTIFY for its handler; and the connection's writer as a subscriber
//! of published NOTIFY messages.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use mcp_codec::{Envelope, ErrorCode, Flags, Metadata, Notify};
use mcp_format::FormatId;
use mcp_transport::proto::ServerEvent;
use mcp_transport::{Inbound, InboundRequest, Push, WireWriter};
use tokio::time::Instant;

use super::{Conn, End, send_reply};
use crate::auth::AuthRequest;
use crate::error::Status;
use crate::handler::{Invoke, NotifyContext, ReceivedMeta, Reply};
use crate::pattern::Pattern;
use crate::subscribe::{Notification, Offer, SubscribeError, Subscriber};

/// The connection's writer takes a published NOTIFY unless its queue is full: a publisher
/// never waits for one slow subscriber (the NOTIFY is dropped for it and counted).
impl Subscriber for WireWriter {
    fn offer(&self, n: &Notification) -> Offer {
        if self.is_full() {
            return Offer::Full;
        }
        let notify = Notify {
            flags: Flags::NONE,
            format: n.format,
            topic: &n.topic,
            meta: Metadata::from_owned(&n.meta),
            body: &n.body,
        };
        match self.send(Envelope::Notify(notify)) {
            Ok(()) => Offer::Queued,
            // The publisher validated the message, so the only failure is a closing writer.
            Err(_) => Offer::Closed,
        }
    }
}

/// What the router gave for a request, or the authentication hook's refusal in its place.
enum Route {
    Handler(Arc<str>, Arc<dyn Invoke>),
    Refused(Status),
}

impl Conn {
    /// One message read: the core answers what the protocol answers by itself and says
    /// what needs this server (a handler, the subscription registry, the health table).
    pub(super) fn inbound(
        &mut self,
        message: Inbound,
        arrived: Instant,
        now: Instant,
    ) -> Option<End> {
        // The hook decides before routing: a refused request takes the place of a routed
        // one, so the core still applies every rule before it (a duplicate id, GOAWAY, the
        // in-flight limits, the deadline) and the refusal is answered by its id.
        let refusal = match (&message, &self.shared.authenticator) {
            (Inbound::Request(request), Some(hook)) => hook
                .check(&AuthRequest {
                    name: request.method(),
                    notify: false,
                    meta: request.meta(),
                    peer_addr: self.peer,
                    peer_identity: self.identity.as_ref(),
                })
                .err(),
            _ => None,
        };
        let router = &self.shared.router;
        let mut out = self.shared.metrics.transmit(&self.writer);
        let event = self.state.handle_inbound(
            &mut out,
            message,
            arrived.into_std(),
            now.into_std(),
            |method| match refusal {
                Some(status) => Some(Route::Refused(status)),
                None => router
                    .handler(method)
                    .map(|(m, h)| Route::Handler(m.clone(), h.clone())),
            },
        )?;
        match event {
            ServerEvent::Run {
                request,
                route: Route::Handler(method, handler),
                deadline,
            } => self.start(request, (method, handler), deadline.map(Instant::from_std)),
            ServerEvent::Run {
                request,
                route: Route::Refused(status),
                ..
            } => {
                self.shared
                    .stats
                    .auth_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.refused(status.code());
                // Answered now: never recorded as in flight (so it takes no place in the
                // server's budget), like a handler done in its first poll.
                self.answer(request.id(), request.format(), Err(status));
            }
            ServerEvent::Subscribe(request) => self.subscribe(&request, true),
            ServerEvent::Unsubscribe(request) => self.subscribe(&request, false),
            ServerEvent::Health(request) => self.health(&request),
            ServerEvent::Notify(push) => self.notify(push),
            ServerEvent::Stop(request) => request.stop(),
            ServerEvent::Protocol(code, message) => return Some(End::Protocol(code, message)),
            ServerEvent::PeerClosed => return Some(End::PeerClosed),
            // A kind of event a later core adds: nothing this server knows to do.
            _ => {}
        }
        None
    }

    /// `$health`: the body is a service name, 0..=255 bytes of UTF-8 whatever the format
    /// byte; the answer one word in format 0 (docs/protocol.md section 7).
    fn health(&mut self, request: &InboundRequest) {
        let id = request.id();
        let service = match std::str::from_utf8(request.body()) {
            Ok(service) if service.len() <= 255 => service,
            _ => {
                let message = "a $health body is a service name: at most 255 bytes of UTF-8";
                self.send_error(id, ErrorCode::MALFORMED, message);
                return;
            }
        };
        let status = self.shared.health.status(service);
        let word = Bytes::from_static(status.as_str().as_bytes());
        self.send_reply(id, mcp_codec::format::RAW, &Reply::new(word));
    }

    fn subscribe(&mut self, request: &InboundRequest, subscribe: bool) {
        let id = request.id();
        let pattern = match Pattern::parse(request.body()) {
            Ok(pattern) => pattern,
            Err(err) => {
                self.send_error(id, ErrorCode::MALFORMED, err.as_str());
                return;
            }
        };
        let format = request.format();
        let registry = &self.shared.registry;
        if !subscribe {
            registry.unsubscribe(self.id, &pattern);
            self.send_reply(id, format, &Reply::empty());
            return;
        }
        let writer = &self.writer;
        let result = registry.subscribe(
            self.id,
            writer,
            pattern,
            self.shared.config.max_subscriptions,
            || send_reply(writer, id, format, &Reply::empty()),
        );
        if let Err(SubscribeError::TooMany) = result {
            self.send_error(
                id,
                ErrorCode::OVERLOADED,
                "too many subscriptions on this connection",
            );
        }
    }

    fn notify(&mut self, push: Push) {
        let stats = &self.shared.stats;
        if let Some(hook) = &self.shared.authenticator {
            let request = AuthRequest {
                name: push.topic(),
                notify: true,
                meta: push.meta(),
                peer_addr: self.peer,
                peer_identity: self.identity.as_ref(),
            };
            if hook.check(&request).is_err() {
                stats.auth_refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let Some(handler) = self.shared.router.notify_handler(push.topic()).cloned() else {
            stats.notifies_unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(permit) = self.notify_permits.clone().try_acquire_owned() else {
            stats.notifies_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A body larger than the whole budget takes all of it, so that it can still be
        // handled when nothing else is.
        let budget = notify_byte_budget(self.shared.config.max_in_flight_bytes);
        let bytes = u32::try_from(push.body().len().min(budget)).unwrap_or(u32::MAX);
        let Ok(bytes) = self.notify_bytes.clone().try_acquire_many_owned(bytes) else {
            stats.notifies_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ctx = NotifyContext {
            topic: push.topic().into(),
            format: FormatId::new(push.format()),
            meta: ReceivedMeta::new(push.meta().clone()),
            peer: self.peer,
            identity: self.identity.clone(),
            conn: self.writer.clone(),
            max_message_len: self.shared.config.max_message_len,
        };
        let body = push.into_body();
        tokio::spawn(async move {
            let _permits = (permit, bytes);
            handler.notify(ctx, body).await;
        });
    }
}

/// The byte budget of client NOTIFY bodies: `max_in_flight_bytes`, within what one
/// semaphore acquisition can take.
pub(super) fn notify_byte_budget(max_in_flight_bytes: usize) -> usize {
    max_in_flight_bytes.clamp(1, u32::MAX as usize)
}
