//! Crash safety of persistent messages and publisher confirms.
//!
//! The `warren` binary runs as a child process on one data directory.
//! Each round, several publishers publish persistent messages with
//! confirms (pipelined, a bounded window of unconfirmed publishes) until
//! the broker is killed with SIGKILL at a pseudo-random moment; then it is
//! restarted on the same data directory. Every message whose publish was
//! confirmed must come back exactly once, in order per publisher, with its
//! body and properties intact; unconfirmed ones may or may not be there.
//!
//! Each message goes through a durable direct exchange to two durable
//! queues of its round: one shared by every publisher and one of its own.
//! A round's queues (and bindings) are declared a round ahead, so they
//! cross a crash before they are used, and are only drained after a
//! second crash: after the first restart their message counts are
//! recorded and must be the same after the next one, then they are drained
//! and checked strictly, then deleted, and must stay deleted after the
//! crash that follows.
//!
//! The kill timings come from a small deterministic PRNG seeded from the
//! round number (`WARREN_CRASH_SEED` varies them). The broker's output of
//! every start is kept in the test's temp directory; a failure names it.

mod common;
use common::child::{start_broker, tail};
use common::temp_dir;
use futures_lite::stream::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

/// Kills (and so restarts) of the broker in one run.
const ROUNDS: usize = 12;
const PUBLISHERS: usize = 3;
/// Unconfirmed publishes a publisher keeps in flight.
const WINDOW: usize = 200;
const EXCHANGE: &str = "crash-x";
const CONTENT_TYPE: &str = "application/x-warren-crash";
/// How long to publish before the kill, in milliseconds.
const KILL_MIN_MS: u64 = 50;
const KILL_MAX_MS: u64 = 800;

// ---------------------------------------------------------------------------
// Messages.

/// xorshift64: deterministic kill timings without a rand crate.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let s = (seed ^ 0x2545_F491_4F6C_DD1D).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        XorShift(if s == 0 { 1 } else { s })
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn routing_key(round: usize, p: usize) -> String {
    format!("r{round}.p{p}")
}

fn shared_queue(round: usize) -> String {
    format!("crash-r{round}-all")
}

fn own_queue(round: usize, p: usize) -> String {
    format!("crash-r{round}-p{p}")
}

fn round_queues(round: usize) -> Vec<String> {
    let mut v = vec![shared_queue(round)];
    v.extend((0..PUBLISHERS).map(|p| own_queue(round, p)));
    v
}

/// Bodies are mostly small, sometimes bigger than a frame.
fn filler_len(seq: u64) -> usize {
    if seq % 401 == 17 {
        140_000 + (seq % 1000) as usize
    } else {
        (seq.wrapping_mul(7919) % 1200) as usize
    }
}

fn filler_byte(p: usize, seq: u64, i: usize) -> u8 {
    (p as u64 * 31 + seq * 7 + i as u64 * 13) as u8
}

fn body(p: usize, round: usize, seq: u64) -> Vec<u8> {
    let mut b = format!("p={p} r={round} s={seq};").into_bytes();
    b.extend((0..filler_len(seq)).map(|i| filler_byte(p, seq, i)));
    b
}

/// The (publisher, round, seq) a body claims, if the whole body is intact.
fn parse_body(b: &[u8]) -> Result<(usize, usize, u64), String> {
    let semi = b
        .iter()
        .position(|&c| c == b';')
        .ok_or("no ';' in the body")?;
    let head = std::str::from_utf8(&b[..semi]).map_err(|e| e.to_string())?;
    let mut it = head.split(' ');
    let mut field = |name: &str| -> Result<u64, String> {
        it.next()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad header {head:?}"))
    };
    let (p, r, s) = (field("p=")? as usize, field("r=")? as usize, field("s=")?);
    let rest = &b[semi + 1..];
    if rest.len() != filler_len(s) {
        return Err(format!(
            "{head}: body filler of {} bytes, expected {}",
            rest.len(),
            filler_len(s)
        ));
    }
    if let Some(i) = (0..rest.len()).find(|&i| rest[i] != filler_byte(p, s, i)) {
        return Err(format!("{head}: body filler differs at byte {i}"));
    }
    Ok((p, r, s))
}

