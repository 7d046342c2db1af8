//! Storage: blob files on disk (written to a temporary file, verified, fsynced and renamed into a
//! content-addressed path), the sled index of blobs, manifests and tags, and the housekeeping that
//! writes access times and evicts down to `max_size`.

mod backend;
mod blobs;
pub mod bucket;
mod budget;
mod check;
mod evict;
mod housekeeping;
mod index;

pub use backend::{BlobBackend, BlobRead, BlobWrite, Listed, Opened, PartialBlob, ReadAt};
pub use blobs::{BlobFiles, TempBlob};
pub use bucket::{Bucket, BucketError};
pub use budget::{Refused, Reservation, TempBudget};
pub use check::{Reconciled, Verified};
pub use evict::{Evicted, EvictedKind, InUse, Usage, LOW_WATER};
pub use housekeeping::spawn_housekeeping;
pub use index::{now_secs, Index, ReferrersKey, StoredManifest, TagAnswer, TagEntry};

use std::io;
use std::path::{Path, PathBuf};

/// Everything regcache keeps under its data directory.
pub struct Store {
    /// Blob files.
    pub blobs: BlobFiles,
    /// The index.
    pub index: Index,
    /// Access times and content in use.
    pub usage: Usage,
    /// The most bytes to keep, if limited.
    pub max_size: Option<u64>,
    /// What the temporary files of running fills may take.
    pub temp: TempBudget,
    /// Signalled when an insert takes the store over `max_size`.
    pub pressure: std::sync::Arc<tokio::sync::Notify>,
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
        let blobs = BlobFiles::open(data_dir)?;
        let store = Store {
            temp: TempBudget::new(blobs.tmp_dir().to_owned(), None, 0),
            blobs,
            index,
            usage: Usage::default(),
            max_size: None,
            pressure: Default::default(),
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

    /// Store `bytes` as a verified, indexed blob, the way a fill does (for tests of the store).
    #[cfg(test)]
    pub(crate) fn put_test_blob(&self, bytes: &[u8]) -> crate::oci::Digest {
        use std::os::unix::fs::FileExt;
        let d = crate::oci::Digest::sha256_of(bytes);
        let t = self.blobs.begin().expect("temp file");
        t.file().write_all_at(bytes, 0).expect("write");
        self.blobs.commit(t, &d).expect("commit");
        self.index.put_blob(&d, bytes.len() as u64).expect("index");
        d
    }

    /// Note content just stored: record its access and signal the evictor if over the limit.
    pub fn note_stored(&self, digest: &crate::oci::Digest) {
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
