//! `bucket_max_size`: least-recently-used eviction in the bucket, across every node's accesses.
//!
//! # Who saw what
//! Each node notes in memory when it served a blob (a hot-tier hit, or a read from the bucket),
//! and every [`SUMMARY_INTERVAL`] publishes what it noted since its last summary as records
//! (`Summary`). It also writes a heartbeat, `nodes/<node-id>`, at the same time.
//!
//! # Record layouts (keys under the bucket's prefix)
//! - `nodes/<node-id>`: JSON `{"at": <unix ms>}`, the node's last heartbeat.
//! - `access/<node-id>/<unix ms, 13 digits>-<n>`: one summary, `n` counting from 0 when a node has
//!   more than [`MAX_SUMMARY_ENTRIES`] accesses to publish at once (it writes several records,
//!   dropping nothing). A compacted summary, written by the evictor, is named
//!   `access/<node-id>/<unix ms>-c<n>`. The body is text, one line per blob:
//!   `<algorithm>:<hex> <unix ms>\n` (the last access), at most [`MAX_SUMMARY_ENTRIES`] lines.
//!
//! The node id is 16 random hex digits generated once and kept in `<data_dir>/node-id`
//! ([`node_id`]).
//!
//! # Who evicts
//! The evictor is the live node (heartbeat within [`LIVE_WITHIN`]) with the smallest id. No
//! compare-and-swap is needed because eviction is safe to run twice: two nodes that briefly both
//! think they are the evictor (a heartbeat just expired, clocks apart) list the same bucket, merge
//! the same summaries and delete the same least-recently-used blobs (deleting an absent one is
//! fine); each writes a compacted summary, and the duplicates are merged at the next round. The
//! worst case is eviction going somewhat further below the low-water mark. Neither ever deletes a
//! blob accessed (or written) within [`PROTECTED`]. Clocks are assumed roughly in sync (NTP).
//!
//! # An eviction round ([`evict_bucket`])
//! List `blobs/` (the total, and each blob's last-modified time as the floor of its last access),
//! merge every summary under `access/` (the latest access wins), and, over `bucket_max_size`,
//! delete least-recently-used blobs down to [`LOW_WATER`] of it, skipping anything accessed
//! within [`PROTECTED`]. Then write one compacted summary (the accesses newer than their blob's
//! last-modified time, of blobs still there) and remove the summaries consumed. Memory: one map
//! entry per blob in the bucket (and the listing it is built from); summaries are read one at a
//! time.
//!
//! Only blobs count towards `bucket_max_size`: records (manifests, tags, referrers, summaries)
//! are small and stay. A node that doesn't set `bucket_max_size` publishes no summaries, so every
//! node on a bucket should set the same value.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::store::backend::SharedBackend;
use crate::store::records::{folder, is_node_id, RecordKey};
use crate::store::LOW_WATER;
use crate::oci::Digest;

/// How often a node publishes its access summary and heartbeat.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// How often the evictor runs a round (in summary intervals: every fifth).
pub const EVICT_EVERY: u32 = 5;
/// A node whose heartbeat is older than this is not live (it can't be the evictor).
pub const LIVE_WITHIN: Duration = Duration::from_secs(3 * 60);
/// A blob accessed or written within this long is never evicted from the bucket. Well above
/// [`SUMMARY_INTERVAL`], so an access is published before its blob could become a candidate.
pub const PROTECTED: Duration = Duration::from_secs(10 * 60);
/// The most entries in one summary record.
pub const MAX_SUMMARY_ENTRIES: usize = 10_000;
/// The most accesses a node keeps in memory between summaries; past it, a summary is published
/// early, and while the bucket can't take it, new blobs' accesses are not noted (they keep their
/// older time: their last-modified time or an earlier summary).
pub const MAX_PENDING: usize = 100_000;
/// A heartbeat older than this is removed by the evictor (the node is gone).
const FORGET_NODE: Duration = Duration::from_secs(24 * 3600);
/// The largest summary record read: [`MAX_SUMMARY_ENTRIES`] lines of a sha512 digest and a time.
const MAX_SUMMARY_RECORD: usize = MAX_SUMMARY_ENTRIES * 160;
/// The largest heartbeat record read.
const MAX_HEARTBEAT: usize = 256;

