//! `worker_pool`: a task worker pool over AMQP 0-9-1 with lapin, the way
//! Celery-style pools use a broker: N workers, each with a connection of its
//! own, consume one queue with prefetch 1 and manual acks; a producer
//! publishes T tasks (with publisher confirms); one worker is killed while
//! it holds an unacked task, its connection dropped without a close
//! handshake (it runs through a small in-process TCP relay that is cut, as a
//! crash or a network failure would drop it). The broker must requeue that
//! task to another worker, and every task must be completed exactly once by
//! an acknowledgement: completions are counted per task id.
//!
//! Prints one line per phase and a final line with tasks/s (from the first
//! publish to the last ack); `--json` prints one JSON object instead. Exits
//! 0 when every task was acked exactly once and the queue is left empty, 1
//! otherwise (or on a connection error or the `--timeout`), 2 on a usage
//! error.
//!
//! ```text
//! cargo run --release --example worker_pool -- --workers 10 --tasks 20000
//! cargo run --release --example worker_pool -- --uri amqp://guest:guest@127.0.0.1:5672/%2f --no-kill
//! ```

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

const USAGE: &str = "usage: worker_pool [options]
  --uri URI          broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
  --workers N        workers, each with its own connection (default 10)
  --tasks T          tasks to publish (default 10000)
  --queue NAME       task queue, deleted and declared afresh (default worker-pool)
  --work-us N        simulated work per task, microseconds (default 0: empty tasks)
  --persistent       durable queue and persistent tasks
  --no-kill          do not kill a worker
  --timeout SECS     give up after this long (default 120)
  --json             print one JSON object as the report
";

#[derive(Clone, Debug)]
struct Config {
    uri: String,
    workers: usize,
    tasks: u64,
    queue: String,
    work: Duration,
    persistent: bool,
    kill: bool,
    timeout: Duration,
    json: bool,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Config>, String> {
    let mut cfg = Config {
        uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        workers: 10,
        tasks: 10_000,
        queue: "worker-pool".into(),
        work: Duration::ZERO,
        persistent: false,
        kill: true,
        timeout: Duration::from_secs(120),
        json: false,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--uri" => cfg.uri = value()?,
            "--workers" => cfg.workers = num(value()?)? as usize,
            "--tasks" => cfg.tasks = num(value()?)?,
            "--queue" => cfg.queue = value()?,
            "--work-us" => cfg.work = Duration::from_micros(num(value()?)?),
            "--timeout" => cfg.timeout = Duration::from_secs(num(value()?)?),
            "--persistent" => cfg.persistent = true,
            "--no-kill" => cfg.kill = false,
            "--json" => cfg.json = true,
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if cfg.workers == 0 || cfg.tasks == 0 {
        return Err("--workers and --tasks must be at least 1".into());
    }
    if cfg.kill && cfg.workers < 2 {
        return Err("killing a worker needs at least 2 workers (or --no-kill)".into());
    }
    Ok(Some(cfg))
}

/// What the workers share: completions per task id, and progress.
struct Pool {
    /// Acks per task id.
    acked: Vec<AtomicU32>,
    /// Tasks acked so far (all workers).
    done: AtomicU64,
    /// Deliveries that came marked redelivered.
    redelivered: AtomicU64,
    all_done: Notify,
    tasks: u64,
}

impl Pool {
    fn complete(&self, id: u64) {
        self.acked[id as usize].fetch_add(1, Relaxed);
        if self.done.fetch_add(1, Relaxed) + 1 == self.tasks {
            self.all_done.notify_one();
        }
    }
}

/// A relay between one client and the broker: dropping the task that runs
/// it closes both sockets at once, without an AMQP close handshake.
async fn relay(
    upstream: std::net::SocketAddr,
) -> std::io::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut broker) = TcpStream::connect(upstream).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
    });
    Ok((port, task))
}

