//! Broker snapshots rendered as RabbitMQ's management JSON, and the
//! conversions between field tables and JSON.
//!
//! Field names and types follow RabbitMQ 3.13's management plugin; fields
//! Warren does not track are rendered with RabbitMQ's neutral values (zero
//! rates) rather than left out, because clients require them.

use super::MgmtState;
use crate::broker::{ConnectionInfo, Counter, Dest, Exchange, MessageStats, Queue, Vhost};
use serde_json::{json, Map, Value as J};
use std::sync::Arc;
use warren_exchanges::{Table, Value};
use warren_queues::{DeadCounters, DeadReason};

/// The RabbitMQ release whose management API this one follows.
pub(super) const RABBITMQ_COMPAT_VERSION: &str = "3.13.7";

/// A field value as RabbitMQ renders arguments: numbers, strings, bools.
pub fn value_to_json(v: &Value) -> J {
    match v {
        Value::Bool(b) => J::Bool(*b),
        Value::ShortShortInt(n) => json!(n),
        Value::ShortShortUInt(n) => json!(n),
        Value::ShortInt(n) => json!(n),
        Value::ShortUInt(n) => json!(n),
        Value::LongInt(n) => json!(n),
        Value::LongUInt(n) => json!(n),
        Value::LongLongInt(n) => json!(n),
        Value::Timestamp(n) => json!(n),
        Value::Float(f) => json!(f),
        Value::Double(f) => json!(f),
        Value::Decimal { scale, value } => json!(*value as f64 / 10f64.powi(*scale as i32)),
        Value::ShortString(s) => J::String(s.clone()),
        Value::LongString(b) | Value::ByteArray(b) => {
            J::String(String::from_utf8_lossy(b).into_owned())
        }
        Value::Array(a) => J::Array(a.iter().map(value_to_json).collect()),
        Value::Table(t) => table_to_json(t),
        Value::Void => J::Null,
    }
}

pub fn table_to_json(t: &Table) -> J {
    J::Object(
        t.iter()
            .map(|(k, v)| (k.to_owned(), value_to_json(v)))
            .collect(),
    )
}

/// JSON arguments (a PUT body) as a field table, typed as RabbitMQ types
/// them: integers as long longs, strings as long strings.
pub fn json_to_value(j: &J) -> Value {
    match j {
        J::Null => Value::Void,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::LongLongInt(i),
            None => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::LongString(s.as_bytes().to_vec()),
        J::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        J::Object(m) => Value::Table(table_from_json(m)),
    }
}

pub fn table_from_json(m: &Map<String, J>) -> Table {
    let mut t = Table::default();
    for (k, v) in m {
        t.insert(k, json_to_value(v));
    }
    t
}

fn rate(r: f64) -> J {
    json!({ "rate": r })
}

/// The counters RabbitMQ 3.10 shows in a queue's `message_stats`.
pub const QUEUE_STATS: &[Counter] = crate::broker::history::QUEUE_COUNTERS;

/// An exchange's.
pub const EXCHANGE_STATS: &[Counter] = &crate::broker::history::EXCHANGE_COUNTERS;

/// A channel's, and (with disk_reads/disk_writes) the overview's.
pub const CHANNEL_STATS: &[Counter] = crate::broker::history::CHANNEL_COUNTERS;

/// `message_stats` as RabbitMQ renders it: each counter with its
/// `*_details: {"rate"}`, plus `deliver_get` when deliveries are counted.
pub fn message_stats(s: &MessageStats, counters: &[Counter]) -> J {
    let mut m = Map::new();
    for c in counters {
        m.insert(c.name().to_owned(), json!(s.count(*c)));
        m.insert(format!("{}_details", c.name()), rate(s.rate(*c)));
    }
    if counters.contains(&Counter::Deliver) {
        m.insert("deliver_get".into(), json!(s.deliver_get()));
        m.insert("deliver_get_details".into(), rate(s.deliver_get_rate()));
    }
    J::Object(m)
}

fn overview_message_stats(s: &MessageStats) -> J {
    let mut j = message_stats(s, CHANNEL_STATS);
    // Queue disk I/O is not counted: RabbitMQ's neutral values.
    for k in ["disk_reads", "disk_writes"] {
        j[k] = json!(0);
        j[format!("{k}_details")] = rate(0.0);
    }
    j
}

