//! Stream queues (`x-queue-type: stream`), RabbitMQ's append-only queue
//! type over AMQP 0-9-1: the declare's arguments and their checks, the
//! consumer's `x-stream-offset`, and [`StreamQueue`], the queue kind a
//! [`Queue`] hands its publishes, consumers and acks to.
//!
//! Publishes append to the queue's [`StreamLog`]; the log is written out
//! and fsynced by a job on the group-commit thread, which then makes the
//! new offsets readable and wakes the readers (so confirms and deliveries
//! both wait for durability, as in RabbitMQ, where they wait for the
//! replicas). Each consumer is a task with its own [`Cursor`]: it reads
//! up to its credit (the consumer prefetch) from disk on the blocking
//! pool, adds the `x-stream-offset` header, and pushes the deliveries to
//! its connection's outbox. An ack only gives credit back; reading never
//! removes anything.
//!
//! Filtering (RabbitMQ 3.13's `x-stream-filter-value` header and
//! `x-stream-filter` / `x-stream-match-unfiltered` consumer arguments) is
//! exact: the log stores each message's filter value and a per-chunk
//! summary, and a consumer's reader passes over what it does not want
//! without delivering it (no credit taken). Retention and segment size
//! follow the stream's arguments and its policies (a policy's value wins,
//! as in RabbitMQ 3.13). Publishers are held back (the queue's `flow`
//! state) while more than the configured bytes wait for the flusher.

use super::outbox::{Delivery, OutboxItem};
use super::persist::Persistence;
use super::policy::Applied;
use super::queue::{ConsumeRequest, ConsumerHandle, Queue, QueueOptions};
use super::{BrokerError, ErrorKind, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};
use warren_exchanges::{Table, Value};
use warren_queues::stream::{
    Cursor, Filter, Record, StartAt, StreamLog, StreamSettings, StreamStats,
};
use warren_queues::{ConsumerId, Message, QueuedMessage};

mod groups;
pub mod super_stream;
use groups::Groups;
pub use groups::GROUP_KEY;
pub use super_stream::SUPER_STREAM_KEY;

/// The consumer argument and delivery header carrying an offset.
pub const OFFSET_KEY: &str = "x-stream-offset";
/// The message header a publisher sets a message's filter value in.
pub const FILTER_VALUE_KEY: &str = "x-stream-filter-value";
/// The consumer arguments of filtering (RabbitMQ 3.13).
pub const FILTER_KEY: &str = "x-stream-filter";
pub const MATCH_UNFILTERED_KEY: &str = "x-stream-match-unfiltered";
/// RabbitMQ 3.13's Bloom filter size argument (checked, not used).
const FILTER_SIZE_KEY: &str = "x-stream-filter-size-bytes";

/// Arguments RabbitMQ 3.10 knows for other queue types and refuses on a
/// stream ("invalid arg ... of queue type rabbit_stream_queue").
const REFUSED_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-quorum-initial-group-size",
    "x-queue-master-locator",
    "x-delivery-limit",
];

/// Arguments compared on a redeclare of a stream, beyond the common ones.
pub const CHECKED_STREAM_ARGS: &[&str] = &["x-max-age", "x-stream-max-segment-size-bytes"];

/// A delivery's `seq` is the consumer's slot above this bit and the
/// offset below: an ack finds whose credit it returns without a record
/// per delivery.
const SLOT_SHIFT: u32 = 40;
const OFFSET_MASK: u64 = (1 << SLOT_SHIFT) - 1;
/// At most this many deliveries per read (credit permitting).
const READ_BATCH: u32 = 512;
/// And about this many bytes.
const READ_BYTES: usize = 1 << 20;
/// A reader hands out at most a window of body bytes that its consumer's
/// socket has not taken yet ([`write_window`]): however large the
/// prefetch, a stream consumer costs in memory its window (twice: the
/// messages and their frames) and one chunk, not its credit's worth of
/// messages (100 consumers with prefetch 1,000 of 4 KiB messages held
/// 800 MB when their client read slowly). The node's readers share
/// [`WINDOW_BUDGET`]; each gets at least [`WINDOW_MIN`] (enough to keep
/// its socket busy) and at most [`WINDOW_MAX`] (a lone replay).
const WINDOW_BUDGET: u64 = 16 << 20;
const WINDOW_MIN: u64 = 128 << 10;
const WINDOW_MAX: u64 = 1 << 20;

/// The write window of each of `readers` stream readers.
fn write_window(readers: u32) -> u64 {
    (WINDOW_BUDGET / u64::from(readers.max(1))).clamp(WINDOW_MIN, WINDOW_MAX)
}

/// Counts a running reader in the node's total while it lives.
struct ReaderCount(Arc<Persistence>);

impl ReaderCount {
    fn new(p: Arc<Persistence>) -> Self {
        p.stream_readers.fetch_add(1, Ordering::Relaxed);
        ReaderCount(p)
    }

    fn window(&self) -> u64 {
        write_window(self.0.stream_readers.load(Ordering::Relaxed))
    }
}

