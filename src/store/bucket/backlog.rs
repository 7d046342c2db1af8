//! The bucket's backlog: what this node kept while the shared bucket was down (or failed to take
//! it) and the bucket should have too: blobs, manifests, what tags pointed at, referrers lists. It
//! is a tree of the index, so it survives a restart, and it is bounded ([`MAX_ENTRIES`]).
//! [`drain`] empties it once the bucket answers again (`store::housekeeping` runs it at start,
//! when something is added, and when the bucket is marked up), oldest first, at the uploads'
//! concurrency; an entry whose content this node no longer keeps (a blob evicted from the hot tier
//! meanwhile, a manifest evicted from the index) is dropped.
//!
//! An entry names what to upload, not its bytes: a blob by digest and size (its bytes are the hot
//! tier's file, hashed again as they are uploaded), a manifest by digest, a tag by upstream,
//! repository, tag and kind of answer (the index's answer when it is drained, written only if the
//! bucket's is older), a referrers list by upstream, repository and subject.
//!
//! The tree: `q` + the entry's big-endian sequence number → the entry (JSON), so iterating the `q`
//! keys is oldest first; `k` + the entry's identity → its sequence number, so one thing waits once
//! (a tag republished ten times in an outage is one entry). An entry's two keys are written and
//! removed in one batch. What is read back is parsed like outside input: an entry that doesn't
//! parse into valid names and digests is dropped with a log line.
//!
//! When the backlog is full the oldest entry is dropped for the new one (and counted,
//! `regcache_bucket_backlog_dropped_total`): the oldest is the likeliest to have left the hot tier
//! since (the drain would skip it anyway) and the least likely to be pulled again, while refusing
//! the newest would freeze a long outage's backlog at its first hours.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::{NotDone, Shared};
use crate::store::{Slot, Store};
use crate::oci::{Digest, ManifestKind, RegistryHost, RepositoryName, Tag, UpstreamRepo};
use crate::sync::lock;

/// The most entries the backlog holds (about 300 bytes each in the index, both keys counted).
pub const MAX_ENTRIES: u64 = 100_000;

/// The prefix of the entries, by sequence number.
const QUEUE: u8 = b'q';
/// The prefix of the identities of the entries queued.
const QUEUED: u8 = b'k';
/// The longest upstream name read back.
const MAX_UPSTREAM: usize = 255;

/// Something this node keeps that the bucket should have too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A blob in the hot tier.
    Blob {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A manifest in the index.
    Manifest {
        /// Its digest.
        digest: Digest,
    },
    /// What a tag pointed at for clients asking for `kind`, as the index remembers it.
    Tag {
        /// The repository, on its upstream.
        repo: UpstreamRepo,
        /// The tag.
        tag: Tag,
        /// The kind of answer.
        kind: ManifestKind,
    },
    /// The last referrers list of a manifest the index remembers.
    Referrers {
        /// The repository, on its upstream.
        repo: UpstreamRepo,
        /// The manifest whose referrers they are.
        subject: Digest,
    },
}

/// An entry as the tree holds it: names as strings, parsed into [`Pending`] when read back.
#[derive(Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
enum Record {
    Blob { digest: Digest, size: u64 },
    Manifest { digest: Digest },
    Tag { upstream: String, repo: String, tag: String, kind: ManifestKind },
    Referrers { upstream: String, repo: String, subject: Digest },
}

impl Pending {
    /// The entry's bytes in the tree.
    fn record(&self) -> Vec<u8> {
        let record = match self.clone() {
            Pending::Blob { digest, size } => Record::Blob { digest, size },
            Pending::Manifest { digest } => Record::Manifest { digest },
            Pending::Tag { repo, tag, kind } => Record::Tag { upstream: repo.upstream.to_string(), repo: repo.name.to_string(), tag: tag.to_string(), kind },
            Pending::Referrers { repo, subject } => Record::Referrers { upstream: repo.upstream.to_string(), repo: repo.name.to_string(), subject },
        };
        // Serialising strings, digests and integers cannot fail.
        serde_json::to_vec(&record).unwrap_or_default()
    }

