//! Access control decisions: who is calling ([`Caller`]) and whether the
//! configure / write / read permission regexes let them do an operation,
//! with RabbitMQ's access-control table (rabbit_channel.erl) written once
//! here for both the AMQP channel and the management API.
//!
//! Permissions are compiled once per change (see [`PermSlot`]): a caller
//! holds its (vhost, user) slot, so a change or a clear is seen by the next
//! check of every open connection, and a check is one uncontended read lock
//! and a regex match. Publishers cache the write verdict per exchange
//! against the slot's generation (see [`Caller::generation`]).

use super::access::Permission;
use super::error::{BrokerError, ErrorKind, Result};
use super::vhost::Vhost;
use regex::Regex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use warren_exchanges::{ExchangeType, Table};

/// A user's permission in a vhost, with its regexes compiled.
#[derive(Debug)]
pub struct CompiledPermission {
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

impl CompiledPermission {
    pub fn compile(p: &Permission) -> Self {
        CompiledPermission {
            configure: compile_one(&p.configure),
            write: compile_one(&p.write),
            read: compile_one(&p.read),
        }
    }

    fn allows(&self, perm: Perm, name: &str) -> bool {
        let re = match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        };
        re.as_ref().is_some_and(|re| re.is_match(name))
    }
}

/// RabbitMQ matches unanchored (`re:run`), and an empty regex means `^$`.
/// One Rust's regex crate cannot compile (PCRE-only syntax) allows nothing.
fn compile_one(re: &str) -> Option<Regex> {
    let re = if re.is_empty() { "^$" } else { re };
    match Regex::new(&pcre_braces(re)) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(regex = re, error = %e, "permission regex does not compile; it allows nothing");
            None
        }
    }
}

/// A PCRE pattern with its literal braces escaped for Rust's regex: PCRE
/// (RabbitMQ's `re`) takes a `{` that does not open a `{n}`, `{n,}` or
/// `{n,m}` quantifier as a literal (as in `^a\.{username}` before
/// expansion), where Rust's regex refuses the pattern.
pub fn pcre_braces(re: &str) -> String {
    let mut out = String::with_capacity(re.len() + 4);
    let mut in_quantifier = false;
    let mut chars = re.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            // An escape: the escaped character is copied as it is.
            '\\' => {
                out.push(c);
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '{' if is_quantifier(&re[i + 1..]) => {
                in_quantifier = true;
                out.push(c);
            }
            '{' => out.push_str("\\{"),
            '}' if in_quantifier => {
                in_quantifier = false;
                out.push(c);
            }
            '}' => out.push_str("\\}"),
            _ => out.push(c),
        }
    }
    out
}

/// Whether what follows a `{` is `n}`, `n,}` or `n,m}`.
fn is_quantifier(rest: &str) -> bool {
    let Some(end) = rest.find('}') else {
        return false;
    };
    let body = &rest[..end];
    let (a, b) = body.split_once(',').unwrap_or((body, "0"));
    !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
}

/// The current permission of one (vhost, user), shared by the access store
/// (which replaces it on every change) and the callers that hold it.
#[derive(Debug, Default)]
pub struct PermSlot {
    /// Bumped on every change: cached verdicts older than this are stale.
    generation: AtomicU64,
    current: RwLock<Option<Arc<CompiledPermission>>>,
    /// Whether any topic permission is set (the publish path looks no
    /// further when none is).
    has_topics: AtomicBool,
    /// Bumped on every change of the topic permissions: a connection's
    /// `{client_id}` regexes compiled before are stale.
    topics_generation: AtomicU64,
    /// Topic permissions by exchange: (write, read) routing-key regexes,
    /// with `{username}` and `{vhost}` expanded.
    topics: RwLock<HashMap<String, (TopicRegex, TopicRegex)>>,
}

/// A topic permission's regex, compiled.
#[derive(Debug)]
enum TopicRegex {
    /// Once for every connection of the (vhost, user).
    Shared(Option<Regex>),
    /// A pattern naming `{client_id}` (Warren's extension for AMQP 0-9-1,
    /// see [`ClientTopics`]): compiled per connection that sent a
    /// `client_id`; `literal` is the pattern as it is, for those that did
    /// not (it then matches the text `{client_id}`, as in RabbitMQ).
    PerClient {
        pattern: String,
        literal: Option<Regex>,
    },
}

