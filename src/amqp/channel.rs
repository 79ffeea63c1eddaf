//! Channels: their state and the commands they carry.
//!
//! A channel belongs to its connection task. It owns its consumers, its
//! delivery-tag counter and its unacked deliveries: the one record of each
//! (ordered by tag, which is delivery order, so `multiple` acks take a
//! prefix and the consumer timeout looks at the front), handed back to the
//! queue when settled. Commands call the broker; errors come back typed by
//! what they close.

use super::assembler::{AssembleError, Assembler, BodyLimits, Command};
use super::codec::{self, Frame, FRAME_METHOD};
use super::connection::{conn_err, Connection};
use super::error::*;
use super::fields::to_table;
use crate::broker::limits::Slot;
use crate::broker::registry::COUNTERS;
use crate::broker::{
    ConsumeRequest, Counter, Delivery, Exchange, ExchangeOptions, Kind, OutboxItem, Perm,
    PublishDetails, Queue, QueueOptions,
};
use amq_protocol::protocol::{
    access, basic, channel as chan, confirm, exchange, queue, tx, AMQPClass,
};
use amq_protocol::types::ShortString;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use warren_queues::{ChannelLimit, ConsumerId, Message};

/// At most this many voided tags are remembered per channel (see
/// `Channel::voided`).
const MAX_VOIDED_TAGS: usize = 16_384;

/// One unacked delivery: its tag, its queue, and the queue's record of it
/// (seq, body or place on disk, delivery time, redelivered, size,
/// persistent, holder, prefetch slot), the only record there is. 56 bytes.
pub(super) struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    held: warren_queues::Unacked,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Unacked>() == 56);

pub(super) struct Consumer {
    id: ConsumerId,
    queue: Arc<Queue>,
    /// As consumed, for the management API.
    no_ack: bool,
    exclusive: bool,
    prefetch: u32,
    arguments: warren_exchanges::Table,
}

#[derive(Default)]
pub(super) struct Channel {
    /// We sent channel.close and wait for close-ok; other frames are dropped.
    pub(super) closing: bool,
    asm: Assembler,
    pub(super) next_tag: u64,
    unacked: VecDeque<Unacked>,
    /// Tags of deliveries requeued when their consumer timed out and was
    /// cancelled (`cancel` action): the client may still ack them, which
    /// is ignored rather than an unknown-tag error. Empty on most channels.
    voided: std::collections::BTreeSet<u64>,
    /// The queues `unacked` has held deliveries of since it was last
    /// empty (a superset), for the consumer timeout check: usually one.
    held_queues: Vec<Arc<Queue>>,
    /// Tags of cancelled consumers that may still hold deliveries here,
    /// for the unacked view; pruned at the tick.
    departed: Vec<(ConsumerId, String)>,
    pub(super) consumers: HashMap<String, Consumer>,
    /// The direct reply-to consumer (`amq.rabbitmq.reply-to`), if any.
    pub(super) reply: Option<super::reply::ReplyConsumer>,
    /// basic.qos global=false: the prefetch given to new consumers.
    consumer_prefetch: u32,
    /// basic.qos global=true: shared by the channel's consumers.
    limit: Arc<ChannelLimit>,
    /// The exchange of the last publish: most publishers use one.
    last_exchange: Option<Arc<Exchange>>,
    /// The permission generation at which write on `last_exchange` was
    /// allowed (0: not checked): the publish path skips the regex while
    /// the permission is unchanged.
    write_ok: u64,
    /// The last queue declared, for methods that name the queue "".
    pub(super) last_queue: Option<String>,
    /// Identifies this incarnation of the channel id, so confirmations
    /// that arrive after a close and reopen are not misapplied.
    pub(super) epoch: u64,
    /// confirm.select was sent.
    confirm: Option<Confirms>,
    /// tx.select was sent.
    tx: Option<Tx>,
    /// Message counters for the management API: plain integers (the
    /// channel belongs to one task), copied into its snapshot.
    stats: [u64; COUNTERS],
    /// The channel's place in its user's `max-channels` limit, given back
    /// when the channel is released.
    _slot: Option<Slot>,
}

impl Channel {
    /// The announced size of the body this channel is receiving.
    pub(super) fn pending_body(&self) -> u64 {
        self.asm.pending_body()
    }

    #[inline]
    pub(super) fn count(&mut self, c: Counter, n: u64) {
        self.stats[c as usize] += n;
    }
}

/// Publisher-confirm bookkeeping: tags are confirmed with `multiple` acks
/// up to the lowest tag still waiting for the disk.
#[derive(Default)]
struct Confirms {
    next: u64,
    /// Written to disk, waiting for a flush.
    outstanding: std::collections::BTreeSet<u64>,
    /// Tags at or below this have been acked (or nacked).
    acked_upto: u64,
    /// Tags that failed, to be nacked rather than acked.
    failed: std::collections::BTreeSet<u64>,
    /// Tags written this turn, handed to the flusher at its end.
    to_flush: Vec<u64>,
    /// The channel is in the connection's `confirm_waiting` list.
    queued: bool,
}

/// A publish held until tx.commit.
struct PendingPublish {
    exchange: Arc<Exchange>,
    message: Message,
    headers: Option<warren_exchanges::Table>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    timestamp: Option<u64>,
    extra_keys: Vec<String>,
    mandatory: bool,
    /// The `expiration` property, validated, in ms.
    expiration: Option<u64>,
}

/// Why [`Connection::route_publish`] did not take a message.
enum NotPublished {
    /// The store failed to write it.
    StoreFailed,
    /// A queue's length limit refused it (reject-publish).
    Rejected,
}

#[derive(Default)]
struct Tx {
    publishes: Vec<PendingPublish>,
    /// Settlements taken from the unacked list, applied at commit and
    /// put back at rollback.
    settles: Vec<(Vec<Unacked>, Settle)>,
}

/// A shortstr in a method frame, borrowed (no allocation per publish).
fn parse_short_str<'a>(p: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let n = *p.get(*at)? as usize;
    let s = p.get(*at + 1..*at + 1 + n)?;
    *at += 1 + n;
    std::str::from_utf8(s).ok()
}

