//! Misbehaving clients, over a raw socket: bad headers, oversized and
//! malformed frames, frames out of order, wrong channels, heartbeats,
//! failed logins. Each checks the exact close code RabbitMQ sends, and
//! that the broker keeps serving other connections.

mod common;
use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::raw_amqp::*;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::amqp::codec;

impl Raw {
    /// A full handshake with the given tune-ok values; opens channel 1.
    async fn open(s: &warren::server::Server, frame_max: u32, heartbeat: u16) -> Raw {
        let mut r = Raw::login(s).await;
        let tune = match r.method().await {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (tune.channel_max, tune.frame_max, tune.heartbeat),
            (2047, 131072, 60)
        );
        r.method_out(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 10,
                frame_max,
                heartbeat,
            })),
        )
        .await;
        r.method_out(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        assert!(matches!(
            r.method().await,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ));
        r.open_channel(1).await;
        r
    }
}

/// The broker still serves a well-behaved client.
async fn still_serving(s: &warren::server::Server) {
    let c = connect(s).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("".into(), Default::default(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn wrong_protocol_header_gets_ours_back_and_close() {
    let s = start().await;
    let mut r = Raw::connect(&s).await;
    r.send(b"AMQP\x00\x00\x08\x00").await;
    let mut got = Vec::new();
    within(r.s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, codec::PROTOCOL_HEADER);
    let mut r = Raw::connect(&s).await;
    r.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut got = Vec::new();
    within(r.s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, codec::PROTOCOL_HEADER);
    still_serving(&s).await;
}

#[tokio::test]
async fn connection_start_has_server_properties_and_capabilities() {
    let s = start().await;
    let mut r = Raw::connect(&s).await;
    let start = r.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");
    assert_eq!(start.locales.to_string(), "en_US");
    let p = start.server_properties.inner();
    for key in [
        "product",
        "version",
        "platform",
        "cluster_name",
        "copyright",
        "information",
    ] {
        assert!(p.contains_key(key), "{key}");
    }
    let AMQPValue::FieldTable(caps) = &p["capabilities"] else {
        panic!()
    };
    for cap in [
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
        "connection.blocked",
        "consumer_priorities",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
}

#[tokio::test]
async fn failed_login_closes_with_403_or_drops_the_socket() {
    let s = start().await;
    let mut r = Raw::connect(&s).await;
    r.start().await;
    r.start_ok("guest", "nope", true).await;
    let text = r.expect_close_code(403).await;
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    // Without the capability RabbitMQ just closes the socket.
    let mut r = Raw::connect(&s).await;
    r.start().await;
    r.start_ok("nobody", "nope", false).await;
    r.expect_eof().await;
    still_serving(&s).await;
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let s = start().await;
    let mut r = Raw::connect(&s).await;
    r.start().await;
    r.start_ok("guest", "guest", true).await;
    r.method().await; // tune
    r.method_out(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 0,
        })),
    )
    .await;
    r.method_out(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "nowhere".into(),
        })),
    )
    .await;
    assert_eq!(
        r.expect_close_code(530).await,
        "NOT_ALLOWED - vhost nowhere not found"
    );
}

#[tokio::test]
async fn oversized_frame_is_501_before_its_payload_arrives() {
    let s = start().await;
    let mut r = Raw::open(&s, 4096, 0).await;
    // Only the 7-byte header of a 1 MB frame: the broker must refuse it
    // from the header alone, without waiting for the payload.
    let mut h = vec![codec::FRAME_METHOD, 0, 1];
    h.extend_from_slice(&(1_000_000u32).to_be_bytes());
    r.send(&h).await;
    let text = r.expect_close_code(501).await;
    assert!(text.starts_with("FRAME_ERROR"), "{text}");
    still_serving(&s).await;
}

#[tokio::test]
async fn bad_frame_end_is_501() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 0).await;
    let mut f = frame_bytes(codec::FRAME_HEARTBEAT, 0, &[]);
    *f.last_mut().unwrap() = 0x00;
    r.send(&f).await;
    r.expect_close_code(501).await;
}

