//! A virtual host: its exchanges and queues, and the operations on them
//! that AMQP methods (and later the management API) ask for.

use super::authz::Caller;
use super::error::{BrokerError, ErrorKind, Result};
use super::exchange::{Exchange, ExchangeKind, ExchangeOptions};
use super::persist::{BindingDef, Doc, ExchangeDef, Persistence, QueueDef};
use super::policy::{Policy, PolicyKind, PolicySet, Target};
use super::queue::{Queue, QueueOptions, QueueRef};
use super::registry::{Churn, ChurnCounters, CoarseClock, Counter, FoldTarget, MessageCounters};
use super::reply::ReplyRegistry;
use super::route::{Dest, RouteScratch};
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use warren_exchanges::{ExchangeType, RouteInput, Table};
use warren_queues::{
    DeadCounters, Disk, DiskError, DiskStore, MemoryStore, Message, MessageStore, PriorityStore,
    StoredRef,
};

pub struct Vhost {
    pub name: String,
    exchanges: DashMap<String, Arc<Exchange>>,
    queues: DashMap<String, Arc<Queue>>,
    noack_window: u32,
    /// The broker's `consumer_timeout` (ms; 0: none), for queues that set
    /// none of their own.
    /// Shared with its queues (see [`Vhost::consumer_timeout_cell`]).
    consumer_timeout: Arc<AtomicU64>,
    persist: Option<Arc<Persistence>>,
    /// The broker-wide message counters.
    stats: Arc<MessageCounters>,
    /// The broker-wide dead-letter counters (its queues count into them).
    dead: Arc<DeadCounters>,
    clock: Arc<CoarseClock>,
    /// The broker-wide churn counters (queues declared, created, deleted).
    churn: Arc<ChurnCounters>,
    /// Set first thing when the vhost is deleted. Connections and HTTP
    /// handlers may still hold this `Arc<Vhost>`; from then on they can
    /// neither declare nor bind in it, so no stored record outlives the
    /// deletion's sweep (one would bring the vhost back at the next start).
    deleted: AtomicBool,
    /// Declares and binds hold it shared while they check `deleted` and
    /// write their records; [`Vhost::mark_deleted`] takes it exclusively to
    /// set the flag, so once that returns no write is in flight and none can
    /// start: the sweep after it sees every record. Always taken before any
    /// other lock of the vhost, never held across `.await`.
    gate: RwLock<()>,
    /// The vhost's policies and operator policies. Queues and exchanges
    /// read it (under their own policy lock) when it or they change.
    policies: RwLock<PolicySet>,
    /// The vhost's `max-queues` limit ([`NO_LIMIT`]: none), set by the
    /// broker from the stored vhost limits.
    queue_limit: AtomicU64,
    /// Itself, for its queues (dead-lettering, x-expires): set by
    /// [`Vhost::new_shared`].
    me: Weak<Vhost>,
    /// Direct reply-to consumers of this vhost's channels.
    pub replies: ReplyRegistry,
    /// Held around a super stream's creation or deletion (its sequence of
    /// declarations, binds and removals), so two racing calls do not
    /// interleave: the second sees what the first made. Async, as callers
    /// wait for it on the runtime; never held across disk I/O (the
    /// declarations only queue their definition writes).
    pub(super) super_streams: tokio::sync::Mutex<()>,
}

const NO_LIMIT: u64 = u64::MAX;

/// Message details routing may read beyond the routing key.
#[derive(Default, Clone, Copy)]
pub struct PublishDetails<'a> {
    pub headers: Option<&'a Table>,
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub timestamp: Option<u64>,
    /// CC and BCC routing keys.
    pub extra_keys: &'a [String],
    /// The message's own TTL (its `expiration` property), in ms.
    pub expiration: Option<u64>,
}

/// What a publish did.
pub struct Published {
    /// Queues that took the message.
    pub routed: usize,
    /// The message was written to disk: confirm it after the next flush.
    pub written: bool,
    /// A queue it reached asks publishers to pause (flow control).
    pub blocked_by: Option<Arc<Queue>>,
    pub message: Arc<Message>,
    /// A queue's length limit refused it (reject-publish): a confirming
    /// publisher gets a nack.
    pub rejected: bool,
}

/// What a declare asked for and what the broker answered.
pub struct QueueDeclared {
    pub queue: Arc<Queue>,
    pub message_count: usize,
    pub consumer_count: usize,
}

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT: u64 = 1_800_000;

impl Vhost {
    /// The broker's consumer timeout for queues without their own (ms;
    /// 0: none).
    pub fn set_consumer_timeout(&self, ms: u64) {
        self.consumer_timeout.store(ms, Ordering::Relaxed);
    }

    pub fn consumer_timeout(&self) -> u64 {
        self.consumer_timeout.load(Ordering::Relaxed)
    }

    /// The broker's consumer timeout as one shared cell: queues and
    /// channels read it with one atomic load, no `Weak` upgrade.
    pub fn consumer_timeout_cell(&self) -> Arc<AtomicU64> {
        self.consumer_timeout.clone()
    }

