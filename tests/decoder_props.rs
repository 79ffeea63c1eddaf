//! Property tests for the wire decoders, the stable counterpart of the
//! cargo-fuzz targets in `fuzz/` (which need nightly): arbitrary and
//! frame-shaped bytes never panic the frame decoder, the field-table
//! decoders or the content-header property validator (through the same
//! `warren::amqp::fuzzing` entry points the fuzz targets call), and
//! generated field tables, frames and publishes round-trip through the
//! encoders and decoders, Warren's and amq-protocol's alike.
//!
//! `PROPTEST_CASES` raises the case count (256 by default), e.g.
//! `PROPTEST_CASES=100000 cargo test --test decoder_props --release`.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{basic, parse_class, AMQPClass};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::ShortString;
use bytes::BytesMut;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use warren::amqp::assembler::Assembler;
use warren::amqp::codec::{
    read_frame, scan_properties, write_content, write_method, FRAME_BODY, FRAME_END, FRAME_HEADER,
    FRAME_HEARTBEAT, FRAME_METHOD,
};
use warren::amqp::fuzzing;
use warren::broker::properties::{table_valid, BasicProperties, MAX_TABLE_DEPTH};
use warren_exchanges::{Table, Value};

// ---- strategies ----

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i8>().prop_map(Value::ShortShortInt),
        any::<u8>().prop_map(Value::ShortShortUInt),
        any::<i16>().prop_map(Value::ShortInt),
        any::<u16>().prop_map(Value::ShortUInt),
        any::<i32>().prop_map(Value::LongInt),
        any::<u32>().prop_map(Value::LongUInt),
        any::<i64>().prop_map(Value::LongLongInt),
        // From bits: NaNs and infinities too.
        any::<u32>().prop_map(|b| Value::Float(f32::from_bits(b))),
        any::<u64>().prop_map(|b| Value::Double(f64::from_bits(b))),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| Value::Decimal { scale, value }),
        text(20).prop_map(Value::ShortString),
        vec(any::<u8>(), 0..40).prop_map(Value::LongString),
        any::<u64>().prop_map(Value::Timestamp),
        vec(any::<u8>(), 0..40).prop_map(Value::ByteArray),
        Just(Value::Void),
    ]
}

/// Keys unique and sorted at every level, as amq-protocol's table (a
/// BTreeMap) keeps them, so its re-encoding can be compared byte for byte.
fn table_of(value: BoxedStrategy<Value>) -> impl Strategy<Value = Table> {
    btree_map(text(30), value, 0..8).prop_map(|m| Table(m.into_iter().collect()))
}

fn value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                table_of(inner).prop_map(Value::Table),
            ]
        })
        .boxed()
}

fn table() -> impl Strategy<Value = Table> {
    table_of(value())
}

fn short() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text(40))
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        (short(), short(), proptest::option::of(table())),
        (any::<Option<u8>>(), any::<Option<u8>>(), short(), short()),
        (short(), short(), any::<Option<u64>>(), short()),
        (short(), short(), short()),
    )
        .prop_map(|(a, b, c, d)| BasicProperties {
            content_type: a.0,
            content_encoding: a.1,
            headers: a.2,
            delivery_mode: b.0,
            priority: b.1,
            correlation_id: b.2,
            reply_to: b.3,
            expiration: c.0,
            message_id: c.1,
            timestamp: c.2,
            kind: c.3,
            user_id: d.0,
            app_id: d.1,
            cluster_id: d.2,
        })
}

/// One frame's bytes: a known type (or any byte), a small channel, and a
/// payload that often starts like a real method or content header, with
/// the right frame end most of the time; sizes stay within frame_max.
fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        4 => Just(FRAME_METHOD),
        3 => Just(FRAME_HEADER),
        3 => Just(FRAME_BODY),
        1 => Just(FRAME_HEARTBEAT),
        1 => any::<u8>(),
    ];
    let prefix = prop_oneof![
        Just(vec![]),
        Just(vec![0, 60, 0, 40]),                  // basic.publish
        Just(vec![0, 50, 0, 10]),                  // queue.declare
        Just(vec![0, 40, 0, 10]),                  // exchange.declare
        Just(vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0]), // a content header
    ];
    let end = prop_oneof![9 => Just(FRAME_END), 1 => any::<u8>()];
    (kind, 0u16..3, prefix, vec(any::<u8>(), 0..200), end).prop_map(
        |(kind, channel, mut payload, tail, end)| {
            payload.extend_from_slice(&tail);
            let mut f = vec![kind];
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(&payload);
            f.push(end);
            f
        },
    )
}

/// `t` as it reads back: tables carry no short strings in RabbitMQ's
/// dialect, so they come back as long strings.
fn normalized(t: &Table) -> Table {
    fn value(v: &Value) -> Value {
        match v {
            Value::ShortString(s) => Value::LongString(s.clone().into_bytes()),
            Value::Array(items) => Value::Array(items.iter().map(value).collect()),
            Value::Table(t) => Value::Table(normalized(t)),
            v => v.clone(),
        }
    }
    Table(t.iter().map(|(k, v)| (k.to_owned(), value(v))).collect())
}

