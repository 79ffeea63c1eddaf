//! Stream queues (`x-queue-type: stream`) over AMQP 0-9-1 with lapin: the
//! declare's rules and RabbitMQ 3.10.8's texts, offsets and the
//! `x-stream-offset` header, consumers at their own positions, credit
//! returned by acks, the operations a stream refuses, retention by whole
//! segments, the management API and Prometheus, and the log surviving a
//! kill -9.

mod common;
use common::stream::confirming;
use common::stream::{next, publish_n, quiet};
use common::{within, TestBroker};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use std::time::Duration;

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare(ch: &Channel, q: &str, a: FieldTable) {
    ch.queue_declare(q.into(), durable(), a)
        .await
        .expect("declare a stream");
}

/// The reply text of the error that closed a channel or connection.
fn refusal(e: lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("not a protocol error: {other:?}"),
    }
}

async fn consume_from(ch: &Channel, q: &str, prefetch: u16, offset: Option<AMQPValue>) -> Consumer {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut a = FieldTable::default();
    if let Some(o) = offset {
        a.insert("x-stream-offset".into(), o);
    }
    ch.basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), a)
        .await
        .expect("consume")
}

#[tokio::test]
async fn declares_are_checked_as_rabbitmq_checks_them() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let refused = |opts: QueueDeclareOptions, a: FieldTable| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            let e = ch.queue_declare("s".into(), opts, a).await.unwrap_err();
            refusal(e)
        }
    };
    let txt = |p: &str| {
        format!("PRECONDITION_FAILED - invalid property '{p}' for queue 's' in vhost '/'")
    };
    let non_durable = QueueDeclareOptions::default();
    assert_eq!(
        refused(non_durable, args(&[])).await,
        (406, txt("non-durable"))
    );
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..durable()
    };
    assert_eq!(
        refused(exclusive, args(&[])).await,
        (406, txt("exclusive-owner"))
    );
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        exclusive: true,
        ..Default::default()
    };
    assert_eq!(
        refused(auto_delete, args(&[])).await,
        (406, txt("auto-delete"))
    );
    for key in [
        "x-max-length",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-max-priority",
    ] {
        assert_eq!(
            refused(non_durable, args(&[(key, AMQPValue::LongInt(1))])).await,
            (406, format!("PRECONDITION_FAILED - invalid arg '{key}' for queue 's' in vhost '/' of queue type rabbit_stream_queue")),
            "refused arguments come before the flags"
        );
    }
    let bad = |detail: &str, key: &str| {
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue 's' in vhost '/': {detail}"
            ),
        )
    };
    for (v, detail) in [
        (longstr("10"), "invalid_max_age"),
        (longstr("0s"), "invalid_max_age"),
        (longstr("1h30m"), "invalid_max_age"),
        (AMQPValue::LongInt(5), "{unacceptable_type,signedint}"),
    ] {
        assert_eq!(
            refused(durable(), args(&[("x-max-age", v)])).await,
            bad(detail, "x-max-age")
        );
    }
    for key in ["x-max-length-bytes", "x-stream-max-segment-size-bytes"] {
        assert_eq!(
            refused(durable(), args(&[(key, AMQPValue::LongInt(-1))])).await,
            bad("{value_negative,-1}", key)
        );
        assert_eq!(
            refused(durable(), args(&[(key, longstr("x"))])).await,
            bad("\"expected integer, got longstr\"", key)
        );
    }
    // Accepted, then compared on redeclare.
    let ch = conn.create_channel().await.unwrap();
    let kept = [
        ("x-max-age", longstr("7D")),
        ("x-foo", AMQPValue::LongInt(1)),
    ];
    declare(&ch, "s", args(&kept)).await;
    let ok = ch
        .queue_declare("s".into(), durable(), args(&kept))
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 0);
    assert_eq!(
        refused(durable(), args(&[("x-max-age", longstr("8D"))])).await,
        (406, "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 's' in vhost '/': received '8D' but current is '7D'".into())
    );
    assert_eq!(
        refused(
            durable(),
            args(&[("x-max-age", longstr("7D")), ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1000))])
        )
        .await,
        (406, "PRECONDITION_FAILED - inequivalent arg 'x-stream-max-segment-size-bytes' for queue 's' in vhost '/': received the value '1000' of type 'signedint' but current is none".into())
    );
    assert_eq!(
        refused(durable(), FieldTable::default()).await,
        (406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 's' in vhost '/': received none but current is the value 'stream' of type 'longstr'".into())
    );
    s.shutdown().await;
}

