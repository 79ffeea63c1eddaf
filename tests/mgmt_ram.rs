//! The queue JSON's persistence and memory counts as RabbitMQ 3.10 reports
//! them for classic queues: `messages_persistent`, `messages_ram`,
//! `messages_ready_ram`, `messages_unacknowledged_ram`, `message_bytes_ram`,
//! the matching `rabbitmq_queue_*` metrics, and their absence on streams.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use serde_json::Value as J;
use std::time::Duration;

/// `messages_persistent`, `messages_ram`, `messages_ready_ram`,
/// `messages_unacknowledged_ram`, `message_bytes_ram` of a queue.
fn ram_figures(j: &J) -> [u64; 5] {
    [
        "messages_persistent",
        "messages_ram",
        "messages_ready_ram",
        "messages_unacknowledged_ram",
        "message_bytes_ram",
    ]
    .map(|k| j[k].as_u64().unwrap_or_else(|| panic!("{k} in {j}")))
}

async fn queue_json(s: &TestBroker, name: &str) -> J {
    get_ok(s, &format!("/api/queues/%2F/{name}")).await
}

/// Waits until the queue's figures are `want`; fails with the last JSON.
async fn wait_figures(s: &TestBroker, name: &str, want: [u64; 5]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let j = queue_json(s, name).await;
        if ram_figures(&j) == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: want {want:?}, have {:?}: {j}",
            ram_figures(&j)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn persistent_messages_count_only_in_a_durable_queue() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "kept", true).await;
    queue(&ch, "fleeting", false).await;
    for q in ["kept", "fleeting"] {
        for _ in 0..3 {
            publish_props(&ch, "", q, &[1u8; 100], persistent()).await;
        }
        for _ in 0..2 {
            publish(&ch, "", q, &[2u8; 10]).await;
        }
    }
    // All in memory (default budget); persistence counts only when durable.
    wait_figures(&s, "kept", [3, 5, 5, 0, 320]).await;
    wait_figures(&s, "fleeting", [0, 5, 5, 0, 320]).await;
    let j = queue_json(&s, "kept").await;
    assert_eq!(j["message_bytes_persistent"], 300, "{j}");

    // Two taken unacked: they move to the unacked share, still persistent.
    for _ in 0..2 {
        ch.basic_get("kept".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
    }
    wait_figures(&s, "kept", [3, 5, 3, 2, 320]).await;
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    wait_figures(&s, "kept", [3, 5, 5, 0, 320]).await;
    ch.queue_purge("kept".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    wait_figures(&s, "kept", [0, 0, 0, 0, 0]).await;

    // The aggregated metrics sum every queue: only "fleeting" holds any.
    let (status, text) = metrics(&s, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "rabbitmq_queue_messages_persistent"), 0.0);
    assert_eq!(sample(&text, "rabbitmq_queue_messages_ram"), 5.0);
    assert_eq!(sample(&text, "rabbitmq_queue_messages_ready_ram"), 5.0);
    assert_eq!(sample(&text, "rabbitmq_queue_messages_unacked_ram"), 0.0);
    assert_eq!(sample(&text, "rabbitmq_queue_messages_ram_bytes"), 320.0);
    c.close(200, "bye".into()).await.unwrap();
}

