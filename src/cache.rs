//! The cache policy: what is a hit, what goes upstream, when a tag is revalidated, when stale content
//! is served. Handlers ask; this module decides.

mod answered;

pub use answered::Answered;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::fill::{FillError, FillReader, Fills, Join, Source, Verdict};
use crate::oci::{verify_manifest, AcceptList, Digest, ManifestError, ManifestKind, Reference, RegistryHost, RepositoryName, Tag, OCI_INDEX};
use crate::store::{now_secs, BlobRead, ListedTags, Store, StoredManifest, TagAnswer};
use crate::singleflight::Singleflight;
use crate::upstream::{ManifestHead, RateLimit, TagsPage, Upstream, UpstreamError, MAX_MANIFEST};

/// The most tags one page lists: a larger `n` is lowered to this.
pub const MAX_TAGS_PAGE: u32 = 10_000;
/// How often a tag answer (or tag list) that hasn't changed is written to the shared bucket again.
const TAG_REPUBLISH: Duration = Duration::from_secs(60);
/// The most upstream requests one page of tags takes, following an upstream that cuts its pages
/// shorter than asked ([`upstream_tags`]).
const MAX_UPSTREAM_TAG_PAGES: usize = 100;

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
            FillError::Disk(m) | FillError::Bucket(m) => CacheError::Storage(m),
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

/// A manifest answer. `bytes` is `None` for a `HEAD` answered from upstream headers alone.
#[derive(Clone, Debug)]
pub struct ManifestAnswer {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// Its bytes, when known.
    pub bytes: Option<Bytes>,
    /// How it was answered.
    pub outcome: Answered,
    /// The rate-limit headers of the upstream response that answered (none for a hit).
    pub rate_limit: RateLimit,
}

/// A byte range asked for, before it is checked against the blob's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=start-` or `bytes=start-end` (inclusive).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// The `[start, end)` this range covers in a blob of `size` bytes, with `start < end <= size`;
    /// `None` if unsatisfiable (RFC 9110 14.1.1: it starts at or past the end, or asks for the last
    /// zero bytes, or the blob is empty).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            RangeRequest::From(start, last) => (start, last.map_or(size, |l| l.saturating_add(1).min(size))),
            RangeRequest::Suffix(n) => (size.saturating_sub(n), size),
        };
        (start < end).then_some((start, end))
    }
}

/// A blob answer.
pub struct BlobAnswer {
    /// The blob's full size, when known (unknown only while a fill from a chunked upstream runs).
    pub size: Option<u64>,
    /// The `[start, end)` served when a range was asked for.
    pub range: Option<(u64, u64)>,
    /// The bytes, `None` for `HEAD`: a stored blob or a fill being followed.
    pub body: Option<Box<dyn BlobRead>>,
    /// How it was answered.
    pub outcome: Answered,
    /// The rate-limit headers of the upstream response that answered (none for a hit).
    pub rate_limit: RateLimit,
}

/// A referrers list (an OCI image index).
pub struct ReferrerList {
    /// The index JSON.
    pub body: Bytes,
    /// Whether the `artifactType` filter was applied.
    pub filtered: bool,
    /// Where it came from.
    pub outcome: Answered,
}


/// One page of a repository's tags, sorted.
pub struct TagList {
    /// `{"name": …, "tags": […]}`.
    pub body: Bytes,
    /// When more tags follow: the last tag of this page, where the next page starts.
    pub next: Option<String>,
    /// Whether it came from upstream or from what regcache knows.
    pub outcome: Answered,
    /// The rate-limit headers of the upstream response that answered.
    pub rate_limit: RateLimit,
}

/// What one tag revalidation is shared by: requests for the same tag, from the same upstream,
/// accepting the same kinds of manifest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TagKey {
    upstream: RegistryHost,
    /// The name upstream knows (`library/alpine`, not `alpine`).
    repo: RepositoryName,
    tag: Tag,
    /// [`AcceptList::key`].
    accept: String,
}

/// What one manifest fetch is shared by: requests for the same reference, from the same upstream,
/// accepting the same kinds of manifest, after the same digest announced by a tag's `HEAD`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ManifestKey {
    upstream: RegistryHost,
    repo: RepositoryName,
    reference: Reference,
    /// [`AcceptList::key`].
    accept: String,
    announced: Option<Digest>,
}

/// The cache: store, upstreams, and the calls in flight.
pub struct Cache {
    store: Arc<Store>,
    upstreams: Vec<Arc<Upstream>>,
    fills: Arc<Fills>,
    revalidations: Singleflight<TagKey, Result<Option<ManifestHead>, UpstreamError>>,
    manifest_fetches: Singleflight<ManifestKey, Result<ManifestAnswer, CacheError>>,
}

