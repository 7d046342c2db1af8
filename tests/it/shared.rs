//! Mirrors sharing one bucket behind their own data directories (the hot tiers): what one fetched
//! (blobs, manifests, tags, tag lists), the other serves without the upstream; the bucket never serves unverified bytes; a failing
//! bucket degrades to hot tier + upstream. The bucket here is a directory behind the storage seam,
//! with a switch that makes it fail; `it::bucket` runs the S3 backend against a real server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use regcache::oci::Digest;
use bytes::Bytes;
use regcache::store::{BlobBackend, BlobWrite, Listed, LocalBlobs, Opened, Records, SharedBackend};

use crate::it::mirror::{Mirror, Options};
use crate::it::tags;
use crate::support::fake_registry::{FakeRegistry, Fault};
use crate::support::images;

/// A bucket: a directory behind the seam (records are files under `records/`), failing every
/// request while `down` is set.
pub struct TestBucket {
    pub dir: tempfile::TempDir,
    pub files: LocalBlobs,
    pub down: AtomicBool,
    /// Every request hangs (a bucket that accepts connections and never answers).
    pub hung: AtomicBool,
}

impl TestBucket {
    pub fn new() -> Arc<TestBucket> {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LocalBlobs::at(dir.path()).expect("bucket dir");
        Arc::new(TestBucket { dir, files, down: AtomicBool::new(false), hung: AtomicBool::new(false) })
    }

    async fn check(&self) -> std::io::Result<()> {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        match self.down.load(Ordering::SeqCst) {
            true => Err(std::io::Error::other("bucket unreachable (test)")),
            false => Ok(()),
        }
    }

    pub fn path(&self, digest: &str) -> std::path::PathBuf {
        self.files.path(&digest.parse().expect("digest"))
    }

    pub fn objects(&self) -> usize {
        self.files.list_files().expect("list").len()
    }
}

#[async_trait]
impl BlobBackend for TestBucket {
    async fn begin(&self, digest: &Digest, size: Option<u64>) -> std::io::Result<Box<dyn BlobWrite>> {
        self.check().await?;
        self.files.begin(digest, size).await
    }
    async fn open(&self, digest: &Digest, range: std::ops::Range<u64>) -> std::io::Result<Option<Opened>> {
        self.check().await?;
        self.files.open(digest, range).await
    }
    async fn stat(&self, digest: &Digest) -> std::io::Result<Option<u64>> {
        self.check().await?;
        self.files.stat(digest).await
    }
    async fn list(&self) -> std::io::Result<Vec<Listed>> {
        self.check().await?;
        self.files.list().await
    }
    async fn remove(&self, digest: &Digest) -> std::io::Result<()> {
        self.check().await?;
        self.files.remove(digest).await
    }
}

#[async_trait]
impl Records for TestBucket {
    async fn get(&self, key: &str, max: usize) -> std::io::Result<Option<Bytes>> {
        self.check().await?;
        self.files.get(key, max).await
    }
    async fn put(&self, key: &str, value: Bytes) -> std::io::Result<()> {
        self.check().await?;
        self.files.put(key, value).await
    }
    async fn list_records(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        self.check().await?;
        self.files.list_records(prefix).await
    }
    async fn remove_record(&self, key: &str) -> std::io::Result<()> {
        self.check().await?;
        self.files.remove_record(key).await
    }
}

/// A mirror on `bucket`; tags are trusted for a minute (the default revalidates every time).
pub async fn node(reg: &FakeRegistry, bucket: &Arc<TestBucket>) -> Mirror {
    node_at(reg, bucket, None).await
}

/// The same, on `data_dir` if given (a restart), else a fresh directory.
pub async fn node_at(reg: &FakeRegistry, bucket: &Arc<TestBucket>, data_dir: Option<std::path::PathBuf>) -> Mirror {
    let bucket: Arc<dyn SharedBackend> = bucket.clone();
    let extra = "tag_ttl = \"1m\"\n".to_owned();
    Mirror::start_with(reg, Options { credentials: true, bucket: Some(bucket), extra, data_dir, ..Default::default() }).await
}

