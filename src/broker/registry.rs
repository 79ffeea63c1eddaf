//! What the management API can see of live connections, their channels and
//! consumers, and the message counters with their sampled rates.
//!
//! Plain values only (no AMQP types): the connection task fills a
//! [`ConnectionInfo`] at registration and refreshes its channel snapshot
//! now and then; the API reads copies. Message counters are relaxed atomic
//! increments on the hot path; a sampler turns them into rates every few
//! seconds, so reading stats never touches a queue or a connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// The message counters RabbitMQ's management API shows (`message_stats`).
/// Each object keeps all of them and uses its own subset: queues count
/// publish/deliver/get/ack/redeliver, exchanges publish_in/publish_out,
/// channels and the broker most of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Publish,
    PublishIn,
    PublishOut,
    /// Publisher confirms (basic.ack) sent.
    Confirm,
    /// To consumers in manual-ack mode.
    Deliver,
    /// To consumers in auto-ack mode.
    DeliverNoAck,
    /// basic.get in manual-ack mode.
    Get,
    GetNoAck,
    /// basic.get on an empty queue.
    GetEmpty,
    Ack,
    Redeliver,
    /// Mandatory and unroutable: basic.return.
    ReturnUnroutable,
    /// Not mandatory and unroutable: dropped.
    DropUnroutable,
}

/// How many [`Counter`]s there are.
pub const COUNTERS: usize = 13;

impl Counter {
    pub const ALL: [Counter; COUNTERS] = [
        Counter::Publish,
        Counter::PublishIn,
        Counter::PublishOut,
        Counter::Confirm,
        Counter::Deliver,
        Counter::DeliverNoAck,
        Counter::Get,
        Counter::GetNoAck,
        Counter::GetEmpty,
        Counter::Ack,
        Counter::Redeliver,
        Counter::ReturnUnroutable,
        Counter::DropUnroutable,
    ];

    /// RabbitMQ's field name in `message_stats`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Publish => "publish",
            Counter::PublishIn => "publish_in",
            Counter::PublishOut => "publish_out",
            Counter::Confirm => "confirm",
            Counter::Deliver => "deliver",
            Counter::DeliverNoAck => "deliver_no_ack",
            Counter::Get => "get",
            Counter::GetNoAck => "get_no_ack",
            Counter::GetEmpty => "get_empty",
            Counter::Ack => "ack",
            Counter::Redeliver => "redeliver",
            Counter::ReturnUnroutable => "return_unroutable",
            Counter::DropUnroutable => "drop_unroutable",
        }
    }
}

/// Message counts since start, and their per-second rates at the last
/// sample. The hot path only does relaxed `fetch_add`s.
#[derive(Debug, Default)]
pub struct MessageCounters {
    counts: [AtomicU64; COUNTERS],
    /// Counts at the last sample, to compute rates from.
    last: [AtomicU64; COUNTERS],
    /// Rates as `f64` bits, so readers never take a lock.
    rates: [AtomicU64; COUNTERS],
    /// Since when (Unix milliseconds) no counter moved, as of the last
    /// sample; 0 while active (RabbitMQ's `idle_since`).
    idle_since: AtomicU64,
}

/// A copy of a set of counters (with rates) for display. Channels fill the
/// counts from plain integers and get rates from their connection's sampler.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MessageStats {
    pub counts: [u64; COUNTERS],
    pub rates: [f64; COUNTERS],
}

impl MessageStats {
    pub fn count(&self, c: Counter) -> u64 {
        self.counts[c as usize]
    }

    pub fn rate(&self, c: Counter) -> f64 {
        self.rates[c as usize]
    }

    /// RabbitMQ's `deliver_get`: every delivery, consumed or fetched.
    pub fn deliver_get(&self) -> u64 {
        [
            Counter::Deliver,
            Counter::DeliverNoAck,
            Counter::Get,
            Counter::GetNoAck,
        ]
        .iter()
        .map(|c| self.count(*c))
        .sum()
    }

