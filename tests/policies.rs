//! Policies and operator policies over the management API (RabbitMQ's
//! JSON, status codes and validation texts), their matching to queues
//! and exchanges, `alternate-exchange` applied from a policy to real
//! publishes, durability, vhost deletion and definitions round trips.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value as J};
use warren::server::Server;

async fn put(s: &Server, path: &str, body: J) -> (u16, String) {
    raw(s, "PUT", path, Some(GUEST), &body.to_string()).await
}

async fn del(s: &Server, path: &str) -> u16 {
    raw(s, "DELETE", path, Some(GUEST), "").await.0
}

/// A PUT that must succeed (201 or 204).
async fn put_ok(s: &Server, path: &str, body: J) -> u16 {
    let (st, b) = put(s, path, body).await;
    assert!(st == 201 || st == 204, "PUT {path}: {st} {b}");
    st
}

/// The reason of a 400 answer to a PUT.
async fn refused(s: &Server, path: &str, body: J) -> String {
    let (st, b) = put(s, path, body).await;
    assert_eq!(st, 400, "PUT {path}: {b}");
    let j: J = serde_json::from_str(&b).unwrap();
    assert_eq!(j["error"], "bad_request", "{b}");
    j["reason"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn policies_are_set_listed_read_and_deleted_as_in_rabbitmq() {
    let s = start().await;
    put_ok(&s, "/api/vhosts/pv", json!({})).await;
    let p1 = json!({"pattern": "^a", "definition": {"max-length": 5}, "priority": 1, "apply-to": "queues"});
    assert_eq!(put_ok(&s, "/api/policies/pv/p1", p1.clone()).await, 201);
    assert_eq!(put_ok(&s, "/api/policies/pv/p1", p1).await, 204);
    // Defaults: priority 0, apply-to all; other body fields are ignored.
    let p0 = json!({"pattern": "^b", "definition": {"message-ttl": 10}, "name": "x", "vhost": "y"});
    assert_eq!(put_ok(&s, "/api/policies/pv/p0", p0).await, 201);
    assert_eq!(
        get_ok(&s, "/api/policies/pv/p1").await,
        json!({"vhost": "pv", "name": "p1", "pattern": "^a", "apply-to": "queues",
               "definition": {"max-length": 5}, "priority": 1})
    );
    // Lists: by priority.
    let all = get_ok(&s, "/api/policies").await;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p0", "p1"]);
    assert_eq!(all[0]["apply-to"], "all");
    assert_eq!(all[0]["priority"], 0);
    assert_eq!(get_ok(&s, "/api/policies/pv").await, all);
    assert_eq!(get_ok(&s, "/api/policies/%2F").await, json!([]));
    // Missing things: 404s as RabbitMQ's.
    assert_eq!(get_json(&s, "/api/policies/pv/nope").await.0, 404);
    assert_eq!(get_json(&s, "/api/policies/nope").await.0, 404);
    let (st, b) = put(
        &s,
        "/api/policies/nope/p",
        json!({"pattern": "a", "definition": {"max-length": 1}}),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(
        serde_json::from_str::<J>(&b).unwrap(),
        json!({"error": "not_found", "reason": "vhost_not_found"})
    );
    assert_eq!(del(&s, "/api/policies/pv/p0").await, 204);
    assert_eq!(del(&s, "/api/policies/pv/p0").await, 404);
    assert_eq!(
        get_ok(&s, "/api/policies/pv")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.shutdown().await;
}

#[tokio::test]
async fn bad_policies_get_rabbitmqs_errors() {
    let s = start().await;
    let at = "/api/policies/%2F/bad";
    assert_eq!(
        refused(&s, at, json!({"definition": {"max-length": 1}})).await,
        "[{key_missing,pattern}]"
    );
    assert_eq!(
        refused(&s, at, json!({"pattern": "a"})).await,
        "[{key_missing,definition}]"
    );
    // Texts taken from RabbitMQ 3.10.8's answers.
    assert_eq!(
        refused(
            &s,
            at,
            json!({"pattern": "a", "definition": {"max-length": "x"}})
        )
        .await,
        "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n"
    );
    assert_eq!(
        refused(&s, at, json!({"pattern": "a", "definition": {"foo": 1}})).await,
        "Validation failed\n\n[{&lt;&lt;\"foo\"&gt;&gt;,1}] are not recognised policy settings\n"
    );
    assert_eq!(
        refused(&s, at, json!({"pattern": "a", "definition": {"max-length": 1}, "apply-to": "bogus"})).await,
        "Validation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
    );
    assert_eq!(
        refused(&s, at, json!({"pattern": "a", "definition": {}})).await,
        "Validation failed\n\nno policy provided\n"
    );
    assert_eq!(
        refused(
            &s,
            at,
            json!({"pattern": "a", "definition": {"expires": 0}})
        )
        .await,
        "Validation failed\n\n0 is not a valid queue expiry\n"
    );
    assert_eq!(
        refused(
            &s,
            at,
            json!({"pattern": "a", "definition": {"max-length": 1}, "priority": "5"})
        )
        .await,
        "Validation failed\n\npriority should be a number, actually was &lt;&lt;\"5\"&gt;&gt;\n"
    );
    assert!(refused(
        &s,
        at,
        json!({"pattern": "(", "definition": {"max-length": 1}})
    )
    .await
    .starts_with("Validation failed\n\npattern should be regular expression but is invalid: "),);
    // Operator policies take only their keys; RabbitMQ does not escape these.
    assert_eq!(
        refused(&s, "/api/operator-policies/%2F/o", json!({"pattern": "a", "definition": {"dead-letter-exchange": "x"}})).await,
        "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings\n"
    );
    let (st, _) = raw(&s, "PUT", at, Some(GUEST), "[1]").await;
    assert_eq!(st, 400);
    assert_eq!(get_ok(&s, "/api/policies").await, json!([]));
    s.shutdown().await;
}

/// GET a queue or exchange as JSON.
async fn object(s: &Server, kind: &str, name: &str) -> J {
    get_ok(s, &format!("/api/{kind}/%2F/{name}")).await
}

#[tokio::test]
async fn queues_and_exchanges_show_their_policies_and_follow_changes_at_once() {
    let s = start().await;
    put_ok(
        &s,
        "/api/queues/%2F/app.q",
        json!({"arguments": {"x-max-length": 10}}),
    )
    .await;
    put_ok(&s, "/api/queues/%2F/other", json!({})).await;
    put_ok(&s, "/api/exchanges/%2F/app.x", json!({"type": "direct"})).await;
    let q = object(&s, "queues", "app.q").await;
    assert_eq!(q["policy"], J::Null);
    assert_eq!(q["operator_policy"], J::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));
    assert_eq!(
        q["effective_settings"],
        json!({"max-length": {"value": 10, "source": "argument"}})
    );

    put_ok(
        &s,
        "/api/policies/%2F/low",
        json!({"pattern": "^app", "definition": {"max-length": 50}}),
    )
    .await;
    put_ok(
        &s,
        "/api/policies/%2F/high",
        json!({"pattern": "^app\\.", "definition": {"max-length": 5, "dead-letter-exchange": "dlx"}, "priority": 2, "apply-to": "queues"}),
    )
    .await;
    put_ok(
        &s,
        "/api/operator-policies/%2F/cap",
        json!({"pattern": ".*", "definition": {"max-length": 3, "message-ttl": 1000}, "apply-to": "queues"}),
    )
    .await;
    let q = object(&s, "queues", "app.q").await;
    assert_eq!(q["policy"], "high");
    assert_eq!(q["operator_policy"], "cap");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"dead-letter-exchange": "dlx", "max-length": 3, "message-ttl": 1000})
    );
    assert_eq!(
        q["effective_settings"],
        json!({
            "max-length": {"value": 3, "source": "operator-policy"},
            "message-ttl": {"value": 1000, "source": "operator-policy"},
            "dead-letter-exchange": {"value": "dlx", "source": "policy"},
        })
    );
    // The lists carry the same fields.
    let qs = get_ok(&s, "/api/queues/%2F").await;
    let other = qs
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "other")
        .unwrap();
    assert_eq!(other["policy"], J::Null);
    assert_eq!(other["operator_policy"], "cap");
    // The queues-only policy skips the exchange; "low" applies to all.
    let x = object(&s, "exchanges", "app.x").await;
    assert_eq!(x["policy"], "low");
    assert_eq!(x["operator_policy"], J::Null);
    assert_eq!(x["effective_policy_definition"], json!({"max-length": 50}));

    // A change or a deletion shows at once.
    put_ok(
        &s,
        "/api/policies/%2F/high",
        json!({"pattern": "^zzz", "definition": {"max-length": 1}, "priority": 2}),
    )
    .await;
    assert_eq!(object(&s, "queues", "app.q").await["policy"], "low");
    assert_eq!(del(&s, "/api/policies/%2F/low").await, 204);
    assert_eq!(del(&s, "/api/operator-policies/%2F/cap").await, 204);
    let q = object(&s, "queues", "app.q").await;
    assert_eq!(q["policy"], J::Null);
    assert_eq!(q["operator_policy"], J::Null);
    assert_eq!(
        q["effective_settings"],
        json!({"max-length": {"value": 10, "source": "argument"}})
    );
    // A queue declared later is matched at its declare.
    put_ok(
        &s,
        "/api/policies/%2F/late",
        json!({"pattern": "^new", "definition": {"expires": 60000}}),
    )
    .await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "new.q", false).await;
    assert_eq!(object(&s, "queues", "new.q").await["policy"], "late");
    s.shutdown().await;
}

