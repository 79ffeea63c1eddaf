//! Where a queue's ready messages live.
//!
//! A store holds the messages that wait for a consumer, in order. Messages
//! handed to a consumer leave the ready set (`pop`) but a durable store
//! keeps them until `settle` says they were acked or dropped; `requeue`
//! puts one back at its original place (RabbitMQ's order: by `seq`).

use crate::message::{Message, QueuedMessage};
use crate::peek::{PeekBody, PeekEntry, Peeked};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Storage for one queue's messages.
pub trait MessageStore: Send {
    /// A new message at the tail.
    fn push(&mut self, m: QueuedMessage);
    /// The head message, leaving the ready set.
    fn pop(&mut self) -> Option<QueuedMessage>;
    /// A delivered message returns to the ready set, ordered by `seq`.
    fn requeue(&mut self, m: QueuedMessage);
    /// A delivered message is done (acked, or dropped); forget it.
    fn settle(&mut self, seq: u64);
    /// Removes every ready message; returns how many.
    fn purge(&mut self) -> usize;
    /// Ready messages.
    fn len(&self) -> usize;
    /// Body bytes of ready messages.
    fn bytes(&self) -> u64;
    /// Body bytes of ready messages held in memory (a store that pages
    /// bodies out to disk holds fewer than [`MessageStore::bytes`]).
    fn memory_bytes(&self) -> u64 {
        self.bytes()
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

/// Everything in RAM.
///
/// Requeued messages always have a lower `seq` than the messages never
/// delivered (delivery takes from the head), so they sit in their own
/// ordered map that is read first; the main deque stays append-only.
/// Each deque slot is two words (the `seq` with the redelivered flag in
/// its top bit, and the message pointer), and the deque gives its memory
/// back as it drains, so a backlog's memory does not outlive it.
#[derive(Default)]
pub struct MemoryStore {
    requeued: BTreeMap<u64, QueuedMessage>,
    ready: VecDeque<Slot>,
    bytes: u64,
}

/// The top bit of [`Slot::seq`]: the message was delivered before.
const SLOT_REDELIVERED: u64 = 1 << 63;

/// A ready message, packed: [`QueuedMessage`] takes three words.
struct Slot {
    seq: u64,
    message: Arc<Message>,
}

impl Slot {
    fn new(m: QueuedMessage) -> Self {
        let flag = if m.redelivered { SLOT_REDELIVERED } else { 0 };
        Slot {
            seq: (m.seq & !SLOT_REDELIVERED) | flag,
            message: m.message,
        }
    }

    fn seq(&self) -> u64 {
        self.seq & !SLOT_REDELIVERED
    }

    fn redelivered(&self) -> bool {
        self.seq & SLOT_REDELIVERED != 0
    }

    fn into_queued(self) -> QueuedMessage {
        QueuedMessage {
            seq: self.seq(),
            redelivered: self.redelivered(),
            message: self.message,
        }
    }
}

/// Below this many slots of capacity a drained deque keeps its memory
/// (a steady flow reuses it); above, it shrinks once it is a quarter full.
const KEEP_CAPACITY: usize = 4096;

impl MemoryStore {
    /// Halves the deque's capacity when it is mostly empty, so memory
    /// taken by a burst comes back as the burst is consumed. Amortised:
    /// each shrink copies at most a quarter of the capacity it frees.
    fn maybe_shrink(&mut self) {
        let cap = self.ready.capacity();
        if cap > KEEP_CAPACITY && self.ready.len() < cap / 4 {
            self.ready.shrink_to((cap / 2).max(KEEP_CAPACITY));
        }
    }
}

impl MessageStore for MemoryStore {
    fn push(&mut self, m: QueuedMessage) {
        self.bytes += m.message.size();
        self.ready.push_back(Slot::new(m));
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let m = match self.requeued.pop_first() {
            Some((_, m)) => m,
            None => {
                let m = self.ready.pop_front()?.into_queued();
                self.maybe_shrink();
                m
            }
        };
        self.bytes -= m.message.size();
        Some(m)
    }

    fn requeue(&mut self, m: QueuedMessage) {
        self.bytes += m.message.size();
        self.requeued.insert(m.seq, m);
    }

    fn settle(&mut self, _seq: u64) {}

    fn purge(&mut self) -> usize {
        let n = self.len();
        self.requeued.clear();
        self.ready = VecDeque::new();
        self.bytes = 0;
        n
    }

    fn len(&self) -> usize {
        self.requeued.len() + self.ready.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn peek_entries(&self, offset: usize, n: usize) -> Peeked {
        // Skip in the deque by index, not by walking it.
        let r = self.requeued.len();
        let from_requeued = self
            .requeued
            .values()
            .skip(offset)
            .take(n)
            .map(|m| (m.seq, m.redelivered, &m.message));
        let start = offset.saturating_sub(r);
        let left = n.saturating_sub(r.saturating_sub(offset).min(n));
        let from_ready = self
            .ready
            .range(start.min(self.ready.len())..)
            .take(left)
            .map(|s| (s.seq(), s.redelivered(), &s.message));
        let entries = from_requeued
            .chain(from_ready)
            .map(|(seq, redelivered, m)| PeekEntry {
                seq,
                redelivered,
                body: PeekBody::Loaded(m.clone()),
            })
            .collect();
        Peeked::new(entries, None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        let a = s.pop().unwrap();
        let b = s.pop().unwrap();
        let c = s.pop().unwrap();
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
            let x = s.pop().unwrap();
            let y = s.pop().unwrap();
            let z = s.pop().unwrap();
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
        let one = s.pop().unwrap();
        assert_eq!(one.seq, 1);
        s.settle(one.seq);
        assert_eq!(s.purge(), 3);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert!(s.pop().is_none());
        let mut s = restart(s);
        assert!(s.pop().is_none(), "purged messages stay gone");
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
        // Flags survive the packing.
        s.push(QueuedMessage {
            redelivered: true,
            ..msg(7, "y")
        });
        let m = s.pop().unwrap();
        assert!(m.redelivered && m.seq == 7);
    }

    #[test]
    fn memory_store_meets_contract() {
        store_contract(Box::new(MemoryStore::default()), &msg, &|s| s);
    }
}
