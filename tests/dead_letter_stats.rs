//! Dead-letter accounting and the rest of dead-lettering over real
//! connections: the counts by reason in Prometheus (RabbitMQ 3.13's
//! `rabbitmq_global_messages_dead_lettered_*` families and labels), in
//! the overview and in a queue's JSON (Warren's `dead_letter_stats`);
//! a durable queue's dead letters confirmed after their copies' flush; a
//! no-ack delivery handed back by a closed connection keeping its TTL; a
//! queue deleted by x-expires not dead-lettering its messages (as
//! RabbitMQ's classic queues).

mod common;
use common::raw_amqp::Raw;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use std::time::Duration;

async fn ready(ch: &Channel, q: &str) -> u32 {
    passive(ch, q).await.expect("queue").message_count()
}

/// Takes one message with manual ack and rejects it without requeue.
async fn get_and_reject(ch: &Channel, q: &str) {
    let m = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
}

/// The value of one Prometheus sample, by its full name and labels.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn dl_series(reason: &str, strategy: &str) -> String {
    format!(
        "rabbitmq_global_messages_dead_lettered_{reason}_total{{queue_type=\"rabbit_classic_queue\",dead_letter_strategy=\"{strategy}\"}}"
    )
}

#[tokio::test]
async fn dead_letters_are_counted_by_reason_and_strategy() {
    let (s, _c, ch) = start_channel().await;
    declare(&ch, "dlq", t()).await;
    // Dead-lettered (at_most_once): one pushed out by max-length, one
    // rejected.
    let to_dlq = args(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr("dlq")),
    ]);
    declare(&ch, "src", to_dlq).await;
    publish(&ch, "", "src", b"one").await;
    publish(&ch, "", "src", b"two").await;
    get_and_reject(&ch, "src").await;
    // Dropped (disabled): one expired without a DLX, one rejected into a
    // DLX that does not exist.
    declare(
        &ch,
        "ttl",
        args(&[("x-message-ttl", AMQPValue::LongInt(10))]),
    )
    .await;
    publish(&ch, "", "ttl", b"three").await;
    let missing = args(&[("x-dead-letter-exchange", longstr("no-such-exchange"))]);
    declare(&ch, "nowhere", missing).await;
    publish(&ch, "", "nowhere", b"four").await;
    get_and_reject(&ch, "nowhere").await;
    wait_until(
        "two dead letters and the expiry",
        Duration::from_secs(10),
        || async { ready(&ch, "dlq").await == 2 && ready(&ch, "ttl").await == 0 },
    )
    .await;

    let q = get_ok(&s, "/api/queues/%2F/src").await;
    let st = &q["dead_letter_stats"];
    assert_eq!(st["dead_lettered"]["maxlen"], 1, "{st}");
    assert_eq!(st["dead_lettered"]["rejected"], 1, "{st}");
    assert_eq!(st["dead_lettered"]["expired"], 0, "{st}");
    assert_eq!(st["dropped"]["rejected"], 0, "{st}");
    let q = get_ok(&s, "/api/queues/%2F/nowhere").await;
    assert_eq!(q["dead_letter_stats"]["dropped"]["rejected"], 1);

    let expect = [
        ("maxlen", "at_most_once", 1.0),
        ("rejected", "at_most_once", 1.0),
        ("rejected", "disabled", 1.0),
        ("expired", "disabled", 1.0),
        ("expired", "at_most_once", 0.0),
        ("delivery_limit", "disabled", 0.0),
    ];
    let check = |text: &str| {
        for (reason, strategy, n) in expect {
            assert_eq!(
                sample(text, &dl_series(reason, strategy)),
                Some(n),
                "{reason} {strategy}"
            );
        }
        assert!(
            text.contains("# TYPE rabbitmq_global_messages_dead_lettered_expired_total counter")
        );
    };
    let (_, text) = raw(&s, "GET", "/metrics", None, "").await;
    check(&text);

    // The broker-wide counts outlive the queues that counted them.
    for q in ["src", "nowhere", "ttl"] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    let (_, text) = raw(&s, "GET", "/metrics", None, "").await;
    check(&text);
    let o = get_ok(&s, "/api/overview").await;
    let st = &o["dead_letter_stats"];
    assert_eq!(st["dead_lettered"]["maxlen"], 1, "{st}");
    assert_eq!(st["dead_lettered"]["rejected"], 1, "{st}");
    assert_eq!(st["dropped"]["rejected"], 1, "{st}");
    assert_eq!(st["dropped"]["expired"], 1, "{st}");
    assert_eq!(st["confirmed"], 0, "{st}");
}

