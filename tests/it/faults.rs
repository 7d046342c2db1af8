//! Faults a real registry can't produce on demand: wrong bytes, cuts, outages, hangs, 429.

use crate::it::mirror::{error_code, eventually, spawn_get, spawn_range, Mirror, Options, PROMPTLY};
use crate::support::fake_registry::{Fault, FakeRegistry, RATE_LIMIT_MESSAGE};
use crate::support::images;

#[tokio::test]
async fn wrong_bytes_are_never_served_as_good_nor_stored() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 300_000);
    let layer = &image.layers[0];
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::CorruptBlobs);
    let got = m.blob("alpine", &layer.digest).await;
    assert!(got.is_err(), "a corrupt blob's body must be cut, not completed: {:?}", got.map(|(s, b)| (s, b.len())));
    assert!(!m.has_blob(&layer.digest));
    assert_eq!(m.tmp_files(), 0, "the temporary file is removed");

    reg.clear_faults();
    let (status, bytes) = m.blob("alpine", &layer.digest).await.expect("a fresh fill succeeds");
    assert_eq!(status, 200);
    assert!(bytes == layer.bytes);
    assert_eq!(reg.cdn_count(&layer.digest), 2, "the failed fill was not reused");
    m.wait_stored(&layer.digest).await;
}

/// A mirror of a 1 MB layer whose CDN sends wrong bytes, gated: the first 300 kB arrive, the rest
/// (and so the fill's verdict) waits for `release_held`. The layer's blob URL on the mirror.
async fn wrong_bytes_held() -> (FakeRegistry, images::Content, Mirror, String) {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::CorruptBlobs);
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 300_000, path_contains: layer.digest.clone() });
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    (reg, layer, m, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_joining_a_fill_of_wrong_bytes_is_never_a_206_of_them() {
    let (reg, layer, m, url) = wrong_bytes_held().await;
    let full = tokio::spawn(Mirror::client().get(url.clone()).send());
    eventually("the fill is under way", || m.tmp_bytes() >= 300_000).await;
    // Its range has arrived in full, unverified.
    let range = spawn_range(&m.fills, &url, &layer.digest, "bytes=0-99999");
    eventually("the range joined the fill", || m.fill_waiters("docker.io", &layer.digest) == 2 || range.is_finished()).await;
    reg.release_held();
    let answer = tokio::time::timeout(PROMPTLY, range).await.expect("answered once the fill failed").unwrap();
    assert_ne!(answer.status, 206, "a 206 of bytes that failed verification: {:?}", answer.content_range);
    assert_eq!(answer.status, 502);
    let body: serde_json::Value = serde_json::from_slice(&answer.body.expect("an error body")).expect("an OCI error body");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert!(full.await.unwrap().unwrap().bytes().await.is_err(), "the full GET is cut");
    assert_eq!(reg.cdn_count(&layer.digest), 1, "the range waited on the fill it joined");
    assert!(!m.has_blob(&layer.digest));

    // The next range starts a fill of its own, which is good.
    reg.clear_faults();
    let answer = spawn_range(&m.fills, &url, &layer.digest, "bytes=0-99999").await.unwrap();
    assert_eq!((answer.status, answer.content_range.as_deref()), (206, Some("bytes 0-99999/1000000")));
    assert!(answer.body.expect("the whole range") == layer.bytes[..100_000]);
    assert_eq!(reg.cdn_count(&layer.digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_starts_a_fill_is_answered_only_with_verified_bytes() {
    let (reg, layer, m, url) = wrong_bytes_held().await;
    let range = spawn_range(&m.fills, &url, &layer.digest, "bytes=200000-299999");
    eventually("the range's fill is under way", || m.tmp_bytes() >= 300_000 || range.is_finished()).await;
    reg.release_held();
    let answer = tokio::time::timeout(PROMPTLY, range).await.expect("answered once the fill failed").unwrap();
    assert_ne!(answer.status, 206, "a 206 of bytes that failed verification: {:?}", answer.content_range);
    assert_eq!(answer.status, 502);
    assert!(!m.has_blob(&layer.digest));

    // A good fill: the range gets its slice once the blob is verified, and the blob is stored.
    reg.clear_faults();
    let answer = spawn_range(&m.fills, &url, &layer.digest, "bytes=200000-299999").await.unwrap();
    assert!(!answer.before_the_verdict, "answered before the fill was verified");
    assert_eq!((answer.status, answer.content_range.as_deref()), (206, Some("bytes 200000-299999/1000000")));
    assert!(answer.body.expect("the whole range") == layer.bytes[200_000..300_000]);
    m.wait_stored(&layer.digest).await;
    let fetched: Vec<_> = reg.cdn_requests().into_iter().map(|s| s.range).collect();
    assert_eq!(fetched, [None, None], "each fill fetched the whole blob");
}

#[tokio::test]
async fn a_cut_mid_blob_stores_nothing_and_the_next_request_succeeds() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1_000_000);
    let layer = &image.layers[0];
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::CutBlobsAfter(400_000));
    assert!(m.blob("alpine", &layer.digest).await.is_err(), "the client sees a failed body");
    assert!(!m.has_blob(&layer.digest));
    assert_eq!(m.tmp_files(), 0);
    assert!(m.stored_files().is_empty(), "nothing at all was stored: {:?}", m.stored_files());

    reg.clear_faults();
    let (_, bytes) = m.blob("alpine", &layer.digest).await.unwrap();
    assert!(bytes == layer.bytes);
}

#[tokio::test]
async fn upstream_down_cached_tags_and_digests_still_answer() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let other = images::schema2_image(&reg, "library/other", "1", 1, 1000);
    let m = Mirror::start(&reg).await;
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200);
    let (_, _) = m.blob("alpine", &image.layers[0].digest).await.unwrap();

    reg.stop().await;
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200, "stale-if-error");
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(m.get_manifest("alpine", &image.manifest.digest).await.status(), 200);
    let (_, bytes) = m.blob("alpine", &image.layers[0].digest).await.unwrap();
    assert!(bytes == image.layers[0].bytes);

    let (status, _) = error_code(m.get_manifest("other", "1").await).await;
    assert_eq!(status.as_u16(), 502, "nothing cached and upstream down");
    let (status, _) = error_code(m.get(&format!("/v2/other/blobs/{}", other.layers[0].digest)).await).await;
    assert_eq!(status.as_u16(), 502);
}

