//! Blob fills: one upstream download per digest at a time, written to a temporary file, hashed on the
//! way, and committed only when size and digest check out. Any number of readers follow a fill by
//! reading the temporary file up to what has been written, so every waiter gets bytes as they arrive.
//!
//! The fill runs as its own task: a reader that goes away does not disturb it or the other readers.
//! A failed fill fails every reader (their responses are cut) and stores nothing.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderMap, Method};
use tokio::sync::watch;

use crate::oci::{Digest, Hasher, RepositoryName};
use crate::store::{InUse, Store, TempBlob};
use crate::upstream::{Upstream, UpstreamError};

/// How many bytes of a fill are gathered before one write to disk.
const WRITE_BATCH: usize = 512 * 1024;
/// How many bytes a reader reads from disk at once.
const READ_CHUNK: usize = 256 * 1024;

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
        let fill = Arc::new(Fill { digest: digest.clone(), file: temp.file().clone(), state });
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
        };
        match result {
            Ok(size) => {
                tracing::info!(digest = %self.digest, size, "blob stored");
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

    async fn download(&self, temp: TempBlob) -> Result<u64, FillError> {
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
            hasher = write_batch(temp.file().clone(), written, batch, hasher).await?;
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
        if let Some(max) = self.store.max_size.filter(|max| written > *max) {
            // Served to everyone who asked, but never kept: it alone would pass the limit.
            tracing::warn!(digest = %self.digest, size = written, max_size = max, "blob larger than max_size; streamed without storing");
            return Ok(written);
        }
        let store = Arc::clone(&self.store);
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || store.blobs.commit(temp, &digest))
            .await
            .map_err(|e| FillError::Disk(e.to_string()))?
            .map_err(|e| FillError::Disk(e.to_string()))?;
        self.store.index.put_blob(&self.digest, written).map_err(|e| FillError::Disk(e.to_string()))?;
        self.store.stored(&self.digest);
        Ok(written)
    }
}

/// Write `batch` at `offset` and feed it to `hasher`, off the async threads.
async fn write_batch(file: Arc<File>, offset: u64, batch: Vec<Bytes>, mut hasher: Hasher) -> Result<Hasher, FillError> {
    tokio::task::spawn_blocking(move || {
        let mut off = offset;
        for b in &batch {
            file.write_all_at(b, off)?;
            hasher.update(b);
            off += b.len() as u64;
        }
        Ok::<_, io::Error>(hasher)
    })
    .await
    .map_err(|e| FillError::Disk(e.to_string()))?
    .map_err(|e| FillError::Disk(e.to_string()))
}

/// The `Content-Length` of a response, if valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads `[pos, end)` of a blob that is stored or being filled. While a fill runs it reads only what is
/// on disk and holds back the last byte until the digest has been checked, so a client never sees a
/// complete body of unverified content.
pub struct BlobReader {
    file: Arc<File>,
    pos: u64,
    end: Option<u64>,
    fill: Option<(Arc<Fill>, watch::Receiver<FillState>)>,
    /// Keeps the blob from being evicted while it is read.
    _in_use: InUse,
}

impl BlobReader {
    /// A reader of `[start, end)` of a stored file.
    pub fn stored(store: &Store, digest: &Digest, file: File, start: u64, end: u64) -> BlobReader {
        let in_use = store.usage.hold(digest);
        store.usage.touch(digest);
        BlobReader { file: Arc::new(file), pos: start, end: Some(end), fill: None, _in_use: in_use }
    }

    /// A reader of `[start, end)` of a running fill (`end` = `None`: to the end, whatever it is).
    pub fn filling(store: &Store, fill: Arc<Fill>, start: u64, end: Option<u64>) -> BlobReader {
        let in_use = store.usage.hold(&fill.digest);
        let rx = fill.state.subscribe();
        BlobReader { file: fill.file.clone(), pos: start, end, fill: Some((fill, rx)), _in_use: in_use }
    }

    /// The next chunk; `None` at the end. An error means the body must be cut.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        let available = loop {
            if self.end.is_some_and(|e| self.pos >= e) {
                return None;
            }
            let Some((_, rx)) = &mut self.fill else {
                break self.end.unwrap_or(self.pos);
            };
            let state = rx.borrow_and_update().clone();
            let limit = match state {
                FillState::Done { size } => {
                    self.end = Some(self.end.map_or(size, |e| e.min(size)));
                    self.fill = None;
                    continue;
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
            if rx.changed().await.is_err() {
                return Some(Err(io::Error::other("blob fill ended without a result")));
            }
        };
        if available <= self.pos {
            return None;
        }
        let n = (available - self.pos).min(READ_CHUNK as u64) as usize;
        let file = self.file.clone();
        let pos = self.pos;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if read.is_ok() {
            self.pos += n as u64;
        }
        Some(read)
    }
}
