//! `allocs`: heap allocations the broker makes per message on the
//! transient hot path (publish, route, enqueue, deliver, ack).
//!
//! A counting global allocator counts only on threads of the broker's own
//! runtime (flagged when they start), so the lapin client, which runs on
//! the main thread, is not counted. One producer publishes `N` 100-byte
//! messages to the default exchange and one consumer on another connection
//! receives them; the count covers from the first publish to the last
//! delivery, after a warm-up round that fills buffers and caches.
//!
//! ```text
//! cargo run --release --example allocs -- [--no-ack | --ack-each] [--messages N] [--size BYTES]
//! ```
//! Without `--no-ack` the consumer uses prefetch 1000 and acks every 500th
//! tag with multiple=true (perf's `--prefetch 1000 --ack-multiple`), or
//! with `--ack-each` every message on its own (perf's `--prefetch 1000`),
//! which counts what a settle costs.

use futures_lite::stream::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static BROKER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counted(size: usize) {
    if BROKER_THREAD.with(|b| b.get()) {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        counted(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        counted(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        counted(new);
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Opts {
    no_ack: bool,
    ack_each: bool,
    messages: u64,
    size: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        no_ack: false,
        ack_each: false,
        messages: 200_000,
        size: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-ack" => o.no_ack = true,
            "--ack-each" => o.ack_each = true,
            "--messages" => o.messages = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--size" => o.size = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => {
                eprintln!("usage: allocs [--no-ack | --ack-each] [--messages N] [--size BYTES]");
                std::process::exit(2);
            }
        }
    }
    o
}

/// Publishes `n` messages on one connection and receives them on another.
async fn round(url: &str, queue: &str, o: &Opts, n: u64) -> lapin::Result<()> {
    let props = ConnectionProperties::default();
    let pubc = Connection::connect(url, props.clone()).await?;
    let subc = Connection::connect(url, props).await?;
    let pch = pubc.create_channel().await?;
    let sch = subc.create_channel().await?;
    sch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = sch
        .basic_consume(
            queue.into(),
            "allocs".into(),
            BasicConsumeOptions {
                no_ack: o.no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let body = vec![7u8; o.size];
    let publisher = async {
        for i in 0..n {
            let p = pch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await?;
            // Let the socket drain now and then instead of queueing all.
            if i % 256 == 255 {
                p.await?;
            }
        }
        lapin::Result::Ok(())
    };
    let receiver = async {
        let mut got = 0;
        while got < n {
            let Some(d) = consumer.next().await else {
                break;
            };
            let d = d?;
            got += 1;
            if o.ack_each && !o.no_ack {
                sch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: false })
                    .await?;
            } else if !o.no_ack && (d.delivery_tag % 500 == 0 || got == n) {
                sch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                    .await?;
            }
        }
        lapin::Result::Ok(())
    };
    let (a, b) = tokio::join!(publisher, receiver);
    a?;
    b?;
    pubc.close(200, "done".into()).await?;
    subc.close(200, "done".into()).await?;
    Ok(())
}

fn main() {
    let o = opts();
    let broker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| BROKER_THREAD.with(|b| b.set(true)))
        .build()
        .expect("runtime");
    let data = std::env::temp_dir().join(format!("warren-allocs-{}", std::process::id()));
    let mut cfg = warren::config::Config::default();
    cfg.listeners.amqp = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.http = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.prometheus = "127.0.0.1:0".parse().unwrap();
    cfg.storage.data_dir = data.clone();
    let server = broker_rt
        .block_on(broker_rt.spawn(async move { warren::server::start(&cfg).await }))
        .expect("start task")
        .expect("broker starts");
    let url = format!("amqp://guest:guest@{}/%2f", server.amqp_addr());
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    client.block_on(async {
        let c = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = c.create_channel().await.expect("channel");
        ch.queue_declare(
            "allocs".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
        round(&url, "allocs", &o, 20_000).await.expect("warm-up");
        let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        round(&url, "allocs", &o, o.messages)
            .await
            .expect("counted round");
        let (a, b) = (ALLOCS.load(Relaxed) - a0, BYTES.load(Relaxed) - b0);
        let n = o.messages as f64;
        println!(
            "{} messages of {} bytes, {}: broker allocations {a} ({:.2} per message), {b} bytes ({:.1} per message); \
             includes two connections' set-up and close",
            o.messages,
            o.size,
            match (o.no_ack, o.ack_each) {
                (true, _) => "no-ack",
                (false, true) => "prefetch 1000, one ack per message",
                (false, false) => "prefetch 1000, ack multiple every 500",
            },
            a as f64 / n,
            b as f64 / n,
        );
        let _ = c.close(200, "done".into()).await;
    });
    broker_rt.block_on(server.shutdown());
    let _ = std::fs::remove_dir_all(&data);
}