#[tokio::test]
async fn method_on_a_closed_channel_is_504() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 0).await;
    r.method_out(
        5,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "x".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    assert_eq!(
        r.expect_close_code(504).await,
        "CHANNEL_ERROR - expected 'channel.open'"
    );
}

#[tokio::test]
async fn content_frames_out_of_order_are_505() {
    let s = start().await;
    // A content header with no publish before it.
    let mut r = Raw::open(&s, 131072, 0).await;
    let mut hdr = vec![0, 60, 0, 0];
    hdr.extend_from_slice(&5u64.to_be_bytes());
    hdr.extend_from_slice(&[0, 0]);
    r.send(&frame_bytes(codec::FRAME_HEADER, 1, &hdr)).await;
    assert_eq!(
        r.expect_close_code(505).await,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
    // A body where the content header belongs.
    let mut r = Raw::open(&s, 131072, 0).await;
    r.send(&frame_bytes(
        codec::FRAME_METHOD,
        1,
        &[0, 60, 0, 40, 0, 0, 0, 1, b'q', 0],
    ))
    .await;
    r.send(&frame_bytes(codec::FRAME_BODY, 1, b"hello")).await;
    assert_eq!(
        r.expect_close_code(505).await,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn prefetch_size_is_540_like_rabbitmq() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 0).await;
    // basic.qos prefetch_size=10, prefetch_count=1, global=false
    r.send(&frame_bytes(
        codec::FRAME_METHOD,
        1,
        &[0, 60, 0, 10, 0, 0, 0, 10, 0, 1, 0],
    ))
    .await;
    assert_eq!(
        r.expect_close_code(540).await,
        "NOT_IMPLEMENTED - prefetch_size!=0 (10)"
    );
}

#[tokio::test]
async fn malformed_method_arguments_do_not_hurt_anyone_else() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 0).await;
    // queue.declare whose queue name claims 200 bytes but has 3.
    r.send(&frame_bytes(
        codec::FRAME_METHOD,
        1,
        &[0, 50, 0, 10, 0, 0, 200, b'a', b'b', b'c'],
    ))
    .await;
    let text = r.expect_close_code(502).await;
    assert!(text.starts_with("SYNTAX_ERROR"), "{text}");
    // Random garbage after a good handshake.
    let mut r = Raw::open(&s, 131072, 0).await;
    r.send(&[1, 0, 1, 0, 0, 0, 2, 0xff, 0xff, codec::FRAME_END])
        .await;
    r.expect_close_code(502).await;
    let mut r = Raw::open(&s, 131072, 0).await;
    r.send(&[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]).await;
    r.expect_close_code(501).await;
    still_serving(&s).await;
}

#[tokio::test]
async fn frames_after_channel_close_are_dropped_until_close_ok() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 0).await;
    // basic.get on a missing queue: 404 closes channel 1.
    r.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "missing".into(),
            no_ack: true,
        })),
    )
    .await;
    match r.method().await {
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
            assert_eq!(c.reply_code, 404);
            assert_eq!(
                c.reply_text.as_str(),
                "NOT_FOUND - no queue 'missing' in vhost '/'"
            );
            assert_eq!((c.class_id, c.method_id), (60, 70));
        }
        other => panic!("{other:?}"),
    }
    // Ignored: the channel is closing.
    r.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "missing".into(),
            no_ack: true,
        })),
    )
    .await;
    r.method_out(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    r.method_out(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert!(
        matches!(
            r.method().await,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
        ),
        "the ignored get produced nothing; the channel reopens"
    );
}

#[tokio::test]
async fn client_close_gets_close_ok_and_after_close_only_close_ok_counts() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 0).await;
    r.method_out(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
    ));
    // The broker reads on until the client closes (tests/wire_compat.rs).
    r.s.shutdown().await.unwrap();
    r.expect_eof().await;
}

