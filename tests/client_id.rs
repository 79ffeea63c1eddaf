//! `{client_id}` in topic permissions over AMQP 0-9-1, Warren's extension:
//! RabbitMQ expands it only for MQTT and STOMP (rabbit_channel's
//! extract_variable_map_from_amqp_params finds no client id on a network
//! AMQP 0-9-1 connection); Warren takes the `client_id` string of
//! connection.start-ok's client properties. A connection that sends none
//! sees the variable unexpanded, as in RabbitMQ.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const USER: &str = "cid";

async fn topic_permission(s: &TestBroker, write: &str, read: &str) {
    let body =
        serde_json::json!({"exchange": "amq.topic", "write": write, "read": read}).to_string();
    let (st, b) = raw(
        s,
        "PUT",
        &format!("/api/topic-permissions/%2F/{USER}"),
        Some(GUEST),
        &body,
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {b}");
}

/// A connection of `USER`, sending `client_id` as a client property if
/// given.
async fn connect_with(s: &TestBroker, client_id: Option<&str>) -> Connection {
    let mut props = ConnectionProperties::default();
    if let Some(id) = client_id {
        props = props.with_client_property("client_id".into(), id.into());
    }
    let url = format!("amqp://{USER}:pw@{}/%2f", s.amqp_addr());
    within(Connection::connect(&url, props)).await.unwrap()
}

fn refused(key: &str) -> (u16, String) {
    (
        403,
        format!("ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' in vhost '/' refused for user '{USER}'"),
    )
}

/// Publishes to amq.topic with `key` on a fresh channel: Ok once
/// confirmed, or the channel.close it causes.
async fn publish_to(c: &Connection, key: &str, allowed: bool) -> Result<(), (u16, String)> {
    let ch = c.create_channel().await.unwrap();
    if allowed {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish_confirmed(&ch, "amq.topic", key, b"x", BasicProperties::default()).await;
        return Ok(());
    }
    let publish = ch.basic_publish(
        "amq.topic".into(),
        key.into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    );
    Err(async_error(&ch, publish).await)
}

async fn bind_to(c: &Connection, q: &str, key: &str) -> Result<(), (u16, String)> {
    let ch = c.create_channel().await.unwrap();
    ch.queue_bind(
        q.into(),
        "amq.topic".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| soft_code(&e))
}

#[tokio::test]
async fn client_id_comes_from_the_client_property() {
    let s = start().await;
    let body = r#"{"password":"pw","tags":""}"#;
    assert_eq!(
        raw(&s, "PUT", &format!("/api/users/{USER}"), Some(GUEST), body)
            .await
            .0,
        201
    );
    let perm = r#"{"configure":".*","write":".*","read":".*"}"#;
    let (st, b) = raw(
        &s,
        "PUT",
        &format!("/api/permissions/%2F/{USER}"),
        Some(GUEST),
        perm,
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {b}");
    topic_permission(&s, r"^{client_id}\.", r"^{client_id}\.").await;

    let app = connect_with(&s, Some("app-7")).await;
    let ch = app.create_channel().await.unwrap();
    queue(&ch, "cid-q", false).await;
    assert_eq!(publish_to(&app, "app-7.x", true).await, Ok(()));
    assert_eq!(
        publish_to(&app, "app-8.x", false).await,
        Err(refused("app-8.x"))
    );
    assert_eq!(
        publish_to(&app, "{client_id}.x", false).await,
        Err(refused("{client_id}.x"))
    );
    assert_eq!(bind_to(&app, "cid-q", "app-7.#").await, Ok(()));
    assert_eq!(
        bind_to(&app, "cid-q", "app-8.#").await,
        Err(refused("app-8.#"))
    );

    // Another client id on the same user gets its own expansion.
    let other = connect_with(&s, Some("app-8")).await;
    assert_eq!(publish_to(&other, "app-8.x", true).await, Ok(()));
    assert_eq!(
        publish_to(&other, "app-7.x", false).await,
        Err(refused("app-7.x"))
    );

    // No client_id: the variable stays literal, as RabbitMQ leaves it.
    let anonymous = connect_with(&s, None).await;
    assert_eq!(publish_to(&anonymous, "{client_id}.x", true).await, Ok(()));
    assert_eq!(
        publish_to(&anonymous, "app-7.x", false).await,
        Err(refused("app-7.x"))
    );

    // A change of the topic permission reaches the open connection, whose
    // expansion was compiled for the old pattern.
    topic_permission(&s, r"^v2-{client_id}\.", r"^v2-{client_id}\.").await;
    assert_eq!(
        publish_to(&app, "app-7.x", false).await,
        Err(refused("app-7.x"))
    );
    assert_eq!(publish_to(&app, "v2-app-7.x", true).await, Ok(()));
    for c in [app, other, anonymous] {
        // Some of their channels were closed by the refusals.
        let _ = c.close(200, "bye".into()).await;
    }
    s.shutdown().await;
}
