//! Starting and stopping, as an operator meets them: listeners on IPv4
//! and IPv6, a port in use (named, and nothing written), and SIGINT or
//! SIGTERM at the very start of the real binary's life.

mod common;
use common::*;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// This machine must have an IPv6 loopback for these tests to mean
/// anything: fail loudly, never pass without having tried.
fn require_ipv6_loopback() {
    if let Err(e) = TcpListener::bind("[::1]:0") {
        panic!("this machine has no IPv6 loopback (binding [::1]:0: {e}); the IPv6 listener tests cannot run");
    }
}

/// A full AMQP session (open, declare, publish, get) through `addr`, and
/// the broker's own view of the connection's peer. lapin's URI parser
/// takes only host names (an IP address in the URI falls back to
/// `localhost`), so the address is set on the parsed URI instead.
async fn amqp_round_trip(s: &warren::server::Server, addr: SocketAddr, queue_name: &str) {
    let mut uri: lapin::uri::AMQPUri = "amqp://guest:guest@localhost/%2f".parse().unwrap();
    uri.authority.host = addr.ip().to_string();
    uri.authority.port = addr.port();
    let conn = within(lapin::Connection::connect_uri(uri, Default::default()))
        .await
        .unwrap_or_else(|e| panic!("connect over {addr}: {e}"));
    let ch = conn.create_channel().await.unwrap();
    queue(&ch, queue_name, false).await;
    publish(&ch, "", queue_name, addr.to_string().as_bytes()).await;
    assert_eq!(
        settled_drain(&ch, queue_name).await,
        vec![addr.to_string().into_bytes()]
    );
    let want_peer = addr.ip().to_string();
    eventually(|| async {
        let (_, body) = raw(s, "GET", "/api/connections", Some(GUEST), "").await;
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        j.as_array()
            .unwrap()
            .iter()
            .any(|c| c["peer_host"] == want_peer.as_str())
    })
    .await;
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn listeners_serve_ipv6_and_ipv4_loopback_on_one_port() {
    require_ipv6_loopback();
    let s = start_with(|c| {
        c.listeners.amqp = "127.0.0.1:0,[::1]:0".parse().unwrap();
        c.listeners.http = "127.0.0.1:0,[::1]:0".parse().unwrap();
        c.listeners.prometheus = "127.0.0.1:0,[::1]:0".parse().unwrap();
    })
    .await;
    for addrs in [s.amqp_addrs(), s.http_addrs(), s.prometheus_addrs()] {
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
        assert_eq!(
            addrs[0].port(),
            addrs[1].port(),
            "one port for both families"
        );
    }
    amqp_round_trip(&s, s.amqp_addrs()[0], &uniq("v4")).await;
    amqp_round_trip(&s, s.amqp_addrs()[1], &uniq("v6")).await;
    // The management API over IPv6: guest is a loopback user, and ::1 is
    // loopback.
    let (st, body) = raw_at(s.http_addrs()[1], "GET", "/api/overview", Some(GUEST), "").await;
    assert_eq!(st, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed: Vec<(String, String)> = j["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["protocol"].as_str().unwrap().to_owned(),
                l["ip_address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("amqp", "::1"),
        ("amqp", "127.0.0.1"),
        ("http", "::1"),
        ("http/prometheus", "::1"),
    ] {
        assert!(
            listed.iter().any(|(p, ip)| p == want.0 && ip == want.1),
            "{want:?} not in {listed:?}"
        );
    }
    let (st, body) = raw_at(s.prometheus_addrs()[1], "GET", "/metrics", None, "").await;
    assert_eq!(st, 200);
    assert!(body.contains("rabbitmq_"), "{body}");
}

/// The default's shape (`0.0.0.0` and `[::]` on one port), on port 0: both
/// wildcard sockets coexist, and each family reaches the broker.
#[tokio::test]
async fn wildcard_listeners_of_both_families_coexist() {
    require_ipv6_loopback();
    let s = start_with(|c| c.listeners.amqp = "0.0.0.0:0,[::]:0".parse().unwrap()).await;
    let port = s.amqp_addr().port();
    assert_eq!(s.amqp_addrs().len(), 2, "{:?}", s.amqp_addrs());
    amqp_round_trip(&s, SocketAddr::from(([127, 0, 0, 1], port)), &uniq("any4")).await;
    amqp_round_trip(
        &s,
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        &uniq("any6"),
    )
    .await;
}

#[tokio::test]
async fn a_port_in_use_is_named_and_nothing_is_written() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for (which, name) in [
        ("amqp", "AMQP"),
        ("http", "management HTTP"),
        ("prometheus", "Prometheus"),
    ] {
        let dir = temp_dir("in-use");
        let mut cfg = test_config(&dir);
        match which {
            "amqp" => cfg.listeners.amqp = addr.to_string().parse().unwrap(),
            "http" => cfg.listeners.http = addr.to_string().parse().unwrap(),
            _ => cfg.listeners.prometheus = addr.to_string().parse().unwrap(),
        }
        let e = match warren::server::start(&cfg).await {
            Ok(_) => panic!("{which}: started on a port in use"),
            Err(e) => e.to_string(),
        };
        let want = format!("cannot bind the {name} listener to {addr}: Address already in use");
        assert!(e.starts_with(&want), "{e}");
        assert!(e.contains(&format!("--{which}-listen")), "{e}");
        assert!(!dir.exists(), "{which}: the data directory was created");
    }
}

// ---------------------------------------------------------------------------
// The real binary.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The binary with its working directory in `work` (so no ./rabbit.toml is
/// read), data in `work/data`, output in `work/log`.
fn spawn_warren(work: &Path, amqp: &str) -> std::process::Child {
    std::fs::create_dir_all(work).unwrap();
    let log = std::fs::File::create(work.join("log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", amqp, "--http-listen", "127.0.0.1:0"])
        .args(["--prometheus-listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.join("data"))
        .current_dir(work)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn the warren binary")
}

fn wait_exit(child: &mut std::process::Child, work: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren did not exit within 20 s; log:\n{}", log_of(work));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn log_of(work: &Path) -> String {
    std::fs::read_to_string(work.join("log")).unwrap_or_default()
}

/// SIGINT and SIGTERM sent as soon as the AMQP port accepts a TCP
/// connection (before, without handlers installed first, 8 tries in 10
/// died by the signal): every try exits 0 through the clean shutdown.
#[test]
fn a_signal_right_after_the_listeners_bind_shuts_down_cleanly() {
    for (i, sig) in [libc::SIGTERM, libc::SIGINT]
        .iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        let work = temp_dir("signal");
        let port = free_port();
        let mut child = spawn_warren(&work, &format!("127.0.0.1:{port}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "try {i}: exited with {st} before listening; log:\n{}",
                    log_of(&work)
                );
            }
            assert!(Instant::now() < deadline, "try {i}: never listened");
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, *sig) }, 0);
        let st = wait_exit(&mut child, &work);
        let log = log_of(&work);
        assert!(st.success(), "try {i} (signal {sig}): {st}; log:\n{log}");
        assert!(
            log.contains("shutting down") && log.contains("stopped"),
            "try {i}: {log}"
        );
    }
}

