//! This node's part in `bucket_max_size` (see [`super::lru`]): the blobs it served, noted in
//! memory and published as access summaries with its heartbeat, and, when it is the evictor, one
//! eviction round over every node's summaries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lru::{self, BucketEviction, MAX_PENDING};
use super::{Clock, Shared};
use crate::metrics::SharedOp;
use crate::oci::Digest;
use crate::store::RecordKey;
use crate::sync::lock;

/// This node's part in `bucket_max_size`.
pub(super) struct Eviction {
    node: String,
    max: u64,
    // A std Mutex: held to insert or take the map, never across an await. Bounded by MAX_PENDING.
    pending: Mutex<HashMap<Digest, u64>>,
    /// Signalled when `pending` is full: publish early.
    full: Arc<tokio::sync::Notify>,
    /// One round (publish, evict) at a time on this node.
    rounds: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The same, taking part in keeping the bucket's blobs under `max` bytes as the node `node`
    /// (see [`lru`]); `None` leaves the bucket unlimited.
    pub fn with_eviction(mut self, node: String, max: Option<u64>) -> Shared {
        self.eviction = max.map(|max| Eviction {
            node,
            max,
            pending: Mutex::default(),
            full: Default::default(),
            rounds: Default::default(),
        });
        self
    }

    /// This node's clock, as eviction sees it (tests move it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The node id and `bucket_max_size`, if this node takes part in eviction.
    pub fn eviction(&self) -> Option<(&str, u64)> {
        self.eviction.as_ref().map(|e| (e.node.as_str(), e.max))
    }

    /// Signalled when the accesses noted fill up, to publish them early.
    pub fn accesses_full(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.eviction.as_ref().map(|e| e.full.clone())
    }

    /// Note that this node served `digest` now (a hot-tier hit or a bucket read), for the next
    /// access summary. In memory only; nothing is asked of the bucket.
    pub fn touch(&self, digest: &Digest) {
        let Some(e) = &self.eviction else { return };
        let now = self.clock.now_ms();
        let mut pending = lock(&e.pending);
        if pending.len() >= MAX_PENDING && !pending.contains_key(digest) {
            e.full.notify_one();
            return;
        }
        pending.insert(digest.clone(), now);
    }

    /// Publish this node's heartbeat and the accesses noted since its last summary (see
    /// [`lru`]). Nothing while the bucket is down (the accesses wait, bounded); what
    /// a failed write didn't publish waits for the next time.
    pub async fn publish_accesses(&self) {
        let Some(e) = &self.eviction else { return };
        let _round = e.rounds.lock().await;
        self.publish(e).await;
    }

    async fn publish(&self, e: &Eviction) -> bool {
        if !self.health.available() {
            return false;
        }
        let now = self.clock.now_ms();
        let written = self.records.put(&RecordKey::Node(e.node.clone()).to_string(), lru::heartbeat(now)).await;
        if self.outcome(SharedOp::PutRecord, written).is_none() {
            return false;
        }
        let mut accesses: Vec<(Digest, u64)> = std::mem::take(&mut *lock(&e.pending)).into_iter().collect();
        if accesses.is_empty() {
            return true;
        }
        accesses.sort_by_key(|(_, at)| *at);
        let records = lru::summaries(&e.node, now, false, &accesses);
        for (n, (key, body)) in records.into_iter().enumerate() {
            let written = self.records.put(&key, body).await;
            if self.outcome(SharedOp::PutRecord, written).is_none() {
                // Put back what wasn't published (a newer access noted meanwhile wins).
                let mut pending = lock(&e.pending);
                for (d, at) in accesses.into_iter().skip(n * lru::MAX_SUMMARY_ENTRIES) {
                    let t = pending.entry(d).or_insert(at);
                    *t = (*t).max(at);
                }
                return false;
            }
        }
        true
    }

