//! A real Prometheus (Debian's `prometheus` package, installed by
//! tests/setup.sh) scrapes a broker every second; its HTTP API is then
//! asked the queries RabbitMQ's Grafana dashboard "RabbitMQ-Overview"
//! graphs (rabbitmq-server's
//! deps/rabbitmq_prometheus/docker/grafana/dashboards/RabbitMQ-Overview.json:
//! the same metric names and the same join on `rabbitmq_identity_info`,
//! with its template variables filled in), plus `/metrics/detailed`.

mod common;

use common::child::free_port;
use common::*;
use lapin::options::*;
use lapin::ConnectionProperties;
use serde_json::Value as J;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Prometheus child, killed when the test ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: SocketAddr) -> Prometheus {
    let bin = "/usr/bin/prometheus";
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: run tests/setup.sh (it installs Debian's prometheus)"
    );
    let dir = temp_dir("prometheus");
    std::fs::create_dir_all(dir.path()).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: warren\n    static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: warren-detailed\n    metrics_path: /metrics/detailed\n\
         \x20   params:\n      family: [queue_coarse_metrics, queue_metrics, connection_coarse_metrics]\n\
         \x20   static_configs:\n      - targets: ['{target}']\n        labels:\n          instance: warren-detailed\n"
    );
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

/// An instant query's result vector (empty on any error).
async fn query(p: &Prometheus, q: &str) -> Vec<J> {
    query_checked(p, q).await.unwrap_or_default()
}

/// An instant query's result vector, or `None` when Prometheus refused the
/// query (a bad expression, or a join that does not match one-to-one).
async fn query_checked(p: &Prometheus, q: &str) -> Option<Vec<J>> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", q)
        .finish();
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, text) = http_request(p.addr, "POST", "/api/v1/query", &headers, &body).await;
    if status != 200 {
        return None;
    }
    let j: J = serde_json::from_str(&text).unwrap_or(J::Null);
    j["data"]["result"].as_array().cloned()
}

/// The single value of a query's first series.
async fn value(p: &Prometheus, q: &str) -> Option<f64> {
    let r = query(p, q).await;
    r.first()?["value"][1].as_str()?.parse().ok()
}

/// The Overview dashboard's join, with its variables filled in.
fn joined(expr: &str, cluster: &str) -> String {
    format!(
        "{expr} * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) \
         rabbitmq_identity_info{{rabbitmq_cluster=\"{cluster}\", namespace=\"\", rabbitmq_endpoint=\"aggregated\"}}"
    )
}

