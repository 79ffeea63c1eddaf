//! The consistent-hash exchange (`x-consistent-hash`, RabbitMQ's
//! rabbitmq_consistent_hash_exchange plugin): each message goes to exactly
//! one destination, chosen by hashing the routing key, a header or a
//! property, in proportion to the bindings' weights.
//!
//! As in the plugin (`rabbit_exchange_type_consistent_hash`):
//! - The binding key is the weight, a positive integer in text, at most
//!   10 000; it gives the destination that many buckets.
//! - Buckets are numbered in binding order, each destination's contiguous;
//!   a destination's second binding adds none (the plugin answers
//!   `already_exists`). Removing a destination's buckets renumbers those
//!   after it downwards, as the plugin does. One deliberate difference:
//!   the plugin drops all of a destination's buckets when *any* of its
//!   bindings is removed, even while another binding to it remains;
//!   Warren keeps the destination, weighted by its oldest remaining binding.
//! - A key picks a bucket by jump consistent hashing (Lamping and Veach),
//!   so adding buckets at the end moves only the keys that the new buckets
//!   take; the destination owning the bucket is found by binary search.
//! - The exchange argument `hash-header` names a header to hash instead of
//!   the routing key, `hash-property` one of `message_id`,
//!   `correlation_id`, `timestamp`; they are mutually exclusive.
//! - A message without the chosen header or property is hashed as one
//!   fixed "undefined" key, so all such messages reach the same destination:
//!   the plugin hashes the atom `undefined` and its README says "they will
//!   all get routed to the same arbitrarily chosen queue".
//!
//! The key hash is Warren's own stable 64-bit hash (not Erlang's
//! `phash2`), so the queue a key reaches differs from RabbitMQ's; what
//! carries over is the behaviour: stable while bindings are unchanged,
//! spread in proportion to the weights.

use crate::hash::stable_hash;
use crate::value::{erlang_binary, Table, Value};
use crate::{ArgumentError, BindError, RouteInput};

/// The plugin's `MAX_BINDING_WEIGHT`.
pub const MAX_WEIGHT: u32 = 10_000;

/// What a consistent-hash exchange hashes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HashOn {
    #[default]
    RoutingKey,
    /// The value of this header (`hash-header`).
    Header(String),
    /// This message property (`hash-property`).
    Property(HashProperty),
}

/// The properties `hash-property` may name (the plugin's `?PROPERTIES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashProperty {
    MessageId,
    CorrelationId,
    Timestamp,
}

impl HashProperty {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message_id" => Some(Self::MessageId),
            "correlation_id" => Some(Self::CorrelationId),
            "timestamp" => Some(Self::Timestamp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageId => "message_id",
            Self::CorrelationId => "correlation_id",
            Self::Timestamp => "timestamp",
        }
    }
}

impl HashOn {
    /// Reads `hash-header`/`hash-property` from exchange arguments, checked
    /// as the plugin's `validate/1` checks them.
    pub fn from_arguments(arguments: &Table) -> Result<Self, ArgumentError> {
        let text = |name: &'static str| -> Result<Option<String>, ArgumentError> {
            match arguments.get(name) {
                None => Ok(None),
                Some(Value::LongString(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
                Some(Value::ShortString(s)) => Ok(Some(s.clone())),
                // The plugin's hash_args/1 has no clause for other types
                // (a case_clause crash there); refuse them plainly here.
                Some(other) => Err(ArgumentError::InvalidType {
                    argument: name,
                    type_name: other.type_name(),
                }),
            }
        };
        match (text("hash-header")?, text("hash-property")?) {
            (None, None) => Ok(HashOn::RoutingKey),
            (Some(h), None) => Ok(HashOn::Header(h)),
            (None, Some(p)) => HashProperty::parse(&p)
                .map(HashOn::Property)
                .ok_or(ArgumentError::UnsupportedProperty(p)),
            (Some(_), Some(_)) => Err(ArgumentError::HashHeaderAndProperty),
        }
    }
}

/// Reads a binding key as a weight, as the plugin's `validate_binding/2`:
/// Erlang's `list_to_integer` (an optional sign, then decimal digits, any
/// length), then 1..=10 000.
pub fn parse_weight(key: &str) -> Result<u32, BindError> {
    let digits = key.strip_prefix(['+', '-']).unwrap_or(key);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BindError::InvalidWeight(key.to_owned()));
    }
    let zero = digits.bytes().all(|b| b == b'0');
    if key.starts_with('-') || zero {
        return Err(BindError::WeightTooSmall);
    }
    match digits.parse::<u32>() {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        // Too many digits for u32 is still a (huge) integer to Erlang.
        _ => Err(BindError::WeightTooLarge),
    }
}