/// Wait until `n` uploads to the bucket have completed.
async fn uploaded(m: &Mirror, n: usize) {
    m.metrics_with(&format!("regcache_bucket_operations_total{{op=\"upload\",result=\"ok\"}} {n}\n")).await;
}

#[tokio::test]
async fn a_blob_one_node_fetched_another_serves_without_the_upstream() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 3, 200_000);
    let bucket = TestBucket::new();
    let a = node(&reg, &bucket).await;
    for blob in image.blobs() {
        let (status, bytes) = a.blob("alpine", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes);
    }
    uploaded(&a, image.blobs().len()).await;
    assert_eq!(bucket.objects(), image.blobs().len(), "every blob is in the bucket");

    reg.clear_log();
    let b = node(&reg, &bucket).await;
    // A range of a blob the hot tier doesn't have: one ranged GET to the bucket.
    let first = &image.blobs()[0];
    let resp = Mirror::client()
        .get(format!("{}/v2/alpine/blobs/{}", b.url, first.digest))
        .header("range", "bytes=10-99")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &first.bytes[10..100]);
    b.metrics_with("regcache_bucket_bytes_total{direction=\"read\"} 90\n").await;
    assert!(!b.has_blob(&first.digest), "a range alone doesn't fill the hot tier");
    for blob in image.blobs() {
        let head = b.head(&format!("/v2/alpine/blobs/{}", blob.digest)).await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], blob.bytes.len().to_string().as_str());
        let (status, bytes) = b.blob("alpine", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes, "node B serves {}", blob.digest);
    }
    assert!(reg.requests().is_empty() && reg.cdn_requests().is_empty(), "node B asked the upstream: {:?} {:?}", reg.requests(), reg.cdn_requests());
    b.metrics_with("regcache_bucket_bytes_total{direction=\"read\"}").await;
    // Node B kept them in its hot tier: the next reads don't touch the bucket.
    for blob in image.blobs() {
        b.wait_stored(&blob.digest).await;
    }
    bucket.down.store(true, Ordering::SeqCst);
    for blob in image.blobs() {
        let (status, bytes) = b.blob("alpine", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes);
    }
}

#[tokio::test]
async fn an_image_one_node_pulled_by_tag_another_pulls_without_the_upstream() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 50_000);
    let bucket = TestBucket::new();
    let a = node(&reg, &bucket).await;
    let resp = a.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200);
    for blob in image.blobs() {
        a.blob("alpine", &blob.digest).await.expect("blob");
    }
    uploaded(&a, image.blobs().len()).await;
    a.metrics_with("regcache_bucket_operations_total{op=\"put_record\",result=\"ok\"} 2\n").await;

    reg.clear_log();
    let b = node(&reg, &bucket).await;
    let resp = b.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(resp.bytes().await.expect("body").as_ref(), image.manifest.bytes.as_slice());
    for blob in image.blobs() {
        let (status, bytes) = b.blob("alpine", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes);
    }
    assert!(reg.requests().is_empty() && reg.cdn_requests().is_empty(), "node B asked the upstream: {:?} {:?}", reg.requests(), reg.cdn_requests());
    // A manifest by digest too, and a record that fails verification is ignored.
    let resp = b.get_manifest("alpine", &image.manifest.digest).await;
    assert_eq!(resp.status(), 200);
    let c = node(&reg, &bucket).await;
    let hex = image.manifest.digest.trim_start_matches("sha256:");
    let record = bucket.dir.path().join("records/manifests/sha256").join(hex);
    let mut tampered = std::fs::read(&record).expect("manifest record");
    let last = tampered.len() - 2;
    tampered[last] ^= 0x01;
    std::fs::write(&record, tampered).expect("tamper");
    let resp = c.get_manifest("alpine", &image.manifest.digest).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), image.manifest.bytes.as_slice(), "from the upstream, not the tampered record");
    assert!(reg.requests().iter().any(|r| r.path_and_query.contains(&image.manifest.digest)), "fetched from the upstream");
}

