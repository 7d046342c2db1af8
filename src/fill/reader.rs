//! One client following a fill: from the recent window in memory while it keeps up, from what the
//! fill has written when it falls behind, its last byte held back until the digest checked out.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::window::Located;
use super::{Fill, FillState, Sink};
use crate::store::{BlobRead, InUse, ReadAt};
use crate::sync::lock;

/// How many bytes a reader that fell behind a fill reads at once: small, because a crowd of clients
/// follows one fill, and each holds a couple of chunks.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// Reads `[pos, end)` of a blob being filled. It reads only what has been written and holds back
/// the last byte until the digest has been checked, so a client never sees a complete body of
/// unverified content (a range that ends before the last byte would be: it is narrowed to only
/// after the fill's verdict, see [`Fill::verified`]). Once the fill is done and stored, it goes on
/// reading the fill's write (the stored bytes are the same).
pub struct FillReader {
    fill: Arc<Fill>,
    state: watch::Receiver<FillState>,
    /// This reader's position as the fill sees it (a fill passing its bytes through waits for its
    /// slowest reader).
    position: Arc<AtomicU64>,
    /// Whether the fill is still running (its state is watched).
    following: bool,
    pos: u64,
    end: Option<u64>,
    /// Reads what the fill has written, once this reader falls behind the recent window.
    written: Option<Box<dyn ReadAt>>,
    /// Keeps the blob from being evicted while it is read.
    _in_use: InUse,
}

impl Drop for FillReader {
    fn drop(&mut self) {
        // Gone before the fill is told: a fill passing its bytes through that waits for its
        // slowest reader finds this one left, instead of waiting for it until `idle_timeout`.
        self.position = Arc::new(AtomicU64::new(u64::MAX));
        self.fill.advanced.notify_waiters();
    }
}

impl FillReader {
    /// A reader of `[start, end)` of a running fill (`end` = `None`: to the end, whatever it is),
    /// holding the blob in use in `sink` (not evicted once stored) until it is dropped.
    pub fn new<S: Sink + ?Sized>(sink: &Arc<S>, fill: Arc<Fill>, start: u64, end: Option<u64>) -> FillReader {
        let in_use = sink.hold(&fill.digest);
        let state = fill.state.subscribe();
        let position = Arc::new(AtomicU64::new(start));
        lock(&fill.readers).push(Arc::downgrade(&position));
        FillReader { fill, state, position, following: true, pos: start, end, written: None, _in_use: in_use }
    }

    /// Read only `[start, end)`: a reader that followed a fill from its first byte while it
    /// connected, once the size is known (for a range, once the fill is verified).
    pub fn narrow(&mut self, start: u64, end: Option<u64>) {
        self.pos = start;
        self.end = end;
        self.position.store(start, Ordering::Release);
    }

    /// How far this reader may read now: once the fill got past its position (waiting for that);
    /// `None` when it has read all it asked for.
    async fn readable_end(&mut self) -> Option<io::Result<u64>> {
        loop {
            if self.end.is_some_and(|e| self.pos >= e) {
                return None;
            }
            if !self.following {
                return Some(Ok(self.end.unwrap_or(self.pos)));
            }
            let state = self.state.borrow_and_update().clone();
            let limit = match state {
                FillState::Done { size } => {
                    self.end = Some(self.end.map_or(size, |e| e.min(size)));
                    if !self.fill.passing_through() {
                        self.following = false;
                        continue;
                    }
                    size
                }
                FillState::Failed(e) => return Some(Err(io::Error::other(e.to_string()))),
                FillState::Connecting => 0,
                FillState::Running { total: Some(t), written } => written.min(t.saturating_sub(1)),
                FillState::Running { total: None, written } => written,
            };
            let limit = self.end.map_or(limit, |e| limit.min(e));
            if limit > self.pos {
                return Some(Ok(limit));
            }
            if self.state.changed().await.is_err() {
                return Some(Err(io::Error::other("blob fill ended without a result")));
            }
        }
    }

    /// Up to `n` bytes from `pos` of what the fill has written.
    async fn read_written(&mut self, pos: u64, n: usize) -> io::Result<Bytes> {
        if self.written.is_none() {
            let partial = self.fill.partial.get().ok_or_else(|| io::Error::other("the blob fill has written nothing"))?;
            self.written = Some(partial.reader());
        }
        match self.written.as_mut() {
            Some(r) => r.read_at(pos, n).await,
            None => Err(io::Error::other("the blob fill has written nothing")),
        }
    }

    fn advance(&mut self, n: u64) {
        self.pos += n;
        self.position.store(self.pos, Ordering::Release);
        if self.following && self.fill.passing_through() {
            self.fill.advanced.notify_waiters();
        }
    }
}

#[async_trait]
impl BlobRead for FillReader {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        let available = match self.readable_end().await? {
            Ok(available) => available,
            Err(e) => return Some(Err(e)),
        };
        if available <= self.pos {
            return None;
        }
        let located = if self.following { self.fill.locate(self.pos, available) } else { Located::File(available) };
        let available = match located {
            Located::File(limit) => limit,
            Located::Memory(bytes) => {
                self.advance(bytes.len() as u64);
                return Some(Ok(bytes));
            }
            Located::Behind => return Some(Err(io::Error::other("client fell behind while the blob was passed through"))),
        };
        let n = usize::try_from(available - self.pos).unwrap_or(usize::MAX).min(FOLLOW_CHUNK);
        let read = self.read_written(self.pos, n).await;
        if let Ok(bytes) = &read {
            self.advance(bytes.len() as u64);
        }
        Some(read)
    }
}
