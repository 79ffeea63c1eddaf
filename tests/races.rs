//! Deletes racing binds and consumes, run thousands of times.
//!
//! Each test starts an in-process broker with a data directory (so
//! durable records are written) and runs pairs of OS threads against the
//! broker's own API (the one the AMQP channels and the management API
//! call): in each round one thread binds or consumes while the other
//! deletes an end, both released by a barrier so their critical sections
//! overlap as often as the machine allows. Afterwards no binding, stored
//! binding record or consumer may be left pointing at a deleted object,
//! and a refused bind or consume must be RabbitMQ's 404.
//!
//! Threads rather than AMQP round trips: a round costs microseconds, so
//! thousands of rounds fit in a few seconds of a debug build, and the two
//! calls land within the same few microseconds far more often than two
//! sockets' frames would.

mod common;

use std::sync::{Arc, Barrier};
use warren::broker::{
    BrokerError, ConsumeRequest, Dest, ErrorKind, ExchangeOptions, Outbox, OutboxItem,
    QueueOptions, Vhost,
};
use warren_exchanges::Table;
use warren_queues::ChannelLimit;

/// Pairs of racing threads, and rounds per pair.
const PAIRS: usize = 4;
const ROUNDS: usize = 750;

fn durable_queue() -> QueueOptions {
    QueueOptions {
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: Table::default(),
    }
}

fn durable_exchange() -> ExchangeOptions {
    ExchangeOptions {
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: Table::default(),
    }
}

/// Runs `PAIRS` pairs of threads for `ROUNDS` rounds: `setup(pair,
/// round)` on the first thread, then `a` and `b` at once after a barrier.
/// Returns what `a` answered each time.
fn race<S, A, B, T>(setup: S, a: A, b: B) -> Vec<T>
where
    S: Fn(usize, usize) -> T + Send + Sync + 'static,
    A: Fn(usize, usize, &T) -> bool + Send + Sync + 'static,
    B: Fn(usize, usize, &T) + Send + Sync + 'static,
    T: Send + Sync + Clone + 'static,
{
    let (setup, a, b) = (Arc::new(setup), Arc::new(a), Arc::new(b));
    let mut handles = Vec::new();
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    for pair in 0..PAIRS {
        let start = Arc::new(Barrier::new(2));
        let done = Arc::new(Barrier::new(2));
        let shared: Arc<std::sync::Mutex<Option<T>>> = Arc::default();
        {
            let (start, done, shared) = (start.clone(), done.clone(), shared.clone());
            let results = results.clone();
            let (setup, a) = (setup.clone(), a.clone());
            handles.push(std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let t = setup(pair, round);
                    *shared.lock().unwrap() = Some(t.clone());
                    start.wait();
                    if a(pair, round, &t) {
                        results.lock().unwrap().push(t);
                    }
                    done.wait();
                }
            }));
        }
        let b = b.clone();
        handles.push(std::thread::spawn(move || {
            for round in 0..ROUNDS {
                start.wait();
                let t = shared.lock().unwrap().clone().expect("set up");
                b(pair, round, &t);
                done.wait();
            }
        }));
    }
    for h in handles {
        h.join().expect("a racing thread panicked");
    }
    Arc::try_unwrap(results)
        .ok()
        .expect("threads are done")
        .into_inner()
        .unwrap()
}

fn assert_not_found(e: &BrokerError, what: &str) {
    assert_eq!(e.kind, ErrorKind::NotFound, "{what}: {}", e.text);
}

