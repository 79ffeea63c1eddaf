//! The broker core driven by lapin over real TCP: declare, publish,
//! consume, get, ack/nack/reject, qos, exclusivity, errors.

mod common;
use common::*;
use futures_lite::stream::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

#[tokio::test]
async fn publish_and_consume_in_order_no_ack() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "order", false).await;
    let mut cons = consume(&ch, "order", true).await;
    for i in 0..100u32 {
        publish(&ch, "", "order", &i.to_be_bytes()).await;
    }
    for i in 0..100u32 {
        let d = next(&mut cons).await;
        assert_eq!(d.data, i.to_be_bytes());
        assert!(!d.redelivered);
        assert_eq!(d.routing_key.as_str(), "order");
    }
}

#[tokio::test]
async fn declare_ok_counts_and_server_named_queues() {
    let (_s, _c, ch) = start_channel().await;
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions::default(), t())
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    assert_eq!(q.name().as_str().len(), "amq.gen-".len() + 22);
    publish(&ch, "", q.name().as_str(), b"a").await;
    publish(&ch, "", q.name().as_str(), b"b").await;
    let again = passive(&ch, q.name().as_str()).await.unwrap();
    assert_eq!(again.message_count(), 2);
    assert_eq!(again.consumer_count(), 0);
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404() {
    let (_s, c, ch) = start_channel().await;
    let e = passive(&ch, "nope").await.unwrap_err();
    assert_eq!(
        soft_code(&e),
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'".into())
    );
    // Only the channel closed: the connection still works.
    let ch2 = c.create_channel().await.unwrap();
    queue(&ch2, "after-404", false).await;
}

#[tokio::test]
async fn redeclare_with_other_flags_is_406() {
    let (_s, c, ch) = start_channel().await;
    queue(&ch, "flags", false).await;
    let e = ch
        .queue_declare("flags".into(), durable_q(), t())
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'flags' in vhost '/': received 'true' but current is 'false'".into()
        )
    );
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "ex-flags".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        t(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_declare(
            "ex-flags".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex-flags' in vhost '/': received 'fanout' but current is 'direct'".into()
        )
    );
}

#[tokio::test]
async fn amq_prefix_is_reserved() {
    let (_s, c, ch) = start_channel().await;
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'".into()
        )
    );
    // Redeclaring a predeclared one with the same properties is fine.
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap();
    let e = ch
        .queue_declare("amq.q".into(), QueueDeclareOptions::default(), t())
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e).0, 403);
}

#[tokio::test]
async fn predeclared_exchanges_and_default_exchange_rules() {
    let (_s, c, ch) = start_channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            t(),
        )
        .await
        .unwrap();
    }
    queue(&ch, "dflt", false).await;
    let e = ch
        .queue_bind(
            "dflt".into(),
            "".into(),
            "x".into(),
            QueueBindOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".into()
        )
    );
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .exchange_delete("".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e).0, 403);
}

