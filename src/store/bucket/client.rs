//! Blobs in an S3-compatible bucket shared by many nodes: the [`BlobBackend`] over `object_store`.
//!
//! Layout: a blob is the object `<prefix>/blobs/<algorithm>/<2 hex>/<hex>`; records (manifests,
//! tags, referrers lists: [`Records`]) are objects under `<prefix>/` named by their keys
//! (`manifests/…`, `tags/…`, `referrers/…`). A write buffers at most
//! one part ([`PART_SIZE`]) and sends each part as soon as it is full, so memory stays bounded
//! whatever the blob's size; a blob smaller than one part goes up in a single PUT at the commit.
//! The final key is written only by the commit, which comes after the caller's verification:
//! before it, the bytes sit in an unfinished multipart upload, invisible to readers.
//!
//! An unfinished upload costs storage until it is aborted, so its id is recorded in a small file
//! under `<data_dir>/uploads/` before its first part is sent and removed once it is completed or
//! aborted; [`Bucket::cleanup_uploads`] aborts what a crash left behind. (An upload created just
//! before a crash, whose record wasn't written yet, is left to the bucket's lifecycle rule.)
//!
//! Metrics hook: every request reports a [`Request`] (operation, outcome, bytes) to the
//! [`Observer`] given with [`Bucket::with_observer`].

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

use super::multipart::BucketWrite;
use super::requests::one_line;
use super::{Observer, Op, Outcome, Request};
use crate::store::backend::{BlobBackend, BlobRead, BlobWrite, Listed, Opened, Records};
use crate::config::S3Storage;
use crate::oci::Digest;

/// The size of every part of a multipart upload but the last (S3 wants at least 5 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// What a [`Bucket`] needs of an object store: plain objects and multipart uploads whose ids it can
/// record. Both `object_store`'s S3 client and its in-memory store are one.
pub trait ObjectStorage: ObjectStore + MultipartStore {}

impl<T: ObjectStore + MultipartStore> ObjectStorage for T {}

/// Why the bucket can't be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BucketError {
    /// The client could not be set up.
    #[error("{location}: {message}")]
    Setup {
        /// The bucket and endpoint.
        location: String,
        /// Why (no secret in it).
        message: String,
    },
    /// A request failed.
    #[error("{location}: {op} {key} failed: {message}")]
    Request {
        /// The bucket and endpoint.
        location: String,
        /// Which request.
        op: Op,
        /// The key it was for.
        key: String,
        /// Why, on one line (no secret in it).
        message: String,
    },
    /// The probe read back other bytes than it wrote.
    #[error("{location}: probe object {key} read back different bytes")]
    ProbeMismatch {
        /// The bucket and endpoint.
        location: String,
        /// The probe object's key.
        key: String,
    },
    /// The upload records can't be read or written.
    #[error("upload record {}: {source}", .path.display())]
    Record {
        /// The record or its directory.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
}

/// An S3-compatible bucket (or a stand-in) holding blobs under a prefix.
#[derive(Clone)]
pub struct Bucket {
    pub(super) store: Arc<dyn ObjectStorage>,
    /// Without leading or trailing `/`; may be empty.
    pub(super) prefix: String,
    /// Where upload ids are recorded.
    pub(super) uploads: PathBuf,
    /// The bucket and endpoint, for messages.
    pub(super) location: Arc<str>,
    pub(super) part_size: usize,
    pub(super) observer: Option<Observer>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket").field("location", &self.location).field("prefix", &self.prefix).finish()
    }
}