/// Unix milliseconds, with an offset tests can move (node clocks without sleeping).
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Unix milliseconds now, as this node sees it.
    pub fn now_ms(&self) -> u64 {
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        u64::try_from(real.saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }

    /// Move this clock forward (for tests).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

/// This node's id: read from `<data_dir>/node-id`, or generated (16 random hex digits) and written
/// there the first time.
pub fn node_id(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if is_node_id(id.trim()) => return Ok(id.trim().to_owned()),
        Ok(_) => tracing::warn!(path = %path.display(), "the node id file is not a node id; writing a new one"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("{:016x}", super::client::random_u64());
    let tmp = data_dir.join("node-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// The key of `node`'s heartbeat.
pub fn heartbeat_key(node: &str) -> String {
    RecordKey::Node(node.to_owned()).to_string()
}

/// The heartbeat record's body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    at: u64,
}

/// A heartbeat saying `now`.
pub fn heartbeat(now: u64) -> Bytes {
    // Serialising one integer cannot fail.
    serde_json::to_vec(&Heartbeat { at: now }).unwrap_or_default().into()
}

/// Accesses to publish, as summary records: `(key, body)`, at most [`MAX_SUMMARY_ENTRIES`] each.
/// `compacted` names them as the evictor's compacted summary.
pub fn summaries(node: &str, now: u64, compacted: bool, accesses: &[(Digest, u64)]) -> Vec<(String, Bytes)> {
    let tag = if compacted { "c" } else { "" };
    accesses
        .chunks(MAX_SUMMARY_ENTRIES)
        .enumerate()
        .map(|(n, chunk)| {
            let mut body = String::with_capacity(chunk.len() * 86);
            for (digest, at) in chunk {
                body.push_str(&format!("{digest} {at}\n"));
            }
            let key = RecordKey::Access { node: node.to_owned(), name: format!("{now:013}-{tag}{n}") };
            (key.to_string(), Bytes::from(body))
        })
        .collect()
}

/// The accesses of a summary record; lines that don't read are skipped.
pub fn parse_summary(body: &[u8]) -> impl Iterator<Item = (Digest, u64)> + '_ {
    body.split(|b| *b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (digest, at) = line.split_once(' ')?;
        // Only the time as written (digits, no leading zero, no sign): the fuzzer found
        // `0100007000001` read as another line's time.
        let written = at.bytes().all(|b| b.is_ascii_digit()) && (at == "0" || !at.starts_with('0'));
        Some((digest.parse().ok()?, written.then(|| at.parse().ok())??))
    })
}

/// Whether a summary key names a compacted summary.
fn is_compacted(key: &str) -> bool {
    key.rsplit('/').next().is_some_and(|name| name.split_once('-').is_some_and(|(_, n)| n.starts_with('c')))
}

/// A blob in the bucket as the evictor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUse {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its last access (unix ms): the latest of its last-modified time and every summary's.
    pub last_access: u64,
}

/// What an eviction round is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Evict only if the bucket's blobs pass this many bytes…
    pub max: u64,
    /// …and then down to this many.
    pub target: u64,
    /// Never evict a blob accessed (or written) at most this long ago: [`PROTECTED`] for the
    /// nodes; `regcache gc --protect-recent` may say otherwise.
    pub protected: Duration,
}

impl Limits {
    /// The nodes' limits under `bucket_max_size`: down to the low-water mark, [`PROTECTED`].
    pub fn nodes(bucket_max_size: u64) -> Limits {
        Limits { max: bucket_max_size, target: low_water(bucket_max_size), protected: PROTECTED }
    }
}

