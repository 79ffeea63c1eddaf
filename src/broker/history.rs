//! Sampled history of an object's counters and lengths, for the charts:
//! what RabbitMQ's management agent keeps under its
//! `sample_retention_policies`, in rings of bounded size.
//!
//! Each retention level keeps one row per interval (5 s for the last ten
//! minutes, 60 s for the last hour, ...). A row holds each gauge's value
//! (queue lengths) and each counter's increase over the interval, as
//! `u32`, beside the counters' running totals at the newest row: the
//! cumulative value of any row is the total minus the increases after it.
//! So a row costs four bytes per series, and rows are made only as time
//! passes (a young object holds few).
//!
//! Time is an argument everywhere (Unix milliseconds): the sampler records,
//! readers ask for a range; nothing here reads a clock.

use std::collections::VecDeque;

/// One retention level: rows `interval` seconds apart, kept for `keep`
/// seconds. RabbitMQ writes these as `{keep, interval}` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub keep: u64,
    pub interval: u64,
}

/// RabbitMQ's default `global` policy (the overview, vhosts).
pub const GLOBAL: &[Level] = &[
    Level {
        keep: 605,
        interval: 5,
    },
    Level {
        keep: 3660,
        interval: 60,
    },
    Level {
        keep: 29400,
        interval: 600,
    },
    Level {
        keep: 86400,
        interval: 1800,
    },
];

/// RabbitMQ's default `basic` policy (queues, exchanges, connections,
/// channels).
pub const BASIC: &[Level] = &[
    Level {
        keep: 605,
        interval: 5,
    },
    Level {
        keep: 3600,
        interval: 60,
    },
];

/// Whether a series is a level (a queue length) or a running count (a
/// message counter, octets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    Gauge,
    Counter,
}

/// One sample as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Unix milliseconds, a multiple of the requested increment.
    pub timestamp: u64,
    pub value: u64,
}

struct Ring {
    interval_ms: u64,
    /// Series per row.
    width: usize,
    /// Rows kept at most.
    cap: usize,
    /// When the newest row's interval starts.
    newest: u64,
    /// `width` values per row, oldest row first.
    rows: VecDeque<u32>,
    /// Each series' value at the last record (counters' running totals).
    totals: Vec<u64>,
}

impl Ring {
    fn len(&self) -> usize {
        self.rows.len() / self.width
    }

    fn oldest(&self) -> u64 {
        self.newest - (self.len().saturating_sub(1) as u64) * self.interval_ms
    }

    /// Appends a row, dropping the oldest first when the ring is full; the
    /// allocation grows as a `VecDeque`'s would but never past a full ring.
    fn push(&mut self, row: &[u32]) {
        let width = row.len();
        if self.len() >= self.cap {
            self.rows.drain(..width);
        }
        let need = self.rows.len() + width;
        if need > self.rows.capacity() {
            let target = (self.rows.capacity() * 2).clamp(need, (self.cap * width).max(need));
            self.rows.reserve_exact(target - self.rows.len());
        }
        self.rows.extend(row);
    }

    fn record(&mut self, kinds: &[Series], now: u64, values: &[u64]) {
        let width = kinds.len();
        let t = now - now % self.interval_ms;
        let clamp = |v: u64| v.min(u32::MAX as u64) as u32;
        // A new row: each gauge's value, each counter's increase (none for
        // the first row, which only sets the totals).
        let first = self.rows.is_empty();
        let row: Vec<u32> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                Series::Gauge => clamp(values[i]),
                Series::Counter if first => 0,
                Series::Counter => clamp(values[i].saturating_sub(self.totals[i])),
            })
            .collect();
        if first {
            self.push(&row);
            self.newest = t;
        } else if t <= self.newest {
            // The same interval (or a clock step back): update the row.
            let at = self.rows.len() - width;
            for (i, k) in kinds.iter().enumerate() {
                self.rows[at + i] = match k {
                    Series::Gauge => row[i],
                    Series::Counter => self.rows[at + i].saturating_add(row[i]),
                };
            }
        } else {
            // Intervals nobody recorded repeat the last levels with no
            // increase (at most a ring's worth).
            let gap = ((t - self.newest) / self.interval_ms - 1).min(self.cap as u64) as usize;
            let still: Vec<u32> = kinds
                .iter()
                .zip(self.rows.range(self.rows.len() - width..))
                .map(|(k, v)| if *k == Series::Gauge { *v } else { 0 })
                .collect();
            for _ in 0..gap {
                self.push(&still);
            }
            self.push(&row);
            self.newest = t;
        }
        self.totals.clear();
        self.totals.extend_from_slice(values);
    }

    /// Series `col`'s value in each row, oldest first.
    fn column(&self, kinds: &[Series], col: usize) -> Vec<u64> {
        let width = kinds.len();
        let n = self.len();
        let cells = (0..n).map(|r| self.rows[r * width + col] as u64);
        match kinds[col] {
            Series::Gauge => cells.collect(),
            Series::Counter => {
                let incs: Vec<u64> = cells.collect();
                let mut out = vec![0; n];
                let mut total = self.totals[col];
                for r in (0..n).rev() {
                    out[r] = total;
                    total = total.saturating_sub(incs[r]);
                }
                out
            }
        }
    }
}

