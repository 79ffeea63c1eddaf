//! `perf`: a load-generating benchmark client for AMQP 0-9-1 brokers (Warren,
//! RabbitMQ), in the spirit of RabbitMQ's PerfTest and `lavinmqperf`.
//!
//! Producers publish to the default exchange (routing key = queue name) and
//! consumers read the queues with `basic.consume`; producers and consumers
//! are spread round-robin over the queues `perf-0` .. `perf-{N-1}`, which are
//! deleted and declared afresh at start and deleted at the end (unless
//! `--keep-queues`, which lets one run fill a backlog and a later one drain
//! it). Every producer and every consumer has a connection of its own. Each
//! message body starts with an 8-byte little-endian send timestamp
//! (nanoseconds since the Unix epoch, advanced by a monotonic clock within a
//! process), from which consumers compute end-to-end latency; every consumed
//! message is recorded in a fixed-size log-linear histogram (about 1.6 %
//! resolution), so percentiles cost no per-message allocation. Messages left
//! by an earlier run therefore show their age in the queue as latency.
//!
//! A run lasts `--duration`, or less when it has a natural end: with
//! `--pmessages` once every producer has published (and had confirmed) its
//! messages and the consumers have received them, with `--until-empty` once
//! the consumers have drained their queues; the report then uses the time
//! up to the last publish or delivery.
//!
//! A progress line goes to stderr once a second; the final report (text, or
//! one JSON object with `--json`) goes to stdout. The exit status is 1 on a
//! connection or channel error and 2 on a usage error.
//!
//! ```text
//! cargo run --release --example perf -- --producers 1 --consumers 1 --size 100 --duration 10
//! cargo run --release --example perf -- --uri amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --prefetch 1000 --ack-multiple --confirm 1000 --json
//! # fill a backlog, then drain it, watching the broker's memory
//! cargo run --release --example perf -- --producers 1 --consumers 0 --persistent \
//!     --confirm 1000 --pmessages 200000 --keep-queues --broker-pid $(pidof warren)
//! cargo run --release --example perf -- --producers 0 --consumers 1 --persistent \
//!     --keep-queues --until-empty --ack-multiple --broker-pid $(pidof warren)
//! ```
//!
//! `--raw` swaps lapin for the lean frame-level clients in `raw.rs`: lapin
//! costs more CPU per message than Warren does, so on a small machine it is
//! lapin's rate that a lapin run measures. `--broker-pid` adds the broker's
//! RSS and its CPU time per message (from `/proc/PID/stat`) to the report.
//!
//! Run with `--help` for all options.

use lapin::{
    message::DeliveryResult,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
};
use std::{
    collections::VecDeque,
    fmt::Write as _,
    future::Future,
    pin::{pin, Pin},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};
use tokio::{sync::Notify, task::JoinHandle};

mod raw;

const USAGE: &str = "\
perf: AMQP 0-9-1 load generator (PerfTest-like) built on lapin

USAGE: perf [OPTIONS]

  --uri URI          broker URI [amqp://guest:guest@127.0.0.1:5672/%2f]
  --producers N      publishing connections, 0 = consume only [1]
  --consumers N      consuming connections, 0 = publish only [1]
  --queues N         queues perf-0..perf-N-1; producers and consumers are
                     spread over them round-robin [1]
  --size BYTES       message body size; the first 8 bytes carry the send
                     timestamp (no latency is measured below 8 bytes) [100]
  --duration SECS    how long to run at most (fractions allowed) [10]
  --pmessages N      each producer stops after publishing N messages (and,
                     with --confirm, having them confirmed); the run then
                     ends once the consumers have received everything
                     published to their queues; 0 = no limit [0]
  --until-empty      consumers stop once they have drained their queues: the
                     run ends (after any producers are done) when each
                     consumed queue has had no delivery for 1 s after at
                     least one, or was empty at start and has no producer;
                     the rates cover the time up to the last delivery
  --keep-queues      neither delete nor purge the perf queues at start (declare
                     them, durable iff --persistent) nor delete them at the
                     end; unacked deliveries are acked before closing
  --broker-pid PID   sample the broker's VmRSS from /proc/PID/status once a
                     second; report the peak seen and VmHWM at the end
  --no-ack           consume with no-ack (automatic acknowledgement);
                     the default is manual acknowledgement
  --prefetch N       basic.qos prefetch count per consumer, 0 = unlimited [1000]
  --ack-multiple     ack every prefetch/2 messages (500 if prefetch is 0)
                     with multiple=true (default: ack each message alone)
  --rate N           per-producer publish limit in msg/s, 0 = unlimited [0]
  --persistent       delivery_mode 2 and durable queues
  --confirm N        publisher confirms, at most N unconfirmed per producer;
                     0 = off [0]
  --pipeline N       without --confirm: publishes a producer hands to lapin
                     per batch before waiting for its previous batch to reach
                     the socket (so at most ~2N in flight) [256]
  --message-ttl MS   declare the perf queues with x-message-ttl MS
  --max-length N     declare the perf queues with x-max-length N
  --expiration MS    publish with the per-message expiration property MS
  --max-priority N   declare the perf queues with x-max-priority N and publish
                     each message with a priority drawn uniformly from 0..=N
  --stream           declare the perf queues as streams (durable,
                     x-queue-type stream); consumers read from
                     x-stream-offset first (a replay with --producers 0
                     --keep-queues --until-empty)
  --offset-step N    with --stream: consumer i starts at offset i*N instead
                     of first (consumers spread over one stream)
  --raw              producers and consumers speak raw AMQP frames over a
                     socket instead of lapin (which costs more CPU per
                     message than the broker): for measuring the broker's
                     rate on a small machine
  --json             print the report as one JSON object
  -h, --help         this text
";

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Config {
    uri: String,
    producers: usize,
    consumers: usize,
    queues: usize,
    size: usize,
    duration: Duration,
    no_ack: bool,
    prefetch: u16,
    ack_multiple: bool,
    rate: u64,
    persistent: bool,
    confirm: usize,
    pipeline: usize,
    json: bool,
    /// Messages per producer; 0 = unlimited.
    pmessages: u64,
    keep_queues: bool,
    until_empty: bool,
    broker_pid: Option<u32>,
    /// x-message-ttl of the perf queues (ms).
    message_ttl: Option<u64>,
    /// x-max-length of the perf queues.
    max_length: Option<u64>,
    /// Per-message `expiration` (ms).
    expiration: Option<u64>,
    /// x-max-priority of the perf queues; messages get random priorities
    /// up to it.
    max_priority: Option<u8>,
    /// The perf queues are streams; consumers start at `first`.
    stream: bool,
    /// Producers and consumers use raw frames (`raw.rs`), not lapin.
    raw: bool,
    /// With `stream`: consumer i starts at offset i * offset_step (0: all
    /// at `first`).
    offset_step: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            uri: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            producers: 1,
            consumers: 1,
            queues: 1,
            size: 100,
            duration: Duration::from_secs(10),
            no_ack: false,
            prefetch: 1000,
            ack_multiple: false,
            rate: 0,
            persistent: false,
            confirm: 0,
            pipeline: 256,
            json: false,
            pmessages: 0,
            keep_queues: false,
            until_empty: false,
            broker_pid: None,
            message_ttl: None,
            max_length: None,
            expiration: None,
            max_priority: None,
            stream: false,
            raw: false,
            offset_step: 0,
        }
    }
}

