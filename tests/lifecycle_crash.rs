//! kill -9 tests of the queue lifecycle on durable queues: message
//! deadlines survive a crash (expiry goes on from the stored deadline),
//! and a message dead-lettered from one durable queue to another is never
//! lost to a crash (it may, at worst, be in both).

mod common;
use common::child::{channel, start_broker, tail};
use common::{args, declare_durable as declare, longstr, temp_dir};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::collections::BTreeSet;
use std::time::Duration;

async fn count(ch: &Channel, q: &str) -> u32 {
    let opts = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.into(), opts, FieldTable::default())
        .await
        .expect("passive declare")
        .message_count()
}

async fn publish_confirmed(ch: &Channel, q: &str, body: &[u8], props: BasicProperties) {
    let c = ch
        .basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(c.is_ack(), "{c:?}");
}

/// Returns once everything written so far is on disk: the confirm of a
/// persistent publish to the durable queue `probe` comes after the group
/// commit that covers it and every write queued before it (a rejected
/// message's dead letter, say). A passive declare's count shows a dead
/// letter as soon as it is routed, before it is durable.
async fn flushed(conn: &Connection) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let props = BasicProperties::default().with_delivery_mode(2);
    publish_confirmed(&ch, "probe", b"probe", props).await;
}

/// Every body in `q`, taken with basic.get (no-ack).
async fn drain(ch: &Channel, q: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        out.push(m.delivery.data.clone());
    }
    out
}

/// Deadlines are stored with durable messages: after a kill -9 and a
/// restart, messages expire when they were due (not a full TTL after the
/// restart), and a per-message `expiration` (which nothing at start-up
/// re-reads) still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_survive_kill9() {
    let dir = temp_dir("ttl-crash");
    let data = dir.path().join("data");
    let mut b = start_broker(dir.path(), &data, 0).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, "dlq", FieldTable::default()).await;
    let dl = [
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr("dlq")),
    ];
    let mut with_ttl = dl.to_vec();
    with_ttl.push(("x-message-ttl", AMQPValue::LongInt(3_000)));
    declare(&ch, "by-queue", args(&with_ttl)).await;
    declare(&ch, "by-message", args(&dl)).await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for i in 0..20 {
        let body = format!("q{i}");
        publish_confirmed(&ch, "by-queue", body.as_bytes(), persistent.clone()).await;
        let body = format!("m{i}");
        let p = persistent.clone().with_expiration("3000".into());
        publish_confirmed(&ch, "by-message", body.as_bytes(), p).await;
    }
    let published = std::time::Instant::now();
    drop(conn);
    b.kill9();
    let b = start_broker(dir.path(), &data, 1).await;
    let (_conn, ch) = channel(&b).await;
    assert_eq!(count(&ch, "by-queue").await, 20, "nothing expired early");
    assert_eq!(count(&ch, "by-message").await, 20);
    common::wait_until("both queues to expire", Duration::from_secs(20), || async {
        count(&ch, "by-queue").await == 0 && count(&ch, "by-message").await == 0
    })
    .await;
    assert!(
        published.elapsed() < Duration::from_secs(3 + 15),
        "expired from the stored deadlines"
    );
    common::wait_until("the dead letters", Duration::from_secs(10), || async {
        count(&ch, "dlq").await == 40
    })
    .await;
    let got: BTreeSet<String> = drain(&ch, "dlq")
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).expect("utf-8"))
        .collect();
    assert_eq!(got.len(), 40);
}

