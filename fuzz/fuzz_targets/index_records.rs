//! What the index holds in sled and reads back without a schema: a tag's entry (its answers per
//! kind, or one legacy answer) and a blob's size (or an access time). After a crash, a disk error
//! or a downgrade the values may be any bytes. The first byte picks which parser reads the rest.
#![no_main]

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, value)) = data.split_first() else { return };
    match first % 2 {
        0 => oracle::tag_entry_record(value),
        _ => oracle::blob_size_record(value),
    }
});
