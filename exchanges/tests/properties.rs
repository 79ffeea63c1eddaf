//! Property tests of the public router against small reference models.
//!
//! No test dependencies: a xorshift PRNG with fixed seeds generates the
//! cases, so a failure reproduces exactly. Alphabets are kept tiny so that
//! random patterns, keys and tables actually match one another.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use warren_exchanges::{ExchangeType, RouteInput, Router, Table, Value};

/// xorshift64* (Vigna): enough randomness for case generation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn route_set<D: Clone + Eq + std::hash::Hash + Ord>(
    r: &Router<D>,
    input: &RouteInput<'_>,
) -> BTreeSet<D> {
    let mut out = Vec::new();
    r.route(input, &mut out);
    let set: BTreeSet<D> = out.iter().cloned().collect();
    assert_eq!(set.len(), out.len(), "each destination appears once");
    set
}

// ---------------------------------------------------------------- topic

/// The reference topic matcher: the definition, word by word.
/// `#` takes zero or more words, `*` exactly one, anything else itself.
fn topic_ref(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|i| topic_ref(rest, &key[i..])),
        Some((&p, rest)) => {
            !key.is_empty() && (p == "*" || p == key[0]) && topic_ref(rest, &key[1..])
        }
    }
}

/// RabbitMQ's split: "" is no words, otherwise split on every dot.
fn split(key: &str) -> Vec<&str> {
    if key.is_empty() {
        vec![]
    } else {
        key.split('.').collect()
    }
}

fn random_key(rng: &mut Rng, alphabet: &[&str], max_words: usize) -> String {
    let n = rng.below(max_words + 1);
    let words: Vec<&str> = (0..n).map(|_| *rng.pick(alphabet)).collect();
    words.join(".")
}

#[test]
fn topic_trie_equals_reference_matcher() {
    const KEY_WORDS: &[&str] = &["a", "b", "c", ""];
    const PATTERN_WORDS: &[&str] = &["a", "b", "c", "", "*", "#", "#", "*"];
    for seed in 1..=12u64 {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut router: Router<u32> = Router::new(ExchangeType::Topic);
        // The live bindings: (destination, pattern).
        let mut model: BTreeSet<(u32, String)> = BTreeSet::new();
        let (mut routes, mut hits) = (0, 0);
        for round in 0..6 {
            for _ in 0..60 {
                let d = rng.below(12) as u32;
                let p = random_key(&mut rng, PATTERN_WORDS, 5);
                let added = router.bind(d, &p, Table::default()).unwrap();
                assert_eq!(added, model.insert((d, p)));
            }
            // Churn: unbind some bindings, and now and then a destination.
            let live: Vec<(u32, String)> = model.iter().cloned().collect();
            for (d, p) in live {
                if rng.chance(15) {
                    assert!(router.unbind(&d, &p, &Table::default()));
                    model.remove(&(d, p));
                }
            }
            if round % 2 == 1 {
                let d = rng.below(12) as u32;
                let n = model.iter().filter(|(x, _)| *x == d).count();
                assert_eq!(router.unbind_destination(&d), n);
                model.retain(|(x, _)| *x != d);
            }
            assert_eq!(router.bindings().len(), model.len());
            for _ in 0..400 {
                let key = random_key(&mut rng, KEY_WORDS, 6);
                let kw = split(&key);
                let expected: BTreeSet<u32> = model
                    .iter()
                    .filter(|(_, p)| topic_ref(&split(p), &kw))
                    .map(|(d, _)| *d)
                    .collect();
                routes += 1;
                hits += usize::from(!expected.is_empty());
                assert_eq!(
                    route_set(&router, &RouteInput::key(&key)),
                    expected,
                    "seed {seed} round {round} key {key:?}"
                );
            }
        }
        // The alphabets are small enough that most keys match something.
        assert!(hits * 2 > routes, "only {hits} of {routes} keys matched");
        // Unbinding everything leaves an empty router (the trie pruned is
        // covered by the crate's unit tests).
        for (d, p) in std::mem::take(&mut model) {
            assert!(router.unbind(&d, &p, &Table::default()));
        }
        assert!(router.is_empty());
        assert!(route_set(&router, &RouteInput::key("a.b")).is_empty());
    }
}

