//! Pure, synchronous AMQP routing: which destinations a message reaches.
//!
//! This crate owns the exchange types (direct, fanout, topic, headers and
//! RabbitMQ's `x-consistent-hash`), the bindings of one exchange with the
//! index each type routes from, and the field-table value model used to
//! match headers. It does no I/O, takes no locks and knows nothing of
//! queues: a destination is any `D` the caller chooses (the broker uses
//! queue and exchange handles). Callers wrap a [`Router`] in whatever
//! synchronisation they need.
//!
//! RabbitMQ is the reference for every rule; the modules cite the Erlang
//! functions they follow.

pub mod consistent_hash;
mod hash;
pub mod headers;
pub mod partition;
pub mod topic;
pub mod value;

use hash::FastMap;
use std::collections::HashMap;
use std::hash::Hash;

pub use consistent_hash::{HashOn, HashProperty};
pub use headers::XMatch;
pub use partition::Routing;
pub use value::{Table, Value};

/// What routing may look at in a message. Most exchange types need only
/// the routing key; callers fill the rest when [`Router::needs_headers`] or
/// [`Router::needs_properties`] say so, so the common path parses nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    pub routing_key: &'a str,
    pub headers: Option<&'a Table>,
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    /// The `timestamp` property, in seconds as AMQP 0-9-1 carries it.
    pub timestamp: Option<u64>,
}

impl<'a> RouteInput<'a> {
    pub fn key(routing_key: &'a str) -> Self {
        RouteInput {
            routing_key,
            ..Default::default()
        }
    }
}

/// The exchange types Warren routes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-consistent-hash`, RabbitMQ's consistent-hash exchange plugin.
    ConsistentHash,
}

impl ExchangeType {
    /// Parses the `type` field of exchange.declare; `None` for unknown types.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            "x-consistent-hash" => Some(Self::ConsistentHash),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::ConsistentHash => "x-consistent-hash",
        }
    }
}

/// One binding: messages matching `routing_key`/`arguments` go to `destination`.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding<D> {
    pub destination: D,
    pub routing_key: String,
    pub arguments: Table,
}

/// Why a binding was refused. RabbitMQ refuses each with 406
/// PRECONDITION_FAILED, and `Display` gives its reply text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// A headers binding whose string `x-match` is not all/any/all-with-x/
    /// any-with-x; holds the value given.
    InvalidXMatch(String),
    /// A headers binding whose `x-match` is not a string: RabbitMQ's type
    /// name and the value as RabbitMQ prints it.
    InvalidXMatchType {
        type_name: &'static str,
        value: String,
    },
    /// A consistent-hash binding key that is not an integer; holds the key.
    InvalidWeight(String),
    /// A consistent-hash weight below 1.
    WeightTooSmall,
    /// A consistent-hash weight above [`consistent_hash::MAX_WEIGHT`].
    WeightTooLarge,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Texts from rabbit_exchange_type_headers:validate_binding/2 and
        // rabbit_exchange_type_consistent_hash:validate_binding/2, with the
        // `~tp` arguments printed as Erlang prints them.
        match self {
            BindError::InvalidXMatch(v) => write!(
                f,
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                value::erlang_binary(v.as_bytes())
            ),
            BindError::InvalidXMatchType { type_name, value } => write!(
                f,
                "Invalid x-match field type {type_name} (value {value}); expected longstr"
            ),
            BindError::InvalidWeight(k) => f.write_str(&consistent_hash::invalid_weight_text(k)),
            BindError::WeightTooSmall => f.write_str("The binding key must be greater than 0"),
            BindError::WeightTooLarge => write!(
                f,
                "The binding key must not exceed {}",
                consistent_hash::MAX_WEIGHT
            ),
        }
    }
}

impl std::error::Error for BindError {}

/// Why exchange arguments were refused (exchange.declare). RabbitMQ
/// answers 406 PRECONDITION_FAILED with the `Display` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgumentError {
    /// `hash-property` names no supported property; holds the name.
    UnsupportedProperty(String),
    /// Both `hash-header` and `hash-property` were given.
    HashHeaderAndProperty,
    /// A routing argument that must be a string was not.
    InvalidType {
        argument: &'static str,
        type_name: &'static str,
    },
    /// A routing argument with a value it does not take.
    InvalidValue {
        argument: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl std::fmt::Display for ArgumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first two are rabbit_exchange_type_consistent_hash:validate/1's.
        match self {
            ArgumentError::UnsupportedProperty(p) => write!(f, "Unsupported property: {p}"),
            ArgumentError::HashHeaderAndProperty => {
                f.write_str("hash-header and hash-property are mutually exclusive")
            }
            ArgumentError::InvalidType {
                argument,
                type_name,
            } => write!(
                f,
                "Invalid {argument} field type {type_name}; expected longstr"
            ),
            ArgumentError::InvalidValue {
                argument,
                value,
                expected,
            } => write!(f, "Invalid {argument} value '{value}'; expected {expected}"),
        }
    }
}

impl std::error::Error for ArgumentError {}

