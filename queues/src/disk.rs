//! The on-disk message store: sled 0.34, shared by every durable queue.
//!
//! # Format, version 1
//!
//! Tree `meta`: `format` -> `[1]`. A data directory with another version is
//! refused at open, never silently reinterpreted; a later version migrates
//! from this one by reading the layout below.
//!
//! Tree `messages`:
//! - `Q` ++ queue id (u64 BE) ++ seq (u64 BE) -> flags (u8) ++ payload.
//!   Flags bit 2 clear: the payload is the message record itself (the
//!   common case, a message in one durable queue). Bit 2 set: the payload
//!   is the id (u64 BE) of a shared `B` record.
//! - `B` ++ id (u64 BE) -> a message record shared by several queues.
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
//! - A persistent message routed to one durable queue: one `Q` insert; to
//!   N > 1 durable queues: one `B` record and N `Q` entries (the body is
//!   stored once).
//! - Its ack (or drop): the `Q` entry is removed, and a shared `B` record
//!   when no queue refers to it any more.
//! - Deliveries write nothing per message: each queue's delivered mark is
//!   written once per flush.
//!
//! Writes go to sled's log at once and reach the disk at the next
//! [`Disk::flush`]; the broker's group-commit thread flushes for many
//! publishers at a time (and at least every few hundred milliseconds) and
//! only then confirms. A crash can therefore forget the last moments of
//! acks and deliveries (an acked message may return; a just-delivered one
//! may return without the redelivered flag), never a confirmed publish.
//! After a crash, `Q` entries pointing at a missing `B` record are dropped
//! and `B` records nothing points at are collected, so no cross-key
//! atomicity is needed.

use crate::message::{Message, QueuedMessage, StoredRef};
use crate::store::MessageStore;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const FORMAT_VERSION: u8 = 1;
const FLAG_SHARED: u8 = 2;

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
    next_id: AtomicU64,
    /// Reference counts of bodies held by more than one queue.
    shared: Mutex<HashMap<u64, u32>>,
    /// Each live durable queue's delivered mark: (queue, current, written).
    marks: Mutex<Vec<(u64, Arc<AtomicU64>, u64)>>,
}

fn body_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'B';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

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
    let ex = &m.exchange.as_bytes()[..m.exchange.len().min(255)];
    let rk = &m.routing_key.as_bytes()[..m.routing_key.len().min(255)];
    let mut v = Vec::with_capacity(
        prefix + 1 + 2 + ex.len() + rk.len() + 4 + m.properties.len() + m.body.len(),
    );
    v.resize(prefix, 0);
    v.push(1);
    v.push(ex.len() as u8);
    v.extend_from_slice(ex);
    v.push(rk.len() as u8);
    v.extend_from_slice(rk);
    v.extend_from_slice(&(m.properties.len() as u32).to_be_bytes());
    v.extend_from_slice(&m.properties);
    v.extend_from_slice(&m.body);
    v
}

/// The body length of an encoded record (0 if it does not parse).
fn record_body_len(rec: &[u8]) -> u32 {
    let parse = || -> Option<usize> {
        let mut at = 1;
        at += 1 + *rec.get(at)? as usize;
        at += 1 + *rec.get(at)? as usize;
        let n = rec.get(at..at + 4)?;
        at += 4 + u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        rec.len().checked_sub(at)
    };
    parse().unwrap_or(0) as u32
}