#[tokio::test]
async fn heartbeats_are_sent_and_silent_peers_dropped() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 1).await;
    let started = std::time::Instant::now();
    // The broker sends heartbeats on an idle connection...
    let f = r.frame().await.expect("a heartbeat");
    assert_eq!(f.kind, codec::FRAME_HEARTBEAT);
    // ...and drops us after two silent intervals.
    r.expect_eof().await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
}

#[tokio::test]
async fn a_client_that_answers_heartbeats_stays_connected() {
    let s = start().await;
    let mut r = Raw::open(&s, 131072, 1).await;
    let hb = frame_bytes(codec::FRAME_HEARTBEAT, 0, &[]);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.send(&hb).await;
    }
    // Still open: a request gets its answer.
    r.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
    ));
}

/// A field table nested `depth` levels deep (`{"a": {"a": ...}}`), encoded
/// by hand: 7 bytes a level, so a frame can carry thousands of levels.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut t = 0u32.to_be_bytes().to_vec();
    for _ in 0..depth {
        let mut outer = Vec::with_capacity(t.len() + 7);
        outer.extend_from_slice(&((t.len() + 3) as u32).to_be_bytes());
        outer.extend_from_slice(&[1, b'a', b'F']);
        outer.extend_from_slice(&t);
        t = outer;
    }
    t
}

/// One frame of `kind` on `channel` around `payload`.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

#[tokio::test]
async fn deeply_nested_tables_are_refused_not_a_crash() {
    let s = start().await;
    // queue.declare with arguments nested 15,000 deep (105 KB, under
    // frame_max): parsing it recursively would overflow the stack and take
    // the whole broker down.
    let mut r = Raw::open(&s, 131072, 0).await;
    let mut p = Vec::new();
    p.extend_from_slice(&50u16.to_be_bytes());
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&[4, b'd', b'e', b'e', b'p', 0]);
    p.extend_from_slice(&nested_table(15_000));
    r.send(&raw_frame(1, 1, &p)).await;
    // A syntax error, as for any frame the broker cannot decode.
    r.expect_close_code(502).await;

    // The same depth in a message's headers: refused like malformed
    // properties (541, as RabbitMQ), before anything decodes them.
    let mut r = Raw::open(&s, 131072, 0).await;
    publish_with_headers(&mut r, &nested_table(15_000)).await;
    r.expect_close_code(541).await;

    // 60 levels (within the limit) are delivered and rendered by the API.
    let mut r = Raw::open(&s, 131072, 0).await;
    r.method_out(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "deep-h".into(),
            ..Default::default()
        })),
    )
    .await;
    r.method().await;
    publish_with_headers(&mut r, &nested_table(60)).await;
    for (method, path, body) in [
        ("GET", "/api/queues/%2F/deep-h/peek", ""),
        (
            "POST",
            "/api/queues/%2F/deep-h/get",
            r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}"#,
        ),
    ] {
        // The publish is asynchronous: wait until the message is queued.
        let mut got = (0, String::new());
        for _ in 0..100 {
            got = raw(&s, method, path, Some(GUEST), body).await;
            if got.1.contains("\"payload\":\"x\"") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got.0, 200, "{path}: {}", got.1);
        assert!(
            got.1.contains("\"headers\":{\"a\":{\"a\""),
            "{path}: {}",
            got.1
        );
    }
    still_serving(&s).await;
}

/// basic.publish of a one-byte body "x" to queue deep-h with `headers` (a
/// raw field table) as its only property.
async fn publish_with_headers(r: &mut Raw, headers: &[u8]) {
    r.method_out(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "deep-h".into(),
            ..Default::default()
        })),
    )
    .await;
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&0x2000u16.to_be_bytes()); // headers only
    header.extend_from_slice(headers);
    r.send(&raw_frame(2, 1, &header)).await;
    r.send(&raw_frame(3, 1, b"x")).await;
}
