//! Who receives from a queue, over lapin: single active consumer (one
//! receives, the others wait in registration order, the next takes over
//! with the old one's unacked messages first), consumer priorities
//! (`x-priority`), both with exclusive consumers, RabbitMQ 3.10.8's 406 texts
//! for wrong argument types, and the management API's view (`active`,
//! `activity_status`, `single_active_consumer_tag`, `arguments`) read
//! through rabbitmq_http_client's types.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use std::time::Duration;

fn sac_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    a
}

fn priority(p: i32) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-priority".into(), AMQPValue::LongInt(p));
    a
}

/// A manual-ack consumer with `prefetch` on a new channel of `c`.
async fn consumer_on(
    c: &Connection,
    q: &str,
    tag: &str,
    prefetch: u16,
    args: FieldTable,
) -> (Channel, Consumer) {
    let ch = c.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let k = ch
        .basic_consume(q.into(), tag.into(), BasicConsumeOptions::default(), args)
        .await
        .unwrap();
    (ch, k)
}

fn body(d: &lapin::message::Delivery) -> String {
    String::from_utf8(d.data.clone()).unwrap()
}

/// Nothing arrives on `k` for a moment (a negative check: the positive
/// ones around it bound how long a delivery would take).
async fn quiet(k: &mut Consumer) {
    use futures_lite::StreamExt;
    let got = tokio::time::timeout(Duration::from_millis(300), k.next()).await;
    assert!(got.is_err(), "unexpected delivery: {got:?}");
}

