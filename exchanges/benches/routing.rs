//! Routing throughput: one route per iteration, so criterion's
//! "elements/s" is routes per second.
//!
//! Topic exchanges are measured at 10, 1 000 and 100 000 bindings of a
//! realistic mix where each key matches only a few bindings; the trie makes
//! the cost per route nearly independent of the binding count. Headers
//! (a scan by design) at 1 000 bindings; direct and consistent-hash for
//! reference.
//!
//! `cargo bench -p warren-exchanges --bench routing -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use warren_exchanges::{ExchangeType, RouteInput, Router, Table, Value};

/// xorshift64*: deterministic inputs without a rand dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

const REGIONS: &[&str] = &["eu", "us", "ap", "sa"];

/// `n` topic bindings: per-symbol stock patterns, per-app log patterns,
/// exact order keys and regional wildcards, plus the catch-alls `logs.#`
/// and `*.eu.#`. Destinations repeat (1 000 queues), as in a broker.
fn topic_router(n: usize) -> Router<u32> {
    let mut r = Router::new(ExchangeType::Topic);
    r.bind(0, "logs.#", Table::default()).unwrap();
    r.bind(1, "*.eu.#", Table::default()).unwrap();
    let mut i = 2;
    while r.bindings().len() < n {
        let key = match i % 4 {
            0 => format!("stocks.s{i}.*"),
            1 => format!("logs.app{i}.#"),
            2 => format!("orders.{}.o{i}", REGIONS[i % REGIONS.len()]),
            _ => format!("*.r{i}.alerts.#"),
        };
        r.bind((i % 1000) as u32, &key, Table::default()).unwrap();
        i += 1;
    }
    r
}

/// Keys of the same shapes; ids drawn from twice the bound range, so about
/// half name a bound id and the rest match only the catch-alls (or nothing).
fn topic_keys(n: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed);
    (0..4096)
        .map(|_| {
            let i = rng.below(2 * n.max(8));
            match rng.below(4) {
                0 => format!("stocks.s{i}.nyse"),
                1 => format!("logs.app{i}.error"),
                2 => format!("orders.{}.o{i}", REGIONS[i % REGIONS.len()]),
                _ => format!("metrics.r{i}.alerts.cpu.high"),
            }
        })
        .collect()
}

fn bench_topic(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic");
    g.throughput(Throughput::Elements(1));
    for n in [10, 1_000, 100_000] {
        let r = topic_router(n);
        let keys = topic_keys(n);
        let mut out = Vec::new();
        let mut k = 0;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                out.clear();
                k = (k + 1) % keys.len();
                r.route(&RouteInput::key(black_box(&keys[k])), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn s(v: &str) -> Value {
    Value::LongString(v.as_bytes().to_vec())
}

/// 1 000 headers bindings: `all` on region+kind, `any` on customer ids,
/// presence checks, and some -with-x.
fn headers_router() -> Router<u32> {
    let mut r = Router::new(ExchangeType::Headers);
    for i in 0..1000usize {
        let mut t = Table::default();
        match i % 4 {
            0 => {
                t.insert("region", s(REGIONS[i % REGIONS.len()]));
                t.insert("kind", s(&format!("k{}", i % 50)));
            }
            1 => {
                t.insert("x-match", s("any"));
                t.insert("customer", Value::LongInt(i as i32));
                t.insert("account", Value::LongInt(i as i32));
            }
            2 => {
                t.insert("kind", s(&format!("k{}", i % 50)));
                t.insert("priority", Value::Void);
            }
            _ => {
                t.insert("x-match", s("all-with-x"));
                t.insert("x-source", s(&format!("svc{}", i % 20)));
                t.insert("region", s(REGIONS[i % REGIONS.len()]));
            }
        }
        r.bind((i % 200) as u32, "", t).unwrap();
    }
    r
}

fn header_tables() -> Vec<Table> {
    let mut rng = Rng(0xbeef);
    (0..1024)
        .map(|_| {
            let mut t = Table::default();
            t.insert("region", s(REGIONS[rng.below(REGIONS.len())]));
            t.insert("kind", s(&format!("k{}", rng.below(100))));
            t.insert("customer", Value::LongInt(rng.below(2000) as i32));
            t.insert("x-source", s(&format!("svc{}", rng.below(40))));
            t.insert("content", s("application/json"));
            t
        })
        .collect()
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(1));
    let r = headers_router();
    let tables = header_tables();
    let mut out = Vec::new();
    let mut k = 0;
    g.bench_function(BenchmarkId::from_parameter(1000), |b| {
        b.iter(|| {
            out.clear();
            k = (k + 1) % tables.len();
            let input = RouteInput {
                headers: Some(black_box(&tables[k])),
                ..RouteInput::key("")
            };
            r.route(&input, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_others(c: &mut Criterion) {
    let mut g = c.benchmark_group("other");
    g.throughput(Throughput::Elements(1));

    let mut direct = Router::new(ExchangeType::Direct);
    for i in 0..100_000u32 {
        direct
            .bind(i % 1000, &format!("task.{i}"), Table::default())
            .unwrap();
    }
    let mut rng = Rng(7);
    let keys: Vec<String> = (0..4096)
        .map(|_| format!("task.{}", rng.below(200_000)))
        .collect();
    let mut out = Vec::new();
    let mut k = 0;
    g.bench_function("direct/100000", |b| {
        b.iter(|| {
            out.clear();
            k = (k + 1) % keys.len();
            direct.route(&RouteInput::key(black_box(&keys[k])), &mut out);
            black_box(out.len())
        })
    });

    let mut ch = Router::new(ExchangeType::ConsistentHash);
    for i in 0..100u32 {
        ch.bind(i, &(1 + i % 5).to_string(), Table::default())
            .unwrap();
    }
    g.bench_function("consistent-hash/100", |b| {
        b.iter(|| {
            out.clear();
            k = (k + 1) % keys.len();
            ch.route(&RouteInput::key(black_box(&keys[k])), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_topic, bench_headers, bench_others);
criterion_main!(benches);
