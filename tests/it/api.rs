//! The API's edges: validation, OCI errors, writes, ranges, tag lists, routing by `ns`.

use crate::it::mirror::{error_code, Mirror};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

#[tokio::test]
async fn bad_input_is_a_4xx_with_an_oci_body() {
    let reg = FakeRegistry::start().await;
    let m = Mirror::start(&reg).await;
    let d = format!("sha256:{}", "a".repeat(64));
    let cases = [
        ("GET", "/v2/Alpine/manifests/3".to_owned(), 400, "NAME_INVALID"),
        ("GET", "/v2/a%2F..%2Fb/manifests/3".to_owned(), 400, "NAME_INVALID"),
        // Not a valid tag, so no such manifest: 404 (the conformance suite asks for `.INVALID_MANIFEST_NAME`).
        ("GET", "/v2/alpine/manifests/-bad".to_owned(), 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/alpine/manifests/.INVALID_MANIFEST_NAME".to_owned(), 404, "MANIFEST_UNKNOWN"),
        ("HEAD", "/v2/alpine/manifests/.INVALID_MANIFEST_NAME".to_owned(), 404, ""),
        ("GET", "/v2/alpine/manifests/sha256:123".to_owned(), 400, "DIGEST_INVALID"),
        ("GET", "/v2/alpine/blobs/md5:abc".to_owned(), 400, "DIGEST_INVALID"),
        ("HEAD", "/v2/alpine/blobs/latest".to_owned(), 400, ""),
        ("GET", "/v2/alpine/nothing".to_owned(), 404, "NAME_UNKNOWN"),
        ("PUT", "/v2/alpine/manifests/3".to_owned(), 405, "UNSUPPORTED"),
        ("POST", "/v2/alpine/blobs/uploads/".to_owned(), 405, "UNSUPPORTED"),
        ("PATCH", "/v2/alpine/blobs/uploads/x".to_owned(), 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/alpine/blobs/{d}"), 405, "UNSUPPORTED"),
        ("GET", "/v2/alpine/manifests/3?ns=evil.example".to_owned(), 404, "NAME_UNKNOWN"),
        ("GET", format!("/v2/alpine/blobs/{d}?ns=169.254.169.254"), 404, "NAME_UNKNOWN"),
    ];
    for (method, path, want_status, want_code) in cases {
        let resp = Mirror::client()
            .request(method.parse().unwrap(), format!("{}{path}", m.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want_status, "{method} {path}");
        if method != "HEAD" {
            assert_eq!(resp.headers()["content-type"], "application/json", "{method} {path}");
            let (_, code) = error_code(resp).await;
            assert_eq!(code, want_code, "{method} {path}");
        }
    }
    assert!(reg.requests().is_empty(), "bad input never reaches upstream: {:?}", reg.requests());
}

#[tokio::test]
async fn unknown_things_are_404_with_the_right_code() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    let d = format!("sha256:{}", "b".repeat(64));
    let (s, c) = error_code(m.get_manifest("alpine", "nope").await).await;
    assert_eq!((s.as_u16(), c.as_str()), (404, "MANIFEST_UNKNOWN"));
    let (s, c) = error_code(m.get_manifest("alpine", &d).await).await;
    assert_eq!((s.as_u16(), c.as_str()), (404, "MANIFEST_UNKNOWN"), "a digest upstream doesn't have");
    let (s, c) = error_code(m.get(&format!("/v2/alpine/blobs/{d}")).await).await;
    assert_eq!((s.as_u16(), c.as_str()), (404, "BLOB_UNKNOWN"));
    let (s, c) = error_code(m.get("/v2/nosuch/repo/tags/list").await).await;
    assert_eq!((s.as_u16(), c.as_str()), (404, "NAME_UNKNOWN"));
    assert_eq!(m.head(&format!("/v2/alpine/blobs/{d}")).await.status(), 404);
}

#[tokio::test]
async fn ns_routes_to_the_named_upstream_and_is_echoed() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    let resp = m.manifest_request(reqwest::Method::GET, "library/alpine", "3?ns=docker.io").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["oci-namespace"], "docker.io");
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
}

