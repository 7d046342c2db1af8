//! Blob fills: one upstream download per digest at a time, written through the storage seam
//! ([`crate::store::BlobBackend`]), hashed on the way, and committed only when size and digest check
//! out. Any number of readers follow a fill ([`FillReader`]) by reading what has been written so far
//! ([`crate::store::PartialBlob`]), so every waiter gets bytes as they arrive. Reading blobs that
//! are stored is the store's business (`Store::read_blob`).
//!
//! A reader of the whole blob gets its last byte only once the digest has checked out, so wrong
//! bytes end in a cut connection, never a complete body. A range can't be checked by its client,
//! so a request for one waits for the fill's verdict instead ([`Fill::verified`]) and then reads
//! the verified file; a fill that passes its bytes through never has them there.
//!
//! The fill runs as its own task: a reader that goes away does not disturb it or the other readers.
//! A failed fill fails every reader (their responses are cut) and stores nothing. The task owns a
//! `FillGuard`: however the fill ends (also by a panic or by its task being cancelled) the fill
//! leaves the map and its readers are told, so no later request waits for a fetch that is gone.
//!
//! Fills keep to a disk budget and a time budget. Whether a blob can be stored is decided up front
//! from its announced size (`max_size`, and room among all temporaries and in free space, see
//! [`crate::store::TempBudget`]); a body without a length is stored batch by batch until the budget
//! runs out. A blob that can't be stored is passed through to its readers from memory and ends
//! when they do. A fill nobody reads any more goes on only while it gets a minimum rate over a
//! window, and for a limited time ([`FillBudget`]); at shutdown it is abandoned once the drain time
//! is over ([`Fills::drain`]).
//!
//! Fills are shared per upstream and digest, never across upstreams, so a hostile or stalled upstream
//! hurts only its own requests. Within an upstream a request may join a fill for another repository;
//! if that repository is refused, the request starts its own ([`Join::OwnRepository`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use hyper::body::Incoming;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::FillBudget;
use crate::oci::{Digest, Hasher, RepositoryName};
use crate::singleflight::CallDied;
use crate::store::{BlobRead, BlobWrite, InUse, PartialBlob, ReadAt, Reservation, Store, VerifiedFill};
use crate::sync::lock;
use crate::upstream::{RateLimit, Transport, Upstream, UpstreamError};

/// How many bytes of a fill are gathered before one write to disk.
const WRITE_BATCH: usize = 512 * 1024;
/// How many bytes a reader that fell behind a fill reads at once: small, because a crowd of clients
/// follows one fill, and each holds a couple of chunks.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// How many of the newest bytes of a fill stay in memory for the readers close behind it.
const RECENT_WINDOW: u64 = 1024 * 1024;
/// How many bytes a fill that passes its bytes through without storing keeps in memory for readers
/// that are behind.
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
        /// Bytes written to the store so far.
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

/// Why a fill failed. A fill that died without a result (it panicked or its task was cancelled)
/// fails with `Upstream(UpstreamError::Interrupted(_))`, like any shared call.
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
    /// The shared bucket failed while the blob was read from it.
    #[error("reading the blob from the bucket failed: {0}")]
    Bucket(String),
}

impl FillError {
    /// Whether the upstream refused this fill's repository (404, 401, 403): an answer about that
    /// repository, which says nothing about the same blob in another repository.
    pub fn is_refusal(&self) -> bool {
        matches!(self, FillError::Upstream(UpstreamError::Status { status, .. }) if matches!(status.as_u16(), 401 | 403 | 404))
    }

    /// Who is to blame: as the upstream error says, the upstream for wrong bytes, regcache for
    /// its disk.
    pub fn blame(&self) -> crate::oci::Blame {
        use crate::oci::Blame;
        match self {
            FillError::Upstream(u) => u.blame(),
            FillError::Corrupt(_) => Blame::Upstream,
            FillError::Disk(_) | FillError::Bucket(_) => Blame::Internal,
        }
    }
}

/// One running fill.
pub struct Fill {
    digest: Digest,
    /// The repository it fetches from, as the upstream names it (on the upstream of its
    /// [`FillKey`]).
    repo: RepositoryName,
    /// What has been written so far, for readers behind the recent window; set before the fill
    /// runs, unless it passes its bytes through from the start.
    partial: OnceLock<Arc<dyn PartialBlob>>,
    state: watch::Sender<FillState>,
    /// The newest bytes, in memory, for the readers close behind the fill.
    recent: Mutex<Recent>,
    /// Where each reader following the fill is, so that after a disk failure the window keeps what
    /// the slowest still needs.
    readers: Mutex<Vec<Weak<AtomicU64>>>,
    /// Signalled whenever a reader moves on.
    advanced: Notify,
    /// The rate-limit headers of the upstream response, set before the fill starts running.
    rate_limit: OnceLock<RateLimit>,
    /// Whether the bytes come from the shared bucket rather than the upstream; set before the fill
    /// starts running.
    from_bucket: OnceLock<bool>,
}

/// The newest bytes of a fill, as they came from upstream: `chunks` start at offset `base`. Readers
/// close behind the fill take their bytes from here without touching the disk; normally only the
/// last [`RECENT_WINDOW`] bytes are kept and a reader further behind reads the file. Once storing
/// stops (the disk failed, or the blob doesn't fit the budget) the file ends at `disk_end`, nothing
/// will be stored, and the window keeps whatever the slowest reader still needs, the fill waiting
/// for it.
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
    /// Nowhere any more: nothing is stored and this reader fell too far behind.
    Behind,
}

