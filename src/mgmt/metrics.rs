//! Prometheus metrics in the text exposition format, with the names of
//! RabbitMQ's `rabbitmq_prometheus` plugin, so its Grafana dashboards read
//! Warren unchanged: `/metrics` sums over objects, `/metrics/per-object`
//! labels each queue with its vhost and name. Like RabbitMQ's, the
//! endpoint needs no login.

use super::{process, MgmtState};
use crate::broker::Counter;
use std::fmt::Write;

/// One metric family: its help text, type and samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        let _ = writeln!(self.out, "# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the metrics; `per_object` labels queue metrics per queue.
pub fn render(s: &MgmtState, per_object: bool) -> String {
    let (broker, node) = (&*s.broker, s.node.as_str());
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };
    let connections = broker.connections();
    // (connection id, channel) so per-object channel series can be named.
    let channels_of: Vec<(u64, crate::broker::ChannelSnapshot)> = connections
        .iter()
        .flat_map(|c| c.channels().into_iter().map(move |ch| (c.id, ch)))
        .collect();
    let channels: Vec<&crate::broker::ChannelSnapshot> =
        channels_of.iter().map(|(_, ch)| ch).collect();
    let consumers: usize = channels.iter().map(|c| c.consumers.len()).sum();
    f.head(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    f.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", node),
            ("rabbitmq_cluster", &s.cluster_name),
            (
                "rabbitmq_endpoint",
                if per_object {
                    "per-object"
                } else {
                    "aggregated"
                },
            ),
        ],
        1.0,
    );
    f.head(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
    );
    f.sample("rabbitmq_connections", &[], connections.len() as f64);
    f.head("rabbitmq_channels", "gauge", "Channels currently open");
    f.sample("rabbitmq_channels", &[], channels.len() as f64);
    f.head(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
    );
    f.sample("rabbitmq_consumers", &[], consumers as f64);

    // (vhost, queue, contents)
    let mut sizes = Vec::new();
    // (vhost, queue, ready, unacked, consumers)
    let mut queues = Vec::new();
    // (vhost, queue, messages published to it)
    let mut published: Vec<(String, String, u64)> = Vec::new();
    for v in broker.vhosts() {
        for q in v.queues() {
            published.push((
                v.name.clone(),
                q.name.clone(),
                q.stats.snapshot().count(Counter::Publish),
            ));
            let c = q.contents();
            queues.push((
                v.name.clone(),
                q.name.clone(),
                c.ready,
                c.unacked,
                c.consumers,
            ));
            sizes.push(c.bytes);
        }
    }
    f.head("rabbitmq_queues", "gauge", "Queues available");
    f.sample("rabbitmq_queues", &[], queues.len() as f64);
    type Pick = fn(&(String, String, usize, usize, usize)) -> usize;
    let families: [(&str, &str, Pick); 4] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |q| q.2,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.3,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            |q| q.2 + q.3,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", |q| q.4),
    ];
    for (name, help, pick) in families {
        f.head(name, "gauge", help);
        if per_object {
            for q in &queues {
                f.sample(name, &[("vhost", &q.0), ("queue", &q.1)], pick(q) as f64);
            }
        } else {
            f.sample(name, &[], queues.iter().map(pick).sum::<usize>() as f64);
        }
    }
    queue_bytes(&mut f, &queues, &sizes, per_object);
    if per_object {
        queue_info(&mut f, s, "rabbitmq_queue_info", None);
    }
    stream_gauges(&mut f, broker, per_object);
    let stats = broker.message_stats();
    // rabbit_global_counters' names, labelled with the protocol as
    // RabbitMQ labels them (Warren speaks one).
    let publishers = channels
        .iter()
        .filter(|c| c.stats.count(Counter::Publish) > 0)
        .count();
    for (name, help, value) in [
        (
            "rabbitmq_global_publishers",
            "Current number of publishers",
            publishers,
        ),
        (
            "rabbitmq_global_consumers",
            "Current number of consumers",
            consumers,
        ),
    ] {
        f.head(name, "gauge", help);
        f.sample(name, &[PROTOCOL], value as f64);
    }
    let global: [(&str, &str, u64); 14] = [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            stats.count(Counter::Publish),
        ),
        (
            "rabbitmq_global_messages_received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            // Every confirmed message was received in confirm mode; those
            // still unconfirmed are too few to tell at this level.
            stats.count(Counter::Confirm),
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            stats.count(Counter::Confirm),
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            stats.count(Counter::DropUnroutable),
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            stats.count(Counter::ReturnUnroutable),
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            stats.deliver_get(),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            stats.count(Counter::Deliver),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            stats.count(Counter::DeliverNoAck),
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            stats.count(Counter::Get),
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            stats.count(Counter::GetNoAck),
        ),
        (
            "rabbitmq_global_messages_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            stats.count(Counter::GetEmpty),
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            stats.count(Counter::Redeliver),
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            stats.count(Counter::Ack),
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            // Exchanges count publish_out per queue reached; RabbitMQ
            // counts messages, so this is derived from the unroutable.
            stats
                .count(Counter::Publish)
                .saturating_sub(
                    stats.count(Counter::DropUnroutable) + stats.count(Counter::ReturnUnroutable),
                ),
        ),
    ];
    for (name, help, value) in global {
        f.head(name, "counter", help);
        f.sample(name, &[PROTOCOL], value as f64);
    }
    dead_letter_counters(&mut f, broker.dead_counters());

    // Channel counters: per channel, or summed over the open ones.
    let channel_families: [(&str, &str, Counter); 11] = [
        ("rabbitmq_channel_messages_published_total", "Total number of messages published into an exchange on a channel", Counter::Publish),
        ("rabbitmq_channel_messages_confirmed_total", "Total number of messages published into an exchange and confirmed on the channel", Counter::Confirm),
        ("rabbitmq_channel_messages_unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", Counter::ReturnUnroutable),
        ("rabbitmq_channel_messages_unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", Counter::DropUnroutable),
        ("rabbitmq_channel_get_ack_total", "Total number of messages fetched with basic.get in manual acknowledgement mode", Counter::Get),
        ("rabbitmq_channel_get_total", "Total number of messages fetched with basic.get in automatic acknowledgement mode", Counter::GetNoAck),
        ("rabbitmq_channel_messages_delivered_ack_total", "Total number of messages delivered to consumers in manual acknowledgement mode", Counter::Deliver),
        ("rabbitmq_channel_messages_delivered_total", "Total number of messages delivered to consumers in automatic acknowledgement mode", Counter::DeliverNoAck),
        ("rabbitmq_channel_messages_redelivered_total", "Total number of messages redelivered to consumers", Counter::Redeliver),
        ("rabbitmq_channel_messages_acked_total", "Total number of messages acknowledged by consumers", Counter::Ack),
        ("rabbitmq_channel_get_empty_total", "Total number of times basic.get operations fetched no message", Counter::GetEmpty),
    ];
    let named: Vec<(String, &crate::broker::ChannelSnapshot)> = connections
        .iter()
        .flat_map(|c| {
            let chans: Vec<_> = channels_of.iter().filter(|(id, _)| *id == c.id).collect();
            chans
                .into_iter()
                .map(move |(_, ch)| (format!("{} ({})", c.name, ch.number), ch))
        })
        .collect();
    for (name, help, counter) in channel_families {
        f.head(name, "counter", help);
        if per_object {
            for (chan, ch) in &named {
                f.sample(name, &[("channel", chan)], ch.stats.count(counter) as f64);
            }
        } else {
            let sum: u64 = named.iter().map(|(_, ch)| ch.stats.count(counter)).sum();
            f.sample(name, &[], sum as f64);
        }
    }
    let name = "rabbitmq_queue_messages_published_total";
    f.head(
        name,
        "counter",
        "Total number of messages published to queues",
    );
    if per_object {
        for q in &published {
            f.sample(name, &[("vhost", &q.0), ("queue", &q.1)], q.2 as f64);
        }
    } else {
        f.sample(name, &[], published.iter().map(|q| q.2).sum::<u64>() as f64);
    }
    process_and_churn(&mut f, s);
    out
}

