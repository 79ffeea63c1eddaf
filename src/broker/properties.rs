//! Basic content-header properties as plain values, and their wire form.
//!
//! Messages are stored with their property section exactly as published
//! (bytes), so consumers get them byte-exact. The management API publishes
//! and reads messages too, and must neither import the AMQP layer nor a
//! codec crate's frame types: this small pure codec lives here, beside the
//! messages it describes, so both the broker's callers and the API can use
//! it. Field tables use RabbitMQ's type letters (`s` = signed short, `l` =
//! signed long long, no short strings inside tables).

use warren_exchanges::{Table, Value};

/// The basic class's properties; `None` for each absent one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<Table>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

/// Why a property section could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl BasicProperties {
    /// The property section: flags, then the present values in flag order.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut flags: u16 = 0;
        let mut out = vec![0, 0];
        let strs = |out: &mut Vec<u8>, flags: &mut u16, bit: u16, v: &Option<String>| {
            if let Some(s) = v {
                if s.len() > 255 {
                    return Err(EncodeError(format!(
                        "property value too long ({} bytes, at most 255)",
                        s.len()
                    )));
                }
                *flags |= 1 << bit;
                out.push(s.len() as u8);
                out.extend_from_slice(s.as_bytes());
            }
            Ok(())
        };
        strs(&mut out, &mut flags, 15, &self.content_type)?;
        strs(&mut out, &mut flags, 14, &self.content_encoding)?;
        if let Some(h) = &self.headers {
            flags |= 1 << 13;
            put_table(&mut out, h)?;
        }
        if let Some(d) = self.delivery_mode {
            flags |= 1 << 12;
            out.push(d);
        }
        if let Some(p) = self.priority {
            flags |= 1 << 11;
            out.push(p);
        }
        strs(&mut out, &mut flags, 10, &self.correlation_id)?;
        strs(&mut out, &mut flags, 9, &self.reply_to)?;
        strs(&mut out, &mut flags, 8, &self.expiration)?;
        strs(&mut out, &mut flags, 7, &self.message_id)?;
        if let Some(t) = self.timestamp {
            flags |= 1 << 6;
            out.extend_from_slice(&t.to_be_bytes());
        }
        strs(&mut out, &mut flags, 5, &self.kind)?;
        strs(&mut out, &mut flags, 4, &self.user_id)?;
        strs(&mut out, &mut flags, 3, &self.app_id)?;
        strs(&mut out, &mut flags, 2, &self.cluster_id)?;
        out[..2].copy_from_slice(&flags.to_be_bytes());
        Ok(out)
    }

    /// A property section with one header set (added, or replacing one of
    /// that name), the rest kept; `None` when `bytes` do not decode or the
    /// result does not encode. For headers the broker adds on delivery
    /// (`x-delivery-count`), so the stored message stays as published.
    pub fn with_header(bytes: &[u8], name: &str, value: Value) -> Option<Vec<u8>> {
        let mut p = BasicProperties::decode(bytes)?;
        p.headers
            .get_or_insert_with(Table::default)
            .insert(name, value);
        p.encode().ok()
    }

    /// Decodes a property section; `None` when it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<BasicProperties> {
        let mut r = Reader(bytes);
        let mut flags = r.u16()?;
        // Continuation words (bit 0) carry no basic properties: skip them.
        let first = flags;
        while flags & 1 == 1 {
            flags = r.u16()?;
        }
        let flags = first;
        let on = |bit: u16| flags & (1 << bit) != 0;
        let mut p = BasicProperties::default();
        let s = |r: &mut Reader, bit: u16| -> Option<Option<String>> {
            if on(bit) {
                Some(Some(r.short_str()?))
            } else {
                Some(None)
            }
        };
        p.content_type = s(&mut r, 15)?;
        p.content_encoding = s(&mut r, 14)?;
        if on(13) {
            p.headers = Some(r.table(0)?);
        }
        if on(12) {
            p.delivery_mode = Some(r.u8()?);
        }
        if on(11) {
            p.priority = Some(r.u8()?);
        }
        p.correlation_id = s(&mut r, 10)?;
        p.reply_to = s(&mut r, 9)?;
        p.expiration = s(&mut r, 8)?;
        p.message_id = s(&mut r, 7)?;
        if on(6) {
            p.timestamp = Some(r.u64()?);
        }
        p.kind = s(&mut r, 5)?;
        p.user_id = s(&mut r, 4)?;
        p.app_id = s(&mut r, 3)?;
        p.cluster_id = s(&mut r, 2)?;
        Some(p)
    }
}

