//! The message index: which durable queue holds which record, as
//! append-only files instead of sled entries.
//!
//! sled rewrites (copies) a B-tree leaf on every insert and remove, and
//! the index took one insert per publish and one remove per ack: about
//! 40% of the broker's CPU per persistent message, more than everything
//! else in the path. Here a publish appends a 40-byte entry to a buffer
//! and an ack an 8-byte one; only the flusher writes and fsyncs them, so
//! the hot path does no I/O. This is the shape of RabbitMQ's classic
//! queue v2 index and LavinMQ's ack files.
//!
//! Files in `index/`, numbered from 1; a process starts a new one after
//! those it found, and rolls to the next every [`FILE_ENTRIES`] entries:
//! - `NNNNNNNN.idx`: fixed-size entries, counted from 0 (an entry's
//!   *ordinal*), each `kind (u8: P or D) ++ 3 zero bytes ++ queue id (u64
//!   BE) ++ seq (u64 BE) ++ segment, offset, length of the message record
//!   (u32 BE each) ++ body size (u32 BE) ++ CRC-32C of the 36 bytes before
//!   (u32 BE)`. `P`: the queue holds the record as message `seq`. `D`: the
//!   queue's delivered mark is `seq` (location and size are zero). `T`
//!   (format 3): the `P` entry just before it, in the same file, expires
//!   at the deadline held in the location's first 8 bytes (ms since the
//!   epoch, u64 BE); it lives and dies with that entry and is never acked.
//!   `C` (format 4): the queue's message `seq` was handed back as often
//!   as the count in the location's first 4 bytes (u32 BE; a queue with
//!   a delivery limit). Unlike `T` it is written long after its `P`
//!   entry, maybe in a later file, so it is live on its own: acked when
//!   its message is settled or a newer count replaces it, and it keeps
//!   its file like a live `P` entry does.
//! - `NNNNNNNN.ack`: 8-byte entries `ordinal (u32 BE) ++ CRC-32C of the
//!   file number and ordinal (u32 BE each)`: that `P` entry of the
//!   same-numbered `.idx` was acked or dropped.
//!
//! An ack is written next to the entry it cancels, so a file pair can be
//! deleted as soon as every `P` entry in it is acked, without reviving an
//! entry elsewhere; the `.idx` goes first, and an `.ack` without its
//! `.idx` is removed. `D` entries are never acked: the newest per queue
//! counts, and each new file starts with every queue's current mark, so
//! deleting older files loses none. An entry whose checksum fails (a write
//! cut short by a crash, or zeros where the file grew but the data did not
//! reach the disk) is ignored: it was never made durable, so nothing was
//! confirmed on it.

use crate::segments::Location;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes per index entry.
pub const ENTRY: usize = 40;
const ACK: usize = 8;
/// Entries per index file (5 MiB): a file is deleted when its last entry
/// is acked, so a message that stays unacked pins at most this much.
pub const FILE_ENTRIES: u32 = 1 << 17;

const PUBLISH: u8 = b'P';
const MARK: u8 = b'D';
const DEADLINE: u8 = b'T';
const COUNT: u8 = b'C';

/// What [`Journal::write_out`] leaves for [`Journal::finish`].
pub struct Written {
    sync: Vec<File>,
    dead: Vec<u32>,
}

/// Where a queue's index entry lies: what its ack names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexRef {
    pub file: u32,
    pub ord: u32,
}

/// A `P` entry found at open and not acked.
#[derive(Debug, Clone)]
pub struct Found {
    pub at: IndexRef,
    pub queue: u64,
    pub seq: u64,
    pub loc: Location,
    pub size: u32,
    /// From the `T` entry after it.
    pub deadline: Option<u64>,
}

/// A `C` entry found at open and not acked.
#[derive(Debug, Clone)]
pub struct FoundCount {
    pub at: IndexRef,
    pub queue: u64,
    pub seq: u64,
    pub count: u32,
}

