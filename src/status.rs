//! What the status page shows (`/status`, `/status.json`): the live tallies regcache keeps for it
//! ([`Board`]: the cache's requests, hits and bytes, each upstream's last trouble, the busiest
//! repositories), and the snapshot served ([`Snapshot`]), its field names fixed by the JSON it
//! becomes. The HTTP side (`http::status`) fills a snapshot from the board, the store and the
//! running fills, and renders it.
//!
//! Nothing here holds a credential: upstreams are named by their configured name and URL (user
//! information, query and fragment cut off), their errors by words regcache chose, never by an
//! upstream's body or a URL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use url::Url;

use crate::cache::Answered;
use crate::metrics::RouteLabel;
use crate::oci::UpstreamRepo;
use crate::sync::lock;

/// How many repositories [`Board`] counts at most. Their names come from clients, so the map is
/// capped: a new repository past this many takes the place of the least requested one.
pub const MAX_COUNTED_REPOSITORIES: usize = 1000;

/// How many repositories the snapshot lists.
pub const TOP_REPOSITORIES: usize = 20;

/// The tallies of the status page, kept since the server started. One per server, in
/// `metrics::Metrics` (everything that counts has it at hand).
pub struct Board {
    started: Instant,
    requests: AtomicU64,
    hits: AtomicU64,
    bytes_served: AtomicU64,
    bytes_from_upstream: AtomicU64,
    // std Mutexes: held to update or copy a small map, never across an await.
    // Bounded by the configured upstreams (their names are the keys).
    upstreams: Mutex<HashMap<String, UpstreamLive>>,
    // Bounded: at most MAX_COUNTED_REPOSITORIES entries (see `RepoCounts::count`).
    repositories: Mutex<RepoCounts>,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            started: Instant::now(),
            requests: AtomicU64::default(),
            hits: AtomicU64::default(),
            bytes_served: AtomicU64::default(),
            bytes_from_upstream: AtomicU64::default(),
            upstreams: Mutex::default(),
            repositories: Mutex::new(RepoCounts::new(MAX_COUNTED_REPOSITORIES)),
        }
    }
}

/// What is known of one upstream from its last answers.
#[derive(Clone, Debug, Default)]
struct UpstreamLive {
    /// How its last request went.
    last: Option<Answer>,
    last_error: Option<LastError>,
    /// The last `RateLimit-Remaining` it announced.
    remaining: Option<u64>,
}

/// How an upstream request went, as far as the page is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Fine,
    RateLimited,
    Failed,
}

