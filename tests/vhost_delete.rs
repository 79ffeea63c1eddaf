//! Deleting a vhost is final: connections and requests that still hold it
//! cannot write records for it afterwards, so it does not come back (with
//! their queues) at the next start on the same data directory.

mod common;
use common::*;
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren::broker::{ErrorKind, ExchangeOptions, QueueOptions};
use warren::server::Server;
use warren_exchanges::Table;

/// Creates `vhost` through the API and lets guest use it.
async fn create_vhost(s: &Server, vhost: &str) {
    let (st, body) = raw(s, "PUT", &format!("/api/vhosts/{vhost}"), Some(GUEST), "").await;
    assert!(st == 201 || st == 204, "{st} {body}");
    let (st, body) = raw(
        s,
        "PUT",
        &format!("/api/permissions/{vhost}/guest"),
        Some(GUEST),
        r#"{"configure":".*","write":".*","read":".*"}"#,
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {body}");
}

async fn delete_vhost(s: &Server, vhost: &str) {
    let (st, body) = raw(
        s,
        "DELETE",
        &format!("/api/vhosts/{vhost}"),
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(st, 204, "{body}");
}

fn durable_queue_opts() -> QueueOptions {
    QueueOptions {
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: Table::default(),
    }
}

fn durable_exchange_opts() -> ExchangeOptions {
    ExchangeOptions {
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: Table::default(),
    }
}

async fn status(s: &Server, path: &str) -> u16 {
    raw(s, "GET", path, Some(GUEST), "").await.0
}

#[tokio::test]
async fn a_deleted_vhost_stays_deleted_across_a_restart() {
    let dir = temp_dir("vhost-delete");
    {
        let s = start_on(&dir).await;
        create_vhost(&s, "v").await;
        let c = connect_to(&s, "v").await;
        let ch = c.create_channel().await.unwrap();
        ch.queue_declare("before".into(), durable_q(), FieldTable::default())
            .await
            .unwrap();
        // What an HTTP handler in flight during the delete holds.
        let held = s.broker().vhost("v").expect("vhost v");

        delete_vhost(&s, "v").await;
        assert!(held.is_deleted());

        let e = held
            .declare_queue("late-q", false, durable_queue_opts(), 0)
            .err()
            .expect("a declare on a deleted vhost is refused");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.text, "vhost 'v' is deleted");
        let e = held
            .declare_exchange("late-x", "direct", false, durable_exchange_opts())
            .expect_err("an exchange declare on a deleted vhost is refused");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(held
            .bind_queue("before", "amq.direct", "k", Table::default(), 0)
            .is_err());
        assert!(held
            .bind_exchange("amq.fanout", "amq.direct", "k", Table::default())
            .is_err());

        // The old connection's channel cannot declare either: the
        // connection is closed (320, as RabbitMQ), whether the delete's
        // close request or the refused declare gets there first.
        let r = ch
            .queue_declare("late-amqp".into(), durable_q(), FieldTable::default())
            .await;
        let e = r.expect_err("declare on a deleted vhost succeeded");
        if let lapin::ErrorKind::ProtocolError(e) = e.kind() {
            assert_eq!(e.get_id(), 320, "{e}");
            assert!(
                e.get_message().as_str().contains("vhost 'v' is deleted"),
                "{e}"
            );
        }
        // Otherwise the close got there before the declare was sent.
        eventually(|| {
            let up = c.status().connected();
            async move { !up }
        })
        .await;
        assert_eq!(status(&s, "/api/vhosts/v").await, 404);
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    assert!(s.broker().vhost("v").is_none(), "vhost v came back");
    assert_eq!(status(&s, "/api/vhosts/v").await, 404);
    for q in ["before", "late-q", "late-amqp"] {
        assert_eq!(status(&s, &format!("/api/queues/v/{q}")).await, 404, "{q}");
    }
    assert_eq!(status(&s, "/api/exchanges/v/late-x").await, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn a_recreated_vhost_keeps_only_its_own_objects() {
    let dir = temp_dir("vhost-recreate");
    {
        let s = start_on(&dir).await;
        create_vhost(&s, "w").await;
        let c = connect_to(&s, "w").await;
        let ch = c.create_channel().await.unwrap();
        ch.queue_declare("old-q".into(), durable_q(), FieldTable::default())
            .await
            .unwrap();
        let old = s.broker().vhost("w").expect("vhost w");

        delete_vhost(&s, "w").await;
        create_vhost(&s, "w").await;
        let c2 = connect_to(&s, "w").await;
        let ch2 = c2.create_channel().await.unwrap();
        ch2.queue_declare("new-q".into(), durable_q(), FieldTable::default())
            .await
            .unwrap();

        // The old vhost's holders write nothing into the new one's records.
        assert!(old
            .declare_queue("old-late", false, durable_queue_opts(), 0)
            .is_err());
        assert!(old
            .declare_exchange("old-x", "topic", false, durable_exchange_opts())
            .is_err());
        assert!(ch
            .queue_declare("old-amqp".into(), durable_q(), FieldTable::default())
            .await
            .is_err());
        assert_eq!(status(&s, "/api/queues/w/old-late").await, 404);
        assert_eq!(status(&s, "/api/queues/w/new-q").await, 200);
        c2.close(200, "bye".into()).await.unwrap();
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    assert_eq!(status(&s, "/api/vhosts/w").await, 200);
    assert_eq!(status(&s, "/api/queues/w/new-q").await, 200);
    for q in ["old-q", "old-late", "old-amqp"] {
        assert_eq!(status(&s, &format!("/api/queues/w/{q}")).await, 404, "{q}");
    }
    assert_eq!(status(&s, "/api/exchanges/w/old-x").await, 404);
    s.shutdown().await;
}

/// Declares racing the delete on other threads: whatever they managed
/// before it is swept, nothing they write slips in after the sweep.
#[tokio::test]
async fn declares_racing_a_delete_leave_no_records_behind() {
    let dir = temp_dir("vhost-race");
    {
        let s = start_on(&dir).await;
        create_vhost(&s, "r").await;
        let v = s.broker().vhost("r").expect("vhost r");
        // The writers stop when refused; `stop` ends them if the broker
        // never refuses, so the test fails (below) instead of hanging.
        let stop = Arc::new(AtomicBool::new(false));
        let declared = Arc::new(AtomicU32::new(0));
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let v = v.clone();
                let (stop, declared) = (stop.clone(), declared.clone());
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("q-{t}-{n}");
                        if v.declare_queue(&name, false, durable_queue_opts(), 0)
                            .is_err()
                        {
                            return n;
                        }
                        declared.fetch_add(1, Ordering::Relaxed);
                        let _ = v.bind_queue(&name, "amq.direct", &name, Table::default(), 0);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Delete under them once every one of them is writing.
        wait_until("the writers to start", Duration::from_secs(10), || async {
            declared.load(Ordering::Relaxed) >= 40
        })
        .await;
        delete_vhost(&s, "r").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !writers.iter().all(|w| w.is_finished()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all_refused = writers.iter().all(|w| w.is_finished());
        stop.store(true, Ordering::Relaxed);
        let made: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(made > 0, "the writers never declared anything");
        assert!(
            all_refused,
            "declares in the deleted vhost were not refused within 10 s"
        );
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    assert!(s.broker().vhost("r").is_none(), "vhost r came back");
    assert_eq!(status(&s, "/api/vhosts/r").await, 404);
    s.shutdown().await;
}
