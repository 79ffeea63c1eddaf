//! A message as queues hold it: routing info, raw properties, body.

use std::sync::Arc;

/// A published message. Immutable once routed, shared (`Arc`) by every
/// queue it reached, so fanout costs a pointer per queue, not a copy.
///
/// Packed for backlogs of millions: the exchange name, routing key, raw
/// properties and body live in one owned allocation (copied out of the
/// connection's read buffer, so a held message never pins the buffer it
/// arrived in), described by a few lengths. A transient 100-byte message
/// with the default exchange costs two allocations (this struct in its
/// `Arc`, and the bytes), about 190 bytes with its queue slot.
#[derive(Debug, Clone)]
pub struct Message {
    /// delivery_mode 2.
    pub persistent: bool,
    /// Where the body lies on disk, when it was written there (persistent
    /// and routed to at least one durable queue). One record serves every
    /// durable queue the message reached.
    pub stored: Option<StoredRef>,
    exchange_len: u8,
    routing_key_len: u8,
    properties_len: u32,
    /// Exchange name, routing key, properties, body, back to back.
    data: Box<[u8]>,
}

/// Why a message cannot be built from its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// An exchange name or routing key over 255 bytes (a shortstr).
    NameTooLong,
    /// A property list over 4 GiB.
    PropertiesTooLarge,
}

impl Message {
    /// A message from its parts, copied into one allocation.
    pub fn new(
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
        persistent: bool,
    ) -> Result<Self, MessageError> {
        let (Ok(exchange_len), Ok(routing_key_len)) = (
            u8::try_from(exchange.len()),
            u8::try_from(routing_key.len()),
        ) else {
            return Err(MessageError::NameTooLong);
        };
        let properties_len =
            u32::try_from(properties.len()).map_err(|_| MessageError::PropertiesTooLarge)?;
        let mut data =
            Vec::with_capacity(exchange.len() + routing_key.len() + properties.len() + body.len());
        data.extend_from_slice(exchange.as_bytes());
        data.extend_from_slice(routing_key.as_bytes());
        data.extend_from_slice(properties);
        data.extend_from_slice(body);
        Ok(Message {
            persistent,
            stored: None,
            exchange_len,
            routing_key_len,
            properties_len,
            data: data.into_boxed_slice(),
        })
    }

    fn names_end(&self) -> usize {
        self.exchange_len as usize + self.routing_key_len as usize
    }

    fn properties_end(&self) -> usize {
        self.names_end() + self.properties_len as usize
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        // Built from a `&str` in `new`, so always valid.
        std::str::from_utf8(&self.data[..self.exchange_len as usize]).unwrap_or_default()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        std::str::from_utf8(&self.data[self.exchange_len as usize..self.names_end()])
            .unwrap_or_default()
    }

    /// The content header's property section (flags and values) exactly as
    /// the publisher sent it, so consumers receive it byte-exact.
    pub fn properties(&self) -> &[u8] {
        &self.data[self.names_end()..self.properties_end()]
    }

    pub fn body(&self) -> &[u8] {
        &self.data[self.properties_end()..]
    }

    /// The size that counts toward a queue's byte total (the body, as RabbitMQ).
    pub fn size(&self) -> u64 {
        self.body().len() as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let m = Message::new("ex", "rk.1", &[0x10, 0, 2], b"body", true).unwrap();
        assert_eq!(
            (m.exchange(), m.routing_key(), m.properties(), m.body()),
            ("ex", "rk.1", &[0x10u8, 0, 2][..], &b"body"[..])
        );
        assert!(m.persistent && m.stored.is_none());
        assert_eq!(m.size(), 4);
        let e = Message::new("", "", &[], &[], false).unwrap();
        assert_eq!((e.exchange(), e.routing_key(), e.body().len()), ("", "", 0));
        let long = "x".repeat(256);
        assert_eq!(
            Message::new(&long, "", &[], &[], false).unwrap_err(),
            MessageError::NameTooLong
        );
    }

    #[test]
    fn packed_sizes() {
        // The struct that sits in every message's `Arc`, and a queue slot.
        assert!(std::mem::size_of::<Message>() <= 40);
    }
}
