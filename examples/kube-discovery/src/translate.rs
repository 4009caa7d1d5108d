//! From EndpointSlice watch events to fleet [`Change`]s, without I/O: the part of this
//! example that is tested without a cluster (the unit tests at the end build
//! `EndpointSlice` values by hand).
//!
//! A Service's endpoints are spread over several EndpointSlices (at most 1,000 endpoints
//! each, one slice per address family, and one per distinct set of ports), so the
//! [`Translator`] keeps what each slice contributed and the fleet is their union:
//!
//! - `Init` … `InitApply`* … `InitDone` (the first list, and every relist after the watch
//!   could not resume) becomes one [`Change::Reset`] with the union of the listed slices;
//!   slices seen before and not listed again are gone.
//! - `Apply(slice)` / `Delete(slice)` replace or drop that slice's part, and the union's
//!   difference goes out as [`Change::Insert`] (new address, or a known one whose tags or
//!   name changed) and [`Change::Remove`] (an address no slice holds any more: it left its
//!   slice, stopped being ready, or its slice was deleted).
//!
//! An address that is briefly in two slices (the EndpointSlice controller moving endpoints
//! between slices) stays a member until neither holds it.
//!
//! What counts as an endpoint: `conditions.ready` true or unset (the API says a nil value
//! is to be read as true); a terminating pod is not ready, so it is drained as soon as it
//! starts terminating. The first address of each endpoint only (the controller writes
//! exactly one; kube-proxy, too, reads only the first). The port is looked up by name in
//! each slice (slices of one Service may map a named port to different numbers while a
//! rollout changes `targetPort`). Slices of `addressType: FQDN` are skipped (deprecated, no
//! defined semantics); IPv6 addresses are bracketed (`[fd00::1]:7070`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::runtime::watcher::Event;
use mcp_client::{Change, Instance};

/// Which port of the slices to use and which name the endpoints are known by.
#[derive(Clone, Debug)]
pub struct Target {
    /// The port's name as in `Service.spec.ports[].name`; `None` for a Service whose one
    /// port has no name (the slice's port with an empty name, or its only port).
    pub port_name: Option<String>,
    /// The name every endpoint is verified as over TLS and shown under in the metrics:
    /// the Service's DNS name, e.g. `mcp-echo.prod.svc`.
    pub server_name: String,
    /// For a headless Service whose pods set `hostname` and `subdomain` (a StatefulSet):
    /// an endpoint with a hostname is known as `<hostname>.<server_name>` (its own DNS name)
    /// instead; endpoints without one keep `server_name`.
    pub per_pod_names: bool,
}

/// What one event did: the changes to send to the fleet, and slices (or parts of them)
/// that could not be used, said in words for the log.
#[derive(Debug, Default, PartialEq)]
pub struct Translated {
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
}

/// The members one slice contributes, by address (`ip:port`).
type Members = BTreeMap<String, Instance>;

/// Per-slice state between events; see the module docs.
#[derive(Debug)]
pub struct Translator {
    target: Target,
    /// Each known slice's members, by slice name.
    slices: BTreeMap<String, Members>,
    /// Slices listed since the last `Init`, until its `InitDone`.
    listing: Option<BTreeMap<String, Members>>,
    /// The fleet as last sent: the union of `slices`.
    sent: Members,
}