impl Fill {
    /// A fill of `digest` from `repo` (as the upstream names it), still connecting.
    fn new(digest: Digest, repo: RepositoryName) -> Arc<Fill> {
        let (state, _) = watch::channel(FillState::Connecting);
        Arc::new(Fill {
            digest,
            repo,
            partial: OnceLock::new(),
            state,
            recent: Mutex::new(Recent::default()),
            readers: Mutex::new(Vec::new()),
            advanced: Notify::new(),
            rate_limit: OnceLock::new(),
            from_bucket: OnceLock::new(),
        })
    }

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

    /// Wait for this fill's verdict, for a request that may be answered with verified bytes only
    /// (a range: a client can't check part of a blob against its digest, so it would keep wrong
    /// bytes): [`Verdict::Verified`] once the digest checked out, with the bytes in the fill's file;
    /// [`Verdict::PassingThrough`] as soon as the fill passes its bytes through (they will never be
    /// in the file to be read once verified); why the fill failed otherwise. As bounded as the fill:
    /// its guard gives it a verdict however it ends. Dropped, it disturbs nothing.
    pub async fn verified(&self) -> Result<Verdict, FillError> {
        let mut rx = self.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Failed(e) => return Err(e),
                _ if self.passing_through() => return Ok(Verdict::PassingThrough),
                FillState::Done { size } => return Ok(Verdict::Verified(size)),
                FillState::Connecting | FillState::Running { .. } => {}
            }
            // The fill's state changes after every batch, and right after it stops storing, so
            // passing through is noticed as soon as it begins. The sender lives in `self`: it
            // can't be dropped while this waits.
            if rx.changed().await.is_err() {
                return Err(FillError::Disk("fill vanished".into()));
            }
        }
    }

    /// Where the bytes from `pos` (up to `limit`) are.
    fn locate(&self, pos: u64, limit: u64) -> Located {
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
    fn passing_through(&self) -> bool {
        lock(&self.recent).disk_end.is_some()
    }

    /// Stop storing: the file ends at `at`, the rest goes to the readers through memory only. A
    /// change of the fill's state follows (it runs on, or it ends), which tells the requests
    /// waiting for its verdict ([`Fill::verified`]).
    fn stop_storing(&self, at: u64) {
        lock(&self.recent).disk_end = Some(at);
    }

    /// Whether a new reader can still get every byte from the first: not once a fill that passes
    /// its bytes through has let go of bytes its file doesn't hold.
    fn serves_from_start(&self) -> bool {
        let r = lock(&self.recent);
        r.disk_end.is_none_or(|end| r.base <= end)
    }

    /// The lowest position among readers still following, or `None` if none is left.
    fn slowest_reader(&self) -> Option<u64> {
        let mut readers = lock(&self.readers);
        readers.retain(|r| r.strong_count() > 0);
        readers.iter().filter_map(Weak::upgrade).map(|p| p.load(Ordering::Acquire)).min()
    }

    /// The repository this fill fetches from, as its upstream names it.
    pub fn repository(&self) -> &RepositoryName {
        &self.repo
    }

    /// Whether this fill fetches from `repo` on `upstream` (`alpine` is `library/alpine` on Docker
    /// Hub). Fills are shared per upstream, so only the repository can differ.
    pub fn fetches_from(&self, upstream: &Upstream, repo: &RepositoryName) -> bool {
        self.repo == upstream.upstream_name(repo)
    }

    /// Whether anything still watches this fill (a request waiting for it to start, or a reader).
    pub fn waiters(&self) -> usize {
        self.state.receiver_count()
    }

    /// How many readers follow this fill (each request that joined it has one).
    pub fn readers(&self) -> usize {
        lock(&self.readers).iter().filter(|r| r.strong_count() > 0).count()
    }

    /// The rate-limit headers of the upstream response (none until it has answered).
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit.get().cloned().unwrap_or_default()
    }

    /// Whether the fill reads the shared bucket (the upstream is not asked).
    pub fn from_bucket(&self) -> bool {
        self.from_bucket.get().copied().unwrap_or(false)
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

/// What a request that may be answered with verified bytes only learns from a fill
/// ([`Fill::verified`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verified, with this size; every byte is in the fill's file, where a [`FillReader`] reads
    /// it at once.
    Verified(u64),
    /// The fill passes its bytes through without storing them (the blob doesn't fit the disk
    /// budget, or a write failed): they can only be followed as they arrive.
    PassingThrough,
}

/// A blob as it can be read now.
pub enum Source {
    /// Stored and verified, with this size (as the index has it).
    Stored(u64),
    /// Being filled.
    Filling(Arc<Fill>),
}

/// How many fills the map holds at most. Its keys are digests clients choose, so it is capped: past
/// this many, a fill runs unshared (its one request still gets the blob).
const MAX_SHARED_FILLS: usize = 4096;

/// Fills are shared per upstream (its name) and digest. Never across upstreams: a fill from a
/// hostile or stalled upstream must not hold up or fail a request for another one.
type FillKey = (String, Digest);

/// Which running fill a request may join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Any fill of the blob from the request's upstream, whatever its repository.
    Any,
    /// Only a fill from the request's own repository: a fill from another one was refused.
    OwnRepository,
}

/// The running fills, by upstream and digest.
pub struct Fills {
    // A std Mutex: held to look up, insert or remove, and to check the store once, never across an
    // await, so "stored or being filled" is decided atomically and a digest is fetched only once
    // per upstream.
    // Bounded: at most MAX_SHARED_FILLS fills in all; each is removed by its FillGuard however the
    // fill ends. A key holds more than one fill only while a request refetches a blob another
    // repository was refused, or a fill passing its bytes through has let go of its first ones
    // (each request starts at most two fills).
    running: Mutex<HashMap<FillKey, Vec<Arc<Fill>>>>,
    /// Fills running outside the map (it was full).
    unshared: AtomicU64,
    /// Signalled whenever a fill ends.
    ended: Notify,
    /// The time budget of fills nobody reads.
    budget: FillBudget,
    /// Cancelled when the drain time at shutdown is over: every fill still running is abandoned.
    stop: CancellationToken,
    /// A failure to inject into the next fills, for tests.
    #[cfg(test)]
    injected: Mutex<Option<Injected>>,
}

