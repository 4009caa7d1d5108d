//! The interface of scripted backends for the unit tests of the call path.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use mcp_format::FormatId;
use mcp_transport::Meta;

use super::backend::{Attempt, PushStream};
use super::options::RawResponse;
use crate::error::Error;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A scripted backend: what one attempt does.
pub(crate) trait Fake: Send + Sync + 'static {
    fn call<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<RawResponse, Error>>;

    fn notify<'a>(
        &'a self,
        _topic: &'a str,
        _format: FormatId,
        _meta: Meta,
        _body: Bytes,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn subscribe<'a>(&'a self, _pattern: &'a str) -> BoxFuture<'a, Result<PushStream, Error>> {
        Box::pin(async { Err(Error::closed()) })
    }
}
