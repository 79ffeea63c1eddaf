//! Durability through a running broker with lapin: what survives a
//! restart on the same data directory, and what does not.

mod common;
use common::*;
use futures_lite::stream::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

async fn get_all(ch: &Channel, q: &str) -> Vec<(Vec<u8>, bool, BasicProperties)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push((
            m.delivery.data.clone(),
            m.delivery.redelivered,
            m.delivery.properties.clone(),
        ));
    }
    out
}

#[tokio::test]
async fn definitions_survive_a_restart_and_transient_ones_do_not() {
    let dir = temp_dir("defs");
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        ch.queue_declare("keep-q".into(), durable_q(), args)
            .await
            .unwrap();
        queue(&ch, "lose-q", false).await;
        let dx = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare("keep-x".into(), ExchangeKind::Topic, dx, t())
            .await
            .unwrap();
        ch.exchange_declare("keep-x2".into(), ExchangeKind::Fanout, dx, t())
            .await
            .unwrap();
        ch.exchange_declare(
            "lose-x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            t(),
        )
        .await
        .unwrap();
        bind(&ch, "keep-q", "keep-x", "a.*", t()).await;
        ch.exchange_bind(
            "keep-x".into(),
            "keep-x2".into(),
            "".into(),
            ExchangeBindOptions::default(),
            t(),
        )
        .await
        .unwrap();
        bind(&ch, "keep-q", "lose-x", "k", t()).await;
        c.close(200, "bye".into()).await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("keep-q".into(), passive, t())
        .await
        .unwrap();
    // The redeclare with the same x-max-length is equivalent: arguments survived.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    ch.queue_declare("keep-q".into(), durable_q(), args)
        .await
        .unwrap();
    // Routing through the recovered e2e and queue bindings works.
    ch.basic_publish(
        "keep-x2".into(),
        "a.b".into(),
        BasicPublishOptions::default(),
        b"via",
        persistent(),
    )
    .await
    .unwrap();
    let got = within(async {
        loop {
            let g = get_all(&ch, "keep-q").await;
            if !g.is_empty() {
                return g;
            }
        }
    })
    .await;
    assert_eq!(got[0].0, b"via");
    let e = ch
        .queue_declare("lose-q".into(), passive, t())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NOT_FOUND"), "{e}");
    let ch = c.create_channel().await.unwrap();
    let px = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let e = ch
        .exchange_declare("lose-x".into(), ExchangeKind::Direct, px, t())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NOT_FOUND"), "{e}");
}

#[tokio::test]
async fn persistent_messages_survive_in_order_with_properties_and_redelivery() {
    let dir = temp_dir("msgs");
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongLongInt(-3));
    headers.insert("s".into(), AMQPValue::LongString("x".into()));
    let props = persistent()
        .with_content_type("text/plain".into())
        .with_message_id("id-1".into())
        .with_headers(headers);
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        queue(&ch, "dq", true).await;
        queue(&ch, "dq2", true).await;
        bind(&ch, "dq", "amq.fanout", "", t()).await;
        bind(&ch, "dq2", "amq.fanout", "", t()).await;
        for i in 0..20u8 {
            publish_confirmed(&ch, "amq.fanout", "", &[i; 3], props.clone()).await;
        }
        // A transient message in a durable queue is lost on restart.
        publish_confirmed(&ch, "", "dq", b"transient", BasicProperties::default()).await;
        // Deliver 0 and 1 one at a time (prefetch 1): ack 0, leave 1
        // unacked when the broker stops.
        let ch2 = c.create_channel().await.unwrap();
        ch2.basic_qos(1, BasicQosOptions::default()).await.unwrap();
        let mut cons = ch2
            .basic_consume("dq".into(), "".into(), BasicConsumeOptions::default(), t())
            .await
            .unwrap();
        let d0 = within(cons.next()).await.unwrap().unwrap();
        assert_eq!(d0.data, [0; 3]);
        d0.ack(BasicAckOptions::default()).await.unwrap();
        let d1 = within(cons.next()).await.unwrap().unwrap();
        assert_eq!(d1.data, [1; 3]);
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let got = get_all(&ch, "dq").await;
    let bodies: Vec<u8> = got.iter().map(|(b, _, _)| b[0]).collect();
    assert_eq!(
        bodies,
        (1..20).collect::<Vec<u8>>(),
        "0 was acked; the rest in order; no transient"
    );
    assert!(got[0].1, "delivered-but-unacked comes back redelivered");
    assert!(got[1..].iter().all(|(_, r, _)| !r));
    assert!(
        got.iter().all(|(_, _, p)| *p == props),
        "properties and headers unchanged"
    );
    // The second queue shares the bodies and has all 20.
    assert_eq!(get_all(&ch, "dq2").await.len(), 20);
    // And after draining, nothing comes back on the next restart.
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    assert!(get_all(&ch, "dq").await.is_empty());
    assert!(get_all(&ch, "dq2").await.is_empty());
}

