//! Shared test helpers: a broker started in-process on port 0 (shut down
//! when dropped, its data directory removed), temp directories that remove
//! themselves, lapin connections, the declare/bind/publish/consume calls
//! most tests make, raw HTTP requests, waits on a condition with a
//! deadline (instead of fixed sleeps); in submodules, a raw AMQP client
//! (`raw_amqp`) and the binary as a child process (`child`).

#![allow(dead_code)]

pub mod certs;
pub mod child;
pub mod raw_amqp;
pub mod stream;

use futures_lite::stream::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren::config::Config;
use warren::server::Server;

/// A broker for one test, on its own temp data directory. Derefs to the
/// [`Server`]. Dropped, it stops the server (see `Server`'s `Drop`) and
/// then removes the directory: the fields drop in this order.
pub struct TestBroker {
    server: Server,
    dir: TempDir,
}

impl std::ops::Deref for TestBroker {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl TestBroker {
    /// The clean shutdown (connections get 320), then the directory goes.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

/// The configuration every in-process broker starts from: loopback, port
/// 0 for all three listeners, data in `data_dir`.
pub fn test_config(data_dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.listeners.amqp = "127.0.0.1:0".parse().unwrap();
    // Every in-process broker serves the management API on its own port.
    cfg.listeners.http = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.prometheus = "127.0.0.1:0".parse().unwrap();
    cfg.storage.data_dir = data_dir.to_owned();
    cfg
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = temp_dir("data");
    let mut cfg = test_config(&dir);
    f(&mut cfg);
    let server = warren::server::start(&cfg).await.expect("broker starts");
    TestBroker { server, dir }
}

/// A broker on `dir`, which the test owns (to restart on it): the server
/// still stops when dropped, the directory stays until `dir` goes.
pub async fn start_on(dir: &Path) -> Server {
    warren::server::start(&test_config(dir))
        .await
        .expect("broker starts")
}

/// A directory path under the system temp dir, removed (with what is in
/// it) when dropped; kept, and named on stderr, when the test is failing
/// (a panic is unwinding), so it can be looked at. Not created: the broker
/// creates its data directory.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if self.0.exists() {
                eprintln!("test failed: kept {}", self.0.display());
            }
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
        // Some tests make `<dir>.json` beside it.
        let _ = std::fs::remove_file(self.0.with_extension("json"));
    }
}

/// A fresh path under the system temp dir, removed when the guard drops.
pub fn temp_dir(what: &str) -> TempDir {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "warren-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    TempDir(d)
}

pub fn url(s: &Server) -> String {
    format!("amqp://guest:guest@{}/%2f", s.amqp_addr())
}

/// The management API's base URL.
pub fn api_url(s: &Server) -> String {
    format!("http://{}/api", s.http_addr())
}

/// A `rabbitmq_http_client` async client for the broker, as guest.
pub fn api(s: &Server) -> rabbitmq_http_client::api::Client<String, &'static str, &'static str> {
    rabbitmq_http_client::api::Client::new(api_url(s), "guest", "guest")
}

pub async fn connect(s: &Server) -> Connection {
    Connection::connect(&url(s), ConnectionProperties::default())
        .await
        .expect("connect")
}

/// The usual start of a test: a broker, a connection to it as guest and a
/// channel. Keep the connection: dropping it closes the channel.
pub async fn start_channel() -> (TestBroker, Connection, Channel) {
    let s = start().await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    (s, c, ch)
}

/// A connection as guest to `vhost` (`/` may be written as is).
pub async fn connect_to(s: &Server, vhost: &str) -> Connection {
    connect_as(s, "guest", "guest", vhost)
        .await
        .expect("connect")
}

/// A connection as `user` to `vhost` (`/` may be written as is), or the
/// refusal.
pub async fn connect_as(
    s: &Server,
    user: &str,
    pass: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let vhost = vhost.replace('/', "%2f");
    let url = format!("amqp://{user}:{pass}@{}/{vhost}", s.amqp_addr());
    within(Connection::connect(&url, ConnectionProperties::default())).await
}

/// Waits for a future with a deadline, so a broken broker fails the test
/// instead of hanging it.
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// A passive queue.declare: the queue's counts, or the 404 if it is gone.
pub async fn passive(ch: &lapin::Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
}

pub fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// One raw HTTP/1.1 request; returns (status, body).
pub async fn raw(
    s: &warren::server::Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    raw_at(s.http_addr(), method, path, auth, body).await
}

