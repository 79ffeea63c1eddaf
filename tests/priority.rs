//! Priority queues over lapin: a durable priority queue keeps its order
//! and its messages' priorities across kill -9 and restarts, and past its
//! memory budget its bodies stay on disk (unacked ones included) while
//! delivery and basic.get still go highest priority first.

mod common;
use common::child::{start_broker, tail, Broker};
use common::*;
use futures_lite::stream::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const MAX: u8 = 10;

fn prio_args(max: u8) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        ShortString::from("x-max-priority"),
        AMQPValue::ShortShortUInt(max),
    );
    t
}

/// The priority message `i` is published with: 0..=12 in a cycle (11 and
/// 12 are above the maximum and count as 10), every seventh without one.
fn priority_of(i: u32) -> Option<u8> {
    (i % 7 != 3).then_some((i % 13) as u8)
}

fn level(i: u32) -> u8 {
    priority_of(i).unwrap_or(0).min(MAX)
}

fn props(i: u32) -> BasicProperties {
    let p = BasicProperties::default().with_delivery_mode(2);
    match priority_of(i) {
        Some(x) => p.with_priority(x),
        None => p,
    }
}

/// The order RabbitMQ delivers `ids` (published in that order) in:
/// highest level first, publish order within a level.
fn expected(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<u32> = ids.into_iter().collect();
    v.sort_by_key(|&i| (std::cmp::Reverse(level(i)), i));
    v
}

fn id(body: &[u8]) -> u32 {
    u32::from_be_bytes(body[..4].try_into().expect("4 bytes"))
}

async fn publish_all(ch: &Channel, q: &str, ids: impl IntoIterator<Item = u32>) {
    let mut confirms = Vec::new();
    for i in ids {
        let c = ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                props(i),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
}

async fn get_all(ch: &Channel, q: &str) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(q.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
    {
        out.push((id(&m.delivery.data), m.delivery.redelivered));
    }
    out
}

/// Past a zero budget every persistent body is on disk only: gets and a
/// consumer still take them highest priority first (read ahead per
/// level), unacked ones hold only their place on disk, and when their
/// channel closes they come back at the head of their priorities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_budget_a_durable_priority_queue_delivers_in_order_from_disk() {
    let s = start_with(|c| c.storage.queue_memory_mb = 0).await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = uniq("prio-disk");
    ch.queue_declare(q.as_str().into(), durable_q(), prio_args(MAX))
        .await
        .unwrap();
    let total = 1_200u32;
    publish_all(&ch, &q, 0..total).await;
    // The management API, read by a real client's types.
    let info = api(&s).get_queue_info("/", &q).await.unwrap();
    assert_eq!(info.arguments.0["x-max-priority"], serde_json::json!(MAX));
    assert_eq!(info.message_count, total as u64);
    let want = expected(0..total);
    for &w in &want[..2] {
        let m = within(ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(id(&m.delivery.data), w);
    }
    let cch = conn.create_channel().await.unwrap();
    let mut cons = consume(&cch, &q, false).await;
    let mut got = Vec::new();
    for _ in 2..total {
        let d = within(cons.next()).await.unwrap().unwrap();
        got.push(id(&d.data));
    }
    assert_eq!(got, want[2..], "highest priority first, FIFO within");
    let queue = s.broker().vhost("/").unwrap().queue(&q).unwrap();
    let held = queue.contents();
    assert_eq!(held.unacked, (total - 2) as usize);
    assert_eq!(
        held.bytes.ram_unacked.count, 0,
        "with a zero budget no unacked record holds a body"
    );
    cch.close(200, "requeue".into()).await.unwrap();
    let again = get_all(&ch, &q).await;
    assert_eq!(again.len(), (total - 2) as usize);
    assert!(again.iter().all(|&(_, redelivered)| redelivered));
    let ids: Vec<u32> = again.iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, want[2..], "requeued to their places");
    conn.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

async fn channel(b: &Broker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", tail(&b.log, 30)));
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, ch)
}

/// kill -9 with messages at every level, two of them delivered and
/// unacked: after the restart every message is back, in priority order,
/// the unacked ones at the head of their priorities; messages published
/// after the restart go after the recovered ones of their level, and the
/// order holds across a second kill too (the confirms of the last
/// publishes come after the flush that holds the earlier gets' acks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_priority_queue_keeps_its_order_across_kill9() {
    let dir = temp_dir("prio-crash");
    let data = dir.path().join("data");
    let mut b = start_broker(dir.path(), &data, 0).await;
    let (conn, ch) = channel(&b).await;
    let q = "prio-crash";
    ch.queue_declare(q.into(), durable_q(), prio_args(MAX))
        .await
        .expect("declare");
    publish_all(&ch, q, 0..300).await;
    let want = expected(0..300);
    // Two deliveries left unacked when the broker dies.
    let mut held = Vec::new();
    for &w in &want[..2] {
        let m = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(id(&m.delivery.data), w);
        held.push(m);
    }
    b.kill9();
    drop((held, ch, conn));

    let b = start_broker(dir.path(), &data, 1).await;
    let (conn, ch) = channel(&b).await;
    publish_all(&ch, q, 300..400).await;
    let after = get_all(&ch, q).await;
    let ids: Vec<u32> = after.iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, expected(0..400), "recovered levels, then new ones");
    publish_all(&ch, q, 400..600).await;
    drop(b); // SIGKILL
    drop(conn);
    let b = start_broker(dir.path(), &data, 2).await;
    let (_conn, ch) = channel(&b).await;
    let ids: Vec<u32> = get_all(&ch, q).await.iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, expected(400..600));
}