#[tokio::test]
async fn a_real_prometheus_answers_the_overview_dashboards_queries() {
    let s = start_with(|c| c.management.collect_statistics_interval = 200).await;
    let p = start_prometheus(s.prometheus_addr());
    wait_until("Prometheus to listen", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(p.addr).await.is_ok()
    })
    .await;
    let props = ConnectionProperties::default().with_connection_name("prom-app".into());
    let c = within(lapin::Connection::connect(&url(&s), props))
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "prom-work", true).await;
    for _ in 0..10 {
        publish_props(&ch, "", "prom-work", &[0u8; 100], persistent()).await;
    }
    ch.basic_qos(4, BasicQosOptions::default()).await.unwrap();
    let _consumer = consume(&ch, "prom-work", false).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "prom-empty", false).await;
    assert!(ch
        .basic_get("prom-empty".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());

    // The dashboard's template variables: clusters from identity_info.
    wait_until(
        "Prometheus to scrape Warren",
        Duration::from_secs(60),
        || async {
            !query(&p, "rabbitmq_identity_info").await.is_empty()
                && value(&p, "sum(rabbitmq_queue_messages_unacked)").await == Some(4.0)
        },
    )
    .await;
    let ids = query(&p, "rabbitmq_identity_info").await;
    let cluster = ids
        .iter()
        .find(|i| i["metric"]["rabbitmq_endpoint"] == "aggregated")
        .and_then(|i| i["metric"]["rabbitmq_cluster"].as_str())
        .expect("an aggregated identity")
        .to_owned();
    assert!(ids[0]["metric"]["rabbitmq_node"].is_string(), "{ids:?}");

    // Gauges: each must join and hold the value the broker has.
    for (expr, want) in [
        ("rabbitmq_queue_messages_ready", 6.0),
        ("rabbitmq_queue_messages_unacked", 4.0),
        ("rabbitmq_connections", 1.0),
        ("rabbitmq_channels", 2.0),
        ("rabbitmq_queues", 2.0),
        ("rabbitmq_global_consumers", 1.0),
        ("rabbitmq_global_publishers", 1.0),
        ("rabbitmq_queue_messages_bytes", 1000.0),
        ("rabbitmq_queue_messages_persistent_bytes", 1000.0),
    ] {
        let q = format!("sum({})", joined(expr, &cluster));
        assert_eq!(value(&p, &q).await, Some(want), "{q}");
    }
    // The dashboard's counters, read as it reads them (rates over a
    // window): every series must exist and join.
    for counter in [
        "rabbitmq_global_messages_received_total",
        "rabbitmq_global_messages_delivered_total",
        "rabbitmq_global_messages_routed_total",
        "rabbitmq_global_messages_confirmed_total",
        "rabbitmq_global_messages_received_confirm_total",
        "rabbitmq_global_messages_unroutable_dropped_total",
        "rabbitmq_global_messages_unroutable_returned_total",
        "rabbitmq_global_messages_redelivered_total",
        "rabbitmq_global_messages_delivered_consume_manual_ack_total",
        "rabbitmq_global_messages_delivered_consume_auto_ack_total",
        "rabbitmq_global_messages_acknowledged_total",
        "rabbitmq_global_messages_delivered_get_auto_ack_total",
        "rabbitmq_global_messages_delivered_get_manual_ack_total",
        "rabbitmq_global_messages_get_empty_total",
        "rabbitmq_queues_declared_total",
        "rabbitmq_queues_created_total",
        "rabbitmq_queues_deleted_total",
        "rabbitmq_channels_opened_total",
        "rabbitmq_channels_closed_total",
        "rabbitmq_connections_opened_total",
        "rabbitmq_connections_closed_total",
    ] {
        let q = format!("sum(rate({counter}[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{{rabbitmq_cluster=\"{cluster}\", rabbitmq_endpoint=\"aggregated\"}})");
        // A rate needs two scrapes of the series.
        wait_until(&q, Duration::from_secs(10), || async {
            value(&p, &q).await.is_some()
        })
        .await;
    }
    let q = format!(
        "sum({})",
        joined("rabbitmq_global_messages_received_total", &cluster)
    );
    assert_eq!(value(&p, &q).await, Some(10.0), "{q}");
    let q = format!(
        "sum({})",
        joined("rabbitmq_global_messages_get_empty_total", &cluster)
    );
    assert_eq!(value(&p, &q).await, Some(1.0), "{q}");
    let with_protocol = query(
        &p,
        "rabbitmq_global_messages_received_total{protocol=\"amqp091\"}",
    )
    .await;
    assert_eq!(with_protocol.len(), 1, "{with_protocol:?}");
    // The node panels: uptime with build info, memory, disk and descriptors.
    for expr in [
        "rabbitmq_erlang_uptime_seconds * on(instance, job) group_left(rabbitmq_version, erlang_version) rabbitmq_build_info",
        "rabbitmq_resident_memory_limit_bytes - rabbitmq_process_resident_memory_bytes",
        "rabbitmq_disk_space_available_bytes - rabbitmq_disk_space_available_limit_bytes",
        "rabbitmq_process_max_fds - rabbitmq_process_open_fds",
    ] {
        let q = joined(&format!("({expr})"), &cluster);
        assert!(value(&p, &q).await.is_some_and(|v| v > 0.0), "{q}");
    }

    // /metrics/detailed, scraped with family parameters.
    let q = "rabbitmq_detailed_queue_messages_unacked{vhost=\"/\", queue=\"prom-work\"}";
    assert_eq!(value(&p, q).await, Some(4.0), "{q}");
    let q = "rabbitmq_detailed_queue_messages_persistent_bytes{queue=\"prom-work\"}";
    assert_eq!(value(&p, q).await, Some(1000.0), "{q}");
    wait_until(
        "connection bytes in the detailed series",
        Duration::from_secs(10),
        || async {
            value(&p, "sum(rabbitmq_detailed_connection_incoming_bytes_total)")
                .await
                .is_some_and(|v| v > 1000.0)
        },
    )
    .await;
    assert!(
        query(&p, "rabbitmq_identity_info{rabbitmq_endpoint=\"detailed\"}")
            .await
            .len()
            == 1
    );
    quorum_queues_raft_dashboard(&p, &cluster).await;
    c.close(200, "bye".into()).await.unwrap();
}

/// RabbitMQ's "RabbitMQ-Quorum-Queues-Raft" dashboard (same repository
/// and folder): its five panel queries, joined `on(instance)` with
/// `rabbitmq_identity_info{rabbitmq_cluster=..., namespace=""}`, must be
/// accepted and answer no series: Warren runs no Raft members, as a
/// RabbitMQ node with no quorum queue members reports none. What Warren
/// has is served by `queue_info`: zero quorum queues, two classic ones.
async fn quorum_queues_raft_dashboard(p: &Prometheus, cluster: &str) {
    let id = format!(
        "on(instance) group_left(rabbitmq_cluster, rabbitmq_node) \
         rabbitmq_identity_info{{rabbitmq_cluster=\"{cluster}\", namespace=\"\"}}"
    );
    let panels = [
        format!("sum(rate(rabbitmq_raft_log_commit_index[60s]) * {id}) by(rabbitmq_node)"),
        format!("rabbitmq_raft_entry_commit_latency_seconds * {id}"),
        format!(
            "sum((rabbitmq_raft_log_last_written_index * {id}) - \
             (rabbitmq_raft_log_commit_index * {id})) by(rabbitmq_node)"
        ),
        format!("sum(rate(rabbitmq_raft_term_total[60s]) * {id}) by(rabbitmq_node)"),
        format!(
            "sum((rabbitmq_raft_log_last_written_index * {id}) - \
             (rabbitmq_raft_log_snapshot_index * {id})) by(queue, rabbitmq_node) > 5000"
        ),
    ];
    for q in &panels {
        let r = query_checked(p, q).await;
        assert_eq!(r, Some(Vec::new()), "{q}");
    }
    // The dashboard's cluster variable: identity_info joins one-to-one on
    // `instance` (the detailed job carries its own instance label).
    let q = format!("rabbitmq_queues * {id}");
    assert_eq!(value(p, &q).await, Some(2.0), "{q}");
    let q = "count(rabbitmq_detailed_queue_info{queue_type=\"rabbit_quorum_queue\"}) or vector(0)";
    assert_eq!(value(p, q).await, Some(0.0), "{q}");
    let q = "count(rabbitmq_detailed_queue_info{queue_type=\"rabbit_classic_queue\", membership=\"leader\"})";
    assert_eq!(value(p, q).await, Some(2.0), "{q}");
}
