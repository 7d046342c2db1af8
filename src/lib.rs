//! regcache: a pull-through caching mirror for container registries.
//!
//! # Layout
//! One word per concept. The tier behind this node's hot tier is "the shared tier" everywhere
//! outside `store/` (`Located::Shared`, `Tier::Shared`, `RememberedTag::shared`,
//! `ServedFrom::Shared`, `Fill::from_shared`, `FillError::Shared`, `SharedSays`,
//! `metrics::SharedMetrics`, `status::SharedStatus`, `Store::shared_state`): only the store (and
//! the configuration, `app` and `admin`) knows it is a bucket. Callers of one key wait on one
//! "coalesced" upstream call (`singleflight`); requests "join" a running fill (`fill::map`). A
//! client turned away by the access gate is `access::Rejected`, a member's asker without the
//! fleet's secret `fleet::auth::SecretRefused`, a connection to a private network
//! `upstream::guard::Blocked`.
//! - [`app`]: the composition root: a [`config::Config`] becomes the store and its tiers (the
//!   bucket of `[storage]` created, probed and cleaned up once), the upstream clients, the access
//!   gate, TLS and the metrics, handed to [`http::App`]; `regcache serve` starts it with
//!   `app::start`.
//! - [`access`]: who may use the mirror: allow list and htpasswd (the file read by
//!   `access::read_htpasswd`); a request it turns away gets `access::Rejected` (401, or 429 after
//!   too many wrong credentials).
//! - [`admin`]: `ls`, `gc`, `verify` on the data directory (and on the shared bucket with
//!   `backend = "s3"`: the store does the work, `store::bucket::admin`; `admin` formats it).
//! - [`warm`]: `warm`: pull images through a server ahead of a rush.
//! - [`healthcheck`]: `healthcheck`: ask a running server's `/healthz`, for images without curl.
//! - [`config`]: the TOML file as written (`config::raw`: serde types, unknown keys refused by
//!   name and line; `[storage]` an enum tagged by `backend`; durations and sizes by
//!   `humantime-serde` and `bytesize`) → a validated [`config::Config`] (`[storage]` as the data
//!   directory alone or with a `config::BucketTier`: its backend's client settings and the
//!   tier's `bucket_max_size`), described for `check-config` with secrets masked.
//! - [`oci`]: the registry domain, pure: `Digest`, `RepositoryName`, `Reference`, `RegistryHost`
//!   (Docker Hub's aliases and `library/`), `UpstreamRepo` (a repository as one upstream names it:
//!   what the store keys tags, tag lists and referrers lists by), media types, error codes and who
//!   is to blame (`Blame`).
//! - [`upstream`]: the client for one upstream registry: pooled hyper + rustls, token auth, redirects
//!   (kept out of the operator's private networks by `upstream::guard`: a connection there is
//!   `guard::Blocked`), and the registry protocol as typed methods (`head_manifest`,
//!   `get_manifest`, `tags`, `referrers`, `head_blob`, `get_blob`).
//! - [`store`]: everything regcache keeps, in tiers, and the tier logic in one place
//!   (`store/tiered.rs`: callers ask `Store` for a manifest and the `Tier` that had it (`Hot`,
//!   `Shared`), a tag (`RememberedTag`: this node's answer and the shared tier's), a referrers
//!   list, a tag list or where a blob is (`Store::locate`: `Located::{Local, Shared, Missing}`),
//!   and it looks up, backfills and publishes; a fill reaches it through `fill::Sink`). The storage
//!   seam (`store::BlobBackend`: begin, append, commit after verification, abort, open a range,
//!   stat, list, remove; probe and cleanup when a server starts). `store::hot`: the hot tier on
//!   disk (`LocalBlobs`: temp → fsync → rename; reading it with pooled buffers and `preadv2`; the
//!   disk budget of fills; repair and `verify`; eviction under `max_size`). `store::index`: the
//!   sled index (opened again in place when sled stops writing: `store::recovery`).
//!   `store::bucket`: with `backend = "s3"`, the tier shared with other nodes (`Shared`), its
//!   client (`Bucket`), its uploads, its backlog of what it should have (uploaded once it answers
//!   again), `bucket_max_size` (`store::bucket::lru`: access summaries, one evictor among the
//!   nodes) and the maintenance commands' work on it (`store::bucket::admin`:
//!   `Store::bucket_listing`, `bucket_gc`, `bucket_verify`).
//!   `store::records`: the bucket's records and their one typed key (`RecordKey`), written and
//!   read back (by the tier, eviction and `ls` alike). The housekeeping loop writes access times
//!   and evicts.
//! - [`fill`]: blob fills: one download per blob and upstream, written through the seam, followed
//!   by any number of readers. The map of running fills and its guard (`fill::map`: `Fills`,
//!   `Join`, and `Readable`: stored, a fill this request started, or one it joined; at most
//!   `MAX_JOINABLE_FILLS`, past which a fill runs alone), one fill as requests see it
//!   (`fill::handle`: `Fill`, its `Verdict`, `Fill::from_shared`; `FillError`), the
//!   fill's task (`fill::job`: connect, download, verify, commit), the windows of newest bytes in
//!   memory (`fill::window`: recent, and the relay of a fill passing its bytes through), when an
//!   unread fill is given up (`fill::pace`), and the readers (`fill::reader`: `FillReader`). All a
//!   fill asks of the store is `fill::Sink` (stored already? reserve, begin, commit, hold in use; a
//!   copy from a tier behind, publish to it), which the store implements (`store::fill_sink`).
//! - [`fleet`]: nodes that fetch each blob from the upstream once between them: `[fleet]` settings
//!   (`fleet::settings`), member ids and rendezvous ownership pinned as protocol (`fleet::hrw`),
//!   who the members are and which are up (`fleet::members`: static or DNS, passive health), the
//!   member API's secret and headers (`fleet::auth`: an asker without it is `SecretRefused`), the
//!   owner's side (`fleet::owner`, served by `http::fleet`), and the asker's: a client for members
//!   (`fleet::peer`) and the fill's source that fails over from member to member, then to the
//!   upstream (`fleet::source::FleetStream`).
//!   A tag is revalidated through its owner too (`cache::fleet_tag`, its answer verified as an
//!   upstream's), and a cold blob's `HEAD` asks its owner (`fleet::source::head`).
//! - [`singleflight`]: one call per key at a time, its callers coalesced (manifest fetches, tag
//!   revalidations, tokens; at most `MAX_COALESCED_CALLS` keys, past which a call runs alone).
//! - [`sync`]: taking a lock whether or not a panic poisoned it, and why that is sound here.
//! - [`cache`]: the policy: hit, miss, revalidate, stale, one file per kind of content (manifests
//!   by digest, tags and tag lists, blobs, referrers); when a tag is served, revalidated or served
//!   stale is one pure function, `cache::freshness::decide` (given what the shared tier said,
//!   `SharedSays`; it may answer `Action::AskShared`), given the time by a `cache::Clock`. Where
//!   served bytes came from is a `cache::ServedFrom` (`Hot`, `Shared`, `Peer`, `Upstream`). With
//!   the `test-hooks` feature, `cache::CoalescedCalls` counts the requests waiting on the cache's
//!   coalesced upstream calls, so a test knows when every request has joined.
//! - [`http`]: it only serves: accept loop, TLS (loading and reloading the certificate), routing,
//!   handlers, the one error mapping (`http::error`).
//! - [`logs`]: the log lines: text or one JSON object per line (`log_format`), and the request id
//!   (`logs::RequestId`) the access line carries and the response returns in `X-Request-Id`.
//! - [`metrics`]: Prometheus counters, gauges and histograms; a gauge is kept by what it counts (the
//!   fills keep `fills_in_progress`, `Metrics::fills_running`; the index `disk_bytes`,
//!   `Store::counted_in`; the shared tier its metrics, `metrics::SharedMetrics` with its
//!   `SharedOp` label, its backlog `bucket_backlog` among them). What nothing keeps is read at
//!   scrape time (`metrics::Now`: the fills' readers, `max_size`, the data directory's file
//!   system).
//! - [`status`]: the status page's tallies (`status::Board`, kept in the metrics) and its snapshot
//!   (`status::Snapshot`, the shared tier's state in it `status::SharedStatus`);
//!   `http::status` serves `/status` and `/status.json` beside `/metrics`.
//!
//! # The path of one request
//! `app::start` has built everything once. `http::server` accepts a connection;
//! `http::App::handle` routes it (`http::route`, which makes the typed name and reference), picks
//! the upstream, and asks [`cache::Cache`]. A manifest by tag is looked up under the kind of
//! answer the client's `Accept` asks for (`Store::tag`: this node's answer, and the bucket's when
//! that one isn't fresh), served while fresh or else revalidated with `Upstream::head_manifest`
//! (`cache::freshness::decide` says which), and served from the store when its digest is known
//! (`Store::manifest`); a manifest from
//! `Upstream::get_manifest` is verified by `oci::verify_manifest` before it is stored; a blob is
//! served from the store (`Store::read_blob` → `BlobBackend::open`) when the index has it, or joins
//! (or starts) the fill for its digest from its upstream and streams what arrives (fetching from its
//! own repository if the fill it joined was refused for another; a range waits for the fill's
//! verdict and reads the verified file, `fill::Fill::verified`); the fill's task (`fill::job`)
//! reads `Upstream::get_blob` and asks the store only through its narrow `fill::Sink` (reserve,
//! begin, commit): it writes through `BlobBackend::begin` / `BlobWrite::append` if the blob fits
//! the disk budget (passing it through otherwise), and commits only after the digest checks out.
//! In a fleet, a fill that misses this node's tiers asks the blob's owner (and the members after
//! it, then the upstream: `fleet::source`), which serves it from its own fill (`fleet::owner`).
//! With a shared bucket the fill reads the bucket before the upstream (`fill::Sink::open_copy`), and a fill
//! from the upstream is uploaded once it is verified and committed (from the hot tier's file; into
//! the backlog if the bucket is down then); manifests, tags and referrers lists missing here (or
//! stale) are looked up in the bucket before the upstream.
//! A `tags/list` page is cut by the cache from what the upstream listed, which is remembered per
//! repository (`Index::update_tag_list`, and the bucket) to cut the same pages while it is down.
//! `store::spawn_housekeeping` writes access times and evicts in the background. Errors from any
//! layer say who is to blame (`oci::Blame`: client, upstream or regcache) and become one OCI error
//! response in `http::error`, the one place a status is chosen.

pub mod access;
pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod fill;
pub mod fleet;
pub mod healthcheck;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod oci;
pub mod singleflight;
pub mod status;
pub mod store;
pub mod sync;
pub mod upstream;
pub mod warm;