enum ParseOutcome {
    Run(Config),
    Help,
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value for {flag}: {value:?}"))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<ParseOutcome, String> {
    let mut cfg = Config::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(ParseOutcome::Help),
            "--uri" => cfg.uri = value()?,
            "--producers" => cfg.producers = parse_num(&flag, &value()?)?,
            "--consumers" => cfg.consumers = parse_num(&flag, &value()?)?,
            "--queues" => cfg.queues = parse_num(&flag, &value()?)?,
            "--size" => cfg.size = parse_num(&flag, &value()?)?,
            "--duration" => {
                let secs: f64 = parse_num(&flag, &value()?)?;
                if !(secs.is_finite() && secs > 0.0) {
                    return Err("--duration must be > 0".to_owned());
                }
                cfg.duration = Duration::from_secs_f64(secs);
            }
            "--prefetch" => cfg.prefetch = parse_num(&flag, &value()?)?,
            "--rate" => cfg.rate = parse_num(&flag, &value()?)?,
            "--confirm" => cfg.confirm = parse_num(&flag, &value()?)?,
            "--pipeline" => cfg.pipeline = parse_num::<usize>(&flag, &value()?)?.max(1),
            "--pmessages" => cfg.pmessages = parse_num(&flag, &value()?)?,
            "--broker-pid" => cfg.broker_pid = Some(parse_num(&flag, &value()?)?),
            "--message-ttl" => cfg.message_ttl = Some(parse_num(&flag, &value()?)?),
            "--max-length" => cfg.max_length = Some(parse_num(&flag, &value()?)?),
            "--expiration" => cfg.expiration = Some(parse_num(&flag, &value()?)?),
            "--max-priority" => cfg.max_priority = Some(parse_num(&flag, &value()?)?),
            "--offset-step" => cfg.offset_step = parse_num(&flag, &value()?)?,
            "--no-ack" | "--ack-multiple" | "--persistent" | "--json" | "--keep-queues"
            | "--until-empty" | "--stream" | "--raw"
                if inline.is_some() =>
            {
                return Err(format!("{flag} takes no value"));
            }
            "--no-ack" => cfg.no_ack = true,
            "--ack-multiple" => cfg.ack_multiple = true,
            "--persistent" => cfg.persistent = true,
            "--json" => cfg.json = true,
            "--keep-queues" => cfg.keep_queues = true,
            "--until-empty" => cfg.until_empty = true,
            "--stream" => cfg.stream = true,
            "--raw" => cfg.raw = true,
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    if cfg.queues == 0 {
        return Err("--queues must be at least 1".to_owned());
    }
    if cfg.producers == 0 && cfg.consumers == 0 {
        return Err("nothing to do: no producers and no consumers".to_owned());
    }
    if cfg.until_empty && cfg.consumers == 0 {
        return Err("--until-empty needs at least one consumer".to_owned());
    }
    if cfg.raw && (cfg.max_priority.is_some() || cfg.expiration.is_some()) {
        return Err("--raw publishes without priorities or expiration".to_owned());
    }
    if let Some(pid) = cfg.broker_pid {
        if read_proc_status(pid).is_none() {
            return Err(format!(
                "--broker-pid {pid}: cannot read VmRSS from /proc/{pid}/status"
            ));
        }
    }
    Ok(ParseOutcome::Run(cfg))
}

/// The URI with its password replaced by `***`, for the report.
fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return uri.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &uri[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => uri.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Broker memory (--broker-pid)
// ---------------------------------------------------------------------------

/// `(VmRSS, VmHWM)` in KiB from `/proc/PID/status`; `None` if the process is
/// gone or the file has no VmRSS (a kernel thread, another OS).
fn read_proc_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    let rss = field("VmRSS:")?;
    Some((rss, field("VmHWM:").unwrap_or(0)))
}

/// The CPU time (user + system) the process has used, in seconds, from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks).
fn read_proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// RSS samples of the broker, taken at start, once a second and at the end,
/// and its CPU time at the first and the last sample.
#[derive(Clone, Copy, Debug, Default)]
struct BrokerMemory {
    pid: u32,
    /// KiB; `None` until a sample succeeded.
    start_kib: Option<u64>,
    last_kib: Option<u64>,
    peak_kib: u64,
    /// VmHWM (the kernel's own peak RSS of the process) at the last sample.
    hwm_kib: Option<u64>,
    samples: u64,
    /// CPU seconds at the first and the latest sample.
    cpu_start: Option<f64>,
    cpu_last: Option<f64>,
}

impl BrokerMemory {
    fn new(pid: u32) -> Self {
        Self {
            pid,
            ..Self::default()
        }
    }

    /// Take a sample; the RSS in KiB if the process could be read.
    fn sample(&mut self) -> Option<u64> {
        let (rss, hwm) = read_proc_status(self.pid)?;
        self.start_kib.get_or_insert(rss);
        self.last_kib = Some(rss);
        self.peak_kib = self.peak_kib.max(rss);
        if hwm > 0 {
            self.hwm_kib = Some(hwm);
        }
        self.samples += 1;
        if let Some(cpu) = read_proc_cpu(self.pid) {
            self.cpu_start.get_or_insert(cpu);
            self.cpu_last = Some(cpu);
        }
        Some(rss)
    }

    /// CPU seconds used between the first and the latest sample.
    fn cpu_used(&self) -> Option<f64> {
        Some(self.cpu_last? - self.cpu_start?)
    }
}

/// The messages broker CPU is counted over: those consumed, or in a
/// publish-only run those published.
fn cpu_messages(t: &Totals) -> u64 {
    if t.consumed > 0 {
        t.consumed
    } else {
        t.published
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------
// Latency histogram: log-linear buckets over u64 nanoseconds, lock-free.
// Values below 128 get a bucket each; above, each power of two is split into
// 64 buckets, so a bucket is at most 1/64 of its value wide.
// ---------------------------------------------------------------------------

const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (65 - SUB_BITS as usize) * SUB;

fn bucket_of(v: u64) -> usize {
    if v < (2 * SUB) as u64 {
        v as usize
    } else {
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        (shift as usize + 1) * SUB + ((v >> shift) as usize - SUB)
    }
}

/// Inclusive value range of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < 2 * SUB {
        (i as u64, i as u64)
    } else {
        let shift = i / SUB - 1;
        let sub = (i % SUB + SUB) as u128;
        let lo = sub << shift;
        let hi = ((sub + 1) << shift) - 1;
        (lo as u64, hi.min(u64::MAX as u128) as u64)
    }
}

struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn record(&self, v: u64) {
        self.counts[bucket_of(v)].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
        if v > self.max.load(Relaxed) {
            self.max.fetch_max(v, Relaxed);
        }
    }

    fn add_to(&self, snap: &mut Snapshot) {
        for (dst, src) in snap.counts.iter_mut().zip(self.counts.iter()) {
            *dst += src.load(Relaxed);
        }
        snap.max = snap.max.max(self.max.load(Relaxed));
        snap.sum = snap.sum.wrapping_add(self.sum.load(Relaxed));
    }
}

#[derive(Clone)]
struct Snapshot {
    counts: Vec<u64>,
    max: u64,
    sum: u64,
}