/// The broker's address from an `amqp://user:pass@host:port/vhost` URI.
fn broker_addr(uri: &str) -> Result<(std::net::SocketAddr, String, String), String> {
    let rest = uri
        .strip_prefix("amqp://")
        .ok_or("the relay handles amqp:// URIs only")?;
    let (auth, rest) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    };
    use std::net::ToSocketAddrs;
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    Ok((addr, auth.to_owned(), vhost.to_owned()))
}

async fn connect(uri: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        uri,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// One worker: prefetch 1, manual acks. The victim, on the first task it
/// receives after `kill_after` completions, reports the task and holds it
/// until its connection is cut.
async fn worker(
    cfg: Arc<Config>,
    pool: Arc<Pool>,
    conn: Connection,
    n: usize,
    mut victim: Option<(u64, oneshot::Sender<u64>)>,
) -> lapin::Result<()> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            cfg.queue.as_str().into(),
            format!("worker-{n}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = deliveries.next().await {
        let d = d?;
        let id = u64::from_le_bytes(d.data[..8].try_into().expect("an 8-byte task id"));
        if d.redelivered {
            pool.redelivered.fetch_add(1, Relaxed);
        }
        if let Some((after, _)) = &victim {
            if pool.done.load(Relaxed) >= *after {
                let (_, tell) = victim.take().expect("checked");
                let _ = tell.send(id);
                // Hold the task, unacked, until the connection is cut.
                std::future::pending::<()>().await;
            }
        }
        if !cfg.work.is_zero() {
            tokio::time::sleep(cfg.work).await;
        }
        d.ack(BasicAckOptions::default()).await?;
        pool.complete(id);
    }
    Ok(())
}

async fn produce(cfg: &Config) -> lapin::Result<Connection> {
    let conn = connect(&cfg.uri, "worker-pool producer").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = if cfg.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut pending = Vec::new();
    for id in 0..cfg.tasks {
        let c = ch
            .basic_publish(
                "".into(),
                cfg.queue.as_str().into(),
                BasicPublishOptions::default(),
                &id.to_le_bytes(),
                props.clone(),
            )
            .await?;
        pending.push(c);
        if pending.len() == 1000 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
    }
    for c in pending {
        c.await?;
    }
    Ok(conn)
}

struct Report {
    elapsed: Duration,
    killed: Option<(usize, u64)>,
    missing: Vec<u64>,
    duplicated: Vec<u64>,
    left: u32,
}

