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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
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
    /// Acknowledged offsets at or above `committed` (acks of a member's
    /// deliveries may come out of order).
    acked: BTreeSet<u64>,
    /// Ranges `[start, end)` a filtering member's reader passed over (they
    /// count as acknowledged), by start.
    skipped: BTreeMap<u64, u64>,
    /// Member slots in arrival order.
    pub members: Vec<u32>,
    /// The member reading this stream for the group.
    pub active: Option<u32>,
    /// This stream's index in the super stream the group consumes
    /// (members then share the partitions), if it consumes one.
    pub partition: Option<u32>,
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
        self.acked.insert(offset);
        self.advance()
    }

    /// Records that the reader passed over `[lo, hi)` (its filter did not
    /// want them); whether `committed` moved.
    pub fn skip(&mut self, lo: u64, hi: u64) -> bool {
        if hi <= self.committed || lo >= hi {
            return false;
        }
        self.skipped.insert(lo.max(self.committed), hi);
        self.advance()
    }

    /// Moves `committed` over the acknowledged and skipped offsets that
    /// follow it.
    fn advance(&mut self) -> bool {
        let before = self.committed;
        loop {
            if self.acked.first() == Some(&self.committed) {
                self.acked.pop_first();
                self.committed += 1;
            } else if let Some((_, hi)) = self
                .skipped
                .first_key_value()
                .filter(|(lo, _)| **lo <= self.committed)
                .map(|(lo, hi)| (*lo, *hi))
            {
                self.skipped.pop_first();
                self.committed = self.committed.max(hi);
                while self.acked.first().is_some_and(|a| *a < self.committed) {
                    self.acked.pop_first();
                }
            } else {
                break;
            }
        }
        self.committed != before
    }

    /// A member starts reading at `offset` (its explicit `x-stream-offset`,
    /// or where retention moved the committed offset): acks from there on.
    pub fn restart_at(&mut self, offset: u64) {
        if offset != self.committed {
            self.committed = offset;
            self.acked.clear();
            self.skipped.clear();
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
}
