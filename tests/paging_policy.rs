//! A policy that gives a transient queue whose bodies are already paged
//! out to `data/transient` a length limit and a dead-letter exchange: the
//! trim dead-letters the paged messages too (read back from the transient
//! area), in order, rather than dropping them.

mod common;

use common::*;
use lapin::options::*;
use lapin::BasicProperties;
use std::time::Duration;

const TOTAL: usize = 3000;
const KEEP: usize = 100;
const SIZE: usize = 1000;

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:06}").into_bytes();
    b.resize(SIZE, b'.');
    b
}

/// Bytes in the transient area's files.
fn transient_bytes(s: &TestBroker) -> u64 {
    let Ok(dir) = std::fs::read_dir(s.data_dir().join("transient")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The bodies' numbers, consumed (no-ack) until `n` have come.
async fn consume_numbers(ch: &lapin::Channel, q: &str, n: usize) -> Vec<usize> {
    let mut c = consume(ch, q, true).await;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = next(&mut c).await;
        assert_eq!(d.data.len(), SIZE);
        out.push(std::str::from_utf8(&d.data[..6]).unwrap().parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_dead_letters_the_paged_messages_it_trims() {
    // A 1 MiB budget: a good part of the 3 MB backlog pages out.
    let s = start_with(|c| c.storage.queue_memory_mb = 1).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&ch, "pp.q", false).await;
    queue(&ch, "pp.dead", false).await;
    for i in 0..TOTAL {
        ch.basic_publish(
            "".into(),
            "pp.q".into(),
            BasicPublishOptions::default(),
            &body(i),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    within(ch.wait_for_confirms()).await.unwrap();
    wait_until("bodies paged out", Duration::from_secs(10), || async {
        transient_bytes(&s) > (TOTAL * SIZE / 4) as u64
    })
    .await;

    let policy = serde_json::json!({
        "pattern": "^pp\\.q$",
        "definition": {"max-length": KEEP, "dead-letter-exchange": "", "dead-letter-routing-key": "pp.dead"},
        "apply-to": "queues",
    });
    let (st, b) = raw(
        &s,
        "PUT",
        "/api/policies/%2F/pp",
        Some(GUEST),
        &policy.to_string(),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    wait_until(
        "the trimmed messages in pp.dead",
        Duration::from_secs(20),
        || async {
            passive(&ch, "pp.dead").await.unwrap().message_count() as usize == TOTAL - KEEP
        },
    )
    .await;
    assert_eq!(
        passive(&ch, "pp.q").await.unwrap().message_count() as usize,
        KEEP
    );
    // Every one of them, oldest first; the newest stay.
    let dead = consume_numbers(&ch, "pp.dead", TOTAL - KEEP).await;
    assert_eq!(dead, (0..TOTAL - KEEP).collect::<Vec<_>>());
    let kept = consume_numbers(&ch, "pp.q", KEEP).await;
    assert_eq!(kept, (TOTAL - KEEP..TOTAL).collect::<Vec<_>>());
    // Drained: the transient records were all released.
    wait_until(
        "the transient area emptied",
        Duration::from_secs(10),
        || async { transient_bytes(&s) == 0 },
    )
    .await;
    c.close(200, "bye".into()).await.unwrap();
    s.shutdown().await;
}
