//! Staying under `max_size`: last access recorded in memory and written to the index in batches,
//! content in use protected, least-recently-used content evicted down to a low-water mark. A
//! referrers list is as recently used as its subject manifest.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use crate::store::{ReferrersKey, Store};
use crate::oci::Digest;
use crate::sync::lock;

/// Eviction stops once the cache is at or under this share of `max_size`.
pub const LOW_WATER: f64 = 0.9;

/// Last-access times not yet written, and content in use.
#[derive(Default)]
pub struct Usage {
    // std Mutexes: held for a map operation only, never across an await or I/O.
    // Bounded by what is stored: only content found in the store is touched, and the map is
    // emptied into the index every 30 s.
    touched: Mutex<HashMap<Digest, u64>>,
    // Bounded by the requests and fills running (max_connections): a digest leaves when its last
    // InUse guard drops.
    in_use: Arc<Mutex<HashMap<Digest, usize>>>,
}

/// Marks a digest as in use (being served or filled) until dropped.
pub struct InUse {
    map: Arc<Mutex<HashMap<Digest, usize>>>,
    digest: Digest,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(n) = map.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

/// What kind of content eviction removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictedKind {
    /// A blob: its file and index entry.
    Blob,
    /// A manifest's index entry.
    Manifest,
    /// A referrers list's index entry.
    Referrers,
}

impl std::fmt::Display for EvictedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EvictedKind::Blob => "blob",
            EvictedKind::Manifest => "manifest",
            EvictedKind::Referrers => "referrers",
        })
    }
}

/// One thing eviction removed, or would remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// What it is.
    pub kind: EvictedKind,
    /// Its digest (of a referrers list: its subject's).
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When it was last used (unix milliseconds).
    pub last_access: u64,
}

/// Unix milliseconds now: access order must hold between requests in the same second.
fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Usage {
    /// Record an access now, in memory.
    pub fn touch(&self, digest: &Digest) {
        lock(&self.touched).insert(digest.clone(), now_millis());
    }

    /// Mark `digest` in use until the guard drops.
    pub fn hold(&self, digest: &Digest) -> InUse {
        *lock(&self.in_use).entry(digest.clone()).or_insert(0) += 1;
        InUse { map: self.in_use.clone(), digest: digest.clone() }
    }

    fn is_in_use(&self, digest: &Digest) -> bool {
        lock(&self.in_use).contains_key(digest)
    }

    fn take_touched(&self) -> HashMap<Digest, u64> {
        std::mem::take(&mut *lock(&self.touched))
    }
}

impl Store {
    /// Write the batched access times to the index.
    pub fn flush_access(&self) -> sled::Result<()> {
        let touched = self.usage.take_touched();
        self.index.put_access(touched)
    }

    /// Whether stored content passes `max_size`.
    pub fn over_limit(&self, max_size: u64) -> bool {
        self.index.used_bytes() > max_size
    }

    /// Evict least-recently-used content not in use until at most `target` bytes are stored.
    /// With `dry_run`, only list what would go.
    pub fn evict(&self, target: u64, dry_run: bool) -> io::Result<Vec<Evicted>> {
        self.flush_access().map_err(io::Error::other)?;
        let mut candidates = Vec::new();
        for digest in self.index.blob_digests().map_err(io::Error::other)? {
            let size = self.index.blob_size(&digest).map_err(io::Error::other)?.unwrap_or(0);
            let last_access = self.index.access(&digest).map_err(io::Error::other)?;
            candidates.push((Evicted { kind: EvictedKind::Blob, digest, size, last_access }, None));
        }
        for digest in self.index.manifest_digests().map_err(io::Error::other)? {
            let size = self.index.manifest(&digest).map_err(io::Error::other)?.map_or(0, |m| m.bytes.len() as u64);
            let last_access = self.index.access(&digest).map_err(io::Error::other)?;
            candidates.push((Evicted { kind: EvictedKind::Manifest, digest, size, last_access }, None));
        }
        for (key, digest, size) in self.index.referrers_lists().map_err(io::Error::other)? {
            let last_access = self.index.access(&digest).map_err(io::Error::other)?;
            candidates.push((Evicted { kind: EvictedKind::Referrers, digest, size, last_access }, Some(key)));
        }
        // Stable: of equal age, blobs go before manifests before referrers lists.
        candidates.sort_by_key(|(c, _)| c.last_access);
        let mut used = self.index.used_bytes();
        let mut out = Vec::new();
        for (c, referrers) in candidates {
            if used <= target {
                break;
            }
            if self.usage.is_in_use(&c.digest) {
                continue;
            }
            if !dry_run {
                self.remove(&c, referrers.as_ref())?;
            }
            used = used.saturating_sub(c.size);
            out.push(c);
        }
        Ok(out)
    }

