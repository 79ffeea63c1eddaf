//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`): the vhost's
//! registry of reply consumers by their generated name, and the bounded
//! hand-off of replies to the requester's connection.
//!
//! There is no queue. A channel that consumes the pseudo-queue registers
//! here and gets a name `amq.rabbitmq.reply-to.<token>` (the token is
//! random bytes from the OS, so it cannot be guessed); requests it
//! publishes carry that name as their `reply_to`. A reply published to the
//! default exchange with that name as routing key is pushed straight into
//! the requester connection's outbox, at most once: it is dropped when the
//! channel is gone, and when the replies already waiting for that channel
//! exceed its byte budget (a flood to a slow requester cannot grow memory
//! without bound; RabbitMQ 4.2 drops what its writer cannot keep up with).
//! The channel owns its reply consumer; this registry only routes to it.

use super::outbox::{Outbox, OutboxItem};
use base64::Engine;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use warren_queues::Message;

/// The pseudo-queue requesters consume from and name as `reply_to`.
pub const REPLY_QUEUE: &str = "amq.rabbitmq.reply-to";
/// The prefix of the per-channel names the broker generates.
pub const REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";
/// Random bytes per token: 144 bits, 24 base64 characters.
const TOKEN_BYTES: usize = 18;
/// What a waiting reply costs beyond its body and properties.
const PER_REPLY: u64 = 128;

/// Whether `name` is one the broker generates for a reply consumer (the
/// pseudo-queue itself is not).
pub fn is_reply_name(name: &str) -> bool {
    name.starts_with(REPLY_PREFIX)
}

/// Bytes of replies handed to one requester's connection and not yet
/// framed. At least one reply always fits, however large.
#[derive(Debug)]
struct ReplyBudget {
    used: AtomicU64,
    limit: u64,
}

impl ReplyBudget {
    fn try_take(&self, n: u64) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur > 0 && cur.saturating_add(n) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One reply on its way to a requester's channel. Its bytes go back to the
/// channel's budget when it is dropped, framed or not.
#[derive(Debug)]
pub struct Reply {
    /// The requester's channel.
    pub session: u16,
    /// The reply consumer it was sent to: the channel delivers it only
    /// while it still has that consumer.
    pub name: Arc<str>,
    pub message: Arc<Message>,
    budget: Arc<ReplyBudget>,
    cost: u64,
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.budget.give_back(self.cost);
    }
}

struct Target {
    outbox: Arc<Outbox>,
    session: u16,
    name: Arc<str>,
    budget: Arc<ReplyBudget>,
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Handed to the requester's connection.
    Sent,
    /// No such reply consumer (cancelled, its channel or connection gone,
    /// or a name that was never issued in this vhost).
    Gone,
    /// The requester is too far behind: its budget is full.
    Dropped,
}

/// A vhost's reply consumers, by generated name.
#[derive(Default)]
pub struct ReplyRegistry {
    targets: DashMap<Arc<str>, Target>,
}

impl ReplyRegistry {
    /// Registers a channel's reply consumer; returns the name its requests'
    /// `reply_to` is rewritten to. `budget_bytes` bounds the replies
    /// waiting for it.
    pub fn register(&self, outbox: Arc<Outbox>, session: u16, budget_bytes: u64) -> Arc<str> {
        loop {
            let mut bytes = [0u8; TOKEN_BYTES];
            super::random_bytes(&mut bytes);
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            let name: Arc<str> = format!("{REPLY_PREFIX}{token}").into();
            // A repeat of 144 random bits will not happen; if it did, the
            // older consumer must keep its replies.
            if let dashmap::mapref::entry::Entry::Vacant(v) = self.targets.entry(name.clone()) {
                v.insert(Target {
                    outbox,
                    session,
                    name: name.clone(),
                    budget: Arc::new(ReplyBudget {
                        used: AtomicU64::new(0),
                        limit: budget_bytes,
                    }),
                });
                return name;
            }
        }
    }

    /// The reply consumer is cancelled, or its channel or connection closed.
    pub fn unregister(&self, name: &str) {
        self.targets.remove(name);
    }

    /// Whether a reply consumer has this name (a passive declare of it).
    pub fn contains(&self, name: &str) -> bool {
        self.targets.contains_key(name)
    }

    /// Hands a reply to the requester named by its routing key.
    pub fn send(&self, message: &Arc<Message>) -> ReplyOutcome {
        let (outbox, session, name, budget) = match self.targets.get(message.routing_key()) {
            Some(t) => (
                t.outbox.clone(),
                t.session,
                t.name.clone(),
                t.budget.clone(),
            ),
            None => return ReplyOutcome::Gone,
        };
        let cost = message.body().len() as u64 + message.properties().len() as u64 + PER_REPLY;
        if !budget.try_take(cost) {
            tracing::debug!(reply_to = %name, "requester too far behind; reply dropped");
            return ReplyOutcome::Dropped;
        }
        let reply = Reply {
            session,
            name,
            message: message.clone(),
            budget,
            cost,
        };
        // A closed outbox hands it back; dropping it returns its bytes.
        match outbox.push_all(vec![OutboxItem::Reply(reply)]) {
            None => ReplyOutcome::Sent,
            Some(_) => ReplyOutcome::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(name: &str, body: &[u8]) -> Arc<Message> {
        Arc::new(Message::new("", name, &[0, 0], body, false).unwrap())
    }

    #[test]
    fn names_are_random_and_registered_per_consumer() {
        let r = ReplyRegistry::default();
        let o = Arc::new(Outbox::default());
        let a = r.register(o.clone(), 1, 1 << 20);
        let b = r.register(o.clone(), 2, 1 << 20);
        assert_ne!(a, b);
        assert!(is_reply_name(&a) && a.len() == REPLY_PREFIX.len() + 24);
        assert!(r.contains(&a) && r.contains(&b));
        r.unregister(&a);
        assert!(!r.contains(&a));
        assert_eq!(r.send(&reply_to(&a, b"x")), ReplyOutcome::Gone);
        assert_eq!(r.send(&reply_to(&b, b"x")), ReplyOutcome::Sent);
    }

    #[test]
    fn a_full_budget_drops_until_replies_are_framed() {
        let r = ReplyRegistry::default();
        let o = Arc::new(Outbox::default());
        let name = r.register(o.clone(), 1, 1000);
        let big = reply_to(&name, &[0u8; 600]);
        // The first always fits, even past the budget on its own.
        assert_eq!(r.send(&big), ReplyOutcome::Sent);
        assert_eq!(r.send(&big), ReplyOutcome::Dropped);
        let mut taken = Vec::new();
        o.take_into(&mut taken);
        assert_eq!(taken.len(), 1);
        drop(taken);
        assert_eq!(
            r.send(&big),
            ReplyOutcome::Sent,
            "framing gave the bytes back"
        );
    }

    #[test]
    fn a_closed_outbox_means_gone() {
        let r = ReplyRegistry::default();
        let o = Arc::new(Outbox::default());
        let name = r.register(o.clone(), 1, 1000);
        let _ = o.close();
        assert_eq!(r.send(&reply_to(&name, b"x")), ReplyOutcome::Gone);
        assert_eq!(r.send(&reply_to(&name, b"x")), ReplyOutcome::Gone);
    }
}