impl Snapshot {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            max: 0,
            sum: 0,
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `self - earlier` (the max stays this snapshot's: it is cumulative).
    fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a - b)
                .collect(),
            max: self.max,
            sum: self.sum.wrapping_sub(earlier.sum),
        }
    }

    /// Value at quantile `q` (0..=1) in nanoseconds: the middle of the bucket
    /// holding it, capped at the exact maximum.
    fn quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }

    fn mean(&self) -> u64 {
        self.sum.checked_div(self.total()).unwrap_or(0)
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// ---------------------------------------------------------------------------
// Shared state and counters
// ---------------------------------------------------------------------------

struct Shared {
    /// Time base of the timestamps in message bodies: `epoch` is the instant
    /// at which the wall clock read `epoch_unix_ns`, so timestamps are
    /// monotonic within a run and comparable between runs on one host.
    epoch: Instant,
    epoch_unix_ns: u64,
    stopping: AtomicBool,
    error: Mutex<Option<String>>,
    error_notify: Notify,
    /// Poked when a producer has published all its `--pmessages`.
    done_notify: Notify,
}

impl Shared {
    fn new() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            epoch: Instant::now(),
            epoch_unix_ns: unix,
            stopping: AtomicBool::new(false),
            error: Mutex::new(None),
            error_notify: Notify::new(),
            done_notify: Notify::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch_unix_ns + self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant of a `now_ns` timestamp.
    fn instant_of(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns.saturating_sub(self.epoch_unix_ns))
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Record the first error and wake the main task; later ones are dropped.
    fn fail(&self, msg: String) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(msg);
            self.error_notify.notify_one();
        }
    }

    fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[derive(Default)]
struct ProducerStats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    /// `now_ns` when the producer finished its `--pmessages`; 0 = not yet.
    finished_ns: AtomicU64,
}

struct ConsumerStats {
    consumed: AtomicU64,
    /// `now_ns` of the latest delivery; 0 = none yet.
    last_ns: AtomicU64,
    latency: Histogram,
}

#[derive(Clone, Copy, Default)]
struct Totals {
    published: u64,
    confirmed: u64,
    nacked: u64,
    consumed: u64,
}

fn totals(producers: &[Arc<ProducerStats>], consumers: &[Arc<ConsumerStats>]) -> Totals {
    let mut t = Totals::default();
    for p in producers {
        t.published += p.published.load(Relaxed);
        t.confirmed += p.confirmed.load(Relaxed);
        t.nacked += p.nacked.load(Relaxed);
    }
    for c in consumers {
        t.consumed += c.consumed.load(Relaxed);
    }
    t
}

fn latency_snapshot(consumers: &[Arc<ConsumerStats>]) -> Snapshot {
    let mut snap = Snapshot::new();
    for c in consumers {
        c.latency.add_to(&mut snap);
    }
    snap
}

// ---------------------------------------------------------------------------
// lapin helpers
// ---------------------------------------------------------------------------

/// Poll a future once without a real waker.
///
/// lapin's `basic_publish` / `basic_ack` futures queue their frames for the
/// I/O thread on the first poll and then only wait for the bytes to reach
/// the socket, so polling once and dropping the future sends the frame
/// without a round trip through the I/O thread per message.
fn poll_now<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn queue_name(i: usize) -> ShortString {
    ShortString::from(format!("perf-{i}"))
}

