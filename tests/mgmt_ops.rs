//! The operators' view in the management API: application names, socket
//! traffic and client properties of connections, the channel page, queue
//! byte sizes, and the sampled history RabbitMQ serves with
//! `lengths_age`/`msg_rates_age`/`data_rates_age`. Typed reads go through
//! `rabbitmq_http_client` (RabbitMQ's JSON shapes), the rest raw.

mod common;

use common::*;
use lapin::options::*;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value as J;
use std::time::Duration;

/// A broker that samples rates and history every 100 ms.
async fn fast_sampling() -> TestBroker {
    start_with(|c| c.management.collect_statistics_interval = 100).await
}

async fn connect_named(s: &TestBroker, name: &str) -> Connection {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    within(Connection::connect(&url(s), props)).await.unwrap()
}

fn enc(s: &str) -> String {
    s.replace(' ', "%20")
        .replace('>', "%3E")
        .replace(':', "%3A")
}

#[tokio::test]
async fn connections_show_the_application_name_traffic_and_client_properties() {
    let s = fast_sampling().await;
    let c = connect_named(&s, "billing-worker").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "traffic", false).await;
    for _ in 0..50 {
        publish(&ch, "", "traffic", &[7u8; 1000]).await;
    }
    passive(&ch, "traffic").await.unwrap();

    let api = api(&s);
    // Channels show once the connection's snapshot refreshes (a tick).
    wait_until("the channel", Duration::from_secs(5), || async {
        api.list_connections().await.unwrap()[0].channel_count == 1
    })
    .await;
    let list = api.list_connections().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].client_properties.connection_name, "billing-worker");
    let name = list[0].name.clone();
    let typed = api.get_connection_info(&name).await.unwrap();
    assert_eq!(typed.client_properties.product, "lapin");

    // The reader publishes its counts once a tick: wait for 50 kB in.
    wait_until(
        "recv_oct to count the publishes",
        Duration::from_secs(10),
        || async {
            let j = get_ok(&s, "/api/connections").await;
            j[0]["recv_oct"].as_u64().unwrap_or(0) > 50_000
        },
    )
    .await;
    let j = get_ok(&s, "/api/connections").await[0].clone();
    assert_eq!(j["user_provided_name"], "billing-worker");
    assert!(j["recv_cnt"].as_u64().unwrap() >= 1, "{j}");
    // connection.start, tune, open-ok, channel.open-ok, declare-ok...
    assert!(j["send_oct"].as_u64().unwrap() > 100, "{j}");
    assert!(j["send_cnt"].as_u64().unwrap() >= 3, "{j}");
    assert!(j["recv_oct_details"]["rate"].is_number(), "{j}");
    assert!(j["send_oct_details"]["rate"].is_number(), "{j}");
    // Every client property, as sent.
    assert_eq!(j["client_properties"]["connection_name"], "billing-worker");
    assert_eq!(j["client_properties"]["capabilities"]["basic.nack"], true);
    assert_eq!(j["client_properties"]["platform"], "rust", "{j}");
    // A rate shows once the sampler has seen the traffic.
    wait_until("a receive rate", Duration::from_secs(10), || async {
        let j = get_ok(&s, "/api/connections").await;
        j[0]["recv_oct_details"]["rate"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    // A client that gives no name has no user_provided_name.
    let anon = connect(&s).await;
    wait_until("two connections", Duration::from_secs(5), || async {
        get_ok(&s, "/api/connections")
            .await
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let all = get_ok(&s, "/api/connections").await;
    assert!(all[1].get("user_provided_name").is_none(), "{all}");
    anon.close(200, "bye".into()).await.unwrap();
    c.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn the_channel_page_shows_prefetch_unacked_consumers_and_rates() {
    let s = fast_sampling().await;
    let c = connect_named(&s, "orders-consumer").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "work", false).await;
    ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    for i in 0..10 {
        publish(&ch, "", "work", format!("m{i}").as_bytes()).await;
    }
    let _consumer = consume(&ch, "work", false).await;

    let api = api(&s);
    wait_until(
        "3 unacked on the channel",
        Duration::from_secs(10),
        || async {
            let l = api.list_channels().await.unwrap();
            l.len() == 1 && l[0].messages_unacknowledged == 3
        },
    )
    .await;
    let l = api.list_channels().await.unwrap();
    assert_eq!((l[0].prefetch_count, l[0].consumer_count), (3, 1));
    let typed = api.get_channel_info(&l[0].name).await.unwrap();
    assert_eq!(typed.id, 1);

    let path = format!("/api/channels/{}", enc(&l[0].name));
    let j = get_ok(&s, &path).await;
    assert_eq!(
        j["connection_details"]["user_provided_name"],
        "orders-consumer"
    );
    assert_eq!(j["message_stats"]["publish"], 10);
    assert_eq!(j["message_stats"]["deliver"], 3);
    assert!(j["message_stats"]["publish_details"]["rate"].is_number());
    assert_eq!(j["consumer_details"][0]["queue"]["name"], "work");
    assert_eq!(
        j["consumer_details"][0]["channel_details"]["user_provided_name"],
        "orders-consumer"
    );
    wait_until(
        "a publish rate on the channel",
        Duration::from_secs(10),
        || async {
            let j = get_ok(&s, &path).await;
            j["message_stats"]["publish_details"]["rate"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
        },
    )
    .await;
    // A channel with no traffic goes idle, with RabbitMQ's idle_since.
    wait_until("idle_since", Duration::from_secs(10), || async {
        let j = get_ok(&s, &path).await;
        j["idle_since"]
            .as_str()
            .is_some_and(|t| t.ends_with("+00:00") && t.len() == 29)
    })
    .await;
    c.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn queues_show_byte_sizes_and_the_head_timestamp() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "sized", true).await;
    // 4 persistent of 100 B (timestamped), then 6 transient of 10 B.
    for i in 0..4u64 {
        let p = persistent().with_timestamp(1_700_000_000 + i);
        publish_props(&ch, "", "sized", &[1u8; 100], p).await;
    }
    for _ in 0..6 {
        publish(&ch, "", "sized", &[2u8; 10]).await;
    }
    passive(&ch, "sized").await.unwrap();
    let api = api(&s);
    let q = api.get_queue_info("/", "sized").await.unwrap();
    assert_eq!(q.message_bytes, 460);
    assert_eq!(q.message_bytes_ready, 460);
    assert_eq!(q.message_bytes_unacknowledged, 0);
    assert_eq!(q.message_bytes_persistent, 400);
    let j = get_ok(&s, "/api/queues/%2F/sized").await;
    assert_eq!(j["head_message_timestamp"], 1_700_000_000u64);

    // Two taken, unacked: their bytes move, persistence kept.
    for _ in 0..2 {
        ch.basic_get("sized".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
    }
    let q = api.get_queue_info("/", "sized").await.unwrap();
    assert_eq!(
        (
            q.message_bytes,
            q.message_bytes_ready,
            q.message_bytes_unacknowledged
        ),
        (460, 260, 200)
    );
    assert_eq!(q.message_bytes_persistent, 400);
    let j = get_ok(&s, "/api/queues/%2F/sized").await;
    assert_eq!(j["head_message_timestamp"], 1_700_000_002u64);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    ch.queue_purge("sized".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    wait_until("the queue to be empty", Duration::from_secs(5), || async {
        let q = api.get_queue_info("/", "sized").await.unwrap();
        q.message_bytes == 0 && q.message_bytes_persistent == 0
    })
    .await;
    let j = get_ok(&s, "/api/queues/%2F/sized").await;
    assert!(j["head_message_timestamp"].is_null(), "{j}");

    // A transient queue has no persistent bytes (RabbitMQ: they are not kept).
    queue(&ch, "transient", false).await;
    publish_props(&ch, "", "transient", &[1u8; 50], persistent()).await;
    passive(&ch, "transient").await.unwrap();
    let q = api.get_queue_info("/", "transient").await.unwrap();
    assert_eq!((q.message_bytes, q.message_bytes_persistent), (50, 0));
    c.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn consumer_utilisation_follows_whether_consumers_keep_up() {
    let s = fast_sampling().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "kept-up", false).await;
    let _consumer = consume(&ch, "kept-up", true).await;
    wait_until("utilisation 1", Duration::from_secs(10), || async {
        let j = get_ok(&s, "/api/queues/%2F/kept-up").await;
        j["consumer_utilisation"].as_f64() == Some(1.0)
    })
    .await;
    queue(&ch, "unconsumed", false).await;
    let j = get_ok(&s, "/api/queues/%2F/unconsumed").await;
    assert_eq!(j["consumer_utilisation"].as_f64(), Some(0.0));
    c.close(200, "bye".into()).await.unwrap();
}

async fn utilisation(s: &TestBroker) -> f64 {
    get_ok(s, "/api/queues/%2F/held-back").await["consumer_utilisation"]
        .as_f64()
        .unwrap()
}

/// Time-based, as RabbitMQ's: a consumer held at its prefetch limit with
/// messages waiting drives the figure towards 0 (one-second half-life);
/// once it acks its way through the backlog it climbs back towards 1.
#[tokio::test]
async fn consumer_utilisation_is_the_share_of_time_consumers_could_take_messages() {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "held-back", false).await;
    for _ in 0..20 {
        publish(&ch, "", "held-back", b"x").await;
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, "held-back", false).await;
    let first = next(&mut consumer).await;
    wait_until("utilisation below 0.1", Duration::from_secs(30), || async {
        utilisation(&s).await < 0.1
    })
    .await;
    let j = get_ok(&s, "/api/queues/%2F/held-back").await;
    assert_eq!(j["consumer_capacity"], j["consumer_utilisation"]);
    first.ack(BasicAckOptions::default()).await.unwrap();
    for _ in 1..20 {
        next(&mut consumer)
            .await
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    wait_until("utilisation above 0.9", Duration::from_secs(30), || async {
        utilisation(&s).await > 0.9
    })
    .await;
    c.close(200, "bye".into()).await.unwrap();
}

fn samples(d: &J) -> Vec<(u64, u64)> {
    d["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["timestamp"].as_u64().unwrap(),
                        s["sample"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sampled every 5 s as RabbitMQ: waits for a second row (up to ~10 s).
#[tokio::test]
async fn history_is_served_with_rabbitmqs_range_parameters() {
    let s = fast_sampling().await;
    let c = connect_named(&s, "history").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "hist", false).await;
    for _ in 0..5 {
        publish(&ch, "", "hist", b"x").await;
    }
    passive(&ch, "hist").await.unwrap();
    let q = "lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5";
    wait_until("two overview samples", Duration::from_secs(15), || async {
        let j = get_ok(&s, &format!("/api/overview?{q}")).await;
        samples(&j["queue_totals"]["messages_details"]).len() >= 2
    })
    .await;
    let j = get_ok(&s, &format!("/api/overview?{q}")).await;
    let m = samples(&j["queue_totals"]["messages_details"]);
    assert!(m.len() <= 13, "{j}");
    assert_eq!(m[0].1, 5, "{j}");
    assert!(m.iter().all(|(t, _)| t % 5000 == 0), "{m:?}");
    assert!(
        m.windows(2).all(|w| w[0].0 - w[1].0 == 5000),
        "newest first: {m:?}"
    );
    let p = samples(&j["message_stats"]["publish_details"]);
    assert_eq!(p[0].1, 5, "{j}");
    let d = &j["queue_totals"]["messages_details"];
    assert!(d["avg"].is_number() && d["avg_rate"].is_number(), "{d}");
    // Without the parameters, no samples (RabbitMQ's lean answer).
    let plain = get_ok(&s, "/api/overview").await;
    assert!(plain["queue_totals"]["messages_details"]["samples"].is_null());

    let j = get_ok(&s, &format!("/api/queues/%2F/hist?{q}")).await;
    assert_eq!(samples(&j["messages_ready_details"])[0].1, 5, "{j}");
    assert_eq!(
        samples(&j["message_stats"]["publish_details"])[0].1,
        5,
        "{j}"
    );
    let l = get_ok(&s, &format!("/api/queues?{q}")).await;
    assert!(!samples(&l[0]["messages_details"]).is_empty(), "{l}");
    let e = get_ok(
        &s,
        "/api/exchanges/%2F/amq.default?msg_rates_age=60&msg_rates_incr=5",
    )
    .await;
    assert!(
        e["message_stats"]["publish_in_details"]["samples"].is_array(),
        "{e}"
    );
    let conns = get_ok(&s, "/api/connections?data_rates_age=60&data_rates_incr=5").await;
    let r = samples(&conns[0]["recv_oct_details"]);
    assert!(!r.is_empty() && r[0].1 > 0, "{conns}");

    // Bad ranges are refused with RabbitMQ 3.10's reason; a lone or
    // non-numeric parameter is ignored, as there.
    for (bad, reason) in [
        ("lengths_age=60&lengths_incr=0", "age 60, incr 0"),
        ("lengths_age=-5&lengths_incr=5", "age -5, incr 5"),
        ("msg_rates_age=86400&msg_rates_incr=1", "age 86400, incr 1"),
    ] {
        let (code, j) = get_json(&s, &format!("/api/overview?{bad}")).await;
        assert_eq!(code, 400, "{bad}: {j}");
        assert_eq!(j["reason"], format!("Invalid range parameters: {reason}"));
    }
    for ignored in ["lengths_age=60", "lengths_age=x&lengths_incr=5"] {
        let j = get_ok(&s, &format!("/api/overview?{ignored}")).await;
        assert!(
            j["queue_totals"]["messages_details"]["samples"].is_null(),
            "{j}"
        );
    }
    c.close(200, "bye".into()).await.unwrap();
}

/// `/metrics/detailed?vhost=` as rabbitmq_prometheus 3.13 reads it:
/// repeatable, unknown vhosts dropped (naming only unknown ones leaves no
/// queue), queue families and `queue_info` filtered, connections not.
#[tokio::test]
async fn detailed_metrics_filter_queues_by_vhost() {
    let s = start().await;
    let (st, body) = raw(&s, "PUT", "/api/vhosts/other", Some(GUEST), "").await;
    assert!(st == 201 || st == 204, "{st} {body}");
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "in-default", false).await;
    let c2 = connect_to(&s, "other").await;
    let ch2 = c2.create_channel().await.unwrap();
    queue(&ch2, "in-other", false).await;
    let scrape = |q: &'static str| {
        let s = &s;
        async move {
            let (st, body) = raw(s, "GET", &format!("/metrics/detailed?{q}"), None, "").await;
            assert_eq!(st, 200, "{body}");
            body
        }
    };
    let ready = "rabbitmq_detailed_queue_messages_ready{";
    let lines = |body: &str, prefix: &str| -> Vec<String> {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    };
    let all = scrape("family=queue_coarse_metrics").await;
    assert_eq!(lines(&all, ready).len(), 2, "{all}");
    let one =
        scrape("family=queue_coarse_metrics&family=connection_coarse_metrics&vhost=other").await;
    let got = lines(&one, ready);
    assert_eq!(got.len(), 1, "{one}");
    assert!(
        got[0].contains("vhost=\"other\",queue=\"in-other\""),
        "{one}"
    );
    let info = lines(&one, "rabbitmq_detailed_queue_info{");
    assert_eq!(info.len(), 1, "{one}");
    assert!(
        info[0].contains("queue_type=\"rabbit_classic_queue\",membership=\"leader\"} 1"),
        "{one}"
    );
    // Connections are not filtered by vhost.
    let conns = lines(&one, "rabbitmq_detailed_connection_incoming_bytes_total{");
    assert_eq!(conns.len(), 2, "{one}");
    let both = scrape("family=queue_coarse_metrics&vhost=%2F&vhost=other&vhost=nope").await;
    assert_eq!(lines(&both, ready).len(), 2, "{both}");
    let none = scrape("family=queue_coarse_metrics&vhost=nope").await;
    assert!(lines(&none, ready).is_empty(), "{none}");
    assert!(none.contains("# TYPE rabbitmq_detailed_queue_messages_ready gauge"));
    // queue_info comes only with a queue family.
    let conn_only = scrape("family=connection_coarse_metrics").await;
    assert!(!conn_only.contains("queue_info"), "{conn_only}");
    c2.close(200, "bye".into()).await.unwrap();
    c.close(200, "bye".into()).await.unwrap();
}

/// A channel's message counters are sampled into history like a queue's:
/// `msg_rates_age`/`msg_rates_incr` on /api/channels/{name} add `samples`
/// (newest first, running totals) with `avg` and `avg_rate`.
#[tokio::test]
async fn channel_history_is_served_with_msg_rates_parameters() {
    let s = fast_sampling().await;
    let c = connect_named(&s, "chan-history").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "chist", false).await;
    for _ in 0..5 {
        publish(&ch, "", "chist", b"x").await;
    }
    let got = ch
        .basic_get("chist".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    let api = api(&s);
    // Each connection publishes its channels' snapshot once a second.
    wait_until("the channel listed", Duration::from_secs(10), || async {
        !api.list_channels().await.unwrap().is_empty()
    })
    .await;
    let name = api.list_channels().await.unwrap()[0].name.clone();
    let path = format!(
        "/api/channels/{}?msg_rates_age=60&msg_rates_incr=5",
        enc(&name)
    );
    wait_until("channel samples", Duration::from_secs(15), || async {
        let j = get_ok(&s, &path).await;
        samples(&j["message_stats"]["publish_details"])
            .first()
            .is_some_and(|x| x.1 == 5)
    })
    .await;
    let j = get_ok(&s, &path).await;
    let p = samples(&j["message_stats"]["publish_details"]);
    assert!(p.iter().all(|(t, _)| t % 5000 == 0), "{p:?}");
    assert!(p.windows(2).all(|w| w[0].0 > w[1].0), "newest first: {p:?}");
    let d = &j["message_stats"]["publish_details"];
    assert!(d["avg"].is_number() && d["avg_rate"].is_number(), "{d}");
    let g = samples(&j["message_stats"]["deliver_get_details"]);
    assert_eq!(g.first().map(|x| x.1), Some(1), "{j}");
    // Without the parameters, no samples; bad ones are refused.
    let plain = get_ok(&s, &format!("/api/channels/{}", enc(&name))).await;
    assert!(plain["message_stats"]["publish_details"]["samples"].is_null());
    let bad = format!(
        "/api/channels/{}?msg_rates_age=60&msg_rates_incr=0",
        enc(&name)
    );
    let (code, j) = get_json(&s, &bad).await;
    assert_eq!(code, 400, "{j}");
    assert_eq!(j["reason"], "Invalid range parameters: age 60, incr 0");
    c.close(200, "bye".into()).await.unwrap();
}