impl Board {
    /// The seconds since the server started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// One answered request (see `Metrics::request`): blob and manifest requests count toward the
    /// cache's requests, hits (a hit, or stale content served while the upstream failed: either
    /// way no pull) and bytes served.
    pub fn request(&self, route: RouteLabel, outcome: Option<Answered>, bytes: u64) {
        if !matches!(route, RouteLabel::Blob | RouteLabel::Manifest) {
            return;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Some(Answered::Hit | Answered::Stale)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Body bytes read from an upstream.
    pub fn from_upstream(&self, bytes: u64) {
        self.bytes_from_upstream.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One request sent to `upstream` and how it went: `status` is its HTTP status, `"error"` or
    /// `"timeout"` (as `Metrics::upstream_request` has it).
    pub fn upstream_answered(&self, upstream: &str, status: &str) {
        let (answer, message) = match status {
            "timeout" => (Answer::Failed, "no response in time".to_owned()),
            "error" => (Answer::Failed, "the request failed (connection or protocol)".to_owned()),
            "429" => (Answer::RateLimited, "answered 429 Too Many Requests".to_owned()),
            s if s.starts_with('5') => (Answer::Failed, format!("answered {}", status_words(s))),
            _ => (Answer::Fine, String::new()),
        };
        let mut upstreams = lock(&self.upstreams);
        let live = upstreams.entry(upstream.to_owned()).or_default();
        live.last = Some(answer);
        if answer != Answer::Fine {
            live.last_error = Some(LastError { at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(), message });
        }
    }

    /// The `RateLimit-Remaining` an upstream announced.
    pub fn upstream_remaining(&self, upstream: &str, remaining: u64) {
        lock(&self.upstreams).entry(upstream.to_owned()).or_default().remaining = Some(remaining);
    }

    /// One request for `repo`, `bytes` served.
    pub fn repository(&self, repo: UpstreamRepo, bytes: u64) {
        lock(&self.repositories).count(repo, bytes);
    }

    /// The cache's tallies; `size_bytes`, `max_size_bytes`, `blobs` and `manifests` are the
    /// store's, given.
    pub fn cache(&self, stored: Stored) -> CacheStatus {
        let requests = self.requests.load(Ordering::Relaxed);
        let hits = self.hits.load(Ordering::Relaxed);
        CacheStatus {
            size_bytes: stored.size_bytes,
            max_size_bytes: stored.max_size_bytes,
            blobs: stored.blobs,
            manifests: stored.manifests,
            requests,
            hits,
            hit_ratio: if requests == 0 { 0.0 } else { hits as f64 / requests as f64 },
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            bytes_from_upstream: self.bytes_from_upstream.load(Ordering::Relaxed),
        }
    }

    /// The upstream named `name`, reached at `url`, as the page shows it.
    pub fn upstream(&self, name: &str, url: &Url) -> UpstreamStatus {
        let live = lock(&self.upstreams).get(name).cloned().unwrap_or_default();
        let state = match live.last {
            Some(Answer::Failed) => UpstreamState::Down,
            Some(Answer::RateLimited) => UpstreamState::RateLimited,
            _ if live.remaining == Some(0) => UpstreamState::RateLimited,
            _ => UpstreamState::Up,
        };
        UpstreamStatus {
            name: name.to_owned(),
            url: public_url(url),
            state,
            last_error: live.last_error,
            ratelimit_remaining: live.remaining,
        }
    }

    /// The most requested repositories, most first (at most [`TOP_REPOSITORIES`]).
    pub fn top_repositories(&self) -> Vec<RepositoryStatus> {
        lock(&self.repositories).top(TOP_REPOSITORIES)
    }
}

/// "503 Service Unavailable", or the code alone when it has no reason phrase.
fn status_words(code: &str) -> String {
    let reason = code.parse::<u16>().ok().and_then(|c| http::StatusCode::from_u16(c).ok()).and_then(|c| c.canonical_reason());
    match reason {
        Some(r) => format!("{code} {r}"),
        None => code.to_owned(),
    }
}

/// `url` without user information, query or fragment: only where it is.
fn public_url(url: &Url) -> String {
    let mut url = url.clone();
    // Only URLs that cannot be a base refuse these, and an upstream's URL is http(s).
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// Requests and bytes served per repository, for at most `cap` repositories.
struct RepoCounts {
    cap: usize,
    counts: HashMap<UpstreamRepo, Tally>,
}

/// One repository's requests and bytes served.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    requests: u64,
    bytes: u64,
}

impl RepoCounts {
    fn new(cap: usize) -> RepoCounts {
        RepoCounts { cap, counts: HashMap::new() }
    }

    /// Count one request. A repository not counted yet while the map is full takes the place of
    /// the least requested one (a scan of at most `cap` entries, only then): the busy ones stay,
    /// which is what the page lists.
    fn count(&mut self, key: UpstreamRepo, bytes: u64) {
        if !self.counts.contains_key(&key) && self.counts.len() >= self.cap {
            let least = self.counts.iter().min_by_key(|(_, c)| c.requests).map(|(k, _)| k.clone());
            if let Some(least) = least {
                self.counts.remove(&least);
            }
        }
        let c = self.counts.entry(key).or_default();
        c.requests = c.requests.saturating_add(1);
        c.bytes = c.bytes.saturating_add(bytes);
    }

    /// The `n` most requested, most first (ties by name, so the order is stable).
    fn top(&self, n: usize) -> Vec<RepositoryStatus> {
        let mut all: Vec<_> = self.counts.iter().collect();
        all.sort_by(|(ka, a), (kb, b)| b.requests.cmp(&a.requests).then_with(|| ka.cmp(kb)));
        all.into_iter()
            .take(n)
            .map(|(repo, c)| RepositoryStatus {
                upstream: repo.upstream.to_string(),
                repository: repo.name.to_string(),
                requests: c.requests,
                bytes_served: c.bytes,
            })
            .collect()
    }
}

/// What the store holds, as the page shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stored {
    /// Bytes stored.
    pub size_bytes: u64,
    /// `max_size`, if any.
    pub max_size_bytes: Option<u64>,
    /// Blobs stored.
    pub blobs: u64,
    /// Manifests stored.
    pub manifests: u64,
}

/// Everything `/status.json` answers.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// regcache's version.
    pub version: &'static str,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// The cache.
    pub cache: CacheStatus,
    /// The configured upstreams, in the configuration's order.
    pub upstreams: Vec<UpstreamStatus>,
    /// The fills running now.
    pub fills: Vec<FillStatus>,
    /// The most requested repositories since start.
    pub top_repositories: Vec<RepositoryStatus>,
    /// The shared bucket, if configured.
    #[serde(rename = "bucket")]
    pub shared: Option<SharedStatus>,
    /// The fleet this node is in, if any.
    pub fleet: Option<FleetStatus>,
}

/// The cache, since start.
#[derive(Clone, Debug, Serialize)]
pub struct CacheStatus {
    /// Bytes of blobs, manifests and referrers lists stored.
    pub size_bytes: u64,
    /// `max_size` (null: uncapped).
    pub max_size_bytes: Option<u64>,
    /// Blobs stored.
    pub blobs: u64,
    /// Manifests stored.
    pub manifests: u64,
    /// Blob and manifest requests answered.
    pub requests: u64,
    /// Of those, answered from the cache (hits, and stale content while the upstream failed).
    pub hits: u64,
    /// `hits / requests` (0 before the first request).
    pub hit_ratio: f64,
    /// Body bytes of blob and manifest answers.
    pub bytes_served: u64,
    /// Body bytes read from upstreams.
    pub bytes_from_upstream: u64,
}

/// How an upstream is doing, by its last answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamState {
    /// It answered (or was not asked yet).
    Up,
    /// Its last request failed: no answer, or a 5xx.
    Down,
    /// It answered 429, or announced no pulls left.
    RateLimited,
}