impl TopicRegex {
    fn new(pattern: String) -> Self {
        if pattern.contains(CLIENT_ID) {
            let literal = compile_one(&pattern);
            TopicRegex::PerClient { pattern, literal }
        } else {
            TopicRegex::Shared(compile_one(&pattern))
        }
    }
}

/// The variable a topic permission may name for the connection's client
/// id.
const CLIENT_ID: &str = "{client_id}";

/// A connection's `{client_id}`, and the topic regexes expanded with it.
///
/// RabbitMQ expands `{client_id}` only for MQTT and STOMP connections
/// (rabbit_channel's variable map of an AMQP 0-9-1 network connection
/// holds just `username` and `vhost`). Warren's extension takes it, for
/// AMQP 0-9-1, from the `client_id` string of connection.start-ok's client
/// properties; the client chooses it, so it separates cooperating
/// applications, it does not authenticate them.
#[derive(Debug, Default)]
pub struct ClientTopics {
    client_id: Option<String>,
    compiled: Mutex<HashMap<(String, Perm), Expanded>>,
}

/// A topic regex expanded with a connection's client id: (the topic
/// permissions' generation it was compiled for, the regex).
type Expanded = (u64, Option<Regex>);

impl ClientTopics {
    pub fn new(client_id: Option<String>) -> Self {
        ClientTopics {
            client_id,
            compiled: Mutex::default(),
        }
    }

    /// Whether `pattern` expanded with this connection's client id
    /// matches `key`; compiled once per topic-permission generation.
    fn is_match(
        &self,
        generation: u64,
        exchange: &str,
        perm: Perm,
        pattern: &str,
        key: &str,
    ) -> bool {
        let Some(id) = &self.client_id else {
            return false;
        };
        let cache_key = (exchange.to_owned(), perm);
        let cached = {
            let compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            compiled
                .get(&cache_key)
                .filter(|(g, _)| *g == generation)
                .map(|(_, re)| re.clone())
        };
        let re = cached.unwrap_or_else(|| {
            let re = compile_one(&pattern.replace(CLIENT_ID, id));
            self.compiled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cache_key, (generation, re.clone()));
            re
        });
        re.is_some_and(|re| re.is_match(key))
    }
}

/// A topic permission as stored: exchange, write and read regexes.
pub struct TopicPermission<'a> {
    pub exchange: &'a str,
    pub write: &'a str,
    pub read: &'a str,
}

impl PermSlot {
    /// Replaces the topic permissions of this (vhost, user), expanding
    /// RabbitMQ's `{username}` and `{vhost}` variables once here
    /// (`{client_id}` is a connection's: see [`ClientTopics`]).
    pub fn set_topics(&self, user: &str, vhost: &str, items: &[TopicPermission<'_>]) {
        let expand =
            |re: &str| TopicRegex::new(re.replace("{username}", user).replace("{vhost}", vhost));
        let map: HashMap<String, (TopicRegex, TopicRegex)> = items
            .iter()
            .map(|t| (t.exchange.to_owned(), (expand(t.write), expand(t.read))))
            .collect();
        self.has_topics.store(!map.is_empty(), Ordering::Release);
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        *topics = map;
        self.topics_generation.fetch_add(1, Ordering::Release);
    }

    /// Whether a topic permission lets `routing_key` through `exchange`
    /// for a connection (no topic permission for the exchange: everything
    /// goes).
    fn topic_allows(
        &self,
        perm: Perm,
        exchange: &str,
        routing_key: &str,
        client: &ClientTopics,
    ) -> bool {
        if !self.has_topics.load(Ordering::Acquire) {
            return true;
        }
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let Some((w, r)) = topics.get(exchange) else {
            return true;
        };
        match if perm == Perm::Write { w } else { r } {
            TopicRegex::Shared(re) => re.as_ref().is_some_and(|re| re.is_match(routing_key)),
            TopicRegex::PerClient { literal, .. } if client.client_id.is_none() => {
                literal.as_ref().is_some_and(|re| re.is_match(routing_key))
            }
            TopicRegex::PerClient { pattern, .. } => {
                // Read under the topics lock, so the generation is the
                // one `pattern` belongs to.
                let generation = self.topics_generation.load(Ordering::Acquire);
                client.is_match(generation, exchange, perm, pattern, routing_key)
            }
        }
    }

    pub fn set(&self, p: Option<Arc<CompiledPermission>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = p;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn get(&self) -> Option<Arc<CompiledPermission>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn allows(&self, perm: Perm, name: &str) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|p| p.allows(perm, name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queue,
    Exchange,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Exchange => "exchange",
        }
    }
}

/// Who is doing an operation: an AMQP connection or a management request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub vhost: String,
    /// The AMQP connection (exclusive queues); 0 for the management API.
    pub conn: u64,
    /// The `impersonator` tag at login: may publish any `user_id`.
    pub impersonator: bool,
    slot: Arc<PermSlot>,
    /// The connection's `{client_id}` for topic permissions.
    client: Arc<ClientTopics>,
}