#[tokio::test]
async fn exclusive_and_non_durable_queues_lose_messages_on_restart() {
    let dir = temp_dir("excl");
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        ch.queue_declare(
            "ex-durable".into(),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            t(),
        )
        .await
        .unwrap();
        queue(&ch, "plain", false).await;
        ch.basic_publish(
            "".into(),
            "plain".into(),
            BasicPublishOptions::default(),
            b"p",
            persistent(),
        )
        .await
        .unwrap();
        passive(&ch, "plain").await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    for q in ["ex-durable", "plain"] {
        let ch = c.create_channel().await.unwrap();
        let e = passive(&ch, q).await.unwrap_err();
        assert!(e.to_string().contains("NOT_FOUND"), "{q}: {e}");
    }
}

#[tokio::test]
async fn transactions_apply_at_commit_and_survive_restart() {
    let dir = temp_dir("tx");
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        queue(&ch, "txq", true).await;
        ch.tx_select().await.unwrap();
        ch.basic_publish(
            "".into(),
            "txq".into(),
            BasicPublishOptions::default(),
            b"rolled-back",
            persistent(),
        )
        .await
        .unwrap();
        ch.tx_rollback().await.unwrap();
        ch.basic_publish(
            "".into(),
            "txq".into(),
            BasicPublishOptions::default(),
            b"committed",
            persistent(),
        )
        .await
        .unwrap();
        let other = c.create_channel().await.unwrap();
        let q = passive(&other, "txq").await.unwrap();
        assert_eq!(q.message_count(), 0, "nothing is visible before commit");
        ch.tx_commit().await.unwrap();
        let q = passive(&other, "txq").await.unwrap();
        assert_eq!(q.message_count(), 1);
        // Acks in a transaction take effect only at commit, and a rollback
        // makes them unacked again.
        let m = ch
            .basic_get("txq".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        ch.tx_rollback().await.unwrap();
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        ch.basic_recover(BasicRecoverOptions { requeue: true })
            .await
            .unwrap();
        ch.tx_rollback().await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let got = get_all(&ch, "txq").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"committed");
}

#[tokio::test]
async fn tx_and_confirm_modes_exclude_each_other() {
    let (_s, c, ch) = start_channel().await;
    ch.tx_select().await.unwrap();
    let e = ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("PRECONDITION_FAILED - cannot switch from tx to confirm mode"),
        "{e}"
    );
    let ch = c.create_channel().await.unwrap();
    let e = ch.tx_commit().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("PRECONDITION_FAILED - channel is not transactional"),
        "{e}"
    );
}

#[tokio::test]
async fn confirms_cover_unroutable_and_transient_messages_in_order() {
    let (_s, _c, ch) = start_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&ch, "cq", true).await;
    let mut pending = Vec::new();
    for i in 0..50u32 {
        let (key, props) = match i % 3 {
            0 => ("cq", persistent()),
            1 => ("cq", BasicProperties::default()),
            _ => ("nowhere", persistent()),
        };
        pending.push(
            ch.basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                props,
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(matches!(within(p).await.unwrap(), Confirmation::Ack(_)));
    }
    let q = passive(&ch, "cq").await.unwrap();
    assert_eq!(q.message_count(), 34);
}

