//! Prometheus metrics: what the mirror did (requests, cache outcomes, bytes by source), what it asked
//! upstream (requests, latency, token fetches, the pull quota it announced), what it holds (fills
//! running and their readers, bytes on disk against max_size and the file system, evictions), and, with a shared bucket, what it asked of the bucket (requests by operation and
//! result, bytes each way, uploads running and aborted, whether it is down). One [`Metrics`] per
//! server, shared by its parts; a part that counts something keeps its own handle (the fills'
//! gauge, the index's `disk_bytes`, [`SharedMetrics`], [`FleetMetrics`]), and what nothing keeps
//! is read when `/metrics` is asked for ([`Now`]).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cache::{Answered, BodyFrom, ServedFrom};
use crate::status::Board;
use crate::upstream::Quota;

/// Which route a request took: the `route` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RouteLabel {
    /// `/v2/`.
    Base,
    /// A manifest.
    Manifest,
    /// A blob.
    Blob,
    /// A tag list.
    Tags,
    /// A referrers list.
    Referrers,
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Healthz,
    /// `/_fleet/`: the member-to-member API.
    Fleet,
    /// `/status` and `/status.json`.
    Status,
    /// Anything not routed (errors before routing).
    Other,
}

impl RouteLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Base => "base",
            RouteLabel::Manifest => "manifest",
            RouteLabel::Blob => "blob",
            RouteLabel::Tags => "tags",
            RouteLabel::Referrers => "referrers",
            RouteLabel::Metrics => "metrics",
            RouteLabel::Healthz => "healthz",
            RouteLabel::Fleet => "fleet",
            RouteLabel::Status => "status",
            RouteLabel::Other => "other",
        }
    }
}

/// What was asked of the shared bucket: the `op` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SharedOp {
    /// Whether it has a blob, and its size.
    Head,
    /// A blob read, into the hot tier.
    Get,
    /// A blob uploaded (one multipart upload or PUT, whole).
    Upload,
    /// A record read (a manifest, a tag).
    GetRecord,
    /// A record written.
    PutRecord,
    /// An eviction round's requests (who evicts; listing, summaries, deletions).
    Evict,
}

impl SharedOp {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedOp::Head => "head",
            SharedOp::Get => "get",
            SharedOp::Upload => "upload",
            SharedOp::GetRecord => "get_record",
            SharedOp::PutRecord => "put_record",
            SharedOp::Evict => "evict",
        }
    }
}

/// Whether a bucket request succeeded: the `result` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum SharedResult {
    Ok,
    Error,
}

impl SharedResult {
    fn as_str(self) -> &'static str {
        match self {
            SharedResult::Ok => "ok",
            SharedResult::Error => "error",
        }
    }
}

/// Which way bytes went between this node and the bucket: the `direction` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Direction {
    /// Read from the bucket.
    Read,
    /// Uploaded to it.
    Written,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Written => "written",
        }
    }
}

