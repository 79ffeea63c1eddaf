//! The content-header property validator and the property decoders it
//! guards; see `warren::amqp::fuzzing::properties`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::amqp::fuzzing::properties(data);
});
