//! A connection's inbox of deliveries and consumer cancellations.
//!
//! Queues push here (never blocking: how much can be in flight is bounded
//! by consumer credit, prefetch or the no-ack window), and the owning
//! connection task drains everything at once when woken.

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
}

#[derive(Debug, Default)]
pub struct Outbox {
    items: Mutex<Vec<OutboxItem>>,
    notify: Notify,
}

impl Outbox {
    pub fn push_all(&self, mut items: Vec<OutboxItem>) {
        if items.is_empty() {
            return;
        }
        let was_empty = {
            let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = q.is_empty();
            if was_empty && q.capacity() < items.len() {
                std::mem::swap(&mut *q, &mut items);
            } else {
                q.append(&mut items);
            }
            was_empty
        };
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Takes everything queued, swapping in `buf` (empty) to reuse its allocation.
    pub fn take_into(&self, buf: &mut Vec<OutboxItem>) {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *q, buf);
    }

    /// Resolves when items were pushed to an empty outbox since the last take.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
