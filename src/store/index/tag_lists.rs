//! The last tag list each upstream gave per repository ([`ListedTags`]), kept to answer
//! `tags/list` while the upstream can't be asked, within bounds of their own: at most
//! [`MAX_LISTED_TAGS`] tags per repository, [`MAX_LISTED_REPOSITORIES`] repositories and
//! [`MAX_LISTED_BYTES`] in all, the list remembered longest ago forgotten first. A list and its
//! place in `tag_list_order` change together, in one transaction.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional};

use super::Index;
use crate::oci::{Tag, UpstreamRepo, MAX_TAG_LEN};
use crate::sync::lock;

/// The most tags remembered of one repository's list: one whole page (`cache::MAX_TAGS_PAGE`).
/// Past it the lexically first are kept, so a list read from its start is right as far as it goes.
pub const MAX_LISTED_TAGS: usize = 10_000;
/// The most repositories whose tag list is remembered (per node); past it the list remembered
/// longest ago is forgotten.
pub const MAX_LISTED_REPOSITORIES: usize = 10_000;
/// The most bytes the remembered tag lists take in all; past it the list remembered longest ago is
/// forgotten. (10,000 repositories of 10,000 tags of 128 characters would be 13 GB.)
pub const MAX_LISTED_BYTES: u64 = 64 * 1024 * 1024;
/// The largest tag-list record read back, from the index or the shared bucket: [`MAX_LISTED_TAGS`]
/// of the longest tags, quoted and comma-separated, and room for the rest of the record.
pub const MAX_TAG_LIST_RECORD: usize = MAX_LISTED_TAGS * (MAX_TAG_LEN + 3) + 256;
// The newest list is never the one forgotten for the bytes: two of the largest fit.
const _: () = assert!(2 * (MAX_TAG_LIST_RECORD as u64 + 8) <= MAX_LISTED_BYTES);

/// What the remembered tag lists take, and the next write's place in their order.
pub(super) struct TagListBook {
    next: u64,
    count: usize,
    bytes: u64,
    limits: TagListLimits,
}

/// How many tag lists are remembered, and how many bytes they may take ([`MAX_LISTED_REPOSITORIES`],
/// [`MAX_LISTED_BYTES`]; tests lower them).
#[derive(Clone, Copy, Debug)]
pub(super) struct TagListLimits {
    repositories: usize,
    bytes: u64,
}

/// The last tag list an upstream gave for a repository, kept to answer `tags/list` while the
/// upstream can't be asked (see `Cache::tags` for how it is learnt): sorted, without duplicates,
/// every entry a valid tag, at most [`MAX_LISTED_TAGS`] of them. Also the shared bucket's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedTags {
    tags: Vec<String>,
    /// Unix seconds when an upstream answer last went into it.
    pub updated_at: u64,
    /// Unix seconds when the upstream last gave the whole list (from its start, to its end), if it
    /// ever did: a tag resolved before then and missing from it was no longer upstream.
    pub complete_at: Option<u64>,
    /// Unix seconds when it was last written to the shared bucket (0: never).
    pub published_at: u64,
}

impl ListedTags {
    /// A list of `tags` (in any order, with duplicates; what isn't a valid tag is left out, and past
    /// [`MAX_LISTED_TAGS`] the lexically last).
    pub fn new(tags: impl IntoIterator<Item = String>, updated_at: u64, complete_at: Option<u64>) -> ListedTags {
        let mut tags: Vec<String> = tags.into_iter().filter(|t| t.parse::<Tag>().is_ok()).collect();
        tags.sort_unstable();
        tags.dedup();
        tags.truncate(MAX_LISTED_TAGS);
        ListedTags { tags, updated_at, complete_at, published_at: 0 }
    }

    /// The tags, sorted.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The tags, sorted.
    pub fn into_tags(self) -> Vec<String> {
        self.tags
    }

