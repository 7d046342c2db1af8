//! Prometheus metrics: what the mirror did (requests, cache outcomes, bytes by source), what it asked
//! upstream (requests, latency, token fetches), what it holds (fills running, bytes on disk,
//! evictions), and, with a shared bucket, what it asked of the bucket (requests by operation and
//! result, bytes each way, uploads running and aborted, whether it is down). One [`Metrics`] per
//! server, shared by its parts.

use std::fmt::Write as _;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cache::Answered;

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
            RouteLabel::Other => "other",
        }
    }
}

/// Where the bytes served came from: the `source` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum ServedFrom {
    Cache,
    Upstream,
}

impl ServedFrom {
    /// Where the body of a request the cache answered with `outcome` came from.
    fn of(outcome: Answered) -> ServedFrom {
        match outcome {
            Answered::Hit | Answered::Stale => ServedFrom::Cache,
            Answered::Miss | Answered::Pass => ServedFrom::Upstream,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ServedFrom::Cache => "cache",
            ServedFrom::Upstream => "upstream",
        }
    }
}

/// What was asked of the shared bucket: the `op` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BucketOp {
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

impl BucketOp {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketOp::Head => "head",
            BucketOp::Get => "get",
            BucketOp::Upload => "upload",
            BucketOp::GetRecord => "get_record",
            BucketOp::PutRecord => "put_record",
            BucketOp::Evict => "evict",
        }
    }
}

/// Whether a bucket request succeeded: the `result` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum BucketResult {
    Ok,
    Error,
}

impl BucketResult {
    fn as_str(self) -> &'static str {
        match self {
            BucketResult::Ok => "ok",
            BucketResult::Error => "error",
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
label_value!(Answered, RouteLabel, ServedFrom, BucketOp, BucketResult, Direction);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    op: BucketOp,
    result: BucketResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketRequestLabels {
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
    members: Family<MemberLabels, Gauge>,
}

impl FleetMetrics {
    /// One fill's source, or one member that failed to answer (`outcome` a
    /// `fleet::FleetOutcome` as its label says it).
    pub fn outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&FleetOutcomeLabels { outcome }).inc();
    }

    /// The members and whether each is up, replacing what was set before (members leave).
    pub fn members(&self, states: &[(String, bool)]) {
        self.members.clear();
        for (member, up) in states {
            self.members.get_or_create(&MemberLabels { member: member.clone() }).set(i64::from(*up));
        }
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
    fills: Gauge,
    disk_bytes: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    bucket_operations: Family<BucketLabels, Counter>,
    bucket_requests: Family<BucketRequestLabels, Counter>,
    bucket_bytes: Family<DirectionLabels, Counter>,
    uploads: Gauge,
    uploads_aborted: Counter,
    bucket_down: Gauge,
    bucket_evictions: Counter,
    bucket_evicted_bytes: Counter,
    bucket_backlog: Gauge,
    bucket_backlog_dropped: Counter,
    fleet: FleetMetrics,
}

/// An upload counted as running until it is dropped.
pub struct UploadRunning(Gauge);

impl Drop for UploadRunning {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("regcache");
        let requests = Family::default();
        registry.register("http_requests", "Requests answered, by route and status", requests.clone());
        let outcomes = Family::default();
        registry.register("cache_requests", "Cache answers: hit, miss, stale, pass", outcomes.clone());
        let bytes_served = Family::default();
        registry.register("served_bytes", "Body bytes sent to clients, by source (cache or upstream)", bytes_served.clone());
        let upstream_requests = Family::default();
        registry.register("upstream_requests", "Requests sent upstream, by upstream and status", upstream_requests.clone());
        let upstream_latency = Family::<UpstreamName, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register("upstream_request_duration_seconds", "Time to upstream response headers", upstream_latency.clone());
        let token_fetches = Family::default();
        registry.register("token_fetches", "Bearer tokens fetched, by upstream", token_fetches.clone());
        let fills = Gauge::default();
        registry.register("fills_in_progress", "Blob downloads from upstream running now", fills.clone());
        let disk_bytes = Gauge::default();
        registry.register("disk_bytes", "Bytes of blobs, manifests and referrers lists stored", disk_bytes.clone());
        let evictions = Counter::default();
        registry.register("evictions", "Blobs and manifests evicted to stay under max_size", evictions.clone());
        let evicted_bytes = Counter::default();
        registry.register("evicted_bytes", "Bytes evicted to stay under max_size", evicted_bytes.clone());
        let bucket_operations = Family::default();
        registry.register(
            "bucket_operations",
            "Operations on the shared bucket (a blob's size or bytes, a whole upload, a record), by kind and result",
            bucket_operations.clone(),
        );
        let bucket_requests = Family::default();
        registry.register("bucket_requests", "S3 requests sent to the shared bucket, by operation and outcome", bucket_requests.clone());
        let bucket_bytes = Family::default();
        registry.register("bucket_bytes", "Blob bytes read from and uploaded to the shared bucket", bucket_bytes.clone());
        let uploads = Gauge::<i64, AtomicI64>::default();
        registry.register("bucket_uploads_in_progress", "Blob uploads to the shared bucket running now", uploads.clone());
        let uploads_aborted = Counter::default();
        registry.register("bucket_uploads_aborted", "Blob uploads to the shared bucket given up", uploads_aborted.clone());
        let bucket_down = Gauge::default();
        registry.register("bucket_down", "1 while the shared bucket is marked down (degraded: hot tier and upstream only)", bucket_down.clone());
        let bucket_evictions = Counter::default();
        registry.register("bucket_evictions", "Blobs this node evicted from the shared bucket to stay under bucket_max_size", bucket_evictions.clone());
        let bucket_evicted_bytes = Counter::default();
        registry.register("bucket_evicted_bytes", "Bytes this node evicted from the shared bucket to stay under bucket_max_size", bucket_evicted_bytes.clone());
        let bucket_backlog = Gauge::default();
        registry.register(
            "bucket_backlog",
            "Blobs, manifests, tag and referrers records this node keeps that wait to be written to the shared bucket (it was down)",
            bucket_backlog.clone(),
        );
        let bucket_backlog_dropped = Counter::default();
        registry.register(
            "bucket_backlog_dropped",
            "Backlog entries dropped unwritten because the backlog was full (the oldest go)",
            bucket_backlog_dropped.clone(),
        );
        let fleet = FleetMetrics { outcomes: Family::default(), members: Family::default() };
        registry.register(
            "fleet_fills",
            "How fills in a fleet got their blobs (peer_hit: a member had it stored, peer_fill: from a member's fill, fell_back_upstream: no member could stream it) and members that failed to answer (owner_down)",
            fleet.outcomes.clone(),
        );
        registry.register("fleet_member_up", "Each member of the fleet: 1 up, 0 from a failure to answer until its next answer", fleet.members.clone());
        Metrics {
            registry,
            requests,
            outcomes,
            bytes_served,
            upstream_requests,
            upstream_latency,
            token_fetches,
            fills,
            disk_bytes,
            evictions,
            evicted_bytes,
            bucket_operations,
            bucket_requests,
            bucket_bytes,
            uploads,
            uploads_aborted,
            bucket_down,
            bucket_evictions,
            bucket_evicted_bytes,
            bucket_backlog,
            bucket_backlog_dropped,
            fleet,
        }
    }