/// One raw HTTP/1.1 request to `addr` with the given headers (Host,
/// Content-Length and Connection are added); returns (status, headers
/// with lower-cased names, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut sock, req.as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(&mut sock, &mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head[9..12].parse().unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// A GET as guest: (status, the body as JSON, or null if it is not).
pub async fn get_json(s: &Server, path: &str) -> (u16, serde_json::Value) {
    let (st, body) = raw(s, "GET", path, Some(GUEST), "").await;
    (
        st,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A GET as guest that must answer 200 with JSON.
pub async fn get_ok(s: &Server, path: &str) -> serde_json::Value {
    let (status, body) = raw(s, "GET", path, Some(GUEST), "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A header's value from `http_request`'s list (names lower-cased).
pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// One raw JSON request to `addr`, with Basic `auth` if given; returns
/// (status, body).
pub async fn raw_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let basic = auth.map(|a| format!("Basic {a}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &basic {
        headers.push(("Authorization", b));
    }
    let (status, _, body) = http_request(addr, method, path, &headers, body).await;
    (status, body)
}

/// base64("guest:guest")
pub const GUEST: &str = "Z3Vlc3Q6Z3Vlc3Q=";

/// Polls until `f` holds, for up to 10 s (snapshots of channels refresh
/// once a second).
pub async fn eventually<F, Fut>(f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until("the condition", Duration::from_secs(10), f).await
}

/// Polls `f` (every 10 ms, then backing off to 100 ms) until it holds;
/// fails the test naming `what` if it does not within `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits until lapin sees the connection closed (by the broker).
pub async fn until_closed(c: &Connection) {
    wait_until(
        "the connection to close",
        Duration::from_secs(10),
        || async { !c.status().connected() },
    )
    .await
}

// ---------------------------------------------------------------------------
// AMQP calls most tests make, unwrapped (a failure fails the test).

pub fn t() -> FieldTable {
    FieldTable::default()
}

pub fn durable_q() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub fn exclusive_q() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub async fn queue(ch: &Channel, name: &str, durable: bool) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap();
}

pub async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args)
        .await
        .unwrap();
}

pub async fn durable_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(name.into(), kind, opts, t())
        .await
        .unwrap();
}

pub async fn bind(ch: &Channel, q: &str, ex: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        q.into(),
        ex.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .unwrap();
}

/// A publish with default properties (no confirm awaited).
pub async fn publish(ch: &Channel, ex: &str, key: &str, body: &[u8]) {
    publish_props(ch, ex, key, body, BasicProperties::default()).await
}

pub async fn publish_props(ch: &Channel, ex: &str, key: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        ex.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap();
}

/// A publish on a confirm-mode channel that must be acked.
pub async fn publish_confirmed(
    ch: &Channel,
    ex: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = ch
        .basic_publish(
            ex.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap();
    assert!(matches!(
        within(confirm).await.unwrap(),
        Confirmation::Ack(_)
    ));
}

pub async fn consume(ch: &Channel, q: &str, no_ack: bool) -> Consumer {
    ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        t(),
    )
    .await
    .unwrap()
}

/// The consumer's next delivery, within the deadline.
pub async fn next(c: &mut Consumer) -> Delivery {
    within(c.next())
        .await
        .expect("stream open")
        .expect("delivery")
}

/// Everything in a queue right now, as bodies (no-ack gets).
pub async fn drain(ch: &Channel, q: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m.delivery.data.clone());
    }
    out
}

/// Gets after a round trip, so publishes sent before are routed.
pub async fn settled_drain(ch: &Channel, q: &str) -> Vec<Vec<u8>> {
    passive(ch, q).await.unwrap();
    drain(ch, q).await
}

/// Runs an operation whose error the broker reports asynchronously (a
/// publish, an ack) and returns the code and text of the channel.close it
/// causes. lapin hands a channel's close error to the channel's consumers,
/// so a watcher consumer on a private queue receives it.
pub async fn async_error<F, T>(ch: &Channel, op: F) -> (u16, String)
where
    F: std::future::Future<Output = lapin::Result<T>>,
{
    let q = ch
        .queue_declare("".into(), exclusive_q(), t())
        .await
        .unwrap();
    let mut watcher = consume(ch, q.name().as_str(), true).await;
    op.await.map(|_| ()).expect("the operation itself is sent");
    match within(watcher.next()).await {
        Some(Err(e)) => soft_code(&e),
        other => panic!("expected the channel's close error, got {other:?}"),
    }
}

/// A passive exchange.declare: Ok if it exists, else the 404.
pub async fn passive_exchange(ch: &Channel, name: &str) -> lapin::Result<()> {
    let opts = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare(name.into(), ExchangeKind::Direct, opts, t())
        .await
}

/// The reply code and text of the error a channel was closed with.
pub fn soft_code(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => (err.get_id(), err.get_message().to_string()),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// A field table from `(key, value)` pairs (queue and consume arguments).
pub fn args(pairs: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(lapin::types::ShortString::from(*k), v.clone());
    }
    t
}

/// An AMQP long string value.
pub fn longstr(s: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(s.into())
}

/// Declares a non-durable queue `q` with arguments `a`.
pub async fn declare(ch: &Channel, q: &str, a: FieldTable) {
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), a)
        .await
        .expect("declare");
}

/// Declares a durable queue `q` with arguments `a`.
pub async fn declare_durable(ch: &Channel, q: &str, a: FieldTable) {
    ch.queue_declare(q.into(), durable_q(), a)
        .await
        .expect("declare");
}