#[test]
fn the_binary_names_a_busy_listener_and_writes_no_data_directory() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let work = temp_dir("busy");
    let mut child = spawn_warren(&work, &addr.to_string());
    let st = wait_exit(&mut child, &work);
    let log = log_of(&work);
    assert!(!st.success(), "{log}");
    assert!(
        log.contains(&format!(
            "cannot bind the AMQP listener to {addr}: Address already in use"
        )),
        "{log}"
    );
    assert!(
        !work.join("data").exists(),
        "the data directory was created:\n{log}"
    );
}

#[test]
fn a_listener_flag_given_twice_listens_on_both_addresses() {
    require_ipv6_loopback();
    let work = temp_dir("twice");
    let port = free_port();
    std::fs::create_dir_all(&*work).unwrap();
    let log = std::fs::File::create(work.join("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", &format!("127.0.0.1:{port}")])
        .args(["--amqp-listen", &format!("[::1]:{port}")])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--prometheus-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(work.join("data"))
        .current_dir(&*work)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let targets: [SocketAddr; 2] = [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ];
    for t in targets {
        while std::net::TcpStream::connect(t).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("exited with {st}; log:\n{}", log_of(&work));
            }
            assert!(
                Instant::now() < deadline,
                "{t} never accepted:\n{}",
                log_of(&work)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(wait_exit(&mut child, &work).success());
}

/// A server dropped without `shutdown` (a test that ends or panics) stops
/// serving, and its data directory can be opened again at once.
#[tokio::test]
async fn a_dropped_server_stops_and_frees_its_data_directory() {
    dropped_server_stops().await
}

/// The same on a multi-threaded runtime, where the drop closes the store
/// under `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_stops_on_a_multi_threaded_runtime() {
    dropped_server_stops().await
}

async fn dropped_server_stops() {
    let dir = temp_dir("dropped");
    let s = start_on(&dir).await;
    let addr = s.amqp_addr();
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("kept".into(), durable_q(), t())
        .await
        .unwrap();
    publish_confirmed_on_new_channel(&conn).await;
    drop(s);
    wait_until("the listener to close", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    until_closed(&conn).await;
    let s = start_on(&dir).await;
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    assert_eq!(passive(&ch, "kept").await.unwrap().message_count(), 1);
}

async fn publish_confirmed_on_new_channel(conn: &lapin::Connection) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&ch, "", "kept", b"m", persistent()).await;
}
