//! Consumer groups on a stream, Warren's extension to RabbitMQ's AMQP
//! 0-9-1 streams (consumer argument [`GROUP_KEY`]): the broker keeps each
//! group's committed offset (every offset below it acknowledged by a
//! member), durably, in the stream's directory, and one member of a group
//! reads at a time (single active consumer). When the reading member
//! goes, the next one (in arrival order) takes over from the committed
//! offset, so at most the unacknowledged tail is delivered again
//! (at-least-once). A group over a super stream (its members name it with
//! `x-super-stream`) has one such record per partition, each partition's
//! stream keeping its own; which member reads which partition is decided
//! by `StreamQueue::rebalance`.

use rangemap::RangeSet;
use std::collections::HashMap;
use std::io::{self, Write};
use std::ops::Range;
use std::path::Path;

/// The consumer argument naming a member's group.
pub const GROUP_KEY: &str = "x-stream-group";
/// The file in a stream's directory holding its groups' offsets (JSON).
const FILE: &str = "groups.json";

/// One group's progress and members.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// Every offset below this was acknowledged.
    pub committed: u64,
    /// Offsets above `committed` that count as acknowledged: acked (a
    /// member's acks may come out of order) or passed over by a filtering
    /// reader. Kept as coalesced, disjoint ranges, so its size is the
    /// number of gaps (unacknowledged deliveries, at most the reader's
    /// prefetch, plus one), not how far the reader ran ahead of one
    /// early delivery left unacknowledged; and the committed offset moves
    /// over a contiguous run in one step (O(log n)).
    done: RangeSet<u64>,
    /// Member slots in arrival order.
    pub members: Vec<u32>,
    /// The member reading this stream for the group.
    pub active: Option<u32>,
    /// This stream's index in the super stream the group consumes
    /// (members then share the partitions), if it consumes one.
    pub partition: Option<u32>,
    /// The timestamp (ms) the group started reading from, while nothing
    /// was delivered and acknowledged yet: `committed` is then the index
    /// entry before the timestamp's chunk, and a reader handed the stream
    /// still passes over the chunks older than it.
    pub since: Option<i64>,
}

impl Group {
    /// A group with no members yet, everything below `committed` acked.
    pub fn at(committed: u64) -> Group {
        Group {
            committed,
            ..Group::default()
        }
    }

    /// Records the ack of `offset`; whether `committed` moved.
    pub fn ack(&mut self, offset: u64) -> bool {
        if offset < self.committed {
            return false;
        }
        self.mark(offset..offset.saturating_add(1))
    }

    /// Records that the reader passed over `[lo, hi)` (its filter did not
    /// want them); whether `committed` moved.
    pub fn skip(&mut self, lo: u64, hi: u64) -> bool {
        if hi <= self.committed || lo >= hi {
            return false;
        }
        self.mark(lo.max(self.committed)..hi)
    }

    /// Adds `range` (at or above `committed`, not empty) to the done
    /// offsets and moves `committed` over the run that follows it.
    fn mark(&mut self, range: Range<u64>) -> bool {
        self.done.insert(range);
        // Touching ranges are coalesced: the first range, if it starts at
        // the committed offset, is the whole contiguous run after it.
        let Some(run) = self
            .done
            .first()
            .filter(|r| r.start <= self.committed)
            .cloned()
        else {
            return false;
        };
        self.done.remove(run.clone());
        self.committed = run.end;
        self.since = None;
        true
    }

    /// How many separate ranges above `committed` are kept.
    #[cfg(test)]
    pub fn ranges(&self) -> usize {
        self.done.len()
    }

    /// A member starts reading at `offset` (its explicit `x-stream-offset`,
    /// or where retention moved the committed offset): acks from there on.
    pub fn restart_at(&mut self, offset: u64) {
        if offset != self.committed {
            self.committed = offset;
            self.done.clear();
            self.since = None;
        }
    }
}

/// A stream's groups.
#[derive(Debug, Default)]
pub(super) struct Groups {
    pub map: HashMap<String, Group>,
    /// A committed offset changed since the last write.
    pub dirty: bool,
}

impl Groups {
    /// The groups recorded in `dir` (none if it has no file).
    pub fn load(dir: &Path) -> io::Result<Groups> {
        let bytes = match std::fs::read(dir.join(FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Groups::default()),
            Err(e) => return Err(e),
        };
        let saved: HashMap<String, u64> = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let map = saved
            .into_iter()
            .map(|(name, committed)| (name, Group::at(committed)))
            .collect();
        Ok(Groups { map, dirty: false })
    }

    /// The committed offsets to write, clearing `dirty`.
    pub fn snapshot(&mut self) -> HashMap<String, u64> {
        self.dirty = false;
        self.map
            .iter()
            .map(|(n, g)| (n.clone(), g.committed))
            .collect()
    }
}

