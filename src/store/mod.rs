//! Storage, in tiers, behind one type: [`Store`]. Callers ask it for content (a manifest, a tag, a
//! referrers list, a tag list, where a blob is); which tier answers, what is copied into the hot
//! tier (backfill) and what is written to the shared one (publish) is decided in `tiered`, and a
//! fill reaches it through `fill::Sink` (`fill_sink`).
//!
//! - `backend`: the seam a blob store implements ([`BlobBackend`], and [`Records`] for the shared
//!   tier's small records).
//! - `hot`: this node's tier on disk: the local directory ([`LocalBlobs`]), reading it, the fills'
//!   disk budget, repair and `verify`, eviction down to `max_size`.
//! - `index`: the sled index of blobs, manifests, tags, referrers lists and tag lists.
//! - [`bucket`]: with a shared bucket, the tier behind the hot one ([`Shared`]): its client
//!   ([`Bucket`]), its uploads, its backlog of what it should have, its eviction
//!   ([`bucket_lru`]), the maintenance commands' work on it ([`Store::bucket_listing`],
//!   [`Store::bucket_gc`], [`Store::bucket_verify`]).
//! - [`records`]: the shared tier's records and their one typed key ([`RecordKey`]).
//! - `housekeeping`: access times written in batches, eviction, the backlog's drain.
//! - `recovery`: the index opened again in place after sled stopped writing (the disk was full).

mod backend;
pub mod bucket;
mod fill_sink;
mod housekeeping;
mod hot;
mod index;
pub mod records;
mod recovery;
mod tiered;

pub use backend::{BlobBackend, BlobRead, BlobWrite, Listed, Opened, PartialBlob, ReadAt, Records, SharedBackend};
pub use bucket::lru as bucket_lru;
pub use bucket::{Backlog, Bucket, BucketError, BucketFinding, BucketGc, BucketListing, BucketVerified, EvictedBlob, Pending, Pushed, Shared, VerifiedFill, ANSWER_WITHIN, RETRY};
pub use housekeeping::spawn_housekeeping;
pub use recovery::{recover, spawn_index_recovery, RecoveryError};
pub use hot::{Evicted, EvictedKind, InUse, LocalBlobs, NoRoom, Reconciled, Reservation, TempBudget, Usage, Verified, LOW_WATER};
pub use index::{now_secs, Index, ListedTags, ReferrersKey, SharedSizes, Slot, StoredManifest, TagAnswer, TagEntry};
/// What sled holds, decoded: for the property tests and fuzz targets.
#[doc(hidden)]
pub use index::{blob_size_of, parse_tag, tag_record};
pub use records::{read_manifest_record, RecordKey, MAX_MANIFEST_RECORD, MAX_TAG_RECORD};
pub use tiered::{Located, RememberedTag, TagSlot, Tier};

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::metrics::{Metrics, SharedMetrics};
use crate::oci::Digest;

/// Everything regcache keeps: under its data directory (the hot tier: blob files and the index)
/// and, with a shared bucket, behind it. The tier logic (lookup, backfill, publish, upload, touch,
/// discard) is the store's own (`tiered`): callers ask for content, never for a tier.
pub struct Store {
    /// Where fills write blobs and hits read them: the only way the cache touches blob bytes.
    blobs: Arc<dyn BlobBackend>,
    /// The local blob directory itself, for what only it has: the start-up repair, `verify`'s
    /// quarantine, eviction, the temporary files' file system.
    files: Arc<LocalBlobs>,
    /// The index.
    index: Index,
    /// Access times and content in use.
    usage: Usage,
    /// The most bytes to keep, if limited.
    max_size: Option<u64>,
    /// What the temporary files of running fills may take.
    temp: TempBudget,
    /// Signalled when an insert takes the store over `max_size`.
    pressure: Arc<tokio::sync::Notify>,
    /// The bucket shared with other nodes, behind this node's blobs (the hot tier), if configured.
    shared: Option<Arc<Shared>>,
}

/// How the bucket tier stands, as the status page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedState {
    /// Whether it is marked down (the hot tier and the upstreams serve without it).
    pub down: bool,
    /// The bytes of the blobs this node knows it holds (a walk of the index's record of them).
    pub known_bytes: u64,
}

/// Why the store can't be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system error.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
    /// The index could not be opened.
    #[error("index {path}: {source}")]
    Index {
        /// Where.
        path: PathBuf,
        /// What.
        source: sled::Error,
    },
}

impl StoreError {
    /// Whether the index is locked by another process: a running server.
    pub fn is_locked(&self) -> bool {
        match self {
            StoreError::Index { source, .. } => index::is_lock_error(source),
            StoreError::Io { .. } => false,
        }
    }
}

