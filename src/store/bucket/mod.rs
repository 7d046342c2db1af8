//! The shared tier: a bucket that several regcache nodes use behind their own local hot tiers
//! (`[storage] backend = "s3"`). A blob missing from the hot tier is read from the bucket before
//! it is asked of the upstream, and a blob fetched from the upstream is uploaded to the bucket once
//! the fill has verified it, read back from the hot tier's file ([`Shared::spawn_upload`]). Not
//! while the fill runs: the upload would compete with the client's pull for the node's CPU, disk and
//! network (benchmark figure 11: a cold pull took a median 1.20× the local backend's time with the
//! upload alongside, 0.95× with it after), for the benefit of other nodes finding the blob an
//! upload's time sooner.
//!
//! The bucket may fail, hang or vanish: every request to it is bounded by the backend's timeout,
//! and a failure marks it down ([`Health`]). While it is down nothing is asked of it: hits in the
//! hot tier go on, misses go to the upstream and are kept locally. After [`RETRY`] the next request
//! tries again, and the first success marks it up. What this node keeps meanwhile (a fill
//! verified while the bucket is marked down, a record to write, or an upload or write that failed)
//! waits in the backlog ([`Backlog`], in the index) and is uploaded once the bucket answers
//! again. Whether the bucket is down is asked when the fill is verified, not when it begins.
//!
//! Manifests (by digest, with their media type), what tags pointed at (per upstream, repository,
//! tag and kind of answer, with when it was confirmed), referrers lists and the last tag list of
//! each repository are records in the bucket too ([`Records`]): every node writes what it learns,
//! in the background, and a node that doesn't know a manifest or tag (or only an old answer) reads
//! the bucket before it asks the upstream (referrers and tag lists: when the upstream can't be
//! asked). A manifest read from the bucket is verified like one from the upstream; a tag list is
//! read back as any outside input ([`ListedTags::from_record`]).
//!
//! Which blobs the bucket holds, and their sizes, is remembered in the index
//! ([`super::SharedSizes`]) so a `HEAD` or a hit costs no bucket request per client request; an
//! object that has vanished since is a miss, and is forgotten.
//!
//! With `bucket_max_size`, the node notes which blobs it serves and publishes them, and the evictor
//! among the nodes keeps the bucket under the limit ([`lru`]: [`Shared::touch`],
//! [`Shared::publish_accesses`], [`Shared::evict_round`]).

mod admin;
pub(super) mod backlog;
mod client;
mod eviction;
pub mod lru;
mod multipart;
mod requests;
mod upload;

pub use admin::{BucketFinding, BucketGc, BucketListing, BucketVerified, EvictedBlob};
pub use backlog::{Backlog, Pending, Pushed};
pub use client::{Bucket, BucketError, ObjectStorage, PART_SIZE};
pub use requests::{Observer, Op, Outcome, Request};
pub use upload::VerifiedFill;

use eviction::Eviction;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::store::backend::{BlobBackend, Opened, Records, SharedBackend};
use backlog::MAX_ENTRIES;
use lru::Clock;
use crate::store::index::{ListedTags, SharedSizes, StoredManifest, TagAnswer, MAX_TAG_LIST_RECORD};
use crate::store::records::{manifest_record, read_manifest_record, RecordKey, MAX_MANIFEST_RECORD, MAX_TAG_RECORD};
use crate::metrics::{SharedMetrics, SharedOp};
use crate::oci::{Digest, ManifestKind, Tag, UpstreamRepo};
use crate::sync::lock;

/// How long the bucket is left alone after a failure before a request tries it again.
pub const RETRY: Duration = Duration::from_secs(10);
/// The longest a request waits for the bucket to answer (a blob's size or first bytes, a record)
/// before it goes on without it; the bucket is then marked down. Shorter than the backend's own
/// timeout, which bounds uploads and whole transfers.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How many uploads run at once, the backlog's included; more wait (they read the hot tier's file,
/// so waiting holds no memory).
const MAX_UPLOADS: usize = 8;
/// How many record writes run at once; past this, a record is not written (it is only a shortcut
/// for the other nodes: they ask the upstream instead).
const MAX_RECORD_WRITES: usize = 64;