#[tokio::test]
async fn head_of_a_missing_blob_downloads_nothing() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 50_000);
    let m = Mirror::start(&reg).await;
    let layer = &image.layers[0];
    let resp = m.head(&format!("/v2/alpine/blobs/{}", layer.digest)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], layer.bytes.len().to_string().as_str());
    assert_eq!(resp.headers()["docker-content-digest"], layer.digest.as_str());
    assert!(reg.cdn_requests().is_empty());
    assert_eq!(reg.count("GET", "/blobs/"), 0);
}

#[tokio::test]
async fn ranges_of_a_cached_blob() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10_000);
    let layer = &image.layers[0];
    let m = Mirror::start(&reg).await;
    m.blob("alpine", &layer.digest).await.unwrap();
    let path = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    let c = Mirror::client();

    let resp = c.get(&path).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &layer.bytes[100..200]);

    let resp = c.get(&path).header("range", "bytes=-10").send().await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &layer.bytes[9990..]);

    let resp = c.get(&path).header("range", "bytes=10000-").send().await.unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */10000");

    let resp = c.get(&path).header("range", "bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(resp.status(), 200, "several ranges: the whole blob");
    let resp = m.head(&format!("/v2/alpine/blobs/{}", layer.digest)).await;
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-length"], "10000");
}

#[tokio::test]
async fn range_edges_saturate_and_unsatisfiable_ranges_are_416() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let layer = &image.layers[0];
    let empty = reg.add_blob(Vec::new());
    let cached = Mirror::start(&reg).await;
    cached.blob("alpine", &layer.digest).await.unwrap();
    cached.blob("alpine", &empty).await.unwrap();
    cached.wait_stored(&layer.digest).await;
    cached.wait_stored(&empty).await;
    let max = u64::MAX;
    /// Blob, `Range`, status, `Content-Range`, body.
    type Case<'a> = (&'a str, String, u16, Option<String>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (&layer.digest, format!("bytes=0-{max}"), 206, Some("bytes 0-9/10".into()), layer.bytes.clone()),
        (&layer.digest, format!("bytes=5-{max}"), 206, Some("bytes 5-9/10".into()), layer.bytes[5..].to_vec()),
        (&layer.digest, "bytes=0-99999999999999999999999".into(), 206, Some("bytes 0-9/10".into()), layer.bytes.clone()),
        (&layer.digest, "bytes=-99999999999999999999999".into(), 206, Some("bytes 0-9/10".into()), layer.bytes.clone()),
        (&layer.digest, "bytes=99999999999999999999999-".into(), 416, Some("bytes */10".into()), vec![]),
        (&layer.digest, format!("bytes={max}-{max}"), 416, Some("bytes */10".into()), vec![]),
        (&layer.digest, "bytes=-0".into(), 416, Some("bytes */10".into()), vec![]),
        (&layer.digest, "bytes=9-5".into(), 200, None, layer.bytes.clone()),
        (&layer.digest, "bytes=0-1,5-6".into(), 200, None, layer.bytes.clone()),
        (&layer.digest, "bytes=junk".into(), 200, None, layer.bytes.clone()),
        (&layer.digest, "lines=1-2".into(), 200, None, layer.bytes.clone()),
        (&empty, "bytes=-5".into(), 416, Some("bytes */0".into()), vec![]),
        (&empty, "bytes=0-".into(), 416, Some("bytes */0".into()), vec![]),
        (&empty, format!("bytes=0-{max}"), 416, Some("bytes */0".into()), vec![]),
        (&empty, "bytes=junk".into(), 200, None, vec![]),
    ];
    for (digest, range, status, content_range, body) in &cases {
        // A miss (answered while the fill runs, from a fresh cache) and a hit answer alike.
        let fresh = Mirror::start(&reg).await;
        for (round, m) in [("miss", &fresh), ("hit", &cached)] {
            let url = format!("{}/v2/alpine/blobs/{digest}", m.url);
            let resp = Mirror::client().get(&url).header("range", range).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), *status, "{round} {range} of {digest}");
            let got_range = resp.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(&got_range, content_range, "{round} {range}");
            if *status == 416 {
                let (_, code) = error_code(resp).await;
                assert_eq!(code, "RANGE_INVALID", "{round} {range}");
            } else {
                let len = resp.headers()["content-length"].to_str().unwrap().parse::<usize>().unwrap();
                let got = resp.bytes().await.expect("the whole body");
                assert_eq!(len, body.len(), "{round} {range}");
                assert!(got.as_ref() == body.as_slice(), "{round} {range}");
            }
        }
    }
}

