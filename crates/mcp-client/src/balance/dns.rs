//! DNS discovery: a fleet that follows the addresses of one name (`host:port`), through
//! hickory-resolver with its cache off (the answer is what the name says now, not what it
//! said within a TTL). Every endpoint keeps the host name as its server name, not its IP.
//!
//! When it resolves: at start; every `interval` (30 s) with ±10% jitter, so that clients
//! started together do not query together; and at once when an endpoint's connects fail or
//! a connection is lost (a replica going away sends GOAWAY), at most once per
//! `min_refresh` (5 s). What it does with an answer: a non-empty set different from the
//! last becomes the fleet (a [`Change::Reset`]: new endpoints added, gone ones drained); a
//! failed or empty answer changes nothing, so a DNS outage keeps the last good set.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::fleet::{Shared, apply};
use super::{Change, Instance};
use crate::error::Error;

/// How a fleet follows a DNS name ([`Client::dns_with`](crate::Client::dns_with)).
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// How often the name is resolved again (30 s, jittered by ±10%).
    pub interval: Duration,
    /// The least time between two resolutions that a failure asked for (5 s).
    pub min_refresh: Duration,
    /// How long one resolution may take (5 s).
    pub timeout: Duration,
    /// Name servers to ask (UDP, then TCP, on each); empty: the system's configuration
    /// (`/etc/resolv.conf`).
    pub name_servers: Vec<SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            min_refresh: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            name_servers: Vec::new(),
        }
    }
}

/// A DNS name to follow, as the builder keeps it.
#[derive(Clone, Debug)]
#[allow(unreachable_pub)]
pub struct DnsSource {
    pub(crate) target: String,
    pub(crate) config: DnsConfig,
}

/// What resolving needs: the resolver, the name and the port.
pub(crate) struct Follower {
    resolver: TokioResolver,
    host: String,
    port: u16,
    config: DnsConfig,
}

impl DnsSource {
    /// Checks the name and the settings and makes the resolver.
    pub(crate) fn follower(&self) -> Result<Follower, Error> {
        let invalid = |why: String| Error::invalid(format!("invalid DNS target: {why}"));
        let (host, port) = self
            .target
            .rsplit_once(':')
            .ok_or_else(|| invalid(format!("{:?} is not host:port", self.target)))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("{port:?} is not a port")))?;
        if host.is_empty() {
            return Err(invalid(format!("{:?} has no host", self.target)));
        }
        let c = &self.config;
        if c.interval.is_zero() || c.timeout.is_zero() {
            return Err(invalid(
                "interval and timeout must be longer than zero".into(),
            ));
        }
        let provider = TokioConnectionProvider::default();
        let mut builder = if c.name_servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| {
                Error::invalid(format!("cannot read the system's DNS configuration: {e}"))
            })?
        } else {
            let mut group = Vec::new();
            for &addr in &c.name_servers {
                group.push(NameServerConfig::new(addr, Protocol::Udp));
                group.push(NameServerConfig::new(addr, Protocol::Tcp));
            }
            let config =
                ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::from(group));
            let mut builder = TokioResolver::builder_with_config(config, provider);
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options: &mut ResolverOpts = builder.options_mut();
        // The cache off: each resolution asks the name servers.
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.timeout = c.timeout;
        Ok(Follower {
            resolver: builder.build(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            config: c.clone(),
        })
    }
}

impl Follower {
    /// The name's addresses now; `None` if the answer failed or was empty.
    async fn resolve(&self) -> Option<BTreeSet<IpAddr>> {
        let lookup = tokio::time::timeout(
            self.config.timeout,
            self.resolver.lookup_ip(self.host.as_str()),
        )
        .await;
        match lookup {
            Ok(Ok(answer)) => {
                let ips: BTreeSet<IpAddr> = answer.iter().collect();
                if ips.is_empty() {
                    tracing::warn!(host = %self.host, "empty DNS answer; keeping the last set");
                    None
                } else {
                    Some(ips)
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(host = %self.host, error = %e, "DNS lookup failed; keeping the last set");
                None
            }
            Err(_) => {
                tracing::warn!(host = %self.host, "DNS lookup timed out; keeping the last set");
                None
            }
        }
    }

    fn instances(&self, ips: &BTreeSet<IpAddr>) -> Vec<Instance> {
        ips.iter()
            .map(|&ip| {
                Instance::new(SocketAddr::new(ip, self.port).to_string())
                    .with_server_name(self.host.clone())
            })
            .collect()
    }
}

/// Follows the name for the fleet until the fleet is gone (its owner aborts this task).
pub(crate) async fn follow(shared: Weak<Shared>, follower: Follower, refresh: Arc<Notify>) {
    let mut last: Option<BTreeSet<IpAddr>> = None;
    let mut jitter = Jitter::new();
    loop {
        let resolved_at = Instant::now();
        if let Some(ips) = follower.resolve().await {
            if last.as_ref() != Some(&ips) {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                tracing::debug!(host = %follower.host, count = ips.len(), "DNS set changed");
                apply(&shared, Change::Reset(follower.instances(&ips)));
                last = Some(ips);
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
        let next = resolved_at + jitter.around(follower.config.interval);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = refresh.notified() => {
                // Asked for by a failure: at most once per `min_refresh`.
                let earliest = resolved_at + follower.config.min_refresh;
                tokio::time::sleep_until(earliest.min(next)).await;
            }
        }
    }
}

/// ±10% around an interval, from a small generator seeded by the clock.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(super::hash::mix(seed) | 1)
    }

    fn around(&mut self, interval: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // A factor in [0.9, 1.1).
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(0.9 + 0.2 * unit)
    }
}
