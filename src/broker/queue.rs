//! A queue as the broker runs it: metadata, the locked [`QueueCore`], and the
//! hand-off of deliveries to connections' outboxes.
//!
//! The core's mutex is held only for the synchronous state change; the
//! deliveries it produced are pushed to outboxes after it is released.

use super::outbox::{Delivery, Outbox, OutboxItem};
use super::policy::{queue_settings, Applied, QueueSettings};
use super::registry::{CoarseClock, Counter, CounterFold, FoldTarget, MessageCounters};
use super::stream::StreamQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use warren_exchanges::Table;
use warren_queues::{
    ChannelLimit, ConsumeError, ConsumerId, ConsumerSpec, DeadCounters, DeadMessage, Disk,
    Dispatched, LoadedBodies, Loads, Message, Peeked, QueueCore, QueuedMessage, StoredRef, Unacked,
};

mod lifecycle;
mod utilisation;
pub use lifecycle::PublishOutcome;

/// Who a delivery is for: enough for the owning connection to frame it.
#[derive(Debug)]
pub struct ConsumerHandle {
    pub id: ConsumerId,
    pub tag: String,
    /// The connection the consumer lives on (management API).
    pub conn: u64,
    /// The connection's session (AMQP channel) the consumer lives on.
    pub session: u16,
    pub outbox: Arc<Outbox>,
    /// The session's shared prefetch limit, which deliveries take slots of.
    pub channel_limit: Arc<ChannelLimit>,
}

/// Queue flags from the declare.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Table,
}

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    pub owner: Option<u64>,
    /// The id of a durable queue's definition and messages on disk.
    pub disk_id: Option<u64>,
    pub arguments: Table,
    /// This queue's message counters (management API).
    pub stats: MessageCounters,
    /// Sampled history of the lengths and counters, for the charts.
    pub history: super::history::SharedHistory,
    /// RabbitMQ's `consumer_utilisation`: the time-weighted share of time
    /// the consumers could take messages. Written only when
    /// `consumers_blocked` flips, under the core's lock.
    consumer_use: Mutex<utilisation::ConsumerUse>,
    /// Whether the last delivery pass left messages no consumer could take.
    consumers_blocked: AtomicBool,
    /// The broker-wide counters, bumped alongside.
    global: Arc<MessageCounters>,
    /// Messages that left unconsumed (dead-lettered or dropped), by
    /// reason; counted into the broker's too.
    pub dead_counters: Arc<DeadCounters>,
    /// Stamps deliveries for the unacked view.
    clock: Arc<CoarseClock>,
    core: Mutex<QueueCore<Arc<ConsumerHandle>>>,
    /// Where persistent no-ack deliveries handed back unwritten are
    /// written again (durable queues), before the core's lock is taken.
    rewrite_disk: Option<Arc<Disk>>,
    deleted: AtomicBool,
    /// Flow control: set while consumers are attached and the backlog is
    /// above [`FLOW_HIGH`], or while the bodies only memory can hold
    /// (transient ones) exceed `memory_budget` (consumed or not); publishers to this queue pause
    /// reading until it drains below [`FLOW_LOW`] and half the budget
    /// (RabbitMQ's `flow` state).
    flow_blocked: AtomicBool,
    /// Woken (every waiter) when `flow_blocked` clears.
    flow_resumed: Notify,
    /// Body bytes the queue may hold in memory before it holds back its
    /// publishers; `None`: no limit by memory.
    memory_budget: Option<u64>,
    /// Body bytes a non-durable queue holds in memory before new bodies
    /// are paged out to the disk's transient area; `None`: never pages.
    page_budget: Option<u64>,
    /// Set (under the core's lock, after each publish) while the queue
    /// holds more than `page_budget` in memory: publishers then write the
    /// body to disk before taking the lock ([`Queue::publish_paged`]).
    paging: AtomicBool,
    /// TTL sweeps, x-expires and dead-lettering (see [`lifecycle`]).
    life: lifecycle::Life,
    /// The policies that apply and the effective settings they and the
    /// arguments give; its own short lock, never held while `core`'s is
    /// taken (see [`Queue::settings_changed`]).
    policies: Mutex<QueuePolicies>,
    /// `x-single-active-consumer` (fixed at declare), readable without the
    /// core's lock.
    single_active: bool,
    /// Set for a stream queue (`x-queue-type: stream`): publishes,
    /// consumers and acks go to it; `core` stays empty.
    stream: Option<Arc<StreamQueue>>,
}

/// A queue's policies and what they give, replaced together.
struct QueuePolicies {
    applied: Applied,
    settings: Arc<QueueSettings>,
}

/// What a paging durable queue may hold in memory beyond twice its budget
/// (read-ahead, bodies in flight) before it pauses its publishers.
pub const PAUSE_BACKSTOP_BYTES: u64 = 16 * 1024 * 1024;

/// Whether a queue with these limits may page bodies out: none that
/// expire, drop or dead-letter messages (see [`Queue::pages`]).
fn pages_plain(l: &warren_queues::QueueLimits) -> bool {
    l.message_ttl.is_none()
        && !l.has_length_limit()
        && l.dead_letter_exchange.is_none()
        && l.delivery_limit.is_none()
}

