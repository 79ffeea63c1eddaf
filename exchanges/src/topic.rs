//! Topic routing: binding keys with `*` (exactly one word) and `#` (zero or
//! more words), indexed in a word trie.
//!
//! Keys split on `.` as RabbitMQ's `split_topic_key_binary` splits them:
//! the empty key has no words, and every other key has one word more than
//! it has dots, so `a..b` has an empty middle word and `a.` ends with one.
//! `*` and `#` are wildcards only as whole words (`a*` is a literal word).
//!
//! The trie has one edge per literal word, plus a `*` and a `#` edge, and
//! keeps at each node the destinations whose binding key ends there. Routing
//! walks it as `rabbit_db_topic_exchange:trie_match/8` does, so its cost
//! depends on the key and on the bindings that share prefixes with it, not
//! on the number of bindings: a binding that cannot match is never looked
//! at. Like RabbitMQ, the walk remembers the (node, position) states it has
//! visited once two `#` edges are on the path; without that, keys such as
//! `#.#.#.x` make the number of paths grow combinatorially with the key
//! length.

use crate::hash::FastMap;
use std::collections::HashSet;

/// Splits a routing or binding key into words; "" has none.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether `pattern` (a binding key) matches `key` (a routing key).
///
/// The direct recursive definition: the reference the trie is tested
/// against, and a convenience for callers matching one pattern.
pub fn matches(pattern: &str, key: &str) -> bool {
    match_words(&words(pattern), &words(key))
}

fn match_words(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => (0..=k.len()).any(|i| match_words(rest, &k[i..])),
        Some((&w, rest)) => match k.split_first() {
            Some((&kw, krest)) => (w == "*" || w == kw) && match_words(rest, krest),
            None => false,
        },
    }
}

type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Debug)]
struct Node<D> {
    /// Children by literal word.
    words: FastMap<Box<str>, NodeId>,
    star: Option<NodeId>,
    hash: Option<NodeId>,
    /// Destinations whose binding key ends here, each with the number of
    /// bindings (distinct arguments) that put it here.
    dests: Vec<(D, u32)>,
}

impl<D> Node<D> {
    fn new() -> Self {
        Node {
            words: FastMap::default(),
            star: None,
            hash: None,
            dests: Vec::new(),
        }
    }

    fn is_leaf(&self) -> bool {
        self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    fn is_unused(&self) -> bool {
        self.is_leaf() && self.dests.is_empty()
    }
}

/// One step down the trie.
#[derive(Clone, Copy)]
enum Edge<'a> {
    Word(&'a str),
    Star,
    Hash,
}

impl<'a> Edge<'a> {
    fn of(word: &'a str) -> Self {
        match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            w => Edge::Word(w),
        }
    }
}

/// The topic bindings of one exchange.
#[derive(Debug)]
pub struct TopicIndex<D> {
    /// Arena of nodes; `ROOT` always exists. Ids of removed nodes are
    /// recycled through `free` so churn does not grow the arena.
    nodes: Vec<Node<D>>,
    free: Vec<NodeId>,
}

impl<D> Default for TopicIndex<D> {
    fn default() -> Self {
        TopicIndex {
            nodes: vec![Node::new()],
            free: Vec::new(),
        }
    }
}