/// The sampled history of one object's series.
pub struct History {
    kinds: &'static [Series],
    rings: Vec<Ring>,
}

impl History {
    pub fn new(policy: &[Level], kinds: &'static [Series]) -> Self {
        History {
            kinds,
            rings: policy
                .iter()
                .map(|l| Ring {
                    interval_ms: l.interval.max(1) * 1000,
                    width: kinds.len().max(1),
                    cap: (l.keep / l.interval.max(1)) as usize + 1,
                    newest: 0,
                    rows: VecDeque::new(),
                    totals: Vec::new(),
                })
                .collect(),
        }
    }

    /// Records the series' current values (in `kinds` order) at `now`.
    pub fn record(&mut self, now: u64, values: &[u64]) {
        debug_assert_eq!(values.len(), self.kinds.len());
        for r in &mut self.rings {
            r.record(self.kinds, now, values);
        }
    }

    /// Samples of series `col` for the last `age` seconds every `incr`
    /// seconds, newest first, as RabbitMQ serves them: timestamps are
    /// multiples of `incr` counted back from `now`, each with the value
    /// of the newest row at or before it; none before the object's first
    /// row. Read from the finest level that covers `age`.
    pub fn samples(&self, col: usize, now: u64, age: u64, incr: u64) -> Vec<Sample> {
        let incr_ms = incr.max(1) * 1000;
        let age_ms = age * 1000;
        let Some(ring) = self
            .rings
            .iter()
            .find(|r| (r.cap as u64 - 1) * r.interval_ms >= age_ms && r.interval_ms <= incr_ms)
            .or_else(|| {
                self.rings
                    .iter()
                    .find(|r| (r.cap as u64 - 1) * r.interval_ms >= age_ms)
            })
            .or(self.rings.last())
        else {
            return Vec::new();
        };
        if ring.rows.is_empty() {
            return Vec::new();
        }
        let values = ring.column(self.kinds, col);
        let oldest = ring.oldest();
        let first = now - now % incr_ms;
        let mut out = Vec::new();
        for k in 0..=age_ms / incr_ms {
            let Some(t) = first.checked_sub(k * incr_ms) else {
                break;
            };
            if t + ring.interval_ms <= oldest {
                break;
            }
            let row = ((t.max(oldest) - oldest) / ring.interval_ms) as usize;
            out.push(Sample {
                timestamp: t,
                value: values[row.min(values.len() - 1)],
            });
        }
        out
    }
}

/// RabbitMQ's `avg` and `avg_rate` of a sample list (newest first): the
/// mean value, and the change per second from the oldest to the newest.
pub fn averages(samples: &[Sample]) -> (f64, f64) {
    let (Some(new), Some(old)) = (samples.first(), samples.last()) else {
        return (0.0, 0.0);
    };
    let avg = samples.iter().map(|s| s.value as f64).sum::<f64>() / samples.len() as f64;
    let secs = (new.timestamp - old.timestamp) as f64 / 1000.0;
    let rate = if secs > 0.0 {
        (new.value as f64 - old.value as f64) / secs
    } else {
        0.0
    };
    (avg, rate)
}

use super::Counter;
use std::sync::Mutex;

/// The lengths a queue (and the overview, summed) records, in order.
pub const LENGTHS: [&str; 3] = ["messages", "messages_ready", "messages_unacknowledged"];

/// The counters RabbitMQ 3.10 shows in a queue's `message_stats`.
pub const QUEUE_COUNTERS: &[Counter] = &[
    Counter::Publish,
    Counter::Deliver,
    Counter::DeliverNoAck,
    Counter::Get,
    Counter::GetNoAck,
    Counter::GetEmpty,
    Counter::Ack,
    Counter::Redeliver,
];

/// An exchange's.
pub const EXCHANGE_COUNTERS: [Counter; 2] = [Counter::PublishIn, Counter::PublishOut];

