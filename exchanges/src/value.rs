//! The field-table value model (AMQP 0-9-1 as RabbitMQ extends it).
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