/// The bucket as this node uses it.
pub struct Shared {
    bucket: Arc<dyn SharedBackend>,
    blobs: Arc<dyn BlobBackend>,
    records: Arc<dyn Records>,
    record_writes: Arc<Semaphore>,
    sizes: SharedSizes,
    health: Health,
    uploads: Arc<Semaphore>,
    /// What waits for the bucket.
    backlog: Backlog,
    /// Signalled when something is added to the backlog, when the bucket is marked up again, and
    /// when this is dropped: the drain has work, or ends.
    backlogged: Arc<Notify>,
    /// Whether the backlog's being full was logged.
    full_logged: AtomicBool,
    metrics: SharedMetrics,
    /// Set with [`Shared::with_eviction`]: this node takes part in keeping the bucket under a size.
    eviction: Option<Eviction>,
    clock: Clock,
}

/// Whether the bucket answers: since when it doesn't, if it doesn't.
#[derive(Default)]
pub struct Health {
    // A std Mutex: held to read or set one value, never across an await.
    down_since: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether a request may go to the bucket now: it is up, or it has been down for [`RETRY`].
    fn available(&self) -> bool {
        lock(&self.down_since).is_none_or(|since| since.elapsed() >= RETRY)
    }

    /// Whether the bucket is marked down.
    pub fn is_down(&self) -> bool {
        lock(&self.down_since).is_some()
    }

    /// A request failed: down from now. Whether it was up before (say so once).
    fn failed(&self) -> bool {
        lock(&self.down_since).replace(Instant::now()).is_none()
    }

    /// A request succeeded: up. Whether it was down before.
    fn succeeded(&self) -> bool {
        lock(&self.down_since).take().is_some()
    }

    /// When a request may go to the bucket, if not now.
    fn retry_at(&self) -> Option<Instant> {
        lock(&self.down_since).map(|since| since + RETRY).filter(|at| *at > Instant::now())
    }
}

/// Why something wasn't done in the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotDone {
    /// The bucket failed (it is marked down now): try again later.
    Failed,
    /// It can't be done, and trying again won't help: the bucket holds something unusable, or
    /// this node's copy is gone, unreadable or corrupt.
    Unusable,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The drain waits on this: it wakes, finds the store gone and ends.
        self.backlogged.notify_one();
    }
}

impl Shared {
    /// The `bucket`, with the index's record of which blobs it holds and its backlog.
    pub fn new(bucket: Arc<dyn SharedBackend>, sizes: SharedSizes, backlog: Backlog, metrics: SharedMetrics) -> Shared {
        backlog.count_in(metrics.backlog_waiting());
        Shared {
            blobs: bucket.clone(),
            records: bucket.clone(),
            bucket,
            record_writes: Arc::new(Semaphore::new(MAX_RECORD_WRITES)),
            sizes,
            health: Health::default(),
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
            backlog,
            backlogged: Arc::default(),
            full_logged: AtomicBool::new(false),
            metrics,
            eviction: None,
            clock: Clock::default(),
        }
    }

    /// The manifest `digest` from the bucket, verified (its digest and media type, as from the
    /// upstream); `None` if the bucket doesn't have it, can't be asked now, or holds something
    /// that fails verification. At most [`MAX_MANIFEST_RECORD`] bytes are read.
    pub async fn manifest(&self, digest: &Digest) -> Option<StoredManifest> {
        let record = self.get_record(&RecordKey::Manifest(digest.clone()), MAX_MANIFEST_RECORD).await?;
        match read_manifest_record(record, digest) {
            Ok(m) => Some(m),
            Err(why) => {
                tracing::error!(%digest, error = %why, "the bucket's copy of a manifest fails verification; ignored");
                None
            }
        }
    }

    /// Write a verified manifest to the bucket, in the background (later, from the index, if the
    /// bucket is down).
    pub fn publish_manifest(self: &Arc<Self>, digest: &Digest, m: &StoredManifest) {
        self.put_record(RecordKey::Manifest(digest.clone()), manifest_record(m), Some(Pending::Manifest { digest: digest.clone() }));
    }

