//! Credentials a client sends with every call: the `authorization` metadata entry, a fixed
//! value or one a function gives at each attempt (a token it refreshes).
//!
//! The server's authentication hook reads the entry and may refuse the call with ERROR 10
//! (UNAUTHENTICATED) or 11 (PERMISSION_DENIED), which are not retried (docs/protocol.md
//! section 5).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// The metadata key credentials travel in.
pub const AUTHORIZATION: &str = "authorization";

/// Where a client's `authorization` value comes from.
#[derive(Clone)]
pub(crate) enum Authorization {
    /// The same value on every call.
    Static(Bytes),
    /// Asked on every attempt, so that a refreshed token is used from the next attempt on;
    /// `None` sends no entry.
    Provider(Arc<dyn Fn() -> Option<Bytes> + Send + Sync>),
}

impl Authorization {
    /// The value for the attempt about to be made.
    pub(crate) fn value(&self) -> Option<Bytes> {
        match self {
            Authorization::Static(value) => Some(value.clone()),
            Authorization::Provider(provider) => provider(),
        }
    }
}

impl fmt::Debug for Authorization {
    // Credentials stay out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Static(_) => f.write_str("Authorization::Static(<redacted>)"),
            Authorization::Provider(_) => f.write_str("Authorization::Provider(..)"),
        }
    }
}
