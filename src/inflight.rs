//! Blob fills: one upstream download per digest at a time, written to a temporary file, hashed on the
//! way, and committed only when size and digest check out. Any number of readers follow a fill by
//! reading the temporary file up to what has been written, so every waiter gets bytes as they arrive.
//!
//! The fill runs as its own task: a reader that goes away does not disturb it or the other readers.
//! A failed fill fails every reader (their responses are cut) and stores nothing.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method};
use tokio::sync::{watch, Notify};

use crate::oci::{Digest, Hasher, RepositoryName};
use crate::store::{InUse, Store, TempBlob};
use crate::upstream::{content_length, Upstream, UpstreamError};

/// How many bytes of a fill are gathered before one write to disk.
const WRITE_BATCH: usize = 512 * 1024;
/// How many bytes a reader of a stored blob reads at once: small, because a client that stops
/// reading keeps what hyper holds of its response (up to two chunks) until it is dropped, and a
/// crowd of such clients must not add up (see also `http::server`'s queue limit).
const HIT_CHUNK: usize = 16 * 1024;
/// How many bytes a reader that fell behind a fill reads at once: small, because a crowd of clients
/// follows one fill, and each holds a couple of chunks.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// How many of the newest bytes of a fill stay in memory for the readers close behind it.
const RECENT_WINDOW: u64 = 1024 * 1024;
/// How many bytes a fill whose disk failed keeps in memory for readers that are behind.
const RELAY_WINDOW: u64 = 8 * 1024 * 1024;

/// Where a fill stands. Readers watch it.
#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes are arriving; `written` of them are on disk.
    Running {
        /// The size the upstream announced, if it did.
        total: Option<u64>,
        /// Bytes written to the temporary file so far.
        written: u64,
    },
    /// Verified and committed.
    Done {
        /// The blob's size.
        size: u64,
    },
    /// Failed; nothing was stored.
    Failed(FillError),
}

/// Why a fill failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FillError {
    /// The upstream refused or failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The bytes were wrong: digest or size mismatch.
    #[error("{0}")]
    Corrupt(String),
    /// The local disk failed.
    #[error("storing the blob failed: {0}")]
    Disk(String),
}

/// One running fill.
pub struct Fill {
    digest: Digest,
    file: Arc<File>,
    state: watch::Sender<FillState>,
    /// The newest bytes, in memory, for the readers close behind the fill.
    recent: Mutex<Recent>,
    /// Where each reader following the fill is, so that after a disk failure the window keeps what
    /// the slowest still needs.
    readers: Mutex<Vec<Weak<AtomicU64>>>,
    /// Signalled whenever a reader moves on.
    advanced: Notify,
}

/// The newest bytes of a fill, as they came from upstream: `chunks` start at offset `base`. Readers
/// close behind the fill take their bytes from here without touching the disk; normally only the
/// last [`RECENT_WINDOW`] bytes are kept and a reader further behind reads the file. Once the disk
/// fails (full, quota, I/O error) the file ends at `disk_end`, nothing will be stored, and the window
/// keeps whatever the slowest reader still needs, the fill waiting for it.
#[derive(Default)]
struct Recent {
    disk_end: Option<u64>,
    base: u64,
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl Recent {
    fn push(&mut self, batch: Vec<Bytes>, len: u64) {
        self.chunks.extend(batch);
        self.len += len;
    }

    /// Drop front chunks while `droppable(end of the chunk)` and more than `keep` bytes remain.
    fn trim(&mut self, keep: u64, droppable: impl Fn(u64) -> bool) {
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
enum Located {
    /// In the file, up to this offset.
    File(u64),
    /// In memory.
    Memory(Bytes),
    /// Nowhere any more: the disk failed and this reader fell too far behind.
    Behind,
}

impl Fill {
    /// Wait until the upstream has answered: the size it announced, or why it failed.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| !matches!(s, FillState::Connecting)).await.map(|s| s.clone());
        match state {
            Ok(FillState::Running { total, .. }) => Ok(total),
            Ok(FillState::Done { size }) => Ok(Some(size)),
            Ok(FillState::Failed(e)) => Err(e),
            Ok(FillState::Connecting) | Err(_) => Err(FillError::Disk("fill vanished".into())),
        }
    }

    /// Wait for the fill to finish: the blob's size.
    pub async fn finished(&self) -> Result<u64, FillError> {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| matches!(s, FillState::Done { .. } | FillState::Failed(_))).await.map(|s| s.clone());
        match state {
            Ok(FillState::Done { size }) => Ok(size),
            Ok(FillState::Failed(e)) => Err(e),
            _ => Err(FillError::Disk("fill vanished".into())),
        }
    }

    /// Where the bytes from `pos` (up to `limit`) are.
    fn locate(&self, pos: u64, limit: u64) -> Located {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
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

    fn disk_failed(&self) -> bool {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).disk_end.is_some()
    }

    /// The lowest position among readers still following, or `None` if none is left.
    fn slowest_reader(&self) -> Option<u64> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.retain(|r| r.strong_count() > 0);
        readers.iter().filter_map(Weak::upgrade).map(|p| p.load(Ordering::Acquire)).min()
    }