impl UpstreamState {
    /// The word in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Up => "up",
            UpstreamState::Down => "down",
            UpstreamState::RateLimited => "rate_limited",
        }
    }
}

/// One configured upstream.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamStatus {
    /// Its configured name (`docker.io`).
    pub name: String,
    /// Where it is reached (without user information or query).
    pub url: String,
    /// How it is doing.
    pub state: UpstreamState,
    /// Its last trouble, if any since start.
    pub last_error: Option<LastError>,
    /// The last `RateLimit-Remaining` it announced.
    pub ratelimit_remaining: Option<u64>,
}

/// An upstream's last trouble.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// What, in regcache's words.
    pub message: String,
}

/// One fill running now.
#[derive(Clone, Debug, Serialize)]
pub struct FillStatus {
    /// The upstream's name.
    pub upstream: String,
    /// The repository it fetches from, as the upstream names it.
    pub repository: String,
    /// The blob.
    pub digest: String,
    /// Bytes written so far.
    pub bytes_done: u64,
    /// The size the upstream announced (null: unknown yet).
    pub bytes_total: Option<u64>,
    /// The client requests reading it.
    pub clients: usize,
}

/// One of the most requested repositories.
#[derive(Clone, Debug, Serialize)]
pub struct RepositoryStatus {
    /// The upstream's name.
    pub upstream: String,
    /// The repository, as the upstream names it.
    pub repository: String,
    /// Requests since start.
    pub requests: u64,
    /// Body bytes served for it.
    pub bytes_served: u64,
}

