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
//! - `backlog` (what the shared bucket should have and doesn't yet, [`super::backlog`]) lives only
//!   here: losing it only costs the other nodes fetching those blobs from the upstream.
//!
//! sled makes each insert atomic; a tag list and its place in `tag_list_order` change together, in
//! one transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional};

use super::backlog::Backlog;
use super::StoreError;
use crate::oci::{Digest, ManifestKind, RepositoryName, Tag, MAX_TAG_LEN};
use crate::sync::lock;

/// The most tags remembered of one repository's list: one whole page (`cache::MAX_TAGS_PAGE`).
/// Past it the lexically first are kept, so a list read from its start is right as far as it goes.
pub const MAX_LISTED_TAGS: usize = 10_000;
/// The most repositories whose tag list is remembered (per node); past it the list remembered
/// longest ago is forgotten.
pub const MAX_LISTED_REPOSITORIES: usize = 10_000;
/// The most bytes the remembered tag lists take in all; past it the list remembered longest ago is
/// forgotten. (10,000 repositories of 10,000 tags of 128 characters would be 13 GB.)
pub const MAX_LISTED_BYTES: u64 = 64 * 1024 * 1024;
/// The largest tag-list record read back, from the index or the shared bucket: [`MAX_LISTED_TAGS`]
/// of the longest tags, quoted and comma-separated, and room for the rest of the record.
pub const MAX_TAG_LIST_RECORD: usize = MAX_LISTED_TAGS * (MAX_TAG_LEN + 3) + 256;
// The newest list is never the one forgotten for the bytes: two of the largest fit.
const _: () = assert!(2 * (MAX_TAG_LIST_RECORD as u64 + 8) <= MAX_LISTED_BYTES);

/// The index database.
pub struct Index {
    db: sled::Db,
    blobs: sled::Tree,
    manifests: sled::Tree,
    tags: sled::Tree,
    access: sled::Tree,
    referrers: sled::Tree,
    shared: sled::Tree,
    /// `upstream\0repository` → the place in `tag_list_order` (8 bytes, big-endian) and the
    /// [`ListedTags`] record.
    tag_lists: sled::Tree,
    /// Place (8 bytes, big-endian, increasing with every write) → the `tag_lists` key written then:
    /// the first entry is the list remembered longest ago.
    tag_list_order: sled::Tree,
    // A std Mutex: held by one tag-list write (a few sled operations, no await), so the count, the
    // bytes and the order agree with the trees.
    tag_list_book: Mutex<TagListBook>,
    backlog: Backlog,
    /// Bytes of blobs, manifests and referrers lists indexed, kept up to date by every insert and
    /// removal.
    used: AtomicU64,
}

/// What the remembered tag lists take, and the next write's place in their order.
struct TagListBook {
    next: u64,
    count: usize,
    bytes: u64,
    limits: TagListLimits,
}

/// How many tag lists are remembered, and how many bytes they may take ([`MAX_LISTED_REPOSITORIES`],
/// [`MAX_LISTED_BYTES`]; tests lower them).
#[derive(Clone, Copy, Debug)]
struct TagListLimits {
    repositories: usize,
    bytes: u64,
}

/// The last tag list an upstream gave for a repository, kept to answer `tags/list` while the
/// upstream can't be asked (see `Cache::tags` for how it is learnt): sorted, without duplicates,
/// every entry a valid tag, at most [`MAX_LISTED_TAGS`] of them. Also the shared bucket's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedTags {
    tags: Vec<String>,
    /// Unix seconds when an upstream answer last went into it.
    pub updated_at: u64,
    /// Unix seconds when the upstream last gave the whole list (from its start, to its end), if it
    /// ever did: a tag resolved before then and missing from it was no longer upstream.
    pub complete_at: Option<u64>,
    /// Unix seconds when it was last written to the shared bucket (0: never).
    pub published_at: u64,
}

impl ListedTags {
    /// A list of `tags` (in any order, with duplicates; what isn't a valid tag is left out, and past
    /// [`MAX_LISTED_TAGS`] the lexically last).
    pub fn new(tags: impl IntoIterator<Item = String>, updated_at: u64, complete_at: Option<u64>) -> ListedTags {
        let mut tags: Vec<String> = tags.into_iter().filter(|t| t.parse::<Tag>().is_ok()).collect();
        tags.sort_unstable();
        tags.dedup();
        tags.truncate(MAX_LISTED_TAGS);
        ListedTags { tags, updated_at, complete_at, published_at: 0 }
    }

