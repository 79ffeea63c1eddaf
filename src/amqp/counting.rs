//! A socket read half that counts what it reads (RabbitMQ's `recv_oct`
//! and `recv_cnt`), owned by the connection task.
//!
//! The counts are plain integers: the connection task publishes them to
//! its [`NetCounters`](crate::broker::NetCounters) once a tick, so a read
//! costs two additions and no atomic operation.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

pub struct CountingRead<R> {
    inner: R,
    /// Bytes read so far.
    pub octets: u64,
    /// Reads that returned data.
    pub reads: u64,
}

impl<R> CountingRead<R> {
    pub fn new(inner: R) -> Self {
        CountingRead {
            inner,
            octets: 0,
            reads: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.octets += n as u64;
            self.reads += 1;
        }
        res
    }
}