    /// The entry read back from the tree, if it is one (valid names and digests); what is wrong
    /// with it otherwise.
    fn parse(bytes: &[u8]) -> Result<Pending, String> {
        let record: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let repo = |u: String, r: String| {
            if !valid_upstream(&u) {
                return Err(format!("not an upstream name: {u:?}"));
            }
            let name = r.parse::<RepositoryName>().map_err(|_| format!("not a repository name: {r:?}"))?;
            Ok(UpstreamRepo { upstream: RegistryHost::new(&u), name })
        };
        Ok(match record {
            Record::Blob { digest, size } => Pending::Blob { digest, size },
            Record::Manifest { digest } => Pending::Manifest { digest },
            Record::Tag { upstream: u, repo: r, tag, kind } => Pending::Tag {
                repo: repo(u, r)?,
                tag: tag.parse().map_err(|_| format!("not a tag: {tag:?}"))?,
                kind,
            },
            Record::Referrers { upstream: u, repo: r, subject } => Pending::Referrers { repo: repo(u, r)?, subject },
        })
    }

    /// The key of the entry's identity: what it is, without what may change (a blob's size is its
    /// digest's).
    fn identity(&self) -> Vec<u8> {
        // NUL appears in none of the parts, so the key is unambiguous.
        let id = match self {
            Pending::Blob { digest, .. } => format!("blob\0{digest}"),
            Pending::Manifest { digest } => format!("manifest\0{digest}"),
            Pending::Tag { repo, tag, kind } => format!("tag\0{}\0{}\0{tag}\0{}", repo.upstream, repo.name, kind.as_str()),
            Pending::Referrers { repo, subject } => format!("referrers\0{}\0{}\0{subject}", repo.upstream, repo.name),
        };
        [&[QUEUED][..], id.as_bytes()].concat()
    }
}

/// Whether `name` can be an upstream's name, as the configuration accepts them (a registry host:
/// no `/`, no white space) and short enough.
fn valid_upstream(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_UPSTREAM && name.chars().all(|c| c.is_ascii_graphic() && c != '/')
}

/// An entry's place in the backlog: later entries have larger numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seq(u64);

