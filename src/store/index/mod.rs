//! The sled index: which blobs are stored (and their sizes), manifests by digest (their exact bytes
//! and media type), tags (upstream, repository, tag → one digest per kind of answer, with when
//! each was learnt), the last referrers list seen per upstream, repository and subject manifest,
//! and the last tag list each upstream gave per repository ([`ListedTags`]). Blobs, manifests and
//! referrers lists count towards `max_size`; tag lists have bounds of their own (at most
//! [`MAX_LISTED_TAGS`] tags per repository, [`MAX_LISTED_REPOSITORIES`] repositories and
//! [`MAX_LISTED_BYTES`] in all, the list remembered longest ago forgotten first).
//!
//! What can be rebuilt and what can't:
//! - `blobs` (digest → size): rebuilt from the blob directory, whose files are named by their
//!   digest (the start-up repair in `store::check` re-indexes a file whose hash checks out). The
//!   bytes-used total is summed afresh at every open.
//! - `shared` (digest → size of blobs known to be in the shared bucket, when there is one): a cache
//!   of what the bucket holds, so a hit there costs no `HEAD`; a stale entry only makes the next
//!   read find the object gone (a miss), and an empty tree only costs `HEAD`s.
//! - `access` (last use, for eviction): only an ordering hint; losing it makes eviction order
//!   arbitrary once, nothing more.
//! - `manifests`, `tags`, `referrers` and `tag_lists` (with `tag_list_order`, the order they were
//!   written in) live only here: manifests are not in the blob directory, and which digest a tag
//!   named (and when it was checked), what a referrers answer or a tag list said can only be learnt
//!   again from upstream. Losing them loses what is served while upstream is down.
//! - `backlog` (what the shared bucket should have and doesn't yet, [`crate::store::bucket::Backlog`]) lives only
//!   here: losing it only costs the other nodes fetching those blobs from the upstream.
//!
//! sled makes each insert atomic; a tag list and its place in `tag_list_order` change together, in
//! one transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::store::bucket::Backlog;
use crate::store::StoreError;
use crate::oci::{Digest, ManifestKind, Tag, UpstreamRepo};
use crate::sync::lock;

mod handle;
mod reserve;
mod tag_lists;

pub use handle::{is_lock_error, Slot};
use handle::Trees;
use reserve::Reserve;

pub use tag_lists::{ListedTags, MAX_TAG_LIST_RECORD};
use tag_lists::TagListBook;

/// The index database.
pub struct Index {
    path: PathBuf,
    /// The database and its trees; empty while it is being opened again (`handle`).
    trees: Slot<Arc<Trees>>,
    /// The `shared` tree, as [`SharedSizes`] handed out hold it.
    shared: Slot<sled::Tree>,
    // A std Mutex: held by one tag-list write (a few sled operations, no await), so the count, the
    // bytes and the order agree with the trees.
    tag_list_book: Mutex<TagListBook>,
    backlog: Backlog,
    /// Bytes of blobs, manifests and referrers lists indexed, kept up to date by every insert and
    /// removal.
    used: AtomicU64,
    /// The `disk_bytes` gauge, once a server's metrics are given ([`Index::count_used_in`]): moved
    /// with `used` by every insert and removal.
    used_gauge: OnceLock<Gauge>,
    /// Held by one reopening at a time.
    reopening: Mutex<()>,
    /// Reopenings not yet followed by the repair.
    repairs_due: AtomicU64,
    /// Room kept for opening the index again on a full disk.
    reserve: Reserve,
}

/// A manifest as stored: exact bytes and media type.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    /// The media type it was served with.
    pub media_type: String,
    /// Its exact bytes.
    pub bytes: Bytes,
}

/// What a tag pointed at when last seen upstream, once per kind of answer: clients asking for an
/// index, for a single image, and for schema1 may each be given another manifest for one tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagEntry {
    /// The answer for clients asking for each kind ([`crate::oci::AcceptList::asks_for`]).
    pub answers: BTreeMap<ManifestKind, TagAnswer>,
    /// An answer of unknown kind, written by a regcache that kept one digest per tag: listed, never
    /// served (the next request revalidates).
    pub unknown: Option<TagAnswer>,
}

