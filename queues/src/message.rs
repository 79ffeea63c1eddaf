//! A message as queues hold it: routing info, raw properties, body.

use std::sync::Arc;

/// A published message. Immutable once routed, shared (`Arc`) by every
/// queue it reached, so fanout costs a pointer per queue, not a copy.
///
/// Packed for backlogs of millions: the exchange name, routing key, raw
/// properties and body live in one owned allocation (copied out of the
/// connection's read buffer, so a held message never pins the buffer it
/// arrived in), described by a few lengths, and the struct is three words
/// so that with its `Arc` counts it takes a 48-byte heap block. A
/// persistent message's data starts with room for its disk location
/// ([`Message::stored`]), which transient messages do not pay for; a
/// message published with a `BCC` header keeps its BCC keys next (the
/// header itself is removed at publish and never delivered, but RabbitMQ
/// routes a dead letter by them), which other messages do not pay for.
#[derive(Debug, Clone)]
pub struct Message {
    /// delivery_mode 2.
    pub persistent: bool,
    /// [`FLAG_ROOM`], [`FLAG_STORED`] and [`FLAG_BCC`].
    flags: u8,
    exchange_len: u8,
    routing_key_len: u8,
    properties_len: u32,
    /// [location room,] [BCC section,] exchange name, routing key,
    /// properties, body.
    data: Box<[u8]>,
}

/// `data` starts with [`LOCATION_BYTES`] for the disk location.
const FLAG_ROOM: u8 = 1;
/// The location there is set.
const FLAG_STORED: u8 = 2;
const LOCATION_BYTES: usize = 12;
/// A BCC section follows the location room: its length (u32 BE, the
/// length prefix excluded), then each key as a u32 BE length and bytes.
const FLAG_BCC: u8 = 4;

/// Why a message cannot be built from its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// An exchange name or routing key over 255 bytes (a shortstr).
    NameTooLong,
    /// A property list over 4 GiB.
    PropertiesTooLarge,
    /// A BCC section that does not parse (a corrupt record).
    BadBcc,
}

/// Encodes BCC keys as a message keeps them: the section's length, then
/// each key with its length (all u32 BE). Empty for no keys.
fn bcc_section<S: AsRef<str>>(keys: &[S]) -> Result<Vec<u8>, MessageError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let len: usize = keys.iter().map(|k| 4 + k.as_ref().len()).sum();
    let len32 = u32::try_from(len).map_err(|_| MessageError::PropertiesTooLarge)?;
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&len32.to_be_bytes());
    for k in keys {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_ref().as_bytes());
    }
    Ok(out)
}

/// The keys of a BCC section's contents (without its length prefix).
#[derive(Clone)]
pub struct BccKeys<'a>(&'a [u8]);

impl<'a> Iterator for BccKeys<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let n = self.0.get(..4)?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let key = self.0.get(4..4 + n)?;
        self.0 = &self.0[4 + n..];
        // Written from `&str` (or checked by `from_record`).
        Some(std::str::from_utf8(key).unwrap_or_default())
    }
}

/// Whether `contents` (a BCC section without its length prefix) is a
/// whole number of UTF-8 keys.
fn bcc_contents_valid(mut contents: &[u8]) -> bool {
    while !contents.is_empty() {
        let Some(n) = contents.get(..4) else {
            return false;
        };
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let Some(key) = contents.get(4..4 + n) else {
            return false;
        };
        if std::str::from_utf8(key).is_err() {
            return false;
        }
        contents = &contents[4 + n..];
    }
    true
}

impl Message {
    /// A message from its parts, copied into one allocation.
    pub fn new(
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
        persistent: bool,
    ) -> Result<Self, MessageError> {
        Self::build(exchange, routing_key, properties, body, persistent, &[])
    }

    /// [`Message::new`] for a message published with BCC keys (its
    /// `BCC` header, already removed from `properties`): kept for
    /// dead-lettering, never delivered.
    pub fn with_bcc<S: AsRef<str>>(
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
        persistent: bool,
        bcc: &[S],
    ) -> Result<Self, MessageError> {
        let section = bcc_section(bcc)?;
        Self::build(
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            &section,
        )
    }

    /// [`Message::new`] with a BCC section as [`Message::bcc_section`]
    /// returns it (from a disk record): checked, so a corrupt one is an
    /// error rather than garbled keys.
    pub(crate) fn from_record(
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
        persistent: bool,
        section: &[u8],
    ) -> Result<Self, MessageError> {
        if !section.is_empty() {
            let n = section.get(..4).ok_or(MessageError::BadBcc)?;
            let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
            if section.len() != 4 + n || !bcc_contents_valid(&section[4..]) {
                return Err(MessageError::BadBcc);
            }
        }
        Self::build(exchange, routing_key, properties, body, persistent, section)
    }