impl Bucket {
    /// The bucket `config` describes, its upload ids recorded under `data_dir/uploads`. Sends no
    /// request: [`Bucket::probe`] checks that it can be used.
    pub fn from_config(config: &S3Storage, data_dir: &FsPath) -> Result<Bucket, BucketError> {
        use object_store::aws::AmazonS3Builder;
        use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

        let endpoint_shown = config.endpoint.as_ref().map_or("AWS".to_owned(), |e| e.to_string());
        let location = format!("bucket {:?} at {endpoint_shown}", config.bucket);
        let setup = |message: String| BucketError::Setup { location: location.clone(), message };
        // reqwest's rustls is built without a provider; regcache uses ring everywhere. Fails only
        // when a default is installed already, which is then the one used.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let mut options = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(config.timeout)
            .with_read_timeout(config.timeout);
        if let Some(pem) = &config.ca_pem {
            let certs = Certificate::from_pem_bundle(pem).map_err(|e| setup(format!("ca_file: {e}")))?;
            for c in certs {
                options = options.with_root_certificate(c);
            }
        }
        let mut builder = match &config.credentials {
            Some(c) => AmazonS3Builder::new()
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key),
            // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (and the crate's other
            // AWS_* variables, which the settings below override).
            None => AmazonS3Builder::from_env(),
        };
        builder = builder
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.path_style)
            // No SHA-256 of every part for the signature (a second hash of every byte uploaded):
            // what regcache uploads is verified already, and every read from the bucket is
            // verified again before it is kept or served as complete.
            .with_unsigned_payload(true)
            .with_client_options(options)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: config.timeout,
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_allow_http(endpoint.scheme() == "http");
            let mut url = endpoint.clone();
            if !config.path_style {
                // Virtual-hosted style with an endpoint of its own: the crate wants the bucket in it.
                let host = format!("{}.{}", config.bucket, endpoint.host_str().unwrap_or_default());
                url.set_host(Some(&host)).map_err(|e| setup(format!("endpoint with the bucket: {e}")))?;
            }
            builder = builder.with_endpoint(url.as_str().trim_end_matches('/'));
        }
        let store = builder.build().map_err(|e| setup(one_line(&e)))?;
        let mut bucket = Bucket::with_store(Arc::new(store), &config.prefix, data_dir);
        bucket.location = location.into();
        Ok(bucket)
    }

    /// A bucket over `store` (a stand-in for tests, or a wrapper injecting faults), holding
    /// everything under `prefix`, its upload ids recorded under `data_dir/uploads`.
    pub fn with_store(store: Arc<dyn ObjectStorage>, prefix: &str, data_dir: &FsPath) -> Bucket {
        Bucket {
            location: format!("bucket {store}").into(),
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            uploads: data_dir.join("uploads"),
            part_size: PART_SIZE,
            observer: None,
        }
    }

    /// A bucket in memory, for tests.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn in_memory(prefix: &str, data_dir: &FsPath) -> Bucket {
        Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), prefix, data_dir)
    }

    /// The same bucket, telling `observer` of every request.
    pub fn with_observer(mut self, observer: Observer) -> Bucket {
        self.observer = Some(observer);
        self
    }

    /// The object store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStorage> {
        &self.store
    }

    /// The key of `rest` under the prefix.
    pub(super) fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The key of the blob `digest`: `<prefix>/blobs/<algorithm>/<2 hex>/<hex>`.
    pub fn blob_key(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        self.key(&format!("blobs/{}/{}/{hex}", digest.algorithm().as_str(), &hex[..2]))
    }

    /// `key` as the crate's path; the error names `op`, the request it was for.
    pub(super) fn path(&self, op: Op, key: &str) -> Result<Path, BucketError> {
        Path::parse(key).map_err(|e| self.error(op, key, &object_store::Error::from(e)))
    }

    pub(super) fn error(&self, op: Op, key: &str, e: &object_store::Error) -> BucketError {
        BucketError::Request { location: self.location.to_string(), op, key: key.to_owned(), message: one_line(e) }
    }

    pub(super) fn io_error(&self, op: Op, key: &str, e: &object_store::Error) -> io::Error {
        io::Error::other(self.error(op, key, e))
    }

    /// A listing under `root` failed. A key in it that isn't a valid path (anyone with the
    /// bucket's keys may write one) is something the bucket holds, not the bucket failing:
    /// `InvalidData`, so the bucket isn't marked down for it; the message names the key.
    pub(super) fn list_error(&self, root: &str, e: &object_store::Error) -> io::Error {
        match e {
            object_store::Error::InvalidPath { .. } => io::Error::new(io::ErrorKind::InvalidData, self.error(Op::List, root, e)),
            _ => self.io_error(Op::List, root, e),
        }
    }

    /// Tell the observer, and pass the result on.
    pub(super) fn observe<T>(&self, op: Op, bytes: u64, result: object_store::Result<T>) -> object_store::Result<T> {
        if let Some(observer) = &self.observer {
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(object_store::Error::NotFound { .. }) => Outcome::NotFound,
                Err(_) => Outcome::Failed,
            };
            observer(&Request { op, outcome, bytes });
        }
        result
    }

    /// The size of the object stored under `path`, `None` if there is none.
    pub(super) async fn size_at(&self, path: &Path) -> io::Result<Option<u64>> {
        match self.observe(Op::Head, 0, self.store.head(path).await) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io_error(Op::Head, path.as_ref(), &e)),
        }
    }

    /// Delete the object under `key` (the whole key); one that isn't there is gone already.
    pub(super) async fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(Op::Delete, key).map_err(io::Error::other)?;
        match self.observe(Op::Delete, 0, self.store.delete(&path).await) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io_error(Op::Delete, key, &e)),
        }
    }

    /// Check that the bucket can be used: list `<prefix>/probe/`, then write, read back and delete
    /// a small object `<prefix>/probe/<random>`. The error names the bucket, endpoint, operation and cause.
    pub async fn probe(&self) -> Result<(), BucketError> {
        // A list first: some servers (SeaweedFS) create a missing bucket on a PUT, but none lists one.
        let dir = self.key("probe");
        let listed = self.store.list_with_delimiter(Some(&self.path(Op::List, &dir)?)).await;
        self.observe(Op::List, 0, listed).map_err(|e| self.error(Op::List, &dir, &e))?;
        let key = self.key(&format!("probe/{:016x}", random_u64()));
        let path = self.path(Op::Put, &key)?;
        let content = Bytes::from(format!("regcache probe {key}"));
        let put = self.store.put_opts(&path, PutPayload::from(content.clone()), PutOptions::default()).await;
        self.observe(Op::Put, content.len() as u64, put).map_err(|e| self.error(Op::Put, &key, &e))?;
        let read = async { self.store.get_opts(&path, GetOptions::default()).await?.bytes().await };
        let read = self.observe(Op::Get, content.len() as u64, read.await).map_err(|e| self.error(Op::Get, &key, &e));
        let delete = self.observe(Op::Delete, 0, self.store.delete(&path).await).map_err(|e| self.error(Op::Delete, &key, &e));
        if read? != content {
            return Err(BucketError::ProbeMismatch { location: self.location.to_string(), key });
        }
        delete
    }

}

