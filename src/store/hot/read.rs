//! Reading stored blobs (every cache hit) and the temporary files of running fills: pread into
//! recycled buffers, without blocking when the bytes are in the page cache.
//!
//! Memory is bounded: a hit reads large chunks ([`HIT_CHUNK`]) while all large buffers together
//! stay within [`LARGE_BUDGET`], and small ones beyond it; a reader following a fill keeps at most
//! [`POOL_MAX`] buffers of the size it asks for.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::backend::{BlobRead, ReadAt};
use crate::sync::lock;

/// How many bytes a reader of a stored blob reads at once while [`LARGE_BUDGET`] allows: large, for
/// few system calls per blob.
const HIT_CHUNK: usize = 512 * 1024;
/// What it reads at once when the budget is spent: small. A client that stops reading keeps what
/// hyper holds of its response (one chunk) until it is dropped, so a crowd of such clients holds
/// large chunks only up to the budget, and small ones beyond it (see also `http::server`'s queue
/// limit).
const HIT_CHUNK_SMALL: usize = 16 * 1024;
/// The most memory the large buffers of stored-blob readers take together, process-wide: lent to
/// hyper or idle in a reader's pool.
const LARGE_BUDGET: usize = 16 * 1024 * 1024;
/// Bytes of large buffers allocated now (at most [`LARGE_BUDGET`]).
static LARGE_OUT: AtomicUsize = AtomicUsize::new(0);

/// Reads `range` of a stored file, chunk after chunk: what every hit on the local directory serves.
pub(super) struct FileRange {
    file: Arc<File>,
    pos: u64,
    end: u64,
    pool: BufPool,
}

impl FileRange {
    /// A reader of `range` of `file`.
    pub(super) fn new(file: Arc<File>, range: Range<u64>) -> FileRange {
        FileRange { file, pos: range.start, end: range.end, pool: BufPool::hits() }
    }
}

#[async_trait]
impl BlobRead for FileRange {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.pos >= self.end {
            return None;
        }
        let n = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(HIT_CHUNK);
        let read = read_range(&self.file, self.pos, n, &self.pool).await;
        match read {
            Ok(bytes) if bytes.is_empty() => Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the blob file is shorter than its size"))),
            Ok(bytes) => {
                self.pos += bytes.len() as u64;
                Some(Ok(bytes))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Reads the temporary file of a running fill at any offset, for one reader following it.
pub(super) struct FileReadAt {
    file: Arc<File>,
    pool: BufPool,
}

impl FileReadAt {
    /// A reader of `file` with its own buffers.
    pub(super) fn new(file: Arc<File>, pool: BufPool) -> FileReadAt {
        FileReadAt { file, pool }
    }
}

#[async_trait]
impl ReadAt for FileReadAt {
    async fn read_at(&mut self, pos: u64, n: usize) -> io::Result<Bytes> {
        read_range(&self.file, pos, n, &self.pool).await
    }
}

/// Buffers one reader recycles: a chunk handed to hyper comes back when hyper is done with it, so a
/// long transfer allocates a few buffers, not one per chunk.
#[derive(Clone)]
pub(super) struct BufPool {
    free: Arc<Mutex<Vec<Buf>>>,
    /// How many idle buffers it keeps.
    keep: usize,
    /// Whether it serves a stored blob: its buffers are large while [`LARGE_BUDGET`] allows.
    hits: bool,
}

/// How many idle buffers the pool of a reader that follows a fill keeps.
const POOL_MAX: usize = 2;

impl BufPool {
    /// The pool of a reader that follows a fill: buffers of the size asked for.
    pub(super) fn following() -> BufPool {
        BufPool { free: Arc::default(), keep: POOL_MAX, hits: false }
    }

    /// The pool of a reader of a stored blob: one large buffer while the budget allows, else small
    /// ones. It keeps one idle buffer (counted in the budget if large).
    fn hits() -> BufPool {
        BufPool { free: Arc::default(), keep: 1, hits: true }
    }

    /// A buffer for up to `n` bytes: shorter when this pool's buffers are (read less then).
    fn take(&self, n: usize) -> Buf {
        let free = lock(&self.free).pop();
        if !self.hits {
            return free.filter(|b| b.data.len() >= n).unwrap_or_else(|| Buf { data: vec![0; n], counted: 0 });
        }
        match free {
            Some(b) if b.counted > 0 || n <= b.data.len() => b,
            // Small (the budget was spent when it was made): large again as soon as it allows.
            small => match n > HIT_CHUNK_SMALL && reserve_large() {
                true => Buf { data: vec![0; HIT_CHUNK], counted: HIT_CHUNK },
                false => small.unwrap_or_else(|| Buf { data: vec![0; HIT_CHUNK_SMALL], counted: 0 }),
            },
        }
    }
}

/// Count one more large buffer in [`LARGE_OUT`], if [`LARGE_BUDGET`] allows.
fn reserve_large() -> bool {
    LARGE_OUT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
            out.checked_add(HIT_CHUNK).filter(|total| *total <= LARGE_BUDGET)
        })
        .is_ok()
}

/// A reader's buffer; a large one counts in [`LARGE_OUT`] until it is freed.
struct Buf {
    data: Vec<u8>,
    counted: usize,
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.counted > 0 {
            LARGE_OUT.fetch_sub(self.counted, Ordering::AcqRel);
        }
    }
}