    /// The size, if known yet.
    pub fn total(&self) -> Option<u64> {
        match &*self.state.borrow() {
            FillState::Running { total, .. } => *total,
            FillState::Done { size } => Some(*size),
            _ => None,
        }
    }
}

/// A blob as it can be read now.
pub enum Source {
    /// Stored and verified.
    Stored(File, u64),
    /// Being filled.
    Filling(Arc<Fill>),
}

/// The running fills, by digest.
#[derive(Default)]
pub struct Fills {
    // A std Mutex: held to look up, insert or remove, and to check the store once, never across an
    // await, so "stored or being filled" is decided atomically and a digest is fetched only once.
    running: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Signalled whenever a fill ends.
    ended: Notify,
}

impl Fills {
    /// The running fill for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()
    }

    /// The stored blob, the running fill, or a new fill fetching `digest` from `upstream`.
    pub fn join_or_start(
        self: &Arc<Self>,
        store: &Arc<Store>,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> io::Result<Source> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = running.get(digest) {
            return Ok(Source::Filling(fill.clone()));
        }
        if let Some((file, len)) = stored(store, digest)? {
            return Ok(Source::Stored(file, len));
        }
        let temp = store.blobs.begin()?;
        let (state, _) = watch::channel(FillState::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            file: temp.file().clone(),
            state,
            recent: Mutex::new(Recent::default()),
            readers: Mutex::new(Vec::new()),
            advanced: Notify::new(),
        });
        running.insert(digest.clone(), fill.clone());
        let job = FillJob {
            fills: Arc::clone(self),
            fill: fill.clone(),
            store: Arc::clone(store),
            upstream: Arc::clone(upstream),
            repo: repo.clone(),
            digest: digest.clone(),
        };
        tokio::spawn(job.run(temp));
        Ok(Source::Filling(fill))
    }

    /// How many fills are running.
    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no fill is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until no fill is running (at shutdown: downloads finish and are stored).
    pub async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.is_empty() {
                return;
            }
            ended.await;
        }
    }
}

/// The stored blob for `digest`, if the index and the file agree. A file the index doesn't vouch
/// for is treated as absent (a fill will replace it).
pub fn stored(store: &Store, digest: &Digest) -> io::Result<Option<(File, u64)>> {
    let Some(size) = store.index.blob_size(digest).map_err(io::Error::other)? else { return Ok(None) };
    match store.blobs.open_blob(digest)? {
        Some((file, len)) if len == size => Ok(Some((file, len))),
        _ => {
            // The index names a file that is gone or wrong: forget it.
            store.index.remove_blob(digest).map_err(io::Error::other)?;
            Ok(None)
        }
    }
}

struct FillJob {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    store: Arc<Store>,
    upstream: Arc<Upstream>,
    repo: RepositoryName,
    digest: Digest,
}

