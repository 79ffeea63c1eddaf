//! Asking connections what they hold unacked: the management API's
//! unacked view of a queue.
//!
//! Each unacked delivery's one record lives with the channel holding it
//! (a queue keeps only totals), so the view asks every connection: the
//! handler sends an [`UnackedQuery`] to each connection's bounded mailbox
//! (registered with its [`super::ConnectionInfo`]), and each connection
//! task answers between frames from its channels. A full mailbox or a
//! connection that is gone is skipped; the handler waits for the answers
//! with a deadline.

use super::queue::Queue;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use warren_queues::Message;

/// Queries a connection's mailbox holds before more are refused (the
/// management API then skips the connection).
pub const MAILBOX: usize = 8;

/// "The `n` oldest deliveries of `queue` you hold."
#[derive(Debug)]
pub struct UnackedQuery {
    /// Compared by identity.
    pub queue: Arc<Queue>,
    pub n: usize,
    pub reply: oneshot::Sender<Vec<HeldDelivery>>,
}

/// One unacked delivery as a connection reports it.
#[derive(Debug, Clone)]
pub struct HeldDelivery {
    pub seq: u64,
    /// `None` when the record keeps only the place on disk (see
    /// [`Queue::unacked_locations`]).
    pub message: Option<Arc<Message>>,
    /// The channel holding it.
    pub channel: u16,
    pub delivery_tag: u64,
    /// The consumer's tag; `None` for basic.get.
    pub consumer_tag: Option<String>,
    /// Ms since the epoch.
    pub delivered_at: u64,
    pub redelivered: bool,
}

/// The sending side of a connection's mailbox.
pub type QuerySender = mpsc::Sender<UnackedQuery>;
/// The connection task's side.
pub type QueryReceiver = mpsc::Receiver<UnackedQuery>;

/// A new mailbox.
pub fn mailbox() -> (QuerySender, QueryReceiver) {
    mpsc::channel(MAILBOX)
}
