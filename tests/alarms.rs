//! Resource alarms with real clients: a memory high watermark or free disk
//! limit crossed blocks every connection that publishes (connection.blocked
//! with RabbitMQ's reason, nothing more read from it) while consumers keep
//! draining; connection.unblocked once it clears. The management API,
//! its health checks and Prometheus report the alarms.
//!
//! The watermark is set as rabbit.toml sets it and changed at run time
//! through the broker (RabbitMQ's `rabbitmqctl
//! set_vm_memory_high_watermark`), so no test depends on how much memory
//! the test process happens to use. `alarms_child.rs` pushes a real
//! broker process over a real watermark with a backlog.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Connection, Event};
use std::time::Duration;
use warren::broker::{DiskFreeLimit, MemoryWatermark};
use warren::config::{Bytes, Config};

/// The next connection.blocked / unblocked event lapin reports.
async fn next_block_event(events: &mut (impl futures_lite::Stream<Item = Event> + Unpin)) -> Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(e @ (Event::ConnectionBlocked(_) | Event::ConnectionUnblocked)) => return e,
                Some(_) => continue,
                None => panic!("the connection's events ended"),
            }
        }
    })
    .await
    .expect("a connection.blocked or connection.unblocked within 10 s")
}

/// The `state` /api/connections shows for the connection whose client
/// port is `port`.
async fn conn_state(s: &TestBroker, port: u16) -> String {
    let list = get_ok(s, "/api/connections").await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer_port"].as_u64() == Some(port.into()))
        .map(|c| c["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// The local ports of the broker's connections, oldest first.
async fn conn_ports(s: &TestBroker) -> Vec<u16> {
    let list = get_ok(s, "/api/connections").await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer_port"].as_u64().unwrap() as u16)
        .collect()
}

async fn wait_state(s: &TestBroker, port: u16, want: &str) {
    wait_until(
        &format!("connection {port} to be {want}"),
        Duration::from_secs(10),
        || async { conn_state(s, port).await == want },
    )
    .await;
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_and_lets_consumers_drain() {
    let s = start().await;
    let q = "alarm-backlog";
    // A consumer's connection (it never publishes) and a backlog for it.
    let cc = connect(&s).await;
    let cch = cc.create_channel().await.unwrap();
    queue(&cch, q, false).await;
    for i in 0..100u32 {
        publish(&cch, "", q, format!("before-{i}").as_bytes()).await;
    }
    wait_until("the backlog", Duration::from_secs(10), || async {
        passive(&cch, q).await.unwrap().message_count() == 100
    })
    .await;
    let consumer_port = conn_ports(&s).await[0];

    // The publisher's connection.
    let pc = connect(&s).await;
    let mut events = pc.events_listener();
    let pch = pc.create_channel().await.unwrap();
    let publisher_port = conn_ports(&s).await[1];

    // Under the watermark (1 byte): both connections are "blocking".
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    wait_state(&s, consumer_port, "blocking").await;
    wait_state(&s, publisher_port, "blocking").await;

    // The first publish blocks the publisher: it is told why and nothing
    // more is read from it, so the message does not reach the queue.
    pch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        b"held",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    match next_block_event(&mut events).await {
        Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on memory"),
        e => panic!("expected connection.blocked, got {e:?}"),
    }
    wait_state(&s, publisher_port, "blocked").await;
    assert_eq!(conn_state(&s, consumer_port).await, "blocking");

    // The consumer's connection keeps working: it drains the backlog.
    let mut consumer = consume(&cch, q, true).await;
    for i in 0..100u32 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, format!("before-{i}").as_bytes());
    }
    assert_eq!(
        s.broker().vhost("/").unwrap().queue(q).unwrap().counts().0,
        0,
        "the blocked publish was not read"
    );

    // The alarm clears: connection.unblocked, and the held publish goes through.
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Absolute(u64::MAX));
    match next_block_event(&mut events).await {
        Event::ConnectionUnblocked => {}
        e => panic!("expected connection.unblocked, got {e:?}"),
    }
    assert_eq!(next(&mut consumer).await.data, b"held");
    publish(&pch, "", q, b"after").await;
    assert_eq!(next(&mut consumer).await.data, b"after");
    wait_state(&s, publisher_port, "running").await;
    wait_state(&s, consumer_port, "running").await;
}

#[tokio::test]
async fn a_watermark_in_the_config_blocks_from_the_start_and_reports_the_alarm() {
    let s = start_with(|c| {
        let parsed = Config::parse("vm_memory_high_watermark.absolute = \"1k\"\n", "test").unwrap();
        c.vm_memory_high_watermark = parsed.vm_memory_high_watermark;
    })
    .await;
    // Management API: the alarm, the figures, and the failing health checks.
    let nodes = get_ok(&s, "/api/nodes").await;
    let node = &nodes[0];
    assert_eq!(node["mem_alarm"], true);
    assert_eq!(node["mem_limit"], 1024);
    assert!(node["mem_used"].as_u64().unwrap() > 1024);
    assert_eq!(node["disk_free_alarm"], false);
    let name = node["name"].as_str().unwrap().to_owned();
    for (path, reason) in [
        (
            "/api/health/checks/alarms",
            "There are alarms in effect in the cluster",
        ),
        (
            "/api/health/checks/local-alarms",
            "There are alarms in effect on the node",
        ),
    ] {
        let (status, body) = get_json(&s, path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(
            body,
            serde_json::json!({
                "status": "failed",
                "reason": reason,
                "alarms": [{"resource": "memory", "node": name}],
            })
        );
    }
    let (_, metrics) = raw_at(s.prometheus_addr(), "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains("\nrabbitmq_alarms_memory_used_watermark 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nrabbitmq_alarms_free_disk_space_watermark 0\n"));
    assert!(metrics.contains("\nrabbitmq_alarms_file_descriptor_limit 0\n"));

    // A publish through a raw client that asks for connection.blocked.
    let mut raw = raw_open(&s, true).await;
    raw.open_channel(1).await;
    raw.send(&publish_frames(1, "", "nowhere", b"x")).await;
    match raw.method().await {
        amq_protocol::protocol::AMQPClass::Connection(
            amq_protocol::protocol::connection::AMQPMethod::Blocked(b),
        ) => assert_eq!(b.reason.as_str(), "low on memory"),
        m => panic!("expected connection.blocked, got {m:?}"),
    }

    // Cleared at run time: the checks pass again.
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Relative(0.4));
    match raw.method().await {
        amq_protocol::protocol::AMQPClass::Connection(
            amq_protocol::protocol::connection::AMQPMethod::Unblocked(_),
        ) => {}
        m => panic!("expected connection.unblocked, got {m:?}"),
    }
    let (status, body) = get_json(&s, "/api/health/checks/alarms").await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    assert_eq!(get_ok(&s, "/api/nodes").await[0]["mem_alarm"], false);
}

/// A raw connection opened as guest on `/`, advertising the
/// `connection.blocked` capability or not.
async fn raw_open(s: &TestBroker, blocked_capability: bool) -> raw_amqp::Raw {
    use amq_protocol::protocol::{connection, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};
    let mut r = raw_amqp::Raw::connect(s).await;
    r.start().await;
    let mut caps = FieldTable::default();
    caps.insert(
        "connection.blocked".into(),
        AMQPValue::Boolean(blocked_capability),
    );
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    r.method_out(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    )
    .await;
    r.tune_open_ok("/").await;
    r
}

/// basic.publish, its content header and one body frame.
fn publish_frames(ch: u16, exchange: &str, key: &str, body: &[u8]) -> Vec<u8> {
    use amq_protocol::protocol::{basic, AMQPClass};
    let mut out = raw_amqp::method_bytes(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    out.extend(raw_amqp::frame_bytes(2, ch, &header));
    out.extend(raw_amqp::frame_bytes(3, ch, body));
    out
}

#[tokio::test]
async fn a_client_without_the_capability_is_blocked_silently() {
    let s = start().await;
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    let mut raw = raw_open(&s, false).await;
    raw.open_channel(1).await;
    raw.send(&publish_frames(1, "", "nowhere", b"x")).await;
    wait_until(
        "the connection to block",
        Duration::from_secs(10),
        || async {
            let list = get_ok(&s, "/api/connections").await;
            list[0]["state"] == "blocked"
        },
    )
    .await;
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Absolute(u64::MAX));
    // Unblocked, it reads again: a channel.open on channel 2 is answered
    // and nothing else (no connection.unblocked) comes first.
    raw.send(&raw_amqp::channel_open(2)).await;
    match raw.method().await {
        amq_protocol::protocol::AMQPClass::Channel(
            amq_protocol::protocol::channel::AMQPMethod::OpenOk(_),
        ) => {}
        m => panic!("expected channel.open-ok, got {m:?}"),
    }
}

#[tokio::test]
async fn disk_alarm_blocks_with_its_own_reason() {
    let s = start_with(|c| {
        // More free space than any disk has.
        c.disk_free_limit.absolute = Some(Bytes(u64::MAX / 2));
    })
    .await;
    let node = &get_ok(&s, "/api/nodes").await[0];
    assert_eq!(node["disk_free_alarm"], true);
    assert_eq!(node["mem_alarm"], false);
    assert_eq!(node["disk_free_limit"], u64::MAX / 2);
    let (status, body) = get_json(&s, "/api/health/checks/alarms").await;
    assert_eq!(status, 503);
    assert_eq!(body["alarms"][0]["resource"], "disk space");
    let (_, metrics) = raw_at(s.prometheus_addr(), "GET", "/metrics", None, "").await;
    assert!(metrics.contains("\nrabbitmq_alarms_free_disk_space_watermark 1\n"));

    let pc: Connection = connect(&s).await;
    let mut events = pc.events_listener();
    let pch = pc.create_channel().await.unwrap();
    // Both alarms: both reasons, as RabbitMQ joins them.
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    pch.basic_publish(
        "".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    match next_block_event(&mut events).await {
        Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on memory & disk"),
        e => panic!("expected connection.blocked, got {e:?}"),
    }
    s.broker()
        .alarms()
        .set_memory_watermark(MemoryWatermark::Absolute(u64::MAX));
    s.broker()
        .alarms()
        .set_disk_free_limit(DiskFreeLimit::Absolute(0));
    match next_block_event(&mut events).await {
        Event::ConnectionUnblocked => {}
        e => panic!("expected connection.unblocked, got {e:?}"),
    }
    assert!(!s.broker().alarms().current().any());
}