#[tokio::test]
async fn upstream_5xx_serves_stale_and_429_passes_retry_after() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    images::schema2_image(&reg, "library/fresh", "1", 1, 10);
    let m = Mirror::start(&reg).await;
    assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);

    reg.set_fault(Fault::Status { code: 503, retry_after: None, path_contains: "/manifests/".into() });
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    reg.clear_faults();

    reg.set_fault(Fault::Status { code: 429, retry_after: Some(17), path_contains: "/fresh/".into() });
    let resp = m.get_manifest("fresh", "1").await;
    assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()), Some("17".into()));
    let (status, code) = error_code(resp).await;
    assert_eq!((status.as_u16(), code.as_str()), (429, "TOOMANYREQUESTS"));
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start_with(&reg, Options { credentials: true, extra: "response_timeout = 1\n".into(), ..Default::default() }).await;
    reg.set_fault(Fault::HangHeaders { path_contains: "/manifests/".into() });
    let (status, _) = error_code(m.get_manifest("alpine", "3").await).await;
    assert_eq!(status.as_u16(), 504);
}

/// A token server that fails is the upstream failing: 502 whatever it answered (its 404 or 429 are
/// not passed on as if the registry had said them); one that refuses (401, 403) is the upstream
/// refusing regcache: 403, never a login prompt for the client. Either way the blame is upstream.
#[tokio::test]
async fn a_failing_token_server_is_a_502_and_a_refusing_one_a_403() {
    let reg = FakeRegistry::start().await;
    let cases = [("a", 500, 502, "UNAVAILABLE"), ("b", 404, 502, "UNAVAILABLE"), ("c", 429, 502, "UNAVAILABLE"), ("d", 401, 403, "DENIED"), ("e", 403, 403, "DENIED")];
    for (repo, ..) in cases {
        images::schema2_image(&reg, &format!("library/{repo}"), "1", 1, 10);
    }
    let m = Mirror::start(&reg).await;
    for (repo, token_status, want_status, want_code) in cases {
        reg.set_fault(Fault::Status { code: token_status, retry_after: Some(5), path_contains: "/token".into() });
        let resp = m.get_manifest(repo, "1").await;
        assert_eq!(resp.headers().get("retry-after"), None, "token server {token_status}");
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await.expect("an OCI error body");
        assert_eq!((status, v["errors"][0]["code"].as_str().unwrap()), (want_status, want_code), "token server {token_status}");
        assert_eq!(v["errors"][0]["detail"], serde_json::json!({"blame": "upstream"}), "token server {token_status}");
        reg.clear_faults();
    }
    assert_eq!(reg.token_requests().len(), cases.len(), "one token request per repository: {:?}", reg.token_requests());
}

