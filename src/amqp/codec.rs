//! Frame codec: splitting the byte stream into frames and writing frames.
//!
//! Reading checks the 7-byte frame header against the negotiated frame_max
//! *before* buffering the payload, so a peer cannot make us allocate more
//! than one frame. Method arguments are decoded with amq-protocol; content
//! headers are kept raw so properties reach consumers byte-exact; the hot
//! frames (basic.deliver, basic.get-ok, basic.return, content) are encoded
//! by hand straight into the output buffer.

use crate::broker::properties::{fixed_field_size, table_nesting_ok, table_valid, MAX_TABLE_DEPTH};
use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::AMQPClass;
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Header (7) plus frame-end (1): what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = 8;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// Why the byte stream cannot be read as frames (all connection errors, 501).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge { kind: u8, size: usize, max: usize },
    BadFrameEnd(u8),
    UnknownType(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { kind, size, max } => write!(
                f,
                "type {kind}, frame size {size} is larger than the negotiated frame_max payload of {max}"
            ),
            FrameError::BadFrameEnd(b) => write!(f, "invalid frame end marker {b:#04x}"),
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
        }
    }
}

/// Takes one whole frame off the front of `buf`, if one is there.
///
/// `frame_max` is the negotiated maximum frame size (header and end
/// included); 0 means no limit.
pub fn read_frame(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownType(kind));
    }
    if frame_max != 0 && size > frame_max.saturating_sub(FRAME_OVERHEAD) {
        return Err(FrameError::TooLarge {
            kind,
            size,
            max: frame_max.saturating_sub(FRAME_OVERHEAD),
        });
    }
    if buf.len() < 7 + size + 1 {
        buf.reserve(7 + size + 1 - buf.len());
        return Ok(None);
    }
    let end = buf[7 + size];
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd(end));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(Frame {
        kind,
        channel,
        payload,
    }))
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&b[..n]);
}

/// Starts a frame; returns where its size goes, for [`end_frame`].
fn begin_frame(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

fn end_frame(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Any method frame, through amq-protocol's generator. Its generator
/// needs a buffer it can seek back in (for the frame size), so frames are
/// built in a per-thread scratch vector that is reused, not allocated per
/// frame (confirms send one basic.ack per batch of publishes).
pub fn write_method(out: &mut BytesMut, channel: u16, method: AMQPClass) {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let frame = AMQPFrame::Method(channel, method);
    let mut buf = SCRATCH.take();
    buf.clear();
    match gen_frame(&frame)(WriteContext::from(buf)) {
        Ok(ctx) => {
            buf = ctx.into_inner().0;
            out.extend_from_slice(&buf);
        }
        // Only oversized strings can fail; our own methods have none.
        Err(e) => {
            tracing::error!(error = %e, "failed to encode method frame");
            return;
        }
    }
    // A rare huge frame (a long reply text) is not kept for good.
    if buf.capacity() <= 64 * 1024 {
        SCRATCH.set(buf);
    }
}

pub fn write_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// basic.deliver (60,60).
pub fn write_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    put_short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    end_frame(out, at);
}

/// basic.get-ok (60,71).
pub fn write_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u32(message_count);
    end_frame(out, at);
}

/// basic.return (60,50).
pub fn write_return(
    out: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(50);
    out.put_u16(reply_code);
    put_short_str(out, reply_text);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    end_frame(out, at);
}