fn headers(p: usize, round: usize, seq: u64) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        "publisher".into(),
        AMQPValue::LongString(format!("p{p}").into()),
    );
    h.insert("round".into(), AMQPValue::LongInt(round as i32));
    h.insert("seq".into(), AMQPValue::LongLongInt(seq as i64));
    h.insert("crash-test".into(), AMQPValue::Boolean(true));
    h
}

fn message_id(p: usize, round: usize, seq: u64) -> ShortString {
    format!("p{p}-r{round}-s{seq}").into()
}

fn properties(p: usize, round: usize, seq: u64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(message_id(p, round, seq))
        .with_timestamp(1_700_000_000 + seq)
        .with_headers(headers(p, round, seq))
}

/// What comes back differs from what was published, if it does.
fn check_properties(d: &Delivery, p: usize, round: usize, seq: u64) -> Result<(), String> {
    let got = &d.properties;
    let mut errs = Vec::new();
    if got.delivery_mode() != &Some(2) {
        errs.push(format!("delivery_mode {:?}", got.delivery_mode()));
    }
    if got.content_type().as_ref().map(|s| s.as_str()) != Some(CONTENT_TYPE) {
        errs.push(format!("content_type {:?}", got.content_type()));
    }
    if got.message_id() != &Some(message_id(p, round, seq)) {
        errs.push(format!("message_id {:?}", got.message_id()));
    }
    if got.timestamp() != &Some(1_700_000_000 + seq) {
        errs.push(format!("timestamp {:?}", got.timestamp()));
    }
    if got.headers() != &Some(headers(p, round, seq)) {
        errs.push(format!("headers {:?}", got.headers()));
    }
    if d.exchange.as_str() != EXCHANGE || d.routing_key.as_str() != routing_key(round, p) {
        errs.push(format!(
            "exchange {:?} routing key {:?}",
            d.exchange, d.routing_key
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join(", "))
    }
}

// ---------------------------------------------------------------------------
// Publishers.

#[derive(Debug, Default, Clone)]
struct Published {
    /// Sequence numbers 0..attempted were handed to basic.publish.
    attempted: u64,
    /// Sequence numbers confirmed with basic.ack, ascending.
    acked: Vec<u64>,
    nacked: u64,
    /// Acked but returned as unroutable: the round's bindings were lost.
    returned: Vec<u64>,
    /// How publishing ended (the connection dying, normally).
    end: String,
}

impl Published {
    fn record(&mut self, seq: u64, c: Confirmation) {
        match c {
            Confirmation::Ack(None) => self.acked.push(seq),
            Confirmation::Ack(Some(_)) => self.returned.push(seq),
            Confirmation::Nack(_) => self.nacked += 1,
            Confirmation::NotRequested => panic!("confirm mode is on, seq {seq}"),
        }
    }
}

/// Publishes persistent messages with confirms until the connection dies.
async fn publisher(url: String, p: usize, round: usize, ready: Arc<Barrier>) -> Published {
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("publisher connects");
    let ch = conn.create_channel().await.expect("publisher channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ready.wait().await;

    let key = routing_key(round, p);
    let mut out = Published::default();
    let mut inflight: VecDeque<(u64, PublisherConfirm)> = VecDeque::new();
    let mut seq = 0u64;
    loop {
        if inflight.len() >= WINDOW {
            let (s, c) = inflight.pop_front().expect("a full window");
            match tokio::time::timeout(Duration::from_secs(15), c).await {
                Ok(Ok(conf)) => out.record(s, conf),
                Ok(Err(e)) => {
                    out.end = format!("confirm of {s}: {e}");
                    break;
                }
                Err(_) => {
                    out.end = format!("confirm of {s} timed out");
                    break;
                }
            }
        }
        out.attempted = seq + 1;
        let payload = body(p, round, seq);
        let publish = ch.basic_publish(
            EXCHANGE.into(),
            key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &payload,
            properties(p, round, seq),
        );
        match tokio::time::timeout(Duration::from_secs(15), publish).await {
            Ok(Ok(c)) => inflight.push_back((seq, c)),
            Ok(Err(e)) => {
                out.end = format!("publish of {seq}: {e}");
                break;
            }
            Err(_) => {
                out.end = format!("publish of {seq} timed out");
                break;
            }
        }
        seq += 1;
    }
    // The connection is gone: each outstanding confirm was either acked
    // before that or fails now. One that never resolves counts as
    // unconfirmed, which is what it is to a publisher.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (s, c) in inflight {
        if let Ok(Ok(conf)) = tokio::time::timeout_at(deadline, c).await {
            out.record(s, conf);
        }
    }
    out.acked.sort_unstable();
    out
}

// ---------------------------------------------------------------------------
// Checking.

/// "0-99,101,103-200": a sorted list of numbers as ranges.
fn ranges(v: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    if out.len() > 40 {
        let n = out.len();
        out.truncate(40);
        out.push(format!("... ({} more ranges)", n - 40));
    }
    out.join(",")
}

struct Run {
    work: PathBuf,
    data: PathBuf,
    /// Logs of the broker runs so far, oldest first.
    logs: Vec<PathBuf>,
    /// What each round's publishers saw.
    published: Vec<Vec<Published>>,
    kill_ms: Vec<u64>,
    /// Message counts of a round's queues after the first restart.
    counts: BTreeMap<String, u32>,
}

impl Run {
    /// Fails the test with the context needed to debug it: the round's
    /// publishing and the logs of the killed and the current broker.
    fn fail(&self, msg: String) -> ! {
        let mut s = format!(
            "{msg}\n\nwork dir: {}\ndata dir: {}\nkill timings (ms) per round: {:?}\n",
            self.work.display(),
            self.data.display(),
            self.kill_ms
        );
        for (r, pubs) in self.published.iter().enumerate() {
            for (p, x) in pubs.iter().enumerate() {
                s += &format!(
                    "round {r} p{p}: attempted {} acked {} (max {:?}) nacked {} returned {} end: {}\n",
                    x.attempted,
                    x.acked.len(),
                    x.acked.last(),
                    x.nacked,
                    x.returned.len(),
                    x.end
                );
            }
        }
        for log in self.logs.iter().rev().take(2).rev() {
            s += &format!("\n--- {} (tail) ---\n{}\n", log.display(), tail(log, 30));
        }
        panic!("{s}");
    }

    /// Checks the drained contents of one of `round`'s queues, which the
    /// publishers in `pubs` published to. Returns how many of the messages
    /// there were never confirmed (allowed either way).
    fn check_queue(&self, round: usize, queue: &str, got: &[Delivery], pubs: &[usize]) -> usize {
        let published = &self.published[round];
        let mut present: Vec<Vec<u64>> = vec![Vec::new(); PUBLISHERS];
        for (i, d) in got.iter().enumerate() {
            let (p, r, s) = match parse_body(&d.data) {
                Ok(x) => x,
                Err(e) => self.fail(format!(
                    "round {round}, queue {queue}: message #{i} is corrupt: {e}"
                )),
            };
            if r != round || !pubs.contains(&p) {
                self.fail(format!(
                    "round {round}, queue {queue}: message #{i} is p{p} r{r} s{s}, \
                     which was never routed here"
                ));
            }
            if s >= published[p].attempted {
                self.fail(format!(
                    "round {round}, queue {queue}: message #{i} is p{p} s{s}, but p{p} \
                     only published 0..{}",
                    published[p].attempted
                ));
            }
            if let Some(&last) = present[p].last() {
                if s <= last {
                    let what = if present[p].contains(&s) {
                        "a duplicate"
                    } else {
                        "out of order"
                    };
                    self.fail(format!(
                        "round {round}, queue {queue}: p{p} s{s} (message #{i}) is {what}: \
                         it comes after s{last}; p{p} so far: {}",
                        ranges(&present[p])
                    ));
                }
            }
            if let Err(e) = check_properties(d, p, r, s) {
                self.fail(format!(
                    "round {round}, queue {queue}: p{p} s{s} came back with different \
                     properties: {e}"
                ));
            }
            present[p].push(s);
        }
        for &p in pubs {
            let missing: Vec<u64> = published[p]
                .acked
                .iter()
                .copied()
                .filter(|s| present[p].binary_search(s).is_err())
                .collect();
            if !missing.is_empty() {
                self.fail(format!(
                    "round {round}, queue {queue}: {} confirmed message(s) of p{p} are \
                     missing: {}\np{p} confirmed: {}\np{p} present: {}",
                    missing.len(),
                    ranges(&missing),
                    ranges(&published[p].acked),
                    ranges(&present[p])
                ));
            }
        }
        got.len()
            - pubs
                .iter()
                .map(|&p| published[p].acked.len())
                .sum::<usize>()
    }
}

fn t() -> FieldTable {
    FieldTable::default()
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_x() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), f).await {
        Ok(x) => x,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Declares `round`'s queues and binds them.
async fn declare_round(ch: &Channel, round: usize) {
    for q in round_queues(round) {
        within(
            "queue.declare",
            ch.queue_declare(q.as_str().into(), durable(), t()),
        )
        .await
        .expect("queue.declare");
    }
    for p in 0..PUBLISHERS {
        let key = routing_key(round, p);
        for q in [shared_queue(round), own_queue(round, p)] {
            within(
                "queue.bind",
                ch.queue_bind(
                    q.as_str().into(),
                    EXCHANGE.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    t(),
                ),
            )
            .await
            .expect("queue.bind");
        }
    }
}

/// The message count of a queue that must exist.
async fn count(run: &Run, ch: &Channel, q: &str) -> u32 {
    match within(
        "passive queue.declare",
        ch.queue_declare(q.into(), passive(), t()),
    )
    .await
    {
        Ok(x) => x.message_count(),
        Err(e) => run.fail(format!("durable queue {q} is gone after a restart: {e}")),
    }
}

/// Takes every message off a queue: as many as its count says, then none.
async fn drain(run: &Run, conn: &Connection, q: &str) -> Vec<Delivery> {
    let ch = conn.create_channel().await.expect("channel");
    let n = count(run, &ch, q).await as usize;
    let mut cons = within(
        "basic.consume",
        ch.basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            t(),
        ),
    )
    .await
    .expect("basic.consume");
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), cons.next()).await {
            Ok(Some(Ok(d))) => got.push(d),
            other => run.fail(format!(
                "queue {q}: declare-ok said {n} messages, got {} then {other:?}",
                got.len()
            )),
        }
    }
    within(
        "basic.cancel",
        ch.basic_cancel(cons.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    // Anything the count left out shows up here and fails the check.
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), cons.next()).await
    {
        got.push(d);
    }
    let left = within(
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get");
    if let Some(m) = left {
        run.fail(format!(
            "queue {q}: a message is left after draining the {n} of its count ({} in all): {:?}",
            got.len(),
            String::from_utf8_lossy(&m.delivery.data[..m.delivery.data.len().min(40)])
        ));
    }
    let _ = ch.close(200, "drained".into()).await;
    got
}