async fn connect(uri: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        uri,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

fn stamp(buf: &mut [u8], shared: &Shared) {
    if buf.len() >= 8 {
        buf[..8].copy_from_slice(&shared.now_ns().to_le_bytes());
    }
}

fn message_properties(cfg: &Config) -> BasicProperties {
    let p = if cfg.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    match cfg.expiration {
        Some(ms) => p.with_expiration(ms.to_string().into()),
        None => p,
    }
}

/// The properties of one message: `base`, with a random priority under
/// `--max-priority`.
fn with_priority(base: &BasicProperties, cfg: &Config, rng: &mut fastrand::Rng) -> BasicProperties {
    match cfg.max_priority {
        Some(max) => base.clone().with_priority(rng.u8(0..=max)),
        None => base.clone(),
    }
}

/// How many messages (at most `cap`) a producer may send now under `--rate`;
/// `Err(t)`: none before `t`.
fn rate_allowance(cfg: &Config, start: Instant, sent: u64, cap: u64) -> Result<u64, Instant> {
    if cfg.rate == 0 {
        return Ok(cap);
    }
    let now = Instant::now();
    let due = ((now - start).as_secs_f64() * cfg.rate as f64) as u64 + 1;
    if due > sent {
        Ok((due - sent).min(cap))
    } else {
        Err(start + Duration::from_secs_f64(sent as f64 / cfg.rate as f64))
    }
}

// ---------------------------------------------------------------------------
// Producers
// ---------------------------------------------------------------------------

struct ProducerCtx {
    channel: Channel,
    queue: ShortString,
    cfg: Arc<Config>,
    stats: Arc<ProducerStats>,
    shared: Arc<Shared>,
    start: Instant,
    deadline: Instant,
}

impl ProducerCtx {
    fn done(&self) -> bool {
        self.shared.stopping() || Instant::now() >= self.deadline
    }

    /// How many messages this producer publishes in all (`--pmessages`).
    fn quota(&self) -> u64 {
        match self.cfg.pmessages {
            0 => u64::MAX,
            n => n,
        }
    }

    /// Record that the quota is published (and confirmed) and tell the main
    /// task.
    fn finished(&self) {
        self.stats.finished_ns.store(self.shared.now_ns(), Relaxed);
        self.shared.done_notify.notify_one();
    }
}

/// Without confirms: hand up to `--pipeline` publishes to lapin, polling each
/// once (which queues its frames), and keep only the last one of each batch
/// to await, after the next batch is queued. This bounds what is in flight to
/// about two batches while the I/O thread always has frames to write.
async fn produce_unconfirmed(p: ProducerCtx) -> lapin::Result<()> {
    let props = message_properties(&p.cfg);
    let mut rng = fastrand::Rng::new();
    let window = p.cfg.pipeline.max(1) as u64;
    let mut scratch = vec![0u8; p.cfg.size];
    let mut mark = vec![0u8; p.cfg.size];
    let mut sent = 0u64;
    let mut marker = None;
    let quota = p.quota();
    while !p.done() && sent < quota {
        let n = match rate_allowance(&p.cfg, p.start, sent, window.min(quota - sent)) {
            Ok(n) => n,
            Err(next) => {
                if let Some(prev) = marker {
                    prev.await?;
                }
                marker = None;
                tokio::time::sleep_until(next.min(p.deadline).into()).await;
                continue;
            }
        };
        for _ in 1..n {
            stamp(&mut scratch, &p.shared);
            let publish = p.channel.basic_publish(
                ShortString::default(),
                p.queue.clone(),
                BasicPublishOptions::default(),
                &scratch,
                with_priority(&props, &p.cfg, &mut rng),
            );
            if let Poll::Ready(Err(e)) = poll_now(pin!(publish)) {
                return Err(e);
            }
        }
        // Wait for the previous batch's last publish to be written before
        // queuing this batch's last one (`mark` is reused for it).
        {
            let prev = marker;
            if let Some(prev) = prev {
                prev.await?;
            }
        }
        stamp(&mut mark, &p.shared);
        let mut last = Box::pin(p.channel.basic_publish(
            ShortString::default(),
            p.queue.clone(),
            BasicPublishOptions::default(),
            &mark,
            with_priority(&props, &p.cfg, &mut rng),
        ));
        marker = match poll_now(last.as_mut()) {
            Poll::Ready(res) => {
                res?;
                None
            }
            Poll::Pending => Some(last),
        };
        sent += n;
        p.stats.published.fetch_add(n, Relaxed);
    }
    if let Some(prev) = marker {
        prev.await?;
    }
    if sent >= quota {
        p.finished();
    }
    Ok(())
}

type InFlight = Pin<Box<dyn Future<Output = (lapin::Result<Confirmation>, Vec<u8>)> + Send>>;

/// With confirms: every publish is an owned future (it owns a pooled body
/// buffer and resolves to the broker's confirmation); at most `--confirm` of
/// them are in flight, completed in order.
async fn produce_confirmed(p: ProducerCtx) -> lapin::Result<()> {
    let props = message_properties(&p.cfg);
    let mut rng = fastrand::Rng::new();
    let limit = p.cfg.confirm;
    let channel = Arc::new(p.channel.clone());
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(limit);
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(limit);
    let mut sent = 0u64;

    let settle = |(res, buf): (lapin::Result<Confirmation>, Vec<u8>),
                  pool: &mut Vec<Vec<u8>>|
     -> lapin::Result<()> {
        pool.push(buf);
        match res? {
            Confirmation::Nack(_) => p.stats.nacked.fetch_add(1, Relaxed),
            _ => p.stats.confirmed.fetch_add(1, Relaxed),
        };
        Ok(())
    };

    let quota = p.quota();
    while !p.done() && sent < quota {
        // Harvest confirmations that have already arrived.
        while let Some(front) = in_flight.front_mut() {
            match poll_now(front.as_mut()) {
                Poll::Ready(out) => {
                    in_flight.pop_front();
                    settle(out, &mut pool)?;
                }
                Poll::Pending => break,
            }
        }
        if in_flight.len() >= limit {
            if let Some(front) = in_flight.pop_front() {
                let out = tokio::select! {
                    out = front => out,
                    _ = tokio::time::sleep_until(p.deadline.into()) => break,
                };
                settle(out, &mut pool)?;
            }
            continue;
        }
        if let Err(next) = rate_allowance(&p.cfg, p.start, sent, 1) {
            tokio::time::sleep_until(next.min(p.deadline).into()).await;
            continue;
        }
        let mut body = pool.pop().unwrap_or_else(|| vec![0u8; p.cfg.size]);
        stamp(&mut body, &p.shared);
        let channel = channel.clone();
        let queue = p.queue.clone();
        let props = with_priority(&props, &p.cfg, &mut rng);
        let mut fut: InFlight = Box::pin(async move {
            let res = match channel
                .basic_publish(
                    ShortString::default(),
                    queue,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
            {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            };
            (res, body)
        });
        // The first poll queues the frames.
        match poll_now(fut.as_mut()) {
            Poll::Ready(out) => settle(out, &mut pool)?,
            Poll::Pending => in_flight.push_back(fut),
        }
        sent += 1;
        p.stats.published.fetch_add(1, Relaxed);
    }
    if sent >= quota {
        // All published: wait for the outstanding confirmations.
        while let Some(front) = in_flight.pop_front() {
            let out = tokio::select! {
                out = front => out,
                _ = tokio::time::sleep_until(p.deadline.into()) => return Ok(()),
            };
            settle(out, &mut pool)?;
        }
        p.finished();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------

struct Acks {
    /// Highest delivery tag the acker should acknowledge up to.
    latest: AtomicU64,
    /// Highest delivery tag received.
    last_tag: AtomicU64,
    /// Set (then `notify`) to have the acker ack up to `last_tag` and stop.
    closing: AtomicBool,
    notify: Notify,
}

struct ConsumerHandle {
    connection: Connection,
    channel: Channel,
    tag: ShortString,
    _consumer: Consumer,
    acks: Option<Arc<Acks>>,
    acker: Option<JoinHandle<()>>,
}

async fn start_consumer(
    idx: usize,
    cfg: &Config,
    stats: Arc<ConsumerStats>,
    shared: Arc<Shared>,
) -> lapin::Result<ConsumerHandle> {
    let name = format!("perf-consumer-{idx}");
    let connection = connect(&cfg.uri, &name).await?;
    let channel = connection.create_channel().await?;
    if !cfg.no_ack {
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue_name(idx % cfg.queues),
            name.as_str().into(),
            BasicConsumeOptions {
                no_ack: cfg.no_ack,
                ..BasicConsumeOptions::default()
            },
            consumer_arguments(cfg, idx),
        )
        .await?;

    // Acknowledge every `ack_every`-th delivery tag (tags are consecutive on a
    // channel with one consumer); the acker task sends the frames.
    let ack_every = if cfg.ack_multiple {
        match cfg.prefetch {
            0 => 500,
            n => u64::from(n / 2).max(1),
        }
    } else {
        1
    };
    let acks = (!cfg.no_ack).then(|| {
        Arc::new(Acks {
            latest: AtomicU64::new(0),
            last_tag: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            notify: Notify::new(),
        })
    });

    // lapin's `Consumer` is a `futures_core::Stream`; polling it needs that
    // trait in scope, which this example (lapin + tokio + std only) does not
    // have, so deliveries come through a delegate instead. lapin calls the
    // closure synchronously, in order, on the connection's I/O thread.
    let delegate_acks = acks.clone();
    let delegate_shared = shared.clone();
    consumer.set_delegate(move |delivery: DeliveryResult| {
        match delivery {
            Ok(Some(d)) => {
                let now = delegate_shared.now_ns();
                stats.consumed.fetch_add(1, Relaxed);
                stats.last_ns.store(now, Relaxed);
                if let Some(ts) = d.data.get(..8) {
                    let sent = u64::from_le_bytes(ts.try_into().unwrap_or_default());
                    if sent != 0 {
                        stats.latency.record(now.saturating_sub(sent));
                    }
                }
                if let Some(acks) = &delegate_acks {
                    acks.last_tag.store(d.delivery_tag, Relaxed);
                    if d.delivery_tag % ack_every == 0 {
                        acks.latest.store(d.delivery_tag, Relaxed);
                        acks.notify.notify_one();
                    }
                }
            }
            Ok(None) => {
                if !delegate_shared.stopping() {
                    delegate_shared.fail(format!("consumer {idx} was cancelled"));
                }
            }
            Err(e) => {
                if !delegate_shared.stopping() {
                    delegate_shared.fail(format!("consumer {idx}: {e}"));
                }
            }
        }
        std::future::ready(())
    });

    let acker = acks.clone().map(|acks| {
        let channel = channel.clone();
        let multiple = cfg.ack_multiple;
        tokio::spawn(async move {
            if let Err(e) = ack_loop(&channel, &acks, multiple).await {
                if !shared.stopping() {
                    shared.fail(format!("consumer {idx}: basic.ack: {e}"));
                }
            }
        })
    });

    Ok(ConsumerHandle {
        connection,
        channel,
        tag: name.into(),
        _consumer: consumer,
        acks,
        acker,
    })
}

async fn ack_loop(channel: &Channel, acks: &Acks, multiple: bool) -> lapin::Result<()> {
    let mut acked = 0u64;
    loop {
        acks.notify.notified().await;
        let closing = acks.closing.load(Relaxed);
        let upto = if closing {
            acks.last_tag.load(Relaxed)
        } else {
            acks.latest.load(Relaxed)
        };
        if upto <= acked {
            if closing {
                return Ok(());
            }
            continue;
        }
        if multiple {
            channel
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await?;
        } else {
            // One basic.ack per message: queue all but the last without
            // waiting, then wait for the last to be written.
            for tag in acked + 1..upto {
                let ack = channel.basic_ack(tag, BasicAckOptions::default());
                if let Poll::Ready(Err(e)) = poll_now(pin!(ack)) {
                    return Err(e);
                }
            }
            channel.basic_ack(upto, BasicAckOptions::default()).await?;
        }
        acked = upto;
        if closing {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------
// Orchestration
// ---------------------------------------------------------------------------

async fn setup_queues(cfg: &Config) -> lapin::Result<(Connection, Channel)> {
    let connection = connect(&cfg.uri, "perf-setup").await?;
    let mut channel = connection.create_channel().await?;
    for i in 0..cfg.queues {
        if !cfg.keep_queues {
            // RabbitMQ answers delete-ok for a missing queue; a broker that
            // closes the channel with 404 instead just costs a fresh channel.
            let deleted = channel
                .queue_delete(queue_name(i), QueueDeleteOptions::default())
                .await;
            if deleted.is_err() || !channel.status().connected() {
                channel = connection.create_channel().await?;
            }
        }
        // With --keep-queues this is a no-op on a queue left by an earlier
        // run with the same --persistent (and a 406 if it differs).
        channel
            .queue_declare(
                queue_name(i),
                QueueDeclareOptions {
                    durable: cfg.persistent || cfg.stream,
                    auto_delete: false,
                    ..QueueDeclareOptions::default()
                },
                queue_arguments(cfg),
            )
            .await?;
    }
    Ok((connection, channel))
}

/// The perf queues' arguments (--message-ttl, --max-length, --max-priority).
fn queue_arguments(cfg: &Config) -> FieldTable {
    let mut t = FieldTable::default();
    if let Some(ttl) = cfg.message_ttl {
        t.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl as i64));
    }
    if let Some(n) = cfg.max_length {
        t.insert("x-max-length".into(), AMQPValue::LongLongInt(n as i64));
    }
    if let Some(n) = cfg.max_priority {
        t.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(n));
    }
    if cfg.stream {
        t.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
    }
    t
}

/// Consumer `idx`'s arguments: a stream is read from its first offset, or
/// with `--offset-step` from offset `idx * step`.
fn consumer_arguments(cfg: &Config, idx: usize) -> FieldTable {
    let mut t = FieldTable::default();
    if cfg.stream {
        let offset = match cfg.offset_step {
            0 => AMQPValue::LongString("first".into()),
            step => AMQPValue::LongLongInt((idx as u64 * step) as i64),
        };
        t.insert("x-stream-offset".into(), offset);
    }
    t
}

/// Ready-message counts of `perf-0` .. `perf-{queues-1}` (passive declares).
async fn queue_depths(channel: &Channel, queues: usize) -> lapin::Result<Vec<u64>> {
    let mut depths = Vec::with_capacity(queues);
    for i in 0..queues {
        let queue = channel
            .queue_declare(
                queue_name(i),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        depths.push(u64::from(queue.message_count()));
    }
    Ok(depths)
}

/// lapin reports a connection closed by the broker to a consumer delegate
/// only in some cases, so the main loop also polls every connection.
fn dead_link(what: &str, connection: &Connection, channel: &Channel) -> Option<String> {
    let status = connection.status();
    if !status.connected() {
        let state = if status.errored() {
            "failed"
        } else if status.closed() || status.closing() {
            "was closed"
        } else {
            "is not connected"
        };
        return Some(format!("{what}: connection {state}"));
    }
    if !channel.status().connected() {
        return Some(format!("{what}: channel was closed"));
    }
    None
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `--duration` ran out.
    Duration,
    /// `--pmessages`: everything published (and confirmed) and consumed.
    Done,
    /// `--until-empty`: the consumers drained their queues.
    Drained,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Duration => "duration",
            End::Done => "done",
            End::Drained => "drained",
        }
    }
}

struct Report {
    elapsed: Duration,
    end: End,
    totals: Totals,
    latency: Snapshot,
    broker: Option<BrokerMemory>,
    /// Ready messages in all perf queues at start and at the end, with
    /// `--keep-queues` (or at start with `--until-empty`).
    depth_start: Option<u64>,
    depth_end: Option<u64>,
}

/// Whether the run has reached its natural end (`--pmessages`,
/// `--until-empty`, or publish-only with `--pmessages`); if so, the
/// `now_ns`-style time of the last publish or delivery it waited for.
fn natural_end(
    cfg: &Config,
    producers: &[Arc<ProducerStats>],
    consumers: &[Arc<ConsumerStats>],
    depths_start: Option<&[u64]>,
    now_ns: u64,
) -> Option<u64> {
    let mut end_ns = 0;
    for p in producers {
        match p.finished_ns.load(Relaxed) {
            0 => return None,
            t => end_ns = end_ns.max(t),
        }
    }
    // Queue q gets producers i with i % queues == q, and consumers likewise.
    for q in 0..cfg.queues.min(consumers.len()) {
        let mut consumed = 0;
        let mut last = 0;
        for c in consumers.iter().skip(q).step_by(cfg.queues) {
            consumed += c.consumed.load(Relaxed);
            last = last.max(c.last_ns.load(Relaxed));
        }
        if cfg.until_empty {
            let fed = q < producers.len();
            let empty_at_start = depths_start.is_some_and(|d| d.get(q) == Some(&0));
            let drained = if consumed > 0 {
                now_ns.saturating_sub(last) >= 1_000_000_000
            } else {
                !fed && empty_at_start
            };
            if !drained {
                return None;
            }
        } else {
            let published: u64 = producers
                .iter()
                .skip(q)
                .step_by(cfg.queues)
                .map(|p| p.published.load(Relaxed))
                .sum();
            if consumed < published {
                return None;
            }
        }
        end_ns = end_ns.max(last);
    }
    Some(if end_ns == 0 { now_ns } else { end_ns })
}

/// Runs a producer or consumer as a task; its error (unless the run is
/// already stopping) ends the run, named by `who`.
fn spawn_reported<E: std::fmt::Display>(
    shared: &Arc<Shared>,
    who: String,
    task: impl Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<()> {
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if !shared.stopping() {
                shared.fail(format!("{who}: {e}"));
            }
        }
    })
}

async fn run(cfg: Config) -> Result<Report, String> {
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared::new());
    let mut broker = cfg.broker_pid.map(BrokerMemory::new);

    let (setup_conn, mut setup_channel) = setup_queues(&cfg)
        .await
        .map_err(|e| format!("setting up queues on {}: {e}", redact_uri(&cfg.uri)))?;
    let depths_start = if cfg.keep_queues || cfg.until_empty {
        Some(
            queue_depths(&setup_channel, cfg.queues)
                .await
                .map_err(|e| format!("checking the perf queues: {e}"))?,
        )
    } else {
        None
    };

    let producer_stats: Vec<Arc<ProducerStats>> = (0..cfg.producers)
        .map(|_| Arc::new(ProducerStats::default()))
        .collect();
    let mut producer_conns = Vec::with_capacity(cfg.producers);
    // Raw producers connect in their own tasks.
    for i in (0..cfg.producers).filter(|_| !cfg.raw) {
        let conn = connect(&cfg.uri, &format!("perf-producer-{i}"))
            .await
            .map_err(|e| format!("connecting producer {i}: {e}"))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("opening producer {i}'s channel: {e}"))?;
        if cfg.confirm > 0 {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("confirm.select on producer {i}: {e}"))?;
        }
        producer_conns.push((conn, channel));
    }

    let consumer_stats: Vec<Arc<ConsumerStats>> = (0..cfg.consumers)
        .map(|_| {
            Arc::new(ConsumerStats {
                consumed: AtomicU64::new(0),
                last_ns: AtomicU64::new(0),
                latency: Histogram::new(),
            })
        })
        .collect();
    if let Some(b) = &mut broker {
        b.sample();
    }
    // Kept queues may hold a backlog, delivered as soon as a consumer
    // subscribes: then the clock starts before the consumers do.
    let mut start = Instant::now();
    let mut consumers = Vec::with_capacity(cfg.consumers);
    let mut raw_consumers = Vec::new();
    for (i, stats) in consumer_stats.iter().enumerate().filter(|_| cfg.raw) {
        let c = raw::RawConsumer {
            idx: i,
            cfg: cfg.clone(),
            stats: stats.clone(),
            shared: shared.clone(),
        };
        raw_consumers.push(spawn_reported(
            &shared,
            format!("consumer {i}"),
            raw::consume(c),
        ));
    }
    for (i, stats) in consumer_stats.iter().enumerate().filter(|_| !cfg.raw) {
        let handle = start_consumer(i, &cfg, stats.clone(), shared.clone())
            .await
            .map_err(|e| format!("starting consumer {i}: {e}"))?;
        consumers.push(handle);
    }
    if !cfg.keep_queues {
        start = Instant::now();
    }

    let deadline = start + cfg.duration;
    let mut producers = Vec::with_capacity(cfg.producers);
    for i in (0..cfg.producers).filter(|_| cfg.raw) {
        let p = raw::RawProducer {
            idx: i,
            cfg: cfg.clone(),
            stats: producer_stats[i].clone(),
            shared: shared.clone(),
            start,
            deadline,
        };
        producers.push(spawn_reported(
            &shared,
            format!("producer {i}"),
            raw::produce(p),
        ));
    }
    for (i, (_, channel)) in producer_conns.iter().enumerate() {
        let ctx = ProducerCtx {
            channel: channel.clone(),
            queue: queue_name(i % cfg.queues),
            cfg: cfg.clone(),
            stats: producer_stats[i].clone(),
            shared: shared.clone(),
            start,
            deadline,
        };
        let run = async move {
            if ctx.cfg.confirm > 0 {
                produce_confirmed(ctx).await
            } else {
                produce_unconfirmed(ctx).await
            }
        };
        producers.push(spawn_reported(&shared, format!("producer {i}"), run));
    }

    // Whether the run can end before the deadline: producers that stop by
    // themselves (or none), and consumers that know when they are done.
    let finite = (cfg.pmessages > 0 || cfg.producers == 0)
        && (cfg.consumers == 0 || cfg.until_empty || (cfg.pmessages > 0 && cfg.producers > 0));
    let end_reason = if cfg.until_empty {
        End::Drained
    } else {
        End::Done
    };

    // Progress once a second, until the deadline, the natural end or the
    // first error. Once the producers are done, the end is checked often.
    let mut last_tick = start;
    let mut last_totals = Totals::default();
    let mut last_latency = Snapshot::new();
    let mut second = 1u64;
    let mut ended_ns = None;
    let failure = loop {
        let tick = (start + Duration::from_secs(second)).min(deadline);
        let awaiting = finite
            && producer_stats
                .iter()
                .all(|p| p.finished_ns.load(Relaxed) != 0);
        let wake = if awaiting {
            tick.min(Instant::now() + Duration::from_millis(10))
        } else {
            tick
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = shared.error_notify.notified() => {}
            _ = shared.done_notify.notified() => {}
        }
        let dead = shared.take_error().or_else(|| {
            let consumer_links = consumers
                .iter()
                .enumerate()
                .map(|(i, c)| dead_link(&format!("consumer {i}"), &c.connection, &c.channel));
            let producer_links = producer_conns
                .iter()
                .enumerate()
                .map(|(i, (conn, ch))| dead_link(&format!("producer {i}"), conn, ch));
            consumer_links.chain(producer_links).flatten().next()
        });
        if dead.is_some() {
            break dead;
        }
        if finite {
            ended_ns = natural_end(
                &cfg,
                &producer_stats,
                &consumer_stats,
                depths_start.as_deref(),
                shared.now_ns(),
            );
            if ended_ns.is_some() {
                break None;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        if now < tick {
            continue;
        }
        second = (now - start).as_secs() + 1;
        let t = totals(&producer_stats, &consumer_stats);
        let lat = latency_snapshot(&consumer_stats);
        let window = lat.since(&last_latency);
        let secs = (now - last_tick).as_secs_f64();
        let mut line = format!(
            "[{:>4.0}s] published {:>8.0} msg/s  consumed {:>8.0} msg/s",
            (now - start).as_secs_f64(),
            (t.published - last_totals.published) as f64 / secs,
            (t.consumed - last_totals.consumed) as f64 / secs,
        );
        if cfg.confirm > 0 {
            let _ = write!(
                line,
                "  confirmed {:>8.0} msg/s",
                (t.confirmed + t.nacked - last_totals.confirmed - last_totals.nacked) as f64 / secs
            );
        }
        if window.total() > 0 {
            let _ = write!(
                line,
                "  latency p50 {:.3} ms p99 {:.3} ms",
                ms(window.quantile(0.5)),
                ms(window.quantile(0.99))
            );
        }
        if let Some(rss) = broker.as_mut().and_then(BrokerMemory::sample) {
            let _ = write!(line, "  broker rss {:.1} MiB", mib(rss));
        }
        eprintln!("{line}");
        last_tick = now;
        last_totals = t;
        last_latency = lat;
    };

    // Freeze the figures at the end, then stop and clean up.
    let (elapsed, end) = match ended_ns {
        Some(ns) => (
            shared.instant_of(ns).saturating_duration_since(start),
            end_reason,
        ),
        None => (start.elapsed(), End::Duration),
    };
    let latency = latency_snapshot(&consumer_stats);
    let totals = totals(&producer_stats, &consumer_stats);
    if let Some(b) = &mut broker {
        b.sample();
    }
    shared.stopping.store(true, Relaxed);

    let grace = Duration::from_secs(2);
    for producer in producers {
        let abort = producer.abort_handle();
        if tokio::time::timeout(grace, producer).await.is_err() {
            abort.abort();
        }
    }
    for (conn, _) in &producer_conns {
        let _ = tokio::time::timeout(grace, conn.close(200, "perf done".into())).await;
    }
    for task in raw_consumers {
        // They ack what they got and close when they see the stop.
        let abort = task.abort_handle();
        if tokio::time::timeout(grace * 2, task).await.is_err() {
            abort.abort();
        }
    }
    for consumer in &mut consumers {
        if cfg.keep_queues {
            // The queues outlive the run: stop the deliveries and ack what
            // was delivered, so that only unconsumed messages stay queued.
            let cancel = consumer
                .channel
                .basic_cancel(consumer.tag.clone(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(grace, cancel).await;
            if let (Some(acks), Some(acker)) = (&consumer.acks, &mut consumer.acker) {
                acks.closing.store(true, Relaxed);
                acks.notify.notify_one();
                let _ = tokio::time::timeout(grace, acker).await;
            }
        }
        if let Some(acker) = &consumer.acker {
            acker.abort();
        }
        let _ =
            tokio::time::timeout(grace, consumer.connection.close(200, "perf done".into())).await;
    }
    let mut depth_end = None;
    if cfg.keep_queues {
        if !setup_channel.status().connected() {
            if let Ok(channel) = setup_conn.create_channel().await {
                setup_channel = channel;
            }
        }
        let depths = queue_depths(&setup_channel, cfg.queues);
        if let Ok(Ok(depths)) = tokio::time::timeout(Duration::from_secs(10), depths).await {
            depth_end = Some(depths.iter().sum());
        }
    } else {
        for i in 0..cfg.queues {
            if !setup_channel.status().connected() {
                match setup_conn.create_channel().await {
                    Ok(channel) => setup_channel = channel,
                    Err(e) => {
                        eprintln!("warning: could not delete the perf-* queues: {e}");
                        break;
                    }
                }
            }
            let delete = setup_channel.queue_delete(queue_name(i), QueueDeleteOptions::default());
            match tokio::time::timeout(Duration::from_secs(10), delete).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("warning: could not delete queue perf-{i}: {e}"),
                Err(_) => eprintln!("warning: could not delete queue perf-{i}: timed out"),
            }
        }
    }
    let _ = tokio::time::timeout(grace, setup_conn.close(200, "perf done".into())).await;

    match failure {
        Some(e) => Err(e),
        None => Ok(Report {
            elapsed,
            end,
            totals,
            latency,
            broker,
            depth_start: depths_start.map(|d| d.iter().sum()),
            depth_end,
        }),
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ack_mode(cfg: &Config) -> &'static str {
    match (cfg.no_ack, cfg.ack_multiple) {
        (true, _) => "auto",
        (false, true) => "manual-multiple",
        (false, false) => "manual",
    }
}

fn print_report(cfg: &Config, r: &Report) {
    let secs = r.elapsed.as_secs_f64();
    let t = &r.totals;
    let lat = &r.latency;
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    if cfg.json {
        let mut o = String::new();
        let _ = write!(
            o,
            "{{\"options\":{{\"uri\":{},\"producers\":{},\"consumers\":{},\"queues\":{},\
             \"size\":{},\"duration_s\":{},\"ack_mode\":\"{}\",\"prefetch\":{},\
             \"rate\":{},\"persistent\":{},\"confirm\":{},\"pipeline\":{},\
             \"pmessages\":{},\"keep_queues\":{},\"until_empty\":{},\"broker_pid\":{}}},",
            json_string(&redact_uri(&cfg.uri)),
            cfg.producers,
            cfg.consumers,
            cfg.queues,
            cfg.size,
            cfg.duration.as_secs_f64(),
            ack_mode(cfg),
            cfg.prefetch,
            cfg.rate,
            cfg.persistent,
            cfg.confirm,
            cfg.pipeline,
            cfg.pmessages,
            cfg.keep_queues,
            cfg.until_empty,
            cfg.broker_pid.map_or("null".to_owned(), |p| p.to_string()),
        );
        let _ = write!(
            o,
            "\"elapsed_s\":{:.3},\"end\":\"{}\",\"published\":{},\"published_rate\":{:.1},\
             \"consumed\":{},\"consumed_rate\":{:.1}",
            secs,
            r.end.as_str(),
            t.published,
            rate(t.published),
            t.consumed,
            rate(t.consumed),
        );
        if let Some(n) = r.depth_start {
            let _ = write!(o, ",\"queued_start\":{n}");
        }
        if let Some(n) = r.depth_end {
            let _ = write!(o, ",\"queued_end\":{n}");
        }
        if let Some(b) = &r.broker {
            let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
            let _ = write!(
                o,
                ",\"broker\":{{\"pid\":{},\"rss_start_kib\":{},\"rss_end_kib\":{},\
                 \"rss_peak_kib\":{},\"vm_hwm_kib\":{},\"samples\":{},\
                 \"cpu_s\":{},\"cpu_us_per_msg\":{}}}",
                b.pid,
                opt(b.start_kib),
                opt(b.last_kib),
                b.peak_kib,
                opt(b.hwm_kib),
                b.samples,
                b.cpu_used()
                    .map_or("null".to_owned(), |c| format!("{c:.2}")),
                b.cpu_used().filter(|_| cpu_messages(t) > 0).map_or(
                    "null".to_owned(),
                    |c| format!("{:.3}", c * 1e6 / cpu_messages(t) as f64)
                ),
            );
        }
        if cfg.confirm > 0 {
            let _ = write!(
                o,
                ",\"confirmed\":{},\"confirmed_rate\":{:.1},\"nacked\":{}",
                t.confirmed,
                rate(t.confirmed),
                t.nacked
            );
        }
        let _ = write!(
            o,
            ",\"latency_ms\":{{\"samples\":{},\"mean\":{:.3},\"p50\":{:.3},\"p75\":{:.3},\
             \"p95\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3}}}}}",
            lat.total(),
            ms(lat.mean()),
            ms(lat.quantile(0.5)),
            ms(lat.quantile(0.75)),
            ms(lat.quantile(0.95)),
            ms(lat.quantile(0.99)),
            ms(lat.quantile(0.999)),
            ms(lat.max),
        );
        println!("{o}");
        return;
    }
    let rate_limit = if cfg.rate == 0 {
        "unlimited".to_owned()
    } else {
        format!("{} msg/s per producer", cfg.rate)
    };
    println!("perf against {}", redact_uri(&cfg.uri));
    println!(
        "  options:   {} producer(s), {} consumer(s), {} queue(s), {} B bodies, \
         {:.1} s, ack {}, prefetch {}, rate {}, {}, confirm {}, pipeline {}",
        cfg.producers,
        cfg.consumers,
        cfg.queues,
        cfg.size,
        cfg.duration.as_secs_f64(),
        ack_mode(cfg),
        cfg.prefetch,
        rate_limit,
        if cfg.persistent {
            "persistent"
        } else {
            "transient"
        },
        if cfg.confirm == 0 {
            "off".to_owned()
        } else {
            cfg.confirm.to_string()
        },
        cfg.pipeline,
    );
    let mut extra = Vec::new();
    if cfg.pmessages > 0 {
        extra.push(format!("{} msgs per producer", cfg.pmessages));
    }
    if cfg.until_empty {
        extra.push("until empty".to_owned());
    }
    if cfg.keep_queues {
        extra.push("keep queues".to_owned());
    }
    if !extra.is_empty() {
        println!("             {}", extra.join(", "));
    }
    match r.end {
        End::Duration => println!("  elapsed:   {secs:.2} s"),
        End::Done => {
            let what = match (cfg.confirm > 0, cfg.consumers > 0) {
                (false, false) => "published",
                (true, false) => "published and confirmed",
                (false, true) => "published and consumed",
                (true, true) => "published, confirmed and consumed",
            };
            println!("  elapsed:   {secs:.2} s  (all {what})");
        }
        End::Drained => {
            println!("  elapsed:   {secs:.2} s  (queues drained; up to the last delivery)")
        }
    }
    match (r.depth_start, r.depth_end) {
        (Some(a), Some(b)) => println!("  queued:    {a:>10} msgs at start, {b} at the end"),
        (Some(a), None) => println!("  queued:    {a:>10} msgs at start"),
        _ => {}
    }
    println!(
        "  published: {:>10} msgs  {:>10.1} msg/s",
        t.published,
        rate(t.published)
    );
    if cfg.confirm > 0 {
        println!(
            "  confirmed: {:>10} msgs  {:>10.1} msg/s  ({} nacked)",
            t.confirmed,
            rate(t.confirmed),
            t.nacked
        );
    }
    println!(
        "  consumed:  {:>10} msgs  {:>10.1} msg/s",
        t.consumed,
        rate(t.consumed)
    );
    if lat.total() == 0 {
        println!("  latency:   no samples");
    } else {
        println!(
            "  latency:   p50 {:.3} ms  p75 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  \
             p99.9 {:.3} ms  max {:.3} ms  mean {:.3} ms  ({} samples)",
            ms(lat.quantile(0.5)),
            ms(lat.quantile(0.75)),
            ms(lat.quantile(0.95)),
            ms(lat.quantile(0.99)),
            ms(lat.quantile(0.999)),
            ms(lat.max),
            ms(lat.mean()),
            lat.total(),
        );
    }
    if let Some(b) = &r.broker {
        let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MiB", mib(v)));
        println!(
            "  broker:    pid {}  rss start {}, end {}, peak {} ({} samples)  VmHWM {}",
            b.pid,
            opt(b.start_kib),
            opt(b.last_kib),
            opt((b.samples > 0).then_some(b.peak_kib)),
            b.samples,
            opt(b.hwm_kib),
        );
        if let Some(cpu) = b.cpu_used() {
            let per = match cpu_messages(t) {
                0 => String::new(),
                n => format!(", {:.3} µs per message", cpu * 1e6 / n as f64),
            };
            println!("  broker cpu: {cpu:.2} s{per}");
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(ParseOutcome::Run(cfg)) => cfg,
        Ok(ParseOutcome::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(cfg.clone()).await {
        Ok(report) => {
            print_report(&cfg, &report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            assert!(hi - lo <= lo / 32, "bucket {i} too wide");
            prev_hi = Some(hi);
        }
        assert_eq!(prev_hi, Some(u64::MAX));
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let mut s = Snapshot::new();
        h.add_to(&mut s);
        let p50 = s.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(s.max, 1_000_000);
        assert!(s.quantile(1.0) <= 1_000_000);
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_uri("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_uri("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn parses_flags() {
        let args = [
            "--producers",
            "3",
            "--size=64",
            "--no-ack",
            "--confirm",
            "10",
        ];
        let Ok(ParseOutcome::Run(cfg)) = parse_args(args.iter().map(|s| s.to_string())) else {
            panic!("parse failed");
        };
        assert_eq!(cfg.producers, 3);
        assert_eq!(cfg.size, 64);
        assert!(cfg.no_ack);
        assert_eq!(cfg.confirm, 10);
        assert!(parse_args(["--bogus".to_string()]).is_err());
        assert!(parse_args(["--queues".to_string(), "0".to_string()]).is_err());
    }

    fn parse(args: &[&str]) -> Result<ParseOutcome, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_run_shape_flags() {
        let Ok(ParseOutcome::Run(cfg)) = parse(&[
            "--producers=0",
            "--keep-queues",
            "--until-empty",
            "--pmessages",
            "5",
        ]) else {
            panic!("parse failed");
        };
        assert_eq!(cfg.producers, 0);
        assert!(cfg.keep_queues && cfg.until_empty);
        assert_eq!(cfg.pmessages, 5);
        assert!(cfg.broker_pid.is_none());
        let Ok(ParseOutcome::Run(cfg)) = parse(&["--consumers", "0"]) else {
            panic!("parse failed");
        };
        assert_eq!((cfg.producers, cfg.consumers), (1, 0));
        assert!(parse(&["--producers", "0", "--consumers", "0"]).is_err());
        assert!(parse(&["--consumers", "0", "--until-empty"]).is_err());
        assert!(parse(&["--keep-queues=yes"]).is_err());
        let me = std::process::id().to_string();
        let Ok(ParseOutcome::Run(cfg)) = parse(&["--broker-pid", &me]) else {
            panic!("parse failed");
        };
        assert_eq!(cfg.broker_pid, Some(std::process::id()));
        let mut mem = BrokerMemory::new(std::process::id());
        assert!(mem.sample().is_some_and(|kib| kib > 0));
        assert!(mem.peak_kib > 0 && mem.hwm_kib.is_some());
    }

    fn producer(published: u64, finished_ns: u64) -> Arc<ProducerStats> {
        let p = ProducerStats::default();
        p.published.store(published, Relaxed);
        p.finished_ns.store(finished_ns, Relaxed);
        Arc::new(p)
    }

    fn consumer(consumed: u64, last_ns: u64) -> Arc<ConsumerStats> {
        Arc::new(ConsumerStats {
            consumed: AtomicU64::new(consumed),
            last_ns: AtomicU64::new(last_ns),
            latency: Histogram::new(),
        })
    }

    #[test]
    fn natural_end_rules() {
        const S: u64 = 1_000_000_000;
        let cfg = Config {
            queues: 2,
            pmessages: 10,
            ..Config::default()
        };
        // Publish-only: done when every producer is.
        let ps = [producer(10, 5 * S), producer(10, 7 * S)];
        assert_eq!(natural_end(&cfg, &ps, &[], None, 9 * S), Some(7 * S));
        let unfinished = [producer(10, 5 * S), producer(3, 0)];
        assert_eq!(natural_end(&cfg, &unfinished, &[], None, 9 * S), None);
        // One consumer on perf-0 only waits for perf-0's producer.
        let cs = [consumer(9, 8 * S)];
        assert_eq!(natural_end(&cfg, &ps, &cs, None, 9 * S), None);
        let cs = [consumer(10, 8 * S)];
        assert_eq!(natural_end(&cfg, &ps, &cs, None, 9 * S), Some(8 * S));

        // --until-empty: idle for 1 s after a delivery, or empty and unfed.
        let cfg = Config {
            producers: 0,
            queues: 2,
            until_empty: true,
            ..Config::default()
        };
        let cs = [consumer(100, 8 * S), consumer(0, 0)];
        let depths = [100, 0];
        assert_eq!(
            natural_end(&cfg, &[], &cs, Some(&depths), 8 * S + S / 2),
            None
        );
        assert_eq!(
            natural_end(&cfg, &[], &cs, Some(&depths), 9 * S),
            Some(8 * S)
        );
        let depths = [100, 1];
        assert_eq!(natural_end(&cfg, &[], &cs, Some(&depths), 20 * S), None);
        let cs = [consumer(0, 0)];
        assert_eq!(
            natural_end(&cfg, &[], &cs, Some(&[0, 0]), 3 * S),
            Some(3 * S)
        );
        assert_eq!(natural_end(&cfg, &[], &cs, Some(&[5, 0]), 3 * S), None);
    }
}
