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
//! of the data), then its data: a filter summary (`u32` length, then the
//! distinct `x-stream-filter-value`s of the chunk and whether it holds
//! messages without one; chunks written before summaries existed, magic
//! "WSC1", have none), then its records (`u32` length, then the message:
//! flags (persistent, has a filter value), the filter value, exchange,
//! routing key, properties, body). Recovery walks the chunk headers and
//! cuts a torn tail off the last segment.
//!
//! A filtering reader ([`Filter`]) reads a chunk's summary alone and skips
//! the chunk when none of its values is wanted, and decodes only the
//! records' filter values (not their messages) inside the chunks it reads.
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

/// A chunk header's first four bytes ("WSC1"): a chunk without a filter
/// summary (written by older versions; still read).
const CHUNK_MAGIC: u32 = 0x5753_4331;
/// "WSC2": the chunk's data opens with its filter summary.
const CHUNK_MAGIC_SUMMARY: u32 = 0x5753_4332;
/// A summary lists at most this many distinct filter values (of at most
/// [`SUMMARY_VALUE_MAX`] bytes each); a chunk with more is marked
/// "unknown" and a filtering reader decodes its records' values instead.
const SUMMARY_VALUES_MAX: usize = 64;
const SUMMARY_VALUE_MAX: usize = 255;
/// Summary flags: the chunk holds messages without a filter value; the
/// summary is incomplete (too many values).
const SUMMARY_UNFILTERED: u8 = 1;
const SUMMARY_UNKNOWN: u8 = 2;
/// Record flags.
const REC_PERSISTENT: u8 = 1;
const REC_FILTERED: u8 = 2;
/// A filtering read stops after skipping about this many bytes (whole
/// chunks or records not wanted), so one read of a long run of unwanted
/// messages neither holds a blocking thread long nor misses a cancel.
const SCAN_BUDGET: usize = 16 << 20;
/// magic, first offset, count, first ts, last ts, data length, crc.
pub const CHUNK_HEAD: usize = 4 + 8 + 4 + 8 + 8 + 4 + 4;
/// A pending chunk is closed once its data reaches this size, so a
/// reader's buffer stays small however fast publishers are.
const CHUNK_TARGET: usize = 256 * 1024;
/// One sparse-index entry per this many bytes of a segment.
pub const INDEX_EVERY: u64 = 64 * 1024;
/// RabbitMQ's default `x-stream-max-segment-size-bytes`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// Retention and segment size, from the declare's arguments and the
/// policies that apply (they may change while the log is open).
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
    /// The message's `x-stream-filter-value` (values longer than 65,535
    /// bytes are stored as none).
    pub filter: Option<&'a [u8]>,
}

/// What a filtering consumer wants (`x-stream-filter`,
/// `x-stream-match-unfiltered`): exact matches only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub values: Vec<Vec<u8>>,
    /// Messages without a filter value are wanted too.
    pub match_unfiltered: bool,
}

impl Filter {
    /// Whether a message with filter value `v` is wanted.
    pub fn matches(&self, v: Option<&[u8]>) -> bool {
        match v {
            None => self.match_unfiltered,
            Some(v) => self.values.iter().any(|w| w == v),
        }
    }

    /// Whether a chunk with this summary may hold a wanted message
    /// (`true` when the summary cannot tell).
    fn may_match(&self, summary: &[u8]) -> bool {
        let Some(&flags) = summary.first() else {
            return true;
        };
        if flags & SUMMARY_UNKNOWN != 0 {
            return true;
        }
        if flags & SUMMARY_UNFILTERED != 0 && self.match_unfiltered {
            return true;
        }
        let mut at = 3;
        while let Some(len) = summary.get(at..at + 2) {
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            let Some(v) = summary.get(at + 2..at + 2 + len) else {
                return true;
            };
            if self.values.iter().any(|w| w == v) {
                return true;
            }
            at += 2 + len;
        }
        false
    }
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
    /// The distinct filter values of its records (for the summary).
    values: Vec<Vec<u8>>,
    /// Some record has no filter value.
    unfiltered: bool,
    /// Too many (or too long) values to list: the summary says "unknown".
    unknown: bool,
}