    /// What the bucket says `tag` (of `repo`) pointed at for clients asking for `kind`, and when
    /// that was confirmed.
    pub async fn tag(&self, repo: &UpstreamRepo, tag: &Tag, kind: ManifestKind) -> Option<TagAnswer> {
        let record = self.get_record(&tag_key(repo, tag, kind), MAX_TAG_RECORD).await?;
        serde_json::from_slice(&record).ok()
    }

    /// Write what a tag pointed at to the bucket, in the background (later, the index's answer
    /// then, if the bucket is down).
    pub fn publish_tag(self: &Arc<Self>, repo: &UpstreamRepo, tag: &Tag, kind: ManifestKind, answer: &TagAnswer) {
        // Serialising a digest and an integer cannot fail.
        if let Ok(v) = serde_json::to_vec(answer) {
            let later = Pending::Tag { repo: repo.clone(), tag: tag.clone(), kind };
            self.put_record(tag_key(repo, tag, kind), v.into(), Some(later));
        }
    }

    /// The last referrers list of `digest` (in `repo`) some node wrote, up to `max` bytes: for
    /// when the upstream can't be asked.
    pub async fn referrers(&self, repo: &UpstreamRepo, digest: &Digest, max: usize) -> Option<Bytes> {
        self.get_record(&referrers_key(repo, digest), max).await
    }

    /// Write a referrers list the upstream gave to the bucket, in the background (later, from the
    /// index, if the bucket is down).
    pub fn publish_referrers(self: &Arc<Self>, repo: &UpstreamRepo, digest: &Digest, body: Bytes) {
        let later = Pending::Referrers { repo: repo.clone(), subject: digest.clone() };
        self.put_record(referrers_key(repo, digest), body, Some(later));
    }

    /// The last tag list of `repo` some node wrote: for when the upstream can't be asked. `None`
    /// if there is none, or what the bucket holds isn't a valid list.
    pub async fn tag_list(&self, repo: &UpstreamRepo) -> Option<ListedTags> {
        let record = self.get_record(&tag_list_key(repo), MAX_TAG_LIST_RECORD).await?;
        let list = ListedTags::from_record(&record);
        if list.is_none() {
            tracing::warn!(upstream = %repo.upstream, repo = %repo.name, "the bucket's tag list record is not a valid list; ignored");
        }
        list
    }

    /// Write a repository's tag list to the bucket, in the background.
    pub fn publish_tag_list(self: &Arc<Self>, repo: &UpstreamRepo, list: &ListedTags) {
        self.put_record(tag_list_key(repo), list.to_record().into(), None);
    }

    async fn get_record(&self, key: &RecordKey, max: usize) -> Option<Bytes> {
        if !self.health.available() {
            return None;
        }
        self.outcome(SharedOp::GetRecord, answered(self.records.get(&key.to_string(), max)).await)?
    }