/// The routing index of one exchange, by type.
#[derive(Debug)]
enum Index<D> {
    /// Routing key -> destinations, each with the number of bindings that
    /// lead to it under this key (so unbinding one of two keeps it).
    Direct(FastMap<Box<str>, Vec<(D, usize)>>),
    /// Every bound destination, once.
    Fanout(Vec<D>),
    Topic(topic::TopicIndex<D>),
    Headers(headers::HeadersIndex<D>),
    ConsistentHash(consistent_hash::HashRing<D>, HashOn),
}

/// The bindings of one exchange, indexed for its type.
///
/// Bindings are identified, as in RabbitMQ, by (destination, routing key,
/// arguments): binding the same triple twice is a no-op. Binding and
/// unbinding cost does not grow with the exchange's other bindings (they
/// are found through a per-destination map), so an exchange with 100 000
/// bindings is built in linear time.
#[derive(Debug)]
pub struct Router<D> {
    kind: ExchangeType,
    bindings: Vec<Binding<D>>,
    /// Destination -> routing key -> positions in `bindings`.
    positions: HashMap<D, HashMap<Box<str>, Vec<usize>>>,
    index: Index<D>,
    /// A direct exchange's `x-super-stream-routing`.
    routing: Routing,
    /// With [`Routing::Hash`]: the bound destinations in partition order.
    partitions: Vec<D>,
}

impl<D: Clone + Eq + Hash> Router<D> {
    /// A router for an exchange declared without arguments.
    pub fn new(kind: ExchangeType) -> Self {
        Router {
            kind,
            bindings: Vec::new(),
            positions: HashMap::new(),
            index: match kind {
                ExchangeType::Direct => Index::Direct(FastMap::default()),
                ExchangeType::Fanout => Index::Fanout(Vec::new()),
                ExchangeType::Topic => Index::Topic(topic::TopicIndex::default()),
                ExchangeType::Headers => Index::Headers(headers::HeadersIndex::default()),
                ExchangeType::ConsistentHash => {
                    Index::ConsistentHash(consistent_hash::HashRing::default(), HashOn::RoutingKey)
                }
            },
            routing: Routing::Key,
            partitions: Vec::new(),
        }
    }

    /// A router for an exchange declared with `arguments`, validated as
    /// RabbitMQ's exchange type validates them on exchange.declare. Only
    /// `x-consistent-hash` reads any (`hash-header`, `hash-property`);
    /// other types ignore them, as their `validate/1` does. Warren's one
    /// addition: a direct exchange's `x-super-stream-routing` (`key` or
    /// `hash`, see [`partition`]).
    pub fn with_arguments(kind: ExchangeType, arguments: &Table) -> Result<Self, ArgumentError> {
        let mut r = Router::new(kind);
        match &mut r.index {
            Index::ConsistentHash(_, on) => *on = HashOn::from_arguments(arguments)?,
            Index::Direct(_) => r.routing = Routing::from_arguments(arguments)?,
            _ => {}
        }
        Ok(r)
    }

    /// How a direct exchange routes (always [`Routing::Key`] for others).
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Recomputes the partition order after a binding change (hash
    /// routing only): by `x-stream-partition-order`, bindings without one
    /// last, ties by binding key; each destination once.
    fn reorder_partitions(&mut self) {
        if self.routing != Routing::Hash {
            return;
        }
        let mut ordered: Vec<&Binding<D>> = self.bindings.iter().collect();
        ordered.sort_by(|a, b| {
            let key = |x: &Binding<D>| partition::order(&x.arguments).unwrap_or(i64::MAX);
            key(a)
                .cmp(&key(b))
                .then_with(|| a.routing_key.cmp(&b.routing_key))
        });
        let mut out: Vec<D> = Vec::with_capacity(ordered.len());
        for b in ordered {
            if !out.contains(&b.destination) {
                out.push(b.destination.clone());
            }
        }
        self.partitions = out;
    }

    /// The destination a hash-routed key reaches, if any is bound.
    fn hashed(&self, routing_key: &str) -> Option<&D> {
        (!self.partitions.is_empty())
            .then(|| &self.partitions[partition::index_of(routing_key, self.partitions.len())])
    }

    pub fn kind(&self) -> ExchangeType {
        self.kind
    }

    /// What a consistent-hash exchange hashes; `None` for other types.
    pub fn hash_on(&self) -> Option<&HashOn> {
        match &self.index {
            Index::ConsistentHash(_, on) => Some(on),
            _ => None,
        }
    }

    /// Adds a binding; returns `Ok(false)` when it already existed.
    pub fn bind(
        &mut self,
        destination: D,
        routing_key: &str,
        arguments: Table,
    ) -> Result<bool, BindError> {
        // Validate first, as RabbitMQ's validate_binding runs before the
        // binding is looked up or stored.
        let matcher = match self.kind {
            ExchangeType::Headers => Some(headers::HeadersMatcher::new(&arguments)?),
            _ => None,
        };
        let weight = match self.kind {
            ExchangeType::ConsistentHash => consistent_hash::parse_weight(routing_key)?,
            _ => 0,
        };
        if self.find(&destination, routing_key, &arguments).is_some() {
            return Ok(false);
        }
        match &mut self.index {
            Index::Direct(map) => {
                let dests = map.entry(routing_key.into()).or_default();
                match dests.iter_mut().find(|(d, _)| *d == destination) {
                    Some((_, n)) => *n += 1,
                    None => dests.push((destination.clone(), 1)),
                }
            }
            Index::Fanout(dests) => {
                // A destination's first binding puts it on the list.
                if !self.positions.contains_key(&destination) {
                    dests.push(destination.clone());
                }
            }
            Index::Topic(t) => t.insert(routing_key, destination.clone()),
            Index::Headers(h) => h.insert(matcher.expect("built above"), destination.clone()),
            Index::ConsistentHash(ring, _) => ring.insert(destination.clone(), weight),
        }
        let pos = self.bindings.len();
        self.positions
            .entry(destination.clone())
            .or_default()
            .entry(routing_key.into())
            .or_default()
            .push(pos);
        self.bindings.push(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
        });
        self.reorder_partitions();
        Ok(true)
    }

