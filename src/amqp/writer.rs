//! The writer task: owns the socket's write half (a TCP socket's, or a
//! TLS stream's).
//!
//! The connection task sends it whole encoded chunks over a bounded channel
//! (backpressure: a client that does not read stalls only its own
//! connection). It coalesces whatever is queued into one buffer per write
//! system call, and flags that it wrote so heartbeats are only sent on
//! idle connections. It counts what it writes (RabbitMQ's `send_oct` and
//! `send_cnt`). Stream deliveries in a chunk are reported to their queues
//! once the socket took them ([`Chunk::written`]), so a stream reader runs
//! at most a window ahead of what its consumer's socket drains.

use crate::broker::{NetCounters, Queue};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use warren_queues::ConsumerId;

/// Chunks the connection task may queue before it waits for the socket.
pub const WRITER_QUEUE: usize = 64;
const COALESCE_LIMIT: usize = 256 * 1024;

/// Stream deliveries framed into a chunk: (queue, consumer, the seq of one
/// of them, their body bytes), per run of one consumer.
pub type Written = Vec<(Arc<Queue>, ConsumerId, u64, u64)>;

/// What the connection task hands the writer.
pub struct Chunk {
    pub bytes: Bytes,
    /// Reported with [`Queue::stream_written`] after the write.
    pub written: Written,
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Self {
        Chunk {
            bytes,
            written: Vec::new(),
        }
    }
}

/// Tells stream queues that their deliveries reached the socket.
fn report_written(written: &mut Written) {
    for (q, _, seq, bytes) in written.drain(..) {
        q.stream_written(seq, bytes);
    }
}

pub async fn run<W: AsyncWrite + Unpin>(
    mut sock: W,
    mut rx: mpsc::Receiver<Chunk>,
    wrote: Arc<AtomicBool>,
    net: Arc<NetCounters>,
) {
    // Plain running totals, stored (not added) after each write: this task
    // is their only writer.
    let (mut octets, mut writes) = (0u64, 0u64);
    let mut buf: Vec<u8> = Vec::with_capacity(COALESCE_LIMIT);
    let mut written: Written = Vec::new();
    while let Some(first) = rx.recv().await {
        written.extend(first.written);
        let first = first.bytes;
        let res = if first.len() >= COALESCE_LIMIT {
            octets += first.len() as u64;
            sock.write_all(&first).await
        } else {
            buf.clear();
            buf.extend_from_slice(&first);
            while buf.len() < COALESCE_LIMIT {
                match rx.try_recv() {
                    Ok(more) => {
                        buf.extend_from_slice(&more.bytes);
                        written.extend(more.written);
                    }
                    Err(_) => break,
                }
            }
            octets += buf.len() as u64;
            sock.write_all(&buf).await
        };
        // A TLS stream may keep encrypted records it accepted but could
        // not yet send (the socket was full): flush them, or they wait for
        // the next write. A no-op on a TCP socket.
        let res = match res {
            Ok(()) => sock.flush().await,
            e => e,
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "socket write failed");
            break;
        }
        writes += 1;
        net.store_send(octets, writes);
        wrote.store(true, Ordering::Relaxed);
        if !written.is_empty() {
            report_written(&mut written);
        }
    }
    let _ = sock.shutdown().await;
}
