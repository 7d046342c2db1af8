//! What the index and the shared bucket hold, which any node (or anyone with the bucket's keys)
//! may have written: tag list records, access summaries, manifest records. The first byte picks
//! which; a manifest record is read for the digest of its own bytes after the first NUL, or of
//! nothing.
#![no_main]

use regcache::oci::Digest;

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, record)) = data.split_first() else { return };
    match first % 3 {
        0 => oracle::tag_list_record(record),
        1 => oracle::summary_record(record),
        _ => {
            let body = record.iter().position(|b| *b == 0).map_or(&[][..], |i| &record[i + 1..]);
            oracle::manifest_record(record, &Digest::sha256_of(body));
        }
    }
});
