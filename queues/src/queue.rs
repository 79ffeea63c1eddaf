//! One queue's state machine: ready messages, consumers, and totals over
//! unacked deliveries (each delivery's one record, [`Unacked`], is made
//! here and kept by its holder, which hands it back to settle it).
//!
//! Delivery is push: after anything that may let messages move (a publish,
//! an ack, a new consumer, freed credit) the owner calls [`QueueCore::dispatch`],
//! which hands ready messages round-robin to consumers that have credit.
//! Credit is the consumer's prefetch (manual ack), a fixed window for no-ack
//! consumers (so a slow connection cannot make a queue buffer without
//! bound), and optionally a limit shared by every consumer of one channel
//! (basic.qos global=true).
//!
//! Consumers are kept sorted by priority (`x-priority`, highest first; in
//! registration order within one): a message goes to the highest priority
//! that has a consumer with credit, round-robin within that priority. With
//! single active consumer only one consumer receives at a time (see
//! [`QueueCore::set_single_active`]).

use crate::limits::{DeadCounters, DeadMessage, QueueLimits};
use crate::message::{Message, QueuedMessage, StoredRef};
use crate::peek::Peeked;
use crate::store::{MessageStore, Tally};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

mod lifecycle;
mod redelivery;

pub type ConsumerId = u64;

/// A prefetch limit shared by all consumers of one channel (RabbitMQ's
/// global qos). Queues take a slot per delivery; the channel gives slots
/// back as it sees acks. Atomic, because consumers of one channel can
/// sit on many queues.
#[derive(Debug, Default)]
pub struct ChannelLimit {
    limit: AtomicU32,
    in_flight: AtomicU32,
}

impl ChannelLimit {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free (0 means no limit; still counted).
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if limit != 0 && cur >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives `n` slots back; returns whether the limit was reached before,
    /// i.e. whether queues may now deliver what they held back.
    pub fn release(&self, n: u32) -> bool {
        if n == 0 {
            return false;
        }
        let before = self.in_flight.fetch_sub(n, Ordering::AcqRel);
        let limit = self.limit.load(Ordering::Relaxed);
        limit != 0 && before >= limit
    }
}

/// What a new consumer asks for.
#[derive(Debug, Clone)]
pub struct ConsumerSpec<C> {
    pub id: ConsumerId,
    /// The owner's handle, returned with each delivery.
    pub handle: C,
    pub no_ack: bool,
    /// Per-consumer prefetch (0: unlimited). Ignored for no-ack consumers.
    pub prefetch: u32,
    pub exclusive: bool,
    /// The channel's shared limit (global qos), for manual-ack consumers.
    pub channel_limit: Option<Arc<ChannelLimit>>,
    /// `x-priority`: higher receives first while it has credit.
    pub priority: i64,
}

/// What a consumer is doing, as the management API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A consumer of a queue without single active consumer.
    Up,
    /// The one consumer of a single-active-consumer queue that receives.
    SingleActive,
    /// A consumer of a single-active-consumer queue waiting its turn.
    Waiting,
}

/// One priority's run of consumers in [`QueueCore::consumers`]: it ends
/// before index `end` (and starts at the previous group's end).
#[derive(Debug, Clone, Copy)]
struct Group {
    priority: i64,
    end: usize,
    /// Round-robin cursor, relative to the group's start.
    cursor: usize,
}

/// How a try to deliver one message to one consumer went.
enum Tried {
    Delivered,
    /// The consumer (or its channel) has no credit left.
    NoCredit,
    /// Nothing left to deliver.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeError {
    /// The queue has an exclusive consumer, or the new one wants
    /// exclusivity while others consume.
    ExclusiveConflict,
}

struct Consumer<C> {
    spec: ConsumerSpec<C>,
    in_flight: u32,
    /// Deliveries handed to the connection and not yet written to its
    /// socket, for consumers whose credit is not bounded by acks (see
    /// [`Consumer::credit_on_write`]).
    unwritten: u32,
}

impl<C> Consumer<C> {
    /// Whether this consumer's credit comes back as its deliveries are
    /// written rather than acked: no-ack consumers, and manual-ack ones
    /// with no prefetch limit. For both, the socket is the only limit (as
    /// in RabbitMQ), so a window of written-but-unsent deliveries keeps a
    /// slow reader from pulling a whole backlog (paged-out bodies
    /// included) into its connection's memory.
    fn credit_on_write(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0
    }

    /// Messages it holds unacked (RabbitMQ's "checked out"): none for a
    /// no-ack consumer, whose `in_flight` counts unwritten deliveries.
    fn holds_unacked(&self) -> bool {
        !self.spec.no_ack && self.in_flight > 0
    }

    fn has_credit(&self, noack_window: u32) -> bool {
        if self.spec.no_ack {
            self.in_flight < noack_window
        } else if self.spec.prefetch == 0 {
            self.unwritten < noack_window
        } else {
            self.in_flight < self.spec.prefetch
        }
    }
}

/// A message handed to a consumer by [`QueueCore::dispatch`].
#[derive(Debug)]
pub struct Dispatched<C> {
    pub consumer: ConsumerId,
    pub handle: C,
    pub message: QueuedMessage,
    pub no_ack: bool,
    /// Whether this delivery took a slot of the channel's shared limit,
    /// which the channel must release when the message is settled.
    pub took_channel_slot: bool,
    /// Whether the connection gives credit back once it has written this
    /// delivery ([`QueueCore::credit_written`]).
    pub credit_on_write: bool,
    /// The `x-delivery-count` header to add (see
    /// [`QueueCore::delivery_header`]): `None` for a first delivery or a
    /// queue without a delivery limit.
    pub delivery_count: Option<u32>,
    /// A no-ack delivery's TTL deadline, which it takes back to the queue
    /// if it is handed back unwritten ([`QueueCore::undeliver`]); a
    /// manual-ack delivery's stays with the queue.
    pub deadline: Option<u64>,
    /// A manual-ack delivery's record, for its holder to keep until it
    /// hands it back; `None` for a no-ack one.
    pub held: Option<Unacked>,
}

/// The top bit of [`Unacked::at`]: the delivery was a redelivery.
const REDELIVERED_BIT: u64 = 1 << 63;
/// The top bit of [`Unacked::size`]: the message is persistent.
const PERSISTENT_BIT: u32 = 1 << 31;
/// The next bit of [`Unacked::size`]: the delivery holds a slot of its
/// channel's shared prefetch limit ([`ChannelLimit`]). Bodies stay far
/// below 2^30 bytes (the broker caps them at 512 MiB).
const SLOT_BIT: u32 = 1 << 30;
const SIZE_MASK: u32 = SLOT_BIT - 1;