    pub fn new(
        name: &str,
        noack_window: u32,
        persist: Option<Arc<Persistence>>,
        stats: Arc<MessageCounters>,
        dead: Arc<DeadCounters>,
        clock: Arc<CoarseClock>,
        churn: Arc<ChurnCounters>,
    ) -> Self {
        let v = Vhost {
            name: name.to_owned(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            noack_window,
            consumer_timeout: Arc::new(AtomicU64::new(DEFAULT_CONSUMER_TIMEOUT)),
            persist,
            stats,
            dead,
            clock,
            churn,
            deleted: AtomicBool::new(false),
            gate: RwLock::new(()),
            policies: RwLock::new(PolicySet::default()),
            queue_limit: AtomicU64::new(NO_LIMIT),
            me: Weak::new(),
            replies: ReplyRegistry::default(),
            super_streams: tokio::sync::Mutex::new(()),
        };
        let durable = ExchangeOptions {
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Table::default(),
        };
        let builtin = |name: &str, kind| {
            Arc::new(
                Exchange::new(name.to_owned(), kind, durable.clone())
                    .expect("built-in exchanges have no arguments"),
            )
        };
        v.exchanges
            .insert(String::new(), builtin("", ExchangeKind::Default));
        for (name, t) in [
            ("amq.direct", ExchangeType::Direct),
            ("amq.fanout", ExchangeType::Fanout),
            ("amq.topic", ExchangeType::Topic),
            ("amq.headers", ExchangeType::Headers),
            ("amq.match", ExchangeType::Headers),
        ] {
            v.exchanges
                .insert(name.to_owned(), builtin(name, ExchangeKind::Typed(t)));
        }
        v
    }

    /// Sets the vhost's `max-queues` limit (`None`: no limit).
    pub fn set_queue_limit(&self, limit: Option<u64>) {
        self.queue_limit
            .store(limit.unwrap_or(NO_LIMIT), Ordering::Relaxed);
    }

    /// RabbitMQ's refusal of a new queue past `max-queues` (its channel
    /// checks it; so do AMQP and the HTTP API here, not definitions
    /// imports, which RabbitMQ does not check either).
    fn check_queue_limit(&self, name: &str) -> Result<()> {
        let limit = self.queue_limit.load(Ordering::Relaxed);
        if limit == NO_LIMIT || (self.queues.len() as u64) < limit {
            return Ok(());
        }
        Err(BrokerError::new(
            ErrorKind::PreconditionFailed,
            format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                self.name
            ),
        ))
    }