impl Connection {
    pub(super) fn channel_frame(&mut self, f: Frame) -> Result<(), ConnectionError> {
        let id = f.channel;
        let Some(ch) = self.channels.get_mut(&id) else {
            // Only channel.open may address a channel that is not open.
            let cm = super::assembler::class_method(&f.payload);
            if f.kind == FRAME_METHOD && cm == (20, 10) {
                // channel_max bounds how many channels are open (closing
                // ones included), not their ids, as in RabbitMQ.
                let open = self.channels.len();
                if self.channel_max != 0 && open >= self.channel_max as usize {
                    return Err(conn_err(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - number of channels opened ({open}) has reached the negotiated channel_max ({})",
                            self.channel_max
                        ),
                    ));
                }
                let slot = self
                    .broker
                    .admit_channel(&self.caller.user)
                    .map_err(|e| conn_err(NOT_ALLOWED, format!("NOT_ALLOWED - {}", e.text)))?;
                let ch = Channel {
                    next_tag: 1,
                    epoch: self.broker.next_id(),
                    _slot: Some(slot),
                    ..Default::default()
                };
                self.channels.insert(id, ch);
                self.broker.churn.add(crate::broker::Churn::ChannelCreated);
                self.send_method(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                );
                return Ok(());
            }
            return Err(ConnectionError {
                code: CHANNEL_ERROR,
                text: "CHANNEL_ERROR - expected 'channel.open'".into(),
                class_id: cm.0,
                method_id: cm.1,
            });
        };
        if ch.closing {
            if f.kind == FRAME_METHOD {
                match super::assembler::class_method(&f.payload) {
                    (20, 41) => {
                        self.remove_channel(id);
                    }
                    (20, 40) => {
                        // Both sides closed at once: answer, and we are done.
                        self.send_method(
                            id,
                            AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                        );
                        self.remove_channel(id);
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        // The other channels' unfinished bodies leave this one the rest
        // of the connection's budget; alone, a body may use all of
        // max_message_size, so a legal publish never finds itself stuck.
        let before = ch.asm.pending_body();
        let others = self.unfinished_body.saturating_sub(before);
        let limits = BodyLimits {
            max_body: self.settings.max_message_size,
            room: if others == 0 {
                u64::MAX
            } else {
                self.settings
                    .max_unfinished_body_bytes
                    .saturating_sub(others)
            },
        };
        let res = ch.asm.frame(f, limits);
        self.unfinished_body = others + ch.asm.pending_body();
        let cmd = match res {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return Ok(()),
            Err(AssembleError::NoRoom { size, room }) => {
                self.close_channel(
                    id,
                    AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!(
                            "message size {size} does not fit beside this connection's other unfinished messages ({room} of its {} bytes left)",
                            self.settings.max_unfinished_body_bytes
                        ),
                    )
                    .at((60, 40)),
                );
                return Ok(());
            }
            Err(AssembleError::Unexpected(text)) => {
                return Err(conn_err(
                    UNEXPECTED_FRAME,
                    format!("UNEXPECTED_FRAME - {text}"),
                ))
            }
            Err(AssembleError::TooLarge { size, max }) => {
                // The assembler dropped the command; the channel ignores
                // the rest of its body while it closes.
                self.close_channel(
                    id,
                    AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!("message size {size} is larger than configured max size {max}"),
                    )
                    .at((60, 40)),
                );
                return Ok(());
            }
        };
        let cm = cmd.class_method();
        match self.command(id, cmd) {
            Ok(()) => Ok(()),
            // The vhost was deleted under us (its close request may not
            // have reached this task yet): close as RabbitMQ does then.
            Err(_) if self.vhost.is_deleted() => Err(ConnectionError {
                code: CONNECTION_FORCED,
                text: format!("CONNECTION_FORCED - vhost '{}' is deleted", self.vhost.name),
                class_id: 0,
                method_id: 0,
            }),
            Err(AmqpError::Channel(e)) => {
                let e = if e.class_id == 0 {
                    AmqpError::Channel(e).at(cm)
                } else {
                    AmqpError::Channel(e)
                };
                self.close_channel(id, e);
                Ok(())
            }
            Err(AmqpError::Connection(mut e)) => {
                // A 541 is a crash in RabbitMQ's channel: it names no method.
                if e.class_id == 0 && e.code != INTERNAL_ERROR {
                    e.class_id = cm.0;
                    e.method_id = cm.1;
                }
                Err(e)
            }
        }
    }

    /// Sends channel.close for a channel error and frees what it holds.
    pub(super) fn close_channel(&mut self, id: u16, e: AmqpError) {
        let AmqpError::Channel(e) = e else { return };
        tracing::info!(conn = self.id, channel = id, code = e.code, text = %e.text, "closing channel");
        self.send_method(
            id,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: e.code,
                reply_text: short_text(e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.closing = true;
            let released = std::mem::take(ch);
            self.unfinished_body = self
                .unfinished_body
                .saturating_sub(released.asm.pending_body());
            // Keep a closing placeholder until close-ok.
            self.channels.insert(
                id,
                Channel {
                    closing: true,
                    ..Default::default()
                },
            );
            self.release_channel(released);
        }
    }

    /// Cancels a channel's consumers and requeues its unacked messages.
    pub(super) fn release_channel(&mut self, ch: Channel) {
        if let Some(r) = &ch.reply {
            self.vhost.replies.unregister(&r.name);
        }
        // Acks of an uncommitted transaction never happened: those
        // deliveries are unacked again, and go back with the rest.
        let pending = ch
            .tx
            .into_iter()
            .flat_map(|tx| tx.settles)
            .flat_map(|(items, _)| items);
        let mut items: Vec<Unacked> = ch.unacked.into_iter().chain(pending).collect();
        // Each consumer leaves together with what the channel holds of its
        // queue, so nothing is delivered in between (a single active
        // consumer's successor gets those messages first).
        let mut held = Vec::new();
        for (_, c) in ch.consumers {
            if !items.is_empty() {
                let mut rest = Vec::with_capacity(items.len());
                for u in items.drain(..) {
                    if Arc::ptr_eq(&u.queue, &c.queue) {
                        held.push(u.held);
                    } else {
                        rest.push(u);
                    }
                }
                items = rest;
            }
            if c.queue.cancel_requeue(c.id, &mut held) {
                self.vhost.remove_queue(&c.queue);
            }
        }
        requeue_grouped(&mut items, &mut held);
    }

    /// What the management API shows of our open channels.
    pub(super) fn channel_snapshots(&self) -> Vec<crate::broker::ChannelSnapshot> {
        let mut v: Vec<crate::broker::ChannelSnapshot> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.closing)
            .map(|(&number, ch)| {
                let mut consumers: Vec<crate::broker::ConsumerSnapshot> = ch
                    .consumers
                    .iter()
                    .map(|(tag, c)| crate::broker::ConsumerSnapshot {
                        tag: tag.clone(),
                        queue: c.queue.name.clone(),
                        ack_required: !c.no_ack,
                        prefetch: c.prefetch,
                        exclusive: c.exclusive,
                        arguments: c.arguments.clone(),
                        activity: c.queue.activity(c.id),
                    })
                    .collect();
                consumers.sort_by(|a, b| a.tag.cmp(&b.tag));
                crate::broker::ChannelSnapshot {
                    number,
                    prefetch_count: ch.consumer_prefetch,
                    global_prefetch_count: ch.limit.limit(),
                    unacked: ch.unacked.len(),
                    stats: crate::broker::MessageStats {
                        counts: ch.stats,
                        rates: [0.0; COUNTERS],
                    },
                    confirm: ch.confirm.is_some(),
                    transactional: ch.tx.is_some(),
                    consumers,
                    idle_since: None,
                }
            })
            .collect();
        v.sort_by_key(|c| c.number);
        v
    }

    fn ch(&mut self, id: u16) -> &mut Channel {
        self.channels
            .get_mut(&id)
            .expect("command on an open channel")
    }

    fn command(&mut self, id: u16, cmd: Command) -> Result<(), AmqpError> {
        match cmd.class_method() {
            (60, 40) => return self.publish(id, cmd),
            (60, 10) => return self.qos(id, &cmd.method),
            _ => {}
        }
        let parsed = if codec::method_tables_ok(&cmd.method) {
            amq_protocol::protocol::parse_class(&cmd.method[..]).ok()
        } else {
            None
        };
        let class = match parsed {
            Some((_, c)) => c,
            None => {
                let (c, m) = cmd.class_method();
                return Err(AmqpError::connection(
                    SYNTAX_ERROR,
                    format!("could not decode method {c}.{m}"),
                ));
            }
        };
        match class {
            AMQPClass::Channel(m) => self.channel_method(id, m),
            AMQPClass::Exchange(m) => self.exchange_method(id, m),
            AMQPClass::Queue(m) => self.queue_method(id, m),
            AMQPClass::Basic(m) => self.basic_method(id, m),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send_method(
                    id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(sel)) => {
                let ch = self.ch(id);
                if ch.tx.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if ch.confirm.is_none() {
                    ch.confirm = Some(Confirms {
                        next: 1,
                        ..Default::default()
                    });
                }
                if !sel.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(id, m),
            other => {
                let (c, m) = cmd.class_method();
                Err(AmqpError::connection(
                    COMMAND_INVALID,
                    format!("unexpected method {c}.{m} ({other:?}) from a client"),
                ))
            }
        }
    }

    fn channel_method(&mut self, id: u16, m: chan::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            chan::AMQPMethod::Open(_) => Err(AmqpError::connection(
                CHANNEL_ERROR,
                "second 'channel.open' seen",
            )),
            chan::AMQPMethod::Flow(f) => {
                if !f.active {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "active=false"));
                }
                self.send_method(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: true })),
                );
                Ok(())
            }
            chan::AMQPMethod::FlowOk(_) | chan::AMQPMethod::CloseOk(_) => Ok(()),
            chan::AMQPMethod::Close(_) => {
                // Confirms due this turn go out before close-ok.
                self.advance_confirms(id);
                if let Some(ch) = self.remove_channel(id) {
                    self.release_channel(ch);
                }
                self.send_method(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                );
                Ok(())
            }
            chan::AMQPMethod::OpenOk(_) => Ok(()),
        }
    }

    fn exchange_method(&mut self, id: u16, m: exchange::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let opts = ExchangeOptions {
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: to_table(&d.arguments),
                };
                if !d.passive {
                    self.caller.check_exchange_declare(
                        &self.vhost,
                        d.exchange.as_str(),
                        d.kind.as_str(),
                        &opts.arguments,
                    )?;
                }
                self.vhost.declare_exchange(
                    d.exchange.as_str(),
                    d.kind.as_str(),
                    d.passive,
                    opts,
                )?;
                if !d.passive {
                    self.hold_for_definitions();
                }
                if !d.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
                Ok(())
            }
            exchange::AMQPMethod::Delete(d) => {
                self.caller
                    .check_delete(Kind::Exchange, d.exchange.as_str())?;
                self.vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
                self.hold_for_definitions();
                if !d.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
                Ok(())
            }
            exchange::AMQPMethod::Bind(b) => {
                self.caller.check_bind(
                    Kind::Exchange,
                    b.destination.as_str(),
                    b.source.as_str(),
                )?;
                self.caller.check_bind_topic(
                    &self.vhost,
                    b.source.as_str(),
                    b.routing_key.as_str(),
                )?;
                self.vhost.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    to_table(&b.arguments),
                )?;
                self.hold_for_definitions();
                if !b.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
                Ok(())
            }
            exchange::AMQPMethod::Unbind(u) => {
                self.caller.check_bind(
                    Kind::Exchange,
                    u.destination.as_str(),
                    u.source.as_str(),
                )?;
                self.caller.check_bind_topic(
                    &self.vhost,
                    u.source.as_str(),
                    u.routing_key.as_str(),
                )?;
                self.vhost.unbind_exchange(
                    u.destination.as_str(),
                    u.source.as_str(),
                    u.routing_key.as_str(),
                    &to_table(&u.arguments),
                )?;
                self.hold_for_definitions();
                if !u.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
                Ok(())
            }
            _ => Err(AmqpError::connection(
                COMMAND_INVALID,
                "unexpected exchange method from a client",
            )),
        }
    }

    /// A queue name from a method: "" means the channel's last declared queue.
    fn queue_name(&mut self, id: u16, name: &ShortString) -> Result<String, AmqpError> {
        let name = name.as_str();
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.ch(id)
            .last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(NOT_FOUND, "no previously declared queue"))
    }

    fn queue_method(&mut self, id: u16, m: queue::AMQPMethod) -> Result<(), AmqpError> {
        let conn = self.id;
        match m {
            queue::AMQPMethod::Declare(d) if super::reply::is_reply_queue(d.queue.as_str()) => {
                self.reply_declare(id, &d)
            }
            queue::AMQPMethod::Declare(d) => {
                let opts = QueueOptions {
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: to_table(&d.arguments),
                };
                let name = if d.passive {
                    self.queue_name(id, &d.queue)?
                } else {
                    d.queue.as_str().to_owned()
                };
                let r = self
                    .vhost
                    .declare_queue_as(&name, d.passive, opts, &self.caller)?;
                if !d.passive {
                    self.hold_for_definitions();
                }
                self.ch(id).last_queue = Some(r.queue.name.clone());
                if !d.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: r.queue.name.clone().into(),
                            message_count: r.message_count as u32,
                            consumer_count: r.consumer_count as u32,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Bind(b) => {
                let q = self.queue_name(id, &b.queue)?;
                self.caller
                    .check_bind(Kind::Queue, &q, b.exchange.as_str())?;
                self.caller.check_bind_topic(
                    &self.vhost,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                )?;
                self.vhost.bind_queue(
                    &q,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    to_table(&b.arguments),
                    conn,
                )?;
                self.hold_for_definitions();
                if !b.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Unbind(u) => {
                let q = self.queue_name(id, &u.queue)?;
                self.caller
                    .check_bind(Kind::Queue, &q, u.exchange.as_str())?;
                self.caller.check_bind_topic(
                    &self.vhost,
                    u.exchange.as_str(),
                    u.routing_key.as_str(),
                )?;
                self.vhost.unbind_queue(
                    &q,
                    u.exchange.as_str(),
                    u.routing_key.as_str(),
                    &to_table(&u.arguments),
                    conn,
                )?;
                self.hold_for_definitions();
                self.send_method(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
                Ok(())
            }
            queue::AMQPMethod::Purge(p) => {
                let q = self.queue_name(id, &p.queue)?;
                self.caller.check_read_queue(&q)?;
                let n = self.vhost.purge_queue(&q, conn)?;
                if !p.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: n as u32,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Delete(d) => {
                let q = self.queue_name(id, &d.queue)?;
                self.caller.check_delete(Kind::Queue, &q)?;
                let n = self.vhost.delete_queue(&q, d.if_unused, d.if_empty, conn)?;
                self.hold_for_definitions();
                if !d.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: n as u32,
                        })),
                    );
                }
                Ok(())
            }
            _ => Err(AmqpError::connection(
                COMMAND_INVALID,
                "unexpected queue method from a client",
            )),
        }
    }

    /// basic.qos, decoded by hand: amq-protocol drops prefetch_size.
    fn qos(&mut self, id: u16, p: &[u8]) -> Result<(), AmqpError> {
        if p.len() < 11 {
            return Err(AmqpError::connection(SYNTAX_ERROR, "malformed basic.qos"));
        }
        let size = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let count = u16::from_be_bytes([p[8], p[9]]) as u32;
        let global = p[10] & 1 == 1;
        if size != 0 {
            return Err(AmqpError::connection(
                NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({size})"),
            ));
        }
        let ch = self.ch(id);
        if global {
            ch.limit.set_limit(count);
            // A larger limit may let queues deliver what they held back.
            let queues: Vec<Arc<Queue>> = ch.consumers.values().map(|c| c.queue.clone()).collect();
            for q in queues {
                q.kick();
            }
        } else {
            ch.consumer_prefetch = count;
        }
        self.send_method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    fn publish(&mut self, id: u16, cmd: Command) -> Result<(), AmqpError> {
        let p = &cmd.method[..];
        let mut at = 6; // class, method, ticket
        let (Some(exchange), Some(routing_key)) =
            (parse_short_str(p, &mut at), parse_short_str(p, &mut at))
        else {
            return Err(AmqpError::connection(
                SYNTAX_ERROR,
                "malformed basic.publish",
            ));
        };
        let bits = p.get(at).copied().unwrap_or(0);
        let (mandatory, immediate) = (bits & 1 == 1, bits & 2 == 2);
        if immediate {
            return Err(AmqpError::connection(NOT_IMPLEMENTED, "immediate=true"));
        }
        let content = cmd
            .content
            .expect("the assembler attaches content to publish");
        let Some(summary) = codec::scan_properties(&content.header.properties) else {
            // RabbitMQ's channel crashes decoding them: the connection
            // closes with a bare 541 that names no method.
            tracing::warn!(
                conn = self.id,
                channel = id,
                "malformed content header properties"
            );
            return Err(AmqpError::Connection(ConnectionError {
                code: INTERNAL_ERROR,
                text: "INTERNAL_ERROR".into(),
                class_id: 0,
                method_id: 0,
            }));
        };
        let generation = self.caller.generation();
        let ch = self.ch(id);
        let ex = match &ch.last_exchange {
            Some(e) if e.name == exchange && !e.is_deleted() && ch.write_ok == generation => {
                e.clone()
            }
            _ => {
                // RabbitMQ's order: write permission, then the lookup.
                self.caller.check_publish(exchange)?;
                let e = self.vhost.exchange(exchange)?;
                let ch = self.ch(id);
                ch.last_exchange = Some(e.clone());
                ch.write_ok = generation;
                e
            }
        };
        if ex.opts.internal {
            return Err(AmqpError::channel(
                ACCESS_REFUSED,
                format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    ex.name, self.vhost.name
                ),
            ));
        }
        self.caller.check_topic(
            Perm::Write,
            &ex.name,
            ex.kind.as_str() == "topic",
            routing_key,
        )?;
        if let Some(uid) = summary.user_id {
            self.caller
                .check_user_id(&content.header.properties[uid.0..uid.1])?;
        }
        let expiration = match summary.expiration {
            Some((a, b)) => {
                let text = String::from_utf8_lossy(&content.header.properties[a..b]);
                let ms = crate::broker::queue_args::parse_expiration(&text)
                    .map_err(|t| AmqpError::channel(PRECONDITION_FAILED, t))?;
                Some(ms)
            }
            None => None,
        };
        let reply_to = self.request_reply_to(id, &summary, &content.header.properties)?;
        let mut properties = content.header.properties;
        // Headers and properties are decoded only when routing may read
        // them (a headers exchange, e2e bindings, an alternate exchange),
        // or when sender-selected distribution (CC/BCC) is in play.
        let may_cc = summary
            .headers
            .is_some_and(|(a, b)| codec::table_may_have_key(&properties[a..b], &["CC", "BCC"]));
        let details = if may_cc || ex.needs_message_details() {
            amq_protocol::protocol::basic::parse_properties(&properties[..])
                .ok()
                .map(|(_, p)| p)
        } else {
            None
        };
        let mut extra_keys = Vec::new();
        let mut bcc = Vec::new();
        let mut headers = details
            .as_ref()
            .and_then(|p| p.headers().as_ref().map(to_table));
        if let Some(h) = headers.as_mut() {
            // RabbitMQ refuses a CC or BCC that is not an array.
            for name in ["CC", "BCC"] {
                match h.get(name) {
                    None | Some(warren_exchanges::Value::Array(_)) => {}
                    Some(other) => {
                        return Err(AmqpError::channel(
                            PRECONDITION_FAILED,
                            format!(
                                "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                                other.type_name()
                            ),
                        ))
                    }
                }
            }
            extra_keys = sender_selected_keys(h.get("CC"));
            if let Some(b) = h.remove("BCC") {
                bcc = sender_selected_keys(Some(&b));
                extra_keys.extend(bcc.iter().cloned());
                // BCC never reaches consumers: re-encode without it (the
                // message keeps its keys, to dead-letter by them).
                if let Some(p) = &details {
                    properties = without_bcc(p).unwrap_or(properties);
                }
            }
        }
        if let Some(name) = reply_to {
            properties = Self::rewrite_reply_to(properties, &name);
        }
        // Copied out of the read buffer: a message held in a queue must
        // not pin the 64 KiB buffer its frames arrived in. Shortstrs fit
        // the message's name fields by construction.
        let message = Message::with_bcc(
            exchange,
            routing_key,
            &properties,
            &content.body,
            summary.delivery_mode == 2,
            &bcc,
        )
        .map_err(|_| AmqpError::connection(SYNTAX_ERROR, "malformed basic.publish"))?;
        let str_prop = |f: fn(&amq_protocol::protocol::BasicProperties) -> &Option<ShortString>| {
            details
                .as_ref()
                .and_then(|p| f(p).as_ref().map(|s| s.as_str().to_owned()))
        };
        let pending = PendingPublish {
            exchange: ex,
            message,
            headers,
            message_id: str_prop(|p| p.message_id()),
            correlation_id: str_prop(|p| p.correlation_id()),
            timestamp: details.as_ref().and_then(|p| *p.timestamp()),
            extra_keys,
            mandatory,
            expiration,
        };
        let ch = self.ch(id);
        if let Some(tx) = ch.tx.as_mut() {
            tx.publishes.push(pending);
            return Ok(());
        }
        let tag = ch.confirm.as_mut().map(|c| {
            c.next += 1;
            c.next - 1
        });
        let written = self.route_publish(id, pending);
        if let Some(tag) = tag {
            let c = self.ch(id).confirm.as_mut().expect("confirm mode");
            let mut flush = false;
            match written {
                Ok(true) => {
                    c.outstanding.insert(tag);
                    c.to_flush.push(tag);
                    flush = c.to_flush.len() == 1;
                }
                Ok(false) => {}
                Err(_) => {
                    c.failed.insert(tag);
                }
            }
            // Confirmed at the end of the read, with one `multiple` ack
            // for every publish of the turn that needs no disk.
            let queue = !std::mem::replace(&mut c.queued, true);
            if flush {
                self.flush_waiting.push(id);
            }
            if queue {
                self.confirm_waiting.push(id);
            }
        }
        Ok(())
    }

    /// Sends the confirms the publishes of this turn made ready.
    pub(super) fn send_ready_confirms(&mut self) {
        for id in std::mem::take(&mut self.confirm_waiting) {
            if let Some(c) = self
                .channels
                .get_mut(&id)
                .and_then(|ch| ch.confirm.as_mut())
            {
                c.queued = false;
            }
            self.advance_confirms(id);
        }
    }

    /// Routes and enqueues one publish, writing a basic.return when a
    /// mandatory message reached no queue. `Ok(true)`: it was written to
    /// disk; `Err`: the store failed (the publisher gets a nack).
    fn route_publish(&mut self, id: u16, p: PendingPublish) -> Result<bool, NotPublished> {
        let details = PublishDetails {
            headers: p.headers.as_ref(),
            message_id: p.message_id.as_deref(),
            correlation_id: p.correlation_id.as_deref(),
            timestamp: p.timestamp,
            extra_keys: &p.extra_keys,
            expiration: p.expiration,
        };
        let mut scratch = std::mem::take(&mut self.route_scratch);
        let res = if p.exchange.name.is_empty()
            && crate::broker::reply::is_reply_name(p.message.routing_key())
        {
            self.vhost
                .publish_reply(&p.exchange, p.message, details, &mut scratch)
        } else {
            self.vhost
                .publish(&p.exchange, p.message, details, &mut scratch)
        };
        self.route_scratch = scratch;
        let published = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(conn = self.id, error = %e, "cannot store a message");
                return Err(NotPublished::StoreFailed);
            }
        };
        if let Some(q) = published.blocked_by {
            // A connection that consumes from a queue publishers wait on
            // must keep reading: its acks are what drains it. That covers
            // the queue that blocks us, and breaks any cycle of
            // connections publishing to each other's consumed queues: the
            // last of them to be blocked consumes from a blocked queue,
            // so it never pauses and the cycle drains through it. (A
            // stream is drained by the flusher, not by acks: consuming
            // one is no reason not to pause.)
            let drains_blocked = self.channels.values().any(|ch| {
                ch.consumers.values().any(|c| {
                    c.queue.flow_needs_consumers()
                        && (Arc::ptr_eq(&c.queue, &q) || c.queue.flow_blocked())
                })
            });
            if !drains_blocked && self.flow_wait.is_none() {
                self.flow_wait = Some(q);
            }
        }
        if published.rejected {
            // A queue's length limit refused it (reject-publish): a
            // confirming publisher gets a nack, as from RabbitMQ.
            return Err(NotPublished::Rejected);
        }
        let ch = self.ch(id);
        ch.count(Counter::Publish, 1);
        if published.routed == 0 {
            let c = if p.mandatory {
                Counter::ReturnUnroutable
            } else {
                Counter::DropUnroutable
            };
            ch.count(c, 1);
            self.broker.counters().add(c, 1);
        }
        if published.routed == 0 && p.mandatory {
            let m = &published.message;
            codec::write_return(
                &mut self.out,
                id,
                NO_ROUTE,
                "NO_ROUTE",
                m.exchange(),
                m.routing_key(),
            );
            codec::write_content(&mut self.out, id, m.properties(), m.body(), self.frame_max);
        }
        Ok(published.written)
    }

    /// Sends the acks (and nacks) that confirmations so far allow: one
    /// `multiple` ack up to the lowest tag still waiting for the disk.
    fn advance_confirms(&mut self, id: u16) {
        let Some(c) = self
            .channels
            .get_mut(&id)
            .and_then(|ch| ch.confirm.as_mut())
        else {
            return;
        };
        let floor = c.outstanding.first().map(|t| t - 1).unwrap_or(c.next - 1);
        if floor <= c.acked_upto {
            return;
        }
        let from = c.acked_upto + 1;
        c.acked_upto = floor;
        let failed: Vec<u64> = c.failed.range(from..=floor).copied().collect();
        for t in &failed {
            c.failed.remove(t);
        }
        let acked = (floor - from + 1) - failed.len() as u64;
        if acked > 0 {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.count(Counter::Confirm, acked);
            }
            self.broker.counters().add(Counter::Confirm, acked);
        }
        let mut frames = Vec::new();
        if failed.is_empty() {
            frames.push(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: floor,
                multiple: floor > from,
            })));
        } else {
            // Rare (a failing disk): confirm one by one around the failures.
            for t in from..=floor {
                frames.push(if failed.contains(&t) {
                    AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: t,
                        multiple: false,
                        requeue: false,
                    }))
                } else {
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: t,
                        multiple: false,
                    }))
                });
            }
        }
        for f in frames {
            self.send_method(id, f);
        }
    }

    /// The flusher finished: these tags are on disk (or failed).
    pub(super) fn confirmed(&mut self, session: u16, epoch: u64, tags: &[u64], ok: bool) {
        let Some(c) = self
            .channels
            .get_mut(&session)
            .filter(|ch| ch.epoch == epoch && !ch.closing)
            .and_then(|ch| ch.confirm.as_mut())
        else {
            return;
        };
        for t in tags {
            c.outstanding.remove(t);
            if !ok {
                c.failed.insert(*t);
            }
        }
        self.advance_confirms(session);
    }

    /// Channels that wrote to disk this turn add their confirm tags to the
    /// connection's pending batch; the batch registers with the flusher
    /// once, and the flush that starts next takes all of it. One batch per
    /// flush, not one waiter per turn: each waiter's confirm woke this
    /// connection's task again, and on a busy machine every such wake-up
    /// could preempt the flusher before the next flush.
    pub(super) fn request_flushes(&mut self) {
        let Some(p) = self.broker.persistence().cloned() else {
            self.flush_waiting.clear();
            return;
        };
        let mut batch = self.confirm_batch.lock().unwrap_or_else(|e| e.into_inner());
        for id in std::mem::take(&mut self.flush_waiting) {
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            let epoch = ch.epoch;
            let Some(c) = ch.confirm.as_mut() else {
                continue;
            };
            let tags = std::mem::take(&mut c.to_flush);
            if !tags.is_empty() {
                batch.items.push((id, epoch, tags));
            }
        }
        if batch.items.is_empty() || std::mem::replace(&mut batch.registered, true) {
            return;
        }
        drop(batch);
        let pending = self.confirm_batch.clone();
        let outbox = self.outbox.clone();
        p.flusher.before_flush(Box::new(move || {
            let items = {
                let mut b = pending.lock().unwrap_or_else(|e| e.into_inner());
                b.registered = false;
                std::mem::take(&mut b.items)
            };
            Box::new(move |ok| {
                let items = items
                    .into_iter()
                    .map(|(session, epoch, tags)| OutboxItem::Confirmed {
                        session,
                        epoch,
                        tags,
                        ok,
                    })
                    .collect();
                // A closed connection has no one to confirm to.
                let _ = outbox.push_all(items);
            })
        }));
    }

    fn tx_method(&mut self, id: u16, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        let not_tx = || AmqpError::channel(PRECONDITION_FAILED, "channel is not transactional");
        match m {
            tx::AMQPMethod::Select(_) => {
                let ch = self.ch(id);
                if ch.confirm.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                ch.tx.get_or_insert_with(Tx::default);
                self.send_method(id, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let work = std::mem::take(self.ch(id).tx.as_mut().ok_or_else(not_tx)?);
                // Settling messages of a durable queue writes to its store:
                // commit-ok waits for that flush as for persistent publishes.
                let mut written = work
                    .settles
                    .iter()
                    .any(|(items, _)| items.iter().any(|u| u.queue.disk_id.is_some()));
                // Acks first: they cannot fail, and a failed publish below
                // must not leave them neither applied nor unacked.
                for (mut items, how) in work.settles {
                    self.apply_settle(id, &mut items, how);
                }
                for p in work.publishes {
                    // A store failure fails the commit, as RabbitMQ would.
                    written |= match self.route_publish(id, p) {
                        Ok(w) => w,
                        // Refused by a length limit: dropped, as outside a
                        // transaction without confirms.
                        Err(NotPublished::Rejected) => false,
                        Err(NotPublished::StoreFailed) => {
                            return Err(AmqpError::channel(
                                INTERNAL_ERROR,
                                "the message store failed during commit",
                            ))
                        }
                    };
                }
                match (written, self.broker.persistence().cloned()) {
                    (true, Some(p)) => {
                        // commit-ok only once the publishes are on disk.
                        let (outbox, epoch) = (self.outbox.clone(), self.ch(id).epoch);
                        p.flusher.after_flush(Box::new(move |ok| {
                            let _ = outbox.push_all(vec![OutboxItem::TxCommitted {
                                session: id,
                                epoch,
                                ok,
                            }]);
                        }));
                    }
                    _ => self
                        .send_method(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
                }
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let ch = self.ch(id);
                let work = std::mem::take(ch.tx.as_mut().ok_or_else(not_tx)?);
                // Settled-but-uncommitted deliveries are unacked again.
                for (items, _) in work.settles {
                    for u in &items {
                        note_queue(&mut ch.held_queues, &u.queue);
                    }
                    ch.unacked.extend(items);
                }
                ch.unacked.make_contiguous().sort_by_key(|u| u.tag);
                self.send_method(
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::connection(
                COMMAND_INVALID,
                "unexpected tx method from a client",
            )),
        }
    }

    /// The flusher finished a commit's writes.
    pub(super) fn tx_committed(&mut self, session: u16, epoch: u64, ok: bool) {
        if !self
            .channels
            .get(&session)
            .is_some_and(|ch| ch.epoch == epoch && !ch.closing)
        {
            return;
        }
        if ok {
            self.send_method(
                session,
                AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
            );
        } else {
            self.close_channel(
                session,
                AmqpError::channel(INTERNAL_ERROR, "the message store failed during commit"),
            );
        }
    }

    fn basic_method(&mut self, id: u16, m: basic::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            basic::AMQPMethod::Consume(c) => self.consume(id, c),
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str().to_owned();
                if self.reply_cancel(id, &tag) {
                    // The reply consumer is gone; nothing else to cancel.
                } else if let Some(cons) = self.ch(id).consumers.remove(&tag) {
                    let ch = self.ch(id);
                    if !ch.unacked.is_empty() {
                        // Its deliveries stay with the channel: the
                        // unacked view still names it.
                        ch.departed.push((cons.id, tag.clone()));
                    }
                    if cons.queue.cancel(cons.id) {
                        self.vhost.remove_queue(&cons.queue);
                    }
                }
                if !c.nowait {
                    self.send_method(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: tag.into(),
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => self.get(id, g),
            basic::AMQPMethod::Ack(a) => self.settle(id, a.delivery_tag, a.multiple, Settle::Ack),
            basic::AMQPMethod::Nack(n) => {
                let how = if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Drop
                };
                self.settle(id, n.delivery_tag, n.multiple, how)
            }
            basic::AMQPMethod::Reject(r) => {
                let how = if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Drop
                };
                self.settle(id, r.delivery_tag, false, how)
            }
            basic::AMQPMethod::Recover(r) => {
                self.recover(id, r.requeue)?;
                self.send_method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(id, r.requeue),
            _ => Err(AmqpError::connection(
                COMMAND_INVALID,
                "unexpected basic method from a client",
            )),
        }
    }

    fn consume(&mut self, id: u16, c: basic::Consume) -> Result<(), AmqpError> {
        if c.queue.as_str() == crate::broker::REPLY_QUEUE {
            return self.reply_consume(id, c);
        }
        let qname = self.queue_name(id, &c.queue)?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", crate::broker::random_token(22))
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        let ch = self.ch(id);
        if ch.consumers.contains_key(&tag) || ch.reply.as_ref().is_some_and(|r| r.tag == tag) {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        self.caller.check_read_queue(&qname)?;
        let q = self.vhost.queue_for(&qname, self.id)?;
        let arguments = to_table(&c.arguments);
        let priority =
            crate::broker::consumer_args::consumer_priority(&q.name, &q.vhost, &arguments)?;
        let consumer_id = self.broker.next_id();
        let outbox = self.outbox.clone();
        let conn = self.id;
        let ch = self.ch(id);
        let req = ConsumeRequest {
            id: consumer_id,
            tag: tag.clone(),
            conn,
            session: id,
            outbox,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: ch.consumer_prefetch,
            channel_limit: ch.limit.clone(),
            priority,
            arguments: to_table(&c.arguments),
        };
        let prefetch = ch.consumer_prefetch;
        // consume-ok goes out before any delivery: deliveries wait in the
        // outbox, which is drained after this command's replies.
        self.vhost.consume(&q, req)?;
        self.ch(id).consumers.insert(
            tag.clone(),
            Consumer {
                id: consumer_id,
                queue: q,
                no_ack: c.no_ack,
                exclusive: c.exclusive,
                prefetch,
                arguments,
            },
        );
        self.consume_ok(id, c.nowait, tag);
        Ok(())
    }

    /// basic.consume-ok for `tag`, unless the client asked for none.
    pub(super) fn consume_ok(&mut self, id: u16, nowait: bool, tag: String) {
        if !nowait {
            self.send_method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.into(),
                })),
            );
        }
    }

    fn get(&mut self, id: u16, g: basic::Get) -> Result<(), AmqpError> {
        let qname = self.queue_name(id, &g.queue)?;
        self.caller.check_read_queue(&qname)?;
        let q = self.vhost.queue_for(&qname, self.id)?;
        q.check_supported("basic.get")?;
        match q.get(g.no_ack) {
            None => {
                self.ch(id).count(Counter::GetEmpty, 1);
                self.send_method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                )
            }
            Some(mut got) => {
                let held = got.held.take();
                let (m, left) = (&got.message, got.left);
                let ch = self.ch(id);
                ch.count(
                    if g.no_ack {
                        Counter::GetNoAck
                    } else {
                        Counter::Get
                    },
                    1,
                );
                if m.redelivered {
                    ch.count(Counter::Redeliver, 1);
                }
                let tag = ch.next_tag;
                ch.next_tag += 1;
                if let Some(held) = held {
                    note_queue(&mut ch.held_queues, &q);
                    ch.unacked.push_back(Unacked {
                        tag,
                        queue: q.clone(),
                        held,
                    });
                }
                codec::write_get_ok(
                    &mut self.out,
                    id,
                    tag,
                    m.redelivered,
                    m.message.exchange(),
                    m.message.routing_key(),
                    left as u32,
                );
                codec::write_content(
                    &mut self.out,
                    id,
                    &got.properties(),
                    m.message.body(),
                    self.frame_max,
                );
            }
        }
        Ok(())
    }

    fn settle(&mut self, id: u16, tag: u64, multiple: bool, how: Settle) -> Result<(), AmqpError> {
        let ch = self.ch(id);
        let range = if multiple && tag == 0 {
            0..ch.unacked.len()
        } else {
            match ch.unacked.binary_search_by_key(&tag, |u| u.tag) {
                Ok(pos) if multiple => 0..pos + 1,
                Ok(pos) => pos..pos + 1,
                // Requeued at a consumer timeout: already settled.
                Err(pos) if ch.voided.contains(&tag) => {
                    if multiple {
                        0..pos
                    } else {
                        ch.voided.remove(&tag);
                        return Ok(());
                    }
                }
                Err(_) => {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!("unknown delivery tag {tag}"),
                    ))
                }
            }
        };
        if multiple && !ch.voided.is_empty() {
            // Everything up to the tag is settled now, voided ones too.
            let upto = if tag == 0 { u64::MAX } else { tag };
            ch.voided = ch.voided.split_off(&upto.saturating_add(1));
        }
        if !matches!(how, Settle::Ack) {
            // RabbitMQ 3.10 closes the connection (540) on a nack or
            // reject of a stream's delivery.
            if let Some(u) = ch
                .unacked
                .range(range.clone())
                .find(|u| u.queue.stream().is_some())
            {
                u.queue.check_supported("basic.nack and basic.reject")?;
            }
        }
        if let Some(tx) = ch.tx.as_mut() {
            tx.settles.push((ch.unacked.drain(range).collect(), how));
            return Ok(());
        }
        // The connection's scratch vector: a settle allocates nothing.
        let mut taken = std::mem::take(&mut self.settle_scratch.0);
        taken.extend(self.ch(id).unacked.drain(range));
        self.apply_settle(id, &mut taken, how);
        taken.clear();
        if taken.capacity() <= SETTLE_SCRATCH_KEEP {
            self.settle_scratch.0 = taken;
        }
        Ok(())
    }

    /// Hands `taken` (emptied) back to their queues, one locked call per
    /// queue.
    fn apply_settle(&mut self, id: u16, taken: &mut Vec<Unacked>, how: Settle) {
        let slots = taken.iter().filter(|u| u.held.slot()).count() as u32;
        let n = taken.len() as u64;
        let mut held = std::mem::take(&mut self.settle_scratch.1);
        match how {
            Settle::Ack => {
                let fold = &mut self.route_scratch.counts;
                for_each_queue(taken, &mut held, |q, held| q.ack(held, fold))
            }
            Settle::Drop => for_each_queue(taken, &mut held, |q, held| q.discard(held)),
            Settle::Requeue => requeue_grouped(taken, &mut held),
        }
        if held.capacity() <= SETTLE_SCRATCH_KEEP {
            self.settle_scratch.1 = held;
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if matches!(how, Settle::Ack) {
            ch.count(Counter::Ack, n);
        }
        if ch.limit.release(slots) {
            let queues: Vec<Arc<Queue>> = ch.consumers.values().map(|c| c.queue.clone()).collect();
            for q in queues {
                q.kick();
            }
        }
    }

    fn recover(&mut self, id: u16, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
        }
        let ch = self.ch(id);
        let mut taken: Vec<Unacked> = ch.unacked.drain(..).collect();
        let slots = taken.iter().filter(|u| u.held.slot()).count() as u32;
        ch.limit.release(slots);
        requeue_grouped(&mut taken, &mut Vec::new());
        Ok(())
    }

    /// Frames one delivery from the outbox, or gives it back to its queue
    /// when its consumer is gone.
    pub(super) fn deliver(&mut self, mut d: Delivery) {
        let session = d.consumer.session;
        let live = self.channels.get(&session).is_some_and(|ch| {
            !ch.closing
                && ch
                    .consumers
                    .get(&d.consumer.tag)
                    .is_some_and(|c| c.id == d.consumer.id)
        });
        if !live {
            // The slot belongs to the channel the consumer was on, which may
            // be closed (and its id reused) by now.
            if d.took_channel_slot {
                d.consumer.channel_limit.release(1);
            }
            d.queue.undeliver(d.message, d.no_ack, d.deadline, d.held);
            return;
        }
        d.queue.count_delivery(
            &mut self.route_scratch.counts,
            d.no_ack,
            d.message.redelivered,
        );
        let ch = self.channels.get_mut(&session).expect("checked above");
        let tag = ch.next_tag;
        ch.next_tag += 1;
        ch.count(
            if d.no_ack {
                Counter::DeliverNoAck
            } else {
                Counter::Deliver
            },
            1,
        );
        if d.message.redelivered {
            ch.count(Counter::Redeliver, 1);
        }
        if d.credit_on_write {
            match self.settle.last_mut() {
                Some((q, c, n)) if Arc::ptr_eq(q, &d.queue) && *c == d.consumer.id => *n += 1,
                _ => self.settle.push((d.queue.clone(), d.consumer.id, 1)),
            }
        } else if d.queue.stream().is_some() {
            // Its reader runs a window ahead of the socket (see writer.rs).
            let bytes = d.message.message.size();
            match self.stream_written.last_mut() {
                Some((q, c, _, b)) if Arc::ptr_eq(q, &d.queue) && *c == d.consumer.id => {
                    *b += bytes
                }
                _ => {
                    self.stream_written
                        .push((d.queue.clone(), d.consumer.id, d.message.seq, bytes))
                }
            }
        }
        if !d.no_ack {
            // A stream's delivery comes without a record: its acks only
            // free credit, so a bare one does.
            let held = d.held.take().unwrap_or_else(|| {
                warren_queues::Unacked::untracked(d.message.seq, d.consumer.id, d.queue.now_ms())
            });
            note_queue(&mut ch.held_queues, &d.queue);
            ch.unacked.push_back(Unacked {
                tag,
                queue: d.queue.clone(),
                held,
            });
        }
        let m = &d.message.message;
        codec::write_deliver(
            &mut self.out,
            session,
            &d.consumer.tag,
            tag,
            d.message.redelivered,
            m.exchange(),
            m.routing_key(),
        );
        codec::write_content(
            &mut self.out,
            session,
            &d.properties(),
            m.body(),
            self.frame_max,
        );
    }

    /// The consumer timeout, timed by the channels holding the deliveries
    /// (as RabbitMQ's rabbit_channel does), once a connection tick: each
    /// channel looks at its oldest deliveries (the front of `unacked`, in
    /// delivery order) against the shortest timeout of the queues it holds
    /// deliveries of, so a channel with nothing late costs a comparison.
    /// `close` (RabbitMQ's): a late delivery closes the channel with 406
    /// and RabbitMQ's text, every delivery it holds requeued. `cancel`
    /// (Warren's): a late consumer is cancelled (basic.cancel to a client
    /// that takes it) and only its deliveries requeued; a late basic.get
    /// delivery alone goes back; later acks of them are ignored.
    pub(super) fn check_timeouts(&mut self) {
        let ids: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, ch)| {
                !ch.closing && (!ch.held_queues.is_empty() || !ch.departed.is_empty())
            })
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let now = crate::broker::registry::unix_ms();
        let mut rules = TimeoutRules::default();
        for id in ids {
            if let Some(late) = self.late_deliveries(id, now, &mut rules) {
                self.act_on_late(id, late);
            }
        }
    }

    /// What of channel `id` is past its timeout at `now`, if anything.
    fn late_deliveries(&mut self, id: u16, now: u64, rules: &mut TimeoutRules) -> Option<Late> {
        let ch = self.channels.get_mut(&id)?;
        if ch.unacked.is_empty() {
            ch.held_queues.clear();
            ch.departed.clear();
            return None;
        }
        prune_departed(ch);
        prune_held_queues(ch);
        let shortest = ch
            .held_queues
            .iter()
            .filter_map(|q| rules.get(q).map(|(t, _)| t))
            .min()?;
        let mut late = Late::default();
        for (i, u) in ch.unacked.iter().enumerate() {
            let held_for = now.saturating_sub(u.held.delivered_at());
            if held_for <= shortest {
                break; // the rest are younger still
            }
            let Some((timeout, action)) = rules.get(&u.queue) else {
                continue;
            };
            if held_for <= timeout {
                continue;
            }
            let consumer = u.held.consumer();
            let seen = consumer.is_some_and(|c| {
                late.consumers
                    .iter()
                    .any(|(q, id)| *id == c && Arc::ptr_eq(q, &u.queue))
            });
            if seen {
                continue; // named once, with all it holds
            }
            tracing::warn!(
                conn = self.id,
                channel = id,
                queue = %u.queue.name,
                consumer,
                timeout,
                action = action.as_str(),
                "delivery timed out waiting for acknowledgement"
            );
            match (action, consumer) {
                (warren_queues::TimeoutAction::Close, _) => {
                    late.close = Some(timeout);
                    return Some(late);
                }
                (warren_queues::TimeoutAction::Cancel, Some(c)) => {
                    late.consumers.push((u.queue.clone(), c));
                }
                (warren_queues::TimeoutAction::Cancel, None) => late.gets.push(i),
            }
        }
        (!late.consumers.is_empty() || !late.gets.is_empty()).then_some(late)
    }

    /// Closes channel `id`, or cancels its late consumers and takes back
    /// their deliveries and its late gets (see [`Connection::check_timeouts`]).
    fn act_on_late(&mut self, id: u16, late: Late) {
        if let Some(timeout) = late.close {
            self.close_channel(id, ack_timed_out(id, timeout));
            return;
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        // The late gets first (by index, before anything else moves).
        let mut taken: Vec<Unacked> = Vec::with_capacity(late.gets.len());
        for &i in late.gets.iter().rev() {
            taken.extend(ch.unacked.remove(i));
        }
        taken.reverse();
        let mut slots = take_back(ch, &taken);
        requeue_grouped(&mut taken, &mut Vec::new());
        for (queue, consumer) in late.consumers {
            slots += self.cancel_late_consumer(id, &queue, consumer);
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.limit.release(slots);
        // Other consumers of the channel may take what the slots freed.
        let queues: Vec<Arc<Queue>> = ch.consumers.values().map(|c| c.queue.clone()).collect();
        for q in queues {
            q.kick();
        }
    }

    /// The `cancel` action for consumer `consumer` of `queue` on channel
    /// `id`: its deliveries leave the channel first, so one that is
    /// requeued and handed to another consumer of this channel gets a
    /// fresh record; then the consumer goes and they go back in one locked
    /// step, before anything is delivered again (a single active
    /// consumer's successor gets them first). Returns the prefetch slots
    /// they held.
    fn cancel_late_consumer(&mut self, id: u16, queue: &Arc<Queue>, consumer: ConsumerId) -> u32 {
        let Some(ch) = self.channels.get_mut(&id) else {
            return 0;
        };
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(ch.unacked.len());
        for u in ch.unacked.drain(..) {
            if u.held.consumer() == Some(consumer) && Arc::ptr_eq(&u.queue, queue) {
                taken.push(u);
            } else {
                kept.push_back(u);
            }
        }
        ch.unacked = kept;
        let slots = take_back(ch, &taken);
        let mut held: Vec<warren_queues::Unacked> = taken.into_iter().map(|u| u.held).collect();
        let tag = ch
            .consumers
            .iter()
            .find(|(_, c)| c.id == consumer && Arc::ptr_eq(&c.queue, queue))
            .map(|(tag, _)| tag.clone());
        let Some(tag) = tag else {
            // Cancelled already: only its deliveries go back.
            queue.requeue(&mut held);
            return slots;
        };
        ch.consumers.remove(&tag);
        if queue.cancel_requeue(consumer, &mut held) {
            self.vhost.remove_queue(queue);
        }
        if self.cancel_notify {
            self.send_method(
                id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_str().into(),
                    nowait: true,
                })),
            );
        }
        slots
    }

    /// Answers the management API's unacked view: the `n` oldest
    /// deliveries of the queue held by this connection's channels.
    pub(super) fn answer_unacked(&self, q: crate::broker::unacked::UnackedQuery) {
        let mut found: Vec<crate::broker::unacked::HeldDelivery> = Vec::new();
        for (&number, ch) in self.channels.iter().filter(|(_, ch)| !ch.closing) {
            // In delivery order: the first `n` of a channel are its oldest.
            let mine = ch
                .unacked
                .iter()
                .filter(|u| Arc::ptr_eq(&u.queue, &q.queue))
                .take(q.n);
            for u in mine {
                let consumer_tag = u.held.consumer().and_then(|id| {
                    ch.consumers
                        .iter()
                        .find(|(_, c)| c.id == id)
                        .map(|(tag, _)| tag.clone())
                        .or_else(|| ch.departed.iter().find(|d| d.0 == id).map(|d| d.1.clone()))
                });
                found.push(crate::broker::unacked::HeldDelivery {
                    seq: u.held.seq,
                    message: u.held.message().cloned(),
                    channel: number,
                    delivery_tag: u.tag,
                    consumer_tag,
                    delivered_at: u.held.delivered_at(),
                    redelivered: u.held.redelivered(),
                });
            }
        }
        found.sort_by_key(|h| (h.delivered_at, h.seq));
        found.truncate(q.n);
        // The asker may have given up waiting.
        let _ = q.reply.send(found);
    }

    /// A queue was deleted under one of our consumers.
    pub(super) fn consumer_cancelled(&mut self, session: u16, tag: &str, consumer: ConsumerId) {
        let Some(ch) = self.channels.get_mut(&session) else {
            return;
        };
        if ch.closing || ch.consumers.get(tag).is_none_or(|c| c.id != consumer) {
            return;
        }
        ch.consumers.remove(tag);
        if self.cancel_notify {
            self.send_method(
                session,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.into(),
                    nowait: true,
                })),
            );
        }
    }
}