/// One answer upstream gave for a tag.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagAnswer {
    /// The manifest digest (the manifest itself, with its media type, is stored by digest);
    /// stored as its string.
    pub digest: Digest,
    /// Unix seconds when upstream last confirmed it.
    pub checked_at: u64,
    /// Unix seconds when this node last wrote it to the shared bucket (or, read from the bucket,
    /// when the node that wrote it did), if ever: unchanged answers are written again only now
    /// and then (`cache::freshness::republish_tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
}

impl TagEntry {
    /// The answer for clients asking for `kind`.
    pub fn answer(&self, kind: ManifestKind) -> Option<&TagAnswer> {
        self.answers.get(&kind)
    }

    /// The answer upstream confirmed last, whatever its kind.
    pub fn latest(&self) -> Option<&TagAnswer> {
        self.answers.values().chain(&self.unknown).max_by_key(|a| a.checked_at)
    }
}

/// A tag entry as the index holds it.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredTag {
    /// Per kind of answer.
    PerKind { answers: BTreeMap<ManifestKind, TagAnswer> },
    /// One digest for every client (an index written before tags were kept per kind).
    Legacy(TagAnswer),
}

/// A tag entry as the index holds it: `None` if the value is not one (any bytes may be there after a
/// crash or a downgrade). Public for the property tests and fuzz targets of what sled holds.
#[doc(hidden)]
pub fn parse_tag(v: &[u8]) -> Option<TagEntry> {
    Some(match serde_json::from_slice(v).ok()? {
        StoredTag::PerKind { answers } => TagEntry { answers, unknown: None },
        StoredTag::Legacy(a) => TagEntry { answers: BTreeMap::new(), unknown: Some(a) },
    })
}

/// The value the index holds for a tag's answers per kind (what [`parse_tag`] reads back). Public
/// for the property tests and fuzz targets of what sled holds.
#[doc(hidden)]
pub fn tag_record(answers: BTreeMap<ManifestKind, TagAnswer>) -> Vec<u8> {
    // Serialising a map of words to strings and integers cannot fail.
    serde_json::to_vec(&StoredTag::PerKind { answers }).unwrap_or_default()
}

/// The sizes of blobs known to be in the shared bucket (they don't count in `max_size`: they aren't
/// here). A handle on the index's `shared` tree.
#[derive(Clone)]
pub struct SharedSizes(Slot<sled::Tree>);

impl SharedSizes {
    /// The size of `digest` in the bucket, if known.
    pub fn get(&self, digest: &Digest) -> sled::Result<Option<u64>> {
        Ok(self.0.get()?.get(digest.to_string())?.as_deref().map(blob_size_of))
    }

    /// Note that the bucket has `digest` with `size` bytes.
    pub fn put(&self, digest: &Digest, size: u64) -> sled::Result<()> {
        self.0.get_for_write()?.insert(digest.to_string(), &size.to_be_bytes()).map(|_| ())
    }

    /// Forget `digest`: the bucket no longer has it.
    pub fn remove(&self, digest: &Digest) -> sled::Result<()> {
        self.0.get_for_write()?.remove(digest.to_string()).map(|_| ())
    }

    /// The bytes of all blobs known to be in the bucket (a walk of the tree: for the status page).
    pub fn known_bytes(&self) -> u64 {
        let Ok(tree) = self.0.get() else { return 0 };
        tree.iter().values().filter_map(Result::ok).map(|v| blob_size_of(&v)).fold(0, u64::saturating_add)
    }
}