    /// [`Vhost::new`], shared, knowing itself (its queues hold it weakly).
    pub fn new_shared(
        name: &str,
        noack_window: u32,
        persist: Option<Arc<Persistence>>,
        stats: Arc<MessageCounters>,
        dead: Arc<DeadCounters>,
        clock: Arc<CoarseClock>,
        churn: Arc<ChurnCounters>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let mut v = Self::new(name, noack_window, persist, stats, dead, clock, churn);
            v.me = me.clone();
            v
        })
    }

    pub(crate) fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.persist.as_ref()
    }

    /// Whether the vhost was deleted (its holders see it go).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The vhost is being deleted: refuses every later declare and bind,
    /// and waits for those under way to finish their writes.
    pub(crate) fn mark_deleted(&self) {
        let _excl = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.deleted.store(true, Ordering::Release);
    }

    /// Held while a declare or bind changes the vhost and writes its
    /// records; refused once the vhost is deleted.
    fn writable(&self) -> Result<RwLockReadGuard<'_, ()>> {
        let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        if self.is_deleted() {
            return Err(BrokerError::vhost_deleted(&self.name));
        }
        Ok(g)
    }

    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.value().clone())
            .ok_or_else(|| BrokerError::no_exchange(name, &self.name))
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.value().clone()).collect()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|e| e.value().clone()).collect()
    }

    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        passive: bool,
        opts: ExchangeOptions,
    ) -> Result<Arc<Exchange>> {
        if passive {
            if name.is_empty() {
                return Err(BrokerError::default_exchange());
            }
            return self.exchange(name);
        }
        let _live = self.writable()?;
        check_arguments(&opts.arguments)?;
        let Some(t) = ExchangeType::parse(kind) else {
            return Err(BrokerError::new(
                ErrorKind::CommandInvalid,
                format!("unknown exchange type '{kind}'"),
            ));
        };
        if name.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        let ex = match self.exchanges.entry(name.to_owned()) {
            dashmap::Entry::Occupied(e) => e.get().clone(),
            dashmap::Entry::Vacant(v) => {
                if name.starts_with("amq.") {
                    return Err(BrokerError::new(
                        ErrorKind::AccessRefused,
                        format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
                    ));
                }
                let ex = Exchange::new(name.to_owned(), ExchangeKind::Typed(t), opts.clone())
                    .map_err(|e| BrokerError::new(ErrorKind::PreconditionFailed, e.to_string()))?;
                let ex = Arc::new(ex);
                v.insert(ex.clone());
                self.refresh_exchange_policies(&ex);
                if let (true, Some(p)) = (opts.durable, &self.persist) {
                    p.put_exchange(&ExchangeDef {
                        vhost: self.name.clone(),
                        name: name.to_owned(),
                        kind: t.as_str().to_owned(),
                        auto_delete: opts.auto_delete,
                        internal: opts.internal,
                        arguments: opts.arguments.clone(),
                    });
                }
                return Ok(ex);
            }
        };
        let cur_kind = ex.kind.as_str();
        let ineq = |arg: &str, got: String, cur: String| {
            Err(BrokerError::inequivalent(
                arg, "exchange", name, &self.name, &got, &cur,
            ))
        };
        if cur_kind != t.as_str() {
            return ineq("type", t.as_str().into(), cur_kind.into());
        }
        if ex.opts.durable != opts.durable {
            return ineq(
                "durable",
                opts.durable.to_string(),
                ex.opts.durable.to_string(),
            );
        }
        if ex.opts.auto_delete != opts.auto_delete {
            return ineq(
                "auto_delete",
                opts.auto_delete.to_string(),
                ex.opts.auto_delete.to_string(),
            );
        }
        if ex.opts.internal != opts.internal {
            return ineq(
                "internal",
                opts.internal.to_string(),
                ex.opts.internal.to_string(),
            );
        }
        Ok(ex)
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        if name.starts_with("amq.") {
            return Err(BrokerError::new(
                ErrorKind::AccessRefused,
                format!(
                    "deletion of system exchange '{name}' in vhost '{}' not allowed",
                    self.name
                ),
            ));
        }
        let Some(ex) = self.exchanges.get(name).map(|e| e.value().clone()) else {
            // RabbitMQ: deleting a missing exchange is not an error.
            return Ok(());
        };
        if if_unused && !ex.router().is_empty() {
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!("exchange '{name}' in vhost '{}' in use", self.name),
            ));
        }
        self.remove_exchange(&ex);
        Ok(())
    }

    /// A fresh server-generated queue name, `amq.gen-` and 22 URL-safe characters.
    fn generate_queue_name(&self) -> String {
        format!("amq.gen-{}", super::random_token(22))
    }

    /// Looks a queue up for an operation by `conn`, honouring exclusivity.
    pub fn queue_for(&self, name: &str, conn: u64) -> Result<Arc<Queue>> {
        let q = self
            .queues
            .get(name)
            .map(|e| e.value().clone())
            .ok_or_else(|| BrokerError::no_queue(name, &self.name))?;
        match q.owner {
            Some(owner) if owner != conn => Err(BrokerError::locked(name, &self.name)),
            _ => Ok(q),
        }
    }

    /// Looks a queue up to publish to it (exclusivity does not apply).
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|e| e.value().clone())
    }

    /// Declares a queue with no permission check (definitions import,
    /// internal queues); callers go through [`Vhost::declare_queue_as`].
    pub fn declare_queue(
        &self,
        name: &str,
        passive: bool,
        opts: QueueOptions,
        conn: u64,
    ) -> Result<QueueDeclared> {
        self.declare_queue_checked(name, passive, opts, conn, None)
    }

    /// Declares a queue for a caller: a non-passive declare needs
    /// configure on the final name (a server-generated one too, as
    /// RabbitMQ checks it), see [`Caller::check_queue_declare`].
    pub fn declare_queue_as(
        &self,
        name: &str,
        passive: bool,
        opts: QueueOptions,
        caller: &Caller,
    ) -> Result<QueueDeclared> {
        self.declare_queue_checked(name, passive, opts, caller.conn, Some(caller))
    }

    fn declare_queue_checked(
        &self,
        name: &str,
        passive: bool,
        opts: QueueOptions,
        conn: u64,
        caller: Option<&Caller>,
    ) -> Result<QueueDeclared> {
        let declared = |q: Arc<Queue>| {
            let (mut m, c) = q.counts();
            if q.stream().is_some() {
                // RabbitMQ's declare-ok counts no messages for a stream.
                m = 0;
            }
            Ok(QueueDeclared {
                queue: q,
                message_count: m,
                consumer_count: c,
            })
        };
        if passive {
            let q = self.queue_for(name, conn)?;
            // A declare, passive too, is a use (x-expires), as in RabbitMQ.
            q.touch();
            return declared(q);
        }
        let _live = self.writable()?;
        check_arguments(&opts.arguments)?;
        let generated = name.is_empty();
        let name = if generated {
            self.generate_queue_name()
        } else {
            name.to_owned()
        };
        let stream = match super::stream::is_stream(&opts.arguments) {
            true => Some(super::stream::check_declare(&name, &self.name, &opts)?),
            false => None,
        };
        let limits = match stream {
            Some(_) => Default::default(),
            None => super::queue_args::queue_limits(&name, &self.name, &opts.arguments)?,
        };
        super::consumer_args::single_active_consumer(&name, &self.name, &opts.arguments)?;
        if let Some(c) = caller {
            // RabbitMQ refuses a reserved name before checking permissions.
            if !generated && name.starts_with("amq.") && self.queue(&name).is_none() {
                return Err(reserved_queue_name(&name));
            }
            c.check_queue_declare(self, &name, &opts.arguments)?;
            if self.queue(&name).is_none() {
                self.check_queue_limit(&name)?;
            }
        }
        let existing = match self.queues.entry(name.clone()) {
            dashmap::Entry::Occupied(e) => e.get().clone(),
            dashmap::Entry::Vacant(v) => {
                if name.starts_with("amq.") && !generated {
                    return Err(reserved_queue_name(&name));
                }
                let owner = opts.exclusive.then_some(conn);
                if let Some(settings) = stream {
                    let q = self.new_stream(&name, opts, settings)?;
                    v.insert(q.clone());
                    self.refresh_queue_policies(&q);
                    self.churn.add(Churn::QueueCreated);
                    self.churn.add(Churn::QueueDeclared);
                    return declared(q);
                }
                // Exclusive queues never outlive their connection, so they
                // are never written to disk, durable or not.
                let (store, disk_id): (Box<dyn MessageStore>, _) =
                    match (&self.persist, opts.durable && !opts.exclusive) {
                        (Some(p), true) => {
                            let id = p.new_queue_id().map_err(|e| {
                                BrokerError::new(ErrorKind::InternalError, e.to_string())
                            })?;
                            p.put_queue(&QueueDef {
                                vhost: self.name.clone(),
                                name: name.clone(),
                                id,
                                auto_delete: opts.auto_delete,
                                arguments: opts.arguments.clone(),
                            });
                            let store = durable_store(p, id, &opts.arguments, Default::default());
                            (store, Some(id))
                        }
                        (p, _) => (
                            memory_store(p.as_ref().map(|p| p.disk.clone()), &opts.arguments),
                            None,
                        ),
                    };
                let mut q = Queue::new(
                    name.clone(),
                    self.name.clone(),
                    opts,
                    owner,
                    store,
                    disk_id,
                    self.noack_window,
                    self.stats.clone(),
                    self.clock.clone(),
                )
                .with_dead_counters(&self.dead);
                match (disk_id, &self.persist) {
                    (Some(_), Some(p)) => q = q.with_durable_budget(p.queue_memory_bytes),
                    (None, Some(p)) => q = q.with_paging(p.queue_memory_bytes),
                    _ => {}
                }
                let q = Arc::new(q.with_limits(limits, self.me.clone()));
                q.start_timers();
                v.insert(q.clone());
                // After the insert: a policy set meanwhile re-matches it too.
                self.refresh_queue_policies(&q);
                self.churn.add(Churn::QueueCreated);
                self.churn.add(Churn::QueueDeclared);
                return declared(q);
            }
        };
        // Another connection's exclusive queue, or a redeclare whose
        // exclusive flag differs (even by the owner): 405, as RabbitMQ.
        if existing.owner.is_some_and(|o| o != conn) || existing.owner.is_some() != opts.exclusive {
            return Err(BrokerError::locked(&name, &self.name));
        }
        let ineq = |arg: &str, got: bool, cur: bool| {
            Err(BrokerError::inequivalent(
                arg,
                "queue",
                &name,
                &self.name,
                &got.to_string(),
                &cur.to_string(),
            ))
        };
        if existing.durable != opts.durable {
            return ineq("durable", opts.durable, existing.durable);
        }
        if existing.auto_delete != opts.auto_delete {
            return ineq("auto_delete", opts.auto_delete, existing.auto_delete);
        }
        check_queue_args(&existing, &opts.arguments)?;
        if existing.stream().is_some() {
            check_args_equal(
                &existing,
                &opts.arguments,
                super::stream::CHECKED_STREAM_ARGS,
            )?;
        }
        self.churn.add(Churn::QueueDeclared);
        existing.touch();
        declared(existing)
    }

    /// Deletes a queue; returns how many ready messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> Result<usize> {
        let q = match self.queue_for(name, conn) {
            Ok(q) => q,
            // RabbitMQ: deleting a missing queue is not an error.
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let (messages, consumers) = q.counts();
        if if_unused && consumers > 0 {
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!("queue '{name}' in vhost '{}' in use", self.name),
            ));
        }
        if if_empty && messages > 0 {
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!("queue '{name}' in vhost '{}' not empty", self.name),
            ));
        }
        Ok(self.remove_queue(&q))
    }

    /// Unconditionally removes a queue (deleted, auto-deleted, owner gone).
    pub fn remove_queue(&self, q: &Arc<Queue>) -> usize {
        let removed = self
            .queues
            .remove_if(&q.name, |_, v| Arc::ptr_eq(v, q))
            .is_some();
        if !removed {
            return 0;
        }
        // Before the records and bindings are swept: binds and consumes
        // racing this check it afterwards (see `bind_queue`).
        q.set_deleted();
        self.churn.add(Churn::QueueDeleted);
        if let (Some(_), Some(p)) = (q.disk_id, &self.persist) {
            p.remove_queue(&self.name, &q.name);
        }
        let d = Dest::Queue(QueueRef(q.clone()));
        for ex in self.exchanges() {
            if ex.unbind_destination(&d) > 0 {
                self.auto_delete_if_unused(&ex);
            }
        }
        q.mark_deleted()
    }

    /// The vhost is being deleted: every queue (with its messages) and
    /// every exchange (amq.* ones included) goes, with their bindings and
    /// stored definitions.
    pub(crate) fn remove_everything(&self) {
        for q in self.queues() {
            self.remove_queue(&q);
        }
        for ex in self.exchanges() {
            self.remove_exchange(&ex);
        }
    }

    /// Deletes the exclusive queues a closed connection owned.
    pub fn connection_closed(&self, conn: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .filter(|e| e.value().owner == Some(conn))
            .map(|e| e.value().clone())
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }

    pub fn purge_queue(&self, name: &str, conn: u64) -> Result<usize> {
        let q = self.queue_for(name, conn)?;
        q.check_supported("queue.purge")?;
        Ok(q.purge())
    }

    fn bindable_exchange(&self, exchange: &str) -> Result<Arc<Exchange>> {
        let ex = self.exchange(exchange)?;
        if ex.kind == ExchangeKind::Default {
            return Err(BrokerError::default_exchange());
        }
        Ok(ex)
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Table,
        conn: u64,
    ) -> Result<()> {
        let _live = self.writable()?;
        check_arguments(&arguments)?;
        let q = self.queue_for(queue, conn)?;
        let ex = self.bindable_exchange(exchange)?;
        let durable = ex.opts.durable && q.disk_id.is_some();
        let def =
            durable.then(|| self.binding_def(exchange, "queue", queue, routing_key, &arguments));
        let dest = Dest::Queue(QueueRef(q.clone()));
        let added = ex
            .bind(dest.clone(), routing_key, arguments.clone())
            .map_err(|e| BrokerError::new(ErrorKind::PreconditionFailed, e.to_string()))?;
        if let (true, Some(def), Some(p)) = (added, &def, &self.persist) {
            p.put_binding(def);
        }
        // A deletion of either end sets its flag, then sweeps bindings and
        // records. Checked after ours are in: either the sweep saw them,
        // or we see the flag and take them back ourselves.
        let gone = if q.is_deleted() {
            Some(BrokerError::no_queue(queue, &self.name))
        } else if ex.is_deleted() {
            Some(BrokerError::no_exchange(exchange, &self.name))
        } else {
            None
        };
        if let Some(e) = gone {
            if added {
                self.undo_binding(&ex, &dest, routing_key, &arguments, def.as_ref());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes back a binding (and its record) made while one of its ends
    /// was being deleted.
    fn undo_binding(
        &self,
        src: &Arc<Exchange>,
        dest: &Dest,
        key: &str,
        args: &Table,
        def: Option<&BindingDef>,
    ) {
        src.unbind(dest, key, args);
        // Whether or not the sweep already took the binding from the
        // router, it may have swept the records before ours was written.
        if let (Some(def), Some(p)) = (def, &self.persist) {
            p.remove_binding(def);
        }
        if !src.is_deleted() {
            self.auto_delete_if_unused(src);
        }
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &Table,
        conn: u64,
    ) -> Result<()> {
        // Unbinding what is gone succeeds, as in RabbitMQ 3.10: cleanup
        // code unbinds auto-delete queues that have just vanished.
        if exchange.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        let q = match self.queue_for(queue, conn) {
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        let Ok(ex) = self.exchange(exchange) else {
            return Ok(());
        };
        let durable = ex.opts.durable && q.disk_id.is_some();
        if ex.unbind(&Dest::Queue(QueueRef(q)), routing_key, arguments) {
            if let (true, Some(p)) = (durable, &self.persist) {
                p.remove_binding(&self.binding_def(
                    exchange,
                    "queue",
                    queue,
                    routing_key,
                    arguments,
                ));
            }
            self.auto_delete_if_unused(&ex);
        }
        Ok(())
    }

    /// Counts one publish into the vhost and `ex` (folded per connection
    /// turn, see [`RouteScratch`]).
    fn count_publish(&self, ex: &Arc<Exchange>, scratch: &mut RouteScratch) {
        let stats = &self.stats;
        scratch.counts.add(
            stats,
            || FoldTarget::Counters(stats.clone()),
            Counter::Publish,
            1,
        );
        scratch.counts.add(
            &ex.stats,
            || FoldTarget::Exchange(ex.clone()),
            Counter::PublishIn,
            1,
        );
    }

    /// Routes a message (its routing key, then each CC/BCC key) and
    /// enqueues it once on every queue reached. A persistent message that
    /// reaches a durable queue is written to disk once for all of them.
    pub fn publish(
        &self,
        ex: &Arc<Exchange>,
        message: Message,
        details: PublishDetails<'_>,
        scratch: &mut RouteScratch,
    ) -> std::result::Result<Published, DiskError> {
        self.count_publish(ex, scratch);
        scratch.clear();
        {
            let input = RouteInput {
                routing_key: message.routing_key(),
                headers: details.headers,
                message_id: details.message_id,
                correlation_id: details.correlation_id,
                timestamp: details.timestamp,
            };
            self.route(ex, &input, scratch);
            for key in details.extra_keys {
                let input = RouteInput {
                    routing_key: key,
                    ..input
                };
                self.route(ex, &input, scratch);
            }
        }
        scratch.dedup();
        self.enqueue_routed(ex, message, details.expiration, scratch)
    }

    /// Republishes a message a queue dead-lettered to exchange `ex`, to
    /// every queue it reaches except those that would close a cycle of
    /// automatic deaths (see [`super::dead_letter::is_cycle`]).
    pub(crate) fn publish_dead(
        &self,
        ex: &Arc<Exchange>,
        message: Message,
        dl: &super::dead_letter::DeadLettered,
        reason: warren_queues::DeadReason,
        scratch: &mut RouteScratch,
    ) -> std::result::Result<Published, DiskError> {
        scratch.clear();
        {
            let input = RouteInput {
                routing_key: &dl.routing_key,
                headers: Some(&dl.headers),
                message_id: dl.message_id.as_deref(),
                correlation_id: dl.correlation_id.as_deref(),
                timestamp: dl.timestamp,
            };
            self.route(ex, &input, scratch);
            for key in &dl.extra_keys {
                let input = RouteInput {
                    routing_key: key,
                    ..input
                };
                self.route(ex, &input, scratch);
            }
        }
        scratch.dedup();
        scratch
            .queues
            .retain(|q| !super::dead_letter::is_cycle(&dl.headers, &q.0.name, reason));
        self.enqueue_routed(ex, message, None, scratch)
    }

    /// Writes a routed message to disk once (when persistent and a durable
    /// queue took it) and enqueues it on every queue in `scratch.queues`.
    fn enqueue_routed(
        &self,
        ex: &Arc<Exchange>,
        mut message: Message,
        expiration: Option<u64>,
        scratch: &mut RouteScratch,
    ) -> std::result::Result<Published, DiskError> {
        if self.is_deleted() {
            // Its queues are gone; nothing may be written for it any more.
            scratch.queues.clear();
        }
        let mut written = false;
        if let (true, Some(p)) = (message.persistent, &self.persist) {
            let durable = scratch
                .queues
                .iter()
                .filter(|q| q.0.disk_id.is_some() && q.0.stream().is_none())
                .count();
            if durable > 0 {
                message.set_stored(Some(p.disk.put_body(&message, durable)?));
                written = true;
            }
        }
        // A message that may expire stays in memory: expiry never reads a
        // body under the queue's lock.
        let paged = match expiration {
            None => self.page_out(&message, scratch),
            Some(_) => None,
        };
        let message = Arc::new(message);
        let mut blocked_by = None;
        let mut rejected = false;
        for (i, q) in scratch.queues.iter().enumerate() {
            let outcome = match paged.filter(|(_, mask)| i < 64 && mask & (1 << i) != 0) {
                Some((at, _)) => {
                    let outcome =
                        q.0.publish_paged(at, message.size() as u32, message.priority());
                    if outcome != super::queue::PublishOutcome::Queued {
                        // Its transient record will not be held by it.
                        if let Some(p) = &self.persist {
                            p.disk.release_transient(at.seg, 1);
                        }
                    }
                    outcome
                }
                None => q.0.publish(message.clone(), expiration),
            };
            if outcome != super::queue::PublishOutcome::Queued {
                rejected |= outcome == super::queue::PublishOutcome::Refused;
                // Deleted as we routed to it, or refused: the record it
                // was counted for will not be held by it.
                if let (Some(r), Some(_), None, Some(p)) =
                    (message.stored(), q.0.disk_id, q.0.stream(), &self.persist)
                {
                    p.disk.forget_ref(r);
                }
            } else if q.0.stream().is_some() {
                // In the stream's log, synced by the next flush: a confirm
                // waits for it.
                written = true;
            }
            scratch.counts.add(
                &q.0.stats,
                || FoldTarget::Queue(q.0.clone()),
                Counter::Publish,
                1,
            );
            if blocked_by.is_none() && q.0.flow_blocked() {
                blocked_by = Some(q.0.clone());
            }
        }
        let routed = scratch.queues.len();
        if routed > 0 {
            // RabbitMQ's publish_out: one per queue reached.
            scratch.counts.add(
                &ex.stats,
                || FoldTarget::Exchange(ex.clone()),
                Counter::PublishOut,
                routed as u64,
            );
        }
        scratch.queues.clear();
        Ok(Published {
            routed,
            written,
            blocked_by,
            message,
            rejected,
        })
    }

    /// A reply to a direct reply-to requester: the default exchange with
    /// an `amq.rabbitmq.reply-to.<token>` routing key. It goes straight to
    /// the requester's connection, no queue; it counts as routed whether or
    /// not the requester is still there (RabbitMQ 4.2: a mandatory reply is
    /// never returned). CC and BCC keys, if any, route as usual.
    pub fn publish_reply(
        &self,
        ex: &Arc<Exchange>,
        message: Message,
        details: PublishDetails<'_>,
        scratch: &mut RouteScratch,
    ) -> std::result::Result<Published, DiskError> {
        let mut published = if details.extra_keys.is_empty() {
            self.count_publish(ex, scratch);
            Published {
                routed: 0,
                written: false,
                blocked_by: None,
                message: Arc::new(message),
                rejected: false,
            }
        } else {
            self.publish(ex, message, details, scratch)?
        };
        if !self.is_deleted() {
            self.replies.send(&published.message);
        }
        published.routed += 1;
        Ok(published)
    }

    /// Writes `message`'s body once to the disk's transient area for the
    /// routed queues (the first 64) that hold it in memory only (any
    /// queue, for a transient message) and are past their memory budget
    /// (see [`Queue::pages`]), before any queue's lock is taken. Returns
    /// where, and which of `scratch.queues` take it from there; `None`:
    /// every queue holds it in memory (a failed write too, logged).
    fn page_out(&self, message: &Message, scratch: &RouteScratch) -> Option<(StoredRef, u64)> {
        let p = self.persist.as_ref()?;
        let mut mask = 0u64;
        for (i, q) in scratch.queues.iter().take(64).enumerate() {
            // A persistent message reaching a durable queue was written to
            // the durable store already; that queue pages it from there.
            let durable_copy = message.persistent && q.0.disk_id.is_some();
            if q.0.pages() && !durable_copy {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return None;
        }
        match p.disk.put_transient(message, mask.count_ones() as usize) {
            Ok(at) => Some((at, mask)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot page a body out; keeping it in memory");
                None
            }
        }
    }

    fn binding_def(
        &self,
        source: &str,
        dtype: &str,
        dest: &str,
        key: &str,
        args: &Table,
    ) -> BindingDef {
        BindingDef {
            vhost: self.name.clone(),
            source: source.to_owned(),
            destination_type: dtype.to_owned(),
            destination: dest.to_owned(),
            routing_key: key.to_owned(),
            arguments: args.clone(),
        }
    }

    /// Start-up: a durable exchange from the definitions.
    pub(crate) fn restore_exchange(&self, d: &ExchangeDef) {
        let Some(t) = ExchangeType::parse(&d.kind) else {
            tracing::warn!(exchange = %d.name, kind = %d.kind, "skipping an exchange of unknown type");
            return;
        };
        let opts = ExchangeOptions {
            durable: true,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: d.arguments.clone(),
        };
        match Exchange::new(d.name.clone(), ExchangeKind::Typed(t), opts) {
            Ok(ex) => {
                let ex = Arc::new(ex);
                self.exchanges.insert(d.name.clone(), ex.clone());
                self.refresh_exchange_policies(&ex);
            }
            Err(e) => {
                tracing::warn!(exchange = %d.name, error = %e, "skipping an exchange with bad arguments")
            }
        }
    }

    /// A new stream queue: its definition stored, its (empty) log ready.
    fn new_stream(
        &self,
        name: &str,
        opts: QueueOptions,
        settings: warren_queues::stream::StreamSettings,
    ) -> Result<Arc<Queue>> {
        let Some(p) = &self.persist else {
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "stream queue '{name}' in vhost '{}' needs a data directory (Warren runs without one)",
                    self.name
                ),
            ));
        };
        let id = p
            .new_queue_id()
            .map_err(|e| BrokerError::new(ErrorKind::InternalError, e.to_string()))?;
        p.put_queue(&QueueDef {
            vhost: self.name.clone(),
            name: name.to_owned(),
            id,
            auto_delete: false,
            arguments: opts.arguments.clone(),
        });
        let stream = super::stream::StreamQueue::create(p.clone(), id, settings);
        Ok(Arc::new(self.stream_queue(name, opts, id, stream)))
    }

    fn stream_queue(
        &self,
        name: &str,
        opts: QueueOptions,
        id: u64,
        stream: super::stream::StreamQueue,
    ) -> Queue {
        Queue::new(
            name.to_owned(),
            self.name.clone(),
            opts,
            None,
            Box::<MemoryStore>::default(),
            Some(id),
            self.noack_window,
            self.stats.clone(),
            self.clock.clone(),
        )
        .with_stream(stream)
    }

    /// Start-up: a stream queue, its log recovered from disk.
    fn restore_stream(&self, d: &QueueDef, p: &Arc<Persistence>) {
        let opts = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: d.arguments.clone(),
        };
        let settings = match super::stream::check_declare(&d.name, &self.name, &opts) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(queue = %d.name, error = %e.text, "skipping a stream with bad arguments");
                return;
            }
        };
        match super::stream::StreamQueue::open(p.clone(), d.id, settings) {
            Ok(stream) => {
                let q = Arc::new(self.stream_queue(&d.name, opts, d.id, stream));
                self.queues.insert(d.name.clone(), q.clone());
                self.refresh_queue_policies(&q);
            }
            Err(e) => {
                tracing::error!(queue = %d.name, vhost = %self.name, error = %e, "cannot open a stream's log; it is not served")
            }
        }
    }

    /// Start-up: a durable queue with its recovered store.
    pub(crate) fn restore_queue(&self, d: &QueueDef, store: Box<dyn MessageStore>) {
        if let (true, Some(p)) = (super::stream::is_stream(&d.arguments), &self.persist) {
            return self.restore_stream(d, &p.clone());
        }
        let opts = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
        };
        let q = Queue::new(
            d.name.clone(),
            self.name.clone(),
            opts,
            None,
            store,
            Some(d.id),
            self.noack_window,
            self.stats.clone(),
            self.clock.clone(),
        )
        .with_dead_counters(&self.dead);
        let q = match &self.persist {
            Some(p) => q.with_durable_budget(p.queue_memory_bytes),
            None => q,
        };
        // Stored arguments were valid when declared.
        let limits =
            super::queue_args::queue_limits(&d.name, &self.name, &d.arguments).unwrap_or_default();
        let q = Arc::new(q.with_limits(limits, self.me.clone()));
        q.start_timers();
        self.queues.insert(d.name.clone(), q.clone());
        self.refresh_queue_policies(&q);
    }

    // ---- policies ----

    fn policy_set(&self) -> std::sync::RwLockReadGuard<'_, PolicySet> {
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The vhost's policies (or operator policies), by name.
    pub fn policies(&self, kind: PolicyKind) -> Vec<Arc<Policy>> {
        self.policy_set().list(kind)
    }

    pub fn policy(&self, kind: PolicyKind, name: &str) -> Option<Arc<Policy>> {
        self.policy_set().get(kind, name)
    }

    fn policy_doc(kind: PolicyKind) -> Doc {
        match kind {
            PolicyKind::Policy => Doc::Policy,
            PolicyKind::Operator => Doc::OperatorPolicy,
        }
    }

    /// Adds or replaces a policy (stored, if the broker has a data
    /// directory) and applies it: every queue and exchange is matched
    /// again at once. Returns whether one of that name existed.
    pub fn put_policy(&self, kind: PolicyKind, p: Policy) -> Result<bool> {
        let _live = self.writable()?;
        let existed = {
            let mut set = self.policies.write().unwrap_or_else(|e| e.into_inner());
            if let Some(store) = &self.persist {
                store.put_doc(Self::policy_doc(kind), &[&self.name, &p.name], p.to_json());
            }
            set.put(kind, Arc::new(p))
        };
        self.reapply_policies();
        Ok(existed)
    }

    /// Deletes a policy and re-matches every queue and exchange; false if
    /// there was none of that name.
    pub fn delete_policy(&self, kind: PolicyKind, name: &str) -> Result<bool> {
        let _live = self.writable()?;
        let existed = {
            let mut set = self.policies.write().unwrap_or_else(|e| e.into_inner());
            let existed = set.remove(kind, name);
            if let (true, Some(store)) = (existed, &self.persist) {
                store.remove_doc(Self::policy_doc(kind), &[&self.name, name]);
            }
            existed
        };
        if existed {
            self.reapply_policies();
        }
        Ok(existed)
    }

    /// Start-up: a stored policy (matched against objects by
    /// [`Vhost::reapply_policies`] once all are in).
    pub(crate) fn install_policy(&self, kind: PolicyKind, p: Policy) {
        self.policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(kind, Arc::new(p));
    }

    /// Matches every queue and exchange against the current policies;
    /// those whose policies changed are told (RabbitMQ's
    /// `update_matched_objects`).
    pub(crate) fn reapply_policies(&self) {
        for q in self.queues() {
            self.refresh_queue_policies(&q);
        }
        for x in self.exchanges() {
            self.refresh_exchange_policies(&x);
        }
    }

    fn refresh_queue_policies(&self, q: &Arc<Queue>) {
        q.refresh_policies(|| self.policy_set().matching(Target::Queue, &q.name));
    }

    fn refresh_exchange_policies(&self, x: &Exchange) {
        x.refresh_policies(|| self.policy_set().matching(Target::Exchange, &x.name));
    }

    /// Start-up: a binding between durable ends; false if an end is gone.
    pub(crate) fn restore_binding(&self, d: &BindingDef) -> bool {
        let Ok(src) = self.exchange(&d.source) else {
            return false;
        };
        let dest = if d.destination_type == "queue" {
            match self.queue(&d.destination) {
                Some(q) => Dest::Queue(QueueRef(q)),
                None => return false,
            }
        } else {
            match self.exchange(&d.destination) {
                Ok(e) => Dest::Exchange(e),
                Err(_) => return false,
            }
        };
        src.bind(dest, &d.routing_key, d.arguments.clone()).is_ok()
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: Table,
    ) -> Result<()> {
        let _live = self.writable()?;
        check_arguments(&arguments)?;
        let dst = self.bindable_exchange(destination)?;
        let src = self.bindable_exchange(source)?;
        let durable = src.opts.durable && dst.opts.durable;
        let def = durable
            .then(|| self.binding_def(source, "exchange", destination, routing_key, &arguments));
        let dest = Dest::Exchange(dst.clone());
        let added = src
            .bind(dest.clone(), routing_key, arguments.clone())
            .map_err(|e| BrokerError::new(ErrorKind::PreconditionFailed, e.to_string()))?;
        if let (true, Some(def), Some(p)) = (added, &def, &self.persist) {
            p.put_binding(def);
        }
        // As in `bind_queue`: a deletion racing us either swept this
        // binding and its record, or we see its flag and undo them.
        let gone = if dst.is_deleted() {
            Some(destination)
        } else if src.is_deleted() {
            Some(source)
        } else {
            None
        };
        if let Some(name) = gone {
            if added {
                self.undo_binding(&src, &dest, routing_key, &arguments, def.as_ref());
            }
            return Err(BrokerError::no_exchange(name, &self.name));
        }
        Ok(())
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &Table,
    ) -> Result<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(BrokerError::default_exchange());
        }
        // Missing exchanges: unbind-ok, as in RabbitMQ 3.10.
        let (Ok(dst), Ok(src)) = (self.exchange(destination), self.exchange(source)) else {
            return Ok(());
        };
        let durable = src.opts.durable && dst.opts.durable;
        if src.unbind(&Dest::Exchange(dst), routing_key, arguments) {
            if let (true, Some(p)) = (durable, &self.persist) {
                p.remove_binding(&self.binding_def(
                    source,
                    "exchange",
                    destination,
                    routing_key,
                    arguments,
                ));
            }
            self.auto_delete_if_unused(&src);
        }
        Ok(())
    }

    /// An auto-delete exchange goes when its last binding (as a source)
    /// goes; deleting it may in turn empty others (RabbitMQ cascades).
    fn auto_delete_if_unused(&self, ex: &Arc<Exchange>) {
        if ex.opts.auto_delete && ex.router().is_empty() && !ex.is_deleted() {
            self.remove_exchange(ex);
        }
    }

    /// Removes an exchange and every binding that leads to it.
    pub(crate) fn remove_exchange(&self, ex: &Arc<Exchange>) {
        if self
            .exchanges
            .remove_if(&ex.name, |_, v| Arc::ptr_eq(v, ex))
            .is_none()
        {
            return;
        }
        ex.mark_deleted();
        if let (true, Some(p)) = (ex.opts.durable, &self.persist) {
            p.remove_exchange(&self.name, &ex.name);
        }
        let d = Dest::Exchange(ex.clone());
        let mut emptied = Vec::new();
        for other in self.exchanges() {
            if other.unbind_destination(&d) > 0 {
                emptied.push(other);
            }
        }
        for other in emptied {
            self.auto_delete_if_unused(&other);
        }
    }
}

