//! Request paths and query strings. The first byte picks the method; the rest is the path, and
//! after the first `?` the query.
#![no_main]

use http::Method;

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else { return };
    let Ok(target) = std::str::from_utf8(rest) else { return };
    let methods = [Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::DELETE, Method::PATCH];
    let method = &methods[usize::from(*first) % methods.len()];
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    oracle::route_and_query(method, path, query);
});