/// 64 random bits, from the standard library's randomly seeded hasher.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

#[async_trait]
impl BlobBackend for Bucket {
    async fn begin(&self, digest: &Digest, _size: Option<u64>) -> io::Result<Box<dyn BlobWrite>> {
        let key = self.blob_key(digest);
        let path = self.path(Op::Put, &key).map_err(io::Error::other)?;
        Ok(Box::new(BucketWrite::new(self.clone(), key, path)))
    }

    async fn open(&self, digest: &Digest, range: Range<u64>) -> io::Result<Option<Opened>> {
        let key = self.blob_key(digest);
        let path = self.path(Op::Get, &key).map_err(io::Error::other)?;
        if range.is_empty() {
            // An empty range can't be asked for: the size alone answers.
            return Ok(self.stat(digest).await?.map(|size| Opened { size, reader: Box::new(Empty) }));
        }
        let options = GetOptions { range: Some(range.clone().into()), ..GetOptions::default() };
        let result = self.observe(Op::Get, range.end - range.start, self.store.get_opts(&path, options).await);
        match result {
            Ok(got) => {
                let size = got.meta.size;
                let stream = got.into_stream();
                Ok(Some(Opened { size, reader: Box::new(StreamRead { stream, bucket: self.clone(), key }) }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io_error(Op::Get, &key, &e)),
        }
    }

    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let path = self.path(Op::Head, &self.blob_key(digest)).map_err(io::Error::other)?;
        self.size_at(&path).await
    }

    async fn list(&self) -> io::Result<Vec<Listed>> {
        let root = self.key("blobs");
        let path = self.path(Op::List, &root).map_err(io::Error::other)?;
        let mut stream = self.store.list(Some(&path));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = self.observe(Op::List, 0, meta).map_err(|e| self.list_error(&root, &e))?;
            let name = meta.location.as_ref().to_owned();
            let parts: Vec<&str> = name.rsplitn(4, '/').collect();
            let digest = match parts.as_slice() {
                [hex, _, alg, ..] => format!("{alg}:{hex}").parse::<Digest>().ok(),
                _ => None,
            }
            .filter(|d| self.blob_key(d) == name);
            let modified = u64::try_from(meta.last_modified.timestamp_millis()).ok();
            out.push(Listed { digest, name, size: meta.size, modified });
        }
        Ok(out)
    }

    async fn remove(&self, digest: &Digest) -> io::Result<()> {
        self.delete(&self.blob_key(digest)).await
    }

