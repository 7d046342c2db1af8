//! The newest bytes of a fill in memory: the recent window, from which readers close behind the
//! fill read without touching the disk, and the relay window of a fill that passes its bytes
//! through without storing them, which waits for its slowest reader.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use bytes::Bytes;
use tokio::time::Duration;

use super::{Fill, FillError};
use crate::sync::lock;

/// How many of the newest bytes of a fill stay in memory for the readers close behind it.
const RECENT_WINDOW: u64 = 1024 * 1024;
/// How many bytes a fill that passes its bytes through without storing keeps in memory for readers
/// that are behind.
const RELAY_WINDOW: u64 = 8 * 1024 * 1024;


/// The newest bytes of a fill, as they came from upstream: `chunks` start at offset `base`. Readers
/// close behind the fill take their bytes from here without touching the disk; normally only the
/// last [`RECENT_WINDOW`] bytes are kept and a reader further behind reads the file. Once storing
/// stops (the disk failed, or the blob doesn't fit the budget) the file ends at `disk_end`, nothing
/// will be stored, and the window keeps whatever the slowest reader still needs, the fill waiting
/// for it.
#[derive(Default)]
pub(super) struct Recent {
    disk_end: Option<u64>,
    base: u64,
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl Recent {
    pub(super) fn push(&mut self, batch: Vec<Bytes>, len: u64) {
        self.chunks.extend(batch);
        self.len += len;
    }

    /// Drop front chunks while `droppable(end of the chunk)` and more than `keep` bytes remain.
    pub(super) fn trim(&mut self, keep: u64, droppable: impl Fn(u64) -> bool) {
        while let Some(front) = self.chunks.front() {
            let front_end = self.base + front.len() as u64;
            if self.len <= keep || !droppable(front_end) {
                break;
            }
            self.base = front_end;
            self.len -= front.len() as u64;
            self.chunks.pop_front();
        }
    }
}

/// Where a reader's next bytes are.
pub(super) enum Located {
    /// In the file, up to this offset.
    File(u64),
    /// In memory.
    Memory(Bytes),
    /// Nowhere any more: nothing is stored and this reader fell too far behind.
    Behind,
}

impl Fill {
    /// Where the bytes from `pos` (up to `limit`) are.
    pub(super) fn locate(&self, pos: u64, limit: u64) -> Located {
        let r = lock(&self.recent);
        if pos >= r.base {
            let mut off = r.base;
            for chunk in &r.chunks {
                let end = off + chunk.len() as u64;
                if pos < end {
                    let from = (pos - off) as usize;
                    let to = (limit.min(end) - off) as usize;
                    return Located::Memory(chunk.slice(from..to));
                }
                off = end;
            }
        }
        match r.disk_end {
            None => Located::File(limit),
            Some(end) if pos < end => Located::File(limit.min(end)),
            Some(_) => Located::Behind,
        }
    }

    /// Whether the fill passes its bytes through without storing them.
    pub(super) fn passing_through(&self) -> bool {
        lock(&self.recent).disk_end.is_some()
    }

    /// Stop storing: the file ends at `at`, the rest goes to the readers through memory only. A
    /// change of the fill's state follows (it runs on, or it ends), which tells the requests
    /// waiting for its verdict ([`Fill::verified`]).
    pub(super) fn stop_storing(&self, at: u64) {
        lock(&self.recent).disk_end = Some(at);
    }

    /// Whether a new reader can still get every byte from the first: not once a fill that passes
    /// its bytes through has let go of bytes its file doesn't hold.
    pub(super) fn serves_from_start(&self) -> bool {
        let r = lock(&self.recent);
        r.disk_end.is_none_or(|end| r.base <= end)
    }

    /// The lowest position among readers still following, or `None` if none is left.
    pub(super) fn slowest_reader(&self) -> Option<u64> {
        let mut readers = lock(&self.readers);
        readers.retain(|r| r.strong_count() > 0);
        readers.iter().filter_map(Weak::upgrade).map(|p| p.load(Ordering::Acquire)).min()
    }

    /// `batch` (`len` bytes) is in the store too: keep only the newest bytes of it in memory.
    pub(super) fn keep_recent(&self, batch: Vec<Bytes>, len: u64) {
        let mut recent = lock(&self.recent);
        recent.push(batch, len);
        // Everything is in the store too: keep only the newest bytes in memory.
        recent.trim(RECENT_WINDOW, |_| true);
    }

    /// Once nothing is stored, hand `batch` to the readers through memory only. Chunks every reader
    /// has passed (or that the file still holds) are dropped; while more than [`RELAY_WINDOW`] bytes
    /// remain, the fill waits for the slowest reader, for at most `idle_timeout` at a time.
    pub(super) async fn relay(&self, batch: Vec<Bytes>, len: u64, idle_timeout: Duration) -> Result<(), FillError> {
        lock(&self.recent).push(batch, len);
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let Some(slowest) = self.slowest_reader() else {
                return Err(FillError::Disk("the blob is not stored and no client is left to pass it to".into()));
            };
            {
                let mut r = lock(&self.recent);
                let disk_end = r.disk_end.unwrap_or(0);
                r.trim(0, |end| end <= slowest || end <= disk_end);
                if r.len <= RELAY_WINDOW {
                    return Ok(());
                }
            }
            // The window is full of bytes the slowest reader still needs: wait for it.
            if tokio::time::timeout(idle_timeout, advanced).await.is_err() {
                return Err(FillError::Disk("a client stalled while the blob was passed through".into()));
            }
        }
    }
}