impl Pending {
    fn note_filter(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.unfiltered = true,
            Some(_) if self.unknown => {}
            Some(v) if v.len() > SUMMARY_VALUE_MAX => self.unknown = true,
            Some(v) => {
                if !self.values.iter().any(|w| w == v) {
                    if self.values.len() == SUMMARY_VALUES_MAX {
                        self.unknown = true;
                        self.values.clear();
                    } else {
                        self.values.push(v.to_vec());
                    }
                }
            }
        }
    }

    /// The summary as written before the records, with its `u32` length.
    fn summary(&self) -> Vec<u8> {
        let mut flags = 0;
        if self.unfiltered {
            flags |= SUMMARY_UNFILTERED;
        }
        if self.unknown {
            flags |= SUMMARY_UNKNOWN;
        }
        let n = if self.unknown { 0 } else { self.values.len() };
        let mut out =
            Vec::with_capacity(7 + self.values.iter().map(|v| 2 + v.len()).sum::<usize>());
        out.extend_from_slice(&[0; 4]);
        out.push(flags);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        for v in self.values.iter().take(n) {
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v);
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }
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
    /// Record bytes appended and not yet synced (publisher back-pressure).
    unsynced: u64,
    settings: StreamSettings,
}

/// The segment being appended to, used only by [`StreamLog::sync`].
#[derive(Debug, Default)]
struct Writer {
    file: Option<File>,
    size: u64,
    /// Segment files opened so far (the first one creates the directory).
    opened: u64,
    /// Tests: the write of the chunk with this first offset fails.
    #[cfg(test)]
    fail_at: Option<u64>,
}

/// What a failed [`StreamLog::sync`] restores: the segment it started in
/// and its size, and the segments it created (removed again).
#[derive(Debug)]
struct Rollback {
    file: Option<File>,
    size: u64,
    created: Vec<u64>,
}

#[derive(Debug)]
pub struct StreamLog {
    dir: PathBuf,
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
    /// Its data opens with a filter summary.
    summary: bool,
}

impl ChunkHead {
    fn encode(&self) -> [u8; CHUNK_HEAD] {
        let mut h = [0u8; CHUNK_HEAD];
        let magic = if self.summary {
            CHUNK_MAGIC_SUMMARY
        } else {
            CHUNK_MAGIC
        };
        h[0..4].copy_from_slice(&magic.to_be_bytes());
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
        let summary = match u32_at(0) {
            CHUNK_MAGIC => false,
            CHUNK_MAGIC_SUMMARY => true,
            _ => return None,
        };
        Some(ChunkHead {
            summary,
            first: u64_at(4),
            count: u32_at(12),
            first_ts: u64_at(16) as i64,
            last_ts: u64_at(24) as i64,
            len: u32_at(32),
            crc: u32_at(36),
        })
    }
}

/// The filter value a record stores (none past `u16` length).
fn stored_filter<'a>(r: &Record<'a>) -> Option<&'a [u8]> {
    r.filter.filter(|v| v.len() <= u16::MAX as usize)
}

