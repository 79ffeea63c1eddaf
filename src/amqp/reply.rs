//! Direct reply-to on a channel, as RabbitMQ's channel does it: the reply
//! consumer (`basic.consume` of `amq.rabbitmq.reply-to`, no-ack, one per
//! channel), the rewrite of a request's `reply_to`, declares of the
//! pseudo-queue and of generated names, and framing replies the vhost's
//! [`ReplyRegistry`](crate::broker::ReplyRegistry) hands us.
//!
//! The channel owns its reply consumer; the registry only maps its name to
//! our outbox. Cancelling it, closing the channel or the connection
//! unregisters it (see `release_channel`).

use super::channel::Channel;
use super::codec::{self, PropertySummary};
use super::connection::Connection;
use super::error::*;
use crate::broker::reply::{is_reply_name, Reply, REPLY_QUEUE};
use crate::broker::{BrokerError, Counter};
use amq_protocol::protocol::{basic, queue, AMQPClass};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// A channel's direct reply-to consumer.
pub(super) struct ReplyConsumer {
    pub(super) tag: String,
    /// `amq.rabbitmq.reply-to.<token>`, registered in the vhost.
    pub(super) name: Arc<str>,
}

/// Whether a queue name is the pseudo-queue or a generated reply name:
/// declares of those never make a queue.
pub(super) fn is_reply_queue(name: &str) -> bool {
    name == REPLY_QUEUE || is_reply_name(name)
}

/// The properties with `reply_to` (where `summary` found it) replaced.
fn with_reply_to(props: &[u8], at: (usize, usize), name: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(props.len() + name.len());
    // The shortstr's length octet sits just before its text.
    b.put_slice(&props[..at.0 - 1]);
    b.put_u8(name.len() as u8);
    b.put_slice(name.as_bytes());
    b.put_slice(&props[at.1..]);
    b.freeze()
}

impl Connection {
    fn reply_channel(&mut self, id: u16) -> &mut Channel {
        self.channels
            .get_mut(&id)
            .expect("command on an open channel")
    }

    /// basic.consume of `amq.rabbitmq.reply-to`, with RabbitMQ's checks
    /// and texts.
    pub(super) fn reply_consume(&mut self, id: u16, c: basic::Consume) -> Result<(), AmqpError> {
        let tag = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", crate::broker::random_token(22))
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        let ch = self.reply_channel(id);
        if ch.consumers.contains_key(&tag) || ch.reply.as_ref().is_some_and(|r| r.tag == tag) {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if !c.no_ack {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "reply consumer cannot acknowledge",
            ));
        }
        if ch.reply.is_some() {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "reply consumer already set",
            ));
        }
        let name =
            self.vhost
                .replies
                .register(self.outbox.clone(), id, self.settings.reply_buffer_bytes);
        self.reply_channel(id).reply = Some(ReplyConsumer {
            tag: tag.clone(),
            name,
        });
        self.consume_ok(id, c.nowait, tag);
        Ok(())
    }

    /// basic.cancel of the reply consumer; false if `tag` is another one.
    pub(super) fn reply_cancel(&mut self, id: u16, tag: &str) -> bool {
        let ch = self.reply_channel(id);
        if ch.reply.as_ref().is_none_or(|r| r.tag != tag) {
            return false;
        }
        if let Some(r) = ch.reply.take() {
            self.vhost.replies.unregister(&r.name);
        }
        true
    }

    /// queue.declare of the pseudo-queue (always there) or of a generated
    /// name (there while its consumer is): declare-ok with no messages and
    /// one consumer, whatever the flags, as RabbitMQ answers; nothing is
    /// created. Responders use it to see whether a requester is still there.
    pub(super) fn reply_declare(&mut self, id: u16, d: &queue::Declare) -> Result<(), AmqpError> {
        let name = d.queue.as_str();
        if name != REPLY_QUEUE && !self.vhost.replies.contains(name) {
            return Err(BrokerError::no_queue(name, &self.vhost.name).into());
        }
        self.reply_channel(id).last_queue = Some(name.to_owned());
        if !d.nowait {
            self.send_method(
                id,
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: name.into(),
                    message_count: 0,
                    consumer_count: 1,
                })),
            );
        }
        Ok(())
    }

    /// A publish whose `reply_to` is the pseudo-queue: the name to rewrite
    /// it to (this channel's reply consumer), or RabbitMQ's 406 when the
    /// channel has none. `None` for any other publish.
    pub(super) fn request_reply_to(
        &mut self,
        id: u16,
        summary: &PropertySummary,
        props: &[u8],
    ) -> Result<Option<Arc<str>>, AmqpError> {
        let Some((a, b)) = summary.reply_to else {
            return Ok(None);
        };
        if &props[a..b] != REPLY_QUEUE.as_bytes() {
            return Ok(None);
        }
        match &self.reply_channel(id).reply {
            Some(r) => Ok(Some(r.name.clone())),
            None => Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "fast reply consumer does not exist",
            )),
        }
    }

    /// The request's properties with `reply_to` naming our reply consumer.
    pub(super) fn rewrite_reply_to(props: Bytes, name: &str) -> Bytes {
        match codec::scan_properties(&props).and_then(|s| s.reply_to) {
            Some(at) => with_reply_to(&props, at, name),
            None => props,
        }
    }

    /// Frames a reply for one of our channels, if it still has the reply
    /// consumer the reply was sent to; otherwise it is dropped (at most
    /// once, as RabbitMQ).
    pub(super) fn deliver_reply(&mut self, r: Reply) {
        let Some(ch) = self.channels.get_mut(&r.session) else {
            return;
        };
        let Some(consumer) = ch
            .reply
            .as_ref()
            .filter(|c| c.name == r.name && !ch.closing)
        else {
            return;
        };
        let tag = consumer.tag.clone();
        let delivery_tag = ch.next_tag;
        ch.next_tag += 1;
        ch.count(Counter::DeliverNoAck, 1);
        self.broker.counters().add(Counter::DeliverNoAck, 1);
        let m = &r.message;
        codec::write_deliver(
            &mut self.out,
            r.session,
            &tag,
            delivery_tag,
            false,
            m.exchange(),
            m.routing_key(),
        );
        codec::write_content(
            &mut self.out,
            r.session,
            m.properties(),
            m.body(),
            self.frame_max,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_to_is_spliced_in_place() {
        // content_type "a", reply_to "amq.rabbitmq.reply-to", message_id "m"
        let mut p = vec![0b1000_0010, 0b1000_0000];
        p.extend_from_slice(&[1, b'a']);
        p.push(REPLY_QUEUE.len() as u8);
        p.extend_from_slice(REPLY_QUEUE.as_bytes());
        p.extend_from_slice(&[1, b'm']);
        let s = codec::scan_properties(&p).unwrap();
        assert_eq!(
            &p[s.reply_to.unwrap().0..s.reply_to.unwrap().1],
            REPLY_QUEUE.as_bytes()
        );
        let name = "amq.rabbitmq.reply-to.XYZ";
        let out = Connection::rewrite_reply_to(Bytes::from(p), name);
        let s = codec::scan_properties(&out).unwrap();
        let (a, b) = s.reply_to.unwrap();
        assert_eq!(&out[a..b], name.as_bytes());
        assert_eq!(&out[..4], &[0b1000_0010, 0b1000_0000, 1, b'a']);
        assert_eq!(&out[out.len() - 2..], &[1, b'm']);
    }
}
