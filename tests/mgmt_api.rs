//! The management HTTP API, driven by lapin (AMQP side) and by
//! `rabbitmq_http_client` (so RabbitMQ's JSON shapes are read by a real
//! client's types), plus raw HTTP for status codes and error bodies.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use rabbitmq_http_client::requests::{ExchangeParams, QueueParams};

#[tokio::test]
async fn overview_whoami_users_and_vhosts() {
    let s = start().await;
    let api = api(&s);
    let o = api.overview().await.unwrap();
    assert_eq!(o.product_name, "Warren");
    assert_eq!(o.cluster_name, "warren@localhost");
    assert!(o
        .listeners
        .iter()
        .any(|l| l.protocol == "amqp" && l.port == s.amqp_addr().port() as u32));
    assert!(o
        .listeners
        .iter()
        .any(|l| l.protocol == "http" && l.port == s.http_addr().port() as u32));
    // The default exchange and the five amq.* ones.
    assert_eq!(o.object_totals.exchanges, 6);
    assert_eq!(o.object_totals.queues, 0);

    let me = api.current_user().await.unwrap();
    assert_eq!(me.name, "guest");
    assert!(me.tags.contains("administrator"));

    let users = api.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "guest");

    let vhosts = api.list_vhosts().await.unwrap();
    assert_eq!(
        vhosts.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["/"]
    );
    assert_eq!(api.get_vhost("/").await.unwrap().name, "/");
    api.health_check_cluster_wide_alarms().await.unwrap();
    let (status, body) = raw(
        &s,
        "GET",
        "/api/health/checks/virtual-hosts",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    s.shutdown().await;
}

#[tokio::test]
async fn queues_exchanges_bindings_and_counters_are_listed() {
    let (s, _c, ch) = start_channel().await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(100));
    ch.queue_declare("listed".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    ch.exchange_declare(
        "fan".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        t(),
    )
    .await
    .unwrap();
    bind(&ch, "listed", "fan", "k", t()).await;
    for _ in 0..3 {
        publish(&ch, "fan", "", b"m").await;
    }
    let got = ch
        .basic_get("listed".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    // A round trip so the ack has been handled.
    passive(&ch, "listed").await.unwrap();

    let api = api(&s);
    let qs = api.list_queues_in("/").await.unwrap();
    assert_eq!(qs.len(), 1);
    let q = &qs[0];
    assert_eq!((q.name.as_str(), q.vhost.as_str()), ("listed", "/"));
    assert_eq!(q.queue_type, "classic");
    assert_eq!(q.message_count, 2);
    assert!(!q.durable && !q.exclusive && !q.auto_delete);
    assert_eq!(
        q.arguments.0.get("x-max-length"),
        Some(&serde_json::json!(100))
    );
    assert_eq!(api.list_queues().await.unwrap().len(), 1);
    assert_eq!(
        api.get_queue_info("/", "listed")
            .await
            .unwrap()
            .message_count,
        2
    );

    let xs = api.list_exchanges_in("/").await.unwrap();
    let fan = xs.iter().find(|x| x.name == "fan").expect("fan listed");
    assert_eq!(fan.exchange_type, "fanout");
    assert!(xs
        .iter()
        .any(|x| x.name == "amq.topic" && x.exchange_type == "topic"));
    assert_eq!(
        api.get_exchange_info("/", "amq.headers")
            .await
            .unwrap()
            .exchange_type,
        "headers"
    );

    let bs = api.list_bindings_in("/").await.unwrap();
    assert!(bs
        .iter()
        .any(|b| b.source == "fan" && b.destination == "listed" && b.routing_key == "k"));
    assert!(bs
        .iter()
        .any(|b| b.source.is_empty() && b.destination == "listed" && b.routing_key == "listed"));
    assert_eq!(api.list_bindings().await.unwrap().len(), bs.len());

    // Counters, as RabbitMQ's message_stats.
    let (status, body) = raw(&s, "GET", "/api/queues/%2F/listed", Some(GUEST), "").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["message_stats"]["publish"], 3);
    assert_eq!(j["message_stats"]["deliver_get"], 1);
    assert_eq!(j["message_stats"]["ack"], 1);
    assert!(j["message_stats"]["publish_details"]["rate"].is_f64());
    let o = api.overview().await.unwrap();
    assert_eq!(o.queue_totals.messages, 2);
    assert_eq!(o.object_totals.queues, 1);
    assert_eq!(o.object_totals.connections, 1);
    s.shutdown().await;
}

