//! `Range` headers against blobs of any size: the first eight bytes are the size (big-endian), the
//! rest the header.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((size, value)) = data.split_first_chunk::<8>() else { return };
    if let Ok(value) = std::str::from_utf8(value) {
        oracle::range(value, u64::from_be_bytes(*size));
    }
});
