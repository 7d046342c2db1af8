//! The composition root: a [`Config`] becomes the running parts, each built once here — the store
//! and its tiers (the data directory, and the bucket of `[storage]` behind it: created here,
//! probed before the data directory is opened, its unfinished uploads cleaned up once the data
//! directory is this node's), the upstream clients, the fleet, the access gate, TLS and the metrics — and
//! handed to [`App`], which only serves.
//!
//! A new storage backend is one file implementing the seam (`store::BlobBackend`, with its
//! `probe` and `cleanup`, and `store::Records`), its configuration (a file as `config/s3.rs`, and
//! one variant of each enum in `config/storage.rs`), and one line in [`bucket_client`].

use std::sync::Arc;

use crate::access::Gate;
use crate::cache::Cache;
use crate::config::{BucketBackend, Config};
use crate::http::{App, AppParts, Tls, TlsError};
use crate::metrics::Metrics;
use crate::store::bucket::{Observer, Request};
use crate::store::{Bucket, BucketError, SharedBackend, Store, StoreError};
use crate::upstream::{ClientError, Upstream};

/// Why the application can't start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or index.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An upstream client.
    #[error("{0}")]
    Upstream(#[from] ClientError),
    /// The TLS certificate or key.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The bucket's client can't be set up.
    #[error("storage: {0}")]
    Bucket(#[from] BucketError),
    /// The bucket can't be used: its probe failed.
    #[error("storage: {0}")]
    Probe(std::io::Error),
}

impl StartError {
    /// Whether the configuration is to blame (a bucket that can't be set up or used), rather than
    /// the machine at run time.
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Bucket(_) | StartError::Probe(_))
    }
}

/// A server's start (`regcache serve`): the application on the bucket tier of `[storage]`, if any,
/// as [`start_with`] starts it.
pub async fn start(config: &Config) -> Result<Arc<App>, StartError> {
    let metrics = Arc::new(Metrics::new());
    let bucket = bucket_client(config, &metrics)?;
    start_with(config, bucket, metrics).await
}

/// A server's start on `bucket`: it is probed first, so that a bucket that can't be used stops
/// the start before the data directory is opened; what a previous run left unfinished in it is
/// cleaned up once the data directory (locked by its index) is ours.
pub async fn start_with(config: &Config, bucket: Option<Arc<dyn SharedBackend>>, metrics: Arc<Metrics>) -> Result<Arc<App>, StartError> {
    if let Some(bucket) = &bucket {
        bucket.probe().await.map_err(StartError::Probe)?;
    }
    let app = open_with(config, bucket.clone(), metrics)?;
    if let Some(bucket) = bucket {
        // An upload it can't abort now is kept for the next start: no reason to refuse to serve,
        // the probe has just passed.
        match bucket.cleanup().await {
            Ok(0) => {}
            Ok(aborted) => tracing::info!(aborted, "aborted the bucket uploads a previous run left unfinished"),
            Err(e) => tracing::warn!(error = %e, "cleaning up the bucket uploads a previous run left failed; trying again at the next start"),
        }
    }
    Ok(app)
}

/// The application without a server's start-up checks (`regcache warm`'s temporary server): the
/// bucket's first request says what is wrong with it.
pub fn open(config: &Config) -> Result<Arc<App>, StartError> {
    let metrics = Arc::new(Metrics::new());
    let bucket = bucket_client(config, &metrics)?;
    open_with(config, bucket, metrics)
}

