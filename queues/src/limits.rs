//! A queue's lifecycle settings (TTLs, length limits, dead-lettering) and
//! what the queue reports when it drops a message.
//!
//! [`QueueLimits`] is plain data: the broker builds it from a queue's
//! arguments (and, later, policies) in one place and hands it to the core,
//! at creation or at runtime ([`crate::QueueCore::set_limits`]). The core
//! never routes: a message it drops while a dead-letter exchange is set is
//! reported as a [`DeadMessage`] for its owner to republish, and stays
//! held by the store until the owner settles it, so a durable queue can
//! keep it until the copy is safely elsewhere.

use crate::message::{Message, StoredRef};
use std::sync::Arc;

/// What happens to a publish that would take the queue past a length limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// The oldest ready messages are dropped (or dead-lettered, `maxlen`).
    #[default]
    DropHead,
    /// The new message is refused (a confirming publisher gets a nack).
    RejectPublish,
    /// Refused, and dead-lettered.
    RejectPublishDlx,
}

impl Overflow {
    /// RabbitMQ's name for it (`x-overflow`).
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "drop-head" => Overflow::DropHead,
            "reject-publish" => Overflow::RejectPublish,
            "reject-publish-dlx" => Overflow::RejectPublishDlx,
            _ => return None,
        })
    }
}

/// A queue's effective lifecycle settings. Times in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueLimits {
    pub message_ttl: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub delivery_limit: Option<u64>,
    pub expires: Option<u64>,
    pub consumer_timeout: Option<u64>,
    /// What a consumer timeout does (Warren's `x-consumer-timeout-action`).
    pub consumer_timeout_action: TimeoutAction,
}

/// What happens when a delivery stays unacked past the consumer timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeoutAction {
    /// RabbitMQ's: the channel is closed (406), its deliveries requeued.
    #[default]
    Close,
    /// Warren's: only the consumer is cancelled (basic.cancel), its
    /// deliveries requeued; the channel and its other consumers go on.
    Cancel,
}

impl TimeoutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutAction::Close => "close",
            TimeoutAction::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "close" => TimeoutAction::Close,
            "cancel" => TimeoutAction::Cancel,
            _ => return None,
        })
    }
}

impl QueueLimits {
    /// Whether a length limit is set.
    pub fn has_length_limit(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }
}

/// Why a message left its queue without being consumed (the `reason` of
/// its `x-death` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// basic.reject or basic.nack with requeue=false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// A length limit pushed it out (or refused it: reject-publish-dlx).
    Maxlen,
    /// Redelivered more often than the queue's delivery limit.
    DeliveryLimit,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Rejected => "rejected",
            DeadReason::Expired => "expired",
            DeadReason::Maxlen => "maxlen",
            DeadReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message the queue dropped while a dead-letter exchange is set.
#[derive(Debug, Clone)]
pub struct DeadMessage {
    /// Its place in the queue, while the store still holds it: the owner
    /// calls [`crate::QueueCore::settle_dead`] with it once the message is
    /// republished (and, for a durable target, flushed). `None`: it never
    /// entered the queue (reject-publish-dlx).
    pub seq: Option<u64>,
    /// The message; `None` when only its place on disk is known (a
    /// paged-out body): read it from `stored`.
    pub message: Option<Arc<Message>>,
    pub stored: Option<StoredRef>,
    /// Or, a body paged out to the transient area: read it from there.
    pub paged: Option<Arc<crate::disk::PagedBody>>,
    pub reason: DeadReason,
}

impl DeadReason {
    /// Every reason, in [`DeadCounters`]' order.
    pub const ALL: [DeadReason; 4] = [
        DeadReason::Expired,
        DeadReason::Rejected,
        DeadReason::Maxlen,
        DeadReason::DeliveryLimit,
    ];

    fn index(self) -> usize {
        match self {
            DeadReason::Expired => 0,
            DeadReason::Rejected => 1,
            DeadReason::Maxlen => 2,
            DeadReason::DeliveryLimit => 3,
        }
    }
}

/// Messages that left a queue unconsumed, by reason: republished to a
/// dead-letter exchange, or dropped (no dead-letter exchange, or a
/// missing one: RabbitMQ's `dead_letter_strategy` `at_most_once` and
/// `disabled`), and how many dead-lettered copies were made durable before
/// their source let them go (`confirmed`). A queue's counters pass every
/// count on to their parent (the broker's), so the broker-wide totals
/// outlive deleted queues. Relaxed atomics: the paths that count are rare.
#[derive(Debug, Default)]
pub struct DeadCounters {
    dead_lettered: [std::sync::atomic::AtomicU64; 4],
    dropped: [std::sync::atomic::AtomicU64; 4],
    confirmed: std::sync::atomic::AtomicU64,
    parent: Option<Arc<DeadCounters>>,
}

impl DeadCounters {
    /// A queue's counters, counting into `parent` too.
    pub fn with_parent(parent: Arc<DeadCounters>) -> Self {
        DeadCounters {
            parent: Some(parent),
            ..Default::default()
        }
    }

    /// `n` messages left for `reason`: republished (`dead_lettered`) or
    /// dropped.
    pub fn add(&self, reason: DeadReason, dead_lettered: bool, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let set = if dead_lettered {
            &self.dead_lettered
        } else {
            &self.dropped
        };
        set[reason.index()].fetch_add(n, Relaxed);
        if let Some(p) = &self.parent {
            p.add(reason, dead_lettered, n);
        }
    }

    /// `n` dead-lettered copies were made durable.
    pub fn add_confirmed(&self, n: u64) {
        self.confirmed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.add_confirmed(n);
        }
    }

    pub fn dead_lettered(&self, reason: DeadReason) -> u64 {
        self.dead_lettered[reason.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn dropped(&self, reason: DeadReason) -> u64 {
        self.dropped[reason.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(std::sync::atomic::Ordering::Relaxed)
    }
}
