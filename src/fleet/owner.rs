//! The owner's side of the member-to-member API: a blob for a member that asked for it from
//! some offset. The owner answers from its hot tier when it has the blob, else joins or starts its
//! normal fill (the same single-flight, verification and bucket upload a client's request gets)
//! and streams the bytes from the offset as they arrive. The asker hashes the whole blob itself,
//! so a range may stream bytes the owner has not verified yet; the last byte still waits for the
//! owner's verdict.

use std::sync::Arc;

use crate::cache::{Answered, BlobAnswer, BodyFrom, Cache, CacheError, ServedFrom};
use crate::fill::{FillReader, Join, Readable, Via};
use crate::oci::{Digest, RepositoryName};
use crate::upstream::{RateLimit, Upstream};

/// `digest` from `offset` on, for a member: from the store, or from the fill this node runs
/// (never asking another member: a member's request ends here).
pub async fn serve_blob(
    cache: &Cache,
    up: &Arc<Upstream>,
    repo: &RepositoryName,
    digest: &Digest,
    offset: u64,
) -> Result<BlobAnswer, CacheError> {
    let store = cache.store();
    let mut join = Join::Any;
    loop {
        let source = match store.stored_size(digest)? {
            Some(size) => Readable::Stored(size),
            None => cache.fills().join_or_start(store, up, repo, digest, join, &Via::Upstream)?,
        };
        let fill = match source {
            Readable::Stored(size) => match stored(cache, digest, size, offset).await? {
                Some(answer) => return Ok(answer),
                // Indexed but gone from the store: the index entry is forgotten, fetch it.
                None => continue,
            },
            Readable::Filling(fill) | Readable::Joined(fill) => fill,
        };
        let mut reader = FillReader::new(store, fill.clone(), offset, None);
        match fill.started().await {
            Ok(total) => {
                if let Some(size) = total.filter(|size| offset > 0 && offset >= *size) {
                    return Err(CacheError::RangeNotSatisfiable { size });
                }
                reader.narrow(offset, total);
                let outcome = if fill.from_shared() { Answered::Hit } else { Answered::Miss };
                let range = total.filter(|_| offset > 0).map(|size| (offset, size));
                let (from, rate_limit) = (BodyFrom::Fill(fill.clone(), offset), fill.rate_limit());
                return Ok(BlobAnswer { size: total, range, body: Some(Box::new(reader)), outcome, from, rate_limit });
            }
            // The fill joined was refused for another repository: fetch from the asker's (once).
            Err(e) if e.is_refusal() && !fill.fetches_from(up, repo) && join == Join::Any => join = Join::OwnRepository,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The stored blob of `size` bytes from `offset`; `None` if the store no longer has it.
async fn stored(cache: &Cache, digest: &Digest, size: u64, offset: u64) -> Result<Option<BlobAnswer>, CacheError> {
    if offset > 0 && offset >= size {
        return Err(CacheError::RangeNotSatisfiable { size });
    }
    let Some(blob) = cache.store().read_blob(digest, size, offset..size).await? else { return Ok(None) };
    let range = (offset > 0).then_some((offset, size));
    let from = BodyFrom::One(ServedFrom::Hot);
    Ok(Some(BlobAnswer { size: Some(size), range, body: Some(Box::new(blob)), outcome: Answered::Hit, from, rate_limit: RateLimit::default() }))
}
