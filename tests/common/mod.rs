//! Shared test helpers: a broker started in-process on port 0, and lapin
//! connections to it.

#![allow(dead_code)]

use lapin::{Connection, ConnectionProperties};
use std::time::Duration;
use warren::config::Config;
use warren::server::Server;

pub async fn start() -> Server {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = Config::default();
    cfg.listeners.amqp = "127.0.0.1:0".parse().unwrap();
    // Every in-process broker serves the management API on its own port.
    cfg.listeners.http = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.prometheus = "127.0.0.1:0".parse().unwrap();
    cfg.storage.data_dir = temp_dir("data");
    f(&mut cfg);
    warren::server::start(&cfg).await.expect("broker starts")
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "warren-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
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

/// Polls until `f` holds (snapshots of channels refresh once a second).
pub async fn eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}
