//! The stack: the client's policies composed over its transport, in the one place that says
//! which policies a call meets and in which order.
//!
//! The path of one call, outside in:
//! 1. refuse if closing; start the clock of the call's total budget ([`Timing`]); count the
//!    call as started ([`metrics`](crate::metrics));
//! 2. [`trace`]: pick the trace context, open the `mcp.call` span;
//! 3. [`limit`](crate::limit): take a slot under the concurrency limit (queue phase), unless
//!    one was reserved beforehand (`tower_service::Service::poll_ready`);
//! 4. [`retry`](crate::retry): run attempts until one succeeds or the policy gives up;
//! 5. per attempt, [`breaker`](crate::breaker): fail fast if open, else record the outcome;
//! 6. per attempt, [`trace`] again: the `traceparent`, `tracestate` and `deadline` it sends;
//! 7. per attempt, the [`Transport`] (the pool): a connection, the REQUEST, the answer within
//!    the attempt's deadline;
//! 8. [`metrics`](crate::metrics): record the outcome and, for an answered call, its latency
//!    (and, with the `metrics` feature, each attempt's duration and bytes, retries, and the
//!    call's duration through the `metrics` facade, on handles taken at step 1).
//!
//! Each policy lives in its own folder of the same shape (`mod.rs`: its docs and public
//! config; `state.rs`: the crate-private state driven here, with the time passed in;
//! `tests.rs`), and is tested there alone; this module only composes them. A new policy (a
//! hedge, a balancer) is one more folder, a field of [`Stack`] built in [`Stack::new`], and
//! its step in [`Stack::call`] (per call) or in the attempt closure of `Stack::attempts`
//! (per attempt).
//!
//! The composition is written out rather than built from `tower` layers: a `Service` per
//! policy would box a future per layer and per call, on a path measured in instructions per
//! request. `Client` (typed bodies) and its `tower_service::Service` impl are both built on
//! [`Stack::call`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mcp_format::FormatId;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::Authorization;
use crate::breaker::{Breaker, BreakerConfig, Outcome};
use crate::client::{CallOptions, RawResponse};
use crate::error::{Error, ErrorKind, Phase, Processed};
use crate::limit::{LimitConfig, Limiter, Slot};
use crate::metrics::{MetricsSnapshot, Recorder};
use crate::retry::{Retry, RetryConfig};
use crate::trace::{self, TraceContext};
use crate::transport::{Attempt, RawPushStream, Transport, Tried};
use crate::window::later;

/// The client's timing settings: how a call's budget is split.
#[derive(Clone, Debug)]
pub(crate) struct Timing {
    /// Total budget of a call (5 s).
    pub(crate) timeout: Duration,
    /// Budget of one attempt (2 s).
    pub(crate) attempt_timeout: Duration,
    /// How long `close` lets calls in flight finish (5 s).
    pub(crate) close_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// The settings of every policy, as the builder gathers them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Policies {
    pub(crate) timing: Timing,
    pub(crate) limit: LimitConfig,
    pub(crate) retry: RetryConfig,
    pub(crate) breaker: BreakerConfig,
    /// The `authorization` entry of every request and NOTIFY, if any.
    pub(crate) authorization: Option<Authorization>,
}

/// The policies of one client over its transport; every clone of the client shares it.
#[derive(Debug)]
pub(crate) struct Stack<T> {
    transport: T,
    timing: Timing,
    limit: Limiter,
    retry: Retry,
    breaker: Breaker,
    metrics: Recorder,
    closing: AtomicBool,
    authorization: Option<Authorization>,
}

impl<T: Transport> Stack<T> {
    /// The policies built from their settings, over `transport`.
    pub(crate) fn new(transport: T, policies: Policies) -> Self {
        let now = Instant::now();
        let metrics = Recorder::new(transport.endpoint());
        Self {
            timing: policies.timing,
            limit: Limiter::new(policies.limit),
            retry: Retry::new(policies.retry, now),
            breaker: Breaker::new(policies.breaker, now).with_transitions(metrics.transitions()),
            metrics,
            transport,
            closing: AtomicBool::new(false),
            authorization: policies.authorization,
        }
    }

    pub(crate) fn transport(&self) -> &T {
        &self.transport
    }

