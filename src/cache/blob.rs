//! Blobs: served from the store when stored, else from the running fill for their digest (or one
//! started), a range of one that only the shared bucket has straight from it.

use std::sync::Arc;

use super::{Answered, BodyFrom, Cache, CacheError, ServedFrom};
use crate::fill::{FillReader, Join, Readable, Verdict, Via};
use crate::fleet::{self, auth::current_request_id, peer::BlobAsk};
use crate::oci::{Digest, RepositoryName};
use crate::store::{BlobRead, Located, Store};
use crate::upstream::{RateLimit, Upstream};

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
    /// Where its bytes come from.
    pub from: BodyFrom,
    /// The rate-limit headers of the upstream response that answered (none for a hit).
    pub rate_limit: RateLimit,
}

impl Cache {
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
        if let Some(size) = self.store.stored_size(digest)? {
            if let Some(answer) = serve_stored(&self.store, digest, size, range, head).await? {
                return Ok(answer);
            }
        }
        if head {
            return self.blob_head(up, repo, digest, range, &self.via).await;
        }
        if let Some(answer) = self.blob_range_from_shared(up, digest, range).await? {
            return Ok(answer);
        }
        self.blob_from_fill(up, repo, digest, range).await
    }

    /// A blob's headers for a member of the fleet: from this node's store, fill or upstream, never
    /// asking another member (a member's request ends here).
    pub async fn blob_head_for_member(&self, up: &Arc<Upstream>, repo: &RepositoryName, digest: &Digest) -> Result<BlobAnswer, CacheError> {
        if let Some(size) = self.store.stored_size(digest)? {
            if let Some(answer) = serve_stored(&self.store, digest, size, None, true).await? {
                return Ok(answer);
            }
        }
        self.blob_head(up, repo, digest, None, &Via::Upstream).await
    }

    /// The headers of a blob that isn't stored here: from the running fill for it when that knows
    /// the size, else from the shared bucket when it has the blob, else (`via` a fleet) from the
    /// members ranked above this node for it, else from upstream's `HEAD`.
    async fn blob_head(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<RangeRequest>,
        via: &Via,
    ) -> Result<BlobAnswer, CacheError> {
        if let Some(fill) = self.fills.get(&up.config().name, digest) {
            if let Some(size) = fill.total() {
                let (rate_limit, range) = (fill.rate_limit(), resolve_range(range, size)?);
                return Ok(BlobAnswer { size: Some(size), range, body: None, outcome: Answered::Miss, from: BodyFrom::Fill(fill, 0), rate_limit });
            }
        }
        // Indexed here only if a fill finished since: a hit all the same.
        if let Located::Local(size) | Located::Shared(size) = self.store.locate(digest).await? {
            let range = resolve_range(range, size)?;
            let from = BodyFrom::One(ServedFrom::Hot);
            return Ok(BlobAnswer { size: Some(size), range, body: None, outcome: Answered::Hit, from, rate_limit: RateLimit::default() });
        }
        if let Via::Fleet(fleet) = via {
            let ask = BlobAsk { upstream: up.config().name.to_string(), repo: repo.clone(), digest: digest.clone(), request_id: current_request_id() };
            if let Some(size) = fleet::source::head(fleet, up, &ask).await {
                let range = resolve_range(range, size)?;
                return Ok(BlobAnswer { size: Some(size), range, body: None, outcome: Answered::Pass, from: BodyFrom::One(ServedFrom::Peer), rate_limit: RateLimit::default() });
            }
        }
        let h = up.head_blob(repo, digest).await?;
        // The same headers a GET would get: a range is checked against the size upstream gave.
        let range = h.size.map(|size| resolve_range(range, size)).transpose()?.flatten();
        Ok(BlobAnswer { size: h.size, range, body: None, outcome: Answered::Pass, from: BodyFrom::One(ServedFrom::Upstream), rate_limit: h.rate_limit })
    }

    /// A range of a blob that isn't stored here but is in the shared bucket, when nothing is
    /// fetching it here: one ranged GET to the bucket. Its bytes are verified content at rest, as
    /// a range of the hot tier's file is: a node uploads a blob only after its fill verified it, and
    /// its key is written whole or not at all, by the upload's commit. They are not
    /// hashed again on the way (a range can't be); the whole blob is, when it is next filled from
    /// the bucket, and a bucket copy that fails then is removed.
    async fn blob_range_from_shared(
        &self,
        up: &Arc<Upstream>,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<Option<BlobAnswer>, CacheError> {
        let Some(range) = range else { return Ok(None) };
        if self.fills.get(&up.config().name, digest).is_some() {
            return Ok(None);
        }
        let Located::Shared(size) = self.store.locate(digest).await? else { return Ok(None) };
        let Some((start, end)) = resolve_range(Some(range), size)? else { return Ok(None) };
        let Some(body) = self.store.read_from(digest, Located::Shared(size), start..end).await? else { return Ok(None) };
        let from = BodyFrom::One(ServedFrom::Shared);
        Ok(Some(BlobAnswer { size: Some(size), range: Some((start, end)), body: Some(body), outcome: Answered::Hit, from, rate_limit: RateLimit::default() }))
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
        let (mut reader, fill, total, joined) = loop {
            let (fill, joined) = match self.fills.join_or_start(&self.store, up, repo, digest, join, &self.via)? {
                Readable::Stored(size) => match serve_stored(&self.store, digest, size, range, false).await? {
                    Some(answer) => return Ok(answer),
                    // Indexed but gone from the store: the index entry is forgotten, fetch it.
                    None => continue,
                },
                Readable::Filling(fill) => (fill, false),
                Readable::Joined(fill) => (fill, true),
            };
            // A reader from the first byte while the fill connects: a fill that passes its bytes
            // through without storing them keeps them for the readers it has, and only for them
            // (a range that waits for the verdict too: if the fill starts passing its bytes
            // through, it is answered with the whole blob).
            let reader = FillReader::new(&self.store, fill.clone(), 0, None);
            match fill.started().await {
                Ok(total) => break (reader, fill, total, joined),
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
        let outcome = match (fill.from_shared(), joined) {
            (true, _) => Answered::Hit,
            (false, true) => Answered::Coalesced,
            (false, false) => Answered::Miss,
        };
        let from = BodyFrom::Fill(fill, start);
        Ok(BlobAnswer { size, range: served, body: Some(Box::new(reader)), outcome, from, rate_limit })
    }
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
    let from = BodyFrom::One(ServedFrom::Hot);
    Ok(Some(BlobAnswer { size: Some(size), range: served, body, outcome: Answered::Hit, from, rate_limit: RateLimit::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
