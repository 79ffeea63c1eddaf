//! The broker: vhosts with their exchanges and queues, users, and the
//! registries the protocol layer and the management API read.
//!
//! It never imports the AMQP layer, the management layer or frame types:
//! protocol code calls into it with plain values and gets typed
//! [`BrokerError`]s back.

pub mod access;
pub mod alarms;
pub mod authz;
pub mod base64;
pub mod consumer_args;
pub(crate) mod dead_letter;
pub mod error;
pub mod exchange;
pub mod history;
pub mod limits;
pub mod outbox;
pub mod persist;
pub mod policy;
pub mod properties;
pub mod queue;
pub mod queue_args;
pub mod registry;
pub mod reply;
pub mod route;
pub mod stream;
pub mod unacked;
pub mod vhost;

pub use access::{Kept, Permission, User, VhostMeta};
pub use alarms::{AlarmConfig, AlarmSet, Alarms, DiskFreeLimit, MemoryWatermark};
pub use authz::{Caller, Kind, Perm};
pub use error::{BrokerError, ErrorKind, Result};
pub use exchange::{Exchange, ExchangeKind, ExchangeOptions};
pub use outbox::{Delivery, Outbox, OutboxItem};
pub use policy::{Applied, Policy, PolicyKind, QueueSettings};
pub use queue::{ConsumeRequest, ConsumerHandle, Queue, QueueContents, QueueOptions, QueueRef};
pub use registry::{
    ChannelSnapshot, Churn, ChurnCounters, ClientInfo, CoarseClock, ConnState, ConnectionInfo,
    ConsumerSnapshot, Counter, MessageCounters, MessageStats, NetCounters, NetStats, TlsInfo,
};
pub use reply::{ReplyOutcome, ReplyRegistry, REPLY_PREFIX, REPLY_QUEUE};
pub use route::{Dest, RouteScratch, RouteStep, RouteTrace};
pub use vhost::{PublishDetails, Published, QueueDeclared, Vhost};

use dashmap::DashMap;
use persist::Persistence;
pub use persist::StorageConfig;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use warren_queues::DiskError;

/// What the broker needs from the configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub vhosts: Vec<String>,
    pub users: Vec<UserConfig>,
    /// Users that may log in only from loopback addresses (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// Messages a no-ack consumer may have in flight to its connection.
    pub noack_window: u32,
    /// RabbitMQ's `consumer_timeout` (ms; 0: none): the default for
    /// queues without `x-consumer-timeout` or a `consumer-timeout` policy.
    pub consumer_timeout: u64,
    /// The memory high watermark and free disk limit.
    pub alarms: AlarmConfig,
}

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    pub tags: Vec<String>,
}

/// Why a login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user or wrong password.
    Refused,
    /// A loopback-only user connecting from elsewhere.
    LoopbackOnly,
}

pub struct Broker {
    persist: Option<Arc<Persistence>>,
    vhosts: DashMap<String, Arc<Vhost>>,
    /// Users, permissions, vhost metadata; persisted.
    access: access::Access,
    loopback_users: Vec<String>,
    noack_window: u32,
    consumer_timeout: u64,
    next_id: AtomicU64,
    /// Logged-in connections, by id (management API).
    connections: DashMap<u64, Arc<ConnectionInfo>>,
    /// Broker-wide message counters.
    stats: Arc<MessageCounters>,
    /// Sampled history of the overview's lengths and counters.
    pub history: history::SharedHistory,
    /// Broker-wide dead-letter counters (every queue counts into them).
    dead: Arc<warren_queues::DeadCounters>,
    /// Connections, channels and queues made and gone.
    pub churn: Arc<ChurnCounters>,
    /// The coarse clock deliveries are stamped with (advanced by the server).
    clock: Arc<CoarseClock>,
    /// Memory and disk alarms (measured by the server's monitor task).
    alarms: Arc<Alarms>,
    /// Serialises creating and deleting vhosts: a re-create must not land
    /// between a delete's map removal and its sweep of the stored records
    /// (which share the name's key prefix).
    vhost_admin: std::sync::Mutex<()>,
    /// The live counts vhost and user limits are checked against.
    limits: Arc<limits::Tracker>,
}

impl Broker {
    /// A broker with everything in memory.
    pub fn new(cfg: &BrokerConfig) -> Arc<Self> {
        let b = Self::build(cfg, None);
        b.seed(cfg);
        b
    }