/// The `/metrics/detailed` families Warren serves, as RabbitMQ 3.13 names
/// them; each is asked for with a `family` parameter.
pub const DETAILED_FAMILIES: &[&str] = &[
    "queue_coarse_metrics",
    "queue_consumer_count",
    "queue_metrics",
    "connection_coarse_metrics",
    "connection_metrics",
];

/// `/metrics/detailed?family=...`: only the families asked for, per
/// object, with RabbitMQ's `rabbitmq_detailed_` prefix; unknown families
/// are ignored (as RabbitMQ does). `vhosts`, when given, keeps only those
/// vhosts' queues (connections are not filtered, as in RabbitMQ).
pub fn render_detailed(s: &MgmtState, families: &[&str], vhosts: Option<&[String]>) -> String {
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };
    let want = |name: &str| families.contains(&name);
    detailed_queues(&mut f, s, &want, vhosts);
    // RabbitMQ emits queue_info on this endpoint only when a queue family
    // was asked for.
    if [
        "queue_coarse_metrics",
        "queue_consumer_count",
        "queue_metrics",
    ]
    .iter()
    .any(|q| want(q))
    {
        queue_info(&mut f, s, "rabbitmq_detailed_queue_info", vhosts);
    }
    detailed_connections(&mut f, s, &want);
    f.head(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    f.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", &s.node),
            ("rabbitmq_cluster", &s.cluster_name),
            ("rabbitmq_endpoint", "detailed"),
        ],
        1.0,
    );
    out
}

