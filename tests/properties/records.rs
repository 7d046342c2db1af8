//! What the index and the shared bucket hold, read back: tag lists, access summaries, manifest
//! records. Any node, or anyone with the bucket's keys, may have written them.

use proptest::prelude::*;
use regcache::oci::Digest;
use regcache::store::bucket_lru::{parse_summary, summaries, MAX_SUMMARY_ENTRIES};
use regcache::store::ListedTags;
use serde_json::json;

use super::{config, oracle};

fn digest() -> impl Strategy<Value = Digest> {
    any::<Vec<u8>>().prop_map(|b| Digest::sha256_of(&b))
}

/// Tags, mostly valid, some not.
fn tags() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof![4 => "[A-Za-z0-9_][A-Za-z0-9._-]{0,12}", 1 => "[ -~]{0,8}", 1 => Just("a".repeat(129))], 0..20)
}

proptest! {
    #![proptest_config(config(256, "tests/properties/regressions/records.txt"))]

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
