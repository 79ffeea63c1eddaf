//! `--raw`: producers and consumers that speak AMQP frames over a plain
//! socket instead of going through lapin.
//!
//! lapin spends several times the broker's CPU per message, so on a 2-core
//! machine it, not the broker, sets the rate (a stream replay measured 0.7 µs
//! of broker CPU per message at 212,000 msg/s: the broker sat at 15% of a
//! core). These clients encode a publish once and copy it per message, and
//! read deliveries by their frame headers alone (the delivery tag, the body
//! size, the timestamp in the body's first 8 bytes), so the broker is what a
//! run measures. The connection set-up goes through amq-protocol's types;
//! only the hot frames are read by hand.

use super::{queue_name, rate_allowance, stamp, Config, ConsumerStats, ProducerStats, Shared};
use amq_protocol::protocol::{basic, channel, confirm, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use warren::amqp::codec;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
/// The read buffer: room for many deliveries per read(2).
const READ_BUF: usize = 1 << 20;
/// Publishes are written to the socket in batches of about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type Res<T> = Result<T, String>;

/// A socket with its read buffer (`buf[lo..hi]` is read and not yet parsed).
struct Link {
    s: TcpStream,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    frame_max: usize,
}

/// One frame in the read buffer: its type, channel and payload range.
#[derive(Clone, Copy)]
struct FrameAt {
    kind: u8,
    start: usize,
    end: usize,
}

/// The next whole frame in `buf[*lo..hi]`, advancing `lo` past it.
fn next_frame(buf: &[u8], lo: &mut usize, hi: usize) -> Res<Option<FrameAt>> {
    let b = &buf[*lo..hi];
    if b.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize;
    if b.len() < 8 + size {
        return Ok(None);
    }
    if b[7 + size] != FRAME_END {
        return Err(format!("bad frame end {:#04x}", b[7 + size]));
    }
    let f = FrameAt {
        kind: b[0],
        start: *lo + 7,
        end: *lo + 7 + size,
    };
    *lo += 8 + size;
    Ok(Some(f))
}

/// Moves unparsed bytes to the front when the free tail is short, so one
/// more read always has room for a whole frame.
fn compact(buf: &mut [u8], lo: &mut usize, hi: &mut usize, room: usize) {
    if *lo == *hi {
        (*lo, *hi) = (0, 0);
    } else if buf.len() - *hi < room {
        buf.copy_within(*lo..*hi, 0);
        *hi -= *lo;
        *lo = 0;
    }
}

/// The class and method ids of a method frame's payload.
fn method_ids(p: &[u8]) -> (u16, u16) {
    if p.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

/// What a channel.close or connection.close says, for the error message.
fn close_reason(p: &[u8]) -> String {
    match amq_protocol::protocol::parse_class(p) {
        Ok((_, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
            format!("connection closed: {} {}", c.reply_code, c.reply_text)
        }
        Ok((_, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
            format!("channel closed: {} {}", c.reply_code, c.reply_text)
        }
        _ => "closed".to_owned(),
    }
}

fn method_frame(ch: u16, m: AMQPClass) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::write_method(&mut b, ch, m);
    b.to_vec()
}

impl Link {
    /// Connects and logs in as the URI says, and opens channel 1.
    async fn open(uri: &str, name: &str) -> Res<Link> {
        let u: amq_protocol::uri::AMQPUri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
        let addr = format!("{}:{}", u.authority.host, u.authority.port);
        let s = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut l = Link {
            s,
            buf: vec![0; READ_BUF],
            lo: 0,
            hi: 0,
            frame_max: 131_072,
        };
        l.send(codec::PROTOCOL_HEADER).await?;
        l.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
            .await?;
        let mut props = FieldTable::default();
        props.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        let user = &u.authority.userinfo;
        l.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(
                    format!("\0{}\0{}", user.username, user.password).into_bytes(),
                ),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match l.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(format!("expected connection.tune, got {other:?}")),
        };
        l.frame_max = match tune.frame_max {
            0 => 131_072,
            n => n as usize,
        };
        l.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: l.frame_max as u32,
                heartbeat: 0,
            })),
        )
        .await?;
        l.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: u.vhost.as_str().into(),
            })),
        )
        .await?;
        l.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
            .await?;
        l.method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await?;
        l.expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
            .await?;
        Ok(l)
    }

    async fn send(&mut self, b: &[u8]) -> Res<()> {
        self.s.write_all(b).await.map_err(|e| e.to_string())
    }

    async fn method(&mut self, ch: u16, m: AMQPClass) -> Res<()> {
        self.send(&method_frame(ch, m)).await
    }

    /// Reads more bytes; an error at EOF.
    async fn fill(&mut self) -> Res<()> {
        compact(&mut self.buf, &mut self.lo, &mut self.hi, self.frame_max);
        let n = self
            .s
            .read(&mut self.buf[self.hi..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the broker closed the socket".to_owned());
        }
        self.hi += n;
        Ok(())
    }

    /// The next method (set-up only: other frames are skipped).
    async fn next_method(&mut self) -> Res<AMQPClass> {
        loop {
            while let Some(f) = next_frame(&self.buf, &mut self.lo, self.hi)? {
                if f.kind != FRAME_METHOD {
                    continue;
                }
                let p = &self.buf[f.start..f.end];
                return match amq_protocol::protocol::parse_class(p) {
                    Ok((_, m)) => Ok(m),
                    Err(e) => Err(format!("unreadable method: {e:?}")),
                };
            }
            self.fill().await?;
        }
    }

    /// The next method, which must be what `ok` accepts (a close is an
    /// error naming its reason).
    async fn expect(&mut self, ok: impl Fn(&AMQPClass) -> bool) -> Res<AMQPClass> {
        let m = self.next_method().await?;
        if ok(&m) {
            return Ok(m);
        }
        Err(match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                format!("connection closed: {} {}", c.reply_code, c.reply_text)
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                format!("channel closed: {} {}", c.reply_code, c.reply_text)
            }
            other => format!("unexpected {other:?}"),
        })
    }
}

