//! Pure, synchronous AMQP routing: which destinations a message reaches.
//!
//! This crate owns the exchange types (direct, fanout, topic, headers), the
//! bindings of one exchange and the field-table value model used to match
//! headers. It does no I/O, takes no locks and knows nothing of queues: a
//! destination is any `D` the caller chooses (the broker uses queue and
//! exchange handles). Callers wrap a [`Router`] in whatever synchronisation
//! they need.

pub mod headers;
pub mod topic;
pub mod value;

use std::collections::HashMap;
use std::hash::Hash;

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
}

impl ExchangeType {
    /// Parses the `type` field of exchange.declare; `None` for unknown types.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
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

/// Why a binding was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// A headers binding with an `x-match` other than all/any/all-with-x/any-with-x.
    InvalidXMatch(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::InvalidXMatch(v) => write!(
                f,
                "Invalid x-match field value {v}; expected all, any, all-with-x, or any-with-x"
            ),
        }
    }
}

/// The bindings of one exchange, indexed for its type.
///
/// Bindings are identified, as in RabbitMQ, by (destination, routing key,
/// arguments): binding the same triple twice is a no-op.
#[derive(Debug)]
pub struct Router<D> {
    kind: ExchangeType,
    bindings: Vec<Binding<D>>,
    /// Direct: routing key -> destinations (each with a count of bindings
    /// that lead to it under this key, so unbinding one of two keeps it).
    direct: HashMap<String, Vec<(D, usize)>>,
    topic: topic::TopicIndex<D>,
    headers: Vec<(headers::HeadersMatcher, D)>,
}

impl<D: Clone + Eq + Hash> Router<D> {
    pub fn new(kind: ExchangeType) -> Self {
        Router {
            kind,
            bindings: Vec::new(),
            direct: HashMap::new(),
            topic: topic::TopicIndex::default(),
            headers: Vec::new(),
        }
    }

    pub fn kind(&self) -> ExchangeType {
        self.kind
    }

    /// Adds a binding; returns `Ok(false)` when it already existed.
    pub fn bind(
        &mut self,
        destination: D,
        routing_key: &str,
        arguments: Table,
    ) -> Result<bool, BindError> {
        let matcher = if self.kind == ExchangeType::Headers {
            Some(headers::HeadersMatcher::new(&arguments)?)
        } else {
            None
        };
        if self.find(&destination, routing_key, &arguments).is_some() {
            return Ok(false);
        }
        match self.kind {
            ExchangeType::Direct | ExchangeType::Fanout => {
                let key = if self.kind == ExchangeType::Fanout {
                    ""
                } else {
                    routing_key
                };
                let dests = self.direct.entry(key.to_owned()).or_default();
                match dests.iter_mut().find(|(d, _)| *d == destination) {
                    Some((_, n)) => *n += 1,
                    None => dests.push((destination.clone(), 1)),
                }
            }
            ExchangeType::Topic => self.topic.insert(routing_key, destination.clone()),
            ExchangeType::Headers => {
                self.headers
                    .push((matcher.expect("built above"), destination.clone()));
            }
        }
        self.bindings.push(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
        });
        Ok(true)
    }

    fn find(&self, destination: &D, routing_key: &str, arguments: &Table) -> Option<usize> {
        self.bindings.iter().position(|b| {
            b.destination == *destination
                && b.routing_key == routing_key
                && b.arguments == *arguments
        })
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, destination: &D, routing_key: &str, arguments: &Table) -> bool {
        let Some(pos) = self.find(destination, routing_key, arguments) else {
            return false;
        };
        let b = self.bindings.swap_remove(pos);
        self.remove_index(&b);
        true
    }

    fn remove_index(&mut self, b: &Binding<D>) {
        match self.kind {
            ExchangeType::Direct | ExchangeType::Fanout => {
                let key = if self.kind == ExchangeType::Fanout {
                    ""
                } else {
                    b.routing_key.as_str()
                };
                if let Some(dests) = self.direct.get_mut(key) {
                    if let Some(i) = dests.iter().position(|(d, _)| *d == b.destination) {
                        dests[i].1 -= 1;
                        if dests[i].1 == 0 {
                            dests.swap_remove(i);
                        }
                    }
                    if dests.is_empty() {
                        self.direct.remove(key);
                    }
                }
            }
            ExchangeType::Topic => self.topic.remove(&b.routing_key, &b.destination),
            ExchangeType::Headers => {
                let args = &b.arguments;
                if let Some(i) = self
                    .headers
                    .iter()
                    .position(|(m, d)| *d == b.destination && m.arguments() == args)
                {
                    self.headers.remove(i);
                }
            }
        }
    }

    /// Removes every binding to `destination` (it was deleted); returns how many.
    pub fn unbind_destination(&mut self, destination: &D) -> usize {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.bindings)
            .into_iter()
            .partition(|b| b.destination == *destination);
        self.bindings = kept;
        for b in &gone {
            self.remove_index(b);
        }
        gone.len()
    }

    /// Whether any binding leads to `destination`.
    pub fn has_destination(&self, destination: &D) -> bool {
        self.bindings.iter().any(|b| b.destination == *destination)
    }

    pub fn bindings(&self) -> &[Binding<D>] {
        &self.bindings
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Whether routing reads the message's headers.
    pub fn needs_headers(&self) -> bool {
        self.kind == ExchangeType::Headers
    }

    /// Whether routing reads message properties other than headers.
    pub fn needs_properties(&self) -> bool {
        false
    }

    /// Appends to `out` every destination the message reaches, each once.
    pub fn route(&self, input: &RouteInput<'_>, out: &mut Vec<D>) {
        let routing_key = input.routing_key;
        let headers = input.headers;
        let start = out.len();
        match self.kind {
            ExchangeType::Direct => {
                if let Some(dests) = self.direct.get(routing_key) {
                    out.extend(dests.iter().map(|(d, _)| d.clone()));
                }
                // Each destination appears once per key already.
                return;
            }
            ExchangeType::Fanout => {
                if let Some(dests) = self.direct.get("") {
                    out.extend(dests.iter().map(|(d, _)| d.clone()));
                }
                return;
            }
            ExchangeType::Topic => self.topic.route(routing_key, out),
            ExchangeType::Headers => {
                let empty = Table::default();
                let h = headers.unwrap_or(&empty);
                for (m, d) in &self.headers {
                    if m.matches(h) {
                        out.push(d.clone());
                    }
                }
            }
        }
        dedup_tail(out, start);
    }
}

/// Removes duplicates from `out[start..]`, keeping first occurrences in order.
fn dedup_tail<D: Eq + Hash + Clone>(out: &mut Vec<D>, start: usize) {
    let n = out.len() - start;
    if n < 2 {
        return;
    }
    if n <= 16 {
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
}