/// What a test makes a fill do.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
enum Injected {
    /// Panic before the request.
    Panic,
    /// Begin writing to the store, then never get anywhere.
    Hang,
}

impl Fills {
    /// No fills yet; those to come keep to `budget`.
    pub fn new(budget: FillBudget) -> Fills {
        Fills {
            running: Mutex::default(),
            unshared: AtomicU64::default(),
            ended: Notify::new(),
            budget,
            stop: CancellationToken::new(),
            #[cfg(test)]
            injected: Mutex::default(),
        }
    }

    /// The running fill of `digest` from the upstream named `upstream`, if any.
    pub fn get(&self, upstream: &str, digest: &Digest) -> Option<Arc<Fill>> {
        let key = (upstream.to_owned(), digest.clone());
        lock(&self.running).get(&key).and_then(|f| f.first().cloned())
    }

    /// The stored blob, a running fill `join` allows, or a new fill fetching `digest` from
    /// `repo` on `upstream`.
    pub fn join_or_start(
        self: &Arc<Self>,
        store: &Arc<Store>,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        join: Join,
    ) -> io::Result<Source> {
        let key = (upstream.config().name.to_string(), digest.clone());
        // The lock is held across the index lookup below (a sled read, in memory in practice): a
        // fill commits its blob (store, then index) before its guard takes it out of `running`
        // under this lock, so under the lock a request sees either the running fill or the stored
        // blob, never neither, and never starts a second download of a blob that was just stored.
        // Only misses take this lock: hits never do (`Cache::blob` looks the index up first). The
        // fill's write begins in its own task, off the lock.
        let mut running = lock(&self.running);
        let joinable = running.get(&key).and_then(|fills| {
            fills
                .iter()
                .find(|f| (join == Join::Any || f.fetches_from(upstream, repo)) && f.serves_from_start())
                .cloned()
        });
        if let Some(fill) = joinable {
            return Ok(Source::Filling(fill));
        }
        if let Some(size) = store.index.blob_size(digest).map_err(io::Error::other)? {
            return Ok(Source::Stored(size));
        }
        let fill = Fill::new(digest.clone(), upstream.upstream_name(repo));
        let shared = running.values().map(Vec::len).sum::<usize>() < MAX_SHARED_FILLS;
        if shared {
            running.entry(key.clone()).or_default().push(fill.clone());
        } else {
            self.unshared.fetch_add(1, Ordering::Relaxed);
        }
        let guard = FillGuard { fills: Arc::clone(self), key, fill: fill.clone(), shared, failure: None };
        tokio::spawn(self.job(&fill, store, upstream, repo).run(guard));
        Ok(Source::Filling(fill))
    }

    /// The work of `fill`: fetching its digest from `repo` on `upstream` into `store`, within the
    /// fills' budget, until the drain at shutdown stops it.
    fn job(&self, fill: &Arc<Fill>, store: &Arc<Store>, upstream: &Arc<Upstream>, repo: &RepositoryName) -> FillJob {
        FillJob {
            fill: fill.clone(),
            store: Arc::clone(store),
            upstream: Arc::clone(upstream),
            repo: repo.clone(),
            digest: fill.digest.clone(),
            budget: self.budget.clone(),
            stop: self.stop.clone(),
            #[cfg(test)]
            injected: *lock(&self.injected),
        }
    }

    /// How many fills are running.
    pub fn len(&self) -> usize {
        let shared: usize = lock(&self.running).values().map(Vec::len).sum();
        shared.saturating_add(usize::try_from(self.unshared.load(Ordering::Relaxed)).unwrap_or(usize::MAX))
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

    /// At shutdown: let running fills finish (and be stored) until `deadline`, then abandon the
    /// rest. Returns once no fill runs: whether all of them finished in time.
    pub async fn drain(&self, deadline: Instant) -> bool {
        if tokio::time::timeout_at(deadline, self.idle()).await.is_ok() {
            return true;
        }
        self.stop.cancel();
        // Each abandoned fill ends (and removes its temporary file) at its task's next poll.
        self.idle().await;
        false
    }
}

/// The one fetcher's hold on a fill (pingora's write permit), owned by the fill's task. However the
/// task ends (returned, panicked, cancelled), dropping it takes the fill out of the map and, unless
/// the fill already has its result, fails it, so no request waits for a fetch that is gone.
struct FillGuard {
    fills: Arc<Fills>,
    key: FillKey,
    fill: Arc<Fill>,
    /// Whether the fill is in the map (else it is counted in `unshared`).
    shared: bool,
    /// Why the fill failed, when it ended with an error; `None` when it died.
    failure: Option<FillError>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        // Out of the map before the failure is told, so a request that retries after it never
        // finds this fill again.
        if self.shared {
            let mut running = lock(&self.fills.running);
            if let Some(fills) = running.get_mut(&self.key) {
                fills.retain(|f| !Arc::ptr_eq(f, &self.fill));
                if fills.is_empty() {
                    running.remove(&self.key);
                }
            }
        } else {
            self.fills.unshared.fetch_sub(1, Ordering::Relaxed);
        }
        let failure = self.failure.take();
        self.fill.state.send_if_modified(|s| match s {
            FillState::Done { .. } | FillState::Failed(_) => false,
            _ => {
                if failure.is_none() {
                    tracing::error!(digest = %self.fill.digest, "a blob fill died without a result; its readers get an error");
                }
                *s = FillState::Failed(failure.unwrap_or_else(|| UpstreamError::from(CallDied).into()));
                true
            }
        });
        self.fills.ended.notify_waiters();
    }
}