/// RabbitMQ 3.13's `queue_info`: one sample of 1 per queue, labelled with
/// its type and this node's membership. Warren's queues are classic or
/// streams, each led by its one node, so counting
/// `queue_type="rabbit_quorum_queue"` gives the honest zero quorum queues
/// (and Warren serves no `rabbitmq_raft_*` series: it runs no Raft).
fn queue_info(f: &mut Family, s: &MgmtState, name: &str, vhosts: Option<&[String]>) {
    f.head(
        name,
        "gauge",
        "A metric with a constant '1' value and labels that provide some queue details",
    );
    for v in s.broker.vhosts() {
        if vhosts.is_some_and(|keep| !keep.contains(&v.name)) {
            continue;
        }
        let mut queues = v.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues {
            let kind = if q.stream().is_some() {
                "rabbit_stream_queue"
            } else {
                "rabbit_classic_queue"
            };
            let labels = [
                ("vhost", v.name.as_str()),
                ("queue", q.name.as_str()),
                ("queue_type", kind),
                ("membership", "leader"),
            ];
            f.sample(name, &labels, 1.0);
        }
    }
}

/// The per-queue detailed families.
fn detailed_queues(
    f: &mut Family,
    s: &MgmtState,
    want: &dyn Fn(&str) -> bool,
    vhosts: Option<&[String]>,
) {
    let mut queues = Vec::new();
    for v in s.broker.vhosts() {
        if vhosts.is_some_and(|keep| !keep.contains(&v.name)) {
            continue;
        }
        for q in v.queues() {
            queues.push((
                v.name.clone(),
                q.name.clone(),
                q.contents(),
                q.consumer_utilisation(),
            ));
        }
    }
    queues.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));

    let queue_family = |f: &mut Family, name: &str, kind: &str, help: &str, pick: QPick| {
        let name = format!("rabbitmq_detailed_{name}");
        f.head(&name, kind, help);
        for (v, q, c, u) in &queues {
            f.sample(&name, &[("vhost", v), ("queue", q)], pick(c, *u));
        }
    };
    if want("queue_coarse_metrics") {
        queue_family(
            f,
            "queue_messages_ready",
            "gauge",
            "Messages ready to be delivered to consumers",
            |c, _| c.ready as f64,
        );
        queue_family(
            f,
            "queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            |c, _| c.unacked as f64,
        );
        queue_family(
            f,
            "queue_messages",
            "gauge",
            "Sum of ready and unacknowledged messages - total queue depth",
            |c, _| (c.ready + c.unacked) as f64,
        );
    }
    if want("queue_consumer_count") || want("queue_metrics") {
        queue_family(
            f,
            "queue_consumers",
            "gauge",
            "Consumers on a queue",
            |c, _| c.consumers as f64,
        );
    }
    if want("queue_metrics") {
        queue_family(
            f,
            "queue_consumer_capacity",
            "gauge",
            "Consumer capacity",
            |_, u| u,
        );
        queue_family(
            f,
            "queue_consumer_utilisation",
            "gauge",
            "Same as consumer capacity",
            |_, u| u,
        );
        queue_ram_families(f, &queue_family);
        queue_family(
            f,
            "queue_messages_persistent_bytes",
            "gauge",
            "Size in bytes of persistent messages",
            |c, _| c.bytes.persistent as f64,
        );
        queue_family(
            f,
            "queue_messages_bytes",
            "gauge",
            "Size in bytes of ready and unacknowledged messages",
            |c, _| (c.bytes.ready + c.bytes.unacked) as f64,
        );
        queue_family(
            f,
            "queue_messages_ready_bytes",
            "gauge",
            "Size in bytes of ready messages",
            |c, _| c.bytes.ready as f64,
        );
        queue_family(
            f,
            "queue_messages_unacked_bytes",
            "gauge",
            "Size in bytes of all unacknowledged messages",
            |c, _| c.bytes.unacked as f64,
        );
        queue_family(
            f,
            "queue_head_message_timestamp",
            "gauge",
            "Timestamp of the first message in the queue, if any",
            |c, _| c.head_timestamp.map_or(f64::NAN, |t| t as f64),
        );
    }
}

