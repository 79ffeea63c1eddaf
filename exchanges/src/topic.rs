//! Topic matching: binding keys with `*` (one word) and `#` (zero or more).
//!
//! Keys split on `.` as RabbitMQ splits them: the empty key has no words,
//! and empty words (`a..b`) are words. This first version keeps the bindings
//! in a list and matches each; the word trie comes with the routing issue.

use std::hash::Hash;

/// Splits a routing or binding key into words; "" has none.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether `pattern` (a binding key) matches `key` (a routing key).
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

/// The topic bindings of one exchange.
#[derive(Debug)]
pub struct TopicIndex<D> {
    entries: Vec<(String, D)>,
}

impl<D> Default for TopicIndex<D> {
    fn default() -> Self {
        TopicIndex {
            entries: Vec::new(),
        }
    }
}

impl<D: Clone + Eq + Hash> TopicIndex<D> {
    pub fn insert(&mut self, pattern: &str, d: D) {
        self.entries.push((pattern.to_owned(), d));
    }

    pub fn remove(&mut self, pattern: &str, d: &D) {
        if let Some(i) = self
            .entries
            .iter()
            .position(|(p, e)| p == pattern && e == d)
        {
            self.entries.swap_remove(i);
        }
    }

    /// Appends matching destinations (possibly repeated; the router dedups).
    pub fn route(&self, key: &str, out: &mut Vec<D>) {
        let kw = words(key);
        for (p, d) in &self.entries {
            if match_words(&words(p), &kw) {
                out.push(d.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_and_hash() {
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
}