    /// The tags, sorted.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The tags, sorted.
    pub fn into_tags(self) -> Vec<String> {
        self.tags
    }

    /// The record: JSON.
    pub fn to_record(&self) -> Vec<u8> {
        // Serialising strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The list in a record (from the index or the shared bucket, where any node, or anyone with its
    /// keys, may write), if it is one regcache writes: at most [`MAX_TAG_LIST_RECORD`] bytes, at
    /// most [`MAX_LISTED_TAGS`] tags, every one a valid tag.
    pub fn from_record(record: &[u8]) -> Option<ListedTags> {
        #[derive(Deserialize)]
        struct Raw {
            tags: Vec<String>,
            updated_at: u64,
            complete_at: Option<u64>,
            #[serde(default)]
            published_at: u64,
        }
        if record.len() > MAX_TAG_LIST_RECORD {
            return None;
        }
        let raw: Raw = serde_json::from_slice(record).ok()?;
        if raw.tags.len() > MAX_LISTED_TAGS || !raw.tags.iter().all(|t| t.parse::<Tag>().is_ok()) {
            return None;
        }
        let list = ListedTags::new(raw.tags, raw.updated_at, raw.complete_at);
        Some(ListedTags { published_at: raw.published_at, ..list })
    }
}

/// The `tag_lists` value: its place in the order, then the record.
fn tag_list_value(place: u64, list: &ListedTags) -> Vec<u8> {
    [&place.to_be_bytes()[..], &list.to_record()].concat()
}

/// The place in the order of a `tag_lists` value.
fn place_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// The list in a `tag_lists` value.
fn listed_of(value: &[u8]) -> Option<ListedTags> {
    ListedTags::from_record(value.get(8..)?)
}

/// A transaction's storage error (the closures here never abort).
fn storage_error(e: TransactionError<std::convert::Infallible>) -> sled::Error {
    match e {
        TransactionError::Storage(e) => e,
        TransactionError::Abort(never) => match never {},
    }
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

fn parse_tag(v: &[u8]) -> Option<TagEntry> {
    Some(match serde_json::from_slice(v).ok()? {
        StoredTag::PerKind { answers } => TagEntry { answers, unknown: None },
        StoredTag::Legacy(a) => TagEntry { answers: BTreeMap::new(), unknown: Some(a) },
    })
}

/// The sizes of blobs known to be in the shared bucket (they don't count in `max_size`: they aren't
/// here). A handle on the index's `shared` tree.
#[derive(Clone)]
pub struct SharedSizes(sled::Tree);

impl SharedSizes {
    /// The size of `digest` in the bucket, if known.
    pub fn get(&self, digest: &Digest) -> sled::Result<Option<u64>> {
        Ok(self.0.get(digest.to_string())?.as_deref().map(blob_size_of))
    }

    /// Note that the bucket has `digest` with `size` bytes.
    pub fn put(&self, digest: &Digest, size: u64) -> sled::Result<()> {
        self.0.insert(digest.to_string(), &size.to_be_bytes()).map(|_| ())
    }

    /// Forget `digest`: the bucket no longer has it.
    pub fn remove(&self, digest: &Digest) -> sled::Result<()> {
        self.0.remove(digest.to_string()).map(|_| ())
    }

    /// The bytes of all blobs known to be in the bucket (a walk of the tree: for the status page).
    pub fn known_bytes(&self) -> u64 {
        self.0.iter().values().filter_map(Result::ok).map(|v| blob_size_of(&v)).fold(0, u64::saturating_add)
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

fn blob_size_of(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

fn tag_key(upstream: &str, repo: &RepositoryName, tag: &Tag) -> Vec<u8> {
    // NUL can't appear in any of the three, so the key is unambiguous.
    format!("{upstream}\0{repo}\0{tag}").into_bytes()
}

fn tag_list_key(upstream: &str, repo: &RepositoryName) -> Vec<u8> {
    format!("{upstream}\0{repo}").into_bytes()
}

/// How long opening waits for a lock that is being let go.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Open sled's database. A store closed a moment ago (a restart in the same process, a server that
/// is just exiting) may still hold its file lock until sled's background flusher has stopped, so
/// a lock failure is retried for [`LOCK_GRACE`]; a lock held longer (a running server) is an error.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let start = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).flush_every_ms(Some(1000)).open() {
            Err(e) if start.elapsed() < LOCK_GRACE && is_lock_error(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether `e` is sled failing to lock its database file (another process, or a store closed a
/// moment ago, holds it).
///
/// sled (pinned at 0.34.7) has no error variant for this: a failed `try_lock_exclusive` on its `db`
/// file becomes `Error::Io(io::Error::new(ErrorKind::Other, "could not acquire lock on …: <the OS
/// error>"))` (sled's `config.rs`), so the original `WouldBlock` kind survives only as text. Hence
/// the message match; a sled upgrade must recheck it (`it::commands` runs the commands beside a
/// running server).
pub fn is_lock_error(e: &sled::Error) -> bool {
    let msg = e.to_string();
    msg.contains("lock") || msg.contains("Resource temporarily unavailable")
}

impl Index {
    /// Open or create the index at `path`.
    pub fn open(path: &Path) -> Result<Index, StoreError> {
        let err = |source| StoreError::Index { path: path.to_owned(), source };
        let db = open_db(path).map_err(err)?;
        let blobs = db.open_tree("blobs").map_err(err)?;
        let manifests = db.open_tree("manifests").map_err(err)?;
        let tags = db.open_tree("tags").map_err(err)?;
        let access = db.open_tree("access").map_err(err)?;
        let referrers = db.open_tree("referrers").map_err(err)?;
        let shared = db.open_tree("shared").map_err(err)?;
        let tag_lists = db.open_tree("tag_lists").map_err(err)?;
        let tag_list_order = db.open_tree("tag_list_order").map_err(err)?;
        let mut book = TagListBook {
            next: 0,
            count: 0,
            bytes: 0,
            limits: TagListLimits { repositories: MAX_LISTED_REPOSITORIES, bytes: MAX_LISTED_BYTES },
        };
        for kv in tag_lists.iter() {
            let (_, v) = kv.map_err(err)?;
            book.count += 1;
            book.bytes = book.bytes.saturating_add(v.len() as u64);
        }
        if let Some((place, _)) = tag_list_order.last().map_err(err)? {
            book.next = place_of(&place).unwrap_or(0).saturating_add(1);
        }
        let backlog = db.open_tree("backlog").and_then(Backlog::open).map_err(err)?;
        let mut used = 0u64;
        for kv in blobs.iter() {
            let (_, v) = kv.map_err(err)?;
            used += blob_size_of(&v);
        }
        for tree in [&manifests, &referrers] {
            for kv in tree.iter() {
                let (_, v) = kv.map_err(err)?;
                used += v.len() as u64;
            }
        }
        Ok(Index {
            db,
            blobs,
            manifests,
            tags,
            access,
            referrers,
            shared,
            tag_lists,
            tag_list_order,
            tag_list_book: Mutex::new(book),
            backlog,
            used: AtomicU64::new(used),
        })
    }

    /// The recorded size of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> sled::Result<Option<u64>> {
        Ok(self.blobs.get(digest.to_string())?.as_deref().map(blob_size_of))
    }

    /// Record a blob that is now durable on disk.
    pub fn put_blob(&self, digest: &Digest, size: u64) -> sled::Result<()> {
        let old = self.blobs.insert(digest.to_string(), &size.to_be_bytes())?;
        self.account(old.as_deref().map(blob_size_of), size);
        Ok(())
    }

    /// Forget a blob.
    pub fn remove_blob(&self, digest: &Digest) -> sled::Result<()> {
        let old = self.blobs.remove(digest.to_string())?;
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
        keys(&self.blobs)
    }

    /// Every stored manifest.
    pub fn manifest_digests(&self) -> sled::Result<Vec<Digest>> {
        keys(&self.manifests)
    }

    /// Forget a manifest.
    pub fn remove_manifest(&self, digest: &Digest) -> sled::Result<()> {
        let old = self.manifests.remove(digest.to_string())?;
        self.account(old.map(|o| o.len() as u64), 0);
        Ok(())
    }

    /// Record last-access times (unix milliseconds), in one batch.
    pub fn put_access(&self, times: std::collections::HashMap<Digest, u64>) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        for (d, t) in times {
            batch.insert(d.to_string().into_bytes(), &t.to_be_bytes());
        }
        self.access.apply_batch(batch)
    }

    /// When content was last used; 0 if never recorded.
    pub fn access(&self, digest: &Digest) -> sled::Result<u64> {
        Ok(self.access.get(digest.to_string())?.as_deref().map_or(0, blob_size_of))
    }

    /// Forget the access time of evicted content.
    pub fn remove_access(&self, digest: &Digest) -> sled::Result<()> {
        self.access.remove(digest.to_string())?;
        Ok(())
    }

    /// How many blobs and manifests are indexed (a walk of each tree's keys: for the status page).
    pub fn counts(&self) -> (u64, u64) {
        (self.blobs.len() as u64, self.manifests.len() as u64)
    }

    /// Bytes of blobs, manifests and referrers lists indexed.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn account(&self, old: Option<u64>, new: u64) {
        let old = old.unwrap_or(0);
        if new >= old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    /// A stored manifest.
    pub fn manifest(&self, digest: &Digest) -> sled::Result<Option<StoredManifest>> {
        let Some(v) = self.manifests.get(digest.to_string())? else { return Ok(None) };
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
        match self.manifests.compare_and_swap(digest.to_string(), None as Option<&[u8]>, Some(v))? {
            Ok(()) => {
                self.account(None, size);
                Ok(m.clone())
            }
            Err(_) => Ok(self.manifest(digest)?.unwrap_or_else(|| m.clone())),
        }
    }

    /// What a tag pointed at when last seen.
    pub fn tag(&self, upstream: &str, repo: &RepositoryName, tag: &Tag) -> sled::Result<Option<TagEntry>> {
        let v = self.tags.get(tag_key(upstream, repo, tag))?;
        Ok(v.and_then(|v| parse_tag(&v)))
    }

    /// Record the answer for clients asking for `kind`, keeping the other kinds' answers; the
    /// answer for `kind` it replaces, if any.
    pub fn put_tag(&self, upstream: &str, repo: &RepositoryName, tag: &Tag, kind: ManifestKind, answer: &TagAnswer) -> sled::Result<Option<TagAnswer>> {
        let old = self.tags.fetch_and_update(tag_key(upstream, repo, tag), |old| {
            let mut answers = old.and_then(parse_tag).map(|e| e.answers).unwrap_or_default();
            answers.insert(kind, answer.clone());
            // Serialising a map of strings and integers cannot fail.
            serde_json::to_vec(&StoredTag::PerKind { answers }).ok()
        })?;
        Ok(old.as_deref().and_then(parse_tag).and_then(|e| e.answer(kind).cloned()))
    }

    /// The last referrers list upstream gave for a manifest.
    pub fn referrers(&self, upstream: &str, repo: &RepositoryName, digest: &Digest) -> sled::Result<Option<Bytes>> {
        let key = format!("{upstream}\0{repo}\0{digest}");
        Ok(self.referrers.get(key)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Remember a referrers list.
    pub fn put_referrers(&self, upstream: &str, repo: &RepositoryName, digest: &Digest, body: &[u8]) -> sled::Result<()> {
        let old = self.referrers.insert(format!("{upstream}\0{repo}\0{digest}"), body)?;
        self.account(old.map(|o| o.len() as u64), body.len() as u64);
        Ok(())
    }

    /// Every remembered referrers list: its key, its subject manifest, its size.
    pub fn referrers_lists(&self) -> sled::Result<Vec<(ReferrersKey, Digest, u64)>> {
        let mut out = Vec::new();
        for kv in self.referrers.iter() {
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
        let old = self.referrers.remove(&key.0)?;
        self.account(old.map(|o| o.len() as u64), 0);
        Ok(())
    }

    /// Every tag known: (upstream, repository, tag, entry), sorted.
    pub fn all_tags(&self) -> sled::Result<Vec<(String, String, String, TagEntry)>> {
        let mut out = Vec::new();
        for kv in self.tags.iter() {
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
    pub fn tags_of(&self, upstream: &str, repo: &RepositoryName) -> sled::Result<Vec<(String, u64)>> {
        let prefix = format!("{upstream}\0{repo}\0").into_bytes();
        let mut out = Vec::new();
        for kv in self.tags.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let checked_at = parse_tag(&v).and_then(|e| e.latest().map(|a| a.checked_at)).unwrap_or(0);
            out.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), checked_at));
        }
        Ok(out)
    }

    /// The tag list last remembered for a repository, if any (a value that isn't a valid record is
    /// none).
    pub fn tag_list(&self, upstream: &str, repo: &RepositoryName) -> sled::Result<Option<ListedTags>> {
        Ok(self.tag_lists.get(tag_list_key(upstream, repo))?.as_deref().and_then(listed_of))
    }

    /// Remember `update(the list remembered now)` as a repository's tag list, the newest of all; then
    /// forget the lists remembered longest ago while more than [`MAX_LISTED_REPOSITORIES`] are kept
    /// or they take more than [`MAX_LISTED_BYTES`]. The list before and after. A few sled operations
    /// per list written or forgotten, each O(log n).
    pub fn update_tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        update: impl FnOnce(Option<ListedTags>) -> ListedTags,
    ) -> sled::Result<(Option<ListedTags>, ListedTags)> {
        let key = tag_list_key(upstream, repo);
        let mut book = lock(&self.tag_list_book);
        let old = self.tag_lists.get(&key)?;
        let before = old.as_deref().and_then(listed_of);
        let after = update(before.clone());
        let place = book.next;
        let value = tag_list_value(place, &after);
        let old_place = old.as_deref().and_then(place_of);
        (&self.tag_lists, &self.tag_list_order)
            .transaction(|(lists, order)| -> ConflictableTransactionResult<(), std::convert::Infallible> {
                if let Some(p) = old_place {
                    order.remove(&p.to_be_bytes())?;
                }
                lists.insert(key.as_slice(), value.as_slice())?;
                order.insert(&place.to_be_bytes(), key.as_slice())?;
                Ok(())
            })
            .map_err(storage_error)?;
        book.next = place.saturating_add(1);
        match &old {
            Some(old) => book.bytes = book.bytes.saturating_sub(old.len() as u64),
            None => book.count += 1,
        }
        book.bytes = book.bytes.saturating_add(value.len() as u64);
        while book.count > book.limits.repositories || book.bytes > book.limits.bytes {
            let Some((oldest, key)) = self.tag_list_order.first()? else { break };
            let place = place_of(&oldest);
            let forgotten = (&self.tag_lists, &self.tag_list_order)
                .transaction(|(lists, order)| -> ConflictableTransactionResult<Option<usize>, std::convert::Infallible> {
                    order.remove(&oldest)?;
                    // Only the list written at that place (written since, it has another).
                    let Some(v) = lists.get(&key)?.filter(|v| place_of(v) == place) else { return Ok(None) };
                    lists.remove(&key)?;
                    Ok(Some(v.len()))
                })
                .map_err(storage_error)?;
            if let Some(len) = forgotten {
                book.count = book.count.saturating_sub(1);
                book.bytes = book.bytes.saturating_sub(len as u64);
            }
        }
        Ok((before, after))
    }

    /// Write everything to disk now.
    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let repo: RepositoryName = "library/alpine".parse().unwrap();
        let tag: Tag = "3".parse().unwrap();
        let a = TagAnswer { digest: d.clone(), checked_at: 1 };
        let b = TagAnswer { digest: Digest::sha256_of(b"n"), checked_at: 2 };
        idx.put_tag("docker.io", &repo, &tag, ManifestKind::Index, &a).unwrap();
        idx.put_tag("docker.io", &repo, &tag, ManifestKind::Image, &b).unwrap();
        let e = idx.tag("docker.io", &repo, &tag).unwrap().unwrap();
        assert_eq!(e.answer(ManifestKind::Index), Some(&a));
        assert_eq!(e.answer(ManifestKind::Image), Some(&b));
        assert_eq!(e.answer(ManifestKind::Schema1), None);
        assert_eq!(e.latest(), Some(&b));
        assert_eq!(idx.tag("ghcr.io", &repo, &tag).unwrap(), None);
        let other: RepositoryName = "library/alpine2".parse().unwrap();
        idx.put_tag("docker.io", &other, &tag, ManifestKind::Index, &a).unwrap();
        idx.put_tag("docker.io", &repo, &"edge".parse().unwrap(), ManifestKind::Index, &a).unwrap();
        assert_eq!(idx.tags_of("docker.io", &repo).unwrap(), vec![("3".to_owned(), 2), ("edge".to_owned(), 1)], "with the latest confirmation");
    }

    #[test]
    fn a_tag_answer_is_stored_with_its_digest_as_a_string() {
        let d = Digest::sha256_of(b"m");
        let a = TagAnswer { digest: d.clone(), checked_at: 7 };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!(r#"{{"digest":"{d}","checked_at":7}}"#));
        assert_eq!(serde_json::from_str::<TagAnswer>(&json).unwrap(), a);
        assert!(serde_json::from_str::<TagAnswer>(r#"{"digest":"md5:00","checked_at":7}"#).is_err());
    }

    #[test]
    fn tags_written_by_the_previous_version_are_of_unknown_kind() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index")).unwrap();
        let repo: RepositoryName = "library/alpine".parse().unwrap();
        let tag: Tag = "3".parse().unwrap();
        let d = Digest::sha256_of(b"m");
        // The previous layout: one digest per tag.
        idx.tags.insert(tag_key("docker.io", &repo, &tag), format!(r#"{{"digest":"{d}","checked_at":7}}"#).as_bytes()).unwrap();
        let old = TagAnswer { digest: d.clone(), checked_at: 7 };
        let e = idx.tag("docker.io", &repo, &tag).unwrap().unwrap();
        assert_eq!(e, TagEntry { answers: BTreeMap::new(), unknown: Some(old.clone()) });
        assert_eq!(e.latest(), Some(&old), "still listed");
        assert_eq!(idx.all_tags().unwrap().len(), 1);
        let new = TagAnswer { digest: d, checked_at: 8 };
        idx.put_tag("docker.io", &repo, &tag, ManifestKind::Image, &new).unwrap();
        let e = idx.tag("docker.io", &repo, &tag).unwrap().unwrap();
        assert_eq!(e.answer(ManifestKind::Image), Some(&new));
        assert_eq!(e.unknown, None, "a new answer replaces the one of unknown kind");
    }

    #[test]
    fn referrers_lists_count_in_used_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let subject = Digest::sha256_of(b"subject");
        let repo: RepositoryName = "library/alpine".parse().unwrap();
        {
            let idx = Index::open(&path).unwrap();
            idx.put_referrers("docker.io", &repo, &subject, &[b'x'; 100]).unwrap();
            idx.put_referrers("docker.io", &repo, &subject, &[b'x'; 40]).unwrap();
            idx.put_referrers("ghcr.io", &repo, &subject, &[b'y'; 10]).unwrap();
            assert_eq!(idx.used_bytes(), 50, "a list replaced counts once");
            idx.flush().unwrap();
        }
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.used_bytes(), 50, "counted again on open");
        let lists = idx.referrers_lists().unwrap();
        assert_eq!(lists.iter().map(|(_, d, n)| (d.clone(), *n)).collect::<Vec<_>>(), vec![(subject.clone(), 40), (subject.clone(), 10)]);
        idx.remove_referrers(&lists[0].0).unwrap();
        assert_eq!(idx.used_bytes(), 10);
        assert_eq!(idx.referrers("docker.io", &repo, &subject).unwrap(), None);
        assert!(idx.referrers("ghcr.io", &repo, &subject).unwrap().is_some());
    }

    fn listed(tags: &[&str], at: u64) -> ListedTags {
        ListedTags::new(tags.iter().map(|t| t.to_string()), at, Some(at))
    }

    /// The repositories whose tag list is remembered, of `names`.
    fn remembered(idx: &Index, names: &[&RepositoryName]) -> Vec<String> {
        names.iter().filter(|r| idx.tag_list("docker.io", r).unwrap().is_some()).map(|r| r.to_string()).collect()
    }

    #[test]
    fn a_tag_list_keeps_valid_tags_sorted_and_at_most_max_listed_tags() {
        let many = (0..MAX_LISTED_TAGS + 5).rev().map(|i| format!("t{i:05}"));
        let list = ListedTags::new(many.chain(["not a tag".to_owned(), ".x".to_owned(), "t00001".to_owned()]), 1, None);
        assert_eq!(list.tags().len(), MAX_LISTED_TAGS);
        assert_eq!((list.tags()[0].as_str(), list.tags()[MAX_LISTED_TAGS - 1].as_str()), ("t00000", "t09999"), "the lexically first");
        let record = list.to_record();
        assert!(record.len() <= MAX_TAG_LIST_RECORD);
        assert_eq!(ListedTags::from_record(&record), Some(list));
        let longest = ListedTags::new((0..MAX_LISTED_TAGS).map(|i| format!("{i:0128}")), u64::MAX, Some(u64::MAX));
        assert!(longest.to_record().len() <= MAX_TAG_LIST_RECORD, "the largest list regcache writes is read back");

        // Read back as outside input.
        let too_many = format!(r#"{{"tags":[{}],"updated_at":1,"complete_at":null}}"#, vec![r#""a""#; MAX_LISTED_TAGS + 1].join(","));
        for (why, record) in [
            ("not JSON", b"<html>".to_vec()),
            ("a tag that isn't one", br#"{"tags":["a","\u001b[2J"],"updated_at":1,"complete_at":null}"#.to_vec()),
            ("too many tags", too_many.into_bytes()),
            ("too large", [br#"{"tags":[],"updated_at":1,"complete_at":null,"x":""#.as_slice(), &vec![b'x'; MAX_TAG_LIST_RECORD], b"\"}"].concat()),
            ("no times", br#"{"tags":["a"]}"#.to_vec()),
        ] {
            assert_eq!(ListedTags::from_record(&record), None, "{why}");
        }
        let unsorted = ListedTags::from_record(br#"{"tags":["b","a","b"],"updated_at":1,"complete_at":1}"#).unwrap();
        assert_eq!(unsorted.tags(), ["a", "b"]);
    }

    #[test]
    fn tag_lists_are_bounded_and_the_one_remembered_longest_ago_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let repos: Vec<RepositoryName> = (1..=6).map(|i| format!("org/r{i}").parse().unwrap()).collect();
        let all: Vec<&RepositoryName> = repos.iter().collect();
        let limits = TagListLimits { repositories: 3, bytes: u64::MAX };
        {
            let idx = Index::open(&path).unwrap();
            lock(&idx.tag_list_book).limits = limits;
            for r in &repos[..3] {
                idx.update_tag_list("docker.io", r, |_| listed(&["a"], 1)).unwrap();
            }
            assert_eq!(remembered(&idx, &all), ["org/r1", "org/r2", "org/r3"]);
            // r1 written again is the newest: r2 goes for r4.
            let (before, after) = idx.update_tag_list("docker.io", &repos[0], |old| {
                let old = old.unwrap();
                ListedTags::new(old.tags().iter().cloned().chain(["b".to_owned()]), 2, old.complete_at)
            }).unwrap();
            assert_eq!((before.unwrap().tags(), after.tags()), (&["a".to_owned()][..], &["a".to_owned(), "b".to_owned()][..]));
            idx.update_tag_list("docker.io", &repos[3], |_| listed(&["a"], 3)).unwrap();
            assert_eq!(remembered(&idx, &all), ["org/r1", "org/r3", "org/r4"]);
            assert_eq!(idx.tag_list("docker.io", &repos[0]).unwrap().unwrap().tags(), ["a", "b"]);
            assert_eq!(idx.tag_list("ghcr.io", &repos[0]).unwrap(), None, "per upstream");
            idx.flush().unwrap();
        }
        // Counted again at open, in the same order.
        let idx = Index::open(&path).unwrap();
        lock(&idx.tag_list_book).limits = limits;
        idx.update_tag_list("docker.io", &repos[4], |_| listed(&["a"], 4)).unwrap();
        assert_eq!(remembered(&idx, &all), ["org/r1", "org/r4", "org/r5"]);
        assert_eq!(idx.tag_list_order.len(), 3, "one place per list");

        // Bytes bound them too: a large list pushes out the oldest ones until they fit.
        let value_len = |tags: &[&str]| tag_list_value(0, &listed(tags, 5)).len() as u64;
        let big: Vec<String> = (0..100).map(|i| format!("tag-{i:03}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        lock(&idx.tag_list_book).limits = TagListLimits { repositories: 10, bytes: value_len(&big) + 2 * value_len(&["a"]) };
        idx.update_tag_list("docker.io", &repos[5], |_| listed(&big, 5)).unwrap();
        assert_eq!(remembered(&idx, &all), ["org/r4", "org/r5", "org/r6"]);
        let book = lock(&idx.tag_list_book);
        assert_eq!((book.count, book.bytes), (3, value_len(&big) + 2 * value_len(&["a"])));
    }
}
