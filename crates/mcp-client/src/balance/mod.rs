//! The balancer: which endpoint of a fleet an attempt goes to.
//!
//! A client of several replicas ([`Client::fleet`](crate::Client::fleet)) keeps one
//! connection pool per endpoint and a balancer that owns the map of endpoints (linkerd's
//! shape, rather than tower's `ReadyCache`, which forgets an endpoint at its first error):
//!
//! - **Pickers.** By default, *power of two choices* over peak-EWMA load (Finagle's
//!   `p2cPeakEwma`): two endpoints drawn at random, the one with the lower
//!   `latency × (outstanding + 1) / weight` wins. The latency estimate jumps up to a slower
//!   answer at once (the peak) and decays towards faster ones over `decay` (10 s), also while
//!   the endpoint is idle, so a slow replica is tried again now and then. An endpoint with no
//!   latency yet takes one call at a time (a penalty while that call is out), so a new replica
//!   is measured before it is loaded. [`Picker::RoundRobin`] takes endpoints in turn,
//!   interleaved by weight. A call with a
//!   [`hash_key`](crate::CallOptions::hash_key) goes to its key's place on a consistent-hash
//!   ring (points per endpoint in proportion to its weight) whatever the picker, moving
//!   clockwise past endpoints that cannot take it.
//! - **Readiness.** An endpoint whose connects fail is in *backoff* (its pool reconnects)
//!   and takes no calls; it is never removed for that. *Outlier ejection* is a second gate:
//!   `consecutive_failures` (5) failures in a row, or optionally a success rate under a
//!   threshold over a window, eject the endpoint for `base_time × n` (30 s × n, the n-th
//!   ejection in a row, at most `max_time`, 300 s). At most `max_percent` (50%) of the
//!   endpoints are ejected at once. When an ejection ends, one call goes as a probe; its
//!   success brings the endpoint back, its failure ejects it again.
//! - **Panic mode.** When no endpoint is ready, calls are spread over all of them (Envoy's
//!   panic threshold) rather than refused.
//! - **Retries and refusals.** An attempt after a failure goes to an endpoint this call has
//!   not tried while there is one. A request a replica refused unprocessed (GOAWAY, ERROR 6,
//!   a refused connect) is sent to another endpoint within the same attempt, so callers do
//!   not see it.
//! - **Membership.** Endpoints come from a list or a discovery stream of [`Change`]s; a
//!   removed endpoint takes no new calls and is closed once its calls in flight are done.
//!
//! Shape, as every policy folder: `mod.rs` (these docs and the public types), `state.rs`
//! (the crate-private balancer core: the endpoint map and every decision, with the time
//! passed in; no I/O), `tests.rs` (the core in virtual time). The fleet transport
//! (`fleet.rs`) is the shell that owns the pools and tasks.

#[cfg(feature = "dns")]
mod dns;
pub(crate) mod fleet;
mod follow;
pub(crate) mod hash;
mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

#[cfg(feature = "dns")]
pub use dns::DnsConfig;
#[cfg(feature = "dns")]
pub(crate) use dns::DnsSource;
pub use fleet::Fleet;
pub(crate) use fleet::FleetSource;

/// The largest weight an [`Instance`] may have; larger weights are refused.
pub const MAX_WEIGHT: u32 = 100;

/// How the balancer picks among ready endpoints for a call without a hash key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Picker {
    /// Power of two choices over peak-EWMA latency × outstanding calls / weight
    /// (Finagle's `p2cPeakEwma`): the default.
    #[default]
    PeakEwma,
    /// Each endpoint in turn, as many turns as its weight, interleaved.
    RoundRobin,
}

/// Outlier ejection: when an endpoint stops taking calls for a while.
#[derive(Clone, Debug)]
pub struct EjectionConfig {
    /// Failures in a row that eject an endpoint (5; 0 turns this rule off).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th in a row lasts n times this (30 s).
    pub base_time: Duration,
    /// The longest ejection (300 s).
    pub max_time: Duration,
    /// At most this share of the endpoints, in percent, is ejected at once (50).
    pub max_percent: u8,
    /// Also eject an endpoint whose success rate over a window falls under a threshold
    /// (off by default).
    pub success_rate: Option<SuccessRateConfig>,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            max_percent: 50,
            success_rate: None,
        }
    }
}

/// Ejection by success rate: over each `window`, an endpoint that completed at least
/// `min_calls` calls of which less than `min_rate` succeeded is ejected.
#[derive(Clone, Copy, Debug)]
pub struct SuccessRateConfig {
    /// The lowest acceptable share of successes, in 0..=1 (e.g. 0.5).
    pub min_rate: f64,
    /// Calls needed in a window before its rate counts (e.g. 20).
    pub min_calls: u32,
    /// The window's length (e.g. 10 s).
    pub window: Duration,
}