#[tokio::test]
async fn durable_dead_letters_are_confirmed_after_their_flush() {
    let (s, _c, ch) = start_channel().await;
    queue(&ch, "ddlq", true).await;
    let a = args(&[
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr("ddlq")),
    ]);
    ch.queue_declare("dsrc".into(), durable_q(), a)
        .await
        .expect("declare");
    publish_props(&ch, "", "dsrc", b"p", persistent()).await;
    get_and_reject(&ch, "dsrc").await;
    let series = "rabbitmq_global_messages_dead_lettered_confirmed_total{queue_type=\"rabbit_classic_queue\",dead_letter_strategy=\"at_least_once\"}";
    wait_until("the confirmed count", Duration::from_secs(10), || async {
        let (_, text) = raw(&s, "GET", "/metrics", None, "").await;
        sample(&text, series) == Some(1.0)
    })
    .await;
    assert_eq!(ready(&ch, "ddlq").await, 1);
    let q = get_ok(&s, "/api/queues/%2F/dsrc").await;
    assert_eq!(q["dead_letter_stats"]["confirmed"], 1);
    assert_eq!(q["dead_letter_stats"]["dead_lettered"]["rejected"], 1);
}

/// Tune-ok, connection.open on `/` and channel 1, after [`Raw::login`].
async fn raw_open(s: &TestBroker) -> Raw {
    let mut r = Raw::login(s).await;
    r.tune_open_ok("/").await;
    r.open_channel(1).await;
    r
}

/// basic.consume with no-ack and nowait on channel 1, one per queue, in
/// one write (so the broker reads them together).
async fn raw_consume_no_ack(r: &mut Raw, queues: &[&str]) {
    use amq_protocol::protocol::{basic, AMQPClass};
    let mut out = Vec::new();
    for q in queues {
        out.extend(common::raw_amqp::method_bytes(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: (*q).into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: true,
                arguments: FieldTable::default(),
            })),
        ));
    }
    r.send(&out).await;
}

#[tokio::test]
async fn a_no_ack_delivery_handed_back_by_a_closed_connection_still_expires() {
    // A small no-ack window, so the consumer of "backlog" soon stalls the
    // connection (its client never reads): the connection task waits for
    // its writer, and what other queues dispatch to it meanwhile stays in
    // its outbox, to be handed back when the connection goes.
    let s = start_with(|c| c.amqp.noack_window = 4).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "backlog", t()).await;
    declare(
        &ch,
        "ttl",
        args(&[("x-message-ttl", AMQPValue::LongInt(3000))]),
    )
    .await;
    let body = vec![b'x'; 64 * 1024];
    for _ in 0..1000 {
        publish(&ch, "", "backlog", &body).await;
    }
    let mut r = raw_open(&s).await;
    // "ttl" first: its consumer is there before the backlog stalls us.
    raw_consume_no_ack(&mut r, &["ttl", "backlog"]).await;
    // Stalled: the backlog stops moving (socket buffers and the writer's
    // queue are full).
    wait_until(
        "the connection to stall",
        Duration::from_secs(20),
        || async {
            let now = ready(&ch, "backlog").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            now < 1000 && now == ready(&ch, "backlog").await
        },
    )
    .await;
    for _ in 0..3 {
        publish(&ch, "", "ttl", b"short-lived").await;
    }
    wait_until(
        "dispatched to the stalled consumer",
        Duration::from_secs(10),
        || async { ready(&ch, "ttl").await == 0 },
    )
    .await;
    drop(r);
    wait_until("handed back", Duration::from_secs(10), || async {
        ready(&ch, "ttl").await == 3
    })
    .await;
    wait_until(
        "expired with their TTL",
        Duration::from_secs(15),
        || async { ready(&ch, "ttl").await == 0 },
    )
    .await;
}

#[tokio::test]
async fn a_queue_deleted_by_x_expires_does_not_dead_letter() {
    let (s, _c, ch) = start_channel().await;
    declare(&ch, "xdlq", t()).await;
    let a = args(&[
        ("x-expires", AMQPValue::LongInt(200)),
        ("x-dead-letter-exchange", longstr("")),
        ("x-dead-letter-routing-key", longstr("xdlq")),
    ]);
    declare(&ch, "short-lived", a).await;
    publish(&ch, "", "short-lived", b"left behind").await;
    // Watched over HTTP: a passive declare would renew its lease.
    wait_until("the queue expires", Duration::from_secs(10), || async {
        get_json(&s, "/api/queues/%2F/short-lived").await.0 == 404
    })
    .await;
    assert_eq!(ready(&ch, "xdlq").await, 0, "not dead-lettered");
    let o = get_ok(&s, "/api/overview").await;
    assert_eq!(o["dead_letter_stats"]["dead_lettered"]["expired"], 0);
    assert_eq!(o["dead_letter_stats"]["dropped"]["expired"], 0);
}
