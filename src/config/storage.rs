//! `[storage]` resolved: the data directory alone, or with a bucket tier shared by several nodes
//! behind it. The tier's own settings (`bucket_max_size`) are apart from its backend's client
//! settings; a new backend is one more [`BucketBackend`] variant, resolved from its
//! [`RawStorage`] variant.

use std::path::Path;

use super::raw::RawStorage;
use super::s3::S3Storage;
use super::ConfigError;

/// Where blobs are kept (`[storage]`).
#[derive(Debug, Clone, Default)]
pub enum Storage {
    /// In the data directory only: the default.
    #[default]
    Local,
    /// Also in a bucket shared by several nodes; the data directory is this node's hot tier.
    Bucket(Box<BucketTier>),
}

/// The bucket tier: the service that keeps the bucket, and how much the tier keeps in it.
#[derive(Debug, Clone)]
pub struct BucketTier {
    /// The bucket's service and its client settings.
    pub backend: BucketBackend,
    /// The most bytes of blobs to keep in the bucket (least recently used across all nodes go
    /// first), if limited.
    pub max_size: Option<u64>,
}

/// The service keeping a bucket tier, with its client's settings: one variant per backend.
#[derive(Debug, Clone)]
pub enum BucketBackend {
    /// An S3-compatible bucket (`backend = "s3"`).
    S3(S3Storage),
}

impl Storage {
    /// Resolve `raw`; files are read relative to `base`.
    pub(super) fn resolve(raw: RawStorage, base: &Path) -> Result<Storage, ConfigError> {
        let err = |msg: String| ConfigError(format!("storage: {msg}"));
        match raw {
            RawStorage::Local {} => Ok(Storage::Local),
            RawStorage::S3(s3) => {
                let max_size = s3.bucket_max_size.map(|s| s.0);
                let backend = BucketBackend::S3(S3Storage::resolve(*s3, base).map_err(err)?);
                Ok(Storage::Bucket(Box::new(BucketTier { backend, max_size })))
            }
        }
    }

    /// The bucket tier, if configured.
    pub fn bucket(&self) -> Option<&BucketTier> {
        match self {
            Storage::Local => None,
            Storage::Bucket(tier) => Some(tier),
        }
    }

    /// Its effective settings, one per line, secrets masked.
    pub(super) fn describe(&self) -> String {
        let Storage::Bucket(tier) = self else { return "storage = local (blobs in data_dir only)\n".to_owned() };
        let mut s = match &tier.backend {
            BucketBackend::S3(s3) => s3.describe(),
        };
        match tier.max_size {
            Some(m) => s.push_str(&format!("  bucket_max_size = {m} bytes\n")),
            None => s.push_str("  bucket_max_size = unlimited\n"),
        }
        s
    }
}