    pub fn deliver_get_rate(&self) -> f64 {
        [
            Counter::Deliver,
            Counter::DeliverNoAck,
            Counter::Get,
            Counter::GetNoAck,
        ]
        .iter()
        .map(|c| self.rate(*c))
        .sum()
    }
}

/// Per-second rates from counts then and now.
fn rates_between(before: &[u64; COUNTERS], now: &[u64; COUNTERS], secs: f64) -> [f64; COUNTERS] {
    let mut r = [0.0; COUNTERS];
    if secs > 0.0 {
        for i in 0..COUNTERS {
            r[i] = now[i].saturating_sub(before[i]) as f64 / secs;
        }
    }
    r
}

impl MessageCounters {
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn published(&self, n: u64) {
        self.add(Counter::Publish, n);
    }

    pub fn acked(&self, n: u64) {
        self.add(Counter::Ack, n);
    }

    /// Turns the counts since the last sample into per-second rates.
    pub fn sample(&self, secs: f64) {
        let mut now = [0u64; COUNTERS];
        let mut before = [0u64; COUNTERS];
        for i in 0..COUNTERS {
            now[i] = self.counts[i].load(Ordering::Relaxed);
            before[i] = self.last[i].swap(now[i], Ordering::Relaxed);
        }
        if now != before {
            self.idle_since.store(0, Ordering::Relaxed);
        } else if self.idle_since.load(Ordering::Relaxed) == 0 {
            self.idle_since.store(unix_ms(), Ordering::Relaxed);
        }
        for (i, r) in rates_between(&before, &now, secs).into_iter().enumerate() {
            self.rates[i].store(r.to_bits(), Ordering::Relaxed);
        }
    }

    /// Since when nothing was counted (Unix milliseconds), or `None`
    /// while the object is active.
    pub fn idle_since(&self) -> Option<u64> {
        match self.idle_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn snapshot(&self) -> MessageStats {
        let mut s = MessageStats::default();
        for i in 0..COUNTERS {
            s.counts[i] = self.counts[i].load(Ordering::Relaxed);
            s.rates[i] = f64::from_bits(self.rates[i].load(Ordering::Relaxed));
        }
        s
    }
}

/// Counter increments gathered by one connection over a turn and added
/// to the shared counters (an exchange's, a queue's, the broker's) at its
/// end: a publisher pays a few plain additions per message and a handful
/// of atomic adds per turn, instead of several atomic adds per message on
/// cache lines every publishing core shares. The owner calls
/// [`CounterFold::flush`] when its turn ends; dropping flushes too, so no
/// count is lost. Readers see counts at most one turn late.
#[derive(Default)]
pub struct CounterFold {
    entries: Vec<FoldEntry>,
}

struct FoldEntry {
    target: FoldTarget,
    counts: [u64; COUNTERS],
}

/// Whose counters an entry adds to; kept alive until the flush.
pub enum FoldTarget {
    Counters(std::sync::Arc<MessageCounters>),
    Exchange(std::sync::Arc<super::Exchange>),
    Queue(std::sync::Arc<super::Queue>),
}

impl FoldTarget {
    fn counters(&self) -> &MessageCounters {
        match self {
            FoldTarget::Counters(c) => c,
            FoldTarget::Exchange(e) => &e.stats,
            FoldTarget::Queue(q) => &q.stats,
        }
    }
}

/// Distinct targets one fold keeps before it flushes early (a turn that
/// publishes to many queues should not scan a long list per message).
const FOLD_TARGETS: usize = 16;

impl CounterFold {
    /// Counts `n` of `c` for the counters `of` points at; `target` makes
    /// the entry (and is only called when there is none yet).
    #[inline]
    pub fn add(
        &mut self,
        of: &MessageCounters,
        target: impl FnOnce() -> FoldTarget,
        c: Counter,
        n: u64,
    ) {
        let e = match self
            .entries
            .iter()
            .position(|e| std::ptr::eq(e.target.counters(), of))
        {
            Some(i) => &mut self.entries[i],
            None => {
                if self.entries.len() >= FOLD_TARGETS {
                    self.flush();
                }
                self.entries.push(FoldEntry {
                    target: target(),
                    counts: [0; COUNTERS],
                });
                self.entries.last_mut().expect("just pushed")
            }
        };
        e.counts[c as usize] += n;
    }