#[tokio::test]
async fn a_corrupt_object_in_the_bucket_is_never_served_as_good_and_is_removed() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100_000);
    let blob = image.blobs()[0].clone();
    let bucket = TestBucket::new();
    let a = node(&reg, &bucket).await;
    a.blob("alpine", &blob.digest).await.expect("blob");
    uploaded(&a, 1).await;
    // Same length, other bytes.
    let mut tampered = blob.bytes.clone();
    tampered[10] ^= 0xff;
    std::fs::write(bucket.path(&blob.digest), &tampered).expect("tamper");

    reg.clear_log();
    let b = node(&reg, &bucket).await;
    let got = b.blob("alpine", &blob.digest).await;
    assert!(got.is_err() || got.as_ref().is_ok_and(|(s, bytes)| *s != 200 || bytes.len() < blob.bytes.len()), "wrong bytes are never a complete answer");
    assert!(!b.has_blob(&blob.digest), "nor stored");
    assert!(!bucket.path(&blob.digest).exists(), "the corrupt object is removed from the bucket");
    // The next request fetches it from the upstream, and uploads it again.
    let (status, bytes) = b.blob("alpine", &blob.digest).await.expect("blob");
    assert!(status == 200 && bytes == blob.bytes);
    assert_eq!(reg.cdn_count(&blob.digest), 1);
    uploaded(&b, 1).await;
    assert_eq!(std::fs::read(bucket.path(&blob.digest)).expect("uploaded again"), blob.bytes);
}

#[tokio::test]
async fn a_failing_bucket_degrades_to_the_hot_tier_and_the_upstream() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 100_000);
    let bucket = TestBucket::new();
    let m = node(&reg, &bucket).await;
    let blobs: Vec<_> = image.blobs().into_iter().cloned().collect();
    m.blob("alpine", &blobs[0].digest).await.expect("blob");
    uploaded(&m, 1).await;
    m.wait_stored(&blobs[0].digest).await;

    bucket.down.store(true, Ordering::SeqCst);
    // A hit in the hot tier, and a miss from the upstream, while the bucket fails.
    for blob in &blobs {
        let (status, bytes) = m.blob("alpine", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes, "{}", blob.digest);
    }
    m.wait_stored(&blobs[1].digest).await;
    m.metrics_with("regcache_bucket_down 1\n").await;
    assert_eq!(bucket.objects(), 1, "nothing was uploaded while the bucket failed");
}

#[tokio::test]
async fn a_referrers_list_one_node_saw_another_serves_while_the_upstream_is_down() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let sig = format!("sha256:{}", "1".repeat(64));
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_INDEX,
        "manifests": [{"mediaType": images::OCI_MANIFEST, "digest": sig, "size": 10, "artifactType": "application/x-sig"}]
    });
    reg.put_referrers("library/alpine", &image.manifest.digest, serde_json::to_vec(&list).unwrap());
    let bucket = TestBucket::new();
    let a = node(&reg, &bucket).await;
    let path = format!("/v2/alpine/referrers/{}", image.manifest.digest);
    assert_eq!(a.get(&path).await.status(), 200);
    a.metrics_with("regcache_bucket_operations_total{op=\"put_record\",result=\"ok\"} 1\n").await;

    reg.set_fault(Fault::Status { code: 503, retry_after: None, path_contains: "/v2/".into() });
    let b = node(&reg, &bucket).await;
    let resp = b.get(&path).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["manifests"][0]["digest"], sig.as_str(), "node A's list, from the bucket");
}

#[tokio::test]
async fn a_tag_list_one_node_saw_another_lists_the_same_while_the_upstream_is_down() {
    let reg = tags::alpine_tagged_a_to_e(None).await;
    let bucket = TestBucket::new();
    let a = node(&reg, &bucket).await;
    let online = tags::listings(&a, false).await;
    a.metrics_with("regcache_bucket_operations_total{op=\"put_record\",result=\"ok\"} 1\n").await;
    assert_eq!(bucket.files.list_records("taglists").await.unwrap(), ["taglists/docker.io/library/alpine/_list"]);

    reg.stop().await;
    let b = node(&reg, &bucket).await;
    assert_eq!(tags::listings(&b, true).await, online, "node A's list, from the bucket");
}

