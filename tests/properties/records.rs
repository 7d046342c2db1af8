//! What the index and the shared bucket hold, read back: tag lists, access summaries, manifest
//! records, the bucket's record keys, the index's tag entries and sizes. Any node, or anyone with
//! the bucket's keys, may have written them; what sled holds may be anything after a crash or a
//! disk error.

use std::collections::BTreeMap;

use proptest::prelude::*;
use regcache::oci::{Digest, ManifestKind};
use regcache::store::bucket_lru::{parse_summary, summaries, MAX_SUMMARY_ENTRIES};
use regcache::store::{blob_size_of, parse_tag, ListedTags, TagAnswer};
use serde_json::json;

use super::{config, oracle};

fn digest() -> impl Strategy<Value = Digest> {
    any::<Vec<u8>>().prop_map(|b| Digest::sha256_of(&b))
}

/// Tags, mostly valid, some not.
fn tags() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof![4 => "[A-Za-z0-9_][A-Za-z0-9._-]{0,12}", 1 => "[ -~]{0,8}", 1 => Just("a".repeat(129))], 0..20)
}

/// One path component by the spec's grammar.
const COMPONENT: &str = "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}";

/// The parts of a key of any kind, each valid for its place (see `oracle::record_key_of`): an
/// upstream (any case, as configured), a repository name (or a node's summary name), a tag, a
/// fourth part whose length picks the kind of answer.
fn key_parts() -> impl Strategy<Value = Vec<String>> {
    let upstream = prop_oneof![
        "[a-zA-Z0-9]{1,8}(\\.[a-zA-Z]{2,3}){0,2}(:[0-9]{1,5})?",
        "\\[[0-9a-f:]{2,12}\\](:[0-9]{1,5})?",
        "[0-9a-z][0-9a-z-]{0,63}",
    ];
    let second = prop_oneof![prop::collection::vec(COMPONENT, 1..5).prop_map(|c| c.join("/")), "[A-Za-z0-9-]{1,20}"];
    (upstream, second, "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", "[a-z]{0,3}").prop_map(|(a, b, c, d)| vec![a, b, c, d])
}

/// Strings near record keys: a folder, then characters keys are made of (and some they aren't).
fn near_keys() -> impl Strategy<Value = String> {
    let folder = prop_oneof![Just("manifests/"), Just("tags/"), Just("referrers/"), Just("taglists/"), Just("nodes/"), Just("access/"), Just("")];
    (folder, "[a-zA-Z0-9._:/\\[\\]-]{0,80}").prop_map(|(f, rest)| format!("{f}{rest}"))
}

fn tag_answer() -> impl Strategy<Value = TagAnswer> {
    (digest(), any::<u64>(), prop::option::of(any::<u64>())).prop_map(|(digest, checked_at, published_at)| TagAnswer { digest, checked_at, published_at })
}

fn kind() -> impl Strategy<Value = ManifestKind> {
    prop_oneof![Just(ManifestKind::Index), Just(ManifestKind::Image), Just(ManifestKind::Schema1)]
}

/// The key the fuzzer found read back as another: `tags/DOCKER.io/…` was accepted and printed
/// lowered. No key reads back as another.
#[test]
fn an_upper_case_upstream_is_not_a_key_regcache_writes() {
    for key in ["tags/DOCKER.io/library/alpine/3/image", "taglists/Ghcr.io/org/app/_list"] {
        oracle::record_key(key);
        assert!(key.parse::<regcache::store::RecordKey>().is_err(), "{key}");
    }
}

/// What the fuzzer found (`record_key`): an upstream of dots was a plain host, so
/// `taglists/./…/_list` read as a key (one that names a folder out of its own). No key has a `.`
/// or `..` component, and no upstream is one.
#[test]
fn an_upstream_of_dots_is_no_key_and_no_host() {
    for key in ["taglists/./000-c0000000-c0/_list", "tags/../library/alpine/3/image"] {
        oracle::record_key(key);
        assert!(key.parse::<regcache::store::RecordKey>().is_err(), "{key}");
    }
    assert_eq!(oracle::record_key_of(3, &[".", "000-c0000000-c0"]), None);
    assert!(![".", "..", "-", ":5000"].into_iter().any(regcache::oci::is_plain_host));
}

/// What the fuzzer found (`records`): a summary line's time with a leading zero (or a sign) was
/// read as the number, not as a line regcache writes. It is skipped.
#[test]
fn a_summary_time_not_as_written_is_skipped() {
    let d = Digest::sha256_of(b"");
    for body in [format!("{d} 0100007000001\n"), format!("{d} +5\n"), format!("{d} 00\n")] {
        oracle::summary_record(body.as_bytes());
        assert_eq!(parse_summary(body.as_bytes()).count(), 0, "{body:?}");
    }
    assert_eq!(parse_summary(format!("{d} 0\n").as_bytes()).collect::<Vec<_>>(), vec![(d, 0)]);
}

