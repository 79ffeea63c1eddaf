//! Stream filtering, stream policies and publisher back-pressure with
//! lapin: RabbitMQ 3.13's `x-stream-filter-value` header and
//! `x-stream-filter` / `x-stream-match-unfiltered` consumer arguments
//! (Warren filters exactly; skipped messages take no credit), the
//! `max-length-bytes` and `stream-max-segment-size-bytes` policy keys
//! winning over the arguments and applied at once, and a fast confirming
//! publisher against a stream with a tiny unsynced-bytes bound.

mod common;
use common::stream::confirming;
use common::stream::{next, quiet};
use common::{args, longstr, raw, wait_until, within, GUEST};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::time::Duration;

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![("x-queue-type", longstr("stream"))];
    pairs.extend(extra.iter().cloned());
    args(&pairs)
}

async fn declare(ch: &Channel, q: &str, extra: &[(&str, AMQPValue)]) {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.into(), opts, stream_args(extra))
        .await
        .expect("declare a stream");
}

/// Publishes `m{i}` for each (i, filter header) and waits for every
/// confirm to be an ack.
async fn publish_filtered(ch: &Channel, q: &str, msgs: &[(usize, Option<AMQPValue>)]) {
    let mut confirms = Vec::new();
    for (i, v) in msgs {
        let mut props = BasicProperties::default();
        if let Some(v) = v {
            props = props.with_headers(args(&[("x-stream-filter-value", v.clone())]));
        }
        let c = ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(within(c).await.expect("confirm").is_ack());
    }
}

async fn consume_with(
    conn: &Connection,
    q: &str,
    prefetch: u16,
    a: FieldTable,
) -> (Channel, Consumer) {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let c = ch
        .basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), a)
        .await
        .expect("consume");
    (ch, c)
}

/// Reads `n` deliveries, acking each: their offsets.
async fn take_acked(ch: &Channel, c: &mut Consumer, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (off, body, tag) = next(c).await;
        assert_eq!(body, format!("m{off}"));
        ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
        out.push(off as u64);
    }
    out
}

/// Message i has filter value "a" (i % 3 == 0), "b" (i % 3 == 1) or none.
fn value_of(i: usize) -> Option<AMQPValue> {
    match i % 3 {
        0 => Some(longstr("a")),
        1 => Some(longstr("b")),
        _ => None,
    }
}

#[tokio::test]
async fn consumers_get_exactly_the_values_they_filter_on() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "fs", &[]).await;
    // Several chunks: a confirm (and so a sync) every 10 messages.
    for from in (0..30).step_by(10) {
        let msgs: Vec<_> = (from..from + 10).map(|i| (i, value_of(i))).collect();
        publish_filtered(&pubch, "fs", &msgs).await;
    }
    // A non-string filter value counts as none (RabbitMQ reads only a
    // string there).
    publish_filtered(&pubch, "fs", &[(30, Some(AMQPValue::LongInt(7)))]).await;
    let first = ("x-stream-offset", longstr("first"));
    let every = |f: &dyn Fn(usize) -> bool| {
        (0..31)
            .filter(|i| f(*i))
            .map(|i| i as u64)
            .collect::<Vec<_>>()
    };

    // One value, a prefetch of 2: skipped messages take no credit, so
    // exactly the first two "a"s come, then the rest as acks return it.
    let a = args(&[first.clone(), ("x-stream-filter", longstr("a"))]);
    let (ch_a, mut ca) = consume_with(&conn, "fs", 2, a).await;
    let mut got = Vec::new();
    let mut tags = Vec::new();
    for _ in 0..2 {
        let (off, _, tag) = next(&mut ca).await;
        got.push(off as u64);
        tags.push(tag);
    }
    quiet(&mut ca).await;
    assert_eq!(got, vec![0, 3]);
    for t in tags {
        ch_a.basic_ack(t, BasicAckOptions::default()).await.unwrap();
    }
    got.extend(take_acked(&ch_a, &mut ca, 8).await);
    quiet(&mut ca).await;
    assert_eq!(got, every(&|i| i < 30 && i % 3 == 0));

    // An array (its non-strings ignored) plus unfiltered messages.
    let mut arr = FieldArray::default();
    arr.push(longstr("b"));
    arr.push(AMQPValue::LongInt(5));
    let b = args(&[
        first.clone(),
        ("x-stream-filter", AMQPValue::FieldArray(arr)),
        ("x-stream-match-unfiltered", AMQPValue::Boolean(true)),
    ]);
    let (ch_b, mut cb) = consume_with(&conn, "fs", 100, b).await;
    let want_b = every(&|i| i == 30 || i % 3 != 0);
    assert_eq!(take_acked(&ch_b, &mut cb, want_b.len()).await, want_b);
    quiet(&mut cb).await;

    // As RabbitMQ 3.13: a filter of another type is no filter, and
    // x-stream-match-unfiltered alone changes nothing.
    for a in [
        args(&[first.clone(), ("x-stream-filter", AMQPValue::LongInt(1))]),
        args(&[
            first.clone(),
            ("x-stream-match-unfiltered", AMQPValue::Boolean(false)),
        ]),
    ] {
        let (ch, mut c) = consume_with(&conn, "fs", 100, a).await;
        assert_eq!(take_acked(&ch, &mut c, 31).await, every(&|_| true));
        quiet(&mut c).await;
    }

    // Live: a filtering consumer at `next` gets new "b"s only.
    let (ch_n, mut cn) =
        consume_with(&conn, "fs", 10, args(&[("x-stream-filter", longstr("b"))])).await;
    let msgs: Vec<_> = (31..43).map(|i| (i, value_of(i))).collect();
    publish_filtered(&pubch, "fs", &msgs).await;
    let want: Vec<u64> = (31..43).filter(|i| i % 3 == 1).map(|i| i as u64).collect();
    assert_eq!(take_acked(&ch_n, &mut cn, want.len()).await, want);
    quiet(&mut cn).await;
    // The "a" consumer got the new "a"s as well, nothing else.
    let want: Vec<u64> = (31..43).filter(|i| i % 3 == 0).map(|i| i as u64).collect();
    assert_eq!(take_acked(&ch_a, &mut ca, want.len()).await, want);
    quiet(&mut ca).await;
    s.shutdown().await;
}

