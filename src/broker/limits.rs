//! RabbitMQ's vhost limits (`max-connections`, `max-queues`) and user
//! limits (`max-connections`, `max-channels`): where they are kept, the
//! live counts they are checked against, and the checks.
//!
//! Vhost limits are kept as RabbitMQ keeps them, a runtime parameter of
//! component `vhost-limits` named `limits`, so definitions export, import
//! and the store carry them unchanged; user limits are the user's `limits`
//! object. A negative value means no limit, 0 allows none.
//!
//! Counts are reserved, not observed: admitting a connection or channel
//! takes a [`Slot`] under the count's map shard, so two clients racing for
//! the last place cannot both get it, and the slot gives its place back
//! when dropped (with the connection or channel that holds it).

use super::access::Kept;
use super::error::{BrokerError, ErrorKind, Result};
use super::Broker;
use dashmap::DashMap;
use serde_json::{json, Value as J};
use std::sync::Arc;

/// The component and name RabbitMQ stores vhost limits under.
pub const VHOST_LIMITS: &str = "vhost-limits";
const LIMITS_NAME: &str = "limits";

/// The limits a vhost may have, in RabbitMQ's names.
pub const VHOST_LIMIT_NAMES: [&str; 2] = ["max-connections", "max-queues"];
/// The limits a user may have.
pub const USER_LIMIT_NAMES: [&str; 2] = ["max-connections", "max-channels"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Count {
    VhostConnections,
    UserConnections,
    UserChannels,
}

/// Live connections per vhost and per user, and channels per user.
#[derive(Default)]
pub struct Tracker {
    counts: DashMap<(Count, String), u64>,
}

/// One place taken in a count; given back on drop.
pub struct Slot {
    tracker: Arc<Tracker>,
    key: (Count, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut n) = self.tracker.counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.tracker.counts.remove_if(&self.key, |_, n| *n == 0);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({:?}, {})", self.key.0, self.key.1)
    }
}

/// The places a connection holds: one in its vhost's count, one in its
/// user's.
#[derive(Debug)]
pub struct ConnectionSlots {
    _vhost: Slot,
    _user: Slot,
}

impl Tracker {
    /// Takes a place unless `limit` places are taken already.
    fn take(self: &Arc<Self>, count: Count, key: &str, limit: Option<u64>) -> Option<Slot> {
        let key = (count, key.to_owned());
        let mut n = self.counts.entry(key.clone()).or_insert(0);
        if limit.is_some_and(|l| *n >= l) {
            return None;
        }
        *n += 1;
        drop(n);
        Some(Slot {
            tracker: self.clone(),
            key,
        })
    }

    fn count(&self, count: Count, key: &str) -> u64 {
        self.counts.get(&(count, key.to_owned())).map_or(0, |n| *n)
    }
}

/// A limit's value: a non-negative integer, or `None` (absent, negative
/// or not an integer: no limit, as RabbitMQ reads them).
pub fn limit_of(limits: &J, name: &str) -> Option<u64> {
    limits
        .get(name)
        .and_then(J::as_i64)
        .and_then(|n| u64::try_from(n).ok())
}

/// RabbitMQ's check of a limits object (`rabbit_parameter_validation:
/// proplist` with integer values), as its management API words the
/// failure; `what` names the object ("limits" or "user-limits").
pub fn validate(
    what: &str,
    allowed: &[&str],
    limits: &serde_json::Map<String, J>,
) -> std::result::Result<(), String> {
    for (k, v) in limits {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "Unrecognised terms [{{<<\"{k}\">>,{}}}] in {what}",
                erlang_term(v)
            ));
        }
        if !v.is_i64() {
            return Err(format!(
                "{k} should be a number, actually was {}",
                erlang_term(v)
            ));
        }
    }
    Ok(())
}

/// A JSON value as Erlang's `~p` prints what RabbitMQ decoded it to.
fn erlang_term(v: &J) -> String {
    match v {
        J::String(s) => format!("<<\"{s}\">>"),
        J::Null => "null".into(),
        other => other.to_string(),
    }
}

/// The kept parameter's key: (vhost, component, name).
fn limits_key(vhost: &str) -> Vec<String> {
    vec![
        vhost.to_owned(),
        VHOST_LIMITS.to_owned(),
        LIMITS_NAME.to_owned(),
    ]
}

impl Broker {
    /// The vhost's limits object (`{}` when none are set).
    pub fn vhost_limits(&self, vhost: &str) -> J {
        self.access
            .kept_item(Kept::Parameter, &limits_key(vhost))
            .and_then(|p| p.get("value").filter(|v| v.is_object()).cloned())
            .unwrap_or_else(|| json!({}))
    }

    /// Every vhost with limits set, as (vhost, limits), sorted by vhost.
    pub fn all_vhost_limits(&self) -> Vec<(String, J)> {
        self.access
            .kept(Kept::Parameter, None)
            .into_iter()
            .filter(|p| p["component"] == VHOST_LIMITS && p["name"] == LIMITS_NAME)
            .filter(|p| p["value"].as_object().is_some_and(|m| !m.is_empty()))
            .filter_map(|p| Some((p["vhost"].as_str()?.to_owned(), p["value"].clone())))
            .collect()
    }