/// Which blobs to evict: least recently used first, until `total` is at most `limits.target`;
/// none if `total` is at most `limits.max`; never one accessed at most `limits.protected` before
/// `now`.
pub fn choose(mut blobs: Vec<BlobUse>, total: u64, limits: Limits, now: u64) -> Vec<BlobUse> {
    let Limits { max, target, protected } = limits;
    if total <= max {
        return Vec::new();
    }
    let protected_after = now.saturating_sub(protected.as_millis() as u64);
    blobs.sort_by_key(|b| b.last_access);
    let mut left = total;
    let mut out = Vec::new();
    for b in blobs {
        if left <= target || b.last_access >= protected_after {
            // Sorted by access: everything after this one is protected too.
            break;
        }
        left = left.saturating_sub(b.size);
        out.push(b);
    }
    out
}

/// What an eviction round did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BucketEviction {
    /// Blobs in the bucket when it was listed.
    pub blobs: usize,
    /// Their bytes (every object under `blobs/`).
    pub bytes_before: u64,
    /// The blobs evicted, least recently used first.
    pub evicted: Vec<BlobUse>,
    /// Summary records merged (and, unless dry, removed).
    pub summaries: usize,
}

impl BucketEviction {
    /// The bytes evicted.
    pub fn bytes_evicted(&self) -> u64 {
        self.evicted.iter().fold(0, |sum, b| sum.saturating_add(b.size))
    }
}

/// One eviction round on `bucket` (see the module's documentation): evict as `limits` say,
/// compact the summaries under `writer`'s name. `removed` is told of each
/// blob deleted. With `dry_run`, only say what would go: nothing is deleted or written.
pub async fn evict_bucket(
    bucket: &dyn SharedBackend,
    writer: &str,
    now: u64,
    limits: Limits,
    dry_run: bool,
    mut removed: impl FnMut(&BlobUse),
) -> io::Result<BucketEviction> {
    // Digest → (size, last-modified, last access). One entry per blob in the bucket.
    let mut seen: HashMap<Digest, (u64, u64, u64)> = HashMap::new();
    let mut bytes_before = 0;
    for listed in bucket.list().await? {
        // Sizes come from the bucket's listing: summed without overflow.
        bytes_before = u64::saturating_add(bytes_before, listed.size);
        if let Some(digest) = listed.digest {
            let modified = listed.modified.unwrap_or(0);
            seen.insert(digest, (listed.size, modified, modified));
        }
    }
    let keys = bucket.list_records(folder::ACCESS).await?;
    let mut consumed = Vec::with_capacity(keys.len());
    for key in keys {
        let body = match bucket.get(&key, MAX_SUMMARY_RECORD).await {
            Ok(Some(body)) => body,
            // Consumed by another evictor meanwhile.
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(key, error = %e, "an access summary can't be read; dropping it");
                consumed.push(key);
                continue;
            }
            Err(e) => return Err(e),
        };
        for (digest, at) in parse_summary(&body) {
            if let Some(entry) = seen.get_mut(&digest) {
                // A time in the future (another node's clock, a corrupt record) counts as now:
                // it must not protect a blob forever.
                entry.2 = entry.2.max(at.min(now));
            }
        }
        consumed.push(key);
    }
    let blobs: Vec<BlobUse> =
        seen.iter().map(|(d, (size, _, last))| BlobUse { digest: d.clone(), size: *size, last_access: *last }).collect();
    let count = blobs.len();
    let evicted = choose(blobs, bytes_before, limits, now);
    let report = BucketEviction { blobs: count, bytes_before, evicted, summaries: consumed.len() };
    if dry_run {
        return Ok(report);
    }
    for b in &report.evicted {
        bucket.remove(&b.digest).await?;
        seen.remove(&b.digest);
        removed(b);
    }
    let fresh = consumed.iter().any(|k| !is_compacted(k));
    if fresh || !report.evicted.is_empty() {
        let mut accesses: Vec<(Digest, u64)> =
            seen.into_iter().filter(|(_, (_, modified, last))| last > modified).map(|(d, (_, _, last))| (d, last)).collect();
        accesses.sort_by_key(|(_, at)| *at);
        for (key, body) in summaries(writer, now, true, &accesses) {
            bucket.put(&key, body).await?;
        }
        for key in &consumed {
            bucket.remove_record(key).await?;
        }
    }
    Ok(report)
}

