//! Where a queue's ready messages live.
//!
//! A store holds the messages that wait for a consumer, in order. Messages
//! handed to a consumer leave the ready set (`pop`) but a durable store
//! keeps them until `settle` says they were acked or dropped; `requeue`
//! puts one back at its original place (RabbitMQ's order: by `seq`).

use crate::disk::{Disk, LoadedBodies, Loads, LOAD_BATCH, LOAD_BYTES};
use crate::message::{Message, QueuedMessage, StoredRef};
use crate::peek::{PeekBody, PeekEntry, Peeked};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Storage for one queue's messages.
pub trait MessageStore: Send {
    /// A new message at the tail.
    fn push(&mut self, m: QueuedMessage);
    /// The head message, leaving the ready set. A store that pages
    /// bodies out returns `None` while the head's body is on disk only
    /// (it never reads under the queue's lock): see
    /// [`MessageStore::take_loads`].
    fn pop(&mut self) -> Option<QueuedMessage>;
    /// After a `pop` stopped at a paged-out head: the bodies to read
    /// (the head and a bounded run after it), once; `None` when nothing is
    /// wanted or a read is already under way. Read them without the lock
    /// and hand them back with [`MessageStore::finish_loads`].
    fn take_loads(&mut self) -> Option<Loads> {
        None
    }
    /// The head's body if it is paged out, even while a read-ahead is
    /// under way (basic.get cannot wait for a consumer's read-ahead).
    fn head_load(&mut self) -> Option<Loads> {
        None
    }
    /// Bodies read for [`MessageStore::take_loads`] or
    /// [`MessageStore::head_load`].
    fn finish_loads(&mut self, _loaded: LoadedBodies) {}
    /// The head's `seq`, without taking it.
    fn head_seq(&self) -> Option<u64>;
    /// Takes the head out of the ready set whether or not its body is in
    /// memory (never reading it): for dropping it. It awaits
    /// [`MessageStore::settle`] like a popped one.
    fn take_head(&mut self) -> Option<TakenHead> {
        let m = self.pop()?;
        Some(TakenHead {
            seq: m.seq,
            stored: m.message.stored(),
            message: Some(m.message),
            paged: None,
        })
    }
    /// [`MessageStore::push`] for a message that expires at `deadline`
    /// (ms since the epoch): a store that outlives the process keeps the
    /// deadline with the message.
    fn push_expiring(&mut self, m: QueuedMessage, _deadline: Option<u64>) {
        self.push(m)
    }
    /// Deadlines recovered with the messages, `(seq, deadline)` in seq
    /// order; taken once, by the queue at creation.
    fn take_recovered_deadlines(&mut self) -> Vec<(u64, u64)> {
        Vec::new()
    }
    /// Delivered message `seq` (awaiting settle) was handed back for the
    /// `count`th time under a delivery limit: a store that outlives the
    /// process keeps the count with the message, until it is settled or
    /// purged.
    fn set_delivery_count(&mut self, _seq: u64, _count: u32) {}
    /// Delivery counts recovered with the messages, `(seq, count)`; taken
    /// once, by the queue at creation.
    fn take_recovered_counts(&mut self) -> Vec<(u64, u32)> {
        Vec::new()
    }
    /// [`MessageStore::take_recovered_deadlines`] with each one's lane
    /// (see [`MessageStore::lane`]): `(lane, seq, deadline)`, in seq
    /// order within a lane.
    fn take_recovered_lane_deadlines(&mut self) -> Vec<(usize, u64, u64)> {
        self.take_recovered_deadlines()
            .into_iter()
            .map(|(seq, d)| (0, seq, d))
            .collect()
    }
    /// Which of the store's lanes message `m` goes to. A lane is a run of
    /// messages that leave the ready set in `seq` order (the queue keeps
    /// TTL deadlines per lane); a plain store is one lane, a priority
    /// store one per level.
    fn lane(&self, _m: &Message) -> usize {
        0
    }
    /// The lane of the head message.
    fn head_lane(&self) -> usize {
        0
    }
    /// How many lanes there are.
    fn lanes(&self) -> usize {
        1
    }
    /// Appends message `seq` whose body was paged out to the transient
    /// area at `at` (see [`Disk::put_transient`]; written by the caller
    /// without the queue's lock). Only a store made with
    /// [`MemoryStore::paging`] takes it; others log and release it.
    fn push_paged(&mut self, seq: u64, _at: StoredRef, _size: u32) {
        tracing::error!(seq, "this store cannot hold a paged-out body");
    }
    /// [`MessageStore::push_paged`] of a message with this `priority`
    /// property (a priority store places it by it).
    fn push_paged_at(&mut self, seq: u64, at: StoredRef, size: u32, _priority: u8) {
        self.push_paged(seq, at, size)
    }
    /// A delivered message returns to the ready set, ordered by `seq`.
    /// It takes no I/O: a message whose place on disk was already given
    /// up (a no-ack delivery handed back unwritten) comes back in memory
    /// only, unless it was written again first (see
    /// [`MessageStore::rewrite_disk`]).
    fn requeue(&mut self, m: QueuedMessage);
    /// Where a persistent no-ack delivery handed back unwritten must be
    /// written again to stay durable (its record was released as it was
    /// dispatched): the caller writes it there with [`Disk::put_body`]
    /// without the queue's lock, as a publish is written, and hands it
    /// back with [`MessageStore::requeue_written`]. `None`: nothing of
    /// this store survives a restart.
    fn rewrite_disk(&self) -> Option<Arc<Disk>> {
        None
    }
    /// [`MessageStore::requeue`] of a message just written again at `at`
    /// (see [`MessageStore::rewrite_disk`]), with its TTL deadline if it
    /// has one, stored with it as a publish's is.
    fn requeue_written(
        &mut self,
        m: QueuedMessage,
        _at: crate::message::StoredRef,
        _deadline: Option<u64>,
    ) {
        self.requeue(m)
    }
    /// A delivered message is done (acked, or dropped); forget it.
    fn settle(&mut self, seq: u64);
    /// Whether the unacked record of a message just popped for a
    /// manual-ack delivery keeps its body (`true`) or the store keeps its
    /// place on disk instead, to give back with
    /// [`MessageStore::requeue_stored`].
    fn keep_unacked(&mut self, _m: &QueuedMessage) -> bool {
        true
    }
    /// A delivered message whose body the store kept no copy of
    /// ([`MessageStore::keep_unacked`] said so) returns, redelivered.
    fn requeue_stored(&mut self, seq: u64) {
        tracing::error!(seq, "a requeued message has no body and no place on disk");
    }
    /// Where an unacked message whose body is not kept lies on disk.
    fn unacked_location(&self, _seq: u64) -> Option<crate::message::StoredRef> {
        None
    }
    /// Removes every ready message; returns how many.
    fn purge(&mut self) -> usize;
    /// Ready messages.
    fn len(&self) -> usize;
    /// Body bytes of ready messages.
    fn bytes(&self) -> u64;
    /// Body bytes of ready messages that can only be held in memory (a
    /// store that pages persistent bodies out to disk counts only its
    /// transient ones): what flow control's memory budget limits.
    fn memory_bytes(&self) -> u64 {
        self.bytes()
    }
    /// Ready persistent messages and their body bytes, for a store whose
    /// persistent messages survive a restart; `None` for one that keeps
    /// nothing (RabbitMQ counts no persistent messages in a transient
    /// queue). Kept as counters: O(1).
    fn persistent(&self) -> Option<Tally> {
        None
    }
    /// Ready messages whose body is held in memory and their body bytes
    /// (RabbitMQ's `messages_ready_ram`): bodies paged out or kept on
    /// disk only are not. Kept as counters: O(1).
    fn in_memory(&self) -> Tally {
        Tally {
            count: self.len() as u64,
            bytes: self.bytes(),
        }
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Up to `n` ready messages from the head, without taking them.
    fn peek(&self, n: usize) -> Vec<QueuedMessage> {
        self.peek_at(0, n)
    }
    /// Up to `n` ready messages starting `offset` places after the head,
    /// without taking them or changing anything: in-memory ones as they
    /// are, paged-out ones as where to read them ([`Peeked::load`] reads
    /// them later, without the queue's lock). Only those messages are
    /// visited, so peeking at a queue of millions costs what is peeked. A
    /// store may return fewer than asked when reading them all would take
    /// too much memory (the disk store's `PEEK_READ_BUDGET`).
    fn peek_entries(&self, offset: usize, n: usize) -> Peeked;
    /// [`MessageStore::peek_entries`] with the bodies read at once.
    fn peek_at(&self, offset: usize, n: usize) -> Vec<QueuedMessage> {
        self.peek_entries(offset, n)
            .load()
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }
    /// The `seq` the next new message gets (recovered stores continue
    /// after what they hold).
    fn next_seq(&self) -> u64 {
        1
    }
}

/// A number of messages and their body bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }

