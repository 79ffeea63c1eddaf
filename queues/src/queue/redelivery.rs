//! Delivery limits: how often each message was handed back, and what
//! happens past the queue's `x-delivery-limit`.
//!
//! As RabbitMQ's quorum queues (rabbit_fifo 3.10): every return of a
//! delivered message (basic.nack/reject with requeue, basic.recover, its
//! channel or connection closing, a consumer timeout) counts; a message
//! returned more often than the limit is dropped, or dead-lettered with
//! reason `delivery_limit`, instead of going back. A rejection without
//! requeue, or a delivery handed back unwritten, does not count. Counts
//! are kept only while the queue has a delivery limit and only for
//! messages returned at least once, so a plain queue pays nothing; the
//! store persists them for durable queues.

use super::{QueueCore, Unacked};
use crate::limits::DeadReason;
use crate::store::TakenHead;

impl<C: Clone> QueueCore<C> {
    /// A delivered message came back (`u`, just taken from the unacked
    /// set): counts the return under a delivery limit. `Some(u)`: it goes
    /// back to the ready set; `None`: it was over the limit and was
    /// dropped or reported dead.
    pub(super) fn count_return(&mut self, u: Unacked) -> Option<Unacked> {
        let Some(limit) = self.limits.delivery_limit else {
            return Some(u);
        };
        let seq = u.seq;
        let count = self.delivery_counts.get(&seq).copied().unwrap_or(0) + 1;
        if u64::from(count) <= limit {
            self.delivery_counts.insert(seq, count);
            self.store.set_delivery_count(seq, count);
            return Some(u);
        }
        self.held_deadlines.remove(&seq);
        let stored = match &u.message {
            Some(m) => m.stored(),
            None => self.store.unacked_location(seq),
        };
        let t = TakenHead {
            seq,
            message: u.message,
            stored,
            // A delivered message's body was read back in to be sent:
            // it is never still paged out.
            paged: None,
        };
        self.drop_taken(t, DeadReason::DeliveryLimit);
        None
    }

    /// The `x-delivery-count` header for a delivery of `seq`, under a
    /// delivery limit: from the first redelivery on for a consumer, and
    /// always (0 on the first) for basic.get (`get`), as RabbitMQ's
    /// quorum queues send it.
    pub fn delivery_header(&self, seq: u64, get: bool) -> Option<u32> {
        self.limits.delivery_limit?;
        match self.delivery_counts.get(&seq) {
            Some(&n) => Some(n),
            None => get.then_some(0),
        }
    }

    /// How often message `seq` was handed back (0: never, or no limit).
    pub fn delivery_count(&self, seq: u64) -> u32 {
        self.delivery_counts.get(&seq).copied().unwrap_or(0)
    }

    /// Message `seq` left the queue for good: its count goes.
    pub(super) fn forget_count(&mut self, seq: u64) {
        if !self.delivery_counts.is_empty() {
            self.delivery_counts.remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::limits::{DeadReason, QueueLimits};
    use crate::message::Message;
    use crate::queue::{ConsumerSpec, Dispatched, QueueCore};
    use crate::store::MemoryStore;
    use std::sync::Arc;

    type Q = QueueCore<&'static str>;

    fn core(limit: Option<u64>, dlx: bool) -> Q {
        let mut q = QueueCore::new(Box::new(MemoryStore::default()), 100);
        q.set_limits(QueueLimits {
            delivery_limit: limit,
            dead_letter_exchange: dlx.then(|| "dlx".to_owned()),
            ..Default::default()
        });
        q
    }

    fn m(body: &str) -> Arc<Message> {
        Arc::new(Message::new("", "q", &[], body.as_bytes(), false).unwrap())
    }

    fn consume(q: &mut Q) {
        q.add_consumer(ConsumerSpec {
            id: 1,
            handle: "c",
            no_ack: false,
            prefetch: 10,
            exclusive: false,
            channel_limit: None,
            priority: 0,
        })
        .unwrap();
    }

    fn next(q: &mut Q) -> Vec<Dispatched<&'static str>> {
        let mut out = Vec::new();
        q.dispatch(0, &mut out);
        out
    }

    /// Limit 2: delivered three times (counts absent, 1, 2), the third
    /// return dead-letters it, as rabbit_fifo's `return_one`.
    #[test]
    fn a_message_returned_past_the_limit_is_dead_lettered() {
        let mut q = core(Some(2), true);
        consume(&mut q);
        q.publish(m("a"));
        let mut seen = Vec::new();
        loop {
            let mut out = next(&mut q);
            let Some(d) = out.first_mut() else { break };
            seen.push(d.delivery_count);
            assert_eq!(d.message.redelivered, d.delivery_count.is_some());
            q.requeue(d.held.take());
        }
        assert_eq!(seen, vec![None, Some(1), Some(2)]);
        let dead = q.take_dead();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, DeadReason::DeliveryLimit);
        assert_eq!((q.message_count(), q.unacked_count()), (0, 0));
        assert!(q.delivery_counts.is_empty());
    }

    #[test]
    fn without_a_dlx_it_is_dropped_and_limit_zero_allows_one_delivery() {
        let mut q = core(Some(0), false);
        q.publish(m("a"));
        let (got, _, h) = q.get(false, 0).unwrap();
        assert_eq!(q.delivery_header(got.seq, true), Some(0), "get: 0 at first");
        q.requeue(h);
        assert!(q.take_dead().is_empty());
        assert_eq!((q.message_count(), q.unacked_count()), (0, 0));
    }

    #[test]
    fn acks_rejects_and_unwritten_deliveries_do_not_count() {
        let mut q = core(Some(5), true);
        consume(&mut q);
        for b in ["a", "b", "c"] {
            q.publish(m(b));
        }
        let out = next(&mut q);
        q.requeue(out.into_iter().filter_map(|d| d.held));
        let out = next(&mut q);
        assert!(out.iter().all(|d| d.delivery_count == Some(1)));
        // Handed back unwritten: back as it was, not counted.
        let mut out = out.into_iter();
        let first = out.next().unwrap();
        q.undeliver(first.message, false, None, None, first.held);
        let mut again = next(&mut q);
        assert_eq!(again[0].delivery_count, Some(1));
        q.ack(again[0].held.take());
        let mut rest: Vec<_> = out.collect();
        let last = rest[1].message.seq;
        q.reject(rest[0].held.take());
        q.requeue(rest[1].held.take());
        assert_eq!(q.delivery_count(last), 2);
        assert_eq!(q.delivery_counts.len(), 1, "only the message still held");
        assert_eq!(q.take_dead()[0].reason, DeadReason::Rejected);
    }

    #[test]
    fn a_queue_without_a_limit_counts_nothing() {
        let mut q = core(None, true);
        consume(&mut q);
        q.publish(m("a"));
        for _ in 0..5 {
            let mut out = next(&mut q);
            assert_eq!(out[0].delivery_count, None);
            q.requeue(out[0].held.take());
        }
        assert!(q.delivery_counts.is_empty() && !q.has_dead());
        assert_eq!(q.delivery_header(1, true), None);
    }
}
