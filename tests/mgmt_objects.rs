//! The management API's object endpoints (bindings, publish/get, health
//! checks, nodes, per-object views, pagination), checked through their real
//! effects over AMQP (lapin) and through `rabbitmq_http_client`'s typed
//! calls where it has them; raw HTTP for status codes, headers and bodies.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use rabbitmq_http_client::commons::{BindingDestinationType, PaginationParams};
use rabbitmq_http_client::requests::BindingDeletionParams;
use serde_json::{json, Value as J};
use std::time::Duration;

/// One raw request as guest; returns (status, headers (lower-cased names), body).
async fn req(
    s: &warren::server::Server,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let auth = format!("Basic {GUEST}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    http_request(s.http_addr(), method, path, &headers, body).await
}

async fn json_req(s: &warren::server::Server, method: &str, path: &str, body: J) -> (u16, J) {
    let (status, _, b) = req(s, method, path, &body.to_string()).await;
    let j = if b.is_empty() {
        J::Null
    } else {
        serde_json::from_str(&b).unwrap_or(J::String(b))
    };
    (status, j)
}

#[tokio::test]
async fn bindings_created_over_http_route_amqp_messages_and_delete_by_properties_key() {
    let s = start().await;
    let api = api(&s);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let (q, x) = (uniq("bq"), uniq("bx"));
    queue(&ch, &q, false).await;
    exchange(&ch, &x, ExchangeKind::Direct, t()).await;

    // Typed client call, then the AMQP effect: a publish to the key arrives.
    api.bind_queue("/", &q, &x, Some("k1"), None).await.unwrap();
    publish(&ch, x.as_str(), "k1", b"via-binding").await;
    let got = within(async {
        loop {
            if let Some(m) = ch
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(got.delivery.data, b"via-binding");

    // Raw POST: 201 with RabbitMQ's relative Location (the properties key
    // quoted once more as a URL segment).
    let path = format!("/api/bindings/%2F/e/{x}/q/{q}");
    let (status, headers, body) = req(
        &s,
        "POST",
        &path,
        r#"{"routing_key":"a b~c","arguments":{}}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (201, ""));
    let loc = headers.iter().find(|(k, _)| k == "location").unwrap();
    assert_eq!(loc.1, format!("{q}/a%2Bb%257Ec"));
    let (status, headers, _) = req(&s, "POST", &path, r#"{"routing_key":""}"#).await;
    assert_eq!(status, 201);
    assert!(headers.contains(&("location".into(), format!("{q}/~"))));
    let (status, headers, _) = req(
        &s,
        "POST",
        &path,
        r#"{"routing_key":"","arguments":{"x-a":1}}"#,
    )
    .await;
    assert_eq!(status, 201);
    let with_args = headers
        .iter()
        .find(|(k, _)| k == "location")
        .unwrap()
        .1
        .clone();
    assert!(with_args.starts_with(&format!("{q}/~")) && with_args.len() == q.len() + 8);

    // The pair's bindings, sorted as RabbitMQ sorts them.
    let (status, list) = json_req(&s, "GET", &path, J::Null).await;
    assert_eq!(status, 200);
    let keys: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["routing_key"].as_str().unwrap(),
                b["properties_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], ("", "~"));
    assert_eq!(keys[2], ("a b~c", "a+b%7Ec"));
    assert_eq!(keys[3], ("k1", "k1"));
    let hashed = keys[1].1.to_owned();
    assert_eq!(format!("{q}/{hashed}"), with_args);

    // One binding by its properties key; unknown keys are 404.
    let (status, one) = json_req(&s, "GET", &format!("{path}/a%2Bb%257Ec"), J::Null).await;
    assert_eq!(status, 200);
    assert_eq!(one["routing_key"], "a b~c");
    assert_eq!(one["destination_type"], "queue");
    let (status, one) = json_req(&s, "GET", &format!("{path}/{hashed}"), J::Null).await;
    assert_eq!((status, &one["arguments"]), (200, &json!({"x-a": 1})));
    for bad in ["nope", "~zzzzzz", "a~b~c"] {
        let (status, body) = json_req(&s, "GET", &format!("{path}/{bad}"), J::Null).await;
        assert_eq!(status, 404, "{bad}");
        assert_eq!(
            body,
            json!({"error": "Object Not Found", "reason": "Not Found"})
        );
    }

    // DELETE by properties key: the route is gone over AMQP.
    let (status, _, _) = req(&s, "DELETE", &format!("{path}/k1"), "").await;
    assert_eq!(status, 204);
    let (status, _, _) = req(&s, "DELETE", &format!("{path}/k1"), "").await;
    assert_eq!(status, 404);
    publish(&ch, x.as_str(), "k1", b"lost").await;
    // The passive declare on the same channel is answered after the
    // publish was routed (a channel's methods are handled in order).
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);

    // The typed client deletes by looking the properties key up.
    api.delete_binding(
        &BindingDeletionParams {
            virtual_host: "/",
            source: &x,
            destination: &q,
            destination_type: BindingDestinationType::Queue,
            routing_key: "",
            arguments: Some(serde_json::from_value(json!({"x-a": 1})).unwrap()),
        },
        false,
    )
    .await
    .unwrap();

    // The queue's bindings include the default exchange's, first.
    let qb = api.list_queue_bindings("/", &q).await.unwrap();
    let srcs: Vec<(&str, &str)> = qb
        .iter()
        .map(|b| (b.source.as_str(), b.routing_key.as_str()))
        .collect();
    assert_eq!(
        srcs,
        [("", q.as_str()), (x.as_str(), ""), (x.as_str(), "a b~c")]
    );
    let src = api
        .list_exchange_bindings_with_source("/", &x)
        .await
        .unwrap();
    assert_eq!(src.len(), 2);
    assert!(src.iter().all(|b| b.destination == q));
}

#[tokio::test]
async fn exchange_to_exchange_bindings_and_binding_errors() {
    let s = start().await;
    let api = api(&s);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let (q, a, b) = (uniq("eq"), uniq("ea"), uniq("eb"));
    queue(&ch, &q, false).await;
    exchange(&ch, &a, ExchangeKind::Topic, t()).await;
    exchange(&ch, &b, ExchangeKind::Fanout, t()).await;
    api.bind_exchange("/", &b, &a, Some("x.*"), None)
        .await
        .unwrap();
    bind(&ch, q.as_str(), b.as_str(), "", t()).await;
    publish(&ch, a.as_str(), "x.y", b"e2e").await;
    eventually(|| async { passive(&ch, &q).await.unwrap().message_count() == 1 }).await;
    let dest = api
        .list_exchange_bindings_with_destination("/", &b)
        .await
        .unwrap();
    assert_eq!(dest.len(), 1);
    assert_eq!(
        (dest[0].source.as_str(), dest[0].routing_key.as_str()),
        (a.as_str(), "x.*")
    );
    let (status, one) = json_req(
        &s,
        "GET",
        &format!("/api/bindings/%2F/e/{a}/e/{b}/x.*"),
        J::Null,
    )
    .await;
    assert_eq!(
        (status, &one["destination_type"]),
        (200, &json!("exchange"))
    );
    let (status, _, _) = req(
        &s,
        "DELETE",
        &format!("/api/bindings/%2F/e/{a}/e/{b}/x.*"),
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert!(api
        .list_exchange_bindings_with_destination("/", &b)
        .await
        .unwrap()
        .is_empty());

    // Errors as RabbitMQ's management plugin answers them.
    let cases = [
        (
            format!("/api/bindings/%2F/e/amq.default/q/{q}"),
            401,
            json!({"error": "not_authorised", "reason": "Access refused."}),
        ),
        (
            format!("/api/bindings/%2F/e/{a}/q/nope"),
            404,
            json!({"error": "not_found", "reason": "no queue 'nope' in vhost '/'"}),
        ),
        (
            format!("/api/bindings/%2F/e/nope/q/{q}"),
            404,
            json!({"error": "not_found", "reason": "no exchange 'nope' in vhost '/'"}),
        ),
        (
            format!("/api/bindings/%2F/e/{a}/e/nope"),
            404,
            json!({"error": "not_found", "reason": "no exchange 'nope' in vhost '/'"}),
        ),
        (
            format!("/api/bindings/nov/e/{a}/q/{q}"),
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"}),
        ),
    ];
    for (path, status, body) in cases {
        let got = json_req(&s, "POST", &path, json!({"routing_key": "k"})).await;
        assert_eq!(got, (status, body), "{path}");
    }
    let (status, body) = json_req(
        &s,
        "POST",
        &format!("/api/bindings/%2F/e/{a}/q/{q}"),
        json!({"routing_key": "k", "arguments": 5}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request");
    // The default exchange's implicit binding can be read, not deleted.
    let (status, _) = json_req(
        &s,
        "GET",
        &format!("/api/bindings/%2F/e/amq.default/q/{q}/{q}"),
        J::Null,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json_req(
        &s,
        "DELETE",
        &format!("/api/bindings/%2F/e/amq.default/q/{q}/{q}"),
        J::Null,
    )
    .await;
    assert_eq!(status, 401);
    // Wrong method on a known path: 405, as RabbitMQ (empty body).
    let (status, headers, body) =
        req(&s, "PUT", &format!("/api/bindings/%2F/e/{a}/q/{q}"), "").await;
    assert_eq!((status, body.as_str()), (405, ""));
    assert!(headers.iter().any(|(k, _)| k == "allow"));
    let (status, _, _) = req(&s, "GET", "/api/exchanges/%2F/amq.direct/publish", "").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn durable_bindings_made_over_http_survive_a_restart() {
    let dir = temp_dir("objects-restart");
    let (q, x) = (uniq("dq"), uniq("dx"));
    {
        let s = start_on(&dir).await;
        let conn = connect(&s).await;
        let ch = conn.create_channel().await.unwrap();
        queue(&ch, &q, true).await;
        durable_exchange(&ch, &x, ExchangeKind::Direct).await;
        let (status, _) = json_req(
            &s,
            "POST",
            &format!("/api/bindings/%2F/e/{x}/q/{q}"),
            json!({"routing_key": "rk"}),
        )
        .await;
        assert_eq!(status, 201);
        // A persistent message published over HTTP is on disk when the
        // reply comes (the API waits as a publisher confirm would).
        let (status, body) = json_req(
            &s,
            "POST",
            &format!("/api/exchanges/%2F/{x}/publish"),
            json!({"routing_key": "rk", "payload": "kept", "payload_encoding": "string",
                   "properties": {"delivery_mode": 2}}),
        )
        .await;
        assert_eq!((status, body), (200, json!({"routed": true})));
        conn.close(0, "bye".into()).await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let api = api(&s);
    let bs = api.list_queue_bindings("/", &q).await.unwrap();
    assert!(bs.iter().any(|b| b.source == x && b.routing_key == "rk"));
    let msgs = api
        .get_messages("/", &q, 5, "ack_requeue_false")
        .await
        .unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].payload, "kept");
    assert_eq!(msgs[0].properties.0["delivery_mode"], json!(2));
}

#[tokio::test]
async fn publish_over_http_reaches_amqp_consumers_with_its_properties() {
    let s = start().await;
    let api = api(&s);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let q = uniq("pq");
    queue(&ch, &q, false).await;
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap();

    let props = json!({
        "delivery_mode": 2, "content_type": "text/plain", "content_encoding": "utf-8",
        "priority": 3, "correlation_id": "corr", "reply_to": "back", "expiration": "60000",
        "message_id": "m1", "timestamp": 1_700_000_000u64, "type": "kind", "user_id": "guest",
        "app_id": "app", "headers": {"a": 1, "b": "x", "c": [1, "y"], "d": {"e": true}},
    });
    let routed = api
        .publish_message(
            "/",
            "amq.default",
            &q,
            "hello",
            props.as_object().unwrap().clone(),
        )
        .await
        .unwrap();
    assert!(routed.routed);
    let d = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"hello");
    assert_eq!(d.routing_key.as_str(), q);
    assert_eq!(d.exchange.as_str(), "");
    let p = &d.properties;
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(p.content_type().as_ref().unwrap().as_str(), "text/plain");
    assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "utf-8");
    assert_eq!(*p.priority(), Some(3));
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "corr");
    assert_eq!(p.reply_to().as_ref().unwrap().as_str(), "back");
    assert_eq!(p.expiration().as_ref().unwrap().as_str(), "60000");
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m1");
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "kind");
    assert_eq!(p.user_id().as_ref().unwrap().as_str(), "guest");
    assert_eq!(p.app_id().as_ref().unwrap().as_str(), "app");
    let h = p.headers().as_ref().unwrap().inner();
    assert_eq!(h.get("a"), Some(&AMQPValue::LongLongInt(1)));
    assert!(matches!(h.get("b"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"x"));
    assert!(matches!(h.get("c"), Some(AMQPValue::FieldArray(a)) if a.as_slice().len() == 2));
    assert!(matches!(h.get("d"), Some(AMQPValue::FieldTable(_))));
    d.ack(BasicAckOptions::default()).await.unwrap();

    // base64 payloads arrive as bytes; unroutable messages say so.
    let (status, body) = json_req(
        &s,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": q, "payload": "/wA=", "payload_encoding": "base64", "properties": {}}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"routed": true})));
    let d = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data, [0xff, 0x00]);
    let (status, body) = json_req(
        &s,
        "POST",
        "/api/exchanges/%2F/amq.direct/publish",
        json!({"routing_key": "nobody", "payload": "x", "payload_encoding": "string", "properties": {}}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"routed": false})));
    // BCC routes but is not delivered; CC is.
    let q2 = uniq("pq2");
    queue(&ch, &q2, false).await;
    let (_, body) = json_req(
        &s,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "nobody", "payload": "cc", "payload_encoding": "string",
               "properties": {"headers": {"BCC": [q2]}}}),
    )
    .await;
    assert_eq!(body, json!({"routed": true}));
    let m = api
        .get_messages("/", &q2, 1, "ack_requeue_false")
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0]
        .properties
        .0
        .get("headers")
        .is_some_and(|h| h.get("BCC").is_none()));
}

#[tokio::test]
async fn publish_errors_as_rabbitmq() {
    let s = start().await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "internal-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap();
    let ok = |extra: J| {
        let mut b = json!({"routing_key": "q", "payload": "x", "payload_encoding": "string", "properties": {}});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(&str, J, J)> = vec![
        ("amq.default", ok(json!({"payload": "!!!", "payload_encoding": "base64"})), json!(["not_base64", "!!!"])),
        ("amq.default", ok(json!({"payload_encoding": "foo"})), json!(["unsupported_encoding", "foo"])),
        ("amq.default", json!({"routing_key": "q", "payload": "x", "payload_encoding": "string"}), json!("[{key_missing,properties}]")),
        ("amq.default", ok(json!({"payload": 5})), json!("payload_not_string")),
        ("amq.default", ok(json!({"properties": {"delivery_mode": "2"}})), json!(["not_int", "delivery_mode"])),
        ("amq.default", ok(json!({"properties": {"content_type": 1}})), json!(["not_string", "content_type"])),
        ("amq.default", ok(json!({"properties": {"user_id": "bob"}})),
            json!("406 PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'")),
        ("nope", ok(json!({})), json!("404 NOT_FOUND - no exchange 'nope' in vhost '/'")),
        ("internal-x", ok(json!({})), json!("403 ACCESS_REFUSED - cannot publish to internal exchange 'internal-x' in vhost '/'")),
    ];
    for (x, body, reason) in cases {
        let got = json_req(
            &s,
            "POST",
            &format!("/api/exchanges/%2F/{x}/publish"),
            body.clone(),
        )
        .await;
        assert_eq!(
            got,
            (400, json!({"error": "bad_request", "reason": reason})),
            "{body}"
        );
    }
    let (status, _, body) = req(
        &s,
        "POST",
        "/api/exchanges/%2F/amq.direct/publish",
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<J>(&body).unwrap()["reason"],
        "not_json"
    );
}

#[tokio::test]
async fn get_modes_requeue_in_place_marked_redelivered() {
    let s = start().await;
    let api = api(&s);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let q = uniq("gq");
    queue(&ch, &q, false).await;
    for (i, body) in [b"one".to_vec(), vec![0xff, 0xfe], b"three".to_vec()]
        .into_iter()
        .enumerate()
    {
        let props = if i == 0 {
            BasicProperties::default()
                .with_delivery_mode(1)
                .with_content_type("text/plain".into())
                .with_headers(FieldTable::from(std::collections::BTreeMap::from([(
                    "h".into(),
                    AMQPValue::LongInt(7),
                )])))
        } else {
            BasicProperties::default()
        };
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // ack_requeue_true: two read, both back in place, marked redelivered.
    let path = format!("/api/queues/%2F/{q}/get");
    let (status, got) = json_req(
        &s,
        "POST",
        &path,
        json!({"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 2}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        got,
        json!([
            {"payload_bytes": 3, "redelivered": false, "exchange": "", "routing_key": q,
             "message_count": 2, "payload": "on", "payload_encoding": "string",
             "properties": {"delivery_mode": 1, "content_type": "text/plain", "headers": {"h": 7}}},
            {"payload_bytes": 2, "redelivered": false, "exchange": "", "routing_key": q,
             "message_count": 1, "payload": "//4=", "payload_encoding": "base64",
             "properties": []},
        ])
    );
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 3);
    // Over AMQP the head is still "one", now redelivered.
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"one");
    assert!(m.delivery.redelivered);
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    // Typed client, reject_requeue_true with base64: same order, all redelivered.
    let got = api
        .get_messages("/", &q, 10, "reject_requeue_true")
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(),
        ["one", "//4=", "three"]
    );
    // The third was never delivered before.
    assert_eq!(
        got.iter().map(|m| m.redelivered).collect::<Vec<_>>(),
        [true, true, false]
    );
    let (_, got) = json_req(
        &s,
        "POST",
        &path,
        json!({"count": "1", "ackmode": "reject_requeue_true", "encoding": "base64"}),
    )
    .await;
    assert_eq!(got[0]["payload"], "b25l");
    assert_eq!(got[0]["payload_encoding"], "base64");

    // reject_requeue_false and ack_requeue_false remove.
    let got = api
        .get_messages("/", &q, 1, "reject_requeue_false")
        .await
        .unwrap();
    assert_eq!(got[0].payload, "one");
    let got = api
        .get_messages("/", &q, 1, "ack_requeue_false")
        .await
        .unwrap();
    assert_eq!(got[0].payload, "//4=");
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 1);
    let got = api
        .get_messages("/", &q, 5, "ack_requeue_false")
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(api
        .get_messages("/", &q, 5, "ack_requeue_false")
        .await
        .unwrap()
        .is_empty());

    // Errors.
    let cases = [
        (
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "xx"}),
            400,
            json!({"error": "bad_request", "reason": "Unsupported encoding. Please use auto or base64."}),
        ),
        (
            json!({"count": 1, "ackmode": "ack_requeue_true"}),
            400,
            json!({"error": "bad_request", "reason": "[{key_missing,encoding}]"}),
        ),
        (
            json!({"count": "x", "ackmode": "ack_requeue_true", "encoding": "auto"}),
            400,
            json!({"error": "bad_request", "reason": ["not_integer", "x"]}),
        ),
    ];
    for (body, status, reply) in cases {
        assert_eq!(json_req(&s, "POST", &path, body).await, (status, reply));
    }
    let (status, body) = json_req(
        &s,
        "POST",
        &path,
        json!({"count": 1, "ackmode": "bogus", "encoding": "auto"}),
    )
    .await;
    assert_eq!((status, &body["error"]), (400, &json!("bad_request")));
    let got = json_req(
        &s,
        "POST",
        "/api/queues/%2F/nope/get",
        json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
    )
    .await;
    assert_eq!(
        got,
        (
            404,
            json!({"error": "not_found", "reason": "NOT_FOUND - no queue 'nope' in vhost '/'"})
        )
    );
}