/// The per-connection detailed families.
fn detailed_connections(f: &mut Family, s: &MgmtState, want: &dyn Fn(&str) -> bool) {
    let connections = s.broker.connections();
    type CPick = fn(&crate::broker::ConnectionInfo, &crate::broker::NetStats) -> f64;
    let conn_family = |f: &mut Family, name: &str, kind: &str, help: &str, pick: CPick| {
        let name = format!("rabbitmq_detailed_{name}");
        f.head(&name, kind, help);
        for c in &connections {
            // RabbitMQ's label for a connection's name is `channel`.
            f.sample(&name, &[("channel", &c.name)], pick(c, &c.net.snapshot()));
        }
    };
    if want("connection_coarse_metrics") {
        conn_family(
            f,
            "connection_incoming_bytes_total",
            "counter",
            "Total number of bytes received on a connection",
            |_, n| n.recv_oct as f64,
        );
        conn_family(
            f,
            "connection_outgoing_bytes_total",
            "counter",
            "Total number of bytes sent on a connection",
            |_, n| n.send_oct as f64,
        );
    }
    if want("connection_metrics") {
        conn_family(
            f,
            "connection_incoming_packets_total",
            "counter",
            "Total number of packets received on a connection",
            |_, n| n.recv_cnt as f64,
        );
        conn_family(
            f,
            "connection_outgoing_packets_total",
            "counter",
            "Total number of packets sent on a connection",
            |_, n| n.send_cnt as f64,
        );
        conn_family(
            f,
            "connection_pending_packets",
            "gauge",
            "Number of packets waiting to be sent on a connection",
            |_, _| 0.0,
        );
        conn_family(
            f,
            "connection_channels",
            "gauge",
            "Channels on a connection",
            |c, _| c.channels().len() as f64,
        );
    }
}

/// The label RabbitMQ puts on its global counters for AMQP 0-9-1.
const PROTOCOL: (&str, &str) = ("protocol", "amqp091");

/// Picks one figure of a queue for a detailed family (contents, utilisation).
type QPick = fn(&crate::broker::QueueContents, f64) -> f64;