/// One unacked delivery: the only record of it. The queue makes it as it
/// delivers (dispatch, basic.get) and hands it to the holder (a channel),
/// which keeps it until the delivery is settled and then hands it back
/// ([`QueueCore::ack`], [`QueueCore::requeue`], [`QueueCore::reject`]);
/// the queue keeps only totals over the records it handed out. Packed:
/// 40 bytes.
#[derive(Debug)]
pub struct Unacked {
    pub seq: u64,
    /// `None`: the store keeps where the message lies on disk instead
    /// (a durable queue past its memory budget, see
    /// [`MessageStore::keep_unacked`]), so a consumer sitting on a huge
    /// backlog does not pin every body it was sent; or the record is
    /// [`Unacked::untracked`].
    message: Option<Arc<Message>>,
    /// When it was delivered (the caller's clock, milliseconds), with
    /// [`REDELIVERED_BIT`] set for a redelivery.
    at: u64,
    /// The consumer it was delivered to; 0 for basic.get (consumer ids
    /// start at 1).
    consumer: ConsumerId,
    /// Body bytes, with [`PERSISTENT_BIT`] and [`SLOT_BIT`].
    size: u32,
}

// The packing the record's docs promise.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Unacked>() == 40);

impl Unacked {
    fn new(consumer: ConsumerId, m: &QueuedMessage, now: u64, keep_body: bool) -> Self {
        let flag = if m.redelivered { REDELIVERED_BIT } else { 0 };
        let size = (m.message.size().min(SIZE_MASK as u64) as u32)
            | if m.message.persistent {
                PERSISTENT_BIT
            } else {
                0
            };
        Unacked {
            seq: m.seq,
            message: keep_body.then(|| m.message.clone()),
            at: (now & !REDELIVERED_BIT) | flag,
            consumer,
            size,
        }
    }

    /// A record for a delivery no [`QueueCore`] counted (a stream's, whose
    /// acks only free credit): its seq and when it was delivered.
    pub fn untracked(seq: u64, consumer: ConsumerId, now: u64) -> Self {
        Unacked {
            seq,
            message: None,
            at: now & !REDELIVERED_BIT,
            consumer,
            size: 0,
        }
    }

    /// Body bytes.
    pub fn bytes(&self) -> u64 {
        (self.size & SIZE_MASK) as u64
    }

    pub fn persistent(&self) -> bool {
        self.size & PERSISTENT_BIT != 0
    }

    /// When it was delivered, as given to the queue.
    pub fn delivered_at(&self) -> u64 {
        self.at & !REDELIVERED_BIT
    }

    pub fn redelivered(&self) -> bool {
        self.at & REDELIVERED_BIT != 0
    }

    /// The consumer holding it; `None` for basic.get.
    pub fn consumer(&self) -> Option<ConsumerId> {
        (self.consumer != 0).then_some(self.consumer)
    }

    /// The body, when the record keeps it (see [`Unacked::message`]).
    pub fn message(&self) -> Option<&Arc<Message>> {
        self.message.as_ref()
    }

    /// Whether it holds a slot of its channel's shared prefetch limit.
    pub fn slot(&self) -> bool {
        self.size & SLOT_BIT != 0
    }

    pub fn set_slot(&mut self, on: bool) {
        if on {
            self.size |= SLOT_BIT;
        } else {
            self.size &= !SLOT_BIT;
        }
    }
}

/// The state of one queue.
pub struct QueueCore<C> {
    store: Box<dyn MessageStore>,
    next_seq: u64,
    /// Highest priority first, registration order within one priority.
    consumers: Vec<Consumer<C>>,
    /// The priorities' runs in `consumers`, each with its round-robin
    /// cursor: one group in the common case (every consumer priority 0).
    groups: Vec<Group>,
    /// Single active consumer: only `active` receives.
    single_active: bool,
    active: Option<ConsumerId>,
    /// Deliveries handed out and not yet handed back: their records
    /// ([`Unacked`]) live with their holders, the queue keeps the count
    /// (and `unacked_totals`, and each consumer's `in_flight`).
    unacked: usize,
    /// Cancelled manual-ack consumers whose deliveries are still unacked,
    /// with how many they hold; each leaves with its last settled one.
    departed: Vec<(ConsumerId, u32)>,
    /// Credit of consumers not bounded by acks (no-ack, or prefetch 0):
    /// deliveries handed over but not yet confirmed written by the
    /// connection ([`QueueCore::credit_written`]).
    noack_window: u32,
    /// Whether a consumer ever attached (auto-delete needs one to have left).
    had_consumer: bool,
    /// TTLs, length limits, dead-lettering.
    limits: QueueLimits,
    /// When ready messages that have a TTL expire, `(seq, deadline)` in
    /// seq order (the store's order): only messages with a TTL pay for
    /// an entry, so a plain queue keeps this empty.
    deadlines: lifecycle::Deadlines,
    /// Deadlines of delivered, unacked messages, with their lane,
    /// restored on requeue.
    held_deadlines: HashMap<u64, (u64, usize)>,
    /// Messages dropped for a dead-letter exchange, for the owner to
    /// take ([`QueueCore::take_dead`]) after each operation.
    dead: Vec<DeadMessage>,
    /// How often each message was handed back (requeued) while the queue
    /// had a delivery limit, by seq: only such messages pay for an entry,
    /// so a plain queue keeps this empty (see `queue/redelivery.rs`).
    delivery_counts: HashMap<u64, u32>,
    /// Unacked messages' totals (the management API's
    /// `message_bytes_unacknowledged` and its shares), kept as counters.
    unacked_totals: UnackedTotals,
    /// Counts messages dropped without a dead-letter exchange (the owner
    /// counts the ones it republishes, as only it knows whether the
    /// exchange exists).
    dead_counters: Arc<DeadCounters>,
}

/// Body byte totals and the message counts beside them as the management
/// API shows them (RabbitMQ's `message_bytes_*`, `messages_persistent`
/// and `messages_*_ram`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTotals {
    pub ready: u64,
    pub unacked: u64,
    /// Body bytes of persistent messages ready or unacked, in a store
    /// that keeps them across a restart.
    pub persistent: u64,
    /// How many messages `persistent` counts.
    pub persistent_messages: u64,
    /// Ready messages whose body is in memory.
    pub ram_ready: Tally,
    /// Unacked messages whose body the queue keeps in memory.
    pub ram_unacked: Tally,
}

