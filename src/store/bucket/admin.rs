//! The maintenance commands' work on the shared bucket (`regcache ls`, `gc` and `verify` with
//! `[storage] backend = "s3"`), as methods of [`Store`]: what the bucket holds, one eviction round
//! now, every blob and manifest record re-hashed. `crate::admin` only formats what they return.
//! None needs a server stopped: eviction and verification are safe beside running nodes (they
//! only delete blobs nobody used lately, or corrupt ones).

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use super::lru::{self, Limits};
use super::Shared;
use crate::oci::{Digest, Hasher, UpstreamRepo};
use crate::store::records::{folder, read_manifest_record, RecordKey, MAX_MANIFEST_RECORD, MAX_TAG_RECORD};
use crate::store::{Store, TagAnswer};

/// What the bucket holds, as `regcache ls` shows it.
#[derive(Debug, Default)]
pub struct BucketListing {
    /// (upstream, repository) → tag → the answer confirmed last over its kinds (`None`: its
    /// record can't be read).
    pub tags: BTreeMap<UpstreamRepo, BTreeMap<String, Option<TagAnswer>>>,
    /// The blobs in the bucket.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// One eviction round `regcache gc` ran on the bucket (or, dry, would have).
#[derive(Debug)]
pub struct BucketGc {
    /// The blobs evicted (or to be), least recently used first.
    pub evicted: Vec<EvictedBlob>,
    /// The bytes of the bucket's blobs before.
    pub bytes_before: u64,
}

/// A blob `regcache gc` evicted from the bucket.
#[derive(Debug)]
pub struct EvictedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// How long since any node last used it.
    pub unused_for: Duration,
}

impl BucketGc {
    /// The bytes evicted.
    pub fn bytes_evicted(&self) -> u64 {
        self.evicted.iter().fold(0, |sum, b| sum.saturating_add(b.size))
    }
}

/// Something `regcache verify` found in the bucket, told as it is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketFinding {
    /// An object among the blobs that is no blob (its name): left alone.
    NotABlob(String),
    /// A blob whose bytes are not its digest's: removed.
    CorruptBlob(Digest),
    /// A record among the manifests whose key is no manifest's (the key): left alone.
    NotAManifest(String),
    /// A manifest record that is not its digest's manifest: removed.
    CorruptManifest(Digest),
}

/// What `regcache verify` checked in the bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BucketVerified {
    /// Blobs re-hashed.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Manifest records checked.
    pub manifests: usize,
    /// Blobs and manifests found corrupt (and removed).
    pub corrupt: usize,
}

impl Store {
    /// The tags the bucket's records hold for the repositories `wanted(upstream, repository)`
    /// picks, and its blobs' count and bytes; `None` without a bucket tier.
    pub async fn bucket_listing(&self, wanted: impl Fn(&str, &str) -> bool) -> io::Result<Option<BucketListing>> {
        let Some(shared) = self.shared() else { return Ok(None) };
        shared.listing(wanted).await.map(Some)
    }

    /// One eviction round on the bucket now, as the node `node` (see [`lru`]), down to `target`
    /// bytes of blobs; blobs used within `protected` stay (the nodes use [`lru::PROTECTED`]).
    /// Evicted blobs are forgotten in this data directory's record of the bucket. `None` without
    /// a bucket tier.
    pub async fn bucket_gc(&self, node: &str, target: u64, protected: Duration, dry_run: bool) -> io::Result<Option<BucketGc>> {
        let Some(shared) = self.shared() else { return Ok(None) };
        shared.gc(node, target, protected, dry_run).await.map(Some)
    }

    /// Re-hash every blob in the bucket (streamed) and check every manifest record; corrupt ones
    /// are deleted from the bucket (and forgotten in this data directory's record of it). `found`
    /// is told of each as it is found. `None` without a bucket tier.
    pub async fn bucket_verify(&self, found: impl FnMut(&BucketFinding) -> io::Result<()>) -> io::Result<Option<BucketVerified>> {
        let Some(shared) = self.shared() else { return Ok(None) };
        let mut found = found;
        let mut verified = BucketVerified::default();
        shared.verify_blobs(&mut verified, &mut found).await?;
        shared.verify_manifests(&mut verified, &mut found).await?;
        Ok(Some(verified))
    }
}