/// Ready messages above which a consumed queue pushes back on publishers.
pub const FLOW_HIGH: usize = 20_000;
/// Ready messages below which it lets them go again.
pub const FLOW_LOW: usize = 10_000;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .finish()
    }
}

/// What a new consumer wants.
pub struct ConsumeRequest {
    pub id: ConsumerId,
    pub tag: String,
    pub conn: u64,
    pub session: u16,
    pub outbox: Arc<Outbox>,
    pub no_ack: bool,
    pub exclusive: bool,
    pub prefetch: u32,
    pub channel_limit: Arc<ChannelLimit>,
    /// `x-priority` (see [`super::consumer_args::consumer_priority`]).
    pub priority: i64,
    /// The consume's arguments (a stream reads `x-stream-offset`).
    pub arguments: Table,
}

impl Queue {
    // Each is a distinct piece of the queue's identity or wiring; a
    // builder would only add ceremony for the two call sites in vhost.rs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        vhost: String,
        opts: QueueOptions,
        owner: Option<u64>,
        store: Box<dyn warren_queues::MessageStore>,
        disk_id: Option<u64>,
        noack_window: u32,
        global: Arc<MessageCounters>,
        clock: Arc<CoarseClock>,
    ) -> Self {
        let mut core = QueueCore::new(store, noack_window);
        // Validated at declare; a stored definition passed the same check.
        let single_active = matches!(
            opts.arguments.get("x-single-active-consumer"),
            Some(warren_exchanges::Value::Bool(true))
        );
        core.set_single_active(single_active);
        Queue {
            name,
            vhost,
            durable: opts.durable,
            auto_delete: opts.auto_delete,
            owner,
            disk_id,
            stats: MessageCounters::default(),
            history: super::history::SharedHistory::new(
                super::history::BASIC,
                super::history::QUEUE_SERIES,
            ),
            consumer_use: Mutex::new(utilisation::ConsumerUse::new(std::time::Instant::now())),
            consumers_blocked: AtomicBool::new(false),
            global,
            dead_counters: Arc::default(),
            clock,
            rewrite_disk: core.rewrite_disk(),
            core: Mutex::new(core),
            deleted: AtomicBool::new(false),
            flow_blocked: AtomicBool::new(false),
            flow_resumed: Notify::new(),
            memory_budget: None,
            life: lifecycle::Life::default(),
            policies: Mutex::new(QueuePolicies {
                settings: Arc::new(queue_settings(&opts.arguments, &Applied::default())),
                applied: Applied::default(),
            }),
            arguments: opts.arguments,
            page_budget: None,
            paging: AtomicBool::new(false),
            single_active,
            stream: None,
        }
    }

    /// Makes this a stream queue over `stream`'s log.
    pub fn with_stream(mut self, stream: StreamQueue) -> Self {
        self.stream = Some(Arc::new(stream));
        self
    }

    /// The stream queue behind this queue, if it is one.
    pub fn stream(&self) -> Option<&Arc<StreamQueue>> {
        self.stream.as_ref()
    }

    /// Refuses an operation a stream does not support (basic.get,
    /// queue.purge, basic.nack/reject) with RabbitMQ 3.10's 540.
    pub fn check_supported(&self, what: &str) -> super::Result<()> {
        if self.stream.is_none() {
            return Ok(());
        }
        Err(super::BrokerError::new(
            super::ErrorKind::NotImplemented,
            format!(
                "{what} not supported by stream queues queue '{}' in vhost '{}'",
                self.name, self.vhost
            ),
        ))
    }

    /// Counts this queue's dead letters into `parent` (the broker's) too.
    pub fn with_dead_counters(mut self, parent: &Arc<DeadCounters>) -> Self {
        self.dead_counters = Arc::new(DeadCounters::with_parent(parent.clone()));
        self.core
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .set_dead_counters(self.dead_counters.clone());
        self
    }

    /// Pages new bodies out to the disk's transient area while more than
    /// `bytes` of bodies are held in memory, instead of holding them all
    /// (non-durable queues, whose store is a paging
    /// [`warren_queues::MemoryStore`]).
    pub fn with_paging(mut self, bytes: u64) -> Self {
        self.page_budget = Some(bytes);
        self
    }

    /// Whether a new body for this queue should be written to the
    /// transient area first (a hint read without the lock: a stale answer
    /// only pages a message early or keeps one in memory).
    pub fn pages(&self) -> bool {
        self.paging.load(Ordering::Relaxed)
    }

    fn update_paging(&self, core: &QueueCore<Arc<ConsumerHandle>>) {
        if let Some(b) = self.page_budget {
            // Only a plain queue pages: a paged body is never read under
            // the lock, so one that may expire, be dropped by a length
            // limit or be dead-lettered stays in memory (the limits are
            // fixed at declare).
            let over = core.memory_bytes() > b && pages_plain(core.limits());
            if over != self.paging.load(Ordering::Relaxed) {
                self.paging.store(over, Ordering::Relaxed);
            }
        }
    }

    /// The policy and operator policy that apply to this queue.
    pub fn applied_policies(&self) -> Applied {
        self.policies().applied.clone()
    }

    /// The queue's effective settings (message TTL, expiry, length limits,
    /// overflow, dead-lettering, delivery limit, consumer timeout) from its
    /// arguments and policies: read them here, never from `arguments`.
    pub fn settings(&self) -> Arc<QueueSettings> {
        self.policies().settings.clone()
    }

    fn policies(&self) -> MutexGuard<'_, QueuePolicies> {
        self.policies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads which policies apply (`matching` runs under this queue's
    /// policy lock, so of two racing updates the later one reads the later
    /// policy set and lands last) and, when they changed, recomputes the
    /// effective settings and tells the queue.
    pub(crate) fn refresh_policies(self: &Arc<Self>, matching: impl FnOnce() -> Applied) {
        let mut p = self.policies();
        let applied = matching();
        if applied.same(&p.applied) {
            return;
        }
        if let Some(s) = &self.stream {
            s.apply_policies(&applied);
        }
        let settings = Arc::new(queue_settings(&self.arguments, &applied));
        p.applied = applied;
        if settings == p.settings {
            return;
        }
        let old = std::mem::replace(&mut p.settings, settings.clone());
        drop(p);
        self.settings_changed(&old, &settings);
    }

    /// A change of effective settings (a policy was set, changed or
    /// deleted, or first matched at declare), called after the new
    /// settings are in place with no lock held: the queue core takes them
    /// at once, so a lowered `max-length` / `max-length-bytes` trims the
    /// queue, a new `message-ttl` applies to what is published from now,
    /// `expires` re-arms its timer (RabbitMQ's `process_args_policy`).
    fn settings_changed(self: &Arc<Self>, old: &QueueSettings, new: &QueueSettings) {
        tracing::debug!(
            queue = %self.name,
            vhost = %self.vhost,
            ?old,
            ?new,
            "effective queue settings changed"
        );
        self.set_limits(new.limits());
    }

    /// Holds publishers back while more than `bytes` of bodies that only
    /// memory can hold (transient messages; persistent ones beyond the
    /// store's budget stay on disk) are queued, whether or not the queue
    /// is consumed.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// A durable queue's budget of `bytes`: transient bodies past it are
    /// paged out ([`Queue::with_paging`]), so memory stays near it; the
    /// publisher pause ([`Queue::with_memory_budget`]) remains only as a
    /// backstop, at twice that plus [`PAUSE_BACKSTOP_BYTES`], for when
    /// paging cannot keep memory down (writes to the transient area fail).
    pub fn with_durable_budget(self, bytes: u64) -> Self {
        self.with_paging(bytes)
            .with_memory_budget(bytes.saturating_mul(2) + PAUSE_BACKSTOP_BYTES)
    }

    fn over_budget(&self, core: &QueueCore<Arc<ConsumerHandle>>, fraction: u64) -> bool {
        self.memory_budget
            .is_some_and(|b| core.memory_bytes() > b / fraction)
    }

    fn core(&self) -> MutexGuard<'_, QueueCore<Arc<ConsumerHandle>>> {
        // A panic while holding the lock is a bug; the state is still
        // consistent enough to keep serving, so recover the guard.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_deleted(&self) -> bool {
        // SeqCst: a bind writes its record, then checks this; a deletion
        // sets it, then sweeps records. One of them sees the other.
        self.deleted.load(Ordering::SeqCst)
    }

    /// First step of a deletion: from here on binds and consumes that
    /// check the flag (see [`Queue::consume`], `Vhost::bind_queue`) refuse,
    /// or undo what they did before the deletion's sweep could see it.
    pub(crate) fn set_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    /// Enqueues one message (with its own TTL, `expiration` in ms) and
    /// delivers what can be delivered. A message that reaches a queue that
    /// is going away is dropped, as RabbitMQ drops it; one a length limit
    /// refuses is reported so the publisher can be nacked.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>, ttl: Option<u64>) -> PublishOutcome {
        if let Some(s) = &self.stream {
            if self.is_deleted() {
                return PublishOutcome::Deleted;
            }
            s.publish(&message, self.clock.now_ms());
            return PublishOutcome::Queued;
        }
        let after = {
            let mut core = self.core();
            // Checked under the lock the deletion's purge takes after
            // setting the flag: a message either is purged with the rest
            // or never enters (it would sit in a dead queue, holding its
            // record on disk until the next start).
            if self.is_deleted() {
                return PublishOutcome::Deleted;
            }
            let now = self.clock.now_ms();
            let queued = core.publish_at(message, now, ttl).is_some();
            let mut after = self.deliver(&mut core);
            self.update_paging(&core);
            // A consumed queue pushes back on a long backlog (its
            // consumers cannot keep up); any queue pushes back once it
            // holds more in memory than its budget allows.
            if (core.message_count() > FLOW_HIGH && core.consumer_count() > 0)
                || self.over_budget(&core, 1)
            {
                self.flow_blocked.store(true, Ordering::Release);
            }
            if !queued {
                after.refused_publish = true;
            }
            after
        };
        let refused = after.refused_publish;
        // The publish is counted by the caller (`Vhost::publish` folds it).
        self.finish(after);
        if refused {
            PublishOutcome::Refused
        } else {
            PublishOutcome::Queued
        }
    }

    /// [`Queue::publish`] of a message whose body was paged out to the
    /// transient area at `at` (written by the caller, without this
    /// queue's lock); `false` if the queue was deleted meanwhile (the
    /// caller releases the record).
    pub fn publish_paged(
        self: &Arc<Self>,
        at: StoredRef,
        size: u32,
        priority: u8,
    ) -> PublishOutcome {
        let after = {
            let mut core = self.core();
            if self.is_deleted() {
                return PublishOutcome::Deleted;
            }

            core.publish_paged(at, size, priority);
            let after = self.deliver(&mut core);
            self.update_paging(&core);
            after
        };
        self.finish(after);
        PublishOutcome::Queued
    }

    /// Delivers what can be delivered, under the core's lock: the
    /// deliveries reach their outboxes before the lock goes, so two
    /// threads dispatching one after the other (a publisher, an acker,
    /// the loader) cannot hand a consumer its messages out of order.
    /// What to do after the lock is released is returned for
    /// [`Queue::finish`].
    fn deliver(self: &Arc<Self>, core: &mut QueueCore<Arc<ConsumerHandle>>) -> AfterDelivery {
        let mut out = scratch::take_dispatched();
        let now = self.clock.now_ms();
        core.dispatch(now, &mut out);
        let (dead, dead_letter) = self.after_change(core, now);
        let loads = core.take_loads();
        self.note_consumer_use(core, loads.is_some());
        AfterDelivery {
            refused: self.hand_off(out),
            loads,
            dead,
            dead_letter,
            refused_publish: false,
        }
    }

    fn finish(self: &Arc<Self>, after: AfterDelivery) {
        self.refused(after.refused);
        self.load(after.loads);
        if let Some(dl) = after.dead_letter {
            self.dead_letter(after.dead, dl);
        }
    }

    /// Reads paged-out bodies that delivery stopped at, on the store's
    /// loader thread (never under this queue's lock, never on an async
    /// worker), then delivers what they let through and reads on.
    fn load(self: &Arc<Self>, loads: Option<Loads>) {
        if let Some(l) = loads {
            let q = self.clone();
            l.spawn(move |l| q.loaded(l.read()));
        }
    }

    fn loaded(self: &Arc<Self>, bodies: LoadedBodies) {
        let after = {
            let mut core = self.core();
            core.finish_loads(bodies);
            let after = self.deliver(&mut core);
            self.update_flow(&core);
            after
        };
        // The next read-ahead is queued as the loader's next job, not run
        // here: no recursion.
        self.finish(after);
    }

    /// Whether publishers should pause for this queue (a stream: while
    /// too much of it waits to be synced).
    pub fn flow_blocked(&self) -> bool {
        match &self.stream {
            Some(s) => s.flow_blocked(),
            None => self.flow_blocked.load(Ordering::Acquire),
        }
    }

    /// Whether only consumers drain this queue's flow state (a stream's
    /// flusher drains it whether or not anyone consumes).
    pub fn flow_needs_consumers(&self) -> bool {
        self.stream.is_none()
    }

    /// Resolves when the queue lets publishers go again. No wake-up is
    /// lost: the future is registered before the flag is checked.
    pub async fn flow_resumed(&self) {
        if let Some(s) = &self.stream {
            return s.flow_resumed().await;
        }
        let notified = self.flow_resumed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.flow_blocked() && !self.is_deleted() {
            notified.await;
        }
    }

    fn update_flow(&self, core: &QueueCore<Arc<ConsumerHandle>>) {
        if self.flow_blocked.load(Ordering::Relaxed)
            && (core.message_count() < FLOW_LOW || core.consumer_count() == 0)
            && !self.over_budget(core, 2)
        {
            self.flow_blocked.store(false, Ordering::Release);
            self.flow_resumed.notify_waiters();
        }
    }

    /// Re-runs delivery (credit was freed somewhere).
    pub fn kick(self: &Arc<Self>) {
        if self.stream.is_some() {
            return;
        }
        let after = {
            let mut core = self.core();
            let after = self.deliver(&mut core);
            self.update_flow(&core);
            after
        };
        self.finish(after);
    }

    /// Pushes deliveries to their connections' outboxes, one lock and one
    /// wake-up per run of deliveries for the same outbox; returns what a
    /// closed outbox refused (to go back once the core's lock is released).
    /// Deliveries are counted by the consumer's connection as it frames
    /// them ([`Queue::count_delivery`]), folded per turn there. The batch
    /// vector is a per-thread one, reused.
    fn hand_off(
        self: &Arc<Self>,
        mut out: Vec<Dispatched<Arc<ConsumerHandle>>>,
    ) -> Vec<OutboxItem> {
        let mut refused = Vec::new();
        if out.is_empty() {
            scratch::put_dispatched(out);
            return refused;
        }
        let mut batch = scratch::take_batch();
        let mut current: Option<Arc<Outbox>> = None;
        for d in out.drain(..) {
            if let Some(cur) = &current {
                if !Arc::ptr_eq(cur, &d.handle.outbox) {
                    if !cur.push_from(&mut batch) {
                        refused.append(&mut batch);
                    }
                    current = None;
                }
            }
            if current.is_none() {
                current = Some(d.handle.outbox.clone());
            }
            batch.push(OutboxItem::Deliver(Delivery {
                queue: self.clone(),
                consumer: d.handle,
                message: d.message,
                no_ack: d.no_ack,
                took_channel_slot: d.took_channel_slot,
                credit_on_write: d.credit_on_write,
                delivery_count: d.delivery_count,
                deadline: d.deadline,
                held: d.held,
            }));
        }
        if let Some(cur) = current {
            if !cur.push_from(&mut batch) {
                refused.append(&mut batch);
            }
        }
        scratch::put_batch(batch);
        scratch::put_dispatched(out);
        refused
    }

    /// Deliveries a closed connection's outbox refused go back to their
    /// place (the consumer was being cancelled as they were dispatched).
    fn refused(self: &Arc<Self>, items: Vec<OutboxItem>) {
        for item in items {
            if let OutboxItem::Deliver(d) = item {
                d.queue.undeliver(d.message, d.no_ack, d.deadline, d.held);
            }
        }
    }

    pub fn consume(self: &Arc<Self>, req: ConsumeRequest) -> super::Result<()> {
        self.consume_partition(req, None)
    }

    /// A consume; `partition` is this stream's index in the super stream
    /// a group member consumes (see `Vhost::consume`).
    pub(crate) fn consume_partition(
        self: &Arc<Self>,
        req: ConsumeRequest,
        partition: Option<u32>,
    ) -> super::Result<()> {
        if let Some(s) = &self.stream {
            if self.is_deleted() {
                return Err(super::BrokerError::no_queue(&self.name, &self.vhost));
            }
            return s.consume(self, req, partition);
        }
        self.touch();
        let handle = Arc::new(ConsumerHandle {
            id: req.id,
            tag: req.tag,
            conn: req.conn,
            session: req.session,
            outbox: req.outbox,
            channel_limit: req.channel_limit.clone(),
        });
        let spec = ConsumerSpec {
            id: req.id,
            handle,
            no_ack: req.no_ack,
            prefetch: req.prefetch,
            exclusive: req.exclusive,
            channel_limit: Some(req.channel_limit),
            priority: req.priority,
        };
        let res = {
            let mut core = self.core();
            // Checked under the core's lock, which a deletion takes (after
            // setting the flag) to cancel the consumers: either it finds
            // this one, or this one finds the flag. Without the check a
            // consumer could attach after the cancel sweep and wait on a
            // deleted queue for ever.
            if self.is_deleted() {
                return Err(super::BrokerError::no_queue(&self.name, &self.vhost));
            }
            core.add_consumer(spec)
        };
        match res {
            Ok(()) => {
                self.kick();
                Ok(())
            }
            Err(ConsumeError::ExclusiveConflict) => Err(super::BrokerError::new(
                super::ErrorKind::AccessRefused,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                ),
            )),
        }
    }

    /// Removes a consumer; returns whether the queue should now be
    /// auto-deleted. Its unacked messages stay with its channel.
    pub fn cancel(self: &Arc<Self>, id: ConsumerId) -> bool {
        self.cancel_requeue(id, &mut Vec::new())
    }

    /// Removes a consumer and puts `requeue` (what its channel held of
    /// this queue, as the channel closes) back in one step, before anything
    /// is delivered again: with single active consumer the next consumer
    /// gets those messages first. Returns whether the queue should now be
    /// auto-deleted.
    pub fn cancel_requeue(self: &Arc<Self>, id: ConsumerId, requeue: &mut Vec<Unacked>) -> bool {
        if let Some(s) = &self.stream {
            s.cancel(id);
            requeue.clear();
            return false;
        }
        self.touch();
        let (unused, after) = {
            let mut core = self.core();
            core.remove_consumer(id);
            let requeued = !requeue.is_empty();
            core.requeue(requeue.drain(..));
            // Delivery runs only if messages came back. A single active
            // consumer's successor does not start on the cancel alone: as
            // in RabbitMQ 3.10.8 (checked), the next publish, ack or
            // requeue starts it, so a client that cancels and then closes
            // its channel (pika does) has its unacked messages go to the
            // successor first.
            let after = requeued.then(|| self.deliver(&mut core));
            self.update_flow(&core);
            (self.auto_delete && core.unused_after_consumers(), after)
        };
        if let Some(after) = after {
            self.finish(after);
        }
        unused
    }

    /// What consumer `id` is doing (management API); takes the core's
    /// lock only for a single-active-consumer queue.
    pub fn activity(&self, id: ConsumerId) -> Option<warren_queues::Activity> {
        if !self.single_active {
            return Some(warren_queues::Activity::Up);
        }
        self.core().activity(id)
    }

    /// The tag of a single-active-consumer queue's active consumer.
    pub fn single_active_tag(&self) -> Option<String> {
        if !self.single_active {
            return None;
        }
        self.core().active_consumer().map(|h| h.tag.clone())
    }

    /// basic.get: the message, the count of messages left, its delivery
    /// count and (unless `no_ack`) its record, which the taker keeps until
    /// it hands it back (ack, requeue, discard).
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<Got> {
        // A paged-out head is read here, without the lock and off the
        // async runtime's worker (a get cannot wait for a consumer's
        // read-ahead; it is rare and answers one message), then the get
        // is tried again.
        let mut got = None;
        let mut count = None;
        let mut dead = Vec::new();
        self.touch();
        for _ in 0..4 {
            let head = {
                let mut core = self.core();
                let now = self.clock.now_ms();
                got = core.get(no_ack, now);
                count = got
                    .as_ref()
                    .and_then(|(m, _, _)| core.delivery_header(m.seq, true));
                self.update_flow(&core);
                if let Some(batch) = self.after_get(&mut core, now) {
                    dead.push(batch);
                }
                match got {
                    None => core.head_load(),
                    Some(_) => None,
                }
            };
            match head {
                Some(l) => {
                    let bodies = read_off_the_runtime(l);
                    self.core().finish_loads(bodies);
                }
                None => break,
            }
        }
        for (messages, to) in dead {
            self.dead_letter(messages, to);
        }
        let counts: &[Counter] = match &got {
            None => &[Counter::GetEmpty],
            Some((m, _, _)) => match (no_ack, m.redelivered) {
                (false, false) => &[Counter::Get],
                (false, true) => &[Counter::Get, Counter::Redeliver],
                (true, false) => &[Counter::GetNoAck],
                (true, true) => &[Counter::GetNoAck, Counter::Redeliver],
            },
        };
        for c in counts {
            self.stats.add(*c, 1);
            self.global.add(*c, 1);
        }
        // Under a delivery limit a get carries `x-delivery-count` (as
        // RabbitMQ's quorum queues), added when it is framed, as a
        // delivery's is ([`Got::properties`]).
        got.map(|(message, left, held)| Got {
            message,
            left,
            delivery_count: count,
            held,
        })
    }

    /// Acked: the records (drained from `held`) are settled and counted
    /// (into the caller's fold, added to this queue's and the broker's
    /// counters at the end of its turn).
    pub fn ack(self: &Arc<Self>, held: &mut Vec<Unacked>, fold: &mut CounterFold) {
        let n = held.len() as u64;
        if self.stream_settle(held) {
            self.count(fold, Counter::Ack, n);
            return;
        }
        self.core().ack(held.drain(..));
        self.count(fold, Counter::Ack, n);
        self.kick();
    }

    /// A stream's acks (and nacks) only free its consumers' credit: true,
    /// with `held` drained, for a stream.
    fn stream_settle(&self, held: &mut Vec<Unacked>) -> bool {
        let Some(s) = &self.stream else {
            return false;
        };
        let mut seqs = scratch::take_seqs();
        seqs.extend(held.drain(..).map(|u| u.seq));
        s.settle(&seqs);
        seqs.clear();
        scratch::put_seqs(seqs);
        true
    }

    /// Counts one delivery framed for a consumer of this queue.
    pub fn count_delivery(
        self: &Arc<Self>,
        fold: &mut CounterFold,
        no_ack: bool,
        redelivered: bool,
    ) {
        let c = if no_ack {
            Counter::DeliverNoAck
        } else {
            Counter::Deliver
        };
        self.count(fold, c, 1);
        if redelivered {
            self.count(fold, Counter::Redeliver, 1);
        }
    }

    /// `n` of `c` for this queue and the broker, into `fold`.
    fn count(self: &Arc<Self>, fold: &mut CounterFold, c: Counter, n: u64) {
        fold.add(&self.stats, || FoldTarget::Queue(self.clone()), c, n);
        let g = &self.global;
        fold.add(g, || FoldTarget::Counters(g.clone()), c, n);
    }

    /// Rejected without requeue (the records drained from `held`):
    /// settled like an ack (not counted as one), or dead-lettered when the
    /// queue has a dead-letter exchange.
    pub fn discard(self: &Arc<Self>, held: &mut Vec<Unacked>) {
        if self.stream_settle(held) {
            return;
        }
        self.core().reject(held.drain(..));
        self.kick();
    }

    /// Up to `n` ready messages from `offset` places after the head, and
    /// the ready count, leaving the queue as it was. The lock is held only
    /// to copy out in-memory messages and where paged-out ones lie:
    /// [`Peeked::load`] reads those (blocking I/O) without it.
    pub fn peek(&self, offset: usize, n: usize) -> (Peeked, usize) {
        let core = self.core();
        (core.peek_entries(offset, n), core.message_count())
    }

    /// Where unacked deliveries whose records keep no body lie on disk
    /// (the unacked view reads them from there), under one hold of the
    /// lock.
    pub fn unacked_locations(&self, seqs: &[u64]) -> Vec<Option<StoredRef>> {
        let core = self.core();
        seqs.iter().map(|&s| core.unacked_location(s)).collect()
    }

    /// The coarse clock deliveries are stamped with (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Puts delivered messages (the records drained from `held`) back, at
    /// their place, redelivered.
    pub fn requeue(self: &Arc<Self>, held: &mut Vec<Unacked>) {
        if self.stream_settle(held) {
            return;
        }
        self.core().requeue(held.drain(..));
        self.kick();
    }

    /// A delivery that was never written goes back to the queue (a no-ack
    /// one with its TTL deadline, if it had one; a manual-ack one with its
    /// record).
    pub fn undeliver(
        self: &Arc<Self>,
        m: QueuedMessage,
        no_ack: bool,
        deadline: Option<u64>,
        held: Option<Unacked>,
    ) {
        // A stream keeps every message: one its consumer never got needs
        // nothing back.
        if self.is_deleted() || self.stream.is_some() {
            return;
        }
        let written = self.rewrite(&m, no_ack);
        {
            let mut core = self.core();
            // Checked under the lock, as a publish checks it: a deletion's
            // purge has run or will see the message.
            if self.is_deleted() {
                drop(core);
                if let (Some(at), Some(disk)) = (written, &self.rewrite_disk) {
                    disk.forget_ref(at);
                }
                return;
            }
            core.undeliver(m, no_ack, written, deadline, held);
            if let Some(d) = deadline {
                // It may be due already: the timer looks at once.
                self.arm(d);
            }
        }
        self.kick();
    }

    /// A no-ack delivery gave its place on disk up as it was dispatched:
    /// a persistent one handed back unwritten is written again here,
    /// before the core's lock is taken (a segment append may write a
    /// full buffer or start a file), as a publish is, so it stays as
    /// durable as it was. A failed write leaves it in memory only.
    fn rewrite(&self, m: &QueuedMessage, no_ack: bool) -> Option<StoredRef> {
        let disk = self.rewrite_disk.as_ref()?;
        if !no_ack || m.message.stored().is_none() {
            return None;
        }
        match disk.put_body(&m.message, 1) {
            Ok(at) => Some(at),
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "cannot write a handed-back message again; it stays in memory only");
                None
            }
        }
    }

    /// A stream consumer's connection wrote deliveries of `bytes` body
    /// bytes to its socket; `seq` is one of theirs (it names the consumer).
    pub fn stream_written(&self, seq: u64, bytes: u64) {
        if let Some(s) = &self.stream {
            s.written(seq, bytes);
        }
    }

    /// The consumer's connection wrote `n` deliveries whose credit comes
    /// back on write (no-ack, or no prefetch limit).
    pub fn credit_written(self: &Arc<Self>, consumer: ConsumerId, n: u32) {
        let after = {
            let mut core = self.core();
            core.credit_written(consumer, n);
            let after = self.deliver(&mut core);
            self.update_flow(&core);
            after
        };
        self.finish(after);
    }

    pub fn purge(&self) -> usize {
        let mut core = self.core();
        let n = core.purge();
        self.update_flow(&core);
        n
    }

    /// (ready messages, their body bytes)
    pub fn ready_totals(&self) -> (usize, u64) {
        if let Some(s) = &self.stream {
            let st = s.stats();
            return (st.messages as usize, st.bytes);
        }
        let core = self.core();
        (core.message_count(), core.message_bytes())
    }

    /// What the management API shows of the queue's contents, read under
    /// one short hold of the lock.
    pub fn contents(&self) -> QueueContents {
        if let Some(st) = &self.stream {
            // A stream's log is on disk, read by its consumers at their
            // own offsets: nothing is ready or unacked in RabbitMQ's sense
            // beyond the message count.
            return QueueContents {
                ready: st.stats().messages as usize,
                unacked: 0,
                consumers: st.consumer_count(),
                bytes: Default::default(),
                head_timestamp: None,
            };
        }
        let core = self.core();
        let head = core.peek_entries(0, 1);
        let head_timestamp = match head.entries().first().map(|e| &e.body) {
            // A head paged out to disk is not read for this.
            Some(warren_queues::PeekBody::Loaded(m)) => {
                super::properties::BasicProperties::decode(m.properties()).and_then(|p| p.timestamp)
            }
            _ => None,
        };
        QueueContents {
            ready: core.message_count(),
            unacked: core.unacked_count(),
            consumers: core.consumer_count(),
            bytes: core.byte_totals(),
            head_timestamp,
        }
    }

    /// After a delivery pass: messages left ready with consumers present
    /// means every consumer is blocked (prefetch full), unless the pass
    /// stopped to read paged-out bodies (the queue's wait, not theirs).
    /// The clock is read only when the state flips.
    fn note_consumer_use(&self, core: &QueueCore<Arc<ConsumerHandle>>, loading: bool) {
        let blocked = !loading && core.consumer_count() > 0 && core.message_count() > 0;
        if self.consumers_blocked.load(Ordering::Relaxed) != blocked {
            self.consumers_blocked.store(blocked, Ordering::Relaxed);
            self.consumer_use
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set(!blocked, std::time::Instant::now());
        }
    }

    /// RabbitMQ's `consumer_utilisation` (and `consumer_capacity`): 0
    /// without consumers; a stream's readers are never blocked by it,
    /// and it shows 0 as before.
    pub fn consumer_utilisation(&self) -> f64 {
        if self.stream.is_some() || self.counts().1 == 0 {
            return 0.0;
        }
        self.consumer_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .utilisation(std::time::Instant::now())
    }

    /// The sampler's turn: rates and history at `now` (Unix
    /// milliseconds). Returns the (ready, unacked) lengths for the totals.
    pub fn sample(&self, secs: f64, now: u64) -> (u64, u64) {
        self.stats.sample(secs);
        let (ready, unacked) = match &self.stream {
            // As `counts` and `contents` show a stream.
            Some(st) => (st.stats().messages as usize, 0),
            None => {
                let core = self.core();
                (core.message_count(), core.unacked_count())
            }
        };
        let (r, u) = (ready as u64, unacked as u64);
        let stats = self.stats.snapshot();
        let mut values = [0u64; 11];
        values[..3].copy_from_slice(&[r + u, r, u]);
        for (i, c) in super::history::QUEUE_COUNTERS.iter().enumerate() {
            values[3 + i] = stats.count(*c);
        }
        self.history.record(now, &values);
        (r, u)
    }

    /// (ready messages, consumers)
    pub fn counts(&self) -> (usize, usize) {
        if let Some(s) = &self.stream {
            return (s.stats().messages as usize, s.consumer_count());
        }
        let core = self.core();
        (core.message_count(), core.consumer_count())
    }

    pub fn unacked_count(&self) -> usize {
        self.core().unacked_count()
    }

    /// Marks the queue deleted, drops its messages and tells each consumer's
    /// connection it was cancelled. Returns the ready count it had.
    pub(crate) fn mark_deleted(&self) -> usize {
        self.set_deleted();
        self.stop_timer();
        if let Some(s) = &self.stream {
            let n = s.stats().messages as usize;
            s.delete();
            return n;
        }
        let (consumers, count) = {
            let mut core = self.core();
            let c = core.take_consumers();
            let n = core.purge();
            self.update_flow(&core);
            (c, n)
        };
        for (_, h) in consumers {
            // A closed connection needs no cancel notification.
            let _ = h.outbox.push_all(vec![OutboxItem::Cancelled {
                session: h.session,
                tag: h.tag.clone(),
                consumer: h.id,
            }]);
        }
        count
    }
}