    /// A broker over a data directory: durable definitions and persistent
    /// messages are recovered from it and written to it.
    pub fn open(
        cfg: &BrokerConfig,
        storage: &StorageConfig,
    ) -> std::result::Result<Arc<Self>, DiskError> {
        let started = std::time::Instant::now();
        let persist = Persistence::open(storage)?;
        let b = Self::build(cfg, Some(persist.clone()));
        for name in b.access.vhost_names() {
            b.add_vhost(&name);
        }
        let mut counts = (0usize, 0usize, 0usize, 0usize);
        for d in persist.exchanges() {
            b.add_vhost(&d.vhost).restore_exchange(&d);
            counts.0 += 1;
        }
        let queues = persist.queues();
        // A priority queue's levels are indexed under ids of their own.
        let ids = |d: &persist::QueueDef| {
            let max = queue_args::max_priority(&d.arguments).unwrap_or(0);
            warren_queues::level_ids(d.id, max)
        };
        let live = queues.iter().flat_map(ids).collect();
        let mut recovered = persist.disk.recover(&live)?;
        for d in &queues {
            let mine: std::collections::HashMap<_, _> = ids(d)
                .filter_map(|id| Some((id, recovered.remove(&id)?)))
                .collect();
            counts.3 += mine.values().map(Vec::len).sum::<usize>();
            let store = vhost::durable_store(&persist, d.id, &d.arguments, mine);
            b.add_vhost(&d.vhost).restore_queue(d, store);
            counts.1 += 1;
        }
        for d in persist.bindings() {
            if let Some(v) = b.vhost(&d.vhost) {
                if v.restore_binding(&d) {
                    counts.2 += 1;
                }
            }
        }
        b.load_policies(&persist);
        tracing::info!(
            dir = %storage.data_dir.display(),
            exchanges = counts.0,
            queues = counts.1,
            bindings = counts.2,
            messages = counts.3,
            users = b.access.users().len(),
            elapsed = ?started.elapsed(),
            "recovered durable state"
        );
        b.seed(cfg);
        // Start-up writes (seeded users, vhosts) are durable before any
        // client is served; this runs off the async workers.
        persist.flush_now();
        Ok(b)
    }

    /// Start-up: the stored policies and operator policies, then every
    /// recovered queue and exchange matched against them.
    fn load_policies(&self, persist: &Persistence) {
        use persist::Doc;
        for (kind, doc) in [
            (PolicyKind::Policy, Doc::Policy),
            (PolicyKind::Operator, Doc::OperatorPolicy),
        ] {
            for (k, v) in persist.docs(doc) {
                let ([vhost, name], Some(body)) = (&k[..], v.as_object()) else {
                    continue;
                };
                let Some(vh) = self.vhost(vhost) else {
                    continue;
                };
                match Policy::parse(kind, vhost, name, body) {
                    Ok(p) => vh.install_policy(kind, p),
                    Err(e) => tracing::warn!(
                        vhost = %vhost, name = %name, error = %e,
                        "skipping a stored policy that does not validate"
                    ),
                }
            }
        }
        for v in self.vhosts() {
            v.reapply_policies();
        }
    }

