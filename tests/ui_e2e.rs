//! The dashboard in a real browser: starts the broker in-process, makes a
//! queue, a held (unacknowledged) message and a bound topic exchange over
//! AMQP with lapin, then runs tests/e2e/dashboard.mjs (playwright-core
//! driving the system's headless Chromium) against the management port.
//! Screenshots, one per step, and the script's log go to
//! `<target dir>/e2e-artifacts/`.
//!
//! Node and Chromium are required: without them this test fails (it never
//! skips), saying what to install.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser the script drives; `CHROMIUM` overrides the Debian path.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `<target dir>/e2e-artifacts`: from CARGO_TARGET_DIR when set, else from
/// this test binary's own path (`<target>/debug/deps/ui_e2e-…`).
fn artifacts_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => {
            let exe = std::env::current_exe().expect("test binary path");
            exe.ancestors()
                .nth(3)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        }
    };
    target.join("e2e-artifacts")
}

/// Runs a command to completion with a deadline, its output appended to
/// `log`; returns whether it exited 0.
fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> bool {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the e2e log");
    let err = out.try_clone().expect("clone the log handle");
    // Output goes to a file, not a pipe, so a chatty child cannot fill a
    // pipe buffer and stall while we wait for it.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {limit:?}; log: {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    // The tools first, so a missing one fails fast with a clear message.
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is required for the dashboard's browser test (apt-get install nodejs npm): {node:?}"
    );
    assert!(
        chromium().exists(),
        "{} is missing: the dashboard's browser test needs it (apt-get install chromium)",
        chromium().display()
    );

    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("create the artifacts dir");
    let log = artifacts.join("dashboard.log");
    // Screenshots of an earlier run must not pass for this one's.
    for entry in std::fs::read_dir(&artifacts).expect("read the artifacts dir") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "png") || path == log {
            let _ = std::fs::remove_file(path);
        }
    }

    if !e2e
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        let ok = tokio::task::spawn_blocking({
            let (e2e, log) = (e2e.clone(), log.clone());
            move || {
                run_logged(
                    Command::new("npm")
                        .args(["ci", "--no-audit", "--no-fund"])
                        .current_dir(&e2e),
                    &log,
                    Duration::from_secs(300),
                )
            }
        })
        .await
        .unwrap();
        assert!(
            ok,
            "npm ci in tests/e2e failed:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    let (s, c, ch) = start_channel().await;
    let queue = uniq("e2e-orders");
    let held = uniq("e2e-held");
    let exchange = uniq("e2e-topic");
    let (binding_key, route_key) = ("orders.*", "orders.created");
    for q in [&queue, &held] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        binding_key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // A consumer on its own channel takes one message and keeps it unacked
    // for the page that shows who holds what.
    let holder = c.create_channel().await.unwrap();
    publish(&ch, "", held.as_str(), b"held by a consumer").await;
    let ctag = "e2e-holder";
    let mut consumer = holder
        .basic_consume(
            held.as_str().into(),
            ctag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = within(consumer.next()).await.expect("a delivery").unwrap();
    assert_eq!(delivery.data, b"held by a consumer");
    // Consumers are listed from the channel snapshots (refreshed each second).
    eventually(|| async {
        let (_, body) = raw(&s, "GET", "/api/consumers", Some(GUEST), "").await;
        body.contains(ctag)
    })
    .await;

    // The script asks for a memory alarm (and its end) through files.
    // The operators' view: an application that names its connection holds
    // an unacked message of a queue with TTL, a length limit and a DLX;
    // another named connection is there to be closed from its page.
    let named = |n: &str| lapin::ConnectionProperties::default().with_connection_name(n.into());
    let app = within(lapin::Connection::connect(&url(&s), named("e2e-billing")))
        .await
        .unwrap();
    let app_ch = app.create_channel().await.unwrap();
    let featured = uniq("e2e-featured");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(600_000));
    args.insert("x-max-length".into(), AMQPValue::LongInt(100));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("amq.fanout".into()),
    );
    app_ch
        .queue_declare(
            featured.as_str().into(),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
    app_ch
        .basic_qos(5, BasicQosOptions::default())
        .await
        .unwrap();
    publish(&app_ch, "", featured.as_str(), b"held by the billing app").await;
    let mut app_consumer = app_ch
        .basic_consume(
            featured.as_str().into(),
            "e2e-billing-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let app_delivery = within(app_consumer.next())
        .await
        .expect("a delivery")
        .unwrap();
    let closable = within(lapin::Connection::connect(&url(&s), named("e2e-closable")))
        .await
        .unwrap();

    let alarm_dir = temp_dir("e2e-alarm");
    std::fs::create_dir_all(&alarm_dir).unwrap();
    let toggler = tokio::spawn(toggle_alarms_on_request(
        s.broker().clone(),
        alarm_dir.to_path_buf(),
    ));

    let url = format!("http://{}", s.http_addr());
    let ok = tokio::task::spawn_blocking({
        let (e2e, log, artifacts) = (e2e.clone(), log.clone(), artifacts.clone());
        let (queue, held, exchange) = (queue.clone(), held.clone(), exchange.clone());
        let featured = featured.clone();
        move || {
            run_logged(
                Command::new("node")
                    .arg("dashboard.mjs")
                    .current_dir(&e2e)
                    .env("WARREN_URL", url)
                    .env("E2E_QUEUE", queue)
                    .env("E2E_HELD_QUEUE", held)
                    .env("E2E_CONSUMER_TAG", ctag)
                    .env("E2E_APP_NAME", "e2e-billing")
                    .env("E2E_FEATURE_QUEUE", featured)
                    .env("E2E_CLOSABLE", "e2e-closable")
                    .env("E2E_EXCHANGE", exchange)
                    .env("E2E_BINDING_KEY", binding_key)
                    .env("E2E_ROUTE_KEY", route_key)
                    .env("E2E_ARTIFACTS", &artifacts)
                    .env("E2E_ALARM_DIR", alarm_dir.to_path_buf())
                    .env("CHROMIUM", chromium()),
                &log,
                Duration::from_secs(120),
            )
        }
    })
    .await
    .unwrap();
    toggler.abort();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ok,
        "the dashboard scenario failed (screenshots in {}):\n{output}",
        artifacts.display()
    );
    // The page's own checks passed; the message the consumer holds is
    // still unacked (the UI only looked).
    let (_, body) = raw(
        &s,
        "GET",
        &format!("/api/queues/%2F/{held}"),
        Some(GUEST),
        "",
    )
    .await;
    assert!(body.contains("\"messages_unacknowledged\":1"), "{body}");
    drop(delivery);
    drop((app_delivery, closable));
    s.shutdown().await;
}

