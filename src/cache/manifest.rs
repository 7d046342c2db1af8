//! Manifests by digest: stored (here, or in the shared bucket), else fetched from the upstream,
//! verified and stored; one fetch per upstream, repository, reference, Accept and announced digest
//! at a time.

use std::sync::Arc;

use bytes::Bytes;

use super::{Cache, CacheError};
use super::{Answered, ServedFrom};
use crate::oci::{verify_manifest, AcceptList, Digest, Reference, RegistryHost, RepositoryName};
use crate::store::{Store, StoredManifest, Tier};
use crate::upstream::{ManifestHead, RateLimit, Upstream, UpstreamError};

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
    /// Where its bytes came from.
    pub from: ServedFrom,
    /// The rate-limit headers of the upstream response that answered (none for a hit).
    pub rate_limit: RateLimit,
}

/// What one manifest fetch is shared by: requests for the same reference, from the same upstream,
/// accepting the same kinds of manifest, after the same digest announced by a tag's `HEAD`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ManifestKey {
    upstream: RegistryHost,
    repo: RepositoryName,
    reference: Reference,
    /// [`AcceptList::key`].
    accept: String,
    announced: Option<Digest>,
}

impl Cache {
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
        if let Some((m, from)) = self.stored_manifest(digest).await? {
            return Ok(answer(digest.clone(), m, from, Answered::Hit));
        }
        if head {
            let h = up.head_manifest(repo, &Reference::Digest(digest.clone()), accept).await?;
            if let Some(a) = h.filter(|h| h.digest == *digest).and_then(|h| head_only(h, accept)) {
                return Ok(a);
            }
        }
        self.fetch_manifest(up, repo, &Reference::Digest(digest.clone()), accept, None).await
    }

    /// A stored manifest, its access noted (here, or in a tier behind this node's: see
    /// [`Store::manifest`]), and where it was.
    pub(super) async fn stored_manifest(&self, digest: &Digest) -> Result<Option<(StoredManifest, ServedFrom)>, CacheError> {
        Ok(self.store.manifest(digest).await?.map(|(m, tier)| {
            let from = match tier {
                Tier::Hot => ServedFrom::Hot,
                Tier::Shared => ServedFrom::Shared,
            };
            (m, from)
        }))
    }

    /// GET a manifest from upstream (one call per upstream, repository, reference, Accept and
    /// expected digest at a time), verify it, store it. `announced` is the digest an earlier `HEAD`
    /// gave for a tag.
    pub(super) async fn fetch_manifest(
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
}

/// The answer of a stored manifest, which came `from` there.
pub(super) fn answer(digest: Digest, m: StoredManifest, from: ServedFrom, outcome: Answered) -> ManifestAnswer {
    ManifestAnswer {
        digest,
        size: m.bytes.len() as u64,
        media_type: m.media_type,
        bytes: Some(m.bytes),
        outcome,
        from,
        rate_limit: RateLimit::default(),
    }
}

/// A HEAD answer built from upstream headers alone, if they said everything and the client accepts it.
pub(super) fn head_only(h: ManifestHead, accept: &AcceptList) -> Option<ManifestAnswer> {
    let media_type = h.media_type.filter(|m| accept.allows(m))?;
    let size = h.size?;
    Some(ManifestAnswer { digest: h.digest, media_type, size, bytes: None, outcome: Answered::Pass, from: ServedFrom::Upstream, rate_limit: h.rate_limit })
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
    let m = store.put_manifest(&verified.digest, &StoredManifest { media_type: verified.media_type, bytes: fetched.bytes })?;
    Ok(ManifestAnswer { rate_limit: fetched.rate_limit, ..answer(verified.digest, m, ServedFrom::Upstream, Answered::Miss) })
}
