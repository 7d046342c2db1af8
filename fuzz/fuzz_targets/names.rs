//! Repository names, tags, digests, references and images as people write them: one string, read
//! every way.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        oracle::names(s);
    }
});
