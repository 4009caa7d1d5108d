//! Where `call`, `ping`, `health` and `bench` go: one server (`host:port`), several
//! replicas (`host:port,host:port,...`), or every address of a DNS name (`dns:host:port`).
//!
//! [`Target::parse`] checks the whole list before anything connects and refuses a bad one
//! with a [`TargetError`] naming the item at fault (an empty item, `dns:` without a port, a
//! port that is not one, a host that is not a name or an IP address, a repeated address).
//! [`AnyClient`] is a client of either kind: one address keeps the one-endpoint client
//! (`Client::builder`, no balancer on its path), several make a fleet (`Client::fleet`,
//! `Client::dns`) whose balancer spreads the calls; over TLS each endpoint is verified by
//! its own host name, the DNS name it was found under, or `--server-name`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use mcp_client::{
    BackoffConfig, Client, DefaultFormat, EndpointSnapshot, Error, Fleet, LimitConfig,
    MetricsSnapshot, PoolConfig, RawRequest, RawResponse,
};

use crate::tls::ClientTls;

/// The most addresses one list may hold.
pub const MAX_ADDRESSES: usize = 1024;

/// How long [`AnyClient::close`] waits for a fleet's tasks to end.
pub const FLEET_CLOSE_WAIT: Duration = Duration::from_millis(250);

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One `host:port`: the one-endpoint client.
    One(String),
    /// Several `host:port`, given comma-separated: a fleet.
    Many(Vec<String>),
    /// `dns:host:port`: a fleet of every address of `host`, followed as it changes. Holds
    /// `host:port`.
    Dns(String),
}

/// Why an address list cannot be used; each names the item at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Nothing was given.
    Empty,
    /// An empty item (`a:1,,b:2`, a trailing comma); its 1-based place in the list.
    EmptyItem {
        /// Where in the list, from 1.
        position: usize,
    },
    /// An item without `:port`.
    NotHostPort {
        /// The item.
        item: String,
    },
    /// An item whose port is not a number in 1..=65535.
    BadPort {
        /// The item.
        item: String,
    },
    /// An item whose host is empty, or neither a host name nor an IP address (an IPv6
    /// address must be in brackets).
    BadHost {
        /// The item.
        item: String,
    },
    /// `dns:` followed by something that is not `host:port`.
    DnsWithoutPort {
        /// The item, `dns:` included.
        item: String,
    },
    /// `dns:host:port` inside a list: a name stands alone.
    DnsInList {
        /// The item.
        item: String,
    },
    /// The same address twice.
    Duplicate {
        /// The item.
        item: String,
    },
    /// More than [`MAX_ADDRESSES`] items.
    TooMany {
        /// How many were given.
        count: usize,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => {
                write!(
                    f,
                    "no address (give host:port, host:port,host:port... or dns:host:port)"
                )
            }
            Self::EmptyItem { position } => {
                write!(
                    f,
                    "address {position} of the list is empty (a stray comma?)"
                )
            }
            Self::NotHostPort { item } => write!(f, "{item:?} is not host:port"),
            Self::BadPort { item } => {
                write!(f, "{item:?}: the port must be a number in 1..=65535")
            }
            Self::BadHost { item } => write!(
                f,
                "{item:?}: the host is not a host name or an IP address (IPv6 goes in brackets: [::1]:7000)"
            ),
            Self::DnsWithoutPort { item } => {
                write!(
                    f,
                    "{item:?}: dns: takes host:port (e.g. dns:svc.local:7000)"
                )
            }
            Self::DnsInList { item } => write!(
                f,
                "{item:?}: dns:host:port stands alone, not in a list of addresses"
            ),
            Self::Duplicate { item } => write!(f, "{item:?} is listed twice"),
            Self::TooMany { count } => {
                write!(f, "{count} addresses: at most {MAX_ADDRESSES}")
            }
        }
    }
}