    /// One operation on the shared bucket.
    pub fn bucket_operation(&self, op: BucketOp, ok: bool) {
        let result = if ok { BucketResult::Ok } else { BucketResult::Error };
        self.bucket_operations.get_or_create(&BucketLabels { op, result }).inc();
    }

    /// One S3 request sent to the shared bucket (`op` and `outcome` are the client's words).
    pub fn bucket_request_sent(&self, op: &'static str, outcome: &'static str) {
        self.bucket_requests.get_or_create(&BucketRequestLabels { op, outcome }).inc();
    }

    /// A blob of `bytes` read from the bucket.
    pub fn bucket_read(&self, bytes: u64) {
        self.bucket_bytes.get_or_create(&DirectionLabels { direction: Direction::Read }).inc_by(bytes);
    }

    /// A blob of `bytes` uploaded to the bucket.
    pub fn bucket_written(&self, bytes: u64) {
        self.bucket_bytes.get_or_create(&DirectionLabels { direction: Direction::Written }).inc_by(bytes);
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
    pub fn bucket_evicted(&self, bytes: u64) {
        self.bucket_evictions.inc();
        self.bucket_evicted_bytes.inc_by(bytes);
    }

    /// A backlog entry was dropped unwritten: the backlog was full.
    pub fn bucket_backlog_dropped(&self) {
        self.bucket_backlog_dropped.inc();
    }

    /// The bucket was marked down, or up again.
    pub fn bucket_down(&self, down: bool) {
        self.bucket_down.set(i64::from(down));
    }

    /// One answered request.
    pub fn request(&self, route: RouteLabel, status: u16, outcome: Option<Answered>, bytes: u64) {
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        if let Some(outcome) = outcome {
            self.outcomes.get_or_create(&OutcomeLabels { outcome }).inc();
            self.bytes_served.get_or_create(&ServedFromLabels { source: ServedFrom::of(outcome) }).inc_by(bytes);
        }
    }

    /// One request sent upstream and how long its headers took.
    pub fn upstream_request(&self, upstream: &str, status: &str, elapsed: Duration) {
        let labels = UpstreamLabels { upstream: upstream.to_owned(), status: status.to_owned() };
        self.upstream_requests.get_or_create(&labels).inc();
        self.upstream_latency.get_or_create(&UpstreamName { upstream: upstream.to_owned() }).observe(elapsed.as_secs_f64());
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

    /// The text exposition, with the store's levels read now.
    pub fn render(&self, disk_bytes: u64, bucket_backlog: u64) -> String {
        self.disk_bytes.set(disk_bytes as i64);
        self.bucket_backlog.set(i64::try_from(bucket_backlog).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_the_words_of_their_labels() {
        let cases = [
            (RouteLabel::Blob, Some(Answered::Hit), r#"regcache_served_bytes_total{source="cache"} 10"#),
            (RouteLabel::Manifest, Some(Answered::Stale), r#"regcache_served_bytes_total{source="cache"} 10"#),
            (RouteLabel::Tags, Some(Answered::Miss), r#"regcache_served_bytes_total{source="upstream"} 10"#),
            (RouteLabel::Referrers, Some(Answered::Pass), r#"regcache_served_bytes_total{source="upstream"} 10"#),
            (RouteLabel::Other, None, r#"regcache_http_requests_total{route="other",status="200"} 1"#),
        ];
        for (route, outcome, line) in cases {
            let metrics = Metrics::new();
            metrics.request(route, 200, outcome, 10);
            let text = metrics.render(0, 0);
            assert!(text.contains(line), "{route:?} {outcome:?}: {text}");
            let route_line = format!(r#"regcache_http_requests_total{{route="{}",status="200"}} 1"#, route.as_str());
            assert!(text.contains(&route_line), "{text}");
            if let Some(o) = outcome {
                let outcome_line = format!(r#"regcache_cache_requests_total{{outcome="{}"}} 1"#, o.as_str());
                assert!(text.contains(&outcome_line), "{text}");
            }
        }
    }
}