#[tokio::test]
async fn authorization_is_dropped_when_a_redirect_leaves_the_upstream() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    reg.set_fault(Fault::RedirectToOtherHost);
    let m = Mirror::start(&reg).await;
    let (status, bytes) = m.blob("alpine", &image.layers[0].digest).await.unwrap();
    assert_eq!(status, 200);
    assert!(bytes == image.layers[0].bytes);
    assert!(!reg.cdn_requests().is_empty());
    assert!(reg.cdn_requests().iter().all(|r| r.authorization.is_none()));
}

/// A size-limited tmpfs, unmounted when dropped. Mounting needs root, as the test suite runs.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8) is needed for the disk-full test");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_a_fill_still_delivers_and_keeps_nothing() {
    let disk = Tmpfs::mount("3m");
    let reg = FakeRegistry::start().await;
    // 2 MB fit on the empty 3 MB disk: the fill starts storing.
    let big = images::schema2_image(&reg, "library/big", "1", 1, 2_000_000);
    let small = images::schema2_image(&reg, "library/small", "1", 1, 10_000);
    let data = disk.dir.path().join("data");
    let top = "[fills]\nmin_free = \"0\"".to_owned();
    let m = Mirror::start_with(&reg, Options { credentials: true, data_dir: Some(data), top, ..Default::default() }).await;
    let digest = &big.layers[0].digest;
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 600_000, path_contains: digest.clone() });
    let got = spawn_get(&format!("{}/v2/big/blobs/{digest}", m.url));
    eventually("the fill is under way", || m.tmp_bytes() >= 600_000).await;
    // Another writer takes the rest of the disk while the fill is under way.
    let filler = disk.dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 64 * 1024]).is_ok() {}
    }
    reg.release_held();
    assert!(got.await.expect("the client still gets its bytes") == big.layers[0].bytes);
    eventually("the fill ended", || m.fills.is_empty()).await;
    assert!(!m.has_blob(digest));
    assert_eq!(m.tmp_files(), 0, "nothing half-written is kept");

    // regcache keeps running and stores what fits.
    std::fs::remove_file(&filler).unwrap();
    let (_, bytes) = m.blob("small", &small.layers[0].digest).await.unwrap();
    assert!(bytes == small.layers[0].bytes);
    m.wait_stored(&small.layers[0].digest).await;
    drop(m);
}

/// `name`'s blob `layer` is served whole.
async fn assert_blob(m: &Mirror, name: &str, layer: &images::Content) {
    let (status, bytes) = m.blob(name, &layer.digest).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
    assert!(bytes == layer.bytes, "{name}: the blob's bytes");
}

/// Write to `path` until the file system is full, down to the last byte.
fn fill_up(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [64 * 1024, 4096, 1] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() {}
    }
}