impl std::error::Error for TargetError {}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::One(addr) => f.write_str(addr),
            Target::Many(addrs) => f.write_str(&addrs.join(",")),
            Target::Dns(name) => write!(f, "dns:{name}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Target {
    /// `host:port`, `host:port,host:port,...` (spaces around items allowed) or
    /// `dns:host:port`; the first bad item is refused by name.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if !s.contains(',') {
            if let Some(name) = s.strip_prefix("dns:") {
                return match host_port(name) {
                    Ok(()) => Ok(Target::Dns(name.to_owned())),
                    Err(TargetError::NotHostPort { .. } | TargetError::BadPort { .. }) => {
                        Err(TargetError::DnsWithoutPort { item: s.to_owned() })
                    }
                    Err(TargetError::BadHost { .. }) => {
                        Err(TargetError::BadHost { item: s.to_owned() })
                    }
                    Err(other) => Err(other),
                };
            }
            host_port(s)?;
            return Ok(Target::One(s.to_owned()));
        }
        let count = s.split(',').count();
        if count > MAX_ADDRESSES {
            return Err(TargetError::TooMany { count });
        }
        let mut addrs: Vec<String> = Vec::with_capacity(count);
        for (i, item) in s.split(',').enumerate() {
            let item = item.trim();
            if item.is_empty() {
                return Err(TargetError::EmptyItem { position: i + 1 });
            }
            if item.starts_with("dns:") {
                return Err(TargetError::DnsInList {
                    item: item.to_owned(),
                });
            }
            host_port(item)?;
            if addrs.iter().any(|a| a == item) {
                return Err(TargetError::Duplicate {
                    item: item.to_owned(),
                });
            }
            addrs.push(item.to_owned());
        }
        Ok(Target::Many(addrs))
    }

    /// The endpoints to visit one by one (`ping`, `health`): each address of a list, or
    /// each address the name resolves to now, with the name to verify it by over TLS.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, String> {
        match self {
            Target::One(addr) => Ok(vec![Endpoint::new(addr.clone())]),
            Target::Many(addrs) => Ok(addrs.iter().cloned().map(Endpoint::new).collect()),
            Target::Dns(name) => {
                let host = host_of(name)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let mut found: Vec<std::net::SocketAddr> = tokio::net::lookup_host(name)
                    .await
                    .map_err(|e| format!("cannot resolve {name}: {e}"))?
                    .collect();
                found.sort();
                found.dedup();
                if found.is_empty() {
                    return Err(format!("{name} resolves to no address"));
                }
                Ok(found
                    .into_iter()
                    .map(|addr| Endpoint {
                        addr: addr.to_string(),
                        name: Some(host.clone()),
                    })
                    .collect())
            }
        }
    }
}

/// One endpoint to visit alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` or `ip:port`.
    pub addr: String,
    /// The name to verify it by over TLS when its address does not say it (an address
    /// found under a DNS name).
    pub name: Option<String>,
}

impl Endpoint {
    fn new(addr: String) -> Self {
        Endpoint { addr, name: None }
    }
}

/// The host part of `host:port` (`[v6]` keeps its brackets).
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// Checks one `host:port`: a port in 1..=65535 and a host that is a name (letters,
/// digits, `-`, `_`, `.`), an IPv4 address, or an IPv6 address in brackets.
fn host_port(item: &str) -> Result<(), TargetError> {
    let Some((host, port)) = item.rsplit_once(':') else {
        return Err(TargetError::NotHostPort {
            item: item.to_owned(),
        });
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(TargetError::BadPort {
                item: item.to_owned(),
            });
        }
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>().is_ok()
    } else {
        // Without brackets, no colon: `::1:7000` would be ambiguous.
        host.parse::<Ipv4Addr>().is_ok()
            || (!host.is_empty()
                && host.len() <= 253
                && !host.starts_with(['.', '-'])
                && !host.contains("..")
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    };
    if !host_ok {
        return Err(TargetError::BadHost {
            item: item.to_owned(),
        });
    }
    Ok(())
}

/// How a command's client is set up, the same for one endpoint and for a fleet (where the
/// connection settings apply to each endpoint).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The total budget of a call.
    pub timeout: Option<Duration>,
    /// One connect try per endpoint: a refused connect is the answer (one-shot commands),
    /// not something to wait out in backoff.
    pub one_shot: bool,
    /// The most connections per endpoint.
    pub max_connections: Option<usize>,
    /// The concurrency limit.
    pub limit: Option<LimitConfig>,
}

/// Connections for a one-shot command: a refused connect is the answer, not something to
/// retry with backoff until the budget runs out (a long-lived client waits for the server).
pub fn one_shot_pool() -> PoolConfig {
    PoolConfig {
        backoff: BackoffConfig {
            max_tries: 1,
            ..BackoffConfig::default()
        },
        ..PoolConfig::default()
    }
}

