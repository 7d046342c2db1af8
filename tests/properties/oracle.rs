//! The properties every parser of outside input keeps, as functions of any input: the property
//! tests call them with generated inputs, the fuzz targets (`fuzz/`, which include this file) with
//! libFuzzer's. Each one panics on a violation.
//!
//! Besides what each parser promises, every one is held to one bound: what it allocates is at
//! most [`PER_BYTE`] bytes per byte it was given, plus [`FIXED`] — never proportional to a number
//! the input claims (a length, a count, a size, a range end).

// Each fuzz target uses a few of these.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method};
use regcache::access::{parse_basic, parse_htpasswd};
use regcache::config::{Config, Overrides};
use regcache::store::bucket_lru::parse_summary;
use regcache::store::{read_manifest_record, ListedTags};
use regcache::http::{parse_range, query, route, RepoRoute, Route, RouteErrorKind};
use regcache::oci::{
    is_registry_host, references, verify_manifest, AcceptList, Algorithm, Digest, ImageRef, ManifestError, ManifestKind, Reference,
    RepositoryName, Tag, MAX_TAG_LEN, SCHEMA1_SIGNED,
};
use regcache::upstream::{parse_challenges, parse_token_response, Challenge};

/// Bytes a parser may allocate per byte of input. Generous: a JSON document of nested one-key
/// objects is parsed up to three times (the manifest, and a signed schema1's payload and copy),
/// each a tree node of several hundred bytes per six bytes of input.
pub const PER_BYTE: usize = 1024;
/// Bytes a parser may allocate whatever its input.
pub const FIXED: usize = 64 * 1024;
/// The most tags a remembered tag list holds (the index's `MAX_LISTED_TAGS`).
pub const MAX_LISTED_TAGS: usize = 10_000;

/// Counts the bytes each thread asks the allocator for, to hold parsers to [`PER_BYTE`].
pub mod alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// The system allocator, counting.
    pub struct Counting;

    thread_local! {
        /// Bytes this thread asked for so far (a grown allocation counts its new size again).
        static REQUESTED: Cell<usize> = const { Cell::new(0) };
    }

    fn count(n: usize) {
        // `try_with`: never a panic inside the allocator, even while the thread is ending.
        let _ = REQUESTED.try_with(|c| c.set(c.get().saturating_add(n)));
    }

    // SAFETY: every call is passed on to the system allocator unchanged; counting touches only a
    // thread-local integer, which never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// What `f` returns, and the bytes it asked the allocator for (on this thread).
    pub fn requested<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = REQUESTED.with(Cell::get);
        let out = f();
        (out, REQUESTED.with(Cell::get).saturating_sub(before))
    }
}

/// `f`'s result, asserting that it allocated at most what `len` bytes of input allow.
pub fn bounded<T>(what: &str, len: usize, f: impl FnOnce() -> T) -> T {
    let (out, bytes) = alloc::requested(f);
    let allowed = len.saturating_mul(PER_BYTE).saturating_add(FIXED);
    assert!(bytes <= allowed, "{what}: {bytes} bytes allocated for {len} bytes of input (at most {allowed})");
    out
}

/// Whether `c` matches the spec's path component, `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: a matcher
/// of the regular expression, written apart from regcache's own check.
pub fn spec_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let run = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && alnum(b[*i]) {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    if !run(&mut i) {
        return false;
    }
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !run(&mut i) {
            return false;
        }
    }
    true
}

/// Whether `s` is a tag by the spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn spec_tag(s: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = s.chars();
    chars.next().is_some_and(word) && chars.all(|c| word(c) || c == '.' || c == '-') && s.len() <= MAX_TAG_LEN
}

/// Repository names: exactly the spec's grammar, at most 255 bytes, and a name prints back to the
/// text it was parsed from.
pub fn repository_name(s: &str) {
    let parsed = bounded("RepositoryName", s.len(), || s.parse::<RepositoryName>());
    let spec = !s.is_empty() && s.len() <= 255 && s.split('/').all(spec_component);
    assert_eq!(parsed.is_ok(), spec, "{s:?}: parsed {parsed:?}, the spec says {spec}");
    if let Ok(name) = parsed {
        assert_eq!(name.as_str(), s);
        assert_eq!(name.to_string(), s);
        assert_eq!(name.components(), s.split('/').count());
        assert_eq!(name.to_string().parse::<RepositoryName>().as_ref(), Ok(&name));
    }
}