    pub(crate) fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The concurrency limit, for a front end that reserves a slot before it calls
    /// (`tower_service::Service::poll_ready`).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn limit(&self) -> &Limiter {
        &self.limit
    }

    /// Whether the client was closed.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A "closed" error (counted) once the client is closed.
    pub(crate) fn refuse_if_closing(&self) -> Result<(), Error> {
        if self.is_closing() {
            return Err(self.local_failure(Error::closed()));
        }
        Ok(())
    }

    /// Counts a failure that happened outside the call path (before it started, or after
    /// it ended: a body that does not decode).
    pub(crate) fn local_failure(&self, err: Error) -> Error {
        self.metrics.error(err.kind());
        err
    }

    /// A call, through every policy (see the module docs). `slot` is a slot reserved
    /// beforehand (`tower_service::Service::poll_ready`), else one is taken here.
    pub(crate) async fn call(
        &self,
        method: &str,
        format: FormatId,
        body: Bytes,
        options: &CallOptions,
        slot: Option<Slot>,
    ) -> Result<RawResponse, Error> {
        self.refuse_if_closing()?;
        let start = Instant::now();
        let deadline = later(start, options.timeout.unwrap_or(self.timing.timeout));
        let observed = self.metrics.started(method);
        let mut context = trace::context_of(options);
        let span = trace::call_span(method, &mut context);
        // No timer of its own for the total budget: every wait below is bounded by
        // `deadline` already (the limiter's queue, each attempt's deadline that the
        // transport enforces, a backoff started only if it ends in time), and a timer per
        // call is measurable on the hot path.
        let calls = self.attempts(
            method, format, body, options, &context, start, deadline, slot, &observed,
        );
        // A disabled span (no subscriber interested) is skipped rather than entered and
        // exited on every poll.
        let result = if span.is_disabled() {
            calls.await
        } else {
            calls.instrument(span).await
        };
        // A successful call brings the time its answer came (read once for the breaker
        // and the latency); a failure reads the clock here.
        let (result, end) = match result {
            Ok((response, end)) => (Ok(response), end),
            Err(e) => (Err(e), Instant::now()),
        };

        let answered = match &result {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::Remote,
        };
        let took = end.saturating_duration_since(start);
        self.metrics.finished(
            result.as_ref().map(drop).map_err(Error::kind),
            answered,
            took,
        );
        observed.finished(result.as_ref().map(drop), took);
        if let Err(e) = &result {
            tracing::debug!(error = %e, "call failed");
        }
        result
    }

    /// Steps 3 to 7 of the call path: a slot, then attempts under the retry policy. A
    /// success comes with the time its answer came.
    ///
    /// The clock is read as little as the policies allow (a read costs about as much as
    /// the breaker and the retry budget together): `start` stands for "now" until
    /// something waits, and the end of the attempt that succeeded is the call's end.
    #[allow(clippy::too_many_arguments)] // the pieces of one call, kept apart on purpose
    async fn attempts(
        &self,
        method: &str,
        format: FormatId,
        body: Bytes,
        options: &CallOptions,
        context: &TraceContext,
        start: Instant,
        deadline: Instant,
        slot: Option<Slot>,
        observed: &crate::metrics::Call,
    ) -> Result<(RawResponse, Instant), Error> {
        let (_slot, ready_at) = match slot {
            Some(slot) => (slot, start),
            None => match self.limit.try_acquire() {
                Ok(Some(slot)) => (slot, start),
                Ok(None) => {
                    let slot = self
                        .limit
                        .acquire(deadline)
                        .await
                        .map_err(|e| e.for_call(options.idempotent, 0))?;
                    (slot, Instant::now())
                }
                Err(e) => return Err(e.for_call(options.idempotent, 0)),
            },
        };
        let attempt_timeout = options
            .attempt_timeout
            .unwrap_or(self.timing.attempt_timeout);
        let tried = Tried::default();
        let tried = &tried;
        self.retry
            .run(
                options.idempotent,
                !options.no_retry,
                ready_at,
                deadline,
                |number, other_connection| {
                    let body = body.clone();
                    async move {
                        // A retry starts after a backoff sleep: only then is `ready_at` old.
                        let now = if number == 1 {
                            ready_at
                        } else {
                            Instant::now()
                        };
                        // The attempt's own timeout, unless the call's budget ends first
                        // (then the time left of it, which takes a subtraction).
                        let own = later(now, attempt_timeout);
                        let (attempt_deadline, remaining) = if own <= deadline {
                            (own, attempt_timeout)
                        } else {
                            (deadline, deadline.saturating_duration_since(now))
                        };
                        let permit = self.breaker.acquire(now)?;
                        // Asked on every attempt: a refreshed token serves the retry.
                        let authorization =
                            self.authorization.as_ref().and_then(Authorization::value);
                        let meta = trace::outgoing_meta(
                            options,
                            context,
                            Some(remaining),
                            authorization.as_deref(),
                        );
                        tracing::trace!(attempt = number, "sending");
                        let sent = body.len();
                        let result = self
                            .transport
                            .call(Attempt {
                                method,
                                format,
                                meta,
                                body,
                                deadline: attempt_deadline,
                                started: now,
                                other_connection,
                                tried,
                                hash_key: options.hash_key,
                            })
                            .await;
                        let result = result.map_err(|e| {
                            // Time ran out because the total budget did, not the attempt's
                            // own: say so, keeping where it happened.
                            match e.timeout_phase() {
                                Some(phase)
                                    if attempt_deadline == deadline
                                        && Instant::now() >= deadline =>
                                {
                                    let processed = if e.maybe_processed() {
                                        Processed::Maybe
                                    } else {
                                        Processed::No
                                    };
                                    Error::timeout(Phase::Total, processed)
                                        .with_context(format!("while in phase {phase}"))
                                }
                                _ => e,
                            }
                        });
                        let end = Instant::now();
                        permit.record(Outcome::of(&result), end);
                        observed.attempt(number, sent, &result, end.saturating_duration_since(now));
                        result.map(|response| (response, end))
                    }
                },
            )
            .await
    }

    /// A one-way message: a trace context and span, metadata without a `deadline`, the
    /// transport within the client's total budget. No limit, retry or breaker: nothing
    /// answers, so nothing could be counted or retried safely.
    pub(crate) async fn notify(
        &self,
        topic: &str,
        format: FormatId,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<(), Error> {
        let deadline = later(
            Instant::now(),
            options.timeout.unwrap_or(self.timing.timeout),
        );
        let mut context = trace::context_of(options);
        let span = trace::call_span(topic, &mut context);
        let authorization = self.authorization.as_ref().and_then(Authorization::value);
        let meta = trace::outgoing_meta(options, &context, None, authorization.as_deref());
        let result = self
            .transport
            .notify(topic, format, meta, body, deadline)
            .instrument(span)
            .await;
        result.map_err(|e| self.local_failure(e))
    }

    /// A subscription, within the client's total budget.
    pub(crate) async fn subscribe(&self, topic: &str) -> Result<RawPushStream, Error> {
        self.refuse_if_closing()?;
        let deadline = later(Instant::now(), self.timing.timeout);
        self.transport
            .subscribe(topic, deadline)
            .await
            .map_err(|e| self.local_failure(e))
    }

    /// A subscription on every endpoint, within the client's total budget.
    pub(crate) async fn subscribe_all(&self, topic: &str) -> Result<RawPushStream, Error> {
        self.refuse_if_closing()?;
        let deadline = later(Instant::now(), self.timing.timeout);
        self.transport
            .subscribe_all(topic, deadline)
            .await
            .map_err(|e| self.local_failure(e))
    }

    /// Refuses new calls, lets those in flight finish for up to `grace`, then closes the
    /// transport. Returns how many calls were still in flight when the grace ran out.
    pub(crate) async fn close_within(&self, grace: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
        self.limit.close();
        let drained = tokio::time::timeout(grace, self.limit.drained()).await;
        let abandoned = if drained.is_ok() {
            0
        } else {
            self.limit.in_flight()
        };
        self.transport.close().await;
        abandoned
    }

    /// Refuses new calls and closes the transport at once.
    pub(crate) fn close_now(&self) {
        self.closing.store(true, Ordering::Release);
        self.limit.close();
        self.transport.close_now();
    }

    /// Every policy's counters, and the transport's.
    pub(crate) fn metrics(&self) -> MetricsSnapshot {
        let now = Instant::now();
        let transport = self.transport.stats();
        MetricsSnapshot {
            calls: self.metrics.calls(),
            succeeded: self.metrics.succeeded(),
            in_flight: self.limit.in_flight(),
            queued: self.limit.queued(),
            connections: transport.connections,
            reconnects: transport.reconnects,
            retries: self.retry.retries(),
            retries_denied: self.retry.denied_by_budget(),
            breaker: self.breaker.state(now),
            breaker_opened: self.breaker.opened(),
            errors: self.metrics.errors(),
            latency: self.metrics.latency(),
            endpoints: transport.endpoints,
        }
    }
}