#[tokio::test]
async fn consumers_read_at_their_own_offsets_with_the_offset_header() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "log", args(&[])).await;
    publish_n(&pubch, "log", 0, 100).await;

    // From the start, in order, every delivery carrying its offset.
    let ch = conn.create_channel().await.unwrap();
    let mut first = consume_from(&ch, "log", 50, Some(longstr("first"))).await;
    for i in 0..100 {
        let (off, body, tag) = next(&mut first).await;
        assert_eq!((off, body), (i, format!("m{i}")));
        ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    }
    // A numeric offset, and `next`, at the same time on other channels.
    let ch2 = conn.create_channel().await.unwrap();
    let mut at60 = consume_from(&ch2, "log", 50, Some(AMQPValue::LongLongInt(60))).await;
    let ch3 = conn.create_channel().await.unwrap();
    let mut nxt = consume_from(&ch3, "log", 50, Some(longstr("next"))).await;
    for i in 60..100 {
        let (off, _, tag) = next(&mut at60).await;
        assert_eq!(off, i);
        ch2.basic_ack(tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    quiet(&mut nxt).await;
    // New messages reach every consumer, each at its position.
    publish_n(&pubch, "log", 100, 3).await;
    for c in [&mut first, &mut at60, &mut nxt] {
        for i in 100..103 {
            assert_eq!(next(c).await.0, i);
        }
    }
    // `last` is the start of the last chunk (here: one publish per sync
    // at most, so at or after the first of the last three).
    let ch4 = conn.create_channel().await.unwrap();
    let mut last = consume_from(&ch4, "log", 50, Some(longstr("last"))).await;
    let (off, _, _) = next(&mut last).await;
    assert!((100..103).contains(&off), "last started at {off}");
    // A timestamp or interval before everything: from the first.
    let ch5 = conn.create_channel().await.unwrap();
    let mut ago = consume_from(&ch5, "log", 5, Some(longstr("1h"))).await;
    assert_eq!(next(&mut ago).await.0, 0);
    let ch6 = conn.create_channel().await.unwrap();
    let mut ts = consume_from(&ch6, "log", 5, Some(AMQPValue::Timestamp(0))).await;
    assert_eq!(next(&mut ts).await.0, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn acks_only_return_credit() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "credit", args(&[])).await;
    publish_n(&pubch, "credit", 0, 20).await;
    let ch = conn.create_channel().await.unwrap();
    let mut c = consume_from(&ch, "credit", 5, Some(longstr("first"))).await;
    let mut tags = Vec::new();
    for i in 0..5 {
        let (off, _, tag) = next(&mut c).await;
        assert_eq!(off, i);
        tags.push(tag);
    }
    quiet(&mut c).await;
    // Two acks: two more deliveries.
    ch.basic_ack(tags[1], BasicAckOptions { multiple: true })
        .await
        .unwrap();
    assert_eq!(next(&mut c).await.0, 5);
    assert_eq!(next(&mut c).await.0, 6);
    quiet(&mut c).await;
    // Nothing was removed: the stream still holds all 20.
    let q = common::passive(&pubch, "credit").await.unwrap();
    assert_eq!(q.message_count(), 0, "declare-ok counts none, as RabbitMQ");
    let j = common::get_ok(&s, "/api/queues/%2f/credit").await;
    assert_eq!(j["messages"], 20);
    s.shutdown().await;
}

#[tokio::test]
async fn what_a_stream_refuses() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "r", args(&[])).await;
    publish_n(&pubch, "r", 0, 3).await;
    let q = "queue 'r' in vhost '/'";
    // No consumer prefetch: 406 on the channel.
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .basic_consume(
            "r".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(e),
        (
            406,
            format!("PRECONDITION_FAILED - consumer prefetch count is not set for '{q}'")
        )
    );
    // A bad offset: 406 (RabbitMQ 3.10 crashes the channel with 541).
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut a = FieldTable::default();
    a.insert("x-stream-offset".into(), longstr("bad"));
    let e = ch
        .basic_consume("r".into(), "".into(), BasicConsumeOptions::default(), a)
        .await
        .unwrap_err();
    assert_eq!(refusal(e).0, 406);
    // The 540s close the connection.
    type Op = for<'a> fn(
        &'a Channel,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = lapin::Error> + 'a>>;
    let ops: [(&str, Op); 3] = [
        ("automatic acknowledgement", |ch| {
            Box::pin(async move {
                ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
                let o = BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                ch.basic_consume("r".into(), "".into(), o, FieldTable::default())
                    .await
                    .unwrap_err()
            })
        }),
        ("basic.get", |ch| {
            Box::pin(async move {
                ch.basic_get("r".into(), BasicGetOptions::default())
                    .await
                    .unwrap_err()
            })
        }),
        ("queue.purge", |ch| {
            Box::pin(async move {
                ch.queue_purge("r".into(), QueuePurgeOptions::default())
                    .await
                    .unwrap_err()
            })
        }),
    ];
    for (what, op) in ops {
        let c = common::connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        let (code, text) = refusal(within(op(&ch)).await);
        assert_eq!(code, 540, "{what}: {text}");
        assert_eq!(
            text,
            format!("NOT_IMPLEMENTED - {what} not supported by stream queues {q}")
        );
        common::until_closed(&c).await;
    }
    // A nack (requeue or not) of a stream delivery: 540.
    let c = common::connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let mut cons = consume_from(&ch, "r", 10, Some(longstr("first"))).await;
    let (_, _, tag) = next(&mut cons).await;
    ch.basic_nack(tag, BasicNackOptions::default())
        .await
        .unwrap();
    common::until_closed(&c).await;
    // The management API's purge is refused too (400 with the reason).
    let (status, body) = common::raw_at(
        s.http_addr(),
        "DELETE",
        "/api/queues/%2f/r/contents",
        Some(common::GUEST),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("queue.purge not supported by stream queues"),
        "{body}"
    );
    // The stream is intact.
    let j = common::get_ok(&s, "/api/queues/%2f/r").await;
    assert_eq!(j["messages"], 3);
    s.shutdown().await;
}