/// Tags: exactly the spec's grammar; a tag prints back to its text.
pub fn tag(s: &str) {
    let parsed = bounded("Tag", s.len(), || s.parse::<Tag>());
    assert_eq!(parsed.is_ok(), spec_tag(s), "{s:?}: {parsed:?}");
    if let Ok(t) = parsed {
        assert_eq!(t.as_str(), s);
        assert_eq!(t.to_string(), s);
    }
}

/// Digests: a known algorithm and lower-case hex of its length, nothing else; a digest prints
/// back to its text and is safe in a path.
pub fn digest(s: &str) {
    let parsed = bounded("Digest", s.len(), || s.parse::<Digest>());
    let lower_hex = |h: &str, n: usize| h.len() == n && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let spec = match s.split_once(':') {
        Some(("sha256", h)) => lower_hex(h, 64),
        Some(("sha512", h)) => lower_hex(h, 128),
        _ => false,
    };
    assert_eq!(parsed.is_ok(), spec, "{s:?}: {parsed:?}");
    if let Ok(d) = parsed {
        assert_eq!(d.to_string(), s);
        assert_eq!(format!("{}:{}", d.algorithm().as_str(), d.hex()), s);
        assert!(!d.hex().contains(['/', '.']));
        let json = serde_json::to_string(&d).expect("a digest serialises");
        assert_eq!(serde_json::from_str::<Digest>(&json).ok().as_ref(), Some(&d), "serde round trip of {s:?}");
    }
}

/// References: a digest when there is a `:`, else a tag; either prints back to its text.
pub fn reference(s: &str) {
    let parsed = bounded("Reference", s.len(), || s.parse::<Reference>());
    match &parsed {
        Ok(Reference::Digest(d)) => assert_eq!(d.to_string(), s),
        Ok(Reference::Tag(t)) => assert!(!s.contains(':') && t.as_str() == s, "{s:?}"),
        Err(_) => assert!(s.parse::<Digest>().is_err() && s.parse::<Tag>().is_err(), "{s:?}: {parsed:?}"),
    }
    if let Ok(r) = parsed {
        assert_eq!(r.to_string(), s);
        assert_eq!(r.to_string().parse::<Reference>().as_ref(), Ok(&r));
    }
}

/// Images as people write them: what is printed parses back to the same image, and every part
/// written is valid (a tag beside a digest too).
pub fn image_ref(s: &str) {
    let parsed = bounded("ImageRef", s.len(), || s.parse::<ImageRef>());
    let Ok(image) = parsed else { return };
    let printed = image.to_string();
    assert_eq!(printed.parse::<ImageRef>().as_ref(), Ok(&image), "{s:?} printed as {printed:?}");
    assert_eq!(image.registry, image.registry.to_ascii_lowercase());
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => (rest, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        assert_eq!(image.reference.to_string(), d, "{s:?}");
    }
    let path = match rest.split_once('/') {
        Some((first, path)) if is_registry_host(first) => path,
        _ => rest,
    };
    if let Some((_, t)) = path.rsplit('/').next().and_then(|last| last.split_once(':')) {
        assert!(spec_tag(t), "{s:?}: tag {t:?} accepted");
    }
}

/// The name, tag, digest and reference parsers at once (one string, several readings).
pub fn names(s: &str) {
    repository_name(s);
    tag(s);
    digest(s);
    reference(s);
    image_ref(s);
}

