//! Headers-exchange matching: `x-match` all/any/all-with-x/any-with-x, and
//! the index of an exchange's headers bindings.
//!
//! The rules are RabbitMQ's (`rabbit_exchange_type_headers`):
//! - `x-match` must be a string: `all` (also when absent), `any`,
//!   `all-with-x` or `any-with-x`; anything else refuses the binding.
//! - `x-match` itself never takes part in matching; other arguments whose
//!   names start with `x-` take part only in the `-with-x` modes.
//! - An argument with a void value matches on the header's presence; any
//!   other value must equal the header's as [`Value::rabbit_eq`] decides
//!   (decoded values, exact: every integer type is one integer, but `"1"`
//!   is not 1 and 1 is not 1.0).
//! - `all` with no considered arguments matches every message; `any` with
//!   none matches no message.
//!
//! Matching many bindings stays a scan over them, but the header names are
//! interned: each route looks every message header up once, and each
//! binding then checks its arguments by slot, not by searching the table.

use crate::hash::FastMap;
use crate::value::{Table, Value};
use crate::BindError;

/// How a headers binding combines its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    /// Reads `x-match` from binding arguments, as RabbitMQ's
    /// `validate_binding/2` does.
    pub fn from_arguments(arguments: &Table) -> Result<Self, BindError> {
        let Some(v) = arguments.get("x-match") else {
            // The spec is vague on omitting it; RabbitMQ defaults to all.
            return Ok(XMatch::All);
        };
        let text: &[u8] = match v {
            Value::LongString(b) => b,
            // Not on RabbitMQ's wire (`s` is a short int there); a Warren
            // caller building a shortstr means the string.
            Value::ShortString(s) => s.as_bytes(),
            other => {
                return Err(BindError::InvalidXMatchType {
                    type_name: other.type_name(),
                    value: other.erlang_term(),
                })
            }
        };
        match text {
            b"all" => Ok(XMatch::All),
            b"any" => Ok(XMatch::Any),
            b"all-with-x" => Ok(XMatch::AllWithX),
            b"any-with-x" => Ok(XMatch::AnyWithX),
            other => Err(BindError::InvalidXMatch(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }

    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }

    fn all(self) -> bool {
        matches!(self, XMatch::All | XMatch::AllWithX)
    }

    /// Whether the argument named `name` takes part in matching.
    fn considers(self, name: &str) -> bool {
        name != "x-match" && (self.with_x() || !name.starts_with("x-"))
    }
}

/// Whether a binding argument value is satisfied by a header value.
#[inline]
fn satisfied(pattern: &Value, header: Option<&Value>) -> bool {
    match header {
        None => false,
        Some(_) if matches!(pattern, Value::Void) => true,
        Some(h) => h.rabbit_eq(pattern),
    }
}

/// A compiled headers binding.
#[derive(Clone, Debug)]
pub struct HeadersMatcher {
    mode: XMatch,
    arguments: Table,
    /// Indexes into `arguments` of the entries that take part in matching.
    considered: Box<[u32]>,
}

impl HeadersMatcher {
    pub fn new(arguments: &Table) -> Result<Self, BindError> {
        let mode = XMatch::from_arguments(arguments)?;
        let considered = arguments
            .0
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| mode.considers(k))
            .map(|(i, _)| i as u32)
            .collect();
        Ok(HeadersMatcher {
            mode,
            arguments: arguments.clone(),
            considered,
        })
    }

    pub fn mode(&self) -> XMatch {
        self.mode
    }

    pub fn arguments(&self) -> &Table {
        &self.arguments
    }

    fn considered(&self) -> impl Iterator<Item = &(String, Value)> {
        self.considered
            .iter()
            .map(|&i| &self.arguments.0[i as usize])
    }

    /// Whether a message with `headers` matches this binding.
    pub fn matches(&self, headers: &Table) -> bool {
        let mut hits = self.considered().map(|(k, v)| satisfied(v, headers.get(k)));
        if self.mode.all() {
            hits.all(|h| h)
        } else {
            hits.any(|h| h)
        }
    }
}

