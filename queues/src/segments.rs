//! Append-only segment files holding message bodies.
//!
//! sled copies a whole B-tree leaf (up to 16 entries) on every write, so
//! keeping message bodies in it costs a copy of up to 16 bodies per publish
//! and per ack. Bodies therefore go to plain files, appended in order and
//! read back by position; sled keeps only small index entries pointing
//! here. A segment file is deleted once no index entry refers to it.
//!
//! File `msgs/NNNNNNNN.seg`: a sequence of records, each
//! `len (u32 BE) ++ checksum (u32 BE) ++ bytes`. The checksum is CRC-32C
//! (the `crc32c` crate: SSE 4.2 / ARMv8 instructions, about 20 GB/s) of
//! the bytes; segments written by format version 1 (numbered up to
//! [`Segments::set_legacy_upto`]) carry 32-bit FNV-1a, computed a byte at
//! a time, which is kept only to read them back.
//! Appends are buffered in memory; a full buffer (or a flush) is *sealed*
//! and written at its offset with `pwrite`, then [`Segments::flush`]
//! fsyncs. A new process always starts a new segment, so older files are
//! never written again.
//!
//! Locking: one short mutex guards the in-memory state (the buffer, the
//! sealed buffers not yet written, reference counts, open files). It is
//! never held across file I/O: a sealed buffer is written by whoever
//! sealed it (one writer at a time, in order, under a separate mutex that
//! only writers take), reads copy out of the buffers or read the file
//! through a shared handle after the lock is dropped, and unlinking a
//! dead segment happens after it is released. Publishers appending and
//! consumers reading paged-out bodies therefore never wait for the disk
//! behind each other.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Location {
    pub seg: u32,
    /// Offset of the record's header in the file.
    pub off: u32,
    /// Length of the record's bytes (after the 8-byte header).
    pub len: u32,
}

impl Location {
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.seg.to_be_bytes());
        b[4..8].copy_from_slice(&self.off.to_be_bytes());
        b[8..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 12 {
            return None;
        }
        let u = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Location {
            seg: u(0),
            off: u(4),
            len: u(8),
        })
    }
}

const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const BUFFER_BYTES: usize = 1024 * 1024;

/// A record's checksum (format version 2 on).
pub fn checksum(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// The checksum of format version 1's records (32-bit FNV-1a): only to
/// read segments written before the upgrade.
pub fn legacy_checksum(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &x in b {
        h ^= x as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A full buffer, handed to a writer; readers copy from it until it is
/// in its file.
struct Sealed {
    seg: u32,
    off: u64,
    data: Vec<u8>,
    file: Arc<File>,
}

struct Inner {
    current: u32,
    file: Arc<File>,
    /// Offset in the current segment where `buf` starts.
    buf_start: u64,
    /// Appended, not yet sealed.
    buf: Vec<u8>,
    /// Sealed buffers not yet written, oldest first.
    sealed: VecDeque<Arc<Sealed>>,
    /// Files with writes not yet fsynced, by segment.
    unsynced: BTreeMap<u32, Arc<File>>,
    /// Live references per segment.
    refs: HashMap<u32, u64>,
    /// Open handles (read and write for this process's segments).
    readers: HashMap<u32, Arc<File>>,
    appended: u64,
}

pub struct Segments {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Taken by whoever writes sealed buffers, so they reach their files
    /// in order (a crash leaves no hole before a written record); readers
    /// and appenders never take it.
    writing: Mutex<()>,
    /// Fault injection for tests: appends fail while set.
    fail_appends: std::sync::atomic::AtomicBool,
    /// Segments numbered up to this one carry version 1's checksum.
    legacy_upto: std::sync::atomic::AtomicU32,
    /// A scratch area ([`Segments::open_scratch`]): never fsynced, and the
    /// current segment is retired as soon as nothing refers to it.
    scratch: bool,
}

fn path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:08}.seg"))
}

fn open_segment(dir: &Path, seg: u32) -> io::Result<Arc<File>> {
    Ok(Arc::new(
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path(dir, seg))?,
    ))
}

