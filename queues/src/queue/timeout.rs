//! Consumer timeouts: which holders of unacked deliveries kept one longer
//! than allowed.
//!
//! A scan, not a timer per delivery: the owner calls
//! [`QueueCore::timed_out`] when the earliest possible timeout is due (the
//! time it returns), so a queue whose deliveries are acked in time scans
//! about once per timeout period, and a plain delivery pays nothing.
//! Delivery times are the ones given to `dispatch`; time is an argument,
//! as everywhere in the core. Deliveries of basic.get are not timed
//! here: the queue cannot reach their holder, so the channel holding them
//! times them itself (RabbitMQ 3.10 times them too, by closing the
//! channel).

use super::{Holder, QueueCore};

/// A holder with a delivery unacked for longer than the timeout.
#[derive(Debug, Clone)]
pub struct TimedOut<C> {
    pub holder: Holder,
    /// The consumer's handle, while the queue knows the consumer.
    pub handle: Option<C>,
    /// Every delivery it holds, oldest first.
    pub seqs: Vec<u64>,
}

impl<C: Clone> QueueCore<C> {
    /// The holders with a delivery older than `timeout` ms at `now`
    /// (RabbitMQ's test: delivered before `now - timeout`), and when the
    /// next one can time out (`None`: nothing else is unacked).
    pub fn timed_out(&self, now: u64, timeout: u64) -> (Vec<TimedOut<C>>, Option<u64>) {
        let mut late: Vec<TimedOut<C>> = Vec::new();
        let mut oldest_in_time: Option<u64> = None;
        for u in self.unacked.values() {
            if matches!(u.holder, Holder::Get(_)) {
                // Timed by its channel: a basic.get has no consumer to
                // cancel, and its owner cannot be reached from the queue.
                continue;
            }
            let at = u.delivered_at();
            if now.saturating_sub(at) > timeout {
                if !late.iter().any(|t| t.holder == u.holder) {
                    late.push(TimedOut {
                        holder: u.holder,
                        handle: self.handle_of(u.holder),
                        seqs: Vec::new(),
                    });
                }
            } else {
                oldest_in_time = Some(oldest_in_time.map_or(at, |o: u64| o.min(at)));
            }
        }
        if !late.is_empty() {
            let mut held: Vec<(u64, u64, usize)> = Vec::new();
            for (&seq, u) in &self.unacked {
                if let Some(i) = late.iter().position(|t| t.holder == u.holder) {
                    held.push((u.delivered_at(), seq, i));
                }
            }
            held.sort_unstable();
            for (_, seq, i) in held {
                late[i].seqs.push(seq);
            }
        }
        // The late holders' deliveries go back soon; if they do not, the
        // next scan finds them again.
        let next = oldest_in_time.map(|at| at.saturating_add(timeout).saturating_add(1));
        (late, next)
    }

    /// The deliveries consumer `id` holds (it may have been cancelled).
    pub fn held_by(&self, id: super::ConsumerId) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.holder == Holder::Consumer(id))
            .map(|(&seq, _)| seq)
            .collect();
        v.sort_unstable();
        v
    }

    fn handle_of(&self, h: Holder) -> Option<C> {
        let Holder::Consumer(id) = h else {
            return None;
        };
        self.consumers
            .iter()
            .chain(self.departed.iter())
            .find(|c| c.spec.id == id)
            .map(|c| c.spec.handle.clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::message::Message;
    use crate::queue::{ConsumerSpec, Holder, QueueCore};
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn spec(id: u64, h: &'static str) -> ConsumerSpec<&'static str> {
        ConsumerSpec {
            id,
            handle: h,
            no_ack: false,
            prefetch: 0,
            exclusive: false,
            channel_limit: None,
            priority: 0,
        }
    }

    fn publish(q: &mut QueueCore<&'static str>, n: usize) {
        for i in 0..n {
            let m = Message::new("", "q", &[], i.to_string().as_bytes(), false).unwrap();
            q.publish(Arc::new(m));
        }
    }

    #[test]
    fn only_holders_past_the_timeout_are_named_with_all_they_hold() {
        let mut q: QueueCore<&str> = QueueCore::new(Box::new(MemoryStore::default()), 2);
        q.add_consumer(spec(1, "a")).unwrap();
        q.add_consumer(spec(2, "b")).unwrap();
        publish(&mut q, 2);
        let mut out = Vec::new();
        q.dispatch(1_000, &mut out); // one each
        q.credit_written(1, 1);
        q.credit_written(2, 1);
        q.remove_consumer(2);
        publish(&mut q, 1);
        q.dispatch(1_500, &mut out); // a's second
        let (late, next) = q.timed_out(3_000, 2_000);
        assert!(late.is_empty(), "exactly the timeout is not late");
        assert_eq!(next, Some(3_001));
        let (late, next) = q.timed_out(3_001, 2_000);
        let mut names: Vec<(Holder, Option<&str>, usize)> = late
            .iter()
            .map(|t| (t.holder, t.handle, t.seqs.len()))
            .collect();
        names.sort_by_key(|n| n.2);
        assert_eq!(
            names,
            vec![
                (Holder::Consumer(2), Some("b"), 1),
                (Holder::Consumer(1), Some("a"), 2),
            ],
            "a cancelled consumer is still named; a's later delivery goes with it"
        );
        assert_eq!(next, Some(3_501), "a's later delivery, though a goes");
        assert_eq!(q.held_by(1).len(), 2);
        publish(&mut q, 1);
        let (got, _) = q.get(false, 9, 3_100).unwrap();
        let (late, next) = q.timed_out(3_200, 2_000);
        assert!(late.iter().all(|t| t.holder != Holder::Get(9)));
        assert_eq!(next, Some(3_501));
        for s in q.held_by(1).into_iter().chain(q.held_by(2)) {
            q.requeue(&[s]);
        }
        let (late, next) = q.timed_out(9_000, 2_000);
        assert!(late.is_empty() && next.is_none(), "basic.get is not timed");
        assert_eq!(q.ack(&[got.seq]), 1);
    }
}