/// The overview's `churn_rates`: each event's count since start and its
/// rate, as RabbitMQ renders them.
fn churn_rates(c: &crate::broker::ChurnCounters) -> J {
    let mut m = serde_json::Map::new();
    for k in crate::broker::Churn::ALL {
        m.insert(k.name().into(), J::from(c.count(k)));
        m.insert(format!("{}_details", k.name()), rate(c.rate(k)));
    }
    J::Object(m)
}

/// Warren's `dead_letter_stats` (RabbitMQ's HTTP API has no such field;
/// its Prometheus `rabbitmq_global_messages_dead_lettered_*` counters hold
/// the same counts): messages that left unconsumed, by reason, republished
/// to a dead-letter exchange or dropped (none set, or a missing one), and
/// the dead letters a durable queue released only after their copies were
/// flushed.
pub fn dead_letter_stats(c: &DeadCounters) -> J {
    let by = |f: &dyn Fn(DeadReason) -> u64| {
        J::Object(
            DeadReason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), J::from(f(*r))))
                .collect(),
        )
    };
    json!({
        "dead_lettered": by(&|r| c.dead_lettered(r)),
        "dropped": by(&|r| c.dropped(r)),
        "confirmed": c.confirmed(),
    })
}

pub fn overview(s: &MgmtState) -> J {
    let (mut queues, mut exchanges, mut ready, mut unacked, mut consumers) = (0, 0, 0, 0, 0);
    for v in s.broker.vhosts() {
        exchanges += v.exchanges().len();
        for q in v.queues() {
            let (m, c) = q.counts();
            queues += 1;
            ready += m;
            unacked += q.unacked_count();
            consumers += c;
        }
    }
    let conns = s.broker.connections();
    let channels: usize = conns.iter().map(|c| c.channels().len()).sum();
    let listener = |protocol: &str, addr: std::net::SocketAddr| json!({"node": s.node, "protocol": protocol, "ip_address": addr.ip().to_string(), "port": addr.port()});
    json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        // There is no Erlang runtime; RabbitMQ clients require the fields.
        "erlang_version": "none",
        "erlang_full_version": "none (Warren is written in Rust)",
        "cluster_name": s.cluster_name,
        "node": s.node,
        "statistics_db_event_queue": 0,
        "churn_rates": churn_rates(&s.broker.churn),
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": rate(0.0),
            "messages_ready": ready,
            "messages_ready_details": rate(0.0),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": rate(0.0),
        },
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "queues": queues,
            "exchanges": exchanges,
            "consumers": consumers,
        },
        "message_stats": overview_message_stats(&s.broker.message_stats()),
        "dead_letter_stats": dead_letter_stats(s.broker.dead_counters()),
        "listeners": s.amqp_addrs.iter().map(|a| listener("amqp", *a))
            .chain(s.amqps_addrs.iter().map(|a| listener("amqp/ssl", *a)))
            .chain(s.http_addrs.iter().map(|a| listener("http", *a)))
            .chain(s.https_addrs.iter().map(|a| listener("https", *a)))
            .chain(s.prometheus_addrs.iter().map(|a| listener("http/prometheus", *a)))
            .collect::<Vec<J>>(),
    })
}

