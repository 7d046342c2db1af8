//! Referrers (signatures, attestations): from the upstream's referrers API, else from the
//! referrers tag schema, else from what regcache (or another node) last saw.

use std::sync::Arc;

use bytes::Bytes;

use super::{Cache, CacheError};
use super::Answered;
use crate::oci::{AcceptList, Digest, RepositoryName, Tag, OCI_INDEX};
use crate::upstream::{Upstream, MAX_MANIFEST};

/// A referrers list (an OCI image index).
pub struct ReferrerList {
    /// The index JSON.
    pub body: Bytes,
    /// Whether the `artifactType` filter was applied.
    pub filtered: bool,
    /// Where it came from.
    pub outcome: Answered,
}

impl Cache {
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
        let key_repo = up.repo(repo);
        let accept = AcceptList::only(OCI_INDEX);
        let fetched = up.referrers(repo, digest).await;
        let remembered = match &fetched {
            Err(e) if e.is_unavailable() => self.store.referrers(&key_repo, digest, MAX_MANIFEST).await?,
            _ => None,
        };
        let (body, outcome) = match (fetched, remembered) {
            (Ok(body), _) => {
                self.store.remember_referrers(&key_repo, digest, body.clone())?;
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