/// The content header (with the publisher's raw properties) and body
/// frames, split so no frame exceeds `frame_max`.
pub fn write_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: usize,
) {
    let at = begin_frame(out, FRAME_HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.put_slice(properties);
    end_frame(out, at);
    let chunk = if frame_max == 0 {
        usize::MAX
    } else {
        frame_max - FRAME_OVERHEAD
    };
    for part in body.chunks(chunk) {
        out.reserve(part.len() + FRAME_OVERHEAD);
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// A content header, split into what the broker needs and the raw rest.
#[derive(Debug)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// Property flags and values, as sent.
    pub properties: Bytes,
}

pub fn parse_content_header(payload: &Bytes) -> Option<ContentHeader> {
    if payload.len() < 14 {
        return None;
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let body_size = u64::from_be_bytes(payload[4..12].try_into().ok()?);
    let properties = payload.slice(12..);
    Some(ContentHeader {
        class_id,
        body_size,
        properties,
    })
}

/// Whether a method frame's field table, for the methods that carry one,
/// nests at most [`MAX_TABLE_DEPTH`] levels. Checked before the frame
/// reaches amq-protocol's decoder, which recurses once per level: a 128 KiB
/// frame nested 15,000 levels deep would overflow the stack and abort the
/// whole broker. Malformed frames pass (the decoder rejects them).
pub fn method_tables_ok(payload: &[u8]) -> bool {
    const U8: u8 = 0;
    const U16: u8 = 1;
    const SSTR: u8 = 2;
    if payload.len() < 4 {
        return true;
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    // The fields before each method's table.
    let before: &[u8] = match (class, method) {
        (10, 10) => &[U8, U8],                               // connection.start
        (10, 11) => &[],                                     // connection.start-ok
        (40, 10) => &[U16, SSTR, SSTR, U8],                  // exchange.declare
        (40, 30) | (40, 40) => &[U16, SSTR, SSTR, SSTR, U8], // exchange.bind/unbind
        (50, 10) => &[U16, SSTR, U8],                        // queue.declare
        (50, 20) => &[U16, SSTR, SSTR, SSTR, U8],            // queue.bind
        (50, 50) => &[U16, SSTR, SSTR, SSTR],                // queue.unbind
        (60, 20) => &[U16, SSTR, SSTR, U8],                  // basic.consume
        _ => return true,
    };
    let mut pos = 4;
    for f in before {
        pos += match *f {
            U8 => 1,
            U16 => 2,
            _ => match payload.get(pos) {
                Some(n) => 1 + *n as usize,
                None => return true,
            },
        };
    }
    match payload.get(pos..) {
        Some(t) => table_nesting_ok(t, MAX_TABLE_DEPTH),
        None => true,
    }
}

/// Validates a published property list (layout, and the headers table in
/// place) and finds what the broker needs; `None` when it is malformed.
pub fn scan_properties(props: &[u8]) -> Option<PropertySummary> {
    let mut p = props;
    let take = |p: &mut &[u8], n: usize| -> Option<()> {
        if p.len() < n {
            return None;
        }
        *p = &p[n..];
        Some(())
    };
    if p.len() < 2 {
        return None;
    }
    let flags = u16::from_be_bytes([p[0], p[1]]);
    p = &p[2..];
    // The basic class has no properties past the first flag word: a
    // continuation bit is refused, as RabbitMQ cannot decode one either.
    if flags & 1 == 1 {
        return None;
    }
    let mut summary = PropertySummary::default();
    // Basic properties, in flag order from bit 15 down.
    const SHORTSTR: u8 = 0;
    const TABLE: u8 = 1;
    const OCTET: u8 = 2;
    const LONGLONG: u8 = 3;
    let layout = [
        SHORTSTR, SHORTSTR, TABLE, OCTET, OCTET, SHORTSTR, SHORTSTR, SHORTSTR, SHORTSTR, LONGLONG,
        SHORTSTR, SHORTSTR, SHORTSTR, SHORTSTR,
    ];
    for (i, kind) in layout.iter().enumerate() {
        let bit = 15 - i;
        if flags & (1 << bit) == 0 {
            continue;
        }
        match *kind {
            SHORTSTR => {
                let n = *p.first()? as usize;
                if i == 11 || i == 7 {
                    let start = props.len() - p.len() + 1;
                    if i == 11 {
                        summary.user_id = Some((start, start + n));
                    } else {
                        summary.expiration = Some((start, start + n));
                    }
                }
                if i == 6 {
                    let start = props.len() - p.len() + 1;
                    summary.reply_to = Some((start, start + n));
                }
                take(&mut p, 1 + n)?;
            }
            TABLE => {
                // Validated in place, once: a malformed table (or one
                // nested deep enough to exhaust a recursive decoder's
                // stack) is refused, never stored or forwarded.
                let n = table_valid(p, MAX_TABLE_DEPTH)?;
                summary.has_headers = true;
                let start = props.len() - p.len() + 4;
                summary.headers = Some((start, start + n - 4));
                take(&mut p, n)?;
            }
            OCTET => {
                if i == 3 {
                    summary.delivery_mode = *p.first()?;
                }
                take(&mut p, 1)?;
            }
            _ => take(&mut p, 8)?,
        }
    }
    p.is_empty().then_some(summary)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PropertySummary {
    pub delivery_mode: u8,
    /// Where the headers table's entries lie in the property bytes.
    pub headers: Option<(usize, usize)>,
    /// Where the user_id property's text lies in the property bytes.
    pub user_id: Option<(usize, usize)>,
    /// Where the expiration property's text lies in the property bytes.
    pub expiration: Option<(usize, usize)>,
    /// Where the reply_to property's text lies in the property bytes.
    pub reply_to: Option<(usize, usize)>,
    pub has_headers: bool,
}

/// Whether a field table's entries (without the length prefix) may hold
/// one of `keys` at the top level. Scans without decoding; answers `true`
/// when unsure (an unknown value type), so callers then decode properly.
pub fn table_may_have_key(mut t: &[u8], keys: &[&str]) -> bool {
    while !t.is_empty() {
        let n = t[0] as usize;
        let Some(key) = t.get(1..1 + n) else {
            return true;
        };
        if keys.iter().any(|k| k.as_bytes() == key) {
            return true;
        }
        let Some(&kind) = t.get(1 + n) else {
            return true;
        };
        t = &t[2 + n..];
        let fixed = match kind {
            b'S' | b'A' | b'F' | b'x' => {
                if t.len() < 4 {
                    return true;
                }
                4 + u32::from_be_bytes([t[0], t[1], t[2], t[3]]) as usize
            }
            _ => match fixed_field_size(kind) {
                Some(n) => n,
                None => return true,
            },
        };
        if t.len() < fixed {
            return true;
        }
        t = &t[fixed..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_scan_finds_top_level_keys_only() {
        // {"a": longstr "CC", "CC": array []}
        let mut t = vec![1, b'a', b'S', 0, 0, 0, 2, b'C', b'C'];
        assert!(
            !table_may_have_key(&t, &["CC", "BCC"]),
            "a value is not a key"
        );
        t.extend_from_slice(&[2, b'C', b'C', b'A', 0, 0, 0, 0]);
        assert!(table_may_have_key(&t, &["CC"]));
        assert!(!table_may_have_key(&t, &["BCC"]));
    }

    #[test]
    fn frame_too_large_is_refused_from_the_header() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[1, 0, 1, 0, 1, 0, 0]); // 65536-byte payload announced
        assert_eq!(
            read_frame(&mut b, 4096).unwrap_err(),
            FrameError::TooLarge {
                kind: 1,
                size: 65536,
                max: 4088
            }
        );
    }

    #[test]
    fn partial_then_whole_frame() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[8, 0, 0, 0, 0, 0]);
        assert!(read_frame(&mut b, 4096).unwrap().is_none());
        b.extend_from_slice(&[0, FRAME_END, 1]);
        let f = read_frame(&mut b, 4096).unwrap().unwrap();
        assert_eq!(f.kind, FRAME_HEARTBEAT);
        assert_eq!(&b[..], &[1]);
    }

    #[test]
    fn bad_frame_end() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xAA]);
        assert_eq!(
            read_frame(&mut b, 4096).unwrap_err(),
            FrameError::BadFrameEnd(0xAA)
        );
    }

    #[test]
    fn content_round_trip_splits_body() {
        let mut out = BytesMut::new();
        let body = vec![7u8; 10_000];
        write_content(&mut out, 3, &[0x10, 0x00, 2], &body, 4096);
        let mut frames = Vec::new();
        while let Some(f) = read_frame(&mut out, 4096).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 1 + 3);
        let h = parse_content_header(&frames[0].payload).unwrap();
        assert_eq!(h.body_size, 10_000);
        assert_eq!(scan_properties(&h.properties).unwrap().delivery_mode, 2);
        let total: usize = frames[1..].iter().map(|f| f.payload.len()).sum();
        assert_eq!(total, 10_000);
    }

    #[test]
    fn malformed_properties_are_detected() {
        assert!(scan_properties(&[0x80, 0x00, 5, b'a']).is_none());
        assert!(
            scan_properties(&[0x00, 0x00, 1]).is_none(),
            "trailing bytes"
        );
        assert!(scan_properties(&[0x00, 0x00]).is_some());
    }
}