/// Where a fill's bytes come from.
enum Body {
    /// The upstream's response.
    Upstream(Incoming),
    /// The shared bucket, which had the blob.
    Bucket(Box<dyn BlobRead>),
}

impl Body {
    /// The next chunk; `None` at the end. The upstream's body must send something within its idle
    /// timeout; the bucket's requests are bounded by its backend.
    async fn next(&mut self, transport: &Transport) -> Result<Option<Bytes>, FillError> {
        match self {
            Body::Upstream(body) => Ok(transport.next_chunk(body).await?),
            Body::Bucket(reader) => reader.next_chunk().await.transpose().map_err(|e| FillError::Bucket(e.to_string())),
        }
    }
}

/// A fill whose source has answered.
struct Connected {
    body: Body,
    /// The size announced.
    total: Option<u64>,
    /// Room for the blob, and its write to the store; both `None` when it is passed through.
    reservation: Option<Reservation>,
    writer: Option<Box<dyn BlobWrite>>,
    /// Tells the upload to the shared bucket that the blob is verified (its size, and whether the
    /// hot tier keeps it), if it is to be uploaded; dropped unsent, nothing is uploaded.
    upload: Option<oneshot::Sender<VerifiedFill>>,
}

struct FillJob {
    fill: Arc<Fill>,
    store: Arc<Store>,
    upstream: Arc<Upstream>,
    repo: RepositoryName,
    digest: Digest,
    budget: FillBudget,
    stop: CancellationToken,
    #[cfg(test)]
    injected: Option<Injected>,
}