pub fn vhost(s: &MgmtState, v: &Vhost) -> J {
    let (mut ready, mut unacked) = (0, 0);
    for q in v.queues() {
        ready += q.counts().0;
        unacked += q.unacked_count();
    }
    let meta = s.broker.access().vhost_meta(&v.name);
    let dqt = meta.default_queue_type.as_deref().unwrap_or("classic");
    json!({
        "name": v.name,
        "description": meta.description,
        "tags": meta.tags,
        "default_queue_type": dqt,
        "metadata": {"description": meta.description, "tags": meta.tags, "default_queue_type": dqt},
        "tracing": false,
        "cluster_state": { s.node.clone(): "running" },
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

fn sorted_vhosts(s: &MgmtState, only: Option<&Arc<Vhost>>) -> Vec<Arc<Vhost>> {
    let mut v = match only {
        Some(v) => vec![v.clone()],
        None => s.broker.vhosts(),
    };
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn queue(s: &MgmtState, q: &Queue) -> J {
    let applied = q.applied_policies();
    let c = q.contents();
    let (ready, consumers, unacked, bytes) = (c.ready, c.consumers, c.unacked, c.bytes);
    // One reading for both names (the figure moves with time).
    let utilisation = q.consumer_utilisation();
    let mut j = json!({
        "name": q.name,
        "vhost": q.vhost,
        "type": "classic",
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.owner.is_some(),
        "arguments": table_to_json(&q.arguments),
        "node": s.node,
        "state": "running",
        "consumers": consumers,
        "exclusive_consumer_tag": null,
        "single_active_consumer_tag": q.single_active_tag(),
        "policy": applied.policy_name(),
        "operator_policy": applied.operator_name(),
        "effective_policy_definition": applied.effective_definition(),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_details": rate(0.0),
        "messages_ready_details": rate(0.0),
        "messages_unacknowledged_details": rate(0.0),
        "message_stats": message_stats(&q.stats.snapshot(), QUEUE_STATS),
        "message_bytes": bytes.ready + bytes.unacked,
        "message_bytes_ready": bytes.ready,
        "message_bytes_unacknowledged": bytes.unacked,
        "message_bytes_persistent": bytes.persistent,
        "messages_persistent": bytes.persistent_messages,
        "messages_ram": bytes.ram_ready.count + bytes.ram_unacked.count,
        "messages_ready_ram": bytes.ram_ready.count,
        "messages_unacknowledged_ram": bytes.ram_unacked.count,
        "message_bytes_ram": bytes.ram_ready.bytes + bytes.ram_unacked.bytes,
        "head_message_timestamp": c.head_timestamp,
        "consumer_utilisation": utilisation,
        "consumer_capacity": utilisation,
    });
    if let Some(t) = q.stats.idle_since() {
        j["idle_since"] = iso_time(t);
    }
    if let Some(st) = q.stream() {
        add_stream_fields(s, st, &mut j);
    }
    j
}

/// Classic-queue fields a stream queue's JSON leaves out, as RabbitMQ's.
const STREAM_OMITS: &[&str] = &[
    "messages_persistent",
    "messages_ram",
    "messages_ready_ram",
    "messages_unacknowledged_ram",
    "message_bytes_ram",
];

/// A stream queue's JSON: RabbitMQ's `type`, `members` and `online`, and
/// Warren's `stream` object (the log's offsets, segments and bytes on
/// disk, each consumer's next offset and credit).
fn add_stream_fields(s: &MgmtState, st: &crate::broker::stream::StreamQueue, out: &mut J) {
    let stats = st.stats();
    let settings = st.settings();
    let mut consumers = st.consumer_infos();
    consumers.sort_by(|a, b| a.tag.cmp(&b.tag));
    out["type"] = json!("stream");
    // RabbitMQ's stream queues report no classic-queue memory or
    // persistence counts (its stream info keys stop at `messages*`).
    if let Some(o) = out.as_object_mut() {
        for k in STREAM_OMITS {
            o.remove(*k);
        }
    }
    out["members"] = json!([s.node]);
    out["online"] = json!([s.node]);
    out["stream"] = json!({
        "first_offset": stats.first_offset,
        "last_offset": stats.committed.checked_sub(1),
        "committed_offset": stats.committed,
        "segments": stats.segments,
        "bytes_on_disk": stats.bytes,
        "max_segment_size_bytes": settings.max_segment_bytes,
        "max_length_bytes": settings.max_bytes,
        "max_age_ms": settings.max_age_ms,
        "publisher_flow_pauses": st.flow_pauses(),
        "groups": st.group_infos().iter().map(|g| json!({
            "name": g.name,
            "committed_offset": g.committed,
            "lag": stats.committed.saturating_sub(g.committed),
            "active_consumer_tag": g.active,
            "members": g.members,
        })).collect::<Vec<_>>(),
        "consumers": consumers.iter().map(|c| json!({
            "consumer_tag": c.tag,
            "channel": c.session,
            "offset": c.position,
            "credit": c.credit,
        })).collect::<Vec<_>>(),
    });
}

pub fn queues(s: &MgmtState, only: Option<&Arc<Vhost>>, r: &super::history::Ranges) -> J {
    let mut out = Vec::new();
    for v in sorted_vhosts(s, only) {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(qs.iter().map(|q| {
            let mut j = queue(s, q);
            super::history::queue(&mut j, q, r);
            j
        }));
    }
    J::Array(out)
}

pub fn exchange(vhost: &str, e: &Exchange) -> J {
    let applied = e.applied_policies();
    json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.opts.durable,
        "auto_delete": e.opts.auto_delete,
        "internal": e.opts.internal,
        "arguments": table_to_json(&e.opts.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": applied.policy_name(),
        "operator_policy": applied.operator_name(),
        "effective_policy_definition": applied.effective_definition(),
        "message_stats": message_stats(&e.stats.snapshot(), EXCHANGE_STATS),
    })
}

pub fn exchanges(s: &MgmtState, only: Option<&Arc<Vhost>>, r: &super::history::Ranges) -> J {
    let mut out = Vec::new();
    for v in sorted_vhosts(s, only) {
        let mut es = v.exchanges();
        es.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(es.iter().map(|e| {
            let mut j = exchange(&v.name, e);
            super::history::exchange(&mut j, e, r);
            j
        }));
    }
    J::Array(out)
}

/// RabbitMQ's binding key in URLs (`pack_binding_props`): the routing key
/// quoted as a URL segment (`~` escaped), `~` alone for an empty key, plus
/// `~` and a hash of the arguments when there are any.
pub fn properties_key(routing_key: &str, args: &Table) -> String {
    let quote = |s: &str| super::objects::quote_plus(s).replace('~', "%7E");
    if args.is_empty() {
        if routing_key.is_empty() {
            return "~".to_owned();
        }
        return quote(routing_key);
    }
    format!("{}~{}", quote(routing_key), quote(&args_hash(args)))
}

/// A short stable hash of binding arguments, shaped as RabbitMQ's (four
/// bytes, base64url without padding). RabbitMQ hashes the Erlang term with
/// `phash2`; clients treat the value as opaque, so Warren uses FNV-1a over
/// the arguments' text, which is stable across restarts.
pub fn args_hash(args: &Table) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{:?}", args.0).bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = u64::from(h) << 4; // 36 bits: six digits
    (0..6)
        .map(|i| A[((bits >> (30 - 6 * i)) & 63) as usize] as char)
        .collect()
}

pub fn bindings(s: &MgmtState, only: Option<&Arc<Vhost>>) -> J {
    let mut out = Vec::new();
    for v in sorted_vhosts(s, only) {
        // The default exchange's implicit binding of every queue, as RabbitMQ lists them.
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in &qs {
            out.push(json!({
                "source": "", "vhost": v.name, "destination": q.name,
                "destination_type": "queue", "routing_key": q.name,
                "arguments": {}, "properties_key": properties_key(&q.name, &Table::default()),
            }));
        }
        let mut es = v.exchanges();
        es.sort_by(|a, b| a.name.cmp(&b.name));
        for e in es.iter().filter(|e| !e.name.is_empty()) {
            // Copy out, then render: the router's read lock is held briefly.
            let bs: Vec<_> = e
                .router()
                .bindings()
                .iter()
                .map(|b| {
                    let (dest, dtype) = match &b.destination {
                        Dest::Queue(q) => (q.0.name.clone(), "queue"),
                        Dest::Exchange(x) => (x.name.clone(), "exchange"),
                    };
                    (dest, dtype, b.routing_key.clone(), b.arguments.clone())
                })
                .collect();
            for (dest, dtype, key, args) in bs {
                out.push(json!({
                    "source": e.name, "vhost": v.name, "destination": dest,
                    "destination_type": dtype, "routing_key": key,
                    "arguments": table_to_json(&args),
                    "properties_key": properties_key(&key, &args),
                }));
            }
        }
    }
    J::Array(out)
}

/// A queue's consumers, for the one-queue view (RabbitMQ's
/// `consumer_details`; lists leave it out, as RabbitMQ's do).
pub fn consumer_details(s: &MgmtState, q: &Queue) -> J {
    J::Array(consumers_of(s, Some((&q.vhost, &q.name))))
}

pub fn connection(s: &MgmtState, c: &ConnectionInfo) -> J {
    let net = c.net.snapshot();
    let tls = c.tls.as_ref();
    let user_provided_name =
        (!c.client.connection_name.is_empty()).then(|| J::String(c.client.connection_name.clone()));
    let mut j = json!({
        "name": c.name,
        "node": s.node,
        "state": c.state().name(),
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": c.auth_mechanism,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "connected_at": c.connected_at,
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "ssl": tls.is_some(),
        "ssl_protocol": tls.map(|t| t.protocol.as_str()),
        "ssl_cipher": tls.map(|t| t.cipher.as_str()),
        "ssl_key_exchange": null,
        "ssl_hash": null,
        "peer_cert_issuer": null,
        "peer_cert_subject": null,
        "peer_cert_validity": null,
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "channels": c.channels().len(),
        "recv_oct": net.recv_oct,
        "recv_oct_details": rate(net.recv_rate),
        "recv_cnt": net.recv_cnt,
        "send_oct": net.send_oct,
        "send_oct_details": rate(net.send_rate),
        "send_cnt": net.send_cnt,
        "send_pend": 0,
        "client_properties": table_to_json(&c.client.properties),
    });
    if let Some(n) = user_provided_name {
        j["user_provided_name"] = n;
    }
    j
}

/// An instant (Unix milliseconds) as RabbitMQ 3.10 shows `idle_since`.
pub fn iso_time(ms: u64) -> J {
    match chrono::DateTime::from_timestamp_millis(ms as i64) {
        Some(t) => J::String(t.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()),
        None => J::Null,
    }
}

fn channel_name(c: &ConnectionInfo, number: u16) -> String {
    format!("{} ({number})", c.name)
}

/// A channel's or consumer's connection, as RabbitMQ shows it; Warren adds
/// the client's `connection_name` so lists can show the application.
fn connection_details(c: &ConnectionInfo) -> J {
    let mut j = json!({
        "name": c.name,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
    });
    if !c.client.connection_name.is_empty() {
        j["user_provided_name"] = J::String(c.client.connection_name.clone());
    }
    j
}

/// One channel as `/api/channels` lists it.
pub fn channel(s: &MgmtState, c: &ConnectionInfo, ch: &crate::broker::ChannelSnapshot) -> J {
    let mut j = json!({
                "number": ch.number,
                "name": channel_name(c, ch.number),
                "connection_details": connection_details(c),
                "vhost": c.vhost,
                "user": c.user,
                "user_who_performed_action": c.user,
                "node": s.node,
                "state": "running",
                "consumer_count": ch.consumers.len(),
                "confirm": ch.confirm,
                "transactional": ch.transactional,
                "prefetch_count": ch.prefetch_count,
                "global_prefetch_count": ch.global_prefetch_count,
                "messages_unacknowledged": ch.unacked,
                "messages_unconfirmed": 0,
                "messages_uncommitted": 0,
                "acks_uncommitted": 0,
                "message_stats": message_stats(&ch.stats, CHANNEL_STATS),
                "pending_raft_commands": 0,
    });
    if let Some(t) = ch.idle_since {
        j["idle_since"] = iso_time(t);
    }
    j
}

pub fn channels(s: &MgmtState) -> J {
    let mut out = Vec::new();
    for c in s.broker.connections() {
        for ch in c.channels() {
            out.push(channel(s, &c, &ch));
        }
    }
    J::Array(out)
}

pub fn consumers(s: &MgmtState) -> J {
    J::Array(consumers_of(s, None))
}

/// Every consumer, or those of one queue (vhost, name).
fn consumers_of(s: &MgmtState, queue: Option<(&str, &str)>) -> Vec<J> {
    use warren_queues::Activity;
    let mut out = Vec::new();
    for c in s.broker.connections() {
        if queue.is_some_and(|(v, _)| v != c.vhost) {
            continue;
        }
        for ch in c.channels() {
            for k in &ch.consumers {
                if queue.is_some_and(|(_, q)| q != k.queue) {
                    continue;
                }
                // RabbitMQ 3.10: `up` for every consumer of a queue without
                // single active consumer, else `single_active` / `waiting`.
                let (active, status) = match k.activity {
                    Some(Activity::Waiting) => (false, "waiting"),
                    Some(Activity::SingleActive) => (true, "single_active"),
                    _ => (true, "up"),
                };
                out.push(json!({
                    "consumer_tag": k.tag,
                    "active": active,
                    "activity_status": status,
                    "ack_required": k.ack_required,
                    "prefetch_count": k.prefetch,
                    "exclusive": k.exclusive,
                    "arguments": table_to_json(&k.arguments),
                    // The timeout in effect for the queue (0: none).
                    "consumer_timeout": s.broker.vhost(&c.vhost)
                        .and_then(|v| v.queue(&k.queue))
                        .map_or(0, |q| q.consumer_timeout_ms()),
                    "queue": {"name": k.queue, "vhost": c.vhost},
                    "channel_details": {
                        "number": ch.number,
                        "name": channel_name(&c, ch.number),
                        "connection_name": c.name,
                        "user_provided_name": (!c.client.connection_name.is_empty()).then(|| c.client.connection_name.clone()),
                        "node": s.node,
                        "peer_host": c.peer.ip().to_string(),
                        "peer_port": c.peer.port(),
                        "user": c.user,
                    },
                }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_as_rabbitmq_renders_them() {
        let j = json!({"x-max-length": 10, "x-queue-mode": "lazy", "flag": true, "r": 1.5});
        let t = table_from_json(j.as_object().unwrap());
        assert_eq!(t.get("x-max-length"), Some(&Value::LongLongInt(10)));
        assert_eq!(table_to_json(&t), j);
    }
}
