//! Queue lifecycle over lapin: TTL expiry into a dead-letter queue with
//! `x-death` in RabbitMQ's field types, reject-publish nacks, drop-head,
//! x-expires, and the management API's view of a queue whose messages
//! expired. (The pika suite, tests/python/test_ttl_dlx.py, covers each
//! behaviour against RabbitMQ's texts as well.)

mod common;
use common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use std::time::Duration;

async fn get(ch: &Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
}

async fn ready(ch: &Channel, q: &str) -> u32 {
    passive(ch, q).await.expect("queue").message_count()
}

#[tokio::test]
async fn expired_messages_dead_letter_with_typed_x_death() {
    let (_s, _c, ch) = start_channel().await;
    declare(&ch, "dlq", t()).await;
    let a = args(&[
        ("x-message-ttl", AMQPValue::LongInt(20)),
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr("dlq")),
    ]);
    declare(&ch, "src", a).await;
    let props = BasicProperties::default().with_expiration("10000".into());
    publish_props(&ch, "", "src", b"late", props).await;
    wait_until("the dead letter", Duration::from_secs(10), || async {
        ready(&ch, "dlq").await == 1
    })
    .await;
    let m = get(&ch, "dlq").await.expect("a message");
    assert_eq!(m.delivery.data, b"late");
    assert_eq!(m.delivery.routing_key.as_str(), "dlq");
    let p = &m.delivery.properties;
    assert!(p.expiration().is_none(), "expiration removed");
    let h = p.headers().as_ref().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
        panic!("no x-death: {h:?}");
    };
    let AMQPValue::FieldTable(d) = &deaths.as_slice()[0] else {
        panic!("not a table");
    };
    let d = d.inner();
    assert_eq!(d.get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(d.get("reason"), Some(&longstr("expired")));
    assert_eq!(d.get("queue"), Some(&longstr("src")));
    assert_eq!(d.get("original-expiration"), Some(&longstr("10000")));
    assert!(matches!(d.get("time"), Some(AMQPValue::Timestamp(_))));
    assert_eq!(h.inner().get("x-last-death-queue"), Some(&longstr("src")));
}

#[tokio::test]
async fn reject_publish_nacks_and_drop_head_keeps_the_newest() {
    let (_s, _c, ch) = start_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let rp = args(&[
        ("x-max-length", AMQPValue::LongInt(2)),
        ("x-overflow", longstr("reject-publish")),
    ]);
    declare(&ch, "rp", rp).await;
    let dh = args(&[("x-max-length", AMQPValue::LongInt(2))]);
    declare(&ch, "dh", dh).await;
    let mut acks = Vec::new();
    for i in 0..3 {
        for q in ["rp", "dh"] {
            let c = ch
                .basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            acks.push((q, i, c.is_ack()));
        }
    }
    assert!(
        acks.iter().all(|&(q, i, ack)| ack == (q == "dh" || i < 2)),
        "{acks:?}"
    );
    assert_eq!(get(&ch, "rp").await.unwrap().delivery.data, b"m0");
    assert_eq!(get(&ch, "dh").await.unwrap().delivery.data, b"m1");
}

#[tokio::test]
async fn an_unused_queue_expires_and_the_api_shows_no_expired_messages() {
    let (s, _c, ch) = start_channel().await;
    declare(
        &ch,
        "short-lived",
        args(&[("x-expires", AMQPValue::LongInt(100))]),
    )
    .await;
    declare(
        &ch,
        "ttl",
        args(&[("x-message-ttl", AMQPValue::LongInt(30))]),
    )
    .await;
    publish(&ch, "", "ttl", b"x").await;
    wait_until("the queue to expire", Duration::from_secs(10), || async {
        // The API's view (a declare would count as a use).
        get_json(&s, "/api/queues/%2f/short-lived").await.0 == 404
    })
    .await;
    wait_until("the message to expire", Duration::from_secs(10), || async {
        let (_, q) = get_json(&s, "/api/queues/%2f/ttl").await;
        q["messages_ready"] == 0
    })
    .await;
}
