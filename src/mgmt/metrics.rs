//! Prometheus metrics in the text exposition format, with the names of
//! RabbitMQ's `rabbitmq_prometheus` plugin, so its Grafana dashboards read
//! Warren unchanged: `/metrics` sums over objects, `/metrics/per-object`
//! labels each queue with its vhost and name. Like RabbitMQ's, the
//! endpoint needs no login.

use crate::broker::Broker;
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
pub fn render(broker: &Broker, node: &str, per_object: bool) -> String {
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };
    let connections = broker.connections();
    let channels: Vec<_> = connections.iter().flat_map(|c| c.channels()).collect();
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
    for v in broker.vhosts() {
        for q in v.queues() {
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
    let stats = broker.message_stats();
    for (name, help, value) in [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            stats.publish,
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            stats.deliver,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            stats.ack,
        ),
    ] {
        f.head(name, "counter", help);
        f.sample(name, &[], value as f64);
    }
    out
}
