//! The `warren` binary as a child process, for the tests that need a
//! real process (SIGKILL, a restart on the same data directory): started
//! on a free port with its output kept in a log file, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `warren` child, killed (SIGKILL) when dropped so a failing
/// test never leaves a broker behind.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// The log of this start (stdout and stderr).
    pub log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Broker {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL, then reap the process.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("the broker is running");
        c.kill().expect("SIGKILL the broker");
        c.wait().expect("reap the broker");
    }

    /// Whether the process has exited (it must not, while it is in use).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

pub fn free_port() -> u16 {
    for _ in 0..50 {
        if let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") {
            return l.local_addr().expect("local addr").port();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no free port");
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read: {e}>"));
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts the binary on `data` with `work` as its working directory (so no
/// ./rabbit.toml is read) and waits until its AMQP port accepts TCP.
/// The listeners bind before recovery of the data directory; a client
/// that connects meanwhile waits in the listen backlog until it ends.
/// `start_no` numbers the log files of successive starts in `work`.
pub async fn start_broker(work: &Path, data: &Path, start_no: usize) -> Broker {
    std::fs::create_dir_all(work).expect("create the work dir");
    for attempt in 0..5 {
        let port = free_port();
        let log = work.join(format!("broker-{start_no:02}-{attempt}.log"));
        let out = std::fs::File::create(&log).expect("create the broker log");
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args([
                "--amqp-listen",
                &format!("127.0.0.1:{port}"),
                "--http-listen",
                "127.0.0.1:0",
                "--prometheus-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .current_dir(work)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone the log file")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn the warren binary");
        let mut b = Broker {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = b.exited() {
                let log = tail(&b.log, 40);
                if log.contains("in use") && attempt < 4 {
                    // Someone took the port between the probe and the bind.
                    break;
                }
                panic!(
                    "broker start {start_no} exited with {status} before listening; \
                     log {}:\n{log}",
                    b.log.display()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return b;
            }
            if Instant::now() > deadline {
                panic!(
                    "broker start {start_no} did not listen on {port} within 20 s; log {}:\n{}",
                    b.log.display(),
                    tail(&b.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    unreachable!("the last attempt panics")
}

/// A connection to a child broker and a channel on it (a failed connect
/// shows the broker's log).
pub async fn channel(b: &Broker) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&b.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", tail(&b.log, 30)));
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}
