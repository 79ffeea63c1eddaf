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
