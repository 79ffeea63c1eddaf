//! Direct reply-to (`amq.rabbitmq.reply-to`) over lapin and a raw socket,
//! with the answers RabbitMQ 3.10.8 gives: the no-ack reply consumer and
//! its 406s, the rewrite of `reply_to`, replies that reach the requester
//! with no queue, declares of the pseudo-queue and of generated names,
//! replies to a requester that is gone (dropped; a mandatory one counts as
//! routed, as RabbitMQ 4.2 documents), names that do not cross vhosts,
//! the byte budget that bounds replies to a requester that does not read,
//! and the management counters.

mod common;
use amq_protocol::protocol::{basic, queue as qm, AMQPClass};
use common::raw_amqp::*;
use common::*;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use std::time::Duration;
use warren::amqp::codec;

const PSEUDO: &str = "amq.rabbitmq.reply-to";

/// A reply consumer on `ch` (no-ack, as it must be).
async fn reply_consumer(ch: &Channel) -> Consumer {
    consume(ch, PSEUDO, true).await
}

fn request_props(corr: &str) -> BasicProperties {
    BasicProperties::default()
        .with_reply_to(PSEUDO.into())
        .with_correlation_id(corr.into())
}

/// Publishes a request to queue `q` and returns the `reply_to` the
/// responder sees (fetched from `q` on `responder`).
async fn request(requester: &Channel, responder: &Channel, q: &str, corr: &str) -> String {
    publish_props(requester, "", q, b"request", request_props(corr)).await;
    let m = get_one(responder, q).await.delivery;
    assert_eq!(
        m.properties.correlation_id().as_ref().unwrap().as_str(),
        corr
    );
    m.properties
        .reply_to()
        .as_ref()
        .unwrap()
        .as_str()
        .to_owned()
}

/// The next message on `q` (polled with basic.get, within a deadline).
async fn get_one(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return m;
        }
        assert!(tokio::time::Instant::now() < end, "nothing arrived on {q}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn request_and_reply_go_straight_through() {
    let s = start().await;
    let c1 = connect(&s).await;
    let requester = c1.create_channel().await.unwrap();
    let c2 = connect(&s).await;
    let responder = c2.create_channel().await.unwrap();
    queue(&responder, "rpc", false).await;
    let mut replies = reply_consumer(&requester).await;
    let reply_to = request(&requester, &responder, "rpc", "c1").await;
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > PSEUDO.len() + 20,
        "{reply_to}"
    );
    publish_props(
        &responder,
        "",
        &reply_to,
        b"answer",
        BasicProperties::default().with_correlation_id("c1".into()),
    )
    .await;
    let d = next(&mut replies).await;
    assert_eq!(d.data, b"answer");
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), reply_to);
    assert!(!d.redelivered);
    assert_eq!(
        d.properties.correlation_id().as_ref().unwrap().as_str(),
        "c1"
    );
    // A second request on the same channel names the same consumer.
    let again = request(&requester, &responder, "rpc", "c2").await;
    assert_eq!(again, reply_to);
    // No queue was made for it.
    let names: Vec<String> = api(&s)
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, vec!["rpc".to_owned()]);
}

#[tokio::test]
async fn a_request_before_the_reply_consumer_is_406() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "rpc", false).await;
    let e = async_error(
        &ch,
        ch.basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"x",
            request_props("c"),
        ),
    )
    .await;
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist".into()
        )
    );
}

#[tokio::test]
async fn the_reply_consumer_must_be_no_ack_and_alone() {
    let (_s, c, ch) = start_channel().await;
    let e = consume_err(&ch, false).await;
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge".into()
        )
    );
    let ch = c.create_channel().await.unwrap();
    let _first = reply_consumer(&ch).await;
    let e = consume_err(&ch, true).await;
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - reply consumer already set".into()
        )
    );
    // One per channel: another channel of the connection has its own.
    let ch = c.create_channel().await.unwrap();
    let _other = reply_consumer(&ch).await;
}

async fn consume_err(ch: &Channel, no_ack: bool) -> (u16, String) {
    let e = ch
        .basic_consume(
            PSEUDO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            t(),
        )
        .await
        .unwrap_err();
    soft_code(&e)
}