/// What the files held at open.
#[derive(Debug, Default)]
pub struct Scan {
    /// Live `P` entries, oldest first.
    pub entries: Vec<Found>,
    /// Live `C` entries, oldest first.
    pub counts: Vec<FoundCount>,
    /// The newest delivered mark per queue.
    pub marks: HashMap<u64, u64>,
    /// Entries ignored for a bad checksum.
    pub torn: usize,
}

fn encode_entry(kind: u8, queue: u64, seq: u64, loc: Location, size: u32) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[0] = kind;
    e[4..12].copy_from_slice(&queue.to_be_bytes());
    e[12..20].copy_from_slice(&seq.to_be_bytes());
    e[20..32].copy_from_slice(&loc.to_bytes());
    e[32..36].copy_from_slice(&size.to_be_bytes());
    let sum = crc32c::crc32c(&e[..36]);
    e[36..].copy_from_slice(&sum.to_be_bytes());
    e
}

fn ack_sum(file: u32, ord: u32) -> u32 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&file.to_be_bytes());
    b[4..].copy_from_slice(&ord.to_be_bytes());
    crc32c::crc32c(&b)
}

fn encode_ack(r: IndexRef) -> [u8; ACK] {
    let mut a = [0u8; ACK];
    a[..4].copy_from_slice(&r.ord.to_be_bytes());
    a[4..].copy_from_slice(&ack_sum(r.file, r.ord).to_be_bytes());
    a
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// State shared by the hot path (publish, ack) and the flusher; never
/// held across I/O.
struct Inner {
    current: u32,
    next_ord: u32,
    /// Entries not yet written, per file.
    pending: BTreeMap<u32, Vec<u8>>,
    /// Acks not yet written, per file.
    acks: BTreeMap<u32, Vec<u8>>,
    /// Live `P` entries per file (files with none are absent).
    live: HashMap<u32, u64>,
    total_live: u64,
    /// Each queue's mark as last appended: copied into every new file.
    marks: HashMap<u64, u64>,
    /// Files whose every entry is acked, deleted by the next flush.
    dead: Vec<u32>,
}

impl Inner {
    fn push(&mut self, e: &[u8; ENTRY]) -> IndexRef {
        if self.next_ord >= FILE_ENTRIES {
            self.roll();
        }
        let r = IndexRef {
            file: self.current,
            ord: self.next_ord,
        };
        self.next_ord += 1;
        self.pending.entry(r.file).or_default().extend_from_slice(e);
        r
    }

    fn roll(&mut self) {
        let old = self.current;
        if !self.live.contains_key(&old) {
            self.dead.push(old);
        }
        self.current += 1;
        self.next_ord = 0;
        let marks: Vec<(u64, u64)> = self.marks.iter().map(|(q, m)| (*q, *m)).collect();
        for (q, m) in marks {
            let e = encode_entry(MARK, q, m, Location::default(), 0);
            let r = IndexRef {
                file: self.current,
                ord: self.next_ord,
            };
            self.next_ord += 1;
            self.pending
                .entry(r.file)
                .or_default()
                .extend_from_slice(&e);
        }
    }
}

/// How often ack files are fsynced. They are written at every flush (a
/// killed process loses none), but no confirm waits for them: an ack lost
/// with the machine only brings a message back, redelivered.
const ACK_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// File handles, used by the flusher only (one flush at a time).
struct Files {
    idx: HashMap<u32, File>,
    ack: HashMap<u32, File>,
    /// Ack files written since their last fsync.
    acks_unsynced: std::collections::HashSet<u32>,
    acks_synced_at: std::time::Instant,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            idx: HashMap::new(),
            ack: HashMap::new(),
            acks_unsynced: Default::default(),
            acks_synced_at: std::time::Instant::now(),
        }
    }
}

pub struct Journal {
    dir: PathBuf,
    /// The files found at open: those recovery keeps no entry of go.
    found: Mutex<Vec<u32>>,
    inner: Mutex<Inner>,
    files: Mutex<Files>,
}