/// (active, activity_status) of each consumer tag of `q`, from /api/consumers
/// (rabbitmq_http_client's type for `active` and `arguments`, the raw JSON
/// for `activity_status`, which that type does not carry).
async fn activity(s: &warren::server::Server, q: &str) -> Vec<(String, bool, String)> {
    let typed = api(s).list_consumers().await.unwrap();
    let raw = get_ok(s, "/api/consumers").await;
    let mut out: Vec<(String, bool, String)> = typed
        .iter()
        .filter(|c| c.queue.name == q)
        .map(|c| {
            let status = raw
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["consumer_tag"] == c.consumer_tag.as_str())
                .map(|j| j["activity_status"].as_str().unwrap().to_owned())
                .unwrap();
            (c.consumer_tag.clone(), c.active, status)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn single_active_consumer_hands_over_with_unacked_messages_first() {
    let (s, c, ch) = start_channel().await;
    ch.queue_declare("sac".into(), QueueDeclareOptions::default(), sac_args())
        .await
        .unwrap();
    let other = connect(&s).await;
    let (a_ch, mut a) = consumer_on(&c, "sac", "a", 2, t()).await;
    let (b_ch, mut b) = consumer_on(&other, "sac", "b", 2, t()).await;
    let (c_ch, mut cc) = consumer_on(&other, "sac", "c", 5, t()).await;
    for i in 1..=4 {
        publish(&ch, "", "sac", format!("m{i}").as_bytes()).await;
    }
    let first = [next(&mut a).await, next(&mut a).await];
    assert_eq!([body(&first[0]), body(&first[1])], ["m1", "m2"]);
    quiet(&mut b).await;
    let sa = |t: &str, active: bool, st: &str| (t.to_owned(), active, st.to_owned());
    wait_until("a to show active", Duration::from_secs(10), || async {
        activity(&s, "sac").await
            == vec![
                sa("a", true, "single_active"),
                sa("b", false, "waiting"),
                sa("c", false, "waiting"),
            ]
    })
    .await;
    let q = get_ok(&s, "/api/queues/%2F/sac").await;
    assert_eq!(q["single_active_consumer_tag"], "a");
    assert_eq!(q["consumer_details"].as_array().unwrap().len(), 3);

    // a's channel closes holding m1 and m2: b, next in registration
    // order, gets them first (redelivered), then the rest.
    a_ch.close(200, "bye".into()).await.unwrap();
    let got = [next(&mut b).await, next(&mut b).await];
    assert_eq!([body(&got[0]), body(&got[1])], ["m1", "m2"]);
    assert!(got.iter().all(|d| d.redelivered));
    for d in &got {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let rest = [next(&mut b).await, next(&mut b).await];
    assert_eq!([body(&rest[0]), body(&rest[1])], ["m3", "m4"]);
    quiet(&mut cc).await;

    // b cancels (its unacked messages stay with its channel): c takes over
    // for new messages.
    b_ch.basic_cancel("b".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "sac", b"m5").await;
    assert_eq!(body(&next(&mut cc).await), "m5");
    wait_until("c to show active", Duration::from_secs(10), || async {
        get_ok(&s, "/api/queues/%2F/sac").await["single_active_consumer_tag"] == "c"
    })
    .await;
    c_ch.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// A connection dropped without a goodbye hands over too, with its
/// unacked message first.
#[tokio::test]
async fn single_active_consumer_hands_over_when_the_connection_drops() {
    let (s, _c, ch) = start_channel().await;
    ch.queue_declare("sac".into(), QueueDeclareOptions::default(), sac_args())
        .await
        .unwrap();
    let doomed = connect(&s).await;
    let other = connect(&s).await;
    let (_a_ch, mut a) = consumer_on(&doomed, "sac", "a", 1, t()).await;
    let (_b_ch, mut b) = consumer_on(&other, "sac", "b", 1, t()).await;
    publish(&ch, "", "sac", b"m1").await;
    publish(&ch, "", "sac", b"m2").await;
    assert_eq!(body(&next(&mut a).await), "m1");
    quiet(&mut b).await;
    drop(a);
    doomed.close(320, "gone".into()).await.unwrap();
    let d = next(&mut b).await;
    assert_eq!((body(&d), d.redelivered), ("m1".to_owned(), true));
    d.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(body(&next(&mut b).await), "m2");
    s.shutdown().await;
}

/// Higher priorities receive while they have credit, lower ones only
/// when every higher one is blocked; the consumer list shows `arguments`.
#[tokio::test]
async fn consumer_priorities_fill_the_highest_first() {
    let (s, c, ch) = start_channel().await;
    queue(&ch, "p", false).await;
    let (_lo_ch, mut lo) = consumer_on(&c, "p", "lo", 10, priority(-1)).await;
    let (_hi_ch, mut hi) = consumer_on(&c, "p", "hi", 2, priority(10)).await;
    for i in 1..=5 {
        publish(&ch, "", "p", format!("m{i}").as_bytes()).await;
    }
    let h = [next(&mut hi).await, next(&mut hi).await];
    assert_eq!([body(&h[0]), body(&h[1])], ["m1", "m2"]);
    for want in ["m3", "m4", "m5"] {
        assert_eq!(body(&next(&mut lo).await), want);
    }
    // Credit freed at the top goes to the top.
    h[0].ack(BasicAckOptions::default()).await.unwrap();
    publish(&ch, "", "p", b"m6").await;
    assert_eq!(body(&next(&mut hi).await), "m6");
    quiet(&mut lo).await;
    wait_until(
        "the consumers to be listed",
        Duration::from_secs(10),
        || async { activity(&s, "p").await.len() == 2 },
    )
    .await;
    let listed = api(&s).list_consumers().await.unwrap();
    let hi_info = listed.iter().find(|k| k.consumer_tag == "hi").unwrap();
    assert_eq!(
        hi_info.arguments.0.get("x-priority"),
        Some(&serde_json::json!(10))
    );
    assert!(hi_info.active);
    assert_eq!(
        activity(&s, "p").await,
        vec![
            ("hi".to_owned(), true, "up".to_owned()),
            ("lo".to_owned(), true, "up".to_owned())
        ]
    );
    assert_eq!(
        get_ok(&s, "/api/queues/%2F/p").await["single_active_consumer_tag"],
        serde_json::Value::Null
    );
    s.shutdown().await;
}

/// With single active consumer, the highest priority is active; a
/// higher-priority newcomer takes over once the active one has settled
/// what it holds (RabbitMQ 3.12+ quorum queues' rule).
#[tokio::test]
async fn single_active_consumer_prefers_a_higher_priority() {
    let (s, c, ch) = start_channel().await;
    ch.queue_declare("sp".into(), QueueDeclareOptions::default(), sac_args())
        .await
        .unwrap();
    let (_a_ch, mut a) = consumer_on(&c, "sp", "a", 1, priority(1)).await;
    publish(&ch, "", "sp", b"m1").await;
    let held = next(&mut a).await;
    let (_b_ch, mut b) = consumer_on(&c, "sp", "b", 1, priority(5)).await;
    publish(&ch, "", "sp", b"m2").await;
    quiet(&mut b).await;
    quiet(&mut a).await;
    held.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(body(&next(&mut b).await), "m2");
    wait_until("b to show active", Duration::from_secs(10), || async {
        get_ok(&s, "/api/queues/%2F/sp").await["single_active_consumer_tag"] == "b"
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn wrong_argument_types_get_rabbitmqs_406_texts() {
    let (s, c, ch) = start_channel().await;
    let mut bad = FieldTable::default();
    bad.insert(
        "x-single-active-consumer".into(),
        AMQPValue::LongString("yes".into()),
    );
    let e = ch
        .queue_declare("bad".into(), QueueDeclareOptions::default(), bad)
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue 'bad' in vhost '/': {unacceptable_type,longstr}".to_owned()
        )
    );
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "p", false).await;
    let mut bad = FieldTable::default();
    bad.insert("x-priority".into(), AMQPValue::LongString("high".into()));
    let e = ch
        .basic_consume("p".into(), "".into(), BasicConsumeOptions::default(), bad)
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'p' in vhost '/': \"expected integer, got longstr\"".to_owned()
        )
    );
    s.shutdown().await;
}

/// An exclusive consumer with a priority keeps its queue to itself as
/// before; a single-active-consumer queue refuses exclusive consumers, even
/// with no consumer yet (403, as RabbitMQ 3.10.8).
#[tokio::test]
async fn exclusive_consumers_with_priorities_and_sac() {
    let (s, c, ch) = start_channel().await;
    queue(&ch, "px", false).await;
    let excl = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let mut k = ch
        .basic_consume("px".into(), "x".into(), excl, priority(3))
        .await
        .unwrap();
    publish(&ch, "", "px", b"m1").await;
    assert_eq!(body(&next(&mut k).await), "m1");
    let in_use = |q: &str| {
        (
            403,
            format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
        )
    };
    let other = c.create_channel().await.unwrap();
    let e = other
        .basic_consume(
            "px".into(),
            "".into(),
            BasicConsumeOptions::default(),
            priority(9),
        )
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e), in_use("px"));
    let other = c.create_channel().await.unwrap();
    other
        .queue_declare("sx".into(), QueueDeclareOptions::default(), sac_args())
        .await
        .unwrap();
    let e = other
        .basic_consume("sx".into(), "".into(), excl, t())
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e), in_use("sx"));
    s.shutdown().await;
}