#[tokio::test]
async fn health_checks_nodes_and_cluster_name() {
    let s = start().await;
    let api = api(&s);
    let (status, body) = json_req(&s, "GET", "/api/aliveness-test/%2F", J::Null).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    // The queue stays (as RabbitMQ's), empty.
    let q = api.get_queue_info("/", "aliveness-test").await.unwrap();
    assert_eq!(q.message_count, 0);
    let (status, _) = json_req(&s, "GET", "/api/aliveness-test/nov", J::Null).await;
    assert_eq!(status, 404);

    for port in [
        s.amqp_addr().port(),
        s.http_addr().port(),
        s.prometheus_addr().port(),
    ] {
        api.health_check_port_listener(port).await.unwrap();
        let (status, body) = json_req(
            &s,
            "GET",
            &format!("/api/health/checks/port-listener/{port}"),
            J::Null,
        )
        .await;
        assert_eq!((status, body), (200, json!({"status": "ok", "port": port})));
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(api.health_check_port_listener(closed).await.is_err());
    let (status, body) = json_req(
        &s,
        "GET",
        &format!("/api/health/checks/port-listener/{closed}"),
        J::Null,
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"status": "failed", "reason": "No active listener", "missing": closed,
               "ports": [s.amqp_addr().port(), s.http_addr().port(), s.prometheus_addr().port()]})
    );
    let (status, body) = json_req(&s, "GET", "/api/health/checks/port-listener/abc", J::Null).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "bad_request", "reason": "Invalid port"})
        )
    );
    api.health_check_if_node_is_quorum_critical().await.unwrap();

    // Nodes: one, with live figures.
    let conn = connect(&s).await;
    let nodes = api.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    let n = api.get_node_info(&nodes[0].name).await.unwrap();
    assert_eq!(n.name, "warren@localhost");
    assert!(n.memory_high_watermark > 0);
    assert_eq!(n.os_pid, std::process::id());
    let (status, raw_node) = json_req(&s, "GET", "/api/nodes/warren@localhost", J::Null).await;
    assert_eq!(status, 200);
    assert!(raw_node["mem_used"].as_u64().unwrap() > 1_000_000);
    assert!(raw_node["fd_used"].as_u64().unwrap() > 3);
    assert!(raw_node["fd_total"].as_u64().unwrap() >= raw_node["fd_used"].as_u64().unwrap());
    assert!(raw_node["disk_free"].as_u64().unwrap() > 0);
    assert_eq!(raw_node["sockets_used"], 1);
    assert_eq!(raw_node["running"], true);
    assert_eq!(raw_node["type"], "disc");
    assert_eq!(raw_node["rates_mode"], "basic");
    assert!(raw_node["exchange_types"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "topic"));
    let (status, body) = json_req(&s, "GET", "/api/nodes/rabbit@elsewhere", J::Null).await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": "Object Not Found", "reason": "Not Found"})
        )
    );
    drop(conn);

    assert_eq!(
        api.get_cluster_name().await.unwrap().name,
        "warren@localhost"
    );
}