/// Debug text compares NaN equal to itself (the bytes are compared too).
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Feeds `stream` to read_frame `chunk` bytes at a time; all frames, and
/// whether the stream ended on a frame boundary.
fn read_all(stream: &[u8], chunk: usize, frame_max: usize) -> Vec<warren::amqp::codec::Frame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        while let Some(f) = read_frame(&mut buf, frame_max).expect("a well-formed frame") {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

// ---- never panic ----

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(data in vec(any::<u8>(), 0..4096)) {
        fuzzing::frames(&data);
    }

    #[test]
    fn frame_shaped_bytes_never_panic_the_frame_decoder(
        read in any::<u8>(),
        frames in vec(frame_bytes(), 0..12),
    ) {
        let mut data = vec![read];
        data.extend(frames.concat());
        fuzzing::frames(&data);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_field_table_decoders(data in vec(any::<u8>(), 0..1024)) {
        fuzzing::field_table(&data);
        // With a length prefix that fits, so the entries get parsed.
        let mut t = (data.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&data);
        fuzzing::field_table(&t);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_property_validator(
        flags in any::<u16>(),
        data in vec(any::<u8>(), 0..512),
    ) {
        fuzzing::properties(&data);
        let mut p = flags.to_be_bytes().to_vec();
        p.extend_from_slice(&data);
        fuzzing::properties(&p);
    }

    /// An encoded table with one byte changed: mostly still table-shaped,
    /// so the decoders' deeper paths see damage.
    #[test]
    fn damaged_tables_never_panic_the_decoders(
        t in table(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let props = BasicProperties { headers: Some(t), ..Default::default() }.encode().unwrap();
        let mut bytes = props[2..].to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        fuzzing::field_table(&bytes);
        let mut props = props;
        props[2 + i] = byte;
        fuzzing::properties(&props);
    }
}

// ---- round trips ----

proptest! {
    #[test]
    fn field_tables_round_trip(t in table()) {
        let props = BasicProperties { headers: Some(t.clone()), ..Default::default() }
            .encode()
            .unwrap();
        let bytes = &props[2..];
        prop_assert_eq!(table_valid(bytes, MAX_TABLE_DEPTH), Some(bytes.len()));
        let back = BasicProperties::decode(&props).and_then(|p| p.headers);
        prop_assert!(same(&back, &Some(normalized(&t))), "{:?} != {:?}", back, t);
        fuzzing::field_table(bytes);

        // amq-protocol (client properties, method arguments, routing's
        // header decode) reads the same bytes, and writes them back.
        let (rest, ft) = parse_field_table(bytes).expect("amq-protocol parses it");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(ft.inner().len(), t.0.len());
        let ctx = gen_field_table(&ft)(WriteContext::from(Vec::new())).expect("re-encodes");
        prop_assert_eq!(&ctx.into_inner().0[..], bytes);
    }

    #[test]
    fn frames_round_trip(
        frames in vec(
            (
                prop_oneof![Just(FRAME_METHOD), Just(FRAME_HEADER), Just(FRAME_BODY)],
                any::<u16>(),
                vec(any::<u8>(), 0..600),
            ),
            0..10,
        ),
        chunk in 1usize..2000,
    ) {
        let mut stream = Vec::new();
        for (kind, channel, payload) in &frames {
            stream.push(*kind);
            stream.extend_from_slice(&channel.to_be_bytes());
            stream.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            stream.extend_from_slice(payload);
            stream.push(FRAME_END);
        }
        let back = read_all(&stream, chunk, 4096);
        prop_assert_eq!(back.len(), frames.len());
        for (f, (kind, channel, payload)) in back.iter().zip(&frames) {
            prop_assert_eq!((f.kind, f.channel, &f.payload[..]), (*kind, *channel, &payload[..]));
        }
    }

    /// basic.publish, its content header and body frames, as the broker
    /// writes them (the same layout a client sends), read back through the
    /// frame decoder and the assembler: the same method, byte-exact
    /// properties that decode to what was encoded, the same body.
    #[test]
    fn publishes_round_trip(
        props in properties(),
        exchange in text(40),
        routing_key in text(60),
        (mandatory, immediate) in any::<(bool, bool)>(),
        body in vec(any::<u8>(), 0..20_000),
        channel in 1u16..,
        frame_max in prop_oneof![Just(4096usize), Just(8192), Just(131_072)],
        chunk in 1usize..10_000,
    ) {
        let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ShortString::from(exchange),
            routing_key: ShortString::from(routing_key),
            mandatory,
            immediate,
        }));
        let encoded = props.encode().unwrap();
        let mut out = BytesMut::new();
        write_method(&mut out, channel, method.clone());
        write_content(&mut out, channel, &encoded, &body, frame_max);

        let mut assembler = Assembler::default();
        let mut commands = Vec::new();
        for f in read_all(&out, chunk, frame_max) {
            prop_assert_eq!(f.channel, channel);
            prop_assert!(f.payload.len() + 8 <= frame_max);
            if let Some(c) = assembler.frame(
                f,
                warren::amqp::assembler::BodyLimits {
                    max_body: u64::MAX,
                    room: u64::MAX,
                },
            ).expect("in order") {
                commands.push(c);
            }
        }
        prop_assert_eq!(commands.len(), 1);
        let cmd = commands.pop().unwrap();
        let (_, parsed) = parse_class(&cmd.method[..]).expect("the method parses");
        prop_assert_eq!(parsed, method);
        let content = cmd.content.expect("publish carries content");
        prop_assert_eq!(&content.header.properties[..], &encoded[..]);
        prop_assert_eq!(&content.body[..], &body[..]);
        let summary = scan_properties(&content.header.properties).expect("valid properties");
        prop_assert_eq!(summary.delivery_mode, props.delivery_mode.unwrap_or(0));
        let mut want = props.clone();
        want.headers = props.headers.as_ref().map(normalized);
        let back = BasicProperties::decode(&content.header.properties);
        prop_assert!(same(&back, &Some(want)));
        fuzzing::properties(&content.header.properties);
        let mut stream = vec![0u8];
        stream.extend_from_slice(&out);
        if frame_max == fuzzing::FUZZ_FRAME_MAX {
            fuzzing::frames(&stream);
        }
    }
}