/// Writes the offsets durably: a temporary file, fsynced, renamed over
/// the old one, and the directory fsynced (blocking: the group-commit
/// thread calls it).
pub(super) fn store(dir: &Path, offsets: &HashMap<String, u64>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(offsets).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_offset_moves_over_contiguous_acks_only() {
        let mut g = Group {
            committed: 10,
            ..Group::default()
        };
        assert!(!g.ack(12));
        assert!(!g.ack(5), "below the committed offset: nothing");
        assert!(g.ack(10));
        assert_eq!(g.committed, 11);
        assert!(g.ack(11));
        assert_eq!(g.committed, 13, "12 was acked before");
        g.restart_at(20);
        assert!(!g.ack(21));
        assert!(g.ack(20));
        assert_eq!(g.committed, 22);
    }

    #[test]
    fn offsets_a_filter_passed_over_count_as_acknowledged() {
        let mut g = Group::at(0);
        assert!(!g.skip(1, 5), "0 is not acked yet");
        assert!(!g.ack(6));
        assert!(g.ack(0));
        assert_eq!(g.committed, 5, "0 acked, 1..5 skipped");
        assert!(g.ack(5));
        assert_eq!(g.committed, 7, "6 was acked before");
        assert!(g.skip(7, 100));
        assert_eq!(g.committed, 100);
        assert!(!g.skip(10, 50), "below the committed offset");
    }

    #[test]
    fn out_of_order_acks_and_skips_interleaved_move_the_committed_offset_over_the_prefix() {
        let mut g = Group::at(0);
        assert!(!g.ack(3));
        assert!(!g.skip(5, 8));
        assert!(!g.ack(1));
        assert_eq!(g.ranges(), 3, "1, 3 and 5..8 apart");
        assert!(!g.ack(4));
        assert_eq!(g.ranges(), 2, "3..8 merged");
        assert!(!g.skip(2, 3));
        assert_eq!(g.ranges(), 1, "1..8 merged");
        assert_eq!(g.committed, 0, "0 is still unacknowledged");
        assert!(g.ack(0));
        assert_eq!((g.committed, g.ranges()), (8, 0));
        // A skip overlapping the committed offset and acks inside it.
        assert!(!g.ack(12));
        assert!(g.skip(6, 11));
        assert_eq!((g.committed, g.ranges()), (11, 1));
        assert!(!g.ack(12), "already counted");
        assert!(g.ack(11));
        assert_eq!((g.committed, g.ranges()), (13, 0));
    }

    #[test]
    fn one_early_unacknowledged_delivery_keeps_one_range_however_far_the_reader_runs() {
        let mut g = Group::at(0);
        for o in 1..1_000_000 {
            assert!(!g.ack(o));
        }
        for lo in (1_000_000..2_000_000).step_by(10) {
            assert!(!g.skip(lo, lo + 10));
        }
        assert_eq!((g.committed, g.ranges()), (0, 1));
        assert!(g.ack(0));
        assert_eq!((g.committed, g.ranges()), (2_000_000, 0));
    }

    #[test]
    fn gaps_are_kept_one_range_each() {
        let mut g = Group::at(0);
        // Every third offset left unacknowledged: one range per gap.
        for o in (0..300).filter(|o| o % 3 != 0) {
            g.ack(o);
        }
        assert_eq!((g.committed, g.ranges()), (0, 100));
        for o in (0..300).step_by(3) {
            g.ack(o);
        }
        assert_eq!((g.committed, g.ranges()), (300, 0));
    }

    proptest::proptest! {
        /// Against a model that keeps every offset: the same committed
        /// offset after any mix of acks and skips, in any order.
        #[test]
        fn ranges_agree_with_a_set_of_every_offset(
            ops in proptest::collection::vec((0u64..200, 0u64..6, proptest::bool::ANY), 1..200)
        ) {
            let mut g = Group::at(0);
            let mut model = std::collections::BTreeSet::new();
            let mut committed = 0u64;
            for (lo, len, is_ack) in ops {
                let hi = if is_ack { lo + 1 } else { lo + len };
                if is_ack { g.ack(lo); } else { g.skip(lo, hi); }
                model.extend(lo..hi);
                while model.contains(&committed) {
                    committed += 1;
                }
                proptest::prop_assert_eq!(g.committed, committed);
                let gaps = model.range(committed..).fold((0, None), |(n, prev), &o| {
                    (if prev == Some(o - 1) { n } else { n + 1 }, Some(o))
                }).0;
                proptest::prop_assert_eq!(g.ranges(), gaps);
            }
        }
    }
}
