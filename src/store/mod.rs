//! Storage: blob files on disk (written to a temporary file, verified, fsynced and renamed into a
//! content-addressed path) and the sled index of blobs, manifests and tags.

mod blobs;
mod index;

pub use blobs::{BlobFiles, TempBlob};
pub use index::{now_secs, Index, StoredManifest, TagEntry};

use std::io;
use std::path::{Path, PathBuf};

/// Everything regcache keeps under its data directory.
pub struct Store {
    /// Blob files.
    pub blobs: BlobFiles,
    /// The index.
    pub index: Index,
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

impl Store {
    /// Open (creating if needed) the store in `data_dir`, clearing temporary files a crash left.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let blobs = BlobFiles::open(data_dir)?;
        let index = Index::open(&data_dir.join("index"))?;
        Ok(Store { blobs, index })
    }
}
