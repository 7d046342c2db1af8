//! What a node keeps while the shared bucket is down (or marked down) reaches the bucket once it
//! answers again: blobs, manifests and tags, filled while it was down and filled inside the window
//! in which the node still leaves it alone, across a restart of the node too. The bucket is
//! `it::shared`'s directory with a switch that makes it fail, and SeaweedFS killed and started
//! again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::Arc;

use regcache::oci::Digest;
use regcache::store::{Bucket, SharedBackend, TagAnswer};
use tokio::time::Instant;

use crate::it::mirror::{Mirror, Options};
use crate::it::shared::{node, node_at, TestBucket};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images::{self, Image};
use crate::support::s3::SeaweedFs;

/// How long after its return the bucket must have everything.
const WITHIN: Duration = Duration::from_secs(30);

/// Pull `image` through `m` as Docker does (the manifest by `tag`, then every blob) and wait until
/// the hot tier keeps every blob.
async fn pull(m: &Mirror, name: &str, tag: &str, image: &Image) {
    let resp = m.get_manifest(name, tag).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    for blob in image.blobs() {
        let (status, bytes) = m.blob(name, &blob.digest).await.expect("blob");
        assert!(status == 200 && bytes == blob.bytes, "{}", blob.digest);
        m.wait_stored(&blob.digest).await;
    }
}

/// What of `image` (pushed as `repo:tag` on the fake, docker.io to the mirror) the bucket lacks:
/// a blob whose bytes have its digest, the manifest's record (verified as a node reading it
/// verifies it), a tag record naming the manifest.
async fn missing(bucket: &dyn SharedBackend, image: &Image) -> Vec<String> {
    let mut out = Vec::new();
    for blob in image.blobs() {
        let digest: Digest = blob.digest.parse().expect("digest");
        let verified = match bucket.open(&digest, 0..blob.bytes.len() as u64).await.expect("read the bucket") {
            Some(mut opened) => {
                let mut bytes = Vec::new();
                while let Some(chunk) = opened.reader.next_chunk().await {
                    bytes.extend_from_slice(&chunk.expect("chunk"));
                }
                Digest::sha256_of(&bytes) == digest
            }
            None => false,
        };
        if !verified {
            out.push(format!("blob {}", blob.digest));
        }
    }
    let digest: Digest = image.manifest.digest.parse().expect("digest");
    let key = format!("manifests/sha256/{}", digest.hex());
    let record = bucket.get(&key, regcache::store::MAX_MANIFEST_RECORD).await.expect("read the bucket");
    if record.is_none_or(|r| regcache::store::read_manifest_record(r, &digest).is_err()) {
        out.push(format!("manifest {digest}"));
    }
    let tag = image.tag.as_deref().expect("a tagged image");
    let mut tagged = false;
    for key in bucket.list_records(&format!("tags/docker.io/{}/{tag}", image.repo)).await.expect("list the bucket") {
        let record = bucket.get(&key, 4096).await.expect("read the bucket").expect("listed");
        tagged |= serde_json::from_slice::<TagAnswer>(&record).is_ok_and(|a| a.digest == digest);
    }
    if !tagged {
        out.push(format!("tag {}:{tag}", image.repo));
    }
    out
}