#[tokio::test]
async fn through_the_s3_backend_in_memory_a_multipart_blob_reaches_the_other_node() {
    let reg = FakeRegistry::start().await;
    // Three parts of 8 MiB and a bit: uploaded part by part as the fill writes it.
    let image = images::schema2_image(&reg, "library/big", "1", 1, 3 * 8 * 1024 * 1024 + 123);
    let records = tempfile::tempdir().expect("tempdir");
    let bucket: Arc<dyn SharedBackend> = Arc::new(regcache::store::Bucket::in_memory("fleet", records.path()));
    let start = |bucket: Arc<dyn SharedBackend>| {
        let extra = "tag_ttl = \"1m\"\n".to_owned();
        Mirror::start_with(&reg, Options { credentials: true, bucket: Some(bucket), extra, ..Default::default() })
    };
    let a = start(bucket.clone()).await;
    assert_eq!(a.get_manifest("big", "1").await.status(), 200);
    for blob in image.blobs() {
        let (status, bytes) = a.blob("big", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes);
    }
    uploaded(&a, image.blobs().len()).await;
    assert_eq!(std::fs::read_dir(records.path().join("uploads")).map(|d| d.count()).unwrap_or(0), 0, "no upload left recorded");

    reg.clear_log();
    let b = start(bucket).await;
    assert_eq!(b.get_manifest("big", "1").await.status(), 200);
    for blob in image.blobs() {
        let (status, bytes) = b.blob("big", &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes);
    }
    assert!(reg.requests().is_empty() && reg.cdn_requests().is_empty(), "node B asked the upstream: {:?}", reg.requests());
}

/// A mirror on `bucket` keeping the bucket's blobs under `bucket_max_size` (the S3 table only
/// carries the limit: the bucket itself is `bucket`).
async fn node_with_limit(reg: &FakeRegistry, bucket: &Arc<TestBucket>, max: &str) -> Mirror {
    let bucket: Arc<dyn SharedBackend> = bucket.clone();
    let top = format!("[storage]\nbackend = \"s3\"\nbucket = \"test-bucket\"\nbucket_max_size = \"{max}\"\n");
    let extra = "tag_ttl = \"1m\"\n".to_owned();
    Mirror::start_with(reg, Options { credentials: true, bucket: Some(bucket), extra, top, ..Default::default() }).await
}

