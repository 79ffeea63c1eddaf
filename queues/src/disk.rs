//! The on-disk message store, shared by every durable queue: segment
//! files for message records, an append-only index for which queue holds
//! which record, and sled 0.34 for the broker's definitions.
//!
//! # Format, version 5
//!
//! sled tree `meta`: `format` -> `[5]`; `legacy_segments` -> the highest
//! segment number written by version 1 (u32 BE), when the directory was
//! upgraded from it. A data directory with an unknown version is refused
//! at open, never silently reinterpreted.
//!
//! Message records live in append-only segment files under `msgs/` (see
//! [`crate::segments`]; records are checksummed with CRC-32C). A message
//! record: `[1]` (record version), exchange (u8 length + bytes), routing
//! key (u8 length + bytes), properties (u32 BE length + the raw
//! content-header property bytes), then the body to the end. A message
//! published with a `BCC` header (removed before delivery, its keys kept
//! for dead-lettering) has record version `[0x11]` (1 with
//! [`RECORD_BCC`]) and, right after it, its BCC keys: a u32 BE length of
//! the section, then each key as a u32 BE length and its bytes.
//!
//! The index lives in append-only files under `index/` (see
//! [`crate::journal`]): a `P` entry per message a durable queue holds
//! (queue id, seq, the record's location, body size), an ack entry when
//! it is acked or dropped, and `D` entries with each queue's delivered
//! mark (the highest seq delivered: queues deliver in seq order, so every
//! message at or below it comes back redelivered).
//!
//! Version 3 adds `T` index entries (a message's expiry deadline, right
//! after its `P` entry); a version-2 directory has none and is read as it
//! is, its version relabelled at open. Version 4 adds `C` index entries
//! (how often a message was handed back, for delivery limits); a
//! version-3 (or 2) directory has none and is likewise read as it is.
//! Version 5 adds records with BCC keys (record version `[0x11]`); a
//! version-4 (3, 2) directory has none and is likewise read as it is.
//!
//! `transient/` holds bodies only memory would otherwise hold (non-durable
//! queues', durable queues' transient ones) paged out past a queue's memory
//! budget ([`Disk::put_transient`]): segment records
//! whose first byte is 1 (or 2 for a message published persistent), with
//! [`RECORD_BCC`] and the BCC section as above when it has BCC keys, no
//! index, never fsynced, deleted at open.
//!
//! # Version 1, read for the upgrade
//!
//! Version 1 kept the index in sled (tree `messages`: `Q` ++ queue id ++
//! seq -> location ++ body size; `D` ++ queue id -> mark) and checksummed
//! segment records with 32-bit FNV-1a. Opening a version-1 directory
//! writes its index entries and marks into a first index file, fsyncs it,
//! records the last version-1 segment (read with the old checksum) and the
//! new version, then empties the old tree. A crash before the version is
//! written redoes the upgrade from scratch; after it, the old tree is
//! dropped at the next open.
//!
//! # What is written
//!
//! - A persistent message routed to N durable queues: one record appended
//!   to the current segment (the body is stored once, copied once into the
//!   write buffer) and N index entries.
//! - Its ack (or drop) in a queue: an ack entry; a segment file is deleted
//!   when no live index entry points into it, an index file when every
//!   entry in it is acked.
//! - Deliveries write nothing per message: each queue's delivered mark is
//!   written once per flush.
//!
//! Queues call in under their own mutex, so nothing here does I/O on
//! their behalf there: index entries and acks are appended to the
//! index's buffers (no I/O), segment releases are recorded in a pending
//! list applied by [`Disk::flush`], and bodies that are paged out are read
//! by the store's loader thread ([`Loads`]), never by `pop`.
//!
//! [`Disk::flush`] writes the index and fsyncs it (and flushes sled) while
//! a long-lived helper thread writes and fsyncs the segments; with nothing
//! written since the last flush it does nothing. An index entry whose
//! record did not reach the disk (a crash between the two) is found and
//! dropped at recovery, and nothing is confirmed before both are done.
//! The broker's group-commit thread flushes for many publishers at a time
//! (and within a few hundred milliseconds of any other write) and only
//! then confirms.
//! A crash can therefore forget the last moments of acks and deliveries
//! (an acked message may return; a just-delivered one may return without
//! the redelivered flag), never a confirmed publish. At recovery, index
//! entries that fail their checksum are ignored, and entries pointing past
//! the end of a segment, or at a record of the last segment whose checksum
//! fails, are dropped; unreferenced segments are deleted.

use crate::journal::{IndexRef, Journal};
use crate::message::{Message, QueuedMessage, StoredRef};
use crate::peek::{PeekBody, PeekEntry, Peeked};
use crate::segments::Segments;
use crate::store::{MessageStore, Tally};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const FORMAT_VERSION: u8 = 5;
/// The version this build upgrades from.
const LEGACY_VERSION: u8 = 1;
/// Versions 2 to 4 differ from 5 only in lacking index entry kinds (2:
/// `T` deadlines; 2 and 3: `C` delivery counts) and record kinds (all:
/// records with BCC keys): they are read as they are and relabelled.
const VERSION_2: u8 = 2;
const VERSION_3: u8 = 3;
const VERSION_4: u8 = 4;

/// Set in a record's first byte (durable store and transient area alike)
/// when a BCC section follows it.
const RECORD_BCC: u8 = 0x10;

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
    /// Its index entry.
    pub index: IndexRef,
    pub delivered: bool,
    pub size: u32,
    /// When it expires (ms since the epoch), if it has a TTL.
    pub deadline: Option<u64>,
    /// How often it was handed back, and that count's index entry.
    pub delivery_count: Option<(u32, IndexRef)>,
}

/// Recovery of `C` entries: the highest count of each kept message stays
/// live and goes with it; older counts (a replaced one whose ack was lost)
/// and counts of messages that are gone are acked.
fn attach_counts(
    counts: Vec<crate::journal::FoundCount>,
    out: &mut HashMap<u64, Vec<RecoveredEntry>>,
    kept: &mut Vec<IndexRef>,
    dropped: &mut Vec<IndexRef>,
) {
    if counts.is_empty() {
        return;
    }
    let mut best: HashMap<(u64, u64), (u32, IndexRef)> = HashMap::new();
    for c in counts {
        match best.get(&(c.queue, c.seq)) {
            Some(&(n, _)) if n >= c.count => dropped.push(c.at),
            _ => {
                if let Some((_, old)) = best.insert((c.queue, c.seq), (c.count, c.at)) {
                    dropped.push(old);
                }
            }
        }
    }
    for (q, entries) in out.iter_mut() {
        for e in entries.iter_mut() {
            if let Some(c) = best.remove(&(*q, e.seq)) {
                kept.push(c.1);
                e.delivery_count = Some(c);
            }
        }
    }
    dropped.extend(best.into_values().map(|(_, at)| at));
}

pub struct Disk {
    db: sled::Db,
    segments: Arc<Segments>,
    journal: Journal,
    /// What the index held at open, until [`Disk::recover`] sorts it out.
    scan: Mutex<Option<crate::journal::Scan>>,
    /// A long-lived thread that syncs the segments while the flushing
    /// thread flushes sled (both fsync; one after the other would double
    /// a confirm's latency). Each request carries where to answer.
    segment_syncer: Mutex<SyncRequests>,
    /// Called when the store goes from clean to dirty (the broker's
    /// flusher sleeps until then).
    on_dirty: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Flushes that had something to write (tests: an idle store syncs nothing).
    flushes: AtomicU64,
    /// Segments that lost a reference, released by the flush: releasing
    /// the last one deletes the file, which is I/O the queue's lock must
    /// not wait for.
    releases: Mutex<Vec<u32>>,
    /// Jobs that read paged-out bodies for queues (see [`Loads`]), run by
    /// one long-lived thread so no queue's lock or async worker waits on
    /// the disk.
    loader: Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    /// Sizes of the segments found at open, for recovery's checks.
    existing: std::collections::BTreeMap<u32, u64>,
    /// Each live durable queue's delivered mark: (queue, current, written).
    marks: Mutex<Vec<(u64, Arc<AtomicU64>, u64)>>,
    /// One flush at a time: a flush that finds nothing new to sync must not
    /// report done while another is still syncing what it took.
    flushing: Mutex<()>,
    /// Something was written since the last flush started.
    dirty: std::sync::atomic::AtomicBool,
    /// Transient bodies paged out of non-durable queues past their memory
    /// budget: a scratch area (`transient/` in the data directory) wiped
    /// at open, never fsynced, with no index (nothing in it survives a
    /// restart).
    transient: Segments,
    /// Transient records released (a segment number and how many of its
    /// records), applied on the loader thread: deleting a drained segment
    /// is I/O the queue's lock must not wait for.
    transient_releases: Mutex<Vec<(u32, u32)>>,
    /// Held while pending releases are applied, so a reader of
    /// [`Disk::transient_files`] waits for one the loader has under way.
    transient_applying: Mutex<()>,
}

/// Requests to the segment syncer: each is where to send its result.
type SyncRequests = std::sync::mpsc::Sender<std::sync::mpsc::SyncSender<std::io::Result<()>>>;

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The largest record head after the version byte and BCC section: two
/// short strings, properties length.
const HEAD_MAX: usize = 2 * (1 + 255) + 4;