/// A queue's contents as the management API shows them.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueContents {
    pub ready: usize,
    pub unacked: usize,
    pub consumers: usize,
    pub bytes: warren_queues::ByteTotals,
    /// The `timestamp` property of the head message, when it has one and
    /// its body is in memory.
    pub head_timestamp: Option<u64>,
}

/// Reads paged-out bodies for a caller that cannot wait for the loader
/// (basic.get). On a multi-threaded tokio worker the read runs through
/// `block_in_place`, so the worker's other tasks move elsewhere meanwhile;
/// elsewhere (a blocking thread, a test's runtime) it just reads.
fn read_off_the_runtime(l: Loads) -> LoadedBodies {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| l.read())
        }
        _ => l.read(),
    }
}

/// What a delivery under the core's lock leaves to do after it.
struct AfterDelivery {
    /// Deliveries a closed outbox refused: they go back to the queue.
    refused: Vec<OutboxItem>,
    /// Paged-out bodies to read before delivery can go on.
    loads: Option<Loads>,
    /// Messages the queue dropped for its dead-letter exchange.
    dead: Vec<DeadMessage>,
    /// Where they go: (exchange, routing key), when there are any.
    dead_letter: Option<(String, Option<String>)>,
    /// A length limit refused the message being published.
    refused_publish: bool,
}