/// Decodes a message record (the body shares the record's buffer).
pub fn decode(rec: Bytes, stored: Option<StoredRef>) -> Result<Message, DiskError> {
    let bad = || DiskError::Corrupt("message record".into());
    if rec.first() != Some(&1) {
        return Err(bad());
    }
    let mut at = 1;
    let short = |at: &mut usize| -> Result<String, DiskError> {
        let n = *rec.get(*at).ok_or_else(bad)? as usize;
        let s = rec.get(*at + 1..*at + 1 + n).ok_or_else(bad)?;
        *at += 1 + n;
        String::from_utf8(s.to_vec()).map_err(|_| bad())
    };
    let exchange = short(&mut at)?;
    let routing_key = short(&mut at)?;
    let n = rec.get(at..at + 4).ok_or_else(bad)?;
    let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
    at += 4;
    if rec.len() < at + n {
        return Err(bad());
    }
    let properties = rec.slice(at..at + n);
    let body = rec.slice(at + n..);
    Ok(Message {
        exchange,
        routing_key,
        properties,
        body,
        persistent: true,
        stored,
    })
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
        Ok(Arc::new(Disk {
            db,
            msgs,
            next_id: AtomicU64::new(1),
            shared: Mutex::new(HashMap::new()),
            marks: Mutex::new(Vec::new()),
        }))
    }

    /// The database, for the broker's own trees (definitions).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes everything written so far durable, delivered marks included.
    pub fn flush(&self) -> Result<(), DiskError> {
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
        self.db.flush()?;
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
                let _ = self.msgs.insert(mark_key(queue), &now.to_be_bytes());
            }
        }
        marks.retain(|(q, _, _)| *q != queue);
    }

    /// Prepares a message that `queues` durable queues will hold: with
    /// more than one, its record is written now, once, for all of them;
    /// with one, the queue writes it inline in its own entry.
    pub fn put_body(&self, m: &Message, queues: usize) -> Result<StoredRef, DiskError> {
        if queues <= 1 {
            return Ok(StoredRef { id: 0, shared: false });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.msgs.insert(body_key(id), encode(m))?;
        self.lock_shared().insert(id, queues as u32);
        Ok(StoredRef { id, shared: true })
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the message `queue` holds at `seq`.
    fn read(&self, queue: u64, seq: u64, r: StoredRef) -> Result<Message, DiskError> {
        let missing = || DiskError::Corrupt(format!("missing message {queue}/{seq}"));
        if r.shared {
            let rec = self.msgs.get(body_key(r.id))?.ok_or_else(missing)?;
            decode(Bytes::copy_from_slice(&rec), Some(r))
        } else {
            let v = self.msgs.get(index_key(queue, seq))?.ok_or_else(missing)?;
            decode(Bytes::copy_from_slice(&v[1..]), Some(r))
        }
    }

    fn index_put(&self, queue: u64, seq: u64, m: &Message, r: StoredRef) -> Result<(), DiskError> {
        let v = if r.shared {
            let mut v = Vec::with_capacity(9);
            v.push(FLAG_SHARED);
            v.extend_from_slice(&r.id.to_be_bytes());
            v
        } else {
            // Flag byte 0: the record follows inline.
            encode_with_prefix(m, 1)
        };
        self.msgs.insert(index_key(queue, seq), v)?;
        Ok(())
    }

    /// A queue no longer holds `seq`: drop its entry and, if it was the
    /// last reference, the body.
    fn release(&self, queue: u64, seq: u64, r: StoredRef) -> Result<(), DiskError> {
        self.msgs.remove(index_key(queue, seq))?;
        let last = if r.shared {
            let mut shared = self.lock_shared();
            match shared.get_mut(&r.id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    shared.remove(&r.id);
                    true
                }
            }
        } else {
            true
        };
        if last {
            self.msgs.remove(body_key(r.id))?;
        }
        Ok(())
    }

    /// Start-up: reads every queue index once, drops entries of queues that
    /// no longer exist (and entries whose shared body is missing), collects
    /// shared bodies nothing refers to, rebuilds reference counts, and
    /// returns each live queue's entries in order.
    pub fn recover(
        &self,
        live_queues: &HashSet<u64>,
    ) -> Result<HashMap<u64, Vec<RecoveredEntry>>, DiskError> {
        let mut refs: HashMap<u64, u32> = HashMap::new();
        let mut sizes: HashMap<u64, u32> = HashMap::new();
        let mut max_id = 0;
        for kv in self.msgs.scan_prefix(b"B") {
            let (k, v) = kv?;
            if k.len() != 9 {
                return Err(DiskError::Corrupt("message key".into()));
            }
            let id = be_u64(&k[1..]);
            max_id = max_id.max(id);
            sizes.insert(id, record_body_len(&v));
            refs.insert(id, 0);
        }
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
        let mut out: HashMap<u64, Vec<RecoveredEntry>> = HashMap::new();
        let mut drop_keys = Vec::new();
        for kv in self.msgs.scan_prefix(b"Q") {
            let (k, v) = kv?;
            if k.len() != 17 || v.is_empty() {
                return Err(DiskError::Corrupt("queue index entry".into()));
            }
            let queue = be_u64(&k[1..9]);
            let seq = be_u64(&k[9..]);
            if !live_queues.contains(&queue) {
                drop_keys.push(k);
                continue;
            }
            let (stored, size) = if v[0] & FLAG_SHARED != 0 {
                if v.len() != 9 {
                    return Err(DiskError::Corrupt("shared index entry".into()));
                }
                let id = be_u64(&v[1..]);
                let Some(n) = refs.get_mut(&id) else {
                    drop_keys.push(k);
                    continue;
                };
                *n += 1;
                (StoredRef { id, shared: true }, sizes.get(&id).copied().unwrap_or(0))
            } else {
                (StoredRef { id: 0, shared: false }, record_body_len(&v[1..]))
            };
            let delivered = marks.get(&queue).is_some_and(|m| seq <= *m);
            out.entry(queue).or_default().push(RecoveredEntry {
                seq,
                stored,
                delivered,
                size,
            });
        }
        for k in drop_keys {
            self.msgs.remove(k)?;
        }
        let mut shared = self.lock_shared();
        shared.clear();
        for (&id, &n) in &refs {
            if n == 0 {
                self.msgs.remove(body_key(id))?;
            } else {
                shared.insert(id, n);
            }
        }
        drop(shared);
        self.next_id.store(max_id + 1, Ordering::Relaxed);
        self.db.flush()?;
        Ok(out)
    }

    /// Counts of records, for tests and logs: (bodies, index entries).
    pub fn counts(&self) -> (usize, usize) {
        (
            self.msgs.scan_prefix(b"B").count(),
            self.msgs.scan_prefix(b"Q").count(),
        )
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
    next_seq: u64,
}

impl DiskStore {
    /// A store for queue `queue`, holding what was recovered for it.
    pub fn new(disk: Arc<Disk>, queue: u64, recovered: Vec<RecoveredEntry>, mem_limit: u64) -> Self {
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
            if let Err(e) = self.disk.index_put(self.queue, m.seq, &m.message, r) {
                self.log_err("index write", e);
            }
        }
        // Transient messages exist only in memory.
        let keep = stored.is_none() || self.keep_in_memory(size);
        self.bytes += size;
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
                    let r = e.stored.expect("paged-out entries are stored");
                    match self.disk.read(self.queue, e.seq, r) {
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
        let stored = self.out.remove(&m.seq).or(m.message.stored);
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
        n
    }

    fn len(&self) -> usize {
        self.requeued.len() + self.ready.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn peek(&self, n: usize) -> Vec<QueuedMessage> {
        self.requeued
            .values()
            .chain(self.ready.iter())
            .take(n)
            .filter_map(|e| {
                let message = match &e.msg {
                    Some(m) => m.clone(),
                    None => Arc::new(self.disk.read(self.queue, e.seq, e.stored?).ok()?),
                };
                Some(QueuedMessage {
                    seq: e.seq,
                    message,
                    redelivered: e.redelivered,
                })
            })
            .collect()
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
            assert_eq!(&first.message.body[..], b"m1");
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
                    String::from_utf8(m.message.body.to_vec()).unwrap(),
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
    fn shared_bodies_are_stored_once_and_collected_with_the_last_queue() {
        let dir = tempdir("shared");
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let m = persistent(1, "both", &disk, 2);
        let mut a = DiskStore::new(disk.clone(), 1, Vec::new(), 1 << 20);
        let mut b = DiskStore::new(disk.clone(), 2, Vec::new(), 1 << 20);
        a.push(m.clone());
        b.push(m);
        assert_eq!(disk.counts(), (1, 2), "one body, two index entries");
        let x = a.pop().unwrap();
        a.settle(x.seq);
        assert_eq!(disk.counts(), (1, 1));
        let y = b.pop().unwrap();
        b.settle(y.seq);
        assert_eq!(disk.counts(), (0, 0));
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
        }
        let disk = Disk::open(&dir, 1 << 20).unwrap();
        let rec = disk.recover(&HashSet::new()).unwrap();
        assert!(rec.is_empty());
        assert_eq!(disk.counts(), (0, 0));
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

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "warren-disk-test-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