/// A manifest from upstream: its references and its verification.
///
/// - Reference extraction reads any bytes without panicking, and the total size it reports can't
///   overflow, whatever sizes the manifest claims.
/// - A verified manifest's digest is the sha256 of its exact bytes (for a signed schema1 manifest,
///   of its JWS payload); asking for that digest verifies, with the same answer; asking for
///   another is a mismatch; its media type is a valid header value in lower case, and naming it as
///   the `Content-Type` contradicts nothing.
pub fn manifest(bytes: &[u8], content_type: Option<&str>) {
    let refs = bounded("references", bytes.len(), || references(bytes));
    if let Some(refs) = &refs {
        let _ = refs.blob_bytes();
        for d in refs.children.iter().map(|c| &c.digest).chain(refs.blobs.iter().map(|(d, _)| d)) {
            assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(d));
        }
    }
    let verified = bounded("verify_manifest", bytes.len(), || verify_manifest(bytes, &[], content_type));
    let Ok(v) = verified else { return };
    assert!(HeaderValue::from_str(&v.media_type).is_ok(), "media type {:?} is no header value", v.media_type);
    assert_eq!(v.media_type, v.media_type.to_ascii_lowercase());
    assert_eq!(v.digest.algorithm(), Algorithm::Sha256);
    if v.media_type != SCHEMA1_SIGNED {
        assert_eq!(v.digest, Digest::sha256_of(bytes), "a verified manifest's digest is the sha256 of its bytes");
        let sha512 = Digest::of(Algorithm::Sha512, bytes);
        let by_512 = verify_manifest(bytes, std::slice::from_ref(&sha512), content_type).map(|v| v.digest);
        assert_eq!(by_512, Ok(sha512));
    }
    assert_eq!(verify_manifest(bytes, std::slice::from_ref(&v.digest), content_type).as_ref(), Ok(&v));
    assert_eq!(verify_manifest(bytes, &[], Some(&v.media_type)).as_ref(), Ok(&v), "its own type contradicts nothing");
    let other = Digest::sha256_of(&[b"not ".as_slice(), bytes].concat());
    let mismatch = verify_manifest(bytes, &[v.digest.clone(), other.clone()], content_type);
    assert!(matches!(mismatch, Err(ManifestError::DigestMismatch { expected, .. }) if expected == other));
}

/// A schema1 manifest in libtrust's pretty-signature layout around `payload` (the signature itself
/// is a placeholder: regcache doesn't check it), or `None` if `payload` has no closing `}`.
pub fn signed_schema1(payload: &str) -> Option<Vec<u8>> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let close = payload.rfind('}')?;
    let length = payload[..close].trim_end().len();
    let tail = &payload[length..];
    let header = serde_json::json!({"formatLength": length, "formatTail": b64.encode(tail), "time": "2024-01-01T00:00:00Z"});
    let protected = b64.encode(header.to_string());
    let sigs = format!(",\n   \"signatures\": [{{\"header\": {{\"alg\": \"ES256\"}}, \"signature\": \"c2ln\", \"protected\": \"{protected}\"}}]");
    Some(format!("{}{sigs}{tail}", &payload[..length]).into_bytes())
}

/// A signed schema1 manifest made around `payload`: verified, it has the sha256 of the payload
/// (the exact bytes signed) whenever the payload is a schema1 manifest without signatures of its
/// own; and it never verifies as anything but the payload's digest or the bytes' own.
pub fn schema1(payload: &str) {
    let Some(signed) = signed_schema1(payload) else { return };
    manifest(&signed, None);
    let verified = verify_manifest(&signed, &[], None);
    let doc = serde_json::from_str::<serde_json::Value>(payload).ok();
    let object = doc.as_ref().and_then(serde_json::Value::as_object);
    let is_schema1 = object.is_some_and(|o| {
        o.get("schemaVersion").and_then(serde_json::Value::as_u64) == Some(1)
            && !o.contains_key("mediaType")
            && !o.contains_key("signatures")
            && !o.is_empty()
    });
    if is_schema1 {
        let v = verified.expect("a schema1 payload, signed, verifies");
        assert_eq!(v.media_type, SCHEMA1_SIGNED);
        assert_eq!(v.digest, Digest::sha256_of(payload.as_bytes()), "the digest of the exact payload bytes");
    } else if let Ok(v) = verified {
        assert!(v.digest == Digest::sha256_of(payload.as_bytes()) || v.digest == Digest::sha256_of(&signed), "{v:?}");
    }
}