/// 1 MiB budget, bodies of 300,000 bytes: three persistent bodies fit in
/// memory, the rest stay on disk only; the unacked records keep bodies
/// within their own 1 MiB budget the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_kept_on_disk_only_are_not_in_ram() {
    const BIG: u64 = 300_000;
    let s = start_with(|c| c.storage.queue_memory_mb = 1).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&ch, "big", true).await;
    for _ in 0..6 {
        publish_confirmed(&ch, "", "big", &[3u8; BIG as usize], persistent()).await;
    }
    for _ in 0..2 {
        publish_confirmed(&ch, "", "big", &[4u8; 10], BasicProperties::default()).await;
    }
    let j = queue_json(&s, "big").await;
    assert_eq!(j["messages"], 8, "{j}");
    // 3 persistent + 2 transient bodies in memory, 3 on disk only.
    wait_figures(&s, "big", [6, 5, 5, 0, 3 * BIG + 20]).await;
    assert_eq!(j["message_bytes"], 6 * BIG + 20, "{j}");
    assert_eq!(j["message_bytes_persistent"], 6 * BIG, "{j}");

    // A consumer takes all 8 without acking: the bodies read back for
    // delivery are held by the unacked records only within the budget.
    let cch = c.create_channel().await.unwrap();
    cch.basic_qos(8, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&cch, "big", false).await;
    let mut tags = Vec::new();
    for _ in 0..8 {
        tags.push(next(&mut consumer).await.delivery_tag);
    }
    wait_figures(&s, "big", [6, 5, 0, 5, 3 * BIG + 20]).await;
    let j = queue_json(&s, "big").await;
    assert_eq!(j["messages_unacknowledged"], 8, "{j}");
    assert!(j["messages_ram"].as_u64() < j["messages"].as_u64(), "{j}");

    // Per-queue metrics say the same.
    let (_, text) = metrics(&s, "/metrics/per-object").await;
    let big = |name: &str| labelled(&text, name, "queue=\"big\"");
    assert_eq!(big("rabbitmq_queue_messages_persistent"), 6.0);
    assert_eq!(big("rabbitmq_queue_messages_ram"), 5.0);
    assert_eq!(big("rabbitmq_queue_messages_unacked_ram"), 5.0);
    assert_eq!(big("rabbitmq_queue_messages_ready_ram"), 0.0);
    assert_eq!(
        big("rabbitmq_queue_messages_ram_bytes"),
        (3 * BIG + 20) as f64
    );

    let (_, text) = metrics(&s, "/metrics/detailed?family=queue_metrics").await;
    let big = |name: &str| labelled(&text, name, "queue=\"big\"");
    assert_eq!(big("rabbitmq_detailed_queue_messages_persistent"), 6.0);
    assert_eq!(big("rabbitmq_detailed_queue_messages_ram"), 5.0);
    assert_eq!(big("rabbitmq_detailed_queue_messages_ready_ram"), 0.0);
    assert_eq!(big("rabbitmq_detailed_queue_messages_unacked_ram"), 5.0);
    assert_eq!(
        big("rabbitmq_detailed_queue_messages_ram_bytes"),
        (3 * BIG + 20) as f64
    );

    for tag in tags {
        cch.basic_ack(tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    wait_figures(&s, "big", [0, 0, 0, 0, 0]).await;
    c.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn priority_queues_sum_their_levels() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let a = args(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]);
    declare_durable(&ch, "prio-durable", a.clone()).await;
    declare(&ch, "prio-memory", a).await;
    for q in ["prio-durable", "prio-memory"] {
        for p in 0..4u8 {
            publish_props(&ch, "", q, &[5u8; 50], persistent().with_priority(p)).await;
        }
        publish_props(
            &ch,
            "",
            q,
            &[6u8; 7],
            BasicProperties::default().with_priority(5),
        )
        .await;
    }
    wait_figures(&s, "prio-durable", [4, 5, 5, 0, 207]).await;
    wait_figures(&s, "prio-memory", [0, 5, 5, 0, 207]).await;
    // The highest priority (the transient one) leaves first.
    let got = ch
        .basic_get("prio-durable".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data.len(), 7);
    wait_figures(&s, "prio-durable", [4, 5, 4, 1, 207]).await;
    let got = ch
        .basic_get("prio-durable".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    wait_figures(&s, "prio-durable", [4, 5, 3, 2, 207]).await;
    ch.basic_ack(
        got.delivery.delivery_tag,
        BasicAckOptions { multiple: true },
    )
    .await
    .unwrap();
    wait_figures(&s, "prio-durable", [3, 3, 3, 0, 150]).await;
    c.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn streams_report_no_classic_memory_counts() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let a = args(&[("x-queue-type", longstr("stream"))]);
    declare_durable(&ch, "log", a).await;
    publish_props(&ch, "", "log", b"entry", persistent()).await;
    passive(&ch, "log").await.unwrap();
    let j = queue_json(&s, "log").await;
    assert_eq!(j["type"], "stream", "{j}");
    for k in [
        "messages_persistent",
        "messages_ram",
        "messages_ready_ram",
        "messages_unacknowledged_ram",
        "message_bytes_ram",
    ] {
        assert!(j.get(k).is_none(), "{k} in {j}");
    }
    // A classic queue beside it has them.
    queue(&ch, "beside", true).await;
    let j = queue_json(&s, "beside").await;
    assert_eq!(ram_figures(&j), [0; 5]);
    c.close(200, "bye".into()).await.unwrap();
}

async fn metrics(s: &TestBroker, path: &str) -> (u16, String) {
    raw_at(s.prometheus_addr(), "GET", path, None, "").await
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The value of the sample of `name` whose labels contain `label`.
fn labelled(text: &str, name: &str, label: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .unwrap_or_else(|| panic!("{name} with {label} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