/// Sends connection.close and waits (a little) for close-ok.
async fn close(mut w: OwnedWriteHalf, r: Option<OwnedReadHalf>) {
    let frame = method_frame(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "perf done".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    if w.write_all(&frame).await.is_err() {
        return;
    }
    if let Some(mut r) = r {
        // Whatever comes until EOF (the broker closes after close-ok).
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// Producers
// ---------------------------------------------------------------------------

pub(super) struct RawProducer {
    pub idx: usize,
    pub cfg: Arc<Config>,
    pub stats: Arc<ProducerStats>,
    pub shared: Arc<Shared>,
    pub start: Instant,
    pub deadline: Instant,
}

/// basic.publish to the default exchange with the queue's name as routing
/// key, and the content header: the bytes every message starts with.
fn publish_prefix(cfg: &Config, queue: &str) -> Vec<u8> {
    let mut out = method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ShortString::default(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    // Content header: class 60, weight 0, body size, flags, properties.
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(&60u16.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&(cfg.size as u64).to_be_bytes());
    if cfg.persistent {
        h.extend_from_slice(&0x1000u16.to_be_bytes()); // delivery-mode
        h.push(2);
    } else {
        h.extend_from_slice(&0u16.to_be_bytes());
    }
    push_frame(&mut out, FRAME_HEADER, &h);
    out
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

/// Appends one message (prefix, then the body in frames of at most
/// `frame_max`), its first 8 body bytes the send time.
fn push_message(out: &mut Vec<u8>, prefix: &[u8], body: &mut [u8], frame_max: usize, s: &Shared) {
    out.extend_from_slice(prefix);
    stamp(body, s);
    for chunk in body.chunks(frame_max - 8) {
        push_frame(out, FRAME_BODY, chunk);
    }
}

/// Confirms received so far: everything up to `upto`, and single
/// (out-of-order) ones above it.
#[derive(Default)]
struct Confirms {
    upto: u64,
    singles: BTreeSet<u64>,
}

impl Confirms {
    /// Records an ack or nack of `tag`; returns how many publishes it
    /// settles.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.upto {
            return 0;
        }
        if multiple {
            let above = self.singles.split_off(&(tag + 1));
            let n = tag - self.upto - self.singles.len() as u64;
            self.singles = above;
            self.upto = tag;
            self.absorb();
            return n;
        }
        if !self.singles.insert(tag) {
            return 0;
        }
        self.absorb();
        1
    }

    fn absorb(&mut self) {
        while self.singles.first() == Some(&(self.upto + 1)) {
            self.singles.pop_first();
            self.upto += 1;
        }
    }
}

/// The confirm reader: counts basic.ack / basic.nack into the stats and
/// wakes the writer; any close ends the run with its reason.
async fn read_confirms(
    mut r: OwnedReadHalf,
    stats: Arc<ProducerStats>,
    wake: Arc<Notify>,
    dead: Arc<AtomicBool>,
) -> Res<OwnedReadHalf> {
    let mut buf = vec![0u8; READ_BUF];
    let (mut lo, mut hi) = (0, 0);
    let mut confirms = Confirms::default();
    loop {
        compact(&mut buf, &mut lo, &mut hi, 4096);
        let n = r.read(&mut buf[hi..]).await.map_err(|e| e.to_string());
        let n = match n {
            Ok(0) | Err(_) => {
                dead.store(true, Relaxed);
                wake.notify_one();
                return Err(n.err().unwrap_or("the broker closed the socket".into()));
            }
            Ok(n) => n,
        };
        hi += n;
        while let Some(f) = next_frame(&buf, &mut lo, hi)? {
            if f.kind != FRAME_METHOD {
                continue;
            }
            let p = &buf[f.start..f.end];
            match method_ids(p) {
                (60, 80) | (60, 120) if p.len() >= 13 => {
                    let tag = u64::from_be_bytes(p[4..12].try_into().unwrap_or_default());
                    let n = confirms.settle(tag, p[12] & 1 != 0);
                    let counter = if p[3] == 80 {
                        &stats.confirmed
                    } else {
                        &stats.nacked
                    };
                    counter.fetch_add(n, Relaxed);
                    wake.notify_one();
                }
                (10, 50) | (20, 40) => {
                    dead.store(true, Relaxed);
                    wake.notify_one();
                    return Err(close_reason(p));
                }
                _ => {}
            }
        }
    }
}

/// One raw producer: publishes (with confirms if asked, at most
/// `--confirm` unconfirmed) until its quota, the deadline or the stop.
pub(super) async fn produce(p: RawProducer) -> Res<()> {
    let queue = queue_name(p.idx % p.cfg.queues);
    let mut link = Link::open(&p.cfg.uri, &format!("perf-producer-{}", p.idx)).await?;
    if p.cfg.confirm > 0 {
        link.method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await?;
        link.expect(|m| matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))))
            .await?;
    }
    let frame_max = link.frame_max;
    let (r, mut w) = link.s.into_split();
    let wake = Arc::new(Notify::new());
    let dead = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_confirms(
        r,
        p.stats.clone(),
        wake.clone(),
        dead.clone(),
    ));
    let prefix = publish_prefix(&p.cfg, queue.as_str());
    let mut body = vec![0u8; p.cfg.size];
    let mut out = Vec::with_capacity(WRITE_BATCH * 2);
    let quota = match p.cfg.pmessages {
        0 => u64::MAX,
        n => n,
    };
    let window = if p.cfg.confirm > 0 {
        p.cfg.confirm as u64
    } else {
        u64::MAX
    };
    let settled = |s: &ProducerStats| s.confirmed.load(Relaxed) + s.nacked.load(Relaxed);
    let mut sent = 0u64;
    let done = |p: &RawProducer| p.shared.stopping() || Instant::now() >= p.deadline;
    while sent < quota && !done(&p) && !dead.load(Relaxed) {
        let room = window.saturating_sub(sent - settled(&p.stats));
        if room == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), wake.notified()).await;
            continue;
        }
        let n = match rate_allowance(&p.cfg, p.start, sent, room.min(quota - sent)) {
            Ok(n) => n,
            Err(next) => {
                tokio::time::sleep_until(next.min(p.deadline).into()).await;
                continue;
            }
        };
        out.clear();
        let mut k = 0;
        while k < n && out.len() < WRITE_BATCH {
            push_message(&mut out, &prefix, &mut body, frame_max, &p.shared);
            k += 1;
        }
        w.write_all(&out).await.map_err(|e| e.to_string())?;
        sent += k;
        p.stats.published.fetch_add(k, Relaxed);
    }
    if sent >= quota {
        if p.cfg.confirm > 0 {
            while settled(&p.stats) < sent && Instant::now() < p.deadline && !dead.load(Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(100), wake.notified()).await;
            }
        }
        if settled(&p.stats) >= sent || p.cfg.confirm == 0 {
            p.stats.finished_ns.store(p.shared.now_ns(), Relaxed);
            p.shared.done_notify.notify_one();
        }
    }
    if dead.load(Relaxed) {
        return match reader.await {
            Ok(Err(e)) => Err(e),
            _ => Err("the confirm reader stopped".to_owned()),
        };
    }
    // Let the confirm reader see the close-ok and EOF.
    close(w, None).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------

