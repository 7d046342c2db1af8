//! Tags: a manifest by tag (remembered, revalidated and served stale as [`super::freshness`]
//! decides; one revalidation per [`TagKey`] at a time, through the tag's owner in a fleet:
//! [`super::fleet_tag`]), and `tags/list` pages, cut here from what the upstream listed, which is
//! remembered to cut the same pages while it is down.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::fleet_tag::{self, Revalidated};
use super::freshness::{self, Action, Decision, SharedSays, Which};
use super::manifest::{answer, head_only, ManifestAnswer};
use super::{Answered, Cache, CacheError, ServedFrom};
use crate::fill::Via;
use crate::fleet::{self, auth::current_request_id, peer::TagAsk};
use crate::oci::{AcceptList, Digest, ManifestKind, Reference, RepositoryName, Tag, UpstreamRepo};
use crate::store::{ListedTags, TagAnswer, TagSlot};
use crate::upstream::{ManifestHead, RateLimit, TagsPage, Upstream, UpstreamError};

/// The most tags one page lists: a larger `n` is lowered to this.
pub const MAX_TAGS_PAGE: u32 = 10_000;
/// The most upstream requests one page of tags takes, following an upstream that cuts its pages
/// shorter than asked ([`upstream_tags`]).
const MAX_UPSTREAM_TAG_PAGES: usize = 100;

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
pub(super) struct TagKey {
    /// The name upstream knows (`library/alpine`, not `alpine`).
    repo: UpstreamRepo,
    tag: Tag,
    /// [`AcceptList::key`].
    accept: String,
    /// Whether members of the fleet are asked before the upstream: a member's request is never
    /// passed on, so it never shares a revalidation that asks members.
    members: bool,
}

/// One request for a manifest by tag, as the cache answers it.
struct TagRequest<'a> {
    up: &'a Arc<Upstream>,
    /// The repository as the client named it.
    repo: &'a RepositoryName,
    /// The name upstream knows (`library/alpine`, not `alpine`): tags are kept under it, so
    /// `alpine` and `library/alpine` are one tag.
    key_repo: UpstreamRepo,
    tag: &'a Tag,
    accept: &'a AcceptList,
    /// Headers only.
    head: bool,
}

impl Cache {
    /// A manifest by tag: the answer remembered (here, or by another node in the shared bucket)
    /// while it is fresh, else what the upstream says now (in a fleet, what the tag's owner
    /// says: [`fleet_tag`]), else, while the upstream is unavailable, the answer remembered within
    /// `stale_max` ([`freshness::decide`]).
    pub(super) async fn manifest_by_tag(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let r = TagRequest { up, repo, key_repo: up.repo(repo), tag, accept, head };
        let (remembered, decision, fresh) = self.fresh_tag(&r).await?;
        if let Some(a) = fresh {
            return Ok(a);
        }
        match self.revalidate_tag(&r, &self.via, remembered.as_ref()).await {
            Err(CacheError::Upstream(e)) if e.is_unavailable() => {
                let stale = match remembered.as_ref().filter(|_| decision.stale) {
                    Some(known) => self.tag_answer(known, accept, Answered::Stale).await?,
                    None => None,
                };
                match stale {
                    Some(a) => {
                        tracing::warn!(upstream = %up.config().name, %repo, %tag, error = %e, "upstream unavailable; serving the last known tag");
                        Ok(a)
                    }
                    None => Err(e.into()),
                }
            }
            other => other,
        }
    }

    /// A manifest by tag for a member of the fleet that asked this node (its owner, as the member
    /// sees it): the answer remembered while it is fresh, else what this node's upstream says now
    /// (never asking another member: a member's request ends here). Never a stale answer: the
    /// member then asks the upstream itself, and serves its own stale answer as without a fleet.
    pub async fn tag_for_member(
        &self,
        up: &Arc<Upstream>,
        repo: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let r = TagRequest { up, repo, key_repo: up.repo(repo), tag, accept, head };
        if let (_, _, Some(a)) = self.fresh_tag(&r).await? {
            return Ok(a);
        }
        self.revalidate_tag(&r, &Via::Upstream, None).await
    }

    /// The answer remembered for `r`'s tag (here, or in the shared tier), what to do with it, and
    /// the manifest to serve as a hit when it is fresh, stored and acceptable. A tag is remembered
    /// per kind of answer: a client is only answered from the cache with what a client asking for
    /// the same kind was given.
    async fn fresh_tag(&self, r: &TagRequest<'_>) -> Result<(Option<TagAnswer>, Decision, Option<ManifestAnswer>), CacheError> {
        let (remembered, decision) = self.remembered_tag(r.up, &r.key_repo, r.tag, r.accept.asks_for()).await?;
        let fresh = match (&remembered, decision.action) {
            (Some(known), Action::Serve) => self.tag_answer(known, r.accept, Answered::Hit).await?,
            _ => None,
        };
        Ok((remembered, decision, fresh))
    }