fn put_table(out: &mut Vec<u8>, t: &Table) -> Result<(), EncodeError> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in t.iter() {
        if k.len() > 255 {
            return Err(EncodeError(format!("header name too long: {k}")));
        }
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        put_value(out, v)?;
    }
    let n = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_long_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<(), EncodeError> {
    match v {
        Value::Bool(b) => out.extend_from_slice(&[b't', *b as u8]),
        Value::ShortShortInt(n) => out.extend_from_slice(&[b'b', *n as u8]),
        Value::ShortShortUInt(n) => out.extend_from_slice(&[b'B', *n]),
        Value::ShortInt(n) => {
            out.push(b's');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::ShortUInt(n) => {
            out.push(b'u');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongInt(n) => {
            out.push(b'I');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongUInt(n) => {
            out.push(b'i');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongLongInt(n) => {
            out.push(b'l');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Float(f) => {
            out.push(b'f');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Double(f) => {
            out.push(b'd');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Decimal { scale, value } => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&value.to_be_bytes());
        }
        // Tables have no short strings in RabbitMQ's dialect.
        Value::ShortString(s) => {
            out.push(b'S');
            put_long_bytes(out, s.as_bytes());
        }
        Value::LongString(b) => {
            out.push(b'S');
            put_long_bytes(out, b);
        }
        Value::ByteArray(b) => {
            out.push(b'x');
            put_long_bytes(out, b);
        }
        Value::Array(items) => {
            out.push(b'A');
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            for i in items {
                put_value(out, i)?;
            }
            let n = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
        Value::Timestamp(t) => {
            out.push(b'T');
            out.extend_from_slice(&t.to_be_bytes());
        }
        Value::Table(t) => {
            out.push(b'F');
            put_table(out, t)?;
        }
        Value::Void => out.push(b'V'),
    }
    Ok(())
}

/// How deep field tables and arrays may nest in anything Warren decodes.
/// Real clients nest a few levels; RabbitMQ (Erlang) has no limit, but a
/// recursive decoder on a 2 MiB thread stack must have one: a 128 KiB frame
/// can carry 18,000 levels.
pub const MAX_TABLE_DEPTH: usize = 64;

/// How deep a decoded table nests: itself 1, each table or array inside
/// one more (the count [`table_nesting_ok`] makes on the wire).
pub fn table_depth(t: &Table) -> usize {
    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Table(t) => table_depth(t),
            Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + t.iter().map(|(_, v)| value_depth(v)).max().unwrap_or(0)
}

/// Whether the field table at the start of `t` (with its length prefix)
/// nests tables and arrays at most `max` levels deep. Walks iteratively, so
/// it is safe on any input; malformed input returns `true` when it cannot
/// hide deeper nesting (a decoder then rejects it at that same point) and
/// an unknown type tag returns `false`.
pub fn table_nesting_ok(t: &[u8], max: usize) -> bool {
    let u32_at = |pos: usize| -> Option<usize> {
        Some(u32::from_be_bytes(t.get(pos..pos + 4)?.try_into().ok()?) as usize)
    };
    let Some(len) = u32_at(0) else {
        return true;
    };
    // (end of the container, whether it is a table: entries have keys)
    let mut stack: Vec<(usize, bool)> = vec![(4 + len, true)];
    let mut pos = 4;
    while let Some(&(end, is_table)) = stack.last() {
        if pos >= end || pos >= t.len() {
            stack.pop();
            continue;
        }
        if is_table {
            pos += 1 + t[pos] as usize;
            if pos >= end || pos >= t.len() {
                return true;
            }
        }
        let tag = t[pos];
        pos += 1;
        pos += match tag {
            // (the 0-9-1 spec's tag for a short-int; RabbitMQ's is 's')
            b'U' => 2,
            b'S' | b'x' => match u32_at(pos) {
                Some(n) => 4 + n,
                None => return true,
            },
            b'F' | b'A' => {
                let Some(n) = u32_at(pos) else {
                    return true;
                };
                if stack.len() >= max {
                    return false;
                }
                stack.push((pos + 4 + n, tag == b'F'));
                4
            }
            _ => match fixed_field_size(tag) {
                Some(n) => n,
                None => return false,
            },
        };
    }
    true
}

/// The size in bytes of a field value of type `tag` when that size is
/// fixed by the type (booleans, numbers, decimals, timestamps, void).
/// `None` for the length-prefixed types (strings, byte arrays, tables,
/// arrays) and for unknown tags.
pub fn fixed_field_size(tag: u8) -> Option<usize> {
    match tag {
        b't' | b'b' | b'B' => Some(1),
        b's' | b'u' => Some(2),
        b'I' | b'i' | b'f' => Some(4),
        b'l' | b'L' | b'd' | b'T' => Some(8),
        b'D' => Some(5),
        b'V' => Some(0),
        _ => None,
    }
}

/// Whether the field table at the start of `t` (with its length prefix)
/// is well formed, as [`BasicProperties::decode`] reads it: each length
/// within its container, only known type tags, tables and arrays nested
/// at most `max` levels. Returns the bytes it spans. Walks the bytes in
/// place, without allocating a value: cheap enough for every publish.
pub fn table_valid(t: &[u8], max: usize) -> Option<usize> {
    let u32_at = |pos: usize| -> Option<usize> {
        Some(u32::from_be_bytes(t.get(pos..pos + 4)?.try_into().ok()?) as usize)
    };
    let total = 4 + u32_at(0)?;
    if total > t.len() {
        return None;
    }
    // (end of the container, whether it is a table: entries have keys)
    let mut stack: Vec<(usize, bool)> = vec![(total, true)];
    let mut pos = 4;
    while let Some(&(end, is_table)) = stack.last() {
        if pos == end {
            stack.pop();
            continue;
        }
        if is_table {
            pos += 1 + t[pos] as usize;
            if pos >= end {
                return None;
            }
        }
        let tag = t[pos];
        pos += 1;
        let size = match tag {
            b'S' | b'x' => 4 + u32_at(pos)?,
            b'F' | b'A' => {
                let inner_end = pos + 4 + u32_at(pos)?;
                if stack.len() >= max || inner_end > end {
                    return None;
                }
                stack.push((inner_end, tag == b'F'));
                4
            }
            _ => fixed_field_size(tag)?,
        };
        pos += size;
        if pos > end {
            return None;
        }
    }
    Some(total)
}

/// `props` (a property section as published) with a long-long header
/// `key` set to `value`, replacing one of that name, the other headers kept
/// byte-exact in their order and the new one last (as RabbitMQ appends
/// `x-stream-offset`). Spliced in place, without decoding the values: this
/// runs for every stream delivery. `None` when `props` is malformed.
pub fn with_long_header(props: &[u8], key: &str, value: i64) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes(props.get(..2)?.try_into().ok()?);
    if flags & 1 != 0 {
        // Continuation flag words: never sent by clients; go the long way.
        let mut p = BasicProperties::decode(props)?;
        p.headers
            .get_or_insert_with(Table::default)
            .insert(key, Value::LongLongInt(value));
        return p.encode().ok();
    }
    let mut pos = 2;
    for bit in [15u16, 14] {
        if flags & (1 << bit) != 0 {
            pos += 1 + *props.get(pos)? as usize;
        }
    }
    let mut entry = Vec::with_capacity(key.len() + 10);
    entry.push(key.len() as u8);
    entry.extend_from_slice(key.as_bytes());
    entry.push(b'l');
    entry.extend_from_slice(&value.to_be_bytes());
    let mut out = Vec::with_capacity(props.len() + entry.len() + 4);
    if flags & (1 << 13) == 0 {
        out.extend_from_slice(&(flags | (1 << 13)).to_be_bytes());
        out.extend_from_slice(props.get(2..pos)?);
        out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry);
        out.extend_from_slice(props.get(pos..)?);
        return Some(out);
    }
    let total = table_valid(props.get(pos..)?, MAX_TABLE_DEPTH + 1)?;
    let table = &props[pos + 4..pos + total];
    out.extend_from_slice(&props[..pos]);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    // Copy every entry but one named `key`.
    let mut at = 0;
    while at < table.len() {
        let start = at;
        let klen = table[at] as usize;
        let k = table.get(at + 1..at + 1 + klen)?;
        at += 1 + klen;
        let tag = *table.get(at)?;
        at += 1;
        let u32_at = |p: usize| -> Option<usize> {
            Some(u32::from_be_bytes(table.get(p..p + 4)?.try_into().ok()?) as usize)
        };
        at += match tag {
            b'S' | b'x' | b'F' | b'A' => 4 + u32_at(at)?,
            _ => fixed_field_size(tag)?,
        };
        if k != key.as_bytes() {
            out.extend_from_slice(table.get(start..at)?);
        }
    }
    out.extend_from_slice(&entry);
    let new_len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&new_len.to_be_bytes());
    out.extend_from_slice(&props[pos + total..]);
    Some(out)
}

/// The value of the long-string header `key` in `props` (a property
/// section as published), read in place without decoding the others
/// (this runs for every publish to a stream). `None` when it is absent,
/// of another type, or the section is malformed or uses continuation
/// flag words (never sent by clients).
pub fn string_header<'a>(props: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let flags = u16::from_be_bytes(props.get(..2)?.try_into().ok()?);
    if flags & 1 != 0 || flags & (1 << 13) == 0 {
        return None;
    }
    let mut pos = 2;
    for bit in [15u16, 14] {
        if flags & (1 << bit) != 0 {
            pos += 1 + *props.get(pos)? as usize;
        }
    }
    let len = u32::from_be_bytes(props.get(pos..pos + 4)?.try_into().ok()?) as usize;
    let table = props.get(pos + 4..pos + 4 + len)?;
    let u32_at = |p: usize| -> Option<usize> {
        Some(u32::from_be_bytes(table.get(p..p + 4)?.try_into().ok()?) as usize)
    };
    let mut at = 0;
    while at < table.len() {
        let klen = *table.get(at)? as usize;
        let k = table.get(at + 1..at + 1 + klen)?;
        at += 1 + klen;
        let tag = *table.get(at)?;
        at += 1;
        if k == key.as_bytes() {
            return match tag {
                b'S' => table.get(at + 4..at + 4 + u32_at(at)?),
                _ => None,
            };
        }
        at += match tag {
            b'S' | b'x' | b'F' | b'A' => 4 + u32_at(at)?,
            _ => fixed_field_size(tag)?,
        };
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn short_str(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn long_bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
    /// A field table nested `depth` levels inside others; refused past
    /// [`MAX_TABLE_DEPTH`] so a crafted message cannot exhaust the stack.
    fn table(&mut self, depth: usize) -> Option<Table> {
        if depth >= MAX_TABLE_DEPTH {
            return None;
        }
        let n = self.u32()? as usize;
        let mut inner = Reader(self.take(n)?);
        let mut t = Table::default();
        while !inner.0.is_empty() {
            let k = inner.short_str()?;
            let v = inner.value(depth)?;
            t.0.push((k, v));
        }
        Some(t)
    }
    fn value(&mut self, depth: usize) -> Option<Value> {
        let tag = self.u8()?;
        Some(match tag {
            b't' => Value::Bool(self.u8()? != 0),
            b'b' => Value::ShortShortInt(self.u8()? as i8),
            b'B' => Value::ShortShortUInt(self.u8()?),
            b's' => Value::ShortInt(self.u16()? as i16),
            b'u' => Value::ShortUInt(self.u16()?),
            b'I' => Value::LongInt(self.u32()? as i32),
            b'i' => Value::LongUInt(self.u32()?),
            b'l' | b'L' => Value::LongLongInt(self.u64()? as i64),
            b'f' => Value::Float(f32::from_bits(self.u32()?)),
            b'd' => Value::Double(f64::from_bits(self.u64()?)),
            b'D' => Value::Decimal {
                scale: self.u8()?,
                value: self.u32()?,
            },
            b'S' => Value::LongString(self.long_bytes()?),
            b'x' => Value::ByteArray(self.long_bytes()?),
            b'A' => {
                if depth + 1 >= MAX_TABLE_DEPTH {
                    return None;
                }
                let n = self.u32()? as usize;
                let mut inner = Reader(self.take(n)?);
                let mut items = Vec::new();
                while !inner.0.is_empty() {
                    items.push(inner.value(depth + 1)?);
                }
                Value::Array(items)
            }
            b'T' => Value::Timestamp(self.u64()?),
            b'F' => Value::Table(self.table(depth + 1)?),
            b'V' => Value::Void,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_header_is_spliced_in_or_replaced() {
        let mut h = Table::default();
        h.insert("i", Value::LongInt(7));
        h.insert("x-stream-offset", Value::LongLongInt(999));
        h.insert("s", Value::LongString(b"v".to_vec()));
        for base in [
            BasicProperties::default(),
            BasicProperties {
                content_type: Some("text/plain".into()),
                delivery_mode: Some(2),
                message_id: Some("m1".into()),
                ..Default::default()
            },
            BasicProperties {
                content_encoding: Some("gzip".into()),
                headers: Some(h.clone()),
                timestamp: Some(5),
                ..Default::default()
            },
        ] {
            let out = with_long_header(&base.encode().unwrap(), "x-stream-offset", 42).unwrap();
            let got = BasicProperties::decode(&out).unwrap();
            let mut want = base.clone();
            let mut wh = Table::default();
            for (k, v) in base.headers.iter().flat_map(|t| t.iter()) {
                if k != "x-stream-offset" {
                    wh.insert(k, v.clone());
                }
            }
            wh.insert("x-stream-offset", Value::LongLongInt(42));
            want.headers = Some(wh);
            assert_eq!(got, want);
        }
        assert!(with_long_header(&[0x20, 0, 0, 0, 0, 9], "k", 1).is_none());
    }

    /// `{"a": {"a": ... {}}}`, `depth` tables deep (the outer one counts).
    fn nested(depth: usize) -> Vec<u8> {
        let mut t = 0u32.to_be_bytes().to_vec();
        for _ in 1..depth {
            let mut o = ((t.len() + 3) as u32).to_be_bytes().to_vec();
            o.extend_from_slice(&[1, b'a', b'F']);
            o.extend_from_slice(&t);
            t = o;
        }
        t
    }

    #[test]
    fn nesting_is_bounded_in_the_walker_and_the_decoder() {
        assert!(table_nesting_ok(&nested(MAX_TABLE_DEPTH), MAX_TABLE_DEPTH));
        assert!(!table_nesting_ok(
            &nested(MAX_TABLE_DEPTH + 1),
            MAX_TABLE_DEPTH
        ));
        assert!(!table_nesting_ok(&nested(20_000), MAX_TABLE_DEPTH));
        // Arrays count as levels too: {"a": [[[...]]]}.
        let mut arr = 0u32.to_be_bytes().to_vec();
        for _ in 0..100 {
            let mut o = ((arr.len() + 1) as u32).to_be_bytes().to_vec();
            o.push(b'A');
            o.extend_from_slice(&arr);
            arr = o;
        }
        let mut t = ((arr.len() + 3) as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&[1, b'a', b'A']);
        t.extend_from_slice(&arr);
        assert!(!table_nesting_ok(&t, MAX_TABLE_DEPTH));
        // Unknown tags are refused; truncated input cannot hide depth.
        assert!(!table_nesting_ok(&[0, 0, 0, 3, 1, b'a', b'Z'], 8));
        assert!(table_nesting_ok(&[0, 0, 0, 9, 1, b'a', b'F'], 8));
        // The decoder stops at the same depth instead of recursing on.
        for (depth, ok) in [(MAX_TABLE_DEPTH, true), (20_000, false)] {
            let mut props = 0x2000u16.to_be_bytes().to_vec();
            props.extend_from_slice(&nested(depth));
            assert_eq!(BasicProperties::decode(&props).is_some(), ok, "{depth}");
        }
    }

    #[test]
    fn table_validation_agrees_with_the_decoder() {
        let mut h = Table::default();
        h.insert("s", Value::LongString(b"abc".to_vec()));
        h.insert(
            "a",
            Value::Array(vec![Value::Bool(true), Value::Table(Table::default())]),
        );
        h.insert("n", Value::Decimal { scale: 1, value: 2 });
        let good = BasicProperties {
            headers: Some(h),
            ..Default::default()
        }
        .encode()
        .unwrap();
        let t = &good[2..];
        assert_eq!(table_valid(t, MAX_TABLE_DEPTH), Some(t.len()));
        // Every truncation, and every corrupted length byte, is caught
        // exactly when the decoder fails on it.
        for cut in 0..t.len() {
            let mut bad = t[..cut].to_vec();
            if bad.len() >= 4 {
                let n = (bad.len() - 4) as u32;
                bad[..4].copy_from_slice(&n.to_be_bytes());
            }
            let mut props = 0x2000u16.to_be_bytes().to_vec();
            props.extend_from_slice(&bad);
            let decodes = BasicProperties::decode(&props).is_some();
            assert_eq!(
                table_valid(&bad, MAX_TABLE_DEPTH).is_some(),
                decodes,
                "{cut}"
            );
        }
        // A long string claiming more than the table holds.
        let lie = [0, 0, 0, 8, 1, b'k', b'S', 0, 0, 0, 100, b'x'];
        assert_eq!(table_valid(&lie[..11], MAX_TABLE_DEPTH), None);
        assert_eq!(table_valid(&[0, 0, 0, 3, 1, b'k', b'Z'], 8), None);
        assert!(table_valid(&nested(MAX_TABLE_DEPTH), MAX_TABLE_DEPTH).is_some());
        assert_eq!(
            table_valid(&nested(MAX_TABLE_DEPTH + 1), MAX_TABLE_DEPTH),
            None
        );
    }

    #[test]
    fn every_property_round_trips() {
        let mut h = Table::default();
        h.insert("n", Value::LongLongInt(-5));
        h.insert("s", Value::LongString(b"x".to_vec()));
        h.insert(
            "a",
            Value::Array(vec![Value::Bool(true), Value::Table(Table::default())]),
        );
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(h),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: None,
        };
        let bytes = p.encode().unwrap();
        assert_eq!(BasicProperties::decode(&bytes), Some(p));
        assert_eq!(BasicProperties::default().encode().unwrap(), vec![0u8, 0u8]);
        assert_eq!(BasicProperties::decode(&[0x80, 0, 5, b'a']), None);
    }

    #[test]
    fn a_string_header_is_read_in_place() {
        let mut h = Table::default();
        h.insert("n", Value::LongInt(7));
        h.insert("t", Value::Table(Table::default()));
        h.insert("x-stream-filter-value", Value::LongString(b"eu".to_vec()));
        h.insert("other", Value::LongLongInt(1));
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(h),
            ..Default::default()
        };
        let b = p.encode().unwrap();
        assert_eq!(string_header(&b, "x-stream-filter-value"), Some(&b"eu"[..]));
        assert_eq!(string_header(&b, "n"), None, "not a string");
        assert_eq!(string_header(&b, "missing"), None);
        let none = BasicProperties::default().encode().unwrap();
        assert_eq!(string_header(&none, "x-stream-filter-value"), None);
        assert_eq!(
            string_header(&b[..b.len() - 3], "x-stream-filter-value"),
            None
        );
    }
}