/// The balancer's settings ([`ClientBuilder::balance`](crate::ClientBuilder::balance)).
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// How calls without a hash key pick (power of two choices, peak EWMA).
    pub picker: Picker,
    /// How fast the latency estimate forgets (10 s).
    pub decay: Duration,
    /// Outlier ejection.
    pub ejection: EjectionConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            picker: Picker::PeakEwma,
            decay: Duration::from_secs(10),
            ejection: EjectionConfig::default(),
        }
    }
}

impl BalanceConfig {
    /// Checks the settings, naming the first one that cannot work.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.decay.is_zero() {
            return Err("balance.decay must be longer than zero".into());
        }
        let e = &self.ejection;
        if e.base_time.is_zero() || e.max_time < e.base_time {
            return Err("balance.ejection needs 0 < base_time <= max_time".into());
        }
        if e.max_percent > 100 {
            return Err("balance.ejection.max_percent must be at most 100".into());
        }
        if let Some(rate) = e.success_rate {
            if !(0.0..=1.0).contains(&rate.min_rate) || rate.window.is_zero() {
                return Err(
                    "balance.ejection.success_rate needs min_rate in 0..=1 and a window".into(),
                );
            }
        }
        Ok(())
    }
}

/// One endpoint of a fleet, as a list or a discovery source describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    addr: String,
    weight: u32,
    tags: Vec<String>,
    server_name: Option<String>,
}

impl Instance {
    /// The endpoint at `addr` (`host:port`), weight 1, no tags.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            weight: 1,
            tags: Vec::new(),
            server_name: None,
        }
    }

    /// Its weight, 1..=[`MAX_WEIGHT`]: its share of calls is its weight over the sum.
    /// Checked when the instance reaches a client (a bad weight is a typed error, or for a
    /// discovery stream a change that is logged and skipped).
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Adds a tag (free text, shown in the endpoint's metrics).
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// The name the endpoint is known by (the DNS name it was resolved from), kept with it
    /// for metrics and for a transport that verifies names.
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The server name, if one was given.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Refuses what the balancer cannot use, naming it.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.addr.is_empty() {
            return Err("an instance's address is empty".into());
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(format!(
                "instance {}: weight {} is outside 1..={MAX_WEIGHT}",
                self.addr, self.weight
            ));
        }
        Ok(())
    }
}

impl From<&str> for Instance {
    fn from(addr: &str) -> Self {
        Instance::new(addr)
    }
}

impl From<String> for Instance {
    fn from(addr: String) -> Self {
        Instance::new(addr)
    }
}

impl From<&String> for Instance {
    fn from(addr: &String) -> Self {
        Instance::new(addr.as_str())
    }
}

impl From<std::net::SocketAddr> for Instance {
    fn from(addr: std::net::SocketAddr) -> Self {
        Instance::new(addr.to_string())
    }
}

/// A change of a fleet's membership, as a discovery source sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The whole set: endpoints not in it are drained and closed, new ones added, known ones
    /// updated (weight, tags, name).
    Reset(Vec<Instance>),
    /// One endpoint added (or updated, if its address is known).
    Insert(Instance),
    /// The endpoint at this address removed: it takes no new calls and closes once its
    /// calls in flight are done.
    Remove(String),
}

/// What an endpoint is doing, as [`EndpointSnapshot::state`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointState {
    /// Takes calls.
    Ready,
    /// Its connects fail; its pool reconnects with backoff and it takes no calls meanwhile.
    Backoff,
    /// Ejected as an outlier until its ejection ends.
    Ejected,
    /// Its ejection ended: it takes one call, a probe, to show whether it is back.
    Probing,
    /// Removed from the fleet; closes once its calls in flight are done.
    Draining,
}

impl EndpointState {
    /// A short name for logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Backoff => "backoff",
            Self::Ejected => "ejected",
            Self::Probing => "probing",
            Self::Draining => "draining",
        }
    }
}

/// One endpoint's figures in a [`MetricsSnapshot`](crate::MetricsSnapshot).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// Its address.
    pub addr: String,
    /// Its weight.
    pub weight: u32,
    /// Its tags.
    pub tags: Vec<String>,
    /// The name it is known by (for DNS discovery, the host name it was resolved from).
    pub server_name: Option<String>,
    /// What it is doing.
    pub state: EndpointState,
    /// Attempts sent to it and not yet finished.
    pub in_flight: u32,
    /// Its peak-EWMA latency estimate now (none before its first answer).
    pub ewma: Option<Duration>,
    /// Times it was ejected.
    pub ejections: u64,
    /// Attempts sent to it.
    pub attempts: u64,
    /// Of those, the ones that failed in a way that counts against it.
    pub failures: u64,
}
