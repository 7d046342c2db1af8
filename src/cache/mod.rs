//! The cache policy: what is a hit, what goes upstream, when a tag is revalidated, when stale content
//! is served. Handlers ask; this module decides. One file per kind of content: `manifest` (by
//! digest: stored, else fetched and verified), `tags` (a manifest by tag, revalidated as
//! [`freshness`] decides; `tags/list` pages), `blob` (stored, else a fill), `referrers`.

mod answered;
mod blob;
mod fleet_tag;
pub mod freshness;
mod manifest;
mod referrers;
mod tags;

pub use answered::{Answered, BodyFrom, ServedFrom};
pub use blob::{BlobAnswer, RangeRequest};
pub use freshness::{Clock, SystemClock};
pub use manifest::ManifestAnswer;
pub use referrers::ReferrerList;
pub use tags::{TagList, MAX_TAGS_PAGE};

use std::io;
use std::sync::Arc;

use crate::fill::{FillError, Fills, Via};
use crate::oci::{ManifestError, RegistryHost};
use crate::singleflight::Singleflight;
use crate::store::Store;
use crate::upstream::{Upstream, UpstreamError, MAX_MANIFEST};

use fleet_tag::Revalidated;
use manifest::ManifestKey;
use tags::TagKey;

/// Why the cache could not answer. Cloneable so one failure can be shared by every waiter.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// Upstream refused or failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Upstream sent content that doesn't match its digest or size.
    #[error("upstream sent corrupt content: {0}")]
    Corrupt(String),
    /// Upstream sent a manifest that fails verification: nothing was stored.
    #[error("upstream sent an invalid manifest: {0}")]
    ManifestInvalid(#[from] ManifestError),
    /// A manifest over the size limit.
    #[error("manifest larger than {MAX_MANIFEST} bytes")]
    ManifestTooLarge,
    /// The range starts past the end.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
    /// The local disk or index failed.
    #[error("local storage failed: {0}")]
    Storage(String),
}

impl CacheError {
    /// Who is to blame: the upstream for what it sent, the client for a range past the end,
    /// regcache for its own storage.
    pub fn blame(&self) -> crate::oci::Blame {
        use crate::oci::Blame;
        match self {
            CacheError::Upstream(u) => u.blame(),
            CacheError::Corrupt(_) | CacheError::ManifestInvalid(_) | CacheError::ManifestTooLarge => Blame::Upstream,
            CacheError::RangeNotSatisfiable { .. } => Blame::Client,
            CacheError::Storage(_) => Blame::Internal,
        }
    }
}

impl From<FillError> for CacheError {
    fn from(e: FillError) -> Self {
        match e {
            FillError::Upstream(u) => CacheError::Upstream(u),
            FillError::Corrupt(m) => CacheError::Corrupt(m),
            FillError::Disk(m) | FillError::Shared(m) => CacheError::Storage(m),
        }
    }
}

impl From<crate::singleflight::CallDied> for CacheError {
    fn from(e: crate::singleflight::CallDied) -> Self {
        CacheError::Upstream(e.into())
    }
}

impl From<io::Error> for CacheError {
    fn from(e: io::Error) -> Self {
        CacheError::Storage(e.to_string())
    }
}

impl From<sled::Error> for CacheError {
    fn from(e: sled::Error) -> Self {
        CacheError::Storage(e.to_string())
    }
}


/// The cache: store, upstreams, and the calls in flight.
pub struct Cache {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    upstreams: Vec<Arc<Upstream>>,
    fills: Arc<Fills>,
    /// Where a fill asks for a blob this node's tiers don't have.
    via: Via,
    revalidations: Singleflight<TagKey, Result<Revalidated, CacheError>>,
    manifest_fetches: Singleflight<ManifestKey, Result<ManifestAnswer, CacheError>>,
}

/// Counts the requests waiting on the cache's coalesced upstream calls (see
/// [`Cache::coalesced_calls`]), so a test that holds the upstream knows when every request has
/// joined.
#[cfg(feature = "test-hooks")]
#[derive(Clone)]
pub struct CoalescedCalls {
    revalidations: Singleflight<TagKey, Result<Revalidated, CacheError>>,
    manifest_fetches: Singleflight<ManifestKey, Result<ManifestAnswer, CacheError>>,
}

#[cfg(feature = "test-hooks")]
impl CoalescedCalls {
    /// Requests waiting on a tag revalidation (a manifest `HEAD` upstream, or in a fleet the
    /// question to the tag's owner) now.
    pub fn revalidation_waiters(&self) -> usize {
        self.revalidations.waiters()
    }

    /// Requests waiting on a manifest `GET` upstream now.
    pub fn manifest_fetch_waiters(&self) -> usize {
        self.manifest_fetches.waiters()
    }
}

impl Cache {
    /// A cache over `store` fetching from `upstreams` (the first is the default) through `fills`.
    pub fn new(store: Arc<Store>, upstreams: Vec<Arc<Upstream>>, fills: Fills) -> Cache {
        Cache {
            store,
            clock: Arc::new(SystemClock),
            upstreams,
            fills: Arc::new(fills),
            via: Via::Upstream,
            revalidations: Singleflight::default(),
            manifest_fetches: Singleflight::default(),
        }
    }

    /// The same, reading the time (tag ages, when a tag list was learnt) from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Cache {
        self.clock = clock;
        self
    }

    /// This cache as a member of `fleet`: a blob this node's tiers don't have is asked of its
    /// owner before the upstream.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Fleet>) -> Cache {
        self.via = Via::Fleet(fleet);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The upstreams, in the configuration's order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The running fills.
    pub fn fills(&self) -> &Arc<Fills> {
        &self.fills
    }

    /// A handle counting the requests that wait on coalesced upstream calls (tests).
    #[cfg(feature = "test-hooks")]
    pub fn coalesced_calls(&self) -> CoalescedCalls {
        CoalescedCalls { revalidations: self.revalidations.clone(), manifest_fetches: self.manifest_fetches.clone() }
    }

    /// The upstream for a registry host (`ghcr.io`, `docker.io`, … as containerd's `?ns=` or the
    /// first path component names it), or the first upstream when no host is given. `None` when
    /// `host` names a registry that isn't configured: nothing may be contacted then.
    pub fn upstream_for(&self, host: Option<&str>) -> Option<&Arc<Upstream>> {
        match host {
            None => self.upstreams.first(),
            Some(host) => {
                let host = RegistryHost::new(host);
                self.upstreams.iter().find(|u| u.config().name.same_registry(&host))
            }
        }
    }
}