/// Label values are the enums' words.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}
label_value!(Answered, RouteLabel, ServedFrom, SharedOp, SharedResult, Direction);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedLabels {
    op: SharedOp,
    result: SharedResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedRequestLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Answered,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedFromLabels {
    source: ServedFrom,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamName {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetOutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

/// The fleet's metrics, kept by the fleet (`fleet::Fleet`): how its fills got their blobs, and
/// which members are up.
#[derive(Clone)]
pub struct FleetMetrics {
    outcomes: Family<FleetOutcomeLabels, Counter>,
    tags: Family<FleetOutcomeLabels, Counter>,
    members: Family<MemberLabels, Gauge>,
}

impl FleetMetrics {
    /// One fill's source, or one member that failed to answer (`outcome` a
    /// `fleet::FleetOutcome` as its label says it).
    pub fn outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&FleetOutcomeLabels { outcome }).inc();
    }

    /// One tag revalidation's way through the fleet (`outcome` a `fleet::TagOutcome` as its label
    /// says it).
    pub fn tag_outcome(&self, outcome: &'static str) {
        self.tags.get_or_create(&FleetOutcomeLabels { outcome }).inc();
    }

    /// The members and whether each is up, replacing what was set before (members leave).
    pub fn members(&self, states: &[(String, bool)]) {
        self.members.clear();
        for (member, up) in states {
            self.members.get_or_create(&MemberLabels { member: member.clone() }).set(i64::from(*up));
        }
    }
}

/// The shared bucket's metrics, kept by the bucket tier (`store::Shared`, and the bucket client's
/// observer, given them by `app`): one handle for everything the bucket is asked. Two views of
/// the same traffic, both exported because dashboards and alerts read both: each S3 request as the
/// client sent it (`bucket_requests`: a part, a list, a delete; `not_found` apart from failures), and
/// what the tier asked for (`bucket_operations`: a blob's size or bytes, a whole upload, a record,
/// an eviction round; an answer given up after `store::ANSWER_WITHIN` is an error here, while its
/// request never ends).
#[derive(Clone)]
pub struct SharedMetrics {
    operations: Family<SharedLabels, Counter>,
    requests: Family<SharedRequestLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    uploads: Gauge,
    uploads_aborted: Counter,
    down: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    backlog: Gauge,
    backlog_dropped: Counter,
}

impl SharedMetrics {
    /// Every bucket metric, registered in `r` with its HELP text.
    fn register(r: &mut Registry) -> SharedMetrics {
        SharedMetrics {
            operations: listed(r, "bucket_operations", "Operations on the shared bucket (a blob's size or bytes, a whole upload, a record), by kind and result", Family::default()),
            requests: listed(r, "bucket_requests", "S3 requests sent to the shared bucket, by operation and outcome", Family::default()),
            bytes: listed(r, "bucket_bytes", "Blob bytes read from and uploaded to the shared bucket", Family::default()),
            uploads: plain(r, "bucket_uploads_in_progress", "Blob uploads to the shared bucket running now", Gauge::<i64, AtomicI64>::default()),
            uploads_aborted: plain(r, "bucket_uploads_aborted", "Blob uploads to the shared bucket given up", Counter::default()),
            down: plain(r, "bucket_down", "1 while the shared bucket is marked down (degraded: hot tier and upstream only)", Gauge::default()),
            evictions: plain(r, "bucket_evictions", "Blobs this node evicted from the shared bucket to stay under bucket_max_size", Counter::default()),
            evicted_bytes: plain(r, "bucket_evicted_bytes", "Bytes this node evicted from the shared bucket to stay under bucket_max_size", Counter::default()),
            backlog: plain(r, "bucket_backlog", "Blobs, manifests, tag and referrers records this node keeps that wait to be written to the shared bucket (it was down)", Gauge::default()),
            backlog_dropped: plain(r, "bucket_backlog_dropped", "Backlog entries dropped unwritten because the backlog was full (the oldest go)", Counter::default()),
        }
    }

    /// One operation on the shared bucket.
    pub fn operation(&self, op: SharedOp, ok: bool) {
        let result = if ok { SharedResult::Ok } else { SharedResult::Error };
        self.operations.get_or_create(&SharedLabels { op, result }).inc();
    }

    /// One S3 request sent to the shared bucket (`op` and `outcome` are the client's words).
    pub fn request_sent(&self, op: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&SharedRequestLabels { op, outcome }).inc();
    }

    /// A blob of `bytes` read from the bucket.
    pub fn read(&self, bytes: u64) {
        self.bytes.get_or_create(&DirectionLabels { direction: Direction::Read }).inc_by(bytes);
    }

    /// A blob of `bytes` uploaded to the bucket.
    pub fn written(&self, bytes: u64) {
        self.bytes.get_or_create(&DirectionLabels { direction: Direction::Written }).inc_by(bytes);
    }

    /// An upload starts; it counts as running until the value returned is dropped.
    pub fn upload_started(&self) -> UploadRunning {
        self.uploads.inc();
        UploadRunning(self.uploads.clone())
    }

    /// An upload was given up.
    pub fn upload_aborted(&self) {
        self.uploads_aborted.inc();
    }

    /// A blob of `bytes` evicted from the bucket.
    pub fn evicted(&self, bytes: u64) {
        self.evictions.inc();
        self.evicted_bytes.inc_by(bytes);
    }

    /// The `bucket_backlog` gauge, for the backlog to keep (`store::Backlog::count_in`): it sets
    /// it as it grows and shrinks.
    pub fn backlog_waiting(&self) -> Gauge {
        self.backlog.clone()
    }

    /// A backlog entry was dropped unwritten: the backlog was full.
    pub fn backlog_dropped(&self) {
        self.backlog_dropped.inc();
    }

    /// The bucket was marked down, or up again.
    pub fn down(&self, down: bool) {
        self.down.set(i64::from(down));
    }
}

