//! Wire behaviour that must match RabbitMQ 3.10 (issue 10): unbinding
//! what is gone, closing handshakes, pipelined frames, batched confirms,
//! channel_max, tune-ok limits, reply codes, malformed properties, the
//! nesting limit of stored arguments, and tx.commit-ok after the flush.
//! Each expectation below was checked against a RabbitMQ 3.10.8 broker;
//! the tests themselves only talk to Warren.

mod common;
use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::child::start_broker;
use common::raw_amqp::*;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::amqp::codec;

fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Vec<u8> {
    method_bytes(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        })),
    )
}

fn open_vhost() -> Vec<u8> {
    method_bytes(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
}

fn declare(ch: u16, name: &str) -> Vec<u8> {
    method_bytes(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            ..Default::default()
        })),
    )
}

/// basic.publish to the default exchange, with a raw property list.
fn publish_bytes(ch: u16, routing_key: &str, properties: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = method_bytes(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            ..Default::default()
        })),
    );
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(properties);
    v.extend(frame_bytes(codec::FRAME_HEADER, ch, &header));
    if !body.is_empty() {
        v.extend(frame_bytes(codec::FRAME_BODY, ch, body));
    }
    v
}

fn connection_close() -> Vec<u8> {
    method_bytes(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

impl Raw {
    /// A whole handshake with the given tune-ok values; no channel open.
    async fn open(s: &warren::server::Server, channel_max: u16, heartbeat: u16) -> Raw {
        let mut r = Raw::login(s).await;
        assert!(matches!(
            r.method().await,
            AMQPClass::Connection(connection::AMQPMethod::Tune(_))
        ));
        r.send(&tune_ok(channel_max, 131072, heartbeat)).await;
        r.send(&open_vhost()).await;
        assert!(matches!(
            r.method().await,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ));
        r
    }

    /// The client's connection.close, which the broker answers with close-ok.
    async fn client_close(&mut self) {
        self.send(&connection_close()).await;
        assert!(matches!(
            self.method().await,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
        ));
    }
}

// --- 1. Unbinding what is gone ------------------------------------------

#[tokio::test]
async fn unbinding_a_missing_queue_or_exchange_is_unbind_ok() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let q = uniq("wire-unbind-q");
    ch.queue_declare(q.as_str().into(), Default::default(), Default::default())
        .await
        .unwrap();
    let t = FieldTable::default;
    // queue.unbind: missing queue, missing exchange, both, no such binding.
    for (queue, exchange) in [
        ("wire-no-such-queue", "amq.direct"),
        (q.as_str(), "wire-no-such-exchange"),
        ("wire-no-such-queue", "wire-no-such-exchange"),
        (q.as_str(), "amq.direct"),
    ] {
        ch.queue_unbind(queue.into(), exchange.into(), "rk".into(), t())
            .await
            .unwrap_or_else(|e| panic!("unbind {queue} from {exchange}: {e}"));
    }
    // exchange.unbind: missing destination, missing source, both.
    for (dst, src) in [
        ("wire-no-such-dst", "amq.direct"),
        ("amq.fanout", "wire-no-such-src"),
        ("wire-no-such-dst", "wire-no-such-src"),
    ] {
        ch.exchange_unbind(dst.into(), src.into(), "rk".into(), Default::default(), t())
            .await
            .unwrap_or_else(|e| panic!("unbind {dst} from {src}: {e}"));
    }
    // The client-library pattern: an auto-delete queue goes with its
    // last consumer, then cleanup code unbinds it.
    let auto = uniq("wire-unbind-auto");
    let opts = lapin::options::QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(auto.as_str().into(), opts, t())
        .await
        .unwrap();
    ch.queue_bind(
        auto.as_str().into(),
        "amq.topic".into(),
        "rk".into(),
        Default::default(),
        t(),
    )
    .await
    .unwrap();
    ch.basic_consume(auto.as_str().into(), "ctag".into(), Default::default(), t())
        .await
        .unwrap();
    ch.basic_cancel("ctag".into(), Default::default())
        .await
        .unwrap();
    eventually(|| {
        let c = &c;
        let auto = auto.clone();
        async move {
            let probe = c.create_channel().await.unwrap();
            passive(&probe, &auto).await.is_err()
        }
    })
    .await;
    ch.queue_unbind(auto.as_str().into(), "amq.topic".into(), "rk".into(), t())
        .await
        .unwrap();
    // The channel is still open.
    passive(&ch, &q).await.unwrap();
    // The default exchange is still off limits (403), gone queue or not.
    let err = ch
        .queue_unbind("wire-no-such-queue".into(), "".into(), "rk".into(), t())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("ACCESS_REFUSED - operation not permitted on the default exchange"),
        "{err}"
    );
    let _ = c.close(200, "bye".into()).await;
    s.shutdown().await;
}

