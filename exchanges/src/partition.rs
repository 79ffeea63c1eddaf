//! Super stream partitions and their hash routing: the order of a super
//! stream's partitions (the `x-stream-partition-order` binding argument
//! RabbitMQ's `add_super_stream` sets) and the partition a routing key
//! hashes to when the exchange's `x-super-stream-routing` argument is
//! `hash`.
//!
//! The hash is RabbitMQ's stream clients' "hash routing strategy": the
//! 32-bit MurmurHash3 (x86) of the routing key's bytes with seed 104 729,
//! unsigned, modulo the number of partitions, indexing the partitions in
//! their order. So a key reaches the same partition whether a stream
//! protocol client hashed it or Warren did, and one key always reaches one
//! partition while the partitions are unchanged.

use crate::value::{Table, Value};
use crate::ArgumentError;
use std::io::Cursor;

/// The binding argument giving a partition's place in its super stream.
pub const ORDER_ARG: &str = "x-stream-partition-order";
/// The exchange argument choosing how a super stream routes.
pub const ROUTING_ARG: &str = "x-super-stream-routing";
/// The seed RabbitMQ's stream clients hash routing keys with.
pub const SEED: u32 = 104_729;

/// How a direct exchange picks its destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Routing {
    /// By binding key, as any direct exchange (RabbitMQ's super stream).
    #[default]
    Key,
    /// To exactly one partition, by a hash of the routing key.
    Hash,
}

impl Routing {
    /// Reads [`ROUTING_ARG`] (`key` or `hash`; absent means `key`).
    pub fn from_arguments(arguments: &Table) -> Result<Self, ArgumentError> {
        match arguments.get(ROUTING_ARG) {
            None => Ok(Routing::Key),
            Some(v) => match v.as_str() {
                Some("key") => Ok(Routing::Key),
                Some("hash") => Ok(Routing::Hash),
                Some(other) => Err(ArgumentError::InvalidValue {
                    argument: ROUTING_ARG,
                    value: other.to_owned(),
                    expected: "key or hash",
                }),
                None => Err(ArgumentError::InvalidType {
                    argument: ROUTING_ARG,
                    type_name: v.type_name(),
                }),
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Key => "key",
            Routing::Hash => "hash",
        }
    }
}

/// A binding's partition order, if it has one (any integer type).
pub fn order(arguments: &Table) -> Option<i64> {
    arguments
        .get(ORDER_ARG)
        .filter(|v| !matches!(v, Value::Timestamp(_)))
        .and_then(Value::as_i64)
}

/// The index (in partition order) of the partition `key` hashes to, of `n`.
pub fn index_of(key: &str, n: usize) -> usize {
    // Reading from memory cannot fail.
    let h = murmur3::murmur3_32(&mut Cursor::new(key.as_bytes()), SEED).unwrap_or(0);
    (h as usize) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_murmur3_with_the_stream_clients_seed() {
        // MurmurHash3 x86 32-bit reference values for seed 0 pin the
        // function; the seed is RabbitMQ's.
        let h = |s: &str, seed| murmur3::murmur3_32(&mut Cursor::new(s.as_bytes()), seed).unwrap();
        assert_eq!(h("", 0), 0);
        assert_eq!(h("hello", 0), 0x248b_fa47);
        assert_eq!(index_of("hello", 1), 0);
        let n = 3;
        let spread: std::collections::HashSet<usize> =
            (0..100).map(|i| index_of(&format!("k{i}"), n)).collect();
        assert_eq!(spread.len(), 3, "100 keys reach every partition");
        assert_eq!(index_of("k7", n), index_of("k7", n));
    }

    #[test]
    fn routing_argument() {
        let mut t = Table::default();
        assert_eq!(Routing::from_arguments(&t), Ok(Routing::Key));
        t.insert(ROUTING_ARG, Value::LongString(b"hash".to_vec()));
        assert_eq!(Routing::from_arguments(&t), Ok(Routing::Hash));
        t.insert(ROUTING_ARG, Value::LongString(b"nope".to_vec()));
        assert!(Routing::from_arguments(&t).is_err());
        t.insert(ROUTING_ARG, Value::LongInt(1));
        assert!(Routing::from_arguments(&t).is_err());
    }
}