pub(super) struct RawConsumer {
    pub idx: usize,
    pub cfg: Arc<Config>,
    pub stats: Arc<ConsumerStats>,
    pub shared: Arc<Shared>,
}

/// Where a consumer is in the frames of the delivery it is reading.
#[derive(Default)]
struct Reading {
    /// Body bytes still to come (after the header).
    left: u64,
    /// Expecting the content header of a delivery.
    header_next: bool,
    /// The first body frame not seen yet (it carries the timestamp).
    first_body: bool,
}

/// Subscribes on a fresh connection: basic.qos (unless no-ack) and
/// basic.consume, from `first` on a stream.
async fn subscribe(c: &RawConsumer) -> Res<Link> {
    let name = format!("perf-consumer-{}", c.idx);
    let mut link = Link::open(&c.cfg.uri, &name).await?;
    if !c.cfg.no_ack {
        link.method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: c.cfg.prefetch,
                global: false,
            })),
        )
        .await?;
        link.expect(|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))))
            .await?;
    }
    link.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue_name(c.idx % c.cfg.queues),
            consumer_tag: name.as_str().into(),
            no_local: false,
            no_ack: c.cfg.no_ack,
            exclusive: false,
            nowait: false,
            arguments: super::consumer_arguments(&c.cfg, c.idx),
        })),
    )
    .await?;
    link.expect(|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))))
        .await?;
    Ok(link)
}

