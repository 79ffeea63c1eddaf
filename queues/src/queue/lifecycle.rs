//! A queue's lifecycle rules on top of its state machine: message TTLs
//! (per queue and per message), length limits with their overflow
//! behaviour, and the messages these drop (or rejections) reported for
//! dead-lettering.
//!
//! Expiry is decided at the head, the place RabbitMQ decides it: a
//! message whose deadline passed is dropped when it reaches the head
//! (delivery and basic.get skip it), and the owner sweeps the head on a
//! timer set to [`QueueCore::next_expiry`], at most `max` messages per
//! call ([`QueueCore::expire`]) so a million messages expiring at once
//! never hold the queue's lock for long. Time is always an argument.

use super::QueueCore;
use crate::limits::{DeadCounters, DeadMessage, DeadReason, Overflow, QueueLimits};
use crate::message::{Message, QueuedMessage};
use crate::store::TakenHead;
use std::collections::VecDeque;
use std::sync::Arc;

/// When ready messages that have a TTL expire: per lane of the store
/// (see [`crate::MessageStore::lane`]; one for a plain queue, one per
/// level for a priority queue), `(seq, deadline)` in seq order, which is
/// the order the lane's messages leave in. Only messages with a TTL pay
/// for an entry, so a plain queue keeps this empty.
pub(crate) struct Deadlines {
    lanes: Vec<VecDeque<(u64, u64)>>,
    /// Entries over all lanes: the hot path's one check.
    len: usize,
}

