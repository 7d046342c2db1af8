//! Signed schema1 manifests: the input is the payload, signed in libtrust's layout; verified, its
//! digest is the sha256 of exactly the payload.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = std::str::from_utf8(data) {
        oracle::schema1(payload);
    }
});