#[test]
fn topic_long_keys_with_many_hashes() {
    // Longer keys and `#`-heavy patterns, where the trie's memo of visited
    // states matters; fewer cases as the reference is exponential here.
    let mut rng = Rng::new(77);
    let mut router: Router<u32> = Router::new(ExchangeType::Topic);
    let mut model = Vec::new();
    for d in 0..40u32 {
        let p = random_key(&mut rng, &["a", "b", "#", "#", "*"], 7);
        router.bind(d, &p, Table::default()).unwrap();
        model.push((d, p));
    }
    for _ in 0..300 {
        let key = random_key(&mut rng, &["a", "b"], 12);
        let kw = split(&key);
        let expected: BTreeSet<u32> = model
            .iter()
            .filter(|(_, p)| topic_ref(&split(p), &kw))
            .map(|(d, _)| *d)
            .collect();
        assert_eq!(
            route_set(&router, &RouteInput::key(&key)),
            expected,
            "{key}"
        );
    }
}

// -------------------------------------------------------------- headers

/// A decoded Erlang term, as `rabbit_binary_parser` produces it. Derived
/// equality is Erlang's exact `=:=`: an integer never equals a float.
#[derive(Clone, Debug, PartialEq)]
enum Term {
    Int(i128),
    Float(f64),
    Bin(Vec<u8>),
    Atom(&'static str),
    Tuple(Vec<Term>),
    List(Vec<Term>),
}

/// The field type atom of a value (`rabbit_binary_parser`'s names).
fn tag(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::ShortShortInt(_) => "byte",
        Value::ShortShortUInt(_) => "unsignedbyte",
        Value::ShortInt(_) => "short",
        Value::ShortUInt(_) => "unsignedshort",
        Value::LongInt(_) => "signedint",
        Value::LongUInt(_) => "unsignedint",
        Value::LongLongInt(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::Decimal { .. } => "decimal",
        // RabbitMQ has no shortstr field; Warren treats it as a string.
        Value::ShortString(_) | Value::LongString(_) => "longstr",
        Value::Array(_) => "array",
        Value::Timestamp(_) => "timestamp",
        Value::Table(_) => "table",
        Value::ByteArray(_) => "binary",
        Value::Void => "void",
    }
}

fn decode(v: &Value) -> Term {
    match v {
        Value::Bool(b) => Term::Atom(if *b { "true" } else { "false" }),
        Value::ShortShortInt(i) => Term::Int(*i as i128),
        Value::ShortShortUInt(i) => Term::Int(*i as i128),
        Value::ShortInt(i) => Term::Int(*i as i128),
        Value::ShortUInt(i) => Term::Int(*i as i128),
        Value::LongInt(i) => Term::Int(*i as i128),
        Value::LongUInt(i) => Term::Int(*i as i128),
        Value::LongLongInt(i) => Term::Int(*i as i128),
        Value::Timestamp(i) => Term::Int(*i as i128),
        Value::Float(f) => Term::Float(*f as f64),
        Value::Double(f) => Term::Float(*f),
        Value::Decimal { scale, value } => {
            Term::Tuple(vec![Term::Int(*scale as i128), Term::Int(*value as i128)])
        }
        Value::ShortString(s) => Term::Bin(s.as_bytes().to_vec()),
        Value::LongString(b) | Value::ByteArray(b) => Term::Bin(b.clone()),
        Value::Array(items) => Term::List(
            items
                .iter()
                .map(|i| Term::Tuple(vec![Term::Atom(tag(i)), decode(i)]))
                .collect(),
        ),
        Value::Table(t) => Term::List(
            t.0.iter()
                .map(|(k, v)| {
                    Term::Tuple(vec![
                        Term::Bin(k.as_bytes().to_vec()),
                        Term::Atom(tag(v)),
                        decode(v),
                    ])
                })
                .collect(),
        ),
        Value::Void => Term::Atom("undefined"),
    }
}

/// RabbitMQ's headers route/3 (3.13+): the binding's x-match picks
/// match_all or match_any over its arguments, with match/2 or match_x/2;
/// the message headers are a map name => decoded value. (RabbitMQ also
/// multiplies top-level timestamp headers by 1000 there, so a timestamp
/// binding never matches the same timestamp; Warren does not copy that.)
fn headers_ref(args: &Table, headers: &BTreeMap<String, Term>) -> bool {
    let x_match = match args.get("x-match") {
        Some(Value::LongString(b)) => b.as_slice(),
        _ => b"all",
    };
    let with_x = x_match.ends_with(b"-with-x");
    // Some(true|false), or None for skip.
    let test = |k: &str, v: &Value| -> Option<bool> {
        if k == "x-match" || (!with_x && k.starts_with("x-")) {
            return None;
        }
        if let Value::Void = v {
            return Some(headers.contains_key(k));
        }
        let got = headers.get(k).cloned().unwrap_or(Term::Atom("undefined"));
        Some(got == decode(v))
    };
    if x_match.starts_with(b"any") {
        args.iter().any(|(k, v)| test(k, v) == Some(true))
    } else {
        args.iter().all(|(k, v)| test(k, v) != Some(false))
    }
}

fn value_pool() -> Vec<Value> {
    vec![
        Value::LongInt(1),
        Value::LongLongInt(1),
        Value::ShortShortUInt(1),
        Value::ShortInt(2),
        Value::Timestamp(1),
        Value::Double(1.0),
        Value::Float(1.0),
        Value::Double(0.5),
        Value::LongString(b"1".to_vec()),
        Value::LongString(b"a".to_vec()),
        Value::ShortString("a".into()),
        Value::ByteArray(b"a".to_vec()),
        Value::Bool(true),
        Value::Bool(false),
        Value::Void,
        Value::Decimal {
            scale: 1,
            value: 10,
        },
        Value::Array(vec![Value::LongInt(1)]),
        Value::Array(vec![Value::LongLongInt(1)]),
        Value::Table(Table(vec![("a".into(), Value::LongInt(1))])),
    ]
}

const HEADER_NAMES: &[&str] = &["a", "b", "c", "x-d", "x-match"];

fn random_table(rng: &mut Rng, pool: &[Value], max: usize) -> Table {
    let mut t = Table::default();
    for _ in 0..rng.below(max + 1) {
        // Insert replaces: names stay unique, as the wire codec keeps them.
        let name = *rng.pick(HEADER_NAMES);
        t.insert(name, rng.pick(pool).clone());
    }
    t
}

#[test]
fn headers_router_equals_reference() {
    let pool = value_pool();
    let modes: &[Option<&str>] = &[
        None,
        Some("all"),
        Some("any"),
        Some("all-with-x"),
        Some("any-with-x"),
        Some("bogus"),
    ];
    for seed in 1..=8u64 {
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491));
        let mut router: Router<u32> = Router::new(ExchangeType::Headers);
        let mut model: Vec<(u32, Table)> = Vec::new();
        for i in 0..150u32 {
            let mut args = random_table(&mut rng, &pool, 3);
            args.remove("x-match");
            let mode = *rng.pick(modes);
            if let Some(m) = mode {
                args.insert("x-match", Value::LongString(m.as_bytes().to_vec()));
            }
            // Several bindings share a destination, exercising dedup.
            let d = i % 40;
            match router.bind(d, "", args.clone()) {
                Ok(true) => model.push((d, args)),
                Ok(false) => assert!(model.contains(&(d, args))),
                Err(e) => {
                    assert_eq!(mode, Some("bogus"));
                    assert!(e
                        .to_string()
                        .starts_with("Invalid x-match field value <<\"bogus\">>"));
                }
            }
        }
        // Some churn.
        for j in (0..model.len()).rev() {
            if rng.chance(20) {
                let (d, args) = model.remove(j);
                assert!(router.unbind(&d, "", &args));
            }
        }
        let (mut routes, mut hits) = (0, 0);
        for _ in 0..800 {
            let h = random_table(&mut rng, &pool, 4);
            let map: BTreeMap<String, Term> =
                h.iter().map(|(k, v)| (k.to_owned(), decode(v))).collect();
            let expected: BTreeSet<u32> = model
                .iter()
                .filter(|(_, args)| headers_ref(args, &map))
                .map(|(d, _)| *d)
                .collect();
            let input = RouteInput {
                headers: Some(&h),
                ..RouteInput::key("")
            };
            routes += 1;
            hits += usize::from(expected.len() > 1);
            assert_eq!(
                route_set(&router, &input),
                expected,
                "seed {seed} headers {h:?}"
            );
        }
        assert!(
            hits * 4 > routes,
            "only {hits} of {routes} tables matched several"
        );
    }
}