/// The detailed in-memory and persistent message counts, in RabbitMQ's
/// `queue_metrics` order (before `queue_messages_persistent_bytes`).
fn queue_ram_families(f: &mut Family, queue_family: &dyn Fn(&mut Family, &str, &str, &str, QPick)) {
    queue_family(
        f,
        "queue_messages_ram",
        "gauge",
        "Ready and unacknowledged messages stored in memory",
        |c, _| (c.bytes.ram_ready.count + c.bytes.ram_unacked.count) as f64,
    );
    queue_family(
        f,
        "queue_messages_ram_bytes",
        "gauge",
        "Size of ready and unacknowledged messages stored in memory",
        |c, _| (c.bytes.ram_ready.bytes + c.bytes.ram_unacked.bytes) as f64,
    );
    queue_family(
        f,
        "queue_messages_ready_ram",
        "gauge",
        "Ready messages stored in memory",
        |c, _| c.bytes.ram_ready.count as f64,
    );
    queue_family(
        f,
        "queue_messages_unacked_ram",
        "gauge",
        "Unacknowledged messages stored in memory",
        |c, _| c.bytes.ram_unacked.count as f64,
    );
    queue_family(
        f,
        "queue_messages_persistent",
        "gauge",
        "Persistent messages",
        |c, _| c.bytes.persistent_messages as f64,
    );
}

/// Per-queue body byte sizes (`rabbitmq_queue_messages_*bytes`) and the
/// in-memory and persistent message counts, summed in the aggregated form.
fn queue_bytes(
    f: &mut Family,
    queues: &[(String, String, usize, usize, usize)],
    sizes: &[warren_queues::ByteTotals],
    per_object: bool,
) {
    type Pick = fn(&warren_queues::ByteTotals) -> u64;
    let families: [(&str, &str, Pick); 9] = [
        (
            "rabbitmq_queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
            |b| b.ready + b.unacked,
        ),
        (
            "rabbitmq_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            |b| b.ready,
        ),
        (
            "rabbitmq_queue_messages_unacked_bytes",
            "Size in bytes of all unacknowledged messages",
            |b| b.unacked,
        ),
        (
            "rabbitmq_queue_messages_persistent_bytes",
            "Size in bytes of persistent messages",
            |b| b.persistent,
        ),
        (
            "rabbitmq_queue_messages_persistent",
            "Persistent messages",
            |b| b.persistent_messages,
        ),
        (
            "rabbitmq_queue_messages_ram",
            "Ready and unacknowledged messages stored in memory",
            |b| b.ram_ready.count + b.ram_unacked.count,
        ),
        (
            "rabbitmq_queue_messages_ram_bytes",
            "Size of ready and unacknowledged messages stored in memory",
            |b| b.ram_ready.bytes + b.ram_unacked.bytes,
        ),
        (
            "rabbitmq_queue_messages_ready_ram",
            "Ready messages stored in memory",
            |b| b.ram_ready.count,
        ),
        (
            "rabbitmq_queue_messages_unacked_ram",
            "Unacknowledged messages stored in memory",
            |b| b.ram_unacked.count,
        ),
    ];
    for (name, help, pick) in families {
        f.head(name, "gauge", help);
        if per_object {
            for (q, b) in queues.iter().zip(sizes) {
                f.sample(name, &[("vhost", &q.0), ("queue", &q.1)], pick(b) as f64);
            }
        } else {
            f.sample(name, &[], sizes.iter().map(pick).sum::<u64>() as f64);
        }
    }
}

/// rabbit_global_counters' dead-letter families with RabbitMQ's labels:
/// every queue is `rabbit_classic_queue`; a message republished to an
/// existing dead-letter exchange counts under `at_most_once`, one dropped
/// (no exchange set, or a missing one) under `disabled`, as RabbitMQ
/// counts them. Warren also has `delivery_limit` on classic queues, and
/// counts under `at_least_once` the dead letters a durable queue released
/// only after their copies were flushed (RabbitMQ: quorum queues only).
fn dead_letter_counters(f: &mut Family, c: &warren_queues::DeadCounters) {
    use warren_queues::DeadReason;
    const QT: (&str, &str) = ("queue_type", "rabbit_classic_queue");
    for (reason, help) in [
        (DeadReason::Expired, "Total number of messages dead-lettered due to message TTL exceeded"),
        (DeadReason::Rejected, "Total number of messages dead-lettered due to basic.reject or basic.nack"),
        (DeadReason::Maxlen, "Total number of messages dead-lettered due to overflow drop-head or reject-publish-dlx"),
        (DeadReason::DeliveryLimit, "Total number of messages dead-lettered due to delivery-limit exceeded"),
    ] {
        let name = format!("rabbitmq_global_messages_dead_lettered_{}_total", reason.as_str());
        f.head(&name, "counter", help);
        for (strategy, n) in [
            ("at_most_once", c.dead_lettered(reason)),
            ("disabled", c.dropped(reason)),
        ] {
            f.sample(&name, &[QT, ("dead_letter_strategy", strategy)], n as f64);
        }
    }
    let name = "rabbitmq_global_messages_dead_lettered_confirmed_total";
    f.head(
        name,
        "counter",
        "Total number of messages dead-lettered and confirmed by target queues",
    );
    f.sample(
        name,
        &[QT, ("dead_letter_strategy", "at_least_once")],
        c.confirmed() as f64,
    );
}