impl FillJob {
    /// Run the fill to its end; `guard` is dropped with it, however it ends.
    async fn run(self, mut guard: FillGuard) {
        let result = tokio::select! {
            result = self.download() => result,
            // The drain time at shutdown is over: the download (and its unfinished write) goes.
            () = self.stop.cancelled() => Err(UpstreamError::from(CallDied).into()),
        };
        match result {
            Ok((size, stored)) => {
                // `download` told the readers (Done) as soon as the digest checked out.
                tracing::info!(digest = %self.digest, size, stored, "blob fetched and verified");
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "blob fill failed; nothing stored");
                guard.failure = Some(e);
            }
        }
    }

    /// Fetch, verify and (when it can) store the blob: its size, and whether it was stored.
    async fn download(&self) -> Result<(u64, bool), FillError> {
        #[cfg(test)]
        match self.injected {
            Some(Injected::Panic) => panic!("injected panic inside a blob fill"),
            Some(Injected::Hang) => {
                let _writer = self.begin(None).await;
                std::future::pending::<()>().await;
            }
            None => {}
        }
        let Connected { mut body, total, mut reservation, mut writer, mut upload } = self.connect().await?;
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written: u64 = 0;
        let mut pace = Pace::new(&self.budget, Instant::now());
        while let Some((batch, len)) = self.next_batch(&mut body, &mut pace).await? {
            if total.is_some_and(|t| written.saturating_add(len) > t) {
                return Err(FillError::Corrupt(format!("upstream sent more than the {} bytes it announced", total.unwrap_or(0))));
            }
            // A body without a length that is still being stored: reserve room for this batch.
            if let (None, false, Some(r)) = (total, self.fill.passing_through(), reservation.as_mut()) {
                if !self.grow(r, written, len) {
                    self.fill.stop_storing(written);
                }
            }
            hasher = self.write_or_relay(writer.as_deref_mut(), written, batch, len, hasher, reservation.as_mut()).await?;
            if self.fill.passing_through() {
                // Storing stopped (the budget was spent or a write failed): what it will never
                // write goes back to the other fills.
                if let Some(r) = reservation.as_mut() {
                    r.give_back_unwritten();
                }
            }
            written = written.saturating_add(len);
            self.progressed(written, &mut upload);
            pace.check(self.fill.waiters() > 0, len, Instant::now()).map_err(abandoned)?;
        }
        self.verify(total, written, hasher).await?;
        // Verified: the readers may have the last byte now; making it durable is the store's
        // business.
        self.fill.state.send_replace(FillState::Done { size: written });
        let kept = match writer {
            Some(writer) if !self.fill.passing_through() => self.commit(writer, written).await,
            Some(writer) => {
                writer.abort().await;
                false
            }
            None => false,
        };
        // The upload follows the commit: a bucket that is down now gets the blob from the hot
        // tier's file later (the backlog), so that file must be there.
        if let Some(upload) = upload {
            let _ = upload.send(VerifiedFill { size: written, kept });
        }
        Ok((written, kept))
    }

    /// GET the blob and decide up front whether it can be stored: an announced size is reserved
    /// whole now, a body without a length batch by batch. The body, its announced size, the
    /// reservation and the write (both `None`: the fill passes the blob through).
    async fn connect(&self) -> Result<Connected, FillError> {
        let (body, total) = self.open_source().await?;
        let (reservation, writer) = match self.reserve(total) {
            Some(r) => match self.begin(total).await {
                Some(w) => (Some(r), Some(w)),
                None => (None, None),
            },
            None => (None, None),
        };
        if writer.is_none() {
            self.fill.stop_storing(0);
        }
        let upload = self.upload(&body);
        self.fill.state.send_replace(FillState::Running { total, written: 0 });
        Ok(Connected { body, total, reservation, writer, upload })
    }

    /// The blob's bytes and announced size: from the shared bucket when it has them, else from the
    /// upstream.
    async fn open_source(&self) -> Result<(Body, Option<u64>), FillError> {
        if let Some(opened) = match &self.store.shared {
            Some(shared) => shared.open(&self.digest).await,
            None => None,
        } {
            let _ = self.fill.from_bucket.set(true);
            return Ok((Body::Bucket(opened.reader), Some(opened.size)));
        }
        let (head, body) = self.upstream.get_blob(&self.repo, &self.digest).await?;
        let _ = self.fill.rate_limit.set(head.rate_limit);
        Ok((Body::Upstream(body), head.size))
    }

    /// Prepare the upload to the shared bucket, if there is one, of what this fill stores from the
    /// upstream: the sender that tells it the blob is verified (dropped unsent, nothing is
    /// uploaded).
    fn upload(&self, body: &Body) -> Option<oneshot::Sender<VerifiedFill>> {
        let shared = self.store.shared.as_ref()?;
        let partial = self.fill.partial.get().filter(|_| matches!(body, Body::Upstream(_)) && !self.fill.passing_through())?;
        let (tx, rx) = oneshot::channel();
        shared.spawn_upload(&self.digest, partial.reader(), rx)?;
        Some(tx)
    }

    /// `written` bytes are stored: tell the readers; if storing stopped, there is nothing to
    /// upload.
    fn progressed(&self, written: u64, upload: &mut Option<oneshot::Sender<VerifiedFill>>) {
        self.fill.state.send_modify(|s| {
            if let FillState::Running { written: w, .. } = s {
                *w = written;
            }
        });
        if self.fill.passing_through() {
            *upload = None;
        }
    }

    /// Begin writing the blob to the store, its partial content readable by the fill's readers;
    /// `None` if the store can't take it (the fill passes it through).
    async fn begin(&self, total: Option<u64>) -> Option<Box<dyn BlobWrite>> {
        let writer = match self.store.blobs.begin(&self.digest, total).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "starting to store the blob failed; passing it through without storing");
                return None;
            }
        };
        let Some(partial) = writer.partial() else {
            tracing::warn!(digest = %self.digest, "the store can't be read while it writes; passing the blob through without storing");
            writer.abort().await;
            return None;
        };
        let _ = self.fill.partial.set(partial);
        Some(writer)
    }

    /// The next chunk of the body and whatever else has already arrived, up to [`WRITE_BATCH`],
    /// for a single write, with its length; `None` at the end of the body. While it waits, the
    /// fill is held to its [`Pace`].
    async fn next_batch(&self, body: &mut Body, pace: &mut Pace) -> Result<Option<(Vec<Bytes>, u64)>, FillError> {
        let transport = self.upstream.transport();
        let first = loop {
            let deadline = pace.deadline();
            tokio::select! {
                chunk = body.next(transport) => match chunk? {
                    Some(chunk) => break chunk,
                    None => return Ok(None),
                },
                // The last reader left: from now on the fill must keep its pace.
                () = self.fill.state.closed(), if self.fill.waiters() > 0 => {
                    pace.check(false, 0, Instant::now()).map_err(abandoned)?;
                }
                () = sleep_until(deadline) => {
                    pace.check(self.fill.waiters() > 0, 0, Instant::now()).map_err(abandoned)?;
                }
            }
        };
        let mut batch = vec![first];
        let mut len = batch[0].len();
        while len < WRITE_BATCH {
            match body.next(transport).now_or_never() {
                Some(Ok(Some(more))) => {
                    len += more.len();
                    batch.push(more);
                }
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(Some((batch, len as u64)))
    }

    /// Append `batch` (`len` bytes, following `written`) to the store and keep its newest bytes in
    /// memory for the readers; or, once nothing is stored (or when the write fails), relay it to
    /// the readers through memory only. `hasher` fed with it, while the batch is written.
    async fn write_or_relay(
        &self,
        writer: Option<&mut (dyn BlobWrite + 'static)>,
        written: u64,
        batch: Vec<Bytes>,
        len: u64,
        hasher: Hasher,
        reservation: Option<&mut Reservation>,
    ) -> Result<Hasher, FillError> {
        let Some(writer) = writer.filter(|_| !self.fill.passing_through()) else {
            let hasher = hash_batch(&batch, hasher).await?;
            self.relay(batch, len).await?;
            return Ok(hasher);
        };
        let (appended, hasher) = tokio::join!(writer.append(&batch), hash_batch(&batch, hasher));
        let hasher = hasher?;
        match appended {
            Ok(()) => {
                if let Some(r) = reservation {
                    r.wrote(len);
                }
                let mut recent = lock(&self.fill.recent);
                recent.push(batch, len);
                // Everything is in the store too: keep only the newest bytes in memory.
                recent.trim(RECENT_WINDOW, |_| true);
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "writing the blob failed; passing it through without storing");
                self.fill.stop_storing(written);
                self.relay(batch, len).await?;
            }
        }
        Ok(hasher)
    }

    /// The whole body arrived: it must have the size upstream announced and the digest asked for.
    /// A blob from the shared bucket that fails this is removed from it: the next request fetches
    /// it from the upstream.
    async fn verify(&self, total: Option<u64>, written: u64, hasher: Hasher) -> Result<(), FillError> {
        let source = if self.fill.from_bucket() { "the bucket" } else { "upstream" };
        let checked = match total.filter(|t| *t != written) {
            Some(t) => Err(FillError::Corrupt(format!("{source} sent {written} of {t} bytes"))),
            None => match hasher.finish() {
                got if got == self.digest => Ok(()),
                got => Err(FillError::Corrupt(format!("content from {source} has digest {got}, not the requested digest"))),
            },
        };
        if let (Err(e), Some(shared), true) = (&checked, &self.store.shared, self.fill.from_bucket()) {
            shared.discard(&self.digest, e).await;
        }
        checked
    }

    /// Make the verified blob of `written` bytes durable and index it: whether it was stored. The
    /// content is verified: whatever happens to storing it, the readers get it.
    async fn commit(&self, writer: Box<dyn BlobWrite>, written: u64) -> bool {
        let committed = match writer.commit().await {
            Ok(()) => self.store.index.put_blob(&self.digest, written).map_err(io::Error::other),
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => {
                self.store.note_stored(&self.digest);
                true
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "storing the verified blob failed; served without storing");
                false
            }
        }
    }

    /// Room for the blob: its whole announced size, or nothing yet for a body without a length.
    /// `None`: it can't be stored (larger than `max_size`, or no room among the temporaries or on
    /// the disk); it is passed through to the readers.
    fn reserve(&self, total: Option<u64>) -> Option<Reservation> {
        let size = total.unwrap_or(0);
        if let Some(max) = self.store.max_size.filter(|max| size > *max) {
            tracing::warn!(digest = %self.digest, size, max_size = max, "blob larger than max_size; passing it through without storing");
            return None;
        }
        match self.store.temp.reserve(size) {
            Ok(r) => Some(r),
            Err(why) => {
                tracing::warn!(digest = %self.digest, size, reason = %why, "no room to store the blob; passing it through without storing");
                None
            }
        }
    }

    /// Room for `len` more bytes of a body without a length, `written` already stored; false: the
    /// budget is spent, stop storing.
    fn grow(&self, r: &mut Reservation, written: u64, len: u64) -> bool {
        let size = written.saturating_add(len);
        if let Some(max) = self.store.max_size.filter(|max| size > *max) {
            tracing::warn!(digest = %self.digest, size, max_size = max, "blob grew larger than max_size; passing the rest through without storing");
            return false;
        }
        match self.store.temp.grow(r, len) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(digest = %self.digest, size, reason = %why, "no room to store more of the blob; passing the rest through without storing");
                false
            }
        }
    }

    /// Once nothing is stored, hand `batch` to the readers through memory only. Chunks every reader
    /// has passed (or that the file still holds) are dropped; while more than [`RELAY_WINDOW`] bytes
    /// remain, the fill waits for the slowest reader.
    async fn relay(&self, batch: Vec<Bytes>, len: u64) -> Result<(), FillError> {
        lock(&self.fill.recent).push(batch, len);
        loop {
            let advanced = self.fill.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let Some(slowest) = self.fill.slowest_reader() else {
                return Err(FillError::Disk("the blob is not stored and no client is left to pass it to".into()));
            };
            {
                let mut r = lock(&self.fill.recent);
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

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The error of a fill given up on because nobody reads it and it is too slow or too long.
fn abandoned(why: GiveUp) -> FillError {
    FillError::Upstream(UpstreamError::Timeout(why.to_string()))
}

/// Why a fill nobody reads is given up ([`Pace`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum GiveUp {
    /// Unread for `unread_max`.
    #[error("nobody has read the blob for {unread_max:?} (unread_max); given up")]
    Unread { unread_max: Duration },
    /// Unread, and slower than `unread_min_rate` over a window.
    #[error("nobody reads the blob and only {bytes} bytes arrived in {elapsed:?} (unread_min_rate {min_rate} bytes/s); given up")]
    TooSlow { bytes: u64, elapsed: Duration, min_rate: u64 },
}

/// Whether a fill nobody reads is still worth finishing: from the moment its last reader leaves
/// it must get `unread_min_rate` bytes per second, measured over each `rate_window`, and end within
/// `unread_max`. A reader coming back lifts both.
struct Pace {
    min_rate: u64,
    window: Duration,
    unread_max: Duration,
    /// Since when nobody reads the fill.
    unread_since: Option<Instant>,
    /// Where the current window began, and the bytes that arrived in it.
    window_start: Instant,
    window_bytes: u64,
}

impl Pace {
    fn new(budget: &FillBudget, now: Instant) -> Pace {
        Pace {
            min_rate: budget.unread_min_rate,
            window: budget.rate_window,
            unread_max: budget.unread_max,
            unread_since: None,
            window_start: now,
            window_bytes: 0,
        }
    }

    /// Note `bytes` that arrived at `now`, `read` or not: why to give up, if it is time to.
    fn check(&mut self, read: bool, bytes: u64, now: Instant) -> Result<(), GiveUp> {
        let Some(since) = self.unread_since.filter(|_| !read) else {
            // Read, or just left unread: a new window starts.
            self.unread_since = (!read).then_some(now);
            self.window_start = now;
            self.window_bytes = 0;
            return Ok(());
        };
        self.window_bytes = self.window_bytes.saturating_add(bytes);
        if now.saturating_duration_since(since) >= self.unread_max {
            return Err(GiveUp::Unread { unread_max: self.unread_max });
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= self.window {
            // Float to integer saturates: a huge rate just can't be met.
            let needed = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
            if self.window_bytes < needed {
                return Err(GiveUp::TooSlow { bytes: self.window_bytes, elapsed, min_rate: self.min_rate });
            }
            self.window_start = now;
            self.window_bytes = 0;
        }
        Ok(())
    }

    /// When to check again without new bytes: the end of the window or of `unread_max`, while
    /// nobody reads the fill.
    fn deadline(&self) -> Option<Instant> {
        let since = self.unread_since?;
        let window_end = self.window_start.checked_add(self.window);
        match (since.checked_add(self.unread_max), window_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
    /// A reader of `[start, end)` of a running fill (`end` = `None`: to the end, whatever it is).
    pub fn new(store: &Store, fill: Arc<Fill>, start: u64, end: Option<u64>) -> FillReader {
        let in_use = store.usage.hold(&fill.digest);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::metrics::Metrics;

    /// A store, an upstream that is never contacted (every fill here gets `injected` before its
    /// request), and the fills.
    fn setup(injected: Injected) -> (tempfile::TempDir, Arc<Store>, Arc<Upstream>, Arc<Fills>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let toml = "[[upstream]]\nname = \"x.io\"\nurl = \"http://127.0.0.1:9\"\n";
        let config = Config::from_toml(toml, &Overrides::default(), std::path::Path::new(".")).unwrap();
        let up = Arc::new(Upstream::new(config.upstreams[0].clone(), Arc::new(Metrics::new())).unwrap());
        let fills = Arc::new(Fills::new(config.fills.clone()));
        fills.inject(Some(injected));
        (dir, store, up, fills)
    }

    impl Fills {
        fn inject(&self, what: Option<Injected>) {
            *self.injected.lock().unwrap() = what;
        }
    }

    fn start(fills: &Arc<Fills>, store: &Arc<Store>, up: &Arc<Upstream>, digest: &Digest) -> Arc<Fill> {
        let repo: RepositoryName = "library/alpine".parse().unwrap();
        match fills.join_or_start(store, up, &repo, digest, Join::Any).unwrap() {
            Source::Filling(fill) => fill,
            Source::Stored(_) => panic!("nothing is stored"),
        }
    }

    #[tokio::test]
    async fn a_panic_inside_a_fill_fails_its_waiters_and_is_not_kept() {
        let (dir, store, up, fills) = setup(Injected::Panic);
        let digest = Digest::sha256_of(b"never fetched");
        let fill = start(&fills, &store, &up, &digest);
        // Bounded: before the guard, the waiters of a panicked fill waited forever.
        let started = tokio::time::timeout(std::time::Duration::from_secs(10), fill.started()).await;
        let err = started.expect("the waiter is told").expect_err("the fill failed");
        assert!(matches!(err, FillError::Upstream(UpstreamError::Interrupted(_))), "{err:?}");
        assert!(fills.is_empty(), "the panicked fill left the map");
        tokio::time::timeout(std::time::Duration::from_secs(10), fills.idle()).await.expect("idle");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "its temporary file is gone");
        // The next request for the digest starts a new fill.
        fills.inject(Some(Injected::Hang));
        let again = start(&fills, &store, &up, &digest);
        assert!(!Arc::ptr_eq(&fill, &again));
        assert_eq!(fills.len(), 1);
    }

    #[test]
    fn a_cancelled_fill_fails_its_waiters_and_is_not_kept() {
        let (_dir, store, up, fills) = setup(Injected::Hang);
        let digest = Digest::sha256_of(b"never fetched");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fill = rt.block_on(async { start(&fills, &store, &up, &digest) });
        assert_eq!(fills.len(), 1);
        // Shutting the runtime down cancels the fill's task.
        drop(rt);
        assert!(fills.is_empty(), "the cancelled fill left the map");
        assert!(matches!(&*fill.state.borrow(), FillState::Failed(FillError::Upstream(UpstreamError::Interrupted(_)))));
    }

    #[tokio::test]
    async fn at_the_end_of_the_drain_time_fills_are_abandoned() {
        let (dir, store, up, fills) = setup(Injected::Hang);
        let fill = start(&fills, &store, &up, &Digest::sha256_of(b"never arrives"));
        // The fill's task begins its write, then hangs.
        let begun = async {
            while fill.partial.get().is_none() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), begun).await.expect("the fill begins its write");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        // Bounded: before, a fill that never ended kept running after the drain time.
        let drained = tokio::time::timeout(std::time::Duration::from_secs(10), fills.drain(Instant::now())).await;
        assert!(!drained.expect("drain returns once the fills are gone"), "the fill did not finish, it was abandoned");
        assert!(fills.is_empty());
        assert!(matches!(&*fill.state.borrow(), FillState::Failed(FillError::Upstream(UpstreamError::Interrupted(_)))));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "its temporary file is gone");
    }

    /// A fill budget for pace tests: at least 100 bytes a 2 s window while unread, for at most 10 s.
    fn pace_budget() -> FillBudget {
        FillBudget {
            min_free: 0,
            max_temp: None,
            unread_max: Duration::from_secs(10),
            unread_min_rate: 100,
            rate_window: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_fill_nobody_reads_keeps_its_pace_or_is_given_up() {
        let budget = pace_budget();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Steps of (ms, read, bytes arrived); Some(n): given up at step n, None: never.
        type Steps = &'static [(u64, bool, u64)];
        let cases: [(&str, Steps, Option<usize>); 7] = [
            ("read, however slow", &[(1000, true, 1), (60_000, true, 1)], None),
            ("unread, a window at the rate", &[(0, false, 0), (1000, false, 100), (2000, false, 100)], None),
            ("unread, a window below the rate", &[(0, false, 0), (1000, false, 100), (2000, false, 99)], Some(2)),
            ("a drip: 1 byte every 2 s", &[(0, false, 0), (2000, false, 1)], Some(1)),
            ("nothing at all by the window's end", &[(0, false, 0), (2000, false, 0)], Some(1)),
            ("a reader came back", &[(0, false, 0), (1900, true, 0), (3000, false, 0), (4000, false, 10_000)], None),
            ("fast but unread too long", &[(0, false, 0), (5000, false, 100_000), (9999, false, 100_000), (10_000, false, 100_000)], Some(3)),
        ];
        for (what, steps, given_up) in cases {
            let mut pace = Pace::new(&budget, t0);
            let got = steps.iter().position(|(ms, read, bytes)| pace.check(*read, *bytes, at(*ms)).is_err());
            assert_eq!(got, given_up, "{what}");
        }
        let mut pace = Pace::new(&budget, t0);
        assert_eq!(pace.deadline(), None, "no deadline while read");
        pace.check(false, 0, at(500)).unwrap();
        assert_eq!(pace.deadline(), Some(at(2500)), "the end of the first window");
        let budget = FillBudget { unread_max: Duration::from_secs(1), ..budget };
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(500)).unwrap();
        assert_eq!(pace.deadline(), Some(at(1500)), "unread_max comes first");
        let budget = FillBudget { unread_max: Duration::MAX, rate_window: Duration::MAX, ..budget };
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(500)).unwrap();
        assert_eq!(pace.deadline(), None, "limits past the end of time never fire");
    }

    #[test]
    fn a_fill_is_given_up_for_a_typed_reason() {
        let budget = pace_budget();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(0)).unwrap();
        let slow = pace.check(false, 99, at(2000)).unwrap_err();
        assert_eq!(slow, GiveUp::TooSlow { bytes: 99, elapsed: Duration::from_secs(2), min_rate: 100 });
        assert!(slow.to_string().contains("only 99 bytes arrived in 2s (unread_min_rate 100 bytes/s)"), "{slow}");
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(0)).unwrap();
        let unread = pace.check(false, 1_000_000, at(10_000)).unwrap_err();
        assert_eq!(unread, GiveUp::Unread { unread_max: Duration::from_secs(10) });
        assert!(unread.to_string().contains("nobody has read the blob for 10s (unread_max)"), "{unread}");
    }

    #[tokio::test]
    async fn a_pass_through_fill_is_joined_only_while_it_holds_the_first_byte() {
        let (_dir, store, up, fills) = setup(Injected::Hang);
        let digest = Digest::sha256_of(b"too large to store");
        let first = start(&fills, &store, &up, &digest);
        first.stop_storing(0);
        first.recent.lock().unwrap().push(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")], 6);
        assert!(Arc::ptr_eq(&start(&fills, &store, &up, &digest), &first), "every byte is still in memory");
        // Its readers have passed the first chunk, which is gone: a new request gets its own fill.
        first.recent.lock().unwrap().trim(0, |end| end <= 3);
        let second = start(&fills, &store, &up, &digest);
        assert!(!Arc::ptr_eq(&second, &first), "a joiner would have fallen behind at once");
        assert!(Arc::ptr_eq(&start(&fills, &store, &up, &digest), &second));
        assert_eq!(fills.len(), 2);
        // A fill that stores keeps its first bytes in its file.
        let stored = Digest::sha256_of(b"stored");
        let filling = start(&fills, &store, &up, &stored);
        filling.recent.lock().unwrap().push(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")], 6);
        filling.recent.lock().unwrap().trim(0, |_| true);
        assert!(Arc::ptr_eq(&start(&fills, &store, &up, &stored), &filling));
    }

    #[test]
    fn a_range_waits_for_the_verdict_of_its_fill() {
        #[derive(Clone, Copy, Debug)]
        enum Step {
            Running(u64),
            StopStoring(u64),
            Done(u64),
            Fail,
        }
        use Step::*;
        /// Steps of a fill of 6 bytes; what the waiter learns at the last one (pending before).
        type Case = (&'static str, &'static [Step], Result<Verdict, ()>);
        let cases: &[Case] = &[
            ("verified", &[Running(0), Running(3), Running(6), Done(6)], Ok(Verdict::Verified(6))),
            ("wrong bytes", &[Running(0), Running(6), Fail], Err(())),
            ("too large to store from the start", &[StopStoring(0), Running(0)], Ok(Verdict::PassingThrough)),
            ("the budget ran out on the way", &[Running(0), Running(3), StopStoring(3), Running(6)], Ok(Verdict::PassingThrough)),
            ("passed through, then failed", &[StopStoring(0), Fail], Err(())),
            ("failed while connecting", &[Fail], Err(())),
        ];
        for (what, steps, want) in cases {
            let fill = Fill::new(Digest::sha256_of(b"abcdef"), "library/alpine".parse().unwrap());
            let mut verdict = Box::pin(fill.verified());
            assert!((&mut verdict).now_or_never().is_none(), "{what}: connecting");
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Running(written) => fill.state.send_replace(FillState::Running { total: Some(6), written }),
                    // The fill's state changes next (it is running, or it ends), which wakes the waiter.
                    StopStoring(at) => {
                        fill.stop_storing(at);
                        continue;
                    }
                    Done(size) => fill.state.send_replace(FillState::Done { size }),
                    Fail => fill.state.send_replace(FillState::Failed(FillError::Corrupt("wrong".into()))),
                };
                let got = (&mut verdict).now_or_never();
                if i + 1 < steps.len() {
                    assert!(got.is_none(), "{what}: no verdict after {step:?}");
                } else {
                    let got = got.unwrap_or_else(|| panic!("{what}: a verdict after {step:?}")).map_err(|_| ());
                    assert_eq!(got, *want, "{what}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_request_joins_another_repository_only_when_it_may() {
        let (_dir, store, up, fills) = setup(Injected::Hang);
        let digest = Digest::sha256_of(b"shared layer");
        let first = start(&fills, &store, &up, &digest);
        let other: RepositoryName = "org/app".parse().unwrap();
        let joined = |join| match fills.join_or_start(&store, &up, &other, &digest, join).unwrap() {
            Source::Filling(fill) => fill,
            Source::Stored(_) => panic!("nothing is stored"),
        };
        assert!(Arc::ptr_eq(&joined(Join::Any), &first));
        let own = joined(Join::OwnRepository);
        assert!(!Arc::ptr_eq(&own, &first), "a fill of its own repository");
        assert!(Arc::ptr_eq(&joined(Join::OwnRepository), &own));
        assert_eq!(fills.len(), 2);
        let alpine: RepositoryName = "alpine".parse().unwrap();
        assert!(first.fetches_from(&up, &"library/alpine".parse().unwrap()));
        assert!(!first.fetches_from(&up, &alpine), "x.io is not Docker Hub: no library/ prefix");
    }
}