    /// One round of this node's part: publish its accesses, then, if it is the evictor (the live
    /// node with the smallest id), evict down to the low-water mark if the bucket is over
    /// `bucket_max_size`. What it did, if it was the evictor; nothing while the bucket is down.
    pub async fn evict_round(&self) -> Option<BucketEviction> {
        let e = self.eviction.as_ref()?;
        let _round = e.rounds.lock().await;
        if !self.publish(e).await {
            return None;
        }
        let now = self.clock.now_ms();
        let evictor = self.outcome(SharedOp::Evict, lru::is_evictor(self.bucket.as_ref(), &e.node, now).await)?;
        if !evictor {
            return None;
        }
        self.evict_now(&e.node, now, lru::Limits::nodes(e.max)).await
    }

    /// Evict as `limits` say, merging every node's summaries, as `writer` at `now`; `None` if the
    /// bucket failed (it is then marked down).
    async fn evict_now(&self, writer: &str, now: u64, limits: lru::Limits) -> Option<BucketEviction> {
        let removed = |b: &lru::BlobUse| {
            let _ = self.sizes.remove(&b.digest);
            self.metrics.evicted(b.size);
        };
        let done = lru::evict_bucket(self.bucket.as_ref(), writer, now, limits, false, removed).await;
        let report = self.outcome(SharedOp::Evict, done)?;
        if !report.evicted.is_empty() {
            tracing::info!(
                evicted = report.evicted.len(), bytes = report.bytes_evicted(), before = report.bytes_before,
                bucket_max_size = limits.max, "evicted least-recently-used blobs from the bucket"
            );
        }
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::bucket::RETRY;
    use crate::store::{LocalBlobs, Records, Store};

    #[tokio::test]
    async fn accesses_are_published_in_summaries_and_kept_when_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node")).unwrap();
        let bucket = Arc::new(LocalBlobs::at(&dir.path().join("bucket")).unwrap());
        let shared = Shared::new(bucket.clone(), store.index.shared_sizes(), store.index.backlog().clone(), Metrics::new().shared())
            .with_eviction("n1".into(), Some(1000));
        let (one, two) = (Digest::sha256_of(b"one"), Digest::sha256_of(b"two"));
        shared.touch(&one);
        shared.touch(&two);
        // The records directory can't take summaries: a file stands where it would go.
        std::fs::create_dir_all(dir.path().join("bucket/records")).unwrap();
        std::fs::write(dir.path().join("bucket/records/access"), b"in the way").unwrap();
        shared.publish_accesses().await;
        assert!(shared.is_down(), "a failed write marks the bucket down");
        assert_eq!(lock(&shared.eviction.as_ref().unwrap().pending).len(), 2, "nothing published is lost");
        *shared.health.down_since.lock().unwrap() = Some(Instant::now() - RETRY);
        std::fs::remove_file(dir.path().join("bucket/records/access")).unwrap();
        shared.publish_accesses().await;
        assert!(!shared.is_down());
        let keys = bucket.list_records("access").await.unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].starts_with("access/n1/"));
        let body = bucket.get(&keys[0], 1 << 20).await.unwrap().unwrap();
        let mut got: Vec<Digest> = lru::parse_summary(&body).map(|(d, _)| d).collect();
        got.sort_by_key(|d| d.to_string());
        let mut want = vec![one, two];
        want.sort_by_key(|d| d.to_string());
        assert_eq!(got, want);
        assert!(bucket.get("nodes/n1", 100).await.unwrap().is_some(), "the heartbeat");
        // Nothing new: no new summary.
        shared.publish_accesses().await;
        assert_eq!(bucket.list_records("access").await.unwrap().len(), 1);
        // Without bucket_max_size nothing is noted.
        let unlimited = Shared::new(bucket.clone(), store.index.shared_sizes(), store.index.backlog().clone(), Metrics::new().shared()).with_eviction("n2".into(), None);
        unlimited.touch(&Digest::sha256_of(b"three"));
        unlimited.publish_accesses().await;
        assert!(unlimited.evict_round().await.is_none());
        assert_eq!(bucket.list_records("nodes").await.unwrap(), ["nodes/n1"]);
    }
}
