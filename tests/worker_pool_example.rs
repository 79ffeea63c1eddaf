//! Runs `examples/worker_pool.rs` (in-process, small numbers) against a test
//! broker: ten prefetch-1 workers, one killed while it holds an unacked
//! task (its connection cut without a close); every task must be acked
//! exactly once, the killed worker's task redelivered, the queue left empty.

mod common;

#[path = "../examples/worker_pool.rs"]
#[allow(dead_code)]
mod worker_pool;

fn args(uri: &str, extra: &[&str]) -> Vec<String> {
    [
        "--uri",
        uri,
        "--workers",
        "10",
        "--tasks",
        "400",
        "--timeout",
        "60",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_is_acked_once_when_a_worker_dies_mid_task() {
    let s = common::start().await;
    let uri = common::url(&s);
    let (out, code) = worker_pool::run_cli(args(&uri, &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("killed worker 0 holding task"), "{out}");
    assert!(
        out.contains("completed 400 tasks with 10 workers (prefetch 1): missing 0, duplicated 0"),
        "{out}"
    );
    assert!(out.contains("left in queue 0"), "{out}");
    let redelivered: u64 = out
        .split("redelivered ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("a redelivered count");
    assert!(
        redelivered >= 1,
        "the killed worker's task came back: {out}"
    );
    // Persistent tasks in a durable queue, the JSON report.
    let (out, code) = worker_pool::run_cli(args(&uri, &["--persistent", "--json"])).await;
    assert_eq!(code, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (j["missing"].as_u64(), j["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(j["ok"], true);
    // A usage error is exit status 2.
    let (_, code) = worker_pool::run_cli(["--workers".to_owned(), "x".to_owned()]).await;
    assert_eq!(code, 2);
    s.shutdown().await;
}