#[tokio::test]
async fn direct_and_fanout_routing_and_unbind() {
    let (_s, _c, ch) = start_channel().await;
    ch.exchange_declare(
        "logs".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        t(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "work".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        t(),
    )
    .await
    .unwrap();
    for q in ["f1", "f2", "d1"] {
        queue(&ch, q, false).await;
    }
    for q in ["f1", "f2"] {
        bind(&ch, q, "logs", "ignored", t()).await;
    }
    bind(&ch, "d1", "work", "red", t()).await;
    publish(&ch, "logs", "any", b"fan").await;
    publish(&ch, "work", "red", b"r").await;
    publish(&ch, "work", "blue", b"b").await;
    for q in ["f1", "f2"] {
        let m = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, b"fan");
    }
    let m = ch
        .basic_get("d1".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"r");
    assert!(ch
        .basic_get("d1".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    ch.queue_unbind("d1".into(), "work".into(), "red".into(), t())
        .await
        .unwrap();
    // Unbinding what is not bound is fine, as in RabbitMQ.
    ch.queue_unbind("d1".into(), "work".into(), "red".into(), t())
        .await
        .unwrap();
    publish(&ch, "work", "red", b"r2").await;
    let q = passive(&ch, "d1").await.unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn topic_and_headers_basic_routing() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "tq", false).await;
    queue(&ch, "hq", false).await;
    bind(&ch, "tq", "amq.topic", "a.*.c", t()).await;
    let mut args = FieldTable::default();
    args.insert("x-match".into(), AMQPValue::LongString("any".into()));
    args.insert("color".into(), AMQPValue::LongString("red".into()));
    bind(&ch, "hq", "amq.headers", "", args).await;
    publish(&ch, "amq.topic", "a.b.c", b"yes").await;
    publish(&ch, "amq.topic", "a.b.d", b"no").await;
    let mut h = FieldTable::default();
    h.insert("color".into(), AMQPValue::LongString("red".into()));
    ch.basic_publish(
        "amq.headers".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"red",
        BasicProperties::default().with_headers(h),
    )
    .await
    .unwrap();
    publish(&ch, "amq.headers", "", b"plain").await;
    let m = ch
        .basic_get("tq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"yes");
    assert_eq!(m.message_count, 0);
    let m = ch
        .basic_get("hq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"red");
    assert!(ch
        .basic_get("hq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn publish_to_missing_exchange_is_404() {
    let (_s, _c, ch) = start_channel().await;
    let err = async_error(
        &ch,
        ch.basic_publish(
            "missing-ex".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await;
    assert_eq!(
        err,
        (
            404,
            "NOT_FOUND - no exchange 'missing-ex' in vhost '/'".into()
        )
    );
}

#[tokio::test]
async fn mandatory_unroutable_is_returned() {
    let (_s, _c, ch) = start_channel().await;
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost?",
            BasicProperties::default().with_message_id("m1".into()),
        )
        .await
        .unwrap();
    drop(confirm);
    // Without confirms lapin collects returns for wait_for_confirms.
    let returned = within(async {
        loop {
            if let Some(r) = ch.wait_for_confirms().await.unwrap().into_iter().next() {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(returned.delivery.data, b"lost?");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(
        returned.delivery.properties.message_id(),
        &Some("m1".into())
    );
}

#[tokio::test]
async fn ack_nack_reject_and_requeue_order() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "acks", false).await;
    for i in 1..=5u8 {
        publish(&ch, "", "acks", &[i]).await;
    }
    let mut cons = consume(&ch, "acks", false).await;
    let mut ds = Vec::new();
    for _ in 0..5 {
        ds.push(next(&mut cons).await);
    }
    assert_eq!(
        ds.iter().map(|d| d.data[0]).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // ack 1, reject 2 (drop), nack 3..=4 requeue (multiple), leave 5 unacked.
    ds[0].ack(BasicAckOptions::default()).await.unwrap();
    ds[1]
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    ch.basic_nack(
        ds[3].delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    // 3 and 4 come back to this consumer, redelivered, in their order.
    let a = next(&mut cons).await;
    let b = next(&mut cons).await;
    assert_eq!((a.data[0], b.data[0]), (3, 4));
    assert!(a.redelivered && b.redelivered);
    // Multiple ack of everything outstanding.
    ch.basic_ack(b.delivery_tag, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let q = passive(&ch, "acks").await.unwrap();
    assert_eq!(q.message_count(), 0, "everything was acked or dropped");
}

/// One channel consuming two queues: a `multiple` nack settles the
/// deliveries of both, each queue gets its own back in its own order, and
/// a `multiple` ack then settles both queues' redeliveries.
#[tokio::test]
async fn multiple_settles_across_queues_keep_each_queues_order() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "ms-a", false).await;
    queue(&ch, "ms-b", false).await;
    for i in 1..=6u8 {
        publish(&ch, "", "ms-a", &[i]).await;
        publish(&ch, "", "ms-b", &[100 + i]).await;
    }
    let mut ca = consume(&ch, "ms-a", false).await;
    let mut cb = consume(&ch, "ms-b", false).await;
    let mut last = 0;
    for _ in 0..6 {
        last = last.max(next(&mut ca).await.delivery_tag);
        last = last.max(next(&mut cb).await.delivery_tag);
    }
    ch.basic_nack(
        last,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let d = next(&mut ca).await;
        assert!(d.redelivered);
        last = last.max(d.delivery_tag);
        a.push(d.data[0]);
        let d = next(&mut cb).await;
        assert!(d.redelivered);
        last = last.max(d.delivery_tag);
        b.push(d.data[0]);
    }
    assert_eq!(a, (1..=6).collect::<Vec<u8>>());
    assert_eq!(b, (101..=106).collect::<Vec<u8>>());
    ch.basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    for q in ["ms-a", "ms-b"] {
        ch.basic_cancel(
            if q == "ms-a" { ca.tag() } else { cb.tag() },
            BasicCancelOptions::default(),
        )
        .await
        .unwrap();
        let p = passive(&ch, q).await.unwrap();
        assert_eq!(p.message_count(), 0, "{q}: everything was acked");
    }
}

#[tokio::test]
async fn unknown_and_double_ack_are_406() {
    let (_s, c, ch) = start_channel().await;
    queue(&ch, "dbl", false).await;
    publish(&ch, "", "dbl", b"x").await;
    let m = ch
        .basic_get("dbl".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    let tag = m.delivery.delivery_tag;
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    let err = async_error(&ch, ch.basic_ack(tag, BasicAckOptions::default())).await;
    assert_eq!(
        err,
        (406, "PRECONDITION_FAILED - unknown delivery tag 1".into())
    );
    let ch = c.create_channel().await.unwrap();
    let err = async_error(&ch, ch.basic_ack(42, BasicAckOptions::default())).await;
    assert_eq!(
        err,
        (406, "PRECONDITION_FAILED - unknown delivery tag 42".into())
    );
}

#[tokio::test]
async fn unacked_messages_return_when_channel_or_connection_closes() {
    let (s, c, ch) = start_channel().await;
    queue(&ch, "back", false).await;
    for i in 0..3u8 {
        publish(&ch, "", "back", &[i]).await;
    }
    let ch2 = c.create_channel().await.unwrap();
    let mut cons = consume(&ch2, "back", false).await;
    for _ in 0..3 {
        next(&mut cons).await;
    }
    ch2.close(200, "bye".into()).await.unwrap();
    let c2 = connect(&s).await;
    let ch3 = c2.create_channel().await.unwrap();
    let mut cons = consume(&ch3, "back", false).await;
    for i in 0..3u8 {
        let d = next(&mut cons).await;
        assert_eq!(d.data, [i]);
        assert!(d.redelivered);
    }
    // Now the whole connection goes away without acking.
    c2.close(200, "bye".into()).await.unwrap();
    let m = within(async {
        loop {
            if let Some(m) = ch
                .basic_get("back".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
        }
    })
    .await;
    assert_eq!(m.delivery.data, [0]);
    assert!(m.delivery.redelivered);
}

#[tokio::test]
async fn prefetch_limits_each_consumer_and_round_robin() {
    let s = start().await;
    let c = connect(&s).await;
    let pubch = c.create_channel().await.unwrap();
    queue(&pubch, "rr", false).await;
    let ch = c.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut a = consume(&ch, "rr", false).await;
    let mut b = consume(&ch, "rr", false).await;
    for i in 0..4u8 {
        publish(&pubch, "", "rr", &[i]).await;
    }
    let da = next(&mut a).await;
    let db = next(&mut b).await;
    assert_eq!((da.data[0], db.data[0]), (0, 1), "round-robin");
    // Each has one unacked: nothing more arrives until an ack.
    let more = tokio::time::timeout(std::time::Duration::from_millis(200), a.next()).await;
    assert!(more.is_err(), "prefetch 1 must hold the next message back");
    da.ack(BasicAckOptions::default()).await.unwrap();
    let da2 = next(&mut a).await;
    assert_eq!(da2.data[0], 2);
    let q = passive(&pubch, "rr").await.unwrap();
    assert_eq!(q.message_count(), 1);
    assert_eq!(q.consumer_count(), 2);
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channel() {
    let s = start().await;
    let c = connect(&s).await;
    let pubch = c.create_channel().await.unwrap();
    queue(&pubch, "g1", false).await;
    queue(&pubch, "g2", false).await;
    let ch = c.create_channel().await.unwrap();
    ch.basic_qos(2, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut a = consume(&ch, "g1", false).await;
    let mut b = consume(&ch, "g2", false).await;
    for i in 0..3u8 {
        publish(&pubch, "", "g1", &[i]).await;
        publish(&pubch, "", "g2", &[i]).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        tokio::select! {
            d = a.next() => got.push(d.unwrap().unwrap()),
            d = b.next() => got.push(d.unwrap().unwrap()),
        }
    }
    let extra = tokio::time::timeout(std::time::Duration::from_millis(200), async {
        tokio::select! {
            d = a.next() => d,
            d = b.next() => d,
        }
    })
    .await;
    assert!(extra.is_err(), "the channel's limit of 2 is reached");
    got[0].ack(BasicAckOptions::default()).await.unwrap();
    let third = within(async {
        tokio::select! {
            d = a.next() => d,
            d = b.next() => d,
        }
    })
    .await;
    assert!(third.is_some());
}

#[tokio::test]
async fn prefetch_size_is_not_implemented_like_rabbitmq() {
    let (_s, _c, ch) = start_channel().await;
    // lapin has no prefetch_size; the raw-socket tests cover the 540.
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
}

#[tokio::test]
async fn exclusive_queue_is_locked_for_others_and_deleted_with_owner() {
    let s = start().await;
    let owner = connect(&s).await;
    let ch = owner.create_channel().await.unwrap();
    ch.queue_declare("excl".into(), exclusive_q(), t())
        .await
        .unwrap();
    let other = connect(&s).await;
    let och = other.create_channel().await.unwrap();
    let e = och
        .queue_declare("excl".into(), QueueDeclareOptions::default(), t())
        .await
        .unwrap_err();
    let (code, text) = soft_code(&e);
    assert_eq!(code, 405);
    assert!(
        text.starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'"
        ),
        "{text}"
    );
    let och = other.create_channel().await.unwrap();
    let e = och
        .basic_consume(
            "excl".into(),
            "".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e).0, 405);
    // Publishing to it from elsewhere is allowed.
    let och = other.create_channel().await.unwrap();
    publish(&och, "", "excl", b"hi").await;
    owner.close(200, "bye".into()).await.unwrap();
    // The queue goes as the owner's connection is torn down, just after
    // its close-ok: until then a passive declare is still 405 (locked).
    wait_until(
        "the exclusive queue gone with its owner",
        std::time::Duration::from_secs(10),
        || {
            let other = &other;
            async move {
                let och = other.create_channel().await.unwrap();
                match passive(&och, "excl").await {
                    Err(e) => {
                        let code = soft_code(&e).0;
                        assert!(code == 404 || code == 405, "unexpected {code}");
                        code == 404
                    }
                    Ok(_) => {
                        panic!("a passive declare of another connection's exclusive queue passed")
                    }
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let (_s, _c, ch) = start_channel().await;
    ch.queue_declare(
        "ad".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap();
    let c1 = consume(&ch, "ad", true).await;
    let c2 = consume(&ch, "ad", true).await;
    ch.basic_cancel(c1.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    passive(&ch, "ad").await.expect("one consumer left");
    ch.basic_cancel(c2.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let e = passive(&ch, "ad").await.unwrap_err();
    assert_eq!(soft_code(&e).0, 404);
}

#[tokio::test]
async fn purge_and_delete_return_counts_and_check_conditions() {
    let (_s, c, ch) = start_channel().await;
    queue(&ch, "pd", false).await;
    for _ in 0..3 {
        publish(&ch, "", "pd", b"x").await;
    }
    let n = ch
        .queue_purge("pd".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 3);
    publish(&ch, "", "pd", b"x").await;
    let e = ch
        .queue_delete(
            "pd".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - queue 'pd' in vhost '/' not empty".into()
        )
    );
    let ch = c.create_channel().await.unwrap();
    let _cons = consume(&ch, "pd", false).await;
    let ch2 = c.create_channel().await.unwrap();
    let e = ch2
        .queue_delete(
            "pd".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - queue 'pd' in vhost '/' in use".into()
        )
    );
    let ch3 = c.create_channel().await.unwrap();
    queue(&ch3, "pd2", false).await;
    for _ in 0..2 {
        publish(&ch3, "", "pd2", b"x").await;
    }
    assert_eq!(
        ch3.queue_delete("pd2".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        2
    );
    // Deleting a missing queue is not an error (RabbitMQ 3.x).
    assert_eq!(
        ch3.queue_delete("pd2".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn exchange_delete_if_unused() {
    let (_s, c, ch) = start_channel().await;
    ch.exchange_declare(
        "exu".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        t(),
    )
    .await
    .unwrap();
    queue(&ch, "exu-q", false).await;
    bind(&ch, "exu-q", "exu", "k", t()).await;
    let e = ch
        .exchange_delete(
            "exu".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - exchange 'exu' in vhost '/' in use".into()
        )
    );
    let ch = c.create_channel().await.unwrap();
    ch.exchange_delete("exu".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let e = passive_exchange(&ch, "exu").await.unwrap_err();
    assert_eq!(
        soft_code(&e),
        (404, "NOT_FOUND - no exchange 'exu' in vhost '/'".into())
    );
}

#[tokio::test]
async fn consumer_tags_generated_duplicate_and_exclusive() {
    let (s, _c, ch) = start_channel().await;
    queue(&ch, "tags", false).await;
    let a = consume(&ch, "tags", true).await;
    assert!(a.tag().as_str().starts_with("amq.ctag-"), "{}", a.tag());
    let e = ch
        .basic_consume(
            "tags".into(),
            "mine".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            t(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            403,
            "ACCESS_REFUSED - queue 'tags' in vhost '/' in exclusive use".into()
        )
    );
    let c2 = connect(&s).await;
    let ch = c2.create_channel().await.unwrap();
    ch.basic_consume(
        "tags".into(),
        "dup".into(),
        BasicConsumeOptions::default(),
        t(),
    )
    .await
    .unwrap();
    let e = ch
        .basic_consume(
            "tags".into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("530") || msg.contains("NOT_ALLOWED"), "{msg}");
    assert!(!c2.status().connected(), "530 closes the connection");
}

#[tokio::test]
async fn consumer_is_cancelled_when_its_queue_is_deleted() {
    let (_s, c, ch) = start_channel().await;
    queue(&ch, "gone", false).await;
    let mut cons = consume(&ch, "gone", false).await;
    let ch2 = c.create_channel().await.unwrap();
    ch2.queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // lapin ends the consumer stream on basic.cancel from the server.
    let end = within(cons.next()).await;
    assert!(end.is_none(), "stream ends after the server's basic.cancel");
}

#[tokio::test]
async fn basic_get_empty_and_message_count() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "get", false).await;
    assert!(ch
        .basic_get("get".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    for i in 0..3u8 {
        publish(&ch, "", "get", &[i]).await;
    }
    let m = ch
        .basic_get("get".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_count, 2);
    assert_eq!(m.delivery.data, [0]);
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let m = ch
        .basic_get("get".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, [0], "requeued at the head");
    assert!(m.delivery.redelivered);
    let e = ch
        .basic_get("nope".into(), BasicGetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e).0, 404);
}

#[tokio::test]
async fn recover_requeues_unacked() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "rec", false).await;
    publish(&ch, "", "rec", b"r").await;
    let mut cons = consume(&ch, "rec", false).await;
    let d = next(&mut cons).await;
    assert!(!d.redelivered);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let d = next(&mut cons).await;
    assert!(d.redelivered);
    assert_eq!(d.data, b"r");
}

#[tokio::test]
async fn properties_and_headers_arrive_unchanged() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "props", false).await;
    let mut inner = FieldTable::default();
    inner.insert("deep".into(), AMQPValue::LongLongInt(-5));
    let mut h = FieldTable::default();
    h.insert("s".into(), AMQPValue::LongString("text".into()));
    h.insert("i".into(), AMQPValue::LongInt(42));
    h.insert("b".into(), AMQPValue::Boolean(true));
    h.insert("f".into(), AMQPValue::Double(1.5));
    h.insert("t".into(), AMQPValue::FieldTable(inner));
    h.insert(
        "a".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("x".into()),
        ])),
    );
    h.insert("v".into(), AMQPValue::Void);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(h)
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("mid".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into());
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ch.basic_publish(
        "".into(),
        "props".into(),
        BasicPublishOptions::default(),
        &body,
        props.clone(),
    )
    .await
    .unwrap();
    let mut cons = consume(&ch, "props", true).await;
    let d = next(&mut cons).await;
    assert_eq!(d.properties, props);
    assert_eq!(
        d.data.len(),
        body.len(),
        "a body larger than frame_max arrives whole"
    );
    assert_eq!(d.data, body);
}

#[tokio::test]
async fn user_id_must_match_the_login() {
    let (_s, _c, ch) = start_channel().await;
    queue(&ch, "uid", false).await;
    let err = async_error(
        &ch,
        ch.basic_publish(
            "".into(),
            "uid".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_user_id("mallory".into()),
        ),
    )
    .await;
    assert_eq!(
        err,
        (406, "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'".into())
    );
}

#[tokio::test]
async fn unknown_vhost_and_bad_password_are_refused() {
    let s = start().await;
    let url = format!("amqp://guest:guest@{}/nowhere", s.amqp_addr());
    let e = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_err();
    let msg = format!("{e}");
    assert!(
        msg.contains("530") || msg.contains("NOT_ALLOWED") || msg.contains("vhost"),
        "{msg}"
    );
    let url = format!("amqp://guest:wrong@{}/%2f", s.amqp_addr());
    let e = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_err();
    let msg = format!("{e}");
    assert!(
        msg.contains("403") || msg.contains("ACCESS_REFUSED"),
        "{msg}"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_320() {
    let s = start().await;
    let c = connect(&s).await;
    let _ch = c.create_channel().await.unwrap();
    within(s.shutdown()).await;
    until_closed(&c).await;
}

#[tokio::test]
async fn flow_control_pauses_publishers_of_a_backlogged_consumed_queue() {
    use std::time::Duration;
    let (s, c, ch) = start_channel().await;
    queue(&ch, "flow", false).await;
    // A consumer that takes one message and never acks: nothing drains.
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let cons = consume(&ch, "flow", false).await;
    let publisher = connect(&s).await;
    let pch = publisher.create_channel().await.unwrap();
    let total = 150_000u32;
    let task = tokio::spawn(async move {
        for i in 0..total {
            publish(&pch, "", "flow", &i.to_be_bytes()).await;
        }
        pch
    });
    let count = |ch: Channel| async move { passive(&ch, "flow").await.unwrap().message_count() };
    let watcher = c.create_channel().await.unwrap();
    // The backlog passes the high mark, then stops growing while paused.
    within(async {
        while count(watcher.clone()).await <= 20_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Paused until the queue drains (woken then, not polling): over two
    // seconds the backlog grows far slower than the publisher can send.
    let before = count(watcher.clone()).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = count(watcher.clone()).await;
    assert!(
        after - before < 20_000,
        "the publisher was not paused: {before} then {after} queued"
    );
    assert!(
        !task.is_finished(),
        "all publishes went through while paused"
    );
    // Without consumers the queue takes the backlog: publishing resumes.
    ch.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    // The rest of the 150,000 publishes one by one: slow in a debug
    // build on a loaded machine, so a deadline well past `within`'s.
    let long = Duration::from_secs(120);
    tokio::time::timeout(long, task)
        .await
        .expect("publishing resumed")
        .unwrap();
    tokio::time::timeout(long, async {
        while count(watcher.clone()).await < total - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the backlog arrived");
}

#[tokio::test]
async fn a_connection_consuming_what_it_publishes_is_never_stalled_by_flow_control() {
    let (_s, c, ch) = start_channel().await;
    queue(&ch, "self-flow", false).await;
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&ch, "self-flow", false).await;
    let pch = c.create_channel().await.unwrap();
    let total = 30_000u32;
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            publish(&pch, "", "self-flow", &i.to_be_bytes()).await;
        }
    });
    let got = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut n = 0;
        while n < total {
            let d = cons.next().await.unwrap().unwrap();
            d.ack(BasicAckOptions::default()).await.unwrap();
            n += 1;
        }
        n
    })
    .await
    .expect("the connection's own acks must drain the queue");
    assert_eq!(got, total);
    publisher.await.unwrap();
}

/// Two connections, each consuming one queue and publishing to the
/// other's, both backlogged past the flow mark: neither may pause for
/// good waiting on the other's acks (pauses are no longer capped by a
/// timer, so only the rule that a connection draining a blocked queue
/// keeps reading lets this finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_publishing_to_each_others_consumed_queues_do_not_deadlock() {
    let s = start().await;
    let total = 45_000u32;
    let side = |mine: &'static str, theirs: &'static str| {
        let url = url(&s);
        async move {
            let c = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = c.create_channel().await.unwrap();
            queue(&ch, mine, false).await;
            queue(&ch, theirs, false).await;
            ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
            let mut cons = consume(&ch, mine, false).await;
            let pch = c.create_channel().await.unwrap();
            let publisher = tokio::spawn(async move {
                for i in 0..total {
                    pch.basic_publish(
                        "".into(),
                        theirs.into(),
                        BasicPublishOptions::default(),
                        &i.to_be_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
                }
            });
            let mut n = 0;
            while n < total {
                let d = cons.next().await.unwrap().unwrap();
                d.ack(BasicAckOptions::default()).await.unwrap();
                n += 1;
            }
            publisher.await.unwrap();
            c.close(200, "done".into()).await.unwrap();
            n
        }
    };
    let (a, b) = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        futures_lite::future::zip(
            tokio::spawn(side("cross-a", "cross-b")),
            tokio::spawn(side("cross-b", "cross-a")),
        ),
    )
    .await
    .expect("the two connections stalled each other");
    assert_eq!((a.unwrap(), b.unwrap()), (total, total));
    s.shutdown().await;
}

/// A durable queue nobody consumes, past its memory budget with transient
/// bodies, pages them out to the transient area instead of holding its
/// publishers back (the pause is only a backstop now): every publish goes
/// through, a consumer gets them all in order, and the area empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_queue_past_its_memory_budget_pages_transient_bodies() {
    let s = start_with(|c| c.storage.queue_memory_mb = 1).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "mem-flow", true).await;
    let publisher = connect(&s).await;
    let pch = publisher.create_channel().await.unwrap();
    // 4,000 bodies of 10 KiB: 40 MiB against a 1 MiB budget, past the
    // backstop (2 x 1 MiB + 16 MiB) had they stayed in memory.
    let total = 4_000u32;
    let body = |i: u32| {
        let mut b = vec![7u8; 10 * 1024];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b
    };
    let task = tokio::spawn(async move {
        for i in 0..total {
            pch.basic_publish(
                "".into(),
                "mem-flow".into(),
                BasicPublishOptions::default(),
                &body(i),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
        pch
    });
    let count =
        |ch: Channel| async move { passive(&ch, "mem-flow").await.unwrap().message_count() };
    wait_until(
        "every publish to be queued",
        std::time::Duration::from_secs(60),
        || {
            let ch = ch.clone();
            async move { count(ch).await == total }
        },
    )
    .await;
    within(task).await.unwrap();
    let area = s.data_dir().join("transient");
    let area_bytes = move || {
        std::fs::read_dir(&area)
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().unwrap().len())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    assert!(
        area_bytes() > 20 << 20,
        "bodies paged out: {}",
        area_bytes()
    );
    let mut cons = consume(&ch, "mem-flow", true).await;
    within(async {
        for i in 0..total {
            let d = cons.next().await.unwrap().unwrap();
            assert_eq!(d.data, body(i), "message {i} in order, intact");
        }
    })
    .await;
    wait_until(
        "the paged bodies to go",
        std::time::Duration::from_secs(10),
        || {
            let b = area_bytes();
            async move { b == 0 }
        },
    )
    .await;
    s.shutdown().await;
}

/// A connection publishing past a queue's budget (paged out now, once
/// paused) still gets its own basic.gets behind the publishes answered,
/// and drains the queue (nobody else will).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_paused_on_an_unconsumed_queue_can_drain_it_itself() {
    let s = start_with(|c| c.storage.queue_memory_mb = 1).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "mem-self", true).await;
    // 120 bodies of 10 KiB: past the 1 MiB budget, then gets on the
    // same connection, queued behind them.
    let total = 120u32;
    let body = vec![7u8; 10 * 1024];
    for _ in 0..total {
        publish(&ch, "", "mem-self", &body).await;
    }
    let mut got = 0;
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while got < total {
            if ch
                .basic_get("mem-self".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .is_some()
            {
                got += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the paused connection drained only {got} of its queue"));
    assert_eq!(got, total);
    s.shutdown().await;
}