/// Rejected messages dead-letter from one durable queue to another while
/// the broker is killed at a moment in the middle: every message is in
/// the source or the target afterwards (possibly both), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_between_durable_queues_survives_kill9() {
    const N: usize = 3_000;
    let dir = temp_dir("dlx-crash");
    let data = dir.path().join("data");
    let mut b = start_broker(dir.path(), &data, 0).await;
    let (conn, ch) = channel(&b).await;
    declare(&ch, "dst", FieldTable::default()).await;
    let dl = [
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr("dst")),
    ];
    declare(&ch, "src", args(&dl)).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for i in 0..N {
        let c = ch
            .basic_publish(
                "".into(),
                "src".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                persistent.clone(),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
    // Reject everything (requeue=false) from a consumer; kill the broker
    // once about a third has been dead-lettered.
    let rch = conn.create_channel().await.expect("channel");
    rch.basic_qos(200, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut cons = rch
        .basic_consume(
            "src".into(),
            "rejecter".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    use futures_lite::StreamExt;
    let mut rejected = 0;
    while rejected < N / 3 {
        let d = tokio::time::timeout(Duration::from_secs(10), cons.next())
            .await
            .expect("a delivery")
            .expect("stream open")
            .expect("delivery");
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        rejected += 1;
    }
    b.kill9();
    drop(conn);
    let b = start_broker(dir.path(), &data, 1).await;
    let (_conn, ch) = channel(&b).await;
    let mut seen = BTreeSet::new();
    for q in ["src", "dst"] {
        for body in drain(&ch, q).await {
            seen.insert(String::from_utf8(body).expect("utf-8"));
        }
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("m{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages lost, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        tail(&b.log, 30)
    );
}

/// Rejects the one message in `q` (basic.get, then reject without
/// requeue), checking the BCC header is not delivered.
async fn reject_one(ch: &Channel, q: &str, body: &[u8]) {
    let m = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("a message in {q}"));
    assert_eq!(m.delivery.data, body);
    let h = m.delivery.properties.headers().clone().unwrap_or_default();
    assert!(!h.inner().contains_key("BCC"), "BCC is never delivered");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
}

/// BCC keys are stored with a durable queue's persistent message and with
/// its dead letter: after a kill -9 the message, rejected, is
/// dead-lettered by its BCC key (no dead-letter routing key); and after
/// another kill -9 the dead letter, rejected again, is routed by the same
/// BCC key from the next dead-letter exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcc_keys_route_dead_letters_after_kill9() {
    let dir = temp_dir("bcc-crash");
    let data = dir.path().join("data");
    let mut b = start_broker(dir.path(), &data, 0).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for x in ["dlx1", "dlx2"] {
        ch.exchange_declare(
            x.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    }
    declare(
        &ch,
        "src",
        args(&[("x-dead-letter-exchange", longstr("dlx1"))]),
    )
    .await;
    declare(
        &ch,
        "mid",
        args(&[("x-dead-letter-exchange", longstr("dlx2"))]),
    )
    .await;
    declare(&ch, "dst", FieldTable::default()).await;
    declare(&ch, "probe", FieldTable::default()).await;
    for (q, x) in [("mid", "dlx1"), ("dst", "dlx2")] {
        ch.queue_bind(
            q.into(),
            x.into(),
            "by-bcc".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    let mut headers = FieldTable::default();
    headers.insert(
        "BCC".into(),
        AMQPValue::FieldArray(vec![longstr("by-bcc")].into()),
    );
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    publish_confirmed(&ch, "src", b"m", props).await;
    drop(conn);
    b.kill9();
    let mut b = start_broker(dir.path(), &data, 1).await;
    let (conn, ch) = channel(&b).await;
    reject_one(&ch, "src", b"m").await;
    common::wait_until(
        "the dead letter in mid",
        Duration::from_secs(10),
        || async { count(&ch, "src").await == 0 && count(&ch, "mid").await == 1 },
    )
    .await;
    flushed(&conn).await;
    drop(conn);
    b.kill9();
    let b = start_broker(dir.path(), &data, 2).await;
    let (_conn, ch) = channel(&b).await;
    reject_one(&ch, "mid", b"m").await;
    common::wait_until(
        "the dead letter in dst",
        Duration::from_secs(10),
        || async { count(&ch, "mid").await == 0 && count(&ch, "dst").await == 1 },
    )
    .await;
    let m = ch
        .basic_get("dst".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the dead letter");
    let h = m.delivery.properties.headers().clone().expect("headers");
    assert!(!h.inner().contains_key("BCC"));
    match h.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => assert_eq!(a.as_slice().len(), 2, "{a:?}"),
        other => panic!("x-death: {other:?}; log:\n{}", tail(&b.log, 30)),
    }
}