/// A queue's consumer timeout (ms) and action, if it has one.
type TimeoutRule = Option<(u64, warren_queues::TimeoutAction)>;

/// Each queue's timeout rule, read once per tick.
#[derive(Default)]
struct TimeoutRules(Vec<(Arc<Queue>, TimeoutRule)>);

impl TimeoutRules {
    fn get(&mut self, q: &Arc<Queue>) -> TimeoutRule {
        if let Some((_, r)) = self.0.iter().find(|(k, _)| Arc::ptr_eq(k, q)) {
            return *r;
        }
        let r = q.consumer_timeout_rule();
        self.0.push((q.clone(), r));
        r
    }
}

/// What a channel holds past its timeouts.
#[derive(Default)]
struct Late {
    /// The `close` action applies: with this timeout (ms).
    close: Option<u64>,
    /// Consumers to cancel (the `cancel` action), with their queue.
    consumers: Vec<(Arc<Queue>, ConsumerId)>,
    /// Indices in `unacked` of late basic.get deliveries (`cancel`).
    gets: Vec<usize>,
}

/// Deliveries `taken` out of `ch` at a timeout: their tags are voided
/// (later acks ignored); returns the prefetch slots they held, for the
/// caller to release.
fn take_back(ch: &mut Channel, taken: &[Unacked]) -> u32 {
    void_tags(ch, taken.iter().map(|u| u.tag));
    taken.iter().filter(|u| u.held.slot()).count() as u32
}