    pub(crate) fn sub(&mut self, bytes: u64) {
        self.count -= 1;
        self.bytes -= bytes;
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, o: Tally) -> Tally {
        Tally {
            count: self.count + o.count,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl std::iter::Sum for Tally {
    fn sum<I: Iterator<Item = Tally>>(it: I) -> Tally {
        it.fold(Tally::default(), |a, b| a + b)
    }
}

/// A head taken by [`MessageStore::take_head`].
#[derive(Debug, Clone)]
pub struct TakenHead {
    pub seq: u64,
    /// `None` when the body is on disk only.
    pub message: Option<Arc<Message>>,
    pub stored: Option<crate::message::StoredRef>,
    /// A body paged out to the transient area, not in memory: where to
    /// read it (the record is released when this is dropped).
    pub paged: Option<Arc<crate::disk::PagedBody>>,
}

/// Everything in RAM.
///
/// Requeued messages always have a lower `seq` than the messages never
/// delivered (delivery takes from the head), so they sit in their own
/// ordered map that is read first; the main deque stays append-only. New
/// messages arrive with consecutive `seq`s (the queue numbers them), so the
/// deque holds only the message pointer, one word a message, and the seqs
/// follow from `head_seq`. A push that breaks the run (a gap, or a message
/// marked redelivered) goes to `tail`, an ordered map read after the
/// deque, as do the pushes after it until the deque has drained. The deque
/// gives its memory back as it drains, so a backlog's memory does not
/// outlive it.
///
/// Paging: a store made with [`MemoryStore::paging`] also takes messages
/// whose bodies the broker paged out to the disk's transient area once
/// the queue held more than its memory budget ([`MessageStore::push_paged`]).
/// From the first of them until they have all been taken, every new
/// message goes to `paged`, after everything else, so order holds; the
/// plain path above is untouched while a queue is under its budget.
#[derive(Default)]
pub struct MemoryStore {
    requeued: BTreeMap<u64, QueuedMessage>,
    ready: VecDeque<Arc<Message>>,
    /// The seq of `ready`'s first message.
    head_seq: u64,
    tail: BTreeMap<u64, QueuedMessage>,
    bytes: u64,
    /// Where paged-out bodies are written and read; `None`: never pages.
    disk: Option<Arc<Disk>>,
    /// Messages from the first paged-out one on, in seq order.
    paged: VecDeque<Paged>,
    /// Body bytes of `paged` entries whose body is on disk only.
    paged_bytes: u64,
    /// How many `paged` entries have their body on disk only.
    paged_count: u64,
    /// Transient records taken and not yet released: (segment, count),
    /// batched so a drain does not release them one by one.
    releasing: Option<(u32, u32)>,
    /// `pop` stopped at a paged-out head; a read-ahead is under way.
    want_load: bool,
    loading: bool,
}

/// A message in [`MemoryStore::paged`]: 32 bytes, so ten million paged
/// messages cost 320 MB of memory, not their bodies.
#[derive(Debug)]
struct Paged {
    seq: u64,
    /// Its record in the transient area; segment 0 (never used) for a
    /// message that arrived in memory while older ones were paged.
    at: StoredRef,
    size: u32,
    msg: Option<Arc<Message>>,
}

impl Paged {
    fn on_disk(&self) -> bool {
        self.at.seg != 0
    }
}

/// Below this many slots of capacity a drained deque keeps its memory
/// (a steady flow reuses it); above, it shrinks once it is a quarter full.
const KEEP_CAPACITY: usize = 4096;

impl MemoryStore {
    /// A store that can hold bodies paged out to `disk`'s transient area
    /// (see [`MessageStore::push_paged`]).
    pub fn paging(disk: Arc<Disk>) -> Self {
        let mut s = MemoryStore::default();
        s.disk = Some(disk);
        s
    }

    /// Counts a taken or dropped paged record for release.
    fn release(&mut self, at: StoredRef) {
        match &mut self.releasing {
            Some((seg, n)) if *seg == at.seg && *n < 4096 => *n += 1,
            _ => {
                self.flush_releases();
                self.releasing = Some((at.seg, 1));
            }
        }
    }

    fn flush_releases(&mut self) {
        if let (Some((seg, n)), Some(disk)) = (self.releasing.take(), &self.disk) {
            disk.release_transient(seg, n);
        }
    }

    /// Takes `paged`'s head if its body is in memory; otherwise asks for
    /// a read (never reads under the queue's lock).
    fn pop_paged(&mut self) -> Option<QueuedMessage> {
        let head = self.paged.front()?;
        if head.msg.is_none() {
            self.want_load = true;
            return None;
        }
        let p = self.paged.pop_front().expect("a head");
        if p.on_disk() {
            self.release(p.at);
        }
        if self.paged.is_empty() {
            self.flush_releases();
            self.paged = VecDeque::new();
        }
        Some(QueuedMessage {
            seq: p.seq,
            message: p.msg.expect("in memory"),
            redelivered: false,
        })
    }

    /// Forgets every paged entry, releasing their records.
    fn drop_paged(&mut self) {
        for p in std::mem::take(&mut self.paged) {
            if p.on_disk() {
                self.release(p.at);
            }
        }
        self.flush_releases();
        self.paged_bytes = 0;
        self.paged_count = 0;
    }

    /// Halves the deque's capacity when it is mostly empty, so memory
    /// taken by a burst comes back as the burst is consumed. Amortised:
    /// each shrink copies at most a quarter of the capacity it frees.
    fn maybe_shrink(&mut self) {
        let cap = self.ready.capacity();
        if cap > KEEP_CAPACITY && self.ready.len() < cap / 4 {
            self.ready.shrink_to((cap / 2).max(KEEP_CAPACITY));
        }
    }

    fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let message = self.ready.pop_front()?;
        let seq = self.head_seq;
        self.head_seq += 1;
        self.maybe_shrink();
        Some(QueuedMessage {
            seq,
            message,
            redelivered: false,
        })
    }
}

impl MessageStore for MemoryStore {
    fn push(&mut self, m: QueuedMessage) {
        if !self.paged.is_empty() && !m.redelivered {
            // After the paged-out ones (whose seqs are all lower).
            self.bytes += m.message.size();
            self.paged.push_back(Paged {
                seq: m.seq,
                at: StoredRef::default(),
                size: m.message.size() as u32,
                msg: Some(m.message),
            });
            return;
        }
        self.bytes += m.message.size();
        if self.ready.is_empty() && self.tail.is_empty() {
            self.head_seq = m.seq;
        }
        let next = self.head_seq + self.ready.len() as u64;
        if self.tail.is_empty() && m.seq == next && !m.redelivered {
            self.ready.push_back(m.message);
        } else {
            self.tail.insert(m.seq, m);
        }
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let m = match self.requeued.pop_first() {
            Some((_, m)) => m,
            None => match self.pop_ready() {
                Some(m) => m,
                None => match self.tail.pop_first() {
                    Some((_, m)) => m,
                    None => self.pop_paged()?,
                },
            },
        };
        self.bytes -= m.message.size();
        Some(m)
    }

    fn head_seq(&self) -> Option<u64> {
        match self.requeued.first_key_value() {
            Some((&seq, _)) => Some(seq),
            None if !self.ready.is_empty() => Some(self.head_seq),
            None => match self.tail.first_key_value() {
                Some((&seq, _)) => Some(seq),
                None => self.paged.front().map(|p| p.seq),
            },
        }
    }

    fn take_head(&mut self) -> Option<TakenHead> {
        if !(self.requeued.is_empty() && self.ready.is_empty() && self.tail.is_empty()) {
            let m = self.pop()?;
            return Some(TakenHead {
                seq: m.seq,
                stored: m.message.stored(),
                message: Some(m.message),
                paged: None,
            });
        }
        // A paged entry, loaded or not: never read here (under the
        // queue's lock). The broker pages no message of a queue with a
        // TTL, length limit or dead-letter exchange, but a policy can add
        // them to a queue that has already paged: a body still on disk
        // leaves with its record, for the owner to read and dead-letter
        // (released when that is done).
        let p = self.paged.pop_front()?;
        self.bytes -= p.size as u64;
        let mut paged = None;
        if p.msg.is_none() {
            self.paged_bytes -= p.size as u64;
            self.paged_count -= 1;
            paged = self.disk.as_ref().map(|d| Arc::new(d.paged_body(p.at)));
        } else if p.on_disk() {
            self.release(p.at);
        }
        if self.paged.is_empty() {
            self.flush_releases();
            self.paged = VecDeque::new();
        }
        Some(TakenHead {
            seq: p.seq,
            stored: None,
            message: p.msg,
            paged,
        })
    }

    fn requeue(&mut self, m: QueuedMessage) {
        self.bytes += m.message.size();
        self.requeued.insert(m.seq, m);
    }

    fn push_paged(&mut self, seq: u64, at: StoredRef, size: u32) {
        self.bytes += size as u64;
        self.paged_bytes += size as u64;
        self.paged_count += 1;
        self.paged.push_back(Paged {
            seq,
            at,
            size,
            msg: None,
        });
    }

    fn take_loads(&mut self) -> Option<Loads> {
        if !self.want_load || self.loading {
            return None;
        }
        self.want_load = false;
        let disk = self.disk.clone()?;
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        for p in self.paged.iter().take(2 * LOAD_BATCH) {
            if p.msg.is_none() {
                if !wanted.is_empty() && bytes + p.size as u64 > LOAD_BYTES {
                    break;
                }
                bytes += p.size as u64;
                wanted.push((p.seq, p.at));
                if wanted.len() == LOAD_BATCH {
                    break;
                }
            }
        }
        if wanted.is_empty() {
            return None;
        }
        self.loading = true;
        Some(Loads::transient(disk, wanted, true))
    }

    fn head_load(&mut self) -> Option<Loads> {
        if !(self.requeued.is_empty() && self.ready.is_empty() && self.tail.is_empty()) {
            return None;
        }
        let head = self.paged.front()?;
        if head.msg.is_some() {
            return None;
        }
        Some(Loads::transient(
            self.disk.clone()?,
            vec![(head.seq, head.at)],
            false,
        ))
    }

    fn finish_loads(&mut self, loaded: LoadedBodies) {
        let (bodies, background) = loaded.into_parts();
        if background {
            self.loading = false;
        }
        for (seq, body) in bodies {
            // Taken, purged or loaded meanwhile: nothing to do.
            let Ok(i) = self.paged.binary_search_by_key(&seq, |p| p.seq) else {
                continue;
            };
            if self.paged[i].msg.is_some() {
                continue;
            }
            let size = self.paged[i].size as u64;
            self.paged_bytes -= size;
            self.paged_count -= 1;
            match body {
                Some(m) => self.paged[i].msg = Some(m),
                None => {
                    // A lost body cannot be delivered; drop its entry.
                    let p = self.paged.remove(i).expect("found");
                    self.bytes -= size;
                    self.release(p.at);
                    self.flush_releases();
                }
            }
        }
    }

    fn settle(&mut self, _seq: u64) {}

    fn purge(&mut self) -> usize {
        let n = self.len();
        self.drop_paged();
        self.requeued.clear();
        self.ready = VecDeque::new();
        self.tail.clear();
        self.bytes = 0;
        n
    }

    fn len(&self) -> usize {
        self.requeued.len() + self.ready.len() + self.tail.len() + self.paged.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn memory_bytes(&self) -> u64 {
        self.bytes - self.paged_bytes
    }

    fn in_memory(&self) -> Tally {
        Tally {
            count: self.len() as u64 - self.paged_count,
            bytes: self.bytes - self.paged_bytes,
        }
    }

    fn peek_entries(&self, offset: usize, n: usize) -> Peeked {
        // Skip in the deque by index, not by walking it.
        let (r, d) = (self.requeued.len(), self.ready.len());
        let from_requeued = self
            .requeued
            .values()
            .skip(offset)
            .take(n)
            .map(|m| (m.seq, m.redelivered, &m.message));
        let start = offset.saturating_sub(r).min(d);
        let from_ready = self
            .ready
            .range(start..)
            .enumerate()
            .map(|(i, m)| (self.head_seq + (start + i) as u64, false, m));
        let from_tail = self
            .tail
            .values()
            .skip(offset.saturating_sub(r + d))
            .map(|m| (m.seq, m.redelivered, &m.message));
        let left = n.saturating_sub(r.saturating_sub(offset).min(n));
        let mut entries: Vec<PeekEntry> = from_requeued
            .chain(from_ready.chain(from_tail).take(left))
            .map(|(seq, redelivered, m)| PeekEntry {
                seq,
                redelivered,
                body: PeekBody::Loaded(m.clone()),
            })
            .collect();
        // Paged entries follow everything else; bodies on disk are only
        // located here, read later without the lock.
        let before = r + d + self.tail.len();
        let want = n - entries.len().min(n);
        let mut to_read = 0u64;
        for p in self
            .paged
            .iter()
            .skip(offset.saturating_sub(before))
            .take(want)
        {
            let body = match &p.msg {
                Some(m) => PeekBody::Loaded(m.clone()),
                None => {
                    if to_read > 0 && to_read + p.size as u64 > crate::disk::PEEK_READ_BUDGET {
                        break;
                    }
                    to_read += p.size as u64;
                    PeekBody::Paged(p.at)
                }
            };
            entries.push(PeekEntry {
                seq: p.seq,
                redelivered: false,
                body,
            });
        }
        Peeked::new(entries, self.disk.clone())
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        // A deleted queue's paged records go with it.
        self.drop_paged();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `pop`, reading a paged-out head first as the broker's loader would
    /// (without a lock to leave, in a test).
    pub fn pop_loading(s: &mut dyn MessageStore) -> Option<QueuedMessage> {
        loop {
            if let Some(m) = s.pop() {
                return Some(m);
            }
            let l = s.head_load()?;
            s.finish_loads(l.read());
        }
    }

    pub fn msg(seq: u64, body: &str) -> QueuedMessage {
        QueuedMessage {
            seq,
            message: Arc::new(Message::new("", "q", &[], body.as_bytes(), false).unwrap()),
            redelivered: false,
        }
    }

    /// The contract every store must meet; each store's tests call it
    /// with a message factory (the disk store's writes persistent
    /// messages) and a restart (the disk store reopens its directory; the
    /// memory store, which has no process to outlive, is handed back).
    pub fn store_contract(
        mut s: Box<dyn MessageStore>,
        mk: &dyn Fn(u64, &str) -> QueuedMessage,
        restart: &dyn Fn(Box<dyn MessageStore>) -> Box<dyn MessageStore>,
    ) {
        for i in 1..=5 {
            s.push(mk(i, "abc"));
        }
        assert_eq!(s.len(), 5);
        assert_eq!(s.bytes(), 15);
        let a = pop_loading(&mut *s).unwrap();
        let b = pop_loading(&mut *s).unwrap();
        let c = pop_loading(&mut *s).unwrap();
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 3));
        // Requeue out of order: they come back in seq order, before 4 and 5.
        s.requeue(QueuedMessage {
            redelivered: true,
            ..c
        });
        s.requeue(QueuedMessage {
            redelivered: true,
            ..a
        });
        s.settle(b.seq);
        let order: Vec<u64> = s.peek(10).iter().map(|m| m.seq).collect();
        assert_eq!(order, vec![1, 3, 4, 5]);
        // Peeking at an offset spans the requeued and the never-delivered.
        let seqs = |v: Vec<QueuedMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.peek_at(1, 2)), vec![3, 4]);
        assert_eq!(seqs(s.peek_at(2, 10)), vec![4, 5]);
        assert_eq!(seqs(s.peek_at(0, 1)), vec![1]);
        assert!(s.peek_at(4, 10).is_empty());
        assert!(s.peek_at(100, 10).is_empty());
        assert_eq!(s.len(), 4, "peeking takes nothing");
        assert_eq!(s.bytes(), 12);
        // Restart with 1 and 3 requeued, 2 acked; 4 delivered, unacked.
        let four = {
            let x = pop_loading(&mut *s).unwrap();
            let y = pop_loading(&mut *s).unwrap();
            let z = pop_loading(&mut *s).unwrap();
            assert_eq!((x.seq, y.seq, z.seq), (1, 3, 4));
            s.requeue(x);
            s.requeue(y);
            z
        };
        let mut s = restart(s);
        // After a restart an unacked message is back in its place; in the
        // memory store (no restart) it is requeued by its channel instead.
        if s.len() == 3 {
            s.requeue(QueuedMessage {
                redelivered: true,
                ..four
            });
        }
        let after: Vec<(u64, bool, Vec<u8>)> = s
            .peek(10)
            .iter()
            .map(|m| (m.seq, m.redelivered, m.message.body().to_vec()))
            .collect();
        assert_eq!(
            after,
            vec![
                (1, true, b"abc".to_vec()),
                (3, true, b"abc".to_vec()),
                (4, true, b"abc".to_vec()),
                (5, false, b"abc".to_vec())
            ]
        );
        assert_eq!(s.next_seq().max(6), 6, "new messages go after the old");
        let one = pop_loading(&mut *s).unwrap();
        assert_eq!(one.seq, 1);
        s.settle(one.seq);
        assert_eq!(s.purge(), 3);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert!(pop_loading(&mut *s).is_none());
        let mut s = restart(s);
        assert!(pop_loading(&mut *s).is_none(), "purged messages stay gone");
    }

