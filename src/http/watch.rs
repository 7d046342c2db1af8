//! A client connection's transport, watched for clients that hold it without using it: one that
//! sends nothing after connecting (`header_timeout`), one that sits idle between requests
//! (`keepalive_timeout`), and one that stops reading a response (`client_idle_timeout`, a write
//! stall). A watched transport that times out returns an error, which ends the connection and drops
//! the response it was sending, with whatever it held.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Connections;

/// The requests of one connection that are in progress: from the call of the service until the
/// response body is done or dropped. A connection with none is idle.
#[derive(Default)]
pub struct Busy {
    running: AtomicUsize,
    started: AtomicBool,
}

impl Busy {
    /// A request starts; it ends when the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> BusyGuard {
        self.started.store(true, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self.clone())
    }

    fn idle(&self) -> bool {
        self.running.load(Ordering::Acquire) == 0
    }
}

/// One request in progress on its connection.
pub struct BusyGuard(Arc<Busy>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A transport with the connection limits applied.
pub struct Watched<T> {
    io: T,
    limits: Connections,
    busy: Arc<Busy>,
    /// Armed while a read waits on an idle connection.
    idle: Timer,
    /// Armed while a write can't make progress.
    stall: Timer,
}

/// A reusable deadline; `armed` is false while no deadline runs.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Timer {
    fn new() -> Timer {
        Timer { sleep: Box::pin(tokio::time::sleep_until(Instant::now())), armed: false }
    }

    /// Start the deadline unless it runs already; whether it has passed.
    fn expired(&mut self, after: std::time::Duration, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.sleep.as_mut().reset(Instant::now() + after);
            self.armed = true;
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<T> Watched<T> {
    /// Watch `io` with `limits`; `busy` tells whether a request is in progress.
    pub fn new(io: T, limits: Connections, busy: Arc<Busy>) -> Watched<T> {
        Watched { io, limits, busy, idle: Timer::new(), stall: Timer::new() }
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stall.expired(self.limits.client_idle_timeout, cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }
}

/// Poll `$poll` (a write, flush or shutdown of the inner transport) under the stall deadline.
macro_rules! watched_write {
    ($self:ident, $cx:ident, $poll:expr) => {{
        let this = $self.get_mut();
        match $poll(Pin::new(&mut this.io), &mut *$cx) {
            Poll::Pending => {
                ready!(this.stalled($cx))?;
                Poll::Pending
            }
            done => {
                this.stall.armed = false;
                done
            }
        }
    }};
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                if !this.busy.idle() {
                    this.idle.armed = false;
                    return Poll::Pending;
                }
                // Before its first request a connection gets the (shorter) header timeout.
                let limit = if this.busy.started.load(Ordering::Relaxed) {
                    this.limits.keepalive_timeout
                } else {
                    this.limits.header_timeout
                };
                if this.idle.expired(limit, cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection")));
                }
                Poll::Pending
            }
            done => {
                this.idle.armed = false;
                done
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        watched_write!(self, cx, |io: Pin<&mut T>, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        watched_write!(self, cx, |io: Pin<&mut T>, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        watched_write!(self, cx, |io: Pin<&mut T>, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        watched_write!(self, cx, |io: Pin<&mut T>, cx| io.poll_shutdown(cx))
    }
}
