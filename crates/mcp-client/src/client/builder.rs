//! `ClientBuilder`: every setting of a client, with the defaults of docs/protocol.md section 8.

use std::sync::Arc;
use std::time::Duration;

use mcp_format::Format;
use mcp_transport::{HeartbeatConfig, Meta, MetadataSource, Pool, PoolConfig};
use tokio::time::Instant;

use super::Client;
use crate::auth::{AUTHORIZATION, Authorization};
use crate::balance::{BalanceConfig, Fleet};
use crate::breaker::BreakerConfig;
use crate::error::Error;
use crate::limit::LimitConfig;
use crate::retry::RetryConfig;
use crate::stack::{Policies, Stack};
use crate::transport::{Dialer, Target, Transport};
use crate::window::later;

/// Builds a [`Client`]. Start from [`Client::builder`].
///
/// | setting | default |
/// |---|---|
/// | total call budget ([`timeout`](Self::timeout)) | 5 s |
/// | per attempt ([`attempt_timeout`](Self::attempt_timeout)) | 2 s |
/// | connect timeout | 1 s |
/// | retries ([`retry`](Self::retry)) | after 100, 300, 700 ms; budget 20% + 10/s |
/// | circuit breaker ([`breaker`](Self::breaker)) | 50% of >= 20 calls in 10 s; 5 s cool-down |
/// | concurrency ([`limit`](Self::limit)) | 1024 outstanding calls, then wait |
/// | connections | up to 4, opened on demand, reconnect 1 s doubling to 30 s |
/// | heartbeat | PING after 15 s of silence, dead 5 s later |
/// | balancer, for a fleet ([`balance`](Self::balance)) | p2c over peak EWMA; eject after 5 failures in a row for 30 s × n |
///
/// `T` is where calls go: [`Pool`] (connections to one endpoint, from
/// [`Client::builder`]) or [`Fleet`] (a pool per endpoint and a balancer, from
/// [`Client::fleet`] or [`Client::discover`]). Connection settings apply to each endpoint.
#[must_use]
pub struct ClientBuilder<F: Format, T: Target = Pool> {
    target: T::Source,
    format: F,
    policies: Policies,
    pool: PoolConfig,
    balance: BalanceConfig,
    wait_for_ready: bool,
    #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
    tls: Option<mcp_transport::TlsClientConfig>,
}

impl<F: Format, T: Target> std::fmt::Debug for ClientBuilder<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("target", &self.target)
            .field("format", &self.format)
            .field("policies", &self.policies)
            .field("pool", &self.pool)
            .field("balance", &self.balance)
            .field("wait_for_ready", &self.wait_for_ready)
            .finish_non_exhaustive()
    }
}

impl<F: Format, T: Target> Clone for ClientBuilder<F, T> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            format: self.format.clone(),
            policies: self.policies.clone(),
            pool: self.pool.clone(),
            balance: self.balance.clone(),
            wait_for_ready: self.wait_for_ready,
            #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
            tls: self.tls.clone(),
        }
    }
}

impl<T: Target> ClientBuilder<super::DefaultFormat, T> {
    pub(crate) fn new(target: T::Source) -> Self {
        Self {
            target,
            format: super::DefaultFormat::default(),
            policies: Policies::default(),
            pool: PoolConfig::default(),
            balance: BalanceConfig::default(),
            wait_for_ready: false,
            #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
            tls: None,
        }
    }
}

impl<F: Format> ClientBuilder<F, Fleet> {
    /// The balancer: how calls pick among the endpoints, outlier ejection.
    pub fn balance(mut self, balance: BalanceConfig) -> Self {
        self.balance = balance;
        self
    }
}

impl<F: Format, T: Target> ClientBuilder<F, T> {
    /// Speak `format` instead (e.g. `mcp_client::Protobuf`).
    pub fn format<G: Format>(self, format: G) -> ClientBuilder<G, T> {
        ClientBuilder {
            target: self.target,
            format,
            policies: self.policies,
            pool: self.pool,
            balance: self.balance,
            wait_for_ready: self.wait_for_ready,
            #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
            tls: self.tls,
        }
    }

    /// Connects over TLS as `config` says (CA roots, an identity for mutual TLS, the server
    /// name; by default the host of the address given). The handshake is part of the
    /// connect phase and its timeout; a failed one is a connect error whose
    /// [`Error::tls_failure`] names the reason.
    #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
    pub fn tls(mut self, config: mcp_transport::TlsClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Sends `value` as the `authorization` metadata entry of every request and NOTIFY
    /// (an entry the call sets itself wins), and of the `$subscribe` and `$unsubscribe` the
    /// transport sends for subscriptions.
    pub fn authorization(mut self, value: impl Into<bytes::Bytes>) -> Self {
        self.policies.authorization = Some(Authorization::Static(value.into()));
        self
    }

    /// Sends what `provider` gives as the `authorization` entry, asking it on every attempt
    /// (so that a token it refreshes is used from the next attempt on); `None` sends no
    /// entry. It runs on the caller's task and must not block: keep the token in memory
    /// and refresh it elsewhere (or only when it is about to expire).
    pub fn authorization_fn<P>(mut self, provider: P) -> Self
    where
        P: Fn() -> Option<bytes::Bytes> + Send + Sync + 'static,
    {
        self.policies.authorization = Some(Authorization::Provider(Arc::new(provider)));
        self
    }

    /// The total budget of a call: slot, connection, attempts and backoff (5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_inner(timeout);
        self
    }

