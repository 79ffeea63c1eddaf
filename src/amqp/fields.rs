//! Conversions between amq-protocol's field tables and the broker's
//! [`Table`], at the edge of the protocol layer.

use amq_protocol::types::{AMQPValue, FieldTable};
use warren_exchanges::{Table, Value};

pub fn to_table(t: &FieldTable) -> Table {
    Table(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), to_value(v)))
            .collect(),
    )
}

pub fn to_value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::ShortShortInt(*i),
        AMQPValue::ShortShortUInt(i) => Value::ShortShortUInt(*i),
        AMQPValue::ShortInt(i) => Value::ShortInt(*i),
        AMQPValue::ShortUInt(i) => Value::ShortUInt(*i),
        AMQPValue::LongInt(i) => Value::LongInt(*i),
        AMQPValue::LongUInt(i) => Value::LongUInt(*i),
        AMQPValue::LongLongInt(i) => Value::LongLongInt(*i),
        AMQPValue::Float(f) => Value::Float(*f),
        AMQPValue::Double(f) => Value::Double(*f),
        AMQPValue::DecimalValue(d) => Value::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => Value::ShortString(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::LongString(s.as_bytes().to_vec()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_value).collect()),
        AMQPValue::Timestamp(t) => Value::Timestamp(*t),
        AMQPValue::FieldTable(t) => Value::Table(to_table(t)),
        AMQPValue::ByteArray(b) => Value::ByteArray(b.as_slice().to_vec()),
        AMQPValue::Void => Value::Void,
    }
}
