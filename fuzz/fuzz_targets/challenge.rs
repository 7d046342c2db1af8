//! `WWW-Authenticate` header values from upstream, one per line.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let values: Vec<&str> = s.split('\n').collect();
        oracle::challenges(&values);
    }
});