impl<D: Clone + Eq> TopicIndex<D> {
    fn child(&self, node: NodeId, edge: Edge<'_>) -> Option<NodeId> {
        let n = &self.nodes[node as usize];
        match edge {
            Edge::Word(w) => n.words.get(w).copied(),
            Edge::Star => n.star,
            Edge::Hash => n.hash,
        }
    }

    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::new());
                NodeId::try_from(self.nodes.len() - 1).expect("fewer than 2^32 trie nodes")
            }
        }
    }

    /// Adds one binding of `d` with binding key `pattern`.
    pub fn insert(&mut self, pattern: &str, d: D) {
        let mut node = ROOT;
        for w in words(pattern) {
            let edge = Edge::of(w);
            node = match self.child(node, edge) {
                Some(c) => c,
                None => {
                    let c = self.alloc();
                    let n = &mut self.nodes[node as usize];
                    match edge {
                        Edge::Word(w) => {
                            n.words.insert(w.into(), c);
                        }
                        Edge::Star => n.star = Some(c),
                        Edge::Hash => n.hash = Some(c),
                    }
                    c
                }
            };
        }
        let dests = &mut self.nodes[node as usize].dests;
        match dests.iter_mut().find(|(x, _)| *x == d) {
            Some((_, n)) => *n += 1,
            None => dests.push((d, 1)),
        }
    }

    /// Removes one binding of `d` with binding key `pattern`, and the nodes
    /// it leaves unused; returns whether there was one.
    pub fn remove(&mut self, pattern: &str, d: &D) -> bool {
        let mut path: Vec<(NodeId, Edge<'_>)> = Vec::new();
        let mut node = ROOT;
        for w in words(pattern) {
            let edge = Edge::of(w);
            let Some(c) = self.child(node, edge) else {
                return false;
            };
            path.push((node, edge));
            node = c;
        }
        let dests = &mut self.nodes[node as usize].dests;
        let Some(i) = dests.iter().position(|(x, _)| x == d) else {
            return false;
        };
        dests[i].1 -= 1;
        if dests[i].1 == 0 {
            dests.swap_remove(i);
        }
        // Prune upwards while the child is unused.
        let mut child = node;
        for (parent, edge) in path.into_iter().rev() {
            if !self.nodes[child as usize].is_unused() {
                break;
            }
            let p = &mut self.nodes[parent as usize];
            match edge {
                Edge::Word(w) => {
                    p.words.remove(w);
                }
                Edge::Star => p.star = None,
                Edge::Hash => p.hash = None,
            }
            // Drop the old maps' memory rather than keep it for reuse.
            self.nodes[child as usize] = Node::new();
            self.free.push(child);
            child = parent;
        }
        true
    }

    /// Whether no binding is indexed.
    pub fn is_empty(&self) -> bool {
        self.nodes[ROOT as usize].is_unused()
    }

    /// Nodes in use, the root included (for tests of pruning).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Appends matching destinations. A destination bound by several
    /// matching keys is appended once per key: the router dedups.
    pub fn route(&self, key: &str, out: &mut Vec<D>) {
        let mut walk = Walk {
            nodes: &self.nodes,
            key_len: key.len(),
            out,
            seen: None,
        };
        walk.visit(ROOT, if key.is_empty() { None } else { Some(key) }, 0);
    }
}

/// The rest of a routing key: `None` when no words are left, else the
/// remaining words joined by dots (`Some("")` is one empty word). Keeping
/// the key as a slice avoids splitting it into a vector on every route.
type Rest<'k> = Option<&'k str>;