impl Caller {
    pub fn new(
        user: &str,
        vhost: &str,
        conn: u64,
        impersonator: bool,
        slot: Arc<PermSlot>,
    ) -> Self {
        Caller {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            conn,
            impersonator,
            slot,
            client: Arc::default(),
        }
    }

    /// The `{client_id}` of this connection's topic permissions (Warren's
    /// extension; see [`ClientTopics`]).
    pub fn with_client_id(mut self, client_id: Option<String>) -> Self {
        self.client = Arc::new(ClientTopics::new(client_id));
        self
    }

    /// Whether the user has any permission in the vhost (connection.open).
    pub fn has_vhost_access(&self) -> bool {
        self.slot.get().is_some()
    }

    /// Changes whenever the permission changes: a verdict cached with one
    /// generation holds while it is current.
    pub fn generation(&self) -> u64 {
        self.slot.generation.load(Ordering::Acquire)
    }

    /// One permission on one resource; the default exchange is checked
    /// (and named) as `amq.default`, as RabbitMQ does.
    pub fn check(&self, perm: Perm, kind: Kind, name: &str) -> Result<()> {
        let name = if kind == Kind::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self.slot.allows(perm, name) {
            return Ok(());
        }
        Err(BrokerError::new(
            ErrorKind::AccessRefused,
            format!(
                "access to {} '{name}' in vhost '{}' refused for user '{}'",
                kind.as_str(),
                self.vhost,
                self.user
            ),
        ))
    }

    /// queue.declare (not passive; `name` is the final one, server-named
    /// too): configure on the queue; a new queue with a dead-letter
    /// exchange also needs read on the queue and write on that exchange.
    pub fn check_queue_declare(&self, v: &Vhost, name: &str, args: &Table) -> Result<()> {
        self.check(Perm::Configure, Kind::Queue, name)?;
        if v.queue(name).is_none() {
            if let Some(dlx) = args.get("x-dead-letter-exchange").and_then(|a| a.as_str()) {
                self.check(Perm::Read, Kind::Queue, name)?;
                self.check(Perm::Write, Kind::Exchange, dlx)?;
            }
        }
        Ok(())
    }

    /// exchange.declare (not passive): configure on the exchange; a new
    /// one with an alternate exchange also needs read on it and write on
    /// the alternate. An unknown type (503) and the default exchange are
    /// refused by the vhost first, as RabbitMQ checks them first.
    pub fn check_exchange_declare(
        &self,
        v: &Vhost,
        name: &str,
        kind: &str,
        args: &Table,
    ) -> Result<()> {
        if name.is_empty() || ExchangeType::parse(kind).is_none() {
            return Ok(());
        }
        self.check(Perm::Configure, Kind::Exchange, name)?;
        if v.exchange(name).is_err() {
            if let Some(ae) = args.get("alternate-exchange").and_then(|a| a.as_str()) {
                self.check(Perm::Read, Kind::Exchange, name)?;
                self.check(Perm::Write, Kind::Exchange, ae)?;
            }
        }
        Ok(())
    }

    /// queue.delete and exchange.delete: configure (checked before the
    /// resource is looked up, so deleting a missing one is refused too).
    pub fn check_delete(&self, kind: Kind, name: &str) -> Result<()> {
        if kind == Kind::Exchange && name.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        self.check(Perm::Configure, kind, name)
    }

    /// queue.bind/unbind and exchange.bind/unbind: write on the
    /// destination, then read on the source exchange.
    pub fn check_bind(&self, dest_kind: Kind, dest: &str, source: &str) -> Result<()> {
        self.check(Perm::Write, dest_kind, dest)?;
        if source.is_empty() || (dest_kind == Kind::Exchange && dest.is_empty()) {
            return Err(BrokerError::default_exchange());
        }
        self.check(Perm::Read, Kind::Exchange, source)
    }