    /// Adds everything gathered to the shared counters, and lets go of
    /// the targets.
    pub fn flush(&mut self) {
        for e in self.entries.drain(..) {
            let shared = e.target.counters();
            for c in Counter::ALL {
                let n = e.counts[c as usize];
                if n > 0 {
                    shared.add(c, n);
                }
            }
        }
    }
}

impl Drop for CounterFold {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A coarse wall clock (milliseconds since the Unix epoch) that the
/// server's housekeeping task advances every few milliseconds, so the hot
/// path stamps deliveries with one relaxed load instead of a clock read.
#[derive(Debug)]
pub struct CoarseClock(AtomicU64);

/// How often the server advances the [`CoarseClock`].
pub const CLOCK_TICK: std::time::Duration = std::time::Duration::from_millis(10);

impl Default for CoarseClock {
    fn default() -> Self {
        CoarseClock(AtomicU64::new(unix_ms()))
    }
}

impl CoarseClock {
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Reads the real clock (the housekeeping task calls this).
    pub fn tick(&self) {
        self.0.fetch_max(unix_ms(), Ordering::Relaxed);
    }
}

/// The part of a client's connection.start-ok properties the API shows.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub product: String,
    pub platform: String,
    pub version: String,
    pub connection_name: String,
    pub capabilities: Vec<(String, bool)>,
    /// Every property as the client sent it (`client_properties`).
    pub properties: warren_exchanges::Table,
}

/// A connection's socket traffic, as RabbitMQ's `recv_oct`/`recv_cnt`/
/// `send_oct`/`send_cnt`: bytes, and reads or writes (system calls).
/// Each side has one owner that keeps plain counts and stores them here
/// now and then (the connection task its reads once a tick, the writer
/// task its writes after each write): no read-modify-write, no cache line
/// another core writes, on the hot path.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub recv_oct: AtomicU64,
    pub recv_cnt: AtomicU64,
    pub send_oct: AtomicU64,
    pub send_cnt: AtomicU64,
    /// Bytes per second received and sent at the last sample (`f64` bits).
    recv_rate: AtomicU64,
    send_rate: AtomicU64,
    /// Octets at the last sample.
    last: Mutex<(u64, u64)>,
}

/// A copy of [`NetCounters`] for display.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetStats {
    pub recv_oct: u64,
    pub recv_cnt: u64,
    pub send_oct: u64,
    pub send_cnt: u64,
    pub recv_rate: f64,
    pub send_rate: f64,
}

impl NetCounters {
    /// The owner's running totals of received bytes and reads.
    pub fn store_recv(&self, oct: u64, cnt: u64) {
        self.recv_oct.store(oct, Ordering::Relaxed);
        self.recv_cnt.store(cnt, Ordering::Relaxed);
    }

    /// The owner's running totals of sent bytes and writes.
    pub fn store_send(&self, oct: u64, cnt: u64) {
        self.send_oct.store(oct, Ordering::Relaxed);
        self.send_cnt.store(cnt, Ordering::Relaxed);
    }

