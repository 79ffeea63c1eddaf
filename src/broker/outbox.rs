//! A connection's inbox of deliveries, direct replies and consumer
//! cancellations.
//!
//! Queues and responders push here (never blocking: how much can be in
//! flight is bounded by consumer credit, prefetch, the no-ack window or a
//! reply consumer's byte budget), and the owning connection task drains
//! everything at once when woken.

use super::queue::{ConsumerHandle, Queue};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use warren_queues::{ConsumerId, QueuedMessage};

#[derive(Debug)]
pub struct Delivery {
    pub queue: Arc<Queue>,
    pub consumer: Arc<ConsumerHandle>,
    pub message: QueuedMessage,
    pub no_ack: bool,
    pub took_channel_slot: bool,
    /// Credit returns to the queue once this is written (no-ack, or a
    /// consumer without a prefetch limit): `Queue::credit_written`.
    pub credit_on_write: bool,
    /// The `x-delivery-count` header to frame it with (a redelivery from a
    /// queue with a delivery limit): see [`Delivery::properties`].
    pub delivery_count: Option<u32>,
    /// A no-ack delivery's TTL deadline, kept if it is handed back.
    pub deadline: Option<u64>,
    /// A manual-ack delivery's record, which its channel keeps until the
    /// delivery is settled; `None` for a no-ack one, or one of a stream
    /// (whose channel makes a bare one).
    pub held: Option<warren_queues::Unacked>,
}

impl Delivery {
    /// The property section to frame: as published, or with its
    /// `x-delivery-count` header set (type `l`, as RabbitMQ's quorum
    /// queues send it).
    pub fn properties(&self) -> std::borrow::Cow<'_, [u8]> {
        framed_properties(self.message.message.properties(), self.delivery_count)
    }
}

/// The property section to frame a delivery or a basic.get with: `raw`
/// as published, or with its `x-delivery-count` header set to `count`
/// (the queue keeps the message as published; properties that do not
/// decode, which publish validation rules out, go as they are).
pub fn framed_properties(raw: &[u8], count: Option<u32>) -> std::borrow::Cow<'_, [u8]> {
    match count {
        None => std::borrow::Cow::Borrowed(raw),
        Some(n) => with_delivery_count(raw, n)
            .map(std::borrow::Cow::Owned)
            .unwrap_or(std::borrow::Cow::Borrowed(raw)),
    }
}

/// `props` with the `x-delivery-count` header set to `n`.
pub fn with_delivery_count(props: &[u8], n: u32) -> Option<Vec<u8>> {
    super::properties::BasicProperties::with_header(
        props,
        "x-delivery-count",
        warren_exchanges::Value::LongLongInt(n.into()),
    )
}

#[derive(Debug)]
pub enum OutboxItem {
    Deliver(Delivery),
    /// The queue went away under the consumer.
    Cancelled {
        session: u16,
        tag: String,
        consumer: ConsumerId,
    },
    /// Publishes (publisher-confirm tags) of a session reached the disk.
    Confirmed {
        session: u16,
        epoch: u64,
        tags: Vec<u64>,
        ok: bool,
    },
    /// A session's transaction reached the disk.
    TxCommitted {
        session: u16,
        epoch: u64,
        ok: bool,
    },
    /// A flush that covers definition writes finished (replies held for
    /// it may go, see the connection's `hold`).
    DefinitionsFlushed {
        ok: bool,
    },
    /// A direct reply-to reply for one of the connection's channels.
    Reply(super::reply::Reply),
}

#[derive(Debug, Default)]
pub struct Outbox {
    items: Mutex<Queued>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    items: Vec<OutboxItem>,
    /// The connection is gone: nothing may be queued any more.
    closed: bool,
}

impl Outbox {
    /// Queues items for the connection; gives them back if the connection
    /// has closed, so deliveries return to their queues instead of being
    /// stranded.
    #[must_use = "items refused by a closed outbox must go back to their queues"]
    pub fn push_all(&self, mut items: Vec<OutboxItem>) -> Option<Vec<OutboxItem>> {
        if self.push_from(&mut items) {
            None
        } else {
            Some(items)
        }
    }

    /// Moves `items` into the outbox, leaving the vector empty for the
    /// caller to reuse (the queues' delivery hand-off allocates nothing per
    /// batch); `false`, with the items left in place, if the connection
    /// has closed.
    #[must_use = "items refused by a closed outbox must go back to their queues"]
    pub fn push_from(&self, items: &mut Vec<OutboxItem>) -> bool {
        if items.is_empty() {
            return true;
        }
        let was_empty = {
            let mut guard = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if guard.closed {
                return false;
            }
            let q = &mut guard.items;
            let was_empty = q.is_empty();
            q.append(items);
            was_empty
        };
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Takes everything queued, swapping in `buf` (empty) to reuse its allocation.
    pub fn take_into(&self, buf: &mut Vec<OutboxItem>) {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut q.items, buf);
    }

    /// The connection is going away: takes what is queued and refuses
    /// anything pushed from now on.
    pub fn close(&self) -> Vec<OutboxItem> {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        q.closed = true;
        std::mem::take(&mut q.items)
    }

    /// Resolves when items were pushed to an empty outbox since the last take.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancel(tag: &str) -> OutboxItem {
        OutboxItem::Cancelled {
            session: 1,
            tag: tag.into(),
            consumer: 7,
        }
    }

    #[test]
    fn a_closed_outbox_hands_items_back() {
        let o = Outbox::default();
        assert!(o.push_all(vec![cancel("a")]).is_none());
        let taken = o.close();
        assert_eq!(taken.len(), 1, "what was queued is taken at close");
        let back = o.push_all(vec![cancel("b")]).expect("refused after close");
        assert_eq!(back.len(), 1);
        let mut buf = Vec::new();
        o.take_into(&mut buf);
        assert!(buf.is_empty(), "nothing is stranded in a closed outbox");
    }
}
