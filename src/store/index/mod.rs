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
mod tests;