impl Translator {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            slices: BTreeMap::new(),
            listing: None,
            sent: Members::new(),
        }
    }

    /// Folds one watch event in and says what changed.
    pub fn apply(&mut self, event: Event<EndpointSlice>) -> Translated {
        let mut out = Translated::default();
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
            }
            Event::InitApply(slice) => {
                let (name, members) = self.read(&slice, &mut out.warnings);
                // An `InitApply` outside a listing does not happen; if it did, it is an
                // update like any other.
                match &mut self.listing {
                    Some(listing) => {
                        listing.insert(name, members);
                    }
                    None => {
                        self.slices.insert(name, members);
                        self.diff(&mut out.changes);
                    }
                }
            }
            Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.slices = listing;
                }
                self.sent = union(&self.slices);
                out.changes
                    .push(Change::Reset(self.sent.values().cloned().collect()));
            }
            Event::Apply(slice) => {
                let (name, members) = self.read(&slice, &mut out.warnings);
                self.slices.insert(name, members);
                self.diff(&mut out.changes);
            }
            Event::Delete(slice) => {
                self.slices.remove(&slice_name(&slice));
                self.diff(&mut out.changes);
            }
        }
        out
    }

    /// The fleet as last sent, by address.
    pub fn members(&self) -> impl Iterator<Item = &Instance> {
        self.sent.values()
    }

    fn read(&self, slice: &EndpointSlice, warnings: &mut Vec<String>) -> (String, Members) {
        let name = slice_name(slice);
        let members = match slice_members(slice, &self.target) {
            Ok(members) => members,
            Err(why) => {
                warnings.push(format!("EndpointSlice {name}: {why}; none of it is used"));
                Members::new()
            }
        };
        (name, members)
    }

    /// Sends the difference between the union of the slices and what was sent.
    fn diff(&mut self, changes: &mut Vec<Change>) {
        let now = union(&self.slices);
        for addr in self.sent.keys() {
            if !now.contains_key(addr) {
                changes.push(Change::Remove(addr.clone()));
            }
        }
        for (addr, instance) in &now {
            if self.sent.get(addr) != Some(instance) {
                changes.push(Change::Insert(instance.clone()));
            }
        }
        self.sent = now;
    }
}

/// The union of the slices' members; an address in two slices counts once (the slice
/// first by name gives its instance).
fn union(slices: &BTreeMap<String, Members>) -> Members {
    let mut all = Members::new();
    for members in slices.values() {
        for (addr, instance) in members {
            all.entry(addr.clone()).or_insert_with(|| instance.clone());
        }
    }
    all
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// The ready endpoints of one slice as fleet members, or why the slice cannot be used.
pub fn slice_members(slice: &EndpointSlice, target: &Target) -> Result<Members, String> {
    if slice.address_type == "FQDN" {
        return Err("addressType FQDN is not followed".into());
    }
    let port = slice_port(slice, target)?;
    let mut members = Members::new();
    for endpoint in &slice.endpoints {
        if !is_ready(endpoint) {
            continue;
        }
        let Some(address) = endpoint.addresses.first() else {
            continue;
        };
        let addr = match address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            Ok(IpAddr::V4(ip)) => format!("{ip}:{port}"),
            Err(_) => return Err(format!("{address:?} is not an IP address")),
        };
        members.insert(addr.clone(), instance(addr, endpoint, target));
    }
    Ok(members)
}

/// `conditions.ready`, nil read as true (as the API says).
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// The slice's number for the target's port.
fn slice_port(slice: &EndpointSlice, target: &Target) -> Result<u16, String> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let name_of =
        |p: &k8s_openapi::api::discovery::v1::EndpointPort| p.name.clone().unwrap_or_default();
    let found = match &target.port_name {
        Some(wanted) => ports.iter().find(|p| name_of(p) == *wanted),
        None => ports
            .iter()
            .find(|p| name_of(p).is_empty())
            .or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            }),
    };
    let Some(port) = found else {
        let names: Vec<String> = ports.iter().map(name_of).collect();
        return Err(match &target.port_name {
            Some(wanted) => format!("no port named {wanted:?} (ports: {names:?})"),
            None => format!("no unnamed port and not exactly one port (ports: {names:?})"),
        });
    };
    if let Some(protocol) = &port.protocol
        && protocol != "TCP"
    {
        return Err(format!("port {:?} is {protocol}, not TCP", name_of(port)));
    }
    let number = port
        .port
        .ok_or_else(|| format!("port {:?} has no number", name_of(port)))?;
    u16::try_from(number)
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| format!("port {:?} is {number}, not a TCP port", name_of(port)))
}

