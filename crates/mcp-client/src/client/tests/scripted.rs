//! A scripted transport: each attempt is recorded, then answered as the test's script says,
//! in virtual time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::TRACEPARENT;
use mcp_format::FormatId;
use mcp_transport::Meta;
use tokio::time::Instant;

use crate::client::RawResponse;
use crate::error::{Error, Phase, Processed};
use crate::transport::{Attempt, RawPushStream, Stats, Transport};

/// What the fake saw of one attempt.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) at: Duration,
    pub(super) method: String,
    pub(super) format: FormatId,
    pub(super) traceparent: String,
    pub(super) deadline_ms: Option<u32>,
    /// The attempt's deadline, from the fake's start.
    pub(super) until: Duration,
    pub(super) meta: Vec<(String, Vec<u8>)>,
    pub(super) body: Bytes,
    pub(super) other_connection: bool,
}

type Script = dyn Fn(u32, &Seen) -> Step + Send + Sync;

pub(super) enum Step {
    Echo,
    Fail(Error),
    /// Never answers: waits for the attempt's deadline, then times out as the transport
    /// does.
    Hang,
    Answer(FormatId, &'static [u8]),
}

pub(super) struct Scripted {
    start: Instant,
    attempts: AtomicU32,
    seen: Mutex<Vec<Seen>>,
    script: Box<Script>,
}

impl Scripted {
    pub(super) fn new(script: impl Fn(u32, &Seen) -> Step + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            attempts: AtomicU32::new(0),
            seen: Mutex::new(Vec::new()),
            script: Box::new(script),
        })
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Transport for Arc<Scripted> {
    async fn call(&self, attempt: Attempt<'_>) -> Result<RawResponse, Error> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = Seen {
            at: self.start.elapsed(),
            method: attempt.method.to_owned(),
            format: attempt.format,
            traceparent: String::from_utf8(
                attempt.meta.get(TRACEPARENT).unwrap_or_default().to_vec(),
            )
            .unwrap(),
            deadline_ms: attempt.meta.deadline_ms(),
            until: attempt.deadline.saturating_duration_since(self.start),
            meta: attempt
                .meta
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
            body: attempt.body.clone(),
            other_connection: attempt.other_connection,
        };
        self.seen.lock().unwrap().push(seen.clone());
        // Answers take a little virtual time, like a network.
        tokio::time::sleep(Duration::from_millis(1)).await;
        match (self.script)(n, &seen) {
            Step::Echo => Ok(RawResponse {
                format: attempt.format,
                meta: Meta::new(),
                body: attempt.body,
            }),
            Step::Answer(format, body) => Ok(RawResponse {
                format,
                meta: Meta::new(),
                body: Bytes::from_static(body),
            }),
            Step::Fail(e) => Err(e),
            Step::Hang => {
                tokio::time::sleep_until(attempt.deadline).await;
                Err(Error::timeout(Phase::Response, Processed::Maybe))
            }
        }
    }

    async fn notify(
        &self,
        _topic: &str,
        _format: FormatId,
        _meta: Meta,
        _body: Bytes,
        _deadline: Instant,
    ) -> Result<(), Error> {
        Ok(())
    }

    async fn subscribe(&self, _pattern: &str, _deadline: Instant) -> Result<RawPushStream, Error> {
        Err(Error::closed())
    }

    async fn ready(&self, _deadline: Instant, _fail_fast: bool) -> Result<(), Error> {
        Ok(())
    }

    async fn close(&self) {}

    fn close_now(&self) {}

    fn stats(&self) -> Stats {
        Stats::default()
    }

    fn endpoint(&self) -> &str {
        "scripted"
    }
}