/// Forgets the tags of cancelled consumers that hold nothing here any more.
fn prune_departed(ch: &mut Channel) {
    if ch.departed.is_empty() {
        return;
    }
    let unacked = &ch.unacked;
    ch.departed
        .retain(|(id, _)| unacked.iter().any(|u| u.held.consumer() == Some(*id)));
}

/// RabbitMQ's 406 for a delivery kept unacked past the consumer timeout.
fn ack_timed_out(channel: u16, timeout: u64) -> AmqpError {
    AmqpError::channel(
        PRECONDITION_FAILED,
        format!(
            "delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout} ms. \
             This timeout value can be configured, see consumers doc guide to learn more"
        ),
    )
}

/// Remembers tags whose deliveries were requeued at a consumer timeout,
/// so a late ack of one is ignored. A client told of the cancel seldom
/// acks what was taken back, so the set is bounded: the oldest go first,
/// and a very late ack of one is then an unknown tag (406), as any
/// unknown tag is.
fn void_tags(ch: &mut Channel, tags: impl Iterator<Item = u64>) {
    ch.voided.extend(tags);
    while ch.voided.len() > MAX_VOIDED_TAGS {
        ch.voided.pop_first();
    }
}

/// The routing keys of a CC or BCC header: an array of strings.
fn sender_selected_keys(v: Option<&warren_exchanges::Value>) -> Vec<String> {
    match v {
        Some(warren_exchanges::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The properties re-encoded with the BCC header removed.
fn without_bcc(p: &amq_protocol::protocol::BasicProperties) -> Option<bytes::Bytes> {
    use amq_protocol::frame::WriteContext;
    let mut p = p.clone();
    if let Some(h) = p.headers().clone() {
        let mut inner = h.inner().clone();
        inner.remove("BCC");
        p = p.with_headers(amq_protocol::types::FieldTable::from(inner));
    }
    let ctx = WriteContext::from(Vec::with_capacity(64));
    let res = amq_protocol::protocol::basic::gen_properties(&p)(ctx);
    res.ok().map(|ctx| bytes::Bytes::from(ctx.into_inner().0))
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    /// Rejected without requeue: dropped (dead-lettering comes later).
    Drop,
}

/// Settle scratch vectors that grew past this many entries (a `multiple`
/// ack of a huge backlog) are not kept.
const SETTLE_SCRATCH_KEEP: usize = 4096;

/// Calls `f` once per queue with the records of `items` of that queue
/// (moved into `held`, which `f` drains), in tag order, allocating nothing
/// once `held` has grown: items of more than one queue are sorted by
/// queue, then tag, in place. Leaves `items` empty.
fn for_each_queue(
    items: &mut Vec<Unacked>,
    held: &mut Vec<warren_queues::Unacked>,
    mut f: impl FnMut(&Arc<Queue>, &mut Vec<warren_queues::Unacked>),
) {
    let one_queue = items
        .windows(2)
        .all(|w| Arc::ptr_eq(&w[0].queue, &w[1].queue));
    if !one_queue {
        items.sort_unstable_by_key(|u| (Arc::as_ptr(&u.queue) as usize, u.tag));
    }
    held.clear();
    let mut current: Option<Arc<Queue>> = None;
    for u in items.drain(..) {
        match &current {
            Some(q) if Arc::ptr_eq(q, &u.queue) => {}
            _ => {
                if let Some(q) = current.take() {
                    f(&q, held);
                    held.clear();
                }
                current = Some(u.queue);
            }
        }
        held.push(u.held);
    }
    if let Some(q) = current {
        f(&q, held);
    }
    held.clear();
}

fn requeue_grouped(items: &mut Vec<Unacked>, held: &mut Vec<warren_queues::Unacked>) {
    for_each_queue(items, held, |q, held| q.requeue(held));
}

/// Notes that the channel holds a delivery of `q` (see
/// `Channel::held_queues`): a pointer comparison or two per delivery.
/// Drops from `held_queues` the queues none of the channel's deliveries
/// come from any more, so a busy channel (never empty at a tick) that
/// took deliveries from many queues does not keep them all, nor scan them
/// per delivery. One queue held with deliveries outstanding is theirs.
fn prune_held_queues(ch: &mut Channel) {
    if ch.held_queues.len() < 2 {
        return;
    }
    let live: std::collections::HashSet<*const Queue> =
        ch.unacked.iter().map(|u| Arc::as_ptr(&u.queue)).collect();
    ch.held_queues.retain(|q| live.contains(&Arc::as_ptr(q)));
}

fn note_queue(queues: &mut Vec<Arc<Queue>>, q: &Arc<Queue>) {
    if !queues.iter().any(|h| Arc::ptr_eq(h, q)) {
        queues.push(q.clone());
    }
}
