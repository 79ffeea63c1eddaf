//! A stream's log: an append-only sequence of messages numbered by offset
//! (0, 1, 2, …), kept in segment files, written once and read by any
//! number of cursors, and trimmed only by retention (whole segments, by
//! size and age), never by consumption.
//!
//! Appends only encode into an in-memory chunk under the log's lock and
//! assign offsets. [`StreamLog::sync`] (the broker's group-commit thread)
//! writes the pending chunks out, fsyncs, and only then makes them
//! readable (`committed`), so a reader never sees an offset a crash could
//! take back and renumber. On disk a segment (`<first offset>.seg`, 20
//! digits) is a run of chunks: a [`CHUNK_HEAD`]-byte header (magic, first
//! offset, record count, first and last timestamp, data length, CRC-32C
//! of the data), then its records (`u32` length, then the message:
//! persistent flag, exchange, routing key, properties, body). Recovery
//! walks the chunk headers and cuts a torn tail off the last segment.
//!
//! Memory per stream is a sparse index (one entry per [`INDEX_EVERY`]
//! bytes of a segment) and the chunks not yet synced; cursors read with
//! positioned reads, one chunk at a time, so the log is never held in
//! memory and many readers share the OS page cache.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A chunk header's first four bytes ("WSC1").
const CHUNK_MAGIC: u32 = 0x5753_4331;
/// magic, first offset, count, first ts, last ts, data length, crc.
pub const CHUNK_HEAD: usize = 4 + 8 + 4 + 8 + 8 + 4 + 4;
/// A pending chunk is closed once its data reaches this size, so a
/// reader's buffer stays small however fast publishers are.
const CHUNK_TARGET: usize = 256 * 1024;
/// One sparse-index entry per this many bytes of a segment.
pub const INDEX_EVERY: u64 = 64 * 1024;
/// RabbitMQ's default `x-stream-max-segment-size-bytes`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// Retention and segment size, from the declare's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    pub max_segment_bytes: u64,
    /// `x-max-length-bytes`: whole old segments go while the log is larger.
    pub max_bytes: Option<u64>,
    /// `x-max-age` in ms: a segment goes once its newest message is older.
    pub max_age_ms: Option<u64>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: None,
            max_age_ms: None,
        }
    }
}

/// Where a new reader starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained message.
    First,
    /// The first message of the last committed chunk (RabbitMQ's `last`).
    Last,
    /// Only messages published from now on.
    Next,
    /// This offset (clamped to the oldest retained one).
    Offset(u64),
    /// The first chunk with a message at or after this time (ms).
    Timestamp(i64),
}

/// A message as the log stores it, borrowed from a reader's chunk.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub persistent: bool,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

/// What the management API shows of a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Committed messages still retained.
    pub messages: u64,
    /// Committed bytes on disk (headers included).
    pub bytes: u64,
    pub segments: usize,
    /// The oldest retained offset.
    pub first_offset: u64,
    /// The next offset to be committed (last offset + 1).
    pub committed: u64,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    pos: u64,
    ts: i64,
}

#[derive(Debug)]
struct Segment {
    /// One past its last offset.
    end: u64,
    /// Committed bytes.
    bytes: u64,
    last_ts: i64,
    index: Vec<IndexEntry>,
}

/// Records appended since the last sync, as one chunk.
#[derive(Debug)]
struct Pending {
    first: u64,
    count: u32,
    first_ts: i64,
    last_ts: i64,
    data: Vec<u8>,
}

#[derive(Debug)]
struct State {
    /// The next offset to assign.
    next: u64,
    /// Offsets below this are durable and readable.
    committed: u64,
    /// The oldest retained offset.
    first: u64,
    /// The first offset of the last committed chunk.
    last_chunk: u64,
    segments: BTreeMap<u64, Segment>,
    pending: Vec<Pending>,
    /// A sync was asked for since the last one took the pending chunks.
    sync_wanted: bool,
}

/// The segment being appended to, used only by [`StreamLog::sync`].
#[derive(Debug, Default)]
struct Writer {
    file: Option<File>,
    size: u64,
    /// Segment files opened so far (tells a failed sync whether it rolled).
    opened: u64,
}