/// Raises or clears a memory alarm (a watermark of 1 byte, or none) when
/// the browser script writes `alarm-on` or `alarm-off` in `dir`, and
/// removes the file to say it is done. Runs until aborted.
async fn toggle_alarms_on_request(broker: std::sync::Arc<warren::broker::Broker>, dir: PathBuf) {
    use warren::broker::MemoryWatermark;
    loop {
        for (file, limit) in [("alarm-on", 1), ("alarm-off", u64::MAX)] {
            let path = dir.join(file);
            if path.exists() {
                broker
                    .alarms()
                    .set_memory_watermark(MemoryWatermark::Absolute(limit));
                let _ = std::fs::remove_file(&path);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One raw GET with `headers`; returns (status, headers with lower-cased
/// names, body).
async fn get_with_headers(
    s: &warren::server::Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    http_request(s.http_addr(), "GET", path, headers, "").await
}

#[tokio::test]
async fn dashboard_files_are_served_at_the_root_without_login() {
    let s = start().await;
    let (status, h, body) = get_with_headers(&s, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(&h, "cache-control"), Some("no-cache"));
    assert!(
        body.contains("<script type=\"module\" src=\"app.js\">"),
        "{body}"
    );

    // Module scripts need a JavaScript content type or the browser refuses them.
    for js in ["/app.js", "/api.js", "/queues.js", "/exchanges.js"] {
        let (status, h, body) = get_with_headers(&s, js, &[]).await;
        assert_eq!(status, 200, "{js}");
        assert_eq!(
            header(&h, "content-type"),
            Some("text/javascript; charset=utf-8"),
            "{js}"
        );
        assert!(body.contains("import") || body.contains("export"), "{js}");
    }
    let (status, h, _) = get_with_headers(&s, "/style.css", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("text/css; charset=utf-8"));

    // Revalidation: the same ETag gets a 304 with no body.
    let (_, h, _) = get_with_headers(&s, "/app.js", &[]).await;
    let tag = header(&h, "etag").expect("an ETag").to_owned();
    let (status, _, body) = get_with_headers(&s, "/app.js", &[("If-None-Match", &tag)]).await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, _, _) = get_with_headers(&s, "/app.js", &[("If-None-Match", "\"other\"")]).await;
    assert_eq!(status, 200);

    // The API behind it still needs a login; an unknown file falls to the
    // API's fallback (behind the login too), which answers 404.
    let (status, _, _) = get_with_headers(&s, "/api/overview", &[]).await;
    assert_eq!(status, 401);
    let auth = format!("Basic {GUEST}");
    let (status, _, _) = get_with_headers(&s, "/nope.js", &[("Authorization", &auth)]).await;
    assert_eq!(status, 404);
    s.shutdown().await;
}