impl FillJob {
    async fn run(self, temp: TempBlob) {
        let result = self.download(temp).await;
        let remove = || {
            self.fills.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.digest);
            self.fills.ended.notify_waiters();
        };
        match result {
            Ok((size, stored)) => {
                tracing::info!(digest = %self.digest, size, stored, "blob fetched and verified");
                self.fill.state.send_replace(FillState::Done { size });
                remove();
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "blob fill failed; nothing stored");
                remove();
                self.fill.state.send_replace(FillState::Failed(e));
            }
        }
    }

    /// Fetch, verify and (when it can) store the blob: its size, and whether it was stored.
    async fn download(&self, temp: TempBlob) -> Result<(u64, bool), FillError> {
        let resp = self
            .upstream
            .request(Method::GET, &self.repo, &format!("blobs/{}", self.digest), HeaderMap::new())
            .await?;
        let total = content_length(resp.headers());
        self.fill.state.send_replace(FillState::Running { total, written: 0 });
        let transport = self.upstream.transport();
        let mut body = resp.into_body();
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written: u64 = 0;
        while let Some(first) = transport.next_chunk(&mut body).await? {
            let mut batch = vec![first];
            let mut len = batch[0].len();
            // Take whatever else has already arrived, up to one batch, for a single write.
            while len < WRITE_BATCH {
                match transport.next_chunk(&mut body).now_or_never() {
                    Some(Ok(Some(more))) => {
                        len += more.len();
                        batch.push(more);
                    }
                    Some(Ok(None)) | None => break,
                    Some(Err(e)) => return Err(e.into()),
                }
            }
            if total.is_some_and(|t| written + len as u64 > t) {
                return Err(FillError::Corrupt(format!("upstream sent more than the {} bytes it announced", total.unwrap_or(0))));
            }
            if self.fill.disk_failed() {
                hasher = hash_batch(&batch, hasher).await?;
                self.relay(batch, len as u64).await?;
            } else {
                match write_batch(temp.file().clone(), written, batch.clone(), hasher).await? {
                    Ok(h) => {
                        hasher = h;
                        let mut recent = self.fill.recent.lock().unwrap_or_else(|p| p.into_inner());
                        recent.push(batch, len as u64);
                        // Everything is on disk too: keep only the newest bytes in memory.
                        recent.trim(RECENT_WINDOW, |_| true);
                    }
                    Err(failed) => {
                        let WriteFailed(h, batch, e) = *failed;
                        tracing::warn!(digest = %self.digest, error = %e, "writing the blob failed; passing it through without storing");
                        self.fill.recent.lock().unwrap_or_else(|p| p.into_inner()).disk_end = Some(written);
                        hasher = hash_batch(&batch, h).await?;
                        self.relay(batch, len as u64).await?;
                    }
                }
            }
            written += len as u64;
            self.fill.state.send_modify(|s| {
                if let FillState::Running { written: w, .. } = s {
                    *w = written;
                }
            });
        }
        if let Some(t) = total.filter(|t| *t != written) {
            return Err(FillError::Corrupt(format!("upstream sent {written} of {t} bytes")));
        }
        let got = hasher.finish();
        if got != self.digest {
            return Err(FillError::Corrupt(format!("content has digest {got}, not the requested digest")));
        }
        // Verified: the readers may have the last byte now; making it durable is the store's business.
        self.fill.state.send_replace(FillState::Done { size: written });
        if self.fill.disk_failed() {
            return Ok((written, false));
        }
        if let Some(max) = self.store.max_size.filter(|max| written > *max) {
            // Served to everyone who asked, but never kept: it alone would pass the limit.
            tracing::warn!(digest = %self.digest, size = written, max_size = max, "blob larger than max_size; streamed without storing");
            return Ok((written, false));
        }
        // The content is verified: whatever happens to storing it, the readers get it.
        let store = Arc::clone(&self.store);
        let digest = self.digest.clone();
        let committed = tokio::task::spawn_blocking(move || store.blobs.commit(temp, &digest))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .and_then(|_| self.store.index.put_blob(&self.digest, written).map_err(io::Error::other));
        match committed {
            Ok(()) => {
                self.store.stored(&self.digest);
                Ok((written, true))
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "storing the verified blob failed; served without storing");
                Ok((written, false))
            }
        }
    }

    /// After a disk failure, hand `batch` to the readers through memory only. Chunks every reader
    /// has passed (or that the file still holds) are dropped; while more than [`RELAY_WINDOW`] bytes
    /// remain, the fill waits for the slowest reader.
    async fn relay(&self, batch: Vec<Bytes>, len: u64) -> Result<(), FillError> {
        self.fill.recent.lock().unwrap_or_else(|p| p.into_inner()).push(batch, len);
        loop {
            let advanced = self.fill.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let Some(slowest) = self.fill.slowest_reader() else {
                return Err(FillError::Disk("the disk failed and no client is left to pass the blob to".into()));
            };
            {
                let mut r = self.fill.recent.lock().unwrap_or_else(|p| p.into_inner());
                let disk_end = r.disk_end.unwrap_or(0);
                r.trim(0, |end| end <= slowest || end <= disk_end);
                if r.len <= RELAY_WINDOW {
                    return Ok(());
                }
            }
            // The window is full of bytes the slowest reader still needs: wait for it.
            if tokio::time::timeout(self.upstream.config().idle_timeout, advanced).await.is_err() {
                return Err(FillError::Disk("a client stalled while the blob was passed through".into()));
            }
        }
    }
}