/// The first word of `rest`, and what follows it.
#[inline]
fn next_word(rest: &str) -> (&str, Rest<'_>) {
    match rest.find('.') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

struct Walk<'a, 'o, D> {
    nodes: &'a [Node<D>],
    key_len: usize,
    out: &'o mut Vec<D>,
    /// (node, position) states already visited; only kept once two `#`
    /// edges are on the path, as states cannot repeat before that.
    seen: Option<HashSet<(NodeId, usize)>>,
}

impl<D: Clone> Walk<'_, '_, D> {
    fn visit(&mut self, node: NodeId, rest: Rest<'_>, hashes: u32) {
        if hashes >= 2 {
            let pos = rest.map_or(usize::MAX, |r| self.key_len - r.len());
            if !self
                .seen
                .get_or_insert_with(HashSet::new)
                .insert((node, pos))
            {
                return;
            }
        }
        let n = &self.nodes[node as usize];
        match rest {
            None => {
                self.out.extend(n.dests.iter().map(|(d, _)| d.clone()));
                // A trailing `#` matches zero words.
                if let Some(h) = n.hash {
                    self.visit(h, None, hashes + 1);
                }
            }
            Some(r) => {
                let (w, after) = next_word(r);
                if let Some(&c) = n.words.get(w) {
                    self.visit(c, after, hashes);
                }
                if let Some(c) = n.star {
                    self.visit(c, after, hashes);
                }
                if let Some(h) = n.hash {
                    self.skip_any(h, rest, hashes + 1);
                }
            }
        }
    }

    /// Continues from `node`, just past a `#` edge, with zero, one, ... or
    /// all of the remaining words consumed by the `#`.
    fn skip_any(&mut self, node: NodeId, mut rest: Rest<'_>, hashes: u32) {
        if self.nodes[node as usize].is_leaf() {
            // Nothing follows the `#` (as in `logs.#`): only the state with
            // every word consumed can end here.
            self.visit(node, None, hashes);
            return;
        }
        loop {
            self.visit(node, rest, hashes);
            match rest {
                None => break,
                Some(r) => rest = next_word(r).1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(t: &TopicIndex<&'static str>, key: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        t.route(key, &mut out);
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn reference_matcher_star_and_hash() {
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.#", "a"));
        assert!(matches("a.#", "a.b.c"));
        assert!(matches("#", ""));
        assert!(matches("#", "a.b"));
        assert!(matches("#.a", "a"));
        assert!(matches("a.#.b", "a.b"));
        assert!(matches("a.#.b", "a.x.y.b"));
        assert!(matches("#.#", "a"));
        // RabbitMQ splits "" into no words, so `*` needs a word it lacks.
        assert!(!matches("*", ""));
        assert!(matches("a.*", "a."), "a trailing dot makes an empty word");
    }

    #[test]
    fn words_split_as_rabbitmq() {
        // split_topic_key_binary(<<>>) -> []; binary:split(K, <<".">>, [global]) otherwise.
        assert!(words("").is_empty());
        assert_eq!(words("a"), vec!["a"]);
        assert_eq!(words("a..b"), vec!["a", "", "b"]);
        assert_eq!(words(".a."), vec!["", "a", ""]);
        assert_eq!(words("."), vec!["", ""]);
    }

    #[test]
    fn trie_edge_cases() {
        let mut t = TopicIndex::default();
        for (d, p) in [
            ("hash", "#"),
            ("a_hash", "a.#"),
            ("hash_a", "#.a"),
            ("a_hash_b", "a.#.b"),
            ("hash_hash", "#.#"),
            ("empty", ""),
            ("star", "*"),
            ("exact", "a.b"),
            ("empty_word", "a..b"),
            ("star_star", "*.*"),
        ] {
            t.insert(p, d);
        }
        // `#` matches everything, including the empty key; `#.#` likewise.
        assert_eq!(route(&t, ""), vec!["empty", "hash", "hash_hash"]);
        // `a.#` matches `a` (the `#` takes zero words), `#.a` too, `*` one word.
        assert_eq!(
            route(&t, "a"),
            vec!["a_hash", "hash", "hash_a", "hash_hash", "star"]
        );
        // `a.#.b` matches `a.b`; the binding key equal to the routing key matches.
        assert_eq!(
            route(&t, "a.b"),
            vec![
                "a_hash",
                "a_hash_b",
                "exact",
                "hash",
                "hash_hash",
                "star_star"
            ]
        );
        // Empty words are words: `a..b` has three.
        assert_eq!(
            route(&t, "a..b"),
            vec!["a_hash", "a_hash_b", "empty_word", "hash", "hash_hash"]
        );
        // `.` is two empty words.
        assert_eq!(route(&t, "."), vec!["hash", "hash_hash", "star_star"]);
    }

    #[test]
    fn literal_wildcard_characters_inside_words() {
        let mut t = TopicIndex::default();
        t.insert("a*.b#", "q");
        assert_eq!(route(&t, "a*.b#"), vec!["q"]);
        assert!(route(&t, "ax.bx").is_empty());
    }

    #[test]
    fn unbind_prunes_unused_nodes() {
        let mut t = TopicIndex::default();
        t.insert("a.b.c", "q1");
        t.insert("a.b.#", "q2");
        t.insert("a.*", "q1");
        let full = t.node_count();
        assert_eq!(full, 1 + 5); // root, a, b, c, #, *
        assert!(t.remove("a.b.c", &"q1"));
        assert_eq!(
            t.node_count(),
            full - 1,
            "only `c` goes: `b` still leads to `#`"
        );
        assert!(!t.remove("a.b.c", &"q1"), "already gone");
        assert!(!t.remove("a.b.c.d", &"q1"), "never there");
        assert!(t.remove("a.b.#", &"q2"));
        assert_eq!(t.node_count(), 1 + 2, "`b` and `#` go, `a` and `*` stay");
        assert!(t.remove("a.*", &"q1"));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
        // Freed nodes are reused.
        t.insert("x.y", "q");
        assert_eq!(t.nodes.len(), 6);
        assert_eq!(route(&t, "x.y"), vec!["q"]);
    }

    #[test]
    fn counts_bindings_per_node() {
        // Two bindings (say, different arguments) put q at one node; the
        // node routes to q until both are gone.
        let mut t = TopicIndex::default();
        t.insert("a", "q");
        t.insert("a", "q");
        assert!(t.remove("a", &"q"));
        assert_eq!(route(&t, "a"), vec!["q"]);
        assert!(t.remove("a", &"q"));
        assert!(route(&t, "a").is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn many_hashes_stay_cheap() {
        // Without remembering visited states this walk is combinatorial.
        let mut t = TopicIndex::default();
        t.insert("#.#.#.#.#.#.#.#.z", "q");
        let key = vec!["a"; 200].join(".");
        assert!(route(&t, &key).is_empty());
        assert_eq!(route(&t, &format!("{key}.z")), vec!["q"]);
    }
}
