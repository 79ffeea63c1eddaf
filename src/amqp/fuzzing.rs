//! Entry points that feed untrusted bytes through the wire decoders the way
//! a connection does, for the cargo-fuzz targets (`fuzz/`) and the stable
//! property tests (`tests/decoder_props.rs`). They hold no state; each one
//! returns normally on any input, rejecting what a connection would reject,
//! and panics only when a decoder panics or two of them disagree (an
//! invariant below), which is the bug a fuzzer looks for.

use super::assembler::{Assembler, Command};
use super::codec::{
    method_tables_ok, read_frame, scan_properties, table_may_have_key, FRAME_HEARTBEAT,
};
use crate::broker::properties::{table_nesting_ok, table_valid, BasicProperties, MAX_TABLE_DEPTH};
use bytes::BytesMut;
use std::collections::HashMap;

/// The frame_max the stream is read with: the smallest RabbitMQ allows, so
/// the size check is exercised by short inputs.
pub const FUZZ_FRAME_MAX: usize = 4096;
/// The largest body a content header may announce here (the broker's is
/// `max_message_size`); small, so a fuzz input cannot make the assembler
/// reserve much.
pub const FUZZ_MAX_BODY: u64 = 64 * 1024;

/// A byte stream as a connection reads it after the protocol header:
/// frames (the first byte of `data` picks the read size, so frames also
/// arrive split across reads), assembled per channel into commands, each
/// method's tables checked and decoded, each content header validated.
/// Stops at the first error, where a connection would close.
pub fn frames(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let read_size = 1 + first as usize * 16;
    let mut buf = BytesMut::new();
    let mut channels: HashMap<u16, Assembler> = HashMap::new();
    for chunk in stream.chunks(read_size) {
        buf.extend_from_slice(chunk);
        loop {
            let frame = match read_frame(&mut buf, FUZZ_FRAME_MAX) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            assert!(
                frame.payload.len() + 8 <= FUZZ_FRAME_MAX,
                "frame over frame_max"
            );
            if frame.kind == FRAME_HEARTBEAT {
                continue;
            }
            let assembler = channels.entry(frame.channel).or_default();
            let limits = super::assembler::BodyLimits {
                max_body: FUZZ_MAX_BODY,
                room: FUZZ_MAX_BODY,
            };
            match assembler.frame(frame, limits) {
                Ok(Some(cmd)) => command(&cmd),
                Ok(None) => {}
                Err(_) => return,
            }
        }
    }
}

/// One assembled command: its method decoded by amq-protocol (after the
/// nesting check that guards that recursive decoder, as the connection
/// does), its content header's properties validated.
fn command(cmd: &Command) {
    if method_tables_ok(&cmd.method) {
        let _ = amq_protocol::protocol::parse_class(&cmd.method[..]);
    }
    if let Some(content) = &cmd.content {
        assert!(content.body.len() as u64 == content.header.body_size);
        properties(&content.header.properties);
    }
}

/// A content header's property list, as basic.publish handles it: the
/// in-place validator first; what it accepts must then decode with
/// Warren's own decoder (the management API reads stored messages with
/// it) and must not upset amq-protocol's (routing decodes headers with it).
pub fn properties(props: &[u8]) {
    let Some(summary) = scan_properties(props) else {
        let _ = BasicProperties::decode(props);
        return;
    };
    if let Some((a, b)) = summary.headers {
        assert!(
            a <= b && b <= props.len(),
            "headers range outside the properties"
        );
        let _ = table_may_have_key(&props[a..b], &["CC", "BCC"]);
    }
    if let Some((a, b)) = summary.user_id {
        assert!(
            a <= b && b <= props.len(),
            "user_id range outside the properties"
        );
    }
    let decoded = BasicProperties::decode(props);
    assert!(decoded.is_some(), "validated properties do not decode");
    let decoded = decoded.unwrap_or_default();
    assert_eq!(decoded.headers.is_some(), summary.has_headers);
    assert_eq!(decoded.delivery_mode.unwrap_or(0), summary.delivery_mode);
    let _ = amq_protocol::protocol::basic::parse_properties(props);
}

/// A field table (with its length prefix) through every table decoder: the
/// nesting walker that guards amq-protocol's recursive decoder, the
/// in-place validator, Warren's decoder and encoder, amq-protocol's
/// decoder (connection.start-ok's client properties, method arguments)
/// the key scanner and AMQPLAIN's credentials. What the validator accepts decodes, re-encodes
/// and decodes again to the same table.
pub fn field_table(data: &[u8]) {
    let nesting_ok = table_nesting_ok(data, MAX_TABLE_DEPTH);
    if nesting_ok {
        let _ = amq_protocol::types::parsing::parse_field_table(data);
    }
    if let Some(entries) = data.get(4..) {
        let _ = table_may_have_key(entries, &["CC", "BCC", "x-match"]);
        // AMQPLAIN's response is a table's entries without the prefix.
        let _ = super::sasl::credentials(super::sasl::Mechanism::Amqplain, entries);
    }
    let Some(n) = table_valid(data, MAX_TABLE_DEPTH) else {
        return;
    };
    assert!(n <= data.len(), "table_valid spans past the input");
    assert!(nesting_ok, "a valid table fails the nesting check");
    // As the headers property: flags with only bit 13, then the table.
    let mut props = vec![0x20, 0x00];
    props.extend_from_slice(&data[..n]);
    properties(&props);
    let Some(table) = BasicProperties::decode(&props).and_then(|p| p.headers) else {
        panic!("a valid table does not decode");
    };
    let again = BasicProperties {
        headers: Some(table.clone()),
        ..Default::default()
    }
    .encode();
    let Ok(again) = again else {
        // A key that is not UTF-8 decodes with U+FFFD for each bad byte,
        // and may then be too long to encode again: the one refusal.
        return;
    };
    let twice = BasicProperties::decode(&again).and_then(|p| p.headers);
    // Debug text, so a NaN compares equal to itself.
    assert_eq!(format!("{twice:?}"), format!("{:?}", Some(table)));
    assert_eq!(
        table_valid(&again[2..], MAX_TABLE_DEPTH),
        Some(again.len() - 2)
    );
}