/// A family listed (HELP and TYPE) from the start, before its first sample (prometheus-client
/// leaves out empty families): what regcache exports does not depend on what happened yet, so
/// dashboards and alerting rules can be checked against any running server.
#[derive(Debug)]
struct Listed<F>(F);

impl<F: EncodeMetric> EncodeMetric for Listed<F> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Every metric regcache exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    bytes_served: Family<ServedFromLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_latency: Family<UpstreamName, Histogram>,
    token_fetches: Family<UpstreamName, Counter>,
    ratelimit_limit: Family<UpstreamName, Gauge>,
    ratelimit_remaining: Family<UpstreamName, Gauge>,
    fills: Gauge,
    fill_readers: Gauge,
    fill_coalesced: Gauge,
    disk_bytes: Gauge,
    max_size: Gauge,
    fs_free: Gauge,
    fs_size: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    shared: SharedMetrics,
    fleet: FleetMetrics,
    /// The status page's tallies.
    board: Board,
}

/// An upload counted as running until it is dropped.
pub struct UploadRunning(Gauge);

impl Drop for UploadRunning {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Register `metric` as `name` with `help`; the registry keeps a clone, the caller the metric.
fn plain<M: EncodeMetric + Clone + std::fmt::Debug + Send + Sync + 'static>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Register the family `family` as `name` with `help`, listed before its first sample ([`Listed`]).
fn listed<F: EncodeMetric + Clone + std::fmt::Debug + Send + Sync + 'static>(registry: &mut Registry, name: &str, help: &str, family: F) -> F {
    registry.register(name, help, Listed(family.clone()));
    family
}