#[tokio::test]
async fn an_unknown_data_format_refuses_to_start() {
    let dir = temp_dir("version");
    {
        let s = start_on(&dir).await;
        s.shutdown().await;
    }
    {
        // sled's I/O threads let go of the directory's lock a moment after
        // the broker dropped it (Disk::open retries the same way).
        let mut tries = 0;
        let db = loop {
            match sled::open(&dir) {
                Ok(db) => break db,
                Err(e) if tries < 100 && e.to_string().contains("lock") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        db.open_tree("meta")
            .unwrap()
            .insert("format", &[42])
            .unwrap();
        db.flush().unwrap();
    }
    let mut cfg = warren::config::Config::default();
    cfg.listeners.amqp = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.http = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.prometheus = "127.0.0.1:0".parse().unwrap();
    cfg.storage.data_dir = dir.to_path_buf();
    let e = match warren::server::start(&cfg).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started on a version-42 directory"),
    };
    assert!(e.contains("unknown data format version [42]"), "{e}");
}

#[tokio::test]
async fn a_corrupt_data_directory_refuses_to_start_cleanly() {
    let dir = temp_dir("corrupt");
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        queue(&ch, "cq", true).await;
        s.shutdown().await;
    }
    // Overwrite sled's files with garbage.
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let len = std::fs::metadata(&p).unwrap().len().max(64) as usize;
            std::fs::write(&p, vec![0xA5u8; len]).unwrap();
        }
    }
    let mut cfg = warren::config::Config::default();
    cfg.listeners.amqp = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.http = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.prometheus = "127.0.0.1:0".parse().unwrap();
    cfg.storage.data_dir = dir.to_path_buf();
    let res = tokio::spawn(async move { warren::server::start(&cfg).await.map(|_| ()) }).await;
    match res {
        Ok(Err(e)) => {
            let e = e.to_string();
            assert!(e.contains("cannot open the data directory"), "{e}");
        }
        Ok(Ok(())) => panic!("started on a corrupt directory"),
        Err(join) => panic!("start-up panicked instead of refusing: {join}"),
    }
}

#[tokio::test]
async fn a_message_the_store_cannot_take_is_nacked() {
    let (s, _c, ch) = start_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&ch, "nq", true).await;
    let disk = s.broker().persistence().unwrap().disk.clone();
    publish_confirmed(&ch, "", "nq", b"ok-1", persistent()).await;
    disk.inject_write_failures(true);
    let failed = ch
        .basic_publish(
            "".into(),
            "nq".into(),
            BasicPublishOptions::default(),
            b"lost",
            persistent(),
        )
        .await
        .unwrap();
    assert!(matches!(
        within(failed).await.unwrap(),
        Confirmation::Nack(_)
    ));
    // Transient messages need no disk and are still acked.
    publish_confirmed(&ch, "", "nq", b"transient", BasicProperties::default()).await;
    disk.inject_write_failures(false);
    publish_confirmed(&ch, "", "nq", b"ok-2", persistent()).await;
    let bodies: Vec<Vec<u8>> = get_all(&ch, "nq").await.into_iter().map(|m| m.0).collect();
    assert_eq!(
        bodies,
        vec![b"ok-1".to_vec(), b"transient".to_vec(), b"ok-2".to_vec()]
    );
}

#[tokio::test]
async fn names_with_any_bytes_survive_a_restart() {
    let dir = temp_dir("names");
    let name = "odd\0name/with.dots";
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        queue(&ch, name, true).await;
        publish_confirmed_on(&ch, name).await;
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    assert_eq!(passive(&ch, name).await.unwrap().message_count(), 1);
}

