//! `[storage]`: the list of backends, as written ([`RawStorage`], tagged by `backend`) and resolved
//! ([`Storage`]: the data directory alone, or with a bucket tier shared by several nodes behind
//! it). The tier's own settings (`bucket_max_size`) are apart from its backend's client settings.
//! A new backend is its own file (as `s3.rs`: the keys as written, the client settings, their
//! resolution and description) and one variant of each enum here.

use std::path::Path;

use serde::Deserialize;

use super::s3::{RawS3, S3Storage};
use super::ConfigError;

/// `[storage]`: `backend` picks the variant (`"local"` when not set), so serde refuses a key of
/// another backend by name. A new backend is one more variant here, in [`BACKENDS`] and in
/// [`BucketBackend`].
#[derive(Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawStorage {
    /// Blobs in the data directory only.
    Local {},
    /// An S3-compatible bucket shared by several nodes.
    S3(Box<RawS3>),
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage::Local {}
    }
}

/// Every `backend` [`RawStorage`] takes, to say which one a misplaced key belongs to.
pub(super) const BACKENDS: [&str; 2] = ["local", "s3"];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_is_listed() {
        for backend in BACKENDS {
            let table = toml::Table::from_iter([("backend".to_owned(), toml::Value::from(backend))]);
            assert!(RawStorage::deserialize(toml::Value::Table(table)).is_ok(), "{backend}");
        }
        let table = toml::Table::from_iter([("backend".to_owned(), toml::Value::from("none"))]);
        let err = RawStorage::deserialize(toml::Value::Table(table)).unwrap_err().message().to_owned();
        assert_eq!(err.matches('`').count(), 2 * (BACKENDS.len() + 1), "a backend missing from BACKENDS: {err}");
    }
}