    /// The record: JSON.
    pub fn to_record(&self) -> Vec<u8> {
        // Serialising strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The list in a record (from the index or the shared bucket, where any node, or anyone with its
    /// keys, may write), if it is one regcache writes: at most [`MAX_TAG_LIST_RECORD`] bytes, at
    /// most [`MAX_LISTED_TAGS`] tags, every one a valid tag.
    pub fn from_record(record: &[u8]) -> Option<ListedTags> {
        #[derive(Deserialize)]
        struct Raw {
            tags: Vec<String>,
            updated_at: u64,
            complete_at: Option<u64>,
            #[serde(default)]
            published_at: u64,
        }
        if record.len() > MAX_TAG_LIST_RECORD {
            return None;
        }
        let raw: Raw = serde_json::from_slice(record).ok()?;
        if raw.tags.len() > MAX_LISTED_TAGS || !raw.tags.iter().all(|t| t.parse::<Tag>().is_ok()) {
            return None;
        }
        let list = ListedTags::new(raw.tags, raw.updated_at, raw.complete_at);
        Some(ListedTags { published_at: raw.published_at, ..list })
    }
}

/// The `tag_lists` value: its place in the order, then the record.
fn tag_list_value(place: u64, list: &ListedTags) -> Vec<u8> {
    [&place.to_be_bytes()[..], &list.to_record()].concat()
}

/// The place in the order of a `tag_lists` value.
fn place_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// The list in a `tag_lists` value.
fn listed_of(value: &[u8]) -> Option<ListedTags> {
    ListedTags::from_record(value.get(8..)?)
}

/// A transaction's storage error (the closures here never abort).
fn storage_error(e: TransactionError<std::convert::Infallible>) -> sled::Error {
    match e {
        TransactionError::Storage(e) => e,
        TransactionError::Abort(never) => match never {},
    }
}

impl TagListBook {
    /// The book of the lists in `lists` (their count and bytes) and `order` (the next place).
    pub(super) fn open(lists: &sled::Tree, order: &sled::Tree) -> sled::Result<TagListBook> {
        let mut book = TagListBook {
            next: 0,
            count: 0,
            bytes: 0,
            limits: TagListLimits { repositories: MAX_LISTED_REPOSITORIES, bytes: MAX_LISTED_BYTES },
        };
        for kv in lists.iter() {
            let (_, v) = kv?;
            book.count += 1;
            book.bytes = book.bytes.saturating_add(v.len() as u64);
        }
        if let Some((place, _)) = order.last()? {
            book.next = place_of(&place).unwrap_or(0).saturating_add(1);
        }
        Ok(book)
    }
}

pub(super) fn tag_list_key(repo: &UpstreamRepo) -> Vec<u8> {
    format!("{}\0{}", repo.upstream, repo.name).into_bytes()
}

impl Index {
    /// The tag list last remembered for a repository, if any (a value that isn't a valid record is
    /// none).
    pub fn tag_list(&self, repo: &UpstreamRepo) -> sled::Result<Option<ListedTags>> {
        Ok(self.t()?.tag_lists.get(tag_list_key(repo))?.as_deref().and_then(listed_of))
    }

