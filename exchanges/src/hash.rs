//! The two hash functions routing uses: a fast map hasher for the word and
//! key indexes, and a stable key hash for the consistent-hash exchange.
//!
//! Routing hashes a few short words per message, so the map hasher is the
//! multiply-rotate scheme of rustc's `FxHasher` rather than std's SipHash
//! (several times slower on short keys). It is not keyed: a client able to
//! create bindings could in principle pick colliding binding keys, which
//! only slows its own exchange; RabbitMQ's ETS tables are unkeyed as well.
//! The stable hash must give the same value in every process and on every
//! platform (a message key has to keep reaching the same queue across
//! restarts), which a randomly seeded std hasher would not.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// rustc-hash's `FxHasher` (v2): fold 8 bytes at a time with a multiply.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weakest; hashbrown picks buckets
        // from them, so rotate the strong high bits down.
        self.hash.rotate_left(26)
    }
}

/// A stable 64-bit hash of `bytes`: FNV-1a, then MurmurHash3's finaliser so
/// that every input bit affects every output bit (jump consistent hashing
/// feeds the value to a linear congruential generator, which needs that).
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fixed() {
        // Pinned values: changing the function would move every key of every
        // consistent-hash exchange to other queues after an upgrade.
        // (Computed independently from the FNV-1a and fmix64 definitions.)
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(stable_hash(b"stocks.nyse.ibm"), 0x4b07_fa37_46f4_2ffa);
    }

    #[test]
    fn fast_hasher_separates_lengths() {
        let h = |b: &[u8]| {
            let mut s = FastHasher::default();
            s.write(b);
            s.finish()
        };
        assert_ne!(h(b"a"), h(b"a\0"));
        assert_ne!(h(b""), h(b"\0"));
    }
}