/// Bytes hashed for a message that lacks the chosen header or property,
/// standing for the plugin's `undefined`. The leading NUL keeps it apart
/// from any routing key a client is likely to use.
const UNDEFINED: &[u8] = b"\0undefined";

/// A destination and the weights of its bindings, oldest first; only the
/// oldest counts (see the module doc).
#[derive(Debug)]
struct Member<D> {
    dest: D,
    weights: Vec<u32>,
}

/// The buckets of one consistent-hash exchange.
#[derive(Debug)]
pub struct HashRing<D> {
    members: Vec<Member<D>>,
    /// `ends[i]`: one past the last bucket of `members[i]`.
    ends: Vec<u64>,
}

impl<D> Default for HashRing<D> {
    fn default() -> Self {
        HashRing {
            members: Vec::new(),
            ends: Vec::new(),
        }
    }
}

impl<D: Clone + Eq> HashRing<D> {
    fn rebuild(&mut self) {
        let mut total = 0u64;
        self.ends.clear();
        for m in &self.members {
            total += m.weights[0] as u64;
            self.ends.push(total);
        }
    }

    /// Adds one binding of `dest` with `weight` buckets.
    pub fn insert(&mut self, dest: D, weight: u32) {
        match self.members.iter_mut().find(|m| m.dest == dest) {
            Some(m) => m.weights.push(weight),
            None => {
                self.members.push(Member {
                    dest,
                    weights: vec![weight],
                });
                self.rebuild();
            }
        }
    }

    /// Removes one binding of `dest` with `weight`; returns whether there was one.
    pub fn remove(&mut self, dest: &D, weight: u32) -> bool {
        let Some(i) = self.members.iter().position(|m| m.dest == *dest) else {
            return false;
        };
        let m = &mut self.members[i];
        let Some(j) = m.weights.iter().position(|&w| w == weight) else {
            return false;
        };
        m.weights.remove(j);
        if m.weights.is_empty() {
            self.members.remove(i);
        }
        self.rebuild();
        true
    }

    /// The number of buckets.
    pub fn buckets(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The destination for a key hash.
    pub fn pick(&self, hash: u64) -> Option<&D> {
        let n = self.buckets();
        if n == 0 {
            return None;
        }
        let bucket = jump_consistent_hash(hash, n);
        let i = self.ends.partition_point(|&end| end <= bucket);
        Some(&self.members[i].dest)
    }

    /// Appends the destination of the message, if there is one.
    pub fn route(&self, on: &HashOn, input: &RouteInput<'_>, out: &mut Vec<D>) {
        if self.members.is_empty() {
            return;
        }
        let hash = key_hash(on, input);
        if let Some(d) = self.pick(hash) {
            out.push(d.clone());
        }
    }
}

/// The hash of what `on` selects from the message.
pub fn key_hash(on: &HashOn, input: &RouteInput<'_>) -> u64 {
    match on {
        HashOn::RoutingKey => stable_hash(input.routing_key.as_bytes()),
        HashOn::Header(name) => match input.headers.and_then(|h| h.get(name)) {
            Some(v) => value_hash(v),
            None => stable_hash(UNDEFINED),
        },
        HashOn::Property(p) => {
            let text = match p {
                HashProperty::MessageId => input.message_id.map(str::to_owned),
                HashProperty::CorrelationId => input.correlation_id.map(str::to_owned),
                // The plugin hashes integer_to_binary(Seconds).
                HashProperty::Timestamp => input.timestamp.map(|t| t.to_string()),
            };
            stable_hash(text.as_deref().map_or(UNDEFINED, str::as_bytes))
        }
    }
}

/// A header value's hash: strings by their bytes (so a header "k" reaches
/// the queue the routing key "k" would), other values by their Erlang term
/// text, which is stable and differs between types.
fn value_hash(v: &Value) -> u64 {
    match v {
        Value::LongString(b) | Value::ByteArray(b) => stable_hash(b),
        Value::ShortString(s) => stable_hash(s.as_bytes()),
        Value::Void => stable_hash(UNDEFINED),
        other => stable_hash(other.erlang_term().as_bytes()),
    }
}

/// Jump consistent hashing (Lamping and Veach, 2014): a bucket in
/// `0..buckets` such that growing `buckets` by one moves only 1/(n+1) of
/// the keys, all into the new bucket.
pub fn jump_consistent_hash(mut key: u64, buckets: u64) -> u64 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while (j as u64) < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    b as u64
}