/// A channel's, and (with disk reads and writes) the overview's.
pub const CHANNEL_COUNTERS: &[Counter] = &[
    Counter::Publish,
    Counter::Confirm,
    Counter::Deliver,
    Counter::DeliverNoAck,
    Counter::Get,
    Counter::GetNoAck,
    Counter::GetEmpty,
    Counter::Ack,
    Counter::Redeliver,
    Counter::ReturnUnroutable,
    Counter::DropUnroutable,
];

/// The octet counters a connection records (`recv_oct`, `send_oct`).
pub const OCTETS: [&str; 2] = ["recv_oct", "send_oct"];

use Series::{Counter as C, Gauge as G};

/// A queue's series: [`LENGTHS`], then [`QUEUE_COUNTERS`].
pub const QUEUE_SERIES: &[Series] = &[G, G, G, C, C, C, C, C, C, C, C];
/// The overview's: [`LENGTHS`], then [`CHANNEL_COUNTERS`].
pub const OVERVIEW_SERIES: &[Series] = &[G, G, G, C, C, C, C, C, C, C, C, C, C, C];
/// An exchange's: [`EXCHANGE_COUNTERS`].
pub const EXCHANGE_SERIES: &[Series] = &[C, C];
/// A connection's: [`OCTETS`].
pub const CONNECTION_SERIES: &[Series] = &[C, C];
/// A channel's: [`CHANNEL_COUNTERS`].
pub const CHANNEL_SERIES: &[Series] = &[C, C, C, C, C, C, C, C, C, C, C];

/// A [`History`] the sampler writes and API requests read, each briefly.
pub struct SharedHistory(Mutex<History>);

impl SharedHistory {
    pub fn new(policy: &[Level], kinds: &'static [Series]) -> Self {
        SharedHistory(Mutex::new(History::new(policy, kinds)))
    }

    pub fn record(&self, now: u64, values: &[u64]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, values);
    }

    pub fn samples(&self, col: usize, now: u64, age: u64, incr: u64) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples(col, now, age, incr)
    }
}

impl std::fmt::Debug for SharedHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedHistory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[Series] = &[Series::Gauge, Series::Counter];

    #[test]
    fn samples_are_newest_first_at_multiples_of_the_increment() {
        let mut h = History::new(BASIC, KINDS);
        let t0 = 1_000_000_000_000u64; // a multiple of 5 s
        for i in 0..13u64 {
            h.record(t0 + i * 5000 + 123, &[i, 100 * i]);
        }
        let now = t0 + 12 * 5000 + 500;
        let s = h.samples(1, now, 60, 5);
        assert_eq!(s.len(), 13);
        assert_eq!(
            s[0],
            Sample {
                timestamp: t0 + 60_000,
                value: 1200
            }
        );
        assert_eq!(
            s[12],
            Sample {
                timestamp: t0,
                value: 0
            }
        );
        let g = h.samples(0, now, 20, 10);
        let v: Vec<u64> = g.iter().map(|s| s.value).collect();
        assert_eq!(v, vec![12, 10, 8]);
        assert_eq!(averages(&s), (600.0, 20.0));
    }

    #[test]
    fn rings_stay_bounded_and_gaps_repeat_the_last_level() {
        let mut h = History::new(BASIC, KINDS);
        let t0 = 1_000_000_000_000u64;
        for i in 0..1000u64 {
            h.record(t0 + i * 5000, &[7, i]);
        }
        assert!(h.rings.iter().all(|r| r.len() <= r.cap));
        // The allocation stays at the bound too.
        assert!(h
            .rings
            .iter()
            .all(|r| r.rows.capacity() <= r.cap * KINDS.len() + 8));
        assert_eq!(h.rings[0].len(), 122);
        // A pause of 30 s: the rows in between repeat the gauge.
        let last = t0 + 999 * 5000;
        h.record(last + 30_000, &[9, 1005]);
        let s = h.samples(0, last + 30_000, 30, 5);
        let v: Vec<u64> = s.iter().map(|s| s.value).collect();
        assert_eq!(v, vec![9, 7, 7, 7, 7, 7, 7]);
        let c = h.samples(1, last + 30_000, 30, 5);
        assert_eq!((c[0].value, c[1].value, c[6].value), (1005, 999, 999));
        // An hour at one-minute steps comes from the coarser ring.
        let hour = h.samples(1, last + 30_000, 3600, 60);
        assert_eq!(hour.len(), 61);
    }

    #[test]
    fn nothing_before_the_first_row() {
        let mut h = History::new(GLOBAL, KINDS);
        let t0 = 1_000_000_000_000u64;
        h.record(t0 + 1000, &[1, 1]);
        h.record(t0 + 6000, &[2, 3]);
        let s = h.samples(1, t0 + 6000, 600, 5);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].value, s[1].value), (3, 1));
    }
}