/// Totals over the unacked messages, updated as they come and go.
#[derive(Debug, Clone, Copy, Default)]
struct UnackedTotals {
    bytes: u64,
    persistent: Tally,
    /// Those whose body is kept ([`Unacked::message`]).
    ram: Tally,
}

impl UnackedTotals {
    fn add(&mut self, u: &Unacked) {
        self.bytes += u.bytes();
        if u.persistent() {
            self.persistent.add(u.bytes());
        }
        if u.message.is_some() {
            self.ram.add(u.bytes());
        }
    }

    fn sub(&mut self, u: &Unacked) {
        self.bytes -= u.bytes();
        if u.persistent() {
            self.persistent.sub(u.bytes());
        }
        if u.message.is_some() {
            self.ram.sub(u.bytes());
        }
    }
}

impl<C: Clone> QueueCore<C> {
    pub fn new(mut store: Box<dyn MessageStore>, noack_window: u32) -> Self {
        QueueCore {
            next_seq: store.next_seq(),
            deadlines: lifecycle::Deadlines::new(
                store.lanes(),
                store.take_recovered_lane_deadlines(),
            ),
            delivery_counts: store.take_recovered_counts().into_iter().collect(),
            held_deadlines: HashMap::new(),
            dead: Vec::new(),
            dead_counters: Arc::default(),
            limits: QueueLimits::default(),
            store,
            consumers: Vec::new(),
            groups: Vec::new(),
            single_active: false,
            active: None,
            unacked: 0,
            departed: Vec::new(),
            noack_window: noack_window.max(1),
            had_consumer: false,
            unacked_totals: UnackedTotals::default(),
        }
    }

    /// Body byte totals (ready, unacked, persistent) and the counts of
    /// persistent and in-memory messages: counters only, O(1).
    pub fn byte_totals(&self) -> ByteTotals {
        let u = &self.unacked_totals;
        // Only a store that survives a restart has persistent messages.
        let persistent = self
            .store
            .persistent()
            .map_or(Tally::default(), |ready| ready + u.persistent);
        ByteTotals {
            ready: self.store.bytes(),
            unacked: u.bytes,
            persistent: persistent.bytes,
            persistent_messages: persistent.count,
            ram_ready: self.store.in_memory(),
            ram_unacked: u.ram,
        }
    }

    /// Appends a message; returns its `seq`.
    pub fn publish(&mut self, message: Arc<Message>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.store.push(QueuedMessage {
            seq,
            message,
            redelivered: false,
        });
        seq
    }

