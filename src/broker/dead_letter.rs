//! Dead-lettering: what a message dropped by a queue looks like when it
//! is republished to the queue's dead-letter exchange (RabbitMQ 3.13's
//! `x-death` bookkeeping), and which target queues would close a cycle.
//!
//! The property section is decoded, edited (headers, `expiration`) and
//! encoded again; the rest of the message (body, other properties) is
//! kept as published.

use super::properties::BasicProperties;
use warren_exchanges::{Table, Value};
use warren_queues::{DeadReason, Message};

/// A dead-lettered message's new parts.
pub(crate) struct DeadLettered {
    pub properties: Vec<u8>,
    /// The routing key to publish with, then the CC and BCC keys.
    pub routing_key: String,
    pub extra_keys: Vec<String>,
    /// The BCC keys the dead letter keeps (for a further dead-lettering):
    /// its original ones without a dead-letter routing key, none with one.
    pub bcc: Vec<String>,
    /// The new headers, for routing (headers exchanges) and cycle checks.
    pub headers: Table,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub timestamp: Option<u64>,
}

fn longstr(s: &str) -> Value {
    Value::LongString(s.as_bytes().to_vec())
}

fn str_keys(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The message as it leaves queue `queue` for `reason` at `now_ms`:
/// RabbitMQ's `x-death` entry for (queue, reason) counted up and moved to
/// the front, or a new one there; `x-first-death-*` kept, `x-last-death-*`
/// set; `expiration` removed (kept in the entry as `original-expiration`).
/// With a dead-letter routing key the message goes with that key alone;
/// without, with its original keys: routing key, CC and BCC keys
/// (`rabbit_dead_letter` routes by the message's `routing_keys`, which
/// hold all three), and it keeps its BCC keys for a further
/// dead-lettering. Its CC header stays either way (RabbitMQ 3.13 no
/// longer removes it; 3.10 did with a dead-letter routing key); the BCC
/// header was removed at publish (the keys are kept beside the message)
/// and `routing-keys` in `x-death` lists the routing key and CC keys,
/// never BCC (3.10 and 3.13). `None` if its properties do not decode
/// (they were validated at publish).
pub(crate) fn dead_lettered(
    m: &Message,
    queue: &str,
    reason: DeadReason,
    now_ms: u64,
    dl_key: Option<&str>,
) -> Option<DeadLettered> {
    let mut p = BasicProperties::decode(m.properties())?;
    let mut headers = p.headers.take().unwrap_or_default();
    let cc = str_keys(headers.get("CC"));
    let mut original_keys = vec![m.routing_key().to_owned()];
    original_keys.extend(cc.iter().cloned());
    let (routing_key, extra_keys, bcc) = match dl_key {
        Some(k) => (k.to_owned(), Vec::new(), Vec::new()),
        None => {
            let bcc: Vec<String> = m.bcc_keys().map(str::to_owned).collect();
            let mut extra = cc;
            extra.extend(bcc.iter().cloned());
            (m.routing_key().to_owned(), extra, bcc)
        }
    };
    let mut deaths = match headers.get("x-death") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = |d: &Value| match d {
        Value::Table(t) => {
            t.get("queue").and_then(Value::as_str) == Some(queue)
                && t.get("reason").and_then(Value::as_str) == Some(reason.as_str())
        }
        _ => false,
    };
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let Value::Table(mut t) = deaths.remove(i) else {
                unreachable!("matched a table")
            };
            let count = t.get("count").and_then(Value::as_i64).unwrap_or(0);
            t.insert("count", Value::LongLongInt(count + 1));
            t
        }
        None => {
            let mut t = Table(vec![
                ("count".into(), Value::LongLongInt(1)),
                ("exchange".into(), longstr(m.exchange())),
            ]);
            if let Some(e) = &p.expiration {
                t.0.push(("original-expiration".into(), longstr(e)));
            }
            t.0.extend([
                ("queue".into(), longstr(queue)),
                ("reason".into(), longstr(reason.as_str())),
                (
                    "routing-keys".into(),
                    Value::Array(original_keys.iter().map(|k| longstr(k)).collect()),
                ),
                ("time".into(), Value::Timestamp(now_ms / 1000)),
            ]);
            t
        }
    };
    deaths.insert(0, Value::Table(entry));
    headers.insert("x-death", Value::Array(deaths));
    for (what, v) in [
        ("queue", queue),
        ("reason", reason.as_str()),
        ("exchange", m.exchange()),
    ] {
        let first = format!("x-first-death-{what}");
        if headers.get(&first).is_none() {
            headers.insert(&first, longstr(v));
        }
        headers.insert(&format!("x-last-death-{what}"), longstr(v));
    }
    p.expiration = None;
    p.headers = Some(headers.clone());
    Some(DeadLettered {
        properties: p.encode().ok()?,
        routing_key,
        extra_keys,
        bcc,
        headers,
        message_id: p.message_id,
        correlation_id: p.correlation_id,
        timestamp: p.timestamp,
    })
}

