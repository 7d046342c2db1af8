//! The shared bucket's record keys, which a listing returns and anyone with the bucket's keys may
//! have written. The first byte picks the way: even, the rest is read as a key (it reads only as
//! the key it prints back); odd, it is cut at newlines into the parts of a key regcache writes
//! (the byte after it picks the kind; see `oracle::record_key_of`), which reads back as written.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else { return };
    if first % 2 == 0 {
        if let Ok(key) = std::str::from_utf8(rest) {
            oracle::record_key(key);
        }
        return;
    }
    let Some((kind, rest)) = rest.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let parts: Vec<&str> = text.split('\n').collect();
    if let Some(key) = oracle::record_key_of(*kind, &parts) {
        oracle::written_record_key(&key);
    }
});