/// Whether `node` is the evictor now: the live node with the smallest id (by the heartbeats in
/// `bucket`). Removes heartbeats of nodes gone for a day.
pub async fn is_evictor(bucket: &dyn SharedBackend, node: &str, now: u64) -> io::Result<bool> {
    let live_after = now.saturating_sub(LIVE_WITHIN.as_millis() as u64);
    let forget_before = now.saturating_sub(FORGET_NODE.as_millis() as u64);
    let mut smallest_live: Option<String> = None;
    for key in bucket.list_records(folder::NODES).await? {
        // Not a heartbeat regcache writes: not a node's.
        let Ok(RecordKey::Node(id)) = key.parse() else { continue };
        let id = id.as_str();
        let beat = match bucket.get(&key, MAX_HEARTBEAT).await {
            Ok(Some(body)) => serde_json::from_slice::<Heartbeat>(&body).ok(),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
            Err(e) => return Err(e),
        };
        // An unreadable heartbeat, or one from the future (beyond a clock's likely drift), would
        // keep a node that may be gone "live" and stop every node evicting: it goes.
        let Some(beat) = beat.filter(|b| b.at <= now.saturating_add(LIVE_WITHIN.as_millis() as u64)) else {
            if id != node {
                tracing::warn!(key, "an unusable heartbeat in the bucket; removing it");
                bucket.remove_record(&key).await?;
            }
            continue;
        };
        if beat.at < forget_before && id != node {
            bucket.remove_record(&key).await?;
            continue;
        }
        if (beat.at >= live_after || id == node) && smallest_live.as_deref().is_none_or(|s| id < s) {
            smallest_live = Some(id.to_owned());
        }
    }
    Ok(smallest_live.is_none_or(|s| s.as_str() >= node))
}