#[tokio::test]
async fn declares_of_the_pseudo_queue_and_generated_names() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    // The pseudo-queue exists for everyone, passive or not.
    for passive_flag in [true, false] {
        let q = ch
            .queue_declare(
                PSEUDO.into(),
                QueueDeclareOptions {
                    passive: passive_flag,
                    durable: !passive_flag,
                    ..Default::default()
                },
                t(),
            )
            .await
            .unwrap();
        assert_eq!(
            (q.name().as_str(), q.message_count(), q.consumer_count()),
            (PSEUDO, 0, 1)
        );
    }
    let requester = c.create_channel().await.unwrap();
    queue(&ch, "rpc", false).await;
    let cons = reply_consumer(&requester).await;
    let name = request(&requester, &ch, "rpc", "c").await;
    let q = passive(&ch, &name).await.unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    // A name that was never issued, and one whose consumer is cancelled.
    // (The last character changed to one it is not: tokens are random.)
    let last = if name.ends_with('x') { 'y' } else { 'x' };
    let bogus = format!("{}{last}", &name[..name.len() - 1]);
    let e = passive(&ch, &bogus).await.unwrap_err();
    assert_eq!(
        soft_code(&e),
        (404, format!("NOT_FOUND - no queue '{bogus}' in vhost '/'"))
    );
    let ch = c.create_channel().await.unwrap();
    requester
        .basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let e = passive(&ch, &name).await.unwrap_err();
    assert_eq!(
        soft_code(&e),
        (404, format!("NOT_FOUND - no queue '{name}' in vhost '/'"))
    );
    // After the cancel, requests are refused again on that channel.
    let e = async_error(
        &requester,
        requester.basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"x",
            request_props("c"),
        ),
    )
    .await;
    assert_eq!(e.0, 406);
}

#[tokio::test]
async fn channel_and_connection_close_unregister_the_consumer() {
    let s = start().await;
    let probe_conn = connect(&s).await;
    let probe = probe_conn.create_channel().await.unwrap();
    queue(&probe, "rpc", false).await;
    let c = connect(&s).await;
    // Closed channel.
    let ch = c.create_channel().await.unwrap();
    let _cons = reply_consumer(&ch).await;
    let name = request(&ch, &probe, "rpc", "a").await;
    passive(&probe, &name).await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    assert_eq!(passive(&probe, &name).await.unwrap_err().kind_code(), 404);
    // Closed connection.
    let probe = probe_conn.create_channel().await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let _cons = reply_consumer(&ch).await;
    let name = request(&ch, &probe, "rpc", "b").await;
    passive(&probe, &name).await.unwrap();
    c.close(200, "bye".into()).await.unwrap();
    assert_eq!(passive(&probe, &name).await.unwrap_err().kind_code(), 404);
}

trait KindCode {
    fn kind_code(&self) -> u16;
}

impl KindCode for lapin::Error {
    fn kind_code(&self) -> u16 {
        soft_code(self).0
    }
}

#[tokio::test]
async fn a_reply_to_a_requester_that_is_gone_is_dropped_not_returned() {
    let s = start().await;
    let c1 = connect(&s).await;
    let requester = c1.create_channel().await.unwrap();
    let c2 = connect(&s).await;
    let responder = c2.create_channel().await.unwrap();
    queue(&responder, "rpc", false).await;
    let _cons = reply_consumer(&requester).await;
    let name = request(&requester, &responder, "rpc", "c").await;
    c1.close(200, "bye".into()).await.unwrap();
    responder
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Mandatory: counted as routed (RabbitMQ 4.2), so acked with no return.
    for mandatory in [true, false] {
        let confirm = responder
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                b"late",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        match within(confirm).await.unwrap() {
            Confirmation::Ack(None) => {}
            other => panic!("expected a plain ack, got {other:?}"),
        }
    }
    // The responder's channel is unharmed.
    passive(&responder, "rpc").await.unwrap();
}

/// A reply published to a name from another vhost, or to a name whose
/// consumer was cancelled, never reaches anyone: the next reply the
/// requester gets is the one meant for it.
#[tokio::test]
async fn names_do_not_cross_vhosts_or_outlive_their_consumer() {
    let s = start_with(|c| c.vhosts.push("other".into())).await;
    let c1 = connect(&s).await;
    let requester = c1.create_channel().await.unwrap();
    let c2 = connect(&s).await;
    let responder = c2.create_channel().await.unwrap();
    let c3 = connect_to(&s, "other").await;
    let stranger = c3.create_channel().await.unwrap();
    queue(&responder, "rpc", false).await;
    let mut replies = reply_consumer(&requester).await;
    let name = request(&requester, &responder, "rpc", "c").await;
    // The same routing key from another vhost.
    publish(&stranger, "", &name, b"from another vhost").await;
    passive(&stranger, PSEUDO).await.unwrap();
    assert!(
        passive(&stranger, &name).await.is_err(),
        "the name is unknown in another vhost"
    );
    publish(&responder, "", &name, b"mine").await;
    assert_eq!(next(&mut replies).await.data, b"mine");
    // Cancel and consume again: a new name; the old one routes nowhere.
    requester
        .basic_cancel(replies.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester).await;
    let new_name = request(&requester, &responder, "rpc", "d").await;
    assert_ne!(new_name, name);
    publish(&responder, "", &name, b"to the old name").await;
    publish(&responder, "", &new_name, b"to the new name").await;
    assert_eq!(next(&mut replies).await.data, b"to the new name");
}

