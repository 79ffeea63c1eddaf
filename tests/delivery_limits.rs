//! Delivery limits and consumer timeouts with lapin: a message's delivery
//! count survives a kill -9 of the broker (format-4 `C` index entries)
//! and still ends in the dead-letter queue at the limit; `consumer_timeout`
//! from the configuration (rabbit.toml) closes a channel that sits on a
//! delivery, with RabbitMQ's 406 text, and its message is requeued; a
//! basic.get delivery is timed too (the channel closes, or with the
//! `cancel` action only the late get goes back), and the `cancel` action
//! on a consumer leaves a get of the same channel alone.

mod common;
use common::child::{channel, start_broker};
use common::{args, declare_durable as declare, temp_dir};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use std::time::Duration;

async fn publish_confirmed(ch: &Channel, q: &str, body: &[u8]) {
    let c = ch
        .basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(c.is_ack(), "{c:?}");
}

/// basic.get (manual ack): the body, redelivered flag and x-delivery-count.
async fn get(ch: &Channel, q: &str) -> Option<(u64, Vec<u8>, bool, Option<i64>)> {
    let m = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")?;
    let d = &m.delivery;
    let count = d.properties.headers().as_ref().and_then(|h| {
        match h.inner().get(&ShortString::from("x-delivery-count")) {
            Some(AMQPValue::LongLongInt(n)) => Some(*n),
            None => None,
            other => panic!("x-delivery-count is {other:?}"),
        }
    });
    Some((d.delivery_tag, d.data.clone(), d.redelivered, count))
}

async fn nack_requeue(ch: &Channel, tag: u64) {
    ch.basic_nack(
        tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .expect("nack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_counts_survive_kill9_and_the_limit_still_applies() {
    let dir = temp_dir("delivery-crash");
    let data = dir.path().join("data");
    let mut b = start_broker(dir.path(), &data, 0).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, "dlq", FieldTable::default()).await;
    let limited = args(&[
        ("x-delivery-limit", AMQPValue::LongInt(3)),
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString("dlq".into()),
        ),
    ]);
    declare(&ch, "work", limited).await;
    publish_confirmed(&ch, "work", b"job").await;
    for expected in [0, 1] {
        let (tag, body, _, count) = get(&ch, "work").await.expect("the job");
        assert_eq!((body.as_slice(), count), (&b"job"[..], Some(expected)));
        nack_requeue(&ch, tag).await;
    }
    // A confirmed publish after the nacks: its flush wrote their counts.
    publish_confirmed(&ch, "work", b"barrier").await;
    drop(conn);
    b.kill9();

    let b = start_broker(dir.path(), &data, 1).await;
    let (_conn, ch) = channel(&b).await;
    let (tag, body, redelivered, count) = get(&ch, "work").await.expect("the job");
    assert_eq!(
        (body.as_slice(), redelivered, count),
        (&b"job"[..], true, Some(2)),
        "the count came back"
    );
    nack_requeue(&ch, tag).await;
    let (tag, _, _, count) = get(&ch, "work").await.expect("the job");
    assert_eq!(count, Some(3));
    nack_requeue(&ch, tag).await; // its 4th return: past the limit of 3
    let dead = async {
        loop {
            if let Some(m) = get(&ch, "dlq").await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (_, body, _, _) = tokio::time::timeout(Duration::from_secs(10), dead)
        .await
        .expect("the job was dead-lettered");
    assert_eq!(body, b"job");
    let (_, body, _, count) = get(&ch, "work").await.expect("the barrier");
    assert_eq!((body.as_slice(), count), (&b"barrier"[..], Some(0)));
    assert!(get(&ch, "work").await.is_none());
}

/// `consumer_timeout` from the configuration applies to a queue without
/// its own: the channel is closed with RabbitMQ's 406 text (class and
/// method 0) and the delivery goes back, redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_from_the_configuration_closes_the_channel() {
    use amq_protocol::protocol::{basic, AMQPClass};
    let b = common::start_with(|c| c.consumer_timeout = 300).await;
    let conn = common::connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    common::queue(&ch, "slow", false).await;
    common::publish(&ch, "", "slow", b"m").await;
    let mut raw = open_raw(&b).await;
    raw.open_channel(1).await;
    let consume = basic::Consume {
        queue: "slow".into(),
        consumer_tag: "c".into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    raw.method_out(1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume)))
        .await;
    // The delivery's frames come first; they are skipped up to the close.
    let close = until_channel_close(&mut raw).await;
    assert_timed_out(&close, 1, &ch, "slow").await;
    b.shutdown().await;
}

