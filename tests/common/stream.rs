//! Helpers for the stream queue tests (tests/streams.rs,
//! tests/stream_groups.rs): confirmed publishes, deliveries read with their
//! `x-stream-offset` header, and "nothing more comes".

use futures_lite::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::options::ConfirmSelectOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::time::Duration;

/// Publishes bodies `m{from}` .. `m{from+n-1}` to queue `q` on a
/// confirming channel and waits for every confirm to be an ack.
pub async fn publish_n(ch: &Channel, q: &str, from: usize, n: usize) {
    let mut confirms = Vec::new();
    for i in from..from + n {
        let c = ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(super::within(c).await.expect("confirm").is_ack());
    }
}

/// The next delivery's (offset header, body, delivery tag).
pub async fn next(c: &mut Consumer) -> (i64, String, u64) {
    let d = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery");
    let h = d.properties.headers().clone().expect("headers");
    let off = match h.inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(o)) => *o,
        other => panic!("x-stream-offset header: {other:?}"),
    };
    let body = String::from_utf8(d.data.clone()).expect("utf-8");
    (off, body, d.delivery_tag)
}

/// No delivery within a short while (for "nothing more comes").
pub async fn quiet(c: &mut Consumer) {
    let r = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
    assert!(r.is_err(), "unexpected delivery: {r:?}");
}

/// A fresh channel on `conn` in confirm mode, for publishers.
pub async fn confirming(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch
}