impl Shared {
    async fn listing(&self, wanted: impl Fn(&str, &str) -> bool) -> io::Result<BucketListing> {
        let mut listing = BucketListing::default();
        for key in self.bucket.list_records(folder::TAGS).await? {
            // Keys are validated as they are read: what is printed is never a terminal escape.
            let Ok(RecordKey::Tag { repo, tag, .. }) = key.parse() else { continue };
            if !wanted(repo.upstream.as_str(), repo.name.as_str()) {
                continue;
            }
            let answer = match self.bucket.get(&key, MAX_TAG_RECORD).await {
                Ok(record) => record.and_then(|v| serde_json::from_slice::<TagAnswer>(&v).ok()),
                // One oversized record is shown as unreadable, not the end of the listing.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
                Err(e) => return Err(e),
            };
            let repos = listing.tags.entry(repo).or_default();
            let slot = repos.entry(tag.to_string()).or_default();
            if answer.as_ref().map(|a| a.checked_at) > slot.as_ref().map(|a| a.checked_at) {
                *slot = answer;
            }
        }
        let blobs = self.bucket.list().await?;
        listing.blobs = blobs.len();
        listing.bytes = blobs.iter().map(|b| b.size).fold(0, u64::saturating_add);
        Ok(listing)
    }

    async fn gc(&self, node: &str, target: u64, protected: Duration, dry_run: bool) -> io::Result<BucketGc> {
        let now = self.clock.now_ms();
        let forget = |b: &lru::BlobUse| {
            let _ = self.sizes.remove(&b.digest);
        };
        let limits = Limits { max: target, target, protected };
        let report = lru::evict_bucket(self.bucket.as_ref(), node, now, limits, dry_run, forget).await?;
        let evicted = report
            .evicted
            .into_iter()
            .map(|b| EvictedBlob { unused_for: Duration::from_secs(now.saturating_sub(b.last_access) / 1000), digest: b.digest, size: b.size })
            .collect();
        Ok(BucketGc { evicted, bytes_before: report.bytes_before })
    }

    async fn verify_blobs(&self, verified: &mut BucketVerified, found: &mut impl FnMut(&BucketFinding) -> io::Result<()>) -> io::Result<()> {
        for listed in self.bucket.list().await? {
            let Some(digest) = listed.digest else {
                found(&BucketFinding::NotABlob(listed.name))?;
                continue;
            };
            let Some(opened) = self.bucket.open(&digest, 0..listed.size).await? else { continue };
            let mut reader = opened.reader;
            let mut hasher = Hasher::new(digest.algorithm());
            let mut read = 0u64;
            while let Some(chunk) = reader.next_chunk().await {
                let chunk = chunk?;
                read = read.saturating_add(chunk.len() as u64);
                hasher.update(&chunk);
            }
            verified.blobs += 1;
            verified.bytes = verified.bytes.saturating_add(read);
            if read != opened.size || hasher.finish() != digest {
                verified.corrupt += 1;
                self.bucket.remove(&digest).await?;
                let _ = self.sizes.remove(&digest);
                found(&BucketFinding::CorruptBlob(digest))?;
            }
        }
        Ok(())
    }