#[tokio::test]
async fn tag_list_pages_itself_when_upstream_ignores_n_and_last() {
    let reg = FakeRegistry::start().await;
    for t in ["b", "d", "a", "e", "c"] {
        images::schema2_image(&reg, "library/alpine", t, 1, 10);
    }
    reg.set_fault(Fault::TagsUnpaged);
    let m = Mirror::start(&reg).await;
    let v: serde_json::Value = m.get("/v2/alpine/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b", "c", "d", "e"]), "sorted");

    let mut next = Some("/v2/alpine/tags/list?n=2".to_owned());
    let mut pages = Vec::new();
    while let Some(path) = next.take() {
        let resp = m.get(&path).await;
        assert_eq!(resp.status(), 200, "{path}");
        next = resp.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
        let v: serde_json::Value = resp.json().await.unwrap();
        pages.push(v["tags"].clone());
        assert!(pages.len() < 10, "pagination never ends: {pages:?}");
    }
    assert_eq!(pages, vec![serde_json::json!(["a", "b"]), serde_json::json!(["c", "d"]), serde_json::json!(["e"])]);

    let resp = m.get("/v2/alpine/tags/list?n=0").await;
    assert!(resp.headers().get("link").is_none(), "n=0: an empty list and no Link");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!([]));
    let v: serde_json::Value = m.get("/v2/alpine/tags/list?last=c").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["d", "e"]));
    let resp = m.get("/v2/alpine/tags/list?n=4294967295").await;
    assert!(resp.headers().get("link").is_none());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 5);
    // Whatever page the client asks for, upstream is asked for a bounded one.
    assert!(reg.requests().iter().filter(|r| r.path_and_query.contains("/tags/list")).all(|r| !r.path_and_query.contains("n=0")
        && !r.path_and_query.contains("n=4294967295")), "{:?}", reg.requests());
}

#[tokio::test]
async fn tag_list_pagination_passes_link_through() {
    let reg = FakeRegistry::start().await;
    for t in ["a", "b", "c"] {
        images::schema2_image(&reg, "library/alpine", t, 1, 10);
    }
    let m = Mirror::start(&reg).await;
    let resp = m.get("/v2/alpine/tags/list?n=2").await;
    assert_eq!(resp.status(), 200);
    let link = resp.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.contains("last=b"), "{link}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let v: serde_json::Value = m.get("/v2/alpine/tags/list?n=2&last=b").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c"]));
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_as_requests_are_made_and_healthz_answers() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 5000);
    let m = Mirror::start(&reg).await;
    assert_eq!(m.get("/healthz").await.status(), 200);
    let before = m.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&before, "regcache_cache_requests_total{outcome=\"hit\"}"), 0.0);

    m.blob("alpine", &image.layers[0].digest).await.unwrap();
    m.wait_stored(&image.layers[0].digest).await;
    m.blob("alpine", &image.layers[0].digest).await.unwrap();
    m.get_manifest("alpine", "3").await;
    let after = m.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&after, "regcache_cache_requests_total{outcome=\"miss\"}"), 2.0, "{after}");
    assert_eq!(metric(&after, "regcache_cache_requests_total{outcome=\"hit\"}"), 1.0);
    assert_eq!(metric(&after, "regcache_served_bytes_total{source=\"hot\"}"), 5000.0);
    assert_eq!(metric(&after, "regcache_http_requests_total{route=\"blob\",status=\"200\"}"), 2.0);
    assert!(metric(&after, "regcache_token_fetches_total{upstream=\"docker.io\"}") >= 1.0);
    assert!(metric(&after, "regcache_upstream_request_duration_seconds_count{upstream=\"docker.io\"}") >= 3.0);
    assert!(metric(&after, "regcache_disk_bytes") >= 5000.0);
    assert_eq!(metric(&after, "regcache_fills_in_progress"), 0.0);
    assert_eq!(metric(&after, "regcache_max_size_bytes"), 0.0, "no max_size");
    assert!(metric(&after, "regcache_data_dir_size_bytes") >= metric(&after, "regcache_data_dir_free_bytes"));
    assert!(metric(&after, "regcache_data_dir_free_bytes") > 0.0);
}