/// A raw client logged in as guest on `/` (tune-ok without heartbeats).
async fn open_raw(s: &warren::server::Server) -> common::raw_amqp::Raw {
    use amq_protocol::protocol::{connection, AMQPClass};
    let mut r = common::raw_amqp::Raw::login(s).await;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = r.method().await else {
        panic!("no tune");
    };
    let tune_ok = connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    };
    r.method_out(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
    )
    .await;
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    r.method_out(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
        .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
    ));
    r
}

/// The management API's consumer list shows the consumer timeout in
/// effect: the queue's own, else the configuration's.
#[tokio::test]
async fn the_consumer_list_shows_the_timeout_in_effect() {
    let b = common::start_with(|c| c.consumer_timeout = 600_000).await;
    let conn = common::connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let own = args(&[("x-consumer-timeout", AMQPValue::LongUInt(5_000))]);
    ch.queue_declare("own".into(), QueueDeclareOptions::default(), own)
        .await
        .expect("declare");
    common::queue(&ch, "plain", false).await;
    let _a = common::consume(&ch, "own", false).await;
    let _b = common::consume(&ch, "plain", false).await;
    let timeouts = || async {
        let j = common::get_ok(&b, "/api/consumers").await;
        let mut v: Vec<(String, u64)> = j
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let q = c["queue"]["name"].as_str().unwrap().to_owned();
                (q, c["consumer_timeout"].as_u64().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    common::wait_until("both consumers listed", Duration::from_secs(10), || async {
        timeouts().await.len() == 2
    })
    .await;
    assert_eq!(
        timeouts().await,
        vec![("own".to_owned(), 5_000), ("plain".to_owned(), 600_000)]
    );
}

/// `close` is RabbitMQ's 406 for a late ack on channel `n` (a 300 ms
/// timeout), and the message is back in `queue`, redelivered.
async fn assert_timed_out(
    close: &amq_protocol::protocol::channel::Close,
    n: u16,
    ch: &Channel,
    queue: &str,
) {
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (406, 0, 0)
    );
    assert_eq!(
        close.reply_text.as_str(),
        format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel {n} timed out. \
             Timeout value used: 300 ms. This timeout value can be configured, see consumers \
             doc guide to learn more"
        )
    );
    common::wait_until("the message back", Duration::from_secs(10), || async {
        common::passive(ch, queue)
            .await
            .is_ok_and(|q| q.message_count() == 1)
    })
    .await;
    let m = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the message");
    assert!(m.delivery.redelivered);
}

/// Reads frames until a channel.close, skipping deliveries' frames.
async fn until_channel_close(
    raw: &mut common::raw_amqp::Raw,
) -> amq_protocol::protocol::channel::Close {
    use amq_protocol::protocol::{channel as chan, AMQPClass};
    loop {
        let f = raw.frame().await.expect("a frame, not EOF");
        if f.kind != warren::amqp::codec::FRAME_METHOD {
            continue;
        }
        let (_, m) = amq_protocol::protocol::parse_class(&f.payload[..]).expect("a method");
        if let AMQPClass::Channel(chan::AMQPMethod::Close(c)) = m {
            return c;
        }
    }
}