    /// Turns the octets since the last sample into per-second rates.
    pub fn sample(&self, secs: f64) {
        let now = (
            self.recv_oct.load(Ordering::Relaxed),
            self.send_oct.load(Ordering::Relaxed),
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if secs > 0.0 {
            let r = now.0.saturating_sub(last.0) as f64 / secs;
            let s = now.1.saturating_sub(last.1) as f64 / secs;
            self.recv_rate.store(r.to_bits(), Ordering::Relaxed);
            self.send_rate.store(s.to_bits(), Ordering::Relaxed);
        }
        *last = now;
    }

    pub fn snapshot(&self) -> NetStats {
        NetStats {
            recv_oct: self.recv_oct.load(Ordering::Relaxed),
            recv_cnt: self.recv_cnt.load(Ordering::Relaxed),
            send_oct: self.send_oct.load(Ordering::Relaxed),
            send_cnt: self.send_cnt.load(Ordering::Relaxed),
            recv_rate: f64::from_bits(self.recv_rate.load(Ordering::Relaxed)),
            send_rate: f64::from_bits(self.send_rate.load(Ordering::Relaxed)),
        }
    }
}

/// A channel's counts at the last rate sample, and its sampled history
/// (kept by its connection, so it goes when the channel closes).
struct ChannelSampled {
    counts: [u64; COUNTERS],
    history: super::history::History,
}

impl std::fmt::Debug for ChannelSampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSampled")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// One consumer as the API shows it.
#[derive(Debug, Clone)]
pub struct ConsumerSnapshot {
    pub tag: String,
    pub queue: String,
    pub ack_required: bool,
    pub prefetch: u32,
    pub exclusive: bool,
    /// As given to basic.consume.
    pub arguments: warren_exchanges::Table,
    /// `None`: the queue no longer knows it (being cancelled).
    pub activity: Option<warren_queues::Activity>,
}

/// One channel as the API shows it.
#[derive(Debug, Clone)]
pub struct ChannelSnapshot {
    pub number: u16,
    /// basic.qos global=false: what new consumers get.
    pub prefetch_count: u32,
    /// basic.qos global=true: shared by the channel's consumers.
    pub global_prefetch_count: u32,
    pub unacked: usize,
    /// The channel's message counters (rates filled in by the sampler).
    pub stats: MessageStats,
    pub confirm: bool,
    pub transactional: bool,
    pub consumers: Vec<ConsumerSnapshot>,
    /// Since when (Unix milliseconds) the channel counted nothing, as of
    /// the last sample (filled in by the sampler).
    pub idle_since: Option<u64>,
}

/// What the management API shows of a connection's TLS session.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// As Erlang names it: "tlsv1.3", "tlsv1.2".
    pub protocol: String,
    /// rustls' name of the cipher suite.
    pub cipher: String,
}

/// A live, logged-in connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    /// RabbitMQ's name: "PEER -> LOCAL".
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub client: ClientInfo,
    /// The SASL mechanism the client logged in with.
    pub auth_mechanism: String,
    /// Set on an AMQPS connection.
    pub tls: Option<TlsInfo>,
    /// Socket traffic, shared with the connection's writer task.
    pub net: std::sync::Arc<NetCounters>,
    /// Sampled history of the octet counters, for the charts.
    pub history: super::history::SharedHistory,
    channels: Mutex<Vec<ChannelSnapshot>>,
    /// Each channel's counts at the last rate sample, and its history.
    sampled: Mutex<std::collections::HashMap<u16, ChannelSampled>>,
    close_reason: Mutex<Option<String>>,
    close: Notify,
    /// A [`ConnState`], set by the connection task.
    state: std::sync::atomic::AtomicU8,
    /// The connection task's mailbox for unacked-view queries (an AMQP
    /// connection has one).
    queries: Option<super::unacked::QuerySender>,
}

/// What the management API shows as a connection's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    Running = 0,
    /// A resource alarm is in effect; the connection has not published
    /// since, so it still reads.
    Blocking = 1,
    /// A resource alarm is in effect and the connection published: it
    /// reads nothing until the alarm clears.
    Blocked = 2,
}

impl ConnState {
    pub fn name(self) -> &'static str {
        match self {
            ConnState::Running => "running",
            ConnState::Blocking => "blocking",
            ConnState::Blocked => "blocked",
        }
    }
}