/// `Settings` applied to a builder of either kind (the two builder types share their
/// setters but no trait the CLI can name).
macro_rules! configure {
    ($builder:expr, $settings:expr) => {{
        let mut builder = $builder;
        let settings: &Settings = $settings;
        if settings.one_shot {
            builder = builder.pool_config(one_shot_pool());
        }
        if let Some(timeout) = settings.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(max) = settings.max_connections {
            builder = builder.max_connections(max);
        }
        if let Some(limit) = &settings.limit {
            builder = builder.limit(limit.clone());
        }
        builder
    }};
}

/// A client of one endpoint or of a fleet. The two are distinct types (the one-endpoint
/// client keeps its static path, with no balancer), so the commands that take either hold
/// this.
#[derive(Clone, Debug)]
pub enum AnyClient {
    /// One endpoint.
    One(Client),
    /// A fleet: a list, or a DNS name.
    Fleet(Client<DefaultFormat, Fleet>),
}

impl AnyClient {
    /// A connected client of `target` (one open connection, or the reason why none could
    /// be opened: for a fleet, when no endpoint could be reached), over TLS with `tls`.
    /// Errors start with the target.
    pub async fn connect(
        target: &Target,
        settings: &Settings,
        tls: Option<&ClientTls>,
    ) -> Result<AnyClient, String> {
        let connected = match target {
            Target::One(addr) => {
                let builder = configure!(Client::builder(addr), settings);
                let builder = match tls {
                    Some(tls) => tls.apply(builder),
                    None => builder,
                };
                builder.connect().await.map(Self::One)
            }
            Target::Many(addrs) => {
                let builder = configure!(Client::fleet(addrs.iter()), settings);
                let builder = match tls {
                    Some(tls) => tls.apply_fleet(builder),
                    None => builder,
                };
                builder.connect().await.map(Self::Fleet)
            }
            Target::Dns(name) => {
                let builder = configure!(Client::dns(name.clone()), settings);
                let builder = match tls {
                    Some(tls) => tls.apply_fleet(builder),
                    None => builder,
                };
                builder.connect().await.map(Self::Fleet)
            }
        };
        connected.map_err(|e| format!("{target}: {e}"))
    }

    /// [`Client::call_raw`].
    pub async fn call_raw(&self, request: RawRequest) -> Result<RawResponse, Error> {
        match self {
            Self::One(c) => c.call_raw(request).await,
            Self::Fleet(c) => c.call_raw(request).await,
        }
    }

    /// [`Client::close`]; for a fleet, waiting at most [`FLEET_CLOSE_WAIT`] for its tasks
    /// to end, since the pool of an endpoint that is down may be asleep in its reconnect
    /// backoff and end only when that sleep does (up to a second per such endpoint, one
    /// after the other): a one-shot command would wait that out for nothing.
    pub async fn close(&self) {
        match self {
            Self::One(c) => drop(c.close().await),
            Self::Fleet(c) => {
                if tokio::time::timeout(FLEET_CLOSE_WAIT, c.close())
                    .await
                    .is_err()
                {
                    c.close_now();
                }
            }
        }
    }

    /// [`Client::metrics`]: for a fleet, with a snapshot per endpoint.
    pub fn metrics(&self) -> MetricsSnapshot {
        match self {
            Self::One(c) => c.metrics(),
            Self::Fleet(c) => c.metrics(),
        }
    }
}

/// One endpoint's line of `bench`'s report: its share of the attempts (warm-up included),
/// their count, the balancer's peak-EWMA latency estimate at the end, failures, state and
/// ejections.
pub fn endpoint_line(endpoint: &EndpointSnapshot, total_attempts: u64) -> String {
    format!(
        "endpoint {}: {:.1}% of attempts ({}), peak-ewma latency {}, {} failed, {}, {} ejection(s)",
        endpoint.addr,
        share(endpoint.attempts, total_attempts),
        endpoint.attempts,
        endpoint.ewma.map_or_else(
            || "-".to_string(),
            |d| format!("{:.1} us", d.as_secs_f64() * 1e6)
        ),
        endpoint.failures,
        endpoint.state.name(),
        endpoint.ejections
    )
}

/// `part` of `total` in percent (0 when there is no total).
pub fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

