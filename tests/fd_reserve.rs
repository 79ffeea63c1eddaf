//! The AMQP accept loop's descriptor reserve: a broker whose open-files
//! limit is low (200, soft and hard, so it cannot raise it) is flooded
//! with idle AMQP and HTTP sockets. AMQP clients past the cap the limit
//! leaves (`limits.fd_reserve` and `limits.http_max_connections` kept
//! back) wait in the listen backlog: the broker never runs out of
//! descriptors (no failed accept), an open connection keeps working,
//! durable writes included, and once the idle sockets go a new client gets
//! in and the management API answers again.

mod common;

use common::child::{free_port, tail};
use common::*;
use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;

const NOFILE: u64 = 200;
const HTTP_MAX: u64 = 16;
const RESERVE: u64 = 64;
/// More idle AMQP sockets than the cap (200 - 16 - 64 = 120) allows, and
/// than the descriptors themselves would allow.
const AMQP_FLOOD: usize = 250;
const HTTP_FLOOD: usize = 40;

/// The broker, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary in `work` (which holds its rabbit.toml) with
/// RLIMIT_NOFILE = [`NOFILE`]; waits until AMQP accepts TCP.
async fn start(work: &Path, amqp: u16, http: u16) -> Broker {
    let config = format!(
        "[listeners]\namqp = \"127.0.0.1:{amqp}\"\nhttp = \"127.0.0.1:{http}\"\nprometheus = \"127.0.0.1:0\"\n\
         [storage]\ndata_dir = \"{}\"\n\
         [amqp]\n# Idle sockets stay for the whole test.\nhandshake_timeout_secs = 300\n\
         [limits]\nhttp_max_connections = {HTTP_MAX}\nfd_reserve = {RESERVE}\n\
         http_unauthenticated_timeout_secs = 300\nhttp_idle_timeout_secs = 300\n",
        work.join("data").display()
    );
    std::fs::create_dir_all(work).unwrap();
    std::fs::write(work.join("rabbit.toml"), config).unwrap();
    let log = std::fs::File::create(work.join("broker.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.current_dir(work)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE as libc::rlim_t,
                rlim_max: NOFILE as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut b = Broker(cmd.spawn().expect("spawn the warren binary"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", amqp)).await.is_err() {
        if let Ok(Some(st)) = b.0.try_wait() {
            panic!(
                "the broker exited with {st}: {}",
                tail(&work.join("broker.log"), 30)
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not listen"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    b
}

/// Descriptors the broker holds.
fn open_fds(b: &Broker) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", b.0.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_never_takes_the_reserve() {
    let work = temp_dir("fd-reserve");
    let (amqp, http) = (free_port(), free_port());
    let b = start(work.path(), amqp, http).await;
    let log = work.path().join("broker.log");
    let url = format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f");
    let keeper = within(Connection::connect(&url, ConnectionProperties::default()))
        .await
        .unwrap();
    let ch = keeper.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let mut idle = Vec::new();
    for _ in 0..AMQP_FLOOD {
        idle.push(TcpStream::connect(("127.0.0.1", amqp)).await.unwrap());
    }
    let mut idle_http = Vec::new();
    for _ in 0..HTTP_FLOOD {
        idle_http.push(TcpStream::connect(("127.0.0.1", http)).await.unwrap());
    }
    // The cap, or (without a reserve) the end of the descriptors.
    wait_until(
        "the AMQP cap to be reached",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("AMQP connection limit reached")
                || open_fds(&b) as u64 >= NOFILE - 1
        },
    )
    .await;
    let held = open_fds(&b);
    assert!(
        held as u64 <= NOFILE - RESERVE / 2,
        "the broker holds {held} descriptors of {NOFILE}: the reserve is gone"
    );
    // The open connection still works, durable queues and persistent
    // messages (files of the store) included.
    for i in 0..20 {
        let q = format!("fd-durable-{i}");
        queue(&ch, &q, true).await;
        publish_confirmed(
            &ch,
            "",
            &q,
            b"kept",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    // A new client waits in the backlog; it gets in once idle sockets go.
    let newcomer = tokio::spawn({
        let url = url.clone();
        async move { Connection::connect(&url, ConnectionProperties::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(idle);
    drop(idle_http);
    let c = within(newcomer)
        .await
        .unwrap()
        .expect("a new client gets in once slots are free");
    let ch2 = c.create_channel().await.unwrap();
    assert_eq!(
        drain(&ch2, "fd-durable-0").await,
        vec![b"kept".to_vec()],
        "the newcomer reads what was stored during the flood"
    );
    let (st, _) = raw_at(
        format!("127.0.0.1:{http}").parse().unwrap(),
        "GET",
        "/api/overview",
        Some(GUEST),
        "",
    )
    .await;
    assert_eq!(st, 200, "the management API answers again");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("accept failed"),
        "the broker ran out of descriptors:\n{}",
        tail(&log, 30)
    );
    c.close(200, "bye".into()).await.unwrap();
    keeper.close(200, "bye".into()).await.unwrap();
    drop(b);
}