// ------------------------------------------------ bookkeeping, all types

#[test]
fn direct_and_fanout_follow_a_model_through_churn() {
    for kind in [ExchangeType::Direct, ExchangeType::Fanout] {
        let mut rng = Rng::new(4242);
        let mut router: Router<u32> = Router::new(kind);
        let mut model: HashSet<(u32, String, i32)> = HashSet::new();
        for step in 0..3000 {
            let d = rng.below(10) as u32;
            let key = ["a", "b", "c", ""][rng.below(4)].to_owned();
            // Distinct arguments make distinct bindings.
            let arg = rng.below(2) as i32;
            let args = Table(vec![("n".into(), Value::LongInt(arg))]);
            match rng.below(10) {
                0..=5 => {
                    let added = router.bind(d, &key, args).unwrap();
                    assert_eq!(added, model.insert((d, key, arg)));
                }
                6..=8 => {
                    let removed = router.unbind(&d, &key, &args);
                    assert_eq!(removed, model.remove(&(d, key, arg)));
                }
                _ => {
                    let n = model.iter().filter(|(x, _, _)| *x == d).count();
                    assert_eq!(router.unbind_destination(&d), n);
                    model.retain(|(x, _, _)| *x != d);
                }
            }
            if step % 50 == 0 {
                assert_eq!(router.bindings().len(), model.len());
                for d in 0..10u32 {
                    assert_eq!(
                        router.has_destination(&d),
                        model.iter().any(|(x, _, _)| *x == d)
                    );
                }
                for key in ["a", "b", "c", "", "zz"] {
                    let expected: BTreeSet<u32> = model
                        .iter()
                        .filter(|(_, k, _)| kind == ExchangeType::Fanout || k == key)
                        .map(|(d, _, _)| *d)
                        .collect();
                    assert_eq!(route_set(&router, &RouteInput::key(key)), expected);
                }
            }
        }
    }
}

#[test]
fn consistent_hash_picks_one_bound_destination_through_churn() {
    let mut rng = Rng::new(99);
    let mut router: Router<u32> = Router::new(ExchangeType::ConsistentHash);
    let mut model: BTreeSet<(u32, u32)> = BTreeSet::new();
    for _ in 0..500 {
        let d = rng.below(8) as u32;
        let w = 1 + rng.below(5) as u32;
        if rng.chance(60) {
            let added = router.bind(d, &w.to_string(), Table::default()).unwrap();
            assert_eq!(added, model.insert((d, w)));
        } else {
            let removed = router.unbind(&d, &w.to_string(), &Table::default());
            assert_eq!(removed, model.remove(&(d, w)));
        }
        let bound: BTreeSet<u32> = model.iter().map(|(d, _)| *d).collect();
        for k in 0..20 {
            let key = format!("k{k}");
            let got = route_set(&router, &RouteInput::key(&key));
            if bound.is_empty() {
                assert!(got.is_empty());
            } else {
                assert_eq!(got.len(), 1);
                assert!(bound.contains(got.iter().next().unwrap()));
                assert_eq!(got, route_set(&router, &RouteInput::key(&key)));
            }
        }
    }
}