/// `WWW-Authenticate`: a Bearer challenge always has a realm; parsing allocates within bounds
/// whatever the header holds.
pub fn challenges(values: &[&str]) {
    let len = values.iter().map(|v| v.len() + 1).sum();
    let parsed = bounded("parse_challenges", len, || parse_challenges(values.iter().copied()));
    if let Some(Challenge::Bearer { realm, .. }) = &parsed {
        assert!(!realm.is_empty());
        let all: String = values.concat();
        assert!(realm.chars().all(|c| all.contains(c)), "realm {realm:?} holds characters not sent");
    }
    if parsed == Some(Challenge::Basic) {
        assert!(values.iter().any(|v| v.to_ascii_lowercase().contains("basic")));
    }
}

/// A token server's answer: a token is never empty, and lives between a second and a day,
/// whatever `expires_in` claims.
pub fn token_response(body: &[u8]) {
    let parsed = bounded("parse_token_response", body.len(), || parse_token_response(body));
    if let Ok((token, lifetime)) = &parsed {
        assert!(!token.expose().is_empty());
        assert!((Duration::from_secs(1)..=Duration::from_secs(24 * 60 * 60)).contains(lifetime), "{lifetime:?}");
    }
    // Whichever of `token` and `access_token` is a non-empty string is the token (`token` first).
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let field = |k: &str| doc.get(k).filter(|v| !v.is_null());
    if field("token").is_some_and(|v| !v.is_string()) || field("access_token").is_some_and(|v| !v.is_string()) {
        return;
    }
    let given = |k: &str| field(k).and_then(serde_json::Value::as_str).filter(|t| !t.is_empty());
    let want = given("token").or_else(|| given("access_token"));
    // Written again without duplicate keys, which JSON leaves undefined.
    let canonical = serde_json::to_vec(&doc).expect("a JSON object serialises");
    let got = parse_token_response(&canonical).ok();
    assert_eq!(got.as_ref().map(|(t, _)| t.expose()), want, "{}", String::from_utf8_lossy(&canonical));
}

/// The path a route serves, as the router reads it.
pub fn route_path(r: &Route) -> Option<String> {
    Some(match r {
        Route::Base => return None,
        Route::Metrics => "/metrics".to_owned(),
        Route::Healthz => "/healthz".to_owned(),
        Route::Status => "/status".to_owned(),
        Route::StatusJson => "/status.json".to_owned(),
        Route::Repo(name, RepoRoute::Manifest(r)) => format!("/v2/{name}/manifests/{r}"),
        Route::Repo(name, RepoRoute::Blob(d)) => format!("/v2/{name}/blobs/{d}"),
        Route::Repo(name, RepoRoute::Tags) => format!("/v2/{name}/tags/list"),
        Route::Repo(name, RepoRoute::Referrers(d)) => format!("/v2/{name}/referrers/{d}"),
        Route::FleetBlob(d) => format!("/_fleet/v1/blobs/{d}"),
        Route::FleetTag(t) => format!("/_fleet/v1/tags/{t}"),
    })
}

/// Routes: a routed path is exactly the path of what it routes to (nothing ignored, nothing
/// decoded); only reads are routed; a write under `/v2` is refused as such.
pub fn route_and_query(method: &Method, path: &str, q: &str) {
    let routed = bounded("route", path.len(), || route(method, path));
    let read = *method == Method::GET || *method == Method::HEAD;
    match &routed {
        Ok(Route::Base) => assert!(read && (path == "/v2" || path == "/v2/"), "{path:?}"),
        Ok(r) => {
            assert!(read, "{method} {path:?} routed");
            assert_eq!(route_path(r).as_deref(), Some(path), "{path:?} routed to {r:?}");
        }
        Err(e) if !read && path.starts_with("/v2") => assert_eq!(e.kind, RouteErrorKind::ReadOnly, "{method} {path:?}"),
        Err(e) if e.kind == RouteErrorKind::ReadOnly => assert!(path.starts_with("/v2") && path.contains("/blobs/uploads"), "{method} {path:?}"),
        Err(_) => {}
    }
    let parsed = bounded("query", q.len(), || query(Some(q)));
    if let Ok(parsed) = parsed {
        let last = |key: &str| url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == key).map(|(_, v)| v.into_owned()).last();
        assert_eq!(parsed.ns, last("ns"));
        assert_eq!(parsed.last, last("last"));
        assert_eq!(parsed.artifact_type, last("artifactType"));
        assert_eq!(parsed.n, last("n").map(|n| n.parse::<u32>().expect("a count, or the query is refused")));
    }
}