/// A pooled buffer lent to hyper as the bytes of one chunk.
struct Pooled {
    buf: Option<Buf>,
    len: usize,
    pool: BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b.data[..self.len])
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool.free);
        if pool.len() < self.pool.keep {
            pool.extend(self.buf.take());
        }
    }
}

/// Up to `n` bytes of `file` from `pos`, copied into a pooled buffer. Bytes a fill just wrote are
/// in the page cache: they are read right here, without blocking (`RWF_NOWAIT`). Only what would
/// wait for the disk goes to the blocking pool.
async fn read_range(file: &Arc<File>, pos: u64, n: usize, pool: &BufPool) -> io::Result<Bytes> {
    let mut buf = pool.take(n);
    let n = n.min(buf.data.len());
    let cached = rustix::io::preadv2(
        &**file,
        &mut [std::io::IoSliceMut::new(&mut buf.data[..n])],
        pos,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    if let Ok(got @ 1..) = cached {
        return Ok(Bytes::from_owner(Pooled { buf: Some(buf), len: got, pool: pool.clone() }));
    }
    let file = file.clone();
    let buf = tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf.data[..n], pos).map(|_| buf))
        .await
        .map_err(io::Error::other)??;
    Ok(Bytes::from_owner(Pooled { buf: Some(buf), len: n, pool: pool.clone() }))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_hit_buffers_keep_to_their_budget() {
        // Pools of as many readers as the budget has large buffers for, and one more.
        let pools: Vec<BufPool> = (0..=LARGE_BUDGET / HIT_CHUNK).map(|_| BufPool::hits()).collect();
        let held: Vec<Buf> = pools.iter().map(|p| p.take(HIT_CHUNK)).collect();
        let large = held.iter().filter(|b| b.counted > 0).count();
        assert!(large <= LARGE_BUDGET / HIT_CHUNK, "{large} large buffers");
        assert!(held.iter().any(|b| b.data.len() == HIT_CHUNK_SMALL), "past the budget, buffers are small");
        assert!(held.iter().all(|b| b.data.len() == HIT_CHUNK || b.data.len() == HIT_CHUNK_SMALL));
        assert!(LARGE_OUT.load(Ordering::Acquire) <= LARGE_BUDGET);
        let small_pool = pools.iter().zip(&held).find(|(_, b)| b.counted == 0).map(|(p, _)| p.clone()).unwrap();
        drop(held);
        // Freed buffers give the budget back, and a reader that was small gets large ones again.
        let again = small_pool.take(HIT_CHUNK);
        assert_eq!((again.data.len(), again.counted), (HIT_CHUNK, HIT_CHUNK));
        // A small read never takes a large buffer.
        assert_eq!(BufPool::hits().take(100).counted, 0);
    }

}