fn instance(addr: String, endpoint: &Endpoint, target: &Target) -> Instance {
    let server_name = match (&endpoint.hostname, target.per_pod_names) {
        (Some(host), true) if !host.is_empty() => format!("{host}.{}", target.server_name),
        _ => target.server_name.clone(),
    };
    let mut instance = Instance::new(addr).with_server_name(server_name);
    if let Some(pod) = endpoint
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.as_deref())
    {
        instance = instance.with_tag(format!("pod={pod}"));
    }
    if let Some(zone) = &endpoint.zone {
        instance = instance.with_tag(format!("zone={zone}"));
    }
    instance
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn target() -> Target {
        Target {
            port_name: Some("mcp".into()),
            server_name: "echo.prod.svc".into(),
            per_pod_names: false,
        }
    }

    fn port(name: &str, number: i32) -> EndpointPort {
        EndpointPort {
            name: Some(name.into()),
            port: Some(number),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }
    }

    fn endpoint(ip: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating: ready.map(|r| !r),
            }),
            ..Endpoint::default()
        }
    }

    fn slice(name: &str, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("prod".into()),
                ..ObjectMeta::default()
            },
            ports: Some(ports),
        }
    }

    /// A slice of the `mcp` port on 7070 (and a `metrics` port beside it) with these
    /// ready IPs.
    fn ready(name: &str, ips: &[&str]) -> EndpointSlice {
        slice(
            name,
            vec![port("metrics", 9090), port("mcp", 7070)],
            ips.iter().map(|ip| endpoint(ip, Some(true))).collect(),
        )
    }

    fn member(addr: &str) -> Instance {
        Instance::new(addr).with_server_name("echo.prod.svc")
    }

    /// Runs a whole initial list of these slices.
    fn listed(t: &mut Translator, slices: Vec<EndpointSlice>) -> Translated {
        assert_eq!(t.apply(Event::Init), Translated::default());
        for s in slices {
            assert!(t.apply(Event::InitApply(s)).changes.is_empty());
        }
        t.apply(Event::InitDone)
    }

    #[test]
    fn the_initial_list_is_one_reset_with_the_union_of_the_slices() {
        let mut t = Translator::new(target());
        let out = listed(
            &mut t,
            vec![
                ready("echo-a", &["10.0.0.1", "10.0.0.2"]),
                ready("echo-b", &["10.0.1.1"]),
            ],
        );
        assert_eq!(
            out.changes,
            vec![Change::Reset(vec![
                member("10.0.0.1:7070"),
                member("10.0.0.2:7070"),
                member("10.0.1.1:7070"),
            ])]
        );
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn an_empty_list_is_an_empty_reset() {
        let mut t = Translator::new(target());
        assert_eq!(listed(&mut t, vec![]).changes, vec![Change::Reset(vec![])]);
    }

    #[test]
    fn only_ready_endpoints_count_and_unset_ready_is_ready() {
        let mut t = Translator::new(target());
        let s = slice(
            "echo-a",
            vec![port("mcp", 7070)],
            vec![
                endpoint("10.0.0.1", Some(true)),
                endpoint("10.0.0.2", Some(false)),
                endpoint("10.0.0.3", None),
                Endpoint {
                    addresses: vec!["10.0.0.4".into()],
                    conditions: None,
                    ..Endpoint::default()
                },
            ],
        );
        let out = listed(&mut t, vec![s]);
        assert_eq!(
            out.changes,
            vec![Change::Reset(vec![
                member("10.0.0.1:7070"),
                member("10.0.0.3:7070"),
                member("10.0.0.4:7070"),
            ])]
        );
    }

    #[test]
    fn an_update_inserts_who_joined_and_removes_who_left_or_stopped_being_ready() {
        let mut t = Translator::new(target());
        listed(
            &mut t,
            vec![ready("echo-a", &["10.0.0.1", "10.0.0.2", "10.0.0.3"])],
        );

        // .1 stays, .2 goes not ready (terminating), .3 leaves the slice, .4 joins.
        let update = slice(
            "echo-a",
            vec![port("mcp", 7070)],
            vec![
                endpoint("10.0.0.1", Some(true)),
                endpoint("10.0.0.2", Some(false)),
                endpoint("10.0.0.4", Some(true)),
            ],
        );
        let out = t.apply(Event::Apply(update));
        assert_eq!(
            out.changes,
            vec![
                Change::Remove("10.0.0.2:7070".into()),
                Change::Remove("10.0.0.3:7070".into()),
                Change::Insert(member("10.0.0.4:7070")),
            ]
        );
        // The same slice again changes nothing.
        let again = t.apply(Event::Apply(ready("echo-a", &["10.0.0.1", "10.0.0.4"])));
        assert_eq!(again, Translated::default());
    }

    #[test]
    fn a_deleted_slice_removes_its_addresses_but_not_those_another_slice_holds() {
        let mut t = Translator::new(target());
        listed(
            &mut t,
            vec![
                ready("echo-a", &["10.0.0.1", "10.0.0.2"]),
                // .2 is in both while the controller moves it.
                ready("echo-b", &["10.0.0.2", "10.0.1.1"]),
            ],
        );
        let out = t.apply(Event::Delete(ready("echo-a", &[])));
        assert_eq!(out.changes, vec![Change::Remove("10.0.0.1:7070".into())]);
        let members: Vec<&str> = t.members().map(Instance::addr).collect();
        assert_eq!(members, ["10.0.0.2:7070", "10.0.1.1:7070"]);
    }

    #[test]
    fn a_new_slice_after_the_list_inserts_its_endpoints() {
        let mut t = Translator::new(target());
        listed(&mut t, vec![ready("echo-a", &["10.0.0.1"])]);
        let out = t.apply(Event::Apply(ready("echo-b", &["10.0.1.1", "10.0.0.1"])));
        assert_eq!(out.changes, vec![Change::Insert(member("10.0.1.1:7070"))]);
    }

    #[test]
    fn a_relist_resets_to_what_it_lists_and_forgets_slices_it_does_not() {
        let mut t = Translator::new(target());
        listed(
            &mut t,
            vec![
                ready("echo-a", &["10.0.0.1"]),
                ready("echo-b", &["10.0.1.1"]),
            ],
        );
        // The watch could not resume (its resource version expired): a new list, in which
        // echo-b was deleted while nobody watched.
        let out = listed(&mut t, vec![ready("echo-a", &["10.0.0.1", "10.0.0.5"])]);
        assert_eq!(
            out.changes,
            vec![Change::Reset(vec![
                member("10.0.0.1:7070"),
                member("10.0.0.5:7070")
            ])]
        );
        // echo-b is forgotten: its late deletion changes nothing.
        assert_eq!(
            t.apply(Event::Delete(ready("echo-b", &["10.0.1.1"]))),
            Translated::default()
        );
    }

    #[test]
    fn the_port_is_found_by_name_in_each_slice() {
        let mut t = Translator::new(target());
        // During a rollout that changes targetPort, old and new pods are in different
        // slices with different numbers for the same port name.
        let old = slice(
            "echo-old",
            vec![port("mcp", 7070)],
            vec![endpoint("10.0.0.1", Some(true))],
        );
        let new = slice(
            "echo-new",
            vec![port("mcp", 8080), port("metrics", 9090)],
            vec![endpoint("10.0.0.9", Some(true))],
        );
        let out = listed(&mut t, vec![old, new]);
        assert_eq!(
            out.changes,
            vec![Change::Reset(vec![
                member("10.0.0.1:7070"),
                member("10.0.0.9:8080")
            ])]
        );
    }

    #[test]
    fn an_unnamed_port_is_used_when_no_name_is_given() {
        let target = Target {
            port_name: None,
            ..target()
        };
        let unnamed = EndpointPort {
            name: None,
            port: Some(7000),
            protocol: None,
            ..EndpointPort::default()
        };
        let s = slice("echo-a", vec![unnamed], vec![endpoint("10.0.0.1", None)]);
        let members = slice_members(&s, &target).unwrap();
        assert_eq!(
            members.into_values().collect::<Vec<_>>(),
            vec![member("10.0.0.1:7000")]
        );
        // Two named ports and no name given: which one is meant cannot be told.
        let two = ready("echo-b", &["10.0.0.2"]);
        assert!(slice_members(&two, &target).is_err());
    }

    #[test]
    fn a_slice_without_the_port_is_skipped_with_a_warning() {
        let mut t = Translator::new(target());
        listed(&mut t, vec![ready("echo-a", &["10.0.0.1"])]);
        let wrong = slice(
            "echo-b",
            vec![port("http", 8080)],
            vec![endpoint("10.0.1.1", Some(true))],
        );
        let out = t.apply(Event::Apply(wrong));
        assert!(out.changes.is_empty());
        assert_eq!(out.warnings.len(), 1);
        assert!(
            out.warnings[0].contains("no port named \"mcp\""),
            "{:?}",
            out.warnings
        );
        let udp = slice(
            "echo-c",
            vec![EndpointPort {
                protocol: Some("UDP".into()),
                ..port("mcp", 7070)
            }],
            vec![endpoint("10.0.2.1", Some(true))],
        );
        assert!(slice_members(&udp, &target()).unwrap_err().contains("UDP"));
    }

    #[test]
    fn ipv6_addresses_are_bracketed_and_fqdn_slices_skipped() {
        let mut v6 = ready("echo-v6", &["fd00::1"]);
        v6.address_type = "IPv6".into();
        let members = slice_members(&v6, &target()).unwrap();
        assert_eq!(members.keys().collect::<Vec<_>>(), ["[fd00::1]:7070"]);

        let mut fqdn = ready("echo-fqdn", &["db.example.com"]);
        fqdn.address_type = "FQDN".into();
        assert!(slice_members(&fqdn, &target()).is_err());
    }

    #[test]
    fn names_and_tags_come_from_the_endpoint() {
        let mut e = endpoint("10.0.0.1", Some(true));
        e.hostname = Some("echo-0".into());
        e.zone = Some("eu-west-1a".into());
        e.target_ref = Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some("echo-0".into()),
            ..ObjectReference::default()
        });
        let s = slice("echo-a", vec![port("mcp", 7070)], vec![e]);

        let shared = slice_members(&s, &target()).unwrap();
        assert_eq!(
            shared["10.0.0.1:7070"],
            member("10.0.0.1:7070")
                .with_tag("pod=echo-0")
                .with_tag("zone=eu-west-1a")
        );

        let per_pod = Target {
            per_pod_names: true,
            ..target()
        };
        let own = slice_members(&s, &per_pod).unwrap();
        assert_eq!(
            own["10.0.0.1:7070"].server_name(),
            Some("echo-0.echo.prod.svc")
        );
    }

    #[test]
    fn a_changed_tag_is_an_insert_of_the_known_address() {
        let mut t = Translator::new(target());
        listed(&mut t, vec![ready("echo-a", &["10.0.0.1"])]);
        let mut e = endpoint("10.0.0.1", Some(true));
        e.zone = Some("z2".into());
        let out = t.apply(Event::Apply(slice(
            "echo-a",
            vec![port("mcp", 7070)],
            vec![e],
        )));
        assert_eq!(
            out.changes,
            vec![Change::Insert(member("10.0.0.1:7070").with_tag("zone=z2"))]
        );
    }
}
