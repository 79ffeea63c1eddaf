//! The on-disk message store: sled 0.34, shared by every durable queue.
//!
//! # Format, version 1
//!
//! Tree `meta`: `format` -> `[1]`. A data directory with another version is
//! refused at open, never silently reinterpreted; a later version migrates
//! from this one by reading the layout below.
//!
//! Message records live in append-only segment files under `msgs/` (see
//! [`crate::segments`]): sled copies whole leaves on each write, so only
//! small entries go into sled. Tree `messages`:
//! - `Q` ++ queue id (u64 BE) ++ seq (u64 BE) -> the record's location
//!   (segment u32, offset u32, length u32, all BE) ++ body length (u32 BE).
//! - `D` ++ queue id (u64 BE) -> the highest seq the queue has delivered
//!   (u64 BE). Queues deliver in seq order, so every message at or below
//!   it was delivered at least once and comes back redelivered.
//!
//! A message record: `[1]` (record version), exchange (u8 length +
//! bytes), routing key (u8 length + bytes), properties (u32 BE length +
//! the raw content-header property bytes), then the body to the end.
//!
//! # What is written
//!
//! - A persistent message routed to N durable queues: one record appended
//!   to the current segment (the body is stored once) and N `Q` entries.
//! - Its ack (or drop) in a queue: that `Q` entry is removed; a segment
//!   file is deleted when no entry points into it any more.
//! - Deliveries write nothing per message: each queue's delivered mark is
//!   written once per flush.
//!
//! [`Disk::flush`] fsyncs the segments and flushes sled concurrently; an
//! index entry whose record did not reach the disk (a crash between the
//! two) is found and dropped at recovery, and nothing is confirmed before
//! both are done.
//! The broker's group-commit thread flushes for many publishers at a time
//! (and at least every few hundred milliseconds) and only then confirms.
//! A crash can therefore forget the last moments of acks and deliveries
//! (an acked message may return; a just-delivered one may return without
//! the redelivered flag), never a confirmed publish. At recovery, entries
//! pointing past the end of a segment, or at a record of the last segment
//! whose checksum fails, are dropped; unreferenced segments are deleted.

use crate::message::{Message, QueuedMessage, StoredRef};
use crate::peek::{PeekBody, PeekEntry, Peeked};
use crate::segments::Segments;
use crate::store::MessageStore;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const FORMAT_VERSION: u8 = 1;

/// The most paged-out body bytes one peek reads from disk (at least one
/// message is always read): a peek at huge messages returns fewer.
pub const PEEK_READ_BUDGET: u64 = 64 * 1024 * 1024;

/// Why the store cannot be used.
#[derive(Debug)]
pub enum DiskError {
    Sled(sled::Error),
    /// The directory holds another format version.
    Version {
        found: Vec<u8>,
    },
    /// A record does not decode.
    Corrupt(String),
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskError::Sled(e) => write!(f, "storage error: {e}"),
            DiskError::Version { found } => write!(
                f,
                "unknown data format version {found:?} (this Warren reads version {FORMAT_VERSION}); refusing to start"
            ),
            DiskError::Corrupt(what) => write!(f, "corrupt data: {what}"),
        }
    }
}

impl std::error::Error for DiskError {}

impl From<std::io::Error> for DiskError {
    fn from(e: std::io::Error) -> Self {
        DiskError::Corrupt(format!("message segments: {e}"))
    }
}

impl From<sled::Error> for DiskError {
    fn from(e: sled::Error) -> Self {
        DiskError::Sled(e)
    }
}

/// A message found on disk at start-up.
#[derive(Debug, Clone)]
pub struct RecoveredEntry {
    pub seq: u64,
    pub stored: StoredRef,
    pub delivered: bool,
    pub size: u32,
}

pub struct Disk {
    db: sled::Db,
    msgs: sled::Tree,
    segments: Arc<Segments>,
    /// A long-lived thread that syncs the segments while the flushing
    /// thread flushes sled (both fsync; one after the other would double
    /// a confirm's latency). Each request carries where to answer.
    segment_syncer: Mutex<SyncRequests>,
    /// Called when the store goes from clean to dirty (the broker's
    /// flusher sleeps until then).
    on_dirty: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Flushes that had something to write (tests: an idle store syncs nothing).
    flushes: AtomicU64,
    /// Index writes and segment releases not yet applied. Queues record
    /// them here under their own lock (a push onto a vector); the flush
    /// applies them to sled in one batch, off the hot path, before it
    /// syncs: sled's per-write cost and any I/O it does stay out of the
    /// queue's mutex.
    pending: Mutex<Vec<IndexOp>>,
    /// One applier at a time, so batches reach sled in order.
    applying: Mutex<()>,
    /// Sizes of the segments found at open, for recovery's checks.
    existing: std::collections::BTreeMap<u32, u64>,
    /// Each live durable queue's delivered mark: (queue, current, written).
    marks: Mutex<Vec<(u64, Arc<AtomicU64>, u64)>>,
    /// One flush at a time: a flush that finds nothing new to sync must not
    /// report done while another is still syncing what it took.
    flushing: Mutex<()>,
    /// Something was written since the last flush started.
    dirty: std::sync::atomic::AtomicBool,
}

