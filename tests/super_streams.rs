//! Super streams (partitioned streams) with lapin and the management API:
//! the layout `PUT /api/super-streams/{vhost}/{name}` creates (RabbitMQ's
//! `add_super_stream`: exchange arguments, queue names, bindings) and
//! DELETE removes, routing by key and by hash (`x-super-stream-routing`),
//! a consumer group (`x-stream-group` + `x-super-stream`) spreading the
//! partitions over its members and rebalancing as they come and go with
//! no message lost, the lag per group and partition in the API and
//! Prometheus, and per-partition committed offsets across a kill -9.

mod common;
use common::child::start_broker;
use common::stream::confirming;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::Value as J;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use warren::server::Server;

async fn api(s: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    common::raw(s, method, path, Some(common::GUEST), body).await
}

/// Publishes `(routing key, body)` pairs to exchange `ex`, all confirmed.
async fn publish(ch: &Channel, ex: &str, msgs: &[(String, String)]) {
    let mut confirms = Vec::new();
    for (key, body) in msgs {
        let c = ch
            .basic_publish(
                ex.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        assert!(common::within(c).await.unwrap().is_ack());
    }
}

/// Every message of stream `q` from `first` (bodies), until quiet.
async fn read_all(conn: &Connection, q: &str) -> Vec<String> {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let a = common::args(&[("x-stream-offset", common::longstr("first"))]);
    let mut c = ch
        .basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), a)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(1500), c.next()).await {
        out.push(String::from_utf8(d.data.clone()).unwrap());
    }
    ch.close(200, "done".into()).await.unwrap();
    out
}

fn group_args(group: &str, super_stream: &str, offset: Option<&str>) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-stream-group".into(), common::longstr(group));
    a.insert("x-super-stream".into(), common::longstr(super_stream));
    if let Some(o) = offset {
        a.insert("x-stream-offset".into(), common::longstr(o));
    }
    a
}

/// One delivery a member got.
#[derive(Debug, Clone)]
struct Got {
    member: &'static str,
    queue: String,
    offset: i64,
    acked: bool,
}

/// A member consuming every partition of `ss` on one channel (prefetch
/// 100, tags `{member}-{partition}`): each delivery is acked while `ack`
/// holds, and reported on `tx`.
async fn join(
    conn: &Connection,
    member: &'static str,
    ss: &str,
    partitions: &[&str],
    ack: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Got>,
) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    for q in partitions {
        let tag = format!("{member}-{q}");
        let c = ch
            .basic_consume(
                (*q).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                group_args("g", ss, Some("first")),
            )
            .await
            .expect("consume a partition");
        tokio::spawn(pump(member, q.to_string(), c, ack.clone(), tx.clone()));
    }
    ch
}

async fn pump(
    member: &'static str,
    queue: String,
    mut c: Consumer,
    ack: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Got>,
) {
    while let Some(Ok(d)) = c.next().await {
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(o)) => o,
            other => panic!("x-stream-offset: {other:?}"),
        };
        let acked = ack.load(Ordering::SeqCst);
        if acked && d.acker.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        let got = Got {
            member,
            queue: queue.clone(),
            offset,
            acked,
        };
        if tx.send(got).is_err() {
            return;
        }
    }
}

/// Receives until every (partition, offset) in `want` was seen.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Got>,
    all: &mut Vec<Got>,
    want: &[(&str, std::ops::Range<i64>)],
) {
    let done = |all: &Vec<Got>| {
        want.iter().all(|(q, r)| {
            r.clone()
                .all(|o| all.iter().any(|g| g.queue == *q && g.offset == o))
        })
    };
    while !done(all) {
        let g = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("deliveries of {want:?} in time; got {all:?}"))
            .expect("open");
        all.push(g);
    }
}

/// The super stream's JSON from the API.
async fn super_stream(s: &Server, name: &str) -> J {
    common::get_ok(s, &format!("/api/super-streams/%2f/{name}")).await
}