// --- 2. Closing handshakes ----------------------------------------------

/// Writes `n` publishes to a queue that does not exist, `gap` apart; every
/// write must succeed (no EPIPE, no reset).
async fn keep_publishing(r: &mut Raw, n: usize, gap: Duration) {
    let p = publish_bytes(1, "wire-nowhere", &[0, 0], b"in flight");
    for i in 0..n {
        if let Err(e) = r.s.write_all(&p).await {
            panic!("write {i} after close failed: {e}");
        }
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test]
async fn after_close_ok_frames_are_read_and_dropped_until_the_client_closes() {
    let s = start().await;
    let mut r = Raw::open(&s, 2047, 0).await;
    r.open_channel(1).await;
    // connection.close with publishes right behind it, as a client with
    // publishes in flight sends them.
    let mut burst = connection_close();
    burst.extend(publish_bytes(1, "wire-nowhere", &[0, 0], b"x"));
    r.send(&burst).await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
    ));
    // The broker keeps reading: later writes do not fail.
    keep_publishing(&mut r, 20, Duration::from_millis(25)).await;
    // Even a broken frame gets no connection.close now.
    r.send(&[9, 9, 9, 9, 9, 9, 9, 9, 9]).await;
    // Nothing more comes (the publishes are dropped) until we close.
    let mut more = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), r.s.read(&mut more)).await;
    assert!(early.is_err(), "the broker sent or closed early: {early:?}");
    r.s.shutdown().await.unwrap();
    let n = within(r.s.read(&mut more)).await.unwrap_or(0);
    assert_eq!(n, 0, "EOF once the client has closed");
    s.shutdown().await;
}

