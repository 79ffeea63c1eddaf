//! A message as queues hold it: routing info, raw properties, body.

use bytes::Bytes;
use std::sync::Arc;

/// A published message. Immutable once routed, shared (`Arc`) by every
/// queue it reached, so fanout costs a pointer per queue, not a copy.
#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// The content header's property section (flags and values) exactly as
    /// the publisher sent it, so consumers receive it byte-exact.
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery_mode 2.
    pub persistent: bool,
    /// Where the body lies on disk, when it was written there (persistent
    /// and routed to at least one durable queue). One record serves every
    /// durable queue the message reached.
    pub stored: Option<StoredRef>,
}

impl Message {
    /// The size that counts toward a queue's byte total (the body, as RabbitMQ).
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }
}

/// Where a persistent message's record lies on disk: one record serves
/// every durable queue the message reached.
pub use crate::segments::Location as StoredRef;

/// A message in a queue: its place (`seq`, increasing per queue) and
/// whether it has been delivered before.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}
