//! A priority queue's store: one inner store per priority level.
//!
//! A queue declared with `x-max-priority` N keeps its ready messages in
//! up to N+1 levels (a message's `priority` property, capped at N, absent
//! counting as 0), each an ordinary [`MessageStore`] created the first
//! time a message of that level arrives: a [`MemoryStore`] for a
//! non-durable queue, a [`DiskStore`] for a durable one. The queue reads
//! from the highest non-empty level, and each level keeps its own order
//! (FIFO by `seq`, a requeued message back at its place), so the whole is
//! RabbitMQ's order: highest priority first, FIFO within a priority, a
//! requeued message at the head of its priority by sequence. Dropping the
//! head (max-length drop-head, expiry) takes the head of the highest
//! level, as `rabbit_priority_queue`'s `drop`/`dropwhile` do.
//!
//! A durable level is a [`DiskStore`] of its own under a derived queue id
//! ([`level_id`]), so the index says which level each message is in and
//! recovery rebuilds the levels without reading a body; each level keeps
//! its own delivered mark (levels deliver in `seq` order, the mark's
//! rule). The queue's memory budget is split evenly between its levels,
//! so the whole stays within it. Levels carry their own TTL bookkeeping
//! (lanes, see [`MessageStore::lane`]), because `seq` order no longer is
//! the queue's order.

use crate::disk::{Disk, DiskStore, LoadedBodies, Loads, RecoveredEntry};
use crate::message::{Message, QueuedMessage, StoredRef};
use crate::peek::Peeked;
use crate::store::{MemoryStore, MessageStore, TakenHead, Tally};
use std::collections::HashMap;
use std::sync::Arc;

/// The highest `x-max-priority` RabbitMQ supports.
pub const MAX_SUPPORTED_PRIORITY: u8 = 255;

/// The index id of level `level` of durable queue `queue`: level 0 is the
/// queue's own id, level L adds L << 48 (queue ids are counters, far
/// below 2^48).
pub fn level_id(queue: u64, level: u8) -> u64 {
    queue | ((level as u64) << 48)
}

/// Every index id a durable priority queue with maximum `max` may use.
pub fn level_ids(queue: u64, max: u8) -> impl Iterator<Item = u64> {
    (0..=max).map(move |l| level_id(queue, l))
}

/// Takes a durable priority queue's entries, by level, out of what
/// [`Disk::recover`] found (given every id of [`level_ids`] as live).
pub fn take_levels(
    recovered: &mut HashMap<u64, Vec<RecoveredEntry>>,
    queue: u64,
    max: u8,
) -> HashMap<u8, Vec<RecoveredEntry>> {
    (0..=max)
        .filter_map(|l| Some((l, recovered.remove(&level_id(queue, l))?)))
        .collect()
}

type MakeLevel = Box<dyn Fn(u8) -> Box<dyn MessageStore> + Send>;

/// See the module documentation.
pub struct PriorityStore {
    max: u8,
    /// By level; `None` until a message of that level arrives.
    levels: Vec<Option<Box<dyn MessageStore>>>,
    /// The levels created, highest first: what every scan walks.
    used: Vec<u8>,
    make: MakeLevel,
    /// The level of each delivered message its level store still holds
    /// (durable levels keep a delivered message's place on disk until it
    /// is settled); memory levels keep nothing after a pop.
    out: HashMap<u64, u8>,
    track_out: bool,
    /// Reads under way: the first seq of each, and its level (a forced
    /// head read and a read-ahead can start at the same seq, so a list).
    loading: Vec<(u64, u8)>,
    disk: Option<Arc<Disk>>,
}

impl PriorityStore {
    /// A non-durable priority queue's store; with `disk`, its levels page
    /// bodies out as [`MemoryStore::paging`] does.
    pub fn memory(max: u8, disk: Option<Arc<Disk>>) -> Self {
        let d = disk.clone();
        let make: MakeLevel = Box::new(move |_| match &d {
            Some(d) => Box::new(MemoryStore::paging(d.clone())),
            None => Box::<MemoryStore>::default(),
        });
        Self::with(max, make, false, disk)
    }

