//! The tiers, one behind the other: this node's hot tier (the blob directory and the index) and,
//! with `backend = "s3"`, the bucket shared with the other nodes ([`super::Shared`]). Callers ask
//! the store for a manifest, a tag, a referrers list, a tag list; which tier answers, what is
//! copied into the hot tier from the bucket (backfill) and what is written to the bucket (publish)
//! is decided here, once.

use std::io;
use std::ops::Range;

use bytes::Bytes;

use super::backend::BlobRead;
use super::index::{ListedTags, StoredManifest, TagAnswer};
use super::Store;
use crate::oci::{Digest, ManifestKind, Tag, UpstreamRepo};

/// A tag as the store keeps it: per upstream, under the repository name the upstream knows
/// (`library/alpine`), once per kind of answer.
#[derive(Clone, Copy, Debug)]
pub struct TagSlot<'a> {
    /// The repository, on its upstream.
    pub repo: &'a UpstreamRepo,
    /// The tag.
    pub tag: &'a Tag,
    /// The kind of answer (what the client's `Accept` asks for).
    pub kind: ManifestKind,
}

/// What the tiers remember of a tag ([`Store::tag`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RememberedTag {
    /// This node's answer.
    pub local: Option<TagAnswer>,
    /// The shared tier's, if it was asked (`Some(None)`: it has none, or there is no shared tier).
    pub shared: Option<Option<TagAnswer>>,
}

/// Which tier answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// This node's hot tier.
    Hot,
    /// The shared bucket.
    Shared,
}

/// Where a blob is, as far as this node can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// In the hot tier, with this size (as indexed).
    Local(u64),
    /// Not here but in the shared tier, with this size.
    Shared(u64),
    /// In neither: the upstream has to be asked.
    Missing,
}

impl Store {
    /// The size of the blob `digest` in the hot tier, as indexed (no other tier is asked: what
    /// every hit asks first).
    pub fn stored_size(&self, digest: &Digest) -> sled::Result<Option<u64>> {
        self.index.blob_size(digest)
    }

    /// Where `digest` is: in the hot tier, else in the shared tier (its size remembered, else
    /// asked), else nowhere.
    pub async fn locate(&self, digest: &Digest) -> sled::Result<Located> {
        if let Some(size) = self.index.blob_size(digest)? {
            return Ok(Located::Local(size));
        }
        Ok(match &self.shared {
            Some(shared) => shared.size(digest).await.map_or(Located::Missing, Located::Shared),
            None => Located::Missing,
        })
    }

    /// `range` of the blob `digest` from the tier `at` names; `None` if it is no longer there
    /// (a hot-tier index entry is then forgotten, a shared one too: the next request fetches it).
    pub async fn read_from(&self, digest: &Digest, at: Located, range: Range<u64>) -> io::Result<Option<Box<dyn BlobRead>>> {
        Ok(match (at, &self.shared) {
            (Located::Local(size), _) => self.read_blob(digest, size, range).await?.map(|b| Box::new(b) as Box<dyn BlobRead>),
            (Located::Shared(size), Some(shared)) => shared.read(digest, size, range).await.map(|opened| opened.reader),
            (Located::Shared(_), None) | (Located::Missing, _) => None,
        })
    }

    /// A stored manifest, its access noted, and the tier it came from: from the index, else from
    /// the shared tier (verified there, then kept in the index).
    pub async fn manifest(&self, digest: &Digest) -> sled::Result<Option<(StoredManifest, Tier)>> {
        if let Some(m) = self.index.manifest(digest)? {
            self.usage.touch(digest);
            return Ok(Some((m, Tier::Hot)));
        }
        let Some(shared) = &self.shared else { return Ok(None) };
        let Some(m) = shared.manifest(digest).await else { return Ok(None) };
        let m = self.index.put_manifest(digest, &m)?;
        self.note_stored(digest);
        Ok(Some((m, Tier::Shared)))
    }

    /// Keep a verified manifest (never over bytes kept already: the manifest kept is returned) and
    /// publish it to the shared tier.
    pub fn put_manifest(&self, digest: &Digest, m: &StoredManifest) -> sled::Result<StoredManifest> {
        let m = self.index.put_manifest(digest, m)?;
        if let Some(shared) = &self.shared {
            shared.publish_manifest(digest, &m);
        }
        self.note_stored(digest);
        Ok(m)
    }