fn file_path(dir: &Path, n: u32, ext: &str) -> PathBuf {
    dir.join(format!("{n:08}.{ext}"))
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// The numbers of the `.idx` and `.ack` files in `dir`.
fn list(dir: &Path) -> io::Result<(Vec<u32>, Vec<u32>)> {
    let (mut idx, mut ack) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((n, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        match ext {
            "idx" => idx.push(n),
            "ack" => ack.push(n),
            _ => {}
        }
    }
    idx.sort_unstable();
    ack.sort_unstable();
    Ok((idx, ack))
}

/// Reads one `.idx` file and its `.ack` into `scan`.
fn scan_file(dir: &Path, n: u32, scan: &mut Scan) -> io::Result<()> {
    let mut acked = std::collections::HashSet::new();
    match std::fs::read(file_path(dir, n, "ack")) {
        Ok(b) => {
            for a in b.chunks_exact(ACK) {
                let ord = be32(a);
                if be32(&a[4..]) == ack_sum(n, ord) {
                    acked.insert(ord);
                } else {
                    scan.torn += 1;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let b = std::fs::read(file_path(dir, n, "idx"))?;
    for (ord, e) in b.chunks_exact(ENTRY).enumerate() {
        if be32(&e[36..]) != crc32c::crc32c(&e[..36]) {
            scan.torn += 1;
            continue;
        }
        let (queue, seq) = (be64(&e[4..]), be64(&e[12..]));
        match e[0] {
            PUBLISH if !acked.contains(&(ord as u32)) => scan.entries.push(Found {
                at: IndexRef {
                    file: n,
                    ord: ord as u32,
                },
                queue,
                seq,
                loc: Location::from_bytes(&e[20..32]).expect("12 bytes"),
                size: be32(&e[32..]),
                deadline: None,
            }),
            DEADLINE => {
                // Its P entry is the one just before, if still live.
                if let Some(f) = scan.entries.last_mut() {
                    if f.at.file == n
                        && f.at.ord + 1 == ord as u32
                        && (f.queue, f.seq) == (queue, seq)
                    {
                        f.deadline = Some(be64(&e[20..]));
                    }
                }
            }
            COUNT if !acked.contains(&(ord as u32)) => scan.counts.push(FoundCount {
                at: IndexRef {
                    file: n,
                    ord: ord as u32,
                },
                queue,
                seq,
                count: be32(&e[20..]),
            }),
            MARK => {
                scan.marks.insert(queue, seq);
            }
            _ => {}
        }
    }
    Ok(())
}

impl Journal {
    /// Opens `dir` and reads every entry in it; nothing counts as live
    /// until [`Journal::recovered`] says which entries are kept.
    pub fn open(dir: &Path) -> io::Result<(Journal, Scan)> {
        std::fs::create_dir_all(dir)?;
        let (idx, ack) = list(dir)?;
        let mut scan = Scan::default();
        for &n in &idx {
            scan_file(dir, n, &mut scan)?;
        }
        for n in ack.iter().filter(|n| idx.binary_search(n).is_err()) {
            // Its .idx was deleted and the process stopped before this.
            std::fs::remove_file(file_path(dir, *n, "ack"))?;
        }
        let last = idx.iter().chain(&ack).copied().max().unwrap_or(0);
        let j = Journal {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                current: last + 1,
                next_ord: 0,
                pending: BTreeMap::new(),
                acks: BTreeMap::new(),
                live: HashMap::new(),
                total_live: 0,
                marks: HashMap::new(),
                dead: Vec::new(),
            }),
            found: Mutex::new(idx),
            files: Mutex::default(),
        };
        Ok((j, scan))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recovery's verdict on the entries [`Journal::open`] found: `kept`
    /// stay live, `dropped` are acked (so they stay gone), and `marks` are
    /// the live queues' delivered marks, written again into the new file.
    pub fn recovered(
        &self,
        kept: impl IntoIterator<Item = IndexRef>,
        dropped: impl IntoIterator<Item = IndexRef>,
        marks: HashMap<u64, u64>,
    ) {
        let mut g = self.lock();
        for r in kept {
            *g.live.entry(r.file).or_default() += 1;
            g.total_live += 1;
        }
        for r in dropped {
            g.acks
                .entry(r.file)
                .or_default()
                .extend_from_slice(&encode_ack(r));
        }
        let found = std::mem::take(&mut *self.found.lock().unwrap_or_else(|e| e.into_inner()));
        let unused: Vec<u32> = found
            .into_iter()
            .filter(|f| !g.live.contains_key(f))
            .collect();
        g.dead.extend(unused);
        for (q, m) in marks {
            let e = encode_entry(MARK, q, m, Location::default(), 0);
            g.push(&e);
            g.marks.insert(q, m);
        }
    }

    /// Queue `queue` holds the record at `loc` as message `seq`.
    pub fn publish(&self, queue: u64, seq: u64, loc: Location, size: u32) -> IndexRef {
        self.publish_expiring(queue, seq, loc, size, None)
    }

    /// [`Journal::publish`] for a message that expires at `deadline`: a
    /// `T` entry follows the `P` entry in the same file.
    pub fn publish_expiring(
        &self,
        queue: u64,
        seq: u64,
        loc: Location,
        size: u32,
        deadline: Option<u64>,
    ) -> IndexRef {
        let e = encode_entry(PUBLISH, queue, seq, loc, size);
        let mut g = self.lock();
        if deadline.is_some() && g.next_ord + 1 >= FILE_ENTRIES {
            g.roll();
        }
        let r = g.push(&e);
        if let Some(d) = deadline {
            let mut at = [0u8; 12];
            at[..8].copy_from_slice(&d.to_be_bytes());
            let loc = Location::from_bytes(&at).expect("12 bytes");
            g.push(&encode_entry(DEADLINE, queue, seq, loc, 0));
        }
        *g.live.entry(r.file).or_default() += 1;
        g.total_live += 1;
        r
    }

    /// Queue `queue`'s message `seq` was handed back `count` times: a `C`
    /// entry, live (keeping its file) until acked like a `P` entry.
    pub fn count(&self, queue: u64, seq: u64, count: u32) -> IndexRef {
        let mut at = [0u8; 12];
        at[..4].copy_from_slice(&count.to_be_bytes());
        let loc = Location::from_bytes(&at).expect("12 bytes");
        let e = encode_entry(COUNT, queue, seq, loc, 0);
        let mut g = self.lock();
        let r = g.push(&e);
        *g.live.entry(r.file).or_default() += 1;
        g.total_live += 1;
        r
    }

    /// The entry at `r` is acked or dropped.
    pub fn ack(&self, r: IndexRef) {
        let a = encode_ack(r);
        let mut g = self.lock();
        let Some(n) = g.live.get_mut(&r.file) else {
            return;
        };
        *n -= 1;
        let empty = *n == 0;
        g.total_live -= 1;
        if empty {
            g.live.remove(&r.file);
            if r.file != g.current {
                g.dead.push(r.file);
            }
        }
        g.acks.entry(r.file).or_default().extend_from_slice(&a);
    }

    /// Queue `queue` has delivered every message up to `seq`.
    pub fn mark(&self, queue: u64, seq: u64) {
        let e = encode_entry(MARK, queue, seq, Location::default(), 0);
        let mut g = self.lock();
        g.push(&e);
        g.marks.insert(queue, seq);
    }

    /// A queue's store went: its mark is no longer copied into new files.
    pub fn forget(&self, queue: u64) {
        self.lock().marks.remove(&queue);
    }

    /// Live `P` entries.
    pub fn live(&self) -> u64 {
        self.lock().total_live
    }

    /// Index files on disk (tests).
    pub fn files(&self) -> usize {
        list(&self.dir).map(|(i, _)| i.len()).unwrap_or(0)
    }

    /// Writes what is buffered, fsyncs the index entries (acks only now
    /// and then, see [`ACK_SYNC_EVERY`]; all of them when `all`), then
    /// deletes the files whose every entry was acked. The caller runs one
    /// flush at a time.
    pub fn flush(&self, all: bool) -> io::Result<()> {
        let w = self.write_out(all)?;
        self.finish(w)
    }

    /// A flush's first half: writes what is buffered and returns what to
    /// fsync and delete, so a caller can write several stores before
    /// syncing them together (on ext4 the first fdatasync commits the
    /// others' metadata with it, leaving them little to do).
    pub fn write_out(&self, all: bool) -> io::Result<Written> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let (pending, acks, dead, current) = {
            let mut g = self.lock();
            (
                std::mem::take(&mut g.pending),
                std::mem::take(&mut g.acks),
                std::mem::take(&mut g.dead),
                g.current,
            )
        };
        let mut written = Vec::new();
        let ok = self.write_all(&mut files, pending, "idx", &mut written);
        let ok = ok.and_then(|()| self.write_all(&mut files, acks, "ack", &mut written));
        if let Err(e) = ok {
            // Try again at the next flush: nothing is deleted meanwhile.
            self.lock().dead.extend(dead);
            return Err(e);
        }
        let mut sync = Vec::new();
        for (ext, n) in written {
            if ext == "ack" {
                files.acks_unsynced.insert(n);
            } else if let Some(f) = files.idx.get(&n) {
                sync.push(f.try_clone()?);
            }
        }
        if all || files.acks_synced_at.elapsed() >= ACK_SYNC_EVERY {
            for n in std::mem::take(&mut files.acks_unsynced) {
                if let Some(f) = files.ack.get(&n) {
                    sync.push(f.try_clone()?);
                }
            }
            files.acks_synced_at = std::time::Instant::now();
        }
        // Older index files are complete: their handles go.
        files.idx.retain(|n, _| *n == current);
        for n in &dead {
            files.ack.remove(n);
            files.acks_unsynced.remove(n);
        }
        Ok(Written { sync, dead })
    }

    /// A flush's second half: fsyncs, then deletes the dead files.
    pub fn finish(&self, w: Written) -> io::Result<()> {
        for f in w.sync {
            f.sync_data()?;
        }
        for n in w.dead {
            for ext in ["idx", "ack"] {
                match std::fs::remove_file(file_path(&self.dir, n, ext)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Appends each buffer to its file; what could not be written goes
    /// back in front of what was buffered since.
    fn write_all(
        &self,
        files: &mut Files,
        bufs: BTreeMap<u32, Vec<u8>>,
        ext: &'static str,
        synced: &mut Vec<(&'static str, u32)>,
    ) -> io::Result<()> {
        let mut bufs = bufs.into_iter();
        let mut failed = None;
        for (n, b) in bufs.by_ref() {
            if let Err(e) = self.write_one(files, n, &b, ext) {
                failed = Some((e, n, b));
                break;
            }
            synced.push((ext, n));
        }
        let Some((e, n, b)) = failed else {
            return Ok(());
        };
        let mut g = self.lock();
        for (n, mut b) in std::iter::once((n, b)).chain(bufs) {
            let map = if ext == "idx" {
                &mut g.pending
            } else {
                &mut g.acks
            };
            let newer = map.remove(&n).unwrap_or_default();
            b.extend_from_slice(&newer);
            map.insert(n, b);
        }
        Err(e)
    }

    fn write_one(&self, files: &mut Files, n: u32, b: &[u8], ext: &'static str) -> io::Result<()> {
        let map = if ext == "idx" {
            &mut files.idx
        } else {
            &mut files.ack
        };
        let f = match map.entry(n) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(open_append(&file_path(&self.dir, n, ext))?)
            }
        };
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(b) {
            // A partial entry would shift every later ordinal: cut it off.
            let _ = f.set_len(before);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "warren-journal-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn loc(n: u32) -> Location {
        Location {
            seg: 1,
            off: n * 10,
            len: 3,
        }
    }

    #[test]
    fn entries_acks_and_marks_survive_a_reopen() {
        let dir = tempdir("reopen");
        {
            let (j, scan) = Journal::open(&dir).unwrap();
            assert!(scan.entries.is_empty());
            let a = j.publish(1, 1, loc(1), 3);
            let _b = j.publish(1, 2, loc(2), 3);
            let c = j.publish(2, 1, loc(3), 3);
            j.ack(a);
            j.mark(1, 2);
            j.flush(true).unwrap();
            j.ack(c);
            assert_eq!(j.live(), 1);
            j.flush(true).unwrap();
        }
        let (j, scan) = Journal::open(&dir).unwrap();
        let got: Vec<(u64, u64)> = scan.entries.iter().map(|f| (f.queue, f.seq)).collect();
        assert_eq!(got, vec![(1, 2)]);
        assert_eq!(scan.entries[0].loc, loc(2));
        assert_eq!(scan.marks.get(&1), Some(&2));
        assert_eq!(scan.torn, 0);
        j.recovered([scan.entries[0].at], [], scan.marks.clone());
        j.flush(true).unwrap();
        assert_eq!(j.files(), 2, "the old file and the new one with the mark");
        j.ack(scan.entries[0].at);
        j.flush(true).unwrap();
        assert_eq!(j.files(), 1, "the old file went with its last entry");
        drop(j);
        let (_j, scan) = Journal::open(&dir).unwrap();
        assert!(scan.entries.is_empty());
        assert_eq!(scan.marks.get(&1), Some(&2), "the mark was carried over");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_roll_and_are_deleted_once_fully_acked_keeping_marks() {
        let dir = tempdir("roll");
        let (j, _) = Journal::open(&dir).unwrap();
        j.mark(9, 5);
        let n = FILE_ENTRIES as u64 + 10;
        let refs: Vec<IndexRef> = (0..n).map(|s| j.publish(1, s, loc(1), 1)).collect();
        assert_eq!(refs.last().unwrap().file, 2, "rolled to a second file");
        j.flush(true).unwrap();
        assert_eq!(j.files(), 2);
        // File 1 holds the mark and FILE_ENTRIES - 1 entries: ack all but one.
        let in_first = refs.iter().filter(|r| r.file == 1).count();
        assert_eq!(in_first, FILE_ENTRIES as usize - 1);
        for r in &refs[..in_first - 1] {
            j.ack(*r);
        }
        j.flush(true).unwrap();
        assert_eq!(j.files(), 2, "file 1 is still live");
        for r in &refs[in_first - 1..] {
            j.ack(*r);
        }
        j.flush(true).unwrap();
        assert_eq!(j.files(), 1, "file 1 went; the current one stays");
        drop(j);
        let (_j, scan) = Journal::open(&dir).unwrap();
        assert!(scan.entries.is_empty());
        assert_eq!(scan.marks.get(&9), Some(&5), "copied into the new file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_and_zeroed_entries_are_ignored() {
        let dir = tempdir("torn");
        {
            let (j, _) = Journal::open(&dir).unwrap();
            j.publish(1, 1, loc(1), 3);
            j.publish(1, 2, loc(2), 3);
            j.flush(true).unwrap();
        }
        let p = file_path(&dir, 1, "idx");
        let mut b = std::fs::read(&p).unwrap();
        // The second entry cut short, then zeros as after a crash that
        // grew the file without writing its data.
        b.truncate(ENTRY + 20);
        b.resize(3 * ENTRY, 0);
        std::fs::write(&p, &b).unwrap();
        std::fs::write(file_path(&dir, 1, "ack"), [0u8; ACK]).unwrap();
        let (_j, scan) = Journal::open(&dir).unwrap();
        let seqs: Vec<u64> = scan.entries.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![1], "a zeroed ack does not cancel entry 0");
        assert_eq!(scan.torn, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
