//! Which member owns a key: rendezvous (highest random weight) hashing, pinned as protocol.
//!
//! `score(member, key)` is the first 8 bytes, big-endian, of `sha256(member ‖ 0x00 ‖ key)`; the
//! highest-scoring member that is up owns the key, and the rest follow in score order for
//! failover. Written by hand on `sha2` alone (no hashing crate whose update could change a score):
//! every member of a fleet, whatever its version, must compute the same owner during a rolling
//! upgrade. A member joining or leaving moves only the keys it owns (see the property test).

use sha2::{Digest as _, Sha256};

use super::member::MemberId;

/// The score of `member` for `key`.
pub fn score(member: &MemberId, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_str().as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// `members` in order of their score for `key`, highest (the owner, when it is up) first. Equal
/// scores (practically never) are ordered by id, so every member computes the same order.
pub fn rank<'a>(members: &'a [MemberId], key: &str) -> Vec<&'a MemberId> {
    let mut scored: Vec<(u64, &MemberId)> = members.iter().map(|m| (score(m, key), m)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    use super::*;

    fn member(s: &str) -> MemberId {
        s.parse().unwrap()
    }

    #[test]
    fn the_pinned_vectors() {
        let (one, two, three) = (member("http://10.0.0.1:5000"), member("http://10.0.0.2:5000"), member("http://10.0.0.3:5000"));
        let members = [one.clone(), two.clone(), three.clone()];
        let zeros = format!("sha256:{}", "0".repeat(64));
        let other = "sha256:7100a0f667f5bf683c772688bd8e37659a9234698364419239749bcdeb656b6a";
        // (key, member, score) as the issue pins them.
        let cases: [(&str, &MemberId, u64); 6] = [
            (&zeros, &one, 0xf4f1f98dea30e0f0),
            (&zeros, &three, 0xe3c36ac559e0888e),
            (&zeros, &two, 0x0a6ea7c80b3b49ef),
            (other, &three, 0xad0f2604a4df8626),
            (other, &one, 0x974a7d1d581292fe),
            (other, &two, 0x6ab6ebb0f85a75ae),
        ];
        for (key, m, want) in cases {
            assert_eq!(score(m, key), want, "{m} {key}");
        }
        assert_eq!(rank(&members, &zeros), [&one, &three, &two]);
        assert_eq!(rank(&members, other), [&three, &one, &two]);
    }

    /// A member set of 1..12 distinct members and a key.
    fn members_and_keys() -> impl Strategy<Value = (Vec<u8>, Vec<String>)> {
        (
            proptest::collection::btree_set(0u8..40, 2..12).prop_map(|s| s.into_iter().collect::<Vec<_>>()),
            proptest::collection::vec("[0-9a-f]{64}", 1..40),
        )
    }

    #[test]
    fn churn_moves_only_the_keys_of_the_member_that_leaves_or_joins() {
        // A fixed seed: the same cases on every run.
        let config = Config { cases: 256, failure_persistence: None, ..Config::default() };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        runner
            .run(&(members_and_keys(), any::<prop::sample::Index>()), |((ids, keys), leaving)| {
                let all: Vec<MemberId> = ids.iter().map(|i| member(&format!("http://10.0.0.{i}:5000"))).collect();
                let gone = &all[leaving.index(all.len())];
                let rest: Vec<MemberId> = all.iter().filter(|m| *m != gone).cloned().collect();
                for hex in &keys {
                    let key = format!("sha256:{hex}");
                    let before = rank(&all, &key);
                    let after = rank(&rest, &key);
                    // Leaving: the order of the others is unchanged, so only the keys it owned move
                    // (to the next member in their order); joining is the same, read backwards.
                    let kept: Vec<&MemberId> = before.iter().copied().filter(|m| *m != gone).collect();
                    prop_assert_eq!(&after, &kept);
                    if before[0] != gone {
                        prop_assert_eq!(after[0], before[0]);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