/// The low-water mark of `max`.
pub fn low_water(max: u64) -> u64 {
    (max as f64 * LOW_WATER) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    const MIN: u64 = 60_000;

    fn lim(max: u64, target: u64) -> Limits {
        Limits { max, target, protected: PROTECTED }
    }

    #[test]
    fn least_recently_used_go_first_down_to_the_target_and_recent_ones_stay() {
        let now = 1000 * MIN;
        // (blob, size, minutes ago)
        struct Case {
            name: &'static str,
            blobs: &'static [(u8, u64, u64)],
            max: u64,
            target: u64,
            evicted: &'static [u8],
        }
        let cases = [
            Case { name: "under the limit: nothing", blobs: &[(1, 100, 500), (2, 100, 400)], max: 200, target: 180, evicted: &[] },
            Case { name: "oldest first", blobs: &[(1, 100, 300), (2, 100, 500), (3, 100, 400)], max: 250, target: 225, evicted: &[2] },
            Case { name: "down to the target", blobs: &[(1, 100, 300), (2, 100, 500), (3, 100, 400)], max: 250, target: 100, evicted: &[2, 3] },
            Case {
                name: "recent ones stay, even over the limit",
                blobs: &[(1, 100, 9), (2, 100, 500), (3, 100, 0), (4, 100, 11)],
                max: 10,
                target: 9,
                evicted: &[2, 4],
            },
            Case { name: "all recent", blobs: &[(1, 100, 1), (2, 100, 2)], max: 10, target: 9, evicted: &[] },
            Case { name: "a big one clears it", blobs: &[(1, 1000, 100), (2, 10, 50), (3, 10, 40)], max: 1000, target: 900, evicted: &[1] },
            Case { name: "the boundary is protected", blobs: &[(1, 100, 10), (2, 100, 11)], max: 10, target: 9, evicted: &[2] },
        ];
        for c in cases {
            let blobs: Vec<BlobUse> =
                c.blobs.iter().map(|(n, size, ago)| BlobUse { digest: d(*n), size: *size, last_access: now - ago * MIN }).collect();
            let total = blobs.iter().map(|b| b.size).sum();
            let limits = Limits { max: c.max, target: c.target, protected: PROTECTED };
            let got: Vec<Digest> = choose(blobs, total, limits, now).into_iter().map(|b| b.digest).collect();
            let want: Vec<Digest> = c.evicted.iter().map(|n| d(*n)).collect();
            assert_eq!(got, want, "{}", c.name);
        }
        assert_eq!(low_water(1000), 900);
    }

    #[test]
    fn summaries_round_trip_in_bounded_records() {
        let accesses: Vec<(Digest, u64)> = (0..(MAX_SUMMARY_ENTRIES + 5) as u32)
            .map(|i| (Digest::sha256_of(&i.to_be_bytes()), u64::from(i)))
            .collect();
        let records = summaries("abc", 1_700_000_000_000, false, &accesses);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, "access/abc/1700000000000-0");
        assert_eq!(records[1].0, "access/abc/1700000000000-1");
        assert!(records[0].1.len() <= MAX_SUMMARY_RECORD);
        let back: Vec<(Digest, u64)> = records.iter().flat_map(|(_, b)| parse_summary(b).collect::<Vec<_>>()).collect();
        assert_eq!(back, accesses);
        let compacted = summaries("abc", 5, true, &accesses[..1]);
        assert_eq!(compacted[0].0, "access/abc/0000000000005-c0");
        assert!(is_compacted(&compacted[0].0) && !is_compacted(&records[0].0));
        let junk = b"not a line\nsha256:zz 5\n";
        assert_eq!(parse_summary(junk).count(), 0);
    }

    #[test]
    fn node_ids_are_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let id = node_id(dir.path()).unwrap();
        assert!(is_node_id(&id) && id.len() == 16, "{id}");
        assert_eq!(node_id(dir.path()).unwrap(), id, "generated once");
        std::fs::write(dir.path().join("node-id"), "../bad\n").unwrap();
        assert_ne!(node_id(dir.path()).unwrap(), "../bad");
    }

    #[tokio::test]
    async fn the_live_node_with_the_smallest_id_evicts() {
        use crate::store::backend::Records;
        let dir = tempfile::tempdir().unwrap();
        let bucket = crate::store::LocalBlobs::at(dir.path()).unwrap();
        let now = 10_000 * MIN;
        bucket.put(&heartbeat_key("b"), heartbeat(now)).await.unwrap();
        bucket.put(&heartbeat_key("c"), heartbeat(now - MIN)).await.unwrap();
        assert!(is_evictor(&bucket, "b", now).await.unwrap());
        assert!(!is_evictor(&bucket, "c", now).await.unwrap());
        bucket.put(&heartbeat_key("a"), heartbeat(now - 4 * MIN)).await.unwrap();
        assert!(is_evictor(&bucket, "b", now).await.unwrap(), "a is not live");
        bucket.put(&heartbeat_key("a"), heartbeat(now - 2 * MIN)).await.unwrap();
        assert!(!is_evictor(&bucket, "b", now).await.unwrap(), "a is live");
        bucket.put(&heartbeat_key("0"), heartbeat(now - 25 * 60 * MIN)).await.unwrap();
        assert!(!is_evictor(&bucket, "b", now).await.unwrap());
        assert!(bucket.get(&heartbeat_key("0"), 100).await.unwrap().is_none(), "a node gone for a day is forgotten");
        // Unusable heartbeats (too large, not JSON, from the far future) neither stop nor steer
        // the choice, and are removed.
        bucket.put(&heartbeat_key("a"), heartbeat(now - 4 * MIN)).await.unwrap();
        for (id, body) in [("1", Bytes::from(vec![b' '; 10_000])), ("2", Bytes::from_static(b"not json")), ("3", heartbeat(now + 60 * MIN))] {
            bucket.put(&heartbeat_key(id), body).await.unwrap();
            assert!(is_evictor(&bucket, "b", now).await.unwrap(), "heartbeat {id}");
            assert!(bucket.get(&heartbeat_key(id), 100_000).await.unwrap().is_none(), "heartbeat {id} removed");
        }
    }

    #[tokio::test]
    async fn a_round_merges_summaries_evicts_and_compacts() {
        use crate::store::backend::{BlobBackend, Records};
        let dir = tempfile::tempdir().unwrap();
        let bucket = crate::store::LocalBlobs::at(dir.path()).unwrap();
        let mut digests = Vec::new();
        for n in 0..3u8 {
            let bytes = vec![n; 100];
            let digest = Digest::sha256_of(&bytes);
            let mut w = bucket.begin(&digest, None).await.unwrap();
            w.append(&[Bytes::from(bytes)]).await.unwrap();
            w.commit().await.unwrap();
            digests.push(digest);
        }
        let (recent, older, oldest) = (digests[0].clone(), digests[1].clone(), digests[2].clone());
        // An hour after the blobs were written: `oldest` was never read since.
        let written = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let now = written + 60 * MIN;
        let gone = Digest::sha256_of(b"not in the bucket");
        for (key, body) in summaries("n1", now - 2 * MIN, false, &[(recent.clone(), now - MIN), (gone, now)]) {
            bucket.put(&key, body).await.unwrap();
        }
        for (key, body) in summaries("n2", now - 20 * MIN, false, &[(older.clone(), now - 30 * MIN), (recent.clone(), now - 50 * MIN)]) {
            bucket.put(&key, body).await.unwrap();
        }
        let dry = evict_bucket(&bucket, "n1", now, lim(150, 135), true, |_| panic!("dry")).await.unwrap();
        assert_eq!(dry.evicted.iter().map(|b| &b.digest).collect::<Vec<_>>(), [&oldest, &older]);
        assert_eq!(bucket.list().await.unwrap().len(), 3, "a dry run deletes nothing");
        assert_eq!(bucket.list_records("access").await.unwrap().len(), 2, "nor compacts");

        let mut told = Vec::new();
        let done = evict_bucket(&bucket, "n1", now, lim(150, 135), false, |b| told.push(b.digest.clone())).await.unwrap();
        assert_eq!((done.blobs, done.bytes_before, done.summaries), (3, 300, 2));
        assert_eq!(done.evicted, dry.evicted);
        assert_eq!(done.evicted[1].last_access, now - 30 * MIN, "the summary's time, over the floor");
        assert_eq!(told, [oldest.clone(), older.clone()]);
        assert_eq!(bucket.stat(&oldest).await.unwrap(), None);
        assert_eq!(bucket.stat(&recent).await.unwrap(), Some(100));
        let keys = bucket.list_records("access").await.unwrap();
        assert_eq!(keys, [format!("access/n1/{now:013}-c0")], "the summaries consumed are replaced by one compacted");
        let body = bucket.get(&keys[0], MAX_SUMMARY_RECORD).await.unwrap().unwrap();
        assert_eq!(parse_summary(&body).collect::<Vec<_>>(), [(recent.clone(), now - MIN)], "only what is still there");

        // Under the limit now; nothing new to compact: nothing changes.
        let again = evict_bucket(&bucket, "n2", now + MIN, lim(150, 135), false, |_| panic!("nothing to evict")).await.unwrap();
        assert_eq!((again.evicted.len(), again.summaries), (0, 1));
        assert_eq!(bucket.list_records("access").await.unwrap(), keys);
        // Over a lower limit, the recent blob still stays: it was read a minute ago.
        let low = evict_bucket(&bucket, "n2", now + MIN, lim(10, 9), false, |_| panic!("protected")).await.unwrap();
        assert!(low.evicted.is_empty());
        // Run twice (two evictors): the second finds nothing more to do.
        let twice = evict_bucket(&bucket, "n2", now, lim(150, 135), false, |_| panic!("already done")).await.unwrap();
        assert!(twice.evicted.is_empty());
        // Without protection (`gc --protect-recent 0s`), the recent one goes too.
        let all = Limits { max: 10, target: 0, protected: Duration::ZERO };
        let forced = evict_bucket(&bucket, "gc", now, all, false, |_| {}).await.unwrap();
        assert_eq!(forced.evicted.iter().map(|b| &b.digest).collect::<Vec<_>>(), [&recent]);
    }
}