impl Segments {
    /// Opens `dir`, starting a new segment after the existing ones.
    /// Returns the sizes of the existing segments for recovery checks.
    pub fn open(dir: &Path) -> io::Result<(Segments, BTreeMap<u32, u64>)> {
        std::fs::create_dir_all(dir)?;
        let mut existing = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            existing.insert(n, e.metadata()?.len());
        }
        let current = existing.keys().next_back().map_or(1, |n| n + 1);
        let file = open_segment(dir, current)?;
        Ok((
            Segments {
                dir: dir.to_owned(),
                inner: Mutex::new(Inner {
                    current,
                    file: file.clone(),
                    buf_start: 0,
                    buf: Vec::with_capacity(BUFFER_BYTES),
                    sealed: VecDeque::new(),
                    unsynced: BTreeMap::new(),
                    refs: HashMap::new(),
                    readers: [(current, file)].into(),
                    appended: 0,
                }),
                writing: Mutex::new(()),
                fail_appends: std::sync::atomic::AtomicBool::new(false),
                legacy_upto: std::sync::atomic::AtomicU32::new(0),
                scratch: false,
            },
            existing,
        ))
    }

    /// A scratch area in `dir` for records that need not survive the
    /// process (transient bodies paged out of memory): whatever `dir`
    /// held is deleted first, writes are never fsynced, and a segment file
    /// goes as soon as its last record is released, the current one
    /// included, so a drained area holds one empty file.
    pub fn open_scratch(dir: &Path) -> io::Result<Segments> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let (mut s, _) = Segments::open(dir)?;
        s.scratch = true;
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record that `refs` index entries will point at. The
    /// record is in memory (readable) when this returns; it reaches its
    /// file when its buffer fills, and the disk at the next flush. A
    /// failed file write is retried by the next flush, which reports it.
    pub fn append(&self, rec: &[u8], refs: u32) -> io::Result<Location> {
        self.append_parts(&[rec], refs)
    }

    /// [`Segments::append`] of one record made of `parts` laid end to end,
    /// each copied once, straight into the buffer (no record is assembled
    /// first); the checksum is computed before the lock is taken.
    pub fn append_parts(&self, parts: &[&[u8]], refs: u32) -> io::Result<Location> {
        if self.fail_appends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("injected append failure"));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).map_err(|_| io::Error::other("record over 4 GiB"))?;
        let sum = parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p));
        let (loc, full) = {
            let mut g = self.lock();
            let need = 8 + len as u64;
            let end = g.buf_start + g.buf.len() as u64;
            if end > 0 && end + need > SEGMENT_BYTES {
                self.roll(&mut g)?;
            }
            let off = g.buf_start + g.buf.len() as u64;
            let loc = Location {
                seg: g.current,
                off: off as u32,
                len: len32,
            };
            g.buf.extend_from_slice(&len32.to_be_bytes());
            g.buf.extend_from_slice(&sum.to_be_bytes());
            for p in parts {
                g.buf.extend_from_slice(p);
            }
            g.appended += len as u64;
            let cur = g.current;
            *g.refs.entry(cur).or_default() += refs as u64;
            let full = g.buf.len() >= BUFFER_BYTES;
            if full {
                Self::seal(&mut g, self.scratch);
            }
            (loc, full)
        };
        if full {
            if let Err(e) = self.write_sealed() {
                tracing::error!(error = %e, "cannot write a message segment; the next flush retries");
            }
        }
        Ok(loc)
    }

    /// Hands the buffer to a writer (see [`Segments::write_sealed`]).
    fn seal(g: &mut Inner, scratch: bool) {
        if g.buf.is_empty() {
            return;
        }
        let data = std::mem::replace(&mut g.buf, Vec::with_capacity(BUFFER_BYTES));
        let off = g.buf_start;
        g.buf_start += data.len() as u64;
        let (seg, file) = (g.current, g.file.clone());
        if !scratch {
            g.unsynced.entry(seg).or_insert_with(|| file.clone());
        }
        g.sealed.push_back(Arc::new(Sealed {
            seg,
            off,
            data,
            file,
        }));
    }

    /// Writes every sealed buffer to its file, oldest first, without the
    /// state lock (each is taken off the list only once written, so
    /// readers find it in memory until then).
    fn write_sealed(&self) -> io::Result<()> {
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let Some(s) = self.lock().sealed.front().cloned() else {
                return Ok(());
            };
            s.file.write_all_at(&s.data, s.off)?;
            let mut g = self.lock();
            if g.sealed.front().is_some_and(|f| Arc::ptr_eq(f, &s)) {
                g.sealed.pop_front();
            }
        }
    }

    /// Starts the next segment (under the state lock: an `open` once per
    /// 64 MiB); the old one is deleted if nothing refers to it.
    fn roll(&self, g: &mut Inner) -> io::Result<()> {
        let next = g.current + 1;
        let file = open_segment(&self.dir, next)?;
        Self::seal(g, self.scratch);
        let prev = g.current;
        g.current = next;
        g.file = file.clone();
        g.readers.insert(next, file);
        g.buf_start = 0;
        if g.refs.get(&prev).copied().unwrap_or(0) == 0 {
            g.refs.remove(&prev);
            g.readers.remove(&prev);
            // A sealed buffer still to be written holds its own handle.
            let _ = std::fs::remove_file(path(&self.dir, prev));
        }
        Ok(())
    }

    /// Segments numbered up to `seg` were written by format version 1
    /// and are read with its checksum.
    pub fn set_legacy_upto(&self, seg: u32) {
        self.legacy_upto
            .store(seg, std::sync::atomic::Ordering::Relaxed);
    }

    /// The newest segment present when this process opened the directory.
    pub fn last_existing(&self) -> u32 {
        self.lock().current.saturating_sub(1)
    }

    /// Whether anything was appended since the last flush.
    pub fn is_dirty(&self) -> bool {
        let g = self.lock();
        !g.buf.is_empty() || !g.sealed.is_empty() || !g.unsynced.is_empty()
    }

    /// Writes what is buffered and makes every segment durable.
    pub fn flush(&self) -> io::Result<()> {
        let files: Vec<(u32, Arc<File>)> = {
            let mut g = self.lock();
            Self::seal(&mut g, self.scratch);
            std::mem::take(&mut g.unsynced).into_iter().collect()
        };
        let res = self
            .write_sealed()
            .and_then(|()| files.iter().try_for_each(|(_, f)| f.sync_data()));
        if res.is_err() {
            // Synced again by the next flush.
            let mut g = self.lock();
            for (seg, f) in files {
                g.unsynced.entry(seg).or_insert(f);
            }
        }
        res
    }

    /// Reads a record back, checking its length and checksum. The state
    /// lock is held only to find the record (or copy it out of a buffer).
    pub fn read(&self, loc: Location) -> io::Result<bytes::Bytes> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {}: {what}", loc.seg),
            )
        };
        let off = loc.off as u64;
        let mut rec = vec![0u8; 8 + loc.len as usize];
        let end = off + rec.len() as u64;
        let file =
            {
                let g = self.lock();
                if loc.seg == g.current && off >= g.buf_start {
                    let start = (off - g.buf_start) as usize;
                    let src = g
                        .buf
                        .get(start..start + rec.len())
                        .ok_or_else(|| bad("record past the end"))?;
                    rec.copy_from_slice(src);
                    None
                } else if let Some(s) = g.sealed.iter().find(|s| {
                    s.seg == loc.seg && off >= s.off && end <= s.off + s.data.len() as u64
                }) {
                    let start = (off - s.off) as usize;
                    let n = rec.len();
                    rec.copy_from_slice(&s.data[start..start + n]);
                    None
                } else {
                    Some(g.readers.get(&loc.seg).cloned())
                }
            };
        match file {
            None => {}
            Some(Some(f)) => f.read_exact_at(&mut rec, off)?,
            Some(None) => {
                // An old segment read for the first time: opened without
                // the lock, kept unless it was deleted meanwhile.
                let f = Arc::new(File::open(path(&self.dir, loc.seg))?);
                f.read_exact_at(&mut rec, off)?;
                let mut g = self.lock();
                if g.refs.contains_key(&loc.seg) {
                    g.readers.entry(loc.seg).or_insert(f);
                }
            }
        }
        let len = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let sum = u32::from_be_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let legacy = loc.seg <= self.legacy_upto.load(std::sync::atomic::Ordering::Relaxed);
        let computed = if legacy {
            legacy_checksum(&rec[8..])
        } else {
            checksum(&rec[8..])
        };
        if len != loc.len || computed != sum {
            return Err(bad("checksum mismatch"));
        }
        // The header is sliced off, not moved out.
        Ok(bytes::Bytes::from(rec).slice(8..))
    }

    /// An index entry pointing at `seg` went; deletes the file with its
    /// last reference (unless it is still being written), after the lock
    /// is released.
    pub fn release(&self, seg: u32) {
        let unlink = {
            let mut g = self.lock();
            let gone = match g.refs.get_mut(&seg) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => true,
                None => false,
            };
            if gone {
                g.refs.remove(&seg);
            }
            if gone && self.scratch && seg == g.current && g.buf_start + g.buf.len() as u64 > 0 {
                // A drained scratch area keeps no dead records: start the
                // next segment (an empty file), which deletes this one.
                if let Err(e) = self.roll(&mut g) {
                    tracing::warn!(error = %e, "cannot start a new scratch segment");
                }
                return;
            }
            let unlink = gone && seg != g.current;
            if unlink {
                g.readers.remove(&seg);
            }
            unlink
        };
        if unlink {
            let _ = std::fs::remove_file(path(&self.dir, seg));
        }
    }

    /// Recovery: the live references per old segment; segments nobody
    /// refers to are deleted.
    pub fn set_recovered_refs(&self, refs: HashMap<u32, u64>, existing: &BTreeMap<u32, u64>) {
        let mut g = self.lock();
        for seg in existing.keys() {
            if !refs.contains_key(seg) {
                let _ = std::fs::remove_file(path(&self.dir, *seg));
            }
        }
        for (seg, n) in refs {
            *g.refs.entry(seg).or_default() += n;
        }
    }

    /// Makes appends fail (or succeed again), to test how callers
    /// handle a store that cannot take a message (a full disk, say).
    pub fn inject_append_failures(&self, fail: bool) {
        self.fail_appends
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// Body bytes appended since open (tests: a shared body is written once).
    pub fn appended(&self) -> u64 {
        self.lock().appended
    }

    /// Live references over all segments (tests: none is dropped twice).
    pub fn live_refs(&self) -> u64 {
        self.lock().refs.values().sum()
    }

    /// Segment files on disk and their total bytes.
    pub fn usage(&self) -> (usize, u64) {
        let Ok(d) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        d.flatten().fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
        })
    }

    /// Segment files on disk (tests: files go with their last reference).
    pub fn files(&self) -> usize {
        std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn append_read_flush_and_release() {
        let dir = std::env::temp_dir().join(format!("warren-seg-{}", std::process::id()));
        let _cleanup = RemoveOnDrop(dir.clone());
        let _ = std::fs::remove_dir_all(&dir);
        let (s, existing) = Segments::open(&dir).unwrap();
        assert!(existing.is_empty());
        let a = s.append(b"hello", 1).unwrap();
        let b = s.append(b"world!", 2).unwrap();
        assert_eq!(&s.read(a).unwrap()[..], b"hello", "from the buffer");
        s.flush().unwrap();
        assert_eq!(&s.read(b).unwrap()[..], b"world!", "from the file");
        let mut wrong = b;
        wrong.len = 5;
        assert!(s.read(wrong).is_err());
        drop(s);
        let (s, existing) = Segments::open(&dir).unwrap();
        assert_eq!(existing.len(), 1);
        s.set_recovered_refs([(a.seg, 3)].into(), &existing);
        assert_eq!(&s.read(a).unwrap()[..], b"hello");
        s.release(a.seg);
        s.release(a.seg);
        assert_eq!(
            s.files(),
            2,
            "still referenced, plus the new current segment"
        );
        s.release(a.seg);
        assert_eq!(s.files(), 1, "the old segment went with its last reference");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Appenders fill and seal buffers (written by whoever sealed them)
    /// while readers read records back from the open buffer, sealed
    /// buffers and the file: every record reads back intact, whatever
    /// state its buffer was in.
    #[test]
    fn concurrent_appends_and_reads_see_every_record_intact() {
        let dir = std::env::temp_dir().join(format!("warren-seg-conc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (s, _) = Segments::open(&dir).unwrap();
        let s = std::sync::Arc::new(s);
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut locs = Vec::new();
                    for i in 0..3000u32 {
                        // ~6 MiB over all threads: several sealed buffers.
                        let rec = vec![t ^ (i as u8); 500 + (i as usize % 7)];
                        let loc = s.append(&rec, 1).unwrap();
                        locs.push((loc, rec));
                        if i % 3 == 0 {
                            let (l, r) = &locs[(i as usize * 7) % locs.len()];
                            assert_eq!(&s.read(*l).unwrap(), r);
                        }
                        if i % 1000 == 999 {
                            s.flush().unwrap();
                        }
                    }
                    locs
                })
            })
            .collect();
        let all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for (l, r) in &all {
            assert_eq!(&s.read(*l).unwrap(), r);
        }
        s.flush().unwrap();
        assert!(!s.is_dirty(), "a flush leaves nothing unsynced");
        drop(s);
        // Everything reached the file at its offset.
        let (s, existing) = Segments::open(&dir).unwrap();
        s.set_recovered_refs([(1, all.len() as u64)].into(), &existing);
        for (l, r) in &all {
            assert_eq!(&s.read(*l).unwrap(), r);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