#[tokio::test]
async fn connections_channels_and_consumers_are_listed() {
    let (s, c, ch) = start_channel().await;
    queue(&ch, "cq", false).await;
    ch.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let _consumer = ch
        .basic_consume(
            "cq".into(),
            "ctag-1".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "cq".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let api = api(&s);
    eventually(|| {
        let api = &api;
        async move {
            api.list_channels()
                .await
                .unwrap()
                .first()
                .is_some_and(|c| c.consumer_count == 1 && c.messages_unacknowledged == 1)
        }
    })
    .await;

    let conns = api.list_connections().await.unwrap();
    assert_eq!(conns.len(), 1);
    let conn = &conns[0];
    assert_eq!(conn.username, "guest");
    assert_eq!(conn.protocol, "AMQP 0-9-1");
    assert_eq!(conn.server_port, Some(s.amqp_addr().port() as u32));
    assert_eq!(conn.client_hostname.as_deref(), Some("127.0.0.1"));
    assert_eq!(conn.channel_count, 1);
    assert!(conn.connected_at > 1_600_000_000_000);
    assert_eq!(conn.client_properties.product, "lapin");
    assert!(
        conn.client_properties
            .capabilities
            .as_ref()
            .unwrap()
            .publisher_confirms
    );
    assert_eq!(
        conn.name,
        format!(
            "127.0.0.1:{} -> {}",
            conn.client_port.unwrap(),
            s.amqp_addr()
        )
    );

    let chans = api.list_channels().await.unwrap();
    assert_eq!(chans.len(), 1);
    let chan = &chans[0];
    assert_eq!(chan.id, 1);
    assert_eq!(chan.prefetch_count, 7);
    assert!(chan.has_publisher_confirms_enabled);
    assert_eq!(chan.connection_details.name, conn.name);
    assert_eq!(chan.vhost, "/");

    let cons = api.list_consumers().await.unwrap();
    assert_eq!(cons.len(), 1);
    let k = &cons[0];
    assert_eq!(k.consumer_tag, "ctag-1");
    assert!(k.manual_ack);
    assert!(!k.exclusive);
    assert_eq!(k.prefetch_count, 7);
    assert_eq!((k.queue.name.as_str(), k.queue.vhost.as_str()), ("cq", "/"));
    let cd = k.channel_details.as_ref().expect("channel details");
    assert_eq!((cd.id, cd.username.as_str()), (1, "guest"));
    assert_eq!(cd.connection_name, conn.name);

    let o = api.overview().await.unwrap();
    assert_eq!(o.object_totals.consumers, 1);
    assert_eq!(o.object_totals.channels, 1);
    assert_eq!(
        o.queue_totals
            .messages_delivered_but_unacknowledged_by_consumers,
        1
    );

    c.close(200, "bye".into()).await.unwrap();
    eventually(|| {
        let api = &api;
        async move { api.list_connections().await.unwrap().is_empty() }
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn queues_and_exchanges_declared_through_the_api_are_seen_from_amqp() {
    let s = start().await;
    let api = api(&s);
    api.declare_queue("/", &QueueParams::new_durable_classic_queue("apiq", None))
        .await
        .unwrap();
    api.declare_exchange("/", &ExchangeParams::durable_fanout("apix", None))
        .await
        .unwrap();
    let info = api.get_queue_info("/", "apiq").await.unwrap();
    assert!(info.durable);
    assert_eq!(
        api.get_exchange_info("/", "apix")
            .await
            .unwrap()
            .exchange_type,
        "fanout"
    );

    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    passive_exchange(&ch, "apix").await.unwrap();
    bind(&ch, "apiq", "apix", "", t()).await;
    for _ in 0..2 {
        publish(&ch, "apix", "", b"m").await;
    }
    let q = ch.queue_declare("apiq".into(), passive, t()).await.unwrap();
    assert_eq!(q.message_count(), 2);

    // Purge through the API.
    api.purge_queue("/", "apiq").await.unwrap();
    let q = ch.queue_declare("apiq".into(), passive, t()).await.unwrap();
    assert_eq!(q.message_count(), 0);
    assert_eq!(
        api.get_queue_info("/", "apiq").await.unwrap().message_count,
        0
    );

    // Delete both through the API: AMQP no longer sees them.
    api.delete_exchange("/", "apix", false).await.unwrap();
    api.delete_queue("/", "apiq", false).await.unwrap();
    let e = ch
        .queue_declare("apiq".into(), passive, t())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NOT_FOUND - no queue 'apiq'"), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = passive_exchange(&ch, "apix").await.unwrap_err();
    assert!(
        e.to_string().contains("NOT_FOUND - no exchange 'apix'"),
        "{e}"
    );

    // PUT answers 201 for a new queue, 204 for an existing one.
    let body = r#"{"durable":false,"auto_delete":false,"arguments":{"x-max-length":5}}"#;
    assert_eq!(
        raw(&s, "PUT", "/api/queues/%2F/rawq", Some(GUEST), body)
            .await
            .0,
        201
    );
    assert_eq!(
        raw(&s, "PUT", "/api/queues/%2F/rawq", Some(GUEST), body)
            .await
            .0,
        204
    );
    let q = api.get_queue_info("/", "rawq").await.unwrap();
    assert!(!q.durable);
    assert_eq!(
        q.arguments.0.get("x-max-length"),
        Some(&serde_json::json!(5))
    );
    // A redeclare that differs is refused like AMQP's 406, as a 400.
    let (status, body) = raw(
        &s,
        "PUT",
        "/api/queues/%2F/rawq",
        Some(GUEST),
        r#"{"durable":true}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("inequivalent arg 'durable'"), "{body}");
    // if-empty / if-unused, as RabbitMQ's query parameters.
    // (The failed passive declare above closed that channel.)
    let ch = c.create_channel().await.unwrap();
    publish(&ch, "", "rawq", b"m").await;
    let q = ch.queue_declare("rawq".into(), passive, t()).await.unwrap();
    assert_eq!(q.message_count(), 1);
    let (status, body) = raw(
        &s,
        "DELETE",
        "/api/queues/%2F/rawq?if-empty=true",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("not empty"), "{body}");
    let (status, _) = raw(
        &s,
        "DELETE",
        "/api/queues/%2F/rawq?if-unused=true",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = raw(&s, "DELETE", "/api/queues/%2F/rawq", Some(GUEST), "").await;
    assert_eq!(status, 404);
    // The default exchange is amq.default in URLs, and cannot be deleted.
    let (status, body) = raw(&s, "GET", "/api/exchanges/%2F/amq.default", Some(GUEST), "").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (j["name"].as_str(), j["type"].as_str()),
        (Some(""), Some("direct"))
    );
    let (status, _) = raw(
        &s,
        "DELETE",
        "/api/exchanges/%2F/amq.default",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 403);
    s.shutdown().await;
}

#[tokio::test]
async fn closing_a_connection_through_the_api_sends_320() {
    let s = start().await;
    let c = connect(&s).await;
    let events = c.events_listener();
    let api = api(&s);
    let conns = api.list_connections().await.unwrap();
    assert_eq!(conns.len(), 1);
    api.close_connection(&conns[0].name, Some("maintenance"), false)
        .await
        .unwrap();
    until_closed(&c).await;
    let err = within(async {
        use futures_lite::StreamExt;
        let mut events = std::pin::pin!(events);
        loop {
            if let Some(lapin::Event::Error(e)) = events.next().await {
                break e.to_string();
            }
        }
    })
    .await;
    assert!(err.contains("CONNECTION_FORCED - maintenance"), "{err}");
    eventually(|| {
        let api = &api;
        async move { api.list_connections().await.unwrap().is_empty() }
    })
    .await;
    // An unknown connection is a 404.
    let (status, _) = raw(&s, "DELETE", "/api/connections/nope", Some(GUEST), "").await;
    assert_eq!(status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn errors_have_rabbitmq_status_codes_and_bodies() {
    let s = start().await;
    // 401: bad password, no credentials.
    let bad = rabbitmq_http_client::api::Client::new(api_url(&s), "guest", "wrong");
    match bad.overview().await {
        Err(rabbitmq_http_client::error::Error::ClientErrorResponse { status_code, .. }) => {
            assert_eq!(status_code.as_u16(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let (status, body) = raw(&s, "GET", "/api/overview", None, "").await;
    assert_eq!(status, 401);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["error"], "not_authorized");
    // base64("guest:nope")
    let (status, _) = raw(&s, "GET", "/api/overview", Some("Z3Vlc3Q6bm9wZQ=="), "").await;
    assert_eq!(status, 401);

    // 404: unknown queue, exchange, vhost, path.
    let api = api(&s);
    assert!(api.get_queue_info("/", "missing").await.is_err());
    for path in [
        "/api/queues/%2F/missing",
        "/api/exchanges/%2F/missing",
        "/api/vhosts/nope",
        "/api/queues/nope",
        "/api/no-such-thing",
    ] {
        let (status, body) = raw(&s, "GET", path, Some(GUEST), "").await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            body, r#"{"error":"Object Not Found","reason":"Not Found"}"#,
            "{path}"
        );
    }

    // 400: malformed JSON bodies, never a panic.
    for body in ["{", "[1,2]", r#"{"durable": 3}"#, r#"{"arguments": 1}"#] {
        let (status, reply) = raw(&s, "PUT", "/api/queues/%2F/q", Some(GUEST), body).await;
        assert_eq!(status, 400, "{body}");
        let j: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(j["error"], "bad_request", "{body}");
    }
    let (status, _) = raw(&s, "PUT", "/api/exchanges/%2F/x", Some(GUEST), "{}").await;
    assert_eq!(status, 400, "an exchange type is required");
    let (status, _) = raw(
        &s,
        "PUT",
        "/api/exchanges/%2F/x",
        Some(GUEST),
        r#"{"type":"nope"}"#,
    )
    .await;
    assert_eq!(status, 400);
    // The broker still serves.
    assert_eq!(api.list_queues().await.unwrap().len(), 0);
    s.shutdown().await;
}

/// The value of an unlabelled or labelled sample line in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn prometheus_metrics_use_rabbitmq_names_on_both_listeners() {
    let (s, _c, ch) = start_channel().await;
    queue(&ch, "prom-q", false).await;
    for _ in 0..3 {
        publish(&ch, "", "prom-q", b"m").await;
    }
    let got = ch
        .basic_get("prom-q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap();
    assert!(got.is_some());
    passive(&ch, "prom-q").await.unwrap();
    for addr in [s.http_addr(), s.prometheus_addr()] {
        // No login needed, as with RabbitMQ's Prometheus endpoint.
        let (status, text) = raw_at(addr, "GET", "/metrics", None, "").await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("# TYPE rabbitmq_queue_messages_ready gauge"),
            "{text}"
        );
        assert_eq!(sample(&text, "rabbitmq_connections"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "rabbitmq_queues"), Some(1.0));
        assert_eq!(sample(&text, "rabbitmq_queue_messages_ready"), Some(2.0));
        assert_eq!(sample(&text, "rabbitmq_queue_messages_unacked"), Some(1.0));
        assert_eq!(sample(&text, "rabbitmq_queue_messages"), Some(3.0));
        assert_eq!(
            sample(
                &text,
                "rabbitmq_global_messages_received_total{protocol=\"amqp091\"}"
            ),
            Some(3.0)
        );
        let (status, text) = raw_at(addr, "GET", "/metrics/per-object", None, "").await;
        assert_eq!(status, 200);
        assert_eq!(
            sample(
                &text,
                "rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"prom-q\"}"
            ),
            Some(2.0),
            "{text}"
        );
    }
    // The Prometheus listener serves nothing else.
    let (status, _) = raw_at(s.prometheus_addr(), "GET", "/api/overview", Some(GUEST), "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn churn_counts_and_process_metrics() {
    let s = start().await;
    let c = connect(&s).await;
    let ch1 = c.create_channel().await.unwrap();
    let ch2 = c.create_channel().await.unwrap();
    queue(&ch1, "churn-a", false).await;
    // A redeclare counts as declared, not created.
    queue(&ch1, "churn-a", false).await;
    queue(&ch1, "churn-b", false).await;
    ch1.queue_delete("churn-b".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch2.close(200, "bye".into()).await.unwrap();
    let c2 = connect(&s).await;
    c2.close(200, "bye".into()).await.unwrap();

    // The server forgets a connection just after its close-ok.
    eventually(|| async {
        let (_, text) = raw_at(s.prometheus_addr(), "GET", "/metrics", None, "").await;
        sample(&text, "rabbitmq_connections_closed_total") == Some(1.0)
    })
    .await;
    let (status, text) = raw_at(s.prometheus_addr(), "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    for (series, want) in [
        ("rabbitmq_connections_opened_total", 2.0),
        ("rabbitmq_connections_closed_total", 1.0),
        ("rabbitmq_channels_opened_total", 2.0),
        ("rabbitmq_channels_closed_total", 1.0),
        ("rabbitmq_queues_declared_total", 3.0),
        ("rabbitmq_queues_created_total", 2.0),
        ("rabbitmq_queues_deleted_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
    }
    // Process figures are real readings, not placeholders.
    let rss = sample(&text, "rabbitmq_process_resident_memory_bytes").unwrap();
    assert!(rss > 1_000_000.0, "{rss}");
    let fds = sample(&text, "rabbitmq_process_open_fds").unwrap();
    let max = sample(&text, "rabbitmq_process_max_fds").unwrap();
    assert!(fds >= 3.0 && max >= fds, "{fds} {max}");
    assert!(sample(&text, "rabbitmq_disk_space_available_bytes").unwrap() > 0.0);
    assert!(sample(&text, "rabbitmq_resident_memory_limit_bytes").unwrap() > rss);
    assert!(text.contains("rabbitmq_build_info{"), "{text}");

    // The overview's churn_rates carry the same counts.
    let (_, body) = raw(&s, "GET", "/api/overview", Some(GUEST), "").await;
    let o: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(o["churn_rates"]["queue_created"], 2, "{}", o["churn_rates"]);
    assert_eq!(o["churn_rates"]["channel_closed"], 1);
    assert!(o["churn_rates"]["connection_created_details"]["rate"].is_number());
}

#[tokio::test]
async fn exchange_delete_if_unused_refuses_while_bound() {
    let (s, _c, ch) = start_channel().await;
    ch.exchange_declare(
        "iu-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        t(),
    )
    .await
    .unwrap();
    queue(&ch, "iu-q", false).await;
    bind(&ch, "iu-q", "iu-x", "k", t()).await;
    let (status, body) = raw(
        &s,
        "DELETE",
        "/api/exchanges/%2F/iu-x?if-unused=true",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("in use"), "{body}");
    ch.queue_unbind("iu-q".into(), "iu-x".into(), "k".into(), t())
        .await
        .unwrap();
    let (status, body) = raw(
        &s,
        "DELETE",
        "/api/exchanges/%2F/iu-x?if-unused=true",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = raw(&s, "GET", "/api/exchanges/%2F/iu-x", Some(GUEST), "").await;
    assert_eq!(status, 404);
}
