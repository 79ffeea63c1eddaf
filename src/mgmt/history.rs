//! Sampled history in API answers: RabbitMQ's `lengths_age`/`lengths_incr`,
//! `msg_rates_age`/`msg_rates_incr` and `data_rates_age`/`data_rates_incr`
//! query parameters add `samples` (newest first), `avg` and `avg_rate` to
//! the matching `*_details` objects, read from the rings the broker's
//! sampler fills ([`crate::broker::history`]).

use crate::broker::history::{
    averages, Sample, SharedHistory, CHANNEL_COUNTERS, EXCHANGE_COUNTERS, LENGTHS, OCTETS,
    QUEUE_COUNTERS,
};
use crate::broker::{registry::unix_ms, ConnectionInfo, Counter, Exchange, Queue};
use serde_json::{json, Value as J};
use std::collections::HashMap;

/// The ranges a request asks for: (age, increment) in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ranges {
    pub lengths: Option<(u64, u64)>,
    pub msg_rates: Option<(u64, u64)>,
    pub data_rates: Option<(u64, u64)>,
}

/// The most samples one series may ask for (RabbitMQ has no bound; this
/// keeps a request for a day at one-second steps from building 86,400).
const MAX_SAMPLES: u64 = 1000;

impl Ranges {
    /// Reads the range parameters as RabbitMQ 3.10 does: a family needs
    /// both, as integers (else it is ignored); a negative age, an increment
    /// that is not positive, or too many samples is a 400 with its reason.
    pub fn from_query(q: &HashMap<String, String>) -> Result<Ranges, String> {
        let pair = |family: &str| -> Result<Option<(u64, u64)>, String> {
            let get = |k: &str| {
                q.get(&format!("{family}_{k}"))
                    .and_then(|v| v.parse::<i64>().ok())
            };
            let (Some(age), Some(incr)) = (get("age"), get("incr")) else {
                return Ok(None);
            };
            if age < 0 || incr <= 0 || age / incr > MAX_SAMPLES as i64 {
                return Err(format!("Invalid range parameters: age {age}, incr {incr}"));
            }
            Ok(Some((age as u64, incr as u64)))
        };
        Ok(Ranges {
            lengths: pair("lengths")?,
            msg_rates: pair("msg_rates")?,
            data_rates: pair("data_rates")?,
        })
    }
}

/// Adds `samples`, `avg` and `avg_rate` to `obj[key_details]`.
fn put(obj: &mut J, key: &str, samples: &[Sample]) {
    let Some(d) = obj.get_mut(format!("{key}_details")) else {
        return;
    };
    let (avg, avg_rate) = averages(samples);
    d["samples"] = samples
        .iter()
        .map(|s| json!({"sample": s.value, "timestamp": s.timestamp}))
        .collect();
    d["avg"] = json!(avg);
    d["avg_rate"] = json!(avg_rate);
}

/// Sample-by-sample sum of several series with the same timestamps.
fn sum(series: &[Vec<Sample>]) -> Vec<Sample> {
    let n = series.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| Sample {
            timestamp: series[0][i].timestamp,
            value: series.iter().map(|s| s[i].value).sum(),
        })
        .collect()
}

/// The message counters' samples into `stats` (a `message_stats`), and
/// `deliver_get` as the sum of the four deliveries when they are there.
fn rates(stats: &mut J, h: &SharedHistory, first: usize, counters: &[Counter], range: (u64, u64)) {
    rates_from(stats, counters, range, &|col, now, age, incr| {
        h.samples(first + col, now, age, incr)
    });
}

/// [`rates`] over any history: `samples(col, now, age, incr)` reads the
/// series of `counters[col]`.
fn rates_from(
    stats: &mut J,
    counters: &[Counter],
    range: (u64, u64),
    samples: &dyn Fn(usize, u64, u64, u64) -> Vec<Sample>,
) {
    let now = unix_ms();
    let mut deliveries = Vec::new();
    for (i, c) in counters.iter().enumerate() {
        let s = samples(i, now, range.0, range.1);
        put(stats, c.name(), &s);
        if matches!(
            c,
            Counter::Deliver | Counter::DeliverNoAck | Counter::Get | Counter::GetNoAck
        ) {
            deliveries.push(s);
        }
    }
    if deliveries.len() == 4 {
        put(stats, "deliver_get", &sum(&deliveries));
    }
}

fn lengths(obj: &mut J, h: &SharedHistory, range: (u64, u64)) {
    let now = unix_ms();
    for (i, name) in LENGTHS.iter().enumerate() {
        put(obj, name, &h.samples(i, now, range.0, range.1));
    }
}

pub fn overview(j: &mut J, h: &SharedHistory, r: &Ranges) {
    if let Some(range) = r.lengths {
        lengths(&mut j["queue_totals"], h, range);
    }
    if let Some(range) = r.msg_rates {
        rates(
            &mut j["message_stats"],
            h,
            LENGTHS.len(),
            CHANNEL_COUNTERS,
            range,
        );
    }
}

pub fn queue(j: &mut J, q: &Queue, r: &Ranges) {
    if let Some(range) = r.lengths {
        lengths(j, &q.history, range);
    }
    if let Some(range) = r.msg_rates {
        rates(
            &mut j["message_stats"],
            &q.history,
            LENGTHS.len(),
            QUEUE_COUNTERS,
            range,
        );
    }
}

pub fn exchange(j: &mut J, e: &Exchange, r: &Ranges) {
    if let Some(range) = r.msg_rates {
        rates(
            &mut j["message_stats"],
            &e.history,
            0,
            &EXCHANGE_COUNTERS,
            range,
        );
    }
}

pub fn connection(j: &mut J, c: &ConnectionInfo, r: &Ranges) {
    if let Some((age, incr)) = r.data_rates {
        let now = unix_ms();
        for (i, name) in OCTETS.iter().enumerate() {
            put(j, name, &c.history.samples(i, now, age, incr));
        }
    }
}

/// A channel's message rates (`msg_rates_age`/`msg_rates_incr`), from the
/// history its connection keeps for channel `number`.
pub fn channel(j: &mut J, c: &ConnectionInfo, number: u16, r: &Ranges) {
    if let Some(range) = r.msg_rates {
        if !j["message_stats"].is_object() {
            j["message_stats"] = json!({});
        }
        rates_from(
            &mut j["message_stats"],
            CHANNEL_COUNTERS,
            range,
            &|col, now, age, incr| c.channel_samples(number, col, now, age, incr),
        );
    }
}