/// Whether dead-lettering into `target` closes a cycle that no rejection
/// broke (`rabbit_dead_letter:is_cycle`): the message already died in
/// `target`, and every death since (that one included) was automatic.
/// `deaths` is the message's `x-death`, newest first, this death included.
pub(crate) fn is_cycle(headers: &Table, target: &str, reason: DeadReason) -> bool {
    if reason == DeadReason::Rejected {
        return false;
    }
    let Some(Value::Array(deaths)) = headers.get("x-death") else {
        return false;
    };
    let field = |d: &Value, k: &str| match d {
        Value::Table(t) => t.get(k).and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let Some(at) = deaths
        .iter()
        .position(|d| field(d, "queue").as_deref() == Some(target))
    else {
        return false;
    };
    deaths[..=at]
        .iter()
        .all(|d| field(d, "reason").as_deref() != Some("rejected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: Option<Table>, expiration: Option<&str>) -> Message {
        let p = BasicProperties {
            headers,
            expiration: expiration.map(str::to_owned),
            delivery_mode: Some(2),
            ..Default::default()
        };
        Message::new("ex", "rk", &p.encode().unwrap(), b"body", true).unwrap()
    }

    fn deaths(h: &Table) -> Vec<Table> {
        match h.get("x-death") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|d| match d {
                    Value::Table(t) => t.clone(),
                    _ => panic!(),
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn bcc_keys_route_the_dead_letter_without_a_dl_key_and_stay_out_of_x_death() {
        let p = BasicProperties {
            headers: Some(Table(vec![(
                "CC".into(),
                Value::Array(vec![longstr("c1")]),
            )])),
            ..Default::default()
        };
        let m =
            Message::with_bcc("ex", "rk", &p.encode().unwrap(), b"b", true, &["b1", "b2"]).unwrap();
        let d = dead_lettered(&m, "q", DeadReason::Rejected, 1_000, None).unwrap();
        assert_eq!(d.routing_key, "rk");
        assert_eq!(d.extra_keys, ["c1", "b1", "b2"]);
        assert_eq!(d.bcc, ["b1", "b2"]);
        assert!(d.headers.get("BCC").is_none());
        assert_eq!(
            deaths(&d.headers)[0].get("routing-keys"),
            Some(&Value::Array(vec![longstr("rk"), longstr("c1")]))
        );
        // A dead-letter routing key replaces every original key.
        let d = dead_lettered(&m, "q", DeadReason::Rejected, 1_000, Some("k")).unwrap();
        assert_eq!((d.routing_key.as_str(), d.extra_keys.len()), ("k", 0));
        assert!(d.bcc.is_empty());
    }

    #[test]
    fn deaths_count_per_queue_and_reason_newest_first() {
        let m = msg(
            Some(Table(vec![(
                "CC".into(),
                Value::Array(vec![longstr("cc1")]),
            )])),
            Some("500"),
        );
        let d1 = dead_lettered(&m, "q1", DeadReason::Expired, 7_000, None).unwrap();
        assert_eq!(
            (d1.routing_key.as_str(), d1.extra_keys.clone()),
            ("rk", vec!["cc1".to_owned()])
        );
        let p = BasicProperties::decode(&d1.properties).unwrap();
        assert_eq!(p.expiration, None);
        assert_eq!(p.delivery_mode, Some(2));
        let x = deaths(&d1.headers);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].get("count"), Some(&Value::LongLongInt(1)));
        assert_eq!(x[0].get("original-expiration"), Some(&longstr("500")));
        assert_eq!(x[0].get("time"), Some(&Value::Timestamp(7)));
        assert_eq!(
            x[0].get("routing-keys"),
            Some(&Value::Array(vec![longstr("rk"), longstr("cc1")]))
        );
        // Back through q2 (rejected), then q1 again (expired).
        let m2 = Message::new("dlx", "rk", &d1.properties, b"body", true).unwrap();
        let d2 = dead_lettered(&m2, "q2", DeadReason::Rejected, 8_000, Some("k2")).unwrap();
        assert_eq!((d2.routing_key.as_str(), d2.extra_keys.len()), ("k2", 0));
        assert!(d2.headers.get("CC").is_some(), "3.13 keeps CC");
        let m3 = Message::new("dlx", "k2", &d2.properties, b"body", true).unwrap();
        let d3 = dead_lettered(&m3, "q1", DeadReason::Expired, 9_000, None).unwrap();
        let x = deaths(&d3.headers);
        let view: Vec<(Option<&str>, Option<i64>)> = x
            .iter()
            .map(|d| {
                (
                    d.get("queue").and_then(Value::as_str),
                    d.get("count").and_then(Value::as_i64),
                )
            })
            .collect();
        assert_eq!(view, vec![(Some("q1"), Some(2)), (Some("q2"), Some(1))]);
        assert_eq!(d3.headers.get("x-first-death-queue"), Some(&longstr("q1")));
        assert_eq!(
            d3.headers.get("x-first-death-reason"),
            Some(&longstr("expired"))
        );
        assert_eq!(
            d3.headers.get("x-last-death-reason"),
            Some(&longstr("expired"))
        );
        assert_eq!(
            d2.headers.get("x-last-death-reason"),
            Some(&longstr("rejected"))
        );
        assert_eq!(
            d2.headers.get("x-last-death-exchange"),
            Some(&longstr("dlx"))
        );
        // q1 -> q2 (rejected) -> q1: the rejection breaks the cycle.
        assert!(!is_cycle(&d3.headers, "q2", DeadReason::Expired));
        assert!(is_cycle(&d3.headers, "q1", DeadReason::Expired));
        assert!(!is_cycle(&d3.headers, "q1", DeadReason::Rejected));
        assert!(!is_cycle(&d3.headers, "q3", DeadReason::Expired));
    }
}
