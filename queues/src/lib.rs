//! What a queue does with messages: ordering, consumers, prefetch, acks.
//!
//! This crate owns a queue's state machine ([`QueueCore`]) and where its
//! ready messages live ([`MessageStore`]). The core is synchronous and does
//! no I/O: the broker wraps a core in a mutex, calls it, and carries the
//! resulting deliveries to connections. The durable store's disk work
//! (index batches, segment writes and syncs, reading paged-out bodies)
//! happens on [`Disk`]'s own threads or the caller's, never under that
//! mutex. Anything time-dependent takes the time as an argument, so tests
//! control the clock.

pub mod disk;
pub mod journal;
pub mod limits;
pub mod message;
pub mod peek;
pub mod priority;
pub mod queue;
pub mod segments;
pub mod store;
pub mod stream;

pub use disk::{Disk, DiskError, DiskStore, LoadedBodies, Loads, PagedBody};
pub use limits::{DeadCounters, DeadMessage, DeadReason, Overflow, QueueLimits, TimeoutAction};
pub use message::{Message, MessageError, QueuedMessage, StoredRef};
pub use peek::{PeekBody, PeekEntry, Peeked};
pub use priority::{level_id, level_ids, PriorityStore, MAX_SUPPORTED_PRIORITY};
pub use queue::{
    Activity, ByteTotals, ChannelLimit, ConsumeError, ConsumerId, ConsumerSpec, Dispatched,
    QueueCore, Unacked,
};
pub use store::{MemoryStore, MessageStore, TakenHead, Tally};