/// `Range`: a range resolves inside the blob, `start < end <= size`, and to what RFC 9110 says
/// the positions written select (computed here without overflow, in 128 bits).
pub fn range(value: &str, size: u64) {
    let parsed = bounded("parse_range", value.len(), || parse_range(value));
    let Some(r) = parsed else { return };
    let resolved = r.resolve(size);
    if let Some((start, end)) = resolved {
        assert!(start < end && end <= size, "{value:?} of {size} bytes resolved to {start}..{end}");
    }
    let spec = value.trim().strip_prefix("bytes=").map(str::trim).and_then(|s| s.split_once('-'));
    let Some((first, last)) = spec else { panic!("{value:?} parsed without bytes=…-…") };
    let num = |s: &str| -> Option<u128> {
        let s = s.trim();
        // Beyond u64 is past the end of any blob, like u64::MAX.
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u128>().map_or(u64::MAX.into(), |n| n.min(u64::MAX.into())))
    };
    let size = u128::from(size);
    let want = match (num(first), num(last)) {
        (Some(a), None) if last.trim().is_empty() => (a < size).then_some((a, size)),
        (Some(a), Some(b)) => (a < size).then(|| (a, (b + 1).min(size))),
        (None, Some(n)) if first.trim().is_empty() => (n > 0 && size > 0).then(|| (size - n.min(size), size)),
        _ => panic!("{value:?} parsed as {r:?}"),
    };
    let got = resolved.map(|(s, e)| (u128::from(s), u128::from(e)));
    assert_eq!(got, want, "{value:?} of {size} bytes");
}

/// `Accept` lists: every type named, once, lower case, without parameters or wildcards; a client
/// that named none gets every manifest type; each type named is allowed.
pub fn accept(lines: &[&[u8]]) {
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::ACCEPT, v);
        }
    }
    let len = lines.iter().map(|l| l.len() + 1).sum();
    let list = bounded("AcceptList", len, || AcceptList::from_headers(&headers));
    let types = list.for_upstream();
    let named: Vec<String> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| item.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !t.ends_with("/*"))
        .collect();
    if named.is_empty() {
        assert_eq!(list.asks_for(), ManifestKind::Index);
        assert!(list.allows("application/anything"));
        return;
    }
    let mut unique = named.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(types.len(), unique.len(), "each type once: {types:?}");
    for t in &types {
        assert!(named.contains(t), "{t:?} was not named");
        assert!(list.allows(t) && list.allows(&t.to_ascii_uppercase()));
        assert!(!t.contains([',', ';']) && t.trim() == t && *t == t.to_ascii_lowercase());
    }
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(list.key(), sorted.join(","));
}

/// `Authorization: Basic`: the user never holds a `:` (the first one ends it), and credentials
/// encoded again parse to the same.
pub fn basic(value: &str) {
    let parsed = bounded("parse_basic", value.len(), || parse_basic(value));
    if let Some((user, password)) = parsed {
        assert!(!user.contains(':'));
        let b64 = base64::engine::general_purpose::STANDARD;
        let again = format!("Basic {}", b64.encode(format!("{user}:{password}")));
        assert_eq!(parse_basic(&again), Some((user, password)));
    }
}