#[tokio::test]
async fn retention_drops_whole_old_segments_never_by_consumption() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    let a = args(&[
        ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(2_000)),
        ("x-max-length-bytes", AMQPValue::LongInt(8_000)),
    ]);
    declare(&pubch, "ret", a).await;
    // One at a time: a chunk per sync, segments of about 2,000 bytes.
    for i in 0..200 {
        publish_n(&pubch, "ret", i, 1).await;
    }
    let j = common::get_ok(&s, "/api/queues/%2f/ret").await;
    let st = &j["stream"];
    assert_eq!(j["type"], "stream");
    let first = st["first_offset"].as_u64().unwrap();
    assert!(first > 0, "old segments went: {st}");
    assert_eq!(st["last_offset"], 199);
    assert!(
        st["bytes_on_disk"].as_u64().unwrap() <= 8_000 + 2_000,
        "{st}"
    );
    assert!(st["segments"].as_u64().unwrap() >= 4, "{st}");
    assert_eq!(j["messages"].as_u64().unwrap(), 200 - first);
    // Segment files on disk match.
    let files = std::fs::read_dir(s.data_dir().join("streams"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count() as u64;
    assert_eq!(files, st["segments"].as_u64().unwrap());
    // A consumer from `first` starts at the oldest kept offset.
    let ch = conn.create_channel().await.unwrap();
    let mut c = consume_from(&ch, "ret", 10, Some(longstr("first"))).await;
    assert_eq!(next(&mut c).await.0 as u64, first);
    // Consuming (and acking) everything removes nothing.
    let ch2 = conn.create_channel().await.unwrap();
    let mut all = consume_from(&ch2, "ret", 500, Some(longstr("first"))).await;
    for _ in first..200 {
        let (_, _, tag) = next(&mut all).await;
        ch2.basic_ack(tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    let j = common::get_ok(&s, "/api/queues/%2f/ret").await;
    assert_eq!(j["stream"]["first_offset"].as_u64().unwrap(), first);

    // By age: segments whose newest message is older than x-max-age go
    // when the log next rolls a segment.
    let a = args(&[
        ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(500)),
        ("x-max-age", longstr("1s")),
    ]);
    declare(&pubch, "aged", a).await;
    for i in 0..20 {
        publish_n(&pubch, "aged", i, 1).await;
    }
    let before = common::get_ok(&s, "/api/queues/%2f/aged").await["stream"]["first_offset"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for i in 20..30 {
        publish_n(&pubch, "aged", i, 1).await;
    }
    let st = common::get_ok(&s, "/api/queues/%2f/aged").await["stream"].clone();
    // The segments holding only the first 20 (older than 1 s) went; the
    // one that also holds newer messages stays whole.
    let first = st["first_offset"].as_u64().unwrap();
    assert!(first > 7 && first <= 20, "{before} {st}");
    s.shutdown().await;
}

#[tokio::test]
async fn management_and_prometheus_show_streams() {
    let s: TestBroker = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "shown", args(&[("x-max-age", longstr("7D"))])).await;
    publish_n(&pubch, "shown", 0, 10).await;
    let ch = conn.create_channel().await.unwrap();
    let mut c = consume_from(&ch, "shown", 4, Some(AMQPValue::LongLongInt(3))).await;
    for i in 3..7 {
        assert_eq!(next(&mut c).await.0, i);
    }
    common::eventually(|| async {
        let j = common::get_ok(&s, "/api/queues/%2f/shown").await;
        j["stream"]["consumers"][0]["offset"] == 7
    })
    .await;
    let j = common::get_ok(&s, "/api/queues/%2f/shown").await;
    assert_eq!(j["type"], "stream");
    assert_eq!(j["messages"], 10);
    assert_eq!(j["consumers"], 1);
    let st = &j["stream"];
    assert_eq!(
        (st["first_offset"].as_u64(), st["last_offset"].as_u64()),
        (Some(0), Some(9))
    );
    assert_eq!(st["segments"], 1);
    assert_eq!(st["max_age_ms"], 7 * 24 * 3600 * 1000u64);
    assert_eq!(st["consumers"][0]["credit"], 0);
    let list = common::get_ok(&s, "/api/queues").await;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "shown" && q["type"] == "stream"));
    let (_, m) = common::raw_at(s.prometheus_addr(), "GET", "/metrics/per-object", None, "").await;
    assert!(
        m.contains("warren_stream_committed_offset{vhost=\"/\",queue=\"shown\"} 10"),
        "{m}"
    );
    assert!(m.contains("warren_stream_segments{vhost=\"/\",queue=\"shown\"} 1"));
    s.shutdown().await;
}

