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
//! Appends are buffered in memory and written at [`Segments::flush`]
//! (which also fsyncs) or when the buffer fills; a new process always
//! starts a new segment, so older files are never written again.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

struct Inner {
    current: u32,
    file: File,
    /// Bytes of the current segment already written to its file.
    written: u64,
    /// Appended, not yet written.
    buf: Vec<u8>,
    /// Files written since the last fsync (rolled segments).
    unsynced: Vec<File>,
    /// Live references per segment.
    refs: HashMap<u32, u64>,
    readers: HashMap<u32, File>,
    appended: u64,
}

pub struct Segments {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Fault injection for tests: appends fail while set.
    fail_appends: std::sync::atomic::AtomicBool,
    /// Segments numbered up to this one carry version 1's checksum.
    legacy_upto: std::sync::atomic::AtomicU32,
}

fn path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:08}.seg"))
}

fn open_append(dir: &Path, seg: u32) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path(dir, seg))
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
        let file = open_append(dir, current)?;
        Ok((
            Segments {
                dir: dir.to_owned(),
                inner: Mutex::new(Inner {
                    current,
                    file,
                    written: 0,
                    buf: Vec::with_capacity(BUFFER_BYTES),
                    unsynced: Vec::new(),
                    refs: HashMap::new(),
                    readers: HashMap::new(),
                    appended: 0,
                }),
                fail_appends: std::sync::atomic::AtomicBool::new(false),
                legacy_upto: std::sync::atomic::AtomicU32::new(0),
            },
            existing,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Appends a record that `refs` index entries will point at.
    pub fn append(&self, rec: &[u8], refs: u32) -> io::Result<Location> {
        self.append_parts(&[rec], refs)
    }

    /// Appends one record made of `parts` laid end to end, copying each
    /// once, straight into the write buffer (no record is assembled first).
    pub fn append_parts(&self, parts: &[&[u8]], refs: u32) -> io::Result<Location> {
        if self.fail_appends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("injected append failure"));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).map_err(|_| io::Error::other("record over 4 GiB"))?;
        // The checksum is computed before taking the lock.
        let sum = parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p));
        let mut g = self.lock();
        let need = 8 + len as u64;
        let end = g.written + g.buf.len() as u64;
        if end > 0 && end + need > SEGMENT_BYTES {
            self.roll(&mut g)?;
        }
        let off = g.written + g.buf.len() as u64;
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
        if g.buf.len() >= BUFFER_BYTES {
            Self::write_buf(&mut g)?;
        }
        Ok(loc)
    }

    fn write_buf(g: &mut Inner) -> io::Result<()> {
        if !g.buf.is_empty() {
            let Inner { file, buf, .. } = g;
            if let Err(e) = file.write_all(buf) {
                // A partial write would shift every later record away from
                // the offsets its index entries hold: cut it off, so the
                // buffer can be written again where it belongs.
                let _ = file.set_len(g.written);
                return Err(e);
            }
            g.written += g.buf.len() as u64;
            g.buf.clear();
        }
        Ok(())
    }

    fn roll(&self, g: &mut Inner) -> io::Result<()> {
        Self::write_buf(g)?;
        let next = g.current + 1;
        let old = std::mem::replace(&mut g.file, open_append(&self.dir, next)?);
        g.unsynced.push(old);
        let prev = g.current;
        g.current = next;
        g.written = 0;
        if g.refs.get(&prev).copied().unwrap_or(0) == 0 {
            g.refs.remove(&prev);
            g.readers.remove(&prev);
            let _ = std::fs::remove_file(path(&self.dir, prev));
        }
        Ok(())
    }

    /// Writes what is buffered and makes every segment durable.
    pub fn flush(&self) -> io::Result<()> {
        for f in self.write_out()? {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Writes what is buffered; returns the files to fsync (outside the
    /// lock: appends go on meanwhile), so a caller can write several
    /// stores before syncing them together.
    pub fn write_out(&self) -> io::Result<Vec<File>> {
        let mut g = self.lock();
        Self::write_buf(&mut g)?;
        let mut files = std::mem::take(&mut g.unsynced);
        files.push(g.file.try_clone()?);
        Ok(files)
    }

    /// Reads a record back, checking its length and checksum.
    pub fn read(&self, loc: Location) -> io::Result<bytes::Bytes> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {}: {what}", loc.seg),
            )
        };
        let mut g = self.lock();
        let off = loc.off as u64;
        let mut rec = vec![0u8; 8 + loc.len as usize];
        if loc.seg == g.current && off >= g.written {
            let start = (off - g.written) as usize;
            let src = g
                .buf
                .get(start..start + rec.len())
                .ok_or_else(|| bad("record past the end"))?;
            rec.copy_from_slice(src);
        } else {
            let f = match g.readers.entry(loc.seg) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(File::open(path(&self.dir, loc.seg))?)
                }
            };
            f.read_exact_at(&mut rec, off)?;
        }
        drop(g);
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
    /// last reference (unless it is still being written).
    pub fn release(&self, seg: u32) {
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
            if seg != g.current {
                g.readers.remove(&seg);
                let _ = std::fs::remove_file(path(&self.dir, seg));
            }
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

    /// Segment files on disk (tests: files go with their last reference).
    pub fn files(&self) -> usize {
        std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_flush_and_release() {
        let dir = std::env::temp_dir().join(format!("warren-seg-{}", std::process::id()));
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
    }
}
