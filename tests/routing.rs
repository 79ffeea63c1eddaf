//! Routing through a running broker with lapin: exchange-to-exchange
//! bindings, alternate exchanges, CC/BCC, auto-delete and internal
//! exchanges, unknown exchange types.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn exchange_to_exchange_bindings_route_once_even_with_cycles() {
    let (_s, _c, ch) = start_channel().await;
    exchange(&ch, "e2e-top", ExchangeKind::Topic, t()).await;
    exchange(&ch, "e2e-fan", ExchangeKind::Fanout, t()).await;
    queue(&ch, "e2e-q", false).await;
    ch.exchange_bind(
        "e2e-fan".into(),
        "e2e-top".into(),
        "a.#".into(),
        ExchangeBindOptions::default(),
        t(),
    )
    .await
    .unwrap();
    // A cycle back, and a second path to the queue.
    ch.exchange_bind(
        "e2e-top".into(),
        "e2e-fan".into(),
        "".into(),
        ExchangeBindOptions::default(),
        t(),
    )
    .await
    .unwrap();
    bind(&ch, "e2e-q", "e2e-fan", "", t()).await;
    bind(&ch, "e2e-q", "e2e-top", "a.b", t()).await;
    publish_props(&ch, "e2e-top", "a.b", b"one", BasicProperties::default()).await;
    publish_props(&ch, "e2e-top", "z", b"none", BasicProperties::default()).await;
    assert_eq!(settled_drain(&ch, "e2e-q").await, vec![b"one".to_vec()]);
    ch.exchange_unbind(
        "e2e-fan".into(),
        "e2e-top".into(),
        "a.#".into(),
        ExchangeUnbindOptions::default(),
        t(),
    )
    .await
    .unwrap();
    publish_props(&ch, "e2e-top", "a.c", b"cut", BasicProperties::default()).await;
    assert!(settled_drain(&ch, "e2e-q").await.is_empty());
    // Binding to a missing exchange is 404.
    let e = ch
        .exchange_bind(
            "nope".into(),
            "e2e-top".into(),
            "".into(),
            ExchangeBindOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("NOT_FOUND - no exchange 'nope' in vhost '/'"),
        "{e}"
    );
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let (_s, _c, ch) = start_channel().await;
    exchange(&ch, "ae-last", ExchangeKind::Fanout, t()).await;
    let mut a2 = FieldTable::default();
    a2.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae-last".into()),
    );
    exchange(&ch, "ae-mid", ExchangeKind::Direct, a2).await;
    let mut a1 = FieldTable::default();
    a1.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae-mid".into()),
    );
    exchange(&ch, "ae-main", ExchangeKind::Direct, a1).await;
    queue(&ch, "ae-main-q", false).await;
    queue(&ch, "ae-mid-q", false).await;
    queue(&ch, "ae-unrouted", false).await;
    bind(&ch, "ae-main-q", "ae-main", "main", t()).await;
    bind(&ch, "ae-mid-q", "ae-mid", "mid", t()).await;
    bind(&ch, "ae-unrouted", "ae-last", "", t()).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    for (key, body) in [("main", "m"), ("mid", "d"), ("other", "o")] {
        ch.basic_publish(
            "ae-main".into(),
            key.into(),
            mandatory,
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(settled_drain(&ch, "ae-main-q").await, vec![b"m".to_vec()]);
    assert_eq!(settled_drain(&ch, "ae-mid-q").await, vec![b"d".to_vec()]);
    assert_eq!(settled_drain(&ch, "ae-unrouted").await, vec![b"o".to_vec()]);
    // Routed by an alternate: nothing came back as a return.
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
}

#[tokio::test]
async fn cc_and_bcc_add_routing_keys_and_bcc_is_removed() {
    let (_s, _c, ch) = start_channel().await;
    for q in ["cc-main", "cc-copy", "cc-blind"] {
        queue(&ch, q, false).await;
    }
    let keys = |ks: &[&str]| {
        AMQPValue::FieldArray(FieldArray::from(
            ks.iter()
                .map(|k| AMQPValue::LongString(LongString::from(k.as_bytes().to_vec())))
                .collect::<Vec<_>>(),
        ))
    };
    let mut h = FieldTable::default();
    h.insert("CC".into(), keys(&["cc-copy"]));
    h.insert("BCC".into(), keys(&["cc-blind", "cc-main"]));
    h.insert("keep".into(), AMQPValue::LongInt(7));
    publish_props(
        &ch,
        "",
        "cc-main",
        b"hi",
        BasicProperties::default().with_headers(h),
    )
    .await;
    let mut seen = Vec::new();
    for q in ["cc-main", "cc-copy", "cc-blind"] {
        let m = within(async {
            loop {
                if let Some(m) = ch
                    .basic_get(q.into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap()
                {
                    return m;
                }
            }
        })
        .await;
        assert_eq!(m.delivery.data, b"hi", "{q}");
        let h = m.delivery.properties.headers().clone().unwrap();
        assert!(h.inner().contains_key("CC"), "CC stays");
        assert!(
            !h.inner().contains_key("BCC"),
            "BCC is removed before delivery"
        );
        assert_eq!(h.inner().get("keep"), Some(&AMQPValue::LongInt(7)));
        seen.push(q);
    }
    // cc-main was reached by the key and by BCC: one copy only.
    assert!(settled_drain(&ch, "cc-main").await.is_empty());
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let (_s, _c, ch) = start_channel().await;
    ch.exchange_declare(
        "ad-ex".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap();
    queue(&ch, "ad-q1", false).await;
    queue(&ch, "ad-q2", false).await;
    bind(&ch, "ad-q1", "ad-ex", "k", t()).await;
    bind(&ch, "ad-q2", "ad-ex", "k", t()).await;
    ch.queue_unbind("ad-q1".into(), "ad-ex".into(), "k".into(), t())
        .await
        .unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare("ad-ex".into(), ExchangeKind::Direct, passive, t())
        .await
        .expect("one binding left");
    // Deleting the last bound queue removes the last binding.
    ch.queue_delete("ad-q2".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let e = ch
        .exchange_declare("ad-ex".into(), ExchangeKind::Direct, passive, t())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("NOT_FOUND - no exchange 'ad-ex' in vhost '/'"),
        "{e}"
    );
}

#[tokio::test]
async fn internal_exchange_refuses_publishes_but_routes_from_exchanges() {
    let (_s, _c, ch) = start_channel().await;
    ch.exchange_declare(
        "inner".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap();
    exchange(&ch, "outer", ExchangeKind::Fanout, t()).await;
    queue(&ch, "inner-q", false).await;
    bind(&ch, "inner-q", "inner", "", t()).await;
    ch.exchange_bind(
        "inner".into(),
        "outer".into(),
        "".into(),
        ExchangeBindOptions::default(),
        t(),
    )
    .await
    .unwrap();
    publish_props(&ch, "outer", "", b"via-outer", BasicProperties::default()).await;
    assert_eq!(
        settled_drain(&ch, "inner-q").await,
        vec![b"via-outer".to_vec()]
    );
    let e = async_error(
        &ch,
        ch.basic_publish(
            "inner".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"direct",
            BasicProperties::default(),
        ),
    )
    .await;
    assert_eq!(
        e,
        (
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'".into()
        )
    );
}

#[tokio::test]
async fn unknown_exchange_type_is_a_503_connection_error() {
    let (_s, c, ch) = start_channel().await;
    let e = ch
        .exchange_declare(
            "weird".into(),
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions::default(),
            t(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("COMMAND_INVALID - unknown exchange type 'x-no-such-type'"),
        "{e}"
    );
    until_closed(&c).await;
}