/// Feed `batch` to `hasher` off the async threads.
async fn hash_batch(batch: &[Bytes], mut hasher: Hasher) -> Result<Hasher, FillError> {
    let batch = batch.to_vec();
    tokio::task::spawn_blocking(move || {
        for b in &batch {
            hasher.update(b);
        }
        hasher
    })
    .await
    .map_err(|e| FillError::Disk(e.to_string()))
}

/// A batch that could not be written: the hasher without it, the batch, and why.
struct WriteFailed(Hasher, Vec<Bytes>, io::Error);

/// Write `batch` at `offset`, then feed it to `hasher`, off the async threads. A write failure gives
/// back the hasher (without this batch) and the batch, so the fill can pass it through instead.
async fn write_batch(
    file: Arc<File>,
    offset: u64,
    batch: Vec<Bytes>,
    mut hasher: Hasher,
) -> Result<Result<Hasher, Box<WriteFailed>>, FillError> {
    tokio::task::spawn_blocking(move || {
        let mut off = offset;
        for b in &batch {
            if let Err(e) = file.write_all_at(b, off) {
                return Err(Box::new(WriteFailed(hasher, batch, e)));
            }
            off += b.len() as u64;
        }
        for b in &batch {
            hasher.update(b);
        }
        Ok(hasher)
    })
    .await
    .map_err(|e| FillError::Disk(e.to_string()))
}

/// Buffers one reader recycles: a chunk handed to hyper comes back when hyper is done with it, so a
/// long transfer allocates a few buffers, not one per chunk.
#[derive(Clone)]
pub struct BufPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    /// How many idle buffers it keeps.
    keep: usize,
}

/// How many idle buffers the pool of a reader that follows a fill keeps.
const POOL_MAX: usize = 2;

impl BufPool {
    /// A pool that keeps up to `keep` idle buffers. A reader of a stored blob keeps none: idle
    /// buffers would add to what a client that stops reading holds; its small chunks come from
    /// (and go back to) the allocator instead.
    fn keeping(keep: usize) -> BufPool {
        BufPool { free: Arc::default(), keep }
    }

    fn take(&self, n: usize) -> Vec<u8> {
        let mut buf = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        buf.resize(n, 0);
        buf
    }
}

/// A pooled buffer lent to hyper as the bytes of one chunk.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.pool.keep {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Up to `n` bytes of `file` from `pos`, copied into a pooled buffer. Bytes a fill just wrote are
/// in the page cache: they are read right here, without blocking (`RWF_NOWAIT`). Only what would
/// wait for the disk goes to the blocking pool.
async fn read_range(file: &Arc<File>, pos: u64, n: usize, pool: &BufPool) -> io::Result<Bytes> {
    let mut buf = pool.take(n);
    let cached = rustix::io::preadv2(
        &**file,
        &mut [std::io::IoSliceMut::new(&mut buf[..n])],
        pos,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    if let Ok(got @ 1..) = cached {
        return Ok(Bytes::from_owner(Pooled { buf, len: got, pool: pool.clone() }));
    }
    let file = file.clone();
    let buf = tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf[..n], pos).map(|_| buf))
        .await
        .map_err(io::Error::other)??;
    Ok(Bytes::from_owner(Pooled { buf, len: n, pool: pool.clone() }))
}