/// The shared bucket.
#[derive(Clone, Debug, Serialize)]
pub struct SharedStatus {
    /// `"up"` or `"down"`.
    pub state: &'static str,
    /// The bytes of blobs this node knows to be in it.
    pub size_bytes: u64,
}

/// The fleet this node is in.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    /// This node.
    pub node: String,
    /// Every member, this node included.
    pub members: Vec<FleetMember>,
}

/// One member of the fleet.
#[derive(Clone, Debug, Serialize)]
pub struct FleetMember {
    /// Its name.
    pub node: String,
    /// `up`, or `down` from a failure to answer until it answers a request or its probe.
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_map_keeps_the_busiest_within_its_cap() {
        let mut counts = RepoCounts::new(3);
        for (repo, times) in [("a", 5), ("b", 3), ("c", 1)] {
            for _ in 0..times {
                counts.count(UpstreamRepo::of("docker.io", repo), 10);
            }
        }
        counts.count(UpstreamRepo::of("docker.io", "d"), 10);
        assert_eq!(counts.counts.len(), 3);
        let top: Vec<_> = counts.top(2).into_iter().map(|r| (r.repository, r.requests, r.bytes_served)).collect();
        assert_eq!(top, [("a".to_owned(), 5, 50), ("b".to_owned(), 3, 30)]);
        assert!(!counts.counts.contains_key(&UpstreamRepo::of("docker.io", "c")), "the least requested went");
    }

    #[test]
    fn upstream_states_follow_their_last_answer() {
        let url: Url = "https://user:secret@registry.example/v2?token=t#x".parse().expect("url");
        let cases = [
            (vec!["200"], None, UpstreamState::Up, None),
            (vec!["503"], None, UpstreamState::Down, Some("answered 503 Service Unavailable")),
            (vec!["timeout", "200"], None, UpstreamState::Up, Some("no response in time")),
            (vec!["error"], None, UpstreamState::Down, Some("the request failed (connection or protocol)")),
            (vec!["429"], None, UpstreamState::RateLimited, Some("answered 429 Too Many Requests")),
            (vec!["200"], Some(0), UpstreamState::RateLimited, None),
            (vec!["404", "401"], Some(7), UpstreamState::Up, None),
        ];
        for (answers, remaining, state, message) in cases {
            let board = Board::default();
            for a in &answers {
                board.upstream_answered("docker.io", a);
            }
            if let Some(r) = remaining {
                board.upstream_remaining("docker.io", r);
            }
            let s = board.upstream("docker.io", &url);
            assert_eq!(s.state, state, "{answers:?}");
            assert_eq!(s.last_error.map(|e| e.message), message.map(str::to_owned), "{answers:?}");
            assert_eq!(s.ratelimit_remaining, remaining);
            assert_eq!(s.url, "https://registry.example/v2");
        }
    }

    #[test]
    fn the_hit_ratio_counts_blob_and_manifest_requests() {
        let board = Board::default();
        assert_eq!(board.cache(Stored::default()).hit_ratio, 0.0);
        board.request(RouteLabel::Blob, Some(Answered::Hit), 100);
        board.request(RouteLabel::Manifest, Some(Answered::Stale), 10);
        board.request(RouteLabel::Blob, Some(Answered::Miss), 1000);
        board.request(RouteLabel::Manifest, None, 0);
        board.request(RouteLabel::Tags, Some(Answered::Hit), 5);
        let c = board.cache(Stored::default());
        assert_eq!((c.requests, c.hits, c.bytes_served), (4, 2, 1110));
        assert_eq!(c.hit_ratio, 0.5);
    }
}
