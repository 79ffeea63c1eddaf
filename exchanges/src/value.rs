//! The field-table value model (AMQP 0-9-1 as RabbitMQ extends it), and the
//! two RabbitMQ views of a value that routing needs: equality as the headers
//! exchange sees it ([`Value::rabbit_eq`]) and the Erlang term text that
//! RabbitMQ's error messages print ([`Value::erlang_term`]).
//!
//! Kept here, not borrowed from a codec crate, so that routing and the broker
//! do not depend on the wire codec; the AMQP layer converts at the edge. A
//! [`Table`] keeps its entries in the order they arrived.

/// One field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    ShortShortInt(i8),
    ShortShortUInt(u8),
    ShortInt(i16),
    ShortUInt(u16),
    LongInt(i32),
    LongUInt(u32),
    LongLongInt(i64),
    Float(f32),
    Double(f64),
    Decimal { scale: u8, value: u32 },
    ShortString(String),
    LongString(Vec<u8>),
    Array(Vec<Value>),
    Timestamp(u64),
    Table(Table),
    ByteArray(Vec<u8>),
    Void,
}

impl Value {
    /// The value as an integer, when it is one of the integer types.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::ShortShortInt(v) => v as i64,
            Value::ShortShortUInt(v) => v as i64,
            Value::ShortInt(v) => v as i64,
            Value::ShortUInt(v) => v as i64,
            Value::LongInt(v) => v as i64,
            Value::LongUInt(v) => v as i64,
            Value::LongLongInt(v) => v,
            Value::Timestamp(v) => v as i64,
            _ => return None,
        })
    }

    /// The value as text, when it is a string type holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::ShortString(s) => Some(s),
            Value::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// RabbitMQ's name for the value's type, as used in its error texts.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::ShortShortInt(_) => "byte",
            Value::ShortShortUInt(_) => "unsignedbyte",
            Value::ShortInt(_) => "short",
            Value::ShortUInt(_) => "unsignedshort",
            Value::LongInt(_) => "signedint",
            Value::LongUInt(_) => "unsignedint",
            Value::LongLongInt(_) => "long",
            Value::Float(_) => "float",
            Value::Double(_) => "double",
            Value::Decimal { .. } => "decimal",
            Value::ShortString(_) => "shortstr",
            Value::LongString(_) => "longstr",
            Value::Array(_) => "array",
            Value::Timestamp(_) => "timestamp",
            Value::Table(_) => "table",
            Value::ByteArray(_) => "binary",
            Value::Void => "void",
        }
    }
}

impl Value {
    /// Whether a message header equals a binding argument the way RabbitMQ's
    /// headers exchange decides it.
    ///
    /// RabbitMQ (3.13 and later, `rabbit_exchange_type_headers:match/2`)
    /// compares with Erlang's exact `=:=` the *decoded* values, not the field
    /// types: `rabbit_binary_parser` decodes every integer type (and
    /// timestamps) to an Erlang integer, `f` and `d` to floats, `S` and `x` to
    /// binaries, `t` to an atom. So a signed 32-bit 1 equals an unsigned byte
    /// 1, a longstr equals a byte array with the same bytes, but a longstr
    /// "1" never equals an integer 1, and (`=:=`, not `==`) an integer 1 never
    /// equals a float 1.0. Inside arrays and tables each element keeps its
    /// `{Type, Value}` tag, so there the types must agree too. A shortstr
    /// cannot occur in a RabbitMQ table (`s` is a signed 16-bit integer on
    /// RabbitMQ's wire); Warren treats one as the string it holds.
    ///
    /// Not copied: since 3.13 RabbitMQ's `mc_amqpl:routing_headers` turns a
    /// top-level timestamp header into milliseconds before the comparison
    /// while the binding keeps seconds, so a timestamp binding never matches
    /// the same timestamp header. Here a timestamp is the integer it holds.
    pub fn rabbit_eq(&self, other: &Value) -> bool {
        use Value::*;
        if let (Some(a), Some(b)) = (self.int_term(), other.int_term()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.float_term(), other.float_term()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.binary_term(), other.binary_term()) {
            return a == b;
        }
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (
                Decimal {
                    scale: s1,
                    value: v1,
                },
                Decimal {
                    scale: s2,
                    value: v2,
                },
            ) => s1 == s2 && v1 == v2,
            (Array(a), Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.tagged_eq(y))
            }
            (Table(a), Table(b)) => {
                a.0.len() == b.0.len()
                    && a.0
                        .iter()
                        .zip(&b.0)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.tagged_eq(vb))
            }
            // Both decode to the atom `undefined`.
            (Void, Void) => true,
            _ => false,
        }
    }

    /// Equality of `{Type, Value}` pairs, as nested array and table
    /// elements are compared.
    fn tagged_eq(&self, other: &Value) -> bool {
        self.erlang_tag() == other.erlang_tag() && self.rabbit_eq(other)
    }

    fn int_term(&self) -> Option<i128> {
        Some(match *self {
            Value::Timestamp(v) => v as i128,
            _ => self.as_i64()? as i128,
        })
    }

    fn float_term(&self) -> Option<f64> {
        match *self {
            // Erlang widens a 32-bit float to a double exactly, as `as` does.
            Value::Float(v) => Some(v as f64),
            Value::Double(v) => Some(v),
            _ => None,
        }
    }

    fn binary_term(&self) -> Option<&[u8]> {
        match self {
            Value::ShortString(s) => Some(s.as_bytes()),
            Value::LongString(b) | Value::ByteArray(b) => Some(b),
            _ => None,
        }
    }

    /// The type atom `rabbit_binary_parser` tags the value with.
    fn erlang_tag(&self) -> &'static str {
        match self {
            // No shortstr exists in RabbitMQ tables; see `rabbit_eq`.
            Value::ShortString(_) => "longstr",
            other => other.type_name(),
        }
    }

    /// The value as RabbitMQ prints it with `~tp` in its error texts:
    /// `<<"foo">>` for strings, `23` for integers, `{Type,Value}` pairs in
    /// arrays, `undefined` for void.
    pub fn erlang_term(&self) -> String {
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Float(v) => erlang_float(*v as f64),
            Value::Double(v) => erlang_float(*v),
            Value::Decimal { scale, value } => format!("{{{scale},{value}}}"),
            Value::ShortString(s) => erlang_binary(s.as_bytes()),
            Value::LongString(b) | Value::ByteArray(b) => erlang_binary(b),
            Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|v| format!("{{{},{}}}", v.erlang_tag(), v.erlang_term()))
                    .collect();
                format!("[{}]", items.join(","))
            }
            Value::Table(t) => {
                let items: Vec<String> = t
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{{{},{},{}}}",
                            erlang_binary(k.as_bytes()),
                            v.erlang_tag(),
                            v.erlang_term()
                        )
                    })
                    .collect();
                format!("[{}]", items.join(","))
            }
            Value::Void => "undefined".to_owned(),
            Value::Timestamp(v) => v.to_string(),
            other => other.as_i64().unwrap_or_default().to_string(),
        }
    }
}