    async fn probe(&self) -> io::Result<()> {
        Bucket::probe(self).await.map_err(io::Error::other)?;
        tracing::info!(bucket = %self.location, prefix = %self.prefix, "bucket probe passed");
        Ok(())
    }

    async fn cleanup(&self) -> io::Result<usize> {
        self.cleanup_uploads().await.map_err(io::Error::other)
    }
}

#[async_trait]
impl Records for Bucket {
    async fn get(&self, key: &str, max: usize) -> io::Result<Option<Bytes>> {
        let key = self.key(key);
        let path = self.path(Op::Get, &key).map_err(io::Error::other)?;
        let got = match self.observe(Op::Get, 0, self.store.get_opts(&path, GetOptions::default()).await) {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.io_error(Op::Get, &key, &e)),
        };
        let too_large = || io::Error::new(io::ErrorKind::InvalidData, format!("record {key} is larger than {max} bytes"));
        if got.meta.size > max as u64 {
            return Err(too_large());
        }
        // Read chunk by chunk, so a body longer than its announced size can't take more than `max`.
        let mut stream = got.into_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.io_error(Op::Get, &key, &e))?;
            if out.len().saturating_add(chunk.len()) > max {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out.into()))
    }

    async fn put(&self, key: &str, value: Bytes) -> io::Result<()> {
        let key = self.key(key);
        let path = self.path(Op::Put, &key).map_err(io::Error::other)?;
        let len = value.len() as u64;
        let result = self.store.put_opts(&path, PutPayload::from(value), PutOptions::default()).await;
        self.observe(Op::Put, len, result).map(|_| ()).map_err(|e| self.io_error(Op::Put, &key, &e))
    }

    async fn list_records(&self, prefix: &str) -> io::Result<Vec<String>> {
        let root = self.key(prefix.trim_end_matches('/'));
        let path = self.path(Op::List, &root).map_err(io::Error::other)?;
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut stream = self.store.list(Some(&path));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = self.observe(Op::List, 0, meta).map_err(|e| self.list_error(&root, &e))?;
            if let Some(key) = meta.location.as_ref().get(strip..) {
                out.push(key.to_owned());
            }
        }
        Ok(out)
    }

    async fn remove_record(&self, key: &str) -> io::Result<()> {
        self.delete(&self.key(key)).await
    }
}

/// The reader of a ranged GET: the chunks as they arrive.
struct StreamRead {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    bucket: Bucket,
    key: String,
}

#[async_trait]
impl BlobRead for StreamRead {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        match self.stream.next().await? {
            Ok(chunk) => Some(Ok(chunk)),
            Err(e) => Some(Err(self.bucket.io_error(Op::Get, &self.key, &e))),
        }
    }
}

/// The reader of an empty range.
struct Empty;

#[async_trait]
impl BlobRead for Empty {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::bucket::multipart::UploadRecord;

    /// A bucket in memory under `prefix`, and the requests it has made.
    fn bucket(prefix: &str, dir: &FsPath) -> (Bucket, Arc<Mutex<Vec<Request>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let b = Bucket::in_memory(prefix, dir).with_observer(Arc::new(move |r| log.lock().unwrap().push(*r)));
        (b, seen)
    }

    fn ops(seen: &Mutex<Vec<Request>>) -> Vec<Op> {
        seen.lock().unwrap().iter().map(|r| r.op).collect()
    }

