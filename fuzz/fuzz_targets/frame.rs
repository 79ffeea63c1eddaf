//! The frame decoder: a byte stream read as frames (split across reads),
//! assembled per channel into commands, methods decoded, content headers
//! validated; see `warren::amqp::fuzzing::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::amqp::fuzzing::frames(data);
});
