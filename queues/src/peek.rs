//! Peeking in two steps, so a queue's lock is never held over disk reads.
//!
//! Step one ([`crate::MessageStore::peek_entries`], under the queue's lock)
//! copies out only what is cheap: the in-memory messages (an `Arc` each)
//! and, for paged-out ones, where their records lie. Step two
//! ([`Peeked::load`], with no lock, on a thread that may block) reads those
//! records. The result is a snapshot: a message acked or purged in between
//! may still be shown, or be skipped when its record went with its segment;
//! a record that cannot be read back intact is skipped, never shown.

use crate::disk::Disk;
use crate::message::{Message, QueuedMessage, StoredRef};
use std::sync::Arc;

/// A peeked message's body: already in memory, or on disk.
#[derive(Debug, Clone)]
pub enum PeekBody {
    Loaded(Arc<Message>),
    Stored(StoredRef),
    /// A transient body paged out of memory ([`Disk::put_transient`]).
    Paged(StoredRef),
}

/// One message a peek found, in queue order.
#[derive(Debug, Clone)]
pub struct PeekEntry {
    pub seq: u64,
    pub redelivered: bool,
    pub body: PeekBody,
}

/// What a peek took from a store; [`Peeked::load`] reads what is on disk.
#[derive(Default)]
pub struct Peeked {
    entries: Vec<PeekEntry>,
    /// Where `Stored` bodies are read from (a store without a disk has none).
    disk: Option<Arc<Disk>>,
}

impl Peeked {
    pub fn new(entries: Vec<PeekEntry>, disk: Option<Arc<Disk>>) -> Self {
        Peeked { entries, disk }
    }

    /// The entries, for a store that gathers several stores' peeks.
    pub fn into_entries(self) -> Vec<PeekEntry> {
        self.entries
    }

    pub fn entries(&self) -> &[PeekEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The messages, each with its place among those peeked (0 for the
    /// first). Paged-out bodies are read here, one record each: blocking
    /// I/O, to be called without the queue's lock (and off an async
    /// worker). Messages whose record is gone are left out.
    pub fn load(self) -> Vec<(usize, QueuedMessage)> {
        let mut out = Vec::with_capacity(self.entries.len());
        for (i, e) in self.entries.into_iter().enumerate() {
            let message = match e.body {
                PeekBody::Loaded(m) => m,
                PeekBody::Stored(r) | PeekBody::Paged(r) => {
                    let Some(disk) = &self.disk else { continue };
                    let read = match e.body {
                        PeekBody::Paged(_) => disk.read_transient(r),
                        _ => disk.read(r),
                    };
                    match read {
                        Ok(m) => Arc::new(m),
                        Err(err) => {
                            // Acked or purged since the snapshot, its
                            // segment deleted: nothing to show.
                            tracing::debug!(seq = e.seq, error = %err, "peeked message gone");
                            continue;
                        }
                    }
                }
            };
            out.push((
                i,
                QueuedMessage {
                    seq: e.seq,
                    message,
                    redelivered: e.redelivered,
                },
            ));
        }
        out
    }
}