    /// Write the record `key` in the background; if the bucket is down or the write fails,
    /// `later` (if any) waits in the backlog. A tag list has none: it is written again with the
    /// next listing the upstream answers.
    fn put_record(self: &Arc<Self>, key: RecordKey, value: Bytes, later: Option<Pending>) {
        if !self.health.available() {
            if let Some(later) = &later {
                self.keep_for_later(later);
            }
            return;
        }
        let Ok(permit) = self.record_writes.clone().try_acquire_owned() else {
            tracing::debug!(%key, "too many bucket writes running; this record is not written");
            return;
        };
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            let written = shared.records.put(&key.to_string(), value).await;
            if shared.attempt(SharedOp::PutRecord, written) == Err(NotDone::Failed) {
                if let Some(later) = &later {
                    shared.keep_for_later(later);
                }
            }
        });
    }

    /// Put `pending` in the backlog, for when the bucket answers again.
    fn keep_for_later(&self, pending: &Pending) {
        match self.backlog.push(pending) {
            Ok(Pushed::Queued) => tracing::debug!(?pending, "kept for the bucket's return"),
            Ok(Pushed::Already) => return,
            Ok(Pushed::DroppedOldest) => {
                self.metrics.backlog_dropped();
                if !self.full_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max = MAX_ENTRIES,
                        "the bucket's backlog is full: its oldest entries are dropped and won't reach the bucket from this node"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(?pending, error = %e, "keeping something for the bucket's return failed; it won't reach the bucket from this node");
                return;
            }
        }
        self.backlogged.notify_one();
    }

    /// What waits for the bucket.
    pub(super) fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Signalled when the backlog may have work: something was added, the bucket was marked up,
    /// or this is gone.
    pub(super) fn backlogged(&self) -> Arc<Notify> {
        self.backlogged.clone()
    }

    /// The permits of the uploads running at once.
    pub(super) fn upload_permits(&self) -> Arc<Semaphore> {
        self.uploads.clone()
    }

    /// When a request may go to the bucket, if not now (it is down).
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.health.retry_at()
    }

    /// Write the record of manifest `digest` now.
    pub(super) async fn write_manifest(&self, digest: &Digest, m: &StoredManifest) -> Result<(), NotDone> {
        let written = self.records.put(&RecordKey::Manifest(digest.clone()).to_string(), manifest_record(m)).await;
        self.attempt(SharedOp::PutRecord, written)
    }

    /// Write what a tag pointed at now, unless the bucket's answer was confirmed as late or later
    /// (another node may have written a newer one while this one waited).
    pub(super) async fn write_tag(&self, repo: &UpstreamRepo, tag: &Tag, kind: ManifestKind, ours: &TagAnswer) -> Result<(), NotDone> {
        let key = tag_key(repo, tag, kind).to_string();
        let theirs = match self.attempt(SharedOp::GetRecord, answered(self.records.get(&key, MAX_TAG_RECORD)).await) {
            Ok(record) => record.and_then(|r| serde_json::from_slice::<TagAnswer>(&r).ok()),
            // Too large to be a tag record: ours replaces it.
            Err(NotDone::Unusable) => None,
            Err(NotDone::Failed) => return Err(NotDone::Failed),
        };
        if theirs.is_some_and(|t| t.checked_at >= ours.checked_at) {
            return Ok(());
        }
        // Serialising a digest and an integer cannot fail.
        let value = serde_json::to_vec(ours).unwrap_or_default();
        let written = self.records.put(&key, value.into()).await;
        self.attempt(SharedOp::PutRecord, written)
    }

    /// Write a referrers list now.
    pub(super) async fn write_referrers(&self, repo: &UpstreamRepo, subject: &Digest, body: Bytes) -> Result<(), NotDone> {
        let written = self.records.put(&referrers_key(repo, subject).to_string(), body).await;
        self.attempt(SharedOp::PutRecord, written)
    }

    /// Whether the bucket is marked down.
    pub fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// The size of `digest` in the bucket: remembered, else asked (`HEAD`) and remembered. `None`
    /// if the bucket doesn't have it or can't be asked now.
    pub async fn size(&self, digest: &Digest) -> Option<u64> {
        if let Ok(Some(size)) = self.sizes.get(digest) {
            return Some(size);
        }
        if !self.health.available() {
            return None;
        }
        let size = self.outcome(SharedOp::Head, answered(self.blobs.stat(digest)).await)?;
        if let Some(size) = size {
            self.remember(digest, size);
        }
        size
    }

    /// The whole blob `digest` from the bucket, for a fill into the hot tier; `None` if the bucket
    /// doesn't have it (a vanished object is forgotten) or can't be asked now.
    pub async fn open(&self, digest: &Digest) -> Option<Opened> {
        let size = self.size(digest).await?;
        self.read(digest, size, 0..size).await
    }

    /// `range` of the blob `digest` of `size` bytes from the bucket (one ranged GET: a client's
    /// range of a blob the hot tier doesn't have); `None` as for [`Shared::open`].
    pub async fn read(&self, digest: &Digest, size: u64, range: std::ops::Range<u64>) -> Option<Opened> {
        if !self.health.available() {
            return None;
        }
        let len = range.end.saturating_sub(range.start);
        match self.outcome(SharedOp::Get, answered(self.blobs.open(digest, range)).await)? {
            Some(opened) if opened.size == size => {
                self.metrics.read(len);
                self.touch(digest);
                Some(opened)
            }
            _ => {
                tracing::info!(%digest, "a blob known to be in the bucket is gone from it; a miss");
                let _ = self.sizes.remove(digest);
                None
            }
        }
    }

    /// The bucket's copy of `digest` failed verification: remove it, so the next request fetches
    /// the blob from the upstream (and uploads it again).
    pub async fn discard(&self, digest: &Digest, why: &(dyn std::fmt::Display + Sync)) {
        tracing::error!(%digest, error = %why, "the bucket's copy of a blob is corrupt; removing it");
        let _ = self.sizes.remove(digest);
        if let Err(e) = self.blobs.remove(digest).await {
            tracing::warn!(%digest, error = %e, "removing a corrupt blob from the bucket failed");
        }
    }

    fn remember(&self, digest: &Digest, size: u64) {
        if let Err(e) = self.sizes.put(digest, size) {
            tracing::warn!(%digest, error = %e, "noting a blob in the bucket failed");
        }
    }

    /// Count a bucket request and mark the bucket up or down by its result; the value if it
    /// succeeded.
    fn outcome<T>(&self, op: SharedOp, result: io::Result<T>) -> Option<T> {
        self.attempt(op, result).ok()
    }

    /// [`Shared::outcome`], saying why there is no value.
    fn attempt<T>(&self, op: SharedOp, result: io::Result<T>) -> Result<T, NotDone> {
        self.metrics.operation(op, result.is_ok());
        match result {
            Ok(v) => {
                if self.health.succeeded() {
                    tracing::warn!(backlog = self.backlog.len(), "the bucket answers again; reading from and uploading to it, and uploading its backlog");
                    self.metrics.down(false);
                    self.backlogged.notify_one();
                }
                Ok(v)
            }
            // Something the bucket holds is wrong (a record too large): not the bucket failing.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(operation = op.as_str(), error = %e, "the bucket holds something unusable; ignored");
                Err(NotDone::Unusable)
            }
            Err(e) => {
                if self.health.failed() {
                    tracing::error!(operation = op.as_str(), error = %e, "the bucket failed; serving from the hot tier and the upstream without it, keeping what it should have for later (retried in {RETRY:?})");
                    self.metrics.down(true);
                } else {
                    tracing::debug!(operation = op.as_str(), error = %e, "the bucket failed again");
                }
                Err(NotDone::Failed)
            }
        }
    }
}

