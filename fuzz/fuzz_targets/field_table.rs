//! The field-table decoders (nesting walker, validator, Warren's and
//! amq-protocol's decoders, AMQPLAIN); see
//! `warren::amqp::fuzzing::field_table`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::amqp::fuzzing::field_table(data);
});