/// The plugin's text for a non-integer weight: `~tp` of the binary key.
pub(crate) fn invalid_weight_text(key: &str) -> String {
    format!(
        "The binding key must be an integer: {}",
        erlang_binary(key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::LongString(v.as_bytes().to_vec())
    }

    #[test]
    fn weights_parse_as_erlang_integers() {
        assert_eq!(parse_weight("1"), Ok(1));
        assert_eq!(
            parse_weight("+7"),
            Ok(7),
            "list_to_integer accepts a plus sign"
        );
        assert_eq!(parse_weight("007"), Ok(7));
        assert_eq!(parse_weight("10000"), Ok(10_000));
        assert_eq!(parse_weight("0"), Err(BindError::WeightTooSmall));
        assert_eq!(parse_weight("-3"), Err(BindError::WeightTooSmall));
        assert_eq!(parse_weight("10001"), Err(BindError::WeightTooLarge));
        assert_eq!(
            parse_weight("99999999999999999999999"),
            Err(BindError::WeightTooLarge)
        );
        for bad in ["", "abc", " 1", "1.5", "+", "1e3"] {
            assert_eq!(parse_weight(bad), Err(BindError::InvalidWeight(bad.into())));
        }
    }

    #[test]
    fn weight_error_texts_are_the_plugins() {
        assert_eq!(
            BindError::InvalidWeight("abc".into()).to_string(),
            "The binding key must be an integer: <<\"abc\">>"
        );
        assert_eq!(
            BindError::InvalidWeight("".into()).to_string(),
            "The binding key must be an integer: <<>>"
        );
        assert_eq!(
            BindError::WeightTooSmall.to_string(),
            "The binding key must be greater than 0"
        );
        assert_eq!(
            BindError::WeightTooLarge.to_string(),
            "The binding key must not exceed 10000"
        );
    }

    #[test]
    fn exchange_arguments() {
        let t = |e: &[(&str, Value)]| {
            Table(e.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
        };
        assert_eq!(HashOn::from_arguments(&t(&[])), Ok(HashOn::RoutingKey));
        assert_eq!(
            HashOn::from_arguments(&t(&[("hash-header", s("h"))])),
            Ok(HashOn::Header("h".into()))
        );
        assert_eq!(
            HashOn::from_arguments(&t(&[("hash-property", s("timestamp"))])),
            Ok(HashOn::Property(HashProperty::Timestamp))
        );
        let e = HashOn::from_arguments(&t(&[("hash-property", s("priority"))])).unwrap_err();
        assert_eq!(e.to_string(), "Unsupported property: priority");
        let e = HashOn::from_arguments(&t(&[
            ("hash-header", s("h")),
            ("hash-property", s("message_id")),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "hash-header and hash-property are mutually exclusive"
        );
        assert!(HashOn::from_arguments(&t(&[("hash-header", Value::LongInt(1))])).is_err());
    }

    #[test]
    fn jump_hash_moves_few_keys_when_growing() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|i| stable_hash(&i.to_le_bytes()))
            .collect();
        let moved = keys
            .iter()
            .filter(|&&k| jump_consistent_hash(k, 10) != jump_consistent_hash(k, 11))
            .count();
        // Expect 1/11 of the keys (~909) to move, all into bucket 10.
        assert!((700..1100).contains(&moved), "moved {moved}");
        for &k in &keys {
            let (a, b) = (jump_consistent_hash(k, 10), jump_consistent_hash(k, 11));
            assert!(a == b || b == 10);
        }
        assert_eq!(jump_consistent_hash(12345, 1), 0);
    }

    #[test]
    fn second_binding_of_a_destination_adds_no_buckets() {
        // chx_hash_ring_update_fun: map_has_value(BM0, Dst) -> already_exists.
        let mut r = HashRing::default();
        r.insert("q1", 2);
        r.insert("q1", 5);
        r.insert("q2", 3);
        assert_eq!(r.buckets(), 5);
        // Removing the first binding leaves q1 weighted by the second.
        assert!(r.remove(&"q1", 2));
        assert_eq!(r.buckets(), 8);
        assert!(!r.remove(&"q1", 2));
        assert!(r.remove(&"q1", 5));
        assert_eq!(r.buckets(), 3);
        assert_eq!(r.pick(42), Some(&"q2"));
    }
}
