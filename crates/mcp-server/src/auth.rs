//! The authentication hook: one function the server asks about every request and client
//! NOTIFY before routing it, with what the request carries (its metadata, the
//! `authorization` entry in particular) and who the peer is (its address, and its
//! certificate when it connected with TLS and a client certificate).
//!
//! A request the hook refuses is answered with the hook's [`Status`] (ERROR 10
//! UNAUTHENTICATED or 11 PERMISSION_DENIED, docs/protocol.md section 6) and no handler runs;
//! nothing of it is routed, so an unknown method is refused the same way as a known one and
//! a client without credentials cannot learn which methods exist. The built-in methods
//! (`$subscribe`, `$unsubscribe`, `$health`) are asked about too: a hook that lets a load
//! balancer's `$health` through without credentials says so itself. A refused NOTIFY is
//! dropped (nothing answers a NOTIFY) and counted in [`ServerStats::auth_refused`].
//!
//! [`ServerStats::auth_refused`]: crate::ServerStats::auth_refused

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use mcp_transport::{Meta, PeerIdentity};

use crate::error::Status;

/// The metadata key credentials travel in.
pub const AUTHORIZATION: &str = "authorization";

/// What the hook sees of one request or client NOTIFY.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) notify: bool,
    pub(crate) meta: &'a Meta,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) peer_identity: Option<&'a PeerIdentity>,
}

impl AuthRequest<'_> {
    /// The method called, or the topic of a NOTIFY.
    pub fn method(&self) -> &str {
        self.name
    }

    /// Whether this is a client NOTIFY (refusing it drops it) rather than a request.
    pub fn is_notify(&self) -> bool {
        self.notify
    }

    /// The request's metadata.
    pub fn metadata(&self) -> &Meta {
        self.meta
    }

    /// The `authorization` entry, if any (the first, if repeated).
    pub fn authorization(&self) -> Option<&[u8]> {
        self.meta.get(AUTHORIZATION)
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The client's verified TLS certificate chain, when it presented one.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer_identity
    }
}

/// The hook's signature.
type Hook = dyn Fn(&AuthRequest<'_>) -> Result<(), Status> + Send + Sync;

/// The hook as the server keeps it.
#[derive(Clone)]
pub(crate) struct Authenticator(Arc<Hook>);

impl Authenticator {
    pub(crate) fn new<F>(hook: F) -> Self
    where
        F: Fn(&AuthRequest<'_>) -> Result<(), Status> + Send + Sync + 'static,
    {
        Authenticator(Arc::new(hook))
    }

    pub(crate) fn check(&self, request: &AuthRequest<'_>) -> Result<(), Status> {
        (self.0)(request)
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator(..)")
    }
}