/// The application on `bucket` as the tier shared with other nodes (a stand-in, in tests), its
/// events counted in `metrics`.
pub fn open_with(config: &Config, bucket: Option<Arc<dyn SharedBackend>>, metrics: Arc<Metrics>) -> Result<Arc<App>, StartError> {
    let store = open_store(config, bucket, &metrics)?;
    crate::store::spawn_housekeeping(&store, metrics.clone());
    crate::store::spawn_index_recovery(&store);
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| Upstream::new(u.clone(), metrics.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = config.tls.clone().map(Tls::new).transpose()?;
    let fleet = config.fleet.as_ref().map(|f| crate::fleet::Fleet::start(f, metrics.fleet()));
    let mut cache = Cache::new(store, upstreams, crate::fill::Fills::new(config.fills.clone(), metrics.fills_running()));
    if let Some(fleet) = &fleet {
        cache = cache.with_fleet(fleet.clone());
    }
    Ok(App::new(AppParts {
        cache,
        metrics,
        gate: Gate::new(config.access.clone()),
        tls,
        admin_separate: config.admin_listen.is_some(),
        connections: config.connections,
        local_socket: config.local_socket(),
        fleet,
    }))
}

/// The client of the bucket tier of `[storage]`, if any, its requests counted in `metrics`. Sends
/// no request.
pub fn bucket_client(config: &Config, metrics: &Arc<Metrics>) -> Result<Option<Arc<dyn SharedBackend>>, BucketError> {
    let Some(tier) = config.storage.bucket() else { return Ok(None) };
    let counted = metrics.shared();
    let observer: Observer = Arc::new(move |r: &Request| counted.request_sent(r.op.as_str(), r.outcome.as_str()));
    let client: Arc<dyn SharedBackend> = match &tier.backend {
        BucketBackend::S3(s3) => Arc::new(Bucket::from_config(s3, &config.data_dir)?.with_observer(observer)),
    };
    Ok(Some(client))
}

/// `store` (a maintenance command's, `regcache ls`, `gc`, `verify`) with the bucket tier of
/// `[storage]` behind it, if any: no probe (its first request says what is wrong), no part in the
/// nodes' eviction, its requests counted in metrics nobody reads.
pub fn with_bucket_tier(store: Store, config: &Config) -> Result<Store, BucketError> {
    let metrics = Arc::new(Metrics::new());
    Ok(match bucket_client(config, &metrics)? {
        // Not a node of the bucket's eviction: `regcache gc` names its node for its one round.
        Some(bucket) => store.with_shared(bucket, String::new(), None, metrics.shared()),
        None => store,
    })
}

/// This data directory's id among the nodes sharing a bucket (kept in `data_dir/node-id`,
/// written the first time).
pub fn node_id(config: &Config) -> std::io::Result<String> {
    crate::store::bucket_lru::node_id(&config.data_dir)
}

/// The store and its tiers: the data directory (the hot tier) with its limits, and the bucket tier
/// behind it, if any.
fn open_store(config: &Config, bucket: Option<Arc<dyn SharedBackend>>, metrics: &Arc<Metrics>) -> Result<Arc<Store>, StartError> {
    let mut store = Store::open(&config.data_dir)?
        .with_limits(config.max_size, config.fills.max_temp, config.fills.min_free)
        .counted_in(metrics);
    if let Some(bucket) = bucket {
        let max_size = config.storage.bucket().and_then(|tier| tier.max_size);
        let node = crate::store::bucket_lru::node_id(&config.data_dir)
            .map_err(|source| StoreError::Io { path: config.data_dir.join("node-id"), source })?;
        store = store.with_shared(bucket, node, max_size, metrics.shared());
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Overrides;

    fn config(data_dir: &Path, storage: &str) -> Config {
        let text = format!("data_dir = {:?}\n{storage}", data_dir.display().to_string());
        Config::from_toml(&text, &Overrides::default(), Path::new(".")).unwrap()
    }

    #[tokio::test]
    async fn a_start_probes_the_bucket_and_cleans_up_what_a_previous_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = dir.path().join("uploads");
        let bucket: Arc<dyn SharedBackend> = Arc::new(Bucket::in_memory("fleet", dir.path()));
        // A previous run's crash: a write whose first part was sent, never finished nor dropped.
        let bytes = bytes::Bytes::from(vec![7u8; crate::store::bucket::PART_SIZE + 1]);
        let mut write = bucket.begin(&crate::oci::Digest::sha256_of(&bytes), None).await.unwrap();
        write.append(&[bytes]).await.unwrap();
        std::mem::forget(write);
        assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1, "the upload is recorded");
        let config = config(dir.path(), "[storage]\nbackend = \"s3\"\nbucket = \"fleet\"\nbucket_max_size = \"1GiB\"\n");
        let app = start_with(&config, Some(bucket.clone()), Arc::default()).await.unwrap();
        assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0, "the unfinished upload is aborted and forgotten");
        assert!(bucket.list().await.unwrap().is_empty(), "the probe object is gone");
        drop(app);
    }

    #[tokio::test]
    async fn a_bucket_that_cannot_be_set_up_is_the_configurations_fault() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "[storage]\nbackend = \"s3\"\nbucket = \"fleet\"\n");
        assert!(bucket_client(&config, &Arc::default()).unwrap().is_some());
        assert!(bucket_client(&self::config(dir.path(), ""), &Arc::default()).unwrap().is_none());
        let probe = StartError::Probe(std::io::Error::other("bucket \"fleet\": list failed"));
        assert!(probe.is_config() && probe.to_string().starts_with("storage: "), "{probe}");
        assert!(!StartError::Store(crate::store::StoreError::Io { path: dir.path().into(), source: std::io::Error::other("x") }).is_config());
    }
}