    /// Topic permissions (RabbitMQ's `check_topic_access`): publishing to
    /// a topic exchange needs write on the routing key, binding from one
    /// read on the binding key. `topic` says whether the exchange is one.
    pub fn check_topic(&self, perm: Perm, exchange: &str, topic: bool, key: &str) -> Result<()> {
        if !topic || self.slot.topic_allows(perm, exchange, key, &self.client) {
            return Ok(());
        }
        Err(BrokerError::new(
            ErrorKind::AccessRefused,
            format!(
                "access to topic '{key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
                self.vhost, self.user
            ),
        ))
    }

    /// The binding-key check of a bind or unbind from `source` in `v`.
    pub fn check_bind_topic(&self, v: &Vhost, source: &str, key: &str) -> Result<()> {
        match v.exchange(source) {
            Ok(x) => self.check_topic(Perm::Read, source, x.kind.as_str() == "topic", key),
            Err(_) => Ok(()),
        }
    }

    /// basic.consume, basic.get, queue.purge: read on the queue.
    pub fn check_read_queue(&self, name: &str) -> Result<()> {
        self.check(Perm::Read, Kind::Queue, name)
    }

    /// basic.publish: write on the exchange.
    pub fn check_publish(&self, exchange: &str) -> Result<()> {
        self.check(Perm::Write, Kind::Exchange, exchange)
    }

    /// A published `user_id` must be the login's, unless the user is an
    /// impersonator.
    pub fn check_user_id(&self, user_id: &[u8]) -> Result<()> {
        if self.impersonator || user_id == self.user.as_bytes() {
            return Ok(());
        }
        Err(BrokerError::new(
            ErrorKind::PreconditionFailed,
            format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                String::from_utf8_lossy(user_id),
                self.user
            ),
        ))
    }
}

/// Whether an error is a permission refusal from a [`Caller`] check (the
/// management API reports those as RabbitMQ's does, apart from other 403s
/// such as the default exchange's).
pub fn is_permission_refusal(e: &BrokerError) -> bool {
    e.kind == ErrorKind::AccessRefused && e.text.starts_with("access to ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(c: &str, w: &str, r: &str) -> Caller {
        let slot = Arc::new(PermSlot::default());
        slot.set(Some(Arc::new(CompiledPermission::compile(&Permission {
            user: "u".into(),
            vhost: "/".into(),
            configure: c.into(),
            write: w.into(),
            read: r.into(),
        }))));
        Caller::new("u", "/", 1, false, slot)
    }

    #[test]
    fn regexes_match_unanchored_and_empty_means_nothing() {
        let c = caller("^c-", "w", "");
        assert!(c.check(Perm::Configure, Kind::Queue, "c-q").is_ok());
        assert!(c.check(Perm::Configure, Kind::Queue, "q").is_err());
        assert!(c.check(Perm::Write, Kind::Queue, "aaw").is_ok());
        assert!(c.check(Perm::Read, Kind::Queue, "").is_ok());
        assert!(c.check(Perm::Read, Kind::Queue, "x").is_err());
    }

    #[test]
    fn the_default_exchange_is_amq_default() {
        let c = caller("", "^amq\\.default$", "");
        assert!(c.check_publish("").is_ok());
        let e = caller("", "^x$", "").check_publish("").unwrap_err();
        assert_eq!(
            e.text,
            "access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
    }

    #[test]
    fn a_cleared_slot_refuses_and_bumps_the_generation() {
        let c = caller(".*", ".*", ".*");
        let g = c.generation();
        c.slot.set(None);
        assert_ne!(c.generation(), g);
        assert!(!c.has_vhost_access());
        assert!(c.check_publish("x").is_err());
    }

    #[test]
    fn literal_braces_are_taken_as_pcre_takes_them() {
        assert_eq!(pcre_braces(r"^a\.{username}"), r"^a\.\{username\}");
        assert_eq!(pcre_braces(r"^a{2,3}b{4}$"), r"^a{2,3}b{4}$");
        assert_eq!(pcre_braces(r"x\{y"), r"x\{y");
        assert!(compile_one("^{vhost}-q$").is_some_and(|r| r.is_match("{vhost}-q")));
    }

    #[test]
    fn an_invalid_regex_allows_nothing() {
        let c = caller("(", ".*", ".*");
        assert!(c.check(Perm::Configure, Kind::Queue, "(").is_err());
    }
}
