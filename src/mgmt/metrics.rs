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
        &[("rabbitmq_node", node), ("rabbitmq_cluster", node)],
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
            let (ready, cons) = q.counts();
            queues.push((
                v.name.clone(),
                q.name.clone(),
                ready,
                q.unacked_count(),
                cons,
            ));
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
    stream_gauges(&mut f, broker, per_object);
    let stats = broker.message_stats();
    // rabbit_global_counters' names (RabbitMQ labels them with the
    // protocol; Warren speaks one, so they are left unlabelled).
    let global: [(&str, &str, u64); 13] = [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            stats.count(Counter::Publish),
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
        f.sample(name, &[], value as f64);
    }

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
