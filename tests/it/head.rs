//! `HEAD` on every route and error, over HTTP/2 (h2c, which regcache's server speaks by prior
//! knowledge) and HTTP/1.1: the headers `GET` sends, the `Content-Length` of the body `GET` sends,
//! and no body. Over HTTP/2 a body on a `HEAD` answer is a protocol error for the client.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::it::mirror::{htpasswd_access, Mirror, Options};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images;

/// One request over h2c (prior knowledge): status, headers and the whole body, or the error that
/// ended the exchange.
async fn h2(method: http::Method, url: &str, auth: Option<&str>) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Empty<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req.header("accept", "application/vnd.docker.distribution.manifest.v2+json").body(Empty::new()).unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
    Ok((status, headers, body))
}

/// HEAD `paths` over h2c and HTTP/1.1: GET's status, no body, and a `Content-Length` that is the
/// length of GET's body where GET's body is the same for both (`false`: it depends on what the
/// upstream said, or on the request itself, as `/metrics` counts it; then any non-zero length).
async fn assert_heads(m: &Mirror, paths: &[(&str, u16, bool)], auth: Option<&str>) {
    for (path, want, same) in paths {
        let url = format!("{}{path}", m.url);
        let (get_status, _, get_body) = h2(http::Method::GET, &url, auth).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(get_status, *want, "GET {path}");
        let (status, headers, body) =
            h2(http::Method::HEAD, &url, auth).await.unwrap_or_else(|e| panic!("HEAD {path} over HTTP/2: {e}"));
        assert_eq!(status, *want, "HEAD {path}");
        assert!(body.is_empty(), "HEAD {path}: body {body:?}");
        let len = headers.get("content-length").map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
        if *same {
            assert_eq!(len, Some(get_body.len()), "HEAD {path}: Content-Length of what GET sends");
        } else {
            assert!(len.is_some_and(|n| n > 0), "HEAD {path}: Content-Length {len:?}");
        }

        let mut h1 = Mirror::client().head(&url);
        if let Some(a) = auth {
            h1 = h1.header("authorization", a);
        }
        let resp = h1.header("accept", "application/vnd.docker.distribution.manifest.v2+json").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), *want, "HEAD {path} over HTTP/1.1");
        let len = resp.headers().get("content-length").map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
        if *same {
            assert_eq!(len, Some(get_body.len()), "HEAD {path} over HTTP/1.1");
        } else {
            assert!(len.is_some_and(|n| n > 0), "HEAD {path} over HTTP/1.1: Content-Length {len:?}");
        }
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn head_over_http2_has_no_body_on_every_route_and_error() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 3000);
    let m = Mirror::start(&reg).await;
    let layer = format!("/v2/alpine/blobs/{}", image.layers[0].digest);
    let missing = format!("/v2/alpine/blobs/sha256:{}", "c".repeat(64));
    assert_heads(
        &m,
        &[
            ("/v2/", 200, true),
            ("/healthz", 200, true),
            ("/metrics", 200, false),
            ("/v2/alpine/manifests/3", 200, true),
            (&format!("/v2/alpine/manifests/{}", image.manifest.digest), 200, true),
            (&layer, 200, true),
            ("/v2/alpine/tags/list", 200, true),
            ("/v2/alpine/manifests/nope", 404, false),
            (&missing, 404, false),
            ("/v2/nosuch/tags/list", 404, false),
            ("/v2/Alpine/manifests/3", 400, true),
            ("/v2/alpine/manifests/sha256:123", 400, true),
            ("/v2/alpine/nothing", 404, true),
            ("/v2/alpine/manifests/3?ns=evil.example", 404, true),
            ("/v2/alpine/tags/list?n=lots", 400, true),
        ],
        None,
    )
    .await;
    // A range that can't be satisfied: 416 with its OCI body's length.
    let url = format!("{}{layer}", m.url);
    let get = Mirror::client().get(&url).header("range", "bytes=5000-").send().await.unwrap();
    assert_eq!(get.status(), 416);
    let get_len = get.bytes().await.unwrap().len();
    let head = Mirror::client().head(&url).header("range", "bytes=5000-").send().await.unwrap();
    assert_eq!(head.status(), 416);
    assert_eq!(head.headers()["content-length"], get_len.to_string().as_str());
    assert_eq!(head.headers()["content-range"], "bytes */3000");
}

#[tokio::test]
async fn the_401_challenge_reaches_a_head_over_http2() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let dir = tempfile::tempdir().unwrap();
    let tail = htpasswd_access(dir.path());
    let m = Mirror::start_with(&reg, Options { credentials: true, tail, ..Default::default() }).await;

    let url = format!("{}/v2/alpine/manifests/3", m.url);
    let (status, headers, body) = h2(http::Method::HEAD, &url, None).await.expect("HEAD over HTTP/2");
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"regcache\"");
    assert!(body.is_empty());
    assert_heads(&m, &[("/v2/", 401, true), ("/v2/alpine/manifests/3", 401, true)], None).await;
    let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("dev:letmein"));
    assert_heads(&m, &[("/v2/", 200, true), ("/v2/alpine/manifests/3", 200, true)], Some(&good)).await;
}

#[tokio::test]
async fn a_head_with_a_range_of_a_blob_not_cached_gets_the_headers_a_get_would() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 3000);
    let m = Mirror::start(&reg).await;
    let url = format!("{}/v2/alpine/blobs/{}", m.url, image.layers[0].digest);
    let head = |range: &'static str| Mirror::client().head(&url).header("range", range).send();

    let resp = head("bytes=0-9").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(resp.headers()["content-range"], "bytes 0-9/3000");
    let resp = head("bytes=5000-").await.unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */3000");
    assert_eq!(reg.cdn_count(&image.layers[0].digest), 0, "a HEAD fetches nothing");
}