impl Drop for ReaderCount {
    fn drop(&mut self) {
        self.0.stream_readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether declare arguments ask for a stream.
pub fn is_stream(args: &Table) -> bool {
    args.get("x-queue-type").and_then(Value::as_str) == Some("stream")
}

fn invalid_arg(key: &str, queue: &str, vhost: &str, why: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::PreconditionFailed,
        format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"),
    )
}

/// RabbitMQ's units for `x-max-age` and interval offsets, in ms.
fn unit_ms(unit: &str) -> Option<u64> {
    const S: u64 = 1000;
    const D: u64 = 24 * 3600 * S;
    Some(match unit {
        "Y" => 365 * D,
        "M" => 30 * D,
        "D" => D,
        "h" => 3600 * S,
        "m" => 60 * S,
        "s" => S,
        _ => return None,
    })
}

/// `7D`, `12h`, `30m`…: a positive count and one unit (RabbitMQ's
/// `check_max_age`); the length in ms.
pub fn parse_age(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let ms = n.checked_mul(unit_ms(&s[digits..])?)?;
    (ms > 0).then_some(ms)
}

/// A non-negative integer argument, RabbitMQ's texts for the rest.
fn non_negative(key: &str, v: &Value, queue: &str, vhost: &str) -> Result<u64> {
    match v.as_i64().filter(|_| !matches!(v, Value::Timestamp(_))) {
        Some(n) if n >= 0 => Ok(n as u64),
        Some(n) => Err(invalid_arg(
            key,
            queue,
            vhost,
            &format!("{{value_negative,{n}}}"),
        )),
        None => Err(invalid_arg(
            key,
            queue,
            vhost,
            &format!("\"expected integer, got {}\"", v.type_name()),
        )),
    }
}

/// Checks a stream declare as RabbitMQ 3.10 does (argument values, then
/// arguments other queue types take, then the flags) and returns the log's
/// settings.
pub fn check_declare(queue: &str, vhost: &str, opts: &QueueOptions) -> Result<StreamSettings> {
    let args = &opts.arguments;
    let mut settings = StreamSettings::default();
    if let Some(v) = args.get("x-max-length-bytes") {
        settings.max_bytes = Some(non_negative("x-max-length-bytes", v, queue, vhost)?);
    }
    if let Some(v) = args.get("x-stream-max-segment-size-bytes") {
        let n = non_negative("x-stream-max-segment-size-bytes", v, queue, vhost)?;
        settings.max_segment_bytes = n.max(1);
    }
    if let Some(v) = args.get("x-max-age") {
        let Some(s) = v.as_str() else {
            return Err(invalid_arg(
                "x-max-age",
                queue,
                vhost,
                &format!("{{unacceptable_type,{}}}", v.type_name()),
            ));
        };
        // RabbitMQ 3.10 answers a value without a unit digit-run
        // ("bad") with a crash (541); Warren refuses it as it refuses "10".
        let ms = parse_age(s)
            .ok_or_else(|| invalid_arg("x-max-age", queue, vhost, "invalid_max_age"))?;
        settings.max_age_ms = Some(ms);
    }
    // Warren's filter is exact and has no size to set, but the value is
    // checked as RabbitMQ 3.13 checks it: first its type, with the other
    // values (`rabbit_amqqueue:declare_args`, check_non_neg_int_arg), ...
    let filter_size = args
        .get(FILTER_SIZE_KEY)
        .map(|v| non_negative(FILTER_SIZE_KEY, v, queue, vhost))
        .transpose()?;
    for key in REFUSED_ARGS {
        if args.get(key).is_some() {
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_stream_queue"),
            ));
        }
    }
    let property = if opts.auto_delete {
        Some("auto-delete")
    } else if opts.exclusive {
        Some("exclusive-owner")
    } else if !opts.durable {
        Some("non-durable")
    } else {
        None
    };
    if let Some(p) = property {
        return Err(BrokerError::new(
            ErrorKind::PreconditionFailed,
            format!("invalid property '{p}' for queue '{queue}' in vhost '{vhost}'"),
        ));
    }
    // ... then its range, after the flags (rabbit_stream_queue's
    // check_filter_size; its text has the two spaces).
    if filter_size.is_some_and(|n| !(16..=255).contains(&n)) {
        return Err(BrokerError::new(
            ErrorKind::PreconditionFailed,
            format!("Invalid value for  {FILTER_SIZE_KEY}"),
        ));
    }
    Ok(settings)
}

/// Where a consumer starts, from its `x-stream-offset` (default `next`):
/// `first`, `last`, `next`, an offset, a timestamp (seconds) or an
/// interval back from `now_ms` (`1D`, `30m`).
pub fn start_at(args: &Table, queue: &str, vhost: &str, now_ms: u64) -> Result<StartAt> {
    let Some(v) = args.get(OFFSET_KEY) else {
        return Ok(StartAt::Next);
    };
    let at = match v {
        Value::Timestamp(secs) => Some(StartAt::Timestamp((secs.saturating_mul(1000)) as i64)),
        _ => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(StartAt::Offset(n.max(0) as u64)),
            (_, Some("first")) => Some(StartAt::First),
            (_, Some("last")) => Some(StartAt::Last),
            (_, Some("next")) => Some(StartAt::Next),
            (_, Some(s)) => {
                parse_age(s).map(|ms| StartAt::Timestamp(now_ms.saturating_sub(ms) as i64))
            }
            _ => None,
        },
    };
    // RabbitMQ 3.10 crashes the channel (541) on a value it cannot read;
    // Warren refuses it with a 406 naming the argument.
    at.ok_or_else(|| invalid_arg(OFFSET_KEY, queue, vhost, &format!("{v}")))
}