fn ack_frame(tag: u64, multiple: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(13);
    p.extend_from_slice(&60u16.to_be_bytes());
    p.extend_from_slice(&80u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes());
    p.push(multiple as u8);
    let mut out = Vec::with_capacity(21);
    push_frame(&mut out, FRAME_METHOD, &p);
    out
}

/// The delivery tag of a basic.deliver payload (after the consumer tag).
fn deliver_tag(p: &[u8]) -> Option<u64> {
    let tag_len = *p.get(4)? as usize;
    let at = 5 + tag_len;
    Some(u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?))
}

/// One raw consumer: reads deliveries until the stop, acking every
/// `prefetch/2`-th tag with multiple (or each one), then acks what it got
/// and closes.
pub(super) async fn consume(c: RawConsumer) -> Res<()> {
    let link = subscribe(&c).await?;
    let ack_every = if c.cfg.ack_multiple {
        match c.cfg.prefetch {
            0 => 500,
            n => u64::from(n / 2).max(1),
        }
    } else {
        1
    };
    let Link {
        s,
        mut buf,
        mut lo,
        mut hi,
        frame_max,
    } = link;
    let (mut r, mut w) = s.into_split();
    let mut st = Reading::default();
    let (mut last_tag, mut acked) = (0u64, 0u64);
    let mut acks = Vec::with_capacity(4096);
    let stats = &c.stats;
    loop {
        let mut got = 0u64;
        let mut now = 0u64;
        while let Some(f) = next_frame(&buf, &mut lo, hi)? {
            let p = &buf[f.start..f.end];
            match f.kind {
                FRAME_METHOD => match method_ids(p) {
                    (60, 60) => {
                        last_tag = deliver_tag(p).ok_or("short basic.deliver")?;
                        st.header_next = true;
                    }
                    (10, 50) | (20, 40) => return Err(close_reason(p)),
                    (60, 30) => return Err("the consumer was cancelled".to_owned()),
                    _ => {}
                },
                FRAME_HEADER if st.header_next => {
                    st.header_next = false;
                    st.left = u64::from_be_bytes(p[4..12].try_into().unwrap_or_default());
                    st.first_body = true;
                    if st.left == 0 {
                        got += 1;
                    }
                }
                FRAME_BODY if st.left > 0 => {
                    if st.first_body && p.len() >= 8 {
                        st.first_body = false;
                        let sent = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                        if sent != 0 {
                            if now == 0 {
                                now = c.shared.now_ns();
                            }
                            stats.latency.record(now.saturating_sub(sent));
                        }
                    }
                    st.left = st.left.saturating_sub(p.len() as u64);
                    if st.left == 0 {
                        got += 1;
                        if !c.cfg.no_ack && last_tag / ack_every > acked / ack_every {
                            let multiple = ack_every > 1;
                            acks.extend_from_slice(&ack_frame(last_tag, multiple));
                            acked = last_tag;
                        }
                    }
                }
                _ => {}
            }
        }
        if got > 0 {
            stats.consumed.fetch_add(got, Relaxed);
            stats.last_ns.store(c.shared.now_ns(), Relaxed);
        }
        if !acks.is_empty() {
            w.write_all(&acks).await.map_err(|e| e.to_string())?;
            acks.clear();
        }
        if c.shared.stopping() {
            break;
        }
        compact(&mut buf, &mut lo, &mut hi, frame_max);
        let read = tokio::time::timeout(Duration::from_millis(100), r.read(&mut buf[hi..])).await;
        match read {
            Err(_) => continue,
            Ok(Ok(0)) => return Err("the broker closed the socket".to_owned()),
            Ok(Ok(n)) => hi += n,
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
    // Settle what was received, so a kept queue holds only the unconsumed.
    if !c.cfg.no_ack && last_tag > acked {
        let _ = w.write_all(&ack_frame(last_tag, true)).await;
    }
    close(w, Some(r)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_settle_each_tag_once() {
        let mut c = Confirms::default();
        assert_eq!(c.settle(1, false), 1);
        assert_eq!(c.settle(3, false), 1);
        assert_eq!(c.settle(3, false), 0, "a repeated single ack");
        assert_eq!(c.settle(5, true), 3, "2, 4 and 5");
        assert_eq!(c.upto, 5);
        assert_eq!(c.settle(4, true), 0);
        assert_eq!(c.settle(7, false), 1);
        assert_eq!(c.settle(6, false), 1);
        assert_eq!((c.upto, c.singles.len()), (7, 0));
    }

    #[test]
    fn frames_are_found_whole_and_in_place() {
        let mut buf = Vec::new();
        push_frame(&mut buf, FRAME_BODY, b"hello");
        push_frame(&mut buf, FRAME_HEADER, b"xy");
        let (mut lo, hi) = (0, buf.len() - 1);
        let f = next_frame(&buf, &mut lo, hi).unwrap().unwrap();
        assert_eq!((f.kind, &buf[f.start..f.end]), (FRAME_BODY, &b"hello"[..]));
        assert!(
            next_frame(&buf, &mut lo, hi).unwrap().is_none(),
            "cut short"
        );
        let f = next_frame(&buf, &mut lo, hi + 1).unwrap().unwrap();
        assert_eq!(&buf[f.start..f.end], b"xy");
        let tag = ack_frame(42, true);
        assert_eq!(method_ids(&tag[7..]), (60, 80));
    }

    #[test]
    fn deliver_tags_are_read_after_the_consumer_tag() {
        let mut p = vec![0, 60, 0, 60, 3, b'a', b'b', b'c'];
        p.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(deliver_tag(&p), Some(7));
        assert_eq!(deliver_tag(&p[..10]), None);
    }
}