/// What basic.get took: the message, how many messages are left, and the
/// `x-delivery-count` to frame it with under a delivery limit.
#[derive(Debug)]
pub struct Got {
    pub message: QueuedMessage,
    pub left: usize,
    pub delivery_count: Option<u32>,
    /// The delivery's record, unless taken with no-ack.
    pub held: Option<Unacked>,
}

impl Got {
    /// The property section to frame: as published, or with its
    /// `x-delivery-count` header set.
    pub fn properties(&self) -> std::borrow::Cow<'_, [u8]> {
        super::outbox::framed_properties(self.message.message.properties(), self.delivery_count)
    }
}

/// A queue as a routing destination: compared by identity.
#[derive(Clone, Debug)]
pub struct QueueRef(pub Arc<Queue>);

impl PartialEq for QueueRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for QueueRef {}
impl std::hash::Hash for QueueRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

/// Per-thread vectors for the delivery hand-off, reused so a publish that
/// dispatches allocates none. Taken out and put back (not borrowed), so a
/// re-entrant hand-off (a refused delivery kicks its queue) just starts
/// with a fresh vector.
mod scratch {
    use super::{ConsumerHandle, Dispatched, OutboxItem};
    use std::cell::Cell;
    use std::sync::Arc;

    type Out = Vec<Dispatched<Arc<ConsumerHandle>>>;

    thread_local! {
        static DISPATCHED: Cell<Out> = const { Cell::new(Vec::new()) };
        static BATCH: Cell<Vec<OutboxItem>> = const { Cell::new(Vec::new()) };
        static SEQS: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
    }

    pub(super) fn take_seqs() -> Vec<u64> {
        SEQS.take()
    }

    pub(super) fn put_seqs(v: Vec<u64>) {
        if v.capacity() <= KEEP {
            SEQS.set(v);
        }
    }

    /// Vectors that grew past this many entries are not kept.
    const KEEP: usize = 4096;

    pub(super) fn take_dispatched() -> Out {
        DISPATCHED.take()
    }

    pub(super) fn put_dispatched(v: Out) {
        if v.capacity() <= KEEP {
            debug_assert!(v.is_empty());
            DISPATCHED.set(v);
        }
    }

    pub(super) fn take_batch() -> Vec<OutboxItem> {
        BATCH.take()
    }

    pub(super) fn put_batch(v: Vec<OutboxItem>) {
        if v.capacity() <= KEEP {
            debug_assert!(v.is_empty());
            BATCH.set(v);
        }
    }
}