impl ConnectionInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: String,
        vhost: String,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
        client: ClientInfo,
    ) -> Self {
        let connected_at = unix_ms();
        ConnectionInfo {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            connected_at,
            channel_max,
            frame_max,
            heartbeat,
            client,
            auth_mechanism: "PLAIN".into(),
            tls: None,
            net: Default::default(),
            history: super::history::SharedHistory::new(
                super::history::BASIC,
                super::history::CONNECTION_SERIES,
            ),
            channels: Mutex::new(Vec::new()),
            sampled: Mutex::new(std::collections::HashMap::new()),
            close_reason: Mutex::new(None),
            close: Notify::new(),
            state: std::sync::atomic::AtomicU8::new(ConnState::Running as u8),
            queries: None,
        }
    }

    /// Where the connection task takes unacked-view queries (before it is
    /// shared).
    pub fn with_queries(mut self, tx: super::unacked::QuerySender) -> Self {
        self.queries = Some(tx);
        self
    }

    /// Asks the connection for the `n` oldest deliveries of `queue` it
    /// holds; `None` if it has no mailbox, its mailbox is full or it is
    /// gone.
    pub fn query_unacked(
        &self,
        queue: &std::sync::Arc<super::Queue>,
        n: usize,
    ) -> Option<tokio::sync::oneshot::Receiver<Vec<super::unacked::HeldDelivery>>> {
        let tx = self.queries.as_ref()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let q = super::unacked::UnackedQuery {
            queue: queue.clone(),
            n,
            reply,
        };
        tx.try_send(q).ok()?;
        Some(rx)
    }

    pub fn set_state(&self, s: ConnState) {
        self.state
            .store(s as u8, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn state(&self) -> ConnState {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            1 => ConnState::Blocking,
            2 => ConnState::Blocked,
            _ => ConnState::Running,
        }
    }

    /// How the client logged in, and over what (before it is shared).
    pub fn with_login(mut self, auth_mechanism: &str, tls: Option<TlsInfo>) -> Self {
        self.auth_mechanism = auth_mechanism.to_owned();
        self.tls = tls;
        self
    }

    /// The traffic counters the connection's tasks keep (before it is shared).
    pub fn with_net(mut self, net: std::sync::Arc<NetCounters>) -> Self {
        self.net = net;
        self
    }

    /// Replaces the channel snapshot (the connection task calls this).
    pub fn set_channels(&self, mut channels: Vec<ChannelSnapshot>) {
        let mut cur = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        // Rates come from the sampler: carry them over.
        for ch in channels.iter_mut() {
            if let Some(old) = cur.iter().find(|o| o.number == ch.number) {
                ch.stats.rates = old.stats.rates;
                ch.idle_since = old.idle_since;
            }
        }
        *cur = channels;
    }

    /// Turns each channel's counts, and the socket's octets, since the
    /// last sample into rates, and records each channel's counters into
    /// its history at `now` (Unix milliseconds). Closed channels' entries
    /// go with this sample.
    pub fn sample_channels(&self, secs: f64, now: u64) {
        self.net.sample(secs);
        let mut chans = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let mut sampled = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = std::collections::HashMap::with_capacity(chans.len());
        for ch in chans.iter_mut() {
            let mut entry = sampled
                .remove(&ch.number)
                .unwrap_or_else(|| ChannelSampled {
                    counts: [0; COUNTERS],
                    history: super::history::History::new(
                        super::history::BASIC,
                        super::history::CHANNEL_SERIES,
                    ),
                });
            ch.stats.rates = rates_between(&entry.counts, &ch.stats.counts, secs);
            if entry.counts != ch.stats.counts {
                ch.idle_since = None;
            } else if ch.idle_since.is_none() {
                ch.idle_since = Some(unix_ms());
            }
            entry.counts = ch.stats.counts;
            let values: Vec<u64> = super::history::CHANNEL_COUNTERS
                .iter()
                .map(|c| ch.stats.counts[*c as usize])
                .collect();
            entry.history.record(now, &values);
            next.insert(ch.number, entry);
        }
        *sampled = next;
    }

    /// Channel `number`'s history of column `col` (an index into
    /// [`super::history::CHANNEL_COUNTERS`]); empty for a channel not yet
    /// sampled.
    pub fn channel_samples(
        &self,
        number: u16,
        col: usize,
        now: u64,
        age: u64,
        incr: u64,
    ) -> Vec<super::history::Sample> {
        let sampled = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
        sampled
            .get(&number)
            .map(|e| e.history.samples(col, now, age, incr))
            .unwrap_or_default()
    }

    pub fn channels(&self) -> Vec<ChannelSnapshot> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the connection to close; its task sends 320 CONNECTION_FORCED.
    pub fn request_close(&self, reason: &str) {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        // notify_one keeps a permit if the task is not waiting right now.
        self.close.notify_one();
    }

    /// Resolves with the reason once [`ConnectionInfo::request_close`] was called.
    pub async fn close_requested(&self) -> String {
        loop {
            self.close.notified().await;
            if let Some(r) = self
                .close_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_counts_per_second_since_the_last_sample() {
        let c = MessageCounters::default();
        c.published(10);
        c.sample(5.0);
        let s = c.snapshot();
        assert_eq!(s.count(Counter::Publish), 10);
        assert_eq!(s.rate(Counter::Publish), 2.0);
        c.add(Counter::Deliver, 3);
        c.add(Counter::GetNoAck, 2);
        c.sample(5.0);
        let s = c.snapshot();
        assert_eq!(s.rate(Counter::Publish), 0.0);
        assert_eq!((s.deliver_get(), s.deliver_get_rate()), (5, 1.0));
    }
}

/// Object churn RabbitMQ reports (`churn_rates` in the overview, the
/// `*_opened_total`/`*_closed_total` Prometheus counters): connections,
/// channels and queues made and gone. Not on the message path: a relaxed
/// add per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Churn {
    ConnectionCreated,
    ConnectionClosed,
    ChannelCreated,
    ChannelClosed,
    /// Every queue.declare (and API PUT), new queue or not.
    QueueDeclared,
    QueueCreated,
    QueueDeleted,
}

/// How many [`Churn`] counters there are.
pub const CHURNS: usize = 7;

impl Churn {
    pub const ALL: [Churn; CHURNS] = [
        Churn::ConnectionCreated,
        Churn::ConnectionClosed,
        Churn::ChannelCreated,
        Churn::ChannelClosed,
        Churn::QueueDeclared,
        Churn::QueueCreated,
        Churn::QueueDeleted,
    ];

    /// RabbitMQ's field name in the overview's `churn_rates`.
    pub fn name(self) -> &'static str {
        match self {
            Churn::ConnectionCreated => "connection_created",
            Churn::ConnectionClosed => "connection_closed",
            Churn::ChannelCreated => "channel_created",
            Churn::ChannelClosed => "channel_closed",
            Churn::QueueDeclared => "queue_declared",
            Churn::QueueCreated => "queue_created",
            Churn::QueueDeleted => "queue_deleted",
        }
    }
}

/// Counts of [`Churn`] events since start, with per-second rates at the
/// last sample (sampled with the message counters).
#[derive(Debug, Default)]
pub struct ChurnCounters {
    counts: [AtomicU64; CHURNS],
    last: [AtomicU64; CHURNS],
    rates: [AtomicU64; CHURNS],
}

impl ChurnCounters {
    pub fn add(&self, c: Churn) {
        self.counts[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, c: Churn) -> u64 {
        self.counts[c as usize].load(Ordering::Relaxed)
    }

    pub fn rate(&self, c: Churn) -> f64 {
        f64::from_bits(self.rates[c as usize].load(Ordering::Relaxed))
    }

    pub fn sample(&self, secs: f64) {
        for i in 0..CHURNS {
            let now = self.counts[i].load(Ordering::Relaxed);
            let before = self.last[i].swap(now, Ordering::Relaxed);
            let r = if secs > 0.0 {
                now.saturating_sub(before) as f64 / secs
            } else {
                0.0
            };
            self.rates[i].store(r.to_bits(), Ordering::Relaxed);
        }
    }
}
