//! The storage seam: what a place that keeps blobs must do for fills and hits. The local directory
//! ([`super::LocalBlobs`]) is the first implementation; a shared bucket is the next.
//!
//! A blob is written in four steps: [`BlobBackend::begin`] for the digest it is expected to have,
//! [`BlobWrite::append`] batch after batch, then [`BlobWrite::commit`] once the caller has verified
//! size and digest, or [`BlobWrite::abort`]. Nothing is visible under a digest before its commit, and a write that is
//! dropped without either is aborted. While a blob is written, readers may follow it through
//! [`BlobWrite::partial`]: the bytes appended so far, readable at any offset.
//!
//! Which blobs are stored, and their sizes, is the index's business (`store::Index`); a backend
//! keeps bytes. A backend that finds an object missing says `None`, never an error: the caller
//! treats it as a miss.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::oci::Digest;

/// A place that keeps blobs by digest.
#[async_trait]
pub trait BlobBackend: Send + Sync + 'static {
    /// Start writing the blob `digest` (not verified yet: the caller verifies before the commit);
    /// `size` is the size announced for it, if any.
    async fn begin(&self, digest: &Digest, size: Option<u64>) -> io::Result<Box<dyn BlobWrite>>;

    /// A reader of `range` of the stored blob `digest`, and the blob's whole size; `None` if it
    /// isn't stored. `range` must lie within the blob: a caller checks it against the size the
    /// index holds, and gives up on the reader if `size` disagrees.
    async fn open(&self, digest: &Digest, range: Range<u64>) -> io::Result<Option<Opened>>;

    /// The size of the stored blob `digest`, if stored.
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Every stored object: its digest when it is stored where a valid digest's blob belongs, its
    /// name (path or key) and its size.
    async fn list(&self) -> io::Result<Vec<Listed>>;

    /// Delete the stored blob `digest` (absent is fine).
    async fn remove(&self, digest: &Digest) -> io::Result<()>;

    /// Check, before a server starts on it, that the backend can be used (a backend that can't
    /// stops the start; the error says where and why). Nothing to check by default.
    async fn probe(&self) -> io::Result<()> {
        Ok(())
    }

    /// Clean up what a previous run left unfinished (a bucket's uploads that were never
    /// completed), once the data directory is this process's; how many were. Nothing by default.
    async fn cleanup(&self) -> io::Result<usize> {
        Ok(0)
    }
}

/// A stored blob opened for reading.
pub struct Opened {
    /// The blob's whole size, as the backend holds it.
    pub size: u64,
    /// The bytes of the range asked for.
    pub reader: Box<dyn BlobRead>,
}

/// One object a backend holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The blob it is, if it sits where that digest's blob belongs.
    pub digest: Option<Digest>,
    /// Its path or key.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// When it was last written (unix milliseconds), if the backend knows.
    pub modified: Option<u64>,
}

/// The bytes of a range of a stored blob, in order.
#[async_trait]
pub trait BlobRead: Send {
    /// The next chunk; `None` at the end of the range. An error means the body must be cut.
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>>;
}

/// A blob being written. Dropping it without [`commit`](BlobWrite::commit) or
/// [`abort`](BlobWrite::abort) aborts it (a crash leaves what [`BlobBackend::begin`]'s backend
/// cleans up when it is next opened).
#[async_trait]
pub trait BlobWrite: Send + Sync {
    /// Append `batch`, the next bytes of the blob.
    async fn append(&mut self, batch: &[Bytes]) -> io::Result<()>;

    /// What has been appended so far, for readers following the write; `None` if this backend
    /// can't be read before the commit.
    fn partial(&self) -> Option<Arc<dyn PartialBlob>>;

    /// Make the blob durable and visible under the digest it was begun for: the caller has checked
    /// that the bytes have that digest. Never replaces different bytes under the digest (an
    /// existing object under it is the same blob: content addressing).
    async fn commit(self: Box<Self>) -> io::Result<()>;

    /// Give the write up: nothing of it stays.
    async fn abort(self: Box<Self>);
}

/// The bytes written so far of a blob being written.
pub trait PartialBlob: Send + Sync {
    /// A reader for one follower (each has its own buffers).
    fn reader(&self) -> Box<dyn ReadAt>;
}

/// Reads a blob being written at any offset below what has been appended.
#[async_trait]
pub trait ReadAt: Send {
    /// Up to `n` bytes from `pos` (at least one, when `pos` is below what was appended).
    async fn read_at(&mut self, pos: u64, n: usize) -> io::Result<Bytes>;
}

/// Small named records a shared bucket keeps beside blobs: manifests by digest, what tags pointed
/// at, referrers lists. Keys are built by regcache from validated names (`manifests/sha256/<hex>`,
/// `tags/<upstream>/<repository>/<tag>/<kind>`); values are whole and small.
#[async_trait]
pub trait Records: Send + Sync + 'static {
    /// The record `key`, if present; an error of kind `InvalidData` if it is larger than `max` bytes.
    async fn get(&self, key: &str, max: usize) -> io::Result<Option<Bytes>>;

    /// Write (or replace) the record `key`.
    async fn put(&self, key: &str, value: Bytes) -> io::Result<()>;

    /// The keys of every record under `prefix` (a key or a key's leading parts, without a
    /// trailing `/`: `access` lists `access/…`), in no particular order.
    async fn list_records(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// Delete the record `key` (absent is fine). (Named apart from [`BlobBackend::list`] and
    /// [`BlobBackend::remove`]: a backend implements both traits.)
    async fn remove_record(&self, key: &str) -> io::Result<()>;
}

/// What a bucket shared by several nodes offers: blobs and records.
pub trait SharedBackend: BlobBackend + Records {}

impl<T: BlobBackend + Records> SharedBackend for T {}
