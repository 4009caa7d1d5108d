//! Health (docs/protocol.md section 7): `$health` with a service name (empty: the server as
//! a whole) is answered `SERVING`, `NOT_SERVING` or `SERVICE_UNKNOWN`; a change is pushed
//! to subscribers of `$health` (the server) or `$health.<service>`. From the moment
//! shutdown starts, everything answers `NOT_SERVING`, before the GOAWAY goes out.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The reserved method, and the topic of the server's own status.
pub(crate) const HEALTH: &str = mcp_transport::HEALTH_METHOD;

/// A health status, as the one ASCII word on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Taking requests.
    Serving,
    /// Not taking requests (shutting down, or set so by the operator).
    NotServing,
    /// No such service.
    ServiceUnknown,
}

impl HealthStatus {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Serving => "SERVING",
            HealthStatus::NotServing => "NOT_SERVING",
            HealthStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

/// The topic a change of `service`'s status is pushed to.
pub(crate) fn topic(service: &str) -> String {
    if service.is_empty() {
        HEALTH.to_owned()
    } else {
        format!("{HEALTH}.{service}")
    }
}

#[derive(Debug, Default)]
struct State {
    /// Services the operator named, and whether each serves.
    services: HashMap<String, bool>,
    /// Shutdown started: nothing serves any more.
    draining: bool,
}

/// The server's health table.
#[derive(Debug, Default)]
pub(crate) struct Health {
    state: Mutex<State>,
}

impl Health {
    /// The status of `service` ("" is the server itself, which serves until it drains).
    pub(crate) fn status(&self, service: &str) -> HealthStatus {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (service.is_empty(), state.services.get(service)) {
            (false, None) => HealthStatus::ServiceUnknown,
            _ if state.draining => HealthStatus::NotServing,
            (true, _) | (false, Some(true)) => HealthStatus::Serving,
            (false, Some(false)) => HealthStatus::NotServing,
        }
    }

    /// Sets `service`'s status; returns the new status if it changed.
    pub(crate) fn set(&self, service: &str, serving: bool) -> Option<HealthStatus> {
        let before = self.status(service);
        if !service.is_empty() {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.services.insert(service.to_owned(), serving);
        }
        let after = self.status(service);
        (after != before).then_some(after)
    }

    /// Shutdown started: every known service and the server stop serving. Returns those
    /// whose status changed.
    pub(crate) fn drain(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.draining {
            return Vec::new();
        }
        state.draining = true;
        let mut changed: Vec<String> = state
            .services
            .iter()
            .filter(|(_, serving)| **serving)
            .map(|(name, _)| name.clone())
            .collect();
        changed.push(String::new());
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_their_changes() {
        let health = Health::default();
        assert_eq!(health.status(""), HealthStatus::Serving);
        assert_eq!(health.status("users"), HealthStatus::ServiceUnknown);
        assert_eq!(health.set("users", true), Some(HealthStatus::Serving));
        assert_eq!(health.set("users", true), None);
        assert_eq!(health.set("users", false), Some(HealthStatus::NotServing));
        assert_eq!(health.set("users", true), Some(HealthStatus::Serving));
        assert_eq!(
            health.set("", false),
            None,
            "the server's own status is its life"
        );
        let mut changed = health.drain();
        changed.sort();
        assert_eq!(changed, ["", "users"]);
        assert!(health.drain().is_empty());
        assert_eq!(health.status(""), HealthStatus::NotServing);
        assert_eq!(health.status("users"), HealthStatus::NotServing);
        assert_eq!(health.status("other"), HealthStatus::ServiceUnknown);
        assert_eq!(topic(""), "$health");
        assert_eq!(topic("users"), "$health.users");
    }
}