/// Reads `[pos, end)` of a blob that is stored or being filled. While a fill runs it reads only what is
/// on disk and holds back the last byte until the digest has been checked, so a client never sees a
/// complete body of unverified content.
pub struct BlobReader {
    file: Arc<File>,
    pos: u64,
    end: Option<u64>,
    /// The fill this reader follows, while it runs.
    fill: Option<Following>,
    /// How much to read at once.
    chunk: usize,
    /// Recycled buffers the bytes are read into.
    pool: BufPool,
    /// Keeps the blob from being evicted while it is read.
    _in_use: InUse,
}

/// A reader's link to the fill it follows: the fill, its state, and the reader's position as the
/// fill sees it.
struct Following {
    fill: Arc<Fill>,
    state: watch::Receiver<FillState>,
    position: Arc<AtomicU64>,
}

impl BlobReader {
    /// A reader of `[start, end)` of a stored file.
    pub fn stored(store: &Store, digest: &Digest, file: File, start: u64, end: u64) -> BlobReader {
        let in_use = store.usage.hold(digest);
        store.usage.touch(digest);
        BlobReader {
            file: Arc::new(file),
            pos: start,
            end: Some(end),
            fill: None,
            chunk: HIT_CHUNK,
            pool: BufPool::keeping(0),
            _in_use: in_use,
        }
    }

    /// A reader of `[start, end)` of a running fill (`end` = `None`: to the end, whatever it is).
    pub fn filling(store: &Store, fill: Arc<Fill>, start: u64, end: Option<u64>) -> BlobReader {
        let in_use = store.usage.hold(&fill.digest);
        let state = fill.state.subscribe();
        let position = Arc::new(AtomicU64::new(start));
        fill.readers.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&position));
        BlobReader {
            file: fill.file.clone(),
            pos: start,
            end,
            fill: Some(Following { fill, state, position }),
            chunk: FOLLOW_CHUNK,
            pool: BufPool::keeping(POOL_MAX),
            _in_use: in_use,
        }
    }

    /// The next chunk; `None` at the end. An error means the body must be cut.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        let available = loop {
            if self.end.is_some_and(|e| self.pos >= e) {
                return None;
            }
            let Some(following) = &mut self.fill else {
                break self.end.unwrap_or(self.pos);
            };
            let state = following.state.borrow_and_update().clone();
            let limit = match state {
                FillState::Done { size } => {
                    self.end = Some(self.end.map_or(size, |e| e.min(size)));
                    if !following.fill.disk_failed() {
                        self.fill = None;
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
                break limit;
            }
            if following.state.changed().await.is_err() {
                return Some(Err(io::Error::other("blob fill ended without a result")));
            }
        };
        if available <= self.pos {
            return None;
        }
        let available = match self.fill.as_ref().map(|f| f.fill.locate(self.pos, available)) {
            None => available,
            Some(Located::File(limit)) => limit,
            Some(Located::Memory(bytes)) => {
                self.advance(bytes.len() as u64);
                return Some(Ok(bytes));
            }
            Some(Located::Behind) => {
                return Some(Err(io::Error::other("client fell behind while the blob was passed through")))
            }
        };
        let n = (available - self.pos).min(self.chunk as u64) as usize;
        let pos = self.pos;
        let read = read_range(&self.file, pos, n, &self.pool).await;
        if let Ok(bytes) = &read {
            self.advance(bytes.len() as u64);
        }
        Some(read)
    }

    fn advance(&mut self, n: u64) {
        self.pos += n;
        if let Some(f) = &self.fill {
            f.position.store(self.pos, Ordering::Release);
            if f.fill.disk_failed() {
                f.fill.advanced.notify_waiters();
            }
        }
    }
}