#[tokio::test]
async fn replies_count_in_the_message_stats() {
    let s = start().await;
    let c1 = connect(&s).await;
    let requester = c1.create_channel().await.unwrap();
    let c2 = connect(&s).await;
    let responder = c2.create_channel().await.unwrap();
    queue(&responder, "rpc", false).await;
    let mut replies = reply_consumer(&requester).await;
    let name = request(&requester, &responder, "rpc", "c").await;
    publish(&responder, "", &name, b"answer").await;
    next(&mut replies).await;
    // One request and one reply published; the reply delivered no-ack.
    wait_until("the counters", Duration::from_secs(10), || async {
        let o = get_ok(&s, "/api/overview").await;
        let m = &o["message_stats"];
        m["publish"] == 2 && m["deliver_no_ack"] == 1 && m["get_no_ack"] == 1
    })
    .await;
}

// ---- a requester that does not read ----

impl Raw {
    /// Handshake as guest on `/`, then channel 1.
    async fn open_vhost(s: &warren::server::Server) -> Raw {
        let mut r = Raw::login(s).await;
        r.tune_open_ok("/").await;
        r.open_channel(1).await;
        r
    }

    /// A passive declare of the pseudo-queue on channel 1: a round trip
    /// behind everything the broker framed before it.
    async fn sync(&mut self, deliveries: &mut usize) {
        self.method_out(
            1,
            AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
                queue: PSEUDO.into(),
                passive: true,
                ..Default::default()
            })),
        )
        .await;
        loop {
            let f = self.frame().await.expect("open");
            if f.kind != codec::FRAME_METHOD {
                continue;
            }
            match amq_protocol::protocol::parse_class(&f.payload[..])
                .unwrap()
                .1
            {
                AMQPClass::Basic(basic::AMQPMethod::Deliver(_)) => *deliveries += 1,
                AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_)) => return,
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn replies_to_a_requester_that_does_not_read_are_bounded() {
    const BUDGET: u64 = 256 * 1024;
    const REPLIES: usize = 2000;
    let s = start_with(|c| c.direct_reply_to.buffer_bytes = BUDGET).await;
    let c = connect(&s).await;
    let responder = c.create_channel().await.unwrap();
    queue(&responder, "rpc", false).await;
    let mut raw = Raw::open_vhost(&s).await;
    raw.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: PSEUDO.into(),
            consumer_tag: "replies".into(),
            no_ack: true,
            ..Default::default()
        })),
    )
    .await;
    assert!(matches!(
        raw.method().await,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
    ));
    // A request whose only property is reply_to.
    let mut props = vec![0x02, 0x00, PSEUDO.len() as u8];
    props.extend_from_slice(PSEUDO.as_bytes());
    let mut out = bytes::BytesMut::new();
    codec::write_method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "rpc".into(),
            ..Default::default()
        })),
    );
    codec::write_content(&mut out, 1, &props, b"request", 131072);
    raw.send(&out).await;
    let name = get_one(&responder, "rpc")
        .await
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .unwrap()
        .as_str()
        .to_owned();
    // 125 MiB of replies while the requester reads nothing: all are taken
    // and confirmed, and most are dropped rather than held for it.
    responder
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![7u8; 64 * 1024];
    let mut confirms = Vec::with_capacity(REPLIES);
    for _ in 0..REPLIES {
        confirms.push(
            responder
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        assert!(matches!(within(c).await.unwrap(), Confirmation::Ack(_)));
    }
    // Now read: two round trips put every reply still on its way ahead of
    // the second declare-ok.
    let mut delivered = 0;
    raw.sync(&mut delivered).await;
    raw.sync(&mut delivered).await;
    assert!(delivered > 0, "replies within the budget arrive");
    assert!(
        delivered < REPLIES / 2,
        "{delivered} of {REPLIES} replies were held for a requester that did not read"
    );
    // The requester is still served.
    publish(&responder, "", &name, b"after").await;
    // The responder's round trip puts the reply in the requester's outbox.
    passive(&responder, "rpc").await.unwrap();
    let mut more = 0;
    raw.sync(&mut more).await;
    raw.sync(&mut more).await;
    assert_eq!(more, 1);
}