    fn build(
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
        persistent: bool,
        bcc: &[u8],
    ) -> Result<Self, MessageError> {
        let (Ok(exchange_len), Ok(routing_key_len)) = (
            u8::try_from(exchange.len()),
            u8::try_from(routing_key.len()),
        ) else {
            return Err(MessageError::NameTooLong);
        };
        let properties_len =
            u32::try_from(properties.len()).map_err(|_| MessageError::PropertiesTooLarge)?;
        let room = if persistent { LOCATION_BYTES } else { 0 };
        let mut data = Vec::with_capacity(
            room + bcc.len() + exchange.len() + routing_key.len() + properties.len() + body.len(),
        );
        data.resize(room, 0);
        data.extend_from_slice(bcc);
        data.extend_from_slice(exchange.as_bytes());
        data.extend_from_slice(routing_key.as_bytes());
        data.extend_from_slice(properties);
        data.extend_from_slice(body);
        Ok(Message {
            persistent,
            flags: if persistent { FLAG_ROOM } else { 0 }
                | if bcc.is_empty() { 0 } else { FLAG_BCC },
            exchange_len,
            routing_key_len,
            properties_len,
            data: data.into_boxed_slice(),
        })
    }

    /// Where the body lies on disk, when it was written there (persistent
    /// and routed to at least one durable queue). One record serves every
    /// durable queue the message reached.
    pub fn stored(&self) -> Option<StoredRef> {
        if self.flags & FLAG_STORED == 0 {
            return None;
        }
        StoredRef::from_bytes(&self.data[..LOCATION_BYTES])
    }

    /// Records (or clears) where the message was written.
    pub fn set_stored(&mut self, at: Option<StoredRef>) {
        let Some(at) = at else {
            self.flags &= !FLAG_STORED;
            return;
        };
        if self.flags & FLAG_ROOM == 0 {
            // Built transient: make room (rare; the broker builds a
            // persistent message with it).
            let mut data = Vec::with_capacity(LOCATION_BYTES + self.data.len());
            data.resize(LOCATION_BYTES, 0);
            data.extend_from_slice(&self.data);
            self.data = data.into_boxed_slice();
            self.flags |= FLAG_ROOM;
        }
        self.data[..LOCATION_BYTES].copy_from_slice(&at.to_bytes());
        self.flags |= FLAG_STORED;
    }

    fn bcc_start(&self) -> usize {
        if self.flags & FLAG_ROOM != 0 {
            LOCATION_BYTES
        } else {
            0
        }
    }

    /// The BCC section with its length prefix (empty without BCC keys):
    /// what a disk record stores.
    pub(crate) fn bcc_section(&self) -> &[u8] {
        let at = self.bcc_start();
        if self.flags & FLAG_BCC == 0 {
            return &[];
        }
        let n = &self.data[at..at + 4];
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        &self.data[at..at + 4 + n]
    }

    /// The keys of the `BCC` header it was published with (removed from
    /// its properties): RabbitMQ routes a dead letter by them when the
    /// queue has no dead-letter routing key.
    pub fn bcc_keys(&self) -> BccKeys<'_> {
        BccKeys(self.bcc_section().get(4..).unwrap_or_default())
    }

    fn names_start(&self) -> usize {
        self.bcc_start() + self.bcc_section().len()
    }

    fn names_end(&self) -> usize {
        self.names_start() + self.exchange_len as usize + self.routing_key_len as usize
    }

    fn properties_end(&self) -> usize {
        self.names_end() + self.properties_len as usize
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        // Built from a `&str` in `new`, so always valid.
        let at = self.names_start();
        std::str::from_utf8(&self.data[at..at + self.exchange_len as usize]).unwrap_or_default()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        let at = self.names_start() + self.exchange_len as usize;
        std::str::from_utf8(&self.data[at..self.names_end()]).unwrap_or_default()
    }

    /// The content header's property section (flags and values) exactly as
    /// the publisher sent it, so consumers receive it byte-exact.
    pub fn properties(&self) -> &[u8] {
        &self.data[self.names_end()..self.properties_end()]
    }

    pub fn body(&self) -> &[u8] {
        &self.data[self.properties_end()..]
    }

    /// The `priority` property (0 when absent or unreadable). Cheap: it
    /// reads the flag word and skips the fields before it by their length
    /// prefixes (two short strings and the headers table, never decoded),
    /// so a priority queue pays a few byte reads per message for it.
    pub fn priority(&self) -> u8 {
        let p = self.properties();
        let Some(flags) = p.get(..2).map(|f| u16::from_be_bytes([f[0], f[1]])) else {
            return 0;
        };
        if flags & (1 << 11) == 0 {
            return 0;
        }
        let mut at = 2usize;
        for bit in [15u16, 14] {
            if flags & (1 << bit) != 0 {
                match p.get(at) {
                    Some(&n) => at += 1 + n as usize,
                    None => return 0,
                }
            }
        }
        if flags & (1 << 13) != 0 {
            match p.get(at..at + 4) {
                Some(n) => at += 4 + u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize,
                None => return 0,
            }
        }
        if flags & (1 << 12) != 0 {
            at += 1;
        }
        p.get(at).copied().unwrap_or(0)
    }

    /// The size that counts toward a queue's byte total (the body, as RabbitMQ).
    pub fn size(&self) -> u64 {
        self.body().len() as u64
    }
}