    /// Remove one eviction candidate (`referrers`: the key of a referrers list).
    fn remove(&self, c: &Evicted, referrers: Option<&ReferrersKey>) -> io::Result<()> {
        if let Some(key) = referrers {
            // The subject's access time stays: it is the manifest's, or its other lists'.
            return self.index.remove_referrers(key).map_err(io::Error::other);
        }
        // Index first: a crash between the two leaves a verified file, which start-up re-indexes.
        match c.kind {
            EvictedKind::Blob => {
                self.index.remove_blob(&c.digest).map_err(io::Error::other)?;
                self.files.remove_file(&c.digest)?;
            }
            // A referrers list came with its key and was removed above.
            EvictedKind::Manifest | EvictedKind::Referrers => {
                self.index.remove_manifest(&c.digest).map_err(io::Error::other)?;
            }
        }
        self.index.remove_access(&c.digest).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, bytes: &[u8], at: u64) -> Digest {
        let d = store.put_test_blob(bytes);
        store.index.put_access([(d.clone(), at)].into_iter().collect()).unwrap();
        d
    }

    #[test]
    fn evicts_least_recently_used_and_never_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let oldest = put(&store, &[1u8; 100], 10);
        let busy = put(&store, &[2u8; 100], 20);
        let middle = put(&store, &[3u8; 100], 30);
        let newest = put(&store, &[4u8; 100], 40);
        assert_eq!(store.index.used_bytes(), 400);
        let guard = store.usage.hold(&busy);

        let plan = store.evict(200, true).unwrap();
        assert_eq!(plan.iter().map(|e| e.digest.clone()).collect::<Vec<_>>(), vec![oldest.clone(), middle.clone()]);
        assert_eq!(store.index.used_bytes(), 400, "a dry run removes nothing");

        let gone = store.evict(200, false).unwrap();
        assert_eq!(gone, plan);
        assert_eq!(store.index.used_bytes(), 200);
        assert!(!store.files.path(&oldest).exists());
        assert!(store.files.path(&busy).exists(), "content in use is never evicted");
        assert!(store.files.path(&newest).exists());

        drop(guard);
        store.usage.touch(&busy);
        let gone = store.evict(100, false).unwrap();
        assert_eq!(gone.iter().map(|e| e.digest.clone()).collect::<Vec<_>>(), vec![newest], "a fresh touch keeps busy");
    }

    #[test]
    fn referrers_lists_are_evicted_with_their_subject_s_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo = crate::oci::UpstreamRepo::of("docker.io", "library/alpine");
        let old_subject = Digest::sha256_of(b"old manifest");
        let new_subject = Digest::sha256_of(b"new manifest");
        store.index.put_access([(old_subject.clone(), 10), (new_subject.clone(), 30)].into_iter().collect()).unwrap();
        store.index.put_referrers(&repo, &old_subject, &[b'r'; 100]).unwrap();
        let blob = put(&store, &[1u8; 100], 20);
        store.index.put_referrers(&repo, &new_subject, &[b'r'; 100]).unwrap();
        assert_eq!(store.index.used_bytes(), 300, "referrers lists count");

        let gone = store.evict(150, false).unwrap();
        let kinds: Vec<_> = gone.iter().map(|e| (e.kind, e.digest.clone())).collect();
        assert_eq!(kinds, vec![(EvictedKind::Referrers, old_subject.clone()), (EvictedKind::Blob, blob)]);
        assert_eq!(store.index.used_bytes(), 100);
        assert_eq!(store.index.referrers(&repo, &old_subject).unwrap(), None);
        assert!(store.index.referrers(&repo, &new_subject).unwrap().is_some());
    }
}