    /// Ask what the tag points at now ([`Cache::revalidation`]) and answer: from the cache when
    /// that manifest is stored and acceptable, with a member's verified manifest, from the
    /// `HEAD`'s headers alone for a `HEAD` when they say everything, else by a GET. The tag is
    /// remembered (under the name upstream knows) for every answer, a headers-only one too: it is
    /// only served once its manifest is stored (here or in the bucket), and the client's next
    /// request is usually that manifest by digest (Docker, containerd), so the fleet's other nodes
    /// learn the tag without asking the upstream.
    async fn revalidate_tag(&self, r: &TagRequest<'_>, via: &Via, remembered: Option<&TagAnswer>) -> Result<ManifestAnswer, CacheError> {
        let kind = r.accept.asks_for();
        let reference = Reference::Tag(r.tag.clone());
        let head_said = match self.revalidation(r, via, remembered).await? {
            Revalidated::Member(digest, Some(m)) => {
                self.remember_tag(&r.key_repo, r.tag, kind, &digest);
                return Ok(answer(digest, m, ServedFrom::Peer, Answered::Miss));
            }
            // Still the digest this node knows: as if the upstream's HEAD had said so.
            Revalidated::Member(digest, None) => Some(ManifestHead { digest, media_type: None, size: None, rate_limit: RateLimit::default() }),
            Revalidated::Upstream(h) => h,
        };
        let fetched = match head_said {
            Some(h) => {
                if let Some((m, from)) = self.stored_manifest(&h.digest).await? {
                    if r.accept.allows(&m.media_type) {
                        self.remember_tag(&r.key_repo, r.tag, kind, &h.digest);
                        return Ok(answer(h.digest, m, from, Answered::Hit));
                    }
                }
                if r.head {
                    if let Some(a) = head_only(h.clone(), r.accept) {
                        self.remember_tag(&r.key_repo, r.tag, kind, &h.digest);
                        return Ok(a);
                    }
                }
                // By the tag, not by the digest: an upstream that converts on the fly (schema1 for
                // a client without v2 types) can't serve the converted manifest by digest. The
                // bytes must still have the digest the HEAD announced.
                self.fetch_manifest(r.up, r.repo, &reference, r.accept, Some(h.digest)).await?
            }
            // No digest from a HEAD (or no HEAD at all at this upstream): GET by the tag.
            None => self.fetch_manifest(r.up, r.repo, &reference, r.accept, None).await?,
        };
        self.remember_tag(&r.key_repo, r.tag, kind, &fetched.digest);
        Ok(fetched)
    }

    /// What the tag names now, one revalidation per [`TagKey`] at a time: with `via` a fleet in
    /// which this node doesn't own the tag, the members ranked above it for the tag are asked
    /// first ([`fleet_tag::ask_members`]; told the digest `remembered` if its manifest is stored,
    /// so that an unchanged tag costs no bytes); else, or when none answers, the upstream's `HEAD`.
    async fn revalidation(&self, r: &TagRequest<'_>, via: &Via, remembered: Option<&TagAnswer>) -> Result<Revalidated, CacheError> {
        let name = r.up.config().name.to_string();
        let asked = match via {
            Via::Fleet(fleet) => {
                let members = fleet.members().sources(&fleet::tag_key(&r.key_repo, r.tag), Instant::now());
                (!members.is_empty()).then_some((fleet, members))
            }
            Via::Upstream => None,
        };
        let members = asked.is_some();
        let key = TagKey { repo: r.key_repo.clone(), tag: r.tag.clone(), accept: r.accept.key(), members };
        let ask = match asked {
            Some((fleet, members)) => {
                let known = match remembered {
                    Some(k) if self.stored_manifest(&k.digest).await?.is_some() => Some(k.digest.clone()),
                    _ => None,
                };
                let ask = TagAsk { upstream: name, repo: r.repo.clone(), tag: r.tag.clone(), accept: r.accept.clone(), known, request_id: current_request_id() };
                Some((fleet.clone(), members, ask))
            }
            None => None,
        };
        let (up, repo, accept, store) = (r.up.clone(), r.repo.clone(), r.accept.clone(), self.store.clone());
        let reference = Reference::Tag(r.tag.clone());
        self.revalidations
            .run(key, move || async move {
                if let Some((fleet, members, ask)) = ask {
                    if let Some(answer) = fleet_tag::ask_members(&fleet, &store, &up, members, &ask).await? {
                        return Ok(answer);
                    }
                }
                Ok(Revalidated::Upstream(up.head_manifest(&repo, &reference, &accept).await?))
            })
            .await
    }