/// A durable queue's store over the data directory: a [`DiskStore`], or
/// for a queue with priorities (`x-max-priority` 1 and up) a
/// [`PriorityStore`] of disk levels, holding what was `recovered` for it
/// (by index id: a priority queue's levels have their own ids).
pub(crate) fn durable_store(
    p: &Persistence,
    id: u64,
    args: &warren_exchanges::Table,
    mut recovered: std::collections::HashMap<u64, Vec<warren_queues::disk::RecoveredEntry>>,
) -> Box<dyn MessageStore> {
    match super::queue_args::max_priority(args).filter(|&m| m > 0) {
        Some(max) => {
            let levels = warren_queues::priority::take_levels(&mut recovered, id, max);
            Box::new(PriorityStore::durable(
                p.disk.clone(),
                id,
                max,
                levels,
                p.queue_memory_bytes,
            ))
        }
        None => Box::new(DiskStore::new(
            p.disk.clone(),
            id,
            recovered.remove(&id).unwrap_or_default(),
            p.queue_memory_bytes,
        )),
    }
}

/// A non-durable queue's store: in memory, paging bodies out to `disk`'s
/// transient area when there is one; per priority level for a queue with
/// priorities.
fn memory_store(disk: Option<Arc<Disk>>, args: &warren_exchanges::Table) -> Box<dyn MessageStore> {
    match (
        super::queue_args::max_priority(args).filter(|&m| m > 0),
        disk,
    ) {
        (Some(max), disk) => Box::new(PriorityStore::memory(max, disk)),
        (None, Some(disk)) => Box::new(MemoryStore::paging(disk)),
        (None, None) => Box::<MemoryStore>::default(),
    }
}