/// sled refuses every write after one I/O error of its log, until its database is opened again
/// (issue 22's soak, seed 2): regcache opens it again in place once the disk has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_failing_on_a_full_disk_is_reopened_without_a_restart() {
    let disk = Tmpfs::mount("32m");
    let reg = FakeRegistry::start().await;
    let cached = images::schema2_image(&reg, "library/cached", "1", 1, 100_000);
    let data = disk.dir.path().join("data");
    let top = "[fills]\nmin_free = \"0\"".to_owned();
    let m = Mirror::start_with(&reg, Options { credentials: true, data_dir: Some(data), top, ..Default::default() }).await;
    let layer = &cached.layers[0];
    assert_blob(&m, "cached", layer).await;
    m.wait_stored(&layer.digest).await;
    assert_eq!(m.get_manifest("cached", "1").await.status(), 200);
    let app = m.app.upgrade().expect("the mirror runs");
    let index = app.cache().store().index();
    index.flush().unwrap();

    let filler = disk.dir.path().join("filler");
    fill_up(&filler);
    // Index writes until sled's log write hits ENOSPC (a flush makes it write now): from then on
    // sled fails every read and write of that database.
    let mut n = 0u64;
    while index.failure().is_none() {
        n += 1;
        assert!(n < 10_000, "sled never failed on a full disk");
        let _ = index.put_blob(&regcache::oci::Digest::sha256_of(&n.to_be_bytes()), n);
        let _ = index.flush();
    }
    assert!(index.put_blob(&regcache::oci::Digest::sha256_of(b"after"), 1).and_then(|_| index.flush()).is_err(), "the index refuses writes while the disk is full");
    for _ in 0..3 {
        // Cached content is still served while the disk stays full: the index was opened again
        // (on the room kept for it) and takes no writes.
        assert_blob(&m, "cached", layer).await;
        assert_eq!(m.get_manifest("cached", "1").await.status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    assert!(index.is_read_only(), "still no writes while the disk is full");
    // A miss is served through, or fails with an OCI error body.
    let missed = images::schema2_image(&reg, "library/missed", "1", 1, 10_000);
    let resp = m.get(&format!("/v2/missed/blobs/{}", missed.layers[0].digest)).await;
    if resp.status() != 200 {
        let (status, code) = error_code(resp).await;
        assert!(status.is_server_error() && !code.is_empty(), "{status} {code}");
    }

    std::fs::remove_file(&filler).unwrap();
    eventually("the index takes writes again", || !index.is_read_only() && index.failure().is_none() && !index.is_closed()).await;
    let after = images::schema2_image(&reg, "library/after", "1", 1, 10_000);
    assert_eq!(m.get_manifest("after", "1").await.status(), 200);
    assert_eq!(m.blob("after", &after.layers[0].digest).await.unwrap().0, 200);
    m.wait_stored(&after.layers[0].digest).await;
    let stored = after.layers[0].digest.parse().unwrap();
    eventually("the new blob indexed", || index.blob_size(&stored).unwrap() == Some(10_000)).await;
    index.flush().expect("writes work again");
    assert_blob(&m, "cached", layer).await;
    drop(app);
    drop(m);
}

#[tokio::test]
async fn manifests_over_4_mib_are_refused() {
    let reg = FakeRegistry::start().await;
    let padding = "x".repeat(5 * 1024 * 1024);
    let huge = format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","annotations":{{"pad":"{padding}"}}}}"#);
    let digest = reg.put_manifest("library/huge", Some("1"), "application/vnd.docker.distribution.manifest.v2+json", huge.into_bytes());
    let m = Mirror::start(&reg).await;
    for reference in ["1", digest.as_str()] {
        let (status, code) = error_code(m.get_manifest("huge", reference).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (502, "MANIFEST_INVALID"), "{reference}");
    }
    reg.stop().await;
    let (status, _) = error_code(m.get_manifest("huge", &digest).await).await;
    assert_eq!(status.as_u16(), 502, "nothing was stored");
}

#[tokio::test]
async fn any_token_lifetime_is_survived_and_the_token_reused() {
    let cases = [
        (Some("18446744073709551615"), "2^64-1"),
        (Some("-1"), "negative"),
        (Some("1e300"), "a huge float"),
        (Some("\"300\""), "a string"),
        (None, "missing"),
    ];
    for (raw, what) in cases {
        let reg = FakeRegistry::start().await;
        let image = images::schema2_image(&reg, "library/alpine", "3", 2, 1000);
        let m = Mirror::start(&reg).await;
        reg.set_fault(Fault::TokenExpiresIn(raw.map(str::to_owned)));
        for layer in &image.layers {
            let (status, bytes) = m.blob("alpine", &layer.digest).await.expect(what);
            assert_eq!(status, 200, "expires_in {what}");
            assert!(bytes == layer.bytes, "expires_in {what}");
        }
        assert_eq!(reg.token_requests().len(), 1, "expires_in {what}: the token was kept and reused");
    }
}

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_client_never_sees_the_401() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 1000);
    let m = Mirror::start(&reg).await;
    let (status, _) = m.blob("alpine", &image.layers[0].digest).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(reg.token_requests().len(), 1);

    reg.revoke_tokens();
    reg.clear_log();
    let (status, bytes) = m.blob("alpine", &image.layers[1].digest).await.unwrap();
    assert_eq!(status, 200, "the client never sees the upstream's 401");
    assert!(bytes == image.layers[1].bytes);
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == image.manifest.bytes);
    assert_eq!(reg.token_requests().len(), 1, "one new token, then reused: {:?}", reg.requests());
    let log = reg.requests();
    let (refused, retried) = (&log[0], &log[2]);
    assert!(log[1].path_and_query.starts_with("/token"), "{log:?}");
    assert_eq!(refused.path_and_query, retried.path_and_query, "the refused request is sent again");
    assert!(refused.authorization.is_some() && retried.authorization.is_some());
    assert_ne!(refused.authorization, retried.authorization, "with the new token");
}