/// Counts the requests waiting on the cache's shared upstream calls (see [`Cache::shared_calls`]),
/// so a test that holds the upstream knows when every request has joined.
#[derive(Clone)]
pub struct SharedCalls {
    revalidations: Singleflight<TagKey, Result<Option<ManifestHead>, UpstreamError>>,
    manifest_fetches: Singleflight<ManifestKey, Result<ManifestAnswer, CacheError>>,
}

impl SharedCalls {
    /// Requests waiting on a tag revalidation (a manifest `HEAD` upstream) now.
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
            upstreams,
            fills: Arc::new(fills),
            revalidations: Singleflight::default(),
            manifest_fetches: Singleflight::default(),
        }
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

    /// A handle counting the requests that wait on shared upstream calls.
    pub fn shared_calls(&self) -> SharedCalls {
        SharedCalls { revalidations: self.revalidations.clone(), manifest_fetches: self.manifest_fetches.clone() }
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

    /// A manifest by tag or digest.
    pub async fn manifest(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(up, repo, d, accept, head).await,
            Reference::Tag(t) => self.manifest_by_tag(up, repo, t, accept, head).await,
        }
    }

    async fn manifest_by_digest(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        if let Some(m) = self.stored_manifest(digest).await? {
            return Ok(answer(digest.clone(), m, Answered::Hit));
        }
        if head {
            let h = up.head_manifest(repo, &Reference::Digest(digest.clone()), accept).await?;
            if let Some(a) = h.filter(|h| h.digest == *digest).and_then(|h| head_only(h, accept)) {
                return Ok(a);
            }
        }
        self.fetch_manifest(up, repo, &Reference::Digest(digest.clone()), accept, None).await
    }

    async fn manifest_by_tag(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let name = up.config().name.to_string();
        // Tags are kept under the name upstream knows, so `alpine` and `library/alpine` are one tag.
        let key_repo = up.upstream_name(repo);
        // A tag is remembered per kind of answer: this client is only answered from the cache with
        // what a client asking for the same kind was given.
        let kind = accept.asks_for();
        let age = |a: &TagAnswer| Duration::from_secs(now_secs().saturating_sub(a.checked_at));
        let remembered = self.remembered_tag(&name, &key_repo, tag, kind, |a| age(a) < up.config().tag_ttl).await?;
        if let Some(known) = remembered.as_ref().filter(|a| age(a) < up.config().tag_ttl) {
            if let Some(a) = self.tag_answer(known, accept, Answered::Hit).await? {
                return Ok(a);
            }
        }
        match self.revalidate_tag(up, repo, &key_repo, tag, accept, head).await {
            Err(CacheError::Upstream(e)) if e.is_unavailable() => {
                let stale = match remembered.as_ref().filter(|a| age(a) < up.config().stale_max) {
                    Some(known) => self.tag_answer(known, accept, Answered::Stale).await?,
                    None => None,
                };
                match stale {
                    Some(a) => {
                        tracing::warn!(upstream = %name, %repo, %tag, error = %e, "upstream unavailable; serving the last known tag");
                        Ok(a)
                    }
                    None => Err(e.into()),
                }
            }
            other => other,
        }
    }

    /// Ask upstream what `tag` points at now (a `HEAD`, one per [`TagKey`] at a time) and answer:
    /// from the cache when that manifest is stored and acceptable, from the `HEAD`'s headers alone
    /// for a `HEAD` when they say everything, else by a GET. The tag is remembered (under
    /// `key_repo`, the name upstream knows) for every answer, a headers-only one too: it is only
    /// served once its manifest is stored (here or in the bucket), and the client's next request
    /// is usually that manifest by digest (Docker, containerd), so the fleet's other nodes learn
    /// the tag without asking the upstream.
    async fn revalidate_tag(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        key_repo: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let name = up.config().name.to_string();
        let kind = accept.asks_for();
        let reference = Reference::Tag(tag.clone());
        let key = TagKey { upstream: up.config().name.clone(), repo: key_repo.clone(), tag: tag.clone(), accept: accept.key() };
        let revalidated = {
            let (up, repo, reference, accept) = (up.clone(), repo.clone(), reference.clone(), accept.clone());
            self.revalidations
                .run(key, move || async move { up.head_manifest(&repo, &reference, &accept).await })
                .await
        };
        let fetched = match revalidated? {
            Some(h) => {
                if let Some(m) = self.stored_manifest(&h.digest).await? {
                    if accept.allows(&m.media_type) {
                        self.remember_tag(&name, key_repo, tag, kind, &h.digest)?;
                        return Ok(answer(h.digest, m, Answered::Hit));
                    }
                }
                if head {
                    if let Some(a) = head_only(h.clone(), accept) {
                        self.remember_tag(&name, key_repo, tag, kind, &h.digest)?;
                        return Ok(a);
                    }
                }
                // By the tag, not by the digest: an upstream that converts on the fly (schema1 for
                // a client without v2 types) can't serve the converted manifest by digest. The
                // bytes must still have the digest the HEAD announced.
                self.fetch_manifest(up, repo, &reference, accept, Some(h.digest)).await?
            }
            // No digest from a HEAD (or no HEAD at all at this upstream): GET by the tag.
            None => self.fetch_manifest(up, repo, &reference, accept, None).await?,
        };
        self.remember_tag(&name, key_repo, tag, kind, &fetched.digest)?;
        Ok(fetched)
    }

    /// A stored manifest, its access noted: from the index, else from the shared bucket (verified,
    /// then kept in the index).
    async fn stored_manifest(&self, digest: &Digest) -> Result<Option<StoredManifest>, CacheError> {
        if let Some(m) = self.store.index.manifest(digest)? {
            self.store.usage.touch(digest);
            return Ok(Some(m));
        }
        let Some(shared) = &self.store.shared else { return Ok(None) };
        let Some(m) = shared.manifest(digest).await else { return Ok(None) };
        let m = self.store.index.put_manifest(digest, &m)?;
        self.store.note_stored(digest);
        Ok(Some(m))
    }

    /// What `tag` pointed at for clients asking for `kind`, as this node remembers it; when it
    /// doesn't, or its answer isn't `fresh`, what the shared bucket says (another node may have
    /// confirmed it since), kept in the index if newer.
    async fn remembered_tag(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        tag: &Tag,
        kind: ManifestKind,
        fresh: impl Fn(&TagAnswer) -> bool,
    ) -> Result<Option<TagAnswer>, CacheError> {
        let local = self.store.index.tag(upstream, repo, tag)?.and_then(|e| e.answer(kind).cloned());
        let Some(shared) = self.store.shared.as_ref().filter(|_| !local.as_ref().is_some_and(&fresh)) else { return Ok(local) };
        let Some(theirs) = shared.tag(upstream, repo, tag, kind).await else { return Ok(local) };
        if local.as_ref().is_some_and(|l| l.checked_at >= theirs.checked_at) {
            return Ok(local);
        }
        self.store.index.put_tag(upstream, repo, tag, kind, &theirs)?;
        Ok(Some(theirs))
    }

    /// The manifest a remembered tag answer points at, if stored (here or in the shared bucket)
    /// and acceptable to the client.
    async fn tag_answer(&self, known: &TagAnswer, accept: &AcceptList, outcome: Answered) -> Result<Option<ManifestAnswer>, CacheError> {
        let Some(m) = self.stored_manifest(&known.digest).await? else { return Ok(None) };
        if !accept.allows(&m.media_type) {
            return Ok(None);
        }
        Ok(Some(answer(known.digest.clone(), m, outcome)))
    }

    fn remember_tag(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        tag: &Tag,
        kind: ManifestKind,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        let known = TagAnswer { digest: digest.clone(), checked_at: now_secs() };
        let before = self.store.index.put_tag(upstream, repo, tag, kind, &known)?;
        if let Some(shared) = &self.store.shared {
            // Every bucket write costs: an unchanged answer is written again only now and then
            // (other nodes then see it as a little older than it is, and revalidate a little early).
            let unchanged = before.is_some_and(|b| b.digest == known.digest && known.checked_at.saturating_sub(b.checked_at) < TAG_REPUBLISH.as_secs());
            if !unchanged {
                shared.publish_tag(upstream, repo, tag, kind, &known);
            }
        }
        Ok(())
    }

    /// GET a manifest from upstream (one call per upstream, repository, reference, Accept and
    /// expected digest at a time), verify it, store it. `announced` is the digest an earlier `HEAD`
    /// gave for a tag.
    async fn fetch_manifest(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
        announced: Option<Digest>,
    ) -> Result<ManifestAnswer, CacheError> {
        let key = ManifestKey {
            upstream: up.config().name.clone(),
            repo: repo.clone(),
            reference: reference.clone(),
            accept: accept.key(),
            announced: announced.clone(),
        };
        let (up, repo, reference, accept, store) =
            (up.clone(), repo.clone(), reference.clone(), accept.clone(), self.store.clone());
        self.manifest_fetches
            .run(key, move || async move {
                get_verify_store_manifest(&up, &repo, &reference, &accept, announced, &store).await
            })
            .await
    }

    /// A blob, whole or a range; `head` for headers only.
    pub async fn blob(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<RangeRequest>,
        head: bool,
    ) -> Result<BlobAnswer, CacheError> {
        // Hits skip the fills lock; a miss checks the index once more under it (join_or_start), so
        // a fill that just finished is never started again.
        if let Some(size) = self.store.index.blob_size(digest)? {
            if let Some(answer) = serve_stored(&self.store, digest, size, range, head).await? {
                return Ok(answer);
            }
        }
        if head {
            return self.blob_head(up, repo, digest, range).await;
        }
        if let Some(answer) = self.blob_range_from_bucket(up, digest, range).await? {
            return Ok(answer);
        }
        self.blob_from_fill(up, repo, digest, range).await
    }

    /// The headers of a blob that isn't stored here: from the running fill for it when that knows
    /// the size, else from the shared bucket when it has the blob, else from upstream's `HEAD`.
    async fn blob_head(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobAnswer, CacheError> {
        if let Some(fill) = self.fills.get(up.config().name.as_str(), digest) {
            if let Some(size) = fill.total() {
                let (rate_limit, range) = (fill.rate_limit(), resolve_range(range, size)?);
                return Ok(BlobAnswer { size: Some(size), range, body: None, outcome: Answered::Miss, rate_limit });
            }
        }
        if let Some(shared) = &self.store.shared {
            if let Some(size) = shared.size(digest).await {
                let range = resolve_range(range, size)?;
                return Ok(BlobAnswer { size: Some(size), range, body: None, outcome: Answered::Hit, rate_limit: RateLimit::default() });
            }
        }
        let h = up.head_blob(repo, digest).await?;
        // The same headers a GET would get: a range is checked against the size upstream gave.
        let range = h.size.map(|size| resolve_range(range, size)).transpose()?.flatten();
        Ok(BlobAnswer { size: h.size, range, body: None, outcome: Answered::Pass, rate_limit: h.rate_limit })
    }

    /// A range of a blob that isn't stored here but is in the shared bucket, when nothing is
    /// fetching it here: one ranged GET to the bucket. Its bytes are verified content at rest, as
    /// a range of the hot tier's file is: a node uploads a blob only after its fill verified it, and
    /// its key is written whole or not at all, by the upload's commit. They are not
    /// hashed again on the way (a range can't be); the whole blob is, when it is next filled from
    /// the bucket, and a bucket copy that fails then is removed.
    async fn blob_range_from_bucket(
        &self,
        up: &Arc<Upstream>,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobAnswer>, CacheError> {
        let (Some(range), Some(shared)) = (range, &self.store.shared) else { return Ok(None) };
        if self.fills.get(up.config().name.as_str(), digest).is_some() {
            return Ok(None);
        }
        let Some(size) = shared.size(digest).await else { return Ok(None) };
        let Some((start, end)) = resolve_range(Some(range), size)? else { return Ok(None) };
        let Some(opened) = shared.read(digest, size, start..end).await else { return Ok(None) };
        let body: Box<dyn BlobRead> = opened.reader;
        Ok(Some(BlobAnswer { size: Some(size), range: Some((start, end)), body: Some(body), outcome: Answered::Hit, rate_limit: RateLimit::default() }))
    }

    /// A blob that isn't stored, for a `GET`: join (or start) the fill for its digest. The whole
    /// blob streams as it arrives (its last byte held back until the digest checks out, so wrong
    /// bytes end in a cut connection, never a complete body). A range waits for the fill's verdict
    /// and is read from the fill's file once the blob is verified: a client can't check a range
    /// against the digest, so it would keep wrong bytes. If the fill fails, the range is answered
    /// with the fill's error (a full GET following it has its body cut). A fill that passes its
    /// bytes through (the blob doesn't fit the disk budget) will never have them on disk to be
    /// served once verified: the range is ignored (RFC 9110 lets a server) and the whole blob
    /// streams, as without one.
    async fn blob_from_fill(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobAnswer, CacheError> {
        let mut join = Join::Any;
        let (mut reader, fill, total) = loop {
            let fill = match self.fills.join_or_start(&self.store, up, repo, digest, join)? {
                Source::Stored(size) => match serve_stored(&self.store, digest, size, range, false).await? {
                    Some(answer) => return Ok(answer),
                    // Indexed but gone from the store: the index entry is forgotten, fetch it.
                    None => continue,
                },
                Source::Filling(fill) => fill,
            };
            // A reader from the first byte while the fill connects: a fill that passes its bytes
            // through without storing them keeps them for the readers it has, and only for them
            // (a range that waits for the verdict too: if the fill starts passing its bytes
            // through, it is answered with the whole blob).
            let reader = FillReader::new(&self.store, fill.clone(), 0, None);
            match fill.started().await {
                Ok(total) => break (reader, fill, total),
                // The upstream refused the repository of the fill this request joined: an answer
                // about that repository, not ours. Fetch from ours (once).
                Err(e) if e.is_refusal() && !fill.fetches_from(up, repo) && join == Join::Any => {
                    tracing::debug!(%digest, joined = %fill.repository(), %repo, error = %e, "joined fill refused; fetching from this request's repository");
                    join = Join::OwnRepository;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (size, served) = match range {
            None => (total, None),
            Some(range) => match fill.verified().await? {
                Verdict::Verified(size) => (Some(size), resolve_range(Some(range), size)?),
                Verdict::PassingThrough => {
                    tracing::debug!(%digest, "a range of a blob passed through without storing; answering with the whole blob");
                    (total, None)
                }
            },
        };
        let (start, end) = served.map_or((0, size), |(s, e)| (s, Some(e)));
        reader.narrow(start, end);
        let rate_limit = fill.rate_limit();
        // From the bucket, the upstream was not asked: a hit (of the shared tier).
        let outcome = if fill.from_bucket() { Answered::Hit } else { Answered::Miss };
        Ok(BlobAnswer { size, range: served, body: Some(Box::new(reader)), outcome, rate_limit })
    }

    /// The referrers of a manifest (signatures, attestations): from upstream's referrers API, else
    /// from the referrers tag schema (`sha256-<hex>`), else from what regcache last saw while
    /// upstream is unavailable; an empty index when there are none.
    pub async fn referrers(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrerList, CacheError> {
        let name = up.config().name.to_string();
        let key_repo = up.upstream_name(repo);
        let accept = AcceptList::only(OCI_INDEX);
        let fetched = up.referrers(repo, digest).await;
        let remembered = match &fetched {
            Err(e) if e.is_unavailable() => self.remembered_referrers(&name, &key_repo, digest).await?,
            _ => None,
        };
        let (body, outcome) = match (fetched, remembered) {
            (Ok(body), _) => {
                self.store.index.put_referrers(&name, &key_repo, digest, &body)?;
                self.store.note_growth();
                if let Some(shared) = &self.store.shared {
                    shared.publish_referrers(&name, &key_repo, digest, body.clone());
                }
                (body, Answered::Pass)
            }
            (Err(_), Some(body)) => (body, Answered::Stale),
            (Err(e), None) if e.is_not_found() || e.is_unavailable() => {
                // No referrers API (or no answer): the fallback tag schema, which is served stale
                // like any tag while upstream is unavailable.
                let tag: Tag = format!("{}-{}", digest.algorithm().as_str(), digest.hex())
                    .parse()
                    .map_err(|_| CacheError::Corrupt("unusable referrers tag".into()))?;
                match self.manifest_by_tag(up, repo, &tag, &accept, false).await {
                    Ok(a) => (a.bytes.unwrap_or_default(), a.outcome),
                    Err(CacheError::Upstream(u)) if u.is_not_found() => (empty_index(), Answered::Pass),
                    Err(_) if e.is_unavailable() => return Err(e.into()),
                    Err(other) => return Err(other),
                }
            }
            (Err(e), None) => return Err(e.into()),
        };
        Ok(match artifact_type {
            None => ReferrerList { body, filtered: false, outcome },
            Some(t) => ReferrerList { body: filter_referrers(&body, t), filtered: true, outcome },
        })
    }

    /// The last referrers list seen for `digest`: by this node, else by another (the shared bucket).
    async fn remembered_referrers(&self, upstream: &str, repo: &RepositoryName, digest: &Digest) -> Result<Option<Bytes>, CacheError> {
        if let Some(body) = self.store.index.referrers(upstream, repo, digest)? {
            return Ok(Some(body));
        }
        Ok(match &self.store.shared {
            Some(shared) => shared.referrers(upstream, repo, digest, MAX_MANIFEST).await,
            None => None,
        })
    }

    /// One page of a repository's tags, at most `n` of them after `last` in lexical order: from
    /// upstream ([`upstream_tags`]), or while upstream can't be asked from what regcache knows
    /// ([`Cache::known_tags`]). The page is cut here ([`tag_page`]) whatever the upstream did with
    /// `n` and `last`, online and offline alike, so both answer the same from the same list.
    pub async fn tags(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<TagList, CacheError> {
        let n = n.map(|n| n.min(MAX_TAGS_PAGE));
        let name = up.config().name.to_string();
        let key_repo = up.upstream_name(repo);
        match upstream_tags(up, repo, n, last).await {
            Ok(listed) => {
                self.remember_tag_list(&name, &key_repo, &listed, n, last)?;
                Ok(tag_page(repo, listed.tags, n, last, listed.more, Answered::Pass, listed.rate_limit))
            }
            Err(e) if e.is_unavailable() => {
                let Some(known) = self.known_tags(up, &key_repo).await? else { return Err(e.into()) };
                tracing::warn!(upstream = %name, %repo, error = %e, "upstream unavailable; listing the tags regcache knows");
                Ok(tag_page(repo, known, n, last, false, Answered::Stale, RateLimit::default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Remember what the upstream listed, for when it can't be asked (in the index, and in the
    /// shared bucket for the other nodes).
    ///
    /// Every answer is the upstream's, but a page shows only part of its list. So a whole list
    /// (asked from the start, not cut by `n`, no `Link` to more) replaces what was remembered, and a
    /// page is added to it (a tag gone upstream stays until the next whole list). With the
    /// upstream's own short pages followed ([`upstream_tags`]), whatever pages a client read online,
    /// reading them again offline, with or without `n` and `last`, gets the same answers, cut by
    /// [`tag_page`] from the same list; and a client that read one page online still finds its tags
    /// offline. (Fetching the whole list behind every page asked would learn more, at the cost of
    /// the whole list for every page.)
    fn remember_tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        listed: &TagsPage,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<(), CacheError> {
        let now = now_secs();
        // Exactly `n` tags and no `Link` may be an upstream that cuts pages without saying so.
        let complete = last.is_none() && !listed.more && n.is_none_or(|n| listed.tags.len() != n as usize);
        // Sorted and cut to MAX_LISTED_TAGS here, not under the index's lock.
        let page = ListedTags::new(listed.tags.iter().cloned(), now, complete.then_some(now));
        let mut publish = false;
        let (_, new) = self.store.index.update_tag_list(upstream, repo, |old| {
            let mut new = match old.as_ref().filter(|_| !complete) {
                None => page,
                Some(old) => ListedTags::new(old.tags().iter().chain(page.tags()).cloned(), now, old.complete_at),
            };
            // Every bucket write costs: an unchanged list is written again only now and then.
            let unchanged = old.as_ref().is_some_and(|o| o.tags() == new.tags() && now.saturating_sub(o.published_at) < TAG_REPUBLISH.as_secs());
            publish = !unchanged;
            new.published_at = match (&old, publish) {
                (Some(o), false) => o.published_at,
                _ => now,
            };
            new
        })?;
        if let Some(shared) = self.store.shared.as_ref().filter(|_| publish) {
            shared.publish_tag_list(upstream, repo, &new);
        }
        Ok(())
    }

    /// What regcache knows of a repository's tags while its upstream can't be asked: the last list
    /// remembered within `stale_max` (here, or newer in the shared bucket) merged with the tags
    /// resolved since ([`offline_tags`]); without one, the tags resolved. `None` when it knows none.
    async fn known_tags(&self, up: &Arc<Upstream>, repo: &RepositoryName) -> Result<Option<Vec<String>>, CacheError> {
        let name = up.config().name.as_str();
        let mut list = self.store.index.tag_list(name, repo)?;
        if let Some(shared) = &self.store.shared {
            if let Some(theirs) = shared.tag_list(name, repo).await {
                if list.as_ref().is_none_or(|l| theirs.updated_at > l.updated_at) {
                    list = Some(theirs);
                }
            }
        }
        let list = list.filter(|l| Duration::from_secs(now_secs().saturating_sub(l.updated_at)) < up.config().stale_max);
        Ok(offline_tags(list, self.store.index.tags_of(name, repo)?))
    }
}

/// Up to `n` tags after `last` from the upstream (every tag when `None`), following the pages of an
/// upstream that cuts them shorter than asked (a page size of its own, and a `Link` to the rest):
/// asked again after the last tag so far until the page is full ([`MAX_TAGS_PAGE`] tags when `n` is
/// `None`), the upstream has no more, a page brings nothing new, or [`MAX_UPSTREAM_TAG_PAGES`]
/// requests were made. A failure after the first page ends it there, with more to follow. So a page
/// online is what the same page is offline, cut from the whole list. Only tags after the one asked
/// from are kept of a later page: at most two upstream bodies and a page of tags are held.
async fn upstream_tags(up: &Upstream, repo: &RepositoryName, n: Option<u32>, last: Option<&str>) -> Result<TagsPage, UpstreamError> {
    let mut listed = up.tags(repo, n, last).await?;
    let want = n.map_or(MAX_TAGS_PAGE as usize, |n| n as usize);
    let mut after: std::collections::BTreeSet<String> = listed.tags.iter().filter(|t| last.is_none_or(|l| t.as_str() > l)).cloned().collect();
    let mut asked = 1;
    while listed.more && after.len() < want && asked < MAX_UPSTREAM_TAG_PAGES {
        let Some(from) = after.last().cloned() else { break };
        // Fewer than `want` (a u32) so far.
        let rest = n.map(|n| n.saturating_sub(u32::try_from(after.len()).unwrap_or(u32::MAX)));
        asked += 1;
        let next = match up.tags(repo, rest, Some(&from)).await {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(upstream = %up.config().name, %repo, error = %e, "the next page of the upstream's tags failed; answering with what it gave");
                break;
            }
        };
        let new: Vec<String> = next.tags.into_iter().filter(|t| *t > from).collect();
        if new.is_empty() {
            break;
        }
        after.extend(new.iter().cloned());
        listed.tags.extend(new);
        listed.more = next.more;
        listed.rate_limit = next.rate_limit;
    }
    Ok(listed)
}

/// The tags to list offline: the remembered `list` and the tags `resolved` (with when each was last
/// confirmed) since the upstream last gave it whole (a tag resolved before, and missing from it, was
/// gone upstream by then), or every tag resolved when it never did; without a list, the tags
/// resolved. `None` without either.
fn offline_tags(list: Option<ListedTags>, resolved: Vec<(String, u64)>) -> Option<Vec<String>> {
    let Some(list) = list else {
        return (!resolved.is_empty()).then(|| resolved.into_iter().map(|(t, _)| t).collect());
    };
    let since = list.complete_at.unwrap_or(0);
    let mut tags = list.into_tags();
    tags.extend(resolved.into_iter().filter(|(_, at)| *at >= since).map(|(t, _)| t));
    Some(tags)
}

/// The page of `tags` after `last` with at most `n` of them (all when `None`), sorted; it has a next
/// page when tags were left out or `upstream_more` (upstream cut its own page shorter).
fn tag_page(
    repo: &RepositoryName,
    mut tags: Vec<String>,
    n: Option<u32>,
    last: Option<&str>,
    upstream_more: bool,
    outcome: Answered,
    rate_limit: RateLimit,
) -> TagList {
    tags.sort_unstable();
    tags.dedup();
    tags.retain(|t| last.is_none_or(|l| t.as_str() > l));
    let limit = n.map_or(usize::MAX, |n| n as usize);
    let cut = tags.len() > limit;
    tags.truncate(limit);
    let next = if cut || upstream_more { tags.last().cloned() } else { None };
    // Serialising strings cannot fail.
    let body = serde_json::to_vec(&serde_json::json!({"name": repo.as_str(), "tags": tags})).unwrap_or_default();
    TagList { body: body.into(), next, outcome, rate_limit }
}

fn empty_index() -> Bytes {
    Bytes::from(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#))
}

/// The index with only the descriptors of `artifact_type`. The list is generated, not content
/// addressed, so it may be re-serialised.
fn filter_referrers(body: &[u8], artifact_type: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else { return empty_index() };
    if let Some(list) = v.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        list.retain(|d| d.get("artifactType").and_then(|t| t.as_str()) == Some(artifact_type));
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or_else(|_| empty_index())
}

/// The `[start, end)` a range asks of a blob of `size` bytes (`None`: no range, the whole blob).
fn resolve_range(range: Option<RangeRequest>, size: u64) -> Result<Option<(u64, u64)>, CacheError> {
    range.map(|r| r.resolve(size).ok_or(CacheError::RangeNotSatisfiable { size })).transpose()
}

/// The answer for a blob the index has with `size` bytes, from the store; `None` if the store no
/// longer has it (a miss after all).
async fn serve_stored(
    store: &Store,
    digest: &Digest,
    size: u64,
    range: Option<RangeRequest>,
    head: bool,
) -> Result<Option<BlobAnswer>, CacheError> {
    let served = resolve_range(range, size)?;
    let (start, end) = served.unwrap_or((0, size));
    let body: Option<Box<dyn BlobRead>> = if head {
        if !store.has_blob(digest, size).await? {
            return Ok(None);
        }
        None
    } else {
        match store.read_blob(digest, size, start..end).await? {
            Some(stored) => Some(Box::new(stored)),
            None => return Ok(None),
        }
    };
    Ok(Some(BlobAnswer { size: Some(size), range: served, body, outcome: Answered::Hit, rate_limit: RateLimit::default() }))
}

fn answer(digest: Digest, m: StoredManifest, outcome: Answered) -> ManifestAnswer {
    ManifestAnswer {
        digest,
        size: m.bytes.len() as u64,
        media_type: m.media_type,
        bytes: Some(m.bytes),
        outcome,
        rate_limit: RateLimit::default(),
    }
}

/// A HEAD answer built from upstream headers alone, if they said everything and the client accepts it.
fn head_only(h: ManifestHead, accept: &AcceptList) -> Option<ManifestAnswer> {
    let media_type = h.media_type.filter(|m| accept.allows(m))?;
    let size = h.size?;
    Some(ManifestAnswer { digest: h.digest, media_type, size, bytes: None, outcome: Answered::Pass, rate_limit: h.rate_limit })
}

/// GET a manifest ([`Upstream::get_manifest`]) and verify it ([`verify_manifest`]): its digest is
/// computed here and must match the digest asked for, the one the `HEAD` announced, and the one
/// this answer announces; its media type comes from the manifest. Only then is it stored, and never
/// over bytes already stored.
async fn get_verify_store_manifest(
    up: &Upstream,
    repo: &RepositoryName,
    reference: &Reference,
    accept: &AcceptList,
    announced: Option<Digest>,
    store: &Store,
) -> Result<ManifestAnswer, CacheError> {
    let fetched = up.get_manifest(repo, reference, accept).await.map_err(|e| match e {
        UpstreamError::TooLarge(_) => CacheError::ManifestTooLarge,
        e => e.into(),
    })?;
    let asked = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => None,
    };
    let expected: Vec<Digest> = asked.into_iter().chain(announced).chain(fetched.digest).collect();
    let verified = verify_manifest(&fetched.bytes, &expected, fetched.content_type.as_deref()).inspect_err(|e| {
        tracing::warn!(upstream = %up.config().name, %repo, %reference, error = %e, "refused a manifest from upstream");
    })?;
    let m = store.index.put_manifest(&verified.digest, &StoredManifest { media_type: verified.media_type, bytes: fetched.bytes })?;
    if let Some(shared) = &store.shared {
        shared.publish_manifest(&verified.digest, &m);
    }
    store.note_stored(&verified.digest);
    Ok(ManifestAnswer { rate_limit: fetched.rate_limit, ..answer(verified.digest, m, Answered::Miss) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_pages() {
        let repo: RepositoryName = "org/app".parse().unwrap();
        let all = || ["d", "b", "a", "c", "b"].map(String::from).to_vec();
        /// n, last, upstream had more, the page, the next page's `last`.
        type Case<'a> = (Option<u32>, Option<&'a str>, bool, &'a [&'a str], Option<&'a str>);
        let cases: &[Case] = &[
            (None, None, false, &["a", "b", "c", "d"], None),
            (Some(2), None, false, &["a", "b"], Some("b")),
            (Some(2), Some("b"), false, &["c", "d"], None),
            (Some(4), None, false, &["a", "b", "c", "d"], None),
            (Some(0), None, false, &[], None),
            (Some(0), None, true, &[], None),
            (None, Some("d"), false, &[], None),
            (None, Some("bb"), false, &["c", "d"], None),
            (None, None, true, &["a", "b", "c", "d"], Some("d")),
            (Some(10), Some("a"), true, &["b", "c", "d"], Some("d")),
        ];
        for (n, last, more, want, next) in cases {
            let page = tag_page(&repo, all(), *n, *last, *more, Answered::Pass, RateLimit::default());
            let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
            assert_eq!(v, serde_json::json!({"name": "org/app", "tags": want}), "{n:?} {last:?} {more}");
            assert_eq!(page.next.as_deref(), *next, "{n:?} {last:?} {more}");
        }
    }

    #[test]
    fn offline_a_list_takes_the_tags_resolved_since_it_was_whole() {
        let resolved = || vec![("old".to_owned(), 9), ("b".to_owned(), 3), ("new".to_owned(), 10), ("newer".to_owned(), 11)];
        let list = |complete_at| ListedTags::new(["b", "a"].map(String::from), 12, complete_at);
        /// The remembered list, the tags resolved, what is listed offline.
        type Case = (Option<ListedTags>, Vec<(String, u64)>, Option<&'static [&'static str]>);
        let cases: Vec<Case> = vec![
            (None, vec![], None),
            (None, resolved(), Some(&["b", "new", "newer", "old"])),
            (Some(list(None)), vec![], Some(&["a", "b"])),
            // Whole at 10: `old` (resolved at 9, not in it) was gone upstream; `new` (at 10) may not be.
            (Some(list(Some(10))), resolved(), Some(&["a", "b", "new", "newer"])),
            // Never whole: every tag resolved is listed.
            (Some(list(None)), resolved(), Some(&["a", "b", "new", "newer", "old"])),
            (Some(ListedTags::new([], 12, Some(12))), vec![], Some(&[])),
        ];
        for (list, resolved, want) in cases {
            let why = format!("{list:?} {resolved:?}");
            let got = offline_tags(list, resolved).map(|mut t| {
                t.sort();
                t.dedup();
                t
            });
            assert_eq!(got, want.map(|w| w.iter().map(|t| t.to_string()).collect::<Vec<_>>()), "{why}");
        }
    }

    #[test]
    fn ranges_resolve() {
        let cases = [
            (RangeRequest::From(0, None), 10, Some((0, 10))),
            (RangeRequest::From(2, Some(4)), 10, Some((2, 5))),
            (RangeRequest::From(2, Some(100)), 10, Some((2, 10))),
            (RangeRequest::From(10, None), 10, None),
            (RangeRequest::Suffix(3), 10, Some((7, 10))),
            (RangeRequest::Suffix(30), 10, Some((0, 10))),
            (RangeRequest::Suffix(0), 10, None),
            (RangeRequest::From(0, Some(u64::MAX)), 10, Some((0, 10))),
            (RangeRequest::From(5, Some(u64::MAX)), 10, Some((5, 10))),
            (RangeRequest::From(u64::MAX, None), 10, None),
            (RangeRequest::From(u64::MAX, Some(u64::MAX)), u64::MAX, None),
            (RangeRequest::From(0, Some(u64::MAX)), u64::MAX, Some((0, u64::MAX))),
            (RangeRequest::Suffix(u64::MAX), 10, Some((0, 10))),
            (RangeRequest::Suffix(5), 0, None),
            (RangeRequest::From(0, None), 0, None),
            (RangeRequest::From(0, Some(u64::MAX)), 0, None),
            (RangeRequest::From(9, Some(9)), 10, Some((9, 10))),
        ];
        for (r, size, want) in cases {
            assert_eq!(r.resolve(size), want, "{r:?} of {size}");
        }
    }
}