/// A consumer's filter from its arguments, as RabbitMQ 3.13 reads them
/// (`rabbit_stream_queue:filter_spec`, no type checks): `x-stream-filter`
/// a long string (one value) or an array (its long strings; other
/// elements ignored), any other type meaning no filter; then
/// `x-stream-match-unfiltered` if a boolean, else `false`, and ignored
/// without a filter. An empty value stands for "no value" (osiris hashes
/// it to the unfiltered bit). An array without a string crashes
/// RabbitMQ's reader (`osiris_bloom:init_matcher` wants a non-empty
/// list); Warren refuses it with a 406 naming the argument.
pub fn filter_of(args: &Table, queue: &str, vhost: &str) -> Result<Option<Filter>> {
    let Some(arg) = args.get(FILTER_KEY) else {
        return Ok(None);
    };
    let mut values = match arg {
        Value::LongString(v) => vec![v.clone()],
        Value::Array(vs) => vs
            .iter()
            .filter_map(|v| match v {
                Value::LongString(v) => Some(v.clone()),
                _ => None,
            })
            .collect(),
        _ => return Ok(None),
    };
    if values.is_empty() {
        return Err(invalid_arg(FILTER_KEY, queue, vhost, "no filter value"));
    }
    let empty = values.iter().any(Vec::is_empty);
    values.retain(|v| !v.is_empty());
    let match_unfiltered =
        empty || matches!(args.get(MATCH_UNFILTERED_KEY), Some(Value::Bool(true)));
    Ok(Some(Filter {
        values,
        match_unfiltered,
    }))
}

/// A stream's effective settings: those of its arguments (`base`), with
/// each of `max-length-bytes`, `max-age` and
/// `stream-max-segment-size-bytes` the policies set taking precedence
/// (RabbitMQ 3.13's `update_stream_conf`: `policy_precedence`; the
/// operator policy's `max-length-bytes` merged in, the lower winning).
pub fn effective_settings(base: StreamSettings, applied: &Applied) -> StreamSettings {
    let num = |key: &str| applied.get(key).and_then(|(v, _)| v.as_u64());
    let mut s = base;
    if let Some(n) = num("max-length-bytes") {
        s.max_bytes = Some(n);
    }
    if let Some(ms) = applied
        .get("max-age")
        .and_then(|(v, _)| v.as_str())
        .and_then(parse_age)
    {
        s.max_age_ms = Some(ms);
    }
    if let Some(n) = num("stream-max-segment-size-bytes") {
        s.max_segment_bytes = n.max(1);
    }
    s
}

/// Publisher back-pressure: set while too many bytes wait for the
/// flusher; the queue's publishers pause reading until it clears.
#[derive(Debug, Default)]
struct Flow {
    blocked: AtomicBool,
    resumed: Notify,
    /// Times it was set (management API).
    pauses: AtomicU64,
}

impl Flow {
    fn release(&self) {
        if self.blocked.swap(false, Ordering::AcqRel) {
            self.resumed.notify_waiters();
        }
    }
}

/// One consumer of a stream: its credit and its reader's wake-up.
#[derive(Debug)]
struct StreamConsumer {
    slot: u32,
    handle: Arc<ConsumerHandle>,
    exclusive: bool,
    /// Deliveries it may still get before acks return credit.
    credit: AtomicU32,
    /// Body bytes handed to its connection and not yet written to the
    /// socket ([`write_window`]).
    unwritten: AtomicU64,
    /// Acks (credit back) and the cancel wake the reader.
    wake: Notify,
    cancelled: AtomicBool,
    /// The next offset its reader will hand out (management API).
    position: AtomicU64,
    /// Its consumer group ([`GROUP_KEY`]), if any.
    group: Option<String>,
    /// Its own `x-stream-offset`, if given (a group member waiting to
    /// read starts there instead of at the group's committed offset).
    explicit: Option<StartAt>,
    /// Its `x-stream-filter`, if any.
    filter: Option<Arc<Filter>>,
    /// Whether it reads, and the cursor a group member is handed when it
    /// becomes (again) its group's reader for this stream.
    reader: Mutex<ReaderState>,
}

/// What a consumer's reader task is told by rebalances.
#[derive(Debug)]
struct ReaderState {
    /// Reads (a group member: is its group's reader for this stream).
    active: bool,
    /// A cursor to read from, replacing the reader's own.
    handoff: Option<Cursor>,
}

impl StreamConsumer {
    fn reader(&self) -> MutexGuard<'_, ReaderState> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes it its group's reader from `cursor`, or stops its reading.
    fn set_reader(&self, cursor: Option<Cursor>) {
        {
            let mut r = self.reader();
            r.active = cursor.is_some();
            r.handoff = cursor;
        }
        self.wake.notify_one();
    }

    /// Applies a rebalance to the reader's `cursor` (a new one handed over,
    /// or none when it no longer reads).
    fn take_reader(&self, cursor: &mut Option<Cursor>) {
        let mut r = self.reader();
        if let Some(h) = r.handoff.take() {
            *cursor = Some(h);
        }
        if !r.active {
            *cursor = None;
        }
    }

    /// Whether a rebalance happened since the reader last looked: what it
    /// read meanwhile is not delivered (the new reader reads it).
    fn reader_changed(&self) -> bool {
        let r = self.reader();
        !r.active || r.handoff.is_some()
    }

    /// The order members of a super stream group are ranked in, the same
    /// in every partition: connection, channel, consumer tag.
    fn rank(&self) -> (u64, u16, &str) {
        (self.handle.conn, self.handle.session, &self.handle.tag)
    }
}

/// What the management API shows of a consumer group.
#[derive(Debug, Clone)]
pub struct StreamGroupInfo {
    pub name: String,
    /// Every offset below it acknowledged.
    pub committed: u64,
    /// The reading member's consumer tag.
    pub active: Option<String>,
    pub members: usize,
    /// The stream's index in a super stream the group consumes
    /// ([`SUPER_STREAM_KEY`]).
    pub partition: Option<u32>,
}

/// What the management API shows of a stream consumer.
#[derive(Debug, Clone)]
pub struct StreamConsumerInfo {
    pub tag: String,
    pub conn: u64,
    pub session: u16,
    pub position: u64,
    pub credit: u32,
}