#[tokio::test]
async fn per_vhost_and_per_connection_views() {
    let s = start().await;
    let api = api(&s);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let _ch2 = conn.create_channel().await.unwrap();
    let q = uniq("vq");
    queue(&ch, &q, false).await;
    // Held: lapin cancels a consumer that is dropped.
    let _consumer = ch
        .basic_consume(
            q.as_str().into(),
            "ctag".into(),
            BasicConsumeOptions::default(),
            t(),
        )
        .await
        .unwrap();
    // Channel snapshots refresh about once a second.
    eventually(|| async {
        let (_, chans) = json_req(&s, "GET", "/api/vhosts/%2F/channels", J::Null).await;
        chans.as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .map(|c| c["consumer_count"].as_u64().unwrap())
                    .sum::<u64>()
                    == 1
        })
    })
    .await;
    let (status, conns) = json_req(&s, "GET", "/api/vhosts/%2F/connections", J::Null).await;
    assert_eq!(status, 200);
    let cname = conns[0]["name"].as_str().unwrap().to_owned();
    assert_eq!(conns.as_array().unwrap().len(), 1);
    let on = api.list_channels_on(&cname).await.unwrap();
    assert_eq!(on.len(), 2);
    let first = format!("{cname} ({})", ch.id());
    let info = api.get_channel_info(&first).await.unwrap();
    assert_eq!(info.name, first);
    let (status, one) = json_req(
        &s,
        "GET",
        &format!(
            "/api/channels/{}",
            first.replace(' ', "%20").replace('>', "%3E")
        ),
        J::Null,
    )
    .await;
    assert_eq!((status, &one["consumer_count"]), (200, &json!(1)));
    let (status, _) = json_req(&s, "GET", "/api/channels/nope", J::Null).await;
    assert_eq!(status, 404);
    let cons = api.list_consumers_in("/").await.unwrap();
    assert_eq!(cons.len(), 1);
    assert_eq!(cons[0].consumer_tag, "ctag");
    for path in [
        "/api/vhosts/nov/connections",
        "/api/vhosts/nov/channels",
        "/api/consumers/nov",
        "/api/connections/nope/channels",
    ] {
        assert_eq!(json_req(&s, "GET", path, J::Null).await.0, 404, "{path}");
    }
    // Paged channels.
    let (_, page) = json_req(
        &s,
        "GET",
        "/api/channels?page=1&page_size=1&columns=name",
        J::Null,
    )
    .await;
    assert_eq!(page["total_count"], 2);
    assert_eq!(page["page_count"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0].as_object().unwrap().len(), 1);
    let paged = api
        .list_channels_paged(&PaginationParams::new(2, 1))
        .await
        .unwrap();
    assert_eq!(paged.len(), 1);
}

