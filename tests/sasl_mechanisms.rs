//! `auth_mechanisms` on a plain TCP listener: connection.start offers the
//! configured mechanisms in their order, a listed one logs in, and a
//! start-ok naming one that was not offered gets what RabbitMQ gives it:
//! no connection.close (even to a client asking for
//! authentication_failure_close), the socket closed after the silent-close
//! delay. TLS and EXTERNAL are in tests/tls.rs.

mod common;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use common::raw_amqp::Raw;
use common::*;
use std::time::{Duration, Instant};
use warren::amqp::sasl::Mechanism;

/// start-ok naming `mechanism` with PLAIN-shaped guest credentials, asking
/// for authentication_failure_close.
async fn start_ok(r: &mut Raw, mechanism: &str) {
    let mut caps = FieldTable::default();
    caps.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    r.method_out(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: mechanism.into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    )
    .await;
}

/// Asserts the server sends nothing more and closes the socket, not at
/// once but after RabbitMQ's silent-close delay (3 s).
async fn closed_silently(r: &mut Raw, what: &str) {
    let t = Instant::now();
    assert!(r.frame().await.is_none(), "{what}: a frame instead of EOF");
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{what}: closed after {:?}, not after the delay",
        t.elapsed()
    );
}

#[tokio::test]
async fn unlisted_and_unknown_mechanisms_are_dropped_silently() {
    let s = start().await;
    let mut r = Raw::connect(&s).await;
    assert_eq!(r.start().await.mechanisms.to_string(), "PLAIN AMQPLAIN");
    let mut unknown = Raw::connect(&s).await;
    unknown.start().await;
    let mut external = Raw::connect(&s).await;
    external.start().await;
    // Both at once, so the test waits for one delay, not two.
    start_ok(&mut unknown, "FOO").await;
    start_ok(&mut external, "EXTERNAL").await;
    let (a, b) = tokio::join!(
        closed_silently(&mut unknown, "FOO"),
        closed_silently(&mut external, "EXTERNAL on plain TCP")
    );
    let ((), ()) = (a, b);
    // The listed ones still work.
    start_ok(&mut r, "PLAIN").await;
    match r.method().await {
        AMQPClass::Connection(connection::AMQPMethod::Tune(_)) => {}
        other => panic!("expected tune, got {other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test]
async fn only_the_configured_mechanisms_are_offered_and_accepted() {
    let s = start_with(|c| c.auth.auth_mechanisms = vec![Mechanism::Amqplain]).await;
    let mut r = Raw::connect(&s).await;
    assert_eq!(r.start().await.mechanisms.to_string(), "AMQPLAIN");
    start_ok(&mut r, "PLAIN").await;
    // lapin with AMQPLAIN logs in meanwhile.
    let uri = format!("{}?auth_mechanism=amqplain", url(&s));
    let c = within(lapin::Connection::connect(
        &uri,
        lapin::ConnectionProperties::default(),
    ))
    .await
    .expect("AMQPLAIN login");
    closed_silently(&mut r, "PLAIN when only AMQPLAIN is listed").await;
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

#[test]
fn auth_mechanisms_in_rabbit_toml_are_checked_by_name() {
    use warren::config::Config;
    let c = Config::parse(
        "[auth]\nauth_mechanisms = [\"EXTERNAL\", \"PLAIN\"]\nssl_cert_login_from = \"common_name\"\n",
        "rabbit.toml",
    )
    .unwrap();
    assert_eq!(
        c.amqp_settings().auth_mechanisms,
        vec![Mechanism::External, Mechanism::Plain]
    );
    let e = Config::parse("[auth]\nauth_mechanisms = [\"CRAM-MD5\"]\n", "rabbit.toml").unwrap_err();
    assert!(e.0.contains("auth_mechanisms"), "{}", e.0);
    let e = Config::parse("[auth]\nauth_mechanisms = []\n", "rabbit.toml").unwrap_err();
    assert!(e.0.contains("auth.auth_mechanisms"), "{}", e.0);
    let e =
        Config::parse("[auth]\nssl_cert_login_from = \"subject\"\n", "rabbit.toml").unwrap_err();
    assert!(e.0.contains("ssl_cert_login_from"), "{}", e.0);
}
