//! The HTTP listeners' connections (management API and Prometheus): how
//! many are served at once, and how long an idle or unauthenticated one
//! may stay open.
//!
//! [`BoundedListener`] takes a permit of a shared semaphore before each
//! accept, so past the bound clients wait in the listen backlog and the
//! HTTP ports never hold more descriptors than configured (AMQP keeps the
//! rest). Each accepted socket is a [`GuardedIo`] that fails its pending
//! read or write once a deadline passes:
//! - until a request passes authentication ([`Peer::authenticated`]), a
//!   fixed deadline from accept, however busy the client keeps it;
//! - after that, only while no request is being handled: the idle
//!   timeout from the last byte read or written.
//!
//! hyper closes a connection whose I/O fails, so nothing else is needed.

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The HTTP connection limits, shared by every HTTP listener of a server.
#[derive(Debug)]
pub struct HttpLimits {
    /// One permit per connection served.
    pub connections: Arc<Semaphore>,
    pub idle_timeout: Duration,
    pub unauthenticated_timeout: Duration,
}

/// What the connection's requests tell its socket.
#[derive(Debug, Default)]
struct Activity {
    /// Requests being handled now.
    busy: AtomicUsize,
    /// A request passed authentication (or needed none).
    authenticated: AtomicBool,
}

/// The peer of an HTTP connection: its address, and a handle through which
/// the request layers tell the socket what they saw. The connect info of
/// every request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    activity: Arc<Activity>,
}

impl Peer {
    /// A request of this connection passed authentication: from now on
    /// only the idle timeout applies.
    pub fn authenticated(&self) {
        self.activity.authenticated.store(true, Ordering::Relaxed);
    }
}

/// Counts the requests being handled on their connection (no timeout
/// applies to an authenticated connection meanwhile); with `open` (the
/// Prometheus listener, which has no login), every request counts as
/// authenticated.
pub async fn track(open: bool, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let Some(peer) = peer else {
        return next.run(req).await;
    };
    if open {
        peer.authenticated();
    }
    struct Busy(Arc<Activity>);
    impl Drop for Busy {
        fn drop(&mut self) {
            self.0.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
    peer.activity.busy.fetch_add(1, Ordering::Relaxed);
    let _busy = Busy(peer.activity.clone());
    next.run(req).await
}

/// A listener (plain TCP, or TLS after the handshake) that serves at most
/// the configured number of HTTP connections at once and wraps each in a
/// [`GuardedIo`]. The inner listener deals with failed accepts (axum's
/// `TcpListener` backs off; the HTTPS one too).
pub struct BoundedListener<L> {
    listener: L,
    limits: Arc<HttpLimits>,
}

impl<L> BoundedListener<L> {
    pub fn new(listener: L, limits: Arc<HttpLimits>) -> Self {
        BoundedListener { listener, limits }
    }
}

impl<L> axum::serve::Listener for BoundedListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = GuardedIo<L::Io>;
    type Addr = Peer;

    async fn accept(&mut self) -> (GuardedIo<L::Io>, Peer) {
        let permit = self
            .limits
            .connections
            .clone()
            .acquire_owned()
            .await
            .expect("the HTTP connection semaphore is never closed");
        let (io, addr) = self.listener.accept().await;
        let activity = Arc::new(Activity::default());
        let now = Instant::now();
        let io = GuardedIo {
            io,
            activity: activity.clone(),
            limits: self.limits.clone(),
            accepted: now,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now)),
            _permit: permit,
        };
        (io, Peer { addr, activity })
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.listener.local_addr()?,
            activity: Arc::default(),
        })
    }
}

/// An accepted HTTP socket with its deadlines (see the module docs); holds
/// its listener permit until dropped.
pub struct GuardedIo<I> {
    io: I,
    activity: Arc<Activity>,
    limits: Arc<HttpLimits>,
    accepted: Instant,
    /// When a byte was last read or written.
    last: Instant,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<I> GuardedIo<I> {
    /// When the connection is closed if nothing changes; `None` while an
    /// authenticated connection has a request in hand.
    fn deadline(&self) -> Option<Instant> {
        if !self.activity.authenticated.load(Ordering::Relaxed) {
            return Some(self.accepted + self.limits.unauthenticated_timeout);
        }
        if self.activity.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.last + self.limits.idle_timeout)
    }

    /// Called when the socket has nothing for us: an error once the
    /// deadline has passed, else the timer wakes us at it.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline()?;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP connection idle or unauthenticated for too long",
            )),
            Poll::Pending => None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A client that does not read its answers times out too.
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
