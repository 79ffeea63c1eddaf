//! Consumer groups on streams (Warren's `x-stream-group` consumer
//! argument) with lapin: one member of a group reads at a time, the next
//! takes over from the group's committed offset when it goes, a member
//! without `x-stream-offset` resumes after the committed offset, and the
//! committed offset survives a kill -9; the lag is in the management API
//! and Prometheus.

mod common;
use common::child::start_broker;
use common::stream::confirming;
use common::stream::{next, publish_n as publish, quiet};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use std::time::Duration;

async fn declare(ch: &Channel, q: &str) {
    let mut a = FieldTable::default();
    a.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let o = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.into(), o, a).await.expect("declare");
}

/// A group member on its own channel (prefetch 100).
async fn member(
    conn: &Connection,
    q: &str,
    group: &str,
    offset: Option<&str>,
) -> (Channel, Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut a = FieldTable::default();
    a.insert("x-stream-group".into(), AMQPValue::LongString(group.into()));
    if let Some(o) = offset {
        a.insert("x-stream-offset".into(), AMQPValue::LongString(o.into()));
    }
    let c = ch
        .basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), a)
        .await
        .expect("consume");
    (ch, c)
}

#[tokio::test]
async fn one_member_reads_and_the_next_takes_over_from_the_committed_offset() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "g").await;
    publish(&pubch, "g", 0, 10).await;

    let (ach, mut a) = member(&conn, "g", "billing", Some("first")).await;
    let (_bch, mut b) = member(&conn, "g", "billing", None).await;
    let mut tags = Vec::new();
    for i in 0..10 {
        let (off, _, tag) = next(&mut a).await;
        assert_eq!(off, i);
        tags.push(tag);
    }
    quiet(&mut b).await;
    // Acks of 0..=4 and of 6 (out of order): the group committed 5.
    ach.basic_ack(tags[4], BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ach.basic_ack(tags[6], BasicAckOptions::default())
        .await
        .unwrap();
    common::eventually(|| async {
        let j = common::get_ok(&s, "/api/queues/%2f/g").await;
        j["stream"]["groups"][0]["committed_offset"] == 5
    })
    .await;
    let j = common::get_ok(&s, "/api/queues/%2f/g").await;
    let g = &j["stream"]["groups"][0];
    assert_eq!(
        (g["name"].as_str(), g["lag"].as_u64(), g["members"].as_u64()),
        (Some("billing"), Some(5), Some(2))
    );
    let (_, m) = common::raw_at(s.prometheus_addr(), "GET", "/metrics/per-object", None, "").await;
    assert!(
        m.contains("warren_stream_group_lag{vhost=\"/\",queue=\"g\",group=\"billing\"} 5"),
        "{m}"
    );

    // The reader goes: the other member takes over at 5 (the unacked
    // tail comes again: at-least-once), then gets new messages.
    ach.close(200, "bye".into()).await.unwrap();
    for i in 5..10 {
        assert_eq!(next(&mut b).await.0, i);
    }
    publish(&pubch, "g", 10, 2).await;
    assert_eq!(next(&mut b).await.0, 10);
    assert_eq!(next(&mut b).await.0, 11);
    // Another group is independent and starts at `next` by default.
    let (_cch, mut c) = member(&conn, "g", "audit", None).await;
    quiet(&mut c).await;
    publish(&pubch, "g", 12, 1).await;
    assert_eq!(next(&mut c).await.0, 12);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_its_committed_offset_after_kill9() {
    let dir = common::temp_dir("stream-group-crash");
    let data = dir.path().join("data");
    let mut broker = start_broker(dir.path(), &data, 0).await;
    let conn = Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let pubch = confirming(&conn).await;
    declare(&pubch, "orders").await;
    publish(&pubch, "orders", 0, 50).await;
    let (ch, mut c) = member(&conn, "orders", "shipping", Some("first")).await;
    let mut last = 0;
    for _ in 0..30 {
        let (_, _, tag) = next(&mut c).await;
        last = tag;
    }
    ch.basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    // The committed offset is written by the group commit that follows
    // the ack: wait until the file says 30, then crash.
    let file = || {
        std::fs::read_dir(data.join("streams"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("groups.json")).ok())
    };
    common::wait_until(
        "the group's offset on disk",
        Duration::from_secs(10),
        || async { file().is_some_and(|f| f.contains("\"shipping\":30")) },
    )
    .await;
    broker.kill9();
    drop(conn);
    let broker = start_broker(dir.path(), &data, 1).await;
    let conn = Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let (_ch, mut c) = member(&conn, "orders", "shipping", None).await;
    for i in 30..50 {
        assert_eq!(next(&mut c).await.0, i);
    }
    quiet(&mut c).await;
}

#[tokio::test]
async fn a_member_starting_by_timestamp_commits_past_the_older_chunks_it_passed_over() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "gts").await;
    // One chunk per message, all in one segment (one index entry: 0).
    for i in 0..10 {
        publish(&pubch, "gts", i, 1).await;
    }
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // The next whole second, once the broker's clock is surely past it.
    let secs = unix_ms() / 1000 + 1;
    common::wait_until("the next second", Duration::from_secs(3), || async {
        unix_ms() >= secs * 1000 + 100
    })
    .await;
    for i in 10..13 {
        publish(&pubch, "gts", i, 1).await;
    }
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut a = FieldTable::default();
    a.insert("x-stream-group".into(), AMQPValue::LongString("t".into()));
    a.insert("x-stream-offset".into(), AMQPValue::Timestamp(secs));
    let mut c = ch
        .basic_consume("gts".into(), "".into(), BasicConsumeOptions::default(), a)
        .await
        .expect("consume");
    let mut last = 0;
    for i in 10..13 {
        let (off, body, tag) = next(&mut c).await;
        assert_eq!((off, body), (i, format!("m{i}")));
        last = tag;
    }
    quiet(&mut c).await;
    ch.basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    // Offsets 0..10 were passed over, 10..13 acked: all committed (the
    // offset had stayed at the index entry, 0, before).
    common::eventually(|| async {
        let j = common::get_ok(&s, "/api/queues/%2f/gts").await;
        j["stream"]["groups"][0]["committed_offset"] == 13
    })
    .await;
    s.shutdown().await;
}