/// A message record's head after its version byte and BCC section (the
/// names and the properties length), built on the stack: the record is
/// written as version, BCC section, head, properties and body, each
/// copied once into the segment buffer.
fn encode_head(m: &Message, head: &mut [u8; HEAD_MAX]) -> usize {
    let ex = &m.exchange().as_bytes()[..m.exchange().len().min(255)];
    let rk = &m.routing_key().as_bytes()[..m.routing_key().len().min(255)];
    let mut at = 0;
    let mut put = |b: &[u8]| {
        head[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(&[ex.len() as u8]);
    put(ex);
    put(&[rk.len() as u8]);
    put(rk);
    put(&(m.properties().len() as u32).to_be_bytes());
    at
}

/// Encodes a message record (tests and tools; the store writes the parts
/// without assembling them).
pub fn encode(m: &Message) -> Vec<u8> {
    let mut head = [0u8; HEAD_MAX];
    let n = encode_head(m, &mut head);
    let kind = [record_kind(m, 1)];
    [&kind, m.bcc_section(), &head[..n], m.properties(), m.body()].concat()
}

/// A record's first byte: `base` (the record version, or the transient
/// area's persistence mark), with [`RECORD_BCC`] when a BCC section follows.
fn record_kind(m: &Message, base: u8) -> u8 {
    if m.bcc_section().is_empty() {
        base
    } else {
        base | RECORD_BCC
    }
}

/// Decodes a message record. The parts are copied into the message's own
/// allocation, so a held message never pins the (larger) buffer it was
/// read into.
pub fn decode(rec: Bytes, stored: Option<StoredRef>) -> Result<Message, DiskError> {
    decode_as(rec, stored, true)
}

/// A record in the transient area of a message published persistent:
/// its first byte, in place of the record version.
const TRANSIENT_AREA_PERSISTENT: u8 = 2;

/// [`decode`] of a record in the durable store (`true`) or the transient
/// area (`false`).
fn decode_as(rec: Bytes, stored: Option<StoredRef>, durable: bool) -> Result<Message, DiskError> {
    let bad = || DiskError::Corrupt("message record".into());
    // In the transient area the first byte also says whether the message
    // was persistent (it reached only non-durable queues that paged it).
    let kind = *rec.first().ok_or_else(bad)?;
    let persistent = match kind & !RECORD_BCC {
        1 => durable,
        TRANSIENT_AREA_PERSISTENT if !durable => true,
        _ => return Err(bad()),
    };
    let mut at = 1;
    let bcc = if kind & RECORD_BCC != 0 {
        let n = rec.get(1..5).ok_or_else(bad)?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        at += 4 + n;
        rec.get(1..at).ok_or_else(bad)?
    } else {
        &[]
    };
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
    let mut m = Message::from_record(exchange, routing_key, properties, body, persistent, bcc)
        .map_err(|_| bad())?;
    m.set_stored(stored);
    Ok(m)
}

/// Upgrades a version-1 directory: its sled index and marks go into a
/// first index file (fsynced), then the version is bumped, then the old
/// tree is emptied. See the module documentation.
fn upgrade_from_v1(
    db: &sled::Db,
    meta: &sled::Tree,
    index_dir: &Path,
    last_v1_segment: u32,
) -> Result<(), DiskError> {
    // A previous attempt may have stopped half-way: start over.
    match std::fs::remove_dir_all(index_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let msgs = db.open_tree("messages")?;
    let (journal, _) = Journal::open(index_dir)?;
    let (mut entries, mut marks) = (0u64, 0u64);
    for kv in msgs.iter() {
        let (k, v) = kv?;
        match (k.first(), k.len(), v.len()) {
            (Some(b'Q'), 17, 16) => {
                let loc = StoredRef::from_bytes(&v[..12]).expect("12 bytes");
                let size = u32::from_be_bytes([v[12], v[13], v[14], v[15]]);
                journal.publish(be_u64(&k[1..9]), be_u64(&k[9..]), loc, size);
                entries += 1;
            }
            (Some(b'D'), 9, 8) => {
                journal.mark(be_u64(&k[1..]), be_u64(&v));
                marks += 1;
            }
            _ => return Err(DiskError::Corrupt("version-1 index entry".into())),
        }
    }
    journal.flush(true)?;
    drop(journal);
    meta.insert("legacy_segments", &last_v1_segment.to_be_bytes())?;
    meta.insert("format", &[FORMAT_VERSION])?;
    db.flush()?;
    db.drop_tree("messages")?;
    db.flush()?;
    tracing::info!(
        entries,
        marks,
        "upgraded the data directory from format version 1 to 2"
    );
    Ok(())
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
        let (segments, existing) = Segments::open(&dir.join("msgs"))?;
        let transient = Segments::open_scratch(&dir.join("transient"))?;
        let index_dir = dir.join("index");
        match meta.get("format")? {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {
                // An upgrade that stopped after writing the version.
                db.drop_tree("messages")?;
            }
            Some(v) if v.as_ref() == [LEGACY_VERSION] => {
                upgrade_from_v1(&db, &meta, &index_dir, segments.last_existing())?;
            }
            Some(v) if v.len() == 1 && [VERSION_2, VERSION_3, VERSION_4].contains(&v[0]) => {
                meta.insert("format", &[FORMAT_VERSION])?;
                db.flush()?;
                tracing::info!(
                    from = v[0],
                    "upgraded the data directory to format version {FORMAT_VERSION}"
                );
            }
            Some(v) => return Err(DiskError::Version { found: v.to_vec() }),
            None => {
                meta.insert("format", &[FORMAT_VERSION])?;
                db.flush()?;
            }
        }
        if let Some(v) = meta.get("legacy_segments")? {
            let b: [u8; 4] = v
                .as_ref()
                .try_into()
                .map_err(|_| DiskError::Corrupt("legacy_segments".into()))?;
            segments.set_legacy_upto(u32::from_be_bytes(b));
        }
        let (journal, scan) = Journal::open(&index_dir)?;
        if scan.torn > 0 {
            tracing::warn!(
                entries = scan.torn,
                "ignoring index entries cut short by a crash"
            );
        }
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
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("warren-loader".into())
            // Ends when the Disk (the only sender) is dropped; a job holds
            // the Disk only while it runs.
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| DiskError::Corrupt(format!("cannot start the body loader: {e}")))?;
        Ok(Arc::new(Disk {
            db,
            segments,
            journal,
            scan: Mutex::new(Some(scan)),
            loader: Mutex::new(jobs),
            segment_syncer: Mutex::new(tx),
            on_dirty: std::sync::OnceLock::new(),
            flushes: AtomicU64::new(0),
            releases: Mutex::new(Vec::new()),
            existing,
            marks: Mutex::new(Vec::new()),
            flushing: Mutex::new(()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            transient,
            transient_releases: Mutex::new(Vec::new()),
            transient_applying: Mutex::new(()),
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

    /// Makes every publish written so far durable (what a confirm waits
    /// for); delivered marks and acks are written too, acks fsynced about
    /// once a second (see [`crate::journal`]). Nothing written since the
    /// last flush: returns at once, without a sync (an idle broker does
    /// not touch the disk).
    pub fn flush(&self) -> Result<(), DiskError> {
        self.flush_with(false)
    }

    /// [`Disk::flush`], fsyncing acks too, even with nothing new written:
    /// at shutdown.
    pub fn flush_all(&self) -> Result<(), DiskError> {
        self.flush_with(true)
    }

    fn flush_with(&self, all: bool) -> Result<(), DiskError> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        // Cleared before anything is written out: a write that lands
        // after this sets it again and is covered by the next flush.
        if !self.dirty.swap(false, Ordering::SeqCst) && !all {
            return Ok(());
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let res = self.write_and_sync(all);
        if res.is_err() {
            // Retried by the next flush.
            self.dirty.store(true, Ordering::SeqCst);
        }
        res
    }

    /// Releases the segment references dropped since the last flush
    /// (deleting files that lost their last one).
    fn apply_releases(&self) {
        let segs = std::mem::take(&mut *self.releases.lock().unwrap_or_else(|e| e.into_inner()));
        for seg in segs {
            self.segments.release(seg);
        }
    }

    fn write_and_sync(&self, all: bool) -> Result<(), DiskError> {
        {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            for (queue, cur, written) in marks.iter_mut() {
                let now = cur.load(Ordering::Relaxed);
                if now != *written {
                    self.journal.mark(*queue, now);
                    *written = now;
                }
            }
        }
        // Both at once (the segments on the syncer thread, the index and
        // sled here): recovery drops an index entry whose record did not
        // make it, so their order does not matter, and a confirm waits for
        // both.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sent = self
            .segment_syncer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(tx)
            .is_ok();
        let journal = self.journal.flush(all);
        let db = self.db.flush();
        let seg = if sent {
            rx.recv()
                .map_err(|_| DiskError::Corrupt("the segment syncer stopped".into()))?
        } else {
            self.segments.flush()
        };
        seg?;
        journal?;
        db?;
        // After the acks are written: a segment deleted before the entries
        // pointing into it were acked would cost recovery a dropped entry.
        self.apply_releases();
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
                self.journal.mark(queue, now);
                self.mark_dirty();
            }
        }
        marks.retain(|(q, _, _)| *q != queue);
        self.journal.forget(queue);
    }

    /// Writes a message's record once for the `queues` durable queues
    /// that will hold it.
    pub fn put_body(&self, m: &Message, queues: usize) -> Result<StoredRef, DiskError> {
        let mut head = [0u8; HEAD_MAX];
        let n = encode_head(m, &mut head);
        let kind = [record_kind(m, 1)];
        let parts: [&[u8]; 5] = [&kind, m.bcc_section(), &head[..n], m.properties(), m.body()];
        let r = self.segments.append_parts(&parts, queues as u32)?;
        self.mark_dirty();
        Ok(r)
    }

    /// Pages a transient message's body out of memory for the `queues`
    /// non-durable queues that will hold it: appended to the transient
    /// area (no index entry, no fsync). Call it without any queue's lock.
    pub fn put_transient(&self, m: &Message, queues: usize) -> Result<StoredRef, DiskError> {
        let mut head = [0u8; HEAD_MAX];
        let n = encode_head(m, &mut head);
        let base = if m.persistent {
            TRANSIENT_AREA_PERSISTENT
        } else {
            1
        };
        let kind = [record_kind(m, base)];
        let parts: [&[u8]; 5] = [&kind, m.bcc_section(), &head[..n], m.properties(), m.body()];
        Ok(self.transient.append_parts(&parts, queues as u32)?)
    }

    /// A record of the transient area handed over with the message it
    /// holds (see [`PagedBody`]).
    pub fn paged_body(self: &Arc<Self>, at: StoredRef) -> PagedBody {
        PagedBody {
            disk: self.clone(),
            at,
        }
    }

    /// Reads a transient message paged out with [`Disk::put_transient`].
    pub(crate) fn read_transient(&self, r: StoredRef) -> Result<Message, DiskError> {
        decode_as(self.transient.read(r)?, None, false)
    }

    /// `n` records of transient segment `seg` are no longer held by a
    /// queue: released on the loader thread (a segment whose records are
    /// all gone is deleted there), so this is safe under a queue's lock.
    pub fn release_transient(self: &Arc<Self>, seg: u32, n: u32) {
        let first = {
            let mut pending = self
                .transient_releases
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pending.push((seg, n));
            pending.len() == 1
        };
        if first {
            let disk = self.clone();
            self.run_on_loader(Box::new(move || disk.apply_transient_releases()));
        }
    }

    fn apply_transient_releases(&self) {
        let _applying = self
            .transient_applying
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(
            &mut *self
                .transient_releases
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (seg, n) in pending {
            for _ in 0..n {
                self.transient.release(seg);
            }
        }
    }

    fn run_on_loader(&self, job: Box<dyn FnOnce() + Send>) {
        let sent = self
            .loader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job);
        if sent.is_err() {
            tracing::error!("the body loader stopped");
        }
    }

    /// Transient segment files on disk, and their bytes (tests, metrics).
    pub fn transient_files(&self) -> (usize, u64) {
        self.apply_transient_releases();
        self.transient.usage()
    }

    /// Reads the message at `r`: an error (never another record) when it
    /// is gone with its segment or does not read back intact.
    pub fn read(&self, r: StoredRef) -> Result<Message, DiskError> {
        decode(self.segments.read(r)?, Some(r))
    }

    /// Queue `queue` holds the record at `r` as message `seq`, expiring
    /// at `deadline` if it has one: entries in the index's buffer (no
    /// I/O), written by the next flush.
    fn index_put_expiring(
        &self,
        queue: u64,
        seq: u64,
        r: StoredRef,
        size: u32,
        deadline: Option<u64>,
    ) -> IndexRef {
        let ix = self.journal.publish_expiring(queue, seq, r, size, deadline);
        self.mark_dirty();
        ix
    }

    /// Queue `queue`'s message `seq` was handed back `count` times: a `C`
    /// entry in the index's buffer (no I/O), live until
    /// [`Disk::release_count`].
    fn index_count(&self, queue: u64, seq: u64, count: u32) -> IndexRef {
        let ix = self.journal.count(queue, seq, count);
        self.mark_dirty();
        ix
    }

    /// A delivery count entry is replaced or its message gone.
    fn release_count(&self, ix: IndexRef) {
        self.journal.ack(ix);
        self.mark_dirty();
    }

    /// A queue no longer holds the message: ack its index entry (a buffer
    /// append) and drop its reference to the record's segment (at the
    /// next flush).
    fn release(&self, r: StoredRef, ix: IndexRef) {
        self.journal.ack(ix);
        self.releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r.seg);
        self.mark_dirty();
    }

    /// A durable queue that [`Disk::put_body`] counted will not hold the
    /// record after all (it was deleted as the message was routed to it):
    /// its reference goes (at the next flush), so the segment can.
    pub fn forget_ref(&self, r: StoredRef) {
        self.releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r.seg);
        self.mark_dirty();
    }

    /// Start-up: sorts what the index held at open. Entries of queues that
    /// no longer exist, entries whose record did not reach the disk, and
    /// older copies of a rewritten message are acked for good; segments
    /// nothing refers to are deleted; each live queue's entries come back
    /// in order.
    pub fn recover(
        &self,
        live_queues: &HashSet<u64>,
    ) -> Result<HashMap<u64, Vec<RecoveredEntry>>, DiskError> {
        let scan = self
            .scan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let marks: HashMap<u64, u64> = scan
            .marks
            .into_iter()
            .filter(|(q, _)| live_queues.contains(q))
            .collect();
        // The last segment may end in a record that was cut short.
        let last = self.existing.keys().next_back().copied();
        let mut refs: HashMap<u32, u64> = HashMap::new();
        let mut out: HashMap<u64, Vec<RecoveredEntry>> = HashMap::new();
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        // Newest first: a message written again (a no-ack delivery handed
        // back) keeps its newest entry if the older one's ack was lost.
        for f in scan.entries.into_iter().rev() {
            let on_disk = self
                .existing
                .get(&f.loc.seg)
                .is_some_and(|len| f.loc.off as u64 + 8 + f.loc.len as u64 <= *len);
            let intact = on_disk && (Some(f.loc.seg) != last || self.segments.read(f.loc).is_ok());
            if !live_queues.contains(&f.queue) || !intact || !seen.insert((f.queue, f.seq)) {
                dropped.push(f.at);
                continue;
            }
            kept.push(f.at);
            *refs.entry(f.loc.seg).or_default() += 1;
            let delivered = marks.get(&f.queue).is_some_and(|m| f.seq <= *m);
            out.entry(f.queue).or_default().push(RecoveredEntry {
                seq: f.seq,
                stored: f.loc,
                index: f.at,
                delivered,
                size: f.size,
                deadline: f.deadline,
                delivery_count: None,
            });
        }
        attach_counts(scan.counts, &mut out, &mut kept, &mut dropped);
        if !dropped.is_empty() {
            tracing::warn!(
                entries = dropped.len(),
                "dropping index entries of deleted queues or unwritten messages"
            );
        }
        for entries in out.values_mut() {
            entries.sort_unstable_by_key(|e| e.seq);
        }
        self.journal.recovered(kept, dropped, marks);
        self.segments.set_recovered_refs(refs, &self.existing);
        self.journal.flush(true)?;
        Ok(out)
    }

    /// (bytes of records appended since open, live index entries): tests
    /// check that a shared body is written once and entries go with acks.
    pub fn counts(&self) -> (u64, usize) {
        (self.segments.appended(), self.journal.live() as usize)
    }

    /// Test seam: make message writes fail, as on a full disk.
    pub fn inject_write_failures(&self, fail: bool) {
        self.segments.inject_append_failures(fail);
    }

    /// Live record references (tests).
    pub fn live_refs(&self) -> u64 {
        self.apply_releases();
        self.segments.live_refs()
    }

    /// Segment files on disk.
    pub fn segment_files(&self) -> usize {
        self.apply_releases();
        self.segments.files()
    }
}

/// The most paged-out entries, and body bytes, one load reads ahead.
pub(crate) const LOAD_BATCH: usize = 256;
pub(crate) const LOAD_BYTES: u64 = 4 * 1024 * 1024;

/// Paged-out bodies a store wants read (the ones its `pop` stopped at, and
/// a bounded run after them), with where to read them. Taken under the
/// queue's lock ([`MessageStore::take_loads`]), read without it
/// ([`Loads::read`], blocking), handed back under it
/// ([`MessageStore::finish_loads`]).
pub struct Loads {
    disk: Arc<Disk>,
    wanted: Vec<(u64, StoredRef)>,
    /// Taken by the store's own read-ahead (not a forced head read).
    background: bool,
    /// The records are transient ones paged out ([`Disk::put_transient`]).
    transient: bool,
}

/// Bodies read by [`Loads::read`]: `None` for one that could not be read.
pub struct LoadedBodies {
    bodies: Vec<(u64, Option<Arc<Message>>)>,
    background: bool,
}

/// Each body read, by seq: `None` for one that could not be read.
pub(crate) type Bodies = Vec<(u64, Option<Arc<Message>>)>;

impl LoadedBodies {
    /// Each body read, by seq.
    pub(crate) fn bodies(&self) -> &Bodies {
        &self.bodies
    }

    /// The bodies, and whether they were a store's own read-ahead.
    pub(crate) fn into_parts(self) -> (Bodies, bool) {
        (self.bodies, self.background)
    }
}

impl Loads {
    /// The bodies wanted, `(seq, where)`.
    pub(crate) fn wanted(&self) -> &[(u64, StoredRef)] {
        &self.wanted
    }

    /// Reads the bodies: blocking I/O, to run without the queue's lock.
    pub fn read(self) -> LoadedBodies {
        let bodies = self
            .wanted
            .iter()
            .map(|&(seq, r)| {
                let m = if self.transient {
                    self.disk.read_transient(r)
                } else {
                    self.disk.read(r)
                };
                let m = m.map(Arc::new);
                if let Err(e) = &m {
                    tracing::error!(seq, error = %e, "cannot read a paged-out body");
                }
                (seq, m.ok())
            })
            .collect();
        LoadedBodies {
            bodies,
            background: self.background,
        }
    }

    /// Runs `f` with these loads on the store's loader thread.
    pub fn spawn(self, f: impl FnOnce(Loads) + Send + 'static) {
        let disk = self.disk.clone();
        disk.run_on_loader(Box::new(move || f(self)));
    }

    /// Loads of transient bodies paged out with [`Disk::put_transient`].
    pub(crate) fn transient(
        disk: Arc<Disk>,
        wanted: Vec<(u64, StoredRef)>,
        background: bool,
    ) -> Self {
        Loads {
            disk,
            wanted,
            background,
            transient: true,
        }
    }
}

/// A delivered persistent message awaiting settle.
#[derive(Debug, Clone, Copy)]
struct Out {
    stored: StoredRef,
    /// This queue's index entry for it.
    index: IndexRef,
    size: u32,
    /// Its unacked record holds the body (counted in `out_mem_bytes`).
    body_held: bool,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// In memory; `None` when paged out to disk only.
    msg: Option<Arc<Message>>,
    /// A persistent message's record and this queue's index entry for it.
    stored: Option<(StoredRef, IndexRef)>,
    redelivered: bool,
    size: u32,
}

/// A durable queue's store: persistent messages live on disk (bodies are
/// kept in memory only while the queue's in-memory bytes stay under a
/// limit), transient ones in memory, or in the transient area once the
/// broker pages them out ([`MessageStore::push_paged`]).
pub struct DiskStore {
    disk: Arc<Disk>,
    queue: u64,
    requeued: BTreeMap<u64, Entry>,
    ready: VecDeque<Entry>,
    /// Delivered persistent messages awaiting settle.
    out: HashMap<u64, Out>,
    /// Body bytes that unacked records hold in memory (each kept only while
    /// this stays under `mem_limit`; past it they hold their place on disk).
    out_mem_bytes: u64,
    /// The highest seq delivered, written to disk at each flush.
    delivered: Arc<AtomicU64>,
    bytes: u64,
    mem_bytes: u64,
    mem_limit: u64,
    /// Body bytes of ready transient messages: memory is their only
    /// place, so they are what a memory budget must hold back.
    transient_bytes: u64,
    /// Ready messages with a durable record (the API's
    /// `messages_persistent`, with the queue's unacked ones).
    persistent: Tally,
    /// Ready messages whose body is in memory (`messages_ready_ram`).
    ram: Tally,
    next_seq: u64,
    /// `pop` stopped at a paged-out head: bodies must be read (outside
    /// the queue's lock) before it can go on.
    want_load: bool,
    /// A read-ahead is under way (taken, not yet finished).
    loading: bool,
    /// Deadlines found at recovery, until the queue takes them.
    recovered_deadlines: Vec<(u64, u64)>,
    /// Delivery counts found at recovery, until the queue takes them.
    recovered_counts: Vec<(u64, u32)>,
    /// The live `C` index entry of each persistent message that was
    /// handed back under a delivery limit (empty on a plain queue).
    counts: HashMap<u64, IndexRef>,
    /// Where the bodies of transient messages paged out past the memory
    /// budget lie in the disk's transient area, by seq (their entries
    /// have neither a body nor a durable record).
    paged: HashMap<u64, StoredRef>,
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
        let mut recovered_deadlines = Vec::new();
        let mut recovered_counts = Vec::new();
        let mut counts = HashMap::new();
        let mut persistent = Tally::default();
        for r in recovered {
            next_seq = next_seq.max(r.seq + 1);
            if let Some(d) = r.deadline {
                recovered_deadlines.push((r.seq, d));
            }
            if let Some((n, ix)) = r.delivery_count {
                recovered_counts.push((r.seq, n));
                counts.insert(r.seq, ix);
            }
            bytes += r.size as u64;
            persistent.add(r.size as u64);
            if r.delivered {
                mark = mark.max(r.seq);
            }
            ready.push_back(Entry {
                seq: r.seq,
                msg: None,
                stored: Some((r.stored, r.index)),
                redelivered: r.delivered,
                size: r.size,
            });
        }
        let delivered = disk.register_mark(queue, mark);
        DiskStore {
            recovered_deadlines,
            recovered_counts,
            counts,
            paged: HashMap::new(),
            transient_bytes: 0,
            persistent,
            ram: Tally::default(),
            want_load: false,
            loading: false,
            disk,
            queue,
            requeued: BTreeMap::new(),
            ready,
            out: HashMap::new(),
            out_mem_bytes: 0,
            delivered,
            bytes,
            mem_bytes: 0,
            mem_limit,
            next_seq,
        }
    }

    /// Forgets a delivered message's entry and what its body held.
    fn take_out(&mut self, seq: u64) -> Option<Out> {
        let o = self.out.remove(&seq)?;
        if o.body_held {
            self.out_mem_bytes -= o.size as u64;
        }
        Some(o)
    }

    /// Puts a delivered message back at its place, in memory, with its
    /// disk entry if it has one (memory is the only place of one without).
    fn requeue_entry(&mut self, m: QueuedMessage, stored: Option<(StoredRef, IndexRef)>) {
        let size = m.message.size();
        if stored.is_some() {
            self.mem_bytes += size;
            self.persistent.add(size);
        } else {
            self.transient_bytes += size;
        }
        self.ram.add(size);
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

    /// Where a paged-out entry's body is: its durable record, or (`true`)
    /// its record in the transient area.
    fn location(&self, e: &Entry) -> Option<(StoredRef, bool)> {
        match e.stored {
            Some((r, _)) => Some((r, false)),
            None => self.paged.get(&e.seq).map(|r| (*r, true)),
        }
    }

    /// Releases the transient records of every paged-out transient entry.
    fn release_paged(&mut self) {
        for (_, at) in std::mem::take(&mut self.paged) {
            self.disk.release_transient(at.seg, 1);
        }
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
        self.push_expiring(m, None)
    }

    fn push_expiring(&mut self, m: QueuedMessage, deadline: Option<u64>) {
        let size = m.message.size();
        let stored = m.message.stored().map(|r| {
            let ix = self
                .disk
                .index_put_expiring(self.queue, m.seq, r, size as u32, deadline);
            (r, ix)
        });
        // Transient messages exist only in memory.
        let keep = stored.is_none() || self.keep_in_memory(size);
        self.bytes += size;
        if stored.is_none() {
            self.transient_bytes += size;
        } else {
            self.persistent.add(size);
        }
        if keep {
            self.ram.add(size);
        }
        self.ready.push_back(Entry {
            seq: m.seq,
            msg: keep.then_some(m.message),
            stored,
            redelivered: m.redelivered,
            size: size as u32,
        });
    }

    fn push_paged(&mut self, seq: u64, at: StoredRef, size: u32) {
        // A transient message paged out past the budget (written to the
        // transient area by the publisher, without this lock).
        self.bytes += size as u64;
        self.paged.insert(seq, at);
        self.ready.push_back(Entry {
            seq,
            msg: None,
            stored: None,
            redelivered: false,
            size,
        });
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        // Never a disk read here (this runs under the queue's lock): a
        // paged-out head stops the pop until its body is loaded.
        let head_paged = match self.requeued.first_key_value() {
            Some((_, e)) => e.msg.is_none(),
            None => self.ready.front()?.msg.is_none(),
        };
        if head_paged {
            self.want_load = true;
            return None;
        }
        let e = match self.requeued.pop_first() {
            Some((_, e)) => e,
            None => self.ready.pop_front()?,
        };
        self.bytes -= e.size as u64;
        self.ram.sub(e.size as u64);
        if e.stored.is_some() {
            self.persistent.sub(e.size as u64);
        }
        if e.stored.is_none() {
            self.transient_bytes -= e.size as u64;
            if let Some(at) = self.paged.remove(&e.seq) {
                self.disk.release_transient(at.seg, 1);
            }
        }
        let message = e.msg.expect("the head is in memory");
        if let Some((r, ix)) = e.stored {
            self.mem_bytes -= e.size as u64;
            self.delivered.fetch_max(e.seq, Ordering::Relaxed);
            // The new mark is written by the next flush.
            self.disk.mark_dirty();
            self.out.insert(
                e.seq,
                Out {
                    stored: r,
                    index: ix,
                    size: e.size,
                    body_held: false,
                },
            );
        }
        Some(QueuedMessage {
            seq: e.seq,
            message,
            redelivered: e.redelivered,
        })
    }

    fn take_loads(&mut self) -> Option<Loads> {
        if !self.want_load || self.loading {
            return None;
        }
        self.want_load = false;
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        // One batch reads from one place: the durable store or the
        // transient area, whichever the first paged-out entry is in.
        let mut kind = None;
        let entries = self.requeued.values().chain(self.ready.iter());
        for e in entries.take(2 * LOAD_BATCH) {
            if let (None, Some((r, transient))) = (&e.msg, self.location(e)) {
                if *kind.get_or_insert(transient) != transient
                    || (!wanted.is_empty() && bytes + e.size as u64 > LOAD_BYTES)
                {
                    break;
                }
                bytes += e.size as u64;
                wanted.push((e.seq, r));
                if wanted.len() == LOAD_BATCH {
                    break;
                }
            }
        }
        if wanted.is_empty() {
            return None;
        }
        self.loading = true;
        Some(Loads {
            disk: self.disk.clone(),
            wanted,
            background: true,
            transient: kind == Some(true),
        })
    }

    fn head_load(&mut self) -> Option<Loads> {
        let head = match self.requeued.first_key_value() {
            Some((_, e)) => e,
            None => self.ready.front()?,
        };
        match (&head.msg, self.location(head)) {
            (None, Some((r, transient))) => Some(Loads {
                disk: self.disk.clone(),
                wanted: vec![(head.seq, r)],
                background: false,
                transient,
            }),
            _ => None,
        }
    }

    fn finish_loads(&mut self, loaded: LoadedBodies) {
        if loaded.background {
            self.loading = false;
        }
        for (seq, body) in loaded.bodies {
            // Taken, purged or loaded meanwhile: nothing to do.
            let e = match self.requeued.get_mut(&seq) {
                Some(e) => e,
                None => match self.ready.binary_search_by_key(&seq, |e| e.seq) {
                    Ok(i) => &mut self.ready[i],
                    Err(_) => continue,
                },
            };
            if e.msg.is_some() {
                continue;
            }
            let size = e.size as u64;
            let stored = e.stored;
            match body {
                Some(m) => {
                    e.msg = Some(m);
                    self.ram.add(size);
                    if stored.is_some() {
                        self.mem_bytes += size;
                    } else {
                        self.transient_bytes += size;
                    }
                }
                None => {
                    // A lost body cannot be delivered; drop its entry.
                    if self.requeued.remove(&seq).is_none() {
                        if let Ok(i) = self.ready.binary_search_by_key(&seq, |e| e.seq) {
                            self.ready.remove(i);
                        }
                    }
                    self.bytes -= size;
                    match stored {
                        Some((r, ix)) => {
                            self.persistent.sub(size);
                            self.disk.release(r, ix)
                        }
                        None => {
                            if let Some(at) = self.paged.remove(&seq) {
                                self.disk.release_transient(at.seg, 1);
                            }
                        }
                    }
                }
            }
        }
    }

    fn head_seq(&self) -> Option<u64> {
        match self.requeued.first_key_value() {
            Some((&seq, _)) => Some(seq),
            None => self.ready.front().map(|e| e.seq),
        }
    }

    fn take_head(&mut self) -> Option<crate::store::TakenHead> {
        let e = match self.requeued.pop_first() {
            Some((_, e)) => e,
            None => self.ready.pop_front()?,
        };
        self.bytes -= e.size as u64;
        if e.msg.is_some() {
            self.ram.sub(e.size as u64);
        }
        if e.stored.is_some() {
            self.persistent.sub(e.size as u64);
        }
        if e.stored.is_none() {
            // A paged-out transient body is counted in memory only once
            // loaded; its record in the transient area goes with it.
            if e.msg.is_some() {
                self.transient_bytes -= e.size as u64;
            }
            if let Some(at) = self.paged.remove(&e.seq) {
                self.disk.release_transient(at.seg, 1);
            }
        }
        if let Some((r, ix)) = e.stored {
            if e.msg.is_some() {
                self.mem_bytes -= e.size as u64;
            }
            self.out.insert(
                e.seq,
                Out {
                    stored: r,
                    index: ix,
                    size: e.size,
                    body_held: false,
                },
            );
        }
        Some(crate::store::TakenHead {
            seq: e.seq,
            stored: e.stored.map(|(r, _)| r),
            message: e.msg,
            paged: None,
        })
    }

    fn take_recovered_deadlines(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.recovered_deadlines)
    }

    fn set_delivery_count(&mut self, seq: u64, count: u32) {
        // Only a message with a durable entry (awaiting settle in `out`)
        // outlives the process; a transient one's count is the queue's.
        if !self.out.contains_key(&seq) {
            return;
        }
        let ix = self.disk.index_count(self.queue, seq, count);
        if let Some(old) = self.counts.insert(seq, ix) {
            self.disk.release_count(old);
        }
    }

    fn take_recovered_counts(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.recovered_counts)
    }

    fn requeue(&mut self, m: QueuedMessage) {
        // A delivery awaiting settle still holds its disk entry. A no-ack
        // delivery handed back (its consumer went before it was written)
        // gave its entry up when it was dispatched: it comes back in
        // memory only, unless its owner wrote it again first (without
        // this lock) and hands it back with `requeue_written`.
        let stored = self.take_out(m.seq).map(|o| (o.stored, o.index));
        self.requeue_entry(m, stored);
    }

    fn rewrite_disk(&self) -> Option<Arc<Disk>> {
        Some(self.disk.clone())
    }

    fn requeue_written(&mut self, m: QueuedMessage, at: StoredRef, deadline: Option<u64>) {
        // Only index entries in the buffer here (its deadline too, so
        // that it still expires on time after a restart): the record was
        // written by the caller, before it took the queue's lock.
        let size = m.message.size() as u32;
        let ix = self
            .disk
            .index_put_expiring(self.queue, m.seq, at, size, deadline);
        self.requeue_entry(m, Some((at, ix)));
    }

    fn keep_unacked(&mut self, m: &QueuedMessage) -> bool {
        let Some(o) = self.out.get_mut(&m.seq) else {
            return true; // transient: memory is its only place
        };
        if self.out_mem_bytes + o.size as u64 > self.mem_limit {
            return false;
        }
        self.out_mem_bytes += o.size as u64;
        o.body_held = true;
        true
    }

    fn requeue_stored(&mut self, seq: u64) {
        let Some(o) = self.take_out(seq) else {
            tracing::error!(
                queue = self.queue,
                seq,
                "a requeued message has no place on disk"
            );
            return;
        };
        let size = o.size as u64;
        self.bytes += size;
        self.persistent.add(size);
        self.requeued.insert(
            seq,
            Entry {
                seq,
                msg: None,
                stored: Some((o.stored, o.index)),
                redelivered: true,
                size: o.size,
            },
        );
    }

    fn unacked_location(&self, seq: u64) -> Option<StoredRef> {
        self.out.get(&seq).map(|o| o.stored)
    }

    fn settle(&mut self, seq: u64) {
        if let Some(o) = self.take_out(seq) {
            self.disk.release(o.stored, o.index);
        }
        if !self.counts.is_empty() {
            if let Some(ix) = self.counts.remove(&seq) {
                self.disk.release_count(ix);
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
            if let Some((r, ix)) = e.stored {
                self.disk.release(r, ix);
            }
            if let Some(ix) = self.counts.remove(&e.seq) {
                self.disk.release_count(ix);
            }
        }
        self.release_paged();
        self.bytes = 0;
        self.mem_bytes = 0;
        self.transient_bytes = 0;
        self.persistent = Tally::default();
        self.ram = Tally::default();
        n
    }

    fn len(&self) -> usize {
        self.requeued.len() + self.ready.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn memory_bytes(&self) -> u64 {
        // Persistent bodies in memory are bounded by the store's own
        // budget (and can go back to disk); transient ones cannot.
        self.transient_bytes
    }

    fn persistent(&self) -> Option<Tally> {
        // Counted per entry: a transient message paged out to the
        // transient area has no durable record and is not persistent.
        Some(self.persistent)
    }

    fn in_memory(&self) -> Tally {
        self.ram
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
                (None, Some((r, _))) => {
                    if to_read > 0 && to_read + e.size as u64 > PEEK_READ_BUDGET {
                        break;
                    }
                    to_read += e.size as u64;
                    PeekBody::Stored(r)
                }
                (None, None) => match self.paged.get(&e.seq) {
                    Some(at) => {
                        if to_read > 0 && to_read + e.size as u64 > PEEK_READ_BUDGET {
                            break;
                        }
                        to_read += e.size as u64;
                        PeekBody::Paged(*at)
                    }
                    None => continue,
                },
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
        // first); only the in-memory delivered mark goes, and the paged
        // transient bodies, which no restart keeps.
        self.disk.forget_mark(self.queue);
        self.release_paged();
    }
}

/// A paged-out body that left its queue's ready set while still on disk
/// only (the head of a queue trimmed or expired for dead-lettering): read
/// it without the queue's lock with [`PagedBody::read`]; its transient
/// record is released when this is dropped.
pub struct PagedBody {
    disk: Arc<Disk>,
    at: StoredRef,
}

impl std::fmt::Debug for PagedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedBody").field("at", &self.at).finish()
    }
}