/// Where a persistent message's record lies on disk: one record serves
/// every durable queue the message reached.
pub use crate::segments::Location as StoredRef;

/// A message in a queue: its place (`seq`, increasing per queue) and
/// whether it has been delivered before.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let m = Message::new("ex", "rk.1", &[0x10, 0, 2], b"body", true).unwrap();
        assert_eq!(
            (m.exchange(), m.routing_key(), m.properties(), m.body()),
            ("ex", "rk.1", &[0x10u8, 0, 2][..], &b"body"[..])
        );
        assert!(m.persistent && m.stored().is_none());
        assert_eq!(m.size(), 4);
        let at = StoredRef {
            seg: 7,
            off: 1 << 20,
            len: 99,
        };
        let mut m2 = m.clone();
        m2.set_stored(Some(at));
        assert_eq!(m2.stored(), Some(at));
        assert_eq!((m2.exchange(), m2.body()), ("ex", &b"body"[..]));
        // A message built transient makes room when it is stored.
        let mut t = Message::new("", "q", &[1, 2], b"xyz", false).unwrap();
        t.set_stored(Some(at));
        assert_eq!(t.stored(), Some(at));
        assert_eq!(
            (t.routing_key(), t.properties(), t.body()),
            ("q", &[1u8, 2][..], &b"xyz"[..])
        );
        t.set_stored(None);
        assert!(t.stored().is_none());
        let e = Message::new("", "", &[], &[], false).unwrap();
        assert_eq!((e.exchange(), e.routing_key(), e.body().len()), ("", "", 0));
        let long = "x".repeat(256);
        assert_eq!(
            Message::new(&long, "", &[], &[], false).unwrap_err(),
            MessageError::NameTooLong
        );
    }

    #[test]
    fn priority_is_read_past_the_fields_before_it() {
        let at = |props: &[u8]| Message::new("", "q", props, b"", false).unwrap().priority();
        assert_eq!(at(&[]), 0);
        assert_eq!(at(&[0, 0]), 0, "absent");
        assert_eq!(at(&[0x08, 0, 7]), 7, "priority alone");
        // content-type "ab", headers (4-byte length 3, contents skipped),
        // delivery-mode 2, priority 9.
        let full = [0xB8, 0, 2, b'a', b'b', 0, 0, 0, 3, 1, 2, 3, 2, 9];
        assert_eq!(at(&full), 9);
        assert_eq!(at(&full[..full.len() - 1]), 0, "cut short");
        assert_eq!(at(&[0x80, 0, 5, b'x']), 0, "a flag without its field");
    }

    #[test]
    fn bcc_keys_are_kept_apart_from_what_is_delivered() {
        let plain = Message::new("ex", "rk", &[0, 0], b"b", true).unwrap();
        assert_eq!(plain.bcc_keys().count(), 0);
        assert!(plain.bcc_section().is_empty());
        let mut m =
            Message::with_bcc("ex", "rk", &[0, 0], b"body", false, &["k1", "", "k.3"]).unwrap();
        assert_eq!(m.bcc_keys().collect::<Vec<_>>(), ["k1", "", "k.3"]);
        assert_eq!(
            (m.exchange(), m.routing_key(), m.properties(), m.body()),
            ("ex", "rk", &[0u8, 0][..], &b"body"[..])
        );
        // Making room for a location keeps the keys and the parts.
        let at = StoredRef {
            seg: 1,
            off: 2,
            len: 3,
        };
        m.set_stored(Some(at));
        assert_eq!(m.stored(), Some(at));
        assert_eq!(m.bcc_keys().collect::<Vec<_>>(), ["k1", "", "k.3"]);
        assert_eq!((m.routing_key(), m.body()), ("rk", &b"body"[..]));
        let section = m.bcc_section().to_vec();
        let back = Message::from_record("ex", "rk", &[0, 0], b"body", true, &section).unwrap();
        assert_eq!(back.bcc_keys().collect::<Vec<_>>(), ["k1", "", "k.3"]);
        // No keys: no section.
        let none: [&str; 0] = [];
        let e = Message::with_bcc("ex", "rk", &[], b"", false, &none).unwrap();
        assert!(e.bcc_section().is_empty());
        // A corrupt section is refused.
        for bad in [
            &[0u8, 0, 0, 9, 0][..],
            &[0, 0, 0, 5, 0, 0, 0, 2, b'a'],
            &[0, 0],
        ] {
            assert_eq!(
                Message::from_record("", "", &[], &[], false, bad).unwrap_err(),
                MessageError::BadBcc
            );
        }
        let not_utf8 = [0, 0, 0, 5, 0, 0, 0, 1, 0xff];
        assert!(Message::from_record("", "", &[], &[], false, &not_utf8).is_err());
    }

    #[test]
    fn packed_sizes() {
        // The struct that sits in every message's `Arc`, and a queue slot.
        // With the Arc's two counts: 40 bytes, a 48-byte heap block.
        assert_eq!(std::mem::size_of::<Message>(), 24);
    }
}