    fn find(&self, destination: &D, routing_key: &str, arguments: &Table) -> Option<usize> {
        self.positions
            .get(destination)?
            .get(routing_key)?
            .iter()
            .copied()
            .find(|&p| self.bindings[p].arguments == *arguments)
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, destination: &D, routing_key: &str, arguments: &Table) -> bool {
        let Some(pos) = self.find(destination, routing_key, arguments) else {
            return false;
        };
        let keys = self.positions.get_mut(destination).expect("found above");
        let ps = keys.get_mut(routing_key).expect("found above");
        ps.retain(|&p| p != pos);
        if ps.is_empty() {
            keys.remove(routing_key);
            if keys.is_empty() {
                self.positions.remove(destination);
            }
        }
        let b = self.swap_remove(pos);
        self.remove_index(&b);
        self.reorder_partitions();
        true
    }

    /// Removes `bindings[pos]`, whose position entry is already gone, and
    /// renumbers the binding that moves into its place.
    fn swap_remove(&mut self, pos: usize) -> Binding<D> {
        let last = self.bindings.len() - 1;
        if pos != last {
            let moved = &self.bindings[last];
            let ps = self
                .positions
                .get_mut(&moved.destination)
                .and_then(|k| k.get_mut(moved.routing_key.as_str()))
                .expect("every stored binding has a position");
            let p = ps.iter_mut().find(|p| **p == last).expect("indexed");
            *p = pos;
        }
        self.bindings.swap_remove(pos)
    }

    /// Removes `b` from the type's index (after `positions` forgot it).
    fn remove_index(&mut self, b: &Binding<D>) {
        match &mut self.index {
            Index::Direct(map) => {
                let key = b.routing_key.as_str();
                if let Some(dests) = map.get_mut(key) {
                    if let Some(i) = dests.iter().position(|(d, _)| *d == b.destination) {
                        dests[i].1 -= 1;
                        if dests[i].1 == 0 {
                            dests.swap_remove(i);
                        }
                    }
                    if dests.is_empty() {
                        map.remove(key);
                    }
                }
            }
            Index::Fanout(dests) => {
                if !self.positions.contains_key(&b.destination) {
                    dests.retain(|d| *d != b.destination);
                }
            }
            Index::Topic(t) => {
                t.remove(&b.routing_key, &b.destination);
            }
            Index::Headers(h) => {
                h.remove(&b.destination, &b.arguments);
            }
            Index::ConsistentHash(ring, _) => {
                if let Ok(w) = consistent_hash::parse_weight(&b.routing_key) {
                    ring.remove(&b.destination, w);
                }
            }
        }
    }

    /// Removes every binding to `destination` (it was deleted); returns how many.
    pub fn unbind_destination(&mut self, destination: &D) -> usize {
        let Some(keys) = self.positions.remove(destination) else {
            return 0;
        };
        let mut gone: Vec<usize> = keys.into_values().flatten().collect();
        // Highest first: each swap_remove then moves in a binding that is
        // not `destination`'s (those above were removed already).
        gone.sort_unstable_by(|a, b| b.cmp(a));
        let n = gone.len();
        for pos in gone {
            let b = self.swap_remove(pos);
            self.remove_index(&b);
        }
        self.reorder_partitions();
        n
    }

    /// Whether any binding leads to `destination`.
    pub fn has_destination(&self, destination: &D) -> bool {
        self.positions.contains_key(destination)
    }

