//! Warren's extra management endpoints (peek, the unacked view, the routing
//! tester) and RabbitMQ's message counters and rates, driven by lapin on
//! the AMQP side and raw HTTP on the API side.

mod common;

use common::*;
use futures_lite::stream::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{json, Value as J};
use std::collections::BTreeSet;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[tokio::test]
async fn peek_shows_ready_messages_and_changes_nothing() {
    let (s, _c, ch) = start_channel().await;
    queue(&ch, "peeked", false).await;
    let mut h = FieldTable::default();
    h.insert("who".into(), long("me"));
    for i in 0..5 {
        publish_props(
            &ch,
            "",
            "peeked",
            format!("m{i}").as_bytes(),
            BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(h.clone()),
        )
        .await;
    }
    publish_props(
        &ch,
        "",
        "peeked",
        &[0xff, 0x00, 0x01],
        BasicProperties::default(),
    )
    .await;
    passive(&ch, "peeked").await.unwrap();

    let j = get_ok(&s, "/api/queues/%2F/peeked/peek?count=3&offset=1").await;
    let items = j.as_array().unwrap();
    assert_eq!(items.len(), 3, "{j}");
    for (i, m) in items.iter().enumerate() {
        assert_eq!(m["position"], 1 + i);
        assert_eq!(m["payload"], format!("m{}", i + 1));
        assert_eq!(m["payload_encoding"], "string");
        assert_eq!(m["payload_bytes"], 2);
        assert_eq!(m["redelivered"], false);
        assert_eq!(m["exchange"], "");
        assert_eq!(m["routing_key"], "peeked");
        assert_eq!(m["message_count"], 6);
        assert_eq!(m["properties"]["content_type"], "text/plain");
        assert_eq!(m["properties"]["headers"]["who"], "me");
    }
    // Default count, binary payloads, encoding and truncation.
    let j = get_ok(&s, "/api/queues/%2F/peeked/peek").await;
    assert_eq!(j.as_array().unwrap().len(), 6);
    assert_eq!(j[5]["payload_encoding"], "base64");
    assert_eq!(j[5]["payload"], "/wAB");
    assert_eq!(j[5]["properties"], json!([]));
    let j = get_ok(
        &s,
        "/api/queues/%2F/peeked/peek?count=1&encoding=base64&truncate=1",
    )
    .await;
    assert_eq!(
        (j[0]["payload"].clone(), j[0]["payload_bytes"].clone()),
        (json!("bQ=="), json!(2))
    );
    assert!(get_ok(&s, "/api/queues/%2F/peeked/peek?offset=6").await == json!([]));

    // Nothing moved: all still ready, no delivery counted.
    let q = get_ok(&s, "/api/queues/%2F/peeked").await;
    assert_eq!(q["messages_ready"], 6);
    assert_eq!(q["messages_unacknowledged"], 0);
    assert_eq!(q["message_stats"]["deliver_get"], 0);
    let got = ch
        .basic_get("peeked".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"m0");
    assert!(!got.delivery.redelivered, "peeking is not a delivery");
    let second = ch
        .basic_get("peeked".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert!(!second.delivery.redelivered);

    // Bad input and unknown objects.
    for path in [
        "/api/queues/%2F/peeked/peek?count=501",
        "/api/queues/%2F/peeked/peek?count=x",
        "/api/queues/%2F/peeked/peek?offset=-1",
        "/api/queues/%2F/peeked/peek?encoding=hex",
    ] {
        let (status, body) = raw(&s, "GET", path, Some(GUEST), "").await;
        assert_eq!(status, 400, "{path}: {body}");
        let e: J = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"], "bad_request");
    }
    let (status, _) = raw(&s, "GET", "/api/queues/%2F/nope/peek", Some(GUEST), "").await;
    assert_eq!(status, 404);
    let (status, _) = raw(&s, "GET", "/api/queues/nope/peeked/peek", Some(GUEST), "").await;
    assert_eq!(status, 404);
    let (status, _) = raw(&s, "GET", "/api/queues/%2F/peeked/peek", None, "").await;
    assert_eq!(status, 401);
    s.shutdown().await;
}

#[tokio::test]
async fn peek_reads_a_durable_queue_from_disk_after_a_restart() {
    let dir = temp_dir("peek-restart");
    let cfg = |c: &mut warren::config::Config, dir: &std::path::Path| {
        c.storage.data_dir = dir.to_owned();
        // Bodies stay on disk only: peek must read them from there.
        c.storage.queue_memory_mb = 0;
    };
    {
        let s = start_with(|c| cfg(c, &dir)).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        queue(&ch, "disk-peek", true).await;
        for i in 0..300 {
            ch.basic_publish(
                "".into(),
                "disk-peek".into(),
                BasicPublishOptions::default(),
                format!("body-{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        let j = get_ok(&s, "/api/queues/%2F/disk-peek/peek?count=2").await;
        assert_eq!(
            j[1]["payload"], "body-1",
            "paged out before the restart too"
        );
        c.close(200, "bye".into()).await.unwrap();
        s.shutdown().await;
    }
    let s = start_with(|c| cfg(c, &dir)).await;
    let j = get_ok(&s, "/api/queues/%2F/disk-peek/peek?count=10&offset=297").await;
    let bodies: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["body-297", "body-298", "body-299"]);
    assert_eq!(j[0]["position"], 297);
    assert_eq!(j[0]["properties"]["delivery_mode"], 2);
    assert_eq!(j[0]["message_count"], 300);
    let j = get_ok(&s, "/api/queues/%2F/disk-peek/peek?count=1").await;
    assert_eq!(j[0]["payload"], "body-0");
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let got = ch
        .basic_get("disk-peek".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"body-0");
    assert!(!got.delivery.redelivered);
    s.shutdown().await;
}

#[tokio::test]
async fn unacked_view_names_the_consumer_and_channel_until_acked() {
    let (s, _c, ch) = start_channel().await;
    queue(&ch, "held", false).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for i in 0..3 {
        publish_props(
            &ch,
            "",
            "held",
            format!("h{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // One taken by basic.get, two by a consumer.
    let got = ch
        .basic_get("held".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    let mut cons = ch
        .basic_consume(
            "held".into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..2 {
        deliveries.push(within(cons.next()).await.unwrap().unwrap());
    }
    let j = get_ok(&s, "/api/queues/%2F/held/unacked").await;
    assert_eq!(j["total"], 3, "{j}");
    let items = j["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let conn_name = get_ok(&s, "/api/connections").await[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Oldest first: the get came before the consumer's deliveries.
    assert_eq!(items[0]["consumer_tag"], J::Null);
    assert_eq!(items[0]["routing_key"], "held");
    assert_eq!(items[0]["payload_bytes"], 2);
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            assert_eq!(it["consumer_tag"], "watcher");
        }
        let cd = &it["channel_details"];
        assert_eq!(cd["number"], ch.id(), "{it}");
        assert_eq!(cd["connection_name"], conn_name.as_str());
        assert_eq!(cd["name"], format!("{conn_name} ({})", ch.id()));
        assert_eq!(cd["user"], "guest");
        assert_eq!(cd["peer_host"], "127.0.0.1");
        assert!(cd["peer_port"].as_u64().unwrap() > 0);
        let at = it["delivered_at"].as_u64().unwrap();
        // The clock is coarse (a few ms).
        assert!(
            at + 50 >= before && at <= after + 50,
            "{at} not in {before}..{after}"
        );
        assert!(it["held_for_ms"].as_u64().is_some());
        assert_eq!(it["redelivered"], false);
        if i > 0 {
            assert!(at >= items[i - 1]["delivered_at"].as_u64().unwrap());
        }
    }
    let j = get_ok(&s, "/api/queues/%2F/held/unacked?count=1").await;
    assert_eq!(
        (j["total"].clone(), j["items"].as_array().unwrap().len()),
        (json!(3), 1)
    );
    let (status, _) = raw(
        &s,
        "GET",
        "/api/queues/%2F/held/unacked?count=9999",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 400);

    // Held messages leave the view as they are acked.
    got.ack(BasicAckOptions::default()).await.unwrap();
    deliveries[0].ack(BasicAckOptions::default()).await.unwrap();
    eventually(|| async { get_ok(&s, "/api/queues/%2F/held/unacked").await["total"] == 1 }).await;
    let j = get_ok(&s, "/api/queues/%2F/held/unacked").await;
    assert_eq!(j["items"][0]["consumer_tag"], "watcher");
    // Requeued and redelivered: the view says so.
    deliveries[1]
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = within(cons.next()).await.unwrap().unwrap();
    assert!(again.redelivered);
    eventually(|| async {
        let j = get_ok(&s, "/api/queues/%2F/held/unacked").await;
        j["total"] == 1 && j["items"][0]["redelivered"] == true
    })
    .await;
    again.ack(BasicAckOptions::default()).await.unwrap();
    eventually(|| async { get_ok(&s, "/api/queues/%2F/held/unacked").await["total"] == 0 }).await;
    assert_eq!(
        get_ok(&s, "/api/queues/%2F/held/unacked").await["items"],
        json!([])
    );
    s.shutdown().await;
}

/// The queues a route-test reaches, by name.
fn tested(j: &J) -> BTreeSet<String> {
    j["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The queues that hold a message now (each drained), after a round trip.
async fn reached(ch: &Channel, queues: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for q in queues {
        passive(ch, q).await.unwrap();
        let mut any = false;
        while ch
            .basic_get((*q).into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_some()
        {
            any = true;
        }
        if any {
            out.insert((*q).to_owned());
        }
    }
    out
}

#[tokio::test]
async fn route_test_explains_what_a_publish_does() {
    let (s, _c, ch) = start_channel().await;
    let qs = ["rt-q1", "rt-q2", "rt-q3", "rt-q4", "rt-q5"];
    for q in qs {
        queue(&ch, q, false).await;
    }
    exchange(&ch, "rt-direct", ExchangeKind::Direct, t()).await;
    exchange(&ch, "rt-topic", ExchangeKind::Topic, t()).await;
    exchange(&ch, "rt-headers", ExchangeKind::Headers, t()).await;
    exchange(&ch, "rt-ae", ExchangeKind::Fanout, t()).await;
    let mut ae = FieldTable::default();
    ae.insert("alternate-exchange".into(), long("rt-ae"));
    exchange(&ch, "rt-main", ExchangeKind::Direct, ae).await;
    bind(&ch, "rt-q1", "rt-direct", "a", t()).await;
    bind(&ch, "rt-q5", "rt-direct", "b", t()).await;
    bind(&ch, "rt-q2", "rt-topic", "a.#", t()).await;
    ch.exchange_bind(
        "rt-headers".into(),
        "rt-topic".into(),
        "a.*".into(),
        ExchangeBindOptions::default(),
        t(),
    )
    .await
    .unwrap();
    let mut hargs = FieldTable::default();
    hargs.insert("x-match".into(), long("all"));
    hargs.insert("k".into(), long("v"));
    bind(&ch, "rt-q3", "rt-headers", "", hargs).await;
    bind(&ch, "rt-q4", "rt-ae", "", t()).await;
    bind(&ch, "rt-q1", "rt-main", "main", t()).await;

    let test = |ex: &'static str, body: J| {
        let s = &s;
        async move {
            let (status, text) = raw(
                s,
                "POST",
                &format!("/api/exchanges/%2F/{ex}/route-test"),
                Some(GUEST),
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{text}");
            serde_json::from_str::<J>(&text).unwrap()
        }
    };
    let set = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();

    // Direct.
    let j = test("rt-direct", json!({"routing_key": "a"})).await;
    assert_eq!(tested(&j), set(&["rt-q1"]));
    assert_eq!(j["routed"], true);
    assert_eq!(j["exchanges"], json!(["rt-direct"]));
    assert_eq!(
        j["queues"][0],
        json!({"vhost": "/", "name": "rt-q1", "via": [{
            "source": "rt-direct", "destination": "rt-q1", "destination_type": "queue",
            "routing_key": "a", "arguments": {}, "properties_key": "a"}]})
    );
    // Nothing was published by the test.
    assert_eq!(reached(&ch, &qs).await, BTreeSet::new());
    let x = get_ok(&s, "/api/exchanges/%2F/rt-direct").await;
    assert_eq!(x["message_stats"]["publish_in"], 0);
    publish_props(&ch, "rt-direct", "a", b"x", BasicProperties::default()).await;
    assert_eq!(reached(&ch, &qs).await, tested(&j));

    // Topic, through an exchange-to-exchange binding into headers.
    let with_header = json!({"routing_key": "a.b", "properties": {"headers": {"k": "v"}}});
    let j = test("rt-topic", with_header).await;
    assert_eq!(tested(&j), set(&["rt-q2", "rt-q3"]));
    assert_eq!(j["exchanges"], json!(["rt-topic", "rt-headers"]));
    let q3 = j["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "rt-q3")
        .unwrap();
    let via = q3["via"].as_array().unwrap();
    assert_eq!(via.len(), 2);
    assert_eq!(via[0]["destination"], "rt-headers");
    assert_eq!(via[0]["destination_type"], "exchange");
    assert_eq!(via[0]["routing_key"], "a.*");
    assert_eq!(via[1]["source"], "rt-headers");
    assert_eq!(via[1]["arguments"], json!({"x-match": "all", "k": "v"}));
    let mut h = FieldTable::default();
    h.insert("k".into(), long("v"));
    publish_props(
        &ch,
        "rt-topic",
        "a.b",
        b"x",
        BasicProperties::default().with_headers(h),
    )
    .await;
    assert_eq!(reached(&ch, &qs).await, tested(&j));
    // The same key without the header: headers at the top level this time.
    let j = test(
        "rt-topic",
        json!({"routing_key": "a.b", "headers": {"k": "w"}}),
    )
    .await;
    assert_eq!(tested(&j), set(&["rt-q2"]));
    let mut h = FieldTable::default();
    h.insert("k".into(), long("w"));
    publish_props(
        &ch,
        "rt-topic",
        "a.b",
        b"x",
        BasicProperties::default().with_headers(h),
    )
    .await;
    assert_eq!(reached(&ch, &qs).await, tested(&j));

    // Alternate exchange: unroutable in rt-main, taken by rt-ae.
    let j = test("rt-main", json!({"routing_key": "elsewhere"})).await;
    assert_eq!(tested(&j), set(&["rt-q4"]));
    assert_eq!(
        j["queues"][0]["via"][0],
        json!({"source": "rt-main", "destination": "rt-ae", "destination_type": "exchange", "alternate": true})
    );
    assert_eq!(j["exchanges"], json!(["rt-main", "rt-ae"]));
    publish_props(
        &ch,
        "rt-main",
        "elsewhere",
        b"x",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(reached(&ch, &qs).await, tested(&j));
    // Routable in rt-main: the alternate is not used.
    let j = test("rt-main", json!({"routing_key": "main"})).await;
    assert_eq!(tested(&j), set(&["rt-q1"]));

    // CC and BCC add routing keys.
    let cc = json!({"routing_key": "zz", "properties": {"headers": {"CC": ["a"], "BCC": ["b"]}}});
    let j = test("rt-direct", cc).await;
    assert_eq!(tested(&j), set(&["rt-q1", "rt-q5"]));
    let keys = |ks: &[&str]| {
        AMQPValue::FieldArray(FieldArray::from(
            ks.iter().map(|k| long(k)).collect::<Vec<_>>(),
        ))
    };
    let mut h = FieldTable::default();
    h.insert("CC".into(), keys(&["a"]));
    h.insert("BCC".into(), keys(&["b"]));
    publish_props(
        &ch,
        "rt-direct",
        "zz",
        b"x",
        BasicProperties::default().with_headers(h),
    )
    .await;
    assert_eq!(reached(&ch, &qs).await, tested(&j));

    // The default exchange, and nothing at all.
    let j = test("amq.default", json!({"routing_key": "rt-q5"})).await;
    assert_eq!(tested(&j), set(&["rt-q5"]));
    assert_eq!(j["queues"][0]["via"][0]["source"], "");
    let j = test("rt-direct", json!({"routing_key": "nobody"})).await;
    assert_eq!(j["routed"], false);
    assert_eq!(j["queues"], json!([]));

    // Errors.
    let (status, _) = raw(
        &s,
        "POST",
        "/api/exchanges/%2F/nope/route-test",
        Some(GUEST),
        "{}",
    )
    .await;
    assert_eq!(status, 404);
    for body in [
        r#"{"routing_key": 5}"#,
        r#"{"properties": {"headers": {"CC": "a"}}}"#,
        "[1]",
        "{not json",
    ] {
        let (status, text) = raw(
            &s,
            "POST",
            "/api/exchanges/%2F/rt-direct/route-test",
            Some(GUEST),
            body,
        )
        .await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    // The tests themselves counted nothing.
    let x = get_ok(&s, "/api/exchanges/%2F/rt-direct").await;
    assert_eq!(x["message_stats"]["publish_in"], 2, "{x}");
    s.shutdown().await;
}

fn prom(text: &str, series: &str) -> Option<f64> {
    // The global counters carry RabbitMQ's protocol label.
    let labelled = format!("{series}{{protocol=\"amqp091\"}}");
    let series = if series.starts_with("rabbitmq_global_") {
        labelled.as_str()
    } else {
        series
    };
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn message_counters_move_and_rates_are_sampled() {
    // Rates sampled every 200 ms instead of RabbitMQ's 5 s.
    let s = start_with(|c| c.management.collect_statistics_interval = 200).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    exchange(&ch, "rates-x", ExchangeKind::Direct, t()).await;
    queue(&ch, "rates-q", false).await;
    bind(&ch, "rates-q", "rates-x", "k", t()).await;
    const N: u64 = 20;
    for i in 0..N {
        publish_props(
            &ch,
            "rates-x",
            "k",
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    ch.wait_for_confirms().await.unwrap();
    let mut cons = ch
        .basic_consume(
            "rates-q".into(),
            "rc".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap();
    for _ in 0..N {
        let d = within(cons.next()).await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.basic_cancel("rc".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    // get (requeued, then redelivered), get_no_ack, get_empty.
    publish_props(&ch, "rates-x", "k", b"g", BasicProperties::default()).await;
    let g = ch
        .basic_get("rates-q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    g.reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let g = ch
        .basic_get("rates-q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert!(g.delivery.redelivered);
    assert!(ch
        .basic_get("rates-q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    // Unroutable: one returned (mandatory), one dropped.
    ch.basic_publish(
        "rates-x".into(),
        "nowhere".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"r",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    publish_props(&ch, "rates-x", "nowhere", b"d", BasicProperties::default()).await;
    ch.wait_for_confirms().await.unwrap();
    let pubs = N + 3;

    // The channel's counts reach its snapshot within a second.
    eventually(|| async {
        let chans = get_ok(&s, "/api/channels").await;
        chans[0]["message_stats"]["publish"] == pubs
    })
    .await;
    let chans = get_ok(&s, "/api/channels").await;
    let m = &chans[0]["message_stats"];
    let expect = [
        ("publish", pubs),
        ("confirm", pubs),
        ("deliver", N),
        ("deliver_no_ack", 0),
        ("get", 1),
        ("get_no_ack", 1),
        ("get_empty", 1),
        ("deliver_get", N + 2),
        ("ack", N),
        ("redeliver", 1),
        ("return_unroutable", 1),
        ("drop_unroutable", 1),
    ];
    for (k, v) in expect {
        assert_eq!(m[k], v, "channel {k}: {m}");
        assert!(m[format!("{k}_details")]["rate"].is_f64(), "{k}");
    }
    let o = get_ok(&s, "/api/overview").await;
    let m = &o["message_stats"];
    for (k, v) in expect {
        assert_eq!(m[k], v, "overview {k}: {m}");
        assert!(m[format!("{k}_details")]["rate"].is_f64(), "{k}");
    }
    let q = get_ok(&s, "/api/queues/%2F/rates-q").await;
    let m = &q["message_stats"];
    for (k, v) in [
        ("publish", N + 1),
        ("deliver", N),
        ("get", 1),
        ("get_no_ack", 1),
        ("get_empty", 1),
        ("deliver_get", N + 2),
        ("ack", N),
        ("redeliver", 1),
    ] {
        assert_eq!(m[k], v, "queue {k}: {m}");
    }
    let x = get_ok(&s, "/api/exchanges/%2F/rates-x").await;
    assert_eq!(x["message_stats"]["publish_in"], pubs);
    assert_eq!(x["message_stats"]["publish_out"], N + 1);

    // Prometheus, with rabbitmq_prometheus's names.
    let (_, text) = raw(&s, "GET", "/metrics", None, "").await;
    for (series, v) in [
        ("rabbitmq_global_messages_received_total", pubs),
        ("rabbitmq_global_messages_confirmed_total", pubs),
        ("rabbitmq_global_messages_redelivered_total", 1),
        ("rabbitmq_global_messages_unroutable_returned_total", 1),
        ("rabbitmq_global_messages_unroutable_dropped_total", 1),
        ("rabbitmq_global_messages_delivered_total", N + 2),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            N,
        ),
        ("rabbitmq_global_messages_delivered_get_manual_ack_total", 1),
        ("rabbitmq_global_messages_delivered_get_auto_ack_total", 1),
        ("rabbitmq_global_messages_get_empty_total", 1),
        ("rabbitmq_global_messages_acknowledged_total", N),
        ("rabbitmq_channel_messages_published_total", pubs),
        ("rabbitmq_channel_messages_confirmed_total", pubs),
        ("rabbitmq_channel_messages_acked_total", N),
        ("rabbitmq_queue_messages_published_total", N + 1),
    ] {
        assert_eq!(prom(&text, series), Some(v as f64), "{series}\n{text}");
    }
    let (_, text) = raw(&s, "GET", "/metrics/per-object", None, "").await;
    assert_eq!(
        prom(
            &text,
            "rabbitmq_queue_messages_published_total{vhost=\"/\",queue=\"rates-q\"}"
        ),
        Some((N + 1) as f64),
        "{text}"
    );
    assert!(text.contains("rabbitmq_channel_messages_published_total{channel=\""));

    // Rates: publish steadily until every level has sampled a rate > 0.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pub_ch = c.create_channel().await.unwrap();
    let flag = stop.clone();
    let publisher = tokio::spawn(async move {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            publish_props(&pub_ch, "rates-x", "k", b"r", BasicProperties::default()).await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    eventually(|| async {
        let o = get_ok(&s, "/api/overview").await;
        let q = get_ok(&s, "/api/queues/%2F/rates-q").await;
        let x = get_ok(&s, "/api/exchanges/%2F/rates-x").await;
        let chans = get_ok(&s, "/api/channels").await;
        let rate = |j: &J| j["rate"].as_f64().unwrap_or(0.0);
        rate(&o["message_stats"]["publish_details"]) > 0.0
            && rate(&q["message_stats"]["publish_details"]) > 0.0
            && rate(&x["message_stats"]["publish_in_details"]) > 0.0
            && rate(&x["message_stats"]["publish_out_details"]) > 0.0
            && chans
                .as_array()
                .unwrap()
                .iter()
                .any(|c| rate(&c["message_stats"]["publish_details"]) > 0.0)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    // And a quiet period brings them back to zero.
    eventually(|| async {
        let o = get_ok(&s, "/api/overview").await;
        o["message_stats"]["publish_details"]["rate"] == 0.0
    })
    .await;
    s.shutdown().await;
}

#[test]
fn collect_statistics_interval_is_configurable_and_checked() {
    let c = warren::config::Config::parse(
        "[management]\ncollect_statistics_interval = 250\n",
        "x.toml",
    )
    .unwrap();
    assert_eq!(c.management.collect_statistics_interval, 250);
    let e =
        warren::config::Config::parse("[management]\ncollect_statistics_interval = 0\n", "x.toml")
            .unwrap_err();
    assert!(
        e.0.contains("management.collect_statistics_interval"),
        "{}",
        e.0
    );
}

/// Many channels over several connections and queues, each holding
/// deliveries (consumers' and basic.get's): each queue's unacked view
/// lists exactly its own, each naming the channel that holds it.
#[tokio::test]
async fn unacked_view_lists_many_channels_and_queues() {
    const QUEUES: usize = 3;
    const CONNS: usize = 2;
    const CHANNELS: usize = 4;
    // Every channel gets one of each queue, every other one consumes one
    // more: exactly what is published, so nothing follows the acks.
    let per_queue = CONNS * CHANNELS + CONNS * CHANNELS / 2;
    let (s, _c, admin) = start_channel().await;
    for q in 0..QUEUES {
        let name = format!("many{q}");
        queue(&admin, &name, false).await;
        for i in 0..per_queue {
            publish(&admin, "", &name, format!("{q}-{i}").as_bytes()).await;
        }
    }
    let mut conns = Vec::new();
    let mut held = Vec::new();
    let mut consumers = Vec::new();
    // Kept open: lapin closes a channel when its last handle goes.
    let mut channels = Vec::new();
    for _ in 0..CONNS {
        let c = connect(&s).await;
        for k in 0..CHANNELS {
            let ch = c.create_channel().await.unwrap();
            for q in 0..QUEUES {
                let name = format!("many{q}");
                // One by basic.get, one by a prefetch-1 consumer.
                let m = ch
                    .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .unwrap()
                    .unwrap();
                held.push(m.delivery);
                if k % 2 == 0 {
                    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
                    let mut cons = consume(&ch, &name, false).await;
                    held.push(next(&mut cons).await);
                    consumers.push(cons);
                }
            }
            channels.push(ch);
        }
        conns.push(c);
    }
    for q in 0..QUEUES {
        let j = get_ok(&s, &format!("/api/queues/%2F/many{q}/unacked?count=500")).await;
        assert_eq!(j["total"], per_queue, "{j}");
        let items = j["items"].as_array().unwrap();
        assert_eq!(items.len(), per_queue);
        let mut seen = BTreeSet::new();
        for it in items {
            assert_eq!(it["routing_key"], format!("many{q}"), "{it}");
            let cd = &it["channel_details"];
            assert!(cd["number"].as_u64().unwrap() >= 1, "{it}");
            assert!(cd["connection_name"].as_str().is_some(), "{it}");
            seen.insert((
                cd["connection_name"].as_str().unwrap().to_owned(),
                cd["number"].as_u64().unwrap(),
                it["consumer_tag"].as_str().map(str::to_owned),
            ));
        }
        assert_eq!(seen.len(), per_queue, "each delivery listed once");
        let channels: BTreeSet<_> = seen.iter().map(|(c, n, _)| (c.clone(), *n)).collect();
        assert_eq!(channels.len(), CONNS * CHANNELS, "every channel named");
    }
    for d in &held {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    for q in 0..QUEUES {
        eventually(|| async {
            get_ok(&s, &format!("/api/queues/%2F/many{q}/unacked")).await["total"] == 0
        })
        .await;
    }
    drop(consumers);
    drop(channels);
    drop(conns);
    s.shutdown().await;
}

/// Deliveries of one queue held by several channels over two connections,
/// by consumers and by basic.get: the view merges what each connection
/// reports (the queue keeps only the count), oldest first, naming each
/// holder's channel, connection and consumer tag.
#[tokio::test]
async fn unacked_view_merges_two_connections_oldest_first() {
    let (s, _c, admin) = start_channel().await;
    queue(&admin, "spread", false).await;
    // Body lengths tell the deliveries apart in the view; exactly what is
    // taken below, so nothing follows the acks.
    for len in 1..=5usize {
        publish(&admin, "", "spread", &vec![b'x'; len]).await;
    }
    let (c1, c2) = (connect(&s).await, connect(&s).await);
    let a = c1.create_channel().await.unwrap();
    let b = c2.create_channel().await.unwrap();
    let c = c1.create_channel().await.unwrap();
    let d = c2.create_channel().await.unwrap();
    let get = |ch: Channel| async move {
        ch.basic_get("spread".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message")
            .delivery
    };
    let consumer = |ch: Channel, tag: &'static str, prefetch: u16| async move {
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .unwrap();
        ch.basic_consume(
            "spread".into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
    };
    // Taken in queue order: 1 by a get on c1, 2 by c2's consumer
    // (prefetch 1), 3 and 4 by c1's (prefetch 2), 5 by a get on c2.
    let mut held = vec![get(a.clone()).await];
    let mut bc = consumer(b.clone(), "b-cons", 1).await;
    held.push(next(&mut bc).await);
    let mut cc = consumer(c.clone(), "c-cons", 2).await;
    held.push(next(&mut cc).await);
    held.push(next(&mut cc).await);
    held.push(get(d.clone()).await);
    let lens: Vec<usize> = held.iter().map(|m| m.data.len()).collect();
    assert_eq!(lens, vec![1, 2, 3, 4, 5]);

    let j = get_ok(&s, "/api/queues/%2F/spread/unacked").await;
    assert_eq!(j["total"], 5, "{j}");
    let items = j["items"].as_array().unwrap();
    let view: Vec<(u64, J, u64)> = items
        .iter()
        .map(|it| {
            (
                it["payload_bytes"].as_u64().unwrap(),
                it["consumer_tag"].clone(),
                it["channel_details"]["number"].as_u64().unwrap(),
            )
        })
        .collect();
    let (na, nb, nc, nd) = (a.id() as u64, b.id() as u64, c.id() as u64, d.id() as u64);
    assert_eq!(
        view,
        vec![
            (1, J::Null, na),
            (2, json!("b-cons"), nb),
            (3, json!("c-cons"), nc),
            (4, json!("c-cons"), nc),
            (5, J::Null, nd),
        ],
        "oldest first, with holders: {j}"
    );
    let conn_of = |i: usize| items[i]["channel_details"]["connection_name"].clone();
    assert_eq!(conn_of(0), conn_of(2));
    assert_eq!(conn_of(0), conn_of(3));
    assert_eq!(conn_of(1), conn_of(4));
    assert_ne!(conn_of(0), conn_of(1), "two connections");
    let times: Vec<u64> = items
        .iter()
        .map(|it| it["delivered_at"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The oldest three only, when asked for three.
    let j = get_ok(&s, "/api/queues/%2F/spread/unacked?count=3").await;
    let first: Vec<u64> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| it["payload_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!((j["total"].clone(), first), (json!(5), vec![1, 2, 3]));
    for m in &held {
        m.ack(BasicAckOptions::default()).await.unwrap();
    }
    eventually(|| async { get_ok(&s, "/api/queues/%2F/spread/unacked").await["total"] == 0 }).await;
    assert_eq!(
        get_ok(&s, "/api/queues/%2F/spread/unacked").await["items"],
        json!([])
    );
    drop((bc, cc, a, b, c, d, c1, c2));
    s.shutdown().await;
}