#[tokio::test]
async fn bucket_eviction_removes_what_no_node_used_lately_and_keeps_what_any_node_did() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 3, 100_000);
    let (x, y, w) = (&image.layers[0], &image.layers[1], &image.layers[2]);
    let bucket = TestBucket::new();
    // Far over the limit: only the protection window keeps what was read lately.
    let a = node_with_limit(&reg, &bucket, "1000B").await;
    let b = node_with_limit(&reg, &bucket, "1000B").await;
    assert!(a.blob("alpine", &x.digest).await.expect("blob").0 == 200);
    uploaded(&a, 1).await;
    for blob in [y, w] {
        assert!(b.blob("alpine", &blob.digest).await.expect("blob").0 == 200);
    }
    uploaded(&b, 2).await;
    for (m, blob) in [(&a, x), (&b, y), (&b, w)] {
        m.wait_stored(&blob.digest).await;
    }
    assert_eq!(bucket.objects(), 3);

    // Node B reads Y now (a hot-tier hit), W 55 minutes later, and node A reads X 5 minutes
    // after that: Y was read an hour ago, W 5 minutes ago, X just now.
    let (sa, sb) = (a.shared(), b.shared());
    assert!(b.blob("alpine", &y.digest).await.expect("blob").1 == y.bytes);
    for s in [&sa, &sb] {
        s.clock().advance(std::time::Duration::from_secs(55 * 60));
    }
    assert!(b.blob("alpine", &w.digest).await.expect("blob").1 == w.bytes);
    for s in [&sa, &sb] {
        s.clock().advance(std::time::Duration::from_secs(5 * 60));
    }
    assert!(a.blob("alpine", &x.digest).await.expect("blob").1 == x.bytes);
    sa.publish_accesses().await;
    sb.publish_accesses().await;

    // Exactly one of them is the evictor.
    let (ra, rb) = (sa.evict_round().await, sb.evict_round().await);
    let (evictor, report) = match (ra, rb) {
        (Some(r), None) => (&a, r),
        (None, Some(r)) => (&b, r),
        other => panic!("one evictor, not {other:?}"),
    };
    let evicted: Vec<String> = report.evicted.iter().map(|e| e.digest.to_string()).collect();
    assert_eq!(evicted, std::slice::from_ref(&y.digest), "only the blob nobody read in the last 10 minutes");
    assert!(!bucket.path(&y.digest).exists());
    assert!(bucket.path(&x.digest).exists() && bucket.path(&w.digest).exists(), "read within the protection window: kept");
    let app = evictor.app.upgrade().expect("runs");
    assert_eq!(app.cache().store().index().shared_sizes().get(&y.digest.parse().unwrap()).unwrap(), None, "forgotten by the evictor");
    drop(app);
    evictor.metrics_with("regcache_bucket_evictions_total 1\n").await;
    evictor.metrics_with(&format!("regcache_bucket_evicted_bytes_total {}\n", y.bytes.len())).await;
    let keys = bucket.files.list_records("access").await.expect("summaries");
    assert!(keys.len() == 1 && keys[0].contains("-c"), "the summaries were compacted: {keys:?}");
    assert_eq!(bucket.files.list_records("nodes").await.expect("heartbeats").len(), 2, "both nodes' heartbeats");

    // Node A never had Y: the bucket no longer does either, so it comes from the upstream again.
    reg.clear_log();
    assert!(a.blob("alpine", &y.digest).await.expect("blob").1 == y.bytes);
    assert_eq!(reg.cdn_count(&y.digest), 1, "fetched from the upstream after the eviction");

    // While the bucket fails, a round does nothing (and asks nothing).
    bucket.down.store(true, Ordering::SeqCst);
    assert!(sa.evict_round().await.is_none() && sb.evict_round().await.is_none());
}

#[tokio::test]
async fn a_bucket_that_never_answers_costs_a_request_seconds_not_a_hang() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 10_000);
    let bucket = TestBucket::new();
    let m = node(&reg, &bucket).await;
    bucket.hung.store(true, Ordering::SeqCst);
    // The first request waits for the bucket at most ANSWER_WITHIN, then the upstream answers; the
    // bucket is marked down and the next ones don't wait for it at all.
    let pull = async {
        let resp = m.get_manifest("alpine", "3").await;
        assert_eq!(resp.status(), 200);
        for blob in image.blobs() {
            let (status, bytes) = m.blob("alpine", &blob.digest).await.expect("blob");
            assert!(status == 200 && bytes == blob.bytes);
        }
    };
    let bound = regcache::store::ANSWER_WITHIN * 2;
    tokio::time::timeout(bound, pull).await.expect("a hung bucket must not hold the pull");
    m.metrics_with("regcache_bucket_down 1\n").await;
}

#[tokio::test]
async fn a_tag_answered_from_headers_alone_reaches_the_other_node_too() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1_000);
    let bucket = TestBucket::new();
    // As Docker and containerd pull: HEAD by tag (answered from the upstream's headers alone),
    // then the manifest by digest.
    async fn pull(m: &Mirror, digest: &str) {
        let resp = m.manifest_request(reqwest::Method::HEAD, "alpine", "3").send().await.expect("HEAD");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["docker-content-digest"], digest);
        assert_eq!(m.get_manifest("alpine", digest).await.status(), 200);
    }
    let a = node(&reg, &bucket).await;
    pull(&a, &image.manifest.digest).await;
    a.metrics_with("regcache_bucket_operations_total{op=\"put_record\",result=\"ok\"} 2\n").await;

    reg.clear_log();
    let b = node(&reg, &bucket).await;
    pull(&b, &image.manifest.digest).await;
    assert!(reg.requests().is_empty(), "node B asked the upstream: {:?}", reg.requests());
}