    pub fn bindings(&self) -> &[Binding<D>] {
        &self.bindings
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Whether routing reads the message's headers.
    pub fn needs_headers(&self) -> bool {
        match &self.index {
            Index::Headers(_) => true,
            Index::ConsistentHash(_, on) => matches!(on, HashOn::Header(_)),
            _ => false,
        }
    }

    /// Whether routing reads message properties other than headers
    /// (`message_id`, `correlation_id`, `timestamp`).
    pub fn needs_properties(&self) -> bool {
        matches!(&self.index, Index::ConsistentHash(_, HashOn::Property(_)))
    }

    /// Appends to `out` every destination the message reaches, each once.
    pub fn route(&self, input: &RouteInput<'_>, out: &mut Vec<D>) {
        let start = out.len();
        if self.routing == Routing::Hash {
            out.extend(self.hashed(input.routing_key).cloned());
            return;
        }
        match &self.index {
            Index::Direct(map) => {
                // Each destination appears once per key already.
                if let Some(dests) = map.get(input.routing_key) {
                    out.extend(dests.iter().map(|(d, _)| d.clone()));
                }
            }
            Index::Fanout(dests) => out.extend(dests.iter().cloned()),
            Index::Topic(t) => {
                t.route(input.routing_key, out);
                dedup_tail(out, start);
            }
            Index::Headers(h) => {
                h.route(input.headers, out);
                dedup_tail(out, start);
            }
            // At most one destination.
            Index::ConsistentHash(ring, on) => ring.route(on, input, out),
        }
    }
}

impl<D: Clone + Eq + Hash> Router<D> {
    /// The bindings through which the message reaches its destinations:
    /// the slow, explaining twin of [`Router::route`] (the routing tester
    /// uses it; publishing never does). Every binding that matches is
    /// listed, so a destination bound twice with matching keys appears
    /// twice; the distinct destinations are exactly those `route` gives.
    /// For `x-consistent-hash`, which picks a destination rather than
    /// matching bindings, they are the picked destination's bindings.
    pub fn explain(&self, input: &RouteInput<'_>) -> Vec<&Binding<D>> {
        let empty = Table::default();
        if self.routing == Routing::Hash {
            let picked = self.hashed(input.routing_key);
            return self
                .bindings
                .iter()
                .filter(|b| Some(&b.destination) == picked)
                .collect();
        }
        match &self.index {
            Index::Direct(_) => self
                .bindings
                .iter()
                .filter(|b| b.routing_key == input.routing_key)
                .collect(),
            Index::Fanout(_) => self.bindings.iter().collect(),
            Index::Topic(_) => self
                .bindings
                .iter()
                .filter(|b| topic::matches(&b.routing_key, input.routing_key))
                .collect(),
            Index::Headers(_) => {
                let headers = input.headers.unwrap_or(&empty);
                self.bindings
                    .iter()
                    .filter(|b| {
                        headers::HeadersMatcher::new(&b.arguments).is_ok_and(|m| m.matches(headers))
                    })
                    .collect()
            }
            Index::ConsistentHash(ring, on) => {
                let mut picked = Vec::with_capacity(1);
                ring.route(on, input, &mut picked);
                self.bindings
                    .iter()
                    .filter(|b| picked.contains(&b.destination))
                    .collect()
            }
        }
    }
}

/// Removes duplicates from `out[start..]`, keeping first occurrences in order.
fn dedup_tail<D: Eq + Hash + Clone>(out: &mut Vec<D>, start: usize) {
    let n = out.len() - start;
    if n < 2 {
        return;
    }
    if n <= 16 {
        // Quadratic but allocation-free: cheaper than hashing for few items.
        let mut i = start + 1;
        while i < out.len() {
            if out[start..i].contains(&out[i]) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    } else {
        let mut seen = std::collections::HashSet::with_capacity(n);
        let tail: Vec<D> = out.drain(start..).collect();
        for d in tail {
            if seen.insert(d.clone()) {
                out.push(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Table {
        Table::default()
    }

    fn route(r: &Router<&'static str>, key: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        r.route(&RouteInput::key(key), &mut out);
        out.sort();
        out
    }

    #[test]
    fn hash_routing_picks_one_partition_in_partition_order() {
        let mut args = t();
        args.insert(partition::ROUTING_ARG, Value::LongString(b"hash".to_vec()));
        let mut r = Router::with_arguments(ExchangeType::Direct, &args).unwrap();
        assert_eq!(r.routing(), Routing::Hash);
        assert!(route(&r, "k").is_empty(), "no partitions: unroutable");
        let order = |i: i64| {
            let mut a = t();
            a.insert(partition::ORDER_ARG, Value::LongInt(i as i32));
            a
        };
        // Bound out of order: the order argument, not the binding order, counts.
        r.bind("s-2", "2", order(2)).unwrap();
        r.bind("s-0", "0", order(0)).unwrap();
        r.bind("s-1", "1", order(1)).unwrap();
        let parts = ["s-0", "s-1", "s-2"];
        for i in 0..50 {
            let key = format!("key-{i}");
            let want = parts[partition::index_of(&key, 3)];
            assert_eq!(route(&r, &key), vec![want], "{key}");
            let explained: Vec<_> = r
                .explain(&RouteInput::key(&key))
                .iter()
                .map(|b| b.destination)
                .collect();
            assert_eq!(explained, vec![want]);
        }
        r.unbind_destination(&"s-1");
        let key = "key-1";
        assert_eq!(
            route(&r, key),
            vec![["s-0", "s-2"][partition::index_of(key, 2)]]
        );
        let mut bad = t();
        bad.insert(partition::ROUTING_ARG, Value::LongString(b"x".to_vec()));
        assert_eq!(
            Router::<&str>::with_arguments(ExchangeType::Direct, &bad)
                .unwrap_err()
                .to_string(),
            "Invalid x-super-stream-routing value 'x'; expected key or hash"
        );
    }

    #[test]
    fn direct_routes_by_exact_key() {
        let mut r = Router::new(ExchangeType::Direct);
        assert!(r.bind("q1", "a", t()).unwrap());
        assert!(r.bind("q2", "a", t()).unwrap());
        assert!(r.bind("q3", "b", t()).unwrap());
        assert!(
            !r.bind("q1", "a", t()).unwrap(),
            "same binding twice is a no-op"
        );
        assert_eq!(route(&r, "a"), vec!["q1", "q2"]);
        assert_eq!(route(&r, "b"), vec!["q3"]);
        assert!(route(&r, "c").is_empty());
        assert!(r.unbind(&"q1", "a", &t()));
        assert!(!r.unbind(&"q1", "a", &t()));
        assert_eq!(route(&r, "a"), vec!["q2"]);
    }

    #[test]
    fn direct_same_destination_two_bindings_delivers_once() {
        let mut r = Router::new(ExchangeType::Direct);
        let mut args = Table::default();
        args.insert("x", Value::LongInt(1));
        r.bind("q", "k", t()).unwrap();
        r.bind("q", "k", args.clone()).unwrap();
        assert_eq!(route(&r, "k"), vec!["q"]);
        r.unbind(&"q", "k", &args);
        assert_eq!(route(&r, "k"), vec!["q"], "the other binding still routes");
        r.unbind(&"q", "k", &t());
        assert!(route(&r, "k").is_empty());
    }

    #[test]
    fn fanout_ignores_key() {
        let mut r = Router::new(ExchangeType::Fanout);
        r.bind("q1", "x", t()).unwrap();
        r.bind("q2", "y", t()).unwrap();
        r.bind("q2", "z", t()).unwrap();
        assert_eq!(route(&r, "anything"), vec!["q1", "q2"]);
        assert_eq!(r.unbind_destination(&"q2"), 2);
        assert_eq!(route(&r, ""), vec!["q1"]);
    }

    #[test]
    fn topic_routes_once_per_destination() {
        let mut r = Router::new(ExchangeType::Topic);
        r.bind("q1", "a.*", t()).unwrap();
        r.bind("q1", "#", t()).unwrap();
        r.bind("q2", "a.b", t()).unwrap();
        assert_eq!(route(&r, "a.b"), vec!["q1", "q2"]);
        assert_eq!(route(&r, "c"), vec!["q1"]);
    }

    fn s(v: &str) -> Value {
        Value::LongString(v.as_bytes().to_vec())
    }

    fn table(entries: &[(&str, Value)]) -> Table {
        Table(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn route_input(r: &Router<&'static str>, input: &RouteInput<'_>) -> Vec<&'static str> {
        let mut out = Vec::new();
        r.route(input, &mut out);
        out.sort();
        out
    }

    #[test]
    fn exchange_types_parse_and_print() {
        for t in [
            ExchangeType::Direct,
            ExchangeType::Fanout,
            ExchangeType::Topic,
            ExchangeType::Headers,
            ExchangeType::ConsistentHash,
        ] {
            assert_eq!(ExchangeType::parse(t.as_str()), Some(t));
        }
        assert_eq!(
            ExchangeType::parse("x-consistent-hash"),
            Some(ExchangeType::ConsistentHash)
        );
        assert_eq!(ExchangeType::parse("x-random"), None);
    }

    #[test]
    fn route_appends_after_existing_output() {
        // Dedup only looks at what this route added.
        let mut r = Router::new(ExchangeType::Topic);
        r.bind("q", "a.*", t()).unwrap();
        r.bind("q", "#", t()).unwrap();
        let mut out = vec!["q"];
        r.route(&RouteInput::key("a.b"), &mut out);
        assert_eq!(out, vec!["q", "q"]);
    }

    #[test]
    fn positions_survive_swap_removal() {
        // Bindings live in a Vec with swap_remove; the per-destination
        // position map must follow every move.
        let mut r = Router::new(ExchangeType::Topic);
        let dests = ["d0", "d1", "d2", "d3"];
        for i in 0..200 {
            let d = dests[i % 4];
            assert!(r.bind(d, &format!("k{}.#", i % 37), t()).unwrap() || i >= 37 * 4);
        }
        let n = r.bindings().len();
        assert!(r.unbind(&"d1", "k1.#", &t()));
        assert!(!r.unbind(&"d1", "k1.#", &t()));
        assert_eq!(r.bindings().len(), n - 1);
        let gone = r.unbind_destination(&"d2");
        assert!(gone > 0);
        assert!(!r.has_destination(&"d2"));
        assert_eq!(r.unbind_destination(&"d2"), 0);
        assert_eq!(r.bindings().len(), n - 1 - gone);
        // Every remaining binding is still findable and removable.
        for b in r.bindings().to_vec() {
            assert!(r.unbind(&b.destination, &b.routing_key, &b.arguments));
        }
        assert!(r.is_empty());
        let Index::Topic(idx) = &r.index else {
            unreachable!()
        };
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 1, "unbinding pruned the trie to its root");
    }

    #[test]
    fn topic_unbind_destination_prunes_trie() {
        let mut r = Router::new(ExchangeType::Topic);
        r.bind("q1", "a.b.c", t()).unwrap();
        r.bind("q1", "a.#", t()).unwrap();
        r.bind("q2", "a.b", t()).unwrap();
        assert_eq!(r.unbind_destination(&"q1"), 2);
        assert_eq!(route(&r, "a.b"), vec!["q2"]);
        assert!(route(&r, "a.b.c").is_empty());
        let Index::Topic(idx) = &r.index else {
            unreachable!()
        };
        assert_eq!(idx.node_count(), 3, "root, a, b");
    }

    #[test]
    fn fanout_keeps_destination_until_last_binding_goes() {
        let mut r = Router::new(ExchangeType::Fanout);
        r.bind("q", "x", t()).unwrap();
        r.bind("q", "y", t()).unwrap();
        assert_eq!(route(&r, ""), vec!["q"]);
        assert!(r.unbind(&"q", "x", &t()));
        assert_eq!(route(&r, ""), vec!["q"]);
        assert!(r.unbind(&"q", "y", &t()));
        assert!(route(&r, "").is_empty());
    }

    #[test]
    fn headers_messages_without_headers() {
        // rabbit_exchange_type_headers: no headers is an empty map, so an
        // `all` binding with no plain arguments still matches (match_all([]) is true).
        let mut r = Router::new(ExchangeType::Headers);
        r.bind("all_empty", "", t()).unwrap();
        r.bind("all_a", "", table(&[("a", s("1"))])).unwrap();
        r.bind(
            "any_a",
            "",
            table(&[("x-match", s("any")), ("a", Value::Void)]),
        )
        .unwrap();
        assert_eq!(route(&r, "ignored"), vec!["all_empty"]);
        let h = table(&[("a", s("1"))]);
        let input = RouteInput {
            headers: Some(&h),
            ..RouteInput::key("")
        };
        assert_eq!(route_input(&r, &input), vec!["all_a", "all_empty", "any_a"]);
        assert!(r.needs_headers());
        assert!(!r.needs_properties());
    }

    #[test]
    fn headers_bind_errors_are_bind_errors() {
        let mut r = Router::new(ExchangeType::Headers);
        let e = r
            .bind("q", "", table(&[("x-match", s("foo"))]))
            .unwrap_err();
        assert_eq!(e, BindError::InvalidXMatch("foo".into()));
        let e = r
            .bind("q", "", table(&[("x-match", Value::LongInt(23))]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field type signedint (value 23); expected longstr"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn consistent_hash_arguments() {
        let ch = ExchangeType::ConsistentHash;
        let r: Router<&str> = Router::with_arguments(ch, &t()).unwrap();
        assert_eq!(r.hash_on(), Some(&HashOn::RoutingKey));
        assert!(!r.needs_headers() && !r.needs_properties());
        let r: Router<&str> =
            Router::with_arguments(ch, &table(&[("hash-header", s("h"))])).unwrap();
        assert!(r.needs_headers() && !r.needs_properties());
        let r: Router<&str> =
            Router::with_arguments(ch, &table(&[("hash-property", s("message_id"))])).unwrap();
        assert!(!r.needs_headers() && r.needs_properties());
        // rabbit_exchange_type_consistent_hash:validate/1.
        let e = Router::<&str>::with_arguments(
            ch,
            &table(&[("hash-header", s("h")), ("hash-property", s("timestamp"))]),
        )
        .unwrap_err();
        assert_eq!(e, ArgumentError::HashHeaderAndProperty);
        let e = Router::<&str>::with_arguments(ch, &table(&[("hash-property", s("app_id"))]))
            .unwrap_err();
        assert_eq!(e.to_string(), "Unsupported property: app_id");
        // Other types ignore these arguments, as their validate/1 does.
        let r: Router<&str> = Router::with_arguments(
            ExchangeType::Topic,
            &table(&[("hash-header", s("h")), ("hash-property", s("x"))]),
        )
        .unwrap();
        assert_eq!(r.hash_on(), None);
    }

    #[test]
    fn consistent_hash_binding_keys_are_weights() {
        let mut r = Router::new(ExchangeType::ConsistentHash);
        assert_eq!(
            r.bind("q", "abc", t()),
            Err(BindError::InvalidWeight("abc".into()))
        );
        assert_eq!(r.bind("q", "0", t()), Err(BindError::WeightTooSmall));
        assert_eq!(r.bind("q", "10001", t()), Err(BindError::WeightTooLarge));
        assert!(r.is_empty());
        assert!(r.bind("q", "10000", t()).unwrap());
        assert!(!r.bind("q", "10000", t()).unwrap());
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("order-{i}")).collect()
    }

    #[test]
    fn consistent_hash_routes_each_key_to_one_stable_destination() {
        let mut r = Router::new(ExchangeType::ConsistentHash);
        for q in ["q1", "q2", "q3"] {
            r.bind(q, "1", t()).unwrap();
        }
        let first: Vec<Vec<&str>> = keys(2000).iter().map(|k| route(&r, k)).collect();
        for (k, dests) in keys(2000).iter().zip(&first) {
            assert_eq!(dests.len(), 1, "exactly one destination");
            assert_eq!(&route(&r, k), dests, "same key, same destination");
        }
        // Binding changes elsewhere do not move keys between q1..q3: adding
        // q4 moves keys only to q4.
        r.bind("q4", "1", t()).unwrap();
        let mut moved = 0;
        for (k, before) in keys(2000).iter().zip(&first) {
            let now = route(&r, k);
            if &now != before {
                assert_eq!(now, vec!["q4"]);
                moved += 1;
            }
        }
        assert!((300..700).contains(&moved), "about a quarter move: {moved}");
        // Removing it restores the original assignment.
        assert_eq!(r.unbind_destination(&"q4"), 1);
        for (k, before) in keys(2000).iter().zip(&first) {
            assert_eq!(&route(&r, k), before);
        }
    }

    #[test]
    fn consistent_hash_spreads_in_proportion_to_weights() {
        let mut r = Router::new(ExchangeType::ConsistentHash);
        let weights = [("w1", 1), ("w2", 2), ("w3", 3), ("w4", 4)];
        for (q, w) in weights {
            r.bind(q, &w.to_string(), t()).unwrap();
        }
        let n = 100_000;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for k in keys(n) {
            out.clear();
            r.route(&RouteInput::key(&k), &mut out);
            *counts.entry(out[0]).or_default() += 1;
        }
        for (q, w) in weights {
            let expected = n as f64 * w as f64 / 10.0;
            let got = counts[q] as f64;
            assert!(
                (got - expected).abs() < expected * 0.05,
                "{q}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn consistent_hash_on_header_and_properties() {
        let mut r = Router::with_arguments(
            ExchangeType::ConsistentHash,
            &table(&[("hash-header", s("user"))]),
        )
        .unwrap();
        for q in ["q1", "q2", "q3", "q4"] {
            r.bind(q, "1", t()).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for k in keys(200) {
            let h = table(&[("user", s(&k))]);
            // The routing key is ignored: only the header counts.
            let a = route_input(
                &r,
                &RouteInput {
                    headers: Some(&h),
                    ..RouteInput::key("x")
                },
            );
            let b = route_input(
                &r,
                &RouteInput {
                    headers: Some(&h),
                    ..RouteInput::key("y")
                },
            );
            assert_eq!(a, b);
            assert_eq!(a.len(), 1);
            seen.insert(a[0]);
        }
        assert_eq!(seen.len(), 4, "headers spread over every queue");
        // A message without the header is hashed as `undefined`: all such
        // messages reach one queue (the plugin's README: "they will all get
        // routed to the same arbitrarily chosen queue").
        let other = table(&[("other", s("1"))]);
        let none = route_input(&r, &RouteInput::key("a"));
        assert_eq!(none.len(), 1);
        for k in keys(50) {
            assert_eq!(route_input(&r, &RouteInput::key(&k)), none);
            let input = RouteInput {
                headers: Some(&other),
                ..RouteInput::key(&k)
            };
            assert_eq!(route_input(&r, &input), none);
        }

        let mut r = Router::with_arguments(
            ExchangeType::ConsistentHash,
            &table(&[("hash-property", s("timestamp"))]),
        )
        .unwrap();
        for q in ["q1", "q2", "q3", "q4"] {
            r.bind(q, "1", t()).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for ts in 0..200u64 {
            let input = RouteInput {
                timestamp: Some(1_700_000_000 + ts),
                ..RouteInput::key("k")
            };
            let a = route_input(&r, &input);
            assert_eq!(a, route_input(&r, &input));
            seen.insert(a[0]);
        }
        assert_eq!(seen.len(), 4);

        let mut r = Router::with_arguments(
            ExchangeType::ConsistentHash,
            &table(&[("hash-property", s("correlation_id"))]),
        )
        .unwrap();
        r.bind("q1", "1", t()).unwrap();
        r.bind("q2", "1", t()).unwrap();
        // The property, not message_id, decides.
        for k in keys(50) {
            let a = RouteInput {
                correlation_id: Some(&k),
                message_id: Some("m1"),
                ..RouteInput::key("")
            };
            let b = RouteInput {
                correlation_id: Some(&k),
                message_id: Some("m2"),
                ..RouteInput::key("")
            };
            assert_eq!(route_input(&r, &a), route_input(&r, &b));
        }
    }

    #[test]
    fn consistent_hash_without_bindings_routes_nowhere() {
        let mut r = Router::new(ExchangeType::ConsistentHash);
        assert!(route(&r, "k").is_empty());
        r.bind("q", "3", t()).unwrap();
        assert_eq!(route(&r, "k"), vec!["q"]);
        assert!(r.unbind(&"q", "3", &t()));
        assert!(route(&r, "k").is_empty());
    }

    #[test]
    fn headers_binding_rejects_bad_x_match() {
        let mut r = Router::new(ExchangeType::Headers);
        let mut args = Table::default();
        args.insert("x-match", Value::LongString(b"some".to_vec()));
        assert!(matches!(
            r.bind("q", "", args),
            Err(BindError::InvalidXMatch(_))
        ));
    }

    #[test]
    fn headers_routes_with_all_and_any() {
        let mut r = Router::new(ExchangeType::Headers);
        let mut all = Table::default();
        all.insert("a", Value::LongString(b"1".to_vec()));
        all.insert("b", Value::LongString(b"2".to_vec()));
        let mut any = all.clone();
        any.insert("x-match", Value::LongString(b"any".to_vec()));
        r.bind("all", "", all).unwrap();
        r.bind("any", "", any).unwrap();
        let mut h = Table::default();
        h.insert("a", Value::LongString(b"1".to_vec()));
        let mut out = Vec::new();
        fn input(h: &Table) -> RouteInput<'_> {
            RouteInput {
                headers: Some(h),
                ..RouteInput::key("")
            }
        }
        r.route(&input(&h), &mut out);
        assert_eq!(out, vec!["any"]);
        h.insert("b", Value::LongString(b"2".to_vec()));
        out.clear();
        r.route(&input(&h), &mut out);
        out.sort();
        assert_eq!(out, vec!["all", "any"]);
    }

    /// The distinct destinations `explain` reports, sorted.
    fn explained(r: &Router<&'static str>, input: &RouteInput<'_>) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = r.explain(input).iter().map(|b| b.destination).collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn explain_reaches_what_route_reaches_for_every_type() {
        let mut direct = Router::new(ExchangeType::Direct);
        direct.bind("q1", "a", t()).unwrap();
        direct.bind("q2", "a", t()).unwrap();
        direct.bind("q2", "b", t()).unwrap();
        let mut fanout = Router::new(ExchangeType::Fanout);
        fanout.bind("q1", "x", t()).unwrap();
        fanout.bind("q2", "", t()).unwrap();
        let mut topic = Router::new(ExchangeType::Topic);
        for (d, k) in [
            ("q1", "a.*"),
            ("q1", "#"),
            ("q2", "a.b.#"),
            ("q3", "*.c"),
            ("q4", ""),
        ] {
            topic.bind(d, k, t()).unwrap();
        }
        let mut hdrs = Router::new(ExchangeType::Headers);
        hdrs.bind("all", "", table(&[("a", s("1")), ("b", s("2"))]))
            .unwrap();
        hdrs.bind(
            "any",
            "",
            table(&[("x-match", s("any")), ("a", s("1")), ("c", s("3"))]),
        )
        .unwrap();
        hdrs.bind("none", "", t()).unwrap();
        let mut hash = Router::new(ExchangeType::ConsistentHash);
        for d in ["q1", "q2", "q3"] {
            hash.bind(d, "2", t()).unwrap();
        }
        hash.bind("q1", "5", t()).unwrap();
        let header_sets = [
            t(),
            table(&[("a", s("1"))]),
            table(&[("a", s("1")), ("b", s("2"))]),
            table(&[("c", s("3"))]),
        ];
        let keys = ["", "a", "b", "a.b", "a.c", "x.c", "a.b.c", "a..b", "zzz"];
        for r in [&direct, &fanout, &topic, &hdrs, &hash] {
            for k in keys {
                for h in &header_sets {
                    let input = RouteInput {
                        headers: Some(h),
                        ..RouteInput::key(k)
                    };
                    assert_eq!(
                        explained(r, &input),
                        route_input(r, &input),
                        "{:?} {k} {h:?}",
                        r.kind()
                    );
                }
                let input = RouteInput::key(k);
                assert_eq!(explained(r, &input), route_input(r, &input));
            }
        }
        // The matching bindings themselves are reported.
        let keys_of = |r: &Router<&'static str>, k: &str| -> Vec<(&'static str, String)> {
            let mut v: Vec<_> = r
                .explain(&RouteInput::key(k))
                .iter()
                .map(|b| (b.destination, b.routing_key.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            keys_of(&topic, "a.b"),
            vec![
                ("q1", "#".into()),
                ("q1", "a.*".into()),
                ("q2", "a.b.#".into())
            ]
        );
        let picked = keys_of(&hash, "order-1");
        assert!(picked.iter().all(|(d, _)| *d == picked[0].0));
        assert_eq!(picked.len(), if picked[0].0 == "q1" { 2 } else { 1 });
    }
}