async fn run(cfg: Config) -> Result<(Report, Arc<Pool>), String> {
    let cfg = Arc::new(cfg);
    let err = |e: lapin::Error| e.to_string();
    let admin = connect(&cfg.uri, "worker-pool setup").await.map_err(err)?;
    let ach = admin.create_channel().await.map_err(err)?;
    ach.queue_delete(cfg.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(err)?;
    let declare = QueueDeclareOptions {
        durable: cfg.persistent,
        ..Default::default()
    };
    ach.queue_declare(cfg.queue.as_str().into(), declare, FieldTable::default())
        .await
        .map_err(err)?;
    let pool = Arc::new(Pool {
        acked: (0..cfg.tasks).map(|_| AtomicU32::new(0)).collect(),
        done: AtomicU64::new(0),
        redelivered: AtomicU64::new(0),
        all_done: Notify::new(),
        tasks: cfg.tasks,
    });
    // The victim is worker 0; it goes through the relay.
    let (told_tx, told_rx) = oneshot::channel();
    let mut told = Some(told_tx);
    let mut cut = None;
    let mut workers = Vec::new();
    for n in 0..cfg.workers {
        let victim = (cfg.kill && n == 0).then(|| (cfg.tasks / 2, told.take().expect("once")));
        let conn = if victim.is_some() {
            let (addr, auth, vhost) = broker_addr(&cfg.uri)?;
            let (port, task) = relay(addr).await.map_err(|e| e.to_string())?;
            cut = Some(task);
            let uri = format!("amqp://{auth}@127.0.0.1:{port}/{vhost}");
            connect(&uri, "worker-pool victim").await.map_err(err)?
        } else {
            connect(&cfg.uri, &format!("worker-pool worker {n}"))
                .await
                .map_err(err)?
        };
        workers.push(tokio::spawn(worker(
            cfg.clone(),
            pool.clone(),
            conn,
            n,
            victim,
        )));
    }
    let start = Instant::now();
    let producer = produce(&cfg).await.map_err(err)?;
    let mut killed = None;
    if cfg.kill {
        // The victim takes a task once half are done; should the others
        // finish everything first, there was nothing to kill it over.
        let id = tokio::select! {
            id = told_rx => id.map_err(|_| "the victim stopped before it took a task")?,
            _ = pool.all_done.notified() => {
                return Err("every task was done before the victim took one: use more tasks".into())
            }
        };
        cut.take().expect("the victim's relay").abort();
        workers[0].abort();
        killed = Some((0, id));
    }
    pool.all_done.notified().await;
    let elapsed = start.elapsed();
    for w in &workers {
        w.abort();
    }
    let q = ach
        .queue_declare(
            cfg.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    for (id, n) in pool.acked.iter().enumerate() {
        match n.load(Relaxed) {
            0 => missing.push(id as u64),
            1 => {}
            _ => duplicated.push(id as u64),
        }
    }
    ach.queue_delete(cfg.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(err)?;
    let _ = producer.close(200, "done".into()).await;
    let _ = admin.close(200, "done".into()).await;
    Ok((
        Report {
            elapsed,
            killed,
            missing,
            duplicated,
            left: q.message_count(),
        },
        pool,
    ))
}

/// The whole program: its arguments in, (what it prints, exit status) out
/// (tests/worker_pool_example.rs runs it in-process).
pub async fn run_cli(args: impl IntoIterator<Item = String>) -> (String, u8) {
    let cfg = match parse_args(args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return (USAGE.to_owned(), 0),
        Err(e) => return (format!("error: {e}\n\n{USAGE}"), 2),
    };
    let (json, timeout, workers, tasks) = (cfg.json, cfg.timeout, cfg.workers, cfg.tasks);
    let (r, pool) = match tokio::time::timeout(timeout, run(cfg)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (format!("error: {e}\n"), 1),
        Err(_) => return (format!("error: not done after {timeout:?}\n"), 1),
    };
    let rate = tasks as f64 / r.elapsed.as_secs_f64();
    let redelivered = pool.redelivered.load(Relaxed);
    let ok = r.missing.is_empty() && r.duplicated.is_empty() && r.left == 0;
    let mut out = String::new();
    use std::fmt::Write as _;
    if json {
        let _ = writeln!(
            out,
            "{{\"workers\":{workers},\"tasks\":{tasks},\"seconds\":{:.3},\"tasks_per_s\":{rate:.0},\"killed_task\":{},\"redelivered\":{redelivered},\"missing\":{},\"duplicated\":{},\"left\":{},\"ok\":{ok}}}",
            r.elapsed.as_secs_f64(),
            r.killed.map_or("null".into(), |(_, id)| id.to_string()),
            r.missing.len(),
            r.duplicated.len(),
            r.left,
        );
    } else {
        if let Some((w, id)) = r.killed {
            let _ = writeln!(
                out,
                "killed worker {w} holding task {id}: its connection was cut without a close"
            );
        }
        let _ = writeln!(
            out,
            "completed {tasks} tasks with {workers} workers (prefetch 1): missing {}, duplicated {}, redelivered {redelivered}, left in queue {}",
            r.missing.len(),
            r.duplicated.len(),
            r.left
        );
        let _ = writeln!(
            out,
            "{:.3} s, {rate:.0} tasks/s{}",
            r.elapsed.as_secs_f64(),
            if ok { "" } else { " (FAILED)" }
        );
    }
    (out, if ok { 0 } else { 1 })
}

#[tokio::main]
async fn main() -> ExitCode {
    let (out, code) = run_cli(std::env::args().skip(1)).await;
    if code == 0 {
        print!("{out}");
    } else {
        eprint!("{out}");
    }
    ExitCode::from(code)
}