    /// What `tag` pointed at for clients asking for `kind`, as the tiers remember it (a tier
    /// behind this node's is asked only when this node's answer isn't fresh), and what to do about
    /// it ([`freshness::decide`]).
    async fn remembered_tag(
        &self,
        up: &Upstream,
        repo: &UpstreamRepo,
        tag: &Tag,
        kind: ManifestKind,
    ) -> Result<(Option<TagAnswer>, Decision), CacheError> {
        let now = self.clock.now_secs();
        let decide = |local: Option<&TagAnswer>, shared| freshness::decide(local, shared, now, up.config().tag_ttl, up.config().stale_max);
        let slot = TagSlot { repo, tag, kind };
        let known = self.store.tag(slot, |local| decide(local, SharedSays::NotAsked).action == Action::AskShared).await?;
        let decision = match &known.shared {
            None => decide(known.local.as_ref(), SharedSays::NotAsked),
            Some(theirs) => decide(known.local.as_ref(), SharedSays::Answered(theirs.as_ref())),
        };
        let remembered = match decision.remembered {
            Some(Which::Local) => known.local,
            Some(Which::Shared) => known.shared.flatten(),
            None => None,
        };
        Ok((remembered, decision))
    }

    /// The manifest a remembered tag answer points at, if stored (here or in the shared bucket)
    /// and acceptable to the client.
    async fn tag_answer(&self, known: &TagAnswer, accept: &AcceptList, outcome: Answered) -> Result<Option<ManifestAnswer>, CacheError> {
        let Some((m, from)) = self.stored_manifest(&known.digest).await? else { return Ok(None) };
        if !accept.allows(&m.media_type) {
            return Ok(None);
        }
        Ok(Some(answer(known.digest.clone(), m, from, outcome)))
    }

    /// Remember that `tag` names `digest` for clients asking for `kind`, confirmed now (written to
    /// the tiers behind this node's unless [`freshness::republish_tag`] says they have it). The
    /// answer is the upstream's and is served even if the index can't take it (its disk full): that
    /// only costs a revalidation next time.
    fn remember_tag(&self, repo: &UpstreamRepo, tag: &Tag, kind: ManifestKind, digest: &Digest) {
        let now = self.clock.now_secs();
        let slot = TagSlot { repo, tag, kind };
        if let Err(e) = self.store.remember_tag(slot, digest, now, |before| freshness::republish_tag(before, digest, now)) {
            tracing::warn!(error = %e, %tag, "remembering a tag's answer failed; served, and revalidated next time");
        }
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
        let key_repo = up.repo(repo);
        match upstream_tags(up, repo, n, last).await {
            Ok(listed) => {
                self.remember_tag_list(&key_repo, &listed, n, last)?;
                Ok(tag_page(repo, listed.tags, n, last, listed.more, Answered::Pass, listed.rate_limit))
            }
            Err(e) if e.is_unavailable() => {
                let Some(known) = self.known_tags(up, &key_repo).await? else { return Err(e.into()) };
                tracing::warn!(upstream = %key_repo.upstream, %repo, error = %e, "upstream unavailable; listing the tags regcache knows");
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
        repo: &UpstreamRepo,
        listed: &TagsPage,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<(), CacheError> {
        let now = self.clock.now_secs();
        // Exactly `n` tags and no `Link` may be an upstream that cuts pages without saying so.
        let complete = last.is_none() && !listed.more && n.is_none_or(|n| listed.tags.len() != n as usize);
        // Sorted and cut to MAX_LISTED_TAGS here, not under the index's lock.
        let page = ListedTags::new(listed.tags.iter().cloned(), now, complete.then_some(now));
        self.store.remember_tag_list(repo, |old| {
            let mut new = match old.as_ref().filter(|_| !complete) {
                None => page,
                Some(old) => ListedTags::new(old.tags().iter().chain(page.tags()).cloned(), now, old.complete_at),
            };
            // An unchanged list is written again only now and then (`published_at` 0: never).
            let publish = old.as_ref().is_none_or(|o| {
                freshness::republish(o.tags() == new.tags(), Some(o.published_at).filter(|at| *at != 0), now)
            });
            new.published_at = match (&old, publish) {
                (Some(o), false) => o.published_at,
                _ => now,
            };
            (new, publish)
        })?;
        Ok(())
    }

    /// What regcache knows of a repository's tags while its upstream can't be asked: the last list
    /// remembered within `stale_max` (here, or newer in the shared bucket) merged with the tags
    /// resolved since ([`offline_tags`]); without one, the tags resolved. `None` when it knows none.
    async fn known_tags(&self, up: &Arc<Upstream>, repo: &UpstreamRepo) -> Result<Option<Vec<String>>, CacheError> {
        let list = self.store.tag_list(repo).await?.filter(|l| freshness::age(l.updated_at, self.clock.now_secs()) < up.config().stale_max);
        Ok(offline_tags(list, self.store.index().tags_of(repo)?))
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
    let mut after: BTreeSet<String> = listed.tags.iter().filter(|t| last.is_none_or(|l| t.as_str() > l)).cloned().collect();
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
}