    /// Remember `update(the list remembered now)` as a repository's tag list, the newest of all; then
    /// forget the lists remembered longest ago while more than [`MAX_LISTED_REPOSITORIES`] are kept
    /// or they take more than [`MAX_LISTED_BYTES`]. The list before and after. A few sled operations
    /// per list written or forgotten, each O(log n).
    pub fn update_tag_list(
        &self,
        repo: &UpstreamRepo,
        update: impl FnOnce(Option<ListedTags>) -> ListedTags,
    ) -> sled::Result<(Option<ListedTags>, ListedTags)> {
        let key = tag_list_key(repo);
        let t = self.w()?;
        let mut book = lock(&self.tag_list_book);
        let old = t.tag_lists.get(&key)?;
        let before = old.as_deref().and_then(listed_of);
        let after = update(before.clone());
        let place = book.next;
        let value = tag_list_value(place, &after);
        let old_place = old.as_deref().and_then(place_of);
        (&t.tag_lists, &t.tag_list_order)
            .transaction(|(lists, order)| -> ConflictableTransactionResult<(), std::convert::Infallible> {
                if let Some(p) = old_place {
                    order.remove(&p.to_be_bytes())?;
                }
                lists.insert(key.as_slice(), value.as_slice())?;
                order.insert(&place.to_be_bytes(), key.as_slice())?;
                Ok(())
            })
            .map_err(storage_error)?;
        book.next = place.saturating_add(1);
        match &old {
            Some(old) => book.bytes = book.bytes.saturating_sub(old.len() as u64),
            None => book.count += 1,
        }
        book.bytes = book.bytes.saturating_add(value.len() as u64);
        while book.count > book.limits.repositories || book.bytes > book.limits.bytes {
            let Some((oldest, key)) = t.tag_list_order.first()? else { break };
            let place = place_of(&oldest);
            let forgotten = (&t.tag_lists, &t.tag_list_order)
                .transaction(|(lists, order)| -> ConflictableTransactionResult<Option<usize>, std::convert::Infallible> {
                    order.remove(&oldest)?;
                    // Only the list written at that place (written since, it has another).
                    let Some(v) = lists.get(&key)?.filter(|v| place_of(v) == place) else { return Ok(None) };
                    lists.remove(&key)?;
                    Ok(Some(v.len()))
                })
                .map_err(storage_error)?;
            if let Some(len) = forgotten {
                book.count = book.count.saturating_sub(1);
                book.bytes = book.bytes.saturating_sub(len as u64);
            }
        }
        Ok((before, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(tags: &[&str], at: u64) -> ListedTags {
        ListedTags::new(tags.iter().map(|t| t.to_string()), at, Some(at))
    }

    /// The repositories whose tag list is remembered, of `names`.
    fn remembered(idx: &Index, names: &[&UpstreamRepo]) -> Vec<String> {
        names.iter().filter(|r| idx.tag_list(r).unwrap().is_some()).map(|r| r.name.to_string()).collect()
    }

    #[test]
    fn a_tag_list_keeps_valid_tags_sorted_and_at_most_max_listed_tags() {
        let many = (0..MAX_LISTED_TAGS + 5).rev().map(|i| format!("t{i:05}"));
        let list = ListedTags::new(many.chain(["not a tag".to_owned(), ".x".to_owned(), "t00001".to_owned()]), 1, None);
        assert_eq!(list.tags().len(), MAX_LISTED_TAGS);
        assert_eq!((list.tags()[0].as_str(), list.tags()[MAX_LISTED_TAGS - 1].as_str()), ("t00000", "t09999"), "the lexically first");
        let record = list.to_record();
        assert!(record.len() <= MAX_TAG_LIST_RECORD);
        assert_eq!(ListedTags::from_record(&record), Some(list));
        let longest = ListedTags::new((0..MAX_LISTED_TAGS).map(|i| format!("{i:0128}")), u64::MAX, Some(u64::MAX));
        assert!(longest.to_record().len() <= MAX_TAG_LIST_RECORD, "the largest list regcache writes is read back");

        // Read back as outside input.
        let too_many = format!(r#"{{"tags":[{}],"updated_at":1,"complete_at":null}}"#, vec![r#""a""#; MAX_LISTED_TAGS + 1].join(","));
        for (why, record) in [
            ("not JSON", b"<html>".to_vec()),
            ("a tag that isn't one", br#"{"tags":["a","\u001b[2J"],"updated_at":1,"complete_at":null}"#.to_vec()),
            ("too many tags", too_many.into_bytes()),
            ("too large", [br#"{"tags":[],"updated_at":1,"complete_at":null,"x":""#.as_slice(), &vec![b'x'; MAX_TAG_LIST_RECORD], b"\"}"].concat()),
            ("no times", br#"{"tags":["a"]}"#.to_vec()),
        ] {
            assert_eq!(ListedTags::from_record(&record), None, "{why}");
        }
        let unsorted = ListedTags::from_record(br#"{"tags":["b","a","b"],"updated_at":1,"complete_at":1}"#).unwrap();
        assert_eq!(unsorted.tags(), ["a", "b"]);
    }

    #[test]
    fn tag_lists_are_bounded_and_the_one_remembered_longest_ago_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let repos: Vec<UpstreamRepo> = (1..=6).map(|i| UpstreamRepo::of("docker.io", &format!("org/r{i}"))).collect();
        let all: Vec<&UpstreamRepo> = repos.iter().collect();
        let limits = TagListLimits { repositories: 3, bytes: u64::MAX };
        {
            let idx = Index::open(&path).unwrap();
            lock(&idx.tag_list_book).limits = limits;
            for r in &repos[..3] {
                idx.update_tag_list(r, |_| listed(&["a"], 1)).unwrap();
            }
            assert_eq!(remembered(&idx, &all), ["org/r1", "org/r2", "org/r3"]);
            // r1 written again is the newest: r2 goes for r4.
            let (before, after) = idx.update_tag_list(&repos[0], |old| {
                let old = old.unwrap();
                ListedTags::new(old.tags().iter().cloned().chain(["b".to_owned()]), 2, old.complete_at)
            }).unwrap();
            assert_eq!((before.unwrap().tags(), after.tags()), (&["a".to_owned()][..], &["a".to_owned(), "b".to_owned()][..]));
            idx.update_tag_list(&repos[3], |_| listed(&["a"], 3)).unwrap();
            assert_eq!(remembered(&idx, &all), ["org/r1", "org/r3", "org/r4"]);
            assert_eq!(idx.tag_list(&repos[0]).unwrap().unwrap().tags(), ["a", "b"]);
            assert_eq!(idx.tag_list(&UpstreamRepo::of("ghcr.io", "org/r1")).unwrap(), None, "per upstream");
            idx.flush().unwrap();
        }
        // Counted again at open, in the same order.
        let idx = Index::open(&path).unwrap();
        lock(&idx.tag_list_book).limits = limits;
        idx.update_tag_list(&repos[4], |_| listed(&["a"], 4)).unwrap();
        assert_eq!(remembered(&idx, &all), ["org/r1", "org/r4", "org/r5"]);
        assert_eq!(idx.t().unwrap().tag_list_order.len(), 3, "one place per list");

        // Bytes bound them too: a large list pushes out the oldest ones until they fit.
        let value_len = |tags: &[&str]| tag_list_value(0, &listed(tags, 5)).len() as u64;
        let big: Vec<String> = (0..100).map(|i| format!("tag-{i:03}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        lock(&idx.tag_list_book).limits = TagListLimits { repositories: 10, bytes: value_len(&big) + 2 * value_len(&["a"]) };
        idx.update_tag_list(&repos[5], |_| listed(&big, 5)).unwrap();
        assert_eq!(remembered(&idx, &all), ["org/r4", "org/r5", "org/r6"]);
        let book = lock(&idx.tag_list_book);
        assert_eq!((book.count, book.bytes), (3, value_len(&big) + 2 * value_len(&["a"])));
    }
}