/// Wait until the bucket has all of `images`, at most [`WITHIN`] after `back` (when it answered
/// again).
async fn until_in_bucket(bucket: &dyn SharedBackend, images: &[&Image], back: Instant) {
    loop {
        let mut lacking = Vec::new();
        for image in images {
            lacking.extend(missing(bucket, image).await);
        }
        if lacking.is_empty() {
            return;
        }
        assert!(Instant::now() < back + WITHIN, "{WITHIN:?} after its return the bucket still lacks {lacking:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn what_a_node_kept_while_the_bucket_was_down_reaches_it_once_it_answers_again() {
    let reg = FakeRegistry::start().await;
    let one = images::schema2_image(&reg, "library/alpine", "3", 2, 50_000);
    let two = images::schema2_image(&reg, "library/busybox", "1", 2, 50_000);
    let bucket = TestBucket::new();
    let m = node(&reg, &bucket).await;

    bucket.down.store(true, Ordering::SeqCst);
    pull(&m, "alpine", "3", &one).await;
    m.metrics_with("regcache_bucket_down 1\n").await;
    // The bucket is back, but the node leaves it alone for a while after the failure: the second
    // image is filled without asking it (were that window over, the old code would upload this
    // image, and still never the first).
    bucket.down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    pull(&m, "busybox", "1", &two).await;
    until_in_bucket(bucket.as_ref(), &[&one, &two], back).await;
    m.metrics_with("regcache_bucket_backlog 0\n").await;

    // The rest of the fleet gets both from the bucket, not the upstream.
    reg.clear_log();
    let other = node(&reg, &bucket).await;
    pull(&other, "alpine", "3", &one).await;
    pull(&other, "busybox", "1", &two).await;
    assert!(reg.requests().is_empty() && reg.cdn_requests().is_empty(), "asked the upstream: {:?} {:?}", reg.requests(), reg.cdn_requests());
}

#[tokio::test]
async fn the_backlog_survives_a_restart_of_the_node() {
    let reg = FakeRegistry::start().await;
    let one = images::schema2_image(&reg, "library/alpine", "3", 2, 50_000);
    let two = images::schema2_image(&reg, "library/busybox", "1", 2, 50_000);
    let bucket = TestBucket::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    std::fs::create_dir_all(&data_dir).expect("data dir");

    let mut first = node_at(&reg, &bucket, Some(data_dir.clone())).await;
    bucket.down.store(true, Ordering::SeqCst);
    pull(&first, "alpine", "3", &one).await;
    // Its blobs, its manifest and its tag.
    let waiting = format!("regcache_bucket_backlog {}\n", one.blobs().len() + 2);
    first.metrics_with(&waiting).await;
    first.shutdown().await;
    drop(first);

    // The same node again, the bucket still down: it tries the backlog at start, and keeps it.
    let again = node_at(&reg, &bucket, Some(data_dir)).await;
    again.metrics_with("regcache_bucket_down 1\n").await;
    again.metrics_with(&waiting).await;
    bucket.down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    pull(&again, "busybox", "1", &two).await;
    until_in_bucket(bucket.as_ref(), &[&one, &two], back).await;
    again.metrics_with("regcache_bucket_backlog 0\n").await;
}

/// A node on `bucket` (its own client, as a process has) in `data_dir`.
async fn s3_node(reg: &FakeRegistry, storage: &regcache::config::S3Storage, data_dir: &std::path::Path) -> Mirror {
    let bucket: Arc<dyn SharedBackend> = Arc::new(Bucket::from_config(storage, data_dir).expect("bucket client"));
    let extra = "tag_ttl = \"1m\"\n".to_owned();
    Mirror::start_with(reg, Options { credentials: true, bucket: Some(bucket), extra, data_dir: Some(data_dir.to_owned()), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_killed_under_a_node_gets_what_the_node_kept_once_it_runs_again() {
    let mut weed = SeaweedFs::start().await;
    weed.create_bucket("fleet").await;
    let reg = FakeRegistry::start().await;
    let one = images::schema2_image(&reg, "library/alpine", "3", 2, 50_000);
    let two = images::schema2_image(&reg, "library/busybox", "1", 2, 50_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    // Requests to a dead server are retried for `timeout`: a short one keeps the test short.
    let storage = regcache::config::S3Storage { timeout: Duration::from_secs(2), ..weed.storage("fleet", "mirror") };

    let mut first = s3_node(&reg, &storage, &data_dir).await;
    weed.stop();
    pull(&first, "alpine", "3", &one).await;
    first.metrics_with("regcache_bucket_down 1\n").await;
    let waiting = format!("regcache_bucket_backlog {}\n", one.blobs().len() + 2);
    first.metrics_with(&waiting).await;
    first.shutdown().await;
    drop(first);

    // The node starts again while the bucket is still dead: its first try of the backlog fails.
    let again = s3_node(&reg, &storage, &data_dir).await;
    again.metrics_with("regcache_bucket_down 1\n").await;
    again.metrics_with(&waiting).await;
    weed.restart().await;
    let back = Instant::now();
    pull(&again, "busybox", "1", &two).await;
    let bucket = Bucket::from_config(&storage, dir.path()).expect("bucket client");
    until_in_bucket(&bucket, &[&one, &two], back).await;
    again.metrics_with("regcache_bucket_backlog 0\n").await;
}