/// Appends one record (length-prefixed) to a chunk's data; its length.
fn encode_record(out: &mut Vec<u8>, r: &Record<'_>) -> usize {
    let ex = &r.exchange.as_bytes()[..r.exchange.len().min(255)];
    let rk = &r.routing_key.as_bytes()[..r.routing_key.len().min(255)];
    let fv = stored_filter(r);
    let fv_len = fv.map_or(0, |v| 2 + v.len());
    let len = 1 + fv_len + 1 + ex.len() + 1 + rk.len() + 4 + r.properties.len() + r.body.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    let mut flags = if r.persistent { REC_PERSISTENT } else { 0 };
    if fv.is_some() {
        flags |= REC_FILTERED;
    }
    out.push(flags);
    if let Some(v) = fv {
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
    out.push(ex.len() as u8);
    out.extend_from_slice(ex);
    out.push(rk.len() as u8);
    out.extend_from_slice(rk);
    out.extend_from_slice(&(r.properties.len() as u32).to_be_bytes());
    out.extend_from_slice(r.properties);
    out.extend_from_slice(r.body);
    4 + len
}

/// The filter value of the record at the start of `b` (without decoding
/// the rest) and the record's encoded length.
fn peek_filter(b: &[u8]) -> Option<(Option<&[u8]>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let rec = b.get(4..4 + len)?;
    Some((record_filter(rec)?.0, 4 + len))
}

/// A record's filter value and where the rest of it starts.
fn record_filter(rec: &[u8]) -> Option<(Option<&[u8]>, usize)> {
    if rec.first()? & REC_FILTERED == 0 {
        return Some((None, 1));
    }
    let n = u16::from_be_bytes(rec.get(1..3)?.try_into().ok()?) as usize;
    Some((Some(rec.get(3..3 + n)?), 3 + n))
}

/// The record at the start of `b` and its encoded length.
fn decode_record(b: &[u8]) -> Option<(Record<'_>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let rec = b.get(4..4 + len)?;
    let (filter, mut at) = record_filter(rec)?;
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
            persistent: *rec.first()? & REC_PERSISTENT != 0,
            exchange,
            routing_key,
            properties,
            body,
            filter,
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
            state: Mutex::new(State {
                next: 0,
                committed: 0,
                first: 0,
                last_chunk: 0,
                segments: BTreeMap::new(),
                pending: Vec::new(),
                sync_wanted: false,
                unsynced: 0,
                settings,
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
                    ..Writer::default()
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
            state: Mutex::new(State {
                next,
                committed: next,
                first,
                last_chunk,
                segments,
                pending: Vec::new(),
                sync_wanted: false,
                unsynced: 0,
                settings,
            }),
            writer: Mutex::new(writer),
            destroyed: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> StreamSettings {
        self.state().settings
    }

    /// New retention and segment size (a policy changed): the next sync
    /// and [`StreamLog::apply_retention`] use them.
    pub fn set_settings(&self, settings: StreamSettings) {
        self.state().settings = settings;
    }

    /// Record bytes appended and not yet synced.
    pub fn unsynced_bytes(&self) -> u64 {
        self.state().unsynced
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a message at time `now_ms`: its offset, and whether the
    /// caller must ask for a sync (the first append since the last sync
    /// took the pending chunks; later ones ride on that request).
    pub fn append(&self, r: &Record<'_>, now_ms: i64) -> (u64, bool) {
        let (offset, ask, _) = self.append_counted(r, now_ms);
        (offset, ask)
    }

    /// [`StreamLog::append`], also giving the bytes unsynced after it, so a
    /// publisher checks its back-pressure bound without locking again.
    pub fn append_counted(&self, r: &Record<'_>, now_ms: i64) -> (u64, bool, u64) {
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
                values: Vec::new(),
                unfiltered: false,
                unknown: false,
            });
        }
        let p = s.pending.last_mut().expect("pushed above");
        p.count += 1;
        p.last_ts = p.last_ts.max(now_ms);
        p.note_filter(stored_filter(r));
        let len = encode_record(&mut p.data, r);
        s.unsynced += len as u64;
        let ask = !std::mem::replace(&mut s.sync_wanted, true);
        (offset, ask, s.unsynced)
    }

    /// Writes the pending chunks out and fsyncs them (blocking: the
    /// group-commit thread calls it), makes them readable, then applies
    /// retention at `now_ms`. Returns the new committed offset. On a
    /// failure the chunks are dropped from memory (their publishes are
    /// nacked) and the offsets they held stay unreadable.
    pub fn sync(&self, now_ms: i64) -> io::Result<u64> {
        let (chunks, max_segment_bytes) = {
            let mut s = self.state();
            s.sync_wanted = false;
            (std::mem::take(&mut s.pending), s.settings.max_segment_bytes)
        };
        if chunks.is_empty() {
            return Ok(self.state().committed);
        }
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if self.destroyed.load(Ordering::Acquire) {
            return Ok(self.state().committed);
        }
        let mut undo = Rollback {
            file: None,
            size: w.size,
            created: Vec::new(),
        };
        let written = match self.write_out(&mut w, &chunks, max_segment_bytes, &mut undo) {
            Ok(written) => written,
            Err(e) => {
                // Nothing of this sync became readable: undo all of it
                // and keep the chunks pending, so the next sync writes
                // them again, once, in order (their publishes were
                // nacked; a republish is a duplicate at worst, never a
                // gap in the offsets).
                self.roll_back(&mut w, undo);
                let mut s = self.state();
                let newer = std::mem::replace(&mut s.pending, chunks);
                s.pending.extend(newer);
                return Err(e);
            }
        };
        drop(w);
        let synced: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
        let doomed = {
            let mut s = self.state();
            s.unsynced = s.unsynced.saturating_sub(synced);
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

    /// Undoes a failed sync's writes: the segments it created go, and the
    /// one it started in is cut back to its size then and written on
    /// again (if it cannot be cut, the next sync starts a new segment).
    fn roll_back(&self, w: &mut Writer, undo: Rollback) {
        if !undo.created.is_empty() {
            // It rolled: the file open now is one it created.
            w.file = undo.file;
        }
        for first in &undo.created {
            if let Err(e) = std::fs::remove_file(seg_path(&self.dir, *first)) {
                tracing::warn!(dir = %self.dir.display(), first, error = %e, "cannot remove a stream segment a failed sync created");
            }
        }
        match &w.file {
            Some(f) if f.set_len(undo.size).is_ok() => w.size = undo.size,
            _ => {
                w.file = None;
                w.size = 0;
            }
        }
    }

    /// Writes chunks at the end of the open segment (a new one when it
    /// would grow past `max_segment_bytes`) and fsyncs: each chunk's
    /// header and whether it started a segment. `undo` learns what to
    /// restore if it fails.
    fn write_out(
        &self,
        w: &mut Writer,
        chunks: &[Pending],
        max_segment_bytes: u64,
        undo: &mut Rollback,
    ) -> io::Result<Vec<(ChunkHead, bool)>> {
        let mut written = Vec::with_capacity(chunks.len());
        for c in chunks {
            let summary = c.summary();
            let crc = crc32c::crc32c_append(crate::segments::checksum(&summary), &c.data);
            let head = ChunkHead {
                first: c.first,
                count: c.count,
                first_ts: c.first_ts,
                last_ts: c.last_ts,
                len: (summary.len() + c.data.len()) as u32,
                crc,
                summary: true,
            };
            let len = (CHUNK_HEAD + head.len as usize) as u64;
            let starts = w.file.is_none() || (w.size > 0 && w.size + len > max_segment_bytes);
            if starts {
                self.roll(w, c.first, undo)?;
            }
            #[cfg(test)]
            if w.fail_at == Some(c.first) {
                return Err(io::Error::other("injected write failure"));
            }
            let f = w.file.as_mut().expect("opened above");
            f.write_all(&head.encode())?;
            f.write_all(&summary)?;
            f.write_all(&c.data)?;
            written.push((head, starts));
            w.size += len;
        }
        if let Some(f) = &w.file {
            f.sync_data()?;
        }
        if !undo.created.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(written)
    }

    /// Closes the open segment (synced) and starts `<first>.seg`.
    fn roll(&self, w: &mut Writer, first: u64, undo: &mut Rollback) -> io::Result<()> {
        if let Some(f) = w.file.take() {
            if undo.created.is_empty() {
                // The segment this sync started in: kept to roll back to,
                // before its fsync, so a failed fsync still cuts it back.
                undo.file.insert(f).sync_data()?;
            } else {
                f.sync_data()?;
            }
        } else if w.opened == 0 {
            std::fs::create_dir_all(&self.dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(seg_path(&self.dir, first))?;
        undo.created.push(first);
        w.file = Some(f);
        w.size = 0;
        w.opened += 1;
        Ok(())
    }

    /// Whole old segments (never the one being written) that retention
    /// removes: while the log is over `max_bytes`, and while the oldest
    /// one's newest message is older than `max_age`.
    fn retention(&self, s: &mut State, now_ms: i64) -> Vec<u64> {
        let mut doomed = Vec::new();
        let mut total: u64 = s.segments.values().map(|g| g.bytes).sum();
        let settings = s.settings;
        while s.segments.len() > 1 {
            let (&first, oldest) = s.segments.iter().next().expect("len > 1");
            let by_size = settings.max_bytes.is_some_and(|m| total > m);
            let by_age = settings
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

/// The length of a chunk's summary with its length prefix.
fn summary_end(data: &[u8]) -> Option<usize> {
    let n = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    (4 + n <= data.len()).then_some(4 + n)
}

/// A chunk's filter summary, read alone (the chunk's data starts at
/// `at` and is `len` bytes long).
fn read_summary(file: &File, at: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut n = [0u8; 4];
    file.read_exact_at(&mut n, at)?;
    let n = u32::from_be_bytes(n);
    if n.saturating_add(4) > len {
        return Err(corrupt("stream chunk summary"));
    }
    let mut summary = vec![0; n as usize];
    file.read_exact_at(&mut summary, at + 4)?;
    Ok(summary)
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
    /// up to about `max_bytes` of them) that `filter` wants; returns how
    /// many. Records the filter does not want are passed over (`next`
    /// moves past them), whole chunks at a time where the chunk's summary
    /// allows; a filtering read may return 0 with `next` moved on (it
    /// stops after skipping [`SCAN_BUDGET`] bytes). Blocking I/O: call it
    /// off the async workers.
    pub fn read(
        &mut self,
        log: &StreamLog,
        max: usize,
        max_bytes: usize,
        filter: Option<&Filter>,
        mut f: impl FnMut(u64, Record<'_>),
    ) -> io::Result<usize> {
        let (mut n, mut bytes, mut skipped) = (0, 0, 0);
        while n < max && bytes < max_bytes && skipped < SCAN_BUDGET {
            if self.chunk_idx < self.chunk_count {
                let off = self.chunk_first + self.chunk_idx as u64;
                let at = &self.chunk[self.chunk_at..];
                if let Some(filter) = filter {
                    let Some((v, len)) = peek_filter(at) else {
                        return Err(corrupt("stream record"));
                    };
                    if !filter.matches(v) {
                        self.chunk_idx += 1;
                        self.chunk_at += len;
                        self.next = self.next.max(off + 1);
                        skipped += len;
                        continue;
                    }
                }
                let Some((rec, len)) = decode_record(at) else {
                    return Err(corrupt("stream record"));
                };
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
            if !self.next_chunk(log, filter, &mut skipped)? {
                break;
            }
        }
        Ok(n)
    }

    /// Loads the chunk holding `next` (or the next one `filter` may
    /// want, adding what it passes over to `skipped`); `false` when
    /// nothing more is committed or the scan budget is spent.
    fn next_chunk(
        &mut self,
        log: &StreamLog,
        filter: Option<&Filter>,
        skipped: &mut usize,
    ) -> io::Result<bool> {
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
            let data_at = self.pos + CHUNK_HEAD as u64;
            self.pos = data_at + head.len as u64;
            if end <= self.next || self.min_ts.is_some_and(|t| head.last_ts < t) {
                continue;
            }
            self.min_ts = None;
            if let (Some(filter), true) = (filter, head.summary) {
                if !filter.may_match(&read_summary(file, data_at, head.len)?) {
                    self.next = end;
                    *skipped += head.len as usize;
                    if *skipped >= SCAN_BUDGET {
                        return Ok(false);
                    }
                    continue;
                }
            }
            self.chunk.resize(head.len as usize, 0);
            file.read_exact_at(&mut self.chunk, data_at)?;
            if crate::segments::checksum(&self.chunk) != head.crc {
                return Err(corrupt("stream chunk checksum"));
            }
            self.chunk_first = head.first;
            self.chunk_count = head.count;
            self.chunk_idx = 0;
            self.chunk_at = if head.summary {
                summary_end(&self.chunk).ok_or_else(|| corrupt("stream chunk summary"))?
            } else {
                0
            };
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
            filter: None,
        }
    }

    fn read_all(log: &StreamLog, c: &mut Cursor) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        c.read(log, usize::MAX, usize::MAX, None, |o, r| {
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

    fn frec<'a>(body: &'a [u8], v: Option<&'a [u8]>) -> Record<'a> {
        Record {
            filter: v,
            ..rec(body)
        }
    }

    fn read_filtered(log: &StreamLog, c: &mut Cursor, f: &Filter) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let before = c.next;
            c.read(log, usize::MAX, usize::MAX, Some(f), |o, r| {
                out.push((o, r.body.to_vec()))
            })
            .unwrap();
            if c.next == before {
                return out;
            }
        }
    }

    #[test]
    fn filters_match_exactly_and_skip_chunks_by_their_summary() {
        let d = temp("filter");
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        // One chunk per sync: "a"s, then "b"s, then a mix with unfiltered.
        for i in 0..3u8 {
            log.append(&frec(&[i], Some(b"a")), 1);
        }
        log.sync(1).unwrap();
        for i in 3..6u8 {
            log.append(&frec(&[i], Some(b"b")), 1);
        }
        log.sync(1).unwrap();
        log.append(&frec(&[6], Some(b"c")), 1);
        log.append(&frec(&[7], None), 1);
        log.append(&frec(&[8], Some(b"b")), 1);
        log.sync(1).unwrap();
        let offsets = |f: &Filter| -> Vec<u64> {
            let mut c = Cursor::new(&log, StartAt::First);
            let got = read_filtered(&log, &mut c, f);
            assert_eq!(c.next, 9, "the cursor passed everything");
            got.into_iter().map(|(o, _)| o).collect()
        };
        let f = |vs: &[&[u8]], mu: bool| Filter {
            values: vs.iter().map(|v| v.to_vec()).collect(),
            match_unfiltered: mu,
        };
        assert_eq!(offsets(&f(&[b"b"], false)), vec![3, 4, 5, 8]);
        assert_eq!(offsets(&f(&[b"a", b"c"], false)), vec![0, 1, 2, 6]);
        assert_eq!(offsets(&f(&[b"b"], true)), vec![3, 4, 5, 7, 8]);
        assert_eq!(offsets(&f(&[], true)), vec![7]);
        assert_eq!(offsets(&f(&[b"zz"], false)), Vec::<u64>::new());
        // Summaries: the "a" chunk says it has only "a".
        let a = f(&[b"a"], false);
        let mut p = Pending {
            first: 0,
            count: 0,
            first_ts: 0,
            last_ts: 0,
            data: Vec::new(),
            values: Vec::new(),
            unfiltered: false,
            unknown: false,
        };
        p.note_filter(Some(b"b"));
        assert!(!a.may_match(&p.summary()[4..]));
        p.note_filter(None);
        assert!(!a.may_match(&p.summary()[4..]));
        assert!(f(&[], true).may_match(&p.summary()[4..]));
        for i in 0..=SUMMARY_VALUES_MAX {
            p.note_filter(Some(format!("v{i}").as_bytes()));
        }
        assert!(a.may_match(&p.summary()[4..]), "too many values: unknown");
        // Filter values survive a reopen with the records.
        drop(log);
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        let mut c = Cursor::new(&log, StartAt::First);
        let mut vals = Vec::new();
        c.read(&log, usize::MAX, usize::MAX, None, |_, r| {
            vals.push(r.filter.map(|v| v.to_vec()))
        })
        .unwrap();
        assert_eq!(vals.len(), 9);
        assert_eq!(vals[7], None);
        assert_eq!(vals[8].as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn a_failed_sync_after_a_roll_writes_nothing_twice() {
        let d = temp("rollfail");
        let settings = StreamSettings {
            max_segment_bytes: 400 * 1024,
            ..StreamSettings::default()
        };
        let log = StreamLog::open(&d.0, settings).unwrap();
        log.append(&rec(&[0; 300 * 1024]), 1);
        log.sync(1).unwrap();
        // Three chunks pending (each past the chunk target): 1 rolls to
        // segment 1, 2 rolls to segment 2, and its write fails.
        for i in 1..4u8 {
            log.append(&rec(&[i; 300 * 1024]), 2);
        }
        log.writer.lock().unwrap().fail_at = Some(2);
        assert!(log.sync(2).is_err());
        assert_eq!(log.committed(), 1, "nothing of the failed sync is readable");
        assert!(!seg_path(&d.0, 1).exists() && !seg_path(&d.0, 2).exists());
        log.writer.lock().unwrap().fail_at = None;
        assert_eq!(log.sync(3).unwrap(), 4);
        assert_eq!(log.unsynced_bytes(), 0);
        let expect: Vec<(u64, Vec<u8>)> =
            (0..4u8).map(|i| (i as u64, vec![i; 300 * 1024])).collect();
        let mut c = Cursor::new(&log, StartAt::First);
        assert_eq!(read_all(&log, &mut c), expect);
        drop(log);
        let log = StreamLog::open(&d.0, settings).unwrap();
        assert_eq!(log.stats().committed, 4);
        assert_eq!(log.stats().segments, 4);
        let mut c = Cursor::new(&log, StartAt::First);
        assert_eq!(read_all(&log, &mut c), expect, "each chunk once, in order");
    }

    #[test]
    fn a_failed_sync_without_a_roll_is_cut_off() {
        let d = temp("fail");
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        log.append(&rec(b"a"), 1);
        log.sync(1).unwrap();
        log.append(&rec(b"b"), 2);
        log.writer.lock().unwrap().fail_at = Some(1);
        assert!(log.sync(2).is_err());
        assert!(log.unsynced_bytes() > 0, "still pending");
        log.writer.lock().unwrap().fail_at = None;
        log.sync(3).unwrap();
        drop(log);
        let log = StreamLog::open(&d.0, StreamSettings::default()).unwrap();
        let mut c = Cursor::new(&log, StartAt::First);
        assert_eq!(
            read_all(&log, &mut c),
            vec![(0, b"a".to_vec()), (1, b"b".to_vec())]
        );
    }

    #[test]
    fn new_settings_apply_to_the_next_retention() {
        let d = temp("settings");
        let settings = StreamSettings {
            max_segment_bytes: 1000,
            ..StreamSettings::default()
        };
        let log = StreamLog::open(&d.0, settings).unwrap();
        for i in 0..50u64 {
            log.append(&rec(&[1; 100]), i as i64);
            log.sync(i as i64).unwrap();
        }
        assert!(log.stats().segments > 3);
        log.set_settings(StreamSettings {
            max_bytes: Some(1),
            ..settings
        });
        log.apply_retention(100);
        assert_eq!(log.stats().segments, 1);
    }
}
