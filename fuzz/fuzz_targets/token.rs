//! Token servers' answers.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::token_response(data);
});