/// A change to the message index, applied at the next flush.
enum IndexOp {
    Put {
        key: [u8; 17],
        val: [u8; 16],
    },
    Remove([u8; 17]),
    /// An entry pointing into this segment went (after its `Remove`).
    Release(u32),
}

/// Requests to the segment syncer: each is where to send its result.
type SyncRequests = std::sync::mpsc::Sender<std::sync::mpsc::SyncSender<std::io::Result<()>>>;

fn index_key(queue: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'Q';
    k[1..9].copy_from_slice(&queue.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn mark_key(queue: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'D';
    k[1..].copy_from_slice(&queue.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Encodes a message record.
pub fn encode(m: &Message) -> Vec<u8> {
    encode_with_prefix(m, 0)
}

/// Encodes a message record after `prefix` zero bytes, so an index entry's
/// flag byte costs no second copy.
fn encode_with_prefix(m: &Message, prefix: usize) -> Vec<u8> {
    let ex = m.exchange().as_bytes();
    let rk = m.routing_key().as_bytes();
    let (properties, body) = (m.properties(), m.body());
    let mut v = Vec::with_capacity(
        prefix + 1 + 2 + ex.len() + rk.len() + 4 + properties.len() + body.len(),
    );
    v.resize(prefix, 0);
    v.push(1);
    v.push(ex.len() as u8);
    v.extend_from_slice(ex);
    v.push(rk.len() as u8);
    v.extend_from_slice(rk);
    v.extend_from_slice(&(properties.len() as u32).to_be_bytes());
    v.extend_from_slice(properties);
    v.extend_from_slice(body);
    v
}

/// Decodes a message record. The parts are copied into the message's own
/// allocation, so a held message never pins the (larger) buffer it was
/// read into.
pub fn decode(rec: Bytes, stored: Option<StoredRef>) -> Result<Message, DiskError> {
    let bad = || DiskError::Corrupt("message record".into());
    if rec.first() != Some(&1) {
        return Err(bad());
    }
    let mut at = 1;
    let short = |at: &mut usize| -> Result<&str, DiskError> {
        let n = *rec.get(*at).ok_or_else(bad)? as usize;
        let s = rec.get(*at + 1..*at + 1 + n).ok_or_else(bad)?;
        *at += 1 + n;
        std::str::from_utf8(s).map_err(|_| bad())
    };
    let exchange = short(&mut at)?;
    let routing_key = short(&mut at)?;
    let n = rec.get(at..at + 4).ok_or_else(bad)?;
    let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
    at += 4;
    if rec.len() < at + n {
        return Err(bad());
    }
    let properties = &rec[at..at + n];
    let body = &rec[at + n..];
    let mut m = Message::new(exchange, routing_key, properties, body, true).map_err(|_| bad())?;
    m.stored = stored;
    Ok(m)
}

impl Disk {
    /// Opens (or creates) the store in `dir`. `cache_bytes` bounds sled's
    /// page cache, which is most of the store's memory.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Arc<Disk>, DiskError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from our group commit, not sled's timer.
            .flush_every_ms(None);
        // sled's I/O threads release the directory lock of a closed database
        // a moment after it is dropped (an in-process restart); another
        // running broker holds it for good, which we report after a while.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("lock") && tries < 40 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let meta = db.open_tree("meta")?;
        match meta.get("format")? {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => return Err(DiskError::Version { found: v.to_vec() }),
            None => {
                meta.insert("format", &[FORMAT_VERSION])?;
                db.flush()?;
            }
        }
        let msgs = db.open_tree("messages")?;
        let (segments, existing) = Segments::open(&dir.join("msgs"))?;
        let segments = Arc::new(segments);
        let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::SyncSender<_>>();
        let syncing = segments.clone();
        std::thread::Builder::new()
            .name("warren-segsync".into())
            // Ends when the Disk (the only sender) is dropped.
            .spawn(move || {
                for reply in rx {
                    let _ = reply.send(syncing.flush());
                }
            })
            .map_err(|e| DiskError::Corrupt(format!("cannot start the segment syncer: {e}")))?;
        Ok(Arc::new(Disk {
            db,
            msgs,
            segments,
            segment_syncer: Mutex::new(tx),
            on_dirty: std::sync::OnceLock::new(),
            flushes: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            applying: Mutex::new(()),
            existing,
            marks: Mutex::new(Vec::new()),
            flushing: Mutex::new(()),
            dirty: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The database, for the broker's own trees (definitions).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Notes a write (the broker's definitions write to [`Disk::db`]
    /// directly) that the next flush must cover. Call it after the write.
    pub fn mark_dirty(&self) {
        // A load first: the flag is usually set already, and a plain read
        // does not bounce the cache line between cores.
        if !self.dirty.load(Ordering::Relaxed) && !self.dirty.swap(true, Ordering::SeqCst) {
            if let Some(f) = self.on_dirty.get() {
                f();
            }
        }
    }

    /// Whether something was written that no flush has started to cover.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Sets what to call when the store goes from clean to dirty (once).
    pub fn set_on_dirty(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_dirty.set(f);
    }

    /// Flushes so far that had something to make durable.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Makes everything written so far durable, delivered marks included.
    /// Nothing written since the last flush: returns at once, without a
    /// sync (an idle broker does not touch the disk).
    pub fn flush(&self) -> Result<(), DiskError> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        // Cleared before anything is written out: a write that lands
        // after this sets it again and is covered by the next flush.
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let res = self.flush_all();
        if res.is_err() {
            // Retried by the next flush.
            self.dirty.store(true, Ordering::SeqCst);
        }
        res
    }

    /// Applies the index changes recorded so far, in order.
    fn apply_pending(&self) -> Result<(), DiskError> {
        let _in_order = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let ops = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if ops.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for op in &ops {
            match op {
                IndexOp::Put { key, val } => batch.insert(&key[..], &val[..]),
                IndexOp::Remove(key) => batch.remove(&key[..]),
                IndexOp::Release(_) => {}
            }
        }
        self.msgs.apply_batch(batch)?;
        // After the entries are gone: a segment deleted before its entries
        // were would only cost recovery a dropped entry, but this way not
        // even that.
        for op in ops {
            if let IndexOp::Release(seg) = op {
                self.segments.release(seg);
            }
        }
        Ok(())
    }

    fn push_ops(&self, ops: impl IntoIterator<Item = IndexOp>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ops);
        self.mark_dirty();
    }

    fn flush_all(&self) -> Result<(), DiskError> {
        self.apply_pending()?;
        {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            for (queue, cur, written) in marks.iter_mut() {
                let now = cur.load(Ordering::Relaxed);
                if now != *written {
                    self.msgs.insert(mark_key(*queue), &now.to_be_bytes())?;
                    *written = now;
                }
            }
        }
        // Both at once: recovery drops an entry whose record did not make
        // it, so their order does not matter, and a confirm waits for both.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sent = self
            .segment_syncer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(tx)
            .is_ok();
        let db = self.db.flush();
        let seg = if sent {
            rx.recv()
                .map_err(|_| DiskError::Corrupt("the segment syncer stopped".into()))?
        } else {
            self.segments.flush()
        };
        seg?;
        db?;
        Ok(())
    }

    fn register_mark(&self, queue: u64, start: u64) -> Arc<AtomicU64> {
        let a = Arc::new(AtomicU64::new(start));
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((queue, a.clone(), start));
        a
    }

    /// A queue's store goes away: its last mark is written (to reach the
    /// disk with the next flush) and no longer tracked.
    fn forget_mark(&self, queue: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        for (q, cur, written) in marks.iter() {
            let now = cur.load(Ordering::Relaxed);
            if *q == queue && now != *written {
                // Rare (a queue goes away): written directly.
                let _ = self.msgs.insert(mark_key(queue), &now.to_be_bytes());
                self.mark_dirty();
            }
        }
        marks.retain(|(q, _, _)| *q != queue);
    }

    /// Writes a message's record once for the `queues` durable queues
    /// that will hold it.
    pub fn put_body(&self, m: &Message, queues: usize) -> Result<StoredRef, DiskError> {
        let r = self.segments.append(&encode(m), queues as u32)?;
        self.mark_dirty();
        Ok(r)
    }

    /// Reads the message at `r`: an error (never another record) when it
    /// is gone with its segment or does not read back intact.
    pub(crate) fn read(&self, r: StoredRef) -> Result<Message, DiskError> {
        decode(Bytes::from(self.segments.read(r)?), Some(r))
    }

    /// Records an index entry (applied at the next flush; see `pending`).
    fn index_put(&self, queue: u64, seq: u64, r: StoredRef, size: u32) -> Result<(), DiskError> {
        let mut val = [0u8; 16];
        val[..12].copy_from_slice(&r.to_bytes());
        val[12..].copy_from_slice(&size.to_be_bytes());
        self.push_ops([IndexOp::Put {
            key: index_key(queue, seq),
            val,
        }]);
        Ok(())
    }

    /// A queue no longer holds `seq`: drop its entry and its reference to
    /// the record's segment (both at the next flush).
    fn release(&self, queue: u64, seq: u64, r: StoredRef) -> Result<(), DiskError> {
        self.push_ops([
            IndexOp::Remove(index_key(queue, seq)),
            IndexOp::Release(r.seg),
        ]);
        Ok(())
    }

    /// Start-up: reads every queue index once, drops entries of queues that
    /// no longer exist and entries whose record did not reach the disk,
    /// deletes segments nothing refers to, and returns each live queue's
    /// entries in order.
    pub fn recover(
        &self,
        live_queues: &HashSet<u64>,
    ) -> Result<HashMap<u64, Vec<RecoveredEntry>>, DiskError> {
        let mut marks: HashMap<u64, u64> = HashMap::new();
        for kv in self.msgs.scan_prefix(b"D") {
            let (k, v) = kv?;
            if k.len() != 9 || v.len() != 8 {
                return Err(DiskError::Corrupt("delivered mark".into()));
            }
            let queue = be_u64(&k[1..]);
            if live_queues.contains(&queue) {
                marks.insert(queue, be_u64(&v));
            } else {
                self.msgs.remove(k)?;
            }
        }
        // The last segment may end in a record that was cut short.
        let last = self.existing.keys().next_back().copied();
        let mut refs: HashMap<u32, u64> = HashMap::new();
        let mut out: HashMap<u64, Vec<RecoveredEntry>> = HashMap::new();
        let mut drop_keys = Vec::new();
        for kv in self.msgs.scan_prefix(b"Q") {
            let (k, v) = kv?;
            if k.len() != 17 || v.len() != 16 {
                return Err(DiskError::Corrupt("queue index entry".into()));
            }
            let queue = be_u64(&k[1..9]);
            let seq = be_u64(&k[9..]);
            let loc = StoredRef::from_bytes(&v[..12]).expect("12 bytes");
            let size = u32::from_be_bytes([v[12], v[13], v[14], v[15]]);
            let on_disk = self
                .existing
                .get(&loc.seg)
                .is_some_and(|len| loc.off as u64 + 8 + loc.len as u64 <= *len);
            let intact = on_disk && (Some(loc.seg) != last || self.segments.read(loc).is_ok());
            if !live_queues.contains(&queue) || !intact {
                drop_keys.push(k);
                continue;
            }
            *refs.entry(loc.seg).or_default() += 1;
            let delivered = marks.get(&queue).is_some_and(|m| seq <= *m);
            out.entry(queue).or_default().push(RecoveredEntry {
                seq,
                stored: loc,
                delivered,
                size,
            });
        }
        if !drop_keys.is_empty() {
            tracing::warn!(
                entries = drop_keys.len(),
                "dropping index entries of deleted queues or unwritten messages"
            );
        }
        for k in drop_keys {
            self.msgs.remove(k)?;
        }
        self.segments.set_recovered_refs(refs, &self.existing);
        self.db.flush()?;
        Ok(out)
    }

    /// (bytes of records appended since open, index entries): tests check
    /// that a shared body is written once and entries go with acks.
    pub fn counts(&self) -> (u64, usize) {
        if let Err(e) = self.apply_pending() {
            tracing::error!(error = %e, "cannot apply index changes");
        }
        (
            self.segments.appended(),
            self.msgs.scan_prefix(b"Q").count(),
        )
    }

    /// Test seam: make message writes fail, as on a full disk.
    pub fn inject_write_failures(&self, fail: bool) {
        self.segments.inject_append_failures(fail);
    }

    /// Live record references (tests).
    pub fn live_refs(&self) -> u64 {
        let _ = self.apply_pending();
        self.segments.live_refs()
    }

    /// Segment files on disk.
    pub fn segment_files(&self) -> usize {
        let _ = self.apply_pending();
        self.segments.files()
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// In memory; `None` when paged out to disk only.
    msg: Option<Arc<Message>>,
    stored: Option<StoredRef>,
    redelivered: bool,
    size: u32,
}

/// A durable queue's store: persistent messages live on disk (bodies are
/// kept in memory only while the queue's in-memory bytes stay under a
/// limit), transient ones in memory.
pub struct DiskStore {
    disk: Arc<Disk>,
    queue: u64,
    requeued: BTreeMap<u64, Entry>,
    ready: VecDeque<Entry>,
    /// Delivered persistent messages awaiting settle.
    out: HashMap<u64, StoredRef>,
    /// The highest seq delivered, written to disk at each flush.
    delivered: Arc<AtomicU64>,
    bytes: u64,
    mem_bytes: u64,
    mem_limit: u64,
    /// Body bytes of ready entries whose body is on disk only.
    paged_bytes: u64,
    next_seq: u64,
}

impl DiskStore {
    /// A store for queue `queue`, holding what was recovered for it.
    pub fn new(
        disk: Arc<Disk>,
        queue: u64,
        recovered: Vec<RecoveredEntry>,
        mem_limit: u64,
    ) -> Self {
        let mut next_seq = 1;
        let mut bytes = 0;
        let mut mark = 0;
        let mut ready = VecDeque::with_capacity(recovered.len());
        for r in recovered {
            next_seq = next_seq.max(r.seq + 1);
            bytes += r.size as u64;
            if r.delivered {
                mark = mark.max(r.seq);
            }
            ready.push_back(Entry {
                seq: r.seq,
                msg: None,
                stored: Some(r.stored),
                redelivered: r.delivered,
                size: r.size,
            });
        }
        let delivered = disk.register_mark(queue, mark);
        DiskStore {
            paged_bytes: bytes,
            disk,
            queue,
            requeued: BTreeMap::new(),
            ready,
            out: HashMap::new(),
            delivered,
            bytes,
            mem_bytes: 0,
            mem_limit,
            next_seq,
        }
    }

    fn log_err(&self, what: &str, e: DiskError) {
        // The queue cannot act on a store error mid-operation; the message
        // stays in memory and the operator learns from the log.
        tracing::error!(queue = self.queue, error = %e, "store {what} failed");
    }

    fn keep_in_memory(&mut self, size: u64) -> bool {
        if self.mem_bytes + size <= self.mem_limit {
            self.mem_bytes += size;
            true
        } else {
            false
        }
    }
}

impl MessageStore for DiskStore {
    fn push(&mut self, m: QueuedMessage) {
        let size = m.message.size();
        let stored = m.message.stored;
        if let Some(r) = stored {
            if let Err(e) = self.disk.index_put(self.queue, m.seq, r, size as u32) {
                self.log_err("index write", e);
            }
        }
        // Transient messages exist only in memory.
        let keep = stored.is_none() || self.keep_in_memory(size);
        self.bytes += size;
        if !keep {
            self.paged_bytes += size;
        }
        self.ready.push_back(Entry {
            seq: m.seq,
            msg: keep.then_some(m.message),
            stored,
            redelivered: m.redelivered,
            size: size as u32,
        });
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        loop {
            let e = match self.requeued.pop_first() {
                Some((_, e)) => e,
                None => self.ready.pop_front()?,
            };
            self.bytes -= e.size as u64;
            let message = match e.msg {
                Some(m) => {
                    if e.stored.is_some() {
                        self.mem_bytes -= e.size as u64;
                    }
                    m
                }
                None => {
                    self.paged_bytes -= e.size as u64;
                    let r = e.stored.expect("paged-out entries are stored");
                    match self.disk.read(r) {
                        Ok(m) => Arc::new(m),
                        Err(err) => {
                            // A lost body cannot be delivered; drop its entry.
                            self.log_err("read", err);
                            let _ = self.disk.release(self.queue, e.seq, r);
                            continue;
                        }
                    }
                }
            };
            if let Some(r) = e.stored {
                self.delivered.fetch_max(e.seq, Ordering::Relaxed);
                // The new mark is written by the next flush.
                self.disk.mark_dirty();
                self.out.insert(e.seq, r);
            }
            return Some(QueuedMessage {
                seq: e.seq,
                message,
                redelivered: e.redelivered,
            });
        }
    }

    fn requeue(&mut self, m: QueuedMessage) {
        let size = m.message.size();
        // A delivery awaiting settle still holds its disk entry. A no-ack
        // delivery handed back (its consumer went before it was written)
        // was released already: it is written again, so a persistent
        // message stays as durable as it was.
        let stored = match self.out.remove(&m.seq) {
            Some(r) => Some(r),
            None if m.message.stored.is_some() => {
                let r = self.disk.put_body(&m.message, 1);
                let r = r.and_then(|r| {
                    self.disk.index_put(self.queue, m.seq, r, size as u32)?;
                    Ok(r)
                });
                match r {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.log_err("rewrite", e);
                        None
                    }
                }
            }
            None => None,
        };
        if stored.is_some() {
            self.mem_bytes += size;
        }
        self.bytes += size;
        self.requeued.insert(
            m.seq,
            Entry {
                seq: m.seq,
                msg: Some(m.message),
                stored,
                redelivered: m.redelivered,
                size: size as u32,
            },
        );
    }

    fn settle(&mut self, seq: u64) {
        if let Some(r) = self.out.remove(&seq) {
            if let Err(e) = self.disk.release(self.queue, seq, r) {
                self.log_err("release", e);
            }
        }
    }

    fn purge(&mut self) -> usize {
        let n = self.len();
        let entries: Vec<Entry> = std::mem::take(&mut self.requeued)
            .into_values()
            .chain(std::mem::take(&mut self.ready))
            .collect();
        for e in entries {
            if let Some(r) = e.stored {
                if let Err(err) = self.disk.release(self.queue, e.seq, r) {
                    self.log_err("purge", err);
                }
            }
        }
        self.bytes = 0;
        self.mem_bytes = 0;
        self.paged_bytes = 0;
        n
    }

    fn len(&self) -> usize {
        self.requeued.len() + self.ready.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn memory_bytes(&self) -> u64 {
        self.bytes - self.paged_bytes
    }

    fn peek_entries(&self, offset: usize, n: usize) -> Peeked {
        let r = self.requeued.len();
        let start = offset.saturating_sub(r).min(self.ready.len());
        let left = n.saturating_sub(r.saturating_sub(offset).min(n));
        let entries = self
            .requeued
            .values()
            .skip(offset)
            .take(n)
            .chain(self.ready.range(start..).take(left));
        let mut out = Vec::new();
        let mut to_read = 0u64;
        for e in entries {
            // Paged-out bodies are only located here and read later, one
            // record at a time, without the queue's lock; they stay paged
            // out (nothing is cached), so peeking loads no more of the
            // queue than it shows, and at most PEEK_READ_BUDGET of it.
            let body = match (&e.msg, e.stored) {
                (Some(m), _) => PeekBody::Loaded(m.clone()),
                (None, Some(r)) => {
                    if to_read > 0 && to_read + e.size as u64 > PEEK_READ_BUDGET {
                        break;
                    }
                    to_read += e.size as u64;
                    PeekBody::Stored(r)
                }
                (None, None) => continue,
            };
            out.push(PeekEntry {
                seq: e.seq,
                redelivered: e.redelivered,
                body,
            });
        }
        Peeked::new(out, Some(self.disk.clone()))
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Entries stay on disk for recovery (a deleted queue purged itself
        // first); only the in-memory delivered mark goes.
        self.disk.forget_mark(self.queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{msg, store_contract};
    use crate::store::MessageStore;

    fn persistent(seq: u64, body: &str, disk: &Disk, queues: usize) -> QueuedMessage {
        let mut m = (*msg(seq, body).message).clone();
        m.persistent = true;
        m.stored = Some(disk.put_body(&m, queues).unwrap());
        QueuedMessage {
            seq,
            message: Arc::new(m),
            redelivered: false,
        }
    }

    /// Reopens the directory as a restarted broker would.
    fn reopen(dir: &std::path::Path, queue: u64, mem_limit: u64) -> (Arc<Disk>, DiskStore) {
        let disk = Disk::open(dir, 1 << 20).unwrap();
        let mut rec = disk.recover(&[queue].into()).unwrap();
        let entries = rec.remove(&queue).unwrap_or_default();
        (
            disk.clone(),
            DiskStore::new(disk, queue, entries, mem_limit),
        )
    }

    #[test]
    fn disk_store_meets_the_shared_contract() {
        for (name, mem_limit) in [("in-memory-bodies", 1 << 20), ("paged-out", 0)] {
            let dir = tempdir(name);
            let (disk, store) = reopen(&dir, 1, mem_limit);
            let holder = std::cell::RefCell::new(Some(disk));
            let mk = |seq: u64, body: &str| {
                let d = holder.borrow();
                persistent(seq, body, d.as_ref().unwrap(), 1)
            };
            let restart = |s: Box<dyn MessageStore>| -> Box<dyn MessageStore> {
                drop(s);
                holder.borrow().as_ref().unwrap().flush().unwrap();
                *holder.borrow_mut() = None;
                let (disk, store) = reopen(&dir, 1, mem_limit);
                *holder.borrow_mut() = Some(disk);
                Box::new(store)
            };
            store_contract(Box::new(store), &mk, &restart);
        }
    }

    #[test]
    fn persistent_messages_survive_a_restart_in_order_with_delivered_flags() {
        let dir = tempdir("restart");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            let mut s = DiskStore::new(disk.clone(), 7, Vec::new(), 0);
            for i in 1..=5 {
                s.push(persistent(i, &format!("m{i}"), &disk, 1));
            }
            let first = s.pop().unwrap();
            assert_eq!(first.message.body(), b"m1");
            let second = s.pop().unwrap();
            s.settle(second.seq); // acked: gone for good
                                  // first stays unacked across the "crash".
            disk.flush().unwrap();
        }
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let live: HashSet<u64> = [7].into();
        let mut rec = disk.recover(&live).unwrap();
        let mut s = DiskStore::new(disk.clone(), 7, rec.remove(&7).unwrap(), 0);
        assert_eq!(s.len(), 4);
        assert_eq!(s.next_seq(), 6);
        let got: Vec<(String, bool)> = std::iter::from_fn(|| s.pop())
            .map(|m| {
                (
                    String::from_utf8(m.message.body().to_vec()).unwrap(),
                    m.redelivered,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("m1".into(), true),
                ("m3".into(), false),
                ("m4".into(), false),
                ("m5".into(), false)
            ]
        );
    }

    #[test]
    fn peeking_reads_paged_out_bodies_without_loading_them() {
        let dir = tempdir("peek");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            let mut s = DiskStore::new(disk.clone(), 5, Vec::new(), 0);
            for i in 1..=1000 {
                s.push(persistent(i, &format!("m{i}"), &disk, 1));
            }
            disk.flush().unwrap();
        }
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let mut rec = disk.recover(&[5].into()).unwrap();
        let mut s = DiskStore::new(disk, 5, rec.remove(&5).unwrap(), 1 << 20);
        let bodies = |v: Vec<QueuedMessage>| -> Vec<String> {
            v.iter()
                .map(|m| String::from_utf8(m.message.body().to_vec()).unwrap())
                .collect()
        };
        assert_eq!(bodies(s.peek_at(997, 10)), vec!["m998", "m999", "m1000"]);
        assert_eq!(bodies(s.peek_at(0, 2)), vec!["m1", "m2"]);
        assert_eq!(s.mem_bytes, 0, "peeked bodies stay on disk");
        assert!(s.ready.iter().all(|e| e.msg.is_none()));
        let first = s.pop().unwrap();
        assert_eq!(first.message.body(), b"m1");
        assert!(!first.redelivered, "peeking delivers nothing");
        assert_eq!(s.len(), 999);
    }

    #[test]
    fn peeking_in_two_steps_reads_paged_out_bodies_after_the_snapshot() {
        let dir = tempdir("peek2");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            let mut s = DiskStore::new(disk.clone(), 6, Vec::new(), 0);
            for i in 1..=100 {
                s.push(persistent(i, &format!("m{i}"), &disk, 1));
            }
            disk.flush().unwrap();
        }
        let (disk, mut s) = reopen(&dir, 6, 1 << 20);
        // A requeued message is in memory; the rest are paged out.
        let head = s.pop().unwrap();
        s.requeue(QueuedMessage {
            redelivered: true,
            ..head
        });
        let p = s.peek_entries(0, 4);
        assert_eq!(p.len(), 4);
        assert!(matches!(p.entries()[0].body, PeekBody::Loaded(_)));
        assert!(
            p.entries()[1..]
                .iter()
                .all(|e| matches!(e.body, PeekBody::Stored(_))),
            "paged-out bodies are only located under the lock"
        );
        let shown = |v: Vec<(usize, QueuedMessage)>| -> Vec<(usize, String, bool)> {
            v.into_iter()
                .map(|(i, m)| {
                    let body = String::from_utf8(m.message.body().to_vec()).unwrap();
                    (i, body, m.redelivered)
                })
                .collect()
        };
        assert_eq!(
            shown(p.load()),
            vec![
                (0, "m1".into(), true),
                (1, "m2".into(), false),
                (2, "m3".into(), false),
                (3, "m4".into(), false)
            ]
        );
        assert_eq!(s.mem_bytes, 2, "only the requeued body is in memory");

        // The snapshot outlives what it saw: every message is acked and
        // the segment holding the bodies is deleted before they are read.
        let p = s.peek_entries(50, 3);
        let files = disk.segment_files();
        while let Some(m) = s.pop() {
            s.settle(m.seq);
        }
        assert!(disk.segment_files() < files, "the old segment was deleted");
        assert!(p.load().is_empty(), "gone bodies are skipped");
        assert!(s.peek_entries(0, 10).is_empty());
    }

    #[test]
    fn shared_bodies_are_stored_once_and_collected_with_the_last_queue() {
        let dir = tempdir("shared");
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let m = persistent(1, "both", &disk, 2);
        let mut a = DiskStore::new(disk.clone(), 1, Vec::new(), 1 << 20);
        let mut b = DiskStore::new(disk.clone(), 2, Vec::new(), 1 << 20);
        a.push(m.clone());
        b.push(m);
        let record = disk.counts().0;
        assert!(
            record < 2 * 40,
            "one record of {record} bytes for both queues"
        );
        assert_eq!(disk.counts().1, 2, "two index entries");
        let x = a.pop().unwrap();
        a.settle(x.seq);
        assert_eq!(disk.counts(), (record, 1));
        let y = b.pop().unwrap();
        b.settle(y.seq);
        assert_eq!(disk.counts(), (record, 0));
    }

    #[test]
    fn recovery_drops_deleted_queues_and_orphans() {
        let dir = tempdir("orphans");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            let mut gone = DiskStore::new(disk.clone(), 9, Vec::new(), 0);
            gone.push(persistent(1, "x", &disk, 1));
            // A body whose index entry never made it.
            let mut m = (*msg(0, "orphan").message).clone();
            m.persistent = true;
            disk.put_body(&m, 1).unwrap();
            disk.flush().unwrap();
            assert_eq!(disk.segment_files(), 1);
        }
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let rec = disk.recover(&HashSet::new()).unwrap();
        assert!(rec.is_empty());
        assert_eq!(disk.counts(), (0, 0));
        assert_eq!(
            disk.segment_files(),
            1,
            "only the new, empty segment is left"
        );
    }

    #[test]
    fn a_released_message_handed_back_is_rewritten_and_released_once() {
        let dir = tempdir("handback");
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let mut s = DiskStore::new(disk.clone(), 4, Vec::new(), 1 << 20);
        s.push(persistent(1, "a", &disk, 1));
        s.push(persistent(2, "b", &disk, 1));
        // A no-ack delivery: popped and settled at once, then handed back.
        let m = s.pop().unwrap();
        s.settle(m.seq);
        assert_eq!(disk.counts().1, 1);
        s.requeue(m);
        assert_eq!(disk.counts().1, 2, "handed back: durable again");
        let again = s.pop().unwrap();
        s.settle(again.seq);
        assert_eq!(disk.counts().1, 1, "message 2's entry is untouched");
        assert_eq!(
            disk.live_refs(),
            1,
            "message 2's record is still referenced"
        );
        let two = s.pop().unwrap();
        assert_eq!(two.message.body(), b"b");
        s.settle(two.seq);
        assert_eq!(disk.counts().1, 0);
    }

    #[test]
    fn entries_whose_record_was_cut_short_are_dropped() {
        let dir = tempdir("torn");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            let mut s = DiskStore::new(disk.clone(), 3, Vec::new(), 0);
            s.push(persistent(1, "whole", &disk, 1));
            s.push(persistent(2, "cut short", &disk, 1));
            disk.flush().unwrap();
        }
        // Truncate the segment in the middle of the second record.
        let seg = std::fs::read_dir(dir.join("msgs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let mut rec = disk.recover(&[3].into()).unwrap();
        let entries = rec.remove(&3).unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
        let mut s = DiskStore::new(disk, 3, entries, 0);
        assert_eq!(s.pop().unwrap().message.body(), b"whole");
    }

    /// Nothing written since the last flush: a flush syncs nothing (an
    /// idle broker's flusher never touches the disk); index changes are
    /// recorded under the queue's lock and reach sled only at the flush.
    #[test]
    fn flushes_sync_only_what_was_written_and_apply_index_changes() {
        let dir = tempdir("idle");
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        disk.flush().unwrap();
        let base = disk.flush_count();
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base, "nothing to sync");
        let mut s = DiskStore::new(disk.clone(), 8, Vec::new(), 1 << 20);
        s.push(persistent(1, "a", &disk, 1));
        assert_eq!(
            disk.msgs.scan_prefix(b"Q").count(),
            0,
            "the entry waits for the flush"
        );
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base + 1);
        assert_eq!(disk.msgs.scan_prefix(b"Q").count(), 1);
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base + 1, "still nothing new");
        let m = s.pop().unwrap();
        s.settle(m.seq);
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base + 2, "the ack and mark are written");
        assert_eq!(disk.msgs.scan_prefix(b"Q").count(), 0);
        drop(s);
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let dir = tempdir("version");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            disk.db()
                .open_tree("meta")
                .unwrap()
                .insert("format", &[99])
                .unwrap();
            disk.flush().unwrap();
        }
        match Disk::open(&dir, 1 << 20) {
            Err(DiskError::Version { found }) => assert_eq!(found, vec![99]),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a version-99 directory"),
        }
    }

    /// A test's directory, removed when the test ends (declared before
    /// the stores that use it, so it drops after them).
    struct TempDir(std::path::PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = std::path::PathBuf;
        fn deref(&self) -> &std::path::PathBuf {
            &self.0
        }
    }

    impl AsRef<std::path::Path> for TempDir {
        fn as_ref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "warren-disk-test-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}