/// Publishes `body` to `ex` and returns how many messages `q` holds after
/// the publish was confirmed.
async fn publish_and_count(ch: &lapin::Channel, ex: &str, q: &str, body: &[u8]) -> u32 {
    ch.basic_publish(
        ex.into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    passive(ch, q).await.unwrap().message_count()
}

#[tokio::test]
async fn an_alternate_exchange_from_a_policy_takes_unroutable_messages() {
    let (s, _c, ch) = start_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    exchange(&ch, "pae.x", ExchangeKind::Direct, t()).await;
    exchange(&ch, "pae.ae", ExchangeKind::Fanout, t()).await;
    exchange(&ch, "pae.ae2", ExchangeKind::Fanout, t()).await;
    queue(&ch, "pae.q", false).await;
    queue(&ch, "pae.q2", false).await;
    bind(&ch, "pae.q", "pae.ae", "", t()).await;
    bind(&ch, "pae.q2", "pae.ae2", "", t()).await;

    assert_eq!(publish_and_count(&ch, "pae.x", "pae.q", b"lost").await, 0);
    put_ok(
        &s,
        "/api/policies/%2F/ae",
        json!({"pattern": "^pae\\.x", "definition": {"alternate-exchange": "pae.ae"}, "apply-to": "exchanges"}),
    )
    .await;
    assert_eq!(publish_and_count(&ch, "pae.x", "pae.q", b"kept").await, 1);
    // A queues-only policy does not reach exchanges.
    put_ok(
        &s,
        "/api/policies/%2F/ae",
        json!({"pattern": "^pae\\.x", "definition": {"alternate-exchange": "pae.ae"}, "apply-to": "queues"}),
    )
    .await;
    assert_eq!(publish_and_count(&ch, "pae.x", "pae.q", b"lost").await, 1);
    put_ok(
        &s,
        "/api/policies/%2F/ae",
        json!({"pattern": "^pae\\.", "definition": {"alternate-exchange": "pae.ae"}}),
    )
    .await;
    assert_eq!(publish_and_count(&ch, "pae.x", "pae.q", b"kept").await, 2);
    // The exchange's own argument wins over the policy.
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("pae.ae2".into()),
    );
    exchange(&ch, "pae.xarg", ExchangeKind::Direct, args).await;
    assert_eq!(
        publish_and_count(&ch, "pae.xarg", "pae.q2", b"arg").await,
        1
    );
    assert_eq!(passive(&ch, "pae.q").await.unwrap().message_count(), 2);
    // Deleted, the policy no longer applies.
    assert_eq!(del(&s, "/api/policies/%2F/ae").await, 204);
    assert_eq!(publish_and_count(&ch, "pae.x", "pae.q", b"lost").await, 2);
    s.shutdown().await;
}