    fn timeout_inner(&mut self, timeout: Duration) {
        self.policies.timing.timeout = timeout;
        // The transport's own default applies to calls made without a deadline; ours
        // always carry one, but keep the two in step.
        self.pool.default_timeout = timeout;
    }

    /// The budget of one attempt: connection, write and answer (2 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.policies.timing.attempt_timeout = timeout;
        self
    }

    /// How long opening a TCP connection may take (1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pool.connection.connect_timeout = timeout;
        self
    }

    /// What [`ClientBuilder::connect`] does when the first connect try fails: by default
    /// it fails at once (within the connect timeout), which is what a program that needs
    /// its server wants to know; with `true` it waits for the server through the
    /// reconnect backoff, within the call timeout (gRPC's wait-for-ready).
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.wait_for_ready = wait;
        self
    }

    /// How long [`Client::close`] lets calls in flight finish (5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.policies.timing.close_timeout = timeout;
        self
    }

    /// The retry policy.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.policies.retry = retry;
        self
    }

    /// The circuit breaker.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.policies.breaker = breaker;
        self
    }

    /// The concurrency limit.
    pub fn limit(mut self, limit: LimitConfig) -> Self {
        self.policies.limit = limit;
        self
    }

    /// The most connections to the server (4; requests are multiplexed, so a few suffice).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.pool.max_connections = max.max(1);
        self
    }

    /// Heartbeat: PING after `interval` of silence, connection dead `timeout` later
    /// (15 s / 5 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.pool.connection.heartbeat = HeartbeatConfig { interval, timeout };
        self
    }

    /// Every transport setting at once (connections, reconnect backoff, queues, message
    /// size); the setters above change single fields of it.
    ///
    /// While the server cannot be reached, calls wait (within their budget) as the pool
    /// reconnects with backoff, so that a restarting server is reached again. A one-shot
    /// program that would rather hear at once that nobody listens sets
    /// `backoff.max_tries` to 1: the first refused connect then fails the call (`mcp call`
    /// does so).
    pub fn pool_config(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        let timeout = self.policies.timing.timeout;
        self.timeout_inner(timeout);
        self
    }

    /// The client, without connecting: the first call opens a connection. Must be called
    /// inside a tokio runtime (the pool's tasks run on it).
    pub fn build(self) -> Result<Client<F, T>, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "a client must be built inside a tokio runtime",
            ));
        }
        // A setting that cannot work is refused here, with its name, rather than showing
        // up later as calls that all time out or connections that all die.
        let timing = [
            ("timeout", self.policies.timing.timeout),
            ("attempt_timeout", self.policies.timing.attempt_timeout),
        ];
        for (field, value) in timing {
            if value.is_zero() {
                return Err(Error::invalid(format!(
                    "invalid configuration: {field} must be longer than zero"
                )));
            }
        }
        self.pool
            .check()
            .map_err(|e| Error::invalid(format!("invalid configuration: {e}")))?;
        let pool_config = self.pool_with_credentials();
        let dialer = Dialer {
            #[cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))]
            tls: self.tls.clone(),
        };
        let transport = T::make(self.target.clone(), &pool_config, &self.balance, &dialer)?;
        Ok(self.build_with(transport))
    }

    /// The pool's settings, with the client's credentials on the requests the transport
    /// sends by itself (`$subscribe` and `$unsubscribe`), unless the pool's settings
    /// already name metadata for them.
    fn pool_with_credentials(&self) -> PoolConfig {
        let mut pool = self.pool.clone();
        if let (Some(authorization), None) = (
            &self.policies.authorization,
            &pool.connection.control_metadata,
        ) {
            let authorization = authorization.clone();
            pool.connection.control_metadata =
                Some(MetadataSource::new(move || match authorization.value() {
                    Some(value) => Meta::from_entries([(AUTHORIZATION, &value[..])]),
                    None => Meta::new(),
                }));
        }
        pool
    }

    /// The client over `transport` (the pool, or a scripted transport in unit tests).
    pub(crate) fn build_with<U: Transport>(self, transport: U) -> Client<F, U> {
        let stack = Stack::new(transport, self.policies);
        Client::from_stack(Arc::new(stack), self.format)
    }

    /// The client, with a first connection open, so that an unreachable server is
    /// reported here rather than by the first call: at the first failed connect try (within
    /// the connect timeout), unless [`ClientBuilder::wait_for_ready`] asks to wait.
    pub async fn connect(self) -> Result<Client<F, T>, Error> {
        let fail_fast = !self.wait_for_ready;
        let client = self.build()?;
        let deadline = later(Instant::now(), client.stack.timing().timeout);
        Transport::ready(client.stack.transport(), deadline, fail_fast).await?;
        Ok(client)
    }
}