    fn blob(len: usize) -> (Vec<u8>, Digest) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let digest = Digest::sha256_of(&bytes);
        (bytes, digest)
    }

    /// Append `bytes` in batches of 1 MiB split in two chunks.
    async fn append_all(w: &mut Box<dyn BlobWrite>, bytes: &[u8]) {
        for batch in bytes.chunks(1 << 20) {
            let (a, b) = batch.split_at(batch.len() / 3);
            w.append(&[Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)]).await.unwrap();
        }
    }

    async fn read_all(b: &Bucket, digest: &Digest, range: Range<u64>) -> Option<(u64, Vec<u8>)> {
        let mut opened = b.open(digest, range).await.unwrap()?;
        let mut out = Vec::new();
        while let Some(chunk) = opened.reader.next_chunk().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        Some((opened.size, out))
    }

    fn records(dir: &FsPath) -> Vec<PathBuf> {
        match std::fs::read_dir(dir.join("uploads")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn small_blob_is_one_put_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (b, seen) = bucket("", dir.path());
        let (bytes, digest) = blob(100_000);
        let mut w = b.begin(&digest, Some(bytes.len() as u64)).await.unwrap();
        assert!(w.partial().is_none());
        append_all(&mut w, &bytes).await;
        assert_eq!(ops(&seen), [], "nothing is sent before the commit");
        assert_eq!(b.stat(&digest).await.unwrap(), None);
        seen.lock().unwrap().clear();
        w.commit().await.unwrap();
        assert_eq!(ops(&seen), [Op::Head, Op::Put]);
        assert_eq!(b.stat(&digest).await.unwrap(), Some(100_000));
        assert_eq!(read_all(&b, &digest, 0..100_000).await.unwrap(), (100_000, bytes));
        assert!(records(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn large_blob_goes_up_in_parts_as_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (b, seen) = bucket("", dir.path());
        let (bytes, digest) = blob(20 << 20);
        let mut w = b.begin(&digest, None).await.unwrap();
        append_all(&mut w, &bytes[..PART_SIZE - 1]).await;
        assert_eq!(ops(&seen), [], "less than a part: nothing sent");
        append_all(&mut w, &bytes[PART_SIZE - 1..PART_SIZE + 10]).await;
        assert_eq!(ops(&seen), [Op::CreateUpload, Op::PutPart], "the first part is sent once full");
        assert_eq!(records(dir.path()).len(), 1, "the upload is recorded");
        append_all(&mut w, &bytes[PART_SIZE + 10..2 * PART_SIZE + 5]).await;
        assert_eq!(ops(&seen), [Op::CreateUpload, Op::PutPart, Op::PutPart]);
        append_all(&mut w, &bytes[2 * PART_SIZE + 5..]).await;
        assert_eq!(b.stat(&digest).await.unwrap(), None, "nothing under the key before the commit");
        seen.lock().unwrap().clear();
        w.commit().await.unwrap();
        assert_eq!(ops(&seen), [Op::PutPart, Op::Head, Op::CompleteUpload]);
        let parts: Vec<u64> = seen.lock().unwrap().iter().filter(|r| r.op == Op::PutPart).map(|r| r.bytes).collect();
        assert_eq!(parts, [(20 << 20) - 2 * PART_SIZE as u64]);
        assert!(records(dir.path()).is_empty(), "the record goes with the upload");
        assert_eq!(read_all(&b, &digest, 0..20 << 20).await.unwrap(), (20 << 20, bytes.clone()));
        let (size, got) = read_all(&b, &digest, 5..(9 << 20)).await.unwrap();
        assert_eq!((size, got.as_slice()), (20 << 20, &bytes[5..9 << 20]));
        assert_eq!(read_all(&b, &digest, 7..7).await.unwrap(), (20 << 20, Vec::new()));
    }

    #[tokio::test]
    async fn missing_blob_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = bucket("p", dir.path());
        let (_, digest) = blob(10);
        assert!(b.open(&digest, 0..10).await.unwrap().is_none());
        assert!(b.open(&digest, 0..0).await.unwrap().is_none());
        assert_eq!(b.stat(&digest).await.unwrap(), None);
        b.remove(&digest).await.unwrap();
    }

    /// The id of the one recorded upload.
    fn recorded_id(dir: &FsPath) -> (String, String) {
        let files = records(dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let r: UploadRecord = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        (r.key, r.id)
    }

    async fn upload_exists(b: &Bucket, key: &str, id: &str) -> bool {
        b.store.put_part(&Path::parse(key).unwrap(), &id.to_owned(), 99, PutPayload::from_static(b"x")).await.is_ok()
    }

    #[tokio::test]
    async fn abort_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = bucket("p", dir.path());
        let (bytes, digest) = blob(PART_SIZE + 100);
        for explicit in [true, false] {
            let mut w = b.begin(&digest, None).await.unwrap();
            append_all(&mut w, &bytes).await;
            let (key, id) = recorded_id(dir.path());
            assert_eq!(key, b.blob_key(&digest));
            assert!(upload_exists(&b, &key, &id).await);
            if explicit {
                w.abort().await;
            } else {
                drop(w);
                // The abort runs in a spawned task: wait for the record to go.
                for _ in 0..1000 {
                    if records(dir.path()).is_empty() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            assert!(records(dir.path()).is_empty(), "explicit {explicit}");
            assert!(!upload_exists(&b, &key, &id).await, "explicit {explicit}: the upload is aborted");
            assert!(b.list().await.unwrap().is_empty());
            assert_eq!(b.stat(&digest).await.unwrap(), None);
        }
        // A small write aborted never sent anything.
        let mut w = b.begin(&digest, None).await.unwrap();
        w.append(&[Bytes::from_static(b"abc")]).await.unwrap();
        w.abort().await;
        assert!(b.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn cleanup_aborts_recorded_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = bucket("", dir.path());
        let (bytes, digest) = blob(PART_SIZE);
        let mut w = b.begin(&digest, None).await.unwrap();
        append_all(&mut w, &bytes).await;
        let (key, id) = recorded_id(dir.path());
        // A crash: the write is never finished, nor dropped.
        std::mem::forget(w);
        std::fs::write(dir.path().join("uploads/garbage.upload"), "not json").unwrap();
        assert_eq!(b.cleanup_uploads().await.unwrap(), 1);
        assert!(!upload_exists(&b, &key, &id).await);
        assert!(records(dir.path()).is_empty(), "{:?}", records(dir.path()));
        assert_eq!(b.cleanup_uploads().await.unwrap(), 0);
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(Bucket::in_memory("", fresh.path()).cleanup_uploads().await.unwrap(), 0, "no uploads directory");
    }

    #[tokio::test]
    async fn existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (b, seen) = bucket("", dir.path());
        for len in [1000, PART_SIZE + 1000] {
            let (bytes, digest) = blob(len);
            let key = b.path(Op::Put, &b.blob_key(&digest)).unwrap();
            // What is under the key stays (content addressing makes it the same blob; a different
            // marker here shows it is not written again).
            b.store.put(&key, PutPayload::from_static(b"already here")).await.unwrap();
            let mut w = b.begin(&digest, None).await.unwrap();
            append_all(&mut w, &bytes).await;
            seen.lock().unwrap().clear();
            w.commit().await.unwrap();
            let got = b.store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], b"already here", "len {len}");
            assert!(!ops(&seen).contains(&Op::Put) && !ops(&seen).contains(&Op::CompleteUpload), "{:?}", ops(&seen));
            assert!(records(dir.path()).is_empty());
        }
    }

    #[tokio::test]
    async fn prefix_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = bucket("/team/mirror/", dir.path());
        let (bytes, digest) = blob(10);
        assert_eq!(b.blob_key(&digest), format!("team/mirror/blobs/sha256/{}/{}", &digest.hex()[..2], digest.hex()));
        let mut w = b.begin(&digest, None).await.unwrap();
        w.append(&[Bytes::from(bytes)]).await.unwrap();
        w.commit().await.unwrap();
        b.store.put(&Path::from("team/mirror/blobs/sha256/zz/stray"), PutPayload::from_static(b"s")).await.unwrap();
        b.store.put(&Path::from("elsewhere/blobs/sha256/aa/x"), PutPayload::from_static(b"s")).await.unwrap();
        let mut listed = b.list().await.unwrap();
        listed.sort_by(|a, c| a.name.cmp(&c.name));
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!((listed[0].digest.as_ref(), listed[0].name.as_str(), listed[0].size), (Some(&digest), b.blob_key(&digest).as_str(), 10));
        assert!(listed[0].modified.is_some());
        assert_eq!(listed[1].digest, None);
        b.remove(&digest).await.unwrap();
        assert_eq!(b.stat(&digest).await.unwrap(), None);
        // Records: listed under a prefix, without the bucket's prefix, and removed.
        b.put("access/n1/1", Bytes::from_static(b"x")).await.unwrap();
        b.put("access/n2/2", Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(b.get("access/n2/2", 0).await.unwrap_err().kind(), io::ErrorKind::InvalidData, "larger than max");
        b.put("accessories/3", Bytes::from_static(b"z")).await.unwrap();
        let mut keys = b.list_records("access").await.unwrap();
        keys.sort();
        assert_eq!(keys, ["access/n1/1", "access/n2/2"]);
        b.remove_record("access/n1/1").await.unwrap();
        b.remove_record("access/n1/1").await.unwrap();
        assert_eq!(b.list_records("access/").await.unwrap(), ["access/n2/2"]);
        b.remove_record("access/n2/2").await.unwrap();
        b.remove_record("accessories/3").await.unwrap();
        b.probe().await.unwrap();
        let keys: Vec<String> =
            b.store.list(None).map(|m| m.unwrap().location.to_string()).collect::<Vec<_>>().await;
        assert_eq!(keys.len(), 2, "the probe object is deleted: {keys:?}");
    }
}