#[derive(Debug)]
pub struct StreamLog {
    dir: PathBuf,
    settings: StreamSettings,
    state: Mutex<State>,
    writer: Mutex<Writer>,
    /// Set by [`StreamLog::destroy`]: a sync after it writes nothing.
    destroyed: AtomicBool,
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

#[derive(Debug, Clone, Copy)]
struct ChunkHead {
    first: u64,
    count: u32,
    first_ts: i64,
    last_ts: i64,
    len: u32,
    crc: u32,
}

impl ChunkHead {
    fn encode(&self) -> [u8; CHUNK_HEAD] {
        let mut h = [0u8; CHUNK_HEAD];
        h[0..4].copy_from_slice(&CHUNK_MAGIC.to_be_bytes());
        h[4..12].copy_from_slice(&self.first.to_be_bytes());
        h[12..16].copy_from_slice(&self.count.to_be_bytes());
        h[16..24].copy_from_slice(&self.first_ts.to_be_bytes());
        h[24..32].copy_from_slice(&self.last_ts.to_be_bytes());
        h[32..36].copy_from_slice(&self.len.to_be_bytes());
        h[36..40].copy_from_slice(&self.crc.to_be_bytes());
        h
    }

    fn decode(h: &[u8; CHUNK_HEAD]) -> Option<ChunkHead> {
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().unwrap_or_default());
        if u32_at(0) != CHUNK_MAGIC {
            return None;
        }
        Some(ChunkHead {
            first: u64_at(4),
            count: u32_at(12),
            first_ts: u64_at(16) as i64,
            last_ts: u64_at(24) as i64,
            len: u32_at(32),
            crc: u32_at(36),
        })
    }
}

/// Appends one record (length-prefixed) to a chunk's data.
fn encode_record(out: &mut Vec<u8>, r: &Record<'_>) {
    let ex = &r.exchange.as_bytes()[..r.exchange.len().min(255)];
    let rk = &r.routing_key.as_bytes()[..r.routing_key.len().min(255)];
    let len = 1 + 1 + ex.len() + 1 + rk.len() + 4 + r.properties.len() + r.body.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(r.persistent as u8);
    out.push(ex.len() as u8);
    out.extend_from_slice(ex);
    out.push(rk.len() as u8);
    out.extend_from_slice(rk);
    out.extend_from_slice(&(r.properties.len() as u32).to_be_bytes());
    out.extend_from_slice(r.properties);
    out.extend_from_slice(r.body);
}

/// The record at the start of `b` and its encoded length.
fn decode_record(b: &[u8]) -> Option<(Record<'_>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let rec = b.get(4..4 + len)?;
    let mut at = 1;
    let short = |at: &mut usize| -> Option<&str> {
        let n = *rec.get(*at)? as usize;
        let s = rec.get(*at + 1..*at + 1 + n)?;
        *at += 1 + n;
        std::str::from_utf8(s).ok()
    };
    let exchange = short(&mut at)?;
    let routing_key = short(&mut at)?;
    let plen = u32::from_be_bytes(rec.get(at..at + 4)?.try_into().ok()?) as usize;
    at += 4;
    let properties = rec.get(at..at + plen)?;
    let body = rec.get(at + plen..)?;
    Some((
        Record {
            persistent: *rec.first()? != 0,
            exchange,
            routing_key,
            properties,
            body,
        },
        4 + len,
    ))
}