impl PagedBody {
    /// The message; blocking file I/O, so not on an async worker.
    pub fn read(&self) -> Result<Message, DiskError> {
        self.disk.read_transient(self.at)
    }
}

impl Drop for PagedBody {
    fn drop(&mut self) {
        self.disk.release_transient(self.at.seg, 1);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::tests::{msg, pop_loading, store_contract};
    use crate::store::{MemoryStore, MessageStore};
    use crate::Tally;

    pub(crate) fn persistent(seq: u64, body: &str, disk: &Disk, queues: usize) -> QueuedMessage {
        let mut m = (*msg(seq, body).message).clone();
        m.persistent = true;
        m.set_stored(Some(disk.put_body(&m, queues).unwrap()));
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

    fn body_text(m: &QueuedMessage) -> String {
        String::from_utf8(m.message.body().to_vec()).unwrap()
    }

    /// Pops every message, loading paged-out bodies: (body, redelivered).
    fn pop_all(s: &mut DiskStore) -> Vec<(String, bool)> {
        std::iter::from_fn(|| pop_loading(s))
            .map(|m| (body_text(&m), m.redelivered))
            .collect()
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
            let first = pop_loading(&mut s).unwrap();
            assert_eq!(first.message.body(), b"m1");
            let second = pop_loading(&mut s).unwrap();
            s.settle(second.seq); // acked: gone for good
                                  // first stays unacked across the "crash".
            disk.flush().unwrap();
        }
        let (_disk, mut s) = reopen(&dir, 7, 0);
        assert_eq!(s.len(), 4);
        assert_eq!(s.next_seq(), 6);
        let got = pop_all(&mut s);
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
        let (_disk, mut s) = reopen(&dir, 5, 1 << 20);
        let bodies = |v: Vec<QueuedMessage>| -> Vec<String> { v.iter().map(body_text).collect() };
        assert_eq!(bodies(s.peek_at(997, 10)), vec!["m998", "m999", "m1000"]);
        assert_eq!(bodies(s.peek_at(0, 2)), vec!["m1", "m2"]);
        assert_eq!(s.mem_bytes, 0, "peeked bodies stay on disk");
        assert!(s.ready.iter().all(|e| e.msg.is_none()));
        let first = pop_loading(&mut s).unwrap();
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
        let head = pop_loading(&mut s).unwrap();
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
                    let body = body_text(&m);
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
        while let Some(m) = pop_loading(&mut s) {
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
        let x = pop_loading(&mut a).unwrap();
        a.settle(x.seq);
        assert_eq!(disk.counts(), (record, 1));
        let y = pop_loading(&mut b).unwrap();
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
        // A no-ack delivery: popped and settled at once, then handed back,
        // written again by the caller first (outside the queue's lock).
        let m = pop_loading(&mut s).unwrap();
        s.settle(m.seq);
        assert_eq!(disk.counts().1, 1);
        let at = s.rewrite_disk().unwrap().put_body(&m.message, 1).unwrap();
        s.requeue_written(m, at, None);
        assert_eq!(disk.counts().1, 2, "handed back: durable again");
        let again = pop_loading(&mut s).unwrap();
        s.settle(again.seq);
        assert_eq!(disk.counts().1, 1, "message 2's entry is untouched");
        assert_eq!(
            disk.live_refs(),
            1,
            "message 2's record is still referenced"
        );
        let two = pop_loading(&mut s).unwrap();
        assert_eq!(two.message.body(), b"b");
        s.settle(two.seq);
        assert_eq!(disk.counts().1, 0);
    }

    /// A no-ack delivery handed back and written again survives a restart
    /// in its place, redelivered, with its TTL deadline; `requeue` itself
    /// writes nothing (it runs under the queue's lock), so one handed back
    /// without being written again is held in memory only.
    #[test]
    fn a_handed_back_no_ack_delivery_written_again_survives_a_restart() {
        let dir = tempdir("handback-restart");
        {
            let disk = Disk::open(&dir, 1 << 20).unwrap();
            let mut s = DiskStore::new(disk.clone(), 5, Vec::new(), 1 << 20);
            s.push(persistent(1, "a", &disk, 1));
            s.push(persistent(2, "b", &disk, 1));
            let a = pop_loading(&mut s).unwrap();
            s.settle(a.seq);
            let b = pop_loading(&mut s).unwrap();
            s.settle(b.seq);
            disk.flush().unwrap();
            let appended = disk.counts().0;
            let mut a = a;
            a.redelivered = true;
            let at = s.rewrite_disk().unwrap().put_body(&a.message, 1).unwrap();
            s.requeue_written(a, at, Some(9_000));
            s.requeue(b);
            assert_eq!(s.len(), 2);
            // Two records of the same size so far; one more now.
            assert_eq!(
                disk.counts(),
                (appended + appended / 2, 1),
                "only the rewritten one was written, by its caller"
            );
            assert_eq!(s.memory_bytes(), 1, "the other is held in memory only");
            disk.flush().unwrap();
        }
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let mut rec = disk.recover(&HashSet::from([5])).unwrap();
        let mut s = DiskStore::new(disk.clone(), 5, rec.remove(&5).unwrap(), 1 << 20);
        assert_eq!(s.len(), 1);
        assert_eq!(s.take_recovered_deadlines(), vec![(1, 9_000)]);
        let back = pop_loading(&mut s).unwrap();
        assert_eq!((back.seq, back.message.body()), (1, &b"a"[..]));
        s.settle(back.seq);
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
        assert_eq!(pop_loading(&mut s).unwrap().message.body(), b"whole");
    }

    /// Nothing written since the last flush: a flush syncs nothing (an
    /// idle broker's flusher never touches the disk); index entries are
    /// buffered under the queue's lock and reach their file only at the
    /// flush.
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
        let index_bytes = || -> u64 {
            std::fs::read_dir(dir.join("index"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        };
        assert_eq!(index_bytes(), 0, "the entry waits for the flush");
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base + 1);
        assert_eq!(index_bytes(), crate::journal::ENTRY as u64);
        assert_eq!(disk.counts().1, 1);
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base + 1, "still nothing new");
        let m = pop_loading(&mut s).unwrap();
        s.settle(m.seq);
        disk.flush().unwrap();
        assert_eq!(disk.flush_count(), base + 2, "the ack and mark are written");
        assert_eq!(disk.counts().1, 0);
        drop(s);
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `pop` never reads: it stops at a paged-out head and asks for a
    /// bounded read-ahead, taken once until it is handed back.
    #[test]
    fn pops_stop_at_paged_out_bodies_until_a_read_ahead_loads_them() {
        let dir = tempdir("readahead");
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let mut s = DiskStore::new(disk.clone(), 9, Vec::new(), 0);
        for i in 1..=600 {
            s.push(persistent(i, &format!("m{i}"), &disk, 1));
        }
        assert!(s.pop().is_none(), "the head is on disk only");
        let loads = s.take_loads().expect("a read-ahead is wanted");
        assert!(s.take_loads().is_none(), "one read-ahead at a time");
        assert_eq!(loads.wanted.len(), LOAD_BATCH);
        s.finish_loads(loads.read());
        for i in 1..=LOAD_BATCH as u64 {
            assert_eq!(s.pop().unwrap().seq, i);
        }
        assert!(s.pop().is_none(), "the rest is still on disk");
        assert_eq!(s.mem_bytes, 0, "delivered bodies left the store");
        let l = s.take_loads().expect("and asked for again");
        s.finish_loads(l.read());
        let mut next = LOAD_BATCH as u64 + 1;
        loop {
            match s.pop() {
                Some(m) => {
                    assert_eq!(m.seq, next);
                    next += 1;
                }
                None => match s.take_loads() {
                    Some(l) => s.finish_loads(l.read()),
                    None => break,
                },
            }
        }
        assert_eq!(next, 601, "every message, in order");
        drop(s);
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Unacked messages of a durable queue hold their body only while
    /// those bodies fit the memory budget; past it they hold their place
    /// on disk, and a requeue puts them back paged out, redelivered.
    #[test]
    fn unacked_messages_past_the_budget_keep_only_their_place_on_disk() {
        use crate::queue::QueueCore;
        let dir = tempdir("unacked");
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        // Budget: 40 bytes of bodies ("m1".."m100": 2 to 4 bytes each).
        let store = DiskStore::new(disk.clone(), 11, Vec::new(), 40);
        let mut core: QueueCore<&str> = QueueCore::new(Box::new(store), 10);
        for i in 1..=100 {
            core.publish(persistent(i, &format!("m{i}"), &disk, 1).message);
        }
        let mut seqs = Vec::new();
        let mut held = Vec::new();
        loop {
            match core.get(false, 0) {
                Some((m, _, h)) => {
                    seqs.push(m.seq);
                    held.extend(h);
                }
                None => match core.head_load() {
                    Some(l) => core.finish_loads(l.read()),
                    None => break,
                },
            }
        }
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        assert_eq!(core.unacked_count(), 100);
        let kept: u64 = held
            .iter()
            .filter_map(|u| u.message())
            .map(|m| m.size())
            .sum();
        assert!(kept <= 40, "{kept} bytes of unacked bodies held");
        let paged: Vec<_> = held.iter().filter(|u| u.message().is_none()).collect();
        assert!(paged.len() > 80, "only {} paged", paged.len());
        assert!(
            paged.iter().all(|u| core.unacked_location(u.seq).is_some()),
            "each knows its place"
        );
        core.requeue(held);
        let mut again = Vec::new();
        loop {
            match core.get(true, 0) {
                Some((m, _, _)) => {
                    assert!(m.redelivered);
                    again.push(body_text(&m));
                }
                None => match core.head_load() {
                    Some(l) => core.finish_loads(l.read()),
                    None => break,
                },
            }
        }
        assert_eq!(
            again,
            (1..=100).map(|i| format!("m{i}")).collect::<Vec<_>>()
        );
        drop(core);
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Version 1's sled keys, to build a version-1 directory.
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

    /// Writes a directory as version 1 left it: sled index entries and a
    /// mark, and a segment of FNV-1a-checksummed records.
    fn write_v1_dir(dir: &std::path::Path, queue: u64, bodies: &[&str], mark: u64) {
        let db = sled::Config::new().path(dir).open().unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", &[LEGACY_VERSION])
            .unwrap();
        let msgs = db.open_tree("messages").unwrap();
        std::fs::create_dir_all(dir.join("msgs")).unwrap();
        let mut seg = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let rec = encode(&msg(0, body).message);
            let loc = StoredRef {
                seg: 1,
                off: seg.len() as u32,
                len: rec.len() as u32,
            };
            seg.extend_from_slice(&(rec.len() as u32).to_be_bytes());
            seg.extend_from_slice(&crate::segments::legacy_checksum(&rec).to_be_bytes());
            seg.extend_from_slice(&rec);
            let mut v = loc.to_bytes().to_vec();
            v.extend_from_slice(&(body.len() as u32).to_be_bytes());
            msgs.insert(index_key(queue, i as u64 + 1), v).unwrap();
        }
        msgs.insert(mark_key(queue), &mark.to_be_bytes()).unwrap();
        std::fs::write(dir.join("msgs").join("00000001.seg"), seg).unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn a_version_1_directory_is_upgraded_and_its_messages_read_back() {
        let dir = tempdir("v1");
        write_v1_dir(&dir, 3, &["one", "two", "three"], 1);
        {
            let (disk, mut s) = reopen(&dir, 3, 0);
            assert_eq!(
                disk.db()
                    .open_tree("meta")
                    .unwrap()
                    .get("format")
                    .unwrap()
                    .unwrap()
                    .as_ref(),
                [FORMAT_VERSION]
            );
            assert!(
                !disk
                    .db()
                    .tree_names()
                    .iter()
                    .any(|n| n.as_ref() == b"messages"),
                "the old index is gone"
            );
            let one = pop_loading(&mut s).unwrap();
            assert_eq!((one.message.body(), one.redelivered), (&b"one"[..], true));
            s.settle(one.seq);
            // A new message, with the new checksum, beside the old ones.
            s.push(persistent(4, "four", &disk, 1));
            disk.flush().unwrap();
        }
        let (_disk, mut s) = reopen(&dir, 3, 0);
        let got = pop_all(&mut s);
        assert_eq!(
            got,
            vec![
                ("two".into(), false),
                ("three".into(), false),
                ("four".into(), false)
            ],
            "old records read with the old checksum, new with the new"
        );
        drop(s);
        drop(_disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_upgrade_cut_short_is_redone() {
        let dir = tempdir("v1-cut");
        write_v1_dir(&dir, 3, &["one", "two"], 0);
        // A stale index file, as left by an upgrade that stopped before
        // writing the new version: it must not count twice.
        std::fs::create_dir_all(dir.join("index")).unwrap();
        std::fs::write(dir.join("index").join("00000001.idx"), [7u8; 80]).unwrap();
        let (_disk, s) = reopen(&dir, 3, 0);
        assert_eq!(s.len(), 2);
        drop(s);
        drop(_disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deadlines_come_back_with_their_messages_and_version_2_is_relabelled() {
        let dir = tempdir("deadlines");
        {
            let (disk, mut s) = reopen(&dir, 4, 0);
            for (i, d) in [(1u64, Some(5_000u64)), (2, None), (3, Some(7_000))] {
                let m = persistent(i, &format!("m{i}"), &disk, 1);
                s.push_expiring(m, d);
            }
            disk.flush().unwrap();
            // Pretend this directory was written by version 2.
            disk.db()
                .open_tree("meta")
                .unwrap()
                .insert("format", &[2])
                .unwrap();
            disk.db().flush().unwrap();
        }
        let (disk, mut s) = reopen(&dir, 4, 0);
        assert_eq!(s.take_recovered_deadlines(), vec![(1, 5_000), (3, 7_000)]);
        assert_eq!(
            disk.db()
                .open_tree("meta")
                .unwrap()
                .get("format")
                .unwrap()
                .unwrap()
                .as_ref(),
            [FORMAT_VERSION]
        );
        assert_eq!(s.len(), 3);
    }

    /// Delivery counts (format 4 `C` entries) come back with their
    /// messages; a replaced count and the count of a settled message stay
    /// gone; a version-3 directory (no counts) is relabelled.
    #[test]
    fn delivery_counts_come_back_and_version_3_is_relabelled() {
        let dir = tempdir("counts");
        {
            let (disk, mut s) = reopen(&dir, 4, 1 << 20);
            for i in 1..=3u64 {
                s.push(persistent(i, &format!("m{i}"), &disk, 1));
            }
            let a = pop_loading(&mut s).unwrap();
            let b = pop_loading(&mut s).unwrap();
            s.set_delivery_count(a.seq, 1);
            s.set_delivery_count(a.seq, 2);
            s.set_delivery_count(b.seq, 1);
            s.settle(b.seq);
            s.requeue(a);
            disk.flush().unwrap();
            disk.db()
                .open_tree("meta")
                .unwrap()
                .insert("format", &[3])
                .unwrap();
            disk.db().flush().unwrap();
        }
        let (disk, mut s) = reopen(&dir, 4, 1 << 20);
        assert_eq!(s.take_recovered_counts(), vec![(1, 2)]);
        assert_eq!(s.len(), 2);
        let format = disk.db().open_tree("meta").unwrap().get("format").unwrap();
        assert_eq!(format.unwrap().as_ref(), [FORMAT_VERSION]);
        // Settled after the restart: its count goes with it.
        let a = pop_loading(&mut s).unwrap();
        s.settle(a.seq);
        disk.flush().unwrap();
        drop((disk, s));
        let (_disk, mut s) = reopen(&dir, 4, 1 << 20);
        assert!(s.take_recovered_counts().is_empty());
        assert_eq!(s.len(), 1);
    }

    /// A message's BCC keys (format 5 records) come back with it from
    /// the durable store, paged out or not, and from the transient area;
    /// a version-4 directory (no such records) is read and relabelled.
    #[test]
    fn bcc_keys_come_back_and_version_4_is_relabelled() {
        let dir = tempdir("bcc");
        let with_bcc = |seq: u64, disk: &Disk| {
            let m = Message::with_bcc("ex", "rk", &[0, 0], b"b", true, &["k1", "k2"]).unwrap();
            let mut m = m;
            m.set_stored(Some(disk.put_body(&m, 1).unwrap()));
            QueuedMessage {
                seq,
                message: Arc::new(m),
                redelivered: false,
            }
        };
        {
            let (disk, mut s) = reopen(&dir, 4, 0);
            s.push(persistent(1, "plain", &disk, 1));
            disk.flush().unwrap();
            // Written by version 4: plain records only.
            disk.db()
                .open_tree("meta")
                .unwrap()
                .insert("format", &[4])
                .unwrap();
            disk.db().flush().unwrap();
        }
        {
            let (disk, mut s) = reopen(&dir, 4, 0);
            let format = disk.db().open_tree("meta").unwrap().get("format").unwrap();
            assert_eq!(format.unwrap().as_ref(), [FORMAT_VERSION]);
            s.push(with_bcc(2, &disk));
            disk.flush().unwrap();
        }
        let (disk, mut s) = reopen(&dir, 4, 0);
        let got: Vec<(String, Vec<String>)> = std::iter::from_fn(|| pop_loading(&mut s))
            .map(|m| {
                let keys = m.message.bcc_keys().map(str::to_owned).collect();
                (body_text(&m), keys)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("plain".to_owned(), vec![]),
                ("b".to_owned(), vec!["k1".to_owned(), "k2".to_owned()])
            ]
        );
        // The transient area keeps them too, persistent or not.
        for persistent in [false, true] {
            let m = Message::with_bcc("ex", "rk", &[0, 0], b"t", persistent, &["k3"]).unwrap();
            let at = disk.put_transient(&m, 1).unwrap();
            let back = disk.read_transient(at).unwrap();
            assert_eq!(back.bcc_keys().collect::<Vec<_>>(), ["k3"]);
            assert_eq!((back.persistent, back.body()), (persistent, &b"t"[..]));
        }
        // A record cut inside its BCC section does not decode.
        let rec = encode(&Message::with_bcc("ex", "rk", &[], b"", true, &["key"]).unwrap());
        assert_eq!(rec[0], 1 | RECORD_BCC);
        assert!(decode(Bytes::copy_from_slice(&rec[..6]), None).is_err());
        assert_eq!(
            decode(Bytes::from(rec), None)
                .unwrap()
                .bcc_keys()
                .collect::<Vec<_>>(),
            ["key"]
        );
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
    pub(crate) struct TempDir(std::path::PathBuf);

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

    /// A durable queue's store holds transient bodies paged out past its
    /// budget beside persistent ones: reads batch by place, order holds,
    /// and taking, purging or dropping releases the transient records.
    #[test]
    fn disk_store_pages_transient_bodies() {
        let dir = tempdir("dtpaging");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let mut s = DiskStore::new(disk.clone(), 9, Vec::new(), 0);
        let big = |i: u64| format!("{i:06}{}", "z".repeat(2000));
        for i in 1..=1200u64 {
            if i % 3 == 0 {
                s.push(persistent(i, &big(i), &disk, 1));
            } else {
                let m = msg(i, &big(i)).message;
                s.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
            }
        }
        assert_eq!(s.memory_bytes(), 0, "nothing transient in memory");
        assert!(disk.transient_files().1 > 0);
        assert_eq!(s.peek_at(0, 2)[1].message.body(), big(2).as_bytes());
        for i in 1..=1200u64 {
            let m = pop_loading(&mut s).unwrap();
            assert_eq!((m.seq, m.message.body()), (i, big(i).as_bytes()));
            assert_eq!(m.message.persistent, i % 3 == 0);
            s.settle(i);
        }
        assert_eq!((s.len(), s.bytes(), s.memory_bytes()), (0, 0, 0));
        assert_eq!(disk.transient_files(), (1, 0));
        for i in 1..=600u64 {
            let m = msg(i, &big(i)).message;
            s.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
        }
        assert_eq!(s.purge(), 600);
        assert_eq!(disk.transient_files(), (1, 0));
        for i in 1..=600u64 {
            let m = msg(i, &big(i)).message;
            s.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
        }
        drop(s);
        assert_eq!(disk.transient_files(), (1, 0));
    }

    fn tally(count: u64, bytes: u64) -> Tally {
        Tally { count, bytes }
    }

    /// The persistent and in-memory counters: a budget of two bodies
    /// keeps the third persistent one on disk only; a paged-out transient
    /// body is neither in memory nor persistent; loads bring bodies in,
    /// pops, takes and purges take them out.
    #[test]
    fn disk_store_counts_persistent_and_in_memory_messages() {
        let dir = tempdir("dcounts");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let mut s = DiskStore::new(disk.clone(), 11, Vec::new(), 20);
        for i in 1..=3 {
            s.push(persistent(i, "0123456789", &disk, 1));
        }
        s.push(msg(4, "abcde"));
        let m = msg(5, "paged").message;
        s.push_paged(5, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
        assert_eq!(s.bytes(), 40);
        assert_eq!(s.persistent(), Some(tally(3, 30)));
        assert_eq!(s.in_memory(), tally(3, 25));

        let first = pop_loading(&mut s).unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(s.persistent(), Some(tally(2, 20)));
        assert_eq!(s.in_memory(), tally(2, 15));
        // Handed back without its body (kept on disk only).
        s.requeue_stored(1);
        assert_eq!(s.persistent(), Some(tally(3, 30)));
        assert_eq!(s.in_memory(), tally(2, 15));
        // A head taken unread leaves both counts.
        let head = s.take_head().unwrap();
        assert_eq!((head.seq, head.message.is_none()), (1, true));
        s.settle(1);
        assert_eq!(s.persistent(), Some(tally(2, 20)));
        assert_eq!(s.in_memory(), tally(2, 15));

        let mut seqs = Vec::new();
        while let Some(m) = pop_loading(&mut s) {
            seqs.push(m.seq);
            s.settle(m.seq);
        }
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert_eq!(s.persistent(), Some(tally(0, 0)));
        assert_eq!(s.in_memory(), tally(0, 0));

        s.push(persistent(6, "0123456789", &disk, 1));
        s.push(msg(7, "abcde"));
        assert_eq!(s.in_memory(), tally(2, 15));
        assert_eq!(s.purge(), 2);
        assert_eq!(s.persistent(), Some(tally(0, 0)));
        assert_eq!(s.in_memory(), tally(0, 0));
    }

    /// A paging memory store counts in memory only what is not paged out,
    /// and nothing as persistent.
    #[test]
    fn paging_memory_store_counts_bodies_in_memory() {
        let dir = tempdir("mcounts");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let mut s = MemoryStore::paging(disk.clone());
        s.push(msg(1, "in"));
        for i in 2..=3 {
            let m = msg(i, "paged").message;
            s.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
        }
        s.push(msg(4, "after"));
        assert_eq!(s.persistent(), None);
        assert_eq!(s.in_memory(), tally(2, 7));
        assert_eq!(pop_loading(&mut s).unwrap().seq, 1);
        assert_eq!(s.in_memory(), tally(1, 5));
        // Seq 2 read back, then taken.
        assert_eq!(pop_loading(&mut s).unwrap().seq, 2);
        assert_eq!(s.in_memory(), tally(1, 5));
        // Seq 3 taken unread: its body stays on disk.
        let head = s.take_head().unwrap();
        assert_eq!((head.seq, head.message.is_none()), (3, true));
        assert_eq!((s.len(), s.in_memory()), (1, tally(1, 5)));
        assert_eq!(s.purge(), 1);
        assert_eq!(s.in_memory(), tally(0, 0));
    }

    /// Taking heads without reading them (a length limit's drop, an
    /// expiry) walks through paged entries too: the seqs come in order,
    /// the records are released and the counts go to zero, in a paging
    /// memory store and in a durable queue's store alike.
    #[test]
    fn take_head_releases_paged_records() {
        let dir = tempdir("tpagedhead");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let body = |i: u64| format!("{i:06}{}", "y".repeat(1500));
        let mut mem = MemoryStore::paging(disk.clone());
        let mut dur = DiskStore::new(disk.clone(), 11, Vec::new(), 0);
        for s in [&mut mem as &mut dyn MessageStore, &mut dur] {
            s.push(msg(1, &body(1)));
            for i in 2..=800u64 {
                let m = msg(i, &body(i)).message;
                s.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
            }
            assert_eq!(s.head_seq(), Some(1));
            for i in 1..=800u64 {
                let t = s.take_head().expect("a head");
                assert_eq!(t.seq, i);
                assert_eq!(t.message.is_some(), i == 1, "paged bodies are not read");
                s.settle(i);
            }
            assert!(s.take_head().is_none());
            assert_eq!((s.len(), s.bytes(), s.memory_bytes()), (0, 0, 0));
        }
        drop((mem, dur));
        assert_eq!(disk.transient_files().1, 0, "every paged record released");
    }

    /// A paging memory store: bodies paged to the transient area come
    /// back in order (with their delivery mode), after in-memory ones and
    /// before later ones; peeks see them; a drain empties the area, a purge
    /// and a drop release what they held, and a reopen wipes it.
    #[test]
    fn memory_store_pages_transient_bodies() {
        let dir = tempdir("tpaging");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let mut s = MemoryStore::paging(disk.clone());
        let body = |i: u64| format!("body-{i:04}-{}", "x".repeat(1000));
        s.push(msg(1, &body(1)));
        for i in 2..=2000u64 {
            let mut m = (*msg(i, &body(i)).message).clone();
            m.persistent = i % 7 == 0;
            let at = disk.put_transient(&m, 1).unwrap();
            s.push_paged(i, at, m.size() as u32);
        }
        s.push(msg(2001, &body(2001))); // in memory, after the paged ones
        assert_eq!(s.len(), 2001);
        let size = body(1).len() as u64;
        assert_eq!(s.bytes(), 2001 * size);
        assert_eq!(s.memory_bytes(), 2 * size, "paged bodies are not in memory");
        assert!(disk.transient_files().1 > 0);
        let peeked: Vec<(u64, Vec<u8>)> = s
            .peek_at(0, 3)
            .into_iter()
            .map(|m| (m.seq, m.message.body().to_vec()))
            .collect();
        assert_eq!(
            peeked,
            (1..=3)
                .map(|i| (i, body(i).into_bytes()))
                .collect::<Vec<_>>()
        );
        assert_eq!(s.peek_at(2000, 5)[0].seq, 2001);
        for i in 1..=2001u64 {
            let m = pop_loading(&mut s).unwrap();
            assert_eq!((m.seq, m.message.body()), (i, body(i).as_bytes()));
            assert_eq!(m.message.persistent, i % 7 == 0 && i < 2001, "{i}");
        }
        assert!(s.is_empty());
        assert_eq!((s.bytes(), s.memory_bytes()), (0, 0));
        assert_eq!(
            disk.transient_files(),
            (1, 0),
            "a drained area holds one empty file"
        );
        // A purge, and a drop, release what they hold.
        let big = "y".repeat(4096);
        for i in 1..=600u64 {
            let m = msg(i, &big).message;
            s.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
        }
        assert_eq!(s.purge(), 600);
        assert_eq!(disk.transient_files(), (1, 0));
        let mut t = MemoryStore::paging(disk.clone());
        for i in 1..=600u64 {
            let m = msg(i, &big).message;
            t.push_paged(i, disk.put_transient(&m, 1).unwrap(), m.size() as u32);
        }
        drop(t);
        assert_eq!(disk.transient_files(), (1, 0));
        // What is paged when the broker stops is gone at the next start.
        let m = msg(1, &big).message;
        for _ in 0..600 {
            disk.put_transient(&m, 1).unwrap();
        }
        assert!(disk.transient_files().1 > 0);
        drop(s);
        drop(disk);
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        assert_eq!(disk.transient_files(), (1, 0));
    }

    pub(crate) fn tempdir(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "warren-disk-test-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}