/// Each partition's (active consumer tag, committed offset) for group g.
fn group_state(j: &J) -> Vec<(Option<String>, u64)> {
    j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let g = &p["groups"][0];
            (
                g["active_consumer_tag"].as_str().map(str::to_owned),
                g["committed_offset"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn creation_makes_rabbitmqs_layout_and_delete_removes_it() {
    let s = common::start().await;
    let (st, body) = api(
        &s,
        "PUT",
        "/api/super-streams/%2f/invoices",
        r#"{"partitions": 3}"#,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let x = common::get_ok(&s, "/api/exchanges/%2f/invoices").await;
    assert_eq!(x["type"], "direct");
    assert_eq!(x["durable"], true);
    assert_eq!(x["auto_delete"], false);
    assert_eq!(x["arguments"], serde_json::json!({"x-super-stream": true}));
    for i in 0..3 {
        let q = common::get_ok(&s, &format!("/api/queues/%2f/invoices-{i}")).await;
        assert_eq!(q["type"], "stream");
        assert_eq!(q["durable"], true);
        assert_eq!(
            q["arguments"],
            serde_json::json!({"x-queue-type": "stream", "x-queue-leader-locator": "balanced"})
        );
    }
    let b = common::get_ok(&s, "/api/exchanges/%2f/invoices/bindings/source").await;
    let mut got: Vec<(String, String, J)> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["destination"].as_str().unwrap().to_owned(),
                b["routing_key"].as_str().unwrap().to_owned(),
                b["arguments"].clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, String, J)> = (0..3)
        .map(|i| {
            (
                format!("invoices-{i}"),
                i.to_string(),
                serde_json::json!({"x-stream-partition-order": i}),
            )
        })
        .collect();
    assert_eq!(got, want);
    let j = super_stream(&s, "invoices").await;
    let names: Vec<&str> = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["invoices-0", "invoices-1", "invoices-2"]);
    assert_eq!(j["routing"], "key");

    // The same PUT again changes nothing; a different one is refused.
    let (st, _) = api(
        &s,
        "PUT",
        "/api/super-streams/%2f/invoices",
        r#"{"partitions": 3}"#,
    )
    .await;
    assert_eq!(st, 204);
    let (st, body) = api(
        &s,
        "PUT",
        "/api/super-streams/%2f/invoices",
        r#"{"partitions": 4}"#,
    )
    .await;
    assert_eq!(
        (
            st,
            body.contains("there is already an exchange named invoices")
        ),
        (400, true),
        "{body}"
    );

    // Binding keys name the partitions, as add_super_stream --binding-keys.
    let (st, body) = api(
        &s,
        "PUT",
        "/api/super-streams/%2f/regions",
        r#"{"binding-keys": ["amer", "emea", "apac"], "arguments": {"x-max-age": "7D"}}"#,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let j = super_stream(&s, "regions").await;
    let parts: Vec<(&str, &str)> = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["binding_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("regions-amer", "amer"),
            ("regions-emea", "emea"),
            ("regions-apac", "apac")
        ]
    );
    let q = common::get_ok(&s, "/api/queues/%2f/regions-emea").await;
    assert_eq!(q["arguments"]["x-max-age"], "7D");

    // Bad requests: a 4xx with a reason, nothing created.
    for (name, body, want) in [
        ("a", r#"{"partitions": 0}"#, "partitions"),
        (
            "a",
            r#"{"partitions": 2, "binding-keys": ["x"]}"#,
            "not both",
        ),
        ("a", r#"{}"#, "required"),
        (
            "a",
            r#"{"binding-keys": ["x", "x"]}"#,
            "Duplicate partition names",
        ),
        ("a", r#"{"partitions": 2, "routing": "random"}"#, "routing"),
        (
            "a",
            r#"{"partitions": 2, "arguments": {"x-max-age": "soon"}}"#,
            "x-max-age",
        ),
        (
            "amq.direct",
            r#"{"binding-keys": ["x"]}"#,
            "there is already an exchange",
        ),
    ] {
        let (st, reply) = api(&s, "PUT", &format!("/api/super-streams/%2f/{name}"), body).await;
        assert_eq!(st, 400, "{body}: {reply}");
        let reason = serde_json::from_str::<J>(&reply).unwrap()["reason"].to_string();
        assert!(reason.contains(want), "{body}: {reply}");
    }
    // A queue already named as a partition: refused, the exchange not left behind.
    let conn = common::connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    common::queue(&ch, "taken-1", true).await;
    let (st, reply) = api(
        &s,
        "PUT",
        "/api/super-streams/%2f/taken",
        r#"{"partitions": 2}"#,
    )
    .await;
    assert_eq!(
        (st, reply.contains("there is already a queue named taken-1")),
        (400, true),
        "{reply}"
    );
    assert_eq!(api(&s, "GET", "/api/exchanges/%2f/taken", "").await.0, 404);
    assert_eq!(api(&s, "GET", "/api/queues/%2f/taken-0", "").await.0, 404);

    let list = common::get_ok(&s, "/api/super-streams/%2f").await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    // DELETE removes the exchange and every partition.
    let (st, _) = api(&s, "DELETE", "/api/super-streams/%2f/invoices", "").await;
    assert_eq!(st, 204);
    assert_eq!(
        api(&s, "GET", "/api/exchanges/%2f/invoices", "").await.0,
        404
    );
    for i in 0..3 {
        assert_eq!(
            api(&s, "GET", &format!("/api/queues/%2f/invoices-{i}"), "")
                .await
                .0,
            404
        );
    }
    assert_eq!(
        api(&s, "GET", "/api/super-streams/%2f/invoices", "")
            .await
            .0,
        404
    );
    assert_eq!(
        api(&s, "DELETE", "/api/super-streams/%2f/invoices", "")
            .await
            .0,
        404
    );
    // An exchange that is not a super stream is not deleted as one.
    let (st, reply) = api(&s, "DELETE", "/api/super-streams/%2f/amq.direct", "").await;
    assert_eq!(
        (st, reply.contains("is not a super stream")),
        (400, true),
        "{reply}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn routing_by_key_and_by_hash_keeps_each_key_in_one_partition_in_order() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let ch = confirming(&conn).await;
    assert_eq!(
        api(
            &s,
            "PUT",
            "/api/super-streams/%2f/keyed",
            r#"{"partitions": 3}"#
        )
        .await
        .0,
        201
    );
    let (st, body) = api(
        &s,
        "PUT",
        "/api/super-streams/%2f/hashed",
        r#"{"partitions": 3, "routing": "hash"}"#,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let x = common::get_ok(&s, "/api/exchanges/%2f/hashed").await;
    assert_eq!(x["arguments"]["x-super-stream-routing"], "hash");
    assert_eq!(super_stream(&s, "hashed").await["routing"], "hash");

    // By key: the binding key is the partition.
    let msgs: Vec<(String, String)> = (0..6)
        .map(|i| ((i % 3).to_string(), format!("k{}-{i}", i % 3)))
        .collect();
    publish(&ch, "keyed", &msgs).await;
    for p in 0..3 {
        let got = read_all(&conn, &format!("keyed-{p}")).await;
        assert_eq!(got, [format!("k{p}-{p}"), format!("k{p}-{}", p + 3)]);
    }

    // By hash: 20 keys, 10 messages each, interleaved.
    let msgs: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("customer-{}", i % 20),
                format!("customer-{}/{}", i % 20, i / 20),
            )
        })
        .collect();
    publish(&ch, "hashed", &msgs).await;
    let mut home: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    let mut used = 0;
    for p in 0..3 {
        let got = read_all(&conn, &format!("hashed-{p}")).await;
        total += got.len();
        used += usize::from(!got.is_empty());
        let mut last: HashMap<String, i64> = HashMap::new();
        for b in got {
            let (key, seq) = b.split_once('/').unwrap();
            let seq: i64 = seq.parse().unwrap();
            let prev = home.insert(key.to_owned(), p);
            assert!(
                prev.is_none() || prev == Some(p),
                "{key} in partitions {prev:?} and {p}"
            );
            let before = last.insert(key.to_owned(), seq).unwrap_or(-1);
            assert_eq!(seq, before + 1, "{key}: order kept");
        }
    }
    assert_eq!((total, home.len()), (200, 20));
    assert!(used >= 2, "20 keys spread over the partitions");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spreads_partitions_and_rebalances_without_losing_messages() {
    let s = common::start().await;
    let parts = ["orders-0", "orders-1", "orders-2"];
    assert_eq!(
        api(
            &s,
            "PUT",
            "/api/super-streams/%2f/orders",
            r#"{"partitions": 3}"#
        )
        .await
        .0,
        201
    );
    let pconn = common::connect(&s).await;
    let pubch = confirming(&pconn).await;
    let batch = |from: usize| -> Vec<(String, String)> {
        (from..from + 30)
            .map(|i| ((i % 3).to_string(), format!("m{i}")))
            .collect()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut all: Vec<Got> = Vec::new();

    // A alone reads all three partitions.
    let aconn = common::connect(&s).await;
    let a_acks = Arc::new(AtomicBool::new(true));
    let _ach = join(&aconn, "A", "orders", &parts, a_acks.clone(), tx.clone()).await;
    publish(&pubch, "orders", &batch(0)).await;
    collect(
        &mut rx,
        &mut all,
        &[
            ("orders-0", 0..10),
            ("orders-1", 0..10),
            ("orders-2", 0..10),
        ],
    )
    .await;
    assert!(all.iter().all(|g| g.member == "A"));
    common::eventually(|| async {
        group_state(&super_stream(&s, "orders").await)
            .iter()
            .all(|(_, c)| *c == 10)
    })
    .await;

    // B joins: 2 + 1 (B ranks second, so it gets partition 1).
    let bconn = common::connect(&s).await;
    let _bch = join(
        &bconn,
        "B",
        "orders",
        &parts,
        Arc::new(AtomicBool::new(true)),
        tx.clone(),
    )
    .await;
    common::eventually(|| async {
        let st = group_state(&super_stream(&s, "orders").await);
        st.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()
            == [
                Some("A-orders-0".into()),
                Some("B-orders-1".into()),
                Some("A-orders-2".into()),
            ]
    })
    .await;
    publish(&pubch, "orders", &batch(30)).await;
    collect(
        &mut rx,
        &mut all,
        &[
            ("orders-0", 10..20),
            ("orders-1", 10..20),
            ("orders-2", 10..20),
        ],
    )
    .await;
    for g in &all[30..] {
        let want = if g.queue == "orders-1" { "B" } else { "A" };
        assert_eq!(g.member, want, "{g:?}");
    }
    common::eventually(|| async {
        group_state(&super_stream(&s, "orders").await)
            .iter()
            .all(|(_, c)| *c == 20)
    })
    .await;

    // A stops acking, gets its share of 30 more, and leaves: B takes
    // partitions 0 and 2 over from the committed offsets, so exactly A's
    // unacknowledged deliveries come again.
    a_acks.store(false, Ordering::SeqCst);
    publish(&pubch, "orders", &batch(60)).await;
    collect(
        &mut rx,
        &mut all,
        &[
            ("orders-0", 20..30),
            ("orders-1", 20..30),
            ("orders-2", 20..30),
        ],
    )
    .await;
    let unacked: HashSet<(String, i64)> = all
        .iter()
        .filter(|g| !g.acked)
        .map(|g| (g.queue.clone(), g.offset))
        .collect();
    assert_eq!(unacked.len(), 20, "A holds partitions 0 and 2: {all:?}");
    aconn.close(200, "bye".into()).await.unwrap();
    let before = all.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while all[before..].len() < 20 {
        let g = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("A's unacked tail delivered to B")
            .unwrap();
        all.push(g);
    }
    let again: HashSet<(String, i64)> = all[before..]
        .iter()
        .map(|g| {
            assert_eq!(g.member, "B");
            (g.queue.clone(), g.offset)
        })
        .collect();
    assert_eq!(again, unacked, "only the unacknowledged tail comes again");
    publish(&pubch, "orders", &batch(90)).await;
    collect(
        &mut rx,
        &mut all,
        &[
            ("orders-0", 30..40),
            ("orders-1", 30..40),
            ("orders-2", 30..40),
        ],
    )
    .await;

    // Nothing lost: every offset of every partition was delivered, and
    // acked (the committed offsets reach the tails, lag 0).
    for q in parts {
        for o in 0..40 {
            assert!(
                all.iter().any(|g| g.queue == q && g.offset == o && g.acked),
                "{q}/{o}"
            );
        }
    }
    common::eventually(|| async {
        let j = super_stream(&s, "orders").await;
        j["groups"][0]["lag"] == 0
            && group_state(&j)
                .iter()
                .all(|(t, c)| *c == 40 && t.as_deref().is_some_and(|t| t.starts_with("B-")))
    })
    .await;
    let dups = all.len() - 3 * 40;
    assert_eq!(dups, 20, "duplicates: A's unacked tail only");
    s.shutdown().await;
}

#[tokio::test]
async fn lag_per_group_and_partition_in_the_api_and_prometheus() {
    let s = common::start().await;
    assert_eq!(
        api(
            &s,
            "PUT",
            "/api/super-streams/%2f/metered",
            r#"{"partitions": 2}"#
        )
        .await
        .0,
        201
    );
    let conn = common::connect(&s).await;
    let ch = confirming(&conn).await;
    let mut msgs: Vec<(String, String)> =
        (0..5).map(|i| ("0".to_string(), format!("a{i}"))).collect();
    msgs.extend((0..3).map(|i| ("1".to_string(), format!("b{i}"))));
    publish(&ch, "metered", &msgs).await;

    // One member on both partitions, one channel each.
    let mut consumers = Vec::new();
    for q in ["metered-0", "metered-1"] {
        let cch = conn.create_channel().await.unwrap();
        cch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
        let c = cch
            .basic_consume(
                q.into(),
                "".into(),
                BasicConsumeOptions::default(),
                group_args("lagging", "metered", Some("first")),
            )
            .await
            .unwrap();
        consumers.push((cch, c));
    }
    // Partition 0: offsets 0 and 1 acked; partition 1: nothing acked.
    let (cch0, c0) = &mut consumers[0];
    let _ = common::next(c0).await;
    let second = common::next(c0).await;
    cch0.basic_ack(second.delivery_tag, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let _ = common::next(&mut consumers[1].1).await;
    common::eventually(|| async {
        super_stream(&s, "metered").await["partitions"][0]["groups"][0]["committed_offset"] == 2
    })
    .await;
    let j = super_stream(&s, "metered").await;
    let row = |p: usize| {
        let g = &j["partitions"][p]["groups"][0];
        (
            g["name"].as_str().map(str::to_owned),
            g["committed_offset"].as_u64(),
            g["tail"].as_u64(),
            g["lag"].as_u64(),
        )
    };
    assert_eq!(row(0), (Some("lagging".into()), Some(2), Some(5), Some(3)));
    assert_eq!(row(1), (Some("lagging".into()), Some(0), Some(3), Some(3)));
    assert_eq!(j["groups"][0]["name"], "lagging");
    assert_eq!(j["groups"][0]["lag"], 6);
    assert_eq!(j["groups"][0]["partitions"].as_array().unwrap().len(), 2);
    let (_, m) = common::raw_at(s.prometheus_addr(), "GET", "/metrics/per-object", None, "").await;
    for line in [
        r#"warren_super_stream_group_lag{vhost="/",super_stream="metered",partition="metered-0",partition_index="0",group="lagging"} 3"#,
        r#"warren_super_stream_group_lag{vhost="/",super_stream="metered",partition="metered-1",partition_index="1",group="lagging"} 3"#,
        r#"warren_super_stream_group_committed_offset{vhost="/",super_stream="metered",partition="metered-0",partition_index="0",group="lagging"} 2"#,
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    s.shutdown().await;
}

/// Declares a super stream's layout over AMQP, as a client without the
/// API would: the exchange, the stream queues, the ordered bindings.
async fn declare_layout(ch: &Channel, name: &str, n: usize) {
    let xargs = common::args(&[("x-super-stream", AMQPValue::Boolean(true))]);
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        xargs,
    )
    .await
    .unwrap();
    for i in 0..n {
        let q = format!("{name}-{i}");
        let qargs = common::args(&[("x-queue-type", common::longstr("stream"))]);
        ch.queue_declare(q.as_str().into(), common::durable_q(), qargs)
            .await
            .unwrap();
        let bargs = common::args(&[("x-stream-partition-order", AMQPValue::LongInt(i as i32))]);
        ch.queue_bind(
            q.as_str().into(),
            name.into(),
            i.to_string().as_str().into(),
            QueueBindOptions::default(),
            bargs,
        )
        .await
        .unwrap();
    }
}

/// A member of group `g` over super stream `ks` consuming partition `q`
/// (prefetch 100) on a channel of its own, from `offset` if given.
async fn member(conn: &Connection, q: &str, offset: Option<&str>) -> (Channel, lapin::Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let c = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            group_args("g", "ks", offset),
        )
        .await
        .unwrap();
    (ch, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partition_committed_offsets_survive_kill9() {
    let dir = common::temp_dir("super-stream-crash");
    let data = dir.path().join("data");
    let mut broker = start_broker(dir.path(), &data, 0).await;
    let conn = Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let ch = confirming(&conn).await;
    declare_layout(&ch, "ks", 2).await;
    let msgs: Vec<(String, String)> = (0..20)
        .map(|i| ((i % 2).to_string(), format!("m{i}")))
        .collect();
    publish(&ch, "ks", &msgs).await;
    // Partition 0: 6 acked; partition 1: 4 acked.
    for (q, n) in [("ks-0", 6), ("ks-1", 4)] {
        let (cch, mut c) = member(&conn, q, Some("first")).await;
        let mut tag = 0;
        for _ in 0..n {
            tag = common::next(&mut c).await.delivery_tag;
        }
        cch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .unwrap();
    }
    let files = || -> Vec<String> {
        let Ok(d) = std::fs::read_dir(data.join("streams")) else {
            return Vec::new();
        };
        d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("groups.json")).ok())
            .collect()
    };
    common::wait_until(
        "both partitions' offsets on disk",
        Duration::from_secs(10),
        || async {
            let f = files();
            f.iter().any(|s| s.contains("\"g\":6")) && f.iter().any(|s| s.contains("\"g\":4"))
        },
    )
    .await;
    broker.kill9();
    drop(conn);

    let broker = start_broker(dir.path(), &data, 1).await;
    let conn = Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    // One member again (no offset given): each partition resumes after
    // its own committed offset.
    for (q, from) in [("ks-0", 6), ("ks-1", 4)] {
        let (_cch, mut c) = member(&conn, q, None).await;
        for o in from..10 {
            let d = common::next(&mut c).await;
            let h = d.properties.headers().clone().unwrap();
            assert_eq!(
                h.inner().get("x-stream-offset"),
                Some(&AMQPValue::LongLongInt(o)),
                "{q}"
            );
        }
        let r = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
        assert!(r.is_err(), "{q}: nothing past the tail: {r:?}");
    }
}

#[tokio::test]
async fn a_consume_naming_a_super_stream_is_checked() {
    let s = common::start().await;
    assert_eq!(
        api(
            &s,
            "PUT",
            "/api/super-streams/%2f/checked",
            r#"{"partitions": 1}"#
        )
        .await
        .0,
        201
    );
    let conn = common::connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let qargs = common::args(&[("x-queue-type", common::longstr("stream"))]);
    ch.queue_declare("lonely".into(), common::durable_q(), qargs)
        .await
        .unwrap();
    let cases: [(&str, FieldTable, u16, &str); 3] = [
        (
            "checked-0",
            common::args(&[("x-super-stream", common::longstr("checked"))]),
            406,
            "needs a consumer group",
        ),
        (
            "lonely",
            group_args("g", "checked", None),
            406,
            "is not a partition of 'checked'",
        ),
        (
            "checked-0",
            group_args("g", "nothing", None),
            404,
            "no exchange 'nothing'",
        ),
    ];
    for (q, a, code, text) in cases {
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
        let e = ch
            .basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), a)
            .await
            .expect_err("refused");
        let (c, t) = common::soft_code(&e);
        assert_eq!(c, code, "{t}");
        assert!(t.contains(text), "{t}");
    }
    s.shutdown().await;
}

/// The partition queues of super stream `name` that exist (`name-0` ..
/// `name-{max-1}` looked up) and the exchange's bindings' destinations.
async fn layout(s: &Server, name: &str, max: usize) -> (Vec<String>, Vec<String>) {
    let mut queues = Vec::new();
    for i in 0..max {
        let q = format!("{name}-{i}");
        if api(s, "GET", &format!("/api/queues/%2f/{q}"), "").await.0 == 200 {
            queues.push(q);
        }
    }
    let (st, body) = api(
        s,
        "GET",
        &format!("/api/exchanges/%2f/{name}/bindings/source"),
        "",
    )
    .await;
    let mut bound: Vec<String> = match st {
        200 => serde_json::from_str::<J>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["destination"].as_str().unwrap().to_owned())
            .collect(),
        _ => Vec::new(),
    };
    bound.sort();
    (queues, bound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_and_deletes_of_one_super_stream_leave_one_layout() {
    let s = common::start().await;
    let addr = s.http_addr();
    const N: usize = 8;
    for round in 0..5 {
        let name = format!("race{round}");
        // Half ask for 3 partitions, half for 5: one wins, the calls with
        // its body find it made (204), the others are refused (400).
        let calls: Vec<_> = (0..N)
            .map(|i| {
                let n = if i % 2 == 0 { 3 } else { 5 };
                let path = format!("/api/super-streams/%2f/{name}");
                tokio::spawn(async move {
                    let body = format!(r#"{{"partitions": {n}}}"#);
                    let r = common::raw_at(addr, "PUT", &path, Some(common::GUEST), &body).await;
                    (n, r)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for c in calls {
            answers.push(common::within(c).await.unwrap());
        }
        let created: Vec<usize> = answers
            .iter()
            .filter(|(_, (st, _))| *st == 201)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(created.len(), 1, "exactly one creates: {answers:?}");
        let won = created[0];
        for (n, (st, body)) in &answers {
            match (*n == won, *st) {
                (true, 201 | 204) => {}
                (false, 400) => assert!(
                    body.contains(&format!("there is already an exchange named {name}")),
                    "{body}"
                ),
                _ => panic!("{n} partitions answered {st} {body} ({won} won)"),
            }
        }
        let want: Vec<String> = (0..won).map(|i| format!("{name}-{i}")).collect();
        assert_eq!(
            layout(&s, &name, 5).await,
            (want.clone(), want),
            "round {round}"
        );
        let j = super_stream(&s, &name).await;
        assert_eq!(j["partitions"].as_array().unwrap().len(), won);

        // Racing deletes: one removes it all, the others find nothing.
        let dels: Vec<_> = (0..N)
            .map(|_| {
                let path = format!("/api/super-streams/%2f/{name}");
                tokio::spawn(async move {
                    common::raw_at(addr, "DELETE", &path, Some(common::GUEST), "").await
                })
            })
            .collect();
        let mut codes = Vec::new();
        for d in dels {
            codes.push(common::within(d).await.unwrap().0);
        }
        codes.sort();
        let mut want_codes = vec![404; N - 1];
        want_codes.insert(0, 204);
        assert_eq!(codes, want_codes);
        assert_eq!(layout(&s, &name, 5).await, (vec![], vec![]));
    }
    s.shutdown().await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A member of group `g` over super stream `tsx` on partition `tsx-0`
/// (prefetch 100, tag `tag`), with `x-stream-offset` a timestamp.
async fn member_since(conn: &Connection, tag: &str, secs: u64) -> (Channel, Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut a = group_args("g", "tsx", None);
    a.insert("x-stream-offset".into(), AMQPValue::Timestamp(secs));
    let c = ch
        .basic_consume(
            "tsx-0".into(),
            tag.into(),
            BasicConsumeOptions::default(),
            a,
        )
        .await
        .unwrap();
    (ch, c)
}

/// Partition `tsx-0`'s committed offset for group `g`, from the API.
async fn tsx_committed(s: &Server) -> u64 {
    super_stream(s, "tsx").await["partitions"][0]["groups"][0]["committed_offset"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_starting_by_timestamp_gets_nothing_older_and_a_takeover_resumes_at_the_committed_offset(
) {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let ch = confirming(&conn).await;
    declare_layout(&ch, "tsx", 1).await;
    // Ten old messages, each in a chunk of its own (confirmed one by one),
    // in one segment: its one index entry is offset 0.
    for i in 0..10 {
        publish(&ch, "tsx", &[("0".into(), format!("old{i}"))]).await;
    }
    // The timestamp: the next whole second, once the broker's clock (10 ms
    // ticks) is surely past it; then six new messages, a chunk each.
    let secs = unix_ms() / 1000 + 1;
    common::wait_until("the next second", Duration::from_secs(3), || async {
        unix_ms() >= secs * 1000 + 100
    })
    .await;
    for i in 0..6 {
        publish(&ch, "tsx", &[("0".into(), format!("new{i}"))]).await;
    }
    let (cha, mut a) = member_since(&conn, "a", secs).await;
    let mut tags = Vec::new();
    for i in 0..6u64 {
        let (off, body, tag) = common::stream::next(&mut a).await;
        assert_eq!(
            (off, body.as_str()),
            (10 + i as i64, format!("new{i}").as_str())
        );
        tags.push(tag);
    }
    common::stream::quiet(&mut a).await;
    // Three acked: the committed offset moves over the old chunks the
    // reader passed over and the three acked (it stayed at the index entry).
    for t in &tags[..3] {
        cha.basic_ack(*t, BasicAckOptions::default()).await.unwrap();
    }
    common::wait_until("committed offset 13", Duration::from_secs(10), || async {
        tsx_committed(&s).await == 13
    })
    .await;
    // A second member (ranked after a: same connection, later channel)
    // waits; when a goes, it takes over at the committed offset, its own
    // timestamp ignored (the group's offset wins in a super stream).
    let (chb, mut b) = member_since(&conn, "b", secs).await;
    common::stream::quiet(&mut b).await;
    cha.close(200, "bye".into()).await.unwrap();
    for i in 3..6u64 {
        let (off, body, tag) = common::stream::next(&mut b).await;
        assert_eq!(
            (off, body.as_str()),
            (10 + i as i64, format!("new{i}").as_str())
        );
        chb.basic_ack(tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    common::stream::quiet(&mut b).await;
    common::wait_until("committed offset 16", Duration::from_secs(10), || async {
        tsx_committed(&s).await == 16
    })
    .await;
    s.shutdown().await;
}