fn queue_key(seq: u64) -> [u8; 9] {
    let mut key = [QUEUE; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number of a `q` key, if it is one.
fn seq_of_key(key: &[u8]) -> Option<u64> {
    match key {
        [QUEUE, rest @ ..] => <[u8; 8]>::try_from(rest).ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// The sequence number a `k` entry holds, if it is one.
fn seq_of_value(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

/// The count of the entries in `tree` and the next sequence number; entries that don't parse, and
/// identities whose entry is gone, are removed.
fn count(tree: &sled::Tree) -> sled::Result<Counters> {
    let (mut len, mut next, mut dropped) = (0u64, 0u64, 0u64);
    let mut batch = sled::Batch::default();
    for kv in tree.scan_prefix([QUEUE]) {
        let (key, value) = kv?;
        match (seq_of_key(&key), Pending::parse(&value)) {
            (Some(seq), Ok(_)) => {
                len += 1;
                next = seq.saturating_add(1);
            }
            (_, parsed) => {
                let why = parsed.err().unwrap_or_else(|| "a key that is not a sequence number".into());
                tracing::warn!(error = %why, "an unreadable entry of the bucket's backlog; dropped");
                batch.remove(key);
                dropped += 1;
            }
        }
    }
    for kv in tree.scan_prefix([QUEUED]) {
        let (key, value) = kv?;
        let live = match seq_of_value(&value) {
            Some(seq) => tree.get(queue_key(seq))?.is_some_and(|v| Pending::parse(&v).is_ok_and(|p| p.identity() == *key)),
            None => false,
        };
        if !live {
            batch.remove(key);
        }
    }
    tree.apply_batch(batch)?;
    if dropped > 0 {
        tracing::warn!(dropped, "unreadable entries of the bucket's backlog were dropped; their content won't reach the bucket from this node");
    }
    Ok(Counters { next, len })
}

/// What [`Backlog::push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// It was queued already (it keeps its place).
    Already,
    /// Queued; the backlog was full, and its oldest entry was dropped.
    DroppedOldest,
}

/// The backlog: a handle on the index's `backlog` tree.
#[derive(Clone)]
pub struct Backlog {
    tree: Slot<sled::Tree>,
    state: Arc<State>,
}

struct State {
    // A std Mutex: held while one push or removal reads and writes the tree (sled calls, no
    // await), so that the count, the next sequence number and an entry's two keys stay in step.
    counters: Mutex<Counters>,
    cap: u64,
    /// `bucket_backlog`, once given ([`Backlog::count_in`]): set by every change of the count.
    gauge: OnceLock<Gauge>,
}

impl State {
    /// `counters.len` changed (the lock held): show it.
    fn counted(&self, counters: &Counters) {
        if let Some(gauge) = self.gauge.get() {
            gauge.set(i64::try_from(counters.len).unwrap_or(i64::MAX));
        }
    }
}

struct Counters {
    /// The sequence number of the next entry.
    next: u64,
    /// How many entries there are.
    len: u64,
}

impl Backlog {
    /// The backlog in `tree`, its count taken afresh; entries that don't parse, and identities
    /// whose entry is gone, are removed.
    pub(in crate::store) fn open(tree: Slot<sled::Tree>) -> sled::Result<Backlog> {
        Backlog::with_cap(tree, MAX_ENTRIES)
    }

    fn with_cap(tree: Slot<sled::Tree>, cap: u64) -> sled::Result<Backlog> {
        let counters = count(&tree.get()?)?;
        Ok(Backlog { tree, state: Arc::new(State { counters: Mutex::new(counters), cap, gauge: OnceLock::new() }) })
    }

    /// Let go of the tree: the index is being opened again ([`crate::store::Index::reopen`]).
    pub(in crate::store) fn close(&self) -> Option<sled::Tree> {
        self.tree.take()
    }

    /// Take up `tree`, the tree of the index opened again, its count taken afresh.
    pub(in crate::store) fn reopen(&self, tree: sled::Tree) -> sled::Result<()> {
        let mut counters = lock(&self.state.counters);
        *counters = count(&tree)?;
        self.state.counted(&counters);
        self.tree.put(tree);
        Ok(())
    }

    /// Keep `gauge` at the number of entries waiting from now on (the server's `bucket_backlog`).
    /// Once; a second gauge is ignored.
    pub fn count_in(&self, gauge: Gauge) {
        let counters = lock(&self.state.counters);
        if self.state.gauge.set(gauge).is_ok() {
            self.state.counted(&counters);
        }
    }

    /// How many entries wait.
    pub fn len(&self) -> u64 {
        lock(&self.state.counters).len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue `pending` behind everything queued, unless it is queued already; when the backlog is
    /// full, the oldest entry makes room.
    pub fn push(&self, pending: &Pending) -> sled::Result<Pushed> {
        let tree = self.tree.get_for_write()?;
        let identity = pending.identity();
        let mut counters = lock(&self.state.counters);
        if let Some(seq) = tree.get(&identity)?.as_deref().and_then(seq_of_value) {
            if tree.contains_key(queue_key(seq))? {
                return Ok(Pushed::Already);
            }
        }
        let mut batch = sled::Batch::default();
        let mut pushed = Pushed::Queued;
        if counters.len >= self.state.cap {
            if let Some((key, value)) = tree.scan_prefix([QUEUE]).next().transpose()? {
                if let Ok(oldest) = Pending::parse(&value) {
                    batch.remove(oldest.identity());
                }
                batch.remove(key);
                pushed = Pushed::DroppedOldest;
            }
        }
        // u64 sequence numbers don't run out (one a nanosecond would last five centuries).
        let seq = counters.next;
        batch.insert(&queue_key(seq), pending.record());
        batch.insert(identity, &seq.to_be_bytes());
        tree.apply_batch(batch)?;
        counters.next = seq.saturating_add(1);
        if pushed == Pushed::Queued {
            counters.len += 1;
            self.state.counted(&counters);
        }
        Ok(pushed)
    }

    /// The oldest entry after `after` (the oldest of all with `None`). Entries that don't parse
    /// are removed on the way.
    pub fn next_after(&self, after: Option<Seq>) -> sled::Result<Option<(Seq, Pending)>> {
        let tree = self.tree.get()?;
        let start = match after {
            None => queue_key(0),
            Some(Seq(seq)) => match seq.checked_add(1) {
                Some(next) => queue_key(next),
                None => return Ok(None),
            },
        };
        for kv in tree.range(&start[..]..&[QUEUE + 1][..]) {
            let (key, value) = kv?;
            match (seq_of_key(&key), Pending::parse(&value)) {
                (Some(seq), Ok(pending)) => return Ok(Some((Seq(seq), pending))),
                (_, parsed) => {
                    let why = parsed.err().unwrap_or_else(|| "a key that is not a sequence number".into());
                    tracing::warn!(error = %why, "an unreadable entry of the bucket's backlog; dropped");
                    let mut counters = lock(&self.state.counters);
                    if tree.remove(&key)?.is_some() {
                        counters.len = counters.len.saturating_sub(1);
                        self.state.counted(&counters);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Remove the entry `seq` (`pending`, as [`Backlog::next_after`] gave it): done, or no longer
    /// to be done. Gone already is fine.
    pub fn remove(&self, seq: Seq, pending: &Pending) -> sled::Result<()> {
        let tree = self.tree.get_for_write()?;
        let mut counters = lock(&self.state.counters);
        let key = queue_key(seq.0);
        if !tree.contains_key(key)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        batch.remove(&key);
        let identity = pending.identity();
        if tree.get(&identity)?.as_deref().and_then(seq_of_value) == Some(seq.0) {
            batch.remove(identity);
        }
        tree.apply_batch(batch)?;
        counters.len = counters.len.saturating_sub(1);
        self.state.counted(&counters);
        Ok(())
    }
}

/// How a pass over the backlog ended.
#[derive(Debug)]
pub(in crate::store) enum Drained {
    /// The store is gone: the server stopped.
    Gone,
    /// Everything it could do is done: wait until something is added or the bucket is marked up.
    Idle,
    /// The bucket is down: try again at this time (or when it is marked up sooner).
    DownUntil(std::time::Instant),
}

/// Upload what the backlog holds, oldest first, while the bucket answers: each entry takes one of
/// the uploads' permits (so backlog and fills share their concurrency) and is removed once it is
/// done or can't be done (its content gone, unreadable or corrupt); it stays when the bucket
/// failed, which marks it down and ends the pass. While the bucket is marked down but may be
/// tried again, the first entry goes alone, as the probe. The store is held only while an entry is
/// handled, so a stopped server's store goes.
pub(in crate::store) async fn drain(store: &Weak<Store>) -> Drained {
    let Some(permits) = store.upgrade().and_then(|s| s.shared.as_ref().map(|shared| shared.upload_permits())) else {
        return Drained::Gone;
    };
    let mut running = tokio::task::JoinSet::new();
    let mut cursor = None;
    let ended = loop {
        while running.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else { break Drained::Gone };
        let Some((store, shared)) = store.upgrade().and_then(|s| s.shared.clone().map(|shared| (s, shared))) else { break Drained::Gone };
        if let Some(at) = shared.retry_at() {
            break Drained::DownUntil(at);
        }
        let next = match shared.backlog().next_after(cursor) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "reading the bucket's backlog failed");
                break Drained::Idle;
            }
        };
        let Some((seq, pending)) = next else { break Drained::Idle };
        cursor = Some(seq);
        let probe = shared.is_down();
        let one = async move {
            let _permit = permit;
            publish(&store, &shared, seq, &pending).await;
        };
        if probe {
            one.await;
        } else {
            running.spawn(one);
        }
    };
    while running.join_next().await.is_some() {}
    match ended {
        // An entry that ran meanwhile may have found the bucket down.
        Drained::Idle => match store.upgrade().and_then(|s| s.shared.as_ref().and_then(|shared| shared.retry_at())) {
            Some(at) => Drained::DownUntil(at),
            None => Drained::Idle,
        },
        other => other,
    }
}

/// Give the bucket one backlogged thing, read from this node's copy now; remove the entry unless
/// the bucket failed.
async fn publish(store: &Store, shared: &Shared, seq: Seq, pending: &Pending) {
    let done = match pending {
        Pending::Blob { digest, size } => match store.blobs.open(digest, 0..*size).await {
            Ok(Some(opened)) if opened.size == *size => shared.upload_stored(digest, *size, opened.reader).await,
            Ok(_) => Err(gone(pending)),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "reading a backlogged blob from the hot tier failed; it won't reach the bucket from this node");
                Err(NotDone::Unusable)
            }
        },
        Pending::Manifest { digest } => match store.index.manifest(digest) {
            Ok(Some(m)) => shared.write_manifest(digest, &m).await,
            Ok(None) => Err(gone(pending)),
            Err(e) => Err(unreadable(pending, &e)),
        },
        Pending::Tag { repo, tag, kind } => match store.index.tag(repo, tag) {
            Ok(entry) => match entry.and_then(|e| e.answer(*kind).cloned()) {
                Some(answer) => shared.write_tag(repo, tag, *kind, &answer).await,
                None => Err(gone(pending)),
            },
            Err(e) => Err(unreadable(pending, &e)),
        },
        Pending::Referrers { repo, subject } => match store.index.referrers(repo, subject) {
            Ok(Some(body)) => shared.write_referrers(repo, subject, body).await,
            Ok(None) => Err(gone(pending)),
            Err(e) => Err(unreadable(pending, &e)),
        },
    };
    if let Err(NotDone::Failed) = done {
        return;
    }
    if let Err(e) = shared.backlog().remove(seq, pending) {
        tracing::error!(error = %e, "removing an entry from the bucket's backlog failed");
    }
}

/// This node no longer keeps what `pending` names (evicted since): nothing to upload.
fn gone(pending: &Pending) -> NotDone {
    tracing::debug!(?pending, "a backlogged item is no longer kept here; dropped from the backlog");
    NotDone::Unusable
}

fn unreadable(pending: &Pending, e: &sled::Error) -> NotDone {
    tracing::error!(?pending, error = %e, "reading a backlogged item from the index failed; dropped from the backlog");
    NotDone::Unusable
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::metrics::Metrics;
    use crate::store::{BlobBackend, LocalBlobs, Records, StoredManifest, TagAnswer};

    fn tree() -> (tempfile::TempDir, sled::Db, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("index")).open().unwrap();
        let tree = db.open_tree("backlog").unwrap();
        (dir, db, tree)
    }

    fn blob(n: u8) -> Pending {
        Pending::Blob { digest: Digest::sha256_of(&[n]), size: u64::from(n) }
    }

    fn tag(t: &str) -> Pending {
        Pending::Tag { repo: UpstreamRepo::of("docker.io", "library/alpine"), tag: t.parse().unwrap(), kind: ManifestKind::Index }
    }

    /// Everything queued, oldest first.
    fn all(b: &Backlog) -> Vec<Pending> {
        let (mut out, mut cursor) = (Vec::new(), None);
        while let Some((seq, p)) = b.next_after(cursor).unwrap() {
            out.push(p);
            cursor = Some(seq);
        }
        out
    }

    #[test]
    fn entries_come_back_oldest_first_once_each_and_after_a_reopen() {
        let (_dir, _db, tree) = tree();
        let b = Backlog::open(Slot::new(tree.clone())).unwrap();
        let subject = Digest::sha256_of(b"subject");
        let referrers = Pending::Referrers { repo: UpstreamRepo::of("ghcr.io", "org/app"), subject };
        let manifest = Pending::Manifest { digest: Digest::sha256_of(b"manifest") };
        // More than 256 entries: the order is the sequence's, not the bytes' of a little-endian key.
        let many: Vec<Pending> = (0..=255).map(blob).chain([tag("3"), manifest.clone(), referrers.clone()]).collect();
        for p in &many {
            assert_eq!(b.push(p).unwrap(), Pushed::Queued);
        }
        assert_eq!(b.push(&tag("3")).unwrap(), Pushed::Already, "a tag republished waits once");
        assert_eq!(b.push(&Pending::Blob { digest: Digest::sha256_of(&[7]), size: 99 }).unwrap(), Pushed::Already, "a blob by its digest");
        assert_eq!(b.len(), many.len() as u64);
        assert_eq!(all(&b), many);

        // Reopened (a restart): the same entries in the same order, and new ones go behind them.
        let b = Backlog::open(Slot::new(tree.clone())).unwrap();
        assert_eq!(b.len(), many.len() as u64);
        assert_eq!(all(&b), many);
        let (seq, first) = b.next_after(None).unwrap().unwrap();
        b.remove(seq, &first).unwrap();
        b.remove(seq, &first).unwrap();
        assert_eq!(b.len(), many.len() as u64 - 1, "removed once");
        assert_eq!(b.push(&first).unwrap(), Pushed::Queued, "a removed entry may be queued again");
        let mut want = many[1..].to_vec();
        want.push(first);
        assert_eq!(all(&b), want, "behind everything queued before");
        assert_eq!(Backlog::open(Slot::new(tree)).unwrap().len(), many.len() as u64);
    }

    #[test]
    fn a_full_backlog_drops_its_oldest_entry_for_a_new_one() {
        let (_dir, _db, tree) = tree();
        let b = Backlog::with_cap(Slot::new(tree.clone()), 3).unwrap();
        let gauge = Gauge::default();
        for n in 0..3 {
            assert_eq!(b.push(&blob(n)).unwrap(), Pushed::Queued);
            if n == 0 {
                b.count_in(gauge.clone());
            }
        }
        assert_eq!(b.push(&blob(3)).unwrap(), Pushed::DroppedOldest);
        assert_eq!(b.push(&blob(2)).unwrap(), Pushed::Already, "nothing dropped for what waits already");
        assert_eq!((b.len(), gauge.get()), (3, 3), "the gauge counts what waited before it was given, and follows");
        assert_eq!(all(&b), [blob(1), blob(2), blob(3)]);
        assert_eq!(b.push(&blob(0)).unwrap(), Pushed::DroppedOldest, "the dropped entry's identity went with it");
        assert_eq!(all(&b), [blob(2), blob(3), blob(0)]);
        assert_eq!(tree.scan_prefix([QUEUED]).count(), 3, "one identity per entry");
        let (seq, first) = b.next_after(None).unwrap().unwrap();
        b.remove(seq, &first).unwrap();
        b.remove(seq, &first).unwrap();
        assert_eq!(gauge.get(), 2, "removed once");
    }

    #[test]
    fn entries_that_do_not_parse_are_dropped() {
        let (_dir, _db, tree) = tree();
        let b = Backlog::open(Slot::new(tree.clone())).unwrap();
        b.push(&blob(1)).unwrap();
        let bad: [&[u8]; 7] = [
            b"not json",
            br#"{"what":"blob","digest":"md5:00","size":1}"#,
            br#"{"what":"blob","digest":"sha256:00","size":-1}"#,
            br#"{"what":"manifest"}"#,
            br#"{"what":"tag","upstream":"docker.io","repo":"../etc","tag":"3","kind":"index"}"#,
            br#"{"what":"tag","upstream":"a/b","repo":"library/alpine","tag":"3","kind":"index"}"#,
            br#"{"what":"referrers","upstream":"docker.io","repo":"library/alpine","subject":"sha256:zz"}"#,
        ];
        for (n, value) in bad.iter().enumerate() {
            tree.insert(queue_key(100 + n as u64), *value).unwrap();
        }
        tree.insert(b"q-short", &b"{}"[..]).unwrap();
        // An identity left without its entry doesn't keep the thing out.
        tree.insert(blob(2).identity(), &5000u64.to_be_bytes()).unwrap();
        let b = Backlog::open(Slot::new(tree.clone())).unwrap();
        assert_eq!(b.len(), 1, "only the good entry counts");
        assert_eq!(tree.scan_prefix([QUEUE]).count(), 1, "the others are removed at open");
        assert_eq!(b.push(&blob(2)).unwrap(), Pushed::Queued);
        // One that turns up later is dropped when the drain reaches it.
        tree.insert(queue_key(150), &b"{\"what\":\"nothing\"}"[..]).unwrap();
        assert_eq!(all(&b), [blob(1), blob(2)]);
        assert_eq!(tree.scan_prefix([QUEUE]).count(), 2);
        let p = tag("v1.0");
        assert_eq!(Pending::parse(&p.record()).unwrap(), p);
    }

    /// A node's store on a bucket that is a second local directory.
    fn node() -> (tempfile::TempDir, Arc<Store>, Arc<LocalBlobs>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("node")).unwrap();
        let bucket = Arc::new(LocalBlobs::at(&dir.path().join("bucket")).unwrap());
        let shared = Shared::new(bucket.clone(), store.index.shared_sizes(), store.index.backlog().clone(), Metrics::new().bucket());
        store.shared = Some(Arc::new(shared));
        (dir, Arc::new(store), bucket)
    }

    /// Store `bytes` in the hot tier under `digest` (whatever their digest is), indexed.
    async fn keep(store: &Store, digest: &Digest, bytes: &[u8]) {
        let mut w = store.blobs.begin(digest, Some(bytes.len() as u64)).await.unwrap();
        w.append(&[Bytes::copy_from_slice(bytes)]).await.unwrap();
        w.commit().await.unwrap();
        store.index.put_blob(digest, bytes.len() as u64).unwrap();
    }

    fn answer(digest: &Digest, checked_at: u64) -> TagAnswer {
        TagAnswer { digest: digest.clone(), checked_at, published_at: None }
    }

    #[tokio::test]
    async fn a_drain_uploads_what_is_still_kept_and_drops_what_is_not() {
        let (_dir, store, bucket) = node();
        let backlog = store.index.backlog().clone();
        let kept = b"kept in the hot tier".to_vec();
        let kept_digest = Digest::sha256_of(&kept);
        keep(&store, &kept_digest, &kept).await;
        let evicted = Digest::sha256_of(b"evicted since");
        // The same size as the blob it claims to be, other bytes.
        let rotten = Digest::sha256_of(b"rotten on disk");
        keep(&store, &rotten, b"rotten on dusk").await;
        let manifest = Digest::sha256_of(b"a manifest");
        let m = StoredManifest { media_type: "application/vnd.oci.image.manifest.v1+json".into(), bytes: Bytes::from_static(b"{}") };
        store.index.put_manifest(&manifest, &m).unwrap();
        let repo = UpstreamRepo::of("docker.io", "library/alpine");
        let (older, newer): (Tag, Tag) = ("older".parse().unwrap(), "newer".parse().unwrap());
        for (tag, ours) in [(&older, 100), (&newer, 100)] {
            store.index.put_tag(&repo, tag, ManifestKind::Image, &answer(&manifest, ours)).unwrap();
        }
        // Another node wrote `newer` later than this one learnt it, and `older` before.
        let theirs = Digest::sha256_of(b"their manifest");
        for (tag, at) in [(&older, 50), (&newer, 200)] {
            let key = format!("tags/docker.io/library/alpine/{tag}/image");
            bucket.put(&key, serde_json::to_vec(&answer(&theirs, at)).unwrap().into()).await.unwrap();
        }
        store.index.put_referrers(&repo, &manifest, b"{\"manifests\":[]}").unwrap();
        let tag = |t: &Tag| Pending::Tag { repo: repo.clone(), tag: t.clone(), kind: ManifestKind::Image };
        for p in [
            Pending::Blob { digest: kept_digest.clone(), size: kept.len() as u64 },
            Pending::Blob { digest: evicted.clone(), size: 13 },
            Pending::Blob { digest: rotten.clone(), size: 14 },
            Pending::Manifest { digest: manifest.clone() },
            Pending::Manifest { digest: Digest::sha256_of(b"evicted manifest") },
            tag(&older),
            tag(&newer),
            tag(&"forgotten".parse().unwrap()),
            Pending::Referrers { repo: repo.clone(), subject: manifest.clone() },
        ] {
            assert_eq!(backlog.push(&p).unwrap(), Pushed::Queued);
        }

        assert!(matches!(drain(&Arc::downgrade(&store)).await, Drained::Idle));
        assert!(backlog.is_empty(), "{:?}", all(&backlog));
        assert_eq!(bucket.stat(&kept_digest).await.unwrap(), Some(kept.len() as u64));
        assert_eq!(store.index.shared_sizes().get(&kept_digest).unwrap(), Some(kept.len() as u64), "remembered");
        assert_eq!(bucket.stat(&evicted).await.unwrap(), None);
        assert_eq!(bucket.stat(&rotten).await.unwrap(), None, "a copy that is not the blob any more is not uploaded");
        let record = bucket.get(&format!("manifests/sha256/{}", manifest.hex()), 1 << 20).await.unwrap().unwrap();
        assert_eq!(&record[..], b"application/vnd.oci.image.manifest.v1+json\0{}");
        let tag_in_bucket = |t: &'static str| {
            let bucket = bucket.clone();
            async move {
                let r = bucket.get(&format!("tags/docker.io/library/alpine/{t}/image"), 4096).await.unwrap().unwrap();
                serde_json::from_slice::<TagAnswer>(&r).unwrap()
            }
        };
        assert_eq!(tag_in_bucket("older").await, answer(&manifest, 100), "ours is newer than the bucket's");
        assert_eq!(tag_in_bucket("newer").await, answer(&theirs, 200), "the bucket's is newer: kept");
        assert_eq!(bucket.list_records("tags/docker.io/library/alpine/forgotten").await.unwrap(), Vec::<String>::new());
        assert!(bucket.get(&format!("referrers/docker.io/library/alpine/sha256/{}", manifest.hex()), 4096).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_bucket_that_fails_keeps_the_backlog_and_is_left_alone_until_its_retry_time() {
        let (dir, store, bucket) = node();
        let backlog = store.index.backlog().clone();
        let bytes = b"waits for the bucket".to_vec();
        let digest = Digest::sha256_of(&bytes);
        keep(&store, &digest, &bytes).await;
        backlog.push(&Pending::Blob { digest: digest.clone(), size: bytes.len() as u64 }).unwrap();
        // The bucket can't begin a write: a file stands where its temporary directory should be.
        let tmp = dir.path().join("bucket/tmp");
        std::fs::remove_dir_all(&tmp).unwrap();
        std::fs::write(&tmp, b"in the way").unwrap();
        let before = std::time::Instant::now();
        match drain(&Arc::downgrade(&store)).await {
            Drained::DownUntil(at) => assert!(at >= before + crate::store::RETRY, "{at:?}"),
            other => panic!("the bucket failed: {other:?}"),
        }
        assert_eq!(all(&backlog), [Pending::Blob { digest: digest.clone(), size: bytes.len() as u64 }], "kept");
        assert_eq!(bucket.stat(&digest).await.unwrap(), None);
        // Marked down: another pass asks the bucket nothing and says when to come back.
        std::fs::remove_file(&tmp).unwrap();
        std::fs::create_dir(&tmp).unwrap();
        assert!(matches!(drain(&Arc::downgrade(&store)).await, Drained::DownUntil(_)));
        assert_eq!(bucket.stat(&digest).await.unwrap(), None, "not tried within the retry time");
        assert_eq!(backlog.len(), 1);
        // The store gone (the server stopped), the drain ends.
        let weak = Arc::downgrade(&store);
        drop(store);
        assert!(matches!(drain(&weak).await, Drained::Gone));
    }
}