#[tokio::test]
async fn pagination_sorting_and_columns_on_10000_queues() {
    let s = start().await;
    let api = api(&s);
    let v = s.broker().vhost("/").unwrap();
    let opts = warren::broker::QueueOptions {
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    for i in 0..10_000 {
        v.declare_queue(&format!("q{i:05}"), false, opts.clone(), 0)
            .unwrap();
    }
    // A few with messages, to sort by.
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    for (name, n) in [("q00007", 3), ("q05000", 5), ("q09999", 1)] {
        for _ in 0..n {
            ch.basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    let (status, page) = json_req(
        &s,
        "GET",
        "/api/queues?page=3&page_size=100&columns=name,messages",
        J::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["total_count"], 10_000);
    assert_eq!(page["filtered_count"], 10_000);
    assert_eq!(page["page_count"], 100);
    assert_eq!(page["page"], 3);
    assert_eq!(page["page_size"], 100);
    assert_eq!(page["item_count"], 100);
    assert_eq!(page["items"][0], json!({"name": "q00200", "messages": 0}));
    let (_, page) = json_req(
        &s,
        "GET",
        "/api/queues/%2F?page=1&page_size=3&sort=messages&sort_reverse=true&columns=name,messages",
        J::Null,
    )
    .await;
    assert_eq!(
        page["items"],
        json!([{"name": "q05000", "messages": 5}, {"name": "q00007", "messages": 3}, {"name": "q09999", "messages": 1}])
    );
    let (_, page) = json_req(
        &s,
        "GET",
        "/api/queues?page=1&page_size=500&name=Q0999&columns=name",
        J::Null,
    )
    .await;
    assert_eq!(page["filtered_count"], 10);
    let (_, page) = json_req(
        &s,
        "GET",
        "/api/queues?page=1&name=%5Eq0000%5B12%5D%24&use_regex=true&columns=name",
        J::Null,
    )
    .await;
    assert_eq!(
        page["items"],
        json!([{"name": "q00001"}, {"name": "q00002"}])
    );
    // Dotted columns keep the nested object's wanted fields only.
    let (_, page) = json_req(&s, "GET", "/api/queues?page=1&page_size=1&sort=message_stats.publish&sort_reverse=true&columns=name,message_stats.publish", J::Null).await;
    assert_eq!(
        page["items"],
        json!([{"name": "q05000", "message_stats": {"publish": 5}}])
    );
    // Typed client paging.
    let typed = api
        .list_queues_paged(&PaginationParams::new(100, 100))
        .await
        .unwrap();
    assert_eq!(typed.len(), 100);
    assert_eq!(typed[0].name, "q09900");
    // Without page: a plain array, columns still apply.
    let (_, all) = json_req(
        &s,
        "GET",
        "/api/exchanges?columns=name,type&sort=type",
        J::Null,
    )
    .await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0], json!({"name": "", "type": "direct"}));

    // RabbitMQ never pages binding lists: `page` is ignored, columns apply.
    let (_, b) = json_req(
        &s,
        "GET",
        "/api/bindings/%2F?page=1&page_size=1&columns=destination",
        J::Null,
    )
    .await;
    assert_eq!(b.as_array().unwrap().len(), 10_000);
    assert_eq!(b[0], json!({"destination": "q00000"}));

    let errors = [
        (
            "/api/queues?page=1&page_size=600",
            "invalid_pagination_parameters",
            "Invalid pagination parameters: page number 1, page size 600",
        ),
        (
            "/api/queues?page=0",
            "invalid_pagination_parameters",
            "Invalid pagination parameters: page number 0, page size undefined",
        ),
        (
            "/api/queues?page=x",
            "bad_request",
            "Pagination parameters are invalid",
        ),
        (
            "/api/queues?page=1&name=(&use_regex=true",
            "bad_request",
            "Pagination parameters are invalid",
        ),
        (
            "/api/queues?page=102",
            "page_out_of_range",
            "Page out of range, page: 102 page size: 100, len: 10000",
        ),
        (
            "/api/exchanges/%2F?page=2&page_size=1&name=zzz",
            "page_out_of_range",
            "Page out of range, page: 2 page size: 1, len: 0",
        ),
    ];
    for (path, error, reason) in errors {
        assert_eq!(
            json_req(&s, "GET", path, J::Null).await,
            (400, json!({"error": error, "reason": reason})),
            "{path}"
        );
    }
}

#[tokio::test]
async fn get_count_is_bounded_and_unroutable_api_publishes_are_counted() {
    let s = start().await;
    let (st, _) = json_req(&s, "PUT", "/api/queues/%2F/bounded", json!({})).await;
    assert_eq!(st, 201);
    for count in [-1, 10_001] {
        let (st, body) = json_req(
            &s,
            "POST",
            "/api/queues/%2F/bounded/get",
            json!({"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
        assert_eq!(st, 400, "{count}: {body}");
        assert!(body["reason"].as_str().unwrap().contains("count"), "{body}");
    }
    let (st, body) = json_req(
        &s,
        "POST",
        "/api/queues/%2F/bounded/get",
        json!({"count": 0, "ackmode": "ack_requeue_true", "encoding": "auto"}),
    )
    .await;
    assert_eq!((st, body), (200, json!([])));

    // An unroutable publish through the API counts as dropped, so the
    // routed total stays right.
    let (st, body) = json_req(
        &s,
        "POST",
        "/api/exchanges/%2F/amq.direct/publish",
        json!({"routing_key": "nowhere", "payload": "x", "payload_encoding": "string", "properties": {}}),
    )
    .await;
    assert_eq!((st, body), (200, json!({"routed": false})));
    let (_, text) = raw_at(s.prometheus_addr(), "GET", "/metrics", None, "").await;
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .map(|l| l[name.len()..].trim().to_owned())
    };
    assert_eq!(
        line("rabbitmq_global_messages_unroutable_dropped_total{protocol=\"amqp091\"}").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        line("rabbitmq_global_messages_routed_total{protocol=\"amqp091\"}").as_deref(),
        Some("0"),
        "{text}"
    );
}

/// Under a delivery limit a get carries `x-delivery-count`, over HTTP as
/// over AMQP; it is added when the reply is framed, so the queue keeps
/// the message as published: each get shows its own count, once, beside
/// the message's own headers. And a message published over HTTP with a
/// `BCC` header keeps its keys, so its dead letter is routed by them.
#[tokio::test]
async fn gets_under_a_delivery_limit_carry_the_count_and_http_bcc_routes_dead_letters() {
    let s = start().await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let q = uniq("limited");
    let dlq = uniq("by-bcc");
    declare(&ch, &dlq, t()).await;
    let a = args(&[
        ("x-delivery-limit", AMQPValue::LongInt(5)),
        ("x-dead-letter-exchange", longstr("amq.direct")),
    ]);
    declare(&ch, &q, a).await;
    bind(&ch, &dlq, "amq.direct", "bcc-key", t()).await;
    let (status, _) = json_req(
        &s,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": q, "payload": "m", "payload_encoding": "string",
               "properties": {"headers": {"h": 1, "BCC": ["bcc-key"]}}}),
    )
    .await;
    assert_eq!(status, 200);
    let path = format!("/api/queues/%2F/{q}/get");
    for n in 0..2 {
        let (status, got) = json_req(
            &s,
            "POST",
            &path,
            json!({"count": 1, "ackmode": "reject_requeue_true", "encoding": "auto"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            got[0]["properties"]["headers"],
            json!({"h": 1, "x-delivery-count": n}),
            "{got}"
        );
    }
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the message");
    let h = m.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        h.inner().get("x-delivery-count"),
        Some(&AMQPValue::LongLongInt(2))
    );
    assert!(!h.inner().contains_key("BCC"));
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    wait_until("the dead letter", Duration::from_secs(10), || async {
        passive(&ch, &dlq).await.unwrap().message_count() == 1
    })
    .await;
    let m = ch
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter");
    let h = m.delivery.properties.headers().clone().unwrap();
    assert_eq!(h.inner().get("h"), Some(&AMQPValue::LongLongInt(1)));
    assert!(!h.inner().contains_key("BCC"));
    assert!(
        !h.inner().contains_key("x-delivery-count"),
        "the queue kept the message as published"
    );
}