#[tokio::test]
async fn a_closed_connection_that_the_api_closes_goes_at_once() {
    let s = start().await;
    let mut r = Raw::open(&s, 2047, 0).await;
    r.client_close().await;
    // Still listed while the broker waits for the client's EOF.
    let conns = api(&s).list_connections().await.unwrap();
    assert_eq!(conns.len(), 1);
    api(&s)
        .close_connection(&conns[0].name, Some("maintenance"), false)
        .await
        .unwrap();
    // No connection.close after close-ok: just the end of the socket.
    assert!(r.frame().await.is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn after_a_server_close_frames_are_dropped_until_close_ok() {
    let s = start().await;
    let mut r = Raw::open(&s, 2047, 0).await;
    r.open_channel(1).await;
    // A channel method on channel 0: the broker closes the connection.
    r.send(&channel_open(0)).await;
    let close = loop {
        if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = r.method().await {
            break c;
        }
    };
    assert_eq!(close.reply_code, 504);
    keep_publishing(&mut r, 10, Duration::from_millis(25)).await;
    r.send(&close_ok()).await;
    // close-ok ends it at once.
    let started = Instant::now();
    assert!(r.frame().await.is_none(), "EOF after close-ok");
    assert!(started.elapsed() < Duration::from_secs(2));
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_closes_its_socket_is_dropped_after_the_heartbeat_interval() {
    let s = start().await;
    // RabbitMQ waits for the client's EOF for the heartbeat interval when
    // it is under 30 s.
    let mut r = Raw::open(&s, 2047, 1).await;
    r.client_close().await;
    let started = Instant::now();
    while let Some(f) = r.frame().await {
        assert_eq!(f.kind, codec::FRAME_HEARTBEAT, "{f:?}");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    s.shutdown().await;
}

// --- 3. Frames pipelined behind connection.open --------------------------

#[tokio::test]
async fn frames_pipelined_behind_connection_open_are_handled_at_once() {
    let s = start().await;
    let mut r = Raw::login(&s).await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Connection(connection::AMQPMethod::Tune(_))
    ));
    // Heartbeats off, so nothing else would wake the broker up.
    let q = uniq("wire-pipelined");
    let mut burst = tune_ok(2047, 131072, 0);
    burst.extend(open_vhost());
    burst.extend(channel_open(1));
    burst.extend(declare(1, &q));
    r.send(&burst).await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
    ));
    assert!(matches!(
        r.method().await,
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
    ));
    match r.method().await {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(d)) => assert_eq!(d.queue.as_str(), q),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

// --- 4. Confirms of transient messages ----------------------------------

#[tokio::test]
async fn confirms_of_transient_messages_are_batched_and_cover_every_tag_once() {
    const N: u64 = 640;
    let s = start().await;
    let mut r = Raw::open(&s, 2047, 0).await;
    r.open_channel(1).await;
    let q = uniq("wire-confirms");
    r.send(&declare(1, &q)).await;
    r.method().await;
    r.send(&method_bytes(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    ))
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
    ));
    // One burst of non-persistent publishes.
    let mut burst = Vec::new();
    for _ in 0..N {
        burst.extend(publish_bytes(1, &q, &[0, 0], b"transient"));
    }
    r.send(&burst).await;
    let (mut covered, mut acks) = (0u64, 0u64);
    while covered < N {
        match r.method().await {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                acks += 1;
                assert!(
                    a.delivery_tag > covered,
                    "tags go up: {a:?} after {covered}"
                );
                if !a.multiple {
                    assert_eq!(a.delivery_tag, covered + 1, "a single ack skips no tag");
                }
                covered = a.delivery_tag;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(covered, N, "every tag confirmed, none beyond");
    assert!(acks < N, "{acks} acks for {N} publishes: not batched");
    s.shutdown().await;
}

// --- 5. channel_max ------------------------------------------------------

#[tokio::test]
async fn channel_max_counts_open_channels_not_channel_ids() {
    let s = start().await;
    // Any id may be opened, 65535 included.
    let mut r = Raw::open(&s, 2047, 0).await;
    r.open_channel(65535).await;
    // With channel_max 2, the third open channel is refused.
    let mut r = Raw::open(&s, 2, 0).await;
    r.open_channel(65535).await;
    r.open_channel(1).await;
    r.send(&method_bytes(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "".into(),
            class_id: 0,
            method_id: 0,
        })),
    ))
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
    ));
    // A closed channel no longer counts.
    r.open_channel(3).await;
    r.send(&channel_open(7)).await;
    assert_eq!(
        r.expect_close().await,
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
                .to_owned(),
            0,
            0
        )
    );
    assert!(r.frame().await.is_none(), "the connection is closed");
    s.shutdown().await;
}

// --- 6. tune-ok limits ---------------------------------------------------

/// A tune-ok the server refuses: RabbitMQ logs it, waits 3 s and closes
/// the socket without a connection.close.
async fn refused_tune_ok(s: &warren::server::Server, channel_max: u16, frame_max: u32) {
    let mut r = Raw::login(s).await;
    r.method().await; // tune
    r.send(&tune_ok(channel_max, frame_max, 0)).await;
    let started = Instant::now();
    let f = r.frame().await;
    assert!(f.is_none(), "({channel_max}, {frame_max}): {f:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "({channel_max}, {frame_max}) closed after {waited:?}"
    );
}

#[tokio::test]
async fn tune_ok_outside_the_servers_limits_is_refused() {
    let s = start().await; // channel_max 2047, frame_max 131072
    tokio::join!(
        refused_tune_ok(&s, 0, 131072),
        refused_tune_ok(&s, 2048, 131072),
        refused_tune_ok(&s, 2047, 0),
        refused_tune_ok(&s, 2047, 131073),
        refused_tune_ok(&s, 2047, 4095),
    );
    // The limits themselves are fine.
    let mut r = Raw::open(&s, 2047, 0).await;
    r.open_channel(1).await;
    s.shutdown().await;
    // Without a server limit, "no limit" is accepted.
    let s = start_with(|c| c.amqp.channel_max = 0).await;
    let mut r = Raw::open(&s, 0, 0).await;
    r.open_channel(1).await;
    s.shutdown().await;
}

// --- 7. Reply codes ------------------------------------------------------

