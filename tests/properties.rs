//! Property tests of every parser of outside input, from a fixed seed (the same cases every run;
//! `PROPTEST_SEED=<n>` explores others), with the cases that ever failed saved under
//! `tests/properties/regressions/` and replayed first. The fuzz targets in `fuzz/` check the same
//! properties (`properties::oracle`) on libFuzzer's inputs (`scripts/fuzz.sh`); what they found is
//! kept here as named regression cases.
//!
//! - `properties::oracle`: the properties themselves, as functions of any input (shared with `fuzz/`),
//!   and the allocation bound every parser keeps.
//! - `properties::names`: repository names, tags, digests, references, images as people write them.
//! - `properties::manifests`: references of every manifest format; verification, schema1 payloads.
//! - `properties::upstream`: `WWW-Authenticate` challenges, token responses.
//! - `properties::requests`: routes and query strings, `Range`, `Accept`, Basic credentials.
//! - `properties::config`: the configuration file and the htpasswd file it names.
//! - `properties::records`: what the index and the shared bucket hold: tag lists, access
//!   summaries, manifest records.

mod properties {
    pub mod oracle;

    mod config;
    mod manifests;
    mod names;
    mod records;
    mod requests;
    mod upstream;

    use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

    /// The seed every property runs from, unless `PROPTEST_SEED` names another.
    const SEED: u64 = 0x5eed_2026_1207;

    /// A run of `cases` cases from the fixed seed, replaying (and saving) failures in
    /// `regressions`, a file under `tests/properties/regressions/`.
    pub fn config(cases: u32, regressions: &'static str) -> Config {
        let seed = std::env::var("PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
        Config {
            cases,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
            ..Config::default()
        }
    }
}