/// htpasswd files: every line that isn't blank or a comment is `user:bcrypt-hash` (the user
/// without a `:`, the hash `$2a$`, `$2b$` or `$2y$`), or the file is refused naming the first
/// line that isn't.
pub fn htpasswd(text: &str) {
    let parsed = bounded("parse_htpasswd", text.len(), || parse_htpasswd(text));
    let lines: Vec<(usize, &str)> =
        text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#')).collect();
    let entry = |line: &str| {
        let (user, hash) = line.split_once(':')?;
        let bcrypt = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
        (!user.is_empty() && bcrypt).then(|| (user.to_owned(), hash.to_owned()))
    };
    match parsed {
        Ok(users) => {
            let want: Vec<(String, String)> = lines.iter().filter_map(|(_, l)| entry(l)).collect();
            assert_eq!(want.len(), lines.len(), "{text:?}: a line that isn't an entry was skipped");
            assert_eq!(users, want, "{text:?}");
        }
        Err(line) => {
            let first_bad = lines.iter().find(|(_, l)| entry(l).is_none()).map(|(i, _)| i + 1);
            assert_eq!(Some(line), first_bad, "{text:?}");
        }
    }
}

/// Whether a string in the file could name a file outside the directory it is resolved from
/// (absolute, or with `..`): the oracle never lets the fuzzer read the machine's files.
fn names_outside(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => s.starts_with('/') || s.contains(".."),
        toml::Value::Array(a) => a.iter().any(names_outside),
        toml::Value::Table(t) => t.values().any(names_outside),
        _ => false,
    }
}

/// The configuration file: a configuration, or an error of one line (start-up prints it as its
/// one line on stderr); a configuration describes itself (`check-config`) without a panic.
pub fn config(text: &str) {
    if toml::from_str::<toml::Table>(text).is_ok_and(|t| t.values().any(names_outside)) {
        return;
    }
    // Relative paths are read from a directory that doesn't exist: no file is ever found.
    let base = Path::new("/nonexistent/regcache-properties");
    let resolved = bounded("Config::from_toml", text.len(), || Config::from_toml(text, &Overrides::default(), base));
    match resolved {
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty() && !message.contains(['\n', '\r']), "not one line: {message:?}");
        }
        Ok(config) => {
            let described = config.describe();
            assert!(described.lines().count() >= 1);
        }
    }
}

/// A tag list record (the index's, or the bucket's, where any node may write): read, its tags are
/// valid, sorted and unique, at most [`MAX_LISTED_TAGS`] of them, and it writes back to a record
/// that reads as the same list.
pub fn tag_list_record(record: &[u8]) {
    let Some(list) = bounded("ListedTags::from_record", record.len(), || ListedTags::from_record(record)) else { return };
    assert!(list.tags().len() <= MAX_LISTED_TAGS);
    assert!(list.tags().windows(2).all(|w| w[0] < w[1]), "sorted and unique: {:?}", list.tags());
    assert!(list.tags().iter().all(|t| spec_tag(t)), "{:?}", list.tags());
    assert_eq!(ListedTags::from_record(&list.to_record()).as_ref(), Some(&list), "written back, read the same");
}

/// An access summary record (the bucket's): every access read is a line of it, as written.
pub fn summary_record(body: &[u8]) {
    let accesses: Vec<(Digest, u64)> = bounded("parse_summary", body.len(), || parse_summary(body).collect());
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    for (digest, at) in &accesses {
        let line = format!("{digest} {at}");
        assert!(lines.contains(&line.as_bytes()), "{line:?} is not a line of the record");
    }
}

/// A manifest record (the bucket's): read, it is the manifest of the digest it was read for, its
/// bytes exactly what the record holds after the media type.
pub fn manifest_record(record: &[u8], digest: &Digest) {
    let bytes = bytes::Bytes::copy_from_slice(record);
    let read = bounded("read_manifest_record", record.len(), || read_manifest_record(bytes, digest));
    if let Ok(m) = read {
        let split = record.iter().position(|b| *b == 0).expect("a NUL after the media type");
        assert_eq!(&m.bytes[..], &record[split + 1..]);
        assert_eq!(verify_manifest(&m.bytes, std::slice::from_ref(digest), None).map(|v| v.media_type), Ok(m.media_type));
    }
}