/// The buckets of the upstream latency histogram, in seconds.
fn latency_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, every one registered with its HELP text.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("regcache");
        let r = &mut registry;
        Metrics {
            requests: listed(r, "http_requests", "Requests answered, by route and status", Family::default()),
            outcomes: listed(r, "cache_requests", "Cache answers: hit, miss, stale, pass", Family::default()),
            bytes_served: listed(r, "served_bytes", "Body bytes sent to clients (members of the fleet not counted), by where they came from: hot (this node's disk), bucket (the shared bucket), peer (another member of the fleet), upstream", Family::default()),
            upstream_requests: listed(r, "upstream_requests", "Requests sent upstream, by upstream and status", Family::default()),
            upstream_latency: listed(r, "upstream_request_duration_seconds", "Time to upstream response headers", Family::<UpstreamName, Histogram>::new_with_constructor(latency_histogram)),
            token_fetches: listed(r, "token_fetches", "Bearer tokens fetched, by upstream", Family::default()),
            ratelimit_limit: listed(r, "upstream_ratelimit_limit", "The pull limit per window an upstream last announced (RateLimit-Limit, e.g. Docker Hub's)", Family::default()),
            ratelimit_remaining: listed(r, "upstream_ratelimit_remaining", "The pulls left in its window an upstream last announced (RateLimit-Remaining)", Family::default()),
            fills: plain(r, "fills_in_progress", "Blob downloads from upstream running now", Gauge::default()),
            fill_readers: plain(r, "fill_readers", "Client requests reading blobs being downloaded now", Gauge::default()),
            fill_coalesced: plain(r, "fill_coalesced_readers", "Client requests reading a blob download beside its first reader (coalesced: no download of their own)", Gauge::default()),
            disk_bytes: plain(r, "disk_bytes", "Bytes of blobs, manifests and referrers lists stored", Gauge::default()),
            max_size: plain(r, "max_size_bytes", "max_size: the most bytes disk_bytes is kept under (0: unlimited)", Gauge::default()),
            fs_free: plain(r, "data_dir_free_bytes", "Bytes free for regcache on the file system of data_dir", Gauge::default()),
            fs_size: plain(r, "data_dir_size_bytes", "Size in bytes of the file system of data_dir", Gauge::default()),
            evictions: plain(r, "evictions", "Blobs and manifests evicted to stay under max_size", Counter::default()),
            evicted_bytes: plain(r, "evicted_bytes", "Bytes evicted to stay under max_size", Counter::default()),
            shared: SharedMetrics::register(r),
            fleet: FleetMetrics { outcomes: listed(r, "fleet_fills", "How fills in a fleet got their blobs (peer_hit: a member had it stored, peer_fill: from a member's fill, fell_back_upstream: no member could stream it) and members that failed to answer (owner_down)", Family::default()), tags: listed(r, "fleet_tag_revalidations", "How tag revalidations in a fleet went (peer_answer: a member answered and it verified, refused: a member's answer failed verification, fell_back_upstream: this node asked the upstream itself) and members that failed to answer (owner_down)", Family::default()), members: listed(r, "fleet_member_up", "Each member of the fleet: 1 up, 0 from a failure to answer until it answers again (a request, or the probe of members taken for down every few seconds)", Family::default()) },
            board: Board::default(),
            registry,
        }
    }

    /// The status page's tallies, kept beside the metrics (see [`crate::status`]).
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// One answered request, `bytes` of its body sent, which came `from` there. What is sent to
    /// a member of the fleet is not counted as served: the member serves it to its client, and
    /// counts it then (as from a peer).
    pub fn request(&self, route: RouteLabel, status: u16, outcome: Option<Answered>, bytes: u64, from: Option<&BodyFrom>) {
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        self.board.request(route, outcome, bytes);
        if let Some(outcome) = outcome {
            // The metric keeps its four outcomes (dashboards and rules select on them): a request
            // that joined another's fill is a miss there; `regcache_fill_coalesced_readers` counts
            // those apart. The request log names it.
            let outcome = if outcome == Answered::Coalesced { Answered::Miss } else { outcome };
            self.outcomes.get_or_create(&OutcomeLabels { outcome }).inc();
        }
        for (source, part) in from.filter(|_| route != RouteLabel::Fleet).map(|f| f.sources(bytes)).into_iter().flatten() {
            if part > 0 {
                self.bytes_served.get_or_create(&ServedFromLabels { source }).inc_by(part);
            }
        }
    }

    /// One request sent upstream and how long its headers took.
    pub fn upstream_request(&self, upstream: &str, status: &str, elapsed: Duration) {
        let labels = UpstreamLabels { upstream: upstream.to_owned(), status: status.to_owned() };
        self.upstream_requests.get_or_create(&labels).inc();
        self.board.upstream_answered(upstream, status);
        self.upstream_latency.get_or_create(&UpstreamName { upstream: upstream.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// The pull quota an upstream response announced; kept until the next one that announces one.
    pub fn upstream_quota(&self, upstream: &str, quota: Quota) {
        let labels = UpstreamName { upstream: upstream.to_owned() };
        if let Some(limit) = quota.limit {
            self.ratelimit_limit.get_or_create(&labels).set(gauge_value(limit));
        }
        if let Some(remaining) = quota.remaining {
            self.ratelimit_remaining.get_or_create(&labels).set(gauge_value(remaining));
            self.board.upstream_remaining(upstream, remaining);
        }
    }

    /// One token fetched.
    pub fn token_fetch(&self, upstream: &str) {
        self.token_fetches.get_or_create(&UpstreamName { upstream: upstream.to_owned() }).inc();
    }

    /// Content evicted.
    pub fn evicted(&self, bytes: u64) {
        self.evictions.inc();
        self.evicted_bytes.inc_by(bytes);
    }

    /// The fleet's metrics, for the fleet to keep.
    pub fn fleet(&self) -> FleetMetrics {
        self.fleet.clone()
    }

    /// The `fills_in_progress` gauge, for the fills to keep (`fill::Fills`): they count
    /// themselves as they start and end.
    pub fn fills_running(&self) -> Gauge {
        self.fills.clone()
    }

    /// The `disk_bytes` gauge, for the hot tier's index to keep (`store::Index::count_used_in`):
    /// it moves it as it commits, evicts and removes.
    pub fn disk_bytes_stored(&self) -> Gauge {
        self.disk_bytes.clone()
    }

    /// The shared bucket's metrics, for the bucket tier to keep.
    pub fn shared(&self) -> SharedMetrics {
        self.shared.clone()
    }

    /// The text exposition, with the gauges that are measured (not kept) read now.
    pub fn render(&self, now: &Now) -> String {
        self.fill_readers.set(gauge_value(now.fill_readers as u64));
        self.fill_coalesced.set(gauge_value(now.fill_coalesced as u64));
        self.max_size.set(gauge_value(now.max_size.unwrap_or(0)));
        if let Some(fs) = now.data_dir {
            self.fs_free.set(gauge_value(fs.free));
            self.fs_size.set(gauge_value(fs.size));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the gauges that nothing keeps read when `/metrics` is asked for (the fills' readers are
/// counted by the fills on request, the file system is measured).
#[derive(Clone, Copy, Debug, Default)]
pub struct Now {
    /// Requests reading the running fills.
    pub fill_readers: usize,
    /// Of those, the readers beyond each fill's first.
    pub fill_coalesced: usize,
    /// `max_size`, if any.
    pub max_size: Option<u64>,
    /// The data directory's file system, when it could be measured.
    pub data_dir: Option<FsSpace>,
}

/// A file system's size and the bytes free for unprivileged writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    /// Free for unprivileged writers.
    pub free: u64,
    /// In all.
    pub size: u64,
}

impl FsSpace {
    /// The file system holding `path`; `None` when it can't be measured (the gauges keep their
    /// last values).
    pub fn of(path: &Path) -> Option<FsSpace> {
        let s = rustix::fs::statvfs(path).ok()?;
        Some(FsSpace { free: s.f_bavail.saturating_mul(s.f_frsize), size: s.f_blocks.saturating_mul(s.f_frsize) })
    }
}

/// A gauge holds an i64: larger values show as its maximum.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_the_words_of_their_labels() {
        let one = |from| Some(BodyFrom::One(from));
        let cases = [
            (RouteLabel::Blob, Some(Answered::Hit), one(ServedFrom::Hot), r#"regcache_served_bytes_total{source="hot"} 10"#),
            (RouteLabel::Blob, Some(Answered::Hit), one(ServedFrom::Shared), r#"regcache_served_bytes_total{source="bucket"} 10"#),
            (RouteLabel::Manifest, Some(Answered::Stale), one(ServedFrom::Hot), r#"regcache_served_bytes_total{source="hot"} 10"#),
            (RouteLabel::Blob, Some(Answered::Miss), one(ServedFrom::Peer), r#"regcache_served_bytes_total{source="peer"} 10"#),
            (RouteLabel::Tags, Some(Answered::Miss), one(ServedFrom::Upstream), r#"regcache_served_bytes_total{source="upstream"} 10"#),
            (RouteLabel::Referrers, Some(Answered::Pass), one(ServedFrom::Upstream), r#"regcache_served_bytes_total{source="upstream"} 10"#),
            (RouteLabel::Other, None, None, r#"regcache_http_requests_total{route="other",status="200"} 1"#),
        ];
        for (route, outcome, from, line) in cases {
            let metrics = Metrics::new();
            metrics.request(route, 200, outcome, 10, from.as_ref());
            let text = metrics.render(&Now::default());
            assert!(text.contains(line), "{route:?} {outcome:?}: {text}");
            assert_eq!(text.matches("regcache_served_bytes_total{").count(), usize::from(from.is_some()), "{text}");
            let route_line = format!(r#"regcache_http_requests_total{{route="{}",status="200"}} 1"#, route.as_str());
            assert!(text.contains(&route_line), "{text}");
            if let Some(o) = outcome {
                let outcome_line = format!(r#"regcache_cache_requests_total{{outcome="{}"}} 1"#, o.as_str());
                assert!(text.contains(&outcome_line), "{text}");
            }
        }
    }

    #[test]
    fn bytes_sent_to_a_member_of_the_fleet_are_not_served_bytes() {
        let metrics = Metrics::new();
        metrics.request(RouteLabel::Fleet, 200, Some(Answered::Hit), 10, Some(&BodyFrom::One(ServedFrom::Hot)));
        let text = metrics.render(&Now::default());
        assert!(!text.contains("regcache_served_bytes_total{"), "{text}");
        assert!(text.contains(r#"regcache_cache_requests_total{outcome="hit"} 1"#), "{text}");
    }

    #[test]
    fn every_metric_has_help_text_and_the_gauges_read_now() {
        let metrics = Metrics::new();
        let types = |text: &str| -> Vec<String> { text.lines().filter(|l| l.starts_with("# TYPE ")).map(str::to_owned).collect() };
        let fresh = types(&metrics.render(&Now::default()));
        assert!(fresh.iter().any(|l| l == "# TYPE regcache_upstream_ratelimit_remaining gauge"), "{fresh:?}");
        assert!(fresh.iter().any(|l| l == "# TYPE regcache_bucket_requests counter"), "{fresh:?}");
        metrics.request(RouteLabel::Blob, 200, Some(Answered::Hit), 1, Some(&BodyFrom::One(ServedFrom::Hot)));
        metrics.upstream_request("docker.io", "200", Duration::from_millis(5));
        metrics.token_fetch("docker.io");
        metrics.shared().operation(SharedOp::Get, true);
        metrics.shared().request_sent("get", "ok");
        metrics.shared().read(1);
        metrics.upstream_quota("docker.io", Quota { limit: Some(100), remaining: Some(7) });
        metrics.upstream_quota("docker.io", Quota { limit: None, remaining: Some(6) });
        metrics.disk_bytes_stored().set(10);
        metrics.shared().backlog_waiting().set(1);
        let now = Now { fill_readers: 5, fill_coalesced: 3, max_size: Some(1 << 30), data_dir: Some(FsSpace { free: 4, size: 9 }) };
        let text = metrics.render(&now);
        assert_eq!(types(&text), fresh, "every family is listed before its first sample");
        for line in [
            r#"regcache_upstream_ratelimit_limit{upstream="docker.io"} 100"#,
            r#"regcache_upstream_ratelimit_remaining{upstream="docker.io"} 6"#,
            "regcache_fill_readers 5",
            "regcache_disk_bytes 10",
            "regcache_bucket_backlog 1",
            "regcache_fill_coalesced_readers 3",
            "regcache_max_size_bytes 1073741824",
            "regcache_data_dir_free_bytes 4",
            "regcache_data_dir_size_bytes 9",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
        let typed = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helped = text.lines().filter(|l| l.starts_with("# HELP ") && l.split(' ').count() > 3).count();
        assert_eq!(typed, helped, "{text}");
        assert!(metrics.render(&Now::default()).contains("regcache_max_size_bytes 0"), "unlimited");
    }
}