    /// Makes pending writes durable and stops the flusher.
    pub fn close(&self) {
        if let Some(p) = &self.persist {
            p.flusher.stop();
            if let Err(e) = p.disk.flush_all() {
                tracing::error!(error = %e, "final flush failed");
            }
        }
    }

    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.persist.as_ref()
    }

    /// Runs `f` (many definition writes), then syncs them with one flush
    /// (see [`Persistence::batch`]); blocking, so call it from
    /// `spawn_blocking`.
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.persist {
            Some(p) => p.batch(f),
            None => f(),
        }
    }

    fn build(cfg: &BrokerConfig, persist: Option<Arc<Persistence>>) -> Arc<Self> {
        Arc::new(Broker {
            access: access::Access::load(persist.clone()),
            persist,
            vhosts: DashMap::new(),
            loopback_users: cfg.loopback_users.clone(),
            noack_window: cfg.noack_window,
            consumer_timeout: cfg.consumer_timeout,
            next_id: AtomicU64::new(1),
            connections: DashMap::new(),
            stats: Arc::new(MessageCounters::default()),
            history: history::SharedHistory::new(history::GLOBAL, history::OVERVIEW_SERIES),
            dead: Arc::default(),
            churn: Arc::new(ChurnCounters::default()),
            clock: Arc::new(CoarseClock::default()),
            alarms: Alarms::new(&cfg.alarms),
            vhost_admin: std::sync::Mutex::new(()),
            limits: Arc::default(),
        })
    }

    pub fn add_vhost(&self, name: &str) -> Arc<Vhost> {
        let mut created = false;
        let v = self
            .vhosts
            .entry(name.to_owned())
            .or_insert_with(|| {
                created = true;
                let v = Vhost::new_shared(
                    name,
                    self.noack_window,
                    self.persist.clone(),
                    self.stats.clone(),
                    self.dead.clone(),
                    self.clock.clone(),
                    self.churn.clone(),
                );
                v.set_consumer_timeout(self.consumer_timeout);
                v
            })
            .clone();
        if created {
            // Limits stored before (recovered, or imported with the vhost).
            v.set_queue_limit(limits::limit_of(&self.vhost_limits(name), "max-queues"));
        }
        v
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.get(name).map(|v| v.value().clone())
    }

    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.vhosts.iter().map(|v| v.value().clone()).collect()
    }

    /// A process-unique id for connections and consumers.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks a login against the stored users (AMQP and the management API).
    pub fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> std::result::Result<(), AuthError> {
        if !self.access.check_login(user, password) {
            return Err(AuthError::Refused);
        }
        self.check_loopback(user, peer)
    }

    /// A login without a password, for SASL EXTERNAL: the TLS layer has
    /// verified a client certificate naming `user`. The user must exist;
    /// loopback-only users stay loopback-only, as in RabbitMQ.
    pub fn authenticate_external(
        &self,
        user: &str,
        peer: IpAddr,
    ) -> std::result::Result<(), AuthError> {
        if self.access.user(user).is_none() {
            return Err(AuthError::Refused);
        }
        self.check_loopback(user, peer)
    }

    fn check_loopback(&self, user: &str, peer: IpAddr) -> std::result::Result<(), AuthError> {
        if self.loopback_users.iter().any(|u| u == user) && !is_loopback(peer) {
            return Err(AuthError::LoopbackOnly);
        }
        Ok(())
    }

    /// Who `user` is in `vhost` for an AMQP connection (`conn`) or a
    /// management request (0), with the permission checks RabbitMQ makes;
    /// refused (530 at connection.open) when the user has no permission
    /// in the vhost.
    pub fn caller(&self, user: &str, vhost: &str, conn: u64) -> Result<Caller> {
        let impersonator = self
            .access
            .user(user)
            .is_some_and(|u| u.has_tag("impersonator"));
        let refused = || {
            BrokerError::new(
                ErrorKind::NotAllowed,
                format!("access to vhost '{vhost}' refused for user '{user}'"),
            )
        };
        let slot = self.access.existing_slot(vhost, user).ok_or_else(refused)?;
        let c = Caller::new(user, vhost, conn, impersonator, slot);
        if !c.has_vhost_access() {
            return Err(refused());
        }
        Ok(c)
    }

    /// Users, permissions and vhost metadata.
    pub fn access(&self) -> &access::Access {
        &self.access
    }

    /// The stored users, sorted by name.
    pub fn users(&self) -> Vec<User> {
        self.access.users()
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.access.user(name)
    }

    /// Start-up: the configured vhosts exist (created if missing, every
    /// start); on a data directory's first start (or in memory) the
    /// configured users are created with `.*` permissions on them, as
    /// RabbitMQ does for its default user. Later starts leave users alone:
    /// the stored ones (changed through the API) win.
    fn seed(&self, cfg: &BrokerConfig) {
        for v in &cfg.vhosts {
            if self.vhost(v).is_none() || !self.access.has_vhost_meta(v) {
                self.create_vhost(v, self.access.vhost_meta(v));
            }
        }
        // Vhosts recovered only from older data directories' exchanges.
        for v in self.vhosts() {
            if !self.access.has_vhost_meta(&v.name) {
                self.access.set_vhost_meta(&v.name, VhostMeta::default());
            }
        }
        if self.access.seeded() {
            return;
        }
        for u in &cfg.users {
            self.access
                .put_user(User::with_password(&u.name, &u.password, u.tags.clone()));
            for v in &cfg.vhosts {
                self.access.set_permission(Permission {
                    user: u.name.clone(),
                    vhost: v.clone(),
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                });
            }
        }
        self.access.mark_seeded();
        tracing::info!(users = cfg.users.len(), "created the configured users");
    }

    /// Creates a vhost (with its amq.* exchanges) or updates its metadata;
    /// returns whether it existed.
    pub fn create_vhost(&self, name: &str, meta: VhostMeta) -> bool {
        let _admin = self.vhost_admin.lock().unwrap_or_else(|e| e.into_inner());
        let existed = self.vhost(name).is_some();
        self.access.set_vhost_meta(name, meta);
        self.add_vhost(name);
        existed
    }

    /// Deletes a vhost and everything in it: exchanges, queues with their
    /// messages, bindings, permissions and stored definitions; its AMQP
    /// connections are closed as RabbitMQ closes them. False if unknown.
    ///
    /// Connections and requests that still hold the vhost are refused
    /// from the moment it is marked deleted, before anything is swept: a
    /// record they wrote after the sweep would recreate it at the next start.
    ///
    /// Blocking (it syncs to disk once at the end): call it from `spawn_blocking`.
    pub fn delete_vhost(&self, name: &str) -> bool {
        let _admin = self.vhost_admin.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, v)) = self.vhosts.remove(name) else {
            return false;
        };
        v.mark_deleted();
        self.batch(|| {
            // The stored definitions first, in one prefix sweep: removing
            // each queue then finds none of its bindings left to look at.
            if let Some(p) = &self.persist {
                p.remove_vhost_docs(name);
            }
            v.remove_everything();
            self.access.forget_vhost(name);
        });
        let reason = format!("vhost '{name}' is deleted");
        for c in self.connections() {
            if c.vhost == name {
                c.request_close(&reason);
            }
        }
        tracing::info!(vhost = name, "deleted vhost");
        true
    }

    /// Deletes a user with its permissions and closes its connections, as
    /// RabbitMQ does. False if unknown.
    pub fn delete_user(&self, name: &str) -> bool {
        if !self.access.remove_user(name) {
            return false;
        }
        let reason = format!("user '{name}' is deleted");
        for c in self.connections() {
            if c.user == name {
                c.request_close(&reason);
            }
        }
        true
    }

    /// A connection finished its handshake.
    pub fn register_connection(&self, info: Arc<ConnectionInfo>) {
        self.connections.insert(info.id, info);
        self.churn.add(Churn::ConnectionCreated);
    }

    /// Live connections, oldest first.
    pub fn connections(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut v: Vec<Arc<ConnectionInfo>> =
            self.connections.iter().map(|c| c.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn message_stats(&self) -> MessageStats {
        self.stats.snapshot()
    }

    /// Messages dead-lettered or dropped unconsumed, broker-wide, since
    /// start (deleted queues' included).
    pub fn dead_counters(&self) -> &warren_queues::DeadCounters {
        &self.dead
    }

    /// The broker-wide counters, for what only the protocol layer sees
    /// (confirms, returns, unroutable drops).
    pub fn counters(&self) -> &MessageCounters {
        &self.stats
    }

    pub fn clock(&self) -> &Arc<CoarseClock> {
        &self.clock
    }

    /// The resource alarms: connections block publishers while one is in effect.
    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    /// Turns the counters (broker-wide, per queue, exchange and channel)
    /// into rates; called every few seconds by the server's sampler task.
    pub fn sample_rates(&self, secs: f64) {
        let now = registry::unix_ms();
        self.stats.sample(secs);
        self.churn.sample(secs);
        let (mut ready, mut unacked) = (0, 0);
        for v in self.vhosts() {
            for q in v.queues() {
                let (r, u) = q.sample(secs, now);
                ready += r;
                unacked += u;
            }
            for e in v.exchanges() {
                e.stats.sample(secs);
                let s = e.stats.snapshot();
                e.history
                    .record(now, &history::EXCHANGE_COUNTERS.map(|c| s.count(c)));
            }
        }
        for c in self.connections() {
            c.sample_channels(secs, now);
            let n = c.net.snapshot();
            c.history.record(now, &[n.recv_oct, n.send_oct]);
        }
        let s = self.stats.snapshot();
        let mut values = [0u64; 14];
        values[..3].copy_from_slice(&[ready + unacked, ready, unacked]);
        for (i, c) in history::CHANNEL_COUNTERS.iter().enumerate() {
            values[3 + i] = s.count(*c);
        }
        self.history.record(now, &values);
    }

    /// A connection is gone: its exclusive queues go with it.
    pub fn connection_closed(&self, conn: u64) {
        if self.connections.remove(&conn).is_some() {
            self.churn.add(Churn::ConnectionClosed);
        }
        for v in self.vhosts() {
            v.connection_closed(conn);
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// A random URL-safe token of `len` characters, for generated names
/// (`amq.gen-…`, consumer tags), from the operating system's generator.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = vec![0u8; len];
    random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[(b & 63) as usize] as char)
        .collect()
}

/// Fills `buf` from the operating system's random source (password
/// salts, generated names).
pub fn random_bytes(buf: &mut [u8]) {
    // Only fails where the OS has no random source at all; a broker cannot
    // salt passwords or name queues safely there.
    getrandom::getrandom(buf).expect("the operating system's random source");
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_tokens_are_url_safe_and_differ() {
        let a = super::random_token(22);
        let b = super::random_token(22);
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b, "132 random bits each");
    }
}