impl Store {
    /// Open (creating if needed) the store in `data_dir` and make it consistent after a crash:
    /// temporary files removed, index entries without their file dropped, files without an index
    /// entry re-indexed if their hash checks out and removed otherwise.
    ///
    /// The index is opened first: sled locks it, so a second process fails here before it can touch
    /// the files of a running server.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let index = Index::open(&data_dir.join("index"))?;
        let files = Arc::new(LocalBlobs::at(data_dir)?);
        let store = Store {
            temp: TempBudget::new(files.tmp_dir().to_owned(), None, 0),
            blobs: files.clone(),
            files,
            index,
            usage: Usage::default(),
            max_size: None,
            pressure: Default::default(),
            shared: None,
        };
        let r = store.reconcile().map_err(|source| StoreError::Io { path: data_dir.to_owned(), source })?;
        if r.dropped + r.reindexed + r.removed > 0 {
            tracing::warn!(
                dropped = r.dropped, reindexed = r.reindexed, removed = r.removed,
                "repaired the cache after an unclean stop"
            );
        }
        Ok(store)
    }

    /// The same, keeping at most `max_size` bytes (`None`: no limit), the temporary files of
    /// running fills within `max_temp` (`None`: no limit but free space) and always leaving
    /// `min_free` bytes free on their file system.
    pub fn with_limits(mut self, max_size: Option<u64>, max_temp: Option<u64>, min_free: u64) -> Store {
        self.max_size = max_size;
        self.temp = TempBudget::new(self.files.tmp_dir().to_owned(), max_temp, min_free);
        self
    }

    /// The same, with `bucket` as the tier shared with other nodes behind this one (its requests
    /// counted in `metrics`), this node being `node` among them and taking part in keeping the
    /// bucket's blobs under `max` bytes if given.
    pub fn with_shared(mut self, bucket: Arc<dyn SharedBackend>, node: String, max: Option<u64>, metrics: SharedMetrics) -> Store {
        let shared = Shared::new(bucket, self.index.shared_sizes(), self.index.backlog().clone(), metrics).with_eviction(node, max);
        self.shared = Some(Arc::new(shared));
        self
    }

    /// The same, its bytes stored kept in `metrics` (`disk_bytes`) from now on.
    pub fn counted_in(self, metrics: &Metrics) -> Store {
        self.index.count_used_in(metrics.disk_bytes_stored());
        self
    }

    /// The most bytes the store keeps, if limited.
    pub fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// Where the fills' temporary files are: in the data directory, on its file system.
    pub fn tmp_dir(&self) -> &Path {
        self.files.tmp_dir()
    }

    /// The index (the hot tier's record of what it holds, and of tags, tag lists and referrers).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The tier shared with other nodes, if configured: for its housekeeping, and for tests that
    /// move its clock or run its eviction now.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// With a bucket tier, how it stands (for the status page).
    pub fn shared_state(&self) -> Option<SharedState> {
        let shared = self.shared.as_ref()?;
        Some(SharedState { down: shared.is_down(), known_bytes: self.index.shared_sizes().known_bytes() })
    }

    /// Store `bytes` as a verified, indexed blob, the way a fill does (for tests of the store).
    #[cfg(test)]
    pub(crate) fn put_test_blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let mut w = self.blobs.begin(&d, Some(bytes.len() as u64)).await.expect("begin");
            w.append(&[Bytes::copy_from_slice(bytes)]).await.expect("append");
            w.commit().await.expect("commit");
        });
        self.index.put_blob(&d, bytes.len() as u64).expect("index");
        d
    }

    /// A reader of `range` of the stored blob `digest` of `size` bytes (as the index has it),
    /// holding the blob in use while it reads; `None` if the store no longer has it as indexed (the
    /// index entry is then forgotten: the next request fetches it again).
    pub async fn read_blob(&self, digest: &Digest, size: u64, range: Range<u64>) -> io::Result<Option<StoredBlob>> {
        let in_use = self.usage.hold(digest);
        match self.blobs.open(digest, range).await? {
            Some(opened) if opened.size == size => {
                self.usage.touch(digest);
                self.touch_shared(digest);
                Ok(Some(StoredBlob { reader: opened.reader, _in_use: in_use }))
            }
            _ => {
                self.forget_blob(digest)?;
                Ok(None)
            }
        }
    }

    /// Whether the store still has the blob `digest` of `size` bytes as indexed (a `HEAD`); if not,
    /// the index entry is forgotten.
    pub async fn has_blob(&self, digest: &Digest, size: u64) -> io::Result<bool> {
        if self.blobs.stat(digest).await? == Some(size) {
            self.usage.touch(digest);
            self.touch_shared(digest);
            return Ok(true);
        }
        self.forget_blob(digest)?;
        Ok(false)
    }

    /// A hot-tier hit counts as an access in the shared bucket too (for its eviction).
    fn touch_shared(&self, digest: &Digest) {
        if let Some(shared) = &self.shared {
            shared.touch(digest);
        }
    }

    /// The index names a blob that is gone or wrong: forget it.
    fn forget_blob(&self, digest: &Digest) -> io::Result<()> {
        tracing::warn!(%digest, "an indexed blob is missing or has the wrong size; forgetting it");
        self.index.remove_blob(digest).map_err(io::Error::other)
    }

    /// Note content just stored: record its access and signal the evictor if over the limit.
    pub fn note_stored(&self, digest: &Digest) {
        self.usage.touch(digest);
        self.note_growth();
    }

    /// Signal the evictor if the index grew past `max_size` (after any insert that counts in it).
    pub fn note_growth(&self) {
        if self.max_size.is_some_and(|max| self.over_limit(max)) {
            self.pressure.notify_one();
        }
    }
}

/// A stored blob being read: the bytes of the range asked for, the blob held in use (not evicted)
/// until the reader is dropped.
pub struct StoredBlob {
    reader: Box<dyn BlobRead>,
    _in_use: InUse,
}

#[async_trait]
impl BlobRead for StoredBlob {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        self.reader.next_chunk().await
    }
}