/// A no-ack delivery handed back unwritten (its consumer went before its
/// connection wrote it) gave its place on disk up as it was dispatched:
/// the queue writes it again (outside its lock, as a publish is written)
/// and it survives a restart, in its place.
#[tokio::test]
async fn a_no_ack_delivery_handed_back_unwritten_survives_a_restart() {
    let dir = temp_dir("handback");
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        queue(&ch, "hb", true).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for body in [&b"first"[..], b"second"] {
            publish_confirmed(&ch, "", "hb", body, persistent()).await;
        }
        let q = s.broker().vhost("/").unwrap().queue("hb").unwrap();
        // Taken no-ack: settled on the spot, its index entry acked; then
        // handed back, as a delivery whose consumer is gone is.
        let got = q.get(true).expect("a message");
        let (m, left) = (got.message, got.left);
        assert_eq!((m.message.body(), left), (&b"first"[..], 1));
        q.undeliver(m, true, None, None);
        assert_eq!(q.counts().0, 2);
        c.close(200, "bye".into()).await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let bodies: Vec<Vec<u8>> = get_all(&ch, "hb").await.into_iter().map(|m| m.0).collect();
    assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// A no-ack delivery handed back unwritten keeps its TTL deadline on
/// disk too, not only in memory: after a restart it still expires at it
/// (nothing at start-up re-reads a per-message `expiration`).
#[tokio::test]
async fn a_no_ack_delivery_handed_back_unwritten_keeps_its_deadline_across_a_restart() {
    let dir = temp_dir("handback-ttl");
    let deadline;
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        queue(&ch, "hbt", true).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let props = persistent().with_expiration("3000".into());
        publish_confirmed(&ch, "", "hbt", b"short-lived", props).await;
        let q = s.broker().vhost("/").unwrap().queue("hbt").unwrap();
        // Taken no-ack, then handed back with its deadline, as a delivery
        // whose connection closed before writing it is.
        let m = q.get(true).expect("a message").message;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        deadline = std::time::Instant::now() + std::time::Duration::from_millis(3000);
        q.undeliver(m, true, Some(now + 3000), None);
        assert_eq!(q.counts().0, 1);
        c.close(200, "bye".into()).await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    let q = s.broker().vhost("/").unwrap().queue("hbt").unwrap();
    if std::time::Instant::now() < deadline {
        assert_eq!(q.counts().0, 1, "back in its queue after the restart");
    }
    wait_until("it expires", std::time::Duration::from_secs(20), || async {
        q.counts().0 == 0
    })
    .await;
    assert!(get_all(&ch, "hbt").await.is_empty());
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

async fn publish_confirmed_on(ch: &Channel, queue: &str) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(ch, "", queue, b"x", persistent()).await;
}

/// The flusher sleeps while nothing is written: an idle broker does not
/// sync at all (it used to flush five times a second), and writes nobody
/// waits for (an ack, a delivery mark) still reach the disk on their own.
#[tokio::test]
async fn an_idle_broker_does_not_flush_and_unwaited_writes_still_do() {
    let s = start().await;
    let disk = s.broker().persistence().expect("data dir").disk.clone();
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let q = uniq("idle");
    ch.queue_declare(q.as_str().into(), durable_q(), t())
        .await
        .unwrap();
    // The declare's reply waited for its flush; then nothing is dirty.
    eventually(|| {
        let d = disk.clone();
        async move { !d.is_dirty() }
    })
    .await;
    let before = disk.flush_count();
    // Nothing to wait for can show that nothing happens: watch for a
    // while (the old flusher flushed every 200 ms).
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(disk.flush_count(), before, "an idle broker flushed");
    // A persistent publish without confirms: no waiter, still flushed.
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"x",
        persistent(),
    )
    .await
    .unwrap();
    eventually(|| {
        let d = disk.clone();
        async move { d.flush_count() > before && !d.is_dirty() }
    })
    .await;
    conn.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// A broker with a zero memory budget for bodies (every persistent body is
/// paged out), a confirm-mode channel, and a new durable queue.
async fn zero_budget_queue(prefix: &str) -> (TestBroker, Connection, Channel, String) {
    let s = start_with(|c| c.storage.queue_memory_mb = 0).await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = uniq(prefix);
    ch.queue_declare(q.as_str().into(), durable_q(), t())
        .await
        .unwrap();
    (s, conn, ch, q)
}

/// Bodies beyond the memory budget are on disk only; delivery reads them
/// ahead on the store's loader thread (never under the queue's lock), and
/// basic.get reads the head it needs: every message arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_out_bodies_are_read_ahead_for_consumers_and_gets() {
    let (s, conn, ch, q) = zero_budget_queue("paged").await;
    let total = 3_000u32;
    let mut confirms = Vec::new();
    for i in 0..total {
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    // Two gets read the paged-out head themselves.
    for want in 0..2u32 {
        let m = within(ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(m.delivery.data, want.to_be_bytes());
    }
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&ch, &q, false).await;
    for want in 2..total {
        let d = within(cons.next()).await.unwrap().unwrap();
        assert_eq!(
            u32::from_be_bytes(d.data[..4].try_into().unwrap()),
            want,
            "in order (redelivered {})",
            d.redelivered
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// A prefetch-0 consumer on a durable backlog larger than the memory
/// budget: its unacked messages hold their place on disk, not their body;
/// the unacked view still names them, and when the channel closes they
/// all come back, in order, redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_past_the_budget_are_held_on_disk_and_requeued_in_order() {
    let (s, conn, ch, q) = zero_budget_queue("unacked-disk").await;
    let total = 500u32;
    for i in 0..total {
        publish_confirmed(&ch, "", &q, &i.to_be_bytes(), persistent()).await;
    }
    let cch = conn.create_channel().await.unwrap();
    let mut cons = consume(&cch, &q, false).await;
    for want in 0..total {
        let d = within(cons.next()).await.unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(d.data[..4].try_into().unwrap()), want);
    }
    let queue = s.broker().vhost("/").unwrap().queue(&q).unwrap();
    let held = queue.contents();
    assert_eq!(held.unacked, total as usize);
    assert_eq!(
        held.bytes.ram_unacked.count, 0,
        "with a zero budget no unacked record holds a body"
    );
    // The unacked view reads what it shows from disk.
    let (status, body) = raw(
        &s,
        "GET",
        &format!("/api/queues/%2F/{q}/unacked?count=3"),
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["items"][0]["routing_key"], q.as_str(), "{body}");
    assert_eq!(v["items"][0]["payload_bytes"], 4);
    cch.close(200, "requeue".into()).await.unwrap();
    let mut again = consume(&ch, &q, true).await;
    for want in 0..total {
        let d = within(again.next()).await.unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(d.data[..4].try_into().unwrap()), want);
        assert!(d.redelivered);
    }
    conn.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// The management API answers a change only once its definition writes
/// are durable (they join the group commit instead of syncing each).
#[tokio::test]
async fn the_api_answers_a_durable_declare_after_its_flush() {
    let s = start().await;
    let p = s.broker().persistence().expect("data dir").clone();
    for (i, (method, path, body)) in [
        ("PUT", "/api/queues/%2F/api-durable", r#"{"durable":true}"#),
        (
            "PUT",
            "/api/exchanges/%2F/api-x",
            r#"{"type":"direct","durable":true}"#,
        ),
        (
            "POST",
            "/api/bindings/%2F/e/api-x/q/api-durable",
            r#"{"routing_key":"k"}"#,
        ),
        ("DELETE", "/api/queues/%2F/api-durable", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let before = p.definitions_written();
        let (status, reply) = raw(&s, method, path, Some(GUEST), body).await;
        assert!((200..300).contains(&status), "{i}: {status} {reply}");
        assert!(
            p.definitions_written() > before,
            "{i}: it wrote a definition"
        );
        assert!(
            p.definitions_durable_upto() > before,
            "{i}: answered before its write was durable"
        );
    }
    s.shutdown().await;
}

/// Segment files in the transient area of `dir` and their total bytes.
fn transient_area(dir: &std::path::Path) -> (usize, u64) {
    let Ok(d) = std::fs::read_dir(dir.join("transient")) else {
        return (0, 0);
    };
    d.flatten().fold((0, 0), |(n, b), e| {
        (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
    })
}

/// A transient 100-byte body carrying its number.
fn numbered(i: u32) -> Vec<u8> {
    let mut b = vec![b'.'; 100];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b
}

/// A non-durable queue past its memory budget (zero here) pages transient
/// bodies out to the transient area; a basic.get and a consumer read them
/// back in order, and the area's files are gone once the queue drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_backlog_pages_out_and_drains_in_order() {
    let s = start_with(|c| c.storage.queue_memory_mb = 0).await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = uniq("tpaged");
    queue(&ch, &q, false).await;
    // 20,000 x ~120 bytes: past the 1 MiB write buffer, so files hold data.
    let total = 20_000u32;
    let mut confirms = Vec::new();
    for i in 0..total {
        let props = if i % 1000 == 7 {
            persistent() // a persistent message in a non-durable queue pages too
        } else {
            BasicProperties::default()
        };
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &numbered(i),
                props,
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let (files, bytes) = transient_area(s.data_dir());
    assert!(
        files >= 1 && bytes > 1_000_000,
        "paged bodies on disk: {files} files, {bytes} bytes"
    );
    let m = within(ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.delivery.data, numbered(0));
    ch.basic_qos(200, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&ch, &q, false).await;
    for want in 1..total {
        let d = within(cons.next()).await.unwrap().unwrap();
        assert_eq!(d.data, numbered(want), "message {want} in order, intact");
        let mode = d.properties.delivery_mode().unwrap_or(1);
        assert_eq!(mode == 2, want % 1000 == 7, "delivery mode of {want}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let dir = s.data_dir().to_owned();
    wait_until(
        "the drained area's files to go",
        std::time::Duration::from_secs(10),
        || {
            let dir = dir.clone();
            async move { transient_area(&dir).1 == 0 }
        },
    )
    .await;
    conn.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// Nothing in the transient area survives a restart: it is wiped at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_wipes_the_transient_area() {
    let dir = temp_dir("tpaged-restart");
    let zero_budget = || {
        let mut c = test_config(&dir);
        c.storage.queue_memory_mb = 0;
        c
    };
    {
        let s = warren::server::start(&zero_budget()).await.unwrap();
        let conn = connect(&s).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        queue(&ch, "tpaged-lost", false).await;
        for i in 0..20_000u32 {
            ch.basic_publish(
                "".into(),
                "tpaged-lost".into(),
                BasicPublishOptions::default(),
                &numbered(i),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        assert!(transient_area(&dir).1 > 1_000_000);
        s.shutdown().await;
    }
    let s = warren::server::start(&zero_budget()).await.unwrap();
    assert_eq!(transient_area(&dir).1, 0, "wiped at start-up");
    s.shutdown().await;
}

/// Paging keeps TTL and length-limit semantics by not paging what they
/// could touch: with a zero memory budget, messages carrying an
/// `expiration` and a queue with a length limit and a dead-letter
/// exchange stay in memory (nothing reaches the transient area), a
/// drop-head dead-letters every body intact and in order, and the plain
/// dead-letter queue pages what it receives and gives it back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_ttl_or_limits_could_drop_are_not_paged() {
    let s = start_with(|c| c.storage.queue_memory_mb = 0).await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let total = 20_000u32;
    let publish_all = |q: String, props: BasicProperties| {
        let ch = ch.clone();
        async move {
            for i in 0..total {
                ch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &numbered(i),
                    props.clone(),
                )
                .await
                .unwrap();
            }
            ch.wait_for_confirms().await.unwrap();
        }
    };
    let plain = uniq("tpaged-exp");
    queue(&ch, &plain, false).await;
    publish_all(
        plain.clone(),
        BasicProperties::default().with_expiration("600000".into()),
    )
    .await;
    assert_eq!(
        transient_area(s.data_dir()).1,
        0,
        "expiring bodies stay in memory"
    );
    ch.queue_purge(plain.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();

    let dlq = uniq("tpaged-dlq");
    queue(&ch, &dlq, false).await;
    let limited = uniq("tpaged-max");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(5000));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.as_str().into()),
    );
    ch.queue_declare(
        limited.as_str().into(),
        QueueDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    publish_all(limited.clone(), BasicProperties::default()).await;
    let kept = get_all(&ch, &limited).await;
    let want: Vec<Vec<u8>> = (total - 5000..total).map(numbered).collect();
    assert_eq!(kept.into_iter().map(|m| m.0).collect::<Vec<_>>(), want);
    // Dead-lettering runs after the publishes that pushed them out.
    let dead_in = |ch: Channel, q: String| async move {
        let ok = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ok.message_count() == total - 5000
    };
    wait_until(
        "every dropped message dead-lettered",
        std::time::Duration::from_secs(10),
        || dead_in(ch.clone(), dlq.clone()),
    )
    .await;
    let dead = get_all(&ch, &dlq).await;
    let want: Vec<Vec<u8>> = (0..total - 5000).map(numbered).collect();
    assert_eq!(dead.into_iter().map(|m| m.0).collect::<Vec<_>>(), want);
    conn.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}

/// A BCC header's keys are kept with a durable queue's persistent message
/// (the header itself never delivered): rejected after a restart, the
/// message is still dead-lettered by its BCC key (no dead-letter routing
/// key), as RabbitMQ routes a dead letter by all its original keys.
#[tokio::test]
async fn bcc_keys_survive_a_restart_and_route_the_dead_letter() {
    let dir = temp_dir("bcc");
    let mut headers = FieldTable::default();
    headers.insert(
        "BCC".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString("by-bcc".into())].into()),
    );
    headers.insert("kept".into(), AMQPValue::LongString("yes".into()));
    {
        let s = start_on(&dir).await;
        let c = connect(&s).await;
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        durable_exchange(&ch, "bcc-dlx", ExchangeKind::Direct).await;
        let dl = args(&[("x-dead-letter-exchange", longstr("bcc-dlx"))]);
        declare_durable(&ch, "bcc-src", dl).await;
        declare_durable(&ch, "bcc-dst", t()).await;
        bind(&ch, "bcc-dst", "bcc-dlx", "by-bcc", t()).await;
        let props = persistent().with_headers(headers.clone());
        publish_confirmed(&ch, "", "bcc-src", b"with-bcc", props).await;
        publish_confirmed(&ch, "", "bcc-src", b"plain", persistent()).await;
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    for body in [&b"with-bcc"[..], b"plain"] {
        let m = ch
            .basic_get("bcc-src".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message after the restart");
        assert_eq!(m.delivery.data, body);
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        assert!(!h.inner().contains_key("BCC"), "BCC is never delivered");
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    // Both rejections are settled (the source is empty) before the
    // target is read: a plain dead letter would have arrived by then.
    wait_until(
        "the source to empty",
        std::time::Duration::from_secs(10),
        || async {
            passive(&ch, "bcc-src").await.unwrap().message_count() == 0
                && passive(&ch, "bcc-dst").await.unwrap().message_count() >= 1
        },
    )
    .await;
    let got = get_all(&ch, "bcc-dst").await;
    assert_eq!(got.len(), 1, "only the BCC'd one is bound there");
    let (body, _, props) = &got[0];
    assert_eq!(body, b"with-bcc");
    let h = props.headers().clone().unwrap();
    assert!(!h.inner().contains_key("BCC"), "nor on the dead letter");
    assert_eq!(h.inner().get("kept"), Some(&longstr("yes")));
}