/// A basic.get delivery left unacked past the queue's `x-consumer-timeout`
/// closes its channel with RabbitMQ's 406 text, as RabbitMQ 3.10 times
/// every delivery of a channel, and the message goes back, redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_left_unacked_past_the_timeout_closes_the_channel() {
    use amq_protocol::protocol::{basic, AMQPClass};
    let b = common::start().await;
    let conn = common::connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let timed = args(&[("x-consumer-timeout", AMQPValue::LongUInt(300))]);
    ch.queue_declare("got".into(), QueueDeclareOptions::default(), timed)
        .await
        .expect("declare");
    common::publish(&ch, "", "got", b"m").await;
    let mut raw = open_raw(&b).await;
    raw.open_channel(3).await;
    let get = basic::Get {
        queue: "got".into(),
        no_ack: false,
    };
    raw.method_out(3, AMQPClass::Basic(basic::AMQPMethod::Get(get)))
        .await;
    let close = tokio::time::timeout(Duration::from_secs(30), until_channel_close(&mut raw))
        .await
        .expect("the channel is closed in time");
    assert_timed_out(&close, 3, &ch, "got").await;
    b.shutdown().await;
}

/// Declares `q` with a 300 ms consumer timeout and Warren's `cancel` action.
async fn declare_cancelling(ch: &Channel, q: &str) {
    let cancel = args(&[
        ("x-consumer-timeout", AMQPValue::LongUInt(300)),
        ("x-consumer-timeout-action", common::longstr("cancel")),
    ]);
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), cancel)
        .await
        .expect("declare");
}

/// Warren's `cancel` action cancels only the late consumer: a basic.get
/// delivery on the same channel, older than the consumer's and of a queue
/// with a long timeout, stays unacked and can still be acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_action_leaves_a_get_on_the_same_channel_alone() {
    use futures_lite::StreamExt;
    let b = common::start().await;
    let conn = common::connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare_cancelling(&ch, "slow").await;
    let kept = args(&[("x-consumer-timeout", AMQPValue::LongUInt(600_000))]);
    ch.queue_declare("kept".into(), QueueDeclareOptions::default(), kept)
        .await
        .expect("declare");
    common::publish(&ch, "", "kept", b"got").await;
    common::publish(&ch, "", "slow", b"late").await;
    let got = ch
        .basic_get("kept".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("the message");
    let mut cons = common::consume(&ch, "slow", false).await;
    let d = common::next(&mut cons).await;
    assert_eq!(d.data, b"late");
    // The server's basic.cancel ends the consumer's stream.
    let end = tokio::time::timeout(Duration::from_secs(30), cons.next())
        .await
        .expect("the consumer is cancelled in time");
    assert!(end.is_none(), "{end:?}");
    common::wait_until("the late one back", Duration::from_secs(10), || async {
        common::passive(&ch, "slow")
            .await
            .is_ok_and(|q| q.message_count() == 1)
    })
    .await;
    let q = common::passive(&ch, "kept").await.expect("kept");
    assert_eq!(q.message_count(), 0, "the get was not requeued");
    got.ack(BasicAckOptions::default()).await.expect("ack");
    // The late delivery's ack is ignored; the channel stays open.
    d.ack(BasicAckOptions::default()).await.expect("ack");
    common::passive(&ch, "kept").await.expect("still open");
    assert!(ch.status().connected());
    common::wait_until("kept settled", Duration::from_secs(10), || async {
        common::get_ok(&b, "/api/queues/%2F/kept/unacked").await["total"] == 0
    })
    .await;
    b.shutdown().await;
}

/// With the `cancel` action a late basic.get delivery has no consumer to
/// cancel: it alone goes back, the channel stays open, and a late ack of
/// it is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_action_takes_back_only_a_late_get() {
    let b = common::start().await;
    let conn = common::connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare_cancelling(&ch, "g").await;
    common::publish(&ch, "", "g", b"late").await;
    let got = ch
        .basic_get("g".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("the message");
    common::wait_until("the get back", Duration::from_secs(30), || async {
        common::passive(&ch, "g")
            .await
            .is_ok_and(|q| q.message_count() == 1)
    })
    .await;
    got.ack(BasicAckOptions::default()).await.expect("ack");
    let again = ch
        .basic_get("g".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("the message again");
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.data, b"late");
    again.ack(BasicAckOptions::default()).await.expect("ack");
    common::wait_until("nothing left", Duration::from_secs(10), || async {
        common::get_ok(&b, "/api/queues/%2F/g/unacked").await["total"] == 0
    })
    .await;
    let q = common::passive(&ch, "g").await.expect("g");
    assert_eq!(q.message_count(), 0);
    assert!(ch.status().connected());
    b.shutdown().await;
}