#[tokio::test]
async fn the_filter_size_is_checked_as_rabbitmq_3_13_checks_it() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    declare(
        &ch,
        "fsz",
        &[("x-stream-filter-size-bytes", AMQPValue::LongInt(32))],
    )
    .await;
    for bad in [15, 256] {
        let ch = conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let a = stream_args(&[("x-stream-filter-size-bytes", AMQPValue::LongInt(bad))]);
        let e = ch.queue_declare("fsz2".into(), opts, a).await.unwrap_err();
        assert_eq!(
            common::soft_code(&e),
            (
                406,
                "PRECONDITION_FAILED - Invalid value for  x-stream-filter-size-bytes".into()
            )
        );
    }
    // Its type first, as every integer argument (rabbit_amqqueue's
    // check_non_neg_int_arg): a string, a float or a boolean is refused.
    let typed = [
        (longstr("32"), "longstr"),
        (AMQPValue::Double(32.0), "double"),
        (AMQPValue::Float(32.0), "float"),
        (AMQPValue::Boolean(true), "bool"),
    ];
    let refused = |bad: AMQPValue| async {
        let ch = conn.create_channel().await.unwrap();
        let a = stream_args(&[("x-stream-filter-size-bytes", bad)]);
        let e = ch
            .queue_declare("fsz3".into(), durable(), a)
            .await
            .unwrap_err();
        common::soft_code(&e)
    };
    for (bad, ty) in typed {
        assert_eq!(
            refused(bad).await,
            (
                406,
                format!("PRECONDITION_FAILED - invalid arg 'x-stream-filter-size-bytes' for queue 'fsz3' in vhost '/': \"expected integer, got {ty}\"")
            )
        );
    }
    assert_eq!(
        refused(AMQPValue::LongInt(-1)).await,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-stream-filter-size-bytes' for queue 'fsz3' in vhost '/': {value_negative,-1}".into()
        )
    );
    // The range is checked after the flags (rabbit_stream_queue:declare's
    // checks run in that order).
    let ch = conn.create_channel().await.unwrap();
    let a = stream_args(&[("x-stream-filter-size-bytes", AMQPValue::LongInt(300))]);
    let e = ch
        .queue_declare("fsz3".into(), QueueDeclareOptions::default(), a)
        .await
        .unwrap_err();
    assert_eq!(
        common::soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'fsz3' in vhost '/'"
                .into()
        )
    );
    // Nothing refused was created.
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let e = ch
        .queue_declare("fsz3".into(), passive, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(common::soft_code(&e).0, 404);
    s.shutdown().await;
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn empty_filter_values_and_lists() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "fe", &[]).await;
    // An empty value is no value (osiris hashes it to the unfiltered bit).
    publish_filtered(
        &pubch,
        "fe",
        &[(0, Some(longstr(""))), (1, Some(longstr("a")))],
    )
    .await;
    let first = ("x-stream-offset", longstr("first"));
    let a = args(&[first.clone(), ("x-stream-filter", longstr("a"))]);
    let (ch, mut c) = consume_with(&conn, "fe", 10, a).await;
    assert_eq!(take_acked(&ch, &mut c, 1).await, vec![1]);
    quiet(&mut c).await;
    let u = args(&[
        first.clone(),
        ("x-stream-filter", longstr("zz")),
        ("x-stream-match-unfiltered", AMQPValue::Boolean(true)),
    ]);
    let (ch, mut c) = consume_with(&conn, "fe", 10, u).await;
    assert_eq!(take_acked(&ch, &mut c, 1).await, vec![0]);
    quiet(&mut c).await;
    // A list without a string: RabbitMQ's reader crashes on it; Warren
    // refuses it with a 406 naming the argument.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut arr = FieldArray::default();
    arr.push(AMQPValue::LongInt(1));
    let bad = args(&[("x-stream-filter", AMQPValue::FieldArray(arr))]);
    let e = ch
        .basic_consume("fe".into(), "".into(), BasicConsumeOptions::default(), bad)
        .await
        .unwrap_err();
    assert_eq!(
        common::soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-stream-filter' for queue 'fe' in vhost '/': no filter value".into()
        )
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_filtering_group_member_commits_past_what_it_skips() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "fg", &[]).await;
    let msgs: Vec<_> = (0..12).map(|i| (i, value_of(i))).collect();
    publish_filtered(&pubch, "fg", &msgs).await;
    let a = args(&[
        ("x-stream-offset", longstr("first")),
        ("x-stream-group", longstr("g")),
        ("x-stream-filter", longstr("b")),
    ]);
    let (ch, mut c) = consume_with(&conn, "fg", 10, a).await;
    assert_eq!(take_acked(&ch, &mut c, 4).await, vec![1, 4, 7, 10]);
    // Everything up to the end was acked or passed over.
    wait_until(
        "the group's committed offset at 12",
        Duration::from_secs(10),
        || async {
            let j = common::get_ok(&s, "/api/queues/%2f/fg").await;
            j["stream"]["groups"]
                .as_array()
                .and_then(|g| g.first().cloned())
                .is_some_and(|g| g["committed_offset"] == 12)
        },
    )
    .await;
    s.shutdown().await;
}