/// A binding in the index: its matcher, its considered arguments' name
/// slots (parallel to `HeadersMatcher::considered`), and its destination.
#[derive(Debug)]
struct Entry<D> {
    matcher: HeadersMatcher,
    slots: Box<[u32]>,
    dest: D,
}

/// Stack room for the header slots of one route; more names spill to the heap.
const INLINE_SLOTS: usize = 32;

/// The headers bindings of one exchange.
#[derive(Debug)]
pub struct HeadersIndex<D> {
    entries: Vec<Entry<D>>,
    /// Argument name -> (slot, number of considered arguments using it).
    names: FastMap<Box<str>, (u32, u32)>,
    free_slots: Vec<u32>,
    slot_count: u32,
}

impl<D> Default for HeadersIndex<D> {
    fn default() -> Self {
        HeadersIndex {
            entries: Vec::new(),
            names: FastMap::default(),
            free_slots: Vec::new(),
            slot_count: 0,
        }
    }
}

impl<D: Clone + Eq> HeadersIndex<D> {
    pub fn insert(&mut self, matcher: HeadersMatcher, dest: D) {
        let slots = matcher
            .considered()
            .map(|(k, _)| {
                if let Some((slot, uses)) = self.names.get_mut(k.as_str()) {
                    *uses += 1;
                    return *slot;
                }
                let slot = self.free_slots.pop().unwrap_or_else(|| {
                    self.slot_count += 1;
                    self.slot_count - 1
                });
                self.names.insert(k.as_str().into(), (slot, 1));
                slot
            })
            .collect();
        self.entries.push(Entry {
            matcher,
            slots,
            dest,
        });
    }