impl Deadlines {
    pub(crate) fn new(lanes: usize, recovered: Vec<(usize, u64, u64)>) -> Self {
        let mut d = Deadlines {
            lanes: (0..lanes.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
        };
        for (lane, seq, deadline) in recovered {
            d.push(lane, seq, deadline);
        }
        d
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn lane(&mut self, lane: usize) -> &mut VecDeque<(u64, u64)> {
        let last = self.lanes.len() - 1;
        &mut self.lanes[lane.min(last)]
    }

    fn push(&mut self, lane: usize, seq: u64, deadline: u64) {
        self.lane(lane).push_back((seq, deadline));
        self.len += 1;
    }

    fn front(&mut self, lane: usize) -> Option<(u64, u64)> {
        self.lane(lane).front().copied()
    }

    fn pop_front(&mut self, lane: usize) {
        if self.lane(lane).pop_front().is_some() {
            self.len -= 1;
        }
    }

    /// Back at its place by seq (a requeued message).
    fn insert(&mut self, lane: usize, seq: u64, deadline: u64) {
        let l = self.lane(lane);
        let at = l.partition_point(|&(s, _)| s < seq);
        l.insert(at, (seq, deadline));
        self.len += 1;
    }

    pub(crate) fn clear(&mut self) {
        for l in &mut self.lanes {
            l.clear();
        }
        self.len = 0;
    }
}

impl<C: Clone> QueueCore<C> {
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Replaces the queue's settings; a lowered length limit trims the
    /// queue at once (drop-head, as RabbitMQ). New TTLs apply to messages
    /// published from now on.
    pub fn set_limits(&mut self, limits: QueueLimits) {
        self.limits = limits;
        self.trim();
    }

    /// Appends a message under the queue's limits; `None` when a length
    /// limit refuses it (reject-publish, reject-publish-dlx: then it is
    /// also reported dead). `message_ttl` is the message's own
    /// `expiration`; the lower of it and the queue's TTL applies, from
    /// `now` (ms since the epoch).
    pub fn publish_at(
        &mut self,
        message: Arc<Message>,
        now: u64,
        message_ttl: Option<u64>,
    ) -> Option<u64> {
        if self.limits.overflow != Overflow::DropHead && self.would_overflow(message.size()) {
            if self.limits.overflow == Overflow::RejectPublishDlx
                && self.limits.dead_letter_exchange.is_some()
            {
                self.dead.push(DeadMessage {
                    seq: None,
                    stored: None,
                    paged: None,
                    message: Some(message),
                    reason: DeadReason::Maxlen,
                });
            } else if self.limits.overflow == Overflow::RejectPublishDlx {
                // RabbitMQ counts it dead-lettered (strategy `disabled`);
                // a plain reject-publish refusal is not counted.
                self.dead_counters.add(DeadReason::Maxlen, false, 1);
            }
            return None;
        }
        let ttl = match (self.limits.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(t) = ttl else {
            return Some(self.publish(message));
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now.saturating_add(t);
        self.deadlines
            .push(self.store.lane(&message), seq, deadline);
        let m = QueuedMessage {
            seq,
            message,
            redelivered: false,
        };
        self.store.push_expiring(m, Some(deadline));
        Some(seq)
    }

    /// Whether one more message of `size` body bytes would pass a limit.
    fn would_overflow(&self, size: u64) -> bool {
        let l = &self.limits;
        l.max_length
            .is_some_and(|m| self.store.len() as u64 + 1 > m)
            || l.max_length_bytes
                .is_some_and(|m| self.store.bytes() + size > m)
    }

    fn over_limit(&self) -> bool {
        let l = &self.limits;
        l.max_length.is_some_and(|m| self.store.len() as u64 > m)
            || l.max_length_bytes.is_some_and(|m| self.store.bytes() > m)
    }

    /// Drops (or dead-letters, `maxlen`) the oldest ready messages while
    /// the queue is over a length limit under drop-head. Returns how many.
    pub fn trim(&mut self) -> usize {
        if self.limits.overflow != Overflow::DropHead || !self.limits.has_length_limit() {
            return 0;
        }
        let mut n = 0;
        while self.over_limit() && self.drop_head(DeadReason::Maxlen) {
            n += 1;
        }
        n
    }

    /// Drops (or dead-letters, `expired`) up to `max` messages at the head
    /// whose deadline is at or before `now`. Returns how many, and whether
    /// more are due (call again after letting others in).
    pub fn expire(&mut self, now: u64, max: usize) -> (usize, bool) {
        let mut n = 0;
        while n < max {
            match self.head_deadline() {
                Some(d) if d <= now => {
                    self.drop_head(DeadReason::Expired);
                    n += 1;
                }
                _ => return (n, false),
            }
        }
        (n, self.head_deadline().is_some_and(|d| d <= now))
    }

    /// When the head message expires, if it has a TTL: when the owner's
    /// timer should next call [`QueueCore::expire`]. A message with a TTL
    /// behind a head without one expires once it reaches the head.
    pub fn next_expiry(&mut self) -> Option<u64> {
        if self.deadlines.is_empty() {
            return None;
        }
        self.head_deadline()
    }

    fn head_deadline(&mut self) -> Option<u64> {
        if self.deadlines.is_empty() {
            return None;
        }
        let head = self.store.head_seq()?;
        let lane = self.store.head_lane();
        self.drop_stale_deadlines(lane, head);
        match self.deadlines.front(lane) {
            Some((seq, d)) if seq == head => Some(d),
            _ => None,
        }
    }

    /// Entries for messages that left the ready set another way (a body
    /// lost on disk) sit before the head of their lane: they go.
    fn drop_stale_deadlines(&mut self, lane: usize, head: u64) {
        while self
            .deadlines
            .front(lane)
            .is_some_and(|(seq, _)| seq < head)
        {
            self.deadlines.pop_front(lane);
        }
    }

    /// The deadline of message `seq` of `lane`, which just left the
    /// ready set.
    fn take_deadline(&mut self, lane: usize, seq: u64) -> Option<u64> {
        if self.deadlines.is_empty() {
            return None;
        }
        self.drop_stale_deadlines(lane, seq);
        match self.deadlines.front(lane) {
            Some((s, d)) if s == seq => {
                self.deadlines.pop_front(lane);
                Some(d)
            }
            _ => None,
        }
    }

    /// A delivered message came back: its deadline (if any) with it.
    pub(super) fn restore_deadline(&mut self, seq: u64) {
        if self.held_deadlines.is_empty() {
            return;
        }
        if let Some((d, lane)) = self.held_deadlines.remove(&seq) {
            self.deadlines.insert(lane, seq, d);
        }
    }

    /// A message back in the ready set at its place (in `lane`) expires
    /// at `d`.
    pub(super) fn insert_deadline(&mut self, lane: usize, seq: u64, d: u64) {
        self.deadlines.insert(lane, seq, d);
    }

    /// The next ready message that has not expired (those that have, up
    /// to it, are dropped as expired), with its deadline. A message
    /// whose deadline is `now` itself is still delivered: a TTL of 0
    /// lets a message through to a consumer waiting for it.
    pub(super) fn pop_live(&mut self, now: u64) -> Option<(QueuedMessage, Option<u64>)> {
        if self.deadlines.is_empty() {
            return self.store.pop().map(|m| (m, None));
        }
        while self.head_deadline().is_some_and(|d| d < now) {
            self.drop_head(DeadReason::Expired);
        }
        let m = self.store.pop()?;
        let d = self.take_deadline(self.store.lane(&m.message), m.seq);
        Some((m, d))
    }

    /// Takes the head out for `reason`; `false` if the queue is empty.
    fn drop_head(&mut self, reason: DeadReason) -> bool {
        let lane = self.store.head_lane();
        let Some(t) = self.store.take_head() else {
            return false;
        };
        self.take_deadline(lane, t.seq);
        self.drop_taken(t, reason);
        true
    }

    /// A message out of the ready (or unacked) set for good: reported for
    /// dead-lettering when the queue has a dead-letter exchange (the
    /// store keeps it until [`QueueCore::settle_dead`]), else settled.
    pub(super) fn drop_taken(&mut self, t: TakenHead, reason: DeadReason) {
        self.forget_count(t.seq);
        if self.limits.dead_letter_exchange.is_some() {
            self.dead.push(DeadMessage {
                seq: Some(t.seq),
                message: t.message,
                stored: t.stored,
                paged: t.paged,
                reason,
            });
        } else {
            self.dead_counters.add(reason, false, 1);
            self.store.settle(t.seq);
        }
    }

    /// basic.reject / basic.nack with requeue=false: the messages leave
    /// for good, dead-lettered (`rejected`) if the queue has a
    /// dead-letter exchange. Returns how many were known.
    pub fn reject(&mut self, held: impl IntoIterator<Item = super::Unacked>) -> usize {
        let mut n = 0;
        for u in held {
            self.release(&u);
            let seq = u.seq;
            self.held_deadlines.remove(&seq);
            let stored = match &u.message {
                Some(m) => m.stored(),
                None => self.store.unacked_location(seq),
            };
            let t = TakenHead {
                seq,
                message: u.message,
                stored,
                paged: None,
            };
            self.drop_taken(t, DeadReason::Rejected);
            n += 1;
        }
        n
    }

    /// Where messages dropped without a dead-letter exchange are counted
    /// (the owner's counters for this queue).
    pub fn set_dead_counters(&mut self, counters: Arc<DeadCounters>) {
        self.dead_counters = counters;
    }

    /// Whether dropped messages wait in [`QueueCore::take_dead`].
    pub fn has_dead(&self) -> bool {
        !self.dead.is_empty()
    }

    /// The messages dropped for dead-lettering since the last call.
    pub fn take_dead(&mut self) -> Vec<DeadMessage> {
        std::mem::take(&mut self.dead)
    }

    /// Dead-lettered messages are safely elsewhere: the store lets them go.
    pub fn settle_dead(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            self.store.settle(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ConsumerSpec, Dispatched};
    use crate::store::MemoryStore;

    type Q = QueueCore<&'static str>;

    fn core(limits: QueueLimits) -> Q {
        let mut q = QueueCore::new(Box::new(MemoryStore::default()), 100);
        q.set_limits(limits);
        q
    }

    fn m(body: &str) -> Arc<Message> {
        Arc::new(Message::new("", "q", &[], body.as_bytes(), false).unwrap())
    }

    fn dlx() -> Option<String> {
        Some("dlx".into())
    }

    fn reasons(q: &mut Q) -> Vec<(DeadReason, String)> {
        q.take_dead()
            .into_iter()
            .map(|d| {
                let body = d.message.unwrap().body().to_vec();
                (d.reason, String::from_utf8(body).unwrap())
            })
            .collect()
    }

    fn consumer(q: &mut Q, prefetch: u32) {
        q.add_consumer(ConsumerSpec {
            id: 1,
            handle: "c",
            no_ack: false,
            prefetch,
            exclusive: false,
            channel_limit: None,
            priority: 0,
        })
        .unwrap();
    }

    #[test]
    fn queue_ttl_expires_at_the_head_by_the_given_clock() {
        let mut q = core(QueueLimits {
            message_ttl: Some(100),
            dead_letter_exchange: dlx(),
            ..Default::default()
        });
        q.publish_at(m("a"), 1_000, None);
        q.publish_at(m("b"), 1_050, None);
        assert_eq!(q.next_expiry(), Some(1_100));
        assert_eq!(q.expire(1_099, 10), (0, false));
        assert_eq!(q.expire(1_100, 10), (1, false));
        assert_eq!(q.message_count(), 1);
        assert_eq!(q.next_expiry(), Some(1_150));
        // basic.get skips what expired without a sweep.
        assert!(q.get(true, 1_151).is_none());
        assert_eq!(
            reasons(&mut q),
            vec![
                (DeadReason::Expired, "a".into()),
                (DeadReason::Expired, "b".into())
            ]
        );
        assert_eq!(q.next_expiry(), None);
    }

    #[test]
    fn the_lower_ttl_wins_and_unacked_keep_their_deadline() {
        let mut q = core(QueueLimits {
            message_ttl: Some(1_000),
            ..Default::default()
        });
        q.publish_at(m("a"), 0, Some(10));
        q.publish_at(m("b"), 0, Some(5_000));
        assert_eq!(q.next_expiry(), Some(10));
        let (_, _, got) = q.get(false, 5).unwrap();
        assert_eq!(q.next_expiry(), Some(1_000), "b: the queue's TTL");
        q.requeue(got);
        assert_eq!(q.next_expiry(), Some(10), "a came back with its deadline");
        assert_eq!(q.expire(20, 10), (1, false));
        assert!(q.take_dead().is_empty(), "no dead-letter exchange: dropped");
        assert_eq!(q.message_count(), 1);
    }

    #[test]
    fn a_no_ack_delivery_handed_back_keeps_its_deadline() {
        let mut q = core(QueueLimits {
            message_ttl: Some(1_000),
            ..Default::default()
        });
        q.add_consumer(ConsumerSpec {
            id: 1,
            handle: "c",
            no_ack: true,
            prefetch: 0,
            exclusive: false,
            channel_limit: None,
            priority: 0,
        })
        .unwrap();
        q.publish_at(m("a"), 0, None);
        let mut out: Vec<Dispatched<&str>> = Vec::new();
        q.dispatch(1, &mut out);
        let d = out.pop().unwrap();
        assert_eq!(d.deadline, Some(1_000));
        assert_eq!(q.next_expiry(), None);
        q.remove_consumer(1);
        q.undeliver(d.message, true, None, d.deadline, d.held);
        assert_eq!(q.message_count(), 1);
        assert_eq!(q.next_expiry(), Some(1_000), "back with its deadline");
        assert_eq!(q.expire(1_000, 10), (1, false));
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn drops_without_a_dead_letter_exchange_are_counted_by_reason() {
        let counters = Arc::new(DeadCounters::default());
        let mut q = core(QueueLimits {
            message_ttl: Some(10),
            max_length: Some(1),
            ..Default::default()
        });
        q.set_dead_counters(counters.clone());
        q.publish_at(m("a"), 0, None);
        q.publish_at(m("b"), 0, None);
        q.trim();
        q.expire(10, 10);
        q.publish_at(m("c"), 20, None);
        let (_, _, got) = q.get(false, 21).unwrap();
        q.reject(got);
        let dropped: Vec<u64> = DeadReason::ALL
            .iter()
            .map(|r| counters.dropped(*r))
            .collect();
        assert_eq!(dropped, vec![1, 1, 1, 0], "expired, rejected, maxlen");
        assert_eq!(counters.dead_lettered(DeadReason::Expired), 0);
        assert!(q.take_dead().is_empty());
    }

    #[test]
    fn ttl_zero_reaches_a_waiting_consumer_only() {
        let mut q = core(QueueLimits {
            message_ttl: Some(0),
            ..Default::default()
        });
        consumer(&mut q, 1);
        q.publish_at(m("a"), 500, None);
        let mut out: Vec<Dispatched<&str>> = Vec::new();
        q.dispatch(500, &mut out);
        assert_eq!(out.len(), 1, "delivered at once");
        q.publish_at(m("b"), 500, None);
        q.dispatch(500, &mut out);
        assert_eq!(out.len(), 1, "no credit left");
        assert_eq!(q.expire(500, 10), (1, false), "so it expires at once");
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn expiry_work_is_bounded_per_call() {
        let mut q = core(QueueLimits {
            message_ttl: Some(1),
            ..Default::default()
        });
        for i in 0..25 {
            q.publish_at(m(&i.to_string()), 0, None);
        }
        assert_eq!(q.expire(10, 10), (10, true));
        assert_eq!(q.expire(10, 10), (10, true));
        assert_eq!(q.expire(10, 10), (5, false));
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn a_head_without_ttl_holds_back_expiry_behind_it() {
        let mut q = core(QueueLimits::default());
        q.publish_at(m("plain"), 0, None);
        q.publish_at(m("short"), 0, Some(5));
        assert_eq!(q.next_expiry(), None);
        assert_eq!(q.expire(100, 10), (0, false));
        let (plain, _, _) = q.get(true, 100).unwrap();
        assert_eq!(plain.message.body(), b"plain");
        assert_eq!(q.next_expiry(), Some(5));
        assert!(q.get(true, 100).is_none(), "expired at the head");
    }

    #[test]
    fn drop_head_keeps_the_newest() {
        let mut q = core(QueueLimits {
            max_length: Some(2),
            dead_letter_exchange: dlx(),
            ..Default::default()
        });
        for b in ["a", "b", "c"] {
            assert!(q.publish_at(m(b), 0, None).is_some());
            q.trim();
        }
        assert_eq!(q.message_count(), 2);
        assert_eq!(reasons(&mut q), vec![(DeadReason::Maxlen, "a".into())]);
        // Bytes count too; lowering the limit trims at once.
        q.set_limits(QueueLimits {
            max_length_bytes: Some(1),
            ..Default::default()
        });
        assert_eq!(q.message_count(), 1);
        assert_eq!(q.peek(1)[0].message.body(), b"c");
    }

    #[test]
    fn reject_publish_refuses_the_newest() {
        for (overflow, dead) in [
            (Overflow::RejectPublish, 0),
            (Overflow::RejectPublishDlx, 1),
        ] {
            let mut q = core(QueueLimits {
                max_length: Some(1),
                overflow,
                dead_letter_exchange: dlx(),
                ..Default::default()
            });
            assert!(q.publish_at(m("a"), 0, None).is_some());
            assert!(q.publish_at(m("b"), 0, None).is_none());
            assert_eq!(q.message_count(), 1);
            let d = q.take_dead();
            assert_eq!(d.len(), dead);
            assert!(d
                .iter()
                .all(|d| d.seq.is_none() && d.reason == DeadReason::Maxlen));
        }
    }

    #[test]
    fn rejected_messages_are_reported_and_settled_later() {
        let mut q = core(QueueLimits {
            dead_letter_exchange: dlx(),
            ..Default::default()
        });
        q.publish_at(m("a"), 0, None);
        let (got, _, h) = q.get(false, 0).unwrap();
        assert_eq!(q.reject(h), 1);
        assert_eq!(q.unacked_count(), 0, "once");
        let d = q.take_dead();
        assert_eq!(
            (d[0].seq, d[0].reason),
            (Some(got.seq), DeadReason::Rejected)
        );
        q.settle_dead(&[got.seq]);
        assert_eq!((q.unacked_count(), q.message_count()), (0, 0));
    }
}
