//! Delivery limits and consumer timeouts with lapin: a message's delivery
//! count survives a kill -9 of the broker (format-4 `C` index entries)
//! and still ends in the dead-letter queue at the limit; `consumer_timeout`
//! from the configuration (rabbit.toml) closes a channel that sits on a
//! delivery, with RabbitMQ's 406 text, and its message is requeued.

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
    use amq_protocol::protocol::{basic, channel as chan, AMQPClass};
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
    // The delivery's frames come first; its method, header and body are
    // skipped up to the close.
    let close = loop {
        let f = raw.frame().await.expect("a frame, not EOF");
        if f.kind != warren::amqp::codec::FRAME_METHOD {
            continue;
        }
        let (_, m) = amq_protocol::protocol::parse_class(&f.payload[..]).expect("a method");
        if let AMQPClass::Channel(chan::AMQPMethod::Close(c)) = m {
            break c;
        }
    };
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (406, 0, 0)
    );
    assert_eq!(
        close.reply_text.as_str(),
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. \
         Timeout value used: 300 ms. This timeout value can be configured, see consumers \
         doc guide to learn more"
    );
    common::wait_until("the message back", Duration::from_secs(10), || async {
        common::passive(&ch, "slow")
            .await
            .is_ok_and(|q| q.message_count() == 1)
    })
    .await;
    let m = ch
        .basic_get("slow".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the message");
    assert!(m.delivery.redelivered);
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