    async fn verify_manifests(&self, verified: &mut BucketVerified, found: &mut impl FnMut(&BucketFinding) -> io::Result<()>) -> io::Result<()> {
        for key in self.bucket.list_records(folder::MANIFESTS).await? {
            let Ok(RecordKey::Manifest(digest)) = key.parse() else {
                found(&BucketFinding::NotAManifest(key))?;
                continue;
            };
            let record = match self.bucket.get(&key, MAX_MANIFEST_RECORD).await {
                Ok(Some(r)) => Some(r),
                Ok(None) => continue,
                // Larger than any manifest regcache keeps: not one it wrote.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
                Err(e) => return Err(e),
            };
            verified.manifests += 1;
            if record.is_none_or(|r| read_manifest_record(r, &digest).is_err()) {
                verified.corrupt += 1;
                self.bucket.remove_record(&key).await?;
                found(&BucketFinding::CorruptManifest(digest))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{BlobBackend, LocalBlobs, Records};

    /// A store whose bucket tier is a second local directory.
    fn setup() -> (tempfile::TempDir, Store, Arc<LocalBlobs>) {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(LocalBlobs::at(&dir.path().join("bucket")).unwrap());
        let store = Store::open(&dir.path().join("node")).unwrap();
        (dir, store.with_shared(bucket.clone(), String::new(), None, Metrics::new().shared()), bucket)
    }

    /// `bytes` in the bucket under `digest`'s key, whatever their digest.
    async fn put(bucket: &LocalBlobs, digest: &Digest, bytes: &[u8]) {
        let mut w = bucket.begin(digest, Some(bytes.len() as u64)).await.unwrap();
        w.append(&[Bytes::copy_from_slice(bytes)]).await.unwrap();
        w.commit().await.unwrap();
    }

    #[tokio::test]
    async fn verify_removes_what_is_corrupt_names_it_and_leaves_the_rest() {
        let (_dir, store, bucket) = setup();
        let good = Digest::sha256_of(b"good");
        let wrong = Digest::sha256_of(b"other");
        put(&bucket, &good, b"good").await;
        put(&bucket, &wrong, b"not other").await;
        store.index().shared_sizes().put(&wrong, 9).unwrap();
        let manifest = Digest::sha256_of(b"{}");
        bucket.put(&RecordKey::Manifest(manifest.clone()).to_string(), Bytes::from_static(b"application/json\0{ }")).await.unwrap();
        bucket.put("manifests/sha256/not-hex", Bytes::from_static(b"x")).await.unwrap();
        let mut found = Vec::new();
        let note = |f: &BucketFinding| {
            found.push(f.clone());
            Ok(())
        };
        let verified = store.bucket_verify(note).await.unwrap().expect("a bucket tier");
        assert_eq!(verified, BucketVerified { blobs: 2, bytes: 13, manifests: 1, corrupt: 2 });
        found.sort_by_key(|f| format!("{f:?}"));
        let want = [
            BucketFinding::CorruptBlob(wrong.clone()),
            BucketFinding::CorruptManifest(manifest),
            BucketFinding::NotAManifest("manifests/sha256/not-hex".into()),
        ];
        assert_eq!(found, want);
        assert_eq!(bucket.stat(&wrong).await.unwrap(), None, "removed");
        assert_eq!(store.index().shared_sizes().get(&wrong).unwrap(), None, "and forgotten");
        assert_eq!(bucket.stat(&good).await.unwrap(), Some(4), "the good blob stays");
    }

    #[tokio::test]
    async fn the_listing_holds_the_latest_answer_per_tag_of_the_repositories_asked_for() {
        let (_dir, store, bucket) = setup();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let key = |repo: &str, kind| RecordKey::Tag { repo: UpstreamRepo { upstream: crate::oci::RegistryHost::docker_hub(), name: repo.parse().unwrap() }, tag: "3".parse().unwrap(), kind }.to_string();
        let answer = |d: &Digest, at| Bytes::from(serde_json::to_vec(&TagAnswer { digest: d.clone(), checked_at: at, published_at: None }).unwrap());
        bucket.put(&key("library/alpine", crate::oci::ManifestKind::Image), answer(&a, 1)).await.unwrap();
        bucket.put(&key("library/alpine", crate::oci::ManifestKind::Index), answer(&b, 2)).await.unwrap();
        bucket.put(&key("library/debian", crate::oci::ManifestKind::Image), Bytes::from_static(b"not json")).await.unwrap();
        bucket.put("tags/DOCKER.io/library/alpine/4/image", answer(&a, 3)).await.unwrap();
        put(&bucket, &a, b"a").await;
        let listing = store.bucket_listing(|_, repo| repo != "library/other").await.unwrap().expect("a bucket tier");
        let tags: Vec<_> = listing.tags.iter().map(|(r, t)| (r.upstream.as_str(), r.name.as_str(), t.iter().map(|(t, a)| (t.clone(), a.as_ref().map(|a| a.checked_at))).collect::<Vec<_>>())).collect();
        assert_eq!(tags, [("docker.io", "library/alpine", vec![("3".to_owned(), Some(2))]), ("docker.io", "library/debian", vec![("3".to_owned(), None)])]);
        assert_eq!((listing.blobs, listing.bytes), (1, 1));
        let none = store.bucket_listing(|_, _| false).await.unwrap().expect("a bucket tier");
        assert!(none.tags.is_empty());
    }
}
