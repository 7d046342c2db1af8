//! Manifests from upstream: reference extraction and verification. The first byte picks the
//! `Content-Type` the upstream claims.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

/// What the upstream's `Content-Type` says, by the first byte.
const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json"),
    Some("application/vnd.docker.distribution.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
    Some("text/html"),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, bytes)) = data.split_first() else { return };
    oracle::manifest(bytes, CONTENT_TYPES[usize::from(*first) % CONTENT_TYPES.len()]);
});