    /// Appends a message whose body was paged out to the disk's transient
    /// area at `at` (see [`MessageStore::push_paged`]), with its
    /// `priority` property; returns its `seq`.
    pub fn publish_paged(&mut self, at: StoredRef, size: u32, priority: u8) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.store.push_paged_at(seq, at, size, priority);
        seq
    }

    /// Hands ready messages to consumers with credit: the highest priority
    /// that has credit, round-robin within it (or only the active consumer,
    /// see [`QueueCore::set_single_active`]). `now`
    /// (milliseconds, any clock the caller likes; the broker passes a coarse
    /// wall clock read once per call) is recorded as the delivery time of
    /// each manual-ack delivery.
    pub fn dispatch(&mut self, now: u64, out: &mut Vec<Dispatched<C>>) {
        if self.consumers.is_empty() {
            return;
        }
        if self.single_active {
            return self.dispatch_single(now, out);
        }
        'messages: while !self.store.is_empty() {
            let mut start = 0;
            for g in 0..self.groups.len() {
                let Group { end, cursor, .. } = self.groups[g];
                let n = end - start;
                for step in 0..n {
                    let local = (cursor + step) % n;
                    match self.try_deliver(start + local, now, out) {
                        Tried::NoCredit => continue,
                        Tried::Empty => break 'messages,
                        Tried::Delivered => {
                            self.groups[g].cursor = (local + 1) % n;
                            continue 'messages;
                        }
                    }
                }
                start = end;
            }
            break; // nobody has credit
        }
    }

    /// [`QueueCore::dispatch`] for a single-active-consumer queue.
    fn dispatch_single(&mut self, now: u64, out: &mut Vec<Dispatched<C>>) {
        self.update_active();
        let Some(i) = self.active_index() else { return };
        if self.fading(i) {
            return;
        }
        while let Tried::Delivered = self.try_deliver(i, now, out) {}
    }

    /// Delivers the next ready message to `consumers[i]` if it has credit.
    fn try_deliver(&mut self, i: usize, now: u64, out: &mut Vec<Dispatched<C>>) -> Tried {
        let c = &mut self.consumers[i];
        if !c.has_credit(self.noack_window) {
            return Tried::NoCredit;
        }
        let took_slot = match (&c.spec.channel_limit, c.spec.no_ack) {
            (Some(limit), false) => {
                if !limit.try_acquire() {
                    return Tried::NoCredit;
                }
                true
            }
            _ => false,
        };
        let Some((m, deadline)) = self.pop_live(now) else {
            let c = &self.consumers[i];
            if took_slot {
                if let Some(l) = &c.spec.channel_limit {
                    l.release(1);
                }
            }
            return Tried::Empty;
        };
        let delivery_count = self.delivery_header(m.seq, false);
        let c = &mut self.consumers[i];
        c.in_flight += 1;
        let credit_on_write = c.credit_on_write();
        if credit_on_write && !c.spec.no_ack {
            c.unwritten += 1;
        }
        let (id, no_ack, handle) = (c.spec.id, c.spec.no_ack, c.spec.handle.clone());
        let held = if no_ack {
            self.store.settle(m.seq);
            self.forget_count(m.seq);
            None
        } else {
            let mut h = self.hold(id, &m, now, deadline);
            h.set_slot(took_slot);
            Some(h)
        };
        out.push(Dispatched {
            consumer: id,
            handle,
            message: m,
            no_ack,
            took_channel_slot: took_slot,
            credit_on_write,
            delivery_count,
            deadline: if no_ack { deadline } else { None },
            held,
        });
        Tried::Delivered
    }

    /// Counts `m` as unacked by `consumer` (0: basic.get), delivered at
    /// `now`, with its TTL deadline kept to restore if it comes back;
    /// returns its record for the holder.
    fn hold(
        &mut self,
        consumer: ConsumerId,
        m: &QueuedMessage,
        now: u64,
        deadline: Option<u64>,
    ) -> Unacked {
        let keep = self.store.keep_unacked(m);
        let u = Unacked::new(consumer, m, now, keep);
        self.unacked_totals.add(&u);
        self.unacked += 1;
        if let Some(d) = deadline {
            let lane = self.store.lane(&m.message);
            self.held_deadlines.insert(m.seq, (d, lane));
        }
        u
    }

    /// basic.get: the head message, if any, how many remain after it, and
    /// (unless `no_ack`) its record for the taker to hand back. `now` is
    /// recorded as its delivery time.
    pub fn get(
        &mut self,
        no_ack: bool,
        now: u64,
    ) -> Option<(QueuedMessage, usize, Option<Unacked>)> {
        let (m, deadline) = self.pop_live(now)?;
        let held = if no_ack {
            self.store.settle(m.seq);
            self.forget_count(m.seq);
            None
        } else {
            Some(self.hold(0, &m, now, deadline))
        };
        let left = self.store.len();
        Some((m, left, held))
    }

    /// A record came back: it leaves the totals and its consumer's count.
    fn release(&mut self, u: &Unacked) {
        self.unacked = self.unacked.saturating_sub(1);
        self.unacked_totals.sub(u);
        let Some(id) = u.consumer() else { return };
        if let Some(c) = self.consumers.iter_mut().find(|c| c.spec.id == id) {
            c.in_flight = c.in_flight.saturating_sub(1);
        } else if let Some(i) = self.departed.iter().position(|c| c.0 == id) {
            let c = &mut self.departed[i];
            c.1 = c.1.saturating_sub(1);
            if c.1 == 0 {
                self.departed.swap_remove(i);
            }
        }
    }

    /// Acked: the messages are done. Returns how many.
    pub fn ack(&mut self, held: impl IntoIterator<Item = Unacked>) -> usize {
        let mut n = 0;
        for u in held {
            self.release(&u);
            self.store.settle(u.seq);
            // Most queues have no TTL: skip hashing into an empty map.
            if !self.held_deadlines.is_empty() {
                self.held_deadlines.remove(&u.seq);
            }
            self.forget_count(u.seq);
            n += 1;
        }
        n
    }

    /// Puts delivered messages back, at their original place, redelivered.
    /// Under a delivery limit each counts as a redelivery, and one handed
    /// back more often than the limit is dropped (or dead-lettered,
    /// `delivery_limit`) instead.
    pub fn requeue(&mut self, held: impl IntoIterator<Item = Unacked>) -> usize {
        let mut n = 0;
        for u in held {
            n += 1;
            self.release(&u);
            let seq = u.seq;
            let Some(u) = self.count_return(u) else {
                continue;
            };
            match u.message {
                Some(message) => self.store.requeue(QueuedMessage {
                    seq,
                    message,
                    redelivered: true,
                }),
                // Back as it lies on disk; read again before delivery.
                None => self.store.requeue_stored(seq),
            }
            self.restore_deadline(seq);
        }
        n
    }

    /// A dispatched message never reached its consumer (it was cancelled,
    /// or its connection went away first): it goes back to its place, as
    /// it was, without counting as delivered. `written`: where a
    /// persistent no-ack delivery was written again (see
    /// [`QueueCore::rewrite_disk`]); `deadline`: a no-ack delivery's TTL
    /// deadline ([`Dispatched::deadline`]), which it keeps; `held`: a
    /// manual-ack delivery's record ([`Dispatched::held`]).
    pub fn undeliver(
        &mut self,
        m: QueuedMessage,
        no_ack: bool,
        written: Option<StoredRef>,
        deadline: Option<u64>,
        held: Option<Unacked>,
    ) {
        if no_ack {
            let seq = m.seq;
            let lane = self.store.lane(&m.message);
            match written {
                Some(at) => self.store.requeue_written(m, at, deadline),
                None => self.store.requeue(m),
            }
            if let Some(d) = deadline {
                self.insert_deadline(lane, seq, d);
            }
        } else if let Some(u) = held {
            self.release(&u);
            self.restore_deadline(m.seq);
            // Never written: its write credit comes back too.
            if let Some(id) = u.consumer() {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.spec.id == id) {
                    c.unwritten = c.unwritten.saturating_sub(1);
                }
            }
            self.store.requeue(m);
        }
    }

    /// Where a persistent no-ack delivery handed back to
    /// [`QueueCore::undeliver`] must first be written again, without the
    /// queue's lock (see [`MessageStore::rewrite_disk`]).
    pub fn rewrite_disk(&self) -> Option<Arc<crate::disk::Disk>> {
        self.store.rewrite_disk()
    }

    /// A connection wrote `n` deliveries of a consumer whose credit comes
    /// back on write (see [`Dispatched::credit_on_write`]): no-ack
    /// deliveries are done, manual-ack ones stay unacked but no longer
    /// count against the write window.
    pub fn credit_written(&mut self, consumer: ConsumerId, n: u32) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.spec.id == consumer) {
            if c.spec.no_ack {
                c.in_flight = c.in_flight.saturating_sub(n);
            } else {
                c.unwritten = c.unwritten.saturating_sub(n);
            }
        }
    }

    pub fn add_consumer(&mut self, spec: ConsumerSpec<C>) -> Result<(), ConsumeError> {
        let exclusive_exists = self.consumers.iter().any(|c| c.spec.exclusive);
        // RabbitMQ (3.10.8, checked) refuses every exclusive consumer of a
        // single-active-consumer queue, as "in exclusive use".
        let busy = !self.consumers.is_empty() || self.single_active;
        if exclusive_exists || (spec.exclusive && busy) {
            return Err(ConsumeError::ExclusiveConflict);
        }
        // After every consumer of the same or a higher priority: last of
        // its group, so the group's cursor is unaffected.
        let at = self
            .consumers
            .partition_point(|c| c.spec.priority >= spec.priority);
        self.consumers.insert(
            at,
            Consumer {
                spec,
                in_flight: 0,
                unwritten: 0,
            },
        );
        self.regroup();
        self.had_consumer = true;
        self.update_active();
        Ok(())
    }

    /// Removes a consumer; its unacked messages stay with its channel.
    /// With single active consumer, the next one takes over.
    pub fn remove_consumer(&mut self, id: ConsumerId) -> Option<C> {
        let i = self.consumers.iter().position(|c| c.spec.id == id)?;
        self.unlink_cursor(i);
        let c = self.consumers.remove(i);
        self.regroup();
        if self.active == Some(id) {
            self.active = None;
        }
        self.update_active();
        let handle = c.spec.handle.clone();
        if !c.spec.no_ack && c.in_flight > 0 {
            self.departed.push((id, c.in_flight));
        }
        Some(handle)
    }

    /// Rebuilds the priority groups after `consumers` changed, keeping
    /// each surviving priority's cursor.
    fn regroup(&mut self) {
        let old = std::mem::take(&mut self.groups);
        let mut start = 0;
        while start < self.consumers.len() {
            let priority = self.consumers[start].spec.priority;
            let end =
                start + self.consumers[start..].partition_point(|c| c.spec.priority == priority);
            let cursor = old
                .iter()
                .find(|g| g.priority == priority)
                .map_or(0, |g| g.cursor);
            self.groups.push(Group {
                priority,
                end,
                cursor: if cursor < end - start { cursor } else { 0 },
            });
            start = end;
        }
    }

    /// Before `consumers[i]` is removed: its group's cursor moves back
    /// past it, so round-robin goes on with the consumer it pointed at.
    fn unlink_cursor(&mut self, i: usize) {
        let mut start = 0;
        for g in &mut self.groups {
            if i < g.end {
                if i - start < g.cursor {
                    g.cursor -= 1;
                }
                return;
            }
            start = g.end;
        }
    }

    /// Turns single active consumer on (`x-single-active-consumer`).
    pub fn set_single_active(&mut self, on: bool) {
        self.single_active = on;
        self.update_active();
    }

    pub fn single_active(&self) -> bool {
        self.single_active
    }

    /// Picks the active consumer of a single-active-consumer queue: the
    /// first (highest priority, earliest registered) when there is none.
    /// A waiting consumer of a higher priority than the active one takes
    /// over once the active one holds no unacked messages; until then the
    /// active one is "fading" and gets nothing new (rabbit_fifo's rule for
    /// quorum queues since RabbitMQ 3.12).
    fn update_active(&mut self) {
        if !self.single_active {
            return;
        }
        let Some(top) = self.consumers.first() else {
            self.active = None;
            return;
        };
        let top_id = top.spec.id;
        match self.active_index() {
            None => self.active = Some(top_id),
            Some(i) => {
                let c = &self.consumers[i];
                if c.spec.priority < self.consumers[0].spec.priority && !c.holds_unacked() {
                    self.active = Some(top_id);
                }
            }
        }
    }

    fn active_index(&self) -> Option<usize> {
        let id = self.active?;
        self.consumers.iter().position(|c| c.spec.id == id)
    }

    /// Whether the active consumer at `i` waits for its unacked messages
    /// to settle before a higher-priority consumer takes over.
    fn fading(&self, i: usize) -> bool {
        self.consumers[i].spec.priority < self.consumers[0].spec.priority
    }

    /// The active consumer's handle (single active consumer only).
    pub fn active_consumer(&self) -> Option<C> {
        let i = self.active_index()?;
        Some(self.consumers[i].spec.handle.clone())
    }

    /// What consumer `id` is doing (`None`: not a consumer of this queue).
    pub fn activity(&self, id: ConsumerId) -> Option<Activity> {
        self.consumers.iter().find(|c| c.spec.id == id)?;
        Some(if !self.single_active {
            Activity::Up
        } else if self.active == Some(id) {
            Activity::SingleActive
        } else {
            Activity::Waiting
        })
    }

    /// Removes all consumers (the queue is being deleted).
    pub fn take_consumers(&mut self) -> Vec<(ConsumerId, C)> {
        self.groups.clear();
        self.active = None;
        self.consumers
            .drain(..)
            .map(|c| (c.spec.id, c.spec.handle))
            .collect()
    }

    /// Whether auto-delete applies: a consumer came and none is left.
    pub fn unused_after_consumers(&self) -> bool {
        self.had_consumer && self.consumers.is_empty()
    }

    pub fn purge(&mut self) -> usize {
        self.deadlines.clear();
        if !self.delivery_counts.is_empty() {
            // Only delivered messages keep their count: the ready ones'
            // go (rare: only a queue with a delivery limit has counts).
            let ready = self.store.peek_entries(0, self.store.len());
            for e in ready.entries() {
                self.delivery_counts.remove(&e.seq);
            }
        }
        self.store.purge()
    }

    /// Ready messages.
    pub fn message_count(&self) -> usize {
        self.store.len()
    }

    pub fn message_bytes(&self) -> u64 {
        self.store.bytes()
    }

    /// Paged-out bodies the store needs read before delivery can go on
    /// (see [`MessageStore::take_loads`]): read them without the lock.
    pub fn take_loads(&mut self) -> Option<crate::disk::Loads> {
        self.store.take_loads()
    }

    /// The head's body, if paged out (basic.get reads it at once).
    pub fn head_load(&mut self) -> Option<crate::disk::Loads> {
        self.store.head_load()
    }

    pub fn finish_loads(&mut self, loaded: crate::disk::LoadedBodies) {
        self.store.finish_loads(loaded)
    }

    /// Body bytes of ready messages that only memory can hold (see
    /// [`MessageStore::memory_bytes`]).
    pub fn memory_bytes(&self) -> u64 {
        self.store.memory_bytes()
    }

    /// Deliveries handed out and not yet handed back.
    pub fn unacked_count(&self) -> usize {
        self.unacked
    }

    /// Unacked deliveries consumer `id` holds (it may have been cancelled).
    pub fn consumer_unacked(&self, id: ConsumerId) -> u32 {
        match self.consumers.iter().find(|c| c.spec.id == id) {
            Some(c) if !c.spec.no_ack => c.in_flight,
            Some(_) => 0,
            None => self.departed.iter().find(|c| c.0 == id).map_or(0, |c| c.1),
        }
    }

    /// Where an unacked delivery whose record keeps no body lies on disk
    /// (the unacked view reads it from there).
    pub fn unacked_location(&self, seq: u64) -> Option<StoredRef> {
        self.store.unacked_location(seq)
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    pub fn peek(&self, n: usize) -> Vec<QueuedMessage> {
        self.store.peek(n)
    }

    /// Up to `n` ready messages from `offset` places after the head,
    /// leaving the queue exactly as it was (no requeue, no redelivered
    /// mark, no counter).
    pub fn peek_at(&self, offset: usize, n: usize) -> Vec<QueuedMessage> {
        self.store.peek_at(offset, n)
    }

    /// [`QueueCore::peek_at`]'s first step: copies out what is in memory
    /// and where paged-out bodies lie, reading nothing from disk. Call it
    /// under the queue's lock and [`Peeked::load`] after releasing it.
    pub fn peek_entries(&self, offset: usize, n: usize) -> Peeked {
        self.store.peek_entries(offset, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::msg;
    use crate::store::MemoryStore;

    fn core() -> QueueCore<&'static str> {
        QueueCore::new(Box::new(MemoryStore::default()), 100)
    }

    fn spec(id: u64, h: &'static str, prefetch: u32) -> ConsumerSpec<&'static str> {
        ConsumerSpec {
            id,
            handle: h,
            no_ack: false,
            prefetch,
            exclusive: false,
            channel_limit: None,
            priority: 0,
        }
    }

    fn publish(q: &mut QueueCore<&'static str>, n: usize) {
        for i in 0..n {
            q.publish(msg(0, &i.to_string()).message);
        }
    }

    fn handles(out: &[Dispatched<&'static str>]) -> Vec<&'static str> {
        out.iter().map(|d| d.handle).collect()
    }

    /// Unacked messages count in memory only while their record keeps
    /// the body (a durable store past its budget keeps their place on
    /// disk instead); persistence counts ready and unacked alike.
    #[test]
    fn byte_totals_count_persistent_and_in_memory_unacked() {
        use crate::disk::tests::{persistent, tempdir};
        use crate::{Disk, DiskStore};
        let dir = tempdir("qcounts");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let store = DiskStore::new(disk.clone(), 31, Vec::new(), 20);
        let mut q: QueueCore<&'static str> = QueueCore::new(Box::new(store), 100);
        for i in 1..=3 {
            q.publish(persistent(i, "0123456789", &disk, 1).message);
        }
        q.publish(msg(0, "abcde").message);
        let t = |count, bytes| Tally { count, bytes };
        let b = q.byte_totals();
        assert_eq!((b.persistent_messages, b.persistent), (3, 30));
        assert_eq!((b.ram_ready, b.ram_unacked), (t(3, 25), t(0, 0)));

        q.add_consumer(spec(1, "a", 10)).unwrap();
        let mut out = Vec::new();
        while q.message_count() > 0 {
            q.dispatch(0, &mut out);
            if let Some(l) = q.store.take_loads() {
                q.store.finish_loads(l.read());
            }
        }
        assert_eq!(out.len(), 4);
        let b = q.byte_totals();
        assert_eq!(
            (b.persistent_messages, b.persistent, b.unacked),
            (3, 30, 35)
        );
        // Two persistent bodies fit the unacked budget, the third does
        // not; the transient one has no other place.
        assert_eq!((b.ram_ready, b.ram_unacked), (t(0, 0), t(3, 25)));
        assert_eq!(q.ack(held(&mut out)), 4);
        let b = q.byte_totals();
        assert_eq!(
            (b.persistent_messages, b.ram_ready, b.ram_unacked),
            (0, t(0, 0), t(0, 0))
        );
    }

    #[test]
    fn round_robin_with_prefetch() {
        let mut q = core();
        q.add_consumer(spec(1, "a", 1)).unwrap();
        q.add_consumer(spec(2, "b", 1)).unwrap();
        publish(&mut q, 5);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["a", "b"], "prefetch 1 each");
        assert_eq!(q.message_count(), 3);
        let a = out[0].held.take();
        out.clear();
        q.dispatch(0, &mut out);
        assert!(out.is_empty(), "no credit until an ack");
        q.ack(a);
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["a"]);
    }

    #[test]
    fn requeue_keeps_place_and_marks_redelivered() {
        let mut q = core();
        publish(&mut q, 3);
        let (m1, left, h1) = q.get(false, 0).unwrap();
        assert_eq!(left, 2);
        let (m2, _, h2) = q.get(false, 0).unwrap();
        assert_eq!(q.requeue(h2.into_iter().chain(h1)), 2);
        let (again, _, _) = q.get(true, 0).unwrap();
        assert_eq!(again.seq, m1.seq);
        assert!(again.redelivered);
        let (second, _, _) = q.get(true, 0).unwrap();
        assert_eq!(second.seq, m2.seq);
        let (third, _, none) = q.get(true, 0).unwrap();
        assert!(!third.redelivered);
        assert!(none.is_none(), "no record for a no-ack get");
        assert!(q.get(true, 0).is_none());
    }

    #[test]
    fn an_ack_settles_its_record() {
        let mut q = core();
        publish(&mut q, 1);
        let (_, _, h) = q.get(false, 0).unwrap();
        assert_eq!(q.unacked_count(), 1);
        assert_eq!(q.ack(h), 1);
        assert_eq!(q.unacked_count(), 0);
        assert_eq!(q.byte_totals().unacked, 0);
    }

    #[test]
    fn no_ack_consumers_have_a_window() {
        let mut q: QueueCore<&str> = QueueCore::new(Box::new(MemoryStore::default()), 2);
        let mut s = spec(1, "a", 0);
        s.no_ack = true;
        q.add_consumer(s).unwrap();
        publish(&mut q, 5);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(q.unacked_count(), 0, "no-ack deliveries are not unacked");
        q.credit_written(1, 2);
        out.clear();
        q.dispatch(0, &mut out);
        assert_eq!(out.len(), 2);
    }

    /// A manual-ack consumer without prefetch is bounded only by what its
    /// connection has not written yet, never by acks; a delivery handed
    /// back unwritten returns its credit.
    #[test]
    fn unlimited_prefetch_consumers_have_a_write_window() {
        let mut q: QueueCore<&str> = QueueCore::new(Box::new(MemoryStore::default()), 3);
        q.add_consumer(spec(1, "a", 0)).unwrap();
        publish(&mut q, 10);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(out.len(), 3, "the window, not the whole backlog");
        assert!(out.iter().all(|d| d.credit_on_write && !d.no_ack));
        assert_eq!(q.unacked_count(), 3);
        q.credit_written(1, 2);
        let mut more = Vec::new();
        q.dispatch(0, &mut more);
        assert_eq!(more.len(), 2, "written deliveries free the window");
        assert_eq!(q.unacked_count(), 5, "and stay unacked");
        assert_eq!(q.ack(held(&mut out)), 3);
        let mut none = Vec::new();
        q.dispatch(0, &mut none);
        assert!(none.is_empty(), "acks give no write credit");
        let back = more.pop().unwrap();
        q.undeliver(back.message, false, None, None, back.held);
        let mut again = Vec::new();
        q.dispatch(0, &mut again);
        assert_eq!(again.len(), 1, "an unwritten delivery returns its credit");
        // A prefetch-limited consumer is bounded by acks alone.
        let mut p: QueueCore<&str> = QueueCore::new(Box::new(MemoryStore::default()), 1);
        p.add_consumer(spec(1, "a", 4)).unwrap();
        publish(&mut p, 10);
        let mut got = Vec::new();
        p.dispatch(0, &mut got);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|d| !d.credit_on_write));
    }

    #[test]
    fn channel_limit_is_shared() {
        let limit = Arc::new(ChannelLimit::default());
        limit.set_limit(2);
        let mut q1 = core();
        let mut q2 = core();
        let mut s1 = spec(1, "a", 0);
        s1.channel_limit = Some(limit.clone());
        let mut s2 = spec(2, "b", 0);
        s2.channel_limit = Some(limit.clone());
        q1.add_consumer(s1).unwrap();
        q2.add_consumer(s2).unwrap();
        publish(&mut q1, 3);
        publish(&mut q2, 3);
        let mut out = Vec::new();
        q1.dispatch(0, &mut out);
        q2.dispatch(0, &mut out);
        assert_eq!(out.len(), 2, "two slots shared by both queues");
        assert!(out.iter().all(|d| d.took_channel_slot));
        q1.ack(out[0].held.take());
        assert!(
            limit.release(1),
            "the limit was full, so queues should retry"
        );
        out.clear();
        q2.dispatch(0, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn exclusive_consumers_conflict() {
        let mut q = core();
        let mut e = spec(1, "a", 0);
        e.exclusive = true;
        q.add_consumer(e).unwrap();
        assert_eq!(
            q.add_consumer(spec(2, "b", 0)),
            Err(ConsumeError::ExclusiveConflict)
        );
        q.remove_consumer(1);
        assert!(q.unused_after_consumers());
        q.add_consumer(spec(2, "b", 0)).unwrap();
        let mut e2 = spec(3, "c", 0);
        e2.exclusive = true;
        assert_eq!(q.add_consumer(e2), Err(ConsumeError::ExclusiveConflict));
    }

    #[test]
    fn removing_consumer_keeps_round_robin_sane() {
        let mut q = core();
        for (i, h) in ["a", "b", "c"].into_iter().enumerate() {
            q.add_consumer(spec(i as u64, h, 0)).unwrap();
        }
        publish(&mut q, 2);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["a", "b"]);
        q.remove_consumer(0);
        publish(&mut q, 2);
        out.clear();
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["c", "b"]);
    }

    #[test]
    fn peek_changes_nothing() {
        let mut q = core();
        publish(&mut q, 4);
        let (_, _, h) = q.get(false, 0).unwrap();
        q.requeue(h);
        let before: Vec<(u64, bool)> = q.peek(10).iter().map(|m| (m.seq, m.redelivered)).collect();
        let seen: Vec<(u64, bool)> = q
            .peek_at(1, 2)
            .iter()
            .map(|m| (m.seq, m.redelivered))
            .collect();
        assert_eq!(seen, before[1..3].to_vec());
        assert_eq!(
            q.peek(10)
                .iter()
                .map(|m| (m.seq, m.redelivered))
                .collect::<Vec<_>>(),
            before
        );
        assert_eq!((q.message_count(), q.unacked_count()), (4, 0));
        // The head is still the requeued one, the rest still fresh.
        let (head, _, _) = q.get(true, 0).unwrap();
        assert!(head.redelivered);
        let (next, _, _) = q.get(true, 0).unwrap();
        assert!(!next.redelivered, "peeked, not redelivered");
    }

    /// The queue keeps only aggregates over the records it hands out:
    /// count, bytes, per-consumer counts, through deliver, ack, requeue
    /// and cancel; the records carry holder, time and redelivered mark.
    #[test]
    fn aggregates_follow_the_records_handed_out_and_back() {
        let mut q = core();
        q.add_consumer(spec(1, "a", 2)).unwrap();
        q.add_consumer(spec(2, "b", 5)).unwrap();
        publish(&mut q, 6); // bodies "0".."5": one byte each
        let mut out = Vec::new();
        q.dispatch(1_000, &mut out);
        assert_eq!(handles(&out), vec!["a", "b", "a", "b", "b", "b"]);
        publish(&mut q, 1);
        let got = q.get(false, 500).unwrap().2.unwrap();
        assert_eq!((got.consumer(), got.delivered_at()), (None, 500));
        assert!(!got.redelivered() && got.message().is_some());
        let a: Vec<&Unacked> = out.iter().filter_map(|d| d.held.as_ref()).collect();
        assert_eq!(a[0].consumer(), Some(1));
        assert_eq!(a[0].delivered_at(), 1_000);
        let totals = |q: &QueueCore<&'static str>| {
            (
                q.unacked_count(),
                q.byte_totals().unacked,
                q.consumer_unacked(1),
                q.consumer_unacked(2),
            )
        };
        assert_eq!(totals(&q), (7, 7, 2, 4));
        // Acks and requeues take them back out of the totals.
        let mut recs = held(&mut out);
        let b_rest = recs.split_off(2); // a's first, b's first; the rest
        q.ack(recs);
        assert_eq!(totals(&q), (5, 5, 1, 3));
        q.requeue([got]);
        assert_eq!(totals(&q), (4, 4, 1, 3));
        assert_eq!(q.message_count(), 1);
        // A redelivery's record says so.
        let (_, _, again) = q.get(false, 600).unwrap();
        let again = again.unwrap();
        assert!(again.redelivered());
        assert_eq!(totals(&q), (5, 5, 1, 3));
        // A cancelled consumer's count stays until its records come back.
        q.remove_consumer(2);
        assert_eq!(q.consumer_unacked(2), 3);
        let (b, rest): (Vec<Unacked>, Vec<Unacked>) =
            b_rest.into_iter().partition(|u| u.consumer() == Some(2));
        q.requeue(b);
        assert_eq!(totals(&q), (2, 2, 1, 0));
        assert!(q.departed.is_empty(), "it left with its last delivery");
        q.ack(rest.into_iter().chain([again]));
        assert_eq!(totals(&q), (0, 0, 0, 0));
        assert_eq!(q.message_count(), 3, "b's three are back");
    }

    fn held(out: &mut [Dispatched<&'static str>]) -> Vec<Unacked> {
        out.iter_mut().filter_map(|d| d.held.take()).collect()
    }

    fn prio(id: u64, h: &'static str, prefetch: u32, priority: i64) -> ConsumerSpec<&'static str> {
        ConsumerSpec {
            priority,
            ..spec(id, h, prefetch)
        }
    }

    fn seqs(out: &[Dispatched<&'static str>]) -> Vec<u64> {
        out.iter().map(|d| d.message.seq).collect()
    }

    /// Higher priorities take messages while they have credit; lower ones
    /// only when every higher one is full; round-robin within one.
    #[test]
    fn consumer_priorities_fill_the_highest_first() {
        let mut q = core();
        q.add_consumer(prio(1, "low", 10, -5)).unwrap();
        q.add_consumer(prio(2, "hi1", 2, 10)).unwrap();
        q.add_consumer(prio(3, "mid", 1, 0)).unwrap();
        q.add_consumer(prio(4, "hi2", 2, 10)).unwrap();
        publish(&mut q, 8);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(
            handles(&out),
            vec!["hi1", "hi2", "hi1", "hi2", "mid", "low", "low", "low"]
        );
        // Credit freed at the top goes to the top again.
        q.ack([out[0].held.take().unwrap(), out[5].held.take().unwrap()]);
        publish(&mut q, 2);
        let mut more = Vec::new();
        q.dispatch(0, &mut more);
        assert_eq!(handles(&more), vec!["hi1", "low"]);
        // A lower consumer gets nothing while a higher one has credit.
        q.remove_consumer(1);
        q.ack(held(&mut out[1..5]));
        publish(&mut q, 6);
        let mut last = Vec::new();
        q.dispatch(0, &mut last);
        assert_eq!(handles(&last), vec!["hi2", "hi1", "hi2", "mid"]);
    }

    /// Round-robin inside one priority survives consumers coming and going
    /// in another.
    #[test]
    fn round_robin_within_a_priority_keeps_its_place() {
        let mut q = core();
        for (i, h) in ["a", "b", "c"].into_iter().enumerate() {
            q.add_consumer(prio(i as u64, h, 0, 1)).unwrap();
        }
        publish(&mut q, 2);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["a", "b"]);
        q.add_consumer(prio(9, "other", 0, 0)).unwrap();
        q.remove_consumer(0);
        publish(&mut q, 3);
        out.clear();
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["c", "b", "c"]);
    }

    fn sac() -> QueueCore<&'static str> {
        let mut q = core();
        q.set_single_active(true);
        q
    }

    #[test]
    fn single_active_consumer_hands_over_in_registration_order() {
        let mut q = sac();
        q.add_consumer(spec(1, "a", 2)).unwrap();
        q.add_consumer(spec(2, "b", 2)).unwrap();
        q.add_consumer(spec(3, "c", 2)).unwrap();
        assert_eq!(q.activity(1), Some(Activity::SingleActive));
        assert_eq!(q.activity(2), Some(Activity::Waiting));
        assert_eq!(q.active_consumer(), Some("a"));
        publish(&mut q, 5);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(
            handles(&out),
            vec!["a", "a"],
            "only the active one, within its prefetch"
        );
        // The active one goes; its unacked messages are requeued (as its
        // channel closing does) before the next one receives: it gets them first.
        q.remove_consumer(1);
        q.requeue(held(&mut out));
        assert_eq!(q.active_consumer(), Some("b"));
        let mut next = Vec::new();
        q.dispatch(0, &mut next);
        assert_eq!(handles(&next), vec!["b", "b"]);
        assert_eq!(seqs(&next), seqs(&out), "the requeued messages first");
        assert!(next.iter().all(|d| d.message.redelivered));
        // A waiting consumer leaving changes nothing.
        q.remove_consumer(3);
        assert_eq!(q.active_consumer(), Some("b"));
        q.remove_consumer(2);
        assert_eq!(q.active_consumer(), None);
        assert_eq!(q.activity(2), None);
    }

    /// With priorities, the highest becomes active; a higher newcomer takes
    /// over once the active one has settled what it holds, and gets nothing
    /// new meanwhile.
    #[test]
    fn single_active_consumer_follows_priority() {
        let mut q = sac();
        q.add_consumer(prio(1, "a", 1, 0)).unwrap();
        publish(&mut q, 3);
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        assert_eq!(handles(&out), vec!["a"]);
        q.add_consumer(prio(2, "b", 1, 5)).unwrap();
        assert_eq!(q.active_consumer(), Some("a"), "a still holds a message");
        q.ack(held(&mut out));
        let mut more = Vec::new();
        q.dispatch(0, &mut more);
        assert_eq!(handles(&more), vec!["b"], "b took over once a was settled");
        assert_eq!(q.activity(1), Some(Activity::Waiting));
        assert_eq!(q.activity(2), Some(Activity::SingleActive));
        // A lower newcomer waits; an idle active one is replaced at once by a higher one.
        q.add_consumer(prio(3, "c", 1, -1)).unwrap();
        q.ack(held(&mut more));
        q.add_consumer(prio(4, "d", 1, 9)).unwrap();
        assert_eq!(q.active_consumer(), Some("d"));
        // The highest remaining, earliest registered, follows.
        q.remove_consumer(4);
        assert_eq!(q.active_consumer(), Some("b"));
    }

    /// As RabbitMQ 3.10.8: no exclusive consumer on a single-active-consumer
    /// queue, even an empty one; exclusive ones with a priority are fine.
    #[test]
    fn exclusive_consumers_with_sac_and_priorities() {
        let mut q = sac();
        let mut e = prio(1, "a", 0, 4);
        e.exclusive = true;
        assert_eq!(
            q.add_consumer(e.clone()),
            Err(ConsumeError::ExclusiveConflict)
        );
        assert_eq!(q.active_consumer(), None);
        let mut p = core();
        p.add_consumer(e).unwrap();
        assert_eq!(
            p.add_consumer(prio(2, "b", 0, 9)),
            Err(ConsumeError::ExclusiveConflict)
        );
    }
}