/// Reads a segment's chunk headers (checking every chunk's data when
/// `verify`), returning the segment and the length of its valid prefix.
fn scan_segment(path: &Path, first: u64, verify: bool) -> io::Result<(Segment, u64)> {
    let mut f = io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut seg = Segment {
        end: first,
        bytes: 0,
        last_ts: 0,
        index: Vec::new(),
    };
    let mut data = Vec::new();
    loop {
        let mut h = [0u8; CHUNK_HEAD];
        match f.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let Some(head) = ChunkHead::decode(&h).filter(|c| c.first == seg.end) else {
            break;
        };
        data.resize(head.len as usize, 0);
        match f.read_exact(&mut data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        if verify && crate::segments::checksum(&data) != head.crc {
            break;
        }
        add_to_index(&mut seg, &head);
    }
    let valid = seg.bytes;
    Ok((seg, valid))
}

/// Accounts for a chunk written at the segment's end.
fn add_to_index(seg: &mut Segment, head: &ChunkHead) {
    let pos = seg.bytes;
    if seg.index.last().is_none_or(|e| pos - e.pos >= INDEX_EVERY) {
        seg.index.push(IndexEntry {
            offset: head.first,
            pos,
            ts: head.first_ts,
        });
    }
    seg.end = head.first + head.count as u64;
    seg.bytes += (CHUNK_HEAD + head.len as usize) as u64;
    seg.last_ts = head.last_ts;
}

impl StreamLog {
    /// A new, empty log in `dir`, without touching the disk (the first
    /// sync creates the directory): a declare may call it on any thread.
    pub fn create(dir: &Path, settings: StreamSettings) -> StreamLog {
        StreamLog {
            dir: dir.to_owned(),
            settings,
            state: Mutex::new(State {
                next: 0,
                committed: 0,
                first: 0,
                last_chunk: 0,
                segments: BTreeMap::new(),
                pending: Vec::new(),
                sync_wanted: false,
            }),
            writer: Mutex::new(Writer::default()),
            destroyed: AtomicBool::new(false),
        }
    }

    /// Opens (or creates) the log in `dir`, recovering what was synced.
    pub fn open(dir: &Path, settings: StreamSettings) -> io::Result<StreamLog> {
        std::fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut writer = Writer::default();
        for (i, &first) in firsts.iter().enumerate() {
            let path = seg_path(dir, first);
            let last = i + 1 == firsts.len();
            let (seg, valid) = scan_segment(&path, first, last)?;
            if last {
                let f = OpenOptions::new().read(true).write(true).open(&path)?;
                if f.metadata()?.len() > valid {
                    tracing::warn!(path = %path.display(), valid, "cutting a torn tail off a stream segment");
                    f.set_len(valid)?;
                    f.sync_all()?;
                }
                if valid == 0 {
                    drop(f);
                    std::fs::remove_file(&path)?;
                    continue;
                }
                writer = Writer {
                    file: Some(OpenOptions::new().append(true).open(&path)?),
                    size: valid,
                    opened: 0,
                };
            }
            segments.insert(first, seg);
        }
        let next = segments
            .values()
            .last()
            .map_or(firsts.last().copied().unwrap_or(0), |s: &Segment| s.end);
        let first = segments.keys().next().copied().unwrap_or(next);
        let last_chunk = last_chunk_of(dir, &segments).unwrap_or(first);
        Ok(StreamLog {
            dir: dir.to_owned(),
            settings,
            state: Mutex::new(State {
                next,
                committed: next,
                first,
                last_chunk,
                segments,
                pending: Vec::new(),
                sync_wanted: false,
            }),
            writer: Mutex::new(writer),
            destroyed: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> StreamSettings {
        self.settings
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a message at time `now_ms`: its offset, and whether the
    /// caller must ask for a sync (the first append since the last sync
    /// took the pending chunks; later ones ride on that request).
    pub fn append(&self, r: &Record<'_>, now_ms: i64) -> (u64, bool) {
        let mut s = self.state();
        let offset = s.next;
        s.next += 1;
        let open = s
            .pending
            .last()
            .is_some_and(|p| p.data.len() < CHUNK_TARGET);
        if !open {
            s.pending.push(Pending {
                first: offset,
                count: 0,
                first_ts: now_ms,
                last_ts: now_ms,
                data: Vec::with_capacity(4096),
            });
        }
        let p = s.pending.last_mut().expect("pushed above");
        p.count += 1;
        p.last_ts = p.last_ts.max(now_ms);
        encode_record(&mut p.data, r);
        let ask = !std::mem::replace(&mut s.sync_wanted, true);
        (offset, ask)
    }

    /// Writes the pending chunks out and fsyncs them (blocking: the
    /// group-commit thread calls it), makes them readable, then applies
    /// retention at `now_ms`. Returns the new committed offset. On a
    /// failure the chunks are dropped from memory (their publishes are
    /// nacked) and the offsets they held stay unreadable.
    pub fn sync(&self, now_ms: i64) -> io::Result<u64> {
        let chunks = {
            let mut s = self.state();
            s.sync_wanted = false;
            std::mem::take(&mut s.pending)
        };
        if chunks.is_empty() {
            return Ok(self.state().committed);
        }
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if self.destroyed.load(Ordering::Acquire) {
            return Ok(self.state().committed);
        }
        let before = (w.opened, w.size);
        let written = match self.write_out(&mut w, &chunks) {
            Ok(written) => written,
            Err(e) => {
                // Nothing of this sync became readable. Cut what it may
                // have left in the open segment and keep the chunks
                // pending, so the next sync writes them again in order
                // (their publishes were nacked; a republish is a
                // duplicate at worst, never a gap in the offsets).
                // (A failure after a segment roll is not undone: the
                // chunks before the roll may be written twice.)
                let same_file = w.opened == before.0;
                if let (true, Some(f)) = (same_file, &w.file) {
                    if f.set_len(before.1).is_ok() {
                        w.size = before.1;
                    } else {
                        w.file = None;
                    }
                }
                let mut s = self.state();
                let newer = std::mem::replace(&mut s.pending, chunks);
                s.pending.extend(newer);
                return Err(e);
            }
        };
        drop(w);
        let doomed = {
            let mut s = self.state();
            for (head, starts) in &written {
                if *starts {
                    s.segments.insert(
                        head.first,
                        Segment {
                            end: head.first,
                            bytes: 0,
                            last_ts: head.first_ts,
                            index: Vec::new(),
                        },
                    );
                }
                let seg = s
                    .segments
                    .values_mut()
                    .last()
                    .expect("a segment exists for every written chunk");
                add_to_index(seg, head);
                s.committed = head.first + head.count as u64;
                s.last_chunk = head.first;
            }
            self.retention(&mut s, now_ms)
        };
        for first in doomed {
            if let Err(e) = std::fs::remove_file(seg_path(&self.dir, first)) {
                tracing::warn!(dir = %self.dir.display(), first, error = %e, "cannot delete a stream segment");
            }
        }
        Ok(self.state().committed)
    }

    /// Writes chunks at the end of the open segment (a new one when it
    /// would grow past the segment size) and fsyncs: each chunk's header
    /// and whether it started a segment. `w.size` moves only past what
    /// was fully written.
    fn write_out(&self, w: &mut Writer, chunks: &[Pending]) -> io::Result<Vec<(ChunkHead, bool)>> {
        let mut written = Vec::with_capacity(chunks.len());
        let mut new_file = false;
        for c in chunks {
            let head = ChunkHead {
                first: c.first,
                count: c.count,
                first_ts: c.first_ts,
                last_ts: c.last_ts,
                len: c.data.len() as u32,
                crc: crate::segments::checksum(&c.data),
            };
            let len = (CHUNK_HEAD + c.data.len()) as u64;
            let starts =
                w.file.is_none() || (w.size > 0 && w.size + len > self.settings.max_segment_bytes);
            if starts {
                if let Some(f) = w.file.take() {
                    f.sync_data()?;
                } else if w.opened == 0 {
                    std::fs::create_dir_all(&self.dir)?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(seg_path(&self.dir, c.first))?;
                w.file = Some(f);
                w.size = 0;
                w.opened += 1;
                new_file = true;
            }
            let f = w.file.as_mut().expect("opened above");
            f.write_all(&head.encode())?;
            f.write_all(&c.data)?;
            written.push((head, starts));
            w.size += len;
        }
        if let Some(f) = &w.file {
            f.sync_data()?;
        }
        if new_file {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(written)
    }

    /// Whole old segments (never the one being written) that retention
    /// removes: while the log is over `max_bytes`, and while the oldest
    /// one's newest message is older than `max_age`.
    fn retention(&self, s: &mut State, now_ms: i64) -> Vec<u64> {
        let mut doomed = Vec::new();
        let mut total: u64 = s.segments.values().map(|g| g.bytes).sum();
        while s.segments.len() > 1 {
            let (&first, oldest) = s.segments.iter().next().expect("len > 1");
            let by_size = self.settings.max_bytes.is_some_and(|m| total > m);
            let by_age = self
                .settings
                .max_age_ms
                .is_some_and(|a| oldest.last_ts < now_ms.saturating_sub(a as i64));
            if !(by_size || by_age) {
                break;
            }
            total -= oldest.bytes;
            s.segments.remove(&first);
            doomed.push(first);
        }
        if let Some(&f) = s.segments.keys().next() {
            s.first = f;
        }
        doomed
    }

    /// Applies retention without a write (a timer; start-up).
    pub fn apply_retention(&self, now_ms: i64) {
        let doomed = {
            let mut s = self.state();
            self.retention(&mut s, now_ms)
        };
        for first in doomed {
            let _ = std::fs::remove_file(seg_path(&self.dir, first));
        }
    }

    /// The first offset not yet readable.
    pub fn committed(&self) -> u64 {
        self.state().committed
    }

    pub fn stats(&self) -> StreamStats {
        let s = self.state();
        StreamStats {
            messages: s.committed - s.first,
            bytes: s.segments.values().map(|g| g.bytes).sum(),
            segments: s.segments.len(),
            first_offset: s.first,
            committed: s.committed,
        }
    }

    /// The offset a reader starting at `at` reads first, and the oldest
    /// chunk time it may take (for [`StartAt::Timestamp`]).
    pub fn resolve(&self, at: StartAt) -> (u64, Option<i64>) {
        let s = self.state();
        match at {
            StartAt::First => (s.first, None),
            StartAt::Last => (s.last_chunk.max(s.first), None),
            StartAt::Next => (s.committed, None),
            StartAt::Offset(o) => (o.max(s.first), None),
            StartAt::Timestamp(ts) => {
                // The first segment holding a message at or after `ts`;
                // within it, the last index entry that starts before it
                // (the reader skips whole chunks older than `ts`).
                match s.segments.iter().find(|(_, g)| g.last_ts >= ts) {
                    None => (s.committed, None),
                    Some((&first, g)) => {
                        let i = g.index.partition_point(|e| e.ts < ts);
                        let o = if i == 0 { first } else { g.index[i - 1].offset };
                        (o.max(s.first), Some(ts))
                    }
                }
            }
        }
    }

    /// Where `offset` can be read from: its segment's first offset, a
    /// chunk boundary at or before it, the segment's committed bytes and
    /// the offset itself (moved up to the oldest retained one).
    fn locate(&self, offset: u64) -> Option<(u64, u64, u64, u64)> {
        let s = self.state();
        let offset = offset.max(s.first);
        if offset >= s.committed {
            return None;
        }
        let (&first, seg) = s.segments.range(..=offset).next_back()?;
        let i = seg.index.partition_point(|e| e.offset <= offset);
        let pos = if i == 0 { 0 } else { seg.index[i - 1].pos };
        Some((first, pos, seg.bytes, offset))
    }

    /// Deletes the log's files (the stream was deleted).
    pub fn destroy(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.destroyed.store(true, Ordering::Release);
        *w = Writer::default();
        drop(w);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot delete a stream's files");
            }
        }
    }
}

/// The first offset of a log's last chunk (for `last`), read from the
/// newest segment's headers at start-up.
fn last_chunk_of(dir: &Path, segments: &BTreeMap<u64, Segment>) -> Option<u64> {
    let (&first, seg) = segments.iter().next_back()?;
    let f = File::open(seg_path(dir, first)).ok()?;
    let mut pos = seg.index.last().map_or(0, |e| e.pos);
    let mut last = None;
    let mut h = [0u8; CHUNK_HEAD];
    while pos < seg.bytes {
        f.read_exact_at(&mut h, pos).ok()?;
        let head = ChunkHead::decode(&h)?;
        last = Some(head.first);
        pos += (CHUNK_HEAD + head.len as usize) as u64;
    }
    last
}

/// A reader's position in a log: the next offset it delivers, the
/// segment file it has open and the chunk it is reading.
#[derive(Debug)]
pub struct Cursor {
    /// The next offset to hand out.
    pub next: u64,
    /// Chunks whose newest message is older than this are skipped.
    min_ts: Option<i64>,
    /// (segment first offset, its file, committed bytes known)
    file: Option<(u64, File, u64)>,
    /// Where the next chunk header is in `file`.
    pos: u64,
    chunk: Vec<u8>,
    chunk_first: u64,
    chunk_count: u32,
    /// Records of `chunk` consumed, and the byte position of the next.
    chunk_idx: u32,
    chunk_at: usize,
}

impl Cursor {
    /// A reader starting at `at`.
    pub fn new(log: &StreamLog, at: StartAt) -> Cursor {
        let (next, min_ts) = log.resolve(at);
        Cursor {
            next,
            min_ts,
            file: None,
            pos: 0,
            chunk: Vec::new(),
            chunk_first: 0,
            chunk_count: 0,
            chunk_idx: 0,
            chunk_at: 0,
        }
    }

    /// Calls `f` with up to `max` committed records from `next` on (and
    /// up to about `max_bytes` of them); returns how many. Blocking I/O:
    /// call it off the async workers.
    pub fn read(
        &mut self,
        log: &StreamLog,
        max: usize,
        max_bytes: usize,
        mut f: impl FnMut(u64, Record<'_>),
    ) -> io::Result<usize> {
        let (mut n, mut bytes) = (0, 0);
        while n < max && bytes < max_bytes {
            if self.chunk_idx < self.chunk_count {
                let Some((rec, len)) = decode_record(&self.chunk[self.chunk_at..]) else {
                    return Err(corrupt("stream record"));
                };
                let off = self.chunk_first + self.chunk_idx as u64;
                self.chunk_idx += 1;
                self.chunk_at += len;
                if off >= self.next {
                    f(off, rec);
                    self.next = off + 1;
                    n += 1;
                    bytes += len;
                }
                continue;
            }
            if !self.next_chunk(log)? {
                break;
            }
        }
        Ok(n)
    }

    /// Loads the chunk holding `next` (or the next one); `false` when
    /// nothing more is committed.
    fn next_chunk(&mut self, log: &StreamLog) -> io::Result<bool> {
        loop {
            let at_end = self
                .file
                .as_ref()
                .is_none_or(|(_, _, bytes)| self.pos >= *bytes);
            if at_end && !self.relocate(log)? {
                return Ok(false);
            }
            let Some((_, file, _)) = &self.file else {
                return Ok(false);
            };
            let mut h = [0u8; CHUNK_HEAD];
            file.read_exact_at(&mut h, self.pos)?;
            let head = ChunkHead::decode(&h).ok_or_else(|| corrupt("stream chunk header"))?;
            let end = head.first + head.count as u64;
            self.pos += (CHUNK_HEAD + head.len as usize) as u64;
            if end <= self.next || self.min_ts.is_some_and(|t| head.last_ts < t) {
                continue;
            }
            self.min_ts = None;
            self.chunk.resize(head.len as usize, 0);
            file.read_exact_at(&mut self.chunk, self.pos - head.len as u64)?;
            if crate::segments::checksum(&self.chunk) != head.crc {
                return Err(corrupt("stream chunk checksum"));
            }
            self.chunk_first = head.first;
            self.chunk_count = head.count;
            self.chunk_idx = 0;
            self.chunk_at = 0;
            return Ok(true);
        }
    }

    /// Finds where `next` is now: more of the same segment was committed,
    /// or the reader moves to the next segment (or, past retention, to
    /// the oldest one). `false` when nothing is readable at `next` yet.
    fn relocate(&mut self, log: &StreamLog) -> io::Result<bool> {
        let Some((first, pos, bytes, next)) = log.locate(self.next) else {
            return Ok(false);
        };
        self.next = next;
        match &mut self.file {
            Some((f, _, b)) if *f == first => {
                *b = bytes;
                if self.pos < pos {
                    self.pos = pos;
                }
            }
            _ => {
                let file = match File::open(seg_path(&log.dir, first)) {
                    Ok(f) => f,
                    // Retention removed it meanwhile: look again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return self.relocate_after_retention(log);
                    }
                    Err(e) => return Err(e),
                };
                self.file = Some((first, file, bytes));
                self.pos = pos;
            }
        }
        Ok(self.pos < bytes)
    }

    fn relocate_after_retention(&mut self, log: &StreamLog) -> io::Result<bool> {
        let first = log.state().first;
        if first > self.next {
            self.next = first;
            self.file = None;
            return self.relocate(log);
        }
        Err(corrupt("stream segment missing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "warren-stream-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }

    fn rec(body: &[u8]) -> Record<'_> {
        Record {
            persistent: true,
            exchange: "ex",
            routing_key: "rk",
            properties: &[0, 0],
            body,
        }
    }

    fn read_all(log: &StreamLog, c: &mut Cursor) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        c.read(log, usize::MAX, usize::MAX, |o, r| {
            assert_eq!((r.exchange, r.routing_key), ("ex", "rk"));
            out.push((o, r.body.to_vec()))
        })
        .unwrap();
        out
    }

    #[test]
    fn appends_are_read_after_sync_only_and_survive_reopen() {
        let d = temp("basic");
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        assert_eq!(log.append(&rec(b"a"), 10), (0, true));
        assert_eq!(log.append(&rec(b"b"), 11), (1, false));
        let mut c = Cursor::new(&log, StartAt::First);
        assert!(read_all(&log, &mut c).is_empty(), "nothing before the sync");
        assert_eq!(log.sync(20).unwrap(), 2);
        assert_eq!(log.append(&rec(b"c"), 12), (2, true));
        log.sync(20).unwrap();
        let got = read_all(&log, &mut c);
        assert_eq!(
            got,
            vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
        );
        drop(log);
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        assert_eq!(log.stats().committed, 3);
        assert_eq!(log.resolve(StartAt::Last).0, 2, "last = the last chunk");
        assert_eq!(log.resolve(StartAt::Next).0, 3);
        let mut c = Cursor::new(&log, StartAt::Offset(1));
        assert_eq!(read_all(&log, &mut c).len(), 2);
        assert_eq!(log.append(&rec(b"d"), 13).0, 3);
    }

    #[test]
    fn segments_roll_and_retention_drops_whole_old_ones() {
        let d = temp("retention");
        let settings = StreamSettings {
            max_segment_bytes: 1000,
            max_bytes: Some(3000),
            max_age_ms: None,
        };
        let log = StreamLog::open(&d.0, settings).unwrap();
        for i in 0..100u64 {
            log.append(&rec(&[i as u8; 100]), i as i64);
            log.sync(i as i64).unwrap();
        }
        let st = log.stats();
        assert!(st.bytes <= 3000 + 1000, "{st:?}");
        assert!(st.segments >= 3, "{st:?}");
        assert!(st.first_offset > 0 && st.committed == 100, "{st:?}");
        // A reader asking for a trimmed offset starts at the oldest kept.
        let mut c = Cursor::new(&log, StartAt::Offset(0));
        let got = read_all(&log, &mut c);
        assert_eq!(got[0].0, st.first_offset);
        assert_eq!(got.len() as u64, 100 - st.first_offset);
        // By age: everything older than 10 ms before t=1000 goes, but the
        // segment being written stays.
        drop(log);
        let settings = StreamSettings {
            max_age_ms: Some(10),
            ..settings
        };
        let log = StreamLog::open(&d.0, settings).unwrap();
        log.apply_retention(1000);
        assert_eq!(log.stats().segments, 1);
    }

    #[test]
    fn a_torn_tail_is_cut_at_recovery() {
        let d = temp("torn");
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        log.append(&rec(b"kept"), 1);
        log.sync(1).unwrap();
        drop(log);
        let path = seg_path(&d.0, 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0x57, 0x53, 0x43, 0x31, 0, 0, 0]).unwrap();
        drop(f);
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        assert_eq!(log.stats().committed, 1);
        log.append(&rec(b"next"), 2);
        log.sync(2).unwrap();
        let mut c = Cursor::new(&log, StartAt::First);
        assert_eq!(
            read_all(&log, &mut c),
            vec![(0, b"kept".to_vec()), (1, b"next".to_vec())]
        );
    }

    #[test]
    fn timestamps_pick_the_first_chunk_at_or_after() {
        let d = temp("ts");
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        for t in [100, 200, 300] {
            log.append(&rec(b"x"), t);
            log.sync(t).unwrap();
        }
        let mut c = Cursor::new(&log, StartAt::Timestamp(150));
        let got: Vec<u64> = read_all(&log, &mut c).into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, vec![1, 2]);
        let c = Cursor::new(&log, StartAt::Timestamp(1000));
        assert_eq!(c.next, 3);
    }
}