/// Where a referrers list is kept (upstream, repository and subject).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferrersKey(sled::IVec);

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The digests a tree is keyed by (keys that aren't digests are skipped).
fn keys(tree: &sled::Tree) -> sled::Result<Vec<Digest>> {
    let mut out = Vec::new();
    for k in tree.iter().keys() {
        if let Ok(d) = String::from_utf8_lossy(&k?).parse() {
            out.push(d);
        }
    }
    Ok(out)
}

/// Bytes of blobs, manifests and referrers lists in `trees` (summed afresh at every open).
fn used_by(trees: &Trees) -> sled::Result<u64> {
    let mut used = 0u64;
    for kv in trees.blobs.iter() {
        used = used.saturating_add(blob_size_of(&kv?.1));
    }
    for tree in [&trees.manifests, &trees.referrers] {
        for kv in tree.iter() {
            used = used.saturating_add(kv?.1.len() as u64);
        }
    }
    Ok(used)
}

/// A size (or a time) as the index holds it: 8 bytes, big-endian; 0 for a value of any other length
/// (a blob indexed with size 0 reads as missing and is forgotten). Public for the property tests
/// and fuzz targets of what sled holds.
#[doc(hidden)]
pub fn blob_size_of(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

fn tag_key(repo: &UpstreamRepo, tag: &Tag) -> Vec<u8> {
    // NUL can't appear in any of the three, so the key is unambiguous.
    format!("{}\0{}\0{tag}", repo.upstream, repo.name).into_bytes()
}

/// The key of a referrers list; like a tag's, NUL-separated.
fn referrers_key(repo: &UpstreamRepo, subject: &Digest) -> String {
    format!("{}\0{}\0{subject}", repo.upstream, repo.name)
}

impl Index {
    /// Open or create the index at `path`.
    pub fn open(path: &Path) -> Result<Index, StoreError> {
        let err = |source| StoreError::Index { path: path.to_owned(), source };
        let trees = Trees::open(path).map_err(err)?;
        let book = TagListBook::open(&trees.tag_lists, &trees.tag_list_order).map_err(err)?;
        let reserve = Reserve::open(path);
        let backlog = Backlog::open(Slot::gated(trees.backlog.clone(), reserve.gate())).map_err(err)?;
        let used = used_by(&trees).map_err(err)?;
        Ok(Index {
            path: path.to_owned(),
            shared: Slot::gated(trees.shared.clone(), reserve.gate()),
            trees: Slot::new(Arc::new(trees)),
            tag_list_book: Mutex::new(book),
            backlog,
            used: AtomicU64::new(used),
            used_gauge: OnceLock::new(),
            reopening: Mutex::new(()),
            repairs_due: AtomicU64::new(0),
            reserve,
        })
    }

    /// The database now, for a write: refused while the room kept for the index is given up (the
    /// disk was full), so that the index keeps serving reads until the disk has room again.
    fn w(&self) -> sled::Result<Arc<Trees>> {
        // First `t`: it opens a failed database again, giving the room up.
        let trees = self.t()?;
        if self.reserve.is_released() {
            return Err(handle::read_only());
        }
        Ok(trees)
    }

    /// Write the room kept for the index back if the file system has `free` bytes enough; whether
    /// it takes writes now.
    pub fn restore_reserve(&self, free: u64) -> bool {
        !self.reserve.is_released() || self.reserve.restore(free)
    }

    /// Whether the index refuses writes: the room kept for it is given up.
    pub fn is_read_only(&self) -> bool {
        self.reserve.is_released()
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database now (for one operation). If sled has stopped writing (an I/O error of its
    /// log: its reads fail too from then on), it is opened again first (module `handle`), so that
    /// cached content is still served while the disk is full; the repair after it
    /// (`store::recovery`) follows in the background.
    fn t(&self) -> sled::Result<Arc<Trees>> {
        let trees = self.trees.get()?;
        let Some(e) = trees.failure() else { return Ok(trees) };
        drop(trees);
        tracing::error!(error = %e, "the index stopped writing (sled keeps an I/O error of its log); opening it again");
        match self.reopen_if_failed() {
            Ok(()) => self.trees.get(),
            Err(reopen) => {
                tracing::error!(error = %reopen, "opening the index again failed");
                Err(e)
            }
        }
    }

    /// The recorded size of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> sled::Result<Option<u64>> {
        Ok(self.t()?.blobs.get(digest.to_string())?.as_deref().map(blob_size_of))
    }

    /// Record a blob that is now durable on disk.
    pub fn put_blob(&self, digest: &Digest, size: u64) -> sled::Result<()> {
        let old = self.w()?.blobs.insert(digest.to_string(), &size.to_be_bytes())?;
        self.account(old.as_deref().map(blob_size_of), size);
        Ok(())
    }

    /// Forget a blob.
    pub fn remove_blob(&self, digest: &Digest) -> sled::Result<()> {
        let old = self.w()?.blobs.remove(digest.to_string())?;
        self.account(old.as_deref().map(blob_size_of), 0);
        Ok(())
    }

    /// The sizes of blobs known to be in the shared bucket.
    pub fn shared_sizes(&self) -> SharedSizes {
        SharedSizes(self.shared.clone())
    }

    /// What waits for the shared bucket.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Every indexed blob.
    pub fn blob_digests(&self) -> sled::Result<Vec<Digest>> {
        keys(&self.t()?.blobs)
    }

    /// Every stored manifest.
    pub fn manifest_digests(&self) -> sled::Result<Vec<Digest>> {
        keys(&self.t()?.manifests)
    }

    /// Forget a manifest.
    pub fn remove_manifest(&self, digest: &Digest) -> sled::Result<()> {
        let old = self.w()?.manifests.remove(digest.to_string())?;
        self.account(old.map(|o| o.len() as u64), 0);
        Ok(())
    }

    /// Record last-access times (unix milliseconds), in one batch.
    pub fn put_access(&self, times: std::collections::HashMap<Digest, u64>) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        for (d, t) in times {
            batch.insert(d.to_string().into_bytes(), &t.to_be_bytes());
        }
        self.w()?.access.apply_batch(batch)
    }

    /// When content was last used; 0 if never recorded.
    pub fn access(&self, digest: &Digest) -> sled::Result<u64> {
        Ok(self.t()?.access.get(digest.to_string())?.as_deref().map_or(0, blob_size_of))
    }

    /// Forget the access time of evicted content.
    pub fn remove_access(&self, digest: &Digest) -> sled::Result<()> {
        self.w()?.access.remove(digest.to_string())?;
        Ok(())
    }

    /// How many blobs and manifests are indexed (a walk of each tree's keys: for the status page).
    pub fn counts(&self) -> (u64, u64) {
        self.t().map_or((0, 0), |t| (t.blobs.len() as u64, t.manifests.len() as u64))
    }

    /// Bytes of blobs, manifests and referrers lists indexed.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Keep `gauge` at the bytes indexed from now on (the server's `disk_bytes`): set now, then
    /// moved by every insert and removal. Once; a second gauge is ignored.
    pub fn count_used_in(&self, gauge: Gauge) {
        gauge.set(i64::try_from(self.used_bytes()).unwrap_or(i64::MAX));
        let _ = self.used_gauge.set(gauge);
    }

    fn account(&self, old: Option<u64>, new: u64) {
        let old = old.unwrap_or(0);
        // The gauge moves by the same difference (not set to a total read after it), so two
        // writers at once leave it right whatever order they finish in. No one entry is 2^63 bytes.
        let by = |d: u64| i64::try_from(d).unwrap_or(i64::MAX);
        if new >= old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
            if let Some(g) = self.used_gauge.get() {
                g.inc_by(by(new - old));
            }
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
            if let Some(g) = self.used_gauge.get() {
                g.dec_by(by(old - new));
            }
        }
    }

    /// A stored manifest.
    pub fn manifest(&self, digest: &Digest) -> sled::Result<Option<StoredManifest>> {
        let Some(v) = self.t()?.manifests.get(digest.to_string())? else { return Ok(None) };
        // Layout: media type, NUL, bytes.
        let Some(split) = v.iter().position(|b| *b == 0) else { return Ok(None) };
        let media_type = String::from_utf8_lossy(&v[..split]).into_owned();
        // The bytes stay in sled's buffer: no copy per manifest served.
        Ok(Some(StoredManifest { media_type, bytes: Bytes::from_owner(v).slice(split + 1..) }))
    }

    /// Store a verified manifest unless one is stored under `digest` already; returns the manifest
    /// now stored. Stored bytes are never replaced: a signed schema1 manifest re-signed by another
    /// upstream has the same digest and other bytes, and the first verified copy stays.
    pub fn put_manifest(&self, digest: &Digest, m: &StoredManifest) -> sled::Result<StoredManifest> {
        let mut v = Vec::with_capacity(m.media_type.len() + 1 + m.bytes.len());
        v.extend_from_slice(m.media_type.as_bytes());
        v.push(0);
        v.extend_from_slice(&m.bytes);
        let size = v.len() as u64;
        match self.w()?.manifests.compare_and_swap(digest.to_string(), None as Option<&[u8]>, Some(v))? {
            Ok(()) => {
                self.account(None, size);
                Ok(m.clone())
            }
            Err(_) => Ok(self.manifest(digest)?.unwrap_or_else(|| m.clone())),
        }
    }

    /// What a tag pointed at when last seen.
    pub fn tag(&self, repo: &UpstreamRepo, tag: &Tag) -> sled::Result<Option<TagEntry>> {
        let v = self.t()?.tags.get(tag_key(repo, tag))?;
        Ok(v.and_then(|v| parse_tag(&v)))
    }

    /// Record `answer` for clients asking for `kind`, keeping the other kinds' answers.
    pub fn put_tag(&self, repo: &UpstreamRepo, tag: &Tag, kind: ManifestKind, answer: &TagAnswer) -> sled::Result<()> {
        self.update_tag(repo, tag, kind, |_| answer.clone())
    }

    /// Record `update(the answer for kind now)` for clients asking for `kind`, keeping the other
    /// kinds' answers, in one atomic step. `update` may be called more than once (sled calls it
    /// again when another write came first): what its last call saw and made is what counts.
    pub fn update_tag(
        &self,
        repo: &UpstreamRepo,
        tag: &Tag,
        kind: ManifestKind,
        mut update: impl FnMut(Option<&TagAnswer>) -> TagAnswer,
    ) -> sled::Result<()> {
        self.w()?.tags.fetch_and_update(tag_key(repo, tag), |old| {
            let mut answers = old.and_then(parse_tag).map(|e| e.answers).unwrap_or_default();
            let new = update(answers.get(&kind));
            answers.insert(kind, new);
            Some(tag_record(answers))
        })?;
        Ok(())
    }

    /// The last referrers list upstream gave for a manifest.
    pub fn referrers(&self, repo: &UpstreamRepo, digest: &Digest) -> sled::Result<Option<Bytes>> {
        Ok(self.t()?.referrers.get(referrers_key(repo, digest))?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Remember a referrers list.
    pub fn put_referrers(&self, repo: &UpstreamRepo, digest: &Digest, body: &[u8]) -> sled::Result<()> {
        let old = self.w()?.referrers.insert(referrers_key(repo, digest), body)?;
        self.account(old.map(|o| o.len() as u64), body.len() as u64);
        Ok(())
    }

    /// Every remembered referrers list: its key, its subject manifest, its size.
    pub fn referrers_lists(&self) -> sled::Result<Vec<(ReferrersKey, Digest, u64)>> {
        let mut out = Vec::new();
        for kv in self.t()?.referrers.iter() {
            let (k, v) = kv?;
            // The subject is the last of the three NUL-separated parts.
            let subject = k.rsplit(|b| *b == 0).next().and_then(|d| std::str::from_utf8(d).ok()?.parse().ok());
            if let Some(subject) = subject {
                out.push((ReferrersKey(k), subject, v.len() as u64));
            }
        }
        Ok(out)
    }

    /// Forget a referrers list.
    pub fn remove_referrers(&self, key: &ReferrersKey) -> sled::Result<()> {
        let old = self.w()?.referrers.remove(&key.0)?;
        self.account(old.map(|o| o.len() as u64), 0);
        Ok(())
    }

    /// Every tag known: (upstream, repository, tag, entry), sorted.
    pub fn all_tags(&self) -> sled::Result<Vec<(String, String, String, TagEntry)>> {
        let mut out = Vec::new();
        for kv in self.t()?.tags.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let mut parts = key.splitn(3, '\0');
            let (Some(u), Some(r), Some(t)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if let Some(entry) = parse_tag(&v) {
                out.push((u.to_owned(), r.to_owned(), t.to_owned(), entry));
            }
        }
        Ok(out)
    }

    /// Every tag known for a repository, sorted, with when upstream last confirmed it (unix
    /// seconds; 0 for an entry that can't be read).
    pub fn tags_of(&self, repo: &UpstreamRepo) -> sled::Result<Vec<(String, u64)>> {
        let prefix = format!("{}\0{}\0", repo.upstream, repo.name).into_bytes();
        let mut out = Vec::new();
        for kv in self.t()?.tags.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let checked_at = parse_tag(&v).and_then(|e| e.latest().map(|a| a.checked_at)).unwrap_or(0);
            out.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), checked_at));
        }
        Ok(out)
    }


    /// Write everything to disk now.
    pub fn flush(&self) -> sled::Result<()> {
        self.t()?.db.flush()?;
        Ok(())
    }

    /// The I/O error that stopped the database's writes (sled keeps refusing them until
    /// [`Index::reopen`]), if one did.
    pub fn failure(&self) -> Option<sled::Error> {
        self.trees.get().ok()?.failure()
    }

    /// Whether the database is closed: a reopening failed and will be tried again.
    pub fn is_closed(&self) -> bool {
        self.trees.get().is_err()
    }

    /// Close the database and open it again, which clears the error that stopped its writes
    /// (module `handle`). Meanwhile every operation fails with an I/O error. What was written after
    /// the error is lost: the caller makes the blob files and the index agree again
    /// (`Store::reconcile`), as at start-up. If opening fails the index stays closed (every
    /// operation failing) until a later call opens it.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let _one = lock(&self.reopening);
        self.reopen_now()
    }

    /// [`Index::reopen`] unless another caller has opened it again since it failed.
    fn reopen_if_failed(&self) -> Result<(), StoreError> {
        let _one = lock(&self.reopening);
        if self.trees.get().is_ok_and(|t| t.failure().is_none()) {
            return Ok(());
        }
        self.reopen_now()
    }

    /// [`Index::reopen`], with `reopening` held.
    fn reopen_now(&self) -> Result<(), StoreError> {
        let err = |source| StoreError::Index { path: self.path.clone(), source };
        // Every slot emptied and the old database dropped here, so that sled lets go of its file
        // lock (its flush on drop returns at once: the database has failed).
        drop((self.trees.take(), self.shared.take(), self.backlog.close()));
        self.reserve.release();
        let trees = Trees::open(&self.path).map_err(err)?;
        let book = TagListBook::open(&trees.tag_lists, &trees.tag_list_order).map_err(err)?;
        let used = used_by(&trees).map_err(err)?;
        self.backlog.reopen(trees.backlog.clone()).map_err(err)?;
        *lock(&self.tag_list_book) = book;
        self.used.store(used, Ordering::Relaxed);
        if let Some(g) = self.used_gauge.get() {
            g.set(i64::try_from(used).unwrap_or(i64::MAX));
        }
        self.shared.put(trees.shared.clone());
        self.trees.put(Arc::new(trees));
        self.repairs_due.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the index was opened again since the last [`Index::take_repair_due`].
    pub fn repair_due(&self) -> bool {
        self.repairs_due.load(Ordering::Relaxed) > 0
    }

    /// Whether the index was opened again since the last call: index and blob files are to be
    /// made to agree (`Store::reconcile`).
    pub fn take_repair_due(&self) -> bool {
        self.repairs_due.swap(0, Ordering::Relaxed) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_bytes_gauge_moves_with_every_insert_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index")).unwrap();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        idx.put_blob(&a, 100).unwrap();
        let gauge = Gauge::default();
        idx.count_used_in(gauge.clone());
        assert_eq!(gauge.get(), 100, "what was indexed before counts");
        let m = StoredManifest { media_type: "application/json".into(), bytes: Bytes::from_static(b"{}") };
        let steps: [(&dyn Fn(), i64); 6] = [
            (&|| idx.put_blob(&b, 50).unwrap(), 150),
            (&|| idx.put_blob(&b, 20).unwrap(), 120),
            (&|| drop(idx.put_manifest(&a, &m).unwrap()), 120 + 19),
            (&|| idx.put_referrers(&UpstreamRepo::of("docker.io", "app"), &a, b"[]").unwrap(), 141),
            (&|| idx.remove_manifest(&a).unwrap(), 122),
            (&|| idx.remove_blob(&a).unwrap(), 22),
        ];
        for (step, want) in steps {
            step();
            assert_eq!(gauge.get(), want);
            assert_eq!(gauge.get(), idx.used_bytes() as i64);
        }
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index")).unwrap();
        let d = Digest::sha256_of(b"m");
        assert_eq!(idx.blob_size(&d).unwrap(), None);
        idx.put_blob(&d, 42).unwrap();
        idx.put_blob(&d, 42).unwrap();
        assert_eq!(idx.blob_size(&d).unwrap(), Some(42));
        assert_eq!(idx.used_bytes(), 42);
        idx.remove_blob(&d).unwrap();
        assert_eq!(idx.blob_size(&d).unwrap(), None);
        assert_eq!(idx.used_bytes(), 0);

        let m = StoredManifest { media_type: "application/x".into(), bytes: Bytes::from_static(b"{\"a\":\0}") };
        idx.put_manifest(&d, &m).unwrap();
        let back = idx.manifest(&d).unwrap().unwrap();
        assert_eq!(back.media_type, "application/x");
        assert_eq!(back.bytes, m.bytes);
        let used = idx.used_bytes();
        let other_bytes = StoredManifest { media_type: "application/y".into(), bytes: Bytes::from_static(b"{}") };
        let kept = idx.put_manifest(&d, &other_bytes).unwrap();
        assert_eq!((kept.media_type.as_str(), &kept.bytes), ("application/x", &m.bytes), "stored bytes are never replaced");
        assert_eq!(idx.manifest(&d).unwrap().unwrap().bytes, m.bytes);
        assert_eq!(idx.used_bytes(), used);

        let repo = UpstreamRepo::of("docker.io", "library/alpine");
        let tag: Tag = "3".parse().unwrap();
        let a = TagAnswer { digest: d.clone(), checked_at: 1, published_at: None };
        let b = TagAnswer { digest: Digest::sha256_of(b"n"), checked_at: 2, published_at: None };
        idx.put_tag(&repo, &tag, ManifestKind::Index, &a).unwrap();
        idx.put_tag(&repo, &tag, ManifestKind::Image, &b).unwrap();
        let e = idx.tag(&repo, &tag).unwrap().unwrap();
        assert_eq!(e.answer(ManifestKind::Index), Some(&a));
        assert_eq!(e.answer(ManifestKind::Image), Some(&b));
        assert_eq!(e.answer(ManifestKind::Schema1), None);
        assert_eq!(e.latest(), Some(&b));
        assert_eq!(idx.tag(&UpstreamRepo::of("ghcr.io", "library/alpine"), &tag).unwrap(), None);
        let other = UpstreamRepo::of("docker.io", "library/alpine2");
        idx.put_tag(&other, &tag, ManifestKind::Index, &a).unwrap();
        idx.put_tag(&repo, &"edge".parse().unwrap(), ManifestKind::Index, &a).unwrap();
        assert_eq!(idx.tags_of(&repo).unwrap(), vec![("3".to_owned(), 2), ("edge".to_owned(), 1)], "with the latest confirmation");
    }

    #[test]
    fn keys_are_the_upstream_the_repository_and_the_rest_separated_by_nul() {
        let repo = UpstreamRepo::of("localhost:5000", "org/app");
        let d = Digest::sha256_of(b"m");
        assert_eq!(tag_key(&repo, &"v1".parse().unwrap()), b"localhost:5000\0org/app\0v1");
        assert_eq!(referrers_key(&repo, &d), format!("localhost:5000\0org/app\0{d}"));
        assert_eq!(tag_lists::tag_list_key(&repo), b"localhost:5000\0org/app");
    }

    #[test]
    fn while_the_room_kept_is_given_up_reads_work_and_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index")).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("index.reserve")).unwrap().len(), 8 << 20, "room kept");
        let (kept, new) = (Digest::sha256_of(b"kept"), Digest::sha256_of(b"new"));
        idx.put_blob(&kept, 1).unwrap();
        idx.reopen().unwrap();
        assert!(!dir.path().join("index.reserve").exists(), "given up when opened again");
        assert!(idx.is_read_only() && idx.take_repair_due());
        assert_eq!(idx.blob_size(&kept).unwrap(), Some(1), "reads work");
        assert!(idx.put_blob(&new, 2).is_err());
        assert!(idx.shared_sizes().put(&new, 2).is_err());
        assert!(idx.backlog().push(&crate::store::Pending::Blob { digest: new.clone(), size: 2 }).is_err());
        assert!(!idx.restore_reserve(2 * (8 << 20) - 1), "not without room");
        assert!(idx.restore_reserve(u64::MAX) && !idx.is_read_only());
        assert!(dir.path().join("index.reserve").exists(), "written back");
        idx.put_blob(&new, 2).unwrap();
        idx.shared_sizes().put(&new, 2).unwrap();
        assert_eq!(idx.used_bytes(), 3);
    }

    #[test]
    fn a_tag_answer_is_stored_with_its_digest_as_a_string() {
        let d = Digest::sha256_of(b"m");
        let a = TagAnswer { digest: d.clone(), checked_at: 7, published_at: None };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!(r#"{{"digest":"{d}","checked_at":7}}"#));
        assert_eq!(serde_json::from_str::<TagAnswer>(&json).unwrap(), a);
        assert!(serde_json::from_str::<TagAnswer>(r#"{"digest":"md5:00","checked_at":7}"#).is_err());
    }

    #[test]
    fn tags_written_by_the_previous_version_are_of_unknown_kind() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index")).unwrap();
        let repo = UpstreamRepo::of("docker.io", "library/alpine");
        let tag: Tag = "3".parse().unwrap();
        let d = Digest::sha256_of(b"m");
        // The previous layout: one digest per tag.
        idx.t().unwrap().tags.insert(tag_key(&repo, &tag), format!(r#"{{"digest":"{d}","checked_at":7}}"#).as_bytes()).unwrap();
        let old = TagAnswer { digest: d.clone(), checked_at: 7, published_at: None };
        let e = idx.tag(&repo, &tag).unwrap().unwrap();
        assert_eq!(e, TagEntry { answers: BTreeMap::new(), unknown: Some(old.clone()) });
        assert_eq!(e.latest(), Some(&old), "still listed");
        assert_eq!(idx.all_tags().unwrap().len(), 1);
        let new = TagAnswer { digest: d, checked_at: 8, published_at: None };
        idx.put_tag(&repo, &tag, ManifestKind::Image, &new).unwrap();
        let e = idx.tag(&repo, &tag).unwrap().unwrap();
        assert_eq!(e.answer(ManifestKind::Image), Some(&new));
        assert_eq!(e.unknown, None, "a new answer replaces the one of unknown kind");
    }

    #[test]
    fn referrers_lists_count_in_used_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let subject = Digest::sha256_of(b"subject");
        let repo = UpstreamRepo::of("docker.io", "library/alpine");
        {
            let idx = Index::open(&path).unwrap();
            idx.put_referrers(&repo, &subject, &[b'x'; 100]).unwrap();
            idx.put_referrers(&repo, &subject, &[b'x'; 40]).unwrap();
            idx.put_referrers(&UpstreamRepo::of("ghcr.io", "library/alpine"), &subject, &[b'y'; 10]).unwrap();
            assert_eq!(idx.used_bytes(), 50, "a list replaced counts once");
            idx.flush().unwrap();
        }
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.used_bytes(), 50, "counted again on open");
        let lists = idx.referrers_lists().unwrap();
        assert_eq!(lists.iter().map(|(_, d, n)| (d.clone(), *n)).collect::<Vec<_>>(), vec![(subject.clone(), 40), (subject.clone(), 10)]);
        idx.remove_referrers(&lists[0].0).unwrap();
        assert_eq!(idx.used_bytes(), 10);
        assert_eq!(idx.referrers(&repo, &subject).unwrap(), None);
        assert!(idx.referrers(&UpstreamRepo::of("ghcr.io", "library/alpine"), &subject).unwrap().is_some());
    }
}