/// The durable binding records, as a restart would read them.
fn stored_bindings(v: &Vhost, s: &warren::server::Server) -> Vec<(String, String, String)> {
    let p = s.broker().persistence().expect("a data directory");
    p.bindings()
        .into_iter()
        .filter(|b| b.vhost == v.name)
        .map(|b| (b.source, b.destination_type, b.destination))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bind_racing_queue_delete_leaves_no_binding_or_record() {
    let s = common::start().await;
    let v = s.broker().vhost("/").expect("default vhost");
    v.declare_exchange("race-qb-x", "direct", false, durable_exchange())
        .expect("exchange");
    let (v1, v2, v3) = (v.clone(), v.clone(), v.clone());
    let setup = move |pair: usize, round: usize| {
        let name = format!("race-qb-{pair}-{round}");
        v1.declare_queue(&name, false, durable_queue(), 0)
            .expect("declare");
        name
    };
    let bind = move |_: usize, _: usize, q: &String| match v2.bind_queue(
        q,
        "race-qb-x",
        q,
        Table::default(),
        0,
    ) {
        Ok(()) => true,
        Err(e) => {
            assert_not_found(&e, "bind to a queue being deleted");
            false
        }
    };
    let delete = move |_: usize, _: usize, q: &String| {
        v3.delete_queue(q, false, false, 0).expect("delete");
    };
    let bound = tokio::task::spawn_blocking(move || race(setup, bind, delete))
        .await
        .unwrap();
    // Whichever went first, every queue is gone, so no binding to one may
    // be left, in memory or on disk.
    let ex = v.exchange("race-qb-x").unwrap();
    let live: Vec<String> = ex
        .router()
        .bindings()
        .iter()
        .filter_map(|b| match &b.destination {
            Dest::Queue(q) => Some(q.0.name.clone()),
            Dest::Exchange(_) => None,
        })
        .collect();
    assert!(
        live.is_empty(),
        "{} bindings to deleted queues (of {} binds answered ok): {:?}",
        live.len(),
        bound.len(),
        &live[..live.len().min(5)]
    );
    let stored = stored_bindings(&v, &s);
    assert!(
        stored.is_empty(),
        "{} binding records to deleted queues: {:?}",
        stored.len(),
        &stored[..stored.len().min(5)]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_racing_queue_delete_is_refused_or_cancelled() {
    let s = common::start().await;
    let v = s.broker().vhost("/").expect("default vhost");
    let broker = s.broker().clone();
    let (v1, v2) = (v.clone(), v.clone());
    let setup = move |pair: usize, round: usize| {
        let name = format!("race-c-{pair}-{round}");
        let opts = QueueOptions {
            durable: false,
            ..durable_queue()
        };
        v1.declare_queue(&name, false, opts, 0).expect("declare");
        // Looked up before the race, as a channel holds it.
        let q = v1.queue_for(&name, 0).expect("declared");
        (q, Arc::new(Outbox::default()), broker.next_id())
    };
    type Setup = (Arc<warren::broker::Queue>, Arc<Outbox>, u64);
    let consume = move |_: usize, _: usize, t: &Setup| {
        let (q, outbox, id) = t;
        let req = ConsumeRequest {
            id: *id,
            tag: format!("ctag-{id}"),
            conn: 0,
            session: 1,
            outbox: outbox.clone(),
            no_ack: false,
            exclusive: false,
            prefetch: 10,
            channel_limit: Arc::new(ChannelLimit::default()),
            priority: 0,
            arguments: Default::default(),
        };
        match q.consume(req) {
            Ok(()) => true,
            Err(e) => {
                assert_not_found(&e, "consume on a queue being deleted");
                false
            }
        }
    };
    let delete = move |_: usize, _: usize, t: &Setup| {
        v2.delete_queue(&t.0.name, false, false, 0).expect("delete");
    };
    let attached = tokio::task::spawn_blocking(move || race(setup, consume, delete))
        .await
        .unwrap();
    // A consumer that attached was cancelled by the deletion: its
    // connection was told, and the deleted queue keeps no consumer.
    for (q, outbox, id) in &attached {
        assert!(q.is_deleted());
        assert_eq!(q.counts().1, 0, "a consumer stayed on deleted {}", q.name);
        let mut items = Vec::new();
        outbox.take_into(&mut items);
        assert!(
            items
                .iter()
                .any(|i| matches!(i, OutboxItem::Cancelled { consumer, .. } if consumer == id)),
            "consumer {id} on {} was never cancelled",
            q.name
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_bind_racing_exchange_delete_leaves_no_binding_or_record() {
    let s = common::start().await;
    let v = s.broker().vhost("/").expect("default vhost");
    let (v1, v2, v3) = (v.clone(), v.clone(), v.clone());
    let setup = move |pair: usize, round: usize| {
        let (src, dst) = (
            format!("race-eb-s-{pair}-{round}"),
            format!("race-eb-d-{pair}-{round}"),
        );
        for x in [&src, &dst] {
            v1.declare_exchange(x, "fanout", false, durable_exchange())
                .expect("declare");
        }
        (src, dst)
    };
    let bind = move |_: usize, _: usize, (src, dst): &(String, String)| match v2.bind_exchange(
        dst,
        src,
        "",
        Table::default(),
    ) {
        Ok(()) => true,
        Err(e) => {
            assert_not_found(&e, "bind to an exchange being deleted");
            false
        }
    };
    // Odd rounds delete the destination, even ones the source.
    let delete = move |_: usize, round: usize, (src, dst): &(String, String)| {
        let gone = if round % 2 == 1 { dst } else { src };
        v3.delete_exchange(gone, false).expect("delete");
    };
    tokio::task::spawn_blocking(move || race(setup, bind, delete))
        .await
        .unwrap();
    // No live exchange routes to a deleted one.
    for ex in v.exchanges() {
        let dead: Vec<String> = ex
            .router()
            .bindings()
            .iter()
            .filter_map(|b| match &b.destination {
                Dest::Exchange(x) if x.is_deleted() => Some(x.name.clone()),
                _ => None,
            })
            .collect();
        assert!(dead.is_empty(), "{} routes to deleted {dead:?}", ex.name);
    }
    // Every round deleted one end, so no record of its binding may stay.
    let stored: Vec<_> = stored_bindings(&v, &s)
        .into_iter()
        .filter(|(src, _, _)| src.starts_with("race-eb-"))
        .collect();
    assert!(
        stored.is_empty(),
        "{} binding records with a deleted end: {:?}",
        stored.len(),
        &stored[..stored.len().min(5)]
    );
    s.shutdown().await;
}

/// A persistent message, as the channel builds one for a publish.
fn persistent_message(queue: &str) -> warren_queues::Message {
    warren_queues::Message::new("", queue, &[], b"race", true).expect("a valid message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_racing_queue_delete_leaves_no_message_or_record() {
    let s = common::start().await;
    let v = s.broker().vhost("/").expect("default vhost");
    let disk = s.broker().persistence().expect("data dir").disk.clone();
    let (v1, v3) = (v.clone(), v.clone());
    let setup = move |pair: usize, round: usize| {
        let name = format!("race-p-{pair}-{round}");
        v1.declare_queue(&name, false, durable_queue(), 0)
            .expect("declare");
        // Looked up before the race, as routing finds it.
        let q = v1.queue_for(&name, 0).expect("declared");
        (name, q)
    };
    type Setup = (String, Arc<warren::broker::Queue>);
    // The queue as routing resolved it, then stored and enqueued as
    // `Vhost::publish` does: the deletion may run anywhere in between.
    let d = disk.clone();
    let publish = move |_: usize, _: usize, (name, q): &Setup| {
        let mut m = persistent_message(name);
        let r = d.put_body(&m, 1).expect("stored");
        m.set_stored(Some(r));
        if q.publish(Arc::new(m), None) != warren::broker::queue::PublishOutcome::Queued {
            d.forget_ref(r);
        }
        true
    };
    let delete = move |_: usize, _: usize, (name, _): &Setup| {
        v3.delete_queue(name, false, false, 0).expect("delete");
    };
    let all = tokio::task::spawn_blocking(move || race(setup, publish, delete))
        .await
        .unwrap();
    // Every queue is gone: none may hold a message, and no record may
    // still be referenced (a message left in a deleted queue kept its
    // segment alive until the next start).
    for (name, q) in &all {
        assert_eq!(q.counts().0, 0, "deleted {name} holds a message");
    }
    assert_eq!(disk.live_refs(), 0, "records still referenced");
    // The whole path through routing, once, for a queue that exists.
    let ex = v.exchange("").unwrap();
    v.declare_queue("race-p-live", false, durable_queue(), 0)
        .unwrap();
    let mut scratch = warren::broker::RouteScratch::default();
    let published = v
        .publish(
            &ex,
            persistent_message("race-p-live"),
            warren::broker::PublishDetails::default(),
            &mut scratch,
        )
        .unwrap();
    assert_eq!(published.routed, 1);
    assert_eq!(disk.live_refs(), 1);
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// The same races over AMQP: real clients on separate connections, so the
// two commands are read and run by two connection tasks on the broker's
// worker threads. A round costs a few loopback round trips, so there are
// fewer rounds than above; the pairs run at once and alternate which of the
// two frames is sent first.

/// Racing pairs of connections over AMQP, and rounds per pair.
const AMQP_PAIRS: usize = 4;
const AMQP_ROUNDS: usize = 60;

/// An open channel on `c`: `ch` again, or a new one if a race closed it.
async fn open_channel(c: &lapin::Connection, ch: lapin::Channel) -> lapin::Channel {
    if ch.status().connected() {
        ch
    } else {
        c.create_channel().await.expect("channel")
    }
}

/// Runs `a` and `b` at once, sending `a`'s frame first on even rounds and
/// `b`'s on odd ones.
async fn both<A, B>(round: usize, a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future,
    B: std::future::Future,
{
    if round.is_multiple_of(2) {
        tokio::join!(a, b)
    } else {
        let (y, x) = tokio::join!(b, a);
        (x, y)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_queue_bind_racing_queue_delete_leaves_no_binding() {
    use lapin::options::{QueueBindOptions, QueueDeleteOptions};
    let s = common::start().await;
    let setup = common::connect(&s).await;
    let ch = setup.create_channel().await.unwrap();
    common::durable_exchange(&ch, "race-aqb-x", lapin::ExchangeKind::Direct).await;
    let mut pairs = Vec::new();
    for pair in 0..AMQP_PAIRS {
        let (binder, deleter) = (common::connect(&s).await, common::connect(&s).await);
        pairs.push(tokio::spawn(async move {
            let mut bch = binder.create_channel().await.unwrap();
            let dch = deleter.create_channel().await.unwrap();
            let mut bound = 0;
            for round in 0..AMQP_ROUNDS {
                let q = format!("race-aqb-{pair}-{round}");
                common::queue(&dch, &q, true).await;
                bch = open_channel(&binder, bch).await;
                let bind = bch.queue_bind(
                    q.as_str().into(),
                    "race-aqb-x".into(),
                    q.as_str().into(),
                    QueueBindOptions::default(),
                    common::t(),
                );
                let delete = dch.queue_delete(q.as_str().into(), QueueDeleteOptions::default());
                let (b, d) = common::within(both(round, bind, delete)).await;
                d.expect("the deleter's queue.delete");
                match b {
                    Ok(()) => bound += 1,
                    Err(e) => {
                        let (code, text) = common::soft_code(&e);
                        assert_eq!(code, 404, "{text}");
                        assert_eq!(text, format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
                    }
                }
            }
            let _ = binder.close(200, "done".into()).await;
            let _ = deleter.close(200, "done".into()).await;
            bound
        }));
    }
    let mut bound = 0;
    for p in pairs {
        bound += p.await.expect("a racing pair panicked");
    }
    // Every queue is gone: no binding to one may be left, as the API shows
    // it, in the exchange's router, or on disk.
    let api = common::get_ok(&s, "/api/exchanges/%2F/race-aqb-x/bindings/source").await;
    assert_eq!(
        api.as_array().map(Vec::len),
        Some(0),
        "bindings to deleted queues ({bound} binds answered ok): {api}"
    );
    let v = s.broker().vhost("/").unwrap();
    assert!(v
        .exchange("race-aqb-x")
        .unwrap()
        .router()
        .bindings()
        .is_empty());
    assert!(stored_bindings(&v, &s).is_empty());
    let queues = common::get_ok(&s, "/api/queues/%2F").await;
    assert!(
        !queues.to_string().contains("race-aqb-"),
        "a deleted queue is listed: {queues}"
    );
    setup.close(200, "done".into()).await.unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_consume_racing_queue_delete_leaves_no_consumer() {
    use futures_lite::stream::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueDeleteOptions};
    let s = common::start().await;
    let v = s.broker().vhost("/").unwrap();
    let mut pairs = Vec::new();
    for pair in 0..AMQP_PAIRS {
        let (consumer, deleter) = (common::connect(&s).await, common::connect(&s).await);
        let v = v.clone();
        pairs.push(tokio::spawn(async move {
            let mut cch = consumer.create_channel().await.unwrap();
            let dch = deleter.create_channel().await.unwrap();
            let (mut queues, mut attached) = (Vec::new(), 0);
            for round in 0..AMQP_ROUNDS {
                let q = format!("race-ac-{pair}-{round}");
                common::queue(&dch, &q, round % 4 < 2).await;
                queues.push(v.queue(&q).expect("declared"));
                cch = open_channel(&consumer, cch).await;
                let consume = cch.basic_consume(
                    q.as_str().into(),
                    format!("ctag-{round}").as_str().into(),
                    BasicConsumeOptions::default(),
                    common::t(),
                );
                let delete = dch.queue_delete(q.as_str().into(), QueueDeleteOptions::default());
                let (c, d) = common::within(both(round, consume, delete)).await;
                d.expect("the deleter's queue.delete");
                match c {
                    // The deletion cancelled it: the broker's basic.cancel
                    // ends the stream (waited for here, before the next
                    // round can close the channel with a 404).
                    Ok(mut stream) => {
                        assert!(
                            common::within(stream.next()).await.is_none(),
                            "a consumer of deleted {q} got something other than its cancel"
                        );
                        attached += 1;
                    }
                    Err(e) => {
                        let (code, text) = common::soft_code(&e);
                        assert_eq!(code, 404, "{text}");
                        assert_eq!(text, format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
                    }
                }
            }
            (queues, attached, consumer, deleter)
        }));
    }
    let (mut queues, mut attached, mut conns) = (Vec::new(), 0, Vec::new());
    for p in pairs {
        let (q, n, c, d) = p.await.expect("a racing pair panicked");
        queues.extend(q);
        attached += n;
        conns.extend([c, d]);
    }
    // No deleted queue keeps a consumer, and no channel still lists one
    // (channel snapshots refresh once a second).
    for q in &queues {
        assert!(q.is_deleted(), "{} survived its delete", q.name);
        assert_eq!(q.counts().1, 0, "a consumer stayed on deleted {}", q.name);
    }
    common::wait_until(
        "the channels to list no consumer",
        std::time::Duration::from_secs(10),
        || async { common::get_ok(&s, "/api/consumers").await == serde_json::json!([]) },
    )
    .await;
    let channels = common::get_ok(&s, "/api/channels").await;
    for ch in channels.as_array().unwrap() {
        assert_eq!(
            ch["consumer_count"], 0,
            "{attached} consumes answered ok: {ch}"
        );
    }
    for c in conns {
        c.close(200, "done".into()).await.unwrap();
    }
    s.shutdown().await;
}