    #[test]
    fn memory_store_gives_memory_back_as_it_drains() {
        let mut s = MemoryStore::default();
        for i in 0..100_000 {
            s.push(msg(i, "x"));
        }
        assert!(s.ready.capacity() >= 100_000);
        for i in 0..100_000 {
            assert_eq!(s.pop().unwrap().seq, i);
        }
        assert!(
            s.ready.capacity() <= KEEP_CAPACITY,
            "{}",
            s.ready.capacity()
        );
    }

    #[test]
    fn memory_store_keeps_order_across_gaps_and_flags() {
        let mut s = MemoryStore::default();
        let push = |s: &mut MemoryStore, seq: u64, redelivered: bool| {
            s.push(QueuedMessage {
                redelivered,
                ..msg(seq, "x")
            })
        };
        push(&mut s, 5, false);
        push(&mut s, 6, false);
        push(&mut s, 9, false); // a gap: to the tail
        push(&mut s, 10, false); // after the tail, so also there
        push(&mut s, 11, true);
        let seen = |s: &MemoryStore| {
            s.peek(10)
                .iter()
                .map(|m| (m.seq, m.redelivered))
                .collect::<Vec<_>>()
        };
        let all = vec![(5, false), (6, false), (9, false), (10, false), (11, true)];
        assert_eq!(seen(&s), all);
        let seqs = |v: Vec<QueuedMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.peek_at(1, 2)), vec![6, 9]);
        assert_eq!(seqs(s.peek_at(3, 5)), vec![10, 11]);
        assert_eq!(s.len(), 5);
        let popped: Vec<(u64, bool)> = std::iter::from_fn(|| s.pop())
            .map(|m| (m.seq, m.redelivered))
            .collect();
        assert_eq!(popped, all);
        // Drained: a new run starts wherever the next seq is.
        push(&mut s, 20, false);
        push(&mut s, 21, false);
        assert_eq!(seqs(s.peek(10)), vec![20, 21]);
        assert!(s.tail.is_empty());
    }

    #[test]
    fn memory_store_meets_contract() {
        store_contract(Box::new(MemoryStore::default()), &msg, &|s| s);
    }
}