/// `request`'s result, or a timeout error if the bucket doesn't answer within [`ANSWER_WITHIN`].
async fn answered<T>(request: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(ANSWER_WITHIN, request).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("the bucket did not answer within {ANSWER_WITHIN:?}"))),
    }
}

/// The key of a tag's record.
fn tag_key(repo: &UpstreamRepo, tag: &Tag, kind: ManifestKind) -> RecordKey {
    RecordKey::Tag { repo: repo.clone(), tag: tag.clone(), kind }
}

/// The key of the record of the referrers of `subject` in `repo`.
fn referrers_key(repo: &UpstreamRepo, subject: &Digest) -> RecordKey {
    RecordKey::Referrers { repo: repo.clone(), subject: subject.clone() }
}

/// The key of the record of the tag list of `repo`.
fn tag_list_key(repo: &UpstreamRepo) -> RecordKey {
    RecordKey::TagList { repo: repo.clone() }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::sync::oneshot;

    use super::upload::UPLOAD_CHUNK;
    use super::*;
    use crate::store::{BlobRead, BlobWrite, LocalBlobs, Store};

    /// A node's store and a second local directory standing in for the bucket.
    fn setup() -> (tempfile::TempDir, Store, Arc<LocalBlobs>, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node")).unwrap();
        let bucket = Arc::new(LocalBlobs::at(&dir.path().join("bucket")).unwrap());
        let shared = Arc::new(Shared::new(bucket.clone(), store.index.shared_sizes(), store.index.backlog().clone(), crate::metrics::Metrics::new().shared()));
        (dir, store, bucket, shared)
    }

    async fn read_all(mut r: Box<dyn BlobRead>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// A hot-tier write of `bytes` with an upload waiting on it; the sender that says it is verified.
    async fn write_and_follow(
        store: &Store,
        shared: &Arc<Shared>,
        bytes: &[u8],
    ) -> (Digest, Box<dyn BlobWrite>, oneshot::Sender<VerifiedFill>, tokio::task::JoinHandle<()>) {
        let digest = Digest::sha256_of(bytes);
        let mut w = store.blobs.begin(&digest, Some(bytes.len() as u64)).await.unwrap();
        let (tx, rx) = oneshot::channel();
        let task = shared.spawn_upload(&digest, w.partial().unwrap().reader(), rx).expect("the bucket is up");
        let half = bytes.len() / 2;
        w.append(&[Bytes::copy_from_slice(&bytes[..half])]).await.unwrap();
        w.append(&[Bytes::copy_from_slice(&bytes[half..])]).await.unwrap();
        (digest, w, tx, task)
    }

    /// Wait until the upload task has ended.
    async fn upload_done(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the upload ends").unwrap();
    }

    #[tokio::test]
    async fn an_upload_completes_only_after_verification() {
        let (dir, store, bucket, shared) = setup();
        let bytes = vec![7u8; 3 * UPLOAD_CHUNK + 5];
        let (digest, w, tx, task) = write_and_follow(&store, &shared, &bytes).await;
        // Every byte is written but not verified: the upload hasn't begun (it waits on `tx`).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!task.is_finished());
        assert_eq!(std::fs::read_dir(dir.path().join("bucket/tmp")).unwrap().count(), 0, "nothing begun in the bucket");
        assert_eq!(bucket.stat(&digest).await.unwrap(), None);
        w.commit().await.unwrap();
        tx.send(VerifiedFill { size: bytes.len() as u64, kept: true }).unwrap();
        upload_done(task).await;
        let opened = bucket.open(&digest, 0..bytes.len() as u64).await.unwrap().expect("uploaded");
        assert_eq!(read_all(opened.reader).await, bytes);
        assert_eq!(store.index.shared_sizes().get(&digest).unwrap(), Some(bytes.len() as u64), "remembered");
        // Another node (an empty hot tier, the same index record) reads it from the bucket.
        let opened = shared.open(&digest).await.expect("in the bucket");
        assert_eq!(read_all(opened.reader).await, bytes);
    }

    #[tokio::test]
    async fn a_fill_that_ends_unverified_uploads_nothing() {
        let (dir, store, bucket, shared) = setup();
        let (digest, w, tx, task) = write_and_follow(&store, &shared, b"wrong bytes, say").await;
        drop(tx);
        w.abort().await;
        upload_done(task).await;
        assert_eq!(bucket.stat(&digest).await.unwrap(), None);
        assert!(bucket.list().await.unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.path().join("bucket/tmp")).unwrap().count(), 0, "nothing was begun");
        assert!(!shared.is_down(), "an aborted upload is not a bucket failure");
    }

    #[tokio::test]
    async fn a_vanished_object_is_a_miss_and_forgotten() {
        let (_dir, store, bucket, shared) = setup();
        let bytes = b"once in the bucket".to_vec();
        let (digest, w, tx, task) = write_and_follow(&store, &shared, &bytes).await;
        w.commit().await.unwrap();
        tx.send(VerifiedFill { size: bytes.len() as u64, kept: true }).unwrap();
        upload_done(task).await;
        assert_eq!(shared.size(&digest).await, Some(bytes.len() as u64));
        bucket.remove(&digest).await.unwrap();
        assert!(shared.open(&digest).await.is_none());
        assert_eq!(store.index.shared_sizes().get(&digest).unwrap(), None);
        assert!(!shared.is_down());
    }

    #[test]
    fn the_bucket_is_left_alone_for_a_while_after_a_failure() {
        let health = Health::default();
        assert!(health.available() && !health.is_down());
        assert!(health.failed(), "the first failure is news");
        assert!(!health.failed(), "the second is not");
        assert!(health.is_down() && !health.available());
        *health.down_since.lock().unwrap() = Some(Instant::now() - RETRY);
        assert!(health.available(), "after RETRY one request tries again");
        assert!(health.succeeded());
        assert!(health.available() && !health.is_down());
    }
}
