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
mod tests;