/// A binary as Erlang's `~tp` prints it: `<<"text">>` when every byte is a
/// printable character, `<<"café"/utf8>>` when it is printable UTF-8,
/// else the bytes, `<<1,2,255>>`.
pub fn erlang_binary(bytes: &[u8]) -> String {
    fn printable(c: char) -> bool {
        matches!(c, ' '..='~' | '\u{a0}'..='\u{ff}')
            || matches!(
                c,
                '\n' | '\r' | '\t' | '\u{b}' | '\u{c}' | '\u{8}' | '\u{1b}'
            )
    }
    fn quoted(chars: impl Iterator<Item = char>) -> String {
        let mut s = String::new();
        for c in chars {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                '\u{b}' => s.push_str("\\v"),
                '\u{c}' => s.push_str("\\f"),
                '\u{8}' => s.push_str("\\b"),
                '\u{1b}' => s.push_str("\\e"),
                c => s.push(c),
            }
        }
        s
    }
    if bytes.is_empty() {
        return "<<>>".to_owned();
    }
    if bytes.iter().all(|&b| b.is_ascii() && printable(b as char)) {
        return format!("<<\"{}\">>", quoted(bytes.iter().map(|&b| b as char)));
    }
    // Erlang's default printable range is latin1, so UTF-8 text prints as
    // such only when every character is below U+0100.
    if let Ok(s) = std::str::from_utf8(bytes) {
        if s.chars().all(printable) {
            return format!("<<\"{}\"/utf8>>", quoted(s.chars()));
        }
    }
    if bytes.iter().all(|&b| printable(b as char)) {
        return format!("<<\"{}\">>", quoted(bytes.iter().map(|&b| b as char)));
    }
    let nums: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
    format!("<<{}>>", nums.join(","))
}

/// A float as Erlang prints it: always with a fraction (`1.0`, `1.0e20`).
fn erlang_float(v: f64) -> String {
    let s = format!("{v:?}");
    match s.find('e') {
        Some(i) if !s[..i].contains('.') => format!("{}.0{}", &s[..i], &s[i..]),
        _ => s,
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::Decimal { scale, value } => write!(f, "{value}e-{scale}"),
            Value::ShortString(s) => write!(f, "{s}"),
            Value::LongString(b) | Value::ByteArray(b) => {
                write!(f, "{}", String::from_utf8_lossy(b))
            }
            Value::Array(a) => write!(f, "{a:?}"),
            Value::Table(t) => write!(f, "{:?}", t.0),
            Value::Void => write!(f, "void"),
            other => write!(f, "{}", other.as_i64().unwrap_or_default()),
        }
    }
}

/// A field table: ordered (name, value) pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table(pub Vec<(String, Value)>);

impl Table {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an existing entry in place.
    pub fn insert(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}