/// A stream queue's state: its log, the committed tail readers wait on,
/// and its consumers.
pub struct StreamQueue {
    log: Arc<StreamLog>,
    persist: Arc<Persistence>,
    tail: Arc<watch::Sender<u64>>,
    consumers: Mutex<HashMap<u32, Arc<StreamConsumer>>>,
    next_slot: AtomicU32,
    /// Consumer groups; locked after `consumers` when both are needed.
    groups: Arc<Mutex<Groups>>,
    /// A write of the groups' offsets is asked for and not yet started.
    groups_wanted: Arc<AtomicBool>,
    /// Set by [`StreamQueue::delete`]: nothing is written any more.
    deleted: Arc<AtomicBool>,
    /// The settings from the declare's arguments (policies go over them).
    base: StreamSettings,
    flow: Arc<Flow>,
    /// Unsynced bytes past which publishers are held back.
    unsynced_max: u64,
}

impl StreamQueue {
    /// Recovers the log of the stream with disk id `id` (blocking:
    /// start-up calls it).
    pub fn open(
        persist: Arc<Persistence>,
        id: u64,
        settings: StreamSettings,
    ) -> std::io::Result<Self> {
        let dir = Self::dir(&persist, id);
        let log = StreamLog::open(&dir, settings)?;
        log.apply_retention(super::registry::unix_ms() as i64);
        let groups = Groups::load(&dir)?;
        Ok(Self::over(persist, log, groups))
    }

    /// A new stream's (empty) log; no disk I/O until its first sync.
    pub fn create(persist: Arc<Persistence>, id: u64, settings: StreamSettings) -> Self {
        let log = StreamLog::create(&Self::dir(&persist, id), settings);
        Self::over(persist, log, Groups::default())
    }

    /// `streams/<disk id>` in the data directory.
    fn dir(persist: &Persistence, id: u64) -> std::path::PathBuf {
        persist.data_dir.join("streams").join(id.to_string())
    }

    fn over(persist: Arc<Persistence>, log: StreamLog, groups: Groups) -> Self {
        let (tail, _) = watch::channel(log.committed());
        let (base, unsynced_max) = (log.settings(), persist.stream_unsynced_bytes.max(1));
        StreamQueue {
            base,
            flow: Arc::default(),
            unsynced_max,
            log: Arc::new(log),
            persist,
            tail: Arc::new(tail),
            consumers: Mutex::default(),
            next_slot: AtomicU32::new(0),
            groups: Arc::new(Mutex::new(groups)),
            groups_wanted: Arc::default(),
            deleted: Arc::default(),
        }
    }