    /// A durable priority queue's store over `disk`, holding what was
    /// recovered for each level (by level), each level's memory budget a
    /// share of `mem_limit`.
    pub fn durable(
        disk: Arc<Disk>,
        queue: u64,
        max: u8,
        mut recovered: HashMap<u8, Vec<RecoveredEntry>>,
        mem_limit: u64,
    ) -> Self {
        let share = mem_limit / (max as u64 + 1);
        let d = disk.clone();
        let make: MakeLevel = Box::new(move |l| {
            Box::new(DiskStore::new(
                d.clone(),
                level_id(queue, l),
                Vec::new(),
                share,
            ))
        });
        let mut s = Self::with(max, make, true, Some(disk.clone()));
        for l in (0..=max).rev() {
            if let Some(entries) = recovered.remove(&l).filter(|e| !e.is_empty()) {
                let store = DiskStore::new(disk.clone(), level_id(queue, l), entries, share);
                s.install(l, Box::new(store));
            }
        }
        s
    }

    fn with(max: u8, make: MakeLevel, track_out: bool, disk: Option<Arc<Disk>>) -> Self {
        PriorityStore {
            max,
            levels: (0..=max).map(|_| None).collect(),
            used: Vec::new(),
            make,
            out: HashMap::new(),
            track_out,
            loading: Vec::new(),
            disk,
        }
    }

    /// The level of a message: its priority, capped at the maximum.
    pub fn level_of(&self, m: &Message) -> u8 {
        m.priority().min(self.max)
    }

    fn install(&mut self, l: u8, store: Box<dyn MessageStore>) {
        self.levels[l as usize] = Some(store);
        let at = self.used.partition_point(|&u| u > l);
        self.used.insert(at, l);
    }

    /// Level `l`'s store, created on first use.
    fn level(&mut self, l: u8) -> &mut dyn MessageStore {
        if self.levels[l as usize].is_none() {
            let store = (self.make)(l);
            self.install(l, store);
        }
        self.levels[l as usize].as_deref_mut().expect("created")
    }

    fn existing(&mut self, l: u8) -> Option<&mut (dyn MessageStore + 'static)> {
        self.levels.get_mut(l as usize)?.as_deref_mut()
    }

    /// The highest level holding ready messages.
    fn head_level(&self) -> Option<u8> {
        self.used.iter().copied().find(|&l| {
            self.levels[l as usize]
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        })
    }

    fn sum(&self, f: impl Fn(&dyn MessageStore) -> u64) -> u64 {
        self.used
            .iter()
            .filter_map(|&l| self.levels[l as usize].as_deref())
            .map(f)
            .sum()
    }

    /// The level a delivered message is held in (for a durable level), or
    /// `None` when no level keeps anything of it.
    fn out_level(&mut self, seq: u64) -> Option<u8> {
        if self.track_out {
            self.out.remove(&seq)
        } else {
            None
        }
    }

    fn note_loads(&mut self, l: u8, loads: Option<Loads>) -> Option<Loads> {
        let loads = loads?;
        if let Some(&(seq, _)) = loads.wanted().first() {
            self.loading.push((seq, l));
        }
        Some(loads)
    }
}