#[tokio::test]
async fn deleting_a_stream_cancels_its_consumers_and_removes_its_files() {
    let s = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "gone", args(&[])).await;
    publish_n(&pubch, "gone", 0, 5).await;
    let ch = conn.create_channel().await.unwrap();
    let mut c = consume_from(&ch, "gone", 10, Some(longstr("first"))).await;
    assert_eq!(next(&mut c).await.0, 0);
    let dirs = || {
        std::fs::read_dir(s.data_dir().join("streams"))
            .unwrap()
            .count()
    };
    assert_eq!(dirs(), 1);
    pubch
        .queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    common::wait_until(
        "the stream's files to go",
        Duration::from_secs(10),
        || async { dirs() == 0 },
    )
    .await;
    // The consumer was cancelled: its stream of deliveries ends.
    let end = within(async {
        while let Some(d) = c.next().await {
            d.expect("delivery");
        }
    });
    end.await;
    s.shutdown().await;
}

/// The log is written before confirms and recovered after a kill -9:
/// every confirmed message is there, in order, and offsets go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_kill9() {
    use common::child::start_broker;
    let dir = common::temp_dir("stream-crash");
    let data = dir.path().join("data");
    let mut b = start_broker(dir.path(), &data, 0).await;
    let conn = Connection::connect(&b.url(), Default::default())
        .await
        .unwrap();
    let ch = confirming(&conn).await;
    declare(
        &ch,
        "durable-log",
        args(&[(
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongInt(20_000),
        )]),
    )
    .await;
    publish_n(&ch, "durable-log", 0, 2_000).await;
    b.kill9();
    drop(conn);
    let b = start_broker(dir.path(), &data, 1).await;
    let conn = Connection::connect(&b.url(), Default::default())
        .await
        .unwrap();
    let ch = confirming(&conn).await;
    publish_n(&ch, "durable-log", 2_000, 10).await;
    let rch = conn.create_channel().await.unwrap();
    let mut c = consume_from(&rch, "durable-log", 1_000, Some(longstr("first"))).await;
    for i in 0..2_010 {
        let (off, body, tag) = next(&mut c).await;
        assert_eq!((off, body), (i, format!("m{i}")));
        if i % 100 == 99 {
            rch.basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
}

/// The stream's reader runs only a window ahead of what the consumer's
/// socket takes: a client that stops reading holds the broker to that
/// window (plus what the kernel buffers), not to its prefetch's worth of
/// messages; once it reads again, everything arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_holds_its_reader_to_a_window() {
    use amq_protocol::protocol::{basic, AMQPClass};
    use common::raw_amqp::Raw;
    const N: usize = 400;
    const SIZE: usize = 64 * 1024;
    let s: TestBroker = common::start().await;
    let conn = common::connect(&s).await;
    let pubch = confirming(&conn).await;
    declare(&pubch, "windowed", args(&[])).await;
    let mut confirms = Vec::new();
    for i in 0..N {
        let mut body = vec![b'x'; SIZE];
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let c = pubch
            .basic_publish(
                "".into(),
                "windowed".into(),
                BasicPublishOptions::default(),
                &body,
                Default::default(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        assert!(within(c).await.unwrap().is_ack());
    }

    // A raw consumer with a small receive buffer and credit for all N.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut r = Raw {
        s: sock.connect(s.amqp_addr()).await.unwrap(),
        buf: Default::default(),
    };
    r.start().await;
    r.start_ok("guest", "guest", true).await;
    r.tune_open_ok("/").await;
    r.open_channel(1).await;
    r.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: N as u16,
            global: false,
        })),
    )
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
    ));
    let mut first = FieldTable::default();
    first.insert("x-stream-offset".into(), longstr("first"));
    r.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "windowed".into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: first,
        })),
    )
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
    ));

    // Not reading: the reader's position settles well short of N (its
    // window is at most 1 MiB; the rest is what the kernel buffers).
    let position = || async {
        common::get_ok(&s, "/api/queues/%2f/windowed").await["stream"]["consumers"][0]["offset"]
            .as_u64()
    };
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (None, std::time::Instant::now());
    loop {
        let p = position().await;
        if p != last {
            (last, since) = (p, std::time::Instant::now());
        } else if p.is_some() && since.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(std::time::Instant::now() < end, "the reader never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = last.unwrap();
    assert!(
        held < (N / 2) as u64,
        "the reader ran {held} messages ahead of a client that reads nothing"
    );

    // Reading again: all N arrive, in order.
    let mut got = 0usize;
    while got < N {
        let f = r.frame().await.expect("a frame");
        if f.kind == warren::amqp::codec::FRAME_BODY {
            // Each body is one frame, starting with its index.
            assert_eq!(f.payload[..8], (got as u64).to_be_bytes());
            got += 1;
        }
    }
    assert_eq!(position().await, Some(N as u64));
    s.shutdown().await;
}