fn reserved_queue_name(name: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::AccessRefused,
        format!("queue name '{name}' contains reserved prefix 'amq.*'"),
    )
}

/// RabbitMQ compares these arguments on redeclare; others are free.
const CHECKED_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

fn describe(v: Option<&warren_exchanges::Value>) -> String {
    match v {
        Some(v) => format!("the value '{v}' of type '{}'", v.type_name()),
        None => "none".to_owned(),
    }
}

fn check_queue_args(q: &Queue, args: &Table) -> Result<()> {
    check_args_equal(q, args, CHECKED_QUEUE_ARGS)
}

/// A redeclare's `keys` must match the queue's, as RabbitMQ compares them.
fn check_args_equal(q: &Queue, args: &Table, keys: &[&str]) -> Result<()> {
    for key in keys {
        let got = args.get(key);
        let cur = q.arguments.get(key);
        let same = match (got, cur) {
            (Some(a), Some(b)) => match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
            (None, None) => true,
            _ => false,
        };
        if !same {
            // RabbitMQ's wording: plain values when both sides have one,
            // typed values against "none" otherwise.
            let (got_s, cur_s) = match (got, cur) {
                (Some(a), Some(b)) => (format!("'{a}'"), format!("'{b}'")),
                _ => (describe(got), describe(cur)),
            };
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "inequivalent arg '{key}' for queue '{}' in vhost '{}': received {got_s} but current is {cur_s}",
                    q.name, q.vhost
                ),
            ));
        }
    }
    Ok(())
}

/// The one nesting limit for stored arguments (queues, exchanges,
/// bindings), whether they come over AMQP, the management API or a
/// definitions import: what is accepted is what the store reads back.
fn check_arguments(args: &Table) -> Result<()> {
    use super::properties::{table_depth, MAX_TABLE_DEPTH};
    if table_depth(args) > MAX_TABLE_DEPTH {
        return Err(BrokerError::new(
            ErrorKind::PreconditionFailed,
            format!("arguments nest more than {MAX_TABLE_DEPTH} levels deep"),
        ));
    }
    Ok(())
}