/// Queue keys from a policy act on running queues at once: a lowered
/// max-length trims the queue (drop-head, oldest first), deleting the
/// policy lifts the limit, and a policy's dead-letter-exchange takes
/// rejected messages.
#[tokio::test]
async fn queue_keys_from_a_policy_apply_to_running_queues() {
    let (s, _c, ch) = start_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&ch, "pql.q", false).await;
    queue(&ch, "pql.dead", false).await;
    for i in 0..10 {
        publish_confirmed(
            &ch,
            "",
            "pql.q",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    put_ok(
        &s,
        "/api/policies/%2F/len",
        json!({"pattern": "^pql\\.q$", "definition": {"max-length": 3, "dead-letter-exchange": ""}, "apply-to": "queues"}),
    )
    .await;
    assert_eq!(passive(&ch, "pql.q").await.unwrap().message_count(), 3);
    let first = ch
        .basic_get("pql.q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(first.delivery.data, b"m7", "the oldest were dropped");
    // Without the policy the queue takes more than 3 again.
    assert_eq!(del(&s, "/api/policies/%2F/len").await, 204);
    for i in 10..15 {
        publish_confirmed(
            &ch,
            "",
            "pql.q",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(passive(&ch, "pql.q").await.unwrap().message_count(), 7);
    // A policy's dead-letter settings take a rejected message.
    put_ok(
        &s,
        "/api/policies/%2F/dlx",
        json!({"pattern": "^pql\\.q$", "definition": {"dead-letter-exchange": "", "dead-letter-routing-key": "pql.dead"}, "apply-to": "queues"}),
    )
    .await;
    let m = ch
        .basic_get("pql.q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    wait_until(
        "the rejected message in pql.dead",
        std::time::Duration::from_secs(10),
        || {
            let ch = ch.clone();
            async move { passive(&ch, "pql.dead").await.unwrap().message_count() == 1 }
        },
    )
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn policies_survive_a_restart_and_go_with_their_vhost() {
    let dir = temp_dir("policies");
    {
        let s = start_on(&dir).await;
        put_ok(&s, "/api/vhosts/gone", json!({})).await;
        put_ok(&s, "/api/queues/%2F/dq", json!({"durable": true})).await;
        put_ok(
            &s,
            "/api/policies/%2F/keep",
            json!({"pattern": "^dq$", "definition": {"max-length": 7}, "priority": 3}),
        )
        .await;
        put_ok(
            &s,
            "/api/operator-policies/%2F/opk",
            json!({"pattern": "^dq$", "definition": {"max-length": 4}}),
        )
        .await;
        put_ok(
            &s,
            "/api/policies/gone/p",
            json!({"pattern": ".*", "definition": {"max-length": 1}}),
        )
        .await;
        assert_eq!(del(&s, "/api/vhosts/gone").await, 204);
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let q = object(&s, "queues", "dq").await;
    assert_eq!(q["policy"], "keep");
    assert_eq!(q["operator_policy"], "opk");
    assert_eq!(q["effective_policy_definition"], json!({"max-length": 4}));
    assert_eq!(get_ok(&s, "/api/policies/%2F/keep").await["priority"], 3);
    // The deleted vhost's policy is gone, also once it is made again.
    put_ok(&s, "/api/vhosts/gone", json!({})).await;
    assert_eq!(get_ok(&s, "/api/policies/gone").await, json!([]));
    s.shutdown().await;
}

#[tokio::test]
async fn definitions_import_applies_policies_and_export_lists_them() {
    let s = start().await;
    put_ok(&s, "/api/queues/%2F/imp.q", json!({})).await;
    let doc = json!({
        "policies": [
            {"vhost": "/", "name": "imp", "pattern": "^imp\\.", "apply-to": "queues",
             "definition": {"max-length": 9, "message-ttl": 5000}, "priority": 4},
        ],
        "queues": [{"name": "imp.later", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],
    });
    let (st, b) = raw(
        &s,
        "POST",
        "/api/definitions",
        Some(GUEST),
        &doc.to_string(),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    assert_eq!(object(&s, "queues", "imp.q").await["policy"], "imp");
    assert_eq!(object(&s, "queues", "imp.later").await["policy"], "imp");
    let export = get_ok(&s, "/api/definitions").await;
    assert_eq!(export["policies"], doc["policies"]);
    let per_vhost = get_ok(&s, "/api/definitions/%2F").await;
    assert_eq!(per_vhost["policies"], doc["policies"]);

    // A bad policy fails the whole import: nothing of it is applied.
    let bad = json!({
        "queues": [{"name": "never", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],
        "policies": [{"vhost": "/", "name": "bad", "pattern": "x", "definition": {"max-length": "many"}, "priority": 0}],
    });
    let (st, b) = raw(
        &s,
        "POST",
        "/api/definitions",
        Some(GUEST),
        &bad.to_string(),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("is not a valid maximum length"), "{b}");
    assert_eq!(get_json(&s, "/api/queues/%2F/never").await.0, 404);
    assert_eq!(get_json(&s, "/api/policies/%2F/bad").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn only_policymakers_and_administrators_set_policies() {
    let s = start().await;
    put_ok(
        &s,
        "/api/users/mon",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    put_ok(
        &s,
        "/api/users/pm",
        json!({"password": "pw", "tags": "policymaker"}),
    )
    .await;
    for u in ["mon", "pm"] {
        put_ok(
            &s,
            &format!("/api/permissions/%2F/{u}"),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    }
    let body = json!({"pattern": "a", "definition": {"max-length": 1}}).to_string();
    let b64 = |u: &str| base64_auth(u, "pw");
    let (st, _) = raw(&s, "PUT", "/api/policies/%2F/m", Some(&b64("mon")), &body).await;
    assert_eq!(st, 401);
    let (st, b) = raw(&s, "PUT", "/api/policies/%2F/m", Some(&b64("pm")), &body).await;
    assert_eq!(st, 201, "{b}");
    // Operator policies are for administrators only.
    let (st, _) = raw(
        &s,
        "PUT",
        "/api/operator-policies/%2F/m",
        Some(&b64("pm")),
        &body,
    )
    .await;
    assert_eq!(st, 401);
    // Management users may list policies of their vhosts.
    let (st, b) = raw(&s, "GET", "/api/policies", Some(&b64("mon")), "").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        serde_json::from_str::<J>(&b)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.shutdown().await;
}

/// Basic credentials for `user:pass`.
fn base64_auth(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}