impl MessageStore for PriorityStore {
    fn push(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.message);
        self.level(l).push(m)
    }

    fn push_expiring(&mut self, m: QueuedMessage, deadline: Option<u64>) {
        let l = self.level_of(&m.message);
        self.level(l).push_expiring(m, deadline)
    }

    fn push_paged_at(&mut self, seq: u64, at: StoredRef, size: u32, priority: u8) {
        let l = priority.min(self.max);
        self.level(l).push_paged(seq, at, size)
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        // Never past a level whose head is paged out: that would break
        // the order; the pop waits for its read like any store's.
        let l = self.head_level()?;
        let m = self.existing(l)?.pop()?;
        if self.track_out {
            self.out.insert(m.seq, l);
        }
        Some(m)
    }

    fn take_loads(&mut self) -> Option<Loads> {
        for i in 0..self.used.len() {
            let l = self.used[i];
            let loads = self.existing(l).and_then(|s| s.take_loads());
            if loads.is_some() {
                return self.note_loads(l, loads);
            }
        }
        None
    }

    fn head_load(&mut self) -> Option<Loads> {
        let l = self.head_level()?;
        let loads = self.existing(l)?.head_load();
        self.note_loads(l, loads)
    }

    fn finish_loads(&mut self, loaded: LoadedBodies) {
        let Some(&(seq, _)) = loaded.bodies().first() else {
            return;
        };
        if let Some(i) = self.loading.iter().position(|&(s, _)| s == seq) {
            let (_, l) = self.loading.swap_remove(i);
            if let Some(s) = self.existing(l) {
                s.finish_loads(loaded);
            }
        }
    }

    fn head_seq(&self) -> Option<u64> {
        let l = self.head_level()?;
        self.levels[l as usize].as_ref()?.head_seq()
    }

    fn take_head(&mut self) -> Option<TakenHead> {
        let l = self.head_level()?;
        let t = self.existing(l)?.take_head()?;
        if self.track_out {
            self.out.insert(t.seq, l);
        }
        Some(t)
    }

    fn lane(&self, m: &Message) -> usize {
        self.level_of(m) as usize
    }

    fn head_lane(&self) -> usize {
        self.head_level().unwrap_or(0) as usize
    }

    fn lanes(&self) -> usize {
        self.max as usize + 1
    }

    fn take_recovered_lane_deadlines(&mut self) -> Vec<(usize, u64, u64)> {
        let mut all = Vec::new();
        for i in 0..self.used.len() {
            let l = self.used[i];
            if let Some(s) = self.existing(l) {
                all.extend(
                    s.take_recovered_deadlines()
                        .into_iter()
                        .map(|(seq, d)| (l as usize, seq, d)),
                );
            }
        }
        all
    }

    fn requeue(&mut self, m: QueuedMessage) {
        let l = match self.out_level(m.seq) {
            Some(l) => l,
            None => self.level_of(&m.message),
        };
        self.level(l).requeue(m)
    }

    fn rewrite_disk(&self) -> Option<Arc<Disk>> {
        if self.track_out {
            self.disk.clone()
        } else {
            None
        }
    }

    fn requeue_written(&mut self, m: QueuedMessage, at: StoredRef, deadline: Option<u64>) {
        let l = self.level_of(&m.message);
        self.out_level(m.seq);
        self.level(l).requeue_written(m, at, deadline)
    }

    fn settle(&mut self, seq: u64) {
        if let Some(l) = self.out_level(seq) {
            if let Some(s) = self.existing(l) {
                s.settle(seq);
            }
        }
    }

    fn keep_unacked(&mut self, m: &QueuedMessage) -> bool {
        match self.out.get(&m.seq).copied() {
            Some(l) => self.existing(l).is_none_or(|s| s.keep_unacked(m)),
            None => true,
        }
    }

    fn requeue_stored(&mut self, seq: u64) {
        match self.out_level(seq) {
            Some(l) => self.level(l).requeue_stored(seq),
            None => tracing::error!(seq, "a requeued message has no level"),
        }
    }

    fn set_delivery_count(&mut self, seq: u64, count: u32) {
        // Only durable levels keep counts, and they track where each
        // delivered message lies (`out`); memory levels keep nothing.
        if let Some(l) = self.out.get(&seq).copied() {
            if let Some(s) = self.existing(l) {
                s.set_delivery_count(seq, count);
            }
        }
    }

    fn take_recovered_counts(&mut self) -> Vec<(u64, u32)> {
        let mut all = Vec::new();
        for i in 0..self.used.len() {
            let l = self.used[i];
            if let Some(s) = self.existing(l) {
                all.extend(s.take_recovered_counts());
            }
        }
        all
    }

    fn persistent(&self) -> Option<Tally> {
        // A level keeps persistent bytes only if it is durable; all
        // levels of one queue are the same kind.
        let mut levels = self
            .used
            .iter()
            .filter_map(|&l| self.levels[l as usize].as_deref())
            .map(|s| s.persistent())
            .peekable();
        levels.peek()?;
        levels.sum()
    }

    fn unacked_location(&self, seq: u64) -> Option<StoredRef> {
        let l = *self.out.get(&seq)?;
        self.levels[l as usize].as_ref()?.unacked_location(seq)
    }

    fn purge(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.used.len() {
            let l = self.used[i];
            if let Some(s) = self.existing(l) {
                n += s.purge();
            }
        }
        n
    }

    fn len(&self) -> usize {
        self.sum(|s| s.len() as u64) as usize
    }

    fn is_empty(&self) -> bool {
        self.head_level().is_none()
    }

    fn bytes(&self) -> u64 {
        self.sum(|s| s.bytes())
    }

    fn memory_bytes(&self) -> u64 {
        self.sum(|s| s.memory_bytes())
    }

    fn in_memory(&self) -> Tally {
        self.used
            .iter()
            .filter_map(|&l| self.levels[l as usize].as_deref())
            .map(|s| s.in_memory())
            .sum()
    }

    fn peek_entries(&self, offset: usize, n: usize) -> Peeked {
        let mut skip = offset;
        let mut entries = Vec::new();
        for &l in &self.used {
            let Some(s) = self.levels[l as usize].as_deref() else {
                continue;
            };
            if entries.len() >= n {
                break;
            }
            let len = s.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            let want = n - entries.len();
            let got = s.peek_entries(skip, want);
            let short = got.len() < (len - skip).min(want);
            skip = 0;
            entries.extend(got.into_entries());
            if short {
                // The level stopped at its read budget: so does the peek.
                break;
            }
        }
        Peeked::new(entries, self.disk.clone())
    }

    fn next_seq(&self) -> u64 {
        self.used
            .iter()
            .filter_map(|&l| self.levels[l as usize].as_ref())
            .map(|s| s.next_seq())
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::tests::{tempdir, TempDir};
    use crate::queue::QueueCore;
    use crate::store::tests::{pop_loading, store_contract};
    use crate::QueueLimits;

    /// A message with this priority (`None`: no priority property).
    fn pmsg(seq: u64, body: &str, priority: Option<u8>) -> QueuedMessage {
        let props: Vec<u8> = match priority {
            Some(p) => vec![0x08, 0, p],
            None => vec![0, 0],
        };
        QueuedMessage {
            seq,
            message: Arc::new(Message::new("", "q", &props, body.as_bytes(), false).unwrap()),
            redelivered: false,
        }
    }

    fn persistent(seq: u64, body: &str, priority: u8, disk: &Disk) -> QueuedMessage {
        let mut m = (*pmsg(seq, body, Some(priority)).message).clone();
        m.persistent = true;
        m.set_stored(Some(disk.put_body(&m, 1).unwrap()));
        QueuedMessage {
            seq,
            message: Arc::new(m),
            redelivered: false,
        }
    }

    /// The counts sum the levels: a durable store's persistent messages
    /// across levels, a memory store's none.
    #[test]
    fn levels_sum_persistent_and_in_memory_counts() {
        let dir = tempdir("pcounts");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let t = |count, bytes| Tally { count, bytes };
        let mut s = PriorityStore::durable(disk.clone(), 21, 3, HashMap::new(), 1 << 20);
        for p in 0..=3u8 {
            s.push(persistent(p as u64 + 1, "0123456789", p, &disk));
        }
        s.push(pmsg(5, "abc", Some(2)));
        assert_eq!(s.persistent(), Some(t(4, 40)));
        assert_eq!(s.in_memory(), t(5, 43));
        let m = pop_loading(&mut s).unwrap();
        assert_eq!(m.seq, 4);
        assert_eq!(s.persistent(), Some(t(3, 30)));
        assert_eq!(s.in_memory(), t(4, 33));

        let mut s = PriorityStore::memory(3, None);
        s.push(pmsg(1, "abc", Some(1)));
        s.push(pmsg(2, "abcd", Some(3)));
        assert_eq!(s.persistent(), None);
        assert_eq!(s.in_memory(), t(2, 7));
    }

    fn body(m: &QueuedMessage) -> String {
        String::from_utf8(m.message.body().to_vec()).unwrap()
    }

    fn bodies(v: &[QueuedMessage]) -> Vec<String> {
        v.iter().map(body).collect()
    }

    fn drain(s: &mut dyn MessageStore) -> Vec<String> {
        let v: Vec<QueuedMessage> = std::iter::from_fn(|| pop_loading(s)).collect();
        bodies(&v)
    }

    #[test]
    fn one_priority_is_an_ordinary_store() {
        // Every message at one level: the shared contract holds as is.
        store_contract(
            Box::new(PriorityStore::memory(5, None)),
            &crate::store::tests::msg,
            &|s| s,
        );
    }

    #[test]
    fn highest_first_fifo_within_a_level_capped_and_absent_as_zero() {
        let mut s = PriorityStore::memory(5, None);
        let input = [
            ("a", None),
            ("b", Some(3)),
            ("c", Some(9)),
            ("d", Some(0)),
            ("e", Some(3)),
            ("f", Some(5)),
        ];
        for (i, (b, p)) in input.iter().enumerate() {
            s.push(pmsg(i as u64 + 1, b, *p));
        }
        assert_eq!(s.len(), 6);
        assert_eq!(s.bytes(), 6);
        // 9 counts as 5 (after f? no: c came first, FIFO within 5).
        assert_eq!(bodies(&s.peek(10)), ["c", "f", "b", "e", "a", "d"]);
        assert_eq!(bodies(&s.peek_at(1, 3)), ["f", "b", "e"]);
        assert_eq!(bodies(&s.peek_at(4, 10)), ["a", "d"]);
        assert!(s.peek_at(6, 10).is_empty());
        assert_eq!(s.len(), 6, "peeking takes nothing");
        assert_eq!(drain(&mut s), ["c", "f", "b", "e", "a", "d"]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_requeued_message_returns_to_the_head_of_its_level() {
        let mut s = PriorityStore::memory(9, None);
        s.push(pmsg(1, "low1", Some(1)));
        s.push(pmsg(2, "high1", Some(8)));
        s.push(pmsg(3, "high2", Some(8)));
        s.push(pmsg(4, "low2", Some(1)));
        let h1 = s.pop().unwrap();
        let h2 = s.pop().unwrap();
        let l1 = s.pop().unwrap();
        assert_eq!(
            bodies(&[h1.clone(), h2.clone(), l1.clone()]),
            ["high1", "high2", "low1"]
        );
        s.push(pmsg(5, "high3", Some(8)));
        for m in [l1, h2] {
            s.requeue(QueuedMessage {
                redelivered: true,
                ..m
            });
        }
        let order: Vec<(String, bool)> = std::iter::from_fn(|| s.pop())
            .map(|m| (body(&m), m.redelivered))
            .collect();
        assert_eq!(
            order,
            [
                ("high2".into(), true),
                ("high3".into(), false),
                ("low1".into(), true),
                ("low2".into(), false)
            ]
        );
    }

    #[test]
    fn drop_head_takes_the_highest_priority_head_and_ttl_expires_per_level() {
        // Max-length drop-head drops the head of the highest level, as
        // rabbit_priority_queue's drop does.
        let mut q: QueueCore<&str> = QueueCore::new(Box::new(PriorityStore::memory(3, None)), 10);
        q.set_limits(QueueLimits {
            max_length: Some(2),
            ..Default::default()
        });
        for (b, p) in [("l", 0), ("h", 3), ("m", 1)] {
            q.publish_at(pmsg(0, b, Some(p)).message, 0, None);
            q.trim();
        }
        assert_eq!(bodies(&q.peek(10)), ["m", "l"]);
        // TTLs: a low-priority message with a short TTL behind a
        // high-priority head without one waits for the head, as in a
        // plain queue (RabbitMQ's dropwhile stops at the first head
        // that does not expire); deadlines stay right per level.
        let mut q: QueueCore<&str> = QueueCore::new(Box::new(PriorityStore::memory(3, None)), 10);
        q.publish_at(pmsg(0, "low-ttl", Some(0)).message, 0, Some(10));
        q.publish_at(pmsg(0, "high", Some(3)).message, 0, None);
        q.publish_at(pmsg(0, "mid-ttl", Some(2)).message, 0, Some(50));
        assert_eq!(q.next_expiry(), None, "the head has no TTL");
        let (got, _, h) = q.get(false, 5).unwrap();
        assert_eq!(body(&got), "high");
        assert_eq!(q.next_expiry(), Some(50), "mid is the head now");
        assert_eq!(q.expire(60, 10), (2, false), "mid, then low behind it");
        q.requeue(h);
        assert_eq!(q.message_count(), 1);
        assert_eq!(q.next_expiry(), None);
        // A requeued message takes its deadline back into its own level.
        let mut q: QueueCore<&str> = QueueCore::new(Box::new(PriorityStore::memory(3, None)), 10);
        q.publish_at(pmsg(0, "a", Some(1)).message, 0, Some(100));
        q.publish_at(pmsg(0, "b", Some(2)).message, 0, Some(200));
        let (_, _, hb) = q.get(false, 0).unwrap();
        assert_eq!(q.next_expiry(), Some(100));
        q.requeue(hb);
        assert_eq!(q.next_expiry(), Some(200));
        assert_eq!(q.expire(150, 10), (0, false), "b's deadline, not a's");
        assert_eq!(q.expire(250, 10), (2, false));
    }

    /// A non-durable priority queue past its budget: bodies paged out to
    /// the transient area per level and read back in order, also when a
    /// forced head read and a read-ahead of one level were both under way
    /// (the level must be able to read ahead again afterwards).
    #[test]
    fn paged_out_levels_are_read_back_in_priority_order() {
        let dir = tempdir("priority-paging");
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let mut s = PriorityStore::memory(3, Some(disk.clone()));
        let mut want = Vec::new();
        for i in 0..400u64 {
            let p = if i < 40 { (i % 3) as u8 } else { 3 };
            let m = pmsg(i + 1, &format!("{p}-{i:03}"), Some(p));
            want.push((std::cmp::Reverse(p), i, format!("{p}-{i:03}")));
            let at = disk.put_transient(&m.message, 1).unwrap();
            s.push_paged_at(i + 1, at, m.message.size() as u32, p);
        }
        want.sort();
        assert_eq!((s.len(), s.memory_bytes()), (400, 0));
        assert!(s.pop().is_none(), "the head is on disk");
        let ahead = s.take_loads().expect("a read-ahead of the top level");
        let head = s.head_load().expect("a forced read of the head");
        s.finish_loads(head.read());
        s.finish_loads(ahead.read());
        let mut got = Vec::new();
        while let Some(m) = s.pop() {
            got.push(m);
        }
        assert!(!got.is_empty() && got.len() < 360, "{}", got.len());
        let again = s.take_loads().expect("a second read-ahead");
        s.finish_loads(again.read());
        let mut got = bodies(&got);
        got.extend(drain(&mut s));
        let want: Vec<String> = want.into_iter().map(|(_, _, b)| b).collect();
        assert_eq!(got, want);
    }

    fn reopen(dir: &TempDir, queue: u64, max: u8, mem: u64) -> (Arc<Disk>, PriorityStore) {
        let disk = Disk::open(dir.as_ref(), 1 << 20).unwrap();
        let live = level_ids(queue, max).collect();
        let mut rec = disk.recover(&live).unwrap();
        let levels = take_levels(&mut rec, queue, max);
        (
            disk.clone(),
            PriorityStore::durable(disk, queue, max, levels, mem),
        )
    }

    #[test]
    fn durable_levels_survive_a_restart_and_page_past_the_budget() {
        let dir = tempdir("priority");
        let (disk, mut s) = reopen(&dir, 7, 4, 0);
        for (i, p) in [0u8, 4, 2, 4, 0, 9].into_iter().enumerate() {
            let seq = i as u64 + 1;
            s.push(persistent(seq, &format!("{seq}p{p}"), p, &disk));
        }
        // A budget of 0: every body is on disk only, read back in order.
        assert_eq!(s.memory_bytes(), 0);
        let first = pop_loading(&mut s).unwrap();
        assert_eq!(body(&first), "2p4");
        assert!(!s.keep_unacked(&first), "past the budget: only its place");
        assert!(s.unacked_location(first.seq).is_some());
        let second = pop_loading(&mut s).unwrap();
        s.settle(second.seq);
        disk.flush().unwrap();
        drop((s, disk));
        // Killed here: the unacked one comes back redelivered at the head
        // of its level, the acked one is gone.
        let (disk, mut s) = reopen(&dir, 7, 4, 1 << 20);
        assert_eq!(s.next_seq(), 7);
        let peeked: Vec<(String, bool)> = s
            .peek(10)
            .iter()
            .map(|m| (body(m), m.redelivered))
            .collect();
        assert_eq!(
            peeked,
            [
                ("2p4".into(), true),
                ("6p9".into(), false),
                ("3p2".into(), false),
                ("1p0".into(), false),
                ("5p0".into(), false)
            ]
        );
        // Requeue of a message whose place on disk was kept.
        let m = pop_loading(&mut s).unwrap();
        assert!(s.keep_unacked(&m));
        s.requeue(m);
        assert_eq!(s.purge(), 5);
        disk.flush().unwrap();
        drop((s, disk));
        let (_disk, mut s) = reopen(&dir, 7, 4, 1 << 20);
        assert!(pop_loading(&mut s).is_none(), "purged stays purged");
    }
}