    /// What `slot` names as this node remembers it and, when `ask_shared` says so of that answer,
    /// as the shared tier does (another node may have confirmed it since); the shared tier's answer,
    /// if newer, is kept in the index.
    pub async fn tag(&self, slot: TagSlot<'_>, ask_shared: impl FnOnce(Option<&TagAnswer>) -> bool) -> sled::Result<RememberedTag> {
        let local = self.index.tag(slot.repo, slot.tag)?.and_then(|e| e.answer(slot.kind).cloned());
        if !ask_shared(local.as_ref()) {
            return Ok(RememberedTag { local, shared: None });
        }
        let theirs = match &self.shared {
            Some(shared) => shared.tag(slot.repo, slot.tag, slot.kind).await,
            None => None,
        };
        if let Some(theirs) = theirs.as_ref().filter(|t| local.as_ref().is_none_or(|l| t.checked_at > l.checked_at)) {
            self.index.put_tag(slot.repo, slot.tag, slot.kind, theirs)?;
        }
        Ok(RememberedTag { local, shared: Some(theirs) })
    }

    /// Remember that `slot` names `digest`, confirmed by the upstream `now`; written to the shared
    /// tier too unless `republish(the answer before)` says it is there already.
    pub fn remember_tag(&self, slot: TagSlot<'_>, digest: &Digest, now: u64, republish: impl Fn(Option<&TagAnswer>) -> bool) -> sled::Result<()> {
        let mut publish = None;
        self.index.update_tag(slot.repo, slot.tag, slot.kind, |before| {
            let again = self.shared.is_some() && republish(before);
            let published_at = if again { Some(now) } else { before.and_then(|b| b.published_at) };
            let known = TagAnswer { digest: digest.clone(), checked_at: now, published_at };
            publish = again.then(|| known.clone());
            known
        })?;
        if let (Some(shared), Some(known)) = (&self.shared, publish) {
            shared.publish_tag(slot.repo, slot.tag, slot.kind, &known);
        }
        Ok(())
    }

    /// The last referrers list of `digest` seen: by this node, else by another (the shared tier),
    /// at most `max` bytes of it.
    pub async fn referrers(&self, repo: &UpstreamRepo, digest: &Digest, max: usize) -> sled::Result<Option<Bytes>> {
        if let Some(body) = self.index.referrers(repo, digest)? {
            return Ok(Some(body));
        }
        Ok(match &self.shared {
            Some(shared) => shared.referrers(repo, digest, max).await,
            None => None,
        })
    }

    /// Remember the referrers list the upstream gave for `digest`, and publish it.
    pub fn remember_referrers(&self, repo: &UpstreamRepo, digest: &Digest, body: Bytes) -> sled::Result<()> {
        self.index.put_referrers(repo, digest, &body)?;
        self.note_growth();
        if let Some(shared) = &self.shared {
            shared.publish_referrers(repo, digest, body);
        }
        Ok(())
    }

    /// The tag list of `repo` remembered last: this node's, or the shared tier's when it is newer.
    pub async fn tag_list(&self, repo: &UpstreamRepo) -> sled::Result<Option<ListedTags>> {
        let mut list = self.index.tag_list(repo)?;
        if let Some(shared) = &self.shared {
            if let Some(theirs) = shared.tag_list(repo).await {
                if list.as_ref().is_none_or(|l| theirs.updated_at > l.updated_at) {
                    list = Some(theirs);
                }
            }
        }
        Ok(list)
    }

    /// Remember `update(the list remembered)` as the tag list of `repo`, and publish it when
    /// `update` says so (its `bool`).
    pub fn remember_tag_list(
        &self,
        repo: &UpstreamRepo,
        update: impl FnOnce(Option<ListedTags>) -> (ListedTags, bool),
    ) -> sled::Result<()> {
        let mut publish = false;
        let (_, new) = self.index.update_tag_list(repo, |old| {
            let (new, again) = update(old);
            publish = again;
            new
        })?;
        if let Some(shared) = self.shared.as_ref().filter(|_| publish) {
            shared.publish_tag_list(repo, &new);
        }
        Ok(())
    }
}