/// What a filtering member passes over is committed for its whole group,
/// so a member wanting other messages is refused (406); the same values in
/// another order are the same filter.
#[tokio::test]
async fn a_group_member_with_another_filter_is_refused() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "fgm", &[]).await;
    let list = |vals: &[&str]| {
        AMQPValue::FieldArray(FieldArray::from(
            vals.iter().map(|v| longstr(v)).collect::<Vec<_>>(),
        ))
    };
    let member = |f: AMQPValue| args(&[("x-stream-group", longstr("g")), ("x-stream-filter", f)]);
    let (_ch1, _c1) = consume_with(&conn, "fgm", 10, member(list(&["a", "b"]))).await;
    let (_ch2, _c2) = consume_with(&conn, "fgm", 10, member(list(&["b", "a"]))).await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let e = ch
        .basic_consume(
            "fgm".into(),
            "".into(),
            BasicConsumeOptions::default(),
            member(longstr("a")),
        )
        .await
        .unwrap_err();
    assert_eq!(
        common::soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - consumer group 'g' reads queue 'fgm' in vhost '/' \
             with another x-stream-filter"
                .into()
        )
    );
    s.shutdown().await;
}

async fn put_policy(s: &common::TestBroker, name: &str, body: serde_json::Value) {
    let (st, b) = raw(
        s,
        "PUT",
        &format!("/api/policies/%2F/{name}"),
        Some(GUEST),
        &body.to_string(),
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {b}");
}

async fn stream_stats(s: &common::TestBroker, q: &str) -> serde_json::Value {
    common::get_ok(s, &format!("/api/queues/%2f/{q}")).await["stream"].clone()
}

#[tokio::test]
async fn policies_set_a_streams_retention_and_segment_size() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    // Arguments that would keep everything in one segment: the policy's
    // values win (RabbitMQ 3.13's policy_precedence).
    declare(
        &pubch,
        "sp.a",
        &[
            ("x-max-length-bytes", AMQPValue::LongInt(10_000_000)),
            (
                "x-stream-max-segment-size-bytes",
                AMQPValue::LongInt(100_000_000),
            ),
        ],
    )
    .await;
    put_policy(
        &s,
        "sp",
        serde_json::json!({
            "pattern": "^sp\\.a$",
            "definition": {"max-length-bytes": 3000, "stream-max-segment-size-bytes": 1000},
            "apply-to": "queues",
        }),
    )
    .await;
    for i in 0..80 {
        publish_filtered(&pubch, "sp.a", &[(i, None)]).await;
    }
    let st = stream_stats(&s, "sp.a").await;
    assert!(st["segments"].as_u64().unwrap() >= 3, "{st}");
    assert!(st["first_offset"].as_u64().unwrap() > 0, "{st}");
    assert!(st["bytes_on_disk"].as_u64().unwrap() <= 3000 + 1000, "{st}");

    // Applied at once: a stream already over the policy's size is
    // trimmed when the policy is set, without a publish.
    declare(
        &pubch,
        "sp.b",
        &[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1000))],
    )
    .await;
    for i in 0..80 {
        publish_filtered(&pubch, "sp.b", &[(i, None)]).await;
    }
    let before = stream_stats(&s, "sp.b").await;
    assert_eq!(before["first_offset"], 0, "{before}");
    put_policy(
        &s,
        "sp2",
        serde_json::json!({
            "pattern": "^sp\\.b$",
            "definition": {"max-length-bytes": 2000},
            "apply-to": "queues",
        }),
    )
    .await;
    wait_until(
        "sp.b trimmed by the policy",
        Duration::from_secs(10),
        || async {
            let st = stream_stats(&s, "sp.b").await;
            st["first_offset"].as_u64().unwrap() > 0
                && st["bytes_on_disk"].as_u64().unwrap() <= 3000
        },
    )
    .await;
    // An operator policy's lower max-length-bytes wins over the policy's;
    // with both deleted the stream is back to its arguments.
    declare(
        &pubch,
        "sp.c",
        &[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1000))],
    )
    .await;
    for i in 0..80 {
        publish_filtered(&pubch, "sp.c", &[(i, None)]).await;
    }
    let pol = |n: u64| serde_json::json!({"pattern": "^sp\\.c$", "definition": {"max-length-bytes": n}, "apply-to": "queues"});
    put_policy(&s, "sp3", pol(1_000_000)).await;
    let (st, b) = raw(
        &s,
        "PUT",
        "/api/operator-policies/%2F/op3",
        Some(GUEST),
        &pol(2000).to_string(),
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {b}");
    wait_until(
        "sp.c trimmed by the operator policy",
        Duration::from_secs(10),
        || async {
            let st = stream_stats(&s, "sp.c").await;
            st["max_length_bytes"] == 2000 && st["first_offset"].as_u64().unwrap() > 0
        },
    )
    .await;
    for path in ["/api/policies/%2F/sp3", "/api/operator-policies/%2F/op3"] {
        let (st, b) = raw(&s, "DELETE", path, Some(GUEST), "").await;
        assert_eq!(st, 204, "{b}");
    }
    wait_until(
        "sp.c back to its arguments",
        Duration::from_secs(10),
        || async {
            let st = stream_stats(&s, "sp.c").await;
            st["max_length_bytes"].is_null() && st["max_segment_size_bytes"] == 1000
        },
    )
    .await;

    // What is left is read from the oldest kept offset, in order.
    let first = stream_stats(&s, "sp.b").await["first_offset"]
        .as_u64()
        .unwrap();
    let (ch, mut c) = consume_with(
        &conn,
        "sp.b",
        200,
        args(&[("x-stream-offset", longstr("first"))]),
    )
    .await;
    let got = take_acked(&ch, &mut c, (80 - first) as usize).await;
    assert_eq!(got, (first..80).collect::<Vec<_>>());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_publisher_is_held_back_not_dropped() {
    // A 1 KiB bound on what a stream holds unsynced: a pipelined
    // publisher is paused again and again until the flusher catches up,
    // even though its connection also consumes the stream (a stream is
    // drained by the flusher, not by acks).
    let s = common::start_with(|c| c.storage.stream_unsynced_kb = 1).await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "bp", &[]).await;
    const N: usize = 5_000;
    let first = args(&[("x-stream-offset", longstr("first"))]);
    let (ch, mut c) = consume_with(&conn, "bp", 1000, first).await;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let (off, b, tag) = next(&mut c).await;
            assert_eq!(off as usize, i);
            assert!(b.starts_with(&format!("m{i}:")), "{i}");
            ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
        }
        quiet(&mut c).await;
    });
    let body = vec![b'x'; 200];
    let mut confirms = Vec::with_capacity(N);
    for i in 0..N {
        let mut b = format!("m{i}:").into_bytes();
        b.extend_from_slice(&body);
        let c = pubch
            .basic_publish(
                "".into(),
                "bp".into(),
                BasicPublishOptions::default(),
                &b,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        let r = tokio::time::timeout(Duration::from_secs(120), c).await;
        assert!(r.expect("a confirm in time").expect("confirm").is_ack());
    }
    tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("every message read in time")
        .expect("the reader's checks");
    let st = stream_stats(&s, "bp").await;
    assert!(
        st["publisher_flow_pauses"].as_u64().unwrap() > 0,
        "never held back: {st}"
    );
    s.shutdown().await;
}