/// The endpoints as JSON, for `bench --json`.
pub fn endpoints_json(endpoints: &[EndpointSnapshot]) -> serde_json::Value {
    let total: u64 = endpoints.iter().map(|e| e.attempts).sum();
    endpoints
        .iter()
        .map(|e| {
            serde_json::json!({
                "addr": e.addr,
                "attempts": e.attempts,
                "share_percent": share(e.attempts, total),
                "ewma_us": e.ewma.map(|d| d.as_secs_f64() * 1e6),
                "failures": e.failures,
                "state": e.state.name(),
                "ejections": e.ejections,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> TargetError {
        Target::parse(s).unwrap_err()
    }

    #[test]
    fn one_many_and_dns() {
        assert_eq!(Target::parse("a:1"), Ok(Target::One("a:1".into())));
        assert_eq!(
            Target::parse("127.0.0.1:7001, 127.0.0.2:7001"),
            Ok(Target::Many(vec![
                "127.0.0.1:7001".into(),
                "127.0.0.2:7001".into()
            ]))
        );
        assert_eq!(
            Target::parse("dns:svc.local:7000"),
            Ok(Target::Dns("svc.local:7000".into()))
        );
        assert_eq!(
            Target::parse("[::1]:7000"),
            Ok(Target::One("[::1]:7000".into()))
        );
        assert_eq!(
            Target::parse("a:1,b:2").unwrap().to_string(),
            "a:1,b:2".to_string()
        );
        assert_eq!(
            Target::parse("dns:a:1").unwrap().to_string(),
            "dns:a:1".to_string()
        );
    }

    #[test]
    fn bad_lists_are_refused_naming_the_item() {
        assert_eq!(err(""), TargetError::Empty);
        assert_eq!(err("a:1,,b:2"), TargetError::EmptyItem { position: 2 });
        assert_eq!(err("a:1,"), TargetError::EmptyItem { position: 2 });
        assert_eq!(err(",a:1"), TargetError::EmptyItem { position: 1 });
        assert_eq!(
            err("dns:svc"),
            TargetError::DnsWithoutPort {
                item: "dns:svc".into()
            }
        );
        assert_eq!(
            err("dns:svc:port"),
            TargetError::DnsWithoutPort {
                item: "dns:svc:port".into()
            }
        );
        assert_eq!(
            err("dns:"),
            TargetError::DnsWithoutPort {
                item: "dns:".into()
            }
        );
        assert_eq!(
            err("a:1,nohost"),
            TargetError::NotHostPort {
                item: "nohost".into()
            }
        );
        assert_eq!(
            err("a:1,b:99999"),
            TargetError::BadPort {
                item: "b:99999".into()
            }
        );
        assert_eq!(err("a:0"), TargetError::BadPort { item: "a:0".into() });
        assert_eq!(
            err(":7000"),
            TargetError::BadHost {
                item: ":7000".into()
            }
        );
        assert_eq!(
            err("a:1,b c:2"),
            TargetError::BadHost {
                item: "b c:2".into()
            }
        );
        assert_eq!(
            err("::1:7000"),
            TargetError::BadHost {
                item: "::1:7000".into()
            }
        );
        assert_eq!(
            err("a:1,dns:b:2"),
            TargetError::DnsInList {
                item: "dns:b:2".into()
            }
        );
        assert_eq!(
            err("a:1, a:1"),
            TargetError::Duplicate { item: "a:1".into() }
        );
        let many = (1..=MAX_ADDRESSES + 1)
            .map(|i| format!("h{i}:1"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            err(&many),
            TargetError::TooMany {
                count: MAX_ADDRESSES + 1
            }
        );
    }

    #[test]
    fn messages_name_the_item() {
        for (input, needle) in [
            ("a:1,,b:2", "address 2 of the list is empty"),
            ("dns:svc", "\"dns:svc\""),
            ("a:1,b:x", "\"b:x\""),
            ("a:1,b\u{1b}[2J:2", "\"b\\u{1b}[2J:2\""),
        ] {
            let message = err(input).to_string();
            assert!(message.contains(needle), "{input:?}: {message}");
        }
    }

    #[tokio::test]
    async fn endpoints_of_a_list_keep_their_names() {
        let target = Target::parse("localhost:1,127.0.0.2:2").unwrap();
        let endpoints = target.endpoints().await.unwrap();
        assert_eq!(
            endpoints,
            vec![
                Endpoint::new("localhost:1".into()),
                Endpoint::new("127.0.0.2:2".into())
            ]
        );
    }
}