    /// Sets (`Some`) or clears one limit of a vhost; the vhost must exist.
    pub fn set_vhost_limit(&self, vhost: &str, name: &str, value: Option<i64>) {
        let mut limits = self.vhost_limits(vhost);
        let m = limits.as_object_mut().expect("limits are an object");
        match value {
            Some(v) => {
                m.insert(name.to_owned(), json!(v));
            }
            None => {
                m.remove(name);
            }
        }
        let key = limits_key(vhost);
        if m.is_empty() {
            self.access.remove_kept(Kept::Parameter, &key);
        } else {
            let item = json!({
                "vhost": vhost, "component": VHOST_LIMITS, "name": LIMITS_NAME, "value": limits,
            });
            self.access.put_kept(Kept::Parameter, key, item);
        }
        self.refresh_vhost_limits();
    }

    /// Hands each vhost its queue limit from the stored limits: after a
    /// start, an import, or a change through the API.
    pub fn refresh_vhost_limits(&self) {
        for v in self.vhosts() {
            v.set_queue_limit(limit_of(&self.vhost_limits(&v.name), "max-queues"));
        }
    }

    /// Sets (`Some`) or clears one limit of a user; false if unknown.
    pub fn set_user_limit(&self, user: &str, name: &str, value: Option<i64>) -> bool {
        let Some(mut u) = self.access.user(user) else {
            return false;
        };
        if !u.limits.is_object() {
            u.limits = json!({});
        }
        let m = u.limits.as_object_mut().expect("checked above");
        match value {
            Some(v) => {
                m.insert(name.to_owned(), json!(v));
            }
            None => {
                m.remove(name);
            }
        }
        self.access.put_user(u);
        true
    }

    /// Admits a connection of `user` to `vhost` at connection.open, or
    /// refuses it as RabbitMQ does (530, vhost limit first); the slots
    /// are held for the connection's life.
    pub fn admit_connection(&self, user: &str, vhost: &str) -> Result<ConnectionSlots> {
        let vlimit = limit_of(&self.vhost_limits(vhost), "max-connections");
        let v = self
            .limits
            .take(Count::VhostConnections, vhost, vlimit)
            .ok_or_else(|| {
                BrokerError::new(
                    ErrorKind::NotAllowed,
                    format!(
                        "access to vhost '{vhost}' refused for user '{user}': connection limit ({}) is reached",
                        vlimit.unwrap_or_default()
                    ),
                )
            })?;
        let ulimit = self
            .access
            .user(user)
            .and_then(|u| limit_of(&u.limits, "max-connections"));
        let u = self
            .limits
            .take(Count::UserConnections, user, ulimit)
            .ok_or_else(|| {
                BrokerError::new(
                    ErrorKind::NotAllowed,
                    format!(
                        "connection refused for user '{user}': user connection limit ({}) is reached",
                        ulimit.unwrap_or_default()
                    ),
                )
            })?;
        Ok(ConnectionSlots {
            _vhost: v,
            _user: u,
        })
    }

    /// Admits a channel of `user` at channel.open, or refuses it (530,
    /// closing the connection, as RabbitMQ's reader does).
    pub fn admit_channel(&self, user: &str) -> Result<Slot> {
        let limit = self
            .access
            .user(user)
            .and_then(|u| limit_of(&u.limits, "max-channels"));
        self.limits
            .take(Count::UserChannels, user, limit)
            .ok_or_else(|| {
                BrokerError::new(
                    ErrorKind::NotAllowed,
                    format!(
                        "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({})",
                        limit.unwrap_or_default()
                    ),
                )
            })
    }

    /// Live connections in a vhost (as the limit counts them).
    pub fn vhost_connection_count(&self, vhost: &str) -> u64 {
        self.limits.count(Count::VhostConnections, vhost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_given_back_on_drop() {
        let t = Arc::new(Tracker::default());
        let a = t.take(Count::UserChannels, "u", Some(2)).unwrap();
        let _b = t.take(Count::UserChannels, "u", Some(2)).unwrap();
        assert!(t.take(Count::UserChannels, "u", Some(2)).is_none());
        drop(a);
        assert!(t.take(Count::UserChannels, "u", Some(2)).is_some());
        assert!(
            t.take(Count::UserChannels, "v", Some(0)).is_none(),
            "0 allows none"
        );
        assert!(t.take(Count::UserChannels, "w", None).is_some());
    }

    #[test]
    fn negative_or_missing_limits_are_none() {
        let l = json!({"max-connections": -1, "max-queues": 3, "x": "y"});
        assert_eq!(limit_of(&l, "max-connections"), None);
        assert_eq!(limit_of(&l, "max-queues"), Some(3));
        assert_eq!(limit_of(&l, "x"), None);
        assert_eq!(limit_of(&l, "absent"), None);
    }
}