#[tokio::test]
async fn misplaced_methods_and_frames_get_rabbitmqs_codes() {
    let s = start().await;
    let running = "CHANNEL_ERROR - unexpected method in connection state running";
    // A channel-class method on channel 0.
    let mut r = Raw::open(&s, 2047, 0).await;
    r.send(&channel_open(0)).await;
    assert_eq!(r.expect_close().await, (504, running.into(), 20, 10));
    // A second connection.open.
    let mut r = Raw::open(&s, 2047, 0).await;
    r.send(&open_vhost()).await;
    assert_eq!(r.expect_close().await, (504, running.into(), 10, 40));
    // A heartbeat on a channel, open or not.
    for open in [true, false] {
        let mut r = Raw::open(&s, 2047, 0).await;
        if open {
            r.open_channel(1).await;
        }
        r.send(&frame_bytes(codec::FRAME_HEARTBEAT, 1, &[])).await;
        assert_eq!(
            r.expect_close().await,
            (
                505,
                "UNEXPECTED_FRAME - type 8, all octets = <<>>".into(),
                0,
                0
            )
        );
    }
    // A content header on channel 0.
    let mut r = Raw::open(&s, 2047, 0).await;
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    r.send(&frame_bytes(codec::FRAME_HEADER, 0, &h)).await;
    assert_eq!(
        r.expect_close().await,
        (
            505,
            "UNEXPECTED_FRAME - type 2, all octets = <<0,60,0,0,0,0,0,0,0,0,0,0,0,0>>".into(),
            0,
            0
        )
    );
    s.shutdown().await;
}

// --- 8. Malformed properties --------------------------------------------

#[tokio::test]
async fn malformed_properties_are_refused_not_forwarded() {
    let s = start().await;
    let q = uniq("wire-badprops");
    let headers = |table: &[u8]| {
        let mut p = 0x2000u16.to_be_bytes().to_vec();
        p.extend_from_slice(&(table.len() as u32).to_be_bytes());
        p.extend_from_slice(table);
        p
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a long string claiming more bytes than the table holds",
            headers(&[1, b'k', b'S', 0, 0, 0, 100, b'a', b'b', b'c']),
        ),
        ("an unknown field type", headers(&[1, b'k', b'Z', 1, 2, 3])),
        (
            "an array whose item overruns it",
            headers(&[1, b'k', b'A', 0, 0, 0, 2, b'I', 0]),
        ),
        ("a key longer than the table", headers(&[5, b'k'])),
        ("a table longer than the frame", {
            let mut p = 0x2000u16.to_be_bytes().to_vec();
            p.extend_from_slice(&[0, 0, 0, 100, 1, b'k']);
            p
        }),
        (
            "bytes after the last property",
            vec![0x10, 0x00, 2, b'z', b'z'],
        ),
        ("a continuation flag word", vec![0x10, 0x01, 0x00, 0x00, 2]),
    ];
    for (what, props) in cases {
        let mut r = Raw::open(&s, 2047, 0).await;
        r.open_channel(1).await;
        r.send(&declare(1, &q)).await;
        r.method().await;
        r.send(&publish_bytes(1, &q, &props, b"x")).await;
        assert_eq!(
            r.expect_close().await,
            (541, "INTERNAL_ERROR".into(), 0, 0),
            "{what}"
        );
    }
    // Nothing of them was queued; a well-formed message still goes through.
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        Default::default(),
        b"ok",
        lapin::BasicProperties::default().with_headers({
            let mut h = FieldTable::default();
            h.insert("k".into(), AMQPValue::LongString("abc".into()));
            h
        }),
    )
    .await
    .unwrap();
    eventually(|| {
        let ch = ch.clone();
        let q = q.clone();
        async move { passive(&ch, &q).await.unwrap().message_count() == 1 }
    })
    .await;
    s.shutdown().await;
}

