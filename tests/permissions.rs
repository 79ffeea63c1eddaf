//! Permissions: connection.open needs a permission in the vhost, and every
//! method checks the configure / write / read regexes as RabbitMQ's
//! access-control table (texts checked against RabbitMQ 3.10.8); changes
//! apply to open connections; the management API checks the same rules.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

/// A user `name` (password "pw") with these regexes on `/`.
async fn user_with(s: &TestBroker, name: &str, tags: &str, perm: Option<(&str, &str, &str)>) {
    let body = format!(r#"{{"password":"pw","tags":"{tags}"}}"#);
    let (st, b) = raw(s, "PUT", &format!("/api/users/{name}"), Some(GUEST), &body).await;
    assert!(st == 201 || st == 204, "{st} {b}");
    if let Some((c, w, r)) = perm {
        set_perm(s, name, c, w, r).await;
    }
}

async fn set_perm(s: &TestBroker, name: &str, c: &str, w: &str, r: &str) {
    let body = serde_json::json!({"configure": c, "write": w, "read": r}).to_string();
    let (st, b) = raw(
        s,
        "PUT",
        &format!("/api/permissions/%2F/{name}"),
        Some(GUEST),
        &body,
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {b}");
}

fn refused(kind: &str, name: &str, user: &str) -> (u16, String) {
    (
        403,
        format!(
            "ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user '{user}'"
        ),
    )
}

/// Names starting `c` are configurable, with `w` in their prefix writable,
/// with `r` readable (the prefix ends at `-`); server-named queues may be
/// declared and read (for `async_error`'s watcher).
const C: &str = r"^([a-z]*c[a-z]*-|amq\.gen)";
const W: &str = r"^[a-z]*w[a-z]*-";
const R: &str = r"^([a-z]*r[a-z]*-|amq\.gen)";

/// A broker with guest's fixtures and a restricted user's channel.
async fn restricted(
    user: &str,
) -> (
    TestBroker,
    lapin::Connection,
    lapin::Connection,
    lapin::Channel,
) {
    let s = start().await;
    let admin = connect(&s).await;
    let ach = admin.create_channel().await.unwrap();
    for q in ["c-q", "w-q", "r-q", "cwr-q"] {
        queue(&ach, q, false).await;
    }
    for e in ["c-e", "w-e", "r-e", "cwr-e"] {
        exchange(&ach, e, ExchangeKind::Topic, t()).await;
    }
    user_with(&s, user, "", Some((C, W, R))).await;
    let c = connect_as(&s, user, "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    (s, admin, c, ch)
}

async fn err_of<T>(r: lapin::Result<T>) -> (u16, String) {
    soft_code(&r.err().expect("refused"))
}

#[tokio::test]
async fn open_without_a_permission_in_the_vhost_is_530() {
    let s = start().await;
    user_with(&s, "nobody", "", None).await;
    let e = connect_as(&s, "nobody", "pw", "/").await.unwrap_err();
    let msg = format!("{e:?}");
    assert!(
        msg.contains("NOTALLOWED")
            && msg.contains("NOT_ALLOWED - access to vhost '/' refused for user 'nobody'"),
        "{msg}"
    );
    // Granted: the same login works.
    set_perm(&s, "nobody", "", "", "").await;
    connect_as(&s, "nobody", "pw", "/").await.unwrap();
}

#[tokio::test]
async fn declares_need_configure_passive_needs_none() {
    let (_s, _a, c, ch) = restricted("u1").await;
    let e = err_of(
        ch.queue_declare("w-new".into(), QueueDeclareOptions::default(), t())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "w-new", "u1"));
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("c-new".into(), QueueDeclareOptions::default(), t())
        .await
        .unwrap();
    // Passive: no permission needed.
    passive(&ch, "w-q").await.unwrap();
    passive_exchange(&ch, "w-e").await.unwrap();
    let e = err_of(
        ch.exchange_declare(
            "w-ex".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            t(),
        )
        .await,
    )
    .await;
    assert_eq!(e, refused("exchange", "w-ex", "u1"));
}

#[tokio::test]
async fn server_named_queues_need_configure_on_their_name() {
    let s = start().await;
    user_with(&s, "u2", "", Some(("^c-", ".*", ".*"))).await;
    let c = connect_as(&s, "u2", "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let (code, text) = err_of(
        ch.queue_declare("".into(), QueueDeclareOptions::default(), t())
            .await,
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        text.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-")
            && text.ends_with("' in vhost '/' refused for user 'u2'"),
        "{text}"
    );
}

#[tokio::test]
async fn deletes_need_configure_even_on_missing_resources() {
    let (_s, _a, c, ch) = restricted("u3").await;
    let e = err_of(
        ch.queue_delete("w-q".into(), QueueDeleteOptions::default())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "w-q", "u3"));
    let ch = c.create_channel().await.unwrap();
    let e = err_of(
        ch.queue_delete("w-missing".into(), QueueDeleteOptions::default())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "w-missing", "u3"));
    let ch = c.create_channel().await.unwrap();
    let e = err_of(
        ch.exchange_delete("w-e".into(), ExchangeDeleteOptions::default())
            .await,
    )
    .await;
    assert_eq!(e, refused("exchange", "w-e", "u3"));
    let ch = c.create_channel().await.unwrap();
    ch.queue_delete("c-q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn queue_bind_needs_write_on_the_queue_and_read_on_the_exchange() {
    let (_s, _a, c, ch) = restricted("u4").await;
    let bind = |ch: lapin::Channel, q: &'static str, e: &'static str| async move {
        ch.queue_bind(
            q.into(),
            e.into(),
            "k".into(),
            QueueBindOptions::default(),
            t(),
        )
        .await
    };
    assert_eq!(
        err_of(bind(ch, "r-q", "r-e").await).await,
        refused("queue", "r-q", "u4")
    );
    let ch = c.create_channel().await.unwrap();
    assert_eq!(
        err_of(bind(ch, "w-q", "w-e").await).await,
        refused("exchange", "w-e", "u4")
    );
    let ch = c.create_channel().await.unwrap();
    bind(ch.clone(), "w-q", "r-e").await.unwrap();
    // Unbind: the same rules.
    let e = ch
        .queue_unbind("w-q".into(), "c-e".into(), "k".into(), t())
        .await;
    assert_eq!(err_of(e).await, refused("exchange", "c-e", "u4"));
    let ch = c.create_channel().await.unwrap();
    ch.queue_unbind("w-q".into(), "r-e".into(), "k".into(), t())
        .await
        .unwrap();
}

#[tokio::test]
async fn exchange_bind_needs_write_on_the_destination_and_read_on_the_source() {
    let (_s, _a, c, ch) = restricted("u5").await;
    let bind = |ch: lapin::Channel, d: &'static str, src: &'static str| async move {
        ch.exchange_bind(
            d.into(),
            src.into(),
            "k".into(),
            ExchangeBindOptions::default(),
            t(),
        )
        .await
    };
    assert_eq!(
        err_of(bind(ch, "r-e", "r-e").await).await,
        refused("exchange", "r-e", "u5")
    );
    let ch = c.create_channel().await.unwrap();
    assert_eq!(
        err_of(bind(ch, "w-e", "c-e").await).await,
        refused("exchange", "c-e", "u5")
    );
    let ch = c.create_channel().await.unwrap();
    bind(ch, "w-e", "r-e").await.unwrap();
}

#[tokio::test]
async fn publish_needs_write_and_the_default_exchange_is_amq_default() {
    let (_s, _a, c, ch) = restricted("u6").await;
    let e = async_error(
        &ch,
        ch.basic_publish(
            "r-e".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await;
    assert_eq!(e, refused("exchange", "r-e", "u6"));
    let ch = c.create_channel().await.unwrap();
    let e = async_error(
        &ch,
        ch.basic_publish(
            "".into(),
            "w-q".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await;
    assert_eq!(e, refused("exchange", "amq.default", "u6"));
    // Allowed: confirmed.
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "w-e", "k", b"x", BasicProperties::default()).await;
}

#[tokio::test]
async fn consume_get_and_purge_need_read() {
    let (_s, _a, c, ch) = restricted("u7").await;
    let e = err_of(ch.basic_get("w-q".into(), BasicGetOptions::default()).await).await;
    assert_eq!(e, refused("queue", "w-q", "u7"));
    let ch = c.create_channel().await.unwrap();
    let e = err_of(
        ch.basic_consume("w-q".into(), "".into(), BasicConsumeOptions::default(), t())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "w-q", "u7"));
    let ch = c.create_channel().await.unwrap();
    let e = err_of(
        ch.queue_purge("w-q".into(), QueuePurgeOptions::default())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "w-q", "u7"));
    let ch = c.create_channel().await.unwrap();
    assert!(ch
        .basic_get("r-q".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    ch.queue_purge("r-q".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    ch.basic_consume("r-q".into(), "".into(), BasicConsumeOptions::default(), t())
        .await
        .unwrap();
}

#[tokio::test]
async fn dead_letter_and_alternate_exchanges_need_read_and_write() {
    let (_s, _a, c, ch) = restricted("u8").await;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("w-e".into()),
    );
    // Configure on c-dq, but no read on it.
    let e = err_of(
        ch.queue_declare("c-dq".into(), QueueDeclareOptions::default(), args.clone())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "c-dq", "u8"));
    let ch = c.create_channel().await.unwrap();
    let mut bad = FieldTable::default();
    bad.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("r-e".into()),
    );
    let e = err_of(
        ch.queue_declare("cr-dq".into(), QueueDeclareOptions::default(), bad)
            .await,
    )
    .await;
    assert_eq!(e, refused("exchange", "r-e", "u8"));
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("cr-dq".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let mut ae = FieldTable::default();
    ae.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("r-e".into()),
    );
    let e = err_of(
        ch.exchange_declare(
            "cr-ae".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            ae,
        )
        .await,
    )
    .await;
    assert_eq!(e, refused("exchange", "r-e", "u8"));
}

#[tokio::test]
async fn user_id_must_be_the_login_unless_impersonator() {
    let s = start().await;
    user_with(&s, "plain", "", Some((".*", ".*", ".*"))).await;
    user_with(&s, "imp", "impersonator", Some((".*", ".*", ".*"))).await;
    let c = connect_as(&s, "plain", "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let props = BasicProperties::default().with_user_id("other".into());
    let e = async_error(
        &ch,
        ch.basic_publish(
            "amq.topic".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            props.clone(),
        ),
    )
    .await;
    assert_eq!(
        e,
        (406, "PRECONDITION_FAILED - user_id property set to 'other' but authenticated user was 'plain'".into())
    );
    let c = connect_as(&s, "imp", "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "amq.topic", "k", b"x", props).await;
}

#[tokio::test]
async fn permission_changes_apply_to_open_connections() {
    let s = start().await;
    user_with(&s, "live", "", Some((".*", ".*", ".*"))).await;
    let c = connect_as(&s, "live", "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "live-q", false).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // A publish caches the write verdict; the change must still be seen.
    publish_confirmed(&ch, "", "live-q", b"x", BasicProperties::default()).await;
    set_perm(&s, "live", ".*", "^nothing$", ".*").await;
    let e = async_error(
        &ch,
        ch.basic_publish(
            "".into(),
            "live-q".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await;
    assert_eq!(e, refused("exchange", "amq.default", "live"));
    // Cleared: the connection stays, its next check is refused.
    let (st, _) = raw(&s, "DELETE", "/api/permissions/%2F/live", Some(GUEST), "").await;
    assert_eq!(st, 204);
    let ch = c.create_channel().await.unwrap();
    let e = err_of(
        ch.queue_declare("live-2".into(), QueueDeclareOptions::default(), t())
            .await,
    )
    .await;
    assert_eq!(e, refused("queue", "live-2", "live"));
    assert!(c.status().connected());
}

#[tokio::test]
async fn deleting_a_user_closes_its_connections() {
    let s = start().await;
    user_with(&s, "gone", "", Some((".*", ".*", ".*"))).await;
    let c = connect_as(&s, "gone", "pw", "/").await.unwrap();
    let (st, _) = raw(&s, "DELETE", "/api/users/gone", Some(GUEST), "").await;
    assert_eq!(st, 204);
    until_closed(&c).await;
    let e = connect_as(&s, "gone", "pw", "/").await.unwrap_err();
    assert!(format!("{e:?}").contains("ACCESS_REFUSED"), "{e:?}");
}

/// The management API checks the same rules through the broker, with
/// RabbitMQ's replies (checked against RabbitMQ 3.10.8).
#[tokio::test]
async fn the_management_api_checks_the_same_permissions() {
    let (s, _a, _c, _ch) = restricted("mu").await;
    // The user needs a management tag to use the API at all.
    user_with(&s, "mu", "management", None).await;
    let auth = base64_basic("mu:pw");
    let call = |m: &'static str, p: &'static str, b: &'static str| {
        let s = &s;
        let auth = auth.clone();
        async move { raw(s, m, p, Some(&auth), b).await }
    };
    let access_refused = r#"{"error":"not_authorised","reason":"Access refused."}"#;
    let j = |b: &str| serde_json::from_str::<serde_json::Value>(b).unwrap();
    let (st, b) = call("PUT", "/api/queues/%2F/w-new", "{}").await;
    assert_eq!((st, j(&b)), (401, j(access_refused)));
    assert_eq!(call("PUT", "/api/queues/%2F/c-new", "{}").await.0, 201);
    let (st, b) = call("DELETE", "/api/queues/%2F/w-q", "").await;
    assert_eq!((st, j(&b)), (401, j(access_refused)));
    let (st, b) = call("PUT", "/api/exchanges/%2F/w-x", r#"{"type":"direct"}"#).await;
    assert_eq!((st, j(&b)), (401, j(access_refused)));
    let (st, b) = call("DELETE", "/api/exchanges/%2F/w-e", "").await;
    assert_eq!((st, j(&b)), (401, j(access_refused)));
    let (st, b) = call("DELETE", "/api/queues/%2F/w-q/contents", "").await;
    assert_eq!((st, j(&b)), (401, j(access_refused)));
    let (st, b) = call(
        "POST",
        "/api/bindings/%2F/e/w-e/q/w-q",
        r#"{"routing_key":"k"}"#,
    )
    .await;
    assert_eq!((st, j(&b)), (401, j(access_refused)));
    assert_eq!(
        call(
            "POST",
            "/api/bindings/%2F/e/r-e/q/w-q",
            r#"{"routing_key":"k"}"#
        )
        .await
        .0,
        201
    );
    let (st, b) = call(
        "POST",
        "/api/queues/%2F/w-q/get",
        r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}"#,
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(
        j(&b)["reason"],
        "ACCESS_REFUSED - access to queue 'w-q' in vhost '/' refused for user 'mu'"
    );
    let (st, b) = call(
        "POST",
        "/api/exchanges/%2F/r-e/publish",
        r#"{"properties":{},"routing_key":"k","payload":"x","payload_encoding":"string"}"#,
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        j(&b)["reason"],
        "403 ACCESS_REFUSED - access to exchange 'r-e' in vhost '/' refused for user 'mu'"
    );
    let (st, b) = call(
        "POST",
        "/api/exchanges/%2F/w-e/publish",
        r#"{"properties":{},"routing_key":"k","payload":"x","payload_encoding":"string"}"#,
    )
    .await;
    assert_eq!(
        (st, j(&b)["routed"].clone()),
        (200, serde_json::json!(false))
    );
}

fn base64_basic(s: &str) -> String {
    warren::broker::base64::base64_encode(s.as_bytes())
}

/// Topic permissions: write on publish routing keys to topic exchanges,
/// read on binding keys, `{username}` and `{vhost}` expanded; none for an
/// exchange lets everything through (texts from RabbitMQ 3.10.8).
#[tokio::test]
async fn topic_permissions_check_routing_and_binding_keys() {
    let s = start().await;
    user_with(&s, "tp", "", Some((".*", ".*", ".*"))).await;
    let body = r#"{"exchange":"amq.topic","write":"^a\\.{username}","read":"^r\\.{vhost}"}"#;
    let (st, b) = raw(
        &s,
        "PUT",
        "/api/topic-permissions/%2F/tp",
        Some(GUEST),
        body,
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let (st, j) = get_json(&s, "/api/topic-permissions/%2F/tp").await;
    assert_eq!(st, 200);
    assert_eq!(
        j,
        serde_json::json!([{"user": "tp", "vhost": "/", "exchange": "amq.topic",
            "write": "^a\\.{username}", "read": "^r\\.{vhost}"}])
    );
    let c = connect_as(&s, "tp", "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |ch: lapin::Channel, x: &'static str, k: &'static str| async move {
        ch.basic_publish(
            x.into(),
            k.into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
    };
    assert!(publish(ch.clone(), "amq.topic", "a.tp.x")
        .await
        .unwrap()
        .await
        .unwrap()
        .is_ack());
    // Not a topic exchange: no topic check.
    assert!(publish(ch.clone(), "amq.direct", "b.x")
        .await
        .unwrap()
        .await
        .unwrap()
        .is_ack());
    let e = async_error(&ch, publish(ch.clone(), "amq.topic", "b.x")).await;
    let topic = |k: &str| {
        (
            403,
            format!("ACCESS_REFUSED - access to topic '{k}' in exchange 'amq.topic' in vhost '/' refused for user 'tp'"),
        )
    };
    assert_eq!(e, topic("b.x"));
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "tp-q", false).await;
    ch.queue_bind(
        "tp-q".into(),
        "amq.topic".into(),
        "r./.x".into(),
        QueueBindOptions::default(),
        t(),
    )
    .await
    .unwrap();
    let e = err_of(
        ch.queue_bind(
            "tp-q".into(),
            "amq.topic".into(),
            "x".into(),
            QueueBindOptions::default(),
            t(),
        )
        .await,
    )
    .await;
    assert_eq!(e, topic("x"));
    // Deleted: everything goes again.
    let (st, _) = raw(
        &s,
        "DELETE",
        "/api/topic-permissions/%2F/tp",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(get_json(&s, "/api/topic-permissions/%2F/tp").await.0, 404);
    let ch = c.create_channel().await.unwrap();
    ch.queue_bind(
        "tp-q".into(),
        "amq.topic".into(),
        "x".into(),
        QueueBindOptions::default(),
        t(),
    )
    .await
    .unwrap();
}

/// A reserved name is refused as such before permissions are checked.
#[tokio::test]
async fn a_reserved_queue_name_is_refused_before_permissions() {
    let (_s, _a, _c, ch) = restricted("u9").await;
    let e = err_of(
        ch.queue_declare("amq.x".into(), QueueDeclareOptions::default(), t())
            .await,
    )
    .await;
    assert_eq!(
        e,
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix 'amq.*'".into()
        )
    );
}

/// An unknown exchange type is a 503 before permissions are checked.
#[tokio::test]
async fn an_unknown_exchange_type_is_503_before_permissions() {
    let (_s, _a, _c, ch) = restricted("u10").await;
    let e = ch
        .exchange_declare(
            "w-x".into(),
            ExchangeKind::Custom("nope".into()),
            ExchangeDeclareOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (503, "COMMAND_INVALID - unknown exchange type 'nope'".into())
    );
}