proptest! {
    #![proptest_config(config(256, "tests/properties/regressions/records.txt"))]

    #[test]
    fn any_string_reads_only_as_the_key_it_prints(s in any::<String>()) {
        oracle::record_key(&s);
    }

    #[test]
    fn strings_near_keys_read_only_as_the_key_they_print(s in near_keys()) {
        oracle::record_key(&s);
    }

    #[test]
    fn keys_regcache_writes_read_back_as_written(kind in any::<u8>(), parts in key_parts(), flip in any::<prop::sample::Index>()) {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let key = oracle::record_key_of(kind, &parts);
        // Every upstream of the strategy is plain: only a second part that is no repository name
        // (or a node id or summary name the strategy made invalid) makes no key.
        let repo = parts[1].parse::<regcache::oci::RepositoryName>().is_ok();
        prop_assert!(key.is_some() || kind % 6 >= 4 || (kind % 6 != 0 && !repo), "{:?} {:?}", kind % 6, parts);
        if let Some(key) = key {
            oracle::written_record_key(&key);
            // Near what regcache writes: one letter in the other case reads as no key, or as a
            // key that prints it back exactly.
            let mut near = key.to_string().into_bytes();
            let i = flip.index(near.len());
            near[i] = if near[i].is_ascii_lowercase() { near[i].to_ascii_uppercase() } else { near[i].to_ascii_lowercase() };
            oracle::record_key(std::str::from_utf8(&near).unwrap());
        }
    }

    #[test]
    fn any_bytes_are_read_as_a_tag_entry_or_a_size_within_bounds(v in any::<Vec<u8>>()) {
        oracle::tag_entry_record(&v);
        oracle::blob_size_record(&v);
    }

    #[test]
    fn tag_entries_read_back_as_written(answers in prop::collection::btree_map(kind(), tag_answer(), 0..4)) {
        oracle::written_tag_answers(&answers);
    }

    #[test]
    fn a_tag_entry_of_one_digest_for_every_kind_reads_as_of_unknown_kind(answer in tag_answer()) {
        let legacy = serde_json::to_vec(&answer).unwrap();
        oracle::tag_entry_record(&legacy);
        let entry = parse_tag(&legacy).expect("a legacy entry");
        prop_assert_eq!(entry.answers, BTreeMap::new());
        prop_assert_eq!(entry.unknown, Some(answer));
    }

    #[test]
    fn sizes_read_back_as_written(size in any::<u64>()) {
        oracle::blob_size_record(&size.to_be_bytes());
        prop_assert_eq!(blob_size_of(&size.to_be_bytes()), size);
    }

    #[test]
    fn any_bytes_are_read_within_bounds(record in any::<Vec<u8>>()) {
        oracle::tag_list_record(&record);
        oracle::summary_record(&record);
        oracle::manifest_record(&record, &Digest::sha256_of(&record));
    }

    #[test]
    fn tag_list_records_read_back_as_written(tags in tags(), updated_at in any::<u64>(), complete_at in prop::option::of(any::<u64>())) {
        let list = ListedTags::new(tags.clone(), updated_at, complete_at);
        let record = list.to_record();
        oracle::tag_list_record(&record);
        prop_assert_eq!(ListedTags::from_record(&record), Some(list.clone()));
        let mut valid: Vec<String> = tags.iter().filter(|t| oracle::spec_tag(t)).cloned().collect();
        valid.sort();
        valid.dedup();
        prop_assert_eq!(list.tags(), &valid[..]);
        // Written by another node: an invalid tag refuses the whole record.
        let raw = serde_json::to_vec(&json!({"tags": tags, "updated_at": updated_at, "complete_at": complete_at})).unwrap();
        oracle::tag_list_record(&raw);
        prop_assert_eq!(ListedTags::from_record(&raw).is_some(), tags.iter().all(|t| oracle::spec_tag(t)));
    }

    #[test]
    fn summaries_read_back_as_written(
        accesses in prop::collection::vec((digest(), any::<u64>()), 0..40),
        node in "[0-9a-f]{16}",
        now in any::<u64>(),
        compacted in any::<bool>(),
    ) {
        let written = summaries(&node, now, compacted, &accesses);
        prop_assert_eq!(written.len(), accesses.len().div_ceil(MAX_SUMMARY_ENTRIES));
        let mut read = Vec::new();
        for (key, body) in &written {
            prop_assert!(key.starts_with(&format!("access/{}/", node)), "{}", key);
            oracle::summary_record(body);
            read.extend(parse_summary(body));
        }
        prop_assert_eq!(read, accesses);
    }

    #[test]
    fn a_summary_line_with_a_huge_time_is_skipped_not_wrapped(d in digest(), digits in "[1-9][0-9]{20,60}") {
        let body = format!("{} {}\n{} 5\n", d, digits, d);
        oracle::summary_record(body.as_bytes());
        prop_assert_eq!(parse_summary(body.as_bytes()).collect::<Vec<_>>(), vec![(d, 5)]);
    }

    #[test]
    fn manifest_records_read_back_only_as_their_digest(media_type in prop_oneof![Just("application/vnd.oci.image.index.v1+json"), Just("application/json")], n in 0..5usize, flip in any::<prop::sample::Index>()) {
        let manifests: Vec<_> = (0..n).map(|i| json!({"digest": Digest::sha256_of(&[i as u8]).to_string(), "size": i})).collect();
        let body = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap();
        let digest = Digest::sha256_of(&body);
        let record = [media_type.as_bytes(), b"\0", &body].concat();
        oracle::manifest_record(&record, &digest);
        prop_assert!(regcache::store::read_manifest_record(record.clone().into(), &digest).is_ok());
        let mut tampered = record.clone();
        let i = media_type.len() + 1 + flip.index(body.len());
        tampered[i] ^= 1;
        oracle::manifest_record(&tampered, &digest);
        prop_assert!(regcache::store::read_manifest_record(tampered.into(), &digest).is_err());
    }
}