    /// Removes one binding of `dest` with `arguments`; returns whether there was one.
    pub fn remove(&mut self, dest: &D, arguments: &Table) -> bool {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.dest == *dest && e.matcher.arguments == *arguments)
        else {
            return false;
        };
        // Order does not matter: the router dedups and sorts nothing.
        let e = self.entries.swap_remove(i);
        for (k, _) in e.matcher.considered() {
            if let Some((slot, uses)) = self.names.get_mut(k.as_str()) {
                *uses -= 1;
                if *uses == 0 {
                    self.free_slots.push(*slot);
                    self.names.remove(k.as_str());
                }
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the destination of every matching binding (possibly
    /// repeated: the router dedups).
    pub fn route(&self, headers: Option<&Table>, out: &mut Vec<D>) {
        let n = self.slot_count as usize;
        let mut inline: [Option<&Value>; INLINE_SLOTS] = [None; INLINE_SLOTS];
        let mut spilled: Vec<Option<&Value>>;
        let slots: &mut [Option<&Value>] = if n <= INLINE_SLOTS {
            &mut inline[..n]
        } else {
            spilled = vec![None; n];
            &mut spilled
        };
        if let Some(h) = headers {
            for (k, v) in h.iter() {
                if let Some(&(slot, _)) = self.names.get(k) {
                    // With a repeated header name the first one counts, as
                    // `Table::get` would find it.
                    slots[slot as usize].get_or_insert(v);
                }
            }
        }
        let slots = &*slots;
        for e in &self.entries {
            let mut hits = e
                .slots
                .iter()
                .zip(e.matcher.considered())
                .map(|(&s, (_, v))| satisfied(v, slots[s as usize]));
            let hit = if e.matcher.mode.all() {
                hits.all(|h| h)
            } else {
                hits.any(|h| h)
            };
            if hit {
                out.push(e.dest.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn m(entries: &[(&str, Value)]) -> HeadersMatcher {
        HeadersMatcher::new(&table(entries)).unwrap()
    }

    #[test]
    fn x_match_values() {
        for (text, mode) in [
            ("all", XMatch::All),
            ("any", XMatch::Any),
            ("all-with-x", XMatch::AllWithX),
            ("any-with-x", XMatch::AnyWithX),
        ] {
            assert_eq!(m(&[("x-match", s(text))]).mode(), mode);
        }
        // Absent: all (RabbitMQ's validate_binding accepts `undefined`).
        assert_eq!(m(&[]).mode(), XMatch::All);
    }

    #[test]
    fn bad_x_match_texts_are_rabbitmqs() {
        // validate_binding: {longstr, Other} -> "Invalid x-match field value ~tp; ..."
        let e = HeadersMatcher::new(&table(&[("x-match", s("foo"))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
        );
        // Matching is case-sensitive: "ALL" is refused too.
        assert!(HeadersMatcher::new(&table(&[("x-match", s("ALL"))])).is_err());
        // {Type, Other} -> "Invalid x-match field type ~tp (value ~tp); expected longstr"
        let e = HeadersMatcher::new(&table(&[("x-match", Value::LongInt(23))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field type signedint (value 23); expected longstr"
        );
        let e = HeadersMatcher::new(&table(&[("x-match", Value::Bool(true))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field type bool (value true); expected longstr"
        );
    }

    #[test]
    fn all_and_any() {
        let h = table(&[("a", s("1")), ("b", s("2"))]);
        assert!(m(&[("a", s("1")), ("b", s("2"))]).matches(&h));
        assert!(!m(&[("a", s("1")), ("c", s("3"))]).matches(&h));
        assert!(m(&[("x-match", s("any")), ("a", s("1")), ("c", s("3"))]).matches(&h));
        assert!(!m(&[("x-match", s("any")), ("a", s("9")), ("c", s("3"))]).matches(&h));
    }

    #[test]
    fn empty_argument_sets() {
        // match_all([], ...) -> true: an `all` binding without arguments
        // takes every message, even one without headers.
        assert!(m(&[]).matches(&Table::default()));
        assert!(m(&[("x-match", s("all"))]).matches(&Table::default()));
        // match_any([], ...) -> false.
        assert!(!m(&[("x-match", s("any"))]).matches(&table(&[("a", s("1"))])));
        // x- arguments are skipped in plain all, so only-x is an empty set.
        assert!(m(&[("x-foo", s("1"))]).matches(&Table::default()));
        assert!(
            !m(&[("x-match", s("any")), ("x-foo", s("1"))]).matches(&table(&[("x-foo", s("1"))]))
        );
    }

    #[test]
    fn void_argument_matches_presence() {
        // headers_match({PK, void, _}, ...): a void pattern checks presence.
        let b = m(&[("a", Value::Void)]);
        assert!(b.matches(&table(&[("a", s("anything"))])));
        assert!(b.matches(&table(&[("a", Value::Void)])));
        assert!(!b.matches(&table(&[("b", s("1"))])));
    }

    #[test]
    fn x_arguments_only_with_x() {
        let h = table(&[("x-a", s("1"))]);
        // In all/any, `x-` arguments are skipped: all over nothing is true,
        // any over nothing is false.
        assert!(m(&[("x-a", s("2"))]).matches(&h));
        assert!(!m(&[("x-match", s("any")), ("x-a", s("1"))]).matches(&h));
        // In the -with-x modes they count; x-match itself still does not.
        assert!(m(&[("x-match", s("all-with-x")), ("x-a", s("1"))]).matches(&h));
        assert!(!m(&[("x-match", s("all-with-x")), ("x-a", s("2"))]).matches(&h));
        assert!(m(&[("x-match", s("any-with-x")), ("x-a", s("1")), ("b", s("1"))]).matches(&h));
        // A message header named x-match is just a header.
        let hm = table(&[("x-match", s("all-with-x"))]);
        assert!(m(&[("x-match", s("all-with-x"))]).matches(&hm));
    }

    #[test]
    fn value_comparison_follows_rabbitmq() {
        let one = |v: Value| m(&[("k", v)]);
        let h = |v: Value| table(&[("k", v)]);
        // Integers of every width decode to one Erlang integer.
        assert!(one(Value::LongInt(1)).matches(&h(Value::ShortShortUInt(1))));
        assert!(one(Value::LongLongInt(1)).matches(&h(Value::ShortInt(1))));
        assert!(one(Value::Timestamp(7)).matches(&h(Value::LongLongInt(7))));
        // A string is not a number.
        assert!(!one(s("1")).matches(&h(Value::LongInt(1))));
        // =:= is exact: 1 is not 1.0 (the pre-3.13 `==` said it was).
        assert!(!one(Value::LongInt(1)).matches(&h(Value::Double(1.0))));
        // Floats compare as values: f32 1.5 widens exactly to f64 1.5.
        assert!(one(Value::Float(1.5)).matches(&h(Value::Double(1.5))));
        assert!(!one(Value::Float(0.1)).matches(&h(Value::Double(0.1))));
        // longstr and byte array are both Erlang binaries.
        assert!(one(s("ab")).matches(&h(Value::ByteArray(b"ab".to_vec()))));
        assert!(one(Value::ShortString("ab".into())).matches(&h(s("ab"))));
        assert!(!one(Value::Bool(true)).matches(&h(Value::LongInt(1))));
        // Inside arrays the {Type, Value} tags must agree.
        assert!(one(Value::Array(vec![Value::LongInt(1)]))
            .matches(&h(Value::Array(vec![Value::LongInt(1)]))));
        assert!(!one(Value::Array(vec![Value::LongInt(1)]))
            .matches(&h(Value::Array(vec![Value::LongLongInt(1)]))));
        assert!(!one(Value::Array(vec![s("a")]))
            .matches(&h(Value::Array(vec![Value::ByteArray(b"a".to_vec())]))));
        // Nested tables compare in order, with types.
        let t1 = Value::Table(table(&[("a", Value::LongInt(1)), ("b", s("x"))]));
        let t2 = Value::Table(table(&[("b", s("x")), ("a", Value::LongInt(1))]));
        assert!(one(t1.clone()).matches(&h(t1.clone())));
        assert!(!one(t1).matches(&h(t2)));
        assert!(one(Value::Decimal {
            scale: 2,
            value: 100
        })
        .matches(&h(Value::Decimal {
            scale: 2,
            value: 100
        })));
        assert!(!one(Value::Decimal {
            scale: 1,
            value: 10
        })
        .matches(&h(Value::Decimal {
            scale: 2,
            value: 100
        })));
    }

    #[test]
    fn index_matches_like_matcher_and_frees_slots() {
        let mut idx = HeadersIndex::default();
        idx.insert(m(&[("a", s("1"))]), "qa");
        idx.insert(
            m(&[("x-match", s("any")), ("a", s("2")), ("b", s("2"))]),
            "qab",
        );
        let route = |idx: &HeadersIndex<&'static str>, h: &Table| {
            let mut out = Vec::new();
            idx.route(Some(h), &mut out);
            out.sort();
            out
        };
        assert_eq!(route(&idx, &table(&[("a", s("1"))])), vec!["qa"]);
        assert_eq!(route(&idx, &table(&[("b", s("2"))])), vec!["qab"]);
        let mut none = Vec::new();
        idx.route(None, &mut none);
        assert!(none.is_empty());
        assert_eq!(idx.names.len(), 2);
        assert!(idx.remove(
            &"qab",
            &table(&[("x-match", s("any")), ("a", s("2")), ("b", s("2"))])
        ));
        assert_eq!(idx.names.len(), 1, "b is no longer used");
        assert!(!idx.remove(&"qab", &Table::default()));
        // The freed slot is reused.
        idx.insert(m(&[("c", s("3"))]), "qc");
        assert_eq!(idx.slot_count, 2);
        assert_eq!(
            route(&idx, &table(&[("c", s("3")), ("a", s("1"))])),
            vec!["qa", "qc"]
        );
    }

    #[test]
    fn many_names_spill_past_inline_slots() {
        let mut idx = HeadersIndex::default();
        for i in 0..100 {
            idx.insert(m(&[(&format!("k{i}"), Value::LongInt(i))]), i);
        }
        let mut out = Vec::new();
        idx.route(Some(&table(&[("k77", Value::LongInt(77))])), &mut out);
        assert_eq!(out, vec![77]);
    }
}