/// Build, churn and process figures (the same in both forms).
fn process_and_churn(f: &mut Family, s: &MgmtState) {
    f.head(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    f.sample(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", super::json::RABBITMQ_COMPAT_VERSION),
            (
                "prometheus_plugin_version",
                super::json::RABBITMQ_COMPAT_VERSION,
            ),
            ("erlang_version", "none"),
            ("product_name", "Warren"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
    use crate::broker::Churn;
    for (c, name, help) in [
        (
            Churn::ConnectionCreated,
            "rabbitmq_connections_opened_total",
            "Total number of connections opened",
        ),
        (
            Churn::ConnectionClosed,
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
        ),
        (
            Churn::ChannelCreated,
            "rabbitmq_channels_opened_total",
            "Total number of channels opened",
        ),
        (
            Churn::ChannelClosed,
            "rabbitmq_channels_closed_total",
            "Total number of channels closed",
        ),
        (
            Churn::QueueDeclared,
            "rabbitmq_queues_declared_total",
            "Total number of queues declared",
        ),
        (
            Churn::QueueCreated,
            "rabbitmq_queues_created_total",
            "Total number of queues created",
        ),
        (
            Churn::QueueDeleted,
            "rabbitmq_queues_deleted_total",
            "Total number of queues deleted",
        ),
    ] {
        f.head(name, "counter", help);
        f.sample(name, &[], s.broker.churn.count(c) as f64);
    }
    let r = s.broker.alarms().status();
    // rabbitmq_prometheus's alarm collector: untyped, 1 while in effect.
    // No file descriptor alarm is raised (Warren has none), as on a node
    // whose descriptors suffice.
    for (name, help, on) in [
        (
            "rabbitmq_alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            false,
        ),
        (
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            r.alarms.disk,
        ),
        (
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            r.alarms.memory,
        ),
    ] {
        f.head(name, "untyped", help);
        f.sample(name, &[], if on { 1.0 } else { 0.0 });
    }
    for (name, kind, help, value) in [
        (
            "rabbitmq_process_resident_memory_bytes",
            "gauge",
            "Memory used in bytes",
            r.mem_used as f64,
        ),
        (
            "rabbitmq_resident_memory_limit_bytes",
            "gauge",
            "Memory high watermark in bytes",
            r.mem_limit as f64,
        ),
        (
            "rabbitmq_disk_space_available_bytes",
            "gauge",
            "Disk space available in bytes",
            r.disk_free as f64,
        ),
        (
            "rabbitmq_disk_space_available_limit_bytes",
            "gauge",
            "Free disk space low watermark in bytes",
            r.disk_free_limit as f64,
        ),
        (
            "rabbitmq_process_open_fds",
            "gauge",
            "Open file descriptors",
            process::fd_used() as f64,
        ),
        (
            "rabbitmq_process_max_fds",
            "gauge",
            "Open file descriptors limit",
            process::fd_total() as f64,
        ),
        (
            "rabbitmq_erlang_uptime_seconds",
            "gauge",
            "Node uptime (Warren's: there is no Erlang VM)",
            s.started.elapsed().as_secs_f64(),
        ),
    ] {
        f.head(name, kind, help);
        f.sample(name, &[], value);
    }
}

/// Warren's stream gauges (RabbitMQ has none over AMQP 0-9-1): per stream
/// queue when `per_object`, summed over streams otherwise (offsets only
/// make sense per stream, so the aggregate form leaves them out).
fn stream_gauges(f: &mut Family, broker: &crate::broker::Broker, per_object: bool) {
    // (vhost, queue, stats)
    let mut streams = Vec::new();
    for v in broker.vhosts() {
        for q in v.queues() {
            if let Some(st) = q.stream() {
                streams.push((v.name.clone(), q.name.clone(), st.stats()));
            }
        }
    }
    type Pick = fn(&warren_queues::stream::StreamStats) -> u64;
    let families: [(&str, &str, Pick, bool); 4] = [
        (
            "warren_stream_segments",
            "Segment files of a stream",
            |s| s.segments as u64,
            true,
        ),
        (
            "warren_stream_bytes",
            "Bytes a stream's segments take on disk",
            |s| s.bytes,
            true,
        ),
        (
            "warren_stream_first_offset",
            "The oldest offset a stream retains",
            |s| s.first_offset,
            false,
        ),
        (
            "warren_stream_committed_offset",
            "The next offset a stream will commit (last offset + 1)",
            |s| s.committed,
            false,
        ),
    ];
    if per_object {
        // Per consumer group: its committed offset and how far behind
        // the stream's tail it is.
        let name = "warren_stream_group_lag";
        f.head(
            name,
            "gauge",
            "Messages a stream's consumer group has not acknowledged yet",
        );
        for v in broker.vhosts() {
            for q in v.queues() {
                let Some(st) = q.stream() else { continue };
                let tail = st.stats().committed;
                for g in st.group_infos() {
                    let labels = [
                        ("vhost", v.name.as_str()),
                        ("queue", q.name.as_str()),
                        ("group", g.name.as_str()),
                    ];
                    f.sample(name, &labels, tail.saturating_sub(g.committed) as f64);
                }
            }
        }
    }
    if per_object {
        super_stream_lag(f, broker);
    }
    for (name, help, pick, summable) in families {
        if !per_object && !summable {
            continue;
        }
        f.head(name, "gauge", help);
        if per_object {
            for (v, q, st) in &streams {
                f.sample(name, &[("vhost", v), ("queue", q)], pick(st) as f64);
            }
        } else {
            let total: u64 = streams.iter().map(|(_, _, st)| pick(st)).sum();
            f.sample(name, &[], total as f64);
        }
    }
}

/// Labels (vhost, super stream, partition, partition index, group), the
/// group's committed offset in the partition, its lag.
type LagRow = ([String; 5], u64, u64);

/// Per super stream, partition and consumer group: the group's committed
/// offset in the partition and its lag behind the partition's tail.
fn super_stream_lag(f: &mut Family, broker: &crate::broker::Broker) {
    let mut rows: Vec<LagRow> = Vec::new();
    for v in broker.vhosts() {
        for ss in v.super_streams() {
            for p in &ss.partitions {
                let Some(st) = p.queue.stream() else { continue };
                let tail = st.stats().committed;
                for g in st.group_infos() {
                    let labels = [
                        v.name.clone(),
                        ss.name.clone(),
                        p.queue.name.clone(),
                        p.index.to_string(),
                        g.name,
                    ];
                    rows.push((labels, g.committed, tail.saturating_sub(g.committed)));
                }
            }
        }
    }
    let families = [
        (
            "warren_super_stream_group_committed_offset",
            "A consumer group's committed offset in a super stream partition",
            false,
        ),
        (
            "warren_super_stream_group_lag",
            "Messages of a super stream partition a consumer group has not acknowledged yet",
            true,
        ),
    ];
    for (name, help, lag) in families {
        f.head(name, "gauge", help);
        for (l, committed, behind) in &rows {
            let [v, ss, part, index, group] = l;
            let labels = [
                ("vhost", v.as_str()),
                ("super_stream", ss.as_str()),
                ("partition", part.as_str()),
                ("partition_index", index.as_str()),
                ("group", group.as_str()),
            ];
            let value = if lag { behind } else { committed };
            f.sample(name, &labels, *value as f64);
        }
    }
}