// --- 10. tx.commit-ok after the acks are durable -------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_ok_comes_after_the_settled_acks_are_on_disk() {
    use futures_lite::stream::StreamExt;
    use lapin::options::*;
    const N: usize = 1000;
    const PER_COMMIT: usize = 10;
    let work = temp_dir("wire-tx");
    let data = work.join("data");
    let q = "wire-tx-acks";
    let mut b = start_broker(&work, &data, 0).await;
    let conn = lapin::Connection::connect(&b.url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.into(), durable, Default::default())
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for i in 0..N {
        ch.basic_publish(
            "".into(),
            q.into(),
            Default::default(),
            format!("m{i}").as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    }
    within(ch.wait_for_confirms()).await.unwrap();
    // A transaction that only settles: acks, committed in groups.
    let tx = conn.create_channel().await.unwrap();
    tx.tx_select().await.unwrap();
    tx.basic_qos(100, Default::default()).await.unwrap();
    let mut consumer = tx
        .basic_consume(q.into(), "c".into(), Default::default(), Default::default())
        .await
        .unwrap();
    for n in 1..=N {
        let d = within(consumer.next()).await.unwrap().unwrap();
        d.ack(Default::default()).await.unwrap();
        if n % PER_COMMIT == 0 {
            within(tx.tx_commit()).await.unwrap();
        }
    }
    // Every ack is committed: none may come back after a crash.
    b.kill9();
    drop(consumer);
    drop(conn);
    let b = start_broker(&work, &data, 1).await;
    let conn = lapin::Connection::connect(&b.url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let left = passive(&ch, q).await.unwrap().message_count();
    assert_eq!(left, 0, "{left} committed acks were lost by the crash");
    drop(b);
    let _ = std::fs::remove_dir_all(&work);
}

// --- 9. One nesting limit; unreadable definitions stop the start ---------

/// `{"a": {"a": ... {}}}`, `depth` tables deep (the outer one counts).
fn nested_args(depth: usize) -> FieldTable {
    let mut t = FieldTable::default();
    for _ in 1..depth {
        let mut o = FieldTable::default();
        o.insert("a".into(), AMQPValue::FieldTable(t));
        t = o;
    }
    t
}

/// The same as management API JSON.
fn nested_json(depth: usize) -> String {
    let mut s = "{}".to_owned();
    for _ in 1..depth {
        s = format!("{{\"a\":{s}}}");
    }
    s
}

#[tokio::test]
async fn the_deepest_accepted_arguments_survive_a_restart_and_deeper_are_refused() {
    use lapin::options::*;
    const MAX: usize = 64; // tables, the arguments table included
    let dir = temp_dir("wire-deep");
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("wire-deep-amqp".into(), durable, nested_args(MAX))
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "wire-deep-amqp".into(),
            Default::default(),
            b"kept",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    within(confirm).await.unwrap();
    // The management API takes the same depth, and not one level more.
    let (status, body) = raw(
        &s,
        "PUT",
        "/api/queues/%2F/wire-deep-http",
        Some(GUEST),
        &format!("{{\"durable\":true,\"arguments\":{}}}", nested_json(MAX)),
    )
    .await;
    assert!(status == 201 || status == 204, "{status} {body}");
    let (status, body) = raw(
        &s,
        "PUT",
        "/api/queues/%2F/wire-too-deep",
        Some(GUEST),
        &format!(
            "{{\"durable\":true,\"arguments\":{}}}",
            nested_json(MAX + 1)
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("arguments nest more than 64 levels deep"),
        "{body}"
    );
    // So does a binding's arguments table.
    let (status, body) = raw(
        &s,
        "POST",
        "/api/bindings/%2F/e/amq.direct/q/wire-deep-http",
        Some(GUEST),
        &format!(
            "{{\"routing_key\":\"k\",\"arguments\":{}}}",
            nested_json(MAX + 1)
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let _ = c.close(200, "bye".into()).await;
    s.shutdown().await;

    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let q = passive(&ch, "wire-deep-amqp")
        .await
        .expect("the queue is still there");
    assert_eq!(q.message_count(), 1, "with its message");
    passive(&ch, "wire-deep-http").await.unwrap();
    let _ = c.close(200, "bye".into()).await;
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreadable_definition_stops_the_start_and_names_it() {
    use lapin::options::*;
    let dir = temp_dir("wire-corrupt");
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("wire-corrupt-q".into(), durable, Default::default())
        .await
        .unwrap();
    let _ = c.close(200, "bye".into()).await;
    s.shutdown().await;
    // Damage the queue's definition record.
    {
        let disk = warren_queues::Disk::open(&dir, 1 << 20).unwrap();
        let defs = disk.db().open_tree("definitions").unwrap();
        let key = defs
            .scan_prefix([b'q'])
            .keys()
            .map(|k| k.unwrap())
            .find(|k| k.ends_with(b"wire-corrupt-q"))
            .expect("the queue's definition");
        defs.insert(key, &b"{\"id\": 3, \"arguments\": [["[..])
            .unwrap();
        disk.db().flush().unwrap();
    }
    let cfg = test_config(&dir);
    let err = match warren::server::start(&cfg).await {
        Ok(s) => {
            s.shutdown().await;
            panic!("started with an unreadable definition");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("unreadable queue 'wire-corrupt-q' in vhost '/'"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