/// Drains one round's queues and checks them, then deletes them.
async fn verify_round(run: &Run, conn: &Connection, round: usize) {
    let t0 = Instant::now();
    let all: Vec<usize> = (0..PUBLISHERS).collect();
    let got = drain(run, conn, &shared_queue(round)).await;
    let mut extra = vec![run.check_queue(round, &shared_queue(round), &got, &all)];
    for p in 0..PUBLISHERS {
        let q = own_queue(round, p);
        let got = drain(run, conn, &q).await;
        extra.push(run.check_queue(round, &q, &got, &[p]));
    }
    eprintln!(
        "round {round}: checked in {} ms; unconfirmed messages present (shared queue, \
         then own queues): {extra:?}",
        t0.elapsed().as_millis()
    );
    let ch = conn.create_channel().await.expect("channel");
    for q in round_queues(round) {
        within(
            "queue.delete",
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    let _ = ch.close(200, "deleted".into()).await;
}

/// A queue deleted before the last crash must not come back.
async fn assert_absent(run: &Run, conn: &Connection, q: &str) {
    let ch = conn.create_channel().await.expect("channel");
    match within(
        "passive queue.declare",
        ch.queue_declare(q.into(), passive(), t()),
    )
    .await
    {
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(err) if err.get_id() == 404 => {}
            other => run.fail(format!(
                "passive declare of deleted queue {q}: unexpected error {other:?}"
            )),
        },
        Ok(x) => run.fail(format!(
            "queue {q} was deleted before the crash but is back with {} messages",
            x.message_count()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_sigkill() {
    let started = Instant::now();
    let work = temp_dir("crash");
    std::fs::create_dir_all(&work).expect("create the work dir");
    let data = work.join("data");
    let seed: u64 = std::env::var("WARREN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut run = Run {
        work: work.to_path_buf(),
        data: data.clone(),
        logs: Vec::new(),
        published: Vec::new(),
        kill_ms: Vec::new(),
        counts: BTreeMap::new(),
    };

    // Start r runs round r (publish, kill); the last start only checks.
    for r in 0..=ROUNDS {
        let t0 = Instant::now();
        let mut broker = start_broker(&work, &data, r).await;
        run.logs.push(broker.log.clone());
        let recovered_ms = t0.elapsed().as_millis();
        let conn = within(
            "connect",
            Connection::connect(&broker.url(), ConnectionProperties::default()),
        )
        .await
        .unwrap_or_else(|e| run.fail(format!("start {r}: cannot connect: {e}")));
        let ch = conn.create_channel().await.expect("channel");

        if r == 0 {
            within(
                "exchange.declare",
                ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Direct, durable_x(), t()),
            )
            .await
            .expect("exchange.declare");
            declare_round(&ch, 0).await;
        } else {
            let passive_x = ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            };
            if let Err(e) = within(
                "exchange.declare",
                ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Direct, passive_x, t()),
            )
            .await
            {
                run.fail(format!(
                    "start {r}: durable exchange {EXCHANGE} is gone: {e}"
                ));
            }
        }

        // Round r-3's queues were deleted before the last crash.
        if r >= 3 {
            for q in round_queues(r - 3) {
                assert_absent(&run, &conn, &q).await;
            }
        }
        // Round r-2's queues: untouched since their counts were taken
        // after the previous restart; now drained, checked and deleted.
        if r >= 2 {
            for q in round_queues(r - 2) {
                let n = count(&run, &ch, &q).await;
                let before = run.counts[&q];
                if n != before {
                    run.fail(format!(
                        "start {r}: queue {q} untouched since the last restart had {before} \
                         messages then and {n} now"
                    ));
                }
            }
            verify_round(&run, &conn, r - 2).await;
        }
        // Round r-1's queues: the crash just happened. Take their counts,
        // and fail early if they cannot hold every confirmed message.
        if r >= 1 {
            let pubs = &run.published[r - 1];
            let total: usize = pubs.iter().map(|x| x.acked.len()).sum();
            for q in round_queues(r - 1) {
                let n = count(&run, &ch, &q).await;
                run.counts.insert(q.clone(), n);
                let need = if q == shared_queue(r - 1) {
                    total
                } else {
                    let p: usize = q.rsplit('p').next().unwrap().parse().unwrap();
                    pubs[p].acked.len()
                };
                if (n as usize) < need {
                    run.fail(format!(
                        "start {r}: queue {q} has {n} messages after the crash but {need} \
                         were confirmed"
                    ));
                }
            }
            if r == ROUNDS {
                verify_round(&run, &conn, r - 1).await;
            }
        }
        if r == ROUNDS {
            // Declared a round ahead and never used: recovered, empty.
            for q in round_queues(r) {
                let n = count(&run, &ch, &q).await;
                if n != 0 {
                    run.fail(format!("unused queue {q} has {n} messages"));
                }
            }
            if let Some(status) = broker.exited() {
                run.fail(format!("the broker exited with {status} while checked"));
            }
            eprintln!(
                "start {r}: recovered in {recovered_ms} ms, all rounds checked; total {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        // Next round's queues cross this round's crash before their use.
        declare_round(&ch, r + 1).await;

        // Publish until a pseudo-random moment, then SIGKILL.
        let mut rng = XorShift::new(seed.wrapping_mul(1000).wrapping_add(r as u64));
        let kill_after = KILL_MIN_MS + rng.next() % (KILL_MAX_MS - KILL_MIN_MS + 1);
        run.kill_ms.push(kill_after);
        let ready = Arc::new(Barrier::new(PUBLISHERS + 1));
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|p| tokio::spawn(publisher(broker.url(), p, r, ready.clone())))
            .collect();
        within("publishers ready", ready.wait()).await;
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        if let Some(status) = broker.exited() {
            run.fail(format!(
                "round {r}: the broker exited with {status} by itself"
            ));
        }
        broker.kill9();
        let mut pubs = Vec::new();
        for (p, task) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(x)) => pubs.push(x),
                Ok(Err(e)) => panic!("round {r}: publisher p{p} panicked: {e}"),
                Err(_) => panic!("round {r}: publisher p{p} did not stop after the kill"),
            }
        }
        drop(ch);
        drop(conn);
        eprintln!(
            "round {r}: recovered in {recovered_ms} ms, killed after {kill_after} ms; \
             acked/attempted per publisher: {:?}",
            pubs.iter()
                .map(|x| (x.acked.len(), x.attempted))
                .collect::<Vec<_>>()
        );
        run.published.push(pubs);
        for (p, x) in run.published[r].iter().enumerate() {
            if !x.returned.is_empty() {
                run.fail(format!(
                    "round {r}: p{p}'s publishes {} were returned as unroutable: the \
                     round's bindings, declared before the previous crash, are lost",
                    ranges(&x.returned)
                ));
            }
        }
    }
    let confirmed: usize = run.published.iter().flatten().map(|x| x.acked.len()).sum();
    assert!(
        confirmed > 0,
        "no publish was ever confirmed: the test checked nothing"
    );
    eprintln!(
        "{confirmed} confirmed messages checked over {ROUNDS} kills in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Definition writes join the group commit instead of syncing one by one,
/// so the reply is what promises them: every declare, bind and delete the
/// broker answered must survive a SIGKILL that follows the answer at once,
/// over AMQP and over the management API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_definitions_survive_sigkill() {
    let work = temp_dir("crash-defs");
    std::fs::create_dir_all(&work).expect("create the work dir");
    let data = work.join("data");
    const N: usize = 40;
    let name = |i: usize| format!("defs-q-{i}");
    {
        let mut broker = start_broker(&work, &data, 0).await;
        let conn = within(
            "connect",
            Connection::connect(&broker.url(), ConnectionProperties::default()),
        )
        .await
        .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare("defs-x".into(), ExchangeKind::Topic, durable_x(), t())
            .await
            .expect("exchange.declare");
        for i in 0..N {
            ch.queue_declare(name(i).as_str().into(), durable(), t())
                .await
                .expect("queue.declare");
            ch.queue_bind(
                name(i).as_str().into(),
                "defs-x".into(),
                format!("k.{i}").as_str().into(),
                QueueBindOptions::default(),
                t(),
            )
            .await
            .expect("queue.bind");
        }
        // The last reply before the kill is a delete: it must stick too.
        ch.queue_delete(name(0).as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        broker.kill9();
    }
    let mut broker = start_broker(&work, &data, 1).await;
    let conn = within(
        "connect",
        Connection::connect(&broker.url(), ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    for i in 1..N {
        ch.queue_declare(name(i).as_str().into(), passive(), t())
            .await
            .unwrap_or_else(|e| panic!("queue {i} was answered but lost: {e}"));
    }
    // The bindings came back: a message to k.N-1 reaches its queue.
    let confirm = ch
        .basic_publish(
            "defs-x".into(),
            format!("k.{}", N - 1).as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    drop(confirm);
    let last = name(N - 1);
    let mut got = None;
    for _ in 0..100 {
        got = ch
            .basic_get(last.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(got.is_some(), "the binding to {last} survived");
    let ch2 = conn.create_channel().await.expect("channel");
    let gone = ch2
        .queue_declare(name(0).as_str().into(), passive(), t())
        .await;
    assert!(gone.is_err(), "the deleted queue stays deleted");
    broker.kill9();
    drop(broker);
    let _ = std::fs::remove_dir_all(&work);
}