    fn groups(&self) -> MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has the group-commit thread write the groups' offsets (once per
    /// flush however many acks moved them).
    fn request_groups_write(&self) {
        if self.groups_wanted.swap(true, Ordering::AcqRel) {
            return;
        }
        let (groups, wanted, deleted) = (
            self.groups.clone(),
            self.groups_wanted.clone(),
            self.deleted.clone(),
        );
        let dir = self.log.dir().to_owned();
        self.persist.flusher.sync_job(Box::new(move || {
            wanted.store(false, Ordering::Release);
            if deleted.load(Ordering::Acquire) {
                return true;
            }
            let offsets = groups.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
            match groups::store(&dir, &offsets) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot write a stream's group offsets");
                    groups.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
                    false
                }
            }
        }));
    }

    fn consumers(&self) -> MutexGuard<'_, HashMap<u32, Arc<StreamConsumer>>> {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a routed message; the caller's confirm waits for the flush
    /// that syncs it (the sync is asked for by the first append after one).
    /// Past the unsynced-bytes bound the queue holds its publishers back.
    pub fn publish(&self, m: &Message, now_ms: u64) {
        let rec = Record {
            persistent: m.persistent,
            exchange: m.exchange(),
            routing_key: m.routing_key(),
            properties: m.properties(),
            body: m.body(),
            // An empty value is none (as osiris hashes it).
            filter: super::properties::string_header(m.properties(), FILTER_VALUE_KEY)
                .filter(|v| !v.is_empty()),
        };
        let (_, ask, unsynced) = self.log.append_counted(&rec, now_ms as i64);
        if ask {
            let (log, tail, flow) = (self.log.clone(), self.tail.clone(), self.flow.clone());
            let low = self.unsynced_max / 2;
            self.persist.flusher.sync_job(Box::new(move || {
                let r = log.sync(super::registry::unix_ms() as i64);
                // After a failure too: the publishes were nacked, and
                // the next one asks for the sync that retries.
                if r.is_err() || log.unsynced_bytes() <= low {
                    flow.release();
                }
                match r {
                    Ok(committed) => {
                        tail.send_replace(committed);
                        true
                    }
                    Err(e) => {
                        tracing::error!(dir = %log.dir().display(), error = %e, "cannot write a stream; its publishes are nacked");
                        false
                    }
                }
            }));
        }
        if unsynced > self.unsynced_max {
            if !self.flow.blocked.swap(true, Ordering::AcqRel) {
                self.flow.pauses.fetch_add(1, Ordering::Relaxed);
            }
            // The flush may have finished between the check and the
            // store: look again, so the flag is never left set with
            // nothing left to clear it.
            if self.log.unsynced_bytes() <= self.unsynced_max / 2 {
                self.flow.release();
            }
        }
    }

    /// How many times the stream has held its publishers back.
    pub fn flow_pauses(&self) -> u64 {
        self.flow.pauses.load(Ordering::Relaxed)
    }

    /// Whether publishers should pause (too much waits for the flusher).
    pub fn flow_blocked(&self) -> bool {
        self.flow.blocked.load(Ordering::Acquire)
    }

    /// Resolves once publishers may go on. No wake-up is lost: the
    /// future is registered before the flag is checked.
    pub async fn flow_resumed(&self) {
        let notified = self.flow.resumed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.flow_blocked() && !self.deleted.load(Ordering::Acquire) {
            notified.await;
        }
    }

    /// The policies that apply changed (or were first matched): the log
    /// takes the new retention and segment size, and retention runs at
    /// once (on the group-commit thread: it deletes files).
    pub fn apply_policies(&self, applied: &Applied) {
        let settings = effective_settings(self.base, applied);
        if settings == self.log.settings() {
            return;
        }
        tracing::debug!(dir = %self.log.dir().display(), ?settings, "stream settings changed");
        self.log.set_settings(settings);
        let log = self.log.clone();
        self.persist.flusher.sync_job(Box::new(move || {
            log.apply_retention(super::registry::unix_ms() as i64);
            true
        }));
    }

    /// Adds a consumer (manual acks and a consumer prefetch required, as
    /// RabbitMQ) reading from its `x-stream-offset`; `partition` is this
    /// stream's index in the super stream a group member consumes.
    pub fn consume(
        &self,
        queue: &Arc<Queue>,
        req: ConsumeRequest,
        partition: Option<u32>,
    ) -> Result<()> {
        let rs = || format!("queue '{}' in vhost '{}'", queue.name, queue.vhost);
        if req.no_ack {
            return Err(BrokerError::new(
                ErrorKind::NotImplemented,
                format!(
                    "automatic acknowledgement not supported by stream queues {}",
                    rs()
                ),
            ));
        }
        if req.prefetch == 0 {
            return Err(BrokerError::new(
                ErrorKind::PreconditionFailed,
                format!("consumer prefetch count is not set for '{}'", rs()),
            ));
        }
        let at = start_at(
            &req.arguments,
            &queue.name,
            &queue.vhost,
            super::registry::unix_ms(),
        )?;
        let explicit = req.arguments.get(OFFSET_KEY).map(|_| at);
        let filter = filter_of(&req.arguments, &queue.name, &queue.vhost)?.map(Arc::new);
        let group = match req.arguments.get(GROUP_KEY) {
            None => None,
            Some(v) => match v.as_str() {
                Some(g) if !g.is_empty() => Some(g.to_owned()),
                _ => {
                    let why = format!("{v}");
                    return Err(invalid_arg(GROUP_KEY, &queue.name, &queue.vhost, &why));
                }
            },
        };
        let handle = Arc::new(ConsumerHandle {
            id: req.id,
            tag: req.tag,
            conn: req.conn,
            session: req.session,
            outbox: req.outbox,
            channel_limit: req.channel_limit,
        });
        let c = {
            let mut cons = self.consumers();
            if cons.values().any(|c| c.exclusive) || (req.exclusive && !cons.is_empty()) {
                return Err(BrokerError::new(
                    ErrorKind::AccessRefused,
                    format!(
                        "queue '{}' in vhost '{}' in exclusive use",
                        queue.name, queue.vhost
                    ),
                ));
            }
            // What a filtering member passes over counts as acknowledged for
            // its whole group, so every member must want the same messages.
            if let Some(name) = &group {
                let other = |c: &&Arc<StreamConsumer>| c.group.as_ref() == Some(name);
                if let Some(o) = cons.values().find(other) {
                    if !same_filter(o.filter.as_deref(), filter.as_deref()) {
                        return Err(BrokerError::new(
                            ErrorKind::PreconditionFailed,
                            format!(
                                "consumer group '{name}' reads {} with another x-stream-filter",
                                rs()
                            ),
                        ));
                    }
                }
            }
            let mut slot = self.next_slot.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
            while cons.contains_key(&slot) {
                slot = self.next_slot.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
            }
            // A group member reads when a rebalance hands it a cursor.
            let cursor = group.is_none().then(|| Cursor::new(&self.log, at));
            let c = Arc::new(StreamConsumer {
                slot,
                handle,
                exclusive: req.exclusive,
                credit: AtomicU32::new(req.prefetch),
                unwritten: AtomicU64::new(0),
                wake: Notify::new(),
                cancelled: AtomicBool::new(false),
                position: AtomicU64::new(cursor.as_ref().map_or(0, |c| c.next)),
                group,
                explicit,
                reader: Mutex::new(ReaderState {
                    active: cursor.is_some(),
                    handoff: None,
                }),
                filter,
            });
            cons.insert(slot, c.clone());
            if let Some(name) = &c.group {
                let mut gs = self.groups();
                let log = &self.log;
                let g = gs.map.entry(name.clone()).or_insert_with(|| {
                    let (from, since) = log.resolve(at);
                    let mut g = groups::Group::at(from);
                    g.since = since;
                    g
                });
                g.members.push(slot);
                if partition.is_some() {
                    g.partition = partition;
                }
                self.rebalance(&cons, g);
            }
            (c, cursor)
        };
        let (c, cursor) = c;
        tokio::spawn(read_for(
            ReaderCount::new(self.persist.clone()),
            queue.clone(),
            self.log.clone(),
            self.tail.subscribe(),
            c,
            cursor,
        ));
        Ok(())
    }

    /// Removes a consumer: its reader stops.
    pub fn cancel(&self, id: ConsumerId) {
        let mut cons = self.consumers();
        let slot = cons
            .iter()
            .find(|(_, c)| c.handle.id == id)
            .map(|(s, _)| *s);
        let Some(c) = slot.and_then(|s| cons.remove(&s)) else {
            return;
        };
        c.cancelled.store(true, Ordering::Release);
        c.wake.notify_one();
        let Some(name) = &c.group else {
            return;
        };
        let mut gs = self.groups();
        let Some(g) = gs.map.get_mut(name) else {
            return;
        };
        g.members.retain(|s| *s != c.slot);
        if g.active == Some(c.slot) {
            g.active = None;
        }
        self.rebalance(&cons, g);
    }

    /// The member that should read this stream for group `g`: the first
    /// to arrive, or, in a super stream group, member `partition % n` of
    /// the `n` members ranked by [`StreamConsumer::rank`] (so 3 partitions
    /// over 2 members go 2 + 1, and every partition agrees on the ranks).
    fn pick(g: &groups::Group, cons: &HashMap<u32, Arc<StreamConsumer>>) -> Option<u32> {
        let Some(p) = g.partition else {
            return g.members.first().copied();
        };
        let mut ranked: Vec<&Arc<StreamConsumer>> =
            g.members.iter().filter_map(|s| cons.get(s)).collect();
        ranked.sort_by(|a, b| a.rank().cmp(&b.rank()));
        (!ranked.is_empty()).then(|| ranked[p as usize % ranked.len()].slot)
    }

    /// Moves group `g`'s reading to the member [`Self::pick`] names, if
    /// another: the old reader stops (what it has not acknowledged is
    /// read again) and the new one starts at the group's committed offset
    /// (a single-stream group's member at its own `x-stream-offset`).
    fn rebalance(&self, cons: &HashMap<u32, Arc<StreamConsumer>>, g: &mut groups::Group) {
        let want = Self::pick(g, cons);
        if want == g.active {
            return;
        }
        if let Some(old) = g.active.and_then(|s| cons.get(&s)) {
            old.set_reader(None);
        }
        g.active = want;
        let Some(new) = want.and_then(|s| cons.get(&s)) else {
            return;
        };
        let explicit = new.explicit.filter(|_| g.partition.is_none());
        let (cursor, since) = self.start_cursor(g, explicit);
        g.restart_at(cursor.next);
        g.since = since;
        new.position.store(cursor.next, Ordering::Relaxed);
        new.set_reader(Some(cursor));
    }

    /// Where group `g`'s new reader starts, and the timestamp it started
    /// from if nothing is acknowledged after it yet: at `explicit` (a
    /// single-stream group member's own `x-stream-offset`), else at the
    /// committed offset; a group started by timestamp that has not moved
    /// yet reads from there as its first reader did, passing over the
    /// chunks older than the timestamp (its committed offset is the index
    /// entry before them), unless retention moved where that resolves to.
    fn start_cursor(&self, g: &groups::Group, explicit: Option<StartAt>) -> (Cursor, Option<i64>) {
        let committed = || Cursor::new(&self.log, StartAt::Offset(g.committed));
        match (explicit, g.since) {
            (Some(at), _) => {
                let since = match at {
                    StartAt::Timestamp(ts) => Some(ts),
                    _ => None,
                };
                (Cursor::new(&self.log, at), since)
            }
            (None, Some(ts)) => {
                let c = Cursor::new(&self.log, StartAt::Timestamp(ts));
                if c.next == g.committed {
                    (c, Some(ts))
                } else {
                    (committed(), None)
                }
            }
            (None, None) => (committed(), None),
        }
    }

    /// Acks (and, as RabbitMQ counts them, nothing else) return credit to
    /// the consumers the deliveries went to.
    /// A consumer's connection wrote `bytes` of its deliveries (`seq` is
    /// one of them) to the socket: its reader may run on.
    pub fn written(&self, seq: u64, bytes: u64) {
        let slot = (seq >> SLOT_SHIFT) as u32;
        if let Some(c) = self.consumers().get(&slot) {
            let _ = c
                .unwritten
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    Some(u.saturating_sub(bytes))
                });
            c.wake.notify_one();
        }
    }

    pub fn settle(&self, seqs: &[u64]) {
        let cons = self.consumers();
        self.group_acks(&cons, seqs);
        let mut run: Option<(u32, u32)> = None;
        let give = |slot: u32, n: u32| {
            if let Some(c) = cons.get(&slot) {
                c.credit.fetch_add(n, Ordering::AcqRel);
                c.wake.notify_one();
            }
        };
        for s in seqs {
            let slot = (s >> SLOT_SHIFT) as u32;
            match &mut run {
                Some((cur, n)) if *cur == slot => *n += 1,
                _ => {
                    if let Some((cur, n)) = run.take() {
                        give(cur, n);
                    }
                    run = Some((slot, 1));
                }
            }
        }
        if let Some((cur, n)) = run {
            give(cur, n);
        }
    }

    /// Acks of group members' deliveries move their groups' offsets.
    fn group_acks(&self, cons: &HashMap<u32, Arc<StreamConsumer>>, seqs: &[u64]) {
        let mut moved = false;
        let mut gs: Option<MutexGuard<'_, Groups>> = None;
        for s in seqs {
            let slot = (s >> SLOT_SHIFT) as u32;
            let Some(name) = cons.get(&slot).and_then(|c| c.group.as_ref()) else {
                continue;
            };
            let gs = gs.get_or_insert_with(|| self.groups());
            if let Some(g) = gs.map.get_mut(name) {
                if g.ack(s & OFFSET_MASK) {
                    gs.dirty = true;
                    moved = true;
                }
            }
        }
        drop(gs);
        if moved {
            self.request_groups_write();
        }
    }

    /// A group member's reader passed over `ranges` (not wanted by its
    /// filter, older than its start timestamp, or gone to retention):
    /// they count as acknowledged for its group.
    fn group_passed_over(&self, c: &StreamConsumer, ranges: &[(u64, u64)]) {
        let Some(name) = &c.group else { return };
        if ranges.is_empty() {
            return;
        }
        let moved = {
            let mut gs = self.groups();
            let Some(g) = gs.map.get_mut(name) else {
                return;
            };
            // A rebalance since the read handed the stream to another
            // reader, which starts at the committed offset: moving it now
            // would pass over what that reader is about to deliver.
            if g.active != Some(c.slot) || c.reader_changed() {
                return;
            }
            let mut moved = false;
            for &(lo, hi) in ranges {
                moved |= g.skip(lo, hi);
            }
            gs.dirty |= moved;
            moved
        };
        if moved {
            self.request_groups_write();
        }
    }

    /// Each consumer group's committed offset and reader.
    pub fn group_infos(&self) -> Vec<StreamGroupInfo> {
        let cons = self.consumers();
        let gs = self.groups();
        let mut out: Vec<StreamGroupInfo> = gs
            .map
            .iter()
            .map(|(name, g)| StreamGroupInfo {
                name: name.clone(),
                committed: g.committed,
                active: g
                    .active
                    .and_then(|s| cons.get(&s))
                    .map(|c| c.handle.tag.clone()),
                members: g.members.len(),
                partition: g.partition,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn stats(&self) -> StreamStats {
        self.log.stats()
    }

    pub fn settings(&self) -> StreamSettings {
        self.log.settings()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers().len()
    }

    /// Each consumer's position and credit.
    pub fn consumer_infos(&self) -> Vec<StreamConsumerInfo> {
        self.consumers()
            .values()
            .map(|c| StreamConsumerInfo {
                tag: c.handle.tag.clone(),
                conn: c.handle.conn,
                session: c.handle.session,
                position: c.position.load(Ordering::Relaxed),
                credit: c.credit.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The queue was deleted: its consumers are told and stop, and its
    /// files go (on the group-commit thread, after any sync in flight).
    pub fn delete(&self) {
        self.deleted.store(true, Ordering::Release);
        self.flow.release();
        let gone: Vec<Arc<StreamConsumer>> = self.consumers().drain().map(|(_, c)| c).collect();
        for c in gone {
            c.cancelled.store(true, Ordering::Release);
            c.wake.notify_one();
            let h = &c.handle;
            // A closed connection needs no cancel notification.
            let _ = h.outbox.push_all(vec![OutboxItem::Cancelled {
                session: h.session,
                tag: h.tag.clone(),
                consumer: h.id,
            }]);
        }
        let log = self.log.clone();
        self.persist.flusher.sync_job(Box::new(move || {
            log.destroy();
            true
        }));
    }
}

/// The message a consumer gets for the record at `offset`: the stored
/// one with the `x-stream-offset` header (a long) set.
fn delivered(offset: u64, r: Record<'_>) -> Option<Message> {
    let props = super::properties::with_long_header(r.properties, OFFSET_KEY, offset as i64);
    let props = props.as_deref().unwrap_or(r.properties);
    Message::new(r.exchange, r.routing_key, props, r.body, r.persistent).ok()
}

/// The ranges of `[start, end)` not in `delivered` (ascending).
fn gaps(start: u64, end: u64, delivered: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &d in delivered {
        if d > at {
            out.push((at, d));
        }
        at = d + 1;
    }
    if end > at {
        out.push((at, end));
    }
    out
}

/// A consumer's reader: waits for credit and committed messages, reads
/// them on the blocking pool, and hands them to the connection.
/// Whether two consumers' filters want the same messages (value order
/// aside).
fn same_filter(a: Option<&Filter>, b: Option<&Filter>) -> bool {
    let key = |f: Option<&Filter>| {
        f.map(|f| {
            let mut v = f.values.clone();
            v.sort();
            v.dedup();
            (v, f.match_unfiltered)
        })
    };
    key(a) == key(b)
}

async fn read_for(
    readers: ReaderCount,
    queue: Arc<Queue>,
    log: Arc<StreamLog>,
    mut tail: watch::Receiver<u64>,
    c: Arc<StreamConsumer>,
    mut cursor: Option<Cursor>,
) {
    let mut batch: Vec<OutboxItem> = Vec::new();
    loop {
        if c.cancelled.load(Ordering::Acquire) {
            return;
        }
        // A group member that is not its group's reader waits to be
        // handed a cursor (or cancelled).
        c.take_reader(&mut cursor);
        let Some(mut cur) = cursor.take() else {
            c.wake.notified().await;
            continue;
        };
        let credit = c.credit.load(Ordering::Acquire);
        let committed = *tail.borrow_and_update();
        let unwritten = c.unwritten.load(Ordering::Acquire);
        let window = readers.window();
        if credit == 0 || unwritten >= window {
            cursor = Some(cur);
            c.wake.notified().await;
            continue;
        }
        if cur.next >= committed {
            cursor = Some(cur);
            tokio::select! {
                r = tail.changed() => if r.is_err() { return },
                _ = c.wake.notified() => {}
            }
            continue;
        }
        let max = credit.min(READ_BATCH) as usize;
        let max_bytes = READ_BYTES.min((window - unwritten) as usize);
        let (l, filter, start) = (log.clone(), c.filter.clone(), cur.next);
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(max);
            let r = cur.read(&l, max, max_bytes, filter.as_deref(), |off, rec| {
                if let Some(m) = delivered(off, rec) {
                    out.push((off, m));
                }
            });
            (cur, r.map(|_| out))
        })
        .await;
        let Ok((cur, read)) = read else { return };
        if c.reader_changed() {
            // Rebalanced meanwhile: the next reader delivers these.
            cursor = Some(cur);
            continue;
        }
        let next = cur.next;
        c.position.store(next, Ordering::Relaxed);
        cursor = Some(cur);
        let msgs = match read {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(queue = %queue.name, vhost = %queue.vhost, error = %e, "cannot read a stream; cancelling its consumer");
                let h = &c.handle;
                let _ = h.outbox.push_all(vec![OutboxItem::Cancelled {
                    session: h.session,
                    tag: h.tag.clone(),
                    consumer: h.id,
                }]);
                return;
            }
        };
        // What a group member's read passed over (chunks a filter or a
        // start timestamp skipped, offsets retention removed) counts as
        // acknowledged: the committed offset moves past it.
        if c.group.is_some() {
            if let Some(s) = queue.stream() {
                let delivered: Vec<u64> = msgs.iter().map(|(o, _)| *o).collect();
                s.group_passed_over(&c, &gaps(start, next, &delivered));
            }
        }
        c.credit.fetch_sub(msgs.len() as u32, Ordering::AcqRel);
        // Counted before the connection can write (and report) them.
        let bytes: u64 = msgs.iter().map(|(_, m)| m.size()).sum();
        c.unwritten.fetch_add(bytes, Ordering::AcqRel);
        for (off, m) in msgs {
            batch.push(OutboxItem::Deliver(Delivery {
                queue: queue.clone(),
                consumer: c.handle.clone(),
                message: QueuedMessage {
                    seq: ((c.slot as u64) << SLOT_SHIFT) | (off & OFFSET_MASK),
                    message: Arc::new(m),
                    redelivered: false,
                },
                no_ack: false,
                took_channel_slot: false,
                credit_on_write: false,
                // A stream has no delivery limit and no TTL.
                delivery_count: None,
                deadline: None,
                held: None,
            }));
        }
        if !c.handle.outbox.push_from(&mut batch) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_share_the_window_budget() {
        assert_eq!(write_window(0), WINDOW_MAX);
        assert_eq!(write_window(1), WINDOW_MAX);
        assert_eq!(write_window(64), 256 << 10);
        assert_eq!(write_window(100_000), WINDOW_MIN);
    }

    #[test]
    fn ages_use_rabbitmq_units() {
        assert_eq!(parse_age("7D"), Some(7 * 24 * 3600 * 1000));
        assert_eq!(parse_age("12h"), Some(12 * 3600 * 1000));
        assert_eq!(parse_age("30m"), Some(30 * 60 * 1000));
        assert_eq!(parse_age("1Y"), Some(365 * 24 * 3600 * 1000));
        assert_eq!(parse_age("2M"), Some(60 * 24 * 3600 * 1000));
        for bad in ["10", "0s", "1h30m", "bad", "", "D", "-1D"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_from_consumer_arguments() {
        let at = |v: Value| {
            let mut t = Table::default();
            t.insert(OFFSET_KEY, v);
            start_at(&t, "q", "/", 100_000)
        };
        assert_eq!(
            start_at(&Table::default(), "q", "/", 0).unwrap(),
            StartAt::Next
        );
        assert_eq!(
            at(Value::LongString(b"first".to_vec())).unwrap(),
            StartAt::First
        );
        assert_eq!(
            at(Value::LongString(b"last".to_vec())).unwrap(),
            StartAt::Last
        );
        assert_eq!(at(Value::LongLongInt(5)).unwrap(), StartAt::Offset(5));
        assert_eq!(at(Value::LongInt(-1)).unwrap(), StartAt::Offset(0));
        assert_eq!(at(Value::Timestamp(7)).unwrap(), StartAt::Timestamp(7000));
        assert_eq!(
            at(Value::LongString(b"1m".to_vec())).unwrap(),
            StartAt::Timestamp(40_000)
        );
        let e = at(Value::LongString(b"bad".to_vec())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PreconditionFailed);
    }

    #[test]
    fn filters_from_consumer_arguments_as_rabbitmq_3_13_reads_them() {
        let of = |pairs: Vec<(&str, Value)>| {
            let mut t = Table::default();
            for (k, v) in pairs {
                t.insert(k, v);
            }
            filter_of(&t, "q", "/")
        };
        let s = |v: &str| Value::LongString(v.as_bytes().to_vec());
        let f = |vs: &[&str], mu: bool| {
            Some(Filter {
                values: vs.iter().map(|v| v.as_bytes().to_vec()).collect(),
                match_unfiltered: mu,
            })
        };
        assert_eq!(of(vec![]).unwrap(), None);
        assert_eq!(of(vec![(FILTER_KEY, s("a"))]).unwrap(), f(&["a"], false));
        assert_eq!(
            of(vec![
                (
                    FILTER_KEY,
                    Value::Array(vec![s("a"), Value::LongInt(1), s("b")])
                ),
                (MATCH_UNFILTERED_KEY, Value::Bool(true)),
            ])
            .unwrap(),
            f(&["a", "b"], true)
        );
        // Not a boolean: false; without a filter: ignored.
        assert_eq!(
            of(vec![
                (FILTER_KEY, s("a")),
                (MATCH_UNFILTERED_KEY, s("true"))
            ])
            .unwrap(),
            f(&["a"], false)
        );
        assert_eq!(
            of(vec![(MATCH_UNFILTERED_KEY, Value::Bool(true))]).unwrap(),
            None
        );
        assert_eq!(of(vec![(FILTER_KEY, Value::LongInt(3))]).unwrap(), None);
        assert_eq!(of(vec![(FILTER_KEY, s(""))]).unwrap(), f(&[], true));
        let e = of(vec![(FILTER_KEY, Value::Array(vec![Value::LongInt(1)]))]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PreconditionFailed);
        assert_eq!(
            e.text,
            "invalid arg 'x-stream-filter' for queue 'q' in vhost '/': no filter value"
        );
    }
}