#[tokio::test]
async fn a_token_past_its_lifetime_is_refreshed_before_it_is_used() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    reg.set_fault(Fault::TokenExpiresIn(Some("1".into())));
    let m = Mirror::start(&reg).await;
    assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);
    assert_eq!(reg.token_requests().len(), 1);

    reg.wait_tokens_expired().await;
    reg.clear_log();
    let (status, bytes) = m.blob("alpine", &image.layers[0].digest).await.unwrap();
    assert_eq!(status, 200);
    assert!(bytes == image.layers[0].bytes);
    let log = reg.requests();
    assert_eq!(reg.token_requests().len(), 1, "a new token: {log:?}");
    assert!(log[0].path_and_query.starts_with("/token"), "fetched before the expired one was sent: {log:?}");
    assert_eq!(log.len(), 2, "then the blob, once, with the new token: {log:?}");
}

#[tokio::test]
async fn rate_limit_headers_come_from_the_upstream_response_that_served_the_request() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    images::schema2_image(&reg, "library/busybox", "1", 1, 1000);
    images::schema2_image(&reg, "library/limited", "1", 1, 10);
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::RateLimitHeaders { remaining: 76 });
    let layer = format!("/v2/alpine/blobs/{}", image.layers[0].digest);
    let limits = |resp: &reqwest::Response| {
        ["ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source"]
            .map(|h| resp.headers().get(h).map(|v| v.to_str().unwrap().to_owned()))
    };
    let from_upstream = [Some("100;w=21600".to_owned()), Some("76;w=21600".to_owned()), Some("192.0.2.7".to_owned())];
    let none = [None, None, None];

    // From upstream: a manifest GET, a manifest HEAD answered from upstream's headers, a blob HEAD
    // and GET of a blob not cached, the tag list.
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, from_upstream.clone()), "manifest GET (miss)");
    let text = m.metrics_with("regcache_upstream_ratelimit_remaining{upstream=\"docker.io\"} 76\n").await;
    assert!(text.contains("regcache_upstream_ratelimit_limit{upstream=\"docker.io\"} 100\n"), "{text}");
    let resp = m.manifest_request(reqwest::Method::HEAD, "busybox", "1").send().await.unwrap();
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, from_upstream.clone()), "manifest HEAD (from upstream)");
    let resp = m.head(&layer).await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, from_upstream.clone()), "blob HEAD (not cached)");
    let resp = m.get(&layer).await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, from_upstream.clone()), "blob GET (miss)");
    assert!(resp.bytes().await.unwrap() == image.layers[0].bytes);
    m.wait_stored(&image.layers[0].digest).await;
    let resp = m.get("/v2/alpine/tags/list").await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, from_upstream.clone()), "tag list");

    // Hits had no upstream response: nothing is stored or made up.
    let resp = m.get(&layer).await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, none.clone()), "blob GET (hit)");
    let resp = m.get_manifest("alpine", &image.manifest.digest).await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, none.clone()), "manifest GET by digest (hit)");
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, none.clone()), "manifest GET by tag (hit)");

    // A 429 keeps the upstream's own message, and says where the limit stands. Like Docker Hub, the
    // tag's HEAD is answered and the manifest's GET is refused.
    reg.set_fault(Fault::GetStatus { code: 429, path_contains: "library/limited/manifests/".into() });
    let resp = m.get_manifest("limited", "1").await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (429, from_upstream.clone()), "429");
    assert_eq!(resp.headers()["retry-after"], "60");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(RATE_LIMIT_MESSAGE), "{message}");
}
